//! `jitr serve`: everything in one process (see [`crate::runtime::serve`]), on the
//! embedded default or, with `--aws`, on an AWS deployment.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::app::App;
use crate::app::policy::RunnerPolicy;
use crate::runtime::serve::{self, Cadence};

/// `jitr serve` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    data: super::DataDir,
    /// Address to listen on.
    #[arg(long, env = "JITR_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// The GitHub App's webhook secret (generated and printed when unset).
    #[arg(long, env = "JITR_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// After a job completes, how long its instance may take to shut down.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    drain_grace: Duration,
    /// From launch to the job starting.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    boot_timeout: Duration,
    /// How long after a launch a NotFound from the cloud proves nothing (recorded
    /// in each runner's `Requested`). Embedded mode only; on AWS it is
    /// `JITR_CONSISTENCY_WINDOW_SECS`, at least 120.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    consistency_window: Duration,
    /// How often the reaper asks GitHub for a ready or running runner's job (a
    /// lost `in_progress`/`completed` webhook is healed within it); `0s`: only
    /// before a boot-deadline or max-age termination. On AWS:
    /// `JITR_JOB_POLL_SECS`.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    job_poll_interval: Duration,
    /// How long a surplus runner (no queued job of its pool wants it: its job
    /// was cancelled or taken by another runner) stays ready before it is
    /// retired, deregister-first. On AWS: `JITR_RETIRE_GRACE_SECS`.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    retire_grace: Duration,
    /// The share (percent, 1–100) of each installation's hourly GitHub rate
    /// limit that the rebalancer's listings and periodic job polls may spend; the
    /// rest is kept for minting. On AWS: `JITR_GITHUB_BACKGROUND_SHARE`.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=100))]
    github_background_share: u64,
    /// Runner pools (TOML, see `docs/pools.example.toml`); default: one pool
    /// for `linux`/`x64` jobs. On AWS: `JITR_CONFIG`.
    #[arg(long, env = "JITR_CONFIG")]
    config: Option<PathBuf>,
    /// Prices (TOML, as `jitr cost --prices` reads): `/metrics` then counts
    /// the cost of the runners that close, `jitr_cost_usd_total`.
    #[arg(long, env = "JITR_PRICES")]
    prices: Option<PathBuf>,
    /// Reaper and rebalancer period.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    sweep_interval: Duration,
    /// Simulated on-demand vCPU quota.
    #[arg(long, default_value_t = 32)]
    on_demand_vcpus: u32,
    /// Simulated spot vCPU quota.
    #[arg(long, default_value_t = 32)]
    spot_vcpus: u32,
    /// Simulated capacity of an instance type, `TYPE=N` instances at once in both
    /// markets (repeatable): past it the simulator answers
    /// InsufficientInstanceCapacity, as EC2 does, and a pool tries its next type.
    #[arg(long = "sim-type-capacity", value_parser = type_capacity)]
    sim_type_capacity: Vec<(String, u32)>,
    /// Simulated boot time.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    sim_boot: Duration,
    /// How long after a simulated state change or interruption warning its
    /// event is delivered (EventBridge: within seconds).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    sim_event_delay: Duration,
    /// Simulated spot interruptions: this percentage of spot instances gets
    /// EC2's two-minute interruption warning within 90 s of its launch, then
    /// is reclaimed (0: none).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    sim_spot_interruption_pct: u32,
    /// Serve only these repositories (owner/repo, repeatable; default: all).
    #[arg(long = "allow-repo")]
    allow_repos: Vec<String>,
    /// Serve only the --allow-repo repositories: with none, serve nothing.
    #[arg(long)]
    allowlist_only: bool,
    /// Serve public repositories' jobs on every pool (default: only on pools
    /// with `public_repositories = true`; a fork's pull request runs arbitrary
    /// code on the runner).
    #[arg(long)]
    public_repositories: bool,
    /// Run on AWS (DynamoDB, EC2, SQS, EventBridge, SSM, the GitHub App),
    /// configured from JITR_* variables; see the README.
    #[arg(long)]
    aws: bool,
    #[command(flatten)]
    target: super::AwsTarget,
}

