//! Resuming clients, a page at a time, from the local history or, in a cluster, from the
//! stream.
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
//! ```text
//!            resume --local page whole--> Local --page reaches the cursor--> live
//!              |  \                        |  ^
//!   (cluster)  |   `--history lacks it-->  |  | page read, more to come
//!   id ahead   |       Fetching <----------'  |
//!   of this    |          `-------------------'
//!   node       `--> Ahead --this node delivered the id--> Local
//! ```
//!
//! On a single node, a range the history evicted before a slow resumer read it is told
//! with a `ringcast.gap` notice naming the lost range (`topic` and `dropped` null, as for a
//! ring overrun), ahead of the events that follow it. In a cluster the history is only a
//! cache in front of the stream: what it lacks (events from before this node started, or
//! evicted here) is asked of the backplane thread, which reads it from JetStream and
//! proves it whole or not (see `backplane::proof`); a resume the stream cannot honour gets
//! `ringcast.reset` and everything retained, as on a single node. A client whose id this
//! node has not delivered yet (another node was faster) waits until it has.
//!
//! A long-poll answers with one page and a `next` cursor at its last event; the client's
//! next poll gets the next page. In a cluster a poll the stream must answer is held until
//! it does.
use std::sync::Arc;

use super::{bump, bump_by, control, Missed, Reset, Shard};
use crate::backplane::{FetchRequest, Fetched, Request};
use crate::conn::outq::Pushed;
use crate::conn::{flags, State};
use crate::event::{Event, LastId};
use crate::proto::json;
use crate::proto::Kind;
use crate::ring::history::{PageLimits, Retained};

/// A connection catching up (flag `CATCHING_UP`).
pub(super) struct CatchUp {
    /// The sequence number of the last event queued to the client, or the client's id.
    after: u64,
    phase: Phase,
    /// The tick the phase began.
    since: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Paging from the local history as the client reads.
    Local,
    /// Waiting for the stream's answer to a fetch.
    Fetching(Fetch),
    /// Waiting for this node to deliver the client's id.
    Ahead,
}

/// What a fetch is for.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Fetch {
    /// The client's own id: a hole here means the id cannot be honoured.
    initial: bool,
    /// The id could not be honoured: this is everything retained, behind a reset.
    reset: Option<&'static str>,
    /// A held poll, answered with the page.
    poll: bool,
}

