//! The publishing side of the ingest protocol, as `ringcast publish` uses it: one
//! `PUB`, one reply.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

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
}

/// Publishes `data` on `topic` and returns the assigned event id.
///
/// # Errors
/// [`PublishError::Refused`] carries the engine's reason (bad topic, payload too large...).
pub fn publish(
    path: &Path,
    topic: &str,
    event: Option<&str>,
    key: Option<&str>,
    data: &[u8],
) -> Result<String, PublishError> {
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
