//! Resumes far larger than a client's queue: the engine replays a page at a time (half
//! the queue's limits), so a resuming client never holds more than a page, and still
//! gets every missed event once, in order, followed by the live events published while
//! it caught up, with no duplicate at the seam. Polls page through the same range with
//! their `next` cursor.
use std::time::Duration;

use ringcast_tests::engine::Engine;
use ringcast_tests::ingest::Publisher;
use ringcast_tests::json::parse_flat_object;
use ringcast_tests::poll::poll;
use ringcast_tests::sse::SseClient;
use ringcast_tests::wsclient::{opcode, RawWs};

/// A queue of 16 events: pages of 8, while the history keeps 5,000 events per topic.
const SMALL_QUEUE: &[&str] = &[
    "--queue-events",
    "16",
    "--history-events",
    "5000",
    "--history-bytes",
    "10000000",
];

/// Publishes `n` events round-robin over `topics`; returns (id, topic, data) of each.
fn publish(p: &mut Publisher, topics: &[&str], from: usize, n: usize) -> Vec<(String, String, String)> {
    (from..from + n)
        .map(|i| {
            let topic = topics[i % topics.len()];
            let data = format!("{topic}-{i}");
            (p.publish(topic, data.as_bytes()), topic.to_owned(), data)
        })
        .collect()
}

/// Publishes `n` live events from another thread while the caller reads, paced
/// (a burst larger than the 16-event queue would meet its policy, which is not what is
/// tested here); returns the ids once all are acknowledged.
fn publish_live(
    ingest: &std::path::Path,
    topics: &'static [&'static str],
    from: usize,
    n: usize,
) -> std::thread::JoinHandle<Vec<(String, String, String)>> {
    let ingest = ingest.to_owned();
    std::thread::spawn(move || {
        let mut p = Publisher::connect(&ingest);
        let mut out = Vec::new();
        // One every 5 ms: a reader descheduled for up to 80 ms still keeps up with its
        // 16-event queue on a loaded machine.
        for i in from..from + n {
            out.extend(publish(&mut p, topics, i, 1));
            std::thread::sleep(Duration::from_millis(5));
        }
        out
    })
}

fn ids_of(events: &[(String, String, String)], topics: &[&str]) -> Vec<String> {
    events
        .iter()
        .filter(|(_, t, _)| topics.contains(&t.as_str()))
        .map(|(id, _, _)| id.clone())
        .collect()
}

#[test]
fn an_sse_resume_of_thousands_of_events_arrives_whole_then_goes_live() {
    let engine = Engine::start(SMALL_QUEUE);
    let mut p = Publisher::connect(&engine.ingest);
    let all = publish(&mut p, &["a", "b", "c"], 0, 3000);
    let from = all[0].0.clone();
    let mut sub = SseClient::subscribe_with(engine.addr, &["a", "b"], &[("Last-Event-ID", &from)]);
    // Live events published while the replay is under way.
    let live = publish_live(&engine.ingest, &["a", "b", "c"], 3000, 300);
    let missed = ids_of(&all[1..], &["a", "b"]);
    let got = sub.events_until(missed.len() + 200, Duration::from_secs(30));
    let live = live.join().expect("publisher");
    let want: Vec<String> = missed.into_iter().chain(ids_of(&live, &["a", "b"])).collect();
    let got_ids: Vec<String> = got.iter().map(|e| e.id.clone()).collect();
    assert!(
        got.iter().all(|e| e.event == "message"),
        "no reset or gap: {:?}",
        got.iter().find(|e| e.event != "message")
    );
    assert_eq!(got_ids.len(), want.len());
    assert_eq!(
        got_ids, want,
        "every missed event, then the live ones, once, in order"
    );
    assert!(
        sub.next_event(Duration::from_millis(300)).is_err(),
        "nothing more"
    );
    let replayed = engine.counter("replayed");
    assert!(
        replayed >= 1999,
        "replayed {replayed}: every missed event came from the history"
    );
}

#[test]
fn a_websocket_resume_of_thousands_of_events_arrives_whole_then_goes_live() {
    let engine = Engine::start(SMALL_QUEUE);
    let mut p = Publisher::connect(&engine.ingest);
    let all = publish(&mut p, &["a", "b"], 0, 2000);
    let target = format!("/ws?topic=a&topic=b&last_event_id={}", all[0].0);
    let mut ws = RawWs::connect(engine.addr, &target, &[]);
    let live = publish_live(&engine.ingest, &["a", "b"], 2000, 200);
    let missed = ids_of(&all[1..], &["a", "b"]);
    let total = missed.len() + 200;
    let mut got = Vec::new();
    while got.len() < total {
        let frame = ws
            .next_frame(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("after {} of {total} events: {e:?}", got.len()));
        assert_eq!(frame.opcode, opcode::TEXT);
        let text = frame.text();
        let json = parse_flat_object(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(!json.contains_key("event") || json["event"].is_none(), "{text}");
        got.push(json["id"].clone().expect("an id"));
    }
    let live = live.join().expect("publisher");
    let want: Vec<String> = missed.into_iter().chain(ids_of(&live, &["a", "b"])).collect();
    assert_eq!(got, want);
}

#[test]
fn slow_resumers_hold_at_most_a_page_each() {
    // Default queue limits (pages of 512 events or 128 KiB); a history of 20 MB.
    let engine = Engine::start(&["--history-bytes", "67108864", "--history-events", "100000"]);
    let mut p = Publisher::connect(&engine.ingest);
    let payload = "x".repeat(1000);
    let first = p.publish("big", payload.as_bytes());
    for _ in 0..20_000 {
        p.publish("big", payload.as_bytes());
    }
    // Fifty clients resume from the start and read nothing.
    let resumers: Vec<_> = (0..50)
        .map(|_| {
            let mut conn = std::net::TcpStream::connect(engine.addr).expect("connect");
            let req = format!("GET /sse?topic=big HTTP/1.1\r\nHost: t\r\nLast-Event-ID: {first}\r\n\r\n");
            std::io::Write::write_all(&mut conn, req.as_bytes()).expect("request");
            conn
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let queued = engine.counter("queued_bytes");
    eprintln!("50 resumers of a 20 MB range: {queued} bytes queued");
    // A page is 128 KiB of events; each entry carries its SSE framing too.
    assert!(
        queued <= 50 * 200 * 1024,
        "{queued} bytes queued for 50 resumers that read nothing"
    );
    drop(resumers);
}

#[test]
fn polls_page_through_a_long_backlog_with_next() {
    let engine = Engine::start(SMALL_QUEUE);
    let mut p = Publisher::connect(&engine.ingest);
    let all = publish(&mut p, &["a"], 0, 100);
    let mut after = all[0].0.clone();
    let mut got = Vec::new();
    for _ in 0..100 {
        let answer = poll(engine.addr, &format!("topic=a&after={after}&wait=0"));
        assert!(answer.reset.is_none(), "{}", answer.body);
        assert!(answer.events.len() <= 8, "a page is 8 events: {}", answer.body);
        if answer.events.is_empty() {
            break;
        }
        got.extend(answer.events.iter().map(|e| e.id.clone()));
        after = answer.next.clone();
    }
    assert_eq!(got, ids_of(&all[1..], &["a"]));
}
