//! Identities: runner streams, jobs, instances, launch tokens, and time.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::DomainError;

/// A moment, in milliseconds since the Unix epoch. The domain never reads a clock:
/// every moment is passed in by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// This moment plus `ms` milliseconds (saturating).
    pub fn plus_ms(self, ms: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)))
    }

    /// Milliseconds from `earlier` to `self`; zero when `earlier` is later.
    pub fn millis_since(self, earlier: Timestamp) -> u64 {
        u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0)
    }
}

/// A GitHub App installation: the organisation or account whose token every
/// GitHub call for a runner uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstallationId(pub u64);

impl fmt::Display for InstallationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The GitHub workflow job a runner is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JobRef {
    /// Repository owner (user or organization login).
    pub owner: String,
    /// Repository name.
    pub repo: String,
    /// `workflow_job.id`.
    pub job_id: u64,
    /// `workflow_job.run_id`.
    pub run_id: u64,
}

/// The job id of a warm runner's request (ADR-0022): GitHub's job ids start at
/// 1, so it names no job.
pub const WARM_JOB_ID: u64 = 0;

impl JobRef {
    /// The "job" a warm runner of `owner/repo` is requested for: none.
    pub fn warmth(owner: &str, repo: &str) -> JobRef {
        JobRef {
            owner: owner.to_owned(),
            repo: repo.to_owned(),
            job_id: WARM_JOB_ID,
            run_id: 0,
        }
    }

    /// Whether it names no job: a warm runner's.
    pub fn is_warmth(&self) -> bool {
        self.job_id == WARM_JOB_ID
    }
}

/// One runner attempt's event stream: `{owner}/{repo}#{job_id}#{attempt}`.
///
/// Deterministic, so a duplicate webhook for the same job lands on the same stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId(String);

impl StreamId {
    /// The stream of runner attempt `attempt` (from 1) for `job`; refused when the
    /// owner or repository is not a name GitHub gives (letters, digits, `-`, `_`,
    /// `.`), so that every stream id written can be parsed back.
    pub fn for_job(job: &JobRef, attempt: u32) -> Result<StreamId, DomainError> {
        StreamId::parse(&format!(
            "{}/{}#{}#{}",
            job.owner, job.repo, job.job_id, attempt
        ))
    }

    /// Parses and validates a stream id.
    pub fn parse(text: &str) -> Result<StreamId, DomainError> {
        let invalid = || DomainError::InvalidStreamId(text.to_owned());
        let mut parts = text.split('#');
        let (Some(repo), Some(job), Some(attempt), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let (owner, name) = repo.split_once('/').ok_or_else(invalid)?;
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !name_ok(owner) || !name_ok(name) {
            return Err(invalid());
        }
        job.parse::<u64>().map_err(|_| invalid())?;
        attempt.parse::<u32>().map_err(|_| invalid())?;
        Ok(StreamId(text.to_owned()))
    }

    /// The textual form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The workflow job id (the middle component).
    pub fn job_id(&self) -> u64 {
        self.0
            .split('#')
            .nth(1)
            .and_then(|j| j.parse().ok())
            .unwrap_or(0)
    }

    /// The name the runner registers with GitHub:
    /// `jitr-{job_id}-{attempt}-{6 hex digits of the stream id}`; short, unique per
    /// stream, and the same on every retry. The name of a runner of no named
    /// deployment (see [`StreamId::runner_name_in`]).
    pub fn runner_name(&self) -> String {
        self.runner_name_in(None)
    }

    /// The name the runner registers with GitHub in `deployment`:
    /// `jitr-d{8 hex of the deployment}-{job_id}-{attempt}-{6 hex of the
    /// deployment and stream}`. Two deployments in one organisation never share a
    /// name, and each recognises its own by [`runner_name_prefix`]. Without a
    /// deployment: [`StreamId::runner_name`]'s form (older runners).
    pub fn runner_name_in(&self, deployment: Option<&str>) -> String {
        let mut hasher = Sha256::new();
        if let Some(d) = deployment {
            hasher.update(d.as_bytes());
            hasher.update(b"#");
        }
        hasher.update(self.0.as_bytes());
        let digest = hasher.finalize();
        let hash: String = digest[..3].iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}{}-{}-{hash}",
            runner_name_prefix(deployment),
            self.job_id(),
            self.attempt()
        )
    }

    /// The runner attempt number (the last component).
    pub fn attempt(&self) -> u32 {
        self.0
            .rsplit('#')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or(0)
    }
}

impl TryFrom<String> for StreamId {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        StreamId::parse(&value)
    }
}

