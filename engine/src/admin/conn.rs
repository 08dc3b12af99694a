//! One admin connection, served on its own thread with blocking I/O: HTTP/1.1 keep-alive
//! (RFC 9112 §9.3), pipelined requests answered in order, and one deadline for each whole
//! request, head and body, so a client trickling bytes is cut however it paces them.
//!
//! Owns: the connection's read buffer (one request head, its body, and at most one read
//! past them), the request deadline and the idle timeout, the framing of answers
//! (`Content-Length`, `Connection`, no body for `HEAD`), and finding a request's
//! `Authorization` field for the routes to judge.
//!
//! Must never: wait on the client past a deadline, read a body without a
//! `Content-Length` (a chunked body would be taken for the next request), or buffer
//! more than a bounded amount ahead of the request being answered.
//!
//! ```text
//!   accept --first byte by the deadline--> Head --whole head--> Body --whole body--> Answer
//!     |                                     |                    |                     |
//!     +-- deadline: 408, close              +-- deadline: 408    +-- deadline: 408      |
//!                                           +-- bad head: 4xx    +-- too large: 413     |
//!   Idle <--keep-alive, nothing buffered-------------------------------------------------+
//!     +-- byte: Head (deadline from now)    +-- idle timeout: close
//! ```
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use crate::proto::http::{self, Method, Parsed};

/// Bytes asked of the kernel per read: also the most the buffer holds past the request
/// being answered (the start of the next pipelined ones).
const READ_CHUNK: usize = 16 << 10;

/// The most buffer capacity a connection keeps between requests.
const KEPT_CAPACITY_MAX: usize = 2 * READ_CHUNK;

/// Bytes of an oversized body read and discarded before answering 413, so that closing
/// does not reset the connection before the client reads the answer.
const DISCARD_MAX: u64 = 64 << 20;

/// After the last answer the connection is shut for writing and its input read and
/// discarded for at most this long and this many bytes, so that unread input does not
/// make the close a reset that destroys the answer (nginx's lingering close).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES_MAX: usize = 64 << 10;

/// The time limits and the body limit of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// From the first byte of a request (or the accept, for the first one) to its last
    /// body byte; past it the answer is 408 and the connection closes.
    pub request_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// The largest body read; a larger `Content-Length` is answered 413.
    pub body_max: usize,
}

/// A whole request, as the routes see it.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: Method,
    /// The target before `?`, not percent-decoded.
    pub path: &'a str,
    /// The target after `?`, or `""`.
    pub query: &'a str,
    /// The `Authorization` field(s) of the head.
    pub authorization: Authorization<'a>,
    /// The `Content-Type`'s media type, lower-cased, without parameters (`""`: none).
    pub media_type: &'a str,
    pub body: &'a [u8],
}

/// The `Authorization` fields of a request head (RFC 9110 §11.6.2 allows one).
#[derive(Debug, PartialEq, Eq)]
pub enum Authorization<'a> {
    Absent,
    /// The one field's value, as sent.
    One(&'a [u8]),
    /// More than one: ambiguous, so never taken for either.
    Several,
}

/// An answer; the connection adds `Content-Length` and `Connection`.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// More header fields, in order. Values never hold CR or LF.
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    /// A `text/plain` answer.
    pub fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// The same answer with one more header field.
    #[must_use]
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

/// What a request head said, copied out of the buffer so that the body can follow it.
struct Head {
    method: Method,
    path: String,
    query: String,
    minor_version: u8,
    keep_alive: bool,
    len: usize,
    body_len: usize,
    /// Where the `Authorization` value lies in the head, if it has exactly one.
    authorization: Field,
    media_type: String,
}

/// [`Authorization`] as a place in the buffer, which grows (and moves) as the body is read.
enum Field {
    Absent,
    One(std::ops::Range<usize>),
    Several,
}

/// Why a connection stops before a request is answered.
enum Stop {
    /// The client closed or the socket failed: nothing to answer.
    Closed,
    /// Answer this and close.
    Answer(Reply),
}

