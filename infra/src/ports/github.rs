//! The GitHub port: JIT runner configs, runner registrations, queued jobs.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::BoxError;
use super::secrets::JitConfig;

/// Where a runner registers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "scope", rename_all = "kebab-case")]
pub enum RunnerScope {
    /// A repository's runners.
    Repo {
        /// Owner.
        owner: String,
        /// Repository.
        repo: String,
    },
    /// An organization's runners.
    Org {
        /// Organization login.
        org: String,
    },
}

impl std::fmt::Display for RunnerScope {
    /// `owner/repo`, or `organization org`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunnerScope::Repo { owner, repo } => write!(f, "{owner}/{repo}"),
            RunnerScope::Org { org } => write!(f, "organization {org}"),
        }
    }
}

/// A JIT runner to register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JitRequest {
    /// Repository or organization.
    pub scope: RunnerScope,
    /// The runner's name (unique within the scope).
    pub name: String,
    /// Runner group (1 is the default group).
    pub runner_group_id: u64,
    /// Labels (at least one).
    pub labels: Vec<String>,
    /// Work folder relative to the runner's install directory.
    pub work_folder: String,
}

/// A registered JIT runner and its single-use config.
#[derive(Clone, Debug)]
pub struct JitRunner {
    /// GitHub's runner id.
    pub runner_id: u64,
    /// Its name.
    pub name: String,
    /// The secret config for `run.sh --jitconfig`.
    pub config: JitConfig,
}

/// A registered self-hosted runner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runner {
    /// Runner id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// `online` / `offline`.
    pub status: String,
    /// Running a job.
    pub busy: bool,
    /// Label names.
    pub labels: Vec<String>,
}

/// One page of a scope's runner registrations, as GitHub lists them
/// (`per_page=100`, numbered from 1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunnerPage {
    /// The runners of the page.
    pub runners: Vec<Runner>,
    /// Whether GitHub has a page after it (its `Link: rel="next"`).
    pub more: bool,
}

/// Runners GitHub lists in one page.
pub const RUNNERS_PER_PAGE: usize = 100;

/// An organisation's runner group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerGroup {
    /// Its id (what a JIT config names).
    pub id: u64,
    /// Its name.
    pub name: String,
}

/// A workflow job waiting for a runner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedJob {
    /// Repository owner.
    pub owner: String,
    /// Repository.
    pub repo: String,
    /// Job id.
    pub job_id: u64,
    /// Run id.
    pub run_id: u64,
    /// `runs-on` labels.
    pub labels: Vec<String>,
    /// Job name.
    pub name: String,
}

/// A workflow job as GitHub reports it
/// (`GET /repos/{owner}/{repo}/actions/jobs/{job_id}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    /// `queued`, `in_progress`, `completed`, `waiting`, `requested` or `pending`.
    pub status: String,
    /// Once completed: `success`, `failure`, `cancelled`, …
    pub conclusion: Option<String>,
    /// The runner that took it, once one did.
    pub runner_name: Option<String>,
}

/// What one installation's token has spent, and what GitHub last said of its
/// rate limit (`x-ratelimit-limit`, `-remaining`, `-reset`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestUsage {
    /// Requests this client sent with the installation's token.
    pub sent: u64,
    /// Requests allowed per window, as last reported.
    pub limit: Option<u64>,
    /// Requests left in the window, as last reported.
    pub remaining: Option<u64>,
    /// When the window resets (seconds since the epoch), as last reported.
    pub reset_at: Option<i64>,
}

