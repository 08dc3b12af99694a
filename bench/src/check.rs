//! The `check` subcommand: reads the host's limits and says, for N connections held by
//! one engine, what the host lacks and the line that fixes each (tuning/sysctl.conf,
//! tuning/limits.conf).
//!
//! [`Readings`] is what was read, [`verdicts`] turns readings into [`Verdict`]s (pure,
//! unit-tested), [`read_host`] does the reading. The costs are the measured ones of the
//! engine: [`ENGINE_USER_BYTES`] of its memory and [`KERNEL_BYTES`] of kernel memory per
//! server-side connection, and one io_uring file table per loop of at most
//! min(RLIMIT_NOFILE, [`RING_FILES_MAX`]) descriptors.
//!
//! Must never: change a setting itself; it only reads and advises.

use std::fmt::Write as _;
use std::fs;
use std::process::ExitCode;

/// Engine memory per held connection, bytes (measured: bench/README.md, `hold`).
pub const ENGINE_USER_BYTES: u64 = 128;
/// Kernel memory per server-side connection, bytes (socket, file, TCP state; measured).
pub const KERNEL_BYTES: u64 = 4_600;
/// The kernel's cap on a registered file table (io_uring `IORING_MAX_FIXED_FILES`).
pub const RING_FILES_MAX: u64 = 1 << 20;
/// Memory kept free beside the connections: the engine's base, rings, history, page cache.
const MEMORY_SPARE_BYTES: u64 = 256 << 20;
/// Descriptors the host needs beyond the connections (every other process).
const FILES_SPARE: u64 = 65_536;
/// The engine's `listen` backlog; the kernel caps it at `somaxconn`.
const LISTEN_BACKLOG: u64 = 4_096;
/// Source addresses a loopback `ringcast-bench hold` spreads over by default.
const BENCH_SOURCES: u64 = 16;

/// What was read from the host; `None` when it could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readings {
    pub nofile_soft: Option<u64>,
    pub nofile_hard: Option<u64>,
    pub nr_open: Option<u64>,
    pub file_max: Option<u64>,
    pub somaxconn: Option<u64>,
    pub tcp_max_syn_backlog: Option<u64>,
    /// Ports in `ip_local_port_range`.
    pub local_ports: Option<u64>,
    /// `tcp_mem` high threshold, pages of 4 KiB.
    pub tcp_mem_high_pages: Option<u64>,
    pub netdev_max_backlog: Option<u64>,
    pub io_uring_disabled: Option<u64>,
    pub mem_available_kb: Option<u64>,
    /// `(major, minor)` of the kernel release.
    pub kernel: Option<(u64, u64)>,
}

/// One finding: what was read, what N connections need, and how to fix a shortfall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub name: &'static str,
    pub have: String,
    pub need: String,
    pub ok: bool,
    /// The line that fixes it (empty when `ok`).
    pub fix: String,
}

/// Loops one engine needs for `conns` connections when each ring's file table holds at
/// most min(`nofile`, 2^20) descriptors.
pub fn loops_needed(conns: u64, nofile: u64) -> u64 {
    let table = nofile.clamp(1, RING_FILES_MAX);
    conns.div_ceil(table).max(1)
}

fn verdict(name: &'static str, have: Option<u64>, need: u64, fix: String) -> Verdict {
    let ok = have.is_some_and(|h| h >= need);
    Verdict {
        name,
        have: have.map_or_else(|| "unreadable".to_owned(), |h| h.to_string()),
        need: format!(">= {need}"),
        ok,
        fix: if ok { String::new() } else { fix },
    }
}

