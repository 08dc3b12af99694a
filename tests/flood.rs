//! Clients that make the engine answer and never read the answers. Every path where
//! client input makes the engine produce output is flooded by one client that does not
//! read: pings (pongs), text frames that are not ops (upstream refusals), subscribe ops
//! (acks), ops on bad topics (errors), a close followed by more frames (the close echo),
//! pipelined requests on keep-alive (404s, polls, preflights) and a resume far larger than
//! a client's queue. For each, the engine's resident memory is read before, at its peak
//! during the flood and after the client has gone, and the engine's own count of queued
//! bytes is held to the client's cap (`--out-queue-bytes-max`). Throughout, an honest
//! subscriber keeps receiving.
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ringcast_tests::engine::Engine;
use ringcast_tests::ingest::Publisher;
use ringcast_tests::sse::SseClient;
use ringcast_tests::wsclient::{masked, opcode, RawWs};
use ringcast_tests::WAIT;

/// The default per-client cap on unsent bytes.
const CAP: u64 = 4 << 20;
/// What a flood may add to the engine's resident memory at its peak: the flooder's cap
/// counts the bytes of its replies, and each small reply also costs its allocation and a
/// queue entry (about as much again), plus what one loop's receive path and allocator keep
/// hot. Without the bounds, the same floods took the engine from 5.5 MB to 168 MB (pings)
/// and 98 MB (text frames).
const PEAK_GROWTH_MAX_KB: u64 = 2 * (CAP >> 10) + 8 * 1024;
/// What may stay resident once the flooder has gone.
const AFTER_GROWTH_MAX_KB: u64 = 3 * 1024;

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Samples the engine's resident memory and queued bytes until dropped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<u64>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(rss_kb(pid));
                thread::sleep(Duration::from_millis(5));
            }
            peak.max(rss_kb(pid))
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    fn peak_kb(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().expect("running").join().expect("sampler")
    }
}

/// An engine, an honest subscriber and a publisher to check it with.
struct Fixture {
    engine: Engine,
    watcher: SseClient,
    publisher: Publisher,
    before_kb: u64,
}

impl Fixture {
    fn new(extra: &[&str]) -> Fixture {
        let engine = Engine::start(extra);
        let watcher = SseClient::subscribe(engine.addr, &["watch"]);
        let publisher = Publisher::connect(&engine.ingest);
        let mut fixture = Fixture {
            before_kb: 0,
            engine,
            watcher,
            publisher,
        };
        fixture.assert_serving("warm-up");
        fixture.before_kb = rss_kb(fixture.engine.pid);
        fixture
    }

    fn assert_serving(&mut self, after: &str) {
        let data = format!("still serving after {after}");
        let id = self.publisher.publish("watch", data.as_bytes());
        let event = self.watcher.expect_event();
        assert_eq!((event.id, event.data), (id, data), "{after}");
    }

    /// The flood's figures: checks the peak, waits for memory to come back, checks the
    /// engine still serves, and prints before / peak / after.
    fn check(&mut self, what: &str, peak_kb: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut after_kb = rss_kb(self.engine.pid);
        while after_kb > self.before_kb + AFTER_GROWTH_MAX_KB && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
            after_kb = rss_kb(self.engine.pid);
        }
        eprintln!(
            "{what}: engine RSS before {} kB, peak {peak_kb} kB (+{} kB), after {after_kb} kB (+{} kB)",
            self.before_kb,
            peak_kb.saturating_sub(self.before_kb),
            after_kb.saturating_sub(self.before_kb)
        );
        assert!(
            peak_kb <= self.before_kb + PEAK_GROWTH_MAX_KB,
            "{what}: peak {peak_kb} kB from {} kB",
            self.before_kb
        );
        assert!(
            after_kb <= self.before_kb + AFTER_GROWTH_MAX_KB,
            "{what}: {after_kb} kB still resident from {} kB",
            self.before_kb
        );
        // The gauge is refreshed each tick, and the flooder's connection closes once the
        // engine reads its end.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.engine.counter("queued_bytes") > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            self.engine.counter("queued_bytes"),
            0,
            "{what}: bytes left queued"
        );
        self.assert_serving(what);
    }
}

