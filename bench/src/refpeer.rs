//! The hidden `ws-ref-server` subcommand: the kernel-only reference peer of `compare
//! --server kernel`. The least a WebSocket fan-out server can do, with plain sockets: one
//! thread, level-triggered epoll, the same upgrade and paths as `bench/peers/uws/server.js`
//! (`/ws?topic=T` subscribes, `/pub?topic=T` publishes, every published message answered
//! with a one-byte `+` text frame once it was written), and for everything one publisher
//! read brings, one buffer of server frames written to each subscriber with one `send`.
//! That is the physical limit the servers are measured against (PEERS.md, "Kernel-only
//! baseline"): no topics beyond one, no history, no parsing beyond the frame header.
//!
//! A subscriber whose socket is full keeps at most `--pending-max` bytes queued; what does
//! not fit is dropped and counted (printed to stderr once a second).
//!
//! Must never: run longer than `--max-secs`, or listen on anything but the given address.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::sys::Epoll;
use crate::wsframe;

/// Arguments of `ringcast-bench ws-ref-server`.
#[derive(clap::Args, Debug, Clone)]
pub struct RefArgs {
    /// Listen address, loopback `host:port`.
    #[arg(long)]
    pub listen: String,
    /// Bytes queued per subscriber at most while its socket is full.
    #[arg(long, default_value_t = 1 << 20)]
    pub pending_max: usize,
    /// Exit after this many seconds at the latest.
    #[arg(long, default_value_t = 3600)]
    pub max_secs: u64,
}

const LISTENER: u64 = u64::MAX;
const READ_BYTES: usize = 256 * 1024;
const HEAD_MAX: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Handshake,
    Sub,
    Pub,
}

struct Conn {
    sock: TcpStream,
    kind: Kind,
    input: Vec<u8>,
    out: Vec<u8>,
    /// Whether EPOLLOUT is registered (while `out` is not empty).
    writing: bool,
}

/// Runs the reference server until killed or `--max-secs`.
pub fn main(args: RefArgs) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringcast-bench ws-ref-server: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &RefArgs) -> Result<(), String> {
    crate::sys::raise_nofile().map_err(|e| format!("raise RLIMIT_NOFILE: {e}"))?;
    let listener = TcpListener::bind(&args.listen).map_err(|e| format!("listen {}: {e}", args.listen))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let epoll = Epoll::new().map_err(|e| e.to_string())?;
    epoll
        .add(listener.as_raw_fd(), libc::EPOLLIN as u32, LISTENER)
        .map_err(|e| e.to_string())?;
    println!(
        "ws-ref-server listening {} pid {}",
        args.listen,
        std::process::id()
    );
    let mut server = Server {
        epoll,
        conns: Vec::new(),
        free: Vec::new(),
        subs: Vec::new(),
        buf: vec![0; READ_BYTES],
        batch: Vec::new(),
        pending_max: args.pending_max,
        published: 0,
        dropped: 0,
    };
    let end = Instant::now() + Duration::from_secs(args.max_secs);
    let mut tokens = Vec::new();
    let mut report = (Instant::now(), 0u64, 0u64);
    while Instant::now() < end {
        server
            .epoll
            .wait(&mut tokens, 1024, 100)
            .map_err(|e| e.to_string())?;
        for &t in &tokens {
            if t == LISTENER {
                server.accept(&listener);
            } else {
                server.ready(t as usize);
            }
        }
        if report.0.elapsed() >= Duration::from_secs(1)
            && (report.1, report.2) != (server.published, server.dropped)
        {
            eprintln!(
                "ws-ref-server: published {}, dropped {} (message x subscriber), {} subscribers",
                server.published,
                server.dropped,
                server.subs.len()
            );
            report = (Instant::now(), server.published, server.dropped);
        }
    }
    Ok(())
}

struct Server {
    epoll: Epoll,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    subs: Vec<usize>,
    buf: Vec<u8>,
    batch: Vec<u8>,
    pending_max: usize,
    published: u64,
    dropped: u64,
}

