//! Fault injection around a real GitHub adapter: behaviours GitHub documents
//! that the stand-in does not play on its own.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::ports::{
    GitHub, GitHubError, JitRequest, JitRunner, JobState, QueuedJob, RequestUsage, Runner,
    RunnerGroup, RunnerScope,
};

/// One injectable GitHub fault (until cleared).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GitHubFault {
    /// Every job read answers 404: jitr learns nothing of jobs from GitHub (the
    /// ablation of job polls).
    JobsUnknown,
    /// Queued-run listings never answer: a hung connection, or a rate limit the
    /// client waits out.
    ListingsHang,
    /// Runner deletions answer 502 (a GitHub server error: GitHub's REST
    /// documentation lists 5xx answers as retryable).
    DeletionsFail,
}

/// A GitHub adapter with faults injected in front of it.
pub struct FaultyGitHub {
    inner: Arc<dyn GitHub>,
    faults: Mutex<Vec<GitHubFault>>,
}

impl FaultyGitHub {
    /// `inner`, with no fault yet.
    pub fn new(inner: Arc<dyn GitHub>) -> Self {
        FaultyGitHub {
            inner,
            faults: Mutex::default(),
        }
    }

    /// Injects `fault` until cleared.
    pub fn inject(&self, fault: GitHubFault) {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(fault);
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn has(&self, fault: GitHubFault) -> bool {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&fault)
    }
}

#[async_trait]
impl GitHub for FaultyGitHub {
    async fn generate_jit_config(
        &self,
        installation: u64,
        request: &JitRequest,
    ) -> Result<JitRunner, GitHubError> {
        self.inner.generate_jit_config(installation, request).await
    }

    async fn delete_runner(
        &self,
        installation: u64,
        scope: &RunnerScope,
        runner_id: u64,
    ) -> Result<bool, GitHubError> {
        if self.has(GitHubFault::DeletionsFail) {
            return Err(GitHubError::Server {
                status: 502,
                body: "Bad Gateway (injected)".into(),
            });
        }
        self.inner
            .delete_runner(installation, scope, runner_id)
            .await
    }

    async fn list_runners(
        &self,
        installation: u64,
        scope: &RunnerScope,
    ) -> Result<Vec<Runner>, GitHubError> {
        self.inner.list_runners(installation, scope).await
    }

    async fn runner_groups(
        &self,
        installation: u64,
        org: &str,
    ) -> Result<Vec<RunnerGroup>, GitHubError> {
        self.inner.runner_groups(installation, org).await
    }

    async fn queued_runs(
        &self,
        installation: u64,
        owner: &str,
        repo: &str,
    ) -> Result<Vec<u64>, GitHubError> {
        if self.has(GitHubFault::ListingsHang) {
            std::future::pending::<()>().await;
        }
        self.inner.queued_runs(installation, owner, repo).await
    }

    async fn queued_jobs(
        &self,
        installation: u64,
        owner: &str,
        repo: &str,
        run_id: u64,
    ) -> Result<Vec<QueuedJob>, GitHubError> {
        if self.has(GitHubFault::ListingsHang) {
            std::future::pending::<()>().await;
        }
        self.inner
            .queued_jobs(installation, owner, repo, run_id)
            .await
    }

    async fn get_job(
        &self,
        installation: u64,
        owner: &str,
        repo: &str,
        job_id: u64,
    ) -> Result<Option<JobState>, GitHubError> {
        if self.has(GitHubFault::JobsUnknown) {
            return Ok(None);
        }
        self.inner.get_job(installation, owner, repo, job_id).await
    }

    fn usage(&self, installation: u64) -> RequestUsage {
        self.inner.usage(installation)
    }
}
