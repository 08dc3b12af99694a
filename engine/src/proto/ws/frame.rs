//! The WebSocket frame codec for the server side (RFC 6455 §5): a decoder for the frames
//! clients send and an encoder for the frames the server sends.
//!
//! Owns: the client frame rules (masking, reserved bits, opcodes, control frame limits,
//! fragmentation, message size, UTF-8 of text and close reasons) and the close code each
//! violation is answered with, and the exact bytes of server frames.
//!
//! Must never: mask a server frame (§5.1: one unmasked encoding is shared by every
//! subscriber), allocate for a frame that arrives whole, or hold more than `max_message`
//! bytes of a message (the limit is checked against the announced length before a byte
//! of it is buffered).
use super::close::{self, Fail};
use super::mask::apply_mask;

/// A frame opcode (§5.2, §11.8). Other values are reserved and fail the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    /// A later fragment of a message (§5.4).
    Continuation = 0x0,
    /// A text message, UTF-8 (§5.6).
    Text = 0x1,
    /// A binary message.
    Binary = 0x2,
    /// Close (§5.5.1).
    Close = 0x8,
    /// Ping (§5.5.2).
    Ping = 0x9,
    /// Pong (§5.5.3).
    Pong = 0xA,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    /// Control frames have the high bit of the opcode set (§5.5).
    #[must_use]
    pub fn is_control(self) -> bool {
        self as u8 & 0x8 != 0
    }
}

/// A whole message or control frame from the client. Slices borrow either the buffer
/// given to [`Decoder::decode`] or the decoder's own buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A whole text message, valid UTF-8.
    Text(&'a [u8]),
    /// A whole binary message.
    Binary(&'a [u8]),
    /// A whole message sent compressed (RSV1 on its first frame, RFC 7692 §6), as it
    /// came: inflate it, then check a text message's UTF-8. Only from a decoder made
    /// [`with_deflate`](Decoder::with_deflate).
    Compressed {
        /// A text message (else binary).
        text: bool,
        /// The DEFLATE bytes without their `00 00 ff ff` tail.
        payload: &'a [u8],
    },
    /// A ping; answer with a pong carrying the same payload (§5.5.2).
    Ping(&'a [u8]),
    /// An unsolicited or answering pong (§5.5.3).
    Pong(&'a [u8]),
    /// A close frame: `code` is valid ([`close::is_valid`]) when present, `reason` is
    /// UTF-8 and empty when `code` is absent (§5.5.1). Answer with a close frame (usually
    /// echoing the code) and stop decoding.
    Close {
        /// The status code, when the frame had a payload.
        code: Option<u16>,
        /// The UTF-8 reason after the code.
        reason: &'a [u8],
    },
}

/// What one call of [`Decoder::decode`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A message, and how many bytes of the buffer were used up to its end, earlier
    /// fragments included. Call `decode` again with the rest of the buffer.
    Message {
        /// The message.
        msg: Message<'a>,
        /// Bytes of the buffer used.
        consumed: usize,
    },
    /// No whole message yet. `consumed` is always the whole buffer: the decoder keeps
    /// what it needs itself, so nothing has to be staged until the next read.
    Partial {
        /// Bytes of the buffer used: all of them.
        consumed: usize,
    },
    /// The client broke the protocol: "Fail the WebSocket Connection" (§7.1.7) by sending
    /// a close frame with `code` (1002, 1007 or 1009) and `reason` ([`encode_close`]),
    /// then closing. The decoder is spent: later calls fail again.
    Fail {
        /// [`close::PROTOCOL`], [`close::INVALID_DATA`] or [`close::TOO_BIG`].
        code: u16,
        /// A short sentence, at most 123 bytes, to put in the close frame.
        reason: &'static str,
    },
}

/// A frame header of at most 14 bytes: 2, 2 or 8 more for a long length, 4 for the mask.
const HEADER_MAX: usize = 14;
/// The longest payload a control frame may have (§5.5).
const CONTROL_MAX: u8 = 125;

/// Where the decoder is in the byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between frames, or inside a header whose first `hdr_len` bytes are stashed.
    Header,
    /// Inside the payload of a frame that did not arrive whole: it is copied into `buf`.
    Payload,
    /// Failed; nothing more is decoded.
    Failed,
}

/// The type of a data message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataKind {
    Text,
    Binary,
}

/// Incremental UTF-8 validation: the bytes of a code point cut by a fragment or read
/// boundary wait here for the rest.
#[derive(Clone, Copy, Debug, Default)]
struct Utf8Carry {
    bytes: [u8; 3],
    len: u8,
}

impl Utf8Carry {
    /// Validates `chunk` as the continuation of the text seen so far.
    ///
    /// # Errors
    ///
    /// As soon as `chunk` holds a byte that no continuation could make valid: the
    /// standard validator reports an error length for those, and no error length only
    /// for a proper prefix of a valid sequence at the very end (so overlong forms,
    /// surrogates and code points past U+10FFFF fail on the byte that rules them out).
    fn feed(&mut self, mut chunk: &[u8]) -> Result<(), ()> {
        if self.len > 0 {
            let have = usize::from(self.len);
            let take = chunk.len().min(4 - have);
            let mut joined = [0u8; 4];
            joined[..have].copy_from_slice(&self.bytes[..have]);
            joined[have..have + take].copy_from_slice(&chunk[..take]);
            let joined = &joined[..have + take];
            let valid = match std::str::from_utf8(joined) {
                Ok(_) => joined.len(),
                Err(e) if e.valid_up_to() > 0 => e.valid_up_to(),
                Err(e) if e.error_len().is_none() => return self.keep(joined),
                Err(_) => return Err(()),
            };
            // The first code point completed, and it holds every carried byte.
            self.len = 0;
            chunk = &chunk[valid - have..];
        }
        match std::str::from_utf8(chunk) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => self.keep(&chunk[e.valid_up_to()..]),
            Err(_) => Err(()),
        }
    }

    fn keep(&mut self, tail: &[u8]) -> Result<(), ()> {
        debug_assert!(tail.len() < 4, "incomplete UTF-8 tail of {} bytes", tail.len());
        self.bytes[..tail.len()].copy_from_slice(tail);
        self.len = tail.len() as u8;
        Ok(())
    }

    /// Whether the text ends on a code point boundary.
    fn is_complete(self) -> bool {
        self.len == 0
    }
}

