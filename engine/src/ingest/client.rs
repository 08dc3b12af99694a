//! The publishing side of the ingest protocol: [`Publisher`], one connection kept open
//! across publishes (the admin listener's `POST /publish` holds one), and [`publish`], a
//! single `PUB` on a fresh connection as `ringcast publish` sends it.
//!
//! Owns: framing a `PUB`, reading its one-line reply, reconnecting when the engine has
//! closed the connection, and telling the two kinds of `-ERR` apart: a refusal of the event
//! (the engine answers and keeps reading, so the event is at fault) from the engine turning
//! the connection away (it answers and closes, as when its publisher table is full).
//!
//! Must never: send a `PUB` again unless the first copy is known not to have arrived whole
//! (the engine executes only whole commands), or wait on the engine without a timeout.
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::proto::ingest::PONG;

/// How long one write or one reply may take before the connection is given up (the
/// engine answers a `PUB` in microseconds; only a wedged ingest thread takes this long).
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest reply line read, in bytes: ids and reasons are far shorter.
const REPLY_LINE_MAX: usize = 4096;

use crate::proto::ingest::IngestError;

/// Why a publish did not return an id.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(
        "cannot reach the engine at {path}: {source}; is `ringcast serve` running with --ingest {path}?"
    )]
    Connect { path: String, source: io::Error },
    #[error("talking to the engine failed: {0}")]
    Io(#[from] io::Error),
    /// The engine refused this event (bad topic, event name, key, payload) and kept the
    /// connection open.
    #[error("{0}")]
    Refused(String),
    /// The engine answered `-ERR` and closed the connection without reading on (too many
    /// publishers connected, or it lost the framing).
    #[error("the engine turned the connection away: {0}")]
    TurnedAway(String),
    #[error("the engine closed the connection without a reply")]
    NoReply,
    #[error("unexpected reply from the engine: {0:?}")]
    BadReply(String),
    /// A topic, event name or key holding a space, tab, CR or LF, which would cut or end
    /// the `PUB` line; nothing was sent.
    #[error("{0}")]
    BadArgument(IngestError),
}

impl PublishError {
    /// Whether the event itself was refused, so sending it again cannot succeed; every
    /// other error is the engine's or the socket's, and a later retry may succeed.
    #[must_use]
    pub fn is_refusal(&self) -> bool {
        matches!(self, PublishError::Refused(_) | PublishError::BadArgument(_))
    }
}

/// Publishes `data` on `topic` over a fresh connection and returns the assigned event id.
///
/// # Errors
/// [`PublishError::Refused`] carries the engine's reason (bad topic, payload too large...);
/// [`PublishError::BadArgument`] is refused before anything is sent; the other variants
/// say why the engine could not take it.
pub fn publish(
    path: &Path,
    topic: &str,
    event: Option<&str>,
    key: Option<&str>,
    data: &[u8],
) -> Result<String, PublishError> {
    Publisher::new(path).publish(topic, event, key, data)
}

/// A publisher connection to the ingest socket at one path, opened on first use, kept
/// across publishes and reopened when the engine has closed it. One request is in
/// flight at a time; callers on several threads share it behind a lock.
#[derive(Debug)]
pub struct Publisher {
    path: PathBuf,
    stream: Option<UnixStream>,
}

impl Publisher {
    /// A publisher for the ingest socket at `path`; nothing is connected yet.
    #[must_use]
    pub fn new(path: &Path) -> Publisher {
        Publisher {
            path: path.to_owned(),
            stream: None,
        }
    }

    /// Publishes `data` on `topic` and returns the assigned event id. The connection is
    /// kept for the next publish unless the engine closed it or the reply was lost.
    ///
    /// # Errors
    /// [`PublishError::Refused`] when the engine refused the event and kept the
    /// connection; [`PublishError::TurnedAway`] when it answered `-ERR` and closed (the
    /// `PUB` was not executed); `Connect`, `Io`, `NoReply` or `BadReply` when the socket
    /// failed. After `Io` or `NoReply` on a sent `PUB`, whether it was published is
    /// unknown.
    pub fn publish(
        &mut self,
        topic: &str,
        event: Option<&str>,
        key: Option<&str>,
        data: &[u8],
    ) -> Result<String, PublishError> {
        check_line_safe(topic, event, key).map_err(PublishError::BadArgument)?;
        let frame = pub_frame(topic, event, key, data);
        let mut stream = match self.stream.take().filter(is_idle_and_open) {
            Some(stream) => match (&stream).write_all(&frame) {
                Ok(()) => stream,
                // It closed since the check: the frame did not arrive whole, so it was not
                // executed and can go once more on a new connection.
                Err(_) => self.send_on_new(&frame)?,
            },
            None => self.send_on_new(&frame)?,
        };
        let (line, alone) = read_line(&mut stream)?;
        if let Some(id) = line.strip_prefix("+OK ") {
            self.stream = alone.then_some(stream);
            Ok(id.to_owned())
        } else if let Some(reason) = line.strip_prefix("-ERR ") {
            // The engine stops reading a connection it closes, so a PING answered means
            // it refused this event and reads on; unanswered means it turned us away.
            if alone && answers_ping(&mut stream) {
                self.stream = Some(stream);
                Err(PublishError::Refused(reason.to_owned()))
            } else {
                Err(PublishError::TurnedAway(reason.to_owned()))
            }
        } else {
            Err(PublishError::BadReply(line))
        }
    }

