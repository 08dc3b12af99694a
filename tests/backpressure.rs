//! Backpressure under a flood: hundreds of readers that read nothing share an engine with
//! readers that keep up, while a publisher floods 1 KiB events pipelined on the ingest
//! socket. Each topic has its own policy (`--policy`): drop-oldest (`do.*`, the default),
//! coalesce (`co.*`), drop-newest (`dn.*`) and disconnect (`dc.*`).
//!
//! A slow reader sets a 4 KiB `SO_RCVBUF` before connecting and reads nothing until the
//! flood is over. Its window stays tiny, but the engine's socket does not: the kernel
//! grows its send buffer towards `tcp_wmem`'s maximum (4 MiB here), so each slow reader
//! absorbs ~2.8 MB of events in kernel memory before the engine's own queue (the part
//! under test) starts to fill. The floods are sized for that.
//!
//! What must hold, and is asserted:
//! - the engine's `VmRSS`, sampled every 10 ms through the flood, stays under its idle
//!   baseline plus the slow readers times their per-client cap (queue bytes plus the
//!   out-queue's own overhead) plus the topics' histories and a slack;
//! - a fast reader gets every event of its topic, in order, and no notice;
//! - once a slow reader reads, what it gets and what its gap notices count add up to
//!   exactly what was published on its topic: drop-oldest ends with the newest events,
//!   drop-newest with the oldest, coalesce with the latest value of every key, and a
//!   disconnect reader's stream ends with `ringcast.slow` (WebSocket: close 1008);
//! - the engine's `dropped`, `coalesced` and `slow_disconnected` counters equal what the
//!   readers were told, and `slow_closed` and `ring_lost` stay 0.
//!
//! A reader is "fast" by construction, not by luck on a busy machine: the publisher
//! never runs more than [`WINDOW`] events ahead of the slowest fast reader of a topic, so
//! a fast reader's backlog is at most [`WINDOW`] events (~138 KiB), half the engine's
//! queue limit. A gap told to a fast reader is therefore an engine bug, whatever the
//! scheduler does.
//!
//! In CI: `flood_with_four_policies` (40,000 events, 500 slow and 50 fast readers) and
//! `flood_websocket_drop_oldest` (6,000 events, 60 slow and 5 fast WebSockets). By name:
//! the 100,000 events, `cargo test --release --test backpressure -- --ignored
//! flood_100k_events`, and two reproductions of engine bugs, ignored until they are
//! fixed: `a_gap_behind_a_send_in_flight_is_told` and
//! `coalesced_events_keep_their_id_order`.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ringcast_tests::engine::Engine;
use ringcast_tests::http::End;
use ringcast_tests::ingest::{ok_id, pub_frame, Publisher};
use ringcast_tests::seq_of;
use ringcast_tests::slow::{connect_with_rcvbuf, rss_kib, tcp_mem_kib, Gap, Item, Peaks, RssSampler, Stream};

/// Payload bytes of every event.
const PAYLOAD: usize = 1024;
/// The engine's per-client event queue limit (`--queue-bytes`, passed explicitly).
const QUEUE_BYTES: u64 = 256 * 1024;
/// Bytes of history kept per topic (`--history-bytes`, the default, passed explicitly),
/// as the engine accounts them (payload, SSE chunk and bookkeeping of each event).
const HISTORY_BYTES: u64 = 1 << 20;
/// `SO_RCVBUF` of a slow reader (the kernel doubles it for bookkeeping).
const SLOW_RCVBUF: u32 = 4096;
/// Events the publisher may be ahead of the slowest fast reader of a topic. At ~1.1 KiB
/// per encoded event that is ~138 KiB, half of [`QUEUE_BYTES`].
const WINDOW: u64 = 128;
/// Publishes per pipelined write.
const BATCH: usize = 32;
/// Keys of the coalesced topic: `k0`..`k9`.
const KEYS: u64 = 10;
/// Per slow client, what the engine may hold besides the event bytes [`QUEUE_BYTES`]
/// bounds: its entry ring (40 bytes per queued event, `--queue-events` 1024 at most:
/// 40 KiB), the pooled out-queue (64 iovecs and a msghdr: 1.1 KiB) and the allocator's
/// rounding. Measured all told, events included: 46 KiB per slow client with 500 slow
/// readers on one drop-oldest topic (RSS growth 24.5 MiB against 1.3 MiB without them).
const CLIENT_OVERHEAD: u64 = 48 * 1024;
/// Slack for the allocator's arenas and thread caches, the broadcast ring's slots not
/// yet released (the ring drops its reference once every loop has read an event), a
/// WebSocket encoding beside the SSE one, and sampling jitter.
const RSS_SLACK: u64 = 16 << 20;
/// How long a whole flood may take before the test gives up, in CI and by name.
const FLOOD_DEADLINE: Duration = Duration::from_secs(240);
/// How long a stream must stay silent after its last expected item.
const QUIET: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    DropOldest,
    Coalesce,
    DropNewest,
    Disconnect,
}

