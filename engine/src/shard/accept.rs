//! Accepting connections, and admitting them.
//!
//! Without per-address limits a listener has one multishot accept, which reports no peer
//! address (on io_uring, accepting into the registered file table). With
//! `--max-conns-per-ip` or `--accept-rate-per-ip` it has [`ACCEPTS_IN_FLIGHT`] single-shot
//! accepts instead, each reporting the client's address, each re-armed as it completes:
//! the address is what admission control keys on.
//!
//! A connection admission control refuses is held in `Request` like any other (flagged
//! [`flags::REFUSED`]) until its request arrives, then answered with why (see
//! `admission`).
use super::{add, bump, pack, tag, Shard, FULL_LOG_TICKS};
use crate::admission::{Refusal, Verdict};
use crate::conn::{flags, Conn};
use crate::driver::Op;

/// Single-shot accepts kept in flight per listener when accepts carry addresses.
pub(super) const ACCEPTS_IN_FLIGHT: usize = 16;

/// One listener's accepts.
pub(super) struct Acceptor {
    /// Single-shot accepts that report addresses, rather than one multishot accept.
    with_addresses: bool,
    /// Bit `i`: accept `i` is in flight (bit 0 alone for the multishot accept).
    armed: u32,
}

impl Acceptor {
    pub(super) fn new(with_addresses: bool) -> Self {
        Acceptor {
            with_addresses,
            armed: 0,
        }
    }

    fn slots(&self) -> usize {
        if self.with_addresses {
            ACCEPTS_IN_FLIGHT
        } else {
            1
        }
    }

    pub(super) fn any_armed(&self) -> bool {
        self.armed != 0
    }
}

impl Shard {
    /// Arms every accept of every listener that is not in flight.
    pub(super) fn arm_accepts(&mut self) {
        for listener in 0..self.acceptors.len() {
            for slot in 0..self.acceptors[listener].slots() {
                if self.acceptors[listener].armed & (1 << slot) == 0 {
                    self.arm_accept(listener, slot);
                }
            }
        }
    }

    fn arm_accept(&mut self, listener: usize, slot: usize) {
        let acceptor = &mut self.acceptors[listener];
        acceptor.armed |= 1 << slot;
        let op = Op::Accept {
            listener,
            slot,
            multishot: !acceptor.with_addresses,
            peer: acceptor.with_addresses,
            data: pack(tag::ACCEPT, slot as u32, listener as u32),
        };
        self.push(op);
    }

    pub(super) fn on_accept(
        &mut self,
        listener: usize,
        slot: usize,
        res: i32,
        more: bool,
        peer: Option<u64>,
    ) {
        let acceptor = &mut self.acceptors[listener];
        let more = !acceptor.with_addresses && more;
        if !more {
            acceptor.armed &= !(1 << slot);
        }
        if res >= 0 {
            self.admit(res as u32, peer);
            if self.conns.len() >= self.max_conns && !self.shutting_down {
                // Full: accepting pauses, so the next clients wait in the listen backlog
                // rather than being accepted and closed; the tick resumes it once one
                // closes. (With io_uring the table would refuse the next one anyway.)
                bump(&self.counters.accept_full);
                self.report_full("--max-conns-per-loop reached");
                self.accept_paused = true;
                return self.stop_accepting();
            }
            if !more {
                self.arm_accept(listener, slot);
            }
            return;
        }
        match -res {
            // The file table or the process is full: the kernel has closed (ENFILE) or left
            // queued (EMFILE) the connection. Re-arming now would spin on the same error;
            // the tick resumes accepting once a slot frees up.
            libc::ENFILE | libc::EMFILE | libc::ENOMEM | libc::ENOBUFS => {
                bump(&self.counters.accept_full);
                self.report_full(&std::io::Error::from_raw_os_error(-res).to_string());
                self.accept_paused = true;
            }
            // Cancelled at shutdown.
            libc::ECANCELED => {}
            _ => {
                bump(&self.counters.accept_errors);
                if !more && !self.shutting_down {
                    self.arm_accept(listener, slot);
                }
            }
        }
    }

    /// Says, at most every `FULL_LOG_TICKS`, that accepting pauses because of `why`.
    fn report_full(&mut self, why: &str) {
        let quiet = self.tick.wrapping_sub(self.full_logged_at) < FULL_LOG_TICKS;
        if !self.accept_paused && !quiet {
            self.full_logged_at = self.tick;
            self.pause_reported = true;
            eprintln!(
                "ringcast: loop {}: cannot take more connections ({} held, {why}); new ones wait in the \
                 listen backlog until some close (see --max-conns-per-loop and RLIMIT_NOFILE)",
                self.id,
                self.conns.len(),
            );
        }
    }

    /// Takes a new connection into the slab, or closes it when the loop is full or
    /// shutting down, or its address already has too many refusals waiting.
    fn admit(&mut self, file: u32, peer: Option<u64>) {
        if self.conns.len() >= self.max_conns || self.shutting_down {
            bump(&self.counters.accept_full);
            return self.close_unadmitted(file);
        }
        let verdict = match &self.shared.admission {
            Some(a) => a.admit(peer),
            None => Verdict::Admit,
        };
        if verdict == Verdict::Drop {
            bump(&self.counters.admission_dropped);
            return self.close_unadmitted(file);
        }
        self.generation = self.generation.wrapping_add(1) & crate::driver::tag::GENERATION_MASK;
        let index = self.conns.insert(Conn::new(file, self.generation, self.tick)) as u32;
        if let Some(keys) = &mut self.peer_keys {
            keys[index as usize] = peer.unwrap_or(0);
        }
        if let Verdict::Refuse(why) = verdict {
            self.conns[index as usize].flags |= flags::REFUSED;
            self.refusals.insert(index, why);
            bump(match why {
                Refusal::PerIp => &self.counters.admission_per_ip,
                Refusal::Rate { .. } => &self.counters.admission_rate,
                Refusal::Shed => &self.counters.admission_shed,
            });
        }
        self.arm_timer(index, self.tick.wrapping_add(self.deadlines.request));
        bump(&self.counters.accepted);
        add(&self.counters.open, 1);
        // Not idle yet: the first sweep after the accept leaves it armed.
        self.park.heard(index);
        self.arm_recv(index);
    }

    fn close_unadmitted(&mut self, file: u32) {
        self.push(Op::Close {
            file,
            data: pack(tag::CLOSE, 0, u32::MAX),
        });
    }

    /// Hands a freed connection back to admission control.
    pub(super) fn release_admission(&mut self, index: u32, refused: bool) {
        let Some(a) = &self.shared.admission else {
            return;
        };
        let peer = self
            .peer_keys
            .as_ref()
            .map(|keys| keys[index as usize])
            .filter(|&k| k != 0);
        a.release(peer, !refused);
        self.refusals.remove(&index);
    }

    /// Cancels the accepts in flight; the listeners close with the loop.
    pub(super) fn stop_accepting(&mut self) {
        for listener in 0..self.acceptors.len() {
            if self.acceptors[listener].any_armed() {
                self.push(Op::CancelAccepts {
                    listener,
                    data: pack(tag::CANCEL, 0, u32::MAX),
                });
            }
        }
    }
}