/// Writes `unit` `count` times in 64 KiB batches until done or the engine closes; returns
/// how many were written.
fn flood(mut write: impl FnMut(&[u8]) -> std::io::Result<()>, unit: &[u8], count: usize) -> usize {
    let per_batch = ((64 << 10) / unit.len()).max(1);
    let batch: Vec<u8> = unit.repeat(per_batch);
    let mut sent = 0;
    while sent < count {
        let n = per_batch.min(count - sent);
        if write(&batch[..n * unit.len()]).is_err() {
            break;
        }
        sent += n;
    }
    sent
}

/// Floods a WebSocket on `target` with `unit` frames, never reading; returns the
/// client, the number of frames written and the engine's peak resident memory.
fn flood_ws(fx: &Fixture, target: &str, unit: &[u8], count: usize) -> (RawWs, usize, u64) {
    let mut ws = RawWs::connect(fx.engine.addr, target, &[]);
    let sampler = Sampler::start(fx.engine.pid);
    let sent = flood(|b| ws.send_raw(b), unit, count);
    let peak = sampler.peak_kb();
    (ws, sent, peak)
}

/// Reads frames until the close frame and returns its code.
fn close_code(ws: &mut RawWs) -> Option<u16> {
    ws.expect_close(Duration::from_secs(30)).0.close_code()
}

#[test]
fn a_ping_flood_costs_a_bounded_number_of_pongs() {
    let mut fx = Fixture::new(&[]);
    // 1.5 million empty pings, never reading a pong.
    let (ws, sent, peak) = flood_ws(&fx, "/ws?topic=t", &masked(opcode::PING, b""), 1_500_000);
    assert_eq!(sent, 1_500_000, "the engine reads every ping");
    let queued = fx.engine.counter("queued_bytes");
    assert!(queued < 64 << 10, "{queued} bytes queued for one pinging client");
    drop(ws);
    fx.check("1,500,000 pings", peak);
}

#[test]
fn text_frames_refused_upstream_close_the_client_at_its_cap() {
    // Without the message rate limit, which would close it first (see below).
    let mut fx = Fixture::new(&["--ws-msg-rate", "0"]);
    // No backend listens: every message is answered with a ringcast.error.
    let (mut ws, _, peak) = flood_ws(&fx, "/ws?topic=t", &masked(opcode::TEXT, b""), 1_000_000);
    assert_eq!(
        close_code(&mut ws),
        Some(1008),
        "over its cap, the client is closed with 1008"
    );
    assert!(fx.engine.counter("slow_closed") >= 1);
    assert!(fx.engine.counter("upstream_refused") > 1000);
    drop(ws);
    fx.check("1,000,000 text frames, no backend", peak);
}

#[test]
fn text_frames_beyond_the_message_rate_close_the_client() {
    // The defaults: 100 messages a second, a burst of 200.
    let mut fx = Fixture::new(&[]);
    let (mut ws, _, peak) = flood_ws(&fx, "/ws?topic=t", &masked(opcode::TEXT, b""), 1_000_000);
    assert_eq!(
        close_code(&mut ws),
        Some(1008),
        "past the message rate, closed with 1008"
    );
    assert_eq!(fx.engine.counter("ws_rate_closed"), 1);
    assert!(fx.engine.counter("ws_rate_limited") > 200);
    drop(ws);
    fx.check("1,000,000 text frames past the message rate", peak);
}