/// One topic of a flood: its policy, its share of the events, its readers.
#[derive(Clone, Copy, Debug)]
struct TopicPlan {
    name: &'static str,
    policy: Policy,
    /// Events of this topic per round of the schedule.
    weight: usize,
    slow: usize,
    fast: usize,
}

/// A whole flood.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Events published, all topics together.
    events: usize,
    topics: &'static [TopicPlan],
    /// WebSocket readers (`format=json`) instead of SSE.
    ws: bool,
}

/// 500 slow readers, 50 fast; most events and most readers on the drop-oldest topic.
const FOUR_POLICIES: &[TopicPlan] = &[
    TopicPlan {
        name: "do.t",
        policy: Policy::DropOldest,
        weight: 7,
        slow: 350,
        fast: 40,
    },
    TopicPlan {
        name: "co.t",
        policy: Policy::Coalesce,
        weight: 1,
        slow: 50,
        fast: 0,
    },
    TopicPlan {
        name: "dn.t",
        policy: Policy::DropNewest,
        weight: 1,
        slow: 50,
        fast: 5,
    },
    TopicPlan {
        name: "dc.t",
        policy: Policy::Disconnect,
        weight: 1,
        slow: 50,
        fast: 5,
    },
];

/// WebSocket readers on one drop-oldest topic.
const WS_DROP_OLDEST: &[TopicPlan] = &[TopicPlan {
    name: "do.ws",
    policy: Policy::DropOldest,
    weight: 1,
    slow: 60,
    fast: 5,
}];

#[test]
fn flood_with_four_policies() {
    run(Plan {
        events: 40_000,
        topics: FOUR_POLICIES,
        ws: false,
    });
}

#[test]
fn flood_websocket_drop_oldest() {
    run(Plan {
        events: 6_000,
        topics: WS_DROP_OLDEST,
        ws: true,
    });
}

/// The figure: 100,000 events of 1 KiB. Run by name.
#[test]
#[ignore = "a soak of 100,000 events; run by name"]
fn flood_100k_events() {
    run(Plan {
        events: 100_000,
        topics: FOUR_POLICIES,
        ws: false,
    });
}

/// The engine's arguments for `plan`: one `--policy` per topic pattern.
fn engine_args(plan: &Plan) -> Vec<String> {
    let mut args: Vec<String> = [
        "--loops",
        "2",
        "--queue-bytes",
        "262144",
        "--queue-events",
        "1024",
        "--history-bytes",
        "1048576",
        // Slow readers make no progress for the whole flood; the default 30 s stall
        // limit would reap them during the 100,000-event run, which is not under test.
        "--write-stall-ms",
        "600000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for topic in plan.topics {
        let prefix = topic.name.split('.').next().expect("a prefix");
        let policy = match topic.policy {
            Policy::DropOldest => "drop-oldest",
            Policy::Coalesce => "coalesce",
            Policy::DropNewest => "drop-newest",
            Policy::Disconnect => "disconnect",
        };
        args.push("--policy".into());
        args.push(format!("{prefix}.*={policy}"));
    }
    args
}

/// The payload of event `index` of `topic`: `<topic> <index> <key> ` padded to
/// [`PAYLOAD`] bytes, so a reader knows exactly which event it holds.
fn payload(topic: &str, index: u64, key: &str) -> Vec<u8> {
    let mut data = format!("{topic} {index} {key} ").into_bytes();
    assert!(data.len() < PAYLOAD);
    data.resize(PAYLOAD, b'.');
    data
}

/// Topic, index and key of a payload made by [`payload`].
fn parse_payload(data: &str) -> (&str, u64, &str) {
    assert_eq!(
        data.len(),
        PAYLOAD,
        "payload length: {:?}",
        &data[..data.len().min(60)]
    );
    let mut words = data.split(' ');
    let topic = words.next().unwrap_or_default();
    let index = words.next().and_then(|w| w.parse().ok());
    let key = words.next().unwrap_or_default();
    let index = index.unwrap_or_else(|| panic!("no index in payload {:?}", &data[..60]));
    (topic, index, key)
}

/// The coalescing key of event `index` of a coalesce topic, `-` for the others.
fn key_of(policy: Policy, index: u64) -> String {
    match policy {
        Policy::Coalesce => format!("k{}", key_number(index)),
        _ => "-".to_owned(),
    }
}

/// The key number of event `index`: scattered (a multiplicative hash, Knuth's), not
/// cyclic, so a key can come back before the others have, as prices of busy and quiet
/// symbols do.
fn key_number(index: u64) -> u8 {
    ((index.wrapping_mul(2_654_435_761) >> 16) % KEYS) as u8
}