    fn send_on_new(&self, frame: &[u8]) -> Result<UnixStream, PublishError> {
        let mut stream = UnixStream::connect(&self.path).map_err(|source| PublishError::Connect {
            path: self.path.display().to_string(),
            source,
        })?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        if let Err(e) = (&stream).write_all(frame) {
            // An engine that turns a connection away says why before closing it.
            return Err(match read_line(&mut stream) {
                Ok((line, _)) => match line.strip_prefix("-ERR ") {
                    Some(reason) => PublishError::TurnedAway(reason.to_owned()),
                    None => PublishError::Io(e),
                },
                Err(_) => PublishError::Io(e),
            });
        }
        Ok(stream)
    }
}

/// One event of [`Publisher::publish_batch`].
#[derive(Clone, Copy, Debug)]
pub struct Outgoing<'a> {
    pub topic: &'a str,
    pub event: Option<&'a str>,
    pub key: Option<&'a str>,
    pub data: &'a [u8],
}

impl Publisher {
    /// Publishes `events` pipelined, in one write followed by a `PING`, and returns one
    /// result per event, in order: its id, or why it was not published. An event the
    /// engine refused does not stop the ones behind it.
    ///
    /// # Errors
    /// Per event, as [`Publisher::publish`]; when the write fails, or the engine closes
    /// the connection before answering, the events without an answer get `Io` or
    /// `NoReply` (whether they were published is unknown); the one answered `-ERR` just
    /// before a close gets `TurnedAway`.
    pub fn publish_batch(&mut self, events: &[Outgoing<'_>]) -> Vec<Result<String, PublishError>> {
        let mut results: Vec<Option<Result<String, PublishError>>> = Vec::with_capacity(events.len());
        let mut frames = Vec::new();
        for e in events {
            match check_line_safe(e.topic, e.event, e.key) {
                Ok(()) => {
                    frames.extend_from_slice(&pub_frame(e.topic, e.event, e.key, e.data));
                    results.push(None);
                }
                Err(bad) => results.push(Some(Err(PublishError::BadArgument(bad)))),
            }
        }
        let sent = results.iter().filter(|r| r.is_none()).count();
        if sent > 0 {
            frames.extend_from_slice(b"PING\r\n");
            let answers = self.exchange(&frames, sent);
            let mut answers = answers.into_iter();
            for slot in results.iter_mut().filter(|r| r.is_none()) {
                *slot = answers.next();
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(PublishError::NoReply)))
            .collect()
    }

    /// Writes `frames` (`count` `PUB`s and a `PING`) and reads their replies.
    fn exchange(&mut self, frames: &[u8], count: usize) -> Vec<Result<String, PublishError>> {
        let stream = match self.stream.take().filter(is_idle_and_open) {
            Some(stream) => (&stream)
                .write_all(frames)
                .map(|()| stream)
                .map_err(PublishError::Io),
            None => self.send_on_new(frames),
        };
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                let reason = e.to_string();
                let mut out = vec![Err(e)];
                out.extend((1..count).map(|_| Err(PublishError::Io(io::Error::other(reason.clone())))));
                return out;
            }
        };
        let mut lines = LineReader::default();
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let answer = match lines.next(&mut stream) {
                Ok(line) => match (line.strip_prefix("+OK "), line.strip_prefix("-ERR ")) {
                    (Some(id), _) => Ok(id.to_owned()),
                    (_, Some(reason)) => Err(PublishError::Refused(reason.to_owned())),
                    _ => Err(PublishError::BadReply(line)),
                },
                Err(e) => Err(e),
            };
            let lost = matches!(answer, Err(PublishError::NoReply | PublishError::Io(_)));
            out.push(answer);
            if lost {
                out.extend((out.len()..count).map(|_| Err(PublishError::NoReply)));
                break;
            }
        }
        let ponged = lines
            .next(&mut stream)
            .is_ok_and(|line| line.as_bytes() == PONG.trim_ascii_end());
        if ponged && lines.is_empty() {
            self.stream = Some(stream);
        } else if let Some(last) = out
            .iter_mut()
            .rev()
            .find(|r| matches!(r, Err(PublishError::Refused(_))))
        {
            // The engine closes a connection right after the reply that ends it.
            if let Err(PublishError::Refused(reason)) = std::mem::replace(last, Err(PublishError::NoReply)) {
                *last = Err(PublishError::TurnedAway(reason));
            }
        }
        out
    }
}

