//! The client processes of `storm`: each holds a share of the subscribers (a process
//! holds at most `RLIMIT_NOFILE` sockets), drops and reconnects them when told, and
//! classifies each one's ids once it is given the published sequence. [`Fleet`] is the
//! coordinator's side: it spawns them and speaks their line protocol.
//!
//! ```text
//! worker -> coordinator        coordinator -> worker
//!   ready <connect_ms>           drop
//!   | failed <why>               finish <seq>,<seq>,...
//!   dropped <events_before>
//!   live <all_ms|-> <heads_ms|->
//!   result <json>
//! ```
//!
//! Must never: outlive its coordinator (its stdin ending ends it) or wait without a
//! bound (every phase has the `--timeout-secs` deadline).

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddrV4;
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use crate::storm::{classify, request, Class, Found, Mark, StormArgs, Sub, CLASSES};
use crate::sys::Epoll;

/// Bytes read per `recv`.
const READ_BYTES: usize = 64 * 1024;
/// Longest `epoll_wait`.
const WAIT_MS: i32 = 20;
/// The token of the worker's stdin in its epoll set.
const STDIN_TOKEN: u64 = u64::MAX;
/// How long a worker waits for its subscribers' last events after `finish`.
const DRAIN: Duration = Duration::from_secs(5);
/// Examples of bad subscribers each worker reports.
const BAD_MAX: usize = 100;

/// Arguments of the hidden `storm-worker` subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    #[arg(long)]
    pub target: String,
    #[arg(long)]
    pub topic: String,
    #[arg(long)]
    pub conns: usize,
    /// The global index of this worker's first subscriber (for its source address).
    #[arg(long)]
    pub start_index: u64,
    #[arg(long)]
    pub sources: u32,
    #[arg(long)]
    pub timeout_secs: u64,
    #[arg(long)]
    pub pause_ms: u64,
    #[arg(long)]
    pub no_resume: bool,
}

/// The coordinator's handle on its client processes. Dropping it kills any still running.
pub struct Fleet {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    lines: Receiver<(usize, Option<String>)>,
    /// Per worker: lines received and not yet collected, and whether its output ended.
    pending: Vec<VecDeque<String>>,
    ended: Vec<bool>,
}