/// Serves requests on `stream` until either side closes it, a deadline passes or a
/// request cannot be framed; `accepted` starts the first request's deadline.
pub fn serve(
    mut stream: TcpStream,
    accepted: Instant,
    limits: &Limits,
    mut answer: impl FnMut(&Request<'_>) -> Reply,
) {
    // Answers are whole writes; Nagle would hold a pipelined one behind an ACK.
    let _ = stream.set_nodelay(true);
    if stream.set_write_timeout(Some(limits.request_timeout)).is_err() {
        return;
    }
    let mut buf = Vec::with_capacity(1024);
    let mut started = accepted;
    loop {
        let head = match read_request(
            &mut stream,
            &mut buf,
            started + limits.request_timeout,
            limits.body_max,
        ) {
            Ok(head) => head,
            Err(Stop::Closed) => return,
            Err(Stop::Answer(reply)) => {
                let _ = stream.write_all(&render(&reply, false, false, 1));
                return linger_close(stream);
            }
        };
        let end = head.len + head.body_len;
        let authorization = match &head.authorization {
            Field::Absent => Authorization::Absent,
            Field::One(range) => Authorization::One(&buf[range.clone()]),
            Field::Several => Authorization::Several,
        };
        let reply = answer(&Request {
            method: head.method,
            path: &head.path,
            query: &head.query,
            authorization,
            media_type: &head.media_type,
            body: &buf[head.len..end],
        });
        let bytes = render(
            &reply,
            head.method == Method::Head,
            head.keep_alive,
            head.minor_version,
        );
        buf.drain(..end);
        // A kept connection does not hold on to the memory of a large body.
        if buf.capacity() > KEPT_CAPACITY_MAX {
            buf.shrink_to(KEPT_CAPACITY_MAX);
        }
        if stream.write_all(&bytes).is_err() {
            return;
        }
        if !head.keep_alive {
            return linger_close(stream);
        }
        // The next request is already buffered (pipelined) or comes within the idle
        // timeout; its deadline runs from its first byte.
        if buf.is_empty() && fill(&mut stream, &mut buf, Instant::now() + limits.idle_timeout) != Fill::Data {
            return;
        }
        started = Instant::now();
    }
}

/// Reads one request head and its body into `buf` by `deadline`.
fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    body_max: usize,
) -> Result<Head, Stop> {
    let head = loop {
        match http::parse_request(buf) {
            Ok(Parsed::Complete(req)) => break req,
            Ok(Parsed::Partial) => {}
            Err(e) => return Err(Stop::Answer(Reply::text(e.status(), e.reason()))),
        }
        read_more(stream, buf, deadline)?;
    };
    let Some(length) = head.content_length.or((!head.has_body).then_some(0)) else {
        return Err(Stop::Answer(Reply::text(
            411,
            "send the request body with a Content-Length (chunked bodies are not accepted here)",
        )));
    };
    let len = head.head_len;
    if length > body_max as u64 {
        let already = (buf.len() - len) as u64;
        discard(stream, length.saturating_sub(already).min(DISCARD_MAX), deadline);
        let why = format!("payload of {length} bytes exceeds the limit of {body_max} bytes");
        return Err(Stop::Answer(super::json_error(413, &why)));
    }
    let head = Head {
        method: head.method,
        path: head.path.to_owned(),
        query: head.query.to_owned(),
        minor_version: head.minor_version,
        keep_alive: head.keep_alive,
        len,
        body_len: length as usize,
        authorization: authorization_field(&buf[..len]),
        media_type: media_type(head.content_type),
    };
    // One allocation for the whole body: its pages become resident only as bytes arrive.
    buf.reserve((head.len + head.body_len + READ_CHUNK).saturating_sub(buf.len()));
    while buf.len() < head.len + head.body_len {
        match read_more(stream, buf, deadline) {
            Err(Stop::Closed) => {
                return Err(Stop::Answer(super::json_error(
                    400,
                    "the body ended before Content-Length",
                )))
            }
            other => other?,
        }
    }
    Ok(head)
}

/// The media type of a `Content-Type` value (RFC 9110 §8.3.1: `type/subtype` before any
/// `;` parameters, case-insensitive), lower-cased; `""` when absent or not text.
fn media_type(value: Option<&[u8]>) -> String {
    let value = value.and_then(|v| std::str::from_utf8(v).ok()).unwrap_or("");
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.to_ascii_lowercase()
}

/// Finds the `Authorization` field(s) of `head`, a head [`http::parse_request`] accepted.
fn authorization_field(head: &[u8]) -> Field {
    let mut fields = [httparse::EMPTY_HEADER; http::HEADERS_MAX];
    let mut req = httparse::Request::new(&mut fields);
    // The same parser accepted this head whole already. The request parser keeps only
    // the first `Authorization`; this pass also finds a second, which must not let
    // either pass.
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return Field::Absent;
    }
    let mut found = req
        .headers
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("authorization"));
    match (found.next(), found.next()) {
        (None, _) => Field::Absent,
        (Some(field), None) => {
            // The value borrows from `head`: its offset is the distance between the two.
            let start = field.value.as_ptr() as usize - head.as_ptr() as usize;
            Field::One(start..start + field.value.len())
        }
        _ => Field::Several,
    }
}

