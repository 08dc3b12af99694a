//! Server-Sent Events encoding (WHATWG HTML §9.2.6 "Interpreting an event stream") and
//! the HTTP/1.1 chunk framing that carries it (RFC 9112 §7.1).
//!
//! Owns: the exact bytes of an event, a comment, a `retry:` line and a chunk, and the
//! exact length of an encoded event so a caller can reserve once.
//!
//! Must never: validate or rewrite payloads (the publisher side does), allocate beyond
//! the one `reserve` per call, or write a line break inside an `id:`, `event:` or
//! comment line (it would end the field early and let data forge fields).

const ID_PREFIX: &[u8] = b"id: ";
const EVENT_PREFIX: &[u8] = b"event: ";
/// Always followed by one space, so a payload line that starts with a space keeps it
/// after the parser strips a single leading space (§9.2.6 "collect a field value").
const DATA_PREFIX: &[u8] = b"data: ";
const COMMENT_PREFIX: &[u8] = b": ";
const RETRY_PREFIX: &[u8] = b"retry: ";

/// The last chunk of a chunked body (RFC 9112 §7.1): zero length, no trailers.
pub const CHUNKED_END: &[u8] = b"0\r\n\r\n";

/// Appends one event: `id: ID\n`, `event: NAME\n` when named, the payload split on CRLF,
/// LF and CR into `data: LINE\n` lines, then a blank line that dispatches it.
///
/// A client parses it back into one event whose data is `data` with every CRLF and lone
/// CR turned into LF; an empty payload is one `data: \n` line, which still dispatches an
/// event with empty data. An empty `id` is written too: it resets the client's last
/// event ID (§9.2.6, the `id` field). Appends exactly [`encoded_len`] bytes.
///
/// # Panics
///
/// In debug builds, if `id` contains CR, LF or NUL (a client ignores an id with NUL), or
/// `event` contains CR or LF.
pub fn encode_event(out: &mut Vec<u8>, id: &str, event: Option<&str>, data: &[u8]) {
    debug_assert!(
        !id.contains(['\r', '\n', '\0']),
        "event id {id:?} contains CR, LF or NUL"
    );
    debug_assert!(
        !event.is_some_and(|name| name.contains(['\r', '\n'])),
        "event name {event:?} contains CR or LF"
    );
    out.reserve(encoded_len(id, event, data));
    push_line(out, ID_PREFIX, id.as_bytes());
    if let Some(name) = event {
        push_line(out, EVENT_PREFIX, name.as_bytes());
    }
    for line in Lines::new(data) {
        push_line(out, DATA_PREFIX, line);
    }
    out.push(b'\n');
}

/// The exact number of bytes [`encode_event`] appends for these arguments.
#[must_use]
pub fn encoded_len(id: &str, event: Option<&str>, data: &[u8]) -> usize {
    let id_len = ID_PREFIX.len() + id.len() + 1;
    let event_len = event.map_or(0, |name| EVENT_PREFIX.len() + name.len() + 1);
    let data_len: usize = Lines::new(data)
        .map(|line| DATA_PREFIX.len() + line.len() + 1)
        .sum();
    id_len + event_len + data_len + 1
}

/// Appends a comment line `: TEXT\n\n`; clients ignore it, proxies see traffic
/// (heartbeats, padding).
///
/// # Panics
///
/// In debug builds, if `text` contains CR or LF.
pub fn encode_comment(out: &mut Vec<u8>, text: &str) {
    debug_assert!(!text.contains(['\r', '\n']), "comment {text:?} contains CR or LF");
    out.reserve(COMMENT_PREFIX.len() + text.len() + 2);
    push_line(out, COMMENT_PREFIX, text.as_bytes());
    out.push(b'\n');
}

/// Appends `retry: MS\n\n`, the first bytes of every stream: the client waits `retry_ms`
/// milliseconds before reconnecting (§9.2.6, the `retry` field).
pub fn encode_retry(out: &mut Vec<u8>, retry_ms: u32) {
    let mut digits = [0u8; 10];
    let digits = decimal(retry_ms, &mut digits);
    out.reserve(RETRY_PREFIX.len() + digits.len() + 2);
    push_line(out, RETRY_PREFIX, digits);
    out.push(b'\n');
}

