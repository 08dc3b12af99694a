//! Reads the numbers the bench measures and the limits it plans with from `/proc`:
//! a process's resident memory, the kernel memory charged to its memory cgroup, the
//! kernel's slab memory, the ephemeral port range.
//!
//! Parsing is split from reading so it is tested on fixed text; only the `read_*`
//! functions touch the filesystem.

use std::fs;

/// Memory figures taken at one moment, all in kB as `/proc` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The engine's `VmRSS`.
    pub rss_kb: u64,
    /// The engine's `VmHWM` (peak RSS).
    pub hwm_kb: u64,
    /// The kernel's `Slab:` from `/proc/meminfo`.
    pub slab_kb: u64,
    /// The kernel's `SUnreclaim:` from `/proc/meminfo`.
    pub sunreclaim_kb: u64,
    /// Kernel memory charged to the engine's memory cgroup (v1 `memory.kmem.usage_in_bytes`,
    /// v2 `memory.stat` `kernel`): its sockets, files, io_uring requests and page tables,
    /// apart from any client's. `None` unless the engine runs in a memory cgroup of its own.
    pub cgroup_kernel_kb: Option<u64>,
}

impl Snapshot {
    /// Reads `/proc/<pid>/status` and `/proc/meminfo`.
    ///
    /// # Errors
    /// If the process is gone or a field is missing.
    pub fn read(pid: u32) -> Result<Snapshot, String> {
        let path = format!("/proc/{pid}/status");
        let status = fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {path} ({e}): is the engine pid {pid} running?"))?;
        let meminfo =
            fs::read_to_string("/proc/meminfo").map_err(|e| format!("cannot read /proc/meminfo: {e}"))?;
        let mut snap = Snapshot::parse(&status, &meminfo)
            .map_err(|field| format!("no {field} in {path} or /proc/meminfo"))?;
        snap.cgroup_kernel_kb = read_cgroup_kernel_kb(pid);
        Ok(snap)
    }

    /// Builds a snapshot from the text of `/proc/<pid>/status` and `/proc/meminfo`.
    ///
    /// # Errors
    /// The name of the first missing field.
    pub fn parse(status: &str, meminfo: &str) -> Result<Snapshot, &'static str> {
        let field = |text: &str, key: &'static str| kb_field(text, key).ok_or(key);
        Ok(Snapshot {
            rss_kb: field(status, "VmRSS")?,
            hwm_kb: field(status, "VmHWM")?,
            slab_kb: field(meminfo, "Slab")?,
            sunreclaim_kb: field(meminfo, "SUnreclaim")?,
            cgroup_kernel_kb: None,
        })
    }
}

/// Where a process's memory cgroup keeps its kernel-memory figure, from the text of
/// `/proc/<pid>/cgroup`: `None` in the root cgroup, whose figures are the whole machine's.
pub fn kernel_memory_file(cgroup: &str) -> Option<(String, bool)> {
    let mut unified = None;
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            return (path != "/").then(|| {
                (
                    format!("/sys/fs/cgroup/memory{path}/memory.kmem.usage_in_bytes"),
                    true,
                )
            });
        }
        if controllers.is_empty() && path != "/" {
            unified = Some((format!("/sys/fs/cgroup{path}/memory.stat"), false));
        }
    }
    unified
}

/// The `kernel` line of a cgroup v2 `memory.stat`, in bytes.
pub fn stat_kernel_bytes(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("kernel ").and_then(|v| v.trim().parse().ok()))
}

fn read_cgroup_kernel_kb(pid: u32) -> Option<u64> {
    let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let (file, v1) = kernel_memory_file(&cgroup)?;
    let text = fs::read_to_string(file).ok()?;
    let bytes = if v1 {
        text.trim().parse().ok()?
    } else {
        stat_kernel_bytes(&text)?
    };
    Some(bytes / 1024)
}

/// The value of a `Key:   1234 kB` line, in kB.
pub fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, rest) = line.split_once(':')?;
        if name != key {
            return None;
        }
        let mut words = rest.split_whitespace();
        let value = words.next()?.parse().ok()?;
        match words.next() {
            None | Some("kB") => Some(value),
            Some(_) => None,
        }
    })
}

