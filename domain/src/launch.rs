//! Launch rules: which market to try next or whether to wait, how a
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
/// | `state-change` | an instance is named (EC2's state-change event said it goes) |
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
        TerminationEvidence::ReportedTerminated | TerminationEvidence::StateChange => Ok(()),
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

/// Whether EC2's refusal `code` says a whole market cannot be used in this
/// account as it is configured, whatever the request: spot without the EC2
/// Spot service-linked role, which the caller may not create
/// (`AuthFailure.ServiceLinkedRoleCreationNotPermitted`; "Service-linked role
/// for Spot Instance requests", EC2 User Guide). The market is closed and the
/// runner falls back to the other.
pub fn market_unusable(code: &str) -> bool {
    code.starts_with("AuthFailure.ServiceLinkedRole")
}

/// A launch refused during the current delivery of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The market refused.
    pub market: Market,
    /// Which of the pool's instance types (its index, in order of preference).
    pub instance_type: usize,
    /// Why.
    pub class: LaunchErrorClass,
}

/// What a job's pool offers to launch on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchChoices {
    /// How many instance types the pool lists (at least one is assumed).
    pub instance_types: usize,
    /// Whether spot is tried first.
    pub spot: bool,
}

impl Default for LaunchChoices {
    /// One instance type, spot first.
    fn default() -> Self {
        LaunchChoices {
            instance_types: 1,
            spot: true,
        }
    }
}

impl LaunchChoices {
    /// Every (market, instance type) in the order tried: each type on spot (when
    /// the pool uses spot), then each type on demand.
    pub fn candidates(self) -> Vec<(Market, usize)> {
        let types = self.instance_types.max(1);
        let markets: &[Market] = if self.spot {
            &[Market::Spot, Market::OnDemand]
        } else {
            &[Market::OnDemand]
        };
        markets
            .iter()
            .flat_map(|m| (0..types).map(move |t| (*m, t)))
            .collect()
    }
}

/// What scale-up does next for a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextLaunch {
    /// Launch this instance type (the pool's index) in this market.
    Try {
        /// The market.
        market: Market,
        /// The pool's instance type, by its index.
        instance_type: usize,
    },
    /// The request itself is wrong (bad image, subnet, type): fail the runner.
    Fail,
    /// Every choice was refused for quota or capacity, or something else stopped
    /// this round (a throttle, an unknown error): the runner waits for capacity
    /// (ADR-0014). It is never given up for that.
    Wait,
}

/// The launch plan of one admission round: given the refusals of this round
/// (oldest first) and the pool's choices, what to do next. The first type on
/// spot (or on demand when the pool uses no spot); after a quota or capacity
/// refusal the next type in the same market, then the types on demand; a wrong
/// request fails the runner; anything else, or nothing left, waits.
///
/// A market the capacity ledger knows to be full is passed as refused, so that
/// the plan never calls RunInstances where it knows the answer.
pub fn next_launch(refusals: &[Refusal], choices: LaunchChoices) -> NextLaunch {
    let candidates = choices.candidates();
    let tried = |(m, t): &(Market, usize)| {
        refusals
            .iter()
            .any(|r| r.market == *m && r.instance_type == *t)
    };
    let Some(last) = refusals.last() else {
        let (market, instance_type) = candidates[0];
        return NextLaunch::Try {
            market,
            instance_type,
        };
    };
    if last.class == LaunchErrorClass::InvalidRequest {
        return NextLaunch::Fail;
    }
    if !matches!(
        last.class,
        LaunchErrorClass::Quota | LaunchErrorClass::Capacity
    ) {
        return NextLaunch::Wait;
    }
    match candidates.iter().find(|c| !tried(c)).copied() {
        Some((market, instance_type)) => NextLaunch::Try {
            market,
            instance_type,
        },
        None => NextLaunch::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_on_spot_then_each_type_on_demand() {
        use LaunchErrorClass::*;
        let choices = LaunchChoices {
            instance_types: 2,
            spot: true,
        };
        let refused = |market, instance_type, class| Refusal {
            market,
            instance_type,
            class,
        };
        let try_ = |market, instance_type| NextLaunch::Try {
            market,
            instance_type,
        };
        let mut refusals = Vec::new();
        let mut plan = Vec::new();
        while let NextLaunch::Try {
            market,
            instance_type,
        } = next_launch(&refusals, choices)
        {
            plan.push((market, instance_type));
            refusals.push(refused(market, instance_type, Capacity));
        }
        assert_eq!(
            plan,
            [
                (Market::Spot, 0),
                (Market::Spot, 1),
                (Market::OnDemand, 0),
                (Market::OnDemand, 1)
            ]
        );
        // Nothing left: wait. Without spot, on demand only; a throttle ends the
        // round: wait.
        assert_eq!(next_launch(&refusals, choices), NextLaunch::Wait);
        let no_spot = LaunchChoices {
            instance_types: 2,
            spot: false,
        };
        assert_eq!(next_launch(&[], no_spot), try_(Market::OnDemand, 0));
        let throttled = [refused(Market::OnDemand, 0, Throttled)];
        assert_eq!(next_launch(&throttled, no_spot), NextLaunch::Wait);
        // A market known full is passed as refused: the plan starts on demand.
        let spot_full = [
            refused(Market::Spot, 0, Quota),
            refused(Market::Spot, 1, Quota),
        ];
        assert_eq!(next_launch(&spot_full, choices), try_(Market::OnDemand, 0));
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
