//! The two sources of events `fanout` measures: a publisher on the engine's ingest
//! socket, and the kernel baseline (PEERS.md, "Kernel-only baseline"): the simplest
//! program that does the same fan-out, a loop writing the same bytes to every accepted
//! loopback socket, with as many sender threads as the engine has loops.
//!
//! Every payload starts with `t=<nanoseconds since the bench's base instant> i=<index> `
//! and is padded with `x` to the requested size, so the readers can time each delivery.
//!
//! Must never: wait without a bound (sockets carry timeouts), or run ahead of the
//! engine's acknowledgements by more than two batches.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

/// Bound on any single socket operation.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Called with the index one past the events about to be sent; returns once they may
/// be (the subscribers are close enough behind), or why not.
pub type Gate<'a> = dyn Fn(u64) -> Result<(), String> + Sync + 'a;

/// The payload of event `index`, sent now: `t=<ns> i=<index> ` padded to `bytes`.
pub fn payload(base: Instant, index: u64, bytes: usize) -> Vec<u8> {
    let mut data = format!("t={} i={index} ", base.elapsed().as_nanos()).into_bytes();
    data.resize(bytes.max(data.len()), b'x');
    data
}

/// The payload of event `index` stamped `t=<sent_ns>`: `t=<ns> i=<index> ` padded to
/// `bytes`. Paced publishing stamps each event with its scheduled time, so latency
/// includes any delay of the publisher (no coordinated omission).
pub fn payload_at(sent_ns: u128, index: u64, bytes: usize) -> Vec<u8> {
    let mut data = format!("t={sent_ns} i={index} ").into_bytes();
    data.resize(bytes.max(data.len()), b'x');
    data
}

/// What a paced publication did.
#[derive(Debug, Clone, Default)]
pub struct Paced {
    /// Events the engine acknowledged with `+OK`.
    pub acked: u64,
    /// Sequence numbers of the first and last acknowledged event.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The most an event was written after its scheduled time, milliseconds.
    pub late_max_ms: f64,
    /// Events written after their scheduled time by more than a millisecond.
    pub late: u64,
}

/// Events written together at most, when the publisher is behind its schedule.
const PACED_BATCH_MAX: u64 = 64;

/// A publisher connection to the engine's ingest socket.
pub struct Publisher {
    stream: BufReader<UnixStream>,
    line: String,
}

