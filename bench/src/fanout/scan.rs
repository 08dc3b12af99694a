//! Sans-IO reader of one SSE subscription as `fanout` needs it: the response head, the
//! chunked transfer coding (RFC 9112 §7.1), and of each event only what the bench
//! measures: its sequence number (the digits after the last `-` of `id:`), the send
//! timestamp at the start of its `data:` (`t=<nanoseconds>`), and the `dropped` count of
//! a `ringcast.gap` notice. The rest of every line is skipped without being copied, so
//! a reader thread keeps up with thousands of streams.
//!
//! Lines end in LF, as ringcast and the kernel baseline write them (a CR before the LF
//! is ignored). Never touches a socket or a clock.

/// Longest response head accepted.
const HEAD_MAX: usize = 16 * 1024;
/// Bytes of each line kept for parsing: enough for an id, a timestamp, a gap's data.
const LINE_KEEP: usize = 256;

/// What a completed event was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// An event: its sequence number (0 without an id) and its send timestamp (`None`
    /// when the data does not start with `t=<digits>`).
    Event { seq: u64, sent_ns: Option<u64> },
    /// A `ringcast.gap` notice: events the server says this stream missed.
    Gap { dropped: u64 },
    /// Any other notice (`ringcast.slow`, `ringcast.reset`).
    Notice,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Head,
    Size,
    Data(usize),
    DataEnd,
    Trailer,
    Done,
}

/// The reader's state for one stream; feed it the bytes in any split.
#[derive(Debug)]
pub struct Scan {
    state: State,
    /// The head, a chunk-size line, or a chunk's trailing CRLF being gathered.
    framing: Vec<u8>,
    /// The first [`LINE_KEEP`] bytes of the SSE line being read.
    line: Vec<u8>,
    seq: u64,
    is_gap: bool,
    is_notice: bool,
    has_data: bool,
    data: Vec<u8>,
}

impl Default for Scan {
    fn default() -> Self {
        Scan {
            state: State::Head,
            framing: Vec::new(),
            line: Vec::with_capacity(LINE_KEEP),
            seq: 0,
            is_gap: false,
            is_notice: false,
            has_data: false,
            data: Vec::with_capacity(64),
        }
    }
}

impl Scan {
    /// Whether the last chunk arrived.
    #[cfg(test)]
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes `input`, calling `seen` for every event completed.
    ///
    /// # Errors
    /// A description of the first framing error (a status other than 200, a bad chunk
    /// size, a chunk not followed by CRLF, bytes after the last chunk); the stream is
    /// unusable after it.
    pub fn feed(&mut self, mut input: &[u8], seen: &mut impl FnMut(Seen)) -> Result<(), String> {
        while !input.is_empty() {
            input = match self.state {
                State::Head => self.head(input)?,
                State::Size => self.size(input)?,
                State::Data(left) => {
                    let n = left.min(input.len());
                    self.lines(&input[..n], seen);
                    self.state = if n == left {
                        State::DataEnd
                    } else {
                        State::Data(left - n)
                    };
                    &input[n..]
                }
                State::DataEnd => self.data_end(input)?,
                State::Trailer => self.trailer(input)?,
                State::Done => return Err(format!("{} bytes after the last chunk", input.len())),
            };
        }
        Ok(())
    }

