//! Launch rules: which market to try next, when to back off or give up, how a
//! pending launch intent is resolved from what the cloud reports, and what is
//! recorded of an instance. Scale-up, compensation and the reaper all call these,
//! so the same instance is recorded the same way whoever finds it.

use crate::command::Command;
use crate::event::{LaunchErrorClass, Market, TerminationEvidence};
use crate::ids::{ClientToken, InstanceId, Timestamp};
use crate::state::RunnerState;

/// What EC2 says of an instance described by its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceReport {
    /// `pending`, `running`, `stopping` or `stopped`.
    Live,
    /// `shutting-down` or `terminated`: irreversibly on its way out.
    Terminated,
    /// `InvalidInstanceID.NotFound`.
    NotFound,
}

/// What jitr may conclude from an [`InstanceReport`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceVerdict {
    /// The instance runs.
    Alive,
    /// The instance is gone, on this evidence.
    Gone(TerminationEvidence),
    /// Nothing can be concluded yet: ask again later.
    Unknown,
}

/// Judges what EC2 reports of an instance launched at `launched_at`, for a
/// runner whose consistency window is `window_ms`. EC2's API is eventually
/// consistent ("Eventual consistency in the Amazon EC2 API"): right after
/// RunInstances, describing or terminating an instance that runs can answer
/// `InvalidInstanceID.NotFound`. So NotFound is evidence only once the window has
/// passed; before that it means "unknown".
pub fn judge_instance(
    report: InstanceReport,
    launched_at: Timestamp,
    window_ms: u64,
    now: Timestamp,
) -> InstanceVerdict {
    match report {
        InstanceReport::Live => InstanceVerdict::Alive,
        InstanceReport::Terminated => {
            InstanceVerdict::Gone(TerminationEvidence::ReportedTerminated)
        }
        InstanceReport::NotFound if now.millis_since(launched_at) >= window_ms => {
            InstanceVerdict::Gone(TerminationEvidence::NotFoundAfterWindow)
        }
        InstanceReport::NotFound => InstanceVerdict::Unknown,
    }
}

/// Whether `evidence` proves, at `now`, that the runner's instance (`instance_id`,
/// or with `None` the instance its launch may have started) is gone. `Err` says
/// why not. The rules:
///
/// | evidence | holds when |
/// |---|---|
/// | `reported-terminated` | an instance is named (EC2 described it gone) |
/// | `not-found-after-window` | an instance is named, launched (for a stray: recorded) at least the consistency window ago |
/// | `token-found-nothing` | no instance is named, a launch is pending, intended at least the window ago |
/// | `nothing-launched` | no instance is named and no launch is pending |
/// | `unrecorded` | never (only old logs carry it) |
pub fn evidence_holds(
    state: &RunnerState,
    instance_id: Option<&InstanceId>,
    evidence: TerminationEvidence,
    now: Timestamp,
) -> Result<(), &'static str> {
    let window = state.consistency_window_ms();
    let pending_since = state
        .pending_launch()
        .and(state.launch.as_ref())
        .map(|l| l.intended_at);
    match (evidence, instance_id) {
        (_, Some(id)) => {
            let launched_at = match state.strays.iter().find(|s| s.id == *id) {
                Some(stray) => Some(stray.recorded_at),
                None => state.instance().map(|i| i.launched_at),
            };
            match launched_at {
                Some(at) => instance_evidence_holds(at, window, evidence, now),
                None => Err("no such instance is recorded"),
            }
        }
        (TerminationEvidence::TokenFoundNothing, None) => match pending_since {
            Some(at) if now.millis_since(at) >= window => Ok(()),
            Some(_) => {
                Err("a client token finding nothing inside the consistency window means unknown")
            }
            None => Err("no launch is pending"),
        },
        (TerminationEvidence::NothingLaunched, None) if pending_since.is_none() => Ok(()),
        (TerminationEvidence::NothingLaunched, None) => {
            Err("a launch is pending: it may have started an instance")
        }
        (TerminationEvidence::Unrecorded, None) => Err("evidence must be recorded"),
        (_, None) => Err("this evidence is about an instance, and none is named"),
    }
}

