//! Admission as a pure planner (ADR-0014, ADR-0017): which waiting runners are
//! launched where, which wait and why, which spare ones are withdrawn.
//!
//! A round is planned from the pools, the open runners' heads, the instances
//! still shutting down and the capacity ledger. Its executor asks for the next
//! [`AdmissionStep`], carries it out, and reports each launch's result with
//! [`AdmissionRound::record`]; what it learns (a quota refusal, a launch) moves
//! the ledger and decides the following steps. [`AdmissionRound::finish`]
//! returns the ledger and the round's figures. No I/O and no clock: `now` is a
//! parameter.
//!
//! The rules: spare runners (standing for no queued job) are withdrawn, never
//! launched. The others are taken in [`fair_order`]; each is launched where its
//! pool's vCPU budget and the ledger allow, by the pool's plan of types and
//! markets ([`next_launch`]), markets known full counted as refused. A pool
//! whose runner must wait waits whole for the rest of the round.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::capacity::{Admission, CapacityLedger, fair_order};
use crate::event::{LaunchErrorClass, Market};
use crate::ids::{InstanceId, StreamId, Timestamp};
use crate::launch::{LaunchChoices, NextLaunch, Refusal, market_unusable, next_launch};
use crate::state::{RunnerRequest, RunnerState};
use crate::supply::{Retirement, plan_withdrawals};
use crate::wait::{MarketBlock, Wait, WaitReason};

/// How long a runner whose launch's outcome is unknown waits before its own
/// delivery resolves the intent by its token.
pub const UNKNOWN_LAUNCH_LOOK_AGAIN_MS: u64 = 5_000;

/// What admission needs to know of a pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolLimits {
    /// Its name.
    pub name: String,
    /// The most vCPUs its instances may hold together.
    pub max_vcpus: Option<u32>,
    /// Its instance types, in the order tried.
    pub instance_types: Vec<String>,
    /// Whether spot is tried first.
    pub spot: bool,
    /// Idle runners it keeps beyond its queued demand at the round's moment
    /// (ADR-0022): its runners within that floor are not withdrawn.
    pub min_idle: usize,
    /// Its floor is kept parked (a stopped pool): `min_idle` counts parked
    /// runners, not idle ones.
    pub stopped: bool,
}

impl PoolLimits {
    fn choices(&self) -> LaunchChoices {
        LaunchChoices {
            instance_types: self.instance_types.len(),
            spot: self.spot,
        }
    }
}

/// An instance EC2 said is shutting down whose vCPUs may still count against
/// the quota.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShuttingDownInstance {
    /// The instance.
    pub instance_id: InstanceId,
    /// Its market.
    pub market: Market,
    /// Its pool, when known.
    pub pool: Option<String>,
    /// Its vCPUs.
    pub vcpus: u32,
}

/// What the executor does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdmissionStep {
    /// Close a spare runner that has nothing launched (`Fail` `surplus`).
    Withdraw {
        /// The runner.
        stream: StreamId,
    },
    /// Record a launch intent and call RunInstances; then
    /// [`AdmissionRound::record`] its result.
    Launch {
        /// The runner.
        stream: StreamId,
        /// Where.
        market: Market,
        /// The instance type.
        instance_type: String,
    },
    /// Send the runner's job back to the scale-up queue after `after_ms`: its
    /// own delivery mints the runner launched here, or resolves its launch.
    HandOver {
        /// The runner.
        stream: StreamId,
        /// The delay.
        after_ms: u64,
    },
    /// The runner cannot be launched: fail it (stage `launch`).
    Fail {
        /// The runner.
        stream: StreamId,
        /// Why, in EC2's words.
        reason: String,
    },
    /// The runner waits for capacity (nothing to do).
    Wait {
        /// The runner.
        stream: StreamId,
        /// Why, with how many runners are ahead of it.
        why: Wait,
    },
}

