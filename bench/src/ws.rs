//! The WebSocket side of `hold --transport ws`, sans-IO: the upgrade request with a
//! random key (RFC 6455 §4.1), recognition of a correct 101 answer (§4.2.2, including
//! `Sec-WebSocket-Accept`), and the frames a held connection may receive, answering each
//! ping with a masked pong (§5.5.2-§5.5.3).
//!
//! SHA-1 (FIPS 180-4) and base64 (RFC 4648 §4) are written out here, a few dozen lines,
//! so that the bench does not grow its dependency list for a handshake; both are
//! checked against the published test vectors and the RFC 6455 §1.3 sample.
//!
//! Never touches a socket or a clock.

use crate::handshake::{Refusal, Scan, HEADERS_MAX, RESPONSE_BYTES_MAX};

/// The GUID of RFC 6455 §1.3 appended to the key before hashing.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Length of a base64-encoded 16-byte key.
pub const KEY_LEN: usize = 24;

/// Bound on the bytes a held connection may leave unparsed (a frame still arriving):
/// an idle subscriber receives only pings, of at most 127 bytes.
pub const HELD_PENDING_MAX: usize = 64 * 1024;

/// Encodes 16 random bytes as a `Sec-WebSocket-Key`.
pub fn key_from(nonce: [u8; 16]) -> [u8; KEY_LEN] {
    let text = base64(&nonce);
    let mut key = [0u8; KEY_LEN];
    key.copy_from_slice(text.as_bytes());
    key
}

/// The `Sec-WebSocket-Accept` value a server must answer `key` with.
pub fn accept_for(key: &[u8]) -> String {
    let mut input = Vec::with_capacity(key.len() + GUID.len());
    input.extend_from_slice(key);
    input.extend_from_slice(GUID);
    base64(&sha1(&input))
}

/// The upgrade request for `path` on `host` with `key`.
pub fn upgrade_request(path: &str, host: &str, key: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
    )
    .into_bytes();
    request.extend_from_slice(key);
    request.extend_from_slice(b"\r\n\r\n");
    request
}

/// Scans the bytes received so far after an upgrade request: held once a complete head
/// says 101 with `Upgrade: websocket`, `Connection: Upgrade` and `accept`.
pub fn scan(received: &[u8], accept: &str) -> Scan {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(received) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) if received.len() >= RESPONSE_BYTES_MAX => {
            return Scan::Refused(Refusal::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Scan::Partial,
        Err(_) => return Scan::Refused(Refusal::Malformed),
    }
    match response.code {
        Some(101) => {}
        Some(code) => return Scan::Refused(Refusal::Status(code)),
        None => return Scan::Refused(Refusal::Malformed),
    }
    let has = |name: &str, token: &str| {
        response.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case(name)
                && h.value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    let accepted = response.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("sec-websocket-accept") && h.value.trim_ascii() == accept.as_bytes()
    });
    if has("upgrade", "websocket") && has("connection", "upgrade") && accepted {
        Scan::Held
    } else {
        Scan::Refused(Refusal::BadUpgrade)
    }
}

/// What the frames received on a held connection asked for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Masked pongs to send back, one per ping.
    pub pongs: Vec<u8>,
    /// The server sent a close frame.
    pub closed: bool,
}

/// Why a held connection's input cannot be WebSocket frames from a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A server frame was masked (§5.1), or a control frame was over 125 bytes (§5.5).
    Invalid,
    /// More than [`HELD_PENDING_MAX`] bytes of one frame.
    TooLarge,
}

impl FrameError {
    /// Failure-kind label for reports.
    pub fn kind(self) -> &'static str {
        match self {
            FrameError::Invalid => "ws/bad-frame",
            FrameError::TooLarge => "ws/frame-too-large",
        }
    }
}

/// Consumes the whole frames at the front of `pending` (what a held connection received
/// and has not parsed yet), leaving an incomplete frame in place.
///
/// # Errors
///
/// [`FrameError`] if the bytes cannot be a server's frames.
pub fn on_held_input(pending: &mut Vec<u8>, mask: [u8; 4]) -> Result<Held, FrameError> {
    let mut held = Held::default();
    let mut at = 0;
    while let Some((opcode, payload, end)) = frame_at(&pending[at..])? {
        match opcode {
            0x9 => push_pong(&mut held.pongs, &pending[at..][payload], mask),
            0x8 => held.closed = true,
            _ => {}
        }
        at += end;
    }
    pending.drain(..at);
    if pending.len() > HELD_PENDING_MAX {
        return Err(FrameError::TooLarge);
    }
    Ok(held)
}

