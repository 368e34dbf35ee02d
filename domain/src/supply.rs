//! Demand against supply, per pool: which surplus runners retire.
//!
//! GitHub gives a queued job to any idle runner whose labels match, so a pool's
//! runners are interchangeable capacity. A pool's *demand* is its runners
//! standing for a job that still waits (neither taken nor cancelled); its
//! *supply* is its runners no job has taken yet (waiting for capacity,
//! launching, booting, ready). Supply above demand is surplus: runners nobody
//! will use. Only spare runners (standing for no waiting job) retire, so no
//! job's demand is retired with its runner; cheapest first — a runner with
//! nothing launched is withdrawn at once; a ready runner is deregistered first
//! (GitHub refuses to delete a busy one) once it has been ready for the grace,
//! youngest first. A runner still launching or booting is left to become
//! ready: it may take the next job.

use std::collections::BTreeMap;

use crate::command::Command;
use crate::event::FailureStage;
use crate::ids::{StreamId, Timestamp};
use crate::state::{RunnerState, RunnerStatus};

/// How long a surplus runner stays ready before it is retired, by default:
/// long enough for an `in_progress` already on its way to arrive.
pub const DEFAULT_RETIRE_GRACE_MS: u64 = 60_000;

/// What happens to one surplus runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retirement {
    /// Nothing was launched and nothing is registered: close it (`Fail`
    /// `surplus`), no instance to terminate.
    Withdraw {
        /// The runner.
        stream: StreamId,
    },
    /// Ready and registered: delete its registration, then fail it `surplus`
    /// (its termination follows). A refusal because it is busy keeps it.
    Deregister {
        /// The runner.
        stream: StreamId,
        /// Its registered name.
        runner_name: String,
    },
    /// Parked (a stopped pool's, never registered): close it (`Fail`
    /// `surplus`); its stopped instance is terminated.
    Discard {
        /// The runner.
        stream: StreamId,
    },
}

impl Retirement {
    /// The runner it retires.
    pub fn stream(&self) -> &StreamId {
        match self {
            Retirement::Withdraw { stream }
            | Retirement::Deregister { stream, .. }
            | Retirement::Discard { stream } => stream,
        }
    }

    /// The command that closes the runner once it is retired (for a
    /// deregistration: once its registration is gone).
    pub fn command(&self) -> Command {
        let reason = match self {
            Retirement::Withdraw { .. } => "nothing was launched",
            Retirement::Deregister { .. } => "registration deleted",
            Retirement::Discard { .. } => "parked beyond the floor, never registered",
        };
        Command::Fail {
            stage: FailureStage::Surplus,
            reason: format!("surplus: no queued job of its pool wants it; {reason}"),
        }
    }
}

/// What a pool keeps of its untaken runners (ADR-0022): its warm floor now,
/// and how long a ready runner beyond it stays before it retires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolFloor {
    /// Idle runners kept beyond queued demand (a stopped pool: parked ones).
    pub min_idle: usize,
    /// How long a ready surplus runner stays before it is retired.
    pub idle_grace_ms: u64,
    /// The pool keeps its floor parked (stopped), not registered and idle.
    pub stopped: bool,
}

impl Default for PoolFloor {
    /// No warm floor; the default grace.
    fn default() -> Self {
        PoolFloor {
            min_idle: 0,
            idle_grace_ms: DEFAULT_RETIRE_GRACE_MS,
            stopped: false,
        }
    }
}

/// One pool's balance at a moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolBalance {
    /// Runners whose own job still waits.
    pub demand: usize,
    /// Runners no job has taken yet (but parked ones).
    pub supply: usize,
    /// A stopped pool's runners not yet woken: launching, booting to be
    /// stopped, or parked.
    pub parked: usize,
}

impl PoolBalance {
    /// Supply beyond demand.
    pub fn surplus(&self) -> usize {
        self.supply.saturating_sub(self.demand)
    }
}

/// The balance of each pool among `open` runners (a runner requested before
/// pools existed counts in the pool `""`).
pub fn pool_balances<'a>(
    open: impl IntoIterator<Item = &'a RunnerState>,
) -> BTreeMap<String, PoolBalance> {
    let mut pools: BTreeMap<String, PoolBalance> = BTreeMap::new();
    for state in open {
        let Some(request) = &state.request else {
            continue;
        };
        let balance = pools
            .entry(request.spec.pool.clone().unwrap_or_default())
            .or_default();
        balance.demand += usize::from(state.demand_queued());
        balance.supply += usize::from(state.is_untaken_capacity());
        balance.parked += usize::from(state.is_parking());
    }
    pools
}

/// The surplus runners to retire at `now` among the `open` runners (every open
/// runner of the pools concerned: demand is counted across them), at most one
/// per unit of surplus per pool; a pool keeps its `floor` (by pool name).
pub fn plan_retirements<'a>(
    open: impl IntoIterator<Item = &'a RunnerState>,
    now: Timestamp,
    floor: impl Fn(&str) -> PoolFloor,
) -> Vec<Retirement> {
    plan(open, &floor, Some(now))
}

