//! Receiving and requests: a connection's input, the HTTP requests in it, and the answer
//! or transport each one gets.

use bytes::Bytes;

use crate::conn::{flags, ops, State};
use crate::proto::http::{self, Method, Request};

use super::{bump, Shard, STAGING_MAX};

impl Shard {
    pub(super) fn live(&self, index: u32, generation: u32) -> bool {
        self.conns
            .get(index as usize)
            .is_some_and(|c| c.generation == generation)
    }

    pub(super) fn on_recv(
        &mut self,
        index: u32,
        generation: u32,
        res: i32,
        more: bool,
        buf: Option<&mut [u8]>,
    ) {
        if !self.live(index, generation) {
            return;
        }
        if !more {
            self.conns[index as usize].ops &= !ops::RECV;
        }
        if res > 0 {
            self.park.heard(index);
            let data = buf.expect("a receive of bytes lends them");
            self.on_input(index, data);
        } else if res == -libc::ENOBUFS {
            // Every buffer was in use for a moment; the receive ended and is re-armed below.
            bump(&self.counters.recv_enobufs);
        } else if res == -libc::ECANCELED && self.park.is_parked(index) {
            // Parked: the poll is armed below in the receive's place.
        } else {
            // EOF or a socket error: the peer is gone.
            if res == -libc::ETIMEDOUT {
                bump(&self.counters.tcp_timeouts);
            }
            self.close(index);
        }
        if !more {
            self.rearm_or_finish(index);
        }
    }

    /// After a receive's (or a poll's) final completion: a closing connection may be
    /// freed, a parked one waits on a poll, any other gets its receive again.
    pub(super) fn rearm_or_finish(&mut self, index: u32) {
        let parked = self.unpark(index);
        match self.conns.get(index as usize).map(|c| c.state) {
            Some(State::Closing) => self.maybe_free(index),
            Some(_) if parked => self.arm_poll(index),
            Some(_) => self.arm_recv(index),
            None => {}
        }
    }

    pub(super) fn on_input(&mut self, index: u32, data: &mut [u8]) {
        match self.conns[index as usize].state {
            State::Request => self.on_http_input(index, data),
            State::Ws => self.on_ws_input(index, data),
            // Streams and closing connections have nothing more to say to us.
            _ => {}
        }
    }

    pub(super) fn on_http_input(&mut self, index: u32, data: &mut [u8]) {
        let tick = self.tick;
        let conn = &mut self.conns[index as usize];
        let new_request = conn.staging.is_none() && conn.has_flag(flags::SERVED);
        if new_request {
            // The first bytes of the next request: its head deadline starts now.
            conn.mark = tick;
        }
        conn.last_io = tick;
        match self.conns[index as usize].staging.take() {
            Some(mut staged) => {
                let room = STAGING_MAX.saturating_sub(staged.len());
                staged.extend_from_slice(&data[..data.len().min(room)]);
                let used = self.on_requests(index, &staged);
                self.after_requests(index, &mut staged[..], used);
                if self.still_reading(index) {
                    staged.drain(..used);
                    if !staged.is_empty() {
                        self.conns[index as usize].staging = Some(staged);
                    }
                }
            }
            None => {
                let used = self.on_requests(index, data);
                self.after_requests(index, data, used);
                if self.still_reading(index) && used < data.len() {
                    self.conns[index as usize].staging = Some(Box::new(data[used..].to_vec()));
                }
            }
        }
        if new_request && self.still_reading(index) {
            // A head now partly read: its deadline may be earlier than the idle one.
            self.arm_earlier(index);
        }
    }

    /// After the requests in `buf[..used]`: bytes behind a WebSocket upgrade are frames.
    pub(super) fn after_requests(&mut self, index: u32, buf: &mut [u8], used: usize) {
        if self
            .conns
            .get(index as usize)
            .is_some_and(|c| c.state == State::Ws)
            && used < buf.len()
        {
            self.on_ws_input(index, &mut buf[used..]);
        }
    }

    /// True while connection `index` is still reading HTTP requests.
    pub(super) fn still_reading(&self, index: u32) -> bool {
        self.conns
            .get(index as usize)
            .is_some_and(|c| c.state == State::Request)
    }

    /// Handles every complete request in `buf`; returns the bytes consumed.
    pub(super) fn on_requests(&mut self, index: u32, buf: &[u8]) -> usize {
        let mut at = 0;
        while at < buf.len() {
            if self.conns[index as usize].state != State::Request {
                return at;
            }
            match http::parse_request(&buf[at..]) {
                Ok(http::Parsed::Partial) => return at,
                Ok(http::Parsed::Complete(req)) => {
                    let head = &buf[at..at + req.head_len];
                    at += req.head_len;
                    self.on_request(index, &req, head);
                    // A keep-alive idle deadline may now apply, earlier than the head's.
                    self.arm_earlier(index);
                }
                Err(e) => {
                    bump(&self.counters.bad_requests);
                    self.respond(index, e.status(), e.reason(), false, &[]);
                    return buf.len();
                }
            }
        }
        at
    }

    pub(super) fn on_request(&mut self, index: u32, req: &Request<'_>, head: &[u8]) {
        // Every event acknowledged before this request arrived is delivered first: its
        // doorbell may have come in the same turn as the request.
        if let Some(broadcast) = self.broadcast.take() {
            if self.next_seq < broadcast.head() {
                self.catch_up(&broadcast);
            }
            self.broadcast = Some(broadcast);
        }
        let tick = self.tick;
        let conn = &mut self.conns[index as usize];
        conn.flags |= flags::SERVED;
        conn.last_io = tick;
        if conn.has_flag(flags::REFUSED) {
            return self.answer_refusal(index, req);
        }
        // A request body is never expected here; rather than skip it, answer and close.
        let keep_alive = req.keep_alive && !req.has_body;
        match (req.path, req.method) {
            ("/sse", Method::Get | Method::Head) => self.subscribe(index, req, keep_alive, false),
            ("/stream", Method::Get | Method::Head) => self.subscribe(index, req, keep_alive, true),
            ("/ws", _) => self.ws_upgrade(index, req, head, false),
            ("/echo", _) if self.shared.config.ws_echo => self.ws_upgrade(index, req, head, true),
            ("/poll", Method::Get) => self.poll(index, req, keep_alive),
            ("/sse" | "/stream" | "/poll", Method::Options) => self.preflight(index, req, keep_alive),
            ("/sse" | "/stream" | "/poll", _) => self.respond(
                index,
                405,
                "method not allowed: use GET",
                keep_alive,
                &[("Allow", "GET, HEAD")],
            ),
            _ => self.respond(
                index,
                404,
                "not found: subscribe at /sse?topic=NAME or /ws?topic=NAME",
                keep_alive,
                &[],
            ),
        }
    }

    /// Queues a plain-text answer; without keep-alive the connection closes after it.
    pub(super) fn respond(
        &mut self,
        index: u32,
        status: u16,
        body: &str,
        keep_alive: bool,
        headers: &[(&str, &str)],
    ) {
        let bytes = Bytes::from(http::simple_response(status, body, keep_alive, headers));
        if keep_alive {
            self.send_control(index, bytes);
        } else {
            self.send_final(index, bytes);
        }
    }
}