/// Reply lines read from a pipelined exchange, keeping what came after the last one.
#[derive(Default)]
struct LineReader {
    buf: Vec<u8>,
}

impl LineReader {
    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next line without its line end.
    fn next(&mut self, stream: &mut UnixStream) -> Result<String, PublishError> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(at) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=at).collect();
                let line = &line[..line.len() - 1];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                return Ok(String::from_utf8_lossy(line).into_owned());
            }
            if self.buf.len() >= REPLY_LINE_MAX {
                return Err(PublishError::BadReply(
                    String::from_utf8_lossy(&self.buf).into_owned(),
                ));
            }
            match stream.read(&mut chunk) {
                Ok(0) => return Err(PublishError::NoReply),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(PublishError::Io(e)),
            }
        }
    }
}

/// `PUB <topic> <length>[ event=E][ key=K]\r\n<data>\r\n`.
fn pub_frame(topic: &str, event: Option<&str>, key: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut frame = format!("PUB {topic} {}", data.len()).into_bytes();
    if let Some(e) = event {
        frame.extend_from_slice(format!(" event={e}").as_bytes());
    }
    if let Some(k) = key {
        frame.extend_from_slice(format!(" key={k}").as_bytes());
    }
    frame.extend_from_slice(b"\r\n");
    frame.extend_from_slice(data);
    frame.extend_from_slice(b"\r\n");
    frame
}

/// Whether a kept connection is still usable: nothing to read (the engine neither closed
/// it nor said anything unasked). Bytes found are discarded with the connection.
fn is_idle_and_open(stream: &UnixStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let idle = matches!((&*stream).read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
    stream.set_nonblocking(false).is_ok() && idle
}

fn answers_ping(stream: &mut UnixStream) -> bool {
    stream.write_all(b"PING\r\n").is_ok()
        && read_line(stream).is_ok_and(|(line, alone)| alone && line.as_bytes() == PONG.trim_ascii_end())
}

/// Reads one reply line and returns it without its line end, and whether nothing came
/// after it. Replies come one per command and one command is in flight, so bytes past
/// the line mean the engine said something unasked: the connection is not reused.
fn read_line(stream: &mut UnixStream) -> Result<(String, bool), PublishError> {
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    let end = loop {
        if let Some(at) = buf.iter().position(|&b| b == b'\n') {
            break at;
        }
        if buf.len() >= REPLY_LINE_MAX {
            break buf.len();
        }
        match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Err(PublishError::NoReply),
            Ok(0) => break buf.len(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(PublishError::Io(e)),
        }
    };
    let alone = buf.len() == end + 1;
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    Ok((String::from_utf8_lossy(line).into_owned(), alone))
}

/// Refuses what would change the framing of the `PUB` line: the tokens are separated by
/// spaces and tabs and the line ends at LF, so `--event 'a\nPUB other 1'` would otherwise
/// send a second command. Every other byte is sent, and judged by the engine.
fn check_line_safe(topic: &str, event: Option<&str>, key: Option<&str>) -> Result<(), IngestError> {
    let has = |v: &str, bytes: &[u8]| v.bytes().any(|b| bytes.contains(&b));
    if has(topic, b" \t\r\n") {
        return Err(IngestError::BadTopic);
    }
    for (value, spaced, bad) in [
        (
            event,
            IngestError::EventNameWithSpace as fn(String) -> IngestError,
            IngestError::BadEventName,
        ),
        (key, IngestError::KeyWithSpace, IngestError::BadKey),
    ] {
        match value {
            Some(v) if has(v, b"\r\n") => return Err(bad),
            Some(v) if has(v, b" \t") => return Err(spaced(v.to_owned())),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_safe_arguments() {
        assert_eq!(check_line_safe("t", Some("e.v-1"), Some("k:1")), Ok(()));
        assert_eq!(check_line_safe("a b", None, None), Err(IngestError::BadTopic));
        assert_eq!(
            check_line_safe("t", Some("my event"), None),
            Err(IngestError::EventNameWithSpace("my event".into()))
        );
        assert_eq!(
            check_line_safe("t", None, Some("a\tb")),
            Err(IngestError::KeyWithSpace("a\tb".into()))
        );
        assert_eq!(
            check_line_safe("t", Some("a\r\nPUB x 1"), None),
            Err(IngestError::BadEventName)
        );
        assert_eq!(check_line_safe("t", None, Some("k\n")), Err(IngestError::BadKey));
    }
}
