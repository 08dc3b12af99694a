//! `ringcast-bench`: the C10M-style load tool of ringcast.
//!
//! Subcommands:
//! - `hold`: opens N idle SSE subscribers against a running engine, spread over worker
//!   processes (RLIMIT_NOFILE is per process) and source addresses 127.0.0.x (ephemeral
//!   ports are per source and destination), and reports the engine's resident memory per
//!   connection with the conditions of the run.
//! - `hold-worker` (hidden): one such worker process, spawned by `hold`.
//!
//! Module map: [`hold`] orchestrates and measures, [`worker`] drives sockets,
//! [`handshake`] recognises a held subscription (sans-IO), [`plan`] splits the load,
//! [`wire`] is the worker-to-parent line protocol, [`procfs`] and [`conditions`] read
//! the machine, [`report`] renders results, [`sys`] holds every `unsafe` libc call.

mod conditions;
mod handshake;
mod hold;
mod plan;
mod procfs;
mod report;
mod sys;
mod wire;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ringcast-bench",
    version,
    about = "Load tool for the ringcast SSE push server"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Hold N idle SSE subscribers and report the engine's memory per connection.
    Hold(hold::HoldArgs),
    /// One worker process of `hold` (internal).
    #[command(hide = true)]
    HoldWorker(worker::WorkerArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Hold(args) => hold::main(args),
        Cmd::HoldWorker(args) => worker::main(args),
    }
}