/// [`fill`] as the request reader sees it: the deadline is a 408.
fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> Result<(), Stop> {
    match fill(stream, buf, deadline) {
        Fill::Data => Ok(()),
        Fill::Closed => Err(Stop::Closed),
        Fill::TimedOut => Err(Stop::Answer(Reply::text(
            408,
            "the request did not arrive whole in time (--request-timeout-ms)",
        ))),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Fill {
    Data,
    Closed,
    TimedOut,
}

/// Reads once into `buf`, waiting at most until `deadline`.
fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> Fill {
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // A zero timeout would mean no timeout at all.
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Fill::TimedOut;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Fill::Closed,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Fill::Data;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return Fill::Closed,
        }
    }
}

/// Reads and drops up to `left` bytes, by `deadline`.
fn discard(stream: &mut TcpStream, mut left: u64, deadline: Instant) {
    let mut sink = Vec::with_capacity(READ_CHUNK);
    while left > 0 && fill(stream, &mut sink, deadline) == Fill::Data {
        left = left.saturating_sub(sink.len() as u64);
        sink.clear();
    }
}

fn linger_close(mut stream: TcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut read = 0;
    let mut sink = Vec::with_capacity(READ_CHUNK);
    while read < LINGER_BYTES_MAX && fill(&mut stream, &mut sink, deadline) == Fill::Data {
        read += sink.len();
        sink.clear();
    }
}

/// The bytes of `reply` for a request that keeps the connection or not, from an
/// HTTP/1.`minor_version` client (1.0 needs `Connection: keep-alive` to keep it).
pub fn render(reply: &Reply, head_only: bool, keep_alive: bool, minor_version: u8) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        reply.status,
        http::status_text(reply.status),
        reply.content_type,
        reply.body.len()
    );
    match (keep_alive, minor_version) {
        (false, _) => out.push_str("Connection: close\r\n"),
        (true, 0) => out.push_str("Connection: keep-alive\r\n"),
        (true, _) => {}
    }
    for (name, value) in &reply.headers {
        assert!(
            !value.contains(['\r', '\n']),
            "header {name} value {value:?} contains CR or LF"
        );
        let _ = write!(out, "{name}: {value}\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if !head_only {
        out.extend_from_slice(reply.body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_frames_each_connection_choice() {
        let reply = Reply::text(503, "busy\n").with_header("Retry-After", "1");
        let head = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\n";
        assert_eq!(
            String::from_utf8(render(&reply, false, true, 1)).unwrap(),
            format!("{head}Retry-After: 1\r\n\r\nbusy\n")
        );
        assert_eq!(
            String::from_utf8(render(&reply, false, false, 1)).unwrap(),
            format!("{head}Connection: close\r\nRetry-After: 1\r\n\r\nbusy\n")
        );
        assert_eq!(
            String::from_utf8(render(&reply, false, true, 0)).unwrap(),
            format!("{head}Connection: keep-alive\r\nRetry-After: 1\r\n\r\nbusy\n")
        );
        // HEAD: the same head, Content-Length included, and no body (RFC 9110 §9.3.2).
        assert_eq!(
            String::from_utf8(render(&reply, true, true, 1)).unwrap(),
            format!("{head}Retry-After: 1\r\n\r\n")
        );
    }

    fn authorization_of(head: &[u8]) -> Authorization<'_> {
        match authorization_field(head) {
            Field::Absent => Authorization::Absent,
            Field::One(range) => Authorization::One(&head[range]),
            Field::Several => Authorization::Several,
        }
    }

    #[test]
    fn the_authorization_field_is_found_by_any_case() {
        let head = b"GET /stats HTTP/1.1\r\nHost: a\r\nauthorization:  Bearer t0k \r\nX: y\r\n\r\n";
        assert_eq!(authorization_of(head), Authorization::One(b"Bearer t0k"));
        let none = b"GET /stats HTTP/1.1\r\nHost: a\r\nX-Authorization: Bearer t\r\n\r\n";
        assert_eq!(authorization_of(none), Authorization::Absent);
        let two = b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer a\r\nAUTHORIZATION: Bearer b\r\n\r\n";
        assert_eq!(authorization_of(two), Authorization::Several);
    }

    #[test]
    #[should_panic(expected = "contains CR or LF")]
    fn render_refuses_header_injection() {
        let _ = render(
            &Reply::text(200, "").with_header("X", "a\r\nB: c"),
            false,
            true,
            1,
        );
    }
}
