//! Recognises a held SSE subscription in the bytes a server has sent so far.
//!
//! Sans-IO: [`scan`] takes the whole prefix received on one connection and says whether
//! the subscription is held, refused, or needs more bytes. It never touches a socket or a
//! clock. A subscription is held once the response head is complete with status 200 and
//! the body (de-chunked when `Transfer-Encoding: chunked`) holds a complete `retry:` line,
//! which is what the engine sends first (WHATWG HTML §9.2.6, "retry" field).

/// Bound on the response bytes buffered before the subscription is held; past it the
/// response counts as [`Refusal::TooLarge`].
pub const RESPONSE_BYTES_MAX: usize = 8192;

/// Bound on the response header count; more is [`Refusal::Malformed`].
pub const HEADERS_MAX: usize = 32;

/// Where a subscription stands after the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// More bytes are needed.
    Partial,
    /// Status 200 and a complete `retry:` line arrived.
    Held,
    /// The response can never become a held subscription.
    Refused(Refusal),
}

/// Why a response can never become a held subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The head is not valid HTTP/1.x or has too many headers.
    Malformed,
    /// The status code was not 200.
    Status(u16),
    /// The chunked body ended (zero-size chunk) before a `retry:` line.
    StreamEnded,
    /// A chunk-size line or chunk terminator is not valid (RFC 9112 §7.1).
    BadChunk,
    /// [`RESPONSE_BYTES_MAX`] bytes arrived without a `retry:` line (or a whole head).
    TooLarge,
    /// A 101 without `Upgrade: websocket`, `Connection: Upgrade` or the right
    /// `Sec-WebSocket-Accept` (RFC 6455 §4.2.2).
    BadUpgrade,
}

impl Refusal {
    /// Short failure-kind label for reports, e.g. `status/503`.
    pub fn kind(self) -> String {
        match self {
            Refusal::Malformed => "bad/head".to_owned(),
            Refusal::Status(code) => format!("status/{code}"),
            Refusal::StreamEnded => "ended/before-retry".to_owned(),
            Refusal::BadChunk => "bad/chunk".to_owned(),
            Refusal::TooLarge => "bad/too-large".to_owned(),
            Refusal::BadUpgrade => "bad/upgrade".to_owned(),
        }
    }
}

/// Scans everything received so far on one connection.
///
/// Calling it again with a longer prefix of the same stream is the intended use: any
/// prefix of a held stream scans as [`Scan::Partial`] and the first prefix holding the
/// whole `retry:` line scans as [`Scan::Held`].
pub fn scan(received: &[u8]) -> Scan {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let (head_len, response) = match ok_head(received, &mut headers) {
        Ok(head) => head,
        Err(verdict) => return verdict,
    };
    let chunked = response.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding") && contains_ignore_case(h.value, b"chunked")
    });
    let body = &received[head_len..];
    let verdict = if chunked {
        let mut decoded = Vec::with_capacity(body.len());
        match dechunk(body, &mut decoded) {
            Err(refusal) => return Scan::Refused(refusal),
            Ok(_) if has_retry_line(&decoded) => Scan::Held,
            Ok(Dechunked::Ended) => Scan::Refused(Refusal::StreamEnded),
            Ok(Dechunked::More) => Scan::Partial,
        }
    } else if has_retry_line(body) {
        Scan::Held
    } else {
        Scan::Partial
    };
    match verdict {
        Scan::Partial => partial_or_too_large(received),
        other => other,
    }
}

/// Scans what arrived after an NDJSON subscription request (`GET /stream`): held once a
/// complete head says 200 with a `Content-Type` of `application/x-ndjson`. The engine
/// sends nothing more until the first event or heartbeat line.
pub fn scan_ndjson(received: &[u8]) -> Scan {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let response = match ok_head(received, &mut headers) {
        Ok((_, response)) => response,
        Err(verdict) => return verdict,
    };
    let ndjson = response.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("content-type") && contains_ignore_case(h.value, b"application/x-ndjson")
    });
    if ndjson {
        Scan::Held
    } else {
        Scan::Refused(Refusal::Malformed)
    }
}

/// Where a poll response stands after the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollScan {
    /// More bytes are needed.
    Partial,
    /// A whole `200` response of `consumed` bytes whose JSON body names the cursor `next`.
    Complete {
        /// The `next` field of the body: the `after` of the following poll.
        next: String,
        /// Bytes of `received` the response occupied (head and body).
        consumed: usize,
    },
    /// The response can never be a poll answer.
    Refused(Refusal),
}

