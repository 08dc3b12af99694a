//! The transports besides SSE, driven by real clients against the real binary:
//! long-polling and plain polling on `/poll` (held until an event or `wait`, backlog at
//! once, `next` as the cursor, resets, the `--poll-wait-max-ms` cap, keep-alive), NDJSON
//! on `/stream` read by `curl -sN` (fields, resume with `last_event_id`, heartbeat lines),
//! and one event id carried from SSE to WebSocket (Python `websockets`), `/poll` and
//! `/stream`, each of which must give exactly the events missed.
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ringcast_tests::engine::Engine;
use ringcast_tests::http::End;
use ringcast_tests::ingest::Publisher;
use ringcast_tests::poll::{
    curl_stream, parse_json, poll, python_ws, read_curl_head, Json, LineChild, PollAnswer, PollClient, Reset,
    WireEvent,
};
use ringcast_tests::sse::SseClient;
use ringcast_tests::{epoch_of, seq_of, QUIET, WAIT};

/// Longest an answer that is due at once may take (a loaded machine included).
const AT_ONCE: Duration = Duration::from_millis(500);

/// Waits until the engine-wide gauge `name` reads `value`.
fn await_gauge(engine: &Engine, name: &str, value: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = engine.counter(name);
        if now == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} still {now}, not {value}, after {WAIT:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Publishes `data` on `topic` (with `options` such as `event=NAME`) and returns the
/// event a JSON transport should carry for it.
fn publish(p: &mut Publisher, topic: &str, data: &str, options: &str) -> WireEvent {
    let id = p.publish_with(topic, data.as_bytes(), options);
    let event = options.split(' ').find_map(|o| o.strip_prefix("event="));
    WireEvent::new(&id, topic, event, data)
}

/// The current cursor of `topic`: a plain poll without `after`.
fn cursor(engine: &Engine, topic: &str) -> String {
    let answer = poll(engine.addr, &format!("topic={topic}&wait=0"));
    assert!(
        answer.events.is_empty(),
        "a poll without after returned events: {}",
        answer.body
    );
    assert!(
        answer.reset.is_none(),
        "a poll without after reset: {}",
        answer.body
    );
    assert_eq!(epoch_of(&answer.next), engine.epoch, "{}", answer.body);
    answer.next
}

fn assert_at_once(answer: &PollAnswer, what: &str) {
    assert!(
        answer.elapsed < AT_ONCE,
        "{what}: answered after {:?}, not at once: {}",
        answer.elapsed,
        answer.body
    );
}

fn assert_reset(answer: &PollAnswer, reason: &str, last_event_id: &str, oldest_id: Option<&str>) {
    let expected = Reset {
        reason: reason.to_owned(),
        last_event_id: last_event_id.to_owned(),
        oldest_id: oldest_id.map(str::to_owned),
    };
    assert_eq!(answer.reset.as_ref(), Some(&expected), "{}", answer.body);
}

// ----- long-polling ----------------------------------------------------------------------

#[test]
fn long_poll_is_held_until_an_event_of_its_topic_then_answers_with_it() {
    let engine = Engine::start(&[]);
    let mut p = Publisher::connect(&engine.ingest);
    let after = cursor(&engine, "held");
    let (tx, rx) = mpsc::channel();
    let addr = engine.addr;
    let query = format!("topic=held&after={after}&wait=10");
    thread::spawn(move || {
        let answer = PollClient::connect(addr).poll_with(&query, &[], WAIT);
        let _ = tx.send((answer, Instant::now()));
    });
    await_gauge(&engine, "polls_held", 1);
    // An event of another topic must not release it.
    publish(&mut p, "held-not", "elsewhere", "");
    if let Ok((answer, _)) = rx.recv_timeout(QUIET) {
        panic!(
            "a held poll answered with nothing of its topic published: {}",
            answer.body
        );
    }

    let published_at = Instant::now();
    let event = publish(&mut p, "held", "hello", "event=greeting");
    let (answer, answered_at) = rx.recv_timeout(WAIT).expect("the held poll answers the publish");
    assert!(
        answer.elapsed >= Duration::from_millis(250),
        "held only {:?}",
        answer.elapsed
    );
    let lag = answered_at.duration_since(published_at);
    assert!(lag < Duration::from_secs(1), "answered {lag:?} after the publish");
    assert_eq!(answer.events, std::slice::from_ref(&event), "{}", answer.body);
    assert_eq!(answer.next, event.id);
    assert!(answer.reset.is_none(), "{}", answer.body);
    await_gauge(&engine, "polls_held", 0);
}

#[test]
fn long_poll_with_an_older_cursor_answers_at_once_with_the_backlog_in_order() {
    let engine = Engine::start(&[]);
    let mut p = Publisher::connect(&engine.ingest);
    let start = cursor(&engine, "bk");
    let first = publish(&mut p, "bk", "one", "");
    let other = publish(&mut p, "bk2", "other topic", "");
    let second = publish(&mut p, "bk", "two", "event=second");
    publish(&mut p, "bk-noise", "not asked for", "");
    // Escapes and non-ASCII survive the JSON encoding.
    let third = publish(
        &mut p,
        "bk",
        "three \"quoted\" \\ back\nline\ttab \u{1} é ✓ 🎉",
        "",
    );

    // No `wait`: the default is 25 s, so only a backlog answer comes this fast.
    let answer = poll(engine.addr, &format!("topic=bk&after={}", first.id));
    assert_at_once(&answer, "backlog");
    assert_eq!(answer.events, [second.clone(), third.clone()], "{}", answer.body);
    assert_eq!(answer.next, third.id);
    assert!(answer.reset.is_none(), "{}", answer.body);

    // Two topics: their events merged in id order.
    let answer = poll(engine.addr, &format!("topic=bk&topic=bk2&after={start}"));
    assert_at_once(&answer, "two-topic backlog");
    assert_eq!(
        answer.events,
        [first, other, second, third.clone()],
        "{}",
        answer.body
    );
    assert_eq!(answer.next, third.id);
}

#[test]
fn long_poll_times_out_empty_after_its_wait_with_a_usable_cursor() {
    let engine = Engine::start(&[]);
    let mut p = Publisher::connect(&engine.ingest);
    let after = cursor(&engine, "quiet");
    publish(&mut p, "quiet-not", "elsewhere", "");
    let answer = poll(engine.addr, &format!("topic=quiet&after={after}&wait=1"));
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2000)).contains(&answer.elapsed),
        "wait=1 answered after {:?}: {}",
        answer.elapsed,
        answer.body
    );
    assert!(answer.events.is_empty(), "{}", answer.body);
    assert!(answer.reset.is_none(), "{}", answer.body);
    assert_eq!(epoch_of(&answer.next), engine.epoch);

    let event = publish(&mut p, "quiet", "after the timeout", "");
    let answer = poll(engine.addr, &format!("topic=quiet&after={}&wait=0", answer.next));
    assert_eq!(answer.events, std::slice::from_ref(&event), "{}", answer.body);
    assert_eq!(answer.next, event.id);
}

