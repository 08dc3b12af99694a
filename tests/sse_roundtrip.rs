//! The engine's SSE encoder (`ringcast::proto::sse`) judged by an independent WHATWG
//! parser (`ringcast_tests::whatwg`, HTML §9.2.6): whatever bytes a payload holds, a
//! browser must see exactly one event with that id, type and data (line breaks
//! normalized to LF), however the bytes are split on the way.
//!
//! Also holds the parser's own tests against the spec's examples, since the support
//! library is built without a test harness.

use proptest::prelude::*;
use ringcast::proto::sse;
use ringcast_tests::whatwg::{Event, EventStreamParser};

fn encode(id: &str, name: Option<&str>, data: &str) -> Vec<u8> {
    let mut out = Vec::new();
    sse::encode_event(&mut out, id, name, data.as_bytes());
    assert_eq!(out.len(), sse::encoded_len(id, name, data.as_bytes()));
    out
}

/// What a browser must see for this payload: CRLF and lone CR become LF (§9.2.6 splits
/// lines on all three and `data` joins them with LF).
fn expected(id: &str, name: Option<&str>, data: &str) -> Event {
    Event {
        id: id.to_owned(),
        event: name.unwrap_or("message").to_owned(),
        data: data.replace("\r\n", "\n").replace('\r', "\n"),
    }
}

fn feed_all<'c>(chunks: impl IntoIterator<Item = &'c [u8]>) -> (Vec<Event>, EventStreamParser) {
    let mut parser = EventStreamParser::new();
    let mut events = Vec::new();
    for chunk in chunks {
        events.extend(parser.feed(chunk));
    }
    (events, parser)
}

/// Encodes, parses whole, and checks the one event and the parser's last event ID.
fn roundtrip(id: &str, name: Option<&str>, data: &str) -> Vec<u8> {
    let bytes = encode(id, name, data);
    let (events, parser) = feed_all([bytes.as_slice()]);
    assert_eq!(events, [expected(id, name, data)], "payload {data:?}");
    assert_eq!(parser.last_event_id(), id);
    bytes
}

/// As [`roundtrip`], and also for the bytes cut in two at every boundary.
fn roundtrip_every_split(id: &str, name: Option<&str>, data: &str) {
    let bytes = roundtrip(id, name, data);
    let want = [expected(id, name, data)];
    for cut in 0..=bytes.len() {
        let (events, _) = feed_all([&bytes[..cut], &bytes[cut..]]);
        assert_eq!(events, want, "payload {data:?} cut at {cut}");
    }
    let (events, _) = feed_all(bytes.chunks(1));
    assert_eq!(events, want, "payload {data:?} one byte at a time");
}

const PAYLOADS: &[&str] = &[
    "plain",
    "",
    "\n",
    "\r",
    "\r\n",
    "\n\n",
    "\r\r",
    "\r\n\r\n",
    "\n\r",
    "a\nb",
    "a\rb",
    "a\r\nb",
    "a\r\n\rb\n\r\nc",
    "trailing\n",
    "trailing\r\n\r\n",
    "\nleading",
    " leading space",
    "  two leading spaces",
    "line\n space after break",
    ":colon first",
    "data: looks like a field",
    "id: 666\nevent: forged\n\ndata: forged",
    "retry: 1\n",
    ": comment-like",
    "a\n\nb",
    "\u{feff}bom-like first char",
    "tab\tand\0nul",
    "é, €, 中文, 😀 and 👩‍👩‍👧",
    "multi-byte\r\n€\r😀\n",
];

#[test]
fn fixed_payloads_round_trip_at_every_split() {
    for data in PAYLOADS {
        roundtrip_every_split("42", None, data);
        roundtrip_every_split("7-3", Some("price"), data);
    }
}

#[test]
fn ids_and_names_round_trip() {
    for id in ["", "0", " leading space", "a:b", "é😀", "ringcast.x"] {
        for name in [None, Some("message"), Some("update"), Some("a:b"), Some("😀")] {
            roundtrip_every_split(id, name, "x\ny");
        }
    }
}

#[test]
fn empty_id_resets_the_last_event_id() {
    let mut bytes = encode("5", None, "a");
    bytes.extend(encode("", None, "b"));
    let (events, parser) = feed_all([bytes.as_slice()]);
    assert_eq!(events, [expected("5", None, "a"), expected("", None, "b")]);
    assert_eq!(parser.last_event_id(), "");
}

