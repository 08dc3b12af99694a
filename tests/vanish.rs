//! A subscriber that vanishes without a FIN or a RST (a host powered off, a cable pulled):
//! the engine must still find it, through its heartbeats going unacknowledged until the
//! kernel gives up (TCP_USER_TIMEOUT, ETIMEDOUT), and free the connection.
//!
//! The client runs in a network namespace of its own behind a veth pair on a private /30
//! that exists only for this test; taking the namespace's end of the pair down makes every
//! packet to it disappear silently. This needs root and iproute2: without them the test
//! fails and says so, because a test that skips itself unseen is a test that never runs.
//!
//! Must never: leave the namespace, the veth pair or the client process behind, even when
//! an assertion fails (a guard removes them on drop), or touch any interface it did not
//! create.
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringcast_tests::engine::{Engine, TempDir};

/// TCP_USER_TIMEOUT given to the engine.
const USER_TIMEOUT: Duration = Duration::from_millis(1500);
/// The heartbeat interval given to the engine.
const HEARTBEAT: Duration = Duration::from_millis(300);

/// Runs `ip args`, panicking with its stderr if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run `ip {}`: {e} (this test needs iproute2)", args.join(" ")));
    assert!(
        out.status.success(),
        "`ip {}` failed with {}: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A network namespace joined to this one by a veth pair, and the client running in it;
/// all removed on drop.
struct Island {
    ns: String,
    host_veth: String,
    ns_veth: String,
    host_ip: Ipv4Addr,
    client: Option<Child>,
}

impl Island {
    /// Creates the namespace `rc-vanish-<pid>`, the pair `rcvh<n>`/`rcvn<n>`, and the
    /// addresses 10.213.<x>.1/30 (here) and 10.213.<x>.2/30 (there), both ends up.
    ///
    /// # Panics
    ///
    /// If not root, or any `ip` command fails; what was created is removed again.
    fn create() -> Island {
        // SAFETY: geteuid(2) takes nothing and cannot fail.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "tests/vanish.rs needs root (network namespaces and veth pairs); it runs as root in CI"
        );
        let pid = std::process::id();
        let x = (pid % 250) as u8;
        let island = Island {
            ns: format!("rc-vanish-{pid}"),
            host_veth: format!("rcvh{}", pid % 10000),
            ns_veth: format!("rcvn{}", pid % 10000),
            host_ip: Ipv4Addr::new(10, 213, x, 1),
            client: None,
        };
        ip(&["netns", "add", &island.ns]);
        // From here on, a failure drops `island`, which removes what exists.
        let (ns, host, peer) = (
            island.ns.clone(),
            island.host_veth.clone(),
            island.ns_veth.clone(),
        );
        ip(&[
            "link", "add", &host, "type", "veth", "peer", "name", &peer, "netns", &ns,
        ]);
        ip(&["addr", "add", &format!("{}/30", island.host_ip), "dev", &host]);
        ip(&["link", "set", &host, "up"]);
        let ns_ip = format!("10.213.{x}.2/30");
        ip(&["netns", "exec", &ns, "ip", "addr", "add", &ns_ip, "dev", &peer]);
        ip(&["netns", "exec", &ns, "ip", "link", "set", &peer, "up"]);
        island
    }

    /// A free port on the host end's address.
    fn free_addr(&self) -> SocketAddr {
        let listener =
            TcpListener::bind(SocketAddrV4::new(self.host_ip, 0)).expect("bind the host end's address");
        listener.local_addr().expect("local_addr")
    }

    /// Starts `curl -sN` inside the namespace on `url`; its output collects in the buffer
    /// returned.
    fn spawn_client(&mut self, url: &str) -> Arc<Mutex<Vec<u8>>> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "curl", "-sN", url])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn curl in the namespace (this test needs curl)");
        let mut pipe = child.stdout.take().expect("piped stdout");
        self.client = Some(child);
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&out);
        // Ends at EOF, when curl exits (at the latest when the guard kills it).
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("client output").extend_from_slice(&chunk[..n]);
            }
        });
        out
    }

    /// Takes the namespace's end down: from now on packets to the client vanish.
    fn cut(&self) {
        ip(&[
            "netns",
            "exec",
            &self.ns,
            "ip",
            "link",
            "set",
            &self.ns_veth,
            "down",
        ]);
    }
}

