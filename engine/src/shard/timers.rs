//! A loop's connection deadlines, on one hashed timer wheel (see [`crate::time`]).
//!
//! Every open connection has exactly one timer, keyed by its slab index: 12 bytes, no
//! kernel timeout. Activity never touches the wheel; it only stores `last_io` (or `mark`)
//! in the connection. When the timer fires, [`Shard::on_timer`] looks at the state and
//! those ticks and either acts (a heartbeat, a 408, a reap) or re-arms at the next
//! deadline that now applies: the lazy re-arm of DESIGN.md §4.
//!
//! | state | deadline | action |
//! |---|---|---|
//! | `Request`, head partly read | `mark + request_timeout` | 408, close (slowloris) |
//! | `Request`, nothing asked yet | `mark + request_timeout` | 408, close |
//! | `Request`, idle after a response | `last_io + keepalive_idle` | close |
//! | `Stream`, bytes unsent | `last_io + write_stall` | reap (stalled) |
//! | `Stream`, nothing sent lately | `last_io + heartbeat` | send `:` comment |
//! | `Draining` | `last_io + write_stall` | reap (stalled) |
//! | `Lingering` | `mark` | close |
//!
//! Ticks are 100 ms: every deadline here is a second or more, so the one coarse wheel is
//! precise enough, and a finer one would cost each connection another 12-byte link.
use std::time::Duration;

use bytes::Bytes;

use super::{bump, pack, tag, Shard};
use crate::config::Config;
use crate::conn::{flags, ops, Conn, State};
use crate::driver::Op;
use crate::proto::Kind;
use crate::time::{is_due, Clock};

/// The earlier of two deadlines in wrapping tick arithmetic.
trait MinWrapping {
    fn min_wrapping(self, other: u32) -> u32;
}

impl MinWrapping for u32 {
    fn min_wrapping(self, other: u32) -> u32 {
        if is_due(self, other) {
            self
        } else {
            other
        }
    }
}

/// How long a closing connection waits for the peer's EOF after our final answer.
const LINGER: Duration = Duration::from_secs(2);

/// The configured deadlines, in ticks of the loop's clock.
#[derive(Clone, Copy)]
pub(super) struct Deadlines {
    /// 0: heartbeats off.
    pub heartbeat: u32,
    pub write_stall: u32,
    pub request: u32,
    pub keepalive_idle: u32,
    pub linger: u32,
    pub ws_ping: u32,
    pub ws_pong_timeout: u32,
}

impl Deadlines {
    pub fn new(cfg: &Config, clock: &Clock) -> Self {
        // One tick more than the rounded-up length: a deadline armed late in a tick would
        // otherwise fire up to a tick early (see `Clock`). Timers fire up to a tick late.
        let ticks = |ms: u64| clock.ticks_in(Duration::from_millis(ms)) + 1;
        Deadlines {
            heartbeat: if cfg.heartbeat_ms == 0 {
                0
            } else {
                ticks(cfg.heartbeat_ms)
            },
            write_stall: ticks(cfg.write_stall_ms),
            request: ticks(cfg.request_timeout_ms),
            keepalive_idle: ticks(cfg.keepalive_idle_ms),
            linger: clock.ticks_in(LINGER) + 1,
            ws_ping: ticks(cfg.ws_ping_ms),
            ws_pong_timeout: ticks(cfg.ws_pong_timeout_ms),
        }
    }
}

