//! The WebSocket opening handshake for the server side (RFC 6455 §4.2).
//!
//! Owns: which request heads are WebSocket upgrades and how a refused one is answered,
//! the `Sec-WebSocket-Accept` value and the 101 response, and `Origin` patterns.
//!
//! Must never: read past the request head (client frames follow it), select a
//! subprotocol (ringcast speaks none) or an extension other than permessage-deflate, or
//! fail a handshake over an extension offer (an offer it cannot accept is declined).
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

use crate::proto::http::HEADERS_MAX;

/// Appended to the client's key before hashing it into `Sec-WebSocket-Accept` (§1.3).
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The only protocol version there is (§4.1 item 9, §11.6).
const VERSION: &[u8] = b"13";

/// Header fields for a 426 answer to a plain request on a WebSocket-only resource:
/// RFC 9110 §15.5.22 requires `Upgrade` in a 426, and §7.8 the `upgrade` connection
/// option beside it.
pub const UPGRADE_REQUIRED_HEADERS: &[(&str, &str)] = &[("Upgrade", "websocket"), ("Connection", "Upgrade")];

/// A valid WebSocket opening handshake (§4.2.1). Every slice borrows from the head given
/// to [`check_upgrade`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upgrade<'a> {
    /// `Sec-WebSocket-Key` as sent: 24 bytes of base64 that decode to 16 bytes. Pass it to
    /// [`switching_protocols`].
    pub key: &'a [u8],
    /// The first `Origin` field (§4.1 item 8, RFC 6454), for [`origin_allowed`].
    pub origin: Option<&'a [u8]>,
    /// The first `Sec-WebSocket-Protocol` field, a comma-separated list (§4.1 item 10).
    /// ringcast selects no subprotocol, so the 101 names none.
    pub protocols: Option<&'a [u8]>,
    /// Some `Sec-WebSocket-Extensions` offer is a permessage-deflate offer ringcast
    /// accepts (see [`deflate::accepts_any`](super::deflate::accepts_any)).
    pub deflate: bool,
    /// Bytes of the head, blank line included; client frames start at `head[head_len..]`.
    pub head_len: usize,
}

/// Why an upgrade request is refused. Answer with [`status`](Self::status),
/// [`reason`](Self::reason) as the body and [`extra_headers`](Self::extra_headers), then
/// close: the client sends frames right behind its request and they must not be read
/// as HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// The head is not one complete, well-formed HTTP request head.
    Malformed,
    /// The method is not GET (§4.1 item 2).
    NotGet,
    /// HTTP/1.0: the handshake needs HTTP/1.1 or later (§4.1 item 2).
    NotHttp11,
    /// Not exactly one `Host` field (§4.1 item 4, RFC 9112 §3.2).
    BadHost,
    /// Signs of a WebSocket handshake (a `Sec-WebSocket-Key` or `-Version`, or `Upgrade:
    /// websocket`), but `Upgrade` lacks `websocket` or `Connection` lacks `Upgrade`
    /// (§4.2.1 items 3-4).
    ///
    /// 400, not 426: §4.2.1 asks for "an appropriate error code (such as 400 Bad
    /// Request)" when the handshake does not match, and 426 tells a client to switch
    /// protocols while this client already asked to and got its headers wrong.
    NotUpgrade,
    /// `Sec-WebSocket-Version` is missing, repeated or not `13` (§4.2.2, §4.4).
    BadVersion,
    /// `Sec-WebSocket-Key` is missing, repeated (§11.3.1) or not base64 of 16 bytes
    /// (§4.1 item 7).
    BadKey,
    /// A body (`Content-Length` above 0 or any `Transfer-Encoding`): after the 101 its
    /// bytes would be read as frames.
    HasBody,
    /// [`origin_allowed`] refused the `Origin`; the caller returns this one itself
    /// (§4.2.2: "a 403 Forbidden").
    OriginNotAllowed,
}

impl HandshakeError {
    /// The status code to answer with: 400, 405, 426 or 403.
    #[must_use]
    pub fn status(self) -> u16 {
        match self {
            HandshakeError::NotGet => 405,
            // §4.4: a version the server does not speak is answered "such as 426
            // Upgrade Required" with the versions it does speak.
            HandshakeError::BadVersion => 426,
            HandshakeError::OriginNotAllowed => 403,
            HandshakeError::Malformed
            | HandshakeError::NotHttp11
            | HandshakeError::BadHost
            | HandshakeError::NotUpgrade
            | HandshakeError::BadKey
            | HandshakeError::HasBody => 400,
        }
    }

