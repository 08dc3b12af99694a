//! The WebSocket transport against a real client library, Python `websockets` (driven
//! by `tests/py/ws_driver.py`, see [`WsDriver`]), and against a raw TCP client that
//! breaks the protocol on purpose ([`RawWs`]):
//!
//! - events published on the ingest socket arrive as JSON frames (id, topic, event,
//!   data) or as raw payloads, ids equal to the publish ids, payloads byte for byte
//!   (multi-line, non-ASCII);
//! - a client that drops and reconnects with `last_event_id` (query) or `Last-Event-ID`
//!   (header) gets exactly what it missed, then live events; a foreign epoch's id gets a
//!   `ringcast.reset` first;
//! - `subscribe`/`unsubscribe` messages and each of their error replies; any other
//!   message gets the "no backend" error and counts in `upstream_refused`;
//! - `--ws-allow-origin`: 101 for a listed Origin, 403 for another;
//! - unmasked frames (1002), invalid UTF-8 (1007) and oversized messages (1009) close
//!   that connection only, counted in `ws_protocol_errors`;
//! - keepalive: a peer that never answers pings is closed, one that does stays;
//! - `--ws-deflate on`: websockets negotiates permessage-deflate and gets every event
//!   and reply exactly, its compressed messages inflated; on the wire every deflate
//!   subscriber gets the same compressed frame (RSV1), small events go plain; bombs
//!   close with 1009, corrupt streams and bad UTF-8 with 1007, RSV1 misuse with 1002.
//!
//! Needs `python3` with the packages of `tests/py/requirements.txt` (`.ci/run` installs
//! them); without them these tests fail, saying so.
use std::thread;
use std::time::{Duration, Instant};

use ringcast_tests::engine::Engine;
use ringcast_tests::http::End;
use ringcast_tests::ingest::Publisher;
use ringcast_tests::json::FlatObject;
use ringcast_tests::wsclient::{
    client_frame, field, handshake, masked, opcode, RawWs, WsDriver, SAMPLE_ACCEPT,
};
use ringcast_tests::{epoch_of, seq_of, QUIET, WAIT};

/// A field that may be `null`: `None` if it is missing or `null`.
fn opt<'r>(reply: &'r FlatObject, name: &str) -> Option<&'r str> {
    reply.get(name).and_then(Option::as_deref)
}

/// Checks a JSON event frame: its exact set of fields and their values.
fn assert_event(msg: &FlatObject, id: &str, topic: &str, event: Option<&str>, data: &str) {
    let names: Vec<&str> = msg
        .keys()
        .filter(|k| k.starts_with("j."))
        .map(String::as_str)
        .collect();
    assert_eq!(names, ["j.data", "j.event", "j.id", "j.topic"], "{msg:?}");
    assert_eq!(field(msg, "j.id"), id, "{msg:?}");
    assert_eq!(field(msg, "j.topic"), topic, "{msg:?}");
    assert_eq!(opt(msg, "j.event"), event, "{msg:?}");
    assert_eq!(field(msg, "j.data"), data, "{msg:?}");
}

/// Checks a control reply `{"event":E,"topic":T}` or, for errors, with a reason
/// containing `reason`.
fn assert_reply(msg: &FlatObject, event: &str, topic: Option<&str>, reason: Option<&str>) {
    assert_eq!(field(msg, "j.event"), event, "{msg:?}");
    assert_eq!(opt(msg, "j.topic"), topic, "{msg:?}");
    match reason {
        Some(words) => assert!(field(msg, "j.reason").contains(words), "{msg:?}: want {words:?}"),
        None => assert!(!msg.contains_key("j.reason"), "{msg:?}"),
    }
}

/// Payloads a line-based encoding could mangle: line ends of every kind, non-ASCII,
/// JSON's own metacharacters.
const PAYLOADS: &[&str] = &[
    "hello",
    "line one\nline two\r\nline three\rline four",
    "trailing newline\n",
    "héllo wörld ✓ 日本語 😀",
    r#"{"quoted":"a \"b\" \\ c","tab":"	"}"#,
    "data: not a field\n\nid: nor this",
];

