//! WebSocket connections on a loop (RFC 6455): the upgrade, client frames, the close
//! handshake, and the client's own subscribe and unsubscribe messages.
//!
//! Frames are decoded straight out of the provided receive buffer (unmasked in place);
//! a decoder exists only while a frame or message is partly received. Server frames are
//! unmasked, so an event's frame is encoded once and shared (see `Event::bytes_for`).
//!
//! permessage-deflate (RFC 7692, `--ws-deflate on`): a client that offers it gets
//! `server_no_context_takeover; client_no_context_takeover`, so an event's compressed frame
//! is shared like its plain one, and a compressed client message is inflated on its own,
//! whole, by the loop's one inflater into a buffer bounded by `ws_max_message` (past it:
//! 1009; a corrupt stream: 1007). An idle connection holds no zlib state. Echoes go back
//! compressed; control replies go plain (RSV1 clear).
//!
//! Client text messages shaped `{"op":"subscribe","topic":T}` or
//! `{"op":"unsubscribe","topic":T}` change the connection's subscriptions and are
//! answered with `{"event":"ringcast.subscribed"|"ringcast.unsubscribed","topic":T}`, or
//! `{"event":"ringcast.error","reason":..,"topic":..}`; `{"op":"ping"}` is answered
//! `{"event":"ringcast.pong"}` (a liveness probe a browser can see). Any other message is
//! upstream data: it goes to a backend listening on the ingest socket (`UPSTREAM`), tagged with
//! the connection's id, and a backend's `SEND` to that id comes back as a frame. When
//! no backend listens, the client gets a `ringcast.error` rather than the message vanishing.
//! With a backplane the loop cannot know of backends on other nodes: every message goes
//! to the ingest thread, and a refusal comes back through the mailbox.
use bytes::Bytes;
use serde::Deserialize;

use std::sync::Arc;

use super::{bump, ws_control, Shard};
use crate::conn::{flags, State};
use crate::ingest::UPSTREAM_BELL_DATA;
use crate::proto::http::{self, Request, SubscriptionError, TOPICS_MAX};
use crate::proto::json;
use crate::proto::ws::{self, Decoded, HandshakeError, Message, Opcode};
use crate::proto::Kind;
use crate::upstream::{ConnId, Upstream};

/// A client's control message.
#[derive(Deserialize)]
struct ClientOp<'a> {
    #[serde(borrow)]
    op: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    topic: Option<std::borrow::Cow<'a, str>>,
    /// For `refresh`: the new token.
    #[serde(borrow, default)]
    token: Option<std::borrow::Cow<'a, str>>,
}

impl Shard {
    /// Answers an upgrade request on `/ws` (or `/echo` when enabled): 101 and a WebSocket,
    /// or the handshake's own error (400, 403, 405, 426).
    pub(super) fn ws_upgrade(&mut self, index: u32, req: &Request<'_>, head: &[u8], echo: bool) {
        let upgrade = match ws::check_upgrade(head) {
            Ok(Some(up)) => up,
            Ok(None) => {
                let mut headers = ws::UPGRADE_REQUIRED_HEADERS.to_vec();
                headers.push(("Sec-WebSocket-Version", "13"));
                self.respond(
                    index,
                    426,
                    "this is a WebSocket endpoint: send an upgrade",
                    false,
                    &headers,
                );
                return;
            }
            Err(e) => return self.refuse_upgrade(index, e),
        };
        let patterns = &self.shared.config.ws_allow_origin;
        if !patterns.is_empty() && !ws::origin_allowed(upgrade.origin, patterns) {
            return self.refuse_upgrade(index, HandshakeError::OriginNotAllowed);
        }
        let (kind, topics, last) = if echo {
            (Kind::WsEcho, Vec::new(), None)
        } else {
            let kind = match http::query_param(req.query, "format").as_deref() {
                None | Some("json") => Kind::WsJson,
                Some("raw") => Kind::WsRaw,
                Some(_) => {
                    bump(&self.counters.bad_requests);
                    self.respond(index, 400, "format must be json or raw", false, &[]);
                    return;
                }
            };
            // A WebSocket may start with no topic and subscribe later.
            let sub = match http::parse_subscription(req.query) {
                Ok(sub) => sub,
                Err(SubscriptionError::NoTopic) => http::Subscription {
                    topics: Vec::new(),
                    last_event_id: http::query_param(req.query, "last_event_id"),
                },
                Err(e) => {
                    bump(&self.counters.bad_requests);
                    self.respond(index, 400, &e.to_string(), false, &[]);
                    return;
                }
            };
            let last = req
                .last_event_id
                .map(<[u8]>::to_vec)
                .or_else(|| sub.last_event_id.map(String::into_bytes));
            (kind, sub.topics, last)
        };
        let grant = if echo {
            None
        } else {
            let Some(grant) = self.authenticate(index, req, &topics) else {
                return;
            };
            grant
        };
        let deflate = upgrade.deflate && self.shared.config.ws_deflate == crate::config::OnOff::On;
        if !self.enqueue(index, Bytes::from(ws::switching_protocols(upgrade.key, deflate))) {
            return;
        }
        let kind = if deflate { kind.with_deflate() } else { kind };
        let tick = self.tick;
        let conn = &mut self.conns[index as usize];
        conn.state = State::Ws;
        conn.kind = kind;
        conn.staging = None;
        conn.mark = tick;
        // Subscribed first: a resume the stream must answer asks for these topics.
        for topic in &topics {
            self.subs.add(&mut self.conns, index, topic);
        }
        if let Some(last) = last {
            if !self.replay(index, &topics, &last, kind) {
                return;
            }
        }
        self.keep_session(index, grant);
        bump(&self.counters.websockets);
        self.count_open(index, 1);
        self.flush(index);
        // From the request deadline to the WebSocket's own (ping, write stall).
        self.arm_timer(index, self.tick.wrapping_add(1));
    }

