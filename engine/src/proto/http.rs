//! HTTP/1.1 request heads (RFC 9112), subscription query strings and small plain-text
//! responses.
//!
//! Owns: turning the bytes a client sent into a [`Request`] (on top of `httparse`), the
//! limits on a request head ([`HEAD_MAX`], [`HEADERS_MAX`]), the rules that refuse a head
//! which two servers could read differently (request smuggling), topic names
//! ([`is_valid_topic`]) and the `?topic=...&last_event_id=...` query
//! ([`parse_subscription`]).
//!
//! How strict, following nginx and HAProxy where RFC 9112 leaves a choice:
//! - Request line (§3): a method token, one SP, the target, one SP, `HTTP/1.0` or
//!   `HTTP/1.1` exactly; another well-formed `HTTP/x.y` (`HTTP/2.0`, the HTTP/2 preface)
//!   is 505. The target is origin-form (`/path?query`), absolute-form (`http://` or
//!   `https://` authority, no userinfo), `*` for `OPTIONS` only, or authority-form for
//!   `CONNECT` only (§3.2, as HAProxy); its bytes are 0x21-0x7E without `#` (non-ASCII and
//!   fragments are 400, as HAProxy) and each `%` in its path starts `%HH` (as nginx).
//! - Lines (§2.2): CRLF or a bare LF end a line; a bare CR, whitespace before the first
//!   field line, and obs-fold are 400. Empty lines before the request line are skipped.
//! - Fields (§5): a name is a token directly followed by `:` (whitespace before the colon
//!   is 400); values hold no control byte but HTAB. Names that are no field this engine
//!   reads, `Transfer_Encoding` with an underscore among them, are ignored, as nginx does.
//! - `Host` (§3.2): an HTTP/1.1 request without it, any request with two `Host` lines, or
//!   a value that is no `host[:port]` is 400 (as nginx). With an absolute-form target, the
//!   authority and `Host` must name the same host and port (`:80`/`:443` may be left out),
//!   or it is 400 (as HAProxy).
//! - Body framing (§6): `Content-Length` is 1*DIGIT; several values, in one line as a list
//!   or over several lines, are accepted when all are equal (§6.3 step 5, as HAProxy) and
//!   400 otherwise. `Transfer-Encoding` is refused whatever it says, since no endpoint
//!   decodes a chunked body: in HTTP/1.0, beside `Content-Length`, with an empty member,
//!   not ending in `chunked` or naming it twice it is 400 (§6.1, §6.3 ¶3-4); other codings
//!   before `chunked` are 501 (§6.1, as nginx); `chunked` alone is 411, asking for a
//!   `Content-Length` (RFC 9110 §15.5.12).
//!
//! Must never: touch a socket or a clock, buffer or read a request body, allocate while
//! parsing a head, or accept a head whose body framing is ambiguous (request smuggling).

use std::fmt;

/// Largest request head accepted, in bytes, including the blank line that ends it.
/// A head that does not end within this many bytes is answered with 431, or 414 when
/// the request line alone does not end within it.
pub const HEAD_MAX: usize = 8192;
/// Most header fields accepted in one request head; more is answered with 431.
pub const HEADERS_MAX: usize = 64;
/// Most distinct topics one subscription may name.
pub const TOPICS_MAX: usize = 64;
/// Longest topic name, in bytes.
pub const TOPIC_LEN_MAX: usize = 200;
/// Longest prefix of a rejected topic name quoted back in an error, in chars.
const TOPIC_ECHO_MAX: usize = 64;

// `HttpError::reason` spells these numbers out as literals.
const _: () = assert!(HEAD_MAX == 8192 && HEADERS_MAX == 64, "update HttpError::reason");

/// The request method (RFC 9110 §9). Method names are case-sensitive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `OPTIONS` (CORS preflight)
    Options,
    /// Any other method token; the caller answers 405 or 501.
    Other,
}

impl Method {
    fn from_token(token: &str) -> Self {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }
}

/// A parsed request head. Every slice borrows from the buffer given to [`parse_request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The request method.
    pub method: Method,
    /// The request target before the first `?`, as sent (not percent-decoded); for an
    /// absolute-form target the path after its authority (`/` when empty), for `*` and
    /// an authority-form target the target itself.
    pub path: &'a str,
    /// The request target after the first `?`, or `""` when there is none.
    pub query: &'a str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Whether the connection stays open after the response (RFC 9112 §9.3): for
    /// HTTP/1.1 unless `Connection: close`; for HTTP/1.0 only with
    /// `Connection: keep-alive` (and no `close`).
    pub keep_alive: bool,
    /// The value of the first `Last-Event-ID` header field, if any (WHATWG HTML §9.2.4).
    pub last_event_id: Option<&'a [u8]>,
    /// The value of the first `Origin` header field, if any (RFC 6454 §7).
    pub origin: Option<&'a [u8]>,
    /// The value of the first `Authorization` header field, if any (RFC 9110 §11.6.2).
    pub authorization: Option<&'a [u8]>,
    /// The value of the first `Cookie` header field, if any (RFC 6265 §5.4: a user agent
    /// sends one).
    pub cookie: Option<&'a [u8]>,
    /// A body follows the head: `Content-Length` above 0 (a request with
    /// `Transfer-Encoding` is refused, so this is the only way a body comes).
    pub has_body: bool,
    /// The `Content-Length`, when given.
    pub content_length: Option<u64>,
    /// The value of the first `Content-Type` header field, if any (RFC 9110 §8.3).
    pub content_type: Option<&'a [u8]>,
    /// Bytes of the head, blank line included; a pipelined request starts at
    /// `buf[head_len..]` (after the body, when `has_body`).
    pub head_len: usize,
}

/// The outcome of [`parse_request`] on a buffer that is not (yet) invalid.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A whole head was found at the start of the buffer.
    Complete(Request<'a>),
    /// The buffer is a proper prefix of a head that may still be valid: read more.
    Partial,
}

/// Why a request head was rejected. The connection answers with [`HttpError::status`]
/// and closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// Bad syntax or ambiguous body framing; the text says which.
    Malformed(&'static str),
    /// The head does not end within [`HEAD_MAX`] bytes.
    HeadTooLarge,
    /// The request line does not end within [`HEAD_MAX`] bytes.
    UriTooLong,
    /// More than [`HEADERS_MAX`] header fields.
    TooManyHeaders,
    /// A well-formed HTTP version other than 1.0 and 1.1.
    VersionNotSupported,
    /// `Transfer-Encoding: chunked`: no endpoint decodes a chunked body, so the client
    /// is asked for a `Content-Length` (RFC 9110 §15.5.12).
    LengthRequired,
    /// A transfer coding other than `chunked` (RFC 9112 §6.1); the text says which.
    NotImplemented(&'static str),
}

impl HttpError {
    /// The status code to answer with: 400, 411, 414, 431, 501 or 505.
    #[must_use]
    pub fn status(self) -> u16 {
        match self {
            HttpError::Malformed(_) => 400,
            HttpError::LengthRequired => 411,
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::UriTooLong => 414,
            HttpError::NotImplemented(_) => 501,
            HttpError::VersionNotSupported => 505,
        }
    }

    /// A short sentence for the response body.
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            HttpError::Malformed(why) => why,
            HttpError::HeadTooLarge => "request head is larger than 8192 bytes",
            HttpError::UriTooLong => "request line is longer than 8192 bytes",
            HttpError::TooManyHeaders => "request has more than 64 header fields",
            HttpError::VersionNotSupported => "only HTTP/1.0 and HTTP/1.1 are supported",
            HttpError::LengthRequired => {
                "chunked request bodies are not accepted: send the body with Content-Length"
            }
            HttpError::NotImplemented(why) => why,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.reason())
    }
}