/// The verdicts for `conns` connections on `loops` loops (`None`: as many as needed).
pub fn verdicts(r: &Readings, conns: u64, loops: Option<u64>) -> Vec<Verdict> {
    let mut out = Vec::new();
    let kernel_ok = r.kernel.is_some_and(|k| k >= (6, 1));
    out.push(Verdict {
        name: "kernel",
        have: r
            .kernel
            .map_or_else(|| "unreadable".into(), |(a, b)| format!("{a}.{b}")),
        need: ">= 6.1".into(),
        ok: kernel_ok,
        fix: if kernel_ok {
            String::new()
        } else {
            "upgrade to kernel 6.1 or later".into()
        },
    });
    let uring_ok = r.io_uring_disabled == Some(0);
    out.push(Verdict {
        name: "kernel.io_uring_disabled",
        have: r
            .io_uring_disabled
            .map_or_else(|| "unreadable".into(), |v| v.to_string()),
        need: "0".into(),
        ok: uring_ok || (r.io_uring_disabled.is_none() && kernel_ok),
        fix: if uring_ok {
            String::new()
        } else {
            "sysctl -w kernel.io_uring_disabled=0".into()
        },
    });
    // Each loop's file table holds at most min(RLIMIT_NOFILE, 2^20): with `loops` loops
    // each must hold ceil(N / loops) descriptors, plus a few the engine keeps open.
    // Without `--loops`, the engine is assumed to run as many loops as the hard limit needs.
    let loops_used = loops.unwrap_or_else(|| loops_needed(conns, r.nofile_hard.unwrap_or(RING_FILES_MAX)));
    let per_loop = conns.div_ceil(loops_used.max(1));
    let nofile_need = per_loop + 64;
    if let Some(l) = loops {
        let need = loops_needed(conns, r.nofile_hard.unwrap_or(0));
        let ok = per_loop <= RING_FILES_MAX && l >= need;
        out.push(Verdict {
            name: "--loops",
            have: l.to_string(),
            need: format!(">= {need} (ceil(N / min(RLIMIT_NOFILE, 2^20)))"),
            ok,
            fix: if ok {
                String::new()
            } else {
                format!("ringcast serve --loops {need} (or raise RLIMIT_NOFILE)")
            },
        });
    }
    let fix_nofile = format!(
        "ulimit -n {nofile_need}   # or tuning/limits.conf: ringcast soft/hard nofile {}",
        nofile_need.max(1 << 20)
    );
    // The engine raises its soft limit to the hard one itself, so only the hard limit binds.
    out.push(verdict(
        "RLIMIT_NOFILE (hard)",
        r.nofile_hard,
        nofile_need,
        fix_nofile,
    ));
    out.push(verdict(
        "fs.nr_open",
        r.nr_open,
        nofile_need,
        format!(
            "sysctl -w fs.nr_open={}   # tuning/sysctl.conf",
            nofile_need.max(1 << 20)
        ),
    ));
    let files = conns + FILES_SPARE;
    out.push(verdict(
        "fs.file-max",
        r.file_max,
        files,
        format!("sysctl -w fs.file-max={files}   # tuning/sysctl.conf"),
    ));
    for (name, have) in [
        ("net.core.somaxconn", r.somaxconn),
        ("net.ipv4.tcp_max_syn_backlog", r.tcp_max_syn_backlog),
    ] {
        out.push(verdict(
            name,
            have,
            LISTEN_BACKLOG,
            format!("sysctl -w {name}=65535   # tuning/sysctl.conf"),
        ));
    }
    // A reconnect storm of N SYNs lands within milliseconds; the default 1000 drops them.
    let backlog = if conns >= 100_000 { 65_536 } else { 1_000 };
    out.push(verdict(
        "net.core.netdev_max_backlog",
        r.netdev_max_backlog,
        backlog,
        format!("sysctl -w net.core.netdev_max_backlog={backlog}   # tuning/sysctl.conf"),
    ));
    // During a fan-out burst every stream holds at least one page of send buffer.
    out.push(verdict(
        "net.ipv4.tcp_mem (high, pages)",
        r.tcp_mem_high_pages,
        conns,
        format!(
            "sysctl -w net.ipv4.tcp_mem='{} {} {}'   # tuning/sysctl.conf",
            conns / 4,
            conns / 2,
            conns.max(6_291_456)
        ),
    ));
    // A loopback load generator needs N ports over its source addresses.
    let ports = conns.div_ceil(BENCH_SOURCES);
    out.push(verdict(
        "net.ipv4.ip_local_port_range (ports, loopback bench)",
        r.local_ports,
        ports,
        format!(
            "sysctl -w net.ipv4.ip_local_port_range='1024 65535'   # or ringcast-bench hold --sources {}",
            conns.div_ceil(r.local_ports.unwrap_or(28_232).max(1))
        ),
    ));
    let mem_kb = (conns * (ENGINE_USER_BYTES + KERNEL_BYTES) + MEMORY_SPARE_BYTES).div_ceil(1024);
    out.push(verdict(
        "MemAvailable (KiB)",
        r.mem_available_kb,
        mem_kb,
        format!(
            "free memory or use a larger host: {conns} x ({ENGINE_USER_BYTES} B engine + {KERNEL_BYTES} B kernel) + 256 MiB"
        ),
    ));
    out
}

