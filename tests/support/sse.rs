//! An EventSource client over a plain `TcpStream`: sends the request, checks the response
//! head, undoes chunked transfer coding (RFC 9112 §7.1) incrementally, and feeds the body
//! to the WHATWG parser, as a browser would.
//!
//! Owns: the connection, the decoded body bytes (kept for tests that judge the exact
//! encoding), and the events parsed but not yet taken.
//!
//! Must never: block without a deadline, or accept a malformed chunk: a framing slip is a
//! test failure, not something to read around.
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::http::{End, HttpConn, Response};
use crate::whatwg::{Event, EventStreamParser};

/// The state of a chunked body decoder (RFC 9112 §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line.
    Size,
    /// Inside chunk data, this many bytes left.
    Data(usize),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last (zero) chunk: reading trailer lines up to an empty one.
    Trailer,
    /// The body is complete.
    Done,
}

/// An incremental decoder of chunked transfer coding that accepts any split of its input.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: Chunk,
    line: Vec<u8>,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: Chunk::Size,
            line: Vec::new(),
        }
    }
}

impl ChunkedDecoder {
    /// Decodes `input`, appending chunk data to `out`.
    ///
    /// # Errors
    ///
    /// A description of the first framing error; the decoder is unusable after it.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        while !input.is_empty() {
            match self.state {
                Chunk::Data(left) => {
                    let n = left.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if n == left {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - n)
                    };
                }
                Chunk::Done => return Err(format!("{} bytes after the last chunk", input.len())),
                Chunk::Size | Chunk::DataEnd | Chunk::Trailer => {
                    let Some(at) = input.iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(input);
                        return self.check_line_len();
                    };
                    self.line.extend_from_slice(&input[..=at]);
                    input = &input[at + 1..];
                    let line = std::mem::take(&mut self.line);
                    self.end_line(&line)?;
                }
            }
        }
        Ok(())
    }

    /// Whether the last chunk and the trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == Chunk::Done
    }

    fn check_line_len(&self) -> Result<(), String> {
        if self.line.len() > 1024 {
            return Err(format!(
                "chunk line over 1024 bytes: {:?}",
                String::from_utf8_lossy(&self.line)
            ));
        }
        Ok(())
    }

    fn end_line(&mut self, line: &[u8]) -> Result<(), String> {
        let text = line.strip_suffix(b"\r\n").ok_or_else(|| {
            format!(
                "chunk line not ended by CRLF: {:?}",
                String::from_utf8_lossy(line)
            )
        })?;
        self.state = match self.state {
            Chunk::DataEnd if text.is_empty() => Chunk::Size,
            Chunk::DataEnd => {
                return Err(format!(
                    "chunk data longer than its size: {:?}",
                    String::from_utf8_lossy(line)
                ))
            }
            Chunk::Trailer if text.is_empty() => Chunk::Done,
            Chunk::Trailer => Chunk::Trailer,
            Chunk::Size => match parse_chunk_size(text)? {
                0 => Chunk::Trailer,
                size => Chunk::Data(size),
            },
            Chunk::Data(_) | Chunk::Done => unreachable!("no lines in these states"),
        };
        Ok(())
    }
}

/// `chunk-size [ chunk-ext ]`: hex digits, then optionally `;` and extensions.
fn parse_chunk_size(text: &[u8]) -> Result<usize, String> {
    let digits = text.split(|&b| b == b';').next().unwrap_or_default();
    let digits = std::str::from_utf8(digits).map_err(|_| format!("chunk size not ASCII: {text:?}"))?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("bad chunk size line {:?}", String::from_utf8_lossy(text)));
    }
    usize::from_str_radix(digits, 16).map_err(|e| format!("chunk size {digits:?}: {e}"))
}

/// How the response body is delimited.
enum Framing {
    Chunked(ChunkedDecoder),
    Length(usize),
    UntilClose,
}

/// One EventSource connection.
pub struct SseClient {
    conn: HttpConn,
    /// The response head.
    pub response: Response,
    framing: Framing,
    body: Vec<u8>,
    parser: EventStreamParser,
    events: VecDeque<Event>,
    ended: bool,
}

