//! Clients of the transports other than SSE, for the integration tests: long-polling over
//! raw HTTP/1.1 (`/poll`), a JSON reader for its bodies and for NDJSON lines, and child
//! processes whose stdout lines a test reads: `curl -sN` on `/stream`, and a Python
//! `websockets` client on `/ws`.
//!
//! Owns: the poll connection and the bytes read past the last response; the child
//! processes, and the threads draining their pipes.
//!
//! Must never: wait without a deadline, signal a process it did not start, or read a
//! body leniently: the JSON reader follows RFC 8259 (no trailing commas, no raw control
//! characters in strings, nothing after the value) so that a malformed answer fails a test.
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use crate::http::{End, HttpConn, Response};
use crate::StderrLog;

/// A JSON value (RFC 8259). Objects keep their members in the order sent.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number.
    Num(f64),
    /// A string, unescaped.
    Str(String),
    /// An array.
    Arr(Vec<Json>),
    /// An object: names and values in order.
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// The value of member `name`, if this is an object that has one.
    pub fn get(&self, name: &str) -> Option<&Json> {
        match self {
            Json::Obj(members) => members.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string member `name` of this object, or why it is not one.
    ///
    /// # Errors
    ///
    /// If there is no such member or it is not a string.
    pub fn string_field(&self, name: &str) -> Result<String, String> {
        self.get(name)
            .and_then(Json::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("{name} is not a string in {self:?}"))
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The member names, if this is an object.
    pub fn names(&self) -> Vec<&str> {
        match self {
            Json::Obj(members) => members.iter().map(|(n, _)| n.as_str()).collect(),
            _ => Vec::new(),
        }
    }
}

/// Parses one JSON text.
///
/// # Errors
///
/// A description of the first deviation from RFC 8259, a repeated member name, or
/// nesting deeper than 32.
pub fn parse_json(text: &str) -> Result<Json, String> {
    let mut p = JsonParser { rest: text, depth: 0 };
    let value = p.value()?;
    p.skip_ws();
    if !p.rest.is_empty() {
        return Err(format!("text after the value: {:?}", p.rest));
    }
    Ok(value)
}

struct JsonParser<'a> {
    rest: &'a str,
    depth: usize,
}

impl JsonParser<'_> {
    fn skip_ws(&mut self) {
        self.rest = self.rest.trim_start_matches([' ', '\t', '\n', '\r']);
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_ws();
        match self.rest.strip_prefix(token) {
            Some(after) => {
                self.rest = after;
                true
            }
            None => false,
        }
    }

    fn expect(&mut self, token: &str) -> Result<(), String> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(format!("expected {token:?} at {:?}", short(self.rest)))
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.skip_ws();
        if self.eat("null") {
            return Ok(Json::Null);
        }
        if self.eat("true") {
            return Ok(Json::Bool(true));
        }
        if self.eat("false") {
            return Ok(Json::Bool(false));
        }
        match self.rest.chars().next() {
            Some('"') => self.string().map(Json::Str),
            Some('[') | Some('{') => {
                self.depth += 1;
                if self.depth > 32 {
                    return Err("nesting deeper than 32".to_owned());
                }
                let value = if self.rest.starts_with('[') {
                    self.array()
                } else {
                    self.object()
                };
                self.depth -= 1;
                value
            }
            Some('-' | '0'..='9') => self.number(),
            _ => Err(format!("expected a value at {:?}", short(self.rest))),
        }
    }

    fn array(&mut self) -> Result<Json, String> {
        self.expect("[")?;
        let mut items = Vec::new();
        if self.eat("]") {
            return Ok(Json::Arr(items));
        }
        loop {
            items.push(self.value()?);
            if self.eat("]") {
                return Ok(Json::Arr(items));
            }
            self.expect(",")?;
        }
    }

    fn object(&mut self) -> Result<Json, String> {
        self.expect("{")?;
        let mut members: Vec<(String, Json)> = Vec::new();
        if self.eat("}") {
            return Ok(Json::Obj(members));
        }
        loop {
            self.skip_ws();
            let name = self.string()?;
            if members.iter().any(|(n, _)| *n == name) {
                return Err(format!("member {name:?} repeated"));
            }
            self.expect(":")?;
            members.push((name, self.value()?));
            if self.eat("}") {
                return Ok(Json::Obj(members));
            }
            self.expect(",")?;
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?` (RFC 8259 §6).
    fn number(&mut self) -> Result<Json, String> {
        let bytes = self.rest.as_bytes();
        let digits_from = |at: usize| bytes[at..].iter().take_while(|b| b.is_ascii_digit()).count();
        let mut end = usize::from(bytes.first() == Some(&b'-'));
        let int = digits_from(end);
        if int == 0 || (int > 1 && bytes[end] == b'0') {
            return Err(format!("bad number at {:?}", short(self.rest)));
        }
        end += int;
        if bytes.get(end) == Some(&b'.') {
            let frac = digits_from(end + 1);
            if frac == 0 {
                return Err(format!("bad fraction at {:?}", short(self.rest)));
            }
            end += 1 + frac;
        }
        if matches!(bytes.get(end), Some(b'e' | b'E')) {
            end += 1;
            if matches!(bytes.get(end), Some(b'+' | b'-')) {
                end += 1;
            }
            let exp = digits_from(end);
            if exp == 0 {
                return Err(format!("bad exponent at {:?}", short(self.rest)));
            }
            end += exp;
        }
        let (number, rest) = self.rest.split_at(end);
        self.rest = rest;
        number
            .parse()
            .map(Json::Num)
            .map_err(|e| format!("number {number:?}: {e}"))
    }

    /// `"` chars with escapes (RFC 8259 §7) `"`.
    fn string(&mut self) -> Result<String, String> {
        let Some(body) = self.rest.strip_prefix('"') else {
            return Err(format!("expected a string at {:?}", short(self.rest)));
        };
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((at, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &body[at + 1..];
                    return Ok(out);
                }
                '\\' => {
                    let (_, e) = chars.next().ok_or("unterminated escape")?;
                    out.push(match e {
                        '"' | '\\' | '/' => e,
                        'b' => '\u{8}',
                        'f' => '\u{c}',
                        'n' => '\n',
                        'r' => '\r',
                        't' => '\t',
                        'u' => crate::json::unicode_escape(&mut chars)?,
                        _ => return Err(format!("bad escape \\{e}")),
                    });
                }
                c if u32::from(c) < 0x20 => return Err(format!("raw control character {c:?} in a string")),
                c => out.push(c),
            }
        }
        Err("unterminated string".to_owned())
    }
}

fn short(text: &str) -> &str {
    let end = text.char_indices().nth(40).map_or(text.len(), |(at, _)| at);
    &text[..end]
}

/// One event as the JSON transports carry it: `{"id":..,"topic":..,"event":..,"data":..}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireEvent {
    /// The event id, `<epoch>-<seq>`.
    pub id: String,
    /// The topic it was published on.
    pub topic: String,
    /// The event name, `None` for `null` (published without `event=`).
    pub event: Option<String>,
    /// The payload.
    pub data: String,
}

impl WireEvent {
    /// The event a subscriber of the JSON transports expects for a publish.
    pub fn new(id: &str, topic: &str, event: Option<&str>, data: &str) -> WireEvent {
        WireEvent {
            id: id.to_owned(),
            topic: topic.to_owned(),
            event: event.map(str::to_owned),
            data: data.to_owned(),
        }
    }

    /// Reads an event object: exactly the members `id`, `topic`, `event` and `data`, in
    /// that order, all strings but `event`, which may be `null`.
    ///
    /// # Errors
    ///
    /// A description of the first deviation.
    pub fn from_json(value: &Json) -> Result<WireEvent, String> {
        if value.names() != ["id", "topic", "event", "data"] {
            return Err(format!("not an event object (id, topic, event, data): {value:?}"));
        }
        let event = match value.get("event") {
            Some(Json::Null) => None,
            Some(Json::Str(name)) => Some(name.clone()),
            other => return Err(format!("event is {other:?}, neither null nor a string")),
        };
        Ok(WireEvent {
            id: value.string_field("id")?,
            topic: value.string_field("topic")?,
            event,
            data: value.string_field("data")?,
        })
    }

    /// Parses one line of JSON as an event.
    ///
    /// # Panics
    ///
    /// If it is not one.
    pub fn from_line(line: &str) -> WireEvent {
        let value = parse_json(line).unwrap_or_else(|e| panic!("line {line:?} is not JSON: {e}"));
        WireEvent::from_json(&value).unwrap_or_else(|e| panic!("line {line:?}: {e}"))
    }
}

/// The `reset` member of a poll answer (and the `data` of a `ringcast.reset` line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reset {
    /// `unknown-epoch`, `malformed-id` or `expired`.
    pub reason: String,
    /// The cursor the client sent.
    pub last_event_id: String,
    /// The oldest event retained, `None` for `null`.
    pub oldest_id: Option<String>,
}

impl Reset {
    /// Reads `{"reason":..,"last_event_id":..,"oldest_id":..|null}`.
    ///
    /// # Errors
    ///
    /// A description of the first deviation.
    pub fn from_json(value: &Json) -> Result<Reset, String> {
        if value.names() != ["reason", "last_event_id", "oldest_id"] {
            return Err(format!(
                "not a reset object (reason, last_event_id, oldest_id): {value:?}"
            ));
        }
        let oldest_id = match value.get("oldest_id") {
            Some(Json::Null) => None,
            Some(Json::Str(id)) => Some(id.clone()),
            other => return Err(format!("oldest_id is {other:?}, neither null nor a string")),
        };
        Ok(Reset {
            reason: value.string_field("reason")?,
            last_event_id: value.string_field("last_event_id")?,
            oldest_id,
        })
    }
}

/// One answer to `GET /poll`, checked and parsed.
#[derive(Clone, Debug)]
pub struct PollAnswer {
    /// The response head.
    pub response: Response,
    /// The body as sent.
    pub body: String,
    /// The events, in the order sent.
    pub events: Vec<WireEvent>,
    /// The cursor to pass as `after` next time.
    pub next: String,
    /// Present when the cursor could not be honoured.
    pub reset: Option<Reset>,
    /// From the request's first byte written to the body's last byte read.
    pub elapsed: Duration,
}

impl PollAnswer {
    /// The event ids, in order.
    pub fn ids(&self) -> Vec<&str> {
        self.events.iter().map(|e| e.id.as_str()).collect()
    }

    /// Checks the head (200, `application/json`) and parses the body: an object of
    /// `events` (event objects), `next` (a string) and optionally `reset`, nothing else.
    ///
    /// # Panics
    ///
    /// If the answer deviates from that.
    pub fn parse(response: Response, body: &[u8], elapsed: Duration) -> PollAnswer {
        let body =
            String::from_utf8(body.to_vec()).unwrap_or_else(|_| panic!("poll body not UTF-8: {body:?}"));
        assert_eq!(response.status, 200, "poll answered {response:?} {body:?}");
        assert_eq!(
            response.header("Content-Type"),
            Some("application/json"),
            "{response:?}"
        );
        let json = parse_json(&body).unwrap_or_else(|e| panic!("poll body {body:?} is not JSON: {e}"));
        let names = json.names();
        assert!(
            names == ["events", "next"] || names == ["events", "next", "reset"],
            "poll body members {names:?}, want events, next[, reset]: {body}"
        );
        let Some(Json::Arr(items)) = json.get("events") else {
            panic!("events is not an array: {body}");
        };
        let events = items
            .iter()
            .map(|item| WireEvent::from_json(item).unwrap_or_else(|e| panic!("{e}; body {body}")))
            .collect();
        let next = json
            .get("next")
            .and_then(Json::as_str)
            .unwrap_or_else(|| panic!("next is not a string: {body}"))
            .to_owned();
        crate::seq_of(&next);
        let reset = json
            .get("reset")
            .map(|r| Reset::from_json(r).unwrap_or_else(|e| panic!("{e}; body {body}")));
        PollAnswer {
            response,
            body,
            events,
            next,
            reset,
            elapsed,
        }
    }
}

/// A poll client on one connection, which it keeps alive across polls.
pub struct PollClient {
    conn: HttpConn,
    addr: SocketAddr,
}

impl PollClient {
    /// Connects to `addr`.
    ///
    /// # Panics
    ///
    /// If the connection fails.
    pub fn connect(addr: SocketAddr) -> PollClient {
        PollClient {
            conn: HttpConn::connect(addr),
            addr,
        }
    }

    /// Sends `GET /poll?<query>` with `headers` and reads the answer, which must come
    /// within `timeout`.
    ///
    /// # Panics
    ///
    /// If no complete answer comes in time, or it is not a well-formed poll answer.
    pub fn poll_with(&mut self, query: &str, headers: &[(&str, &str)], timeout: Duration) -> PollAnswer {
        let mut request = format!("GET /poll?{query} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let start = Instant::now();
        self.conn
            .send(request.as_bytes())
            .unwrap_or_else(|e| panic!("send GET /poll?{query}: {e}"));
        let (response, body) = self
            .conn
            .read_response(timeout)
            .unwrap_or_else(|end| panic!("no answer ({end:?}) to GET /poll?{query} within {timeout:?}"));
        PollAnswer::parse(response, &body, start.elapsed())
    }

    /// [`PollClient::poll_with`] without extra header fields, within [`crate::WAIT`].
    ///
    /// # Panics
    ///
    /// As [`PollClient::poll_with`].
    pub fn poll(&mut self, query: &str) -> PollAnswer {
        self.poll_with(query, &[], crate::WAIT)
    }

    /// The connection, e.g. to check that the server keeps it open.
    pub fn conn(&mut self) -> &mut HttpConn {
        &mut self.conn
    }
}

/// One poll on a new connection, answered within [`crate::WAIT`].
///
/// # Panics
///
/// As [`PollClient::poll_with`].
pub fn poll(addr: SocketAddr, query: &str) -> PollAnswer {
    PollClient::connect(addr).poll(query)
}

/// A child process whose stdout is read line by line by a thread; its stderr is kept for
/// failure messages. Killed on drop if still running.
pub struct LineChild {
    what: String,
    child: Child,
    lines: Receiver<String>,
    stderr: StderrLog,
    seen: Vec<String>,
}

impl LineChild {
    /// Starts `program args`.
    ///
    /// # Panics
    ///
    /// If it cannot be started.
    pub fn spawn(program: &str, args: &[&str]) -> LineChild {
        let what = format!("{program} {}", args.join(" "));
        let mut child = Command::new(program)
            .args(args)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let (tx, lines) = mpsc::channel();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        // Both readers end at EOF, which the child's exit (or kill) brings.
        thread::spawn(move || loop {
            let mut line = Vec::new();
            match stdout.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    // Only the LF goes: a CR before it is the sender's and stays visible.
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    if tx.send(String::from_utf8_lossy(&line).into_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        let stderr = StderrLog::drain(child.stderr.take().expect("piped stderr"));
        LineChild {
            what,
            child,
            lines,
            stderr,
            seen: Vec::new(),
        }
    }

    /// The next stdout line without its LF.
    ///
    /// # Errors
    ///
    /// [`End::TimedOut`] if none comes within `timeout`, [`End::Closed`] if stdout ended.
    pub fn next_line(&mut self, timeout: Duration) -> Result<String, End> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => {
                self.seen.push(line.clone());
                Ok(line)
            }
            Err(RecvTimeoutError::Timeout) => Err(End::TimedOut),
            Err(RecvTimeoutError::Disconnected) => Err(End::Closed),
        }
    }

    /// The next stdout line, which must come within [`crate::WAIT`].
    ///
    /// # Panics
    ///
    /// If it does not.
    pub fn expect_line(&mut self) -> String {
        self.next_line(crate::WAIT)
            .unwrap_or_else(|end| panic!("no line ({end:?}) from {}; {}", self.what, self.context()))
    }

    /// Waits for the process to exit, killing it if it still runs after `timeout`.
    /// Returns its status, or `None` if it had to be killed.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on a child") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the process (it is this test's own child, not yet reaped) and reaps it.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// The command, the lines read so far and its stderr, for failure messages.
    pub fn context(&self) -> String {
        format!(
            "{}: its lines so far:\n{}\nits stderr:\n{}",
            self.what,
            self.seen.join("\n"),
            self.stderr.text()
        )
    }
}

impl Drop for LineChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `curl -sN` on `http://<addr><target>`, printing the response head (`-i`) and then the
/// body as it arrives; it gives up after `max_secs`.
pub fn curl_stream(addr: SocketAddr, target: &str, max_secs: u32) -> LineChild {
    let url = format!("http://{addr}{target}");
    LineChild::spawn("curl", &["-sSNi", "--max-time", &max_secs.to_string(), &url])
}

/// Reads `curl -i`'s response head lines (CRLF-ended) up to the blank line. curl 7.x
/// holds the head in its stdout buffer until the first body bytes flush it, so this
/// returns only once the body has begun.
///
/// # Panics
///
/// If the head does not come within [`crate::WAIT`] or a line does not end in CRLF.
pub fn read_curl_head(curl: &mut LineChild) -> Response {
    let mut head = Vec::new();
    loop {
        let line = curl.expect_line();
        let line = line
            .strip_suffix('\r')
            .unwrap_or_else(|| panic!("head line {line:?} not ended by CRLF; {}", curl.context()))
            .to_owned();
        if line.is_empty() {
            break;
        }
        head.push(line);
    }
    Response::parse(head.join("\r\n").as_bytes())
}

/// A `websockets` client: connects to its first argument, prints every text message on
/// its own line until it has the number of its second argument, then prints any that
/// comes within the milliseconds of its third, and closes. Messages are JSON with no raw
/// LF, so one line is one message.
const WS_SCRIPT: &str = r#"
import asyncio, sys, websockets
async def main(url, n, quiet_ms):
    async with websockets.connect(url, open_timeout=10, close_timeout=2) as ws:
        for _ in range(n):
            print(await asyncio.wait_for(ws.recv(), 10), flush=True)
        try:
            print(await asyncio.wait_for(ws.recv(), quiet_ms / 1000), flush=True)
        except asyncio.TimeoutError:
            pass
asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"#;

/// Runs a Python `websockets` client on `ws://<addr><target>` that reads `n` messages and
/// then watches `quiet` for one more; collect its lines with [`LineChild::next_line`].
pub fn python_ws(addr: SocketAddr, target: &str, n: usize, quiet: Duration) -> LineChild {
    let url = format!("ws://{addr}{target}");
    LineChild::spawn(
        "python3",
        &[
            "-c",
            WS_SCRIPT,
            &url,
            &n.to_string(),
            &quiet.as_millis().to_string(),
        ],
    )
}
