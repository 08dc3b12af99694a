//! The result of one `hold` run and its two renderings: a human-readable report and one
//! JSON object (`--json`). Derived figures (bytes per connection, kernel bytes per pair)
//! are computed here and nowhere else.
//!
//! JSON is written by hand: the report is flat and small, and the bench keeps its
//! dependency list short.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::conditions::Conditions;
use crate::procfs::Snapshot;

/// Connect + handshake latency percentiles, microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    /// Samples (held connections).
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest sample.
    pub max_us: u64,
}

/// Everything one `hold` run measured, with its setup and conditions.
#[derive(Debug, Clone)]
pub struct Report {
    /// Kernel, CPU, versions, command line, date.
    pub conditions: Conditions,
    /// Engine address as given.
    pub target: String,
    /// `sse` or `ws`.
    pub transport: &'static str,
    /// Request path.
    pub path: String,
    /// Engine process id.
    pub pid: u32,
    /// Worker processes used.
    pub workers: usize,
    /// Most connections per worker.
    pub per_proc: u64,
    /// Source addresses used (0: kernel's choice).
    pub sources: u32,
    /// In-flight connections per worker.
    pub concurrency: usize,
    /// Connections requested.
    pub requested: u64,
    /// Connections held when the connect phase ended.
    pub held: u64,
    /// Failed connections by kind.
    pub failures: BTreeMap<String, u64>,
    /// Wall time from spawning workers to the last worker's result, milliseconds.
    pub ramp_ms: u64,
    /// Connect + handshake latency of held connections.
    pub latency: Latency,
    /// Seconds waited after the connect phase before measuring.
    pub settle_secs: u64,
    /// Seconds held after measuring.
    pub hold_secs: u64,
    /// Before any connection was opened.
    pub baseline: Snapshot,
    /// After the connect phase and the settle time; `None` if the engine was gone.
    pub loaded: Option<Snapshot>,
    /// The engine's `VmRSS` one second after every connection was closed.
    pub after_close_rss_kb: Option<u64>,
    /// Held connections the engine closed after the connect phase.
    pub dropped_during_hold: u64,
}

/// `(after - before) * 1024 / per`, in bytes, or `None` when `per` is zero.
fn growth_bytes_per(before_kb: u64, after_kb: u64, per: u64) -> Option<f64> {
    (per > 0).then(|| (after_kb as f64 - before_kb as f64) * 1024.0 / per as f64)
}

impl Report {
    /// Engine RSS growth per held connection, bytes.
    pub fn bytes_per_conn(&self) -> Option<f64> {
        let loaded = self.loaded?;
        growth_bytes_per(self.baseline.rss_kb, loaded.rss_kb, self.held)
    }

    /// Kernel `Slab:` growth per held connection pair (client and server end), bytes.
    pub fn slab_bytes_per_pair(&self) -> Option<f64> {
        let loaded = self.loaded?;
        growth_bytes_per(self.baseline.slab_kb, loaded.slab_kb, self.held)
    }

    /// Kernel `SUnreclaim:` growth per held connection pair, bytes.
    pub fn sunreclaim_bytes_per_pair(&self) -> Option<f64> {
        let loaded = self.loaded?;
        growth_bytes_per(self.baseline.sunreclaim_kb, loaded.sunreclaim_kb, self.held)
    }

    /// Whether every requested connection was held, measured, and kept through the hold.
    pub fn success(&self) -> bool {
        self.held == self.requested && self.loaded.is_some() && self.dropped_during_hold == 0
    }

    fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// The human-readable report, several lines.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let c = &self.conditions;
        let verdict = if self.success() { "ok" } else { "FAILED" };
        let _ = writeln!(
            out,
            "ringcast-bench hold: {}/{} held ({verdict})",
            self.held, self.requested
        );
        let _ = writeln!(
            out,
            "  target       {} {} over {} (engine pid {})",
            self.target, self.path, self.transport, self.pid
        );
        let _ = writeln!(
            out,
            "  clients      {} worker(s) of at most {}, {} in flight each, {}",
            self.workers,
            self.per_proc,
            self.concurrency,
            sources_text(self.sources)
        );
        let rate = per_sec(self.held, self.ramp_ms);
        let _ = writeln!(
            out,
            "  ramp         {:.2} s ({rate:.0} held/s)",
            self.ramp_ms as f64 / 1000.0
        );
        let l = &self.latency;
        let _ = writeln!(
            out,
            "  handshake    p50 {} p99 {} p99.9 {} max {} ({} samples)",
            ms(l.p50_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us),
            l.count
        );
        let _ = writeln!(
            out,
            "  failures     {}",
            failures_text(&self.failures, self.failed())
        );
        self.memory_text(&mut out);
        let _ = writeln!(
            out,
            "  dropped      {} during the hold of {} s",
            self.dropped_during_hold, self.hold_secs
        );
        let _ = writeln!(out, "conditions");
        let _ = writeln!(out, "  date         {}", c.date);
        let _ = writeln!(out, "  kernel       {}", c.kernel);
        let _ = writeln!(out, "  cpu          {} x{}", c.cpu, c.nproc);
        let _ = writeln!(out, "  bench        ringcast-bench {}", c.version);
        let _ = writeln!(out, "  command      {}", c.command);
        let _ = writeln!(out, "  engine       {}", c.engine_command);
        out
    }

    fn memory_text(&self, out: &mut String) {
        let b = &self.baseline;
        let _ = writeln!(
            out,
            "  engine RSS   baseline {} kB (HWM {} kB)",
            b.rss_kb, b.hwm_kb
        );
        let Some(h) = &self.loaded else {
            let _ = writeln!(
                out,
                "               loaded: engine process gone, nothing measured"
            );
            return;
        };
        let _ = writeln!(
            out,
            "               loaded {} kB (HWM {} kB), {} s after the last handshake",
            h.rss_kb, h.hwm_kb, self.settle_secs
        );
        if let Some(kb) = self.after_close_rss_kb {
            let _ = writeln!(out, "               after close {kb} kB");
        }
        let _ = writeln!(
            out,
            "  per conn     {} bytes of engine RSS",
            bytes(self.bytes_per_conn())
        );
        let _ = writeln!(
            out,
            "  kernel       Slab {:+} kB, SUnreclaim {:+} kB: {} / {} bytes per connection pair \
             (both ends, informative)",
            h.slab_kb as i64 - b.slab_kb as i64,
            h.sunreclaim_kb as i64 - b.sunreclaim_kb as i64,
            bytes(self.slab_bytes_per_pair()),
            bytes(self.sunreclaim_bytes_per_pair())
        );
    }

    /// One JSON object, no trailing newline.
    pub fn to_json(&self) -> String {
        let c = &self.conditions;
        let mut o = JsonObject::default();
        o.raw("ok", if self.success() { "true" } else { "false" });
        o.num("requested", self.requested);
        o.num("held", self.held);
        o.num("failed", self.failed());
        o.raw("failures", &json_counts(&self.failures));
        o.num("dropped_during_hold", self.dropped_during_hold);
        o.opt_f64("bytes_per_conn", self.bytes_per_conn());
        o.num("baseline_rss_kb", self.baseline.rss_kb);
        o.num("baseline_hwm_kb", self.baseline.hwm_kb);
        o.opt_num("held_rss_kb", self.loaded.map(|s| s.rss_kb));
        o.opt_num("held_hwm_kb", self.loaded.map(|s| s.hwm_kb));
        o.opt_num("after_close_rss_kb", self.after_close_rss_kb);
        o.num("baseline_slab_kb", self.baseline.slab_kb);
        o.num("baseline_sunreclaim_kb", self.baseline.sunreclaim_kb);
        o.opt_num("held_slab_kb", self.loaded.map(|s| s.slab_kb));
        o.opt_num("held_sunreclaim_kb", self.loaded.map(|s| s.sunreclaim_kb));
        o.opt_f64("kernel_slab_bytes_per_pair", self.slab_bytes_per_pair());
        o.opt_f64(
            "kernel_sunreclaim_bytes_per_pair",
            self.sunreclaim_bytes_per_pair(),
        );
        o.num("handshake_samples", self.latency.count);
        o.num("handshake_p50_us", self.latency.p50_us);
        o.num("handshake_p99_us", self.latency.p99_us);
        o.num("handshake_p999_us", self.latency.p999_us);
        o.num("handshake_max_us", self.latency.max_us);
        o.num("ramp_ms", self.ramp_ms);
        o.str("target", &self.target);
        o.str("transport", self.transport);
        o.str("path", &self.path);
        o.num("pid", self.pid);
        o.num("workers", self.workers as u64);
        o.num("per_proc", self.per_proc);
        o.num("sources", self.sources);
        o.num("concurrency", self.concurrency as u64);
        o.num("settle_secs", self.settle_secs);
        o.num("hold_secs", self.hold_secs);
        o.str("date", &c.date);
        o.str("kernel", &c.kernel);
        o.str("cpu", &c.cpu);
        o.num("nproc", c.nproc as u64);
        o.str("version", &c.version);
        o.str("command", &c.command);
        o.str("engine_command", &c.engine_command);
        o.finish()
    }
}

fn sources_text(sources: u32) -> String {
    match sources {
        0 => "source address chosen by the kernel".to_owned(),
        1 => "source 127.0.0.2".to_owned(),
        n => format!("{n} sources 127.0.0.2-127.0.0.{}", 1 + n),
    }
}

fn failures_text(failures: &BTreeMap<String, u64>, total: u64) -> String {
    if failures.is_empty() {
        return "none".to_owned();
    }
    let kinds: Vec<String> = failures.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!("{total}: {}", kinds.join(", "))
}

fn per_sec(n: u64, ms: u64) -> f64 {
    n as f64 * 1000.0 / ms.max(1) as f64
}

fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

fn bytes(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0}"))
}

