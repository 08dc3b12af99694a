//! The engine's process life: SIGTERM with clients connected stops it with status 0 and
//! removes its socket file; a second engine on an ingest path in use is refused with the
//! path and pid named, and one on the client address of a running one with the address
//! and pid named, while a stale socket file with no listener is replaced; a port in use is
//! refused with the address named; after `kill -9` with clients connected, an engine
//! started at once on the same path and addresses starts, reports ready only once the dead
//! engine's listeners are gone, and serves every new client.
use std::collections::HashSet;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

use ringcast_tests::engine::{free_addr, Engine, TempDir};
use ringcast_tests::ingest::Publisher;
use ringcast_tests::sse::SseClient;
use ringcast_tests::wsclient::{self, RawWs};
use ringcast_tests::WAIT;

/// Checks `engine` serves: a subscriber receives what a publisher publishes.
fn assert_serving(engine: &Engine) {
    let mut sub = SseClient::subscribe(engine.addr, &["alive"]);
    let id = Publisher::connect(&engine.ingest).publish("alive", b"yes");
    let event = sub.expect_event();
    assert_eq!((event.id, event.data), (id, "yes".to_owned()));
}

#[test]
fn sigterm_with_clients_connected_exits_0_and_removes_the_socket() {
    let mut engine = Engine::start(&[]);
    let mut sub = SseClient::subscribe(engine.addr, &["t"]);
    let mut publisher = Publisher::connect(&engine.ingest);
    publisher.publish("t", b"before");
    assert_eq!(sub.expect_event().data, "before");
    // A client holding half a request must not keep the engine from stopping either.
    let mut partial = TcpStream::connect(engine.addr).expect("connect");
    partial
        .write_all(b"GET /sse?topic=t HTTP/1.1\r\nHo")
        .expect("write");

    let status = engine.stop();
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        engine.stderr()
    );
    assert!(!engine.ingest.exists(), "{} left behind", engine.ingest.display());
    // The listening sockets may outlive the process briefly: an io_uring instance is
    // torn down by the kernel after exit. They must be gone soon after.
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(engine.addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "{} still accepts {WAIT:?} after exit",
            engine.addr
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(sub.closes_within(WAIT), "the stream did not end");
    assert!(
        publisher.closes_within(WAIT),
        "the publisher connection did not end"
    );
}

/// Everything acknowledged with `+OK` before SIGTERM reaches every connected subscriber
/// before the engine exits: the ingest thread stops first, then each loop drains the ring
/// and flushes its queues.
#[test]
fn sigterm_delivers_every_acknowledged_event_first() {
    // Queues large enough for the whole burst: this is about shutdown, not about the
    // backpressure policy a reader slower than the burst would meet.
    let mut engine = Engine::start(&[
        "--queue-events",
        "4096",
        "--queue-bytes",
        "8388608",
        "--out-queue-bytes-max",
        "16777216",
    ]);
    let subs: Vec<SseClient> = (0..4)
        .map(|_| SseClient::subscribe(engine.addr, &["flush"]))
        .collect();
    // The subscribers read all along, as live clients do (one that stopped reading would
    // meet its backpressure policy instead).
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut sub| {
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while let Ok(event) = sub.next_event(WAIT) {
                    got.push(event.id);
                }
                got
            })
        })
        .collect();
    let mut publisher = Publisher::connect(&engine.ingest);
    let payload = vec![b'x'; 1024];
    let burst: Vec<u8> = (0..2000)
        .flat_map(|_| ringcast_tests::ingest::pub_frame("flush", &payload, ""))
        .collect();
    publisher.send(&burst);
    let ids: Vec<String> = (0..2000)
        .map(|_| ringcast_tests::ingest::ok_id(&publisher.reply()))
        .collect();
    let status = engine.stop();
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        engine.stderr()
    );
    for (n, reader) in readers.into_iter().enumerate() {
        let got = reader.join().expect("reader thread");
        assert_eq!(
            got.len(),
            ids.len(),
            "subscriber {n} got {} of {} acknowledged events",
            got.len(),
            ids.len()
        );
        assert_eq!(got, ids, "subscriber {n} got them out of order");
    }
}

#[test]
fn a_second_engine_on_the_same_ingest_path_is_refused_naming_it() {
    let first = Engine::start(&[]);
    let second = Engine::try_start_on(free_addr(), &first.ingest, &[]);
    let err = match second {
        Ok(second) => panic!(
            "a second engine started on {}: {}",
            first.ingest.display(),
            second.ready_line
        ),
        Err(err) => err,
    };
    let status = err
        .status
        .unwrap_or_else(|| panic!("the second engine neither started nor exited: {err}"));
    assert!(!status.success(), "{err}");
    let path = first.ingest.display().to_string();
    assert!(
        err.stderr.contains(&path),
        "the error does not name {path}: {err}"
    );
    let pid = format!("(pid {})", first.pid);
    assert!(
        err.stderr.contains(&pid),
        "the error does not name the running engine {pid}: {err}"
    );
    assert!(
        first.ingest.exists(),
        "the refused engine removed the first one's socket"
    );
    assert_serving(&first);
}

