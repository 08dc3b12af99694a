//! `ringcast-bench`: the C10M-style load tool of ringcast.
//!
//! Subcommands:
//! - `hold`: opens N idle subscribers (SSE, WebSocket, NDJSON or long-poll) against a
//!   running engine, in steps of N if asked, through worker processes that each drive
//!   several io_uring rings of direct descriptors (RLIMIT_NOFILE caps each ring's file
//!   table, not their sum) from source addresses 127.0.0.x (ephemeral ports are per
//!   source and destination), and reports the engine's resident memory per connection
//!   with the conditions of the run.
//! - `hold-worker` (hidden): one such worker process, spawned by `hold`.
//! - `fanout`, `slow`, `churn`, `storm`, `compare`, `check`, `backplane`, `publish`: see
//!   bench/README.md.
//!
//! Module map: [`hold`] orchestrates and measures, [`worker`] runs one worker process,
//! [`client`] is its io_uring client engine, [`handshake`] recognises a held SSE, NDJSON
//! or poll subscription and [`ws`] a held WebSocket (both sans-IO), [`sse`] is the one
//! strict decoder of an SSE response (every subcommand that reads events uses it),
//! [`engine_args`] the flags that name the server under test, [`plan`] splits the
//! load, [`wire`] is the worker-to-parent line protocol, [`procfs`] and [`conditions`]
//! read the machine, [`report`] renders `hold`'s result and [`output`] writes every
//! subcommand's (JSON through serde, Markdown, SVG), [`sys`] holds the
//! `unsafe` libc calls and [`client`] the io_uring submissions.

// The `hold` report's JSON is one `serde_json::json!` object of some fifty fields.
#![recursion_limit = "256"]

mod backplane;
mod check;
mod churn;
mod client;
mod compare;
mod conditions;
mod engine_args;
mod fanout;
mod handshake;
mod hold;
mod output;
mod plan;
mod procfs;
mod publish;
mod refpeer;
mod report;
mod slow;
mod sse;
mod storm;
mod storm_worker;
mod sys;
mod wire;
mod worker;
mod ws;
mod wsframe;

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
    /// Say what this host lacks to hold N connections, and the line that fixes each.
    Check(check::CheckArgs),
    /// Open and close subscribers at a rate beside steady ones; verify the steady ones' events.
    Churn(churn::ChurnArgs),
    /// Drop N subscribers at once, reconnect them with Last-Event-ID, time it, verify ids.
    Storm(storm::StormArgs),
    /// One client process of `storm` (internal).
    #[command(hide = true)]
    StormWorker(storm_worker::WorkerArgs),
    /// Run one scenario (idle memory, fan-out) against ringcast, nginx+nchan or Pushpin.
    Compare(compare::CompareArgs),
    /// Fast and slow readers on one topic: what backpressure does to each class.
    Slow(slow::SlowArgs),
    /// The kernel-only WebSocket reference server of `compare --server kernel` (internal).
    #[command(hide = true)]
    WsRefServer(refpeer::RefArgs),
    /// Start NATS JetStream and ringcast nodes; backplane throughput against raw JetStream,
    /// cross-node latency against a single node.
    Backplane(backplane::BackplaneArgs),
    /// Acknowledged publishes per second: pipelined on the ingest socket, or POST /publish
    /// (single or NDJSON batches) over keep-alive.
    Publish(publish::PublishArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Hold(args) => hold::main(args),
        Cmd::Fanout(args) => fanout::main(args),
        Cmd::HoldWorker(args) => worker::main(args),
        Cmd::Check(args) => check::main(args),
        Cmd::Churn(args) => churn::main(args),
        Cmd::Storm(args) => storm::main(args),
        Cmd::StormWorker(args) => storm_worker::main(args),
        Cmd::Compare(args) => compare::main(args),
        Cmd::Slow(args) => slow::main(args),
        Cmd::Backplane(args) => backplane::main(args),
        Cmd::Publish(args) => publish::main(args),
        Cmd::WsRefServer(args) => refpeer::main(args),
    }
}
