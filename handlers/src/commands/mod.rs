//! The operator commands, one file per `jitr` subcommand: its arguments, what it
//! does and what it prints. This is the binary's edge: errors here are `anyhow`,
//! typed everywhere else.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use jitr_domain::Timestamp;
use jitr_infra::SqliteEventStore;

pub mod archive;
pub mod audit;
pub mod audit_html;
pub mod bench;
pub mod bench_history;
pub mod bootstrap_script;
pub mod config;
pub mod cost;
pub mod demo;
pub mod dlq;
pub mod doctor;
pub mod history;
pub mod init;
pub mod lambda;
pub mod logs;
pub mod package;
pub mod prices;
pub mod report;
pub mod send_webhook;
pub mod serve;
pub mod simulate;
pub mod snapshot;

/// The log file inside a data directory.
pub const LOG_FILE: &str = "events.db";

/// Every `jitr` subcommand.
#[derive(Subcommand)]
pub enum Command {
    /// Print the timeline of one runner.
    ///
    /// KEY is a runner stream id (`owner/repo#job_id#attempt`), an instance id, or
    /// a workflow job id (every runner attempt for the job).
    /// Exit status 2 when nothing in the log matches.
    History(history::Args),
    /// Print a runner's boot log: its instance's console output (EC2
    /// GetConsoleOutput, the latest; the simulator's console on the embedded
    /// default), where the bootstrap logs each step.
    ///
    /// KEY is as `history` takes it. Exit status 2 when nothing in the log
    /// matches.
    Logs(logs::Args),
    /// Audit the log (with --since, from the last snapshot before the window):
    /// runners by status, the fleet, and every runner owed a
    /// termination.
    ///
    /// Exit status 1 when an instance has been owed a termination for longer than
    /// --deadline (usable from cron and CI); 2 when the log cannot be read.
    Audit(audit::Args),
    /// Write a demonstration log (the seed incident in miniature, compensated) and
    /// print its audit.
    Demo(demo::Args),
    /// Run jitr: the webhook endpoint and every handler in one process.
    ///
    /// With no AWS configuration it runs on the embedded default: the event log in
    /// DATA_DIR/events.db, a simulated EC2 and GitHub in DATA_DIR/cloud.db, local
    /// queues in DATA_DIR/queues.db. Stops cleanly on SIGTERM or Ctrl-C.
    Serve(serve::Args),
    /// Send a signed `workflow_job` webhook, as GitHub would (to try `jitr serve`).
    SendWebhook(send_webhook::Args),
    /// Run one handler under the AWS Lambda runtime.
    ///
    /// HANDLER is webhook (function URL), scaleup / lifecycle / compensate /
    /// ec2-events (SQS, partial batch failures; the bus rule feeds the
    /// compensation queue, the default bus's EC2 rule the ec2-events queue), projector
    /// (DynamoDB Streams), reaper / rebalancer (scheduled). Configuration comes from
    /// the environment: JITR_PREFIX, JITR_GITHUB_APP_ID, and the SSM SecureString
    /// names JITR_WEBHOOK_SECRET_PARAMETER and JITR_GITHUB_PRIVATE_KEY_PARAMETER
    /// (see the README and docs/deploy.md). Logs are JSON. Started by Lambda as
    /// `bootstrap` with no arguments, jitr runs the handler named in _HANDLER.
    Lambda(lambda::Args),
    /// Run a deterministic scenario on the local simulator through the real
    /// handlers, and report jobs served, orphans, orphan vCPU-minutes, peak vCPUs,
    /// launch refusals, compensation latency and when the quota was free again.
    Simulate(simulate::Args),
    /// Check what an operator checks first: dead-letter queues (warns above 5
    /// messages), alarm states, instances against open runners, configuration.
    ///
    /// Exit status 0 when all is well, 1 on a warning, 2 when a check failed.
    Doctor(doctor::Args),
    /// Create jitr's AWS resources: the event table, the queues with their DLQs and
    /// redrive, the command bus and its rule, the DLQ alarms.
    ///
    /// Idempotent: a second run finds everything and exits 0. Credentials and region
    /// come from the standard AWS chain; the endpoint from --endpoint or
    /// AWS_ENDPOINT_URL (e.g. moto on http://127.0.0.1:5000).
    Init(init::Args),
    /// Print the user-data script runner instances boot with: IMDSv2, the JIT
    /// config from SSM (then deleted), the runner as an unprivileged user, power
    /// off when it exits.
    BootstrapScript(bootstrap_script::Args),
    /// Dead letters of the scale-up, lifecycle, compensation and EC2-events
    /// queues: `list` with reasons, `show` one, `redrive` back once fixed,
    /// `purge --yes`. On the embedded default (--data-dir) or AWS (--aws).
    #[command(subcommand)]
    Dlq(dlq::Args),
    /// Runner pool configuration: `jitr config check FILE`.
    #[command(subcommand)]
    Config(config::Args),
    /// Write the Lambda deployment package: a jitr binary built with
    /// `--features aws` as `bootstrap` in a zip, checked for the functions'
    /// architecture and Lambda's glibc; print how to deploy it.
    Package(package::Args),
    /// What the runners' instances cost, by repository, pool, instance type
    /// or market, over a window: instance time from the log times the prices
    /// of a prices file (ADR-0023).
    Cost(cost::Args),
    /// Write the prices file `cost`, `serve --prices`, `audit --prices` and
    /// `archive report` read, from AWS: on-demand from the Price List API,
    /// spot from DescribeSpotPriceHistory; reused while younger than
    /// --max-age.
    Prices(prices::Args),
    /// Close the books: save a snapshot of the audit's books for every UTC day
    /// that is over (ADR-0023), so that `jitr audit --since` reads only the
    /// events after the last one before its window. `--list` lists them.
    Snapshot(snapshot::Args),
    /// The archive (ADR-0024): `run` moves closed runners past the retention
    /// from the log to Parquet files (DATA_DIR/archive), counted before the
    /// log lets them go; `list`; `report` (orphan vCPU-minutes and cost per
    /// repository) and `sql` query it with an embedded engine.
    #[command(subcommand)]
    Archive(archive::Args),
    /// Measure the core: in-memory fold, SQLite replay, SQLite append latency.
    ///
    /// Build with --release for meaningful figures.
    Bench(bench::Args),
}

