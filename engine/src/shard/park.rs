//! Parking idle receives: a connection that has received nothing for a period trades its
//! armed multishot receive for a one-shot poll on its input, and gets its receive back
//! when the poll reports input (or EOF, or an error).
//!
//! An armed multishot receive holds its request and the request's async state in the
//! kernel; a poll holds only the request, about 0.6 KB less per connection (see
//! bench/RESULTS.md, "Kernel memory per idle connection"). Nothing else changes for a
//! parked connection: sends, heartbeats, pings and timers run as before, and bytes that
//! arrive while the receive is being cancelled stay in the socket for the receive armed
//! after the poll.
//!
//! ```text
//!   Recv armed --(a period without input: cancel it)--> Cancelling
//!   Cancelling --(receive ends: -ECANCELED, ENOBUFS, more bytes)--> Poll armed
//!   Poll armed --(readable, EOF or error)--> Recv armed
//!   any --(close: cancel every op)--> the final completions free the record
//! ```
//!
//! Each sweep (once a period) walks the slots over the next ticks, `SCAN_BATCH` slots and
//! at most `PARK_BATCH` parks a tick, and parks the connections that received no byte in
//! the period before the sweep nor since: a connection is parked after between one and
//! two periods of silence (and the ticks the walk takes to reach it). Three bits per
//! connection slot, no list and no kernel timer; the loop never parks on epoll, whose
//! idle connections hold no armed receive.
//!
//! Must never: park a connection twice, or re-arm a receive beside a poll.
use super::{bump, pack, tag, Shard};

use crate::conn::{ops, State};
use crate::driver::Op;

/// Receives parked per tick at most. io_uring keeps every request it frees for reuse, so
/// the cancels in flight at once stay allocated as the ring's spare requests (256 bytes
/// each); in batches they are a few hundred, not one per connection.
const PARK_BATCH: usize = 512;
/// Slots a sweep looks at per tick at most, so that a sweep over a full table is spread
/// over a few ticks rather than held in one.
const SCAN_BATCH: u32 = 8192;

/// One bit per connection slot.
pub(super) struct Bits(Vec<u64>);

impl Bits {
    fn new(slots: usize) -> Bits {
        Bits(vec![0; slots.div_ceil(64)])
    }

    fn set(&mut self, index: u32) {
        if let Some(w) = self.0.get_mut(index as usize / 64) {
            *w |= 1 << (index % 64);
        }
    }

    fn get(&self, index: u32) -> bool {
        self.0
            .get(index as usize / 64)
            .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }

    /// Clears the bit and says whether it was set.
    fn take(&mut self, index: u32) -> bool {
        let was = self.get(index);
        if let Some(w) = self.0.get_mut(index as usize / 64) {
            *w &= !(1 << (index % 64));
        }
        was
    }

    fn clear_all(&mut self) {
        self.0.fill(0);
    }
}

/// A loop's parking state.
pub(super) struct Park {
    /// Ticks between sweeps; 0: never park.
    period: u32,
    /// The tick of the last sweep.
    swept_at: u32,
    /// Slots whose connection received bytes (or was accepted) since the last sweep.
    heard: Bits,
    /// Slots whose connection received bytes (or was accepted) in the period before the
    /// last sweep.
    heard_before: Bits,
    /// Slots whose input waits on a poll, or whose receive is being cancelled for one.
    parked: Bits,
    /// The next slot the sweep in progress looks at; `None` between sweeps.
    cursor: Option<u32>,
}

impl Park {
    /// Parking for `slots` connection slots, sweeping every `period` ticks (0: never).
    pub(super) fn new(slots: usize, period: u32) -> Park {
        let slots = if period == 0 { 0 } else { slots };
        Park {
            period,
            swept_at: 0,
            heard: Bits::new(slots),
            heard_before: Bits::new(slots),
            parked: Bits::new(slots),
            cursor: None,
        }
    }

    /// Connection `index` received bytes, or was just accepted.
    pub(super) fn heard(&mut self, index: u32) {
        self.heard.set(index);
    }

    /// Whether connection `index`'s input waits on a poll (or its receive is being
    /// cancelled for one).
    pub(super) fn is_parked(&self, index: u32) -> bool {
        self.parked.get(index)
    }
}

