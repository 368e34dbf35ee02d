//! Compensation: a `TerminateRunner` command becomes a terminated instance and a
//! `Terminated` event; the JIT config and the GitHub registration go with it.
//! Idempotent: repeating it (the bus is at-least-once) changes nothing.

use std::sync::Arc;
use std::time::Duration;

use jitr_domain::{
    Command, InstanceId, InstanceVerdict, IntentResolution, RunnerState, Stray, TerminateRunner,
    TerminationEvidence, Timestamp, is_terminal,
};
use jitr_infra::CommandId;

use crate::app::Ports;
use crate::app::dispatch::{current_state, dispatch};
use crate::app::jobwatch::JobWatch;
use crate::app::outcome::{CrashPoint, CrashSwitch, HandlerError, Outcome};
use crate::app::policy::RunnerPolicy;
use crate::app::supply::{Deregistration, Supply};

/// Whether the runner's registration is deleted before it is failed and
/// terminated: registered, no job taken, and ended for being idle (a boot or
/// stale deadline, recorded or missed now).
fn deregister_first(state: &RunnerState, now: Timestamp) -> bool {
    let stage = state
        .failure
        .as_ref()
        .map(|f| f.stage)
        .or_else(|| jitr_domain::missed_deadline(state, now).map(|m| m.stage));
    state.runner_name.is_some()
        && !state.took_job()
        && stage.is_some_and(|s| s.is_idle_runners() && s != jitr_domain::FailureStage::Surplus)
}

/// The compensation handler.
pub struct Compensation {
    ports: Ports,
    policy: Arc<RunnerPolicy>,
    jobs: Arc<JobWatch>,
    supply: Arc<Supply>,
    /// Crash injection for recovery tests.
    pub crash: CrashSwitch,
}

impl Compensation {
    /// A handler over `ports`.
    pub fn new(
        ports: Ports,
        policy: Arc<RunnerPolicy>,
        jobs: Arc<JobWatch>,
        supply: Arc<Supply>,
    ) -> Self {
        Compensation {
            ports,
            policy,
            jobs,
            supply,
            crash: CrashSwitch::default(),
        }
    }

    async fn record(
        &self,
        command: &TerminateRunner,
        what: Command,
        now: Timestamp,
    ) -> Result<(), HandlerError> {
        let id = CommandId::new(format!(
            "compensation:{}:{}:{}",
            command.stream,
            what.name(),
            command.owed_since.0
        ));
        dispatch(&*self.ports.store, &command.stream, what, now, &id).await?;
        Ok(())
    }

    /// Terminates a stray instance of the runner and, on evidence, records it gone.
    async fn stray(
        &self,
        command: &TerminateRunner,
        state: &RunnerState,
        stray: Stray,
        now: Timestamp,
    ) -> Result<Outcome, HandlerError> {
        let stream = &command.stream;
        if stray.gone.is_some() {
            return Ok(Outcome::Done(format!(
                "{stream}: stray {} is gone",
                stray.id
            )));
        }
        self.ports.compute.terminate(&stray.id).await?;
        let evidence = match self
            .ports
            .judge_by_id(&stray.id, stray.recorded_at, state, now)
            .await?
        {
            InstanceVerdict::Gone(evidence) => evidence,
            InstanceVerdict::Alive | InstanceVerdict::Unknown => {
                return Ok(Outcome::RetryAfter(
                    Duration::from_secs(10),
                    format!("{stream}: stray {} not seen gone yet", stray.id),
                ));
            }
        };
        let confirm = Command::ConfirmTerminated {
            instance_id: Some(stray.id.clone()),
            evidence,
        };
        let id = CommandId::new(format!("compensation:{stream}:stray:{}", stray.id));
        let now = self.ports.now(now);
        dispatch(&*self.ports.store, stream, confirm, now, &id).await?;
        if let Err(e) = self.ports.secrets.delete_jit_config(&stray.id).await {
            tracing::warn!(%stream, error = %e, "JIT config not deleted");
        }
        Ok(Outcome::Done(format!(
            "{stream}: stray {} terminated",
            stray.id
        )))
    }

    /// What goes with a runner's instance: its JIT config parameter and its
    /// GitHub registration. Failures are logged (the reaper's registration sweep
    /// removes a registration left behind).
    pub async fn clean_up(&self, state: &RunnerState, instance: &InstanceId) {
        let stream = state.stream_id();
        if let Err(e) = self.ports.secrets.delete_jit_config(instance).await {
            tracing::warn!(?stream, error = %e, "JIT config not deleted");
        }
        if let (Some(name), Some(request)) = (&state.runner_name, &state.request) {
            let scope = self.policy.scope_of(request);
            let installation = self.policy.installation_for(state);
            let github = &self.ports.github;
            // By the id GitHub gave it (one request; a runner that ran its job
            // is gone already), else by its name.
            let id = match state.runner_id {
                Some(id) => Some(id),
                None => github
                    .find_runner(installation, &scope, name)
                    .await
                    .ok()
                    .flatten()
                    .map(|r| r.id),
            };
            if let Some(id) = id {
                let _ = github.delete_runner(installation, &scope, id).await;
            }
        }
    }

