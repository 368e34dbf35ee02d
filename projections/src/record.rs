//! What a closed runner's life comes to, in one row: the archive's `runners`
//! table (ADR-0024), which a query engine sums without replaying events.

use jitr_domain::{RunnerEvent, RunnerState, StreamId, Timestamp, evolve, termination_owed};

use crate::books::{Window, instance_time, vcpus};

/// One closed runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerRecord {
    /// Its stream.
    pub stream: StreamId,
    /// `owner/repo` of its job (warm runners: the repository they waited for).
    pub repository: Option<String>,
    /// Its pool.
    pub pool: String,
    /// The job it was launched for (0: a warm runner).
    pub job_id: Option<u64>,
    /// Its instance, when one was launched.
    pub instance_id: Option<String>,
    /// The instance's type.
    pub instance_type: Option<String>,
    /// `spot` or `on-demand`.
    pub market: Option<&'static str>,
    /// vCPUs its instance held (or would have).
    pub vcpus: u32,
    /// When it was requested.
    pub requested_at: Option<Timestamp>,
    /// When its instance was launched.
    pub launched_at: Option<Timestamp>,
    /// When its instance was confirmed gone.
    pub terminated_at: Option<Timestamp>,
    /// When its stream closed (its last event).
    pub closed_at: Timestamp,
    /// Instance time, ms: `Launched` to `Terminated`, less the time parked.
    pub instance_ms: u64,
    /// How long its termination was owed before the instance was confirmed
    /// gone, ms (none when nothing was owed while it may have been alive);
    /// less the audit's grace, times `vcpus`, it is the runner's orphan time.
    pub owed_ms: Option<u64>,
    /// Its status when it closed.
    pub status: &'static str,
    /// The stage it failed at, if it failed.
    pub failure_stage: Option<&'static str>,
    /// What proved its instance gone.
    pub closed_by: Option<&'static str>,
    /// Its events.
    pub events: u64,
}

impl RunnerRecord {
    /// The record of a closed stream's events, in order; none when the
    /// events do not close it.
    pub fn of<'a>(
        stream: &StreamId,
        events: impl IntoIterator<Item = &'a RunnerEvent>,
    ) -> Option<RunnerRecord> {
        let mut state = RunnerState::default();
        let mut owed_ms = None;
        let mut closed_at = None;
        let mut count = 0u64;
        // Events after the one that closed it change nothing (as in the views).
        for event in events {
            count += 1;
            if closed_at.is_some() {
                continue;
            }
            if let RunnerEvent::Terminated { at, .. } = event {
                if state.instance_may_be_alive() {
                    owed_ms = termination_owed(&state, *at).map(|(owed, _)| at.millis_since(owed));
                }
            }
            state = evolve(state, event);
            if jitr_domain::is_terminal(&state) {
                closed_at = Some(event.at());
            }
        }
        let closed_at = closed_at?;
        let end = state.terminated_at.unwrap_or(closed_at);
        let usage = instance_time(&state, &Window::everything(end, 0), end);
        let request = state.request.as_ref();
        let instance = state.instance();
        Some(RunnerRecord {
            stream: stream.clone(),
            repository: usage
                .as_ref()
                .map(|(k, _)| k.repository.clone())
                .or_else(|| request.map(|r| format!("{}/{}", r.job.owner, r.job.repo))),
            pool: crate::pool_of(&state).to_owned(),
            job_id: request.map(|r| r.job.job_id),
            instance_id: instance.map(|i| i.id.0.clone()),
            instance_type: instance.map(|i| i.instance_type.clone()),
            market: instance.map(|i| i.market.as_str()),
            vcpus: vcpus(&state) as u32,
            requested_at: request.map(|r| r.at),
            launched_at: instance.map(|i| i.launched_at),
            terminated_at: state.terminated_at,
            closed_at,
            instance_ms: usage.map_or(0, |(_, ms)| ms),
            owed_ms,
            status: state.status().as_str(),
            failure_stage: state.failure.as_ref().map(|f| f.stage.as_str()),
            closed_by: state.terminated_by.map(|e| e.as_str()),
            events: count,
        })
    }

    /// Its orphan time with `grace_ms` of grace, in vCPU-ms.
    pub fn orphan_vcpu_ms(&self, grace_ms: u64) -> u64 {
        self.owed_ms.map_or(0, |owed| {
            u64::from(self.vcpus) * owed.saturating_sub(grace_ms)
        })
    }
}
