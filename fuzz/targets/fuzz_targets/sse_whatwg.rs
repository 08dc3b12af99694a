//! The SSE encoder, read back by a WHATWG EventSource parser.
//!
//! Builds a stream as the engine sends it (the `retry:` line, then events and heartbeat
//! comments, as HTTP/1.1 chunks or bare for HTTP/1.0) from arbitrary ids, event names and
//! UTF-8 payloads, both through `sse::encode_event` and through `Event::new` (the bytes
//! every subscriber is sent). Checks that:
//! - each encoding is exactly `sse::encoded_len` bytes, and the chunks decode strictly;
//! - the parser of `ringcast_fuzz::whatwg` gets back exactly the events put in: the
//!   event type (`message` for no name or an empty one), the last event id, and the
//!   data with CRLF and lone CR turned into LF (as `encode_event` documents), nothing
//!   more (a comment or a payload never forges an event), and the retry time.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use ringcast::event::{Epoch, Event};
use ringcast::proto::sse;
use ringcast_fuzz::{chunked, whatwg};

#[derive(Arbitrary, Debug)]
struct Stream {
    chunked: bool,
    retry_ms: u32,
    items: Vec<Item>,
}

#[derive(Arbitrary, Debug)]
enum Item {
    /// Encoded with `sse::encode_event`: any id and name the encoder accepts.
    Encoded {
        id: String,
        name: Option<String>,
        data: String,
    },
    /// Built by `Event::new`, as published events are.
    Published {
        epoch: u64,
        seq: u64,
        name: Option<String>,
        data: String,
    },
    /// A heartbeat or padding comment.
    Comment(String),
}

fuzz_target!(|stream: Stream| {
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    let mut body = Vec::new();
    sse::encode_retry(&mut body, stream.retry_ms);
    push(&mut wire, &body, stream.chunked);
    for item in stream.items {
        body.clear();
        match item {
            Item::Encoded { id, name, data } => {
                // The encoder's preconditions (debug-asserted): no line break in the id
                // or the name, no NUL in the id.
                let id: String = id.chars().filter(|c| !matches!(c, '\r' | '\n' | '\0')).collect();
                let name = name.map(|n| n.replace(['\r', '\n'], ""));
                sse::encode_event(&mut body, &id, name.as_deref(), data.as_bytes());
                let len = sse::encoded_len(&id, name.as_deref(), data.as_bytes());
                assert_eq!(body.len(), len, "encoded_len");
                push(&mut wire, &body, stream.chunked);
                expected.push(expect(&id, name.as_deref(), &data));
            }
            Item::Published {
                epoch,
                seq,
                name,
                data,
            } => {
                let name = name.map(|n| n.replace(['\r', '\n'], ""));
                let event = Event::new(
                    Epoch::from_raw(epoch),
                    seq,
                    "t",
                    name.as_deref(),
                    None,
                    data.as_bytes(),
                    Instant::now(),
                );
                wire.extend_from_slice(&event.sse(stream.chunked));
                expected.push(expect(&event.id, name.as_deref(), &data));
            }
            Item::Comment(text) => {
                sse::encode_comment(&mut body, &text.replace(['\r', '\n'], ""));
                push(&mut wire, &body, stream.chunked);
            }
        }
    }
    let events = if stream.chunked {
        wire.extend_from_slice(sse::CHUNKED_END);
        let decoded = chunked::decode(&wire).unwrap_or_else(|e| panic!("{e}: {wire:?}"));
        assert!(decoded.ended, "no last chunk");
        decoded.data
    } else {
        wire
    };
    let parsed = whatwg::parse(&events);
    assert_eq!(parsed.retry_ms, Some(u64::from(stream.retry_ms)), "retry");
    assert_eq!(
        parsed.events,
        expected,
        "stream {:?}",
        String::from_utf8_lossy(&events)
    );
});

fn push(wire: &mut Vec<u8>, body: &[u8], chunked: bool) {
    if chunked {
        sse::encode_chunk(wire, body);
    } else {
        wire.extend_from_slice(body);
    }
}

/// The event a browser dispatches for these fields.
fn expect(id: &str, name: Option<&str>, data: &str) -> whatwg::Event {
    whatwg::Event {
        kind: name.filter(|n| !n.is_empty()).unwrap_or("message").to_string(),
        data: data.replace("\r\n", "\n").replace('\r', "\n"),
        last_event_id: id.to_string(),
    }
}