#[test]
fn subscribe_acks_and_op_errors_are_bounded_by_the_cap() {
    let mut fx = Fixture::new(&["--ws-msg-rate", "0"]);
    let ops = [
        masked(opcode::TEXT, br#"{"op":"subscribe","topic":"a"}"#),
        masked(opcode::TEXT, br#"{"op":"unsubscribe","topic":"a"}"#),
        masked(opcode::TEXT, br#"{"op":"subscribe","topic":"bad topic"}"#),
        masked(opcode::TEXT, br#"{"op":"nope"}"#),
    ]
    .concat();
    let (mut ws, _, peak) = flood_ws(&fx, "/ws", &ops, 250_000);
    assert_eq!(close_code(&mut ws), Some(1008));
    drop(ws);
    fx.check("1,000,000 subscribe, unsubscribe and bad ops", peak);
}

#[test]
fn echoed_messages_are_bounded_by_the_cap() {
    let mut fx = Fixture::new(&["--ws-echo"]);
    let (mut ws, _, peak) = flood_ws(&fx, "/echo", &masked(opcode::BINARY, &[7u8; 1000]), 50_000);
    assert_eq!(close_code(&mut ws), Some(1008));
    drop(ws);
    fx.check("50,000 echoed 1,000-byte messages", peak);
}

#[test]
fn nothing_is_answered_after_the_close_echo() {
    let mut fx = Fixture::new(&[]);
    let close = masked(opcode::CLOSE, &1000u16.to_be_bytes());
    let mut ws = RawWs::connect(fx.engine.addr, "/ws?topic=t", &[]);
    ws.send_raw(&close).expect("send the close");
    let sampler = Sampler::start(fx.engine.pid);
    let pings = masked(opcode::PING, b"after close");
    let _ = flood(|b| ws.send_raw(b), &pings, 200_000);
    let peak = sampler.peak_kb();
    let (frame, before) = ws.expect_close(WAIT);
    assert_eq!(frame.close_code(), Some(1000), "the close is echoed");
    assert!(before.is_empty(), "nothing before the echo: {before:?}");
    assert!(ws.closes_within(WAIT), "and the connection closes");
    drop(ws);
    fx.check("a close, then 200,000 pings", peak);
}

/// Floods one keep-alive connection with a pipelined `request`, never reading.
fn flood_http(fx: &mut Fixture, what: &str, request: &[u8], count: usize) {
    let mut stream = TcpStream::connect(fx.engine.addr).expect("connect");
    let sampler = Sampler::start(fx.engine.pid);
    let sent = flood(|b| stream.write_all(b), request, count);
    let peak = sampler.peak_kb();
    // The engine closed the connection at the cap: reading ends (EOF or reset) while the
    // pipeline is far from answered.
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut answered = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match std::io::Read::read(&mut stream, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answered += buf[..n].windows(9).filter(|w| w == b"HTTP/1.1 ").count(),
        }
    }
    assert!(
        answered < count,
        "{what}: {answered} of {sent} pipelined requests answered: the connection was not closed"
    );
    assert!(fx.engine.counter("slow_closed") >= 1, "{what}");
    drop(stream);
    fx.check(what, peak);
}

#[test]
fn pipelined_errors_on_keep_alive_are_bounded_by_the_cap() {
    let mut fx = Fixture::new(&[]);
    flood_http(
        &mut fx,
        "300,000 pipelined 404s",
        b"GET /nope HTTP/1.1\r\nHost: flood\r\n\r\n",
        300_000,
    );
}

#[test]
fn pipelined_polls_are_bounded_by_the_cap() {
    let mut fx = Fixture::new(&[]);
    for i in 0..20 {
        fx.publisher.publish("p", format!("event {i}").as_bytes());
    }
    flood_http(
        &mut fx,
        "300,000 pipelined plain polls",
        b"GET /poll?topic=p&wait=0 HTTP/1.1\r\nHost: flood\r\n\r\n",
        300_000,
    );
}

#[test]
fn pipelined_preflights_are_bounded_by_the_cap() {
    let mut fx = Fixture::new(&[]);
    flood_http(
        &mut fx,
        "300,000 pipelined preflights",
        b"OPTIONS /sse HTTP/1.1\r\nHost: flood\r\nOrigin: https://a.example\r\n\r\n",
        300_000,
    );
}