    /// A short sentence for the response body.
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            HandshakeError::Malformed => "malformed request head",
            HandshakeError::NotGet => "a WebSocket handshake must be a GET request",
            HandshakeError::NotHttp11 => "a WebSocket handshake needs HTTP/1.1",
            HandshakeError::BadHost => "a WebSocket handshake needs exactly one Host header",
            HandshakeError::NotUpgrade => {
                "a WebSocket handshake needs Upgrade: websocket and Connection: Upgrade"
            }
            HandshakeError::BadVersion => "only Sec-WebSocket-Version: 13 is supported",
            HandshakeError::BadKey => "Sec-WebSocket-Key must be one base64 value of 16 bytes",
            HandshakeError::HasBody => "a WebSocket handshake must not have a body",
            HandshakeError::OriginNotAllowed => "this Origin may not open WebSockets here",
        }
    }

    /// Header fields the answer must carry besides the usual ones.
    #[must_use]
    pub fn extra_headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            HandshakeError::NotGet => &[("Allow", "GET")],
            // §4.4 names the versions spoken; RFC 9110 §15.5.22 and §7.8 want Upgrade
            // and the upgrade connection option in every 426.
            HandshakeError::BadVersion => &[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Version", "13"),
            ],
            _ => &[],
        }
    }
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status(), self.reason())
    }
}

impl std::error::Error for HandshakeError {}

/// What the header fields of a request say about an upgrade.
#[derive(Default)]
struct UpgradeFields<'a> {
    upgrade_websocket: bool,
    connection_upgrade: bool,
    hosts: usize,
    versions: usize,
    version: &'a [u8],
    keys: usize,
    key: &'a [u8],
    origin: Option<&'a [u8]>,
    protocols: Option<&'a [u8]>,
    deflate: bool,
    body: bool,
}

impl<'a> UpgradeFields<'a> {
    fn read(headers: &[httparse::Header<'a>]) -> Self {
        let mut f = UpgradeFields::default();
        for header in headers {
            let (name, value) = (header.name, header.value);
            if name.eq_ignore_ascii_case("upgrade") {
                // `websocket` is case-insensitive (§4.2.1 item 3, §11.2).
                f.upgrade_websocket |= list_items(value).any(|p| p.eq_ignore_ascii_case(b"websocket"));
            } else if name.eq_ignore_ascii_case("connection") {
                f.connection_upgrade |= list_items(value).any(|o| o.eq_ignore_ascii_case(b"upgrade"));
            } else if name.eq_ignore_ascii_case("host") {
                f.hosts += 1;
            } else if name.eq_ignore_ascii_case("sec-websocket-version") {
                f.versions += 1;
                f.version = value;
            } else if name.eq_ignore_ascii_case("sec-websocket-key") {
                f.keys += 1;
                f.key = value;
            } else if name.eq_ignore_ascii_case("origin") {
                f.origin = f.origin.or(Some(value));
            } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
                f.protocols = f.protocols.or(Some(value));
            } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
                f.deflate |= super::deflate::accepts_any([value]);
            } else if name.eq_ignore_ascii_case("content-length") {
                f.body |= list_items(value).any(|n| n.iter().any(|&d| d != b'0'));
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                f.body = true;
            }
        }
        f
    }

    /// Whether the client means to open a WebSocket at all.
    fn attempted(&self) -> bool {
        self.upgrade_websocket || self.keys > 0 || self.versions > 0
    }
}

