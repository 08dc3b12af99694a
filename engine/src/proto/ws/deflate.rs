//! permessage-deflate (RFC 7692): the negotiation of the `Sec-WebSocket-Extensions` offers
//! a client sends (§5, §7.1), and the codec: raw DEFLATE with the trailing `00 00 ff ff`
//! of a sync flush removed (§7.2.1) and put back before inflating (§7.2.2).
//!
//! What ringcast agrees to is always the same: `server_no_context_takeover`, so each server
//! message is compressed on its own and one compressed frame of an event serves every
//! subscriber on every loop; and `client_no_context_takeover` (§7.1.1.2: a server MAY
//! include it whether or not the client offered it), so each client message inflates on its
//! own and a loop needs one inflater, not one per connection: an idle connection holds no
//! zlib state. Windows stay at 15 bits both ways. An offer we cannot honour (a
//! `server_max_window_bits` below 15, an unknown or repeated parameter, a malformed value)
//! is declined, never the handshake (§5).
//!
//! Owns: the offers' grammar, the response, and compressing and inflating one message.
//!
//! Must never: keep LZ77 context from one message to the next, or inflate past the bound
//! it is given (a decompression bomb stops at `max` + 1 bytes of output).
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::frame::{server_header_rsv1, Opcode};

/// The extension's name (§7).
const NAME: &str = "permessage-deflate";

/// The `Sec-WebSocket-Extensions` value of a 101 that accepts an offer.
pub const RESPONSE: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The trailer a sync flush ends with, removed from each compressed message (§7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// DEFLATE level for server messages. An event is compressed once however many
/// subscribers it has, so the default level's better ratio costs little.
const LEVEL: u32 = 6;

/// Whether some offer in the `Sec-WebSocket-Extensions` fields (`values`, in order, each a
/// comma-separated list) is a permessage-deflate offer we accept (§5.1: the server picks
/// one; we take the first we can honour).
#[must_use]
pub fn accepts_any<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> bool {
    values
        .into_iter()
        .any(|value| split_outside_quotes(value, b',').any(|offer| accepts(offer).unwrap_or(false)))
}

/// Whether one offer (`extension-token *( ";" extension-param )`, RFC 6455 §9.1) is a
/// permessage-deflate offer we accept. `None`: the offer is malformed.
fn accepts(offer: &[u8]) -> Option<bool> {
    let mut parts = split_outside_quotes(offer, b';');
    let name = parts.next()?.trim_ascii();
    if !is_token(name) {
        return None;
    }
    if !name.eq_ignore_ascii_case(NAME.as_bytes()) {
        return Some(false);
    }
    // Each parameter at most once (§7: "MUST NOT have ... duplicate parameters").
    let mut seen = [false; 4];
    for param in parts {
        let param = param.trim_ascii();
        let (key, value) = match param.iter().position(|&b| b == b'=') {
            Some(eq) => (
                param[..eq].trim_ascii(),
                Some(unquote(param[eq + 1..].trim_ascii())?),
            ),
            None => (param, None),
        };
        let slot = match key {
            b"server_no_context_takeover" => 0,
            b"client_no_context_takeover" => 1,
            b"server_max_window_bits" => 2,
            b"client_max_window_bits" => 3,
            _ => return Some(false),
        };
        if std::mem::replace(&mut seen[slot], true) {
            return Some(false);
        }
        let ok = match (slot, value) {
            // No value allowed (§7.1.1.1, §7.1.1.2).
            (0 | 1, None) => true,
            // §7.1.2.1: a value is required; we compress with 15-bit windows only, so a
            // smaller bound is one we cannot honour.
            (2, Some(v)) => window_bits(v) == Some(15),
            // §7.1.2.2: with or without a value; we inflate with a 15-bit window, which
            // reads any smaller window, so any valid value is fine.
            (3, None) => true,
            (3, Some(v)) => window_bits(v).is_some(),
            _ => false,
        };
        if !ok {
            return Some(false);
        }
    }
    Some(true)
}

/// 8-15 in decimal without leading zeros (§7.1.2.1).
fn window_bits(v: &[u8]) -> Option<u8> {
    match v {
        [d @ b'8'..=b'9'] => Some(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Some(10 + d - b'0'),
        _ => None,
    }
}

/// A parameter value as a token: a quoted-string is unquoted (RFC 6455 §9.1: its unescaped
/// value must then be a token). `None` for anything else.
fn unquote(v: &[u8]) -> Option<&[u8]> {
    let inner = match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    };
    // A backslash escape inside the quotes would make an unescaped copy necessary; no
    // valid value (digits) needs one, so it is refused.
    is_token(inner).then_some(inner)
}

/// RFC 9110 §5.6.2 `token`.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Splits on `sep` where it is not inside a quoted-string.
fn split_outside_quotes(s: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut quoted = false;
    let mut escaped = false;
    s.split(move |&b| {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        }
        !quoted && b == sep
    })
}

