//! The rebalancer: GitHub's queued jobs against jitr's open runners. A queued job
//! with no runner that can still take it (its webhook was lost, or its runner
//! failed) gets a new runner attempt; the drift is reported.

use std::collections::HashMap;
use std::sync::Arc;

use jitr_domain::{JobRef, StreamId, Timestamp};
use jitr_infra::{GitHubError, QueueError};
use serde::Serialize;
use thiserror::Error;

use crate::app::Ports;
use crate::app::policy::RunnerPolicy;
use crate::app::webhook::JobMessage;

/// Attempts probed per job when looking for its latest runner.
const MAX_ATTEMPTS: u32 = 16;

/// What one rebalancer pass found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RebalanceReport {
    /// Queued jobs jitr serves.
    pub queued_jobs: usize,
    /// Queued jobs with no runner that can take them, and the attempt requested.
    pub requested: Vec<StreamId>,
    /// Queued jobs skipped because their repository's name cannot be a stream id.
    pub skipped: usize,
    /// Open runner heads that could not be read (their jobs may be requested
    /// again: an unreadable runner serves nobody).
    pub unreadable_heads: usize,
}

/// Why a pass stopped.
#[derive(Debug, Error)]
pub enum RebalanceError {
    /// GitHub did not answer.
    #[error(transparent)]
    GitHub(#[from] GitHubError),
    /// The log failed.
    #[error(transparent)]
    Store(#[from] jitr_infra::StoreError),
    /// The scale-up queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// The rebalancer.
pub struct Rebalancer {
    ports: Ports,
    policy: Arc<RunnerPolicy>,
}

impl Rebalancer {
    /// A rebalancer requesting runners on the scale-up queue of `ports`.
    pub fn new(ports: Ports, policy: Arc<RunnerPolicy>) -> Self {
        Rebalancer { ports, policy }
    }

    /// One pass at `now`.
    pub async fn tick(&self, now: Timestamp) -> Result<RebalanceReport, RebalanceError> {
        let mut serving: HashMap<(String, String, u64), bool> = HashMap::new();
        let open = self.ports.store.open_streams().await?;
        let mut report = RebalanceReport {
            unreadable_heads: open.unreadable.len(),
            ..RebalanceReport::default()
        };
        // Every installation jitr serves runners for, and the default one.
        let mut installations = vec![self.policy.installation_id];
        for head in &open.heads {
            let installation = self.policy.installation_for(&head.state);
            if !installations.contains(&installation) {
                installations.push(installation);
            }
        }
        let mut jobs = Vec::new();
        for installation in installations {
            let queued = self.ports.github.list_queued_jobs(installation).await?;
            jobs.extend(queued.into_iter().map(|job| (installation, job)));
        }
        for head in open.heads {
            if let Some(request) = &head.state.request {
                let able = head.state.wants_instance();
                let key = (
                    request.job.owner.clone(),
                    request.job.repo.clone(),
                    request.job.job_id,
                );
                *serving.entry(key).or_default() |= able;
            }
        }
        for (installation, job) in jobs {
            if !self.policy.allows(&job.owner, &job.repo)
                || self.policy.spec_for(&job.labels).is_none()
            {
                continue;
            }
            report.queued_jobs += 1;
            let key = (job.owner.clone(), job.repo.clone(), job.job_id);
            if serving.get(&key).copied().unwrap_or(false) {
                continue;
            }
            let job_ref = JobRef {
                owner: job.owner.clone(),
                repo: job.repo.clone(),
                job_id: job.job_id,
                run_id: job.run_id,
            };
            let stream_of = |attempt| StreamId::for_job(&job_ref, attempt);
            if let Err(e) = stream_of(1) {
                tracing::warn!(owner = %job.owner, repo = %job.repo, job = job.job_id, error = %e, "queued job of a repository jitr cannot name; skipped");
                report.skipped += 1;
                continue;
            }
            let mut attempt = 1;
            while attempt < MAX_ATTEMPTS
                && self
                    .ports
                    .store
                    .head(&stream_of(attempt).expect("validated above"))
                    .await?
                    .is_some_and(|h| !h.open || h.state.failure.is_some())
            {
                attempt += 1;
            }
            let stream = stream_of(attempt).expect("validated above");
            let message = JobMessage {
                delivery: format!("rebalancer:{stream}:{}", now.0),
                action: "queued".into(),
                installation,
                owner: job.owner,
                repo: job.repo,
                job_id: job.job_id,
                run_id: job.run_id,
                labels: job.labels,
                runner_name: None,
                conclusion: None,
                attempt,
            };
            let body = serde_json::to_string(&message).expect("a JobMessage serialises");
            self.ports
                .scaleup_queue
                .publish(&body, None, &[("delivery", &message.delivery)])
                .await?;
            tracing::warn!(%stream, "queued job without a runner: requesting one");
            report.requested.push(stream);
        }
        crate::app::metrics::drift(now, report.requested.len());
        Ok(report)
    }
}
