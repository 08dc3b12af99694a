//! A connection's queue of shared byte strings waiting to be sent, and the `msghdr` that
//! hands up to [`IOV_MAX`] of them to one `sendmsg`.
//!
//! The queue is boxed, so the `msghdr` and `iovec`s keep their address while the kernel
//! reads them, even if the slab moves the connection record. The `Bytes` they point into
//! stay in the queue until the completion reports them sent.
use std::collections::VecDeque;

use bytes::Bytes;

/// Byte strings gathered into one send.
pub const IOV_MAX: usize = 16;

pub struct OutQueue {
    queue: VecDeque<Bytes>,
    /// Bytes of `queue[0]` already sent.
    offset: usize,
    /// Unsent bytes in the queue.
    bytes: usize,
    iov: [libc::iovec; IOV_MAX],
    msg: libc::msghdr,
}

impl std::fmt::Debug for OutQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutQueue")
            .field("entries", &self.queue.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl Default for OutQueue {
    fn default() -> Self {
        OutQueue {
            queue: VecDeque::new(),
            offset: 0,
            bytes: 0,
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; IOV_MAX],
            msg: empty_msghdr(),
        }
    }
}

fn empty_msghdr() -> libc::msghdr {
    libc::msghdr {
        msg_name: std::ptr::null_mut(),
        msg_namelen: 0,
        msg_iov: std::ptr::null_mut(),
        msg_iovlen: 0,
        msg_control: std::ptr::null_mut(),
        msg_controllen: 0,
        msg_flags: 0,
    }
}

impl OutQueue {
    pub fn push(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        self.bytes += bytes.len();
        self.queue.push_back(bytes);
    }

    /// Puts `bytes` ahead of everything queued. Only valid while no send from this queue
    /// is in flight.
    pub fn push_front(&mut self, bytes: Bytes) {
        debug_assert_eq!(self.offset, 0, "push_front during a partial send");
        self.bytes += bytes.len();
        self.queue.push_front(bytes);
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Fills the `msghdr` with the first unsent bytes and returns it for `SendMsg`. The
    /// queue must not be empty, and must not be prepared again before `sent` is called.
    pub fn prepare(&mut self) -> *const libc::msghdr {
        debug_assert!(!self.is_empty(), "prepare on an empty queue");
        let mut n = 0;
        for (i, b) in self.queue.iter().take(IOV_MAX).enumerate() {
            let skip = if i == 0 { self.offset } else { 0 };
            self.iov[n] = libc::iovec {
                iov_base: b[skip..].as_ptr() as *mut libc::c_void,
                iov_len: b.len() - skip,
            };
            n += 1;
        }
        self.msg = empty_msghdr();
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = n as _;
        &self.msg
    }

    /// Records that the kernel sent `n` bytes from the front.
    pub fn sent(&mut self, mut n: usize) {
        debug_assert!(n <= self.bytes, "sent {n} of {} queued", self.bytes);
        self.bytes -= n;
        while n > 0 {
            let front = self.queue.front().expect("bytes remain").len() - self.offset;
            if n >= front {
                n -= front;
                self.offset = 0;
                self.queue.pop_front();
            } else {
                self.offset += n;
                n = 0;
            }
        }
    }

    /// Empties the queue for reuse from the loop's pool.
    pub fn clear(&mut self) {
        self.queue.clear();
        self.offset = 0;
        self.bytes = 0;
        self.msg = empty_msghdr();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gathered(q: &mut OutQueue) -> Vec<u8> {
        let msg = q.prepare();
        // SAFETY: `prepare` just pointed the msghdr at live iovecs over queued `Bytes`.
        let iovs = unsafe { std::slice::from_raw_parts((*msg).msg_iov, (*msg).msg_iovlen) };
        iovs.iter()
            // SAFETY: each iovec covers the unsent tail of a queued `Bytes`.
            .flat_map(|v| unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) }.to_vec())
            .collect()
    }

    #[test]
    fn partial_sends_resume_where_they_stopped() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"hello "));
        q.push(Bytes::from_static(b"world"));
        assert_eq!(gathered(&mut q), b"hello world");
        q.sent(3);
        assert_eq!(gathered(&mut q), b"lo world");
        q.sent(5);
        assert_eq!(gathered(&mut q), b"rld");
        q.sent(3);
        assert!(q.is_empty());
    }

    #[test]
    fn gathers_at_most_iov_max_entries() {
        let mut q = OutQueue::default();
        for _ in 0..IOV_MAX + 4 {
            q.push(Bytes::from_static(b"x"));
        }
        assert_eq!(gathered(&mut q).len(), IOV_MAX);
        q.sent(IOV_MAX);
        assert_eq!(gathered(&mut q).len(), 4);
    }
}