#[test]
fn a_whole_stream_of_retry_comments_and_events() {
    let mut bytes = Vec::new();
    sse::encode_retry(&mut bytes, 2500);
    sse::encode_comment(&mut bytes, "heartbeat");
    for (i, data) in PAYLOADS.iter().enumerate() {
        bytes.extend(encode(&i.to_string(), Some("e"), data));
        sse::encode_comment(&mut bytes, "");
    }
    let want: Vec<Event> = PAYLOADS
        .iter()
        .enumerate()
        .map(|(i, data)| expected(&i.to_string(), Some("e"), data))
        .collect();
    for size in [1, 2, 3, 5, 64, bytes.len()] {
        let (events, parser) = feed_all(bytes.chunks(size));
        assert_eq!(events, want, "chunks of {size}");
        assert_eq!(parser.retry_ms(), Some(2500));
        assert_eq!(parser.comments(), 1 + PAYLOADS.len());
    }
}

/// A small xorshift generator: chunk sizes vary without a dependency.
fn chunk_sizes(mut state: u64, max: usize) -> impl FnMut() -> usize {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        1 + (state % max as u64) as usize
    }
}

#[test]
fn one_mebibyte_payload_in_random_chunks() {
    let unit = "0123456789 abc: é€😀\r\nxyz\rq\n";
    let mut data = unit.repeat((1 << 20) / unit.len() + 1);
    let cut = (0..=1 << 20).rev().find(|&i| data.is_char_boundary(i));
    data.truncate(cut.unwrap_or(0));
    assert!(data.len() > (1 << 20) - 4);
    let bytes = roundtrip("1048576", Some("big"), &data);
    let want = [expected("1048576", Some("big"), &data)];
    for (seed, max) in [(1, 7), (2, 100), (3, 4096), (4, 70_000)] {
        let mut next = chunk_sizes(seed, max);
        let mut chunks = Vec::new();
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            let (chunk, after) = rest.split_at(next().min(rest.len()));
            chunks.push(chunk);
            rest = after;
        }
        let (events, _) = feed_all(chunks);
        assert_eq!(events, want, "seed {seed}, chunks up to {max} bytes");
    }
}

fn payload() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => any::<char>(),
            1 => Just('\r'),
            1 => Just('\n'),
            1 => Just(' '),
            1 => Just(':'),
        ],
        0..80,
    )
    .prop_map(String::from_iter)
}

