//! What jitr launches for which job, and the deadlines and limits that apply.

use jitr_domain::{Deadlines, InstanceSpec};
use jitr_infra::RunnerScope;
use serde::{Deserialize, Serialize};

/// Jobs carrying all of `labels` get this instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelRule {
    /// Labels the job must carry (besides the required one).
    pub labels: Vec<String>,
    /// The instance.
    pub spec: InstanceSpec,
}

/// Where runners register.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Registration {
    /// In the job's repository.
    Repository,
    /// In an organization (runner groups apply).
    Organization {
        /// Organization login.
        org: String,
    },
}

/// The runner policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerPolicy {
    /// A job must carry this label for jitr to serve it.
    pub required_label: String,
    /// First matching rule wins; `default_spec` otherwise.
    pub rules: Vec<LabelRule>,
    /// The instance for jobs no rule matches.
    pub default_spec: InstanceSpec,
    /// Deadlines recorded in each runner's `Requested`.
    pub deadlines: Deadlines,
    /// Where runners register.
    pub registration: Registration,
    /// Runner group (1 is the default group).
    pub runner_group_id: u64,
    /// The runner's work folder.
    pub work_folder: String,
    /// The GitHub App installation (when a webhook does not name one).
    pub installation_id: u64,
    /// The deployment this jitr is (on AWS its `JITR_PREFIX`): it scopes runner
    /// names, launch tokens and registration sweeps, so that two deployments in
    /// one organisation or account never touch each other's runners. None: the
    /// unscoped names of earlier versions.
    pub deployment: Option<String>,
    /// Deliveries of one job before scale-up gives up (then `Failed` + DLQ).
    pub max_launch_attempts: u32,
    /// Repositories served (`owner/repo`); empty: all.
    pub allowlist: Vec<String>,
    /// The reaper leaves instances younger than this alone.
    pub reaper_grace_ms: u64,
    /// How often the reaper asks GitHub for the job of a ready or running runner
    /// (a lost `in_progress` or `completed` webhook is healed within this);
    /// 0: only before a boot-deadline or max-age termination.
    pub job_poll_interval_ms: u64,
    /// How long past a deadline a termination waits for GitHub to answer the
    /// job poll before it goes ahead unasked.
    pub job_poll_patience_ms: u64,
    /// The share (percent) of each installation's hourly GitHub rate limit that
    /// background work — the rebalancer's listings, periodic job polls — may
    /// spend; the rest is kept for minting runners.
    pub github_background_share_pct: u64,
    /// Instance profile, network, metadata hop limit, root volume and tags of
    /// every runner instance.
    pub launch: jitr_infra::LaunchSettings,
}

impl Default for RunnerPolicy {
    /// `self-hosted` jobs get a `c5.xlarge` (4 vCPU) from `ami-jitr-runner`; 10 min
    /// boot timeout, 6 h max age, 2 min drain grace; repository runners in the
    /// default group; 5 launch attempts; a 2-minute reaper grace; a job poll
    /// every 5 minutes, and up to 10 minutes' patience with GitHub past a deadline;
    /// background GitHub work within 20 % of each installation's rate limit.
    fn default() -> Self {
        RunnerPolicy {
            required_label: "self-hosted".into(),
            rules: Vec::new(),
            default_spec: InstanceSpec {
                instance_type: "c5.xlarge".into(),
                vcpus: 4,
                image: "ami-jitr-runner".into(),
            },
            deadlines: Deadlines::default(),
            registration: Registration::Repository,
            runner_group_id: 1,
            work_folder: "_work".into(),
            installation_id: 1,
            deployment: None,
            max_launch_attempts: 5,
            allowlist: Vec::new(),
            reaper_grace_ms: 120_000,
            job_poll_interval_ms: 300_000,
            job_poll_patience_ms: 600_000,
            github_background_share_pct: 20,
            launch: jitr_infra::LaunchSettings::default(),
        }
    }
}

