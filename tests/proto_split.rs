//! Any split of the input parses like the whole, through the public API of the sans-IO
//! parsers: HTTP request heads (`ringcast::proto::http`) and the ingest protocol
//! (`ringcast::proto::ingest`). Each test drives a parser the way the engine does: bytes
//! arrive in chunks, are appended to a buffer, and consumed bytes are drained.

use proptest::prelude::*;
use ringcast::proto::http::{self, HttpError, Method, Parsed};
use ringcast::proto::ingest::{Command, Decoded, IngestDecoder, IngestError, IngestLimits};

/// Picks cut points from proptest indices and cuts `bytes` there, in order.
fn chunks_at<'b>(bytes: &'b [u8], cuts: &[prop::sample::Index]) -> Vec<&'b [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut from = 0;
    for cut in cuts.into_iter().chain([bytes.len()]) {
        chunks.push(&bytes[from..cut]);
        from = cut;
    }
    chunks
}

// ----- HTTP ---------------------------------------------------------------------------

/// An owned copy of a parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
enum HttpOut {
    Request {
        method: Method,
        path: String,
        query: String,
        minor_version: u8,
        keep_alive: bool,
        last_event_id: Option<Vec<u8>>,
        has_body: bool,
        head_len: usize,
    },
    Error(HttpError),
}

/// Parses pipelined request heads as they arrive in `chunks`; stops at the first error,
/// as a connection answers it and closes.
fn drive_http<'c>(chunks: impl IntoIterator<Item = &'c [u8]>) -> Vec<HttpOut> {
    let mut buf = Vec::new();
    let mut outs = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        let mut start = 0;
        loop {
            match http::parse_request(&buf[start..]) {
                Ok(Parsed::Partial) => break,
                Ok(Parsed::Complete(req)) => {
                    assert!(req.head_len > 0 && start + req.head_len <= buf.len());
                    start += req.head_len;
                    outs.push(HttpOut::Request {
                        method: req.method,
                        path: req.path.to_owned(),
                        query: req.query.to_owned(),
                        minor_version: req.minor_version,
                        keep_alive: req.keep_alive,
                        last_event_id: req.last_event_id.map(<[u8]>::to_vec),
                        has_body: req.has_body,
                        head_len: req.head_len,
                    });
                }
                Err(e) => {
                    outs.push(HttpOut::Error(e));
                    return outs;
                }
            }
        }
        buf.drain(..start);
        assert!(buf.len() < http::HEAD_MAX);
    }
    outs
}

/// A valid head: origin-form with `Host` (anywhere among the fields), absolute-form with
/// a `Host` naming the same authority, or HTTP/1.0 without `Host`.
fn request_head() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec!["GET", "HEAD", "POST", "PUT"]),
        "/[a-z0-9/]{0,12}(\\?[a-z0-9=&%]{0,16})?",
        0u8..=1,
        prop::collection::vec(("[A-Za-z_-]{1,12}", "[!-~]{0,20}"), 0..6),
        prop::option::of(prop::sample::select(vec!["close", "keep-alive"])),
        prop::option::of("[0-9a-z-]{0,10}"),
        any::<bool>(),
        (
            prop::sample::select(vec!["origin", "absolute", "none"]),
            "[a-z0-9-]{1,8}(\\.[a-z]{1,5})?(:[0-9]{1,4})?",
            any::<prop::sample::Index>(),
        ),
    )
        .prop_map(
            |(method, target, minor, headers, connection, id, crlf, (form, host, at))| {
                let eol = if crlf { "\r\n" } else { "\n" };
                let form = if form == "none" && minor == 1 {
                    "origin"
                } else {
                    form
                };
                let target = match form {
                    "absolute" => format!("http://{host}{target}"),
                    _ => target,
                };
                let mut lines: Vec<String> = headers
                    .into_iter()
                    .map(|(name, value)| format!("X-{name}: {value}"))
                    .collect();
                if form != "none" {
                    lines.insert(at.index(lines.len() + 1), format!("Host: {host}"));
                }
                if let Some(c) = connection {
                    lines.push(format!("Connection: {c}"));
                }
                if let Some(id) = id {
                    lines.push(format!("Last-Event-ID: {id}"));
                }
                let mut head = format!("{method} {target} HTTP/1.{minor}{eol}");
                for line in lines {
                    head.push_str(&line);
                    head.push_str(eol);
                }
                head.push_str(eol);
                head.into_bytes()
            },
        )
}