/// Why a compressed client message could not be inflated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflateError {
    /// More than the bound: close with 1009.
    TooBig,
    /// Not a valid DEFLATE stream: close with 1007.
    Invalid,
}

/// A loop's compressor and inflater, made on first use and reused for every message:
/// neither keeps context between messages, so one of each serves every connection.
#[derive(Default)]
pub struct Codec {
    compress: Option<Compress>,
    inflate: Option<Decompress>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("compress", &self.compress.is_some())
            .field("inflate", &self.inflate.is_some())
            .finish()
    }
}

impl Codec {
    /// One unfragmented server frame of `opcode` whose payload is `payload` compressed
    /// (RSV1 set, §6). It may be longer than the plain frame; a caller that minds sends
    /// the plain one instead, which is legal (§6 lets a sender leave any message
    /// uncompressed).
    pub fn frame(&mut self, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
        let c = self
            .compress
            .get_or_insert_with(|| Compress::new(Compression::new(LEVEL), false));
        c.reset();
        let mut body = Vec::with_capacity(payload.len() / 2 + 64);
        loop {
            let used = c.total_in() as usize;
            c.compress_vec(&payload[used..], &mut body, FlushCompress::Sync)
                .expect("raw deflate of a whole buffer cannot fail");
            if c.total_in() as usize == payload.len() && body.len() < body.capacity() {
                break;
            }
            body.reserve(body.capacity().max(64));
        }
        debug_assert!(body.ends_with(&TAIL), "a sync flush ends with 00 00 ff ff");
        body.truncate(body.len() - TAIL.len());
        let (header, n) = server_header_rsv1(opcode, body.len());
        let mut frame = Vec::with_capacity(n + body.len());
        frame.extend_from_slice(&header[..n]);
        frame.extend_from_slice(&body);
        frame
    }

