//! Delivery to subscribers, judged by a WHATWG EventSource parser: what `ringcast publish`
//! and raw ingest writes publish reaches every subscriber of its topic exactly once, in
//! order, under the id the publisher was told, with the data a browser would see; nothing
//! reaches subscribers of other topics. Also the stream's head and exact bytes, chunked
//! (HTTP/1.1) and unchunked (HTTP/1.0), and the spread of subscribers over both loops.
use ringcast_tests::engine::Engine;
use ringcast_tests::ingest::{cli_publish, Publisher};
use ringcast_tests::sse::SseClient;
use ringcast_tests::whatwg::Event;
use ringcast_tests::{epoch_of, seq_of, WAIT};

/// What an EventSource sees of a payload: lines may end in CRLF, LF or CR, and each
/// becomes an LF (WHATWG HTML §9.2.6).
fn as_seen(payload: &[u8]) -> String {
    String::from_utf8(payload.to_vec())
        .expect("test payloads are UTF-8")
        .replace("\r\n", "\n")
        .replace('\r', "\n")
}

fn event(id: &str, event: &str, data: &str) -> Event {
    Event {
        id: id.to_owned(),
        event: event.to_owned(),
        data: data.to_owned(),
    }
}

#[test]
fn stream_head_fields_and_retry_come_first() {
    let engine = Engine::start(&["--retry-ms", "1234"]);
    let mut sub = SseClient::subscribe(engine.addr, &["news"]);
    let r = sub.response.clone();
    assert_eq!(r.version, "HTTP/1.1", "{r:?}");
    assert_eq!(r.header("Cache-Control"), Some("no-cache"), "{r:?}");
    assert_eq!(r.header("X-Accel-Buffering"), Some("no"), "{r:?}");
    assert_eq!(r.header("Transfer-Encoding"), Some("chunked"), "{r:?}");
    assert_eq!(r.header_count("Content-Length"), 0, "{r:?}");
    assert!(!r.closes(), "{r:?}");
    assert!(sub.loop_index() < 2, "{r:?}");
    let want = b"retry: 1234\n\n";
    assert!(sub.read_body_len(want.len(), WAIT), "body: {:?}", sub.body());
    assert_eq!(sub.body(), want);
    assert_eq!(sub.parser().retry_ms(), Some(1234));

    let id = Publisher::connect(&engine.ingest).publish("news", b"x");
    assert_eq!(sub.expect_event(), event(&id, "message", "x"));
    let whole = format!("retry: 1234\n\nid: {id}\ndata: x\n\n");
    assert_eq!(String::from_utf8_lossy(sub.body()), whole);
}

#[test]
fn cli_publish_reaches_the_subscriber_with_its_id() {
    let engine = Engine::start(&[]);
    let mut sub = SseClient::subscribe(engine.addr, &["news"]);

    let out = cli_publish(&engine.ingest, &["news", "hello world"], None);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    let first = out.stdout.trim();
    assert_eq!(epoch_of(first), engine.epoch);
    assert_eq!(sub.expect_event(), event(first, "message", "hello world"));

    // Data from stdin, several lines (one empty), an event name and a key.
    let stdin = "first line\nsecond: line\n\n: not a comment\nlast";
    let out = cli_publish(
        &engine.ingest,
        &["--event", "greeting", "--key", "k1", "news"],
        Some(stdin.as_bytes()),
    );
    assert!(out.status.success(), "{out:?}");
    let second = out.stdout.trim();
    assert!(seq_of(second) > seq_of(first), "{first} then {second}");
    assert_eq!(sub.expect_event(), event(second, "greeting", stdin));
}

#[test]
fn cli_publish_refusal_exits_1_with_the_reason() {
    let engine = Engine::start(&[]);
    let mut sub = SseClient::subscribe(engine.addr, &["news"]);
    let out = cli_publish(&engine.ingest, &["bad topic!", "x"], None);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(out.stderr.contains("topic"), "{out:?}");
    let out = cli_publish(
        &engine.ingest,
        &["--event", "ringcast.reset", "news", "spoof"],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!out.stderr.is_empty(), "{out:?}");
    // Nothing was published: the next event is the next valid publish.
    let id = Publisher::connect(&engine.ingest).publish("news", b"valid");
    assert_eq!(sub.expect_event(), event(&id, "message", "valid"));
}

