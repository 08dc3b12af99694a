//! The flags that name the engine under test, shared by the subcommands that publish to
//! it and read its counters (`fanout`, `slow`, `storm`).

use std::path::PathBuf;

/// Where the engine under test listens, and its process.
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
    /// Engine process id, for its command line, version and CPU time in the report.
    #[arg(long)]
    pub pid: Option<u32>,
}
