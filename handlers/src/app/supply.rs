//! Demand and supply (ADR-0017): which runner stands for which queued job,
//! and surplus runners retired, deregister-first.
//!
//! A queued job is stood for by one open runner: the one launched for it, until
//! GitHub gives the job to another runner. Then the two swap — the runner that
//! stood for the job now stands for the taker's job (`DemandMoved`) — or, when
//! the taker stood for nothing (spare), the job's runner is spare too
//! (`DemandEnded`). A job cancelled while queued ends its runner's demand.
//!
//! The plan is the domain's ([`jitr_domain::plan_retirements`]): demand
//! against supply per pool. This service carries it out: a runner with nothing
//! launched is withdrawn (`Fail` `surplus`, nothing to terminate); a ready
//! runner's GitHub registration is deleted first, and only then is it failed
//! `surplus` (its termination follows through the projector and compensation).
//! GitHub refuses to delete a busy runner: that refusal is evidence the runner
//! took a job, and it is kept (`DeregistrationRefused`).

use std::sync::Arc;

use jitr_domain::{Command, DemandEnding, JobRef, Retirement, RunnerState, StreamId, Timestamp};
use jitr_infra::{CommandId, GitHubError, InstanceState};
use serde::Serialize;

use crate::app::Ports;
use crate::app::dispatch::{Dispatched, current_state, dispatch};
use crate::app::outcome::HandlerError;
use crate::app::policy::RunnerPolicy;

/// Jobs followed when looking for a job's runner.
const MAX_DEMAND_HOPS: usize = 32;

/// Runner attempts of one job looked at.
const MAX_ATTEMPTS: u32 = 8;

/// How long a stopped pool's instance runs after its launch before it is
/// stopped: its first boot done and its image's volume read, so that a start
/// finds it warm (ADR-0022).
pub const PREPARE_MS: u64 = 120_000;

/// What one parking pass did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Parking {
    /// Found stopped and recorded `Parked`.
    pub parked: Vec<StreamId>,
    /// Asked to stop.
    pub stopping: Vec<StreamId>,
    /// Per-runner failures.
    pub errors: Vec<String>,
}

/// Whether two references name the same job (the run id aside).
fn same_job(a: &JobRef, b: &JobRef) -> bool {
    a.owner.eq_ignore_ascii_case(&b.owner)
        && a.repo.eq_ignore_ascii_case(&b.repo)
        && a.job_id == b.job_id
}

/// What deleting a runner's registration found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deregistration {
    /// Deleted now, or it was never registered or already gone: the runner
    /// cannot take a job any more.
    Gone,
    /// GitHub refused: the runner is running a job.
    Busy(String),
}

/// What one retirement pass did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RetireReport {
    /// Runners with nothing launched, closed as surplus.
    pub withdrawn: Vec<StreamId>,
    /// Ready runners deregistered and failed `surplus` (terminations follow).
    pub retired: Vec<StreamId>,
    /// Runners GitHub refused to deregister because they are busy: kept.
    pub kept_busy: Vec<StreamId>,
    /// What failed for one runner (retried on the next pass).
    pub errors: Vec<String>,
}

/// Carries out the retirement plan.
pub struct Supply {
    ports: Ports,
    policy: Arc<RunnerPolicy>,
}

impl Supply {
    /// A service over `ports`.
    pub fn new(ports: Ports, policy: Arc<RunnerPolicy>) -> Self {
        Supply { ports, policy }
    }

    async fn record(
        &self,
        stream: &StreamId,
        command: Command,
        now: Timestamp,
    ) -> Result<Dispatched, HandlerError> {
        let id = CommandId::new(format!("supply:{stream}:{}:{}", command.name(), now.0));
        Ok(dispatch(&*self.ports.store, stream, command, now, &id).await?)
    }