impl Command {
    /// The log filter a command runs with unless `JITR_LOG` says otherwise.
    pub fn default_log_filter(&self) -> &'static str {
        match self {
            Command::Lambda(_) => "info",
            // A simulation's report says what happened; its handlers' logs are noise.
            Command::Simulate(_) => "off",
            _ => "warn",
        }
    }

    /// Whether logs are JSON lines (CloudWatch Logs reads one object a line).
    pub fn logs_json(&self) -> bool {
        matches!(self, Command::Lambda(_))
    }
}

/// Runs one command; its exit status.
pub async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::History(args) => history::command(args).await,
        Command::Logs(args) => logs::command(args).await,
        Command::Audit(args) => audit::command(args).await,
        Command::Demo(args) => demo::command(args).await,
        Command::Serve(args) => serve::command(args).await,
        Command::SendWebhook(args) => send_webhook::command(args).await,
        Command::Lambda(args) => lambda::command(args).await,
        Command::Simulate(args) => simulate::command(args).await,
        Command::Doctor(args) => doctor::command(args).await,
        Command::Init(args) => init::command(args).await,
        Command::Bench(args) => bench::command(args).await,
        Command::Snapshot(args) => snapshot::command(args).await,
        Command::Cost(args) => cost::command(args).await,
        Command::Prices(args) => prices::command(args).await,
        Command::Archive(args) => archive::command(args).await,
        Command::Config(args) => config::command(args).await,
        Command::Dlq(args) => dlq::command(args).await,
        Command::BootstrapScript(args) => bootstrap_script::command(args).await,
        Command::Package(args) => package::command(args).await,
    }
}

/// Where the embedded default keeps its files.
#[derive(clap::Args, Debug)]
pub struct DataDir {
    /// The data directory: the embedded default's log (events.db), simulated cloud
    /// (cloud.db) and queues (queues.db).
    #[arg(long = "data-dir", env = "JITR_DATA_DIR", default_value = "jitr-data")]
    pub path: PathBuf,
}