#[test]
fn json_and_raw_frames_carry_the_published_events() {
    let engine = Engine::start(&[]);
    let mut p = Publisher::connect(&engine.ingest);
    let mut ws = WsDriver::start(engine.addr);
    let open = ws.connect("json", "/ws?topic=news", &[]);
    // websockets offers permessage-deflate; with --ws-deflate off (the default) the
    // engine must not accept it (RFC 6455 §9.1), as before the setting existed.
    assert_eq!(opt(&open, "extensions"), None, "{open:?}");
    ws.connect("raw", "/ws?topic=news&format=raw", &[]);
    ws.connect("both", "/ws?topic=a&topic=b", &[]);

    let mut last_seq = 0;
    for payload in PAYLOADS {
        let id = p.publish("news", payload.as_bytes());
        assert_eq!(epoch_of(&id), engine.epoch);
        assert!(seq_of(&id) > last_seq, "{id} after seq {last_seq}");
        last_seq = seq_of(&id);
        assert_event(&ws.recv("json"), &id, "news", None, payload);
        let raw = ws.recv("raw");
        assert_eq!(field(&raw, "text"), *payload, "{raw:?}");
    }
    let named = p.publish_with("news", b"with a name", "event=headline");
    assert_event(&ws.recv("json"), &named, "news", Some("headline"), "with a name");
    assert_eq!(field(&ws.recv("raw"), "text"), "with a name");

    let a = p.publish("a", b"on a");
    let b = p.publish("b", b"on b");
    assert_event(&ws.recv("both"), &a, "a", None, "on a");
    assert_event(&ws.recv("both"), &b, "b", None, "on b");
    ws.expect_quiet("json", QUIET);
    ws.expect_quiet("raw", QUIET);
    assert_eq!(ws.close("json").as_deref(), Some("1000"), "the close echoes 1000");
    ws.finish();
    assert_eq!(engine.counter("websockets"), 3);
}

#[test]
fn reconnect_with_last_event_id_replays_exactly_the_missed_events() {
    let engine = Engine::start(&[]);
    let mut p = Publisher::connect(&engine.ingest);
    let mut ws = WsDriver::start(engine.addr);
    ws.connect("c", "/ws?topic=r", &[]);
    let first: Vec<String> = (1..=3)
        .map(|i| p.publish("r", format!("r {i}").as_bytes()))
        .collect();
    for (i, id) in first.iter().enumerate() {
        assert_event(&ws.recv("c"), id, "r", None, &format!("r {}", i + 1));
    }
    ws.close("c");

    let missed: Vec<String> = (4..=6)
        .map(|i| p.publish("r", format!("r {i}").as_bytes()))
        .collect();
    ws.connect("c", &format!("/ws?topic=r&last_event_id={}", first[2]), &[]);
    for (i, id) in missed.iter().enumerate() {
        assert_event(&ws.recv("c"), id, "r", None, &format!("r {}", i + 4));
    }
    ws.expect_quiet("c", QUIET);
    let live = p.publish("r", b"r 7");
    assert_event(&ws.recv("c"), &live, "r", None, "r 7");
    ws.expect_quiet("c", QUIET);

    // The same with the header, from the middle of the gap.
    ws.connect("h", "/ws?topic=r", &[("Last-Event-ID", &missed[1])]);
    assert_event(&ws.recv("h"), &missed[2], "r", None, "r 6");
    assert_event(&ws.recv("h"), &live, "r", None, "r 7");
    ws.expect_quiet("h", QUIET);
    ws.finish();
}