/// The evidence rules for an instance launched (or recorded) at `launched_at`.
fn instance_evidence_holds(
    launched_at: Timestamp,
    window: u64,
    evidence: TerminationEvidence,
    now: Timestamp,
) -> Result<(), &'static str> {
    match evidence {
        TerminationEvidence::ReportedTerminated => Ok(()),
        TerminationEvidence::NotFoundAfterWindow if now.millis_since(launched_at) >= window => {
            Ok(())
        }
        TerminationEvidence::NotFoundAfterWindow => {
            Err("NotFound inside the consistency window means unknown")
        }
        TerminationEvidence::Unrecorded => Err("evidence must be recorded"),
        _ => Err("this evidence is about a launch, not an instance"),
    }
}

/// How long to wait before looking a pending launch up again.
pub const INTENT_LOOK_AGAIN_MS: u64 = 10_000;

/// The longest back-off between two deliveries of a job that found no capacity.
pub const MAX_LAUNCH_BACKOFF_MS: u64 = 300_000;

/// The error code recorded when a launch intent is settled as never launched.
pub const NOT_LAUNCHED: &str = "NotLaunched";

/// An instance the cloud reports for a launch (by RunInstances' answer, or found
/// by its client token). What the cloud does not say is `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundInstance {
    /// Its id.
    pub instance_id: InstanceId,
    /// Its type, when reported.
    pub instance_type: Option<String>,
    /// Its vCPUs, when reported.
    pub vcpus: Option<u32>,
}

/// The `RecordLaunch` for the runner's pending intent and the instance `found`.
/// `None` when no launch is pending.
pub fn record_launch(state: &RunnerState, found: FoundInstance) -> Option<Command> {
    let token = state.pending_launch()?.clone();
    Some(record_instance(state, token, found))
}

/// The `RecordLaunch` for an instance `found` that the launch with `client_token`
/// started (the decider records it as the runner's instance or as a stray).
///
/// One rule for every writer: the type and vCPUs the cloud reports, else those of
/// the spec recorded in the runner's `Requested` (never the current policy's).
pub fn record_instance(
    state: &RunnerState,
    client_token: ClientToken,
    found: FoundInstance,
) -> Command {
    let spec = state.request.as_ref().map(|r| &r.spec);
    Command::RecordLaunch {
        client_token,
        instance_type: found
            .instance_type
            .filter(|t| !t.is_empty())
            .or_else(|| spec.map(|s| s.instance_type.clone()))
            .unwrap_or_default(),
        vcpus: found
            .vcpus
            .filter(|v| *v > 0)
            .or_else(|| spec.map(|s| s.vcpus))
            .unwrap_or(0),
        instance_id: found.instance_id,
    }
}

/// What the log must say about a pending launch intent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IntentResolution {
    /// The instance exists: record it (a `RecordLaunch`).
    Launched(Command),
    /// Not found, but intended less than the consistency window ago, when absence
    /// means nothing: look again after this many milliseconds.
    LookAgain {
        /// Delay before the next look.
        after_ms: u64,
    },
    /// Not found a consistency window after the intent: no instance exists. A runner that still
    /// wants one gets a `RejectLaunch` (and may launch again); any other gets a
    /// `ConfirmTerminated { None }` (nothing to terminate).
    NeverLaunched(Command),
}