    /// The open runners standing for `job` now: found from the job's own
    /// runners along the jobs runners took (a demand moves only from the
    /// runner that took a job to that job's runner).
    pub async fn holders(&self, job: &JobRef) -> Result<Vec<StreamId>, HandlerError> {
        let mut holders = Vec::new();
        let mut jobs = std::collections::VecDeque::from([job.clone()]);
        let mut seen = std::collections::HashSet::new();
        while let Some(next) = jobs.pop_front() {
            if !seen.insert((next.owner.clone(), next.repo.clone(), next.job_id))
                || seen.len() > MAX_DEMAND_HOPS
            {
                continue;
            }
            for attempt in 1..=MAX_ATTEMPTS {
                let Ok(stream) = StreamId::for_job(&next, attempt) else {
                    break;
                };
                let Some(head) = self.ports.store.head(&stream).await? else {
                    break;
                };
                let state = &head.state;
                if state.demand_queued() && state.demand_job().is_some_and(|d| same_job(d, job)) {
                    holders.push(stream);
                } else if let Some(taken) = state.job_taken() {
                    if state.demand_ended.is_none() {
                        jobs.push_back(taken.clone());
                    }
                }
            }
        }
        Ok(holders)
    }

    /// GitHub gave `job` to `taker` (a runner of jitr's, already recorded as
    /// having taken it), or to a runner not of jitr's: the runners standing
    /// for `job` swap with the taker (they now stand for what the taker stood
    /// for) or, when the taker stood for nothing, are spare. Returns what was
    /// recorded. Repeating it changes nothing.
    pub async fn job_taken(
        &self,
        job: &JobRef,
        taker: Option<&StreamId>,
        taker_name: &str,
        now: Timestamp,
    ) -> Result<Vec<String>, HandlerError> {
        // What the taker stood for when it took the job.
        let held = match taker {
            Some(stream) => {
                let state = current_state(&*self.ports.store, stream).await?;
                state
                    .demand_ended
                    .is_none()
                    .then(|| state.demand_job().cloned())
                    .flatten()
            }
            None => None,
        };
        let mut done = Vec::new();
        let mut moved = false;
        for holder in self.holders(job).await? {
            if Some(&holder) == taker {
                continue;
            }
            let command = match &held {
                Some(other) if !moved && !same_job(other, job) => {
                    moved = true;
                    Command::MoveDemand { job: other.clone() }
                }
                _ => Command::EndDemand {
                    ending: DemandEnding::TakenBy {
                        runner_name: taker_name.to_owned(),
                    },
                },
            };
            let name = command.name();
            self.record(&holder, command, now).await?;
            done.push(format!("{holder}: {name}"));
        }
        Ok(done)
    }

    /// `job` was cancelled while queued: the runners standing for it are
    /// spare. Returns what was recorded.
    pub async fn job_cancelled(
        &self,
        job: &JobRef,
        now: Timestamp,
    ) -> Result<Vec<String>, HandlerError> {
        let mut done = Vec::new();
        for holder in self.holders(job).await? {
            let command = Command::EndDemand {
                ending: DemandEnding::Cancelled,
            };
            self.record(&holder, command, now).await?;
            done.push(format!("{holder}: EndDemand (cancelled)"));
        }
        Ok(done)
    }

    async fn plan(&self, now: Timestamp) -> Result<Vec<Retirement>, HandlerError> {
        let open = self.ports.store.open_streams().await?;
        let grace_ms = self.policy.retire_grace_ms;
        let floor = |name: &str| {
            self.policy
                .pools
                .iter()
                .find(|p| p.name == name)
                .map_or_else(Default::default, |p| p.floor_at(now, grace_ms))
        };
        Ok(jitr_domain::plan_retirements(
            open.heads.iter().map(|h| &h.state),
            now,
            floor,
        ))
    }

    /// Withdraws the surplus runners that have nothing launched (no GitHub
    /// call); returns them.
    pub async fn withdraw_surplus(&self, now: Timestamp) -> Result<Vec<StreamId>, HandlerError> {
        let mut withdrawn = Vec::new();
        for step in self.plan(now).await? {
            if matches!(step, Retirement::Withdraw { .. }) && self.close(&step, now).await? {
                withdrawn.push(step.stream().clone());
            }
        }
        Ok(withdrawn)
    }

    /// Closes a runner with nothing registered (`Fail` `surplus`); whether
    /// this call recorded it.
    async fn close(&self, step: &Retirement, now: Timestamp) -> Result<bool, HandlerError> {
        Ok(matches!(
            self.record(step.stream(), step.command(), now).await?,
            Dispatched::Appended { .. }
        ))
    }

