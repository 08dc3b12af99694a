//! Subscribers by the hundred for the backpressure tests: sockets with a receive buffer
//! chosen before connecting (a slow phone's small window), SSE and WebSocket streams
//! decoded incrementally without keeping the body (a fast reader may see hundreds of
//! MiB), the JSON of gap notices, and the engine's resident memory and the kernel's TCP
//! memory sampled while a test floods the engine.
//!
//! Owns: each stream's socket and decoder state; the sampler's thread.
//!
//! Must never: block without a deadline, keep a stream's bytes once they are parsed, or
//! be lenient about framing: a chunk, frame or notice out of shape fails the test.
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::http::{End, Response};
use crate::sse::ChunkedDecoder;
use crate::whatwg::EventStreamParser;

/// Bytes asked of one `read`.
const READ_CHUNK: usize = 64 * 1024;
/// Longest response head accepted.
const HEAD_MAX: usize = 16 * 1024;
/// Largest server WebSocket frame accepted (an event of 1 MiB in its JSON envelope).
const WS_FRAME_MAX: usize = 4 << 20;

/// Connects to `addr` (IPv4) from a socket whose `SO_RCVBUF` is set to `rcvbuf` before
/// the handshake, so the window it advertises stays that small. `None` keeps the
/// kernel's autotuned default.
///
/// # Panics
///
/// If `addr` is not IPv4, or a socket call fails.
pub fn connect_with_rcvbuf(addr: SocketAddr, rcvbuf: Option<u32>) -> TcpStream {
    let SocketAddr::V4(v4) = addr else {
        panic!("connect_with_rcvbuf: {addr} is not IPv4");
    };
    let Some(rcvbuf) = rcvbuf else {
        return TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    };
    // The support crate has no libc dependency (dev-dependencies do not reach a
    // library), so the three calls are declared here; std links libc already. The
    // constants are Linux's, the same on every architecture Linux has.
    extern "C" {
        fn socket(domain: i32, ty: i32, protocol: i32) -> i32;
        fn setsockopt(fd: i32, level: i32, name: i32, value: *const u8, len: u32) -> i32;
        fn connect(fd: i32, addr: *const u8, len: u32) -> i32;
    }
    const AF_INET: i32 = 2;
    const SOCK_STREAM: i32 = 1;
    const SOCK_CLOEXEC: i32 = 0o2_000_000;
    const SOL_SOCKET: i32 = 1;
    const SO_RCVBUF: i32 = 8;
    // struct sockaddr_in: family (host order), port and address (network order), padding.
    let mut sin = [0u8; 16];
    sin[..2].copy_from_slice(&(AF_INET as u16).to_ne_bytes());
    sin[2..4].copy_from_slice(&v4.port().to_be_bytes());
    sin[4..8].copy_from_slice(&v4.ip().octets());
    // SAFETY: socket(2) takes three integers and touches no memory of ours.
    let fd = unsafe { socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nothing else owns; the TcpStream closes it.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let value = i32::try_from(rcvbuf).expect("rcvbuf fits an int").to_ne_bytes();
    // SAFETY: `value` is a live 4-byte int for the call, and 4 is the length passed.
    let rc = unsafe { setsockopt(fd, SOL_SOCKET, SO_RCVBUF, value.as_ptr(), 4) };
    assert_eq!(rc, 0, "SO_RCVBUF {rcvbuf}: {}", io::Error::last_os_error());
    // SAFETY: `sin` is a live 16-byte sockaddr_in for the call, and 16 is the length passed.
    let rc = unsafe { connect(fd, sin.as_ptr(), 16) };
    assert_eq!(rc, 0, "connect {addr}: {}", io::Error::last_os_error());
    stream
}

/// What a stream delivered, in the order the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// An event: its id and payload.
    Event { id: String, data: String },
    /// A `ringcast.*` notice (`ringcast.gap`, `ringcast.slow`, ...): its name and its
    /// data, the JSON object as sent.
    Notice { name: String, data: String },
    /// A WebSocket close frame: its status code, if any.
    Close(Option<u16>),
}

/// The transport of a [`Stream`].
enum Decoder {
    /// SSE over HTTP/1.1 chunks, read by a WHATWG parser.
    Sse(ChunkedDecoder, EventStreamParser),
    /// WebSocket frames (`format=json`).
    Ws(Vec<u8>),
}

/// One subscriber connection: SSE or WebSocket, parsed as bytes arrive, never stored.
pub struct Stream {
    stream: TcpStream,
    decoder: Decoder,
    /// The response head.
    pub response: Response,
    /// Bytes of the body (SSE: decoded; WebSocket: framed) seen so far.
    pub body_bytes: u64,
    ended: bool,
    scratch: Vec<u8>,
}

