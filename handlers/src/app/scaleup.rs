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
    Admission, CapacityLedger, Command, FailureStage, InstallationId, InstanceId, IntentResolution,
    JobRef, LaunchChoices, LaunchErrorClass, LaunchOutcome, Market, MarketQuota, NextLaunch,
    Refusal, RunnerEvent, RunnerState, StreamId, Timestamp, boot_deadline, fair_order, next_launch,
    record_instance,
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

/// What an admission round did.
#[derive(Debug, Default)]
pub struct Round {
    /// Runners waiting when it began.
    pub waiting: usize,
    /// Runners it launched.
    pub launched: usize,
    /// RunInstances refusals, per pool.
    pub refused: HashMap<String, usize>,
    /// What became of the round's own runner (none: it was not waiting).
    pub own: Option<Admitted>,
}

/// What became of a runner in an admission round.
#[derive(Debug)]
pub enum Admitted {
    /// Launched in this market, holding these vCPUs.
    Launched {
        /// The market.
        market: Market,
        /// Its vCPUs.
        vcpus: u32,
    },
    /// Still waiting, and why.
    Waiting(String),
    /// The delivery ends here (failed, or its launch's outcome unknown).
    Ended(Outcome),
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
    market: Market,
    pool: Option<String>,
    vcpus: u32,
    since: Timestamp,
    /// EC2 said `terminated` (EventBridge does not keep events in order: a
    /// late `shutting-down` must not count it again).
    terminated: bool,
}

/// A runner waiting for capacity.
struct Waiting {
    stream: StreamId,
    repository: String,
    since: Timestamp,
    pool: String,
    state: RunnerState,
}

/// vCPUs jitr's instances hold, per market and per pool.
#[derive(Default)]
struct Held {
    markets: HashMap<Market, u32>,
    pools: HashMap<String, u32>,
    /// Instances per repository (`owner/repo`, lower case).
    repositories: HashMap<String, u32>,
}

impl Held {
    fn add(&mut self, market: Market, pool: Option<&str>, vcpus: u32) {
        *self.markets.entry(market).or_default() += vcpus;
        if let Some(pool) = pool {
            *self.pools.entry(pool.to_owned()).or_default() += vcpus;
        }
    }

    fn hold(&mut self, repository: &str) {
        *self.repositories.entry(repository.to_owned()).or_default() += 1;
    }

    fn repository(&self, repository: &str) -> u32 {
        self.repositories.get(repository).copied().unwrap_or(0)
    }

    fn market(&self, market: Market) -> u32 {
        self.markets.get(&market).copied().unwrap_or(0)
    }

    fn pool(&self, pool: &str) -> u32 {
        self.pools.get(pool).copied().unwrap_or(0)
    }
}

