//! A connection's queue of shared byte strings waiting to be sent, the `msghdr` that
//! hands up to [`IOV_MAX`] of them to one `sendmsg`, and the backpressure policy that
//! keeps it bounded.
//!
//! Entries are either control bytes (response heads, close frames, heartbeats, notices,
//! replies), which the policy never drops, or events, which count against the queue's
//! limits (bytes and entries) and are dropped or coalesced by the topic's [`Policy`] when a
//! slow client lets them pile up. Every byte, control or event, counts in
//! [`OutQueue::bytes`], which the shard holds under `--out-queue-bytes-max` whatever the
//! client sent. Pongs wait outside the queue until the next send (see
//! [`OutQueue::push_pong`]), so a ping flood costs at most [`PONGS_WAITING_MAX`] frames. Every event dropped is remembered in a [`Gap`] per topic,
//! and the gaps are told to the client, ahead of the next event it does get, by a notice
//! the caller builds in the client's own format ([`OutQueue::take_gaps`]).
//!
//! A turn's consecutive events of one topic can also be queued as one [`Run`]: their
//! encodings back to back in one buffer, built once per loop turn and shared by every
//! subscriber of that transport whose queue takes the whole run without its policy acting
//! (see [`OutQueue::push_run`]). A run is one entry and one iovec, so a subscriber that
//! keeps up costs one queue entry per run rather than one per event. Whenever the policy
//! must pick single events out of a run (a drop, a coalesce), or a short send stops
//! inside one, the run is split back into one entry per event, each a slice of the shared
//! buffer: the client gets the same bytes, the same drops and the same gaps as if every
//! event had been queued on its own.
//!
//! The queue is boxed, so the `msghdr` and `iovec`s keep their address while the kernel
//! reads them, even if the slab moves the connection record. The entries handed to the
//! kernel by [`OutQueue::prepare`] are neither dropped nor replaced until
//! [`OutQueue::sent`] reports them.
use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::event::Event;

/// Byte strings gathered into one send.
pub const IOV_MAX: usize = 64;

/// Pongs waiting for the next send. Up to this many pings are answered one for one (the
/// Autobahn suite's cases 2.10 and 2.11 send ten and expect ten pongs); beyond it the
/// newest ping's pong replaces the last one waiting, as RFC 6455 §5.5.3 allows ("MAY elect
/// to send a Pong frame for only the most recently processed Ping frame").
pub const PONGS_WAITING_MAX: usize = 16;

/// A pooled queue whose deque grew beyond this many entries gives the memory back rather
/// than keeping it for the next connection: a flood must not leave its peak resident.
const POOLED_ENTRIES_MAX: usize = 256;

/// What to do with events when a client cannot keep up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Keep the newest events that fit; drop the oldest queued ones.
    DropOldest,
    /// Keep what is queued; refuse what comes.
    DropNewest,
    /// Keep only the latest event per (topic, key); events without a key drop-oldest.
    Coalesce,
    /// Close the client with a notice saying it was too slow.
    Disconnect,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "drop-oldest" => Ok(Policy::DropOldest),
            "drop-newest" => Ok(Policy::DropNewest),
            "coalesce" => Ok(Policy::Coalesce),
            "disconnect" => Ok(Policy::Disconnect),
            _ => Err(format!(
                "unknown policy {s:?}: expected drop-oldest, drop-newest, coalesce or disconnect"
            )),
        }
    }
}

/// The queue's bounds for events; control bytes are never dropped and not counted here.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub bytes: usize,
    pub events: usize,
}

/// What [`OutQueue::push_event`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Queued; `dropped` older events made room for it.
    Queued { dropped: usize },
    /// It replaced a queued event with the same topic and key.
    Coalesced,
    /// Refused: the queue is full and the topic's policy keeps what is queued.
    Refused,
    /// The queue is full and the topic's policy is to disconnect the client.
    Disconnect,
}

/// Events of one topic a client did not get.
#[derive(Clone, Debug)]
pub struct Gap {
    /// The first event dropped (its topic names the gap).
    pub first: Arc<Event>,
    /// The last event dropped.
    pub last: Arc<Event>,
    pub dropped: u64,
}

/// Consecutive events of one topic encoded for one transport, back to back in one
/// buffer. Built once per loop turn and transport, shared by every subscriber queueing it.
#[derive(Debug)]
pub struct Run {
    bytes: Bytes,
    events: Vec<Arc<Event>>,
    /// Where each event's bytes end in `bytes`.
    ends: Vec<usize>,
}

impl Run {
    /// The run of `events`, each encoded as `encode` gives it.
    pub fn new(events: &[Arc<Event>], mut encode: impl FnMut(&Arc<Event>) -> Bytes) -> Run {
        let pieces: Vec<Bytes> = events.iter().map(&mut encode).collect();
        let mut buf = Vec::with_capacity(pieces.iter().map(Bytes::len).sum());
        let mut ends = Vec::with_capacity(pieces.len());
        for piece in &pieces {
            buf.extend_from_slice(piece);
            ends.push(buf.len());
        }
        Run {
            bytes: Bytes::from(buf),
            events: events.to_vec(),
            ends,
        }
    }

