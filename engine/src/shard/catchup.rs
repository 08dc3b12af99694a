//! Resuming clients, a page at a time.
//!
//! A client that reconnects with a Last-Event-ID (or polls with `after`) is owed every
//! retained event of its topics since that id: up to the history's per-topic budget times
//! its topics, far more than its queue may hold. So a loop queues one page (half the
//! client's queue limits, see [`Shard::page_limits`]) and the next one once the client has
//! read most of it. While a connection catches up, live events pass it by: they are in the
//! history too, and the page that reaches the loop's delivery cursor
//! ([`Shard::delivered_upto`]) ends the catch-up, after which live delivery continues from
//! that cursor. A resuming client thus never holds more than a page plus its replies, and
//! still gets every event once, in order.
//!
//! If the history evicts part of the range before a slow resumer reads it, the client is
//! told with a `ringcast.gap` notice naming the lost range (`topic` and `dropped` null, as
//! for a ring overrun), ahead of the events that follow it. A long-poll answers with one
//! page and a `next` cursor at its last event; the client's next poll gets the next page.
use std::sync::Arc;

use super::{bump, bump_by, control, Missed, Reset, Shard};
use crate::conn::outq::Pushed;
use crate::conn::{flags, Kind, State};
use crate::event::{Event, LastId};
use crate::proto::json;
use crate::ring::history::PageLimits;

impl Shard {
    /// One page of a resume: half the client's queue limits, so that the next page fits
    /// beside what is left of the last one.
    pub(super) fn page_limits(&self) -> PageLimits {
        let queue = self.shared.config.queue_limits();
        PageLimits {
            events: (queue.events / 2).max(1),
            bytes: (queue.bytes / 2).max(1),
        }
    }

    /// The newest sequence number this loop has delivered to its live subscribers: events
    /// refilled from the history after an overrun are still to come.
    pub(super) fn delivered_upto(&self) -> u64 {
        self.refill
            .front()
            .map_or(self.next_seq - 1, |event| event.seq - 1)
    }

    /// Queues what a client resuming from `last` missed: a `ringcast.reset` when the
    /// history cannot honour `last`, then the first page; the next pages follow as the
    /// client reads (see [`Shard::next_page`]). False when the client was failed instead
    /// (it exceeded its cap): the caller must leave the connection alone.
    pub(super) fn replay(&mut self, index: u32, topics: &[String], last: &[u8], kind: Kind) -> bool {
        let missed = self.missed_since(topics, last, self.page_limits());
        if let Some(reset) = &missed.reset {
            let bytes = control(kind, "ringcast.reset", Some(&reset.id), &reset.data);
            if !self.enqueue(index, bytes) {
                return false;
            }
        }
        if !self.queue_page(index, &missed.events, kind) {
            return false;
        }
        if missed.more {
            let after = missed.events.last().expect("a page with more has events").seq;
            self.conns[index as usize].flags |= flags::CATCHING_UP;
            self.catchup.insert(index, after);
        }
        true
    }

    /// Queues the next page of a catching-up client once it has read most of the last:
    /// called as its sends complete.
    pub(super) fn next_page(&mut self, index: u32) {
        let limits = self.page_limits();
        let conn = &self.conns[index as usize];
        let read_enough = conn
            .out
            .as_ref()
            .is_none_or(|q| q.events() <= limits.events && q.event_bytes() <= limits.bytes);
        if !read_enough || !matches!(conn.state, State::Stream | State::Ws) {
            return;
        }
        let kind = conn.kind;
        let Some(&after) = self.catchup.get(&index) else {
            return;
        };
        let upto = self.delivered_upto();
        let page = {
            let names: Vec<&str> = self.subs.topics_of(&self.conns, index).collect();
            let history = self
                .shared
                .history
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            history.page(&names, after, upto, limits, std::time::Instant::now())
        };
        if !page.complete {
            // Evicted before this client read it: say which range is gone.
            let lost_upto = page.events.first().map_or(upto, |e| e.seq - 1);
            if lost_upto > after {
                bump(&self.counters.replay_gaps);
                let epoch = self.shared.epoch;
                let data = format!(
                    "{{\"topic\":null,\"dropped\":null,\"first_id\":{},\"last_id\":{}}}",
                    json::string(&epoch.id(after + 1)),
                    json::string(&epoch.id(lost_upto)),
                );
                if !self.enqueue(index, control(kind, "ringcast.gap", None, &data)) {
                    return;
                }
            }
        }
        bump_by(&self.counters.replayed, page.events.len() as u64);
        if !self.queue_page(index, &page.events, kind) {
            return;
        }
        match page.events.last() {
            Some(last) if page.more => {
                self.catchup.insert(index, last.seq);
            }
            _ => self.end_catchup(index),
        }
        self.flush(index);
    }

