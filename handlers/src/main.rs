//! The `jitr` command: operator tools over the runner event log.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use jitr_domain::Timestamp;
use jitr_handlers::{audit, bench, demo, history};
use jitr_infra::SqliteEventStore;

/// The handlers `jitr lambda` runs.
const LAMBDA_HANDLERS: [&str; 7] = [
    "webhook",
    "scaleup",
    "lifecycle",
    "projector",
    "compensate",
    "reaper",
    "rebalancer",
];

/// The log file inside a data directory.
const LOG_FILE: &str = "events.db";

/// jitr: ephemeral GitHub Actions runners on EC2 that cannot leak instances.
///
/// Every runner's life is an event stream in a log (SQLite in the data directory
/// on the embedded default). These commands ask the log questions.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// Which AWS deployment, and where to reach it.
#[derive(clap::Args, Debug)]
struct AwsTarget {
    /// Prefix of the AWS resource names (as given to `jitr init`).
    #[arg(long, env = "JITR_PREFIX", default_value = "jitr")]
    prefix: String,
    /// AWS endpoint (an emulator, or a VPC endpoint; else AWS_ENDPOINT_URL).
    #[arg(long)]
    endpoint: Option<String>,
    /// AWS region (else the standard chain).
    #[arg(long)]
    region: Option<String>,
}

/// The error of an AWS command in a build without AWS support.
#[cfg(not(feature = "aws"))]
fn without_aws() -> anyhow::Error {
    anyhow::anyhow!(
        "this jitr was built without AWS support (the embedded default only): \
         build it with `cargo build --release -p jitr-handlers --features aws`"
    )
}

