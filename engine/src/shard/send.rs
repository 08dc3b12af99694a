//! Sending: a connection's out-queue, gathered sends, their completions and overflow.

use bytes::Bytes;

use crate::conn::{flags, ops, OutQueue, State};
use crate::driver::Op;
use crate::proto::ws;

use super::{bump, pack, tag, Shard, Static, OUT_QUEUE_POOL_MAX};

impl Shard {
    /// Queues control bytes for connection `index`. Every byte queued for a client counts
    /// against its cap (`--out-queue-bytes-max`), whatever the client did to cause it: a
    /// client that would exceed it is failed instead (see [`Shard::overflow`]) and false
    /// is returned, after which the caller must leave the connection alone.
    #[must_use]
    pub(super) fn enqueue(&mut self, index: u32, bytes: Bytes) -> bool {
        let conn = &mut self.conns[index as usize];
        if conn.queued_bytes() + bytes.len() > self.shared.config.out_queue_bytes_max {
            self.overflow(index);
            return false;
        }
        let out = conn.out.get_or_insert_with(|| self.pool.take());
        self.queued += bytes.len() as i64;
        out.push(bytes);
        true
    }

    /// Queues control bytes and sends them.
    pub(super) fn send_control(&mut self, index: u32, bytes: Bytes) {
        if self.enqueue(index, bytes) {
            self.flush(index);
        }
    }

    /// Queues a connection's last bytes: once they are sent, it closes.
    pub(super) fn send_final(&mut self, index: u32, bytes: Bytes) {
        if self.enqueue(index, bytes) {
            self.conns[index as usize].state = State::Draining;
            self.flush(index);
        }
    }

    /// A client's unsent bytes would exceed its cap: everything not yet handed to the
    /// kernel is dropped, and a WebSocket is closed with 1008 (RFC 6455 §7.4.1, policy),
    /// any other connection at once. The write-stall deadline reaps a WebSocket that
    /// does not read its close frame either.
    pub(super) fn overflow(&mut self, index: u32) {
        bump(&self.counters.slow_closed);
        self.queued_peak = self.queued_peak.max(self.queued);
        let conn = &mut self.conns[index as usize];
        if conn.state != State::Ws {
            return self.close(index);
        }
        if let Some(out) = conn.out.as_mut() {
            self.queued -= out.truncate_unsent() as i64;
        }
        self.end_catchup(index);
        let mut frame = Vec::with_capacity(32);
        ws::encode_close(&mut frame, ws::close::POLICY, "send queue limit exceeded");
        let conn = &mut self.conns[index as usize];
        let out = conn.out.get_or_insert_with(|| self.pool.take());
        self.queued += frame.len() as i64;
        out.push(Bytes::from(frame));
        conn.state = State::Draining;
        self.flush(index);
    }

    pub(super) fn flush(&mut self, index: u32) {
        let conn = &mut self.conns[index as usize];
        if conn.has_op(ops::SEND) || conn.state == State::Closing {
            return;
        }
        let Some(out) = conn.out.as_mut() else {
            return;
        };
        if out.has_gaps() {
            self.tell_gaps(index);
        }
        let conn = &mut self.conns[index as usize];
        let Some(out) = conn.out.as_mut() else {
            return;
        };
        if out.is_empty() {
            return;
        }
        let data = pack(tag::SEND, conn.generation, index);
        let op = match out.prepare_single() {
            Some((buf, len)) => Op::Send {
                file: conn.file,
                buf,
                len,
                data,
            },
            None => Op::SendMsg {
                file: conn.file,
                msg: out.prepare(),
                data,
            },
        };
        conn.ops |= ops::SEND;
        self.sending += 1;
        bump(&self.counters.sends);
        self.push(op);
        // A write-stall deadline applies while bytes are unsent.
        self.arm_earlier(index);
    }

