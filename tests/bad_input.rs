//! Bad and awkward HTTP from clients: garbage, oversized heads and request lines, bad
//! topics, unknown paths, wrong methods, pipelined requests, a request trickling in one
//! byte at a time. Each gets its status (400, 431, 414, 404, 405) or is served, and every
//! test keeps a well-behaved subscriber open throughout that must go on receiving what is
//! published after each bad request: one client's mistakes never reach another.
use std::time::Duration;

use ringcast_tests::engine::Engine;
use ringcast_tests::http::{exchange, shorten, End, HttpConn, Response};
use ringcast_tests::ingest::Publisher;
use ringcast_tests::sse::SseClient;
use ringcast_tests::WAIT;

/// An engine, a subscriber that must keep receiving, and a publisher.
struct Fixture {
    engine: Engine,
    watcher: SseClient,
    publisher: Publisher,
    published: u32,
}

impl Fixture {
    fn new() -> Fixture {
        let engine = Engine::start(&[]);
        let watcher = SseClient::subscribe(engine.addr, &["watch"]);
        let publisher = Publisher::connect(&engine.ingest);
        Fixture {
            engine,
            watcher,
            publisher,
            published: 0,
        }
    }

    /// Publishes to the watcher's topic and checks it receives exactly that next.
    fn assert_still_serving(&mut self, after: &str) {
        self.published += 1;
        let data = format!("still serving {}", self.published);
        let id = self.publisher.publish("watch", data.as_bytes());
        let event = self.watcher.expect_event();
        assert_eq!(
            (event.id.as_str(), event.data.as_str()),
            (id.as_str(), data.as_str()),
            "after {after}"
        );
    }

    /// Sends `request` on a new connection, expects `status` with `Connection: close`
    /// and the connection closed, and checks the watcher still receives events.
    fn refused(&mut self, request: &[u8], status: u16) -> (Response, String) {
        let (response, body, mut conn) = exchange(self.engine.addr, request);
        let what = shorten(request);
        assert_eq!(response.status, status, "{what}: {response:?} {body:?}");
        assert!(
            response.closes(),
            "{what}: an error response must close: {response:?}"
        );
        assert!(
            conn.closes_within(WAIT),
            "{what}: connection left open after {status}"
        );
        self.assert_still_serving(&what);
        (response, String::from_utf8_lossy(&body).into_owned())
    }
}

fn get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n").into_bytes()
}

#[test]
fn garbage_gets_400() {
    let mut f = Fixture::new();
    f.assert_still_serving("start");
    let garbage: [&[u8]; 6] = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS hello\r\n\r\n",
        b"\x00\x01\x02\xff\xfe garbage\r\n\r\n",
        b"HELLO\r\n\r\n",
        b"GET /sse?topic=watch HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /sse?topic=watch HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"GET /sse?topic=watch HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    ];
    for request in garbage {
        f.refused(request, 400);
    }
    // An unknown version: 505 (RFC 9110 §15.6.6), or 400 for a version that is no
    // HTTP-version at all (RFC 9112 §2.3).
    let (response, _, _) = exchange(f.engine.addr, b"GET /sse?topic=watch HTTP/9.9\r\n\r\n");
    assert!([400, 505].contains(&response.status), "HTTP/9.9: {response:?}");
    f.assert_still_serving("HTTP/9.9");
}

