//! A whole jitr on the embedded default, with a manual clock: SQLite log, the
//! simulated cloud and GitHub, the real handlers and projector.

use std::collections::BTreeSet;
use std::sync::Arc;

use jitr_domain::{InstanceId, InstanceSpec, RunnerStatus, StreamId, TerminateRunner, Timestamp};
use jitr_handlers::app::App;
use jitr_handlers::app::compensation::Compensation;
use jitr_handlers::app::lifecycle::Lifecycle;
use jitr_handlers::app::outcome::{HandlerError, Outcome};
use jitr_handlers::app::policy::{Pool, RunnerPolicy};
use jitr_handlers::app::reaper::{Reaper, SweepReport};
use jitr_handlers::app::scaleup::ScaleUp;
use jitr_handlers::app::webhook::JobMessage;
use jitr_handlers::runtime::embedded::Embedded;
use jitr_infra::{
    Compute, EventStore, FaultyCompute, ManagedInstance, ManualClock, SimCloud, SimGitHub,
    SimSettings, SqliteEventStore, decode_terminate_runner,
};

use crate::fixtures::T0;

/// jitr on the simulator: the application built by [`App`] over SQLite, the
/// simulated cloud and GitHub, and local queues.
pub struct World {
    /// Scratch directory holding `events.db`, `cloud.db` and `queues.db`.
    pub dir: tempfile::TempDir,
    /// The clock every part reads.
    pub clock: ManualClock,
    /// The log.
    pub store: Arc<SqliteEventStore>,
    /// The simulated EC2.
    pub cloud: SimCloud,
    /// The GitHub stand-in.
    pub github: SimGitHub,
    /// The application.
    pub app: App,
    /// The policy.
    pub policy: Arc<RunnerPolicy>,
    /// Scale-up (the application's).
    pub scaleup: Arc<ScaleUp>,
    /// Lifecycle (the application's).
    pub lifecycle: Arc<Lifecycle>,
    /// Compensation (the application's).
    pub compensation: Arc<Compensation>,
    /// Reaper (the application's).
    pub reaper: Arc<Reaper>,
}

