//! Splits N connections over worker processes, their io_uring rings and source
//! addresses, and checks the split against this machine's limits before any socket
//! opens.
//!
//! Pure arithmetic: no sockets, no processes. A worker holds at most `rings x per_ring`
//! connections; each ring holds at most `per_ring` in its registered file table, which
//! `RLIMIT_NOFILE` caps per ring (DESIGN.md §3). Connection `i` (global index, 0-based) is
//! held by the worker whose [`Share`] contains `i` and leaves from source address
//! `127.0.0.(2 + i % sources)`, so every source carries at most `ceil(N / sources)`
//! connections to the one destination whatever the worker count.

use std::net::Ipv4Addr;

/// Most rings (threads) one worker process runs.
pub const RINGS_MAX: u64 = 256;

/// Highest source count: 127.0.0.2 ..= 127.0.0.254.
pub const SOURCES_MAX: u32 = 253;

/// Slots of `RLIMIT_NOFILE` kept free beside a ring's file table: stdio, the ring
/// descriptors, and slack for the runtime.
pub const FDS_SPARE: u64 = 32;

/// A contiguous range of global connection indices (of a worker process, or of one of
/// its rings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// Global index of the worker's first connection.
    pub start: u64,
    /// Number of connections the worker opens.
    pub count: u64,
}

/// Splits `total` connections into `ceil(total / per_proc)` shares whose counts differ by
/// at most one, in index order.
///
/// # Panics
/// If `per_proc` is zero.
pub fn split(total: u64, per_proc: u64) -> Vec<Share> {
    assert!(per_proc > 0, "per_proc must be positive");
    let workers = total.div_ceil(per_proc);
    let mut shares = Vec::with_capacity(workers as usize);
    let mut start = 0;
    for w in 0..workers {
        // The first `total % workers` shares take one extra connection.
        let count = total / workers + u64::from(w < total % workers);
        shares.push(Share { start, count });
        start += count;
    }
    shares
}

/// Source address for global connection `index`, or `None` when `sources` is zero (the
/// kernel then picks the source, 127.0.0.1 for a loopback target).
pub fn source_for(index: u64, sources: u32) -> Option<Ipv4Addr> {
    if sources == 0 {
        return None;
    }
    let host = 2 + (index % u64::from(sources)) as u8;
    Some(Ipv4Addr::new(127, 0, 0, host))
}

/// Most connections any one source address carries to the destination.
pub fn per_source_max(total: u64, sources: u32) -> u64 {
    total.div_ceil(u64::from(sources.max(1)))
}

/// Everything [`check`] needs to know about the request and the machine.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections requested.
    pub total: u64,
    /// Connections per io_uring ring.
    pub per_ring: u64,
    /// Rings per worker process.
    pub rings: u64,
    /// Source addresses, 0 for the kernel's choice.
    pub sources: u32,
    /// Hard `RLIMIT_NOFILE` each worker can raise itself to; it caps each ring's table.
    pub nofile_hard: u64,
    /// Ports in `net.ipv4.ip_local_port_range`.
    pub ports: u64,
}