impl Server {
    fn accept(&mut self, listener: &TcpListener) {
        while let Ok((sock, _)) = listener.accept() {
            if sock.set_nonblocking(true).is_err() || sock.set_nodelay(true).is_err() {
                continue;
            }
            let slot = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            if self
                .epoll
                .add(sock.as_raw_fd(), libc::EPOLLIN as u32, slot as u64)
                .is_err()
            {
                self.free.push(slot);
                continue;
            }
            self.conns[slot] = Some(Conn {
                sock,
                kind: Kind::Handshake,
                input: Vec::new(),
                out: Vec::new(),
                writing: false,
            });
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(c) = self.conns[slot].take() {
            if c.kind == Kind::Sub {
                self.subs.retain(|&s| s != slot);
            }
            self.free.push(slot);
        }
    }

    fn ready(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if conn.writing && flush(conn, &self.epoll, slot).is_err() {
            return self.close(slot);
        }
        let mut published = 0;
        loop {
            let Some(conn) = self.conns[slot].as_mut() else {
                return;
            };
            let n = match conn.sock.read(&mut self.buf) {
                Ok(0) => return self.close(slot),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(slot),
            };
            let result = match conn.kind {
                // A subscriber's frames (a close, a pong) are read and ignored.
                Kind::Sub => Ok(0),
                Kind::Handshake => handshake(conn, &self.buf[..n], &mut self.subs, slot),
                Kind::Pub => {
                    conn.input.extend_from_slice(&self.buf[..n]);
                    let batch = &mut self.batch;
                    let mut count = 0;
                    let used = wsframe::client_frames(&mut conn.input, &mut |f| {
                        if f.opcode == wsframe::OP_TEXT || f.opcode == wsframe::OP_BINARY {
                            wsframe::server_header(batch, f.opcode, f.payload.len());
                            batch.extend_from_slice(f.payload);
                            count += 1;
                        }
                    });
                    used.map(|used| {
                        conn.input.drain(..used);
                        count
                    })
                }
            };
            match result {
                Ok(n) => published += n,
                Err(_) => return self.close(slot),
            }
            if n < self.buf.len() {
                break;
            }
        }
        if published > 0 {
            self.fan_out(slot, published);
        }
    }

    /// Writes the batch of `count` messages to every subscriber, then acknowledges them.
    fn fan_out(&mut self, publisher: usize, count: u64) {
        let batch = std::mem::take(&mut self.batch);
        let mut dead = Vec::new();
        for &s in &self.subs {
            let Some(conn) = self.conns[s].as_mut() else {
                continue;
            };
            if !conn.out.is_empty() {
                if conn.out.len() + batch.len() > self.pending_max {
                    self.dropped += count;
                } else {
                    conn.out.extend_from_slice(&batch);
                }
                continue;
            }
            conn.out.extend_from_slice(&batch);
            if flush(conn, &self.epoll, s).is_err() {
                dead.push(s);
            }
        }
        self.published += count;
        if let Some(conn) = self.conns[publisher].as_mut() {
            for _ in 0..count {
                wsframe::server_header(&mut conn.out, wsframe::OP_TEXT, 1);
                conn.out.push(b'+');
            }
            if flush(conn, &self.epoll, publisher).is_err() {
                dead.push(publisher);
            }
        }
        for s in dead {
            self.close(s);
        }
        self.batch = batch;
        self.batch.clear();
    }
}

/// Sends what `conn.out` holds; registers EPOLLOUT while some is left.
fn flush(conn: &mut Conn, epoll: &Epoll, slot: usize) -> io::Result<()> {
    let mut sent = 0;
    while sent < conn.out.len() {
        match conn.sock.write(&conn.out[sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    conn.out.drain(..sent);
    let want = !conn.out.is_empty();
    if want != conn.writing {
        let events = libc::EPOLLIN as u32 | if want { libc::EPOLLOUT as u32 } else { 0 };
        epoll.modify(conn.sock.as_raw_fd(), events, slot as u64)?;
        conn.writing = want;
    }
    Ok(())
}

/// Gathers the upgrade request; on its end answers 101 and becomes a subscriber or the
/// publisher by path.
fn handshake(conn: &mut Conn, input: &[u8], subs: &mut Vec<usize>, slot: usize) -> Result<u64, String> {
    conn.input.extend_from_slice(input);
    let Some(end) = conn.input.windows(4).position(|w| w == b"\r\n\r\n") else {
        if conn.input.len() > HEAD_MAX {
            return Err("request head too large".into());
        }
        return Ok(0);
    };
    let head = String::from_utf8_lossy(&conn.input[..end]).into_owned();
    let path = head.split(' ').nth(1).unwrap_or("");
    let key = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("sec-websocket-key"))
        .map(|(_, v)| v.trim().to_owned())
        .ok_or("no Sec-WebSocket-Key")?;
    conn.kind = if path.starts_with("/pub") {
        Kind::Pub
    } else {
        subs.push(slot);
        Kind::Sub
    };
    let rest = conn.input.split_off(end + 4);
    conn.input = if conn.kind == Kind::Pub { rest } else { Vec::new() };
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        crate::ws::accept_for(key.as_bytes())
    );
    conn.sock
        .write_all(answer.as_bytes())
        .map_err(|e| e.to_string())?;
    Ok(0)
}
