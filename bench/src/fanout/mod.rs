//! The `fanout` subcommand: how fast one topic's events reach K subscribers that keep
//! up, with and without S slow subscribers on the same topic, against the kernel-only
//! baseline of the same work.
//!
//! Sequence: open K fast SSE subscribers (read by epoll threads, [`readers`]) on the
//! topic; wait until the engine counts them; per phase (without slow readers, then with
//! S of them when `--compare`, else one phase as asked) publish `--warmup` events not
//! measured, then `--runs` runs of `--events` events of `--bytes` bytes through the
//! ingest socket, pipelined ([`publish`]). A run lasts from its first publish to the
//! last event a fast reader receives; it reports events/s fully fanned out, deliveries/s,
//! latency percentiles from publish to receipt (hdrhistogram), what the fast readers were
//! told they missed, and CPU time of the engine and of this tool. Phases report the
//! median and spread over runs and the ratio of their medians.
//!
//! `--topics T` spreads the subscribers over T topics (subscriber k reads topic k % T)
//! and the events likewise (event i goes to topic i % T). `--rate R` paces the measured
//! runs at R events/s (`--duration D` seconds each) and stamps every event with its
//! scheduled publish time, so latency counts any stall of the publisher or the engine
//! instead of hiding it (coordinated omission); without it a run publishes as fast as
//! the engine acknowledges, `--window` events ahead of the slowest subscriber at most.
//!
//! `--kernel-baseline` replaces the engine by [`publish::Baseline`]: the same readers,
//! the same bytes, written by a trivial loop to K accepted loopback sockets.
//!
//! `--fast` may list several K (`1000,5000,10000`): each is measured in turn, as above,
//! against the same engine; between two, every subscriber of the previous one is closed
//! and the engine's `open_sse` gauge is waited back down. The report then has
//! deliveries/s and latency against K, and `--out DIR` a chart of each.
//!
//! Every wait is bounded: a run ends when all deliveries arrived or when none arrived for
//! [`IDLE_END`] (reported as incomplete), and gives up after `--timeout-secs`.

pub mod publish;
pub mod readers;
pub mod scan;
pub mod sys;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::conditions::Conditions;
use crate::engine_args::EngineArgs;
use publish::{Baseline, Publisher};
use readers::{Readers, Totals};

/// A run with no new delivery for this long is over, complete or not.
const IDLE_END: Duration = Duration::from_secs(3);
/// Bound on waiting for the engine to count every subscriber.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(30);

