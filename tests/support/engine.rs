//! Starts the real `ringcast` binary for one test: a free loopback port, a fresh temporary
//! directory for the ingest socket, `--loops 2` unless told otherwise, and the `ready`
//! line parsed for the epoch.
//!
//! Owns: the child process, its stderr (drained by a thread so the engine never blocks
//! on a full pipe), and the temporary directory.
//!
//! Must never: signal a process it did not start, or wait without a deadline.
use std::ffi::OsString;
use std::fmt;
use std::io::{self, BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long the engine may take to print its `ready` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the engine may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

const READY_MARK: &str = "ringcast: ready: ";

/// The `ringcast` binary: `$RINGCAST_BIN`, else the one cargo built beside the test
/// executable's `deps/` directory.
///
/// # Panics
///
/// If neither exists.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("RINGCAST_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    // Test executables live in target/<profile>/deps/; binaries in target/<profile>/.
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("ringcast"));
    match bin {
        Some(bin) if bin.is_file() => bin,
        _ => panic!(
            "no ringcast binary at {bin:?} (nor RINGCAST_BIN set): \
             build it first: cargo build --release -p ringcast"
        ),
    }
}

/// The `ringcast-bench` binary beside [`binary`] (cargo builds it for
/// `bench/tests/cli.rs`).
///
/// # Panics
///
/// If it is not there.
pub fn bench_binary() -> PathBuf {
    let bin = binary().with_file_name("ringcast-bench");
    assert!(
        bin.is_file(),
        "no ringcast-bench at {bin:?}: build it first: cargo build --release -p ringcast-bench"
    );
    bin
}

/// Runs `cmd` to its end with its output captured, and returns what it printed; past
/// `secs` it is killed (by its own PID) and the test fails naming `what`.
///
/// # Panics
///
/// If it cannot be started, or runs past `secs`.
pub fn output_within(cmd: &mut Command, secs: u64, what: &str) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} ran past {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// A loopback address with a port nobody listens on, never the same twice in this
/// process, so that tests running in parallel cannot meet on one port.
///
/// The port is taken below the kernel's ephemeral range (32768 and up by default):
/// between this probe and the engine's own bind, an outgoing connection or a bind to
/// port 0 elsewhere (another engine's admin listener) can be handed any ephemeral port,
/// and once took the one probed here. Each process starts at its own offset in the
/// range, so test binaries running side by side rarely probe the same ports.
///
/// # Panics
///
/// If 1,000 ports in a row are in use or already given.
pub fn free_addr() -> SocketAddr {
    const LOW: u32 = 10_000;
    const SPAN: u32 = 32_768 - LOW;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..1_000 {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOW + start.wrapping_add(step) % SPAN).expect("below 32768");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return SocketAddr::from(([127, 0, 0, 1], port));
        }
    }
    panic!("1,000 ports in a row below the ephemeral range were in use");
}

/// A fresh directory under the system temp dir, removed with its contents on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates the directory.
    ///
    /// # Panics
    ///
    /// If it cannot be created, or its path is too long to hold a Unix socket path.
    pub fn new() -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        for _ in 0..100 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("ringcast-it-{}-{n}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    // sun_path holds 108 bytes; leave room for the socket's file name.
                    assert!(
                        path.as_os_str().len() < 80,
                        "temp dir {path:?} too long for a socket path"
                    );
                    return TempDir { path };
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("create {path:?}: {e}"),
            }
        }
        panic!("100 temp dir names in a row already existed");
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Why an engine did not become ready.
#[derive(Debug)]
pub struct StartError {
    /// Its exit status, or `None` if it was killed for not being ready in time.
    pub status: Option<ExitStatus>,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "ringcast exited with {status}")?,
            None => write!(f, "ringcast printed no ready line within {READY_TIMEOUT:?}")?,
        }
        write!(f, "; its stderr:\n{}", self.stderr)
    }
}

