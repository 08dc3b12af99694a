//! The `ringcast` command: `serve` (the default) runs the engine, `publish` sends one event.
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ringcast::config::Config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A push tier for Linux: subscribers over Server-Sent Events, publishers over a local socket.
///
/// Without a subcommand, `ringcast` serves with the flags given (defaults: clients on
/// 127.0.0.1:8080, ingest socket ./ringcast.sock).
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    serve: Config,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the engine.
    Serve(Config),
    /// Publish one event and print its id.
    Publish(PublishArgs),
}

#[derive(clap::Args)]
struct PublishArgs {
    /// The engine's ingest socket.
    #[arg(long, value_name = "PATH", default_value = "./ringcast.sock")]
    ingest: PathBuf,
    /// SSE event name (the `event:` field).
    #[arg(long, value_name = "NAME")]
    event: Option<String>,
    /// Coalescing key: a newer event with the same key may replace an undelivered older one.
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// Topic to publish on.
    topic: String,
    /// The payload; read from standard input when absent.
    data: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Publish(args)) => publish(args),
        Some(Cmd::Serve(config)) => serve(config),
        None => serve(cli.serve),
    }
}

fn serve(config: Config) -> ExitCode {
    match ringcast::engine::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringcast: {e}");
            ExitCode::FAILURE
        }
    }
}

fn publish(args: PublishArgs) -> ExitCode {
    let data = match args.data {
        Some(d) => d.into_bytes(),
        None => {
            let mut buf = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut buf) {
                eprintln!("ringcast publish: cannot read standard input: {e}");
                return ExitCode::FAILURE;
            }
            buf
        }
    };
    match ringcast::ingest::client::publish(
        &args.ingest,
        &args.topic,
        args.event.as_deref(),
        args.key.as_deref(),
        &data,
    ) {
        Ok(id) => {
            println!("{id}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringcast publish: {e}");
            ExitCode::FAILURE
        }
    }
}
