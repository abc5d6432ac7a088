//! `nh-sim`: simulated devices for the nursing-home gateway.
//!
//! Commands: `run` (publish a registry's fleet), `load` (open-loop load), `sink` (a plain
//! subscriber, for the raw broker limit), `record`, `anonymize` and `replay` (captures of real
//! traffic), `alert-probe` (alert latency), `gen-registry` (a demo facility's registry),
//! `scenario` (run a scenario against a gateway and judge its alerts), `serial` (serial devices
//! on ptys), `validate` (check registry, scenario and serial bench files). Summaries go to stdout
//! as one JSON line (`serial`: one line per pty, event and bus), logs to stderr. Exit codes: 0
//! ok, 1 error, 2 scenario failed, 3 not every publish was acknowledged.
//!
//! The arguments live in `cli/args.rs`, one function per subcommand in `cli/commands.rs`.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

mod cli;

use cli::args::{Cli, Command};
use cli::commands;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttc=warn")),
        )
        .init();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { files } => commands::validate(&files),
        Command::Scenario(a) => commands::scenario(a),
        Command::Serial(a) => commands::serial(a),
        Command::GenRegistry(a) => commands::gen_registry(a),
        Command::Run(a) => commands::run(a),
        Command::Load(a) => commands::load(a),
        Command::Sink(a) => commands::sink(a),
        Command::Record(a) => commands::record(a),
        Command::Replay(a) => commands::replay(a),
        Command::Anonymize(a) => commands::anonymize(a),
        Command::AlertProbe(a) => commands::alert_probe(a),
    }
}
