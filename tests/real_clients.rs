//! Real clients, not ours: headless Chromium's `EventSource` (Debian `chromium` driven by
//! npm `playwright-core`) and the npm `eventsource` library (WHATWG behaviour) subscribe,
//! receive, get dropped, reconnect with `Last-Event-ID` and resume without gap or
//! duplicate; after an engine restart they get a `ringcast.reset` (reason `unknown-epoch`)
//! and then live events again.
//!
//! The clients run in the Node scripts under `tests/js/` (see `common.mjs` there), which
//! put a TCP proxy in front of the engine to drop the streams and to see each request's
//! `Last-Event-ID`. A script prints one `RESULT {...}` line of what the client received
//! and what the proxy saw; this file judges it against the engine's epoch and its own
//! SSE client's view of the history. In the restart scenario the script prints `READY`,
//! this side restarts the engine and answers `RESTARTED <epoch>` on the script's stdin.
//!
//! Needs `node` (20+), `npm ci --prefix tests/js` and `/usr/bin/chromium`: `.ci/run`
//! installs them. Without them these tests fail, saying so; they never pass silently.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ringcast_tests::engine::Engine;
use ringcast_tests::json::{parse_flat_object, FlatObject};
use ringcast_tests::script::Script;
use ringcast_tests::sse::SseClient;
use ringcast_tests::whatwg::Event;
use ringcast_tests::{epoch_of, seq_of, WAIT};

/// Bound on one script run. The scripts bound themselves at 40 s; this is the backstop.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(55);
/// The topic the scripts publish on (`TOPIC` in common.mjs).
const TOPIC: &str = "rc";
/// A short reconnection delay, so a dropped client is back within about a second.
const ENGINE_ARGS: &[&str] = &["--retry-ms", "1000"];
/// Where to find Chromium unless `$CHROMIUM` says otherwise (as the browser script does).
const CHROMIUM: &str = "/usr/bin/chromium";
const INSTALL_HINT: &str = concat!(
    "run the install steps of .ci/run: `apt-get update && apt-get install -y chromium` ",
    "and `npm ci --prefix tests/js` (needs node 20+ and npm)"
);

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

#[derive(Clone, Copy, PartialEq)]
enum Client {
    Chromium,
    EventSourceLib,
}

impl Client {
    fn script(self) -> &'static str {
        match self {
            Client::Chromium => "browser_resume.mjs",
            Client::EventSourceLib => "eventsource_lib.mjs",
        }
    }
}

/// Fails the test, with what to install, unless node, the npm packages and (for the
/// browser) Chromium are there.
fn require_tools(client: Client) {
    let out = Command::new("node")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run `node --version` ({e}); {INSTALL_HINT}"));
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(major >= 20, "node {version:?} is older than 20; {INSTALL_HINT}");
    for package in ["eventsource", "playwright-core"] {
        let manifest = js_dir().join("node_modules").join(package).join("package.json");
        assert!(
            manifest.is_file(),
            "npm package {package} is not installed ({manifest:?} missing); {INSTALL_HINT}"
        );
    }
    if client == Client::Chromium {
        let chromium = std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from(CHROMIUM), PathBuf::from);
        assert!(chromium.is_file(), "no Chromium at {chromium:?}; {INSTALL_HINT}");
    }
}

/// `node tests/js/<client's script> MODE ADDR INGEST`, once the client's tools are there.
fn spawn(client: Client, mode: &str, engine: &Engine) -> Script {
    require_tools(client);
    let mut command = Command::new("node");
    command
        .arg(js_dir().join(client.script()))
        .args([mode, &engine.addr.to_string()])
        .arg(&engine.ingest)
        .current_dir(js_dir());
    let what = format!("node tests/js/{} {mode}", client.script());
    Script::spawn(what, command, SCRIPT_TIMEOUT, INSTALL_HINT)
}

/// The value of `key` in the result; a missing key or a `null` fails the test.
fn get<'a>(result: &'a FlatObject, key: &str) -> &'a str {
    match result.get(key) {
        Some(Some(value)) => value,
        _ => panic!("RESULT has no string {key:?}: {result:?}"),
    }
}

/// The events the client received, in order.
fn received(result: &FlatObject) -> Vec<Event> {
    let n: usize = get(result, "events").parse().expect("events is a count");
    (1..=n)
        .map(|i| Event {
            id: get(result, &format!("event.{i}.id")).to_owned(),
            event: get(result, &format!("event.{i}.type")).to_owned(),
            data: get(result, &format!("event.{i}.data")).to_owned(),
        })
        .collect()
}

/// The events the script published, as a subscriber should see them.
fn published(result: &FlatObject) -> Vec<Event> {
    let n: usize = get(result, "published").parse().expect("published is a count");
    (1..=n)
        .map(|i| Event {
            id: get(result, &format!("published.{i}.id")).to_owned(),
            event: "message".to_owned(),
            data: get(result, &format!("published.{i}.data")).to_owned(),
        })
        .collect()
}