    fn head<'a>(&mut self, input: &'a [u8]) -> Result<&'a [u8], String> {
        let before = self.framing.len();
        self.framing.extend_from_slice(input);
        // The end may straddle the previous feed: search from three bytes back.
        let from = before.saturating_sub(3);
        let Some(at) = self.framing[from..].windows(4).position(|w| w == b"\r\n\r\n") else {
            if self.framing.len() > HEAD_MAX {
                return Err(format!("response head over {HEAD_MAX} bytes"));
            }
            return Ok(&[]);
        };
        let end = from + at + 4;
        if !self.framing.starts_with(b"HTTP/1.1 200 ") {
            let line = self.framing.split(|&b| b == b'\r').next().unwrap_or_default();
            return Err(format!("status line {:?}", String::from_utf8_lossy(line)));
        }
        let chunked = String::from_utf8_lossy(&self.framing[..end])
            .to_ascii_lowercase()
            .contains("\r\ntransfer-encoding: chunked\r\n");
        if !chunked {
            return Err("the response is not chunked".into());
        }
        let used = end - before;
        self.framing.clear();
        self.state = State::Size;
        Ok(&input[used..])
    }

    /// Gathers a line of framing up to its LF; `None` until it is complete.
    fn framing_line<'a>(&mut self, input: &'a [u8]) -> Result<(Option<Vec<u8>>, &'a [u8]), String> {
        match input.iter().position(|&b| b == b'\n') {
            Some(at) => {
                self.framing.extend_from_slice(&input[..at]);
                let mut line = std::mem::take(&mut self.framing);
                if line.pop() != Some(b'\r') {
                    return Err(format!(
                        "chunk framing line not ended by CRLF: {:?}",
                        String::from_utf8_lossy(&line)
                    ));
                }
                Ok((Some(line), &input[at + 1..]))
            }
            None => {
                self.framing.extend_from_slice(input);
                if self.framing.len() > 1024 {
                    return Err("chunk framing line over 1024 bytes".into());
                }
                Ok((None, &[]))
            }
        }
    }

    fn size<'a>(&mut self, input: &'a [u8]) -> Result<&'a [u8], String> {
        let (line, rest) = self.framing_line(input)?;
        if let Some(line) = line {
            let digits = line.split(|&b| b == b';').next().unwrap_or_default();
            let text = std::str::from_utf8(digits).unwrap_or("");
            let size = usize::from_str_radix(text, 16)
                .map_err(|_| format!("bad chunk size line {:?}", String::from_utf8_lossy(&line)))?;
            self.state = if size == 0 {
                State::Trailer
            } else {
                State::Data(size)
            };
        }
        Ok(rest)
    }

    fn data_end<'a>(&mut self, input: &'a [u8]) -> Result<&'a [u8], String> {
        let (line, rest) = self.framing_line(input)?;
        if let Some(line) = line {
            if !line.is_empty() {
                return Err("chunk data longer than its size".into());
            }
            self.state = State::Size;
        }
        Ok(rest)
    }

    fn trailer<'a>(&mut self, input: &'a [u8]) -> Result<&'a [u8], String> {
        let (line, rest) = self.framing_line(input)?;
        if line.is_some_and(|l| l.is_empty()) {
            self.state = State::Done;
        }
        Ok(rest)
    }

    /// SSE lines inside chunk data.
    fn lines(&mut self, mut data: &[u8], seen: &mut impl FnMut(Seen)) {
        while !data.is_empty() {
            let (part, ended) = match data.iter().position(|&b| b == b'\n') {
                Some(at) => (&data[..at], Some(at + 1)),
                None => (data, None),
            };
            let room = LINE_KEEP - self.line.len();
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            let Some(used) = ended else {
                return;
            };
            data = &data[used..];
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.line_done(&line, seen);
            line.clear();
            self.line = line;
        }
    }

    /// One SSE line (WHATWG HTML §9.2.6), reduced to what the bench measures.
    fn line_done(&mut self, line: &[u8], seen: &mut impl FnMut(Seen)) {
        if line.is_empty() {
            self.dispatch(seen);
        } else if let Some(id) = line.strip_prefix(b"id: ") {
            let digits = id.rsplit(|&b| b == b'-').next().unwrap_or_default();
            self.seq = parse_u64(digits).unwrap_or(0);
        } else if let Some(name) = line.strip_prefix(b"event: ") {
            self.is_gap = name == b"ringcast.gap";
            self.is_notice = name.starts_with(b"ringcast.");
        } else if let Some(data) = line.strip_prefix(b"data: ") {
            if !self.has_data {
                self.data.clear();
                self.data.extend_from_slice(&data[..data.len().min(LINE_KEEP)]);
            }
            self.has_data = true;
        }
    }

    fn dispatch(&mut self, seen: &mut impl FnMut(Seen)) {
        if self.has_data {
            seen(if self.is_gap {
                Seen::Gap {
                    dropped: gap_dropped(&self.data).unwrap_or(0),
                }
            } else if self.is_notice {
                Seen::Notice
            } else {
                let sent_ns = self
                    .data
                    .strip_prefix(b"t=")
                    .and_then(|rest| parse_u64(rest.split(|&b| b == b' ').next().unwrap_or_default()));
                Seen::Event {
                    seq: self.seq,
                    sent_ns,
                }
            });
        }
        self.has_data = false;
        self.is_gap = false;
        self.is_notice = false;
    }
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// The `"dropped":N` of a gap notice's data.
fn gap_dropped(data: &[u8]) -> Option<u64> {
    let key = b"\"dropped\":";
    let at = data.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = data[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    parse_u64(&digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";

    fn chunk(body: &str) -> Vec<u8> {
        let mut out = format!("{:x}\r\n", body.len()).into_bytes();
        out.extend_from_slice(body.as_bytes());
        out.extend_from_slice(b"\r\n");
        out
    }

    fn stream() -> Vec<u8> {
        let mut s = HEAD.to_vec();
        s.extend(chunk("retry: 3000\n\n"));
        s.extend(chunk("id: 19a2f-7\ndata: t=123456 i=1 xxxx\n\n"));
        s.extend(chunk(
            "event: ringcast.gap\ndata: {\"topic\":\"f\",\"dropped\":42,\"first_id\":\"19a2f-8\",\"last_id\":\"19a2f-60\"}\n\n",
        ));
        s.extend(chunk(": heartbeat\n"));
        s.extend(chunk(&format!(
            "id: 19a2f-61\ndata: t=99 {}\n\n",
            "y".repeat(2000)
        )));
        s.extend(chunk("id: 19a2f-62\ndata: no timestamp\n\n"));
        s.extend(chunk("event: ringcast.slow\ndata: {}\n\n"));
        s.extend(b"0\r\n\r\n");
        s
    }

    const EXPECTED: [Seen; 5] = [
        Seen::Event {
            seq: 7,
            sent_ns: Some(123_456),
        },
        Seen::Gap { dropped: 42 },
        Seen::Event {
            seq: 61,
            sent_ns: Some(99),
        },
        Seen::Event {
            seq: 62,
            sent_ns: None,
        },
        Seen::Notice,
    ];

    fn run(parts: &[&[u8]]) -> (Vec<Seen>, bool) {
        let mut scan = Scan::default();
        let mut got = Vec::new();
        for part in parts {
            scan.feed(part, &mut |s| got.push(s)).expect("valid stream");
        }
        (got, scan.is_done())
    }

    #[test]
    fn any_split_reads_like_the_whole() {
        let bytes = stream();
        assert_eq!(run(&[&bytes]), (EXPECTED.to_vec(), true));
        for at in 0..=bytes.len() {
            let (a, b) = bytes.split_at(at);
            assert_eq!(run(&[a, b]), (EXPECTED.to_vec(), true), "split at {at}");
        }
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run(&bytewise), (EXPECTED.to_vec(), true));
    }

    #[test]
    fn framing_errors_are_reported() {
        let mut scan = Scan::default();
        let err = scan
            .feed(b"HTTP/1.1 404 Not Found\r\n\r\n", &mut |_| {})
            .expect_err("not 200");
        assert!(err.contains("404"), "{err}");
        let mut scan = Scan::default();
        let mut bad = HEAD.to_vec();
        bad.extend_from_slice(b"zz\r\n");
        assert!(scan.feed(&bad, &mut |_| {}).is_err());
        let mut scan = Scan::default();
        let mut long = HEAD.to_vec();
        long.extend_from_slice(b"3\r\nabcd\r\n");
        assert!(scan.feed(&long, &mut |_| {}).is_err());
        let mut scan = Scan::default();
        let plain = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n";
        assert!(scan.feed(plain, &mut |_| {}).is_err());
    }
}
