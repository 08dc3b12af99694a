//! WebSocket codec costs: decoding masked client text frames (unmasking and UTF-8
//! validation included), whole and split across reads; unmasking with the word-at-a-time
//! `apply_mask` against the byte loop that defines it; encoding server frame headers.
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringcast::proto::ws::{self, Decoded, Decoder, Message, Opcode};
use std::hint::black_box;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Mostly ASCII JSON-like text with a multi-byte character every 64 bytes, so the UTF-8
/// validator leaves its ASCII fast path now and then, as real text does.
fn text(len: usize) -> Vec<u8> {
    let mut s = String::with_capacity(len);
    while s.len() + 1 < len {
        s.push(if s.len().is_multiple_of(64) { 'é' } else { 'a' });
    }
    while s.len() < len {
        s.push('b');
    }
    s.into_bytes()
}

/// `frames` masked text frames of `len` payload bytes each, back to back.
fn stream(len: usize, frames: usize) -> Vec<u8> {
    let payload = text(len);
    let mut out = Vec::new();
    for _ in 0..frames {
        ws::encode_masked_frame(&mut out, Opcode::Text, true, MASK, &payload);
    }
    out
}

/// Decodes `buf` to the end, cut into reads of `read` bytes, and counts text messages.
fn decode_all(dec: &mut Decoder, buf: &mut [u8], read: usize) -> usize {
    let mut n = 0;
    for chunk in buf.chunks_mut(read) {
        let mut at = 0;
        loop {
            match dec.decode(&mut chunk[at..]) {
                Decoded::Message {
                    msg: Message::Text(t),
                    consumed,
                } => {
                    black_box(t);
                    at += consumed;
                    n += 1;
                }
                Decoded::Partial { .. } => break,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    n
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("ws_decode");
    // (payload bytes, frames per iteration, bytes per read)
    let cases = [
        ("text_128B_whole", 128, 256, usize::MAX),
        ("text_16KiB_whole", 16 * 1024, 4, usize::MAX),
        ("text_16KiB_in_4KiB_reads", 16 * 1024, 4, 4096),
    ];
    for (name, len, frames, read) in cases {
        let master = stream(len, frames);
        g.throughput(Throughput::Bytes((len * frames) as u64));
        g.bench_function(name, |b| {
            let mut dec = Decoder::new(1 << 20);
            b.iter_batched_ref(
                || master.clone(),
                |buf| assert_eq!(decode_all(&mut dec, buf, read), frames),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn mask(c: &mut Criterion) {
    let mut g = c.benchmark_group("ws_mask");
    for len in [128usize, 16 * 1024] {
        // One byte in, so the fast path also starts unaligned.
        let mut buf = vec![0x5au8; len + 1];
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(format!("apply_mask_{len}B"), |b| {
            b.iter(|| ws::apply_mask(black_box(&mut buf[1..]), black_box(MASK), 1))
        });
        g.bench_function(format!("apply_mask_reference_{len}B"), |b| {
            b.iter(|| ws::apply_mask_reference(black_box(&mut buf[1..]), black_box(MASK), 1))
        });
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("ws_encode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("frame_header", |b| {
        b.iter(|| ws::frame_header(black_box(Opcode::Text), black_box(300)))
    });
    let payload = text(128);
    g.bench_function("encode_frame_128B", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            ws::encode_frame(&mut out, Opcode::Text, true, black_box(&payload));
            out.len()
        })
    });
    g.finish();
}

criterion_group!(benches, decode, mask, encode);
criterion_main!(benches);