/// A small deterministic generator (Knuth's MMIX LCG), so a failing run can be repeated.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Follows `next` from `after` until `want` events arrived or `deadline` passed; with
/// `fresh`, every poll opens a new connection (which may land on another loop).
fn follow(engine: &Engine, after: String, want: usize, fresh: bool, deadline: Instant) -> Vec<WireEvent> {
    let mut client = PollClient::connect(engine.addr);
    let (mut next, mut got) = (after, Vec::new());
    while got.len() < want && Instant::now() < deadline {
        if fresh {
            client = PollClient::connect(engine.addr);
        }
        let answer = client.poll_with(&format!("topic=loop&after={next}&wait=2"), &[], WAIT);
        assert!(
            answer.reset.is_none(),
            "reset while following next: {}",
            answer.body
        );
        if let Some(last) = answer.events.last() {
            assert_eq!(answer.next, last.id, "{}", answer.body);
        }
        got.extend(answer.events);
        next = answer.next;
    }
    // Nothing more may come: the client has all there is.
    let answer = client.poll_with(&format!("topic=loop&after={next}&wait=0"), &[], WAIT);
    got.extend(answer.events);
    got
}

#[test]
fn following_next_across_polls_loses_and_duplicates_nothing() {
    const EVENTS: u64 = 50;
    const SEED: u64 = 0x5eed_0001;
    let engine = Engine::start(&[]);
    let after = cursor(&engine, "loop");
    let deadline = Instant::now() + WAIT;
    let (published, kept, fresh) = thread::scope(|s| {
        let kept = s.spawn(|| follow(&engine, after.clone(), EVENTS as usize, false, deadline));
        let fresh = s.spawn(|| follow(&engine, after.clone(), EVENTS as usize, true, deadline));
        let mut p = Publisher::connect(&engine.ingest);
        let mut rng = Lcg(SEED);
        let mut published = Vec::new();
        for i in 0..EVENTS {
            thread::sleep(Duration::from_millis(rng.below(20)));
            if rng.below(3) == 0 {
                publish(&mut p, "loop-noise", "noise", "");
            }
            published.push(publish(&mut p, "loop", &format!("n{i}"), ""));
        }
        (published, kept.join().unwrap(), fresh.join().unwrap())
    });
    let ids = |events: &[WireEvent]| events.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&kept), ids(&published), "keep-alive client (seed {SEED:#x})");
    assert_eq!(kept, published, "keep-alive client (seed {SEED:#x})");
    assert_eq!(
        ids(&fresh),
        ids(&published),
        "one-connection-per-poll client (seed {SEED:#x})"
    );
    assert_eq!(
        fresh, published,
        "one-connection-per-poll client (seed {SEED:#x})"
    );
}

