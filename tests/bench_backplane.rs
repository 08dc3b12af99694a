//! `ringcast-bench backplane` at a tiny size: it starts its own nats-server and three
//! ringcast nodes, measures acknowledged publishes against raw JetStream at two windows
//! and cross-node latency against a single node, and reports every delivery.
use std::process::Command;

use ringcast_tests::engine::{bench_binary, binary, output_within};

#[test]
fn backplane_reports_throughput_against_raw_jetstream_and_latency_across_nodes() {
    let mut cmd = Command::new(bench_binary());
    cmd.arg("backplane")
        .arg("--engine-bin")
        .arg(binary())
        .args([
            "--events",
            "2000",
            "--windows",
            "1,100",
            "--runs",
            "1",
            "--warmup",
            "100",
        ])
        .args(["--subscribers", "20", "--rates", "200", "--latency-events", "100"])
        .args(["--timeout-secs", "30", "--json"]);
    // Killed past its time, its nats-server and nodes die with it (PR_SET_PDEATHSIG).
    let output = output_within(&mut cmd, 90, "ringcast-bench backplane");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
    assert!(output.status.success(), "{report}\n{stderr}");
    let throughput = report["throughput"].as_array().expect("throughput");
    let windows: Vec<u64> = throughput
        .iter()
        .map(|t| t["window"].as_u64().expect("W"))
        .collect();
    assert_eq!(windows, [1, 100]);
    // At most 200 x W events per run: 200 at W = 1, all 2,000 at W = 100.
    assert_eq!(throughput[0]["events"], 200, "{report}");
    assert_eq!(throughput[1]["events"], 2000, "{report}");
    for t in throughput {
        for side in ["raw", "raw_atomic_batches", "ringcast"] {
            let rate = t[side]["per_sec_median"].as_f64().expect("rate");
            assert!(rate > 0.0 && rate.is_finite(), "{side}: {t}");
        }
        assert!(t["ratio"].as_f64().expect("ratio") > 0.0, "{t}");
        assert!(t["meets_target"].is_boolean(), "{t}");
    }
    // Node A stored every acknowledged event through JetStream: the warm-up (100) and
    // the two runs (200 + 2,000).
    assert_eq!(report["node_a_backplane"]["published"], 2300, "{report}");
    let cells = report["latency"].as_array().expect("latency");
    let setups: Vec<&str> = cells
        .iter()
        .map(|c| c["setup"].as_str().expect("setup"))
        .collect();
    assert_eq!(setups, ["cross_node", "single_node"]);
    for cell in cells {
        // 100 events to 20 subscribers, every one delivered, in order.
        assert_eq!(cell["expected"], 2000, "{cell}");
        assert_eq!(cell["delivered"], 2000, "{cell}");
        assert_eq!(cell["disorder"], 0, "{cell}");
        assert_eq!(cell["latency"]["samples"], 2000, "{cell}");
        assert!(cell["latency"]["p99_ms"].as_f64().expect("p99") > 0.0, "{cell}");
    }
}
