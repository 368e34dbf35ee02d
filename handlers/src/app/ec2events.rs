//! EC2's own events as evidence (issue 12): a state change to `shutting-down` or
//! `terminated` closes the runner whose instance it is, at once (evidence
//! `state-change`); `terminated` frees capacity, so an admission round is asked
//! for; a jitr instance that reaches `running` with no runner owning it is
//! terminated at once, as the reaper would (without its grace).

use std::sync::Arc;

use jitr_domain::{Command, InstanceId, TerminationEvidence, Timestamp, is_terminal};
use jitr_infra::{CommandId, Ec2Event};

use crate::app::Ports;
use crate::app::compensation::Compensation;
use crate::app::dispatch::{Dispatched, current_state, dispatch};
use crate::app::jobwatch::JobWatch;
use crate::app::outcome::{HandlerError, Outcome};
use crate::app::reaper::Reaper;
use crate::app::scaleup::ScaleUp;

/// The handler of EC2's events.
pub struct Ec2Events {
    ports: Ports,
    compensation: Arc<Compensation>,
    reaper: Arc<Reaper>,
    scaleup: Arc<ScaleUp>,
    jobs: Arc<JobWatch>,
}

impl Ec2Events {
    /// A handler over `ports`.
    pub fn new(
        ports: Ports,
        compensation: Arc<Compensation>,
        reaper: Arc<Reaper>,
        scaleup: Arc<ScaleUp>,
        jobs: Arc<JobWatch>,
    ) -> Self {
        Ec2Events {
            ports,
            compensation,
            reaper,
            scaleup,
            jobs,
        }
    }

    /// Handles one event at `now`.
    pub async fn handle(&self, event: &Ec2Event, now: Timestamp) -> Result<Outcome, HandlerError> {
        match event {
            Ec2Event::StateChange {
                instance_id, state, ..
            } => match state.as_str() {
                "shutting-down" | "terminated" => {
                    let outcome = self.gone(instance_id, state, now).await?;
                    if state == "terminated" {
                        // Its vCPUs count no more: waiting runners may fit.
                        self.scaleup.instance_terminated(instance_id, now);
                        let body = crate::app::scaleup::admit_message(
                            crate::app::scaleup::INSTANCE_TERMINATED,
                        );
                        self.ports.scaleup_queue.publish(&body, None, &[]).await?;
                    }
                    Ok(outcome)
                }
                "running" => self.running(instance_id, now).await,
                other => Ok(Outcome::Done(format!(
                    "{instance_id} {other}: nothing to do"
                ))),
            },
            Ec2Event::SpotInterruption { instance_id, .. } => {
                self.spot_interruption(instance_id, now).await
            }
            Ec2Event::Other {
                source,
                detail_type,
            } => Ok(Outcome::Done(format!("ignored: {source} / {detail_type}"))),
        }
    }

    /// Records the instance gone on the runner (or stray) it belongs to.
    async fn gone(
        &self,
        instance_id: &InstanceId,
        state: &str,
        now: Timestamp,
    ) -> Result<Outcome, HandlerError> {
        let Some(stream) = self.ports.store.stream_of_instance(instance_id).await? else {
            return Ok(Outcome::Done(format!(
                "{instance_id} {state}: no runner of this log"
            )));
        };
        let runner = current_state(&*self.ports.store, &stream).await?;
        if let (Some(instance), Some(launch), Some(request), "shutting-down") = (
            runner.instance().filter(|i| i.id == *instance_id),
            runner.launch.as_ref(),
            runner.request.as_ref(),
            state,
        ) {
            self.scaleup.instance_shutting_down(
                instance_id,
                launch.market,
                request.spec.pool.clone(),
                instance.vcpus,
                now,
            );
        }
        let stray = runner.live_strays().any(|s| s.id == *instance_id);
        let current = runner.instance().is_some_and(|i| i.id == *instance_id)
            && runner.terminated_at.is_none();
        if !stray && (!current || is_terminal(&runner)) {
            return Ok(Outcome::Done(format!(
                "{instance_id} {state}: {stream} already knows"
            )));
        }
        let confirm = Command::ConfirmTerminated {
            instance_id: Some(instance_id.clone()),
            evidence: TerminationEvidence::StateChange,
        };
        let id = CommandId::new(format!("ec2-event:{stream}:gone:{instance_id}"));
        let recorded = dispatch(&*self.ports.store, &stream, confirm, now, &id).await?;
        if matches!(recorded, Dispatched::Appended { .. }) && current {
            self.compensation.clean_up(&runner, instance_id).await;
        }
        tracing::info!(%stream, instance = %instance_id, state, "instance gone, by EC2's event");
        Ok(Outcome::Done(format!(
            "{stream}: {instance_id} {state}, recorded"
        )))
    }

