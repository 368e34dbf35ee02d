//! The rebalancer: GitHub's queued jobs against jitr's open runners. A queued job
//! with no runner that can still take it (its webhook was lost, or its runner
//! failed) gets a new runner attempt; the drift is reported.
//!
//! It looks only at repositories with a jitr runner in the last 24 hours and the
//! allowlisted ones, least recently looked at first, within the background
//! request budget ([`RequestBudget`]): a repository the budget does not reach
//! this pass comes first in the next.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jitr_domain::{JobRef, StreamId, Timestamp};
use jitr_infra::{GitHubError, QueueError, QueuedJob};
use serde::Serialize;
use thiserror::Error;

use crate::app::Ports;
use crate::app::budget::RequestBudget;
use crate::app::policy::RunnerPolicy;
use crate::app::webhook::JobMessage;

/// Attempts probed per job when looking for its latest runner.
const MAX_ATTEMPTS: u32 = 16;

/// A repository jitr looks at for queued jobs, through one installation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Repository {
    installation: u64,
    owner: String,
    repo: String,
}

/// When a repository was last seen with a runner, and last looked at.
#[derive(Clone, Copy, Debug)]
struct Seen {
    runner_at: Timestamp,
    checked_at: Option<Timestamp>,
}

/// How long a repository is looked at after its last jitr runner.
pub const RECENT_MS: u64 = 24 * 3_600_000;

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
    /// Repositories looked at: a jitr runner in the last 24 hours, or allowlisted.
    pub repositories: usize,
    /// Of those, looked at in full this pass.
    pub repositories_checked: usize,
    /// Of those, left for a later pass: the budget was spent (they come first then).
    pub repositories_deferred: usize,
    /// GitHub requests this pass sent.
    pub requests: u64,
    /// Background requests left this hour, per installation, after the pass.
    pub budget_left: std::collections::BTreeMap<u64, u64>,
    /// GitHub errors for one repository; the pass went on with the others.
    pub errors: Vec<String>,
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
    budget: Arc<RequestBudget>,
    /// Repositories with a recent jitr runner (this process's memory; the
    /// allowlist and open runners are read again each pass).
    repositories: Mutex<HashMap<Repository, Seen>>,
}

impl Rebalancer {
    /// A rebalancer requesting runners on the scale-up queue of `ports`, within
    /// `budget`.
    pub fn new(ports: Ports, policy: Arc<RunnerPolicy>, budget: Arc<RequestBudget>) -> Self {
        Rebalancer {
            ports,
            policy,
            budget,
            repositories: Mutex::default(),
        }
    }

    fn repositories(&self) -> std::sync::MutexGuard<'_, HashMap<Repository, Seen>> {
        self.repositories.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The repositories to look at, least recently looked at first: those with
    /// a jitr runner now or in the last [`RECENT_MS`], and the allowlisted ones
    /// (through the installation their runners came through, else the default).
    fn to_look_at(&self, open: &[jitr_infra::StreamHead], now: Timestamp) -> Vec<Repository> {
        let mut known = self.repositories();
        for head in open {
            if let Some(request) = &head.state.request {
                let key = Repository {
                    installation: self.policy.installation_for(&head.state),
                    owner: request.job.owner.clone(),
                    repo: request.job.repo.clone(),
                };
                known
                    .entry(key)
                    .and_modify(|s| s.runner_at = now)
                    .or_insert(Seen {
                        runner_at: now,
                        checked_at: None,
                    });
            }
        }
        known.retain(|r, s| {
            now.millis_since(s.runner_at) < RECENT_MS
                || self.policy.allows_exactly(&r.owner, &r.repo)
        });
        for entry in &self.policy.allowlist {
            let Some((owner, repo)) = entry.split_once('/') else {
                continue;
            };
            let listed = known
                .keys()
                .any(|r| r.owner.eq_ignore_ascii_case(owner) && r.repo.eq_ignore_ascii_case(repo));
            if !listed {
                known.insert(
                    Repository {
                        installation: self.policy.installation_id,
                        owner: owner.to_owned(),
                        repo: repo.to_owned(),
                    },
                    Seen {
                        runner_at: Timestamp(0),
                        checked_at: None,
                    },
                );
            }
        }
        let mut order: Vec<(Option<Timestamp>, Repository)> = known
            .iter()
            .filter(|(r, _)| self.policy.allows(&r.owner, &r.repo))
            .map(|(r, s)| (s.checked_at, r.clone()))
            .collect();
        order.sort();
        order.into_iter().map(|(_, r)| r).collect()
    }

