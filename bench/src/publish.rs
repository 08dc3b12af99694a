//! The `publish` subcommand: acknowledged publishes per second into a running engine, by
//! way of publishing: `ingest` (pipelined `PUB`s on the ingest socket, `--in-flight`
//! unacknowledged per publisher), `http` (`POST /publish` on the admin listener over a
//! keep-alive connection, one request at a time per publisher) or `http-batch` (the same
//! with NDJSON bodies of `--batch` events). For every payload size in `--bytes` and
//! publisher count in `--publishers`, `--runs` runs of `--secs` seconds each; the report
//! gives each run and the median.
//!
//! Nobody subscribes: this measures the publishing path alone (the ingest thread, and for
//! HTTP the admin listener's thread and its one ingest connection).
//!
//! Must never: wait without a bound (every socket has a timeout, every run a deadline),
//! or count a publish the engine did not acknowledge with an id.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use crate::conditions::Conditions;
use crate::output::{to_json_line, write_out, OutDir};

/// Bound on one blocking socket operation.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the replies still in flight at a run's end may take to come back.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const TOPIC: &str = "bench";

/// How events are published.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Ingest,
    Http,
    HttpBatch,
}

/// Arguments of `ringcast-bench publish`.
#[derive(clap::Args, Debug, Clone)]
pub struct PublishArgs {
    #[arg(long, value_enum, default_value_t = Mode::Ingest)]
    pub mode: Mode,
    /// The engine's ingest socket (mode `ingest`).
    #[arg(long, default_value = "./ringcast.sock")]
    pub ingest: PathBuf,
    /// The engine's admin address (modes `http`, `http-batch`).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// Engine process id, for its command line and version in the report.
    #[arg(long)]
    pub pid: u32,
    /// Payload sizes in bytes, each measured in turn.
    #[arg(long, value_delimiter = ',', default_value = "128,16384")]
    pub bytes: Vec<usize>,
    /// Publisher connections at once, each count measured in turn.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub publishers: Vec<usize>,
    /// `PUB`s in flight per publisher (mode `ingest`).
    #[arg(long, default_value_t = 256)]
    pub in_flight: usize,
    /// Events per request (mode `http-batch`; at most the engine's 1000).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Seconds per run.
    #[arg(long, default_value_t = 3)]
    pub secs: u64,
    /// Runs per point.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report into this directory (`publish-<date>.json`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// One publisher's tally.
#[derive(Default, Clone, Copy)]
struct Tally {
    acked: u64,
    refused: u64,
}

/// One measured run.
#[derive(serde::Serialize, Clone, Copy)]
struct Run {
    acked: u64,
    refused: u64,
    secs: f64,
    acked_per_sec: f64,
}

/// One point: a payload size and a publisher count.
#[derive(serde::Serialize)]
struct Point {
    mode: Mode,
    bytes: usize,
    publishers: usize,
    /// `PUB`s in flight per publisher (ingest), events per request (http-batch), 1 (http).
    window: usize,
    runs: Vec<Run>,
    median_acked_per_sec: f64,
}

#[derive(serde::Serialize)]
struct Report {
    subcommand: &'static str,
    points: Vec<Point>,
    conditions: serde_json::Value,
    load_before: String,
    load_after: String,
}

/// Runs `ringcast-bench publish`.
pub fn main(args: PublishArgs) -> ExitCode {
    match run(&args) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringcast-bench publish: {e}");
            ExitCode::from(2)
        }
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn run(args: &PublishArgs) -> Result<String, String> {
    if args.mode == Mode::HttpBatch && !(1..=1000).contains(&args.batch) {
        return Err(format!("--batch {} must be 1 to 1000", args.batch));
    }
    let conditions = Conditions::collect(args.pid);
    let load_before = load();
    let window = match args.mode {
        Mode::Ingest => args.in_flight.max(1),
        Mode::Http => 1,
        Mode::HttpBatch => args.batch,
    };
    let mut points = Vec::new();
    let mut text = String::new();
    for &bytes in &args.bytes {
        for &publishers in &args.publishers {
            let mut runs = Vec::new();
            for _ in 0..args.runs {
                runs.push(measure(args, bytes, publishers.max(1), window)?);
            }
            let mut rates: Vec<f64> = runs.iter().map(|r| r.acked_per_sec).collect();
            rates.sort_by(f64::total_cmp);
            let median = rates[rates.len() / 2];
            text.push_str(&format!(
                "{:?} {bytes} B, {publishers} publishers, window {window}: median {median:.0} acked/s; runs {}\n",
                args.mode,
                runs.iter()
                    .map(|r| format!("{:.0} ({} refused)", r.acked_per_sec, r.refused))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            points.push(Point {
                mode: args.mode,
                bytes,
                publishers,
                window,
                runs,
                median_acked_per_sec: median,
            });
        }
    }
    let report = Report {
        subcommand: "publish",
        points,
        conditions: conditions.to_value(),
        load_before,
        load_after: load(),
    };
    text.push_str(&format!(
        "  load {} -> {}\n{}\n",
        report.load_before,
        report.load_after,
        conditions.text("  ", "engine")
    ));
    let json = to_json_line(&report);
    if let Some(dir) = &args.out {
        write_out(args.json, &mut text, || {
            let out = OutDir::create(dir, OutDir::stem("publish", &conditions))?;
            Ok(vec![out.write_json(&json)?])
        })?;
    }
    Ok(if args.json { json } else { text })
}

/// One run: `publishers` threads publishing for `--secs`, then the replies in flight.
fn measure(args: &PublishArgs, bytes: usize, publishers: usize, window: usize) -> Result<Run, String> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.secs);
    let results: Vec<Result<Tally, String>> = thread::scope(|s| {
        let handles: Vec<_> = (0..publishers)
            .map(|_| {
                s.spawn(move || match args.mode {
                    Mode::Ingest => ingest(&args.ingest, bytes, window, deadline),
                    Mode::Http => http(&args.admin, bytes, 1, deadline),
                    Mode::HttpBatch => http(&args.admin, bytes, window, deadline),
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("publisher thread panicked".into()))
            })
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let mut total = Tally::default();
    for r in results {
        let t = r?;
        total.acked += t.acked;
        total.refused += t.refused;
    }
    Ok(Run {
        acked: total.acked,
        refused: total.refused,
        secs,
        acked_per_sec: total.acked as f64 / secs,
    })
}

fn pub_frame(bytes: usize) -> Vec<u8> {
    let mut frame = format!("PUB {TOPIC} {bytes}\n").into_bytes();
    frame.resize(frame.len() + bytes, b'x');
    frame.push(b'\n');
    frame
}

/// Keeps `window` `PUB`s in flight until `deadline`, then waits for the rest.
fn ingest(path: &Path, bytes: usize, window: usize, deadline: Instant) -> Result<Tally, String> {
    let stream = UnixStream::connect(path).map_err(|e| format!("connect {}: {e}", path.display()))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let frame = pub_frame(bytes);
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::with_capacity(64 << 10, stream);
    let (mut sent, mut tally) = (0u64, Tally::default());
    let mut batch = Vec::new();
    let mut line = Vec::new();
    let drain_by = deadline + DRAIN_TIMEOUT;
    loop {
        let answered = tally.acked + tally.refused;
        if Instant::now() < deadline {
            let room = window as u64 - (sent - answered);
            if room > 0 {
                batch.clear();
                for _ in 0..room {
                    batch.extend_from_slice(&frame);
                }
                writer.write_all(&batch).map_err(|e| format!("write: {e}"))?;
                sent += room;
            }
        } else if answered == sent || Instant::now() > drain_by {
            return Ok(tally);
        }
        // One reply, then whatever else is already buffered.
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("the engine closed the ingest connection".into());
            }
            match line.first() {
                Some(b'+') => tally.acked += 1,
                _ => tally.refused += 1,
            }
            if reader.buffer().is_empty() || tally.acked + tally.refused == sent {
                break;
            }
        }
    }
}

/// `POST /publish` one request at a time until `deadline`: `batch` 1 sends the payload
/// as the body, more send NDJSON lines.
fn http(admin: &str, bytes: usize, batch: usize, deadline: Instant) -> Result<Tally, String> {
    let mut stream = TcpStream::connect(admin).map_err(|e| format!("connect {admin}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let data = "x".repeat(bytes);
    let (body, head) = if batch == 1 {
        let head = format!(
            "POST /publish?topic={TOPIC} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n\r\n",
            data.len()
        );
        (data.into_bytes(), head)
    } else {
        let line = format!("{{\"topic\":\"{TOPIC}\",\"data\":\"{data}\"}}\n");
        let body = line.repeat(batch).into_bytes();
        let head = format!(
            "POST /publish HTTP/1.1\r\nHost: bench\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        (body, head)
    };
    let mut request = head.into_bytes();
    request.extend_from_slice(&body);
    let mut tally = Tally::default();
    let mut buf = Vec::with_capacity(64 << 10);
    while Instant::now() < deadline {
        stream.write_all(&request).map_err(|e| format!("write: {e}"))?;
        let (status, answer) = read_response(&mut stream, &mut buf)?;
        let acked = if batch == 1 {
            u64::from(status == 200)
        } else {
            answer
                .split(|&b| b == b'\n')
                .filter(|l| l.starts_with(b"{\"id\":"))
                .count() as u64
        };
        tally.acked += acked;
        tally.refused += batch as u64 - acked;
    }
    Ok(tally)
}

/// Reads one response (head and `Content-Length` body); returns its status and body.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(u16, Vec<u8>), String> {
    let mut chunk = [0u8; 16 << 10];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad status line: {head}"))?;
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .ok_or_else(|| format!("no Content-Length: {head}"))?;
            let total = end + 4 + length;
            while buf.len() < total {
                let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err("the admin listener closed mid-response".into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..total].to_vec();
            buf.drain(..total);
            return Ok((status, body));
        }
        let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the admin listener closed the connection".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
