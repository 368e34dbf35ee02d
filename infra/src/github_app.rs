//! The GitHub App client (the REST adapter of [`GitHub`]): JWT (RS256) → installation token (cached until shortly
//! before it expires) → JIT runner configs, runner listing and removal, and the
//! queued jobs the rebalancer compares with live runners, and workflow jobs.
//!
//! Every request carries `Accept: application/vnd.github+json` and
//! `X-GitHub-Api-Version`. Rate limits are respected: a `retry-after` (or an
//! exhausted `x-ratelimit-remaining` with its `x-ratelimit-reset`) is waited out
//! when short, and reported as [`GitHubError::RateLimited`] when not; limits are
//! kept per installation, and what each installation's token spent is
//! [`GitHub::usage`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ports::{
    GitHub, GitHubError, JitConfig, JitRequest, JitRunner, JobState, QueuedJob, RequestUsage,
    Runner, RunnerGroup, RunnerPage, RunnerScope,
};

impl From<reqwest::Error> for GitHubError {
    fn from(e: reqwest::Error) -> Self {
        GitHubError::Transport(Box::new(e))
    }
}

/// The REST API version jitr speaks.
pub const API_VERSION: &str = "2022-11-28";
/// GitHub.com's API.
pub const GITHUB_API: &str = "https://api.github.com";
/// A cached installation token is renewed this long before it expires.
const TOKEN_MARGIN_SECS: i64 = 300;
const PER_PAGE: usize = 100;

/// How the client reaches GitHub. Its `Debug` never prints the private key.
#[derive(Clone)]
pub struct GitHubAppConfig {
    /// The App's id (or client id): the JWT issuer.
    pub app_id: String,
    /// The App's private key, PEM.
    pub private_key_pem: String,
    /// API base URL: `https://api.github.com`, or `https://HOST/api/v3` for GHES.
    pub api_base: String,
    /// Longest rate-limit pause the client waits out itself.
    pub max_rate_limit_wait: Duration,
}

impl std::fmt::Debug for GitHubAppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubAppConfig")
            .field("app_id", &self.app_id)
            .field("private_key_pem", &"<redacted>")
            .field("api_base", &self.api_base)
            .field("max_rate_limit_wait", &self.max_rate_limit_wait)
            .finish()
    }
}

#[derive(Clone)]
struct CachedToken {
    token: String,
    expires_at: i64,
}

/// The moment source (seconds since the epoch); replaceable in tests.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The GitHub App REST client.
#[derive(Clone)]
pub struct GitHubApp {
    http: reqwest::Client,
    config: GitHubAppConfig,
    key: EncodingKey,
    tokens: Arc<Mutex<HashMap<u64, CachedToken>>>,
    /// Rate limits are per installation (and one for the App's JWT: `None`).
    paused_until: Arc<Mutex<HashMap<Option<u64>, i64>>>,
    /// Secondary rate limits met in a row, per installation.
    strikes: Arc<Mutex<HashMap<Option<u64>, u32>>>,
    usage: Arc<Mutex<HashMap<u64, RequestUsage>>>,
    clock: Clock,
}

#[derive(Serialize)]
struct Claims<'a> {
    iat: i64,
    exp: i64,
    iss: &'a str,
}

fn system_clock() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn header(response: &Response, name: &str) -> Option<i64> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

