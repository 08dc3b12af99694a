//! Every limit and budget of the engine, with its unit and default, parsed from the
//! command line and validated once at start. Nothing else in the engine picks a number.
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::conn::outq::{Limits, Policy};
use crate::proto::ingest::is_valid_node_id;
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

/// An octal file mode such as `0600` or `660`.
fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal mode from 0 to 0777 (for example 0600)"))
}

/// The most bytes an admin token may have: a generous bound for a random secret, which
/// lets the comparison run over a fixed-size buffer.
pub const ADMIN_TOKEN_BYTES_MAX: usize = 1024;

/// A secret flag value: `Debug` shows `<redacted>`, so a printed configuration never
/// carries it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The secret's text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret(s.to_owned()))
}

/// Why `token` cannot be the admin token, or `None` when it can: it is sent as a bearer
/// token in a header field (RFC 6750 §2.1), so it is 1 to [`ADMIN_TOKEN_BYTES_MAX`] bytes
/// of printable ASCII without spaces.
pub fn admin_token_problem(token: &[u8]) -> Option<&'static str> {
    if token.is_empty() {
        Some("is empty, which would let anyone in; use a long random secret (e.g. `openssl rand -hex 32`)")
    } else if token.len() > ADMIN_TOKEN_BYTES_MAX {
        Some("is longer than 1024 bytes")
    } else if !token.iter().all(u8::is_ascii_graphic) {
        Some("must be printable ASCII without spaces (0x21-0x7E): it is sent in an Authorization header")
    } else {
        None
    }
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
    /// A TOML file of settings: each key is a flag's name (`history-events = 500`, lists
    /// for repeatable flags). A flag or environment variable overrides the file.
    #[arg(long, value_name = "FILE", env = "RINGCAST_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to accept clients on (repeat for several).
    #[arg(
        long = "listen",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080",
        env = "RINGCAST_LISTEN",
        value_delimiter = ','
    )]
    pub listen: Vec<SocketAddr>,

    /// Admin address for /healthz and /stats (keep it private: loopback by default).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:9090",
        env = "RINGCAST_ADMIN"
    )]
    pub admin: SocketAddr,

    /// Require `Authorization: Bearer SECRET` for the admin listener's `/stats`, `/metrics`
    /// and `POST /publish` (`/healthz` stays open). Visible to local users in the process
    /// list: prefer --admin-token-file or the environment.
    #[arg(
        long,
        value_name = "SECRET",
        value_parser = parse_secret,
        env = "RINGCAST_ADMIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "admin_token_file"
    )]
    pub admin_token: Option<Secret>,

    /// As --admin-token, with the secret read from the first line of FILE at start (a
    /// trailing newline is not part of it). The file must not be readable by every user.
    #[arg(long, value_name = "FILE", env = "RINGCAST_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// With an admin token, leave `/metrics` open for scrapers that send no credentials.
    #[arg(long, env = "RINGCAST_METRICS_PUBLIC")]
    pub metrics_public: bool,

    /// Admin connections served at once, each on its own thread; one more is answered 503
    /// and closed at once.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 64,
        env = "RINGCAST_ADMIN_CONNS_MAX"
    )]
    pub admin_conns_max: usize,

    /// Unix socket publishers connect to.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "./ringcast.sock",
        env = "RINGCAST_INGEST"
    )]
    pub ingest: PathBuf,

    /// Permissions of the ingest socket, in octal: who may connect, and so publish. Set by
    /// the engine itself whatever the umask (0600: the engine's own user only).
    #[arg(
        long,
        value_name = "MODE",
        default_value = "0600",
        value_parser = parse_mode,
        env = "RINGCAST_INGEST_MODE"
    )]
    pub ingest_mode: u32,

    /// The group the ingest socket is given, so that its members may publish with an
    /// --ingest-mode that lets the group write (e.g. `--ingest-mode 0660 --ingest-group
    /// backends`). The engine's user must be root or a member of the group.
    #[arg(long, value_name = "NAME", env = "RINGCAST_INGEST_GROUP")]
    pub ingest_group: Option<String>,

    /// Run as one node of a cluster on NATS JetStream: the NATS servers to connect to
    /// (comma-separated or repeated). Every node given the same backplane and stream is one
    /// cluster. Without it the engine is a single node with in-memory history.
    #[arg(
        long,
        value_name = "nats://HOST:PORT",
        env = "RINGCAST_BACKPLANE",
        value_delimiter = ','
    )]
    pub backplane: Vec<String>,

    /// The JetStream stream the cluster shares (created if missing). Its subjects are
    /// `<NAME>.<topic>`.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "RINGCAST",
        env = "RINGCAST_BACKPLANE_STREAM"
    )]
    pub backplane_stream: String,

    /// Replicas of the stream when ringcast creates it (1, or 3 or 5 on a NATS cluster).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        env = "RINGCAST_BACKPLANE_REPLICAS"
    )]
    pub backplane_replicas: usize,

    /// How long a publish waits for JetStream to store it before it is refused with
    /// `-ERR backplane unavailable`, in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 3000,
        env = "RINGCAST_BACKPLANE_TIMEOUT_MS"
    )]
    pub backplane_timeout_ms: u64,

    /// How publishes reach JetStream. `batched`: atomic batches, one in flight, each synced
    /// to disk before it is acknowledged, so an acknowledged event survives even the crash
    /// of a lone NATS server's host. `pipelined`: up to 1,000 plain publishes in flight,
    /// acknowledged once the stream has written them (with --backplane-replicas 3, a quorum
    /// of servers), before they are synced: several times the throughput; a killed NATS
    /// process loses nothing, a crashed host of a lone server may lose what was not synced.
    #[arg(
        long,
        value_name = "MODE",
        value_enum,
        default_value_t = BackplanePublish::Batched,
        env = "RINGCAST_BACKPLANE_PUBLISH"
    )]
    pub backplane_publish: BackplanePublish,

    /// This node's name in the cluster [default: the hostname].
    #[arg(long, value_name = "NAME", env = "RINGCAST_NODE_ID")]
    pub node_id: Option<String>,

    /// Event loops, one thread each [default: the number of CPUs].
    #[arg(long, value_name = "N", env = "RINGCAST_LOOPS")]
    pub loops: Option<usize>,

    /// The I/O driver. `auto`: io_uring, or epoll when the host refuses io_uring (container
    /// seccomp profiles, the kernel.io_uring_disabled sysctl, old kernels), saying why in one
    /// line. `io-uring`: exit with the cause and the fix when it is refused. `epoll`: epoll
    /// only. io_uring holds more idle connections per gigabyte of kernel memory and sends
    /// with fewer system calls (see bench/RESULTS.md).
    #[arg(
        long,
        value_name = "DRIVER",
        value_enum,
        default_value_t = crate::driver::Choice::Auto,
        env = "RINGCAST_DRIVER"
    )]
    pub driver: crate::driver::Choice,

    /// Client connections each loop may hold. Capped at RLIMIT_NOFILE (each loop's
    /// registered file table is) and at 2^20.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 262_144,
        env = "RINGCAST_MAX_CONNS_PER_LOOP"
    )]
    pub max_conns_per_loop: u32,

    /// Events kept per topic for Last-Event-ID resume.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1000,
        env = "RINGCAST_HISTORY_EVENTS"
    )]
    pub history_events: usize,

    /// Bytes of events kept per topic (encodings included).
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20, env = "RINGCAST_HISTORY_BYTES")]
    pub history_bytes: usize,

    /// Seconds an event stays replayable.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 3600,
        env = "RINGCAST_HISTORY_AGE_SECS"
    )]
    pub history_age_secs: u64,

    /// Topics the history keeps; the least recently published goes first.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100_000,
        env = "RINGCAST_HISTORY_TOPICS"
    )]
    pub history_topics: usize,

    /// Bytes the history keeps across all topics.
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 20, env = "RINGCAST_HISTORY_BYTES_TOTAL")]
    pub history_bytes_total: usize,

    /// Largest payload a publisher may send, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20, env = "RINGCAST_PAYLOAD_MAX")]
    pub payload_max: usize,

    /// Publisher connections held at once.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 256,
        env = "RINGCAST_PUBLISHERS_MAX"
    )]
    pub publishers_max: usize,

    /// A publisher that sends no command (PING counts) for this long is closed, so idle
    /// connections cannot hold every slot; 0 never. Backends listening for upstream
    /// messages, and the admin listener's own publishing, are exempt.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 60_000,
        env = "RINGCAST_PUBLISHER_IDLE_MS"
    )]
    pub publisher_idle_ms: u64,

    /// What a publish waits for. `accept`: every publish is acknowledged at once, however
    /// far a loop is behind; a loop lapped on the broadcast ring refills what it missed from
    /// the history and tells its subscribers a `ringcast.gap` for what the history no longer
    /// holds. `lag`: while some loop's read position is more than --ingest-flow-lag events
    /// behind the newest event, the next `PUB` (on the ingest socket and through `POST
    /// /publish`) waits, and with it its acknowledgement and everything its publisher sent
    /// after it, so a publisher with a window of publishes in flight is slowed to what the
    /// loops deliver and subscribers that keep up lose nothing; a `PUB` that finds the
    /// loops behind for longer than --ingest-flow-wait-ms is refused with `-ERR engine
    /// behind` (HTTP 503) rather than published.
    #[arg(
        long,
        value_name = "MODE",
        value_enum,
        default_value_t = IngestFlow::Accept,
        env = "RINGCAST_INGEST_FLOW"
    )]
    pub ingest_flow: IngestFlow,

    /// With --ingest-flow lag: how many events a loop may trail the newest one before
    /// publishes wait; at most half of --ring-slots [default: a quarter of --ring-slots].
    #[arg(long, value_name = "N", env = "RINGCAST_INGEST_FLOW_LAG")]
    pub ingest_flow_lag: Option<usize>,

    /// With --ingest-flow lag: how long the loops may stay behind before publishes are
    /// refused, in milliseconds (100 to 4000, below the admin's 5 s wait for an ingest reply).
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 2000,
        env = "RINGCAST_INGEST_FLOW_WAIT_MS"
    )]
    pub ingest_flow_wait_ms: u64,

    /// Slots of the broadcast ring between the ingest thread and the loops (a power of two).
    #[arg(long, value_name = "N", default_value_t = 16_384, env = "RINGCAST_RING_SLOTS")]
    pub ring_slots: usize,

    /// Event bytes queued for one slow client before its topic's policy applies.
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 10, env = "RINGCAST_QUEUE_BYTES")]
    pub queue_bytes: usize,

    /// Events queued for one slow client before its topic's policy applies.
    #[arg(long, value_name = "N", default_value_t = 1024, env = "RINGCAST_QUEUE_EVENTS")]
    pub queue_events: usize,

    /// Backpressure policy for topics matching PATTERN (repeatable; first match wins):
    /// `PATTERN=drop-oldest|drop-newest|coalesce|disconnect`, where PATTERN is a topic,
    /// `prefix*`, `*suffix` or `*`. Unmatched topics use drop-oldest.
    #[arg(long = "policy", value_name = "PATTERN=POLICY", value_parser = parse_policy, env = "RINGCAST_POLICY", value_delimiter = ',')]
    pub policies: Vec<(String, Policy)>,

    /// Bytes queued for one client, control bytes and replays included, before it is
    /// disconnected whatever the policy (it resumes from the history with Last-Event-ID).
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20, env = "RINGCAST_OUT_QUEUE_BYTES_MAX")]
    pub out_queue_bytes_max: usize,

    /// The reconnection delay sent to SSE clients (`retry:`), in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 3000, env = "RINGCAST_RETRY_MS")]
    pub retry_ms: u32,

    /// An SSE stream that has sent nothing for this long gets a comment line, so proxies
    /// with idle timeouts keep it open and a vanished client is found by the write failing
    /// (0: off).
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 15_000,
        env = "RINGCAST_HEARTBEAT_MS"
    )]
    pub heartbeat_ms: u64,

    /// A connection with unsent bytes and no send progress for this long is closed as a
    /// stalled (or vanished) client.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 30_000,
        env = "RINGCAST_WRITE_STALL_MS"
    )]
    pub write_stall_ms: u64,

    /// A request head must arrive whole within this long of its first byte (or of the
    /// connection's start), or the connection gets 408 and is closed (slowloris). On the
    /// admin address the deadline covers the request's head and body.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 10_000,
        env = "RINGCAST_REQUEST_TIMEOUT_MS"
    )]
    pub request_timeout_ms: u64,

    /// A keep-alive connection with no request in flight is closed after this long (on
    /// the client and the admin addresses).
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 60_000,
        env = "RINGCAST_KEEPALIVE_IDLE_MS"
    )]
    pub keepalive_idle_ms: u64,

    /// A connection that has received nothing for this long (up to twice as long, checked
    /// once a period) trades its armed multishot receive for a poll on its input, which
    /// holds about 0.6 KB less kernel memory, and is given its receive back when input
    /// arrives. io_uring only; epoll holds no armed receive (0: never).
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 10_000,
        env = "RINGCAST_RECV_PARK_MS"
    )]
    pub recv_park_ms: u64,

    /// TCP_USER_TIMEOUT on client sockets: sent data unacknowledged for this long makes
    /// the kernel drop a connection whose peer vanished (0: the kernel's default).
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 30_000,
        env = "RINGCAST_TCP_USER_TIMEOUT_MS"
    )]
    pub tcp_user_timeout_ms: u32,

    /// TCP_NOTSENT_LOWAT on client sockets: unsent bytes the kernel holds per connection
    /// before a send waits. Bounds the kernel memory a slow client costs, so the queue
    /// policies act early (0: the kernel's default, up to tcp_wmem's maximum).
    #[arg(long, value_name = "BYTES", default_value_t = 128 << 10, env = "RINGCAST_TCP_NOTSENT_LOWAT")]
    pub tcp_notsent_lowat: u32,

    /// Largest WebSocket message a client may send (all fragments together), in bytes;
    /// larger ones close the connection with 1009.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 10, env = "RINGCAST_WS_MAX_MESSAGE")]
    pub ws_max_message: usize,

    /// permessage-deflate (RFC 7692) for WebSocket clients that offer it. `on`: the 101
    /// accepts it with server_no_context_takeover and client_no_context_takeover, each
    /// event at or above --ws-deflate-min-bytes is compressed once and that frame shared
    /// by every such subscriber, and compressed client messages are inflated (bounded by
    /// --ws-max-message: 1009). Costs one compressor and one inflater per loop (about
    /// 300 KiB), nothing per connection. `off` (default): offers are declined, as before
    /// this setting existed.
    #[arg(
        long,
        value_name = "on|off",
        value_enum,
        default_value_t = OnOff::Off,
        env = "RINGCAST_WS_DEFLATE"
    )]
    pub ws_deflate: OnOff,

    /// With --ws-deflate on: WebSocket payloads shorter than this many bytes go
    /// uncompressed (RSV1 clear), where DEFLATE saves little and costs a compression.
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 256,
        env = "RINGCAST_WS_DEFLATE_MIN_BYTES"
    )]
    pub ws_deflate_min_bytes: usize,

    /// Origins allowed to open a WebSocket (repeatable): exact (`https://app.example.com`),
    /// subdomain patterns (`https://*.example.com`) or `*`. When set, a handshake whose
    /// Origin matches none gets 403. Unset: any origin.
    #[arg(
        long = "ws-allow-origin",
        value_name = "PATTERN",
        env = "RINGCAST_WS_ALLOW_ORIGIN",
        value_delimiter = ','
    )]
    pub ws_allow_origin: Vec<String>,

    /// A WebSocket silent for this long is pinged.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 30_000,
        env = "RINGCAST_WS_PING_MS"
    )]
    pub ws_ping_ms: u64,

    /// A ping unanswered (no frame at all) for this long closes the WebSocket.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 10_000,
        env = "RINGCAST_WS_PONG_TIMEOUT_MS"
    )]
    pub ws_pong_timeout_ms: u64,

    /// Require subscribers to present a JWT verified by a key of this JWKS file (RFC 7517:
    /// oct, RSA or EC P-256/P-384 keys, chosen by `kid`); re-read on SIGHUP. Off without it.
    #[arg(long, value_name = "FILE", env = "RINGCAST_AUTH_JWKS")]
    pub auth_jwks: Option<PathBuf>,

    /// Clock skew allowed on a token's `exp`, `nbf` and `iat`, in seconds.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 30,
        env = "RINGCAST_AUTH_LEEWAY_SECS"
    )]
    pub auth_leeway_secs: u64,

    /// A token's `aud` must name this.
    #[arg(long, value_name = "AUD", env = "RINGCAST_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,

    /// A token's `iss` must be this.
    #[arg(long, value_name = "ISS", env = "RINGCAST_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,

    /// Also take the token from this cookie (for EventSource with credentials).
    #[arg(long, value_name = "NAME", env = "RINGCAST_AUTH_COOKIE")]
    pub auth_cookie: Option<String>,

    /// How long a WebSocket whose token expired may take to send
    /// `{"op":"refresh","token":..}` before it is closed with 4001, in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 10_000,
        env = "RINGCAST_AUTH_REFRESH_GRACE_MS"
    )]
    pub auth_refresh_grace_ms: u64,

    /// Serve `/echo`, a WebSocket that sends every message back, for conformance suites
    /// such as Autobahn. Off by default.
    #[arg(long, env = "RINGCAST_WS_ECHO")]
    pub ws_echo: bool,

    /// Serve the console on the admin address: `/_console`, a page that watches topics
    /// live (ids, resets, gaps) with the JavaScript client and publishes a test event
    /// through `POST /publish` (only when the admin has a token). Off by default.
    #[arg(long, env = "RINGCAST_CONSOLE")]
    pub console: bool,

    /// Origins browsers may read the client endpoints from (repeatable; exact
    /// `https://app.example.com`, `https://*.example.com` or `*`). Unset: any origin
    /// (`Access-Control-Allow-Origin: *`). Set: a matching Origin is echoed back, others
    /// get no CORS header and a preflight from them gets 403.
    #[arg(
        long = "cors-origin",
        value_name = "PATTERN",
        env = "RINGCAST_CORS_ORIGIN",
        value_delimiter = ','
    )]
    pub cors_origin: Vec<String>,

    /// With --cors-origin, also allow credentials (cookies) on cross-origin requests.
    #[arg(long, env = "RINGCAST_CORS_CREDENTIALS")]
    pub cors_credentials: bool,

    /// At shutdown, connections are closed paced across this window (SSE clients get a
    /// `retry:` jittered over it, WebSockets close 1012), so clients do not return at once.
    #[arg(long, value_name = "MS", default_value_t = 30_000, env = "RINGCAST_DRAIN_MS")]
    pub drain_ms: u64,

    /// Connections one client address (an IPv4 address, an IPv6 /64) may hold; beyond
    /// them `429` with `Retry-After`. Generous by default, since offices and carriers put
    /// many users behind one address. 0: no limit.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10_000,
        env = "RINGCAST_MAX_CONNS_PER_IP"
    )]
    pub max_conns_per_ip: u32,

    /// New connections per second one client address may open, a token bucket of
    /// --accept-burst-per-ip; beyond it `429` with `Retry-After`. 0: no limit.
    #[arg(
        long,
        value_name = "PER_SEC",
        default_value_t = 0.0,
        env = "RINGCAST_ACCEPT_RATE_PER_IP"
    )]
    pub accept_rate_per_ip: f64,

    /// Connections one address may open at once before --accept-rate-per-ip applies
    /// [default: one second's worth].
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        hide_default_value = true,
        env = "RINGCAST_ACCEPT_BURST_PER_IP"
    )]
    pub accept_burst_per_ip: u32,

    /// Connections across the engine. Beyond them a new SSE request gets `200` with a
    /// jittered `retry:` and an ended stream (EventSource retries it; it gives up for good
    /// on an error), any other request `503` with `Retry-After`. 0: only the per-loop
    /// limit.
    #[arg(long, value_name = "N", default_value_t = 0, env = "RINGCAST_MAX_CONNS")]
    pub max_conns: u64,

    /// Messages per second a WebSocket client may send (subscribe ops and upstream), a
    /// token bucket of --ws-msg-burst; beyond it each message gets `ringcast.error`, and
    /// another burst's worth sent into the empty bucket closes it with 1008. 0: no limit.
    #[arg(
        long,
        value_name = "PER_SEC",
        default_value_t = 100,
        env = "RINGCAST_WS_MSG_RATE"
    )]
    pub ws_msg_rate: u32,

    /// Messages a WebSocket client may send at once before --ws-msg-rate applies.
    #[arg(long, value_name = "N", default_value_t = 200, env = "RINGCAST_WS_MSG_BURST")]
    pub ws_msg_burst: u32,

    /// The longest a long-poll may be held (`wait=` is capped at this).
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 60_000,
        env = "RINGCAST_POLL_WAIT_MAX_MS"
    )]
    pub poll_wait_max_ms: u64,

    /// Receive buffers in each loop's provided-buffer ring (a power of two). Every buffer
    /// becomes resident once used; a loop recycles each in the turn it arrives, so a few
    /// hundred serve any number of connections.
    #[arg(long, value_name = "N", default_value_t = 256, env = "RINGCAST_RECV_BUFFERS")]
    pub recv_buffers: u16,

    /// Bytes per receive buffer. Larger request heads are staged across buffers.
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 2048,
        env = "RINGCAST_RECV_BUFFER_BYTES"
    )]
    pub recv_buffer_bytes: u32,
}

