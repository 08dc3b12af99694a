//! The `backplane` subcommand: what the NATS JetStream backplane costs, in one run that
//! starts everything it measures (a nats-server with JetStream on a temporary store, and
//! ringcast nodes) and stops it at the end.
//!
//! 1. Throughput. Node A serves with `--backplane`; its stream's settings are copied to a
//!    second stream. For each window W: `--events` plain JetStream publishes of
//!    `--bytes` bytes through async-nats with at most W acknowledgements outstanding
//!    ([`raw`]), against the same events through node A's ingest socket with at most W
//!    `+OK`s outstanding ([`window`]), where `+OK` means JetStream stored the event.
//!    Acknowledged publishes per second, the median over `--runs` runs (the two sides
//!    alternate which goes first), and the ratio of the medians against the 0.8 target.
//! 2. Latency. Node B joins the same stream; node C serves alone without a backplane.
//!    For each subscriber count and rate: N SSE subscribers on B and a paced publisher on
//!    A (the event crosses JetStream), then the same on C alone (subscribers and
//!    publisher on one node). Each event carries its scheduled publish time (so a stall of
//!    the publisher is counted, not hidden), and every delivery's latency goes to an
//!    hdrhistogram ([`crate::fanout::readers`]).
//!
//! Every wait is bounded (`--timeout-secs` per measurement, [`IDLE_END`] without a
//! delivery), and every process started here is killed when its handle drops, on error
//! paths too.

pub mod procs;
pub mod raw;
pub mod window;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;

use crate::conditions::Conditions;
use crate::fanout::publish::Publisher;
use crate::fanout::readers::Readers;
use crate::output::{self, fixed, quantile_ms, Chart};
use procs::{Nats, Node};
use raw::Raw;

/// A latency cell with no new delivery for this long is over, complete or not.
const IDLE_END: Duration = Duration::from_secs(3);
/// The stream the nodes use (the engine's default) and the raw baseline's stream.
const STREAM: &str = "RINGCAST";
const RAW_STREAM: &str = "RAWBENCH";
/// The throughput topic, on both sides.
const TOPIC: &str = "bench";
/// The target: ringcast's acknowledged publishes/s over raw JetStream's.
const TARGET_RATIO: f64 = 0.8;
/// Events published before a latency cell is measured, so that the first deliveries do
/// not time a cold path.
const LATENCY_WARMUP: u64 = 20;

/// Arguments of `ringcast-bench backplane`.
#[derive(clap::Args, Debug, Clone)]
pub struct BackplaneArgs {
    /// The `ringcast` executable; default: the one beside this tool.
    #[arg(long)]
    pub engine_bin: Option<PathBuf>,
    /// `--loops` of every node.
    #[arg(long, default_value_t = 1)]
    pub loops: usize,
    /// `--backplane-publish` of nodes A and B: `batched` (atomic batches, synced) or
    /// `pipelined` (plain publishes, up to 1,000 in flight).
    #[arg(long, value_name = "MODE", default_value = "batched")]
    pub backplane_publish: String,
    /// Events per throughput run, at most.
    #[arg(long, default_value_t = 20_000)]
    pub events: u64,
    /// Events per throughput run at most W times this, so that a run at a small window
    /// (one round trip, or one JetStream batch commit, per W events) stays short.
    #[arg(long, default_value_t = 200)]
    pub events_per_window: u64,
    /// Payload bytes per event (at least 40 for the latency stamp).
    #[arg(long, default_value_t = 256)]
    pub bytes: usize,
    /// Publishes awaiting their acknowledgement at most, each measured in turn.
    #[arg(long, value_delimiter = ',', default_value = "1,32,256,1000")]
    pub windows: Vec<u64>,
    /// Throughput runs per window and side.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Events published on each side before the throughput runs, not measured.
    #[arg(long, default_value_t = 2_000)]
    pub warmup: u64,
    /// Subscriber counts of the latency cells.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    pub subscribers: Vec<usize>,
    /// Publish rates of the latency cells, events/s.
    #[arg(long, value_delimiter = ',', default_value = "100,200")]
    pub rates: Vec<f64>,
    /// Events per latency cell and round.
    #[arg(long, default_value_t = 500)]
    pub latency_events: u64,
    /// Rounds of each latency cell, merged (the two setups alternate which goes first).
    #[arg(long, default_value_t = 1)]
    pub latency_runs: usize,
    /// Bound on one measurement, seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write the results into this directory: `backplane-<date>.json`, `.md` and a
    /// latency CDF chart.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// One way of publishing the throughput runs' events.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Plain JetStream publishes, W acknowledgements outstanding: the baseline.
    Raw = 0,
    /// JetStream atomic batches of min(W, 1,000) messages, one in flight: the engine's
    /// kind of publish without the engine.
    Batches = 1,
    /// Node A's ingest socket, W `+OK`s outstanding.
    Ringcast = 2,
}