impl std::error::Error for HttpError {}

/// Parses the request head at the start of `buf` (RFC 9112 §2-§3, §5).
///
/// Only the first [`HEAD_MAX`] bytes are looked at, so the answer for a buffer depends
/// only on its bytes, never on how they arrived: every proper prefix of a valid head is
/// `Partial`, and any buffer that starts with a whole head gives the same `Complete`.
/// Leading empty lines are skipped (RFC 9112 §2.2).
///
/// # Errors
///
/// - [`HttpError::HeadTooLarge`] when `buf` holds `HEAD_MAX` bytes without a whole head,
///   or [`HttpError::UriTooLong`] when those bytes do not even hold a `\n`.
/// - [`HttpError::TooManyHeaders`] past [`HEADERS_MAX`] fields.
/// - [`HttpError::VersionNotSupported`] for a well-formed `HTTP/x.y` other than 1.0/1.1.
/// - [`HttpError::LengthRequired`] for `Transfer-Encoding: chunked`, and
///   [`HttpError::NotImplemented`] for other codings before it.
/// - [`HttpError::Malformed`] for everything else the module header lists: bad syntax, a
///   bad request target, a missing, repeated or invalid `Host` or one that contradicts
///   the target's authority, an invalid or conflicting `Content-Length`, and
///   `Transfer-Encoding` that is ambiguous or in an HTTP/1.0 request.
pub fn parse_request(buf: &[u8]) -> Result<Parsed<'_>, HttpError> {
    let window = &buf[..buf.len().min(HEAD_MAX)];
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(window) {
        Ok(httparse::Status::Complete(head_len)) => build(&req, head_len).map(Parsed::Complete),
        Ok(httparse::Status::Partial) => partial_or_too_large(buf),
        Err(httparse::Error::Version) => match classify_version(window) {
            VersionToken::Unsupported => Err(HttpError::VersionNotSupported),
            VersionToken::Incomplete => partial_or_too_large(buf),
            VersionToken::Malformed => Err(HttpError::Malformed("malformed HTTP version")),
        },
        Err(e) => Err(map_httparse_error(e)),
    }
}

fn partial_or_too_large(buf: &[u8]) -> Result<Parsed<'_>, HttpError> {
    if buf.len() < HEAD_MAX {
        Ok(Parsed::Partial)
    } else if buf[..HEAD_MAX].contains(&b'\n') {
        Err(HttpError::HeadTooLarge)
    } else {
        Err(HttpError::UriTooLong)
    }
}

fn map_httparse_error(e: httparse::Error) -> HttpError {
    match e {
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        httparse::Error::HeaderName => HttpError::Malformed("invalid header field name"),
        httparse::Error::HeaderValue => HttpError::Malformed("invalid header field value"),
        httparse::Error::NewLine => HttpError::Malformed("invalid line ending"),
        // Token covers the method and a request target with bad bytes or bad UTF-8.
        _ => HttpError::Malformed("malformed request line"),
    }
}

/// What the HTTP-version token of a request line `httparse` refused looks like.
enum VersionToken {
    /// A whole `HTTP/DIGIT.DIGIT` (RFC 9112 §2.3) that is not 1.0 or 1.1.
    Unsupported,
    /// Not ended by a line break yet, and still a prefix of `HTTP/DIGIT.DIGIT`.
    Incomplete,
    /// Anything else.
    Malformed,
}

/// `httparse` rejects `HTTP/2` on its first byte; this decides between 505 and 400 the
/// same way whether or not the rest of the line has arrived.
fn classify_version(window: &[u8]) -> VersionToken {
    let start = window
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(window.len());
    let line = &window[start..];
    // Method SP request-target SP HTTP-version (RFC 9112 §3); httparse already accepted
    // the first two, each ended by exactly one space.
    let mut parts = line.splitn(3, |&b| b == b' ');
    let version_and_rest = parts.nth(2).unwrap_or_default();
    let end = version_and_rest.iter().position(|&b| b == b'\r' || b == b'\n');
    let token = &version_and_rest[..end.unwrap_or(version_and_rest.len())];
    let pattern_matches = token.len() <= 8
        && token.iter().enumerate().all(|(i, &b)| match i {
            0..=4 => b == b"HTTP/"[i],
            5 | 7 => b.is_ascii_digit(),
            _ => b == b'.',
        });
    match (pattern_matches, end.is_some()) {
        (true, true) if token.len() == 8 => VersionToken::Unsupported,
        (true, false) => VersionToken::Incomplete,
        _ => VersionToken::Malformed,
    }
}

/// What the header fields say about the connection and the body.
#[derive(Default)]
struct Fields<'a> {
    content_length: Option<u64>,
    transfer_encoding: Codings,
    host_lines: u32,
    host: Option<&'a [u8]>,
    close: bool,
    keep_alive: bool,
    last_event_id: Option<&'a [u8]>,
    origin: Option<&'a [u8]>,
    authorization: Option<&'a [u8]>,
    cookie: Option<&'a [u8]>,
    content_type: Option<&'a [u8]>,
}

/// The transfer codings of every `Transfer-Encoding` line, read as one list in order
/// (RFC 9110 §5.3).
#[derive(Default)]
struct Codings {
    lines: u32,
    empty_member: bool,
    chunked: u32,
    last_is_chunked: bool,
    others: bool,
}

impl Codings {
    fn add_line(&mut self, value: &[u8]) {
        self.lines += 1;
        for coding in value.split(|&b| b == b',').map(trim_ows) {
            let chunked = coding.eq_ignore_ascii_case(b"chunked");
            self.empty_member |= coding.is_empty();
            self.chunked += u32::from(chunked);
            self.others |= !chunked && !coding.is_empty();
            self.last_is_chunked = chunked;
        }
    }

    /// Every request with `Transfer-Encoding` is refused; this picks the answer.
    fn refusal(&self, minor_version: u8, content_length: bool) -> HttpError {
        if minor_version == 0 {
            // RFC 9112 §6.1: HTTP/1.0 has no transfer codings, so the framing is faulty.
            HttpError::Malformed("Transfer-Encoding in an HTTP/1.0 request")
        } else if content_length {
            HttpError::Malformed("both Content-Length and Transfer-Encoding")
        } else if self.empty_member {
            HttpError::Malformed("empty member in Transfer-Encoding")
        } else if !self.last_is_chunked {
            HttpError::Malformed("Transfer-Encoding does not end in chunked")
        } else if self.chunked > 1 {
            HttpError::Malformed("Transfer-Encoding names chunked more than once")
        } else if self.others {
            HttpError::NotImplemented("transfer codings other than chunked are not implemented")
        } else {
            HttpError::LengthRequired
        }
    }
}

fn build<'a>(req: &httparse::Request<'_, 'a>, head_len: usize) -> Result<Request<'a>, HttpError> {
    let method = req.method.unwrap_or_default();
    let minor_version = req.version.unwrap_or(1);
    let target = parse_target(method, req.path.unwrap_or_default())?;
    let fields = read_fields(req.headers)?;
    check_host(&fields, minor_version, &target)?;
    if fields.transfer_encoding.lines > 0 {
        return Err(fields
            .transfer_encoding
            .refusal(minor_version, fields.content_length.is_some()));
    }
    let (path, query) = target.path_and_query();
    Ok(Request {
        method: Method::from_token(method),
        path,
        query,
        minor_version,
        keep_alive: !fields.close && (minor_version == 1 || fields.keep_alive),
        last_event_id: fields.last_event_id,
        origin: fields.origin,
        authorization: fields.authorization,
        cookie: fields.cookie,
        has_body: fields.content_length.is_some_and(|n| n > 0),
        content_length: fields.content_length,
        content_type: fields.content_type,
        head_len,
    })
}

