//! The admin listener, on its own address (`--admin`, loopback by default): `GET /healthz`,
//! `GET /stats` (JSON), `GET /metrics` (Prometheus text format) and `POST /publish` (HTTP
//! publishing for convenience).
//!
//! Owns: the accept loop, the cap on connections served at once (`--admin-conns-max`,
//! one thread each, so a slow client delays nobody else; one more is answered 503 at
//! once), the routes and who may use them (`--admin-token`, see [`auth`]), and the one
//! ingest connection every `POST /publish` goes through.
//!
//! Must never: write to the loops' state (it reads them only through their atomic
//! counters), or publish other than through the ingest socket, so the ingest thread
//! stays the broadcast ring's only producer.
mod auth;
mod conn;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{AcqRel, Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::engine::{Counters, Shared};
use crate::ingest::client::{PublishError, Publisher};
use crate::proto::http;
use crate::proto::json;
use auth::Gate;
pub use auth::{Token, TokenError};
use conn::{Reply, Request};

/// Stack of each connection's thread: it parses a head, formats a few KiB of metrics and
/// holds one read chunk (16 KiB), nothing recursive.
const CONN_STACK_BYTES: usize = 256 << 10;

/// How long the accept loop waits after an accept error (out of descriptors or memory)
/// rather than spinning on it.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// The `Retry-After` of a 503, in seconds: the causes (a full table, a restarting
/// engine) clear in about that time.
const RETRY_AFTER_SECS: &str = "1";

/// Binds the admin listener.
///
/// # Errors
/// The bind error, with the address named by the caller.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// What the connection threads share.
struct Admin {
    shared: Arc<Shared>,
    limits: conn::Limits,
    /// Connections being served, at most `admin_conns_max`.
    open: AtomicUsize,
    /// The answer to a connection over the cap.
    refusal: Vec<u8>,
    /// The publishing connection to the ingest socket, one request at a time: a publish
    /// takes microseconds, or [`crate::ingest::client::IO_TIMEOUT`] at worst.
    publisher: Mutex<Publisher>,
    /// Who may use the routes, and the refusals so far.
    gate: Gate,
}

/// Accepts admin connections until the process exits, each served on its own thread;
/// with `token`, the routes other than `/healthz` need it (see [`auth`]).
pub fn serve(listener: TcpListener, shared: Arc<Shared>, token: Option<Token>) {
    let config = &shared.config;
    let refusal = Reply::text(
        503,
        format!(
            "the admin listener is serving {} connections (--admin-conns-max); retry later\n",
            config.admin_conns_max
        ),
    )
    .with_header("Retry-After", RETRY_AFTER_SECS);
    let admin = Arc::new(Admin {
        limits: conn::Limits {
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            idle_timeout: Duration::from_millis(config.keepalive_idle_ms),
            body_max: config.payload_max,
        },
        open: AtomicUsize::new(0),
        refusal: conn::render(&refusal, false, false, 1),
        publisher: Mutex::new(Publisher::new(&config.ingest)),
        gate: Gate::new(token, config.metrics_public),
        shared: Arc::clone(&shared),
    });
    for accepted in listener.incoming() {
        match accepted {
            Ok(stream) => start(&admin, stream),
            Err(_) => thread::sleep(ACCEPT_ERROR_PAUSE),
        }
    }
}

/// Gives `stream` a thread of its own, or the refusal when the cap is reached.
fn start(admin: &Arc<Admin>, stream: TcpStream) {
    let accepted = Instant::now();
    if admin.open.fetch_add(1, AcqRel) >= admin.shared.config.admin_conns_max {
        admin.open.fetch_sub(1, AcqRel);
        refuse(stream, &admin.refusal);
        return;
    }
    let slot = Slot(Arc::clone(admin));
    let spawned = thread::Builder::new()
        .name("ringcast-admin-conn".into())
        .stack_size(CONN_STACK_BYTES)
        .spawn(move || {
            let admin = &slot.0;
            conn::serve(stream, accepted, &admin.limits, |req| route(req, admin));
        });
    // On a failed spawn the closure, the stream and the slot are dropped: the
    // connection closes and its slot is given back.
    drop(spawned);
}

/// A connection's place under the cap, given back when its thread ends, by panic too.
struct Slot(Arc<Admin>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, AcqRel);
    }
}

