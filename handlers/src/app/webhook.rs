//! The webhook endpoint's logic: authenticate a GitHub delivery, validate it, and
//! route `workflow_job` events to the scale-up or lifecycle queue.
//!
//! Status codes: 401 missing or bad signature, 400 malformed body (or a
//! repository name GitHub would not give), 413 body above
//! the limit, 202 enqueued, 200 for what jitr deliberately ignores (the reason is
//! in the body). The same logic serves `jitr serve` (axum) and `jitr lambda webhook`.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac};
use jitr_domain::{JobRef, StreamId};
use jitr_infra::Queue;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::app::policy::RunnerPolicy;

/// Largest body accepted by default (a `workflow_job` delivery is a few KB).
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// Delivery ids remembered for de-duplication.
const REMEMBERED_DELIVERIES: usize = 10_000;

/// A `workflow_job` event, as the queues carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    /// `X-GitHub-Delivery`.
    pub delivery: String,
    /// `queued`, `in_progress`, `completed`.
    pub action: String,
    /// GitHub App installation id.
    pub installation: u64,
    /// Repository owner.
    pub owner: String,
    /// Repository name.
    pub repo: String,
    /// `workflow_job.id`.
    pub job_id: u64,
    /// `workflow_job.run_id`.
    pub run_id: u64,
    /// `workflow_job.labels`.
    pub labels: Vec<String>,
    /// The runner that took the job (`in_progress`, `completed`).
    pub runner_name: Option<String>,
    /// `workflow_job.conclusion` (`completed`).
    pub conclusion: Option<String>,
    /// The runner attempt for this job (1 from webhooks; the rebalancer opens more).
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// Types whose spot market the runner does not try (an earlier attempt was
    /// reclaimed there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub avoid_spot: Vec<String>,
    /// GitHub's id of the runner the event names (`workflow_job.runner_id`):
    /// lifecycle events are authorised by it where the log recorded the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_id: Option<u64>,
}

impl JobMessage {
    /// The `queued` message of the job `request` was made for, as jitr itself
    /// sends it (`source` names the sender in its delivery id).
    pub fn for_runner(
        request: &jitr_domain::RunnerRequest,
        installation: u64,
        source: &str,
    ) -> JobMessage {
        let job = &request.job;
        JobMessage {
            delivery: format!(
                "{source}:{}/{}#{}#{}",
                job.owner, job.repo, job.job_id, request.attempt
            ),
            action: "queued".into(),
            installation,
            owner: job.owner.clone(),
            repo: job.repo.clone(),
            job_id: job.job_id,
            run_id: job.run_id,
            labels: request.labels.clone(),
            runner_name: None,
            conclusion: None,
            attempt: request.attempt,
            avoid_spot: request.spec.avoid_spot.clone(),
            runner_id: None,
        }
    }
}

fn first_attempt() -> u32 {
    1
}

#[derive(Deserialize)]
struct Owner {
    login: String,
}

#[derive(Deserialize)]
struct Repository {
    name: String,
    owner: Owner,
    /// GitHub's `repository.private` (required in its webhook schema).
    #[serde(default)]
    private: Option<bool>,
    /// `public`, `private` or `internal`, where GitHub sends it.
    #[serde(default)]
    visibility: Option<String>,
}

impl Repository {
    /// Whether anyone may push a pull request to it (a fork's runs arbitrary
    /// code): public, or not said to be private.
    fn is_public(&self) -> bool {
        match self.visibility.as_deref() {
            Some(v) => v.eq_ignore_ascii_case("public"),
            None => self.private != Some(true),
        }
    }
}

#[derive(Deserialize)]
struct Installation {
    id: u64,
}

#[derive(Deserialize)]
struct WorkflowJob {
    id: u64,
    run_id: u64,
    #[serde(default)]
    labels: Vec<String>,
    runner_name: Option<String>,
    #[serde(default)]
    runner_id: Option<u64>,
    conclusion: Option<String>,
}

#[derive(Deserialize)]
struct WorkflowJobEvent {
    action: String,
    workflow_job: WorkflowJob,
    repository: Repository,
    installation: Option<Installation>,
}

/// The headers the endpoint reads.
#[derive(Clone, Debug, Default)]
pub struct Delivery<'a> {
    /// `X-GitHub-Event`.
    pub event: Option<&'a str>,
    /// `X-GitHub-Delivery`.
    pub id: Option<&'a str>,
    /// `X-Hub-Signature-256`.
    pub signature: Option<&'a str>,
}

