//! The hidden `hold-worker` subcommand: one process that opens its share of idle
//! subscribers over `--rings` io_uring client rings, one thread each ([`crate::client`]),
//! reports on stdout (see [`crate::wire`]), holds them until its parent writes `close` or
//! goes away, then closes them all and exits.
//!
//! Every phase is bounded in time: the connect phase by `--connect-secs`, the whole life
//! by `--life-secs`, and the process dies with its parent (`PR_SET_PDEATHSIG`) or when
//! its stdin reaches end of file.

use std::io::{Read, Write};
use std::net::SocketAddrV4;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::client::{self, Client, Connected, Holding, Setup, Shared};
use crate::plan;
use crate::sys;
use crate::wire::{self, Line, WorkerResult};

/// How a subscriber connects.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `GET` with `Accept: text/event-stream`; held at status 200 and a `retry:` line.
    Sse,
    /// A WebSocket upgrade with a random key; held at a correct 101 (RFC 6455 §4.2.2).
    Ws,
    /// `GET /stream` (NDJSON); held at status 200 with `Content-Type: application/x-ndjson`.
    Ndjson,
    /// Long-polling: held once a first `wait=0` poll is answered and the next poll,
    /// `after=<next>`, is sent; every answer is followed by the next poll.
    Poll,
}

impl Transport {
    /// The flag value, as `--transport` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Ws => "ws",
            Transport::Ndjson => "ndjson",
            Transport::Poll => "poll",
        }
    }

    /// The engine's endpoint for this transport, on topic `bench`.
    pub fn default_path(self) -> &'static str {
        match self {
            Transport::Sse => "/sse?topic=bench",
            Transport::Ws => "/ws?topic=bench",
            Transport::Ndjson => "/stream?topic=bench",
            Transport::Poll => "/poll?topic=bench",
        }
    }
}

/// Arguments of `ringcast-bench hold-worker`, written by the `hold` parent.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    /// Engine address, IPv4 `ip:port`.
    #[arg(long)]
    pub target: SocketAddrV4,
    /// `Host` header value.
    #[arg(long)]
    pub host: String,
    /// Request path with query.
    #[arg(long)]
    pub path: String,
    /// How subscribers connect.
    #[arg(long, value_enum)]
    pub transport: Transport,
    /// Connections this worker opens.
    #[arg(long)]
    pub count: u64,
    /// Global index of this worker's first connection (picks its source addresses).
    #[arg(long)]
    pub start_index: u64,
    /// Most connections per io_uring ring (each ring's file table is capped by RLIMIT_NOFILE).
    #[arg(long)]
    pub per_ring: u64,
    /// Source addresses 127.0.0.2 ..= 127.0.0.(1+N); 0 lets the kernel choose.
    #[arg(long)]
    pub sources: u32,
    /// Connections in flight (connecting or awaiting the handshake) at once, over all rings.
    #[arg(long)]
    pub concurrency: usize,
    /// Connections opened per second by this worker, 0 for unpaced.
    #[arg(long, default_value_t = 0.0)]
    pub connect_rate: f64,
    /// `wait` of each held long-poll, seconds.
    #[arg(long, default_value_t = 25)]
    pub poll_wait_secs: u64,
    /// Per-connection bound on connect + handshake, milliseconds.
    #[arg(long)]
    pub conn_timeout_ms: u64,
    /// Bound on the whole connect phase, seconds.
    #[arg(long)]
    pub connect_secs: u64,
    /// Bound on the worker's whole life, seconds.
    #[arg(long)]
    pub life_secs: u64,
}

/// Interval between progress lines.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Time rings get past the life bound to close and report.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// What a ring thread tells the main thread.
enum Report {
    /// The connect phase ended (or the ring could not start, failing its share).
    Connected(Result<Connected, (String, u64)>),
    /// The ring closed everything.
    Closed(Holding),
}

