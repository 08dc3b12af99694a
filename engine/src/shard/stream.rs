//! Streams: subscribing a connection to its topics, and fanning the broadcast ring out to
//! the loop's subscribers in batches, recovering what the loop fell behind on.

use std::sync::Arc;

use crate::conn::State;
use crate::event::Event;
use crate::proto::http::{self, Method, Request};
use crate::proto::Kind;
use crate::ring::broadcast::{Broadcast, Read};

use super::{bump, bump_by, with_cors, Shard, Static, DRAIN_MIN_BYTES, DRAIN_MIN_EVENTS};

impl Shard {
    /// Opens an SSE stream, or with `ndjson` a stream of JSON lines.
    pub(super) fn subscribe(&mut self, index: u32, req: &Request<'_>, keep_alive: bool, ndjson: bool) {
        let sub = match http::parse_subscription(req.query) {
            Ok(sub) => sub,
            Err(e) => {
                bump(&self.counters.bad_requests);
                self.respond(index, 400, &e.to_string(), false, &[]);
                return;
            }
        };
        let Some(grant) = self.authenticate(index, req, &sub.topics) else {
            return;
        };
        if req.method == Method::Head {
            let head = if ndjson {
                self.ndjson_head_only.clone()
            } else {
                self.head_only.clone()
            };
            if keep_alive {
                self.send_control(index, head);
            } else {
                self.send_final(index, head);
            }
            return;
        }
        let kind = match (ndjson, req.minor_version >= 1) {
            (true, true) => Kind::Ndjson,
            (true, false) => {
                self.respond(index, 505, "NDJSON streams are chunked: use HTTP/1.1", false, &[]);
                return;
            }
            (false, true) => Kind::Sse,
            (false, false) => Kind::Sse10,
        };
        let head = self.static_bytes_for(kind, Static::Head);
        {
            let conn = &mut self.conns[index as usize];
            conn.state = State::Stream;
            conn.kind = kind;
            conn.staging = None;
        }
        let last = req
            .last_event_id
            .map(<[u8]>::to_vec)
            .or_else(|| sub.last_event_id.as_ref().map(|s| s.clone().into_bytes()));
        let cors = self.cors_lines(req.origin);
        // Subscribed first: a resume the stream must answer asks for these topics.
        for topic in &sub.topics {
            self.subs.add(&mut self.conns, index, topic);
        }
        if last.is_some() || cors.is_some() {
            let head = match cors {
                Some(lines) => with_cors(&head, &lines),
                None => head,
            };
            if !self.enqueue(index, head) {
                return;
            }
            if let Some(last) = last {
                if !self.replay(index, &sub.topics, &last, kind) {
                    return;
                }
            }
            self.flush(index);
        } else {
            self.send_static(index, Static::Head);
        }
        self.keep_session(index, grant);
        bump(&self.counters.streams);
        self.count_open(index, 1);
        // The timer still holds the request deadline; the next tick re-arms it for the
        // stream's own (heartbeat, write stall).
        self.arm_timer(index, self.tick.wrapping_add(1));
    }

    /// Delivers what the broadcast ring holds, at most one batch per loop turn: between
    /// batches the loop reaps send completions, so a client that keeps up drains its queue
    /// as fast as events arrive and never meets its queue's limits. While some client's
    /// queue is deep, batches are small: a loop that hands out deep batches outpaces a
    /// client reading many sockets, and the backlog would move from the ring, which every
    /// subscriber shares, into the queues of the clients behind, which are bounded each and
    /// whose policy then drops. Small batches cost the loop more sends per event, which
    /// leaves the backlog in the ring until the client has read.
    pub(super) fn drain_broadcast(&mut self, broadcast: &Broadcast<Event>) {
        let (events, bytes) = if self.deep > 0 {
            (DRAIN_MIN_EVENTS, DRAIN_MIN_BYTES)
        } else {
            (self.turn_events, self.turn_bytes)
        };
        self.drain_broadcast_upto(broadcast, events, bytes);
    }

    /// Counts connection `index` among the deep queues while its queue holds at least half
    /// its limit, and out of them once it holds less. A queue fills only while its sends
    /// wait for the client, so what is still deep once the turn's sends completed is a
    /// client behind.
    pub(super) fn note_depth(&mut self, index: u32) {
        let Some(out) = self.conns[index as usize].out.as_mut() else {
            return;
        };
        let deep = out.events() >= self.deep_events || out.bytes() >= self.deep_bytes;
        count_depth(&mut self.deep, out, deep);
    }

    /// Delivers everything the ring holds now (to catch up before a resume).
    pub(super) fn catch_up(&mut self, broadcast: &Broadcast<Event>) {
        self.drain_broadcast_upto(broadcast, usize::MAX, usize::MAX);
    }

