//! The publisher wire protocol spoken on the local ingest socket, as a sans-IO decoder.
//!
//! Owns: the grammar below, its limits ([`IngestLimits`]), which errors keep the framing
//! and which lose it ([`IngestError::is_fatal`]), and the reply lines.
//!
//! Must never: touch a socket, buffer a payload larger than `payload_max` (it is counted
//! down as it streams past), or return a command or an error that consumed no input.
//!
//! ```text
//! Commands are text lines ending in LF; a CR before the LF is ignored. Tokens are
//! separated by one or more spaces or tabs; command and option names are
//! case-insensitive; a line without tokens is ignored.
//!
//! PUB <topic> <length> [event=<name>] [key=<key>]\n
//! <exactly <length> payload bytes><LF or CRLF>     -> "+OK <id>\r\n" or "-ERR <reason>\r\n"
//! PING\n                                           -> "+PONG\r\n"
//! QUIT\n                                           -> "+BYE\r\n", then the engine closes
//! ```
//!
//! A `PUB` or `SEND` whose length is above `payload_max` is refused as soon as its line
//! is read, before any of its payload, and the connection closes: skipping the payload
//! would mean reading it after all (up to 2^64 bytes), and a wrong length would turn the
//! commands behind it into payload. So the decoder holds no state between calls.

use std::fmt;

use super::http::{is_valid_topic, TOPIC_LEN_MAX};

/// Longest event name, in bytes.
pub const EVENT_NAME_MAX: usize = 64;
/// Longest key, in bytes.
pub const KEY_LEN_MAX: usize = 200;
/// Most digits in a `PUB` length.
pub const LENGTH_DIGITS_MAX: usize = 20;
/// Event names starting with this are the engine's own (`ringcast.reset`, ...).
pub const RESERVED_EVENT_PREFIX: &str = "ringcast.";
/// The reply to `PING`.
pub const PONG: &[u8] = b"+PONG\r\n";
/// The reply to `QUIT`, after which the engine closes the connection.
pub const BYE: &[u8] = b"+BYE\r\n";
/// Longest prefix of an offending token quoted back in an error, in chars.
const TOKEN_ECHO_MAX: usize = 32;

/// Bounds on what one connection may make the decoder hold.
#[derive(Clone, Copy, Debug)]
pub struct IngestLimits {
    /// Largest payload accepted, in bytes; a `PUB` announcing more is refused at once
    /// and the connection closes.
    pub payload_max: usize,
    /// Longest command line, in bytes before the LF (a CR counts).
    pub line_max: usize,
}

impl Default for IngestLimits {
    /// 1 MiB payloads, 1024-byte lines.
    fn default() -> Self {
        IngestLimits {
            payload_max: 1 << 20,
            line_max: 1024,
        }
    }
}

/// A `PUB` command. Every slice borrows from the buffer given to [`IngestDecoder::decode`].
#[derive(Debug, PartialEq, Eq)]
pub struct Publish<'a> {
    /// A topic that passed [`is_valid_topic`].
    pub topic: &'a str,
    /// The `event=` option: 1 to [`EVENT_NAME_MAX`] bytes of 0x21..=0x7E, not starting
    /// with [`RESERVED_EVENT_PREFIX`].
    pub event: Option<&'a str>,
    /// The `key=` option: 1 to [`KEY_LEN_MAX`] bytes of 0x21..=0x7E.
    pub key: Option<&'a str>,
    /// The payload, valid UTF-8, without its terminator.
    pub payload: &'a [u8],
}

/// One decoded command.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `PUB`: publish the payload; reply [`encode_ok`] or [`encode_err`].
    Publish(Publish<'a>),
    /// `PING`: reply [`PONG`].
    Ping,
    /// `QUIT`: reply [`BYE`] and close.
    Quit,
    /// `UPSTREAM`: from now on this connection receives the messages WebSocket clients
    /// send (`MSG` pushes); reply `+OK upstream`.
    Upstream,
    /// `SEND <conn-id> <length>`: deliver the payload to one client connection.
    Send(Send<'a>),
}

/// A `SEND` command: a payload for one client connection, named by the id its `MSG`
/// pushes carry (`<loop>.<slot>.<generation>`, in a cluster `<node>/<loop>.<slot>.<generation>`).
#[derive(Debug, PartialEq, Eq)]
pub struct Send<'a> {
    /// The connection id: an optional node id and `/`, then three dot-separated decimal
    /// numbers.
    pub conn: &'a str,
    /// The payload, any bytes (text frame when UTF-8, binary otherwise).
    pub payload: &'a [u8],
}

/// Why a command was refused. The `Display` text is the reason in the `-ERR` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IngestError {
    /// The first token is not a command (lossy UTF-8, at most 32 chars).
    UnknownCommand(String),
    /// The topic fails [`is_valid_topic`].
    BadTopic,
    /// The `event=` value is empty, too long, not printable ASCII, or reserved.
    BadEventName,
    /// The `key=` value is empty, too long or not printable ASCII.
    BadKey,
    /// An `event=` value cut by spaces, as in `event=my event`: the value with the
    /// tokens after it that hold no `=`, joined by spaces (lossy UTF-8, at most 32 chars).
    EventNameWithSpace(String),
    /// A `key=` value cut by spaces, echoed as for [`IngestError::EventNameWithSpace`].
    KeyWithSpace(String),
    /// An unknown option, a repeated one, or an argument to `PING`/`QUIT` (lossy UTF-8,
    /// at most 32 chars).
    BadOption(String),
    /// The announced payload is longer than `payload_max`; none of it is read. Fatal.
    PayloadTooLarge {
        /// The length the `PUB` line announced.
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// The payload is not valid UTF-8.
    NotUtf8,
    /// A `PUB` line with too few tokens or a length that is not 1-20 digits (or does not
    /// fit 64 bits): where the next command starts is unknown. Fatal.
    MalformedPub,
    /// A line longer than `line_max`. Fatal.
    LineTooLong {
        /// The limit in force.
        max: usize,
    },
    /// The payload is not followed by LF or CRLF. Fatal.
    MissingTerminator,
    /// A `SEND` line with too few tokens or a bad length. Fatal.
    MalformedSend,
    /// A `SEND` connection id that is not `[<node>/]<loop>.<slot>.<generation>`.
    BadConnId,
}