/// Answers a connection over the cap without waiting on it: what it already sent is
/// read (so the close is not a reset that destroys the answer), the refusal written and
/// the connection closed.
fn refuse(mut stream: TcpStream, refusal: &[u8]) {
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let _ = stream.read(&mut sink);
    // A fresh socket's send buffer takes these few hundred bytes in one write.
    let _ = stream.write(refusal);
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

fn route(req: &Request<'_>, admin: &Admin) -> Reply {
    use http::Method::{Get, Post};
    let shared = &admin.shared;
    if let Some(refusal) = admin.gate.check(req.path, &req.authorization) {
        return refusal;
    }
    match (req.method, req.path) {
        (Get, "/healthz") => healthz(shared),
        (Get, "/stats") => typed(200, "application/json", stats_json(shared, &admin.gate)),
        (Get, "/metrics") => typed(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics(shared, &admin.gate),
        ),
        (Post, "/publish") => publish(req.query, req.body, admin),
        (_, "/healthz" | "/stats" | "/metrics") => Reply::text(405, "use GET").with_header("Allow", "GET"),
        (_, "/publish") => Reply::text(405, "use POST").with_header("Allow", "POST"),
        _ => Reply::text(404, "admin endpoints: /healthz, /stats, /metrics, /publish"),
    }
}

/// `200 ok`, or with a backplane that is down `503` saying why: this node cannot take
/// publishes then (connected clients keep their streams and heartbeats).
fn healthz(shared: &Shared) -> Reply {
    match &shared.backplane {
        Some(link) if !link.backplane.status.is_up() => {
            let why = format!("backplane down: {}\n", link.backplane.status.reason());
            Reply::text(503, why).with_header("Retry-After", RETRY_AFTER_SECS)
        }
        _ => Reply::text(200, "ok\n"),
    }
}

/// `POST /publish?topic=T[&event=E][&key=K]` with the payload as the body: the same
/// semantics and limits as a `PUB` on the ingest socket. An event the engine refuses is
/// 400; an engine that cannot take it (publisher table full, ingest socket unreachable
/// or closed) is 503 with `Retry-After`.
fn publish(query: &str, body: &[u8], admin: &Admin) -> Reply {
    let Some(topic) = http::query_param(query, "topic") else {
        return json_error(400, "topic is required: POST /publish?topic=NAME");
    };
    if !http::is_valid_topic(topic.as_bytes()) {
        return json_error(400, "invalid topic: topics are 1-200 bytes of [A-Za-z0-9._~:/-]");
    }
    let event = http::query_param(query, "event");
    let key = http::query_param(query, "key");
    // The ingest protocol's tokens are printable ASCII; its own checks give the reasons.
    let printable = |v: &Option<String>| {
        v.as_ref()
            .is_none_or(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic()))
    };
    if !printable(&event) || !printable(&key) {
        return json_error(
            400,
            "event and key are 1 or more bytes of printable ASCII (0x21-0x7E)",
        );
    }
    let published = admin
        .publisher
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .publish(&topic, event.as_deref(), key.as_deref(), body);
    match published {
        Ok(id) => typed(
            200,
            "application/json",
            format!("{{\"id\":{}}}", json::string(&id)),
        ),
        // The backplane's refusals are the engine's trouble, not the request's.
        Err(PublishError::Refused(reason)) if reason.starts_with("backplane ") => {
            json_error(503, &reason).with_header("Retry-After", RETRY_AFTER_SECS)
        }
        Err(PublishError::Refused(reason)) => json_error(400, &reason),
        Err(e @ PublishError::BadArgument(_)) => json_error(400, &e.to_string()),
        Err(e) => json_error(503, &e.to_string()).with_header("Retry-After", RETRY_AFTER_SECS),
    }
}