/// What RunInstances (and the log) said of one [`AdmissionStep::Launch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LaunchResult {
    /// An instance of `vcpus` runs in `market`.
    Launched {
        /// The market.
        market: Market,
        /// Its vCPUs.
        vcpus: u32,
    },
    /// EC2 refused.
    Refused {
        /// How jitr classes the refusal.
        class: LaunchErrorClass,
        /// EC2's error code.
        code: String,
        /// EC2's message.
        message: String,
    },
    /// No answer: an instance may exist. The runner's own delivery resolves
    /// the intent by its token.
    Unknown,
    /// The intent was not recorded: another delivery launches the runner.
    Superseded,
}

/// What became of one runner in a round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// Launched in this market, holding these vCPUs.
    Launched {
        /// The market.
        market: Market,
        /// Its vCPUs.
        vcpus: u32,
    },
    /// Still waiting, and why.
    Waiting(Wait),
    /// Failed: it cannot be launched.
    Failed(String),
    /// Its launch's outcome is unknown.
    Unknown,
    /// Another delivery launches it.
    Superseded,
    /// Withdrawn: spare, nothing launched.
    Withdrawn,
}

/// One RunInstances call of a round, for metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchAttempt {
    /// The market.
    pub market: Market,
    /// The instance type.
    pub instance_type: String,
    /// `ok`, `unknown`, or the refusal's class (`quota`, `capacity`, …).
    pub result: String,
    /// EC2's error code of a refusal.
    pub code: Option<String>,
}

/// A pool's waiting runners after a round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolWaiting {
    /// Runners still waiting.
    pub runners: usize,
    /// The longest wait among them.
    pub oldest_ms: u64,
}

/// The figures of a finished round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Runners waiting when it began (spare ones not counted).
    pub waiting: usize,
    /// Runners it launched.
    pub launched: usize,
    /// Spare runners it withdrew.
    pub withdrawn: usize,
    /// RunInstances refusals, per pool.
    pub refused: BTreeMap<String, usize>,
    /// Each RunInstances call.
    pub attempts: Vec<LaunchAttempt>,
    /// Per pool (every pool given, and any a waiting runner named), the
    /// runners still waiting.
    pub pools: BTreeMap<String, PoolWaiting>,
    /// Runners still wait and a pause holds: when the first one ends.
    pub wake_at: Option<Timestamp>,
    /// Each runner the round decided on.
    pub admitted: BTreeMap<StreamId, Admitted>,
    /// Every runner still waiting after it, in the round's order.
    pub still_waiting: Vec<StillWaiting>,
}

/// A runner still waiting after a round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StillWaiting {
    /// Its pool (empty: none).
    pub pool: String,
    /// The runner.
    pub stream: StreamId,
    /// When it was requested.
    pub since: Timestamp,
    /// Why, when the round reached it (none: the executor stopped before).
    pub reason: Option<WaitReason>,
}

impl RoundReport {
    /// Runners still waiting after the round.
    pub fn still_waiting(&self) -> usize {
        self.pools.values().map(|p| p.runners).sum()
    }
}

/// vCPUs jitr's instances hold, per market, per pool; instances per
/// repository.
#[derive(Clone, Debug, Default)]
struct Held {
    markets: HashMap<Market, u32>,
    pools: HashMap<String, u32>,
    repositories: HashMap<String, u32>,
}

impl Held {
    fn add(&mut self, market: Market, pool: Option<&str>, vcpus: u32) {
        *self.markets.entry(market).or_default() += vcpus;
        if let Some(pool) = pool {
            *self.pools.entry(pool.to_owned()).or_default() += vcpus;
        }
    }

    fn market(&self, market: Market) -> u32 {
        self.markets.get(&market).copied().unwrap_or(0)
    }

    fn pool(&self, pool: &str) -> u32 {
        self.pools.get(pool).copied().unwrap_or(0)
    }
}

/// A runner waiting for capacity.
#[derive(Clone, Debug)]
struct Candidate {
    stream: StreamId,
    repository: String,
    since: Timestamp,
    pool: Option<PoolLimits>,
    vcpus: u32,
    /// The spot markets of these types are avoided (an earlier attempt was
    /// reclaimed there).
    avoid_spot: Vec<String>,
    /// The type named by the request, for a runner of no pool.
    instance_type: String,
    /// A warm runner (ADR-0022): launched after every job's runner.
    warm: bool,
}