impl From<StreamId> for String {
    fn from(value: StreamId) -> Self {
        value.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A cloud instance id (`i-…` on EC2, `sim-…` in the local simulator).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstanceId(pub String);

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The idempotency token of one launch attempt (EC2 `ClientToken`, at most 64 ASCII
/// characters). Derived from the stream and the attempt number, so a retried
/// RunInstances can never start a second instance.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientToken(pub String);

/// What every runner name of `deployment` starts with: `jitr-d{8 hex of its
/// SHA-256}-`, or `jitr-` for runners of no named deployment (whose names go on
/// with the job id's digits, never with `d`).
pub fn runner_name_prefix(deployment: Option<&str>) -> String {
    match deployment {
        Some(d) => {
            let digest = Sha256::digest(d.as_bytes());
            let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
            format!("jitr-d{hex}-")
        }
        None => "jitr-".into(),
    }
}

impl ClientToken {
    /// The token of launch attempt `launch` (from 1) of `stream`, for a runner of
    /// no named deployment (see [`ClientToken::derive_in`]).
    pub fn derive(stream: &StreamId, launch: u32) -> ClientToken {
        ClientToken::derive_in(None, stream, launch)
    }

    /// The token of launch attempt `launch` of `stream` in `deployment`: EC2's
    /// idempotency is per account and region, so two deployments there must not
    /// derive the same token for the same job.
    pub fn derive_in(deployment: Option<&str>, stream: &StreamId, launch: u32) -> ClientToken {
        let mut hasher = Sha256::new();
        if let Some(d) = deployment {
            hasher.update(d.as_bytes());
            hasher.update(b"#deployment#");
        }
        let digest = hasher
            .chain_update(stream.as_str().as_bytes())
            .chain_update(b"#launch#")
            .chain_update(launch.to_be_bytes())
            .finalize();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        ClientToken(format!("jitr-{hex}"))
    }
}

impl fmt::Display for ClientToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobRef {
        JobRef {
            owner: "acme".into(),
            repo: "widgets".into(),
            job_id: 42,
            run_id: 7,
        }
    }

    #[test]
    fn stream_id_is_deterministic_and_parses_back() {
        let id = StreamId::for_job(&job(), 2).unwrap();
        assert_eq!(id.as_str(), "acme/widgets#42#2");
        assert_eq!(StreamId::parse(id.as_str()), Ok(id.clone()));
        assert_eq!(id.attempt(), 2);
        assert_eq!(id.job_id(), 42);
    }

    #[test]
    fn a_job_outside_githubs_names_has_no_stream() {
        for (owner, repo) in [
            ("ac me", "widgets"),
            ("acme", "wid#gets"),
            ("", "x"),
            ("a/b", "c"),
        ] {
            let job = JobRef {
                owner: owner.into(),
                repo: repo.into(),
                ..job()
            };
            assert!(matches!(
                StreamId::for_job(&job, 1),
                Err(DomainError::InvalidStreamId(_))
            ));
        }
    }

    #[test]
    fn malformed_stream_ids_are_refused() {
        for bad in [
            "",
            "acme#1#1",
            "acme/widgets#x#1",
            "acme/widgets#1",
            "acme/wid gets#1#1",
            "acme/widgets#1#1#1",
        ] {
            assert_eq!(
                StreamId::parse(bad),
                Err(DomainError::InvalidStreamId(bad.into()))
            );
        }
    }

    #[test]
    fn runner_names_are_short_stable_and_distinct() {
        let a = StreamId::for_job(&job(), 1).unwrap();
        let b = StreamId::for_job(&job(), 2).unwrap();
        assert_eq!(a.runner_name(), a.runner_name());
        assert_ne!(a.runner_name(), b.runner_name());
        assert!(a.runner_name().starts_with("jitr-42-1-"));
        assert!(a.runner_name().len() <= 64);
    }

    #[test]
    fn client_tokens_differ_per_attempt_and_fit_ec2() {
        let id = StreamId::for_job(&job(), 1).unwrap();
        let a = ClientToken::derive(&id, 1);
        let b = ClientToken::derive(&id, 2);
        assert_ne!(a, b);
        assert_eq!(a, ClientToken::derive(&id, 1));
        assert!(a.0.len() <= 64 && a.0.is_ascii());
    }

    #[test]
    fn deployments_scope_runner_names_and_tokens() {
        let id = StreamId::for_job(&job(), 1).unwrap();
        let (prod, staging) = (Some("prod"), Some("staging"));
        assert_ne!(id.runner_name_in(prod), id.runner_name_in(staging));
        assert_ne!(id.runner_name_in(prod), id.runner_name());
        assert_eq!(id.runner_name_in(None), id.runner_name());
        let name = id.runner_name_in(prod);
        assert!(name.starts_with(&runner_name_prefix(prod)), "{name}");
        assert!(!name.starts_with(&runner_name_prefix(staging)));
        assert!(name.len() <= 64, "{name}");
        // Unscoped names go on with digits; scoped ones with `d`: never confused.
        assert!(runner_name_prefix(prod).starts_with("jitr-d"));
        assert!(id.runner_name()["jitr-".len()..].starts_with(|c: char| c.is_ascii_digit()));
        assert_ne!(
            ClientToken::derive_in(prod, &id, 1),
            ClientToken::derive_in(staging, &id, 1)
        );
        assert_eq!(
            ClientToken::derive_in(None, &id, 1),
            ClientToken::derive(&id, 1)
        );
    }
}
