//! Long-polling and plain polling: `GET /poll?topic=A[&topic=B...][&after=ID][&wait=SECONDS]`.
//!
//! With events newer than `after` retained, or a cursor the history cannot honour, the
//! answer comes at once; otherwise the request is held, subscribed to its topics, until
//! an event arrives or `wait` (default 25 s, at most `--poll-wait-max-ms`) runs out.
//! `wait=0` is plain polling. The body is JSON:
//!
//! ```text
//! {"events":[{"id":..,"topic":..,"event":..|null,"data":..},...],"next":"<id>","reset":{..}}
//! ```
//!
//! `next` is the cursor to pass as `after` next time; `reset` (present only when the cursor
//! was from another epoch, malformed, or older than the history) carries the same fields
//! as SSE's `ringcast.reset`. Ids, history and resets are those of every other transport,
//! so a client can switch between them with one id.
use std::sync::Arc;

use bytes::Bytes;

use super::catchup::Resume;
use super::{bump, Missed, Shard};
use crate::conn::{flags, State};
use crate::event::Event;
use crate::proto::http::{self, Request};
use crate::proto::ws;

/// The CORS lines of an answer to an origin that is not allowed.
const VARY_ORIGIN: &str = "Vary: Origin\r\n";

/// How long a poll is held when it names no `wait`.
const WAIT_DEFAULT_SECS: u64 = 25;

impl Shard {
    /// The CORS header lines for a response to a request from `origin`, or `None` when no
    /// origins are configured and the shared `Access-Control-Allow-Origin: *` applies.
    /// Empty when the origin is not allowed: the browser then keeps the response from it.
    pub(super) fn cors_lines(&self, origin: Option<&[u8]>) -> Option<String> {
        let cfg = &self.shared.config;
        if cfg.cors_origin.is_empty() {
            return None;
        }
        let allowed = origin
            .filter(|o| ws::origin_allowed(Some(o), &cfg.cors_origin))
            .and_then(|o| std::str::from_utf8(o).ok())
            .filter(|o| o.bytes().all(|b| b.is_ascii_graphic()));
        let Some(origin) = allowed else {
            // Refused: no CORS header, but the answer still varies by origin for caches.
            return Some(VARY_ORIGIN.to_string());
        };
        let mut lines = format!("Access-Control-Allow-Origin: {origin}\r\nVary: Origin\r\n");
        if cfg.cors_credentials {
            lines.push_str("Access-Control-Allow-Credentials: true\r\n");
        }
        Some(lines)
    }

    pub(super) fn poll(&mut self, index: u32, req: &Request<'_>, keep_alive: bool) {
        let sub = match http::parse_subscription(req.query) {
            Ok(sub) => sub,
            Err(e) => {
                bump(&self.counters.bad_requests);
                return self.respond(index, 400, &e.to_string(), false, &[]);
            }
        };
        let wait_ms = match http::query_param(req.query, "wait").map(|w| w.parse::<u64>()) {
            None => WAIT_DEFAULT_SECS * 1000,
            Some(Ok(secs)) => secs.saturating_mul(1000),
            Some(Err(_)) => {
                bump(&self.counters.bad_requests);
                return self.respond(index, 400, "wait must be a whole number of seconds", false, &[]);
            }
        }
        .min(self.shared.config.poll_wait_max_ms);
        let Some(grant) = self.authenticate(index, req, &sub.topics) else {
            return;
        };
        // Everything acknowledged before this request arrived is answerable: the ring is read
        // first, in case this turn's doorbell came with the request.
        let broadcast = Arc::clone(&self.shared.broadcast);
        self.catch_up(&broadcast);
        let after = http::query_param(req.query, "after");
        bump(&self.counters.polls);
        let cors = self.cors_lines(req.origin);
        let resume = match &after {
            Some(after) => self.resume_from(&sub.topics, after.as_bytes(), self.page_limits()),
            None => Resume::Local(Missed {
                reset: None,
                events: Vec::new(),
                more: false,
            }),
        };
        let missed = match resume {
            Resume::Local(missed) => missed,
            // The stream answers, or this node must first deliver what the client saw:
            // held like a long-poll, subscribed to nothing, until the answer comes.
            stream_or_ahead => {
                self.hold(index, keep_alive, cors, self.stream_wait_ticks());
                self.poll_topics
                    .insert(index, sub.topics.iter().map(|t| t.as_str().into()).collect());
                let last = after.as_deref().unwrap_or_default().as_bytes().to_vec();
                return match stream_or_ahead {
                    Resume::Stream { after, reset } => self.hold_poll_for_stream(index, after, reset, &last),
                    Resume::Ahead(seen) => self.hold_poll_until(index, seen, &last),
                    Resume::Local(_) => unreachable!("matched above"),
                };
            }
        };
        if !missed.events.is_empty() || missed.reset.is_some() || wait_ms == 0 {
            // After a reset the rejected cursor must not come back as `next`: it would be
            // rejected again. The reset's own id (just before what was replayed) is the
            // point the client now stands at.
            let next = match (missed.events.last(), &missed.reset) {
                (Some(last), _) => last.id.to_string(),
                (None, Some(reset)) => reset.id.clone(),
                (None, None) => self.cursor_id(&[], after.as_deref()),
            };
            let body = poll_body(&missed.events, &next, missed.reset.as_ref());
            return self.answer_poll(index, &body, keep_alive, cors.as_deref());
        }
        let wait = self.clock.ticks_in(std::time::Duration::from_millis(wait_ms)) + 1;
        self.hold(index, keep_alive, cors, wait);
        self.keep_session(index, grant);
        for topic in &sub.topics {
            self.subs.add(&mut self.conns, index, topic);
        }
    }

