//! Codec costs on the hot path: parsing a subscriber's request head, encoding an event
//! for SSE, decoding a pipelined burst of ingest commands.
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringcast::proto::{http, ingest, sse};
use std::hint::black_box;

const BROWSER_REQUEST: &[u8] = b"GET /sse?topic=prices&topic=news HTTP/1.1\r\nHost: push.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36\r\n\
Accept: text/event-stream\r\nCache-Control: no-cache\r\nLast-Event-ID: 660d2c2d0149e-41\r\n\
Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\nConnection: keep-alive\r\n\r\n";

fn http_request(c: &mut Criterion) {
    let mut g = c.benchmark_group("http");
    g.throughput(Throughput::Bytes(BROWSER_REQUEST.len() as u64));
    g.bench_function("parse_browser_request", |b| {
        b.iter(|| match http::parse_request(black_box(BROWSER_REQUEST)) {
            Ok(http::Parsed::Complete(r)) => r.head_len,
            _ => unreachable!(),
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_subscription", |b| {
        b.iter(|| {
            http::parse_subscription(black_box("topic=prices&topic=news%2Fworld&last_event_id=1-2")).unwrap()
        })
    });
    g.finish();
}

fn sse_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("sse");
    for size in [100usize, 4096, 65536] {
        let data: Vec<u8> = (0..size)
            .map(|i| {
                if i % 80 == 79 {
                    b'\n'
                } else {
                    b'a' + (i % 26) as u8
                }
            })
            .collect();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("encode_event_{size}B"), |b| {
            let mut out = Vec::with_capacity(size * 2);
            b.iter(|| {
                out.clear();
                sse::encode_event(&mut out, "660d2c2d0149e-41", Some("update"), black_box(&data));
                out.len()
            })
        });
    }
    g.finish();
}

fn ingest_decode(c: &mut Criterion) {
    let mut stream = Vec::new();
    for i in 0..1000 {
        let payload = format!("{{\"n\":{i},\"price\":191.25}}");
        stream.extend_from_slice(format!("PUB prices {}\n{payload}\n", payload.len()).as_bytes());
    }
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("decode_1000_pipelined_pubs", |b| {
        b.iter_batched(
            || ingest::IngestDecoder::new(ingest::IngestLimits::default()),
            |mut dec| {
                let mut at = 0;
                let mut n = 0;
                while let ingest::Decoded::Command { consumed, .. } = dec.decode(&stream[at..]) {
                    at += consumed;
                    n += 1;
                }
                assert_eq!(n, 1000);
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, http_request, sse_encode, ingest_decode);
criterion_main!(benches);
