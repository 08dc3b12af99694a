//! The admin listener, on its own address (`--admin`, loopback by default): `GET /healthz`,
//! `GET /stats` (JSON), `GET /metrics` (Prometheus text format), `POST /publish` (HTTP
//! publishing for convenience) and, with `--console`, the console page (see [`console`]).
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
mod console;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{AcqRel, Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::counters::{self, Counter, Scope, Snapshot, TABLE};
use crate::ingest::client::{Outgoing, PublishError, Publisher};
use crate::proto::http;
use crate::proto::json;
use crate::shared::Shared;
use auth::Gate;
pub use auth::{Token, TokenError};
use conn::{Reply, Request};

/// Stack of each connection's thread: it parses a head, formats a few KiB of metrics and
/// holds one read chunk (16 KiB), nothing recursive.
const CONN_STACK_BYTES: usize = 256 << 10;

/// How long the accept loop waits after an accept error (out of descriptors or memory)
/// rather than spinning on it.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// The media type of a batch publish's body and answer: one JSON object per line.
const NDJSON: &str = "application/x-ndjson";

/// Events in one batch publish at most.
pub const BATCH_EVENTS_MAX: usize = 1000;

/// Body bytes of one batch publish at most (a single publish's body is bounded by
/// `--payload-max`, which may be larger).
pub const BATCH_BYTES_MAX: usize = 4 << 20;

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
            body_max: config.payload_max.max(BATCH_BYTES_MAX),
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
    if let (true, Get, Some(&listen)) = (shared.config.console, req.method, shared.config.listen.first()) {
        if let Some(page) = console::route(req.path, listen, admin.gate.enabled(), shared.config.heartbeat_ms)
        {
            return page;
        }
    }
    match (req.method, req.path) {
        (Get, "/healthz") => healthz(shared),
        (Get, "/stats") => typed(200, "application/json", stats_json(shared, &admin.gate)),
        (Get, "/metrics") => typed(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics(shared, &admin.gate),
        ),
        (Post, "/publish") if req.media_type == NDJSON => publish_batch(req.query, req.body, admin),
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
    let payload_max = admin.shared.config.payload_max;
    if body.len() > payload_max {
        let why = format!(
            "payload of {} bytes exceeds the limit of {payload_max} bytes",
            body.len()
        );
        return json_error(413, &why);
    }
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
        Err(PublishError::Refused(reason)) if is_engine_trouble(&reason) => {
            json_error(503, &reason).with_header("Retry-After", RETRY_AFTER_SECS)
        }
        Err(PublishError::Refused(reason)) => json_error(400, &reason),
        Err(e @ PublishError::BadArgument(_)) => json_error(400, &e.to_string()),
        Err(e) => json_error(503, &e.to_string()).with_header("Retry-After", RETRY_AFTER_SECS),
    }
}

/// One line of a batch publish: the fields of a single publish's query, and the payload
/// as a JSON string. `topic`, `event` and `key` default to the request's query parameters.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchLine<'a> {
    #[serde(borrow, default)]
    topic: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    event: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    key: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    data: std::borrow::Cow<'a, str>,
}

/// A batch line that may be published, or why not (HTTP status and reason).
type Checked<'a> = Result<BatchLine<'a>, (u16, String)>;

