//! Scale-up: a queued job gets one instance and a JIT runner config.
//!
//! Requested → LaunchIntended (client token) → RunInstances (the domain's launch
//! plan: spot, then on-demand on quota/capacity, else wait for capacity in an
//! admission round, ADR-0014) → Launched → JIT
//! config minted and handed over → TokenMinted. Every step is recorded before the
//! next starts, so a crash or a redelivery resumes where the log says: an
//! unresolved intent is resolved by its client token, never launched twice. A
//! failure after the intent is recorded as `Failed` (the projector then owes the
//! termination); a launch whose outcome is unknown is retried, and the next
//! delivery resolves it by its token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jitr_domain::{
    AdmissionRound, AdmissionStep, Admitted, CapacityLedger, Command, FailureStage, InstallationId,
    InstanceId, IntentResolution, JobRef, LaunchOutcome, LaunchResult, Market, MarketQuota,
    PoolLimits, Retirement, RoundReport, RunnerEvent, RunnerState, ShuttingDownInstance, StreamId,
    Timestamp, UNKNOWN_LAUNCH_LOOK_AGAIN_MS, WaitReason, boot_deadline, record_instance,
};
use jitr_infra::{CommandId, GitHubError, JitRequest, LaunchFailure, LaunchSpec};

use crate::app::Ports;
use crate::app::dispatch::{DispatchError, Dispatched, current_state, dispatch};
use crate::app::outcome::{CrashPoint, CrashSwitch, HandlerError, Outcome};
use crate::app::policy::RunnerPolicy;
use crate::app::webhook::JobMessage;

/// What the scale-up queue carries: one envelope, `kind` naming what it is.
///
/// Each shape stays readable by the version before the envelope (a job is a
/// `JobMessage` with one more field; an admission request keeps its `admit`
/// field), and [`ScaleUpMessage::decode`] reads what that version sent, so
/// messages in flight across a stack update are handled by either version.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
// One is decoded per queue message and moved once: its size costs nothing
// a box would save.
#[allow(clippy::large_enum_variant)]
pub enum ScaleUpMessage {
    /// A queued job wants a runner (or a runner's job is handed back).
    Job(JobMessage),
    /// An admission round is asked for: capacity freed, a pause ended, the
    /// periodic pass.
    Admit {
        /// Why.
        admit: String,
    },
}

impl ScaleUpMessage {
    /// The message body.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a scale-up message serialises")
    }

    /// Reads a message body: the envelope, or a bare `JobMessage` or
    /// `{"admit": WHY}` as versions before it sent them.
    pub fn decode(body: &str) -> Result<ScaleUpMessage, serde_json::Error> {
        serde_json::from_str(body).or_else(|unenveloped| {
            #[derive(serde::Deserialize)]
            struct Admit {
                admit: String,
            }
            if let Ok(a) = serde_json::from_str::<Admit>(body) {
                return Ok(ScaleUpMessage::Admit { admit: a.admit });
            }
            serde_json::from_str::<JobMessage>(body)
                .map(ScaleUpMessage::Job)
                .map_err(|_| unenveloped)
        })
    }
}

/// The scale-up message that asks for an admission round, and why.
pub fn admit_message(why: &str) -> String {
    ScaleUpMessage::Admit { admit: why.into() }.encode()
}

/// The reason of the admission round asked for when EC2 says an instance is
/// terminated: its capacity is free for certain, so the markets' pauses end.
pub const INSTANCE_TERMINATED: &str = "instance terminated";

/// What an admission round did: the planner's figures, and what became of
/// the round's own runner (none: it was not waiting).
#[derive(Debug)]
pub struct Round {
    /// The round's figures.
    pub report: RoundReport,
    /// What became of the runner of the delivery that ran it.
    pub own: Option<Admitted>,
}

/// Admission rounds run by this process so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AdmissionStats {
    /// Rounds.
    pub rounds: u64,
    /// Runners they launched.
    pub launched: u64,
    /// RunInstances refusals in them.
    pub refused: u64,
    /// The most refusals one pool had in one round.
    pub most_refused_per_pool_in_a_round: u64,
}

/// The most runner attempts a job gets from spot interruptions before its
/// start (the rebalancer's own limit is 16).
pub const MAX_SPOT_ATTEMPTS: u32 = 8;

/// How long an instance EC2 said is shutting down is counted as holding its
/// vCPUs when EC2's `terminated` does not come.
pub const SHUTDOWN_HOLD_MS: u64 = 600_000;

/// An instance shutting down, as counted by admission rounds.
#[derive(Clone, Debug)]
struct ShuttingDown {
    instance: ShuttingDownInstance,
    since: Timestamp,
    /// EC2 said `terminated` (EventBridge does not keep events in order: a
    /// late `shutting-down` must not count it again).
    terminated: bool,
}

/// What admission rounds of this process remember between rounds, besides
/// the ledger.
#[derive(Default)]
struct Memory {
    /// The ledger's markets as the last round (or freed capacity) left them,
    /// for pages and metrics that must not wait for a round.
    quotas: std::collections::BTreeMap<Market, MarketQuota>,
    /// When the next round is already asked for (after a pause ends).
    next_wake: Option<Timestamp>,
    /// Instances EC2 said are shutting down: their vCPUs may still count
    /// against the quota until EC2 says `terminated` (kept at most
    /// [`SHUTDOWN_HOLD_MS`]).
    shutting_down: HashMap<InstanceId, ShuttingDown>,
    stats: AdmissionStats,
    /// Runners still waiting for capacity after the last round, and why.
    waiting: std::collections::BTreeMap<StreamId, WaitingRunner>,
    /// Runners held back by GitHub (its rate limit, a runner group not
    /// resolved yet), and why.
    held_back: std::collections::BTreeMap<StreamId, WaitingRunner>,
}

