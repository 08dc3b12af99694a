//! Graceful drain at shutdown. Once the ingest thread has stopped (everything it
//! acknowledged is in the broadcast ring), each loop stops accepting and closes its
//! connections paced evenly across `--drain-ms`, so that a fleet of clients does not come
//! back in one wave: SSE streams get a `retry:` jittered over the window and then end,
//! NDJSON streams end, WebSockets close with 1012 (service restart), held long-polls are
//! answered, idle keep-alive connections close. Events already queued go out first: the
//! goodbye is queued behind them.
use bytes::Bytes;

use super::Shard;
use crate::conn::{flags, State};
use crate::proto::Kind;
use crate::proto::{sse, ws};

/// How far a loop is through its drain.
pub(super) struct Drain {
    since: u32,
    window: u32,
    total: usize,
    closed: usize,
    /// The next slab index to look at for a connection to close.
    cursor: usize,
    /// xorshift state for the retry jitter.
    rng: u64,
}

/// Ticks a loop waits, after its window, for goodbyes to slow clients to go out.
const GRACE_TICKS: u32 = 50;

impl Shard {
    /// One drain step per tick; true when the loop is done and may exit.
    pub(super) fn drain_step(&mut self) -> bool {
        if self.drain.is_none() {
            self.stop_accepting();
            self.drain = Some(Drain {
                since: self.tick,
                window: self
                    .clock
                    .ticks_in(std::time::Duration::from_millis(self.shared.config.drain_ms)),
                total: self.conns.len(),
                closed: 0,
                cursor: 0,
                rng: 0x9e37_79b9_7f4a_7c15 ^ (self.id as u64 + 1),
            });
        }
        let d = self.drain.as_ref().expect("set above");
        let elapsed = self.tick.wrapping_sub(d.since);
        let target = if elapsed >= d.window {
            d.total
        } else {
            // Spread over the window: by tick t, t/window of them are closed.
            (d.total as u64 * u64::from(elapsed + 1) / u64::from(d.window.max(1))) as usize
        };
        while self.drain.as_ref().is_some_and(|d| d.closed < target) {
            let Some(index) = self.next_to_drain() else {
                break;
            };
            self.say_goodbye(index);
            self.drain.as_mut().expect("draining").closed += 1;
        }
        let d = self.drain.as_ref().expect("draining");
        self.conns.is_empty() || elapsed > d.window.saturating_add(GRACE_TICKS)
    }

    /// The next connection that has not been told to go, by slab order.
    fn next_to_drain(&mut self) -> Option<u32> {
        let d = self.drain.as_mut()?;
        while d.cursor < self.conns.capacity() {
            let index = d.cursor;
            d.cursor += 1;
            if let Some(c) = self.conns.get(index) {
                if matches!(c.state, State::Request | State::Stream | State::Ws | State::Poll) {
                    return Some(index as u32);
                }
            }
        }
        None
    }

    fn say_goodbye(&mut self, index: u32) {
        let (state, kind) = (self.conns[index as usize].state, self.conns[index as usize].kind);
        match (state, kind) {
            (State::Request, _) => self.close(index),
            (State::Poll, _) => {
                self.conns[index as usize].flags &= !flags::KEEP_ALIVE;
                self.poll_timeout(index);
            }
            (State::Ws, _) => {
                let mut frame = Vec::new();
                ws::encode_close(&mut frame, ws::close::RESTART, "server restarting");
                self.end_stream(index, Bytes::from(frame));
            }
            (_, Kind::Sse | Kind::Sse10) => {
                let retry = self.jittered_retry_ms();
                let mut body = Vec::new();
                sse::encode_retry(&mut body, retry);
                let mut bytes = Vec::new();
                if kind == Kind::Sse {
                    sse::encode_chunk(&mut bytes, &body);
                    bytes.extend_from_slice(sse::CHUNKED_END);
                } else {
                    bytes = body;
                }
                self.end_stream(index, Bytes::from(bytes));
            }
            (_, _) => self.end_stream(index, Bytes::from_static(sse::CHUNKED_END)),
        }
    }

    pub(super) fn end_stream(&mut self, index: u32, goodbye: Bytes) {
        self.subs.remove_all(&mut self.conns, index);
        self.end_catchup(index);
        self.send_final(index, goodbye);
    }

    /// A reconnection delay spread over the drain window, so clients told at the same
    /// moment do not all come back at the same moment either.
    fn jittered_retry_ms(&mut self) -> u32 {
        let base = self.shared.config.retry_ms;
        let window = self.shared.config.drain_ms.max(1);
        let d = self.drain.as_mut().expect("draining");
        d.rng ^= d.rng << 13;
        d.rng ^= d.rng >> 7;
        d.rng ^= d.rng << 17;
        base.saturating_add((d.rng % window) as u32)
    }
}