impl Publisher {
    /// Connects to the ingest socket at `path`.
    ///
    /// # Errors
    /// If it cannot connect.
    pub fn connect(path: &Path) -> io::Result<Publisher> {
        let stream = UnixStream::connect(path)
            .map_err(|e| io::Error::new(e.kind(), format!("ingest socket {}: {e}", path.display())))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Publisher {
            stream: BufReader::new(stream),
            line: String::new(),
        })
    }

    /// Publishes events `first..first + count` of `bytes` bytes, event `i` on
    /// `topics[i % topics.len()]`, `batch`
    /// `PUB` commands per write, writing a batch before reading the replies to the one
    /// before it (two batches in flight at most), and calling `gate` with the index one
    /// past a batch's last event before writing it. Returns the sequence numbers of the
    /// first and last event.
    ///
    /// # Errors
    /// A failed write or read, an `-ERR` reply, or what `gate` returns.
    #[allow(clippy::too_many_arguments)]
    pub fn publish(
        &mut self,
        topics: &[String],
        first: u64,
        count: u64,
        bytes: usize,
        batch: usize,
        base: Instant,
        gate: &Gate<'_>,
    ) -> Result<(u64, u64), String> {
        let batch = batch.max(1) as u64;
        let mut seqs = (u64::MAX, 0);
        let mut in_flight: Vec<u64> = Vec::new();
        let mut next = first;
        let end = first + count;
        while next < end || !in_flight.is_empty() {
            if next < end {
                let n = batch.min(end - next);
                gate(next + n)?;
                let mut frames = Vec::with_capacity(n as usize * (bytes + 64));
                for i in next..next + n {
                    let topic = &topics[(i % topics.len() as u64) as usize];
                    frames.extend_from_slice(format!("PUB {topic} {bytes}\n").as_bytes());
                    frames.extend_from_slice(&payload(base, i, bytes));
                    frames.push(b'\n');
                }
                self.stream
                    .get_mut()
                    .write_all(&frames)
                    .map_err(|e| format!("write to the ingest socket: {e}"))?;
                in_flight.push(n);
                next += n;
            }
            if in_flight.len() == 2 || next >= end {
                let n = in_flight.remove(0);
                for _ in 0..n {
                    let seq = self.reply()?;
                    seqs = (seqs.0.min(seq), seqs.1.max(seq));
                }
            }
        }
        Ok(seqs)
    }

    /// Publishes `count` events of `bytes` bytes at `rate` per second from now, event `i`
    /// on `topics[i % topics.len()]`: event `i` is due at `start + i / rate` and carries
    /// that time (relative to `base`) as its timestamp. Events already due are written together (at most
    /// [`PACED_BATCH_MAX`]); replies are read by a second thread, so a slow reply never
    /// delays the schedule.
    ///
    /// # Errors
    /// A failed write or read, or an `-ERR` reply.
    pub fn publish_paced(
        &mut self,
        topics: &[String],
        count: u64,
        bytes: usize,
        rate: f64,
        base: Instant,
    ) -> Result<Paced, String> {
        let mut writer = self
            .stream
            .get_ref()
            .try_clone()
            .map_err(|e| format!("ingest socket: {e}"))?;
        let start = Instant::now();
        let due = |i: u64| start + Duration::from_secs_f64(i as f64 / rate);
        thread::scope(|scope| {
            let replies = scope.spawn(|| -> Result<Paced, String> {
                let mut paced = Paced::default();
                for _ in 0..count {
                    let seq = self.reply()?;
                    paced.acked += 1;
                    paced.first_seq.get_or_insert(seq);
                    paced.last_seq = Some(seq);
                }
                Ok(paced)
            });
            let mut late = (0u64, 0f64);
            let mut next = 0;
            let written = (|| -> Result<(), String> {
                while next < count {
                    if let Some(wait) = due(next).checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                    let now = Instant::now();
                    let mut frames = Vec::new();
                    let end = (next + PACED_BATCH_MAX).min(count);
                    while next < end && due(next) <= now {
                        let at = due(next);
                        let behind_ms = now.duration_since(at).as_secs_f64() * 1e3;
                        if behind_ms > 1.0 {
                            late.0 += 1;
                        }
                        late.1 = late.1.max(behind_ms);
                        let topic = &topics[(next % topics.len() as u64) as usize];
                        frames.extend_from_slice(format!("PUB {topic} {bytes}\n").as_bytes());
                        frames.extend_from_slice(&payload_at(
                            at.duration_since(base).as_nanos(),
                            next,
                            bytes,
                        ));
                        frames.push(b'\n');
                        next += 1;
                    }
                    writer
                        .write_all(&frames)
                        .map_err(|e| format!("write to the ingest socket: {e}"))?;
                }
                Ok(())
            })();
            if written.is_err() {
                // Unblock the reply reader: nothing more will be acknowledged.
                let _ = writer.shutdown(std::net::Shutdown::Both);
            }
            let replied = replies
                .join()
                .map_err(|_| "the reply reader panicked".to_owned())?;
            written?;
            let mut paced = replied?;
            paced.late = late.0;
            paced.late_max_ms = late.1;
            Ok(paced)
        })
    }

    /// Reads one `+OK <epoch>-<seq>` reply and returns the sequence number.
    fn reply(&mut self) -> Result<u64, String> {
        self.line.clear();
        let n = self
            .stream
            .read_line(&mut self.line)
            .map_err(|e| format!("read from the ingest socket: {e}"))?;
        if n == 0 {
            return Err("the engine closed the ingest connection".into());
        }
        let reply = self.line.trim_end();
        reply
            .strip_prefix("+OK ")
            .and_then(|id| id.rsplit('-').next())
            .and_then(|seq| seq.parse().ok())
            .ok_or_else(|| format!("ingest reply {reply:?}"))
    }
}

/// The response head and opening of a baseline stream, as ringcast sends them.
const BASELINE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
Transfer-Encoding: chunked\r\n\r\nd\r\nretry: 3000\n\n\r\n";

/// The kernel baseline's server side: the accepted sockets, split among sender threads.
pub struct Baseline {
    shares: Vec<Vec<TcpStream>>,
}

/// Listens on a loopback port; returns its address and a thread that accepts `k`
/// subscribers, reads each request head and answers with an SSE response head.
///
/// # Errors
/// If the listener cannot be bound.
pub fn baseline_listen(
    k: usize,
) -> io::Result<(SocketAddrV4, thread::JoinHandle<io::Result<Vec<TcpStream>>>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let std::net::SocketAddr::V4(addr) = listener.local_addr()? else {
        return Err(io::Error::other("the loopback listener is not IPv4"));
    };
    let acceptor = thread::spawn(move || {
        let mut accepted = Vec::with_capacity(k);
        while accepted.len() < k {
            let (mut stream, _) = listener.accept()?;
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            stream.set_write_timeout(Some(IO_TIMEOUT))?;
            stream.set_nodelay(true)?;
            read_request_head(&mut stream)?;
            stream.write_all(BASELINE_HEAD)?;
            accepted.push(stream);
        }
        Ok(accepted)
    });
    Ok((addr, acceptor))
}

/// Reads up to the blank line that ends a request head (bounded to 16 KiB).
fn read_request_head(stream: &mut TcpStream) -> io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || stream.read(&mut byte)? == 0 {
            return Err(io::Error::other("no complete request head"));
        }
        head.push(byte[0]);
    }
    Ok(())
}

impl Baseline {
    /// Splits the accepted sockets among `senders` threads.
    pub fn new(accepted: Vec<TcpStream>, senders: usize) -> Baseline {
        let senders = senders.max(1);
        let mut shares: Vec<Vec<TcpStream>> = (0..senders).map(|_| Vec::new()).collect();
        for (i, s) in accepted.into_iter().enumerate() {
            shares[i % senders].push(s);
        }
        Baseline { shares }
    }