impl Stream {
    /// Subscribes `stream` (already connected to `addr`) to `topics` over SSE and reads
    /// the response head.
    ///
    /// # Panics
    ///
    /// If the answer is not a chunked `200` event stream within [`crate::WAIT`].
    pub fn sse(stream: TcpStream, addr: SocketAddr, topics: &[&str]) -> Stream {
        let query: Vec<String> = topics.iter().map(|t| format!("topic={t}")).collect();
        let request = format!(
            "GET /sse?{} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n",
            query.join("&")
        );
        let decoder = Decoder::Sse(ChunkedDecoder::default(), EventStreamParser::new());
        let s = Stream::open(stream, request.as_bytes(), decoder);
        assert_eq!(s.response.status, 200, "not an event stream: {:?}", s.response);
        assert_eq!(
            s.response.header("Transfer-Encoding"),
            Some("chunked"),
            "{:?}",
            s.response
        );
        s
    }

    /// Subscribes `stream` (already connected to `addr`) to `topics` over a WebSocket
    /// (`format=json`) and reads the `101` head.
    ///
    /// # Panics
    ///
    /// If the answer is not `101 Switching Protocols` within [`crate::WAIT`].
    pub fn ws(stream: TcpStream, addr: SocketAddr, topics: &[&str]) -> Stream {
        let query: Vec<String> = topics.iter().map(|t| format!("topic={t}")).collect();
        // The sample key of RFC 6455 §1.3; the accept value is not what these tests judge.
        let request = format!(
            "GET /ws?{} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            query.join("&")
        );
        let s = Stream::open(stream, request.as_bytes(), Decoder::Ws(Vec::new()));
        assert_eq!(s.response.status, 101, "no upgrade: {:?}", s.response);
        s
    }

    fn open(mut stream: TcpStream, request: &[u8], decoder: Decoder) -> Stream {
        stream.set_nodelay(true).expect("TCP_NODELAY");
        stream
            .set_write_timeout(Some(crate::WAIT))
            .expect("write timeout");
        stream.write_all(request).expect("send the request");
        let deadline = Instant::now() + crate::WAIT;
        let mut buf = Vec::new();
        let at = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            assert!(buf.len() < HEAD_MAX, "response head over {HEAD_MAX} bytes");
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no response head within {:?}", crate::WAIT);
            stream.set_read_timeout(Some(left)).expect("read timeout");
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) => panic!(
                    "closed before a response head: {:?}",
                    String::from_utf8_lossy(&buf)
                ),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read the response head: {e}"),
            }
        };
        let response = Response::parse(&buf[..at]);
        let mut s = Stream {
            stream,
            decoder,
            response,
            body_bytes: 0,
            ended: false,
            scratch: vec![0; READ_CHUNK],
        };
        let early = buf.split_off(at + 4);
        let mut items = Vec::new();
        s.decode(&early, &mut items);
        assert!(items.is_empty(), "items before the first read: {items:?}");
        s
    }

    /// Whether the server ended the stream (EOF, a reset, or the last chunk).
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Reads once (waiting until `deadline` at most) and appends what the bytes
    /// completed to `items`.
    ///
    /// # Errors
    ///
    /// [`End::TimedOut`] if nothing arrived by `deadline`, [`End::Closed`] once the
    /// stream has ended.
    ///
    /// # Panics
    ///
    /// On a framing error, or a socket error other than a reset.
    pub fn read_items(&mut self, deadline: Instant, items: &mut Vec<Item>) -> Result<(), End> {
        if self.ended {
            return Err(End::Closed);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(End::TimedOut);
        }
        self.stream.set_read_timeout(Some(left)).expect("read timeout");
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = match self.stream.read(&mut scratch) {
            Ok(0) => {
                self.ended = true;
                Ok(())
            }
            Ok(n) => {
                self.decode(&scratch[..n], items);
                Ok(())
            }
            Err(e) if is_timeout(&e) => Err(End::TimedOut),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                self.ended = true;
                Ok(())
            }
            Err(e) => panic!("read a stream: {e}"),
        };
        self.scratch = scratch;
        result
    }

    /// Reads until the stream is quiet for `quiet` or ends, or `deadline` passes, and
    /// returns what arrived.
    pub fn read_until_quiet(&mut self, quiet: Duration, deadline: Instant) -> Vec<Item> {
        let mut items = Vec::new();
        loop {
            let until = deadline.min(Instant::now() + quiet);
            match self.read_items(until, &mut items) {
                Ok(()) => continue,
                Err(_) => return items,
            }
        }
    }

    fn decode(&mut self, bytes: &[u8], items: &mut Vec<Item>) {
        match &mut self.decoder {
            Decoder::Sse(chunks, parser) => {
                let mut body = Vec::with_capacity(bytes.len());
                if let Err(e) = chunks.feed(bytes, &mut body) {
                    panic!("bad chunked coding after {} body bytes: {e}", self.body_bytes);
                }
                self.ended |= chunks.is_done();
                self.body_bytes += body.len() as u64;
                for event in parser.feed(&body) {
                    items.push(match event.event.strip_prefix("ringcast.") {
                        Some(_) => Item::Notice {
                            name: event.event,
                            data: event.data,
                        },
                        None => Item::Event {
                            id: event.id,
                            data: event.data,
                        },
                    });
                }
            }
            Decoder::Ws(buf) => {
                buf.extend_from_slice(bytes);
                self.body_bytes += bytes.len() as u64;
                let mut at = 0;
                while let Some((opcode, payload, used)) = ws_frame(&buf[at..]) {
                    items.push(ws_item(opcode, payload));
                    at += used;
                }
                buf.drain(..at);
            }
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// One complete server frame at the start of `buf`: opcode, payload, bytes used.
///
/// # Panics
///
/// If the frame is masked, fragmented, has reserved bits, or is over [`WS_FRAME_MAX`]:
/// the engine sends none of those (RFC 6455 §5.1, §5.2).
fn ws_frame(buf: &[u8]) -> Option<(u8, &[u8], usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(
        buf[0] & 0xF0,
        0x80,
        "server frame not FIN or with RSV bits: {:#04x}",
        buf[0]
    );
    assert_eq!(buf[1] & 0x80, 0, "server frame masked (RFC 6455 §5.1)");
    let (len, head) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let len = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            (usize::try_from(len).expect("frame length fits usize"), 10)
        }
        126 | 127 => return None,
        len => (usize::from(len), 2),
    };
    assert!(len <= WS_FRAME_MAX, "server frame of {len} bytes");
    let end = head + len;
    (buf.len() >= end).then(|| (buf[0] & 0x0F, &buf[head..end], end))
}

