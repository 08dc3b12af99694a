//! The `compare` subcommand: one scenario, run the same way against ringcast or a peer
//! push server (nginx + nchan, Pushpin), so their figures sit side by side.
//!
//! Per invocation, one server (started beforehand, e.g. by `bench/peers/*.sh`):
//! 1. idle memory: open `--idle` SSE subscribers at `--rate` new connections per second
//!    (Pushpin refuses bursts), wait `--settle-secs`, and report the growth of the summed
//!    `VmRSS` of every `--pid` (nginx: master and workers; Pushpin: all its processes)
//!    per subscriber whose response head was `200`; then close them.
//! 2. fan-out: open `--fast` SSE subscribers on one topic, then per run publish
//!    `--events` events of `--bytes` bytes as fast as the server accepts them (ringcast:
//!    pipelined `PUB` on its ingest socket; nchan: `POST /pub?id=`; Pushpin: `POST` of
//!    JSON to its publish endpoint, one event per request, `--publishers` keep-alive
//!    connections), and measure deliveries/s, publish-to-receipt latency (each payload
//!    starts with `t=<ns since start>`) and losses (events a subscriber never got).
//!
//! `--out DIR` writes the figures as JSON, Markdown and SVG charts; the charts also take
//! in every earlier `compare-*.json` of that directory, so running `compare` once per
//! server into one directory gives latency CDFs, memory per connection and deliveries/s
//! of the servers side by side.
//!
//! The reader counts events by the `t=<digits> ` marker wherever it appears in the body,
//! so it reads SSE (`data: t=...`), chunked or not, from any of the three servers alike.
//! Every wait is bounded in count and time.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::conditions::Conditions;
use crate::engine_args::EngineArgs;

/// A run with no delivery for this long is over, complete or not.
const IDLE_END: Duration = Duration::from_secs(3);
/// Bound on one blocking socket operation.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The server under test; it picks the default paths and how events are published.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Ringcast,
    Nchan,
    Pushpin,
    /// uWebSockets.js (`bench/peers/uws.sh`): WebSockets only, publishing WebSocket.
    Uws,
    /// The kernel-only reference (`ringcast-bench ws-ref-server`): WebSockets only.
    Kernel,
}

/// How subscribers subscribe.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Sse,
    Ws,
}

/// A preset of the flags.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// The flags as given.
    Plain,
    /// Issue 16's overload: 2,000 WebSocket subscribers of one topic reading as fast as
    /// they can, 128 B events, no idle phase (`--events`, `--runs`, `--in-flight` as given).
    Overload,
}

/// Arguments of `ringcast-bench compare`.
#[derive(clap::Args, Debug, Clone)]
pub struct CompareArgs {
    /// The server under test.
    #[arg(long, value_enum)]
    pub server: Server,
    /// Its address (`--target`) and every process whose `VmRSS` is summed (`--pid`,
    /// repeated: all of the server's processes; at least one).
    #[command(flatten)]
    pub engine: EngineArgs,
    /// `sse`, or `ws`: WebSocket subscribers (the upgrade's `Sec-WebSocket-Accept`
    /// checked, frames decoded strictly, pings answered). uws and kernel speak only `ws`.
    #[arg(long, value_enum, default_value_t = Transport::Sse)]
    pub transport: Transport,
    /// A preset: `overload` (see its help in `--help`).
    #[arg(long, value_enum, default_value_t = Scenario::Plain)]
    pub scenario: Scenario,
    /// Publishes kept unacknowledged at most: ringcast `PUB`s on its ingest socket, uws
    /// and kernel messages on the publishing WebSocket (each answered after its
    /// fan-out). 0: ringcast `--batch` per write, two writes in flight; uws and kernel 32.
    #[arg(long, default_value_t = 0)]
    pub in_flight: usize,
    /// Subscription path (default: ringcast `/sse?topic=cmp`, nchan `/sse?id=cmp`,
    /// Pushpin `/test/stream`; over `ws`: ringcast `/ws?topic=cmp&format=raw`, nchan
    /// `/ws?id=cmp`, uws and kernel `/ws?topic=cmp`).
    #[arg(long)]
    pub path: Option<String>,
    /// Where to publish: ringcast's ingest socket path (default `./ringcast.sock`), nchan's
    /// publisher path (default `/pub?id=cmp`, on `--target`), Pushpin's publish endpoint
    /// `host:port` (default `127.0.0.1:5561`).
    #[arg(long)]
    pub publish: Option<String>,
    /// Idle subscribers held for the memory figure; several ascending counts
    /// (`1000,5000,10000,19000`) measure at each, opening only the difference; 0 skips it.
    #[arg(long, value_delimiter = ',', default_value = "5000")]
    pub idle: Vec<usize>,
    /// New connections per second while opening subscribers.
    #[arg(long, default_value_t = 400)]
    pub rate: u64,
    /// Seconds between the last idle subscriber and the memory reading.
    #[arg(long, default_value_t = 3)]
    pub settle_secs: u64,
    /// Fan-out subscribers on the topic; 0 skips the fan-out.
    #[arg(long, default_value_t = 1000)]
    pub fast: usize,
    /// Events per run.
    #[arg(long, default_value_t = 2000)]
    pub events: u64,
    /// Payload bytes per event (at least 40).
    #[arg(long, default_value_t = 128)]
    pub bytes: usize,
    /// Measured runs (after one warm-up run of `--events / 10` events).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Concurrent keep-alive publishing connections (nchan, Pushpin).
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// `PUB` commands per write to ringcast's ingest socket (two writes in flight).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Reader threads for the fan-out subscribers.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Publish at this many events per second in total instead of as fast as the server
    /// accepts (0); paced, each event is sent at its due time, one per write or request,
    /// so latency is measured below saturation.
    #[arg(long, default_value_t = 0)]
    pub publish_rate: u64,
    /// Bound on one run, seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
    /// When a run ends short (3 s without a delivery), keep reading this many seconds more
    /// and count what still arrives as late, not lost: a server that stalled and a server
    /// that lost events look alike at the idle end.
    #[arg(long, default_value_t = 10)]
    pub late_secs: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write the results into this directory: `compare-<date>.json`, `.md` and SVG
    /// charts of this and every earlier `compare-*.json` there (latency CDF per server
    /// and mode, memory per connection and deliveries/s per server).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// The idle-memory figure at one count.
#[derive(serde::Serialize, Clone)]
struct Idle {
    requested: usize,
    held: usize,
    failures: std::collections::BTreeMap<String, usize>,
    #[serde(rename = "rss_before_kib")]
    before_kib: u64,
    #[serde(rename = "rss_after_kib")]
    after_kib: u64,
    #[serde(serialize_with = "finite")]
    bytes_per_conn: f64,
}

/// A float as JSON, `null` when not finite.
fn finite<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_finite() {
        s.serialize_f64(*v)
    } else {
        s.serialize_none()
    }
}

