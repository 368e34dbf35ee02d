//! Fault injection around a real GitHub adapter: behaviours GitHub documents
//! that the stand-in does not play on its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::ports::{
    GitHub, GitHubError, JitRequest, JitRunner, JobState, QueuedJob, RequestUsage, Runner,
    RunnerGroup, RunnerPage, RunnerScope, SECONDARY_RATE_LIMIT_MESSAGE, rate_limit_wait,
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
    /// A JIT mint meets a secondary rate limit with probability 1/`one_in`
    /// (drawn from `seed`): GitHub's documented 403 reply without
    /// `retry-after` ("You have exceeded a secondary rate limit…"), read as the
    /// REST adapter reads it.
    SecondaryLimitedMints {
        /// One mint in this many, on average.
        one_in: u64,
        /// Seed of the draws.
        seed: u64,
    },
}

/// SplitMix64: a draw from `x`, well spread for consecutive inputs.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A GitHub adapter with faults injected in front of it.
pub struct FaultyGitHub {
    inner: Arc<dyn GitHub>,
    faults: Mutex<Vec<GitHubFault>>,
    mints: AtomicU64,
    limited: AtomicU64,
}

impl FaultyGitHub {
    /// `inner`, with no fault yet.
    pub fn new(inner: Arc<dyn GitHub>) -> Self {
        FaultyGitHub {
            inner,
            faults: Mutex::default(),
            mints: AtomicU64::new(0),
            limited: AtomicU64::new(0),
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

    /// Mints answered with a secondary rate limit so far.
    pub fn limited_mints(&self) -> u64 {
        self.limited.load(Ordering::SeqCst)
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
        let one_in = self
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find_map(|f| match f {
                GitHubFault::SecondaryLimitedMints { one_in, seed } => {
                    Some(((*one_in).max(1), *seed))
                }
                _ => None,
            });
        if let Some((one_in, seed)) = one_in {
            let n = self.mints.fetch_add(1, Ordering::SeqCst);
            if splitmix(seed.wrapping_add(n)) % one_in == 0 {
                self.limited.fetch_add(1, Ordering::SeqCst);
                let retry_after =
                    rate_limit_wait(403, None, None, None, SECONDARY_RATE_LIMIT_MESSAGE, 0, 1)
                        .expect("GitHub's secondary limit reply is a rate limit");
                return Err(GitHubError::RateLimited { retry_after });
            }
        }
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

    async fn runners_page(
        &self,
        installation: u64,
        scope: &RunnerScope,
        page: u32,
    ) -> Result<RunnerPage, GitHubError> {
        self.inner.runners_page(installation, scope, page).await
    }

    async fn get_runner(
        &self,
        installation: u64,
        scope: &RunnerScope,
        runner_id: u64,
    ) -> Result<Option<Runner>, GitHubError> {
        self.inner.get_runner(installation, scope, runner_id).await
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