    /// Sends `count` events of `bytes` bytes at `rate` per second from now: event `i` is
    /// due at `start + i / rate`, stamped with that time, encoded once and written to
    /// every socket of each sender thread in turn (blocking) once due.
    ///
    /// # Errors
    /// The first failed write.
    pub fn send_paced(
        &mut self,
        first: u64,
        count: u64,
        bytes: usize,
        rate: f64,
        base: Instant,
    ) -> Result<(), String> {
        let start = Instant::now();
        thread::scope(|scope| {
            let handles: Vec<_> = self
                .shares
                .iter_mut()
                .map(|share| {
                    scope.spawn(move || -> Result<(), String> {
                        for i in 0..count {
                            let due = start + Duration::from_secs_f64(i as f64 / rate);
                            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                thread::sleep(wait);
                            }
                            let data = payload_at(due.duration_since(base).as_nanos(), i, bytes);
                            let chunk = sse_chunk(first + i + 1, &data);
                            for s in share.iter_mut() {
                                s.write_all(&chunk).map_err(|e| format!("baseline write: {e}"))?;
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("baseline sender panicked".into()))
            })
        })
    }

    /// Sends events `first..first + count` of `bytes` bytes: each sender thread takes
    /// them `batch` at a time (the engine too fans out up to 64 events per loop turn,
    /// gathered into one `sendmsg` per subscriber), encodes each once (an SSE event in
    /// one chunk, id `0-<index + 1>`) and writes the batch to each of its sockets in
    /// turn, blocking; `gate` is called with the index one past a batch before it is sent.
    ///
    /// # Errors
    /// The first failed write, or what `gate` returns.
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &mut self,
        first: u64,
        count: u64,
        bytes: usize,
        batch: usize,
        base: Instant,
        gate: &Gate<'_>,
    ) -> Result<(), String> {
        let batch = batch.max(1) as u64;
        thread::scope(|scope| {
            let handles: Vec<_> = self
                .shares
                .iter_mut()
                .map(|share| {
                    scope.spawn(move || -> Result<(), String> {
                        let end = first + count;
                        let mut next = first;
                        while next < end {
                            let n = batch.min(end - next);
                            gate(next + n)?;
                            let mut bytes_out = Vec::with_capacity(n as usize * (bytes + 64));
                            for i in next..next + n {
                                bytes_out.extend(sse_chunk(i + 1, &payload(base, i, bytes)));
                            }
                            for s in share.iter_mut() {
                                s.write_all(&bytes_out)
                                    .map_err(|e| format!("baseline write: {e}"))?;
                            }
                            next += n;
                        }
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().unwrap_or_else(|_| Err("a sender panicked".into())))
        })
    }
}

/// `id: 0-<seq>`, `data: <payload>` and a blank line, as one HTTP/1.1 chunk.
fn sse_chunk(seq: u64, data: &[u8]) -> Vec<u8> {
    let mut body = format!("id: 0-{seq}\ndata: ").into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(b"\n\n");
    let mut chunk = format!("{:x}\r\n", body.len()).into_bytes();
    chunk.extend_from_slice(&body);
    chunk.extend_from_slice(b"\r\n");
    chunk
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::scan::{Scan, Seen};

    #[test]
    fn baseline_bytes_scan_as_events() {
        let base = Instant::now();
        let mut stream = BASELINE_HEAD.to_vec();
        stream.extend(sse_chunk(1, &payload(base, 0, 1024)));
        stream.extend(sse_chunk(2, &payload(base, 1, 40)));
        let mut scan = Scan::default();
        let mut seen = Vec::new();
        scan.feed(&stream, &mut |s| seen.push(s)).expect("valid stream");
        assert_eq!(seen.len(), 2);
        assert!(matches!(
            seen[0],
            Seen::Event {
                seq: 1,
                sent_ns: Some(_)
            }
        ));
        assert!(matches!(
            seen[1],
            Seen::Event {
                seq: 2,
                sent_ns: Some(_)
            }
        ));
    }

    #[test]
    fn stamped_payloads_carry_the_given_time() {
        let p = payload_at(12_345, 3, 64);
        assert_eq!(p.len(), 64);
        assert!(p.starts_with(b"t=12345 i=3 x"));
        let mut scan = Scan::default();
        let mut stream = BASELINE_HEAD.to_vec();
        stream.extend(sse_chunk(9, &p));
        let mut seen = Vec::new();
        scan.feed(&stream, &mut |s| seen.push(s)).expect("valid stream");
        assert_eq!(
            seen,
            vec![Seen::Event {
                seq: 9,
                sent_ns: Some(12_345)
            }]
        );
    }

    #[test]
    fn payloads_have_the_requested_size_and_a_timestamp() {
        let base = Instant::now();
        let p = payload(base, 7, 1024);
        assert_eq!(p.len(), 1024);
        assert!(p.starts_with(b"t=") && p.windows(4).any(|w| w == b"i=7 "));
    }
}
