//! The audit's books (ADR-0023): what an audit needs of the log, folded event
//! by event and bounded by what is open. Open runners keep their state (in the
//! [`RunnerViews`]), closed ones leave only counts and what they added to the
//! window's figures, so the books at any position can be saved as a snapshot
//! and an audit of a window folds only the events after the last snapshot
//! before it.
//!
//! The figures count what happened in the books' [`Window`]; a snapshot is
//! folded with [`Window::none`] and counts nothing. Folding a snapshot's books
//! on from its position, with [`Books::open_window`] at a window that starts
//! after every event it holds, gives what a fold of the whole log gives.

use std::collections::BTreeMap;

use jitr_domain::{
    InstanceId, Market, RunnerEvent, RunnerState, Stray, StreamId, Timestamp, termination_owed,
};
use serde::{Deserialize, Serialize};

use crate::RunnerViews;
use crate::accounting::{Distribution, LeakFigures};
use crate::jobs::JobBook;

/// The shape of [`Books`] as saved; a snapshot of another shape is not used.
pub const BOOKS_SCHEMA: u32 = 2;

/// The span of time whose happenings the figures count, both ends included,
/// and how long after its termination became owed an instance counts as
/// orphaned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// First moment counted.
    pub since: Timestamp,
    /// Last moment counted; runners still open are judged at it.
    pub until: Timestamp,
    /// The orphan grace, in ms.
    pub grace_ms: u64,
}

impl Default for Window {
    fn default() -> Self {
        Window::everything(Timestamp(i64::MAX), 60_000)
    }
}

impl Window {
    /// Everything up to `until`.
    pub fn everything(until: Timestamp, grace_ms: u64) -> Self {
        Window {
            since: Timestamp(i64::MIN),
            until,
            grace_ms,
        }
    }

    /// No moment at all: books folded for a snapshot count nothing.
    pub fn none() -> Self {
        Window {
            since: Timestamp(i64::MAX),
            until: Timestamp(i64::MIN),
            grace_ms: 0,
        }
    }

    /// Whether `at` is in the window.
    pub fn holds(&self, at: Timestamp) -> bool {
        self.since <= at && at <= self.until
    }

    /// How many ms of `[from, to)` fall in the window.
    fn overlap(&self, from: Timestamp, to: Timestamp) -> u64 {
        let start = from.0.max(self.since.0);
        let end = to.0.min(self.until.0);
        u64::try_from(end.saturating_sub(start)).unwrap_or(0)
    }
}

/// A stray instance as the books keep it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrayRecord {
    /// The runner whose launch started it.
    pub stream: StreamId,
    /// The instance, with when it was recorded and confirmed gone.
    pub stray: Stray,
}

/// A runner whose spot instance EC2 warned it would reclaim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpotWarning {
    /// The runner.
    pub stream: StreamId,
    /// Its instance id and type.
    pub instance: Option<(InstanceId, String)>,
    /// When the warning was recorded.
    pub at: Timestamp,
    /// Whether the job had started on it (the job was cut).
    pub job_cut: bool,
}

/// What an instance's time is charged to: its runner's repository and pool,
/// its type and market.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UsageKey {
    /// `owner/repo` of the job the runner was launched for (warm runners: the
    /// repository they wait for).
    pub repository: String,
    /// The runner's pool (`default` before pools were recorded).
    pub pool: String,
    /// The instance type.
    pub instance_type: String,
    /// Spot or on-demand.
    pub market: Market,
}

/// The instance time of `state`'s instance in `window` until `end`: from
/// `Launched` to `end`, less the time it was parked (stopped, ADR-0022).
pub fn instance_time(
    state: &RunnerState,
    window: &Window,
    end: Timestamp,
) -> Option<(UsageKey, u64)> {
    let instance = state.instance()?;
    let request = state.request.as_ref()?;
    let mut ms = window.overlap(instance.launched_at, end);
    if let Some(parked) = state.parked_at {
        let woken = state.woken_at.unwrap_or(end).min(end);
        ms = ms.saturating_sub(window.overlap(parked, woken));
    }
    let key = UsageKey {
        repository: format!("{}/{}", request.job.owner, request.job.repo),
        pool: crate::pool_of(state).to_owned(),
        instance_type: instance.instance_type.clone(),
        market: instance.market,
    };
    Some((key, ms))
}

