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

/// Under a seccomp filter that refuses `io_uring_setup` (what Docker's default profile
/// does), the engine must exit at once and name the cause and the fix.
#[cfg(target_arch = "x86_64")]
#[test]
fn blocked_io_uring_is_reported_with_cause_and_fix() {
    use std::os::unix::process::CommandExt;

    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:1",
        "--ingest",
        "/nonexistent/ringcast.sock",
    ]);
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // async-signal-safe prctl(2) with a filter that lives on its stack for the call.
    unsafe {
        cmd.pre_exec(|| {
            const SYS_IO_URING_SETUP: u32 = 425;
            let filter = [
                // A = seccomp_data.nr
                libc::sock_filter {
                    code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
                    jt: 0,
                    jf: 0,
                    k: 0,
                },
                libc::sock_filter {
                    code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 1,
                    k: SYS_IO_URING_SETUP,
                },
                libc::sock_filter {
                    code: (libc::BPF_RET | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
                },
                libc::sock_filter {
                    code: (libc::BPF_RET | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ALLOW,
                },
            ];
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut _,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const _) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "the engine must not run without io_uring");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("seccomp") && err.contains("io_uring_setup"),
        "cause not named: {err}"
    );
    assert!(err.contains("allows io_uring_setup"), "fix not named: {err}");
}

/// tuning/ringcast.toml is the engine's own commented example, so it cannot drift from
/// the flags; regenerate it with `ringcast config-example > tuning/ringcast.toml`.
#[test]
fn the_example_config_in_tuning_is_current_and_valid() {
    let out = Command::new(BIN).arg("config-example").output().unwrap();
    let generated = String::from_utf8(out.stdout).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tuning/ringcast.toml");
    let committed = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        committed, generated,
        "tuning/ringcast.toml is stale: run `ringcast config-example > tuning/ringcast.toml`"
    );
    let out = Command::new(BIN).args(["check-config", path]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn check_config_refuses_a_bad_key_and_a_bad_value() {
    let dir = std::env::temp_dir().join(format!("ringcast-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (text, says) in [
        ("histroy-events = 5\n", "unknown key `histroy-events`"),
        ("ring-slots = 1000\n", "--ring-slots 1000: must be a power of two"),
        ("history-events = \"lots\"\n", "'lots'"),
    ] {
        let file = dir.join("bad.toml");
        std::fs::write(&file, text).unwrap();
        let out = Command::new(BIN).arg("check-config").arg(&file).output().unwrap();
        assert!(!out.status.success(), "{text} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{text}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