/// A flat JSON object built field by field.
#[derive(Default)]
struct JsonObject {
    body: String,
}

impl JsonObject {
    fn raw(&mut self, key: &str, value: &str) {
        if !self.body.is_empty() {
            self.body.push(',');
        }
        let _ = write!(self.body, "{}:{value}", json_string(key));
    }

    fn str(&mut self, key: &str, value: &str) {
        self.raw(key, &json_string(value));
    }

    fn num(&mut self, key: &str, value: impl Into<u64>) {
        self.raw(key, &value.into().to_string());
    }

    fn opt_num(&mut self, key: &str, value: Option<u64>) {
        self.raw(key, &value.map_or_else(|| "null".to_owned(), |v| v.to_string()));
    }

    fn opt_f64(&mut self, key: &str, value: Option<f64>) {
        let text = match value {
            Some(v) if v.is_finite() => format!("{v:.1}"),
            _ => "null".to_owned(),
        };
        self.raw(key, &text);
    }

    fn finish(self) -> String {
        format!("{{{}}}", self.body)
    }
}

fn json_counts(counts: &BTreeMap<String, u64>) -> String {
    let mut o = JsonObject::default();
    for (k, n) in counts {
        o.num(k, *n);
    }
    o.finish()
}

/// A JSON string literal (RFC 8259 §7).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Prints a subcommand's text report and turns its verdict into the exit code: 0 when
/// every check held, 1 when one failed, 2 when the run could not be made.
pub fn finish(subcommand: &str, result: Result<(String, bool), String>) -> std::process::ExitCode {
    match result {
        Ok((text, ok)) => {
            print!("{text}");
            if ok {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("ringcast-bench {subcommand}: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let mut failures = BTreeMap::new();
        failures.insert("connect/ECONNREFUSED".to_owned(), 2);
        Report {
            conditions: Conditions {
                kernel: "6.18".to_owned(),
                cpu: "AMD \"EPYC\"".to_owned(),
                nproc: 2,
                version: "0.1.0".to_owned(),
                command: "ringcast-bench hold --conns 10".to_owned(),
                engine_command: "ringcast\n".to_owned(),
                date: "2026-01-01T00:00:00Z".to_owned(),
            },
            target: "127.0.0.1:8080".to_owned(),
            transport: "sse",
            path: "/sse".to_owned(),
            pid: 42,
            workers: 1,
            per_proc: 19_000,
            sources: 16,
            concurrency: 256,
            requested: 1_002,
            held: 1_000,
            failures,
            ramp_ms: 500,
            latency: Latency::default(),
            settle_secs: 3,
            hold_secs: 0,
            baseline: Snapshot {
                rss_kb: 1_000,
                hwm_kb: 1_000,
                slab_kb: 50_000,
                sunreclaim_kb: 40_000,
            },
            loaded: Some(Snapshot {
                rss_kb: 3_000,
                hwm_kb: 3_100,
                slab_kb: 57_500,
                sunreclaim_kb: 47_000,
            }),
            after_close_rss_kb: Some(2_000),
            dropped_during_hold: 0,
        }
    }

    #[test]
    fn derived_figures_use_held_connections() {
        let r = report();
        assert_eq!(r.bytes_per_conn(), Some(2_000.0 * 1024.0 / 1_000.0));
        assert_eq!(r.slab_bytes_per_pair(), Some(7_500.0 * 1024.0 / 1_000.0));
        assert!(!r.success(), "two failed");
        let none_held = Report { held: 0, ..report() };
        assert_eq!(none_held.bytes_per_conn(), None);
        let all = Report {
            requested: 1_000,
            failures: BTreeMap::new(),
            ..report()
        };
        assert!(all.success());
        assert!(!Report {
            loaded: None,
            ..all.clone()
        }
        .success());
        assert!(!Report {
            dropped_during_hold: 1,
            ..all
        }
        .success());
    }

    #[test]
    fn json_is_one_escaped_object() {
        let json = report().to_json();
        assert!(
            json.starts_with("{\"ok\":false,") && json.ends_with('}'),
            "{json}"
        );
        assert!(!json.contains('\n'), "{json}");
        assert!(json.contains(r#""cpu":"AMD \"EPYC\"""#), "{json}");
        assert!(json.contains(r#""engine_command":"ringcast\n""#), "{json}");
        assert!(
            json.contains(r#""failures":{"connect/ECONNREFUSED":2}"#),
            "{json}"
        );
        assert!(json.contains(r#""bytes_per_conn":2048.0"#), "{json}");
        assert_eq!(json_string("\u{1}"), "\"\\u0001\"");
    }

    #[test]
    fn text_names_the_numbers() {
        let text = report().to_text();
        assert!(text.contains("1000/1002 held (FAILED)"), "{text}");
        assert!(text.contains("2048 bytes of engine RSS"), "{text}");
        assert!(text.contains("connect/ECONNREFUSED 2"), "{text}");
        assert!(text.contains("kernel       6.18"), "{text}");
    }
}
