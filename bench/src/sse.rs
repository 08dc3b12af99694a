//! The one decoder of an SSE response that every subcommand reads streams with: the
//! response head, the chunked transfer coding (RFC 9112 §7.1) and the SSE event blocks
//! (WHATWG HTML §9.2.6) inside it, reduced to each block's `id:`, `event:` and first
//! `data:` line (each cut at [`LINE_KEEP`] bytes). The rest of every line is skipped
//! without being copied, so one reader thread keeps up with thousands of streams.
//!
//! Strict: the status must be `200` and the body chunked; every chunk-size line and every
//! chunk's end must be CRLF; a chunk longer than its size, bytes after the last chunk and
//! a head over [`HEAD_MAX`] are errors. SSE lines end in LF, as ringcast and the kernel
//! baseline write them (a CR before the LF is dropped).
//!
//! Must never: touch a socket or a clock, or allocate per byte.

/// Longest response head accepted.
pub const HEAD_MAX: usize = 16 * 1024;
/// Bytes of each SSE line kept for the caller: enough for an id, a timestamp, a gap's data.
pub const LINE_KEEP: usize = 256;
/// Longest chunk framing line (size, extensions) accepted.
const FRAMING_MAX: usize = 1024;

/// One completed event block: the fields it had (the values after `id: `, `event: ` and
/// the first `data: `).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block<'a> {
    pub id: Option<&'a [u8]>,
    pub event: Option<&'a [u8]>,
    pub data: Option<&'a [u8]>,
}

/// What the decoder found in the bytes fed to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// The response head: status 200, chunked.
    Head,
    /// A block ended by a blank line that had at least one of `id:`, `event:`, `data:`.
    Block(Block<'a>),
    /// The last chunk (size 0) and its trailer: the server ended the stream.
    End,
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

/// One field of the block being read: its first [`LINE_KEEP`] bytes, and whether it was seen.
#[derive(Debug, Default)]
struct Field {
    seen: bool,
    value: Vec<u8>,
}

impl Field {
    fn set(&mut self, value: &[u8]) {
        self.seen = true;
        self.value.clear();
        self.value.extend_from_slice(value);
    }

    fn get(&self) -> Option<&[u8]> {
        self.seen.then_some(&self.value[..])
    }
}

/// The decoder's state for one stream; feed it the bytes in any split.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    /// The head, a chunk-size line, or a chunk's trailing CRLF being gathered.
    framing: Vec<u8>,
    /// The first [`LINE_KEEP`] bytes of the SSE line being read.
    line: Vec<u8>,
    id: Field,
    event: Field,
    data: Field,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            state: State::Head,
            framing: Vec::new(),
            line: Vec::with_capacity(LINE_KEEP),
            id: Field::default(),
            event: Field::default(),
            data: Field::default(),
        }
    }
}

