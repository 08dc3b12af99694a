//! Close status codes (RFC 6455 §7.4.1, IANA "WebSocket Close Code Number Registry") and
//! the rules of a close frame's payload (§5.5.1).
//!
//! Owns: the codes, which of them a close frame may carry, whether a received close
//! payload is well formed, and the code and reason a connection that breaks a frame rule
//! is failed with (`Fail`).
//!
//! Must never: encode or decode a frame (the frame codec does, with these rules).

/// The purpose of the connection has been fulfilled.
pub const NORMAL: u16 = 1000;
/// The server is going down or the client navigated away.
pub const GOING_AWAY: u16 = 1001;
/// The peer broke the protocol.
pub const PROTOCOL: u16 = 1002;
/// A message of a type the endpoint cannot accept.
pub const UNSUPPORTED: u16 = 1003;
/// Reserved: never sent, reports "no code in the close frame" to applications.
pub const NO_STATUS: u16 = 1005;
/// Reserved: never sent, reports "closed without a close frame" to applications.
pub const ABNORMAL: u16 = 1006;
/// Message data inconsistent with its type, such as text that is not UTF-8.
pub const INVALID_DATA: u16 = 1007;
/// A message that violates the endpoint's policy.
pub const POLICY: u16 = 1008;
/// A message too big to process.
pub const TOO_BIG: u16 = 1009;
/// The client expected an extension the server did not negotiate.
pub const EXTENSION: u16 = 1010;
/// The server met an unexpected condition.
pub const INTERNAL: u16 = 1011;
/// The server is restarting; reconnecting later may work.
pub const RESTART: u16 = 1012;
/// The server is overloaded; try again later.
pub const TRY_AGAIN: u16 = 1013;
/// Reserved: never sent, reports a failed TLS handshake to applications.
pub const TLS: u16 = 1015;

/// Whether a close frame may carry `code` (§7.4.1, §7.4.2): the codes defined by
/// RFC 6455 that are not reserved for reports (1000-1003, 1007-1011), the codes
/// IANA registered since (1012-1014), and the ranges for libraries and applications
/// (3000-4999). Anything else received fails the connection with [`PROTOCOL`].
///
/// Autobahn (cases 7.7.x and 7.9.x) accepts 1000-1003, 1007-1011 and 3000-4999 and
/// tests none of 1012-1014; those are accepted because they are registered and
/// ringcast itself sends [`RESTART`].
#[must_use]
pub fn is_valid(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Why the decoder fails a connection: the code and reason of the close frame it is
/// answered with (§7.1.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Fail {
    pub(super) code: u16,
    pub(super) reason: &'static str,
}

impl Fail {
    pub(super) const fn new(code: u16, reason: &'static str) -> Self {
        Fail { code, reason }
    }
}

/// A close payload (§5.5.1): empty, or a valid code and a UTF-8 reason.
pub(super) fn check_payload(payload: &[u8]) -> Result<(), Fail> {
    match payload {
        [] => Ok(()),
        [_] => Err(Fail::new(PROTOCOL, "close frame with a 1-byte payload")),
        [hi, lo, reason @ ..] => {
            if !is_valid(u16::from_be_bytes([*hi, *lo])) {
                return Err(Fail::new(PROTOCOL, "invalid close code"));
            }
            std::str::from_utf8(reason)
                .map(drop)
                .map_err(|_| Fail::new(INVALID_DATA, "close reason is not UTF-8"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_codes() {
        for code in 0..=u16::MAX {
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            assert_eq!(is_valid(code), valid, "code {code}");
        }
    }

    #[test]
    fn payloads() {
        assert_eq!(check_payload(b""), Ok(()));
        assert_eq!(check_payload(b"\x03\xe8"), Ok(()));
        assert_eq!(check_payload(b"\x03\xe8ok \xce\xba"), Ok(()));
        let code = |p: &[u8]| check_payload(p).map_err(|f| f.code);
        assert_eq!(code(b"\x03"), Err(PROTOCOL));
        assert_eq!(code(b"\x03\xedbye"), Err(PROTOCOL), "1005 is reserved");
        assert_eq!(code(b"\x03\xe8bad \xce"), Err(INVALID_DATA));
    }
}
