//! The publishing side of the ingest protocol, as `ringcast publish` uses it: one
//! `PUB`, one reply.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::proto::ingest::IngestError;

/// Why a publish did not return an id.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(
        "cannot reach the engine at {path}: {source}; is `ringcast serve` running with --ingest {path}?"
    )]
    Connect { path: String, source: std::io::Error },
    #[error("talking to the engine failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Refused(String),
    #[error("the engine closed the connection without a reply")]
    NoReply,
    /// A topic, event name or key holding a space, tab, CR or LF, which would cut or end
    /// the `PUB` line; nothing was sent.
    #[error("{0}")]
    BadArgument(IngestError),
}

/// Publishes `data` on `topic` and returns the assigned event id.
///
/// # Errors
/// [`PublishError::Refused`] carries the engine's reason (bad topic, payload too large...);
/// [`PublishError::BadArgument`] is refused before anything is sent.
pub fn publish(
    path: &Path,
    topic: &str,
    event: Option<&str>,
    key: Option<&str>,
    data: &[u8],
) -> Result<String, PublishError> {
    check_line_safe(topic, event, key).map_err(PublishError::BadArgument)?;
    let stream = UnixStream::connect(path).map_err(|source| PublishError::Connect {
        path: path.display().to_string(),
        source,
    })?;
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
    (&stream).write_all(&frame)?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let line = line.trim_end();
    if let Some(id) = line.strip_prefix("+OK ") {
        Ok(id.to_string())
    } else if let Some(reason) = line.strip_prefix("-ERR ") {
        Err(PublishError::Refused(reason.to_string()))
    } else if line.is_empty() {
        Err(PublishError::NoReply)
    } else {
        Err(PublishError::Refused(format!("unexpected reply {line:?}")))
    }
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
