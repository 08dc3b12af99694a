//! Connection timers, judged from outside against the real binary: heartbeat comments on
//! quiet SSE streams (and none on busy ones, and again once a backlog drains), the
//! request-head deadline under a slowloris crowd, for a silent connection and for the
//! second request of a kept-alive connection, the keep-alive idle close, and the reaping
//! of a subscriber whose socket stopped taking bytes.
//!
//! The engine's timers tick every 100 ms and fire between a deadline and one tick after
//! it, and the suite runs its tests in parallel on small machines, so every deadline is
//! judged within a window some hundreds of milliseconds wide. What the windows rule out is
//! a timer that fires early, never, or only at some other, longer deadline.
//!
//! Must never: wait without a bound, or rely on a sleep where the stream's own order can be
//! read instead (comments between two event ids are counted in the bytes, not the clock).
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ringcast_tests::engine::Engine;
use ringcast_tests::http::{exchange, End, HttpConn};
use ringcast_tests::ingest::Publisher;
use ringcast_tests::sse::SseClient;
use ringcast_tests::whatwg::Event;
use ringcast_tests::WAIT;

/// The payload size of the events that fill a slow subscriber's queue.
const BIG_EVENT_BYTES: usize = 16 << 10;

/// `--out-queue-bytes-max` for tests that want a backlog, not the slow-client close.
const ROOMY_QUEUE: &str = "67108864";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn sleep_until(t: Instant) {
    let left = t.saturating_duration_since(Instant::now());
    if !left.is_zero() {
        thread::sleep(left);
    }
}

/// The last 300 bytes of `body`, for failure messages.
fn tail(body: &[u8]) -> String {
    let from = body.len().saturating_sub(300);
    format!("{:?}", String::from_utf8_lossy(&body[from..]))
}

/// Comment lines in an SSE body between the event with id `first` and the one with id
/// `last`: read from the bytes, so the count does not depend on when the test read them.
///
/// # Panics
///
/// If either id is not in `body`.
fn comments_between(body: &[u8], first: &str, last: &str) -> usize {
    let text = String::from_utf8_lossy(body);
    let lines: Vec<&str> = text.split('\n').collect();
    let find = |id: &str| {
        lines
            .iter()
            .position(|line| line.strip_prefix("id:").map(str::trim_start) == Some(id))
            .unwrap_or_else(|| panic!("no event {id} in the stream: {}", tail(body)))
    };
    let (from, to) = (find(first), find(last));
    lines[from..to]
        .iter()
        .filter(|line| line.starts_with(':'))
        .count()
}

/// Reads `sub` until it has seen more than `seen` comment lines; returns how long that
/// took, or `None` if no new one came within `timeout` (events meanwhile are an error).
fn next_comment(sub: &mut SseClient, seen: usize, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    let deadline = start + timeout;
    while sub.parser().comments() <= seen {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        sub.expect_no_event(left.min(ms(20)));
    }
    Some(start.elapsed())
}