/// A runner waiting, as this process last saw it, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitingRunner {
    /// The runner.
    pub stream: StreamId,
    /// Its pool (empty: none).
    pub pool: String,
    /// When it was requested.
    pub since: Timestamp,
    /// Why it waits.
    pub reason: WaitReason,
}

/// The scale-up handler.
pub struct ScaleUp {
    ports: Ports,
    policy: Arc<RunnerPolicy>,
    /// What is known of each market's quota; held for a whole admission round,
    /// so that rounds of one process run one at a time.
    ledger: tokio::sync::Mutex<CapacityLedger>,
    memory: Mutex<Memory>,
    /// Runner group ids by installation, organisation and name.
    groups: Mutex<HashMap<(u64, String, String), u64>>,
    /// Crash injection for recovery tests.
    pub crash: CrashSwitch,
}

impl ScaleUp {
    /// A handler over `ports`.
    pub fn new(ports: Ports, policy: Arc<RunnerPolicy>) -> Self {
        let ledger = CapacityLedger::with_ceilings(policy.quotas.iter().copied());
        ScaleUp {
            ports,
            policy,
            memory: Mutex::new(Memory {
                quotas: ledger.markets.clone(),
                ..Memory::default()
            }),
            ledger: tokio::sync::Mutex::new(ledger),
            groups: Mutex::default(),
            crash: CrashSwitch::default(),
        }
    }

    async fn run(
        &self,
        stream: &StreamId,
        command: Command,
        now: Timestamp,
        step: &str,
    ) -> Result<Dispatched, DispatchError> {
        let id = CommandId::new(format!("scaleup:{stream}:{step}"));
        dispatch(&*self.ports.store, stream, command, now, &id).await
    }

    async fn state(&self, stream: &StreamId) -> Result<RunnerState, HandlerError> {
        Ok(current_state(&*self.ports.store, stream).await?)
    }

    async fn fail(
        &self,
        stream: &StreamId,
        stage: FailureStage,
        reason: String,
        now: Timestamp,
    ) -> Result<(), HandlerError> {
        self.run(stream, Command::Fail { stage, reason }, now, "fail")
            .await?;
        Ok(())
    }

    /// Records an instance RunInstances returned (or its token found). If the
    /// stream could not take it (its intent was settled meanwhile, or another
    /// instance is recorded), the log records it as a stray and it is terminated
    /// at once; compensation confirms it gone on evidence.
    async fn record_instance(
        &self,
        stream: &StreamId,
        record: Command,
        now: Timestamp,
        step: &str,
    ) -> Result<(), HandlerError> {
        let recorded = self.run(stream, record, now, step).await?;
        let Dispatched::Appended { events, .. } = recorded else {
            return Ok(());
        };
        for event in &events {
            if let RunnerEvent::StrayLaunched { instance_id, .. } = event {
                tracing::warn!(%stream, instance = %instance_id, "stray instance: the runner could not take it; terminating it");
                crate::app::metrics::stray(now);
                if let Err(e) = self.ports.compute.terminate(instance_id).await {
                    // Owed all the same: the projector emits its termination.
                    tracing::warn!(%stream, instance = %instance_id, error = %e, "stray not terminated yet");
                }
            }
        }
        Ok(())
    }