/// What went wrong talking to GitHub.
#[derive(Debug, Error)]
pub enum GitHubError {
    /// 401: the JWT or token was refused (wrong app id or key, clock skew).
    #[error(
        "GitHub refused the credentials (401): {0}; check the app id, the private key and the clock"
    )]
    Unauthorized(String),
    /// 403 without a rate limit: the app lacks a permission.
    #[error("GitHub forbids this (403): {0}; check the app's permissions and installation")]
    Forbidden(String),
    /// 404.
    #[error("not found on GitHub (404): {0}")]
    NotFound(String),
    /// 409 on generate-jitconfig: a runner with that name exists.
    #[error("a runner with that name already exists (409): {0}")]
    RunnerNameExists(String),
    /// 422.
    #[error("GitHub rejected the request (422): {0}")]
    Invalid(String),
    /// A `Link` header named a URL outside the configured API: not followed, so
    /// that the installation token never leaves GitHub.
    #[error("GitHub's Link header points outside {api}: {url}; not followed")]
    ForeignLink {
        /// The URL named.
        url: String,
        /// The configured API base.
        api: String,
    },
    /// Rate limited for longer than the client waits.
    #[error("GitHub rate limit: retry after {retry_after:?}")]
    RateLimited {
        /// How long until requests are allowed again.
        retry_after: Duration,
    },
    /// 5xx after retries.
    #[error("GitHub server error {status}: {body}")]
    Server {
        /// Status code.
        status: u16,
        /// Body.
        body: String,
    },
    /// Any other status.
    #[error("GitHub answered {status}: {body}")]
    Unexpected {
        /// Status code.
        status: u16,
        /// Body.
        body: String,
    },
    /// No HTTP answer.
    #[error("GitHub unreachable: {0}")]
    Transport(#[source] BoxError),
    /// The answer was not what GitHub documents.
    #[error("unexpected GitHub response: {0}")]
    Decode(String),
    /// The private key is unusable.
    #[error("GitHub App private key: {0}")]
    Key(String),
}

impl GitHubError {
    /// The error GitHub's REST API means by answering `status` (after the
    /// client's own retries): `what` says which call and GitHub's message, `body`
    /// is the raw answer.
    pub fn from_status(status: u16, what: String, body: String) -> GitHubError {
        match status {
            401 => GitHubError::Unauthorized(what),
            403 => GitHubError::Forbidden(what),
            404 => GitHubError::NotFound(what),
            409 => GitHubError::RunnerNameExists(what),
            422 => GitHubError::Invalid(what),
            429 => GitHubError::RateLimited {
                retry_after: Duration::from_secs(60),
            },
            s if s >= 500 => GitHubError::Server { status: s, body },
            s => GitHubError::Unexpected { status: s, body },
        }
    }

    /// The wait GitHub asked for, where it did (a rate limit).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GitHubError::RateLimited { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// Whether asking again later may succeed: rate limits, server errors,
    /// timeouts and no answer at all. 401, 403, 404, 409 and 422 are GitHub's
    /// definitive answers (as are a bad key or a foreign link); a 403 that is a
    /// rate limit is read as [`GitHubError::RateLimited`] by the adapter.
    pub fn is_transient(&self) -> bool {
        match self {
            GitHubError::RateLimited { .. }
            | GitHubError::Server { .. }
            | GitHubError::Transport(_) => true,
            GitHubError::Unexpected { status, .. } => *status == 408,
            _ => false,
        }
    }
}

/// The message GitHub answers a secondary rate limit with (REST API
/// documentation, "Rate limits for the REST API").
pub const SECONDARY_RATE_LIMIT_MESSAGE: &str =
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.";

/// The first wait after a secondary rate limit that names none: GitHub asks
/// for at least a minute.
pub const SECONDARY_WAIT: Duration = Duration::from_secs(60);
/// The longest of the growing waits after repeated secondary limits.
pub const SECONDARY_WAIT_MAX: Duration = Duration::from_secs(15 * 60);

/// What a GitHub answer says of its rate limits, as GitHub documents them
/// ("Rate limits for the REST API", "Best practices for using the REST API"):
/// the wait it asks for, or `None` when the answer is no rate limit.
///
/// - a 403 or 429 with `retry-after`: that many seconds;
/// - with `x-ratelimit-remaining: 0`: until `x-ratelimit-reset` (the primary
///   limit);
/// - a 429, or a 403 whose message names a secondary rate limit (or GitHub's
///   older "abuse detection"), without either header: at least a minute,
///   doubling with each limit met in a row (`strikes`, from 1), at most
///   [`SECONDARY_WAIT_MAX`];
/// - any other 403 is not a rate limit (a permission GitHub refuses).
pub fn rate_limit_wait(
    status: u16,
    retry_after: Option<i64>,
    remaining: Option<i64>,
    reset: Option<i64>,
    message: &str,
    now: i64,
    strikes: u32,
) -> Option<Duration> {
    if status != 403 && status != 429 {
        return None;
    }
    if let Some(secs) = retry_after {
        return Some(Duration::from_secs(secs.max(1) as u64));
    }
    if remaining == Some(0) {
        let secs = reset.map_or(SECONDARY_WAIT.as_secs() as i64, |r| r - now);
        return Some(Duration::from_secs(secs.max(1) as u64));
    }
    let lower = message.to_ascii_lowercase();
    let secondary = lower.contains("secondary rate limit") || lower.contains("abuse detection");
    if status == 429 || secondary {
        let doubled = SECONDARY_WAIT.saturating_mul(1 << strikes.saturating_sub(1).min(8));
        return Some(doubled.min(SECONDARY_WAIT_MAX));
    }
    None
}

