//! The engine's process life: SIGTERM with clients connected stops it with status 0 and
//! removes its socket file; a second engine on an ingest path in use is refused with the
//! path named, while a stale socket file with no listener is replaced; a port in use is
//! refused with the address named.
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use ringcast_tests::engine::{free_addr, Engine, TempDir};
use ringcast_tests::ingest::Publisher;
use ringcast_tests::sse::SseClient;
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
    assert!(
        first.ingest.exists(),
        "the refused engine removed the first one's socket"
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
