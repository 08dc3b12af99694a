//! WebSocket clients for the integration tests: a raw RFC 6455 client over a
//! `TcpStream` that can send what no real client would (unmasked frames, invalid UTF-8,
//! oversized messages) and never answers a ping on its own; and a runner for the Python
//! scripts in `tests/py/`, through which real clients (Python `websockets`, `kosoku`'s
//! Autobahn cases) talk to the engine.
//!
//! The raw handshake uses the sample key of RFC 6455 §1.3, whose accept value the RFC
//! prints, so the engine's `Sec-WebSocket-Accept` is checked against an oracle that owes
//! nothing to the engine's own SHA-1 code.
//!
//! Owns: the TCP connection of a raw client; the child process of a script, its pipes,
//! and the threads draining them.
//!
//! Must never: wait without a deadline, or signal a process it did not start.
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use crate::http::{End, HttpConn, Response};
use crate::json::{parse_flat_object, FlatObject};
use crate::StderrLog;

/// The `Sec-WebSocket-Key` of RFC 6455 §1.3.
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// The `Sec-WebSocket-Accept` RFC 6455 §1.3 gives for [`SAMPLE_KEY`].
pub const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Opcodes (RFC 6455 §5.2).
pub mod opcode {
    /// A continuation frame.
    pub const CONTINUATION: u8 = 0x0;
    /// A text frame.
    pub const TEXT: u8 = 0x1;
    /// A binary frame.
    pub const BINARY: u8 = 0x2;
    /// A close frame.
    pub const CLOSE: u8 = 0x8;
    /// A ping frame.
    pub const PING: u8 = 0x9;
    /// A pong frame.
    pub const PONG: u8 = 0xA;
}

/// Bound on a server frame's payload this client accepts (the engine sends events of at
/// most `--payload-max` plus their JSON envelope).
const FRAME_MAX: u64 = 64 << 20;

/// An upgrade request for `target` with [`SAMPLE_KEY`] and `extra` header fields.
pub fn upgrade_request(addr: SocketAddr, target: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut request = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {SAMPLE_KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in extra {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// A client frame: masked with `mask` (§5.3) or, to break the protocol, not masked.
pub fn client_frame(opcode: u8, fin: bool, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0F));
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        len @ 0..=125 => out.push(mask_bit | len as u8),
        len @ 126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A masked, final client frame with a fixed non-zero mask.
pub fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_frame(opcode, true, Some([0x37, 0xFA, 0x21, 0x3D]), payload)
}

/// A frame the server sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The FIN bit.
    pub fin: bool,
    /// The RSV1-3 bits, in the low three bits.
    pub rsv: u8,
    /// The opcode.
    pub opcode: u8,
    /// Whether the mask bit was set (a server must not set it, §5.1).
    pub masked: bool,
    /// The payload, unmasked.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The status code of a close frame, if it has one.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == opcode::CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    /// The payload as text (lossy, for messages and assertions).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// Parses one frame from the front of `buf`: the frame and its length, `Ok(None)` if
/// more bytes are needed.
///
/// # Errors
///
/// A description, if the frame can never be valid for this client.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7F {
        126 if buf.len() < 4 => return Ok(None),
        126 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() < 10 => return Ok(None),
        127 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(be), 10)
        }
        len => (u64::from(len), 2),
    };
    if len > FRAME_MAX {
        return Err(format!("server frame of {len} bytes, over {FRAME_MAX}"));
    }
    let mut key = [0u8; 4];
    if masked {
        if buf.len() < at + 4 {
            return Ok(None);
        }
        key.copy_from_slice(&buf[at..at + 4]);
        at += 4;
    }
    let end = at + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    let payload = buf[at..end]
        .iter()
        .enumerate()
        .map(|(i, b)| if masked { b ^ key[i % 4] } else { *b })
        .collect();
    let frame = Frame {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x07,
        opcode: b0 & 0x0F,
        masked,
        payload,
    };
    Ok(Some((frame, end)))
}

/// Sends an upgrade request for `target` and reads the response head. The connection
/// comes back too, with any bytes after the head still buffered in it.
///
/// # Panics
///
/// If no response head arrives within [`crate::WAIT`].
pub fn handshake(addr: SocketAddr, target: &str, extra: &[(&str, &str)]) -> (Response, HttpConn) {
    handshake_on(HttpConn::connect(addr), addr, target, extra)
}