impl Side {
    const ALL: [Side; 3] = [Side::Raw, Side::Batches, Side::Ringcast];
}

/// Every side at one window: seconds per run, indexed by [`Side`].
struct Throughput {
    window: u64,
    events: u64,
    secs: [Vec<f64>; 3],
}

/// Where a latency cell's publisher and subscribers are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// Publisher on node A, subscribers on node B, both on the backplane.
    Cluster = 0,
    /// One node without a backplane.
    Single = 1,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Cluster => "cross-node (pub A -> JetStream -> subs B)",
            Setup::Single => "single node, no backplane",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Setup::Cluster => "cross_node",
            Setup::Single => "single_node",
        }
    }
}

/// One latency measurement.
struct Cell {
    setup: Setup,
    subscribers: usize,
    rate: f64,
    expected: u64,
    delivered: u64,
    gaps: u64,
    disorder: u64,
    /// The most an event was written after its scheduled time, ms.
    late_max_ms: f64,
    latency: Histogram<u64>,
    error: Option<String>,
}

/// Everything measured.
struct Outcome {
    nats_version: String,
    raw_config: String,
    throughput: Vec<Throughput>,
    cells: Vec<Cell>,
    /// Node A's backplane counters after the throughput runs (`/stats`).
    counters: std::collections::BTreeMap<String, i64>,
}

/// Runs `ringcast-bench backplane`.
pub fn main(args: BackplaneArgs) -> ExitCode {
    crate::report::finish("backplane", run(&args))
}

fn run(args: &BackplaneArgs) -> Result<(String, bool), String> {
    check_args(args)?;
    crate::sys::raise_nofile().map_err(|e| format!("raise RLIMIT_NOFILE: {e}"))?;
    let bin = engine_bin(args)?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let nats = Nats::start()?;
    let raw = Raw::connect(&nats.url(), Instant::now() + timeout)?;
    let a = Node::start(&bin, &node_flags(args, Some((&nats, "a"))))?;
    let conditions = Conditions::collect(a.pid());
    let raw_config = raw.create_like(STREAM, RAW_STREAM)?;
    let throughput = measure_throughput(args, &raw, &a)?;
    let counters = backplane_counters(&a.admin);
    let b = Node::start(&bin, &node_flags(args, Some((&nats, "b"))))?;
    let c = Node::start(&bin, &node_flags(args, None))?;
    let cells = measure_latency(args, &a, &b, &c)?;
    let outcome = Outcome {
        nats_version: nats.version.clone(),
        raw_config: format!(
            "storage {:?}, replicas {}, max_messages_per_subject {}, max_age {:?}, max_bytes {}, allow_direct {}, allow_atomic_publish {}",
            raw_config.storage,
            raw_config.num_replicas,
            raw_config.max_messages_per_subject,
            raw_config.max_age,
            raw_config.max_bytes,
            raw_config.allow_direct,
            raw_config.allow_atomic_publish
        ),
        throughput,
        cells,
        counters,
    };
    drop((a, b, c, raw, nats));
    let complete = outcome
        .cells
        .iter()
        .all(|c| c.error.is_none() && c.delivered == c.expected && c.disorder == 0);
    let mut text = if args.json {
        format!("{}\n", json(args, &conditions, &outcome))
    } else {
        text(args, &conditions, &outcome)
    };
    if let Some(dir) = &args.out {
        let written = write_out(dir, args, &conditions, &outcome)?;
        let listing = output::written_text(&written);
        if args.json {
            eprint!("{listing}");
        } else {
            text.push_str(&listing);
        }
    }
    Ok((text, complete))
}