fn read_fields<'a>(headers: &[httparse::Header<'a>]) -> Result<Fields<'a>, HttpError> {
    let mut fields = Fields::default();
    for header in headers {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(header.value)?;
            if fields.content_length.is_some_and(|seen| seen != n) {
                return Err(HttpError::Malformed("conflicting Content-Length values"));
            }
            fields.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            fields.transfer_encoding.add_line(header.value);
        } else if name.eq_ignore_ascii_case("host") {
            fields.host_lines += 1;
            fields.host = Some(header.value);
        } else if name.eq_ignore_ascii_case("connection") {
            for option in list_items(header.value) {
                fields.close |= option.eq_ignore_ascii_case(b"close");
                fields.keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("last-event-id") && fields.last_event_id.is_none() {
            fields.last_event_id = Some(header.value);
        } else if name.eq_ignore_ascii_case("origin") && fields.origin.is_none() {
            fields.origin = Some(header.value);
        } else if name.eq_ignore_ascii_case("authorization") && fields.authorization.is_none() {
            fields.authorization = Some(header.value);
        } else if name.eq_ignore_ascii_case("cookie") && fields.cookie.is_none() {
            fields.cookie = Some(header.value);
        } else if name.eq_ignore_ascii_case("content-type") && fields.content_type.is_none() {
            fields.content_type = Some(header.value);
        }
    }
    Ok(fields)
}

/// The four forms of a request target (RFC 9112 §3.2).
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    /// `/path?query`.
    Origin(&'a str),
    /// `http://authority/path?query`; `rest` is what follows the authority.
    Absolute {
        https: bool,
        authority: &'a str,
        rest: &'a str,
    },
    /// `host:port`, for `CONNECT`.
    Authority(&'a str),
    /// `*`, for `OPTIONS`.
    Asterisk,
}

impl<'a> Target<'a> {
    /// The path and the query for routing; an absolute-form target without a path means
    /// `/` (RFC 9112 §3.2.1), the other forms are their own path.
    fn path_and_query(&self) -> (&'a str, &'a str) {
        let split = |s: &'a str| s.split_once('?').unwrap_or((s, ""));
        match *self {
            Target::Origin(target) => split(target),
            Target::Absolute { rest, .. } => match split(rest) {
                ("", query) => ("/", query),
                path_and_query => path_and_query,
            },
            Target::Authority(authority) => (authority, ""),
            Target::Asterisk => ("*", ""),
        }
    }
}

/// Sorts the target into its form and checks that the method allows that form, as
/// HAProxy does: `*` only for `OPTIONS`, authority-form only and always for `CONNECT`.
fn parse_target<'a>(method: &str, target: &'a str) -> Result<Target<'a>, HttpError> {
    check_target_bytes(target)?;
    let connect = method == "CONNECT";
    let form = if target.starts_with('/') {
        Target::Origin(target)
    } else if target == "*" {
        Target::Asterisk
    } else if let Some((scheme, after)) = target.split_once("://") {
        parse_absolute(scheme, after)?
    } else if connect
        && is_valid_host(target.as_bytes())
        && host_port(target.as_bytes()).is_some_and(|p| !p.is_empty())
    {
        Target::Authority(target)
    } else {
        return Err(HttpError::Malformed("malformed request target"));
    };
    let allowed = match form {
        Target::Authority(_) => connect,
        Target::Asterisk => method == "OPTIONS",
        Target::Origin(_) | Target::Absolute { .. } => !connect,
    };
    if !allowed {
        return Err(HttpError::Malformed(
            "request target form does not suit the method",
        ));
    }
    Ok(form)
}

/// httparse let through 0x21-0x7E and any non-ASCII UTF-8. A fragment has no place in a
/// request (RFC 9112 §3.2), raw non-ASCII none in a URI (RFC 3986 §2), and `%` starts
/// `%HH` (RFC 3986 §2.1). nginx checks escapes in the path, which it decodes, and leaves
/// the query to the application, as here (`parse_subscription` decodes it).
fn check_target_bytes(target: &str) -> Result<(), HttpError> {
    if target.bytes().any(|b| b == b'#' || !b.is_ascii()) {
        return Err(HttpError::Malformed("invalid byte in the request target"));
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path).as_bytes();
    let bad_escape = path.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !path
                .get(i + 1..i + 3)
                .is_some_and(|hh| hh.iter().all(u8::is_ascii_hexdigit))
    });
    if bad_escape {
        return Err(HttpError::Malformed(
            "malformed percent-encoding in the request target",
        ));
    }
    Ok(())
}

/// `scheme://after` (RFC 9112 §3.2.2) for an `http` or `https` scheme, whose authority
/// is a valid host without userinfo.
fn parse_absolute<'a>(scheme: &str, after: &'a str) -> Result<Target<'a>, HttpError> {
    let https = if scheme.eq_ignore_ascii_case("https") {
        true
    } else if scheme.eq_ignore_ascii_case("http") {
        false
    } else {
        return Err(HttpError::Malformed("request target scheme is not http or https"));
    };
    let end = after.find(['/', '?']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    // RFC 9110 §4.2.4: userinfo in an http(s) URI is to be treated as an error.
    if authority.contains('@') || !is_valid_host(authority.as_bytes()) {
        return Err(HttpError::Malformed("invalid authority in the request target"));
    }
    Ok(Target::Absolute {
        https,
        authority,
        rest,
    })
}

/// RFC 9112 §3.2: one `Host` line, required in HTTP/1.1, valid, and naming the same
/// host and port as an absolute-form target.
fn check_host(fields: &Fields<'_>, minor_version: u8, target: &Target<'_>) -> Result<(), HttpError> {
    if fields.host_lines > 1 {
        return Err(HttpError::Malformed("more than one Host header field"));
    }
    let Some(host) = fields.host else {
        return if minor_version == 1 {
            Err(HttpError::Malformed(
                "HTTP/1.1 request without a Host header field",
            ))
        } else {
            Ok(())
        };
    };
    if !is_valid_host(host) {
        return Err(HttpError::Malformed("invalid Host header field"));
    }
    if let Target::Absolute { https, authority, .. } = *target {
        if !same_authority(authority.as_bytes(), host, if https { b"443" } else { b"80" }) {
            return Err(HttpError::Malformed(
                "Host does not match the authority of the request target",
            ));
        }
    }
    Ok(())
}

/// Whether `a` and `b` (both valid per [`is_valid_host`]) name the same host and port,
/// a missing or empty port standing for `default_port` (HAProxy's
/// `h1_validate_mismatch_authority`). Hosts compare case-insensitively.
fn same_authority(a: &[u8], b: &[u8], default_port: &[u8]) -> bool {
    let (a_host, a_port) = host_and_port(a, default_port);
    let (b_host, b_port) = host_and_port(b, default_port);
    a_host.eq_ignore_ascii_case(b_host) && trim_zeros(a_port) == trim_zeros(b_port)
}

/// `host[:port]` split in two, `default_port` standing for a missing or empty port.
fn host_and_port<'v>(value: &'v [u8], default_port: &'v [u8]) -> (&'v [u8], &'v [u8]) {
    match host_port(value) {
        Some(port) => {
            let host = &value[..value.len() - port.len() - 1];
            (host, if port.is_empty() { default_port } else { port })
        }
        None => (value, default_port),
    }
}

fn trim_zeros(mut digits: &[u8]) -> &[u8] {
    while let [b'0', rest @ ..] = digits {
        digits = rest;
    }
    digits
}

/// The port of a `host[:port]` (the digits after the colon that ends the host, maybe
/// none), or `None` without that colon.
fn host_port(value: &[u8]) -> Option<&[u8]> {
    let host_end = match value.first() {
        Some(b'[') => value.iter().position(|&b| b == b']')? + 1,
        _ => value.iter().position(|&b| b == b':')?,
    };
    match value.get(host_end) {
        Some(b':') => Some(&value[host_end + 1..]),
        _ => None,
    }
}

