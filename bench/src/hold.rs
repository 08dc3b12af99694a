//! The `hold` subcommand: opens N idle subscribers (SSE streams, or WebSockets with
//! `--transport ws`) against a running engine through worker processes and reports the
//! engine's resident memory per connection.
//!
//! Sequence: read the engine's memory (baseline) before anything else; check the plan
//! against this machine's limits; spawn `ceil(N / per_proc)` `hold-worker` children of
//! this same executable; gather their progress and results from their stdout; settle;
//! read the engine's memory again (loaded); hold; tell the workers to close; reap them.
//! This process holds no connection itself. Every wait is bounded in time and every
//! child is killed if it outlives its bound.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::net::{SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use crate::conditions::Conditions;
use crate::engine_args::EngineArgs;
use crate::output::{self, OutDir};
use crate::plan::{self, Limits, Share};
use crate::procfs::{self, Snapshot};
use crate::report::{Report, Step};
use crate::sys;
use crate::wire::{self, Line, WorkerResult};
use crate::worker::Transport;

/// Arguments of `ringcast-bench hold`.
#[derive(clap::Args, Debug, Clone)]
pub struct HoldArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Subscribers to open and hold; several ascending counts (`5000,10000,19000`) measure
    /// the engine's memory at each step, opening only the difference each time.
    #[arg(long, value_delimiter = ',', required = true)]
    pub conns: Vec<u64>,
    /// `sse`: `GET` streams with `Accept: text/event-stream`; `ws`: WebSocket upgrades
    /// (random key, 101 and `Sec-WebSocket-Accept` checked), pings answered with pongs;
    /// `ndjson`: `GET /stream`; `poll`: long-polls re-issued as each is answered.
    #[arg(long, value_enum, default_value_t = Transport::Sse)]
    pub transport: Transport,
    /// Request path and query of the subscription [default: the transport's endpoint on
    /// topic `bench`: `/sse`, `/ws`, `/stream` or `/poll` `?topic=bench`].
    #[arg(long)]
    pub path: Option<String>,
    /// Most connections per io_uring ring of a worker (its file table; RLIMIT_NOFILE caps it).
    #[arg(long, default_value_t = 19_000)]
    pub per_ring: u64,
    /// Rings (one thread each) per worker process; a worker holds up to `rings x per-ring`.
    #[arg(long, default_value_t = 8)]
    pub rings: u64,
    /// Source addresses 127.0.0.2 ..= 127.0.0.(1+N), round robin; 0 lets the kernel choose.
    #[arg(long, default_value_t = 16)]
    pub sources: u32,
    /// Connections in flight (between connect and held) per worker.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Connections opened per second over all workers; 0 for as fast as `--concurrency`
    /// allows.
    #[arg(long, default_value_t = 0.0)]
    pub connect_rate: f64,
    /// `wait` of each held long-poll (`--transport poll`), seconds.
    #[arg(long, default_value_t = 25)]
    pub poll_wait_secs: u64,
    /// Bound on one connection's connect + handshake, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub conn_timeout_ms: u64,
    /// Seconds to wait after the last handshake (of each step) before measuring.
    #[arg(long, default_value_t = 3)]
    pub settle_secs: u64,
    /// Seconds to keep holding after measuring.
    #[arg(long, default_value_t = 0)]
    pub hold_secs: u64,
    /// Bound on each step's connect phase, seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    pub json: bool,
    /// Also write the result as JSON, Markdown and SVG charts into this directory.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

/// Extra time the parent grants workers past their own connect bound to report.
const RESULT_GRACE: Duration = Duration::from_secs(10);
/// Time workers get to close and exit once told to.
const CLOSE_GRACE: Duration = Duration::from_secs(15);
/// Time a worker gets to exit after its stdout ended, before it is killed.
const REAP_GRACE: Duration = Duration::from_secs(2);
/// Extra life a worker gets past every phase the parent plans, seconds.
const WORKER_LIFE_SPARE_SECS: u64 = 60;
/// Wait before reading the engine's memory once everything is closed.
const AFTER_CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Interval between progress lines on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Latency histogram bound, microseconds; the same as the workers'.
const LATENCY_US_MAX: u64 = 600_000_000;

