//! Connection limits: a loop whose file table is full stops accepting without spinning,
//! says so once, keeps serving the connections it holds, and accepts again once some close.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ringcast_tests::engine::Engine;
use ringcast_tests::ingest::Publisher;
use ringcast_tests::sse::SseClient;
use ringcast_tests::WAIT;

/// User plus system CPU time of `pid`, from /proc (clock ticks of 10 ms).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("engine stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<u64> = rest
        .split(' ')
        .skip(11)
        .take(2)
        .map(|f| f.parse().unwrap())
        .collect();
    Duration::from_millis((fields[0] + fields[1]) * 10)
}

/// True when a new subscriber is answered `200` within a short wait.
fn accepted(addr: std::net::SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let request = "GET /sse?topic=full HTTP/1.1\r\nHost: t\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    stream.read_exact(&mut buf).is_ok() && &buf == b"HTTP/1.1 200"
}

#[test]
fn a_full_loop_pauses_accepting_without_spinning_and_resumes() {
    let engine = Engine::start(&["--loops", "1", "--max-conns-per-loop", "8"]);
    let mut held: Vec<SseClient> = (0..8)
        .map(|_| SseClient::subscribe(engine.addr, &["full"]))
        .collect();

    // More clients arrive than the table holds.
    let extra: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(engine.addr).expect("backlog"))
        .collect();
    let before = cpu_time(engine.pid);
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_time(engine.pid) - before;
    // A loop re-arming accept on every error would burn the whole second.
    assert!(
        spent < Duration::from_millis(300),
        "engine used {spent:?} of CPU in 1 s while full"
    );
    let stderr = engine.stderr();
    assert_eq!(
        stderr.matches("cannot take more connections").count(),
        1,
        "said once:\n{stderr}"
    );

    // The held streams are still served.
    let id = Publisher::connect(&engine.ingest).publish("full", b"still here");
    for sub in &mut held {
        assert_eq!(sub.expect_event().id, id);
    }
    drop(extra);

    // Once streams close, new subscribers are accepted again.
    held.truncate(4);
    let deadline = Instant::now() + WAIT;
    while !accepted(engine.addr) {
        assert!(
            Instant::now() < deadline,
            "no new stream accepted {WAIT:?} after closes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut fresh = SseClient::subscribe(engine.addr, &["full"]);
    let id = Publisher::connect(&engine.ingest).publish("full", b"welcome back");
    assert_eq!(fresh.expect_event().id, id);
    assert!(engine.stderr().contains("accepting again"), "{}", engine.stderr());
    assert!(engine.counter("accept_full") >= 1, "{}", engine.stats());
}
