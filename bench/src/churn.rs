//! The `churn` subcommand: K steady SSE subscribers on one topic while other
//! subscribers are opened at R per second, each reading its response head and closing
//! after a random short life, and a publisher publishes on the topic at a modest rate.
//!
//! Reports the connects per second achieved (response heads received), the head latency
//! percentiles, failures by kind, and whether every steady subscriber received every
//! published event exactly once and in order (ids strictly consecutive on the topic).
//!
//! One thread drives every socket through one epoll set ([`crate::storm::Sub`]); the
//! publisher is a [`crate::storm::Pacer`] thread.
//!
//! Must never: wait without a bound (every phase has a deadline), or leave a socket open.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::conditions::Conditions;
use crate::engine_args::EngineArgs;
use crate::output::{percentiles, write_out};
use crate::storm::{request, resolve, verify, Found, Pacer, Sub};
use crate::sys::{self, Epoll};

/// A churning connection without a response head after this long fails as `timeout`.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `epoll_wait`, so opens keep their schedule.
const WAIT_MS: i32 = 1;
/// Churning connections opened per loop turn at most (a late turn catches up in steps).
const OPEN_BURST: u64 = 64;
/// The top bit of a token marks a churning connection.
const CHURN_BIT: u64 = 1 << 63;

/// Arguments of `ringcast-bench churn`.
#[derive(clap::Args, Debug, Clone)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// The topic.
    #[arg(long, default_value = "churn")]
    pub topic: String,
    /// Churning connections opened per second.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Seconds of churn.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Steady subscribers, held throughout.
    #[arg(long, default_value_t = 200)]
    pub steady: usize,
    /// Events published per second.
    #[arg(long, default_value_t = 20.0)]
    pub publish_rate: f64,
    /// Longest life of a churning connection after its head, milliseconds (uniform 0..this).
    #[arg(long, default_value_t = 500)]
    pub life_ms: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write the results into this directory: `churn-<date>.json` (the `--json`
    /// output), `.md` and the head latency CDF as SVG.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// A churning connection and when it closes.
struct Churner {
    sub: Sub,
    close_at: Option<Instant>,
}

/// Steady subscriber: its connection and the sequence numbers it received.
struct Steady {
    sub: Option<Sub>,
    seqs: Vec<u64>,
    error: Option<String>,
}

/// Everything the run counts.
#[derive(Default)]
struct Counts {
    opened: u64,
    completed: u64,
    failures: BTreeMap<String, u64>,
    notices: u64,
}

struct Churn {
    epoll: Epoll,
    target: SocketAddrV4,
    request: Vec<u8>,
    steady: Vec<Steady>,
    churners: HashMap<u64, Churner>,
    next_id: u64,
    counts: Counts,
    heads: Histogram<u64>,
    rng: u64,
    life_ms: u64,
    buf: Vec<u8>,
    tokens: Vec<u64>,
}

impl Churn {
    /// A uniform number in `0..n` (xorshift64*).
    fn random(&mut self, n: u64) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }

    fn fail(&mut self, kind: String) {
        *self.counts.failures.entry(kind).or_insert(0) += 1;
    }

    fn open_one(&mut self) {
        self.counts.opened += 1;
        let id = self.next_id;
        self.next_id += 1;
        match Sub::start(
            &self.epoll,
            None,
            self.target,
            self.request.clone(),
            CHURN_BIT | id,
        ) {
            Ok(sub) => drop(self.churners.insert(id, Churner { sub, close_at: None })),
            Err(e) => self.fail(e),
        }
    }

    /// Serves readiness for up to [`WAIT_MS`].
    fn turn(&mut self) -> Result<(), String> {
        self.epoll
            .wait(&mut self.tokens, 1024, WAIT_MS)
            .map_err(|e| format!("epoll_wait: {e}"))?;
        let tokens = std::mem::take(&mut self.tokens);
        for &token in &tokens {
            if token & CHURN_BIT == 0 {
                self.steady_ready(token);
            } else {
                self.churner_ready(token);
            }
        }
        self.tokens = tokens;
        Ok(())
    }

    fn steady_ready(&mut self, token: u64) {
        let slot = &mut self.steady[token as usize];
        let Some(sub) = slot.sub.as_mut() else { return };
        let (seqs, notices) = (&mut slot.seqs, &mut self.counts.notices);
        let result = sub.ready(&self.epoll, token, &mut self.buf, &mut |f| match f {
            Found::Event { seq, .. } => seqs.push(seq),
            Found::Notice | Found::Reset | Found::Gap(_) => *notices += 1,
            Found::Head => {}
        });
        match result {
            Ok(true) => {}
            Ok(false) => (slot.error, slot.sub) = (Some("steady: closed by the server".into()), None),
            Err(e) => (slot.error, slot.sub) = (Some(format!("steady: {e}")), None),
        }
    }

    fn churner_ready(&mut self, token: u64) {
        let id = token & !CHURN_BIT;
        let Some(c) = self.churners.get_mut(&id) else {
            return;
        };
        let had_head = c.sub.head_at.is_some();
        match c.sub.ready(&self.epoll, token, &mut self.buf, &mut |_| {}) {
            Ok(true) => {}
            Ok(false) if had_head => drop(self.churners.remove(&id)),
            Ok(false) => {
                self.churners.remove(&id);
                self.fail("closed before the head".into());
                return;
            }
            Err(e) => {
                self.churners.remove(&id);
                self.fail(e.split(':').next().unwrap_or(&e).to_owned());
                return;
            }
        }
        let Some(c) = self.churners.get(&id) else { return };
        if let (false, Some(at)) = (had_head, c.sub.head_at) {
            let micros = at.duration_since(c.sub.started).as_micros().max(1) as u64;
            let _ = self.heads.record(micros);
            self.counts.completed += 1;
            let life = Duration::from_millis(self.random(self.life_ms + 1));
            if let Some(c) = self.churners.get_mut(&id) {
                c.close_at = Some(at + life);
            }
        }
    }

    /// Closes churners whose life is over and fails those without a head in time.
    fn reap(&mut self, now: Instant) {
        let mut late = 0;
        self.churners.retain(|_, c| match c.close_at {
            Some(at) => at > now,
            None if now.duration_since(c.sub.started) > HEAD_TIMEOUT => {
                late += 1;
                false
            }
            None => true,
        });
        if late > 0 {
            *self
                .counts
                .failures
                .entry("timeout (no head in 5 s)".into())
                .or_insert(0) += late;
        }
    }
}