    /// Events in the run.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Bytes of all its events.
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }

    /// One entry per event, each a slice of the shared buffer.
    fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        self.events.iter().enumerate().map(|(i, event)| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            Entry {
                bytes: self.bytes.slice(start..self.ends[i]),
                content: Content::Event(Arc::clone(event)),
            }
        })
    }
}

/// What an entry's bytes are.
enum Content {
    /// Control bytes, never dropped.
    Control,
    /// The encoding of one event.
    Event(Arc<Event>),
    /// The encodings of a run of events; never half-sent (see [`OutQueue::sent`]).
    Run(Arc<Run>),
}

struct Entry {
    bytes: Bytes,
    content: Content,
}

impl Entry {
    fn control(bytes: Bytes) -> Entry {
        Entry {
            bytes,
            content: Content::Control,
        }
    }

    /// Events the entry carries.
    fn events(&self) -> usize {
        match &self.content {
            Content::Control => 0,
            Content::Event(_) => 1,
            Content::Run(run) => run.len(),
        }
    }

    /// Whether the entry carries an event of `event`'s topic and key.
    fn has_same_key(&self, event: &Event) -> bool {
        let same = |old: &Arc<Event>| old.key == event.key && old.topic == event.topic;
        match &self.content {
            Content::Control => false,
            Content::Event(old) => same(old),
            Content::Run(run) => run.events.iter().any(same),
        }
    }
}

pub struct OutQueue {
    queue: VecDeque<Entry>,
    /// Bytes of `queue[0]` already sent.
    offset: usize,
    /// Unsent bytes in the queue, control included.
    bytes: usize,
    /// Bytes and entries of queued events (the part the limits bound).
    event_bytes: usize,
    events: usize,
    /// Entries at the front handed to the kernel by the last `prepare`.
    in_flight: usize,
    gaps: Vec<Gap>,
    /// Pong frames waiting for the next send, back to back; `pongs_last` is where the
    /// newest begins and `pongs_waiting` how many there are.
    pongs: Vec<u8>,
    pongs_last: usize,
    pongs_waiting: usize,
    iov: [libc::iovec; IOV_MAX],
    msg: libc::msghdr,
    /// Counted among its loop's deep queues (see `shard::Shard::note_depth`).
    pub deep: bool,
}

impl std::fmt::Debug for OutQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutQueue")
            .field("entries", &self.queue.len())
            .field("bytes", &self.bytes)
            .field("gaps", &self.gaps.len())
            .finish()
    }
}

