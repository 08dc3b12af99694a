//! The abuse soak: every known way for a client, an admin client or a publisher to make
//! the engine queue bytes, hold a listener or a slot, or misread a request, all at once
//! against one engine for `RINGCAST_SOAK_SECS` seconds (600 by default), while honest
//! subscribers (20 SSE, 20 WebSocket, on two topics) must receive every acknowledged
//! event of their topics exactly once, in order, with no `ringcast.gap` or
//! `ringcast.reset`. A paced publisher sends 200 events/s over the ingest socket and 10/s
//! over `POST /publish` meanwhile.
//!
//! Each abuser runs in a bounded loop (one cycle on a new connection, then a pause):
//! WebSocket floods of pings, of text frames no backend takes, of subscribe, unsubscribe
//! and bad ops, of echoed messages, and frames after a close; pipelined 404s, polls and
//! preflights on a keep-alive connection never read; slowloris heads; malformed and
//! smuggling requests (rows of `tests/http_strictness.rs` and `tests/bad_input.rs`);
//! resumes of a 20 MB range never read; admin clients that trickle, stay silent or
//! pipeline publishes; publishers that stay idle, announce lengths over `--payload-max`
//! or vanish mid-frame. Every cycle's answer is checked against the protocol's (1008 at
//! the cap, 408 at the deadline, each corpus row's status, `-ERR ...; closing`) and
//! counted; a cycle that gets anything else fails the soak.
//!
//! The engine's resident memory, queued bytes and open connections are sampled every
//! second and printed as a table at the end. The peak is held to what the caps allow
//! ([`queued_bound`], [`peak_growth_bound`]); once the abusers have gone, memory must be
//! back near its level before they came, and only the honest connections open.
//!
//! Run by name, not in CI: `cargo build --release -p ringcast`, then
//! `cargo test --release -p ringcast-tests --test soak_abuse -- --ignored --nocapture`.
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ringcast_tests::engine::Engine;
use ringcast_tests::http::{shorten, End, HttpConn, Response};
use ringcast_tests::ingest::{ok_id, pub_frame, Publisher};
use ringcast_tests::slow::{connect_with_rcvbuf, json_string, rss_kib, split_object, Item, Stream};
use ringcast_tests::wsclient::{handshake_on, masked, opcode, parse_frame, Frame, RawWs};
use ringcast_tests::{epoch_of, seq_of, WAIT};

/// The soak's length when `RINGCAST_SOAK_SECS` is not set.
const SOAK_SECS_DEFAULT: u64 = 600;

/// Default flags, plus `/echo` for the echo flood and a history deep enough (32 MiB
/// per topic) that a resume of its 1,000 events of 20 KB is five times the out-queue cap.
const ENGINE_ARGS: &[&str] = &["--ws-echo", "--history-bytes", "33554432"];
/// Events each topic's history keeps (`--history-events`, default).
const HISTORY_EVENTS: usize = 1000;

/// The engine's defaults the checks are computed from.
const OUT_QUEUE_BYTES_MAX: u64 = 4 << 20;
const QUEUE_BYTES: u64 = 256 << 10;
const PAYLOAD_MAX: u64 = 1 << 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const PUBLISHER_IDLE: Duration = Duration::from_secs(60);

/// Topics honest subscribers watch: the two published on all along, and the one that
/// vanishing publishers write their cut frames to, where nothing may be published.
const WATCHED: [&str; 3] = ["soak.a", "soak.b", "abuse.cut"];
const PUBLISHED: usize = 2;
const CUT_TOPIC: usize = 2;
/// The resumers' topic: 1,000 events of 20,000 bytes.
const BIG_TOPIC: &str = "abuse.big";
const BIG_PAYLOAD_BYTES: usize = 20_000;
/// The pipelined polls' topic: 20 events, so that each poll answers 19.
const POLL_TOPIC: &str = "abuse.poll";
/// The admin pipeliner's topic, filled to its history's count beforehand so that its
/// history does not grow during the soak.
const ADMIN_TOPIC: &str = "abuse.admin";

const SSE_SUBSCRIBERS: usize = 20;
const WS_SUBSCRIBERS: usize = 20;
/// Kept connections that time a 404 on the loops.
const PROBES: usize = 4;
/// Every client connection open once the abusers have gone: the honest subscribers,
/// the watcher of the cut topic and the probes.
const HONEST_CONNS: u64 = (SSE_SUBSCRIBERS + WS_SUBSCRIBERS + 1 + PROBES) as u64;

/// 200 events/s over the ingest socket, in pipelined batches of 10 every 50 ms.
const INGEST_BATCH: u64 = 10;
const INGEST_TICK: Duration = Duration::from_millis(50);
/// 10 events/s over `POST /publish`, on one kept connection.
const HTTP_TICK: Duration = Duration::from_millis(100);
/// Every payload ends with this, so a payload cut or spliced does not pass.
const PAD: &str = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz";
/// The tag of the last event published on each watched topic.
const END_TAG: u64 = u64::MAX;
const SOURCE_INGEST: u64 = 1 << 40;
const SOURCE_HTTP: u64 = 2 << 40;

/// The receive buffer of every abuser that does not read: small, so that what the
/// engine cannot send stays in its own queue, where the cap applies, not in the kernel.
const SMALL_RCVBUF: u32 = 16 << 10;

/// Long enough for honest publishing (105 events/s per topic) to replace each honest
/// topic's prefilled history with events that were delivered, whose encodings the
/// engine keeps: the baseline is then the steady state.
const WARM_UP: Duration = Duration::from_secs(15);
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
const ROW_EVERY: Duration = Duration::from_secs(10);
const SETTLE_MIN: Duration = Duration::from_secs(5);
const SETTLE_MAX: Duration = Duration::from_secs(60);
/// How long subscribers have, once publishing stops, to receive the end markers.
const DRAIN_MAX: Duration = Duration::from_secs(60);
/// How long a flooder goes on not reading once its flood is written.
const UNREAD_HOLD: Duration = Duration::from_secs(2);
/// How long a resumer holds its connection without reading.
const RESUME_HOLD: Duration = Duration::from_secs(5);

/// What one abuser connection may leave queued in the engine beyond its cap: the reply
/// that takes it over (the largest is a poll page of 19 events or a 1,000-byte echo).
const OVER_CAP_SLACK_BYTES: u64 = 64 << 10;
/// What a resumer that never reads may hold: a page is half its queue limits (128 KiB
/// of events); twice that covers the framing and the replies beside it.
const PAGE_BYTES_MAX: u64 = 2 * QUEUE_BYTES;
/// What an abuser that is answered a little at a time may hold: at most 16 pongs, a
/// close echo, a 408, one corpus answer, a refusal.
const LITTLE_BYTES_MAX: u64 = 64 << 10;
/// What an honest subscriber may have queued at a sample: a few events in flight.
const HONEST_QUEUED_BYTES_MAX: u64 = 16 << 10;
/// Resident memory a loop's receive path, the allocator's hot pages and the admin
/// listener's connection threads may add under load, beyond the queued bytes: 8 MiB for
/// each of the two loops (the bound `tests/flood.rs` puts on one flood).
const FIXED_GROWTH_BYTES: u64 = 16 << 20;
/// What may stay resident after the abusers have gone: the allocator keeps some freed
/// pages for reuse (a single flood leaves at most 3 MiB, `tests/flood.rs`).
const END_GROWTH_BYTES: u64 = 8 << 20;
/// The slowest `/stats` allowed while admin clients trickle and stay silent; a held
/// listener made it wait 6 to 10 s.
const STATS_LATENCY_MAX: Duration = Duration::from_secs(2);

/// How one abuser connection ends, at most, in the engine's queue.
#[derive(Clone, Copy)]
enum Holds {
    /// Answers a little at a time ([`LITTLE_BYTES_MAX`]).
    Little,
    /// Up to its cap, where it is closed.
    Cap,
    /// A page of a resume.
    Page,
}

impl Holds {
    fn bytes(self) -> u64 {
        match self {
            Holds::Little => LITTLE_BYTES_MAX,
            Holds::Cap => OUT_QUEUE_BYTES_MAX + OVER_CAP_SLACK_BYTES,
            Holds::Page => PAGE_BYTES_MAX,
        }
    }
}

/// How a cycle ended when it ended as the protocol says.
enum Done {
    /// The engine gave the protocol's answer.
    Expected,
    /// The soak ended first; the cycle is not counted.
    Stopped,
}

/// A cycle's result: `Err` describes an answer the protocol does not allow.
type Cycle = Result<Done, String>;

/// One kind of abuse: how many run at once, the pause between cycles and what one
/// connection may hold.
struct Abuse {
    kind: &'static str,
    instances: usize,
    pause: Duration,
    holds: Holds,
    cycle: fn(&Ctx) -> Cycle,
}

