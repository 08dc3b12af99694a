//! The admin listener, on its own address (`--admin`, loopback by default) and its own
//! thread: `GET /healthz`, `GET /stats` (JSON), `GET /metrics` (Prometheus text format)
//! and `POST /publish` (HTTP publishing for convenience). Plain blocking I/O: it serves a
//! handful of requests a minute, never a client stream, reads the loops only through
//! their atomic counters, and publishes through the ingest socket like any backend, so
//! the ingest thread stays the broadcast ring's only producer.
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use crate::engine::{Counters, Shared};
use crate::proto::http::{self, Parsed};
use crate::proto::json;

/// Bytes of an oversized body read and discarded before answering 413.
const DISCARD_MAX: u64 = 64 << 20;

/// A request must arrive whole within this time, or the admin connection is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds the admin listener.
///
/// # Errors
/// The bind error, with the address named by the caller.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Serves admin requests one at a time until the process exits.
pub fn serve(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming().flatten() {
        let _ = handle(stream, &shared);
    }
}

fn handle(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(READ_TIMEOUT))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let response = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        match http::parse_request(&buf) {
            Ok(Parsed::Partial) => continue,
            Ok(Parsed::Complete(req)) => {
                let (head_len, length) = (req.head_len, req.content_length);
                let (method, path, query) = (req.method, req.path.to_owned(), req.query.to_owned());
                let body = match read_body(&mut stream, &buf[head_len..], length, shared.config.payload_max) {
                    Ok(body) => body,
                    Err(response) => break response,
                };
                break route(method, &path, &query, &body, shared);
            }
            Err(e) => break http::simple_response(e.status(), e.reason(), false, &[]),
        }
    };
    stream.write_all(&response)
}

/// Reads a request body of `length` bytes (`already` of it arrived with the head).
fn read_body(
    stream: &mut TcpStream,
    already: &[u8],
    length: Option<u64>,
    max: usize,
) -> Result<Vec<u8>, Vec<u8>> {
    let length = length.unwrap_or(0);
    if length > max as u64 {
        // Read what was sent (bounded) so that closing does not reset the connection
        // before the client reads the answer.
        let mut left = length.saturating_sub(already.len() as u64).min(DISCARD_MAX);
        let mut chunk = [0u8; 16 << 10];
        while left > 0 {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n as u64),
            }
        }
        let why = format!("payload of {length} bytes exceeds the limit of {max} bytes");
        return Err(json_error(413, &why));
    }
    let mut body = already[..already.len().min(length as usize)].to_vec();
    let mut chunk = [0u8; 16 << 10];
    while body.len() < length as usize {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return Err(json_error(400, "the body ended before Content-Length")),
            Ok(n) => body.extend_from_slice(&chunk[..n.min(length as usize - body.len())]),
        }
    }
    Ok(body)
}

fn route(method: http::Method, path: &str, query: &str, body: &[u8], shared: &Shared) -> Vec<u8> {
    use http::Method::{Get, Post};
    match (method, path) {
        (Get, "/healthz") => healthz(shared),
        (Get, "/stats") => typed_response(200, "application/json", &stats_json(shared)),
        (Get, "/metrics") => {
            typed_response(200, "text/plain; version=0.0.4; charset=utf-8", &metrics(shared))
        }
        (Post, "/publish") => publish(query, body, shared),
        (_, "/healthz" | "/stats" | "/metrics") => {
            http::simple_response(405, "use GET", false, &[("Allow", "GET")])
        }
        (_, "/publish") => http::simple_response(405, "use POST", false, &[("Allow", "POST")]),
        _ => http::simple_response(
            404,
            "admin endpoints: /healthz, /stats, /metrics, /publish",
            false,
            &[],
        ),
    }
}

/// `200 ok`, or with a backplane that is down `503` saying why: this node cannot take
/// publishes then (connected clients keep their streams and heartbeats).
fn healthz(shared: &Shared) -> Vec<u8> {
    match &shared.backplane {
        Some(link) if !link.backplane.status.is_up() => {
            let why = format!("backplane down: {}\n", link.backplane.status.reason());
            http::simple_response(503, &why, false, &[("Retry-After", "1")])
        }
        _ => http::simple_response(200, "ok\n", false, &[]),
    }
}

/// `POST /publish?topic=T[&event=E][&key=K]` with the payload as the body: the same
/// semantics and limits as a `PUB` on the ingest socket.
fn publish(query: &str, body: &[u8], shared: &Shared) -> Vec<u8> {
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
    match crate::ingest::client::publish(
        &shared.config.ingest,
        &topic,
        event.as_deref(),
        key.as_deref(),
        body,
    ) {
        Ok(id) => typed_response(
            200,
            "application/json",
            &format!("{{\"id\":{}}}", json::string(&id)),
        ),
        Err(crate::ingest::client::PublishError::Refused(reason)) => json_error(400, &reason),
        Err(e) => json_error(503, &e.to_string()),
    }
}

fn json_error(status: u16, reason: &str) -> Vec<u8> {
    typed_response(
        status,
        "application/json",
        &format!("{{\"error\":{}}}", json::string(reason)),
    )
}

fn typed_response(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        http::status_text(status),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
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
        "recv_enobufs",
        "ringcast_recv_enobufs_total",
        "counter",
        "Receives that found the buffer ring empty.",
    ),
];

/// Every counter in the Prometheus text format (0.0.4), labelled by loop, plus the
/// ring lag per loop and the history's size.
pub fn metrics(shared: &Shared) -> String {
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
    out
}

/// Every counter by name, in the order of [`Counters`].
fn counters(c: &Counters) -> [(&'static str, u64); 35] {
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
    ]
}

/// `{"epoch":..,"published":..,"history":{..},"totals":{..},"loops":[{..},..]}`.
pub fn stats_json(shared: &Shared) -> String {
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
    out.push_str("]}");
    out
}
