//! Event names and keys with spaces, on the ingest socket and through `ringcast publish`:
//! the refusal names the whole value and says spaces are not allowed (event names and
//! keys are 0x21-0x7E), nothing is published, and the CLI never lets a value cut or end
//! the `PUB` line it sends.
use ringcast_tests::engine::Engine;
use ringcast_tests::ingest::{cli_publish, Publisher};
use ringcast_tests::sse::SseClient;

const SPACED_EVENT: &str =
    "-ERR invalid event name \"my event\": spaces are not allowed; event names are 1-64 bytes of \
     printable ASCII (0x21-0x7E)";

/// Publishes a marker and checks it is the subscriber's next event: nothing else was
/// published before it.
fn assert_next_is_marker(engine: &Engine, sub: &mut SseClient, marker: &str) {
    let id = Publisher::connect(&engine.ingest).publish("t", marker.as_bytes());
    let event = sub.expect_event();
    assert_eq!((event.id.as_str(), event.data.as_str()), (id.as_str(), marker));
}

#[test]
fn a_spaced_event_name_on_the_socket_is_named_in_the_refusal() {
    let engine = Engine::start(&[]);
    let mut sub = SseClient::subscribe(engine.addr, &["t"]);
    let mut publisher = Publisher::connect(&engine.ingest);
    publisher.send(b"PUB t 1 event=my event\r\nx\r\n");
    assert_eq!(publisher.reply(), SPACED_EVENT);
    publisher.send(b"PUB t 1 key=my key\r\nx\r\n");
    let reply = publisher.reply();
    assert!(
        reply.starts_with("-ERR invalid key \"my key\": spaces are not allowed;"),
        "{reply:?}"
    );
    // The connection keeps its framing and serves the next command.
    publisher.send(b"PING\r\n");
    assert_eq!(publisher.reply(), "+PONG");
    assert_next_is_marker(&engine, &mut sub, "after the socket refusals");
}

#[test]
fn the_cli_refuses_spaced_or_line_breaking_values_and_sends_nothing() {
    let engine = Engine::start(&[]);
    let mut sub = SseClient::subscribe(engine.addr, &["t"]);
    let out = cli_publish(&engine.ingest, &["--event", "my event", "t", "x"], None);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert_eq!(
        out.stderr.trim_end(),
        format!("ringcast publish: {}", &SPACED_EVENT["-ERR ".len()..]),
        "{out:?}"
    );
    // An event name with a line break would otherwise end the PUB line and make the
    // rest a second command: here `PUB t 3` with the payload `abc`.
    let injected = "e\r\n\r\nPUB t 3\r\nabc";
    let out = cli_publish(&engine.ingest, &["--event", injected, "t", ""], None);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("invalid event name"), "{out:?}");
    let out = cli_publish(&engine.ingest, &["--key", "a\nb", "t", "x"], None);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("invalid key"), "{out:?}");
    assert_next_is_marker(&engine, &mut sub, "after the CLI refusals");
}