    /// The connection reads live events again (caught up, or closing).
    pub(super) fn end_catchup(&mut self, index: u32) {
        if let Some(conn) = self.conns.get_mut(index as usize) {
            if conn.has_flag(flags::CATCHING_UP) {
                conn.flags &= !flags::CATCHING_UP;
                self.catchup.remove(&index);
            }
        }
    }

    /// Queues replayed events as events, so the queue's policy and cap apply to them as
    /// to live ones. False when the client was failed instead.
    fn queue_page(&mut self, index: u32, events: &[Arc<Event>], kind: Kind) -> bool {
        let limits = self.shared.config.queue_limits();
        let cap = self.shared.config.out_queue_bytes_max;
        for event in events {
            let bytes = event.bytes_for(kind);
            let conn = &mut self.conns[index as usize];
            if conn.queued_bytes() + bytes.len() > cap {
                self.overflow(index);
                return false;
            }
            let policy = self.shared.config.policy_for(&event.topic);
            let out = conn
                .out
                .get_or_insert_with(|| self.pool.pop().unwrap_or_default());
            let before = out.bytes();
            let pushed = out.push_event(bytes, event, policy, limits);
            self.queued += out.bytes() as i64 - before as i64;
            match pushed {
                Pushed::Queued { dropped } => bump_by(&self.counters.dropped, dropped as u64),
                Pushed::Refused => bump(&self.counters.dropped),
                Pushed::Coalesced => bump(&self.counters.coalesced),
                Pushed::Disconnect => {
                    bump(&self.counters.slow_disconnected);
                    self.disconnect_slow(index, &event.topic);
                    return false;
                }
            }
        }
        true
    }

    /// What a client that last saw `last` missed on `topics`, up to what this loop has
    /// delivered, at most a page of it: the retained events after it, or, when the history
    /// cannot say (an id from another epoch, a malformed one, one older than what is
    /// retained), a reset and the oldest retained.
    pub(super) fn missed_since(&mut self, topics: &[String], last: &[u8], limits: PageLimits) -> Missed {
        let epoch = self.shared.epoch;
        let mut parsed = epoch.parse(last);
        if let LastId::Seq(seen) = parsed {
            if seen >= self.next_seq {
                // Another loop may already have delivered `seen`; catch up so that live
                // events after it come from this loop's cursor, not a replay.
                let broadcast = Arc::clone(&self.shared.broadcast);
                self.catch_up(&broadcast);
                if seen > self.delivered_upto() {
                    parsed = LastId::Malformed;
                }
            }
        }
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let upto = self.delivered_upto();
        let now = std::time::Instant::now();
        let history = self
            .shared
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (reason, replay) = match parsed {
            LastId::Seq(seen) => {
                let r = history.page(&names, seen, upto, limits, now);
                if r.complete {
                    (None, r)
                } else {
                    (Some("expired"), history.page(&names, 0, upto, limits, now))
                }
            }
            LastId::OtherEpoch => (Some("unknown-epoch"), history.page(&names, 0, upto, limits, now)),
            LastId::Malformed => (Some("malformed-id"), history.page(&names, 0, upto, limits, now)),
        };
        drop(history);
        let reset = reason.map(|reason| {
            bump(&self.counters.resets);
            let oldest = replay.events.first().map(|e| e.seq);
            let reset_seq = oldest.map_or(upto, |s| s - 1);
            Reset {
                id: epoch.id(reset_seq),
                data: super::reset_json(reason, last, oldest.map(|s| epoch.id(s))),
            }
        });
        bump_by(&self.counters.replayed, replay.events.len() as u64);
        Missed {
            reset,
            events: replay.events,
            more: replay.more,
        }
    }
}
