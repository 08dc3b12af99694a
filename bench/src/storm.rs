//! The `storm` subcommand: N SSE subscribers on one topic while events are published at
//! a fixed rate; all N are dropped at once (their sockets closed) and reconnected at once
//! with `Last-Event-ID`. Reports how long until every one is live again (its first event
//! on the new connection arrived; and when the engine's `/stats` `open` was back to N),
//! and proves that no subscriber missed or repeated an event: its ids across both
//! connections are exactly the published sequence from its first event on.
//!
//! Also home of the pieces `churn` shares: [`IdScan`] (sans-IO: the ids of an SSE
//! stream), [`Sub`] (one non-blocking subscriber), [`Pacer`] (a publisher at a fixed
//! rate) and [`open_count`] (the engine's `/stats`).
//!
//! Must never: wait without a bound (every loop has a deadline), or leave a socket open
//! after it returns.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddrV4, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::conditions::Conditions;
use crate::engine_args::EngineArgs;
use crate::sse::{split_id, Decoder, Item};
use crate::sys::{self, Epoll};

/// Bytes read per `recv`.
const READ_BYTES: usize = 64 * 1024;
/// Longest `epoll_wait`.
const WAIT_MS: i32 = 20;

/// What [`IdScan`] found in the bytes fed to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The response head was `200`.
    Head,
    /// An event with id `<epoch>-<seq>` (the epoch's hash is kept to detect a reset).
    Event { epoch: u64, seq: u64 },
    /// An `event: ringcast.*` notice (gap, reset, slow).
    Notice,
}

/// What storm and churn read of an SSE response: the head, and each event's id and
/// whether it was a notice. The framing is [`crate::sse::Decoder`]'s, the one strict
/// decoder of the bench; the end of the stream (its last chunk) is an error here, since
/// a subscriber never asks for it. Feed it bytes in any split.
#[derive(Debug, Default)]
pub struct IdScan {
    decoder: Decoder,
    /// The id of the last event completed, for a `Last-Event-ID`.
    pub last_id: Option<String>,
}

/// A stable hash of an epoch string (FNV-1a), so ids compare without allocating.
fn epoch_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl IdScan {
    /// Consumes `input`, calling `found` for the head and every event completed.
    ///
    /// # Errors
    /// The decoder's first framing error, or the end of the stream.
    pub fn feed(&mut self, input: &[u8], found: &mut impl FnMut(Found)) -> Result<(), String> {
        let last_id = &mut self.last_id;
        self.decoder.feed(input, &mut |item| match item {
            Item::Head => found(Found::Head),
            Item::End => {}
            Item::Block(block) => {
                if block.event.is_some_and(|e| e.starts_with(b"ringcast.")) {
                    found(Found::Notice);
                } else if let Some(id) = block.id {
                    let (epoch, seq) = split_id(id);
                    *last_id = Some(String::from_utf8_lossy(id).into_owned());
                    found(Found::Event {
                        epoch: epoch_hash(epoch),
                        seq,
                    });
                }
            }
        })?;
        if self.decoder.is_done() {
            return Err("the server ended the stream".into());
        }
        Ok(())
    }
}