    fn refuse_upgrade(&mut self, index: u32, e: HandshakeError) {
        bump(&self.counters.bad_requests);
        self.respond(index, e.status(), e.reason(), false, e.extra_headers());
    }

    /// Decodes the client frames in `data` (unmasking them in place) and acts on each.
    pub(super) fn on_ws_input(&mut self, index: u32, data: &mut [u8]) {
        let max = self.shared.config.ws_max_message;
        let deflate = self.conns[index as usize].kind.deflate();
        let mut decoder = self.decoders.remove(&index).unwrap_or_else(|| {
            Box::new(if deflate {
                ws::Decoder::with_deflate(max)
            } else {
                ws::Decoder::new(max)
            })
        });
        let mut at = 0;
        loop {
            match decoder.decode(&mut data[at..]) {
                Decoded::Message { msg, consumed } => {
                    at += consumed;
                    if !self.on_ws_message(index, msg) {
                        return;
                    }
                }
                Decoded::Partial { .. } => break,
                Decoded::Fail { code, reason } => {
                    bump(&self.counters.ws_protocol_errors);
                    self.ws_close(index, code, reason);
                    return;
                }
            }
        }
        if !decoder.is_idle()
            && self
                .conns
                .get(index as usize)
                .is_some_and(|c| c.state == State::Ws)
        {
            self.decoders.insert(index, decoder);
        }
    }

    /// Inflates a compressed message (RFC 7692 §7.2.2) and acts on it; false when no more
    /// frames are to be read (it failed the connection: 1009 past the message limit, 1007
    /// for a corrupt stream or a text message that is not UTF-8).
    fn on_ws_compressed(&mut self, index: u32, text: bool, payload: &[u8]) -> bool {
        let max = self.shared.config.ws_max_message;
        let mut out = std::mem::take(&mut self.inflated);
        let failed = match self.deflate.inflate(payload, max, &mut out) {
            Err(ws::deflate::InflateError::TooBig) => {
                Some((ws::close::TOO_BIG, "inflated message is larger than the limit"))
            }
            Err(ws::deflate::InflateError::Invalid) => {
                Some((ws::close::INVALID_DATA, "invalid compressed data"))
            }
            Ok(()) if text && std::str::from_utf8(&out).is_err() => {
                Some((ws::close::INVALID_DATA, "text is not UTF-8"))
            }
            Ok(()) => None,
        };
        let go_on = match failed {
            Some((code, reason)) => {
                bump(&self.counters.ws_protocol_errors);
                self.ws_close(index, code, reason);
                false
            }
            None => {
                let msg = if text {
                    Message::Text(&out)
                } else {
                    Message::Binary(&out)
                };
                self.on_ws_message(index, msg)
            }
        };
        // A buffer grown by a big message is not kept for the next one.
        if out.capacity() > 64 << 10 {
            out = Vec::new();
        }
        self.inflated = out;
        go_on
    }

