//! The broadcast ring and the history: cost per published event on the producer side and
//! per event read on a consumer; and the ingest thread's whole work per `PUB` without its
//! sockets (decode, build the event with its SSE chunk, retain it, push it, for a loop
//! that keeps up), the bound on acknowledged publishes per second of one ingest thread.
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringcast::event::{Epoch, Event};
use ringcast::ring::broadcast::{Broadcast, Producer, Read};
use ringcast::ring::history::{History, HistoryLimits};

fn broadcast(c: &mut Criterion) {
    let mut g = c.benchmark_group("broadcast");
    g.throughput(Throughput::Elements(1));
    let ring = Broadcast::<u64>::new(16_384, 2);
    let mut producer = Producer::new(Arc::clone(&ring));
    let item = Arc::new(7u64);
    g.bench_function("push_and_read_by_2_consumers", |b| {
        b.iter(|| {
            let seq = producer.next_seq();
            producer.push(Arc::clone(&item));
            for reader in 0..2 {
                match ring.read(seq) {
                    Read::Item(v) => assert_eq!(*v, 7),
                    _ => unreachable!(),
                }
                ring.set_cursor(reader, seq + 1);
            }
        })
    });
    g.finish();
}

fn history(c: &mut Criterion) {
    let mut g = c.benchmark_group("history");
    g.throughput(Throughput::Elements(1));
    let limits = HistoryLimits {
        events_per_topic: 1000,
        bytes_per_topic: 1 << 20,
        max_age: Duration::from_secs(3600),
        topics_max: 100_000,
        bytes_total: 256 << 20,
    };
    let mut h = History::new(limits);
    let epoch = Epoch::from_raw(1);
    let topics: Vec<String> = (0..1000).map(|i| format!("topic-{i}")).collect();
    let mut seq = 0u64;
    let now = Instant::now();
    g.bench_function("insert_event_1000_topics_at_capacity", |b| {
        b.iter(|| {
            seq += 1;
            let topic = &topics[(seq % 1000) as usize];
            h.insert(
                Arc::new(Event::new(epoch, seq, topic, None, None, b"{\"v\":1}", now)),
                now,
            );
        })
    });
    g.finish();
}

fn ingest_publish(c: &mut Criterion) {
    use ringcast::proto::ingest::{Command, Decoded, IngestDecoder, IngestLimits};
    let mut g = c.benchmark_group("ingest_publish");
    g.throughput(Throughput::Elements(1));
    let epoch = Epoch::from_raw(1);
    for size in [128usize, 16384] {
        // The engine's default history budgets, one topic.
        let config = ringcast::config::Config::from_flags(&[]).expect("default flags");
        let mut history = History::new(config.history_limits());
        let ring = Broadcast::<Event>::new(16_384, 1);
        let mut producer = Producer::new(Arc::clone(&ring));
        let mut frame = format!("PUB prices {size}\n").into_bytes();
        frame.resize(frame.len() + size, b'x');
        frame.push(b'\n');
        let mut decoder = IngestDecoder::new(IngestLimits {
            payload_max: 1 << 20,
            line_max: 1024,
        });
        g.bench_function(format!("decode_event_retain_push_{size}B"), |b| {
            b.iter(|| {
                let Decoded::Command {
                    command: Command::Publish(p),
                    ..
                } = decoder.decode(&frame)
                else {
                    unreachable!("one whole PUB")
                };
                let now = Instant::now();
                let seq = producer.next_seq();
                let event = Arc::new(Event::new(epoch, seq, p.topic, p.event, p.key, p.payload, now));
                history.insert(Arc::clone(&event), now);
                producer.push(event);
                ring.set_cursor(0, seq + 1);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, broadcast, history, ingest_publish);
criterion_main!(benches);
