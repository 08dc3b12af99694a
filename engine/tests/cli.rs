//! The command line: every flag is documented, and bad values are refused with a reason.
//! (This test also makes `cargo test` build the `ringcast` binary that the workspace's
//! integration tests in `/tests` start.)
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ringcast");

#[test]
fn help_documents_every_serve_flag() {
    let out = Command::new(BIN).args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--ingest",
        "--loops",
        "--max-conns-per-loop",
        "--history-events",
        "--history-bytes",
        "--history-age-secs",
        "--payload-max",
    ] {
        assert!(help.contains(flag), "serve --help lacks {flag}:\n{help}");
    }
    let out = Command::new(BIN).args(["publish", "--help"]).output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in ["--ingest", "--event", "--key", "TOPIC", "DATA"] {
        assert!(help.contains(flag), "publish --help lacks {flag}:\n{help}");
    }
}

#[test]
fn invalid_values_are_refused_with_the_flag_named() {
    let out = Command::new(BIN)
        .args(["serve", "--loops", "0", "--ingest", "/nonexistent/x.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--loops 0"), "{err}");
    let out = Command::new(BIN)
        .args(["serve", "--ring-slots", "1000"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("power of two"));
}

#[test]
fn publish_without_an_engine_says_where_it_looked() {
    let out = Command::new(BIN)
        .args(["publish", "--ingest", "/nonexistent/ringcast.sock", "t", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/ringcast.sock"), "{err}");
}
