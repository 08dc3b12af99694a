//! Raw HTTP/1.x over a `TcpStream`, as a test needs it: send exact bytes (whole, or one
//! byte at a time), read a response head, read a `Content-Length` body, notice the close.
//!
//! Owns: the connection and the bytes read past the last response.
//!
//! Must never: block without a deadline, or tidy up what the engine sent: heads are
//! parsed strictly (CRLF line ends, RFC 9112 §2.2) so that a sloppy byte fails a test.
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Largest response head accepted before the test fails.
const HEAD_MAX: usize = 64 * 1024;

/// A parsed response head.
#[derive(Clone, Debug)]
pub struct Response {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// The status code.
    pub status: u16,
    /// The reason phrase.
    pub reason: String,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
}

impl Response {
    /// Parses a head (status line and fields, without the blank line).
    ///
    /// # Panics
    ///
    /// If it is not a well-formed HTTP/1.x response head with CRLF line ends.
    pub fn parse(head: &[u8]) -> Response {
        let text =
            std::str::from_utf8(head).unwrap_or_else(|_| panic!("response head is not UTF-8: {head:?}"));
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_owned();
        assert!(
            version == "HTTP/1.1" || version == "HTTP/1.0",
            "bad status line {status_line:?} in {text:?}"
        );
        let status = parts
            .next()
            .filter(|code| code.len() == 3)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("bad status code in {status_line:?}"));
        let reason = parts.next().unwrap_or_default().to_owned();
        let headers = lines
            .map(|line| {
                assert!(
                    !line.contains(['\r', '\n']),
                    "bare CR or LF in header line {line:?} of {text:?}"
                );
                let (name, value) = line
                    .split_once(':')
                    .unwrap_or_else(|| panic!("header line without a colon: {line:?} in {text:?}"));
                assert!(
                    !name.is_empty() && !name.contains([' ', '\t']),
                    "bad header name {name:?} in {text:?}"
                );
                (name.to_owned(), value.trim_matches([' ', '\t']).to_owned())
            })
            .collect();
        Response {
            version,
            status,
            reason,
            headers,
        }
    }

    /// The value of the first field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// How many fields are named `name` (case-insensitive).
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    /// Whether the response says the server closes: `Connection: close`.
    pub fn closes(&self) -> bool {
        self.header("Connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }

    /// The `Content-Length`, if any.
    ///
    /// # Panics
    ///
    /// If it is present but not a number.
    pub fn content_length(&self) -> Option<usize> {
        self.header("Content-Length").map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("bad Content-Length {v:?} in {self:?}"))
        })
    }
}

/// What a read found instead of the bytes it wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Nothing arrived before the deadline.
    TimedOut,
    /// The server closed the connection (EOF or reset).
    Closed,
}

/// A client connection that has the bytes read but not yet consumed.
pub struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
    closed: bool,
}

impl HttpConn {
    /// Connects to `addr`.
    ///
    /// # Panics
    ///
    /// If the connection is refused or takes longer than [`crate::WAIT`].
    pub fn connect(addr: SocketAddr) -> HttpConn {
        let stream =
            TcpStream::connect_timeout(&addr, crate::WAIT).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        stream
            .set_write_timeout(Some(crate::WAIT))
            .expect("write timeout");
        HttpConn {
            stream,
            buf: Vec::new(),
            closed: false,
        }
    }

    /// Continues on a stream the caller connected itself, e.g. with socket options that
    /// must be set before the handshake (a small `SO_RCVBUF`).
    ///
    /// # Panics
    ///
    /// If the stream refuses `TCP_NODELAY` or a write timeout.
    pub fn from_stream(stream: TcpStream) -> HttpConn {
        stream.set_nodelay(true).expect("TCP_NODELAY");
        stream
            .set_write_timeout(Some(crate::WAIT))
            .expect("write timeout");
        HttpConn {
            stream,
            buf: Vec::new(),
            closed: false,
        }
    }

