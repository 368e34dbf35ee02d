//! A whole jitr on the embedded default, with a manual clock: SQLite log, the
//! simulated cloud and GitHub, the real handlers and projector.

use std::sync::Arc;

use jitr_domain::{
    InstanceId, InstanceSpec, RunnerStatus, StreamId, TerminateRunner, Timestamp, is_terminal,
};
use jitr_handlers::compensation::Compensation;
use jitr_handlers::lifecycle::Lifecycle;
use jitr_handlers::policy::RunnerPolicy;
use jitr_handlers::ports::{HandlerError, Outcome, Ports};
use jitr_handlers::projector::Projector;
use jitr_handlers::reaper::{Reaper, SweepReport};
use jitr_handlers::scaleup::ScaleUp;
use jitr_handlers::webhook::JobMessage;
use jitr_infra::{
    Compute, EventStore, InProcessBus, ManagedInstance, ManualClock, SimCloud, SimGitHub,
    SimSecrets, SimSettings, SqliteEventStore,
};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::fixtures::T0;

/// jitr on the simulator.
pub struct World {
    /// Scratch directory holding `events.db` and `cloud.db`.
    pub dir: tempfile::TempDir,
    /// The clock every part reads.
    pub clock: ManualClock,
    /// The log.
    pub store: Arc<SqliteEventStore>,
    /// The simulated EC2.
    pub cloud: SimCloud,
    /// The GitHub stand-in.
    pub github: SimGitHub,
    /// Ports as handed to the handlers.
    pub ports: Ports,
    /// The policy.
    pub policy: Arc<RunnerPolicy>,
    /// Scale-up.
    pub scaleup: ScaleUp,
    /// Lifecycle.
    pub lifecycle: Lifecycle,
    /// Compensation.
    pub compensation: Arc<Compensation>,
    /// Reaper.
    pub reaper: Reaper,
    bus: InProcessBus,
    published: UnboundedReceiver<TerminateRunner>,
}

impl World {
    /// A fresh world with `settings` and runners of `vcpus` vCPUs.
    pub fn new(settings: SimSettings, vcpus: u32) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = ManualClock::new(T0);
        let store = Arc::new(SqliteEventStore::open(dir.path().join("events.db")).expect("log"));
        let cloud_db = dir.path().join("cloud.db");
        let cloud = SimCloud::open(&cloud_db, settings, clock.clock()).expect("cloud");
        let github = SimGitHub::open(&cloud_db).expect("github");
        let secrets = SimSecrets::open(&cloud_db).expect("secrets");
        let policy = Arc::new(RunnerPolicy {
            default_spec: InstanceSpec {
                instance_type: if vcpus == 2 { "m5.large" } else { "c5.xlarge" }.into(),
                vcpus,
                image: "ami-sim".into(),
            },
            ..RunnerPolicy::default()
        });
        let ports = Ports {
            store: store.clone(),
            compute: Arc::new(cloud.clone()),
            github: Arc::new(github.clone()),
            secrets: Arc::new(secrets),
        };
        let (bus, published) = InProcessBus::new();
        World::assemble(
            dir, clock, store, cloud, github, ports, policy, bus, published,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        dir: tempfile::TempDir,
        clock: ManualClock,
        store: Arc<SqliteEventStore>,
        cloud: SimCloud,
        github: SimGitHub,
        ports: Ports,
        policy: Arc<RunnerPolicy>,
        bus: InProcessBus,
        published: UnboundedReceiver<TerminateRunner>,
    ) -> Self {
        let compensation = Arc::new(Compensation::new(ports.clone(), policy.clone()));
        World {
            scaleup: ScaleUp::new(ports.clone(), policy.clone()),
            lifecycle: Lifecycle::new(ports.clone()),
            reaper: Reaper::new(ports.clone(), policy.clone(), compensation.clone()),
            compensation,
            dir,
            clock,
            store,
            cloud,
            github,
            ports,
            policy,
            bus,
            published,
        }
    }

    /// A process restart: fresh handlers (no crash armed, nothing in memory) over
    /// the same log and cloud.
    pub fn restart(self) -> Self {
        let World {
            dir,
            clock,
            store,
            cloud,
            github,
            ports,
            policy,
            ..
        } = self;
        let (bus, published) = InProcessBus::new();
        World::assemble(
            dir, clock, store, cloud, github, ports, policy, bus, published,
        )
    }