/// Runs `ringcast-bench churn`.
pub fn main(args: ChurnArgs) -> ExitCode {
    crate::report::finish("churn", run(&args))
}

/// What a churn run measured.
struct Outcome {
    secs: f64,
    published: usize,
    verified: usize,
    bad: Vec<String>,
}

fn run(args: &ChurnArgs) -> Result<(String, bool), String> {
    if args.rate <= 0.0 || args.duration == 0 || args.duration > 3600 {
        return Err("--rate must be positive and --duration 1..=3600".into());
    }
    sys::raise_nofile().map_err(|e| format!("raise RLIMIT_NOFILE: {e}"))?;
    let conditions = Conditions::collect(args.engine.pid().unwrap_or_else(std::process::id));
    let mut seed = [0u8; 8];
    sys::random_bytes(&mut seed).map_err(|e| format!("getrandom: {e}"))?;
    let mut churn = Churn {
        epoll: Epoll::new().map_err(|e| format!("epoll: {e}"))?,
        target: resolve(&args.engine.target)?,
        request: request(&args.topic, None),
        steady: Vec::new(),
        churners: HashMap::new(),
        next_id: 0,
        counts: Counts::default(),
        heads: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"),
        rng: u64::from_ne_bytes(seed) | 1,
        life_ms: args.life_ms,
        buf: vec![0; 64 * 1024],
        tokens: Vec::new(),
    };
    for i in 0..args.steady {
        let sub = Sub::start(&churn.epoll, None, churn.target, churn.request.clone(), i as u64)?;
        churn.steady.push(Steady {
            sub: Some(sub),
            seqs: Vec::new(),
            error: None,
        });
    }
    let deadline = Instant::now() + HEAD_TIMEOUT;
    while Instant::now() < deadline
        && !churn
            .steady
            .iter()
            .all(|s| s.sub.as_ref().is_none_or(|s| s.head_at.is_some()))
    {
        churn.turn()?;
    }
    if !churn
        .steady
        .iter()
        .all(|s| s.sub.as_ref().is_some_and(|s| s.head_at.is_some()))
    {
        return Err(format!(
            "not every steady subscriber was answered within {HEAD_TIMEOUT:?}"
        ));
    }
    let pacer = Pacer::start(&args.engine.ingest, &args.topic, args.publish_rate)?;
    let start = Instant::now();
    let end = start + Duration::from_secs(args.duration);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let due = (now.duration_since(start).as_secs_f64() * args.rate) as u64;
        for _ in 0..due.saturating_sub(churn.counts.opened).min(OPEN_BURST) {
            churn.open_one();
        }
        churn.turn()?;
        churn.reap(Instant::now());
    }
    let secs = start.elapsed().as_secs_f64();
    // Churners still alive at the end count as opened; their heads were counted already.
    churn.churners.clear();
    let published: Vec<u64> = pacer.finish()?.into_iter().map(|(_, seq)| seq).collect();
    let last = published.last().copied();
    let drain = Instant::now() + Duration::from_secs(5);
    while Instant::now() < drain
        && !churn
            .steady
            .iter()
            .all(|s| s.sub.is_none() || s.seqs.last().copied() == last)
    {
        churn.turn()?;
    }
    let outcome = judge(&churn, secs, &published);
    let ok = outcome.bad.is_empty() && churn.counts.failures.is_empty();
    let mut text = if args.json {
        json(args, &conditions, &churn, &outcome)
    } else {
        text(args, &conditions, &churn, &outcome)
    };
    if let Some(dir) = &args.out {
        let chart = crate::output::Chart {
            title: format!("churn: response head latency at {} connects/s", args.rate),
            x_label: "connect start to response head, ms".into(),
            y_label: "fraction of connections at or below".into(),
            x_log: true,
            series: vec![crate::output::latency_cdf("head latency", &churn.heads)],
        };
        write_out(args.json, &mut text, || {
            let json = json(args, &conditions, &churn, &outcome);
            let body = crate::output::json_summary_table(&json)?;
            crate::output::write_result(
                dir,
                "churn",
                &conditions,
                &json,
                &body,
                &[("head-latency-cdf", chart)],
            )
        })?;
    }
    Ok((text, ok))
}

