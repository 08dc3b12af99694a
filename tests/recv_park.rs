//! Parked receives (`--recv-park-ms`), judged from outside with real clients: a connection
//! idle past the threshold has its receive traded for a poll (the `recv_parked` counter
//! says so), and then still answers a WebSocket ping, an `{"op":"ping"}` message and a
//! close, a keep-alive connection's second request, gets its events, and is closed when
//! its client half-closes or resets. Each step waits for the park first, so a client
//! that were never parked fails the test rather than passing it unexercised.
//!
//! On epoll the loops never park (there is no armed receive to trade): the same test
//! run with `RINGCAST_DRIVER=epoll` checks that the counter stays at zero and everything
//! else behaves the same.
//!
//! Must never: wait without a bound.
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::thread;
use std::time::{Duration, Instant};

use ringcast_tests::engine::Engine;
use ringcast_tests::http::HttpConn;
use ringcast_tests::ingest::Publisher;
use ringcast_tests::sse::SseClient;
use ringcast_tests::wsclient::{masked, opcode, RawWs};
use ringcast_tests::WAIT;

/// Receives park after between one and two of these of silence.
const PARK_MS: u64 = 300;

fn engine() -> Engine {
    Engine::start(&["--recv-park-ms", &PARK_MS.to_string(), "--loops", "1"])
}

fn on_epoll() -> bool {
    std::env::var("RINGCAST_DRIVER").is_ok_and(|d| d == "epoll")
}

/// Waits until `recv_parked` reaches `n` (on io_uring), or for three park periods (on
/// epoll, where it must stay zero).
fn wait_parked(engine: &Engine, n: u64) {
    if on_epoll() {
        thread::sleep(Duration::from_millis(3 * PARK_MS));
        assert_eq!(engine.counter("recv_parked"), 0, "epoll loops never park");
        return;
    }
    let deadline = Instant::now() + WAIT;
    while engine.counter("recv_parked") < n {
        assert!(
            Instant::now() < deadline,
            "recv_parked did not reach {n} within {WAIT:?}: {}",
            engine.stats()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until no connection is open.
fn wait_closed(engine: &Engine) {
    let deadline = Instant::now() + WAIT;
    while engine.counter("open") > 0 {
        assert!(
            Instant::now() < deadline,
            "still open after {WAIT:?}: {}",
            engine.stats()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_parked_websocket_answers_a_ping_a_message_and_a_close_and_gets_its_events() {
    let engine = engine();
    let mut ws = RawWs::connect(engine.addr, "/ws?topic=parked", &[]);
    wait_parked(&engine, 1);
    ws.send_raw(&masked(opcode::PING, b"still there?"))
        .expect("send a ping");
    let pong = ws.next_frame(WAIT).expect("a pong");
    assert_eq!(
        (pong.opcode, pong.text().as_str()),
        (opcode::PONG, "still there?")
    );
    wait_parked(&engine, 2);
    ws.send_text(r#"{"op":"ping"}"#);
    let reply = ws.next_frame(WAIT).expect("an answer to the message");
    assert_eq!(reply.text(), r#"{"event":"ringcast.pong"}"#);
    wait_parked(&engine, 3);
    let mut publisher = Publisher::connect(&engine.ingest);
    publisher.publish("parked", b"to a parked socket");
    let event = ws.next_frame(WAIT).expect("the event");
    assert!(
        event.text().contains("\"data\":\"to a parked socket\""),
        "{}",
        event.text()
    );
    ws.send_raw(&masked(opcode::CLOSE, &1000u16.to_be_bytes()))
        .expect("send a close");
    let (close, _) = ws.expect_close(WAIT);
    assert_eq!(close.close_code(), Some(1000));
    wait_closed(&engine);
    if !on_epoll() {
        assert!(engine.counter("recv_unparked") >= 3, "{}", engine.stats());
    }
}

#[test]
fn a_parked_keep_alive_connection_answers_its_second_request() {
    let engine = engine();
    let mut conn = HttpConn::connect(engine.addr);
    let request = b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n";
    conn.send(request).expect("first request");
    let (first, _) = conn.read_response(WAIT).expect("first answer");
    assert_eq!(first.status, 404);
    wait_parked(&engine, 1);
    conn.send(request).expect("second request");
    let (second, _) = conn.read_response(WAIT).expect("the second request is answered");
    assert_eq!(second.status, 404);
}

/// An SSE stream on a socket the test keeps a handle of, parked.
fn parked_stream(engine: &Engine) -> (SseClient, TcpStream) {
    let stream = TcpStream::connect_timeout(&engine.addr, WAIT).expect("connect");
    let handle = stream.try_clone().expect("clone the socket");
    let mut conn = HttpConn::from_stream(stream);
    conn.send(b"GET /sse?topic=parked HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let head = conn.read_head(WAIT).expect("a response head");
    assert_eq!(head.status, 200);
    let sse = SseClient::from_conn(conn, head);
    wait_parked(engine, 1);
    (sse, handle)
}

#[test]
fn a_parked_stream_gets_its_events_and_is_closed_at_its_clients_half_close() {
    let engine = engine();
    let (mut sse, handle) = parked_stream(&engine);
    let mut publisher = Publisher::connect(&engine.ingest);
    publisher.publish("parked", b"hello");
    assert_eq!(sse.expect_event().data, "hello");
    handle.shutdown(std::net::Shutdown::Write).expect("half-close");
    wait_closed(&engine);
}

#[test]
fn a_parked_stream_whose_client_resets_is_closed() {
    let engine = engine();
    let (sse, handle) = parked_stream(&engine);
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` outlives the call and its size is passed alongside it.
    let res = unsafe {
        libc::setsockopt(
            handle.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(res, 0, "SO_LINGER");
    // The last descriptor closes with a zero linger: an RST, no FIN.
    drop(sse);
    drop(handle);
    wait_closed(&engine);
}