/// `POST /publish[?topic=T&event=E&key=K]` with `Content-Type: application/x-ndjson`: one
/// event per non-empty line, `{"topic":..,"data":..[,"event":..][,"key":..]}`, published
/// in order through one pipelined exchange with the ingest socket. The answer is `200`
/// with one NDJSON line per event, in order: `{"id":..}`, or `{"error":..,"status":..}`
/// with the status a single publish of that line would have had; a bad line does not
/// stop the others. A body over [`BATCH_BYTES_MAX`] is 413 and one of more than
/// [`BATCH_EVENTS_MAX`] lines 400, before anything is published.
fn publish_batch(query: &str, body: &[u8], admin: &Admin) -> Reply {
    if body.len() > BATCH_BYTES_MAX {
        let why = format!(
            "batch of {} bytes exceeds the limit of {BATCH_BYTES_MAX} bytes",
            body.len()
        );
        return json_error(413, &why);
    }
    let lines: Vec<&[u8]> = body
        .split(|&b| b == b'\n')
        .filter(|line| !line.trim_ascii().is_empty())
        .collect();
    if lines.len() > BATCH_EVENTS_MAX {
        let why = format!(
            "batch of {} events exceeds the limit of {BATCH_EVENTS_MAX}; split it",
            lines.len()
        );
        return json_error(400, &why);
    }
    let defaults = (
        http::query_param(query, "topic"),
        http::query_param(query, "event"),
        http::query_param(query, "key"),
    );
    let payload_max = admin.shared.config.payload_max;
    let checked: Vec<Checked<'_>> = lines
        .iter()
        .map(|line| check_line(line, &defaults, payload_max))
        .collect();
    let outgoing: Vec<Outgoing<'_>> = checked
        .iter()
        .filter_map(|c| c.as_ref().ok())
        .map(|l| Outgoing {
            topic: l.topic.as_deref().unwrap_or(""),
            event: l.event.as_deref(),
            key: l.key.as_deref(),
            data: l.data.as_bytes(),
        })
        .collect();
    let mut published = admin
        .publisher
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .publish_batch(&outgoing)
        .into_iter();
    let mut answer = String::with_capacity(checked.len() * 32);
    for c in &checked {
        let (status, reason) = match c {
            Err((status, reason)) => (*status, reason.clone()),
            Ok(_) => match published.next().unwrap_or(Err(PublishError::NoReply)) {
                Ok(id) => {
                    answer.push_str(&format!("{{\"id\":{}}}\n", json::string(&id)));
                    continue;
                }
                Err(e) => (publish_status(&e), publish_reason(e)),
            },
        };
        answer.push_str(&format!(
            "{{\"error\":{},\"status\":{status}}}\n",
            json::string(&reason)
        ));
    }
    typed(200, NDJSON, answer)
}

/// Parses and checks one batch line as [`publish`] checks a request.
fn check_line<'a>(
    line: &'a [u8],
    defaults: &(Option<String>, Option<String>, Option<String>),
    payload_max: usize,
) -> Checked<'a> {
    let mut parsed: BatchLine<'a> = serde_json::from_slice(line).map_err(|e| {
        (
            400,
            format!("not a publish: {e}; expected {{\"topic\":..,\"data\":..}}"),
        )
    })?;
    let or = |v: &mut Option<std::borrow::Cow<'a, str>>, d: &Option<String>| {
        if v.is_none() {
            *v = d.clone().map(std::borrow::Cow::Owned);
        }
    };
    or(&mut parsed.topic, &defaults.0);
    or(&mut parsed.event, &defaults.1);
    or(&mut parsed.key, &defaults.2);
    let Some(topic) = parsed.topic.as_deref() else {
        return Err((400, "topic is required: in the line or as ?topic=NAME".into()));
    };
    if !http::is_valid_topic(topic.as_bytes()) {
        return Err((
            400,
            "invalid topic: topics are 1-200 bytes of [A-Za-z0-9._~:/-]".into(),
        ));
    }
    let printable = |v: &Option<std::borrow::Cow<'_, str>>| {
        v.as_ref()
            .is_none_or(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic()))
    };
    if !printable(&parsed.event) || !printable(&parsed.key) {
        return Err((
            400,
            "event and key are 1 or more bytes of printable ASCII (0x21-0x7E)".into(),
        ));
    }
    if parsed.data.len() > payload_max {
        let why = format!(
            "payload of {} bytes exceeds the limit of {payload_max} bytes",
            parsed.data.len()
        );
        return Err((413, why));
    }
    Ok(parsed)
}