/// The earliest deadline that applies to `conn` in its state, due or not; `None` when
/// none does (a connection closing, or draining with nothing left to send).
fn deadline_of(conn: &Conn, d: &Deadlines, now: u32) -> Option<u32> {
    let busy = conn.has_op(ops::SEND) || conn.queued_bytes() > 0;
    let stall = conn.last_io.wrapping_add(d.write_stall);
    match conn.state {
        State::Request if conn.staging.is_some() || !conn.has_flag(flags::SERVED) => {
            Some(conn.mark.wrapping_add(d.request))
        }
        State::Request => Some(conn.last_io.wrapping_add(d.keepalive_idle)),
        State::Stream if busy && d.heartbeat > 0 => {
            // Once the backlog drains the next heartbeat is due a heartbeat after it.
            Some(stall.min_wrapping(now.wrapping_add(d.heartbeat)))
        }
        State::Stream | State::Draining if busy => Some(stall),
        State::Stream if d.heartbeat > 0 => Some(conn.last_io.wrapping_add(d.heartbeat)),
        State::Stream => Some(now.wrapping_add(d.write_stall)),
        State::Ws => {
            let ping = conn.mark.wrapping_add(d.ws_ping);
            let next = if conn.has_flag(flags::PINGED) {
                ping.wrapping_add(d.ws_pong_timeout)
            } else {
                ping
            };
            Some(if busy { next.min_wrapping(stall) } else { next })
        }
        State::Poll | State::Lingering => Some(conn.mark),
        State::Draining | State::Closing => None,
    }
}

/// A comment line that carries nothing but keeps a stream's bytes moving (WHATWG HTML
/// §9.2.6: lines starting with a colon are ignored).
pub(super) const HEARTBEAT: &[u8] = b":\n\n";
/// The same as one HTTP/1.1 chunk.
pub(super) const HEARTBEAT_CHUNK: &[u8] = b"3\r\n:\n\n\r\n";

/// The NDJSON heartbeat line, `{"event":"ringcast.heartbeat"}`, as one HTTP/1.1 chunk.
pub(super) const NDJSON_HEARTBEAT_CHUNK: &[u8] = b"1f\r\n{\"event\":\"ringcast.heartbeat\"}\n\r\n";

/// A WebSocket ping with no payload (RFC 6455 §5.5.2).
pub(super) const PING: &[u8] = &[0x89, 0x00];

/// Which of the loop's shared byte strings a direct send (no out-queue) carries.
#[derive(Clone, Copy)]
pub(super) enum Static {
    Head,
    Beat,
    Ping,
}

impl Shard {
    /// Runs every timer due by the clock's current tick.
    pub(super) fn run_timers(&mut self) {
        let mut due = std::mem::take(&mut self.due);
        self.wheel.advance(self.tick, &mut due);
        for &index in &due {
            self.on_timer(index);
        }
        due.clear();
        self.due = due;
    }

    /// Arms connection `index`'s timer at `deadline`.
    pub(super) fn arm_timer(&mut self, index: u32, deadline: u32) {
        self.wheel.insert(index, deadline);
    }

    /// Arms connection `index`'s timer at the deadline that now applies, if that is
    /// earlier than the one armed: called where an earlier deadline may start to apply
    /// (a response sent, a new request begun, a send started, a stream opened).
    pub(super) fn arm_earlier(&mut self, index: u32) {
        let Some(conn) = self.conns.get(index as usize) else {
            return;
        };
        let Some(next) = self.next_deadline(index, conn) else {
            return;
        };
        match self.wheel.deadline(index) {
            Some(armed) if !is_due(next, armed) || next == armed => {}
            _ => self.arm_timer(index, next),
        }
    }

