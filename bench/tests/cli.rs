//! The `ringcast-bench` binary's command line: every subcommand is there, and a run it
//! cannot make is refused with exit status 2 and the reason, before any socket opens.
//!
//! Being an integration test of this package, it also makes `cargo test --workspace`
//! build the binary that the root package's tests (`tests/bench_*.rs`) drive.
use std::process::Command;

fn bench(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast-bench"))
        .args(args)
        .output()
        .expect("run ringcast-bench");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_every_subcommand() {
    let (code, stdout, _) = bench(&["--help"]);
    assert_eq!(code, Some(0));
    for sub in ["hold", "fanout", "churn", "storm", "slow", "compare", "check"] {
        assert!(stdout.contains(sub), "{sub} missing from:\n{stdout}");
    }
    assert!(
        !stdout.contains("hold-worker"),
        "the worker subcommand is internal:\n{stdout}"
    );
}

#[test]
fn impossible_holds_are_refused_with_the_reason() {
    let own = std::process::id().to_string();
    let cases: [(&[&str], &str); 4] = [
        (&["--conns", "10,5"], "each step must be larger"),
        (&["--conns", "10", "--per-ring", "1000000"], "--per-ring"),
        (&["--conns", "10", "--rings", "0"], "--rings"),
        (&["--conns", "100000", "--sources", "1"], "--sources"),
    ];
    for (extra, reason) in cases {
        let mut args = vec!["hold", "--target", "127.0.0.1:9", "--pid", &own];
        args.extend_from_slice(extra);
        let (code, _, stderr) = bench(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(reason),
            "{args:?}: expected {reason:?} in {stderr}"
        );
    }
}

#[test]
fn check_names_what_a_host_lacks() {
    // A hundred million connections need more memory and file table than any host
    // this runs on has: the answer says what is lacking.
    let (code, stdout, _) = bench(&["check", "--connections", "100000000", "--loops", "1"]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("LACK"), "{stdout}");
}