impl RunnerPolicy {
    /// The instance for a job's labels; `None` when jitr does not serve the job.
    pub fn spec_for(&self, labels: &[String]) -> Option<InstanceSpec> {
        let has = |l: &str| labels.iter().any(|x| x.eq_ignore_ascii_case(l));
        if !has(&self.required_label) {
            return None;
        }
        Some(
            self.rules
                .iter()
                .find(|r| r.labels.iter().all(|l| has(l)))
                .map_or_else(|| self.default_spec.clone(), |r| r.spec.clone()),
        )
    }

    /// Whether the repository is served.
    pub fn allows(&self, owner: &str, repo: &str) -> bool {
        self.allowlist.is_empty()
            || self
                .allowlist
                .iter()
                .any(|a| a.eq_ignore_ascii_case(&format!("{owner}/{repo}")))
    }

    /// Whether the repository is named in the allowlist (an empty allowlist names
    /// none).
    pub fn allows_exactly(&self, owner: &str, repo: &str) -> bool {
        !self.allowlist.is_empty() && self.allows(owner, repo)
    }

    /// Whether a registered runner's `name` is one of this deployment's.
    pub fn names_runner(&self, name: &str) -> bool {
        let prefix = jitr_domain::runner_name_prefix(self.deployment.as_deref());
        match &self.deployment {
            Some(_) => name.starts_with(&prefix),
            // Unscoped names go on with the job id's digits.
            None => name
                .strip_prefix(&prefix)
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit())),
        }
    }

    /// The App installation whose token every GitHub call for this runner uses:
    /// the one its `Requested` records, else (logs written before it was
    /// recorded) [`RunnerPolicy::installation_id`].
    pub fn installation_for(&self, state: &jitr_domain::RunnerState) -> u64 {
        state
            .request
            .as_ref()
            .and_then(|r| r.installation)
            .map_or(self.installation_id, |i| i.0)
    }

    /// Why an event about a job in `owner/repo` that came through `installation`
    /// may not move the runner in `state`, if it may not: runner names are
    /// predictable, so an event naming one of jitr's runners must come from where
    /// that runner can take jobs — its repository, or its organisation when
    /// runners register there — and through the installation its job came
    /// through.
    pub fn refuses_event(
        &self,
        state: &jitr_domain::RunnerState,
        owner: &str,
        repo: &str,
        installation: u64,
    ) -> Option<String> {
        let request = state.request.as_ref()?;
        let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        let allowed = match self.scope_for(&request.job.owner, &request.job.repo) {
            RunnerScope::Repo { owner: o, repo: r } => same(&o, owner) && same(&r, repo),
            RunnerScope::Org { org } => same(&org, owner),
        };
        if !allowed {
            return Some(format!(
                "the runner serves {}/{}, the event is for {owner}/{repo}",
                request.job.owner, request.job.repo
            ));
        }
        match request.installation {
            Some(i) if i.0 != installation => Some(format!(
                "the runner came through installation {i}, the event through {installation}"
            )),
            _ => None,
        }
    }

    /// Where the runner of a job in `owner/repo` registers.
    pub fn scope_for(&self, owner: &str, repo: &str) -> RunnerScope {
        match &self.registration {
            Registration::Repository => RunnerScope::Repo {
                owner: owner.into(),
                repo: repo.into(),
            },
            Registration::Organization { org } => RunnerScope::Org { org: org.clone() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_choose_the_instance() {
        let mut policy = RunnerPolicy::default();
        policy.rules.push(LabelRule {
            labels: vec!["large".into()],
            spec: InstanceSpec {
                instance_type: "c5.4xlarge".into(),
                vcpus: 16,
                image: "ami-big".into(),
            },
        });
        let labels = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(policy.spec_for(&labels(&["ubuntu-latest"])), None);
        assert_eq!(
            policy
                .spec_for(&labels(&["self-hosted", "linux"]))
                .unwrap()
                .vcpus,
            4
        );
        assert_eq!(
            policy
                .spec_for(&labels(&["Self-Hosted", "large"]))
                .unwrap()
                .instance_type,
            "c5.4xlarge"
        );
    }

    #[test]
    fn the_allowlist_limits_repositories() {
        let mut p = RunnerPolicy::default();
        assert!(p.allows("acme", "widgets"));
        p.allowlist = vec!["acme/widgets".into()];
        assert!(p.allows("ACME", "widgets"));
        assert!(!p.allows("acme", "gadgets"));
    }
}