impl IngestError {
    /// Whether the framing is lost: the caller sends the `-ERR` reply and closes.
    #[must_use]
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            IngestError::MalformedPub
                | IngestError::MalformedSend
                | IngestError::LineTooLong { .. }
                | IngestError::MissingTerminator
                | IngestError::PayloadTooLarge { .. }
        )
    }
}

impl fmt::Display for IngestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `{:?}` quotes echoed tokens and escapes control bytes, so a reply stays one line.
        match self {
            IngestError::UnknownCommand(token) => {
                write!(
                    f,
                    "unknown command {token:?}: expected PUB, SEND, UPSTREAM, PING or QUIT"
                )
            }
            IngestError::BadTopic => write!(
                f,
                "invalid topic: topics are 1-{TOPIC_LEN_MAX} bytes of [A-Za-z0-9._~:/-]"
            ),
            IngestError::BadEventName => write!(
                f,
                "invalid event name: 1-{EVENT_NAME_MAX} bytes of printable ASCII \
                 (0x21-0x7E: no spaces), not starting with \"{RESERVED_EVENT_PREFIX}\""
            ),
            IngestError::BadKey => write!(
                f,
                "invalid key: 1-{KEY_LEN_MAX} bytes of printable ASCII (0x21-0x7E: no spaces)"
            ),
            IngestError::EventNameWithSpace(name) => write!(
                f,
                "invalid event name {name:?}: spaces are not allowed; event names are \
                 1-{EVENT_NAME_MAX} bytes of printable ASCII (0x21-0x7E)"
            ),
            IngestError::KeyWithSpace(key) => write!(
                f,
                "invalid key {key:?}: spaces are not allowed; keys are 1-{KEY_LEN_MAX} \
                 bytes of printable ASCII (0x21-0x7E)"
            ),
            IngestError::BadOption(token) => write!(
                f,
                "bad option {token:?}: PUB takes event=<name> and key=<key>, each at most \
                 once; PING and QUIT take no arguments"
            ),
            IngestError::PayloadTooLarge { len, max } => {
                write!(
                    f,
                    "payload of {len} bytes exceeds the limit of {max} bytes; closing"
                )
            }
            IngestError::NotUtf8 => write!(f, "payload is not valid UTF-8"),
            IngestError::MalformedPub => write!(
                f,
                "malformed PUB line: expected \
                 \"PUB <topic> <length> [event=<name>] [key=<key>]\" with a length of \
                 1-{LENGTH_DIGITS_MAX} digits; closing"
            ),
            IngestError::LineTooLong { max } => {
                write!(f, "command line longer than {max} bytes; closing")
            }
            IngestError::MissingTerminator => {
                write!(f, "payload not followed by LF or CRLF; closing")
            }
            IngestError::MalformedSend => write!(
                f,
                "malformed SEND line: expected \"SEND <conn-id> <length>\" with a length of \
                 1-{LENGTH_DIGITS_MAX} digits; closing"
            ),
            IngestError::BadConnId => write!(
                f,
                "invalid connection id: expected [<node>/]<loop>.<slot>.<generation> as in MSG pushes"
            ),
        }
    }
}

impl std::error::Error for IngestError {}

/// What one [`IngestDecoder::decode`] call found at the start of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// `consumed` input bytes form one complete command; drain them after using it.
    /// `consumed > 0`.
    Command {
        /// The command; it borrows the input.
        command: Command<'a>,
        /// Bytes of input it took, empty lines before it included.
        consumed: usize,
    },
    /// Reply `-ERR`; the `consumed` bytes are done with. If `error.is_fatal()` the caller
    /// closes. `consumed > 0`.
    Error {
        /// What went wrong.
        error: IngestError,
        /// Bytes of input it took.
        consumed: usize,
    },
    /// Need more input. `consumed` bytes can be discarded now (skipped payload, empty
    /// lines).
    Partial {
        /// Bytes of input done with.
        consumed: usize,
        /// When known, how many bytes after the `consumed` ones the next command needs
        /// buffered (line + payload + 2; one more than needed with an LF terminator), so
        /// the caller can reserve.
        need: Option<usize>,
    },
}

/// Decodes the ingest protocol from a caller-owned buffer; see the module docs.
///
/// Holds nothing between calls but its limits, so the caller owns every byte and may
/// compact its buffer between calls. The caller loop:
///
/// ```text
/// loop { match dec.decode(&buf[start..]) {
///     Command { command, consumed } => { handle(command); start += consumed }
///     Error { error, consumed }     => { reply(error); start += consumed; if fatal { close } }
///     Partial { consumed, .. }      => { start += consumed; break }
/// } }  // then drop buf[..start] and read more
/// ```
#[derive(Debug)]
pub struct IngestDecoder {
    limits: IngestLimits,
}