const fn abuse(
    kind: &'static str,
    instances: usize,
    pause_ms: u64,
    holds: Holds,
    cycle: fn(&Ctx) -> Cycle,
) -> Abuse {
    Abuse {
        kind,
        instances,
        pause: Duration::from_millis(pause_ms),
        holds,
        cycle,
    }
}

/// The idle publishers' abuse, whose cycle is a minute long.
const IDLE_KIND: &str = "ingest: idle publisher";

/// Every abuse, 43 abusers in all. Floods pause a second between cycles so that the two
/// cores shared with the engine still serve the honest subscribers.
static ABUSES: [Abuse; 18] = [
    abuse("ws: 100,000 pings, unread", 1, 1000, Holds::Little, ping_flood),
    abuse(
        "ws: 100,000 text frames, no backend",
        1,
        1000,
        Holds::Cap,
        text_flood,
    ),
    abuse(
        "ws: 100,000 subscribe/unsubscribe/bad ops",
        1,
        1000,
        Holds::Cap,
        op_flood,
    ),
    abuse(
        "ws: 8,000 echoed 1,000-byte messages",
        1,
        1000,
        Holds::Cap,
        echo_flood,
    ),
    abuse(
        "ws: a close, then 20,000 pings",
        1,
        1000,
        Holds::Little,
        close_then_frames,
    ),
    abuse(
        "http: 100,000 pipelined 404s, unread",
        1,
        1000,
        Holds::Cap,
        pipelined_404s,
    ),
    abuse(
        "http: 30,000 pipelined polls, unread",
        1,
        1000,
        Holds::Cap,
        pipelined_polls,
    ),
    abuse(
        "http: 100,000 pipelined preflights, unread",
        1,
        1000,
        Holds::Cap,
        pipelined_preflights,
    ),
    abuse(
        "http: slowloris head, a byte a second",
        4,
        200,
        Holds::Little,
        slowloris,
    ),
    abuse(
        "http: malformed and smuggling requests",
        1,
        50,
        Holds::Little,
        malformed,
    ),
    abuse("sse: resume of 20 MB, unread", 4, 500, Holds::Page, resume_sse),
    abuse("ws: resume of 20 MB, unread", 2, 500, Holds::Page, resume_ws),
    abuse(
        "admin: head trickled a byte every 1.9 s",
        2,
        200,
        Holds::Little,
        admin_trickle,
    ),
    abuse("admin: silent connection", 3, 200, Holds::Little, admin_silent),
    abuse(
        "admin: 10 pipelined publishes",
        1,
        200,
        Holds::Little,
        admin_pipelined,
    ),
    abuse(IDLE_KIND, 16, 100, Holds::Little, ingest_idle),
    abuse(
        "ingest: length over --payload-max, bad length",
        1,
        100,
        Holds::Little,
        ingest_refused,
    ),
    abuse(
        "ingest: publisher vanishing mid-frame",
        1,
        100,
        Holds::Little,
        ingest_vanish,
    ),
];

/// The most the engine may queue at once (its `queued_bytes`): each abuser connection's
/// bound, plus a little for each honest subscriber.
fn queued_bound() -> u64 {
    let abusers: u64 = ABUSES.iter().map(|a| a.instances as u64 * a.holds.bytes()).sum();
    abusers + HONEST_CONNS * HONEST_QUEUED_BYTES_MAX
}

/// The most the engine's resident memory may grow while abused: each queued byte costs
/// about as much again in its allocation and queue entry when replies are small
/// (`tests/flood.rs` measured it), plus [`FIXED_GROWTH_BYTES`].
fn peak_growth_bound() -> u64 {
    2 * queued_bound() + FIXED_GROWTH_BYTES
}

/// An acknowledged event of a watched topic.
#[derive(Clone, Copy)]
struct Acked {
    topic: usize,
    seq: u64,
    tag: u64,
}

/// What every thread of the soak shares.
struct Ctx {
    addr: SocketAddr,
    admin: SocketAddr,
    ingest: PathBuf,
    epoch: String,
    /// The first id of [`BIG_TOPIC`] and of [`POLL_TOPIC`]: resumes and polls start after it.
    big_first: String,
    poll_first: String,
    corpus: Vec<(u16, Vec<u8>)>,
    next_row: AtomicUsize,
    abusing: AtomicBool,
    publishing: AtomicBool,
    drain_by: Mutex<Option<Instant>>,
    honest_events: AtomicU64,
    /// The slowest probe answer since the sampler last looked, in microseconds.
    probe_max_us: AtomicU64,
    acked: Mutex<Vec<Acked>>,
}

impl Ctx {
    fn abusing(&self) -> bool {
        self.abusing.load(Ordering::Relaxed)
    }

    /// Sleeps `pause`, waking early when the abusers are told to stop; returns whether
    /// they may go on.
    fn pause(&self, pause: Duration) -> bool {
        let until = Instant::now() + pause;
        while self.abusing() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            thread::sleep(left.min(Duration::from_millis(50)));
        }
        false
    }

    /// Whether subscribers have run out of time to receive the end markers.
    fn past_drain(&self) -> bool {
        lock(&self.drain_by).is_some_and(|by| Instant::now() >= by)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ----- Abusers -----

/// The cycles an abuse ran, and those that got an answer the protocol does not allow.
#[derive(Default)]
struct Tally {
    cycles: AtomicU64,
    other: AtomicU64,
    notes: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, cycle: Cycle) {
        match cycle {
            Ok(Done::Stopped) => {}
            Ok(Done::Expected) => {
                self.cycles.fetch_add(1, Ordering::Relaxed);
            }
            Err(note) => {
                self.cycles.fetch_add(1, Ordering::Relaxed);
                self.other.fetch_add(1, Ordering::Relaxed);
                let mut notes = lock(&self.notes);
                if notes.len() < 3 {
                    notes.push(note);
                }
            }
        }
    }
}

