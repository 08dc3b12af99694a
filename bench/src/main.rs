//! `ringcast-bench`: the C10M-style load tool of ringcast.
//!
//! Subcommands:
//! - `hold`: opens N idle subscribers (SSE streams, or WebSockets with `--transport ws`)
//!   against a running engine, spread over worker processes (RLIMIT_NOFILE is per
//!   process) and source addresses 127.0.0.x (ephemeral ports are per source and
//!   destination), and reports the engine's resident memory per connection with the
//!   conditions of the run.
//! - `hold-worker` (hidden): one such worker process, spawned by `hold`.
//!
//! Module map: [`hold`] orchestrates and measures, [`worker`] drives sockets,
//! [`handshake`] recognises a held SSE subscription and [`ws`] a held WebSocket (both
//! sans-IO), [`plan`] splits the load, [`wire`] is the worker-to-parent line protocol,
//! [`procfs`] and [`conditions`] read the machine, [`report`] renders results, [`sys`]
//! holds every `unsafe` libc call.

mod conditions;
mod fanout;
mod handshake;
mod hold;
mod plan;
mod procfs;
mod report;
mod sys;
mod wire;
mod worker;
mod ws;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ringcast-bench",
    version,
    about = "Load tool for the ringcast push server (SSE and WebSocket)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Hold N idle subscribers (SSE or WebSocket) and report the engine's memory per connection.
    Hold(hold::HoldArgs),
    /// Measure fan-out to fast subscribers, with and without slow ones, or the kernel baseline.
    Fanout(fanout::FanoutArgs),
    /// One worker process of `hold` (internal).
    #[command(hide = true)]
    HoldWorker(worker::WorkerArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Hold(args) => hold::main(args),
        Cmd::Fanout(args) => fanout::main(args),
        Cmd::HoldWorker(args) => worker::main(args),
    }
}