/// Arguments of `ringcast-bench check`.
#[derive(clap::Args, Debug, Clone)]
pub struct CheckArgs {
    /// Connections one engine on this host should hold.
    #[arg(long)]
    pub connections: u64,
    /// The engine's `--loops`; without it, the loops needed are computed.
    #[arg(long)]
    pub loops: Option<u64>,
}

fn read_num(path: &str) -> Option<u64> {
    fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn nofile() -> (Option<u64>, Option<u64>) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable `rlimit` for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return (None, None);
    }
    (Some(lim.rlim_cur), Some(lim.rlim_max))
}

/// `(major, minor)` of a release string such as `6.18.44-fc`.
pub fn parse_kernel(release: &str) -> Option<(u64, u64)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Reads the host now.
pub fn read_host() -> Readings {
    let (nofile_soft, nofile_hard) = nofile();
    let ports = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| crate::procfs::parse_port_range(&t));
    let tcp_mem_high_pages = fs::read_to_string("/proc/sys/net/ipv4/tcp_mem")
        .ok()
        .and_then(|t| t.split_whitespace().nth(2)?.parse().ok());
    Readings {
        nofile_soft,
        nofile_hard,
        nr_open: read_num("/proc/sys/fs/nr_open"),
        file_max: read_num("/proc/sys/fs/file-max"),
        somaxconn: read_num("/proc/sys/net/core/somaxconn"),
        tcp_max_syn_backlog: read_num("/proc/sys/net/ipv4/tcp_max_syn_backlog"),
        local_ports: ports,
        tcp_mem_high_pages,
        netdev_max_backlog: read_num("/proc/sys/net/core/netdev_max_backlog"),
        io_uring_disabled: read_num("/proc/sys/kernel/io_uring_disabled"),
        mem_available_kb: fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| crate::procfs::kb_field(&t, "MemAvailable")),
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .and_then(|t| parse_kernel(&t)),
    }
}

/// Renders the verdicts as text.
pub fn render(r: &Readings, conns: u64, loops: Option<u64>, list: &[Verdict]) -> String {
    let mut out = String::new();
    let table = r.nofile_hard.unwrap_or(0).clamp(1, RING_FILES_MAX);
    let _ = writeln!(
        out,
        "check for {conns} connections: RLIMIT_NOFILE soft {} hard {}; file table per loop {table}; \
         loops needed {}{}",
        r.nofile_soft.map_or("?".into(), |v| v.to_string()),
        r.nofile_hard.map_or("?".into(), |v| v.to_string()),
        loops_needed(conns, table),
        loops.map_or(String::new(), |l| format!(" (given {l})")),
    );
    let _ = writeln!(
        out,
        "memory: {:.1} MiB engine + {:.1} MiB kernel for the server side",
        (conns * ENGINE_USER_BYTES) as f64 / 1_048_576.0,
        (conns * KERNEL_BYTES) as f64 / 1_048_576.0
    );
    for v in list {
        let mark = if v.ok { "ok  " } else { "LACK" };
        let _ = writeln!(out, "{mark} {:<52} have {:<12} need {}", v.name, v.have, v.need);
        if !v.ok {
            let _ = writeln!(out, "     fix: {}", v.fix);
        }
    }
    let lacking = list.iter().filter(|v| !v.ok).count();
    let _ = writeln!(out, "{lacking} lacking");
    out
}