/// A server frame as an [`Item`]: events and notices are JSON text frames.
fn ws_item(opcode: u8, payload: &[u8]) -> Item {
    match opcode {
        0x1 => {
            let text = std::str::from_utf8(payload).expect("a text frame is UTF-8");
            let fields = split_object(text).unwrap_or_else(|e| panic!("frame {text:?}: {e}"));
            let field = |name: &str| {
                fields
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| panic!("no {name:?} in frame {text:?}"))
            };
            let event = field("event");
            match json_string(&event) {
                Some(name) if name.starts_with("ringcast.") => Item::Notice {
                    name,
                    data: field("data"),
                },
                _ => Item::Event {
                    id: json_string(&field("id")).unwrap_or_else(|| panic!("id in {text:?}")),
                    data: json_string(&field("data")).unwrap_or_else(|| panic!("data in {text:?}")),
                },
            }
        }
        0x8 => Item::Close((payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))),
        other => panic!("unexpected server frame opcode {other:#x}"),
    }
}

/// The members of one JSON object, each value as its JSON text (a nested object stays
/// one value). Strings may hold escapes; nothing is unescaped here.
///
/// # Errors
///
/// A description of the first deviation from an object of that shape.
pub fn split_object(text: &str) -> Result<BTreeMap<String, String>, String> {
    let inner = text
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or("not an object")?;
    let mut members = BTreeMap::new();
    let mut rest = inner;
    while !rest.is_empty() {
        let (name, after) = json_token(rest)?;
        let name = json_string(name).ok_or_else(|| format!("member name {name:?}"))?;
        let after = after.strip_prefix(':').ok_or("no ':' after a name")?;
        let (value, after) = json_token(after)?;
        if members.insert(name.clone(), value.to_owned()).is_some() {
            return Err(format!("member {name:?} repeated"));
        }
        rest = match after.strip_prefix(',') {
            Some(more) if !more.is_empty() => more,
            Some(_) => return Err("trailing comma".into()),
            None if after.is_empty() => after,
            None => return Err(format!("junk {after:?}")),
        };
    }
    Ok(members)
}

/// The first JSON value of `text` (a string, a nested object, or a bare word such as a
/// number or `null`) and what follows it.
fn json_token(text: &str) -> Result<(&str, &str), String> {
    let bytes = text.as_bytes();
    let end = match bytes.first() {
        Some(b'"') => {
            let mut i = 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            if i >= bytes.len() {
                return Err("unterminated string".into());
            }
            i + 1
        }
        Some(b'{') => {
            let (mut depth, mut i, mut in_str) = (0usize, 0, false);
            loop {
                let Some(&b) = bytes.get(i) else {
                    return Err("unterminated object".into());
                };
                match (in_str, b) {
                    (true, b'\\') => i += 1,
                    (_, b'"') => in_str = !in_str,
                    (false, b'{') => depth += 1,
                    (false, b'}') => depth -= 1,
                    _ => {}
                }
                i += 1;
                if depth == 0 {
                    break i;
                }
            }
        }
        Some(_) => text.find([',', '}']).unwrap_or(text.len()),
        None => return Err("value missing".into()),
    };
    Ok(text.split_at(end))
}