/// The index of the last event published with each key, among `p` events.
fn last_per_key(p: u64) -> BTreeMap<u8, u64> {
    (0..p).map(|i| (key_number(i), i)).collect()
}

/// Which topic each published event goes to: rounds of the topics' weights, interleaved.
fn schedule(plan: &Plan) -> Vec<usize> {
    let round: Vec<usize> = plan
        .topics
        .iter()
        .enumerate()
        .flat_map(|(t, topic)| std::iter::repeat_n(t, topic.weight))
        .collect();
    (0..plan.events).map(|g| round[g % round.len()]).collect()
}

/// Per topic, the sequence number of each published event, by index.
struct Published {
    seqs: Vec<Vec<u64>>,
}

impl Published {
    /// The index in `topic` of the event `id`.
    fn index_of(&self, topic: usize, id: &str) -> u64 {
        let seq = seq_of(id);
        self.seqs[topic]
            .binary_search(&seq)
            .unwrap_or_else(|_| panic!("{id} is not an event of topic {topic}")) as u64
    }
}

/// Shared with the fast readers: how many events each has received, and whether to stop.
struct Progress {
    counts: Vec<AtomicU64>,
    abort: AtomicBool,
}

fn run(plan: Plan) {
    let started = Instant::now();
    let args = engine_args(&plan);
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let engine = Engine::start(&args_ref);
    let deadline = started + FLOOD_DEADLINE;

    // Readers: every slow one first (their sockets take the longest to set up), then the
    // fast ones, each in its own thread.
    let mut slow: Vec<(usize, Stream)> = Vec::new();
    for (t, topic) in plan.topics.iter().enumerate() {
        for _ in 0..topic.slow {
            let socket = connect_with_rcvbuf(engine.addr, Some(SLOW_RCVBUF));
            slow.push((t, open(&plan, socket, engine.addr, topic.name)));
        }
    }
    let fast_topics: Vec<usize> = plan
        .topics
        .iter()
        .enumerate()
        .flat_map(|(t, topic)| std::iter::repeat_n(t, topic.fast))
        .collect();
    let progress = Arc::new(Progress {
        counts: fast_topics.iter().map(|_| AtomicU64::new(0)).collect(),
        abort: AtomicBool::new(false),
    });
    let order = schedule(&plan);
    let per_topic: Vec<u64> = (0..plan.topics.len())
        .map(|t| order.iter().filter(|&&x| x == t).count() as u64)
        .collect();
    let fast_threads: Vec<_> = fast_topics
        .iter()
        .enumerate()
        .map(|(n, &t)| {
            let socket = connect_with_rcvbuf(engine.addr, None);
            let stream = open(&plan, socket, engine.addr, plan.topics[t].name);
            let progress = Arc::clone(&progress);
            let (name, expected) = (plan.topics[t].name, per_topic[t]);
            thread::spawn(move || fast_reader(stream, name, expected, n, &progress, deadline))
        })
        .collect();
    settle_subscriptions(&engine, slow.len() + fast_topics.len());

    let setup_secs = started.elapsed().as_secs_f64();
    let baseline_kib = rss_kib(engine.pid);
    let tcp_baseline_kib = tcp_mem_kib();
    let sampler = RssSampler::start(engine.pid, Duration::from_millis(10));
    let flood_started = Instant::now();
    let published = {
        let guard = AbortOnPanic(&progress);
        let published = flood(&plan, &engine, &order, &fast_topics, &progress, deadline);
        std::mem::forget(guard);
        published
    };
    let flood_secs = flood_started.elapsed().as_secs_f64();
    let mut fast_failures = Vec::new();
    for (n, handle) in fast_threads.into_iter().enumerate() {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => fast_failures.push(format!("fast reader {n}: {e}")),
            Err(_) => fast_failures.push(format!("fast reader {n} panicked")),
        }
    }
    // The queues are at their fullest now: nothing has been read from a slow reader.
    thread::sleep(Duration::from_millis(200));
    let peaks = sampler.finish();
    assert!(
        fast_failures.is_empty(),
        "{} of {} fast readers failed: {:#?}\n{}",
        fast_failures.len(),
        fast_topics.len(),
        fast_failures,
        engine.stats()
    );

    let slow_count = slow.len();
    check_memory(&plan, baseline_kib, &peaks, slow_count);
    let drain_started = Instant::now();
    let published = Arc::new(published);
    let seen = drain_slow(&plan, slow, &per_topic, &published, deadline);
    let drain_secs = drain_started.elapsed().as_secs_f64();
    let told = judge_slow(&plan, &seen, &per_topic);
    check_counters(&plan, &engine, &told);
    let kernel_kib = peaks.tcp_kib.saturating_sub(tcp_baseline_kib);
    let received: usize = seen.iter().map(|v| v.indices.len()).sum();
    eprintln!(
        "backpressure {:?}: {} events of {PAYLOAD} B to {} fast + {slow_count} slow readers; \
         setup {setup_secs:.1} s, flood {flood_secs:.1} s ({:.0} events/s), drain {drain_secs:.1} s \
         ({received} events read by the slow readers), whole test {:.1} s; engine RSS {baseline_kib} KiB \
         idle, {} KiB peak ({} samples); kernel TCP memory +{kernel_kib} KiB at peak \
         ({} KiB per slow reader); told {told:?}",
        plan.topics.iter().map(|t| t.name).collect::<Vec<_>>(),
        plan.events,
        fast_topics.len(),
        plan.events as f64 / flood_secs,
        started.elapsed().as_secs_f64(),
        peaks.rss_kib,
        peaks.samples,
        kernel_kib / slow_count.max(1) as u64,
    );
}

