//! Publishers: a raw client of the ingest protocol on the engine's Unix socket, and a
//! runner of the real `ringcast publish` command.
//!
//! Owns: the socket and the reply bytes read but not yet taken.
//!
//! Must never: block without a deadline, or accept a reply line that does not end in
//! CRLF: the protocol promises CRLF, and a test should notice when it is not kept.
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::http::End;

/// Longest reply line accepted before the test fails.
const REPLY_MAX: usize = 4096;

/// The frame of one `PUB` command: `PUB <topic> <len>[ <options>]\n<data>\n`.
pub fn pub_frame(topic: &str, data: &[u8], options: &str) -> Vec<u8> {
    let mut frame = format!("PUB {topic} {}", data.len());
    if !options.is_empty() {
        frame.push(' ');
        frame.push_str(options);
    }
    frame.push('\n');
    let mut frame = frame.into_bytes();
    frame.extend_from_slice(data);
    frame.push(b'\n');
    frame
}

/// One publisher connection.
pub struct Publisher {
    stream: UnixStream,
    buf: Vec<u8>,
    closed: bool,
}

impl Publisher {
    /// Connects to the ingest socket at `path`.
    ///
    /// # Panics
    ///
    /// If the connection fails.
    pub fn connect(path: &Path) -> Publisher {
        let stream = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        stream
            .set_write_timeout(Some(crate::WAIT))
            .expect("write timeout");
        Publisher {
            stream,
            buf: Vec::new(),
            closed: false,
        }
    }

    /// Writes all of `bytes`.
    ///
    /// # Panics
    ///
    /// If the write fails.
    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes)
            .unwrap_or_else(|e| panic!("write {}: {e}", crate::http::shorten(bytes)));
    }

    /// Writes all of `bytes`.
    ///
    /// # Errors
    ///
    /// If the write fails, e.g. because the engine closed the connection.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next reply line, without its CRLF.
    ///
    /// # Errors
    ///
    /// [`End`] if the engine closes or no complete line arrives within `timeout`.
    ///
    /// # Panics
    ///
    /// If the line ends in a bare LF, or grows past 4 KiB.
    pub fn read_reply_line(&mut self, timeout: Duration) -> Result<String, End> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=at).collect();
                let line = line.strip_suffix(b"\r\n").unwrap_or_else(|| {
                    panic!(
                        "reply line not ended by CRLF: {:?}",
                        String::from_utf8_lossy(&line)
                    )
                });
                return Ok(String::from_utf8(line.to_vec()).expect("reply line is UTF-8"));
            }
            assert!(self.buf.len() < REPLY_MAX, "reply line over {REPLY_MAX} bytes");
            self.fill(deadline)?;
        }
    }

    /// The next reply line, which must come within [`crate::WAIT`].
    ///
    /// # Panics
    ///
    /// If it does not.
    pub fn reply(&mut self) -> String {
        self.read_reply_line(crate::WAIT)
            .unwrap_or_else(|end| panic!("no reply line: {end:?}"))
    }

    /// Publishes `data` on `topic` and returns the id from `+OK <id>`.
    ///
    /// # Panics
    ///
    /// If the reply is not `+OK <id>`.
    pub fn publish(&mut self, topic: &str, data: &[u8]) -> String {
        self.publish_with(topic, data, "")
    }

    /// Publishes with `options` (`event=NAME key=KEY`) and returns the id.
    ///
    /// # Panics
    ///
    /// If the reply is not `+OK <id>`.
    pub fn publish_with(&mut self, topic: &str, data: &[u8], options: &str) -> String {
        self.send(&pub_frame(topic, data, options));
        ok_id(&self.reply())
    }

    /// Whether the engine closes the connection within `timeout`; anything it sends
    /// first must be nothing at all (the test has read the replies it expects).
    ///
    /// # Panics
    ///
    /// If bytes arrive before the close.
    pub fn closes_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            assert!(
                self.buf.is_empty(),
                "unexpected bytes before close: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            match self.fill(deadline) {
                Ok(()) => continue,
                Err(End::Closed) => return true,
                Err(End::TimedOut) => return false,
            }
        }
    }

    fn fill(&mut self, deadline: Instant) -> Result<(), End> {
        if self.closed {
            return Err(End::Closed);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(End::TimedOut);
        }
        self.stream.set_read_timeout(Some(left)).expect("read timeout");
        let mut chunk = [0u8; 4096];
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
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                self.closed = true;
                Err(End::Closed)
            }
            Err(e) => panic!("read from the ingest socket: {e}"),
        }
    }
}

/// The id of a `+OK <id>` reply.
///
/// # Panics
///
/// If `reply` is anything else.
pub fn ok_id(reply: &str) -> String {
    let id = reply
        .strip_prefix("+OK ")
        .unwrap_or_else(|| panic!("expected +OK <id>, got {reply:?}"));
    crate::seq_of(id);
    id.to_owned()
}

/// What `ringcast publish` did.
#[derive(Debug)]
pub struct CliOutput {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

/// Runs `ringcast publish --ingest <ingest> <args>`, with `stdin` as its standard input
/// (or none), and waits for it to exit.
///
/// # Panics
///
/// If it does not exit within [`crate::WAIT`] (it is killed then).
pub fn cli_publish(ingest: &Path, args: &[&str], stdin: Option<&[u8]>) -> CliOutput {
    let mut child = Command::new(crate::engine::binary())
        .arg("publish")
        .arg("--ingest")
        .arg(ingest)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringcast publish");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let input = input.to_vec();
        // A thread, so that a large input cannot deadlock against unread output.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let deadline = Instant::now() + crate::WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait on ringcast publish") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ringcast publish {args:?} did not exit within {:?}", crate::WAIT);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    // The process has exited, so these reads end at EOF.
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read stdout");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    CliOutput {
        status,
        stdout,
        stderr,
    }
}
