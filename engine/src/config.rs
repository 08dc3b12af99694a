//! Every limit and budget of the engine, with its unit and default, parsed from the
//! command line and validated once at start. Nothing else in the engine picks a number.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::conn::outq::{Limits, Policy};
use crate::ring::history::HistoryLimits;

fn parse_policy(s: &str) -> Result<(String, Policy), String> {
    let (pattern, policy) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("{s:?}: expected PATTERN=POLICY"))?;
    if pattern.is_empty() {
        return Err(format!("{s:?}: the pattern is empty"));
    }
    Ok((pattern.to_string(), policy.parse()?))
}

/// Whether `topic` matches `pattern`: exact, `prefix*`, `*suffix` or `*`.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    if pattern == "*" {
        true
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        topic.starts_with(prefix)
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        topic.ends_with(suffix)
    } else {
        pattern == topic
    }
}

/// Largest registered file table the kernel allows per ring.
pub const FILE_TABLE_MAX: u32 = 1 << 20;

/// `ringcast serve` flags. Doc comments are the `--help` text.
#[derive(Args, Clone, Debug)]
pub struct Config {
    /// Address to accept clients on (repeat for several).
    #[arg(long = "listen", value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: Vec<SocketAddr>,

    /// Admin address for /healthz and /stats (keep it private: loopback by default).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub admin: SocketAddr,

    /// Unix socket publishers connect to.
    #[arg(long, value_name = "PATH", default_value = "./ringcast.sock")]
    pub ingest: PathBuf,

    /// Event loops, one thread each [default: the number of CPUs].
    #[arg(long, value_name = "N")]
    pub loops: Option<usize>,

    /// Client connections each loop may hold. Capped at RLIMIT_NOFILE (each loop's
    /// registered file table is) and at 2^20.
    #[arg(long, value_name = "N", default_value_t = 262_144)]
    pub max_conns_per_loop: u32,

    /// Events kept per topic for Last-Event-ID resume.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub history_events: usize,

    /// Bytes of events kept per topic (encodings included).
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub history_bytes: usize,

    /// Seconds an event stays replayable.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub history_age_secs: u64,

    /// Topics the history keeps; the least recently published goes first.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub history_topics: usize,

    /// Bytes the history keeps across all topics.
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 20)]
    pub history_bytes_total: usize,

    /// Largest payload a publisher may send, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub payload_max: usize,

    /// Publisher connections held at once.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub publishers_max: usize,

    /// Slots of the broadcast ring between the ingest thread and the loops (a power of two).
    #[arg(long, value_name = "N", default_value_t = 16_384)]
    pub ring_slots: usize,

    /// Event bytes queued for one slow client before its topic's policy applies.
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 10)]
    pub queue_bytes: usize,

    /// Events queued for one slow client before its topic's policy applies.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub queue_events: usize,

    /// Backpressure policy for topics matching PATTERN (repeatable; first match wins):
    /// `PATTERN=drop-oldest|drop-newest|coalesce|disconnect`, where PATTERN is a topic,
    /// `prefix*`, `*suffix` or `*`. Unmatched topics use drop-oldest.
    #[arg(long = "policy", value_name = "PATTERN=POLICY", value_parser = parse_policy)]
    pub policies: Vec<(String, Policy)>,

    /// Bytes queued for one client, control bytes and replays included, before it is
    /// disconnected whatever the policy (it resumes from the history with Last-Event-ID).
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20)]
    pub out_queue_bytes_max: usize,

    /// The reconnection delay sent to SSE clients (`retry:`), in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 3000)]
    pub retry_ms: u32,

    /// An SSE stream that has sent nothing for this long gets a comment line, so proxies
    /// with idle timeouts keep it open and a vanished client is found by the write failing
    /// (0: off).
    #[arg(long, value_name = "MS", default_value_t = 15_000)]
    pub heartbeat_ms: u64,

    /// A connection with unsent bytes and no send progress for this long is closed as a
    /// stalled (or vanished) client.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub write_stall_ms: u64,

    /// A request head must arrive whole within this long of its first byte (or of the
    /// connection's start), or the connection gets 408 and is closed (slowloris).
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,

    /// A keep-alive connection with no request in flight is closed after this long.
    #[arg(long, value_name = "MS", default_value_t = 60_000)]
    pub keepalive_idle_ms: u64,

    /// TCP_USER_TIMEOUT on client sockets: sent data unacknowledged for this long makes
    /// the kernel drop a connection whose peer vanished (0: the kernel's default).
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub tcp_user_timeout_ms: u32,

    /// Largest WebSocket message a client may send (all fragments together), in bytes;
    /// larger ones close the connection with 1009.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 10)]
    pub ws_max_message: usize,

    /// Origins allowed to open a WebSocket (repeatable): exact (`https://app.example.com`),
    /// subdomain patterns (`https://*.example.com`) or `*`. When set, a handshake whose
    /// Origin matches none gets 403. Unset: any origin.
    #[arg(long = "ws-allow-origin", value_name = "PATTERN")]
    pub ws_allow_origin: Vec<String>,

    /// A WebSocket silent for this long is pinged.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub ws_ping_ms: u64,

    /// A ping unanswered (no frame at all) for this long closes the WebSocket.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub ws_pong_timeout_ms: u64,

    /// Serve `/echo`, a WebSocket that sends every message back, for conformance suites
    /// such as Autobahn. Off by default.
    #[arg(long)]
    pub ws_echo: bool,

    /// The longest a long-poll may be held (`wait=` is capped at this).
    #[arg(long, value_name = "MS", default_value_t = 60_000)]
    pub poll_wait_max_ms: u64,

    /// Receive buffers in each loop's provided-buffer ring (a power of two). Every buffer
    /// becomes resident once used; a loop recycles each in the turn it arrives, so a few
    /// hundred serve any number of connections.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub recv_buffers: u16,

    /// Bytes per receive buffer. Larger request heads are staged across buffers.
    #[arg(long, value_name = "BYTES", default_value_t = 2048)]
    pub recv_buffer_bytes: u32,
}