#[test]
fn an_id_of_another_epoch_gets_a_reset_first_then_the_history_then_live() {
    let engine = Engine::start(&[]);
    let mut p = Publisher::connect(&engine.ingest);
    let retained: Vec<String> = (1..=2)
        .map(|i| p.publish("e", format!("e {i}").as_bytes()))
        .collect();
    let foreign = "1234abcd-5";
    assert_ne!(epoch_of(foreign), engine.epoch);

    let mut ws = WsDriver::start(engine.addr);
    ws.connect("c", &format!("/ws?topic=e&last_event_id={foreign}"), &[]);
    let reset = ws.recv("c");
    assert_eq!(field(&reset, "j.event"), "ringcast.reset", "{reset:?}");
    assert_eq!(field(&reset, "j.data_type"), "object", "{reset:?}");
    assert_eq!(field(&reset, "j.data.reason"), "unknown-epoch", "{reset:?}");
    assert_eq!(field(&reset, "j.data.last_event_id"), foreign, "{reset:?}");
    assert_eq!(
        opt(&reset, "j.data.oldest_id"),
        Some(retained[0].as_str()),
        "{reset:?}"
    );
    assert_eq!(epoch_of(field(&reset, "j.id")), engine.epoch, "{reset:?}");
    assert_event(&ws.recv("c"), &retained[0], "e", None, "e 1");
    assert_event(&ws.recv("c"), &retained[1], "e", None, "e 2");
    let live = p.publish("e", b"e 3");
    assert_event(&ws.recv("c"), &live, "e", None, "e 3");

    // A malformed id on a topic without history: a reset naming no oldest id, then live.
    ws.connect("m", "/ws?topic=empty&last_event_id=garbage", &[]);
    let reset = ws.recv("m");
    assert_eq!(field(&reset, "j.event"), "ringcast.reset", "{reset:?}");
    assert_eq!(field(&reset, "j.data.reason"), "malformed-id", "{reset:?}");
    assert_eq!(field(&reset, "j.data.last_event_id"), "garbage", "{reset:?}");
    assert_eq!(opt(&reset, "j.data.oldest_id"), None, "{reset:?}");
    let live = p.publish("empty", b"first");
    assert_event(&ws.recv("m"), &live, "empty", None, "first");
    ws.finish();
}