fn check_args(args: &BackplaneArgs) -> Result<(), String> {
    if args.bytes < 40 {
        return Err(format!(
            "--bytes {} is below 40, the timestamp and index",
            args.bytes
        ));
    }
    if args.windows.is_empty() || args.windows.contains(&0) {
        return Err(format!(
            "--windows {:?}: give windows of at least 1",
            args.windows
        ));
    }
    if args.rates.iter().any(|r| !(*r > 0.0 && r.is_finite())) {
        return Err(format!("--rates {:?}: give rates above 0", args.rates));
    }
    if args.runs == 0 || args.events == 0 || args.latency_events == 0 || args.latency_runs == 0 {
        return Err("--runs, --events, --latency-events and --latency-runs must be at least 1".into());
    }
    Ok(())
}

/// `--engine-bin`, or `ringcast` beside this executable.
fn engine_bin(args: &BackplaneArgs) -> Result<PathBuf, String> {
    let bin = match &args.engine_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("this executable's path: {e}"))?
            .with_file_name("ringcast"),
    };
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "no ringcast executable at {}: cargo build --release --workspace, or pass --engine-bin",
            bin.display()
        ))
    }
}

/// A node's flags: its loops, and the backplane with its node id when it has one.
fn node_flags(args: &BackplaneArgs, backplane: Option<(&Nats, &str)>) -> Vec<String> {
    let mut flags = vec!["--loops".to_owned(), args.loops.to_string()];
    if let Some((nats, id)) = backplane {
        flags.extend([
            "--backplane".to_owned(),
            nats.url(),
            "--node-id".to_owned(),
            id.to_owned(),
            "--backplane-stream".to_owned(),
            STREAM.to_owned(),
            "--backplane-publish".to_owned(),
            args.backplane_publish.clone(),
        ]);
    }
    flags
}

/// The throughput runs: each window, `--runs` times, the three sides in an order that
/// rotates per run, so that none always meets a store another just grew.
fn measure_throughput(args: &BackplaneArgs, raw: &Raw, a: &Node) -> Result<Vec<Throughput>, String> {
    let timeout = Duration::from_secs(args.timeout_secs);
    let payload = Bytes::from(vec![b'x'; args.bytes]);
    let raw_subject = format!("{RAW_STREAM}.{TOPIC}");
    let node_a = |e: String| format!("{e}; node A: {}", a.stderr());
    let side = |which: Side, n: u64, w: u64| -> Result<f64, String> {
        let took = match which {
            Side::Raw => raw.publish(&raw_subject, n, &payload, w as usize, timeout)?,
            Side::Batches => raw.publish_batches(&raw_subject, n, &payload, w, timeout)?,
            Side::Ringcast => window::publish(&a.ingest, TOPIC, n, &payload, w, timeout).map_err(node_a)?,
        };
        Ok(took.as_secs_f64())
    };
    if args.warmup > 0 {
        for which in Side::ALL {
            side(which, args.warmup, 256)?;
        }
    }
    let mut out: Vec<Throughput> = args
        .windows
        .iter()
        .map(|&window| Throughput {
            window,
            events: args.events.min(window.saturating_mul(args.events_per_window)),
            secs: Default::default(),
        })
        .collect();
    for run in 0..args.runs {
        for t in &mut out {
            for k in 0..Side::ALL.len() {
                let which = Side::ALL[(run + k) % Side::ALL.len()];
                let secs = side(which, t.events, t.window)?;
                t.secs[which as usize].push(secs);
            }
            eprintln!(
                "ringcast-bench backplane: run {} window {} ({} events): raw {:.0}/s, raw batches {:.0}/s, ringcast {:.0}/s",
                run + 1,
                t.window,
                t.events,
                t.events as f64 / t.secs[Side::Raw as usize][run],
                t.events as f64 / t.secs[Side::Batches as usize][run],
                t.events as f64 / t.secs[Side::Ringcast as usize][run],
            );
        }
    }
    Ok(out)
}