/// The scale-up handler.
pub struct ScaleUp {
    ports: Ports,
    policy: Arc<RunnerPolicy>,
    /// What is known of each market's quota; held for a whole admission round,
    /// so that rounds of one process run one at a time.
    ledger: tokio::sync::Mutex<CapacityLedger>,
    /// The ledger's markets as the last round (or freed capacity) left them,
    /// for pages and metrics that must not wait for a round.
    quotas: Mutex<std::collections::BTreeMap<Market, MarketQuota>>,
    /// When the next round is already asked for (after a pause ends).
    next_wake: Mutex<Option<Timestamp>>,
    /// Instances EC2 said are shutting down: their vCPUs may still count
    /// against the quota until EC2 says `terminated` (kept at most
    /// [`SHUTDOWN_HOLD_MS`]).
    shutting_down: Mutex<HashMap<InstanceId, ShuttingDown>>,
    stats: Mutex<AdmissionStats>,
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
            quotas: Mutex::new(ledger.markets.clone()),
            ledger: tokio::sync::Mutex::new(ledger),
            next_wake: Mutex::default(),
            shutting_down: Mutex::default(),
            stats: Mutex::default(),
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
        let request = Command::Request {
            job: job_ref,
            attempt: job.attempt,
            labels: job.labels.clone(),
            spec,
            deadlines: self.policy.deadlines,
            installation: Some(InstallationId(job.installation)),
            deployment: self.policy.deployment.clone(),
        };
        self.run(&stream, request, now, "request").await?;

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
                        Ok(_) => {}
                        Err(e) if e.is_transient() => {
                            return Ok(Outcome::RetryAfter(
                                Duration::from_secs(30),
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
                            if !after.demand_queued() {
                                return Ok(Outcome::Done(format!(
                                    "{stream}: spare (its job was cancelled or taken by another runner): not launched"
                                )));
                            }
                            return Ok(Outcome::RetryAfter(
                                Duration::from_secs(2),
                                format!("{stream}: not in the waiting queue yet"),
                            ));
                        }
                        Some(Admitted::Waiting(why)) => {
                            return Ok(Outcome::Done(format!(
                                "{stream}: waiting for capacity ({why})"
                            )));
                        }
                        Some(Admitted::Ended(outcome)) => return Ok(outcome),
                    }
                }
            }
        }
        self.mint(&stream, job, receives, now).await
    }

    /// One admission round (ADR-0014): the waiting runners, in fair order, are
    /// launched while their vCPUs fit what the capacity ledger knows of each
    /// market and their pool's budget; a pool whose head does not fit waits
    /// whole. Each runner launched for another delivery is handed back to the
    /// scale-up queue to be minted. Rounds of one process run one at a time.
    /// `own` is the runner of the delivery that runs the round, if any.
    pub async fn admit(
        &self,
        own: Option<&StreamId>,
        now: Timestamp,
    ) -> Result<Round, HandlerError> {
        let mut ledger = self.ledger.lock().await;
        let open = self.ports.store.open_streams().await?;
        let mut held = Held::default();
        let mut waiting = Vec::new();
        let mut counted: std::collections::HashSet<InstanceId> = Default::default();
        for head in &open.heads {
            let state = &head.state;
            let Some(request) = state.request.as_ref() else {
                continue;
            };
            let pool = self.policy.pool_of(request).map(|p| p.name.clone());
            if state.instance_may_be_alive() {
                let market = state.launch.as_ref().map_or(Market::OnDemand, |l| l.market);
                let vcpus = state.instance().map_or(request.spec.vcpus, |i| i.vcpus);
                held.add(market, pool.as_deref(), vcpus);
                if let Some(instance) = state.instance() {
                    counted.insert(instance.id.clone());
                }
                held.hold(&format!("{}/{}", request.job.owner, request.job.repo).to_lowercase());
            } else if state.wants_instance() && state.failure.is_none() && state.demand_queued() {
                // A spare runner (its job cancelled or taken by another) is
                // not launched: it is withdrawn (ADR-0017).
                waiting.push(Waiting {
                    stream: head.stream.clone(),
                    repository: format!("{}/{}", request.job.owner, request.job.repo)
                        .to_lowercase(),
                    since: request.at,
                    pool: pool.unwrap_or_default(),
                    state: state.clone(),
                });
            }
        }
        {
            let mut shutting = self.shutting_down.lock().unwrap_or_else(|p| p.into_inner());
            shutting.retain(|_, s| now.millis_since(s.since) < SHUTDOWN_HOLD_MS);
            for (id, s) in shutting.iter().filter(|(_, s)| !s.terminated) {
                if !counted.contains(id) {
                    held.add(s.market, s.pool.as_deref(), s.vcpus);
                }
            }
        }
        let mut round = Round {
            waiting: waiting.len(),
            ..Round::default()
        };
        let order = fair_order(
            waiting,
            |w| w.repository.as_str(),
            |w| w.since,
            |repo| held.repository(repo),
        );
        let mut blocked: HashMap<String, String> = HashMap::new();
        // Runners this round launched or ended: no longer waiting.
        let mut served: std::collections::HashSet<&StreamId> = Default::default();
        for (ahead, w) in order.iter().enumerate() {
            let mine = own == Some(&w.stream);
            let pool_name = w.pool.clone();
            if let Some(why) = blocked.get(&pool_name) {
                if mine {
                    round.own = Some(Admitted::Waiting(format!("{why}; {ahead} ahead")));
                }
                continue;
            }
            // The head's state: a launch re-reads the stream when it records.
            let state = &w.state;
            let Some(request) = state.request.as_ref() else {
                continue;
            };
            let pool = self.policy.pool_of(request);
            let vcpus = request.spec.vcpus;
            if let Some(max) = pool.and_then(|p| p.max_vcpus) {
                let used = held.pool(&pool_name);
                if used + vcpus > max {
                    let why = format!("pool {pool_name} at its vCPU budget ({used} of {max})");
                    if mine {
                        round.own = Some(Admitted::Waiting(format!("{why}; {ahead} ahead")));
                    }
                    blocked.insert(pool_name, why);
                    continue;
                }
            }
            let refused = round.refused.entry(pool_name.clone()).or_default();
            let admitted = self
                .launch_one(&w.stream, state, &mut ledger, &held, refused, now)
                .await?;
            match &admitted {
                Admitted::Launched { market, vcpus } => {
                    served.insert(&w.stream);
                    round.launched += 1;
                    held.add(*market, Some(&pool_name), *vcpus);
                    ledger.launched(&pool_name, *market, held.market(*market));
                    if !mine {
                        self.hand_over(state, Duration::ZERO).await?;
                    }
                }
                Admitted::Waiting(why) => {
                    blocked.insert(pool_name, why.clone());
                }
                Admitted::Ended(outcome) => {
                    served.insert(&w.stream);
                    if !mine {
                        tracing::warn!(stream = %w.stream, ?outcome, "admitted runner ended");
                        if matches!(outcome, Outcome::RetryAfter(..)) {
                            // Its launch's outcome is unknown: its own delivery
                            // resolves the intent by its token.
                            self.hand_over(state, Duration::from_secs(5)).await?;
                        }
                    }
                }
            }
            if mine {
                round.own = Some(match admitted {
                    Admitted::Waiting(why) => Admitted::Waiting(format!("{why}; {ahead} ahead")),
                    other => other,
                });
            }
        }
        // Runners still waiting after the round and the oldest wait, per pool
        // (every pool, so that a pool that stopped waiting reads 0).
        let mut per_pool: std::collections::BTreeMap<&str, (usize, u64)> = self
            .policy
            .pools
            .iter()
            .map(|p| (p.name.as_str(), (0, 0)))
            .collect();
        for w in order.iter().filter(|w| !served.contains(&w.stream)) {
            let entry = per_pool.entry(w.pool.as_str()).or_default();
            entry.0 += 1;
            entry.1 = entry.1.max(now.millis_since(w.since));
        }
        for (pool, (count, oldest_ms)) in per_pool {
            crate::app::metrics::pool_waiting(now, pool, count, oldest_ms);
        }
        crate::app::metrics::capacity_round(now, order.len() - served.len(), round.launched);
        {
            let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            stats.rounds += 1;
            stats.launched += round.launched as u64;
            stats.refused += round.refused.values().sum::<usize>() as u64;
            stats.most_refused_per_pool_in_a_round = stats
                .most_refused_per_pool_in_a_round
                .max(round.refused.values().copied().max().unwrap_or(0) as u64);
        }
        self.remember_quotas(&ledger, now);
        if round.launched < round.waiting {
            self.wake_after_pause(&ledger, now).await?;
        }
        Ok(round)
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
        self.shutting_down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(instance.clone())
            .or_insert(ShuttingDown {
                market,
                pool,
                vcpus,
                since: now,
                terminated: false,
            });
    }

    /// EC2 said `instance` is terminated: its vCPUs are free (remembered for
    /// [`SHUTDOWN_HOLD_MS`], so that a `shutting-down` delivered after it does
    /// not count it again).
    pub fn instance_terminated(&self, instance: &InstanceId, now: Timestamp) {
        self.shutting_down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                instance.clone(),
                ShuttingDown {
                    market: Market::OnDemand,
                    pool: None,
                    vcpus: 0,
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
        *self.quotas.lock().unwrap_or_else(|p| p.into_inner()) = ledger.markets.clone();
    }

    /// What this process knows of each market's quota, as the last admission
    /// round left it (a market without a ceiling is not known yet).
    pub fn quotas(&self) -> std::collections::BTreeMap<Market, MarketQuota> {
        self.quotas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Keeps the ledger's markets for [`ScaleUp::quotas`] and records each
    /// known ceiling as a metric (`configured` or `learnt`).
    fn remember_quotas(&self, ledger: &CapacityLedger, now: Timestamp) {
        for (market, quota) in &ledger.markets {
            if let Some(ceiling) = quota.ceiling {
                let source = if self.policy.quotas.iter().any(|(m, _)| m == market) {
                    "configured"
                } else {
                    "learnt"
                };
                crate::app::metrics::vcpu_quota(now, *market, source, ceiling);
            }
        }
        *self.quotas.lock().unwrap_or_else(|p| p.into_inner()) = ledger.markets.clone();
    }

    /// The admission rounds of this process so far.
    pub fn admission_stats(&self) -> AdmissionStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runners still wait and a pause holds: asks for a round when the first
    /// pause ends (once: a round already asked for by then is enough).
    async fn wake_after_pause(
        &self,
        ledger: &CapacityLedger,
        now: Timestamp,
    ) -> Result<(), HandlerError> {
        let Some(at) = ledger
            .markets
            .values()
            .map(|q| q.pause)
            .chain(ledger.pools.values().copied())
            .filter_map(|p| p.until)
            .filter(|u| *u > now)
            .min()
        else {
            return Ok(());
        };
        {
            let mut next = self.next_wake.lock().unwrap_or_else(|p| p.into_inner());
            if next.is_some_and(|n| n > now && n <= at) {
                return Ok(());
            }
            *next = Some(at);
        }
        let body = admit_message("a pause ends");
        let delay = Duration::from_millis(at.millis_since(now));
        self.ports
            .scaleup_queue
            .publish(&body, Some(delay), &[])
            .await?;
        Ok(())
    }

    /// Launches `stream` (waiting, chosen by the round) where the ledger allows:
    /// the pool's plan of types and markets, with the markets known full passed
    /// as refused. A quota refusal teaches the ledger and closes that market for
    /// the round; a wrong request fails the runner.
    async fn launch_one(
        &self,
        stream: &StreamId,
        state: &RunnerState,
        ledger: &mut CapacityLedger,
        held: &Held,
        refused: &mut usize,
        now: Timestamp,
    ) -> Result<Admitted, HandlerError> {
        let request = state.request.as_ref().expect("requested");
        let pool = self.policy.pool_of(request);
        let pool_name = pool.map_or_else(String::new, |p| p.name.clone());
        let choices = pool.map_or_else(LaunchChoices::default, |p| LaunchChoices {
            instance_types: p.instance_types.len(),
            spot: p.spot,
        });
        let vcpus = request.spec.vcpus;
        // The markets known full, as refusals of every type there.
        let mut refusals: Vec<Refusal> = Vec::new();
        let close = |refusals: &mut Vec<Refusal>, market: Market| {
            for instance_type in 0..choices.instance_types.max(1) {
                refusals.push(Refusal {
                    market,
                    instance_type,
                    class: LaunchErrorClass::Quota,
                });
            }
        };
        // Spot markets an earlier attempt was reclaimed from, as if refused
        // for capacity: the plan goes to the next type, or on demand.
        if let Some(pool) = pool {
            for (instance_type, name) in pool.instance_types.iter().enumerate() {
                if request.spec.avoid_spot.contains(name) {
                    refusals.push(Refusal {
                        market: Market::Spot,
                        instance_type,
                        class: LaunchErrorClass::Capacity,
                    });
                }
            }
        }
        let mut probing: Vec<Market> = Vec::new();
        for market in [Market::Spot, Market::OnDemand] {
            match ledger.admits(&pool_name, market, held.market(market), vcpus, now) {
                Admission::Fits => {}
                // One refusal per pool and round is enough to learn from: no
                // probe past a ceiling after one.
                Admission::Probe if *refused == 0 => probing.push(market),
                Admission::Probe | Admission::Full => close(&mut refusals, market),
            }
        }
        let known = refusals.len();
        // EC2's words for the last refusal: a definitive one (a wrong image, a
        // missing profile) is the operator's to read.
        let mut refused_because: Option<String> = None;
        let mut state = state.clone();
        loop {
            let (market, type_index) = match next_launch(&refusals, choices) {
                NextLaunch::Try {
                    market,
                    instance_type,
                } => (market, instance_type),
                NextLaunch::Fail => {
                    let reason = match &refused_because {
                        Some(message) => {
                            format!("launch refused: {}: {message}", last_refusal(&state))
                        }
                        None => format!("launch refused: {}", last_refusal(&state)),
                    };
                    self.fail(stream, FailureStage::Launch, reason.clone(), now)
                        .await?;
                    return Ok(Admitted::Ended(Outcome::DeadLetter(format!(
                        "{stream}: {reason}"
                    ))));
                }
                NextLaunch::Wait => {
                    let tried = &refusals[known..];
                    for market in [Market::Spot, Market::OnDemand] {
                        let in_market: Vec<_> =
                            tried.iter().filter(|r| r.market == market).collect();
                        if !in_market.is_empty()
                            && in_market
                                .iter()
                                .all(|r| r.class == LaunchErrorClass::Capacity)
                        {
                            ledger.capacity_refused(&pool_name, market, now);
                        }
                    }
                    let why = match tried.last() {
                        Some(_) => format!("launch refused: {}", last_refusal(&state)),
                        None => "no market has room".to_owned(),
                    };
                    return Ok(Admitted::Waiting(why));
                }
            };
            if probing.contains(&market) {
                ledger.probing(market, now);
            }
            let instance_type = pool
                .and_then(|p| p.instance_types.get(type_index))
                .cloned()
                .unwrap_or_else(|| request.spec.instance_type.clone());
            let settings = pool.map(|p| p.launch.clone()).unwrap_or_default();
            let user_data = self
                .policy
                .bootstrap
                .as_ref()
                .map(|b| pool.map_or_else(|| b.clone(), |p| b.for_pool(p)).render());
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
                return Ok(Admitted::Ended(Outcome::Done(format!(
                    "{stream}: another delivery launches it"
                ))));
            };
            state = intended;
            let token = state.pending_launch().cloned().expect("intent written");
            self.crash.check(CrashPoint::AfterLaunchIntended)?;
            let launch_spec = LaunchSpec {
                stream: stream.clone(),
                client_token: token.clone(),
                market,
                instance_type,
                vcpus,
                image: request.spec.image.clone(),
                user_data,
                settings,
            };
            match self.ports.compute.launch(&launch_spec).await {
                Ok(launched) => {
                    crate::app::metrics::launch(
                        now,
                        market.as_str(),
                        &launch_spec.instance_type,
                        "ok",
                        None,
                    );
                    self.crash.check(CrashPoint::AfterRunInstances)?;
                    let vcpus = launched.vcpus;
                    let record = record_instance(&state, token.clone(), launched.found());
                    self.record_instance(stream, record, now, &format!("launched-{token}"))
                        .await?;
                    self.crash.check(CrashPoint::AfterLaunched)?;
                    return Ok(Admitted::Launched { market, vcpus });
                }
                Err(LaunchFailure::Rejected(e)) => {
                    tracing::info!(%stream, market = market.as_str(), code = %e.code, "launch refused");
                    crate::app::metrics::launch(
                        now,
                        market.as_str(),
                        &launch_spec.instance_type,
                        &format!("{:?}", e.class).to_lowercase(),
                        Some(&e.code),
                    );
                    let reject = Command::RejectLaunch {
                        client_token: token.clone(),
                        code: e.code.clone(),
                        class: e.class,
                    };
                    if let Dispatched::Appended { state: after, .. } = self
                        .run(stream, reject, now, &format!("rejected-{token}"))
                        .await?
                    {
                        state = after;
                    }
                    refused_because = Some(e.message.clone());
                    *refused += 1;
                    // No probe past another ceiling after a refusal.
                    for other in std::mem::take(&mut probing) {
                        if other != market {
                            close(&mut refusals, other);
                        }
                    }
                    refusals.push(Refusal {
                        market,
                        instance_type: type_index,
                        class: e.class,
                    });
                    if e.class == LaunchErrorClass::Quota {
                        // A vCPU quota is the market's, whatever the type.
                        ledger.quota_refused(market, held.market(market), now);
                        close(&mut refusals, market);
                    }
                }
                Err(LaunchFailure::Unknown(e)) => {
                    crate::app::metrics::launch(
                        now,
                        market.as_str(),
                        &launch_spec.instance_type,
                        "unknown",
                        None,
                    );
                    // The instance may exist: the next delivery resolves the
                    // intent by its token.
                    return Ok(Admitted::Ended(Outcome::RetryAfter(
                        Duration::from_secs(5),
                        format!("{stream}: launch outcome unknown: {e}"),
                    )));
                }
            }
        }
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
            Ok(jit) => jit,
            Err(e) if e.is_transient() => {
                // A rate limit, a 5xx, no answer: ask again later while the boot
                // deadline allows; the runner is not failed for it.
                let wait = Duration::from_millis(mint_backoff_ms(receives));
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
                Command::RecordToken { runner_name: name },
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

/// The wait before minting again after the `delivery`-th delivery met a
/// transient GitHub error: 5 s, doubling, at most a minute.
fn mint_backoff_ms(delivery: u32) -> u64 {
    (5_000u64 << delivery.saturating_sub(1).min(4)).min(60_000)
}

/// The last launch refusal recorded on the runner, for messages.
fn last_refusal(state: &RunnerState) -> String {
    match state.launch.as_ref().map(|l| &l.outcome) {
        Some(LaunchOutcome::Rejected { code, .. }) => code.clone(),
        _ => "no launch".into(),
    }
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