const NOT_UTF8: Fail = Fail::new(close::INVALID_DATA, "text message is not UTF-8");

/// What [`Decoder::step`] found, with ranges in place of borrows.
enum Step {
    Partial(usize),
    Fail(Fail),
    Deliver {
        op: Opcode,
        from: Source,
        consumed: usize,
    },
}

/// Where a delivered payload lies.
enum Source {
    /// In the caller's buffer.
    Input(std::ops::Range<usize>),
    /// In the decoder's buffer.
    Own(std::ops::Range<usize>),
}

/// Decodes the frames of one client connection (§5.2-§5.6), sans-IO.
///
/// Frames that arrive whole are unmasked in place and returned as slices of the
/// caller's buffer. A payload that spans reads, and every fragmented message, is copied
/// into the decoder's own buffer as it arrives; a header that spans reads is stashed
/// (at most 13 bytes). The own buffer exists only while such a message or frame is in
/// progress, and is freed by the call after the one that returned the message.
///
/// ```text
///            first bytes of a header            rest of the header
///   Header ----------------------------> Header(stashed) -----------.
///     ^  \                                                          |
///     |   `---- whole header, whole payload: Message (zero-copy)    |
///     |                                                             v
///     |<-- frame done: Message, or next fragment --- Payload <-- part of the payload
///     |                                                (copied into buf)
///   any rule broken, in any state ---> Failed
/// ```
///
/// Text is validated as it arrives, across fragments and reads, so invalid UTF-8 fails
/// the connection at the read that brings the first bad byte (Autobahn 6.4.x).
///
/// A length not encoded in the fewest bytes breaks a sender's MUST in §5.2, but the RFC
/// names no reaction for the receiver; it is accepted, since lengths are bounded by
/// `max_message` (and 125 for control frames) either way and rejecting it would only
/// break sloppy clients. After a close frame the caller stops calling `decode`
/// (§5.5.1).
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// The message being reassembled, then any control frame that arrived in pieces in
    /// the middle of it.
    buf: Vec<u8>,
    frame_len: u64,
    /// Payload bytes of the current frame already read; also the mask phase.
    frame_pos: u64,
    mask: [u8; 4],
    hdr: [u8; HEADER_MAX],
    hdr_len: u8,
    opcode: Opcode,
    fin: bool,
    state: State,
    /// The fragmented (or split) data message in progress.
    message: Option<DataKind>,
    utf8: Utf8Carry,
    /// The last message returned lies in `buf` and is dropped at the next call.
    delivered_own: bool,
    /// permessage-deflate was negotiated: RSV1 may mark a message compressed.
    deflate: bool,
    /// The current data message is compressed.
    compressed: bool,
}

impl Decoder {
    /// A decoder that fails messages longer than `max_message` bytes with 1009.
    #[must_use]
    pub fn new(max_message: usize) -> Self {
        Decoder {
            max_message,
            buf: Vec::new(),
            frame_len: 0,
            frame_pos: 0,
            mask: [0; 4],
            hdr: [0; HEADER_MAX],
            hdr_len: 0,
            opcode: Opcode::Continuation,
            fin: false,
            state: State::Header,
            message: None,
            utf8: Utf8Carry::default(),
            delivered_own: false,
            deflate: false,
            compressed: false,
        }
    }

    /// A decoder for a connection that negotiated permessage-deflate (RFC 7692): RSV1 on
    /// the first frame of a data message marks it compressed and it is returned as
    /// [`Message::Compressed`]; RSV1 anywhere else still fails with 1002 (§6.1).
    #[must_use]
    pub fn with_deflate(max_message: usize) -> Self {
        Decoder {
            deflate: true,
            ..Decoder::new(max_message)
        }
    }

    /// Decodes frames from `buf` up to the first whole message.
    ///
    /// Unmasks payloads in place, so `buf` is changed: a message that arrived whole is
    /// returned as a slice of it, without copying. Call again with `buf[consumed..]`
    /// until it returns `Partial` (which uses up all of `buf`) or `Fail`, then pass the
    /// next read as a new buffer. That last call also frees the buffer a reassembled
    /// message was returned from. Nothing has to be kept between reads, though the
    /// caller may keep unconsumed bytes and present them again with more appended. The
    /// answer never depends on how the stream was cut into buffers.
    pub fn decode<'a>(&'a mut self, buf: &'a mut [u8]) -> Decoded<'a> {
        let step = self.step(buf);
        let (this, buf): (&'a Decoder, &'a [u8]) = (self, buf);
        match step {
            Step::Partial(consumed) => Decoded::Partial { consumed },
            Step::Fail(Fail { code, reason }) => Decoded::Fail { code, reason },
            Step::Deliver { op, from, consumed } => {
                let payload = match from {
                    Source::Input(range) => &buf[range],
                    Source::Own(range) => &this.buf[range],
                };
                let msg = if this.compressed && !op.is_control() {
                    Message::Compressed {
                        text: op == Opcode::Text,
                        payload,
                    }
                } else {
                    message(op, payload)
                };
                Decoded::Message { msg, consumed }
            }
        }
    }

    /// Whether the decoder holds no memory and no partial frame: between messages, with
    /// no header stashed and no buffer allocated.
    #[must_use]
    pub fn is_idle(&self) -> bool {
        self.state != State::Payload
            && self.hdr_len == 0
            && self.message.is_none()
            && self.buf.capacity() == 0
    }