/// Every latency cell: each subscriber count and rate, `--latency-runs` rounds of the
/// cross-node and the single-node setup, alternating which goes first, each setup's
/// rounds merged into one cell (so that both meet the machine's noise alike).
fn measure_latency(args: &BackplaneArgs, a: &Node, b: &Node, c: &Node) -> Result<Vec<Cell>, String> {
    let base = Instant::now();
    let mut cells = Vec::new();
    for &subscribers in &args.subscribers {
        for &rate in &args.rates {
            let mut merged: [Option<Cell>; 2] = [None, None];
            for round in 0..args.latency_runs {
                let order = if round % 2 == 0 {
                    [Setup::Cluster, Setup::Single]
                } else {
                    [Setup::Single, Setup::Cluster]
                };
                for setup in order {
                    let nodes = match setup {
                        Setup::Cluster => (a, b),
                        Setup::Single => (c, c),
                    };
                    let topic = format!("lat-{}-{subscribers}-{rate}-{round}", setup.key());
                    let cell = latency_cell(args, setup, nodes, &topic, subscribers, rate, base)?;
                    eprintln!(
                        "ringcast-bench backplane: round {} {subscribers} subscribers at {rate}/s, {}: p50 {} ms, p99 {} ms ({} of {})",
                        round + 1,
                        setup.name(),
                        quantile_ms(&cell.latency, 0.5),
                        quantile_ms(&cell.latency, 0.99),
                        cell.delivered,
                        cell.expected
                    );
                    let slot = &mut merged[setup as usize];
                    match slot {
                        Some(m) => m.merge(cell),
                        None => *slot = Some(cell),
                    }
                }
            }
            cells.extend(merged.into_iter().flatten());
        }
    }
    Ok(cells)
}

impl Cell {
    /// Adds another round of the same setup, subscriber count and rate.
    fn merge(&mut self, other: Cell) {
        self.expected += other.expected;
        self.delivered += other.delivered;
        self.gaps += other.gaps;
        self.disorder += other.disorder;
        self.late_max_ms = self.late_max_ms.max(other.late_max_ms);
        // Same bounds and precision: adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.error = self.error.take().or(other.error);
    }
}

/// Opens `subscribers` SSE subscribers to `topic` on the second node, waits until it
/// counts them, warms the path up, publishes `--latency-events` events paced at `rate`
/// on the first node, and waits for every delivery (or [`IDLE_END`] without one).
fn latency_cell(
    args: &BackplaneArgs,
    setup: Setup,
    (publisher, subscribed): (&Node, &Node),
    topic: &str,
    subscribers: usize,
    rate: f64,
    base: Instant,
) -> Result<Cell, String> {
    let timeout = Duration::from_secs(args.timeout_secs);
    let streams_before = crate::fanout::totals(&subscribed.admin)
        .ok_or_else(|| format!("no /stats at {}", subscribed.admin))?
        .get("streams")
        .copied()
        .unwrap_or(0);
    let fds = crate::fanout::open_fast(topic, subscribers, subscribed.addr)?;
    let readers = Readers::start(fds, 1, base, true).map_err(|e| format!("readers: {e}"))?;
    crate::fanout::wait_streams(&subscribed.admin, streams_before + subscribers as i64)?;
    let mut ingest = Publisher::connect(&publisher.ingest).map_err(|e| e.to_string())?;
    let topics = [topic.to_owned()];
    let per = subscribers as u64;
    ingest.publish_paced(&topics, LATENCY_WARMUP, args.bytes, rate, base)?;
    wait_deliveries(&readers, LATENCY_WARMUP * per, timeout);
    let warm = readers.totals();
    readers.take_latencies();
    let paced = ingest.publish_paced(&topics, args.latency_events, args.bytes, rate, base)?;
    let expected = args.latency_events * per;
    wait_deliveries(&readers, (LATENCY_WARMUP + args.latency_events) * per, timeout);
    let got = readers.totals();
    let latency = readers.take_latencies();
    let error = readers.first_error();
    readers.stop();
    Ok(Cell {
        setup,
        subscribers,
        rate,
        expected,
        delivered: got.events - warm.events,
        gaps: got.gaps,
        disorder: got.disorder,
        late_max_ms: paced.late_max_ms,
        latency,
        error,
    })
}

