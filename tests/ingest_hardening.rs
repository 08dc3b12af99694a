//! Who can hold or reach the ingest socket: publishers that connect and say nothing are
//! closed after `--publisher-idle-ms` (told why), so they cannot hold every slot; the
//! admin listener's own publishing has slots of its own, so HTTP publishing works while
//! every publisher slot is taken; and the socket's mode is what `--ingest-mode` says
//! (0600 by default), whatever the umask the engine was started under.
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use ringcast_tests::engine::Engine;
use ringcast_tests::ingest::Publisher;
use ringcast_tests::sse::SseClient;
use ringcast_tests::WAIT;

/// One `POST /publish` on the admin address; returns the status and body.
fn http_publish(engine: &Engine, topic: &str, body: &str) -> (u16, String) {
    ringcast_tests::engine::admin_request(
        engine.admin,
        "POST",
        &format!("/publish?topic={topic}"),
        body.as_bytes(),
    )
}

#[test]
fn silent_publishers_cannot_lock_out_http_publishing_and_are_closed_when_idle() {
    let engine = Engine::start(&["--publishers-max", "4", "--publisher-idle-ms", "1500"]);
    let mut sub = SseClient::subscribe(engine.addr, &["t"]);
    let connected_at = Instant::now();
    let mut silent: Vec<Publisher> = (0..4).map(|_| Publisher::connect(&engine.ingest)).collect();
    // A fifth is turned away...
    let mut fifth = Publisher::connect(&engine.ingest);
    assert_eq!(fifth.reply(), "-ERR too many publishers connected; closing");
    // ...but the admin listener publishes from its own slots.
    let (status, body) = http_publish(&engine, "t", "over http while every slot is held");
    assert_eq!(status, 200, "{body}");
    assert_eq!(sub.expect_event().data, "over http while every slot is held");

    // One of the four keeps its slot by pinging; the others are told and closed.
    let mut pinging = silent.remove(0);
    while connected_at.elapsed() < Duration::from_millis(2500) {
        pinging.send(b"PING\n");
        assert_eq!(pinging.reply(), "+PONG");
        std::thread::sleep(Duration::from_millis(300));
    }
    for p in &mut silent {
        let reply = p.reply();
        assert_eq!(
            reply,
            "-ERR no command for 1500 ms (see --publisher-idle-ms); closing"
        );
        assert!(p.closes_within(WAIT));
    }
    let elapsed = connected_at.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500),
        "closed early: {elapsed:?}"
    );
    // Their slots are free again.
    let id = Publisher::connect(&engine.ingest).publish("t", b"a new publisher");
    assert_eq!(sub.expect_event().id, id);
    assert_eq!(pinging.publish("t", b"the pinging one"), sub.expect_event().id);
}

#[test]
fn a_backend_listening_for_upstream_messages_is_never_idle_closed() {
    let engine = Engine::start(&["--publisher-idle-ms", "500"]);
    let mut backend = Publisher::connect(&engine.ingest);
    backend.send(b"UPSTREAM\n");
    assert_eq!(backend.reply(), "+OK upstream");
    std::thread::sleep(Duration::from_millis(1500));
    backend.send(b"PING\n");
    assert_eq!(
        backend.reply(),
        "+PONG",
        "still connected after three idle periods"
    );
}

#[test]
fn the_socket_mode_is_set_whatever_the_umask() {
    // The engine inherits this process's umask; 000 would leave a bound socket 0777.
    // SAFETY: umask swaps a process attribute; the tests of this file create no files
    // whose mode they check other than through the engine.
    let old = unsafe { libc::umask(0) };
    let default = Engine::start(&[]);
    let custom = Engine::start(&["--ingest-mode", "0660"]);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let mode = |e: &Engine| std::fs::metadata(&e.ingest).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&default), 0o600, "the default is owner-only");
    assert_eq!(mode(&custom), 0o660);
    let refused = Engine::try_start_on(
        ringcast_tests::engine::free_addr(),
        &std::env::temp_dir().join(format!("ringcast-mode-{}.sock", std::process::id())),
        &["--ingest-mode", "999"],
    );
    let err = refused.err().expect("an invalid mode is refused");
    assert!(err.stderr.contains("octal mode"), "{}", err.stderr);
}