/// One running `ringcast serve`, killed on drop.
pub struct Engine {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The ingest socket publishers connect to.
    pub ingest: PathBuf,
    /// The admin address (`/healthz`, `/stats`) from the ready line.
    pub admin: SocketAddr,
    /// The epoch from the ready line: the prefix of every event id of this run.
    pub epoch: String,
    /// The process id of the running engine.
    pub pid: u32,
    /// The whole ready line.
    pub ready_line: String,
    args: Vec<OsString>,
    child: Child,
    stderr: Arc<Mutex<String>>,
    _dir: Option<TempDir>,
}

impl Engine {
    /// Starts `ringcast serve` on a free port with an ingest socket in a fresh temp dir,
    /// with `--loops 2` unless `extra_args` names `--loops`.
    ///
    /// # Panics
    ///
    /// If it does not print its ready line within [`READY_TIMEOUT`].
    pub fn start(extra_args: &[&str]) -> Engine {
        let dir = TempDir::new();
        let ingest = dir.path().join("ringcast.sock");
        let mut engine = Engine::try_start_on(free_addr(), &ingest, extra_args)
            .unwrap_or_else(|e| panic!("ringcast serve {extra_args:?} did not start: {e}"));
        engine._dir = Some(dir);
        engine
    }

    /// Starts `ringcast serve` on `addr` and `ingest` (a path the caller owns), with
    /// `--loops 2` unless `extra_args` names `--loops`.
    ///
    /// # Errors
    ///
    /// If the engine exits, or prints no ready line within [`READY_TIMEOUT`] (it is
    /// killed then).
    pub fn try_start_on(addr: SocketAddr, ingest: &Path, extra_args: &[&str]) -> Result<Engine, StartError> {
        Engine::try_start_with(addr, ingest, extra_args, |_| {})
    }

    /// As [`Engine::try_start_on`], with `prepare` applied to the command before it is
    /// spawned (an environment, a `pre_exec` hook).
    ///
    /// # Errors
    ///
    /// As [`Engine::try_start_on`].
    pub fn try_start_with(
        addr: SocketAddr,
        ingest: &Path,
        extra_args: &[&str],
        prepare: impl FnOnce(&mut Command),
    ) -> Result<Engine, StartError> {
        let mut args: Vec<OsString> = vec!["serve".into(), "--listen".into(), addr.to_string().into()];
        args.extend(["--ingest".into(), ingest.as_os_str().to_owned()]);
        if !extra_args.iter().any(|a| a.starts_with("--loops")) {
            args.extend(["--loops".into(), "2".into()]);
        }
        // Stopping drains connections over --drain-ms (30 s by default); tests stop fast.
        if !extra_args.iter().any(|a| a.starts_with("--drain-ms")) {
            args.extend(["--drain-ms".into(), "300".into()]);
        }
        // Each test engine gets its own admin port, read back from the ready line.
        if !extra_args
            .iter()
            .any(|a| *a == "--admin" || a.starts_with("--admin="))
        {
            args.extend(["--admin".into(), "127.0.0.1:0".into()]);
        }
        args.extend(extra_args.iter().map(OsString::from));
        let (child, stderr, ready_line) = spawn(&args, prepare)?;
        let epoch = parse_ready(&ready_line, addr, ingest);
        let admin = parse_admin(&ready_line);
        Ok(Engine {
            addr,
            admin,
            ingest: ingest.to_owned(),
            epoch,
            pid: child.id(),
            ready_line,
            args,
            child,
            stderr,
            _dir: None,
        })
    }