impl Drop for Island {
    fn drop(&mut self) {
        if let Some(mut child) = self.client.take() {
            // SIGKILL to our own unreaped child (`ip netns exec` execs curl in place).
            let _ = child.kill();
            let _ = child.wait();
        }
        // Errors are ignored: after a failed setup some of these do not exist.
        for args in [
            vec!["link", "del", self.host_veth.as_str()],
            vec!["netns", "del", self.ns.as_str()],
        ] {
            let _ = Command::new("ip")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Waits until `out` holds `needle` after byte `from`; returns where it ends.
fn wait_for(out: &Mutex<Vec<u8>>, from: usize, needle: &[u8], timeout: Duration) -> Option<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        {
            let out = out.lock().expect("client output");
            if let Some(at) = out
                .get(from..)
                .and_then(|b| b.windows(needle.len()).position(|w| w == needle))
            {
                return Some(from + at + needle.len());
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_client_that_vanishes_silently_is_reaped() {
    let mut island = Island::create();
    let addr = island.free_addr();
    let dir = TempDir::new();
    let engine = Engine::try_start_on(
        addr,
        &dir.path().join("ringcast.sock"),
        &[
            "--heartbeat-ms",
            "300",
            "--tcp-user-timeout-ms",
            "1500",
            "--write-stall-ms",
            "5000",
        ],
    )
    .unwrap_or_else(|e| panic!("ringcast did not start on {addr}: {e}"));
    let out = island.spawn_client(&format!("http://{addr}/sse?topic=v"));

    // The stream is open and alive: its retry field, then a heartbeat.
    let text =
        |out: &Mutex<Vec<u8>>| String::from_utf8_lossy(&out.lock().expect("client output")).into_owned();
    let after_retry = wait_for(&out, 0, b"retry: ", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("curl in the namespace got no retry field: {:?}", text(&out)));
    wait_for(&out, after_retry, b"\n:\n\n", HEARTBEAT * 7).unwrap_or_else(|| {
        panic!(
            "no heartbeat within {:?} of the stream opening (--heartbeat-ms 300): {:?}; stats: {}",
            HEARTBEAT * 7,
            text(&out),
            engine.stats()
        )
    });
    assert_eq!(engine.counter("open"), 1, "{}", engine.stats());

    island.cut();
    let cut = Instant::now();
    let limit = Duration::from_secs(10);
    while engine.counter("open") > 0 {
        assert!(
            cut.elapsed() < limit,
            "the vanished client still held its connection {limit:?} after the cut; stats: {}",
            engine.stats()
        );
        thread::sleep(Duration::from_millis(50));
    }
    let reaped = cut.elapsed();
    let (timeouts, stalled) = (engine.counter("tcp_timeouts"), engine.counter("stalled"));
    assert!(
        timeouts + stalled >= 1,
        "closed, but counted neither as tcp_timeouts nor as stalled: {}",
        engine.stats()
    );
    // Earlier than the user timeout would mean the client did not vanish silently (an
    // error or a reset reached the engine); later than a few heartbeats past it means the
    // engine did not notice the kernel giving up.
    assert!(
        reaped + Duration::from_millis(100) >= USER_TIMEOUT
            && reaped <= USER_TIMEOUT + HEARTBEAT * 3 + Duration::from_secs(2),
        "reaped {reaped:?} after the cut; TCP_USER_TIMEOUT {USER_TIMEOUT:?}, heartbeat {HEARTBEAT:?}"
    );
}
