//! A reference decoder for the frames a client sends (RFC 6455 §5), written for clarity
//! rather than speed: it sees the whole stream at once, so it has no partial state to get
//! wrong. The engine's incremental decoder must agree with it on every stream.
//!
//! Where the RFC leaves the moment of failure open, this follows what the engine
//! documents: a rule is checked as soon as the bytes that decide it are there, so text
//! that can no longer become UTF-8 fails before its frame has arrived whole.

/// A message or control frame, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, Vec<u8>),
}

/// How a stream ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The stream ran out. `idle` when it ended on a frame boundary outside a fragmented
    /// message, so a decoder should hold nothing.
    Incomplete { idle: bool },
    /// A close frame was decoded; nothing after it is looked at (§5.5.1).
    Closed,
    /// The connection fails with this close code (§7.1.7).
    Fail(u16),
}

const PROTOCOL: u16 = 1002;
const INVALID_DATA: u16 = 1007;
const TOO_BIG: u16 = 1009;

/// Close codes an endpoint may receive (§7.4.1, §7.4.2; the IANA registry up to 1014).
fn close_code_ok(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Whether `text` may still become UTF-8 when more bytes follow.
fn utf8_so_far(text: &[u8]) -> bool {
    match std::str::from_utf8(text) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

/// Decodes `stream` with messages of at most `max_message` bytes.
#[must_use]
pub fn decode(stream: &[u8], max_message: usize) -> (Vec<Msg>, End) {
    let mut out = Vec::new();
    let end = decode_into(stream, max_message, &mut out);
    (out, end)
}

fn decode_into(stream: &[u8], max_message: usize, out: &mut Vec<Msg>) -> End {
    // The fragmented message in progress: whether it is text, and its bytes so far.
    let mut message: Option<(bool, Vec<u8>)> = None;
    let mut s = stream;
    loop {
        let idle = message.is_none();
        let [b0, b1, ..] = *s else {
            return End::Incomplete {
                idle: idle && s.is_empty(),
            };
        };
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        let control = opcode & 0x8 != 0;
        let len7 = b1 & 0x7f;
        let start_ok = b0 & 0x70 == 0
            && matches!(opcode, 0x0..=0x2 | 0x8..=0xa)
            && b1 & 0x80 != 0
            && (!control || (fin && len7 <= 125))
            && (control || (opcode == 0) == message.is_some());
        if !start_ok {
            return End::Fail(PROTOCOL);
        }
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let Some(header) = s.get(..2 + ext + 4) else {
            return End::Incomplete { idle: false };
        };
        let len = match ext {
            2 => u64::from(u16::from_be_bytes([header[2], header[3]])),
            8 => u64::from_be_bytes(header[2..10].try_into().expect("8 bytes")),
            _ => u64::from(len7),
        };
        if len >= 1 << 63 {
            return End::Fail(PROTOCOL);
        }
        let so_far = message.as_ref().map_or(0, |(_, bytes)| bytes.len() as u64);
        if !control && so_far.saturating_add(len) > max_message as u64 {
            return End::Fail(TOO_BIG);
        }
        let key = &header[2 + ext..];
        let body = &s[header.len()..];
        let have = usize::try_from(len).map_or(body.len(), |len| len.min(body.len()));
        let payload: Vec<u8> = body[..have]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        let whole = have as u64 == len;
        if control {
            if !whole {
                return End::Incomplete { idle: false };
            }
            match opcode {
                0x8 => return close(payload, out),
                0x9 => out.push(Msg::Ping(payload)),
                _ => out.push(Msg::Pong(payload)),
            }
        } else {
            let (text, mut bytes) = message.take().unwrap_or((opcode == 0x1, Vec::new()));
            bytes.extend_from_slice(&payload);
            if text && !utf8_so_far(&bytes) {
                return End::Fail(INVALID_DATA);
            }
            if !whole {
                return End::Incomplete { idle: false };
            }
            if !fin {
                message = Some((text, bytes));
            } else if !text {
                out.push(Msg::Binary(bytes));
            } else if std::str::from_utf8(&bytes).is_ok() {
                out.push(Msg::Text(bytes));
            } else {
                return End::Fail(INVALID_DATA);
            }
        }
        s = &body[have..];
    }
}

/// A close frame's payload: empty, or a valid code and a UTF-8 reason (§5.5.1).
fn close(payload: Vec<u8>, out: &mut Vec<Msg>) -> End {
    match *payload.as_slice() {
        [] => out.push(Msg::Close(None, Vec::new())),
        [_] => return End::Fail(PROTOCOL),
        [hi, lo, ref reason @ ..] => {
            let code = u16::from_be_bytes([hi, lo]);
            if !close_code_ok(code) {
                return End::Fail(PROTOCOL);
            }
            if std::str::from_utf8(reason).is_err() {
                return End::Fail(INVALID_DATA);
            }
            out.push(Msg::Close(Some(code), reason.to_vec()));
        }
    }
    End::Closed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let key = [1, 2, 3, 4];
        let mut out = vec![b0, 0x80 | payload.len() as u8];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    #[test]
    fn fragments_and_control_frames() {
        let mut s = frame(0x01, b"he");
        s.extend(frame(0x89, b"p"));
        s.extend(frame(0x80, b"llo"));
        s.extend(frame(0x88, &[0x03, 0xe8, b'o', b'k']));
        s.extend(frame(0x82, b"after close"));
        let (msgs, end) = decode(&s, 100);
        assert_eq!(
            msgs,
            [
                Msg::Ping(b"p".to_vec()),
                Msg::Text(b"hello".to_vec()),
                Msg::Close(Some(1000), b"ok".to_vec())
            ]
        );
        assert_eq!(end, End::Closed);
    }

    #[test]
    fn failures() {
        assert_eq!(decode(&[0x81, 0x00], 10).1, End::Fail(PROTOCOL), "unmasked");
        assert_eq!(decode(&frame(0xc1, b""), 10).1, End::Fail(PROTOCOL), "rsv1");
        assert_eq!(
            decode(&frame(0x80, b""), 10).1,
            End::Fail(PROTOCOL),
            "lone continuation"
        );
        assert_eq!(
            decode(&frame(0x09, b""), 10).1,
            End::Fail(PROTOCOL),
            "fragmented ping"
        );
        assert_eq!(decode(&frame(0x81, b"toolong"), 3).1, End::Fail(TOO_BIG));
        assert_eq!(
            decode(&frame(0x88, &[3]), 3).1,
            End::Fail(PROTOCOL),
            "1-byte close"
        );
        assert_eq!(
            decode(&frame(0x88, &[3, 0xed]), 3).1,
            End::Fail(PROTOCOL),
            "code 1005"
        );
        // 0xff can start no UTF-8 sequence: failed before the frame is whole.
        let bad = frame(0x81, &[b'a', 0xff, b'b']);
        assert_eq!(decode(&bad[..8], 10).1, End::Fail(INVALID_DATA));
        // A cut code point is fine until the message ends.
        let cut = frame(0x81, &[0xe2, 0x82]);
        assert_eq!(decode(&cut[..7], 10).1, End::Incomplete { idle: false });
        assert_eq!(decode(&cut, 10).1, End::Fail(INVALID_DATA));
        assert_eq!(
            decode(&frame(0x8a, b"x"), 0),
            (vec![Msg::Pong(b"x".to_vec())], End::Incomplete { idle: true })
        );
    }
}
