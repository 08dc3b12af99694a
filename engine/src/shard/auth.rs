//! Subscriber auth on a loop (with `--auth-jwks`): the token of each subscribing request,
//! the topics it allows, and its expiry on an open connection.
//!
//! A request without a valid token gets `401` with `WWW-Authenticate: Bearer
//! error="invalid_token", error_description=".."`; a topic the token does not allow gets
//! `403` naming it. An admitted connection keeps a [`Session`] (its token's expiry and the
//! index of its interned permission set, 8 bytes) in a side table (a WebSocket told of its
//! expiry carries the flag `EXPIRY_TOLD` in its record), and its expiry joins the
//! connection's one timer-wheel entry (see `timers`). When it passes: an SSE or NDJSON
//! stream gets `ringcast.expired` and ends, a held poll is answered, a WebSocket gets a
//! `ringcast.expired` message and `--auth-refresh-grace-ms` to send
//! `{"op":"refresh","token":..}`, else it is closed with 4001. Every event carries its id,
//! so a client reconnecting with a new token and its Last-Event-ID loses nothing.
use bytes::Bytes;

use super::{bump, control, Shard};
use crate::auth::{now_secs, Grant, Refusal};
use crate::conn::{flags, State};
use crate::proto::http::{self, Request};
use crate::proto::Kind;
use crate::proto::{json, sse, ws};

/// Closes a WebSocket whose token expired and was not refreshed (an application code,
/// RFC 6455 §7.4.2).
pub(super) const CLOSE_EXPIRED: u16 = 4001;

/// What an admitted connection keeps of its token.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Session {
    /// `exp` plus the leeway, in seconds since the Unix epoch (u32 holds it to 2106).
    pub expires: u32,
    /// The interned permission set.
    pub perms: u32,
}

impl Shard {
    /// With auth on, the token of `req` and the grant for `topics`; answers the request
    /// itself (401 or 403) and returns `None` when it is refused. With auth off, always
    /// `Some(None)`.
    pub(super) fn authenticate(
        &mut self,
        index: u32,
        req: &Request<'_>,
        topics: &[String],
    ) -> Option<Option<Grant>> {
        let Some(auth) = self.shared.auth.clone() else {
            return Some(None);
        };
        let query_token = http::query_param(req.query, "token");
        let cookie = self.shared.config.auth_cookie.as_deref();
        let token = crate::auth::token_of(req.authorization, req.cookie, cookie)
            .or(query_token.as_deref().map(str::as_bytes))
            .unwrap_or_default();
        let grant = match auth.verify(token) {
            Ok(grant) => grant,
            Err(refusal) => {
                self.refuse_token(index, refusal);
                return None;
            }
        };
        let perms = auth.perms(grant.perms);
        if let Some(topic) = topics.iter().find(|t| !perms.may_subscribe(t)) {
            bump(&self.counters.auth_forbidden);
            let why = format!("the token does not allow the topic {topic}");
            self.respond(index, 403, &why, false, &[]);
            return None;
        }
        Some(Some(grant))
    }

    fn refuse_token(&mut self, index: u32, refusal: Refusal) {
        bump(&self.counters.auth_refused[refusal.index()]);
        let challenge = format!(
            "Bearer error=\"invalid_token\", error_description=\"{}\"",
            refusal.description()
        );
        self.respond(
            index,
            401,
            refusal.description(),
            false,
            &[("WWW-Authenticate", &challenge)],
        );
    }

    /// Keeps what connection `index` needs of its grant, and arms its expiry.
    pub(super) fn keep_session(&mut self, index: u32, grant: Option<Grant>) {
        let Some(grant) = grant else {
            return;
        };
        let leeway = self.shared.config.auth_leeway_secs;
        let expires = u32::try_from(grant.exp.saturating_add(leeway)).unwrap_or(u32::MAX);
        self.sessions.set(
            index,
            Session {
                expires,
                perms: grant.perms,
            },
        );
        if let Some(conn) = self.conns.get_mut(index as usize) {
            conn.flags &= !flags::EXPIRY_TOLD;
        }
        // Kept only for WebSockets that may send upstream: the messages they send name it.
        let may_send = self.conns.get(index as usize).is_some_and(|c| c.kind.is_ws())
            && self
                .shared
                .auth
                .as_ref()
                .is_some_and(|a| a.perms(grant.perms).may_send_upstream());
        match grant.sub {
            Some(sub) if may_send => {
                self.ws_subs.insert(index, sub.into());
            }
            _ => {
                self.ws_subs.remove(&index);
            }
        }
    }

    /// With auth on, whether WebSocket `index`'s token allows upstream messages, and its
    /// `sub` for them; with auth off, `Ok(None)`.
    pub(super) fn may_send_upstream(&self, index: u32) -> Result<Option<std::sync::Arc<str>>, ()> {
        let Some(auth) = &self.shared.auth else {
            return Ok(None);
        };
        match self.sessions.get(index) {
            Some(s) if auth.perms(s.perms).may_send_upstream() => Ok(self.ws_subs.get(&index).cloned()),
            _ => Err(()),
        }
    }

    /// The tick by which connection `index`'s token expires (or its refresh grace ends),
    /// when it has one: capped at the wheel's reach, the timer then looks again.
    pub(super) fn session_deadline(&self, index: u32) -> Option<u32> {
        let s = self.sessions.get(index)?;
        let mut at_ms = u64::from(s.expires) * 1000;
        if self.conns[index as usize].has_flag(flags::EXPIRY_TOLD) {
            at_ms += self.shared.config.auth_refresh_grace_ms;
        }
        let now_ms = now_secs() * 1000;
        let left = std::time::Duration::from_millis(at_ms.saturating_sub(now_ms));
        Some(self.tick.wrapping_add(self.clock.ticks_in(left) + 1))
    }

