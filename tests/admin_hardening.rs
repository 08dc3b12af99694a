//! The admin listener against clients that trickle, stay silent, pipeline or crowd it, and
//! its status codes when publishing fails: a slow client delays no other request, a
//! request has one deadline for its head and body (408), keep-alive and pipelining work,
//! connections over `--admin-conns-max` get 503 at once, the publishing connection to the
//! ingest socket is kept, and a publish the engine cannot take is 503 with `Retry-After`
//! while an event the engine refuses is 400.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use ringcast_tests::engine::Engine;
use ringcast_tests::http::{exchange, HttpConn, Response};
use ringcast_tests::slow::rss_kib;
use ringcast_tests::sse::SseClient;
use ringcast_tests::WAIT;

/// The longest a request from within the cap may take while other clients misbehave:
/// well under a second (it costs microseconds; a held listener made it wait 6-10 s).
const PROMPT: Duration = Duration::from_millis(500);

/// How long a timed `/healthz` waits, so that a held listener shows its delay as a
/// number rather than a timeout.
const HELD_WAIT: Duration = Duration::from_secs(30);

/// Times one `GET /healthz` on a new connection, from the connect to the whole answer.
///
/// # Panics
///
/// Unless it answers 200 `ok` within [`HELD_WAIT`].
fn healthz_time(admin: SocketAddr) -> Duration {
    let start = Instant::now();
    let mut conn = HttpConn::connect(admin);
    conn.send(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .expect("send /healthz");
    let (response, body) = conn
        .read_response(HELD_WAIT)
        .unwrap_or_else(|end| panic!("/healthz: {end:?} after {:?}", start.elapsed()));
    assert_eq!((response.status, body.as_slice()), (200, &b"ok\n"[..]));
    start.elapsed()
}

/// The slowest of `n` timed `/healthz` requests in a row.
fn slowest_healthz(admin: SocketAddr, n: usize) -> Duration {
    (0..n).map(|_| healthz_time(admin)).max().unwrap_or_default()
}

/// `POST /publish?topic=T` with `body` as one request's bytes.
fn publish_request(topic: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /publish?topic={topic} HTTP/1.1\r\nHost: admin\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The id of a `{"id":"..."}` answer.
fn id_of(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.strip_prefix("{\"id\":\"")
        .and_then(|rest| rest.strip_suffix("\"}"))
        .unwrap_or_else(|| panic!("not an id answer: {text}"))
        .to_owned()
}

/// The `Threads:` count of a process.
fn threads(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a Threads line")
}

/// Waits until `done` holds, for at most [`WAIT`].
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen within {WAIT:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_trickling_a_byte_a_second_does_not_delay_healthz() {
    let engine = Engine::start(&[]);
    let admin = engine.admin;
    let trickler = thread::spawn(move || {
        let mut conn = HttpConn::connect(admin);
        // 8 bytes over 8 s of a head that would take 38 s at this pace.
        let head = b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n";
        let _ = conn.send_bytewise(&head[..8], Duration::from_secs(1));
    });
    thread::sleep(Duration::from_millis(1500));
    let slowest = slowest_healthz(admin, 5);
    assert!(
        slowest < PROMPT,
        "/healthz took up to {slowest:?} while a client trickled a byte a second"
    );
    trickler.join().expect("the trickling client");
}

#[test]
fn five_silent_connections_do_not_delay_healthz() {
    let engine = Engine::start(&[]);
    let silent: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(engine.admin).expect("connect"))
        .collect();
    thread::sleep(Duration::from_millis(100));
    let slowest = slowest_healthz(engine.admin, 5);
    assert!(
        slowest < PROMPT,
        "/healthz took up to {slowest:?} behind five silent connections"
    );
    drop(silent);
}

/// Sends `whole` at once, then one byte of `trickled` every 1.9 s (each gap shorter than
/// the old 2 s per-read timeout), and returns the answer, the time from the first byte to
/// it, and whether the connection then closed.
fn trickle_past_deadline(admin: SocketAddr, whole: &[u8], trickled: &[u8]) -> (Response, Duration, bool) {
    let stream = TcpStream::connect(admin).expect("connect");
    let mut writer = stream.try_clone().expect("clone the stream");
    let (whole, trickled) = (whole.to_vec(), trickled.to_vec());
    let start = Instant::now();
    let sender = thread::spawn(move || {
        if writer.write_all(&whole).is_err() {
            return;
        }
        // At most 8 bytes (15.2 s): a bound on the test, not a limit of the engine's.
        for (at, byte) in trickled.iter().take(8).enumerate() {
            if at > 0 || !whole.is_empty() {
                thread::sleep(Duration::from_millis(1900));
            }
            if writer.write_all(std::slice::from_ref(byte)).is_err() {
                return;
            }
        }
    });
    let mut conn = HttpConn::from_stream(stream);
    let response = conn.read_head(Duration::from_secs(20)).unwrap_or_else(|end| {
        panic!(
            "no answer to a trickled request: {end:?} after {:?}",
            start.elapsed()
        )
    });
    let elapsed = start.elapsed();
    let closed = conn.closes_within(WAIT);
    sender.join().expect("the trickling sender");
    (response, elapsed, closed)
}

#[test]
fn a_request_trickled_a_byte_every_1900_ms_is_cut_at_the_deadline_with_408() {
    let timeout = Duration::from_millis(3000);
    let engine = Engine::start(&["--request-timeout-ms", "3000"]);
    let admin = engine.admin;
    let head = thread::spawn(move || {
        trickle_past_deadline(admin, b"", b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
    });
    let body = thread::spawn(move || {
        let head = b"POST /publish?topic=t HTTP/1.1\r\nHost: admin\r\nContent-Length: 20\r\n\r\n";
        trickle_past_deadline(admin, head, b"abcdefghijklmnopqrst")
    });
    for (what, joined) in [("head", head.join()), ("body", body.join())] {
        let (response, elapsed, closed) = joined.expect("the trickling client");
        assert_eq!(response.status, 408, "{what}: {response:?}");
        assert!(
            response.closes() && closed,
            "{what}: not closed after 408: {response:?}"
        );
        assert!(
            elapsed >= timeout - Duration::from_millis(200)
                && elapsed < timeout + Duration::from_millis(1500),
            "{what}: 408 after {elapsed:?}, the deadline is {timeout:?}"
        );
    }
}

#[test]
fn five_pipelined_publishes_are_all_published_and_answered_in_order() {
    let engine = Engine::start(&[]);
    let mut sub = SseClient::subscribe(engine.addr, &["pipe"]);
    let pipeline: Vec<u8> = (0..5)
        .flat_map(|i| publish_request("pipe", &format!("event-{i}")))
        .collect();
    let mut conn = HttpConn::connect(engine.admin);
    conn.send(&pipeline).expect("send five requests at once");
    let ids: Vec<String> = (0..5)
        .map(|i| {
            let (response, body) = conn
                .read_response(WAIT)
                .unwrap_or_else(|end| panic!("answer {i} of 5: {end:?}"));
            assert_eq!(
                response.status,
                200,
                "answer {i}: {}",
                String::from_utf8_lossy(&body)
            );
            assert!(!response.closes(), "answer {i} closes: {response:?}");
            id_of(&body)
        })
        .collect();
    let events = sub.events_until(5, WAIT);
    for (i, (event, id)) in events.iter().zip(&ids).enumerate() {
        assert_eq!(
            (&event.id, event.data.as_str()),
            (id, format!("event-{i}").as_str())
        );
    }
    let seqs: Vec<u64> = ids.iter().map(|id| ringcast_tests::seq_of(id)).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "answers out of order: {ids:?}"
    );
}

#[test]
fn a_keep_alive_connection_serves_several_requests() {
    let engine = Engine::start(&[]);
    let mut sub = SseClient::subscribe(engine.addr, &["ka"]);
    let mut conn = HttpConn::connect(engine.admin);
    let get = |target: &str| format!("GET {target} HTTP/1.1\r\nHost: admin\r\n\r\n").into_bytes();
    for (request, status) in [
        (get("/healthz"), 200),
        (get("/stats"), 200),
        (publish_request("ka", "kept"), 200),
        (get("/metrics"), 200),
        (get("/nowhere"), 404),
        (publish_request("bad%20topic", "x"), 400),
        (get("/healthz"), 200),
    ] {
        conn.send(&request).expect("send on the kept connection");
        let (response, body) = conn
            .read_response(WAIT)
            .unwrap_or_else(|end| panic!("{}: {end:?}", String::from_utf8_lossy(&request)));
        assert_eq!(response.status, status, "{}", String::from_utf8_lossy(&body));
        assert!(!response.closes(), "{response:?}");
    }
    // HEAD: the head only, so the next answer on the connection is framed right.
    conn.send(b"HEAD /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        .unwrap();
    let response = conn.read_head(WAIT).expect("HEAD answer");
    assert_eq!((response.status, response.header("Allow")), (405, Some("GET")));
    conn.send(&get("/healthz")).unwrap();
    let (response, body) = conn.read_response(WAIT).expect("after HEAD");
    assert_eq!((response.status, body.as_slice()), (200, &b"ok\n"[..]));
    assert_eq!(sub.expect_event().data, "kept");

    conn.send(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (response, _) = conn.read_response(WAIT).expect("the last answer");
    assert!(response.closes(), "{response:?}");
    assert!(conn.closes_within(WAIT), "Connection: close was not honoured");

    // HTTP/1.0 closes unless it asks for keep-alive, which is then said back.
    let (response, _, mut old) = exchange(engine.admin, b"GET /healthz HTTP/1.0\r\nHost: admin\r\n\r\n");
    assert!(response.closes() && old.closes_within(WAIT), "{response:?}");
    let mut old = HttpConn::connect(engine.admin);
    for _ in 0..2 {
        old.send(b"GET /healthz HTTP/1.0\r\nHost: admin\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let (response, _) = old.read_response(WAIT).expect("HTTP/1.0 keep-alive");
        assert_eq!(
            (response.status, response.header("Connection")),
            (200, Some("keep-alive"))
        );
    }

    // A body without a Content-Length cannot be framed on a kept connection: 411, closed.
    let (response, _, mut chunked) = exchange(
        engine.admin,
        b"POST /publish?topic=ka HTTP/1.1\r\nHost: admin\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    );
    assert_eq!(response.status, 411, "{response:?}");
    assert!(response.closes() && chunked.closes_within(WAIT));
    sub.expect_no_event(ringcast_tests::QUIET);
}

#[test]
fn connections_over_the_cap_get_503_at_once_and_those_within_are_served() {
    let engine = Engine::start(&["--admin-conns-max", "4"]);
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(engine.admin).expect("connect"))
        .collect();
    // The fourth, within the cap: connections are accepted in the order they connect.
    let mut inside = HttpConn::connect(engine.admin);
    for i in 0..20 {
        let start = Instant::now();
        let (response, body, mut conn) =
            exchange(engine.admin, b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n");
        let elapsed = start.elapsed();
        let body = String::from_utf8_lossy(&body);
        assert_eq!(response.status, 503, "connection {i} over the cap: {body}");
        assert!(
            response.closes() && response.header("Retry-After").is_some(),
            "{response:?}"
        );
        assert!(body.contains("--admin-conns-max"), "{body}");
        assert!(conn.closes_within(WAIT), "refused connection {i} was not closed");
        assert!(elapsed < PROMPT, "refusal {i} took {elapsed:?}");
    }
    let start = Instant::now();
    inside
        .send(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        .unwrap();
    let (response, _) = inside.read_response(WAIT).expect("/healthz within the cap");
    assert_eq!(response.status, 200);
    assert!(
        start.elapsed() < PROMPT,
        "/healthz within the cap took {:?}",
        start.elapsed()
    );
    // Slots are given back when connections close.
    drop(held);
    drop(inside);
    wait_until("a slot given back", || {
        let (response, _, _) = exchange(engine.admin, b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n");
        response.status == 200
    });
}

#[test]
fn many_slow_admin_clients_cost_bounded_memory_and_threads() {
    const CLIENTS: usize = 300;
    const CAP: u64 = 64;
    const SENT_BYTES: usize = 256 << 10;
    let engine = Engine::start(&[]);
    let (rss_before, threads_before) = (rss_kib(engine.pid), threads(engine.pid));
    let head = b"POST /publish?topic=m HTTP/1.1\r\nHost: admin\r\nContent-Length: 1000000\r\n\r\n";
    let body = vec![b'x'; SENT_BYTES];
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut conn = TcpStream::connect_timeout(&engine.admin, Duration::from_secs(2)).expect("connect");
        conn.set_write_timeout(Some(WAIT)).unwrap();
        // A refused connection closes as it is written to; its answer is read below.
        let _ = conn.write_all(head).and_then(|()| conn.write_all(&body));
        clients.push(conn);
    }
    let (rss_peak, threads_peak) = (rss_kib(engine.pid), threads(engine.pid));
    let mut refused = 0;
    for conn in &mut clients {
        conn.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut answer = [0u8; 12];
        if conn.read_exact(&mut answer).is_ok() {
            assert_eq!(&answer, b"HTTP/1.1 503", "{}", String::from_utf8_lossy(&answer));
            refused += 1;
        }
    }
    assert_eq!(refused as u64, CLIENTS as u64 - CAP, "refused connections");
    assert!(
        threads_peak <= threads_before + CAP,
        "threads {threads_before} -> {threads_peak}"
    );
    let growth_kib = rss_peak.saturating_sub(rss_before);
    // Each served client buffers what it sent (256 KiB); unbounded, 300 of them would
    // hold 75 MiB.
    let bound_kib = CAP * 512;
    assert!(
        growth_kib < bound_kib,
        "VmRSS grew {growth_kib} KiB with {CLIENTS} slow clients, over {bound_kib} KiB"
    );
    drop(clients);
    wait_until("the connection threads to end", || {
        threads(engine.pid) <= threads_before
    });
    let rss_after = rss_kib(engine.pid);
    println!(
        "VmRSS {rss_before} KiB before, {rss_peak} KiB with {CLIENTS} slow admin clients \
         ({refused} refused), {rss_after} KiB after; threads {threads_before} -> {threads_peak}"
    );
}

#[test]
fn a_full_publisher_table_answers_503_every_time() {
    let engine = Engine::start(&["--publishers-max", "1"]);
    // Take every slot a publisher can take (a slot the engine keeps for its own admin
    // connection cannot be taken from outside).
    let mut occupants = Vec::new();
    loop {
        let mut p = UnixStream::connect(&engine.ingest).expect("connect to the ingest socket");
        p.set_read_timeout(Some(WAIT)).unwrap();
        let _ = p.write_all(b"PING\r\n");
        let mut line = String::new();
        let _ = BufReader::new(&p).read_line(&mut line);
        if line == "+PONG\r\n" {
            occupants.push(p);
            assert!(
                occupants.len() <= 4,
                "--publishers-max 1 let in {} publishers",
                occupants.len()
            );
        } else {
            assert!(line.starts_with("-ERR too many publishers"), "{line:?}");
            break;
        }
    }
    let mut kept = HttpConn::connect(engine.admin);
    let mut statuses = Vec::new();
    for i in 0..20 {
        let request = publish_request("full", "x");
        let (response, body) = if i % 2 == 0 {
            let (response, body, _) = exchange(engine.admin, &request);
            (response, body)
        } else {
            kept.send(&request).unwrap();
            kept.read_response(WAIT)
                .expect("an answer on the kept connection")
        };
        let body = String::from_utf8_lossy(&body);
        match response.status {
            503 => {
                assert!(response.header("Retry-After").is_some(), "{response:?}");
                assert!(body.contains("too many publishers"), "{body}");
            }
            // The engine keeps a slot for its own admin connection: then it publishes.
            200 => {}
            status => panic!("publish {i} with the publisher table full: {status} {body}"),
        }
        statuses.push(response.status);
    }
    assert!(statuses.iter().all(|&s| s == statuses[0]), "{statuses:?}");
    drop(occupants);
    wait_until("a publish once a slot is free", || {
        let (response, _, _) = exchange(engine.admin, &publish_request("full", "x"));
        response.status == 200
    });
}

/// What [`FakeIngest`] does with the next connection or `PUB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `+OK fake-N`.
    Publish,
    /// `+OK fake-N`, then close.
    PublishThenClose,
    /// `-ERR invalid event name`, and read on.
    RefuseEvent,
    /// `-ERR too many publishers connected; closing` and close: at accept for a new
    /// connection, in place of a reply on a kept one.
    TurnAway,
    /// Close without a reply.
    CloseWithoutReply,
}

/// A stand-in for the engine's ingest socket, bound at its path after the engine
/// started, so the admin's side of the protocol meets each fault exactly when told.
struct FakeIngest {
    mode: Arc<Mutex<Mode>>,
    accepted: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
    pubs: Arc<AtomicUsize>,
}

impl FakeIngest {
    fn replace(path: &Path) -> FakeIngest {
        std::fs::remove_file(path).expect("remove the engine's ingest socket file");
        let listener = UnixListener::bind(path).expect("bind the fake ingest socket");
        let fake = FakeIngest {
            mode: Arc::new(Mutex::new(Mode::Publish)),
            accepted: Arc::default(),
            ended: Arc::default(),
            pubs: Arc::default(),
        };
        let (mode, accepted, ended, pubs) = (
            Arc::clone(&fake.mode),
            Arc::clone(&fake.accepted),
            Arc::clone(&fake.ended),
            Arc::clone(&fake.pubs),
        );
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                accepted.fetch_add(1, Ordering::SeqCst);
                let (mode, ended, pubs) = (Arc::clone(&mode), Arc::clone(&ended), Arc::clone(&pubs));
                thread::spawn(move || {
                    serve_fake(stream, &mode, &pubs);
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        fake
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap_or_else(PoisonError::into_inner) = mode;
    }
}

fn serve_fake(mut stream: UnixStream, mode: &Mutex<Mode>, pubs: &AtomicUsize) {
    let mode = || *mode.lock().unwrap_or_else(PoisonError::into_inner);
    const TURN_AWAY: &[u8] = b"-ERR too many publishers connected; closing\r\n";
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    if mode() == Mode::TurnAway {
        let _ = stream.write_all(TURN_AWAY);
        return;
    }
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line == "PING\r\n" {
            let _ = stream.write_all(b"+PONG\r\n");
            continue;
        }
        let len: usize = line
            .split(' ')
            .nth(2)
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("the admin sent {line:?}"));
        let mut payload = vec![0u8; len + 2];
        reader.read_exact(&mut payload).expect("the PUB payload");
        let n = pubs.fetch_add(1, Ordering::SeqCst) + 1;
        let reply = match mode() {
            Mode::Publish | Mode::PublishThenClose => format!("+OK fake-{n}\r\n"),
            Mode::RefuseEvent => "-ERR invalid event name: 1-64 bytes\r\n".to_owned(),
            Mode::TurnAway => String::from_utf8_lossy(TURN_AWAY).into_owned(),
            Mode::CloseWithoutReply => return,
        };
        let _ = stream.write_all(reply.as_bytes());
        if matches!(mode(), Mode::PublishThenClose | Mode::TurnAway) {
            return;
        }
    }
}

#[test]
fn publishing_keeps_one_ingest_connection_and_classifies_its_faults() {
    let engine = Engine::start(&[]);
    let fake = FakeIngest::replace(&engine.ingest);
    let admin = engine.admin;
    let publish = |conn: &mut HttpConn| {
        conn.send(&publish_request("f", "x")).unwrap();
        let (response, body) = conn.read_response(WAIT).expect("a publish answer");
        (response, String::from_utf8_lossy(&body).into_owned())
    };
    let fresh = || {
        let (response, body, _) = exchange(admin, &publish_request("f", "x"));
        (response, String::from_utf8_lossy(&body).into_owned())
    };

    // Five publishes over three HTTP connections, three of them pipelined: one ingest
    // connection.
    for _ in 0..2 {
        assert_eq!(fresh().0.status, 200);
    }
    let mut conn = HttpConn::connect(admin);
    conn.send(
        &[
            publish_request("f", "a"),
            publish_request("f", "b"),
            publish_request("f", "c"),
        ]
        .concat(),
    )
    .unwrap();
    for n in 3..=5 {
        let (response, body) = conn.read_response(WAIT).expect("a pipelined answer");
        assert_eq!((response.status, id_of(&body)), (200, format!("fake-{n}")));
    }
    assert_eq!(
        fake.accepted.load(Ordering::SeqCst),
        1,
        "ingest connections for 5 publishes"
    );

    // An event the engine refuses is the request's fault; the connection is kept.
    fake.set(Mode::RefuseEvent);
    let (response, body) = publish(&mut conn);
    assert_eq!(response.status, 400, "{body}");
    assert!(body.contains("invalid event name") && response.header("Retry-After").is_none());
    fake.set(Mode::Publish);
    assert_eq!(publish(&mut conn).0.status, 200);
    assert_eq!(fake.accepted.load(Ordering::SeqCst), 1);

    // The engine closed the kept connection after a reply: the next publish reconnects.
    fake.set(Mode::PublishThenClose);
    assert_eq!(publish(&mut conn).0.status, 200);
    wait_until("the fake to close", || fake.ended.load(Ordering::SeqCst) == 1);
    fake.set(Mode::Publish);
    assert_eq!(publish(&mut conn).0.status, 200);
    assert_eq!(fake.accepted.load(Ordering::SeqCst), 2);

    // Turned away (the publisher table full), on the kept connection and then at every
    // connect; closed without a reply; no socket at all: the engine's fault, 503.
    fake.set(Mode::TurnAway);
    for i in 0..6 {
        let (response, body) = if i % 2 == 0 { publish(&mut conn) } else { fresh() };
        assert_eq!(response.status, 503, "turned away, try {i}: {body}");
        assert!(body.contains("too many publishers"), "{body}");
        assert!(response.header("Retry-After").is_some() && !response.closes());
    }
    fake.set(Mode::CloseWithoutReply);
    let (response, body) = publish(&mut conn);
    assert_eq!(response.status, 503, "{body}");
    assert!(response.header("Retry-After").is_some());
    std::fs::remove_file(&engine.ingest).unwrap();
    let (response, body) = publish(&mut conn);
    assert_eq!(response.status, 503, "{body}");
    assert!(body.contains("cannot reach"), "{body}");
    assert!(response.header("Retry-After").is_some());
}
