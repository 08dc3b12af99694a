//! Where io_uring is refused, `--driver auto` says why in one line and serves on epoll,
//! and `--driver io-uring` exits naming the cause and the fix. The refusal is real: the
//! engine runs under a seccomp filter, installed between fork and exec, that fails
//! `io_uring_setup`, `io_uring_enter` and `io_uring_register` as container runtimes'
//! default profiles do (Docker's and containerd's with `EPERM`; sandboxes such as gVisor
//! report `ENOSYS`). The filter applies to every thread of the engine, so anything that
//! still reached for io_uring would fail to start or to serve.
#![cfg(target_arch = "x86_64")]

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use ringcast_tests::engine::{free_addr, Engine, TempDir};
use ringcast_tests::ingest::Publisher;
use ringcast_tests::sse::SseClient;
use ringcast_tests::wsclient::RawWs;

/// `AUDIT_ARCH_X86_64` from `<linux/audit.h>`: `EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// A classic-BPF seccomp program failing the three io_uring syscalls with `errno` and
/// allowing every other syscall; a foreign architecture is killed, as seccomp(2) advises.
fn io_uring_refused(errno: i32) -> Vec<libc::sock_filter> {
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: u16::try_from(code).expect("BPF opcode"),
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: i64, jt: u8, jf: u8| libc::sock_filter {
        code: u16::try_from(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K).expect("BPF opcode"),
        jt,
        jf,
        k: u32::try_from(k).expect("syscall number"),
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let errno = u32::try_from(errno).expect("errno") & libc::SECCOMP_RET_DATA;
    vec![
        // seccomp_data.arch is at offset 4, seccomp_data.nr at offset 0.
        stmt(load, 4),
        jeq(i64::from(AUDIT_ARCH_X86_64), 1, 0),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(load, 0),
        jeq(libc::SYS_io_uring_setup, 3, 0),
        jeq(libc::SYS_io_uring_enter, 2, 0),
        jeq(libc::SYS_io_uring_register, 1, 0),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ERRNO | errno),
    ]
}

/// Makes `command`'s process run under [`io_uring_refused`]`(errno)`.
fn refuse_io_uring(command: &mut Command, errno: i32) {
    let filter = io_uring_refused(errno);
    // SAFETY: the hook runs in the forked child before exec and calls only prctl(2), which
    // is async-signal-safe; `filter` was built before the fork and is only read. The
    // program stays valid for the call, after which the kernel holds its own copy.
    unsafe {
        command.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: u16::try_from(filter.len()).expect("short program"),
                filter: filter.as_ptr().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                std::ptr::addr_of!(prog),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Starts an engine under the filter; the driver comes from `args`, never the environment.
fn start_refused(errno: i32, args: &[&str]) -> (Result<Engine, ringcast_tests::engine::StartError>, TempDir) {
    let dir = TempDir::new();
    let ingest = dir.path().join("ringcast.sock");
    let engine = Engine::try_start_with(free_addr(), &ingest, args, |command| {
        command.env_remove("RINGCAST_DRIVER");
        refuse_io_uring(command, errno);
    });
    (engine, dir)
}

/// The engine serves SSE and WebSocket subscribers and the ingest socket.
fn assert_serves(engine: &Engine) {
    let mut sse = SseClient::subscribe(engine.addr, &["fallback"]);
    let mut ws = RawWs::connect(engine.addr, "/ws?topic=fallback", &[]);
    let mut publisher = Publisher::connect(&engine.ingest);
    let ids: Vec<String> = (0..20)
        .map(|i| publisher.publish("fallback", format!("event {i}").as_bytes()))
        .collect();
    let events = sse.events_until(20, Duration::from_secs(10));
    for (i, event) in events.iter().enumerate() {
        assert_eq!(
            (&event.id, event.data.as_str()),
            (&ids[i], format!("event {i}").as_str()),
            "SSE event {i}"
        );
    }
    for i in 0..20 {
        let frame = ws
            .next_frame(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("WebSocket frame {i}: {e:?}"));
        assert!(
            frame.text().contains(&format!("event {i}")),
            "WebSocket frame {i}: {}",
            frame.text()
        );
    }
}

/// Under a filter failing io_uring with `errno`, `auto` logs exactly one line saying it
/// runs on epoll because of `why`, reports epoll in its ready line, and serves.
fn assert_falls_back(errno: i32, why: &str) {
    let (engine, _dir) = start_refused(errno, &["--driver", "auto"]);
    let engine = engine.unwrap_or_else(|e| panic!("auto did not fall back to epoll: {e}"));
    assert!(
        engine.ready_line.contains(", epoll)"),
        "ready line: {}",
        engine.ready_line
    );
    let stderr = engine.stderr();
    let notices: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("io_uring is not available, running on epoll: "))
        .collect();
    assert_eq!(notices.len(), 1, "one line naming why, got: {stderr}");
    assert!(notices[0].contains(why), "the line names {why:?}: {}", notices[0]);
    assert_serves(&engine);
}

#[test]
fn auto_under_a_seccomp_profile_that_refuses_io_uring_says_why_and_serves_on_epoll() {
    assert_falls_back(libc::EPERM, "a seccomp profile blocks io_uring");
}

#[test]
fn auto_on_a_kernel_without_io_uring_says_so_and_serves_on_epoll() {
    assert_falls_back(libc::ENOSYS, "this kernel has no io_uring");
}

#[test]
fn io_uring_under_the_same_profile_exits_naming_the_cause_and_the_fix() {
    let (engine, _dir) = start_refused(libc::EPERM, &["--driver", "io-uring"]);
    let err = match engine {
        Ok(engine) => panic!(
            "--driver io-uring started under a profile refusing io_uring: {}",
            engine.ready_line
        ),
        Err(err) => err,
    };
    assert!(err.status.is_some_and(|s| !s.success()), "{err}");
    assert!(
        err.stderr.contains("seccomp profile blocks io_uring"),
        "the cause: {err}"
    );
    assert!(err.stderr.contains("--security-opt seccomp="), "the fix: {err}");
    assert!(
        !err.stderr.contains("running on epoll"),
        "no fallback was asked for: {err}"
    );
}

#[test]
fn auto_without_a_filter_runs_on_io_uring_here() {
    let dir = TempDir::new();
    let ingest = dir.path().join("ringcast.sock");
    let engine = Engine::try_start_with(free_addr(), &ingest, &["--driver", "auto"], |command| {
        command.env_remove("RINGCAST_DRIVER");
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        engine.ready_line.contains(", io-uring)"),
        "ready line: {}",
        engine.ready_line
    );
    assert!(
        !engine.stderr().contains("running on epoll"),
        "{}",
        engine.stderr()
    );
}