/// Runs cycles of `abuse` until the abusers are told to stop. A panic inside a cycle
/// (a support function meeting something it cannot parse) counts as a wrong answer.
fn run_abuser(ctx: &Ctx, abuse: &Abuse, tally: &Tally) {
    while ctx.abusing() {
        let cycle = panic::catch_unwind(AssertUnwindSafe(|| (abuse.cycle)(ctx)))
            .unwrap_or_else(|payload| Err(format!("panicked: {}", panic_text(payload.as_ref()))));
        tally.record(cycle);
        ctx.pause(abuse.pause);
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    match (payload.downcast_ref::<String>(), payload.downcast_ref::<&str>()) {
        (Some(text), _) => text.clone(),
        (None, Some(text)) => (*text).to_owned(),
        (None, None) => "a panic without a message".to_owned(),
    }
}

/// Starts every abuser, lets them run for `soak`, stops them and waits for their last
/// cycles (each ends within about 40 s: its deadlines are at most that).
fn run_abusers(ctx: &Arc<Ctx>, soak: Duration) -> Vec<Arc<Tally>> {
    ctx.abusing.store(true, Ordering::Relaxed);
    let tallies: Vec<Arc<Tally>> = ABUSES.iter().map(|_| Arc::default()).collect();
    let mut handles = Vec::new();
    for (abuse, tally) in ABUSES.iter().zip(&tallies) {
        for i in 0..abuse.instances {
            let (ctx, tally) = (Arc::clone(ctx), Arc::clone(tally));
            // Staggered, so that the instances of one abuse do not move in step.
            let stagger = Duration::from_millis(97 * i as u64 % 1000);
            let handle = thread::Builder::new()
                .name(format!("abuser {i}: {}", abuse.kind))
                .spawn(move || {
                    if ctx.pause(stagger) {
                        run_abuser(&ctx, abuse, &tally);
                    }
                })
                .expect("spawn an abuser");
            handles.push(handle);
        }
    }
    thread::sleep(soak);
    ctx.abusing.store(false, Ordering::Relaxed);
    for handle in handles {
        handle.join().expect("an abuser thread");
    }
    tallies
}

/// Writes `unit` `count` times in batches of about 64 KiB until done or the engine
/// closes; returns how many were written.
fn flood(mut write: impl FnMut(&[u8]) -> io::Result<()>, unit: &[u8], count: usize) -> usize {
    let per_batch = ((64 << 10) / unit.len()).max(1);
    let batch = unit.repeat(per_batch);
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

/// A WebSocket client that floods and never reads until it checks the answer, which it
/// then scans without keeping.
struct FloodWs {
    conn: HttpConn,
    pending: Vec<u8>,
}

impl FloodWs {
    fn connect(ctx: &Ctx, target: &str) -> Result<FloodWs, String> {
        let conn = HttpConn::from_stream(connect_with_rcvbuf(ctx.addr, Some(SMALL_RCVBUF)));
        let (response, mut conn) = handshake_on(conn, ctx.addr, target, &[]);
        if response.status != 101 {
            return Err(format!("{target}: {} to the upgrade", response.status));
        }
        let pending = conn.take_buffered();
        Ok(FloodWs { conn, pending })
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.conn.send(bytes)
    }

    /// Reads frames until `pick` returns a value, within `timeout`. Consumed bytes are
    /// dropped once per read, so scanning megabytes of small frames stays linear.
    fn scan<R>(&mut self, timeout: Duration, mut pick: impl FnMut(&Frame) -> Option<R>) -> Result<R, String> {
        let deadline = Instant::now() + timeout;
        let mut frames = 0u64;
        loop {
            let mut at = 0;
            while let Some((frame, used)) = parse_frame(&self.pending[at..])? {
                at += used;
                frames += 1;
                if let Some(picked) = pick(&frame) {
                    self.pending.drain(..at);
                    return Ok(picked);
                }
            }
            self.pending.drain(..at);
            if let Err(end) = self.conn.fill(deadline) {
                return Err(format!("{end:?} after {frames} frames"));
            }
            self.pending.extend_from_slice(&self.conn.take_buffered());
        }
    }

    /// Whether the engine closes the connection within `timeout` with nothing more sent.
    fn closes_quietly(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while self.pending.is_empty() {
            match self.conn.fill(deadline) {
                Ok(()) => self.pending.extend_from_slice(&self.conn.take_buffered()),
                Err(End::Closed) => return Ok(()),
                Err(End::TimedOut) => return Err(format!("left open {timeout:?} after the close")),
            }
        }
        Err(format!("{} bytes after the close", self.pending.len()))
    }
}

/// Floods `target` with `count` copies of `unit`, then reads to the close frame, which
/// must be 1008: the client went over its cap.
fn flood_to_1008(ctx: &Ctx, target: &str, unit: &[u8], count: usize) -> Cycle {
    let mut ws = FloodWs::connect(ctx, target)?;
    let sent = flood(|b| ws.send(b), unit, count);
    // Still not reading: what the kernel buffered of the flood reaches the engine, which
    // must not send it back as fast as the client would read it.
    thread::sleep(UNREAD_HOLD);
    let close = ws.scan(Duration::from_secs(30), |f| {
        (f.opcode == opcode::CLOSE).then(|| f.close_code())
    });
    match close {
        Ok(Some(1008)) => Ok(Done::Expected),
        Ok(code) => Err(format!(
            "{target}: closed with {code:?} after {sent} frames, not 1008"
        )),
        Err(e) => Err(format!("{target}: no close frame after {sent} frames: {e}")),
    }
}

fn ping_flood(ctx: &Ctx) -> Cycle {
    const PINGS: usize = 100_000;
    let mut ws = FloodWs::connect(ctx, "/ws?topic=abuse.ping")?;
    let sent = flood(|b| ws.send(b), &masked(opcode::PING, b""), PINGS);
    if sent < PINGS {
        return Err(format!("closed after {sent} of {PINGS} pings"));
    }
    ws.send(&masked(opcode::PING, b"last"))
        .map_err(|e| format!("the last ping: {e}"))?;
    // Only the latest unanswered ping is owed a pong (RFC 6455 §5.5.3): the last one's
    // arrives, after whatever pongs were already sent.
    let pong = ws.scan(Duration::from_secs(30), |f| match f.opcode {
        opcode::PONG if f.payload == b"last" => Some(Ok(())),
        opcode::PONG => None,
        other => Some(Err(format!("a frame of opcode {other:#x} among the pongs"))),
    });
    pong.and_then(|r| r).map(|()| Done::Expected)
}

fn text_flood(ctx: &Ctx) -> Cycle {
    flood_to_1008(ctx, "/ws?topic=abuse.text", &masked(opcode::TEXT, b""), 100_000)
}

fn op_flood(ctx: &Ctx) -> Cycle {
    let ops = [
        masked(opcode::TEXT, br#"{"op":"subscribe","topic":"abuse.op"}"#),
        masked(opcode::TEXT, br#"{"op":"unsubscribe","topic":"abuse.op"}"#),
        masked(opcode::TEXT, br#"{"op":"subscribe","topic":"bad topic"}"#),
        masked(opcode::TEXT, br#"{"op":"nope"}"#),
    ]
    .concat();
    flood_to_1008(ctx, "/ws", &ops, 25_000)
}

fn echo_flood(ctx: &Ctx) -> Cycle {
    flood_to_1008(ctx, "/echo", &masked(opcode::BINARY, &[7u8; 1000]), 8_000)
}

fn close_then_frames(ctx: &Ctx) -> Cycle {
    let mut ws = FloodWs::connect(ctx, "/ws?topic=abuse.close")?;
    ws.send(&masked(opcode::CLOSE, &1000u16.to_be_bytes()))
        .map_err(|e| format!("send the close: {e}"))?;
    let _ = flood(|b| ws.send(b), &masked(opcode::PING, b"after close"), 20_000);
    let first = ws.scan(WAIT, |f| Some((f.opcode, f.close_code())))?;
    if first != (opcode::CLOSE, Some(1000)) {
        return Err(format!(
            "the first frame after a close is {first:?}, not its echo"
        ));
    }
    ws.closes_quietly(WAIT).map(|()| Done::Expected)
}

/// Floods one keep-alive connection with `count` pipelined `request`s and never reads
/// until done; then the engine must have closed it before answering them all, each
/// answer with `status` (`b"HTTP/1.1 404 "`).
fn pipelined(ctx: &Ctx, request: &[u8], count: usize, status: &[u8]) -> Cycle {
    let mut stream = connect_with_rcvbuf(ctx.addr, Some(SMALL_RCVBUF));
    stream.set_write_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
    let sent = flood(|b| stream.write_all(b), request, count);
    let (answers, matching) = count_answers(&mut stream, status)?;
    if answers >= sent {
        return Err(format!(
            "{answers} answers to {sent} requests: not closed at its cap"
        ));
    }
    if matching != answers {
        let status = String::from_utf8_lossy(status);
        return Err(format!(
            "{} of {answers} answers were not {status:?}",
            answers - matching
        ));
    }
    Ok(Done::Expected)
}

/// Reads `stream` to its end, counting response heads and those that start with
/// `status`.
///
/// # Errors
///
/// If it is still open after 30 s.
fn count_answers(stream: &mut TcpStream, status: &[u8]) -> Result<(usize, usize), String> {
    const MARK: &[u8] = b"HTTP/1.1 ";
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut answers, mut matching) = (0, 0);
    let mut carry = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "still open 30 s after the flood ({answers} answers read)"
            ));
        }
        stream.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Ok((answers, matching)),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A reset ends the connection as surely as a FIN.
            Err(_) => return Ok((answers, matching)),
        };
        carry.extend_from_slice(&chunk[..n]);
        let whole = status.len().max(MARK.len());
        let mut at = 0;
        while at + whole <= carry.len() {
            if carry[at..].starts_with(MARK) {
                answers += 1;
                matching += usize::from(carry[at..].starts_with(status));
                at += MARK.len();
            } else {
                at += 1;
            }
        }
        carry.drain(..at);
    }
}

fn pipelined_404s(ctx: &Ctx) -> Cycle {
    let request = b"GET /nope HTTP/1.1\r\nHost: soak\r\n\r\n";
    pipelined(ctx, request, 100_000, b"HTTP/1.1 404 ")
}

fn pipelined_polls(ctx: &Ctx) -> Cycle {
    let request = format!(
        "GET /poll?topic={POLL_TOPIC}&after={}&wait=0 HTTP/1.1\r\nHost: soak\r\n\r\n",
        ctx.poll_first
    );
    pipelined(ctx, request.as_bytes(), 30_000, b"HTTP/1.1 200 ")
}

fn pipelined_preflights(ctx: &Ctx) -> Cycle {
    let request = b"OPTIONS /sse HTTP/1.1\r\nHost: soak\r\nOrigin: https://a.example\r\n\
                    Access-Control-Request-Method: GET\r\n\r\n";
    pipelined(ctx, request, 100_000, b"HTTP/1.1 204 ")
}

/// Sends `head` to `addr` a byte every `pace`; the engine must answer 408 and close once
/// [`REQUEST_TIMEOUT`] has passed since the first byte.
fn trickle(ctx: &Ctx, addr: SocketAddr, head: &[u8], pace: Duration) -> Cycle {
    // From before the connect: the deadline runs from the engine's accept, and this
    // thread may be descheduled between the two.
    let start = Instant::now();
    let mut conn = HttpConn::connect(addr);
    for byte in head {
        if !ctx.abusing() {
            return Ok(Done::Stopped);
        }
        // After the 408 the engine closes; the answer is what is judged.
        let _ = conn.send(std::slice::from_ref(byte));
        match conn.read_head(pace) {
            Ok(response) => return judge_408(&response, start.elapsed(), &mut conn),
            Err(End::TimedOut) => {}
            Err(End::Closed) => return Err(format!("closed without a 408 after {:?}", start.elapsed())),
        }
    }
    Err(format!(
        "the whole head trickled in over {:?} without a 408",
        start.elapsed()
    ))
}