/// One measured fan-out run.
#[derive(serde::Serialize)]
struct FanRun {
    events_per_sec: f64,
    deliveries_per_sec: f64,
    delivered: u64,
    expected: u64,
    /// Deliveries that never arrived (expected - delivered, per subscriber), settling
    /// included.
    lost: u64,
    /// Deliveries that arrived only after the run's idle end, while settling.
    late: u64,
    /// Subscribers still short after settling.
    short_subscribers: usize,
    /// Gap notices received (ringcast tells each drop) and the events they counted.
    gap_notices: u64,
    gap_dropped: u64,
    /// Publish rate the publisher achieved (acknowledged publishes per second).
    publish_per_sec: f64,
}

/// The fan-out figures.
struct Fan {
    held: usize,
    requested: usize,
    /// Subscribers not held, by why.
    failures: std::collections::BTreeMap<String, usize>,
    runs: Vec<FanRun>,
    median_deliveries_per_sec: f64,
    latency: Histogram<u64>,
}

/// Runs `ringcast-bench compare`.
pub fn main(mut args: CompareArgs) -> ExitCode {
    if args.scenario == Scenario::Overload {
        args.idle = vec![0];
        args.fast = 2000;
        args.bytes = 128;
        args.transport = Transport::Ws;
    }
    match run(&args) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringcast-bench compare: {e}");
            ExitCode::from(2)
        }
    }
}

fn path(args: &CompareArgs) -> String {
    args.path.clone().unwrap_or_else(|| {
        match (args.server, args.transport) {
            (Server::Ringcast, Transport::Sse) => "/sse?topic=cmp",
            (Server::Ringcast, Transport::Ws) => "/ws?topic=cmp&format=raw",
            (Server::Nchan, Transport::Sse) => "/sse?id=cmp",
            (Server::Nchan, Transport::Ws) => "/ws?id=cmp",
            (Server::Pushpin, _) => "/test/stream",
            (Server::Uws | Server::Kernel, _) => "/ws?topic=cmp",
        }
        .to_owned()
    })
}

/// The topic of the subscription path (`topic=` or nchan's `id=`), `cmp` by default.
fn topic(args: &CompareArgs) -> String {
    let p = path(args);
    let query = p.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("topic=").or_else(|| kv.strip_prefix("id=")))
        .unwrap_or("cmp")
        .to_owned()
}

fn rss_kib(pids: &[u32]) -> Result<u64, String> {
    pids.iter()
        .map(|&pid| crate::procfs::Snapshot::read(pid).map(|s| s.rss_kb))
        .sum()
}

fn run(args: &CompareArgs) -> Result<String, String> {
    let (conditions, mut text, idle, fan) = measure(args)?;
    let json = json(args, &conditions, &idle, fan.as_ref());
    if args.json {
        text = format!("{json}\n");
    }
    if let Some(dir) = &args.out {
        let body = markdown(args, &idle, fan.as_ref());
        let charts = charts(dir, &json)?;
        let charts: Vec<(&str, crate::output::Chart)> = charts.into_iter().collect();
        crate::output::write_out(args.json, &mut text, || {
            crate::output::write_result(dir, "compare", &conditions, &json, &body, &charts)
        })?;
    }
    Ok(text)
}

type Measured = (Conditions, String, Vec<Idle>, Option<Fan>);

fn measure(args: &CompareArgs) -> Result<Measured, String> {
    if args.bytes < 40 {
        return Err("--bytes must be at least 40".into());
    }
    let pid = args.engine.require_pid("compare")?;
    if matches!(args.server, Server::Uws | Server::Kernel) && args.transport != Transport::Ws {
        return Err(format!(
            "--server {} speaks only --transport ws",
            server_name(args.server)
        ));
    }
    if args.idle.windows(2).any(|w| w[1] < w[0]) {
        return Err("--idle counts must ascend".into());
    }
    crate::sys::raise_nofile().map_err(|e| format!("raise RLIMIT_NOFILE: {e}"))?;
    let conditions = Conditions::collect(pid);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ringcast-bench compare: server {:?} at {}, {:?} path {}, pids {:?}",
        args.server,
        args.engine.target,
        args.transport,
        path(args),
        args.engine.pids
    );
    let idle = if args.idle.iter().any(|&n| n > 0) {
        idle(args, &mut out)?
    } else {
        Vec::new()
    };
    let fan = if args.fast > 0 {
        Some(fanout(args, &mut out)?)
    } else {
        None
    };
    let _ = writeln!(out, "{}", conditions.text("  ", "server"));
    Ok((conditions, out, idle, fan))
}

/// `ringcast`, `nchan`, `pushpin`, `uws` or `kernel`.
fn server_name(server: Server) -> &'static str {
    match server {
        Server::Ringcast => "ringcast",
        Server::Nchan => "nchan",
        Server::Pushpin => "pushpin",
        Server::Uws => "uws",
        Server::Kernel => "kernel",
    }
}

/// `saturated` or `paced <rate>/s`.
fn mode(args: &CompareArgs) -> String {
    if args.publish_rate > 0 {
        format!("paced {}/s", args.publish_rate)
    } else {
        "saturated".to_owned()
    }
}

/// The publishes kept in flight, as the publisher applies them (0: ringcast's batches).
fn in_flight(args: &CompareArgs) -> usize {
    match (args.server, args.in_flight) {
        (Server::Uws | Server::Kernel, 0) => 32,
        (_, w) => w,
    }
}