    fn step(&mut self, input: &mut [u8]) -> Step {
        if self.state == State::Failed {
            return Step::Fail(Fail::new(close::PROTOCOL, "connection already failed"));
        }
        self.release_delivered();
        let mut pos = 0;
        loop {
            if self.state == State::Header {
                match self.read_header(&input[pos..]) {
                    Err(f) => return self.fail(f),
                    Ok(None) => return Step::Partial(input.len()),
                    Ok(Some(n)) => pos += n,
                }
                if let Some(step) = self.whole_frame(input, pos) {
                    return step;
                }
                self.begin_copy();
            }
            match self.copy_payload(input, &mut pos) {
                Ok(Some(step)) => return step,
                Ok(None) => {}
                Err(f) => return self.fail(f),
            }
        }
    }

    fn fail(&mut self, f: Fail) -> Step {
        self.state = State::Failed;
        self.message = None;
        self.hdr_len = 0;
        self.buf = Vec::new();
        Step::Fail(f)
    }

    /// Drops what the previous call returned from `buf`: a finished message frees the
    /// buffer, a control frame that arrived inside a message is cut off its end.
    fn release_delivered(&mut self) {
        if std::mem::take(&mut self.delivered_own) {
            if self.message.is_some() {
                let control_len = self.frame_len as usize;
                self.buf.truncate(self.buf.len() - control_len);
            } else {
                self.buf = Vec::new();
            }
        }
    }

    /// Reads a frame header from the stash and `input`. Returns the bytes of `input` it
    /// used once the header is whole, or `None` when all of `input` went to the stash.
    fn read_header(&mut self, input: &[u8]) -> Result<Option<usize>, Fail> {
        if self.hdr_len == 0 {
            if let [b0, b1, ..] = *input {
                self.check_start(b0, b1)?;
                let need = header_len(b1);
                if input.len() >= need {
                    self.parse_header(&input[..need])?;
                    return Ok(Some(need));
                }
            }
        }
        let mut used = 0;
        loop {
            let have = usize::from(self.hdr_len);
            let need = if have < 2 { 2 } else { header_len(self.hdr[1]) };
            if have == need {
                let hdr = self.hdr;
                self.hdr_len = 0;
                self.parse_header(&hdr[..need])?;
                return Ok(Some(used));
            }
            let take = (need - have).min(input.len() - used);
            if take == 0 {
                return Ok(None);
            }
            self.hdr[have..have + take].copy_from_slice(&input[used..used + take]);
            self.hdr_len += take as u8;
            used += take;
            if have < 2 && self.hdr_len >= 2 {
                self.check_start(self.hdr[0], self.hdr[1])?;
            }
        }
    }

    /// The rules the first two header bytes decide (§5.2, §5.4, §5.5), checked as soon
    /// as they arrive.
    fn check_start(&self, b0: u8, b1: u8) -> Result<(), Fail> {
        // RSV2 and RSV3 belong to no extension we speak, RSV1 to permessage-deflate only
        // when negotiated (§5.2).
        if b0 & 0x30 != 0 || (b0 & 0x40 != 0 && !self.deflate) {
            return Err(Fail::new(close::PROTOCOL, "reserved bits set"));
        }
        let op = Opcode::from_bits(b0 & 0x0F).ok_or(Fail::new(close::PROTOCOL, "reserved opcode"))?;
        // RFC 7692 §6.1: RSV1 only on the first frame of a data message.
        if b0 & 0x40 != 0 && !matches!(op, Opcode::Text | Opcode::Binary) {
            return Err(Fail::new(
                close::PROTOCOL,
                "RSV1 set on a control or continuation frame",
            ));
        }
        // §5.1: "a server MUST close the connection upon receiving a frame that is not
        // masked" ... "with a status code of 1002".
        if b1 & 0x80 == 0 {
            return Err(Fail::new(close::PROTOCOL, "client frame is not masked"));
        }
        let fin = b0 & 0x80 != 0;
        if op.is_control() {
            if !fin {
                return Err(Fail::new(close::PROTOCOL, "fragmented control frame"));
            }
            if b1 & 0x7F > CONTROL_MAX {
                return Err(Fail::new(close::PROTOCOL, "control frame longer than 125 bytes"));
            }
            return Ok(());
        }
        match (op, self.message) {
            (Opcode::Continuation, None) => Err(Fail::new(close::PROTOCOL, "continuation outside a message")),
            (Opcode::Text | Opcode::Binary, Some(_)) => {
                Err(Fail::new(close::PROTOCOL, "new message inside a fragmented one"))
            }
            _ => Ok(()),
        }
    }

    /// Takes a whole header (`check_start` passed) as the current frame.
    fn parse_header(&mut self, hdr: &[u8]) -> Result<(), Fail> {
        let len = match hdr[1] & 0x7F {
            126 => u64::from(u16::from_be_bytes([hdr[2], hdr[3]])),
            127 => u64::from_be_bytes(hdr[2..10].try_into().expect("8 length bytes")),
            short => u64::from(short),
        };
        // §5.2: "the most significant bit MUST be 0".
        if len >> 63 != 0 {
            return Err(Fail::new(close::PROTOCOL, "frame length has its top bit set"));
        }
        let op = Opcode::from_bits(hdr[0] & 0x0F).expect("check_start accepted the opcode");
        if !op.is_control() {
            // Before anything of it is buffered, the whole message must fit.
            let so_far = if op == Opcode::Continuation {
                self.buf.len() as u64
            } else {
                0
            };
            if so_far + len > self.max_message as u64 {
                return Err(Fail::new(close::TOO_BIG, "message is larger than the limit"));
            }
        }
        self.mask = hdr[hdr.len() - 4..].try_into().expect("4 mask bytes");
        if matches!(op, Opcode::Text | Opcode::Binary) {
            self.compressed = hdr[0] & 0x40 != 0;
        }
        self.opcode = op;
        self.fin = hdr[0] & 0x80 != 0;
        self.frame_len = len;
        self.frame_pos = 0;
        Ok(())
    }