/// A 408 with `Connection: close`, at the deadline, and the connection then closed.
fn judge_408(response: &Response, elapsed: Duration, conn: &mut HttpConn) -> Cycle {
    if response.status != 408 || !response.closes() {
        return Err(format!("answered {response:?} after {elapsed:?}, not 408"));
    }
    // A little early for the timer wheel's granularity, late for a loaded machine.
    let early = REQUEST_TIMEOUT - Duration::from_millis(250);
    let late = REQUEST_TIMEOUT + Duration::from_secs(5);
    if elapsed < early || elapsed > late {
        return Err(format!(
            "408 after {elapsed:?}; the deadline is {REQUEST_TIMEOUT:?}"
        ));
    }
    if !conn.closes_within(WAIT) {
        return Err("left open after its 408".to_owned());
    }
    Ok(Done::Expected)
}

fn slowloris(ctx: &Ctx) -> Cycle {
    let head = b"GET /sse?topic=abuse.slow HTTP/1.1\r\nHost: soak\r\nX-Slow: 0123456789\r\n\r\n";
    trickle(ctx, ctx.addr, head, Duration::from_secs(1))
}

fn admin_trickle(ctx: &Ctx) -> Cycle {
    // Each gap is under the 2 s per-read timeout that once let one client hold the
    // listener for hours.
    let head = b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n";
    trickle(ctx, ctx.admin, head, Duration::from_millis(1900))
}

fn admin_silent(ctx: &Ctx) -> Cycle {
    let start = Instant::now();
    let mut conn = HttpConn::connect(ctx.admin);
    loop {
        if !ctx.abusing() {
            return Ok(Done::Stopped);
        }
        match conn.read_head(Duration::from_secs(1)) {
            Ok(response) => return judge_408(&response, start.elapsed(), &mut conn),
            Err(End::TimedOut) if start.elapsed() < REQUEST_TIMEOUT + Duration::from_secs(5) => {}
            Err(end) => return Err(format!("{end:?} after {:?} without a 408", start.elapsed())),
        }
    }
}