/// Where a payload's terminator stands.
enum Terminator {
    /// Not all of it has arrived.
    Incomplete,
    /// LF or CRLF, this many bytes.
    Found(usize),
    /// Something else follows the payload.
    Missing,
}

fn terminator(rest: &[u8]) -> Terminator {
    match rest {
        [] | [b'\r'] => Terminator::Incomplete,
        [b'\n', ..] => Terminator::Found(1),
        [b'\r', b'\n', ..] => Terminator::Found(2),
        _ => Terminator::Missing,
    }
}

impl IngestDecoder {
    /// A decoder in the `Idle` state.
    #[must_use]
    pub fn new(limits: IngestLimits) -> Self {
        IngestDecoder { limits }
    }

    /// Decodes the next command, error or need for input at the start of `buf`.
    ///
    /// The answer does not depend on how the stream was split into calls: feeding a
    /// stream whole or in any pieces (with the caller loop above) yields the same
    /// commands and errors. A complete command in `buf` is always returned.
    pub fn decode<'a>(&mut self, buf: &'a [u8]) -> Decoded<'a> {
        let mut start = 0;
        loop {
            let rest = &buf[start..];
            let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
                if rest.len() > self.limits.line_max {
                    return self.line_too_long(buf.len());
                }
                return Decoded::Partial {
                    consumed: start,
                    need: None,
                };
            };
            if lf > self.limits.line_max {
                return self.line_too_long(start + lf + 1);
            }
            let line = rest[..lf].strip_suffix(b"\r").unwrap_or(&rest[..lf]);
            let mut tokens = tokens(line);
            let Some(name) = tokens.next() else {
                start += lf + 1;
                continue;
            };
            let line_end = start + lf + 1;
            return if name.eq_ignore_ascii_case(b"PUB") {
                self.decode_pub(buf, start, line_end, tokens, Verb::Pub)
            } else if name.eq_ignore_ascii_case(b"SEND") {
                self.decode_pub(buf, start, line_end, tokens, Verb::Send)
            } else if name.eq_ignore_ascii_case(b"UPSTREAM") {
                no_arguments(tokens, Command::Upstream, line_end)
            } else if name.eq_ignore_ascii_case(b"PING") {
                no_arguments(tokens, Command::Ping, line_end)
            } else if name.eq_ignore_ascii_case(b"QUIT") {
                no_arguments(tokens, Command::Quit, line_end)
            } else {
                Decoded::Error {
                    error: IngestError::UnknownCommand(echo(name)),
                    consumed: line_end,
                }
            };
        }
    }

    fn line_too_long<'a>(&self, consumed: usize) -> Decoded<'a> {
        Decoded::Error {
            error: IngestError::LineTooLong {
                max: self.limits.line_max,
            },
            consumed,
        }
    }

    /// Decodes a `PUB` or `SEND` whose line is `buf[line_start..line_end]`, `tokens`
    /// after the name: both are a target, a length, then that many payload bytes.
    fn decode_pub<'a>(
        &mut self,
        buf: &'a [u8],
        line_start: usize,
        line_end: usize,
        mut tokens: impl Iterator<Item = &'a [u8]>,
        verb: Verb,
    ) -> Decoded<'a> {
        let (Some(topic), Some(len)) = (tokens.next(), tokens.next().and_then(parse_length)) else {
            let error = match verb {
                Verb::Pub => IngestError::MalformedPub,
                Verb::Send => IngestError::MalformedSend,
            };
            return Decoded::Error {
                error,
                consumed: line_end,
            };
        };
        // The size decides whether the payload is read at all, so it is checked before
        // anything else; other faults of an oversized PUB go unreported.
        let len_fits = usize::try_from(len)
            .ok()
            .filter(|&n| n <= self.limits.payload_max);
        let Some(payload_len) = len_fits else {
            return Decoded::Error {
                error: IngestError::PayloadTooLarge {
                    len,
                    max: self.limits.payload_max,
                },
                consumed: line_end,
            };
        };
        let payload_end = line_end.saturating_add(payload_len);
        let partial = Decoded::Partial {
            consumed: line_start,
            need: Some(payload_end.saturating_add(2) - line_start),
        };
        let Some(after) = buf.get(payload_end..) else {
            return partial;
        };
        let consumed = match terminator(after) {
            Terminator::Incomplete => return partial,
            Terminator::Missing => {
                return Decoded::Error {
                    error: IngestError::MissingTerminator,
                    consumed: payload_end + 1,
                }
            }
            Terminator::Found(width) => payload_end + width,
        };
        let payload = &buf[line_end..payload_end];
        let command = match verb {
            Verb::Pub => publish(topic, tokens, payload).map(Command::Publish),
            Verb::Send => send(topic, tokens, payload).map(Command::Send),
        };
        match command {
            Ok(command) => Decoded::Command { command, consumed },
            Err(error) => Decoded::Error { error, consumed },
        }
    }
}

/// The commands that carry a payload.
#[derive(Clone, Copy)]
enum Verb {
    Pub,
    Send,
}

/// The longest node id (`--node-id`).
pub const NODE_ID_MAX: usize = 64;

