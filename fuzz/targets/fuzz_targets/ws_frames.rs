//! The WebSocket frame decoder, fed whole and in pieces.
//!
//! Checks, for any bytes and message limit:
//! - Decoding never panics, and the messages and the close decision are the same whether
//!   the stream arrives whole, in pieces of 1-3 bytes or in pieces of 1-200 bytes.
//! - They are also what a whole-stream reference decoder (`wsref`) finds: the same
//!   unmasked payloads, control frames, and failure with the same close code.
//! - Every message is within its bound (`max_message`, 125 for control frames), text is
//!   UTF-8, a failure's reason fits a close frame, a failed decoder stays failed, and a
//!   decoder left on a frame boundary outside a fragmented message holds no memory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::proto::ws::{close, Decoded, Decoder, Message};
use ringcast_fuzz::wsref::{self, End, Msg};
use ringcast_fuzz::{split, Input};

const MAX_MESSAGE: [usize; 4] = [0, 16, 126, 65536];

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let max_message = MAX_MESSAGE[usize::from(input.byte() & 3)];
    let seed = input.u64();
    let stream = input.rest();
    let expected = wsref::decode(stream, max_message);
    let whole = drive(max_message, &[stream]);
    assert_eq!(whole, expected, "whole stream against the reference");
    for max_piece in [3, 200] {
        let pieces = split::pieces(stream, seed, max_piece);
        let run = drive(max_message, &pieces);
        assert_eq!(run, expected, "pieces of at most {max_piece} bytes: {pieces:?}");
    }
});

/// Feeds `pieces` as the shard does, each as a fresh buffer, until a close frame or a
/// failure.
fn drive(max_message: usize, pieces: &[&[u8]]) -> (Vec<Msg>, End) {
    let mut decoder = Decoder::new(max_message);
    let mut msgs = Vec::new();
    for piece in pieces {
        let mut buf = piece.to_vec();
        let mut at = 0;
        loop {
            let len = buf.len() - at;
            match decoder.decode(&mut buf[at..]) {
                Decoded::Message { msg, consumed } => {
                    assert!(consumed > 0 && consumed <= len, "consumed {consumed} of {len}");
                    let msg = owned(msg, max_message);
                    let closed = matches!(msg, Msg::Close(..));
                    msgs.push(msg);
                    if closed {
                        return (msgs, End::Closed);
                    }
                    at += consumed;
                }
                Decoded::Partial { consumed } => {
                    assert_eq!(consumed, len, "Partial uses up the buffer");
                    break;
                }
                Decoded::Fail { code, reason } => {
                    assert!(reason.len() <= 123, "reason of {} bytes", reason.len());
                    let mut frame = [0x81, 0x80, 0, 0, 0, 0];
                    let again = decoder.decode(&mut frame);
                    assert!(
                        matches!(again, Decoded::Fail { .. }),
                        "after a failure: {again:?}"
                    );
                    return (msgs, End::Fail(code));
                }
            }
        }
    }
    // Without a message in progress, the last call freed what the decoder held.
    (
        msgs,
        End::Incomplete {
            idle: decoder.is_idle(),
        },
    )
}

fn owned(msg: Message<'_>, max_message: usize) -> Msg {
    let control_ok = |p: &[u8]| assert!(p.len() <= 125, "control payload of {} bytes", p.len());
    match msg {
        Message::Text(p) => {
            assert!(
                p.len() <= max_message && std::str::from_utf8(p).is_ok(),
                "text {p:?}"
            );
            Msg::Text(p.to_vec())
        }
        Message::Binary(p) => {
            assert!(p.len() <= max_message, "binary of {} bytes", p.len());
            Msg::Binary(p.to_vec())
        }
        Message::Ping(p) => {
            control_ok(p);
            Msg::Ping(p.to_vec())
        }
        Message::Pong(p) => {
            control_ok(p);
            Msg::Pong(p.to_vec())
        }
        Message::Compressed { .. } => {
            panic!("a compressed message from a decoder that negotiated no extension (RSV1 is a 1002)")
        }
        Message::Close { code, reason } => {
            control_ok(reason);
            assert!(code.is_none_or(close::is_valid), "close code {code:?}");
            assert!(code.is_some() || reason.is_empty(), "a reason without a code");
            Msg::Close(code, reason.to_vec())
        }
    }
}