    /// Terminates the runner's instance and records it.
    pub async fn handle(
        &self,
        command: &TerminateRunner,
        now: Timestamp,
    ) -> Result<Outcome, HandlerError> {
        let stream = &command.stream;
        // Deadlines and the consistency window are judged on the cloud's
        // clock, whatever this host's says (ADR-0021).
        let now = self.ports.now(now);
        let Some(head) = self.ports.store.head(stream).await? else {
            return Ok(Outcome::Done(format!("{stream}: unknown stream")));
        };
        if let Some(stray) = command
            .instance_id
            .as_ref()
            .and_then(|id| head.state.strays.iter().find(|s| s.id == *id))
        {
            return self.stray(command, &head.state, stray.clone(), now).await;
        }
        if is_terminal(&head.state) {
            return Ok(Outcome::Done(format!(
                "{stream} is already {}",
                head.status
            )));
        }
        let mut state = head.state;
        if state.pending_launch().is_some() {
            // The launch's outcome was never recorded: find it by its token.
            match self.ports.resolve_pending_launch(&state, now).await? {
                Some(IntentResolution::Launched(record)) => {
                    self.record(command, record, now).await?;
                }
                Some(IntentResolution::LookAgain { after_ms }) => {
                    return Ok(Outcome::RetryAfter(
                        Duration::from_millis(after_ms),
                        format!("{stream}: launch unresolved, looking again"),
                    ));
                }
                Some(IntentResolution::NeverLaunched(settle)) => {
                    self.record(command, settle, now).await?;
                    return Ok(Outcome::Done(format!("{stream}: never launched")));
                }
                None => {}
            }
            state = current_state(&*self.ports.store, stream).await?;
        }
        if state.termination_requested.is_none() {
            // A deadline termination waits for GitHub's word on the job: its
            // `in_progress` or `completed` webhook may have been lost.
            state = match self.jobs.before_deadline(state, now).await {
                Ok(state) => state,
                Err(e) => {
                    return Ok(Outcome::RetryAfter(
                        Duration::from_secs(30),
                        format!(
                            "{stream}: deadline passed, GitHub not answering the job poll: {e}"
                        ),
                    ));
                }
            };
            // Re-validated against the head now, whatever decided it (a
            // deadline, a redelivery, a redrive): a runner that took a job
            // since is owed nothing, and the command is moot.
            let operator = command.reason == jitr_domain::TerminationReason::Operator;
            if !operator && jitr_domain::terminate_runner(&state, now).is_none() {
                return Ok(Outcome::Done(format!(
                    "{stream}: moot: no termination owed, the runner is {}",
                    state.status()
                )));
            }
            // Deregister first: an idle runner's registration is deleted
            // before it is failed (an operator's request too, whatever the
            // runner does); GitHub refusing because it is busy means it took a
            // job, and it is kept.
            if deregister_first(&state, now) || (operator && state.runner_name.is_some()) {
                match self.supply.deregister(&state, now).await {
                    Ok(Deregistration::Gone) => {}
                    Ok(Deregistration::Busy(why)) => {
                        return Ok(Outcome::Done(format!("{stream}: moot: kept, {why}")));
                    }
                    Err(e) => {
                        return Ok(Outcome::RetryAfter(
                            Duration::from_secs(30),
                            format!("{stream}: registration not deleted yet: {e}"),
                        ));
                    }
                }
            }
            // The deadline stands: record it missed (the projector leaves the
            // deadlines GitHub is asked about to this handler).
            let mut failed = false;
            for fail in jitr_domain::resume(&state, now) {
                if let Command::Fail { .. } = fail {
                    self.record(command, fail, now).await?;
                    failed = true;
                }
            }
            if failed {
                state = current_state(&*self.ports.store, stream).await?;
            }
        }
        if state.termination_requested.is_none() {
            self.record(
                command,
                Command::Terminate {
                    reason: command.reason,
                },
                now,
            )
            .await?;
        }
        let Some(instance) = state.instance().cloned() else {
            // Every launch was refused by RunInstances: nothing was started.
            self.record(
                command,
                Command::ConfirmTerminated {
                    instance_id: None,
                    evidence: TerminationEvidence::NothingLaunched,
                },
                now,
            )
            .await?;
            return Ok(Outcome::Done(format!("{stream}: no instance")));
        };
        self.ports.compute.terminate(&instance.id).await?;
        self.crash.check(CrashPoint::AfterTerminateInstances)?;
        // Shutting down is irreversible: the instance is gone for jitr's purposes.
        // NotFound right after a launch is no evidence: EC2 is eventually
        // consistent, and a running instance can be NotFound by id (and a
        // terminate call a no-op) until the consistency window has passed.
        let age_s = now.millis_since(instance.launched_at) / 1000;
        let evidence = match self.ports.judge_instance(&state, now).await? {
            Some(InstanceVerdict::Gone(evidence)) => evidence,
            Some(InstanceVerdict::Alive) => {
                return Ok(Outcome::RetryAfter(
                    Duration::from_secs(5),
                    format!("{stream}: {} not shutting down yet", instance.id),
                ));
            }
            Some(InstanceVerdict::Unknown) | None => {
                return Ok(Outcome::RetryAfter(
                    Duration::from_secs(10),
                    format!(
                        "{stream}: {} not found {age_s} s after its launch: no evidence yet",
                        instance.id
                    ),
                ));
            }
        };
        // The evidence was judged on the clock as EC2 answered: recorded on it.
        let now = self.ports.now(now);
        self.record(
            command,
            Command::ConfirmTerminated {
                instance_id: Some(instance.id.clone()),
                evidence,
            },
            now,
        )
        .await?;
        crate::app::metrics::compensation_latency(now, now.millis_since(command.owed_since));
        self.clean_up(&state, &instance.id).await;
        Ok(Outcome::Done(format!(
            "{stream}: {} terminated",
            instance.id
        )))
    }
}