/// The GitHub calls jitr makes (the port; [`GitHubApp`] is the REST adapter).
#[async_trait]
pub trait GitHub: Send + Sync {
    /// Registers a JIT runner and returns its config.
    async fn generate_jit_config(
        &self,
        installation: u64,
        request: &JitRequest,
    ) -> Result<JitRunner, GitHubError>;
    /// Removes a runner registration; `false` when it was already gone.
    async fn delete_runner(
        &self,
        installation: u64,
        scope: &RunnerScope,
        runner_id: u64,
    ) -> Result<bool, GitHubError>;
    /// Every runner registered in a scope.
    async fn list_runners(
        &self,
        installation: u64,
        scope: &RunnerScope,
    ) -> Result<Vec<Runner>, GitHubError>;
    /// Page `page` (from 1) of a scope's runners: one request. Stand-ins may
    /// cut it from the whole listing.
    async fn runners_page(
        &self,
        installation: u64,
        scope: &RunnerScope,
        page: u32,
    ) -> Result<RunnerPage, GitHubError> {
        let all = self.list_runners(installation, scope).await?;
        let start = (page.max(1) as usize - 1) * RUNNERS_PER_PAGE;
        Ok(RunnerPage {
            more: all.len() > start + RUNNERS_PER_PAGE,
            runners: all.into_iter().skip(start).take(RUNNERS_PER_PAGE).collect(),
        })
    }
    /// The runner registered under `name` in a scope, if any (names are
    /// unique within a scope).
    async fn find_runner(
        &self,
        installation: u64,
        scope: &RunnerScope,
        name: &str,
    ) -> Result<Option<Runner>, GitHubError> {
        Ok(self
            .list_runners(installation, scope)
            .await?
            .into_iter()
            .find(|r| r.name == name))
    }
    /// A registration by GitHub's id (`GET …/actions/runners/{id}`, one
    /// request); `None` when GitHub has none. Stand-ins may look it up in
    /// the listing.
    async fn get_runner(
        &self,
        installation: u64,
        scope: &RunnerScope,
        runner_id: u64,
    ) -> Result<Option<Runner>, GitHubError> {
        Ok(self
            .list_runners(installation, scope)
            .await?
            .into_iter()
            .find(|r| r.id == runner_id))
    }
    /// A runner's registration: by its id where the log recorded it (one
    /// request, the name checked), else by its name (the whole listing: runners
    /// minted before ids were recorded).
    async fn registration(
        &self,
        installation: u64,
        scope: &RunnerScope,
        runner_id: Option<u64>,
        name: &str,
    ) -> Result<Option<Runner>, GitHubError> {
        match runner_id {
            Some(id) => Ok(self
                .get_runner(installation, scope, id)
                .await?
                .filter(|r| r.name == name)),
            None => self.find_runner(installation, scope, name).await,
        }
    }
    /// An organisation's runner groups (`GET /orgs/{org}/actions/runner-groups`).
    async fn runner_groups(
        &self,
        installation: u64,
        org: &str,
    ) -> Result<Vec<RunnerGroup>, GitHubError>;
    /// The ids of a repository's queued workflow runs
    /// (`GET /repos/{owner}/{repo}/actions/runs?status=queued`).
    async fn queued_runs(
        &self,
        installation: u64,
        owner: &str,
        repo: &str,
    ) -> Result<Vec<u64>, GitHubError>;
    /// The queued jobs of one run
    /// (`GET /repos/{owner}/{repo}/actions/runs/{run_id}/jobs?filter=latest`).
    async fn queued_jobs(
        &self,
        installation: u64,
        owner: &str,
        repo: &str,
        run_id: u64,
    ) -> Result<Vec<QueuedJob>, GitHubError>;
    /// What the installation's token has spent so far (nothing known: default).
    fn usage(&self, _installation: u64) -> RequestUsage {
        RequestUsage::default()
    }
    /// One workflow job as GitHub reports it now; `None` when GitHub does not
    /// know it (404).
    async fn get_job(
        &self,
        installation: u64,
        owner: &str,
        repo: &str,
        job_id: u64,
    ) -> Result<Option<JobState>, GitHubError>;
}