/// [`handshake`] on a connection the caller opened itself, e.g. with a small
/// `SO_RCVBUF` chosen before connecting (see [`crate::slow::connect_with_rcvbuf`]).
///
/// # Panics
///
/// If no response head arrives within [`crate::WAIT`].
pub fn handshake_on(
    mut conn: HttpConn,
    addr: SocketAddr,
    target: &str,
    extra: &[(&str, &str)],
) -> (Response, HttpConn) {
    conn.send(&upgrade_request(addr, target, extra))
        .unwrap_or_else(|e| panic!("send the upgrade request for {target}: {e}"));
    let response = conn
        .read_head(crate::WAIT)
        .unwrap_or_else(|end| panic!("no response head ({end:?}) to the upgrade for {target}"));
    (response, conn)
}

/// A raw WebSocket client that does only what it is told.
pub struct RawWs {
    conn: HttpConn,
    pending: Vec<u8>,
    /// The 101 response.
    pub response: Response,
}

impl RawWs {
    /// Completes a handshake for `target` and checks the 101 response (RFC 6455 §4.2.2):
    /// `Upgrade: websocket`, `Connection: Upgrade`, and the accept value of the RFC.
    ///
    /// # Panics
    ///
    /// If the engine answers anything else.
    pub fn connect(addr: SocketAddr, target: &str, extra: &[(&str, &str)]) -> RawWs {
        let (response, mut conn) = handshake(addr, target, extra);
        assert_eq!(response.status, 101, "upgrade for {target}: {response:?}");
        let has_token = |name: &str, token: &str| {
            response
                .header(name)
                .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        };
        assert!(has_token("Upgrade", "websocket"), "{response:?}");
        assert!(has_token("Connection", "upgrade"), "{response:?}");
        assert_eq!(
            response.header("Sec-WebSocket-Accept"),
            Some(SAMPLE_ACCEPT),
            "accept value for the RFC 6455 §1.3 sample key: {response:?}"
        );
        let pending = conn.take_buffered();
        RawWs {
            conn,
            pending,
            response,
        }
    }

    /// Writes `bytes` as they are.
    ///
    /// # Errors
    ///
    /// If the write fails (the engine may already have closed).
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.conn.send(bytes)
    }

    /// Sends a masked text message in one frame.
    ///
    /// # Panics
    ///
    /// If the write fails.
    pub fn send_text(&mut self, text: &str) {
        self.send_raw(&masked(opcode::TEXT, text.as_bytes()))
            .unwrap_or_else(|e| panic!("send a text frame: {e}"));
    }

    /// The next frame the server sends.
    ///
    /// # Errors
    ///
    /// [`End`] if the connection closes or no whole frame arrives within `timeout`.
    ///
    /// # Panics
    ///
    /// If the server sends a frame no client could accept (see [`parse_frame`]).
    pub fn next_frame(&mut self, timeout: Duration) -> Result<Frame, End> {
        let deadline = Instant::now() + timeout;
        loop {
            match parse_frame(&self.pending) {
                Ok(Some((frame, used))) => {
                    self.pending.drain(..used);
                    return Ok(frame);
                }
                Ok(None) => {}
                Err(e) => panic!("{e}"),
            }
            self.conn.fill(deadline)?;
            let more = self.conn.take_buffered();
            self.pending.extend_from_slice(&more);
        }
    }

    /// Reads frames until a close frame, skipping data, ping and pong frames, and returns
    /// the close frame together with the frames skipped.
    ///
    /// # Panics
    ///
    /// If no close frame arrives within `timeout`.
    pub fn expect_close(&mut self, timeout: Duration) -> (Frame, Vec<Frame>) {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_frame(left) {
                Ok(frame) if frame.opcode == opcode::CLOSE => return (frame, skipped),
                Ok(frame) => skipped.push(frame),
                Err(end) => panic!("no close frame ({end:?}) within {timeout:?}; frames before: {skipped:?}"),
            }
        }
    }

    /// Whether the server closes the TCP connection within `timeout`, discarding what it
    /// sends meanwhile.
    pub fn closes_within(&mut self, timeout: Duration) -> bool {
        self.pending.clear();
        self.conn.closes_within(timeout)
    }
}

/// The directory of the Python helpers.
pub fn py_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py")
}

/// What to tell a developer whose machine lacks the Python packages.
pub const PY_INSTALL_HINT: &str =
    "run the install step of .ci/run: `python3 -m pip install -r tests/py/requirements.txt`";

