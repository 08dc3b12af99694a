//! Any split of a client frame stream decodes like the whole, through the public API of
//! `ringcast::proto::ws`. The driver reads like the shard: each read is appended to what
//! the decoder left unconsumed, decoded until `Partial` or `Fail`, and the consumed
//! prefix drained. The decoder promises that `Partial` uses every byte, so the driver
//! also checks that nothing is ever left staged between reads.

use proptest::prelude::*;
use ringcast::proto::ws::{close, encode_masked_frame, Decoded, Decoder, Message, Opcode};

const MAX: usize = 1 << 20;

/// An owned copy of a decode result.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Out {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, Vec<u8>),
    Fail(u16),
}

fn owned(msg: Message<'_>) -> Out {
    match msg {
        Message::Text(p) => Out::Text(p.to_vec()),
        Message::Binary(p) => Out::Binary(p.to_vec()),
        Message::Ping(p) => Out::Ping(p.to_vec()),
        Message::Pong(p) => Out::Pong(p.to_vec()),
        Message::Close { code, reason } => Out::Close(code, reason.to_vec()),
        Message::Compressed { .. } => {
            panic!("a decoder without permessage-deflate returned a compressed message")
        }
    }
}

/// What a stream decoded to, and whether the decoder was idle after the last read.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    outs: Vec<Out>,
    idle: bool,
}

/// Decodes `chunks` as successive reads; stops at the first failure, as the connection
/// closes then.
fn drive<'c>(max: usize, chunks: impl IntoIterator<Item = &'c [u8]>) -> Run {
    let mut dec = Decoder::new(max);
    let mut staged: Vec<u8> = Vec::new();
    let mut outs = Vec::new();
    for chunk in chunks {
        staged.extend_from_slice(chunk);
        let mut pos = 0;
        loop {
            match dec.decode(&mut staged[pos..]) {
                Decoded::Message { msg, consumed } => {
                    pos += consumed;
                    outs.push(owned(msg));
                }
                Decoded::Partial { consumed } => {
                    pos += consumed;
                    break;
                }
                Decoded::Fail { code, reason } => {
                    assert!(!reason.is_empty() && reason.len() <= 123, "{reason:?}");
                    outs.push(Out::Fail(code));
                    return Run {
                        outs,
                        idle: dec.is_idle(),
                    };
                }
            }
        }
        staged.drain(..pos);
        assert!(staged.is_empty(), "{} bytes left staged", staged.len());
    }
    Run {
        outs,
        idle: dec.is_idle(),
    }
}

/// Cuts `bytes` at the given points (proptest indices), in order.
fn chunks_at<'b>(bytes: &'b [u8], cuts: &[prop::sample::Index]) -> Vec<&'b [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut from = 0;
    for cut in cuts.into_iter().chain([bytes.len()]) {
        chunks.push(&bytes[from..cut]);
        from = cut;
    }
    chunks
}

// ----- a model of valid client streams ------------------------------------------------

/// One frame as a client sends it.
#[derive(Clone, Debug)]
struct Frame {
    opcode: Opcode,
    fin: bool,
    mask: [u8; 4],
    payload: Vec<u8>,
}

/// A client message: a data message in fragments with control frames between them, or a
/// lone control frame.
#[derive(Clone, Debug)]
enum Item {
    Data {
        text: bool,
        fragments: Vec<Vec<u8>>,
        /// Pings (or pongs) sent after fragment i, for i below the last fragment.
        between: Vec<Option<(bool, Vec<u8>)>>,
    },
    Control(bool, Vec<u8>),
}

/// A stream of frames, the results it must decode to, and where each frame's payload
/// starts in the encoded bytes.
#[derive(Clone, Debug)]
struct Stream {
    bytes: Vec<u8>,
    expected: Vec<Out>,
    payload_starts: Vec<usize>,
    frames: Vec<Frame>,
}

fn payload_len() -> impl Strategy<Value = usize> {
    // Mostly short, sometimes past the 16-bit and 64-bit length boundaries.
    prop_oneof![8 => 0usize..140, 1 => 120usize..300, 1 => 65_530usize..65_545]
}

