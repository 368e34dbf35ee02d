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
use crate::app::outcome::{HandlerError, Outcome};
use crate::app::reaper::Reaper;
use crate::app::scaleup::ScaleUp;

/// The handler of EC2's events.
pub struct Ec2Events {
    ports: Ports,
    compensation: Arc<Compensation>,
    reaper: Arc<Reaper>,
    scaleup: Arc<ScaleUp>,
}

impl Ec2Events {
    /// A handler over `ports`.
    pub fn new(
        ports: Ports,
        compensation: Arc<Compensation>,
        reaper: Arc<Reaper>,
        scaleup: Arc<ScaleUp>,
    ) -> Self {
        Ec2Events {
            ports,
            compensation,
            reaper,
            scaleup,
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
            Ec2Event::SpotInterruption { instance_id, .. } => Ok(Outcome::Done(format!(
                "{instance_id}: spot interruption warning (not acted on yet)"
            ))),
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

    /// A jitr instance that runs with no runner owning it is terminated now.
    async fn running(
        &self,
        instance_id: &InstanceId,
        now: Timestamp,
    ) -> Result<Outcome, HandlerError> {
        let listed = self.ports.compute.list_managed().await?;
        let Some(instance) = listed.into_iter().find(|m| m.instance_id == *instance_id) else {
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