// ----- resets, caps, plain polling, keep-alive ----------------------------------------------

#[test]
fn poll_resets_a_cursor_of_another_epoch_a_malformed_one_and_an_expired_one() {
    let engine = Engine::start(&["--history-events", "3"]);
    let mut p = Publisher::connect(&engine.ingest);
    let sent: Vec<WireEvent> = (1..=5)
        .map(|i| publish(&mut p, "rs", &format!("r{i}"), ""))
        .collect();
    let retained = &sent[2..];
    let oldest = Some(retained[0].id.as_str());

    let answer = poll(engine.addr, "topic=rs&after=abc-1");
    assert_at_once(&answer, "unknown epoch");
    assert_reset(&answer, "unknown-epoch", "abc-1", oldest);
    assert_eq!(answer.events, retained, "{}", answer.body);
    assert_eq!(answer.next, sent[4].id);

    let answer = poll(engine.addr, "topic=rs&after=not-an-id");
    assert_at_once(&answer, "malformed");
    assert_reset(&answer, "malformed-id", "not-an-id", oldest);
    assert_eq!(answer.events, retained, "{}", answer.body);

    // This epoch, but event 2 (missed by a client at 1) is no longer retained.
    let expired = format!("{}-{}", engine.epoch, seq_of(&sent[0].id));
    let answer = poll(engine.addr, &format!("topic=rs&after={expired}"));
    assert_at_once(&answer, "expired");
    assert_reset(&answer, "expired", &expired, oldest);
    assert_eq!(answer.events, retained, "{}", answer.body);
    assert_eq!(answer.next, sent[4].id);

    // A client at 2 missed only what is retained: no reset.
    let answer = poll(engine.addr, &format!("topic=rs&after={}", sent[1].id));
    assert!(answer.reset.is_none(), "{}", answer.body);
    assert_eq!(answer.events, retained, "{}", answer.body);
}

#[test]
fn poll_wait_is_capped_by_poll_wait_max_ms() {
    let engine = Engine::start(&["--poll-wait-max-ms", "1000"]);
    let after = cursor(&engine, "cap");
    let answer = poll(engine.addr, &format!("topic=cap&after={after}&wait=30"));
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&answer.elapsed),
        "wait=30 under --poll-wait-max-ms 1000 answered after {:?}: {}",
        answer.elapsed,
        answer.body
    );
    assert!(answer.events.is_empty(), "{}", answer.body);
    assert!(answer.reset.is_none(), "{}", answer.body);
}