/// `POST /publish?topic=T` with `body`.
fn publish_request(topic: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /publish?topic={topic} HTTP/1.1\r\nHost: admin\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The id of a `{"id":"..."}` answer.
fn id_of(body: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(body);
    text.strip_prefix("{\"id\":\"")
        .and_then(|rest| rest.strip_suffix("\"}"))
        .map(str::to_owned)
        .ok_or_else(|| format!("not an id answer: {text}"))
}

fn admin_pipelined(ctx: &Ctx) -> Cycle {
    const N: usize = 10;
    let mut conn = HttpConn::connect(ctx.admin);
    let pipeline: Vec<u8> = (0..N)
        .flat_map(|i| publish_request(ADMIN_TOPIC, &format!("pipelined {i}")))
        .collect();
    conn.send(&pipeline).map_err(|e| format!("send: {e}"))?;
    let mut last = 0;
    for i in 0..N {
        let (response, body) = conn
            .read_response(WAIT)
            .map_err(|end| format!("answer {i} of {N}: {end:?}"))?;
        if response.status != 200 || response.closes() {
            return Err(format!(
                "answer {i}: {response:?} {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let seq = seq_of(&id_of(&body)?);
        if seq <= last {
            return Err(format!("answer {i} has seq {seq} after {last}"));
        }
        last = seq;
    }
    Ok(Done::Expected)
}

fn ingest_idle(ctx: &Ctx) -> Cycle {
    const NOTICE: &str = "-ERR no command for 60000 ms (see --publisher-idle-ms); closing";
    let start = Instant::now();
    let mut p = Publisher::connect(&ctx.ingest);
    loop {
        if !ctx.abusing() {
            return Ok(Done::Stopped);
        }
        match p.read_reply_line(Duration::from_secs(1)) {
            Ok(line) if line == NOTICE => break,
            Ok(line) => return Err(format!("an idle publisher got {line:?}")),
            Err(End::TimedOut) if start.elapsed() < PUBLISHER_IDLE + Duration::from_secs(15) => {}
            Err(end) => {
                return Err(format!(
                    "{end:?} after {:?} without the idle notice",
                    start.elapsed()
                ))
            }
        }
    }
    let elapsed = start.elapsed();
    if elapsed < PUBLISHER_IDLE - Duration::from_millis(250) {
        return Err(format!("idle-closed after {elapsed:?}"));
    }
    if !p.closes_within(WAIT) {
        return Err("left open after the idle notice".to_owned());
    }
    Ok(Done::Expected)
}

/// Lines the engine must refuse at once and close on: lengths over `--payload-max`
/// (`true`: the refusal names the limit) and lengths that are not lengths. What follows
/// a refused line must never be read as a command.
const REFUSED_LINES: [(&[u8], bool); 5] = [
    (b"PUB abuse.big 2147483648\nPING\n", true),
    (b"PUB abuse.big 1048577\n", true),
    (b"SEND 0.1.1 4194304\n", true),
    (b"PUB abuse.big x\n", false),
    (b"PUB abuse.big -1\nPING\n", false),
];

fn ingest_refused(ctx: &Ctx) -> Cycle {
    let (line, over_limit) =
        REFUSED_LINES[ctx.next_row.fetch_add(1, Ordering::Relaxed) % REFUSED_LINES.len()];
    let mut p = Publisher::connect(&ctx.ingest);
    p.try_send(line).map_err(|e| format!("send: {e}"))?;
    let reply = p
        .read_reply_line(WAIT)
        .map_err(|end| format!("{}: {end:?} without a refusal", shorten(line)))?;
    let limit = format!("exceeds the limit of {PAYLOAD_MAX} bytes; closing");
    let refused = if over_limit {
        reply.starts_with("-ERR payload of ") && reply.ends_with(&limit)
    } else {
        reply.starts_with("-ERR ") && reply.ends_with("closing")
    };
    if !refused {
        return Err(format!("{}: {reply:?}", shorten(line)));
    }
    // Nothing more: the PING behind the line is not answered.
    if !p.closes_within(WAIT) {
        return Err(format!("{}: left open after {reply:?}", shorten(line)));
    }
    Ok(Done::Expected)
}

/// Frames cut short; none of them may be published ([`CUT_TOPIC`] is watched).
const CUTS: [&[u8]; 4] = [
    b"PUB abuse.cut 100\nhalf of the payload",
    b"PUB abuse.cut 5\nhello",
    b"PUB abuse.cut 5\nhello\r",
    b"PUB abuse.cut 1",
];

fn ingest_vanish(ctx: &Ctx) -> Cycle {
    let cut = CUTS[ctx.next_row.fetch_add(1, Ordering::Relaxed) % CUTS.len()];
    let mut p = Publisher::connect(&ctx.ingest);
    p.try_send(cut).map_err(|e| format!("send: {e}"))?;
    // The engine reads the partial frame before the close arrives.
    thread::sleep(Duration::from_millis(20));
    drop(p);
    Ok(Done::Expected)
}

fn resume_sse(ctx: &Ctx) -> Cycle {
    let mut conn = HttpConn::from_stream(connect_with_rcvbuf(ctx.addr, Some(SMALL_RCVBUF)));
    let request = format!(
        "GET /sse?topic={BIG_TOPIC} HTTP/1.1\r\nHost: soak\r\nLast-Event-ID: {}\r\n\r\n",
        ctx.big_first
    );
    conn.send(request.as_bytes()).map_err(|e| format!("send: {e}"))?;
    let response = conn
        .read_head(WAIT)
        .map_err(|end| format!("{end:?} before a head"))?;
    if response.status != 200 {
        return Err(format!("resume answered {response:?}"));
    }
    // Never read again: the engine holds a page of the range for it, not the range.
    ctx.pause(RESUME_HOLD);
    Ok(Done::Expected)
}

fn resume_ws(ctx: &Ctx) -> Cycle {
    let target = format!("/ws?topic={BIG_TOPIC}&last_event_id={}", ctx.big_first);
    let _ws = FloodWs::connect(ctx, &target)?;
    ctx.pause(RESUME_HOLD);
    Ok(Done::Expected)
}

/// Malformed and ambiguous requests with the status each must get, from
/// `tests/http_strictness.rs` (RFC 9112 and the peers' suites) and `tests/bad_input.rs`.
fn corpus() -> Vec<(u16, Vec<u8>)> {
    let rows: [(u16, &[u8]); 22] = [
        (400, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS hello\r\n\r\n"),
        (400, b"HELLO\r\n\r\n"),
        (400, b"GET  /sse?topic=abuse.req HTTP/1.1\r\nHost: h\r\n\r\n"),
        (400, b"GET /sse?topic=abuse.req HTTP/1.1\r\n\r\n"),
        (400, b"GET /sse?topic=abuse.req HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        (400, b"GET /sse?topic=abuse.req#frag HTTP/1.1\r\nHost: h\r\n\r\n"),
        (400, b"GET /sse?topic=abuse.req HTTP/1.1\rHost: h\r\n\r\n"),
        (400, b"GET /sse?topic=abuse.req HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n"),
        (400, b"GET /sse?topic=abuse.req HTTP/1.1\r\nHost: foo\x00bar\r\n\r\n"),
        // CL.TE with a request smuggled behind it, which must never be answered.
        (400, b"POST /sse?topic=abuse.req HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /nope HTTP/1.1\r\nHost: h\r\n\r\n"),
        (400, b"POST /sse?topic=abuse.req HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
        (400, b"POST /sse?topic=abuse.req HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
        (400, b"POST /sse?topic=abuse.req HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        (400, b"POST /sse?topic=abuse.req HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        (400, b"POST /sse?topic=abuse.req HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n"),
        (501, b"POST /sse?topic=abuse.req HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        (411, b"POST /sse?topic=abuse.req HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        (400, b"POST /sse?topic=abuse.req HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\nhello!"),
        (400, b"POST /sse?topic=abuse.req HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
        (400, b"POST /sse?topic=abuse.req HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello"),
        (505, b"GET /sse?topic=abuse.req HTTP/2.0\r\nHost: h\r\n\r\n"),
        (505, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ];
    let mut corpus: Vec<(u16, Vec<u8>)> = rows.iter().map(|(s, r)| (*s, r.to_vec())).collect();
    let big_field = format!("X-Big: {}\r\n", "a".repeat(20 * 1024));
    let many_fields: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long_target = format!("/sse?topic=abuse.req&pad={}", "b".repeat(9000));
    for (status, request) in [
        (
            431,
            format!("GET /sse?topic=abuse.req HTTP/1.1\r\nHost: h\r\n{big_field}\r\n"),
        ),
        (
            431,
            format!("GET /sse?topic=abuse.req HTTP/1.1\r\nHost: h\r\n{many_fields}\r\n"),
        ),
        (414, format!("GET {long_target} HTTP/1.1\r\nHost: h\r\n\r\n")),
    ] {
        corpus.push((status, request.into_bytes()));
    }
    corpus
}

/// One corpus row on a new connection: its status with `Connection: close`, then the
/// close with nothing after the answer.
fn malformed(ctx: &Ctx) -> Cycle {
    let (status, request) = &ctx.corpus[ctx.next_row.fetch_add(1, Ordering::Relaxed) % ctx.corpus.len()];
    let what = shorten(request);
    let mut conn = HttpConn::connect(ctx.addr);
    // The engine may answer and close before reading it all; the answer is judged.
    let _ = conn.send(request);
    let (response, _) = conn
        .read_response(WAIT)
        .map_err(|end| format!("{what}: {end:?} without an answer"))?;
    if response.status != *status || !response.closes() {
        return Err(format!("{what}: {response:?}, expected {status} and a close"));
    }
    if !conn.buffered().is_empty() {
        return Err(format!(
            "{what}: {} bytes after the answer",
            conn.buffered().len()
        ));
    }
    match conn.fill(Instant::now() + WAIT) {
        Err(End::Closed) => Ok(Done::Expected),
        Ok(()) => Err(format!(
            "{what}: bytes after the answer: {}",
            shorten(conn.buffered())
        )),
        Err(End::TimedOut) => Err(format!("{what}: left open after {status}")),
    }
}

// ----- Honest clients -----

/// The payload of an event of `topic` with `tag`: `<topic> <tag> <PAD>`.
fn payload(topic: &str, tag: u64) -> String {
    match tag {
        END_TAG => format!("{topic} end {PAD}"),
        tag => format!("{topic} {tag} {PAD}"),
    }
}

/// The topic and tag of a [`payload`].
fn parse_payload(data: &str) -> Result<(&str, u64), String> {
    let mut parts = data.splitn(3, ' ');
    let (topic, tag, pad) = (parts.next(), parts.next(), parts.next());
    let tag = match tag {
        Some("end") => Some(END_TAG),
        Some(tag) => tag.parse().ok(),
        None => None,
    };
    match (topic, tag, pad) {
        (Some(topic), Some(tag), Some(PAD)) => Ok((topic, tag)),
        _ => Err(format!("a payload out of shape: {data:?}")),
    }
}

/// What an honest subscriber received, in order, and why it stopped early if it did.
struct Received {
    name: String,
    topics: Vec<usize>,
    got: Vec<(u64, u64)>,
    failure: Option<String>,
}

/// Checks each event as it arrives: this run's epoch, sequence numbers increasing, a
/// topic subscribed to, a payload whole.
struct Tracker<'c> {
    ctx: &'c Ctx,
    topics: Vec<usize>,
    got: Vec<(u64, u64)>,
    ended: Vec<bool>,
}

impl<'c> Tracker<'c> {
    fn new(ctx: &'c Ctx, topics: &[usize]) -> Tracker<'c> {
        Tracker {
            ctx,
            topics: topics.to_vec(),
            got: Vec::new(),
            ended: vec![false; topics.len()],
        }
    }

    fn event(&mut self, id: &str, data: &str, topic: Option<&str>) -> Result<(), String> {
        let well_formed = id
            .rsplit_once('-')
            .is_some_and(|(_, seq)| !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()));
        if !well_formed || epoch_of(id) != self.ctx.epoch {
            return Err(format!("event id {id:?} is not of this run ({})", self.ctx.epoch));
        }
        let seq = seq_of(id);
        if let Some(&(last, _)) = self.got.last() {
            if seq <= last {
                return Err(format!("event {id} after seq {last}: repeated or out of order"));
            }
        }
        let (name, tag) = parse_payload(data)?;
        if topic.is_some_and(|t| t != name) {
            return Err(format!("event {id} on {topic:?} carries a payload of {name}"));
        }
        let at = self
            .topics
            .iter()
            .position(|&t| WATCHED[t] == name)
            .ok_or_else(|| format!("event {id} of {name}, not subscribed"))?;
        self.ended[at] |= tag == END_TAG;
        self.got.push((seq, tag));
        self.ctx.honest_events.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn done(&self) -> bool {
        self.ended.iter().all(|&e| e)
    }

    fn finish(self, name: String, failure: Option<String>) -> Received {
        Received {
            name,
            topics: self.topics,
            got: self.got,
            failure,
        }
    }
}

fn honest_sse(ctx: &Ctx, topics: &[usize], connected: &AtomicUsize) -> Received {
    let names: Vec<&str> = topics.iter().map(|&t| WATCHED[t]).collect();
    let mut stream = Stream::sse(connect_with_rcvbuf(ctx.addr, None), ctx.addr, &names);
    connected.fetch_add(1, Ordering::Relaxed);
    let mut tracker = Tracker::new(ctx, topics);
    let mut items = Vec::new();
    let failure = loop {
        if tracker.done() {
            break None;
        }
        if ctx.past_drain() {
            break Some("no end marker within the drain time".to_owned());
        }
        items.clear();
        if let Err(End::Closed) = stream.read_items(Instant::now() + Duration::from_secs(1), &mut items) {
            break Some("the stream ended".to_owned());
        }
        let wrong = items.iter().find_map(|item| match item {
            Item::Event { id, data } => tracker.event(id, data, None).err(),
            Item::Notice { name, data } => Some(format!("{name} {data}")),
            Item::Close(code) => Some(format!("closed with {code:?}")),
        });
        if wrong.is_some() {
            break wrong;
        }
    };
    tracker.finish(format!("sse {names:?}"), failure)
}

fn honest_ws(ctx: &Ctx, topics: &[usize], connected: &AtomicUsize) -> Received {
    let names: Vec<&str> = topics.iter().map(|&t| WATCHED[t]).collect();
    let query: Vec<String> = names.iter().map(|t| format!("topic={t}")).collect();
    let mut ws = RawWs::connect(ctx.addr, &format!("/ws?{}", query.join("&")), &[]);
    connected.fetch_add(1, Ordering::Relaxed);
    let mut tracker = Tracker::new(ctx, topics);
    let failure = loop {
        if tracker.done() {
            break None;
        }
        if ctx.past_drain() {
            break Some("no end marker within the drain time".to_owned());
        }
        let wrong = match ws.next_frame(Duration::from_secs(1)) {
            Ok(frame) if frame.opcode == opcode::TEXT => ws_event(&mut tracker, &frame.text()).err(),
            // The engine pings a client silent for --ws-ping-ms; an honest one answers.
            Ok(frame) if frame.opcode == opcode::PING => ws
                .send_raw(&masked(opcode::PONG, &frame.payload))
                .err()
                .map(|e| format!("send a pong: {e}")),
            Ok(frame) => Some(format!(
                "a frame of opcode {:#x}: {:?}",
                frame.opcode,
                frame.close_code()
            )),
            Err(End::TimedOut) => None,
            Err(End::Closed) => Some("the connection closed".to_owned()),
        };
        if wrong.is_some() {
            break wrong;
        }
    };
    tracker.finish(format!("ws {names:?}"), failure)
}

/// One `{"id":..,"topic":..,"event":null,"data":..}` frame; a notice is a failure.
fn ws_event(tracker: &mut Tracker<'_>, text: &str) -> Result<(), String> {
    let fields = split_object(text).map_err(|e| format!("frame {text:?}: {e}"))?;
    let string = |name: &str| {
        fields
            .get(name)
            .and_then(|v| json_string(v))
            .ok_or_else(|| format!("no string {name} in {text:?}"))
    };
    if fields.get("event").map(String::as_str) != Some("null") {
        return Err(format!("a notice: {text}"));
    }
    tracker.event(&string("id")?, &string("data")?, Some(&string("topic")?))
}

/// The topics of honest subscriber `i`: one, the other, or both.
fn topics_of(i: usize) -> Vec<usize> {
    match i % 3 {
        0 => vec![0],
        1 => vec![1],
        _ => vec![0, 1],
    }
}

/// Starts the honest subscribers and the cut topic's watcher, and waits until all are
/// connected.
fn start_subscribers(ctx: &Arc<Ctx>) -> Vec<JoinHandle<Received>> {
    let connected = Arc::new(AtomicUsize::new(0));
    let mut plans: Vec<(bool, Vec<usize>)> = (0..SSE_SUBSCRIBERS).map(|i| (false, topics_of(i))).collect();
    plans.extend((0..WS_SUBSCRIBERS).map(|i| (true, topics_of(i))));
    plans.push((false, vec![CUT_TOPIC]));
    let handles: Vec<JoinHandle<Received>> = plans
        .into_iter()
        .map(|(ws, topics)| {
            let (ctx, connected) = (Arc::clone(ctx), Arc::clone(&connected));
            thread::spawn(move || {
                if ws {
                    honest_ws(&ctx, &topics, &connected)
                } else {
                    honest_sse(&ctx, &topics, &connected)
                }
            })
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    while connected.load(Ordering::Relaxed) < handles.len() {
        assert!(
            Instant::now() < deadline,
            "honest subscribers not connected within {WAIT:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    handles
}

/// Times a `GET /nope` every 50 ms on each of [`PROBES`] kept connections (the kernel
/// spreads them over the loops) until publishing stops: the slowest answer of a row
/// shows whether a loop stalled for its honest clients.
fn probe_loops(ctx: &Ctx) -> u64 {
    let mut conns: Vec<HttpConn> = (0..PROBES).map(|_| HttpConn::connect(ctx.addr)).collect();
    let mut probes = 0;
    while ctx.publishing.load(Ordering::Relaxed) {
        for conn in &mut conns {
            let start = Instant::now();
            conn.send(b"GET /nope HTTP/1.1\r\nHost: probe\r\n\r\n")
                .expect("send a probe");
            let (response, _) = conn
                .read_response(WAIT)
                .unwrap_or_else(|end| panic!("no answer to probe {probes}: {end:?}"));
            assert_eq!(response.status, 404, "probe {probes}: {response:?}");
            let rtt = start.elapsed();
            ctx.probe_max_us
                .fetch_max(rtt.as_micros() as u64, Ordering::Relaxed);
            probes += 1;
        }
        thread::sleep(Duration::from_millis(50));
    }
    probes
}

/// Publishes 200 events/s over the ingest socket, alternating topics, until told to
/// stop; every one must be acknowledged.
fn publish_over_ingest(ctx: &Ctx) -> u64 {
    let mut p = Publisher::connect(&ctx.ingest);
    let start = Instant::now();
    let mut n = 0u64;
    while ctx.publishing.load(Ordering::Relaxed) {
        let tags: Vec<(usize, u64)> = (n..n + INGEST_BATCH)
            .map(|k| ((k % PUBLISHED as u64) as usize, SOURCE_INGEST | k))
            .collect();
        let batch: Vec<u8> = tags
            .iter()
            .flat_map(|&(t, tag)| pub_frame(WATCHED[t], payload(WATCHED[t], tag).as_bytes(), ""))
            .collect();
        p.send(&batch);
        let acked: Vec<Acked> = tags
            .iter()
            .map(|&(topic, tag)| Acked {
                topic,
                seq: seq_of(&ok_id(&p.reply())),
                tag,
            })
            .collect();
        lock(&ctx.acked).extend(acked);
        n += INGEST_BATCH;
        let due = start + INGEST_TICK * (n / INGEST_BATCH) as u32;
        thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    n
}

/// Publishes 10 events/s with `POST /publish` on one kept admin connection; every one
/// must be answered 200 with its id.
fn publish_over_http(ctx: &Ctx) -> u64 {
    let mut conn = HttpConn::connect(ctx.admin);
    let start = Instant::now();
    let mut n = 0u64;
    while ctx.publishing.load(Ordering::Relaxed) {
        let (topic, tag) = ((n % PUBLISHED as u64) as usize, SOURCE_HTTP | n);
        conn.send(&publish_request(WATCHED[topic], &payload(WATCHED[topic], tag)))
            .unwrap_or_else(|e| panic!("POST /publish {n}: {e}"));
        let (response, body) = conn
            .read_response(WAIT)
            .unwrap_or_else(|end| panic!("POST /publish {n}: {end:?}"));
        let body_text = String::from_utf8_lossy(&body);
        assert_eq!(response.status, 200, "POST /publish {n}: {body_text}");
        assert!(
            !response.closes(),
            "POST /publish {n} closed the kept connection: {response:?}"
        );
        let id = id_of(&body).unwrap_or_else(|e| panic!("POST /publish {n}: {e}"));
        let seq = seq_of(&id);
        lock(&ctx.acked).push(Acked { topic, seq, tag });
        n += 1;
        let due = start + HTTP_TICK * n as u32;
        thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    n
}

/// Publishes `n` events on `topic` in pipelined batches; returns the first id.
fn prefill(p: &mut Publisher, topic: &str, n: usize, data: impl Fn(usize) -> String) -> String {
    let mut first = None;
    for from in (0..n).step_by(500) {
        let to = n.min(from + 500);
        let batch: Vec<u8> = (from..to)
            .flat_map(|i| pub_frame(topic, data(i).as_bytes(), ""))
            .collect();
        p.send(&batch);
        for _ in from..to {
            let id = ok_id(&p.reply());
            first.get_or_insert(id);
        }
    }
    first.expect("at least one event")
}

/// Fills the histories the soak reads from, and those it publishes to up to their
/// count, so that they do not grow while memory is measured.
fn setup(engine: &Engine) -> Ctx {
    let mut p = Publisher::connect(&engine.ingest);
    let big = "b".repeat(BIG_PAYLOAD_BYTES);
    let big_first = prefill(&mut p, BIG_TOPIC, HISTORY_EVENTS, |_| big.clone());
    let poll_first = prefill(&mut p, POLL_TOPIC, 20, |i| format!("poll {i}"));
    prefill(&mut p, ADMIN_TOPIC, HISTORY_EVENTS, |i| {
        format!("pipelined {}", i % 10)
    });
    for topic in &WATCHED[..PUBLISHED] {
        prefill(&mut p, topic, HISTORY_EVENTS, |i| payload(topic, i as u64));
    }
    wait_caught_up(engine.admin);
    Ctx {
        addr: engine.addr,
        admin: engine.admin,
        ingest: engine.ingest.clone(),
        epoch: engine.epoch.clone(),
        big_first,
        poll_first,
        corpus: corpus(),
        next_row: AtomicUsize::new(0),
        abusing: AtomicBool::new(false),
        publishing: AtomicBool::new(true),
        drain_by: Mutex::new(None),
        honest_events: AtomicU64::new(0),
        probe_max_us: AtomicU64::new(0),
        acked: Mutex::new(Vec::new()),
    }
}

/// Waits until every loop has read the whole broadcast ring, and a little more for its
/// last turns: a subscriber arriving while a loop still delivers the prefill would be
/// sent its tail as live events, thousands at once, and meet its queue's policy.
fn wait_caught_up(admin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = timed_stats(admin).0;
        let lagging = stats
            .split("\"ring_lag\":")
            .skip(1)
            .any(|rest| !rest.starts_with("0,") && !rest.starts_with("0}"));
        if !lagging {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "loops still behind the ring after 60 s: {stats}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_secs(2));
}

// ----- Sampling -----

/// The engine-wide total `name` from a `/stats` document.
fn total(stats: &str, name: &str) -> u64 {
    let totals = stats.split_once("\"totals\":{").expect("totals in /stats").1;
    let key = format!("\"{name}\":");
    let value = totals
        .split_once(&key)
        .unwrap_or_else(|| panic!("no {name} in /stats"))
        .1;
    let digits: String = value.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or_else(|e| panic!("{name} in /stats: {e}"))
}

/// `/stats` on a new admin connection, and how long it took.
fn timed_stats(admin: SocketAddr) -> (String, Duration) {
    let start = Instant::now();
    let mut conn = HttpConn::connect(admin);
    conn.send(b"GET /stats HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .expect("request /stats");
    let (response, body) = conn
        .read_response(WAIT)
        .unwrap_or_else(|end| panic!("/stats: {end:?} after {:?}", start.elapsed()));
    assert_eq!(response.status, 200, "/stats: {response:?}");
    (String::from_utf8(body).expect("/stats is UTF-8"), start.elapsed())
}

/// `VmHWM`, the process's peak resident memory, in KiB.
fn hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Resets `VmHWM` to the current resident memory (`/proc/PID/clear_refs`, value 5);
/// returns whether the kernel took it.
fn reset_hwm(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// CPU time a process has used (user and system), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name, which may hold spaces, start at field 3 (state);
    // utime and stime are fields 14 and 15 (proc(5)).
    let rest = stat.rsplit_once(')').expect("a command name in /proc/PID/stat").1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields[i].parse::<u64>().expect("a tick count");
    field(11) + field(12)
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf(3) reads a system constant and touches no memory of ours.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).unwrap_or(100)
}

const PHASES: [&str; 4] = ["warm-up", "abuse", "settle", "drain"];
const ABUSE_PHASE: usize = 1;
const SETTLE_PHASE: usize = 2;
const DRAIN_PHASE: usize = 3;

/// One row of the memory curve: values at its end, maxima over its window.
#[derive(Clone)]
struct Row {
    at: Duration,
    phase: &'static str,
    rss_kib: u64,
    rss_max_kib: u64,
    queued: u64,
    queued_max: u64,
    open: u64,
    open_ws: u64,
    slow_closed: u64,
    request_timeouts: u64,
    bad_requests: u64,
    honest_events: u64,
    cpu_pct: u64,
    stats_ms_max: u128,
    probe_ms_max: u64,
}

/// The sampler's findings over the abuse and settle phases.
#[derive(Default)]
struct Peaks {
    rss_kib: u64,
    queued: u64,
    stats_latency: Duration,
    probe_ms: u64,
}

/// Samples the engine every [`SAMPLE_EVERY`] on a thread until stopped, keeping a
/// [`Row`] every [`ROW_EVERY`] (printed as it is taken) and the peaks.
struct Sampler {
    phase: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(Vec<Row>, Peaks)>>,
}

impl Sampler {
    fn start(pid: u32, ctx: &Arc<Ctx>) -> Sampler {
        let phase = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s, ctx) = (Arc::clone(&phase), Arc::clone(&stop), Arc::clone(ctx));
        let thread = thread::spawn(move || sample(pid, &ctx, &p, &s));
        Sampler {
            phase,
            stop,
            thread: Some(thread),
        }
    }

    fn set_phase(&self, phase: usize) {
        self.phase.store(phase, Ordering::Relaxed);
    }

    fn finish(mut self) -> (Vec<Row>, Peaks) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().expect("running").join().expect("the sampler")
    }
}

/// The maxima of one row's window, and where its CPU time started.
struct Window {
    start: Instant,
    ticks: u64,
    rss_max_kib: u64,
    queued_max: u64,
    stats_max: Duration,
}

impl Window {
    fn open(pid: u32) -> Window {
        Window {
            start: Instant::now(),
            ticks: cpu_ticks(pid),
            rss_max_kib: 0,
            queued_max: 0,
            stats_max: Duration::ZERO,
        }
    }

    /// The row that closes the window, from the last sample (`rss_kib`, `stats`).
    fn row(&self, pid: u32, ctx: &Ctx, at: Duration, phase: usize, rss_kib: u64, stats: &str) -> Row {
        let window_ms = self.start.elapsed().as_millis().max(1) as u64;
        let cpu_ticks_used = cpu_ticks(pid) - self.ticks;
        Row {
            at,
            phase: PHASES[phase],
            rss_kib,
            rss_max_kib: self.rss_max_kib,
            queued: total(stats, "queued_bytes"),
            queued_max: self.queued_max,
            open: total(stats, "open"),
            open_ws: total(stats, "open_ws"),
            slow_closed: total(stats, "slow_closed"),
            request_timeouts: total(stats, "request_timeouts"),
            bad_requests: total(stats, "bad_requests"),
            honest_events: ctx.honest_events.load(Ordering::Relaxed),
            cpu_pct: cpu_ticks_used * 1000 * 100 / clock_ticks_per_sec() / window_ms,
            stats_ms_max: self.stats_max.as_millis(),
            probe_ms_max: ctx.probe_max_us.swap(0, Ordering::Relaxed) / 1000,
        }
    }
}

/// Samples until `stop`, closing a row every [`ROW_EVERY`] and one last row then.
fn sample(pid: u32, ctx: &Ctx, phase: &AtomicUsize, stop: &AtomicBool) -> (Vec<Row>, Peaks) {
    let start = Instant::now();
    let (mut rows, mut peaks, mut window) = (Vec::new(), Peaks::default(), Window::open(pid));
    eprintln!("{HEADER}");
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let rss = rss_kib(pid);
        let (stats, latency) = timed_stats(ctx.admin);
        let queued = total(&stats, "queued_bytes");
        window.rss_max_kib = window.rss_max_kib.max(rss);
        window.queued_max = window.queued_max.max(queued);
        window.stats_max = window.stats_max.max(latency);
        let now_phase = phase.load(Ordering::Relaxed);
        let measured = now_phase == ABUSE_PHASE || now_phase == SETTLE_PHASE;
        if measured {
            peaks.rss_kib = peaks.rss_kib.max(rss);
            peaks.queued = peaks.queued.max(queued);
            peaks.stats_latency = peaks.stats_latency.max(latency);
        }
        if window.start.elapsed() >= ROW_EVERY || stopping {
            let row = window.row(pid, ctx, start.elapsed(), now_phase, rss, &stats);
            if measured {
                peaks.probe_ms = peaks.probe_ms.max(row.probe_ms_max);
            }
            eprintln!("{}", format_row(&row));
            rows.push(row);
            window = Window::open(pid);
        }
        if stopping {
            return (rows, peaks);
        }
        thread::sleep(SAMPLE_EVERY);
    }
}

const HEADER: &str = "|    t s | phase   |   RSS kB | max kB |  queued B | max queued B | open | ws | slow_closed | 408s | 4xx | honest events | CPU % | /stats ms | 404 ms |";
const RULE: &str = "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|";

fn format_row(r: &Row) -> String {
    format!(
        "| {:>6} | {:<7} | {:>8} | {:>6} | {:>9} | {:>12} | {:>4} | {:>2} | {:>11} | {:>4} | {:>3} | {:>13} | {:>5} | {:>9} | {:>6} |",
        r.at.as_secs(),
        r.phase,
        r.rss_kib,
        r.rss_max_kib,
        r.queued,
        r.queued_max,
        r.open,
        r.open_ws,
        r.slow_closed,
        r.request_timeouts,
        r.bad_requests,
        r.honest_events,
        r.cpu_pct,
        r.stats_ms_max,
        r.probe_ms_max
    )
}

// ----- The soak -----

fn soak_duration() -> Duration {
    let secs = match std::env::var("RINGCAST_SOAK_SECS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|e| panic!("RINGCAST_SOAK_SECS={v:?}: {e}")),
        Err(_) => SOAK_SECS_DEFAULT,
    };
    Duration::from_secs(secs)
}

/// Waits, with honest publishing still going, until only the honest connections are
/// open and memory is back within [`END_GROWTH_BYTES`] of `start_kib` (at least
/// [`SETTLE_MIN`], at most [`SETTLE_MAX`]); returns the resident memory and the open
/// connections then.
fn settle(engine: &Engine, start_kib: u64) -> (u64, u64) {
    let began = Instant::now();
    loop {
        let rss = rss_kib(engine.pid);
        let open = total(&timed_stats(engine.admin).0, "open");
        let settled = open == HONEST_CONNS && rss <= start_kib + (END_GROWTH_BYTES >> 10);
        if (settled && began.elapsed() >= SETTLE_MIN) || began.elapsed() >= SETTLE_MAX {
            return (rss, open);
        }
        thread::sleep(SAMPLE_EVERY);
    }
}

/// Stops the honest publishers and publishes the end marker on every watched topic.
fn stop_publishing(ctx: &Ctx, publishers: Vec<JoinHandle<u64>>) -> u64 {
    ctx.publishing.store(false, Ordering::Relaxed);
    let published: u64 = publishers
        .into_iter()
        .map(|h| h.join().expect("an honest publisher"))
        .sum();
    let mut p = Publisher::connect(&ctx.ingest);
    for (topic, name) in WATCHED.iter().enumerate() {
        let seq = seq_of(&p.publish(name, payload(name, END_TAG).as_bytes()));
        lock(&ctx.acked).push(Acked {
            topic,
            seq,
            tag: END_TAG,
        });
    }
    *lock(&ctx.drain_by) = Some(Instant::now() + DRAIN_MAX);
    published
}

/// What a subscriber to `topics` must have received: every acknowledged event of them,
/// in sequence order.
fn expected(acked: &[Acked], topics: &[usize]) -> Vec<(u64, u64)> {
    let mut want: Vec<(u64, u64)> = acked
        .iter()
        .filter(|a| topics.contains(&a.topic))
        .map(|a| (a.seq, a.tag))
        .collect();
    want.sort_unstable();
    want
}

/// The first difference between what a subscriber got and what it was owed.
fn delivery_failure(r: &Received, want: &[(u64, u64)]) -> Option<String> {
    if let Some(failure) = &r.failure {
        return Some(format!("{}: {failure} after {} events", r.name, r.got.len()));
    }
    if r.got == want {
        return None;
    }
    let at = r
        .got
        .iter()
        .zip(want)
        .position(|(g, w)| g != w)
        .unwrap_or(r.got.len().min(want.len()));
    Some(format!(
        "{}: {} events received, {} acknowledged; first difference at {at}: got {:?}, owed {:?}",
        r.name,
        r.got.len(),
        want.len(),
        r.got.get(at),
        want.get(at)
    ))
}

#[test]
#[ignore = "a 10-minute soak of every abuse at once; run by name"]
fn every_abuse_at_once_while_honest_subscribers_receive_every_event() {
    let soak = soak_duration();
    let mut engine = Engine::start(ENGINE_ARGS);
    let ctx = Arc::new(setup(&engine));
    let subscribers = start_subscribers(&ctx);
    let sampler = Sampler::start(engine.pid, &ctx);
    let probe = thread::spawn({
        let ctx = Arc::clone(&ctx);
        move || probe_loops(&ctx)
    });
    let publishers: Vec<JoinHandle<u64>> = [publish_over_ingest, publish_over_http]
        .into_iter()
        .map(|publish| {
            let ctx = Arc::clone(&ctx);
            thread::spawn(move || publish(&ctx))
        })
        .collect();
    thread::sleep(WARM_UP);
    let start_kib = rss_kib(engine.pid);
    let hwm_reset = reset_hwm(engine.pid);
    sampler.set_phase(ABUSE_PHASE);
    let cpu_before = (cpu_ticks(engine.pid), cpu_ticks(std::process::id()));
    let tallies = run_abusers(&ctx, soak);
    let hz = clock_ticks_per_sec();
    let cpu_secs = (
        (cpu_ticks(engine.pid) - cpu_before.0) / hz,
        (cpu_ticks(std::process::id()) - cpu_before.1) / hz,
    );
    sampler.set_phase(SETTLE_PHASE);
    let (end_kib, end_open) = settle(&engine, start_kib);
    let hwm = hwm_reset.then(|| hwm_kib(engine.pid));
    sampler.set_phase(DRAIN_PHASE);
    let published = stop_publishing(&ctx, publishers);
    let probes = probe.join().expect("the probe");
    let received: Vec<Received> = subscribers
        .into_iter()
        .map(|h| h.join().expect("an honest subscriber"))
        .collect();
    let (rows, peaks) = sampler.finish();

    let mut failures = Vec::new();
    report(&rows, &tallies, soak, &mut failures);
    let acked = lock(&ctx.acked).clone();
    for r in &received {
        failures.extend(delivery_failure(r, &expected(&acked, &r.topics)));
    }
    let honest: usize = received.iter().map(|r| r.got.len()).sum();
    println!(
        "\n{published} events published by the honest publishers ({} acknowledged with the end markers); \
         {honest} deliveries to {} honest subscribers checked; {probes} probe 404s, the slowest {} ms",
        acked.len(),
        received.len(),
        peaks.probe_ms
    );
    println!(
        "CPU over the {} s of abuse: the engine {} s, this test (every client) {} s",
        soak.as_secs(),
        cpu_secs.0,
        cpu_secs.1
    );
    check_memory((start_kib, end_kib, end_open), hwm, &peaks, &mut failures);
    assert!(engine.is_running(), "the engine exited: {}", engine.stderr());
    assert!(
        !engine.stderr().contains("panicked"),
        "the engine panicked: {}",
        engine.stderr()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let status = engine.stop();
    assert!(status.success(), "exit {status}: {}", engine.stderr());
}

/// Prints the memory curve and each abuse's cycles; an abuse that never completed a
/// cycle, or got an answer the protocol does not allow, is a failure.
fn report(rows: &[Row], tallies: &[Arc<Tally>], soak: Duration, failures: &mut Vec<String>) {
    println!(
        "\nMemory curve (one row per {} s):\n{HEADER}\n{RULE}",
        ROW_EVERY.as_secs()
    );
    for row in rows {
        println!("{}", format_row(row));
    }
    println!("\n| abuse | at once | cycles | other answers |\n|---|---:|---:|---:|");
    for (abuse, tally) in ABUSES.iter().zip(tallies) {
        let (cycles, other) = (
            tally.cycles.load(Ordering::Relaxed),
            tally.other.load(Ordering::Relaxed),
        );
        println!("| {} | {} | {cycles} | {other} |", abuse.kind, abuse.instances);
        for note in lock(&tally.notes).iter() {
            failures.push(format!("{}: {note}", abuse.kind));
        }
        if other > lock(&tally.notes).len() as u64 {
            failures.push(format!(
                "{}: {other} answers the protocol does not allow",
                abuse.kind
            ));
        }
        // An idle publisher's cycle is a minute long; a short soak may see none end.
        if cycles == 0 && (abuse.kind != IDLE_KIND || soak > 2 * PUBLISHER_IDLE) {
            failures.push(format!("{}: no cycle completed", abuse.kind));
        }
    }
}

/// The memory checks: the peak within [`peak_growth_bound`] of the start, the queued
/// bytes within [`queued_bound`], the end within [`END_GROWTH_BYTES`], only the honest
/// connections left, and `/stats` prompt throughout. `ends` is the resident memory
/// before the abusers and after them, and the connections open after them; `hwm_kib`
/// the kernel's peak since the abusers started, if it could be reset then.
fn check_memory(ends: (u64, u64, u64), hwm_kib: Option<u64>, peaks: &Peaks, failures: &mut Vec<String>) {
    let (start_kib, end_kib, end_open) = ends;
    let peak_kib = hwm_kib.unwrap_or(0).max(peaks.rss_kib);
    let (peak_bound_kib, queued_bound) = (peak_growth_bound() >> 10, queued_bound());
    println!(
        "engine RSS: {start_kib} kB before the abusers, peak {peak_kib} kB (+{} kB; bound +{peak_bound_kib} kB; \
         VmHWM {}), {end_kib} kB after (+{} kB; bound +{} kB); queued bytes peak {} (bound {queued_bound}); \
         {end_open} connections open after (honest: {HONEST_CONNS}); slowest /stats {:?}",
        peak_kib.saturating_sub(start_kib),
        hwm_kib.map_or("not reset".to_owned(), |kib| format!("{kib} kB since the abusers started")),
        end_kib.saturating_sub(start_kib),
        END_GROWTH_BYTES >> 10,
        peaks.queued,
        peaks.stats_latency
    );
    if peak_kib > start_kib + peak_bound_kib {
        failures.push(format!(
            "peak RSS {peak_kib} kB from {start_kib} kB, over +{peak_bound_kib} kB"
        ));
    }
    if peaks.queued > queued_bound {
        failures.push(format!(
            "{} bytes queued at once, over {queued_bound}",
            peaks.queued
        ));
    }
    if end_kib > start_kib + (END_GROWTH_BYTES >> 10) {
        failures.push(format!(
            "{end_kib} kB resident after the abusers left, from {start_kib} kB"
        ));
    }
    if end_open != HONEST_CONNS {
        failures.push(format!(
            "{end_open} connections open after the abusers left, not {HONEST_CONNS}"
        ));
    }
    if peaks.stats_latency > STATS_LATENCY_MAX {
        failures.push(format!("/stats took {:?} while abused", peaks.stats_latency));
    }
}