/// The GitHub of a function that holds no App key (the webhook, the
/// projector: ADR-0018): every call is refused as unauthorised, naming why.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoGitHub;

impl NoGitHub {
    fn refused<T>(&self) -> Result<T, GitHubError> {
        Err(GitHubError::Unauthorized(
            "this function holds no GitHub App key (JITR_GITHUB_PRIVATE_KEY_PARAMETER is not set for it)"
                .into(),
        ))
    }
}

#[async_trait]
impl GitHub for NoGitHub {
    async fn generate_jit_config(&self, _: u64, _: &JitRequest) -> Result<JitRunner, GitHubError> {
        self.refused()
    }
    async fn delete_runner(&self, _: u64, _: &RunnerScope, _: u64) -> Result<bool, GitHubError> {
        self.refused()
    }
    async fn list_runners(&self, _: u64, _: &RunnerScope) -> Result<Vec<Runner>, GitHubError> {
        self.refused()
    }
    async fn runner_groups(&self, _: u64, _: &str) -> Result<Vec<RunnerGroup>, GitHubError> {
        self.refused()
    }
    async fn queued_runs(&self, _: u64, _: &str, _: &str) -> Result<Vec<u64>, GitHubError> {
        self.refused()
    }
    async fn queued_jobs(
        &self,
        _: u64,
        _: &str,
        _: &str,
        _: u64,
    ) -> Result<Vec<QueuedJob>, GitHubError> {
        self.refused()
    }
    async fn get_job(
        &self,
        _: u64,
        _: &str,
        _: &str,
        _: u64,
    ) -> Result<Option<JobState>, GitHubError> {
        self.refused()
    }
}

#[cfg(test)]
mod rate_limit_tests {
    use super::*;

    #[test]
    fn rate_limits_are_read_as_github_documents_them() {
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs());
        let now = 1_000;
        // retry-after first, then the primary limit's reset.
        assert_eq!(
            secs(rate_limit_wait(403, Some(30), None, None, "", now, 1)),
            Some(30)
        );
        assert_eq!(
            secs(rate_limit_wait(429, None, Some(0), Some(1_600), "", now, 1)),
            Some(600)
        );
        // A secondary limit without headers: a minute, doubling, capped.
        let secondary = |strikes| {
            secs(rate_limit_wait(
                403,
                None,
                Some(4000),
                None,
                SECONDARY_RATE_LIMIT_MESSAGE,
                now,
                strikes,
            ))
        };
        assert_eq!(secondary(1), Some(60));
        assert_eq!(secondary(2), Some(120));
        assert_eq!(secondary(3), Some(240));
        assert_eq!(secondary(20), Some(900));
        assert_eq!(
            secs(rate_limit_wait(429, None, None, None, "", now, 1)),
            Some(60)
        );
        assert_eq!(
            secs(rate_limit_wait(
                403,
                None,
                None,
                None,
                "You have triggered an abuse detection mechanism.",
                now,
                1
            )),
            Some(60)
        );
        // A permission refusal is no rate limit, nor is any other status.
        assert_eq!(
            rate_limit_wait(
                403,
                None,
                Some(4999),
                None,
                "Resource not accessible by integration",
                now,
                1
            ),
            None
        );
        assert_eq!(rate_limit_wait(422, Some(5), None, None, "", now, 1), None);
    }
}
