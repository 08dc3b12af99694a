//! The fast subscribers of `fanout`: non-blocking sockets spread over reader threads,
//! each thread one level-triggered epoll loop that reads everything ready and scans it
//! ([`super::scan`]). Counts are kept per thread and added to shared atomics once per
//! wakeup; latencies (receipt time minus the send timestamp in the payload, both on
//! this process's monotonic clock) go to a histogram per thread that the orchestrator
//! takes at the end of each run.
//!
//! Must never: block (every socket is non-blocking, every wait bounded), or keep bytes
//! after scanning them.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use hdrhistogram::Histogram;

use super::scan::{Scan, Seen};
use crate::sys::{self, Epoll};

/// Largest latency recorded, microseconds (a minute).
const LATENCY_MAX_US: u64 = 60_000_000;
/// Bytes read per `recv`.
const READ_BYTES: usize = 256 * 1024;
/// Readiness events taken per `epoll_wait`.
const WAKE_MAX: usize = 512;
/// Longest `epoll_wait`, so that a stop request is seen this soon.
const WAIT_MS: i32 = 100;

/// Counts over all fast readers since they started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Events received.
    pub events: u64,
    /// Gap notices received.
    pub gaps: u64,
    /// Events the gap notices said were dropped.
    pub dropped: u64,
    /// Events whose id was not above the previous one on the same stream (`--verify`).
    pub disorder: u64,
    /// Other notices (`ringcast.slow`, ...).
    pub notices: u64,
    /// Streams the server ended.
    pub closed: u64,
    /// Bytes read.
    pub bytes: u64,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    events: AtomicU64,
    gaps: AtomicU64,
    dropped: AtomicU64,
    disorder: AtomicU64,
    notices: AtomicU64,
    closed: AtomicU64,
    bytes: AtomicU64,
    /// Nanoseconds since the base instant of the last event received.
    last_event_ns: AtomicU64,
    first_error: Mutex<Option<String>>,
}

/// The reader threads and what they share.
pub struct Readers {
    shared: Arc<Shared>,
    /// Per subscriber: events received plus events its gap notices counted.
    progress: Arc<[AtomicU64]>,
    histograms: Vec<Arc<Mutex<Histogram<u64>>>>,
    threads: Vec<JoinHandle<()>>,
}

struct Conn {
    fd: Option<OwnedFd>,
    scan: Scan,
    last_seq: u64,
    /// Index in [`Readers::progress`].
    index: usize,
    /// Events received plus events gap notices counted.
    progress: u64,
}

impl Readers {
    /// Starts `threads` reader threads over `conns` (connected sockets whose request is
    /// sent), timestamps measured from `base`.
    ///
    /// # Errors
    /// If a socket cannot be made non-blocking or an epoll set cannot be built.
    pub fn start(conns: Vec<OwnedFd>, threads: usize, base: Instant, verify: bool) -> io::Result<Readers> {
        let shared = Arc::new(Shared::default());
        let progress: Arc<[AtomicU64]> = conns.iter().map(|_| AtomicU64::new(0)).collect();
        let threads = threads.max(1);
        let mut shares: Vec<Vec<(usize, OwnedFd)>> = (0..threads).map(|_| Vec::new()).collect();
        for (i, fd) in conns.into_iter().enumerate() {
            shares[i % threads].push((i, fd));
        }
        let mut histograms = Vec::new();
        let mut handles = Vec::new();
        for share in shares {
            let epoll = Epoll::new()?;
            let mut conns = Vec::with_capacity(share.len());
            for (token, (index, fd)) in share.into_iter().enumerate() {
                std::net::TcpStream::from(fd.try_clone()?).set_nonblocking(true)?;
                epoll.add(fd.as_raw_fd(), libc::EPOLLIN as u32, token as u64)?;
                conns.push(Conn {
                    fd: Some(fd),
                    scan: Scan::default(),
                    last_seq: 0,
                    index,
                    progress: 0,
                });
            }
            let histogram = Arc::new(Mutex::new(new_histogram()));
            histograms.push(Arc::clone(&histogram));
            let (shared, progress) = (Arc::clone(&shared), Arc::clone(&progress));
            handles.push(thread::spawn(move || {
                read_loop(&epoll, conns, &shared, &progress, &histogram, base, verify);
            }));
        }
        Ok(Readers {
            shared,
            progress,
            histograms,
            threads: handles,
        })
    }

    /// The counts so far.
    pub fn totals(&self) -> Totals {
        let s = &self.shared;
        Totals {
            events: s.events.load(Relaxed),
            gaps: s.gaps.load(Relaxed),
            dropped: s.dropped.load(Relaxed),
            disorder: s.disorder.load(Relaxed),
            notices: s.notices.load(Relaxed),
            closed: s.closed.load(Relaxed),
            bytes: s.bytes.load(Relaxed),
        }
    }