/// A node id: 1-64 bytes of `[A-Za-z0-9_.-]`, so that it names a node in a connection id
/// (`<node>/<loop>.<slot>.<generation>`) without a separator of its own, and fits a line.
pub fn is_valid_node_id(id: &[u8]) -> bool {
    (1..=NODE_ID_MAX).contains(&id.len())
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Validates a `SEND`: a connection id and no options; any payload bytes.
fn send<'a>(
    conn: &'a [u8],
    mut options: impl Iterator<Item = &'a [u8]>,
    payload: &'a [u8],
) -> Result<Send<'a>, IngestError> {
    let local = match conn.iter().position(|&b| b == b'/') {
        Some(at) if is_valid_node_id(&conn[..at]) => &conn[at + 1..],
        Some(_) => return Err(IngestError::BadConnId),
        None => conn,
    };
    let valid = local.split(|&b| b == b'.').count() == 3
        && local
            .split(|&b| b == b'.')
            .all(|part| !part.is_empty() && part.len() <= 10 && part.iter().all(u8::is_ascii_digit));
    let conn = ascii(conn).filter(|_| valid).ok_or(IngestError::BadConnId)?;
    if let Some(extra) = options.next() {
        return Err(IngestError::BadOption(echo(extra)));
    }
    Ok(Send { conn, payload })
}

/// The tokens of a line: runs of bytes other than space and tab.
fn tokens(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| b == b' ' || b == b'\t')
        .filter(|token| !token.is_empty())
}

fn no_arguments<'a>(
    mut tokens: impl Iterator<Item = &'a [u8]>,
    command: Command<'a>,
    consumed: usize,
) -> Decoded<'a> {
    match tokens.next() {
        None => Decoded::Command { command, consumed },
        Some(extra) => Decoded::Error {
            error: IngestError::BadOption(echo(extra)),
            consumed,
        },
    }
}

