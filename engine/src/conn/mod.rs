//! The per-connection record the loops keep in their slabs, and the out-queue a
//! connection has only while something waits to be sent.
//!
//! State diagram (transitions made by the shard):
//!
//! ```text
//!            accept
//!              |
//!              v        response with keep-alive
//!          Request  <---------------------------.
//!        /  |   |  \_______________________________|
//!  /ws 101  |   |  error, 408 or Connection: close
//!      /    v   v
//!    Ws  Stream  Draining --(queue empty)--> Lingering --(EOF or deadline)--.
//!     \     |     ^ (close frame sent)                                      v
//!      \----|-----'                                                          |
//!           `-------(EOF, error, too slow, stalled, no pong)------------> Closing --(all ops done)--> freed
//! ```
//!
//! Never does I/O itself: it records what is queued and what the kernel still owns.
pub mod outq;

pub use outq::{OutQueue, Policy};

use crate::proto::Kind;

/// "No link" in the u32 links that thread subscriptions through their slab.
pub const NIL: u32 = u32::MAX;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Reading HTTP requests; keep-alive and pipelining are allowed.
    Request,
    /// An SSE stream: events are queued, input is read only to notice the close.
    Stream,
    /// A WebSocket: events are queued as frames, client frames are decoded.
    Ws,
    /// A long-poll held until an event arrives or `mark` passes.
    Poll,
    /// A final response is queued; once sent, the write side is shut down.
    Draining,
    /// Write side shut down; input is discarded until EOF or the linger deadline, so the
    /// peer reads our answer instead of a reset.
    Lingering,
    /// Cancel and close are submitted; the record waits for its last completions.
    Closing,
}

/// Per-connection flag bits.
pub mod flags {
    /// At least one request was answered: an idle gap is then a keep-alive pause rather
    /// than a client that connected and never asked for anything.
    pub const SERVED: u8 = 1;
    /// A WebSocket ping is out and unanswered since `mark`.
    pub const PINGED: u8 = 1 << 1;
    /// A held long-poll answers with keep-alive.
    pub const KEEP_ALIVE: u8 = 1 << 2;
    /// Counted in its transport's open-connections gauge (SSE, NDJSON, WebSocket, held poll).
    pub const COUNTED: u8 = 1 << 3;
    /// The direct descriptor's close has been submitted.
    pub const CLOSED: u8 = 1 << 4;
    /// Resuming from the history a page at a time: live events pass it by until the
    /// page that reaches the loop's cursor (see `shard::catchup`).
    pub const CATCHING_UP: u8 = 1 << 5;
    /// Its token expired and it was told (a WebSocket in its refresh grace).
    pub const EXPIRY_TOLD: u8 = 1 << 6;
    /// Refused by admission control: its request is answered with why, then it closes.
    pub const REFUSED: u8 = 1 << 7;
}

/// Kernel operations of one connection whose final completion is still to come. The
/// record may be freed only when none remain: the kernel still owns their buffers.
pub mod ops {
    pub const RECV: u8 = 1;
    pub const SEND: u8 = 1 << 1;
    pub const CLOSE: u8 = 1 << 2;
    pub const CANCEL: u8 = 1 << 3;
    pub const SHUTDOWN: u8 = 1 << 4;
    /// Qualifies `SEND`: the send in flight is the loop's shared stream head, sent
    /// without an out-queue so that opening an idle stream allocates nothing.
    pub const SEND_HEAD: u8 = 1 << 5;
    /// Qualifies `SEND`: the send in flight is the loop's shared heartbeat comment.
    pub const SEND_BEAT: u8 = 1 << 6;
    /// Qualifies `SEND`: the send in flight is the shared WebSocket ping.
    pub const SEND_PING: u8 = 1 << 7;
}

/// One client connection: 40 bytes, asserted below, because an idle connection costs
/// exactly this record (plus its subscriptions) in user space.
#[derive(Debug)]
pub struct Conn {
    /// Index in the loop's registered file table (a direct descriptor).
    pub file: u32,
    /// Generation, so a completion for a previous occupant of the slot is recognised.
    pub generation: u32,
    /// Head of this connection's chain of subscriptions in the loop's subscription slab.
    pub first_sub: u32,
    /// A tick whose meaning depends on the state: when the request head now arriving
    /// began (`Request`), or when a lingering close gives up (`Lingering`).
    pub mark: u32,
    /// The tick of the last progress: the last byte received while reading requests, the
    /// last bytes the kernel took while sending. Activity only stores this; the timer
    /// wheel reads it when the connection's timer fires (lazy re-arm).
    pub last_io: u32,
    pub state: State,
    /// Bits of [`ops`] in flight.
    pub ops: u8,
    /// How events are framed for this connection.
    pub kind: Kind,
    /// Bits of [`flags`].
    pub flags: u8,
    /// A request split across reads, staged until its head is complete.
    pub staging: Option<Box<Vec<u8>>>,
    /// Bytes waiting to be sent; `None` while nothing is queued.
    pub out: Option<Box<OutQueue>>,
}

const _: () = assert!(std::mem::size_of::<Conn>() == 40);

impl Conn {
    pub fn new(file: u32, generation: u32, now: u32) -> Self {
        Conn {
            file,
            generation,
            first_sub: NIL,
            mark: now,
            last_io: now,
            flags: 0,
            state: State::Request,
            ops: 0,
            kind: Kind::Sse,
            staging: None,
            out: None,
        }
    }

    pub fn has_flag(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    pub fn has_op(&self, op: u8) -> bool {
        self.ops & op != 0
    }

    /// Bytes queued and not yet acknowledged by the kernel.
    pub fn queued_bytes(&self) -> usize {
        self.out.as_ref().map_or(0, |q| q.bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connection_record_is_small() {
        // The slab adds its own tag word around each record.
        assert_eq!(std::mem::size_of::<Conn>(), 40);
        assert!(std::mem::size_of::<slab::Slab<Conn>>() <= 48);
        let mut slab = slab::Slab::<Conn>::with_capacity(1024);
        for i in 0..1024 {
            slab.insert(Conn::new(i, 0, 0));
        }
        assert!(slab.capacity() * std::mem::size_of::<Conn>() <= 1024 * 48);
    }
}