impl SseClient {
    /// Opens `GET target HTTP/1.1` with a `Host` and `Accept: text/event-stream` field and
    /// `headers`, and reads the response head (any status).
    ///
    /// # Panics
    ///
    /// If no response head arrives within [`crate::WAIT`].
    pub fn open(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> SseClient {
        let mut request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        SseClient::open_raw(addr, request.as_bytes())
    }

    /// Sends `request` as is on a new connection and reads the response head.
    ///
    /// # Panics
    ///
    /// If no response head arrives within [`crate::WAIT`].
    pub fn open_raw(addr: SocketAddr, request: &[u8]) -> SseClient {
        let mut conn = HttpConn::connect(addr);
        conn.send(request)
            .unwrap_or_else(|e| panic!("send {}: {e}", crate::http::shorten(request)));
        let response = conn
            .read_head(crate::WAIT)
            .unwrap_or_else(|end| panic!("no response head ({end:?}) to {}", crate::http::shorten(request)));
        SseClient::from_conn(conn, response)
    }

    /// Continues on `conn`, whose response head has been read, decoding the body.
    ///
    /// # Panics
    ///
    /// If the bytes already read after the head are not valid chunked coding.
    pub fn from_conn(mut conn: HttpConn, response: Response) -> SseClient {
        let chunked = response
            .header("Transfer-Encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let framing = match (chunked, response.content_length()) {
            (true, _) => Framing::Chunked(ChunkedDecoder::default()),
            (false, Some(len)) => Framing::Length(len),
            (false, None) => Framing::UntilClose,
        };
        let early = conn.take_buffered();
        let mut client = SseClient {
            conn,
            response,
            framing,
            body: Vec::new(),
            parser: EventStreamParser::new(),
            events: VecDeque::new(),
            ended: false,
        };
        client.decode(&early);
        client
    }

    /// Subscribes to `topics` and checks the response is an event stream.
    ///
    /// # Panics
    ///
    /// If the status is not 200 or the `Content-Type` not `text/event-stream`.
    pub fn subscribe(addr: SocketAddr, topics: &[&str]) -> SseClient {
        SseClient::subscribe_with(addr, topics, &[])
    }

    /// [`SseClient::subscribe`] with extra request header fields, e.g. `Last-Event-ID`.
    ///
    /// # Panics
    ///
    /// If the status is not 200 or the `Content-Type` not `text/event-stream`.
    pub fn subscribe_with(addr: SocketAddr, topics: &[&str], headers: &[(&str, &str)]) -> SseClient {
        let query: Vec<String> = topics.iter().map(|t| format!("topic={t}")).collect();
        let client = SseClient::open(addr, &format!("/sse?{}", query.join("&")), headers);
        client.assert_stream();
        client
    }

    /// Asserts the response is a 200 event stream.
    ///
    /// # Panics
    ///
    /// If it is not.
    pub fn assert_stream(&self) {
        let r = &self.response;
        assert_eq!(r.status, 200, "not an event stream: {r:?}");
        assert_eq!(r.header("Content-Type"), Some("text/event-stream"), "{r:?}");
    }

    /// The loop serving this stream, from `X-Ringcast-Loop`.
    ///
    /// # Panics
    ///
    /// If the header is missing or not a number.
    pub fn loop_index(&self) -> usize {
        let value = self.response.header("X-Ringcast-Loop");
        value
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("X-Ringcast-Loop {value:?} in {:?}", self.response))
    }

    /// The next event, reading until one is dispatched.
    ///
    /// # Errors
    ///
    /// [`End::TimedOut`] if none is dispatched within `timeout`, [`End::Closed`] if the
    /// stream ends first.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Event, End> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(event);
            }
            if self.ended {
                return Err(End::Closed);
            }
            self.read_some(deadline)?;
        }
    }

    /// The next event, which must come within [`crate::WAIT`].
    ///
    /// # Panics
    ///
    /// If it does not.
    pub fn expect_event(&mut self) -> Event {
        self.next_event(crate::WAIT)
            .unwrap_or_else(|end| panic!("no event ({end:?}); body so far: {}", self.body_tail()))
    }

    /// The next `n` events, which must come within `timeout` in all.
    ///
    /// # Panics
    ///
    /// If fewer arrive; the message lists those that did.
    pub fn events_until(&mut self, n: usize, timeout: Duration) -> Vec<Event> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                Ok(event) => got.push(event),
                Err(end) => panic!("{end:?} after {} of {n} events: {got:?}", got.len()),
            }
        }
        got
    }

    /// Asserts that no event is dispatched within `quiet`.
    ///
    /// # Panics
    ///
    /// If one is, or the stream ends.
    pub fn expect_no_event(&mut self, quiet: Duration) {
        match self.next_event(quiet) {
            Err(End::TimedOut) => {}
            Err(End::Closed) => panic!("stream closed; body: {}", self.body_tail()),
            Ok(event) => panic!("unexpected event {event:?}"),
        }
    }

    /// Reads until the server closes the stream, parsing what arrives.
    /// Returns whether it closed within `timeout`.
    pub fn closes_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.ended {
            if let Err(end) = self.read_some(deadline) {
                return end == End::Closed;
            }
        }
        true
    }

    /// Reads until the decoded body holds at least `len` bytes. Returns whether it did
    /// within `timeout` (events dispatched meanwhile are kept for [`Self::next_event`]).
    pub fn read_body_len(&mut self, len: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.body.len() < len && !self.ended {
            if self.read_some(deadline).is_err() {
                break;
            }
        }
        self.body.len() >= len
    }

    /// The body decoded so far (the SSE bytes, without transfer coding).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The parser, for the `retry` value and the last event id.
    pub fn parser(&self) -> &EventStreamParser {
        &self.parser
    }

    /// The last event ID a browser would send on reconnection.
    pub fn last_event_id(&self) -> String {
        self.parser.last_event_id().to_owned()
    }

    fn read_some(&mut self, deadline: Instant) -> Result<(), End> {
        match self.conn.fill(deadline) {
            Ok(()) => {
                let bytes = self.conn.take_buffered();
                self.decode(&bytes);
                Ok(())
            }
            Err(End::Closed) => {
                self.ended = true;
                Ok(())
            }
            Err(End::TimedOut) => Err(End::TimedOut),
        }
    }

    fn decode(&mut self, bytes: &[u8]) {
        let start = self.body.len();
        match &mut self.framing {
            Framing::Chunked(decoder) => {
                if let Err(e) = decoder.feed(bytes, &mut self.body) {
                    panic!("bad chunked coding: {e}; body so far: {}", self.body_tail());
                }
                self.ended |= decoder.is_done();
            }
            Framing::Length(left) => {
                assert!(
                    bytes.len() <= *left,
                    "{} bytes past Content-Length",
                    bytes.len() - *left
                );
                *left -= bytes.len();
                self.body.extend_from_slice(bytes);
                self.ended |= *left == 0;
            }
            Framing::UntilClose => self.body.extend_from_slice(bytes),
        }
        let events = self.parser.feed(&self.body[start..]);
        self.events.extend(events);
    }

    /// The last 300 bytes of the body, for failure messages.
    fn body_tail(&self) -> String {
        let from = self.body.len().saturating_sub(300);
        format!("{:?}", String::from_utf8_lossy(&self.body[from..]))
    }
}