impl Default for OutQueue {
    fn default() -> Self {
        OutQueue {
            queue: VecDeque::new(),
            offset: 0,
            bytes: 0,
            event_bytes: 0,
            events: 0,
            in_flight: 0,
            gaps: Vec::new(),
            pongs: Vec::new(),
            pongs_last: 0,
            pongs_waiting: 0,
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; IOV_MAX],
            msg: empty_msghdr(),
            deep: false,
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
    /// Queues control bytes (never dropped).
    pub fn push(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        self.bytes += bytes.len();
        self.queue.push_back(Entry::control(bytes));
    }

    /// Puts control bytes ahead of everything queued. Only valid while no send from this
    /// queue is in flight.
    pub fn push_front(&mut self, bytes: Bytes) {
        debug_assert!(
            self.offset == 0 && self.in_flight == 0,
            "push_front during a send"
        );
        self.bytes += bytes.len();
        self.queue.push_front(Entry::control(bytes));
    }

    /// Queues a notice (a gap, a slow-client warning) ahead of every queued byte except
    /// the rest of an entry a short send left half-sent. Notices queued one after another
    /// keep their order.
    pub fn push_notice(&mut self, bytes: Bytes, nth: usize) {
        let at = usize::from(self.offset > 0) + nth;
        self.bytes += bytes.len();
        self.queue.insert(at.min(self.queue.len()), Entry::control(bytes));
    }

    /// Queues the pong `frame` to go out ahead of everything not yet sent (control frames
    /// may come between data frames, RFC 6455 §5.4). While fewer than
    /// [`PONGS_WAITING_MAX`] wait, it is added; otherwise it replaces the newest one
    /// waiting. Returns the change in queued bytes.
    pub fn push_pong(&mut self, frame: &[u8]) -> isize {
        let before = self.pongs.len();
        if self.pongs_waiting >= PONGS_WAITING_MAX {
            self.pongs.truncate(self.pongs_last);
        } else {
            self.pongs_waiting += 1;
        }
        self.pongs_last = self.pongs.len();
        self.pongs.extend_from_slice(frame);
        let delta = self.pongs.len() as isize - before as isize;
        self.bytes = self.bytes.wrapping_add_signed(delta);
        delta
    }

    /// Moves the waiting pongs into the queue, ahead of every entry not yet sent. Only
    /// while no send from this queue is in flight.
    fn place_pongs(&mut self) {
        if self.pongs_waiting == 0 {
            return;
        }
        let frames = Bytes::from(std::mem::take(&mut self.pongs));
        self.pongs_last = 0;
        self.pongs_waiting = 0;
        let at = usize::from(self.offset > 0);
        self.queue
            .insert(at.min(self.queue.len()), Entry::control(frames));
    }

    /// Drops everything not yet handed to the kernel: queued entries, waiting pongs and
    /// untold gaps (before failing a client that exceeded its cap). The entries in flight
    /// stay until [`OutQueue::sent`]. Returns the bytes dropped.
    pub fn truncate_unsent(&mut self) -> usize {
        let before = self.bytes;
        let keep = self.in_flight.max(usize::from(self.offset > 0));
        while self.queue.len() > keep {
            let entry = self.queue.pop_back().expect("longer than keep");
            self.bytes -= entry.bytes.len();
            if entry.events() > 0 {
                self.event_bytes -= entry.bytes.len();
                self.events -= entry.events();
            }
        }
        self.bytes -= self.pongs.len();
        self.pongs.clear();
        self.pongs_last = 0;
        self.pongs_waiting = 0;
        self.gaps.clear();
        before - self.bytes
    }

    /// Queues `bytes`, the encoding of `event`, applying `policy` when the event limits
    /// would be exceeded.
    pub fn push_event(&mut self, bytes: Bytes, event: &Arc<Event>, policy: Policy, limits: Limits) -> Pushed {
        // Coalescing takes the superseded event out; the new one joins the back, so the
        // client still receives events in id order.
        let coalesced = policy == Policy::Coalesce && event.key.is_some() && self.remove_same_key(event);
        let fits = |q: &OutQueue| {
            // One event always fits an event-free queue, however large: a payload over the
            // byte limit still reaches a client that keeps up (the hard cap still applies).
            q.events == 0 || (q.event_bytes + bytes.len() <= limits.bytes && q.events < limits.events)
        };
        let mut dropped = 0;
        if !fits(self) {
            match policy {
                Policy::DropNewest => {
                    self.record_gap(event);
                    return Pushed::Refused;
                }
                Policy::Disconnect => return Pushed::Disconnect,
                Policy::DropOldest | Policy::Coalesce => {
                    while !fits(self) && self.drop_oldest() {
                        dropped += 1;
                    }
                    if !fits(self) {
                        // Everything droppable is gone and it still does not fit (all of it
                        // in flight): the newcomer is the one lost.
                        self.record_gap(event);
                        return Pushed::Refused;
                    }
                }
            }
        }
        self.bytes += bytes.len();
        self.event_bytes += bytes.len();
        self.events += 1;
        self.queue.push_back(Entry {
            bytes,
            content: Content::Event(Arc::clone(event)),
        });
        if coalesced && dropped == 0 {
            Pushed::Coalesced
        } else {
            Pushed::Queued { dropped }
        }
    }

    /// Queues `run` as one entry when every event of it would be queued by
    /// [`OutQueue::push_event`] under `policy` with nothing dropped, refused or coalesced,
    /// so the queue ends up holding the same events as if each had been pushed; returns
    /// false and queues nothing otherwise (the caller pushes the events one by one).
    pub fn push_run(&mut self, run: &Arc<Run>, policy: Policy, limits: Limits) -> bool {
        // A run of one event has nothing to share; and `push_event` lets one event into an
        // event-free queue whatever its size, which this bound does not model.
        if run.len() < 2
            || self.event_bytes + run.bytes() > limits.bytes
            || self.events + run.len() > limits.events
        {
            return false;
        }
        if policy == Policy::Coalesce && run.events.iter().any(|e| e.key.is_some()) {
            // A keyed event may supersede a queued one, or an earlier one of the run.
            return false;
        }
        self.bytes += run.bytes();
        self.event_bytes += run.bytes();
        self.events += run.len();
        self.queue.push_back(Entry {
            bytes: run.bytes.clone(),
            content: Content::Run(Arc::clone(run)),
        });
        true
    }

    /// Splits the run at `queue[at]` into one entry per event. The entry must not be in
    /// flight.
    fn split_run(&mut self, at: usize) {
        let mut tail = self.queue.split_off(at);
        let entry = tail.pop_front().expect("an entry to split");
        let Content::Run(run) = &entry.content else {
            unreachable!("split_run on an entry that is not a run");
        };
        self.queue.extend(run.entries());
        self.queue.append(&mut tail);
    }

    /// The position of the first entry at or after `start` carrying an event for which
    /// `pick` holds, with a run it falls in split so that the event is an entry of its own.
    fn find_event(&mut self, start: usize, pick: impl Fn(&Entry) -> bool) -> Option<usize> {
        let pos = start + self.queue.iter().skip(start).position(&pick)?;
        if !matches!(self.queue[pos].content, Content::Run(_)) {
            return Some(pos);
        }
        self.split_run(pos);
        Some(pos + self.queue.iter().skip(pos).position(pick)?)
    }

    /// Removes a queued, not in flight, event with the same topic and key as `event`.
    fn remove_same_key(&mut self, event: &Arc<Event>) -> bool {
        let Some(pos) = self.find_event(self.in_flight, |e| e.has_same_key(event)) else {
            return false;
        };
        let entry = self.queue.remove(pos).expect("position found");
        self.bytes -= entry.bytes.len();
        self.event_bytes -= entry.bytes.len();
        self.events -= 1;
        true
    }

    /// Drops the oldest event not in flight; false when there is none.
    fn drop_oldest(&mut self) -> bool {
        let Some(pos) = self.find_event(self.in_flight, |e| e.events() > 0) else {
            return false;
        };
        let entry = self.queue.remove(pos).expect("position found");
        self.bytes -= entry.bytes.len();
        self.event_bytes -= entry.bytes.len();
        self.events -= 1;
        let Content::Event(event) = &entry.content else {
            unreachable!("find_event returns an entry of one event");
        };
        self.record_gap(event);
        true
    }

    fn record_gap(&mut self, event: &Arc<Event>) {
        match self.gaps.iter_mut().find(|g| g.first.topic == event.topic) {
            Some(gap) => {
                if event.seq < gap.first.seq {
                    gap.first = Arc::clone(event);
                }
                if event.seq > gap.last.seq {
                    gap.last = Arc::clone(event);
                }
                gap.dropped += 1;
            }
            None => self.gaps.push(Gap {
                first: Arc::clone(event),
                last: Arc::clone(event),
                dropped: 1,
            }),
        }
    }

    /// Gaps not yet told to the client. The caller queues a notice for each with
    /// [`OutQueue::push_front`] before the next send, so the client hears of them before
    /// the next event it gets.
    pub fn take_gaps(&mut self) -> Vec<Gap> {
        std::mem::take(&mut self.gaps)
    }

    pub fn has_gaps(&self) -> bool {
        !self.gaps.is_empty()
    }

    /// Drops every queued event not in flight, recording them as gaps (before closing a
    /// client with a final notice). Returns how many.
    pub fn drop_all_events(&mut self) -> usize {
        let mut n = 0;
        while self.drop_oldest() {
            n += 1;
        }
        n
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Queued event bytes, the part the policy bounds.
    pub fn event_bytes(&self) -> usize {
        self.event_bytes
    }

    /// The unsent bytes when they are one entry, marked in flight as by `prepare`: a
    /// plain `Send` of them spares the kernel the `msghdr` and iovec copies of `SendMsg`
    /// (the common case when events arrive further apart than a send takes). The
    /// pointer stays valid until `sent` is called: the entry is pinned in the queue.
    pub fn prepare_single(&mut self) -> Option<(*const u8, u32)> {
        self.place_pongs();
        if self.queue.len() != 1 {
            return None;
        }
        let front = self.queue.front()?;
        let rest = &front.bytes[self.offset..];
        self.in_flight = 1;
        Some((rest.as_ptr(), u32::try_from(rest.len()).ok()?))
    }

    /// Fills the `msghdr` with the first unsent bytes and returns it for `SendMsg`. The
    /// queue must not be empty, and must not be prepared again before `sent` is called.
    pub fn prepare(&mut self) -> *const libc::msghdr {
        debug_assert!(!self.is_empty(), "prepare on an empty queue");
        self.place_pongs();
        let mut n = 0;
        for (i, e) in self.queue.iter().take(IOV_MAX).enumerate() {
            let skip = if i == 0 { self.offset } else { 0 };
            self.iov[n] = libc::iovec {
                iov_base: e.bytes[skip..].as_ptr() as *mut libc::c_void,
                iov_len: e.bytes.len() - skip,
            };
            n += 1;
        }
        self.in_flight = n;
        self.msg = empty_msghdr();
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = n as _;
        &self.msg
    }

    /// Records that the kernel sent `n` bytes from the front; the send is over.
    pub fn sent(&mut self, mut n: usize) {
        debug_assert!(n <= self.bytes, "sent {n} of {} queued", self.bytes);
        self.bytes -= n;
        self.in_flight = 0;
        while n > 0 {
            let front = self.queue.front().expect("bytes remain");
            let rest = front.bytes.len() - self.offset;
            if n >= rest {
                n -= rest;
                self.offset = 0;
                let entry = self.queue.pop_front().expect("front exists");
                if entry.events() > 0 {
                    self.event_bytes -= entry.bytes.len();
                    self.events -= entry.events();
                }
            } else {
                let in_run = matches!(front.content, Content::Run(_));
                self.offset += n;
                n = 0;
                if in_run {
                    // The send stopped inside a run: it goes on as single events, so that
                    // only the one half-sent stays pinned and the policy can still drop
                    // the rest. The events before the offset were sent whole.
                    self.split_run(0);
                    loop {
                        let len = self.queue.front().expect("the split run").bytes.len();
                        if self.offset < len {
                            break;
                        }
                        self.offset -= len;
                        self.queue.pop_front();
                        self.event_bytes -= len;
                        self.events -= 1;
                    }
                }
            }
        }
        // A partly sent entry stays pinned: its remaining bytes must follow its first ones.
        if self.offset > 0 {
            self.in_flight = 1;
        }
    }

    /// Queued events, the part the policy bounds by count.
    pub fn events(&self) -> usize {
        self.events
    }

    /// Empties the queue for reuse from the loop's pool; storage a flood made large is
    /// freed rather than pooled.
    pub fn clear(&mut self) {
        if self.queue.capacity() > POOLED_ENTRIES_MAX {
            self.queue = VecDeque::new();
        }
        self.queue.clear();
        if self.gaps.capacity() > POOLED_ENTRIES_MAX {
            self.gaps = Vec::new();
        }
        self.pongs = Vec::new();
        self.pongs_last = 0;
        self.pongs_waiting = 0;
        self.offset = 0;
        self.bytes = 0;
        self.event_bytes = 0;
        self.events = 0;
        self.in_flight = 0;
        self.gaps.clear();
        self.msg = empty_msghdr();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Epoch;
    use std::time::Instant;

    fn gathered(q: &mut OutQueue) -> Vec<u8> {
        let msg = q.prepare();
        // SAFETY: `prepare` just pointed the msghdr at live iovecs over queued `Bytes`.
        let iovs = unsafe { std::slice::from_raw_parts((*msg).msg_iov, (*msg).msg_iovlen) };
        iovs.iter()
            // SAFETY: each iovec covers the unsent tail of a queued `Bytes`.
            .flat_map(|v| unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) }.to_vec())
            .collect()
    }

    fn event(seq: u64, topic: &str, key: Option<&str>) -> Arc<Event> {
        Arc::new(Event::new(
            Epoch::from_raw(1),
            seq,
            topic,
            None,
            key,
            format!("v{seq}").as_bytes(),
            Instant::now(),
        ))
    }

    fn bytes_of(seq: u64) -> Bytes {
        Bytes::from(format!("<{seq}>"))
    }

    const LIMITS: Limits = Limits {
        bytes: 1 << 20,
        events: 3,
    };

    fn seqs(q: &OutQueue) -> Vec<u64> {
        q.queue
            .iter()
            .flat_map(|e| match &e.content {
                Content::Control => Vec::new(),
                Content::Event(event) => vec![event.seq],
                Content::Run(run) => run.events.iter().map(|e| e.seq).collect(),
            })
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

    #[test]
    fn drop_oldest_keeps_the_newest_and_records_the_gap() {
        let mut q = OutQueue::default();
        for seq in 1..=3 {
            assert_eq!(
                q.push_event(bytes_of(seq), &event(seq, "t", None), Policy::DropOldest, LIMITS),
                Pushed::Queued { dropped: 0 }
            );
        }
        assert_eq!(
            q.push_event(bytes_of(4), &event(4, "t", None), Policy::DropOldest, LIMITS),
            Pushed::Queued { dropped: 1 }
        );
        assert_eq!(
            q.push_event(bytes_of(5), &event(5, "t", None), Policy::DropOldest, LIMITS),
            Pushed::Queued { dropped: 1 }
        );
        assert_eq!(seqs(&q), vec![3, 4, 5]);
        let gaps = q.take_gaps();
        assert_eq!(gaps.len(), 1);
        assert_eq!((gaps[0].first.seq, gaps[0].last.seq, gaps[0].dropped), (1, 2, 2));
        assert!(!q.has_gaps());
    }

    #[test]
    fn a_single_entry_is_sent_plainly_and_stays_pinned() {
        let mut q = OutQueue::default();
        q.push_event(bytes_of(1), &event(1, "t", None), Policy::DropOldest, LIMITS);
        let (ptr, len) = q.prepare_single().expect("one entry");
        // SAFETY: the pointer is into the queued entry, alive until `sent`.
        let sending = unsafe { std::slice::from_raw_parts(ptr, len as usize) };
        assert_eq!(sending, &bytes_of(1)[..]);
        // In flight: a newcomer under drop-oldest cannot push it out.
        for seq in 2..=8 {
            q.push_event(bytes_of(seq), &event(seq, "t", None), Policy::DropOldest, LIMITS);
        }
        assert_eq!(seqs(&q)[0], 1);
        q.sent(2);
        assert_eq!(q.prepare_single(), None, "several entries go by SendMsg");
        let mut lone = OutQueue::default();
        lone.push_event(bytes_of(9), &event(9, "t", None), Policy::DropOldest, LIMITS);
        let _ = lone.prepare_single();
        lone.sent(1);
        let (ptr, len) = lone.prepare_single().expect("the rest of one entry");
        // SAFETY: as above.
        let rest = unsafe { std::slice::from_raw_parts(ptr, len as usize) };
        assert_eq!(rest, &bytes_of(9)[1..]);
    }

    #[test]
    fn entries_in_flight_are_never_dropped() {
        let mut q = OutQueue::default();
        for seq in 1..=3 {
            q.push_event(bytes_of(seq), &event(seq, "t", None), Policy::DropOldest, LIMITS);
        }
        let _ = gathered(&mut q);
        // All three are in the kernel's hands: the newcomer is the one lost.
        assert_eq!(
            q.push_event(bytes_of(4), &event(4, "t", None), Policy::DropOldest, LIMITS),
            Pushed::Refused
        );
        q.sent(3); // "<1>" only; the send is over, nothing is in flight
        assert_eq!(
            q.push_event(bytes_of(5), &event(5, "t", None), Policy::DropOldest, LIMITS),
            Pushed::Queued { dropped: 0 }
        );
        assert_eq!(
            q.push_event(bytes_of(6), &event(6, "t", None), Policy::DropOldest, LIMITS),
            Pushed::Queued { dropped: 1 }
        );
        assert_eq!(seqs(&q), vec![3, 5, 6]);
        let gap = &q.take_gaps()[0];
        assert_eq!(
            (gap.first.seq, gap.last.seq, gap.dropped),
            (2, 4, 2),
            "4 refused, 2 dropped"
        );
    }

    #[test]
    fn drop_newest_refuses_and_counts() {
        let mut q = OutQueue::default();
        for seq in 1..=3 {
            q.push_event(bytes_of(seq), &event(seq, "t", None), Policy::DropNewest, LIMITS);
        }
        for seq in 4..=6 {
            assert_eq!(
                q.push_event(bytes_of(seq), &event(seq, "t", None), Policy::DropNewest, LIMITS),
                Pushed::Refused
            );
        }
        assert_eq!(seqs(&q), vec![1, 2, 3]);
        let gap = &q.take_gaps()[0];
        assert_eq!((gap.first.seq, gap.last.seq, gap.dropped), (4, 6, 3));
    }

    #[test]
    fn coalesce_replaces_by_topic_and_key_and_falls_back_without_a_key() {
        let mut q = OutQueue::default();
        q.push_event(
            bytes_of(1),
            &event(1, "px", Some("AAPL")),
            Policy::Coalesce,
            LIMITS,
        );
        q.push_event(
            bytes_of(2),
            &event(2, "px", Some("MSFT")),
            Policy::Coalesce,
            LIMITS,
        );
        assert_eq!(
            q.push_event(
                bytes_of(3),
                &event(3, "px", Some("AAPL")),
                Policy::Coalesce,
                LIMITS
            ),
            Pushed::Coalesced
        );
        assert_eq!(
            q.push_event(
                bytes_of(4),
                &event(4, "other", Some("AAPL")),
                Policy::Coalesce,
                LIMITS
            ),
            Pushed::Queued { dropped: 0 }
        );
        assert_eq!(
            seqs(&q),
            vec![2, 3, 4],
            "AAPL's 1 is gone and 3 joined the back: id order holds"
        );
        assert!(!q.has_gaps(), "coalescing is not a gap");
        assert_eq!(
            q.push_event(bytes_of(5), &event(5, "px", None), Policy::Coalesce, LIMITS),
            Pushed::Queued { dropped: 1 }
        );
        assert_eq!(seqs(&q), vec![3, 4, 5]);
        assert_eq!(q.bytes(), 9, "byte count follows replacements and drops");
    }

    #[test]
    fn one_event_larger_than_the_limit_still_goes_to_an_empty_queue() {
        let mut q = OutQueue::default();
        let limits = Limits { bytes: 2, events: 10 };
        assert_eq!(
            q.push_event(bytes_of(1), &event(1, "t", None), Policy::DropOldest, limits),
            Pushed::Queued { dropped: 0 }
        );
        assert_eq!(
            q.push_event(bytes_of(2), &event(2, "t", None), Policy::DropOldest, limits),
            Pushed::Queued { dropped: 1 }
        );
        assert_eq!(seqs(&q), vec![2]);
    }

    #[test]
    fn disconnect_is_reported_not_applied() {
        let mut q = OutQueue::default();
        for seq in 1..=3 {
            q.push_event(bytes_of(seq), &event(seq, "t", None), Policy::Disconnect, LIMITS);
        }
        assert_eq!(
            q.push_event(bytes_of(4), &event(4, "t", None), Policy::Disconnect, LIMITS),
            Pushed::Disconnect
        );
        assert_eq!(q.drop_all_events(), 3);
        assert!(q.is_empty());
    }

    #[test]
    fn control_bytes_survive_every_policy_and_byte_limits_hold() {
        let mut q = OutQueue::default();
        let limits = Limits {
            bytes: 9,
            events: 100,
        };
        q.push(Bytes::from_static(b"PONG"));
        for seq in 1..=10 {
            q.push_event(bytes_of(seq), &event(seq, "t", None), Policy::DropOldest, limits);
            assert!(q.event_bytes() <= 9);
        }
        assert_eq!(
            seqs(&q),
            vec![9, 10],
            "\"<9>\" and \"<10>\" are 7 bytes; one more would exceed 9"
        );
        assert_eq!(&q.queue[0].bytes[..], b"PONG");
        let gap = &q.take_gaps()[0];
        assert_eq!(gap.dropped, 8);
    }

    #[test]
    fn pongs_go_ahead_of_queued_bytes_and_a_flood_keeps_a_bounded_number() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"EVENT"));
        let mut queued = 0isize;
        for i in 0..10_000u32 {
            queued += q.push_pong(&[0x8A, 4, b'p', b'0' + (i % 10) as u8, b'x', b'x']);
        }
        assert_eq!(
            queued as usize,
            PONGS_WAITING_MAX * 6,
            "at most {PONGS_WAITING_MAX} pongs wait"
        );
        assert_eq!(q.bytes(), 5 + PONGS_WAITING_MAX * 6);
        let out = gathered(&mut q);
        assert!(out.ends_with(b"EVENT"), "pongs first");
        // The first fifteen are answered one for one; the last one waiting is the newest.
        assert_eq!(&out[..6], &[0x8A, 4, b'p', b'0', b'x', b'x']);
        let last = &out[(PONGS_WAITING_MAX - 1) * 6..PONGS_WAITING_MAX * 6];
        assert_eq!(
            last,
            &[0x8A, 4, b'p', b'9', b'x', b'x'],
            "9999 was the newest ping"
        );
        q.sent(out.len());
        assert!(q.is_empty());
    }

    #[test]
    fn pongs_never_split_a_half_sent_entry() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"0123456789"));
        let _ = gathered(&mut q);
        q.sent(4);
        q.push_pong(b"PONG");
        assert_eq!(gathered(&mut q), b"456789PONG");
    }

    #[test]
    fn truncating_keeps_what_is_in_flight_and_forgets_the_rest() {
        let mut q = OutQueue::default();
        for seq in 1..=3 {
            q.push_event(bytes_of(seq), &event(seq, "t", None), Policy::DropOldest, LIMITS);
        }
        assert!(q.prepare_single().is_none(), "three entries go by SendMsg");
        let msg = q.prepare();
        // SAFETY: `prepare` just pointed the msghdr at its iovecs.
        assert_eq!(unsafe { (*msg).msg_iovlen }, 3);
        q.sent(1); // "<1>" partly: in flight stays pinned
        q.push(Bytes::from_static(b"REPLY"));
        q.push_pong(b"PONG");
        let dropped = q.truncate_unsent();
        assert_eq!(dropped, 3 + 3 + 5 + 4, "<2>, <3>, the reply and the pong");
        assert_eq!(q.bytes(), 2, "the rest of <1>");
        assert_eq!(q.events(), 1);
        assert!(!q.has_gaps());
    }

    #[test]
    fn a_cleared_queue_gives_back_what_a_flood_grew() {
        let mut q = OutQueue::default();
        for _ in 0..10_000 {
            q.push(Bytes::from_static(b"x"));
        }
        q.clear();
        assert!(q.queue.capacity() <= POOLED_ENTRIES_MAX);
        assert!(q.is_empty());
    }

    /// Every unsent byte in the queue, in order.
    fn unsent(q: &OutQueue) -> Vec<u8> {
        q.queue
            .iter()
            .enumerate()
            .flat_map(|(i, e)| e.bytes[if i == 0 { q.offset } else { 0 }..].to_vec())
            .collect()
    }

    fn gap_summary(q: &mut OutQueue) -> Vec<(String, u64, u64, u64)> {
        q.take_gaps()
            .iter()
            .map(|g| (g.first.topic.to_string(), g.first.seq, g.last.seq, g.dropped))
            .collect()
    }

    #[test]
    fn a_run_queued_whole_is_the_same_as_its_events_queued_one_by_one() {
        // Against a queue fed event by event: runs of 1-5 events of two topics, some
        // keyed, short sends, under each policy, with limits small enough that the policy
        // acts often, including on queued runs.
        for policy in [Policy::DropOldest, Policy::DropNewest, Policy::Coalesce] {
            let limits = Limits { bytes: 40, events: 6 };
            let (mut one, mut runs) = (OutQueue::default(), OutQueue::default());
            let mut rng = 0x2545_f491_4f6c_dd1du64;
            let mut next = |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            let (mut seq, mut whole) = (0, 0);
            for step in 0..3000 {
                if next(3) > 0 {
                    let topic = if next(2) == 0 { "a" } else { "b" };
                    let events: Vec<Arc<Event>> = (0..1 + next(5))
                        .map(|_| {
                            seq += 1;
                            let key = [None, None, Some("x"), Some("y")][next(4) as usize];
                            event(seq, topic, key)
                        })
                        .collect();
                    let run = Arc::new(Run::new(&events, |e| bytes_of(e.seq)));
                    let pushed: Vec<Pushed> = events
                        .iter()
                        .map(|e| one.push_event(bytes_of(e.seq), e, policy, limits))
                        .collect();
                    if runs.push_run(&run, policy, limits) {
                        whole += 1;
                        assert!(
                            pushed.iter().all(|p| *p == Pushed::Queued { dropped: 0 }),
                            "step {step}: a run is queued whole only when no event of it makes the policy act: {pushed:?}"
                        );
                    } else {
                        for (e, p) in events.iter().zip(&pushed) {
                            assert_eq!(
                                runs.push_event(bytes_of(e.seq), e, policy, limits),
                                *p,
                                "step {step}"
                            );
                        }
                    }
                } else if !one.is_empty() {
                    let a = gathered(&mut one);
                    let b = gathered(&mut runs);
                    assert_eq!(a[..], b[..a.len().min(b.len())], "step {step}");
                    let n = 1 + next(a.len().min(b.len()) as u64) as usize;
                    one.sent(n);
                    runs.sent(n);
                }
                assert_eq!(unsent(&one), unsent(&runs), "step {step}: {policy:?}");
                assert_eq!(seqs(&one), seqs(&runs), "step {step}");
                assert_eq!(
                    (one.bytes(), one.event_bytes(), one.events()),
                    (runs.bytes(), runs.event_bytes(), runs.events()),
                    "step {step}"
                );
                if next(4) == 0 {
                    assert_eq!(gap_summary(&mut one), gap_summary(&mut runs), "step {step}");
                }
            }
            assert!(whole > 50, "{policy:?}: runs were queued whole {whole} times");
        }
    }

    #[test]
    fn a_short_send_inside_a_run_pins_only_the_half_sent_event() {
        let mut q = OutQueue::default();
        let events: Vec<Arc<Event>> = (1..=3).map(|seq| event(seq, "t", None)).collect();
        let run = Arc::new(Run::new(&events, |e| bytes_of(e.seq)));
        assert!(q.push_run(&run, Policy::DropOldest, LIMITS));
        assert_eq!(q.events(), 3);
        assert_eq!(gathered(&mut q), b"<1><2><3>");
        q.sent(4); // "<1>" and the "<" of "<2>"
        assert_eq!(seqs(&q), vec![2, 3]);
        // "<3>" is not in flight: a newcomer over the limit of three pushes it out.
        q.push_event(bytes_of(4), &event(4, "t", None), Policy::DropOldest, LIMITS);
        assert_eq!(
            q.push_event(bytes_of(5), &event(5, "t", None), Policy::DropOldest, LIMITS),
            Pushed::Queued { dropped: 1 }
        );
        assert_eq!(seqs(&q), vec![2, 4, 5]);
        assert_eq!(gathered(&mut q), b"2><4><5>");
        let gap = &q.take_gaps()[0];
        assert_eq!((gap.first.seq, gap.last.seq, gap.dropped), (3, 3, 1));
    }

    #[test]
    fn a_run_that_would_make_the_policy_act_is_refused_whole() {
        let mut q = OutQueue::default();
        let events: Vec<Arc<Event>> = (1..=4).map(|seq| event(seq, "t", None)).collect();
        let run = Arc::new(Run::new(&events, |e| bytes_of(e.seq)));
        assert!(
            !q.push_run(&run, Policy::DropOldest, LIMITS),
            "four events, room for three"
        );
        let keyed: Vec<Arc<Event>> = (1..=2).map(|seq| event(seq, "t", Some("k"))).collect();
        let run = Arc::new(Run::new(&keyed, |e| bytes_of(e.seq)));
        assert!(
            !q.push_run(&run, Policy::Coalesce, LIMITS),
            "the second supersedes the first"
        );
        assert!(
            q.push_run(&run, Policy::DropOldest, LIMITS),
            "no coalescing under drop-oldest"
        );
        let single = Arc::new(Run::new(&events[..1], |e| bytes_of(e.seq)));
        assert!(
            !q.push_run(&single, Policy::DropOldest, LIMITS),
            "a run of one is an event"
        );
        assert_eq!(q.events(), 2);
    }
}