/// Arguments of `ringcast-bench fanout`.
#[derive(clap::Args, Debug, Clone)]
pub struct FanoutArgs {
    /// The engine under test.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// The topic every subscriber reads and every event goes to; with `--topics T` above
    /// 1, the prefix of topics `<topic>-0` ..= `<topic>-(T-1)`.
    #[arg(long, default_value = "fanout")]
    pub topic: String,
    /// Topics: subscriber `k` reads topic `k % T`, event `i` goes to topic `i % T`, so
    /// each event reaches about N / T subscribers.
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// Events per second over all topics, each stamped with its scheduled publish time
    /// so that a stall of the publisher or the engine is not hidden (coordinated
    /// omission); 0: as fast as the engine acknowledges, within `--window`.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// With `--rate`: seconds per measured run (events per run = rate x duration,
    /// instead of `--events`).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Fast subscribers: read continuously. A comma-separated list (`1000,5000,10000`)
    /// measures each count in turn against the same engine.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    pub fast: Vec<usize>,
    /// Slow subscribers: `SO_RCVBUF` of `--slow-rcvbuf` set before connecting, never read.
    #[arg(long, default_value_t = 0)]
    pub slow: usize,
    /// Receive buffer of a slow subscriber, bytes (the kernel doubles it).
    #[arg(long, default_value_t = 4096)]
    pub slow_rcvbuf: u32,
    /// With `--slow`: measure first without the slow subscribers, then with them, and
    /// report the ratio of the two medians.
    #[arg(long)]
    pub compare: bool,
    /// Events per measured run.
    #[arg(long, default_value_t = 10_000)]
    pub events: u64,
    /// Payload bytes per event (at least 40: the timestamp and index).
    #[arg(long, default_value_t = 1024)]
    pub bytes: usize,
    /// `PUB` commands per write to the ingest socket (two writes in flight at most).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Measured runs per phase.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Events published, not measured, before each phase's runs (they fill the slow
    /// subscribers' buffers and queues).
    #[arg(long, default_value_t = 5_000)]
    pub warmup: u64,
    /// Reader threads for the fast subscribers.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Events the source may be ahead of the slowest fast subscriber (its events
    /// received plus those its gap notices counted); 0: no limit, publish as fast as the
    /// engine acknowledges. The default keeps a subscriber's backlog (~140 KiB of 1 KiB
    /// events) under the engine's 256 KiB queue limit, so a fast subscriber that keeps up
    /// is never dropped from.
    #[arg(long, default_value_t = 128)]
    pub window: u64,
    /// Count events whose id does not increase on their stream.
    #[arg(long)]
    pub verify: bool,
    /// Measure the kernel-only baseline instead of the engine.
    #[arg(long)]
    pub kernel_baseline: bool,
    /// Sender threads of the kernel baseline (give it the engine's `--loops`).
    #[arg(long, default_value_t = 2)]
    pub baseline_senders: usize,
    /// Events the kernel baseline writes to a socket per `write` (the engine gathers up
    /// to 64 events per `sendmsg`); 1: one write per event per socket.
    #[arg(long, default_value_t = 64)]
    pub baseline_batch: usize,
    /// Bound on one run, seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write the results into this directory: `fanout-<date>.json`, `.md` and SVG
    /// charts (latency CDF per phase, deliveries/s and latency against the fast count).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// What one run measured.
#[derive(Debug, Clone)]
struct Run {
    /// From the first publish to the last event received.
    secs: f64,
    /// From the first publish to the last acknowledgement (baseline: last write).
    publish_secs: f64,
    /// What the fast readers got during the run.
    got: Totals,
    expected: u64,
    latency: Histogram<u64>,
    engine_cpu_secs: Option<f64>,
    bench_cpu_secs: Option<f64>,
}

impl Run {
    fn events_per_sec(&self, events: u64) -> f64 {
        events as f64 / self.secs
    }
}

/// Every phase measured with one count of fast subscribers.
struct Set {
    fast: usize,
    phases: Vec<Phase>,
    /// The first reader error, if any.
    error: Option<String>,
}

/// One phase: its slow subscribers, its runs, the engine's counters across it.
struct Phase {
    slow: usize,
    /// At the end of the phase: the engine's `VmRSS` and the kernel's TCP buffer
    /// memory (all sockets of the machine), KiB.
    engine_rss_kib: Option<u64>,
    tcp_mem_kib: Option<u64>,
    warmup: Option<Run>,
    runs: Vec<Run>,
    counters: BTreeMap<String, i64>,
}

/// Runs `ringcast-bench fanout`.
pub fn main(args: FanoutArgs) -> ExitCode {
    crate::report::finish("fanout", run(&args))
}

/// Where events come from.
enum Source {
    Engine { publisher: Publisher, next: u64 },
    Baseline { baseline: Baseline, next: u64 },
}

fn run(args: &FanoutArgs) -> Result<(String, bool), String> {
    check_args(args)?;
    crate::sys::raise_nofile().map_err(|e| format!("raise RLIMIT_NOFILE: {e}"))?;
    let base = Instant::now();
    let conditions = Conditions::collect(args.engine.pid().unwrap_or_else(std::process::id));
    let admin = (!args.kernel_baseline && args.engine.admin != "none").then(|| args.engine.admin.clone());
    let open_before = admin.as_deref().and_then(totals).map(|t| t["open_sse"]);
    let mut sets = Vec::new();
    for (i, &fast) in args.fast.iter().enumerate() {
        if let (true, Some(admin), Some(open)) = (i > 0, &admin, open_before) {
            wait_open_at_most(admin, open)?;
        }
        sets.push(measure_set(args, admin.as_deref(), base, fast)?);
    }
    let complete = sets.iter().all(|set| {
        set.error.is_none()
            && set
                .phases
                .iter()
                .flat_map(|p| &p.runs)
                .all(|r| r.got.events + r.got.dropped >= r.expected)
    });
    let mut text = if args.json {
        format!("{}\n", json(args, &conditions, &sets))
    } else {
        report(args, &conditions, &sets)
    };
    if let Some(dir) = &args.out {
        let written = write_out(dir, args, &conditions, &sets)?;
        let listing = crate::output::written_text(&written);
        if args.json {
            eprint!("{listing}");
        } else {
            text.push_str(&listing);
        }
    }
    Ok((text, complete))
}

/// Opens `fast` subscribers (and each phase's slow ones), measures every phase, and
/// closes them all.
fn measure_set(args: &FanoutArgs, admin: Option<&str>, base: Instant, fast: usize) -> Result<Set, String> {
    let streams_before = admin.and_then(totals).map_or(0, |t| t["streams"]);
    let (target, acceptor) = if args.kernel_baseline {
        let (addr, acceptor) =
            publish::baseline_listen(fast).map_err(|e| format!("baseline listener: {e}"))?;
        (addr, Some(acceptor))
    } else {
        (resolve(&args.engine.target)?, None)
    };
    let topics = topic_names(args);
    let mut fast_fds = Vec::with_capacity(fast);
    for (topic, &n) in topics.iter().zip(&subscribers_per_topic(fast, topics.len())) {
        fast_fds.extend(open_fast(topic, n as usize, target)?);
    }
    let mut src = match acceptor {
        Some(acceptor) => {
            let accepted = acceptor
                .join()
                .map_err(|_| "the baseline acceptor panicked".to_owned())?
                .map_err(|e| format!("baseline accept: {e}"))?;
            Source::Baseline {
                baseline: Baseline::new(accepted, args.baseline_senders),
                next: 0,
            }
        }
        None => Source::Engine {
            publisher: Publisher::connect(&args.engine.ingest).map_err(|e| e.to_string())?,
            next: 0,
        },
    };
    let readers =
        Readers::start(fast_fds, args.threads, base, args.verify).map_err(|e| format!("readers: {e}"))?;
    if let Some(admin) = admin {
        wait_streams(admin, streams_before + fast as i64)?;
    }
    let mut phases = Vec::new();
    let plan: Vec<usize> = match (args.compare, args.slow) {
        (true, s) if s > 0 => vec![0, s],
        (_, s) => vec![s],
    };
    let mut slow_held: Vec<TcpStream> = Vec::new();
    for slow in plan {
        while slow_held.len() < slow {
            slow_held.push(open_slow(&topic_names(args)[0], args.slow_rcvbuf, target)?);
        }
        if let Some(admin) = admin {
            wait_streams(admin, streams_before + (fast + slow) as i64)?;
        }
        phases.push(measure_phase(args, &mut src, &readers, admin, base, fast, slow)?);
    }
    let error = readers.first_error();
    readers.stop();
    drop(slow_held);
    Ok(Set { fast, phases, error })
}

fn check_args(args: &FanoutArgs) -> Result<(), String> {
    if args.bytes < 40 {
        return Err(format!(
            "--bytes {} is below 40, the timestamp and index",
            args.bytes
        ));
    }
    if args.fast.is_empty() || args.fast.contains(&0) || args.events == 0 || args.runs == 0 {
        return Err("--fast (each count), --events and --runs must be at least 1".into());
    }
    if args.kernel_baseline && args.topics > 1 {
        return Err("--kernel-baseline writes one topic: no --topics".into());
    }
    if args.rate < 0.0 || args.duration.is_some_and(|d| d <= 0.0 || args.rate == 0.0) {
        return Err("--rate must be positive, and --duration (positive) needs --rate".into());
    }
    if args.kernel_baseline && args.slow > 0 {
        return Err(
            "--slow with --kernel-baseline: the baseline's blocking writes would stall on them".into(),
        );
    }
    Ok(())
}

pub fn resolve(target: &str) -> Result<SocketAddrV4, String> {
    target
        .to_socket_addrs()
        .map_err(|e| format!("--target {target}: {e}"))?
        .find_map(|a| match a {
            SocketAddr::V4(v4) => Some(v4),
            SocketAddr::V6(_) => None,
        })
        .ok_or_else(|| format!("--target {target}: no IPv4 address"))
}

/// The SSE request of a subscriber to `topic`.
pub fn request(topic: &str, target: SocketAddrV4) -> String {
    format!("GET /sse?topic={topic} HTTP/1.1\r\nHost: {target}\r\nAccept: text/event-stream\r\n\r\n")
}

/// The topics of a run: `--topic` alone, or `<topic>-0` ..= `<topic>-(T-1)`.
fn topic_names(args: &FanoutArgs) -> Vec<String> {
    match args.topics {
        0 | 1 => vec![args.topic.clone()],
        t => (0..t).map(|i| format!("{}-{i}", args.topic)).collect(),
    }
}

/// Subscribers of each topic when subscriber `k` reads topic `k % topics`.
fn subscribers_per_topic(fast: usize, topics: usize) -> Vec<u64> {
    (0..topics)
        .map(|t| (fast / topics + usize::from(t < fast % topics)) as u64)
        .collect()
}

/// Deliveries owed for events `first..first + events` when event `i` goes to topic
/// `i % subs.len()` and `subs[t]` subscribers read topic `t`.
fn expected_deliveries(first: u64, events: u64, subs: &[u64]) -> u64 {
    let t = subs.len() as u64;
    (0..t)
        .map(|topic| {
            // Events i in first..first+events with i % t == topic.
            let count = |end: u64| end / t + u64::from(end % t > topic);
            subs[topic as usize] * (count(first + events) - count(first))
        })
        .sum()
}

/// Deliveries per event: the subscribers of one topic, on average.
fn per_event(args: &FanoutArgs, fast: usize) -> f64 {
    fast as f64 / args.topics.max(1) as f64
}

/// `topic fanout` or `8 topics fanout-0..fanout-7`.
fn topics_text(args: &FanoutArgs) -> String {
    match args.topics {
        0 | 1 => format!("topic {}", args.topic),
        t => format!("{t} topics {0}-0..{0}-{1}", args.topic, t - 1),
    }
}

/// `, paced at R events/s` or nothing.
fn pace_text(args: &FanoutArgs) -> String {
    if args.rate > 0.0 {
        format!(
            ", paced at {} events/s (latency from each event's scheduled time)",
            args.rate
        )
    } else {
        String::new()
    }
}

/// Events per measured run: `--rate x --duration` when paced, else `--events`.
fn events_per_run(args: &FanoutArgs) -> u64 {
    match (args.rate > 0.0, args.duration) {
        (true, Some(secs)) => ((args.rate * secs).round() as u64).max(1),
        _ => args.events,
    }
}

/// Connects `fast` subscribers to `topic` (blocking connects, then the request).
pub fn open_fast(topic: &str, fast: usize, target: SocketAddrV4) -> Result<Vec<OwnedFd>, String> {
    let req = request(topic, target);
    (0..fast)
        .map(|i| {
            let mut s = TcpStream::connect(target)
                .map_err(|e| format!("fast subscriber {i}: connect {target}: {e}"))?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            s.write_all(req.as_bytes())
                .map_err(|e| format!("fast subscriber {i}: send the request: {e}"))?;
            Ok(OwnedFd::from(s))
        })
        .collect()
}

/// Connects one slow subscriber with `SO_RCVBUF` of `rcvbuf` and sends its request.
pub fn open_slow(topic: &str, rcvbuf: u32, target: SocketAddrV4) -> Result<TcpStream, String> {
    let fd = sys::connect_with_rcvbuf(target, rcvbuf).map_err(|e| format!("slow subscriber: {e}"))?;
    let mut s = TcpStream::from(fd);
    s.write_all(request(topic, target).as_bytes())
        .map_err(|e| format!("slow subscriber: send the request: {e}"))?;
    Ok(s)
}

/// The engine's `/stats` totals, or `None` if the admin address does not answer.
pub fn totals(admin: &str) -> Option<BTreeMap<String, i64>> {
    let mut conn = TcpStream::connect(admin).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    conn.write_all(b"GET /stats HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    let body = text.split_once("\"totals\":{")?.1;
    let body = body.split_once('}')?.0;
    Some(
        body.split(',')
            .filter_map(|pair| {
                let (name, value) = pair.split_once(':')?;
                Some((name.trim_matches('"').to_owned(), value.trim().parse().ok()?))
            })
            .collect(),
    )
}

/// Waits until the engine's `open_sse` gauge is at most `want` (the subscribers of a
/// previous set are closed).
fn wait_open_at_most(admin: &str, want: i64) -> Result<(), String> {
    let deadline = Instant::now() + SUBSCRIBE_WAIT;
    loop {
        let now = totals(admin).ok_or_else(|| format!("no /stats at --admin {admin}"))?["open_sse"];
        if now <= want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the engine still has {now} SSE streams open, {want} before, {SUBSCRIBE_WAIT:?} after closing them"
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the engine's `streams` counter reaches `want`.
pub fn wait_streams(admin: &str, want: i64) -> Result<(), String> {
    let deadline = Instant::now() + SUBSCRIBE_WAIT;
    loop {
        let now = totals(admin)
            .ok_or_else(|| format!("no /stats at --admin {admin} (pass --admin none to skip)"))?["streams"];
        if now >= want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the engine counts {now} streams of {want} after {SUBSCRIBE_WAIT:?}"
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn measure_phase(
    args: &FanoutArgs,
    src: &mut Source,
    readers: &Readers,
    admin: Option<&str>,
    base: Instant,
    fast: usize,
    slow: usize,
) -> Result<Phase, String> {
    let before = admin.and_then(totals);
    let warmup = if args.warmup > 0 {
        Some(one_run(args, src, readers, base, fast, args.warmup, 0.0)?)
    } else {
        None
    };
    let mut runs = Vec::new();
    for _ in 0..args.runs {
        runs.push(one_run(
            args,
            src,
            readers,
            base,
            fast,
            events_per_run(args),
            args.rate,
        )?);
    }
    let after = admin.and_then(totals);
    Ok(Phase {
        slow,
        engine_rss_kib: args
            .engine
            .pid()
            .and_then(|pid| crate::procfs::Snapshot::read(pid).ok())
            .map(|s| s.rss_kb),
        tcp_mem_kib: tcp_mem_kib(),
        warmup,
        runs,
        counters: counter_deltas(before, after),
    })
}

/// The engine counters that tell what happened to slow subscribers, as deltas from
/// `before` to `after`, and `open`, a gauge, as it is `after`: slow subscribers the
/// engine closed (stalled, TCP_USER_TIMEOUT on a zero window) are no longer there.
pub fn counter_deltas(
    before: Option<BTreeMap<String, i64>>,
    after: Option<BTreeMap<String, i64>>,
) -> BTreeMap<String, i64> {
    const DELTAS: [&str; 8] = [
        "deliveries",
        "dropped",
        "coalesced",
        "slow_disconnected",
        "slow_closed",
        "ring_lost",
        "stalled",
        "tcp_timeouts",
    ];
    match (before, after) {
        (Some(b), Some(a)) => a
            .iter()
            .filter(|(name, _)| DELTAS.contains(&name.as_str()) || name.as_str() == "open")
            .map(|(name, &v)| {
                let delta = if name == "open" {
                    0
                } else {
                    b.get(name).copied().unwrap_or(0)
                };
                (name.clone(), v - delta)
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// Publishes `events` events and waits until the fast readers have them all (or no more
/// arrive for [`IDLE_END`]).
/// One run of `events` events: paced at `rate` events/s (stamped with their scheduled
/// times), or with `rate` 0 as fast as the engine acknowledges within `--window`.
fn one_run(
    args: &FanoutArgs,
    src: &mut Source,
    readers: &Readers,
    base: Instant,
    fast: usize,
    events: u64,
    rate: f64,
) -> Result<Run, String> {
    let topics = topic_names(args);
    let subs = subscribers_per_topic(fast, topics.len());
    // Paced events are numbered from 0 on every run (event i on topic i % T); the
    // others continue the numbering of the runs before.
    let first = match src {
        _ if rate > 0.0 => 0,
        Source::Engine { next, .. } | Source::Baseline { next, .. } => *next,
    };
    let expected = expected_deliveries(first, events, &subs);
    let start_totals = readers.totals();
    let _ = readers.take_latencies();
    let cpu_before = (args.engine.pid().and_then(cpu_secs), cpu_secs(std::process::id()));
    // A subscriber reads about one event in `topics`: its progress is compared with
    // its share of the events published so far.
    let per_topic = topics.len() as u64;
    let gate = |end: u64| wait_window(readers, args.window, end / per_topic);
    let t0 = Instant::now();
    match src {
        Source::Engine { publisher, next } if rate > 0.0 => {
            publisher.publish_paced(&topics, events, args.bytes, rate, base)?;
            *next += events;
        }
        Source::Engine { publisher, next } => {
            publisher.publish(&topics, *next, events, args.bytes, args.batch, base, &gate)?;
            *next += events;
        }
        Source::Baseline { baseline, next } if rate > 0.0 => {
            baseline.send_paced(*next, events, args.bytes, rate, base)?;
            *next += events;
        }
        Source::Baseline { baseline, next } => {
            baseline.send(*next, events, args.bytes, args.baseline_batch, base, &gate)?;
            *next += events;
        }
    }
    let publish_secs = t0.elapsed().as_secs_f64();
    let deadline = t0 + Duration::from_secs(args.timeout_secs);
    let mut last = (readers.totals(), Instant::now());
    loop {
        let now = readers.totals();
        let done = now.events - start_totals.events + now.dropped - start_totals.dropped;
        if done >= expected || Instant::now() >= deadline || last.1.elapsed() >= IDLE_END {
            break;
        }
        if now != last.0 {
            last = (now, Instant::now());
        }
        thread::sleep(Duration::from_millis(2));
    }
    let end_ns = readers.last_event_ns();
    let t0_ns = t0.duration_since(base).as_nanos() as u64;
    let secs = (end_ns.saturating_sub(t0_ns) as f64 / 1e9)
        .max(publish_secs)
        .max(1e-9);
    let now = readers.totals();
    let cpu = |before: Option<f64>, pid: Option<u32>| Some(cpu_secs(pid?)? - before?);
    Ok(Run {
        secs,
        publish_secs,
        got: diff(&now, &start_totals),
        expected,
        latency: readers.take_latencies(),
        engine_cpu_secs: cpu(cpu_before.0, args.engine.pid()),
        bench_cpu_secs: cpu(cpu_before.1, Some(std::process::id())),
    })
}

/// Waits until the slowest fast subscriber is within `window` events of `end`.
///
/// # Errors
/// If it makes no progress for [`IDLE_END`].
fn wait_window(readers: &Readers, window: u64, end: u64) -> Result<(), String> {
    if window == 0 {
        return Ok(());
    }
    let need = end.saturating_sub(window);
    let mut last = (readers.min_progress(), Instant::now());
    loop {
        let now = readers.min_progress();
        if now >= need {
            return Ok(());
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= IDLE_END {
            return Err(format!(
                "the slowest fast subscriber is stuck at {now} events for {IDLE_END:?} (waiting for {need})"
            ));
        }
        // Sleep rather than spin: on a small machine the readers need this core.
        thread::sleep(Duration::from_micros(100));
    }
}

fn diff(a: &Totals, b: &Totals) -> Totals {
    Totals {
        events: a.events - b.events,
        gaps: a.gaps - b.gaps,
        dropped: a.dropped - b.dropped,
        disorder: a.disorder - b.disorder,
        notices: a.notices - b.notices,
        closed: a.closed - b.closed,
        bytes: a.bytes - b.bytes,
    }
}

/// The kernel's TCP buffer memory (`mem` of `TCP:` in `/proc/net/sockstat`, pages of
/// 4 KiB), in KiB.
fn tcp_mem_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace().skip_while(|&w| w != "mem");
    Some(words.nth(1)?.parse::<u64>().ok()? * 4)
}

/// User + system CPU seconds of process `pid`, from `/proc/<pid>/stat`.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / sys::clock_ticks() as f64)
}

/// The median and the extremes of `values`.
fn median_spread(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    (median, values[0], values[n - 1])
}

fn latency_text(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".into();
    }
    let q = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} samples)",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        h.max() as f64 / 1000.0,
        h.len()
    )
}

fn run_text(args: &FanoutArgs, label: &str, r: &Run, events: u64) -> String {
    let cpu = |c: Option<f64>| c.map_or("n/a".to_owned(), |c| format!("{:.0}%", 100.0 * c / r.secs));
    format!(
        "    {label}: {:.0} events/s fanned out, {:.2} M deliveries/s ({:.0} MB/s read), publish {:.0} events/s; \
         {}/{} delivered, {} gap notices ({} dropped), {} out of order, {} closed; latency {}; CPU engine {} bench {}\n",
        r.events_per_sec(events),
        r.got.events as f64 / r.secs / 1e6,
        r.got.bytes as f64 / r.secs / 1e6,
        events as f64 / r.publish_secs,
        r.got.events,
        r.expected,
        r.got.gaps,
        r.got.dropped,
        if args.verify {
            r.got.disorder.to_string()
        } else {
            "unchecked".into()
        },
        r.got.closed,
        latency_text(&r.latency),
        cpu(r.engine_cpu_secs),
        cpu(r.bench_cpu_secs),
    )
}

fn report(args: &FanoutArgs, c: &Conditions, sets: &[Set]) -> String {
    let mut out = String::new();
    for set in sets {
        set_report(&mut out, args, set);
    }
    let _ = writeln!(out, "{}", c.text("  ", "engine"));
    out
}

/// The median events/s of a phase's runs, with the lowest and highest.
fn phase_rate(args: &FanoutArgs, p: &Phase) -> (f64, f64, f64) {
    let mut rates: Vec<f64> = p
        .runs
        .iter()
        .map(|r| r.events_per_sec(events_per_run(args)))
        .collect();
    median_spread(&mut rates)
}

/// The latencies of every measured run of a phase.
fn phase_latency(p: &Phase) -> Histogram<u64> {
    let mut merged = readers::new_histogram();
    for r in &p.runs {
        let _ = merged.add(&r.latency);
    }
    merged
}

fn set_report(out: &mut String, args: &FanoutArgs, set: &Set) {
    let (phases, error) = (&set.phases, set.error.as_deref());
    let what = if args.kernel_baseline {
        format!(
            "kernel baseline ({} sender threads, {} events per write)",
            args.baseline_senders, args.baseline_batch
        )
    } else {
        format!(
            "engine at {}, {}{}",
            args.engine.target,
            topics_text(args),
            pace_text(args)
        )
    };
    let _ = writeln!(
        out,
        "ringcast-bench fanout: {what}; {} fast subscribers ({} reader threads), {} events of {} B per run, \
         {} runs per phase after {} warm-up events, window {}",
        set.fast,
        args.threads,
        events_per_run(args),
        args.bytes,
        args.runs,
        args.warmup,
        if args.window == 0 {
            "none (as fast as acknowledged)".to_owned()
        } else {
            format!("{} events", args.window)
        }
    );
    let mut medians = Vec::new();
    for p in phases {
        let _ = writeln!(
            out,
            "  phase: {} slow subscribers (SO_RCVBUF {}, never read)",
            p.slow, args.slow_rcvbuf
        );
        if let Some(w) = &p.warmup {
            out.push_str(&run_text(args, "warm-up", w, args.warmup));
        }
        for (i, r) in p.runs.iter().enumerate() {
            out.push_str(&run_text(
                args,
                &format!("run {}", i + 1),
                r,
                events_per_run(args),
            ));
        }
        let (median, lo, hi) = phase_rate(args, p);
        let merged = phase_latency(p);
        let _ = writeln!(
            out,
            "    median {median:.0} events/s ({:.2} M deliveries/s), spread {lo:.0}..{hi:.0} over {} runs; \
             latency over all runs {}",
            median * per_event(args, set.fast) / 1e6,
            p.runs.len(),
            latency_text(&merged)
        );
        if !p.counters.is_empty() {
            let _ = writeln!(
                out,
                "    engine counters over the phase (open: at its end): {:?}",
                p.counters
            );
        }
        let kib = |v: Option<u64>| v.map_or("n/a".to_owned(), |v| format!("{v} KiB"));
        let _ = writeln!(
            out,
            "    at the end: engine VmRSS {}, kernel TCP memory (whole machine) {}",
            kib(p.engine_rss_kib),
            kib(p.tcp_mem_kib)
        );
        medians.push((p.slow, median));
    }
    if let [(0, without), (slow, with)] = medians[..] {
        let _ = writeln!(
            out,
            "  ratio with {slow} slow subscribers / without: {:.3} ({with:.0} / {without:.0} events/s)",
            with / without
        );
    }
    if let Some(e) = error {
        let _ = writeln!(out, "  reader error: {e}");
    }
}

fn run_json(r: &Run, events: u64) -> serde_json::Value {
    serde_json::json!({
        "secs": r.secs,
        "publish_secs": r.publish_secs,
        "events_per_sec": r.events_per_sec(events),
        "deliveries_per_sec": r.got.events as f64 / r.secs,
        "delivered": r.got.events,
        "expected": r.expected,
        "gap_notices": r.got.gaps,
        "dropped": r.got.dropped,
        "disorder": r.got.disorder,
        "closed": r.got.closed,
        "bytes_read": r.got.bytes,
        "latency": crate::output::latency_json(&r.latency),
        "engine_cpu_secs": r.engine_cpu_secs,
        "bench_cpu_secs": r.bench_cpu_secs,
    })
}

/// Every set, phase and run as one JSON object.
fn json(args: &FanoutArgs, c: &Conditions, sets: &[Set]) -> String {
    let sets: Vec<serde_json::Value> = sets
        .iter()
        .map(|set| {
            let phases: Vec<serde_json::Value> = set
                .phases
                .iter()
                .map(|p| {
                    let (median, lo, hi) = phase_rate(args, p);
                    serde_json::json!({
                        "slow": p.slow,
                        "median_events_per_sec": median,
                        "min_events_per_sec": lo,
                        "max_events_per_sec": hi,
                        "median_deliveries_per_sec": median * per_event(args, set.fast),
                        "latency": crate::output::latency_json(&phase_latency(p)),
                        "engine_counters": p.counters,
                        "engine_rss_kib": p.engine_rss_kib,
                        "tcp_mem_kib": p.tcp_mem_kib,
                        "warmup": p.warmup.as_ref().map(|w| run_json(w, args.warmup)),
                        "runs": p.runs.iter().map(|r| run_json(r, events_per_run(args))).collect::<Vec<_>>(),
                    })
                })
                .collect();
            serde_json::json!({ "fast": set.fast, "reader_error": set.error, "phases": phases })
        })
        .collect();
    serde_json::json!({
        "subcommand": "fanout",
        "target": if args.kernel_baseline { "kernel-baseline".to_owned() } else { args.engine.target.clone() },
        "topic": args.topic,
        "events": events_per_run(args),
        "topics": args.topics.max(1),
        "rate": args.rate,
        "bytes": args.bytes,
        "runs": args.runs,
        "warmup": args.warmup,
        "window": args.window,
        "threads": args.threads,
        "slow_rcvbuf": args.slow_rcvbuf,
        "sets": sets,
        "conditions": c.to_value(),
    })
    .to_string()
}

/// Writes the JSON, the Markdown tables and the charts into `dir`.
fn write_out(
    dir: &std::path::Path,
    args: &FanoutArgs,
    c: &Conditions,
    sets: &[Set],
) -> Result<Vec<PathBuf>, String> {
    use crate::output::{self, Chart, OutDir, Series};
    let out = OutDir::create(dir, OutDir::stem("fanout", c))?;
    let mut written = vec![out.write_json(&json(args, c, sets))?];
    written.push(out.write_markdown(&markdown(args, c, sets))?);
    let label = |fast: usize, slow: usize| format!("{fast} fast, {slow} slow");
    let cdf = Chart {
        title: "fanout: latency from publish to receipt (all measured runs)".into(),
        x_label: "latency, ms".into(),
        y_label: "fraction of deliveries at or below".into(),
        x_log: true,
        series: sets
            .iter()
            .flat_map(|set| {
                set.phases
                    .iter()
                    .map(|p| output::latency_cdf(&label(set.fast, p.slow), &phase_latency(p)))
            })
            .collect(),
    };
    if cdf.series.iter().any(|s| !s.points.is_empty()) {
        written.push(out.write_chart("latency-cdf", &cdf)?);
    }
    if sets.len() > 1 {
        let slows: Vec<usize> = sets[0].phases.iter().map(|p| p.slow).collect();
        let against_n = |f: &dyn Fn(&Set, &Phase) -> f64, what: &str| -> Vec<Series> {
            slows
                .iter()
                .enumerate()
                .map(|(i, slow)| Series {
                    label: format!("{what}, {slow} slow"),
                    points: sets
                        .iter()
                        .filter_map(|set| Some((set.fast as f64, f(set, set.phases.get(i)?))))
                        .collect(),
                })
                .collect()
        };
        let deliveries = Chart {
            title: "fanout: deliveries per second against N fast subscribers (median of runs)".into(),
            x_label: "fast subscribers N".into(),
            y_label: "deliveries per second".into(),
            x_log: false,
            series: against_n(
                &|set, p| phase_rate(args, p).0 * per_event(args, set.fast),
                "deliveries/s",
            ),
        };
        written.push(out.write_chart("deliveries-vs-n", &deliveries)?);
        let quantile =
            |q: f64| move |_: &Set, p: &Phase| phase_latency(p).value_at_quantile(q) as f64 / 1000.0;
        let mut latency = against_n(&quantile(0.5), "p50");
        latency.extend(against_n(&quantile(0.99), "p99"));
        let latency = Chart {
            title: "fanout: latency against N fast subscribers (all measured runs)".into(),
            x_label: "fast subscribers N".into(),
            y_label: "latency, ms".into(),
            x_log: false,
            series: latency,
        };
        written.push(out.write_chart("latency-vs-n", &latency)?);
    }
    Ok(written)
}

/// The results as Markdown: a summary table per phase, a table of every run, the
/// engine's counters, the conditions.
fn markdown(args: &FanoutArgs, c: &Conditions, sets: &[Set]) -> String {
    use crate::output::{conditions_markdown, fixed, markdown_table, quantile_ms};
    let mut md = String::from("# ringcast-bench fanout\n\n");
    let _ = writeln!(
        md,
        "{} on {}{}: {} events of {} B per run, {} runs per phase after {} warm-up events, \
         window {}, {} reader threads.\n",
        if args.kernel_baseline {
            "Kernel baseline".to_owned()
        } else {
            format!("Engine at {}", args.engine.target)
        },
        topics_text(args),
        pace_text(args),
        events_per_run(args),
        args.bytes,
        args.runs,
        args.warmup,
        args.window,
        args.threads
    );
    let mut summary = Vec::new();
    let mut runs = Vec::new();
    let mut counters = Vec::new();
    for set in sets {
        for p in &set.phases {
            let (median, lo, hi) = phase_rate(args, p);
            let h = phase_latency(p);
            let delivered: u64 = p.runs.iter().map(|r| r.got.events).sum();
            let expected: u64 = p.runs.iter().map(|r| r.expected).sum();
            let dropped: u64 = p.runs.iter().map(|r| r.got.dropped).sum();
            summary.push(vec![
                set.fast.to_string(),
                p.slow.to_string(),
                fixed(median, 0),
                fixed(median * per_event(args, set.fast) / 1e6, 3),
                format!("{}..{}", fixed(lo, 0), fixed(hi, 0)),
                quantile_ms(&h, 0.5),
                quantile_ms(&h, 0.9),
                quantile_ms(&h, 0.99),
                quantile_ms(&h, 0.999),
                quantile_ms(&h, 1.0),
                format!("{delivered}/{expected}"),
                dropped.to_string(),
            ]);
            for (i, r) in p.runs.iter().enumerate() {
                let cpu =
                    |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{:.0}%", 100.0 * v / r.secs));
                runs.push(vec![
                    set.fast.to_string(),
                    p.slow.to_string(),
                    (i + 1).to_string(),
                    fixed(r.events_per_sec(events_per_run(args)), 0),
                    fixed(r.got.events as f64 / r.secs / 1e6, 3),
                    format!("{}/{}", r.got.events, r.expected),
                    r.got.dropped.to_string(),
                    quantile_ms(&r.latency, 0.5),
                    quantile_ms(&r.latency, 0.99),
                    quantile_ms(&r.latency, 1.0),
                    cpu(r.engine_cpu_secs),
                    cpu(r.bench_cpu_secs),
                ]);
            }
            if !p.counters.is_empty() {
                let list: Vec<String> = p.counters.iter().map(|(k, v)| format!("{k} {v}")).collect();
                counters.push(vec![set.fast.to_string(), p.slow.to_string(), list.join(", ")]);
            }
        }
    }
    md.push_str("## Per phase (median over runs, latency over all runs, ms)\n\n");
    md.push_str(&markdown_table(
        &[
            "fast",
            "slow",
            "events/s",
            "M deliveries/s",
            "spread events/s",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "delivered",
            "told dropped",
        ],
        &summary,
    ));
    md.push_str("\n## Every run\n\n");
    md.push_str(&markdown_table(
        &[
            "fast",
            "slow",
            "run",
            "events/s",
            "M deliveries/s",
            "delivered",
            "told dropped",
            "p50 ms",
            "p99 ms",
            "max ms",
            "CPU engine",
            "CPU bench",
        ],
        &runs,
    ));
    if !counters.is_empty() {
        md.push_str("\n## Engine counters over each phase (open: at its end)\n\n");
        md.push_str(&markdown_table(&["fast", "slow", "counters"], &counters));
    }
    md.push_str("\n## Conditions\n\n");
    md.push_str(&conditions_markdown(c));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_deliveries_follow_the_topic_of_each_event() {
        // Brute force: event i to topic i % T, subs[t] readers of topic t.
        for fast in [1usize, 7, 10, 1000] {
            for topics in 1..=5usize {
                let subs = subscribers_per_topic(fast, topics);
                assert_eq!(subs.iter().sum::<u64>(), fast as u64);
                for first in 0..7u64 {
                    for events in 0..12u64 {
                        let brute: u64 = (first..first + events)
                            .map(|i| subs[(i % topics as u64) as usize])
                            .sum();
                        assert_eq!(
                            expected_deliveries(first, events, &subs),
                            brute,
                            "{fast} {topics} {first} {events}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn median_and_spread() {
        assert_eq!(median_spread(&mut [3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(median_spread(&mut [4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    }

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(cpu_secs(std::process::id()).is_some());
    }
}