    /// Returns the current frame straight from `input` when its payload is all there
    /// and it needs no reassembly: a control frame, or an unfragmented message.
    fn whole_frame(&mut self, input: &mut [u8], pos: usize) -> Option<Step> {
        let standalone = self.opcode.is_control() || (self.fin && self.message.is_none());
        let end = pos.checked_add(usize::try_from(self.frame_len).ok()?)?;
        if !standalone || end > input.len() {
            return None;
        }
        let payload = &mut input[pos..end];
        apply_mask(payload, self.mask, 0);
        let checked = match self.opcode {
            // A compressed message's UTF-8 is checked after inflating it.
            Opcode::Text if !self.compressed && std::str::from_utf8(payload).is_err() => Err(NOT_UTF8),
            Opcode::Close => close::check_payload(payload),
            _ => Ok(()),
        };
        Some(match checked {
            Ok(()) => Step::Deliver {
                op: self.opcode,
                from: Source::Input(pos..end),
                consumed: end,
            },
            Err(f) => self.fail(f),
        })
    }

    /// Starts copying the current frame into `buf`.
    fn begin_copy(&mut self) {
        self.state = State::Payload;
        let kind = match self.opcode {
            Opcode::Text => DataKind::Text,
            Opcode::Binary => DataKind::Binary,
            _ => return,
        };
        self.message = Some(kind);
        self.utf8 = Utf8Carry::default();
    }

    /// Copies what `input` holds of the current payload into `buf`. Returns the step to
    /// report, or `None` when a non-final fragment ended and decoding goes on.
    fn copy_payload(&mut self, input: &mut [u8], pos: &mut usize) -> Result<Option<Step>, Fail> {
        let avail = input.len() - *pos;
        let remaining = self.frame_len - self.frame_pos;
        let take = usize::try_from(remaining).map_or(avail, |r| r.min(avail));
        let chunk = &mut input[*pos..*pos + take];
        apply_mask(chunk, self.mask, (self.frame_pos % 4) as usize);
        if !self.opcode.is_control() && self.message == Some(DataKind::Text) && !self.compressed {
            self.utf8.feed(chunk).map_err(|()| NOT_UTF8)?;
        }
        self.buf.extend_from_slice(chunk);
        *pos += take;
        self.frame_pos += take as u64;
        if self.frame_pos < self.frame_len {
            return Ok(Some(Step::Partial(*pos)));
        }
        self.state = State::Header;
        if self.opcode.is_control() {
            let start = self.buf.len() - self.frame_len as usize;
            if self.opcode == Opcode::Close {
                close::check_payload(&self.buf[start..])?;
            }
            self.delivered_own = true;
            return Ok(Some(Step::Deliver {
                op: self.opcode,
                from: Source::Own(start..self.buf.len()),
                consumed: *pos,
            }));
        }
        if !self.fin {
            return Ok(None);
        }
        if !self.utf8.is_complete() {
            return Err(NOT_UTF8);
        }
        let op = match self.message.take() {
            Some(DataKind::Text) => Opcode::Text,
            _ => Opcode::Binary,
        };
        self.delivered_own = true;
        Ok(Some(Step::Deliver {
            op,
            from: Source::Own(0..self.buf.len()),
            consumed: *pos,
        }))
    }
}

/// Bytes in a client frame header, from its second byte (§5.2).
fn header_len(b1: u8) -> usize {
    let extended = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

fn message(op: Opcode, payload: &[u8]) -> Message<'_> {
    match op {
        Opcode::Text => Message::Text(payload),
        Opcode::Binary | Opcode::Continuation => Message::Binary(payload),
        Opcode::Ping => Message::Ping(payload),
        Opcode::Pong => Message::Pong(payload),
        Opcode::Close => match payload {
            [hi, lo, reason @ ..] => Message::Close {
                code: Some(u16::from_be_bytes([*hi, *lo])),
                reason,
            },
            _ => Message::Close {
                code: None,
                reason: &[],
            },
        },
    }
}

/// The header of an unmasked frame with FIN set (§5.2) and a payload of `len` bytes:
/// `header[..n]` goes on the wire right before the payload, which can then be sent
/// from wherever it lies. ringcast never fragments what it sends.
#[must_use]
pub fn frame_header(opcode: Opcode, len: usize) -> ([u8; 10], usize) {
    server_header(opcode, true, len)
}

/// [`frame_header`] with RSV1 set: a message compressed by permessage-deflate (RFC 7692 §6).
pub(super) fn server_header_rsv1(opcode: Opcode, len: usize) -> ([u8; 10], usize) {
    let (mut header, n) = server_header(opcode, true, len);
    header[0] |= 0x40;
    (header, n)
}