/// Runs the worker to completion.
pub fn main(args: WorkerArgs) -> ExitCode {
    let born = Instant::now();
    if let Err(e) = sys::kill_me_with_parent() {
        eprintln!("hold-worker: PR_SET_PDEATHSIG: {e}");
    }
    if let Err(e) = sys::raise_nofile() {
        eprintln!("hold-worker: cannot raise RLIMIT_NOFILE: {e}");
    }
    if args.per_ring == 0 {
        eprintln!("hold-worker: --per-ring must be at least 1");
        return ExitCode::from(2);
    }
    let life_end = born + Duration::from_secs(args.life_secs);
    let connect_end = (born + Duration::from_secs(args.connect_secs)).min(life_end);
    let shared = Arc::new(Shared::default());
    watch_stdin(Arc::clone(&shared));

    let shares = plan::split(args.count, args.per_ring);
    let rings = shares.len().max(1);
    let (tx, rx) = mpsc::channel();
    for share in &shares {
        let setup = Setup {
            target: args.target,
            host: args.host.clone(),
            path: args.path.clone(),
            transport: args.transport,
            sources: args.sources,
            start_index: args.start_index + share.start,
            count: share.count,
            concurrency: args.concurrency.div_ceil(rings).max(1),
            conn_timeout: Duration::from_millis(args.conn_timeout_ms),
            connect_rate: args.connect_rate / rings as f64,
            poll_wait_secs: args.poll_wait_secs,
        };
        let (tx, shared) = (tx.clone(), Arc::clone(&shared));
        thread::spawn(move || ring_thread(setup, &shared, connect_end, life_end, &tx));
    }
    drop(tx);

    // Connect phase: progress until every ring reported.
    let mut result = WorkerResult::default();
    let mut latency = Histogram::<u64>::new_with_bounds(1, client::LATENCY_US_MAX, 3)
        .expect("constant histogram bounds are valid");
    let mut connected = 0;
    let mut parent_gone = false;
    while connected < shares.len() {
        match rx.recv_timeout(PROGRESS_EVERY) {
            Ok(Report::Connected(Ok(c))) => {
                connected += 1;
                result.held += c.held;
                for (kind, n) in c.failures {
                    *result.failures.entry(kind).or_insert(0) += n;
                }
                latency.add(&c.latency_us).expect("same histogram bounds");
            }
            Ok(Report::Connected(Err((message, count)))) => {
                connected += 1;
                eprintln!("hold-worker: {message}");
                *result.failures.entry("ring/setup".to_owned()).or_insert(0) += count;
            }
            Ok(Report::Closed(_)) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let held = shared.held.load(Ordering::Relaxed);
                let failed = shared.failed.load(Ordering::Relaxed);
                parent_gone |= !emit(&Line::Progress { held, failed });
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    result.ramp_ms = born.elapsed().as_millis() as u64;
    result.latency_us = latency
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect();
    if parent_gone || !emit(&Line::Result(result)) {
        shared.stop.store(true, Ordering::Relaxed);
    }

    // Hold phase: the rings run until told to stop; collect what they saw.
    let mut holding = Holding::default();
    let mut closed = 0;
    let end = life_end + CLOSE_GRACE;
    while closed < connected {
        let now = Instant::now();
        if now >= end {
            break;
        }
        match rx.recv_timeout(end - now) {
            Ok(Report::Closed(h)) => {
                closed += 1;
                holding.dropped += h.dropped;
                holding.repolls += h.repolls;
            }
            Ok(Report::Connected(_)) => {}
            Err(_) => break,
        }
    }
    emit(&Line::Closed {
        dropped: holding.dropped,
        repolls: holding.repolls,
    });
    ExitCode::SUCCESS
}

/// One ring's life: set up, connect, hold, close (by dropping the ring).
fn ring_thread(
    setup: Setup,
    shared: &Shared,
    connect_end: Instant,
    life_end: Instant,
    tx: &mpsc::Sender<Report>,
) {
    let count = setup.count;
    let mut client = match Client::new(setup) {
        Ok(c) => c,
        Err(e) => {
            shared.failed.fetch_add(count, Ordering::Relaxed);
            let _ = tx.send(Report::Connected(Err((e, count))));
            return;
        }
    };
    let connected = client.connect_phase(shared, connect_end);
    if tx.send(Report::Connected(Ok(connected))).is_err() {
        return;
    }
    let holding = client.hold_phase(shared, life_end);
    drop(client);
    let _ = tx.send(Report::Closed(holding));
}

/// Sets `shared.stop` when stdin says `close` or ends (the parent is done or gone).
fn watch_stdin(shared: Arc<Shared>) {
    thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut seen = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    if seen
                        .windows(wire::CLOSE.len())
                        .any(|w| w == wire::CLOSE.as_bytes())
                    {
                        break;
                    }
                    // Keep only a tail long enough to hold a split `close`.
                    let keep = seen.len().saturating_sub(wire::CLOSE.len());
                    seen.drain(..keep);
                }
            }
        }
        shared.stop.store(true, Ordering::Relaxed);
    });
}

/// Writes one line to stdout; `false` once the parent stopped reading.
fn emit(line: &Line) -> bool {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", wire::encode(line)).is_ok() && out.flush().is_ok()
}
