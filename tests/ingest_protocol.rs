//! The publisher protocol on the ingest socket, spoken byte for byte: replies in order
//! for pipelined commands; refusals that keep the connection (the same connection then
//! publishes fine, and nothing refused reaches a subscriber); framing errors, and payloads
//! announced over the limit, that close it at once without disturbing other publishers;
//! a publisher vanishing mid-frame; CRLF line ends; and payloads up to the 1 MiB default
//! limit arriving intact.
use std::time::Duration;

use ringcast_tests::engine::Engine;
use ringcast_tests::ingest::{ok_id, pub_frame, Publisher};
use ringcast_tests::sse::SseClient;
use ringcast_tests::whatwg::Event;
use ringcast_tests::{seq_of, WAIT};

fn message(id: &str, data: &str) -> Event {
    Event {
        id: id.to_owned(),
        event: "message".to_owned(),
        data: data.to_owned(),
    }
}

/// Asserts `reply` is a refusal that keeps the connection.
fn assert_refused(reply: &str, sent: &[u8]) {
    assert!(
        reply.starts_with("-ERR ") && !reply.ends_with("closing"),
        "{}: expected -ERR keeping the connection, got {reply:?}",
        ringcast_tests::http::shorten(sent)
    );
}

#[test]
fn ping_and_quit() {
    let engine = Engine::start(&[]);
    let mut p = Publisher::connect(&engine.ingest);
    p.send(b"PING\n");
    assert_eq!(p.reply(), "+PONG");
    p.send(b"PING\r\n\n");
    assert_eq!(p.reply(), "+PONG", "CRLF line end, then an empty line (ignored)");
    p.send(b"PING\nQUIT\nPING\n");
    assert_eq!(p.reply(), "+PONG");
    assert_eq!(p.reply(), "+BYE");
    assert!(
        p.closes_within(WAIT),
        "QUIT must close, and nothing may answer what followed it"
    );
    // The engine still takes publishers.
    let mut sub = SseClient::subscribe(engine.addr, &["t"]);
    let id = Publisher::connect(&engine.ingest).publish("t", b"after quit");
    assert_eq!(sub.expect_event(), message(&id, "after quit"));
}

#[test]
fn refusals_keep_the_connection_and_publish_nothing() {
    let engine = Engine::start(&["--payload-max", "1024"]);
    let mut sub = SseClient::subscribe(engine.addr, &["t"]);
    let mut p = Publisher::connect(&engine.ingest);
    // Payloads are "PING" lines: if a refused frame's payload were read as commands, a
    // stray +PONG would come back in place of the next reply.
    let long_topic = pub_frame(&"t".repeat(201), b"PING", "");
    let long_event = pub_frame("t", b"PING", &format!("event={}", "e".repeat(65)));
    let bad: Vec<&[u8]> = vec![
        b"HELLO world\n",
        b"PUB bad%topic 4\nPING\n",
        b"PUB t 4 event=ringcast.fake\nPING\n",
        b"PUB t 4 bogus=1\nPING\n",
        b"PUB t 4 key=\nPING\n",
        b"PUB t 3\n\xff\xfe\xfd\n",
        &long_topic,
        &long_event,
    ];
    for (i, request) in bad.into_iter().enumerate() {
        p.send(request);
        assert_refused(&p.reply(), request);
        let data = format!("ok after refusal {i}");
        let id = p.publish("t", data.as_bytes());
        assert_eq!(
            sub.expect_event(),
            message(&id, &data),
            "after {}",
            ringcast_tests::http::shorten(request)
        );
    }
}

#[test]
fn payload_limit_is_inclusive_and_a_larger_length_is_refused_at_once() {
    let engine = Engine::start(&["--payload-max", "1024"]);
    let mut sub = SseClient::subscribe(engine.addr, &["t"]);
    let mut p = Publisher::connect(&engine.ingest);
    let at_limit = "x".repeat(1024);
    let id = p.publish("t", at_limit.as_bytes());
    assert_eq!(sub.expect_event(), message(&id, &at_limit));
    // Refused from the line alone, before any payload: the engine will not read 2 GiB,
    // and commands behind a wrong length are never taken for payload.
    for line in [
        &b"PUB t 1025\n"[..],
        b"PUB t 2147483648\nPING\n",
        b"SEND 0.1.1 4096\n",
    ] {
        let mut p = Publisher::connect(&engine.ingest);
        p.send(line);
        let reply = p.reply();
        assert!(
            reply.starts_with("-ERR payload of ")
                && reply.ends_with("exceeds the limit of 1024 bytes; closing"),
            "{reply:?}"
        );
        assert!(p.closes_within(WAIT), "closed after the refusal");
    }
    let id = p.publish("t", b"next");
    assert_eq!(sub.expect_event(), message(&id, "next"));
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let engine = Engine::start(&[]);
    let mut sub = SseClient::subscribe(engine.addr, &["pipe"]);
    let mut p = Publisher::connect(&engine.ingest);
    let mut batch = Vec::new();
    let data: Vec<String> = (0..100).map(|i| format!("pipelined {i}")).collect();
    for (i, d) in data.iter().enumerate() {
        if i == 50 {
            batch.extend_from_slice(b"PING\n");
        }
        batch.extend_from_slice(&pub_frame("pipe", d.as_bytes(), ""));
    }
    p.send(&batch);
    let mut ids = Vec::new();
    for i in 0..101 {
        let reply = p.reply();
        if i == 50 {
            assert_eq!(reply, "+PONG", "reply {i}");
        } else {
            ids.push(ok_id(&reply));
        }
    }
    let seqs: Vec<u64> = ids.iter().map(|id| seq_of(id)).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "ids not increasing: {ids:?}"
    );
    let want: Vec<Event> = ids.iter().zip(&data).map(|(id, d)| message(id, d)).collect();
    assert_eq!(sub.events_until(100, WAIT), want);
}

