//! The flags that name the engine (or peer server) under test, shared by every subcommand
//! that targets one: `hold`, `fanout`, `slow`, `churn`, `storm`, `compare`.
//!
//! Must never: hold a subcommand's own knobs; those stay in its own `*Args`.

use std::path::PathBuf;

/// Where the engine under test listens, and its processes.
#[derive(clap::Args, Debug, Clone)]
pub struct EngineArgs {
    /// Engine client address, IPv4 `host:port`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub target: String,
    /// The engine's ingest socket.
    #[arg(long, default_value = "./ringcast.sock")]
    pub ingest: PathBuf,
    /// The engine's admin address, for its counters (`/stats`); `none` to skip them where
    /// a subcommand can do without.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// Engine process id, for its command line, version, CPU time and memory in the
    /// report; repeat the flag for a server of several processes (`compare` sums their
    /// `VmRSS`).
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
}

impl EngineArgs {
    /// The first `--pid`, the engine's own.
    pub fn pid(&self) -> Option<u32> {
        self.pids.first().copied()
    }

    /// The first `--pid`, for a subcommand that cannot run without it.
    ///
    /// # Errors
    /// When no `--pid` was given.
    pub fn require_pid(&self, subcommand: &str) -> Result<u32, String> {
        self.pid().ok_or_else(|| {
            format!("{subcommand} needs --pid ENGINE_PID (the process whose memory is measured)")
        })
    }
}
