//! Launch rules: which market to try next, when to back off or give up, how a
//! pending launch intent is resolved from what the cloud reports, and what is
//! recorded of an instance. Scale-up, compensation and the reaper all call these,
//! so the same instance is recorded the same way whoever finds it.

use crate::command::Command;
use crate::event::{LaunchErrorClass, Market};
use crate::ids::{InstanceId, Timestamp};
use crate::state::RunnerState;

/// How long after its `LaunchIntended` a launch that its client token does not
/// find may still exist. EC2's API is eventually consistent: right after
/// RunInstances, a describe may not see the instance yet.
pub const INTENT_SETTLE_MS: u64 = 30_000;

/// How long after its launch an instance that EC2 answers NotFound for may still
/// exist: EC2's API is eventually consistent ("Eventual consistency in the Amazon
/// EC2 API"), and right after RunInstances, describing or terminating an instance
/// that runs can answer `InvalidInstanceID.NotFound`.
pub const CONSISTENCY_WINDOW_MS: u64 = 120_000;

/// Whether EC2 answering NotFound for an instance launched at `launched_at` is
/// evidence, at `now`, that it is gone: only once the consistency window has
/// passed. Before that, NotFound means "unknown".
pub fn not_found_is_evidence(launched_at: Timestamp, now: Timestamp) -> bool {
    now.millis_since(launched_at) >= CONSISTENCY_WINDOW_MS
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
///
/// One rule for every writer: the type and vCPUs the cloud reports, else those of
/// the spec recorded in the runner's `Requested` (never the current policy's).
/// `None` when no launch is pending.
pub fn record_launch(state: &RunnerState, found: FoundInstance) -> Option<Command> {
    let token = state.pending_launch()?.clone();
    let spec = state.request.as_ref().map(|r| &r.spec);
    Some(Command::RecordLaunch {
        client_token: token,
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
    })
}

/// What the log must say about a pending launch intent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IntentResolution {
    /// The instance exists: record it (a `RecordLaunch`).
    Launched(Command),
    /// Not found, but too recently intended for absence to mean anything: look
    /// again after this many milliseconds.
    LookAgain {
        /// Delay before the next look.
        after_ms: u64,
    },
    /// Not found long after the intent: no instance exists. A runner that still
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
    if age < INTENT_SETTLE_MS {
        return Some(IntentResolution::LookAgain {
            after_ms: INTENT_LOOK_AGAIN_MS.min(INTENT_SETTLE_MS - age),
        });
    }
    Some(IntentResolution::NeverLaunched(if state.wants_instance() {
        Command::RejectLaunch {
            client_token: token,
            code: NOT_LAUNCHED.into(),
            class: LaunchErrorClass::Unknown,
        }
    } else {
        Command::ConfirmTerminated { instance_id: None }
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