    /// Inflates one whole compressed message into `out` (cleared first).
    ///
    /// # Errors
    ///
    /// [`InflateError::TooBig`] as soon as the output passes `max` bytes (the rest is not
    /// inflated), [`InflateError::Invalid`] for a corrupt stream.
    pub fn inflate(&mut self, input: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), InflateError> {
        let d = self.inflate.get_or_insert_with(|| Decompress::new(false));
        d.reset(false);
        out.clear();
        for part in [input, &TAIL[..]] {
            let start = d.total_in();
            loop {
                let used = (d.total_in() - start) as usize;
                if used == part.len() && out.len() < out.capacity() {
                    break;
                }
                if out.len() == out.capacity() {
                    if out.len() > max {
                        return Err(InflateError::TooBig);
                    }
                    // Grow towards max + 1: one byte past the bound proves the bomb.
                    let want = (out.capacity() * 2).max(256).min(max + 1);
                    out.reserve_exact(want - out.len());
                }
                let before = (d.total_in(), d.total_out());
                match d.decompress_vec(&part[used..], out, FlushDecompress::Sync) {
                    Ok(Status::StreamEnd) => break,
                    Ok(_) => {}
                    Err(_) => return Err(InflateError::Invalid),
                }
                if (d.total_in(), d.total_out()) == before && out.len() < out.capacity() {
                    // No progress with room to spare: the input is used up.
                    break;
                }
            }
        }
        if out.len() > max {
            return Err(InflateError::TooBig);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(v: &str) -> bool {
        accepts_any([v.as_bytes()])
    }

    #[test]
    fn offers_we_accept() {
        for v in [
            "permessage-deflate",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=10",
            "permessage-deflate; client_max_window_bits=\"8\"",
            "permessage-deflate; server_no_context_takeover",
            "permessage-deflate; client_no_context_takeover",
            "permessage-deflate;server_no_context_takeover;client_no_context_takeover",
            "permessage-deflate; server_max_window_bits=15",
            "permessage-deflate; server_max_window_bits=15; client_max_window_bits=15",
            "x-webkit-deflate-frame, permessage-deflate",
            "permessage-deflate; server_max_window_bits=10, permessage-deflate",
            "Permessage-Deflate",
        ] {
            assert!(offer(v), "{v}");
        }
        // The first of several fields may hold nothing we accept.
        assert!(accepts_any([&b"foo"[..], b"permessage-deflate"]));
    }

    #[test]
    fn offers_we_decline() {
        for v in [
            "",
            "foo",
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=08",
            "permessage-deflate; client_max_window_bits=",
            "permessage-deflate; client_max_window_bits=1 0",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=\"\"",
            "permessage-deflate; unknown_param",
            "permessage-deflate; client_max_window_bits=\"1\\5\"",
            "permessage-deflate; client_max_window_bits=\"15",
            "permessage-deflate x",
            "\"permessage-deflate\"",
            ";permessage-deflate",
        ] {
            assert!(!offer(v), "{v}");
        }
    }

    #[test]
    fn window_bits_are_8_to_15() {
        for n in 0..=99u32 {
            let s = n.to_string();
            let expect = (8..=15).contains(&n).then_some(n as u8);
            assert_eq!(window_bits(s.as_bytes()), expect, "{s}");
        }
    }

    /// The payload of a compressed frame made by [`Codec::frame`].
    fn body(frame: &[u8]) -> &[u8] {
        let n = match frame[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        &frame[n..]
    }

    #[test]
    fn frames_round_trip_and_set_rsv1() {
        let mut codec = Codec::default();
        let text: Vec<u8> = br#"{"id":"1-2","topic":"news","data":"hello hello hello hello"}"#.repeat(40);
        for len in [0, 1, 100, 125, 126, 1000, text.len()] {
            let payload = &text[..len];
            let frame = codec.frame(Opcode::Text, payload);
            assert!(
                len < 200 || body(&frame).len() * 4 < len,
                "{len} bytes of repetitive JSON"
            );
            assert_eq!(frame[0], 0x80 | 0x40 | 0x1, "FIN, RSV1, text");
            let mut out = Vec::new();
            codec.inflate(body(&frame), 1 << 20, &mut out).unwrap();
            assert_eq!(out, payload);
        }
        // RFC 7692 §7.2.3.1: "Hello" compresses to these bytes (context-free).
        let frame = codec.frame(Opcode::Text, b"Hello");
        assert_eq!(frame, [0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
        let mut out = Vec::new();
        codec
            .inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100, &mut out)
            .unwrap();
        assert_eq!(out, b"Hello");
        // §7.2.3.6: the empty message.
        assert_eq!(codec.frame(Opcode::Binary, b""), [0xc2, 0x01, 0x00]);
        codec.inflate(&[0x00], 100, &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn messages_do_not_share_context() {
        let mut codec = Codec::default();
        let payload = b"abcdefghijklmnopqrstuvwxyz0123456789".repeat(10);
        let a = codec.frame(Opcode::Binary, &payload);
        let b = codec.frame(Opcode::Binary, &payload);
        // With context the second would be a back-reference to the first.
        assert_eq!(a, b);
        let mut fresh = Codec::default();
        let mut out = Vec::new();
        fresh.inflate(body(&b), 1 << 20, &mut out).unwrap();
        assert_eq!(out, payload);
    }

    #[test]
    fn inflate_is_bounded() {
        let mut codec = Codec::default();
        let zeros = vec![0u8; 1 << 20];
        let frame = codec.frame(Opcode::Binary, &zeros);
        assert!(body(&frame).len() < 2000, "{}", body(&frame).len());
        let mut out = Vec::new();
        for max in [0, 1, 1000, (1 << 20) - 1] {
            assert_eq!(
                codec.inflate(body(&frame), max, &mut out),
                Err(InflateError::TooBig),
                "{max}"
            );
            assert!(
                out.capacity() <= (max + 1).max(256) * 2,
                "{max}: {}",
                out.capacity()
            );
        }
        codec.inflate(body(&frame), 1 << 20, &mut out).unwrap();
        assert_eq!(out.len(), 1 << 20);
        assert_eq!(
            codec.inflate(&[0xff, 0xff, 0xff], 100, &mut out),
            Err(InflateError::Invalid)
        );
    }
}