/// What happened in the window, counted as it happened.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Tally {
    /// Instance time of closed runners, ms.
    #[serde(with = "crate::jobs::as_pairs")]
    instance_ms: BTreeMap<UsageKey, u64>,
    owed_vcpu_ms: u64,
    orphan_vcpu_ms: u64,
    orphans: u64,
    latencies_ms: Vec<u64>,
    failures: BTreeMap<String, u64>,
    closed_by: BTreeMap<String, u64>,
    lifecycle_sources: BTreeMap<String, u64>,
    strays_gone: Vec<StrayRecord>,
    spot_warnings: Vec<SpotWarning>,
}

impl Tally {
    /// Adds a debt of `vcpus` from `owed` until `gone`: owed within the
    /// grace, then orphaned.
    fn add_debt(&mut self, window: &Window, vcpus: u64, owed: Timestamp, gone: Timestamp) {
        let orphan_from = Timestamp(owed.plus_ms(window.grace_ms).0.min(gone.0));
        let orphan_ms = window.overlap(orphan_from, gone);
        let owed_ms = window.overlap(owed, orphan_from);
        self.owed_vcpu_ms = self
            .owed_vcpu_ms
            .saturating_add(vcpus.saturating_mul(owed_ms));
        self.orphan_vcpu_ms = self
            .orphan_vcpu_ms
            .saturating_add(vcpus.saturating_mul(orphan_ms));
        self.orphans += u64::from(orphan_ms > 0);
    }
}

/// The audit's books at one position of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Books {
    /// The shape of these books ([`BOOKS_SCHEMA`]).
    pub schema: u32,
    /// The last position folded (or passed over).
    pub position: u64,
    /// Events folded.
    pub events: u64,
    /// Events passed over because they happened after the horizon.
    pub after_horizon: u64,
    /// First and last moments of every event seen.
    pub covers: Option<(Timestamp, Timestamp)>,
    /// Open runners, closed ones counted.
    pub views: RunnerViews,
    /// Open jobs, and the window's job figures.
    pub jobs: JobBook,
    /// Stray instances not yet confirmed gone.
    strays_open: BTreeMap<InstanceId, StrayRecord>,
    window: Window,
    tally: Tally,
}

impl Default for Books {
    fn default() -> Self {
        Books::new(Window::default())
    }
}

/// Whether `state`'s instance holds vCPUs, and how many.
pub(crate) fn vcpus(state: &RunnerState) -> u64 {
    u64::from(
        state
            .instance()
            .map(|i| i.vcpus)
            .or_else(|| state.request.as_ref().map(|r| r.spec.vcpus))
            .unwrap_or(0),
    )
}

impl Books {
    /// Empty books counting what happens in `window`.
    pub fn new(window: Window) -> Self {
        Books {
            schema: BOOKS_SCHEMA,
            position: 0,
            events: 0,
            after_horizon: 0,
            covers: None,
            views: RunnerViews::default(),
            jobs: JobBook::new(window),
            strays_open: BTreeMap::new(),
            window,
            tally: Tally::default(),
        }
    }

    /// The window counted.
    pub fn window(&self) -> Window {
        self.window
    }

    /// Counts from now on what happens in `window`, from nothing; what is
    /// open stays. For a snapshot's books, before folding on from them.
    pub fn open_window(&mut self, window: Window) {
        self.window = window;
        self.tally = Tally::default();
        self.jobs.open_window(window);
    }

    /// Passes over the event at `position`, which could not be read.
    pub fn pass_over(&mut self, position: u64) {
        if position > self.position {
            self.position = position;
            self.views.skip(position);
        }
    }

