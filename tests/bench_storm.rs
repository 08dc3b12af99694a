//! `ringcast-bench storm` against the real engine: every subscriber dropped at once and
//! reconnected with `Last-Event-ID`, split across two client processes. Each run's report
//! must put every subscriber in the class its stream earned: a resume within the history
//! is whole (a hole there is an engine bug and fails the first test), a resume the
//! history cannot honour is a reset the engine announced, and a reconnect without an id
//! misses events with no notice, which the tool must call holes.
use std::process::{Command, Output};

use ringcast_tests::engine::{bench_binary, output_within, Engine};

/// Runs `storm` with `--json` and `extra` flags, bounded to 90 s.
fn storm(engine: &Engine, conns: usize, extra: &[&str]) -> Output {
    let mut cmd = Command::new(bench_binary());
    cmd.arg("storm")
        .args(["--target", &engine.addr.to_string()])
        .arg("--ingest")
        .arg(&engine.ingest)
        .args([
            "--admin",
            &engine.admin.to_string(),
            "--pid",
            &engine.pid.to_string(),
        ])
        .args(["--conns", &conns.to_string(), "--procs", "2", "--rate", "100"])
        .args([
            "--before-secs",
            "1",
            "--after-secs",
            "1",
            "--timeout-secs",
            "30",
            "--json",
        ])
        .args(extra);
    output_within(&mut cmd, 90, "ringcast-bench storm")
}

/// The number after `"key":` in compact JSON (the first occurrence).
fn number(json: &str, key: &str) -> u64 {
    let at = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("{key} missing in {json}"));
    let digits: String = json[at + key.len() + 3..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

/// The report of a run that got as far as its report (exit 0 or 1, not 2).
fn report(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        matches!(output.status.code(), Some(0 | 1)),
        "ringcast-bench storm could not run ({:?}): {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn resumes_within_the_history_are_whole() {
    let engine = Engine::start(&[]);
    // Events published while the subscribers are away must come from the history.
    let output = storm(&engine, 2000, &["--pause-ms", "300"]);
    let json = report(&output);
    let classes = &json[json.find("\"classes\"").expect("classes")..];
    assert_eq!(
        number(classes, "hole"),
        0,
        "a resume lost events without notice: {json}"
    );
    assert_eq!(number(classes, "disorder"), 0, "{json}");
    assert_eq!(number(classes, "whole"), 2000, "{json}");
    assert_eq!(number(&json, "engine_resets"), 0, "{json}");
    assert!(output.status.success(), "{json}");
    assert!(
        number(&json, "engine_replayed") >= 2000 * 20,
        "300 ms at 100/s is 30 events each: {json}"
    );
}

#[test]
fn resumes_past_the_history_are_counted_as_resets() {
    // Five events of history; 500 ms away at 100 events/s is 50 events: no id is honoured.
    let engine = Engine::start(&["--history-events", "5"]);
    let output = storm(&engine, 300, &["--pause-ms", "500"]);
    let json = report(&output);
    let classes = &json[json.find("\"classes\"").expect("classes")..];
    assert_eq!(number(classes, "reset"), 300, "{json}");
    assert_eq!(number(classes, "hole"), 0, "{json}");
    assert_eq!(number(&json, "engine_resets"), 300, "{json}");
    assert_eq!(
        output.status.code(),
        Some(1),
        "a reset is not a whole resume: {json}"
    );
}

#[test]
fn reconnects_without_an_id_are_holes() {
    let engine = Engine::start(&[]);
    let output = storm(&engine, 300, &["--pause-ms", "300", "--no-resume"]);
    let json = report(&output);
    let classes = &json[json.find("\"classes\"").expect("classes")..];
    assert_eq!(number(classes, "hole"), 300, "{json}");
    assert_eq!(output.status.code(), Some(1), "{json}");
    assert!(json.contains("with no notice"), "{json}");
}