/// Fails the test, saying what to install, unless `python3` can import every module.
///
/// # Panics
///
/// If one is missing.
pub fn require_python_modules(modules: &[&str]) {
    let code = modules
        .iter()
        .map(|m| format!("import {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    let out = Command::new("python3")
        .args(["-c", &code])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); {PY_INSTALL_HINT}"));
    assert!(
        out.status.success(),
        "python3 cannot `{code}`: {}; {PY_INSTALL_HINT}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Quotes `text` as a JSON string (RFC 8259 §7).
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One run of a script in `tests/py/` under `python3`: JSON lines on its stdout are
/// read by a thread, its stderr is kept for failure messages, and it is killed on drop
/// if still running.
pub struct PyScript {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: StderrLog,
    seen: Vec<String>,
}

impl PyScript {
    /// Starts `python3 tests/py/<script> <args>`.
    ///
    /// # Panics
    ///
    /// If python3 cannot be started.
    pub fn spawn(script: &str, args: &[&str]) -> PyScript {
        let path = py_dir().join(script);
        let mut child = Command::new("python3")
            .arg("-u")
            .arg(&path)
            .args(args)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn python3 {path:?}: {e}; {PY_INSTALL_HINT}"));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        // Both readers end at EOF, which the child's exit (or kill) brings.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = StderrLog::drain(child.stderr.take().expect("piped stderr"));
        PyScript {
            name: script.to_owned(),
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
            seen: Vec::new(),
        }
    }

    /// Writes one line to the script's stdin.
    ///
    /// # Panics
    ///
    /// If the script has closed its stdin (it exited).
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        if let Err(e) = writeln!(stdin, "{line}").and_then(|()| stdin.flush()) {
            panic!(
                "{} no longer reads its stdin ({e}); {}",
                self.name,
                self.context()
            );
        }
    }

    /// The next line of the script's stdout, or `None` if it ended or `timeout` passed.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Closes the script's stdin, reads the rest of its stdout and waits for it to exit,
    /// all within `timeout`; kills it if it is still running then.
    ///
    /// # Panics
    ///
    /// If it had to be killed.
    pub fn finish(&mut self, timeout: Duration) -> (ExitStatus, Vec<String>) {
        drop(self.stdin.take());
        let deadline = Instant::now() + timeout;
        let mut rest = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    rest.push(line);
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!("{} still ran after {timeout:?}; {}", self.name, self.context());
                }
            }
        }
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on the script") {
                return (status, rest);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not exit within {timeout:?}; {}",
                    self.name,
                    self.context()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Everything the script wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// The lines seen so far and its stderr, for failure messages.
    pub fn context(&self) -> String {
        format!(
            "its output so far:\n{}\nits stderr:\n{}",
            self.seen.join("\n"),
            self.stderr()
        )
    }
}

impl Drop for PyScript {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Not reaped yet, so the pid still names our child.
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A session of `tests/py/ws_driver.py`: a real WebSocket client (Python `websockets`)
/// holding named connections, one command and one reply line at a time.
pub struct WsDriver {
    script: PyScript,
    addr: SocketAddr,
}

/// How long the driver script may live; every test ends well before.
const DRIVER_LIFE_SECS: &str = "90";

impl WsDriver {
    /// Starts the driver for the engine at `addr`.
    ///
    /// # Panics
    ///
    /// If python3 or the `websockets` package is missing.
    pub fn start(addr: SocketAddr) -> WsDriver {
        require_python_modules(&["websockets"]);
        WsDriver {
            script: PyScript::spawn("ws_driver.py", &["--timeout", DRIVER_LIFE_SECS]),
            addr,
        }
    }

    /// `ws://ADDR<target>`.
    pub fn url(&self, target: &str) -> String {
        format!("ws://{}{target}", self.addr)
    }

    /// Sends one command (a JSON object) and returns the reply line, parsed.
    ///
    /// # Panics
    ///
    /// If no reply comes within `timeout` plus [`crate::WAIT`], the reply is not a flat
    /// JSON object, or the driver reports a failed expectation (`"kind":"fail"`).
    pub fn call(&mut self, command: &str, timeout: Duration) -> FlatObject {
        self.script.send_line(command);
        let Some(line) = self.script.next_line(timeout + crate::WAIT) else {
            panic!("no reply to {command}; {}", self.script.context());
        };
        let reply = parse_flat_object(&line).unwrap_or_else(|e| panic!("reply {line:?}: {e}"));
        if kind(&reply) == "fail" {
            panic!(
                "the websockets client failed on {command}: {line}\n{}",
                self.script.context()
            );
        }
        reply
    }