impl Shard {
    /// Once a period a sweep starts; each tick it walks at most `SCAN_BATCH` slots and
    /// parks at most `PARK_BATCH` connections: those with a receive armed that received
    /// nothing in the period before the sweep nor since.
    pub(super) fn sweep_idle_receives(&mut self) {
        let park = &mut self.park;
        if park.period == 0 {
            return;
        }
        if park.cursor.is_none() && self.tick.wrapping_sub(park.swept_at) >= park.period {
            park.swept_at = self.tick;
            std::mem::swap(&mut park.heard, &mut park.heard_before);
            park.heard.clear_all();
            park.cursor = Some(0);
        }
        let Some(mut slot) = park.cursor else {
            return;
        };
        let end = (self.max_conns as u32).min(slot.saturating_add(SCAN_BATCH));
        let mut parked = 0;
        while slot < end && parked < PARK_BATCH {
            if self
                .conns
                .get(slot as usize)
                .is_some_and(|c| self.may_park(slot, c))
            {
                self.park_receive(slot);
                parked += 1;
            }
            slot += 1;
        }
        self.park.cursor = (slot < self.max_conns as u32).then_some(slot);
    }

    fn may_park(&self, index: u32, conn: &crate::conn::Conn) -> bool {
        let open = matches!(
            conn.state,
            State::Request | State::Stream | State::Ws | State::Poll
        );
        let p = &self.park;
        open && conn.has_op(ops::RECV)
            && !p.heard.get(index)
            && !p.heard_before.get(index)
            && !p.parked.get(index)
    }

    /// Cancels connection `index`'s receive; its final completion arms the poll (see
    /// `rearm_or_finish`).
    fn park_receive(&mut self, index: u32) {
        self.park.parked.set(index);
        bump(&self.counters.recv_parked);
        let conn = &self.conns[index as usize];
        let op = Op::CancelOp {
            file: conn.file,
            op: pack(tag::RECV, conn.generation, index),
            data: pack(tag::PARK, conn.generation, index),
        };
        self.push(op);
    }

    /// Arms a poll on connection `index`'s input in place of its receive.
    pub(super) fn arm_poll(&mut self, index: u32) {
        self.park.parked.set(index);
        let conn = &mut self.conns[index as usize];
        conn.ops |= ops::RECV;
        let op = Op::PollIn {
            file: conn.file,
            data: pack(tag::POLL, conn.generation, index),
        };
        self.push(op);
    }

    /// Clears connection `index`'s parked bit; true when it was set (see
    /// `rearm_or_finish`, which arms the poll or the receive from it).
    pub(super) fn unpark(&mut self, index: u32) -> bool {
        self.park.parked.take(index)
    }

    /// The poll of a parked connection completed: input, EOF or an error is waiting, so
    /// its receive is armed again to read it (or the close's cancel ended the poll).
    pub(super) fn on_poll(&mut self, index: u32, generation: u32, res: i32) {
        if !self.live(index, generation) {
            return;
        }
        self.conns[index as usize].ops &= !ops::RECV;
        self.unpark(index);
        if res > 0 {
            bump(&self.counters.recv_unparked);
        } else if res != -libc::ECANCELED {
            // The poll itself failed: the descriptor is unusable.
            self.close(index);
        }
        self.rearm_or_finish(index);
    }
}

#[cfg(test)]
mod tests {
    use super::Bits;

    #[test]
    fn bits_set_read_and_clear_at_every_word_edge() {
        let mut b = Bits::new(130);
        for i in [0, 1, 63, 64, 65, 127, 128, 129] {
            assert!(!b.get(i));
            b.set(i);
            assert!(b.get(i), "{i}");
        }
        assert!(!b.get(2) && !b.get(62) && !b.get(126));
        assert!(b.take(64) && !b.take(64) && !b.get(64));
        assert!(b.get(63) && b.get(65));
        b.clear_all();
        assert!((0..130).all(|i| !b.get(i)));
        // Past the slots: ignored, never set.
        b.set(4096);
        assert!(!b.get(4096));
    }
}