#[cfg(feature = "aws")]
impl AwsTarget {
    fn settings(&self) -> jitr_aws::AwsSettings {
        jitr_aws::AwsSettings {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            static_credentials: None,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the timeline of one runner.
    ///
    /// KEY is a runner stream id (`owner/repo#job_id#attempt`), an instance id, or
    /// a workflow job id (every runner attempt for the job).
    /// Exit status 2 when nothing in the log matches.
    History {
        /// The data directory holding the log.
        #[arg(long, env = "JITR_DATA_DIR", default_value = "jitr-data")]
        data_dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// A stream id, an instance id or a job id.
        key: String,
    },
    /// Replay the whole log: runners by status, the fleet, and every runner owed a
    /// termination.
    ///
    /// Exit status 1 when an instance has been owed a termination for longer than
    /// --deadline (usable from cron and CI); 2 when the log cannot be read.
    Audit {
        /// The data directory holding the log.
        #[arg(long, env = "JITR_DATA_DIR", default_value = "jitr-data")]
        data_dir: PathBuf,
        /// Print JSON (the shape is `AuditReport`, versioned by its `schema` field).
        #[arg(long)]
        json: bool,
        /// Judge the log as of this moment (RFC 3339) instead of now.
        #[arg(long, value_parser = parse_moment)]
        now: Option<Timestamp>,
        /// How long a termination may stay owed before the audit fails.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        deadline: Duration,
        /// Start of the window the leak figures cover (RFC 3339; default: the
        /// first event).
        #[arg(long, value_parser = parse_moment)]
        since: Option<Timestamp>,
        /// End of the window (RFC 3339; default: now).
        #[arg(long, value_parser = parse_moment, conflicts_with = "as_of")]
        until: Option<Timestamp>,
        /// Rebuild everything as it was at this moment (RFC 3339): live instances,
        /// vCPUs per market, statuses.
        #[arg(long, value_parser = parse_moment)]
        as_of: Option<Timestamp>,
        /// An instance counts as orphaned this long after its termination became owed.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        orphan_grace: Duration,
        /// Also check the log against the instances the cloud runs now (the
        /// simulator in the data directory, or EC2 with --aws).
        #[arg(long)]
        live: bool,
        /// Audit the AWS deployment (DynamoDB log, EC2) instead of a data directory.
        #[arg(long)]
        aws: bool,
        #[command(flatten)]
        target: AwsTarget,
    },
    /// Write a demonstration log (the seed incident in miniature, compensated) and
    /// print its audit.
    Demo {
        /// The data directory to write the log into.
        #[arg(long, env = "JITR_DATA_DIR", default_value = "jitr-data")]
        data_dir: PathBuf,
        /// Delete an existing log in the data directory first.
        #[arg(long)]
        reset: bool,
    },
    /// Run jitr: the webhook endpoint and every handler in one process.
    ///
    /// With no AWS configuration it runs on the embedded default: the event log in
    /// DATA_DIR/events.db, a simulated EC2 and GitHub in DATA_DIR/cloud.db, local
    /// queues in DATA_DIR/queues.db. Stops cleanly on SIGTERM or Ctrl-C.
    Serve {
        /// The data directory.
        #[arg(long, env = "JITR_DATA_DIR", default_value = "jitr-data")]
        data_dir: PathBuf,
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
        /// Reaper and rebalancer period.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        sweep_interval: Duration,
        /// Simulated on-demand vCPU quota.
        #[arg(long, default_value_t = 32)]
        on_demand_vcpus: u32,
        /// Simulated spot vCPU quota.
        #[arg(long, default_value_t = 32)]
        spot_vcpus: u32,
        /// Simulated boot time.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        sim_boot: Duration,
        /// Serve only these repositories (owner/repo, repeatable; default: all).
        #[arg(long = "allow-repo")]
        allow_repos: Vec<String>,
        /// Run on AWS (DynamoDB, EC2, SQS, EventBridge, SSM, the GitHub App),
        /// configured from JITR_* variables; see the README.
        #[arg(long)]
        aws: bool,
        #[command(flatten)]
        target: AwsTarget,
    },
    /// Send a signed `workflow_job` webhook, as GitHub would (to try `jitr serve`).
    SendWebhook {
        /// The endpoint.
        #[arg(long, default_value = "http://127.0.0.1:8080/webhook")]
        url: String,
        /// The webhook secret.
        #[arg(long, env = "JITR_WEBHOOK_SECRET", hide_env_values = true)]
        secret: String,
        /// `queued`, `in_progress` or `completed`.
        #[arg(long, default_value = "queued")]
        action: String,
        /// Repository as owner/name.
        #[arg(long, default_value = "acme/widgets")]
        repo: String,
        /// The workflow job id.
        #[arg(long)]
        job: u64,
        /// Labels (comma separated).
        #[arg(long, default_value = "self-hosted,linux")]
        labels: String,
        /// The runner that took the job (in_progress, completed).
        #[arg(long)]
        runner: Option<String>,
    },
    /// Run one handler under the AWS Lambda runtime.
    ///
    /// HANDLER is webhook (function URL), scaleup / lifecycle (SQS, partial batch
    /// failures), projector (DynamoDB Streams), compensate (EventBridge or SQS),
    /// reaper / rebalancer (scheduled). Configuration comes from the environment:
    /// JITR_PREFIX, JITR_WEBHOOK_SECRET, JITR_GITHUB_APP_ID, JITR_GITHUB_PRIVATE_KEY
    /// (see the README). Logs are JSON.
    Lambda {
        /// Which handler.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(LAMBDA_HANDLERS))]
        handler: String,
    },
    /// Run a deterministic scenario on the local simulator through the real
    /// handlers, and report jobs served, orphans, orphan vCPU-minutes, peak vCPUs,
    /// launch refusals, compensation latency and when the quota was free again.
    Simulate {
        /// The scenario.
        #[arg(long, value_enum)]
        scenario: jitr_handlers::simulate::Scenario,
        /// Seed of every random choice.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Turn compensation and the reaper off (what would leak without them).
        #[arg(long)]
        without_compensation: bool,
        /// Keep the simulated log here (for `jitr audit` / `history`); default: a
        /// scratch directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check what an operator checks first: dead-letter queues (warns above 5
    /// messages), alarm states, instances against open runners, configuration.
    ///
    /// Exit status 0 when all is well, 1 on a warning, 2 when a check failed.
    Doctor {
        /// The embedded default's data directory.
        #[arg(long, env = "JITR_DATA_DIR", default_value = "jitr-data")]
        data_dir: PathBuf,
        /// Check the AWS deployment instead.
        #[arg(long)]
        aws: bool,
        #[command(flatten)]
        target: AwsTarget,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create jitr's AWS resources: the event table, the queues with their DLQs and
    /// redrive, the command bus and its rule, the DLQ alarms.
    ///
    /// Idempotent: a second run finds everything and exits 0. Credentials and region
    /// come from the standard AWS chain; the endpoint from --endpoint or
    /// AWS_ENDPOINT_URL (e.g. moto on http://127.0.0.1:5000).
    Init {
        #[command(flatten)]
        target: AwsTarget,
        /// Receives before a message goes to its dead-letter queue.
        #[arg(long, default_value_t = jitr_infra::DEFAULT_MAX_RECEIVES)]
        max_receives: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measure the core: in-memory fold, SQLite replay, SQLite append latency.
    ///
    /// Build with --release for meaningful figures.
    Bench {
        /// Events to fold in memory.
        #[arg(long, default_value_t = 1_000_000)]
        fold_events: u64,
        /// Events to write to SQLite and replay.
        #[arg(long, default_value_t = 1_000_000)]
        replay_events: u64,
        /// Single-event appends to time.
        #[arg(long, default_value_t = 20_000)]
        appends: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Measure the leak window in `serve` instead: this many runners fail
        /// after launch; prints failure → Terminated p50/p99.
        #[arg(long)]
        leak_window: Option<usize>,
        /// Write a log of --events events into this data directory (for timing
        /// `jitr audit` on it), instead of benchmarking.
        #[arg(long)]
        write_history: Option<PathBuf>,
        /// Events for --write-history.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Measure the reaper's sweep at 50 live runners as the history of closed
        /// runners grows 1× → 10× → 100× (from 1,000).
        #[arg(long)]
        reaper: bool,
    },
}

fn parse_moment(text: &str) -> Result<Timestamp, String> {
    let t = humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("{e}: expected e.g. 2026-05-04T04:22:00Z"))?;
    Ok(to_timestamp(t))
}

fn to_timestamp(t: SystemTime) -> Timestamp {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    Timestamp(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// The one place jitr reads the clock.
fn now() -> Timestamp {
    to_timestamp(SystemTime::now())
}

/// Opens an existing log for reading; never creates one.
fn open_existing(data_dir: &Path) -> Result<SqliteEventStore> {
    let path = data_dir.join(LOG_FILE);
    if !path.is_file() {
        bail!(
            "no jitr log at {}: point --data-dir (or JITR_DATA_DIR) at a jitr data directory, \
             or create one with `jitr demo --data-dir {}`",
            path.display(),
            data_dir.display()
        );
    }
    SqliteEventStore::open(&path).with_context(|| format!("opening {}", path.display()))
}

fn progress_bar(len: u64, quiet: bool) -> ProgressBar {
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

async fn run_audit<S: jitr_infra::EventStore>(
    store: &S,
    json: bool,
    window: audit::AuditWindow,
    horizon: Option<Timestamp>,
    cloud: Option<Vec<jitr_infra::ManagedInstance>>,
) -> Result<ExitCode> {
    let total = store.last_position().await?;
    let bar = progress_bar(total, json && total < 100_000);
    let replayed = audit::replay(store, horizon, |p| bar.set_position(p)).await?;
    bar.finish_and_clear();
    print_audit(replayed, json, window, cloud)
}

fn print_audit(
    replayed: audit::Replay,
    json: bool,
    window: audit::AuditWindow,
    cloud: Option<Vec<jitr_infra::ManagedInstance>>,
) -> Result<ExitCode> {
    let mut report = audit::judge(&replayed, window);
    if let Some(cloud) = cloud {
        report.live_check = Some(audit::cross_check(&report, &cloud, window.as_of, 120_000));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", audit::render(&report));
    }
    Ok(if report.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::History {
            data_dir,
            json,
            key,
        } => {
            let store = open_existing(&data_dir)?;
            let timelines = history::timelines(&store, &key).await?;
            if timelines.is_empty() {
                eprintln!(
                    "jitr: no runner matches {key:?} in {}: give a stream id \
                     (owner/repo#job_id#attempt), an instance id or a job id; `jitr audit` lists runners",
                    data_dir.join(LOG_FILE).display()
                );
                return Ok(ExitCode::from(2));
            }
            if json {
                // One runner: its timeline; a job with several attempts: a list.
                match timelines.as_slice() {
                    [one] => println!("{}", serde_json::to_string_pretty(one)?),
                    many => println!("{}", serde_json::to_string_pretty(many)?),
                }
            } else {
                for timeline in &timelines {
                    print!("{}", history::render(timeline));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Audit {
            data_dir,
            json,
            now: at,
            deadline,
            since,
            until,
            as_of,
            orphan_grace,
            live,
            aws,
            target,
        } => {
            let moment = as_of.or(until).or(at).unwrap_or_else(now);
            let window = audit::AuditWindow {
                since,
                as_of: moment,
                deadline_ms: deadline.as_millis() as u64,
                orphan_grace_ms: orphan_grace.as_millis() as u64,
            };
            let horizon = as_of.or(until);
            if aws {
                #[cfg(feature = "aws")]
                {
                    let config = target.settings().load().await;
                    let names = jitr_aws::AwsNames::new(target.prefix);
                    let store = jitr_aws::DynamoEventStore::new(&config, names.events_table());
                    let compute =
                        jitr_aws::Ec2Compute::new(&config, vec![]).with_deployment(names.prefix());
                    let cloud = if live {
                        Some(jitr_infra::Compute::list_managed(&compute).await?)
                    } else {
                        None
                    };
                    return run_audit(&store, json, window, horizon, cloud).await;
                }
                #[cfg(not(feature = "aws"))]
                {
                    let _ = target;
                    return Err(without_aws());
                }
            }
            let store = open_existing(&data_dir)?;
            let cloud = if live {
                let cloud_db = data_dir.join("cloud.db");
                if !cloud_db.is_file() {
                    bail!(
                        "--live: no simulated cloud at {} (jitr serve creates it)",
                        cloud_db.display()
                    );
                }
                let sim = jitr_infra::SimCloud::open(
                    &cloud_db,
                    jitr_infra::SimSettings::default(),
                    jitr_infra::system_clock(),
                )?;
                Some(jitr_infra::Compute::list_managed(&sim).await?)
            } else {
                None
            };
            run_audit(&store, json, window, horizon, cloud).await
        }
        Cmd::Demo { data_dir, reset } => {
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("creating {}", data_dir.display()))?;
            let path = data_dir.join(LOG_FILE);
            if reset {
                for suffix in ["", "-wal", "-shm"] {
                    let file = PathBuf::from(format!("{}{suffix}", path.display()));
                    if file.exists() {
                        std::fs::remove_file(&file)
                            .with_context(|| format!("removing {}", file.display()))?;
                    }
                }
            }
            let store = Arc::new(SqliteEventStore::open(&path)?);
            if !demo::log_is_empty(&store).await? {
                bail!(
                    "{} already holds a log: pass --reset to replace it, or another --data-dir",
                    path.display()
                );
            }
            let at = now();
            let summary = demo::run(Arc::clone(&store), at).await?;
            println!(
                "wrote {} runners to {}; the projector issued {} compensations\n",
                summary.runners.len(),
                path.display(),
                summary.compensations
            );
            let window = audit::AuditWindow {
                since: None,
                as_of: at,
                deadline_ms: audit::DEFAULT_DEADLINE_MS,
                orphan_grace_ms: audit::DEFAULT_DEADLINE_MS,
            };
            let code = run_audit(&*store, false, window, None, None).await?;
            println!(
                "\nnext: jitr history --data-dir {} '{}'",
                data_dir.display(),
                summary.runners[1]
            );
            Ok(code)
        }
        Cmd::Serve {
            data_dir,
            listen,
            webhook_secret,
            drain_grace,
            boot_timeout,
            sweep_interval,
            on_demand_vcpus,
            spot_vcpus,
            sim_boot,
            allow_repos,
            aws,
            target,
        } => {
            use jitr_handlers::serve;
            if aws {
                #[cfg(feature = "aws")]
                {
                    let setup =
                        jitr_handlers::aws_mode::from_env(target.settings(), &target.prefix)
                            .await?;
                    if setup.secret.is_empty() {
                        bail!(
                            "JITR_WEBHOOK_SECRET is not set: with --aws the webhook secret must be the GitHub App's"
                        );
                    }
                    let assembly = serve::Assembly {
                        store: setup.store.clone(),
                        ports: setup.ports.clone(),
                        policy: setup.policy.clone(),
                        secret: setup.secret.clone(),
                        scaleup_queue: setup.scaleup.clone(),
                        lifecycle_queue: setup.lifecycle.clone(),
                        bus: setup.bus.clone(),
                        compensation_source: serve::CompensationSource::Queue(
                            setup.compensation.clone(),
                        ),
                        cadence: serve::Cadence {
                            projector: Duration::from_secs(1),
                            sweep: sweep_interval,
                        },
                    };
                    let listener = tokio::net::TcpListener::bind(&listen)
                        .await
                        .with_context(|| format!("listening on {listen}"))?;
                    println!(
                        "jitr serve: listening on {} (AWS deployment {})",
                        serve::describe(listener.local_addr()?),
                        setup.names.prefix()
                    );
                    let (stop_tx, stop) = tokio::sync::watch::channel(false);
                    tokio::spawn(async move {
                        shutdown_signal().await;
                        let _ = stop_tx.send(true);
                    });
                    serve::run(assembly, listener, stop).await?;
                    return Ok(ExitCode::SUCCESS);
                }
                #[cfg(not(feature = "aws"))]
                {
                    let _ = target;
                    return Err(without_aws());
                }
            }
            let generated = webhook_secret.is_none();
            let secret = webhook_secret.unwrap_or_else(|| {
                use rand::Rng;
                let bytes: [u8; 24] = rand::rng().random();
                hex::encode(bytes)
            });
            let mut policy = jitr_handlers::policy::RunnerPolicy::default();
            policy.deadlines.drain_grace_ms = drain_grace.as_millis() as u64;
            policy.deadlines.boot_timeout_ms = boot_timeout.as_millis() as u64;
            policy.allowlist = allow_repos;
            let settings = jitr_infra::SimSettings {
                on_demand_vcpus,
                spot_vcpus,
                boot_ms: sim_boot.as_millis() as u64,
                ..jitr_infra::SimSettings::default()
            };
            let cadence = serve::Cadence {
                sweep: sweep_interval,
                ..serve::Cadence::default()
            };
            let assembly = serve::embedded(
                &data_dir,
                policy,
                settings,
                secret.clone().into_bytes(),
                cadence,
            )?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            let url = serve::describe(listener.local_addr()?);
            println!(
                "jitr serve: listening on {url} (embedded default in {})",
                data_dir.display()
            );
            println!(
                "  event log {}/events.db, simulated EC2 and GitHub {}/cloud.db",
                data_dir.display(),
                data_dir.display()
            );
            if generated {
                println!(
                    "  webhook secret (generated; set JITR_WEBHOOK_SECRET to choose one): {secret}"
                );
            }
            println!("  try: jitr send-webhook --url {url}/webhook --secret <secret> --job 1");
            println!("  then: jitr audit --data-dir {}", data_dir.display());
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                shutdown_signal().await;
                eprintln!("jitr serve: shutting down");
                let _ = stop_tx.send(true);
            });
            serve::run(assembly, listener, stop).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::SendWebhook {
            url,
            secret,
            action,
            repo,
            job,
            labels,
            runner,
        } => {
            let (owner, name) = repo.split_once('/').context("--repo must be owner/name")?;
            let labels: Vec<String> = labels.split(',').map(|l| l.trim().to_owned()).collect();
            let body = jitr_handlers::webhook::sample_payload(
                &action,
                owner,
                name,
                job,
                &labels,
                runner.as_deref(),
            );
            let delivery = format!("jitr-cli-{}-{job}-{}", action, std::process::id());
            let response = reqwest::Client::new()
                .post(&url)
                .header("X-GitHub-Event", "workflow_job")
                .header("X-GitHub-Delivery", &delivery)
                .header(
                    "X-Hub-Signature-256",
                    jitr_handlers::webhook::sign(secret.as_bytes(), body.as_bytes()),
                )
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .with_context(|| format!("posting to {url}"))?;
            let status = response.status();
            println!(
                "{} {}",
                status.as_u16(),
                response.text().await.unwrap_or_default()
            );
            Ok(if status.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Simulate {
            scenario,
            seed,
            without_compensation,
            data_dir,
            json,
        } => {
            let scratch = tempfile::tempdir().context("creating a scratch directory")?;
            let dir = match &data_dir {
                Some(d) => {
                    std::fs::create_dir_all(d)?;
                    if d.join(LOG_FILE).exists() {
                        bail!(
                            "{} already holds a log: simulate into an empty --data-dir",
                            d.display()
                        );
                    }
                    d.clone()
                }
                None => scratch.path().to_path_buf(),
            };
            let report =
                jitr_handlers::simulate::run(&dir, scenario, seed, !without_compensation).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", jitr_handlers::simulate::render(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Lambda { handler } => {
            #[cfg(feature = "aws")]
            {
                run_lambda(handler).await?;
                Ok(ExitCode::SUCCESS)
            }
            #[cfg(not(feature = "aws"))]
            {
                let _ = handler;
                Err(without_aws())
            }
        }
        Cmd::Doctor {
            data_dir,
            aws,
            target,
            json,
        } => {
            let report = if aws {
                #[cfg(feature = "aws")]
                {
                    doctor_aws(&target).await
                }
                #[cfg(not(feature = "aws"))]
                {
                    let _ = target;
                    return Err(without_aws());
                }
            } else {
                doctor_embedded(&data_dir).await
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(ExitCode::from(report.exit_code()))
        }
        #[cfg(not(feature = "aws"))]
        Cmd::Init { .. } => Err(without_aws()),
        #[cfg(feature = "aws")]
        Cmd::Init {
            target,
            max_receives,
            json,
        } => {
            let config = target.settings().load().await;
            let names = jitr_aws::AwsNames::new(target.prefix);
            let report = jitr_handlers::init::init(&config, &names, max_receives).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for r in &report {
                    println!("{:<6} {:<70} {}", r.kind, r.name, r.setup);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench {
            fold_events,
            replay_events,
            appends,
            json,
            leak_window,
            write_history,
            events,
            reaper,
        } => {
            if let Some(dir) = write_history {
                std::fs::create_dir_all(&dir)?;
                if dir.join(LOG_FILE).exists() {
                    bail!("{} already holds a log", dir.display());
                }
                let written = bench::write_history(&dir, events).await?;
                println!("wrote {written} events to {}", dir.join(LOG_FILE).display());
                return Ok(ExitCode::SUCCESS);
            }
            if reaper {
                let dir = tempfile::tempdir().context("creating a scratch directory")?;
                let report =
                    bench::reaper_scaling(dir.path(), 50, &[1_000, 10_000, 100_000]).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    for (closed, median) in &report.sweeps {
                        println!(
                            "reaper sweep, {} live runners, {closed:>7} closed in the log: median {median:.0} µs",
                            report.live_runners
                        );
                    }
                    println!("worst / best median: {:.2}", report.worst_ratio);
                }
                return Ok(ExitCode::SUCCESS);
            }
            if let Some(runners) = leak_window {
                let dir = tempfile::tempdir().context("creating a scratch directory")?;
                let report = bench::leak_window(dir.path(), runners).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    println!(
                        "leak window (Failed -> Terminated) over {} runners: p50 {} ms, p99 {} ms, max {} ms; webhook -> TokenMinted p50 {} ms",
                        report.runners,
                        report.p50_ms,
                        report.p99_ms,
                        report.max_ms,
                        report.webhook_to_token_p50_ms
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            if cfg!(debug_assertions) {
                eprintln!(
                    "warning: a debug build; use `cargo run --release -p jitr-handlers -- bench`"
                );
            }
            let dir = tempfile::tempdir().context("creating a scratch directory")?;
            let sizes = bench::BenchSizes {
                fold_events,
                replay_events,
                appends,
            };
            let report = bench::run(dir.path(), sizes, |stage| eprintln!("bench: {stage}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", bench::render(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn doctor_embedded(data_dir: &Path) -> jitr_handlers::doctor::DoctorReport {
    use jitr_handlers::doctor::{DoctorReport, Level};
    let mut report = DoctorReport::default();
    if !data_dir.join(LOG_FILE).is_file() {
        report.config(
            Level::Error,
            format!(
                "no jitr log in {}: point --data-dir at a jitr data directory",
                data_dir.display()
            ),
        );
        return report;
    }
    let clock = jitr_infra::system_clock();
    let queues = data_dir.join("queues.db");
    if queues.is_file() {
        for name in ["scaleup", "lifecycle"] {
            match jitr_infra::LocalQueue::open(
                &queues,
                name,
                10,
                Duration::from_secs(60),
                clock.clone(),
            ) {
                Ok(queue) => {
                    let reasons: Vec<String> = queue
                        .dead_letters()
                        .unwrap_or_default()
                        .into_iter()
                        .rev()
                        .take(3)
                        .map(|(_, reason)| reason)
                        .collect();
                    report.dead_letters(name, &queue, &reasons).await;
                }
                Err(e) => report.config(Level::Error, format!("queue {name}: {e}")),
            }
        }
    } else {
        report.config(Level::Ok, "no local queues yet (jitr serve creates them)");
    }
    let cloud = data_dir.join("cloud.db");
    match (
        SqliteEventStore::open(data_dir.join(LOG_FILE)),
        cloud.is_file(),
    ) {
        (Ok(store), true) => {
            match jitr_infra::SimCloud::open(&cloud, jitr_infra::SimSettings::default(), clock) {
                Ok(sim) => report.drift(&store, &sim, now(), 120_000).await,
                Err(e) => report.config(Level::Error, format!("simulated cloud: {e}")),
            }
        }
        (Ok(_), false) => {
            report.config(Level::Ok, "no simulated cloud yet (jitr serve creates it)")
        }
        (Err(e), _) => report.config(Level::Error, format!("event log: {e}")),
    }
    report
}

#[cfg(feature = "aws")]
async fn doctor_aws(target: &AwsTarget) -> jitr_handlers::doctor::DoctorReport {
    use jitr_handlers::doctor::{DoctorReport, Level};
    let mut report = DoctorReport::default();
    let config = target.settings().load().await;
    let names = jitr_aws::AwsNames::new(target.prefix.clone());
    let mut alarm_names = Vec::new();
    for name in names.queues() {
        match jitr_aws::SqsQueue::find(&config, &name).await {
            Ok(Some(queue)) => {
                alarm_names.push(jitr_aws::Alarms::dlq_alarm_name(&queue.pair().dlq_name));
                report.dead_letters(&name, &queue, &[]).await;
            }
            Ok(None) => report.config(
                Level::Warn,
                format!("queue {name} or its DLQ is missing: run `jitr init`"),
            ),
            Err(e) => report.config(Level::Error, format!("queue {name}: {e}")),
        }
    }
    match jitr_aws::Alarms::new(&config).describe(&alarm_names).await {
        Ok(states) => report.alarms(&alarm_names, &states),
        Err(e) => report.config(Level::Error, format!("alarms: {e}")),
    }
    let store = jitr_aws::DynamoEventStore::new(&config, names.events_table());
    let compute = jitr_aws::Ec2Compute::new(&config, vec![]).with_deployment(names.prefix());
    report.drift(&store, &compute, now(), 120_000).await;
    if std::env::var("JITR_WEBHOOK_SECRET").map_or(true, |s| s.is_empty()) {
        report.config(
            Level::Warn,
            "JITR_WEBHOOK_SECRET is not set: the webhook handler cannot verify deliveries",
        );
    }
    report
}

#[cfg(feature = "aws")]
async fn run_lambda(handler: String) -> Result<()> {
    use jitr_handlers::lambda;
    use jitr_handlers::ports::Outcome;
    use lambda_runtime::{LambdaEvent, service_fn};
    use serde_json::Value;
    let prefix = std::env::var("JITR_PREFIX").unwrap_or_else(|_| "jitr".into());
    let setup = Arc::new(
        jitr_handlers::aws_mode::from_env(jitr_aws::AwsSettings::default(), &prefix).await?,
    );
    let err = |e: String| lambda_runtime::Error::from(e);
    match handler.as_str() {
        "webhook" => {
            if setup.secret.is_empty() {
                bail!("JITR_WEBHOOK_SECRET is not set: the webhook cannot verify deliveries");
            }
            let hook = Arc::new(jitr_handlers::webhook::Webhook::new(
                setup.secret.clone(),
                jitr_handlers::webhook::DEFAULT_MAX_BODY,
                setup.policy.clone(),
                setup.scaleup.clone(),
                setup.lifecycle.clone(),
            ));
            lambda_runtime::run(service_fn(
                move |event: LambdaEvent<
                    aws_lambda_events::event::lambda_function_urls::LambdaFunctionUrlRequest,
                >| {
                    let hook = hook.clone();
                    async move {
                        Ok::<_, lambda_runtime::Error>(lambda::webhook(&hook, event.payload).await)
                    }
                },
            ))
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        }
        "scaleup" | "lifecycle" => {
            let scaleup = Arc::new(jitr_handlers::scaleup::ScaleUp::new(
                setup.ports.clone(),
                setup.policy.clone(),
            ));
            let lifecycle = Arc::new(jitr_handlers::lifecycle::Lifecycle::new(
                setup.ports.clone(),
            ));
            let queue: Arc<dyn jitr_infra::Queue> = if handler == "scaleup" {
                setup.scaleup.clone()
            } else {
                setup.lifecycle.clone()
            };
            let is_scaleup = handler == "scaleup";
            lambda_runtime::run(service_fn(
                move |event: LambdaEvent<aws_lambda_events::event::sqs::SqsEvent>| {
                    let (scaleup, lifecycle, queue) =
                        (scaleup.clone(), lifecycle.clone(), queue.clone());
                    async move {
                        let response =
                            lambda::process_batch(&*queue, &event.payload.records, |m| {
                                let (scaleup, lifecycle) = (scaleup.clone(), lifecycle.clone());
                                async move {
                                    let job = match serde_json::from_str::<
                                        jitr_handlers::webhook::JobMessage,
                                    >(&m.body)
                                    {
                                        Ok(job) => job,
                                        Err(e) => {
                                            return Ok(Outcome::DeadLetter(format!(
                                                "undecodable job message: {e}"
                                            )));
                                        }
                                    };
                                    if is_scaleup {
                                        scaleup.handle(&job, m.receive_count, now()).await
                                    } else {
                                        lifecycle.handle(&job, now()).await
                                    }
                                }
                            })
                            .await;
                        Ok::<_, lambda_runtime::Error>(response)
                    }
                },
            ))
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        }
        "projector" => {
            let projector = Arc::new(tokio::sync::Mutex::new(
                jitr_handlers::projector::Projector::start(
                    setup.store.clone(),
                    setup.bus.clone(),
                    60_000,
                )
                .await?,
            ));
            lambda_runtime::run(service_fn(move |_event: LambdaEvent<Value>| {
                let projector = projector.clone();
                async move {
                    // Each stream record is a nudge: read the feed from the checkpoint.
                    let published = projector
                        .lock()
                        .await
                        .tick(now())
                        .await
                        .map_err(|e| err(e.to_string()))?;
                    Ok::<_, lambda_runtime::Error>(
                        serde_json::json!({ "published": published.len() }),
                    )
                }
            }))
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        }
        "compensate" => {
            let compensation = Arc::new(jitr_handlers::compensation::Compensation::new(
                setup.ports.clone(),
                setup.policy.clone(),
            ));
            let queue: Arc<dyn jitr_infra::Queue> = setup.compensation.clone();
            lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
                let (compensation, queue) = (compensation.clone(), queue.clone());
                async move {
                    let bodies = lambda::compensation_bodies(&event.payload);
                    if bodies.iter().all(|(record, _)| record.is_some()) && !bodies.is_empty() {
                        let records: Vec<_> = bodies.into_iter().filter_map(|(r, _)| r).collect();
                        let response = lambda::process_batch(&*queue, &records, |m| {
                            let compensation = compensation.clone();
                            async move {
                                match jitr_infra::decode_terminate_runner(&m.body) {
                                    Ok(command) => compensation.handle(&command, now()).await,
                                    Err(e) => Ok(Outcome::DeadLetter(e.to_string())),
                                }
                            }
                        })
                        .await;
                        return Ok::<_, lambda_runtime::Error>(serde_json::to_value(response)?);
                    }
                    for (_, body) in bodies {
                        let command = jitr_infra::decode_terminate_runner(&body)
                            .map_err(|e| err(e.to_string()))?;
                        match compensation
                            .handle(&command, now())
                            .await
                            .map_err(|e| err(e.to_string()))?
                        {
                            Outcome::Done(_) => {}
                            // Fail the invocation: EventBridge retries it.
                            other => return Err(err(format!("{other:?}"))),
                        }
                    }
                    Ok(Value::Null)
                }
            }))
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        }
        "reaper" | "rebalancer" => {
            let compensation = Arc::new(jitr_handlers::compensation::Compensation::new(
                setup.ports.clone(),
                setup.policy.clone(),
            ));
            let reaper = Arc::new(jitr_handlers::reaper::Reaper::new(
                setup.ports.clone(),
                setup.policy.clone(),
                compensation,
            ));
            let rebalancer = Arc::new(jitr_handlers::rebalancer::Rebalancer::new(
                setup.ports.clone(),
                setup.policy.clone(),
                setup.scaleup.clone(),
            ));
            let is_reaper = handler == "reaper";
            lambda_runtime::run(service_fn(move |_event: LambdaEvent<Value>| {
                let (reaper, rebalancer) = (reaper.clone(), rebalancer.clone());
                async move {
                    let report = if is_reaper {
                        serde_json::to_value(
                            reaper.sweep(now()).await.map_err(|e| err(e.to_string()))?,
                        )?
                    } else {
                        serde_json::to_value(
                            rebalancer
                                .tick(now())
                                .await
                                .map_err(|e| err(e.to_string()))?,
                        )?
                    };
                    Ok::<_, lambda_runtime::Error>(report)
                }
            }))
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        }
        other => bail!(
            "unknown handler {other:?}: one of {}",
            lambda::HANDLERS.join(", ")
        ),
    }
    Ok(())
}

async fn shutdown_signal() {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("JITR_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(match cli.command {
            Cmd::Lambda { .. } => "info",
            // A simulation's report says what happened; its handlers' logs are noise.
            Cmd::Simulate { .. } => "off",
            _ => "warn",
        })
    });
    if matches!(cli.command, Cmd::Lambda { .. }) {
        // CloudWatch Logs reads one JSON object per line.
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
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("jitr: {e:#}");
            ExitCode::from(2)
        }
    }
}
