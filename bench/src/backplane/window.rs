//! Pipelined publishing over a ringcast ingest socket with a window of `W` unacknowledged
//! `PUB` commands, the engine side of the throughput comparison: the same pipelining as
//! [`super::raw`], where the engine's acknowledgement (`+OK <id>`) means JetStream stored
//! the event.
//!
//! One thread: it writes as many commands as the window has room for in one write, then
//! reads at least one reply and every further one already buffered. The replies
//! outstanding are at most `W` lines (about 30 bytes each), far below a Unix socket's
//! buffer, so the engine never waits on us to read while we wait on it.
//!
//! Must never: wait without a bound (socket timeouts, a deadline), or have more than `W`
//! commands unanswered.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Bound on one socket read or write.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Publishes `count` events of `payload` to `topic` through the ingest socket at `path`
/// with at most `window` unanswered, and returns the time from the first write to the
/// last `+OK`.
///
/// # Errors
/// A failed connect, write or read, an `-ERR` reply, or more than `timeout` in all.
pub fn publish(
    path: &Path,
    topic: &str,
    count: u64,
    payload: &[u8],
    window: u64,
    timeout: Duration,
) -> Result<Duration, String> {
    let stream = UnixStream::connect(path).map_err(|e| format!("ingest socket {}: {e}", path.display()))?;
    for set in [UnixStream::set_read_timeout, UnixStream::set_write_timeout] {
        set(&stream, Some(IO_TIMEOUT)).map_err(|e| format!("ingest socket: {e}"))?;
    }
    let mut writer = stream.try_clone().map_err(|e| format!("ingest socket: {e}"))?;
    let mut reader = BufReader::new(stream);
    let mut frame = format!("PUB {topic} {}\n", payload.len()).into_bytes();
    frame.extend_from_slice(payload);
    frame.push(b'\n');
    let window = window.max(1);
    let (mut sent, mut acked) = (0u64, 0u64);
    let mut out = Vec::with_capacity(frame.len() * window.min(1024) as usize);
    let mut line = String::new();
    let start = Instant::now();
    while acked < count {
        if start.elapsed() > timeout {
            return Err(format!(
                "ingest publishing ran past {timeout:?} ({acked} of {count} acknowledged)"
            ));
        }
        let room = (window - (sent - acked)).min(count - sent);
        if room > 0 {
            out.clear();
            for _ in 0..room {
                out.extend_from_slice(&frame);
            }
            writer
                .write_all(&out)
                .map_err(|e| format!("write to the ingest socket: {e}"))?;
            sent += room;
        }
        // One reply, waited for; then those already read, without waiting.
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .map_err(|e| format!("read from the ingest socket: {e}"))?;
            if n == 0 {
                return Err("the engine closed the ingest connection".into());
            }
            if !line.starts_with("+OK ") {
                return Err(format!("ingest reply {:?}", line.trim_end()));
            }
            acked += 1;
            if !reader.buffer().contains(&b'\n') {
                break;
            }
        }
    }
    Ok(start.elapsed())
}