fn judge(churn: &Churn, secs: f64, published: &[u64]) -> Outcome {
    let mut bad = Vec::new();
    let mut verified = 0;
    let consecutive = published.windows(2).all(|w| w[1] == w[0] + 1);
    if !consecutive {
        bad.push("the engine's acknowledged ids are not consecutive".into());
    }
    for (i, s) in churn.steady.iter().enumerate() {
        if let Some(e) = &s.error {
            bad.push(format!("steady {i}: {e}"));
        } else if published.first() != s.seqs.first() {
            bad.push(format!(
                "steady {i}: first event {:?}, published first {:?}",
                s.seqs.first(),
                published.first()
            ));
        } else {
            match verify(&s.seqs, published) {
                Ok(()) => verified += 1,
                Err(e) => bad.push(format!("steady {i}: {e}")),
            }
        }
    }
    Outcome {
        secs,
        published: published.len(),
        verified,
        bad,
    }
}

fn text(args: &ChurnArgs, c: &Conditions, churn: &Churn, o: &Outcome) -> String {
    let n = &churn.counts;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "churn: {} connects/s asked for {} s, {} steady subscribers, {} events/s published",
        args.rate, args.duration, args.steady, args.publish_rate
    );
    let _ = writeln!(
        out,
        "  opened {} ({:.1}/s), heads received {} ({:.1} connects/s achieved); head latency {}",
        n.opened,
        n.opened as f64 / o.secs,
        n.completed,
        n.completed as f64 / o.secs,
        percentiles(&churn.heads)
    );
    if n.failures.is_empty() {
        let _ = writeln!(out, "  failures: none");
    }
    for (kind, count) in &n.failures {
        let _ = writeln!(out, "  failed: {kind}: {count}");
    }
    let _ = writeln!(
        out,
        "  events published {}; steady subscribers with every event once, in order: {} of {}; notices {}",
        o.published, o.verified, args.steady, n.notices
    );
    for b in o.bad.iter().take(10) {
        let _ = writeln!(out, "  BAD {b}");
    }
    let _ = writeln!(out, "{}", c.text("", "engine"));
    out
}

/// The `--json` report of one churn run (field names are part of the output format).
#[derive(serde::Serialize)]
struct Json<'a> {
    subcommand: &'static str,
    rate: f64,
    duration_secs: f64,
    steady: usize,
    publish_rate: f64,
    opened: u64,
    heads: u64,
    connects_per_sec: f64,
    head_p50_ms: f64,
    head_p99_ms: f64,
    head_max_ms: f64,
    failures: &'a BTreeMap<String, u64>,
    published: usize,
    steady_verified: usize,
    notices: u64,
    bad: &'a [String],
    conditions: serde_json::Value,
}

fn json(args: &ChurnArgs, c: &Conditions, churn: &Churn, o: &Outcome) -> String {
    let n = &churn.counts;
    let h = &churn.heads;
    let report = Json {
        subcommand: "churn",
        rate: args.rate,
        duration_secs: o.secs,
        steady: args.steady,
        publish_rate: args.publish_rate,
        opened: n.opened,
        heads: n.completed,
        connects_per_sec: n.completed as f64 / o.secs,
        head_p50_ms: h.value_at_quantile(0.5) as f64 / 1e3,
        head_p99_ms: h.value_at_quantile(0.99) as f64 / 1e3,
        head_max_ms: h.max() as f64 / 1e3,
        failures: &n.failures,
        published: o.published,
        steady_verified: o.verified,
        notices: n.notices,
        bad: &o.bad[..o.bad.len().min(100)],
        conditions: c.to_value(),
    };
    crate::output::to_json_line(&report)
}
