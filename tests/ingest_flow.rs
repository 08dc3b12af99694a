//! Ingest flow control (`--ingest-flow`): a publisher pipelining far more publishes than
//! the broadcast ring holds, against subscribers that read everything. With `lag` the
//! acknowledgements wait for the loops and every subscriber gets every event in order,
//! with no gap notice, while a subscriber that never reads does not slow the publisher;
//! with `accept` (the default) the same publisher laps the ring and the subscribers are
//! told of the loss, as before.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use ringcast_tests::engine::Engine;
use ringcast_tests::ingest::{ok_id, pub_frame};
use ringcast_tests::sse::SseClient;
use ringcast_tests::WAIT;

const EVENTS: usize = 20_000;
const TOPIC: &str = "flow";

/// What one subscriber that keeps up saw.
struct Seen {
    events: usize,
    gaps: usize,
}

/// Reads until the last event's payload arrives, checking that payloads come in order
/// (a loss skips some, never reorders), and counts gap notices.
fn read_all(mut sub: SseClient, deadline: Instant) -> Seen {
    let (mut events, mut gaps, mut next) = (0, 0, 0usize);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = sub
            .next_event(left)
            .unwrap_or_else(|end| panic!("subscriber stopped after {events} events, {gaps} gaps: {end:?}"));
        if event.event == "ringcast.gap" {
            gaps += 1;
            continue;
        }
        let i: usize = event
            .data
            .strip_prefix("event ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected event {event:?}"));
        assert!(i >= next, "event {i} after event {}", next - 1);
        next = i + 1;
        events += 1;
        if i == EVENTS - 1 {
            return Seen { events, gaps };
        }
    }
}

/// Runs the scenario with `--ingest-flow mode`: the subscribers' figures, the publish's
/// acknowledgement count, and the engine's counters.
fn run(mode: &str) -> (Vec<Seen>, usize, String) {
    // A 256-slot ring and 8 events of history per topic: a loop lapped on the ring cannot
    // be refilled, so any lap shows as a gap notice. Three loops and two readers: at
    // least one loop has no subscriber, and must not hold publishing up.
    let engine = Engine::start(&[
        "--ingest-flow",
        mode,
        "--ring-slots",
        "256",
        "--history-events",
        "8",
        "--loops",
        "3",
    ]);
    let readers: Vec<SseClient> = (0..2)
        .map(|_| SseClient::subscribe(engine.addr, &[TOPIC]))
        .collect();
    // Connected and never read: its queue fills and its own policy applies to it.
    let _stalled = SseClient::subscribe(engine.addr, &[TOPIC]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let readers: Vec<_> = readers
        .into_iter()
        .map(|sub| thread::spawn(move || read_all(sub, deadline)))
        .collect();

    let stream = UnixStream::connect(&engine.ingest).expect("connect the ingest socket");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    let mut writer = stream.try_clone().expect("clone the ingest socket");
    let sender = thread::spawn(move || {
        let burst: Vec<u8> = (0..EVENTS)
            .flat_map(|i| pub_frame(TOPIC, format!("event {i}").as_bytes(), ""))
            .collect();
        writer
            .set_write_timeout(Some(Duration::from_secs(60)))
            .expect("write timeout");
        writer.write_all(&burst).expect("write the publishes");
    });
    let mut replies = BufReader::new(stream);
    let mut acked = 0;
    for i in 0..EVENTS {
        let mut line = String::new();
        replies
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("reply {i} of {EVENTS}: {e}"));
        ok_id(line.trim_end());
        acked += 1;
    }
    sender.join().expect("sender");
    let seen = readers.into_iter().map(|r| r.join().expect("reader")).collect();
    (seen, acked, engine.stats())
}

#[test]
fn with_lag_flow_control_subscribers_that_keep_up_lose_nothing() {
    let (seen, acked, stats) = run("lag");
    assert_eq!(acked, EVENTS);
    for (n, s) in seen.iter().enumerate() {
        assert_eq!(s.gaps, 0, "subscriber {n} was told of a gap: {stats}");
        assert_eq!(s.events, EVENTS, "subscriber {n}: {stats}");
    }
}

#[test]
fn with_accept_the_same_publisher_laps_the_ring_and_subscribers_are_told() {
    let (seen, acked, stats) = run("accept");
    assert_eq!(acked, EVENTS, "every publish is acknowledged at once");
    let gaps: usize = seen.iter().map(|s| s.gaps).sum();
    let events: usize = seen.iter().map(|s| s.events).sum();
    assert!(
        gaps > 0 && events < 2 * EVENTS,
        "the publisher did not lap the ring ({gaps} gaps, {events} events): {stats}"
    );
}