impl Fleet {
    /// Spawns `--procs` workers sharing `--conns` between them.
    ///
    /// # Errors
    /// If a worker cannot be spawned (those already spawned are killed).
    pub fn spawn(args: &StormArgs, target: SocketAddrV4) -> Result<Fleet, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
        let (tx, lines) = mpsc::channel();
        let mut fleet = Fleet {
            children: Vec::new(),
            stdins: Vec::new(),
            lines,
            pending: (0..args.procs).map(|_| VecDeque::new()).collect(),
            ended: vec![false; args.procs],
        };
        let mut start = 0;
        for index in 0..args.procs {
            let share = args.conns / args.procs + usize::from(index < args.conns % args.procs);
            let mut cmd = Command::new(&exe);
            cmd.arg("storm-worker")
                .args(["--target", &target.to_string(), "--topic", &args.topic])
                .args(["--conns", &share.to_string(), "--start-index", &start.to_string()])
                .args(["--sources", &args.sources.to_string()])
                .args(["--timeout-secs", &args.timeout_secs.to_string()])
                .args(["--pause-ms", &args.pause_ms.to_string()]);
            if args.no_resume {
                cmd.arg("--no-resume");
            }
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("cannot spawn client process {index}: {e}"))?;
            let stdout = child.stdout.take().ok_or("worker stdout not piped")?;
            fleet
                .stdins
                .push(child.stdin.take().ok_or("worker stdin not piped")?);
            fleet.children.push(child);
            let tx = tx.clone();
            // Ends at the worker's end of file, which its exit guarantees.
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((index, Some(line))).is_err() {
                        return;
                    }
                }
                let _ = tx.send((index, None));
            });
            start += share;
        }
        Ok(fleet)
    }

    /// The workers' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Sends `line` to every worker.
    ///
    /// # Errors
    /// If a worker's stdin is closed (it exited).
    pub fn send_all(&mut self, line: &str) -> Result<(), String> {
        for (i, stdin) in self.stdins.iter_mut().enumerate() {
            writeln!(stdin, "{line}")
                .and_then(|()| stdin.flush())
                .map_err(|e| format!("client process {i} is gone: {e}"))?;
        }
        Ok(())
    }

    /// Waits until every worker's next line came, and returns the rest of each after
    /// `word`, in worker order (a worker's `failed <why>` line whole). The protocol is
    /// strictly ordered per worker, so lines that came early wait their turn.
    ///
    /// # Errors
    /// If a worker's next line is another, if one exits first, or `deadline` passes.
    pub fn collect(&mut self, word: &str, deadline: Instant) -> Result<Vec<String>, String> {
        while let Some(i) = (0..self.children.len()).find(|&i| self.pending[i].is_empty()) {
            if self.ended[i] {
                let status = self.children[i]
                    .wait()
                    .map_or_else(|e| e.to_string(), |s| s.to_string());
                return Err(format!("client process {i} exited ({status}) before `{word}`"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, Some(line))) => self.pending[at].push_back(line),
                Ok((at, None)) => self.ended[at] = true,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("client process {i} did not report `{word}` in time"));
                }
                Err(RecvTimeoutError::Disconnected) => return Err("every client process exited".into()),
            }
        }
        let mut got = Vec::with_capacity(self.children.len());
        for (i, pending) in self.pending.iter_mut().enumerate() {
            let line = pending.pop_front().expect("every queue has a line");
            if let Some(rest) = line.strip_prefix(word) {
                got.push(rest.trim_start().to_owned());
            } else if line.starts_with("failed") {
                got.push(line);
            } else {
                return Err(format!("client process {i} said {line:?}, expected `{word}`"));
            }
        }
        Ok(got)
    }

    /// Gives every worker the published sequence and collects their results.
    ///
    /// # Errors
    /// As [`Fleet::collect`].
    pub fn finish(&mut self, published: &[u64], deadline: Instant) -> Result<Vec<String>, String> {
        let list: Vec<String> = published.iter().map(u64::to_string).collect();
        self.send_all(&format!("finish {}", list.join(",")))?;
        self.collect("result", deadline + DRAIN)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stdins.clear();
        for child in &mut self.children {
            if matches!(child.try_wait(), Ok(None)) {
                // Each is our own child, killed by its own pid.
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Per subscriber: its live connection and everything it received.
struct Slot {
    sub: Option<Sub>,
    seqs: Vec<u64>,
    epochs: Vec<u64>,
    /// Notices, each with the number of events received before it.
    marks: Vec<(usize, Mark)>,
    last_id: Option<String>,
    /// When its first event on the second connection arrived.
    back_at: Option<Instant>,
    error: Option<String>,
}

/// One worker's subscribers, in one epoll set beside its stdin.
struct Storm {
    epoll: Epoll,
    slots: Vec<Slot>,
    generation: u64,
    buf: Vec<u8>,
    tokens: Vec<u64>,
    /// Lines from the coordinator not yet acted on.
    commands: Vec<String>,
    stdin_buf: Vec<u8>,
    stdin_closed: bool,
}

impl Storm {
    fn new(conns: usize) -> Result<Storm, String> {
        let slot = || Slot {
            sub: None,
            seqs: Vec::new(),
            epochs: Vec::new(),
            marks: Vec::new(),
            last_id: None,
            back_at: None,
            error: None,
        };
        let epoll = Epoll::new().map_err(|e| format!("epoll: {e}"))?;
        let stdin = std::io::stdin();
        crate::sys::set_nonblocking(stdin.as_raw_fd()).map_err(|e| format!("stdin: {e}"))?;
        epoll
            .add(stdin.as_raw_fd(), libc::EPOLLIN as u32, STDIN_TOKEN)
            .map_err(|e| format!("epoll_ctl stdin: {e}"))?;
        Ok(Storm {
            epoll,
            slots: (0..conns).map(|_| slot()).collect(),
            generation: 0,
            buf: vec![0; READ_BYTES],
            tokens: Vec::new(),
            commands: Vec::new(),
            stdin_buf: Vec::new(),
            stdin_closed: false,
        })
    }

    /// Connects every slot (again), resuming from its last id on the second round.
    fn connect_all(&mut self, args: &WorkerArgs, target: SocketAddrV4, resume: bool) {
        self.generation += 1;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if slot.error.is_some() {
                continue;
            }
            let last = slot.last_id.clone().filter(|_| resume);
            let token = (self.generation << 32) | i as u64;
            let source = crate::plan::source_for(args.start_index + i as u64, args.sources);
            match Sub::start(
                &self.epoll,
                source,
                target,
                request(&args.topic, last.as_deref()),
                token,
            ) {
                Ok(sub) => slot.sub = Some(sub),
                Err(e) => slot.error = Some(e),
            }
        }
    }

    /// Serves readiness for up to `WAIT_MS`.
    fn turn(&mut self, second: bool) -> Result<(), String> {
        let mut tokens = std::mem::take(&mut self.tokens);
        self.epoll
            .wait(&mut tokens, 1024, WAIT_MS)
            .map_err(|e| format!("epoll_wait: {e}"))?;
        for &token in &tokens {
            if token == STDIN_TOKEN {
                self.read_stdin();
            } else if token >> 32 == self.generation {
                self.ready(token, second);
            }
        }
        self.tokens = tokens;
        Ok(())
    }

    fn ready(&mut self, token: u64, second: bool) {
        let slot = &mut self.slots[(token & 0xffff_ffff) as usize];
        let Some(sub) = slot.sub.as_mut() else { return };
        let (seqs, epochs, marks, back_at) = (
            &mut slot.seqs,
            &mut slot.epochs,
            &mut slot.marks,
            &mut slot.back_at,
        );
        let result = sub.ready(&self.epoll, token, &mut self.buf, &mut |f| match f {
            Found::Event { epoch, seq } => {
                seqs.push(seq);
                epochs.push(epoch);
                if second && back_at.is_none() {
                    *back_at = Some(Instant::now());
                }
            }
            Found::Reset => marks.push((seqs.len(), Mark::Reset)),
            Found::Gap(range) => marks.push((seqs.len(), Mark::Gap(range))),
            Found::Head | Found::Notice => {}
        });
        if sub.scan.last_id.is_some() {
            slot.last_id.clone_from(&sub.scan.last_id);
        }
        match result {
            Ok(true) => {}
            Ok(false) => (slot.error, slot.sub) = (Some("closed by the server".into()), None),
            Err(e) => (slot.error, slot.sub) = (Some(e), None),
        }
    }

    fn read_stdin(&mut self) {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match std::io::Read::read(&mut std::io::stdin().lock(), &mut chunk) {
                Ok(0) => {
                    self.stdin_closed = true;
                    let _ = self.epoll.delete(std::io::stdin().as_raw_fd());
                    return;
                }
                Ok(n) => self.stdin_buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.stdin_closed = true;
                    return;
                }
            }
        }
        while let Some(end) = self.stdin_buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.stdin_buf.drain(..=end).collect();
            self.commands
                .push(String::from_utf8_lossy(&line).trim().to_owned());
        }
    }

    /// Turns until `done` holds or `timeout` passes; returns whether `done` held.
    fn until(
        &mut self,
        second: bool,
        timeout: Duration,
        done: impl Fn(&Storm) -> bool,
    ) -> Result<bool, String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            self.turn(second)?;
            if self.stdin_closed {
                return Err("the coordinator is gone".into());
            }
            if done(self) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Turns until the coordinator sends a line starting with `word`; returns its rest.
    fn command(&mut self, second: bool, word: &str, timeout: Duration) -> Result<String, String> {
        let found = |s: &Storm| s.commands.iter().any(|c| c.starts_with(word));
        if !self.until(second, timeout, found)? {
            return Err(format!("no `{word}` from the coordinator within {timeout:?}"));
        }
        let at = self
            .commands
            .iter()
            .position(|c| c.starts_with(word))
            .expect("found above");
        let line = self.commands.remove(at);
        Ok(line[word.len()..].trim().to_owned())
    }
}