/// The request of a subscriber to `topic`, resuming after `last` if given.
pub fn request(topic: &str, last: Option<&str>) -> Vec<u8> {
    let mut req = format!("GET /sse?topic={topic} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n");
    if let Some(id) = last {
        let _ = write!(req, "Last-Event-ID: {id}\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// One subscriber connection, non-blocking, in an epoll set.
pub struct Sub {
    pub fd: OwnedFd,
    pub scan: IdScan,
    /// Request bytes not yet sent (sent once the connection is up).
    pub pending: Vec<u8>,
    pub started: Instant,
    pub head_at: Option<Instant>,
}

impl Sub {
    /// Starts connecting to `target`, registered in `epoll` under `token`.
    ///
    /// # Errors
    /// The failed call's `errno` name (`socket/EMFILE`, ...).
    pub fn start(epoll: &Epoll, target: SocketAddrV4, req: Vec<u8>, token: u64) -> Result<Sub, String> {
        let fd = sys::connect_start(None, target).map_err(|e| e.kind())?;
        let events = (libc::EPOLLIN | libc::EPOLLOUT) as u32;
        epoll
            .add(fd.as_raw_fd(), events, token)
            .map_err(|e| format!("epoll_ctl: {e}"))?;
        Ok(Sub {
            fd,
            scan: IdScan::default(),
            pending: req,
            started: Instant::now(),
            head_at: None,
        })
    }

    /// Handles readiness: finishes connecting, sends the request, reads what arrived.
    /// Returns `Ok(false)` when the server closed the connection.
    ///
    /// # Errors
    /// A failure named by kind: `connect/ECONNREFUSED`, `recv: ...`, `http: status ...`.
    pub fn ready(
        &mut self,
        epoll: &Epoll,
        token: u64,
        buf: &mut [u8],
        found: &mut impl FnMut(Found),
    ) -> Result<bool, String> {
        if !self.pending.is_empty() {
            if let Err(errno) = sys::take_socket_error(&self.fd) {
                return Err(format!("connect/{}", sys::errno_name(errno)));
            }
            match sys::send(&self.fd, &self.pending) {
                Ok(n) => drop(self.pending.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(format!("send/{}", sys::errno_name(e.raw_os_error().unwrap_or(0)))),
            }
            if self.pending.is_empty() {
                epoll
                    .modify(self.fd.as_raw_fd(), libc::EPOLLIN as u32, token)
                    .map_err(|e| format!("epoll_ctl: {e}"))?;
            }
        }
        for _ in 0..16 {
            let n = match sys::recv(&self.fd, buf) {
                Ok(0) => return Ok(false),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(format!("recv/{}", sys::errno_name(e.raw_os_error().unwrap_or(0)))),
            };
            let head_at = &mut self.head_at;
            self.scan
                .feed(&buf[..n], &mut |f| {
                    if f == Found::Head {
                        *head_at = Some(Instant::now());
                    }
                    found(f);
                })
                .map_err(|e| format!("http: {e}"))?;
        }
        Ok(true)
    }
}

/// A publisher thread: one event on `topic` every `1 / rate` seconds until stopped,
/// recording the sequence numbers the engine acknowledged, in order.
pub struct Pacer {
    stop: Arc<AtomicBool>,
    pub published: Arc<Mutex<Vec<(String, u64)>>>,
    handle: JoinHandle<Result<(), String>>,
}

impl Pacer {
    /// Connects to `ingest` and starts publishing `rate` events per second.
    ///
    /// # Errors
    /// If the ingest socket cannot be connected.
    pub fn start(ingest: &Path, topic: &str, rate: f64) -> Result<Pacer, String> {
        let stream =
            UnixStream::connect(ingest).map_err(|e| format!("ingest socket {}: {e}", ingest.display()))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let published = Arc::new(Mutex::new(Vec::new()));
        let (s, p, topic) = (Arc::clone(&stop), Arc::clone(&published), topic.to_owned());
        let period = Duration::from_secs_f64(1.0 / rate.max(0.1));
        let handle = thread::spawn(move || publish_loop(stream, &topic, period, &s, &p));
        Ok(Pacer {
            stop,
            published,
            handle,
        })
    }

    /// Stops publishing; returns the acknowledged ids in order.
    ///
    /// # Errors
    /// What stopped the publisher early.
    pub fn finish(self) -> Result<Vec<(String, u64)>, String> {
        self.stop.store(true, Relaxed);
        self.handle
            .join()
            .map_err(|_| "the publisher panicked".to_owned())??;
        Ok(std::mem::take(
            &mut *self.published.lock().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

fn publish_loop(
    stream: UnixStream,
    topic: &str,
    period: Duration,
    stop: &AtomicBool,
    published: &Mutex<Vec<(String, u64)>>,
) -> Result<(), String> {
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut writer = stream;
    let start = Instant::now();
    let mut line = String::new();
    // Bounded by the stop flag, which every caller sets before its own deadline.
    for i in 0u64.. {
        if stop.load(Relaxed) {
            break;
        }
        let payload = format!("storm event {i}");
        writer
            .write_all(format!("PUB {topic} {}\n{payload}\n", payload.len()).as_bytes())
            .map_err(|e| format!("ingest write: {e}"))?;
        line.clear();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("ingest read: {e}"))?;
        let id = line
            .trim_end()
            .strip_prefix("+OK ")
            .ok_or_else(|| format!("ingest reply {line:?}"))?
            .to_owned();
        let seq = id.rsplit('-').next().and_then(|s| s.parse().ok()).unwrap_or(0);
        published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((id, seq));
        let next = start + period * u32::try_from(i + 1).unwrap_or(u32::MAX);
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok(())
}

/// The engine's `/stats` totals value `name` (`open`, `accepted`, ...).
pub fn stat(admin: &str, name: &str) -> Option<i64> {
    let mut conn = TcpStream::connect(admin).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    conn.write_all(b"GET /stats HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    let body = text.split_once("\"totals\":{")?.1.split_once('}')?.0;
    body.split(',').find_map(|pair| {
        let (key, value) = pair.split_once(':')?;
        (key.trim_matches('"') == name).then(|| value.trim().parse().ok())?
    })
}

/// The engine's open connection count.
pub fn open_count(admin: &str) -> Option<i64> {
    stat(admin, "open")
}

/// Resolves an IPv4 `host:port`.
///
/// # Errors
/// If it names no IPv4 address.
pub fn resolve(target: &str) -> Result<SocketAddrV4, String> {
    target
        .to_socket_addrs()
        .map_err(|e| format!("--target {target}: {e}"))?
        .find_map(|a| match a {
            std::net::SocketAddr::V4(v4) => Some(v4),
            std::net::SocketAddr::V6(_) => None,
        })
        .ok_or_else(|| format!("--target {target} has no IPv4 address"))
}

/// Whether `got` is exactly `published` from `got[0]` on, and how it is not.
pub fn verify(got: &[u64], published: &[u64]) -> Result<(), String> {
    let Some(&first) = got.first() else {
        return Err("no event".into());
    };
    let Some(start) = published.iter().position(|&s| s == first) else {
        return Err(format!("first id {first} was never published"));
    };
    let want = &published[start..];
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g != w {
            return Err(if g < w {
                format!("event {i}: got {g} again or out of order, expected {w}")
            } else {
                format!("event {i}: got {g}, missed {w}")
            });
        }
    }
    match got.len().cmp(&want.len()) {
        std::cmp::Ordering::Less => Err(format!("missed the last {} events", want.len() - got.len())),
        std::cmp::Ordering::Greater => Err(format!(
            "{} events after the last published",
            got.len() - want.len()
        )),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

/// Arguments of `ringcast-bench storm`.
#[derive(clap::Args, Debug, Clone)]
pub struct StormArgs {
    /// The engine under test.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Subscribers.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// The topic.
    #[arg(long, default_value = "storm")]
    pub topic: String,
    /// Events published per second, throughout.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Seconds all subscribers stay live before the drop.
    #[arg(long, default_value_t = 2)]
    pub before_secs: u64,
    /// Seconds of publishing after all are live again.
    #[arg(long, default_value_t = 2)]
    pub after_secs: u64,
    /// Bound on each phase (connect, reconnect, drain), seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
    /// Reconnect without `Last-Event-ID`: the events published during the drop are then
    /// missed, which shows the check catching it.
    #[arg(long)]
    pub no_resume: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write the results into this directory: `storm-<date>.json` (the `--json`
    /// output), `.md` and the time-to-live CDF as SVG.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Per subscriber: its live connection and every event it received.
struct Slot {
    sub: Option<Sub>,
    seqs: Vec<u64>,
    epochs: Vec<u64>,
    last_id: Option<String>,
    /// When its first event on the second connection arrived.
    back_at: Option<Instant>,
    error: Option<String>,
}

struct Storm {
    epoll: Epoll,
    slots: Vec<Slot>,
    generation: u64,
    buf: Vec<u8>,
    tokens: Vec<u64>,
}

impl Storm {
    /// `conns` slots, none connected.
    fn new(conns: usize) -> Result<Storm, String> {
        let slot = || Slot {
            sub: None,
            seqs: Vec::new(),
            epochs: Vec::new(),
            last_id: None,
            back_at: None,
            error: None,
        };
        Ok(Storm {
            epoll: Epoll::new().map_err(|e| format!("epoll: {e}"))?,
            slots: (0..conns).map(|_| slot()).collect(),
            generation: 0,
            buf: vec![0; READ_BYTES],
            tokens: Vec::new(),
        })
    }

    /// Connects every slot (again), resuming from its last id on the second round.
    fn connect_all(&mut self, target: SocketAddrV4, topic: &str, resume: bool) {
        self.generation += 1;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let last = slot.last_id.clone().filter(|_| resume);
            let token = (self.generation << 32) | i as u64;
            match Sub::start(&self.epoll, target, request(topic, last.as_deref()), token) {
                Ok(sub) => slot.sub = Some(sub),
                Err(e) => slot.error = Some(e),
            }
        }
    }

    /// Serves readiness for up to `WAIT_MS`.
    fn turn(&mut self, second: bool) -> Result<(), String> {
        self.epoll
            .wait(&mut self.tokens, 1024, WAIT_MS)
            .map_err(|e| format!("epoll_wait: {e}"))?;
        for &token in &self.tokens {
            if token >> 32 != self.generation {
                continue;
            }
            let slot = &mut self.slots[(token & 0xffff_ffff) as usize];
            let Some(sub) = slot.sub.as_mut() else { continue };
            let (seqs, epochs, back_at) = (&mut slot.seqs, &mut slot.epochs, &mut slot.back_at);
            let result = sub.ready(&self.epoll, token, &mut self.buf, &mut |f| {
                if let Found::Event { epoch, seq } = f {
                    seqs.push(seq);
                    epochs.push(epoch);
                    if second && back_at.is_none() {
                        *back_at = Some(Instant::now());
                    }
                }
            });
            if sub.scan.last_id.is_some() {
                slot.last_id.clone_from(&sub.scan.last_id);
            }
            match result {
                Ok(true) => {}
                Ok(false) => {
                    slot.error = Some("closed by the server".into());
                    slot.sub = None;
                }
                Err(e) => {
                    slot.error = Some(e);
                    slot.sub = None;
                }
            }
        }
        Ok(())
    }

    /// Turns until `done` holds or `timeout` passes; returns whether `done` held.
    fn until(
        &mut self,
        second: bool,
        timeout: Duration,
        done: impl Fn(&Storm) -> bool,
    ) -> Result<bool, String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            self.turn(second)?;
            if done(self) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn failed(slot: &Slot) -> bool {
    slot.error.is_some()
}

/// Runs `ringcast-bench storm`.
pub fn main(args: StormArgs) -> ExitCode {
    crate::report::finish("storm", run(&args))
}

/// What a storm measured.
struct Outcome {
    connect_ms: f64,
    all_live_ms: Option<f64>,
    stats_back_ms: Option<f64>,
    live: Histogram<u64>,
    published: usize,
    verified: usize,
    bad: Vec<String>,
    errors: std::collections::BTreeMap<String, u64>,
    events_before: u64,
    /// From the drop until every new connection had its response head.
    heads_ms: Option<f64>,
    /// CPU seconds of the engine and of this tool from the drop until all were live.
    engine_cpu: Option<f64>,
    bench_cpu: Option<f64>,
}

/// User plus system CPU seconds of process `pid` (`/proc/<pid>/stat` fields 14 and 15).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let ticks: u64 = fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?;
    // SAFETY: sysconf takes an integer and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    Some(ticks as f64 / hz as f64)
}

fn run(args: &StormArgs) -> Result<(String, bool), String> {
    if args.conns == 0 || args.conns > 1 << 20 {
        return Err(format!("--conns {} must be 1..=1048576", args.conns));
    }
    crate::sys::raise_nofile().map_err(|e| format!("raise RLIMIT_NOFILE: {e}"))?;
    let conditions = Conditions::collect(args.engine.pid().unwrap_or_else(std::process::id));
    let target = resolve(&args.engine.target)?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let mut storm = Storm::new(args.conns)?;
    let started = Instant::now();
    storm.connect_all(target, &args.topic, false);
    let heads = storm.until(false, timeout, |s| {
        s.slots
            .iter()
            .all(|x| failed(x) || x.sub.as_ref().is_some_and(|s| s.head_at.is_some()))
    })?;
    let connect_ms = started.elapsed().as_secs_f64() * 1e3;
    if !heads {
        return Err(format!("not every subscriber was answered within {timeout:?}"));
    }
    let pacer = Pacer::start(&args.engine.ingest, &args.topic, args.rate)?;
    storm.until(false, Duration::from_secs(args.before_secs), |_| false)?;
    let events_before = storm.slots.iter().map(|s| s.seqs.len() as u64).min().unwrap_or(0);
    let back = reconnect(&mut storm, args, target, timeout)?;
    storm.until(true, Duration::from_secs(args.after_secs), |_| false)?;
    let published: Vec<u64> = pacer.finish()?.into_iter().map(|(_, seq)| seq).collect();
    let last = published.last().copied().unwrap_or(0);
    storm.until(true, Duration::from_secs(5), |s| {
        s.slots.iter().all(|x| failed(x) || x.seqs.last() == Some(&last))
    })?;
    let stats_back_ms = back.watcher.join().map_err(|_| "the /stats watcher panicked")?;
    let times = (connect_ms, back.all_live_ms, stats_back_ms);
    let outcome = judge(&storm, times, &published, back.dropped_at, events_before);
    let outcome = Outcome {
        heads_ms: back.heads_ms,
        engine_cpu: back.cpu[0],
        bench_cpu: back.cpu[1],
        ..outcome
    };
    let ok = outcome.bad.is_empty() && outcome.errors.is_empty() && back.all_live_ms.is_some();
    let mut text = if args.json {
        json(args, &conditions, &outcome)
    } else {
        text(args, &conditions, &outcome)
    };
    if let Some(dir) = &args.out {
        let chart = crate::output::Chart {
            title: format!(
                "storm: {} subscribers, drop to first event on the new connection",
                args.conns
            ),
            x_label: "time from the drop, ms".into(),
            y_label: "fraction of subscribers live again".into(),
            x_log: false,
            series: vec![crate::output::latency_cdf("time to live", &outcome.live)],
        };
        crate::output::write_out(args.json, &mut text, || {
            let json = json(args, &conditions, &outcome);
            let body = crate::output::json_summary_table(&json)?;
            crate::output::write_result(dir, "storm", &conditions, &json, &body, &[("live-cdf", chart)])
        })?;
    }
    Ok((text, ok))
}

/// What the drop and reconnection measured.
struct Reconnect {
    dropped_at: Instant,
    /// From the drop until every subscriber had an event on its new connection.
    all_live_ms: Option<f64>,
    /// From the drop until every new connection had its response head.
    heads_ms: Option<f64>,
    /// CPU seconds of the engine and of this tool from the drop until all were live.
    cpu: [Option<f64>; 2],
    /// The `/stats` watcher: milliseconds until the engine accepted all and `open` was back.
    watcher: JoinHandle<Option<f64>>,
}

/// The storm: every socket closed, then every subscriber reconnects with its last id;
/// returns once all are live again or `timeout` passed.
fn reconnect(
    storm: &mut Storm,
    args: &StormArgs,
    target: SocketAddrV4,
    timeout: Duration,
) -> Result<Reconnect, String> {
    let accepted_before = stat(&args.engine.admin, "accepted")
        .ok_or_else(|| format!("no /stats at --admin {}", args.engine.admin))?;
    let open_live = open_count(&args.engine.admin).ok_or("no open count in /stats")?;
    let pid = args.engine.pid().unwrap_or(0);
    let cpu_before = [cpu_secs(pid), cpu_secs(std::process::id())];
    let dropped_at = Instant::now();
    for slot in &mut storm.slots {
        slot.sub = None;
    }
    storm.connect_all(target, &args.topic, !args.no_resume);
    let admin = args.engine.admin.clone();
    let want_accepted = accepted_before + args.conns as i64;
    let watcher = thread::spawn(move || watch_open(&admin, open_live, want_accepted, dropped_at, timeout));
    let all_live = storm.until(true, timeout, |s| {
        s.slots.iter().all(|x| failed(x) || x.back_at.is_some())
    })?;
    let all_live_ms = all_live.then(|| dropped_at.elapsed().as_secs_f64() * 1e3);
    let cpu_after = [cpu_secs(pid), cpu_secs(std::process::id())];
    let cpu = [0, 1].map(|i| Some(cpu_after[i]? - cpu_before[i]?));
    let heads_ms = storm
        .slots
        .iter()
        .filter_map(|x| x.sub.as_ref()?.head_at)
        .max()
        .map(|at| at.duration_since(dropped_at).as_secs_f64() * 1e3);
    Ok(Reconnect {
        dropped_at,
        all_live_ms,
        heads_ms,
        cpu,
        watcher,
    })
}

/// Polls `/stats` until the engine accepted every reconnection (`accepted` reaches
/// `want_accepted`) and counts them open (`open` reaches `want_open`); milliseconds
/// since `since`, or `None`.
fn watch_open(
    admin: &str,
    want_open: i64,
    want_accepted: i64,
    since: Instant,
    timeout: Duration,
) -> Option<f64> {
    while since.elapsed() < timeout {
        let accepted = stat(admin, "accepted")?;
        let open = open_count(admin)?;
        if accepted >= want_accepted && open >= want_open {
            return Some(since.elapsed().as_secs_f64() * 1e3);
        }
        thread::sleep(Duration::from_millis(2));
    }
    None
}

/// Checks every subscriber's ids against `published`; `times` are the first connect, all
/// live and `/stats` back, in milliseconds.
fn judge(
    storm: &Storm,
    times: (f64, Option<f64>, Option<f64>),
    published: &[u64],
    dropped_at: Instant,
    events_before: u64,
) -> Outcome {
    let (connect_ms, all_live_ms, stats_back_ms) = times;
    let mut live = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
    let mut bad = Vec::new();
    let mut errors = std::collections::BTreeMap::new();
    let mut verified = 0;
    for (i, slot) in storm.slots.iter().enumerate() {
        if let Some(e) = &slot.error {
            *errors
                .entry(e.split(':').next().unwrap_or(e).to_owned())
                .or_insert(0) += 1;
            continue;
        }
        if let Some(at) = slot.back_at {
            let _ = live.record(at.duration_since(dropped_at).as_micros().max(1) as u64);
        }
        let one_epoch = slot.epochs.windows(2).all(|w| w[0] == w[1]);
        match verify(&slot.seqs, published) {
            Ok(()) if one_epoch => verified += 1,
            Ok(()) => bad.push(format!("subscriber {i}: ids of two epochs")),
            Err(e) => bad.push(format!("subscriber {i}: {e}")),
        }
    }
    Outcome {
        connect_ms,
        all_live_ms,
        stats_back_ms,
        live,
        published: published.len(),
        verified,
        bad,
        errors,
        events_before,
        heads_ms: None,
        engine_cpu: None,
        bench_cpu: None,
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "never".to_owned(), |v| format!("{v:.1} ms"))
}

fn text(args: &StormArgs, c: &Conditions, o: &Outcome) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "storm: {} SSE subscribers on topic {:?}, {} events/s",
        args.conns, args.topic, args.rate
    );
    let _ = writeln!(
        out,
        "  first connect of all: {:.1} ms; events each before the drop: >= {}",
        o.connect_ms, o.events_before
    );
    let _ = writeln!(
        out,
        "  all live again (first event on the new connection): {}",
        ms(o.all_live_ms)
    );
    let _ = writeln!(
        out,
        "  every new connection answered (response head): {}",
        ms(o.heads_ms)
    );
    let _ = writeln!(
        out,
        "  engine /stats accepted all and open back to N: {}",
        ms(o.stats_back_ms)
    );
    let secs = |v: Option<f64>| v.map_or_else(|| "unknown".to_owned(), |v| format!("{v:.2} s"));
    let _ = writeln!(
        out,
        "  CPU from the drop until all live: engine {}, ringcast-bench {}",
        secs(o.engine_cpu),
        secs(o.bench_cpu)
    );
    let _ = writeln!(
        out,
        "  per subscriber, drop to first new event: {}",
        crate::output::percentiles(&o.live)
    );
    let _ = writeln!(
        out,
        "  events published: {}; subscribers whose ids are exactly the published sequence: {} of {}",
        o.published, o.verified, args.conns
    );
    for (kind, n) in &o.errors {
        let _ = writeln!(out, "  failed: {kind}: {n}");
    }
    for b in o.bad.iter().take(10) {
        let _ = writeln!(out, "  BAD {b}");
    }
    let _ = writeln!(out, "{}", c.text("", "engine"));
    out
}

/// The `--json` report of one storm run (field names are part of the output format).
#[derive(serde::Serialize)]
struct Json<'a> {
    subcommand: &'static str,
    conns: usize,
    rate: f64,
    connect_ms: f64,
    all_live_ms: Option<f64>,
    stats_open_back_ms: Option<f64>,
    heads_ms: Option<f64>,
    engine_cpu_secs: Option<f64>,
    bench_cpu_secs: Option<f64>,
    live_p50_ms: f64,
    live_p99_ms: f64,
    live_max_ms: f64,
    events_before_drop_min: u64,
    published: usize,
    verified: usize,
    failures: &'a std::collections::BTreeMap<String, u64>,
    bad: &'a [String],
    conditions: serde_json::Value,
}

fn json(args: &StormArgs, c: &Conditions, o: &Outcome) -> String {
    let report = Json {
        subcommand: "storm",
        conns: args.conns,
        rate: args.rate,
        connect_ms: o.connect_ms,
        all_live_ms: o.all_live_ms,
        stats_open_back_ms: o.stats_back_ms,
        heads_ms: o.heads_ms,
        engine_cpu_secs: o.engine_cpu,
        bench_cpu_secs: o.bench_cpu,
        live_p50_ms: o.live.value_at_quantile(0.5) as f64 / 1e3,
        live_p99_ms: o.live.value_at_quantile(0.99) as f64 / 1e3,
        live_max_ms: o.live.max() as f64 / 1e3,
        events_before_drop_min: o.events_before,
        published: o.published,
        verified: o.verified,
        failures: &o.errors,
        bad: &o.bad[..o.bad.len().min(100)],
        conditions: c.to_value(),
    };
    crate::output::to_json_line(&report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n\
d\r\nretry: 3000\n\n\r\n17\r\nid: e1-41\ndata: hello\n\n\r\n\
3c\r\nevent: ringcast.gap\ndata: {\"dropped\":1}\n\nid: e1-42\ndata: x\n\n\r\n";

    fn scan_all(parts: &[&[u8]]) -> Vec<Found> {
        let mut scan = IdScan::default();
        let mut out = Vec::new();
        for p in parts {
            scan.feed(p, &mut |f| out.push(f)).expect("valid stream");
        }
        out
    }

    #[test]
    fn any_split_scans_like_the_whole() {
        let whole = scan_all(&[STREAM]);
        let e = epoch_hash(b"e1");
        assert_eq!(
            whole,
            vec![
                Found::Head,
                Found::Event { epoch: e, seq: 41 },
                Found::Notice,
                Found::Event { epoch: e, seq: 42 }
            ]
        );
        for at in 0..=STREAM.len() {
            assert_eq!(scan_all(&[&STREAM[..at], &STREAM[at..]]), whole, "split at {at}");
        }
    }

    #[test]
    fn a_refused_stream_is_an_error() {
        let mut scan = IdScan::default();
        let err = scan.feed(b"HTTP/1.1 503 Busy\r\n\r\n", &mut |_| {}).unwrap_err();
        assert!(err.contains("503"), "{err}");
    }

    #[test]
    fn verify_names_misses_repeats_and_short_tails() {
        let published = [5, 6, 7, 8, 9];
        assert_eq!(verify(&[6, 7, 8, 9], &published), Ok(()));
        assert!(verify(&[6, 8, 9], &published).unwrap_err().contains("missed 7"));
        assert!(verify(&[6, 7, 7, 8, 9], &published)
            .unwrap_err()
            .contains("again"));
        assert!(verify(&[6, 7, 8], &published).unwrap_err().contains("last 1"));
        assert!(verify(&[4], &published).is_err());
        assert!(verify(&[], &published).is_err());
    }

    #[test]
    fn requests_carry_the_last_event_id_when_resuming() {
        let r = String::from_utf8(request("t", Some("e-9"))).unwrap();
        assert!(r.starts_with("GET /sse?topic=t HTTP/1.1\r\n") && r.contains("\r\nLast-Event-ID: e-9\r\n"));
        assert!(!String::from_utf8(request("t", None))
            .unwrap()
            .contains("Last-Event-ID"));
    }
}
