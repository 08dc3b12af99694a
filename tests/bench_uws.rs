//! `ringcast-bench compare --transport ws` end to end with real processes: uWebSockets.js
//! (`bench/peers/uws/server.js`, the npm package pinned in its lockfile; `.ci/run`
//! installs it), the kernel-only reference server and ringcast, each measured for idle
//! memory and fan-out over WebSockets with publishes kept in flight. Small N, seconds.
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ringcast_tests::engine::{bench_binary, free_addr, output_within, Engine};

/// A server process this test started; killed (by its own PID) when dropped.
struct Peer {
    child: Child,
    addr: String,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` and waits (at most 10 s) for a stdout line containing `listening`.
fn start(mut cmd: Command, addr: String) -> Peer {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the peer");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("listening") {
                let _ = tx.send(());
            }
        }
    });
    let peer = Peer { child, addr };
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the peer said `listening` within 10 s");
    peer
}

fn uws() -> Peer {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/peers/uws");
    assert!(
        dir.join("node_modules/uwebsockets/package.json").is_file(),
        "uwebsockets is not installed: run .ci/run, or (cd bench/peers/uws && npm ci)"
    );
    let port = free_addr().port();
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("server.js")).arg(port.to_string());
    start(cmd, format!("127.0.0.1:{port}"))
}

fn kernel_ref() -> Peer {
    let port = free_addr().port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(bench_binary());
    cmd.args(["ws-ref-server", "--listen", &addr, "--max-secs", "120"]);
    start(cmd, addr)
}

/// Runs `compare` with `extra` flags and returns its JSON report.
fn compare(server: &str, target: &str, pid: u32, extra: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(bench_binary());
    cmd.args(["compare", "--server", server, "--transport", "ws"])
        .args(["--target", target, "--pid", &pid.to_string()])
        .args(["--idle", "100,200", "--rate", "2000", "--settle-secs", "1"])
        .args(["--fast", "40", "--events", "300", "--runs", "1", "--bytes", "128"])
        .args(["--in-flight", "8", "--timeout-secs", "20", "--json"])
        .args(extra);
    let output = output_within(&mut cmd, 60, "ringcast-bench compare");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert!(output.status.success(), "{report}");
    report
}

/// Every idle step held all it asked for and cost some memory; every fan-out delivery
/// arrived (30 events to 40 subscribers in the warm-up, then 300 x 40 measured).
fn check(report: &serde_json::Value, server: &str) {
    assert_eq!(report["server"], server, "{report}");
    assert_eq!(report["transport"], "ws", "{report}");
    let steps = report["idle_steps"].as_array().expect("idle steps");
    assert_eq!(steps.len(), 2, "{report}");
    for (step, want) in steps.iter().zip([100, 200]) {
        assert_eq!(step["held"], want, "{step}");
        assert!(
            step["bytes_per_conn"].as_f64().is_some_and(|b| b > 0.0),
            "{server}: idle WebSockets cost nothing? {step}"
        );
    }
    let fan = &report["fanout"];
    assert_eq!(fan["held"], 40, "{fan}");
    let run = &fan["runs"][0];
    assert_eq!(run["expected"], 12_000, "{run}");
    assert_eq!(run["delivered"], 12_000, "{server}: {run}");
    assert_eq!(run["lost"], 0, "{run}");
    assert_eq!(run["gap_notices"], 0, "{run}");
    assert!(fan["median_deliveries_per_sec"].as_f64().expect("rate") > 0.0);
    assert!(fan["latency"]["samples"].as_u64() == Some(12_000), "{fan}");
}

#[test]
fn compare_measures_uws_the_kernel_reference_and_ringcast_over_websockets() {
    let peer = uws();
    let report = compare("uws", &peer.addr, peer.child.id(), &[]);
    check(&report, "uws");
    drop(peer);

    let peer = kernel_ref();
    let report = compare("kernel", &peer.addr, peer.child.id(), &[]);
    check(&report, "kernel");
    drop(peer);

    let engine = Engine::start(&["--ws-ping-ms", "600000"]);
    let ingest = engine.ingest.to_str().expect("utf-8 path").to_owned();
    let report = compare(
        "ringcast",
        &engine.addr.to_string(),
        engine.pid,
        &["--ingest", &ingest],
    );
    check(&report, "ringcast");
}

#[test]
fn uws_speaks_only_websockets() {
    let peer = uws();
    let output = Command::new(bench_binary())
        .args(["compare", "--server", "uws", "--target", &peer.addr])
        .args([
            "--pid",
            &peer.child.id().to_string(),
            "--idle",
            "1",
            "--fast",
            "0",
        ])
        .output()
        .expect("run compare");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("only --transport ws"), "{stderr}");
}