fn failed(slot: &Slot) -> bool {
    slot.error.is_some()
}

/// Runs one `storm-worker`.
pub fn main(args: WorkerArgs) -> ExitCode {
    match work(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("failed {e}");
            eprintln!("ringcast-bench storm-worker: {e}");
            ExitCode::from(2)
        }
    }
}

fn work(args: &WorkerArgs) -> Result<(), String> {
    crate::sys::raise_nofile().map_err(|e| format!("raise RLIMIT_NOFILE: {e}"))?;
    let target = crate::storm::resolve(&args.target)?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let mut storm = Storm::new(args.conns)?;
    let started = Instant::now();
    storm.connect_all(args, target, false);
    let heads = storm.until(false, timeout, |s| {
        s.slots
            .iter()
            .all(|x| failed(x) || x.sub.as_ref().is_some_and(|s| s.head_at.is_some()))
    })?;
    if !heads {
        return Err(format!("not every subscriber was answered within {timeout:?}"));
    }
    say(&format!("ready {:.1}", started.elapsed().as_secs_f64() * 1e3));
    // The coordinator publishes for `--before-secs`, bounded here by the phase timeout.
    storm.command(false, "drop", timeout * 2)?;
    let dropped_at = Instant::now();
    let events_before = storm.slots.iter().map(|s| s.seqs.len()).min().unwrap_or(0);
    for slot in &mut storm.slots {
        slot.sub = None;
    }
    say(&format!("dropped {events_before}"));
    if args.pause_ms > 0 {
        thread::sleep(Duration::from_millis(args.pause_ms));
    }
    storm.connect_all(args, target, !args.no_resume);
    let all_live = storm.until(true, timeout, |s| {
        s.slots.iter().all(|x| failed(x) || x.back_at.is_some())
    })?;
    let since = |at: Instant| at.duration_since(dropped_at).as_secs_f64() * 1e3;
    let all_ms = all_live.then(|| since(Instant::now()));
    let heads_ms = storm
        .slots
        .iter()
        .filter_map(|x| x.sub.as_ref()?.head_at)
        .max()
        .map(since);
    let show = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    say(&format!("live {} {}", show(all_ms), show(heads_ms)));
    let list = storm.command(true, "finish", timeout * 2)?;
    let published: Vec<u64> = list.split(',').filter_map(|s| s.parse().ok()).collect();
    let last = published.last().copied().unwrap_or(0);
    storm.until(true, DRAIN, |s| {
        s.slots.iter().all(|x| failed(x) || x.seqs.last() == Some(&last))
    })?;
    say(&format!("result {}", judge(&storm, &published, dropped_at)));
    Ok(())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Every subscriber's class, failures by kind, examples of the bad ones and each one's
/// drop-to-first-new-event time, as one JSON line.
fn judge(storm: &Storm, published: &[u64], dropped_at: Instant) -> String {
    let mut classes: BTreeMap<&str, u64> = CLASSES.iter().map(|&c| (c, 0)).collect();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut bad = Vec::new();
    let mut live_us = Vec::new();
    for (i, slot) in storm.slots.iter().enumerate() {
        if let Some(e) = &slot.error {
            // The kind and, for an HTTP answer, its status line: `http: status HTTP/1.1 408 ...`.
            let kind: String = e.chars().take(48).collect();
            *errors.entry(kind).or_insert(0) += 1;
            continue;
        }
        if let Some(at) = slot.back_at {
            live_us.push(at.duration_since(dropped_at).as_micros().max(1) as u64);
        }
        let class = classify(&slot.seqs, &slot.epochs, &slot.marks, published);
        *classes.entry(class.name()).or_insert(0) += 1;
        if let Class::Hole(why) | Class::Disorder(why) | Class::Short(why) = &class {
            if bad.len() < BAD_MAX {
                bad.push(format!("subscriber {i}: {}: {why}", class.name()));
            }
        }
    }
    serde_json::json!({
        "classes": classes,
        "errors": errors,
        "bad": bad,
        "live_us": live_us,
    })
    .to_string()
}
