//! Pacing GitHub's content-creating requests per installation. GitHub's REST
//! documentation ("Rate limits for the REST API", secondary rate limits) allows
//! no more than 80 content-generating requests a minute and 500 an hour; a JIT
//! mint (`POST …/generate-jitconfig`) and a runner's removal (`DELETE`) are
//! such requests. [`PacedGitHub`] counts them per installation in sliding
//! windows and refuses one that would exceed either with
//! [`GitHubError::RateLimited`] naming when it would fit — it never waits
//! itself: the handler defers its message (`RetryAfter`), so no Lambda sleeps
//! and no receive is spent. Reads pass through.
//!
//! The windows are this process's: concurrent processes (Lambda's) each keep
//! theirs, and what they send together is bounded by GitHub's secondary limit
//! answers, which the adapter reads as waits that grow.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use jitr_domain::Timestamp;

use crate::ports::{
    GitHub, GitHubError, JitRequest, JitRunner, JobState, QueuedJob, RequestUsage, Runner,
    RunnerGroup, RunnerPage, RunnerScope,
};
use crate::sim::SimClock;

/// Content-creating requests GitHub allows an installation per minute.
pub const CONTENT_PER_MINUTE: usize = 80;
/// Content-creating requests GitHub allows an installation per hour.
pub const CONTENT_PER_HOUR: usize = 500;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;

/// What the pacer saw: the most content-creating requests sent in any minute
/// and any hour, and the requests it deferred.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PaceStats {
    /// Most sent within one sliding minute, any installation.
    pub max_per_minute: usize,
    /// Most sent within one sliding hour, any installation.
    pub max_per_hour: usize,
    /// Requests refused for a window (each deferred by its caller).
    pub deferred: u64,
}

/// A GitHub adapter whose content-creating requests are paced.
pub struct PacedGitHub {
    inner: Arc<dyn GitHub>,
    clock: SimClock,
    state: Mutex<(HashMap<u64, VecDeque<i64>>, PaceStats)>,
}

impl PacedGitHub {
    /// `inner`, paced by `clock`.
    pub fn new(inner: Arc<dyn GitHub>, clock: SimClock) -> Self {
        PacedGitHub {
            inner,
            clock,
            state: Mutex::default(),
        }
    }

    /// What was seen so far.
    pub fn stats(&self) -> PaceStats {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1
    }

    /// Takes a place for one content-creating request of `installation` now,
    /// or says how long until one is free.
    fn reserve(&self, installation: u64) -> Result<(), GitHubError> {
        let Timestamp(now) = (self.clock)();
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (windows, stats) = &mut *guard;
        let sent = windows.entry(installation).or_default();
        while sent.front().is_some_and(|t| now - t >= HOUR_MS) {
            sent.pop_front();
        }
        let in_minute = sent.iter().filter(|t| now - **t < MINUTE_MS).count();
        let mut free_at = now;
        if in_minute >= CONTENT_PER_MINUTE {
            free_at = free_at.max(sent[sent.len() - CONTENT_PER_MINUTE] + MINUTE_MS);
        }
        if sent.len() >= CONTENT_PER_HOUR {
            free_at = free_at.max(sent[sent.len() - CONTENT_PER_HOUR] + HOUR_MS);
        }
        if free_at > now {
            stats.deferred += 1;
            let wait_ms = (free_at - now) as u64;
            return Err(GitHubError::RateLimited {
                retry_after: Duration::from_millis(wait_ms.div_ceil(1000) * 1000),
            });
        }
        sent.push_back(now);
        stats.max_per_minute = stats.max_per_minute.max(in_minute + 1);
        stats.max_per_hour = stats.max_per_hour.max(sent.len());
        Ok(())
    }
}

#[async_trait]
impl GitHub for PacedGitHub {
    async fn generate_jit_config(
        &self,
        installation: u64,
        request: &JitRequest,
    ) -> Result<JitRunner, GitHubError> {
        self.reserve(installation)?;
        self.inner.generate_jit_config(installation, request).await
    }