    /// Folds the event at `position`, unless it was folded already (a
    /// redelivered page) or happened after `horizon`.
    pub fn fold(
        &mut self,
        position: u64,
        stream: &StreamId,
        event: &RunnerEvent,
        horizon: Option<Timestamp>,
    ) {
        if position <= self.position {
            return;
        }
        self.position = position;
        let at = event.at();
        self.covers = Some(
            self.covers
                .map_or((at, at), |(a, b)| (a.min(at), b.max(at))),
        );
        if horizon.is_some_and(|h| at > h) {
            self.after_horizon += 1;
            return;
        }
        self.events += 1;
        let counts = self.window.holds(at);
        let learnt = match event {
            RunnerEvent::JobStarted { source, .. } => Some(("started", source)),
            RunnerEvent::JobCompleted { source, .. } => Some(("completed", source)),
            _ => None,
        };
        if let (Some((what, source)), true) = (learnt, counts) {
            *self
                .tally
                .lifecycle_sources
                .entry(format!("{what}-{}", source.as_str()))
                .or_default() += 1;
        }
        self.fold_stray(stream, event);
        let before = self.views.open.get(stream);
        let open_before = before.is_some();
        let (failed_before, closed_before) = before.map_or((false, false), |s| {
            (s.failure.is_some(), s.terminated_by.is_some())
        });
        // When the instance's termination became owed, fixed by `Terminated`.
        let owed_at_close = match (event, before) {
            (RunnerEvent::Terminated { .. }, Some(state)) if state.instance_may_be_alive() => {
                Some(termination_owed(state, at).map(|(t, _)| t))
            }
            _ => None,
        };
        let closed = self.views.apply(position, stream, event);
        let applied = open_before || matches!(event, RunnerEvent::Requested { .. });
        if !applied {
            return;
        }
        self.jobs.apply(stream, event);
        let Some(state) = closed.as_ref().or_else(|| self.views.open.get(stream)) else {
            return;
        };
        if counts {
            if let (false, Some(failure)) = (failed_before, &state.failure) {
                *self
                    .tally
                    .failures
                    .entry(failure.stage.as_str().to_owned())
                    .or_default() += 1;
            }
            if let (false, Some(evidence)) = (closed_before, state.terminated_by) {
                *self
                    .tally
                    .closed_by
                    .entry(evidence.as_str().to_owned())
                    .or_default() += 1;
            }
        }
        if let Some(state) = closed {
            self.settle(stream, &state, owed_at_close.flatten(), at);
            self.jobs.runner_closed(stream);
        }
    }

    fn fold_stray(&mut self, stream: &StreamId, event: &RunnerEvent) {
        match event {
            RunnerEvent::StrayLaunched { instance_id, .. } => {
                if let Some(stray) = Stray::launched(event) {
                    self.strays_open
                        .entry(instance_id.clone())
                        .or_insert_with(|| StrayRecord {
                            stream: stream.clone(),
                            stray,
                        });
                }
            }
            RunnerEvent::StrayTerminated {
                at,
                instance_id,
                evidence,
            } => {
                if let Some(mut record) = self.strays_open.remove(instance_id) {
                    record.stray.gone = Some((*at, *evidence));
                    if record.stray.recorded_at <= self.window.until && *at >= self.window.since {
                        self.tally.strays_gone.push(record);
                    }
                }
            }
            _ => {}
        }
    }

    /// Adds what a runner closed at `at` adds to the window.
    fn settle(
        &mut self,
        stream: &StreamId,
        state: &RunnerState,
        owed_at_close: Option<Timestamp>,
        at: Timestamp,
    ) {
        if let Some(owed) = owed_at_close {
            self.tally.add_debt(&self.window, vcpus(state), owed, at);
            if self.window.holds(at) {
                self.tally.latencies_ms.push(at.millis_since(owed));
            }
        }
        if let Some(warning) = self.spot_warning(stream, state) {
            self.tally.spot_warnings.push(warning);
        }
        let end = state.terminated_at.unwrap_or(at);
        if let Some((key, ms)) = instance_time(state, &self.window, end).filter(|(_, ms)| *ms > 0) {
            *self.tally.instance_ms.entry(key).or_default() += ms;
        }
    }