/// What the proxy saw: each request's `Last-Event-ID` (None if absent) and whether it
/// reached the engine.
fn requests(result: &FlatObject) -> Vec<(Option<String>, bool)> {
    let n: usize = get(result, "requests").parse().expect("requests is a count");
    (1..=n)
        .map(|i| {
            let id = result
                .get(&format!("request.{i}.last_event_id"))
                .unwrap_or_else(|| panic!("RESULT lacks request {i}: {result:?}"))
                .clone();
            (id, get(result, &format!("request.{i}.reached_engine")) == "yes")
        })
        .collect()
}

/// Checks ids are of `epoch` and strictly increasing: in order, and no duplicate.
fn assert_in_order(events: &[Event], epoch: &str) {
    for e in events {
        assert_eq!(epoch_of(&e.id), epoch, "{e:?} is not of epoch {epoch}");
    }
    for pair in events.windows(2) {
        assert!(
            seq_of(&pair[0].id) < seq_of(&pair[1].id),
            "out of order or duplicated: {pair:?}"
        );
    }
}

/// 3 events live, every stream dropped, 3 published meanwhile, reconnect, 1 live.
fn drop_and_resume(client: Client) {
    let engine = Engine::start(ENGINE_ARGS);
    let result = spawn(client, "drop", &engine).finish();
    let want = published(&result);
    let got = received(&result);
    assert_eq!(want.len(), 7, "{result:?}");
    assert_eq!(
        got, want,
        "the client must receive exactly what was published, in order"
    );
    assert_in_order(&got, &engine.epoch);
    assert!(
        want.iter().any(|e| e.data.contains('\n')),
        "the scenario must include multi-line data"
    );

    // Exactly two requests reached the engine: the first without Last-Event-ID, the
    // reconnect with the id of the last event received before the drop.
    let reached: Vec<Option<String>> = requests(&result)
        .into_iter()
        .filter_map(|(id, reached)| reached.then_some(id))
        .collect();
    assert_eq!(reached, [None, Some(want[2].id.clone())], "{result:?}");
    assert_eq!(get(&result, "opens"), "2", "one open per connection: {result:?}");

    // Our own client, resuming from the first id, sees the same history: what the real
    // client reported is what the engine holds.
    let mut sub = SseClient::subscribe_with(engine.addr, &[TOPIC], &[("Last-Event-ID", &want[0].id)]);
    assert_eq!(sub.events_until(want.len() - 1, WAIT), want[1..]);
}

/// 2 events live, engine restarted, reset with reason unknown-epoch, 1 live.
fn restart_and_reset(client: Client) {
    let mut engine = Engine::start(ENGINE_ARGS);
    let old_epoch = engine.epoch.clone();
    let mut script = spawn(client, "restart", &engine);
    script.expect_line("READY");
    let started = Instant::now();
    engine.restart();
    eprintln!("engine restart took {:?}", started.elapsed());
    assert_ne!(engine.epoch, old_epoch, "a restart must change the epoch");
    script.send_line(&format!("RESTARTED {}", engine.epoch));
    let result = script.finish();

    let want = published(&result);
    let got = received(&result);
    assert_eq!(want.len(), 3, "{result:?}");
    assert_eq!(got.len(), 4, "2 events, the reset, 1 live event: {got:#?}");
    assert_eq!(got[..2], want[..2]);
    assert_in_order(&want[..2], &old_epoch);
    let reset = &got[2];
    assert_eq!(reset.event, "ringcast.reset", "{got:#?}");
    assert_eq!(
        epoch_of(&reset.id),
        engine.epoch,
        "the reset's id must be of the new epoch: {reset:?}"
    );
    let data = parse_flat_object(&reset.data).unwrap_or_else(|e| panic!("reset data {:?}: {e}", reset.data));
    assert_eq!(
        data.get("reason"),
        Some(&Some("unknown-epoch".to_owned())),
        "{data:?}"
    );
    assert_eq!(
        data.get("last_event_id"),
        Some(&Some(want[1].id.clone())),
        "{data:?}"
    );
    assert_eq!(
        data.get("oldest_id"),
        Some(&None),
        "nothing is retained after a restart: {data:?}"
    );
    assert_eq!(got[3], want[2]);
    assert_in_order(&got[2..], &engine.epoch);

    // Every reconnect attempt carried the last id received before the restart; at least
    // one reached the new engine.
    let requests = requests(&result);
    assert_eq!(requests[0], (None, true), "{result:?}");
    assert!(requests[1..].iter().any(|(_, reached)| *reached), "{result:?}");
    for (id, _) in &requests[1..] {
        assert_eq!(id.as_deref(), Some(want[1].id.as_str()), "{result:?}");
    }
}

#[test]
fn chromium_eventsource_resumes_after_a_drop() {
    drop_and_resume(Client::Chromium);
}

#[test]
fn chromium_eventsource_gets_a_reset_after_an_engine_restart() {
    restart_and_reset(Client::Chromium);
}

#[test]
fn npm_eventsource_resumes_after_a_drop() {
    drop_and_resume(Client::EventSourceLib);
}

#[test]
fn npm_eventsource_gets_a_reset_after_an_engine_restart() {
    restart_and_reset(Client::EventSourceLib);
}
