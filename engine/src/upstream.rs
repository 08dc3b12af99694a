//! Messages between WebSocket clients and backends, which cross threads: a client's
//! message goes from its loop to the ingest thread and on to a backend that sent
//! `UPSTREAM`; a backend's `SEND` goes from the ingest thread to the client's loop. In a
//! cluster either may also cross nodes, through the backplane (see
//! [`crate::backplane::relay`]); the loops never know.
//!
//! Each loop has one [`Mailbox`]: two bounded queues under short mutexes, plus a
//! `MSG_RING` doorbell to the other side's ring so nobody polls. These queues carry
//! per-connection data, not broadcasts (those use the broadcast ring).
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;

use crate::proto::ingest::is_valid_node_id;

/// Bytes of client messages one loop may have waiting for the ingest thread; a client
/// whose message does not fit is told so.
pub const UP_BYTES_MAX: usize = 4 << 20;
/// Bytes of backend messages waiting for one loop; a `SEND` that does not fit is refused.
pub const DOWN_BYTES_MAX: usize = 16 << 20;

/// Names one client connection across the engine: `<loop>.<slot>.<generation>`. The
/// generation makes an id of a closed connection never reach a newer one in its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnId {
    pub shard: u32,
    pub index: u32,
    pub generation: u32,
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.shard, self.index, self.generation)
    }
}

impl ConnId {
    /// Parses `<loop>.<slot>.<generation>`.
    pub fn parse(s: &str) -> Option<ConnId> {
        let mut parts = s.split('.').map(|p| p.parse::<u32>().ok());
        let id = ConnId {
            shard: parts.next()??,
            index: parts.next()??,
            generation: parts.next()??,
        };
        parts.next().is_none().then_some(id)
    }

    /// Parses a connection id as a backend names it: `<loop>.<slot>.<generation>` (on
    /// this node) or `<node>/<loop>.<slot>.<generation>` (on the node named, which may
    /// be this one); the node id is 1-64 bytes of `[A-Za-z0-9_.-]`.
    pub fn parse_addressed(s: &str) -> Option<(Option<&str>, ConnId)> {
        match s.split_once('/') {
            Some((node, id)) if is_valid_node_id(node.as_bytes()) => Some((Some(node), ConnId::parse(id)?)),
            Some(_) => None,
            None => Some((None, ConnId::parse(s)?)),
        }
    }
}

/// A client's message on its way to a backend.
pub struct Upstream {
    pub from: ConnId,
    /// A text frame (else binary).
    pub text: bool,
    pub payload: Bytes,
    /// The client's token's `sub`, with subscriber auth.
    pub sub: Option<std::sync::Arc<str>>,
}

/// A backend's message on its way to one client, or the client's own message coming
/// back undelivered (`refusal`: a `ringcast.error` frame, counted as `upstream_refused`).
pub struct Downstream {
    pub index: u32,
    pub generation: u32,
    pub payload: Bytes,
    pub refusal: bool,
}

struct Queue<T> {
    items: VecDeque<T>,
    bytes: usize,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue {
            items: VecDeque::new(),
            bytes: 0,
        }
    }
}

/// One loop's two queues.
#[derive(Default)]
pub struct Mailbox {
    up: Mutex<Queue<Upstream>>,
    down: Mutex<Queue<Downstream>>,
    /// Set when `down` has something, so the loop checks without locking.
    down_ready: AtomicBool,
}

impl Mailbox {
    /// Queues a client's message for the ingest thread; false when the queue is full.
    pub fn push_up(&self, msg: Upstream) -> bool {
        let mut q = self.up.lock().unwrap_or_else(PoisonError::into_inner);
        if q.bytes + msg.payload.len() > UP_BYTES_MAX {
            return false;
        }
        q.bytes += msg.payload.len();
        q.items.push_back(msg);
        true
    }