#[test]
fn oversized_head_gets_431_and_long_request_line_414() {
    let mut f = Fixture::new();
    let big = format!(
        "GET /sse?topic=watch HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    f.refused(big.as_bytes(), 431);
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    f.refused(
        format!("GET /sse?topic=watch HTTP/1.1\r\n{many}\r\n").as_bytes(),
        431,
    );
    let long = format!(
        "GET /sse?topic=watch&pad={} HTTP/1.1\r\nHost: test\r\n\r\n",
        "b".repeat(9000)
    );
    f.refused(long.as_bytes(), 414);
    // Just under the limits is fine: a 7 KiB header.
    let ok = format!(
        "GET /sse?topic=watch HTTP/1.1\r\nHost: test\r\nX-Pad: {}\r\n\r\n",
        "c".repeat(7 * 1024)
    );
    let mut sub = SseClient::open_raw(f.engine.addr, ok.as_bytes());
    sub.assert_stream();
    f.assert_still_serving("a 7 KiB header");
    assert_eq!(sub.expect_event().data, format!("still serving {}", f.published));
}

#[test]
fn bad_topics_get_400_naming_them() {
    let mut f = Fixture::new();
    let (_, body) = f.refused(&get("/sse?topic=a%20b"), 400);
    assert!(body.contains("a b"), "body {body:?}");
    let (_, body) = f.refused(&get("/sse?topic=ok&topic=bad*topic"), 400);
    assert!(body.contains("bad*topic"), "body {body:?}");
    f.refused(&get("/sse?topic="), 400);
    f.refused(&get("/sse"), 400);
    f.refused(&get("/sse?last_event_id=1"), 400);
    let long = format!("L{}", "x".repeat(200));
    let (_, body) = f.refused(&get(&format!("/sse?topic={long}")), 400);
    assert!(body.contains(&long[..32]), "body {body:?}");
    let many: Vec<String> = (0..65).map(|i| format!("topic=t{i}")).collect();
    f.refused(&get(&format!("/sse?{}", many.join("&"))), 400);

    // The limits themselves are allowed: a 200-byte topic, 64 topics.
    let longest = "y".repeat(200);
    SseClient::subscribe(f.engine.addr, &[&longest]);
    let topics: Vec<String> = (0..64).map(|i| format!("t{i}")).collect();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut wide = SseClient::subscribe(f.engine.addr, &topics);
    let id = f.publisher.publish("t63", b"last topic");
    assert_eq!(wide.expect_event().id, id);
    f.assert_still_serving("limits");
}

#[test]
fn unknown_path_gets_404_and_the_connection_stays_usable() {
    let mut f = Fixture::new();
    let mut conn = HttpConn::connect(f.engine.addr);
    conn.send(&get("/nope")).unwrap();
    let (response, _) = conn.read_response(WAIT).expect("a 404");
    assert_eq!(response.status, 404, "{response:?}");
    assert!(
        !response.closes(),
        "404 to HTTP/1.1 should keep the connection: {response:?}"
    );
    f.assert_still_serving("404");

    // The same connection then subscribes.
    conn.send(&get("/sse?topic=watch")).unwrap();
    let response = conn.read_head(WAIT).expect("a stream head");
    let mut sub = SseClient::from_conn(conn, response);
    sub.assert_stream();
    f.assert_still_serving("a subscription after a 404");
    assert_eq!(sub.expect_event().data, format!("still serving {}", f.published));

    // HTTP/1.0 without keep-alive: the 404 closes.
    let (response, _, mut conn) = exchange(f.engine.addr, b"GET /nope HTTP/1.0\r\n\r\n");
    assert_eq!(response.status, 404, "{response:?}");
    assert!(conn.closes_within(WAIT), "HTTP/1.0 404 left the connection open");
    f.assert_still_serving("an HTTP/1.0 404");
}

#[test]
fn wrong_method_gets_405() {
    let mut f = Fixture::new();
    let (response, _, _) = exchange(
        f.engine.addr,
        b"POST /sse?topic=watch HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(response.status, 405, "{response:?}");
    let allow = response.header("Allow").unwrap_or_default();
    assert!(allow.contains("GET"), "Allow: {allow:?}");
    f.assert_still_serving("POST");
    let (response, _, _) = exchange(
        f.engine.addr,
        b"DELETE /sse?topic=watch HTTP/1.1\r\nHost: test\r\n\r\n",
    );
    assert_eq!(response.status, 405, "{response:?}");
    f.assert_still_serving("DELETE");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let mut f = Fixture::new();
    let mut conn = HttpConn::connect(f.engine.addr);
    let mut both = get("/nope");
    both.extend_from_slice(&get("/other"));
    conn.send(&both).unwrap();
    for n in 0..2 {
        let (response, _) = conn
            .read_response(WAIT)
            .unwrap_or_else(|e| panic!("404 number {n}: {e:?}"));
        assert_eq!(response.status, 404, "response {n}: {response:?}");
    }
    f.assert_still_serving("two pipelined 404s");

    // A 404 then a subscription in one write: the stream follows the 404.
    let mut conn = HttpConn::connect(f.engine.addr);
    let mut both = get("/nope");
    both.extend_from_slice(&get("/sse?topic=watch"));
    conn.send(&both).unwrap();
    let (response, _) = conn.read_response(WAIT).expect("the 404");
    assert_eq!(response.status, 404, "{response:?}");
    let response = conn.read_head(WAIT).expect("the stream head");
    let mut sub = SseClient::from_conn(conn, response);
    sub.assert_stream();
    f.assert_still_serving("a pipelined 404 and subscription");
    assert_eq!(sub.expect_event().data, format!("still serving {}", f.published));
}

#[test]
fn a_request_arriving_byte_by_byte_is_served() {
    let mut f = Fixture::new();
    let old = f.publisher.publish("slow", b"before");
    let mut conn = HttpConn::connect(f.engine.addr);
    let request = format!("GET /sse?topic=slow HTTP/1.1\r\nHost: test\r\nLast-Event-ID: {old}\r\n\r\n");
    let (head, last) = request.as_bytes().split_at(request.len() - 1);
    conn.send_bytewise(head, Duration::from_millis(2)).unwrap();
    // The head is one byte short: no answer yet, and others are still served.
    f.assert_still_serving("a partial request");
    let early = conn.read_head(Duration::from_millis(100));
    assert_eq!(
        early.map(|r| r.status),
        Err(End::TimedOut),
        "answered before the head was complete"
    );
    conn.send(last).unwrap();
    let response = conn.read_head(WAIT).expect("a stream head");
    let mut sub = SseClient::from_conn(conn, response);
    sub.assert_stream();
    let id = f.publisher.publish("slow", b"after");
    let event = sub.expect_event();
    assert_eq!((event.id, event.data), (id, "after".to_owned()));
}