/// A flag value that cannot work, with the reason.
#[derive(Debug, thiserror::Error)]
#[error("--{flag} {value}: {why}")]
pub struct ConfigError {
    flag: &'static str,
    value: String,
    why: &'static str,
}

fn check(ok: bool, flag: &'static str, value: impl ToString, why: &'static str) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError {
            flag,
            value: value.to_string(),
            why,
        })
    }
}

impl Config {
    /// Checks every value once, so the loops can trust them.
    ///
    /// # Errors
    /// The first flag whose value cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(
            !self.listen.is_empty(),
            "listen",
            "",
            "at least one address is needed",
        )?;
        if let Some(n) = self.loops {
            check((1..=1024).contains(&n), "loops", n, "must be 1 to 1024")?;
        }
        check(
            self.max_conns_per_loop >= 1,
            "max-conns-per-loop",
            self.max_conns_per_loop,
            "must be at least 1",
        )?;
        check(
            self.history_events >= 1,
            "history-events",
            self.history_events,
            "must be at least 1",
        )?;
        check(
            self.history_topics >= 1,
            "history-topics",
            self.history_topics,
            "must be at least 1",
        )?;
        check(
            self.payload_max >= 1 && self.payload_max <= 64 << 20,
            "payload-max",
            self.payload_max,
            "must be 1 byte to 64 MiB",
        )?;
        check(
            self.publishers_max >= 1,
            "publishers-max",
            self.publishers_max,
            "must be at least 1",
        )?;
        check(
            self.ring_slots.is_power_of_two() && (64..=1 << 22).contains(&self.ring_slots),
            "ring-slots",
            self.ring_slots,
            "must be a power of two from 64 to 4194304",
        )?;
        check(
            self.recv_buffers.is_power_of_two() && self.recv_buffers <= 32_768,
            "recv-buffers",
            self.recv_buffers,
            "must be a power of two up to 32768",
        )?;
        check(
            (512..=1 << 20).contains(&self.recv_buffer_bytes),
            "recv-buffer-bytes",
            self.recv_buffer_bytes,
            "must be 512 bytes to 1 MiB",
        )?;
        for (flag, ms) in [
            ("write-stall-ms", self.write_stall_ms),
            ("request-timeout-ms", self.request_timeout_ms),
            ("keepalive-idle-ms", self.keepalive_idle_ms),
            ("ws-ping-ms", self.ws_ping_ms),
            ("ws-pong-timeout-ms", self.ws_pong_timeout_ms),
        ] {
            check(
                (100..=86_400_000).contains(&ms),
                flag,
                ms,
                "must be 100 ms to 24 h",
            )?;
        }
        check(
            self.heartbeat_ms == 0 || (100..=86_400_000).contains(&self.heartbeat_ms),
            "heartbeat-ms",
            self.heartbeat_ms,
            "must be 0 (off) or 100 ms to 24 h",
        )?;
        check(
            (125..=64 << 20).contains(&self.ws_max_message),
            "ws-max-message",
            self.ws_max_message,
            "must be 125 bytes to 64 MiB",
        )?;
        check(
            self.queue_events >= 1,
            "queue-events",
            self.queue_events,
            "must be at least 1",
        )?;
        check(
            self.queue_bytes >= 1024 && self.queue_bytes <= self.out_queue_bytes_max,
            "queue-bytes",
            self.queue_bytes,
            "must be at least 1 KiB and at most --out-queue-bytes-max",
        )?;
        check(
            self.out_queue_bytes_max >= 64 << 10,
            "out-queue-bytes-max",
            self.out_queue_bytes_max,
            "must be at least 64 KiB",
        )?;
        Ok(())
    }

    /// The number of loops to run.
    pub fn loop_count(&self) -> usize {
        self.loops
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Connections per loop after the kernel's caps: the registered file table is bounded
    /// by `RLIMIT_NOFILE` (already raised to its hard limit) and by 2^20.
    pub fn conns_per_loop(&self, nofile: u64) -> u32 {
        let cap = nofile.min(u64::from(FILE_TABLE_MAX)) as u32;
        self.max_conns_per_loop.min(cap)
    }

    /// The backpressure policy for `topic`.
    pub fn policy_for(&self, topic: &str) -> Policy {
        self.policies
            .iter()
            .find(|(pattern, _)| topic_matches(pattern, topic))
            .map_or(Policy::DropOldest, |&(_, p)| p)
    }

    pub fn queue_limits(&self) -> Limits {
        Limits {
            bytes: self.queue_bytes,
            events: self.queue_events,
        }
    }

    pub fn history_limits(&self) -> HistoryLimits {
        HistoryLimits {
            events_per_topic: self.history_events,
            bytes_per_topic: self.history_bytes,
            max_age: Duration::from_secs(self.history_age_secs),
            topics_max: self.history_topics,
            bytes_total: self.history_bytes_total,
        }
    }
}