    pub(super) fn drain_broadcast_upto(&mut self, broadcast: &Broadcast<Event>, events: usize, bytes: usize) {
        let (mut n, mut size) = (0, 0);
        let mut batch = std::mem::take(&mut self.batch);
        // Events refilled from the history after an overrun go first, in batches too.
        while n < events && size < bytes {
            let Some(event) = self.refill.pop_front() else {
                break;
            };
            n += 1;
            size += event.data.len();
            batch.push(event);
        }
        let head = broadcast.head();
        while self.refill.is_empty() && self.next_seq < head && n < events && size < bytes {
            match broadcast.read(self.next_seq) {
                Read::Item(event) => {
                    self.next_seq += 1;
                    let before = std::mem::replace(&mut self.ring_seq, event.seq);
                    if let Some(after) = self.lost_after.take() {
                        // The first event after an overrun: what came between is refilled
                        // from the history, and this event follows it.
                        self.deliver_batch(&mut batch);
                        self.refill_lost(after, event);
                        continue;
                    }
                    // In a cluster every stream sequence comes through the ring in order: a
                    // jump is events this node never received (the stream evicted them
                    // before its consumer read them). No topic is known: every stream hears.
                    if event.seq > before + 1 && self.shared.backplane.is_some() {
                        self.deliver_batch(&mut batch);
                        bump_by(&self.counters.stream_skipped, event.seq - before - 1);
                        self.tell_ring_loss(before + 1, event.seq - 1);
                    }
                    n += 1;
                    size += event.data.len();
                    batch.push(event);
                }
                Read::Overrun => {
                    // What was read before the overrun goes out before its notices.
                    self.deliver_batch(&mut batch);
                    self.recover(broadcast);
                }
                Read::Empty => break,
            }
        }
        self.deliver_batch(&mut batch);
        self.batch = batch;
        broadcast.set_cursor(self.id, self.next_seq);
        if broadcast.reached_mark(self.id, self.next_seq) {
            self.ring_flow();
        }
    }

    /// Tells the ingest thread, which holds publishes while this loop trails the ring
    /// (`--ingest-flow lag`), that it has caught up to the mark it waits for.
    fn ring_flow(&mut self) {
        self.ring_ingest(crate::ingest::FLOW_BELL_DATA);
    }

    /// Rings the ingest thread's doorbell with `deliver`, once it has one.
    pub(super) fn ring_ingest(&mut self, deliver: u64) {
        let fd = self
            .shared
            .ingest_ring_fd
            .load(std::sync::atomic::Ordering::Acquire);
        if fd < 0 {
            return;
        }
        self.push(crate::driver::Op::Bell {
            target: fd,
            deliver,
            data: super::pack(super::tag::DOORBELL, 0, 0),
        });
    }

    /// Delivers `batch` in order, as runs of consecutive events of one topic, and
    /// empties it.
    pub(super) fn deliver_batch(&mut self, batch: &mut Vec<Arc<Event>>) {
        let mut start = 0;
        while start < batch.len() {
            let topic = &batch[start].topic;
            let len = batch[start..].iter().take_while(|e| &e.topic == topic).count();
            self.deliver(&batch[start..start + len]);
            start += len;
        }
        batch.clear();
    }

    /// This loop fell more than the ring's capacity behind: it skips ahead to the oldest
    /// position the ring still holds; the next event read tells what to refill.
    pub(super) fn recover(&mut self, broadcast: &Broadcast<Event>) {
        let resume = broadcast
            .head()
            .saturating_sub(broadcast.capacity())
            .max(self.next_seq + 1);
        self.next_seq = resume;
        self.lost_after.get_or_insert(self.ring_seq);
    }

    /// Refills events after `after` and before `next` from the history for the topics
    /// this loop serves, counting what even the history lost, and queues `next` behind them.
    pub(super) fn refill_lost(&mut self, after: u64, next: Arc<Event>) {
        let upto = next.seq - 1;
        if upto > after {
            bump_by(&self.counters.ring_overrun, upto - after);
            let names = self.subs.topic_names();
            let names: Vec<&str> = names.iter().map(|s| &**s).collect();
            let replay = {
                let history = self
                    .shared
                    .history
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                history.since(&names, after, upto, self.now)
            };
            if !replay.complete {
                bump(&self.counters.ring_lost);
                self.tell_ring_loss(after + 1, upto);
            }
            self.refill.extend(replay.events);
        }
        self.refill.push_back(next);
    }
}

/// Marks `out` deep or not, keeping `count`, the loop's number of deep queues, in step.
pub(super) fn count_depth(count: &mut usize, out: &mut crate::conn::OutQueue, deep: bool) {
    if deep != out.deep {
        out.deep = deep;
        if deep {
            *count += 1;
        } else {
            *count -= 1;
        }
    }
}
