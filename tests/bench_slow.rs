//! `ringcast-bench slow` against the real engine: fast readers beside slow ones under two
//! backpressure policies. The fast class must lose nothing (exit status 0); the slow
//! class must meet its topic's policy: drop-oldest drops events and tells the slow
//! readers with `ringcast.gap`, disconnect ends every slow stream. One run also writes
//! its JSON, Markdown and SVG results with `--out`.
//!
//! Each run publishes 1 KiB events at 200/s for 5 s: 1 MB per slow reader, well past
//! what its kernel buffers (`TCP_NOTSENT_LOWAT` 128 KiB, a 4 KiB `SO_RCVBUF`) and the
//! engine's 256 KiB queue hold, so the policy must act.
use std::path::Path;
use std::process::{Command, Output};

use ringcast_tests::engine::{bench_binary, output_within, Engine, TempDir};

/// Slow readers per run.
const SLOW: u64 = 20;

/// Runs `slow` on `topic` with `--json`, bounded to 60 s.
fn slow(engine: &Engine, topic: &str, out: Option<&Path>) -> Output {
    let mut cmd = Command::new(bench_binary());
    cmd.arg("slow")
        .args(["--target", &engine.addr.to_string()])
        .arg("--ingest")
        .arg(&engine.ingest)
        .args([
            "--admin",
            &engine.admin.to_string(),
            "--pid",
            &engine.pid.to_string(),
        ])
        .args(["--topic", topic, "--fast", "50", "--slow", &SLOW.to_string()])
        .args([
            "--slow-read-bps",
            "2000",
            "--rate",
            "200",
            "--bytes",
            "1024",
            "--duration",
            "5",
        ])
        .arg("--json");
    if let Some(dir) = out {
        cmd.arg("--out").arg(dir);
    }
    output_within(&mut cmd, 60, &format!("ringcast-bench slow --topic {topic}"))
}

/// The stdout of a run that must have succeeded (exit 0: no fast reader lost anything).
fn success(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "ringcast-bench slow failed ({:?}): {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
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

#[test]
fn fast_readers_lose_nothing_while_slow_ones_meet_their_policy() {
    let engine = Engine::start(&["--policy", "dc.*=disconnect"]);
    let dir = TempDir::new();

    let dropped_before = engine.counter("dropped");
    let json = success(&slow(&engine, "do.t", Some(dir.path())));
    assert!(json.contains("\"ok\":true"), "{json}");
    let fast_class = &json[json.find("\"fast_class\"").expect("fast_class")..];
    assert_eq!(number(fast_class, "lost"), 0, "{json}");
    assert_eq!(number(fast_class, "deliveries"), 50 * 1000, "{json}");
    let dropped = engine.counter("dropped") - dropped_before;
    assert!(dropped > 0, "drop-oldest dropped nothing: {json}");
    assert_eq!(
        number(fast_class, "gap_notices"),
        0,
        "a fast reader was sent a gap: {json}"
    );
    let slow_class = &json[json.find("\"slow_class\"").expect("slow_class")..];
    assert!(
        number(slow_class, "gap_notices") > 0,
        "no gap told to a slow reader: {json}"
    );
    assert_eq!(number(slow_class, "disconnected_by_engine"), 0, "{json}");

    let disconnected_before = engine.counter("slow_disconnected");
    let json = success(&slow(&engine, "dc.t", None));
    assert_eq!(number(&json, "lost"), 0, "{json}");
    assert_eq!(
        engine.counter("slow_disconnected") - disconnected_before,
        SLOW,
        "{json}"
    );
    let slow_class = &json[json.find("\"slow_class\"").expect("slow_class")..];
    assert_eq!(number(slow_class, "disconnected_by_engine"), SLOW, "{json}");

    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .expect("--out dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "{files:?}");
    let read = |suffix: &str| {
        let name = files
            .iter()
            .find(|f| f.ends_with(suffix))
            .unwrap_or_else(|| panic!("no *{suffix} in {files:?}"));
        assert!(name.starts_with("slow-"), "{name}");
        std::fs::read_to_string(dir.path().join(name)).expect("readable")
    };
    let pretty = read(".json");
    assert!(
        pretty.starts_with("{\n") && pretty.trim_end().ends_with('}'),
        "{pretty}"
    );
    assert!(
        pretty.contains("\"subcommand\": \"slow\"") && pretty.contains("\"commit\":"),
        "{pretty}"
    );
    let md = read(".md");
    assert!(md.contains("## Fast class") && md.contains("| commit |"), "{md}");
    let svg = read("-latency-cdf.svg");
    assert!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    assert!(
        svg.contains("fast readers") && svg.contains("latency, ms"),
        "labels missing"
    );
}
