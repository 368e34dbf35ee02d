//! `jitr lambda <handler>`: one handler under the AWS Lambda runtime (see
//! [`crate::runtime::lambda`]).

use std::process::ExitCode;

/// `jitr lambda` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Which handler.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(crate::runtime::LAMBDA_HANDLERS))]
    handler: String,
}

/// Runs the handler until the Lambda runtime stops it.
#[cfg(feature = "aws")]
pub async fn command(args: Args) -> anyhow::Result<ExitCode> {
    crate::runtime::lambda::run(&args.handler).await?;
    Ok(ExitCode::SUCCESS)
}

/// Without AWS support: says how to get it.
#[cfg(not(feature = "aws"))]
pub async fn command(args: Args) -> anyhow::Result<ExitCode> {
    let _ = args;
    Err(super::without_aws())
}