    /// EC2 will reclaim a spot instance in two minutes. Before its runner's
    /// job started the runner fails (`spot-interrupted`), its instance is
    /// terminated now and the job's next attempt is requested at once on
    /// another type or market; after, the cut is recorded and nothing is
    /// relaunched (GitHub has the job in progress on that runner).
    async fn spot_interruption(
        &self,
        instance_id: &InstanceId,
        now: Timestamp,
    ) -> Result<Outcome, HandlerError> {
        let Some(stream) = self.ports.store.stream_of_instance(instance_id).await? else {
            return Ok(Outcome::Done(format!(
                "{instance_id} spot interruption: no runner of this log"
            )));
        };
        let runner = current_state(&*self.ports.store, &stream).await?;
        if runner.instance().is_none_or(|i| i.id != *instance_id) || is_terminal(&runner) {
            return Ok(Outcome::Done(format!(
                "{instance_id} spot interruption: not {stream}'s live instance"
            )));
        }
        // A registered runner may have its job already, its `in_progress`
        // webhook still on the way: GitHub is asked once, so that a job that
        // started is recorded cut, not relaunched (and runs its last two
        // minutes).
        if runner.runner_name.is_some() && runner.job_started_at.is_none() {
            if let Err(e) = self.jobs.poll(&runner, now).await {
                tracing::warn!(%stream, error = %e, "job not polled before acting on a spot interruption");
            }
        }
        let warn = Command::WarnSpotInterruption {
            instance_id: instance_id.clone(),
        };
        let id = CommandId::new(format!("ec2-event:{stream}:spot:{instance_id}"));
        let recorded = dispatch(&*self.ports.store, &stream, warn, now, &id).await?;
        // The state the dispatch answered with; a duplicate command id answers
        // none, and the log is read again.
        let state = match &recorded {
            Dispatched::Appended { state, .. }
            | Dispatched::Unchanged { state }
            | Dispatched::MovedOn { state, .. } => state.clone(),
            Dispatched::Duplicate => current_state(&*self.ports.store, &stream).await?,
        };
        let Some((_, job_started)) = state.spot_warned else {
            return Ok(Outcome::Done(format!(
                "{stream}: spot interruption of {instance_id} not recorded ({recorded:?})"
            )));
        };
        if matches!(recorded, Dispatched::Appended { .. }) {
            let pool = state
                .request
                .as_ref()
                .and_then(|r| r.spec.pool.clone())
                .unwrap_or_default();
            let instance_type = state
                .instance()
                .map(|i| i.instance_type.clone())
                .unwrap_or_default();
            crate::app::metrics::spot_interruption(now, &pool, &instance_type, job_started);
        }
        if job_started {
            tracing::warn!(%stream, instance = %instance_id, "spot interruption: the job running on it is cut");
            return Ok(Outcome::Done(format!(
                "{stream}: {instance_id} to be reclaimed; its job is cut (recorded)"
            )));
        }
        // The failure is recorded (now, or by an earlier delivery): the
        // instance goes, and the job gets its next attempt. Both are
        // idempotent: a redelivery repeats them harmlessly.
        if let Some(terminate) = jitr_domain::terminate_runner(&state, now) {
            self.compensation.handle(&terminate, now).await?;
        }
        let next = self.scaleup.request_next_attempt(&state).await?;
        tracing::warn!(%stream, instance = %instance_id, next, "spot interruption before the job started: runner failed, next attempt requested");
        Ok(Outcome::Done(format!(
            "{stream}: {instance_id} to be reclaimed before its job started; terminated{}",
            if next { ", next attempt requested" } else { "" }
        )))
    }

    /// A jitr instance that runs with no runner owning it is terminated now.
    async fn running(
        &self,
        instance_id: &InstanceId,
        now: Timestamp,
    ) -> Result<Outcome, HandlerError> {
        let Some(instance) = self.ports.compute.describe_managed(instance_id).await? else {
            // Not jitr's, or not listed yet (EC2's listing is eventually
            // consistent): the reaper looks again.
            return Ok(Outcome::Done(format!(
                "{instance_id} running: not a listed jitr instance"
            )));
        };
        let report = self.reaper.sweep_one(&instance, now).await?;
        Ok(Outcome::Done(if report.orphans_terminated.is_empty() {
            format!("{instance_id} running: owned")
        } else {
            format!("{instance_id} running with no runner owning it: terminated")
        }))
    }
}