impl Decoder {
    /// Whether the last chunk arrived.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes `input`, calling `found` for the head, every block completed and the end.
    ///
    /// # Errors
    /// A description of the first framing error (a status other than 200, a body not
    /// chunked, a bad chunk size, a chunk not followed by CRLF, bytes after the last
    /// chunk); the stream is unusable after it.
    pub fn feed(&mut self, mut input: &[u8], found: &mut impl FnMut(Item<'_>)) -> Result<(), String> {
        while !input.is_empty() {
            input = match self.state {
                State::Head => self.head(input, found)?,
                State::Size => self.size(input)?,
                State::Data(left) => {
                    let n = left.min(input.len());
                    self.lines(&input[..n], found);
                    self.state = if n == left {
                        State::DataEnd
                    } else {
                        State::Data(left - n)
                    };
                    &input[n..]
                }
                State::DataEnd => self.data_end(input)?,
                State::Trailer => self.trailer(input, found)?,
                State::Done => return Err(format!("{} bytes after the last chunk", input.len())),
            };
        }
        Ok(())
    }

    fn head<'a>(&mut self, input: &'a [u8], found: &mut impl FnMut(Item<'_>)) -> Result<&'a [u8], String> {
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
            return Err(format!("status {}", String::from_utf8_lossy(line)));
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
        found(Item::Head);
        Ok(&input[used..])
    }

    /// Gathers a line of framing up to its CRLF; `None` until it is complete.
    fn framing_line<'a>(&mut self, input: &'a [u8]) -> Result<(Option<Vec<u8>>, &'a [u8]), String> {
        let Some(at) = input.iter().position(|&b| b == b'\n') else {
            self.framing.extend_from_slice(input);
            if self.framing.len() > FRAMING_MAX {
                return Err(format!("chunk framing line over {FRAMING_MAX} bytes"));
            }
            return Ok((None, &[]));
        };
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

    fn size<'a>(&mut self, input: &'a [u8]) -> Result<&'a [u8], String> {
        let (line, rest) = self.framing_line(input)?;
        if let Some(line) = line {
            let digits = line.split(|&b| b == b';').next().unwrap_or_default();
            let size = std::str::from_utf8(digits)
                .ok()
                .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|t| usize::from_str_radix(t, 16).ok())
                .ok_or_else(|| format!("bad chunk size line {:?}", String::from_utf8_lossy(&line)))?;
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

    fn trailer<'a>(&mut self, input: &'a [u8], found: &mut impl FnMut(Item<'_>)) -> Result<&'a [u8], String> {
        let (line, rest) = self.framing_line(input)?;
        if line.is_some_and(|l| l.is_empty()) {
            self.state = State::Done;
            found(Item::End);
        }
        Ok(rest)
    }

    /// SSE lines inside chunk data.
    fn lines(&mut self, mut data: &[u8], found: &mut impl FnMut(Item<'_>)) {
        while !data.is_empty() {
            let (part, ended) = match data.iter().position(|&b| b == b'\n') {
                Some(at) => (&data[..at], Some(at + 1)),
                None => (data, None),
            };
            let room = LINE_KEEP + 1 - self.line.len().min(LINE_KEEP + 1);
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            let Some(used) = ended else {
                return;
            };
            data = &data[used..];
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            line.truncate(LINE_KEEP);
            self.line_done(&line, found);
            line.clear();
            self.line = line;
        }
    }

    /// One SSE line: a blank line ends the block; comments and other fields are skipped.
    fn line_done(&mut self, line: &[u8], found: &mut impl FnMut(Item<'_>)) {
        if line.is_empty() {
            if self.id.seen || self.event.seen || self.data.seen {
                found(Item::Block(Block {
                    id: self.id.get(),
                    event: self.event.get(),
                    data: self.data.get(),
                }));
            }
            self.id.seen = false;
            self.event.seen = false;
            self.data.seen = false;
        } else if let Some(id) = line.strip_prefix(b"id: ") {
            self.id.set(id);
        } else if let Some(name) = line.strip_prefix(b"event: ") {
            self.event.set(name);
        } else if let Some(data) = line.strip_prefix(b"data: ") {
            // Only the first data line: the bench's payloads start with what it measures.
            if !self.data.seen {
                self.data.set(data);
            }
        }
    }
}

/// The decimal number in `digits` (at most 19 digits, nothing else).
pub fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// An id `<epoch>-<seq>` split at its last `-` (no `-`: an empty epoch).
pub fn split_id(id: &[u8]) -> (&[u8], u64) {
    let (epoch, seq) = match id.iter().rposition(|&b| b == b'-') {
        Some(cut) => (&id[..cut], &id[cut + 1..]),
        None => (&id[..0], id),
    };
    (epoch, parse_u64(seq).unwrap_or(0))
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

    /// Each item as text: `head`, `end`, or `id|event|data` with `-` for a missing field.
    fn run(parts: &[&[u8]]) -> Result<Vec<String>, String> {
        let mut d = Decoder::default();
        let mut got = Vec::new();
        let show = |f: Option<&[u8]>| f.map_or("-".to_owned(), |v| String::from_utf8_lossy(v).into_owned());
        for part in parts {
            d.feed(part, &mut |item| {
                got.push(match item {
                    Item::Head => "head".to_owned(),
                    Item::End => "end".to_owned(),
                    Item::Block(b) => format!("{}|{}|{}", show(b.id), show(b.event), show(b.data)),
                })
            })?;
        }
        Ok(got)
    }

    fn stream() -> Vec<u8> {
        let mut s = HEAD.to_vec();
        s.extend(chunk("retry: 3000\n\n"));
        s.extend(chunk("id: e1-7\ndata: t=1 a\ndata: second\n\n: comment\n"));
        s.extend(chunk("event: ringcast.gap\r\ndata: {\"dropped\":4}\r\n\r\n"));
        s.extend(chunk(&format!("id: e1-8\ndata: {}\n\n", "y".repeat(2000))));
        s.extend(b"0\r\n\r\n");
        s
    }

    fn expected() -> Vec<String> {
        vec![
            "head".into(),
            "e1-7|-|t=1 a".into(),
            "-|ringcast.gap|{\"dropped\":4}".into(),
            // A kept line is LINE_KEEP bytes including its `data: ` prefix.
            format!("e1-8|-|{}", "y".repeat(LINE_KEEP - "data: ".len())),
            "end".into(),
        ]
    }

    #[test]
    fn any_split_decodes_like_the_whole() {
        let bytes = stream();
        let want = expected();
        assert_eq!(run(&[&bytes]), Ok(want.clone()));
        for at in 0..=bytes.len() {
            let (a, b) = bytes.split_at(at);
            assert_eq!(run(&[a, b]), Ok(want.clone()), "split at {at}");
        }
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run(&bytewise), Ok(want));
    }

    #[test]
    fn framing_errors_are_reported() {
        let with = |tail: &[u8]| {
            let mut s = HEAD.to_vec();
            s.extend_from_slice(tail);
            run(&[&s])
        };
        let err = run(&[b"HTTP/1.1 404 Not Found\r\n\r\n"]).expect_err("not 200");
        assert!(err.contains("404"), "{err}");
        assert!(run(&[b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"]).is_err());
        assert!(with(b"zz\r\n").is_err(), "bad size");
        assert!(with(b"\r\n").is_err(), "empty size");
        assert!(with(b"3\nabc\r\n").is_err(), "size line without CR");
        assert!(with(b"3\r\nabcd\r\n").is_err(), "chunk longer than its size");
        assert!(with(b"0\r\n\r\nx").is_err(), "bytes after the last chunk");
        assert!(with(&[b'1'; 2000]).is_err(), "framing line too long");
    }

    #[test]
    fn ids_split_at_the_last_dash() {
        assert_eq!(split_id(b"19a2f-61"), (&b"19a2f"[..], 61));
        assert_eq!(split_id(b"a-b-3"), (&b"a-b"[..], 3));
        assert_eq!(split_id(b"42"), (&b""[..], 42));
        assert_eq!(split_id(b"e-x"), (&b"e"[..], 0));
        assert_eq!(parse_u64(b"18446744073709551615"), None, "20 digits");
    }
}
