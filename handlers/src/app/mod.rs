//! The application services (webhook, scale-up, lifecycle, projector,
//! compensation, reaper, rebalancer) and the one place they are built.
//!
//! Every service jitr runs, built once from the ports and the
//! runner policy. `jitr serve`, every `jitr lambda` handler, `jitr simulate`,
//! `jitr bench` and the test world obtain their handlers from an [`App`]; nothing
//! else constructs one.

use std::sync::Arc;

pub mod archive;
pub mod books;
pub mod bootstrap;
pub mod budget;
pub mod compensation;
pub mod dispatch;
pub mod ec2events;
pub mod jobwatch;
pub mod lifecycle;
pub mod metrics;
pub mod outcome;
pub mod policy;
pub mod pools;
pub mod projector;
pub mod reaper;
pub mod rebalancer;
pub mod scaleup;
pub mod supply;
pub mod webhook;

use jitr_domain::{
    InstanceId, InstanceReport, InstanceVerdict, IntentResolution, RunnerState, Timestamp,
};
use jitr_infra::{CommandBus, Compute, ComputeError, GitHub, Queue, RunnerLog, RunnerSecrets};

use crate::app::budget::RequestBudget;
use crate::app::compensation::Compensation;
use crate::app::jobwatch::JobWatch;
use crate::app::lifecycle::Lifecycle;
use crate::app::policy::RunnerPolicy;
use crate::app::projector::{Projector, ProjectorError};
use crate::app::reaper::Reaper;
use crate::app::rebalancer::Rebalancer;
use crate::app::scaleup::ScaleUp;
use crate::app::supply::Supply;
use crate::app::webhook::{DEFAULT_MAX_BODY, Webhook};

/// The outside world, as ports: one set per deployment (embedded, AWS, a test).
#[derive(Clone)]
pub struct Ports {
    /// The runner event log (with the projections' checkpoints).
    pub store: Arc<dyn RunnerLog>,
    /// Instances.
    pub compute: Arc<dyn Compute>,
    /// GitHub.
    pub github: Arc<dyn GitHub>,
    /// Where JIT configs are handed over.
    pub secrets: Arc<dyn RunnerSecrets>,
    /// Queued jobs awaiting a runner.
    pub scaleup_queue: Arc<dyn Queue>,
    /// `in_progress` / `completed` webhooks.
    pub lifecycle_queue: Arc<dyn Queue>,
    /// Where the bus delivers compensation commands.
    pub compensation_queue: Arc<dyn Queue>,
    /// EC2's state-change and spot interruption events (EventBridge's rule on
    /// the default bus delivers them; the simulator's pump in `serve`).
    pub ec2_events_queue: Arc<dyn Queue>,
    /// Where the projector puts compensation commands.
    pub bus: Arc<dyn CommandBus>,
}

/// The queues with a dead-letter queue, by the names operators use (`jitr
/// dlq`, the page, `/metrics`), in [`Ports::queues`]' order.
pub const QUEUE_NAMES: [&str; 4] = ["scaleup", "lifecycle", "compensation", "ec2-events"];

impl Ports {
    /// Each queue with its name in [`QUEUE_NAMES`].
    pub fn queues(&self) -> [(&'static str, Arc<dyn Queue>); 4] {
        let [scaleup, lifecycle, compensation, ec2_events] = QUEUE_NAMES;
        [
            (scaleup, self.scaleup_queue.clone()),
            (lifecycle, self.lifecycle_queue.clone()),
            (compensation, self.compensation_queue.clone()),
            (ec2_events, self.ec2_events_queue.clone()),
        ]
    }

    /// The time jitr acts on: the cloud's clock once it has answered this
    /// process ([`jitr_infra::Compute::cloud_time`]), else the process's own
    /// `now`. Every process reads the same clock this way, so a time one host
    /// writes (a launch, an intent) and another judges (the consistency
    /// window, a deadline) are on one clock whatever the hosts' skew (ADR-0021).
    pub fn now(&self, now: Timestamp) -> Timestamp {
        match self.compute.cloud_time() {
            Some(cloud) => {
                let skew = now.0 - cloud.0;
                if skew.abs() > SKEW_WARNING_MS {
                    tracing::warn!(
                        skew_ms = skew,
                        "this host's clock is off the cloud's; acting on the cloud's"
                    );
                }
                cloud
            }
            None => now,
        }
    }

    /// How the log must resolve the runner's pending launch intent, from what its
    /// client token finds in the cloud now (`None`: no launch is pending).
    pub async fn resolve_pending_launch(
        &self,
        state: &RunnerState,
        now: Timestamp,
    ) -> Result<Option<IntentResolution>, ComputeError> {
        let Some(token) = state.pending_launch() else {
            return Ok(None);
        };
        let found = self
            .compute
            .find_by_client_token(token)
            .await?
            .map(|m| m.found());
        Ok(jitr_domain::resolve_pending_launch(
            state,
            found,
            self.now(now),
        ))
    }
}

impl Ports {
    /// Describes the runner's launched instance by its id and judges the answer by
    /// the evidence rules ([`jitr_domain::judge_instance`]): absence from a
    /// listing is never asked here, only the id. `None` when no instance is
    /// recorded.
    pub async fn judge_instance(
        &self,
        state: &RunnerState,
        now: Timestamp,
    ) -> Result<Option<InstanceVerdict>, ComputeError> {
        let Some(instance) = state.instance() else {
            return Ok(None);
        };
        self.judge_by_id(&instance.id, instance.launched_at, state, now)
            .await
            .map(Some)
    }