/// Tells the fast readers to stop if the flood panics, so their threads end.
struct AbortOnPanic<'a>(&'a Progress);

impl Drop for AbortOnPanic<'_> {
    fn drop(&mut self) {
        self.0.abort.store(true, Ordering::Relaxed);
    }
}

fn open(plan: &Plan, socket: std::net::TcpStream, addr: SocketAddr, topic: &str) -> Stream {
    if plan.ws {
        Stream::ws(socket, addr, &[topic])
    } else {
        Stream::sse(socket, addr, &[topic])
    }
}

/// Waits until the engine counts every stream open (SSE `streams` plus `websockets`).
fn settle_subscriptions(engine: &Engine, readers: usize) {
    let deadline = Instant::now() + ringcast_tests::WAIT;
    loop {
        let open = engine.counter("streams") + engine.counter("websockets");
        if open >= readers as u64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{open} of {readers} streams open after {:?}: {}",
            ringcast_tests::WAIT,
            engine.stats()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Publishes the plan's events in pipelined batches, never more than [`WINDOW`] ahead of
/// the slowest fast reader of a topic, and returns their sequence numbers.
fn flood(
    plan: &Plan,
    engine: &Engine,
    order: &[usize],
    fast_topics: &[usize],
    progress: &Progress,
    deadline: Instant,
) -> Published {
    let mut publisher = Publisher::connect(&engine.ingest);
    let mut seqs: Vec<Vec<u64>> = vec![Vec::new(); plan.topics.len()];
    let mut sent = vec![0u64; plan.topics.len()];
    for batch in order.chunks(BATCH) {
        let mut ahead = sent.clone();
        let mut frames = Vec::with_capacity(batch.len() * (PAYLOAD + 40));
        for &t in batch {
            let topic = &plan.topics[t];
            let key = key_of(topic.policy, ahead[t]);
            let options = if topic.policy == Policy::Coalesce {
                format!("key={key}")
            } else {
                String::new()
            };
            frames.extend(pub_frame(
                topic.name,
                &payload(topic.name, ahead[t], &key),
                &options,
            ));
            ahead[t] += 1;
        }
        wait_for_fast_readers(&ahead, fast_topics, progress, deadline, engine);
        publisher.send(&frames);
        for &t in batch {
            seqs[t].push(seq_of(&ok_id(&publisher.reply())));
        }
        sent = ahead;
    }
    Published { seqs }
}

/// Blocks until every fast reader of a topic is within [`WINDOW`] events of `ahead`.
fn wait_for_fast_readers(
    ahead: &[u64],
    fast_topics: &[usize],
    progress: &Progress,
    deadline: Instant,
    engine: &Engine,
) {
    let mut last_move = Instant::now();
    let mut last_total = u64::MAX;
    loop {
        let counts: Vec<u64> = progress
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let behind = fast_topics
            .iter()
            .zip(&counts)
            .find(|&(&t, &got)| ahead[t] > got + WINDOW);
        let Some((&t, &got)) = behind else {
            return;
        };
        let total: u64 = counts.iter().sum();
        if total != last_total {
            (last_total, last_move) = (total, Instant::now());
        }
        assert!(
            last_move.elapsed() < ringcast_tests::WAIT && Instant::now() < deadline,
            "fast readers stopped: one of topic {t} holds {got} of {} events, no progress for {:?}; {}",
            ahead[t],
            last_move.elapsed(),
            engine.stats()
        );
        thread::sleep(Duration::from_micros(200));
    }
}

/// Reads `expected` events of `topic`, which must come in order with no notice at all.
fn fast_reader(
    mut stream: Stream,
    topic: &str,
    expected: u64,
    n: usize,
    progress: &Progress,
    deadline: Instant,
) -> Result<(), String> {
    let mut items = Vec::new();
    let mut got = 0u64;
    while got < expected {
        if progress.abort.load(Ordering::Relaxed) {
            return Err(format!("aborted after {got} of {expected} events"));
        }
        if Instant::now() >= deadline {
            return Err(format!("deadline passed after {got} of {expected} events"));
        }
        let until = deadline.min(Instant::now() + Duration::from_millis(200));
        match stream.read_items(until, &mut items) {
            Ok(()) | Err(End::TimedOut) => {}
            Err(End::Closed) => return Err(format!("stream closed after {got} of {expected} events")),
        }
        for item in items.drain(..) {
            let Item::Event { data, .. } = &item else {
                return Err(format!("after {got} events, a notice: {item:?}"));
            };
            let (t, index, _) = parse_payload(data);
            if t != topic || index != got {
                return Err(format!(
                    "expected event {got} of {topic}, got event {index} of {t}"
                ));
            }
            got += 1;
        }
        progress.counts[n].store(got, Ordering::Relaxed);
    }
    Ok(())
}

/// The engine's resident memory must stay under its idle baseline, plus the slow
/// readers' caps, plus what the ring and histories retain.
fn check_memory(plan: &Plan, baseline_kib: u64, peaks: &Peaks, slow: usize) {
    let per_client = QUEUE_BYTES + CLIENT_OVERHEAD;
    let history = plan.topics.len() as u64 * HISTORY_BYTES;
    let bound_kib = baseline_kib + (slow as u64 * per_client + history + RSS_SLACK) / 1024;
    assert!(
        peaks.rss_kib <= bound_kib,
        "engine VmRSS peaked at {} KiB over {} samples, above the bound {bound_kib} KiB = \
         idle baseline {baseline_kib} KiB + {slow} slow readers x ({QUEUE_BYTES} queue bytes + \
         {CLIENT_OVERHEAD} overhead) + {} topics' history x {HISTORY_BYTES} bytes + \
         {RSS_SLACK} bytes slack",
        peaks.rss_kib,
        peaks.samples,
        plan.topics.len()
    );
}

/// Reads every slow reader to its end: until its events and gap counts account for all
/// of its topic (drop-oldest, drop-newest), it holds the last value of every key
/// (coalesce), or the engine closes it (disconnect). Then checks, once for all, that
/// nothing more arrives.
fn drain_slow(
    plan: &Plan,
    slow: Vec<(usize, Stream)>,
    per_topic: &[u64],
    published: &Arc<Published>,
    deadline: Instant,
) -> Vec<View> {
    const THREADS: usize = 4;
    let mut shares: Vec<Vec<(usize, Stream)>> = (0..THREADS).map(|_| Vec::new()).collect();
    for (i, reader) in slow.into_iter().enumerate() {
        shares[i % THREADS].push(reader);
    }
    let handles: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let (plan, per_topic, published) = (*plan, per_topic.to_vec(), Arc::clone(published));
            thread::spawn(move || {
                share
                    .into_iter()
                    .map(|(t, mut stream)| {
                        let view = read_to_end(&plan, t, &mut stream, per_topic[t], &published, deadline);
                        (stream, view)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let drained: Vec<(Stream, View)> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("a drain thread panicked"))
        .collect();
    thread::sleep(QUIET);
    drained
        .into_iter()
        .map(|(mut stream, mut view)| {
            let name = plan.topics[view.topic].name;
            for item in stream.read_until_quiet(Duration::from_millis(1), Instant::now() + QUIET) {
                view.push(item, name, published);
            }
            view.ended = stream.ended();
            view
        })
        .collect()
}

/// Reads one slow reader until what it got is complete for its policy.
fn read_to_end(
    plan: &Plan,
    t: usize,
    stream: &mut Stream,
    p: u64,
    published: &Published,
    deadline: Instant,
) -> View {
    let topic = plan.topics[t];
    let mut view = View::new(t);
    let mut items = Vec::new();
    loop {
        for item in items.drain(..) {
            view.push(item, topic.name, published);
        }
        view.ended = stream.ended();
        let done = match topic.policy {
            Policy::DropOldest | Policy::DropNewest => view.indices.len() as u64 + view.dropped() >= p,
            Policy::Coalesce => view.latest_per_key() == last_per_key(p),
            Policy::Disconnect => view.ended,
        };
        if done {
            return view;
        }
        match stream.read_items(deadline, &mut items) {
            Ok(()) => {}
            Err(End::TimedOut) => panic!(
                "a slow reader is incomplete at the deadline: {}",
                view.describe(&topic)
            ),
            Err(End::Closed) => return view,
        }
    }
}

/// What the slow readers were told, summed, for the counters.
#[derive(Debug, Default)]
struct Told {
    dropped: u64,
    coalesced: u64,
    disconnected: u64,
}

/// Checks each slow reader's stream against its policy.
fn judge_slow(plan: &Plan, seen: &[View], per_topic: &[u64]) -> Told {
    let mut told = Told::default();
    for (n, view) in seen.iter().enumerate() {
        let topic = plan.topics[view.topic];
        let p = per_topic[view.topic];
        let what = format!("slow reader {n}: {}", view.describe(&topic));
        match topic.policy {
            Policy::DropOldest => told.dropped += judge_drop_oldest(view, p, &what),
            Policy::DropNewest => told.dropped += judge_drop_newest(view, p, &what),
            Policy::Coalesce => told.coalesced += judge_coalesce(view, p, &what),
            Policy::Disconnect => {
                judge_disconnect(view, topic.name, &what);
                told.disconnected += 1;
            }
        }
    }
    told
}

/// The last thing a stream delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Last {
    Event,
    Gap,
    /// Another notice: its name and data.
    Notice(String, String),
    /// A WebSocket close frame.
    Close(Option<u16>),
}

/// A slow reader's stream, reduced as it arrives to what the checks need (a reader
/// may get megabytes; their payloads are not kept).
struct View {
    topic: usize,
    /// Index (within the topic) of each event received, in order.
    indices: Vec<u64>,
    /// Sequence numbers of the events received, in order.
    seqs: Vec<u64>,
    /// Key number of each event received (`k3` is 3), for the coalesced topic.
    keys: Vec<u8>,
    /// Each gap notice: how many events had arrived before it, how many it counts, and
    /// its first and last ids as topic indices.
    gaps: Vec<(usize, u64, u64, u64)>,
    /// Other notices and close frames.
    notices: Vec<String>,
    last: Option<Last>,
    ended: bool,
}

impl View {
    fn new(topic: usize) -> View {
        View {
            topic,
            indices: Vec::new(),
            seqs: Vec::new(),
            keys: Vec::new(),
            gaps: Vec::new(),
            notices: Vec::new(),
            last: None,
            ended: false,
        }
    }

    /// Adds one item of the stream of topic `name`, checking the event is the one the
    /// publisher sent under that id and a gap notice names events of this topic.
    fn push(&mut self, item: Item, name: &str, published: &Published) {
        match item {
            Item::Event { id, data } => {
                let (t, index, key) = parse_payload(&data);
                assert_eq!(t, name, "a reader of {name} got an event of {t}");
                let seq = seq_of(&id);
                assert_eq!(
                    Some(&seq),
                    published.seqs[self.topic].get(index as usize),
                    "event {index} of {name} arrived with id {id}"
                );
                self.indices.push(index);
                self.seqs.push(seq);
                self.keys.push(
                    key.strip_prefix('k')
                        .and_then(|k| k.parse().ok())
                        .unwrap_or(u8::MAX),
                );
                self.last = Some(Last::Event);
            }
            Item::Notice { name: notice, data } if notice == "ringcast.gap" => {
                let gap = Gap::parse(&data);
                assert_eq!(gap.topic.as_deref(), Some(name), "gap notice {data}");
                let dropped = gap.dropped.unwrap_or_else(|| panic!("uncounted gap {data}"));
                let first = published.index_of(self.topic, &gap.first_id);
                let last = published.index_of(self.topic, &gap.last_id);
                assert!(
                    first <= last && dropped >= 1 && dropped <= last - first + 1,
                    "gap notice {data} counts {dropped} events in indices {first}..={last}"
                );
                self.gaps.push((self.indices.len(), dropped, first, last));
                self.last = Some(Last::Gap);
            }
            Item::Notice { name, data } => {
                self.notices.push(format!("{name} {data}"));
                self.last = Some(Last::Notice(name, data));
            }
            Item::Close(code) => {
                self.notices.push(format!("close {code:?}"));
                self.last = Some(Last::Close(code));
            }
        }
    }

    /// The largest index received per key.
    fn latest_per_key(&self) -> BTreeMap<u8, u64> {
        let mut latest = BTreeMap::new();
        for (&key, &index) in self.keys.iter().zip(&self.indices) {
            let slot = latest.entry(key).or_default();
            *slot = index.max(*slot);
        }
        latest
    }

    /// A summary for failure messages.
    fn describe(&self, topic: &TopicPlan) -> String {
        let first: Vec<u64> = self.indices.iter().take(3).copied().collect();
        let last: Vec<u64> = self.indices[self.indices.len().saturating_sub(3)..].to_vec();
        format!(
            "{:?} on {}: {} events (first {first:?}, last {last:?}), gaps (after, dropped, first, last) \
             {:?}, notices {:?}, last {:?}, ended {}",
            topic.policy,
            topic.name,
            self.indices.len(),
            self.gaps,
            self.notices,
            self.last,
            self.ended
        )
    }

    fn dropped(&self) -> u64 {
        self.gaps.iter().map(|g| g.1).sum()
    }

    /// Every index received is new, and none lies in the range of a gap told.
    fn check_disjoint(&self, what: &str) {
        let mut sorted = self.indices.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), self.indices.len(), "an event came twice: {what}");
        for &(_, _, first, last) in &self.gaps {
            assert!(
                !self.indices.iter().any(|i| (first..=last).contains(i)),
                "an event inside gap {first}..={last} was delivered: {what}"
            );
        }
    }
}

/// Drop-oldest: ids increase, the stream ends with the newest events (every event after
/// the last gap's range, up to the last published), and events + dropped = published.
///
/// A notice may come before events older than the gap it tells: those were in the
/// kernel's hands (a send in flight) when the drops happened, and the engine puts the
/// notice ahead of everything not yet sent.
fn judge_drop_oldest(view: &View, p: u64, what: &str) -> u64 {
    assert!(view.notices.is_empty(), "{what}");
    assert!(
        !view.gaps.is_empty(),
        "a reader that read nothing missed nothing: {what}"
    );
    assert!(
        view.seqs.windows(2).all(|w| w[0] < w[1]),
        "ids out of order: {what}"
    );
    view.check_disjoint(what);
    assert_eq!(
        view.indices.len() as u64 + view.dropped(),
        p,
        "events + dropped != published: {what}"
    );
    let last_gap = view.gaps.iter().map(|g| g.3).max().expect("checked");
    let newest: Vec<u64> = view.indices.iter().copied().filter(|&i| i > last_gap).collect();
    let expected: Vec<u64> = (last_gap + 1..p).collect();
    assert_eq!(
        newest, expected,
        "after the last gap, not the newest events: {what}"
    );
    // The queue held the newest events that fit: at least the limit's worth, less what
    // was in flight and one event of rounding. In flight is one send: a loop turn's run
    // (at most half the queue's bytes) and up to 64 entries more. An encoded event is
    // the payload plus at most 128 bytes of id and framing.
    let encoded = PAYLOAD as u64 + 128;
    assert!(
        newest.len() as u64 >= (QUEUE_BYTES / 2 / encoded).saturating_sub(64 + 1),
        "only {} newest events kept: {what}",
        newest.len()
    );
    view.dropped()
}

/// Drop-newest: the stream holds the oldest events, 0..K, and its gaps count exactly
/// the rest, K..P.
fn judge_drop_newest(view: &View, p: u64, what: &str) -> u64 {
    assert!(view.notices.is_empty(), "{what}");
    assert!(
        !view.gaps.is_empty(),
        "a reader that read nothing missed nothing: {what}"
    );
    view.check_disjoint(what);
    let k = view.indices.len() as u64;
    assert_eq!(
        view.indices,
        (0..k).collect::<Vec<_>>(),
        "not the oldest events: {what}"
    );
    assert_eq!(k + view.dropped(), p, "events + dropped != published: {what}");
    let first = view.gaps.iter().map(|g| g.2).min().expect("a gap");
    let last = view.gaps.iter().map(|g| g.3).max().expect("a gap");
    assert_eq!((first, last), (k, p - 1), "the gaps do not name the rest: {what}");
    view.dropped()
}

/// Coalesce: no gap, and the last value received for each key is the last published;
/// returns how many of the topic's events were coalesced away for this reader.
fn judge_coalesce(view: &View, p: u64, what: &str) -> u64 {
    assert!(view.notices.is_empty() && view.gaps.is_empty(), "{what}");
    view.check_disjoint(what);
    assert_eq!(
        view.latest_per_key(),
        last_per_key(p),
        "not the latest value of every key: {what}"
    );
    assert!(view.indices.len() as u64 <= p);
    p - view.indices.len() as u64
}

/// Disconnect: the oldest events in order, then `ringcast.slow` (SSE) or close 1008
/// (WebSocket), then the end; no gap.
fn judge_disconnect(view: &View, topic: &str, what: &str) {
    assert!(view.gaps.is_empty(), "{what}");
    let k = view.indices.len() as u64;
    assert_eq!(
        view.indices,
        (0..k).collect::<Vec<_>>(),
        "not the oldest events: {what}"
    );
    assert!(view.ended, "a disconnect reader's stream did not end: {what}");
    match &view.last {
        Some(Last::Notice(name, data)) if name == "ringcast.slow" => {
            assert!(data.contains(&format!("\"topic\":\"{topic}\"")), "{data}: {what}");
        }
        Some(Last::Close(Some(1008))) => {}
        last => panic!("the stream does not end with ringcast.slow (or close 1008): {last:?}; {what}"),
    }
    assert_eq!(view.notices.len(), 1, "{what}");
}

/// The counters equal what the readers were told (the fast readers were told nothing).
fn check_counters(plan: &Plan, engine: &Engine, told: &Told) {
    let stats = engine.stats();
    let expected_disconnects: usize = plan
        .topics
        .iter()
        .filter(|t| t.policy == Policy::Disconnect)
        .map(|t| t.slow)
        .sum();
    assert_eq!(told.disconnected, expected_disconnects as u64);
    let got = (
        engine.counter("dropped"),
        engine.counter("coalesced"),
        engine.counter("slow_disconnected"),
        engine.counter("slow_closed"),
        engine.counter("ring_lost"),
    );
    assert_eq!(
        got,
        (told.dropped, told.coalesced, told.disconnected, 0, 0),
        "(dropped, coalesced, slow_disconnected, slow_closed, ring_lost) against what the \
         readers saw; {stats}"
    );
}

/// Publishes `count` events made by `frame` in pipelined batches of [`BATCH`], and
/// returns their sequence numbers.
fn publish_pipelined(engine: &Engine, count: u64, frame: impl Fn(u64) -> Vec<u8>) -> Vec<u64> {
    let mut publisher = Publisher::connect(&engine.ingest);
    let mut seqs = Vec::with_capacity(count as usize);
    let mut next = 0;
    while next < count {
        let end = count.min(next + BATCH as u64);
        let frames: Vec<u8> = (next..end).flat_map(&frame).collect();
        publisher.send(&frames);
        for _ in next..end {
            seqs.push(seq_of(&ok_id(&publisher.reply())));
        }
        next = end;
    }
    seqs
}

/// Engine bug, reported: when every queued event of a client is in the kernel's hands
/// (one send gathers the whole queue) and the next events do not fit, they are refused
/// and recorded as a gap, and the gap is forgotten if that send then completes whole:
/// `on_send` finds the queue empty and returns it to the pool, and `OutQueue::clear`
/// drops the untold gaps. The `dropped` counter counts them; the client is never told.
/// With the default limits this happens to any event over half of `--queue-bytes`
/// (the queue holds one such event, which is always in flight).
#[test]
fn a_gap_behind_a_send_in_flight_is_told() {
    const BIG: usize = 128 * 1024;
    const EVENTS: u64 = 300;
    let engine = Engine::start(&["--loops", "1", "--write-stall-ms", "600000"]);
    let socket = connect_with_rcvbuf(engine.addr, Some(SLOW_RCVBUF));
    let mut stream = Stream::sse(socket, engine.addr, &["big.t"]);
    settle_subscriptions(&engine, 1);
    publish_pipelined(&engine, EVENTS, |i| {
        let mut data = format!("big.t {i} ").into_bytes();
        data.resize(BIG, b'.');
        pub_frame("big.t", &data, "")
    });
    let items = stream.read_until_quiet(QUIET, Instant::now() + FLOOD_DEADLINE);
    let events = items.iter().filter(|i| matches!(i, Item::Event { .. })).count() as u64;
    let told: u64 = items
        .iter()
        .filter_map(|item| match item {
            Item::Notice { name, data } if name == "ringcast.gap" => Gap::parse(data).dropped,
            _ => None,
        })
        .sum();
    let counted = engine.counter("dropped");
    assert_eq!(
        (events + told, told),
        (EVENTS, counted),
        "{EVENTS} events of {BIG} bytes published to a reader that read nothing until the \
         end: it got {events} events and gap notices counting {told}, while the engine \
         counted {counted} dropped"
    );
}

/// Engine bug, reported: coalescing replaces a queued event in place, so the newer event
/// takes the older one's place in the queue, ahead of events older than itself: a
/// client receives ids out of order. After `... 3999, 3982 ...` its Last-Event-ID is
/// 3982; had it dropped between the two, it would resume after 3999 and never receive
/// 3982, the latest value of its key.
#[test]
fn coalesced_events_keep_their_id_order() {
    const EVENTS: u64 = 6000;
    let engine = Engine::start(&[
        "--loops",
        "1",
        "--policy",
        "px=coalesce",
        "--write-stall-ms",
        "600000",
    ]);
    let socket = connect_with_rcvbuf(engine.addr, Some(SLOW_RCVBUF));
    let mut stream = Stream::sse(socket, engine.addr, &["px"]);
    settle_subscriptions(&engine, 1);
    publish_pipelined(&engine, EVENTS, |i| {
        let key = key_of(Policy::Coalesce, i);
        pub_frame("px", &payload("px", i, &key), &format!("key={key}"))
    });
    let items = stream.read_until_quiet(QUIET, Instant::now() + FLOOD_DEADLINE);
    let seqs: Vec<u64> = items
        .iter()
        .filter_map(|item| match item {
            Item::Event { id, .. } => Some(seq_of(id)),
            _ => None,
        })
        .collect();
    let backwards: Vec<(u64, u64)> = seqs
        .windows(2)
        .filter(|w| w[0] > w[1])
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(
        backwards.is_empty(),
        "of {} events received, {} came after a newer one, e.g. (newer, older) {:?}",
        seqs.len(),
        backwards.len(),
        &backwards[..backwards.len().min(8)]
    );
}
