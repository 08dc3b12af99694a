//! The result of one `hold` run and its renderings: a human-readable report, one JSON
//! object (`--json`), and with `--out` a Markdown page and SVG charts (memory per
//! connection against N, handshake latency CDF). Derived figures (bytes per connection,
//! kernel bytes per pair) are computed here and nowhere else.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

use hdrhistogram::Histogram;
use serde_json::json;

use crate::conditions::Conditions;
use crate::output::{self, Chart, OutDir, Series};
use crate::procfs::Snapshot;

/// One step of a run: the engine measured once `requested` connections were opened.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// Connections opened so far.
    pub requested: u64,
    /// Of them, held when the step's connect phase ended.
    pub held: u64,
    /// Wall time of the step's connect phase, from spawning its workers to their last
    /// result, milliseconds.
    pub ramp_ms: u64,
    /// After the step and the settle time; `None` if the engine was gone.
    pub loaded: Option<Snapshot>,
}

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

impl Latency {
    /// The percentiles of a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// Everything one `hold` run measured, with its setup and conditions.
#[derive(Debug, Clone)]
pub struct Report {
    /// Kernel, CPU, versions, command line, date.
    pub conditions: Conditions,
    /// Engine address as given.
    pub target: String,
    /// `sse`, `ws`, `ndjson` or `poll`.
    pub transport: &'static str,
    /// Request path.
    pub path: String,
    /// Engine process id.
    pub pid: u32,
    /// Worker processes used.
    pub workers: usize,
    /// Most connections per io_uring ring.
    pub per_ring: u64,
    /// Most rings per worker.
    pub rings: u64,
    /// Source addresses used (0: kernel's choice).
    pub sources: u32,
    /// In-flight connections per worker.
    pub concurrency: usize,
    /// Connections opened per second over all workers, 0 for unpaced.
    pub connect_rate: f64,
    /// Connections requested.
    pub requested: u64,
    /// Connections held when the connect phase ended.
    pub held: u64,
    /// Failed connections by kind.
    pub failures: BTreeMap<String, u64>,
    /// Wall time of every step's connect phase together (settling and measuring left
    /// out), milliseconds: connections held per second is `held / ramp_ms`.
    pub ramp_ms: u64,
    /// Connect + handshake latency of held connections, microseconds.
    pub handshake_us: Histogram<u64>,
    /// Seconds waited after the connect phase before measuring.
    pub settle_secs: u64,
    /// Seconds held after measuring.
    pub hold_secs: u64,
    /// Before any connection was opened.
    pub baseline: Snapshot,
    /// After the last step's connect phase and the settle time; `None` if the engine was
    /// gone.
    pub loaded: Option<Snapshot>,
    /// Every step's measurement, the last one equal to `held` and `loaded`.
    pub steps: Vec<Step>,
    /// The engine's `VmRSS` one second after every connection was closed.
    pub after_close_rss_kb: Option<u64>,
    /// Held connections the engine closed after the connect phase.
    pub dropped_during_hold: u64,
    /// Long-polls answered and re-issued while holding (`poll` only).
    pub repolls: u64,
}

/// `(after - before) * 1024 / per`, in bytes, or `None` when `per` is zero.
fn growth_bytes_per(before_kb: u64, after_kb: u64, per: u64) -> Option<f64> {
    (per > 0).then(|| (after_kb as f64 - before_kb as f64) * 1024.0 / per as f64)
}

impl Step {
    /// Engine RSS growth per held connection at this step, bytes.
    pub fn bytes_per_conn(&self, baseline: &Snapshot) -> Option<f64> {
        growth_bytes_per(baseline.rss_kb, self.loaded?.rss_kb, self.held)
    }

    /// Growth of the kernel memory charged to the engine's cgroup per held connection at
    /// this step, bytes (the server's end alone).
    pub fn kernel_bytes_per_conn(&self, baseline: &Snapshot) -> Option<f64> {
        growth_bytes_per(
            baseline.cgroup_kernel_kb?,
            self.loaded?.cgroup_kernel_kb?,
            self.held,
        )
    }
}

impl Report {
    /// Connect + handshake latency percentiles.
    pub fn latency(&self) -> Latency {
        Latency::of(&self.handshake_us)
    }