    /// The admin `/stats` document (JSON).
    pub fn stats(&self) -> String {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(self.admin).expect("connect to the admin address");
        conn.set_read_timeout(Some(READY_TIMEOUT)).expect("timeout");
        // The admin keeps HTTP/1.1 connections open; this one is read to its end.
        conn.write_all(b"GET /stats HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .expect("request /stats");
        let mut response = String::new();
        conn.read_to_string(&mut response).expect("read /stats");
        let (head, body) = response.split_once("\r\n\r\n").expect("a complete response");
        assert!(head.starts_with("HTTP/1.1 200"), "/stats answered {head}");
        body.to_owned()
    }

    /// The engine-wide total of counter `name` from `/stats`.
    ///
    /// # Panics
    ///
    /// If `/stats` has no such counter.
    pub fn counter(&self, name: &str) -> u64 {
        let stats = self.stats();
        let totals = stats.split_once("\"totals\":{").expect("totals in /stats").1;
        let key = format!("\"{name}\":");
        let value = totals
            .split_once(&key)
            .unwrap_or_else(|| panic!("no counter {name} in {stats}"))
            .1;
        let digits: String = value.chars().take_while(char::is_ascii_digit).collect();
        digits
            .parse()
            .unwrap_or_else(|e| panic!("counter {name} in {stats}: {e}"))
    }

    /// A figure of the `backplane` block of `/stats` (`"backplane":{..,"name":N}`).
    ///
    /// # Panics
    ///
    /// If `/stats` has no backplane, or no such figure.
    pub fn backplane_figure(&self, name: &str) -> u64 {
        let stats = self.stats();
        let section = stats
            .split_once("\"backplane\":{")
            .unwrap_or_else(|| panic!("no backplane in {stats}"))
            .1;
        let key = format!("\"{name}\":");
        let value = section
            .split_once(&key)
            .unwrap_or_else(|| panic!("no backplane figure {name} in {stats}"))
            .1;
        let digits: String = value.chars().take_while(char::is_ascii_digit).collect();
        digits
            .parse()
            .unwrap_or_else(|e| panic!("backplane figure {name} in {stats}: {e}"))
    }

    /// Everything the engine wrote to stderr so far.
    pub fn stderr(&self) -> String {
        lock(&self.stderr).clone()
    }

    /// Sends SIGTERM and waits for the engine to exit.
    ///
    /// # Panics
    ///
    /// If it does not exit within [`STOP_TIMEOUT`] (it is killed then).
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.child.try_wait().expect("try_wait on the engine") {
            return status;
        }
        sigterm(self.pid).expect("SIGTERM to the engine");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on the engine") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "ringcast did not exit within {STOP_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the engine with SIGTERM and starts it again with the same arguments, on
    /// the same port and ingest path. The new run has a new epoch.
    ///
    /// # Panics
    ///
    /// If the engine does not exit with status 0, or does not come back.
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(
            status.success(),
            "ringcast exited with {status} on SIGTERM; stderr:\n{}",
            self.stderr()
        );
        self.wait_port_closed();
        self.respawn("ringcast did not restart");
    }

    /// Kills the engine with SIGKILL, as a crash or the OOM killer would, and starts it
    /// again at once with the same arguments, on the same port and ingest path, as a
    /// supervisor does. Every client connection drops at the same moment; the new run has
    /// a new epoch. (The new engine itself waits for the dead one's listeners to close.)
    ///
    /// # Panics
    ///
    /// If the new engine does not print its ready line within [`READY_TIMEOUT`].
    pub fn crash_and_restart(&mut self) {
        self.kill();
        self.respawn("ringcast did not start after SIGKILL");
    }

    /// Starts the engine again with its arguments and takes the new run's ready line.
    fn respawn(&mut self, what: &str) {
        let (child, stderr, ready_line) = spawn(&self.args, |_| {}).unwrap_or_else(|e| panic!("{what}: {e}"));
        self.epoch = parse_ready(&ready_line, self.addr, &self.ingest);
        self.admin = parse_admin(&ready_line);
        self.pid = child.id();
        self.child = child;
        self.stderr = stderr;
        self.ready_line = ready_line;
    }

    /// Waits until nothing accepts on the engine's address. An exited engine's listening
    /// sockets can outlive it briefly (the kernel tears its io_uring instance down after
    /// exit); a new engine sharing the port with them (SO_REUSEPORT) would see some
    /// connections land on a socket about to close.
    fn wait_port_closed(&self) {
        let deadline = Instant::now() + STOP_TIMEOUT;
        while TcpStream::connect(self.addr).is_ok() {
            assert!(
                Instant::now() < deadline,
                "{} still accepts {STOP_TIMEOUT:?} after the engine exited",
                self.addr
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the engine with SIGKILL, as a crash would, and reaps it. Its sockets may
    /// outlive it briefly (see [`Engine::restart`]).
    ///
    /// # Panics
    ///
    /// If the signal cannot be sent or the process not reaped.
    pub fn kill(&mut self) -> ExitStatus {
        if let Ok(None) = self.child.try_wait() {
            self.child.kill().expect("SIGKILL to the engine");
        }
        self.child.wait().expect("reap the engine")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait on the engine").is_none()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGKILL: the child is not reaped yet, so its pid names no other process.
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

type Spawned = (Child, Arc<Mutex<String>>, String);

/// Runs the binary with `args` and waits for its ready line.
fn spawn(args: &[OsString], prepare: impl FnOnce(&mut Command)) -> Result<Spawned, StartError> {
    let mut command = Command::new(binary());
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    prepare(&mut command);
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", binary()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let (ready_tx, ready_rx) = mpsc::channel();
    let pipe = child.stderr.take().expect("piped stderr");
    let log = Arc::clone(&stderr);
    thread::spawn(move || {
        // Ends at EOF, when the engine exits; the ready sender is dropped then.
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            lock(&log).push_str(&line);
            lock(&log).push('\n');
            if line.starts_with(READY_MARK) {
                let _ = ready_tx.send(line);
            }
        }
    });
    match ready_rx.recv_timeout(READY_TIMEOUT) {
        Ok(line) => Ok((child, stderr, line)),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(StartError {
                status: None,
                stderr: lock(&stderr).clone(),
            })
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // Stderr reached EOF: the process is exiting; reap it, bounded.
            let deadline = Instant::now() + STOP_TIMEOUT;
            let status = loop {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    break Some(status);
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                thread::sleep(Duration::from_millis(5));
            };
            Err(StartError {
                status,
                stderr: lock(&stderr).clone(),
            })
        }
    }
}

/// Checks the ready line names `addr` and `ingest` and returns its epoch:
/// `ringcast: ready: clients on ADDR (...), ingest PATH, epoch HEX`.
fn parse_admin(line: &str) -> SocketAddr {
    let rest = line
        .split_once(", admin ")
        .unwrap_or_else(|| panic!("ready line names no admin address: {line}"))
        .1;
    let addr = rest.split_once(',').map_or(rest, |(a, _)| a);
    addr.parse()
        .unwrap_or_else(|e| panic!("admin address {addr:?} in the ready line: {e}"))
}

fn parse_ready(line: &str, addr: SocketAddr, ingest: &Path) -> String {
    assert!(
        line.contains(&format!("clients on {addr}")),
        "ready line does not name {addr}: {line}"
    );
    assert!(
        line.contains(&format!("ingest {}", ingest.display())),
        "ready line does not name {}: {line}",
        ingest.display()
    );
    let epoch = line
        .rsplit_once(", epoch ")
        .map(|(_, epoch)| epoch.trim())
        .unwrap_or_else(|| panic!("ready line has no epoch: {line}"));
    assert!(
        !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_hexdigit()),
        "ready line's epoch is not hex: {line}"
    );
    epoch.to_owned()
}

fn lock(log: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    log.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends SIGTERM to `pid`.
fn sigterm(pid: u32) -> io::Result<()> {
    // The support crate has no libc dependency (dev-dependencies do not reach a library),
    // so kill(2) is declared here; std links libc already.
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    const SIGTERM: i32 = 15;
    let pid = i32::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) takes two integers and touches no memory of ours. `pid` is a child
    // this process has not reaped, so it cannot name any other process.
    let rc = unsafe { kill(pid, SIGTERM) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One request to an admin address on its own connection, read to the close; returns the
/// status and the body.
///
/// # Panics
///
/// If the connection or the exchange fails, or the answer has no status line.
pub fn admin_request(addr: SocketAddr, method: &str, target: &str, body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut conn = TcpStream::connect(addr).expect("connect to the admin address");
    conn.set_read_timeout(Some(READY_TIMEOUT)).expect("timeout");
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).expect("send the request head");
    conn.write_all(body).expect("send the request body");
    let mut response = String::new();
    conn.read_to_string(&mut response).expect("read the answer");
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Checks `metrics` with `promtool check metrics` (Prometheus's own linter).
///
/// # Panics
///
/// If promtool is missing or finds fault.
pub fn assert_promtool_accepts(metrics: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; .ci/run installs it)");
    promtool
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(metrics.as_bytes())
        .expect("feed promtool");
    let out = promtool.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
