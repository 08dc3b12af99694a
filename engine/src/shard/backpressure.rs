//! Fan-out under backpressure: each event goes to every local subscriber through the
//! subscriber's bounded out-queue, whose topic policy drops, refuses or coalesces events
//! when the client is slow, or disconnects it (see `conn::outq`). What a client misses is
//! told to it, in its own transport, ahead of the next event it gets:
//!
//! - SSE: `event: ringcast.gap` with data `{"topic":..,"dropped":N,"first_id":..,"last_id":..}`
//!   (no `id:` field, so the client's Last-Event-ID stays at the last event it got and a
//!   reconnect could fetch the gap from the history);
//! - WebSocket: `{"event":"ringcast.gap","data":{...the same fields...}}`.
//!
//! A client disconnected as too slow first gets `ringcast.slow` (SSE) or close 1008 (WS).
//! Control bytes (response heads, pongs, close frames, heartbeats, notices) are never
//! dropped. Coalesced events are counted, not reported: the client gets the latest value.
use std::sync::Arc;

use bytes::Bytes;

use super::{bump, bump_by, control, Shard};
use crate::conn::outq::{Gap, Limits, Policy, Pushed, Run};
use crate::conn::{flags, State};
use crate::event::Event;
use crate::proto::Kind;
use crate::proto::{json, ws};

impl Shard {
    /// Delivers a run of consecutive events of one topic (in sequence order). Each
    /// subscriber is visited once for the whole run and gets every event of it queued
    /// before one flush: with thousands of subscribers, visiting each connection once per
    /// run rather than once per event keeps the loop from walking every connection's
    /// queue out of the cache for every event. A subscriber whose queue takes the whole
    /// run without its policy acting gets it as one shared [`Run`], encoded once per
    /// transport for the loop: one queue entry, one buffer reference and one iovec for
    /// the lot; any other gets the events one by one.
    pub(super) fn deliver(&mut self, run: &[Arc<Event>]) {
        let Some(first) = run.first() else {
            return;
        };
        debug_assert!(
            run.iter().all(|e| e.topic == first.topic),
            "a run is of one topic"
        );
        // The subscriber list is lent out while the bytes are queued: queueing touches
        // connections and the ring, never subscriptions. Slow connections are closed after.
        let Some((topic, subscribers)) = self.subs.take(&first.topic) else {
            return;
        };
        bump_by(&self.counters.events, run.len() as u64);
        let policy = self.shared.config.policy_for(&first.topic);
        let limits = self.shared.config.queue_limits();
        let hard_cap = self.shared.config.out_queue_bytes_max;
        let (mut delivered, mut dropped, mut coalesced) = (0u64, 0u64, 0u64);
        let mut slow = Vec::new();
        let mut overflowed = Vec::new();
        let mut polls = Vec::new();
        // The run encoded for each transport among the subscribers, made on first use.
        let mut shared: Vec<(Kind, Arc<Run>)> = Vec::new();
        'subscribers: for &index in &subscribers {
            let conn = &mut self.conns[index as usize];
            if conn.state == State::Poll {
                // Answered after the list is returned: answering unsubscribes.
                polls.push(index);
                continue;
            }
            // A client catching up from the history gets these events from it, in order.
            if !matches!(conn.state, State::Stream | State::Ws) || conn.has_flag(flags::CATCHING_UP) {
                continue;
            }
            let kind = conn.kind;
            if run.len() > 1 && self.queue_run(index, run, kind, policy, limits, hard_cap, &mut shared) {
                delivered += run.len() as u64;
                self.flush(index);
                self.note_depth(index);
                continue;
            }
            for event in run {
                let Some(pushed) = self.queue_event(index, event, kind, policy, limits, hard_cap) else {
                    overflowed.push(index);
                    continue 'subscribers;
                };
                match pushed {
                    Pushed::Queued { dropped: n } => {
                        delivered += 1;
                        dropped += n as u64;
                    }
                    Pushed::Coalesced => coalesced += 1,
                    Pushed::Refused => dropped += 1,
                    Pushed::Disconnect => {
                        slow.push(index);
                        continue 'subscribers;
                    }
                }
            }
            self.flush(index);
            self.note_depth(index);
        }
        bump_by(&self.counters.dropped, dropped);
        bump_by(&self.counters.coalesced, coalesced);
        self.subs.put_back(topic, subscribers);
        // A held poll is answered with the run's first event; the client's next poll,
        // `after` it, gets the rest from the history.
        for index in polls {
            delivered += 1;
            self.poll_event(index, first);
        }
        bump_by(&self.counters.deliveries, delivered);
        for index in slow {
            bump(&self.counters.slow_disconnected);
            self.disconnect_slow(index, &first.topic);
        }
        for index in overflowed {
            self.overflow(index);
        }
    }

    /// Queues all of `run` as one shared [`Run`] in the framing of `kind` on connection
    /// `index` when its queue takes every event without `policy` acting and without
    /// passing `hard_cap`; returns false, having queued nothing, otherwise. `shared` holds
    /// the run's encodings made so far in this delivery, one per transport.
    #[allow(clippy::too_many_arguments)]
    fn queue_run(
        &mut self,
        index: u32,
        run: &[Arc<Event>],
        kind: Kind,
        policy: Policy,
        limits: Limits,
        hard_cap: usize,
        shared: &mut Vec<(Kind, Arc<Run>)>,
    ) -> bool {
        let encoded = match shared.iter().find(|(k, _)| *k == kind) {
            Some((_, encoded)) => Arc::clone(encoded),
            None => {
                let (deflate, min) = (&mut self.deflate, self.shared.config.ws_deflate_min_bytes);
                let encoded = Arc::new(Run::new(run, |event| event.bytes_for(kind, deflate, min)));
                shared.push((kind, Arc::clone(&encoded)));
                encoded
            }
        };
        let conn = &mut self.conns[index as usize];
        if conn.queued_bytes() + encoded.bytes() > hard_cap {
            return false;
        }
        let out = conn.out.get_or_insert_with(|| self.pool.take());
        if !out.push_run(&encoded, policy, limits) {
            return false;
        }
        self.queued += encoded.bytes() as i64;
        true
    }

    /// Queues `event` in the framing of `kind` on connection `index` under `policy`, or
    /// `None` when that would pass the client's cap `hard_cap` (the caller fails it).
    pub(super) fn queue_event(
        &mut self,
        index: u32,
        event: &Arc<Event>,
        kind: Kind,
        policy: Policy,
        limits: Limits,
        hard_cap: usize,
    ) -> Option<Pushed> {
        let bytes = event.bytes_for(kind, &mut self.deflate, self.shared.config.ws_deflate_min_bytes);
        let conn = &mut self.conns[index as usize];
        if conn.queued_bytes() + bytes.len() > hard_cap {
            return None;
        }
        let out = conn.out.get_or_insert_with(|| self.pool.take());
        let before = out.bytes();
        let pushed = out.push_event(bytes, event, policy, limits);
        self.queued += out.bytes() as i64 - before as i64;
        Some(pushed)
    }

    /// Queues a notice for every gap the connection's queue recorded, ahead of the
    /// events still queued.
    pub(super) fn tell_gaps(&mut self, index: u32) {
        let conn = &mut self.conns[index as usize];
        let kind = conn.kind;
        let Some(out) = conn.out.as_mut() else {
            return;
        };
        for (nth, gap) in out.take_gaps().iter().enumerate() {
            let notice = gap_notice(gap, kind);
            self.queued += notice.len() as i64;
            out.push_notice(notice, nth);
        }
    }

    /// The policy said disconnect: drop what is queued (the client resumes from the
    /// history), say why, and close once that is sent.
    pub(super) fn disconnect_slow(&mut self, index: u32, topic: &str) {
        let conn = &mut self.conns[index as usize];
        let kind = conn.kind;
        if let Some(out) = conn.out.as_mut() {
            let before = out.bytes();
            out.drop_all_events();
            self.queued -= (before - out.bytes()) as i64;
            // The client reconnects with its Last-Event-ID; no gap notice is owed.
            out.take_gaps();
        }
        let reason = "client too slow; reconnect with Last-Event-ID to resume";
        let notice = if kind.is_ws() {
            let mut frame = Vec::new();
            ws::encode_close(&mut frame, ws::close::POLICY, "slow consumer");
            Bytes::from(frame)
        } else {
            let data = format!(
                "{{\"topic\":{},\"reason\":{}}}",
                json::string(topic),
                json::string(reason)
            );
            control(kind, "ringcast.slow", None, &data)
        };
        self.send_final(index, notice);
    }

    /// The loop was lapped on the broadcast ring and the history could not refill all of
    /// `first..=last`: every stream on this loop may have missed events of its topics.
    pub(super) fn tell_ring_loss(&mut self, first: u64, last: u64) {
        let epoch = self.shared.epoch;
        let data = format!(
            "{{\"topic\":null,\"dropped\":null,\"first_id\":{},\"last_id\":{}}}",
            json::string(&epoch.id(first)),
            json::string(&epoch.id(last)),
        );
        let streams: Vec<(u32, Kind)> = self
            .conns
            .iter()
            // A client catching up hears of losses from its own pages.
            .filter(|(_, c)| {
                matches!(c.state, State::Stream | State::Ws)
                    && !c.kind.is_echo()
                    && !c.has_flag(flags::CATCHING_UP)
            })
            .map(|(i, c)| (i as u32, c.kind))
            .collect();
        for (index, kind) in streams {
            self.send_control(index, control(kind, "ringcast.gap", None, &data));
        }
    }
}