/// Checks the opening handshake in a complete request head (§4.2.1), as found by
/// [`parse_request`](crate::proto::http::parse_request).
///
/// Field names and the `websocket` and `Upgrade` tokens match case-insensitively inside
/// comma-separated lists, over repeated field lines. Returns `Ok(None)` when the request
/// is no WebSocket attempt: no `Upgrade` naming `websocket` and no `Sec-WebSocket-Key` or
/// `-Version` (an `Upgrade` naming only other protocols may be ignored, RFC 9110 §7.8).
/// The caller serves such a request as plain HTTP, or answers 426 with
/// [`UPGRADE_REQUIRED_HEADERS`] on a resource that only speaks WebSocket.
///
/// # Errors
///
/// A [`HandshakeError`] for the first rule broken, checked in this order: a head that
/// is not complete and well-formed, the method, the HTTP version, `Upgrade` and
/// `Connection`, `Host`, a body, `Sec-WebSocket-Version`, `Sec-WebSocket-Key`.
pub fn check_upgrade(head: &[u8]) -> Result<Option<Upgrade<'_>>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(head) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(HandshakeError::Malformed),
    };
    let f = UpgradeFields::read(req.headers);
    if !f.attempted() {
        return Ok(None);
    }
    if req.method != Some("GET") {
        return Err(HandshakeError::NotGet);
    }
    if req.version != Some(1) {
        return Err(HandshakeError::NotHttp11);
    }
    if !(f.upgrade_websocket && f.connection_upgrade) {
        return Err(HandshakeError::NotUpgrade);
    }
    if f.hosts != 1 {
        return Err(HandshakeError::BadHost);
    }
    if f.body {
        return Err(HandshakeError::HasBody);
    }
    if f.versions != 1 || f.version != VERSION {
        return Err(HandshakeError::BadVersion);
    }
    if f.keys != 1 || !is_valid_key(f.key) {
        return Err(HandshakeError::BadKey);
    }
    Ok(Some(Upgrade {
        key: f.key,
        origin: f.origin,
        protocols: f.protocols,
        deflate: f.deflate,
        head_len,
    }))
}

/// Base64 (RFC 4648 §4, padded, canonical) of exactly 16 bytes: always 24 characters.
fn is_valid_key(key: &[u8]) -> bool {
    // Decoding 24 characters may need room for 18 bytes before the padding is seen.
    let mut decoded = [0u8; 18];
    key.len() == 24 && matches!(BASE64.decode_slice(key, &mut decoded), Ok(16))
}

/// The non-empty members of a comma-separated list, optional whitespace trimmed
/// (RFC 9110 §5.6.1).
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (§4.2.2 item 5.4): base64 of the
/// SHA-1 of the key followed by the GUID. The key is used as sent, not decoded.
#[must_use]
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let digest = Sha1::new().chain_update(key).chain_update(ACCEPT_GUID).finalize();
    let mut out = [0u8; 28];
    let n = BASE64
        .encode_slice(digest, &mut out)
        .expect("28 bytes hold the base64 of a 20-byte digest");
    debug_assert_eq!(n, 28, "base64 of 20 bytes is {n} bytes, expected 28");
    out
}

