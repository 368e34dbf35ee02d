//! `jitr init`: creates jitr's AWS resources (see [`jitr_aws::provision`]).

use std::process::ExitCode;

/// `jitr init` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    target: super::AwsTarget,
    /// Receives before a message goes to its dead-letter queue.
    #[arg(long, default_value_t = jitr_infra::DEFAULT_MAX_RECEIVES)]
    max_receives: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Creates (or finds) every resource and prints what it did.
#[cfg(feature = "aws")]
pub async fn command(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.target.settings().load().await;
    let names = jitr_aws::AwsNames::new(args.target.prefix);
    let report = jitr_aws::provision(&config, &names, args.max_receives).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for r in &report {
            println!("{:<6} {:<70} {}", r.kind, r.name, r.setup);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Without AWS support: says how to get it.
#[cfg(not(feature = "aws"))]
pub async fn command(args: Args) -> anyhow::Result<ExitCode> {
    let _ = args;
    Err(super::without_aws())
}