fn json_error(status: u16, reason: &str) -> Reply {
    typed(
        status,
        "application/json",
        format!("{{\"error\":{}}}", json::string(reason)),
    )
}

fn typed(status: u16, content_type: &'static str, body: String) -> Reply {
    Reply {
        status,
        content_type,
        body,
        headers: Vec::new(),
    }
}

/// How each counter is exposed to Prometheus: its metric name, type and help.
const METRICS: &[(&str, &str, &str, &str)] = &[
    (
        "accepted",
        "ringcast_connections_accepted_total",
        "counter",
        "Client connections accepted.",
    ),
    (
        "open",
        "ringcast_connections_open",
        "gauge",
        "Client connections open.",
    ),
    (
        "accept_full",
        "ringcast_connections_refused_total",
        "counter",
        "Accepts that failed on a full file table or process.",
    ),
    (
        "accept_errors",
        "ringcast_accept_errors_total",
        "counter",
        "Other accept errors.",
    ),
    (
        "bad_requests",
        "ringcast_bad_requests_total",
        "counter",
        "Requests answered 4xx for malformed input.",
    ),
    (
        "streams",
        "ringcast_streams_opened_total",
        "counter",
        "SSE and NDJSON streams opened.",
    ),
    (
        "websockets",
        "ringcast_websockets_opened_total",
        "counter",
        "WebSocket upgrades completed.",
    ),
    (
        "polls",
        "ringcast_polls_total",
        "counter",
        "Long-poll and poll requests.",
    ),
    (
        "resets",
        "ringcast_resets_total",
        "counter",
        "Resumes answered with a reset.",
    ),
    (
        "replayed",
        "ringcast_events_replayed_total",
        "counter",
        "Events replayed from the history on resume.",
    ),
    (
        "events",
        "ringcast_events_fanned_out_total",
        "counter",
        "Events with at least one subscriber on the loop.",
    ),
    (
        "deliveries",
        "ringcast_events_delivered_total",
        "counter",
        "Events queued to a subscriber.",
    ),
    (
        "dropped",
        "ringcast_events_dropped_total",
        "counter",
        "Events a slow client's policy dropped or refused.",
    ),
    (
        "coalesced",
        "ringcast_events_coalesced_total",
        "counter",
        "Events that replaced a queued one with the same key.",
    ),
    (
        "slow_disconnected",
        "ringcast_slow_disconnected_total",
        "counter",
        "Clients closed by a disconnect policy.",
    ),
    (
        "slow_closed",
        "ringcast_slow_closed_total",
        "counter",
        "Clients closed at the hard queue cap.",
    ),
    (
        "ring_overrun",
        "ringcast_ring_overrun_events_total",
        "counter",
        "Events a loop missed on the broadcast ring.",
    ),
    (
        "ring_lost",
        "ringcast_ring_lost_total",
        "counter",
        "Overruns the history could not fully refill.",
    ),
    (
        "replay_gaps",
        "ringcast_replay_gaps_total",
        "counter",
        "Ranges evicted before a resuming client read them (each told as a gap).",
    ),
    (
        "heartbeats",
        "ringcast_heartbeats_total",
        "counter",
        "Heartbeats sent on quiet streams.",
    ),
    (
        "request_timeouts",
        "ringcast_reaped_request_timeout_total",
        "counter",
        "Connections answered 408 (slowloris).",
    ),
    (
        "idle_closed",
        "ringcast_reaped_idle_total",
        "counter",
        "Idle keep-alive connections closed.",
    ),
    (
        "stalled",
        "ringcast_reaped_stalled_total",
        "counter",
        "Connections reaped for a write stall.",
    ),
    (
        "tcp_timeouts",
        "ringcast_reaped_tcp_timeout_total",
        "counter",
        "Connections the kernel gave up on.",
    ),
    (
        "ws_pong_timeouts",
        "ringcast_reaped_pong_timeout_total",
        "counter",
        "WebSockets that did not answer a ping.",
    ),
    (
        "ws_pings",
        "ringcast_ws_pings_total",
        "counter",
        "WebSocket pings sent.",
    ),
    (
        "ws_protocol_errors",
        "ringcast_ws_protocol_errors_total",
        "counter",
        "WebSockets failed for a protocol error.",
    ),
    (
        "upstream",
        "ringcast_upstream_messages_total",
        "counter",
        "Client messages handed to backends.",
    ),
    (
        "upstream_refused",
        "ringcast_upstream_refused_total",
        "counter",
        "Client messages refused: no backend or queue full.",
    ),
    (
        "downstream_dropped",
        "ringcast_downstream_dropped_total",
        "counter",
        "Backend messages for closed connections.",
    ),
    (
        "stream_skipped",
        "ringcast_stream_skipped_total",
        "counter",
        "Stream sequences a cluster node never received (evicted first), told as gaps.",
    ),
    (
        "ws_rate_limited",
        "ringcast_ws_rate_limited_total",
        "counter",
        "WebSocket messages refused for exceeding --ws-msg-rate.",
    ),
    (
        "ws_rate_closed",
        "ringcast_ws_rate_closed_total",
        "counter",
        "WebSockets closed with 1008 for going on past --ws-msg-rate.",
    ),
    (
        "recv_enobufs",
        "ringcast_recv_enobufs_total",
        "counter",
        "Receives that found the buffer ring empty.",
    ),
];

