//! What a loop does with admission control's decisions: answering refused connections,
//! and limiting the rate of each WebSocket's messages.
//!
//! | refused for                    | answer                                               |
//! |--------------------------------|------------------------------------------------------|
//! | `--max-conns-per-ip`           | `429`, `Retry-After: 10`                              |
//! | `--accept-rate-per-ip`         | `429`, `Retry-After` when the next token is due       |
//! | `--max-conns`, `GET /sse`      | `200`, a jittered `retry:`, and the stream ends      |
//! | `--max-conns`, anything else   | `503`, the same delay in `Retry-After`               |
//!
//! A shed SSE request gets a short stream rather than an error because a browser's
//! EventSource gives up for good on any answer but `200`; the jitter spreads the reconnects.
//!
//! WebSocket messages (subscribe ops and upstream) draw from a token bucket of
//! `--ws-msg-burst` refilled at `--ws-msg-rate` per second, kept only while it is not full.
//! A message beyond it gets a `ringcast.error` and is not acted on; a client that goes on
//! sending into an empty bucket for another burst's worth is closed with 1008.
use bytes::Bytes;

use super::{bump, Shard, TICK_MS};
use crate::admission::Refusal;
use crate::proto::http::{Method, Request};
use crate::proto::{sse, ws};

/// `Retry-After` for an address at its connection cap: when one of its connections will
/// close is unknown, so a pause long enough to matter.
const PER_IP_RETRY_SECS: u32 = 10;
/// Shed clients come back after `--retry-ms` plus up to this many times more, spread
/// evenly: 3 to 15 s with the default `--retry-ms`.
const SHED_SPREAD: u64 = 4;
/// Bucket tokens are tenths of a message, so a rate refills every tick.
const TENTHS: u32 = 10;

/// One WebSocket's message bucket.
#[derive(Debug)]
pub(super) struct Bucket {
    /// Tenths of a message, as of `at`.
    tokens: u32,
    at: u32,
    /// Messages refused in a row.
    refused: u32,
}

impl Shard {
    /// Answers a refused connection's first request and closes it.
    pub(super) fn answer_refusal(&mut self, index: u32, req: &Request<'_>) {
        let why = self.refusals.get(&index).copied().unwrap_or(Refusal::Shed);
        match why {
            Refusal::PerIp => self.respond(
                index,
                429,
                "too many connections from this address",
                false,
                &[("Retry-After", &PER_IP_RETRY_SECS.to_string())],
            ),
            Refusal::Rate { retry_after_secs } => self.respond(
                index,
                429,
                "connecting too fast from this address",
                false,
                &[("Retry-After", &retry_after_secs.to_string())],
            ),
            Refusal::Shed => {
                let retry_ms = self.jittered_shed_ms();
                if req.path == "/sse" && req.method == Method::Get {
                    let cors = self
                        .cors_lines(req.origin)
                        .unwrap_or_else(|| "Access-Control-Allow-Origin: *\r\n".to_string());
                    let mut body = Vec::new();
                    sse::encode_retry(&mut body, retry_ms);
                    let mut answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n{cors}Content-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    answer.extend_from_slice(&body);
                    self.send_final(index, Bytes::from(answer));
                } else {
                    self.respond(
                        index,
                        503,
                        "at capacity: retry later",
                        false,
                        &[("Retry-After", &retry_ms.div_ceil(1000).to_string())],
                    );
                }
            }
        }
    }

    fn jittered_shed_ms(&mut self) -> u32 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let base = self.shared.config.retry_ms;
        let jitter = self.rng % (u64::from(base) * SHED_SPREAD).max(1);
        base.saturating_add(jitter as u32)
    }

    /// Takes a token for one message from WebSocket `index`; false when the message is
    /// refused (the client has been told, or closed).
    pub(super) fn ws_message_allowed(&mut self, index: u32) -> bool {
        let cfg = &self.shared.config;
        if cfg.ws_msg_rate == 0 {
            return true;
        }
        let (rate, full) = (cfg.ws_msg_rate, cfg.ws_msg_burst.max(1).saturating_mul(TENTHS));
        let tick = self.tick;
        let bucket = self.ws_buckets.entry(index).or_insert(Bucket {
            tokens: full,
            at: tick,
            refused: 0,
        });
        bucket.tokens = refilled(bucket, tick, rate, full);
        bucket.at = tick;
        if bucket.tokens >= TENTHS {
            bucket.tokens -= TENTHS;
            bucket.refused = 0;
            return true;
        }
        bucket.refused += 1;
        bump(&self.counters.ws_rate_limited);
        if bucket.refused > cfg.ws_msg_burst.max(1) {
            bump(&self.counters.ws_rate_closed);
            self.ws_close(index, ws::close::POLICY, "message rate limit exceeded");
            return false;
        }
        let reply = super::auth::ws_error("message rate limit exceeded: slow down", None);
        self.send_control(index, reply);
        false
    }

    /// Forgets the buckets that are full again: an idle WebSocket keeps none.
    pub(super) fn prune_ws_buckets(&mut self) {
        let cfg = &self.shared.config;
        let (rate, full) = (cfg.ws_msg_rate, cfg.ws_msg_burst.max(1).saturating_mul(TENTHS));
        let tick = self.tick;
        self.ws_buckets
            .retain(|_, b| refilled(b, tick, rate, full) < full);
    }
}

/// A bucket's tokens at `tick`: `rate` messages per second is `rate` tenths per 100 ms tick.
fn refilled(b: &Bucket, tick: u32, rate: u32, full: u32) -> u32 {
    const _: () = assert!(TICK_MS == 100, "the bucket refills in tenths per 100 ms tick");
    let ticks = tick.wrapping_sub(b.at);
    b.tokens.saturating_add(ticks.saturating_mul(rate)).min(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_burst() {
        let b = Bucket {
            tokens: 0,
            at: 100,
            refused: 0,
        };
        // 20 messages a second: two per 100 ms tick.
        assert_eq!(refilled(&b, 101, 20, 500), 20);
        assert_eq!(refilled(&b, 110, 20, 500), 200);
        assert_eq!(refilled(&b, 100_000, 20, 500), 500);
        // The tick counter wraps without a refill spike.
        let w = Bucket {
            tokens: 0,
            at: u32::MAX,
            refused: 0,
        };
        assert_eq!(refilled(&w, 0, 20, 500), 20);
    }
}
