//! A test script in a child process (Node, driving Chromium or a client library): its
//! stdout lines arrive on a channel, its stderr is collected as it is written, it is
//! answered on stdin, and it ends with one `RESULT {flat JSON}` line. Every wait is
//! bounded by one deadline; the process is killed on drop if still running.
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::json::{parse_flat_object, FlatObject};

/// One running script.
pub struct Script {
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    timeout: Duration,
    deadline: Instant,
}

impl Script {
    /// Spawns `command` (named `what` in messages) with piped stdio; everything it does
    /// must be over within `timeout`.
    ///
    /// # Panics
    ///
    /// If it cannot be spawned: with `hint` (what to install).
    pub fn spawn(what: String, mut command: Command, timeout: Duration, hint: &str) -> Script {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}; {hint}"));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        // Both readers end at EOF, when the script exits or is killed.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let log = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                lock(&log).push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Script {
            what,
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
            timeout,
            deadline: Instant::now() + timeout,
        }
    }

    /// The next stdout line starting with `prefix`, without it; other lines are logged
    /// and skipped.
    ///
    /// # Panics
    ///
    /// If the script exits or the deadline passes first: with the script's stderr.
    pub fn expect_line(&mut self, prefix: &str) -> String {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_owned();
                    }
                    eprintln!("{}: {line}", self.what);
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.kill();
                    panic!(
                        "{}: no {prefix:?} line within {:?}\n{}",
                        self.what,
                        self.timeout,
                        self.stderr()
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = show(self.wait());
                    panic!(
                        "{} exited ({status}) before printing {prefix:?}:\n{}",
                        self.what,
                        self.stderr()
                    );
                }
            }
        }
    }

    /// Writes `line` to the script's stdin.
    ///
    /// # Panics
    ///
    /// If the write fails.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("the script's stdin");
        writeln!(stdin, "{line}")
            .unwrap_or_else(|e| panic!("write to {}: {e}\n{}", self.what, self.stderr()));
    }

    /// Reads the RESULT line and checks the script exits with status 0 in time.
    ///
    /// # Panics
    ///
    /// If it does not, or the line is not flat JSON.
    pub fn finish(mut self) -> FlatObject {
        let json = self.expect_line("RESULT ");
        let status = self.wait();
        assert!(
            status.is_some_and(|s| s.success()),
            "{} exited with {}:\n{}",
            self.what,
            show(status),
            self.stderr()
        );
        let result = parse_flat_object(&json)
            .unwrap_or_else(|e| panic!("{}: RESULT is not flat JSON: {e}\n{json}", self.what));
        eprintln!("{}: {result:?}", self.what);
        result
    }

    /// Waits, bounded by the deadline, for the script to exit; kills it past that and
    /// returns `None`.
    fn wait(&mut self) -> Option<ExitStatus> {
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on the script") {
                // Give the stderr reader a moment to see EOF and store what it read.
                thread::sleep(Duration::from_millis(50));
                return Some(status);
            }
            if Instant::now() >= self.deadline {
                self.kill();
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the script (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        // The child is not reaped before this, so its pid names no other process.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What the script wrote to stderr so far, headed with its name.
    pub fn stderr(&self) -> String {
        format!("--- stderr of {} ---\n{}", self.what, lock(&self.stderr))
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

fn show(status: Option<ExitStatus>) -> String {
    status.map_or_else(
        || "no exit before the deadline, killed".to_owned(),
        |s| s.to_string(),
    )
}

fn lock(log: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    log.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