/// Every counter in the Prometheus text format (0.0.4), labelled by loop, plus the
/// ring lag per loop, the history's size and the admin listener's refusals.
fn metrics(shared: &Shared, gate: &Gate) -> String {
    use std::fmt::Write;
    let per_loop: Vec<_> = shared.counters.iter().map(|c| counters(c)).collect();
    let mut out = String::new();
    for (key, name, kind, help) in METRICS {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (l, c) in per_loop.iter().enumerate() {
            let value = c.iter().find(|(n, _)| n == key).map_or(0, |(_, v)| *v);
            let _ = writeln!(out, "{name}{{loop=\"{l}\"}} {value}");
        }
    }
    let head = shared.broadcast.head();
    let _ = writeln!(
        out,
        "# HELP ringcast_ring_lag_events Events published but not yet read by the loop.\n# TYPE ringcast_ring_lag_events gauge"
    );
    for l in 0..shared.counters.len() {
        let _ = writeln!(
            out,
            "ringcast_ring_lag_events{{loop=\"{l}\"}} {}",
            head - shared.broadcast.cursor(l)
        );
    }
    let (topics, bytes) = {
        let h = shared.history.lock().unwrap_or_else(PoisonError::into_inner);
        (h.topics(), h.bytes())
    };
    let _ = writeln!(out, "# HELP ringcast_events_published_total Events published.\n# TYPE ringcast_events_published_total counter\nringcast_events_published_total {}", head - 1);
    let _ = writeln!(out, "# HELP ringcast_history_topics Topics in the replay history.\n# TYPE ringcast_history_topics gauge\nringcast_history_topics {topics}");
    let _ = writeln!(out, "# HELP ringcast_history_bytes Bytes held by the replay history.\n# TYPE ringcast_history_bytes gauge\nringcast_history_bytes {bytes}");
    admission_metrics(&mut out, shared);
    if shared.auth.is_some() {
        auth_metrics(&mut out, shared);
    }
    if let Some(link) = &shared.backplane {
        let status = &link.backplane.status;
        let _ = writeln!(
            out,
            "# HELP ringcast_backplane_up Whether this node is connected to the NATS backplane.\n# TYPE ringcast_backplane_up gauge\nringcast_backplane_up {}",
            u8::from(status.is_up())
        );
        for (name, help, value) in backplane_counters(status) {
            let _ = writeln!(
                out,
                "# HELP ringcast_backplane_{name} {help}\n# TYPE ringcast_backplane_{name} {}\nringcast_backplane_{name} {value}",
                if name.ends_with("_total") { "counter" } else { "gauge" }
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP ringcast_admin_unauthorized_total Admin requests refused for want of the admin token, by reason.\n# TYPE ringcast_admin_unauthorized_total counter"
    );
    for (reason, value) in gate.refusals.counts() {
        let _ = writeln!(
            out,
            "ringcast_admin_unauthorized_total{{reason=\"{reason}\"}} {value}"
        );
    }
    out
}

/// Every counter by name, in the order of [`Counters`].
fn counters(c: &Counters) -> [(&'static str, u64); 43] {
    [
        ("accepted", c.accepted.load(Relaxed)),
        ("open", c.open.load(Relaxed)),
        ("open_sse", c.open_sse.load(Relaxed)),
        ("open_ndjson", c.open_ndjson.load(Relaxed)),
        ("open_ws", c.open_ws.load(Relaxed)),
        ("polls_held", c.polls_held.load(Relaxed)),
        ("queued_bytes", c.queued_bytes.load(Relaxed)),
        ("accept_full", c.accept_full.load(Relaxed)),
        ("accept_errors", c.accept_errors.load(Relaxed)),
        ("recv_enobufs", c.recv_enobufs.load(Relaxed)),
        ("bad_requests", c.bad_requests.load(Relaxed)),
        ("streams", c.streams.load(Relaxed)),
        ("polls", c.polls.load(Relaxed)),
        ("resets", c.resets.load(Relaxed)),
        ("replayed", c.replayed.load(Relaxed)),
        ("events", c.events.load(Relaxed)),
        ("deliveries", c.deliveries.load(Relaxed)),
        ("slow_closed", c.slow_closed.load(Relaxed)),
        ("dropped", c.dropped.load(Relaxed)),
        ("coalesced", c.coalesced.load(Relaxed)),
        ("slow_disconnected", c.slow_disconnected.load(Relaxed)),
        ("ring_overrun", c.ring_overrun.load(Relaxed)),
        ("ring_lost", c.ring_lost.load(Relaxed)),
        ("replay_gaps", c.replay_gaps.load(Relaxed)),
        ("heartbeats", c.heartbeats.load(Relaxed)),
        ("request_timeouts", c.request_timeouts.load(Relaxed)),
        ("idle_closed", c.idle_closed.load(Relaxed)),
        ("stalled", c.stalled.load(Relaxed)),
        ("tcp_timeouts", c.tcp_timeouts.load(Relaxed)),
        ("websockets", c.websockets.load(Relaxed)),
        ("ws_protocol_errors", c.ws_protocol_errors.load(Relaxed)),
        ("ws_pings", c.ws_pings.load(Relaxed)),
        ("ws_pong_timeouts", c.ws_pong_timeouts.load(Relaxed)),
        ("upstream", c.upstream.load(Relaxed)),
        ("upstream_refused", c.upstream_refused.load(Relaxed)),
        ("downstream_dropped", c.downstream_dropped.load(Relaxed)),
        ("admission_per_ip", c.admission_per_ip.load(Relaxed)),
        ("admission_rate", c.admission_rate.load(Relaxed)),
        ("admission_shed", c.admission_shed.load(Relaxed)),
        ("admission_dropped", c.admission_dropped.load(Relaxed)),
        ("ws_rate_limited", c.ws_rate_limited.load(Relaxed)),
        ("ws_rate_closed", c.ws_rate_closed.load(Relaxed)),
        ("stream_skipped", c.stream_skipped.load(Relaxed)),
    ]
}

/// A per-loop counter family: its name, its help and how to read it.
type Family = (&'static str, &'static str, fn(&Counters) -> u64);

/// Connections refused by admission control, by reason and loop; with an engine-wide cap,
/// the connections it counts.
fn admission_metrics(out: &mut String, shared: &Shared) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "# HELP ringcast_admission_refusals_total Connections refused by admission control, by reason.\n# TYPE ringcast_admission_refusals_total counter"
    );
    for (l, c) in shared.counters.iter().enumerate() {
        for (reason, value) in admission_refusals(c) {
            let _ = writeln!(
                out,
                "ringcast_admission_refusals_total{{loop=\"{l}\",reason=\"{reason}\"}} {value}"
            );
        }
    }
    if let Some(a) = shared.admission.as_ref() {
        let _ = writeln!(
            out,
            "# HELP ringcast_admission_held Connections admission control counts against --max-conns.\n# TYPE ringcast_admission_held gauge\nringcast_admission_held {}",
            a.held()
        );
    }
}

/// Admission refusals by reason: `per_ip` and `rate` (429), `shed` (--max-conns), `dropped`
/// (closed unanswered).
fn admission_refusals(c: &Counters) -> [(&'static str, u64); 4] {
    [
        ("per_ip", c.admission_per_ip.load(Relaxed)),
        ("rate", c.admission_rate.load(Relaxed)),
        ("shed", c.admission_shed.load(Relaxed)),
        ("dropped", c.admission_dropped.load(Relaxed)),
    ]
}

/// Subscriber auth's families: refusals by reason and loop, and the other outcomes.
fn auth_metrics(out: &mut String, shared: &Shared) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "# HELP ringcast_auth_refusals_total Requests refused for their token, by reason.\n# TYPE ringcast_auth_refusals_total counter"
    );
    for (l, c) in shared.counters.iter().enumerate() {
        for (i, r) in crate::auth::Refusal::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "ringcast_auth_refusals_total{{loop=\"{l}\",reason=\"{}\"}} {}",
                r.label(),
                c.auth_refused[i].load(Relaxed)
            );
        }
    }
    let families: [Family; 3] = [
        (
            "ringcast_auth_forbidden_total",
            "Requests and subscribe ops for a topic the token does not allow.",
            |c| c.auth_forbidden.load(Relaxed),
        ),
        (
            "ringcast_auth_expired_total",
            "Open connections whose token expired.",
            |c| c.auth_expired.load(Relaxed),
        ),
        (
            "ringcast_auth_refreshed_total",
            "WebSockets that sent a valid refresh token.",
            |c| c.auth_refreshed.load(Relaxed),
        ),
    ];
    for (name, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (l, c) in shared.counters.iter().enumerate() {
            let _ = writeln!(out, "{name}{{loop=\"{l}\"}} {}", value(c));
        }
    }
}