/// Waits until the readers received `want` events in all, none arrived for
/// [`IDLE_END`], or `timeout` passed.
fn wait_deliveries(readers: &Readers, want: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let (mut seen, mut since) = (0, Instant::now());
    while Instant::now() < deadline {
        let now = readers.totals().events;
        if now >= want {
            return;
        }
        if now != seen {
            (seen, since) = (now, Instant::now());
        } else if since.elapsed() >= IDLE_END {
            return;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// The backplane counters of node A's `/stats` (published, batches, conflicts, ...).
fn backplane_counters(admin: &str) -> std::collections::BTreeMap<String, i64> {
    let Ok(mut conn) = std::net::TcpStream::connect(admin) else {
        return Default::default();
    };
    use std::io::{Read, Write};
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = conn.write_all(b"GET /stats HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = conn.read_to_string(&mut text);
    let Some(body) = text.split_once("\r\n\r\n").map(|(_, b)| b) else {
        return Default::default();
    };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(body) else {
        return Default::default();
    };
    value["backplane"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_i64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Median, min and max.
fn median_spread(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => (f64::NAN, f64::NAN, f64::NAN),
        n => (v[n / 2], v[0], v[n - 1]),
    }
}

impl Throughput {
    /// Median, min and max acknowledged publishes/s of one side.
    fn rates(&self, side: Side) -> (f64, f64, f64) {
        let rates: Vec<f64> = self.secs[side as usize]
            .iter()
            .map(|s| self.events as f64 / s)
            .collect();
        median_spread(&rates)
    }

    /// Ringcast's median over `side`'s.
    fn ratio(&self, side: Side) -> f64 {
        self.rates(Side::Ringcast).0 / self.rates(side).0
    }
}

/// `12,345`.
fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let digits = format!("{:.0}", v);
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn rate_text((median, lo, hi): (f64, f64, f64)) -> String {
    format!("{} ({}-{})", thousands(median), thousands(lo), thousands(hi))
}

/// The columns of the throughput table.
const THROUGHPUT_HEADER: [&str; 8] = [
    "W",
    "events",
    "raw JetStream /s",
    "raw atomic batches /s",
    "ringcast --backplane /s",
    "ratio",
    ">= 0.8",
    "of batches",
];

/// One window's row: rates, ringcast over raw and whether it meets the target, and
/// ringcast over raw atomic batches.
fn throughput_row(t: &Throughput) -> Vec<String> {
    let ratio = t.ratio(Side::Raw);
    vec![
        t.window.to_string(),
        t.events.to_string(),
        rate_text(t.rates(Side::Raw)),
        rate_text(t.rates(Side::Batches)),
        rate_text(t.rates(Side::Ringcast)),
        fixed(ratio, 2),
        if ratio >= TARGET_RATIO { "yes" } else { "no" }.to_owned(),
        fixed(t.ratio(Side::Batches), 2),
    ]
}

fn text(args: &BackplaneArgs, c: &Conditions, o: &Outcome) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ringcast-bench backplane: {}, ringcast nodes with --loops {}, --backplane-publish {}",
        o.nats_version, args.loops, args.backplane_publish
    );
    let _ = writeln!(
        out,
        "\nthroughput: acknowledged publishes/s, up to {} events of {} B per run (at most {} x W), median (min-max) of {} runs\n\
         raw: async-nats JetStream publish to stream {RAW_STREAM} ({}), W acks outstanding\n\
         raw batches: the same client and stream, atomic batches of min(W, 1000), one in flight (the engine's way)\n\
         ringcast: PUB over node A's ingest socket, W +OKs outstanding (+OK = stored by JetStream)",
        args.events, args.bytes, args.events_per_window, args.runs, o.raw_config
    );
    let widths = [6, 6, 24, 24, 24, 6, 7, 7];
    let line = |cells: &[String]| {
        let mut l = String::from(" ");
        for (cell, w) in cells.iter().zip(widths) {
            let _ = write!(l, " {cell:>w$}");
        }
        l
    };
    let header: Vec<String> = THROUGHPUT_HEADER.iter().map(|h| h.to_string()).collect();
    let _ = writeln!(out, "{}", line(&header));
    for t in &o.throughput {
        let _ = writeln!(out, "{}", line(&throughput_row(t)));
    }
    let counters: Vec<String> = o.counters.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(
        out,
        "  node A's backplane after these runs: {}",
        counters.join(", ")
    );
    let _ = writeln!(
        out,
        "\nlatency: publish (scheduled time) to SSE delivery, {} events of {} B per cell and round after {LATENCY_WARMUP} \
         warm-up, {} rounds merged",
        args.latency_events, args.bytes, args.latency_runs
    );
    let _ = writeln!(
        out,
        "  {:>5}  {:>6}  {:<42}  {:>7}  {:>7}  {:>7}  {:>7}  {:>15}",
        "subs", "rate/s", "setup", "p50 ms", "p90 ms", "p99 ms", "max ms", "delivered"
    );
    for cell in &o.cells {
        let h = &cell.latency;
        let _ = writeln!(
            out,
            "  {:>5}  {:>6}  {:<42}  {:>7}  {:>7}  {:>7}  {:>7}  {:>15}{}",
            cell.subscribers,
            cell.rate,
            cell.setup.name(),
            quantile_ms(h, 0.5),
            quantile_ms(h, 0.9),
            quantile_ms(h, 0.99),
            quantile_ms(h, 1.0),
            format!("{}/{}", cell.delivered, cell.expected),
            cell_notes(cell)
        );
    }
    let _ = writeln!(out, "\n{}", c.text("", "node A"));
    out
}

/// `  (2 gap notices, publisher 3.1 ms late at most)` or nothing.
fn cell_notes(cell: &Cell) -> String {
    let mut notes = Vec::new();
    if cell.gaps > 0 {
        notes.push(format!("{} gap notices", cell.gaps));
    }
    if cell.disorder > 0 {
        notes.push(format!("{} out of order", cell.disorder));
    }
    if cell.late_max_ms > 5.0 {
        notes.push(format!("publisher {:.1} ms late at most", cell.late_max_ms));
    }
    if let Some(e) = &cell.error {
        notes.push(e.clone());
    }
    if notes.is_empty() {
        String::new()
    } else {
        format!("  ({})", notes.join(", "))
    }
}

fn json(args: &BackplaneArgs, c: &Conditions, o: &Outcome) -> String {
    let throughput: Vec<serde_json::Value> = o
        .throughput
        .iter()
        .map(|t| {
            let side = |side: Side| {
                let (median, min, max) = t.rates(side);
                serde_json::json!({
                    "per_sec_median": median,
                    "per_sec_min": min,
                    "per_sec_max": max,
                    "secs": t.secs[side as usize],
                })
            };
            let ratio = t.ratio(Side::Raw);
            serde_json::json!({
                "window": t.window,
                "events": t.events,
                "raw": side(Side::Raw),
                "raw_atomic_batches": side(Side::Batches),
                "ringcast": side(Side::Ringcast),
                "ratio": ratio,
                "meets_target": ratio >= TARGET_RATIO,
                "ratio_of_atomic_batches": t.ratio(Side::Batches),
            })
        })
        .collect();
    let cells: Vec<serde_json::Value> = o
        .cells
        .iter()
        .map(|cell| {
            serde_json::json!({
                "setup": cell.setup.key(),
                "subscribers": cell.subscribers,
                "rate": cell.rate,
                "expected": cell.expected,
                "delivered": cell.delivered,
                "gap_notices": cell.gaps,
                "disorder": cell.disorder,
                "publisher_late_max_ms": cell.late_max_ms,
                "latency": output::latency_json(&cell.latency),
                "error": cell.error,
            })
        })
        .collect();
    serde_json::json!({
        "subcommand": "backplane",
        "nats_server": o.nats_version,
        "loops": args.loops,
        "backplane_publish": args.backplane_publish,
        "events": args.events,
        "bytes": args.bytes,
        "runs": args.runs,
        "warmup": args.warmup,
        "target_ratio": TARGET_RATIO,
        "raw_stream": o.raw_config,
        "throughput": throughput,
        "node_a_backplane": o.counters,
        "latency_events": args.latency_events,
        "latency_runs": args.latency_runs,
        "latency": cells,
        "conditions": c.to_value(),
    })
    .to_string()
}

fn markdown(args: &BackplaneArgs, o: &Outcome) -> String {
    let mut out = format!(
        "{}, nodes with `--loops {}`, `--backplane-publish {}`; up to {} events of {} B per throughput \
         run (at most {} x W), median (min-max) of {} runs.\n\n",
        o.nats_version,
        args.loops,
        args.backplane_publish,
        args.events,
        args.bytes,
        args.events_per_window,
        args.runs
    );
    let rows: Vec<Vec<String>> = o.throughput.iter().map(throughput_row).collect();
    out.push_str(&output::markdown_table(&THROUGHPUT_HEADER, &rows));
    let _ = writeln!(
        out,
        "\nLatency, publish to SSE delivery, {} events of {} B per cell and round, {} rounds merged:\n",
        args.latency_events, args.bytes, args.latency_runs
    );
    let rows: Vec<Vec<String>> = o
        .cells
        .iter()
        .map(|cell| {
            let h = &cell.latency;
            vec![
                cell.subscribers.to_string(),
                cell.rate.to_string(),
                cell.setup.name().to_owned(),
                quantile_ms(h, 0.5),
                quantile_ms(h, 0.99),
                quantile_ms(h, 1.0),
                format!("{}/{}", cell.delivered, cell.expected),
            ]
        })
        .collect();
    out.push_str(&output::markdown_table(
        &[
            "subscribers",
            "rate/s",
            "setup",
            "p50 ms",
            "p99 ms",
            "max ms",
            "delivered",
        ],
        &rows,
    ));
    out
}

fn write_out(
    dir: &std::path::Path,
    args: &BackplaneArgs,
    c: &Conditions,
    o: &Outcome,
) -> Result<Vec<PathBuf>, String> {
    let cdf = Chart {
        title: "backplane: latency from publish to SSE delivery".into(),
        x_label: "latency, ms".into(),
        y_label: "fraction of deliveries at or below".into(),
        x_log: true,
        series: o
            .cells
            .iter()
            .map(|cell| {
                let label = format!("{} subs {}/s, {}", cell.subscribers, cell.rate, cell.setup.key());
                output::latency_cdf(&label, &cell.latency)
            })
            .collect(),
    };
    output::write_result(
        dir,
        "backplane",
        c,
        &json(args, c, o),
        &markdown(args, o),
        &[("latency-cdf", cdf)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits_by_three() {
        let cases = [
            (0.0, "0"),
            (999.4, "999"),
            (1000.0, "1,000"),
            (123_456.0, "123,456"),
            (1_234_567.0, "1,234,567"),
        ];
        for (v, want) in cases {
            assert_eq!(thousands(v), want, "{v}");
        }
        assert_eq!(thousands(f64::NAN), "n/a");
    }

    #[test]
    fn median_spread_takes_the_middle_run() {
        assert_eq!(median_spread(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(median_spread(&[5.0]), (5.0, 5.0, 5.0));
        assert!(median_spread(&[]).0.is_nan());
    }

    #[test]
    fn ratios_are_of_the_medians_of_acknowledged_publishes_per_second() {
        let t = Throughput {
            window: 32,
            events: 1000,
            // raw 1,000/s; atomic batches 100/s; ringcast 50/s (runs of 20 s, 10 s, 40 s).
            secs: [vec![1.0, 0.5, 2.0], vec![10.0], vec![20.0, 10.0, 40.0]],
        };
        assert_eq!(t.rates(Side::Raw), (1000.0, 500.0, 2000.0));
        assert!((t.ratio(Side::Raw) - 0.05).abs() < 1e-12);
        assert!((t.ratio(Side::Batches) - 0.5).abs() < 1e-12);
        let row = throughput_row(&t);
        assert_eq!(row.len(), THROUGHPUT_HEADER.len());
        assert_eq!(row[5..], ["0.05", "no", "0.50"]);
    }
}