#[test]
fn subscribe_and_unsubscribe_messages_change_the_topics() {
    let engine = Engine::start(&[]);
    let mut p = Publisher::connect(&engine.ingest);
    let mut ws = WsDriver::start(engine.addr);
    ws.connect("c", "/ws", &[]);
    p.publish("s", b"before");
    ws.expect_quiet("c", QUIET);

    ws.send_text("c", r#"{"op":"subscribe","topic":"s"}"#);
    assert_reply(&ws.recv("c"), "ringcast.subscribed", Some("s"), None);
    let id = p.publish("s", b"after");
    assert_event(&ws.recv("c"), &id, "s", None, "after");

    let errors: &[(&str, Option<&str>, &str)] = &[
        (
            r#"{"op":"subscribe","topic":"s"}"#,
            Some("s"),
            "already subscribed",
        ),
        (
            r#"{"op":"subscribe","topic":"no spaces"}"#,
            Some("no spaces"),
            "invalid topic",
        ),
        (r#"{"op":"subscribe","topic":""}"#, Some(""), "invalid topic"),
        (r#"{"op":"subscribe"}"#, None, "invalid topic"),
        (
            r#"{"op":"unsubscribe","topic":"other"}"#,
            Some("other"),
            "not subscribed",
        ),
        (r#"{"op":"publish","topic":"s"}"#, Some("s"), "unknown op"),
    ];
    for (message, topic, reason) in errors {
        ws.send_text("c", message);
        assert_reply(&ws.recv("c"), "ringcast.error", *topic, Some(reason));
    }

    // The liveness probe a browser can see (it cannot see WebSocket pings).
    ws.send_text("c", r#"{"op":"ping"}"#);
    let pong = ws.recv("c");
    assert_eq!(field(&pong, "j.event"), "ringcast.pong", "{pong:?}");
    assert!(!pong.contains_key("j.topic"), "{pong:?}");

    ws.send_text("c", r#"{"op":"unsubscribe","topic":"s"}"#);
    assert_reply(&ws.recv("c"), "ringcast.unsubscribed", Some("s"), None);
    p.publish("s", b"gone");
    ws.expect_quiet("c", QUIET);
    ws.send_text("c", r#"{"op":"unsubscribe","topic":"s"}"#);
    assert_reply(&ws.recv("c"), "ringcast.error", Some("s"), Some("not subscribed"));

    // 64 topics per connection (the URL's count too): the 65th is refused.
    ws.connect("many", "/ws?topic=t0", &[]);
    for i in 1..64 {
        ws.send_text("many", &format!(r#"{{"op":"subscribe","topic":"t{i}"}}"#));
        assert_reply(
            &ws.recv("many"),
            "ringcast.subscribed",
            Some(&format!("t{i}")),
            None,
        );
    }
    ws.send_text("many", r#"{"op":"subscribe","topic":"t64"}"#);
    assert_reply(
        &ws.recv("many"),
        "ringcast.error",
        Some("t64"),
        Some("too many topics"),
    );
    let first = p.publish("t0", b"zero");
    let last = p.publish("t63", b"sixty-three");
    p.publish("t64", b"not subscribed");
    assert_event(&ws.recv("many"), &first, "t0", None, "zero");
    assert_event(&ws.recv("many"), &last, "t63", None, "sixty-three");
    ws.expect_quiet("many", QUIET);
    ws.finish();
}

#[test]
fn upstream_messages_get_the_no_backend_error_and_are_counted() {
    const REFUSED: &str =
        r#"{"event":"ringcast.error","reason":"no backend is listening for upstream messages","topic":null}"#;
    let engine = Engine::start(&[]);
    let mut p = Publisher::connect(&engine.ingest);
    let mut ws = WsDriver::start(engine.addr);
    ws.connect("c", "/ws?topic=u", &[]);
    let before = engine.counter("upstream_refused");
    ws.send_text("c", "hello backend");
    assert_eq!(field(&ws.recv("c"), "text"), REFUSED);
    ws.send_binary("c", &[0, 1, 2, 0xFF]);
    assert_eq!(field(&ws.recv("c"), "text"), REFUSED);
    ws.send_text("c", r#"{"message":"JSON, but no op"}"#);
    assert_eq!(field(&ws.recv("c"), "text"), REFUSED);
    assert_eq!(engine.counter("upstream_refused"), before + 3);

    let id = p.publish("u", b"still subscribed");
    assert_event(&ws.recv("c"), &id, "u", None, "still subscribed");
    ws.finish();
}

#[test]
fn origins_outside_the_allow_list_get_403() {
    const ALLOWED: &str = "https://app.example.com";
    const EVIL: &str = "https://evil.example";
    let engine = Engine::start(&["--ws-allow-origin", ALLOWED]);
    let mut ws = WsDriver::start(engine.addr);
    let ok = ws.connect_with_origin("ok", "/ws?topic=o", ALLOWED, 101);
    assert_eq!(field(&ok, "kind"), "open", "{ok:?}");
    let refused = ws.connect_with_origin("evil", "/ws?topic=o", EVIL, 403);
    assert_eq!(field(&refused, "kind"), "rejected", "{refused:?}");
    assert_eq!(field(&refused, "status"), "403", "{refused:?}");

    // The exact status line and accept value on the wire.
    let (response, _) = handshake(engine.addr, "/ws?topic=o", &[("Origin", EVIL)]);
    assert_eq!(response.status, 403, "{response:?}");
    assert_eq!(response.header("Sec-WebSocket-Accept"), None, "{response:?}");
    let raw = RawWs::connect(engine.addr, "/ws?topic=o", &[("Origin", ALLOWED)]);
    assert_eq!(raw.response.header("Sec-WebSocket-Accept"), Some(SAMPLE_ACCEPT));
    // No Origin header at all (a non-browser client) is allowed.
    RawWs::connect(engine.addr, "/ws?topic=o", &[]);
    ws.finish();

    // Without the flag, the same Origin is let in: the 403 above is the list's doing.
    let open = Engine::start(&[]);
    RawWs::connect(open.addr, "/ws?topic=o", &[("Origin", EVIL)]);
}

/// A broken client's input, and the close code it must get.
struct BadInput {
    what: &'static str,
    bytes: Vec<u8>,
    code: u16,
}

fn bad_inputs(max_message: usize) -> Vec<BadInput> {
    let half = vec![b'x'; max_message / 2 + 1];
    let mut split_over_max = client_frame(opcode::TEXT, false, Some([1, 2, 3, 4]), &half);
    split_over_max.extend(client_frame(
        opcode::CONTINUATION,
        true,
        Some([5, 6, 7, 8]),
        &half,
    ));
    vec![
        BadInput {
            what: "unmasked text frame",
            bytes: client_frame(opcode::TEXT, true, None, b"hello"),
            code: 1002,
        },
        BadInput {
            what: "text frame with invalid UTF-8",
            bytes: masked(opcode::TEXT, b"valid so far \xF0\x28\x8C\x28"),
            code: 1007,
        },
        BadInput {
            what: "one frame over --ws-max-message",
            bytes: masked(opcode::TEXT, &vec![b'y'; max_message + 1]),
            code: 1009,
        },
        BadInput {
            what: "two fragments together over --ws-max-message",
            bytes: split_over_max,
            code: 1009,
        },
    ]
}

#[test]
fn bad_frames_close_only_their_connection_with_the_rfc_code() {
    const MAX: usize = 1024;
    let engine = Engine::start(&["--ws-max-message", &MAX.to_string()]);
    let mut p = Publisher::connect(&engine.ingest);
    let mut ws = WsDriver::start(engine.addr);
    ws.connect("sub", "/ws?topic=bf", &[]);

    // A message of exactly the limit is fine.
    let mut fine = RawWs::connect(engine.addr, "/ws?topic=bf", &[]);
    fine.send_raw(&masked(opcode::PING, b"ping payload"))
        .expect("send a ping");
    let pong = fine.next_frame(WAIT).expect("a pong");
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (opcode::PONG, &b"ping payload"[..])
    );
    fine.send_text(&"z".repeat(MAX));
    let refused = fine.next_frame(WAIT).expect("the upstream error reply");
    assert!(refused.text().contains("no backend"), "{refused:?}");

    for (round, bad) in bad_inputs(MAX).into_iter().enumerate() {
        let before = engine.counter("ws_protocol_errors");
        let mut raw = RawWs::connect(engine.addr, "/ws?topic=bf", &[]);
        // The engine may close before it has read all of an oversized message.
        let _ = raw.send_raw(&bad.bytes);
        let (close, skipped) = raw.expect_close(WAIT);
        assert!(
            skipped.is_empty(),
            "{}: frames before the close: {skipped:?}",
            bad.what
        );
        assert_eq!(close.close_code(), Some(bad.code), "{}: {close:?}", bad.what);
        assert!(!close.masked && close.fin, "{}: {close:?}", bad.what);
        assert!(
            raw.closes_within(WAIT),
            "{}: the TCP connection stayed open",
            bad.what
        );
        assert_eq!(engine.counter("ws_protocol_errors"), before + 1, "{}", bad.what);

        let data = format!("after bad input {round}");
        let id = p.publish("bf", data.as_bytes());
        assert_event(&ws.recv("sub"), &id, "bf", None, &data);
    }
    // The good raw client saw the events too, unharmed.
    for round in 0..4 {
        let frame = fine.next_frame(WAIT).expect("an event frame");
        assert!(
            frame.text().contains(&format!("after bad input {round}")),
            "{frame:?}"
        );
    }
    ws.finish();
}

#[test]
fn a_peer_that_never_answers_pings_is_closed_and_one_that_does_stays() {
    const PING_MS: u64 = 300;
    let ping_ms = PING_MS.to_string();
    let engine = Engine::start(&["--ws-ping-ms", &ping_ms, "--ws-pong-timeout-ms", &ping_ms]);
    let mut p = Publisher::connect(&engine.ingest);
    let mut ws = WsDriver::start(engine.addr);
    ws.connect("live", "/ws?topic=k", &[]);

    let mut mute = RawWs::connect(engine.addr, "/ws?topic=k", &[]);
    let opened = Instant::now();
    let watcher = thread::spawn(move || {
        // Read everything, answer nothing, until the engine closes the connection.
        let mut frames = Vec::new();
        let deadline = opened + Duration::from_secs(3);
        loop {
            match mute.next_frame(deadline.saturating_duration_since(Instant::now())) {
                Ok(frame) => frames.push((opened.elapsed(), frame)),
                Err(End::Closed) => return (Some(opened.elapsed()), frames),
                Err(End::TimedOut) => return (None, frames),
            }
        }
    });
    let received = ws.expect_alive("live", Duration::from_secs(2));
    assert_eq!(received, 0, "no event was published");
    let (closed_after, frames) = watcher.join().expect("the watcher thread");
    let closed_after = closed_after.unwrap_or_else(|| {
        panic!(
            "the silent peer was still open 3 s after its handshake (--ws-ping-ms {PING_MS}, \
             --ws-pong-timeout-ms {PING_MS}); frames it got: {frames:?}; {}",
            engine.stats()
        )
    });
    assert!(
        closed_after <= Duration::from_millis(1500),
        "the silent peer was closed only after {closed_after:?}; frames: {frames:?}"
    );
    let pings: Vec<_> = frames.iter().filter(|(_, f)| f.opcode == opcode::PING).collect();
    assert!(!pings.is_empty(), "closed without a ping first: {frames:?}");
    assert!(
        pings[0].0 >= Duration::from_millis(PING_MS - 50),
        "pinged after {:?}, before --ws-ping-ms of silence",
        pings[0].0
    );
    assert_eq!(engine.counter("ws_pong_timeouts"), 1);
    // The live client was pinged several times in 2 s and answered each.
    assert!(engine.counter("ws_pings") >= 3, "{}", engine.stats());

    let id = p.publish("k", b"still here");
    assert_event(&ws.recv("live"), &id, "k", None, "still here");
    ws.finish();
}

/// The 101's `Sec-WebSocket-Extensions` when the engine accepts permessage-deflate.
const DEFLATE_RESPONSE: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// Raw DEFLATE of `data` as a permessage-deflate sender makes it: sync flush, the
/// `00 00 ff ff` tail removed (RFC 7692 §7.2.1).
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, flate2::FlushCompress::Sync)
        .expect("deflate");
    assert_eq!(c.total_in() as usize, data.len(), "room for the whole output");
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]), "{out:02x?}");
    out.truncate(out.len() - 4);
    out
}

/// Inflates a compressed message's payload (RFC 7692 §7.2.2), context-free.
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut d = flate2::Decompress::new(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
        .expect("a valid DEFLATE stream");
    assert_eq!(d.total_in() as usize, input.len(), "all of it inflated");
    out
}

/// A masked client frame with RSV1 set: a compressed message (RFC 7692 §6).
fn compressed_frame(op: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = client_frame(op, true, Some([9, 8, 7, 6]), payload);
    frame[0] |= 0x40;
    frame
}

/// About 1 KiB of JSON, as the measurements publish: ASCII without characters JSON escapes.
fn json_kib(i: usize) -> String {
    let items: Vec<String> = (0..28)
        .map(|k| {
            format!(
                "{{'sym':'S{k:02}','venue':'XNAS','px':{}.{k:02},'qty':{}}}",
                100 + i + k,
                10 * k + i
            )
        })
        .collect();
    format!("[{}]", items.join(",")).replace('\'', "")
}

#[test]
fn deflate_with_a_real_client_events_and_messages_round_trip() {
    let engine = Engine::start(&["--ws-deflate", "on", "--ws-deflate-min-bytes", "64"]);
    let mut p = Publisher::connect(&engine.ingest);
    // Python websockets offers `permessage-deflate; client_max_window_bits` and
    // compresses what it sends.
    let mut ws = WsDriver::start(engine.addr);
    let open = ws.connect("json", "/ws?topic=z", &[]);
    assert_eq!(opt(&open, "extensions"), Some(DEFLATE_RESPONSE), "{open:?}");
    ws.connect("raw", "/ws?topic=z&format=raw", &[]);
    let big: Vec<String> = (0..3).map(json_kib).collect();
    for payload in PAYLOADS.iter().copied().chain(big.iter().map(String::as_str)) {
        let id = p.publish("z", payload.as_bytes());
        assert_event(&ws.recv("json"), &id, "z", None, payload);
        assert_eq!(field(&ws.recv("raw"), "text"), payload);
    }
    // Client messages arrive compressed and are inflated: an op and an upstream message.
    ws.send_text("json", r#"{"op":"subscribe","topic":"more"}"#);
    assert_reply(&ws.recv("json"), "ringcast.subscribed", Some("more"), None);
    ws.send_text("json", &json_kib(9));
    assert_reply(&ws.recv("json"), "ringcast.error", None, Some("no backend"));
    let id = p.publish("more", big[1].as_bytes());
    assert_event(&ws.recv("json"), &id, "more", None, &big[1]);
    assert_eq!(ws.close("json").as_deref(), Some("1000"));
    ws.finish();
    assert_eq!(engine.counter("ws_protocol_errors"), 0);
}

#[test]
fn deflate_frames_on_the_wire_are_one_shared_encoding() {
    let engine = Engine::start(&[
        "--ws-deflate",
        "on",
        "--ws-deflate-min-bytes",
        "200",
        "--loops",
        "2",
    ]);
    let mut p = Publisher::connect(&engine.ingest);
    let offer = [(
        "Sec-WebSocket-Extensions",
        "permessage-deflate; client_max_window_bits",
    )];
    let mut subs: Vec<RawWs> = (0..4)
        .map(|_| RawWs::connect(engine.addr, "/ws?topic=w&format=raw", &offer))
        .collect();
    for sub in &subs {
        assert_eq!(
            sub.response.header("Sec-WebSocket-Extensions"),
            Some(DEFLATE_RESPONSE)
        );
    }
    let mut plain = RawWs::connect(engine.addr, "/ws?topic=w", &[]);
    assert_eq!(plain.response.header("Sec-WebSocket-Extensions"), None);

    let data = json_kib(1);
    let id = p.publish("w", data.as_bytes());
    let frames: Vec<_> = subs
        .iter_mut()
        .map(|s| s.next_frame(WAIT).expect("an event"))
        .collect();
    for frame in &frames {
        assert_eq!(
            (frame.fin, frame.rsv, frame.opcode),
            (true, 0b100, opcode::TEXT),
            "{frame:?}"
        );
        // Every subscriber, on either loop, gets the same compressed bytes.
        assert_eq!(frame.payload, frames[0].payload);
    }
    assert!(
        data.len() > 1000 && frames[0].payload.len() * 2 < data.len(),
        "{} of {}",
        frames[0].payload.len(),
        data.len()
    );
    assert_eq!(inflate(&frames[0].payload), data.as_bytes());
    // The subscriber without the extension gets the plain JSON frame.
    let frame = plain.next_frame(WAIT).expect("an event");
    assert_eq!(frame.rsv, 0);
    assert!(
        frame.text().contains(&id) && frame.text().contains(&data),
        "{frame:?}"
    );

    // Below the threshold: plain frames, RSV1 clear.
    p.publish("w", b"short event");
    for sub in &mut subs {
        let frame = sub.next_frame(WAIT).expect("an event");
        assert_eq!((frame.rsv, frame.payload.as_slice()), (0, &b"short event"[..]));
    }
    // A compressed message from a client is inflated (here: an op and its reply).
    let op = deflate(br#"{"op":"subscribe","topic":"w2"}"#);
    subs[0].send_raw(&compressed_frame(opcode::TEXT, &op)).unwrap();
    let reply = subs[0].next_frame(WAIT).expect("a reply");
    assert_eq!(reply.rsv, 0, "control replies go plain");
    assert!(reply.text().contains("ringcast.subscribed"), "{reply:?}");
}

#[test]
fn deflate_bad_input_closes_only_that_connection() {
    const MAX: usize = 64 << 10;
    let engine = Engine::start(&["--ws-deflate", "on", "--ws-max-message", &MAX.to_string()]);
    let mut p = Publisher::connect(&engine.ingest);
    let offer = [("Sec-WebSocket-Extensions", "permessage-deflate")];
    let mut good = RawWs::connect(engine.addr, "/ws?topic=g&format=raw", &offer);
    let bomb = deflate(&vec![0u8; 16 << 20]);
    assert!(bomb.len() < MAX, "the bomb itself fits the limit: {}", bomb.len());
    let mut fragmented_rsv1 = client_frame(opcode::TEXT, false, Some([1, 2, 3, 4]), b"a");
    fragmented_rsv1.extend(compressed_frame(opcode::CONTINUATION, b"b"));
    /// What is sent, with which handshake headers, and the close code it must get.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Vec<u8>, u16);
    let cases: Vec<Case<'_>> = vec![
        (
            "16 MiB inflated from 16 KiB",
            &offer,
            compressed_frame(opcode::BINARY, &bomb),
            1009,
        ),
        (
            "one byte past the limit",
            &offer,
            compressed_frame(opcode::BINARY, &deflate(&vec![b'q'; MAX + 1])),
            1009,
        ),
        (
            "not a DEFLATE stream",
            &offer,
            compressed_frame(opcode::BINARY, &[0xff, 0xff, 0xff]),
            1007,
        ),
        (
            "compressed text not UTF-8",
            &offer,
            compressed_frame(opcode::TEXT, &deflate(b"ok \xF0\x28\x8C\x28")),
            1007,
        ),
        (
            "RSV1 on a ping",
            &offer,
            compressed_frame(opcode::PING, b""),
            1002,
        ),
        ("RSV1 on a continuation", &offer, fragmented_rsv1, 1002),
        (
            "RSV1 without negotiation",
            &[],
            compressed_frame(opcode::TEXT, &deflate(b"hello")),
            1002,
        ),
    ];
    for (round, (what, extra, bytes, code)) in cases.into_iter().enumerate() {
        let before = engine.counter("ws_protocol_errors");
        let mut raw = RawWs::connect(engine.addr, "/ws?topic=g", extra);
        let _ = raw.send_raw(&bytes);
        let (close, skipped) = raw.expect_close(WAIT);
        assert!(skipped.is_empty(), "{what}: {skipped:?}");
        assert_eq!(close.close_code(), Some(code), "{what}: {close:?}");
        assert!(raw.closes_within(WAIT), "{what}: the TCP connection stayed open");
        assert_eq!(engine.counter("ws_protocol_errors"), before + 1, "{what}");
        // The engine carries on: the good subscriber still gets events.
        let data = format!("after {round}");
        p.publish("g", data.as_bytes());
        let frame = good.next_frame(WAIT).expect("an event");
        assert_eq!(frame.payload, data.as_bytes(), "{what}");
    }
    // A message inflating to exactly the limit is fine.
    let exact = deflate(&vec![b'e'; MAX]);
    good.send_raw(&compressed_frame(opcode::BINARY, &exact)).unwrap();
    let reply = good.next_frame(WAIT).expect("the upstream error reply");
    assert!(reply.text().contains("no backend"), "{reply:?}");
}