    async fn delete_runner(
        &self,
        installation: u64,
        scope: &RunnerScope,
        runner_id: u64,
    ) -> Result<bool, GitHubError> {
        self.reserve(installation)?;
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

    async fn find_runner(
        &self,
        installation: u64,
        scope: &RunnerScope,
        name: &str,
    ) -> Result<Option<Runner>, GitHubError> {
        self.inner.find_runner(installation, scope, name).await
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
        self.inner.queued_runs(installation, owner, repo).await
    }

    async fn queued_jobs(
        &self,
        installation: u64,
        owner: &str,
        repo: &str,
        run_id: u64,
    ) -> Result<Vec<QueuedJob>, GitHubError> {
        self.inner
            .queued_jobs(installation, owner, repo, run_id)
            .await
    }

    fn usage(&self, installation: u64) -> RequestUsage {
        self.inner.usage(installation)
    }

    async fn get_job(
        &self,
        installation: u64,
        owner: &str,
        repo: &str,
        job_id: u64,
    ) -> Result<Option<JobState>, GitHubError> {
        self.inner.get_job(installation, owner, repo, job_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::NoGitHub;
    use std::sync::atomic::{AtomicI64, Ordering};

    #[tokio::test]
    async fn mints_and_removals_go_through_the_pacer_and_reads_do_not() {
        let paced = PacedGitHub::new(Arc::new(NoGitHub), Arc::new(|| Timestamp(1_000_000)));
        let scope = RunnerScope::Org { org: "acme".into() };
        let request = JitRequest {
            scope: scope.clone(),
            name: "r".into(),
            runner_group_id: 1,
            labels: vec!["self-hosted".into()],
            work_folder: "_work".into(),
        };
        for n in 0..CONTENT_PER_MINUTE {
            // Reaches the adapter behind (which refuses: it holds no key).
            let reached = if n % 2 == 0 {
                paced.generate_jit_config(7, &request).await.map(|_| ())
            } else {
                paced.delete_runner(7, &scope, 1).await.map(|_| ())
            };
            assert!(
                matches!(reached, Err(GitHubError::Unauthorized(_))),
                "{reached:?}"
            );
        }
        assert!(matches!(
            paced.generate_jit_config(7, &request).await,
            Err(GitHubError::RateLimited { .. })
        ));
        assert!(matches!(
            paced.delete_runner(7, &scope, 1).await,
            Err(GitHubError::RateLimited { .. })
        ));
        // Reads are not content-creating: they reach the adapter.
        assert!(matches!(
            paced.list_runners(7, &scope).await,
            Err(GitHubError::Unauthorized(_))
        ));
    }

    #[test]
    fn content_requests_are_paced_under_githubs_minute_and_hour() {
        let now = Arc::new(AtomicI64::new(1_000_000));
        let at = Arc::clone(&now);
        let paced = PacedGitHub::new(
            Arc::new(NoGitHub),
            Arc::new(move || Timestamp(at.load(Ordering::SeqCst))),
        );
        for _ in 0..CONTENT_PER_MINUTE {
            paced.reserve(7).unwrap();
        }
        // The 81st within the minute waits for the first to leave it.
        match paced.reserve(7) {
            Err(GitHubError::RateLimited { retry_after }) => {
                assert_eq!(retry_after, Duration::from_secs(60))
            }
            other => panic!("{other:?}"),
        }
        // Another installation has its own windows.
        paced.reserve(8).unwrap();
        // Minute by minute, 80 more each, until the hour's 500 are spent.
        let mut sent = CONTENT_PER_MINUTE;
        while sent < CONTENT_PER_HOUR {
            now.fetch_add(MINUTE_MS, Ordering::SeqCst);
            for _ in 0..CONTENT_PER_MINUTE.min(CONTENT_PER_HOUR - sent) {
                paced.reserve(7).unwrap();
                sent += 1;
            }
        }
        now.fetch_add(MINUTE_MS, Ordering::SeqCst);
        let Err(GitHubError::RateLimited { retry_after }) = paced.reserve(7) else {
            panic!("the hour's 500 are spent");
        };
        // The first of the hour leaves it 3600 s after it was sent.
        let elapsed = 7 * MINUTE_MS;
        assert_eq!(retry_after.as_millis() as i64, HOUR_MS - elapsed);
        let stats = paced.stats();
        assert_eq!(
            (stats.max_per_minute, stats.max_per_hour, stats.deferred),
            (CONTENT_PER_MINUTE, CONTENT_PER_HOUR, 2)
        );
    }
}