/// A TCP connection to `addr` whose receive buffer is set to 4 KiB before the handshake,
/// so the window it offers stays small and a peer's bytes pile up on the sending side.
///
/// # Panics
///
/// If `addr` is not IPv4, or a socket call fails.
fn connect_small_rcvbuf(addr: SocketAddr) -> TcpStream {
    let SocketAddr::V4(v4) = addr else {
        panic!("{addr} is not IPv4")
    };
    // SAFETY: socket(2) takes three integers and touches no memory of ours.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
    // SAFETY: `fd` is a socket just created and owned by nothing else; the stream closes it.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let rcvbuf: libc::c_int = 4096;
    // SAFETY: the option value points at a live c_int and its length is that of a c_int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::addr_of!(rcvbuf).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUF: {}", io::Error::last_os_error());
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(v4.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sin` is a complete sockaddr_in and the length passed is its size.
    let rc = unsafe {
        libc::connect(
            fd,
            std::ptr::addr_of!(sin).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "connect {addr}: {}", io::Error::last_os_error());
    stream
}

/// Subscribes to `topic` over a connection with a 4 KiB receive buffer and reads the
/// response head; the caller then decides when (if ever) to read on.
fn subscribe_small_rcvbuf(addr: SocketAddr, topic: &str) -> SseClient {
    let mut conn = HttpConn::from_stream(connect_small_rcvbuf(addr));
    let request = format!("GET /sse?topic={topic} HTTP/1.1\r\nHost: t\r\n\r\n");
    conn.send(request.as_bytes()).expect("send the subscription");
    let head = conn.read_head(WAIT).expect("the stream's response head");
    let sub = SseClient::from_conn(conn, head);
    sub.assert_stream();
    sub
}

/// How many 16 KiB events certainly overflow what the kernel will hold for one socket
/// (`tcp_wmem`'s maximum) with some to spare, so that the engine's own queue must hold the
/// rest; never fewer than 200.
fn backlog_events() -> usize {
    let wmem = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem").expect("read tcp_wmem");
    let max: usize = wmem
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("tcp_wmem {wmem:?}"));
    (max / BIG_EVENT_BYTES + 64).max(200)
}

/// The payload of big event `i`: its number, then filler up to 16 KiB.
fn big_payload(i: usize) -> Vec<u8> {
    let mut data = format!("{i} ").into_bytes();
    data.resize(BIG_EVENT_BYTES, b'x');
    data
}

fn ids(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

#[test]
fn a_quiet_stream_gets_heartbeats_and_a_busy_one_does_not() {
    let engine = Engine::start(&["--heartbeat-ms", "300"]);
    let mut sub = SseClient::subscribe(engine.addr, &["beat"]);

    // Quiet for 2 s: a comment every 300 ms, up to a tick or two later.
    sub.expect_no_event(Duration::from_secs(2));
    let quiet = sub.parser().comments();
    assert!(
        (4..=8).contains(&quiet),
        "{quiet} comments in 2 s of a quiet stream with --heartbeat-ms 300 (want 4 to 8); body: {}",
        tail(sub.body())
    );

    // Busy for 1.5 s: an event every 100 ms, a third of the interval, leaves no silence
    // to fill. One stray comment is allowed for a publisher thread delayed past 300 ms.
    let mut publisher = Publisher::connect(&engine.ingest);
    let start = Instant::now();
    let mut sent = Vec::new();
    for i in 0..15u64 {
        sent.push(publisher.publish("beat", format!("tick {i}").as_bytes()));
        sleep_until(start + ms(100 * (i + 1)));
    }
    assert_eq!(ids(&sub.events_until(sent.len(), WAIT)), sent);
    let busy = comments_between(sub.body(), &sent[0], &sent[14]);
    assert!(
        busy <= 1,
        "{busy} heartbeat comments between events 100 ms apart (heartbeat 300 ms); body: {}",
        tail(sub.body())
    );

    // The counter counts what was sent: no fewer than the client saw before it was read,
    // no more than the client has seen once those sends have had time to arrive.
    let seen_before = sub.parser().comments();
    let counted = engine.counter("heartbeats");
    sub.expect_no_event(ms(600));
    let seen_after = sub.parser().comments();
    assert!(
        seen_before as u64 <= counted && counted <= seen_after as u64,
        "counter heartbeats = {counted}, but the one client saw {seen_before} comments before \
         and {seen_after} after reading it"
    );
}

#[test]
fn heartbeats_resume_as_soon_as_a_backlog_drains() {
    // A short request deadline makes the connection's first timer fire while the backlog
    // still waits (when the first heartbeat comes is the quiet-stream test's subject). The
    // stall deadline is far beyond the 2 s the client does not read.
    let engine = Engine::start(&[
        "--heartbeat-ms",
        "300",
        "--request-timeout-ms",
        "1000",
        "--write-stall-ms",
        "5000",
        "--out-queue-bytes-max",
        ROOMY_QUEUE,
    ]);
    let mut sub = subscribe_small_rcvbuf(engine.addr, "backlog");
    let opened = Instant::now();
    let n = backlog_events();
    let mut publisher = Publisher::connect(&engine.ingest);
    for i in 0..n {
        publisher.publish("backlog", &big_payload(i));
    }
    sleep_until(opened + Duration::from_secs(2));

    // Drain until no event has come for 500 ms. Whether a backlogged client gets every
    // event is the backpressure policy's business, not this test's.
    let mut received = 0;
    let mut last_event = Instant::now();
    let mut seen = sub.parser().comments();
    let drain_by = Instant::now() + WAIT;
    while received <= n && Instant::now() < drain_by {
        match sub.next_event(ms(500)) {
            Ok(_) => {
                received += 1;
                last_event = Instant::now();
                seen = sub.parser().comments();
            }
            Err(End::TimedOut) => break,
            Err(End::Closed) => panic!("the stream closed after {received} events"),
        }
    }
    assert!(received > 0, "no event reached the backlogged client");
    // Quiet since the last event: the next heartbeat is due 300 ms after it went out.
    let waited = next_comment(&mut sub, seen, Duration::from_secs(6)).map(|_| last_event.elapsed());
    assert!(
        waited.is_some_and(|w| w <= ms(1200)),
        "first heartbeat {waited:?} after the last of {received} backlogged events \
         (None: not within 6 s), with --heartbeat-ms 300; stats: {}",
        engine.stats()
    );
    assert_eq!(engine.counter("stalled"), 0, "{}", engine.stats());
}

/// One slowloris connection: it sends a request head a byte at a time, too slowly.
struct Trickler {
    stream: TcpStream,
    first_byte: Instant,
    sent: usize,
    got: Vec<u8>,
    answered: Option<Instant>,
    closed: Option<Instant>,
}

const TRICKLE_HEAD: &[u8] = b"GET /sse?topic=t HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
const TRICKLE_PAUSE: Duration = Duration::from_millis(500);

impl Trickler {
    fn start(addr: SocketAddr) -> Trickler {
        let mut stream = TcpStream::connect_timeout(&addr, WAIT).expect("connect a trickler");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        stream.write_all(&TRICKLE_HEAD[..1]).expect("first byte");
        let first_byte = Instant::now();
        stream.set_nonblocking(true).expect("nonblocking");
        Trickler {
            stream,
            first_byte,
            sent: 1,
            got: Vec::new(),
            answered: None,
            closed: None,
        }
    }

    /// Sends the next byte if one is due and nothing was answered; reads what arrived.
    fn poll(&mut self, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        let due = self.first_byte + TRICKLE_PAUSE * self.sent as u32;
        if self.answered.is_none() && now >= due && self.sent < TRICKLE_HEAD.len() {
            // A write can fail once the engine has answered and closed; the read says so.
            let _ = self.stream.write(&TRICKLE_HEAD[self.sent..self.sent + 1]);
            self.sent += 1;
        }
        let mut buf = [0u8; 1024];
        for _ in 0..4 {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.closed = Some(now);
                    return;
                }
                Ok(n) => {
                    self.answered.get_or_insert(now);
                    self.got.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.closed = Some(now);
                    return;
                }
            }
        }
    }

    /// What is wrong with how this connection ended, if anything.
    fn fault(&self, timeout: Duration) -> Option<String> {
        let answered = self.answered.map(|t| t - self.first_byte);
        let closed = self.closed.map(|t| t - self.first_byte);
        let fault = if !self.got.starts_with(b"HTTP/1.1 408 ") {
            "no 408"
        } else if answered.is_some_and(|a| a + ms(200) < timeout) {
            "answered early"
        } else if closed.is_none_or(|c| c > timeout + ms(1500)) {
            "not closed in time"
        } else {
            return None;
        };
        Some(format!(
            "{fault}: answered {answered:?}, closed {closed:?} after the first byte, {} bytes sent, got {:?}",
            self.sent,
            String::from_utf8_lossy(&self.got[..self.got.len().min(40)])
        ))
    }
}

/// Publishes on `topic` every 200 ms until `stop`, then a last event `done`; returns the
/// ids with when each publish began.
fn publish_every_200ms(engine: &Engine, topic: &'static str, stop: Arc<AtomicBool>) -> PublishLog {
    let mut publisher = Publisher::connect(&engine.ingest);
    thread::spawn(move || {
        let start = Instant::now();
        let mut log = Vec::new();
        // Bounded: 100 events are 20 s, past any wait of the test.
        for i in 0..100u32 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let at = Instant::now();
            log.push((publisher.publish(topic, format!("steady {i}").as_bytes()), at));
            sleep_until(start + ms(200) * (i + 1));
        }
        let at = Instant::now();
        log.push((publisher.publish(topic, b"done"), at));
        log
    })
}

type PublishLog = thread::JoinHandle<Vec<(String, Instant)>>;

#[test]
fn slowloris_connections_get_408_on_time_while_a_subscriber_is_served() {
    const TRICKLERS: usize = 500;
    let timeout = Duration::from_millis(2000);
    let engine = Engine::start(&["--request-timeout-ms", "2000"]);
    let mut steady = SseClient::subscribe(engine.addr, &["steady"]);
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        // Bounded: the publisher ends with `done` after at most 100 events.
        for _ in 0..=100 {
            let event = steady.expect_event();
            let done = event.data == "done";
            got.push((event, Instant::now()));
            if done {
                break;
            }
        }
        got
    });
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = publish_every_200ms(&engine, "steady", Arc::clone(&stop));

    let mut tricklers: Vec<Trickler> = (0..TRICKLERS).map(|_| Trickler::start(engine.addr)).collect();
    let last_start = tricklers.last().expect("tricklers").first_byte;
    let give_up = last_start + timeout + Duration::from_secs(3);
    while tricklers.iter().any(|t| t.closed.is_none()) && Instant::now() < give_up {
        let now = Instant::now();
        for t in &mut tricklers {
            t.poll(now);
        }
        thread::sleep(ms(5));
    }
    stop.store(true, Ordering::Relaxed);

    let faults: Vec<String> = tricklers.iter().filter_map(|t| t.fault(timeout)).collect();
    assert!(
        faults.is_empty(),
        "{} of {TRICKLERS} slowloris connections ended wrong (request timeout {timeout:?}); \
         the first: {:#?}",
        faults.len(),
        &faults[..faults.len().min(5)]
    );

    let published = publisher.join().expect("publisher thread");
    let received = reader.join().expect("reader thread");
    let sent: Vec<&str> = published.iter().map(|(id, _)| id.as_str()).collect();
    let got: Vec<&str> = received.iter().map(|(e, _)| e.id.as_str()).collect();
    assert_eq!(got, sent, "the steady subscriber's events");
    for ((id, at), (_, arrived)) in published.iter().zip(&received) {
        let late = arrived.saturating_duration_since(*at);
        assert!(
            late < Duration::from_secs(1),
            "event {id} arrived {late:?} after its publish"
        );
    }
    assert_eq!(
        engine.counter("request_timeouts"),
        TRICKLERS as u64,
        "{}",
        engine.stats()
    );
}

#[test]
fn a_silent_connection_gets_408_at_the_deadline() {
    let timeout = Duration::from_millis(1000);
    let engine = Engine::start(&["--request-timeout-ms", "1000"]);
    let conns: Vec<(HttpConn, Instant)> = (0..3)
        .map(|_| (HttpConn::connect(engine.addr), Instant::now()))
        .collect();
    for (mut conn, connected) in conns {
        let (response, _) = conn
            .read_response(timeout * 3)
            .unwrap_or_else(|end| panic!("no answer to a silent connection: {end:?}"));
        let after = connected.elapsed();
        assert_eq!(response.status, 408, "{response:?}");
        assert!(response.closes(), "a 408 that closes says so: {response:?}");
        assert!(
            after + ms(200) >= timeout && after <= timeout + ms(1500),
            "408 came {after:?} after connecting; request timeout {timeout:?}"
        );
        assert!(conn.closes_within(ms(1000)), "still open after the 408");
    }
    assert_eq!(engine.counter("request_timeouts"), 3, "{}", engine.stats());
}

#[test]
fn a_slow_second_request_on_a_keepalive_connection_gets_408_on_time() {
    let timeout = ms(1000);
    let engine = Engine::start(&["--request-timeout-ms", "1000", "--keepalive-idle-ms", "5000"]);
    let head = b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n";
    let (response, _, mut conn) = exchange(engine.addr, head);
    assert_eq!(response.status, 404, "{response:?}");
    // Idle for longer than a request may take, shorter than the idle limit; then the next
    // request's head trickles in a byte every 300 ms, and its own deadline must apply.
    thread::sleep(ms(1500));
    let first_byte = Instant::now();
    let mut answer = None;
    for (i, byte) in (1u32..).zip(head) {
        // A write can fail once the engine has answered and closed; the read says so.
        let _ = conn.send(std::slice::from_ref(byte));
        let next = (first_byte + ms(300) * i).saturating_duration_since(Instant::now());
        match conn.read_head(next) {
            Ok(response) => {
                answer = Some((response, first_byte.elapsed()));
                break;
            }
            Err(End::TimedOut) => {}
            Err(End::Closed) => panic!(
                "closed without an answer {:?} into the head",
                first_byte.elapsed()
            ),
        }
    }
    let (response, after) = answer.expect("the whole head was sent at 300 ms a byte without a 408");
    assert_eq!(response.status, 408, "{response:?}");
    assert!(
        after + ms(200) >= timeout && after <= timeout + ms(1500),
        "408 came {after:?} after the second request's first byte; --request-timeout-ms 1000, \
         --keepalive-idle-ms 5000"
    );
    assert!(conn.closes_within(ms(1000)), "still open after the 408");
    assert_eq!(engine.counter("request_timeouts"), 1, "{}", engine.stats());
}

/// Sends `GET /nope` on `conn` and checks the answer is a keep-alive 404.
fn expect_keepalive_404(conn: &mut HttpConn) {
    conn.send(b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send a request");
    let (response, _) = conn.read_response(WAIT).expect("a response");
    assert_eq!(response.status, 404, "{response:?}");
    assert!(!response.closes(), "keep-alive expected: {response:?}");
}

/// Waits (bounded) for the engine to close an idle `conn`; returns how long it took from
/// `since`, checked to be within the idle deadline's window.
fn expect_idle_close(conn: &mut HttpConn, since: Instant, idle: Duration) -> Duration {
    let closed = conn.closes_within(idle + Duration::from_secs(2));
    let after = since.elapsed();
    assert!(
        closed,
        "an idle keep-alive connection still open {after:?} after its response"
    );
    assert!(
        after + ms(50) >= idle && after <= idle + ms(600),
        "idle keep-alive connection closed {after:?} after its response; --keepalive-idle-ms {}",
        idle.as_millis()
    );
    after
}

#[test]
fn an_idle_keepalive_connection_is_closed_and_a_busy_one_is_not() {
    let idle = Duration::from_millis(1000);
    let engine = Engine::start(&["--keepalive-idle-ms", "1000"]);

    let (response, _, mut conn) = exchange(engine.addr, b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    let answered = Instant::now();
    assert_eq!(response.status, 404, "{response:?}");
    assert!(!response.closes(), "keep-alive expected: {response:?}");
    expect_idle_close(&mut conn, answered, idle);
    assert_eq!(engine.counter("idle_closed"), 1, "{}", engine.stats());

    // A request every 300 ms keeps a connection open well past the idle time...
    let mut conn = HttpConn::connect(engine.addr);
    let start = Instant::now();
    for i in 0..9u32 {
        expect_keepalive_404(&mut conn);
        sleep_until(start + ms(300) * (i + 1));
    }
    expect_keepalive_404(&mut conn);
    let answered = Instant::now();
    assert!(answered - start > Duration::from_secs(2));
    assert_eq!(engine.counter("idle_closed"), 1, "{}", engine.stats());
    // ...and it is closed once it falls idle.
    expect_idle_close(&mut conn, answered, idle);
    assert_eq!(engine.counter("idle_closed"), 2, "{}", engine.stats());
}

#[test]
fn a_subscriber_that_stops_reading_is_reaped_after_the_write_stall() {
    let stall = Duration::from_millis(1000);
    let engine = Engine::start(&[
        "--write-stall-ms",
        "1000",
        "--out-queue-bytes-max",
        ROOMY_QUEUE,
        "--heartbeat-ms",
        "0",
    ]);
    let n = backlog_events();
    let mut normal = SseClient::subscribe(engine.addr, &["flood"]);
    let mut stuck = subscribe_small_rcvbuf(engine.addr, "flood");

    // In step with the normal subscriber, so that it never has a backlog of its own.
    let mut publisher = Publisher::connect(&engine.ingest);
    let first_publish = Instant::now();
    for i in 0..n {
        let id = publisher.publish("flood", &big_payload(i));
        let event = normal.expect_event();
        assert_eq!(event.id, id, "the normal subscriber's event {i}");
    }
    let published = Instant::now();

    // Poll until the engine counts the stall, bounded by the deadline's window.
    let give_up = published + stall + Duration::from_millis(1500);
    let reaped = loop {
        if engine.counter("stalled") >= 1 {
            break Instant::now();
        }
        assert!(
            Instant::now() < give_up,
            "no stall reaped {:?} after publishing {n} events of 16 KiB to a client that does \
             not read (--write-stall-ms 1000); stats: {}",
            published.elapsed(),
            engine.stats()
        );
        thread::sleep(ms(50));
    };
    assert!(
        reaped - first_publish + ms(100) >= stall,
        "reaped {:?} after the first event was queued; write stall {stall:?}",
        reaped - first_publish
    );
    assert_eq!(
        engine.counter("stalled"),
        1,
        "only the stuck one: {}",
        engine.stats()
    );
    assert_eq!(engine.counter("slow_closed"), 0, "{}", engine.stats());

    // Draining, the stuck client finds the end of a stream cut short.
    assert!(
        stuck.closes_within(Duration::from_secs(5)),
        "no EOF after the reap"
    );
    let whole = n * BIG_EVENT_BYTES;
    assert!(
        stuck.body().len() < whole,
        "the reaped client got {} bytes, the whole {whole}",
        stuck.body().len()
    );
}