/// Scans the bytes received after a `GET /poll` request: complete once the head and the
/// `Content-Length` body arrived, and the body is the engine's JSON object with a string
/// `next` (`{"events":[..],"next":"<id>"}`).
pub fn scan_poll(received: &[u8]) -> PollScan {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let (head_len, response) = match ok_head(received, &mut headers) {
        Ok(head) => head,
        Err(Scan::Refused(refusal)) => return PollScan::Refused(refusal),
        Err(_) => return PollScan::Partial,
    };
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    let Some(length) = length else {
        return PollScan::Refused(Refusal::Malformed);
    };
    if length > POLL_BODY_MAX {
        return PollScan::Refused(Refusal::TooLarge);
    }
    let Some(body) = received.get(head_len..head_len + length) else {
        return PollScan::Partial;
    };
    let next = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("next").and_then(|n| n.as_str()).map(str::to_owned));
    match next {
        Some(next) => PollScan::Complete {
            next,
            consumed: head_len + length,
        },
        None => PollScan::Refused(Refusal::Malformed),
    }
}

/// Bound on a poll response body: a held poll returns the events of one wait.
pub const POLL_BODY_MAX: usize = 4 << 20;

/// Parses a response head and requires status 200: the head's length and the parsed
/// response, or the scan verdict to return (more bytes needed, or refused).
fn ok_head<'h, 'b>(
    received: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
) -> Result<(usize, httparse::Response<'h, 'b>), Scan> {
    let mut response = httparse::Response::new(headers);
    let head_len = match response.parse(received) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(partial_or_too_large(received)),
        Err(_) => return Err(Scan::Refused(Refusal::Malformed)),
    };
    match response.code {
        Some(200) => Ok((head_len, response)),
        Some(code) => Err(Scan::Refused(Refusal::Status(code))),
        None => Err(Scan::Refused(Refusal::Malformed)),
    }
}

fn partial_or_too_large(received: &[u8]) -> Scan {
    if received.len() >= RESPONSE_BYTES_MAX {
        Scan::Refused(Refusal::TooLarge)
    } else {
        Scan::Partial
    }
}

/// How far a chunked body got.
#[derive(Debug, PartialEq, Eq)]
enum Dechunked {
    /// The body may continue.
    More,
    /// The last (zero-size) chunk arrived.
    Ended,
}

/// Appends the data of every chunk received so far to `out`, including the available
/// part of a chunk still arriving (RFC 9112 §7.1). Trailers are not read: the stream
/// counts as ended at the zero-size chunk.
fn dechunk(body: &[u8], out: &mut Vec<u8>) -> Result<Dechunked, Refusal> {
    let mut pos = 0;
    loop {
        let rest = &body[pos..];
        let Some(eol) = find(rest, b"\r\n") else {
            return Ok(Dechunked::More);
        };
        let size = chunk_size(&rest[..eol])?;
        if size == 0 {
            return Ok(Dechunked::Ended);
        }
        let data_start = pos + eol + 2;
        let available = body.len() - data_start;
        if available < size {
            out.extend_from_slice(&body[data_start..]);
            return Ok(Dechunked::More);
        }
        let data_end = data_start + size;
        out.extend_from_slice(&body[data_start..data_end]);
        match body.get(data_end..data_end + 2) {
            None => return Ok(Dechunked::More),
            Some(b"\r\n") => pos = data_end + 2,
            Some(_) => return Err(Refusal::BadChunk),
        }
    }
}

/// Parses a chunk-size line without its CRLF, ignoring chunk extensions after `;`.
fn chunk_size(line: &[u8]) -> Result<usize, Refusal> {
    let digits = line.split(|&b| b == b';').next().unwrap_or(line);
    let digits = trim_blanks(digits);
    // Eight hex digits are 4 GiB, far past any chunk this tool could buffer.
    if digits.is_empty() || digits.len() > 8 {
        return Err(Refusal::BadChunk);
    }
    let mut size = 0usize;
    for &b in digits {
        let digit = (b as char).to_digit(16).ok_or(Refusal::BadChunk)?;
        size = size * 16 + digit as usize;
    }
    Ok(size)
}

/// Whether `data` holds a complete line (ended by CR or LF, WHATWG HTML §9.2.6) that
/// starts with `retry:`.
fn has_retry_line(data: &[u8]) -> bool {
    let mut start = 0;
    for (i, &b) in data.iter().enumerate() {
        if b == b'\n' || b == b'\r' {
            if data[start..i].starts_with(b"retry:") {
                return true;
            }
            start = i + 1;
        }
    }
    false
}

