//! Admission control shared by every loop: how many connections one client address may
//! hold, how fast it may open them, and how many the engine holds in all.
//!
//! An address is an IPv4 address or an IPv6 /64 (one subscriber's allocation), so a host
//! cannot dodge the cap by walking its own prefix. Loops consult the table once per
//! accepted connection and once per freed one; it is split into locked shards by address
//! so that loops accepting at once rarely meet.
//!
//! A refused connection is not closed at once: it is answered (`429` or, for the engine-wide
//! cap, a short SSE stream or `503`) once its request arrives, so that the client reads a
//! reason rather than a reset. Answers waiting per address are bounded too
//! ([`WAITING_MAX`]); beyond them a connection is closed unanswered.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Refused connections from one address that may wait for their answer at once.
pub const WAITING_MAX: u16 = 16;
/// Locked shards of the address table.
const SHARDS: usize = 16;
/// Addresses one shard keeps before it forgets those holding nothing.
const SHARD_ENTRIES_MAX: usize = 1 << 16;
/// Tokens are counted in millionths, so rates below one per second keep their fraction.
const UNIT: u64 = 1_000_000;

/// What admission control decided for a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// Refused; answered once its request arrives.
    Refuse(Refusal),
    /// Refused, and its address already has [`WAITING_MAX`] answers waiting: close it.
    Drop,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its address holds `--max-conns-per-ip` connections.
    PerIp,
    /// Its address opens connections faster than `--accept-rate-per-ip`; a token is due in
    /// this many seconds.
    Rate { retry_after_secs: u32 },
    /// The engine holds `--max-conns` connections.
    Shed,
}

/// The limits, from the configuration; zero turns one off.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    pub per_ip: u32,
    /// Connections per second and address.
    pub rate_per_ip: f64,
    pub burst_per_ip: u32,
    pub max_conns: u64,
}

impl Limits {
    /// True when anything is keyed by client address (the loops then accept with it).
    pub fn by_address(&self) -> bool {
        self.per_ip > 0 || self.rate_per_ip > 0.0
    }

    pub fn any(&self) -> bool {
        self.by_address() || self.max_conns > 0
    }
}

#[derive(Debug)]
struct Peer {
    /// Admitted connections.
    conns: u32,
    /// Refused connections waiting for their answer.
    waiting: u16,
    /// Accept tokens, in millionths, as of `at_ms`.
    tokens: u64,
    at_ms: u64,
}

/// The engine-wide table.
pub struct Admission {
    limits: Limits,
    /// Tokens added per millisecond, in millionths of a token.
    refill_per_ms: u64,
    burst: u64,
    /// Admitted connections across the engine.
    held: AtomicU64,
    peers: Vec<Mutex<HashMap<u64, Peer>>>,
    origin: Instant,
}

