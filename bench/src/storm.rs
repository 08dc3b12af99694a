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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::conditions::Conditions;
use crate::engine_args::EngineArgs;
use crate::sse::{split_id, Decoder, Item};
use crate::sys::{self, Epoll};

/// What [`IdScan`] found in the bytes fed to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The response head was `200`.
    Head,
    /// An event with id `<epoch>-<seq>` (the epoch's hash is kept to detect a reset).
    Event { epoch: u64, seq: u64 },
    /// `event: ringcast.reset`: the engine could not honour the resume; what follows
    /// starts over from what it retained.
    Reset,
    /// `event: ringcast.gap`: events were lost; `first..=last` when the notice names the
    /// range (`first_id`, `last_id`), `None` when it does not.
    Gap(Option<(u64, u64)>),
    /// Any other `event: ringcast.*` notice (slow, error).
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

/// What an `event: ringcast.*` block with `data` says.
fn notice(name: &[u8], data: &[u8]) -> Found {
    match name {
        b"ringcast.reset" => Found::Reset,
        b"ringcast.gap" => {
            let seq_of = |key: &str| {
                let text = std::str::from_utf8(data).ok()?;
                let at = text.find(&format!("\"{key}\":\""))? + key.len() + 4;
                let id = &text[at..at + text[at..].find('"')?];
                Some(split_id(id.as_bytes()).1)
            };
            Found::Gap(seq_of("first_id").zip(seq_of("last_id")))
        }
        _ => Found::Notice,
    }
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
                if let Some(name) = block.event.filter(|e| e.starts_with(b"ringcast.")) {
                    found(notice(name, block.data.unwrap_or_default()));
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
    /// Starts connecting to `target` (from `source`, or the kernel's choice), registered in `epoll` under `token`.
    ///
    /// # Errors
    /// The failed call's `errno` name (`socket/EMFILE`, ...).
    pub fn start(
        epoll: &Epoll,
        source: Option<Ipv4Addr>,
        target: SocketAddrV4,
        req: Vec<u8>,
        token: u64,
    ) -> Result<Sub, String> {
        let fd = sys::connect_start(source, target).map_err(|e| e.kind())?;
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
    /// The longest the engine took to acknowledge one publish, in microseconds.
    slowest_ack_us: Arc<AtomicU64>,
    pub published: Arc<Mutex<Vec<(String, u64)>>>,
    handle: JoinHandle<Result<(), String>>,
}

/// How long the publisher waits for one acknowledgement before it gives up.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);

impl Pacer {
    /// Connects to `ingest` and starts publishing `rate` events per second.
    ///
    /// # Errors
    /// If the ingest socket cannot be connected.
    pub fn start(ingest: &Path, topic: &str, rate: f64) -> Result<Pacer, String> {
        let stream =
            UnixStream::connect(ingest).map_err(|e| format!("ingest socket {}: {e}", ingest.display()))?;
        // A slow acknowledgement is measured (`slowest_ack`); only one this late fails.
        stream
            .set_read_timeout(Some(ACK_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let published = Arc::new(Mutex::new(Vec::new()));
        let slowest_ack_us = Arc::new(AtomicU64::new(0));
        let (s, p, slowest, topic) = (
            Arc::clone(&stop),
            Arc::clone(&published),
            Arc::clone(&slowest_ack_us),
            topic.to_owned(),
        );
        let period = Duration::from_secs_f64(1.0 / rate.max(0.1));
        let handle = thread::spawn(move || publish_loop(stream, &topic, period, &s, &p, &slowest));
        Ok(Pacer {
            stop,
            slowest_ack_us,
            published,
            handle,
        })
    }

    /// The longest the engine has taken to acknowledge one publish so far.
    pub fn slowest_ack(&self) -> Duration {
        Duration::from_micros(self.slowest_ack_us.load(Relaxed))
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
    slowest_ack_us: &AtomicU64,
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
        let sent = Instant::now();
        reader.read_line(&mut line).map_err(|e| {
            format!(
                "ingest read (no acknowledgement in {} s): {e}",
                ACK_TIMEOUT.as_secs()
            )
        })?;
        slowest_ack_us.fetch_max(sent.elapsed().as_micros() as u64, Relaxed);
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

/// What the engine told a subscriber between two of its events (see [`classify`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Reset,
    /// A gap notice, with the range it names if it names one.
    Gap(Option<(u64, u64)>),
}

/// What one subscriber's stream through the storm was, by its ids and the notices
/// between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// Exactly the published sequence from its first event on: a gap-free resume.
    Whole,
    /// The engine sent `ringcast.reset` and the ids were whole from where it restarted.
    Reset,
    /// Ids were missing, and a `ringcast.gap` before the next event covered them.
    Gap,
    /// Ids missing with no notice covering them: an engine bug.
    Hole(String),
    /// An id twice or out of order, or of another epoch, with no reset before it.
    Disorder(String),
    /// Whole so far, but its last events had not arrived when the wait ended.
    Short(String),
}

impl Class {
    /// The class's name in the reports.
    pub fn name(&self) -> &'static str {
        match self {
            Class::Whole => "whole",
            Class::Reset => "reset",
            Class::Gap => "gap",
            Class::Hole(_) => "hole",
            Class::Disorder(_) => "disorder",
            Class::Short(_) => "short",
        }
    }
}

/// Every class name, in report order.
pub const CLASSES: [&str; 6] = ["whole", "reset", "gap", "hole", "disorder", "short"];

/// Classifies a subscriber's ids `got` (with the epoch hash of each) against the
/// acknowledged sequence `published`; `marks` are the notices it received, each with the
/// number of events it had received before it. A reset excuses whatever jump follows it
/// (forward or back); a gap notice excuses missing ids it covers (or any, when it names
/// no range); anything else missing is a hole. A subscriber told of a reset (or a gap)
/// is counted as such even when no id was missing.
pub fn classify(got: &[u64], epochs: &[u64], marks: &[(usize, Mark)], published: &[u64]) -> Class {
    let Some(&first) = got.first() else {
        return Class::Short("no event".into());
    };
    let Some(start) = published.iter().position(|&s| s == first) else {
        return Class::Disorder(format!("first id {first} was never published"));
    };
    let mut want = start;
    let mut told = Class::Whole;
    let mut at_mark = 0;
    for (i, &g) in got.iter().enumerate() {
        let mut reset = false;
        let mut gaps: Vec<Option<(u64, u64)>> = Vec::new();
        while let Some(&(pos, mark)) = marks.get(at_mark).filter(|(pos, _)| *pos <= i) {
            debug_assert!(pos <= i);
            match mark {
                Mark::Reset => reset = true,
                Mark::Gap(range) => gaps.push(range),
            }
            at_mark += 1;
        }
        if reset {
            told = Class::Reset;
        } else if !gaps.is_empty() && told == Class::Whole {
            told = Class::Gap;
        }
        if i > 0 && epochs.get(i) != epochs.get(i - 1) && !reset {
            return Class::Disorder(format!("event {i}: id {g} of another epoch, no reset before it"));
        }
        if published.get(want) == Some(&g) {
            want += 1;
            continue;
        }
        if reset {
            let Some(at) = published.iter().position(|&s| s == g) else {
                return Class::Disorder(format!("event {i}: got {g}, never published"));
            };
            want = at + 1;
            continue;
        }
        let Some(skip) = published[want.min(published.len())..]
            .iter()
            .position(|&s| s == g)
        else {
            let expected = published.get(want).map_or("nothing".to_owned(), u64::to_string);
            return Class::Disorder(format!(
                "event {i}: got {g} again or out of order, expected {expected}"
            ));
        };
        let (lost_first, lost_last) = (published[want], published[want + skip - 1]);
        let covered = gaps
            .iter()
            .any(|r| r.is_none_or(|(first, last)| first <= lost_first && last >= lost_last));
        if !covered {
            return Class::Hole(format!(
                "event {i}: got {g}, missed {lost_first}..={lost_last} ({skip} events) with no notice"
            ));
        }
        want += skip + 1;
    }
    match published.len().saturating_sub(want) {
        0 => told,
        short => Class::Short(format!(
            "missed the last {short} events (not arrived when the wait ended)"
        )),
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
    /// Client processes the subscribers are split across (each holds at most its
    /// `RLIMIT_NOFILE`, 20,000 here, minus a few).
    #[arg(long, default_value_t = 1)]
    pub procs: usize,
    /// Source addresses 127.0.0.2.. to connect from, round robin (each gives another
    /// range of ephemeral ports; the engine's `--max-conns-per-ip` applies to each); 0:
    /// the kernel's choice.
    #[arg(long, default_value_t = 0)]
    pub sources: u32,
    /// The topic.
    #[arg(long, default_value = "storm")]
    pub topic: String,
    /// Events published per second, throughout.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Seconds all subscribers stay live before the drop.
    #[arg(long, default_value_t = 2)]
    pub before_secs: u64,
    /// Milliseconds between closing every socket and reconnecting (events published
    /// meanwhile must come from the history).
    #[arg(long, default_value_t = 0)]
    pub pause_ms: u64,
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

/// Runs `ringcast-bench storm`.
pub fn main(args: StormArgs) -> ExitCode {
    crate::report::finish("storm", run(&args))
}

/// What a storm measured.
struct Outcome {
    connect_ms: f64,
    /// The longest the engine took to acknowledge one of the publisher's events.
    slowest_ack_ms: f64,
    all_live_ms: Option<f64>,
    stats_back_ms: Option<f64>,
    live: Histogram<u64>,
    published: usize,
    classes: BTreeMap<&'static str, u64>,
    bad: Vec<String>,
    errors: BTreeMap<String, u64>,
    events_before: u64,
    /// From the drop until every new connection had its response head.
    heads_ms: Option<f64>,
    /// CPU seconds of the engine and of the client processes from the drop until all
    /// were live.
    engine_cpu: Option<f64>,
    bench_cpu: Option<f64>,
    /// The engine's `resets`, `replay_gaps` and `replayed` counters over the run.
    engine_resets: Option<i64>,
    engine_gaps: Option<i64>,
    engine_replayed: Option<i64>,
}

impl Outcome {
    fn class(&self, name: &str) -> u64 {
        self.classes.get(name).copied().unwrap_or(0)
    }
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

/// The sum of [`cpu_secs`] over `pids`, if every one is known.
fn cpu_sum(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|&p| cpu_secs(p)).sum()
}

/// The engine counters the report shows, read before and after.
const COUNTERS: [&str; 3] = ["resets", "replay_gaps", "replayed"];

fn run(args: &StormArgs) -> Result<(String, bool), String> {
    if args.conns == 0 || args.conns > 1 << 20 {
        return Err(format!("--conns {} must be 1..=1048576", args.conns));
    }
    if args.procs == 0 || args.procs > args.conns {
        return Err(format!("--procs {} must be 1..=--conns", args.procs));
    }
    let conditions = Conditions::collect(args.engine.pid().unwrap_or_else(std::process::id));
    let target = resolve(&args.engine.target)?;
    if args.sources > 0 && !target.ip().is_loopback() {
        return Err(format!(
            "source addresses 127.0.0.x cannot reach {target}; pass --sources 0"
        ));
    }
    let timeout = Duration::from_secs(args.timeout_secs);
    let counters_before = COUNTERS.map(|c| stat(&args.engine.admin, c));
    let started = Instant::now();
    let mut fleet = crate::storm_worker::Fleet::spawn(args, target)?;
    let readies = fleet.collect("ready", started + timeout)?;
    let connect_ms = started.elapsed().as_secs_f64() * 1e3;
    let failed_to_connect: Vec<&String> = readies.iter().filter(|r| r.starts_with("failed")).collect();
    if let Some(why) = failed_to_connect.first() {
        return Err(format!("a client process could not connect its share: {why}"));
    }
    let pacer = Pacer::start(&args.engine.ingest, &args.topic, args.rate)?;
    thread::sleep(Duration::from_secs(args.before_secs));
    let back = reconnect(&mut fleet, args, timeout)?;
    thread::sleep(Duration::from_secs(args.after_secs));
    let slowest_ack = pacer.slowest_ack();
    let published: Vec<u64> = pacer.finish()?.into_iter().map(|(_, seq)| seq).collect();
    let results = fleet.finish(&published, Instant::now() + timeout)?;
    let stats_back_ms = back.watcher.join().map_err(|_| "the /stats watcher panicked")?;
    let counters_after = COUNTERS.map(|c| stat(&args.engine.admin, c));
    let delta = |i: usize| Some(counters_after[i]? - counters_before[i]?);
    let mut outcome = merge(&results, published.len())?;
    outcome.connect_ms = connect_ms;
    outcome.slowest_ack_ms = slowest_ack.as_secs_f64() * 1e3;
    outcome.all_live_ms = back.all_live_ms;
    outcome.stats_back_ms = stats_back_ms;
    outcome.heads_ms = back.heads_ms;
    outcome.events_before = back.events_before;
    (outcome.engine_cpu, outcome.bench_cpu) = (back.cpu[0], back.cpu[1]);
    (
        outcome.engine_resets,
        outcome.engine_gaps,
        outcome.engine_replayed,
    ) = (delta(0), delta(1), delta(2));
    let ok = outcome.class("whole") == args.conns as u64
        && outcome.errors.is_empty()
        && back.all_live_ms.is_some();
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
    /// The fewest events any subscriber had before the drop.
    events_before: u64,
    /// From the drop until every subscriber had an event on its new connection.
    all_live_ms: Option<f64>,
    /// From the drop until every new connection had its response head.
    heads_ms: Option<f64>,
    /// CPU seconds of the engine and of the client processes from the drop until all
    /// were live.
    cpu: [Option<f64>; 2],
    /// The `/stats` watcher: milliseconds until the engine accepted all and `open` was back.
    watcher: JoinHandle<Option<f64>>,
}

/// The storm: every client process closes all its sockets and reconnects each with its
/// last id; returns once all are live again or `timeout` passed.
fn reconnect(
    fleet: &mut crate::storm_worker::Fleet,
    args: &StormArgs,
    timeout: Duration,
) -> Result<Reconnect, String> {
    let accepted_before = stat(&args.engine.admin, "accepted")
        .ok_or_else(|| format!("no /stats at --admin {}", args.engine.admin))?;
    let open_live = open_count(&args.engine.admin).ok_or("no open count in /stats")?;
    let pid = args.engine.pid().unwrap_or(0);
    let workers = fleet.pids();
    let cpu_before = [cpu_secs(pid), cpu_sum(&workers)];
    let dropped_at = Instant::now();
    fleet.send_all("drop")?;
    let admin = args.engine.admin.clone();
    let want_accepted = accepted_before + args.conns as i64;
    let watch_for = timeout + Duration::from_millis(args.pause_ms);
    let watcher = thread::spawn(move || watch_open(&admin, open_live, want_accepted, dropped_at, watch_for));
    let dropped = fleet.collect("dropped", dropped_at + timeout)?;
    let events_before = dropped
        .iter()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .min()
        .unwrap_or(0);
    // Each process reports at its own deadline, which starts after it reconnected all.
    let lives = fleet.collect("live", dropped_at + watch_for + timeout)?;
    let cpu_after = [cpu_secs(pid), cpu_sum(&workers)];
    let cpu = [0, 1].map(|i| Some(cpu_after[i]? - cpu_before[i]?));
    // Each process times from its own drop, within a millisecond of ours.
    let field = |line: &String, n: usize| line.split_whitespace().nth(n).and_then(|v| v.parse::<f64>().ok());
    let max_of = |n: usize| -> Option<f64> {
        lives
            .iter()
            .map(|l| field(l, n))
            .try_fold(0.0_f64, |acc, v| Some(acc.max(v?)))
    };
    Ok(Reconnect {
        events_before,
        all_live_ms: max_of(0),
        heads_ms: max_of(1),
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

/// Adds up the client processes' `result` lines.
fn merge(results: &[String], published: usize) -> Result<Outcome, String> {
    let mut live = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
    let mut classes: BTreeMap<&'static str, u64> = CLASSES.iter().map(|&c| (c, 0)).collect();
    let mut errors = BTreeMap::new();
    let mut bad = Vec::new();
    for line in results {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("a client process's result {line:?}: {e}"))?;
        for &c in &CLASSES {
            *classes.get_mut(c).expect("every class") += v["classes"][c].as_u64().unwrap_or(0);
        }
        if let Some(map) = v["errors"].as_object() {
            for (kind, n) in map {
                *errors.entry(kind.clone()).or_insert(0) += n.as_u64().unwrap_or(0);
            }
        }
        for b in v["bad"].as_array().into_iter().flatten() {
            bad.push(b.as_str().unwrap_or_default().to_owned());
        }
        for us in v["live_us"].as_array().into_iter().flatten() {
            let _ = live.record(us.as_u64().unwrap_or(0).max(1));
        }
    }
    Ok(Outcome {
        connect_ms: 0.0,
        slowest_ack_ms: 0.0,
        all_live_ms: None,
        stats_back_ms: None,
        live,
        published,
        classes,
        bad,
        errors,
        events_before: 0,
        heads_ms: None,
        engine_cpu: None,
        bench_cpu: None,
        engine_resets: None,
        engine_gaps: None,
        engine_replayed: None,
    })
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "never".to_owned(), |v| format!("{v:.1} ms"))
}

fn text(args: &StormArgs, c: &Conditions, o: &Outcome) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "storm: {} SSE subscribers on topic {:?} from {} client process(es), {} events/s",
        args.conns, args.topic, args.procs, args.rate
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
    let _ = writeln!(
        out,
        "  slowest acknowledgement of a publish: {:.1} ms",
        o.slowest_ack_ms
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
    let count = |v: Option<i64>| v.map_or_else(|| "unknown".to_owned(), |v| v.to_string());
    let _ = writeln!(
        out,
        "  engine counters over the run: resets {}, replay gaps {}, events replayed {}",
        count(o.engine_resets),
        count(o.engine_gaps),
        count(o.engine_replayed)
    );
    let classes: Vec<String> = CLASSES.iter().map(|&k| format!("{k} {}", o.class(k))).collect();
    let _ = writeln!(
        out,
        "  events published: {}; subscribers by outcome: {}",
        o.published,
        classes.join(", ")
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
    procs: usize,
    sources: u32,
    rate: f64,
    pause_ms: u64,
    connect_ms: f64,
    slowest_ack_ms: f64,
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
    /// Subscribers whose ids were exactly the published sequence (class `whole`).
    verified: u64,
    /// Subscribers per outcome: whole, reset, gap, hole, disorder, short.
    classes: &'a BTreeMap<&'static str, u64>,
    engine_resets: Option<i64>,
    engine_replay_gaps: Option<i64>,
    engine_replayed: Option<i64>,
    failures: &'a BTreeMap<String, u64>,
    bad: &'a [String],
    conditions: serde_json::Value,
}

fn json(args: &StormArgs, c: &Conditions, o: &Outcome) -> String {
    let report = Json {
        subcommand: "storm",
        conns: args.conns,
        procs: args.procs,
        sources: args.sources,
        rate: args.rate,
        pause_ms: args.pause_ms,
        connect_ms: o.connect_ms,
        slowest_ack_ms: o.slowest_ack_ms,
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
        verified: o.class("whole"),
        classes: &o.classes,
        engine_resets: o.engine_resets,
        engine_replay_gaps: o.engine_gaps,
        engine_replayed: o.engine_replayed,
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
3c\r\nevent: ringcast.gap\ndata: {\"dropped\":1}\n\nid: e1-42\ndata: x\n\n\r\n\
5e\r\nevent: ringcast.gap\ndata: {\"topic\":null,\"dropped\":null,\"first_id\":\"e1-43\",\"last_id\":\"e1-45\"}\n\n\r\n\
53\r\nid: e1-40\nevent: ringcast.reset\ndata: {\"reason\":\"expired\",\"last_event_id\":\"e1-2\"}\n\n\r\n";

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
                Found::Gap(None),
                Found::Event { epoch: e, seq: 42 },
                Found::Gap(Some((43, 45))),
                Found::Reset,
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

    fn class(got: &[u64], marks: &[(usize, Mark)], published: &[u64]) -> Class {
        classify(got, &vec![7; got.len()], marks, published)
    }

    #[test]
    fn classify_tells_whole_reset_gap_hole_disorder_and_short_apart() {
        let published: Vec<u64> = (5..=12).collect();
        assert_eq!(class(&[6, 7, 8, 9, 10, 11, 12], &[], &published), Class::Whole);
        let reset = [(2, Mark::Reset)];
        assert_eq!(
            class(&[6, 7, 10, 11, 12], &reset, &published),
            Class::Reset,
            "forward"
        );
        assert_eq!(
            class(&[6, 7, 5, 6, 7, 8, 9, 10, 11, 12], &reset, &published),
            Class::Reset,
            "back"
        );
        let gap = [(2, Mark::Gap(Some((8, 9))))];
        assert_eq!(class(&[6, 7, 10, 11, 12], &gap, &published), Class::Gap);
        let unnamed = [(2, Mark::Gap(None))];
        assert_eq!(class(&[6, 7, 10, 11, 12], &unnamed, &published), Class::Gap);
        let narrow = [(2, Mark::Gap(Some((8, 8))))];
        assert!(
            matches!(class(&[6, 7, 10, 11, 12], &narrow, &published), Class::Hole(w) if w.contains("missed 8..=9"))
        );
        assert!(matches!(
            class(&[6, 7, 10, 11, 12], &[], &published),
            Class::Hole(_)
        ));
        let late = [(3, Mark::Reset)];
        assert!(
            matches!(class(&[6, 7, 10, 11, 12], &late, &published), Class::Hole(_)),
            "a notice after the jump does not excuse it"
        );
        assert!(matches!(
            class(&[6, 7, 7, 8, 9, 10, 11, 12], &[], &published),
            Class::Disorder(_)
        ));
        assert!(matches!(
            class(&[6, 8, 7], &[(1, Mark::Gap(None))], &published),
            Class::Disorder(_)
        ));
        assert!(matches!(class(&[6, 7, 8], &[], &published), Class::Short(w) if w.contains("last 4")));
        assert!(matches!(class(&[], &[], &published), Class::Short(_)));
        assert!(matches!(class(&[99], &[], &published), Class::Disorder(_)));
        let two_epochs = classify(&[6, 7, 8, 9, 10, 11, 12], &[1, 1, 2, 2, 2, 2, 2], &[], &published);
        assert!(matches!(two_epochs, Class::Disorder(w) if w.contains("epoch")));
        let with_reset = classify(
            &[6, 7, 8, 9, 10, 11, 12],
            &[1, 1, 2, 2, 2, 2, 2],
            &[(2, Mark::Reset)],
            &published,
        );
        assert_eq!(with_reset, Class::Reset, "a reset announces the new epoch");
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
