//! `ringcast-bench hold` against the real engine, over every transport: its io_uring
//! client engine opens the connections in steps, holds them (answering WebSocket pings
//! and re-issuing long-polls), and writes its JSON, Markdown and SVG results; a refused
//! subscription is reported as a failure with exit status 1.
use std::path::PathBuf;
use std::process::{Command, Output};

use ringcast_tests::engine::{bench_binary, output_within, Engine, TempDir};

/// Runs `hold` with a bound on its run time.
fn hold(engine: &Engine, args: &[&str]) -> Output {
    let mut cmd = Command::new(bench_binary());
    cmd.arg("hold")
        .args([
            "--target",
            &engine.addr.to_string(),
            "--pid",
            &engine.pid.to_string(),
        ])
        .args(["--settle-secs", "0", "--sources", "4", "--per-ring", "150"])
        .args(args);
    output_within(&mut cmd, 90, &format!("ringcast-bench hold {args:?}"))
}

fn json_of(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Holds 100 then 300 subscribers of `transport` for 2 s and checks the report and files.
fn held_in_steps(transport: &str, engine_args: &[&str]) -> (serde_json::Value, Engine) {
    let engine = Engine::start(engine_args);
    let out = TempDir::new();
    let output = hold(
        &engine,
        &[
            "--transport",
            transport,
            "--conns",
            "100,300",
            "--hold-secs",
            "2",
            "--poll-wait-secs",
            "1",
            "--json",
            "--out",
            out.path().to_str().expect("utf-8 temp path"),
        ],
    );
    let report = json_of(&output);
    assert!(output.status.success(), "exit {:?}: {report}", output.status);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["transport"], transport);
    assert_eq!(report["held"], 300, "{report}");
    assert_eq!(report["dropped_during_hold"], 0, "{report}");
    let steps = report["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{report}");
    assert_eq!(
        (steps[0]["held"].as_u64(), steps[1]["held"].as_u64()),
        (Some(100), Some(300))
    );
    assert!(report["bytes_per_conn"].is_number(), "{report}");
    // One worker per step; the second step's 200 connections over per-ring 150 make
    // that worker run two rings.
    assert_eq!(report["workers"], 2);
    // The engine saw every one of them.
    assert!(engine.counter("accepted") >= 300, "{}", engine.stats());

    let files: Vec<PathBuf> = std::fs::read_dir(out.path())
        .expect("--out dir")
        .map(|e| e.expect("entry").path())
        .collect();
    let with = |suffix: &str| {
        files
            .iter()
            .find(|p| p.to_string_lossy().ends_with(suffix))
            .unwrap_or_else(|| panic!("no *{suffix} in {files:?}"))
            .clone()
    };
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(with(".json")).expect("json"))
            .expect("valid JSON file");
    assert_eq!(written["held"], 300);
    let md = std::fs::read_to_string(with(".md")).expect("md");
    assert!(md.contains("| 300 | 300 |"), "{md}");
    for chart in ["-memory.svg", "-handshake.svg"] {
        let svg = std::fs::read_to_string(with(chart)).expect("svg");
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{chart}"
        );
    }
    (report, engine)
}

#[test]
fn sse_subscribers_are_held_in_steps() {
    held_in_steps("sse", &[]);
}

#[test]
fn websockets_are_held_and_answer_pings() {
    // Pings every second: a worker that failed to pong would be reaped after 1 s more
    // and counted as dropped.
    let (_, engine) = held_in_steps("ws", &["--ws-ping-ms", "1000", "--ws-pong-timeout-ms", "1000"]);
    assert!(engine.counter("ws_pings") >= 300, "{}", engine.stats());
    assert_eq!(engine.counter("ws_pong_timeouts"), 0, "{}", engine.stats());
}

#[test]
fn ndjson_streams_are_held() {
    held_in_steps("ndjson", &[]);
}

#[test]
fn long_polls_are_held_and_reissued() {
    let (report, _engine) = held_in_steps("poll", &[]);
    // `wait=1` over a 2 s hold: every poll was answered and re-issued at least once.
    let repolls = report["repolls"].as_u64().expect("repolls");
    assert!(repolls >= 300, "{report}");
}

#[test]
fn a_refused_subscription_fails_the_run() {
    let engine = Engine::start(&[]);
    let output = hold(&engine, &["--conns", "50", "--path", "/nowhere", "--json"]);
    let report = json_of(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert_eq!(report["held"], 0);
    assert_eq!(report["failures"]["status/404"], 50, "{report}");
}
