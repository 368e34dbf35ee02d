//! Scale-up: a queued job gets one instance and a JIT runner config.
//!
//! Requested → LaunchIntended (client token) → RunInstances (spot, then on-demand
//! on quota/capacity) → Launched → JIT config minted and handed over → TokenMinted.
//! Every step is recorded before the next starts, so a crash or a redelivery
//! resumes where the log says: an unresolved intent is resolved by its client
//! token, never launched twice. Any failure after the intent is recorded as
//! `Failed`: the projector then owes (and issues) the termination.

use std::sync::Arc;
use std::time::Duration;

use jitr_domain::{
    Command, FailureStage, JobRef, LaunchErrorClass, LaunchOutcome, Market, RunnerState, StreamId,
    Timestamp, is_terminal,
};
use jitr_infra::{CommandId, GitHubError, JitRequest, LaunchFailure, LaunchSpec, fallback_market};

use crate::dispatch::{DispatchError, Dispatched, current_state, dispatch};
use crate::policy::{RunnerPolicy, runner_name};
use crate::ports::{CrashPoint, CrashSwitch, HandlerError, Outcome, Ports};
use crate::webhook::JobMessage;

/// How long an unresolved launch intent may stay unfound by its token before it
/// is taken as never launched (DescribeInstances is eventually consistent).
const INTENT_SETTLE_MS: u64 = 30_000;

/// The scale-up handler.
pub struct ScaleUp {
    ports: Ports,
    policy: Arc<RunnerPolicy>,
    /// Crash injection for recovery tests.
    pub crash: CrashSwitch,
}

impl ScaleUp {
    /// A handler over `ports`.
    pub fn new(ports: Ports, policy: Arc<RunnerPolicy>) -> Self {
        ScaleUp {
            ports,
            policy,
            crash: CrashSwitch::default(),
        }
    }

    async fn run(
        &self,
        stream: &StreamId,
        command: Command,
        now: Timestamp,
        step: &str,
    ) -> Result<Dispatched, DispatchError> {
        let id = CommandId::new(format!("scaleup:{stream}:{step}"));
        dispatch(&*self.ports.store, stream, command, now, &id).await
    }

    async fn state(&self, stream: &StreamId) -> Result<RunnerState, HandlerError> {
        Ok(current_state(&*self.ports.store, stream).await?)
    }

