//! The hidden `hold-worker` subcommand: one process that opens its share of idle
//! subscribers (SSE streams, or WebSockets with `--transport ws`), reports on stdout (see
//! [`crate::wire`]), holds them until its parent writes `close` or goes away, then closes
//! them all and exits. Held WebSockets answer the engine's pings with pongs.
//!
//! One thread and one epoll instance drive every socket; at most `--concurrency`
//! connections are between `connect()` and a held subscription at any time. Every loop is
//! bounded in time: the connect phase by `--connect-secs`, the whole life by
//! `--life-secs`, and the process dies with its parent (`PR_SET_PDEATHSIG`) or when its
//! stdin reaches end of file.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::handshake::{self, Scan, RESPONSE_BYTES_MAX};
use crate::plan;
use crate::sys::{self, Epoll};
use crate::wire::{self, Line, WorkerResult};
use crate::ws;

/// How a subscriber connects.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `GET` with `Accept: text/event-stream`; held at status 200 and a `retry:` line.
    Sse,
    /// A WebSocket upgrade with a random key; held at a correct 101 (RFC 6455 §4.2.2).
    Ws,
}

impl Transport {
    /// The flag value, as `--transport` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Ws => "ws",
        }
    }
}

/// Arguments of `ringcast-bench hold-worker`, written by the `hold` parent.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    /// Engine address, IPv4 `ip:port`.
    #[arg(long)]
    pub target: SocketAddrV4,
    /// `Host` header value.
    #[arg(long)]
    pub host: String,
    /// Request path with query.
    #[arg(long)]
    pub path: String,
    /// SSE or WebSocket subscribers.
    #[arg(long, value_enum)]
    pub transport: Transport,
    /// Connections this worker opens.
    #[arg(long)]
    pub count: u64,
    /// Global index of this worker's first connection (picks its source addresses).
    #[arg(long)]
    pub start_index: u64,
    /// Source addresses 127.0.0.2 ..= 127.0.0.(1+N); 0 lets the kernel choose.
    #[arg(long)]
    pub sources: u32,
    /// Connections in flight (connecting or awaiting the handshake) at once.
    #[arg(long)]
    pub concurrency: usize,
    /// Per-connection bound on connect + handshake, milliseconds.
    #[arg(long)]
    pub conn_timeout_ms: u64,
    /// Bound on the whole connect phase, seconds.
    #[arg(long)]
    pub connect_secs: u64,
    /// Bound on the worker's whole life, seconds.
    #[arg(long)]
    pub life_secs: u64,
}

/// Token under which stdin is registered; connection tokens are their indices.
const STDIN_TOKEN: u64 = u64::MAX;
/// Ready events taken per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 1024;
/// How long one wait blocks in the connect phase; bounds how late timeouts fire.
const CONNECT_WAIT_MS: i32 = 20;
/// How long one wait blocks in the hold phase.
const HOLD_WAIT_MS: i32 = 200;
/// Interval between progress lines.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Reads per readiness event on a held socket, so one chatty socket cannot starve others.
const HELD_READS_MAX: usize = 4;
/// Latency histogram range: 1 µs to 10 minutes, 3 significant figures.
const LATENCY_US_MAX: u64 = 600_000_000;

/// Where one connection is.
enum State {
    /// `connect()` in progress; waiting for `EPOLLOUT`.
    Connecting,
    /// Connected; `sent` bytes of the request are out.
    Sending { sent: usize },
    /// Request sent; the response so far.
    Reading { received: Vec<u8> },
    /// Status 200 and `retry:` arrived; the socket stays open.
    Held,
    /// Failed or dropped; the socket is closed.
    Done,
}

struct Conn {
    fd: Option<OwnedFd>,
    started: Instant,
    state: State,
    /// The `Sec-WebSocket-Key` (WebSocket only).
    key: [u8; ws::KEY_LEN],
    /// Bytes of a WebSocket frame still arriving on a held connection; empty (and not
    /// allocated) while idle.
    pending: Vec<u8>,
}

impl Conn {
    fn in_flight(&self) -> bool {
        matches!(
            self.state,
            State::Connecting | State::Sending { .. } | State::Reading { .. }
        )
    }
}

/// What stdin said.
enum Command {
    /// Nothing yet.
    Continue,
    /// `close`, or end of file: the parent is done or gone.
    Stop,
}

struct Worker {
    args: WorkerArgs,
    epoll: Epoll,
    request: Vec<u8>,
    conns: Vec<Conn>,
    in_flight: usize,
    /// Every connection below this index is finished (held, failed or dropped).
    low: usize,
    held: u64,
    failures: BTreeMap<String, u64>,
    failed: u64,
    latency_us: Histogram<u64>,
    scratch: Vec<u8>,
    /// Tokens of the registrations the last wait found ready.
    ready: Vec<u64>,
    /// The mask of this worker's pongs (RFC 6455 §5.3: a client masks every frame).
    mask: [u8; 4],
}