/// The surplus runners with nothing launched, to withdraw now (no GitHub call):
/// the first part of [`plan_retirements`].
pub fn plan_withdrawals<'a>(
    open: impl IntoIterator<Item = &'a RunnerState>,
    floor: impl Fn(&str) -> PoolFloor,
) -> Vec<Retirement> {
    plan(open, &floor, None)
}

/// Withdrawals, then (given the moment) deregistrations.
fn plan<'a>(
    open: impl IntoIterator<Item = &'a RunnerState>,
    floor: &dyn Fn(&str) -> PoolFloor,
    deregister: Option<Timestamp>,
) -> Vec<Retirement> {
    let open: Vec<&RunnerState> = open.into_iter().collect();
    let balances = pool_balances(open.iter().copied());
    let mut plan = Vec::new();
    for (pool, balance) in balances {
        let floor = floor(&pool);
        if floor.stopped {
            plan.extend(parked_surplus(&open, &pool, &balance, floor.min_idle));
        }
        let idle_floor = if floor.stopped { 0 } else { floor.min_idle };
        let mut surplus = crate::warm::plan_warmth(&balance, idle_floor).surplus;
        if surplus == 0 {
            continue;
        }
        let in_pool = |s: &&&RunnerState| {
            s.request
                .as_ref()
                .is_some_and(|r| r.spec.pool.clone().unwrap_or_default() == pool)
                && s.is_untaken_capacity()
                // Only a spare runner retires: one standing for a queued job
                // would take that job's demand with it.
                && !s.demand_queued()
        };
        // Nothing launched: withdrawn at once, the youngest first.
        let mut unlaunched: Vec<&RunnerState> = open
            .iter()
            .filter(in_pool)
            .copied()
            .filter(|s| !s.instance_may_be_alive() && s.runner_name.is_none())
            .collect();
        unlaunched.sort_by_key(|s| std::cmp::Reverse(s.request.as_ref().map(|r| r.at)));
        for state in unlaunched {
            if surplus == 0 {
                break;
            }
            if let Some(stream) = state.stream_id() {
                plan.push(Retirement::Withdraw { stream });
                surplus -= 1;
            }
        }
        let Some(now) = deregister else {
            continue;
        };
        let grace_ms = floor.idle_grace_ms;
        // Ready for the grace: deregistered first, the youngest first.
        let mut ready: Vec<(&RunnerState, Timestamp, String)> = open
            .iter()
            .filter(in_pool)
            .filter(|s| s.status() == RunnerStatus::Ready)
            .filter_map(|s| {
                // Heads written before `ready_at` was kept: since the launch.
                let ready_at = s.ready_at.or(s.instance().map(|i| i.launched_at))?;
                Some((*s, ready_at, s.runner_name.clone()?))
            })
            .filter(|(_, at, _)| now.millis_since(*at) >= grace_ms)
            .collect();
        ready.sort_by_key(|(_, at, _)| std::cmp::Reverse(*at));
        for (state, _, runner_name) in ready {
            if surplus == 0 {
                break;
            }
            if let Some(stream) = state.stream_id() {
                plan.push(Retirement::Deregister {
                    stream,
                    runner_name,
                });
                surplus -= 1;
            }
        }
    }
    plan
}

/// A stopped pool's parking runners beyond its floor: those with nothing
/// launched are withdrawn (the youngest first), then parked ones discarded
/// (the oldest first: the freshest images stay). One still booting to be
/// parked is left to park.
fn parked_surplus(
    open: &[&RunnerState],
    pool: &str,
    balance: &PoolBalance,
    floor: usize,
) -> Vec<Retirement> {
    let mut surplus = balance.parked.saturating_sub(floor);
    let mut plan = Vec::new();
    let mut parking: Vec<&RunnerState> = open
        .iter()
        .copied()
        .filter(|s| s.is_parking())
        .filter(|s| {
            s.request
                .as_ref()
                .is_some_and(|r| r.spec.pool.as_deref().unwrap_or_default() == pool)
        })
        .collect();
    parking.sort_by_key(|s| std::cmp::Reverse(s.request.as_ref().map(|r| r.at)));
    for state in parking.iter().filter(|s| !s.instance_may_be_alive()) {
        if surplus == 0 {
            return plan;
        }
        if let Some(stream) = state.stream_id() {
            plan.push(Retirement::Withdraw { stream });
            surplus -= 1;
        }
    }
    for state in parking.iter().rev().filter(|s| s.parked_at.is_some()) {
        if surplus == 0 {
            break;
        }
        if let Some(stream) = state.stream_id() {
            plan.push(Retirement::Discard { stream });
            surplus -= 1;
        }
    }
    plan
}