impl<'a> Delivery<'a> {
    /// The delivery's GitHub headers, looked up (case-insensitively, as HTTP
    /// header names are) with `header`.
    pub fn from_headers(header: impl Fn(&str) -> Option<&'a str>) -> Self {
        Delivery {
            event: header("x-github-event"),
            id: header("x-github-delivery"),
            signature: header("x-hub-signature-256"),
        }
    }
}

/// The answer to GitHub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// A short text saying what happened.
    pub body: String,
}

impl Reply {
    fn new(status: u16, body: impl Into<String>) -> Self {
        Reply {
            status,
            body: body.into(),
        }
    }
}

/// The webhook handler.
pub struct Webhook {
    secret: Vec<u8>,
    max_body: usize,
    policy: Arc<RunnerPolicy>,
    scaleup: Arc<dyn Queue>,
    lifecycle: Arc<dyn Queue>,
    seen: Mutex<(HashSet<String>, VecDeque<String>)>,
}

/// The `X-Hub-Signature-256` value GitHub sends for `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn signature_valid(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig.trim()) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&expected).is_ok()
}

impl Webhook {
    /// A handler verifying deliveries with `secret`.
    pub fn new(
        secret: impl Into<Vec<u8>>,
        max_body: usize,
        policy: Arc<RunnerPolicy>,
        scaleup: Arc<dyn Queue>,
        lifecycle: Arc<dyn Queue>,
    ) -> Self {
        Webhook {
            secret: secret.into(),
            max_body,
            policy,
            scaleup,
            lifecycle,
            seen: Mutex::default(),
        }
    }

