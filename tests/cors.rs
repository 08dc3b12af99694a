//! CORS on the client endpoints `/sse`, `/stream` and `/poll` (Fetch standard §3.2):
//! by default every response carries `Access-Control-Allow-Origin: *` and a preflight
//! (`OPTIONS`) gets 204 with the allowed methods and headers; with `--cors-origin` an
//! allowed `Origin` (exact or `https://*.domain` pattern) is echoed with `Vary: Origin`
//! (and `Access-Control-Allow-Credentials: true` with `--cors-credentials`), another gets
//! no CORS header on `GET` and 403 on a preflight. Held long-polls keep the answer their
//! own request's origin earned.
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use ringcast_tests::engine::Engine;
use ringcast_tests::http::{exchange, HttpConn, Response};
use ringcast_tests::ingest::Publisher;
use ringcast_tests::poll::{PollAnswer, PollClient};
use ringcast_tests::sse::SseClient;
use ringcast_tests::WAIT;

const ENDPOINTS: [&str; 3] = ["/sse", "/stream", "/poll"];
const APP: &str = "https://app.example.com";
const EVIL: &str = "https://evil.example";
const METHODS: &str = "GET, HEAD, OPTIONS";
const HEADERS: &str = "Last-Event-ID, Cache-Control, Content-Type";

/// An `OPTIONS` preflight for a `GET` of `path` with a `Last-Event-ID` header, from
/// `origin`, as a browser sends it.
fn preflight_request(addr: SocketAddr, path: &str, origin: &str) -> Vec<u8> {
    format!(
        "OPTIONS {path}?topic=c HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\n\
         Access-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: last-event-id\r\n\r\n"
    )
    .into_bytes()
}

fn preflight(addr: SocketAddr, path: &str, origin: &str) -> Response {
    exchange(addr, &preflight_request(addr, path, origin)).0
}

/// Whether `Vary` lists `Origin`.
fn varies_by_origin(r: &Response) -> bool {
    r.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Vary"))
        .flat_map(|(_, v)| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("Origin"))
}

/// Checks the CORS fields of a response: `Access-Control-Allow-Origin` is `allow` (once,
/// or absent for `None`), credentials are allowed exactly when `credentials`, and an
/// echoed origin comes with `Vary: Origin`.
fn assert_cors(r: &Response, allow: Option<&str>, credentials: bool, what: &str) {
    assert!(
        r.header_count("Access-Control-Allow-Origin") <= 1,
        "{what}: ACAO repeated: {r:?}"
    );
    assert_eq!(r.header("Access-Control-Allow-Origin"), allow, "{what}: {r:?}");
    let want_credentials = credentials.then_some("true");
    assert_eq!(
        r.header("Access-Control-Allow-Credentials"),
        want_credentials,
        "{what}: {r:?}"
    );
    if allow.is_some_and(|a| a != "*") {
        assert!(
            varies_by_origin(r),
            "{what}: an echoed origin without Vary: Origin: {r:?}"
        );
    }
}

/// Checks a successful preflight: 204, no body framing, the methods and headers.
fn assert_preflight_ok(r: &Response, what: &str) {
    assert_eq!(r.status, 204, "{what}: {r:?}");
    assert_eq!(
        r.header("Access-Control-Allow-Methods"),
        Some(METHODS),
        "{what}: {r:?}"
    );
    assert_eq!(
        r.header("Access-Control-Allow-Headers"),
        Some(HEADERS),
        "{what}: {r:?}"
    );
    // RFC 9110 §8.6: no Content-Length in a 204; §6.4.1: a 204 has no content.
    assert_eq!(r.header_count("Content-Length"), 0, "{what}: {r:?}");
    assert_eq!(r.header_count("Transfer-Encoding"), 0, "{what}: {r:?}");
}

/// The head of a `GET` of a stream endpoint from `origin` (none for `None`).
fn stream_head(addr: SocketAddr, path: &str, origin: Option<&str>) -> Response {
    let headers: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
    let client = SseClient::open(addr, &format!("{path}?topic=c"), &headers);
    assert_eq!(client.response.status, 200, "GET {path}: {:?}", client.response);
    client.response
}

fn plain_poll(addr: SocketAddr, origin: Option<&str>) -> PollAnswer {
    let headers: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
    PollClient::connect(addr).poll_with("topic=c&wait=0", &headers, WAIT)
}

/// Long-polls from `origin` on its own connection, held until an event of `topic` or
/// `wait` seconds, in a thread.
fn held_poll(
    addr: SocketAddr,
    origin: &'static str,
    topic: &str,
    wait: u32,
) -> thread::JoinHandle<PollAnswer> {
    let query = format!("topic={topic}&wait={wait}");
    thread::spawn(move || PollClient::connect(addr).poll_with(&query, &[("Origin", origin)], WAIT))
}