    /// Handles one `queued` job, delivered for the `receives`-th time.
    pub async fn handle(
        &self,
        job: &JobMessage,
        receives: u32,
        now: Timestamp,
    ) -> Result<Outcome, HandlerError> {
        let Some(mut spec) = self.policy.spec_for(&job.labels) else {
            crate::app::metrics::no_pool(now);
            return Ok(Outcome::Done(format!(
                "no pool serves labels {:?}",
                job.labels
            )));
        };
        spec.avoid_spot.clone_from(&job.avoid_spot);
        let job_ref = JobRef {
            owner: job.owner.clone(),
            repo: job.repo.clone(),
            job_id: job.job_id,
            run_id: job.run_id,
        };
        let stream = match StreamId::for_job(&job_ref, job.attempt) {
            Ok(stream) => stream,
            Err(e) => {
                return Ok(Outcome::DeadLetter(format!(
                    "not a job jitr can serve: {e}"
                )));
            }
        };
        let pool = self.policy.pool_for(&job.labels);
        let stopped_pool = pool.is_some_and(|p| p.warm.stopped);
        // A stopped pool's warm runner is launched to be parked (ADR-0022).
        spec.park = stopped_pool && job_ref.is_warmth();
        let request = Command::Request {
            job: job_ref.clone(),
            attempt: job.attempt,
            labels: job.labels.clone(),
            spec,
            deadlines: self.policy.deadlines,
            installation: Some(InstallationId(job.installation)),
            deployment: self.policy.deployment.clone(),
        };
        self.run(&stream, request, now, "request").await?;
        if stopped_pool && !job_ref.is_warmth() {
            if let Some(woken) = self.wake_parked(&stream, now).await? {
                tracing::info!(%stream, %woken, "a parked runner woken for the job");
            }
        }

        loop {
            let state = self.state(&stream).await?;
            if !state.wants_instance() {
                return Ok(Outcome::Done(format!("{stream} is {}", state.status())));
            }
            match state.launch.as_ref().map(|l| &l.outcome) {
                Some(LaunchOutcome::Launched(_)) => break,
                Some(LaunchOutcome::Pending) => {
                    // A crash or a lost answer left the intent open: resolve it by
                    // its token, never by launching again.
                    let token = state.pending_launch().cloned().expect("pending launch");
                    match self.ports.resolve_pending_launch(&state, now).await? {
                        Some(IntentResolution::Launched(record)) => {
                            self.record_instance(&stream, record, now, &format!("found-{token}"))
                                .await?;
                        }
                        Some(IntentResolution::LookAgain { after_ms }) => {
                            return Ok(Outcome::RetryAfter(
                                Duration::from_millis(after_ms),
                                format!("{stream}: launch {token} unresolved"),
                            ));
                        }
                        Some(IntentResolution::NeverLaunched(command)) => {
                            self.run(&stream, command, now, &format!("unfound-{token}"))
                                .await?;
                        }
                        None => continue,
                    }
                }
                None | Some(LaunchOutcome::Rejected { .. }) => {
                    let request = state.request.as_ref().expect("requested");
                    // A runner group the organisation lacks is known before any
                    // instance exists: fail the runner without launching one.
                    let installation = self.policy.installation_for(&state);
                    let scope = self.policy.scope_of(request);
                    match self.runner_group(&state, installation, &scope).await {
                        Ok(_) => self.release(&stream),
                        Err(e) if e.is_transient() => {
                            self.hold_back(&state, github_wait("the runner group", &e, now));
                            return Ok(Outcome::RetryAfter(
                                e.retry_after()
                                    .unwrap_or_default()
                                    .max(Duration::from_secs(30)),
                                format!("{stream}: runner group not resolved yet ({e})"),
                            ));
                        }
                        Err(e) => {
                            let reason = format!("not launched: {e}");
                            self.fail(&stream, FailureStage::Token, reason.clone(), now)
                                .await?;
                            return Ok(Outcome::DeadLetter(format!("{stream}: {reason}")));
                        }
                    }
                    match self.admit(Some(&stream), now).await?.own {
                        Some(Admitted::Launched { .. }) => continue,
                        Some(Admitted::Waiting(why)) => {
                            return Ok(Outcome::Done(format!(
                                "{stream}: waiting for capacity ({why})"
                            )));
                        }
                        Some(Admitted::Failed(reason)) => {
                            return Ok(Outcome::DeadLetter(format!("{stream}: {reason}")));
                        }
                        Some(Admitted::Unknown) => {
                            return Ok(Outcome::RetryAfter(
                                Duration::from_millis(UNKNOWN_LAUNCH_LOOK_AGAIN_MS),
                                format!(
                                    "{stream}: launch outcome unknown; resolving it by its token"
                                ),
                            ));
                        }
                        Some(Admitted::Superseded) => {
                            return Ok(Outcome::Done(format!(
                                "{stream}: another delivery launches it"
                            )));
                        }
                        Some(Admitted::Withdrawn) => {
                            return Ok(Outcome::Done(format!(
                                "{stream}: spare (its job was cancelled or taken by another runner): withdrawn, not launched"
                            )));
                        }
                        // Not in the round's queue: another delivery launched
                        // it meanwhile (follow the log), or the heads index did
                        // not show it waiting yet (DynamoDB's index is
                        // eventually consistent): ask again shortly, never in
                        // a loop.
                        None => {
                            let after = self.state(&stream).await?;
                            if !after.wants_instance() || after.instance_may_be_alive() {
                                continue;
                            }
                            if !after.demand_queued() && !after.is_warm() {
                                return Ok(Outcome::Done(format!(
                                    "{stream}: spare (its job was cancelled or taken by another runner): not launched"
                                )));
                            }
                            return Ok(Outcome::RetryAfter(
                                Duration::from_secs(2),
                                format!("{stream}: not in the waiting queue yet"),
                            ));
                        }
                    }
                }
            }
        }
        if self.state(&stream).await?.is_parking() {
            return Ok(Outcome::Done(format!(
                "{stream}: launched to be parked (stopped) until a job wakes it"
            )));
        }
        self.mint(&stream, job, receives, now).await
    }