    /// Acts on an expired token when connection `index`'s timer fires; true when it did
    /// (the connection's state may have changed).
    pub(super) fn expire_session(&mut self, index: u32) -> bool {
        let Some(s) = self.sessions.get(index) else {
            return false;
        };
        let now = now_secs();
        let grace_secs = self.shared.config.auth_refresh_grace_ms.div_ceil(1000);
        if now < u64::from(s.expires) {
            return false;
        }
        let conn = &mut self.conns[index as usize];
        let (state, kind, told) = (conn.state, conn.kind, conn.has_flag(flags::EXPIRY_TOLD));
        match state {
            State::Ws if !told => {
                bump(&self.counters.auth_expired);
                let grace = self.shared.config.auth_refresh_grace_ms;
                conn.flags |= flags::EXPIRY_TOLD;
                let notice =
                    format!("{{\"event\":\"ringcast.expired\",\"data\":{{\"refresh_within_ms\":{grace}}}}}");
                self.send_control(index, super::ws_control(&notice));
            }
            State::Ws if now >= u64::from(s.expires) + grace_secs => {
                self.sessions.clear(index);
                self.ws_close(index, CLOSE_EXPIRED, "token expired");
            }
            State::Ws => return false,
            State::Stream => {
                bump(&self.counters.auth_expired);
                self.sessions.clear(index);
                let data = "{\"reason\":\"the token expired: reconnect with a new one and Last-Event-ID\"}";
                let mut goodbye = control(kind, "ringcast.expired", None, data).to_vec();
                if matches!(kind, Kind::Sse | Kind::Ndjson) {
                    goodbye.extend_from_slice(sse::CHUNKED_END);
                }
                self.end_stream(index, Bytes::from(goodbye));
            }
            State::Poll => {
                bump(&self.counters.auth_expired);
                self.sessions.clear(index);
                self.poll_timeout(index);
            }
            _ => {
                self.sessions.clear(index);
                return false;
            }
        }
        true
    }

    /// `{"op":"refresh","token":..}` on a WebSocket: a valid token that allows every topic
    /// the connection holds replaces the old one.
    pub(super) fn ws_refresh(&mut self, index: u32, token: &str) -> Result<&'static str, String> {
        let Some(auth) = self.shared.auth.clone() else {
            return Err("auth is not enabled on this engine".into());
        };
        let grant = auth
            .verify(token.as_bytes())
            .map_err(|r| r.description().to_string())?;
        let perms = auth.perms(grant.perms);
        let held: Vec<String> = self
            .subs
            .topics_of(&self.conns, index)
            .map(str::to_owned)
            .collect();
        if let Some(topic) = held.iter().find(|t| !perms.may_subscribe(t)) {
            return Err(format!("the new token does not allow the topic {topic}"));
        }
        // A refresh renews a client's token; it does not make it someone else.
        if let Some(old) = self.ws_subs.get(&index) {
            if grant.sub.as_deref() != Some(&**old) {
                return Err("the new token is for another subject".into());
            }
        }
        bump(&self.counters.auth_refreshed);
        self.keep_session(index, Some(grant));
        self.arm_earlier(index);
        Ok("ringcast.refreshed")
    }

    /// Whether connection `index` may subscribe to `topic` (always, with auth off).
    pub(super) fn may_subscribe(&self, index: u32, topic: &str) -> bool {
        match (&self.shared.auth, self.sessions.get(index)) {
            (None, _) => true,
            (Some(auth), Some(s)) => auth.perms(s.perms).may_subscribe(topic),
            (Some(_), None) => false,
        }
    }
}

/// The JSON of a `ringcast.error` for `reason`, as the WebSocket ops answer.
pub(super) fn ws_error(reason: &str, topic: Option<&str>) -> Bytes {
    let mut text = Vec::with_capacity(96);
    text.extend_from_slice(b"{\"event\":\"ringcast.error\",\"reason\":");
    json::push_string(&mut text, reason);
    text.extend_from_slice(b",\"topic\":");
    match topic {
        Some(t) => json::push_string(&mut text, t),
        None => text.extend_from_slice(b"null"),
    }
    text.push(b'}');
    let mut frame = Vec::with_capacity(text.len() + 4);
    ws::encode_frame(&mut frame, ws::Opcode::Text, true, &text);
    Bytes::from(frame)
}

/// Sessions by slab index, 8 bytes each: slab indexes are dense, so a vector grown to the
/// highest admitted index costs less than a map (whose buckets run up to twice the
/// entries, at 13 bytes each). An `expires` of 0 is no session.
#[derive(Default)]
pub(super) struct Sessions {
    slots: Vec<Session>,
}

impl Sessions {
    pub fn get(&self, index: u32) -> Option<Session> {
        self.slots.get(index as usize).copied().filter(|s| s.expires != 0)
    }

    pub fn set(&mut self, index: u32, session: Session) {
        let i = index as usize;
        if i >= self.slots.len() {
            self.slots.resize(i + 1, Session::default());
        }
        self.slots[i] = Session {
            expires: session.expires.max(1),
            ..session
        };
    }

    pub fn clear(&mut self, index: u32) {
        if let Some(slot) = self.slots.get_mut(index as usize) {
            *slot = Session::default();
        }
    }
}