fn trim_blanks(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
        Cache-Control: no-store\r\nTransfer-Encoding: chunked\r\n\r\n";

    fn stream(chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = HEAD.to_vec();
        for chunk in chunks {
            out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// Every strict prefix must be `Partial`, the whole must be `expected`.
    fn assert_prefixes(whole: &[u8], held_at: usize) {
        for len in 0..whole.len() {
            let expected = if len >= held_at { Scan::Held } else { Scan::Partial };
            assert_eq!(scan(&whole[..len]), expected, "prefix of {len} bytes");
        }
        assert_eq!(scan(whole), Scan::Held);
    }

    #[test]
    fn engine_stream_is_held_only_once_the_retry_line_is_complete() {
        let whole = stream(&[b"retry: 3000\n\n"]);
        // The first newline after `retry: 3000` completes the line.
        let held_at = HEAD.len() + 3 + b"retry: 3000\n".len();
        assert_prefixes(&whole, held_at);
    }

    #[test]
    fn retry_line_split_over_chunks_is_reassembled() {
        let whole = stream(&[b": hello\n\nre", b"try: 1", b"0\r\n\r\n"]);
        let held_at = whole.len() - b"\n\r\n\r\n".len();
        assert_prefixes(&whole, held_at);
    }

    #[test]
    fn chunk_extensions_and_uppercase_hex_are_accepted() {
        let mut whole = HEAD.to_vec();
        whole.extend_from_slice(b"D;ext=1\r\nretry: 3000\n\n\r\n");
        assert_eq!(scan(&whole), Scan::Held);
    }

    #[test]
    fn identity_body_is_read_raw() {
        let whole = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\nretry: 5\n";
        assert_prefixes(whole, whole.len());
    }

    #[test]
    fn retry_inside_a_data_line_does_not_count() {
        let whole = stream(&[b"data: retry: 5\n\n"]);
        assert_eq!(scan(&whole), Scan::Partial);
    }

    #[test]
    fn non_200_is_refused_as_soon_as_the_head_is_complete() {
        let whole = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
        for len in 0..whole.len() {
            assert_eq!(scan(&whole[..len]), Scan::Partial, "prefix of {len} bytes");
        }
        assert_eq!(scan(whole), Scan::Refused(Refusal::Status(503)));
    }

    #[test]
    fn last_chunk_before_retry_is_stream_ended() {
        let mut whole = stream(&[b": hi\n\n"]);
        whole.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(scan(&whole), Scan::Refused(Refusal::StreamEnded));
    }

    #[test]
    fn bad_chunk_size_and_terminator_are_refused() {
        let mut bad_size = HEAD.to_vec();
        bad_size.extend_from_slice(b"zz\r\n");
        assert_eq!(scan(&bad_size), Scan::Refused(Refusal::BadChunk));
        let mut bad_end = HEAD.to_vec();
        bad_end.extend_from_slice(b"2\r\n: XY");
        assert_eq!(scan(&bad_end), Scan::Refused(Refusal::BadChunk));
    }

    #[test]
    fn garbage_head_is_malformed() {
        assert_eq!(
            scan(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Scan::Refused(Refusal::Malformed)
        );
    }

    #[test]
    fn endless_response_is_bounded() {
        let mut whole = HEAD.to_vec();
        while whole.len() < RESPONSE_BYTES_MAX {
            whole.extend_from_slice(b"5\r\n: x\n\n\r\n");
        }
        assert_eq!(scan(&whole), Scan::Refused(Refusal::TooLarge));
        let endless_head = vec![b'H'; RESPONSE_BYTES_MAX];
        assert_eq!(
            scan(&endless_head),
            Scan::Refused(Refusal::Malformed),
            "not HTTP at all"
        );
        let mut long_head = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        long_head.resize(RESPONSE_BYTES_MAX, b'a');
        assert_eq!(scan(&long_head), Scan::Refused(Refusal::TooLarge));
    }

    #[test]
    fn ndjson_is_held_at_its_head() {
        let head =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n";
        for len in 0..head.len() {
            assert_eq!(scan_ndjson(&head[..len]), Scan::Partial, "prefix {len}");
        }
        assert_eq!(scan_ndjson(head), Scan::Held);
        let sse = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n";
        assert_eq!(scan_ndjson(sse), Scan::Refused(Refusal::Malformed));
        assert_eq!(
            scan_ndjson(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
            Scan::Refused(Refusal::Status(404))
        );
    }

    #[test]
    fn poll_response_is_complete_with_its_body_and_names_next() {
        let body = br#"{"events":[],"next":"1a2b-7"}"#;
        let mut whole = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        whole.extend_from_slice(body);
        for len in 0..whole.len() {
            assert_eq!(scan_poll(&whole[..len]), PollScan::Partial, "prefix {len}");
        }
        let complete = PollScan::Complete {
            next: "1a2b-7".to_owned(),
            consumed: whole.len(),
        };
        assert_eq!(scan_poll(&whole), complete);
        // A pipelined next response after it does not change the verdict.
        whole.extend_from_slice(b"HTTP/1.1 200");
        assert_eq!(scan_poll(&whole), complete);
        assert_eq!(
            scan_poll(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nbad"),
            PollScan::Refused(Refusal::Status(400))
        );
        assert_eq!(
            scan_poll(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"),
            PollScan::Refused(Refusal::Malformed)
        );
    }
}
