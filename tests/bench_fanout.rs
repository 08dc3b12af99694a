//! `ringcast-bench fanout` against the real engine: subscribers spread over several
//! topics, a publisher paced at a rate, every delivery accounted for, and latency
//! measured from each event's scheduled publish time.
use std::process::Command;

use ringcast_tests::engine::{bench_binary, output_within, Engine};

#[test]
fn paced_fanout_over_topics_delivers_each_event_to_its_topic_only() {
    let engine = Engine::start(&[]);
    let mut cmd = Command::new(bench_binary());
    cmd.arg("fanout")
        .args(["--target", &engine.addr.to_string()])
        .args(["--ingest", engine.ingest.to_str().expect("utf-8 path")])
        .args(["--admin", &engine.admin.to_string()])
        .args(["--pid", &engine.pid.to_string()])
        .args([
            "--fast",
            "60",
            "--topics",
            "3",
            "--rate",
            "200",
            "--duration",
            "1",
        ])
        .args(["--bytes", "128", "--runs", "2", "--warmup", "0", "--json"]);
    let output = output_within(&mut cmd, 60, "ringcast-bench fanout");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert!(output.status.success(), "{report}");
    assert_eq!(report["topics"], 3);
    assert_eq!(report["events"], 200, "rate x duration");
    let phase = &report["sets"][0]["phases"][0];
    for run in phase["runs"].as_array().expect("runs") {
        // 200 events over 3 topics of 20 subscribers each: 20 deliveries per event,
        // not 60 as with one topic.
        assert_eq!(run["expected"], 4000, "{run}");
        assert_eq!(run["delivered"], 4000, "{run}");
        assert_eq!(run["gap_notices"], 0, "{run}");
    }
    // The engine agrees: 2 runs x 4,000 deliveries.
    assert_eq!(phase["engine_counters"]["deliveries"], 8000, "{phase}");
    let latency = &phase["latency"];
    assert_eq!(latency["samples"], 8000, "{latency}");
    assert!(latency["p99_ms"].as_f64().expect("p99") > 0.0, "{latency}");
}