/// Runs `ringcast-bench check`.
pub fn main(args: CheckArgs) -> ExitCode {
    let readings = read_host();
    let list = verdicts(&readings, args.connections, args.loops);
    print!("{}", render(&readings, args.connections, args.loops, &list));
    if list.iter().all(|v| v.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuned() -> Readings {
        Readings {
            nofile_soft: Some(1 << 20),
            nofile_hard: Some(1 << 20),
            nr_open: Some(12_000_000),
            file_max: Some(12_000_000),
            somaxconn: Some(65_535),
            tcp_max_syn_backlog: Some(65_535),
            local_ports: Some(64_512),
            tcp_mem_high_pages: Some(6_291_456),
            netdev_max_backlog: Some(65_536),
            io_uring_disabled: Some(0),
            mem_available_kb: Some(64 << 20),
            kernel: Some((6, 18)),
        }
    }

    fn lacking(r: &Readings, conns: u64, loops: Option<u64>) -> Vec<&'static str> {
        verdicts(r, conns, loops)
            .into_iter()
            .filter(|v| !v.ok)
            .map(|v| v.name)
            .collect()
    }

    #[test]
    fn a_tuned_host_holds_a_million_on_one_loop() {
        assert_eq!(lacking(&tuned(), 1_000_000, Some(1)), Vec::<&str>::new());
    }

    #[test]
    fn loops_needed_is_the_ceiling_over_the_file_table() {
        assert_eq!(loops_needed(20_000, 20_000), 1);
        assert_eq!(loops_needed(20_001, 20_000), 2);
        assert_eq!(loops_needed(10_000_000, 1 << 30), 10);
        assert_eq!(loops_needed(0, 20_000), 1);
        let mut r = tuned();
        r.nofile_hard = Some(20_000);
        assert_eq!(
            lacking(&r, 100_000, Some(4)),
            vec!["--loops", "RLIMIT_NOFILE (hard)"]
        );
        assert!(!lacking(&r, 100_000, Some(5)).contains(&"--loops"));
    }

    #[test]
    fn each_shortfall_names_its_fix() {
        let mut r = tuned();
        r.file_max = Some(100_000);
        r.somaxconn = Some(128);
        r.io_uring_disabled = Some(2);
        r.kernel = Some((5, 15));
        r.mem_available_kb = Some(1 << 20);
        let list = verdicts(&r, 1_000_000, Some(1));
        let bad: Vec<_> = list.iter().filter(|v| !v.ok).collect();
        let names: Vec<_> = bad.iter().map(|v| v.name).collect();
        assert_eq!(
            names,
            [
                "kernel",
                "kernel.io_uring_disabled",
                "fs.file-max",
                "net.core.somaxconn",
                "MemAvailable (KiB)"
            ]
        );
        assert!(bad[2].fix.starts_with("sysctl -w fs.file-max=1065536"));
        assert!(bad[3].fix.contains("somaxconn=65535"));
        assert!(list.iter().filter(|v| v.ok).all(|v| v.fix.is_empty()));
    }

    #[test]
    fn unreadable_values_are_lacking_and_kernel_parses() {
        let list = verdicts(&Readings::default(), 10, None);
        assert!(list.iter().all(|v| !v.ok), "{list:?}");
        assert_eq!(parse_kernel("6.18.44-fc-v657\n"), Some((6, 18)));
        assert_eq!(parse_kernel("6.1"), Some((6, 1)));
        assert_eq!(parse_kernel("x"), None);
    }

    #[test]
    fn memory_threshold_is_the_measured_cost() {
        let mut r = tuned();
        let conns = 1_000_000;
        let need = (conns * (ENGINE_USER_BYTES + KERNEL_BYTES) + MEMORY_SPARE_BYTES).div_ceil(1024);
        r.mem_available_kb = Some(need);
        assert!(lacking(&r, conns, None).is_empty());
        r.mem_available_kb = Some(need - 1);
        assert_eq!(lacking(&r, conns, None), vec!["MemAvailable (KiB)"]);
    }
}
