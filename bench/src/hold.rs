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
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::conditions::Conditions;
use crate::plan::{self, Limits, Share};
use crate::procfs::{self, Snapshot};
use crate::report::{Latency, Report};
use crate::sys;
use crate::wire::{self, Line, WorkerResult};
use crate::worker::Transport;

/// Arguments of `ringcast-bench hold`.
#[derive(clap::Args, Debug, Clone)]
pub struct HoldArgs {
    /// Engine address, IPv4 `host:port`.
    #[arg(long)]
    pub target: String,
    /// Subscribers to open and hold.
    #[arg(long)]
    pub conns: u64,
    /// Engine process id, whose VmRSS is measured.
    #[arg(long)]
    pub pid: u32,
    /// `sse`: `GET` streams with `Accept: text/event-stream`; `ws`: WebSocket upgrades
    /// (random key, 101 and `Sec-WebSocket-Accept` checked), pings answered with pongs.
    #[arg(long, value_enum, default_value_t = Transport::Sse)]
    pub transport: Transport,
    /// Request path and query of the subscription [default: `/sse?topic=bench`, or
    /// `/ws?topic=bench` with `--transport ws`].
    #[arg(long)]
    pub path: Option<String>,
    /// Most sockets per worker process (RLIMIT_NOFILE is per process).
    #[arg(long, default_value_t = 19_000)]
    pub per_proc: u64,
    /// Source addresses 127.0.0.2 ..= 127.0.0.(1+N), round robin; 0 lets the kernel choose.
    #[arg(long, default_value_t = 16)]
    pub sources: u32,
    /// Connections in flight (between connect and held) per worker.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Bound on one connection's connect + handshake, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub conn_timeout_ms: u64,
    /// Seconds to wait after the last handshake before measuring.
    #[arg(long, default_value_t = 3)]
    pub settle_secs: u64,
    /// Seconds to keep holding after measuring.
    #[arg(long, default_value_t = 0)]
    pub hold_secs: u64,
    /// Bound on the connect phase, seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    pub json: bool,
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
    // First, before this tool does anything that could disturb the engine.
    let baseline = Snapshot::read(args.pid)?;
    let conditions = Conditions::collect(args.pid);
    let (_, nofile_hard) = sys::raise_nofile().map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    let target = resolve(&args.target)?;
    let path = subscription_path(args);
    check_path(&path)?;
    if args.sources > 0 && !target.ip().is_loopback() {
        return Err(format!(
            "source addresses 127.0.0.x cannot reach {target}; pass --sources 0"
        ));
    }
    plan::check(Limits {
        total: args.conns,
        per_proc: args.per_proc,
        sources: args.sources,
        nofile_hard,
        ports: procfs::read_port_range()?,
    })?;
    if args.concurrency == 0 {
        return Err("--concurrency must be at least 1".to_owned());
    }
    let shares = plan::split(args.conns, args.per_proc);
    let started = Instant::now();
    let mut fleet = Fleet::spawn(args, target, &shares)?;
    fleet.await_results(
        started + Duration::from_secs(args.timeout_secs) + RESULT_GRACE,
        args.conns,
    );
    let ramp_ms = started.elapsed().as_millis() as u64;
    let (held, failures, latency) = fleet.tally();
    thread::sleep(Duration::from_secs(args.settle_secs));
    let loaded = Snapshot::read(args.pid)
        .map_err(|e| eprintln!("ringcast-bench hold: after connecting: {e}"))
        .ok();
    if args.hold_secs > 0 {
        eprintln!(
            "hold: measured; holding {held} connections for {} s",
            args.hold_secs
        );
        thread::sleep(Duration::from_secs(args.hold_secs));
    }
    let dropped_during_hold = fleet.close();
    drop(fleet);
    thread::sleep(AFTER_CLOSE_WAIT);
    let after_close_rss_kb = Snapshot::read(args.pid).ok().map(|s| s.rss_kb);
    Ok(Report {
        conditions,
        target: args.target.clone(),
        transport: args.transport.name(),
        path,
        pid: args.pid,
        workers: shares.len(),
        per_proc: args.per_proc,
        sources: args.sources,
        concurrency: args.concurrency,
        requested: args.conns,
        held,
        failures,
        ramp_ms,
        latency,
        settle_secs: args.settle_secs,
        hold_secs: args.hold_secs,
        baseline,
        loaded,
        after_close_rss_kb,
        dropped_during_hold,
    })
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
    match (&args.path, args.transport) {
        (Some(path), _) => path.clone(),
        (None, Transport::Sse) => "/sse?topic=bench".to_owned(),
        (None, Transport::Ws) => "/ws?topic=bench".to_owned(),
    }
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
    dropped: Option<u64>,
    /// Its stdout ended: it exited or is about to.
    eof: bool,
    reaped: bool,
}