    /// Opens connection `conn` to `target` with extra header fields; returns the reply.
    pub fn connect(&mut self, conn: &str, target: &str, headers: &[(&str, &str)]) -> FlatObject {
        let headers: Vec<String> = headers
            .iter()
            .map(|(n, v)| format!("[{},{}]", json_string(n), json_string(v)))
            .collect();
        let command = format!(
            r#"{{"op":"connect","conn":{},"url":{},"headers":[{}]}}"#,
            json_string(conn),
            json_string(&self.url(target)),
            headers.join(",")
        );
        let reply = self.call(&command, crate::WAIT);
        assert_eq!(kind(&reply), "open", "{reply:?}");
        reply
    }

    /// Tries to open `conn` with `Origin: origin` and expects the handshake to end with
    /// `status` (101 or a refusal); returns the reply.
    pub fn connect_with_origin(&mut self, conn: &str, target: &str, origin: &str, status: u16) -> FlatObject {
        let command = format!(
            r#"{{"op":"connect","conn":{},"url":{},"origin":{},"expect_status":{status}}}"#,
            json_string(conn),
            json_string(&self.url(target)),
            json_string(origin)
        );
        self.call(&command, crate::WAIT)
    }

    /// Sends a text message on `conn`.
    pub fn send_text(&mut self, conn: &str, text: &str) {
        let command = format!(
            r#"{{"op":"send","conn":{},"text":{}}}"#,
            json_string(conn),
            json_string(text)
        );
        self.call(&command, crate::WAIT);
    }

    /// Sends a binary message on `conn`.
    pub fn send_binary(&mut self, conn: &str, data: &[u8]) {
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        let command = format!(
            r#"{{"op":"send","conn":{},"binary_hex":"{hex}"}}"#,
            json_string(conn)
        );
        self.call(&command, crate::WAIT);
    }

    /// The next message on `conn`, within [`crate::WAIT`]: `text`, and `j.<name>` fields
    /// when the text is a JSON object.
    pub fn recv(&mut self, conn: &str) -> FlatObject {
        let ms = crate::WAIT.as_millis();
        let command = format!(
            r#"{{"op":"recv","conn":{},"timeout_ms":{ms}}}"#,
            json_string(conn)
        );
        let reply = self.call(&command, crate::WAIT);
        assert_eq!(kind(&reply), "msg", "{reply:?}");
        reply
    }

    /// Checks that no message arrives on `conn` for `quiet`.
    pub fn expect_quiet(&mut self, conn: &str, quiet: Duration) {
        let command = format!(
            r#"{{"op":"quiet","conn":{},"ms":{}}}"#,
            json_string(conn),
            quiet.as_millis()
        );
        let reply = self.call(&command, quiet);
        assert_eq!(kind(&reply), "quiet", "{reply:?}");
    }

    /// Checks that `conn` stays open for `span` (the client answers pings meanwhile);
    /// returns how many messages arrived.
    pub fn expect_alive(&mut self, conn: &str, span: Duration) -> usize {
        let command = format!(
            r#"{{"op":"alive","conn":{},"ms":{}}}"#,
            json_string(conn),
            span.as_millis()
        );
        let reply = self.call(&command, span);
        assert_eq!(kind(&reply), "alive", "{reply:?}");
        field(&reply, "received").parse().expect("a count")
    }

    /// Closes `conn` with 1000 and returns the close code the engine echoed.
    pub fn close(&mut self, conn: &str) -> Option<String> {
        let reply = self.call(
            &format!(r#"{{"op":"close","conn":{}}}"#, json_string(conn)),
            crate::WAIT,
        );
        assert_eq!(kind(&reply), "closed", "{reply:?}");
        reply.get("code").cloned().flatten()
    }

    /// Ends the session and checks that the driver exited with status 0.
    ///
    /// # Panics
    ///
    /// If it did not.
    pub fn finish(mut self) {
        self.script.send_line(r#"{"op":"exit"}"#);
        let (status, _) = self.script.finish(crate::WAIT);
        assert!(
            status.success(),
            "ws_driver.py exited with {status}; {}",
            self.script.context()
        );
    }
}

/// The `kind` of a reply line (empty if it has none).
pub fn kind(reply: &FlatObject) -> &str {
    reply.get("kind").and_then(Option::as_deref).unwrap_or_default()
}

/// A string field of a reply.
///
/// # Panics
///
/// If it is missing or `null`.
pub fn field<'r>(reply: &'r FlatObject, name: &str) -> &'r str {
    reply
        .get(name)
        .and_then(Option::as_deref)
        .unwrap_or_else(|| panic!("no {name} in {reply:?}"))
}