/// Appends `body` as one chunk of a chunked body (RFC 9112 §7.1): the length in
/// lowercase hex, CRLF, the body, CRLF.
///
/// # Panics
///
/// In debug builds, if `body` is empty: a zero-length chunk ends the body (use
/// [`CHUNKED_END`] for that).
pub fn encode_chunk(out: &mut Vec<u8>, body: &[u8]) {
    debug_assert!(!body.is_empty(), "an empty chunk would end the stream");
    let mut digits = [0u8; 16];
    let digits = hex(body.len(), &mut digits);
    out.reserve(digits.len() + body.len() + 4);
    out.extend_from_slice(digits);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

fn push_line(out: &mut Vec<u8>, prefix: &[u8], value: &[u8]) {
    out.extend_from_slice(prefix);
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Writes `n` in decimal at the end of `buf` and returns those digits.
fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        // `n % 10` is below 10, so the cast is exact.
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Writes `n` in lowercase hex at the end of `buf` and returns those digits.
fn hex(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// The lines of a payload as §9.2.6 will see them: split on CRLF, LF and CR. A payload
/// with `k` line breaks has `k + 1` lines; the empty payload has one empty line.
struct Lines<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Lines<'a> {
    fn new(data: &'a [u8]) -> Self {
        Lines { rest: Some(data) }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        let Some(at) = find_line_break(rest) else {
            self.rest = None;
            return Some(rest);
        };
        let width = if rest[at..].starts_with(b"\r\n") { 2 } else { 1 };
        self.rest = Some(&rest[at + width..]);
        Some(&rest[..at])
    }
}

/// The index of the first CR or LF in `s`, eight bytes at a time.
///
/// For each word, a byte equal to the target becomes zero after the XOR, and
/// `(x - 0x01..) & !x & 0x80..` flags every zero byte. It may also flag a byte above a
/// zero (a borrow), never one below, so the lowest flag across both targets is the first
/// match (little-endian: the lowest byte comes first in memory).
fn find_line_break(s: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const LFS: u64 = u64::from_ne_bytes([b'\n'; 8]);
    const CRS: u64 = u64::from_ne_bytes([b'\r'; 8]);
    let zero_flags = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut words = s.chunks_exact(8);
    let mut base = 0;
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let w = u64::from_le_bytes(bytes);
        let flags = zero_flags(w ^ LFS) | zero_flags(w ^ CRS);
        if flags != 0 {
            // The lowest flag bit is bit 7 of the matching byte.
            return Some(base + (flags.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    let tail = words.remainder();
    tail.iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .map(|i| base + i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(id: &str, name: Option<&str>, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_event(&mut out, id, name, data);
        assert_eq!(out.len(), encoded_len(id, name, data));
        out
    }

    #[test]
    fn small_events_exact_bytes() {
        /// id, event name, payload, expected bytes.
        type Case = (&'static str, Option<&'static str>, &'static [u8], &'static [u8]);
        let cases: [Case; 9] = [
            ("1", None, b"hello", b"id: 1\ndata: hello\n\n"),
            ("7", Some("price"), b"42", b"id: 7\nevent: price\ndata: 42\n\n"),
            ("2", None, b"", b"id: 2\ndata: \n\n"),
            ("", None, b"x", b"id: \ndata: x\n\n"),
            ("3", None, b"a\nb", b"id: 3\ndata: a\ndata: b\n\n"),
            ("3", None, b"a\r\nb\rc", b"id: 3\ndata: a\ndata: b\ndata: c\n\n"),
            ("4", None, b"a\n", b"id: 4\ndata: a\ndata: \n\n"),
            (
                "5",
                None,
                b"\r\n\n\r",
                b"id: 5\ndata: \ndata: \ndata: \ndata: \n\n",
            ),
            ("6", None, b" lead: x", b"id: 6\ndata:  lead: x\n\n"),
        ];
        for (id, name, data, expected) in cases {
            assert_eq!(
                event(id, name, data),
                expected,
                "{:?}",
                String::from_utf8_lossy(data)
            );
        }
    }

    #[test]
    fn appends_after_existing_bytes() {
        let mut out = b"prefix".to_vec();
        encode_event(&mut out, "1", None, b"x");
        encode_comment(&mut out, "hb");
        assert_eq!(out, b"prefixid: 1\ndata: x\n\n: hb\n\n");
    }

    #[test]
    fn comment_and_retry() {
        let mut out = Vec::new();
        encode_comment(&mut out, "");
        encode_retry(&mut out, 0);
        encode_retry(&mut out, 3000);
        encode_retry(&mut out, u32::MAX);
        assert_eq!(out, b": \n\nretry: 0\n\nretry: 3000\n\nretry: 4294967295\n\n");
    }

    #[test]
    fn chunk_framing() {
        let mut out = Vec::new();
        encode_chunk(&mut out, b"a");
        encode_chunk(&mut out, &[b'x'; 26]);
        assert_eq!(out, [&b"1\r\na\r\n1a\r\n"[..], &[b'x'; 26], b"\r\n"].concat());
        let mut big = Vec::new();
        encode_chunk(&mut big, &vec![0; 0x10_0000]);
        assert!(big.starts_with(b"100000\r\n\0"));
        assert!(big.ends_with(b"\0\r\n"));
        assert_eq!(big.len(), 6 + 2 + 0x10_0000 + 2);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "empty chunk")]
    fn empty_chunk_is_refused() {
        encode_chunk(&mut Vec::new(), b"");
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "contains CR, LF or NUL")]
    fn id_with_line_break_is_refused() {
        encode_event(&mut Vec::new(), "1\nevent: x", None, b"");
    }

    fn find_line_break_reference(s: &[u8]) -> Option<usize> {
        s.iter().position(|&b| b == b'\n' || b == b'\r')
    }

    #[test]
    fn find_line_break_matches_reference_at_every_length_and_offset() {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(600).collect();
        for len in 0..40 {
            for at in 0..len {
                for filler in [0u8, b'a', 0x8d, 0x0b, 0x0c, 0x0e, 0xff] {
                    let mut s = vec![filler; len];
                    for (i, &target) in [b'\n', b'\r'].iter().enumerate() {
                        s[at] = target;
                        assert_eq!(find_line_break(&s), Some(at), "{len} {at} {filler} {i}");
                    }
                }
            }
        }
        for start in 0..16 {
            for end in start..bytes.len() {
                let s = &bytes[start..end];
                assert_eq!(find_line_break(s), find_line_break_reference(s));
            }
        }
    }

    proptest! {
        #[test]
        fn find_line_break_matches_reference(s in prop::collection::vec(
            prop::sample::select(vec![0u8, 9, 10, 11, 12, 13, 14, 0x8a, 0x8d, b'a', 0xff]), 0..100)
        ) {
            prop_assert_eq!(find_line_break(&s), find_line_break_reference(&s));
        }

        #[test]
        fn encoded_len_is_exact(
            id in "[ -~]{0,20}",
            name in prop::option::of("[!-~]{1,20}"),
            data in prop::collection::vec(
                prop::sample::select(vec![b'a', b' ', b':', b'\r', b'\n', 0, 0xe2, 0x82, 0xac]), 0..200),
        ) {
            let mut out = vec![1, 2, 3];
            encode_event(&mut out, &id, name.as_deref(), &data);
            prop_assert_eq!(out.len() - 3, encoded_len(&id, name.as_deref(), &data));
            prop_assert!(out.ends_with(b"\n\n"));
        }

        #[test]
        fn data_lines_rejoin_to_the_normalized_payload(data in prop::collection::vec(
            prop::sample::select(vec![b'a', b'\r', b'\n']), 0..50)
        ) {
            let lines: Vec<&[u8]> = Lines::new(&data).collect();
            let normalized = String::from_utf8(data.clone()).unwrap().replace("\r\n", "\n").replace('\r', "\n");
            prop_assert_eq!(lines.join(&b'\n'), normalized.into_bytes());
            prop_assert!(lines.iter().all(|l| find_line_break(l).is_none()));
        }
    }
}
