//! Replay runs: a topic's retained events encoded for one transport as one contiguous
//! buffer, shared by every client resuming on that topic. A resuming client is queued a
//! slice of it (one refcounted `Bytes`, one iovec) instead of one entry per event, so a
//! page costs a binary search and a slice however many events it holds, and a reconnect
//! storm costs about what live delivery of the same events would.
//!
//! A run is built from the history up to this loop's delivery cursor, and rebuilt at most
//! once a tick (a client that has read all of it meanwhile gets the few newer events from
//! the history, event by event). The cache holds at most [`RUNS_MAX`] runs, each at most
//! one topic's history (`--history-bytes`); a slice queued to a client keeps its run's
//! buffer alive until it is sent, so what runs pin is bounded by the rebuild rate (one per
//! topic and transport per tick) times how long a client may hold unsent bytes (the write
//! stall deadline).
//!
//! Must never: serve a range the history could not have served (its `lost_upto` is the
//! history's word on completeness at build time), or end a catch-up before the cursor.
use bytes::Bytes;

use crate::proto::Kind;
use crate::ring::history::PageLimits;

/// Runs kept at once, least recently used replaced first.
pub(super) const RUNS_MAX: usize = 8;

/// One topic's retained events, encoded for one transport, end to end.
pub(super) struct Run {
    pub(super) topic: Box<str>,
    pub(super) kind: Kind,
    /// This loop's delivery cursor when the run was built.
    pub(super) upto: u64,
    /// The highest sequence number of the topic the history had lost at build time: a
    /// resume after `after` is complete iff `lost_upto <= after`.
    pub(super) lost_upto: u64,
    /// The tick the run was built in.
    pub(super) built: u32,
    /// The tick it last served a page in.
    pub(super) used: u32,
    bytes: Bytes,
    /// Per event, in order: its sequence number, where its bytes end in `bytes`, and the
    /// history's cost of it and every event before it (pages are bounded by cost, as
    /// [`History::page`](crate::ring::history::History::page) bounds them).
    seqs: Vec<u64>,
    ends: Vec<usize>,
    costs: Vec<usize>,
}

/// One page cut from a run.
#[derive(Debug)]
pub(super) struct Slice {
    pub(super) bytes: Bytes,
    pub(super) events: usize,
    pub(super) first: u64,
    pub(super) last: u64,
    /// The run has events after this page.
    pub(super) more_in_run: bool,
}

impl Run {
    /// A run of `events` (sequence number, history cost and encoding each, in order).
    pub(super) fn new(
        topic: &str,
        kind: Kind,
        upto: u64,
        lost_upto: u64,
        tick: u32,
        events: impl Iterator<Item = (u64, usize, Bytes)>,
    ) -> Run {
        let mut buf = Vec::new();
        let mut seqs = Vec::new();
        let mut ends = Vec::new();
        let mut costs = Vec::new();
        let mut cost_sum = 0;
        for (seq, cost, bytes) in events {
            buf.extend_from_slice(&bytes);
            cost_sum += cost;
            seqs.push(seq);
            ends.push(buf.len());
            costs.push(cost_sum);
        }
        Run {
            topic: topic.into(),
            kind,
            upto,
            lost_upto,
            built: tick,
            used: tick,
            bytes: Bytes::from(buf),
            seqs,
            ends,
            costs,
        }
    }

    /// The events after `after` that fit `limits` (at least one, however large; bytes
    /// counted as the history's cost), or `None` when the run holds none after it.
    pub(super) fn page(&self, after: u64, limits: PageLimits) -> Option<Slice> {
        let start = self.seqs.partition_point(|&s| s <= after);
        if start >= self.seqs.len() {
            return None;
        }
        let begin = if start == 0 { 0 } else { self.ends[start - 1] };
        let spent = if start == 0 { 0 } else { self.costs[start - 1] };
        let most = start + limits.events.max(1).min(self.seqs.len() - start);
        let fit = self.costs[start..most].partition_point(|&cost| cost - spent <= limits.bytes);
        let end = start + fit.max(1);
        Some(Slice {
            bytes: self.bytes.slice(begin..self.ends[end - 1]),
            events: end - start,
            first: self.seqs[start],
            last: self.seqs[end - 1],
            more_in_run: end < self.seqs.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seqs: &[u64]) -> Run {
        // Each event's cost is its length, as if encodings were all it kept.
        let events = seqs.iter().map(|&s| {
            let bytes = Bytes::from(format!("<{s}>"));
            (s, bytes.len(), bytes)
        });
        Run::new("t", Kind::Sse, 100, 0, 0, events)
    }

    fn limits(events: usize, bytes: usize) -> PageLimits {
        PageLimits { events, bytes }
    }

    #[test]
    fn pages_are_slices_of_the_events_after_the_id() {
        let r = run(&[3, 5, 8, 13]);
        let all = limits(100, 1 << 20);
        let p = r.page(0, all).expect("events after 0");
        assert_eq!(
            (&p.bytes[..], p.events, p.first, p.last, p.more_in_run),
            (&b"<3><5><8><13>"[..], 4, 3, 13, false)
        );
        let p = r.page(5, all).expect("events after 5");
        assert_eq!(&p.bytes[..], b"<8><13>");
        let p = r.page(6, all).expect("6 is between events");
        assert_eq!(&p.bytes[..], b"<8><13>");
        assert!(r.page(13, all).is_none() && r.page(99, all).is_none());
    }

    #[test]
    fn pages_stop_at_the_limits_and_always_hold_one_event() {
        let r = run(&[3, 5, 8, 13]);
        let p = r.page(0, limits(2, 1 << 20)).expect("events");
        assert_eq!((&p.bytes[..], p.last, p.more_in_run), (&b"<3><5>"[..], 5, true));
        let p = r.page(0, limits(100, 7)).expect("events");
        assert_eq!(
            (&p.bytes[..], p.more_in_run),
            (&b"<3><5>"[..], true),
            "6 bytes fit in 7, 9 do not"
        );
        let p = r.page(5, limits(100, 1)).expect("events");
        assert_eq!(
            (&p.bytes[..], p.events),
            (&b"<8>"[..], 1),
            "one event always fits"
        );
        // Paging through with any limits yields every event once, in order.
        for events in 1..=5 {
            for bytes in 1..=14 {
                let (mut after, mut got) = (0, Vec::new());
                while let Some(p) = r.page(after, limits(events, bytes)) {
                    got.extend_from_slice(&p.bytes);
                    after = p.last;
                }
                assert_eq!(got, b"<3><5><8><13>", "limits {events} events, {bytes} bytes");
            }
        }
    }

    #[test]
    fn an_empty_run_serves_nothing() {
        assert!(run(&[]).page(0, limits(10, 10)).is_none());
    }
}