/// Where a resume is answered from.
pub(super) enum Resume {
    /// The local history: a page, after a reset when the id cannot be honoured.
    Local(Missed),
    /// The stream (cluster only), from `after`; `reset` when the id cannot be honoured.
    Stream { after: u64, reset: Option<&'static str> },
    /// The client has seen events this node has not delivered yet (cluster only).
    Ahead(u64),
}

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
        self.refill.front().map_or(self.ring_seq, |event| event.seq - 1)
    }

    /// Queues what a client resuming from `last` missed: a `ringcast.reset` when it cannot
    /// be honoured, then the first page; the next pages follow as the client reads (see
    /// [`Shard::next_page`]). False when the client was failed instead (it exceeded its
    /// cap): the caller must leave the connection alone.
    pub(super) fn replay(&mut self, index: u32, topics: &[String], last: &[u8], kind: Kind) -> bool {
        if let [topic] = topics {
            if let Some(done) = self.replay_run(index, topic, last, kind) {
                return done;
            }
        }
        // Already subscribed: live events the loop delivers while the resume is worked out
        // (`resume_from` may catch the loop up) pass this client by; the replay has them.
        self.conns[index as usize].flags |= flags::CATCHING_UP;
        let resume = self.resume_from(topics, last, self.page_limits());
        self.conns[index as usize].flags &= !flags::CATCHING_UP;
        let missed = match resume {
            Resume::Local(missed) => missed,
            Resume::Stream { after, reset } => {
                let fetch = Fetch {
                    initial: reset.is_none(),
                    reset,
                    poll: false,
                };
                self.start_catchup(index, after, Phase::Fetching(fetch), last);
                return true;
            }
            Resume::Ahead(seen) => {
                self.start_catchup(index, seen, Phase::Ahead, last);
                return true;
            }
        };
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
            self.start_catchup(index, after, Phase::Local, last);
        }
        true
    }

    /// Holds a poll whose resume the stream must answer (cluster only): it is answered
    /// when the stream's page arrives, or empty at its deadline.
    pub(super) fn hold_poll_for_stream(
        &mut self,
        index: u32,
        after: u64,
        reset: Option<&'static str>,
        last: &[u8],
    ) {
        let fetch = Fetch {
            initial: reset.is_none(),
            reset,
            poll: true,
        };
        self.start_catchup(index, after, Phase::Fetching(fetch), last);
    }

    /// Holds a poll whose cursor this node has not delivered yet (cluster only), until it
    /// has.
    pub(super) fn hold_poll_until(&mut self, index: u32, seen: u64, last: &[u8]) {
        self.start_catchup(index, seen, Phase::Ahead, last);
    }

    /// A held poll's cursor has been delivered here: it is answered with what followed,
    /// or, with nothing yet, waits for its topics' next event like any long-poll.
    fn poll_caught_up(&mut self, index: u32, after: u64) {
        self.end_catchup(index);
        let topics = self.poll_topics.remove(&index).unwrap_or_default();
        let page = {
            let names: Vec<&str> = topics.iter().map(|t| &**t).collect();
            let history = self
                .shared
                .history
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            history.page(&names, after, self.delivered_upto(), self.page_limits(), self.now)
        };
        if let Some(last) = page.events.last() {
            let body = super::poll::poll_body(&page.events, &last.id, None);
            return self.end_poll(index, &body);
        }
        for topic in &topics {
            self.subs.add(&mut self.conns, index, topic);
        }
    }

    fn start_catchup(&mut self, index: u32, after: u64, phase: Phase, last: &[u8]) {
        self.conns[index as usize].flags |= flags::CATCHING_UP;
        self.set_phase(index, after, phase);
        match phase {
            Phase::Fetching(fetch) => {
                if fetch.reset.is_some() {
                    self.reset_ids.insert(index, last.to_vec());
                }
                self.fetch(index, after);
            }
            Phase::Ahead => {
                // Kept in case the id proves to be one the stream never issued.
                self.reset_ids.insert(index, last.to_vec());
                self.waiting.push(index);
            }
            Phase::Local => {}
        }
    }

    /// Asks the backplane for the connection's topics after `after`, up to what this loop
    /// has delivered.
    fn fetch(&mut self, index: u32, after: u64) {
        let Some(link) = &self.shared.backplane else {
            return;
        };
        let request = FetchRequest {
            shard: self.id,
            index,
            generation: self.conns[index as usize].generation,
            topics: self.topics_for(index),
            after,
            upto: self.delivered_upto(),
            limits: self.page_limits(),
        };
        if !link.backplane.request(Request::Fetch(request)) {
            // No backplane thread: the resume cannot be answered; the client hears a reset.
            self.end_catchup(index);
        }
    }

    /// The topics a catching-up connection is owed events of: its subscriptions, or for
    /// a held poll the topics it asked for.
    fn topics_for(&self, index: u32) -> Vec<Box<str>> {
        match self.poll_topics.get(&index) {
            Some(topics) => topics.clone(),
            None => self.subs.topics_of(&self.conns, index).map(Into::into).collect(),
        }
    }

    /// Queues the next page of a catching-up client once it has read most of the last:
    /// called as its sends complete, and as this loop delivers what an `Ahead` client saw.
    pub(super) fn next_page(&mut self, index: u32) {
        let limits = self.page_limits();
        let conn = &self.conns[index as usize];
        let read_enough = conn
            .out
            .as_ref()
            .is_none_or(|q| q.events() <= limits.events && q.bytes() <= limits.bytes);
        if !read_enough || !matches!(conn.state, State::Stream | State::Ws) {
            return;
        }
        let kind = conn.kind;
        let Some(&CatchUp { after, phase, .. }) = self.catchup.get(&index) else {
            return;
        };
        let upto = self.delivered_upto();
        match phase {
            Phase::Fetching(_) => return,
            Phase::Ahead if after > upto => return,
            Phase::Ahead | Phase::Local => {}
        }
        if self.next_page_from_run(index, after, kind) {
            return;
        }
        let page = {
            let names: Vec<&str> = self.subs.topics_of(&self.conns, index).collect();
            let history = self
                .shared
                .history
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            history.page(&names, after, upto, limits, self.now)
        };
        if !page.complete {
            if self.shared.backplane.is_some() {
                self.set_phase(index, after, Phase::Fetching(Fetch::default()));
                return self.fetch(index, after);
            }
            // Evicted before this client read it: say which range is gone.
            let lost_upto = page.events.first().map_or(upto, |e| e.seq - 1);
            if lost_upto > after && !self.tell_lost(index, kind, after + 1, lost_upto) {
                return;
            }
        }
        bump_by(&self.counters.replayed, page.events.len() as u64);
        if !self.queue_page(index, &page.events, kind) {
            return;
        }
        match page.events.last() {
            Some(last) if page.more => self.set_phase(index, last.seq, Phase::Local),
            _ => self.end_catchup(index),
        }
        self.flush(index);
    }

    /// A single-node resume on one topic, answered with a slice of the topic's run: the
    /// reset if the id cannot be honoured, then one page. `None` when the run holds
    /// nothing after the id (the client is about caught up, or the id is ahead of this
    /// loop's cursor): the event-by-event path answers then.
    fn replay_run(&mut self, index: u32, topic: &str, last: &[u8], kind: Kind) -> Option<bool> {
        if self.shared.backplane.is_some() {
            return None;
        }
        let epoch = self.shared.epoch;
        let upto = self.delivered_upto();
        let parsed = epoch.parse(last);
        let seen = match parsed {
            LastId::Seq(seen) if seen > upto => return None,
            LastId::Seq(seen) => seen,
            LastId::OtherEpoch | LastId::Malformed => 0,
        };
        let run = self.run_for(topic, kind);
        let complete = self.runs[run].lost_upto <= seen;
        let reason = match parsed {
            LastId::Seq(_) if complete => None,
            LastId::Seq(_) => Some("expired"),
            LastId::OtherEpoch => Some("unknown-epoch"),
            LastId::Malformed => Some("malformed-id"),
        };
        let after = if reason.is_some() { 0 } else { seen };
        let slice = self.runs[run].page(after, self.page_limits())?;
        if let Some(reason) = reason {
            bump(&self.counters.resets);
            let id = epoch.id(slice.first - 1);
            let data = super::reset_json(reason, last, Some(epoch.id(slice.first)));
            if !self.enqueue(index, control(kind, "ringcast.reset", Some(&id), &data)) {
                return Some(false);
            }
        }
        let run_upto = self.runs[run].upto;
        Some(self.queue_slice(index, slice, run_upto, last))
    }

    /// The next page of a single-node catch-up on one topic from the topic's run. False
    /// when the run holds nothing after `after`: the caller pages from the history.
    fn next_page_from_run(&mut self, index: u32, after: u64, kind: Kind) -> bool {
        if self.shared.backplane.is_some() {
            return false;
        }
        let topic = {
            let mut topics = self.subs.topics_of(&self.conns, index);
            match (topics.next(), topics.next()) {
                (Some(topic), None) => Box::<str>::from(topic),
                _ => return false,
            }
        };
        let run = self.run_for(&topic, kind);
        let Some(slice) = self.runs[run].page(after, self.page_limits()) else {
            return false;
        };
        if self.runs[run].lost_upto > after {
            // Evicted before this client read it: say which range is gone.
            let lost_upto = slice.first - 1;
            if lost_upto > after && !self.tell_lost(index, kind, after + 1, lost_upto) {
                return true;
            }
        }
        let run_upto = self.runs[run].upto;
        if self.queue_slice(index, slice, run_upto, &[]) {
            self.flush(index);
        }
        true
    }

    /// Queues `slice` of a run built up to `run_upto`, then goes on catching up after its
    /// last event, or ends the catch-up when that reaches this loop's cursor. False when
    /// the client was failed instead.
    fn queue_slice(&mut self, index: u32, slice: super::runs::Slice, run_upto: u64, last: &[u8]) -> bool {
        bump_by(&self.counters.replayed, slice.events as u64);
        if !self.enqueue(index, slice.bytes) {
            return false;
        }
        // A run built in an earlier tick may end before the cursor: the rest follows.
        let more = slice.more_in_run || run_upto < self.delivered_upto();
        let catching_up = self.conns[index as usize].has_flag(flags::CATCHING_UP);
        match (more, catching_up) {
            (true, true) => self.set_phase(index, slice.last, Phase::Local),
            (true, false) => self.start_catchup(index, slice.last, Phase::Local, last),
            (false, _) => self.end_catchup(index),
        }
        true
    }

    /// The index in `self.runs` of `topic`'s run for `kind`, built or rebuilt from the
    /// history when it is missing, or behind this loop's cursor and built in an earlier
    /// tick.
    fn run_for(&mut self, topic: &str, kind: Kind) -> usize {
        let upto = self.delivered_upto();
        let tick = self.tick;
        let found = self
            .runs
            .iter()
            .position(|r| r.kind == kind && *r.topic == *topic);
        if let Some(at) = found {
            let run = &mut self.runs[at];
            run.used = tick;
            if run.upto == upto || run.built == tick {
                return at;
            }
        }
        let (events, lost_upto) = {
            let history = self
                .shared
                .history
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            history.log_of(topic, upto, self.now)
        };
        let min = self.shared.config.ws_deflate_min_bytes;
        let deflate = &mut self.deflate;
        let encoded = events
            .iter()
            .map(|e| (e.seq, e.cost(), e.bytes_for(kind, deflate, min)));
        let run = super::runs::Run::new(topic, kind, upto, lost_upto, tick, encoded);
        let at = match found {
            Some(at) => at,
            None if self.runs.len() < super::runs::RUNS_MAX => {
                self.runs.push(run);
                return self.runs.len() - 1;
            }
            None => self
                .runs
                .iter()
                .enumerate()
                .max_by_key(|(_, r)| tick.wrapping_sub(r.used))
                .map_or(0, |(i, _)| i),
        };
        self.runs[at] = run;
        at
    }

    fn set_phase(&mut self, index: u32, after: u64, phase: Phase) {
        let since = self.tick;
        self.catchup.insert(index, CatchUp { after, phase, since });
    }

    /// Tells a client that events `first..=last` of its topics are gone. False when the
    /// client was failed instead.
    fn tell_lost(&mut self, index: u32, kind: Kind, first: u64, last: u64) -> bool {
        bump(&self.counters.replay_gaps);
        let epoch = self.shared.epoch;
        let data = format!(
            "{{\"topic\":null,\"dropped\":null,\"first_id\":{},\"last_id\":{}}}",
            json::string(&epoch.id(first)),
            json::string(&epoch.id(last)),
        );
        self.enqueue(index, control(kind, "ringcast.gap", None, &data))
    }

    /// Clients that were waiting on this loop's cursor: those it has now passed page on.
    /// An id this node has not reached within the backplane's timeout, and that the stream
    /// never stored as far as this node knows, is one the stream did not issue: the client
    /// gets a reset, as for a malformed id.
    pub(super) fn wake_waiting(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let upto = self.delivered_upto();
        let known = self.shared.backplane.as_ref().map_or(0, |l| {
            l.backplane
                .status
                .last_seq
                .load(std::sync::atomic::Ordering::Acquire)
        });
        let patience = self.clock.ticks_in(std::time::Duration::from_millis(
            self.shared.config.backplane_timeout_ms,
        ));
        // While the backplane is down nothing can be learned: patience starts again.
        let up = self
            .shared
            .backplane
            .as_ref()
            .is_some_and(|l| l.backplane.status.is_up());
        let tick = self.tick;
        let mut waiting = std::mem::take(&mut self.waiting);
        waiting.retain(|&index| {
            let Some(c) = self.catchup.get_mut(&index) else {
                return false;
            };
            if c.phase != Phase::Ahead {
                return false;
            }
            if c.after > upto {
                if !up {
                    c.since = tick;
                }
                if c.after <= known || tick.wrapping_sub(c.since) < patience {
                    return true;
                }
                bump(&self.counters.resets);
                let last = self.reset_ids.get(&index).cloned().unwrap_or_default();
                if self.poll_topics.contains_key(&index) {
                    self.hold_poll_for_stream(index, 0, Some("malformed-id"), &last);
                } else {
                    let fetch = Fetch {
                        initial: false,
                        reset: Some("malformed-id"),
                        poll: false,
                    };
                    self.start_catchup(index, 0, Phase::Fetching(fetch), &last);
                }
                return false;
            }
            let after = c.after;
            if self.poll_topics.contains_key(&index) {
                self.poll_caught_up(index, after);
            } else {
                self.set_phase(index, after, Phase::Local);
                self.next_page(index);
            }
            false
        });
        self.waiting.extend(waiting);
    }

    /// Acts on the backplane's answers to this loop's fetches.
    pub(super) fn deliver_fetched(&mut self) {
        let Some(link) = &self.shared.backplane else {
            return;
        };
        let answers = link.backplane.take_fetched(self.id);
        for fetched in answers {
            self.on_fetched(fetched);
        }
    }

    fn on_fetched(&mut self, f: Fetched) {
        let index = f.index;
        let live = self
            .conns
            .get(index as usize)
            .is_some_and(|c| c.generation == f.generation && c.has_flag(flags::CATCHING_UP));
        if !live {
            return;
        }
        let Some(&CatchUp {
            after,
            phase: Phase::Fetching(fetch),
            ..
        }) = self.catchup.get(&index)
        else {
            return;
        };
        if after != f.after {
            return;
        }
        if let Some(why) = &f.error {
            eprintln!(
                "ringcast: loop {}: a resume could not be read from the stream: {why}",
                self.id
            );
        }
        let whole = f.whole && f.error.is_none();
        if !whole && fetch.initial && fetch.reset.is_none() {
            // The client's id cannot be honoured: everything retained, behind a reset.
            bump(&self.counters.resets);
            let last = self.epoch_id_bytes(after);
            self.reset_ids.insert(index, last);
            let fetch = Fetch {
                initial: false,
                reset: Some("expired"),
                poll: fetch.poll,
            };
            self.set_phase(index, 0, Phase::Fetching(fetch));
            return self.fetch(index, 0);
        }
        let reset = fetch.reset.map(|reason| {
            let last = self.reset_ids.remove(&index).unwrap_or_default();
            let oldest = f.events.first().map(|e| e.seq);
            let reset_seq = oldest.map_or(f.upto, |s| s - 1);
            Reset {
                id: self.shared.epoch.id(reset_seq),
                data: super::reset_json(reason, &last, oldest.map(|s| self.shared.epoch.id(s))),
            }
        });
        bump_by(&self.counters.replayed, f.events.len() as u64);
        if fetch.poll {
            return self.answer_fetched_poll(index, &f, reset.as_ref());
        }
        let kind = self.conns[index as usize].kind;
        if let Some(reset) = &reset {
            if !self.enqueue(
                index,
                control(kind, "ringcast.reset", Some(&reset.id), &reset.data),
            ) {
                return;
            }
        } else if !whole {
            let lost_upto = f.events.first().map_or(f.upto, |e| e.seq - 1);
            if lost_upto > after && !self.tell_lost(index, kind, after + 1, lost_upto) {
                return;
            }
        }
        if !self.queue_page(index, &f.events, kind) {
            return;
        }
        let next = match (f.events.last(), f.more) {
            (Some(last), true) => last.seq,
            _ => f.upto,
        };
        self.set_phase(index, next, Phase::Local);
        self.flush(index);
        // Nothing queued means no send completes to ask for the next page: ask now.
        if self.conns[index as usize].queued_bytes() == 0 {
            self.next_page(index);
        }
    }

    /// Answers a held poll with the stream's page.
    fn answer_fetched_poll(&mut self, index: u32, f: &Fetched, reset: Option<&Reset>) {
        self.end_catchup(index);
        self.poll_topics.remove(&index);
        let next = match (f.events.last(), reset) {
            (Some(last), _) => last.id.to_string(),
            (None, Some(reset)) => reset.id.clone(),
            (None, None) => self.shared.epoch.id(f.upto.max(f.after)),
        };
        let body = super::poll::poll_body(&f.events, &next, reset);
        self.end_poll(index, &body);
    }

    fn epoch_id_bytes(&self, seq: u64) -> Vec<u8> {
        self.shared.epoch.id(seq).into_bytes()
    }

    /// The connection reads live events again (caught up, or closing).
    pub(super) fn end_catchup(&mut self, index: u32) {
        if let Some(conn) = self.conns.get_mut(index as usize) {
            if conn.has_flag(flags::CATCHING_UP) {
                conn.flags &= !flags::CATCHING_UP;
                self.catchup.remove(&index);
                self.reset_ids.remove(&index);
            }
        }
    }

    /// Queues replayed events as events, so the queue's policy and cap apply to them as
    /// to live ones. False when the client was failed instead.
    fn queue_page(&mut self, index: u32, events: &[Arc<Event>], kind: Kind) -> bool {
        let limits = self.shared.config.queue_limits();
        let cap = self.shared.config.out_queue_bytes_max;
        for event in events {
            let policy = self.shared.config.policy_for(&event.topic);
            let Some(pushed) = self.queue_event(index, event, kind, policy, limits, cap) else {
                self.overflow(index);
                return false;
            };
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

    /// Where a client that last saw `last` on `topics` resumes from: a page of the local
    /// history (after a reset when the history cannot say: an id from another epoch, a
    /// malformed one, one older than what is retained), or in a cluster the stream, when
    /// the local history lacks the range, or the wait for this node to deliver the id.
    pub(super) fn resume_from(&mut self, topics: &[String], last: &[u8], limits: PageLimits) -> Resume {
        let epoch = self.shared.epoch;
        let shared = Arc::clone(&self.shared);
        let cluster = shared.backplane.as_ref();
        let mut parsed = epoch.parse(last);
        if let LastId::Seq(seen) = parsed {
            if seen > self.delivered_upto() {
                // Another loop may already have delivered `seen`; catch up so that live
                // events after it come from this loop's cursor, not a replay.
                let broadcast = Arc::clone(&self.shared.broadcast);
                self.catch_up(&broadcast);
                if seen > self.delivered_upto() {
                    // In a cluster another node may have delivered it first: wait for it
                    // here (see `wake_waiting`).
                    if cluster.is_some() {
                        return Resume::Ahead(seen);
                    }
                    parsed = LastId::Malformed;
                }
            }
        }
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let upto = self.delivered_upto();
        let now = self.now;
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
                } else if cluster.is_some() {
                    return Resume::Stream {
                        after: seen,
                        reset: None,
                    };
                } else {
                    (Some("expired"), history.page(&names, 0, upto, limits, now))
                }
            }
            LastId::OtherEpoch | LastId::Malformed if cluster.is_some() => {
                bump(&self.counters.resets);
                let reason = if parsed == LastId::OtherEpoch {
                    "unknown-epoch"
                } else {
                    "malformed-id"
                };
                return Resume::Stream {
                    after: 0,
                    reset: Some(reason),
                };
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
        Resume::Local(Missed {
            reset,
            events: replay.events,
            more: replay.more,
        })
    }
}