/// Two engines on one client address would split the clients between them (each loop's
/// listener uses `SO_REUSEPORT`, so the kernel lets the second bind), while publishers
/// reach only the engine on their ingest path.
#[test]
fn a_second_engine_on_the_client_address_of_a_running_one_is_refused_naming_its_pid() {
    let first = Engine::start(&[]);
    let dir = TempDir::new();
    let err = match Engine::try_start_on(first.addr, &dir.path().join("other.sock"), &[]) {
        Ok(second) => panic!("a second engine started on {}: {}", first.addr, second.ready_line),
        Err(err) => err,
    };
    assert!(err.status.is_some_and(|s| !s.success()), "{err}");
    let (addr, pid) = (first.addr.to_string(), format!("(pid {})", first.pid));
    assert!(
        err.stderr.contains(&addr) && err.stderr.contains(&pid),
        "the error does not name {addr} and {pid}: {err}"
    );
    assert_serving(&first);
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = TempDir::new();
    let path = dir.path().join("stale.sock");
    drop(UnixListener::bind(&path).expect("bind a socket"));
    assert!(
        path.exists(),
        "the stale socket file should remain after its listener closed"
    );
    let engine = Engine::try_start_on(free_addr(), &path, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_serving(&engine);
}

#[test]
fn a_port_in_use_is_refused_naming_the_address() {
    // A plain listener, without SO_REUSEPORT, so the engine cannot share the port.
    let holder = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = holder.local_addr().expect("local_addr");
    let dir = TempDir::new();
    let result = Engine::try_start_on(addr, &dir.path().join("ringcast.sock"), &[]);
    let err = match result {
        Ok(engine) => panic!(
            "an engine started on {addr}, which is in use: {}",
            engine.ready_line
        ),
        Err(err) => err,
    };
    assert!(err.status.is_some_and(|s| !s.success()), "{err}");
    assert!(
        err.stderr.contains(&addr.to_string()),
        "the error does not name {addr}: {err}"
    );
}

/// The inodes of the IPv4 TCP sockets listening on `port`, from `/proc/net/tcp`.
fn listening_inodes(port: u16) -> Vec<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(fields.get(1)?.rsplit_once(':')?.1, 16).ok()?;
            let listening = fields.get(3) == Some(&"0A");
            (listening && local_port == port)
                .then(|| fields.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// The inodes of the sockets process `pid` has descriptors for.
fn socket_inodes_of(pid: u32) -> HashSet<u64> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read the engine's descriptors");
    fds.flatten()
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            let target = target.to_str()?;
            target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// Checks, right after `engine` reported ready, that every socket listening on its client
/// and admin ports is its own: none is left of an engine that died, which would share the
/// port and take (then reset) some of the new connections.
fn assert_only_its_own_listeners(engine: &Engine) {
    let own = socket_inodes_of(engine.pid);
    for port in [engine.addr.port(), engine.admin.port()] {
        let listening = listening_inodes(port);
        let foreign: Vec<&u64> = listening.iter().filter(|inode| !own.contains(inode)).collect();
        assert!(
            foreign.is_empty(),
            "when the engine reported ready, {} of the {} sockets listening on port {port} were \
             not its own (inodes {foreign:?}); stderr:\n{}",
            foreign.len(),
            listening.len(),
            engine.stderr()
        );
        assert!(!listening.is_empty(), "nothing listens on port {port}");
    }
}

/// Opens `n` clients on `engine`, alternately SSE streams and WebSockets on topic `held`,
/// and waits until the engine counts all of them open.
fn hold_clients(engine: &Engine, n: usize) -> Vec<TcpStream> {
    let sse = format!("GET /sse?topic=held HTTP/1.1\r\nHost: {}\r\n\r\n", engine.addr);
    let ws = wsclient::upgrade_request(engine.addr, "/ws?topic=held", &[]);
    let clients: Vec<TcpStream> = (0..n)
        .map(|i| {
            let mut conn = TcpStream::connect(engine.addr).expect("connect a held client");
            let request = if i % 2 == 0 { sse.as_bytes() } else { &ws[..] };
            conn.write_all(request).expect("send a held client's request");
            conn
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    let (want_sse, want_ws) = (n.div_ceil(2) as u64, (n / 2) as u64);
    loop {
        let (sse, ws) = (engine.counter("open_sse"), engine.counter("open_ws"));
        if sse >= want_sse && ws >= want_ws {
            return clients;
        }
        assert!(
            Instant::now() < deadline,
            "{sse} of {want_sse} SSE streams and {ws} of {want_ws} WebSockets open after {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Checks that `n` clients connected now, half SSE streams and half WebSockets, are all
/// answered by `engine` (200 and 101) and each receives an event published afterwards.
fn assert_serves_new_clients(engine: &Engine, n: usize) {
    let mut streams: Vec<SseClient> = (0..n.div_ceil(2))
        .map(|_| SseClient::subscribe(engine.addr, &["after"]))
        .collect();
    let mut sockets: Vec<RawWs> = (0..n / 2)
        .map(|_| RawWs::connect(engine.addr, "/ws?topic=after", &[]))
        .collect();
    let id = Publisher::connect(&engine.ingest).publish("after", b"served");
    for (i, stream) in streams.iter_mut().enumerate() {
        let event = stream.expect_event();
        assert_eq!(
            (&event.id, event.data.as_str()),
            (&id, "served"),
            "SSE client {i}"
        );
    }
    for (i, socket) in sockets.iter_mut().enumerate() {
        let frame = socket
            .next_frame(WAIT)
            .unwrap_or_else(|end| panic!("WebSocket client {i} got no event ({end:?})"));
        let text = frame.text();
        assert!(
            text.contains(&format!("\"id\":\"{id}\"")) && text.contains("\"data\":\"served\""),
            "WebSocket client {i} got {text}"
        );
    }
}

/// Starts an engine on `addr`, `ingest` and the admin address `admin`, failing the test
/// with the engine's stderr if it does not become ready.
fn start_on(addr: SocketAddr, ingest: &Path, admin: SocketAddr, what: &str) -> Engine {
    let admin = admin.to_string();
    Engine::try_start_on(addr, ingest, &["--admin", &admin])
        .unwrap_or_else(|e| panic!("{what} did not start: {e}"))
}

/// `kill -9` with 1,000 clients connected, then a new engine on the same ingest path,
/// client address and admin address at once, as a supervisor restarting after 100 ms or
/// less does: it starts (the dead engine's socket, still answering while the kernel tears
/// its rings down, does not count as a running engine), its listeners are the only ones
/// on its ports when it reports ready, `/healthz` answers, and 200 new clients are all
/// served.
#[test]
fn an_engine_started_right_after_kill_9_starts_and_serves_every_new_client() {
    let dir = TempDir::new();
    let ingest = dir.path().join("ringcast.sock");
    let (addr, admin) = (free_addr(), free_addr());
    let mut dead = start_on(addr, &ingest, admin, "the first engine");
    let _held = hold_clients(&dead, 1000);
    dead.kill();
    let killed_at = Instant::now();
    let engine = start_on(addr, &ingest, admin, "the engine started after kill -9");
    assert_only_its_own_listeners(&engine);
    eprintln!(
        "ready {:?} after the kill; its stderr:\n{}",
        killed_at.elapsed(),
        engine.stderr()
    );
    let mut health = ringcast_tests::http::HttpConn::connect(engine.admin);
    health
        .send(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        .expect("request /healthz");
    let response = health.read_head(WAIT).expect("a /healthz answer");
    assert_eq!(response.status, 200, "{response:?}");
    assert_serves_new_clients(&engine, 200);
}

/// The client listeners race alone, without the ingest path: an engine started right
/// after `kill -9` on the same client address but another ingest path must not report
/// ready while the dead engine's listeners, still held by its rings' teardown, share the
/// port.
#[test]
fn an_engine_on_the_port_of_a_killed_one_reports_ready_only_once_its_listeners_are_gone() {
    let dir = TempDir::new();
    let (addr, admin) = (free_addr(), free_addr());
    let mut dead = start_on(addr, &dir.path().join("first.sock"), admin, "the first engine");
    let _held = hold_clients(&dead, 1000);
    dead.kill();
    let engine = start_on(addr, &dir.path().join("second.sock"), admin, "the second engine");
    assert_only_its_own_listeners(&engine);
    assert_serves_new_clients(&engine, 200);
}

/// Five crashes in a row, each restarted at once, each with clients connected: every
/// restart succeeds and serves.
#[test]
fn repeated_kill_9_and_immediate_restarts_all_succeed() {
    let dir = TempDir::new();
    let ingest = dir.path().join("ringcast.sock");
    let (addr, admin) = (free_addr(), free_addr());
    let mut engine = start_on(addr, &ingest, admin, "the first engine");
    for cycle in 0..5 {
        let held = hold_clients(&engine, 200);
        engine.kill();
        drop(held);
        engine = start_on(addr, &ingest, admin, &format!("restart {cycle}"));
        assert_only_its_own_listeners(&engine);
        assert_serves_new_clients(&engine, 20);
    }
}