/// The `--json` report (field names are part of the output format; `idle` is the last
/// step, `idle_steps` every step).
#[derive(serde::Serialize)]
struct Json<'a> {
    subcommand: &'static str,
    server: &'static str,
    transport: Transport,
    mode: String,
    target: &'a str,
    path: String,
    pids: &'a [u32],
    events: u64,
    bytes: usize,
    runs: usize,
    publish_rate: u64,
    in_flight: usize,
    idle: Option<&'a Idle>,
    idle_steps: &'a [Idle],
    fanout: Option<FanJson<'a>>,
    conditions: serde_json::Value,
}

#[derive(serde::Serialize)]
struct FanJson<'a> {
    requested: usize,
    held: usize,
    failures: &'a std::collections::BTreeMap<String, usize>,
    median_deliveries_per_sec: f64,
    lost: u64,
    gap_dropped: u64,
    latency: serde_json::Value,
    latency_cdf: Vec<(f64, f64)>,
    runs: &'a [FanRun],
}

fn json(args: &CompareArgs, c: &Conditions, idle: &[Idle], fan: Option<&Fan>) -> String {
    let report = Json {
        subcommand: "compare",
        server: server_name(args.server),
        transport: args.transport,
        mode: mode(args),
        target: &args.engine.target,
        path: path(args),
        pids: &args.engine.pids,
        events: args.events,
        bytes: args.bytes,
        runs: args.runs,
        publish_rate: args.publish_rate,
        in_flight: in_flight(args),
        idle: idle.last(),
        idle_steps: idle,
        fanout: fan.map(|f| FanJson {
            requested: f.requested,
            held: f.held,
            failures: &f.failures,
            median_deliveries_per_sec: f.median_deliveries_per_sec,
            lost: f.runs.iter().map(|r| r.lost).sum(),
            gap_dropped: f.runs.iter().map(|r| r.gap_dropped).sum(),
            latency: crate::output::latency_json(&f.latency),
            latency_cdf: crate::output::latency_cdf("", &f.latency).points,
            runs: &f.runs,
        }),
        conditions: c.to_value(),
    };
    serde_json::to_string(&report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn markdown(args: &CompareArgs, idle: &[Idle], fan: Option<&Fan>) -> String {
    use crate::output::{fixed, markdown_table, quantile_ms};
    let mut md = format!(
        "Server **{}** at {}, {:?} path `{}`, fan-out {}, {} publishes in flight.\n\n",
        server_name(args.server),
        args.engine.target,
        args.transport,
        path(args),
        mode(args),
        in_flight(args)
    );
    if !idle.is_empty() {
        md.push_str("## Idle memory\n\n");
        let rows: Vec<Vec<String>> = idle
            .iter()
            .map(|i| {
                vec![
                    format!("{}/{}", i.held, i.requested),
                    format!("{:?}", i.failures),
                    i.before_kib.to_string(),
                    i.after_kib.to_string(),
                    fixed(i.bytes_per_conn, 0),
                ]
            })
            .collect();
        md.push_str(&markdown_table(
            &[
                "held",
                "failures",
                "VmRSS before KiB",
                "VmRSS after KiB",
                "bytes per held connection",
            ],
            &rows,
        ));
        md.push('\n');
    }
    if let Some(f) = fan {
        md.push_str(&format!(
            "## Fan-out: {}/{} subscribers, {} events of {} B per run\n\n",
            f.held, f.requested, args.events, args.bytes
        ));
        let rows: Vec<Vec<String>> = f
            .runs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                vec![
                    (i + 1).to_string(),
                    fixed(r.events_per_sec, 0),
                    fixed(r.deliveries_per_sec / 1e6, 3),
                    format!("{}/{}", r.delivered, r.expected),
                    r.lost.to_string(),
                    r.late.to_string(),
                    format!("{} ({})", r.gap_notices, r.gap_dropped),
                    fixed(r.publish_per_sec, 0),
                ]
            })
            .collect();
        md.push_str(&markdown_table(
            &[
                "run",
                "events/s",
                "M deliveries/s",
                "delivered",
                "lost",
                "late",
                "gap notices (events)",
                "publishes/s",
            ],
            &rows,
        ));
        md.push_str("\nLatency over all runs, ms:\n\n");
        let h = &f.latency;
        md.push_str(&markdown_table(
            &[
                "median M deliveries/s",
                "p50",
                "p90",
                "p99",
                "p99.9",
                "max",
                "samples",
            ],
            &[vec![
                fixed(f.median_deliveries_per_sec / 1e6, 3),
                quantile_ms(h, 0.5),
                quantile_ms(h, 0.9),
                quantile_ms(h, 0.99),
                quantile_ms(h, 0.999),
                quantile_ms(h, 1.0),
                h.len().to_string(),
            ]],
        ));
    }
    md
}

/// The charts of this result and of every earlier `compare-*.json` in `dir`: one latency
/// CDF per server and mode, and memory per connection and deliveries/s with one series
/// (one point, x = the server's place in the list) per server.
fn charts(dir: &Path, json: &str) -> Result<Vec<(&'static str, crate::output::Chart)>, String> {
    use crate::output::{Chart, Series};
    let mut results: Vec<serde_json::Value> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut names: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("compare-") && n.ends_with(".json"))
            })
            .collect();
        names.sort();
        for name in names {
            if let Some(v) = std::fs::read_to_string(&name)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
            {
                results.push(v);
            }
        }
    }
    results.push(serde_json::from_str(json).map_err(|e| e.to_string())?);
    let label = |v: &serde_json::Value| {
        format!(
            "{} {} ({})",
            v["server"].as_str().unwrap_or("?"),
            v["mode"].as_str().unwrap_or("?"),
            v["conditions"]["date"].as_str().unwrap_or("?")
        )
    };
    let cdf = Chart {
        title: "compare: fan-out latency, publish to receipt".into(),
        x_label: "latency, ms".into(),
        y_label: "fraction of deliveries at or below".into(),
        x_log: true,
        series: results
            .iter()
            .filter_map(|v| {
                let points = v["fanout"]["latency_cdf"].as_array()?;
                Some(Series {
                    label: label(v),
                    points: points
                        .iter()
                        .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
                        .collect(),
                })
            })
            .collect(),
    };
    let per_server = |title: &str, y_label: &str, pick: &dyn Fn(&serde_json::Value) -> Option<f64>| Chart {
        title: title.to_owned(),
        x_label: "result (in the order measured)".into(),
        y_label: y_label.to_owned(),
        x_log: false,
        series: results
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                Some(Series {
                    label: label(v),
                    points: vec![((i + 1) as f64, pick(v)?)],
                })
            })
            .collect(),
    };
    Ok(vec![
        ("latency-cdf", cdf),
        (
            "memory-per-conn",
            per_server(
                "compare: idle memory per held connection",
                "bytes of server RSS",
                &|v| v["idle"]["bytes_per_conn"].as_f64(),
            ),
        ),
        (
            "deliveries",
            per_server(
                "compare: fan-out deliveries per second (median of runs)",
                "deliveries per second",
                &|v| v["fanout"]["median_deliveries_per_sec"].as_f64(),
            ),
        ),
    ])
}