/// Waits until the engine holds `n` polls.
fn await_held(engine: &Engine, n: u64) {
    let deadline = Instant::now() + WAIT;
    while engine.counter("polls_held") != n {
        assert!(Instant::now() < deadline, "polls_held never reached {n}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn by_default_a_preflight_gets_204_with_methods_headers_and_any_origin() {
    let engine = Engine::start(&[]);
    // All three preflights and then a poll on one connection: a 204 leaves no stray body.
    let mut conn = HttpConn::connect(engine.addr);
    for path in ENDPOINTS {
        conn.send(&preflight_request(engine.addr, path, EVIL))
            .expect("send the preflight");
        let (r, body) = conn
            .read_response(WAIT)
            .unwrap_or_else(|end| panic!("no answer ({end:?}) to OPTIONS {path}"));
        assert_preflight_ok(&r, path);
        assert_cors(&r, Some("*"), false, path);
        assert!(body.is_empty() && !r.closes(), "OPTIONS {path}: {r:?}");
    }
    conn.send(
        format!(
            "GET /poll?topic=c&wait=0 HTTP/1.1\r\nHost: {}\r\n\r\n",
            engine.addr
        )
        .as_bytes(),
    )
    .expect("send a poll after the preflights");
    let (r, body) = conn
        .read_response(WAIT)
        .expect("a poll answer after the preflights");
    assert_eq!(r.status, 200, "{r:?} {body:?}");
    assert!(
        conn.buffered().is_empty(),
        "bytes after the poll answer: {:?}",
        conn.buffered()
    );
}

#[test]
fn by_default_every_client_endpoint_answers_with_allow_origin_star() {
    let engine = Engine::start(&[]);
    let held = held_poll(engine.addr, EVIL, "c", 1);
    for origin in [Some(APP), Some(EVIL), None] {
        for path in ["/sse", "/stream"] {
            assert_cors(&stream_head(engine.addr, path, origin), Some("*"), false, path);
        }
        assert_cors(
            &plain_poll(engine.addr, origin).response,
            Some("*"),
            false,
            "/poll",
        );
    }
    let answer = held.join().expect("the held poll");
    assert!(
        answer.elapsed >= Duration::from_millis(900),
        "not held: {answer:?}"
    );
    assert_cors(&answer.response, Some("*"), false, "held /poll");
}

#[test]
fn a_configured_origin_gets_its_preflight_echoed_with_credentials_and_others_403() {
    let engine = Engine::start(&["--cors-origin", APP, "--cors-credentials"]);
    for path in ENDPOINTS {
        let r = preflight(engine.addr, path, APP);
        assert_preflight_ok(&r, path);
        assert_cors(&r, Some(APP), true, path);

        let r = preflight(engine.addr, path, EVIL);
        assert_eq!(r.status, 403, "preflight of {path} from {EVIL}: {r:?}");
        assert_cors(&r, None, false, path);
    }
}

#[test]
fn a_configured_origin_is_echoed_on_get_and_another_gets_no_cors_header() {
    let engine = Engine::start(&["--cors-origin", APP, "--cors-credentials"]);
    for path in ["/sse", "/stream"] {
        assert_cors(&stream_head(engine.addr, path, Some(APP)), Some(APP), true, path);
        assert_cors(&stream_head(engine.addr, path, Some(EVIL)), None, false, path);
    }
    assert_cors(
        &plain_poll(engine.addr, Some(APP)).response,
        Some(APP),
        true,
        "/poll",
    );
    assert_cors(
        &plain_poll(engine.addr, Some(EVIL)).response,
        None,
        false,
        "/poll",
    );
}

#[test]
fn held_polls_answer_with_the_cors_fields_of_their_own_origin() {
    let engine = Engine::start(&["--cors-origin", APP, "--cors-credentials"]);
    // Answered by an event: both held at once, released by one publish.
    let app = held_poll(engine.addr, APP, "h", 10);
    let evil = held_poll(engine.addr, EVIL, "h", 10);
    await_held(&engine, 2);
    let id = Publisher::connect(&engine.ingest).publish("h", b"both");
    let (app, evil) = (app.join().expect("app's poll"), evil.join().expect("evil's poll"));
    assert_eq!(app.ids(), [id.as_str()], "{}", app.body);
    assert_eq!(evil.ids(), [id.as_str()], "{}", evil.body);
    assert_cors(
        &app.response,
        Some(APP),
        true,
        "held /poll from the allowed origin",
    );
    assert_cors(&evil.response, None, false, "held /poll from another origin");

    // Answered by the wait running out.
    let app = held_poll(engine.addr, APP, "t", 1);
    let evil = held_poll(engine.addr, EVIL, "t", 1);
    let (app, evil) = (app.join().expect("app's poll"), evil.join().expect("evil's poll"));
    assert!(
        app.events.is_empty() && evil.events.is_empty(),
        "{} {}",
        app.body,
        evil.body
    );
    assert_cors(
        &app.response,
        Some(APP),
        true,
        "timed-out /poll from the allowed origin",
    );
    assert_cors(&evil.response, None, false, "timed-out /poll from another origin");
}

#[test]
fn origin_patterns_match_subdomains_only_and_credentials_stay_off_unless_asked() {
    let engine = Engine::start(&[
        "--cors-origin",
        "https://*.example.com",
        "--cors-origin",
        "https://app.other.org",
    ]);
    let allowed = [
        "https://a.example.com",
        "https://a.b.example.com",
        "https://app.other.org",
    ];
    let refused = [
        "https://example.com",
        "http://a.example.com",
        "https://a.example.com.evil.net",
        "https://evilexample.com",
        "https://a.example.com:8443",
        "https://b.other.org",
        "null",
    ];
    for origin in allowed {
        assert_cors(
            &plain_poll(engine.addr, Some(origin)).response,
            Some(origin),
            false,
            origin,
        );
        let r = preflight(engine.addr, "/sse", origin);
        assert_preflight_ok(&r, origin);
        assert_cors(&r, Some(origin), false, origin);
    }
    for origin in refused {
        assert_cors(
            &plain_poll(engine.addr, Some(origin)).response,
            None,
            false,
            origin,
        );
        let r = preflight(engine.addr, "/sse", origin);
        assert_eq!(r.status, 403, "preflight from {origin}: {r:?}");
    }
}
