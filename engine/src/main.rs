//! The `ringcast` command: `serve` (the default) runs the engine, `publish` sends one event.
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use ringcast::config::{self, Config};

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
    Serve(Box<Config>),
    /// Publish one event and print its id.
    Publish(PublishArgs),
    /// Check a configuration file (and the environment) without starting.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Print a commented configuration file with every key at its default.
    #[command(hide = true)]
    ConfigExample,
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
    let cli = match parse(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match cli.command {
        Some(Cmd::Publish(args)) => publish(args),
        Some(Cmd::Serve(config)) => serve(*config),
        Some(Cmd::CheckConfig { file }) => check_config(&file),
        Some(Cmd::ConfigExample) => {
            let cmd = Cli::command();
            print!(
                "{}",
                config::example_file(cmd.find_subcommand("serve").expect("serve exists"))
            );
            ExitCode::SUCCESS
        }
        None => serve(cli.serve),
    }
}

/// Parses the command line with the `--config` file's keys folded in.
fn parse(argv: Vec<std::ffi::OsString>) -> Result<Cli, ExitCode> {
    let cmd = Cli::command();
    let argv = config::merge_file(&cmd, argv).map_err(|e| {
        eprintln!("ringcast: {e}");
        ExitCode::from(2)
    })?;
    let matches = cmd.try_get_matches_from(argv).unwrap_or_else(|e| e.exit());
    Cli::from_arg_matches(&matches).map_err(|e| e.exit())
}

fn check_config(file: &std::path::Path) -> ExitCode {
    let argv = vec![
        "ringcast".into(),
        "serve".into(),
        "--config".into(),
        file.as_os_str().to_owned(),
    ];
    let cli = match parse(argv) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let Some(Cmd::Serve(config)) = cli.command else {
        unreachable!("parsed as serve");
    };
    match config.validate() {
        Ok(()) => {
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringcast: {}: {e}", file.display());
            ExitCode::from(2)
        }
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