impl GitHubApp {
    /// A client for the App.
    pub fn new(config: GitHubAppConfig) -> Result<Self, GitHubError> {
        let key = EncodingKey::from_rsa_pem(config.private_key_pem.as_bytes())
            .map_err(|e| GitHubError::Key(e.to_string()))?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("jitr/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(GitHubApp {
            http,
            config: GitHubAppConfig {
                api_base: config.api_base.trim_end_matches('/').to_owned(),
                ..config
            },
            key,
            tokens: Arc::default(),
            paused_until: Arc::default(),
            strikes: Arc::default(),
            usage: Arc::default(),
            clock: Arc::new(system_clock),
        })
    }

    /// Replaces the clock (tests of token expiry and rate limits).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The App JWT: issued 60 s in the past (clock drift), valid 9 minutes.
    pub fn app_jwt(&self) -> Result<String, GitHubError> {
        let now = (self.clock)();
        let claims = Claims {
            iat: now - 60,
            exp: now + 540,
            iss: &self.config.app_id,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(|e| GitHubError::Key(e.to_string()))
    }

    /// An installation token, from the cache while it has more than 5 minutes left.
    pub async fn installation_token(&self, installation: u64) -> Result<String, GitHubError> {
        let now = (self.clock)();
        if let Some(cached) = self.lock_tokens().get(&installation) {
            if cached.expires_at - TOKEN_MARGIN_SECS > now {
                return Ok(cached.token.clone());
            }
        }
        #[derive(Deserialize)]
        struct TokenResponse {
            token: String,
            expires_at: String,
        }
        let jwt = self.app_jwt()?;
        let path = format!("/app/installations/{installation}/access_tokens");
        let response = self.send(None, Method::POST, &path, &jwt, None).await?;
        let body: TokenResponse = decode(response).await?;
        let expires_at = humantime::parse_rfc3339(&body.expires_at)
            .map_err(|e| GitHubError::Decode(format!("expires_at {:?}: {e}", body.expires_at)))?
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.lock_tokens().insert(
            installation,
            CachedToken {
                token: body.token.clone(),
                expires_at,
            },
        );
        Ok(body.token)
    }

    fn lock_strikes(&self) -> std::sync::MutexGuard<'_, HashMap<Option<u64>, u32>> {
        self.strikes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_tokens(&self) -> std::sync::MutexGuard<'_, HashMap<u64, CachedToken>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One request with an installation token; a 401 drops the cached token and
    /// retries once with a fresh one.
    async fn call(
        &self,
        installation: u64,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, GitHubError> {
        let token = self.installation_token(installation).await?;
        let with = Some(installation);
        match self.send(with, method.clone(), path, &token, body).await {
            Err(GitHubError::Unauthorized(_)) => {
                self.lock_tokens().remove(&installation);
                let token = self.installation_token(installation).await?;
                self.send(with, method, path, &token, body).await
            }
            other => other,
        }
    }

    /// Sends one request with `installation`'s token (`None`: the App's JWT),
    /// waiting out short rate limits and retrying 5xx twice.
    async fn send(
        &self,
        installation: Option<u64>,
        method: Method,
        path_or_url: &str,
        bearer: &str,
        body: Option<&Value>,
    ) -> Result<Response, GitHubError> {
        let url = if path_or_url.starts_with("http") {
            self.same_origin(path_or_url)?
        } else {
            format!("{}{path_or_url}", self.config.api_base)
        };
        let mut server_errors = 0;
        let mut rate_limited = 0;
        loop {
            self.wait_for_rate_limit(installation).await?;
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(bearer)
                .header("Accept", "application/vnd.github+json")
                .header("X-GitHub-Api-Version", API_VERSION);
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await?;
            let status = response.status();
            let remaining = header(&response, "x-ratelimit-remaining");
            let reset = header(&response, "x-ratelimit-reset");
            if let Some(installation) = installation {
                let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
                let usage = usage.entry(installation).or_default();
                usage.sent += 1;
                if let Some(limit) = header(&response, "x-ratelimit-limit") {
                    usage.limit = Some(limit.max(0) as u64);
                }
                if let Some(remaining) = remaining {
                    usage.remaining = Some(remaining.max(0) as u64);
                }
                usage.reset_at = reset.or(usage.reset_at);
            }
            if remaining == Some(0) {
                if let Some(reset) = reset {
                    self.paused_until
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(installation, reset);
                }
            }
            if status.is_success() {
                self.lock_strikes().remove(&installation);
                return Ok(response);
            }
            if status.is_server_error() && server_errors < 2 {
                server_errors += 1;
                tokio::time::sleep(Duration::from_millis(200 * server_errors)).await;
                continue;
            }
            let retry_after = header(&response, "retry-after");
            let text = response.text().await.unwrap_or_default();
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or(text.clone());
            let now = (self.clock)();
            // A limit that names no wait is a secondary one: the waits grow
            // with each met in a row (reset by a success).
            let named = retry_after.is_some() || remaining == Some(0);
            let strikes = if named {
                1
            } else {
                self.lock_strikes().get(&installation).copied().unwrap_or(0) + 1
            };
            let wait = crate::ports::rate_limit_wait(
                status.as_u16(),
                retry_after,
                remaining,
                reset,
                &message,
                now,
                strikes,
            );
            if wait.is_some() && !named {
                self.lock_strikes().insert(installation, strikes);
            }
            if let Some(wait) = wait {
                rate_limited += 1;
                let allowed = crate::deadline::allowed_wait(self.config.max_rate_limit_wait);
                if wait > allowed || rate_limited > 2 {
                    // Every request of the installation waits it out.
                    self.paused_until
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(installation)
                        .and_modify(|until| *until = (*until).max(now + wait.as_secs() as i64))
                        .or_insert(now + wait.as_secs() as i64);
                    tracing::warn!(?wait, %url, %message, "GitHub rate limit: handed back");
                    return Err(GitHubError::RateLimited { retry_after: wait });
                }
                tracing::warn!(?wait, %url, %message, "GitHub rate limit: waiting");
                tokio::time::sleep(wait).await;
                continue;
            }
            let what = format!("{method} {path_or_url}: {message}");
            return Err(GitHubError::from_status(status.as_u16(), what, text));
        }
    }

    /// `url` if it is on the configured API (same scheme, host and port, under
    /// its base path), else [`GitHubError::ForeignLink`]: a `Link` header is
    /// followed with the installation token, which must not go anywhere else.
    fn same_origin(&self, url: &str) -> Result<String, GitHubError> {
        let foreign = || GitHubError::ForeignLink {
            url: url.to_owned(),
            api: self.config.api_base.clone(),
        };
        let (Ok(target), Ok(api)) = (
            reqwest::Url::parse(url),
            reqwest::Url::parse(&self.config.api_base),
        ) else {
            return Err(foreign());
        };
        let under_base = target.path().starts_with(api.path().trim_end_matches('/'));
        if target.scheme() == api.scheme()
            && target.host_str() == api.host_str()
            && target.port_or_known_default() == api.port_or_known_default()
            && target.username().is_empty()
            && under_base
        {
            Ok(url.to_owned())
        } else {
            Err(foreign())
        }
    }

    async fn wait_for_rate_limit(&self, installation: Option<u64>) -> Result<(), GitHubError> {
        let until = self
            .paused_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&installation)
            .copied()
            .unwrap_or(0);
        let now = (self.clock)();
        if until > now {
            let wait = Duration::from_secs((until - now) as u64);
            if wait > crate::deadline::allowed_wait(self.config.max_rate_limit_wait) {
                return Err(GitHubError::RateLimited { retry_after: wait });
            }
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// GETs every page of a list (`per_page=100`, following `Link: rel="next"`),
    /// collecting the array under `field`.
    async fn get_all(
        &self,
        installation: u64,
        path: &str,
        field: &str,
    ) -> Result<Vec<Value>, GitHubError> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let mut next = Some(format!("{path}{separator}per_page={PER_PAGE}"));
        let mut all = Vec::new();
        while let Some(url) = next.take() {
            let response = self.call(installation, Method::GET, &url, None).await?;
            next = next_link(&response);
            let page: Value = decode(response).await?;
            let items = page
                .get(field)
                .and_then(Value::as_array)
                .ok_or_else(|| GitHubError::Decode(format!("{path}: no {field:?} array")))?;
            all.extend(items.iter().cloned());
        }
        Ok(all)
    }
}

fn runners_path(scope: &RunnerScope) -> String {
    match scope {
        RunnerScope::Repo { owner, repo } => format!("/repos/{owner}/{repo}/actions/runners"),
        RunnerScope::Org { org } => format!("/orgs/{org}/actions/runners"),
    }
}

fn next_link(response: &Response) -> Option<String> {
    let link = response.headers().get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (url, rel) = part.split_once(';')?;
        rel.contains("rel=\"next\"").then(|| {
            url.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
    })
}

async fn decode<T: for<'de> Deserialize<'de>>(response: Response) -> Result<T, GitHubError> {
    let url = response.url().path().to_owned();
    let text = response.text().await?;
    serde_json::from_str(&text).map_err(|e| GitHubError::Decode(format!("{url}: {e}")))
}

/// A runner as GitHub's REST API describes one.
fn runner_of(r: &Value) -> Result<Runner, GitHubError> {
    Ok(Runner {
        id: r["id"]
            .as_u64()
            .ok_or_else(|| GitHubError::Decode("runner without id".into()))?,
        name: r["name"].as_str().unwrap_or_default().to_owned(),
        status: r["status"].as_str().unwrap_or_default().to_owned(),
        busy: r["busy"].as_bool().unwrap_or(false),
        labels: labels(&r["labels"]),
    })
}

fn labels(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|labels| {
            labels
                .iter()
                .filter_map(|l| l.as_str().or_else(|| l.get("name").and_then(Value::as_str)))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[async_trait]
impl GitHub for GitHubApp {
    async fn generate_jit_config(
        &self,
        installation: u64,
        request: &JitRequest,
    ) -> Result<JitRunner, GitHubError> {
        let body = serde_json::json!({
            "name": request.name,
            "runner_group_id": request.runner_group_id,
            "labels": request.labels,
            "work_folder": request.work_folder,
        });
        let path = format!("{}/generate-jitconfig", runners_path(&request.scope));
        let response = self
            .call(installation, Method::POST, &path, Some(&body))
            .await?;
        #[derive(Deserialize)]
        struct Registered {
            id: u64,
            name: String,
        }
        #[derive(Deserialize)]
        struct JitResponse {
            runner: Registered,
            encoded_jit_config: String,
        }
        let r: JitResponse = decode(response).await?;
        Ok(JitRunner {
            runner_id: r.runner.id,
            name: r.runner.name,
            config: JitConfig::new(r.encoded_jit_config),
        })
    }

    async fn delete_runner(
        &self,
        installation: u64,
        scope: &RunnerScope,
        runner_id: u64,
    ) -> Result<bool, GitHubError> {
        let path = format!("{}/{runner_id}", runners_path(scope));
        match self.call(installation, Method::DELETE, &path, None).await {
            Ok(_) => Ok(true),
            Err(GitHubError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn list_runners(
        &self,
        installation: u64,
        scope: &RunnerScope,
    ) -> Result<Vec<Runner>, GitHubError> {
        let runners = self
            .get_all(installation, &runners_path(scope), "runners")
            .await?;
        runners.iter().map(runner_of).collect()
    }

    async fn runners_page(
        &self,
        installation: u64,
        scope: &RunnerScope,
        page: u32,
    ) -> Result<RunnerPage, GitHubError> {
        let path = format!(
            "{}?per_page={PER_PAGE}&page={}",
            runners_path(scope),
            page.max(1)
        );
        let response = self.call(installation, Method::GET, &path, None).await?;
        let more = next_link(&response).is_some();
        let body: Value = decode(response).await?;
        let runners = body
            .get("runners")
            .and_then(Value::as_array)
            .ok_or_else(|| GitHubError::Decode(format!("{path}: no \"runners\" array")))?
            .iter()
            .map(runner_of)
            .collect::<Result<_, _>>()?;
        Ok(RunnerPage { runners, more })
    }

    async fn get_runner(
        &self,
        installation: u64,
        scope: &RunnerScope,
        runner_id: u64,
    ) -> Result<Option<Runner>, GitHubError> {
        let path = format!("{}/{runner_id}", runners_path(scope));
        match self.call(installation, Method::GET, &path, None).await {
            Ok(response) => runner_of(&decode::<Value>(response).await?).map(Some),
            Err(GitHubError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn runner_groups(
        &self,
        installation: u64,
        org: &str,
    ) -> Result<Vec<RunnerGroup>, GitHubError> {
        let groups = self
            .get_all(
                installation,
                &format!("/orgs/{org}/actions/runner-groups"),
                "runner_groups",
            )
            .await?;
        Ok(groups
            .iter()
            .filter_map(|g| {
                Some(RunnerGroup {
                    id: g["id"].as_u64()?,
                    name: g["name"].as_str()?.to_owned(),
                })
            })
            .collect())
    }

    async fn queued_runs(
        &self,
        installation: u64,
        owner: &str,
        repo: &str,
    ) -> Result<Vec<u64>, GitHubError> {
        let runs = self
            .get_all(
                installation,
                &format!("/repos/{owner}/{repo}/actions/runs?status=queued"),
                "workflow_runs",
            )
            .await?;
        Ok(runs.iter().filter_map(|run| run["id"].as_u64()).collect())
    }

    async fn queued_jobs(
        &self,
        installation: u64,
        owner: &str,
        repo: &str,
        run_id: u64,
    ) -> Result<Vec<QueuedJob>, GitHubError> {
        let jobs = self
            .get_all(
                installation,
                &format!("/repos/{owner}/{repo}/actions/runs/{run_id}/jobs?filter=latest"),
                "jobs",
            )
            .await?;
        Ok(jobs
            .into_iter()
            .filter(|job| job["status"].as_str() == Some("queued"))
            .filter_map(|job| {
                Some(QueuedJob {
                    owner: owner.to_owned(),
                    repo: repo.to_owned(),
                    job_id: job["id"].as_u64()?,
                    run_id,
                    labels: labels(&job["labels"]),
                    name: job["name"].as_str().unwrap_or_default().to_owned(),
                })
            })
            .collect())
    }

    fn usage(&self, installation: u64) -> RequestUsage {
        self.usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&installation)
            .copied()
            .unwrap_or_default()
    }

    async fn get_job(
        &self,
        installation: u64,
        owner: &str,
        repo: &str,
        job_id: u64,
    ) -> Result<Option<JobState>, GitHubError> {
        let path = format!("/repos/{owner}/{repo}/actions/jobs/{job_id}");
        let response = match self.call(installation, Method::GET, &path, None).await {
            Ok(response) => response,
            Err(GitHubError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let job: Value = decode(response).await?;
        let text = |field: &str| job[field].as_str().map(str::to_owned);
        let status =
            text("status").ok_or_else(|| GitHubError::Decode(format!("{path}: no status")))?;
        Ok(Some(JobState {
            status,
            conclusion: text("conclusion"),
            runner_name: text("runner_name").filter(|n| !n.is_empty()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configs_debug_never_prints_the_private_key() {
        let config = GitHubAppConfig {
            app_id: "12345".into(),
            private_key_pem:
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEsecret\n-----END RSA PRIVATE KEY-----\n"
                    .into(),
            api_base: GITHUB_API.into(),
            max_rate_limit_wait: Duration::from_secs(60),
        };
        let printed = format!("{config:?} {config:#?}");
        assert!(!printed.contains("MIIEsecret"), "{printed}");
        assert!(!printed.contains("PRIVATE KEY"), "{printed}");
        assert!(printed.contains("<redacted>") && printed.contains("12345"));
    }
}