    /// Acts on one client message; false when no more frames are to be read.
    fn on_ws_message(&mut self, index: u32, msg: Message<'_>) -> bool {
        let tick = self.tick;
        let conn = &mut self.conns[index as usize];
        // Any frame shows the peer is alive: inbound activity lives in `mark` for a WebSocket.
        conn.mark = tick;
        conn.flags &= !flags::PINGED;
        let kind = conn.kind;
        match msg {
            Message::Compressed { text, payload } => return self.on_ws_compressed(index, text, payload),
            Message::Text(payload) if kind.is_echo() => self.ws_echo(index, Opcode::Text, payload),
            Message::Binary(payload) if kind.is_echo() => self.ws_echo(index, Opcode::Binary, payload),
            Message::Text(payload) => {
                if self.ws_message_allowed(index) {
                    self.on_client_text(index, payload);
                }
            }
            Message::Binary(payload) => {
                if self.ws_message_allowed(index) {
                    self.upstream(index, false, payload);
                }
            }
            Message::Ping(payload) => self.ws_pong(index, payload),
            Message::Pong(_) => {}
            Message::Close { code, .. } => {
                // Echo the peer's code (§5.5.1); a close without one is answered likewise.
                let mut frame = Vec::with_capacity(4);
                match code {
                    Some(code) => ws::encode_close(&mut frame, code, ""),
                    None => ws::encode_frame(&mut frame, Opcode::Close, true, &[]),
                }
                self.send_final(index, Bytes::from(frame));
                return false;
            }
        }
        // A reply may have failed the client for exceeding its cap.
        self.conns[index as usize].state == State::Ws
    }

    /// Answers a ping. Pongs wait outside the queue until the next send, and a flood of
    /// pings costs a bounded number of them (see `OutQueue::push_pong`).
    fn ws_pong(&mut self, index: u32, payload: &[u8]) {
        let mut frame = Vec::with_capacity(payload.len() + 2);
        ws::encode_frame(&mut frame, Opcode::Pong, true, payload);
        let conn = &mut self.conns[index as usize];
        if conn.queued_bytes() + frame.len() > self.shared.config.out_queue_bytes_max {
            return self.overflow(index);
        }
        let out = conn.out.get_or_insert_with(|| self.pool.take());
        self.queued += out.push_pong(&frame) as i64;
        self.flush(index);
    }

    /// Sends a message back on the echo endpoint, compressed whenever permessage-deflate
    /// was negotiated: the endpoint exists for conformance suites, which should see the
    /// compressor at work on every message (and kosoku 0.1.0 mishandles a plain text
    /// message on a compressed connection: it hands the case a str).
    fn ws_echo(&mut self, index: u32, opcode: Opcode, payload: &[u8]) {
        if self.conns[index as usize].kind.deflate() {
            let frame = self.deflate.frame(opcode, payload);
            return self.send_control(index, Bytes::from(frame));
        }
        self.ws_send(index, opcode, payload);
    }

    /// Queues one unfragmented frame.
    fn ws_send(&mut self, index: u32, opcode: Opcode, payload: &[u8]) {
        let mut frame = Vec::with_capacity(payload.len() + 10);
        ws::encode_frame(&mut frame, opcode, true, payload);
        self.send_control(index, Bytes::from(frame));
    }

    /// Fails the connection (§7.1.7): a close frame with `code`, then the TCP close.
    pub(super) fn ws_close(&mut self, index: u32, code: u16, reason: &str) {
        let mut frame = Vec::with_capacity(reason.len() + 4);
        ws::encode_close(&mut frame, code, reason);
        self.send_final(index, Bytes::from(frame));
    }

