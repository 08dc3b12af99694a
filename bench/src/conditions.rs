//! The conditions recorded beside every number (STYLE.md §8): kernel, CPU, core count,
//! tool version, the commit it was built from, the full command line, the engine's
//! command line and version, and the date.
//!
//! Gathering never fails: a value that cannot be read is recorded as `unknown`.
//!
//! The commit and the engine's version are read through methods rather than fields, so
//! that the struct literals elsewhere (the `hold` report's tests) stay valid; the
//! engine's version is found once per process, by [`Conditions::collect`].

use std::fs;
use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::procfs;

/// The commit this tool was built from (`git rev-parse HEAD` at build time, `-dirty` when
/// the work tree had changes, `unknown` without git; see `bench/build.rs`).
pub const COMMIT: &str = env!("RINGCAST_BENCH_COMMIT");

/// Bound on running `<engine> --version`.
const VERSION_TIMEOUT: Duration = Duration::from_secs(2);

/// The measured engine's `--version`, found by the first [`Conditions::collect`].
static ENGINE_VERSION: OnceLock<String> = OnceLock::new();

/// Where and how a measurement was taken.
#[derive(Debug, Clone)]
pub struct Conditions {
    /// `uname -r`.
    pub kernel: String,
    /// First `model name` in `/proc/cpuinfo`.
    pub cpu: String,
    /// Cores this process may run on.
    pub nproc: usize,
    /// `ringcast-bench` version.
    pub version: String,
    /// This tool's command line, shell-quoted.
    pub command: String,
    /// The measured process's command line.
    pub engine_command: String,
    /// Start time, RFC 3339 UTC.
    pub date: String,
}

impl Conditions {
    /// The conditions as three text lines (the last without a newline), each after
    /// `indent`, for the end of a text report; `measured` names the measured process
    /// (`engine`, `server`).
    pub fn text(&self, indent: &str, measured: &str) -> String {
        format!(
            "{indent}conditions: kernel {}, CPU {} x{}, ringcast-bench {} (commit {}), {}\n\
             {indent}  command: {}\n{indent}  {measured}: {} ({})",
            self.kernel,
            self.cpu,
            self.nproc,
            self.version,
            self.commit(),
            self.date,
            self.command,
            self.engine_command,
            self.engine_version()
        )
    }

    /// Gathers the conditions now, for the engine process `pid`.
    pub fn collect(pid: u32) -> Conditions {
        let unknown = || "unknown".to_owned();
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| unknown());
        let cpu = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| cpu_model(&text))
            .unwrap_or_else(unknown);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        ENGINE_VERSION.get_or_init(|| {
            if pid == std::process::id() {
                unknown()
            } else {
                engine_version(pid).unwrap_or_else(unknown)
            }
        });
        Conditions {
            kernel,
            cpu,
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            command: shell_join(std::env::args()),
            engine_command: procfs::read_cmdline(pid).unwrap_or_else(unknown),
            date: rfc3339_utc(now),
        }
    }

    /// The commit this tool was built from: [`COMMIT`].
    pub fn commit(&self) -> &'static str {
        COMMIT
    }

    /// The first line the engine's executable printed for `--version`, or `unknown`.
    pub fn engine_version(&self) -> &str {
        ENGINE_VERSION.get().map_or("unknown", String::as_str)
    }

    /// Every condition as a JSON value.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(Json {
            kernel: &self.kernel,
            cpu: &self.cpu,
            nproc: self.nproc,
            version: &self.version,
            commit: self.commit(),
            command: &self.command,
            engine_command: &self.engine_command,
            engine_version: self.engine_version(),
            date: &self.date,
        })
        .unwrap_or(serde_json::Value::Null)
    }
}

/// The conditions as every report's `conditions` object.
#[derive(serde::Serialize)]
struct Json<'a> {
    kernel: &'a str,
    cpu: &'a str,
    nproc: usize,
    version: &'a str,
    commit: &'a str,
    command: &'a str,
    engine_command: &'a str,
    engine_version: &'a str,
    date: &'a str,
}

/// Runs `/proc/<pid>/exe --version` (stdin closed, killed after [`VERSION_TIMEOUT`]) and
/// returns the first line it printed, if it exited with success.
fn engine_version(pid: u32) -> Option<String> {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    // A replaced binary is no longer the one running.
    if exe.to_string_lossy().ends_with(" (deleted)") || !Path::new(&exe).exists() {
        return None;
    }
    let mut child = Command::new(&exe)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().ok()? {
            break status;
        }
        if started.elapsed() >= VERSION_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let mut text = String::new();
    child.stdout.take()?.take(4096).read_to_string(&mut text).ok()?;
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    status.success().then(|| line.chars().take(200).collect())
}

/// The first `model name` value in `/proc/cpuinfo` text.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

/// Joins arguments into one line a POSIX shell would split back the same way.
pub fn shell_join(args: impl IntoIterator<Item = String>) -> String {
    let quoted: Vec<String> = args
        .into_iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c));
            if plain {
                arg
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect();
    quoted.join(" ")
}

/// Formats seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339_utc(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant,
/// "chrono-Compatible Low-Level Date Algorithms", `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_across_leap_days_and_centuries() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(951_955_199), "2000-03-01T23:59:59Z");
        assert_eq!(rfc3339_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_utc(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn shell_join_quotes_only_what_needs_it() {
        let args = ["ringcast-bench", "--path", "/sse?topic=bench", "it's", ""];
        assert_eq!(
            shell_join(args.iter().map(|s| s.to_string())),
            r"ringcast-bench --path '/sse?topic=bench' 'it'\''s' ''"
        );
    }

    #[test]
    fn json_names_the_commit_and_every_field() {
        let c = Conditions::collect(std::process::id());
        let v: serde_json::Value = serde_json::from_str(&c.to_value().to_string()).expect("valid JSON");
        assert_eq!(v["commit"], COMMIT);
        assert!(!COMMIT.is_empty());
        assert_eq!(v["engine_version"], "unknown", "own pid: no engine");
        for key in [
            "kernel",
            "cpu",
            "nproc",
            "version",
            "command",
            "engine_command",
            "date",
        ] {
            assert!(!v[key].is_null(), "{key} missing in {v}");
        }
    }

    #[test]
    fn cpu_model_is_the_first_model_name() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n\
            processor\t: 1\nmodel name\t: Other\n";
        assert_eq!(cpu_model(text).as_deref(), Some("AMD EPYC"));
        assert_eq!(cpu_model("processor: 0\n"), None);
    }
}