/// The whole 101 response that completes a handshake (§4.2.2 item 5), with no
/// subprotocol, and permessage-deflate accepted when `deflate` (RFC 7692 §5,
/// [`deflate::RESPONSE`](super::deflate::RESPONSE)).
#[must_use]
pub fn switching_protocols(key: &[u8], deflate: bool) -> Vec<u8> {
    const START: &[u8] =
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ";
    let mut out = Vec::with_capacity(START.len() + 28 + 4 + 100);
    out.extend_from_slice(START);
    out.extend_from_slice(&accept_key(key));
    if deflate {
        out.extend_from_slice(b"\r\nSec-WebSocket-Extensions: ");
        out.extend_from_slice(super::deflate::RESPONSE.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// Whether a handshake with this `Origin` may proceed (§4.2.2 item 4, §10.2).
///
/// A request without `Origin` is allowed: browsers always send one, and any other
/// client could send whatever it liked, so the check only protects browser users from
/// other sites' pages. Otherwise some pattern must match, ASCII case-insensitively:
///
/// - `*` matches every origin, `null` included;
/// - `SCHEME://*.DOMAIN[:PORT]` matches origins with that scheme (and port) whose host
///   is a strict subdomain of `DOMAIN`: `https://*.example.com` matches
///   `https://a.example.com` and `https://a.b.example.com`, not `https://example.com`,
///   `http://a.example.com` or `https://a.example.com:8443`;
/// - anything else matches one origin exactly (`https://example.com`, `null`).
///
/// A trailing `/` on a pattern is ignored, since origins never have one. An empty list
/// allows only requests without `Origin`.
#[must_use]
pub fn origin_allowed(origin: Option<&[u8]>, patterns: &[String]) -> bool {
    origin.is_none_or(|origin| patterns.iter().any(|p| origin_matches(origin, p.as_bytes())))
}

fn origin_matches(origin: &[u8], pattern: &[u8]) -> bool {
    let pattern = pattern.strip_suffix(b"/").unwrap_or(pattern);
    if pattern == b"*" {
        return true;
    }
    let Some(star) = pattern.windows(5).position(|w| w == b"://*.") else {
        return origin.eq_ignore_ascii_case(pattern);
    };
    // prefix is `SCHEME://`, suffix is `.DOMAIN[:PORT]`.
    let (prefix, suffix) = (&pattern[..star + 3], &pattern[star + 4..]);
    if origin.len() <= prefix.len() + suffix.len() {
        return false;
    }
    let (head, rest) = origin.split_at(prefix.len());
    let (labels, tail) = rest.split_at(rest.len() - suffix.len());
    head.eq_ignore_ascii_case(prefix)
        && tail.eq_ignore_ascii_case(suffix)
        && labels.first() != Some(&b'.')
        && labels.last() != Some(&b'.')
        && labels
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request(extra: &str) -> String {
        format!(
            "GET /ws?topic=a HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn check(head: &str) -> Result<Option<Upgrade<'_>>, HandshakeError> {
        check_upgrade(head.as_bytes())
    }

    #[test]
    fn rfc_example_accept_key() {
        assert_eq!(&accept_key(KEY.as_bytes()), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let response = switching_protocols(KEY.as_bytes(), false);
        assert_eq!(
            response,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    #[test]
    fn valid_handshake() {
        let head = request("Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n");
        let up = check(&head).unwrap().unwrap();
        assert_eq!(up.key, KEY.as_bytes());
        assert_eq!(up.origin, Some(&b"http://example.com"[..]));
        assert_eq!(up.protocols, Some(&b"chat, superchat"[..]));
        assert_eq!(up.head_len, head.len());
        let bare = request("");
        let up = check(&bare).unwrap().unwrap();
        assert_eq!((up.origin, up.protocols, up.deflate), (None, None, false));
    }

    #[test]
    fn deflate_offers_over_field_lines() {
        let up = |extra: &str| check(&request(extra)).unwrap().unwrap().deflate;
        assert!(up(
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        ));
        assert!(up(
            "Sec-WebSocket-Extensions: foo\r\nsec-websocket-extensions: permessage-deflate\r\n"
        ));
        // Declined, and the handshake still succeeds.
        assert!(!up(
            "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=9\r\n"
        ));
        assert!(!up("Sec-WebSocket-Extensions: permessage-deflate; bogus=1\r\n"));
        let response = String::from_utf8(switching_protocols(KEY.as_bytes(), true)).unwrap();
        assert!(response.ends_with(
            "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; \
             client_no_context_takeover\r\n\r\n"
        ));
    }

    #[test]
    fn tokens_are_lists_and_case_insensitive() {
        let head = format!(
            "GET / HTTP/1.1\r\nhost: h\r\nupgrade: foo/2, WebSocket\r\nCONNECTION: keep-alive\r\n\
             connection: x ,UPGRADE\r\nsec-websocket-key: {KEY}\r\nSEC-WEBSOCKET-VERSION: 13\r\n\
             Content-Length: 0\r\n\r\n"
        );
        assert!(check(&head).unwrap().is_some());
    }

    #[test]
    fn not_an_attempt_is_none() {
        assert_eq!(check("GET /sse HTTP/1.1\r\nHost: h\r\n\r\n"), Ok(None));
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"),
            Ok(None)
        );
        assert_eq!(
            check("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n"),
            Ok(None)
        );
    }

    #[test]
    fn handshake_errors() {
        use HandshakeError::*;
        let r = request("");
        let cases: Vec<(String, HandshakeError)> = vec![
            (r.replace("GET", "POST"), NotGet),
            (r.replace("HTTP/1.1", "HTTP/1.0"), NotHttp11),
            (r.replace("Upgrade: websocket", "Upgrade: h2c"), NotUpgrade),
            (
                r.replace("Connection: Upgrade", "Connection: keep-alive"),
                NotUpgrade,
            ),
            (r.replace("Upgrade: websocket\r\n", ""), NotUpgrade),
            (r.replace("Host: server.example.com\r\n", ""), BadHost),
            (request("Host: other\r\n"), BadHost),
            (request("Content-Length: 5\r\n"), HasBody),
            (request("Transfer-Encoding: chunked\r\n"), HasBody),
            (r.replace("Version: 13", "Version: 8"), BadVersion),
            (r.replace("Version: 13", "Version: 13, 8"), BadVersion),
            (r.replace("Sec-WebSocket-Version: 13\r\n", ""), BadVersion),
            (request("Sec-WebSocket-Version: 13\r\n"), BadVersion),
            (r.replace(KEY, "dGhlIHNhbXBsZSBub25jZQ"), BadKey),
            (r.replace(KEY, "dGhlIHNhbXBsZSBub25j"), BadKey),
            (r.replace(KEY, "dGhlIHNhbXBsZSBub25jZXg="), BadKey),
            (r.replace(KEY, "dGhlIHNhbXBsZSBub25jZQ=!"), BadKey),
            (r.replace(KEY, ""), BadKey),
            (r.replace(&format!("Sec-WebSocket-Key: {KEY}\r\n"), ""), BadKey),
            (request(&format!("Sec-WebSocket-Key: {KEY}\r\n")), BadKey),
            (r[..r.len() - 2].to_owned(), Malformed),
        ];
        for (head, expected) in cases {
            assert_eq!(check(&head), Err(expected), "{head:?}");
        }
        // Signs of an attempt without `Upgrade: websocket` are refused, not ignored.
        let key_only = format!("GET / HTTP/1.1\r\nHost: h\r\nSec-WebSocket-Key: {KEY}\r\n\r\n");
        assert_eq!(check(&key_only), Err(NotUpgrade));
    }

    #[test]
    fn handshake_error_answers() {
        use HandshakeError::*;
        let all = [
            Malformed,
            NotGet,
            NotHttp11,
            BadHost,
            NotUpgrade,
            BadVersion,
            BadKey,
            HasBody,
            OriginNotAllowed,
        ];
        for e in all {
            let expected = match e {
                NotGet => 405,
                BadVersion => 426,
                OriginNotAllowed => 403,
                _ => 400,
            };
            assert_eq!(e.status(), expected, "{e:?}");
            assert!(!e.reason().is_empty());
            assert!(crate::proto::http::status_text(e.status()).len() > 2);
        }
        assert!(BadVersion
            .extra_headers()
            .contains(&("Sec-WebSocket-Version", "13")));
        assert!(BadVersion.extra_headers().contains(&("Upgrade", "websocket")));
        assert_eq!(NotGet.extra_headers(), &[("Allow", "GET")]);
        assert!(BadKey.extra_headers().is_empty());
        assert_eq!(
            BadVersion.to_string(),
            "426 only Sec-WebSocket-Version: 13 is supported"
        );
    }

    #[test]
    fn origins() {
        let p = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let allowed = |origin: &str, list: &[&str]| origin_allowed(Some(origin.as_bytes()), &p(list));
        assert!(origin_allowed(None, &[]));
        assert!(!allowed("https://a.com", &[]));
        assert!(allowed("https://a.com", &["*"]));
        assert!(allowed("null", &["*"]));
        assert!(allowed("null", &["null"]));
        assert!(allowed("https://A.com", &["https://a.com/"]));
        assert!(!allowed("https://a.com.evil", &["https://a.com"]));
        assert!(!allowed("http://a.com", &["https://a.com"]));
        let wild = ["https://*.example.com"];
        assert!(allowed("https://a.example.com", &wild));
        assert!(allowed("https://a-1.b.Example.COM", &wild));
        assert!(!allowed("https://example.com", &wild));
        assert!(!allowed("https://.example.com", &wild));
        assert!(!allowed("https://a..example.com", &wild));
        assert!(!allowed("https://evilexample.com", &wild));
        assert!(!allowed("http://a.example.com", &wild));
        assert!(!allowed("https://a.example.com:8443", &wild));
        assert!(!allowed("https://a.example.com.evil.com", &wild));
        assert!(!allowed("https://x@a.example.com", &wild));
        assert!(!allowed("https://evil.com/.example.com", &wild));
        assert!(allowed(
            "https://a.example.com:8443",
            &["https://*.example.com:8443"]
        ));
        assert!(allowed("https://b.org", &["https://a.com", "https://b.org"]));
    }
}