/// 1 to [`LENGTH_DIGITS_MAX`] ASCII digits that fit in a `u64`.
fn parse_length(token: &[u8]) -> Option<u64> {
    if token.is_empty() || token.len() > LENGTH_DIGITS_MAX {
        return None;
    }
    token.iter().try_fold(0u64, |n, &d| {
        let digit = char::from(d).to_digit(10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Validates a `PUB` whose payload and terminator have arrived; the first fault in
/// line order wins, the payload's encoding last.
fn publish<'a>(
    topic: &'a [u8],
    options: impl Iterator<Item = &'a [u8]>,
    payload: &'a [u8],
) -> Result<Publish<'a>, IngestError> {
    let topic = ascii(topic)
        .filter(|_| is_valid_topic(topic))
        .ok_or(IngestError::BadTopic)?;
    let mut event = None;
    let mut key = None;
    let mut options = options.peekable();
    while let Some(option) = options.next() {
        let (name, value) = match option.iter().position(|&b| b == b'=') {
            Some(eq) => (&option[..eq], &option[eq + 1..]),
            None => return Err(IngestError::BadOption(echo(option))),
        };
        if name.eq_ignore_ascii_case(b"event") && event.is_none() {
            if let Some(spaced) = spaced_value(value, &mut options) {
                return Err(IngestError::EventNameWithSpace(spaced));
            }
            event = Some(event_name(value).ok_or(IngestError::BadEventName)?);
        } else if name.eq_ignore_ascii_case(b"key") && key.is_none() {
            if let Some(spaced) = spaced_value(value, &mut options) {
                return Err(IngestError::KeyWithSpace(spaced));
            }
            key = Some(printable(value, KEY_LEN_MAX).ok_or(IngestError::BadKey)?);
        } else {
            return Err(IngestError::BadOption(echo(option)));
        }
    }
    std::str::from_utf8(payload).map_err(|_| IngestError::NotUtf8)?;
    Ok(Publish {
        topic,
        event,
        key,
        payload,
    })
}

/// For `event=my event`: `value` and the tokens after it that hold no `=` (so are no
/// options of their own), joined by spaces and cut as [`echo`] cuts; `None` when no such
/// token follows. Tokens are split at spaces and tabs, so a value cannot hold one.
fn spaced_value<'a, I: Iterator<Item = &'a [u8]>>(
    value: &[u8],
    options: &mut std::iter::Peekable<I>,
) -> Option<String> {
    let mut words = vec![value];
    while let Some(word) = options.next_if(|token| !token.contains(&b'=')) {
        words.push(word);
    }
    (words.len() > 1).then(|| echo(&words.join(&b' ')))
}

fn event_name(value: &[u8]) -> Option<&str> {
    printable(value, EVENT_NAME_MAX).filter(|name| !name.starts_with(RESERVED_EVENT_PREFIX))
}

/// `value` as a `str` when it is 1 to `max` bytes of 0x21..=0x7E.
fn printable(value: &[u8], max: usize) -> Option<&str> {
    let ok = (1..=max).contains(&value.len()) && value.iter().all(|b| (0x21..=0x7e).contains(b));
    ascii(value).filter(|_| ok)
}

fn ascii(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok().filter(|s| s.is_ascii())
}

fn echo(token: &[u8]) -> String {
    String::from_utf8_lossy(token)
        .chars()
        .take(TOKEN_ECHO_MAX)
        .collect()
}

/// Appends the success reply `+OK <id>\r\n`.
///
/// # Panics
///
/// In debug builds, if `id` contains CR or LF.
pub fn encode_ok(out: &mut Vec<u8>, id: &str) {
    debug_assert!(!id.contains(['\r', '\n']), "id {id:?} contains CR or LF");
    out.extend_from_slice(b"+OK ");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends the error reply `-ERR <reason>\r\n`; the reason is one line (tokens quoted
/// back are escaped).
pub fn encode_err(out: &mut Vec<u8>, error: &IngestError) {
    out.extend_from_slice(format!("-ERR {error}\r\n").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An owned copy of a decoder result, for comparing streams.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Out {
        Publish {
            topic: String,
            event: Option<String>,
            key: Option<String>,
            payload: Vec<u8>,
        },
        Ping,
        Quit,
        Upstream,
        Send {
            conn: String,
            payload: Vec<u8>,
        },
        Error(IngestError),
    }

    fn owned(command: Command<'_>) -> Out {
        match command {
            Command::Publish(p) => Out::Publish {
                topic: p.topic.to_owned(),
                event: p.event.map(str::to_owned),
                key: p.key.map(str::to_owned),
                payload: p.payload.to_vec(),
            },
            Command::Ping => Out::Ping,
            Command::Quit => Out::Quit,
            Command::Upstream => Out::Upstream,
            Command::Send(s) => Out::Send {
                conn: s.conn.to_owned(),
                payload: s.payload.to_vec(),
            },
        }
    }

    fn publish(topic: &str, event: Option<&str>, key: Option<&str>, payload: &[u8]) -> Out {
        Out::Publish {
            topic: topic.into(),
            event: event.map(Into::into),
            key: key.map(Into::into),
            payload: payload.to_vec(),
        }
    }

    /// The caller loop of the docs, over a growable buffer, fed `chunks` in order. Stops
    /// after QUIT or a fatal error, as the engine does.
    fn drive<'c>(limits: IngestLimits, chunks: impl IntoIterator<Item = &'c [u8]>) -> Vec<Out> {
        let mut dec = IngestDecoder::new(limits);
        let mut buf = Vec::new();
        let mut outs = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            let mut start = 0;
            loop {
                match dec.decode(&buf[start..]) {
                    Decoded::Command { command, consumed } => {
                        assert!(consumed > 0 && start + consumed <= buf.len());
                        let out = owned(command);
                        let quit = out == Out::Quit;
                        outs.push(out);
                        start += consumed;
                        if quit {
                            return outs;
                        }
                    }
                    Decoded::Error { error, consumed } => {
                        assert!(consumed > 0 && start + consumed <= buf.len());
                        let fatal = error.is_fatal();
                        outs.push(Out::Error(error));
                        start += consumed;
                        if fatal {
                            return outs;
                        }
                    }
                    Decoded::Partial { consumed, .. } => {
                        assert!(start + consumed <= buf.len());
                        start += consumed;
                        break;
                    }
                }
            }
            buf.drain(..start);
            // What stays buffered is at most one line and one payload in the limits.
            assert!(buf.len() <= limits.line_max + 1 + limits.payload_max + 2);
        }
        outs
    }

    fn whole(limits: IngestLimits, stream: &[u8]) -> Vec<Out> {
        drive(limits, [stream])
    }

    fn single(stream: &[u8]) -> Out {
        let outs = whole(IngestLimits::default(), stream);
        assert_eq!(outs.len(), 1, "{outs:?}");
        outs[0].clone()
    }

    fn err(e: IngestError) -> Out {
        Out::Error(e)
    }

    #[test]
    fn upstream_and_send() {
        assert_eq!(single(b"UPSTREAM\n"), Out::Upstream);
        assert_eq!(
            single(b"send 0.42.7 3\n\xff\x00a\n"),
            Out::Send {
                conn: "0.42.7".into(),
                payload: b"\xff\x00a".to_vec()
            },
            "SEND payloads are binary"
        );
        assert_eq!(
            single(b"SEND node-2.eu/0.42.7 1\nx\n"),
            Out::Send {
                conn: "node-2.eu/0.42.7".into(),
                payload: b"x".to_vec()
            },
            "a cluster id names its node"
        );
        for bad in [
            &b"SEND /0.42.7 1\nx\n"[..],
            b"SEND a/b/0.42.7 1\nx\n",
            b"SEND a*/0.42.7 1\nx\n",
            b"SEND a/0.42 1\nx\n",
            b"SEND a/ 1\nx\n",
        ] {
            assert_eq!(
                single(bad),
                err(IngestError::BadConnId),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("SEND {}/0.1.2 1\nx\n", "n".repeat(NODE_ID_MAX + 1));
        assert_eq!(single(long.as_bytes()), err(IngestError::BadConnId));
        assert_eq!(single(b"SEND 0.42 1\nx\n"), err(IngestError::BadConnId));
        assert_eq!(single(b"SEND a.b.c 1\nx\n"), err(IngestError::BadConnId));
        assert_eq!(
            single(b"SEND 1.2.3 1 x=y\nx\n"),
            err(IngestError::BadOption("x=y".into()))
        );
        assert_eq!(single(b"SEND 1.2.3\n"), err(IngestError::MalformedSend));
        assert!(IngestError::MalformedSend.is_fatal());
        assert_eq!(
            single(b"UPSTREAM now\n"),
            err(IngestError::BadOption("now".into()))
        );
    }

    #[test]
    fn ping_quit_and_case() {
        assert_eq!(single(b"PING\n"), Out::Ping);
        assert_eq!(single(b"ping\r\n"), Out::Ping);
        assert_eq!(single(b"  PiNg \t\r\n"), Out::Ping);
        assert_eq!(single(b"quit\n"), Out::Quit);
        assert_eq!(single(b"PING x\n"), err(IngestError::BadOption("x".into())));
    }

    #[test]
    fn publish_forms() {
        assert_eq!(single(b"PUB a 5\nhello\n"), publish("a", None, None, b"hello"));
        assert_eq!(
            single(b"pub\ta/b:c  3\r\nxyz\r\n"),
            publish("a/b:c", None, None, b"xyz")
        );
        assert_eq!(
            single(b"PUB t 2 event=price KEY=k-1\n\xc3\xa9\n"),
            publish("t", Some("price"), Some("k-1"), "é".as_bytes())
        );
        assert_eq!(single(b"PUB t 0\n\n"), publish("t", None, None, b""));
        assert_eq!(
            single(b"PUB t 00000000000000000001\nx\n"),
            publish("t", None, None, b"x")
        );
    }

    #[test]
    fn payload_is_binary_safe() {
        let payload = b"\r\nPUB x 1\r\ny\r\nQUIT\n";
        let mut stream = format!("PUB t {}\r\n", payload.len()).into_bytes();
        stream.extend_from_slice(payload);
        stream.extend_from_slice(b"\r\nPING\n");
        assert_eq!(
            whole(IngestLimits::default(), &stream),
            [publish("t", None, None, payload), Out::Ping]
        );
    }

    #[test]
    fn framing_keeping_errors() {
        use IngestError::*;
        let cases: [(&[u8], IngestError); 18] = [
            (b"FOO bar\n", UnknownCommand("FOO".into())),
            (b"PUB a$b 1\nx\n", BadTopic),
            (b"PUB a 1 event=\nx\n", BadEventName),
            (b"PUB a 1 event=ringcast.reset\nx\n", BadEventName),
            (b"PUB a 1 event=\x7f\nx\n", BadEventName),
            (b"PUB a 1 key=\nx\n", BadKey),
            (b"PUB a 1 key=\xc3\xa9\nx\n", BadKey),
            (b"PUB a 1 color=red\nx\n", BadOption("color=red".into())),
            (b"PUB a 1 event\nx\n", BadOption("event".into())),
            (b"PUB a 1 my event\nx\n", BadOption("my".into())),
            (
                b"PUB a 1 event=my event\nx\n",
                EventNameWithSpace("my event".into()),
            ),
            (
                b"PUB a 1 event=a\tb c key=k\nx\n",
                EventNameWithSpace("a b c".into()),
            ),
            (
                b"PUB a 1 key=k event=my event\nx\n",
                EventNameWithSpace("my event".into()),
            ),
            (b"PUB a 1 key=my key\nx\n", KeyWithSpace("my key".into())),
            (b"PUB a 1 event=a event=b\nx\n", BadOption("event=b".into())),
            (b"PUB a 1 key=a KEY=b\nx\n", BadOption("KEY=b".into())),
            (b"PUB a 1\n\xff\n", NotUtf8),
            (b"PUB a 2\n\xc3(\r\n", NotUtf8),
        ];
        for (stream, expected) in cases {
            assert!(!expected.is_fatal());
            let mut with_ping = stream.to_vec();
            with_ping.extend_from_slice(b"PING\n");
            let outs = whole(IngestLimits::default(), &with_ping);
            assert_eq!(
                outs,
                [Out::Error(expected), Out::Ping],
                "{}",
                String::from_utf8_lossy(stream)
            );
        }
    }

    #[test]
    fn event_name_and_key_length_boundaries() {
        let line = |opt: &str| format!("PUB t 1 {opt}\nx\n");
        let name = |n: usize| format!("event={}", "e".repeat(n));
        let key = |n: usize| format!("key={}", "k".repeat(n));
        assert!(matches!(
            single(line(&name(EVENT_NAME_MAX)).as_bytes()),
            Out::Publish { .. }
        ));
        assert_eq!(
            single(line(&name(EVENT_NAME_MAX + 1)).as_bytes()),
            err(IngestError::BadEventName)
        );
        assert!(matches!(
            single(line(&key(KEY_LEN_MAX)).as_bytes()),
            Out::Publish { .. }
        ));
        assert_eq!(
            single(line(&key(KEY_LEN_MAX + 1)).as_bytes()),
            err(IngestError::BadKey)
        );
        let topic = |n: usize| format!("PUB {} 1\nx\n", "t".repeat(n));
        assert!(matches!(
            single(topic(TOPIC_LEN_MAX).as_bytes()),
            Out::Publish { .. }
        ));
        assert_eq!(
            single(topic(TOPIC_LEN_MAX + 1).as_bytes()),
            err(IngestError::BadTopic)
        );
        for b in 0..=u8::MAX {
            let stream = [&b"PUB t 1 key=a"[..], &[b], b"\nx\n"].concat();
            let valid = (0x21..=0x7e).contains(&b);
            let split = b == b' ' || b == b'\t' || b == b'\n' || b == b'\r';
            if !split {
                assert_eq!(
                    matches!(single(&stream), Out::Publish { .. }),
                    valid,
                    "byte {b:#04x}"
                );
            }
        }
    }

    #[test]
    fn framing_losing_errors() {
        use IngestError::*;
        let cases: [(&[u8], IngestError); 9] = [
            (b"PUB\n", MalformedPub),
            (b"PUB topic\n", MalformedPub),
            (b"PUB topic x\n", MalformedPub),
            (b"PUB topic -1\n", MalformedPub),
            (b"PUB topic 000000000000000000001\n", MalformedPub),
            (b"PUB topic 99999999999999999999\n", MalformedPub),
            (b"PUB topic event=x\n", MalformedPub),
            (b"PUB t 1\nxy\n", MissingTerminator),
            (b"PUB t 1\nx\rPING\n", MissingTerminator),
        ];
        for (stream, expected) in cases {
            assert!(expected.is_fatal());
            assert!(expected.to_string().ends_with("; closing"));
            let mut with_ping = stream.to_vec();
            with_ping.extend_from_slice(b"PING\n");
            assert_eq!(whole(IngestLimits::default(), &with_ping), [Out::Error(expected)]);
        }
    }

    #[test]
    fn line_length_boundary() {
        let limits = IngestLimits {
            payload_max: 16,
            line_max: 10,
        };
        let line = |n: usize| [" ".repeat(n - 4).as_bytes(), b"PING\nPING\n"].concat();
        assert_eq!(whole(limits, &line(10)), [Out::Ping, Out::Ping]);
        let too_long = || err(IngestError::LineTooLong { max: 10 });
        assert_eq!(whole(limits, &line(11)), [too_long()]);
        // The CR counts toward the line.
        assert_eq!(whole(limits, b"      PING\r\n"), [too_long()]);
        // No LF yet: decided once more than line_max bytes are buffered.
        let mut dec = IngestDecoder::new(limits);
        assert!(matches!(
            dec.decode(&[b'x'; 10]),
            Decoded::Partial {
                consumed: 0,
                need: None
            }
        ));
        assert!(matches!(
            dec.decode(&[b'x'; 11]),
            Decoded::Error {
                error: IngestError::LineTooLong { max: 10 },
                consumed: 11
            }
        ));
    }

    #[test]
    fn empty_lines_are_ignored_and_released() {
        let mut dec = IngestDecoder::new(IngestLimits::default());
        assert_eq!(
            dec.decode(b"\n\r\n \t\nPI"),
            Decoded::Partial {
                consumed: 6,
                need: None
            }
        );
        assert_eq!(
            dec.decode(b"\n\nPING\n"),
            Decoded::Command {
                command: Command::Ping,
                consumed: 7
            }
        );
        assert_eq!(
            dec.decode(b""),
            Decoded::Partial {
                consumed: 0,
                need: None
            }
        );
    }

    #[test]
    fn partial_pub_reports_need() {
        let mut dec = IngestDecoder::new(IngestLimits::default());
        let stream = b"\nPUB t 10\r\n0123";
        assert_eq!(
            dec.decode(stream),
            Decoded::Partial {
                consumed: 1,
                need: Some(10 + 10 + 2)
            }
        );
        assert_eq!(
            dec.decode(b"PUB t 1\nx\r"),
            Decoded::Partial {
                consumed: 0,
                need: Some(8 + 1 + 2)
            }
        );
    }

    #[test]
    fn pipelined_commands() {
        let stream = b"PING\nPUB a 1\nx\nPUB b 2 event=e\r\nyz\r\nBOGUS\nQUIT\nPING\n";
        assert_eq!(
            whole(IngestLimits::default(), stream),
            [
                Out::Ping,
                publish("a", None, None, b"x"),
                publish("b", Some("e"), None, b"yz"),
                err(IngestError::UnknownCommand("BOGUS".into())),
                Out::Quit,
            ]
        );
    }

    #[test]
    fn unknown_command_echo_is_bounded_and_lossy() {
        let mut line = vec![b'\xff'];
        line.extend_from_slice(&[b'Z'; 100]);
        line.push(b'\n');
        let Out::Error(IngestError::UnknownCommand(token)) = single(&line) else {
            panic!("expected UnknownCommand");
        };
        assert_eq!(token.chars().count(), TOKEN_ECHO_MAX);
        assert!(token.starts_with('\u{fffd}'));
    }

    #[test]
    fn one_mebibyte_payload() {
        let payload = "abc\r\n€".repeat((1 << 20) / 8);
        assert_eq!(payload.len(), 1 << 20);
        let mut stream = format!("PUB big {}\n", payload.len()).into_bytes();
        stream.extend_from_slice(payload.as_bytes());
        stream.extend_from_slice(b"\nPING\n");
        let expected = [publish("big", None, None, payload.as_bytes()), Out::Ping];
        assert_eq!(whole(IngestLimits::default(), &stream), expected);
        assert_eq!(drive(IngestLimits::default(), stream.chunks(4093)), expected);
    }

    #[test]
    fn an_oversized_payload_is_refused_from_its_line_alone_and_is_fatal() {
        let limits = IngestLimits {
            payload_max: 100,
            line_max: 64,
        };
        // Nothing of the payload is needed: the line decides, whatever follows it.
        for stream in [
            &b"PUB t 1000 event=e\r\n"[..],
            b"PUB t 1000\nxx",
            b"SEND 0.1.2 101\n",
        ] {
            let mut dec = IngestDecoder::new(limits);
            let line_end = stream.iter().position(|&b| b == b'\n').unwrap() + 1;
            match dec.decode(stream) {
                Decoded::Error { error, consumed } => {
                    assert!(error.is_fatal(), "{error}");
                    assert!(matches!(error, IngestError::PayloadTooLarge { max: 100, .. }));
                    assert_eq!(consumed, line_end);
                }
                other => panic!("{other:?}"),
            }
        }
        // Lengths beyond usize, and 2 GiB, are refused the same way.
        for len in ["18446744073709551615", "2147483648"] {
            let line = format!("PUB t {len}\nPING\n");
            assert_eq!(
                whole(limits, line.as_bytes()),
                [err(IngestError::PayloadTooLarge {
                    len: len.parse().unwrap(),
                    max: 100
                })],
                "the PING behind it is never read as payload"
            );
        }
        // At the limit a payload is taken.
        let mut at_limit = b"PUB t 100\n".to_vec();
        at_limit.extend_from_slice(&[b'x'; 100]);
        at_limit.extend_from_slice(b"\n");
        assert_eq!(whole(limits, &at_limit), [publish("t", None, None, &[b'x'; 100])]);
    }

    #[test]
    fn a_payload_without_terminator_is_fatal() {
        let limits = IngestLimits {
            payload_max: 8,
            line_max: 64,
        };
        assert_eq!(
            whole(limits, b"PUB t 5\n12345xPING\n"),
            [err(IngestError::MissingTerminator)]
        );
    }

    #[test]
    fn replies() {
        let mut out = Vec::new();
        encode_ok(&mut out, "42-1");
        encode_err(&mut out, &IngestError::UnknownCommand("a\r\nb".into()));
        encode_err(&mut out, &IngestError::PayloadTooLarge { len: 5, max: 4 });
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "+OK 42-1\r\n\
             -ERR unknown command \"a\\r\\nb\": expected PUB, SEND, UPSTREAM, PING or QUIT\r\n\
             -ERR payload of 5 bytes exceeds the limit of 4 bytes; closing\r\n"
        );
        assert_eq!((PONG, BYE), (&b"+PONG\r\n"[..], &b"+BYE\r\n"[..]));
    }

    #[test]
    fn display_carries_the_numbers() {
        assert!(IngestError::LineTooLong { max: 1024 }
            .to_string()
            .contains("1024"));
        assert!(IngestError::BadTopic.to_string().contains("200"));
        assert!(IngestError::BadEventName.to_string().contains("64"));
        assert!(IngestError::BadKey.to_string().contains("200"));
        for e in [IngestError::BadEventName, IngestError::BadKey] {
            assert!(e.to_string().contains("(0x21-0x7E: no spaces)"), "{e}");
        }
        assert_eq!(
            IngestError::EventNameWithSpace("my event".into()).to_string(),
            "invalid event name \"my event\": spaces are not allowed; event names are 1-64 bytes \
             of printable ASCII (0x21-0x7E)"
        );
        assert!(IngestError::KeyWithSpace("a b".into())
            .to_string()
            .starts_with("invalid key \"a b\": spaces are not allowed"));
    }

    /// A stream that exercises every path: commands, framing-keeping errors, a payload
    /// at the limit, empty lines, and a fatal error at the end.
    const STREAM: &[u8] = b"\r\nPING\nPUB a 3 event=e key=k\r\n\r\n\n\r\nbogus x\n\
        PUB b 8\n01234567\nPUB bad$ 1\nx\r\n  \nPUB c 2\n\xff\xfe\n\
        PUB d 1\n\xc3\nPUB e 0\n\nping\nPUB f 2\nxyz\n";

    fn split_limits() -> IngestLimits {
        IngestLimits {
            payload_max: 8,
            line_max: 40,
        }
    }

    #[test]
    fn every_two_way_split_decodes_like_the_whole() {
        let expected = whole(split_limits(), STREAM);
        assert_eq!(expected.len(), 10, "{expected:?}");
        assert_eq!(expected[2], err(IngestError::UnknownCommand("bogus".into())));
        assert_eq!(expected[3], publish("b", None, None, b"01234567"));
        assert_eq!(expected[9], err(IngestError::MissingTerminator));
        for cut in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(cut);
            assert_eq!(drive(split_limits(), [a, b]), expected, "cut at {cut}");
        }
    }

    #[test]
    fn byte_at_a_time_decodes_like_the_whole() {
        assert_eq!(
            drive(split_limits(), STREAM.chunks(1)),
            whole(split_limits(), STREAM)
        );
    }

    fn command_bytes() -> impl Strategy<Value = Vec<u8>> {
        let payload = prop::collection::vec(
            prop::sample::select(vec![b'a', b'\r', b'\n', b' ', 0xc3, 0xa9, 0xff]),
            0..12,
        );
        prop_oneof![
            Just(b"PING\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"what\r\n".to_vec()),
            (
                "[a-z$]{1,4}",
                prop::option::of("[a-z.]{1,10}"),
                payload,
                any::<bool>()
            )
                .prop_map(|(topic, event, payload, crlf)| {
                    let event = event.map(|e| format!(" event={e}")).unwrap_or_default();
                    let eol = if crlf { "\r\n" } else { "\n" };
                    let mut bytes = format!("PUB {topic} {}{event}{eol}", payload.len()).into_bytes();
                    bytes.extend_from_slice(&payload);
                    bytes.extend_from_slice(eol.as_bytes());
                    bytes
                }),
        ]
    }

    fn stream_and_cuts() -> impl Strategy<Value = (Vec<u8>, Vec<prop::sample::Index>)> {
        (
            prop::collection::vec(command_bytes(), 1..12),
            prop::option::of(prop::sample::select(vec![
                &b"PUB x\n"[..],
                b"PUB x 1\nab\n",
                b"QUIT\n",
            ])),
            prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        )
            .prop_map(|(commands, last, cuts)| {
                let mut stream = commands.concat();
                stream.extend_from_slice(last.unwrap_or_default());
                (stream, cuts)
            })
    }

    proptest! {
        #[test]
        fn random_chunkings_decode_like_the_whole((stream, cuts) in stream_and_cuts()) {
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([stream.len()]) {
                chunks.push(&stream[from..cut]);
                from = cut;
            }
            prop_assert_eq!(drive(split_limits(), chunks), whole(split_limits(), &stream));
        }

        #[test]
        fn arbitrary_bytes_never_stall_or_panic(
            bytes in prop::collection::vec(prop::sample::select(vec![b'P', b'U', b'B', b' ', b'1', b'\n', b'\r', b'x']), 0..200),
        ) {
            drive(split_limits(), bytes.chunks(7));
        }
    }
}
