//! The `jitr` command: parses its arguments and runs the subcommand
//! (`jitr_handlers::commands`, one file each).

use std::process::ExitCode;

use clap::Parser;
use jitr_handlers::commands::{self, Command};

/// jitr: ephemeral GitHub Actions runners on EC2 that cannot leak instances.
///
/// Every runner's life is an event stream in a log (SQLite in the data directory
/// on the embedded default, DynamoDB on AWS). `jitr serve` runs everything; the
/// other commands ask the log questions or operate a deployment.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The arguments: the command line's, or — started by Lambda as `bootstrap`
/// with none (the `provided.al2023` runtime) — `lambda <HANDLER>`, the
/// function's handler setting, which Lambda passes in `_HANDLER`.
fn arguments() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let lambda = std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some();
    if let (1, true, Some(handler)) = (args.len(), lambda, std::env::var_os("_HANDLER")) {
        args.extend(["lambda".into(), handler]);
    }
    args
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(arguments());
    let filter = tracing_subscriber::EnvFilter::try_from_env("JITR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cli.command.default_log_filter()));
    if cli.command.logs_json() {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jitr: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(commands::run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("jitr: {e:#}");
            ExitCode::from(2)
        }
    }
}