/// The backplane's figures: the metric name's tail, its help, its value.
fn backplane_counters(s: &crate::backplane::Status) -> [(&'static str, &'static str, u64); 13] {
    [
        (
            "last_sequence",
            "The newest stream sequence this node knows of.",
            s.last_seq.load(Relaxed),
        ),
        (
            "published_total",
            "Events JetStream stored through this node.",
            s.published.load(Relaxed),
        ),
        (
            "refused_total",
            "Publishes refused because the backplane could not store them.",
            s.refused.load(Relaxed),
        ),
        (
            "conflicts_total",
            "Batches retried because another node published one of their topics meanwhile.",
            s.conflicts.load(Relaxed),
        ),
        (
            "consumed_total",
            "Events this node read from the stream.",
            s.consumed.load(Relaxed),
        ),
        (
            "fetches_total",
            "Resumes read from the stream rather than the local history.",
            s.fetches.load(Relaxed),
        ),
        (
            "skipped_total",
            "Stream sequences evicted before this node read them.",
            s.skipped.load(Relaxed),
        ),
        ("batches_total", "Atomic batches sent.", s.batches.load(Relaxed)),
        (
            "sends_relayed_total",
            "Backends' SENDs relayed to the node holding the connection.",
            s.sends_relayed.load(Relaxed),
        ),
        (
            "sends_received_total",
            "SENDs other nodes relayed for this node's connections.",
            s.sends_received.load(Relaxed),
        ),
        (
            "upstream_relayed_total",
            "Client messages relayed to backends on other nodes.",
            s.upstream_relayed.load(Relaxed),
        ),
        (
            "upstream_received_total",
            "Client messages other nodes relayed for this node's backends.",
            s.upstream_received.load(Relaxed),
        ),
        (
            "relay_failed_total",
            "Relayed SENDs and client messages not taken: refused by the other node, no such node, no backend, or no answer in time.",
            s.relay_failed.load(Relaxed),
        ),
    ]
}