    /// Describes `instance` (launched, or recorded as a stray, at `since`) by its
    /// id and judges the answer with the runner's consistency window.
    pub async fn judge_by_id(
        &self,
        instance: &InstanceId,
        since: Timestamp,
        state: &RunnerState,
        now: Timestamp,
    ) -> Result<InstanceVerdict, ComputeError> {
        let report = match self.compute.describe(instance).await? {
            Some(seen) if seen.state.is_live() => InstanceReport::Live,
            Some(_) => InstanceReport::Terminated,
            None => InstanceReport::NotFound,
        };
        Ok(jitr_domain::judge_instance(
            report,
            since,
            state.consistency_window_ms(),
            self.now(now),
        ))
    }
}

/// A host clock further than this from the cloud's is logged as skewed.
const SKEW_WARNING_MS: i64 = 30_000;

/// A fresh lease holder id: the host's name and a random suffix.
fn holder_id() -> String {
    use rand::Rng;
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "jitr".into());
    format!("{host}-{:08x}", rand::rng().random::<u32>())
}

/// How long the projector waits before emitting a still-owed termination again.
pub const REEMIT_AFTER_MS: u64 = 60_000;

/// Every application service, wired to one set of ports. Cheap to clone.
#[derive(Clone)]
pub struct App {
    /// The ports.
    pub ports: Ports,
    /// The runner policy.
    pub policy: Arc<RunnerPolicy>,
    /// The webhook endpoint's logic.
    pub webhook: Arc<Webhook>,
    /// Scale-up.
    pub scaleup: Arc<ScaleUp>,
    /// Lifecycle.
    pub lifecycle: Arc<Lifecycle>,
    /// Compensation.
    pub compensation: Arc<Compensation>,
    /// The reaper.
    pub reaper: Arc<Reaper>,
    /// EC2's own events (state changes, spot interruption warnings).
    pub ec2_events: Arc<ec2events::Ec2Events>,
    /// The rebalancer.
    pub rebalancer: Arc<Rebalancer>,
    /// Job polls (lost lifecycle webhooks healed from GitHub).
    pub jobs: Arc<JobWatch>,
    /// The GitHub request budget of background work.
    pub budget: Arc<RequestBudget>,
    /// Surplus runners retired, deregister-first.
    pub supply: Arc<Supply>,
    /// Who this process is, for the projector's lease (random per `App`).
    pub holder: String,
}

impl App {
    /// Builds every service over `ports`; `webhook_secret` verifies deliveries.
    pub fn new(ports: Ports, policy: RunnerPolicy, webhook_secret: impl Into<Vec<u8>>) -> App {
        let policy = Arc::new(policy);
        let budget = Arc::new(RequestBudget::new(
            ports.github.clone(),
            policy.github_background_share_pct,
        ));
        let supply = Arc::new(Supply::new(ports.clone(), policy.clone()));
        let jobs = Arc::new(JobWatch::new(
            ports.clone(),
            policy.clone(),
            budget.clone(),
            supply.clone(),
        ));
        let compensation = Arc::new(Compensation::new(
            ports.clone(),
            policy.clone(),
            jobs.clone(),
            supply.clone(),
        ));
        let reaper = Arc::new(Reaper::new(
            ports.clone(),
            policy.clone(),
            compensation.clone(),
            jobs.clone(),
            supply.clone(),
            budget.clone(),
        ));
        let scaleup = Arc::new(ScaleUp::new(ports.clone(), policy.clone()));
        App {
            webhook: Arc::new(Webhook::new(
                webhook_secret,
                DEFAULT_MAX_BODY,
                policy.clone(),
                ports.scaleup_queue.clone(),
                ports.lifecycle_queue.clone(),
            )),
            scaleup: scaleup.clone(),
            lifecycle: Arc::new(Lifecycle::new(
                ports.clone(),
                policy.clone(),
                supply.clone(),
            )),
            reaper: reaper.clone(),
            ec2_events: Arc::new(ec2events::Ec2Events::new(
                ports.clone(),
                compensation.clone(),
                reaper,
                scaleup,
                jobs.clone(),
            )),
            rebalancer: Arc::new(Rebalancer::new(
                ports.clone(),
                policy.clone(),
                budget.clone(),
            )),
            holder: holder_id(),
            jobs,
            budget,
            supply,
            compensation,
            policy,
            ports,
        }
    }

    /// The projector, resumed from its checkpoint. It holds the runner views in
    /// memory, so a process runs one; it writes only while it holds the lease,
    /// under this application's [`App::holder`].
    pub async fn projector(&self) -> Result<Projector, ProjectorError> {
        Ok(Projector::start(
            self.ports.store.clone(),
            self.ports.bus.clone(),
            REEMIT_AFTER_MS,
            self.holder.clone(),
        )
        .await?
        .with_wake(self.ports.scaleup_queue.clone()))
    }
}