    /// Takes every queued client message.
    pub fn take_up(&self) -> VecDeque<Upstream> {
        let mut q = self.up.lock().unwrap_or_else(PoisonError::into_inner);
        q.bytes = 0;
        std::mem::take(&mut q.items)
    }

    /// Queues a backend's message for the loop; false when the queue is full.
    pub fn push_down(&self, msg: Downstream) -> bool {
        let mut q = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        if q.bytes + msg.payload.len() > DOWN_BYTES_MAX {
            return false;
        }
        q.bytes += msg.payload.len();
        q.items.push_back(msg);
        self.down_ready.store(true, Ordering::Release);
        true
    }

    /// Takes every queued backend message, if any (no lock when there is none).
    pub fn take_down(&self) -> Option<VecDeque<Downstream>> {
        if !self.down_ready.swap(false, Ordering::Acquire) {
            return None;
        }
        let mut q = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        q.bytes = 0;
        Some(std::mem::take(&mut q.items))
    }
}

/// Backends listening for client messages, so that a loop can tell a client at once
/// when nobody is.
#[derive(Default)]
pub struct Listeners(AtomicUsize);

impl Listeners {
    pub fn add(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    pub fn remove(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn any(&self) -> bool {
        self.0.load(Ordering::Acquire) > 0
    }
}

/// A token's `sub` as a `MSG` line carries it: RFC 3986 unreserved bytes as they are, every
/// other byte as `%XX`, so the line stays one token of visible ASCII.
pub fn encode_sub(sub: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(sub.len());
    for &b in sub.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A byte [`encode_sub`] may produce.
pub fn sub_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'%')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subs_are_percent_encoded_to_one_visible_token() {
        assert_eq!(encode_sub("user-42"), "user-42");
        assert_eq!(encode_sub("auth0|a b\r\n"), "auth0%7Ca%20b%0D%0A");
        assert_eq!(encode_sub("é"), "%C3%A9");
        assert!(encode_sub("a%b").bytes().all(sub_byte));
    }

    #[test]
    fn conn_ids_round_trip_and_reject_junk() {
        let id = ConnId {
            shard: 1,
            index: 42,
            generation: 7,
        };
        assert_eq!(id.to_string(), "1.42.7");
        assert_eq!(ConnId::parse("1.42.7"), Some(id));
        for bad in ["", "1.2", "1.2.3.4", "a.b.c", "1..3", "99999999999.1.1"] {
            assert_eq!(ConnId::parse(bad), None, "{bad}");
        }
        assert_eq!(ConnId::parse_addressed("1.42.7"), Some((None, id)));
        assert_eq!(
            ConnId::parse_addressed("eu-1.host/1.42.7"),
            Some((Some("eu-1.host"), id))
        );
        for bad in [
            "/1.42.7",
            "a/b/1.42.7",
            "a b/1.42.7",
            "a*/1.42.7",
            "a>/1.42.7",
            "a/1.42",
            "a/",
        ] {
            assert_eq!(ConnId::parse_addressed(bad), None, "{bad}");
        }
    }

    #[test]
    fn queues_are_bounded_by_bytes() {
        let m = Mailbox::default();
        let big = Bytes::from(vec![0u8; UP_BYTES_MAX]);
        let from = ConnId::parse("0.0.0").unwrap();
        assert!(m.push_up(Upstream {
            from,
            text: true,
            payload: big.clone(),
            sub: None,
        }));
        assert!(!m.push_up(Upstream {
            from,
            text: true,
            payload: Bytes::from_static(b"x"),
            sub: None,
        }));
        assert_eq!(m.take_up().len(), 1);
        assert!(m.push_up(Upstream {
            from,
            text: true,
            payload: Bytes::from_static(b"x"),
            sub: None,
        }));
        assert!(m.take_down().is_none());
        assert!(m.push_down(Downstream {
            index: 1,
            generation: 2,
            payload: big,
            refusal: false,
        }));
        assert_eq!(m.take_down().map(|q| q.len()), Some(1));
        assert!(m.take_down().is_none());
    }
}