impl Admission {
    pub fn new(limits: Limits) -> Self {
        let burst = if limits.burst_per_ip > 0 {
            u64::from(limits.burst_per_ip)
        } else {
            (limits.rate_per_ip.ceil() as u64).max(1)
        };
        Admission {
            limits,
            refill_per_ms: (limits.rate_per_ip * UNIT as f64 / 1000.0).round().max(1.0) as u64,
            burst: burst * UNIT,
            held: AtomicU64::new(0),
            peers: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            origin: Instant::now(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Connections admitted and not yet freed, across the engine.
    pub fn held(&self) -> u64 {
        self.held.load(Relaxed)
    }

    /// Addresses the table holds.
    pub fn addresses(&self) -> usize {
        self.peers
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Decides for a connection from `peer` (an [`address_key`]; `None` when accepts do not
    /// carry addresses). An admitted or refused connection must be handed to
    /// [`Admission::release`] when it is freed.
    pub fn admit(&self, peer: Option<u64>) -> Verdict {
        let Some(key) = peer.filter(|_| self.limits.by_address()) else {
            return if self.take_global() {
                Verdict::Admit
            } else {
                Verdict::Refuse(Refusal::Shed)
            };
        };
        let now_ms = self.origin.elapsed().as_millis() as u64;
        let mut shard = self.shard(key);
        if shard.len() >= SHARD_ENTRIES_MAX && !shard.contains_key(&key) {
            shard.retain(|_, p| p.conns > 0 || p.waiting > 0);
        }
        let peer = shard.entry(key).or_insert(Peer {
            conns: 0,
            waiting: 0,
            tokens: self.burst,
            at_ms: now_ms,
        });
        let refusal = if self.limits.per_ip > 0 && peer.conns >= self.limits.per_ip {
            Some(Refusal::PerIp)
        } else if self.limits.rate_per_ip > 0.0 && !self.take_token(peer, now_ms) {
            let missing = UNIT - peer.tokens;
            let ms = missing.div_ceil(self.refill_per_ms);
            Some(Refusal::Rate {
                retry_after_secs: ms.div_ceil(1000).max(1) as u32,
            })
        } else if !self.take_global() {
            Some(Refusal::Shed)
        } else {
            None
        };
        match refusal {
            None => {
                peer.conns += 1;
                Verdict::Admit
            }
            Some(_) if peer.waiting >= WAITING_MAX => Verdict::Drop,
            Some(r) => {
                peer.waiting += 1;
                Verdict::Refuse(r)
            }
        }
    }

    /// A connection [`Admission::admit`] decided for has been freed; `admitted` says whether
    /// it was admitted or refused.
    pub fn release(&self, peer: Option<u64>, admitted: bool) {
        if admitted && self.limits.max_conns > 0 {
            self.held.fetch_sub(1, Relaxed);
        }
        let Some(key) = peer.filter(|_| self.limits.by_address()) else {
            return;
        };
        let now_ms = self.origin.elapsed().as_millis() as u64;
        let mut shard = self.shard(key);
        let Some(p) = shard.get_mut(&key) else {
            debug_assert!(false, "released an address the table does not hold");
            return;
        };
        if admitted {
            p.conns = p.conns.saturating_sub(1);
        } else {
            p.waiting = p.waiting.saturating_sub(1);
        }
        // Forgotten once it holds nothing and its bucket is full again: forgetting it
        // earlier would hand it a fresh burst.
        if p.conns == 0 && p.waiting == 0 && self.refilled(p, now_ms) >= self.burst {
            shard.remove(&key);
        }
    }

    fn take_global(&self) -> bool {
        let max = self.limits.max_conns;
        if max == 0 {
            return true;
        }
        if self.held.fetch_add(1, Relaxed) >= max {
            self.held.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    fn refilled(&self, p: &Peer, now_ms: u64) -> u64 {
        if self.limits.rate_per_ip <= 0.0 {
            return self.burst;
        }
        let elapsed = now_ms.saturating_sub(p.at_ms);
        p.tokens
            .saturating_add(elapsed.saturating_mul(self.refill_per_ms))
            .min(self.burst)
    }

    fn take_token(&self, p: &mut Peer, now_ms: u64) -> bool {
        p.tokens = self.refilled(p, now_ms);
        p.at_ms = now_ms;
        if p.tokens >= UNIT {
            p.tokens -= UNIT;
            true
        } else {
            false
        }
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Peer>> {
        // Fibonacci hashing spreads neighbouring addresses across shards.
        let i = (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize % SHARDS;
        self.peers[i].lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The admission key of a socket address: an IPv4 address (also when it arrives mapped
/// into IPv6) or the /64 of an IPv6 one. `None` for any other family.
///
/// IPv4 keys carry `0xff` in the top byte: that prefix is IPv6 multicast, never a peer's
/// source address, so the two families cannot collide.
pub fn address_key(addr: &libc::sockaddr_storage) -> Option<u64> {
    match i32::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let v4 = unsafe { &*std::ptr::from_ref(addr).cast::<libc::sockaddr_in>() };
            Some(v4_key(u32::from_be(v4.sin_addr.s_addr)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let v6 = unsafe { &*std::ptr::from_ref(addr).cast::<libc::sockaddr_in6>() };
            Some(v6_key(v6.sin6_addr.s6_addr))
        }
        _ => None,
    }
}

fn v4_key(ip: u32) -> u64 {
    0xff00_0000_0000_0000 | u64::from(ip)
}

fn v6_key(octets: [u8; 16]) -> u64 {
    let ip = std::net::Ipv6Addr::from(octets);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_key(u32::from(v4));
    }
    u64::from_be_bytes(octets[..8].try_into().expect("eight bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> Option<u64> {
        Some(v4_key(u32::from_be_bytes(a)))
    }

    #[test]
    fn an_address_is_capped_and_freed_connections_make_room() {
        let a = Admission::new(Limits {
            per_ip: 2,
            ..Limits::default()
        });
        let me = v4([10, 0, 0, 1]);
        assert_eq!(a.admit(me), Verdict::Admit);
        assert_eq!(a.admit(me), Verdict::Admit);
        assert_eq!(a.admit(me), Verdict::Refuse(Refusal::PerIp));
        // Another address is not affected.
        assert_eq!(a.admit(v4([10, 0, 0, 2])), Verdict::Admit);
        a.release(me, true);
        assert_eq!(a.admit(me), Verdict::Admit);
        // The refused one's answer went out.
        a.release(me, false);
        for _ in 0..3 {
            a.release(me, true);
        }
        a.release(v4([10, 0, 0, 2]), true);
        assert_eq!(a.addresses(), 0, "addresses holding nothing are forgotten");
    }

    #[test]
    fn waiting_refusals_are_bounded_then_dropped() {
        let a = Admission::new(Limits {
            per_ip: 1,
            ..Limits::default()
        });
        let me = v4([192, 0, 2, 7]);
        assert_eq!(a.admit(me), Verdict::Admit);
        for _ in 0..WAITING_MAX {
            assert_eq!(a.admit(me), Verdict::Refuse(Refusal::PerIp));
        }
        assert_eq!(a.admit(me), Verdict::Drop);
        a.release(me, false);
        assert_eq!(a.admit(me), Verdict::Refuse(Refusal::PerIp));
    }

    #[test]
    fn accept_rate_has_a_burst_then_a_retry_after() {
        let a = Admission::new(Limits {
            rate_per_ip: 0.5,
            burst_per_ip: 3,
            ..Limits::default()
        });
        let me = v4([198, 51, 100, 1]);
        for _ in 0..3 {
            assert_eq!(a.admit(me), Verdict::Admit);
        }
        // Half a token per second: the next one is about two seconds away.
        assert_eq!(
            a.admit(me),
            Verdict::Refuse(Refusal::Rate { retry_after_secs: 2 })
        );
    }

    #[test]
    fn the_engine_wide_cap_sheds_and_recovers() {
        let a = Admission::new(Limits {
            max_conns: 2,
            ..Limits::default()
        });
        assert_eq!(a.admit(None), Verdict::Admit);
        assert_eq!(a.admit(None), Verdict::Admit);
        assert_eq!(a.admit(None), Verdict::Refuse(Refusal::Shed));
        assert_eq!(a.held(), 2);
        a.release(None, false);
        a.release(None, true);
        assert_eq!(a.held(), 1);
        assert_eq!(a.admit(None), Verdict::Admit);
    }

    #[test]
    fn ipv6_is_keyed_by_its_64_and_mapped_ipv4_as_ipv4() {
        let p1: std::net::Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let p2: std::net::Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: std::net::Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(v6_key(p1.octets()), v6_key(p2.octets()));
        assert_ne!(v6_key(p1.octets()), v6_key(other.octets()));
        let mapped: std::net::Ipv6Addr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(Some(v6_key(mapped.octets())), v4([127, 0, 0, 1]));
    }

    #[test]
    fn socket_addresses_are_keyed() {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut s: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: sockaddr_storage is large enough for sockaddr_in.
        let sin = unsafe { &mut *std::ptr::from_mut(&mut s).cast::<libc::sockaddr_in>() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 9]).to_be();
        assert_eq!(address_key(&s), v4([127, 0, 0, 9]));
        s.ss_family = libc::AF_UNIX as libc::sa_family_t;
        assert_eq!(address_key(&s), None);
    }
}