#[test]
fn plain_poll_with_wait_0_answers_at_once() {
    let engine = Engine::start(&[]);
    let mut p = Publisher::connect(&engine.ingest);
    let answer = poll(engine.addr, "topic=pp&wait=0");
    assert_at_once(&answer, "wait=0 without after");
    assert!(answer.events.is_empty(), "{}", answer.body);

    let event = publish(&mut p, "pp", "plain", "");
    let answer = poll(engine.addr, &format!("topic=pp&after={}&wait=0", answer.next));
    assert_at_once(&answer, "wait=0 with an event");
    assert_eq!(answer.events, std::slice::from_ref(&event), "{}", answer.body);

    let answer = poll(engine.addr, &format!("topic=pp&after={}&wait=0", event.id));
    assert_at_once(&answer, "wait=0, nothing new");
    assert!(answer.events.is_empty(), "{}", answer.body);
    assert!(answer.reset.is_none(), "{}", answer.body);
    let later = publish(&mut p, "pp", "later", "");
    let answer = poll(engine.addr, &format!("topic=pp&after={}&wait=0", answer.next));
    assert_eq!(answer.events, [later], "{}", answer.body);
}

#[test]
fn polls_share_one_keep_alive_connection_held_or_not() {
    let engine = Engine::start(&[]);
    let mut client = PollClient::connect(engine.addr);
    let first = client.poll("topic=ka&wait=0");
    let accepted = engine.counter("accepted");
    assert!(!first.response.closes(), "{:?}", first.response);
    assert_eq!(first.response.version, "HTTP/1.1");

    // The second poll on the same connection is held, and answered by a publish.
    let (second, event) = thread::scope(|s| {
        let publisher = s.spawn(|| {
            await_gauge(&engine, "polls_held", 1);
            publish(&mut Publisher::connect(&engine.ingest), "ka", "kept alive", "")
        });
        let second = client.poll(&format!("topic=ka&after={}&wait=5", first.next));
        (second, publisher.join().unwrap())
    });
    assert!(!second.response.closes(), "{:?}", second.response);
    assert_eq!(second.events, [event], "{}", second.body);

    let third = client.poll(&format!("topic=ka&after={}&wait=0", second.next));
    assert!(third.events.is_empty(), "{}", third.body);
    assert_eq!(
        engine.counter("accepted"),
        accepted,
        "the engine saw a new connection"
    );
    assert!(
        !client.conn().closes_within(QUIET),
        "the engine closed a kept-alive connection"
    );
}

#[test]
fn poll_reset_answers_give_a_next_that_does_not_reset_again_or_skip_events() {
    let engine = Engine::start(&[]);
    // An id of this epoch not issued yet (nothing is published): the engine calls it
    // malformed. Whatever `next` it answers with must be a cursor a client can follow.
    let future = format!("{}-2", engine.epoch);
    let first = poll(engine.addr, &format!("topic=fut&after={future}&wait=0"));
    assert_reset(&first, "malformed-id", &future, None);
    assert!(first.events.is_empty(), "{}", first.body);
    let again = poll(engine.addr, &format!("topic=fut&after={}&wait=0", first.next));
    let mut p = Publisher::connect(&engine.ingest);
    let sent: Vec<WireEvent> = (1..=3)
        .map(|i| publish(&mut p, "fut", &format!("f{i}"), ""))
        .collect();
    let later = poll(engine.addr, &format!("topic=fut&after={}&wait=0", first.next));
    assert!(
        again.reset.is_none() && later.events == sent,
        "a client following next after a reset: GET /poll?topic=fut&after={future}&wait=0 \
         answered {}; then after={} answered {} (want no reset); then, after publishing {:?}, \
         after={} answered {} (want all three)",
        first.body,
        first.next,
        again.body,
        sent.iter().map(|e| &e.id).collect::<Vec<_>>(),
        first.next,
        later.body
    );
}