/// Several valid heads back to back (and how many), sometimes followed by bytes that end
/// the connection with an error, or by the start of one more head.
fn http_stream() -> impl Strategy<Value = (Vec<u8>, usize)> {
    (
        prop::collection::vec(request_head(), 1..5),
        prop::sample::select(vec![
            &b""[..],
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"GET /partial HTTP/1.1\r\nHost:",
            b"\x16\x03\x01\x02\x00",
            // RFC 9112 §3.2: no Host, two Host lines, Host against the authority.
            b"GET / HTTP/1.1\r\nX: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n",
            // RFC 9112 §6.1, §6.3: every Transfer-Encoding is refused.
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
        ]),
    )
        .prop_map(|(heads, tail)| {
            let mut stream = heads.concat();
            stream.extend_from_slice(tail);
            (stream, heads.len())
        })
}

#[test]
fn http_every_two_way_split_parses_like_the_whole() {
    let stream: &[u8] = b"GET /sse?topic=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 9\r\n\r\n\
        HEAD /sse?topic=b&topic=c HTTP/1.0\nConnection: keep-alive\n\n\
        GET http://x:80/ HTTP/1.1\r\nConnection: close\r\nHost: X\r\n\r\n\
        GET / HTTP/3.0\r\n\r\n";
    let whole = drive_http([stream]);
    assert_eq!(whole.len(), 4, "{whole:?}");
    assert_eq!(whole[3], HttpOut::Error(HttpError::VersionNotSupported));
    for cut in 0..=stream.len() {
        let (a, b) = stream.split_at(cut);
        assert_eq!(drive_http([a, b]), whole, "cut at {cut}");
    }
    assert_eq!(drive_http(stream.chunks(1)), whole);
}

#[test]
fn http_oversized_head_is_refused_however_it_arrives() {
    let mut stream = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    stream.resize(20 * 1024, b'a');
    stream.extend_from_slice(b"\r\n\r\n");
    let want = [HttpOut::Error(HttpError::HeadTooLarge)];
    for size in [1, 100, 4096, 8191, 8192, stream.len()] {
        assert_eq!(drive_http(stream.chunks(size)), want, "chunks of {size}");
    }
}

proptest! {
    #[test]
    fn http_random_chunkings_parse_like_the_whole(
        (stream, heads) in http_stream(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let whole = drive_http([stream.as_slice()]);
        // Every generated head is served; only the tail may end in an error.
        prop_assert!(whole.len() >= heads, "{:?}", whole);
        prop_assert!(
            whole[..heads].iter().all(|out| matches!(out, HttpOut::Request { .. })),
            "{:?}",
            whole
        );
        prop_assert_eq!(drive_http(chunks_at(&stream, &cuts)), whole);
    }
}

// ----- Ingest -------------------------------------------------------------------------

/// An owned copy of a decoder result.
#[derive(Clone, Debug, PartialEq, Eq)]
enum IngestOut {
    Publish {
        topic: String,
        event: Option<String>,
        key: Option<String>,
        payload: Vec<u8>,
    },
    Ping,
    Quit,
    Upstream,
    Send {
        conn: String,
        payload: Vec<u8>,
    },
    Error(IngestError),
}

const LIMITS: IngestLimits = IngestLimits {
    payload_max: 16,
    line_max: 48,
};

/// The caller loop of `IngestDecoder`, fed `chunks` in order; stops after QUIT or a
/// fatal error, as the engine closes then.
fn drive_ingest<'c>(chunks: impl IntoIterator<Item = &'c [u8]>) -> Vec<IngestOut> {
    let mut dec = IngestDecoder::new(LIMITS);
    let mut buf = Vec::new();
    let mut outs = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        let mut start = 0;
        loop {
            let (out, consumed) = match dec.decode(&buf[start..]) {
                Decoded::Partial { consumed, .. } => {
                    start += consumed;
                    break;
                }
                Decoded::Command { command, consumed } => (owned(command), consumed),
                Decoded::Error { error, consumed } => (IngestOut::Error(error), consumed),
            };
            assert!(consumed > 0 && start + consumed <= buf.len());
            start += consumed;
            let last = match &out {
                IngestOut::Quit => true,
                IngestOut::Error(e) => e.is_fatal(),
                _ => false,
            };
            outs.push(out);
            if last {
                return outs;
            }
        }
        buf.drain(..start);
        // Never more than one line and one allowed payload stay buffered.
        assert!(buf.len() <= LIMITS.line_max + 1 + LIMITS.payload_max + 2);
    }
    outs
}