    /// A stopped pool's runners launched to be parked (ADR-0022): one whose
    /// instance has run for [`PREPARE_MS`] (its image's first boot done, its
    /// volume read) is asked to stop; one EC2 says is stopped is recorded
    /// `Parked` (EC2's word is the evidence). A runner already given its JIT
    /// config is never stopped. Failures are reported and the pass goes on.
    pub async fn park_booted(&self, now: Timestamp) -> Result<Parking, HandlerError> {
        let mut parking = Parking::default();
        let open = self.ports.store.open_streams().await?;
        let cloud_now = self.ports.now(now);
        for state in open.heads.iter().map(|h| &h.state) {
            if !state.is_parking() || state.parked_at.is_some() || state.runner_name.is_some() {
                continue;
            }
            let (Some(stream), Some(instance)) = (state.stream_id(), state.instance()) else {
                continue;
            };
            // NotFound right after a launch is no evidence of anything: later.
            let described = match self.ports.compute.describe(&instance.id).await {
                Ok(Some(described)) => described,
                Ok(None) => continue,
                Err(e) => {
                    parking.errors.push(format!("runner {stream}: {e}"));
                    continue;
                }
            };
            match described.state {
                InstanceState::Stopped => {
                    let park = Command::Park {
                        instance_id: instance.id.clone(),
                    };
                    match self.record(&stream, park, now).await {
                        Ok(_) => parking.parked.push(stream),
                        Err(e) => parking.errors.push(format!("runner {stream}: {e}")),
                    }
                }
                InstanceState::Running
                    if cloud_now.millis_since(described.launched_at) >= PREPARE_MS =>
                {
                    match self.ports.compute.stop(&instance.id).await {
                        Ok(()) => parking.stopping.push(stream),
                        Err(e) => parking.errors.push(format!("runner {stream}: {e}")),
                    }
                }
                _ => {}
            }
        }
        Ok(parking)
    }