#[test]
fn framing_errors_close_only_that_connection() {
    let engine = Engine::start(&[]);
    let mut sub = SseClient::subscribe(engine.addr, &["t"]);
    let mut other = Publisher::connect(&engine.ingest);
    let long_line = format!("PUB t 1 key={}\nx\n", "k".repeat(1100));
    let fatal: [&[u8]; 5] = [
        b"PUB t x\n",
        b"PUB t\n",
        b"PUB t -1\nPING\n",
        b"PUB t 3\nabcPING\n",
        long_line.as_bytes(),
    ];
    for (i, request) in fatal.into_iter().enumerate() {
        let mut p = Publisher::connect(&engine.ingest);
        p.send(request);
        let reply = p.reply();
        let what = ringcast_tests::http::shorten(request);
        assert!(
            reply.starts_with("-ERR ") && reply.ends_with("closing"),
            "{what}: expected -ERR ...; closing, got {reply:?}"
        );
        assert!(p.closes_within(WAIT), "{what}: connection left open");
        let data = format!("other publisher {i}");
        let id = other.publish("t", data.as_bytes());
        // Nothing of the broken frame was published: "abc" in particular.
        assert_eq!(sub.expect_event(), message(&id, &data), "after {what}");
    }
}

#[test]
fn a_publisher_vanishing_mid_frame_loses_only_that_frame() {
    let engine = Engine::start(&[]);
    let mut sub = SseClient::subscribe(engine.addr, &["t"]);
    let cuts: [&[u8]; 4] = [
        b"PUB t 100\nhalf of the payload",
        b"PUB t 5\nhello",
        b"PUB t 5\nhello\r",
        b"PUB t 1",
    ];
    for (i, cut) in cuts.into_iter().enumerate() {
        let mut p = Publisher::connect(&engine.ingest);
        p.send(cut);
        // Let the engine read the partial frame before the close arrives.
        std::thread::sleep(Duration::from_millis(20));
        drop(p);
        let data = format!("after cut {i}");
        let id = Publisher::connect(&engine.ingest).publish("t", data.as_bytes());
        assert_eq!(
            sub.expect_event(),
            message(&id, &data),
            "after {}",
            ringcast_tests::http::shorten(cut)
        );
    }
}

#[test]
fn crlf_line_ends_are_not_part_of_the_payload() {
    let engine = Engine::start(&[]);
    let mut sub = SseClient::subscribe(engine.addr, &["t"]);
    let mut p = Publisher::connect(&engine.ingest);
    p.send(b"PUB t 5 event=crlf\r\nhello\r\nPUB t 3\r\nbye\n");
    let first = ok_id(&p.reply());
    let second = ok_id(&p.reply());
    let crlf = Event {
        id: first,
        event: "crlf".to_owned(),
        data: "hello".to_owned(),
    };
    assert_eq!(sub.events_until(2, WAIT), [crlf, message(&second, "bye")]);
    // The raw SSE bytes carry no stray CR either.
    assert!(
        !sub.body().contains(&b'\r'),
        "CR in the stream: {:?}",
        String::from_utf8_lossy(sub.body())
    );
}

#[test]
fn a_1_mib_payload_with_line_breaks_arrives_intact() {
    let engine = Engine::start(&[]);
    let mut sub = SseClient::subscribe(engine.addr, &["big"]);
    let mut p = Publisher::connect(&engine.ingest);
    let breaks = ["\n", "\r\n", "\r", "\n\n", "\r\r\n"];
    let mut payload = String::with_capacity(1 << 20);
    let mut n = 0usize;
    while payload.len() < (1 << 20) - 64 {
        payload.push_str(&format!(
            "line {n} \u{e9}\u{2713}: data{}",
            breaks[n % breaks.len()]
        ));
        n += 1;
    }
    // Pad to exactly the default limit, 1 MiB.
    payload.push_str(&"z".repeat((1 << 20) - payload.len()));
    assert_eq!(payload.len(), 1 << 20);
    let id = p.publish("big", payload.as_bytes());
    let want = payload.replace("\r\n", "\n").replace('\r', "\n");
    let got = sub.expect_event();
    assert_eq!(got.id, id);
    assert!(
        got.data == want,
        "1 MiB payload differs: {} bytes, expected {}",
        got.data.len(),
        want.len()
    );
    // The engine is still responsive afterwards.
    let id = p.publish("big", b"small");
    assert_eq!(sub.expect_event(), message(&id, "small"));
}