/// Number of ports in `net.ipv4.ip_local_port_range` (`"32768\t60999"` is 28,232).
pub fn parse_port_range(text: &str) -> Option<u64> {
    let mut words = text.split_whitespace();
    let low: u64 = words.next()?.parse().ok()?;
    let high: u64 = words.next()?.parse().ok()?;
    (high >= low).then(|| high - low + 1)
}

/// Reads the ephemeral port count from `/proc/sys/net/ipv4/ip_local_port_range`.
///
/// # Errors
/// If the file is missing or unreadable.
pub fn read_port_range() -> Result<u64, String> {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    parse_port_range(&text).ok_or(format!("cannot parse {path}: {text:?}"))
}

/// The process's command line from `/proc/<pid>/cmdline`, arguments joined by spaces.
pub fn read_cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Some(args.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tringcast\nUmask:\t0022\nState:\tS (sleeping)\n\
        VmPeak:\t  123456 kB\nVmHWM:\t   20480 kB\nVmRSS:\t   18432 kB\n\
        RssAnon:\t    8192 kB\nThreads:\t2\n";
    const MEMINFO: &str = "MemTotal:       24576000 kB\nSlab:             512000 kB\n\
        SReclaimable:     100000 kB\nSUnreclaim:       412000 kB\nHugePages_Total:       0\n";

    #[test]
    fn status_and_meminfo_fields_parse() {
        let snap = Snapshot::parse(STATUS, MEMINFO).expect("all fields present");
        assert_eq!(
            snap,
            Snapshot {
                rss_kb: 18_432,
                hwm_kb: 20_480,
                slab_kb: 512_000,
                sunreclaim_kb: 412_000,
                cgroup_kernel_kb: None,
            }
        );
    }

    #[test]
    fn the_memory_cgroup_is_found_on_v1_and_v2_and_the_root_is_not_one() {
        let v1 = "9:name=systemd:/\n4:memory:/bench/engine\n0::/\n";
        assert_eq!(
            kernel_memory_file(v1),
            Some((
                "/sys/fs/cgroup/memory/bench/engine/memory.kmem.usage_in_bytes".into(),
                true
            ))
        );
        assert_eq!(kernel_memory_file("4:memory:/\n0::/\n"), None);
        assert_eq!(
            kernel_memory_file("0::/bench/engine\n"),
            Some(("/sys/fs/cgroup/bench/engine/memory.stat".into(), false))
        );
        assert_eq!(kernel_memory_file("0::/\n"), None);
        assert_eq!(
            stat_kernel_bytes("anon 4096\nkernel 123456\nkernel_stack 16384\n"),
            Some(123_456)
        );
        assert_eq!(stat_kernel_bytes("anon 4096\n"), None);
    }

    #[test]
    fn prefixes_and_missing_fields_do_not_match() {
        assert_eq!(kb_field(STATUS, "Vm"), None);
        assert_eq!(kb_field(STATUS, "RSS"), None);
        assert_eq!(kb_field(STATUS, "Threads"), Some(2));
        assert_eq!(kb_field(MEMINFO, "HugePages_Total"), Some(0));
        assert_eq!(Snapshot::parse("Name:\tx\n", MEMINFO), Err("VmRSS"));
        assert_eq!(Snapshot::parse(STATUS, "MemTotal: 1 kB\n"), Err("Slab"));
    }

    #[test]
    fn port_range_counts_both_ends() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(28_232));
        assert_eq!(parse_port_range("1024 65535"), Some(64_512));
        assert_eq!(parse_port_range("5 4"), None);
        assert_eq!(parse_port_range(""), None);
    }

    #[test]
    fn this_process_can_be_read() {
        let snap = Snapshot::read(std::process::id()).expect("own /proc entry");
        assert!(snap.rss_kb > 0 && snap.hwm_kb >= snap.rss_kb, "{snap:?}");
        assert!(read_port_range().expect("port range") > 0);
        let cmdline = read_cmdline(std::process::id()).expect("own cmdline");
        assert!(!cmdline.is_empty());
    }
}