    async fn fail(
        &self,
        stream: &StreamId,
        stage: FailureStage,
        reason: String,
        now: Timestamp,
    ) -> Result<(), HandlerError> {
        match self
            .run(stream, Command::Fail { stage, reason }, now, "fail")
            .await
        {
            Ok(_) | Err(DispatchError::Refused(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Handles one `queued` job, delivered for the `receives`-th time.
    pub async fn handle(
        &self,
        job: &JobMessage,
        receives: u32,
        now: Timestamp,
    ) -> Result<Outcome, HandlerError> {
        let Some(spec) = self.policy.spec_for(&job.labels) else {
            return Ok(Outcome::DeadLetter(format!(
                "no instance for labels {:?}",
                job.labels
            )));
        };
        let job_ref = JobRef {
            owner: job.owner.clone(),
            repo: job.repo.clone(),
            job_id: job.job_id,
            run_id: job.run_id,
        };
        let stream = StreamId::for_job(&job_ref, job.attempt);
        let request = Command::Request {
            job: job_ref,
            attempt: job.attempt,
            labels: job.labels.clone(),
            spec: spec.clone(),
            deadlines: self.policy.deadlines,
        };
        match self.run(&stream, request, now, "request").await {
            Ok(_) => {}
            Err(DispatchError::Refused(e)) => return Ok(Outcome::Done(format!("{stream}: {e}"))),
            Err(e) => return Err(e.into()),
        }

        let mut next_market = Some(Market::Spot);
        loop {
            let state = self.state(&stream).await?;
            if is_terminal(&state) || state.failure.is_some() || state.job_completed_at.is_some() {
                return Ok(Outcome::Done(format!("{stream} is {}", state.status())));
            }
            let launch = state.launch.clone();
            match launch.as_ref().map(|l| &l.outcome) {
                Some(LaunchOutcome::Launched(_)) => break,
                Some(LaunchOutcome::Pending) => {
                    let launch = launch.expect("pending launch");
                    // A crash or a lost answer left the intent open: resolve it by
                    // its token, never by launching again.
                    match self
                        .ports
                        .compute
                        .find_by_client_token(&launch.client_token)
                        .await?
                    {
                        Some(found) => {
                            let record = Command::RecordLaunch {
                                client_token: launch.client_token.clone(),
                                instance_id: found.instance_id,
                                instance_type: spec.instance_type.clone(),
                                vcpus: spec.vcpus,
                            };
                            self.run(
                                &stream,
                                record,
                                now,
                                &format!("found-{}", launch.client_token),
                            )
                            .await?;
                        }
                        None if now.millis_since(launch.intended_at) < INTENT_SETTLE_MS => {
                            return Ok(Outcome::RetryAfter(
                                Duration::from_secs(10),
                                format!("{stream}: launch {} unresolved", launch.client_token),
                            ));
                        }
                        None => {
                            let reject = Command::RejectLaunch {
                                client_token: launch.client_token.clone(),
                                code: "NotLaunched".into(),
                                class: LaunchErrorClass::Unknown,
                            };
                            self.run(
                                &stream,
                                reject,
                                now,
                                &format!("unfound-{}", launch.client_token),
                            )
                            .await?;
                        }
                    }
                }
                None | Some(LaunchOutcome::Rejected { .. }) => {
                    let Some(market) = next_market else {
                        return self
                            .give_up_or_back_off(&stream, &state, receives, now)
                            .await;
                    };
                    let intended = self
                        .run(
                            &stream,
                            Command::IntendLaunch { market },
                            now,
                            &format!("intend-{}", state.launch_attempts + 1),
                        )
                        .await;
                    let state = match intended {
                        Ok(Dispatched::Appended { state, .. }) => state,
                        // Another delivery of the same job got there first: follow
                        // the log instead of launching.
                        Ok(_) | Err(DispatchError::Refused(_)) => continue,
                        Err(e) => return Err(e.into()),
                    };
                    let token = state.pending_launch().cloned().expect("intent written");
                    self.crash.check(CrashPoint::AfterLaunchIntended)?;
                    let launch_spec = LaunchSpec {
                        stream: stream.clone(),
                        client_token: token.clone(),
                        market,
                        instance_type: spec.instance_type.clone(),
                        vcpus: spec.vcpus,
                        image: spec.image.clone(),
                        user_data: None,
                    };
                    match self.ports.compute.launch(&launch_spec).await {
                        Ok(launched) => {
                            crate::metrics::launch(now, market.as_str(), "ok");
                            self.crash.check(CrashPoint::AfterRunInstances)?;
                            let record = Command::RecordLaunch {
                                client_token: token.clone(),
                                instance_id: launched.instance_id,
                                instance_type: launched.instance_type,
                                vcpus: launched.vcpus,
                            };
                            self.run(&stream, record, now, &format!("launched-{token}"))
                                .await?;
                            self.crash.check(CrashPoint::AfterLaunched)?;
                        }
                        Err(LaunchFailure::Rejected(e)) => {
                            tracing::info!(%stream, market = market.as_str(), code = %e.code, "launch refused");
                            crate::metrics::launch(
                                now,
                                market.as_str(),
                                &format!("{:?}", e.class).to_lowercase(),
                            );
                            let reject = Command::RejectLaunch {
                                client_token: token.clone(),
                                code: e.code.clone(),
                                class: e.class,
                            };
                            self.run(&stream, reject, now, &format!("rejected-{token}"))
                                .await?;
                            if e.class == LaunchErrorClass::InvalidRequest {
                                let reason = format!("launch refused: {e}");
                                self.fail(&stream, FailureStage::Launch, reason.clone(), now)
                                    .await?;
                                return Ok(Outcome::DeadLetter(format!("{stream}: {reason}")));
                            }
                            next_market = fallback_market(market, &e);
                        }
                        Err(LaunchFailure::Unknown(e)) => {
                            // The instance may exist: the next delivery resolves the
                            // intent by its token.
                            return Ok(Outcome::RetryAfter(
                                Duration::from_secs(5),
                                format!("{stream}: launch outcome unknown: {e}"),
                            ));
                        }
                    }
                }
            }
        }
        self.mint(&stream, job, now).await
    }

    async fn give_up_or_back_off(
        &self,
        stream: &StreamId,
        state: &RunnerState,
        receives: u32,
        now: Timestamp,
    ) -> Result<Outcome, HandlerError> {
        let last = match state.launch.as_ref().map(|l| &l.outcome) {
            Some(LaunchOutcome::Rejected { code, .. }) => code.clone(),
            _ => "no launch".into(),
        };
        if receives >= self.policy.max_launch_attempts {
            let reason =
                format!("no capacity after {receives} attempts (last: {last}); giving the job up");
            self.fail(stream, FailureStage::Launch, reason.clone(), now)
                .await?;
            return Ok(Outcome::DeadLetter(format!("{stream}: {reason}")));
        }
        Ok(Outcome::RetryAfter(
            self.policy.launch_backoff(receives),
            format!("{stream}: spot and on-demand refused (last: {last})"),
        ))
    }

    /// Mints the JIT config, hands it over, records `TokenMinted`.
    async fn mint(
        &self,
        stream: &StreamId,
        job: &JobMessage,
        now: Timestamp,
    ) -> Result<Outcome, HandlerError> {
        let state = self.state(stream).await?;
        if state.runner_name.is_some() {
            return Ok(Outcome::Done(format!("{stream} is {}", state.status())));
        }
        let Some(instance) = state.instance().cloned() else {
            return Ok(Outcome::Done(format!("{stream} has no instance")));
        };
        let name = runner_name(stream, job.job_id);
        let request = JitRequest {
            scope: self.policy.scope_for(&job.owner, &job.repo),
            name: name.clone(),
            runner_group_id: self.policy.runner_group_id,
            labels: job.labels.clone(),
            work_folder: self.policy.work_folder.clone(),
        };
        let mut minted = self
            .ports
            .github
            .generate_jit_config(job.installation, &request)
            .await;
        if let Err(GitHubError::RunnerNameExists(_)) = &minted {
            // A crash after minting left the registration behind: replace it.
            if let Ok(runners) = self
                .ports
                .github
                .list_runners(job.installation, &request.scope)
                .await
            {
                for runner in runners.iter().filter(|r| r.name == name) {
                    let _ = self
                        .ports
                        .github
                        .delete_runner(job.installation, &request.scope, runner.id)
                        .await;
                }
            }
            minted = self
                .ports
                .github
                .generate_jit_config(job.installation, &request)
                .await;
        }
        let jit = match minted {
            Ok(jit) => jit,
            Err(e) => {
                let reason = format!("JIT config not minted: {e}");
                self.fail(stream, FailureStage::Token, reason.clone(), now)
                    .await?;
                return Ok(Outcome::Done(format!(
                    "{stream}: {reason}; termination owed"
                )));
            }
        };
        if let Err(e) = self
            .ports
            .secrets
            .put_jit_config(&instance.id, &jit.config)
            .await
        {
            let reason = format!("JIT config not handed over: {e}");
            self.fail(stream, FailureStage::Token, reason.clone(), now)
                .await?;
            return Ok(Outcome::Done(format!(
                "{stream}: {reason}; termination owed"
            )));
        }
        match self
            .run(
                stream,
                Command::RecordToken { runner_name: name },
                now,
                "token",
            )
            .await
        {
            Ok(_) => {}
            Err(DispatchError::Refused(e)) => {
                // Failed or terminated meanwhile: the config must not be used.
                let _ = self.ports.secrets.delete_jit_config(&instance.id).await;
                return Ok(Outcome::Done(format!("{stream}: {e}")));
            }
            Err(e) => return Err(e.into()),
        }
        self.crash.check(CrashPoint::AfterTokenMinted)?;
        Ok(Outcome::Done(format!(
            "{stream}: runner {} on {}",
            jit.name, instance.id
        )))
    }
}