    /// Writes all of `bytes`.
    ///
    /// # Errors
    ///
    /// If the write fails, e.g. because the server already answered and closed.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Writes `bytes` one at a time, sleeping `pause` between them, so that the server
    /// sees the request split at every offset.
    ///
    /// # Errors
    ///
    /// If a write fails.
    pub fn send_bytewise(&mut self, bytes: &[u8], pause: Duration) -> io::Result<()> {
        for byte in bytes {
            self.stream.write_all(std::slice::from_ref(byte))?;
            std::thread::sleep(pause);
        }
        Ok(())
    }

    /// Reads one response: head and `Content-Length` body (or none, if it has no length).
    ///
    /// # Errors
    ///
    /// [`End`] if the connection closes or nothing complete arrives by `timeout`.
    pub fn read_response(&mut self, timeout: Duration) -> Result<(Response, Vec<u8>), End> {
        let deadline = Instant::now() + timeout;
        let response = self.read_head_by(deadline)?;
        let len = response.content_length().unwrap_or(0);
        while self.buf.len() < len {
            self.fill(deadline)?;
        }
        let body = self.buf.drain(..len).collect();
        Ok((response, body))
    }

    /// Reads one response head.
    ///
    /// # Errors
    ///
    /// [`End`] if the connection closes or the head is not complete by `timeout`.
    pub fn read_head(&mut self, timeout: Duration) -> Result<Response, End> {
        self.read_head_by(Instant::now() + timeout)
    }

    fn read_head_by(&mut self, deadline: Instant) -> Result<Response, End> {
        loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..at + 4).collect();
                return Ok(Response::parse(&head[..at]));
            }
            assert!(
                self.buf.len() < HEAD_MAX,
                "response head over {HEAD_MAX} bytes: {:?}",
                self.buf
            );
            self.fill(deadline)?;
        }
    }

    /// Waits for the server to close the connection, discarding what it sends meanwhile.
    /// Returns whether it closed by `timeout`.
    pub fn closes_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.buf.clear();
            match self.fill(deadline) {
                Ok(()) => continue,
                Err(End::Closed) => return true,
                Err(End::TimedOut) => return false,
            }
        }
    }

    /// The bytes read and not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Takes the bytes read and not yet consumed.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Reads once, appending to the buffer: at least one byte, or an [`End`].
    ///
    /// # Errors
    ///
    /// [`End::Closed`] at EOF or on a reset, [`End::TimedOut`] at `deadline`.
    pub fn fill(&mut self, deadline: Instant) -> Result<(), End> {
        if self.closed {
            return Err(End::Closed);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(End::TimedOut);
        }
        // A zero read timeout would mean "block forever"; the check above rules it out.
        self.stream.set_read_timeout(Some(left)).expect("read timeout");
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.closed = true;
                Err(End::Closed)
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                Err(End::TimedOut)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                ) =>
            {
                self.closed = true;
                Err(End::Closed)
            }
            Err(e) => panic!("read from the engine: {e}"),
        }
    }
}

/// Sends `request` on a new connection and reads one response with its body.
///
/// # Panics
///
/// If no complete response arrives within [`crate::WAIT`].
pub fn exchange(addr: SocketAddr, request: &[u8]) -> (Response, Vec<u8>, HttpConn) {
    let mut conn = HttpConn::connect(addr);
    // A write may fail when the server answered early and closed; the answer is what
    // the test judges, so the error is not.
    let _ = conn.send(request);
    let (response, body) = conn
        .read_response(crate::WAIT)
        .unwrap_or_else(|end| panic!("no response ({end:?}) to {:?}", shorten(request)));
    (response, body, conn)
}

/// A request for messages: at most 200 bytes of it, escaped.
pub fn shorten(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
    if bytes.len() > 200 {
        format!("{text:?}... ({} bytes)", bytes.len())
    } else {
        format!("{text:?}")
    }
}
