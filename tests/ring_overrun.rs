//! A loop that falls more than the broadcast ring's capacity behind loses nothing the
//! history still holds: it detects the overwritten slots and refills the range from the
//! history, in order, without duplicates.
use ringcast_tests::engine::Engine;
use ringcast_tests::ingest::{ok_id, pub_frame, Publisher};
use ringcast_tests::sse::SseClient;
use ringcast_tests::WAIT;

#[test]
fn an_overrun_loop_refills_from_history() {
    // 64 slots: one pipelined write of thousands of publishes laps every loop before its
    // doorbell rings.
    let engine = Engine::start(&[
        "--ring-slots",
        "64",
        "--history-events",
        "20000",
        "--history-bytes",
        "16777216",
    ]);
    let mut subs: Vec<SseClient> = (0..6)
        .map(|_| SseClient::subscribe(engine.addr, &["lap"]))
        .collect();
    let mut publisher = Publisher::connect(&engine.ingest);
    let burst: Vec<u8> = (0..5000)
        .flat_map(|i| pub_frame("lap", format!("event {i}").as_bytes(), ""))
        .collect();
    publisher.send(&burst);
    let ids: Vec<String> = (0..5000).map(|_| ok_id(&publisher.reply())).collect();
    for (n, sub) in subs.iter_mut().enumerate() {
        for (i, id) in ids.iter().enumerate() {
            let event = sub.next_event(WAIT).unwrap_or_else(|end| {
                panic!(
                    "subscriber {n} stopped after {i} of {} events: {end:?}",
                    ids.len()
                )
            });
            assert_eq!(
                &event.id,
                id,
                "subscriber {n}, event {i}: {event:?}; {}",
                engine.stats()
            );
            assert_eq!(event.data, format!("event {i}"));
        }
    }
    assert!(
        engine.counter("ring_overrun") > 0,
        "the test did not lap a loop: {}",
        engine.stats()
    );
    assert_eq!(engine.counter("ring_lost"), 0, "{}", engine.stats());
}