    /// Engine RSS growth per held connection, bytes.
    pub fn bytes_per_conn(&self) -> Option<f64> {
        let loaded = self.loaded?;
        growth_bytes_per(self.baseline.rss_kb, loaded.rss_kb, self.held)
    }

    /// Growth of the kernel memory charged to the engine's cgroup per held connection,
    /// bytes: the server's end alone.
    pub fn kernel_bytes_per_conn(&self) -> Option<f64> {
        let loaded = self.loaded?;
        growth_bytes_per(
            self.baseline.cgroup_kernel_kb?,
            loaded.cgroup_kernel_kb?,
            self.held,
        )
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

    /// How the load was generated, one line for the text and the Markdown report.
    fn clients_text(&self) -> String {
        format!(
            "{} worker(s) of at most {} io_uring ring(s) x {} connections, {} in flight each, {}, {}",
            self.workers,
            self.rings,
            self.per_ring,
            self.concurrency,
            rate_text(self.connect_rate),
            sources_text(self.sources)
        )
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
        let _ = writeln!(out, "  clients      {}", self.clients_text());
        let rate = per_sec(self.held, self.ramp_ms);
        let _ = writeln!(
            out,
            "  ramp         {:.2} s ({rate:.0} held/s)",
            self.ramp_ms as f64 / 1000.0
        );
        let l = self.latency();
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
        if self.steps.len() > 1 {
            let _ = writeln!(
                out,
                "  steps        connections   held   engine RSS kB   bytes per connection"
            );
            for step in &self.steps {
                let _ = writeln!(
                    out,
                    "               {:>11} {:>6} {:>15} {:>22}",
                    step.requested,
                    step.held,
                    step.loaded
                        .map_or_else(|| "n/a".to_owned(), |s| s.rss_kb.to_string()),
                    bytes(step.bytes_per_conn(&self.baseline))
                );
            }
        }
        let _ = writeln!(
            out,
            "  dropped      {} during the hold of {} s",
            self.dropped_during_hold, self.hold_secs
        );
        if self.transport == "poll" {
            let _ = writeln!(
                out,
                "  repolls      {} long-polls answered and re-issued",
                self.repolls
            );
        }
        let _ = writeln!(out, "conditions");
        let _ = writeln!(out, "  date         {}", c.date);
        let _ = writeln!(out, "  kernel       {}", c.kernel);
        let _ = writeln!(out, "  cpu          {} x{}", c.cpu, c.nproc);
        let _ = writeln!(
            out,
            "  bench        ringcast-bench {} ({})",
            c.version,
            c.commit()
        );
        let _ = writeln!(out, "  engine ver.  {}", c.engine_version());
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
        if let (Some(before), Some(after)) = (b.cgroup_kernel_kb, h.cgroup_kernel_kb) {
            let _ = writeln!(
                out,
                "  server kernel {:+} kB charged to the engine's cgroup: {} bytes per connection",
                after as i64 - before as i64,
                bytes(self.kernel_bytes_per_conn())
            );
        }
    }

    /// One JSON object, no trailing newline.
    pub fn to_json(&self) -> String {
        let c = &self.conditions;
        let l = self.latency();
        let loaded = self.loaded;
        let steps: Vec<serde_json::Value> = self
            .steps
            .iter()
            .map(|s| {
                json!({
                    "requested": s.requested,
                    "held": s.held,
                    "ramp_ms": s.ramp_ms,
                    "rss_kb": s.loaded.map(|l| l.rss_kb),
                    "slab_kb": s.loaded.map(|l| l.slab_kb),
                    "bytes_per_conn": finite(s.bytes_per_conn(&self.baseline)),
                    "cgroup_kernel_kb": s.loaded.and_then(|l| l.cgroup_kernel_kb),
                    "kernel_bytes_per_conn": finite(s.kernel_bytes_per_conn(&self.baseline)),
                })
            })
            .collect();
        json!({
            "ok": self.success(),
            "requested": self.requested,
            "held": self.held,
            "failed": self.failed(),
            "failures": self.failures,
            "dropped_during_hold": self.dropped_during_hold,
            "repolls": self.repolls,
            "bytes_per_conn": finite(self.bytes_per_conn()),
            "baseline_rss_kb": self.baseline.rss_kb,
            "baseline_hwm_kb": self.baseline.hwm_kb,
            "held_rss_kb": loaded.map(|s| s.rss_kb),
            "held_hwm_kb": loaded.map(|s| s.hwm_kb),
            "after_close_rss_kb": self.after_close_rss_kb,
            "baseline_slab_kb": self.baseline.slab_kb,
            "baseline_sunreclaim_kb": self.baseline.sunreclaim_kb,
            "held_slab_kb": loaded.map(|s| s.slab_kb),
            "held_sunreclaim_kb": loaded.map(|s| s.sunreclaim_kb),
            "kernel_slab_bytes_per_pair": finite(self.slab_bytes_per_pair()),
            "baseline_cgroup_kernel_kb": self.baseline.cgroup_kernel_kb,
            "held_cgroup_kernel_kb": loaded.and_then(|s| s.cgroup_kernel_kb),
            "kernel_bytes_per_conn": finite(self.kernel_bytes_per_conn()),
            "kernel_sunreclaim_bytes_per_pair": finite(self.sunreclaim_bytes_per_pair()),
            "steps": steps,
            "handshake_samples": l.count,
            "handshake_p50_us": l.p50_us,
            "handshake_p99_us": l.p99_us,
            "handshake_p999_us": l.p999_us,
            "handshake_max_us": l.max_us,
            "ramp_ms": self.ramp_ms,
            "target": self.target,
            "transport": self.transport,
            "path": self.path,
            "pid": self.pid,
            "workers": self.workers,
            "per_ring": self.per_ring,
            "rings": self.rings,
            "sources": self.sources,
            "concurrency": self.concurrency,
            "connect_rate": self.connect_rate,
            "settle_secs": self.settle_secs,
            "hold_secs": self.hold_secs,
            "date": c.date,
            "kernel": c.kernel,
            "cpu": c.cpu,
            "nproc": c.nproc,
            "version": c.version,
            "commit": c.commit(),
            "engine_version": c.engine_version(),
            "command": c.command,
            "engine_command": c.engine_command,
        })
        .to_string()
    }

    /// A Markdown page: the result table, the steps, the failures and the conditions.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let verdict = if self.success() { "ok" } else { "FAILED" };
        let _ = writeln!(
            out,
            "# ringcast-bench hold: {} of {} {} subscribers held ({verdict})\n",
            self.held, self.requested, self.transport
        );
        let l = self.latency();
        let rows = vec![vec![
            self.transport.to_owned(),
            self.held.to_string(),
            bytes(self.bytes_per_conn()),
            bytes(self.slab_bytes_per_pair()),
            format!("{:.0}", per_sec(self.held, self.ramp_ms)),
            format!("{:.3}", l.p50_us as f64 / 1000.0),
            format!("{:.3}", l.p99_us as f64 / 1000.0),
            format!("{:.3}", l.max_us as f64 / 1000.0),
            self.failed().to_string(),
            self.dropped_during_hold.to_string(),
        ]];
        out.push_str(&output::markdown_table(
            &[
                "transport",
                "held",
                "engine B/conn",
                "kernel slab B/pair",
                "held/s",
                "handshake p50 ms",
                "p99 ms",
                "max ms",
                "failed",
                "dropped while held",
            ],
            &rows,
        ));
        let steps: Vec<Vec<String>> = self
            .steps
            .iter()
            .map(|s| {
                vec![
                    s.requested.to_string(),
                    s.held.to_string(),
                    s.loaded
                        .map_or_else(|| "n/a".to_owned(), |l| l.rss_kb.to_string()),
                    bytes(s.bytes_per_conn(&self.baseline)),
                ]
            })
            .collect();
        let _ = writeln!(
            out,
            "\nEngine RSS before the first connection: {} kB.\n",
            self.baseline.rss_kb
        );
        out.push_str(&output::markdown_table(
            &["connections", "held", "engine RSS kB", "B per connection"],
            &steps,
        ));
        let _ = writeln!(
            out,
            "\nFailures: {}.\n\nClients: {}.\n",
            failures_text(&self.failures, self.failed()),
            self.clients_text()
        );
        out.push_str(&output::conditions_markdown(&self.conditions));
        out
    }