/// Runs the worker to completion.
pub fn main(args: WorkerArgs) -> ExitCode {
    let born = Instant::now();
    if let Err(e) = sys::kill_me_with_parent() {
        eprintln!("hold-worker: PR_SET_PDEATHSIG: {e}");
    }
    if let Err(e) = sys::raise_nofile() {
        eprintln!("hold-worker: cannot raise RLIMIT_NOFILE: {e}");
    }
    let mut worker = match Worker::new(args) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("hold-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let life_end = born + Duration::from_secs(worker.args.life_secs);
    let connect_end = born + Duration::from_secs(worker.args.connect_secs);
    let (command, ramp) = worker.connect_phase(connect_end.min(life_end));
    let result = worker.result(ramp);
    if !emit(&Line::Result(result)) || matches!(command, Command::Stop) {
        return ExitCode::SUCCESS;
    }
    let dropped = worker.hold_phase(life_end);
    drop(worker);
    emit(&Line::Closed { dropped });
    ExitCode::SUCCESS
}

/// Writes one line to stdout; `false` once the parent stopped reading.
fn emit(line: &Line) -> bool {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", wire::encode(line)).is_ok() && out.flush().is_ok()
}

impl Worker {
    fn new(args: WorkerArgs) -> Result<Worker, String> {
        let epoll = Epoll::new().map_err(|e| format!("epoll_create1: {e}"))?;
        // A regular file or /dev/null on stdin cannot be polled; the worker then relies
        // on its life bound and the parent-death signal alone.
        if let Err(e) = epoll.add(0, libc::EPOLLIN as u32, STDIN_TOKEN) {
            eprintln!("hold-worker: stdin cannot be polled ({e}); relying on --life-secs");
        }
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            args.path, args.host
        )
        .into_bytes();
        let latency_us =
            Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).map_err(|e| format!("histogram: {e}"))?;
        let mut mask = [0u8; 4];
        sys::random_bytes(&mut mask).map_err(|e| format!("getrandom: {e}"))?;
        Ok(Worker {
            conns: Vec::with_capacity(args.count as usize),
            args,
            epoll,
            request,
            in_flight: 0,
            low: 0,
            held: 0,
            failures: BTreeMap::new(),
            failed: 0,
            latency_us,
            scratch: vec![0; RESPONSE_BYTES_MAX],
            ready: Vec::with_capacity(EVENTS_PER_WAIT),
            mask,
        })
    }

    /// Opens every connection and drives it to held or failed, until `deadline`.
    /// Returns what stdin said and the phase's duration.
    fn connect_phase(&mut self, deadline: Instant) -> (Command, Duration) {
        let started = Instant::now();
        let mut next_progress = started + PROGRESS_EVERY;
        loop {
            self.open_more();
            if self.conns.len() as u64 == self.args.count && self.in_flight == 0 {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                self.expire(now, true);
                break;
            }
            if let Err(e) = self.wait(CONNECT_WAIT_MS) {
                eprintln!("hold-worker: epoll_wait: {e}");
                self.expire(now, true);
                break;
            }
            for i in 0..self.ready.len() {
                let token = self.ready[i];
                if token == STDIN_TOKEN {
                    if let Command::Stop = self.read_stdin() {
                        return (Command::Stop, started.elapsed());
                    }
                } else {
                    self.on_ready(token as usize);
                }
            }
            let now = Instant::now();
            self.expire(now, false);
            if now >= next_progress {
                next_progress = now + PROGRESS_EVERY;
                let (held, failed) = (self.held, self.failed);
                if !emit(&Line::Progress { held, failed }) {
                    return (Command::Stop, started.elapsed());
                }
            }
        }
        (Command::Continue, started.elapsed())
    }

    /// Holds until stdin says `close` or ends, or `deadline`; returns the connections
    /// the server closed meanwhile.
    fn hold_phase(&mut self, deadline: Instant) -> u64 {
        let mut dropped = 0;
        while Instant::now() < deadline {
            if self.wait(HOLD_WAIT_MS).is_err() {
                break;
            }
            for i in 0..self.ready.len() {
                let token = self.ready[i];
                if token == STDIN_TOKEN {
                    if let Command::Stop = self.read_stdin() {
                        return dropped;
                    }
                } else if self.drain_held(token as usize) {
                    dropped += 1;
                }
            }
        }
        dropped
    }

    fn wait(&mut self, timeout_ms: i32) -> std::io::Result<()> {
        self.epoll.wait(&mut self.ready, EVENTS_PER_WAIT, timeout_ms)
    }

    fn read_stdin(&self) -> Command {
        let mut buf = [0u8; 64];
        match sys::read_raw(0, &mut buf) {
            Ok(0) => Command::Stop,
            Ok(n)
                if buf[..n]
                    .windows(wire::CLOSE.len())
                    .any(|w| w == wire::CLOSE.as_bytes()) =>
            {
                Command::Stop
            }
            Ok(_) => Command::Continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Command::Continue,
            // The parent's end is unusable: treat it as gone.
            Err(_) => Command::Stop,
        }
    }

    fn open_more(&mut self) {
        while self.in_flight < self.args.concurrency && (self.conns.len() as u64) < self.args.count {
            let index = self.conns.len();
            let global = self.args.start_index + index as u64;
            let source = plan::source_for(global, self.args.sources);
            let started = Instant::now();
            let key = match self.args.transport {
                Transport::Sse => Ok([0; ws::KEY_LEN]),
                Transport::Ws => {
                    let mut nonce = [0u8; 16];
                    sys::random_bytes(&mut nonce)
                        .map(|()| ws::key_from(nonce))
                        .map_err(|e| format!("getrandom/{}", sys::errno_name(e.raw_os_error().unwrap_or(0))))
                }
            };
            let opened = key.and_then(|key| {
                sys::connect_start(source, self.args.target)
                    .map(|fd| (fd, key))
                    .map_err(|e| e.kind())
            });
            let registered = opened.and_then(|(fd, key)| {
                let events = (libc::EPOLLOUT | libc::EPOLLRDHUP) as u32;
                match self.epoll.add(fd.as_raw_fd(), events, index as u64) {
                    Ok(()) => Ok((fd, key)),
                    Err(e) => Err(format!(
                        "epoll/{}",
                        sys::errno_name(e.raw_os_error().unwrap_or(0))
                    )),
                }
            });
            match registered {
                Ok((fd, key)) => {
                    self.conns.push(Conn {
                        fd: Some(fd),
                        started,
                        state: State::Connecting,
                        key,
                        pending: Vec::new(),
                    });
                    self.in_flight += 1;
                }
                Err(kind) => {
                    self.conns.push(Conn {
                        fd: None,
                        started,
                        state: State::Done,
                        key: [0; ws::KEY_LEN],
                        pending: Vec::new(),
                    });
                    self.count_failure(kind);
                }
            }
        }
    }

    fn on_ready(&mut self, index: usize) {
        let Some(conn) = self.conns.get(index) else {
            return;
        };
        match conn.state {
            State::Connecting => self.on_connected(index),
            State::Sending { .. } => self.send_request(index),
            State::Reading { .. } => self.read_response(index),
            State::Held => {
                if self.drain_held(index) {
                    self.held -= 1;
                    self.count_failure("dropped/after-handshake".to_owned());
                }
            }
            // Closing a socket removes it from epoll, so no later wait reports it.
            State::Done => {}
        }
    }

    fn on_connected(&mut self, index: usize) {
        let Some(fd) = &self.conns[index].fd else {
            return;
        };
        match sys::take_socket_error(fd) {
            Err(errno) => self.fail(index, format!("connect/{}", sys::errno_name(errno))),
            Ok(()) => {
                self.conns[index].state = State::Sending { sent: 0 };
                self.send_request(index);
            }
        }
    }

    fn send_request(&mut self, index: usize) {
        let upgrade;
        let request: &[u8] = match self.args.transport {
            Transport::Sse => &self.request,
            Transport::Ws => {
                upgrade = ws::upgrade_request(&self.args.path, &self.args.host, &self.conns[index].key);
                &upgrade
            }
        };
        let conn = &mut self.conns[index];
        let (Some(fd), State::Sending { sent }) = (&conn.fd, &mut conn.state) else {
            return;
        };
        // Bounded: each round sends at least one byte or leaves.
        while *sent < request.len() {
            match sys::send(fd, &request[*sent..]) {
                Ok(n) => *sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    let kind = format!("send/{}", sys::errno_name(e.raw_os_error().unwrap_or(0)));
                    return self.fail(index, kind);
                }
            }
        }
        let raw = fd.as_raw_fd();
        conn.state = State::Reading {
            received: Vec::with_capacity(512),
        };
        let events = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        if let Err(e) = self.epoll.modify(raw, events, index as u64) {
            let kind = format!("epoll/{}", sys::errno_name(e.raw_os_error().unwrap_or(0)));
            self.fail(index, kind);
        }
    }

    fn read_response(&mut self, index: usize) {
        let conn = &mut self.conns[index];
        let (Some(fd), State::Reading { received }) = (&conn.fd, &mut conn.state) else {
            return;
        };
        // One read per readiness event: epoll is level-triggered and calls again.
        let verdict = match sys::recv(fd, &mut self.scratch) {
            Ok(0) if handshake::head_complete(received) => Err("closed/after-head".to_owned()),
            Ok(0) => Err("closed/before-head".to_owned()),
            Ok(n) => {
                received.extend_from_slice(&self.scratch[..n]);
                let scan = match self.args.transport {
                    Transport::Sse => handshake::scan(received),
                    Transport::Ws => ws::scan(received, &ws::accept_for(&conn.key)),
                };
                match scan {
                    Scan::Partial => return,
                    Scan::Held => Ok(()),
                    Scan::Refused(refusal) => Err(refusal.kind()),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => Err(format!("recv/{}", sys::errno_name(e.raw_os_error().unwrap_or(0)))),
        };
        match verdict {
            Ok(()) => self.mark_held(index),
            Err(kind) => self.fail(index, kind),
        }
    }

    fn mark_held(&mut self, index: usize) {
        let conn = &mut self.conns[index];
        let us = conn.started.elapsed().as_micros() as u64;
        if let (Transport::Ws, State::Reading { received }) = (self.args.transport, &conn.state) {
            // Frames that came with the 101 (a ping, replayed events) are read as held input.
            if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                conn.pending = received[at + 4..].to_vec();
            }
        }
        conn.state = State::Held;
        self.latency_us.saturating_record(us.clamp(1, LATENCY_US_MAX));
        self.held += 1;
        self.in_flight -= 1;
    }

    /// Reads and discards what a held connection received (comments, heartbeats; for a
    /// WebSocket, frames, each ping answered with a pong). Returns `true` when the server
    /// closed it (or sent a close frame, or bytes that are not server frames); the socket
    /// is then closed here.
    fn drain_held(&mut self, index: usize) -> bool {
        let Some(Conn {
            fd: Some(fd),
            pending,
            ..
        }) = self.conns.get_mut(index)
        else {
            return false;
        };
        let mut closed = false;
        for _ in 0..HELD_READS_MAX {
            match sys::recv(fd, &mut self.scratch) {
                Ok(0) => closed = true,
                Ok(n) if self.args.transport == Transport::Ws => {
                    pending.extend_from_slice(&self.scratch[..n]);
                    match ws::on_held_input(pending, self.mask) {
                        Ok(held) if held.closed => closed = true,
                        Ok(held) => {
                            // A pong of a few bytes on an idle socket: its send buffer is
                            // empty, so the send is whole or the socket is broken, which
                            // the next read reports.
                            if !held.pongs.is_empty() {
                                let _ = sys::send(fd, &held.pongs);
                            }
                            continue;
                        }
                        Err(e) => {
                            eprintln!("hold-worker: connection {index}: {}", e.kind());
                            closed = true;
                        }
                    }
                }
                Ok(_) => continue,
                Err(e) => closed = e.kind() != std::io::ErrorKind::WouldBlock,
            }
            break;
        }
        // Not closed: either drained or more is left, and level-triggered epoll calls again.
        if closed {
            let conn = &mut self.conns[index];
            conn.fd = None;
            conn.state = State::Done;
        }
        closed
    }

    fn fail(&mut self, index: usize, kind: String) {
        let conn = &mut self.conns[index];
        if conn.in_flight() {
            self.in_flight -= 1;
        }
        // Dropping the descriptor closes it, which also removes it from epoll.
        conn.fd = None;
        conn.state = State::Done;
        self.count_failure(kind);
    }

    fn count_failure(&mut self, kind: String) {
        *self.failures.entry(kind).or_insert(0) += 1;
        self.failed += 1;
    }

    /// Fails in-flight connections older than the per-connection bound, or all of them
    /// when `all` (the phase is over).
    fn expire(&mut self, now: Instant, all: bool) {
        let bound = Duration::from_millis(self.args.conn_timeout_ms);
        while self.low < self.conns.len() && !self.conns[self.low].in_flight() {
            self.low += 1;
        }
        for index in self.low..self.conns.len() {
            let conn = &self.conns[index];
            if !conn.in_flight() || (!all && now.duration_since(conn.started) < bound) {
                continue;
            }
            let kind = match &conn.state {
                State::Connecting => "timeout/connect",
                State::Sending { .. } => "timeout/send",
                State::Reading { received } if received.is_empty() => "timeout/no-response",
                _ => "timeout/response",
            };
            self.fail(index, kind.to_owned());
        }
        if all {
            let unopened = self.args.count - self.conns.len() as u64;
            if unopened > 0 {
                *self.failures.entry("timeout/not-opened".to_owned()).or_insert(0) += unopened;
                self.failed += unopened;
            }
        }
    }

    fn result(&self, ramp: Duration) -> WorkerResult {
        WorkerResult {
            held: self.held,
            ramp_ms: ramp.as_millis() as u64,
            failures: self.failures.clone(),
            latency_us: self
                .latency_us
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        }
    }
}