    /// The queued jobs of one repository, within the budget; `None` when the
    /// budget ran out before the repository was looked at in full.
    async fn queued_in(
        &self,
        repository: &Repository,
        now: Timestamp,
    ) -> Option<Result<Vec<QueuedJob>, GitHubError>> {
        let Repository {
            installation,
            owner,
            repo,
        } = repository;
        let github = &self.ports.github;
        let runs = match self
            .budget
            .spend(
                *installation,
                now,
                github.queued_runs(*installation, owner, repo),
            )
            .await?
        {
            Ok(runs) => runs,
            Err(e) => return Some(Err(e)),
        };
        let mut jobs = Vec::new();
        for run in runs {
            let call = github.queued_jobs(*installation, owner, repo, run);
            match self.budget.spend(*installation, now, call).await? {
                Ok(found) => jobs.extend(found),
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(jobs))
    }

    /// One pass at `now`.
    pub async fn tick(&self, now: Timestamp) -> Result<RebalanceReport, RebalanceError> {
        let mut serving: HashMap<(String, String, u64), bool> = HashMap::new();
        let open = self.ports.store.open_streams().await?;
        let mut report = RebalanceReport {
            unreadable_heads: open.unreadable.len(),
            ..RebalanceReport::default()
        };
        let repositories = self.to_look_at(&open.heads, now);
        report.repositories = repositories.len();
        let sent_before: HashMap<u64, u64> = repositories
            .iter()
            .map(|r| (r.installation, self.ports.github.usage(r.installation).sent))
            .collect();
        let mut jobs = Vec::new();
        let mut limited: Vec<u64> = Vec::new();
        for repository in &repositories {
            if limited.contains(&repository.installation) {
                report.repositories_deferred += 1;
                continue;
            }
            match self.queued_in(repository, now).await {
                None => {
                    report.repositories_deferred += 1;
                    limited.push(repository.installation);
                }
                Some(Ok(found)) => {
                    report.repositories_checked += 1;
                    if let Some(seen) = self.repositories().get_mut(repository) {
                        seen.checked_at = Some(now);
                    }
                    jobs.extend(found.into_iter().map(|job| (repository.installation, job)));
                }
                Some(Err(e)) => {
                    tracing::warn!(owner = %repository.owner, repo = %repository.repo, error = %e, "rebalancer: queued jobs not read");
                    report
                        .errors
                        .push(format!("{}/{}: {e}", repository.owner, repository.repo));
                    if matches!(e, GitHubError::RateLimited { .. }) {
                        limited.push(repository.installation);
                    }
                }
            }
        }
        for (installation, before) in &sent_before {
            let sent = self.ports.github.usage(*installation).sent;
            report.requests += sent.saturating_sub(*before);
            report
                .budget_left
                .insert(*installation, self.budget.left(*installation, now));
        }
        for head in open.heads {
            // A job is served by the runner standing for it (launched for it,
            // or moved to it: ADR-0017), or by the runner running it.
            let state = &head.state;
            let stands = state
                .demand_job()
                .filter(|_| state.demand_queued() && state.wants_instance());
            for job in stands.into_iter().chain(state.job_taken()) {
                let key = (job.owner.clone(), job.repo.clone(), job.job_id);
                *serving.entry(key).or_default() = true;
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
                    .is_some_and(|h| {
                        // An attempt that no longer stands for the job (it
                        // took another, or the job moved: ADR-0017) is done.
                        !h.open
                            || h.state.failure.is_some()
                            || !h.state.demand_queued()
                            || h.state.demand_job().map(|j| j.job_id) != Some(job.job_id)
                    })
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
                avoid_spot: Vec::new(),
                runner_id: None,
            };
            let body = crate::app::scaleup::ScaleUpMessage::Job(message.clone()).encode();
            self.ports
                .scaleup_queue
                .publish(&body, None, &[("delivery", &message.delivery)])
                .await?;
            tracing::warn!(%stream, "queued job without a runner: requesting one");
            report.requested.push(stream);
        }
        crate::app::metrics::drift(now, report.requested.len());
        crate::app::metrics::github_requests(now, "rebalancer", report.requests);
        for (installation, left) in &report.budget_left {
            crate::app::metrics::github_budget_left(now, *installation, *left);
        }
        Ok(report)
    }
}
