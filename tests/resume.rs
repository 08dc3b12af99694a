//! Resuming with `Last-Event-ID` (header, or the `last_event_id` query parameter; the
//! header wins): a client that reconnects gets exactly what it missed of its topics, in id
//! order, then live events, with no gap and no duplicate. When the history cannot fill
//! the gap (another epoch, a malformed id, an id older than what is retained) it gets a
//! `ringcast.reset` event whose JSON data says why, then everything retained, then live.
use std::time::Duration;

use ringcast_tests::engine::Engine;
use ringcast_tests::ingest::Publisher;
use ringcast_tests::json::parse_flat_object;
use ringcast_tests::sse::SseClient;
use ringcast_tests::whatwg::Event;
use ringcast_tests::{epoch_of, seq_of, WAIT};

fn event(id: &str, data: &str) -> Event {
    Event {
        id: id.to_owned(),
        event: "message".to_owned(),
        data: data.to_owned(),
    }
}

/// Publishes `data{from}..data{to}` (inclusive) on `topic`; returns the events a
/// subscriber should see.
fn publish_range(p: &mut Publisher, topic: &str, from: u32, to: u32) -> Vec<Event> {
    (from..=to)
        .map(|i| {
            let data = format!("{topic} {i}");
            event(&p.publish(topic, data.as_bytes()), &data)
        })
        .collect()
}

/// Checks `e` is a `ringcast.reset` with this reason, echoed id and oldest retained id.
fn assert_reset(e: &Event, reason: &str, last_event_id: &str, oldest_id: Option<&str>) {
    assert_eq!(e.event, "ringcast.reset", "{e:?}");
    let json = parse_flat_object(&e.data).unwrap_or_else(|err| panic!("reset data {:?}: {err}", e.data));
    let field = |name: &str| {
        json.get(name)
            .unwrap_or_else(|| panic!("reset data lacks {name:?}: {:?}", e.data))
            .as_deref()
    };
    assert_eq!(field("reason"), Some(reason), "{:?}", e.data);
    assert_eq!(field("last_event_id"), Some(last_event_id), "{:?}", e.data);
    assert_eq!(field("oldest_id"), oldest_id, "{:?}", e.data);
}

#[test]
fn last_event_id_header_resumes_without_gap_or_duplicate() {
    let engine = Engine::start(&[]);
    let mut p = Publisher::connect(&engine.ingest);
    let mut sub = SseClient::subscribe(engine.addr, &["r"]);
    let first = publish_range(&mut p, "r", 1, 3);
    assert_eq!(sub.events_until(3, WAIT), first);
    let last = sub.last_event_id();
    assert_eq!(last, first[2].id);
    drop(sub);

    let missed = publish_range(&mut p, "r", 4, 6);
    let mut sub = SseClient::subscribe_with(engine.addr, &["r"], &[("Last-Event-ID", &last)]);
    assert_eq!(sub.events_until(3, WAIT), missed);
    let live = publish_range(&mut p, "r", 7, 7);
    assert_eq!(sub.expect_event(), live[0]);
}

#[test]
fn last_event_id_query_parameter_resumes() {
    let engine = Engine::start(&[]);
    let mut p = Publisher::connect(&engine.ingest);
    let first = publish_range(&mut p, "q", 1, 3);
    let missed = publish_range(&mut p, "q", 4, 6);
    let target = format!("/sse?topic=q&last_event_id={}", first[2].id);
    let mut sub = SseClient::open(engine.addr, &target, &[]);
    sub.assert_stream();
    assert_eq!(sub.events_until(3, WAIT), missed);
    let live = publish_range(&mut p, "q", 7, 7);
    assert_eq!(sub.expect_event(), live[0]);
}

