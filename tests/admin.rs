//! The admin listener: `POST /publish` publishes like the ingest socket (and refuses what
//! it refuses), `GET /metrics` passes `promtool check metrics`, `GET /healthz` answers.
use std::io::Write;
use std::net::{SocketAddr, TcpStream};

use ringcast_tests::engine::Engine;
use ringcast_tests::sse::SseClient;

fn admin(addr: SocketAddr, method: &str, target: &str, body: &[u8]) -> (u16, String) {
    ringcast_tests::engine::admin_request(addr, method, target, body)
}

#[test]
fn http_publish_reaches_subscribers_and_refuses_bad_input() {
    let engine = Engine::start(&["--payload-max", "1024"]);
    let mut sub = SseClient::subscribe(engine.addr, &["news"]);
    let (status, body) = admin(
        engine.admin,
        "POST",
        "/publish?topic=news&event=flash",
        b"line one\nline two",
    );
    assert_eq!(status, 200, "{body}");
    let id = body.split('"').nth(3).expect("{\"id\":\"...\"}").to_owned();
    let event = sub.expect_event();
    assert_eq!(
        (event.id, event.event, event.data),
        (id, "flash".to_owned(), "line one\nline two".to_owned())
    );

    for (target, payload, want) in [
        ("/publish?topic=bad%20topic", &b"x"[..], 400),
        ("/publish", &b"x"[..], 400),
        ("/publish?topic=news&event=ringcast.reset", &b"x"[..], 400),
        ("/publish?topic=news", &[0xff, 0xfe][..], 400),
        ("/publish?topic=news", &[b'a'; 2000][..], 413),
    ] {
        let (status, body) = admin(engine.admin, "POST", target, payload);
        assert_eq!(status, want, "{target}: {body}");
        assert!(body.starts_with("{\"error\":"), "{target}: {body}");
    }
    let (status, _) = admin(engine.admin, "GET", "/publish?topic=news", b"");
    assert_eq!(status, 405);
    // Nothing refused reached the subscriber; the next good publish does.
    let (_, body) = admin(engine.admin, "POST", "/publish?topic=news", b"after");
    let event = sub.expect_event();
    assert!(body.contains(&event.id), "{body} vs {}", event.id);
    assert_eq!(event.data, "after");
}

#[test]
fn metrics_pass_promtool_and_count() {
    let engine = Engine::start(&[]);
    let _sub = SseClient::subscribe(engine.addr, &["m"]);
    let (status, _) = admin(engine.admin, "POST", "/publish?topic=m", b"x");
    assert_eq!(status, 200);
    let (status, metrics) = admin(engine.admin, "GET", "/metrics", b"");
    assert_eq!(status, 200);
    assert!(metrics.contains("ringcast_events_published_total 1"), "{metrics}");
    assert!(
        metrics.contains("ringcast_streams_opened_total{loop="),
        "{metrics}"
    );
    ringcast_tests::engine::assert_promtool_accepts(&metrics);
    let (status, body) = admin(engine.admin, "GET", "/healthz", b"");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[test]
fn open_connections_are_counted_by_transport() {
    let engine = Engine::start(&[]);
    let sub = SseClient::subscribe(engine.addr, &["g"]);
    let mut poll = TcpStream::connect(engine.addr).unwrap();
    poll.write_all(b"GET /poll?topic=g&wait=30 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let deadline = std::time::Instant::now() + ringcast_tests::WAIT;
    while engine.counter("polls_held") < 1 {
        assert!(std::time::Instant::now() < deadline, "{}", engine.stats());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!((engine.counter("open_sse"), engine.counter("polls_held")), (1, 1));
    drop(sub);
    drop(poll);
    while engine.counter("open_sse") + engine.counter("polls_held") > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "gauges did not return to 0: {}",
            engine.stats()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(engine.counter("open"), 0, "{}", engine.stats());
}