impl Candidate {
    fn pool_name(&self) -> &str {
        self.pool.as_ref().map_or("", |p| p.name.as_str())
    }

    fn choices(&self) -> LaunchChoices {
        self.pool
            .as_ref()
            .map_or_else(LaunchChoices::default, PoolLimits::choices)
    }

    fn type_name(&self, index: usize) -> String {
        self.pool
            .as_ref()
            .and_then(|p| p.instance_types.get(index))
            .cloned()
            .unwrap_or_else(|| self.instance_type.clone())
    }
}

/// The runner being launched: what was refused so far.
#[derive(Debug)]
struct Attempt {
    candidate: Candidate,
    ahead: usize,
    refusals: Vec<Refusal>,
    /// Refusals before this round's first call (markets known full).
    known: usize,
    /// Markets tried past a learnt ceiling.
    probing: Vec<Market>,
    /// The call waiting for its result.
    launching: Option<(Market, usize)>,
    /// EC2's last refusal: code and message.
    last_refusal: Option<(String, String)>,
    /// Why each market it may use is closed so far, the latest per market.
    blocks: Vec<MarketBlock>,
}

impl Attempt {
    fn blocked(&mut self, block: MarketBlock) {
        self.blocks.retain(|b| b.market() != block.market());
        self.blocks.push(block);
        self.blocks.sort_by_key(MarketBlock::market);
    }
}

/// One admission round, planned and carried out step by step.
#[derive(Debug)]
pub struct AdmissionRound {
    ledger: CapacityLedger,
    held: Held,
    now: Timestamp,
    own: Option<StreamId>,
    order: VecDeque<Candidate>,
    taken: usize,
    steps: VecDeque<AdmissionStep>,
    attempt: Option<Attempt>,
    /// Pools waiting whole for the rest of the round, and why.
    blocked: HashMap<String, WaitReason>,
    /// Every waiting runner, by pool, with its request time.
    waiting: Vec<(String, StreamId, Timestamp)>,
    report: RoundReport,
}