    fn on_client_text(&mut self, index: u32, payload: &[u8]) {
        let Ok(op) = serde_json::from_slice::<ClientOp<'_>>(payload) else {
            return self.upstream(index, true, payload);
        };
        if op.op == "ping" {
            // A liveness probe: browsers cannot see WebSocket pings, so a client that
            // wants to notice a dead connection asks for an answer it can see.
            return self.send_control(index, ws_control("{\"event\":\"ringcast.pong\"}"));
        }
        if op.op == "refresh" {
            let reply = match self.ws_refresh(index, op.token.as_deref().unwrap_or("")) {
                Ok(event) => ws_control(&format!("{{\"event\":\"{event}\"}}")),
                Err(reason) => super::auth::ws_error(&reason, None),
            };
            return self.send_control(index, reply);
        }
        let topic = op.topic.as_deref().unwrap_or("");
        let reply = match (&*op.op, http::is_valid_topic(topic.as_bytes())) {
            ("subscribe" | "unsubscribe", false) => {
                Err("invalid topic: topics are 1-200 bytes of [A-Za-z0-9._~:/-]")
            }
            ("subscribe", true) => self.ws_subscribe(index, topic),
            ("unsubscribe", true) => {
                if self.subs.remove_one(&mut self.conns, index, topic) {
                    Ok("ringcast.unsubscribed")
                } else {
                    Err("not subscribed to this topic")
                }
            }
            _ => Err("unknown op: use subscribe, unsubscribe, refresh or ping"),
        };
        let mut text = Vec::with_capacity(96);
        match reply {
            Ok(event) => {
                text.extend_from_slice(format!("{{\"event\":\"{event}\",\"topic\":").as_bytes());
                json::push_string(&mut text, topic);
            }
            Err(reason) => {
                text.extend_from_slice(b"{\"event\":\"ringcast.error\",\"reason\":");
                json::push_string(&mut text, reason);
                text.extend_from_slice(b",\"topic\":");
                match &op.topic {
                    Some(t) => json::push_string(&mut text, t),
                    None => text.extend_from_slice(b"null"),
                }
            }
        }
        text.push(b'}');
        self.send_control(
            index,
            ws_control(std::str::from_utf8(&text).expect("JSON is UTF-8")),
        );
    }

    fn ws_subscribe(&mut self, index: u32, topic: &str) -> Result<&'static str, &'static str> {
        let mut count = 0;
        for t in self.subs.topics_of(&self.conns, index) {
            if t == topic {
                return Err("already subscribed to this topic");
            }
            count += 1;
        }
        if count >= TOPICS_MAX {
            return Err("too many topics: at most 64 per connection");
        }
        if !self.may_subscribe(index, topic) {
            bump(&self.counters.auth_forbidden);
            return Err("the token does not allow this topic");
        }
        self.subs.add(&mut self.conns, index, topic);
        Ok("ringcast.subscribed")
    }

    /// Hands a client's message to the ingest thread for a backend listening with
    /// `UPSTREAM`; when none listens (on this node, without a backplane) or the queue is
    /// full, the client is told so.
    fn upstream(&mut self, index: u32, text: bool, payload: &[u8]) {
        let shared = Arc::clone(&self.shared);
        let sub = match self.may_send_upstream(index) {
            Ok(sub) => sub,
            Err(()) => {
                bump(&self.counters.auth_forbidden);
                return self.upstream_refused(index, "the token does not allow upstream messages");
            }
        };
        if !shared.upstream_listeners.any() && shared.backplane.is_none() {
            return self.upstream_refused(index, "no backend is listening for upstream messages");
        }
        let msg = Upstream {
            from: ConnId {
                shard: self.id as u32,
                index,
                generation: self.conns[index as usize].generation,
            },
            text,
            payload: Bytes::copy_from_slice(payload),
            sub,
        };
        if !shared.mailboxes[self.id].push_up(msg) {
            return self.upstream_refused(index, "upstream queue full; message not delivered");
        }
        bump(&self.counters.upstream);
        self.upstream_waiting = true;
    }

    /// Rings the ingest thread once per loop turn in which client messages were queued.
    pub(super) fn ring_upstream(&mut self) {
        if !std::mem::take(&mut self.upstream_waiting) {
            return;
        }
        self.ring_ingest(UPSTREAM_BELL_DATA);
    }

    /// Delivers backends' `SEND`s to their connections; a connection that has closed
    /// (or is not a WebSocket) is counted. A client's message that came back undelivered
    /// is told to it and counted as refused.
    pub(super) fn deliver_downstream(&mut self) {
        let shared = Arc::clone(&self.shared);
        let Some(queue) = shared.mailboxes[self.id].take_down() else {
            return;
        };
        for msg in queue {
            let open = self
                .conns
                .get(msg.index as usize)
                .is_some_and(|c| c.generation == msg.generation && c.state == State::Ws);
            if msg.refusal {
                bump(&self.counters.upstream_refused);
                if open {
                    self.ws_send(msg.index, Opcode::Text, &msg.payload);
                }
                continue;
            }
            if !open {
                bump(&self.counters.downstream_dropped);
                continue;
            }
            let opcode = if std::str::from_utf8(&msg.payload).is_ok() {
                Opcode::Text
            } else {
                Opcode::Binary
            };
            self.ws_send(msg.index, opcode, &msg.payload);
        }
    }

    fn upstream_refused(&mut self, index: u32, reason: &str) {
        bump(&self.counters.upstream_refused);
        let mut text = Vec::with_capacity(96);
        text.extend_from_slice(b"{\"event\":\"ringcast.error\",\"reason\":");
        json::push_string(&mut text, reason);
        text.extend_from_slice(b",\"topic\":null}");
        self.send_control(
            index,
            ws_control(std::str::from_utf8(&text).expect("JSON is UTF-8")),
        );
    }
}