/// The notice for `gap` in the framing of `kind`.
fn gap_notice(gap: &Gap, kind: Kind) -> Bytes {
    let data = format!(
        "{{\"topic\":{},\"dropped\":{},\"first_id\":{},\"last_id\":{}}}",
        json::string(&gap.first.topic),
        gap.dropped,
        json::string(&gap.first.id),
        json::string(&gap.last.id),
    );
    control(kind, "ringcast.gap", None, &data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::OutQueue;
    use crate::event::Epoch;
    use std::time::Instant;

    #[test]
    fn sse_gap_notice_has_no_id_and_names_the_range() {
        let e = |seq| {
            Arc::new(Event::new(
                Epoch::from_raw(0xa),
                seq,
                "px",
                None,
                None,
                b"x",
                Instant::now(),
            ))
        };
        let gap = Gap {
            first: e(3),
            last: e(9),
            dropped: 5,
        };
        let sse = gap_notice(&gap, Kind::Sse10);
        assert_eq!(
            &sse[..],
            b"event: ringcast.gap\ndata: {\"topic\":\"px\",\"dropped\":5,\"first_id\":\"a-3\",\"last_id\":\"a-9\"}\n\n"
        );
        let ws = gap_notice(&gap, Kind::WsJson);
        assert!(ws.ends_with(b"{\"event\":\"ringcast.gap\",\"data\":{\"topic\":\"px\",\"dropped\":5,\"first_id\":\"a-3\",\"last_id\":\"a-9\"}}"));
    }

    #[test]
    fn an_out_queue_is_small_enough_to_pool() {
        // Its iovec array dominates; it exists only while something is queued.
        let iovs = crate::conn::outq::IOV_MAX * std::mem::size_of::<libc::iovec>();
        assert!(
            std::mem::size_of::<OutQueue>() <= iovs + 256,
            "{}",
            std::mem::size_of::<OutQueue>()
        );
    }
}