impl AdmissionRound {
    /// Plans a round at `now` over the `open` runners' heads. `pool_of` names
    /// a request's pool (none: a runner requested before pools existed);
    /// `pools` are every configured pool (for figures of pools with nothing
    /// waiting); `shutting_down` are instances whose vCPUs still count unless
    /// a head holds them. `own` is the runner of the delivery that runs the
    /// round, if any: every other runner launched is handed over.
    pub fn plan<'a>(
        pools: &[PoolLimits],
        open: impl IntoIterator<Item = &'a RunnerState>,
        pool_of: impl Fn(&RunnerRequest) -> Option<PoolLimits>,
        shutting_down: &[ShuttingDownInstance],
        ledger: CapacityLedger,
        own: Option<&StreamId>,
        now: Timestamp,
    ) -> AdmissionRound {
        let open: Vec<&RunnerState> = open.into_iter().collect();
        let mut held = Held::default();
        let mut counted: BTreeSet<&InstanceId> = BTreeSet::new();
        let mut waiting = Vec::new();
        for state in &open {
            let Some(request) = state.request.as_ref() else {
                continue;
            };
            let pool = pool_of(request);
            let repository = format!("{}/{}", request.job.owner, request.job.repo).to_lowercase();
            if state.instance_may_be_alive() {
                let market = state.launch.as_ref().map_or(Market::OnDemand, |l| l.market);
                let vcpus = state.instance().map_or(request.spec.vcpus, |i| i.vcpus);
                held.add(market, pool.as_ref().map(|p| p.name.as_str()), vcpus);
                if let Some(instance) = state.instance() {
                    counted.insert(&instance.id);
                }
                *held.repositories.entry(repository).or_default() += 1;
            } else if state.wants_instance()
                && state.failure.is_none()
                && (state.demand_queued() || state.is_warm())
            {
                let Some(stream) = state.stream_id() else {
                    continue;
                };
                waiting.push(Candidate {
                    stream,
                    repository,
                    since: request.at,
                    pool,
                    vcpus: request.spec.vcpus,
                    avoid_spot: request.spec.avoid_spot.clone(),
                    instance_type: request.spec.instance_type.clone(),
                    warm: state.is_warm(),
                });
            }
        }
        for instance in shutting_down {
            if !counted.contains(&instance.instance_id) {
                held.add(instance.market, instance.pool.as_deref(), instance.vcpus);
            }
        }
        let mut report = RoundReport {
            waiting: waiting.len(),
            pools: pools
                .iter()
                .map(|p| (p.name.clone(), PoolWaiting::default()))
                .collect(),
            ..RoundReport::default()
        };
        let mut steps = VecDeque::new();
        let floor = |name: &str| {
            let pool = pools.iter().find(|p| p.name == name);
            crate::supply::PoolFloor {
                min_idle: pool.map_or(0, |p| p.min_idle),
                stopped: pool.is_some_and(|p| p.stopped),
                ..Default::default()
            }
        };
        for retirement in plan_withdrawals(open.iter().copied(), floor) {
            if let Retirement::Withdraw { stream } = retirement {
                report.admitted.insert(stream.clone(), Admitted::Withdrawn);
                report.withdrawn += 1;
                steps.push_back(AdmissionStep::Withdraw { stream });
            }
        }
        let fair = fair_order(
            waiting,
            |c| c.repository.as_str(),
            |c| c.since,
            |repo| held.repositories.get(repo).copied().unwrap_or(0),
        );
        // Jobs wait for capacity first; warm runners take what is left.
        let (jobs, warm): (Vec<Candidate>, Vec<Candidate>) =
            fair.into_iter().partition(|c| !c.warm);
        let order: Vec<Candidate> = jobs.into_iter().chain(warm).collect();
        let waiting = order
            .iter()
            .map(|c| (c.pool_name().to_owned(), c.stream.clone(), c.since))
            .collect();
        AdmissionRound {
            ledger,
            held,
            now,
            own: own.cloned(),
            order: order.into(),
            taken: 0,
            steps,
            attempt: None,
            blocked: HashMap::new(),
            waiting,
            report,
        }
    }

    /// The next step, or none when the round is over. After a
    /// [`AdmissionStep::Launch`], [`AdmissionRound::record`] its result first
    /// (a launch not recorded counts as [`LaunchResult::Unknown`]).
    pub fn next_step(&mut self) -> Option<AdmissionStep> {
        if self.attempt.as_ref().is_some_and(|a| a.launching.is_some()) {
            self.record(LaunchResult::Unknown);
        }
        loop {
            if let Some(step) = self.steps.pop_front() {
                return Some(step);
            }
            if let Some(attempt) = self.attempt.take() {
                self.go_on(attempt);
                continue;
            }
            let candidate = self.order.pop_front()?;
            let ahead = self.taken;
            self.taken += 1;
            self.begin(candidate, ahead);
        }
    }

    /// The result of the last [`AdmissionStep::Launch`].
    pub fn record(&mut self, result: LaunchResult) {
        let Some(mut attempt) = self.attempt.take() else {
            return;
        };
        let Some((market, type_index)) = attempt.launching.take() else {
            self.attempt = Some(attempt);
            return;
        };
        let stream = attempt.candidate.stream.clone();
        let pool = attempt.candidate.pool_name().to_owned();
        let instance_type = attempt.candidate.type_name(type_index);
        let mine = self.own.as_ref() == Some(&stream);
        let attempted = |result: &str, code: Option<String>| LaunchAttempt {
            market,
            instance_type: instance_type.clone(),
            result: result.to_owned(),
            code,
        };
        match result {
            LaunchResult::Launched { market, vcpus } => {
                self.report.attempts.push(attempted("ok", None));
                self.report.launched += 1;
                self.held.add(market, Some(&pool), vcpus);
                self.ledger
                    .launched(&pool, market, self.held.market(market));
                self.decided(&stream, Admitted::Launched { market, vcpus });
                if !mine {
                    self.steps.push_back(AdmissionStep::HandOver {
                        stream,
                        after_ms: 0,
                    });
                }
            }
            LaunchResult::Refused {
                class,
                code,
                message,
            } => {
                let class_name = format!("{class:?}").to_lowercase();
                self.report
                    .attempts
                    .push(attempted(&class_name, Some(code.clone())));
                *self.report.refused.entry(pool.clone()).or_default() += 1;
                let types = attempt.candidate.choices().instance_types;
                // No probe past another ceiling after a refusal.
                for other in std::mem::take(&mut attempt.probing) {
                    if other != market {
                        close(&mut attempt.refusals, other, types);
                    }
                }
                attempt.refusals.push(Refusal {
                    market,
                    instance_type: type_index,
                    class,
                });
                if class == LaunchErrorClass::Quota {
                    // A vCPU quota is the market's, whatever the type.
                    let used = self.held.market(market);
                    self.ledger.quota_refused(market, used, self.now);
                    close(&mut attempt.refusals, market, types);
                    attempt.blocked(self.ledger.block(&pool, market, used, self.now));
                } else if market_unusable(&code) {
                    // The account cannot use the market at all: the other
                    // market is tried, this one not again for a while.
                    self.ledger.market_unusable(market, self.now);
                    close(&mut attempt.refusals, market, types);
                    attempt.blocked(MarketBlock::Unusable {
                        market,
                        code: Some(code.clone()),
                    });
                } else if class == LaunchErrorClass::Capacity {
                    attempt.blocked(MarketBlock::Capacity {
                        market,
                        code: Some(code.clone()),
                        until: None,
                    });
                } else {
                    attempt.blocked(MarketBlock::Refused {
                        market,
                        code: code.clone(),
                    });
                }
                attempt.last_refusal = Some((code, message));
                self.attempt = Some(attempt);
            }
            LaunchResult::Unknown => {
                self.report.attempts.push(attempted("unknown", None));
                self.decided(&stream, Admitted::Unknown);
                if !mine {
                    self.steps.push_back(AdmissionStep::HandOver {
                        stream,
                        after_ms: UNKNOWN_LAUNCH_LOOK_AGAIN_MS,
                    });
                }
            }
            LaunchResult::Superseded => self.decided(&stream, Admitted::Superseded),
        }
    }

    /// Ends the round: the ledger as the round left it, and its figures.
    pub fn finish(mut self) -> (CapacityLedger, RoundReport) {
        if self.attempt.as_ref().is_some_and(|a| a.launching.is_some()) {
            self.record(LaunchResult::Unknown);
        }
        // Runners not taken up (the executor stopped early) are still waiting.
        for (pool, stream, since) in &self.waiting {
            let reason = match self.report.admitted.get(stream) {
                None => None,
                Some(Admitted::Waiting(wait)) => Some(wait.reason.clone()),
                Some(_) => continue,
            };
            let entry = self.report.pools.entry(pool.clone()).or_default();
            entry.runners += 1;
            entry.oldest_ms = entry.oldest_ms.max(self.now.millis_since(*since));
            self.report.still_waiting.push(StillWaiting {
                pool: pool.clone(),
                stream: stream.clone(),
                since: *since,
                reason,
            });
        }
        if self.report.launched < self.report.waiting {
            self.report.wake_at = self
                .ledger
                .markets
                .values()
                .map(|q| q.pause)
                .chain(self.ledger.pools.values().copied())
                .filter_map(|p| p.until)
                .filter(|u| *u > self.now)
                .min();
        }
        (self.ledger, self.report)
    }

    fn decided(&mut self, stream: &StreamId, admitted: Admitted) {
        self.report.admitted.insert(stream.clone(), admitted);
    }

    fn wait(&mut self, stream: StreamId, reason: WaitReason, ahead: usize) {
        let why = Wait { reason, ahead };
        self.decided(&stream, Admitted::Waiting(why.clone()));
        self.steps.push_back(AdmissionStep::Wait { stream, why });
    }

    /// Takes up the next runner in order.
    fn begin(&mut self, candidate: Candidate, ahead: usize) {
        let pool = candidate.pool_name().to_owned();
        if let Some(why) = self.blocked.get(&pool).cloned() {
            self.wait(candidate.stream, why, ahead);
            return;
        }
        if let Some(max) = candidate.pool.as_ref().and_then(|p| p.max_vcpus) {
            let used = self.held.pool(&pool);
            if used + candidate.vcpus > max {
                let why = WaitReason::PoolBudget {
                    pool: pool.clone(),
                    used,
                    max,
                };
                self.blocked.insert(pool, why.clone());
                self.wait(candidate.stream, why, ahead);
                return;
            }
        }
        let types = candidate.choices().instance_types;
        let mut refusals = Vec::new();
        // Spot markets an earlier attempt was reclaimed from, as if refused
        // for capacity: the plan goes to the next type, or on demand.
        if let Some(limits) = &candidate.pool {
            for (instance_type, name) in limits.instance_types.iter().enumerate() {
                if candidate.avoid_spot.contains(name) {
                    refusals.push(Refusal {
                        market: Market::Spot,
                        instance_type,
                        class: LaunchErrorClass::Capacity,
                    });
                }
            }
        }
        let refused_before = self.report.refused.get(&pool).copied().unwrap_or(0);
        let mut probing = Vec::new();
        let mut blocks = Vec::new();
        for market in [Market::Spot, Market::OnDemand] {
            let used = self.held.market(market);
            match self
                .ledger
                .admits(&pool, market, used, candidate.vcpus, self.now)
            {
                Admission::Fits => {}
                // One refusal per pool and round is enough to learn from: no
                // probe past a ceiling after one.
                Admission::Probe if refused_before == 0 => probing.push(market),
                Admission::Probe | Admission::Full => {
                    close(&mut refusals, market, types);
                    if market == Market::OnDemand || candidate.choices().spot {
                        blocks.push(self.ledger.block(&pool, market, used, self.now));
                    }
                }
            }
        }
        let known = refusals.len();
        self.go_on(Attempt {
            candidate,
            ahead,
            refusals,
            known,
            probing,
            launching: None,
            last_refusal: None,
            blocks,
        });
    }

    /// The runner's next launch, or its end: failed, or waiting.
    fn go_on(&mut self, mut attempt: Attempt) {
        let stream = attempt.candidate.stream.clone();
        let pool = attempt.candidate.pool_name().to_owned();
        let last_code = || {
            attempt
                .last_refusal
                .as_ref()
                .map_or("no launch", |(code, _)| code.as_str())
                .to_owned()
        };
        match next_launch(&attempt.refusals, attempt.candidate.choices()) {
            NextLaunch::Try {
                market,
                instance_type,
            } => {
                if attempt.probing.contains(&market) {
                    self.ledger.probing(market, self.now);
                }
                attempt.launching = Some((market, instance_type));
                self.steps.push_back(AdmissionStep::Launch {
                    stream,
                    market,
                    instance_type: attempt.candidate.type_name(instance_type),
                });
                self.attempt = Some(attempt);
            }
            NextLaunch::Fail => {
                let reason = match &attempt.last_refusal {
                    Some((code, message)) if !message.is_empty() => {
                        format!("launch refused: {code}: {message}")
                    }
                    _ => format!("launch refused: {}", last_code()),
                };
                self.decided(&stream, Admitted::Failed(reason.clone()));
                self.steps.push_back(AdmissionStep::Fail { stream, reason });
            }
            NextLaunch::Wait => {
                let tried = &attempt.refusals[attempt.known..];
                for market in [Market::Spot, Market::OnDemand] {
                    let mut in_market = tried.iter().filter(|r| r.market == market).peekable();
                    if in_market.peek().is_some()
                        && in_market.all(|r| r.class == LaunchErrorClass::Capacity)
                    {
                        self.ledger.capacity_refused(&pool, market, self.now);
                    }
                }
                let why = WaitReason::Markets {
                    blocks: attempt.blocks.clone(),
                };
                self.blocked.insert(pool, why.clone());
                self.wait(stream, why, attempt.ahead);
            }
        }
    }
}

/// The market known full, as refusals of every type there.
fn close(refusals: &mut Vec<Refusal>, market: Market, types: usize) {
    for instance_type in 0..types.max(1) {
        refusals.push(Refusal {
            market,
            instance_type,
            class: LaunchErrorClass::Quota,
        });
    }
}