    /// A stopped pool (ADR-0022): starts one of its parked runners for the
    /// job of `stream` while nothing is launched for it yet. The woken runner
    /// stands for the job from then on, the job's own runner stands aside
    /// (`DemandEnded`: admission withdraws it, nothing launched), and the woken
    /// one is handed over to be minted. A start EC2 refuses (the quota, no
    /// capacity) leaves the runner parked and the job to its own runner.
    /// Returns the woken runner.
    async fn wake_parked(
        &self,
        stream: &StreamId,
        now: Timestamp,
    ) -> Result<Option<StreamId>, HandlerError> {
        let state = self.state(stream).await?;
        let Some(request) = state.request.as_ref() else {
            return Ok(None);
        };
        if !state.demand_queued() || state.launch.is_some() {
            return Ok(None);
        }
        let scope = self.policy.scope_of(request);
        let open = self.ports.store.open_streams().await?;
        // A delivery before this one woke a runner for the job and stopped
        // short of standing the job's own aside: finish that.
        let already =
            open.heads.iter().map(|h| &h.state).find(|s| {
                s.woken_at.is_some() && s.parks() && s.demand_job() == Some(&request.job)
            });
        if let Some(woken) = already {
            return self.stand_aside(stream, woken, now).await;
        }
        let mut parked: Vec<&RunnerState> = open
            .heads
            .iter()
            .map(|h| &h.state)
            .filter(|s| s.is_parking() && s.parked_at.is_some())
            .filter(|s| {
                s.request.as_ref().is_some_and(|r| {
                    r.spec.pool == request.spec.pool && self.policy.scope_of(r) == scope
                })
            })
            .collect();
        // The longest parked first: the oldest image goes before it ages out.
        parked.sort_by_key(|s| s.parked_at);
        for candidate in parked {
            let (Some(warm), Some(instance)) = (candidate.stream_id(), candidate.instance()) else {
                continue;
            };
            let instance_id = instance.id.clone();
            match self.ports.compute.start(&instance_id).await {
                Ok(()) => {}
                Err(LaunchFailure::Rejected(e)) => {
                    tracing::info!(%warm, instance = %instance_id, code = %e.code, "parked runner not started: EC2 refused");
                    return Ok(None);
                }
                Err(LaunchFailure::Unknown(e)) => {
                    // It may have started: the next job (or its max age) settles it.
                    tracing::warn!(%warm, instance = %instance_id, error = %e, "parked runner's start unanswered");
                    return Ok(None);
                }
            }
            let wake = Command::Wake {
                instance_id,
                for_job: request.job.clone().into(),
            };
            match self.run(&warm, wake, now, &format!("wake-{stream}")).await {
                Ok(Dispatched::Appended { .. }) => {}
                // Another job woke it first: it stands for that one.
                Ok(_) | Err(DispatchError::Refused { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
            let woken = self.state(&warm).await?;
            return self.stand_aside(stream, &woken, now).await;
        }
        Ok(None)
    }

    /// The job's own runner (`stream`) stands aside for the runner `woken`
    /// for it, which is handed over to be minted.
    async fn stand_aside(
        &self,
        stream: &StreamId,
        woken: &RunnerState,
        now: Timestamp,
    ) -> Result<Option<StreamId>, HandlerError> {
        let Some(warm) = woken.stream_id() else {
            return Ok(None);
        };
        let taken_by = woken
            .runner_name_to_register()
            .unwrap_or_else(|| warm.runner_name());
        let aside = Command::EndDemand {
            ending: jitr_domain::DemandEnding::TakenBy {
                runner_name: taken_by,
            },
        };
        self.run(stream, aside, now, "woke-parked").await?;
        self.hand_over(woken, Duration::ZERO).await?;
        Ok(Some(warm))
    }

    /// One admission round (ADR-0014): `jitr_domain::AdmissionRound` plans it
    /// from the open runners, the instances shutting down and the ledger; this
    /// carries out its steps (withdraw a spare runner, launch, hand a launched
    /// runner over to its own delivery to be minted, fail, wait) and tells it
    /// what each launch did. Rounds of one process run one at a time. `own` is
    /// the runner of the delivery that runs the round, if any.
    pub async fn admit(
        &self,
        own: Option<&StreamId>,
        now: Timestamp,
    ) -> Result<Round, HandlerError> {
        let mut ledger = self.ledger.lock().await;
        let open = self.ports.store.open_streams().await?;
        let shutting_down = self.shutting_down(now);
        let limits = |pool: &crate::app::policy::Pool| PoolLimits {
            name: pool.name.clone(),
            max_vcpus: pool.max_vcpus,
            instance_types: pool.instance_types.clone(),
            spot: pool.spot,
            min_idle: pool.warm.schedule.min_idle_at(now) as usize,
            stopped: pool.warm.stopped,
        };
        let pools: Vec<PoolLimits> = self.policy.pools.iter().map(limits).collect();
        let mut round = AdmissionRound::plan(
            &pools,
            open.heads.iter().map(|h| &h.state),
            |request| self.policy.pool_of(request).map(limits),
            &shutting_down,
            ledger.clone(),
            own,
            now,
        );
        let mut heads: HashMap<StreamId, RunnerState> = open
            .heads
            .into_iter()
            .map(|h| (h.stream, h.state))
            .collect();
        let carried = self.carry_out(&mut round, &mut heads, now).await;
        // What the round learnt stands even when a step failed.
        let (learnt, report) = round.finish();
        *ledger = learnt;
        self.record_round(&ledger, &report, now);
        carried?;
        if let Some(at) = report.wake_at {
            self.wake_at(at, now).await?;
        }
        let own = own.and_then(|stream| report.admitted.get(stream).cloned());
        Ok(Round { report, own })
    }

    /// Carries out the round's steps, telling it what each launch did.
    async fn carry_out(
        &self,
        round: &mut AdmissionRound,
        heads: &mut HashMap<StreamId, RunnerState>,
        now: Timestamp,
    ) -> Result<(), HandlerError> {
        while let Some(step) = round.next_step() {
            match step {
                AdmissionStep::Withdraw { stream } => {
                    let retirement = Retirement::Withdraw {
                        stream: stream.clone(),
                    };
                    self.run(&stream, retirement.command(), now, "withdraw")
                        .await?;
                }
                AdmissionStep::Launch {
                    stream,
                    market,
                    instance_type,
                } => {
                    let Some(state) = heads.get_mut(&stream) else {
                        round.record(LaunchResult::Superseded);
                        continue;
                    };
                    let result = self
                        .launch(&stream, state, market, instance_type, now)
                        .await?;
                    round.record(result);
                }
                AdmissionStep::HandOver { stream, after_ms } => {
                    if let Some(state) = heads.get(&stream) {
                        self.hand_over(state, Duration::from_millis(after_ms))
                            .await?;
                    }
                }
                AdmissionStep::Fail { stream, reason } => {
                    tracing::warn!(%stream, %reason, "runner cannot be launched");
                    self.fail(&stream, FailureStage::Launch, reason, now)
                        .await?;
                }
                AdmissionStep::Wait { .. } => {}
            }
        }
        Ok(())
    }

    /// One launch of `stream` (whose head is `state`, kept current): the
    /// intent recorded, RunInstances called, its answer recorded.
    async fn launch(
        &self,
        stream: &StreamId,
        state: &mut RunnerState,
        market: Market,
        instance_type: String,
        now: Timestamp,
    ) -> Result<LaunchResult, HandlerError> {
        let request = state
            .request
            .clone()
            .expect("a waiting runner is requested");
        let pool = self.policy.pool_of(&request);
        // The intent's and the launch's times are judged by other processes
        // (the consistency window): written on the cloud's clock (ADR-0021).
        let now = self.ports.now(now);
        let intended = self
            .run(
                stream,
                Command::IntendLaunch { market },
                now,
                &format!("intend-{}", state.launch_attempts + 1),
            )
            .await?;
        // Anything but a new intent: another delivery of the same job got
        // there first; its delivery follows the log.
        let Dispatched::Appended {
            state: intended, ..
        } = intended
        else {
            return Ok(LaunchResult::Superseded);
        };
        *state = intended;
        let token = state.pending_launch().cloned().expect("intent written");
        self.crash.check(CrashPoint::AfterLaunchIntended)?;
        let launch_spec = LaunchSpec {
            stream: stream.clone(),
            client_token: token.clone(),
            market,
            instance_type,
            vcpus: request.spec.vcpus,
            image: request.spec.image.clone(),
            user_data: self
                .policy
                .bootstrap
                .as_ref()
                .map(|b| pool.map_or_else(|| b.clone(), |p| b.for_pool(p)).render()),
            settings: {
                let mut settings: jitr_infra::LaunchSettings =
                    pool.map(|p| p.launch.clone()).unwrap_or_default();
                // For Cost Explorer: what each instance and volume was for
                // (a pool's own tags of these names stand).
                let job = &request.job;
                for (key, value) in [
                    (jitr_infra::TAG_POOL, pool.map(|p| p.name.clone())),
                    (
                        jitr_infra::TAG_REPOSITORY,
                        Some(format!("{}/{}", job.owner, job.repo)),
                    ),
                ] {
                    if let Some(value) = value {
                        settings.tags.entry(key.to_owned()).or_insert(value);
                    }
                }
                settings
            },
        };
        match self.ports.compute.launch(&launch_spec).await {
            Ok(launched) => {
                self.crash.check(CrashPoint::AfterRunInstances)?;
                let vcpus = launched.vcpus;
                let record = record_instance(state, token.clone(), launched.found());
                let now = self.ports.now(now);
                self.record_instance(stream, record, now, &format!("launched-{token}"))
                    .await?;
                self.crash.check(CrashPoint::AfterLaunched)?;
                Ok(LaunchResult::Launched { market, vcpus })
            }
            Err(LaunchFailure::Rejected(e)) => {
                tracing::info!(%stream, market = market.as_str(), code = %e.code, "launch refused");
                let reject = Command::RejectLaunch {
                    client_token: token.clone(),
                    code: e.code.clone(),
                    class: e.class,
                };
                if let Dispatched::Appended { state: after, .. } = self
                    .run(stream, reject, now, &format!("rejected-{token}"))
                    .await?
                {
                    *state = after;
                }
                Ok(LaunchResult::Refused {
                    class: e.class,
                    code: e.code,
                    message: e.message,
                })
            }
            Err(LaunchFailure::Unknown(e)) => {
                // The instance may exist: the runner's own delivery resolves
                // the intent by its token.
                tracing::warn!(%stream, %token, error = %e, "launch outcome unknown");
                Ok(LaunchResult::Unknown)
            }
        }
    }

    /// The round's figures as metrics and this process's stats; the ledger's
    /// markets kept for [`ScaleUp::quotas`].
    fn record_round(&self, ledger: &CapacityLedger, report: &RoundReport, now: Timestamp) {
        use crate::app::metrics;
        for a in &report.attempts {
            let market = a.market.as_str();
            metrics::launch(now, market, &a.instance_type, &a.result, a.code.as_deref());
            if a.result == "invalidrequest" {
                let code = a.code.as_deref().unwrap_or_default();
                tracing::error!(%code, market, "EC2 refused a launch for the configuration");
                metrics::launch_configuration_error(now, code);
            }
        }
        for (pool, waiting) in &report.pools {
            metrics::pool_waiting(now, pool, waiting.runners, waiting.oldest_ms);
        }
        metrics::capacity_round(now, report.still_waiting(), report.launched);
        for (market, quota) in &ledger.markets {
            if let Some(ceiling) = quota.ceiling {
                let source = if self.policy.quotas.iter().any(|(m, _)| m == market) {
                    "configured"
                } else {
                    "learnt"
                };
                metrics::vcpu_quota(now, *market, source, ceiling);
            }
        }
        let mut memory = self.memory();
        let waiting = report
            .still_waiting
            .iter()
            .map(|w| {
                let reason = w
                    .reason
                    .clone()
                    .or_else(|| memory.waiting.get(&w.stream).map(|e| e.reason.clone()))
                    .unwrap_or(WaitReason::Queued);
                let entry = WaitingRunner {
                    stream: w.stream.clone(),
                    pool: w.pool.clone(),
                    since: w.since,
                    reason,
                };
                (w.stream.clone(), entry)
            })
            .collect();
        memory.waiting = waiting;
        let stats = &mut memory.stats;
        stats.rounds += 1;
        stats.launched += report.launched as u64;
        stats.refused += report.refused.values().sum::<usize>() as u64;
        stats.most_refused_per_pool_in_a_round = stats
            .most_refused_per_pool_in_a_round
            .max(report.refused.values().copied().max().unwrap_or(0) as u64);
        memory.quotas = ledger.markets.clone();
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `state`'s runner waits on GitHub for `reason`.
    fn hold_back(&self, state: &RunnerState, reason: WaitReason) {
        let (Some(stream), Some(request)) = (state.stream_id(), state.request.as_ref()) else {
            return;
        };
        let pool = request.spec.pool.clone().unwrap_or_default();
        self.memory().held_back.insert(
            stream.clone(),
            WaitingRunner {
                stream,
                pool,
                since: request.at,
                reason,
            },
        );
    }

    /// `stream`'s runner no longer waits on GitHub.
    fn release(&self, stream: &StreamId) {
        self.memory().held_back.remove(stream);
    }

    /// Every runner this process last saw waiting, and why: for capacity
    /// after the last admission round, and on GitHub.
    pub fn waiting(&self) -> Vec<WaitingRunner> {
        let memory = self.memory();
        let mut all: Vec<WaitingRunner> = memory.waiting.values().cloned().collect();
        all.extend(
            memory
                .held_back
                .values()
                .filter(|w| !memory.waiting.contains_key(&w.stream))
                .cloned(),
        );
        all
    }

    /// The instances still shutting down whose vCPUs count (those EC2 said
    /// shutting down less than [`SHUTDOWN_HOLD_MS`] ago and not terminated).
    fn shutting_down(&self, now: Timestamp) -> Vec<ShuttingDownInstance> {
        let mut memory = self.memory();
        memory
            .shutting_down
            .retain(|_, s| now.millis_since(s.since) < SHUTDOWN_HOLD_MS);
        memory
            .shutting_down
            .values()
            .filter(|s| !s.terminated)
            .map(|s| s.instance.clone())
            .collect()
    }

    /// EC2 said `instance` is shutting down: admission rounds count its vCPUs
    /// until EC2 says it is terminated, so that a wake at its `Terminated` does
    /// not meet a quota that still counts it.
    pub fn instance_shutting_down(
        &self,
        instance: &InstanceId,
        market: Market,
        pool: Option<String>,
        vcpus: u32,
        now: Timestamp,
    ) {
        self.memory()
            .shutting_down
            .entry(instance.clone())
            .or_insert(ShuttingDown {
                instance: ShuttingDownInstance {
                    instance_id: instance.clone(),
                    market,
                    pool,
                    vcpus,
                },
                since: now,
                terminated: false,
            });
    }

    /// EC2 said `instance` is terminated: its vCPUs are free (remembered for
    /// [`SHUTDOWN_HOLD_MS`], so that a `shutting-down` delivered after it does
    /// not count it again).
    pub fn instance_terminated(&self, instance: &InstanceId, now: Timestamp) {
        self.memory().shutting_down.insert(
            instance.clone(),
            ShuttingDown {
                instance: ShuttingDownInstance {
                    instance_id: instance.clone(),
                    market: Market::OnDemand,
                    pool: None,
                    vcpus: 0,
                },
                since: now,
                terminated: true,
            },
        );
    }

    /// EC2 said an instance is terminated: its capacity is free for certain,
    /// so the pauses of the markets end before the next round.
    pub async fn capacity_freed(&self) {
        let mut ledger = self.ledger.lock().await;
        ledger.capacity_freed();
        self.memory().quotas = ledger.markets.clone();
    }

    /// What this process knows of each market's quota, as the last admission
    /// round left it (a market without a ceiling is not known yet).
    pub fn quotas(&self) -> std::collections::BTreeMap<Market, MarketQuota> {
        self.memory().quotas.clone()
    }

    /// The admission rounds of this process so far.
    pub fn admission_stats(&self) -> AdmissionStats {
        self.memory().stats
    }

    /// Runners still wait and a pause holds until `at`: asks for a round then
    /// (once: a round already asked for by then is enough).
    async fn wake_at(&self, at: Timestamp, now: Timestamp) -> Result<(), HandlerError> {
        {
            let mut memory = self.memory();
            if memory.next_wake.is_some_and(|n| n > now && n <= at) {
                return Ok(());
            }
            memory.next_wake = Some(at);
        }
        let body = admit_message("a pause ends");
        let delay = Duration::from_millis(at.millis_since(now));
        self.ports
            .scaleup_queue
            .publish(&body, Some(delay), &[])
            .await?;
        Ok(())
    }

    /// EC2 will reclaim the spot instance of `state` (failed for it before its
    /// job started): the job's next runner attempt is requested at once,
    /// avoiding that type's spot market. At most [`MAX_SPOT_ATTEMPTS`]
    /// attempts: past it the rebalancer serves the job if it is still queued.
    pub async fn request_next_attempt(&self, state: &RunnerState) -> Result<bool, HandlerError> {
        let (Some(request), Some(instance)) = (state.request.as_ref(), state.instance()) else {
            return Ok(false);
        };
        if request.attempt >= MAX_SPOT_ATTEMPTS {
            return Ok(false);
        }
        let mut next = request.clone();
        next.attempt += 1;
        if !next.spec.avoid_spot.contains(&instance.instance_type) {
            next.spec.avoid_spot.push(instance.instance_type.clone());
        }
        let message = JobMessage::for_runner(
            &next,
            self.policy.installation_for(state),
            "spot-interrupted",
        );
        let body = ScaleUpMessage::Job(message.clone()).encode();
        self.ports
            .scaleup_queue
            .publish(&body, None, &[("delivery", &message.delivery)])
            .await?;
        Ok(true)
    }

    /// Sends `state`'s job back to the scale-up queue (after `delay`), for its
    /// own delivery to mint the runner an admission round launched, or to
    /// resolve its launch.
    async fn hand_over(&self, state: &RunnerState, delay: Duration) -> Result<(), HandlerError> {
        let Some(request) = state.request.as_ref() else {
            return Ok(());
        };
        let message =
            JobMessage::for_runner(request, self.policy.installation_for(state), "admitted");
        let body = ScaleUpMessage::Job(message.clone()).encode();
        self.ports
            .scaleup_queue
            .publish(
                &body,
                (!delay.is_zero()).then_some(delay),
                &[("delivery", &message.delivery)],
            )
            .await?;
        Ok(())
    }

    /// The runner group id the runner joins: its pool's group, by name, in an
    /// organisation scope (asked of GitHub once per installation, organisation
    /// and name), else the deployment's. A name the organisation lacks is
    /// GitHub's definitive answer (`Invalid`).
    async fn runner_group(
        &self,
        state: &RunnerState,
        installation: u64,
        scope: &jitr_infra::RunnerScope,
    ) -> Result<u64, GitHubError> {
        let name = state
            .request
            .as_ref()
            .and_then(|r| self.policy.pool_of(r))
            .and_then(|p| p.runner_group.clone());
        let (Some(name), jitr_infra::RunnerScope::Org { org }) = (name, scope) else {
            return Ok(self.policy.runner_group_id);
        };
        let key = (installation, org.to_lowercase(), name.clone());
        if let Some(id) = self.groups().get(&key) {
            return Ok(*id);
        }
        let groups = self.ports.github.runner_groups(installation, org).await?;
        let Some(group) = groups.iter().find(|g| g.name.eq_ignore_ascii_case(&name)) else {
            return Err(GitHubError::Invalid(format!(
                "runner group {name:?} does not exist in {org} (it has: {})",
                groups
                    .iter()
                    .map(|g| g.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        self.groups().insert(key, group.id);
        Ok(group.id)
    }

    fn groups(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, String, String), u64>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mints the JIT config, hands it over, records `TokenMinted`.
    async fn mint(
        &self,
        stream: &StreamId,
        job: &JobMessage,
        receives: u32,
        now: Timestamp,
    ) -> Result<Outcome, HandlerError> {
        let state = self.state(stream).await?;
        if state.runner_name.is_some() {
            return Ok(Outcome::Done(format!("{stream} is {}", state.status())));
        }
        let Some(instance) = state.instance().cloned() else {
            return Ok(Outcome::Done(format!("{stream} has no instance")));
        };
        let name = state
            .runner_name_to_register()
            .unwrap_or_else(|| stream.runner_name());
        let installation = self.policy.installation_for(&state);
        let scope = match &state.request {
            Some(requested) => self.policy.scope_of(requested),
            None => self.policy.scope_for(&job.owner, &job.repo),
        };
        let group = self.runner_group(&state, installation, &scope).await;
        let request = JitRequest {
            scope,
            name: name.clone(),
            runner_group_id: *group.as_ref().unwrap_or(&self.policy.runner_group_id),
            labels: job.labels.clone(),
            work_folder: self.policy.work_folder.clone(),
        };
        let mut minted = match group {
            Ok(_) => {
                self.ports
                    .github
                    .generate_jit_config(installation, &request)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(GitHubError::RunnerNameExists(_)) = &minted {
            // A crash after minting left the registration behind: replace it.
            let github = &self.ports.github;
            if let Ok(Some(runner)) = github
                .find_runner(installation, &request.scope, &name)
                .await
            {
                let _ = github
                    .delete_runner(installation, &request.scope, runner.id)
                    .await;
            }
            minted = self
                .ports
                .github
                .generate_jit_config(installation, &request)
                .await;
        }
        let jit = match minted {
            Ok(jit) => {
                self.release(stream);
                jit
            }
            Err(e) if e.is_transient() => {
                self.hold_back(&state, github_wait("the JIT config", &e, now));
                // A rate limit, a 5xx, no answer: ask again later (no sooner
                // than GitHub asked) while the boot deadline allows; the runner
                // is not failed for it.
                let wait = Duration::from_millis(mint_backoff_ms(receives))
                    .max(e.retry_after().unwrap_or_default());
                let deadline = boot_deadline(&state);
                if deadline.is_some_and(|d| now.plus_ms(wait.as_millis() as u64) < d) {
                    tracing::warn!(%stream, error = %e, ?wait, "JIT mint failed transiently: retrying");
                    crate::app::metrics::mint_retry(now);
                    return Ok(Outcome::RetryAfter(
                        wait,
                        format!("{stream}: JIT config not minted yet ({e}); retrying"),
                    ));
                }
                let reason = format!("JIT config not minted before the boot deadline: {e}");
                self.fail(stream, FailureStage::Token, reason.clone(), now)
                    .await?;
                return Ok(Outcome::Done(format!(
                    "{stream}: {reason}; termination owed"
                )));
            }
            Err(e) => {
                let reason = format!("JIT config not minted: {e}");
                self.fail(stream, FailureStage::Token, reason.clone(), now)
                    .await?;
                return Ok(Outcome::Done(format!(
                    "{stream}: {reason}; termination owed"
                )));
            }
        };
        if let Err(e) = self
            .ports
            .secrets
            .put_jit_config(&instance.id, &jit.config)
            .await
        {
            let reason = format!("JIT config not handed over: {e}");
            self.fail(stream, FailureStage::Token, reason.clone(), now)
                .await?;
            return Ok(Outcome::Done(format!(
                "{stream}: {reason}; termination owed"
            )));
        }
        self.crash.check(CrashPoint::AfterJitConfigHandedOver)?;
        let recorded = self
            .run(
                stream,
                Command::RecordToken {
                    runner_name: name,
                    runner_id: Some(jit.runner_id),
                },
                now,
                "token",
            )
            .await?;
        if let Dispatched::MovedOn { refusal, .. } = recorded {
            // Failed or terminated meanwhile: the config must not be used.
            if let Err(e) = self.ports.secrets.delete_jit_config(&instance.id).await {
                tracing::warn!(%stream, error = %e, "JIT config not deleted");
            }
            return Ok(Outcome::Done(format!("{stream}: {refusal}")));
        }
        self.crash.check(CrashPoint::AfterTokenMinted)?;
        Ok(Outcome::Done(format!(
            "{stream}: runner {} on {}",
            jit.name, instance.id
        )))
    }
}

/// Why a runner waits on GitHub's transient error `e` for `what`.
fn github_wait(what: &str, e: &GitHubError, now: Timestamp) -> WaitReason {
    match e {
        GitHubError::RateLimited { retry_after } => WaitReason::RateLimited {
            what: what.to_owned(),
            until: Some(now.plus_ms(retry_after.as_millis() as u64)),
        },
        other => WaitReason::Dependency {
            what: format!("{what} (GitHub: {other})"),
        },
    }
}

/// The wait before minting again after the `delivery`-th delivery met a
/// transient GitHub error: 5 s, doubling, at most a minute.
fn mint_backoff_ms(delivery: u32) -> u64 {
    (5_000u64 << delivery.saturating_sub(1).min(4)).min(60_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobMessage {
        JobMessage {
            delivery: "d-1".into(),
            action: "queued".into(),
            installation: 1,
            owner: "acme".into(),
            repo: "widgets".into(),
            job_id: 42,
            run_id: 7,
            labels: vec!["self-hosted".into()],
            runner_name: None,
            conclusion: None,
            attempt: 1,
            avoid_spot: Vec::new(),
            runner_id: None,
        }
    }

    /// One envelope, named by `kind`; what the version before it sent is read
    /// too, and what this version sends the version before it reads (a job
    /// with one more field, an admission request with its `admit` field).
    #[test]
    fn the_scale_up_envelope_is_read_by_both_versions_of_a_stack_update() {
        let enveloped = ScaleUpMessage::Job(job()).encode();
        assert!(enveloped.contains(r#""kind":"job""#), "{enveloped}");
        assert_eq!(
            ScaleUpMessage::decode(&enveloped).unwrap(),
            ScaleUpMessage::Job(job())
        );
        let older: JobMessage = serde_json::from_str(&enveloped).unwrap();
        assert_eq!(older, job());
        let admit = admit_message("capacity freed");
        assert_eq!(admit, r#"{"kind":"admit","admit":"capacity freed"}"#);
        #[derive(serde::Deserialize)]
        struct OlderAdmit {
            admit: String,
        }
        let older: OlderAdmit = serde_json::from_str(&admit).unwrap();
        assert_eq!(older.admit, "capacity freed");
        // Bodies the version before the envelope sent.
        let bare = serde_json::to_string(&job()).unwrap();
        assert_eq!(
            ScaleUpMessage::decode(&bare).unwrap(),
            ScaleUpMessage::Job(job())
        );
        assert_eq!(
            ScaleUpMessage::decode(r#"{"admit":"periodic pass"}"#).unwrap(),
            ScaleUpMessage::Admit {
                admit: "periodic pass".into()
            }
        );
        assert!(ScaleUpMessage::decode(r#"{"kind":"launch-rockets"}"#).is_err());
        assert!(ScaleUpMessage::decode("not json").is_err());
    }
}