    /// The least progress (events received plus events told dropped) of any subscriber.
    pub fn min_progress(&self) -> u64 {
        self.progress.iter().map(|p| p.load(Relaxed)).min().unwrap_or(0)
    }

    /// Nanoseconds from the base instant to the last event received.
    pub fn last_event_ns(&self) -> u64 {
        self.shared.last_event_ns.load(Relaxed)
    }

    /// The first stream error (bad framing, a failed read), if any.
    pub fn first_error(&self) -> Option<String> {
        lock(&self.shared.first_error).clone()
    }

    /// The latencies recorded since the last call, merged; the threads start afresh.
    pub fn take_latencies(&self) -> Histogram<u64> {
        let mut merged = new_histogram();
        for h in &self.histograms {
            let mut h = lock(h);
            // Same bounds and precision: adding cannot fail.
            let _ = merged.add(&*h);
            h.reset();
        }
        merged
    }

    /// Stops the threads (within [`WAIT_MS`]) and closes every socket.
    pub fn stop(self) {
        self.shared.stop.store(true, Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// A histogram of microseconds from 1 µs to a minute, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read_loop(
    epoll: &Epoll,
    mut conns: Vec<Conn>,
    shared: &Shared,
    progress: &[AtomicU64],
    histogram: &Mutex<Histogram<u64>>,
    base: Instant,
    verify: bool,
) {
    let mut tokens = Vec::with_capacity(WAKE_MAX);
    let mut buf = vec![0u8; READ_BYTES];
    while !shared.stop.load(Relaxed) {
        if let Err(e) = epoll.wait(&mut tokens, WAKE_MAX, WAIT_MS) {
            lock(&shared.first_error).get_or_insert(format!("epoll_wait: {e}"));
            return;
        }
        let mut tally = Totals::default();
        let mut last_ns = 0;
        let mut hist = lock(histogram);
        for &token in &tokens {
            let conn = &mut conns[token as usize];
            let mut moved = 0;
            let mut seen = |s: Seen, now_ns: u64, conn_last: &mut u64| match s {
                Seen::Event { seq, sent_ns } => {
                    tally.events += 1;
                    moved += 1;
                    last_ns = now_ns;
                    if verify && seq <= *conn_last {
                        tally.disorder += 1;
                    }
                    *conn_last = seq;
                    if let Some(sent) = sent_ns {
                        let us = now_ns.saturating_sub(sent) / 1000;
                        hist.saturating_record(us.clamp(1, LATENCY_MAX_US));
                    }
                }
                Seen::Gap { dropped } => {
                    tally.gaps += 1;
                    tally.dropped += dropped;
                    moved += dropped;
                }
                Seen::Notice => tally.notices += 1,
            };
            match drain(conn, &mut buf, base, &mut seen) {
                Ok((bytes, closed)) => {
                    tally.bytes += bytes;
                    tally.closed += u64::from(closed);
                }
                Err(e) => {
                    lock(&shared.first_error).get_or_insert(e);
                    conn.fd = None;
                    tally.closed += 1;
                }
            }
            conn.progress += moved;
            progress[conn.index].store(conn.progress, Relaxed);
        }
        drop(hist);
        add(shared, &tally);
        shared.last_event_ns.fetch_max(last_ns, Relaxed);
    }
}

/// Reads everything `conn` has ready and scans it; returns the bytes read and whether
/// the server ended the stream.
fn drain(
    conn: &mut Conn,
    buf: &mut [u8],
    base: Instant,
    seen: &mut impl FnMut(Seen, u64, &mut u64),
) -> Result<(u64, bool), String> {
    let mut bytes = 0;
    loop {
        let Some(fd) = conn.fd.as_ref() else {
            return Ok((bytes, false));
        };
        match sys::recv(fd, buf) {
            Ok(0) => {
                conn.fd = None;
                return Ok((bytes, true));
            }
            Ok(n) => {
                bytes += n as u64;
                let now_ns = base.elapsed().as_nanos() as u64;
                let last = &mut conn.last_seq;
                conn.scan.feed(&buf[..n], &mut |s| seen(s, now_ns, last))?;
                if n < buf.len() {
                    return Ok((bytes, false));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((bytes, false)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("recv: {e}")),
        }
    }
}

fn add(shared: &Shared, t: &Totals) {
    shared.events.fetch_add(t.events, Relaxed);
    shared.gaps.fetch_add(t.gaps, Relaxed);
    shared.dropped.fetch_add(t.dropped, Relaxed);
    shared.disorder.fetch_add(t.disorder, Relaxed);
    shared.notices.fetch_add(t.notices, Relaxed);
    shared.closed.fetch_add(t.closed, Relaxed);
    shared.bytes.fetch_add(t.bytes, Relaxed);
}