/// The text of a JSON string token without escapes, or `None` if `token` is anything
/// else (a string with escapes included: the tests publish none).
pub fn json_string(token: &str) -> Option<String> {
    let inner = token.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains(['\\', '"'])).then(|| inner.to_owned())
}

/// The data of a `ringcast.gap` notice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    /// The topic, or `None` for a loss on the broadcast ring (`"topic":null`).
    pub topic: Option<String>,
    /// Events dropped (`None` when the engine cannot count them).
    pub dropped: Option<u64>,
    /// The first and last dropped ids.
    pub first_id: String,
    pub last_id: String,
}

impl Gap {
    /// Parses `{"topic":..,"dropped":N,"first_id":..,"last_id":..}`.
    ///
    /// # Panics
    ///
    /// If `data` has another shape.
    pub fn parse(data: &str) -> Gap {
        let members = split_object(data).unwrap_or_else(|e| panic!("gap notice {data:?}: {e}"));
        let names: Vec<&str> = members.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["dropped", "first_id", "last_id", "topic"],
            "gap notice members: {data:?}"
        );
        let string = |name: &str| {
            json_string(&members[name]).unwrap_or_else(|| panic!("{name} in gap notice {data:?}"))
        };
        let dropped = match members["dropped"].as_str() {
            "null" => None,
            n => Some(
                n.parse()
                    .unwrap_or_else(|e| panic!("dropped {n:?} in {data:?}: {e}")),
            ),
        };
        Gap {
            topic: (members["topic"] != "null").then(|| string("topic")),
            dropped,
            first_id: string("first_id"),
            last_id: string("last_id"),
        }
    }
}

/// A process's `VmRSS` in KiB.
///
/// # Panics
///
/// If `/proc/<pid>/status` cannot be read or has no `VmRSS` line.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// The kernel's TCP buffer memory, all sockets of the machine (`mem` of the `TCP:` line
/// of `/proc/net/sockstat`, in pages of 4 KiB), in KiB.
///
/// # Panics
///
/// If `/proc/net/sockstat` cannot be read or has no such field.
pub fn tcp_mem_kib() -> u64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").expect("read /proc/net/sockstat");
    let line = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .expect("a TCP: line in /proc/net/sockstat");
    let mut words = line.split_whitespace();
    let pages: u64 = words
        .by_ref()
        .skip_while(|&w| w != "mem")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no mem in {line:?}"));
    pages * 4
}

/// The largest values an [`RssSampler`] saw.
#[derive(Clone, Copy, Debug)]
pub struct Peaks {
    /// The process's largest `VmRSS`, KiB.
    pub rss_kib: u64,
    /// The machine's largest TCP buffer memory ([`tcp_mem_kib`]), KiB.
    pub tcp_kib: u64,
    /// Samples taken.
    pub samples: u64,
}

/// Samples a process's `VmRSS` and the kernel's TCP memory every `period` on a thread
/// until stopped, keeping the largest values.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peaks: Arc<[AtomicU64; 3]>,
    thread: Option<JoinHandle<()>>,
}

impl RssSampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32, period: Duration) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peaks = Arc::new([
            AtomicU64::new(rss_kib(pid)),
            AtomicU64::new(tcp_mem_kib()),
            AtomicU64::new(1),
        ]);
        let (s, p) = (Arc::clone(&stop), Arc::clone(&peaks));
        let thread = thread::spawn(move || {
            // Bounded by the owner: it sets `stop` before joining, and on drop.
            while !s.load(Ordering::Relaxed) {
                p[0].fetch_max(rss_kib(pid), Ordering::Relaxed);
                p[1].fetch_max(tcp_mem_kib(), Ordering::Relaxed);
                p[2].fetch_add(1, Ordering::Relaxed);
                thread::sleep(period);
            }
        });
        RssSampler {
            stop,
            peaks,
            thread: Some(thread),
        }
    }

    /// Stops sampling and returns the peaks.
    pub fn finish(mut self) -> Peaks {
        self.halt();
        Peaks {
            rss_kib: self.peaks[0].load(Ordering::Relaxed),
            tcp_kib: self.peaks[1].load(Ordering::Relaxed),
            samples: self.peaks[2].load(Ordering::Relaxed),
        }
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.halt();
    }
}