/// `{"epoch":..,"published":..,"history":{..},"totals":{..},"loops":[{..},..],"admin":{..}}`
/// (and `"backplane":{..}` with one).
fn stats_json(shared: &Shared, gate: &Gate) -> String {
    let head = shared.broadcast.head();
    let (topics, bytes) = {
        let h = shared.history.lock().unwrap_or_else(PoisonError::into_inner);
        (h.topics(), h.bytes())
    };
    let per_loop: Vec<_> = shared.counters.iter().map(|c| counters(c)).collect();
    let mut out = format!(
        "{{\"epoch\":\"{}\",\"published\":{},\"history\":{{\"topics\":{topics},\"bytes\":{bytes}}},\"totals\":{{",
        shared.epoch.id(0).trim_end_matches("-0"),
        head - 1,
    );
    let names: Vec<&str> = per_loop
        .first()
        .map(|c| c.iter().map(|(n, _)| *n).collect())
        .unwrap_or_default();
    for (i, name) in names.iter().enumerate() {
        let total: u64 = per_loop.iter().map(|c| c[i].1).sum();
        out.push_str(&format!("{}\"{name}\":{total}", if i > 0 { "," } else { "" }));
    }
    out.push_str("},\"loops\":[");
    for (l, c) in per_loop.iter().enumerate() {
        out.push_str(if l > 0 { ",{" } else { "{" });
        out.push_str(&format!("\"ring_lag\":{}", head - shared.broadcast.cursor(l)));
        for (name, value) in c {
            out.push_str(&format!(",\"{name}\":{value}"));
        }
        out.push('}');
    }
    out.push(']');
    if let Some(a) = shared.admission.as_ref() {
        out.push_str(&format!(
            ",\"admission\":{{\"held\":{},\"addresses\":{}}}",
            a.held(),
            a.addresses()
        ));
    }
    if shared.auth.is_some() {
        let total = |f: &dyn Fn(&Counters) -> u64| shared.counters.iter().map(|c| f(c)).sum::<u64>();
        out.push_str(",\"auth\":{\"refused\":{");
        for (i, r) in crate::auth::Refusal::ALL.iter().enumerate() {
            let n = total(&|c| c.auth_refused[i].load(Relaxed));
            out.push_str(&format!("{}\"{}\":{n}", if i > 0 { "," } else { "" }, r.label()));
        }
        out.push_str(&format!(
            "}},\"forbidden\":{},\"expired\":{},\"refreshed\":{}}}",
            total(&|c| c.auth_forbidden.load(Relaxed)),
            total(&|c| c.auth_expired.load(Relaxed)),
            total(&|c| c.auth_refreshed.load(Relaxed)),
        ));
    }
    if let Some(link) = &shared.backplane {
        let status = &link.backplane.status;
        out.push_str(&format!(
            ",\"backplane\":{{\"up\":{},\"reason\":{}",
            status.is_up(),
            json::string(&status.reason())
        ));
        for (name, _, value) in backplane_counters(status) {
            out.push_str(&format!(",\"{}\":{value}", name.trim_end_matches("_total")));
        }
        out.push('}');
    }
    out.push_str(&format!(
        ",\"admin\":{{\"token_required\":{},\"metrics_public\":{},\"unauthorized\":{{",
        gate.enabled(),
        gate.metrics_public()
    ));
    for (i, (reason, value)) in gate.refusals.counts().iter().enumerate() {
        out.push_str(&format!("{}\"{reason}\":{value}", if i > 0 { "," } else { "" }));
    }
    out.push_str("}}}");
    out
}