#[test]
fn raw_publishes_arrive_exactly_as_sent() {
    let engine = Engine::start(&[]);
    let mut sub = SseClient::subscribe(engine.addr, &["raw"]);
    let mut publisher = Publisher::connect(&engine.ingest);
    let payloads: [&[u8]; 10] = [
        b"plain",
        b"",
        b"two\nlines",
        b"trailing newline\n",
        b"\n\nleading newlines",
        b" leading space and : colon",
        b"data: forged\n\nid: 999\nevent: forged\nretry: 1",
        b"cr\ronly and crlf\r\nmixed",
        "h\u{e9}llo \u{2713} \u{1f600}".as_bytes(),
        b"tab\there",
    ];
    let mut want = Vec::new();
    for (i, payload) in payloads.iter().enumerate() {
        let options = if i % 2 == 0 {
            String::new()
        } else {
            format!("event=kind{i}")
        };
        let id = publisher.publish_with("raw", payload, &options);
        let name = if i % 2 == 0 {
            "message".to_owned()
        } else {
            format!("kind{i}")
        };
        want.push(event(&id, &name, &as_seen(payload)));
    }
    assert_eq!(sub.events_until(want.len(), WAIT), want);
    // The forged `retry: 1` inside a payload must stay data.
    assert_eq!(sub.parser().retry_ms(), Some(3000));
    let ids: Vec<u64> = want.iter().map(|e| seq_of(&e.id)).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids not increasing: {ids:?}");
}

#[test]
fn subscribers_get_their_topics_and_no_others() {
    let engine = Engine::start(&[]);
    let mut both = SseClient::subscribe(engine.addr, &["alpha", "beta"]);
    let mut beta = SseClient::subscribe(engine.addr, &["beta"]);
    let mut dup = SseClient::open(engine.addr, "/sse?topic=beta&topic=beta", &[]);
    dup.assert_stream();
    let mut p = Publisher::connect(&engine.ingest);
    let a1 = p.publish("alpha", b"a1");
    let _g1 = p.publish("gamma", b"g1");
    let b1 = p.publish("beta", b"b1");
    assert_eq!(
        both.events_until(2, WAIT),
        [event(&a1, "message", "a1"), event(&b1, "message", "b1")]
    );
    assert_eq!(beta.expect_event(), event(&b1, "message", "b1"));
    assert_eq!(dup.expect_event(), event(&b1, "message", "b1"));

    // Events of other topics published first would be read first.
    let _g2 = p.publish("gamma", b"g2");
    let _a2 = p.publish("alpha", b"a2");
    let b2 = p.publish("beta", b"b2");
    assert_eq!(beta.expect_event(), event(&b2, "message", "b2"));
    // A topic named twice is subscribed once: b1 is not repeated.
    assert_eq!(dup.expect_event(), event(&b2, "message", "b2"));
    assert_eq!(both.events_until(2, WAIT)[1], event(&b2, "message", "b2"));
}

#[test]
fn fifty_subscribers_on_both_loops_each_get_every_event_once_in_order() {
    let engine = Engine::start(&[]);
    let mut subs = Vec::new();
    let mut per_loop = [0usize; 2];
    // SO_REUSEPORT hashes each connection to a loop; keep connecting (bounded) until
    // both loops hold some of the subscribers.
    for _ in 0..400 {
        if subs.len() >= 50 && per_loop.iter().all(|&n| n > 0) {
            break;
        }
        let sub = SseClient::subscribe(engine.addr, &["fan"]);
        let index = sub.loop_index();
        assert!(index < 2, "X-Ringcast-Loop {index} with --loops 2");
        per_loop[index] += 1;
        subs.push(sub);
    }
    assert!(
        per_loop.iter().all(|&n| n > 0),
        "400 connections, loops held {per_loop:?}"
    );

    let mut p = Publisher::connect(&engine.ingest);
    let want: Vec<Event> = (0..20)
        .map(|i| {
            let data = format!("event {i}\nof 20");
            event(&p.publish("fan", data.as_bytes()), "message", &data)
        })
        .collect();
    let marker = p.publish("fan", b"marker");
    for (n, sub) in subs.iter_mut().enumerate() {
        let got = sub.events_until(20, WAIT);
        assert_eq!(got, want, "subscriber {n} (loop {})", sub.loop_index());
        // Exactly once: the next event is the one published after the 20.
        assert_eq!(sub.expect_event().id, marker, "subscriber {n}");
    }
}

#[test]
fn http_1_0_subscriber_gets_an_unchunked_stream() {
    let engine = Engine::start(&[]);
    let mut sub = SseClient::open_raw(engine.addr, b"GET /sse?topic=old HTTP/1.0\r\n\r\n");
    sub.assert_stream();
    let r = sub.response.clone();
    assert_eq!(r.header_count("Transfer-Encoding"), 0, "{r:?}");
    assert!(r.closes(), "an HTTP/1.0 stream ends at close: {r:?}");
    let mut p = Publisher::connect(&engine.ingest);
    let one = p.publish("old", b"one\ntwo");
    let two = p.publish_with("old", b"three", "event=named");
    assert_eq!(
        sub.events_until(2, WAIT),
        [event(&one, "message", "one\ntwo"), event(&two, "named", "three")]
    );
    let raw =
        format!("retry: 3000\n\nid: {one}\ndata: one\ndata: two\n\nid: {two}\nevent: named\ndata: three\n\n");
    assert_eq!(String::from_utf8_lossy(sub.body()), raw);
}
