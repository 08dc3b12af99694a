//! The ingest line protocol decoder, fed as the ingest thread feeds it.
//!
//! Checks, for any bytes and limits:
//! - Decoding never panics, and the commands and errors up to the connection's end (a
//!   fatal error or `QUIT`) are the same whether the stream arrives whole, in pieces of
//!   1-7 bytes or in pieces of 1-300 bytes, and so is what is left over unconsumed.
//! - `Command` and `Error` consume at least one byte and `Partial` at most the buffer;
//!   once the `need` a `Partial` announced is buffered (up to 64 KiB), the next call is
//!   not `Partial`.
//! - A `Publish` holds a valid topic, a UTF-8 payload of at most `payload_max` bytes, an
//!   event name and key within their limits; every `-ERR` reply is one line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::proto::http::is_valid_topic;
use ringcast::proto::ingest::{
    self, Command, Decoded, IngestDecoder, IngestError, IngestLimits, EVENT_NAME_MAX, KEY_LEN_MAX,
    RESERVED_EVENT_PREFIX,
};
use ringcast_fuzz::{split, Input};

const PAYLOAD_MAX: [usize; 4] = [0, 5, 64, 1 << 20];
const LINE_MAX: [usize; 4] = [0, 12, 40, 1024];
/// Largest `need` checked by decoding a padded copy: beyond it the copy costs more than
/// the check is worth.
const NEED_CHECKED_MAX: usize = 1 << 16;

/// What the connection saw, owned so that runs over different pieces can be compared.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Command(String),
    Error(IngestError),
}

/// Everything one run produced: the commands and errors, then the bytes left unconsumed
/// when the stream ended without closing the connection.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    seen: Vec<Seen>,
    left: Option<Vec<u8>>,
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let choice = input.byte();
    let limits = IngestLimits {
        payload_max: PAYLOAD_MAX[usize::from(choice & 3)],
        line_max: LINE_MAX[usize::from(choice >> 2 & 3)],
    };
    let seed = input.u64();
    let stream = input.rest();
    let whole = drive(limits, &[stream]);
    for max_piece in [7, 300] {
        let pieces = split::pieces(stream, seed, max_piece);
        let run = drive(limits, &pieces);
        assert_eq!(run, whole, "pieces of at most {max_piece} bytes: {pieces:?}");
    }
});

/// Feeds `pieces` in order with the caller loop of `IngestDecoder`'s docs, until the
/// connection would close.
fn drive(limits: IngestLimits, pieces: &[&[u8]]) -> Run {
    let mut decoder = IngestDecoder::new(limits);
    let mut buf = Vec::new();
    let mut seen = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        let mut start = 0;
        loop {
            let rest = &buf[start..];
            match decoder.decode(rest) {
                Decoded::Command { command, consumed } => {
                    assert!(
                        consumed > 0 && consumed <= rest.len(),
                        "consumed {consumed} of {}",
                        rest.len()
                    );
                    check_command(&command, limits);
                    let quit = command == Command::Quit;
                    seen.push(Seen::Command(format!("{command:?}")));
                    if quit {
                        return Run { seen, left: None };
                    }
                    start += consumed;
                }
                Decoded::Error { error, consumed } => {
                    assert!(
                        consumed > 0 && consumed <= rest.len(),
                        "consumed {consumed} of {}",
                        rest.len()
                    );
                    let mut reply = Vec::new();
                    ingest::encode_err(&mut reply, &error);
                    let line = &reply[..reply.len() - 2];
                    assert!(
                        !line.contains(&b'\n') && !line.contains(&b'\r'),
                        "reply {reply:?}"
                    );
                    let fatal = error.is_fatal();
                    seen.push(Seen::Error(error));
                    if fatal {
                        return Run { seen, left: None };
                    }
                    start += consumed;
                }
                Decoded::Partial { consumed, need } => {
                    assert!(consumed <= rest.len(), "consumed {consumed} of {}", rest.len());
                    // Checked on the whole stream only: with small pieces the same
                    // need is announced once per piece.
                    if let Some(need) = need.filter(|&n| pieces.len() == 1 && n <= NEED_CHECKED_MAX) {
                        check_need(limits, &rest[consumed..], need);
                    }
                    start += consumed;
                    break;
                }
            }
        }
        buf.drain(..start);
    }
    Run {
        seen,
        left: Some(buf),
    }
}

/// A `Partial` said the next command needs `need` bytes: with that many buffered (the
/// stream padded with a terminator), a fresh decoder does not answer `Partial`.
fn check_need(limits: IngestLimits, rest: &[u8], need: usize) {
    assert!(
        need > rest.len(),
        "need {need} but {} bytes are there",
        rest.len()
    );
    let mut padded = rest.to_vec();
    padded.resize(need, b'\n');
    let again = IngestDecoder::new(limits).decode(&padded);
    assert!(
        !matches!(again, Decoded::Partial { .. }),
        "need {need}: {again:?}"
    );
}

fn check_command(command: &Command<'_>, limits: IngestLimits) {
    let Command::Publish(publish) = command else {
        return;
    };
    assert!(is_valid_topic(publish.topic.as_bytes()), "{publish:?}");
    assert!(publish.payload.len() <= limits.payload_max, "{publish:?}");
    assert!(std::str::from_utf8(publish.payload).is_ok(), "{publish:?}");
    if let Some(name) = publish.event {
        assert!((1..=EVENT_NAME_MAX).contains(&name.len()), "{publish:?}");
        assert!(!name.starts_with(RESERVED_EVENT_PREFIX), "{publish:?}");
        assert!(name.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{publish:?}");
    }
    if let Some(key) = publish.key {
        assert!((1..=KEY_LEN_MAX).contains(&key.len()), "{publish:?}");
        assert!(key.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{publish:?}");
    }
}