/// Resolves the runner's pending launch intent from what its client token finds
/// at `now`. `None` when no launch is pending.
pub fn resolve_pending_launch(
    state: &RunnerState,
    found: Option<FoundInstance>,
    now: Timestamp,
) -> Option<IntentResolution> {
    let launch = state.launch.as_ref()?;
    let token = state.pending_launch()?.clone();
    if let Some(found) = found {
        return record_launch(state, found).map(IntentResolution::Launched);
    }
    let age = now.millis_since(launch.intended_at);
    let window = state.consistency_window_ms();
    if age < window {
        return Some(IntentResolution::LookAgain {
            after_ms: INTENT_LOOK_AGAIN_MS.min(window - age),
        });
    }
    Some(IntentResolution::NeverLaunched(if state.wants_instance() {
        Command::RejectLaunch {
            client_token: token,
            code: NOT_LAUNCHED.into(),
            class: LaunchErrorClass::Unknown,
        }
    } else {
        Command::ConfirmTerminated {
            instance_id: None,
            evidence: TerminationEvidence::TokenFoundNothing,
        }
    }))
}

/// The market to try after `market` was refused for `class`: spot falls back to
/// on-demand on quota and capacity errors; nothing else falls back.
pub fn fallback_market(market: Market, class: LaunchErrorClass) -> Option<Market> {
    match (market, class) {
        (Market::Spot, LaunchErrorClass::Quota | LaunchErrorClass::Capacity) => {
            Some(Market::OnDemand)
        }
        _ => None,
    }
}

/// A launch refused during the current delivery of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The market refused.
    pub market: Market,
    /// Why.
    pub class: LaunchErrorClass,
}

/// What scale-up does next for a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextLaunch {
    /// Launch in this market.
    Try(Market),
    /// The request itself is wrong (bad image, subnet, type): fail the runner.
    Fail,
    /// No market is left in this delivery: deliver the job again after this delay.
    BackOff {
        /// Milliseconds.
        after_ms: u64,
    },
    /// No market is left and the job has been delivered `max_deliveries` times.
    GiveUp,
}

/// The launch plan: given the refusals of this delivery (oldest first), the
/// delivery's number (from 1) and the deliveries allowed, what to do next.
/// Spot first; on-demand after a spot quota or capacity refusal; then back off,
/// doubling from 15 s to at most 5 minutes, until the last delivery.
pub fn next_launch(refusals: &[Refusal], delivery: u32, max_deliveries: u32) -> NextLaunch {
    let Some(last) = refusals.last() else {
        return NextLaunch::Try(Market::Spot);
    };
    if last.class == LaunchErrorClass::InvalidRequest {
        return NextLaunch::Fail;
    }
    if let Some(market) = fallback_market(last.market, last.class) {
        if !refusals.iter().any(|r| r.market == market) {
            return NextLaunch::Try(market);
        }
    }
    if delivery >= max_deliveries {
        NextLaunch::GiveUp
    } else {
        NextLaunch::BackOff {
            after_ms: launch_backoff_ms(delivery),
        }
    }
}

/// The back-off after the `delivery`-th delivery found no capacity: 15 s,
/// doubling, at most [`MAX_LAUNCH_BACKOFF_MS`].
pub fn launch_backoff_ms(delivery: u32) -> u64 {
    (15_000u64 << delivery.saturating_sub(1).min(5)).min(MAX_LAUNCH_BACKOFF_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let secs: Vec<u64> = (1..=7).map(|n| launch_backoff_ms(n) / 1000).collect();
        assert_eq!(secs, [15, 30, 60, 120, 240, 300, 300]);
    }

    #[test]
    fn spot_falls_back_to_on_demand_on_quota_and_capacity_only() {
        use LaunchErrorClass::*;
        assert_eq!(fallback_market(Market::Spot, Quota), Some(Market::OnDemand));
        assert_eq!(
            fallback_market(Market::Spot, Capacity),
            Some(Market::OnDemand)
        );
        assert_eq!(fallback_market(Market::Spot, InvalidRequest), None);
        assert_eq!(fallback_market(Market::Spot, Throttled), None);
        assert_eq!(fallback_market(Market::OnDemand, Quota), None);
    }
}