/// The opcode, payload range and end of the frame at the front of `buf`, if whole.
fn frame_at(buf: &[u8]) -> Result<Option<(u8, std::ops::Range<usize>, usize)>, FrameError> {
    let [b0, b1, rest @ ..] = buf else {
        return Ok(None);
    };
    if b1 & 0x80 != 0 {
        return Err(FrameError::Invalid);
    }
    let opcode = b0 & 0x0F;
    let (len, start) = match b1 & 0x7F {
        126 if rest.len() < 2 => return Ok(None),
        126 => (u64::from(u16::from_be_bytes([rest[0], rest[1]])), 4),
        127 if rest.len() < 8 => return Ok(None),
        127 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(&rest[..8]);
            (u64::from_be_bytes(be), 10)
        }
        len => (u64::from(len), 2),
    };
    if opcode & 0x8 != 0 && len > 125 {
        return Err(FrameError::Invalid);
    }
    if len > HELD_PENDING_MAX as u64 {
        return Err(FrameError::TooLarge);
    }
    let end = start + len as usize;
    Ok((buf.len() >= end).then_some((opcode, start..end, end)))
}

fn push_pong(out: &mut Vec<u8>, payload: &[u8], mask: [u8; 4]) {
    out.push(0x8A);
    // Control payloads are at most 125 bytes (checked in `frame_at`).
    out.push(0x80 | payload.len() as u8);
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// SHA-1 of `input` (FIPS 180-4 §6.1). Used only for the handshake, never for security.
pub fn sha1(input: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0];
    let mut message = input.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&((input.len() as u64) * 8).to_be_bytes());
    for block in message.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, &wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(wi);
            (e, d, c, b, a) = (d, c, b.rotate_left(30), a, t);
        }
        for (hi, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *hi = hi.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (chunk, word) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn sha1_matches_the_fips_vectors() {
        assert_eq!(hex(&sha1(b"abc")), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(hex(&sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            hex(&sha1(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
        let million_a = vec![b'a'; 1_000_000];
        assert_eq!(hex(&sha1(&million_a)), "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
    }

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(key_from([0xFF; 16]).len(), KEY_LEN);
    }

    #[test]
    fn accept_matches_the_rfc_6455_sample() {
        assert_eq!(
            accept_for(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    const KEY: &[u8] = b"dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    #[test]
    fn a_correct_101_is_held_only_once_its_head_is_complete() {
        let whole = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        for len in 0..whole.len() {
            assert_eq!(
                scan(&whole[..len], ACCEPT),
                Scan::Partial,
                "prefix of {len} bytes"
            );
        }
        assert_eq!(scan(whole, ACCEPT), Scan::Held);
        let request = upgrade_request("/ws?topic=bench", "127.0.0.1:8080", KEY);
        assert!(request.ends_with(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"));
    }

    #[test]
    fn wrong_accept_status_or_headers_are_refused() {
        let wrong_accept = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Accept: AAAA\r\n\r\n";
        assert_eq!(scan(wrong_accept, ACCEPT), Scan::Refused(Refusal::BadUpgrade));
        let no_upgrade = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(scan(no_upgrade, ACCEPT), Scan::Refused(Refusal::BadUpgrade));
        let refused = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(scan(refused, ACCEPT), Scan::Refused(Refusal::Status(403)));
    }

    #[test]
    fn pings_are_answered_with_masked_pongs_across_reads() {
        let mask = [1, 2, 3, 4];
        let mut pending = vec![0x89, 0x00, 0x89, 0x02, b'h'];
        let held = on_held_input(&mut pending, mask).expect("frames");
        assert_eq!(held.pongs, [0x8A, 0x80, 1, 2, 3, 4]);
        assert_eq!(pending, [0x89, 0x02, b'h'], "the split ping waits");
        pending.push(b'i');
        let held = on_held_input(&mut pending, mask).expect("frames");
        assert_eq!(held.pongs, [0x8A, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
        assert!(pending.is_empty());
        let mut close = vec![0x81, 0x01, b'x', 0x88, 0x02, 0x03, 0xE8];
        let held = on_held_input(&mut close, mask).expect("frames");
        assert!(held.closed && held.pongs.is_empty());
    }

    #[test]
    fn masked_or_oversized_server_frames_are_errors() {
        let mut masked = vec![0x81, 0x81, 0, 0, 0, 0, b'x'];
        assert_eq!(on_held_input(&mut masked, [0; 4]), Err(FrameError::Invalid));
        let mut long_ping = vec![0x89, 126, 0, 126];
        assert_eq!(on_held_input(&mut long_ping, [0; 4]), Err(FrameError::Invalid));
        let mut huge = vec![0x82, 127, 0, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(on_held_input(&mut huge, [0; 4]), Err(FrameError::TooLarge));
    }
}