    pub(super) fn on_send(&mut self, index: u32, generation: u32, res: i32) {
        if !self.live(index, generation) {
            return;
        }
        self.sending -= 1;
        let conn = &mut self.conns[index as usize];
        let direct = if conn.has_op(ops::SEND_HEAD) {
            Some(Static::Head)
        } else if conn.has_op(ops::SEND_BEAT) {
            Some(Static::Beat)
        } else if conn.has_op(ops::SEND_PING) {
            Some(Static::Ping)
        } else {
            None
        };
        conn.ops &= !(ops::SEND | ops::SEND_HEAD | ops::SEND_BEAT | ops::SEND_PING);
        if conn.state == State::Closing {
            self.maybe_free(index);
            return;
        }
        if res <= 0 {
            if res == -libc::ETIMEDOUT {
                bump(&self.counters.tcp_timeouts);
            }
            self.close(index);
            return;
        }
        conn.last_io = self.tick;
        if let Some(which) = direct {
            let rest = self.static_bytes(index, which).slice(res as usize..);
            if !rest.is_empty() {
                // Rare: a short send. The rest goes ahead of anything queued meanwhile.
                let conn = &mut self.conns[index as usize];
                let out = conn.out.get_or_insert_with(|| self.pool.take());
                self.queued += rest.len() as i64;
                out.push_front(rest);
            }
            self.flush(index);
            return;
        }
        let conn = &mut self.conns[index as usize];
        let out = conn.out.as_mut().expect("a send completed, so a queue exists");
        out.sent(res as usize);
        self.queued -= i64::from(res);
        self.note_depth(index);
        let conn = &mut self.conns[index as usize];
        if conn.has_flag(flags::CATCHING_UP) {
            self.next_page(index);
            if self.conns[index as usize].state == State::Closing {
                return;
            }
        }
        let conn = &mut self.conns[index as usize];
        let Some(out) = conn.out.as_mut() else {
            return;
        };
        if !out.is_empty() {
            self.flush(index);
            return;
        }
        if out.has_gaps() {
            // Events were refused while everything queued was in flight: the client still
            // has to hear of them, so the queue stays to carry the notice.
            self.flush(index);
            return;
        }
        let out = conn.out.take().expect("checked above");
        self.pool.give(out);
        if conn.state == State::Draining {
            self.linger(index);
        }
    }
}

/// Out-queues kept for reuse, so that a burst of sends does not allocate per connection.
/// They are boxed so that their `msghdr` keeps its address while a send is in flight.
/// What no turn needed for a while is handed back (see [`QueuePool::trim`]): after a
/// burst, an idle loop keeps `OUT_QUEUE_POOL_IDLE` of them.
#[derive(Default)]
pub(super) struct QueuePool {
    #[allow(clippy::vec_box)]
    free: Vec<Box<OutQueue>>,
    /// The fewest queues `free` held since the last trim.
    low: usize,
}

impl QueuePool {
    /// A queue from the pool, or a new one.
    pub(super) fn take(&mut self) -> Box<OutQueue> {
        let queue = self.free.pop().unwrap_or_default();
        self.low = self.low.min(self.free.len());
        queue
    }

    /// Keeps an emptied queue for reuse, up to `OUT_QUEUE_POOL_MAX`.
    pub(super) fn give(&mut self, mut queue: Box<OutQueue>) {
        debug_assert!(!queue.deep, "a deep queue is uncounted before it is pooled");
        if self.free.len() < OUT_QUEUE_POOL_MAX {
            queue.clear();
            self.free.push(queue);
        }
    }

    /// Frees the queues that stayed unused since the last trim, beyond `keep`, the least
    /// recently used first; returns how many.
    pub(super) fn trim(&mut self, keep: usize) -> usize {
        let spare = self.low.saturating_sub(keep).min(self.free.len());
        self.free.drain(..spare);
        self.low = self.free.len();
        spare
    }

    /// Queues held for reuse.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_frees_what_went_unused_since_its_last_trim_beyond_what_it_keeps() {
        let mut pool = QueuePool::default();
        // A burst: 100 queues at once, all given back.
        let burst: Vec<_> = (0..100).map(|_| pool.take()).collect();
        burst.into_iter().for_each(|q| pool.give(q));
        assert_eq!(pool.len(), 100);
        assert_eq!(pool.trim(10), 0, "the burst needed all of them");
        // Then 30 at a time: 70 go unused, of which all but 10 are freed.
        for _ in 0..3 {
            let some: Vec<_> = (0..30).map(|_| pool.take()).collect();
            some.into_iter().for_each(|q| pool.give(q));
        }
        assert_eq!(pool.trim(10), 60);
        assert_eq!(pool.len(), 40);
        assert_eq!(pool.trim(10), 30, "idle: down to what it keeps");
        assert_eq!(pool.trim(10), 0);
        assert_eq!(pool.len(), 10);
    }
}