    /// Holds a poll for `wait` ticks at most.
    fn hold(&mut self, index: u32, keep_alive: bool, cors: Option<String>, wait: u32) {
        if let Some(cors) = cors {
            self.poll_cors.insert(index, cors);
        }
        let deadline = self.tick.wrapping_add(wait);
        let conn = &mut self.conns[index as usize];
        conn.state = State::Poll;
        conn.mark = deadline;
        if keep_alive {
            conn.flags |= flags::KEEP_ALIVE;
        } else {
            conn.flags &= !flags::KEEP_ALIVE;
        }
        self.count_open(index, 1);
        self.arm_timer(index, deadline);
    }

    /// How long a poll waits for the stream's answer: twice the backplane's timeout.
    fn stream_wait_ticks(&self) -> u32 {
        let ms = self.shared.config.backplane_timeout_ms.saturating_mul(2);
        self.clock.ticks_in(std::time::Duration::from_millis(ms)) + 1
    }

    /// A held poll gets its event: answer, and go back to reading requests.
    pub(super) fn poll_event(&mut self, index: u32, event: &Arc<Event>) {
        let body = poll_body(std::slice::from_ref(event), &event.id, None);
        self.end_poll(index, &body);
    }

    /// A held poll's wait ran out: answer with no events and the current cursor.
    pub(super) fn poll_timeout(&mut self, index: u32) {
        let body = poll_body(&[], &self.cursor_id(&[], None), None);
        self.end_poll(index, &body);
    }

    pub(super) fn end_poll(&mut self, index: u32, body: &str) {
        self.end_catchup(index);
        self.poll_topics.remove(&index);
        self.count_open(index, -1);
        self.subs.remove_all(&mut self.conns, index);
        let conn = &mut self.conns[index as usize];
        let keep_alive = conn.has_flag(flags::KEEP_ALIVE);
        conn.state = State::Request;
        conn.mark = self.tick;
        conn.last_io = self.tick;
        let cors = self.poll_cors.remove(&index);
        self.answer_poll(index, body, keep_alive, cors.as_deref());
        self.arm_timer(index, self.tick.wrapping_add(1));
    }

    /// Sends a poll's answer; `cors` as from [`Shard::cors_lines`].
    fn answer_poll(&mut self, index: u32, body: &str, keep_alive: bool, cors: Option<&str>) {
        let mut head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-cache\r\n\
             {}Content-Length: {}\r\n",
            cors.unwrap_or("Access-Control-Allow-Origin: *\r\n"),
            body.len()
        );
        if !keep_alive {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        head.push_str(body);
        if keep_alive {
            self.send_control(index, Bytes::from(head));
        } else {
            self.send_final(index, Bytes::from(head));
        }
    }

    /// The cursor after `events`, or, with none, the id the client passed (still valid)
    /// or this loop's position.
    fn cursor_id(&self, events: &[Arc<Event>], after: Option<&str>) -> String {
        match (events.last(), after) {
            (Some(last), _) => last.id.to_string(),
            (None, Some(after))
                if matches!(
                    self.shared.epoch.parse(after.as_bytes()),
                    crate::event::LastId::Seq(_)
                ) =>
            {
                after.to_string()
            }
            _ => self.shared.epoch.id(self.delivered_upto()),
        }
    }

    /// CORS preflight for the client endpoints: 204 for an allowed origin (any, unless
    /// `--cors-origin` is set), 403 for another.
    pub(super) fn preflight(&mut self, index: u32, req: &Request<'_>, keep_alive: bool) {
        let cors = self.cors_lines(req.origin);
        if cors.as_deref() == Some(VARY_ORIGIN) {
            return self.respond(
                index,
                403,
                "origin not allowed (see --cors-origin)",
                keep_alive,
                &[],
            );
        }
        let mut head = format!(
            "HTTP/1.1 204 No Content\r\n{}Access-Control-Allow-Methods: GET, HEAD, OPTIONS\r\n\
             Access-Control-Allow-Headers: Last-Event-ID, Cache-Control, Content-Type\r\n\
             Access-Control-Max-Age: 86400\r\n",
            cors.as_deref().unwrap_or("Access-Control-Allow-Origin: *\r\n")
        );
        if !keep_alive {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        if keep_alive {
            self.send_control(index, Bytes::from(head));
        } else {
            self.send_final(index, Bytes::from(head));
        }
    }
}

pub(super) fn poll_body(events: &[Arc<Event>], next: &str, reset: Option<&super::Reset>) -> String {
    let mut body = Vec::with_capacity(64 + events.iter().map(|e| e.data.len() + 64).sum::<usize>());
    body.extend_from_slice(b"{\"events\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&event.json());
    }
    body.extend_from_slice(b"],\"next\":");
    crate::proto::json::push_string(&mut body, next);
    if let Some(reset) = reset {
        body.extend_from_slice(b",\"reset\":");
        body.extend_from_slice(reset.data.as_bytes());
    }
    body.push(b'}');
    String::from_utf8(body).expect("JSON is UTF-8")
}