/// Checks a request against the machine's limits.
///
/// # Errors
/// A message naming the limit, the numbers and the flag to change.
pub fn check(l: Limits) -> Result<(), String> {
    if l.total == 0 {
        return Err("--conns must be at least 1".to_owned());
    }
    if l.per_ring == 0 || l.per_ring + FDS_SPARE > l.nofile_hard {
        return Err(format!(
            "--per-ring {} needs a file table of {} slots but RLIMIT_NOFILE caps it at {}; \
             pass --per-ring {} or less (and more --rings)",
            l.per_ring,
            l.per_ring + FDS_SPARE,
            l.nofile_hard,
            l.nofile_hard.saturating_sub(FDS_SPARE)
        ));
    }
    if l.rings == 0 || l.rings > RINGS_MAX {
        return Err(format!("--rings {} must be 1..={RINGS_MAX}", l.rings));
    }
    if l.sources > SOURCES_MAX {
        return Err(format!(
            "--sources {} is more than the {SOURCES_MAX} addresses 127.0.0.2..=127.0.0.254",
            l.sources
        ));
    }
    let per_source = per_source_max(l.total, l.sources);
    if per_source > l.ports {
        let needed = l.total.div_ceil(l.ports);
        return Err(format!(
            "{} connections over {} source address(es) put {per_source} on one source, but \
             ip_local_port_range gives {} ports per source and destination; pass --sources {needed} \
             or more",
            l.total,
            l.sources.max(1),
            l.ports
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_every_index_once_within_per_proc() {
        for total in 0..200u64 {
            for per_proc in 1..40u64 {
                let shares = split(total, per_proc);
                assert_eq!(shares.len() as u64, total.div_ceil(per_proc));
                let mut next = 0;
                for s in &shares {
                    assert_eq!(s.start, next, "total {total} per_proc {per_proc}");
                    assert!(s.count >= 1 && s.count <= per_proc, "{s:?}");
                    next += s.count;
                }
                assert_eq!(next, total);
                let (min, max) = shares
                    .iter()
                    .fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s.count), hi.max(s.count)));
                assert!(shares.is_empty() || max - min <= 1, "uneven: {shares:?}");
            }
        }
    }

    #[test]
    fn brief_examples_split_as_expected() {
        assert_eq!(
            split(19_000, 19_000),
            vec![Share {
                start: 0,
                count: 19_000
            }]
        );
        let three = split(6_000, 2_000);
        assert_eq!(three.len(), 3);
        assert!(three.iter().all(|s| s.count == 2_000));
        let big = split(1_000_000, 19_000);
        assert_eq!(big.len(), 53);
        assert!(big.iter().all(|s| s.count <= 19_000));
    }

    #[test]
    fn sources_are_spread_round_robin() {
        for sources in 1..=SOURCES_MAX {
            let total = 3 * u64::from(sources) + 1;
            let mut per_host = [0u64; 256];
            for i in 0..total {
                let ip = source_for(i, sources).expect("sources > 0");
                let [a, b, c, host] = ip.octets();
                assert_eq!((a, b, c), (127, 0, 0));
                assert!(host >= 2 && u32::from(host) <= 1 + sources, "{ip}");
                per_host[host as usize] += 1;
            }
            let max = per_host.iter().copied().max().unwrap_or(0);
            assert_eq!(max, per_source_max(total, sources));
        }
        assert_eq!(source_for(7, 0), None);
    }

    fn limits(total: u64, per_ring: u64, sources: u32) -> Limits {
        Limits {
            total,
            per_ring,
            rings: 8,
            sources,
            nofile_hard: 20_000,
            ports: 28_232,
        }
    }

    #[test]
    fn check_rejects_what_this_machine_cannot_hold() {
        assert!(check(limits(19_000, 19_000, 16)).is_ok());
        assert!(check(limits(1_000_000, 19_000, 36)).is_ok());
        assert!(check(limits(0, 19_000, 16)).is_err());
        assert!(check(limits(10, 19_990, 16)).is_err(), "fd limit");
        assert!(check(limits(10, 0, 16)).is_err());
        assert!(check(limits(10, 100, 254)).is_err());
        assert!(check(limits(28_232, 19_000, 0)).is_ok());
        let err = check(limits(28_233, 19_000, 0)).unwrap_err();
        assert!(err.contains("--sources 2"), "{err}");
        assert!(check(limits(1_000_000, 19_000, 35)).is_err());
        assert!(check(Limits {
            rings: 0,
            ..limits(10, 100, 1)
        })
        .is_err());
        assert!(check(Limits {
            rings: RINGS_MAX + 1,
            ..limits(10, 100, 1)
        })
        .is_err());
    }
}