    /// Instance time in the window, ms, by what it is charged to: the closed
    /// runners' and, until the window's end, the open ones'.
    pub fn usage(&self) -> BTreeMap<UsageKey, u64> {
        let mut usage = self.tally.instance_ms.clone();
        for state in self.views.open.values() {
            if !state.instance_may_be_alive() {
                continue;
            }
            if let Some((key, ms)) = instance_time(state, &self.window, self.window.until) {
                *usage.entry(key).or_default() += ms;
            }
        }
        usage.retain(|_, ms| *ms > 0);
        usage
    }

    fn spot_warning(&self, stream: &StreamId, state: &RunnerState) -> Option<SpotWarning> {
        let (at, job_cut) = state.spot_warned?;
        self.window.holds(at).then(|| SpotWarning {
            stream: stream.clone(),
            instance: state
                .instance()
                .map(|i| (i.id.clone(), i.instance_type.clone())),
            at,
            job_cut,
        })
    }

    /// The leak figures of the window: the closed runners' and, judged at
    /// the window's end, the open ones'.
    pub fn leak_figures(&self) -> LeakFigures {
        let mut debts = Tally {
            owed_vcpu_ms: self.tally.owed_vcpu_ms,
            orphan_vcpu_ms: self.tally.orphan_vcpu_ms,
            orphans: self.tally.orphans,
            ..Tally::default()
        };
        let until = self.window.until;
        for state in self.views.open.values() {
            if let Some((owed, _)) = termination_owed(state, until) {
                debts.add_debt(&self.window, vcpus(state), owed, until);
            }
        }
        LeakFigures {
            orphan_vcpu_minutes: debts.orphan_vcpu_ms as f64 / 60_000.0,
            owed_vcpu_minutes: debts.owed_vcpu_ms as f64 / 60_000.0,
            orphans: debts.orphans,
            compensation_latency_ms: Distribution::of(self.tally.latencies_ms.clone()),
        }
    }

    /// Runners failed in the window, by failure stage.
    pub fn failures(&self) -> &BTreeMap<String, u64> {
        &self.tally.failures
    }

    /// Runners closed by `Terminated` in the window, by its evidence.
    pub fn closed_by(&self) -> &BTreeMap<String, u64> {
        &self.tally.closed_by
    }

    /// Job starts and completions recorded in the window, by where they
    /// were learnt: `started-webhook`, `completed-poll`, ...
    pub fn lifecycle_sources(&self) -> &BTreeMap<String, u64> {
        &self.tally.lifecycle_sources
    }

    /// Stray instances alive at some moment of the window, oldest first.
    pub fn strays(&self) -> Vec<StrayRecord> {
        let mut strays: Vec<StrayRecord> = self
            .tally
            .strays_gone
            .iter()
            .chain(
                self.strays_open
                    .values()
                    .filter(|r| r.stray.recorded_at <= self.window.until),
            )
            .cloned()
            .collect();
        strays.sort_by(|a, b| {
            (a.stray.recorded_at, &a.stray.id).cmp(&(b.stray.recorded_at, &b.stray.id))
        });
        strays
    }

    /// Spot interruption warnings recorded in the window, oldest first.
    pub fn spot_warnings(&self) -> Vec<SpotWarning> {
        let mut warnings = self.tally.spot_warnings.clone();
        warnings.extend(
            self.views
                .open
                .iter()
                .filter_map(|(stream, state)| self.spot_warning(stream, state)),
        );
        warnings.sort_by(|a, b| (a.at, &a.stream).cmp(&(b.at, &b.stream)));
        warnings
    }

    /// Instances that may be alive at the books' position: runner, instance
    /// id (none while the launch is unresolved), market, vCPUs.
    pub fn live(&self) -> Vec<(StreamId, Option<String>, Market, u32)> {
        self.views
            .open
            .iter()
            .filter(|(_, s)| s.instance_may_be_alive())
            .filter_map(|(stream, s)| {
                let market = s
                    .instance()
                    .map(|i| i.market)
                    .or_else(|| s.launch.as_ref().map(|l| l.market))?;
                Some((
                    stream.clone(),
                    s.instance().map(|i| i.id.0.clone()),
                    market,
                    vcpus(s) as u32,
                ))
            })
            .collect()
    }
}