/// Serves until SIGTERM or Ctrl-C.
pub async fn command(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(file) = &args.prices {
        crate::app::metrics::set_prices(super::cost::Prices::load(file)?);
    }
    if args.aws {
        return serve_aws(args).await;
    }
    let generated = args.webhook_secret.is_none();
    let secret = args.webhook_secret.clone().unwrap_or_else(|| {
        use rand::Rng;
        let bytes: [u8; 24] = rand::rng().random();
        hex::encode(bytes)
    });
    let mut policy = RunnerPolicy::default();
    policy.deadlines.drain_grace_ms = args.drain_grace.as_millis() as u64;
    policy.deadlines.boot_timeout_ms = args.boot_timeout.as_millis() as u64;
    policy.deadlines.consistency_window_ms = args.consistency_window.as_millis() as u64;
    policy.allowlist = args.allow_repos.clone();
    policy.allowlist_only = args.allowlist_only;
    policy.public_repositories = args.public_repositories;
    policy.job_poll_interval_ms = args.job_poll_interval.as_millis() as u64;
    policy.retire_grace_ms = args.retire_grace.as_millis() as u64;
    policy.github_background_share_pct = args.github_background_share;
    if let Some(file) = &args.config {
        let config = super::config::load(file)?;
        for warning in &config.warnings {
            eprintln!("jitr serve: {}: warning: {warning}", file.display());
        }
        policy.pools = config.pools;
        policy.quotas = config.quotas;
    }
    let settings = jitr_infra::SimSettings {
        on_demand_vcpus: args.on_demand_vcpus,
        spot_vcpus: args.spot_vcpus,
        boot_ms: args.sim_boot.as_millis() as u64,
        type_capacity: args.sim_type_capacity.iter().cloned().collect(),
        event_delay_ms: args.sim_event_delay.as_millis() as u64,
        spot_interruptions: (args.sim_spot_interruption_pct > 0).then(|| {
            jitr_infra::SpotInterruptions {
                per_mille: args.sim_spot_interruption_pct * 10,
                warn_within_ms: 90_000,
                seed: std::process::id().into(),
            }
        }),
        // The simulated region has each pool's image, of the pool's
        // architecture: a type of another is refused as EC2 refuses it.
        images: policy
            .pools
            .iter()
            .map(|p| (p.spec.image.clone(), p.architecture))
            .collect(),
        ..jitr_infra::SimSettings::default()
    };
    let app = serve::embedded(
        &args.data.path,
        policy,
        settings,
        secret.clone().into_bytes(),
    )?;
    let listener = bind(&args.listen).await?;
    let url = serve::describe(listener.local_addr()?);
    let dir = args.data.path.display();
    println!("jitr serve: listening on {url} (embedded default in {dir})");
    println!("  event log {dir}/events.db, simulated EC2 and GitHub {dir}/cloud.db");
    if generated {
        println!("  webhook secret (generated; set JITR_WEBHOOK_SECRET to choose one): {secret}");
    }
    println!("  try: jitr send-webhook --url {url}/webhook --secret <secret> --job 1");
    println!("  then: jitr audit --data-dir {dir}");
    let cadence = Cadence {
        sweep: args.sweep_interval,
        ..Cadence::default()
    };
    run_until_stopped(app, cadence, listener).await
}

#[cfg(feature = "aws")]
async fn serve_aws(args: Args) -> anyhow::Result<ExitCode> {
    if args.config.is_some() && std::env::var_os("JITR_CONFIG").is_none() {
        anyhow::bail!(
            "with --aws the pool file is read from JITR_CONFIG, as every Lambda handler reads it: \
             set JITR_CONFIG instead of --config"
        );
    }
    let wired = crate::runtime::aws::from_env(args.target.settings(), &args.target.prefix).await?;
    if !wired.has_webhook_secret {
        anyhow::bail!(
            "neither JITR_WEBHOOK_SECRET_PARAMETER nor JITR_WEBHOOK_SECRET is set: with --aws the webhook secret must be the GitHub App's"
        );
    }
    let listener = bind(&args.listen).await?;
    println!(
        "jitr serve: listening on {} (AWS deployment {})",
        serve::describe(listener.local_addr()?),
        wired.names.prefix()
    );
    let cadence = Cadence {
        projector: Duration::from_secs(1),
        sweep: args.sweep_interval,
    };
    run_until_stopped(wired.app, cadence, listener).await
}

#[cfg(not(feature = "aws"))]
async fn serve_aws(args: Args) -> anyhow::Result<ExitCode> {
    let _ = args;
    Err(super::without_aws())
}

/// `TYPE=N` of `--sim-type-capacity`.
pub(crate) fn type_capacity(text: &str) -> Result<(String, u32), String> {
    let (t, n) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected TYPE=N, e.g. c7i.xlarge=4"))?;
    let n = n
        .parse()
        .map_err(|_| format!("{text:?}: {n:?} is not a number of instances"))?;
    Ok((t.to_owned(), n))
}

async fn bind(listen: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))
}

async fn run_until_stopped(
    app: App,
    cadence: Cadence,
    listener: TcpListener,
) -> anyhow::Result<ExitCode> {
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        super::shutdown_signal().await;
        eprintln!("jitr serve: shutting down");
        let _ = stop_tx.send(true);
    });
    serve::run(app, cadence, listener, stop).await?;
    Ok(ExitCode::SUCCESS)
}