proptest! {
    #[test]
    fn generated_payloads_round_trip(
        id in "[^\r\n\0]{0,12}",
        name in prop::option::of("[^\r\n]{1,12}"),
        data in payload(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let bytes = roundtrip(&id, name.as_deref(), &data);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut from = 0;
        for cut in cuts.into_iter().chain([bytes.len()]) {
            chunks.push(&bytes[from..cut]);
            from = cut;
        }
        let (events, _) = feed_all(chunks);
        prop_assert_eq!(events, [expected(&id, name.as_deref(), &data)]);
    }
}

/// The parser itself, against WHATWG HTML §9.2.6 and its examples.
mod parser_follows_the_spec {
    use ringcast_tests::whatwg::{Event, EventStreamParser};

    fn event(id: &str, event: &str, data: &str) -> Event {
        Event {
            id: id.into(),
            event: event.into(),
            data: data.into(),
        }
    }

    fn parse(bytes: &[u8]) -> Vec<Event> {
        EventStreamParser::new().feed(bytes)
    }

    /// Every way of cutting `bytes` in two gives the same events as feeding it whole.
    fn parse_checking_splits(bytes: &[u8]) -> Vec<Event> {
        let whole = parse(bytes);
        for cut in 0..=bytes.len() {
            let mut p = EventStreamParser::new();
            let mut events = p.feed(&bytes[..cut]);
            events.extend(p.feed(&bytes[cut..]));
            assert_eq!(events, whole, "cut at {cut}");
        }
        whole
    }

    #[test]
    fn spec_example_stock_ticker() {
        let events = parse_checking_splits(b"data: YHOO\ndata: +2\ndata: 10\n\n");
        assert_eq!(events, [event("", "message", "YHOO\n+2\n10")]);
    }

    #[test]
    fn spec_example_four_blocks() {
        let stream =
            b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n";
        let mut p = EventStreamParser::new();
        let events = p.feed(stream);
        assert_eq!(
            events,
            [
                event("1", "message", "first event"),
                event("", "message", "second event"),
                event("", "message", " third event"),
            ]
        );
        assert_eq!((p.comments(), p.last_event_id()), (1, ""));
        assert_eq!(parse_checking_splits(stream), events);
    }

    #[test]
    fn spec_example_empty_data() {
        // "The first block fires events with the data set to the empty string, as would
        // the last block if it was followed by a blank line. The middle block fires an
        // event with the data set to a single newline character. The last block is
        // discarded because it is not followed by a blank line."
        let events = parse_checking_splits(b"data\n\ndata\ndata\n\ndata:");
        assert_eq!(events, [event("", "message", ""), event("", "message", "\n")]);
    }

    #[test]
    fn spec_example_space_after_colon() {
        let events = parse_checking_splits(b"data:test\n\ndata: test\n\n");
        assert_eq!(
            events,
            [event("", "message", "test"), event("", "message", "test")]
        );
    }

    #[test]
    fn line_endings_crlf_lf_cr() {
        let events = parse_checking_splits(b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r");
        assert_eq!(
            events,
            [event("", "message", "a\nb\nc"), event("", "message", "d")]
        );
        // CR at the end of one feed and LF at the start of the next are one line break.
        let mut p = EventStreamParser::new();
        assert!(p.feed(b"data: x\r").is_empty());
        assert!(p.feed(b"\n").is_empty());
        assert_eq!(p.feed(b"\r"), [event("", "message", "x")]);
        // But a CR then LF across feeds that follow a blank-line CR is still just one.
        assert!(p.feed(b"\ndata: y\n").is_empty());
        assert_eq!(p.feed(b"\n"), [event("", "message", "y")]);
    }

    #[test]
    fn event_type_and_reset() {
        let events = parse_checking_splits(b"event: price\ndata: 1\n\nevent: ignored\n\ndata: 2\n\n");
        assert_eq!(events, [event("", "price", "1"), event("", "message", "2")]);
    }

    #[test]
    fn id_rules() {
        let mut p = EventStreamParser::new();
        let events = p.feed(b"id: 7\n\ndata: a\n\nid: 8\0\ndata: b\n\nid\ndata: c\n\nid: 9\n");
        assert_eq!(
            events,
            [
                event("7", "message", "a"),
                event("7", "message", "b"),
                event("", "message", "c")
            ]
        );
        // The id field is kept in the buffer but only reaches the last event ID string
        // at the next dispatch, even one that fires no event.
        assert_eq!(p.last_event_id(), "");
        assert!(p.feed(b"\n").is_empty());
        assert_eq!(p.last_event_id(), "9");
        assert_eq!(p.feed(b"data: d\n\n"), [event("9", "message", "d")]);
    }

    #[test]
    fn retry_rules() {
        let mut p = EventStreamParser::new();
        assert_eq!(p.retry_ms(), None);
        p.feed(b"retry: 3000\n");
        assert_eq!(p.retry_ms(), Some(3000));
        for ignored in [
            &b"retry: 12a\n"[..],
            b"retry: -1\n",
            b"retry:\n",
            b"retry:  5\n",
            b"retry: 1.5\n",
        ] {
            p.feed(ignored);
            assert_eq!(p.retry_ms(), Some(3000), "{}", String::from_utf8_lossy(ignored));
        }
        p.feed(b"retry:0\n\n");
        assert_eq!(p.retry_ms(), Some(0));
    }

    #[test]
    fn fields_are_case_sensitive_and_unknown_ones_ignored() {
        let events = parse_checking_splits(b"Data: x\nfoo: bar\nevent : y\ndata: z\n\n");
        assert_eq!(events, [event("", "message", "z")]);
    }

    #[test]
    fn value_keeps_everything_after_one_space() {
        let events = parse_checking_splits(b"data:  two: colons :\n\n");
        assert_eq!(events, [event("", "message", " two: colons :")]);
    }

    #[test]
    fn comments_are_counted() {
        let mut p = EventStreamParser::new();
        assert!(p.feed(b": hb\n\n:\n:x\r\n").is_empty());
        assert_eq!(p.comments(), 3);
    }

    #[test]
    fn bom_is_stripped_once_even_when_split() {
        let stream = b"\xef\xbb\xbfdata: a\n\n\xef\xbb\xbfdata: b\n\n";
        let events = parse_checking_splits(stream);
        // The second BOM is part of a field name, so that field is ignored.
        assert_eq!(events, [event("", "message", "a")]);
        let mut p = EventStreamParser::new();
        assert!(p.feed(b"\xef").is_empty());
        assert!(p.feed(b"\xbb").is_empty());
        assert_eq!(p.feed(b"\xbfdata: c\n\n"), [event("", "message", "c")]);
    }

    #[test]
    fn utf8_is_decoded_across_feeds_and_invalid_bytes_replaced() {
        let stream = "data: é€😀\n\n".as_bytes();
        assert_eq!(parse_checking_splits(stream), [event("", "message", "é€😀")]);
        let events = parse_checking_splits(b"data: a\xffb\xe2\x82\n\n");
        assert_eq!(events, [event("", "message", "a\u{fffd}b\u{fffd}")]);
    }

    #[test]
    fn incomplete_event_is_not_dispatched() {
        let mut p = EventStreamParser::new();
        assert!(p.feed(b"data: a\n").is_empty());
        assert!(p.feed(b"data: b").is_empty());
        assert_eq!(p.feed(b"\n\n"), [event("", "message", "a\nb")]);
    }
}