    /// Engine bytes per connection against connections held, one point per step.
    pub fn memory_chart(&self) -> Chart {
        let points = self
            .steps
            .iter()
            .filter_map(|s| Some((s.held as f64, s.bytes_per_conn(&self.baseline)?)))
            .collect();
        Chart {
            title: format!("ringcast engine memory per idle {} connection", self.transport),
            x_label: "connections held".to_owned(),
            y_label: "bytes of engine RSS per connection".to_owned(),
            x_log: false,
            series: vec![Series {
                label: format!("{} ({})", self.transport, self.conditions.commit()),
                points,
            }],
        }
    }

    /// The connect + handshake latency CDF.
    pub fn handshake_chart(&self) -> Chart {
        Chart {
            title: format!("connect + handshake latency, {} {}", self.held, self.transport),
            x_label: "latency (ms)".to_owned(),
            y_label: "fraction of connections".to_owned(),
            x_log: true,
            series: vec![output::latency_cdf(self.transport, &self.handshake_us)],
        }
    }

    /// Writes the JSON, the Markdown page and both charts into `out`.
    ///
    /// # Errors
    /// The file that could not be written.
    pub fn write(&self, out: &OutDir) -> Result<Vec<PathBuf>, String> {
        Ok(vec![
            out.write_json(&self.to_json())?,
            out.write_markdown(&self.to_markdown())?,
            out.write_chart("memory", &self.memory_chart())?,
            out.write_chart("handshake", &self.handshake_chart())?,
        ])
    }
}

fn finite(value: Option<f64>) -> Option<f64> {
    value.filter(|v| v.is_finite()).map(|v| (v * 10.0).round() / 10.0)
}

fn rate_text(rate: f64) -> String {
    if rate > 0.0 {
        format!("paced at {rate:.0} connects/s")
    } else {
        "unpaced".to_owned()
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
            per_ring: 19_000,
            rings: 8,
            sources: 16,
            concurrency: 256,
            connect_rate: 0.0,
            requested: 1_002,
            held: 1_000,
            failures,
            ramp_ms: 500,
            handshake_us: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
            settle_secs: 3,
            hold_secs: 0,
            baseline: Snapshot {
                rss_kb: 1_000,
                hwm_kb: 1_000,
                slab_kb: 50_000,
                sunreclaim_kb: 40_000,
                cgroup_kernel_kb: None,
            },
            loaded: Some(Snapshot {
                rss_kb: 3_000,
                hwm_kb: 3_100,
                slab_kb: 57_500,
                sunreclaim_kb: 47_000,
                cgroup_kernel_kb: None,
            }),
            steps: vec![Step {
                requested: 1_002,
                held: 1_000,
                ramp_ms: 500,
                loaded: Some(Snapshot {
                    rss_kb: 3_000,
                    hwm_kb: 3_100,
                    slab_kb: 57_500,
                    sunreclaim_kb: 47_000,
                    cgroup_kernel_kb: None,
                }),
            }],
            after_close_rss_kb: Some(2_000),
            dropped_during_hold: 0,
            repolls: 0,
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
        assert!(!json.contains('\n'), "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(v["ok"], false);
        assert_eq!(v["cpu"], "AMD \"EPYC\"");
        assert_eq!(v["engine_command"], "ringcast\n");
        assert_eq!(v["failures"]["connect/ECONNREFUSED"], 2);
        assert_eq!(v["bytes_per_conn"], 2048.0);
        assert_eq!(v["steps"][0]["bytes_per_conn"], 2048.0);
        assert!(v["commit"].is_string());
    }

    #[test]
    fn markdown_and_charts_carry_the_steps() {
        let r = report();
        let md = r.to_markdown();
        assert!(md.contains("| 1002 | 1000 | 3000 | 2048 |"), "{md}");
        assert!(md.contains("commit"), "{md}");
        let chart = r.memory_chart();
        assert_eq!(chart.series[0].points, vec![(1_000.0, 2_048.0)]);
        assert!(chart.to_svg().expect("renders").contains("<svg"));
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
