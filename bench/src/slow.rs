//! The `slow` subcommand: a mix of fast and slow readers on one topic, for the
//! backpressure work. K fast SSE subscribers read everything at once (the `fanout`
//! readers); S slow ones, each with a small `SO_RCVBUF`, read at most `--slow-read-bps`
//! bytes per second (0: never). A publisher sends `--rate` events/s of `--bytes` bytes
//! for `--duration` seconds through the ingest socket, each event stamped with its
//! scheduled publish time, so the fast class's latency counts any delay of the publisher
//! too (no coordinated omission).
//!
//! Reported: for the fast class, deliveries/s, latency percentiles and losses (events a
//! fast reader never got, gap notices it was sent, streams ended); for the slow class,
//! events received, `ringcast.gap` notices and the events they counted, streams the
//! engine ended; and the engine's counters across the run (`dropped`, `coalesced`,
//! `slow_disconnected`, ...). Exit status 1 if a fast reader lost anything.
//!
//! Every wait is bounded: the fast readers get [`IDLE_END`] without progress to catch up
//! after the last publish, the subscribers [`crate::fanout`]'s bound to be counted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::conditions::Conditions;
use crate::engine_args::EngineArgs;
use crate::fanout::publish::{Paced, Publisher};
use crate::fanout::readers::{Readers, Totals};
use crate::fanout::scan::{Scan, Seen};
use crate::fanout::{counter_deltas, open_fast, open_slow, resolve, totals, wait_streams};
use crate::output::{self, Chart};

/// The fast readers are done when none made progress for this long.
const IDLE_END: Duration = Duration::from_secs(3);
/// How often the slow readers take their byte allowance.
const SLOW_TICK: Duration = Duration::from_millis(10);
/// Bound on reading what is left at the end.
const DRAIN_MAX: Duration = Duration::from_secs(5);
/// A slow reader saves at most this much allowance while nothing is there to read.
const SLOW_BURST_SECS: f64 = 0.5;

/// Arguments of `ringcast-bench slow`.
#[derive(clap::Args, Debug, Clone)]
pub struct SlowArgs {
    /// The engine under test.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// The topic every subscriber reads and every event goes to.
    #[arg(long, default_value = "slow")]
    pub topic: String,
    /// Fast subscribers: read everything as it arrives.
    #[arg(long, default_value_t = 200)]
    pub fast: usize,
    /// Slow subscribers: read at most `--slow-read-bps` each.
    #[arg(long, default_value_t = 50)]
    pub slow: usize,
    /// Bytes per second each slow subscriber reads; 0: never reads.
    #[arg(long, default_value_t = 2000)]
    pub slow_read_bps: u64,
    /// Receive buffer of a slow subscriber, bytes, set before it connects (the kernel
    /// doubles it).
    #[arg(long, default_value_t = 4096)]
    pub slow_rcvbuf: u32,
    /// Events published per second.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Payload bytes per event (at least 40: the timestamp and index).
    #[arg(long, default_value_t = 256)]
    pub bytes: usize,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Reader threads for the fast subscribers.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write the results into this directory: `slow-<date>.json`, `.md` and the
    /// fast class's latency CDF as SVG.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// What the slow readers saw, summed over them.
#[derive(Debug, Clone, Default)]
struct SlowTotals {
    /// Events read while reading at the limited rate.
    events: u64,
    /// Events read at the end at full speed, from what the kernel buffers and the
    /// engine's queue still held (not counted in `events`).
    drained: u64,
    gaps: u64,
    /// Events the gap notices counted.
    told_dropped: u64,
    notices: u64,
    /// Streams the engine ended (EOF or reset).
    closed: u64,
    bytes: u64,
    /// Events received per slow subscriber.
    per_sub: Vec<u64>,
    /// The first framing or read error, if any.
    error: Option<String>,
}

/// Everything one run measured.
struct Outcome {
    published: Paced,
    events: u64,
    publish_secs: f64,
    /// From the first scheduled publish to the last fast delivery.
    secs: f64,
    fast: Totals,
    latency: Histogram<u64>,
    fast_error: Option<String>,
    slow: SlowTotals,
    counters: BTreeMap<String, i64>,
}

impl Outcome {
    /// Events some fast reader never received (whether or not it was told).
    fn fast_lost(&self, fast: usize) -> u64 {
        (self.published.acked * fast as u64).saturating_sub(self.fast.events)
    }