/// Opens one subscriber and waits for its response head: the stream and the body bytes
/// that came with the head, or why it was not held (a status other than 200, or 101 with
/// the right `Sec-WebSocket-Accept` over `ws`; an error).
fn subscribe(args: &CompareArgs, path: &str) -> Result<(TcpStream, Vec<u8>), String> {
    let target = &args.engine.target;
    let mut s = TcpStream::connect(target).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let (req, accept) = match args.transport {
        Transport::Sse => (
            format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nAccept: text/event-stream\r\n\r\n")
                .into_bytes(),
            None,
        ),
        Transport::Ws => {
            let mut nonce = [0u8; 16];
            crate::sys::random_bytes(&mut nonce).map_err(|e| format!("getrandom: {e}"))?;
            let key = crate::ws::key_from(nonce);
            (
                crate::ws::upgrade_request(path, target, &key),
                Some(crate::ws::accept_for(&key)),
            )
        }
    };
    s.write_all(&req).map_err(|e| format!("send: {e}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).map_err(|e| format!("read head: {e}"))?;
        if n == 0 {
            return Err("closed before the head".into());
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = find(&got, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            let status = head.lines().next().unwrap_or("").to_owned();
            match &accept {
                None if !status.starts_with("HTTP/1.1 200") => return Err(format!("status {status:?}")),
                Some(_) if !status.starts_with("HTTP/1.1 101") => return Err(format!("status {status:?}")),
                Some(want) => {
                    let ok = head.lines().filter_map(|l| l.split_once(':')).any(|(k, v)| {
                        k.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == want
                    });
                    if !ok {
                        return Err("bad/upgrade: wrong or missing Sec-WebSocket-Accept".into());
                    }
                }
                None => {}
            }
            // What followed the head is body (frames over ws): keep it for the reader.
            return Ok((s, got[end + 4..].to_vec()));
        }
        if got.len() > 16 * 1024 {
            return Err("head too large".into());
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A held subscriber and the body bytes that came with its response head.
type Held = (TcpStream, Vec<u8>);

/// Opens `n` more subscribers at `--rate` per second into `held`, counting failures by kind.
fn open_more(
    args: &CompareArgs,
    n: usize,
    held: &mut Vec<Held>,
    failures: &mut std::collections::BTreeMap<String, usize>,
) {
    let path = path(args);
    let start = Instant::now();
    for i in 0..n {
        let due = start + Duration::from_secs_f64(i as f64 / args.rate.max(1) as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        match subscribe(args, &path) {
            Ok(s) => held.push(s),
            Err(e) => *failures.entry(e).or_insert(0) += 1,
        }
    }
}

/// Opens `n` subscribers; returns the held ones and the failures by kind.
fn open_many(args: &CompareArgs, n: usize) -> (Vec<Held>, std::collections::BTreeMap<String, usize>) {
    let mut held = Vec::with_capacity(n);
    let mut failures = std::collections::BTreeMap::new();
    open_more(args, n, &mut held, &mut failures);
    (held, failures)
}

/// The idle-memory figure at each `--idle` count: opens only the difference each step,
/// waits `--settle-secs`, reads the summed `VmRSS`. Idle subscribers are not read (the
/// servers under test send nothing to an idle subscriber of a topic nobody publishes to,
/// apart from ringcast's and uws's keepalives, which the comparison scripts switch off).
fn idle(args: &CompareArgs, out: &mut String) -> Result<Vec<Idle>, String> {
    let before = rss_kib(&args.engine.pids)?;
    let mut held = Vec::new();
    let mut failures = std::collections::BTreeMap::new();
    let mut steps = Vec::new();
    for &n in args.idle.iter().filter(|&&n| n > 0) {
        let t0 = Instant::now();
        let opened = held.len() + failures.values().sum::<usize>();
        open_more(args, n.saturating_sub(opened), &mut held, &mut failures);
        let ramp = t0.elapsed().as_secs_f64();
        thread::sleep(Duration::from_secs(args.settle_secs));
        let after = rss_kib(&args.engine.pids)?;
        let per = if held.is_empty() {
            f64::NAN
        } else {
            (after as f64 - before as f64) * 1024.0 / held.len() as f64
        };
        let _ = writeln!(
            out,
            "  idle: {}/{n} held (step ramp {ramp:.1} s at {}/s), failures {failures:?}; summed VmRSS {before} KiB -> {after} KiB: \
             {per:.0} B per held connection",
            held.len(),
            args.rate
        );
        steps.push(Idle {
            requested: n,
            held: held.len(),
            failures: failures.clone(),
            before_kib: before,
            after_kib: after,
            bytes_per_conn: per,
        });
    }
    drop(held);
    thread::sleep(Duration::from_secs(2));
    Ok(steps)
}

/// Shared state of the reader threads.
struct Shared {
    /// Events received per subscriber.
    counts: Vec<AtomicU64>,
    /// Latest receipt, ns since `base`.
    last_ns: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    closed: AtomicU64,
    /// Gap notices received and the events they said were dropped.
    gap_notices: AtomicU64,
    gap_dropped: AtomicU64,
    stop: AtomicBool,
}

/// What one WebSocket data frame was to the reader.
#[derive(Debug, PartialEq, Eq)]
enum WsMessage {
    /// An event stamped `t=<ns> `.
    Event(u64),
    /// A `ringcast.gap` notice and its `"dropped":N`.
    Gap(u64),
    /// Anything else (another notice).
    Other,
}

fn ws_message(payload: &[u8]) -> WsMessage {
    if let Some(rest) = payload.strip_prefix(b"t=") {
        let digits = rest.split(|&b| b == b' ').next().unwrap_or_default();
        if let Some(ns) = crate::sse::parse_u64(digits) {
            return WsMessage::Event(ns);
        }
    }
    if find(payload, b"\"ringcast.gap\"").is_some() {
        let key = b"\"dropped\":";
        let dropped = find(payload, key)
            .map(|at| {
                let digits: Vec<u8> = payload[at + key.len()..]
                    .iter()
                    .copied()
                    .take_while(u8::is_ascii_digit)
                    .collect();
                crate::sse::parse_u64(&digits).unwrap_or(0)
            })
            .unwrap_or(0);
        return WsMessage::Gap(dropped);
    }
    WsMessage::Other
}

/// Reads what arrived on one WebSocket subscriber: counts events (their latencies into
/// `local`), gap notices, answers pings. `Err` when the stream is unusable (a frame
/// error, a close).
fn ws_input(
    s: &mut TcpStream,
    carry: &mut Vec<u8>,
    input: &[u8],
    now: u64,
    local: &mut Histogram<u64>,
    shared: &Shared,
) -> Result<u64, String> {
    carry.extend_from_slice(input);
    let (mut events, mut closed) = (0u64, false);
    let mut pongs = Vec::new();
    let used = crate::wsframe::server_frames(carry, &mut |f| match f.opcode {
        crate::wsframe::OP_TEXT | crate::wsframe::OP_BINARY => match ws_message(f.payload) {
            WsMessage::Event(sent) => {
                events += 1;
                let _ = local.record(now.saturating_sub(sent).max(1) / 1000);
            }
            WsMessage::Gap(n) => {
                shared.gap_notices.fetch_add(1, Ordering::Relaxed);
                shared.gap_dropped.fetch_add(n, Ordering::Relaxed);
            }
            WsMessage::Other => {}
        },
        crate::wsframe::OP_PING => {
            crate::wsframe::client_frame(
                &mut pongs,
                crate::wsframe::OP_PONG,
                f.payload,
                [0x5a, 0x17, 0x3c, 0x81],
            );
        }
        crate::wsframe::OP_CLOSE => closed = true,
        _ => {}
    })?;
    carry.drain(..used);
    if !pongs.is_empty() {
        // A pong is a few bytes on a socket that is being read: it fits, or the
        // connection is broken anyway.
        let _ = s.write(&pongs);
    }
    if closed {
        return Err("closed by the server".into());
    }
    Ok(events)
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Finds each complete `t=<digits> ` marker in `carry` + `input` (a `t` not preceded by
/// a letter or digit), calls `seen` with its number, and leaves in `carry` what may
/// start a marker completed by later bytes.
fn scan(carry: &mut Vec<u8>, input: &[u8], mut seen: impl FnMut(u64)) {
    carry.extend_from_slice(input);
    let buf = &carry[..];
    let len = buf.len();
    let mut i = 0;
    let mut consumed = 0;
    let mut pending = None;
    while i + 1 < len {
        if buf[i] == b't' && buf[i + 1] == b'=' && (i == 0 || !buf[i - 1].is_ascii_alphanumeric()) {
            let mut j = i + 2;
            while j < len && buf[j].is_ascii_digit() {
                j += 1;
            }
            if j == len {
                if j - i < 40 {
                    pending = Some(i);
                }
                break;
            }
            if buf[j] == b' ' && j > i + 2 {
                let ns = std::str::from_utf8(&buf[i + 2..j])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                seen(ns);
                i = j + 1;
                consumed = i;
                continue;
            }
        }
        i += 1;
    }
    let keep = pending.unwrap_or_else(|| len.saturating_sub(2).max(consumed));
    carry.drain(..keep.min(len));
}

fn reader(
    socks: Vec<(usize, TcpStream, Vec<u8>)>,
    shared: Arc<Shared>,
    base: Instant,
    transport: Transport,
) -> Result<(), String> {
    let epoll = crate::sys::Epoll::new().map_err(|e| e.to_string())?;
    let mut conns = Vec::with_capacity(socks.len());
    for (token, (index, s, carry)) in socks.into_iter().enumerate() {
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        epoll
            .add(s.as_raw_fd(), libc::EPOLLIN as u32, token as u64)
            .map_err(|e| e.to_string())?;
        conns.push((index, s, carry, true));
    }
    let mut tokens = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut local = new_histogram();
    while !shared.stop.load(Ordering::Relaxed) {
        epoll.wait(&mut tokens, 256, 50).map_err(|e| e.to_string())?;
        for &t in &tokens {
            let (index, s, carry, open) = &mut conns[t as usize];
            if !*open {
                continue;
            }
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        *open = false;
                        shared.closed.fetch_add(1, Ordering::Relaxed);
                        let _ = s.shutdown(std::net::Shutdown::Both);
                        break;
                    }
                    Ok(n) => {
                        let now = base.elapsed().as_nanos() as u64;
                        let mut k = 0;
                        if transport == Transport::Sse {
                            scan(carry, &buf[..n], |sent| {
                                k += 1;
                                let _ = local.record(now.saturating_sub(sent).max(1) / 1000);
                            });
                        } else {
                            match ws_input(s, carry, &buf[..n], now, &mut local, &shared) {
                                Ok(events) => k = events,
                                Err(_) => {
                                    *open = false;
                                    shared.closed.fetch_add(1, Ordering::Relaxed);
                                    let _ = s.shutdown(std::net::Shutdown::Both);
                                    break;
                                }
                            }
                        }
                        if k > 0 {
                            shared.counts[*index].fetch_add(k, Ordering::Relaxed);
                            shared.last_ns.fetch_max(now, Ordering::Relaxed);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        *open = false;
                        shared.closed.fetch_add(1, Ordering::Relaxed);
                        let _ = s.shutdown(std::net::Shutdown::Both);
                        break;
                    }
                }
            }
        }
        if !local.is_empty() {
            if let Ok(mut h) = shared.latency.lock() {
                let _ = h.add(&local);
            }
            local.reset();
        }
    }
    Ok(())
}

/// The payload of one event: `t=<ns since base> i=<index> ` padded with `x`.
fn payload(base: Instant, index: u64, bytes: usize) -> Vec<u8> {
    let mut data = format!("t={} i={index} ", base.elapsed().as_nanos()).into_bytes();
    data.resize(bytes.max(data.len()), b'x');
    data
}

/// Publishes `count` events from index `first`, as fast as the server accepts them.
fn publish(args: &CompareArgs, base: Instant, first: u64, count: u64) -> Result<(), String> {
    let t0 = Instant::now();
    let pace = Pace {
        t0,
        first,
        rate: args.publish_rate,
    };
    let pace = &pace;
    match args.server {
        Server::Ringcast if args.in_flight > 0 => publish_ingest_window(args, base, first, count, pace),
        Server::Ringcast => publish_ingest(args, base, first, count, pace),
        Server::Uws | Server::Kernel => publish_ws(args, base, first, count, pace),
        Server::Nchan | Server::Pushpin => {
            let per = count.div_ceil(args.publishers.max(1) as u64);
            thread::scope(|scope| {
                let handles: Vec<_> = (0..args.publishers.max(1) as u64)
                    .map(|p| {
                        let lo = first + p * per;
                        let hi = (first + count).min(lo + per);
                        scope.spawn(move || publish_http(args, base, lo, hi, pace))
                    })
                    .collect();
                handles
                    .into_iter()
                    .try_for_each(|h| h.join().unwrap_or_else(|_| Err("publisher panicked".into())))
            })
        }
    }
}

/// When event `i` is due: `t0 + (i - first) / rate`, or at once without a rate.
struct Pace {
    t0: Instant,
    first: u64,
    rate: u64,
}

impl Pace {
    /// Waits until event `i` is due and returns its payload, stamped with the time it
    /// was due: a publisher held up by a slow server (a POST that blocks) then shows in
    /// the latency instead of hiding it (coordinated omission). Unpaced, the stamp is
    /// the time of sending.
    fn payload(&self, base: Instant, i: u64, bytes: usize) -> Vec<u8> {
        if self.rate == 0 {
            return payload(base, i, bytes);
        }
        let due = self.t0 + Duration::from_secs_f64((i - self.first) as f64 / self.rate as f64);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            thread::sleep(d);
        }
        crate::fanout::publish::payload_at(due.duration_since(base).as_nanos(), i, bytes)
    }
}

fn publish_ingest(
    args: &CompareArgs,
    base: Instant,
    first: u64,
    count: u64,
    pace: &Pace,
) -> Result<(), String> {
    let (mut writer, mut replies, topic) = ingest(args)?;
    let batch = if pace.rate > 0 {
        1
    } else {
        args.batch.max(1) as u64
    };
    let mut in_flight: Vec<u64> = Vec::new();
    let (mut next, end) = (first, first + count);
    let mut line = String::new();
    while next < end || !in_flight.is_empty() {
        if next < end {
            let n = batch.min(end - next);
            let mut frames = Vec::new();
            for i in next..next + n {
                let data = pace.payload(base, i, args.bytes);
                frames.extend_from_slice(format!("PUB {topic} {}\n", args.bytes).as_bytes());
                frames.extend_from_slice(&data);
                frames.push(b'\n');
            }
            writer
                .write_all(&frames)
                .map_err(|e| format!("ingest write: {e}"))?;
            in_flight.push(n);
            next += n;
        }
        if in_flight.len() == 2 || next >= end {
            for _ in 0..in_flight.remove(0) {
                line.clear();
                replies
                    .read_line(&mut line)
                    .map_err(|e| format!("ingest read: {e}"))?;
                if !line.starts_with("+OK") {
                    return Err(format!("ingest reply {line:?}"));
                }
            }
        }
    }
    Ok(())
}

/// The ingest socket (`--publish`, else `--ingest`): a writer, a reader of its replies,
/// and the topic to publish on.
fn ingest(args: &CompareArgs) -> Result<(UnixStream, BufReader<UnixStream>, String), String> {
    let sock = args
        .publish
        .clone()
        .unwrap_or_else(|| args.engine.ingest.display().to_string());
    let stream = UnixStream::connect(&sock).map_err(|e| format!("ingest {sock}: {e}"))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let writer = stream.try_clone().map_err(|e| e.to_string())?;
    Ok((writer, BufReader::new(stream), topic(args)))
}

/// Publishes over the ingest socket with at most `--in-flight` `PUB`s unacknowledged,
/// refilling the window in one write once half of it was acknowledged.
fn publish_ingest_window(
    args: &CompareArgs,
    base: Instant,
    first: u64,
    count: u64,
    pace: &Pace,
) -> Result<(), String> {
    let (mut writer, mut replies, topic) = ingest(args)?;
    let window = args.in_flight.max(1) as u64;
    let (mut sent, mut acked, end) = (first, first, first + count);
    let mut line = String::new();
    let mut frames = Vec::new();
    while acked < end {
        if sent < end && (sent - acked <= window / 2 || pace.rate > 0) && sent - acked < window {
            frames.clear();
            while sent < end && sent - acked < window {
                let data = pace.payload(base, sent, args.bytes);
                frames.extend_from_slice(format!("PUB {topic} {}\n", args.bytes).as_bytes());
                frames.extend_from_slice(&data);
                frames.push(b'\n');
                sent += 1;
                if pace.rate > 0 {
                    break;
                }
            }
            writer
                .write_all(&frames)
                .map_err(|e| format!("ingest write: {e}"))?;
            continue;
        }
        line.clear();
        replies
            .read_line(&mut line)
            .map_err(|e| format!("ingest read: {e}"))?;
        if !line.starts_with("+OK") {
            return Err(format!("ingest reply {line:?}"));
        }
        acked += 1;
    }
    Ok(())
}

/// Publishes over a publishing WebSocket (`/pub?topic=T` on `--target`, the protocol of
/// `bench/peers/uws/server.js` and `ws-ref-server`: one `+` frame answers each message
/// after its fan-out) with at most `--in-flight` (default 32) unanswered.
fn publish_ws(args: &CompareArgs, base: Instant, first: u64, count: u64, pace: &Pace) -> Result<(), String> {
    let target = &args.engine.target;
    let mut s = TcpStream::connect(target).map_err(|e| format!("publish connect {target}: {e}"))?;
    // A server answers a window of publishes after their fan-out: under overload that
    // takes longer than one socket operation, so the bound is the run's.
    let ack_timeout = Duration::from_secs(args.timeout_secs).max(IO_TIMEOUT);
    s.set_read_timeout(Some(ack_timeout)).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut nonce = [0u8; 16];
    crate::sys::random_bytes(&mut nonce).map_err(|e| format!("getrandom: {e}"))?;
    let key = crate::ws::key_from(nonce);
    let path = format!("/pub?topic={}", topic(args));
    s.write_all(&crate::ws::upgrade_request(&path, target, &key))
        .map_err(|e| format!("publish upgrade: {e}"))?;
    let mut carry = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while find(&carry, b"\r\n\r\n").is_none() {
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("publish upgrade read: {e}"))?;
        if n == 0 || carry.len() > 16 * 1024 {
            return Err("publish upgrade: closed or head too large".into());
        }
        carry.extend_from_slice(&buf[..n]);
    }
    let end_head = find(&carry, b"\r\n\r\n").unwrap_or(0);
    if !carry.starts_with(b"HTTP/1.1 101") {
        return Err(format!(
            "publish upgrade: {:?}",
            String::from_utf8_lossy(&carry[..end_head.min(64)])
        ));
    }
    carry.drain(..end_head + 4);
    let window = in_flight(args).max(1) as u64;
    let (mut sent, mut acked, end) = (first, first, first + count);
    let mut frames = Vec::new();
    let mut mask = nonce[0..4].try_into().unwrap_or([1, 2, 3, 4]);
    while acked < end {
        if sent < end && (sent - acked <= window / 2 || pace.rate > 0) && sent - acked < window {
            frames.clear();
            while sent < end && sent - acked < window {
                let data = pace.payload(base, sent, args.bytes);
                mask = [mask[1], mask[2], mask[3], mask[0].wrapping_add(1)];
                crate::wsframe::client_frame(&mut frames, crate::wsframe::OP_TEXT, &data, mask);
                sent += 1;
                if pace.rate > 0 {
                    break;
                }
            }
            s.write_all(&frames).map_err(|e| format!("publish write: {e}"))?;
            continue;
        }
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("publish read (acks): {e}"))?;
        if n == 0 {
            return Err("the server closed the publishing WebSocket".into());
        }
        carry.extend_from_slice(&buf[..n]);
        let mut acks = 0;
        let used = crate::wsframe::server_frames(&carry, &mut |f| {
            if f.opcode == crate::wsframe::OP_TEXT {
                acks += 1;
            }
        })?;
        carry.drain(..used);
        acked += acks;
    }
    Ok(())
}

fn json_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn publish_http(args: &CompareArgs, base: Instant, lo: u64, hi: u64, pace: &Pace) -> Result<(), String> {
    if lo >= hi {
        return Ok(());
    }
    let (addr, path, ctype) = match args.server {
        Server::Nchan => (
            args.engine.target.clone(),
            args.publish.clone().unwrap_or_else(|| "/pub?id=cmp".into()),
            "application/octet-stream",
        ),
        _ => (
            args.publish.clone().unwrap_or_else(|| "127.0.0.1:5561".into()),
            "/publish/".to_owned(),
            "application/json",
        ),
    };
    // Pushpin answers `Connection: close` on its publish endpoint: reconnect when told.
    let connect = || -> Result<(TcpStream, BufReader<TcpStream>), String> {
        let stream = TcpStream::connect(&addr).map_err(|e| format!("publish connect {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        Ok((writer, BufReader::new(stream)))
    };
    let (mut writer, mut reader) = connect()?;
    let mut line = String::new();
    for i in lo..hi {
        let data = pace.payload(base, i, args.bytes);
        let body = match args.server {
            Server::Nchan => data,
            _ => {
                let content = format!("data: {}\n\n", String::from_utf8_lossy(&data));
                format!(
                    "{{\"items\":[{{\"channel\":\"test\",\"formats\":{{\"http-stream\":{{\"content\":\"{}\"}}}}}}]}}",
                    json_escape(&content)
                )
                .into_bytes()
            }
        };
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        writer
            .write_all(&req)
            .map_err(|e| format!("publish write: {e}"))?;
        // Response: status line, headers, a Content-Length body.
        line.clear();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("publish read: {e}"))?;
        if !line.starts_with("HTTP/1.1 2") {
            return Err(format!("publish status {:?}", line.trim_end()));
        }
        let mut length = 0usize;
        let mut close = false;
        loop {
            line.clear();
            reader
                .read_line(&mut line)
                .map_err(|e| format!("publish read: {e}"))?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        let mut skip = vec![0u8; length];
        reader
            .read_exact(&mut skip)
            .map_err(|e| format!("publish body: {e}"))?;
        if close && i + 1 < hi {
            (writer, reader) = connect()?;
        }
    }
    Ok(())
}

fn fanout(args: &CompareArgs, out: &mut String) -> Result<Fan, String> {
    let base = Instant::now();
    let t_open = Instant::now();
    let (held, failures) = open_many(args, args.fast);
    let _ = writeln!(
        out,
        "  fan-out: {}/{} subscribers held (ramp {:.1} s), failures {failures:?}; {} events of {} B per run, \
         {} runs after a warm-up of {}, {} reader threads, {}",
        held.len(),
        args.fast,
        t_open.elapsed().as_secs_f64(),
        args.events,
        args.bytes,
        args.runs,
        (args.events / 10).max(1),
        args.threads,
        match args.server {
            Server::Ringcast if args.in_flight > 0 => format!("ingest socket, {} PUB in flight", args.in_flight),
            Server::Ringcast => format!("ingest socket, {} PUB per write", args.batch),
            Server::Uws | Server::Kernel => format!("publishing WebSocket, {} in flight", in_flight(args)),
            _ => format!("{} keep-alive HTTP publishers, one event per POST", args.publishers),
        } + &if args.publish_rate > 0 {
            format!(", paced at {} events/s", args.publish_rate)
        } else {
            ", as fast as accepted".to_owned()
        }
    );
    if held.is_empty() {
        return Err("no fan-out subscriber was held".into());
    }
    let k = held.len();
    let shared = Arc::new(Shared {
        counts: (0..k).map(|_| AtomicU64::new(0)).collect(),
        last_ns: AtomicU64::new(0),
        latency: Mutex::new(new_histogram()),
        closed: AtomicU64::new(0),
        gap_notices: AtomicU64::new(0),
        gap_dropped: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let threads = args.threads.max(1);
    let mut parts: Vec<Vec<(usize, TcpStream, Vec<u8>)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, (s, carry)) in held.into_iter().enumerate() {
        parts[i % threads].push((i, s, carry));
    }
    let handles: Vec<_> = parts
        .into_iter()
        .map(|p| {
            let shared = Arc::clone(&shared);
            let transport = args.transport;
            thread::spawn(move || reader(p, shared, base, transport))
        })
        .collect();
    // Let the server finish subscribing everyone (Pushpin subscribes after the head).
    thread::sleep(Duration::from_secs(2));
    let mut next = 0u64;
    let mut rates = Vec::new();
    let mut all = new_histogram();
    let mut lines = Vec::new();
    let mut runs = Vec::new();
    for run in 0..=args.runs {
        let events = if run == 0 {
            (args.events / 10).max(1)
        } else {
            args.events
        };
        let before: Vec<u64> = shared.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let gaps_before = (
            shared.gap_notices.load(Ordering::Relaxed),
            shared.gap_dropped.load(Ordering::Relaxed),
        );
        if let Ok(mut h) = shared.latency.lock() {
            h.reset();
        }
        let t0 = Instant::now();
        let t0_ns = t0.duration_since(base).as_nanos() as u64;
        let published = publish(args, base, next, events);
        let publish_secs = t0.elapsed().as_secs_f64();
        next += events;
        let expected = events * k as u64;
        let deadline = t0 + Duration::from_secs(args.timeout_secs);
        let mut last = (0u64, Instant::now());
        let got = loop {
            let got: u64 = shared
                .counts
                .iter()
                .zip(&before)
                .map(|(c, b)| c.load(Ordering::Relaxed) - b)
                .sum();
            if got >= expected || Instant::now() >= deadline || last.1.elapsed() >= IDLE_END {
                break got;
            }
            if got != last.0 {
                last = (got, Instant::now());
            }
            thread::sleep(Duration::from_millis(2));
        };
        let secs = (shared.last_ns.load(Ordering::Relaxed).saturating_sub(t0_ns) as f64 / 1e9)
            .max(publish_secs)
            .max(1e-9);
        // Short at the idle end: keep reading, so that late is told apart from lost.
        let settle_end = Instant::now() + Duration::from_secs(args.late_secs);
        let mut settled = got;
        while settled < expected && Instant::now() < settle_end {
            thread::sleep(Duration::from_millis(20));
            settled = shared
                .counts
                .iter()
                .zip(&before)
                .map(|(c, b)| c.load(Ordering::Relaxed) - b)
                .sum();
        }
        let late = settled - got;
        let short: Vec<u64> = shared
            .counts
            .iter()
            .zip(&before)
            .map(|(c, b)| events.saturating_sub(c.load(Ordering::Relaxed) - b))
            .collect();
        let lost: u64 = short.iter().sum();
        let gap_notices = shared.gap_notices.load(Ordering::Relaxed) - gaps_before.0;
        let gap_dropped = shared.gap_dropped.load(Ordering::Relaxed) - gaps_before.1;
        let losers = short.iter().filter(|&&s| s > 0).count();
        let h = shared
            .latency
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| new_histogram());
        let label = if run == 0 {
            "warm-up".to_owned()
        } else {
            format!("run {run}")
        };
        lines.push(format!(
            "    {label}: {:.0} events/s fanned out, {:.3} M deliveries/s, publish {:.0} events/s{}; \
             {got}/{expected} delivered, {lost} lost ({losers} subscribers short), {late} late, gap notices {gap_notices} \
             ({gap_dropped} events), {} closed; latency {}",
            events as f64 / secs,
            got as f64 / secs / 1e6,
            events as f64 / publish_secs,
            match &published {
                Ok(()) => String::new(),
                Err(e) => format!(" (publishing failed: {e})"),
            },
            shared.closed.load(Ordering::Relaxed),
            latency_text(&h)
        ));
        if run > 0 {
            rates.push((got as f64 / secs, lost));
            runs.push(FanRun {
                events_per_sec: events as f64 / secs,
                deliveries_per_sec: got as f64 / secs,
                delivered: got,
                expected,
                lost,
                late,
                short_subscribers: losers,
                gap_notices,
                gap_dropped,
                publish_per_sec: events as f64 / publish_secs,
            });
            let _ = all.add(&h);
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
    let mut d: Vec<f64> = rates.iter().map(|r| r.0).collect();
    d.sort_by(f64::total_cmp);
    let median = d[d.len() / 2];
    let lost: u64 = rates.iter().map(|r| r.1).sum();
    let dropped: u64 = runs.iter().map(|r| r.gap_dropped).sum();
    let late: u64 = runs.iter().map(|r| r.late).sum();
    let _ = writeln!(
        out,
        "    SUMMARY {:?}: median {:.3} M deliveries/s ({:.0} events/s fanned out), spread {:.3}..{:.3}; \
         lost {lost} of {} over {} runs ({dropped} told by gap notices), {late} late; latency over all runs {}",
        args.server,
        median / 1e6,
        median / k as f64,
        d[0] / 1e6,
        d[d.len() - 1] / 1e6,
        args.events * k as u64 * args.runs as u64,
        args.runs,
        latency_text(&all)
    );
    Ok(Fan {
        held: k,
        requested: args.fast,
        failures,
        runs,
        median_deliveries_per_sec: median,
        latency: all,
    })
}

fn latency_text(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".into();
    }
    let q = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        q(0.5),
        q(0.99),
        h.max() as f64 / 1000.0,
        h.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(chunks: &[&[u8]]) -> Vec<u64> {
        let mut carry = Vec::new();
        let mut out = Vec::new();
        for c in chunks {
            scan(&mut carry, c, |n| out.push(n));
        }
        out
    }

    #[test]
    fn markers_are_found_across_splits_and_only_once() {
        let whole =
            b"Content-Type: text/plain; charset=utf-8\r\n\r\ndata: t=12 i=0 xx\n\ndata: t=345 i=1 x\n\n";
        assert_eq!(seen(&[whole]), vec![12, 345]);
        for cut in 0..whole.len() {
            assert_eq!(seen(&[&whole[..cut], &whole[cut..]]), vec![12, 345], "cut {cut}");
        }
    }

    #[test]
    fn a_t_inside_a_word_is_not_a_marker() {
        assert_eq!(seen(&[b"charset=1 at=5 t=7 "]), vec![7]);
    }
}