/// Valid UTF-8 with 1- to 4-byte characters, about `len` bytes long.
fn text_of(len: usize, seed: u32) -> Vec<u8> {
    let alphabet = ["a", "Z", " ", "é", "κ", "€", "한", "😀", "\u{10FFFF}"];
    let mut s = String::new();
    let mut i = seed as usize;
    while s.len() < len {
        s.push_str(alphabet[i % alphabet.len()]);
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    s.into_bytes()
}

fn split_at_points(bytes: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
    chunks_at(bytes, cuts).into_iter().map(<[u8]>::to_vec).collect()
}

fn control_payload() -> impl Strategy<Value = (bool, Vec<u8>)> {
    (any::<bool>(), prop::collection::vec(any::<u8>(), 0..=125))
}

fn item() -> impl Strategy<Value = Item> {
    let data = (
        any::<bool>(),
        payload_len(),
        any::<u32>(),
        // Fragment cuts may fall inside a UTF-8 character: the decoder must carry it.
        prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        prop::collection::vec(prop::option::weighted(0.3, control_payload()), 4),
    )
        .prop_map(|(text, len, seed, cuts, between)| {
            let payload = if text {
                text_of(len, seed)
            } else {
                (0..len).map(|i| (i as u32 ^ seed) as u8).collect()
            };
            Item::Data {
                text,
                fragments: split_at_points(&payload, &cuts),
                between,
            }
        });
    prop_oneof![4 => data, 1 => control_payload().prop_map(|(ping, p)| Item::Control(ping, p))]
}

fn stream() -> impl Strategy<Value = Stream> {
    (
        prop::collection::vec(item(), 0..6),
        prop::option::of((
            prop::sample::select(vec![1000u16, 1001, 1003, 1011, 3000, 4999]),
            "[a-zé]{0,20}",
        )),
        prop::collection::vec(any::<[u8; 4]>(), 64),
    )
        .prop_map(|(items, close, masks)| build(&items, close, &masks))
}

fn build(items: &[Item], close: Option<(u16, String)>, masks: &[[u8; 4]]) -> Stream {
    let mut frames = Vec::new();
    let mut expected = Vec::new();
    let push = |frames: &mut Vec<Frame>, opcode, fin, payload: Vec<u8>| {
        let mask = masks[frames.len() % masks.len()];
        frames.push(Frame {
            opcode,
            fin,
            mask,
            payload,
        });
    };
    let control = |ping: bool, p: Vec<u8>| {
        if ping {
            (Opcode::Ping, Out::Ping(p))
        } else {
            (Opcode::Pong, Out::Pong(p))
        }
    };
    for item in items {
        match item {
            Item::Control(ping, p) => {
                let (op, out) = control(*ping, p.clone());
                push(&mut frames, op, true, p.clone());
                expected.push(out);
            }
            Item::Data {
                text,
                fragments,
                between,
            } => {
                let last = fragments.len() - 1;
                for (i, fragment) in fragments.iter().enumerate() {
                    let op = match (i, text) {
                        (0, true) => Opcode::Text,
                        (0, false) => Opcode::Binary,
                        _ => Opcode::Continuation,
                    };
                    push(&mut frames, op, i == last, fragment.clone());
                    if let (true, Some((ping, p))) = (i < last, &between[i % between.len()]) {
                        let (op, out) = control(*ping, p.clone());
                        push(&mut frames, op, true, p.clone());
                        expected.push(out);
                    }
                }
                let whole = fragments.concat();
                expected.push(if *text {
                    Out::Text(whole)
                } else {
                    Out::Binary(whole)
                });
            }
        }
    }
    if let Some((code, reason)) = close {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason.as_bytes());
        push(&mut frames, Opcode::Close, true, p);
        expected.push(Out::Close(Some(code), reason.into_bytes()));
    }
    let mut bytes = Vec::new();
    let mut payload_starts = Vec::new();
    for f in &frames {
        encode_masked_frame(&mut bytes, f.opcode, f.fin, f.mask, &f.payload);
        payload_starts.push(bytes.len() - f.payload.len());
    }
    Stream {
        bytes,
        expected,
        payload_starts,
        frames,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The model's messages come out, in order, however the stream is cut into reads,
    /// and the decoder holds nothing once a stream of whole messages is read.
    #[test]
    fn any_split_decodes_like_the_whole(
        s in stream(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let whole = drive(MAX, [s.bytes.as_slice()]);
        prop_assert_eq!(&whole.outs, &s.expected);
        prop_assert!(whole.idle);
        let split = drive(MAX, chunks_at(&s.bytes, &cuts));
        prop_assert_eq!(split, whole);
    }

    /// A byte changed anywhere, valid or not: the answer, failure included, still does
    /// not depend on the cuts.
    #[test]
    fn corrupted_streams_fail_the_same_at_any_split(
        s in stream(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        max in prop_oneof![Just(MAX), 0usize..200],
    ) {
        let mut bytes = s.bytes.clone();
        if !bytes.is_empty() {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        let whole = drive(max, [bytes.as_slice()]);
        prop_assert_eq!(drive(max, chunks_at(&bytes, &cuts)), whole);
    }

    /// Text with a 0xFF byte (never valid UTF-8) fails with 1007 as soon as that byte
    /// arrives, before the rest of its frame or message does (Autobahn 6.4.x).
    #[test]
    fn invalid_utf8_fails_on_arrival(
        s in stream(),
        pick in any::<prop::sample::Index>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        // Frames of text messages with a payload, by index.
        let mut in_text = false;
        let mut candidates = Vec::new();
        for (i, f) in s.frames.iter().enumerate() {
            match f.opcode {
                Opcode::Text => in_text = true,
                Opcode::Binary => in_text = false,
                _ => {}
            }
            let data = !matches!(f.opcode, Opcode::Ping | Opcode::Pong | Opcode::Close);
            if in_text && data && !f.payload.is_empty() {
                candidates.push(i);
            }
        }
        prop_assume!(!candidates.is_empty());
        let frame = candidates[pick.index(candidates.len())];
        let offset = pick.index(s.frames[frame].payload.len());
        let at = s.payload_starts[frame] + offset;
        let mut bytes = s.bytes.clone();
        bytes[at] = 0xFF ^ s.frames[frame].mask[offset % 4];
        let upto = drive(MAX, chunks_at(&bytes[..=at], &cuts));
        prop_assert_eq!(upto.outs.last(), Some(&Out::Fail(close::INVALID_DATA)));
        let before = drive(MAX, [&bytes[..at]]);
        prop_assert!(!before.outs.contains(&Out::Fail(close::INVALID_DATA)));
    }

    /// Whatever the bytes, decoding never panics and split answers agree.
    #[test]
    fn arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let whole = drive(64, [bytes.as_slice()]);
        prop_assert_eq!(drive(64, chunks_at(&bytes, &cuts)), whole);
    }
}

// ----- exhaustive splits of fixed streams ---------------------------------------------

fn frame(op: Opcode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_masked_frame(&mut out, op, fin, [0x37, 0xfa, 0x21, 0x3d], payload);
    out
}

fn fixed_streams() -> Vec<(&'static str, Vec<u8>, usize)> {
    let fragmented = [
        frame(Opcode::Text, false, "Grüß ".as_bytes()),
        frame(Opcode::Ping, true, b"are you there"),
        frame(Opcode::Continuation, false, &"Gott 😀".as_bytes()[..9]),
        frame(Opcode::Pong, true, b""),
        frame(Opcode::Continuation, true, &"Gott 😀".as_bytes()[9..]),
        frame(Opcode::Close, true, b"\x03\xe8done"),
    ]
    .concat();
    let medium: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    let lengths = [
        frame(Opcode::Binary, true, &medium),
        frame(Opcode::Text, true, &[b'x'; 125]),
        frame(Opcode::Text, true, &[b'y'; 126]),
        frame(Opcode::Binary, true, b""),
    ]
    .concat();
    let bad_middle = [
        frame(Opcode::Text, false, b"fine"),
        frame(Opcode::Continuation, false, b"still \xce"),
        frame(Opcode::Continuation, false, b"\xbaok \xff never"),
        frame(Opcode::Continuation, true, b"unreached"),
    ]
    .concat();
    let too_big = [
        frame(Opcode::Binary, false, &[1; 40]),
        frame(Opcode::Ping, true, b"p"),
        frame(Opcode::Continuation, true, &[2; 30]),
    ]
    .concat();
    vec![
        ("fragmented text with control frames", fragmented, MAX),
        ("length encodings", lengths, MAX),
        ("invalid UTF-8 in a middle fragment", bad_middle, MAX),
        ("fragments over the limit", too_big, 64),
    ]
}

#[test]
fn every_two_way_split_of_fixed_streams() {
    for (name, bytes, max) in fixed_streams() {
        let whole = drive(max, [bytes.as_slice()]);
        assert!(!whole.outs.is_empty(), "{name}");
        for cut in 0..=bytes.len() {
            let split = drive(max, [&bytes[..cut], &bytes[cut..]]);
            assert_eq!(split, whole, "{name}: cut at {cut}");
        }
        let bytewise = drive(max, bytes.chunks(1));
        assert_eq!(bytewise, whole, "{name}: byte by byte");
    }
}

#[test]
fn fixed_streams_decode_to_what_was_sent() {
    let outs: Vec<Vec<Out>> = fixed_streams()
        .iter()
        .map(|(_, bytes, max)| drive(*max, [bytes.as_slice()]).outs)
        .collect();
    assert_eq!(
        outs[0],
        [
            Out::Ping(b"are you there".to_vec()),
            Out::Pong(vec![]),
            Out::Text("Grüß Gott 😀".as_bytes().to_vec()),
            Out::Close(Some(1000), b"done".to_vec()),
        ]
    );
    assert_eq!(outs[1].len(), 4);
    assert_eq!(outs[1][2], Out::Text(vec![b'y'; 126]));
    assert_eq!(outs[2], [Out::Fail(close::INVALID_DATA)]);
    assert_eq!(outs[3], [Out::Ping(b"p".to_vec()), Out::Fail(close::TOO_BIG)]);
}
