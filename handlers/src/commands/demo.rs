//! `jitr demo`: writes a small runner log on the embedded default that shows the
//! core at work: the seed incident in miniature, compensated.
//!
//! No cloud is involved: the demo confirms each termination the projector issues
//! itself, where `jitr serve` runs the compensation handler against the compute
//! port. `jitr simulate` runs the whole system on the simulator instead.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use jitr_domain::{
    Command, Deadlines, FailureStage, InstanceId, InstanceSpec, JobRef, LaunchErrorClass, Market,
    StreamId, TerminationEvidence, Timestamp,
};
use jitr_infra::{CommandId, EventStore, InProcessBus, SqliteEventStore};

use crate::app::dispatch::{DispatchError, Dispatched, dispatch};
use crate::app::projector::{Projector, ProjectorError};

/// What the demo did.
#[derive(Debug, Default)]
pub struct DemoSummary {
    /// Runner streams written.
    pub runners: Vec<StreamId>,
    /// Compensation commands the projector published.
    pub compensations: usize,
}

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A command was refused or not stored.
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    /// The projector failed.
    #[error(transparent)]
    Projector(#[from] ProjectorError),
}

struct Script<'a> {
    store: &'a SqliteEventStore,
    base: Timestamp,
    step: u64,
}

impl Script<'_> {
    async fn run(
        &mut self,
        stream: &StreamId,
        command: Command,
        secs: u64,
    ) -> Result<Dispatched, DispatchError> {
        self.step += 1;
        let id = CommandId::new(format!("demo:{stream}:{}", self.step));
        dispatch(
            self.store,
            stream,
            command,
            self.base.plus_ms(secs * 1000),
            &id,
        )
        .await
    }

    async fn launch(
        &mut self,
        stream: &StreamId,
        market: Market,
        outcome: Result<&str, (&str, LaunchErrorClass)>,
        secs: u64,
    ) -> Result<(), DispatchError> {
        let Dispatched::Appended { state, .. } = self
            .run(stream, Command::IntendLaunch { market }, secs)
            .await?
        else {
            unreachable!("a first launch intent always appends");
        };
        let client_token = state.pending_launch().cloned().expect("pending intent");
        let command = match outcome {
            Ok(instance) => Command::RecordLaunch {
                client_token,
                instance_id: InstanceId(instance.into()),
                instance_type: "c5.xlarge".into(),
                vcpus: 4,
            },
            Err((code, class)) => Command::RejectLaunch {
                client_token,
                code: code.into(),
                class,
            },
        };
        self.run(stream, command, secs + 2).await?;
        Ok(())
    }
}