impl World {
    /// A fresh world with `settings` and runners of `vcpus` vCPUs.
    pub fn new(settings: SimSettings, vcpus: u32) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = ManualClock::new(T0);
        let policy = policy_for(vcpus);
        let embedded = Embedded::open(dir.path(), settings, clock.clock(), 10).expect("embedded");
        World::assemble(dir, clock, embedded, policy)
    }

    /// A fresh world with the default settings and 4-vCPU runners whose policy
    /// `change` adjusts.
    pub fn with_policy(change: impl FnOnce(&mut RunnerPolicy)) -> Self {
        World::with_settings_and_policy(SimSettings::default(), change)
    }

    /// A fresh world on a simulator with `settings` and 4-vCPU runners, whose
    /// policy `change` adjusts.
    pub fn with_settings_and_policy(
        settings: SimSettings,
        change: impl FnOnce(&mut RunnerPolicy),
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = ManualClock::new(T0);
        let mut policy = policy_for(4);
        change(&mut policy);
        let embedded = Embedded::open(dir.path(), settings, clock.clock(), 10).expect("embedded");
        World::assemble(dir, clock, embedded, policy)
    }

    /// A fresh world whose EC2 is the simulator behind the fault-injecting wrapper
    /// (judging instance ages by the world's clock); the wrapper is returned to
    /// inject faults with.
    pub fn with_faults(settings: SimSettings, vcpus: u32) -> (Self, Arc<FaultyCompute<SimCloud>>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = ManualClock::new(T0);
        let mut embedded =
            Embedded::open(dir.path(), settings, clock.clock(), 10).expect("embedded");
        let faulty = Arc::new(FaultyCompute::new(embedded.cloud.clone()).with_clock(clock.clock()));
        embedded.ports.compute = faulty.clone();
        let world = World::assemble(dir, clock, embedded, policy_for(vcpus));
        (world, faulty)
    }

    /// [`World::with_faults`] with default settings and 4-vCPU runners, whose
    /// policy `change` adjusts.
    pub fn with_faulty_policy(
        change: impl FnOnce(&mut RunnerPolicy),
    ) -> (Self, Arc<FaultyCompute<SimCloud>>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = ManualClock::new(T0);
        let mut embedded = Embedded::open(dir.path(), SimSettings::default(), clock.clock(), 10)
            .expect("embedded");
        let faulty = Arc::new(FaultyCompute::new(embedded.cloud.clone()).with_clock(clock.clock()));
        embedded.ports.compute = faulty.clone();
        let mut policy = policy_for(4);
        change(&mut policy);
        (World::assemble(dir, clock, embedded, policy), faulty)
    }

    /// A fresh world whose GitHub is the simulator's behind a fault injector
    /// ([`World::github`] still sets what GitHub knows).
    pub fn with_faulty_github() -> (Self, Arc<jitr_infra::FaultyGitHub>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = ManualClock::new(T0);
        let mut embedded = Embedded::open(dir.path(), SimSettings::default(), clock.clock(), 10)
            .expect("embedded");
        let faulty = Arc::new(jitr_infra::FaultyGitHub::new(Arc::new(
            embedded.github.clone(),
        )));
        embedded.ports.github = faulty.clone();
        (World::assemble(dir, clock, embedded, policy_for(4)), faulty)
    }

    /// A fresh world whose GitHub is `github` (e.g. the REST client against a
    /// wiremock server) instead of the simulator's.
    pub fn with_github(
        settings: SimSettings,
        vcpus: u32,
        github: Arc<dyn jitr_infra::GitHub>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = ManualClock::new(T0);
        let mut embedded =
            Embedded::open(dir.path(), settings, clock.clock(), 10).expect("embedded");
        embedded.ports.github = github;
        World::assemble(dir, clock, embedded, policy_for(vcpus))
    }

    /// A fresh world that is deployment `deployment` (scoped runner names and
    /// launch tokens), on `github` when given (a GitHub another world uses too).
    pub fn deployed(deployment: &str, github: Option<SimGitHub>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = ManualClock::new(T0);
        let mut embedded = Embedded::open(dir.path(), SimSettings::default(), clock.clock(), 10)
            .expect("embedded");
        if let Some(shared) = github {
            embedded.ports.github = Arc::new(shared.clone());
            embedded.github = shared;
        }
        let policy = RunnerPolicy {
            deployment: Some(deployment.into()),
            ..policy_for(4)
        };
        World::assemble(dir, clock, embedded, policy)
    }

    fn assemble(
        dir: tempfile::TempDir,
        clock: ManualClock,
        embedded: Embedded,
        policy: RunnerPolicy,
    ) -> Self {
        let Embedded {
            store,
            cloud,
            github,
            ports,
        } = embedded;
        let mut app = App::new(ports, policy, Vec::new());
        // One identity across restarts: a restarted world takes the projector's
        // lease at once, as the same host would.
        app.holder = "world".into();
        World {
            policy: app.policy.clone(),
            scaleup: app.scaleup.clone(),
            lifecycle: app.lifecycle.clone(),
            compensation: app.compensation.clone(),
            reaper: app.reaper.clone(),
            app,
            dir,
            clock,
            store,
            cloud,
            github,
        }
    }

    /// A process restart: a fresh application (no crash armed, nothing in memory)
    /// over the same log, cloud and queues.
    pub fn restart(self) -> Self {
        self.restart_with(|_| {})
    }

    /// [`World::restart`] with the policy changed by `change` (an operator's
    /// new configuration).
    pub fn restart_with(self, change: impl FnOnce(&mut RunnerPolicy)) -> Self {
        let World {
            dir,
            clock,
            store,
            cloud,
            github,
            policy,
            ..
        } = self;
        let embedded =
            Embedded::over(dir.path(), store, cloud, github, clock.clock(), 10).expect("embedded");
        let mut policy = RunnerPolicy::clone(&policy);
        change(&mut policy);
        World::assemble(dir, clock, embedded, policy)
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
            avoid_spot: Vec::new(),
            runner_id: None,
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

    /// The evidence that closed the runner's stream, if it is closed by a
    /// `Terminated`.
    pub async fn closed_by(&self, job_id: u64) -> Option<jitr_domain::TerminationEvidence> {
        self.store
            .read_stream(&self.stream(job_id))
            .await
            .unwrap()
            .into_iter()
            .find_map(|r| match r.event {
                jitr_domain::RunnerEvent::Terminated { evidence, .. } => Some(evidence),
                _ => None,
            })
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
    /// command it put on the bus (panicking if compensation fails). Returns the
    /// commands.
    pub async fn project_and_compensate(&mut self) -> Vec<TerminateRunner> {
        let mut projector = self.app.projector().await.unwrap();
        projector.tick(self.now()).await.unwrap();
        let queue = self.app.ports.compensation_queue.clone();
        let mut done = Vec::new();
        loop {
            let messages = queue.receive(10, std::time::Duration::ZERO).await.unwrap();
            if messages.is_empty() {
                break;
            }
            for message in messages {
                let command = decode_terminate_runner(&message.body).expect("an envelope");
                self.compensation
                    .handle(&command, self.now())
                    .await
                    .unwrap();
                queue.ack(&message).await.unwrap();
                done.push(command);
            }
        }
        // Folds the terminations, and asks for an admission round if they
        // freed capacity.
        projector.tick(self.now()).await.unwrap();
        done
    }

    /// Handles what the scale-up queue holds (admission rounds asked for,
    /// runners handed back to be minted) until it is empty; returns how many
    /// messages that was.
    pub async fn drain_scaleup(&self) -> usize {
        let queue = self.app.ports.scaleup_queue.clone();
        let now = || self.now();
        let mut handled = 0;
        loop {
            let n = jitr_handlers::runtime::consumer::drain(
                &*queue,
                &*self.app.scaleup,
                10,
                std::time::Duration::ZERO,
                &now,
            )
            .await
            .unwrap();
            if n == 0 {
                return handled;
            }
            handled += n;
        }
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

    /// Whether the cloud still runs `instance`.
    pub async fn runs(&self, instance: &InstanceId) -> bool {
        self.live_instances()
            .await
            .iter()
            .any(|m| m.instance_id == *instance)
    }

    /// The no-leak invariant, both ways between the cloud and the log: every live
    /// instance belongs to an open stream that records it as its instance, and no
    /// closed stream's instance is still live.
    pub async fn assert_no_leak(&self) {
        let live = self.live_instances().await;
        for instance in &live {
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
        let live: BTreeSet<&InstanceId> = live.iter().map(|m| &m.instance_id).collect();
        let streams: BTreeSet<StreamId> = self
            .store
            .read_all(0, 1_000_000)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.stream)
            .collect();
        for stream in streams {
            let head = self.store.head(&stream).await.unwrap().expect("a head");
            if head.open {
                continue;
            }
            if let Some(instance) = head.state.instance() {
                assert!(
                    !live.contains(&instance.id),
                    "{stream} is {} but its instance {} is live",
                    head.status,
                    instance.id
                );
            }
        }
        // Every stray the log records is confirmed gone, and none is live.
        for record in self.store.read_all(0, 1_000_000).await.unwrap() {
            if let jitr_domain::RunnerEvent::StrayLaunched { instance_id, .. } = &record.event {
                assert!(!live.contains(instance_id), "stray {instance_id} is live");
                let head = self.store.head(&record.stream).await.unwrap().unwrap();
                assert!(
                    head.state
                        .strays
                        .iter()
                        .any(|s| s.id == *instance_id && s.gone.is_some()),
                    "stray {instance_id} of {} is not confirmed gone",
                    record.stream
                );
            }
        }
    }
}

/// The policy of a world whose runners have `vcpus` vCPUs.
fn policy_for(vcpus: u32) -> RunnerPolicy {
    let instance_type: String = if vcpus == 2 { "m5.large" } else { "c5.xlarge" }.into();
    let pool = Pool {
        instance_types: vec![instance_type.clone()],
        spec: InstanceSpec {
            instance_type,
            vcpus,
            image: "ami-sim".into(),
            pool: None,
            avoid_spot: Vec::new(),
            park: false,
        },
        ..Pool::default_pool()
    };
    RunnerPolicy {
        pools: vec![pool],
        ..RunnerPolicy::default()
    }
}