/// The HTTP status of a publish that did not return an id.
fn publish_status(e: &PublishError) -> u16 {
    match e {
        PublishError::Refused(reason) if is_engine_trouble(reason) => 503,
        PublishError::Refused(_) | PublishError::BadArgument(_) => 400,
        _ => 503,
    }
}

fn publish_reason(e: PublishError) -> String {
    match e {
        PublishError::Refused(reason) => reason,
        e => e.to_string(),
    }
}

/// Refusals that are the engine's trouble, not the request's: the backplane is down, or
/// the loops are behind (`--ingest-flow lag`).
fn is_engine_trouble(reason: &str) -> bool {
    reason.starts_with("backplane ") || reason.starts_with("engine behind")
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

/// Every counter in the Prometheus text format (0.0.4), labelled by loop, plus the
/// ring lag per loop, the history's size and the admin listener's refusals.
fn metrics(shared: &Shared, gate: &Gate) -> String {
    use std::fmt::Write;
    let per_loop: Vec<Snapshot> = shared.counters.iter().map(|c| c.read()).collect();
    let mut out = String::new();
    counter_metrics(&mut out, &per_loop, shared.auth.is_some());
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
    if let Some(a) = shared.admission.as_ref() {
        let _ = writeln!(
            out,
            "# HELP ringcast_admission_held Connections admission control counts against --max-conns.\n# TYPE ringcast_admission_held gauge\nringcast_admission_held {}",
            a.held()
        );
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

/// The families of [`counters::TABLE`], labelled by loop: those of [`Scope::Auth`] only
/// with `auth`.
fn counter_metrics(out: &mut String, per_loop: &[Snapshot], auth: bool) {
    use std::fmt::Write;
    for rows in counters::families() {
        let Counter { family, scope, .. } = TABLE[rows.start];
        if scope == Scope::Auth && !auth {
            continue;
        }
        let name = family.name;
        let _ = writeln!(
            out,
            "# HELP {name} {}\n# TYPE {name} {}",
            family.help,
            family.kind.name()
        );
        for (l, snapshot) in per_loop.iter().enumerate() {
            for row in rows.clone() {
                let label = TABLE[row].label;
                for (cell, value) in snapshot.row(row).iter().enumerate() {
                    match label {
                        Some(label) => {
                            let (key, v) = (label.name, label.values[cell]);
                            let _ = writeln!(out, "{name}{{loop=\"{l}\",{key}=\"{v}\"}} {value}");
                        }
                        None => {
                            let _ = writeln!(out, "{name}{{loop=\"{l}\"}} {value}");
                        }
                    }
                }
            }
        }
    }
}

/// The rows of [`counters::TABLE`] in `scope` as the members of a JSON object (without its
/// braces): `"key":N`, or `"key":{"<label value>":N,..}` for a row of several cells.
fn counter_stats(out: &mut String, snapshot: &Snapshot, scope: Scope) {
    let rows = TABLE.iter().enumerate().filter(|(_, c)| c.scope == scope);
    for (n, (row, c)) in rows.enumerate() {
        out.push_str(&format!("{}\"{}\":", if n > 0 { "," } else { "" }, c.stat));
        match (c.label, snapshot.row(row)) {
            (_, [value]) => out.push_str(&value.to_string()),
            (label, values) => {
                let names = label.map_or(&[][..], |l| l.values);
                out.push('{');
                for (i, (name, value)) in names.iter().zip(values).enumerate() {
                    out.push_str(&format!("{}\"{name}\":{value}", if i > 0 { "," } else { "" }));
                }
                out.push('}');
            }
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
    let per_loop: Vec<Snapshot> = shared.counters.iter().map(|c| c.read()).collect();
    let totals = Snapshot::total(&per_loop);
    let mut out = format!(
        "{{\"epoch\":\"{}\",\"published\":{},\"history\":{{\"topics\":{topics},\"bytes\":{bytes}}},\"totals\":{{",
        shared.epoch.id(0).trim_end_matches("-0"),
        head - 1,
    );
    counter_stats(&mut out, &totals, Scope::Loop);
    out.push_str("},\"loops\":[");
    for (l, c) in per_loop.iter().enumerate() {
        out.push_str(if l > 0 { ",{" } else { "{" });
        out.push_str(&format!("\"ring_lag\":{},", head - shared.broadcast.cursor(l)));
        counter_stats(&mut out, c, Scope::Loop);
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
        out.push_str(",\"auth\":{");
        counter_stats(&mut out, &totals, Scope::Auth);
        out.push('}');
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::counters::Counters;

    /// Two loops' snapshots, every cell a different number.
    fn snapshots() -> Vec<Snapshot> {
        (0..2u64)
            .map(|l| {
                let c = Counters::default();
                let mut n = 0;
                c.visit(|cell: &AtomicU64| {
                    n += 1;
                    cell.store(1000 * l + n, Relaxed);
                });
                c.read()
            })
            .collect()
    }

    /// The samples of `metrics`, by their name and labels as written.
    fn samples(metrics: &str) -> BTreeMap<String, u64> {
        metrics
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (name, value) = l.rsplit_once(' ').expect("name value");
                (name.to_owned(), value.parse().expect("a number"))
            })
            .collect()
    }

    /// Every cell `/stats` shows is the sample `/metrics` shows for it, and `/metrics`
    /// shows nothing else.
    #[test]
    fn stats_and_metrics_show_the_same_counters() {
        let per_loop = snapshots();
        let mut metrics = String::new();
        counter_metrics(&mut metrics, &per_loop, true);
        let mut samples = samples(&metrics);
        let mut stats = String::from("{\"loops\":[");
        for (l, s) in per_loop.iter().enumerate() {
            stats.push_str(if l > 0 { ",{" } else { "{" });
            counter_stats(&mut stats, s, Scope::Loop);
            stats.push_str(",\"auth\":{");
            counter_stats(&mut stats, s, Scope::Auth);
            stats.push_str("}}");
        }
        stats.push_str("]}");
        let stats: serde_json::Value = serde_json::from_str(&stats).expect(&stats);
        let mut shown = 0;
        for (l, loop_stats) in stats["loops"].as_array().expect("loops").iter().enumerate() {
            for c in TABLE {
                let object = match c.scope {
                    Scope::Loop => loop_stats,
                    Scope::Auth => &loop_stats["auth"],
                };
                for cell in 0..c.cells {
                    let (stat, labels) = match c.label {
                        Some(label) if c.cells > 1 => (
                            &object[c.stat][label.values[cell]],
                            format!(",{}=\"{}\"", label.name, label.values[cell]),
                        ),
                        Some(label) => (
                            &object[c.stat],
                            format!(",{}=\"{}\"", label.name, label.values[0]),
                        ),
                        None => (&object[c.stat], String::new()),
                    };
                    let sample = format!("{}{{loop=\"{l}\"{labels}}}", c.family.name);
                    let metric = samples.remove(&sample);
                    assert_eq!(
                        stat.as_u64(),
                        metric,
                        "{} cell {cell} of loop {l}: {sample}",
                        c.stat
                    );
                    assert!(metric.is_some(), "{sample}");
                    shown += 1;
                }
            }
        }
        assert_eq!(shown, 2 * crate::counters::CELLS);
        assert!(samples.is_empty(), "in /metrics only: {samples:?}");
    }

    #[test]
    fn auth_families_need_auth() {
        let mut metrics = String::new();
        counter_metrics(&mut metrics, &snapshots(), false);
        assert!(metrics.contains("ringcast_admission_refusals_total{loop=\"1\",reason=\"rate\"}"));
        assert!(metrics.contains("ringcast_connections_open_by_transport{loop=\"0\",transport=\"ws\"}"));
        assert!(!metrics.contains("ringcast_auth_"), "{metrics}");
    }
}