/// Runs `hold`, prints the report, and returns success only if every connection was
/// held and kept (see [`Report::success`]).
pub fn main(args: HoldArgs) -> ExitCode {
    match run(&args) {
        Ok(report) => {
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
            if let Some(dir) = &args.out {
                let written = OutDir::create(dir, OutDir::stem("hold", &report.conditions))
                    .and_then(|out| report.write(&out));
                match written {
                    Ok(paths) => eprint!("{}", output::written_text(&paths)),
                    Err(e) => {
                        eprintln!("ringcast-bench hold: --out {}: {e}", dir.display());
                        return ExitCode::from(2);
                    }
                }
            }
            if report.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(message) => {
            eprintln!("ringcast-bench hold: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &HoldArgs) -> Result<Report, String> {
    let pid = args.engine.require_pid("hold")?;
    // First, before this tool does anything that could disturb the engine.
    let baseline = Snapshot::read(pid)?;
    let conditions = Conditions::collect(pid);
    let (_, nofile_hard) = sys::raise_nofile().map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    let target = resolve(&args.engine.target)?;
    let path = subscription_path(args);
    check_path(&path)?;
    check_steps(&args.conns)?;
    let total = *args.conns.last().expect("check_steps refuses an empty list");
    if args.sources > 0 && !target.ip().is_loopback() {
        return Err(format!(
            "source addresses 127.0.0.x cannot reach {target}; pass --sources 0"
        ));
    }
    plan::check(Limits {
        total,
        per_ring: args.per_ring,
        rings: args.rings,
        sources: args.sources,
        nofile_hard,
        ports: procfs::read_port_range()?,
    })?;
    if args.concurrency == 0 {
        return Err("--concurrency must be at least 1".to_owned());
    }
    let mut fleet = Fleet::new();
    let mut steps = Vec::with_capacity(args.conns.len());
    let mut opened = 0;
    // Time spent connecting, every step's settle and measurement left out.
    let mut connecting_ms = 0;
    for &step in &args.conns {
        let step_started = Instant::now();
        let shares: Vec<Share> = plan::split(step - opened, args.per_ring * args.rings)
            .into_iter()
            .map(|s| Share {
                start: s.start + opened,
                count: s.count,
            })
            .collect();
        fleet.spawn(args, target, &shares)?;
        fleet.await_results(
            step_started + Duration::from_secs(args.timeout_secs) + RESULT_GRACE,
            total,
        );
        let ramp_ms = step_started.elapsed().as_millis() as u64;
        connecting_ms += ramp_ms;
        opened = step;
        thread::sleep(Duration::from_secs(args.settle_secs));
        let loaded = Snapshot::read(pid)
            .map_err(|e| eprintln!("ringcast-bench hold: after connecting {step}: {e}"))
            .ok();
        let (held, _, _) = fleet.tally();
        steps.push(Step {
            requested: step,
            held,
            ramp_ms,
            loaded,
        });
        if loaded.is_none() {
            break;
        }
    }
    let ramp_ms = connecting_ms;
    let (held, failures, handshake_us) = fleet.tally();
    let loaded = steps.last().and_then(|s| s.loaded);
    if args.hold_secs > 0 {
        eprintln!(
            "hold: measured; holding {held} connections for {} s",
            args.hold_secs
        );
        thread::sleep(Duration::from_secs(args.hold_secs));
    }
    let (dropped_during_hold, repolls) = fleet.close();
    let workers = fleet.members.len();
    drop(fleet);
    thread::sleep(AFTER_CLOSE_WAIT);
    let after_close_rss_kb = Snapshot::read(pid).ok().map(|s| s.rss_kb);
    Ok(Report {
        conditions,
        target: args.engine.target.clone(),
        transport: args.transport.name(),
        path,
        pid,
        workers,
        per_ring: args.per_ring,
        rings: args.rings,
        sources: args.sources,
        concurrency: args.concurrency,
        connect_rate: args.connect_rate,
        requested: total,
        held,
        failures,
        ramp_ms,
        handshake_us,
        settle_secs: args.settle_secs,
        hold_secs: args.hold_secs,
        baseline,
        loaded,
        steps,
        after_close_rss_kb,
        dropped_during_hold,
        repolls,
    })
}

/// `--conns` must be one or more counts, each above the one before.
fn check_steps(steps: &[u64]) -> Result<(), String> {
    match steps {
        [] => Err("--conns needs at least one count".to_owned()),
        [0, ..] => Err("--conns must be at least 1".to_owned()),
        _ if steps.windows(2).any(|w| w[1] <= w[0]) => Err(format!(
            "--conns {steps:?}: each step must be larger than the one before"
        )),
        _ => Ok(()),
    }
}

/// Resolves `host:port` to its first IPv4 address.
fn resolve(target: &str) -> Result<SocketAddrV4, String> {
    let addrs = target
        .to_socket_addrs()
        .map_err(|e| format!("--target {target}: {e}"))?;
    addrs
        .into_iter()
        .find_map(|a| match a {
            SocketAddr::V4(v4) => Some(v4),
            SocketAddr::V6(_) => None,
        })
        .ok_or(format!("--target {target} has no IPv4 address"))
}

/// The subscription path: `--path`, else the transport's own endpoint.
fn subscription_path(args: &HoldArgs) -> String {
    args.path
        .clone()
        .unwrap_or_else(|| args.transport.default_path().to_owned())
}

/// The path goes verbatim into the request line.
fn check_path(path: &str) -> Result<(), String> {
    let printable = path.bytes().all(|b| b.is_ascii_graphic());
    if !path.starts_with('/') || !printable {
        return Err(format!(
            "--path {path:?} must start with '/' and hold no spaces or control characters"
        ));
    }
    Ok(())
}

/// One worker process and what it has said.
struct Member {
    share: Share,
    child: Child,
    stdin: Option<ChildStdin>,
    progress: (u64, u64),
    result: Option<WorkerResult>,
    /// Held connections it lost while holding, and long-polls it re-issued.
    closed: Option<(u64, u64)>,
    /// Its stdout ended: it exited or is about to.
    eof: bool,
    reaped: bool,
}

/// The worker processes and the channel their stdout readers feed.
struct Fleet {
    members: Vec<Member>,
    lines: Receiver<(usize, Option<Line>)>,
    sender: mpsc::Sender<(usize, Option<Line>)>,
}

impl Fleet {
    fn new() -> Fleet {
        let (sender, lines) = mpsc::channel();
        Fleet {
            members: Vec::new(),
            lines,
            sender,
        }
    }

    /// Spawns one more worker per share; if one fails to spawn, every worker is killed
    /// (by [`Drop`]) when the caller returns the error.
    fn spawn(&mut self, args: &HoldArgs, target: SocketAddrV4, shares: &[Share]) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
        let life_secs = args.timeout_secs
            + RESULT_GRACE.as_secs()
            + args.settle_secs
            + args.hold_secs
            + CLOSE_GRACE.as_secs()
            + WORKER_LIFE_SPARE_SECS;
        let life_secs = life_secs + args.conns.len() as u64 * (args.timeout_secs + args.settle_secs);
        let worker_rate = args.connect_rate / shares.len().max(1) as f64;
        for share in shares {
            let index = self.members.len();
            let mut child = Command::new(&exe)
                .arg("hold-worker")
                .args(["--target", &target.to_string()])
                .args(["--host", &args.engine.target])
                .args(["--path", &subscription_path(args)])
                .args(["--transport", args.transport.name()])
                .args(["--count", &share.count.to_string()])
                .args(["--start-index", &share.start.to_string()])
                .args(["--per-ring", &args.per_ring.to_string()])
                .args(["--sources", &args.sources.to_string()])
                .args(["--concurrency", &args.concurrency.to_string()])
                .args(["--connect-rate", &worker_rate.to_string()])
                .args(["--poll-wait-secs", &args.poll_wait_secs.to_string()])
                .args(["--conn-timeout-ms", &args.conn_timeout_ms.to_string()])
                .args(["--connect-secs", &args.timeout_secs.to_string()])
                .args(["--life-secs", &life_secs.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("cannot spawn worker {index}: {e}"))?;
            let stdout = child.stdout.take().ok_or("worker stdout not piped")?;
            let tx = self.sender.clone();
            // The reader ends at the worker's end of file, which its exit guarantees.
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    match wire::decode(&line) {
                        Ok(parsed) => {
                            if tx.send((index, Some(parsed))).is_err() {
                                return;
                            }
                        }
                        Err(e) => eprintln!("worker {index}: {e}: {line:?}"),
                    }
                }
                let _ = tx.send((index, None));
            });
            self.members.push(Member {
                share: *share,
                stdin: child.stdin.take(),
                child,
                progress: (0, 0),
                result: None,
                closed: None,
                eof: false,
                reaped: false,
            });
        }
        Ok(())
    }

    fn apply(&mut self, (index, line): (usize, Option<Line>)) {
        let m = &mut self.members[index];
        match line {
            Some(Line::Progress { held, failed }) => m.progress = (held, failed),
            Some(Line::Result(result)) => m.result = Some(result),
            Some(Line::Closed { dropped, repolls }) => m.closed = Some((dropped, repolls)),
            None => m.eof = true,
        }
    }

    /// Receives lines until `done` holds for every member or `deadline` passes, calling
    /// `tick` at least every [`PROGRESS_EVERY`].
    fn pump(&mut self, deadline: Instant, done: fn(&Member) -> bool, mut tick: impl FnMut(&Fleet)) {
        let mut next_tick = Instant::now() + PROGRESS_EVERY;
        while !self.members.iter().all(done) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if now >= next_tick {
                tick(self);
                next_tick = now + PROGRESS_EVERY;
            }
            match self.lines.recv_timeout(next_tick.min(deadline) - now) {
                Ok(msg) => self.apply(msg),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    /// Waits for every worker's result (or its exit), printing progress to stderr.
    /// On a terminal the progress is a bar; otherwise (a log file) a line per second.
    fn await_results(&mut self, deadline: Instant, requested: u64) {
        let started = Instant::now();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(requested);
            bar.set_style(
                ProgressStyle::with_template(
                    "hold {elapsed_precise} [{bar:40}] {pos}/{len} held {per_sec} {msg}",
                )
                .expect("a valid progress template")
                .progress_chars("=> "),
            );
            bar
        });
        self.pump(
            deadline,
            |m| m.result.is_some() || m.eof,
            |fleet| {
                let (held, failed) = fleet.totals();
                match &bar {
                    Some(bar) => {
                        bar.set_position(held);
                        bar.set_message(format!("failed {failed}"));
                    }
                    None => {
                        let secs = started.elapsed().as_secs_f64();
                        eprintln!(
                            "hold: {secs:4.0} s  held {held}/{requested}  failed {failed}  {:.0} held/s",
                            held as f64 / secs.max(0.001)
                        );
                    }
                }
            },
        );
        if let Some(bar) = bar {
            let (held, failed) = self.totals();
            bar.set_position(held);
            bar.finish_with_message(format!("failed {failed}"));
        }
    }

    fn totals(&self) -> (u64, u64) {
        self.members
            .iter()
            .fold((0, 0), |(held, failed), m| match &m.result {
                Some(r) => (held + r.held, failed + r.failures.values().sum::<u64>()),
                None => (held + m.progress.0, failed + m.progress.1),
            })
    }

    /// Merges the workers' results: held count, failures by kind (a worker without a
    /// result fails its whole share), and the handshake latency histogram.
    fn tally(&self) -> (u64, BTreeMap<String, u64>, Histogram<u64>) {
        let mut held = 0;
        let mut failures = BTreeMap::new();
        let mut hist = Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3)
            .expect("constant histogram bounds are valid");
        for m in &self.members {
            let Some(r) = &m.result else {
                let kind = if m.eof { "worker/died" } else { "worker/no-result" };
                *failures.entry(kind.to_owned()).or_insert(0) += m.share.count;
                continue;
            };
            held += r.held;
            for (kind, n) in &r.failures {
                *failures.entry(kind.clone()).or_insert(0) += n;
            }
            for &(us, n) in &r.latency_us {
                hist.saturating_record_n(us.clamp(1, LATENCY_US_MAX), n);
            }
        }
        (held, failures, hist)
    }

    /// Tells every worker to close, waits for them to exit (bounded), kills the rest,
    /// and returns the connections the engine dropped during the hold and the long-polls
    /// re-issued.
    fn close(&mut self) -> (u64, u64) {
        for m in &mut self.members {
            if let Some(mut stdin) = m.stdin.take() {
                // A worker that already exited has closed its end; nothing to tell it.
                let _ = writeln!(stdin, "{}", wire::CLOSE);
            }
        }
        self.pump(
            Instant::now() + CLOSE_GRACE,
            |m| m.eof,
            |_| {
                eprintln!("hold: waiting for workers to close");
            },
        );
        self.reap(REAP_GRACE);
        self.members
            .iter()
            .filter_map(|m| m.closed)
            .fold((0, 0), |(d, r), (dropped, repolls)| (d + dropped, r + repolls))
    }

    /// Waits up to `grace` for every worker not yet reaped to exit, then kills and
    /// waits for the rest.
    fn reap(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        for m in &mut self.members {
            while !m.reaped && Instant::now() < deadline {
                match m.child.try_wait() {
                    Ok(Some(_)) | Err(_) => m.reaped = true,
                    Ok(None) => thread::sleep(Duration::from_millis(10)),
                }
            }
            if !m.reaped {
                let _ = m.child.kill();
                let _ = m.child.wait();
                m.reaped = true;
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.reap(Duration::ZERO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_paths_are_checked() {
        assert_eq!(
            resolve("127.0.0.1:8080"),
            Ok(SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 8080))
        );
        assert!(resolve("127.0.0.1").is_err());
        assert!(resolve("[::1]:80").is_err());
        assert!(check_path("/sse?topic=bench").is_ok());
        assert!(check_path("sse").is_err());
        assert!(check_path("/a b").is_err());
        assert!(check_path("/a\r\nX: y").is_err());
        assert!(check_steps(&[19_000]).is_ok());
        assert!(check_steps(&[5_000, 10_000, 19_000]).is_ok());
        assert!(check_steps(&[]).is_err());
        assert!(check_steps(&[0]).is_err());
        assert!(check_steps(&[10, 10]).is_err());
        assert!(check_steps(&[10, 5]).is_err());
    }
}