#[test]
fn header_wins_over_query_parameter() {
    let engine = Engine::start(&[]);
    let mut p = Publisher::connect(&engine.ingest);
    let all = publish_range(&mut p, "w", 1, 5);
    // Both orders, so that neither "the older" nor "the newer" id can pass for the rule.
    for (header, query) in [(1, 3), (3, 1)] {
        let target = format!("/sse?topic=w&last_event_id={}", all[query].id);
        let mut sub = SseClient::open(engine.addr, &target, &[("Last-Event-ID", &all[header].id)]);
        sub.assert_stream();
        let n = all.len() - header - 1;
        assert_eq!(
            sub.events_until(n, WAIT),
            all[header + 1..],
            "header id {} and query id {}",
            all[header].id,
            all[query].id
        );
    }
}

#[test]
fn resume_over_several_topics_replays_in_id_order() {
    let engine = Engine::start(&[]);
    let mut p = Publisher::connect(&engine.ingest);
    let mut all = Vec::new();
    for (topic, i) in [
        ("x", 1),
        ("y", 1),
        ("z", 1),
        ("x", 2),
        ("y", 2),
        ("x", 3),
        ("z", 2),
        ("y", 3),
    ] {
        all.extend(publish_range(&mut p, topic, i, i).into_iter().map(|e| (topic, e)));
    }
    let from = &all[0].1.id;
    let want: Vec<Event> = all[1..]
        .iter()
        .filter(|(topic, _)| *topic != "z")
        .map(|(_, e)| e.clone())
        .collect();
    let mut sub = SseClient::subscribe_with(engine.addr, &["x", "y"], &[("Last-Event-ID", from)]);
    assert_eq!(sub.events_until(want.len(), WAIT), want);
    let live = publish_range(&mut p, "y", 4, 4);
    assert_eq!(sub.expect_event(), live[0]);
}

#[test]
fn resume_from_the_newest_id_replays_nothing() {
    let engine = Engine::start(&[]);
    let mut p = Publisher::connect(&engine.ingest);
    let old = publish_range(&mut p, "n", 1, 2);
    let mut sub = SseClient::subscribe_with(engine.addr, &["n"], &[("Last-Event-ID", &old[1].id)]);
    let live = publish_range(&mut p, "n", 3, 3);
    assert_eq!(sub.expect_event(), live[0]);
}

#[test]
fn after_restart_an_old_id_gets_an_unknown_epoch_reset() {
    let mut engine = Engine::start(&[]);
    let old_epoch = engine.epoch.clone();
    let before = publish_range(&mut Publisher::connect(&engine.ingest), "e", 1, 2);
    engine.restart();
    assert_ne!(engine.epoch, old_epoch, "a restart must change the epoch");

    let mut p = Publisher::connect(&engine.ingest);
    let after = publish_range(&mut p, "e", 3, 3);
    assert_eq!(epoch_of(&after[0].id), engine.epoch);
    let old_id = &before[1].id;
    let mut sub = SseClient::subscribe_with(engine.addr, &["e"], &[("Last-Event-ID", old_id)]);
    let reset = sub.expect_event();
    assert_reset(&reset, "unknown-epoch", old_id, Some(&after[0].id));
    assert_eq!(
        epoch_of(&reset.id),
        engine.epoch,
        "the reset's id must be resumable: {reset:?}"
    );
    assert_eq!(sub.expect_event(), after[0]);
    let live = publish_range(&mut p, "e", 4, 4);
    assert_eq!(sub.expect_event(), live[0]);

    // A browser that loses the stream right after the reset resumes from the reset's
    // id; it must get the retained events again, without a second reset.
    let mut again = SseClient::subscribe_with(engine.addr, &["e"], &[("Last-Event-ID", &reset.id)]);
    assert_eq!(again.events_until(2, WAIT), [after[0].clone(), live[0].clone()]);
}

