//! Read models folded from the runner event log, and the compensation policy.
//!
//! Pure: events and the current moment come in, views and owed commands come out.
//! The projector service in `jitr-handlers` feeds it from the store and saves its
//! checkpoint; nothing here does I/O.
#![deny(missing_docs, unsafe_code)]

pub mod books;
#[cfg(test)]
mod books_tests;
pub mod jobs;
pub mod record;
pub mod series;

use std::collections::{BTreeMap, HashMap};

use jitr_domain::{
    FailureStage, InstanceId, Market, RunnerEvent, RunnerState, RunnerStatus, StreamId,
    TerminateRunner, TerminationEvidence, TerminationReason, Timestamp, evolve, is_terminal,
    terminate_runner, termination_owed,
};
use serde::{Deserialize, Serialize};

/// The shape of [`RunnerViews`] as saved; a checkpoint of another shape is
/// rebuilt from the log. 4: runner states keep the job GitHub gave them, when
/// they became ready, their demand's end and GitHub's busy refusal (ADR-0017).
pub const VIEWS_SCHEMA: u32 = 4;

/// How many skipped positions are kept (all are counted).
pub const SKIPPED_KEPT: usize = 100;

/// The runner read models at one position of the log, bounded by what is open:
/// open runners keep their whole folded state (what `resume` needs); closed ones
/// are only counted (their history is in the log, `jitr history` reads it), so
/// the views — and a checkpoint of them — do not grow with history.
///
/// Applying the same events in any number of batches, with snapshots in between,
/// gives the same models as one rebuild from scratch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerViews {
    /// The shape of these views ([`VIEWS_SCHEMA`]).
    #[serde(default)]
    pub schema: u32,
    /// Last global position folded in.
    pub position: u64,
    /// Open (non-terminal) runners.
    pub open: BTreeMap<StreamId, RunnerState>,
    /// Closed runners, counted by their terminal status.
    #[serde(default)]
    pub closed: BTreeMap<RunnerStatus, u64>,
    /// Events for a stream that is not open and that no `Requested` opens: a
    /// closed stream's (the log should never have them; strays aside).
    pub after_close: u64,
    /// Positions of the first [`SKIPPED_KEPT`] events that could not be read.
    #[serde(default)]
    pub skipped: Vec<u64>,
    /// Events that could not be read and were skipped.
    #[serde(default)]
    pub skipped_count: u64,
    /// Stray instances (returned for launches their stream could not take) not
    /// yet confirmed gone, whatever their stream's status.
    #[serde(default)]
    pub strays: BTreeMap<InstanceId, StrayDebt>,
    /// Closed runners by pool, then terminal status.
    #[serde(default)]
    pub closed_by_pool: BTreeMap<String, BTreeMap<RunnerStatus, u64>>,
    /// `Launched` events folded in, by market then instance type.
    #[serde(default)]
    pub launched: BTreeMap<Market, BTreeMap<String, u64>>,
    /// `Terminated` and `StrayTerminated` events folded in, by evidence.
    #[serde(default)]
    pub terminated_by: BTreeMap<TerminationEvidence, u64>,
}

/// The pool a runner's request names (`default` for requests made before
/// pools were recorded).
pub fn pool_of(state: &RunnerState) -> &str {
    state
        .request
        .as_ref()
        .and_then(|r| r.spec.pool.as_deref())
        .unwrap_or("default")
}

/// A stray instance owed a termination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrayDebt {
    /// The runner whose launch started it.
    pub stream: StreamId,
    /// The launch's token.
    pub client_token: jitr_domain::ClientToken,
    /// Its vCPUs.
    pub vcpus: u32,
    /// Since when it is owed a termination (when it was recorded).
    pub since: Timestamp,
}

/// Live instances and their vCPUs in one market.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarketUsage {
    /// Instances that may be alive.
    pub instances: u32,
    /// Their vCPUs.
    pub vcpus: u32,
}

/// The fleet: what may be running, per market.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fleet {
    /// Spot.
    pub spot: MarketUsage,
    /// On-demand.
    pub on_demand: MarketUsage,
    /// Launch intents not yet resolved (an instance may exist, size unknown to EC2).
    pub unresolved_launches: u32,
    /// Stray instances not yet confirmed gone (any market).
    #[serde(default)]
    pub strays: MarketUsage,
}

/// A runner whose instance may be alive although nobody wants it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenLeak {
    /// The runner.
    pub stream: StreamId,
    /// Its status.
    pub status: RunnerStatus,
    /// Its instance, when known.
    pub instance_id: Option<InstanceId>,
    /// The instance's vCPUs, when known.
    pub vcpus: Option<u32>,
    /// Since when its termination is owed.
    pub owed_since: Timestamp,
    /// Why.
    pub reason: TerminationReason,
    /// Whether a termination was already issued.
    pub termination_requested: bool,
    /// Whether the instance is a stray of the runner (not its own instance).
    #[serde(default)]
    pub stray: bool,
}