#[test]
fn poll_after_an_aged_out_history_resets_once_then_waits() {
    let engine = Engine::start(&["--history-age-secs", "1"]);
    let mut p = Publisher::connect(&engine.ingest);
    let gone = publish(&mut p, "aged", "a1", "");
    publish(&mut p, "aged", "a2", "");
    // Wait until both are too old to replay: a client at a1 then gets a reset.
    let deadline = Instant::now() + WAIT;
    let reset = loop {
        thread::sleep(Duration::from_millis(100));
        let answer = poll(engine.addr, &format!("topic=aged&after={}&wait=0", gone.id));
        if answer.reset.is_some() {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "no reset after {WAIT:?}: {}",
            answer.body
        );
    };
    assert_reset(&reset, "expired", &gone.id, None);
    assert!(reset.events.is_empty(), "{}", reset.body);
    // Following `next`, a long-poll must now be held, not answered with the same reset.
    let answer = poll(engine.addr, &format!("topic=aged&after={}&wait=1", reset.next));
    assert!(
        answer.reset.is_none() && answer.elapsed >= Duration::from_millis(900),
        "a long-poll following next after an expired reset was not held: after={} \
         (from {}) answered after {:?} with {}",
        reset.next,
        reset.body,
        answer.elapsed,
        answer.body
    );
}

// ----- NDJSON over curl ----------------------------------------------------------------------

/// Opens `/stream` with curl and waits until the engine counts the stream open.
fn open_ndjson(engine: &Engine, target: &str, open_before: u64) -> LineChild {
    let curl = curl_stream(engine.addr, target, 20);
    await_gauge(engine, "open_ndjson", open_before + 1);
    curl
}

/// Reads and checks the head curl prints. curl writes it to its stdout together with the
/// first body bytes (stdio buffering), so call this only once a line is due.
fn ndjson_head(curl: &mut LineChild) {
    let head = read_curl_head(curl);
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(
        head.header("Content-Type"),
        Some("application/x-ndjson"),
        "{head:?}"
    );
    assert_eq!(head.header("Transfer-Encoding"), Some("chunked"), "{head:?}");
}

fn next_event_line(curl: &mut LineChild) -> WireEvent {
    let line = curl.expect_line();
    WireEvent::from_line(&line)
}

fn expect_quiet(curl: &mut LineChild) {
    match curl.next_line(QUIET) {
        Err(End::TimedOut) => {}
        other => panic!("expected nothing more, got {other:?}; {}", curl.context()),
    }
}

#[test]
fn ndjson_over_curl_carries_events_as_lines_and_resumes_from_last_event_id() {
    let engine = Engine::start(&[]);
    let mut p = Publisher::connect(&engine.ingest);
    let mut curl = open_ndjson(&engine, "/stream?topic=nd", 0);
    let live = [
        publish(&mut p, "nd", "plain", ""),
        publish(&mut p, "nd", "{\"json\": [1, 2]}", "event=named"),
        publish(
            &mut p,
            "nd",
            "quote \" back \\ LF\nCR\r tab\t ctl \u{1} é ✓ 🎉",
            "",
        ),
    ];
    ndjson_head(&mut curl);
    for expected in &live {
        assert_eq!(&next_event_line(&mut curl), expected, "{}", curl.context());
    }
    curl.kill();
    await_gauge(&engine, "open_ndjson", 0);

    let missed = [
        publish(&mut p, "nd", "missed 1", ""),
        publish(&mut p, "nd-other", "not asked for", ""),
        publish(&mut p, "nd", "missed 2", "event=late"),
    ];
    let target = format!("/stream?topic=nd&last_event_id={}", live[2].id);
    let mut curl = open_ndjson(&engine, &target, 0);
    ndjson_head(&mut curl);
    assert_eq!(next_event_line(&mut curl), missed[0], "{}", curl.context());
    assert_eq!(next_event_line(&mut curl), missed[2], "{}", curl.context());
    expect_quiet(&mut curl);
    let after = publish(&mut p, "nd", "live again", "");
    assert_eq!(next_event_line(&mut curl), after, "{}", curl.context());
}