#[test]
fn an_id_older_than_the_history_gets_an_expired_reset_then_what_is_retained() {
    let engine = Engine::start(&["--history-events", "3"]);
    let mut p = Publisher::connect(&engine.ingest);
    let all = publish_range(&mut p, "h", 1, 10);
    let mut sub = SseClient::subscribe_with(engine.addr, &["h"], &[("Last-Event-ID", &all[0].id)]);
    let reset = sub.expect_event();
    assert_reset(&reset, "expired", &all[0].id, Some(&all[7].id));
    assert!(seq_of(&reset.id) < seq_of(&all[7].id), "{reset:?}");
    assert_eq!(sub.events_until(3, WAIT), all[7..]);
    let live = publish_range(&mut p, "h", 11, 11);
    assert_eq!(sub.expect_event(), live[0]);

    // An id still in the history resumes without a reset.
    let mut sub = SseClient::subscribe_with(engine.addr, &["h"], &[("Last-Event-ID", &all[8].id)]);
    assert_eq!(sub.events_until(2, WAIT), [all[9].clone(), live[0].clone()]);
}

#[test]
fn an_id_older_than_the_history_age_gets_an_expired_reset() {
    let engine = Engine::start(&["--history-age-secs", "1"]);
    let mut p = Publisher::connect(&engine.ingest);
    let old = publish_range(&mut p, "age", 1, 2);
    // Long enough that the engine's periodic expiry (about once a second) has dropped
    // the whole topic, not only trimmed it when the next event arrives.
    std::thread::sleep(Duration::from_millis(2200));
    let fresh = publish_range(&mut p, "age", 3, 3);
    let mut sub = SseClient::subscribe_with(engine.addr, &["age"], &[("Last-Event-ID", &old[0].id)]);
    assert_reset(&sub.expect_event(), "expired", &old[0].id, Some(&fresh[0].id));
    assert_eq!(sub.expect_event(), fresh[0]);
}

#[test]
fn a_topic_forgotten_and_published_again_still_knows_its_gap() {
    // Two topics of history: publishing on b and c forgets a, whose history then
    // starts again at a3. A resume from a1 missed a2 and must be told so.
    let engine = Engine::start(&["--history-topics", "2"]);
    let mut p = Publisher::connect(&engine.ingest);
    let a = publish_range(&mut p, "a", 1, 2);
    publish_range(&mut p, "b", 1, 1);
    publish_range(&mut p, "c", 1, 1);
    let a3 = publish_range(&mut p, "a", 3, 3);
    let mut sub = SseClient::subscribe_with(engine.addr, &["a"], &[("Last-Event-ID", &a[0].id)]);
    assert_reset(&sub.expect_event(), "expired", &a[0].id, Some(&a3[0].id));
    assert_eq!(sub.expect_event(), a3[0]);
}

#[test]
fn a_malformed_id_gets_a_malformed_id_reset() {
    let engine = Engine::start(&[]);
    let mut p = Publisher::connect(&engine.ingest);
    let all = publish_range(&mut p, "m", 1, 2);
    for bad in [
        "not-an-id",
        "12345",
        "-",
        "zz-1",
        &format!("{}-", engine.epoch),
        &format!("{}-x1", engine.epoch),
    ] {
        let mut sub = SseClient::subscribe_with(engine.addr, &["m"], &[("Last-Event-ID", bad)]);
        assert_reset(&sub.expect_event(), "malformed-id", bad, Some(&all[0].id));
        assert_eq!(sub.events_until(2, WAIT), all, "after Last-Event-ID {bad:?}");
    }
    // A topic with no history: the reset names no oldest id, and live events follow.
    let mut sub = SseClient::subscribe_with(engine.addr, &["empty"], &[("Last-Event-ID", "garbage")]);
    assert_reset(&sub.expect_event(), "malformed-id", "garbage", None);
    let live = publish_range(&mut p, "empty", 1, 1);
    assert_eq!(sub.expect_event(), live[0]);
}

#[test]
fn an_id_with_json_metacharacters_is_echoed_escaped() {
    let engine = Engine::start(&[]);
    let bad = r#"a"b\c{}"#;
    let mut sub = SseClient::subscribe_with(engine.addr, &["j"], &[("Last-Event-ID", bad)]);
    assert_reset(&sub.expect_event(), "malformed-id", bad, None);
}