/// A configuration file that cannot be used, with the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {source}")]
    Toml { path: String, source: toml::de::Error },
    #[error("config file {path}: unknown key `{key}`; keys are the flags of `ringcast serve --help` without their dashes' prefix (e.g. history-events)")]
    UnknownKey { path: String, key: String },
    #[error("config file {path}: key `{key}` has {value}; expected {expected}")]
    BadValue {
        path: String,
        key: String,
        value: String,
        expected: &'static str,
    },
}

/// Folds the settings of the `--config` file (if any) into `argv`: each key becomes its
/// flag, unless the command line or the environment already set that flag, so that a
/// flag beats an environment variable beats the file beats the default. `serve` names
/// the command whose flags [`Config`] holds (the top level or the `serve` subcommand).
///
/// # Errors
/// A [`FileError`] naming the file, the key and what was expected; a clap error for the
/// command line itself is left for the caller's parse to report.
pub fn merge_file(
    cmd: &clap::Command,
    argv: Vec<std::ffi::OsString>,
) -> Result<Vec<std::ffi::OsString>, FileError> {
    let Ok(matches) = cmd.clone().try_get_matches_from(&argv) else {
        return Ok(argv);
    };
    let (flags_cmd, flags) = match matches.subcommand() {
        Some(("serve", sub)) => (cmd.find_subcommand("serve").expect("serve exists"), sub),
        Some(_) => return Ok(argv),
        None => (cmd, &matches),
    };
    let Some(path) = flags.get_one::<PathBuf>("config") else {
        return Ok(argv);
    };
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: shown.clone(),
        source,
    })?;
    let table: toml::Table = text.parse().map_err(|source| FileError::Toml {
        path: shown.clone(),
        source,
    })?;
    let mut argv = argv;
    for (key, value) in table {
        let long = key.replace('_', "-");
        let arg = flags_cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config")
            .ok_or_else(|| FileError::UnknownKey {
                path: shown.clone(),
                key: key.clone(),
            })?;
        let explicit = matches!(
            flags.value_source(arg.get_id().as_str()),
            Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
        );
        if explicit {
            continue;
        }
        let bad = |expected| FileError::BadValue {
            path: shown.clone(),
            key: key.clone(),
            value: value.to_string(),
            expected,
        };
        let flag = format!("--{long}");
        let takes_value = arg.get_action().takes_values();
        match (&value, takes_value) {
            (toml::Value::Boolean(true), false) => argv.push(flag.into()),
            (toml::Value::Boolean(false), false) => {}
            (_, false) => return Err(bad("true or false")),
            (toml::Value::Array(items), true) => {
                for item in items {
                    argv.push(flag.clone().into());
                    argv.push(
                        scalar(item)
                            .ok_or_else(|| bad("a list of strings or numbers"))?
                            .into(),
                    );
                }
            }
            (v, true) => {
                argv.push(flag.into());
                argv.push(scalar(v).ok_or_else(|| bad("a string or a number"))?.into());
            }
        }
    }
    Ok(argv)
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A commented TOML file with every key of [`Config`] at its default, from the flags'
/// own help and defaults (tuning/ringcast.toml is this text; a test keeps it so).
pub fn example_file(serve: &clap::Command) -> String {
    let mut out = String::from(
        "# ringcast configuration: every key with its default. Pass it with\n\
         # `ringcast serve --config FILE`; a flag or a RINGCAST_* environment variable\n\
         # overrides a key here. Check a file with `ringcast check-config FILE`.\n",
    );
    for arg in serve.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "config" | "help") {
            continue;
        }
        out.push('\n');
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(ToString::to_string)
            .unwrap_or_default();
        for line in textwrap(&help, 88) {
            out.push_str(&format!("# {line}\n"));
        }
        if let Some(env) = arg.get_env() {
            out.push_str(&format!("# (environment: {})\n", env.to_string_lossy()));
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let takes_value = arg.get_action().takes_values();
        let value = if !takes_value {
            "false".to_string()
        } else if matches!(arg.get_action(), clap::ArgAction::Append) {
            format!(
                "[{}]",
                defaults
                    .iter()
                    .map(|d| format!("{d:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            match defaults.first() {
                // A TOML integer has no leading zero: a mode such as 0600 stays a string.
                Some(d) if d.parse::<i64>().is_ok() && (d.len() == 1 || !d.starts_with('0')) => d.clone(),
                Some(d) => format!("{d:?}"),
                None => {
                    out.push_str(&format!("# {long} =\n"));
                    continue;
                }
            }
        };
        out.push_str(&format!("{long} = {value}\n"));
    }
    out
}

/// Splits `text` into lines of at most `width` characters at spaces.
fn textwrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
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

/// A switch given as `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// What a publish waits for (`--ingest-flow`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IngestFlow {
    /// Acknowledged at once: today's single node.
    Accept,
    /// Held while a loop trails the ring's head by more than `--ingest-flow-lag`.
    Lag,
}