impl Default for RunnerViews {
    fn default() -> Self {
        RunnerViews {
            schema: VIEWS_SCHEMA,
            position: 0,
            open: BTreeMap::new(),
            closed: BTreeMap::new(),
            after_close: 0,
            skipped: Vec::new(),
            skipped_count: 0,
            strays: BTreeMap::new(),
            closed_by_pool: BTreeMap::new(),
            launched: BTreeMap::new(),
            terminated_by: BTreeMap::new(),
        }
    }
}

impl RunnerViews {
    /// Passes over the event at `position`, which could not be read: it is counted
    /// in [`RunnerViews::skipped_count`] (and its position kept, for the first
    /// ones) and the views move on.
    pub fn skip(&mut self, position: u64) {
        if position > self.position {
            self.position = position;
            self.skipped_count += 1;
            if self.skipped.len() < SKIPPED_KEPT {
                self.skipped.push(position);
            }
        }
    }

    /// Closed runners.
    pub fn closed_count(&self) -> u64 {
        self.closed.values().sum()
    }

    /// Folds one event at global `position`. Positions at or below the current one
    /// were seen already and are skipped, so a redelivered feed is harmless.
    /// Returns the runner's final state when the event closed it.
    pub fn apply(
        &mut self,
        position: u64,
        stream: &StreamId,
        event: &RunnerEvent,
    ) -> Option<RunnerState> {
        if position <= self.position {
            return None;
        }
        self.position = position;
        match event {
            RunnerEvent::Launched {
                market,
                instance_type,
                ..
            } => {
                *self
                    .launched
                    .entry(*market)
                    .or_default()
                    .entry(instance_type.clone())
                    .or_insert(0) += 1;
            }
            RunnerEvent::Terminated { evidence, .. }
            | RunnerEvent::StrayTerminated { evidence, .. } => {
                *self.terminated_by.entry(*evidence).or_insert(0) += 1;
            }
            _ => {}
        }
        match event {
            RunnerEvent::StrayLaunched {
                at,
                client_token,
                instance_id,
                vcpus,
                ..
            } => {
                self.strays
                    .entry(instance_id.clone())
                    .or_insert_with(|| StrayDebt {
                        stream: stream.clone(),
                        client_token: client_token.clone(),
                        vcpus: *vcpus,
                        since: *at,
                    });
            }
            RunnerEvent::StrayTerminated { instance_id, .. } => {
                self.strays.remove(instance_id);
            }
            _ => {}
        }
        let state = match self.open.remove(stream) {
            Some(state) => state,
            // Only `Requested` opens a stream: any other event for a stream not
            // open belongs to a closed one (a stray's may; nothing else should).
            None if matches!(event, RunnerEvent::Requested { .. }) => RunnerState::default(),
            None => {
                if !matches!(
                    event,
                    RunnerEvent::StrayLaunched { .. } | RunnerEvent::StrayTerminated { .. }
                ) {
                    self.after_close += 1;
                }
                return None;
            }
        };
        let state = evolve(state, event);
        if is_terminal(&state) {
            *self.closed.entry(state.status()).or_insert(0) += 1;
            *self
                .closed_by_pool
                .entry(pool_of(&state).to_owned())
                .or_default()
                .entry(state.status())
                .or_insert(0) += 1;
            Some(state)
        } else {
            self.open.insert(stream.clone(), state);
            None
        }
    }

    /// The status of an open runner (a closed one's is in the log).
    pub fn status(&self, stream: &StreamId) -> Option<RunnerStatus> {
        self.open.get(stream).map(RunnerState::status)
    }

    /// How many runners are in each status (statuses with none are left out).
    pub fn by_status(&self) -> BTreeMap<RunnerStatus, u64> {
        let mut counts = self.closed.clone();
        for state in self.open.values() {
            *counts.entry(state.status()).or_insert(0) += 1;
        }
        counts.retain(|_, n| *n > 0);
        counts
    }

    /// How many runners are in each status, by pool (statuses with none are
    /// left out).
    pub fn by_pool_and_status(&self) -> BTreeMap<(String, RunnerStatus), u64> {
        let mut counts = BTreeMap::new();
        for (pool, closed) in &self.closed_by_pool {
            for (status, n) in closed {
                *counts.entry((pool.clone(), *status)).or_insert(0) += n;
            }
        }
        for state in self.open.values() {
            *counts
                .entry((pool_of(state).to_owned(), state.status()))
                .or_insert(0) += 1;
        }
        counts.retain(|_, n| *n > 0);
        counts
    }