    /// The earliest deadline that applies to connection `index`: its state's, or its
    /// token's expiry.
    fn next_deadline(&self, index: u32, conn: &Conn) -> Option<u32> {
        let own = deadline_of(conn, &self.deadlines, self.tick);
        match (own, self.session_deadline(index)) {
            (Some(a), Some(b)) => Some(a.min_wrapping(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_timer(&mut self, index: u32) {
        if self.expire_session(index) {
            if let Some(next) = self
                .conns
                .get(index as usize)
                .and_then(|c| self.next_deadline(index, c))
            {
                self.arm_timer(index, next);
            }
            return;
        }
        let Some(conn) = self.conns.get(index as usize) else {
            return;
        };
        let now = self.tick;
        let d = self.deadlines;
        let busy = conn.has_op(ops::SEND) || conn.queued_bytes() > 0;
        match conn.state {
            State::Request => {
                if conn.staging.is_some() || !conn.has_flag(flags::SERVED) {
                    if is_due(conn.mark.wrapping_add(d.request), now) {
                        bump(&self.counters.request_timeouts);
                        return self.respond(index, 408, "request head not received in time", false, &[]);
                    }
                } else if is_due(conn.last_io.wrapping_add(d.keepalive_idle), now) {
                    bump(&self.counters.idle_closed);
                    return self.close(index);
                }
            }
            State::Stream | State::Draining | State::Ws
                if busy && is_due(conn.last_io.wrapping_add(d.write_stall), now) =>
            {
                bump(&self.counters.stalled);
                return self.close(index);
            }
            State::Stream => {
                if !busy && d.heartbeat > 0 && is_due(conn.last_io.wrapping_add(d.heartbeat), now) {
                    bump(&self.counters.heartbeats);
                    self.send_static(index, Static::Beat);
                }
            }
            State::Ws => {
                let ping = conn.mark.wrapping_add(d.ws_ping);
                if conn.has_flag(flags::PINGED) {
                    // No frame since the ping (any frame clears the flag). The ping left
                    // at or after `ping`, so this is the earliest the pong was due.
                    if is_due(ping.wrapping_add(d.ws_pong_timeout), now) {
                        bump(&self.counters.ws_pong_timeouts);
                        return self.close(index);
                    }
                } else if is_due(ping, now) {
                    bump(&self.counters.ws_pings);
                    self.conns[index as usize].flags |= flags::PINGED;
                    self.send_static(index, Static::Ping);
                }
            }
            State::Poll => {
                if is_due(conn.mark, now) {
                    return self.poll_timeout(index);
                }
            }
            State::Lingering => {
                if is_due(conn.mark, now) {
                    return self.close(index);
                }
            }
            State::Draining | State::Closing => {}
        }
        if let Some(next) = self
            .conns
            .get(index as usize)
            .and_then(|c| self.next_deadline(index, c))
        {
            self.arm_timer(index, next);
        }
    }

    /// Sends one of the loop's shared byte strings straight from its `Bytes`, which live
    /// as long as the loop, so neither opening an idle stream nor keeping it alive needs an
    /// out-queue. Falls back to the queue when something is queued or in flight.
    pub(super) fn send_static(&mut self, index: u32, which: Static) {
        let bytes = self.static_bytes(index, which);
        let conn = &mut self.conns[index as usize];
        if conn.has_op(ops::SEND) || conn.out.is_some() {
            return self.send_control(index, bytes);
        }
        conn.ops |= ops::SEND
            | match which {
                Static::Head => ops::SEND_HEAD,
                Static::Beat => ops::SEND_BEAT,
                Static::Ping => ops::SEND_PING,
            };
        self.sending += 1;
        super::bump(&self.counters.sends);
        let op = Op::Send {
            file: conn.file,
            buf: bytes.as_ptr(),
            len: bytes.len() as u32,
            data: pack(tag::SEND, conn.generation, index),
        };
        self.push(op);
    }

    /// The shared bytes `which` in the framing connection `index` uses.
    pub(super) fn static_bytes(&self, index: u32, which: Static) -> Bytes {
        self.static_bytes_for(self.conns[index as usize].kind, which)
    }

    /// The shared bytes `which` in the framing of `kind`.
    pub(super) fn static_bytes_for(&self, kind: Kind, which: Static) -> Bytes {
        match (which, kind) {
            (Static::Head, Kind::Sse) => self.stream_head.clone(),
            (Static::Head, Kind::Ndjson) => self.ndjson_head.clone(),
            (Static::Head, _) => self.stream_head_http10.clone(),
            (Static::Beat, Kind::Sse) => Bytes::from_static(HEARTBEAT_CHUNK),
            (Static::Beat, Kind::Ndjson) => Bytes::from_static(NDJSON_HEARTBEAT_CHUNK),
            (Static::Beat, _) => Bytes::from_static(HEARTBEAT),
            (Static::Ping, _) => Bytes::from_static(PING),
        }
    }
}
