//! Upstream messages with a real WebSocket client (Python `websockets`) and a backend on
//! the ingest socket: a client's text and binary messages reach the backend as `MSG`
//! pushes tagged with the connection id; the backend's `SEND` to that id reaches the
//! client; without a backend the client is told so; a SEND to a loop that does not exist
//! is refused. The counters agree.
use std::process::Command;

use ringcast_tests::engine::Engine;

#[test]
fn a_client_and_a_backend_talk_through_the_engine() {
    let engine = Engine::start(&[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/upstream_roundtrip.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(engine.addr.to_string())
        .arg(&engine.ingest)
        .output()
        .expect("python3 runs (.ci/run installs the websockets package)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "upstream_roundtrip.py failed:\n{stdout}\n{stderr}\nengine:\n{}",
        engine.stderr()
    );
    assert!(stdout.contains("\"ok\": true"), "{stdout}");
    assert_eq!(engine.counter("upstream"), 2, "{}", engine.stats());
    assert_eq!(engine.counter("upstream_refused"), 2, "{}", engine.stats());
    assert_eq!(engine.counter("websockets"), 1);
}