/// How publishes reach JetStream (`--backplane-publish`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackplanePublish {
    Batched,
    Pipelined,
}

impl Config {
    /// The configuration `ringcast serve ARGS` would run with (`RINGCAST_*` variables
    /// included), without a configuration file.
    ///
    /// # Errors
    /// clap's message for flags that do not parse.
    pub fn from_flags(args: &[&str]) -> Result<Config, String> {
        use clap::{Args, FromArgMatches};
        let cmd = Config::augment_args(clap::Command::new("ringcast"));
        let argv = std::iter::once("ringcast").chain(args.iter().copied());
        let matches = cmd.try_get_matches_from(argv).map_err(|e| e.to_string())?;
        Config::from_arg_matches(&matches).map_err(|e| e.to_string())
    }

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
        self.validate_access()?;
        check(
            (1..=4096).contains(&self.admin_conns_max),
            "admin-conns-max",
            self.admin_conns_max,
            "must be 1 to 4096",
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
        if let Some(lag) = self.ingest_flow_lag {
            check(
                lag >= 8 && lag <= self.ring_slots / 2,
                "ingest-flow-lag",
                lag,
                "must be at least 8 and at most half of --ring-slots",
            )?;
        }
        check(
            (100..=4000).contains(&self.ingest_flow_wait_ms),
            "ingest-flow-wait-ms",
            self.ingest_flow_wait_ms,
            "must be 100 to 4000 ms",
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
            self.recv_park_ms == 0 || (100..=86_400_000).contains(&self.recv_park_ms),
            "recv-park-ms",
            self.recv_park_ms,
            "must be 0 (never) or 100 ms to 24 h",
        )?;
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
            self.ws_deflate_min_bytes <= 64 << 20,
            "ws-deflate-min-bytes",
            self.ws_deflate_min_bytes,
            "must be at most 64 MiB",
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
            !self.backplane_stream.is_empty()
                && self.backplane_stream.len() <= 32
                && self
                    .backplane_stream
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "backplane-stream",
            &self.backplane_stream,
            "must be 1-32 bytes of [A-Za-z0-9_-]",
        )?;
        check(
            matches!(self.backplane_replicas, 1..=5),
            "backplane-replicas",
            self.backplane_replicas,
            "must be 1 to 5",
        )?;
        if let Some(id) = &self.node_id {
            check(
                is_valid_node_id(id.as_bytes()),
                "node-id",
                id,
                "must be 1-64 bytes of [A-Za-z0-9_.-]: it names the node in connection ids \
                 (<node>/<loop>.<slot>.<generation>) and in NATS subjects",
            )?;
        } else if !self.backplane.is_empty() {
            let host = self.node_name();
            check(
                is_valid_node_id(host.as_bytes()),
                "node-id",
                format!("(unset; the hostname {host:?})"),
                "the hostname is not a valid node id (1-64 bytes of [A-Za-z0-9_.-]); pass --node-id",
            )?;
        }
        check(
            self.backplane_timeout_ms >= 100,
            "backplane-timeout-ms",
            self.backplane_timeout_ms,
            "must be at least 100",
        )?;
        check(
            self.out_queue_bytes_max >= 64 << 10,
            "out-queue-bytes-max",
            self.out_queue_bytes_max,
            "must be at least 64 KiB",
        )?;
        check(
            self.accept_rate_per_ip.is_finite() && (0.0..=1e6).contains(&self.accept_rate_per_ip),
            "accept-rate-per-ip",
            self.accept_rate_per_ip,
            "must be 0 to 1000000 connections per second",
        )?;
        check(
            self.ws_msg_rate == 0 || self.ws_msg_burst >= 1,
            "ws-msg-burst",
            self.ws_msg_burst,
            "must be at least 1 while --ws-msg-rate is set",
        )?;
        Ok(())
    }

    /// The admission limits, as the loops apply them.
    pub fn admission_limits(&self) -> crate::admission::Limits {
        crate::admission::Limits {
            per_ip: self.max_conns_per_ip,
            rate_per_ip: self.accept_rate_per_ip,
            burst_per_ip: self.accept_burst_per_ip,
            max_conns: self.max_conns,
        }
    }

    /// The flags that say who may use the admin listener and the ingest socket.
    fn validate_access(&self) -> Result<(), ConfigError> {
        if let Some(token) = &self.admin_token {
            let shown = if token.0.is_empty() { "\"\"" } else { "<redacted>" };
            if let Some(why) = admin_token_problem(token.0.as_bytes()) {
                return Err(ConfigError {
                    flag: "admin-token",
                    value: shown.into(),
                    why,
                });
            }
        }
        let loopback = self.admin.ip().to_canonical().is_loopback();
        check(
            loopback || self.admin_token.is_some() || self.admin_token_file.is_some(),
            "admin",
            self.admin,
            "not a loopback address, and the admin listener would answer anyone who reaches \
             it: pass --admin-token or --admin-token-file (or bind 127.0.0.1)",
        )?;
        if let Some(group) = &self.ingest_group {
            check(
                !group.is_empty(),
                "ingest-group",
                "\"\"",
                "the group name is empty",
            )?;
            // connect(2) on a Unix socket needs write permission on it.
            check(
                self.ingest_mode & 0o020 != 0,
                "ingest-group",
                group,
                "gives the group nothing with this --ingest-mode: let the group write (e.g. \
                 --ingest-mode 0660)",
            )?;
        }
        Ok(())
    }

    /// With `--ingest-flow lag`, the events a loop may trail the ring's head before
    /// publishes wait; `None` with `accept`.
    pub fn flow_lag(&self) -> Option<u64> {
        match self.ingest_flow {
            IngestFlow::Accept => None,
            IngestFlow::Lag => Some(self.ingest_flow_lag.unwrap_or(self.ring_slots / 4) as u64),
        }
    }

    /// This node's name: `--node-id`, else the hostname.
    pub fn node_name(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "ringcast".into())
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};
    use std::ffi::OsString;

    fn command() -> clap::Command {
        Config::augment_args(clap::Command::new("ringcast"))
    }

    fn load(file: &str, extra: &[&str]) -> Result<Config, String> {
        let dir = std::env::temp_dir().join(format!("ringcast-config-{}-{}", std::process::id(), file.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.toml", extra.len()));
        std::fs::write(&path, file).unwrap();
        let mut argv: Vec<OsString> = vec!["ringcast".into(), "--config".into(), path.clone().into()];
        argv.extend(extra.iter().map(OsString::from));
        let argv = merge_file(&command(), argv).map_err(|e| e.to_string())?;
        let matches = command().try_get_matches_from(argv).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&path);
        Config::from_arg_matches(&matches).map_err(|e| e.to_string())
    }

    #[test]
    fn a_flag_beats_the_file_and_the_file_beats_the_default() {
        let cfg = load(
            "history-events = 5\nqueue_events = 7\nws-echo = true\npolicy = [\"px*=coalesce\"]\n",
            &[],
        )
        .unwrap();
        assert_eq!((cfg.history_events, cfg.queue_events, cfg.ws_echo), (5, 7, true));
        assert_eq!(cfg.policy_for("px.AAPL"), Policy::Coalesce);
        let cfg = load("history-events = 5\n", &["--history-events", "9"]).unwrap();
        assert_eq!(cfg.history_events, 9);
        let cfg = load("retry-ms = 5\n", &[]).unwrap();
        assert_eq!(
            (cfg.retry_ms, cfg.history_bytes),
            (5, 1 << 20),
            "unset keys keep defaults"
        );
    }

    #[test]
    fn the_environment_beats_the_file() {
        // The only test that sets this variable.
        std::env::set_var("RINGCAST_WRITE_STALL_MS", "4321");
        let cfg = load("write-stall-ms = 1000\n", &[]);
        std::env::remove_var("RINGCAST_WRITE_STALL_MS");
        assert_eq!(cfg.unwrap().write_stall_ms, 4321);
    }

    #[test]
    fn bad_files_name_the_key() {
        let e = load("histroy-events = 5\n", &[]).unwrap_err();
        assert!(e.contains("unknown key `histroy-events`"), "{e}");
        let e = load("ws-echo = 3\n", &[]).unwrap_err();
        assert!(e.contains("`ws-echo`") && e.contains("true or false"), "{e}");
        let e = load("history-events = \"lots\"\n", &[]).unwrap_err();
        assert!(e.contains("--history-events") && e.contains("lots"), "{e}");
        let e = load("listen = [[1]]\n", &[]).unwrap_err();
        assert!(e.contains("`listen`"), "{e}");
        assert!(load("not toml", &[]).unwrap_err().contains("not valid TOML"));
    }

    #[test]
    fn the_example_file_is_valid_and_complete() {
        let example = example_file(&command());
        let cfg = load(&example, &[]).expect("the example file loads");
        cfg.validate().expect("and validates");
        for arg in command().get_arguments() {
            if let Some(long) = arg.get_long().filter(|l| !matches!(*l, "config" | "help")) {
                assert!(
                    example.contains(&format!("\n{long} =")) || example.contains(&format!("# {long} =")),
                    "{long} missing"
                );
            }
        }
    }

    fn parsed(args: &[&str]) -> Config {
        let mut argv = vec!["ringcast"];
        argv.extend_from_slice(args);
        let matches = command().try_get_matches_from(argv).expect("the flags parse");
        Config::from_arg_matches(&matches).expect("a config")
    }

    #[test]
    fn only_a_loopback_admin_address_may_go_without_a_token() {
        for addr in [
            "127.0.0.1:9090",
            "127.255.0.2:1",
            "[::1]:9090",
            "[::ffff:127.0.0.1]:9090",
        ] {
            assert!(parsed(&["--admin", addr]).validate().is_ok(), "{addr}");
        }
        for addr in [
            "0.0.0.0:9090",
            "10.0.0.1:9090",
            "[::]:9090",
            "[::ffff:10.0.0.1]:9090",
        ] {
            let e = parsed(&["--admin", addr]).validate().unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("--admin {addr}: not a loopback address")),
                "{e}"
            );
            assert!(parsed(&["--admin", addr, "--admin-token", "t"])
                .validate()
                .is_ok());
            assert!(parsed(&["--admin", addr, "--admin-token-file", "/f"])
                .validate()
                .is_ok());
        }
    }

    #[test]
    fn admin_tokens_are_checked_and_never_shown() {
        let cfg = parsed(&["--admin-token", "hunter2"]);
        assert!(cfg.validate().is_ok());
        assert!(!format!("{cfg:?}").contains("hunter2"), "Debug redacts it");
        for bad in ["", "two words", "tab\there", "caf\u{e9}"] {
            let e = parsed(&["--admin-token", bad])
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("--admin-token "), "{e}");
            assert!(bad.is_empty() || !e.contains(bad), "the value is not echoed: {e}");
        }
        let longest = "x".repeat(ADMIN_TOKEN_BYTES_MAX);
        assert!(parsed(&["--admin-token", &longest]).validate().is_ok());
        let longer = "x".repeat(ADMIN_TOKEN_BYTES_MAX + 1);
        assert!(parsed(&["--admin-token", &longer]).validate().is_err());
        assert!(command()
            .try_get_matches_from(["ringcast", "--admin-token", "a", "--admin-token-file", "/f"])
            .is_err());
    }

    #[test]
    fn an_ingest_group_needs_group_write() {
        assert!(parsed(&["--ingest-group", "g", "--ingest-mode", "0660"])
            .validate()
            .is_ok());
        assert!(parsed(&["--ingest-group", "g", "--ingest-mode", "0620"])
            .validate()
            .is_ok());
        for mode in ["0600", "0640"] {
            let e = parsed(&["--ingest-group", "g", "--ingest-mode", mode])
                .validate()
                .unwrap_err();
            assert!(e.to_string().contains("gives the group nothing"), "{e}");
        }
        assert!(parsed(&["--ingest-group", "", "--ingest-mode", "0660"])
            .validate()
            .is_err());
    }

    #[test]
    fn node_ids_that_cannot_name_a_node_are_refused() {
        for good in ["a", "node-1", "eu_west.2", &"n".repeat(64)] {
            let cfg = load("", &["--node-id", good]).unwrap();
            cfg.validate().unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in ["", "a b", "a/b", "a*", "a>", "tab\there", &"n".repeat(65)] {
            let cfg = load("", &["--node-id", bad]).unwrap();
            let e = cfg.validate().expect_err(bad).to_string();
            assert!(
                e.starts_with("--node-id ") && e.contains("[A-Za-z0-9_.-]"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn flow_control_defaults_to_accept_and_its_bounds_are_checked() {
        let cfg = load("", &[]).unwrap();
        assert_eq!((cfg.ingest_flow, cfg.flow_lag()), (IngestFlow::Accept, None));
        let cfg = load("ingest-flow = \"lag\"\n", &["--ring-slots", "1024"]).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.flow_lag(), Some(256), "a quarter of the ring");
        let cfg = load("", &["--ingest-flow", "lag", "--ingest-flow-lag", "100"]).unwrap();
        assert_eq!(cfg.flow_lag(), Some(100));
        for (flags, flag) in [
            (
                ["--ring-slots", "1024", "--ingest-flow-lag", "513"],
                "--ingest-flow-lag 513",
            ),
            (
                ["--ring-slots", "1024", "--ingest-flow-lag", "7"],
                "--ingest-flow-lag 7",
            ),
            (
                ["--ingest-flow-wait-ms", "99", "--loops", "1"],
                "--ingest-flow-wait-ms 99",
            ),
            (
                ["--ingest-flow-wait-ms", "4001", "--loops", "1"],
                "--ingest-flow-wait-ms 4001",
            ),
        ] {
            let e = load("", &flags).unwrap().validate().expect_err(flag).to_string();
            assert!(e.starts_with(flag), "{flags:?}: {e}");
        }
    }

    #[test]
    fn topic_patterns() {
        assert!(topic_matches("*", "a"));
        assert!(topic_matches("px.*", "px.AAPL") && !topic_matches("px.*", "py.AAPL"));
        assert!(topic_matches("*.eu", "prices.eu") && !topic_matches("*.eu", "prices.us"));
        assert!(topic_matches("exact", "exact") && !topic_matches("exact", "exact2"));
    }
}
