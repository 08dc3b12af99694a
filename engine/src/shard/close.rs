//! Closing: linger, close, the transport gauges and freeing a slot once the last op is done.

use crate::conn::{flags, ops, State};
use crate::driver::Op;
use crate::proto::Kind;

use super::{add, pack, tag, Shard};

impl Shard {
    /// Shuts our side down and waits (bounded) for the peer's EOF, so that a final answer
    /// is read rather than lost to a reset caused by unread input.
    pub(super) fn linger(&mut self, index: u32) {
        let until = self.tick.wrapping_add(self.deadlines.linger);
        let conn = &mut self.conns[index as usize];
        conn.state = State::Lingering;
        conn.mark = until;
        conn.ops |= ops::SHUTDOWN;
        let op = Op::Shutdown {
            file: conn.file,
            data: pack(tag::SHUTDOWN, conn.generation, index),
        };
        self.push(op);
        self.arm_timer(index, until);
    }

    /// Starts closing: unsubscribes, cancels whatever the kernel holds for the connection,
    /// and closes its direct descriptor. The record is freed when the last op completes.
    pub(super) fn close(&mut self, index: u32) {
        let Some(conn) = self.conns.get_mut(index as usize) else {
            return;
        };
        if conn.state == State::Closing {
            return;
        }
        // Out of its gauge while its state still says which one.
        self.count_open(index, -1);
        let conn = &mut self.conns[index as usize];
        conn.state = State::Closing;
        conn.staging = None;
        let (file, generation) = (conn.file, conn.generation);
        // A cancel by descriptor makes the kernel walk every request of the ring, so a
        // storm of closes would cost the square of the connections: a peer that closed
        // first has ended its receive, and with nothing in flight there is nothing to
        // cancel.
        let in_flight = conn.ops != 0;
        if in_flight {
            conn.ops |= ops::CANCEL;
        }
        self.wheel.remove(index);
        self.end_catchup(index);
        self.poll_topics.remove(&index);
        self.sessions.clear(index);
        self.decoders.remove(&index);
        self.ws_buckets.remove(&index);
        self.ws_subs.remove(&index);
        self.poll_cors.remove(&index);
        self.subs.remove_all(&mut self.conns, index);
        // The direct descriptor itself is closed only once nothing of ours is in flight
        // on it (see `maybe_free`): an op the kernel runs later from its worker pool, such
        // as a shutdown, looks the slot up when it runs, and by then a freed slot may
        // hold the next accepted connection.
        if in_flight {
            self.push(Op::Cancel {
                file,
                data: pack(tag::CANCEL, generation, index),
            });
        } else {
            self.maybe_free(index);
        }
    }

    /// Moves connection `index` into (`+1`) or out of (`-1`) its transport's gauge; a
    /// connection is counted at most once.
    pub(super) fn count_open(&mut self, index: u32, delta: i64) {
        let conn = &mut self.conns[index as usize];
        let counted = conn.has_flag(flags::COUNTED);
        if (delta > 0) == counted {
            return;
        }
        conn.flags ^= flags::COUNTED;
        let gauge = match (conn.state, conn.kind) {
            (State::Poll, _) => &self.counters.polls_held,
            (_, Kind::Ndjson) => &self.counters.open_ndjson,
            (_, k) if k.is_ws() => &self.counters.open_ws,
            _ => &self.counters.open_sse,
        };
        add(gauge, delta);
    }

    pub(super) fn op_done(&mut self, index: u32, generation: u32, op: u8) {
        if !self.live(index, generation) {
            return;
        }
        self.conns[index as usize].ops &= !op;
        self.maybe_free(index);
    }

    /// Once a closing connection has no op in flight, closes its direct descriptor; once
    /// that close completes, frees the record.
    pub(super) fn maybe_free(&mut self, index: u32) {
        let conn = &mut self.conns[index as usize];
        if conn.state != State::Closing || conn.ops != 0 {
            return;
        }
        if !conn.has_flag(flags::CLOSED) {
            conn.flags |= flags::CLOSED;
            conn.ops |= ops::CLOSE;
            let op = Op::Close {
                file: conn.file,
                data: pack(tag::CLOSE, conn.generation, index),
            };
            self.push(op);
            return;
        }
        let conn = self.conns.remove(index as usize);
        add(&self.counters.open, -1);
        self.release_admission(index, conn.has_flag(flags::REFUSED));
        if let Some(mut out) = conn.out {
            self.queued -= out.bytes() as i64;
            super::stream::count_depth(&mut self.deep, &mut out, false);
            self.pool.give(out);
        }
    }
}