/// The worker processes and the channel their stdout readers feed.
struct Fleet {
    members: Vec<Member>,
    lines: Receiver<(usize, Option<Line>)>,
}

impl Fleet {
    /// Spawns one worker per share; if one fails to spawn, those already spawned are
    /// killed (by [`Drop`]).
    fn spawn(args: &HoldArgs, target: SocketAddrV4, shares: &[Share]) -> Result<Fleet, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
        let life_secs = args.timeout_secs
            + RESULT_GRACE.as_secs()
            + args.settle_secs
            + args.hold_secs
            + CLOSE_GRACE.as_secs()
            + WORKER_LIFE_SPARE_SECS;
        let (tx, rx) = mpsc::channel();
        let mut fleet = Fleet {
            members: Vec::with_capacity(shares.len()),
            lines: rx,
        };
        for (index, share) in shares.iter().enumerate() {
            let mut child = Command::new(&exe)
                .arg("hold-worker")
                .args(["--target", &target.to_string()])
                .args(["--host", &args.target])
                .args(["--path", &subscription_path(args)])
                .args(["--transport", args.transport.name()])
                .args(["--count", &share.count.to_string()])
                .args(["--start-index", &share.start.to_string()])
                .args(["--sources", &args.sources.to_string()])
                .args(["--concurrency", &args.concurrency.to_string()])
                .args(["--conn-timeout-ms", &args.conn_timeout_ms.to_string()])
                .args(["--connect-secs", &args.timeout_secs.to_string()])
                .args(["--life-secs", &life_secs.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("cannot spawn worker {index}: {e}"))?;
            let stdout = child.stdout.take().ok_or("worker stdout not piped")?;
            let tx = tx.clone();
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
            fleet.members.push(Member {
                share: *share,
                stdin: child.stdin.take(),
                child,
                progress: (0, 0),
                result: None,
                dropped: None,
                eof: false,
                reaped: false,
            });
        }
        Ok(fleet)
    }

    fn apply(&mut self, (index, line): (usize, Option<Line>)) {
        let m = &mut self.members[index];
        match line {
            Some(Line::Progress { held, failed }) => m.progress = (held, failed),
            Some(Line::Result(result)) => m.result = Some(result),
            Some(Line::Closed { dropped }) => m.dropped = Some(dropped),
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
    fn await_results(&mut self, deadline: Instant, requested: u64) {
        let started = Instant::now();
        self.pump(
            deadline,
            |m| m.result.is_some() || m.eof,
            |fleet| {
                let (held, failed) = fleet.totals();
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "hold: {secs:4.0} s  held {held}/{requested}  failed {failed}  {:.0} held/s",
                    held as f64 / secs.max(0.001)
                );
            },
        );
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
    /// result fails its whole share), and handshake latency percentiles.
    fn tally(&self) -> (u64, BTreeMap<String, u64>, Latency) {
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
        let latency = Latency {
            count: hist.len(),
            p50_us: hist.value_at_quantile(0.5),
            p99_us: hist.value_at_quantile(0.99),
            p999_us: hist.value_at_quantile(0.999),
            max_us: hist.max(),
        };
        (held, failures, latency)
    }

    /// Tells every worker to close, waits for them to exit (bounded), kills the rest,
    /// and returns the connections the engine dropped during the hold.
    fn close(&mut self) -> u64 {
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
        self.members.iter().filter_map(|m| m.dropped).sum()
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
    }
}
