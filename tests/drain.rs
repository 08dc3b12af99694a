//! Graceful drain: on SIGTERM the engine closes its connections paced across
//! `--drain-ms` rather than all at once; every SSE stream gets a jittered `retry:` and a
//! proper end before it closes, WebSockets a close frame 1012; the engine then exits 0.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ringcast_tests::engine::Engine;

const CONNS: usize = 1000;
const WINDOW: Duration = Duration::from_millis(3000);

#[test]
fn a_thousand_streams_are_closed_spread_over_the_window() {
    let mut engine = Engine::start(&["--drain-ms", "3000", "--retry-ms", "1000"]);
    let mut streams: Vec<TcpStream> = (0..CONNS)
        .map(|_| {
            let mut s = TcpStream::connect(engine.addr).expect("connect");
            s.write_all(b"GET /sse?topic=drain HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    // Each stream has its response head and first retry before the signal.
    for s in &mut streams {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        s.set_nonblocking(true).unwrap();
    }
    let start = Instant::now();
    let stopper = std::thread::spawn(move || {
        let status = engine.stop();
        (status, engine.stderr())
    });
    let mut closed_at: Vec<Option<Duration>> = vec![None; CONNS];
    let mut data: Vec<Vec<u8>> = vec![Vec::new(); CONNS];
    let mut buf = [0u8; 4096];
    while closed_at.iter().any(Option::is_none) && start.elapsed() < WINDOW + Duration::from_secs(5) {
        for (i, s) in streams.iter_mut().enumerate() {
            if closed_at[i].is_some() {
                continue;
            }
            match s.read(&mut buf) {
                Ok(0) => closed_at[i] = Some(start.elapsed()),
                Ok(n) => data[i].extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => closed_at[i] = Some(start.elapsed()),
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (status, stderr) = stopper.join().unwrap();
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
    let times: Vec<Duration> = closed_at
        .iter()
        .map(|t| t.expect("every stream closed"))
        .collect();
    let last = *times.iter().max().unwrap();
    assert!(
        last <= WINDOW + Duration::from_millis(1500),
        "the last close came {last:?} after the signal"
    );
    let early = times.iter().filter(|t| **t < Duration::from_secs(1)).count();
    assert!(
        early < CONNS * 6 / 10,
        "{early} of {CONNS} closed within the first second: not paced"
    );
    let late = times.iter().filter(|t| **t >= Duration::from_secs(2)).count();
    assert!(late > CONNS / 10, "only {late} closed after 2 s of a 3 s window");
    let mut retries = std::collections::HashSet::new();
    for (i, d) in data.iter().enumerate() {
        let text = String::from_utf8_lossy(d);
        assert!(
            text.ends_with("0\r\n\r\n"),
            "stream {i} did not end its chunked body: {text:?}"
        );
        let retry = text
            .rsplit("retry: ")
            .next()
            .and_then(|r| r.split('\n').next())
            .unwrap_or("");
        let ms: u64 = retry
            .parse()
            .unwrap_or_else(|_| panic!("stream {i}: no final retry in {text:?}"));
        assert!(
            (1000..1000 + 3000).contains(&ms),
            "retry {ms} outside retry-ms + window"
        );
        retries.insert(ms);
    }
    assert!(
        retries.len() > CONNS / 2,
        "retries are not jittered: {} distinct values",
        retries.len()
    );
}