/// Writes the demo log into `store`, ending at `now`, and compensates it.
pub async fn run(store: Arc<SqliteEventStore>, now: Timestamp) -> Result<DemoSummary, DemoError> {
    let base = Timestamp(now.0 - 5 * 60_000);
    let mut script = Script {
        store: &store,
        base,
        step: 0,
    };
    let mut summary = DemoSummary::default();
    let streams: Vec<StreamId> = (1..=6u64)
        .map(|n| {
            StreamId::for_job(
                &JobRef {
                    owner: "acme".into(),
                    repo: "widgets".into(),
                    job_id: n,
                    run_id: 100,
                },
                1,
            )
            .expect("a stream id of a valid repository")
        })
        .collect();
    for (i, stream) in streams.iter().enumerate() {
        let n = i as u64 + 1;
        script
            .run(
                stream,
                Command::Request {
                    job: JobRef {
                        owner: "acme".into(),
                        repo: "widgets".into(),
                        job_id: n,
                        run_id: 100,
                    },
                    attempt: 1,
                    labels: vec!["self-hosted".into(), "linux".into(), "x64".into()],
                    spec: InstanceSpec {
                        instance_type: "c5.xlarge".into(),
                        vcpus: 4,
                        image: "ami-0jitrdemo".into(),
                        pool: None,
                        avoid_spot: Vec::new(),
                        park: false,
                    },
                    deadlines: Deadlines::default(),
                    installation: None,
                    deployment: None,
                },
                n,
            )
            .await?;
    }
    let [s1, s2, s3, s4, s5, s6] = &streams[..] else {
        unreachable!("six streams")
    };
    // 1: the happy path; its instance drains after the job and is terminated.
    script
        .launch(s1, Market::Spot, Ok("i-0demo000000000001"), 10)
        .await?;
    let name = |n: u64| Command::RecordToken {
        runner_name: format!("jitr-acme-widgets-{n}-1"),
        runner_id: None,
    };
    script.run(s1, name(1), 20).await?;
    script.run(s1, Command::StartJob { job: None }, 30).await?;
    script
        .run(
            s1,
            Command::CompleteJob {
                conclusion: Some("success".into()),
                job: None,
            },
            60,
        )
        .await?;
    // 2: the seed incident's leak: the JIT mint fails after RunInstances succeeded.
    script
        .launch(s2, Market::Spot, Ok("i-0demo000000000002"), 12)
        .await?;
    script
        .run(
            s2,
            Command::Fail {
                stage: FailureStage::Token,
                reason: "generate-jitconfig answered 500".into(),
            },
            25,
        )
        .await?;
    // 3: both markets refuse: no instance exists, the runner fails at once.
    script
        .launch(
            s3,
            Market::Spot,
            Err(("MaxSpotInstanceCountExceeded", LaunchErrorClass::Quota)),
            14,
        )
        .await?;
    script
        .launch(
            s3,
            Market::OnDemand,
            Err(("VcpuLimitExceeded", LaunchErrorClass::Quota)),
            18,
        )
        .await?;
    script
        .run(
            s3,
            Command::Fail {
                stage: FailureStage::Launch,
                reason: "spot and on-demand launch both failed".into(),
            },
            20,
        )
        .await?;
    // 4: running; 5: booting.
    script
        .launch(s4, Market::OnDemand, Ok("i-0demo000000000004"), 16)
        .await?;
    script.run(s4, name(4), 40).await?;
    script.run(s4, Command::StartJob { job: None }, 70).await?;
    script
        .launch(s5, Market::Spot, Ok("i-0demo000000000005"), 200)
        .await?;
    // 6: scale-up crashed right after LaunchIntended: an instance may exist.
    script
        .run(
            s6,
            Command::IntendLaunch {
                market: Market::Spot,
            },
            30,
        )
        .await?;
    script
        .run(
            s6,
            Command::Fail {
                stage: FailureStage::Launch,
                reason: "scale-up crashed after LaunchIntended".into(),
            },
            90,
        )
        .await?;

    let (bus, mut commands) = InProcessBus::new();
    let log: Arc<dyn jitr_infra::RunnerLog> = store.clone();
    let mut projector = Projector::start(log, Arc::new(bus), 60_000, "demo").await?;
    summary.compensations += projector.tick(now).await?.len();
    while let Ok(owed) = commands.try_recv() {
        // The demo's cloud reports every owed instance terminated, and finds
        // nothing for the unresolved launch.
        let evidence = if owed.instance_id.is_some() {
            TerminationEvidence::ReportedTerminated
        } else {
            TerminationEvidence::TokenFoundNothing
        };
        let confirm = Command::ConfirmTerminated {
            instance_id: owed.instance_id.clone(),
            evidence,
        };
        let id = CommandId::new(format!("demo:terminated:{}", owed.stream));
        dispatch(&*store, &owed.stream, confirm, now, &id).await?;
    }
    projector.catch_up().await?;
    summary.runners = streams;
    Ok(summary)
}

/// Whether the log already holds events.
pub async fn log_is_empty(store: &SqliteEventStore) -> Result<bool, jitr_infra::StoreError> {
    Ok(store.last_position().await? == 0)
}

/// `jitr demo` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    data: super::DataDir,
    /// Delete an existing log in the data directory first.
    #[arg(long)]
    reset: bool,
}

/// Writes the demonstration log and prints its audit.
pub async fn command(args: Args) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let data_dir = &args.data.path;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let path = data_dir.join(super::LOG_FILE);
    if args.reset {
        for suffix in ["", "-wal", "-shm"] {
            let file = PathBuf::from(format!("{}{suffix}", path.display()));
            if file.exists() {
                std::fs::remove_file(&file)
                    .with_context(|| format!("removing {}", file.display()))?;
            }
        }
    }
    let store = Arc::new(SqliteEventStore::open(&path)?);
    if !log_is_empty(&store).await? {
        anyhow::bail!(
            "{} already holds a log: pass --reset to replace it, or another --data-dir",
            path.display()
        );
    }
    let at = crate::runtime::now();
    let summary = run(Arc::clone(&store), at).await?;
    println!(
        "wrote {} runners to {}; the projector issued {} compensations\n",
        summary.runners.len(),
        path.display(),
        summary.compensations
    );
    let window = super::audit::AuditWindow {
        since: None,
        as_of: at,
        deadline_ms: super::audit::DEFAULT_DEADLINE_MS,
        orphan_grace_ms: super::audit::DEFAULT_DEADLINE_MS,
    };
    let code = super::audit::print_audit(&*store, false, window, None, None, None, true).await?;
    println!(
        "\nnext: jitr history --data-dir {} '{}'",
        data_dir.display(),
        summary.runners[1]
    );
    Ok(code)
}
