//! The HTTP request head parser, as the shard drives it.
//!
//! Checks, for any bytes:
//! - `parse_request` never panics, and what it answers does not depend on how the head
//!   arrived: every prefix of the buffer is `Partial` or gets the answer the whole buffer
//!   gets (the shard re-parses the growing buffer after each read and acts on the first
//!   answer that is not `Partial`).
//! - A `Complete` head is within `HEAD_MAX`, ends with LF, is HTTP/1.0 or 1.1, and
//!   `has_body` agrees with `Content-Length`; the pipelined heads after it hold the same.
//! - What the shard does next with a head (the subscription query, the WebSocket
//!   upgrade check, the 101 answer) never panics, and a subscription holds only valid,
//!   distinct topics, at most `TOPICS_MAX`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::proto::http::{self, Parsed, Request, HEAD_MAX, TOPICS_MAX};
use ringcast::proto::ws;
use ringcast_fuzz::Input;

/// Most pipelined requests looked at in one input.
const PIPELINE_MAX: usize = 8;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let seed = input.u64();
    let buf = input.rest();
    let whole = http::parse_request(buf);
    check_prefixes(buf, &whole, seed);
    let mut at = 0;
    for _ in 0..PIPELINE_MAX {
        let Ok(Parsed::Complete(req)) = http::parse_request(&buf[at..]) else {
            break;
        };
        check_request(&buf[at..], &req);
        if req.has_body {
            break;
        }
        at += req.head_len;
    }
});

/// Every cut of `buf` is `Partial` or answered as `buf` is: all cuts of a short buffer,
/// and for a long one the cuts around `HEAD_MAX` and some chosen by `seed`.
fn check_prefixes(buf: &[u8], whole: &Result<Parsed<'_>, http::HttpError>, seed: u64) {
    let cuts: Vec<usize> = if buf.len() <= 256 {
        (0..buf.len()).collect()
    } else {
        let mut cuts: Vec<usize> = (0..32)
            .map(|i| (seed.rotate_left(i * 2) as usize) % buf.len())
            .collect();
        cuts.extend(
            [HEAD_MAX - 1, HEAD_MAX, HEAD_MAX + 1]
                .into_iter()
                .filter(|&c| c < buf.len()),
        );
        cuts
    };
    for cut in cuts {
        let part = http::parse_request(&buf[..cut]);
        match (&part, whole) {
            (Ok(Parsed::Partial), _) => {}
            (Ok(Parsed::Complete(p)), Ok(Parsed::Complete(w))) => {
                assert_eq!(p, w, "cut at {cut} of {} bytes", buf.len());
            }
            (p, w) => assert_eq!(p, w, "cut at {cut} of {} bytes: {:?}", buf.len(), &buf[..cut]),
        }
    }
}

fn check_request(buf: &[u8], req: &Request<'_>) {
    assert!(
        req.head_len > 0 && req.head_len <= buf.len().min(HEAD_MAX),
        "head_len {} of {} bytes",
        req.head_len,
        buf.len()
    );
    assert_eq!(buf[req.head_len - 1], b'\n', "a head ends with a line break");
    assert!(req.minor_version <= 1, "HTTP/1.{}", req.minor_version);
    assert_eq!(req.has_body, req.content_length.is_some_and(|n| n > 0), "{req:?}");
    let head = &buf[..req.head_len];
    // The target is ASCII without spaces, and path and query are cut from it.
    for part in [req.path, req.query] {
        assert!(
            part.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'#'),
            "{part:?}"
        );
    }
    if let Ok(sub) = http::parse_subscription(req.query) {
        assert!(
            !sub.topics.is_empty() && sub.topics.len() <= TOPICS_MAX,
            "{sub:?}"
        );
        for (i, topic) in sub.topics.iter().enumerate() {
            assert!(http::is_valid_topic(topic.as_bytes()), "topic {topic:?}");
            assert!(!sub.topics[..i].contains(topic), "duplicate topic {topic:?}");
        }
    }
    let _ = http::query_param(req.query, "format");
    if let Ok(Some(upgrade)) = ws::check_upgrade(head) {
        assert!(upgrade.head_len == req.head_len, "{upgrade:?} vs {req:?}");
        for deflate in [false, true] {
            let answer = ws::switching_protocols(upgrade.key, deflate);
            assert!(answer.starts_with(b"HTTP/1.1 101 "), "{answer:?}");
        }
        let _ = ws::origin_allowed(upgrade.origin, &["https://*.example.com".to_string()]);
    }
}
