//! What `fanout` and `slow` read of one SSE subscription: of each event its sequence
//! number (the digits after the last `-` of `id:`), the send timestamp at the start of
//! its `data:` (`t=<nanoseconds>`), and the `dropped` count of a `ringcast.gap` notice.
//! The framing is [`crate::sse::Decoder`]'s, the one strict decoder of the bench.
//!
//! Never touches a socket or a clock.

use crate::sse::{parse_u64, split_id, Decoder, Item};

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

/// The reader's state for one stream; feed it the bytes in any split.
#[derive(Debug, Default)]
pub struct Scan {
    decoder: Decoder,
}

impl Scan {
    /// Whether the last chunk arrived.
    #[cfg(test)]
    pub fn is_done(&self) -> bool {
        self.decoder.is_done()
    }

    /// Consumes `input`, calling `seen` for every event completed (a block with data).
    ///
    /// # Errors
    /// The decoder's first framing error; the stream is unusable after it.
    pub fn feed(&mut self, input: &[u8], seen: &mut impl FnMut(Seen)) -> Result<(), String> {
        self.decoder.feed(input, &mut |item| {
            let Item::Block(block) = item else {
                return;
            };
            let Some(data) = block.data else {
                return;
            };
            seen(match block.event {
                Some(b"ringcast.gap") => Seen::Gap {
                    dropped: gap_dropped(data).unwrap_or(0),
                },
                Some(name) if name.starts_with(b"ringcast.") => Seen::Notice,
                _ => Seen::Event {
                    seq: block.id.map_or(0, |id| split_id(id).1),
                    sent_ns: data
                        .strip_prefix(b"t=")
                        .and_then(|rest| parse_u64(rest.split(|&b| b == b' ').next().unwrap_or_default())),
                },
            });
        })
    }
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