    /// Keeps each warm pool's floor (ADR-0022): asks scale-up for the warm
    /// runners that demand and the floor lack beyond the pool's supply (runners
    /// booting count), as jobs of no job (job 0) of the pool's `warm_for`
    /// repository. Their streams are named by this second and their order, so
    /// two passes in the same second ask for the same runners and the log keeps
    /// one of each. Returns the streams asked for.
    pub async fn keep_warm(&self, now: Timestamp) -> Result<Vec<StreamId>, HandlerError> {
        let warm: Vec<_> = self
            .policy
            .pools
            .iter()
            .filter(|p| p.warm.schedule.is_warm())
            .collect();
        if warm.is_empty() {
            return Ok(Vec::new());
        }
        let open = self.ports.store.open_streams().await?;
        let balances = jitr_domain::pool_balances(open.heads.iter().map(|h| &h.state));
        let mut asked = Vec::new();
        for pool in warm {
            let Some((owner, repo)) = &pool.warm.warm_for else {
                continue;
            };
            let floor = pool.warm.schedule.min_idle_at(now) as usize;
            let balance = balances.get(&pool.name).cloned().unwrap_or_default();
            let plan = if pool.warm.stopped {
                jitr_domain::plan_parking(&balance, floor)
            } else {
                jitr_domain::plan_warmth(&balance, floor)
            };
            let second = u32::try_from(now.0 / 1000).unwrap_or(u32::MAX);
            for i in 0..plan.launch {
                let attempt = second.wrapping_add(i as u32);
                let job = JobRef::warmth(owner, repo);
                let stream = match StreamId::for_job(&job, attempt) {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::error!(pool = %pool.name, error = %e, "warm_for names no repository jitr can serve");
                        break;
                    }
                };
                let message = crate::app::webhook::JobMessage {
                    delivery: format!("warm:{}:{stream}", pool.name),
                    action: "queued".into(),
                    installation: self.policy.installation_id,
                    owner: owner.clone(),
                    repo: repo.clone(),
                    job_id: job.job_id,
                    run_id: job.run_id,
                    labels: std::iter::once(crate::app::policy::SELF_HOSTED.to_owned())
                        .chain(pool.labels.iter().cloned())
                        .collect(),
                    runner_name: None,
                    conclusion: None,
                    attempt,
                    avoid_spot: Vec::new(),
                    runner_id: None,
                };
                let body = crate::app::scaleup::ScaleUpMessage::Job(message).encode();
                self.ports.scaleup_queue.publish(&body, None, &[]).await?;
                asked.push(stream);
            }
            if plan.launch > 0 {
                tracing::info!(pool = %pool.name, floor, launch = plan.launch, "warm runners asked for");
            }
            crate::app::metrics::warm_floor(now, &pool.name, floor, plan.launch);
        }
        Ok(asked)
    }

    /// One pass: every surplus runner withdrawn or retired deregister-first.
    /// A failure for one runner is reported and the pass goes on.
    pub async fn retire_surplus(&self, now: Timestamp) -> Result<RetireReport, HandlerError> {
        let mut report = RetireReport::default();
        for step in self.plan(now).await? {
            let stream = step.stream().clone();
            let done = match step {
                // A parked runner has no registration: failing it owes its
                // stopped instance's termination, as a withdrawn one's.
                Retirement::Withdraw { .. } | Retirement::Discard { .. } => {
                    self.close(&step, now).await.map(|w| {
                        if w {
                            report.withdrawn.push(stream.clone());
                        }
                    })
                }
                Retirement::Deregister { stream, .. } => {
                    self.retire(&stream, now).await.map(|kept| match kept {
                        Deregistration::Gone => report.retired.push(stream),
                        Deregistration::Busy(_) => report.kept_busy.push(stream),
                    })
                }
            };
            if let Err(e) = done {
                tracing::warn!(%stream, error = %e, "surplus runner not retired; next pass");
                report.errors.push(format!("runner {stream}: {e}"));
            }
        }
        crate::app::metrics::surplus_retired(
            now,
            report.withdrawn.len() + report.retired.len(),
            report.kept_busy.len(),
        );
        Ok(report)
    }

    /// Retires one ready surplus runner: deregistered, then failed `surplus`.
    async fn retire(
        &self,
        stream: &StreamId,
        now: Timestamp,
    ) -> Result<Deregistration, HandlerError> {
        let state = current_state(&*self.ports.store, stream).await?;
        let outcome = self.deregister(&state, now).await?;
        if outcome == Deregistration::Gone {
            let retirement = Retirement::Deregister {
                stream: stream.clone(),
                runner_name: state.runner_name.clone().unwrap_or_default(),
            };
            self.record(stream, retirement.command(), now).await?;
        }
        Ok(outcome)
    }

    /// Deletes the runner's GitHub registration before anything terminates it.
    /// GitHub refusing because the runner is busy is recorded
    /// (`DeregistrationRefused`) and returned as [`Deregistration::Busy`]; any
    /// other GitHub error is returned (try again later: the runner is not taken
    /// for idle). A runner never registered is [`Deregistration::Gone`].
    pub async fn deregister(
        &self,
        state: &RunnerState,
        now: Timestamp,
    ) -> Result<Deregistration, HandlerError> {
        let (Some(stream), Some(request)) = (state.stream_id(), state.request.as_ref()) else {
            return Ok(Deregistration::Gone);
        };
        // The name it registers under, also before `TokenMinted` is written
        // (a mint whose record was lost to a crash).
        let Some(name) = state
            .runner_name
            .clone()
            .or_else(|| state.runner_name_to_register())
        else {
            return Ok(Deregistration::Gone);
        };
        let scope = self.policy.scope_of(request);
        let installation = self.policy.installation_for(state);
        let github = &self.ports.github;
        let id = state.runner_id.filter(|_| state.runner_name.is_some());
        let find = || github.registration(installation, &scope, id, &name);
        let Some(runner) = find().await? else {
            return Ok(Deregistration::Gone);
        };
        let refusal = if runner.busy {
            format!("GitHub lists runner {name} as busy")
        } else {
            match github.delete_runner(installation, &scope, runner.id).await {
                Ok(_) => return Ok(Deregistration::Gone),
                // 422: GitHub refuses to delete a runner that runs a job. Only
                // its word that the runner is busy makes it so; any other
                // refusal is retried.
                Err(GitHubError::Invalid(message)) => match find().await? {
                    Some(again) if again.busy => message,
                    Some(_) => return Err(GitHubError::Invalid(message).into()),
                    None => return Ok(Deregistration::Gone),
                },
                Err(e) => return Err(e.into()),
            }
        };
        tracing::info!(%stream, runner = %name, reason = %refusal, "runner busy: kept");
        if state.runner_name.is_some() {
            let refuse = Command::RefuseDeregistration {
                reason: refusal.clone(),
            };
            self.record(&stream, refuse, now).await?;
        }
        Ok(Deregistration::Busy(refusal))
    }
}