/// `uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2), checked as nginx's
/// `ngx_http_validate_host` does: a non-empty reg-name of unreserved, sub-delims and `%`
/// without `..`, or an IP literal in brackets; a port of digits up to 65535, maybe empty.
fn is_valid_host(value: &[u8]) -> bool {
    let (host, port) = host_and_port(value, b"");
    let no_double_dot = !host.windows(2).any(|w| w == b"..");
    let host_ok = match host {
        // IPv6address or IPvFuture; `%` has no place in either.
        [b'[', inner @ .., b']'] => inner.iter().all(|&b| b != b'%' && (is_host_byte(b) || b == b':')),
        _ => {
            // A trailing dot ends a fully qualified name.
            let name = host.strip_suffix(b".").unwrap_or(host);
            !name.is_empty() && name.iter().all(|&b| is_host_byte(b))
        }
    };
    let port_ok = port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && port.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65_535;
    no_double_dot && host_ok && port_ok
}

/// unreserved / sub-delims / `%` (RFC 3986 §2.1-§2.3).
const fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b'%'
        )
}

/// The non-empty members of a comma-separated list, optional whitespace trimmed
/// (RFC 9110 §5.6.1).
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|item| !item.is_empty())
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// `Content-Length = 1*DIGIT` (RFC 9110 §8.6); a list of identical values such as
/// `5, 5` is accepted as that value, as RFC 9112 §6.3 step 5 allows and HAProxy does
/// (nginx refuses it). A sign, an empty member, other bytes or a value over `u64` are
/// refused.
fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    const BAD: HttpError = HttpError::Malformed("invalid Content-Length");
    let mut result = None;
    for item in value.split(|&b| b == b',').map(trim_ows) {
        if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
            return Err(BAD);
        }
        let n = item
            .iter()
            .try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')));
        let n = n.ok_or(BAD)?;
        if result.is_some_and(|seen| seen != n) {
            return Err(HttpError::Malformed("conflicting Content-Length values"));
        }
        result = Some(n);
    }
    result.ok_or(BAD)
}

/// The topics and resume point a client asked for in its query string.
#[derive(Debug, PartialEq, Eq)]
pub struct Subscription {
    /// Distinct valid topics, in the order first named; never empty.
    pub topics: Vec<String>,
    /// The first `last_event_id=` value, percent-decoded.
    pub last_event_id: Option<String>,
}

/// Why a subscription query was refused; the caller answers 400 with the `Display` text.
#[derive(Debug, PartialEq, Eq)]
pub enum SubscriptionError {
    /// No `topic=` parameter.
    NoTopic,
    /// More than [`TOPICS_MAX`] distinct topics.
    TooManyTopics,
    /// A topic that fails [`is_valid_topic`]: its decoded name (lossy UTF-8), cut to 64
    /// chars.
    BadTopic(String),
    /// A malformed `%` escape, or a `last_event_id` that is not UTF-8 once decoded.
    BadEncoding,
}

impl fmt::Display for SubscriptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubscriptionError::NoTopic => {
                write!(
                    f,
                    "no topic: subscribe with ?topic=NAME, repeated for more topics"
                )
            }
            SubscriptionError::TooManyTopics => {
                write!(f, "too many topics: at most {TOPICS_MAX} per subscription")
            }
            // `{:?}` quotes the name and escapes control characters.
            SubscriptionError::BadTopic(name) => write!(
                f,
                "invalid topic {name:?}: topics are 1-{TOPIC_LEN_MAX} bytes of [A-Za-z0-9._~:/-]"
            ),
            SubscriptionError::BadEncoding => {
                write!(f, "malformed percent-encoding in the query string")
            }
        }
    }
}

impl std::error::Error for SubscriptionError {}

/// Parses a subscription query such as `topic=a&topic=b%2Fc&last_event_id=42`.
///
/// Pairs are `key=value` separated by `&` (a pair without `=` has an empty value, empty
/// pairs are skipped); keys and values are percent-decoded with `+` as a space
/// (`application/x-www-form-urlencoded`). Every `topic` is collected in order with
/// duplicates dropped; the first `last_event_id` is kept; other keys are ignored and
/// their values not decoded.
///
/// # Errors
///
/// [`SubscriptionError::NoTopic`] without a `topic`, [`SubscriptionError::TooManyTopics`]
/// past [`TOPICS_MAX`] distinct ones, [`SubscriptionError::BadTopic`] for the first
/// invalid one, [`SubscriptionError::BadEncoding`] for a `%` not followed by two hex
/// digits in a key or a decoded value, or a `last_event_id` that is not UTF-8.
pub fn parse_subscription(query: &str) -> Result<Subscription, SubscriptionError> {
    let mut topics: Vec<String> = Vec::new();
    let mut last_event_id = None;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match percent_decode(key)?.as_slice() {
            b"topic" => add_topic(&mut topics, percent_decode(value)?)?,
            b"last_event_id" if last_event_id.is_none() => {
                let id = String::from_utf8(percent_decode(value)?);
                last_event_id = Some(id.map_err(|_| SubscriptionError::BadEncoding)?);
            }
            _ => {}
        }
    }
    if topics.is_empty() {
        return Err(SubscriptionError::NoTopic);
    }
    Ok(Subscription {
        topics,
        last_event_id,
    })
}

fn add_topic(topics: &mut Vec<String>, raw: Vec<u8>) -> Result<(), SubscriptionError> {
    let topic = match String::from_utf8(raw) {
        Ok(topic) if is_valid_topic(topic.as_bytes()) => topic,
        Ok(topic) => return Err(bad_topic(topic.as_bytes())),
        Err(e) => return Err(bad_topic(e.as_bytes())),
    };
    // A linear scan: at most TOPICS_MAX short strings.
    if topics.contains(&topic) {
        return Ok(());
    }
    if topics.len() == TOPICS_MAX {
        return Err(SubscriptionError::TooManyTopics);
    }
    topics.push(topic);
    Ok(())
}

fn bad_topic(raw: &[u8]) -> SubscriptionError {
    SubscriptionError::BadTopic(
        String::from_utf8_lossy(raw)
            .chars()
            .take(TOPIC_ECHO_MAX)
            .collect(),
    )
}

/// The value of query parameter `name` (its first occurrence), percent-decoded; `None`
/// when absent or badly encoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    let raw = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)?
        .1;
    String::from_utf8(percent_decode(raw).ok()?).ok()
}

/// Decodes `%XX` escapes and `+` (as a space).
fn percent_decode(s: &str) -> Result<Vec<u8>, SubscriptionError> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            b'%' => {
                let hi = bytes.next().and_then(hex_value);
                let lo = bytes.next().and_then(hex_value);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => hi << 4 | lo,
                    _ => return Err(SubscriptionError::BadEncoding),
                }
            }
            _ => b,
        });
    }
    Ok(out)
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Whether `topic` is a valid topic name: 1 to [`TOPIC_LEN_MAX`] bytes, each in
/// `[A-Za-z0-9._~:/-]` (URL-safe, so a topic needs no escaping in a query or a log line).
#[must_use]
pub fn is_valid_topic(topic: &[u8]) -> bool {
    (1..=TOPIC_LEN_MAX).contains(&topic.len()) && topic.iter().all(|&b| is_topic_byte(b))
}

const fn is_topic_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b':' | b'/' | b'-')
}

