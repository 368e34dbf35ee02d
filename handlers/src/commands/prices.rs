//! `jitr prices`: writes the prices file `jitr cost`, `serve`, `audit --html`
//! and `archive report` read, from AWS: on-demand from the Price List API,
//! spot from `DescribeSpotPriceHistory` (ADR-0023). The file is the cache: a
//! run reuses it while it is younger than `--max-age` and prices every type
//! asked for.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use super::cost::Prices;

/// `jitr prices` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The prices file to write (TOML, `[on-demand]` and `[spot]`).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// An instance type to price (repeatable); with none, every type of the
    /// pools in --config.
    #[arg(long = "instance-type", value_name = "TYPE")]
    instance_types: Vec<String>,
    /// The pool file whose instance types are priced.
    #[arg(long, env = "JITR_CONFIG")]
    config: Option<PathBuf>,
    /// Reuse --out, without asking AWS, while it is younger than this and
    /// prices every type asked for.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    max_age: Duration,
    #[command(flatten)]
    target: super::AwsTarget,
}

/// The types `args` asks to price.
fn instance_types(args: &Args) -> anyhow::Result<Vec<String>> {
    let mut types = args.instance_types.clone();
    if let Some(file) = &args.config {
        for pool in super::config::load(file)?.pools {
            types.extend(pool.instance_types);
        }
    }
    types.sort();
    types.dedup();
    if types.is_empty() {
        anyhow::bail!("nothing to price: give --instance-type TYPE or --config FILE");
    }
    Ok(types)
}

/// The prices in `path` when it is younger than `max_age` and prices every
/// one of `types` in both markets.
fn cached(path: &Path, types: &[String], max_age: Duration) -> Option<Prices> {
    let age = std::fs::metadata(path)
        .ok()?
        .modified()
        .ok()?
        .elapsed()
        .ok()?;
    if age > max_age {
        return None;
    }
    let prices = Prices::load(path).ok()?;
    types
        .iter()
        .all(|t| prices.on_demand.contains_key(t) && prices.spot.contains_key(t))
        .then_some(prices)
}

/// The prices file's text: what it holds, where from, when.
pub fn file_text(prices: &Prices, region: &str, at: &str) -> String {
    format!(
        "# Written by `jitr prices` at {at} for {region}: USD per instance-hour.\n\
         # on-demand: the AWS Price List API (Linux, shared tenancy, no pre-installed software);\n\
         # spot: EC2 DescribeSpotPriceHistory, each Availability Zone's price in effect, averaged.\n{}",
        toml::to_string(prices).expect("prices serialise")
    )
}

/// Writes (or reuses) the prices file.
pub async fn command(args: Args) -> anyhow::Result<ExitCode> {
    let types = instance_types(&args)?;
    if let Some(prices) = cached(&args.out, &types, args.max_age) {
        eprintln!(
            "{}: younger than {}, prices {} types: reused",
            args.out.display(),
            humantime::format_duration(args.max_age),
            types.len()
        );
        print!("{}", toml::to_string(&prices)?);
        return Ok(ExitCode::SUCCESS);
    }
    #[cfg(feature = "aws")]
    {
        let config = args.target.settings().load().await;
        let aws = jitr_aws::pricing::AwsPrices::new(&config);
        let now = crate::runtime::now();
        let mut prices = Prices::default();
        let mut missing = Vec::new();
        for instance_type in &types {
            match aws.on_demand(instance_type).await? {
                Some(usd) => drop(prices.on_demand.insert(instance_type.clone(), usd)),
                None => missing.push(format!("on-demand {instance_type}")),
            }
            let at = aws_smithy_types::DateTime::from_millis(now.0);
            match aws.spot(instance_type, at).await? {
                Some(usd) => drop(prices.spot.insert(instance_type.clone(), usd)),
                None => missing.push(format!("spot {instance_type}")),
            }
        }
        let text = file_text(&prices, aws.region(), &super::report::rfc3339(now));
        // Written whole or not at all: a half-written file would price less.
        let partial = args.out.with_extension("toml.partial");
        std::fs::write(&partial, &text)
            .and_then(|()| std::fs::rename(&partial, &args.out))
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", args.out.display()))?;
        print!("{text}");
        if !missing.is_empty() {
            eprintln!(
                "no price in {} for: {} (their time counts as unpriced)",
                aws.region(),
                missing.join(", ")
            );
            return Ok(ExitCode::from(1));
        }
        Ok(ExitCode::SUCCESS)
    }
    #[cfg(not(feature = "aws"))]
    {
        Err(super::without_aws())
    }
}