    /// The body size limit.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Records a delivery id; `false` when it was seen already.
    fn first_delivery(&self, id: &str) -> bool {
        let mut guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (set, order) = &mut *guard;
        if !set.insert(id.to_owned()) {
            return false;
        }
        order.push_back(id.to_owned());
        if order.len() > REMEMBERED_DELIVERIES {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
        true
    }

    fn forget_delivery(&self, id: &str) {
        let mut guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.remove(id);
    }

    /// Handles one delivery.
    pub async fn handle(&self, delivery: Delivery<'_>, body: &[u8]) -> Reply {
        let reply = self.answer(delivery, body).await;
        if matches!(reply.status, 400 | 401 | 413) {
            crate::app::metrics::webhook_refused(wall_clock(), reply.status);
        }
        reply
    }

    async fn answer(&self, delivery: Delivery<'_>, body: &[u8]) -> Reply {
        if body.len() > self.max_body {
            return Reply::new(
                413,
                format!(
                    "body of {} bytes exceeds {} bytes",
                    body.len(),
                    self.max_body
                ),
            );
        }
        let Some(signature) = delivery.signature else {
            return Reply::new(401, "missing X-Hub-Signature-256");
        };
        if !signature_valid(&self.secret, body, signature) {
            return Reply::new(401, "bad signature");
        }
        match delivery.event {
            Some("workflow_job") => {}
            Some("ping") => return Reply::new(200, "pong"),
            Some(other) => return Reply::new(200, format!("ignored: event {other}")),
            None => return Reply::new(400, "missing X-GitHub-Event"),
        }
        let Some(id) = delivery.id.filter(|id| !id.is_empty()) else {
            return Reply::new(400, "missing X-GitHub-Delivery");
        };
        let event: WorkflowJobEvent = match serde_json::from_slice(body) {
            Ok(e) => e,
            Err(e) => return Reply::new(400, format!("malformed workflow_job payload: {e}")),
        };
        let queue = match event.action.as_str() {
            "queued" => &self.scaleup,
            "in_progress" | "completed" => &self.lifecycle,
            other => return Reply::new(200, format!("ignored: action {other}")),
        };
        let public = event.repository.is_public();
        let (owner, repo) = (event.repository.owner.login, event.repository.name);
        let job = JobRef {
            owner: owner.clone(),
            repo: repo.clone(),
            job_id: event.workflow_job.id,
            run_id: event.workflow_job.run_id,
        };
        if StreamId::for_job(&job, 1).is_err() {
            return Reply::new(
                400,
                format!(
                    "repository {owner:?}/{repo:?} is not named as GitHub names repositories \
                     (letters, digits, '-', '_', '.')"
                ),
            );
        }
        if !self.policy.allows(&owner, &repo) {
            return Reply::new(
                200,
                if self.policy.allowlist.is_empty() {
                    format!(
                        "ignored: {owner}/{repo}: only allow-listed repositories are served, and the allow-list is empty"
                    )
                } else {
                    format!("ignored: {owner}/{repo} is not in the allowlist")
                },
            );
        }
        if event.action == "queued"
            && public
            && !self.policy.serves_public(&event.workflow_job.labels)
        {
            // Trust by default: a public repository's jobs (a fork's pull
            // request among them) run only where the operator opted in.
            tracing::info!(%owner, %repo, "queued job of a public repository ignored");
            crate::app::metrics::public_ignored(wall_clock());
            return Reply::new(
                200,
                format!(
                    "ignored: {owner}/{repo} is public (serve public repositories with \
                     public_repositories = true on a pool, or JITR_PUBLIC_REPOSITORIES=true)"
                ),
            );
        }
        if event.action != "queued" {
            crate::app::metrics::job_left_queue(&job);
        }
        if event.action == "queued" && self.policy.spec_for(&event.workflow_job.labels).is_none() {
            tracing::info!(%owner, %repo, labels = ?event.workflow_job.labels, "queued job no pool serves");
            crate::app::metrics::no_pool(wall_clock());
            crate::app::metrics::job_unserved(&job, &event.workflow_job.labels, wall_clock());
            return Reply::new(
                200,
                format!(
                    "ignored: no pool serves labels {:?}",
                    event.workflow_job.labels
                ),
            );
        }
        if !self.first_delivery(id) {
            return Reply::new(200, format!("duplicate delivery {id}"));
        }
        let message = JobMessage {
            delivery: id.to_owned(),
            action: event.action,
            installation: event
                .installation
                .map_or(self.policy.installation_id, |i| i.id),
            owner,
            repo,
            job_id: event.workflow_job.id,
            run_id: event.workflow_job.run_id,
            labels: event.workflow_job.labels,
            runner_name: event.workflow_job.runner_name.filter(|n| !n.is_empty()),
            conclusion: event.workflow_job.conclusion,
            attempt: 1,
            avoid_spot: Vec::new(),
            runner_id: event.workflow_job.runner_id,
        };
        let body = if message.action == "queued" {
            crate::app::scaleup::ScaleUpMessage::Job(message.clone()).encode()
        } else {
            serde_json::to_string(&message).expect("a JobMessage serialises")
        };
        match queue.publish(&body, None, &[("delivery", id)]).await {
            Ok(_) => Reply::new(
                202,
                format!("{} job {} enqueued", message.action, message.job_id),
            ),
            Err(e) => {
                // Let GitHub redeliver: forget the id so the retry is not a duplicate.
                self.forget_delivery(id);
                tracing::error!(error = %e, delivery = id, "enqueue failed");
                Reply::new(503, "queue unavailable; redeliver later")
            }
        }
    }
}

/// A `workflow_job` delivery body shaped as GitHub sends it (the fields jitr reads,
/// plus the ones around them), for `jitr send-webhook` and tests.
pub fn sample_payload(
    action: &str,
    owner: &str,
    repo: &str,
    job_id: u64,
    labels: &[String],
    runner_name: Option<&str>,
) -> String {
    let status = match action {
        "in_progress" => "in_progress",
        "completed" => "completed",
        _ => "queued",
    };
    serde_json::json!({
        "action": action,
        "workflow_job": {
            "id": job_id,
            "run_id": job_id / 10 + 1,
            "run_attempt": 1,
            "name": "build",
            "status": status,
            "conclusion": if action == "completed" { Some("success") } else { None },
            "labels": labels,
            // The id GitHub gave the runner is not known to this sample:
            // null, so that jitr checks the name alone (as for a runner
            // minted before ids were recorded).
            "runner_id": null,
            "runner_name": runner_name,
            "runner_group_id": runner_name.map(|_| 1),
            "runner_group_name": runner_name.map(|_| "Default"),
            "head_sha": "0000000000000000000000000000000000000000",
            "workflow_name": "ci",
            "steps": []
        },
        "repository": {
            "id": 1,
            "name": repo,
            "full_name": format!("{owner}/{repo}"),
            "private": true,
            "owner": { "login": owner, "id": 1, "type": "Organization" }
        },
        "installation": { "id": 1 },
        "sender": { "login": "octocat", "id": 1, "type": "User" }
    })
    .to_string()
}

/// The moment, for metrics' timestamps only (the webhook decides nothing on it).
fn wall_clock() -> jitr_domain::Timestamp {
    jitr_domain::Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
    )
}