fn owned(command: Command<'_>) -> IngestOut {
    match command {
        Command::Publish(p) => IngestOut::Publish {
            topic: p.topic.to_owned(),
            event: p.event.map(str::to_owned),
            key: p.key.map(str::to_owned),
            payload: p.payload.to_vec(),
        },
        Command::Ping => IngestOut::Ping,
        Command::Quit => IngestOut::Quit,
        Command::Upstream => IngestOut::Upstream,
        Command::Send(s) => IngestOut::Send {
            conn: s.conn.to_owned(),
            payload: s.payload.to_vec(),
        },
    }
}

fn ingest_command() -> impl Strategy<Value = Vec<u8>> {
    let payload = prop::collection::vec(
        prop::sample::select(vec![b'a', b' ', b'\r', b'\n', b'P', 0xc3, 0xa9, 0xff]),
        0..24,
    );
    prop_oneof![
        Just(b"PING\r\n".to_vec()),
        Just(b"ping\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b" \t\r\n".to_vec()),
        Just(b"SUB x\n".to_vec()),
        Just(b"UPSTREAM\n".to_vec()),
        Just(b"SEND 0.1.2 3\n\r\n\xff\n".to_vec()),
        Just(b"SEND 0.x.2 1\nz\r\n".to_vec()),
        (
            "[a-z.$]{1,6}",
            prop::option::of("[a-z.]{0,10}"),
            prop::option::of("[a-z0-9]{1,6}"),
            payload,
            any::<bool>(),
        )
            .prop_map(|(topic, event, key, payload, crlf)| {
                let eol = if crlf { "\r\n" } else { "\n" };
                let mut line = format!("PUB {topic} {}", payload.len());
                if let Some(event) = event {
                    line.push_str(&format!(" event={event}"));
                }
                if let Some(key) = key {
                    line.push_str(&format!("\tkey={key}"));
                }
                let mut bytes = format!("{line}{eol}").into_bytes();
                bytes.extend_from_slice(&payload);
                bytes.extend_from_slice(eol.as_bytes());
                bytes
            }),
    ]
}

/// Several commands, sometimes ended by QUIT or by a framing-losing fault.
fn ingest_stream() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(ingest_command(), 1..16),
        prop::sample::select(vec![
            &b""[..],
            b"QUIT\nPING\n",
            b"PUB t\nPING\n",
            b"PUB t 2\nabc\n",
            b"PUB t 20\n01234567890123456789xPING\n",
            b"0123456789012345678901234567890123456789012345678\n",
        ]),
    )
        .prop_map(|(commands, tail)| {
            let mut stream = commands.concat();
            stream.extend_from_slice(tail);
            stream
        })
}

#[test]
fn ingest_every_two_way_split_decodes_like_the_whole() {
    let stream: &[u8] = b"PING\r\nPUB news 5 event=e key=k\r\n\r\nP\r\n\r\n\
        bogus\nPUB a 2\n\xc3\xa9\nPUB b$ 1\nx\nPUB c 1 event=ringcast.x\ny\n\
        \n\nPUB d 0\n\nPUB big 40\n0123456789012345678901234567890123456789\r\nPING\n";
    let whole = drive_ingest([stream]);
    assert_eq!(
        whole,
        [
            IngestOut::Ping,
            IngestOut::Publish {
                topic: "news".into(),
                event: Some("e".into()),
                key: Some("k".into()),
                payload: b"\r\nP\r\n".to_vec(),
            },
            IngestOut::Error(IngestError::UnknownCommand("bogus".into())),
            IngestOut::Publish {
                topic: "a".into(),
                event: None,
                key: None,
                payload: "é".into(),
            },
            IngestOut::Error(IngestError::BadTopic),
            IngestOut::Error(IngestError::BadEventName),
            IngestOut::Publish {
                topic: "d".into(),
                event: None,
                key: None,
                payload: Vec::new(),
            },
            IngestOut::Error(IngestError::PayloadTooLarge { len: 40, max: 16 }),
        ]
    );
    for cut in 0..=stream.len() {
        let (a, b) = stream.split_at(cut);
        assert_eq!(drive_ingest([a, b]), whole, "cut at {cut}");
    }
    assert_eq!(drive_ingest(stream.chunks(1)), whole);
}

proptest! {
    #[test]
    fn ingest_random_chunkings_decode_like_the_whole(
        stream in ingest_stream(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let whole = drive_ingest([stream.as_slice()]);
        prop_assert_eq!(drive_ingest(chunks_at(&stream, &cuts)), whole.clone());
        prop_assert_eq!(drive_ingest(stream.chunks(1)), whole);
    }
}
