//! The WebSocket side of `hold --transport ws`, sans-IO: the upgrade request with a
//! random key (RFC 6455 §4.1), recognition of a correct 101 answer (§4.2.2, including
//! `Sec-WebSocket-Accept`), and the frames a held connection may receive, answering each
//! ping with a masked pong (§5.5.2-§5.5.3).
//!
//! The accept value is computed with the `sha1` and `base64` crates, checked against the
//! RFC 6455 §1.3 sample.
//!
//! Never touches a socket or a clock.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

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
    let text = BASE64.encode(nonce);
    let mut key = [0u8; KEY_LEN];
    key.copy_from_slice(text.as_bytes());
    key
}

/// The `Sec-WebSocket-Accept` value a server must answer `key` with.
pub fn accept_for(key: &[u8]) -> String {
    BASE64.encode(Sha1::new().chain_update(key).chain_update(GUID).finalize())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_matches_the_rfc_6455_sample() {
        assert_eq!(
            accept_for(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(key_from([0xFF; 16]).len(), KEY_LEN);
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