    /// Now.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Moves time on by `secs`.
    pub fn advance(&self, secs: u64) {
        self.clock.advance(secs * 1000);
    }

    /// A webhook message for `job_id` of `acme/widgets`.
    pub fn message(&self, action: &str, job_id: u64, runner: Option<&str>) -> JobMessage {
        JobMessage {
            delivery: format!("{action}-{job_id}-{}", self.now().0),
            action: action.into(),
            installation: 1,
            owner: "acme".into(),
            repo: "widgets".into(),
            job_id,
            run_id: 1000 + job_id,
            labels: vec!["self-hosted".into(), "linux".into()],
            runner_name: runner.map(str::to_owned),
            conclusion: (action == "completed").then(|| "success".into()),
            attempt: 1,
        }
    }

    /// Scale-up for a queued `job_id`.
    pub async fn queued(&self, job_id: u64) -> Result<Outcome, HandlerError> {
        self.scaleup
            .handle(&self.message("queued", job_id, None), 1, self.now())
            .await
    }

    /// The stream of `job_id`'s first runner.
    pub fn stream(&self, job_id: u64) -> StreamId {
        crate::fixtures::stream(job_id)
    }

    /// The runner's status.
    pub async fn status(&self, job_id: u64) -> RunnerStatus {
        self.store
            .head(&self.stream(job_id))
            .await
            .unwrap()
            .map_or(RunnerStatus::Unrequested, |h| h.status)
    }

    /// The runner's registered name.
    pub async fn runner_name(&self, job_id: u64) -> Option<String> {
        self.store
            .head(&self.stream(job_id))
            .await
            .unwrap()
            .and_then(|h| h.state.runner_name)
    }

    /// The runner's instance.
    pub async fn instance(&self, job_id: u64) -> Option<InstanceId> {
        self.store
            .head(&self.stream(job_id))
            .await
            .unwrap()
            .and_then(|h| h.instance_id)
    }

    /// A lifecycle event for the runner of `job_id`.
    pub async fn lifecycle(&self, action: &str, job_id: u64) -> Outcome {
        let name = self.runner_name(job_id).await;
        self.lifecycle
            .handle(&self.message(action, job_id, name.as_deref()), self.now())
            .await
            .unwrap()
    }

    /// Runs the projector from its checkpoint, then the compensation for every
    /// command it published. Returns the commands.
    pub async fn project_and_compensate(&mut self) -> Vec<TerminateRunner> {
        let mut projector =
            Projector::start(self.store.clone(), Arc::new(self.bus.clone()), 60_000)
                .await
                .unwrap();
        projector.tick(self.now()).await.unwrap();
        let mut done = Vec::new();
        while let Ok(command) = self.published.try_recv() {
            self.compensation
                .handle(&command, self.now())
                .await
                .unwrap();
            done.push(command);
        }
        projector.catch_up().await.unwrap();
        done
    }

    /// One reaper sweep.
    pub async fn reap(&self) -> SweepReport {
        self.reaper.sweep(self.now()).await.unwrap()
    }

    /// Instances the cloud still runs (not shutting down or gone).
    pub async fn live_instances(&self) -> Vec<ManagedInstance> {
        self.cloud
            .list_managed()
            .await
            .unwrap()
            .into_iter()
            .filter(|m| m.state.is_live())
            .collect()
    }

    /// The no-leak invariant, checked against the cloud and the log: every live
    /// instance has an open stream that owns it, and every closed stream with a
    /// launched instance has its `Terminated`.
    pub async fn assert_no_leak(&self) {
        for instance in self.live_instances().await {
            let stream = instance.stream.clone().expect("tagged");
            let head = self
                .store
                .head(&stream)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{} has no stream", instance.instance_id));
            assert!(
                head.open,
                "{} runs for closed {stream}",
                instance.instance_id
            );
            assert_eq!(head.instance_id.as_ref(), Some(&instance.instance_id));
        }
        let all = self.store.read_all(0, 1_000_000).await.unwrap();
        let mut streams: Vec<StreamId> = all.iter().map(|r| r.stream.clone()).collect();
        streams.dedup();
        for stream in streams {
            let events = self.store.read_stream(&stream).await.unwrap();
            let state = jitr_domain::fold(events.iter().map(|r| &r.event));
            if is_terminal(&state) && events.iter().any(|r| r.event.kind() == "Launched") {
                assert!(
                    events.iter().any(|r| r.event.kind() == "Terminated"),
                    "{stream} closed without Terminated"
                );
            }
        }
    }
}