fn server_header(opcode: Opcode, fin: bool, len: usize) -> ([u8; 10], usize) {
    debug_assert!(
        !opcode.is_control() || (fin && len <= usize::from(CONTROL_MAX)),
        "control frame {opcode:?} with fin={fin} and {len} payload bytes"
    );
    let mut header = [0u8; 10];
    header[0] = (u8::from(fin) << 7) | opcode as u8;
    let n = if len <= 125 {
        header[1] = len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        header[1] = 126;
        header[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (header, n)
}

/// Appends one unmasked frame (§5.2), the lengths encoded in the fewest bytes.
///
/// # Panics
///
/// In debug builds, for a control frame without FIN or with more than 125 bytes.
pub fn encode_frame(out: &mut Vec<u8>, opcode: Opcode, fin: bool, payload: &[u8]) {
    let (header, n) = server_header(opcode, fin, payload.len());
    out.reserve(n + payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
}

/// Appends a close frame (§5.5.1) with `code` and as much of `reason` as fits in a
/// control frame: 123 bytes, cut at a character boundary.
///
/// # Panics
///
/// In debug builds, for a code no close frame may carry ([`close::is_valid`]).
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    debug_assert!(close::is_valid(code), "close code {code} may not be sent");
    let mut end = reason.len().min(usize::from(CONTROL_MAX) - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = [0u8; CONTROL_MAX as usize];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    encode_frame(out, Opcode::Close, true, &payload[..2 + end]);
}

/// Appends one frame as a client sends it (§5.3): masked with `mask`. For tests, the
/// load tool and fuzzing; the server never masks.
pub fn encode_masked_frame(out: &mut Vec<u8>, opcode: Opcode, fin: bool, mask: [u8; 4], payload: &[u8]) {
    let (header, n) = server_header(opcode, fin, payload.len());
    out.reserve(n + 4 + payload.len());
    out.push(header[0]);
    out.push(header[1] | 0x80);
    out.extend_from_slice(&header[2..n]);
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The masking key of the examples in §5.7.
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    const MAX: usize = 1 << 20;

    /// An owned copy of a decode result.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Out {
        Text(Vec<u8>),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>, Vec<u8>),
        Compressed(bool, Vec<u8>),
        Fail(u16),
    }

    fn owned(msg: Message<'_>) -> Out {
        match msg {
            Message::Text(p) => Out::Text(p.to_vec()),
            Message::Binary(p) => Out::Binary(p.to_vec()),
            Message::Ping(p) => Out::Ping(p.to_vec()),
            Message::Pong(p) => Out::Pong(p.to_vec()),
            Message::Close { code, reason } => Out::Close(code, reason.to_vec()),
            Message::Compressed { text, payload } => Out::Compressed(text, payload.to_vec()),
        }
    }

    /// Feeds `chunks` one read at a time, each decoded to `Partial`; stops at a failure.
    fn drive(dec: &mut Decoder, chunks: &[&[u8]]) -> Vec<Out> {
        let mut outs = Vec::new();
        for chunk in chunks {
            let mut read = chunk.to_vec();
            let mut pos = 0;
            loop {
                match dec.decode(&mut read[pos..]) {
                    Decoded::Message { msg, consumed } => {
                        assert!(consumed > 0 || msg_is_empty(msg));
                        pos += consumed;
                        outs.push(owned(msg));
                    }
                    Decoded::Partial { consumed } => {
                        assert_eq!(pos + consumed, read.len(), "Partial must use every byte");
                        break;
                    }
                    Decoded::Fail { code, reason } => {
                        assert!(reason.len() <= 123);
                        outs.push(Out::Fail(code));
                        return outs;
                    }
                }
            }
        }
        outs
    }

    fn msg_is_empty(msg: Message<'_>) -> bool {
        matches!(msg, Message::Text([]) | Message::Binary([]))
    }

    fn whole(bytes: &[u8]) -> Vec<Out> {
        drive(&mut Decoder::new(MAX), &[bytes])
    }

    /// Every way to cut `bytes` into two reads, and one byte per read, decodes like
    /// the whole.
    fn assert_split_invariant(bytes: &[u8], max: usize) {
        let expected = drive(&mut Decoder::new(max), &[bytes]);
        for cut in 0..=bytes.len() {
            let got = drive(&mut Decoder::new(max), &[&bytes[..cut], &bytes[cut..]]);
            assert_eq!(got, expected, "cut at {cut}");
        }
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(drive(&mut Decoder::new(max), &bytewise), expected, "byte by byte");
    }

    /// A masked frame with a raw first byte, so any bits can be set.
    fn raw(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let opcode = Opcode::from_bits(b0 & 0x0F).unwrap_or(Opcode::Binary);
        let safe_op = if opcode.is_control() {
            Opcode::Binary
        } else {
            opcode
        };
        encode_masked_frame(&mut out, safe_op, true, MASK, payload);
        out[0] = b0;
        out
    }

    fn frame(op: Opcode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_masked_frame(&mut out, op, fin, MASK, payload);
        out
    }

    fn concat(frames: &[Vec<u8>]) -> Vec<u8> {
        frames.concat()
    }

    fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason);
        p
    }

    #[test]
    fn rfc_examples() {
        // §5.7: a single-frame masked text message "Hello".
        let hello = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        assert_eq!(whole(&hello), [Out::Text(b"Hello".to_vec())]);
        assert_eq!(frame(Opcode::Text, true, b"Hello"), hello);
        // §5.7: an unmasked ping is fine from a server, not from a client.
        assert_eq!(
            whole(&[0x89, 0x05, b'H', b'e', b'l', b'l', b'o']),
            [Out::Fail(1002)]
        );
        let mut out = Vec::new();
        encode_frame(&mut out, Opcode::Ping, true, b"Hello");
        assert_eq!(out, [0x89, 0x05, b'H', b'e', b'l', b'l', b'o']);
        // §5.7: 256 bytes and 64 KiB binary messages in a single unmasked frame.
        assert_eq!(
            frame_header(Opcode::Binary, 256),
            ([0x82, 0x7E, 0x01, 0x00, 0, 0, 0, 0, 0, 0], 4)
        );
        assert_eq!(
            frame_header(Opcode::Binary, 65536),
            ([0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0], 10)
        );
    }

    #[test]
    fn length_encodings() {
        for (len, header) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            assert_eq!(frame_header(Opcode::Text, len).1, header, "len {len}");
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let bytes = frame(Opcode::Text, true, &payload);
            assert_eq!(bytes.len(), header + 4 + len);
            assert_eq!(whole(&bytes), [Out::Text(payload.clone())], "len {len}");
            let bytes = frame(Opcode::Binary, true, &payload);
            let half = bytes.len() / 2;
            let got = drive(&mut Decoder::new(MAX), &[&bytes[..half], &bytes[half..]]);
            assert_eq!(got, [Out::Binary(payload)], "len {len} in two reads");
            let mut out = Vec::new();
            encode_frame(&mut out, Opcode::Text, true, &vec![0; len]);
            assert_eq!(out.len(), header + len);
        }
    }

    #[test]
    fn non_minimal_lengths_are_accepted() {
        // Five bytes announced with a 16-bit and a 64-bit length.
        let mut bytes = vec![0x82, 0xFE, 0, 5];
        bytes.extend_from_slice(&MASK);
        bytes.extend_from_slice(&[1 ^ MASK[0], 2 ^ MASK[1], 3 ^ MASK[2], 4 ^ MASK[3], 5 ^ MASK[0]]);
        assert_eq!(whole(&bytes), [Out::Binary(vec![1, 2, 3, 4, 5])]);
        let mut bytes = vec![0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0];
        bytes.extend_from_slice(&MASK);
        assert_eq!(whole(&bytes), [Out::Binary(vec![])]);
    }

    #[test]
    fn protocol_violations_fail_with_1002() {
        let mut unmasked = frame(Opcode::Text, true, b"hi");
        unmasked[1] &= 0x7F;
        let mut top_bit = vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0];
        top_bit.extend_from_slice(&MASK);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("unmasked", unmasked),
            ("rsv1", raw(0x80 | 0x40 | 0x1, b"hi")),
            ("rsv2", raw(0x80 | 0x20 | 0x2, b"hi")),
            ("rsv3", raw(0x80 | 0x10 | 0x9, b"")),
            ("ping 126", raw(0x89, &[0; 126])),
            ("close 126", raw(0x88, &close_payload(1000, &[b'a'; 124]))),
            ("fragmented ping", raw(0x09, b"")),
            ("fragmented close", raw(0x08, b"")),
            ("continuation first", frame(Opcode::Continuation, true, b"x")),
            (
                "text inside text",
                concat(&[frame(Opcode::Text, false, b"a"), frame(Opcode::Text, true, b"b")]),
            ),
            (
                "binary inside text",
                concat(&[
                    frame(Opcode::Text, false, b"a"),
                    frame(Opcode::Binary, true, b"b"),
                ]),
            ),
            ("64-bit length top bit", top_bit),
            ("close of 1 byte", frame(Opcode::Close, true, &[3])),
        ];
        for (name, bytes) in &cases {
            assert_eq!(whole(bytes), [Out::Fail(1002)], "{name}");
            assert_split_invariant(bytes, MAX);
        }
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(whole(&raw(0x80 | op, b"")), [Out::Fail(1002)], "opcode {op:#x}");
        }
    }

    #[test]
    fn control_frames_at_the_limit() {
        let p125 = [7u8; 125];
        assert_eq!(
            whole(&frame(Opcode::Ping, true, &p125)),
            [Out::Ping(p125.to_vec())]
        );
        assert_eq!(
            whole(&frame(Opcode::Pong, true, &p125)),
            [Out::Pong(p125.to_vec())]
        );
        let reason = [b'r'; 123];
        assert_eq!(
            whole(&frame(Opcode::Close, true, &close_payload(1000, &reason))),
            [Out::Close(Some(1000), reason.to_vec())]
        );
        assert_eq!(
            whole(&frame(Opcode::Close, true, b"")),
            [Out::Close(None, vec![])]
        );
        assert_eq!(whole(&frame(Opcode::Ping, true, b"")), [Out::Ping(vec![])]);
    }

    /// Each boundary of [`close::is_valid`] through the decoder.
    #[test]
    fn close_codes() {
        let boundaries = [
            (0, false),
            (999, false),
            (1000, true),
            (1003, true),
            (1004, false),
            (1005, false),
            (1006, false),
            (1007, true),
            (1011, true),
            (1012, true),
            (1014, true),
            (1015, false),
            (1016, false),
            (2999, false),
            (3000, true),
            (4999, true),
            (5000, false),
            (u16::MAX, false),
        ];
        for (code, valid) in boundaries {
            let bytes = frame(Opcode::Close, true, &close_payload(code, b"bye"));
            let expected = if valid {
                Out::Close(Some(code), b"bye".to_vec())
            } else {
                Out::Fail(1002)
            };
            assert_eq!(whole(&bytes), [expected], "code {code}");
        }
    }

    #[test]
    fn close_reason_must_be_utf8() {
        let bytes = frame(Opcode::Close, true, &close_payload(1000, b"ok \xce\xba"));
        assert_eq!(
            whole(&bytes),
            [Out::Close(Some(1000), "ok κ".as_bytes().to_vec())]
        );
        let bytes = frame(Opcode::Close, true, &close_payload(1000, b"bad \xce"));
        assert_eq!(whole(&bytes), [Out::Fail(1007)]);
        assert_split_invariant(&bytes, MAX);
    }

    #[test]
    fn fragments_with_interleaved_control_frames() {
        let stream = concat(&[
            frame(Opcode::Text, false, b"Hel"),
            frame(Opcode::Ping, true, b"p1"),
            frame(Opcode::Continuation, false, b""),
            frame(Opcode::Pong, true, b""),
            frame(Opcode::Continuation, false, b"lo \xce"),
            frame(Opcode::Ping, true, b"p2"),
            frame(Opcode::Continuation, true, b"\xba"),
            frame(Opcode::Binary, false, b"\xff"),
            frame(Opcode::Continuation, true, b"\xfe"),
            frame(Opcode::Close, true, &close_payload(1001, b"")),
        ]);
        let expected = [
            Out::Ping(b"p1".to_vec()),
            Out::Pong(vec![]),
            Out::Ping(b"p2".to_vec()),
            Out::Text("Hello κ".as_bytes().to_vec()),
            Out::Binary(vec![0xff, 0xfe]),
            Out::Close(Some(1001), vec![]),
        ];
        assert_eq!(whole(&stream), expected);
        assert_split_invariant(&stream, MAX);
    }

    #[test]
    fn utf8_fails_fast_in_fragments() {
        // The second fragment is bad: the failure comes before the final fragment.
        let first = concat(&[
            frame(Opcode::Text, false, b"ok"),
            frame(Opcode::Continuation, false, b"a\xffb"),
        ]);
        let mut dec = Decoder::new(MAX);
        assert_eq!(drive(&mut dec, &[&first]), [Out::Fail(1007)]);
        // A code point cut across fragments is fine; a bad continuation of it is not.
        let cut_ok = concat(&[
            frame(Opcode::Text, false, b"\xf0\x9f"),
            frame(Opcode::Continuation, true, b"\x98\x80"),
        ]);
        assert_eq!(whole(&cut_ok), [Out::Text("😀".as_bytes().to_vec())]);
        let cut_bad = concat(&[
            frame(Opcode::Text, false, b"\xf0\x9f"),
            frame(Opcode::Continuation, false, b"A"),
        ]);
        assert_eq!(whole(&cut_bad), [Out::Fail(1007)]);
        // Ruled out on its first bytes: F4 90 is past U+10FFFF, ED A0 a surrogate.
        for prefix in [&b"\xf4\x90"[..], b"\xed\xa0", b"\xc0", b"\xe0\x80"] {
            let bytes = frame(Opcode::Text, false, prefix);
            assert_eq!(whole(&bytes), [Out::Fail(1007)], "{prefix:x?}");
        }
        // Ends inside a code point.
        let truncated = concat(&[
            frame(Opcode::Text, false, b"a"),
            frame(Opcode::Continuation, true, b"\xce"),
        ]);
        assert_eq!(whole(&truncated), [Out::Fail(1007)]);
        assert_split_invariant(&truncated, MAX);
        assert_split_invariant(&cut_ok, MAX);
    }

    #[test]
    fn utf8_fails_fast_in_a_partial_frame() {
        // A 10-byte text frame whose 3rd payload byte is 0xFF, fed in pieces.
        let bytes = frame(Opcode::Text, true, b"ab\xffdefghij");
        let header = 6;
        let mut dec = Decoder::new(MAX);
        assert_eq!(drive(&mut dec, &[&bytes[..header + 2]]), []);
        assert!(!dec.is_idle());
        assert_eq!(
            drive(&mut dec, &[&bytes[header + 2..header + 3]]),
            [Out::Fail(1007)]
        );
        // A big text frame: the bad byte at 100 fails long before the 64 KiB arrive.
        let mut payload = vec![b'x'; 65536];
        payload[100] = 0xC3;
        payload[101] = b'x';
        let bytes = frame(Opcode::Text, true, &payload);
        let mut dec = Decoder::new(MAX);
        assert_eq!(drive(&mut dec, &[&bytes[..200]]), [Out::Fail(1007)]);
    }

    #[test]
    fn message_size_limit() {
        let max = 10;
        let at = frame(Opcode::Binary, true, &[1; 10]);
        assert_eq!(drive(&mut Decoder::new(max), &[&at]), [Out::Binary(vec![1; 10])]);
        let over = frame(Opcode::Text, true, &[b'a'; 11]);
        assert_eq!(drive(&mut Decoder::new(max), &[&over]), [Out::Fail(1009)]);
        // Announced, not received: the header alone is enough.
        assert_eq!(drive(&mut Decoder::new(max), &[&over[..6]]), [Out::Fail(1009)]);
        let huge = [
            0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4,
        ];
        assert_eq!(drive(&mut Decoder::new(MAX), &[&huge]), [Out::Fail(1009)]);
        // The sum of fragments counts; control frames in between do not.
        let fragments = concat(&[
            frame(Opcode::Text, false, b"12345"),
            frame(Opcode::Ping, true, &[0; 100]),
            frame(Opcode::Continuation, false, b"67890"),
        ]);
        let fits = concat(&[fragments.clone(), frame(Opcode::Continuation, true, b"")]);
        let out = drive(&mut Decoder::new(max), &[&fits]);
        assert_eq!(out, [Out::Ping(vec![0; 100]), Out::Text(b"1234567890".to_vec())]);
        let over = concat(&[fragments, frame(Opcode::Continuation, true, b"!")]);
        let out = drive(&mut Decoder::new(max), &[&over]);
        assert_eq!(out, [Out::Ping(vec![0; 100]), Out::Fail(1009)]);
        assert_split_invariant(&over, max);
    }

    #[test]
    fn whole_frames_are_zero_copy() {
        let mut bytes = concat(&[
            frame(Opcode::Text, true, b"hello"),
            frame(Opcode::Ping, true, b"p"),
        ]);
        let base = bytes.as_ptr() as usize;
        let mut dec = Decoder::new(MAX);
        let Decoded::Message {
            msg: Message::Text(t),
            consumed,
        } = dec.decode(&mut bytes)
        else {
            panic!("expected text")
        };
        assert_eq!((t.as_ptr() as usize - base, consumed), (6, 11));
        assert!(dec.is_idle());
        let Decoded::Message {
            msg: Message::Ping(p),
            ..
        } = dec.decode(&mut bytes[11..])
        else {
            panic!("expected ping")
        };
        assert_eq!(p.as_ptr() as usize - base, 17);
        assert!(dec.is_idle());
    }

    #[test]
    fn buffer_is_released_after_reassembly() {
        let bytes = frame(Opcode::Binary, true, &[9; 300]);
        let mut dec = Decoder::new(MAX);
        assert!(dec.is_idle());
        assert_eq!(drive(&mut dec, &[&bytes[..1]]), []);
        assert!(!dec.is_idle(), "header byte stashed");
        assert_eq!(drive(&mut dec, &[&bytes[1..100]]), []);
        assert!(!dec.is_idle(), "payload in progress");
        // `drive` calls decode until Partial, which frees the buffer.
        assert_eq!(drive(&mut dec, &[&bytes[100..]]), [Out::Binary(vec![9; 300])]);
        assert!(dec.is_idle());
        // A control frame split inside a fragmented message is cut off the buffer.
        let stream = concat(&[
            frame(Opcode::Text, false, b"abc"),
            frame(Opcode::Ping, true, b"ping"),
            frame(Opcode::Continuation, true, b"def"),
        ]);
        let ping_mid = 9 + 8;
        let out = drive(&mut dec, &[&stream[..ping_mid], &stream[ping_mid..]]);
        assert_eq!(out, [Out::Ping(b"ping".to_vec()), Out::Text(b"abcdef".to_vec())]);
        assert!(dec.is_idle());
    }

    #[test]
    fn failed_decoder_stays_failed() {
        let mut dec = Decoder::new(MAX);
        assert_eq!(drive(&mut dec, &[&raw(0xC1, b"")]), [Out::Fail(1002)]);
        assert!(dec.is_idle());
        assert_eq!(
            drive(&mut dec, &[&frame(Opcode::Text, true, b"ok")]),
            [Out::Fail(1002)]
        );
    }

    /// `frame` with RSV1 set on its first byte.
    fn rsv1(mut frame: Vec<u8>) -> Vec<u8> {
        frame[0] |= 0x40;
        frame
    }

    /// Drives a permessage-deflate decoder over every split of `bytes`: each cut in two
    /// and byte by byte decode like the whole; returns that.
    fn deflate_split_invariant(bytes: &[u8]) -> Vec<Out> {
        let expected = drive(&mut Decoder::with_deflate(MAX), &[bytes]);
        for cut in 0..=bytes.len() {
            let got = drive(&mut Decoder::with_deflate(MAX), &[&bytes[..cut], &bytes[cut..]]);
            assert_eq!(got, expected, "cut at {cut}");
        }
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(
            drive(&mut Decoder::with_deflate(MAX), &bytewise),
            expected,
            "byte by byte"
        );
        expected
    }

    #[test]
    fn rsv1_marks_a_compressed_message_when_negotiated() {
        // Not negotiated: RSV1 is a protocol error, as RSV2 and RSV3 are.
        assert_eq!(whole(&rsv1(frame(Opcode::Text, true, b"x"))), [Out::Fail(1002)]);
        // Compressed text is not checked as UTF-8 until inflated.
        let bytes = concat(&[
            rsv1(frame(Opcode::Text, true, b"\xf2\x48")),
            frame(Opcode::Text, true, b"plain"),
            rsv1(frame(Opcode::Binary, false, b"ab")),
            frame(Opcode::Ping, true, b"p"),
            frame(Opcode::Continuation, true, b"\xffc"),
            frame(Opcode::Binary, true, b"\xff"),
        ]);
        assert_eq!(
            deflate_split_invariant(&bytes),
            [
                Out::Compressed(true, b"\xf2\x48".to_vec()),
                Out::Text(b"plain".to_vec()),
                Out::Ping(b"p".to_vec()),
                Out::Compressed(false, b"ab\xffc".to_vec()),
                Out::Binary(b"\xff".to_vec()),
            ]
        );
        // Uncompressed text is still checked.
        let bad = frame(Opcode::Text, true, b"\xff");
        assert_eq!(deflate_split_invariant(&bad), [Out::Fail(1007)]);
        // RFC 7692 §6.1: RSV1 on a continuation or a control frame is a protocol error.
        for bad in [
            concat(&[
                frame(Opcode::Text, false, b"a"),
                rsv1(frame(Opcode::Continuation, true, b"b")),
            ]),
            concat(&[
                rsv1(frame(Opcode::Text, false, b"a")),
                rsv1(frame(Opcode::Continuation, true, b"b")),
            ]),
            rsv1(frame(Opcode::Ping, true, b"")),
            rsv1(frame(Opcode::Close, true, b"")),
            raw(0x80 | 0x20 | 0x1, b"x"),
            raw(0x80 | 0x40 | 0x10 | 0x1, b"x"),
        ] {
            assert_eq!(deflate_split_invariant(&bad), [Out::Fail(1002)], "{bad:02x?}");
        }
        // The limit bounds the compressed bytes as it bounds plain ones.
        let mut small = Decoder::with_deflate(4);
        let over = rsv1(frame(Opcode::Binary, true, b"12345"));
        assert_eq!(drive(&mut small, &[&over]), [Out::Fail(1009)]);
    }

    #[test]
    fn decoder_size() {
        // One per WebSocket connection.
        assert_eq!(std::mem::size_of::<Decoder>(), 80);
    }

    #[test]
    fn close_encoding() {
        let mut out = Vec::new();
        encode_close(&mut out, close::TOO_BIG, "too big");
        assert_eq!(out, b"\x88\x09\x03\xf1too big");
        // 200 bytes of 2-byte characters: cut to 122 bytes, a char boundary under 123.
        let long = "é".repeat(100);
        out.clear();
        encode_close(&mut out, close::NORMAL, &long);
        assert_eq!(out[1], 124);
        assert_eq!(&out[4..], "é".repeat(61).as_bytes());
        out.clear();
        encode_close(&mut out, close::NORMAL, &"a".repeat(200));
        assert_eq!((out[1], out.len()), (125, 127));
        let mut bytes = out.clone();
        bytes[1] |= 0x80;
        bytes.splice(2..2, [0; 4]);
        assert_eq!(whole(&bytes), [Out::Close(Some(1000), vec![b'a'; 123])]);
    }

    #[test]
    fn fragment_encoding() {
        let mut out = Vec::new();
        encode_frame(&mut out, Opcode::Text, false, b"a");
        encode_frame(&mut out, Opcode::Continuation, true, b"b");
        assert_eq!(out, b"\x01\x01a\x80\x01b");
    }
}