/// A complete HTTP/1.1 response with a `text/plain; charset=utf-8` body, its
/// `Content-Length`, `Connection: close` when `!keep_alive`, then `extra_headers` in
/// order. An HTTP/1.0 client that should keep the connection needs
/// `("Connection", "keep-alive")` among `extra_headers` (RFC 9112 §9.3).
///
/// # Panics
///
/// If a name or value in `extra_headers` contains CR or LF, which would let it forge
/// header fields (response splitting).
#[must_use]
pub fn simple_response(status: u16, body: &str, keep_alive: bool, extra_headers: &[(&str, &str)]) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        status_text(status),
        body.len()
    );
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    for &(name, value) in extra_headers {
        assert!(
            !name.contains(['\r', '\n']) && !value.contains(['\r', '\n']),
            "header field {name:?}: {value:?} contains CR or LF"
        );
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// The reason phrase for `status` (RFC 9110 §15), or `""` for a code not listed here
/// (an empty reason phrase is valid, RFC 9112 §4).
#[must_use]
pub fn status_text(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SIMPLE: &[u8] = b"GET /events?topic=a HTTP/1.1\r\nHost: x\r\n\r\n";

    fn complete(buf: &[u8]) -> Request<'_> {
        match parse_request(buf) {
            Ok(Parsed::Complete(req)) => req,
            other => panic!(
                "expected Complete for {:?}, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    fn error(buf: &[u8]) -> HttpError {
        match parse_request(buf) {
            Err(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn simple_get() {
        let req = complete(SIMPLE);
        assert_eq!(
            req,
            Request {
                method: Method::Get,
                path: "/events",
                query: "topic=a",
                minor_version: 1,
                keep_alive: true,
                last_event_id: None,
                origin: None,
                authorization: None,
                cookie: None,
                has_body: false,
                content_length: None,
                content_type: None,
                head_len: SIMPLE.len(),
            }
        );
    }

    #[test]
    fn methods() {
        for (token, method) in [
            ("GET", Method::Get),
            ("HEAD", Method::Head),
            ("POST", Method::Post),
            ("OPTIONS", Method::Options),
            ("get", Method::Other),
        ] {
            let buf = format!("{token} / HTTP/1.1\r\nHost: h\r\n\r\n");
            assert_eq!(complete(buf.as_bytes()).method, method, "{token}");
        }
    }

    #[test]
    fn target_without_query() {
        let req = complete(b"GET /a/b HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!((req.path, req.query), ("/a/b", ""));
        let req = complete(b"GET /a?x=1?y HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!((req.path, req.query), ("/a", "x=1?y"));
    }

    #[test]
    fn keep_alive_rules() {
        let cases: [(&[u8], bool); 8] = [
            (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", true),
            (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", false),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nconnection: Upgrade, CLOSE\r\n\r\n",
                false,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
                true,
            ),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", false),
            (
                b"GET / HTTP/1.0\r\nConnection: x\r\nConnection: keep-alive\r\n\r\n",
                true,
            ),
        ];
        for (buf, keep_alive) in cases {
            assert_eq!(
                complete(buf).keep_alive,
                keep_alive,
                "{}",
                String::from_utf8_lossy(buf)
            );
        }
        assert_eq!(complete(b"GET / HTTP/1.0\r\n\r\n").minor_version, 0);
    }

    #[test]
    fn last_event_id_header() {
        let req = complete(b"GET / HTTP/1.1\r\nHost: h\r\nLast-Event-ID: 42-7\r\nlast-event-id: 9\r\n\r\n");
        assert_eq!(req.last_event_id, Some(&b"42-7"[..]));
        let req = complete(b"GET / HTTP/1.1\r\nHost: h\r\nLast-Event-ID:\r\n\r\n");
        assert_eq!(req.last_event_id, Some(&b""[..]));
    }

    /// `text` with each `|` turned into CRLF, as bytes.
    fn crlf(text: &str) -> Vec<u8> {
        text.replace('|', "\r\n").into_bytes()
    }

    #[test]
    fn body_framing() {
        let cases: [(&str, Option<u64>); 6] = [
            ("POST / HTTP/1.1|Host: h|||", None),
            ("POST / HTTP/1.1|Host: h|Content-Length: 0||", Some(0)),
            ("POST / HTTP/1.1|Host: h|Content-Length: 12||", Some(12)),
            ("POST / HTTP/1.1|Host: h|Content-Length: 007||", Some(7)),
            // RFC 9112 §6.3 step 5: a list of one value repeated is that value.
            ("POST / HTTP/1.1|Host: h|Content-Length: 5, 5||", Some(5)),
            (
                "POST / HTTP/1.1|Host: h|Content-Length: 5|content-length: 5||",
                Some(5),
            ),
        ];
        for (text, length) in cases {
            let buf = crlf(text);
            let req = complete(&buf);
            assert_eq!(req.content_length, length, "{text}");
            assert_eq!(req.has_body, length.is_some_and(|n| n > 0), "{text}");
        }
    }

    /// Refused heads and the exact error: the Host is right in each, so the rule named
    /// is the one that fires.
    #[test]
    fn framing_refusals() {
        use HttpError::{LengthRequired, Malformed, NotImplemented};
        let cases: [(&str, HttpError); 19] = [
            (
                "Content-Length: 5|Content-Length: 6",
                Malformed("conflicting Content-Length values"),
            ),
            (
                "Content-Length: 5, 6",
                Malformed("conflicting Content-Length values"),
            ),
            ("Content-Length: -1", Malformed("invalid Content-Length")),
            ("Content-Length: +1", Malformed("invalid Content-Length")),
            ("Content-Length:", Malformed("invalid Content-Length")),
            ("Content-Length: 5,", Malformed("invalid Content-Length")),
            ("Content-Length: 0x5", Malformed("invalid Content-Length")),
            (
                "Content-Length: 99999999999999999999",
                Malformed("invalid Content-Length"),
            ),
            ("Content-Length: 1 2", Malformed("invalid Content-Length")),
            (
                "Content-Length: 5|Transfer-Encoding: chunked",
                Malformed("both Content-Length and Transfer-Encoding"),
            ),
            (
                "Transfer-Encoding: chunked, gzip",
                Malformed("Transfer-Encoding does not end in chunked"),
            ),
            (
                "Transfer-Encoding: xchunked",
                Malformed("Transfer-Encoding does not end in chunked"),
            ),
            (
                "Transfer-Encoding:",
                Malformed("empty member in Transfer-Encoding"),
            ),
            (
                "Transfer-Encoding: ,chunked",
                Malformed("empty member in Transfer-Encoding"),
            ),
            (
                "Transfer-Encoding: chunked|Transfer-Encoding: chunked",
                Malformed("Transfer-Encoding names chunked more than once"),
            ),
            (
                "Transfer-Encoding: gzip, Chunked",
                NotImplemented("transfer codings other than chunked are not implemented"),
            ),
            (
                "Transfer-Encoding: gzip|Transfer-Encoding: chunked",
                NotImplemented("transfer codings other than chunked are not implemented"),
            ),
            ("Transfer-Encoding: chunked", LengthRequired),
            ("Transfer-Encoding:\tCHUNKED\t", LengthRequired),
        ];
        for (fields, want) in cases {
            let buf = crlf(&format!("POST / HTTP/1.1|Host: h|{fields}||"));
            assert_eq!(error(&buf), want, "{fields}");
        }
        let buf = crlf("POST / HTTP/1.0|Transfer-Encoding: chunked||");
        assert_eq!(error(&buf), Malformed("Transfer-Encoding in an HTTP/1.0 request"));
        assert_eq!(
            (LengthRequired.status(), NotImplemented("x").status()),
            (411, 501)
        );
    }

    #[test]
    fn host_rules() {
        use HttpError::Malformed;
        let missing = Malformed("HTTP/1.1 request without a Host header field");
        let two = Malformed("more than one Host header field");
        let invalid = Malformed("invalid Host header field");
        let mismatch = Malformed("Host does not match the authority of the request target");
        let cases: [(&str, Result<(), HttpError>); 19] = [
            ("GET / HTTP/1.1||", Err(missing)),
            ("GET / HTTP/1.0||", Ok(())),
            ("GET / HTTP/1.1|Host: a|Host: a||", Err(two)),
            ("GET / HTTP/1.0|Host: a|host: b||", Err(two)),
            ("GET / HTTP/1.1|Host:||", Err(invalid)),
            ("GET / HTTP/1.1|Host: a b||", Err(invalid)),
            ("GET / HTTP/1.1|Host: a/b||", Err(invalid)),
            ("GET / HTTP/1.1|Host: a@b||", Err(invalid)),
            ("GET / HTTP/1.1|Host: a..b||", Err(invalid)),
            ("GET / HTTP/1.1|Host: a:65536||", Err(invalid)),
            ("GET / HTTP/1.1|Host: a:8x||", Err(invalid)),
            ("GET / HTTP/1.1|Host: [::1||", Err(invalid)),
            ("GET / HTTP/1.1|Host: 127.0.0.1:8080||", Ok(())),
            ("GET / HTTP/1.1|Host: [::1]:65535||", Ok(())),
            ("GET / HTTP/1.1|Host: Example.COM.:||", Ok(())),
            ("GET http://a:80/x HTTP/1.1|Host: A||", Ok(())),
            ("GET https://a/x HTTP/1.1|Host: a:443||", Ok(())),
            ("GET http://a/x HTTP/1.1|Host: a:443||", Err(mismatch)),
            ("GET http://a/x HTTP/1.1|Host: b||", Err(mismatch)),
        ];
        for (text, want) in cases {
            let r = parse_request(&crlf(text)).map(|_| ());
            assert_eq!(r, want, "{text}");
        }
    }

    #[test]
    fn host_validation_boundaries() {
        for port in ["", "0", "80", "65535", "00080"] {
            assert!(is_valid_host(format!("h:{port}").as_bytes()), "port {port:?}");
        }
        for port in ["65536", "100000", "-1", "+1", " 1"] {
            assert!(!is_valid_host(format!("h:{port}").as_bytes()), "port {port:?}");
        }
        for b in 0..=u8::MAX {
            let name = [b'a', b, b'b'];
            let allowed = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b);
            // A colon starts an (invalid) port `b`.
            assert_eq!(is_valid_host(&name), allowed, "byte {b:#04x}");
        }
        for literal in ["[::1]", "[abcd::ef98:0:7654:321]:80", "[v1.a!$&'()*+,;=-._~:]"] {
            assert!(is_valid_host(literal.as_bytes()), "{literal}");
        }
        for literal in [
            "[ab..cd::1]",
            "[::1].",
            "[::1]..:98",
            "x[::1]",
            "[::1",
            "[::%31]",
            "[::1/]",
        ] {
            assert!(!is_valid_host(literal.as_bytes()), "{literal}");
        }
        assert!(same_authority(b"a", b"A:80", b"80"));
        assert!(same_authority(b"a:", b"a", b"80"));
        assert!(same_authority(b"[::1]:0443", b"[::1]", b"443"));
        assert!(!same_authority(b"a:81", b"a", b"80"));
        assert!(!same_authority(b"a:8080", b"a:80", b"80"));
    }

    #[test]
    fn target_forms() {
        let cases: [(&str, &str, &str); 7] = [
            ("GET /a?b HTTP/1.1|Host: h||", "/a", "b"),
            ("GET http://h HTTP/1.1|Host: h||", "/", ""),
            ("GET HTTP://h?x=1 HTTP/1.1|Host: h||", "/", "x=1"),
            ("GET https://h:443/s/t?u HTTP/1.1|Host: h||", "/s/t", "u"),
            ("OPTIONS * HTTP/1.1|Host: h||", "*", ""),
            ("CONNECT h:443 HTTP/1.1|Host: h:443||", "h:443", ""),
            ("GET /a_b?c=%_e HTTP/1.0||", "/a_b", "c=%_e"),
        ];
        for (text, path, query) in cases {
            let buf = crlf(text);
            let req = complete(&buf);
            assert_eq!((req.path, req.query), (path, query), "{text}");
        }
        let refused: [(&str, &str); 14] = [
            (
                "GET /a%2 HTTP/1.1|Host: h||",
                "malformed percent-encoding in the request target",
            ),
            (
                "GET /a%zz HTTP/1.1|Host: h||",
                "malformed percent-encoding in the request target",
            ),
            (
                "GET /%?q HTTP/1.1|Host: h||",
                "malformed percent-encoding in the request target",
            ),
            (
                "GET * HTTP/1.1|Host: h||",
                "request target form does not suit the method",
            ),
            ("OPTIONS */x HTTP/1.1|Host: h||", "malformed request target"),
            ("GET admin HTTP/1.1|Host: h||", "malformed request target"),
            ("GET h:80 HTTP/1.1|Host: h||", "malformed request target"),
            ("CONNECT h HTTP/1.1|Host: h||", "malformed request target"),
            (
                "CONNECT / HTTP/1.1|Host: h||",
                "request target form does not suit the method",
            ),
            (
                "CONNECT http://h:80 HTTP/1.1|Host: h||",
                "request target form does not suit the method",
            ),
            (
                "GET ftp://h/ HTTP/1.1|Host: h||",
                "request target scheme is not http or https",
            ),
            (
                "GET http://u:p@h/ HTTP/1.1|Host: h||",
                "invalid authority in the request target",
            ),
            (
                "GET http:///x HTTP/1.1|Host: h||",
                "invalid authority in the request target",
            ),
            (
                "GET /a#b HTTP/1.1|Host: h||",
                "invalid byte in the request target",
            ),
        ];
        for (text, why) in refused {
            assert_eq!(error(&crlf(text)), HttpError::Malformed(why), "{text}");
        }
        let non_ascii = "GET /caf\u{e9} HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(
            error(non_ascii.as_bytes()),
            HttpError::Malformed("invalid byte in the request target")
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let cases: [&[u8]; 14] = [
            b"\x00\x01\x02\x03 garbage\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n",
            b" GET / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.1\rHost: h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
            b"GET / HTTP/1.1\r\n Host: h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nName: a\x00b\r\n\r\n",
            b"GET /\xff\xfe HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET / HTTX/1.1\r\nHost: h\r\n\r\n",
        ];
        for buf in cases {
            let e = error(buf);
            assert!(
                matches!(e, HttpError::Malformed(_)),
                "{}: {e:?}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    #[test]
    fn unsupported_versions() {
        for version in ["HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "HTTP/3.0"] {
            let buf = format!("GET / {version}\r\n\r\n");
            assert_eq!(error(buf.as_bytes()), HttpError::VersionNotSupported, "{version}");
            assert_eq!(HttpError::VersionNotSupported.status(), 505);
            // Decided the same way before the line ends.
            for cut in 1..buf.len() - 4 {
                let r = parse_request(&buf.as_bytes()[..cut]);
                assert!(matches!(r, Ok(Parsed::Partial)), "{version} cut at {cut}: {r:?}");
            }
        }
        assert_eq!(
            error(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            HttpError::VersionNotSupported
        );
        for bad in ["HTTP/2", "HTTP/2.0.1", "HTTP/a.b", "HTTP/10.0"] {
            let buf = format!("GET / {bad}\r\n\r\n");
            assert!(matches!(error(buf.as_bytes()), HttpError::Malformed(_)), "{bad}");
        }
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let buf = b"\r\n\nGET / HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(complete(buf).head_len, buf.len());
        assert_eq!(parse_request(b"\r\n\r\n"), Ok(Parsed::Partial));
    }

    #[test]
    fn bare_lf_line_endings() {
        let req = complete(b"GET /x HTTP/1.1\nHost: h\nConnection: close\n\n");
        assert_eq!((req.path, req.keep_alive, req.head_len), ("/x", false, 43));
    }

    #[test]
    fn pipelined_requests() {
        let first = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let second = b"HEAD /b?c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let mut buf = first.to_vec();
        buf.extend_from_slice(second);
        buf.extend_from_slice(b"GET /c HT");
        let a = complete(&buf);
        assert_eq!((a.path, a.head_len), ("/a", first.len()));
        let b = complete(&buf[a.head_len..]);
        assert_eq!(
            (b.method, b.path, b.query, b.keep_alive),
            (Method::Head, "/b", "c", false)
        );
        assert_eq!(b.head_len, second.len());
        let rest = &buf[a.head_len + b.head_len..];
        assert_eq!(parse_request(rest), Ok(Parsed::Partial));
    }

    #[test]
    fn every_proper_prefix_is_partial() {
        let cases: [&[u8]; 4] = [
            SIMPLE,
            b"\r\nPOST /p?q=%20 HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\n",
            b"GET / HTTP/1.1\nLast-Event-ID: 7\nX:\nHost: [::1]:8080\n\n",
            b"HEAD http://h/h HTTP/1.1\r\nA: b\r\nC:  d e \r\nHost: H:80\r\n\r\n",
        ];
        for buf in cases {
            let whole = complete(buf);
            assert_eq!(whole.head_len, buf.len());
            for cut in 0..buf.len() {
                assert_eq!(parse_request(&buf[..cut]), Ok(Parsed::Partial), "cut at {cut}");
            }
            let mut longer = buf.to_vec();
            longer.extend_from_slice(b"trailing bytes");
            assert_eq!(complete(&longer), whole);
        }
    }

    fn head_with_header_bytes(n: usize) -> Vec<u8> {
        let mut buf = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ".to_vec();
        buf.resize(buf.len() + n, b'a');
        buf.extend_from_slice(b"\r\n\r\n");
        buf
    }

    #[test]
    fn head_size_boundary() {
        let overhead = head_with_header_bytes(0).len();
        let exact = head_with_header_bytes(HEAD_MAX - overhead);
        assert_eq!(exact.len(), HEAD_MAX);
        assert_eq!(complete(&exact).head_len, HEAD_MAX);
        let over = head_with_header_bytes(HEAD_MAX - overhead + 1);
        assert_eq!(error(&over), HttpError::HeadTooLarge);
        assert_eq!(parse_request(&over[..HEAD_MAX - 1]), Ok(Parsed::Partial));
    }

    #[test]
    fn huge_header_is_head_too_large() {
        let buf = head_with_header_bytes(20 * 1024);
        let e = error(&buf);
        assert_eq!((e, e.status()), (HttpError::HeadTooLarge, 431));
    }

    #[test]
    fn huge_uri_is_uri_too_long() {
        let mut buf = b"GET /".to_vec();
        buf.resize(10 * 1024, b'a');
        buf.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        let e = error(&buf);
        assert_eq!((e, e.status()), (HttpError::UriTooLong, 414));
        assert_eq!(error(&buf[..HEAD_MAX]), HttpError::UriTooLong);
        assert_eq!(parse_request(&buf[..HEAD_MAX - 1]), Ok(Parsed::Partial));
    }

    /// A head with `n` header fields, `Host` the first of them.
    fn head_with_headers(n: usize) -> Vec<u8> {
        let mut buf = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
        for i in 1..n {
            buf.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        buf
    }

    #[test]
    fn header_count_boundary() {
        assert!(matches!(
            parse_request(&head_with_headers(HEADERS_MAX)),
            Ok(Parsed::Complete(_))
        ));
        let e = error(&head_with_headers(HEADERS_MAX + 1));
        assert_eq!((e, e.status()), (HttpError::TooManyHeaders, 431));
    }

    #[test]
    fn error_statuses_and_reasons() {
        let cases = [
            (HttpError::Malformed("why"), 400, "why"),
            (HttpError::HeadTooLarge, 431, "8192"),
            (HttpError::UriTooLong, 414, "8192"),
            (HttpError::TooManyHeaders, 431, "64"),
            (HttpError::VersionNotSupported, 505, "HTTP/1.1"),
        ];
        for (e, status, needle) in cases {
            assert_eq!(e.status(), status);
            assert!(e.reason().contains(needle), "{e:?}: {}", e.reason());
            assert!(status_text(status).len() > 2);
        }
    }

    #[test]
    fn simple_response_bytes() {
        let r = simple_response(404, "no such topic\n", true, &[]);
        assert_eq!(
            r,
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n\
              Content-Length: 14\r\n\r\nno such topic\n"
        );
        let r = simple_response(405, "", false, &[("Allow", "GET, HEAD")]);
        assert_eq!(
            r,
            b"HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\n\
              Content-Length: 0\r\nConnection: close\r\nAllow: GET, HEAD\r\n\r\n"
        );
        assert!(simple_response(599, "x", true, &[]).starts_with(b"HTTP/1.1 599 \r\n"));
    }

    #[test]
    #[should_panic(expected = "contains CR or LF")]
    fn simple_response_refuses_header_injection() {
        let _ = simple_response(200, "", true, &[("X", "a\r\nSet-Cookie: b")]);
    }

    #[test]
    fn topic_length_boundaries() {
        assert!(!is_valid_topic(b""));
        assert!(is_valid_topic(b"a"));
        assert!(is_valid_topic(&[b'a'; TOPIC_LEN_MAX]));
        assert!(!is_valid_topic(&[b'a'; TOPIC_LEN_MAX + 1]));
    }

    #[test]
    fn topic_bytes_exhaustive() {
        let allowed = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~:/-";
        for b in 0..=u8::MAX {
            assert_eq!(is_valid_topic(&[b]), allowed.contains(&b), "byte {b:#04x}");
            assert_eq!(
                is_valid_topic(&[b'x', b, b'y']),
                allowed.contains(&b),
                "byte {b:#04x}"
            );
        }
    }

    #[test]
    fn subscription_basics() {
        let sub = parse_subscription("topic=a&x=1&topic=b%2Fc&topic=a&last_event_id=4%3A2&last_event_id=9")
            .unwrap();
        assert_eq!(sub.topics, ["a", "b/c"]);
        assert_eq!(sub.last_event_id.as_deref(), Some("4:2"));
        let sub = parse_subscription("&&to%70ic=z&").unwrap();
        assert_eq!((sub.topics, sub.last_event_id), (vec!["z".to_owned()], None));
        let sub = parse_subscription("topic=a&last_event_id=a+b%20c").unwrap();
        assert_eq!(sub.last_event_id.as_deref(), Some("a b c"));
        // Unknown parameters are not decoded, so bad escapes there do not matter.
        assert!(parse_subscription("topic=a&cb=%zz").is_ok());
    }

    #[test]
    fn subscription_errors() {
        use SubscriptionError::*;
        assert_eq!(parse_subscription(""), Err(NoTopic));
        assert_eq!(parse_subscription("last_event_id=3&x"), Err(NoTopic));
        assert_eq!(parse_subscription("topic=a+b"), Err(BadTopic("a b".into())));
        assert_eq!(parse_subscription("topic"), Err(BadTopic(String::new())));
        assert_eq!(parse_subscription("topic=%ff"), Err(BadTopic("\u{fffd}".into())));
        assert_eq!(parse_subscription("topic=%4"), Err(BadEncoding));
        assert_eq!(parse_subscription("topic=%zz"), Err(BadEncoding));
        assert_eq!(parse_subscription("t%opic=a"), Err(BadEncoding));
        assert_eq!(parse_subscription("topic=a&last_event_id=%ff"), Err(BadEncoding));
        let long = "b".repeat(TOPIC_LEN_MAX + 1);
        assert_eq!(
            parse_subscription(&format!("topic={long}")),
            Err(BadTopic("b".repeat(64)))
        );
    }

    #[test]
    fn subscription_topic_count_boundary() {
        let query = |n: usize| {
            (0..n)
                .map(|i| format!("topic=t{i}"))
                .collect::<Vec<_>>()
                .join("&")
        };
        assert_eq!(
            parse_subscription(&query(TOPICS_MAX)).unwrap().topics.len(),
            TOPICS_MAX
        );
        assert_eq!(
            parse_subscription(&query(TOPICS_MAX + 1)),
            Err(SubscriptionError::TooManyTopics)
        );
        // Duplicates do not count against the limit.
        let dup = format!("{}&topic=t0&topic=t1", query(TOPICS_MAX));
        assert_eq!(parse_subscription(&dup).unwrap().topics.len(), TOPICS_MAX);
    }

    #[test]
    fn subscription_error_texts() {
        assert_eq!(
            SubscriptionError::BadTopic("a b".into()).to_string(),
            "invalid topic \"a b\": topics are 1-200 bytes of [A-Za-z0-9._~:/-]"
        );
        assert!(SubscriptionError::TooManyTopics.to_string().contains("64"));
        assert!(SubscriptionError::NoTopic.to_string().contains("?topic="));
        assert!(SubscriptionError::BadEncoding.to_string().contains("percent"));
    }

    /// A request head generated from its parts, and the fields it must parse to.
    #[derive(Debug, Clone)]
    struct Model {
        bytes: Vec<u8>,
        method: Method,
        path: String,
        query: String,
        minor_version: u8,
        keep_alive: bool,
        last_event_id: Option<Vec<u8>>,
        has_body: bool,
    }

    /// How a generated head names its host: origin-form with `Host`, absolute-form with
    /// `Host` (the same host, the default port spelled out or not), or for HTTP/1.0
    /// origin-form without `Host`.
    #[derive(Debug, Clone, Copy)]
    enum HostStyle {
        Header,
        Absolute { port: bool },
        None,
    }

    fn model() -> impl Strategy<Value = Model> {
        (
            (
                prop::sample::select(vec![
                    ("GET", Method::Get),
                    ("HEAD", Method::Head),
                    ("POST", Method::Post),
                    ("DELETE", Method::Other),
                ]),
                "/[a-z0-9/._-]{0,20}",
                prop::option::of("[a-z0-9=&%+_-]{0,30}"),
                0u8..=1,
                prop::option::of(prop::sample::select(vec!["close", "keep-alive", "Upgrade"])),
                prop::option::of("[ -~]{0,20}"),
                prop::option::of(0u64..100_000),
            ),
            prop::collection::vec(("[A-Za-z][A-Za-z0-9_-]{0,15}", "[!-~]([ -~]{0,30}[!-~])?"), 0..10),
            any::<bool>(),
            (
                prop::sample::select(vec![
                    HostStyle::Header,
                    HostStyle::Absolute { port: false },
                    HostStyle::Absolute { port: true },
                    HostStyle::None,
                ]),
                "[a-z0-9-]{1,10}(\\.[a-z0-9-]{1,10}){0,2}|\\[::1\\]|127\\.0\\.0\\.1",
                prop::option::of(1u16..),
                0..10usize,
            ),
        )
            .prop_map(
                |(
                    (method, path, query, minor, connection, leid, length),
                    others,
                    crlf,
                    (style, host, port, host_at),
                )| {
                    let eol = if crlf { "\r\n" } else { "\n" };
                    let style = match style {
                        HostStyle::None if minor == 1 => HostStyle::Header,
                        style => style,
                    };
                    let host_value = match (style, port) {
                        (HostStyle::Absolute { .. }, _) | (_, None) => host.clone(),
                        (_, Some(port)) => format!("{host}:{port}"),
                    };
                    let query_part = match &query {
                        Some(q) => format!("?{q}"),
                        None => String::new(),
                    };
                    let target = match style {
                        HostStyle::Absolute { port: true } => format!("http://{host}:80{path}{query_part}"),
                        HostStyle::Absolute { port: false } => format!("http://{host}{path}{query_part}"),
                        _ => format!("{path}{query_part}"),
                    };
                    let mut lines: Vec<String> = others
                        .iter()
                        .map(|(name, value)| format!("X-{name}: {value}"))
                        .collect();
                    if !matches!(style, HostStyle::None) {
                        lines.insert(host_at.min(lines.len()), format!("Host: {host_value}"));
                    }
                    if let Some(c) = connection {
                        lines.push(format!("Connection: {c}"));
                    }
                    if let Some(id) = &leid {
                        lines.push(format!("Last-Event-ID:{id}"));
                    }
                    if let Some(n) = length {
                        lines.push(format!("content-length: {n}"));
                    }
                    let mut text = format!("{} {target} HTTP/1.{minor}{eol}", method.0);
                    for line in lines {
                        text.push_str(&line);
                        text.push_str(eol);
                    }
                    text.push_str(eol);
                    let keep_alive = match connection {
                        Some("close") => false,
                        Some("keep-alive") => true,
                        _ => minor == 1,
                    };
                    Model {
                        bytes: text.into_bytes(),
                        method: method.1,
                        path,
                        query: query.unwrap_or_default(),
                        minor_version: minor,
                        keep_alive,
                        // httparse trims the value's surrounding whitespace.
                        last_event_id: leid.map(|id| trim_ows(id.as_bytes()).to_vec()),
                        has_body: length.is_some_and(|n| n > 0),
                    }
                },
            )
    }

    fn check_model(m: &Model, req: &Request<'_>) {
        assert_eq!(req.method, m.method);
        assert_eq!(req.path, m.path);
        assert_eq!(req.query, m.query);
        assert_eq!(req.minor_version, m.minor_version);
        assert_eq!(req.keep_alive, m.keep_alive);
        assert_eq!(req.last_event_id, m.last_event_id.as_deref());
        assert_eq!(req.has_body, m.has_body);
        assert_eq!(req.head_len, m.bytes.len());
    }

    proptest! {
        #[test]
        fn generated_requests_parse_and_every_prefix_is_partial(m in model()) {
            let req = complete(&m.bytes);
            check_model(&m, &req);
            for cut in 0..m.bytes.len() {
                prop_assert_eq!(parse_request(&m.bytes[..cut]), Ok(Parsed::Partial));
            }
        }

        #[test]
        fn pipelined_generated_requests(a in model(), b in model()) {
            let mut buf = a.bytes.clone();
            buf.extend_from_slice(&b.bytes);
            let first = complete(&buf);
            check_model(&a, &first);
            check_model(&b, &complete(&buf[first.head_len..]));
        }

        /// Whatever the bytes, growing the buffer gives Partial until the first
        /// non-Partial answer, and that answer never changes afterwards.
        #[test]
        fn answers_are_stable_as_bytes_arrive(
            m in model(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        ) {
            let mut bytes = m.bytes.clone();
            for (at, byte) in edits {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            let mut settled = None;
            for cut in 0..=bytes.len() {
                let r = parse_request(&bytes[..cut]);
                match (&settled, r) {
                    (None, Ok(Parsed::Partial)) => {}
                    (None, r) => settled = Some(r),
                    (Some(s), r) => prop_assert_eq!(s, &r, "cut at {}", cut),
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let r = parse_request(&bytes);
            if let Ok(Parsed::Complete(req)) = r {
                prop_assert!(req.head_len <= bytes.len());
            }
        }
    }
}