/// Which deployment a command looks at: the embedded default's data
/// directory, or (`--aws`) an AWS deployment; and how it prints.
#[derive(clap::Args, Debug)]
pub struct Place {
    #[command(flatten)]
    data: DataDir,
    /// The AWS deployment instead of the data directory.
    #[arg(long)]
    aws: bool,
    #[command(flatten)]
    target: AwsTarget,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Which AWS deployment, and where to reach it.
#[derive(clap::Args, Debug)]
pub struct AwsTarget {
    /// Prefix of the AWS resource names (as given to `jitr init`).
    #[arg(long, env = "JITR_PREFIX", default_value = "jitr")]
    pub prefix: String,
    /// AWS endpoint (an emulator, or a VPC endpoint; else AWS_ENDPOINT_URL).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// AWS region (else the standard chain).
    #[arg(long)]
    pub region: Option<String>,
}

#[cfg(feature = "aws")]
impl AwsTarget {
    /// The SDK settings for this target.
    pub fn settings(&self) -> jitr_aws::AwsSettings {
        jitr_aws::AwsSettings {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            static_credentials: None,
        }
    }
}

/// The error of an AWS command in a build without AWS support.
#[cfg(not(feature = "aws"))]
pub fn without_aws() -> anyhow::Error {
    anyhow::anyhow!(
        "this jitr was built without AWS support (the embedded default only): \
         build it with `cargo build --release -p jitr-handlers --features aws`"
    )
}

/// Parses an RFC 3339 moment.
pub fn parse_moment(text: &str) -> Result<Timestamp, String> {
    let t = humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("{e}: expected e.g. 2026-05-04T04:22:00Z"))?;
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    Ok(Timestamp(i64::try_from(ms).unwrap_or(i64::MAX)))
}

/// Opens an existing log for reading; never creates one.
pub fn open_existing(data_dir: &Path) -> Result<SqliteEventStore> {
    let path = data_dir.join(LOG_FILE);
    if !path.is_file() {
        bail!(
            "no jitr log at {}: point --data-dir (or JITR_DATA_DIR) at a jitr data directory, \
             or create one with `jitr demo --data-dir {}`",
            path.display(),
            data_dir.display()
        );
    }
    SqliteEventStore::open_read_only(&path).with_context(|| format!("opening {}", path.display()))
}

/// The simulated cloud of the embedded default in `data_dir`, for a command
/// that reads it (`what` names the command in the error when there is none).
pub fn open_sim_cloud(data_dir: &Path, what: &str) -> Result<jitr_infra::SimCloud> {
    let cloud_db = data_dir.join("cloud.db");
    if !cloud_db.is_file() {
        bail!(
            "{what}: no simulated cloud at {} (jitr serve creates it)",
            cloud_db.display()
        );
    }
    Ok(jitr_infra::SimCloud::open(
        &cloud_db,
        jitr_infra::SimSettings::default(),
        jitr_infra::system_clock(),
    )?)
}

/// Where the embedded default's archive is, for commands that read it.
#[derive(clap::Args, Debug)]
pub struct ArchiveChoice {
    /// Read the archive too (DATA_DIR/archive, or --archive-dir): the feed
    /// merges its events with the log's (ADR-0024). Without it, a window
    /// reaching back into archived days is refused.
    #[arg(long)]
    pub archive: bool,
    /// The archive's directory.
    #[arg(long, value_name = "DIR", requires = "archive")]
    pub archive_dir: Option<PathBuf>,
    /// With --aws: the archive's S3 bucket (the stack's `ArchiveBucket` output).
    #[arg(long, env = "JITR_ARCHIVE_BUCKET", requires = "archive")]
    pub bucket: Option<String>,
}

impl ArchiveChoice {
    /// The log at `data_dir`, merged with its archive when chosen.
    pub async fn open(
        &self,
        data_dir: &Path,
    ) -> Result<jitr_infra::archive::ArchivedLog<SqliteEventStore>> {
        use jitr_infra::archive::{ArchiveObjects, ArchivedLog, LocalArchive};
        let hot = open_existing(data_dir)?;
        if !self.archive {
            return Ok(ArchivedLog::hot_only(hot));
        }
        let dir = self
            .archive_dir
            .clone()
            .unwrap_or_else(|| archive::default_dir(data_dir));
        if !dir.is_dir() {
            bail!("--archive: no archive at {}", dir.display());
        }
        let objects: std::sync::Arc<dyn ArchiveObjects> =
            std::sync::Arc::new(LocalArchive::new(dir));
        Ok(crate::app::archive::archived_log(hot, objects).await?)
    }
}

#[cfg(feature = "aws")]
impl ArchiveChoice {
    /// The S3 archive chosen for an AWS deployment, if any.
    pub fn s3(
        &self,
        config: &jitr_aws::SdkConfig,
    ) -> Result<Option<std::sync::Arc<dyn jitr_infra::archive::ArchiveObjects>>> {
        if !self.archive {
            return Ok(None);
        }
        let Some(bucket) = &self.bucket else {
            bail!(
                "--archive with --aws needs --bucket (or JITR_ARCHIVE_BUCKET): the stack's ArchiveBucket output"
            );
        };
        Ok(Some(std::sync::Arc::new(jitr_aws::S3Archive::new(
            config, bucket, "",
        ))))
    }
}

/// A progress bar on stderr for `len` events (hidden when quiet or not a terminal).
pub fn progress_bar(len: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "replaying {bar:40} {pos}/{len} events ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