#[test]
fn ndjson_sends_heartbeat_lines_when_quiet() {
    let engine = Engine::start(&["--heartbeat-ms", "300"]);
    let mut p = Publisher::connect(&engine.ingest);
    let mut curl = open_ndjson(&engine, "/stream?topic=hb", 0);
    let opened = Instant::now();
    ndjson_head(&mut curl);
    let beat = |curl: &mut LineChild, since: Instant| {
        let line = curl.expect_line();
        let gap = since.elapsed();
        let json = parse_json(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert_eq!(
            json,
            Json::Obj(vec![("event".into(), Json::Str("ringcast.heartbeat".into()))]),
            "{line:?}"
        );
        assert!(
            (Duration::from_millis(150)..Duration::from_millis(1500)).contains(&gap),
            "heartbeat {gap:?} after the last line, with --heartbeat-ms 300"
        );
    };
    beat(&mut curl, opened);
    let event = publish(&mut p, "hb", "between beats", "");
    assert_eq!(next_event_line(&mut curl), event, "{}", curl.context());
    // The next beat is due a heartbeat after the event, not after the last beat.
    beat(&mut curl, Instant::now());
}

// ----- one id across transports --------------------------------------------------------------

#[test]
fn one_id_resumes_over_websocket_poll_and_ndjson_with_exactly_the_missed_events() {
    let engine = Engine::start(&[]);
    let mut p = Publisher::connect(&engine.ingest);
    let mut sse = SseClient::subscribe(engine.addr, &["x"]);
    let seen: Vec<WireEvent> = (1..=3)
        .map(|i| publish(&mut p, "x", &format!("s{i}"), ""))
        .collect();
    let got = sse.events_until(3, WAIT);
    let got_ids: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(got_ids, seen.iter().map(|e| e.id.as_str()).collect::<Vec<_>>());
    let last = sse.last_event_id();
    drop(sse);

    let missed = vec![
        publish(&mut p, "x", "m1", ""),
        publish(&mut p, "y", "other topic", ""),
        publish(&mut p, "x", "m2", "event=named"),
        publish(&mut p, "x", "m3 \"q\"\n✓", ""),
    ];
    let expected: Vec<WireEvent> = missed.into_iter().filter(|e| e.topic == "x").collect();

    // Both child processes start first: their start-up overlaps.
    let mut ws = python_ws(
        engine.addr,
        &format!("/ws?topic=x&last_event_id={last}"),
        3,
        QUIET,
    );
    let mut curl = curl_stream(engine.addr, &format!("/stream?topic=x&last_event_id={last}"), 20);

    let answer = poll(engine.addr, &format!("topic=x&after={last}"));
    assert_at_once(&answer, "poll resume");
    assert!(answer.reset.is_none(), "{}", answer.body);
    assert_eq!(answer.events, expected, "/poll after={last}: {}", answer.body);
    assert_eq!(answer.next, expected[2].id);

    ndjson_head(&mut curl);
    for want in &expected {
        assert_eq!(&next_event_line(&mut curl), want, "/stream last_event_id={last}");
    }
    expect_quiet(&mut curl);

    for want in &expected {
        let line = ws.expect_line();
        assert_eq!(&WireEvent::from_line(&line), want, "/ws last_event_id={last}");
    }
    // The script prints any further message that comes within QUIET, then exits.
    match ws.next_line(WAIT) {
        Err(End::Closed) => {}
        other => panic!(
            "/ws sent more than the missed events: {other:?}; {}",
            ws.context()
        ),
    }
    let status = ws.wait_exit(WAIT);
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}; {}",
        ws.context()
    );

    // And SSE itself, with the header a browser sends.
    let mut sse = SseClient::subscribe_with(engine.addr, &["x"], &[("Last-Event-ID", &last)]);
    let replay = sse.events_until(3, WAIT);
    for (got, want) in replay.iter().zip(&expected) {
        assert_eq!((&got.id, &got.data), (&want.id, &want.data));
        assert_eq!(got.event, want.event.as_deref().unwrap_or("message"));
    }
    sse.expect_no_event(QUIET);
}