    /// Instances that may be alive, per market.
    pub fn fleet(&self) -> Fleet {
        let mut fleet = Fleet::default();
        for state in self.open.values() {
            if !state.instance_may_be_alive() {
                continue;
            }
            match state.instance() {
                Some(instance) => {
                    let usage = match instance.market {
                        Market::Spot => &mut fleet.spot,
                        Market::OnDemand => &mut fleet.on_demand,
                    };
                    usage.instances += 1;
                    usage.vcpus += instance.vcpus;
                }
                None => fleet.unresolved_launches += 1,
            }
        }
        for stray in self.strays.values() {
            fleet.strays.instances += 1;
            fleet.strays.vcpus += stray.vcpus;
        }
        fleet
    }

    /// Runners owed a termination at `now`, oldest debt first.
    pub fn open_leaks(&self, now: Timestamp) -> Vec<OpenLeak> {
        let mut leaks: Vec<OpenLeak> = self
            .open
            .iter()
            .filter_map(|(stream, state)| {
                let (owed_since, reason) = termination_owed(state, now)?;
                Some(OpenLeak {
                    stream: stream.clone(),
                    status: state.status(),
                    instance_id: state.instance().map(|i| i.id.clone()),
                    vcpus: state.instance().map(|i| i.vcpus),
                    owed_since,
                    reason,
                    termination_requested: state.termination_requested.is_some(),
                    stray: false,
                })
            })
            .collect();
        for (id, stray) in &self.strays {
            leaks.push(OpenLeak {
                stream: stray.stream.clone(),
                // A stray's runner is usually closed (its status is in the log);
                // the stray itself is being terminated.
                status: self
                    .status(&stray.stream)
                    .unwrap_or(RunnerStatus::Terminating),
                instance_id: Some(id.clone()),
                vcpus: Some(stray.vcpus),
                owed_since: stray.since,
                reason: stray_reason(),
                termination_requested: true,
                stray: true,
            });
        }
        leaks.sort_by(|a, b| (a.owed_since, &a.stream).cmp(&(b.owed_since, &b.stream)));
        leaks
    }
}

/// Why a stray's termination is owed: nobody wants it.
fn stray_reason() -> TerminationReason {
    TerminationReason::Failure {
        stage: FailureStage::Orphaned,
    }
}

/// Decides which `TerminateRunner` commands to put on the bus: one for every runner
/// owed a termination, again every `reemit_after_ms` while it stays owed (the bus is
/// at-least-once), and all of them again after a restart, since what was emitted is
/// deliberately not persisted.
#[derive(Clone, Debug)]
pub struct CompensationPolicy {
    reemit_after_ms: u64,
    emitted: HashMap<StreamId, Timestamp>,
    emitted_strays: HashMap<InstanceId, Timestamp>,
}

impl CompensationPolicy {
    /// A policy that re-emits a still-owed command after `reemit_after_ms`.
    pub fn new(reemit_after_ms: u64) -> Self {
        CompensationPolicy {
            reemit_after_ms,
            emitted: HashMap::new(),
            emitted_strays: HashMap::new(),
        }
    }

    /// The commands due at `now`; each is taken as emitted.
    pub fn due(&mut self, views: &RunnerViews, now: Timestamp) -> Vec<TerminateRunner> {
        self.emitted.retain(|stream, _| {
            views
                .open
                .get(stream)
                .is_some_and(|s| termination_owed(s, now).is_some())
        });
        let mut due = Vec::new();
        for state in views.open.values() {
            let Some(command) = terminate_runner(state, now) else {
                continue;
            };
            let fresh = match self.emitted.get(&command.stream) {
                Some(last) => now.millis_since(*last) >= self.reemit_after_ms,
                None => true,
            };
            if fresh {
                self.emitted.insert(command.stream.clone(), now);
                due.push(command);
            }
        }
        self.emitted_strays
            .retain(|id, _| views.strays.contains_key(id));
        for (id, stray) in &views.strays {
            let fresh = match self.emitted_strays.get(id) {
                Some(last) => now.millis_since(*last) >= self.reemit_after_ms,
                None => true,
            };
            if fresh {
                self.emitted_strays.insert(id.clone(), now);
                due.push(TerminateRunner {
                    stream: stray.stream.clone(),
                    instance_id: Some(id.clone()),
                    client_token: Some(stray.client_token.clone()),
                    reason: stray_reason(),
                    owed_since: stray.since,
                });
            }
        }
        due
    }
}

pub mod accounting;

#[cfg(test)]
mod tests;
