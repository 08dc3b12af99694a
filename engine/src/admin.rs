//! The admin listener: health and counters for operators and tests, on its own address
//! (`--admin`, loopback by default) and its own thread. Plain blocking I/O: it serves a
//! handful of requests a minute, never a client stream, and never touches a loop's state
//! except through the loops' atomic counters.
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use crate::engine::{Counters, Shared};
use crate::proto::http::{self, Parsed};

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
            Ok(Parsed::Complete(req)) => break route(req.method, req.path, shared),
            Err(e) => break http::simple_response(e.status(), e.reason(), false, &[]),
        }
    };
    stream.write_all(&response)
}

fn route(method: http::Method, path: &str, shared: &Shared) -> Vec<u8> {
    match (method, path) {
        (http::Method::Get, "/healthz") => http::simple_response(200, "ok\n", false, &[]),
        (http::Method::Get, "/stats") => json_response(&stats_json(shared)),
        (_, "/healthz" | "/stats") => http::simple_response(405, "use GET", false, &[("Allow", "GET")]),
        _ => http::simple_response(404, "admin endpoints: /healthz, /stats", false, &[]),
    }
}

fn json_response(body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Every counter by name, in the order of [`Counters`].
fn counters(c: &Counters) -> [(&'static str, u64); 30] {
    [
        ("accepted", c.accepted.load(Relaxed)),
        ("open", c.open.load(Relaxed)),
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
    let names = per_loop.first().map(|c| c.map(|(n, _)| n)).unwrap_or_default();
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