    /// Whether the fast class got every event once, in order, with no gap notice.
    fn fast_whole(&self, fast: usize) -> bool {
        self.fast_lost(fast) == 0
            && self.fast.gaps == 0
            && self.fast.closed == 0
            && self.fast.disorder == 0
            && self.fast_error.is_none()
            && self.published.acked == self.events
    }
}

/// Runs `ringcast-bench slow`.
pub fn main(args: SlowArgs) -> ExitCode {
    crate::report::finish("slow", run(&args))
}

fn run(args: &SlowArgs) -> Result<(String, bool), String> {
    if args.bytes < 40 || args.fast == 0 || args.rate <= 0.0 || args.duration == 0 {
        return Err("--bytes must be at least 40, --fast, --rate and --duration above 0".into());
    }
    crate::sys::raise_nofile().map_err(|e| format!("raise RLIMIT_NOFILE: {e}"))?;
    let base = Instant::now();
    let conditions = Conditions::collect(args.engine.pid().unwrap_or_else(std::process::id));
    let admin = (args.engine.admin != "none").then_some(args.engine.admin.as_str());
    let streams_before = admin.and_then(totals).map_or(0, |t| t["streams"]);
    let target = resolve(&args.engine.target)?;
    let fast = open_fast(&args.topic, args.fast, target)?;
    let slow = (0..args.slow)
        .map(|_| open_slow(&args.topic, args.slow_rcvbuf, target))
        .collect::<Result<Vec<_>, _>>()?;
    let readers = Readers::start(fast, args.threads, base, true).map_err(|e| format!("readers: {e}"))?;
    let slow = SlowReaders::start(slow, args.slow_read_bps).map_err(|e| format!("slow readers: {e}"))?;
    if let Some(admin) = admin {
        wait_streams(admin, streams_before + (args.fast + args.slow) as i64)?;
    }
    let mut publisher = Publisher::connect(&args.engine.ingest).map_err(|e| e.to_string())?;
    let before = admin.and_then(totals);
    let events = (args.rate * args.duration as f64).round() as u64;
    let t0 = Instant::now();
    let published = publisher.publish_paced(
        std::slice::from_ref(&args.topic),
        events,
        args.bytes,
        args.rate,
        base,
    )?;
    let publish_secs = t0.elapsed().as_secs_f64();
    wait_fast(&readers, published.acked);
    let after = admin.and_then(totals);
    let end_ns = readers.last_event_ns();
    let t0_ns = t0.duration_since(base).as_nanos() as u64;
    let outcome = Outcome {
        published,
        events,
        publish_secs,
        secs: (end_ns.saturating_sub(t0_ns) as f64 / 1e9).max(publish_secs),
        fast: readers.totals(),
        latency: readers.take_latencies(),
        fast_error: readers.first_error(),
        slow: slow.stop(),
        counters: counter_deltas(before, after),
    };
    readers.stop();
    let ok = outcome.fast_whole(args.fast);
    let json = json(args, &conditions, &outcome);
    let mut text = if args.json {
        format!("{json}\n")
    } else {
        text(args, &conditions, &outcome)
    };
    if let Some(dir) = &args.out {
        let chart = Chart {
            title: format!(
                "slow: fast readers' latency from scheduled publish ({} fast, {} slow at {} B/s)",
                args.fast, args.slow, args.slow_read_bps
            ),
            x_label: "latency, ms".into(),
            y_label: "fraction of deliveries at or below".into(),
            x_log: true,
            series: vec![output::latency_cdf("fast readers", &outcome.latency)],
        };
        let body = markdown(args, &outcome);
        crate::output::write_out(args.json, &mut text, || {
            output::write_result(dir, "slow", &conditions, &json, &body, &[("latency-cdf", chart)])
        })?;
    }
    Ok((text, ok))
}

/// Waits until every fast reader has `events` events (received or told missed), or none
/// made progress for [`IDLE_END`].
fn wait_fast(readers: &Readers, events: u64) {
    let mut last = (readers.min_progress(), Instant::now());
    while readers.min_progress() < events && last.1.elapsed() < IDLE_END {
        let now = readers.min_progress();
        if now != last.0 {
            last = (now, Instant::now());
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// The slow subscribers, read by one thread at a bounded rate each.
struct SlowReaders {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<SlowTotals>,
}

/// One slow subscriber.
struct SlowConn {
    stream: Option<TcpStream>,
    scan: Scan,
    /// Bytes it may still read now.
    allowance: f64,
    events: u64,
}

impl SlowReaders {
    /// Starts reading `streams` at `bps` bytes per second each (0: never).
    ///
    /// # Errors
    /// If a socket cannot be made non-blocking.
    fn start(streams: Vec<TcpStream>, bps: u64) -> io::Result<SlowReaders> {
        let mut conns = Vec::with_capacity(streams.len());
        for s in streams {
            s.set_nonblocking(true)?;
            conns.push(SlowConn {
                stream: Some(s),
                scan: Scan::default(),
                allowance: 0.0,
                events: 0,
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || slow_loop(conns, bps, &flag));
        Ok(SlowReaders { stop, thread })
    }

    /// Stops reading and returns what was seen. Before it returns, the streams are read
    /// at full speed until nothing more comes (at most [`DRAIN_MAX`]), so gap notices
    /// queued behind the backlog are counted, and a stream the engine ended is counted
    /// as ended even when it was never read.
    fn stop(self) -> SlowTotals {
        self.stop.store(true, Relaxed);
        self.thread.join().unwrap_or_else(|_| SlowTotals {
            error: Some("the slow reader panicked".into()),
            ..SlowTotals::default()
        })
    }
}

fn slow_loop(mut conns: Vec<SlowConn>, bps: u64, stop: &AtomicBool) -> SlowTotals {
    let mut totals = SlowTotals::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut last = Instant::now();
    while !stop.load(Relaxed) {
        thread::sleep(SLOW_TICK);
        let dt = last.elapsed().as_secs_f64();
        last = Instant::now();
        if bps == 0 {
            continue;
        }
        let cap = (bps as f64 * SLOW_BURST_SECS).max(1.0);
        for conn in &mut conns {
            conn.allowance = (conn.allowance + bps as f64 * dt).min(cap);
            let want = (conn.allowance as usize).min(buf.len());
            if want > 0 {
                let n = read_some(conn, &mut buf[..want], &mut totals);
                conn.allowance -= n as f64;
            }
        }
    }
    // Per subscriber, events read at the limited rate.
    totals.per_sub = conns.iter().map(|c| c.events).collect();
    let read = totals.events;
    // The last read, at full speed: what the kernel buffers and the engine's queue still
    // hold (bounded: publishing has stopped), the gap notices queued behind it, and the
    // end of the streams the engine closed. Over when a round finds nothing new.
    let deadline = Instant::now() + DRAIN_MAX;
    while Instant::now() < deadline {
        let mut moved = 0;
        for conn in &mut conns {
            loop {
                let n = read_some(conn, &mut buf, &mut totals);
                moved += n;
                if n == 0 {
                    break;
                }
            }
        }
        if moved == 0 {
            break;
        }
        thread::sleep(SLOW_TICK * 5);
    }
    totals.drained = totals.events - read;
    totals.events = read;
    totals
}

/// Reads once (non-blocking) into `buf` and scans it; returns the bytes read.
fn read_some(conn: &mut SlowConn, buf: &mut [u8], totals: &mut SlowTotals) -> usize {
    let Some(stream) = conn.stream.as_ref() else {
        return 0;
    };
    let mut stream: &TcpStream = stream;
    match stream.read(buf) {
        Ok(0) => {
            totals.closed += 1;
            conn.stream = None;
            0
        }
        Ok(n) => {
            totals.bytes += n as u64;
            let events = &mut conn.events;
            let result = conn.scan.feed(&buf[..n], &mut |seen| match seen {
                Seen::Event { .. } => {
                    totals.events += 1;
                    *events += 1;
                }
                Seen::Gap { dropped } => {
                    totals.gaps += 1;
                    totals.told_dropped += dropped;
                }
                Seen::Notice => totals.notices += 1,
            });
            if let Err(e) = result {
                totals.error.get_or_insert(e);
                conn.stream = None;
            }
            n
        }
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => 0,
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
            totals.closed += 1;
            conn.stream = None;
            0
        }
        Err(e) => {
            totals.error.get_or_insert(format!("recv: {e}"));
            conn.stream = None;
            0
        }
    }
}

/// The lowest, median and highest of `values`, or zeros when empty.
fn spread(values: &[u64]) -> (u64, u64, u64) {
    let mut v = values.to_vec();
    v.sort_unstable();
    match v.len() {
        0 => (0, 0, 0),
        n => (v[0], v[n / 2], v[n - 1]),
    }
}

fn json(args: &SlowArgs, c: &Conditions, o: &Outcome) -> String {
    let (lo, median, hi) = spread(&o.slow.per_sub);
    serde_json::json!({
        "subcommand": "slow",
        "ok": o.fast_whole(args.fast),
        "target": args.engine.target,
        "topic": args.topic,
        "fast": args.fast,
        "slow": args.slow,
        "slow_read_bps": args.slow_read_bps,
        "slow_rcvbuf": args.slow_rcvbuf,
        "rate": args.rate,
        "bytes": args.bytes,
        "duration_secs": args.duration,
        "published": {
            "events": o.events,
            "acked": o.published.acked,
            "first_seq": o.published.first_seq,
            "last_seq": o.published.last_seq,
            "secs": o.publish_secs,
            "late_events": o.published.late,
            "late_max_ms": o.published.late_max_ms,
        },
        "fast_class": {
            "deliveries": o.fast.events,
            "expected": o.published.acked * args.fast as u64,
            "deliveries_per_sec": o.fast.events as f64 / o.secs.max(1e-9),
            "lost": o.fast_lost(args.fast),
            "gap_notices": o.fast.gaps,
            "told_dropped": o.fast.dropped,
            "out_of_order": o.fast.disorder,
            "closed": o.fast.closed,
            "error": o.fast_error,
            "latency_from_scheduled_publish": output::latency_json(&o.latency),
        },
        "slow_class": {
            "events": o.slow.events,
            "events_per_subscriber": { "min": lo, "median": median, "max": hi },
            "drained_at_end": o.slow.drained,
            "gap_notices": o.slow.gaps,
            "told_dropped": o.slow.told_dropped,
            "other_notices": o.slow.notices,
            "disconnected_by_engine": o.slow.closed,
            "bytes_read": o.slow.bytes,
            "error": o.slow.error,
        },
        "engine_counters": o.counters,
        "conditions": c.to_value(),
    })
    .to_string()
}

fn text(args: &SlowArgs, c: &Conditions, o: &Outcome) -> String {
    let mut out = String::new();
    let verdict = if o.fast_whole(args.fast) {
        "ok"
    } else {
        "FAST READERS LOST EVENTS"
    };
    let _ = writeln!(
        out,
        "ringcast-bench slow: {} fast + {} slow subscribers (SO_RCVBUF {}, {}) on topic {} at {}; \
         {} events/s of {} B for {} s ({verdict})",
        args.fast,
        args.slow,
        args.slow_rcvbuf,
        if args.slow_read_bps == 0 {
            "never read".to_owned()
        } else {
            format!("reading {} B/s each", args.slow_read_bps)
        },
        args.topic,
        args.engine.target,
        args.rate,
        args.bytes,
        args.duration
    );
    let p = &o.published;
    let _ = writeln!(
        out,
        "  published {}/{} in {:.2} s (seq {:?}..{:?}); {} events written over 1 ms late, at most {:.1} ms",
        p.acked, o.events, o.publish_secs, p.first_seq, p.last_seq, p.late, p.late_max_ms
    );
    let h = &o.latency;
    let q = |q: f64| output::quantile_ms(h, q);
    let _ = writeln!(
        out,
        "  fast: {}/{} delivered, {:.0} deliveries/s; lost {}, gap notices {} ({} told dropped), {} out of order, {} closed{}",
        o.fast.events,
        p.acked * args.fast as u64,
        o.fast.events as f64 / o.secs.max(1e-9),
        o.fast_lost(args.fast),
        o.fast.gaps,
        o.fast.dropped,
        o.fast.disorder,
        o.fast.closed,
        o.fast_error.as_ref().map_or(String::new(), |e| format!("; error: {e}"))
    );
    let _ = writeln!(
        out,
        "  fast latency from scheduled publish: p50 {} ms, p90 {} ms, p99 {} ms, p99.9 {} ms, max {} ms ({} samples)",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        q(1.0),
        h.len()
    );
    let (lo, median, hi) = spread(&o.slow.per_sub);
    let _ = writeln!(
        out,
        "  slow: {} events read at the limited rate (per subscriber min {lo}, median {median}, max {hi}), {} more \
         read at full speed after the last publish; {} gap notices counting {} events; {} other notices; {} disconnected by the engine{}",
        o.slow.events,
        o.slow.drained,
        o.slow.gaps,
        o.slow.told_dropped,
        o.slow.notices,
        o.slow.closed,
        o.slow.error.as_ref().map_or(String::new(), |e| format!("; error: {e}"))
    );
    if !o.counters.is_empty() {
        let list: Vec<String> = o.counters.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            out,
            "  engine counters over the run (open: at its end): {}",
            list.join(", ")
        );
    }
    let _ = writeln!(out, "{}", c.text("", "engine"));
    out
}

fn markdown(args: &SlowArgs, o: &Outcome) -> String {
    let h = &o.latency;
    let q = |q: f64| output::quantile_ms(h, q);
    let mut md = format!(
        "{} fast and {} slow SSE subscribers (slow: `SO_RCVBUF` {}, {} B/s each) on topic `{}`; \
         {} events/s of {} B for {} s; {}/{} published.\n\n## Fast class\n\n",
        args.fast,
        args.slow,
        args.slow_rcvbuf,
        args.slow_read_bps,
        args.topic,
        args.rate,
        args.bytes,
        args.duration,
        o.published.acked,
        o.events
    );
    md.push_str(&output::markdown_table(
        &[
            "delivered",
            "deliveries/s",
            "lost",
            "gap notices",
            "closed",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
        ],
        &[vec![
            format!("{}/{}", o.fast.events, o.published.acked * args.fast as u64),
            output::fixed(o.fast.events as f64 / o.secs.max(1e-9), 0),
            o.fast_lost(args.fast).to_string(),
            o.fast.gaps.to_string(),
            o.fast.closed.to_string(),
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            q(1.0),
        ]],
    ));
    let (lo, median, hi) = spread(&o.slow.per_sub);
    md.push_str("\n## Slow class\n\n");
    md.push_str(&output::markdown_table(
        &[
            "events received",
            "per subscriber min / median / max",
            "gap notices",
            "told dropped",
            "disconnected",
        ],
        &[vec![
            o.slow.events.to_string(),
            format!("{lo} / {median} / {hi}"),
            o.slow.gaps.to_string(),
            o.slow.told_dropped.to_string(),
            o.slow.closed.to_string(),
        ]],
    ));
    if !o.counters.is_empty() {
        md.push_str("\n## Engine counters over the run\n\n");
        let rows: Vec<Vec<String>> = o
            .counters
            .iter()
            .map(|(k, v)| vec![k.clone(), v.to_string()])
            .collect();
        md.push_str(&output::markdown_table(&["counter", "value"], &rows));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_min_median_max() {
        assert_eq!(spread(&[]), (0, 0, 0));
        assert_eq!(spread(&[5, 1, 3]), (1, 3, 5));
    }
}
