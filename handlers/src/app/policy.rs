//! What jitr launches for which job, and the deadlines and limits that apply.

use jitr_domain::{Deadlines, InstanceSpec};
use jitr_infra::RunnerScope;
use serde::{Deserialize, Serialize};

/// The label every jitr runner has, whether a pool names it or not.
pub const SELF_HOSTED: &str = "self-hosted";

pub use jitr_infra::Architecture;

/// Where a pool's runners register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolScope {
    /// In the job's repository.
    Repository,
    /// In the job's organisation (its owner), where runner groups apply.
    Organization,
}

/// A runner pool: the jobs it serves and how its instances are launched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    /// Its name (recorded in each of its runners' `Requested`).
    pub name: String,
    /// The labels its runners have besides `self-hosted`: it serves a job all of
    /// whose labels are among them.
    pub labels: Vec<String>,
    /// Instance types, in order of preference.
    pub instance_types: Vec<String>,
    /// The instance requested: the first type, its vCPUs, the image.
    pub spec: InstanceSpec,
    /// The image's architecture.
    pub architecture: Architecture,
    /// Whether spot is tried first (else on-demand only).
    pub spot: bool,
    /// Where its runners register (none: the deployment's registration).
    pub scope: Option<PoolScope>,
    /// The organisation runner group its runners join, by name (resolved to its
    /// id through GitHub's API); none: the deployment's group.
    pub runner_group: Option<String>,
    /// vCPUs its instances may hold at once (none: no budget besides the
    /// account's quotas); a launch that would exceed it waits.
    pub max_vcpus: Option<u32>,
    /// Where its image has the Actions runner (none: the deployment's).
    pub runner_dir: Option<String>,
    /// Where its instances download the runner, and the archive's SHA-256
    /// (none: the deployment's setting).
    pub runner_download: Option<(String, String)>,
    /// Whether its runner user may `sudo` without a password (default: no).
    pub runner_sudo: bool,
    /// Whether it serves public repositories' jobs (default: no; a fork's
    /// pull request runs arbitrary code on its instances).
    pub public_repositories: bool,
    /// Profile, network, metadata, volume and tags of its instances.
    pub launch: jitr_infra::LaunchSettings,
    /// The runners it keeps warm (ADR-0022; none by default).
    #[serde(skip)]
    pub warm: Warmth,
}

/// A pool's warm capacity (ADR-0022): idle runners kept registered with no
/// job, so that a job starts without waiting for a boot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Warmth {
    /// How many, and when.
    pub schedule: jitr_domain::WarmSchedule,
    /// How long a ready runner beyond the floor stays before it is retired
    /// (none: the deployment's retire grace).
    pub max_idle_ms: Option<u64>,
    /// The repository (owner, name) whose runners the warm ones are: they
    /// register where its jobs' runners would (the repository, or its
    /// organisation for an organisation pool).
    pub warm_for: Option<(String, String)>,
    /// The floor is kept parked: instances booted once and stopped, started
    /// when a job wants one (`warm_state = "stopped"`).
    pub stopped: bool,
}

impl Pool {
    /// Whether the pool serves a job with `labels`: each one (but
    /// `self-hosted`) is one of the pool's, in any letter case.
    pub fn serves(&self, labels: &[String]) -> bool {
        labels.iter().all(|label| {
            label.eq_ignore_ascii_case(SELF_HOSTED)
                || self.labels.iter().any(|l| l.eq_ignore_ascii_case(label))
        })
    }

    /// The pool jitr serves without a configuration file: `linux`/`x64` jobs
    /// on a `c5.xlarge` (4 vCPUs) from `ami-jitr-runner`.
    pub fn default_pool() -> Pool {
        Pool {
            name: "default".into(),
            labels: vec!["linux".into(), "x64".into()],
            instance_types: vec!["c5.xlarge".into()],
            spec: InstanceSpec {
                instance_type: "c5.xlarge".into(),
                vcpus: 4,
                image: "ami-jitr-runner".into(),
                pool: None,
                avoid_spot: Vec::new(),
                park: false,
            },
            architecture: Architecture::X86_64,
            spot: true,
            scope: None,
            runner_group: None,
            max_vcpus: None,
            runner_dir: None,
            runner_download: None,
            runner_sudo: false,
            public_repositories: false,
            launch: jitr_infra::LaunchSettings::default(),
            warm: Warmth::default(),
        }
    }

    /// What the pool keeps of its untaken runners at `now`: its warm floor,
    /// and how long a ready runner beyond it stays (`grace_ms` unless the pool
    /// says `max_idle_minutes`).
    pub fn floor_at(&self, now: jitr_domain::Timestamp, grace_ms: u64) -> jitr_domain::PoolFloor {
        jitr_domain::PoolFloor {
            min_idle: self.warm.schedule.min_idle_at(now) as usize,
            idle_grace_ms: self.warm.max_idle_ms.unwrap_or(grace_ms),
            stopped: self.warm.stopped,
        }
    }
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
    /// The runner pools; the first that serves a job's labels takes it.
    pub pools: Vec<Pool>,
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
    /// Repositories served (`owner/repo`); empty: all, unless
    /// [`RunnerPolicy::allowlist_only`].
    pub allowlist: Vec<String>,
    /// Serve only the allow-listed repositories: an empty allow-list serves
    /// none (`JITR_ALLOWLIST_ONLY`).
    pub allowlist_only: bool,
    /// Serve public repositories' jobs on every pool (`JITR_PUBLIC_REPOSITORIES`);
    /// otherwise only on pools with `public_repositories = true`.
    pub public_repositories: bool,
    /// The reaper leaves instances younger than this alone.
    pub reaper_grace_ms: u64,
    /// How long a surplus runner stays ready before it is retired
    /// (deregister-first): an `in_progress` on its way may still arrive.
    pub retire_grace_ms: u64,
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
    /// The user data runner instances boot with (none: the simulator's, which
    /// needs none).
    pub bootstrap: Option<crate::app::bootstrap::Bootstrap>,
    /// Configured vCPU quotas per market (the pool file's `[quotas]`); a
    /// market not named is learnt from EC2's refusals (ADR-0014).
    pub quotas: Vec<(jitr_domain::Market, u32)>,
}

impl Default for RunnerPolicy {
    /// `self-hosted` jobs get a `c5.xlarge` (4 vCPU) from `ami-jitr-runner`; 10 min
    /// boot timeout, 6 h max age, 2 min drain grace; repository runners in the
    /// default group; 5 launch attempts; a 2-minute reaper grace; a job poll
    /// every 5 minutes, and up to 10 minutes' patience with GitHub past a deadline;
    /// background GitHub work within 20 % of each installation's rate limit.
    fn default() -> Self {
        RunnerPolicy {
            pools: vec![Pool::default_pool()],
            deadlines: Deadlines::default(),
            registration: Registration::Repository,
            runner_group_id: 1,
            work_folder: "_work".into(),
            installation_id: 1,
            deployment: None,
            allowlist: Vec::new(),
            allowlist_only: false,
            public_repositories: false,
            reaper_grace_ms: 120_000,
            retire_grace_ms: jitr_domain::DEFAULT_RETIRE_GRACE_MS,
            job_poll_interval_ms: 300_000,
            job_poll_patience_ms: 600_000,
            github_background_share_pct: 20,
            bootstrap: None,
            quotas: Vec::new(),
        }
    }
}

impl RunnerPolicy {
    /// The pool that serves a job with `labels`: the first whose labels hold
    /// all of the job's; `None` when no pool does.
    pub fn pool_for(&self, labels: &[String]) -> Option<&Pool> {
        self.pools.iter().find(|p| p.serves(labels))
    }

    /// The instance for a job's labels, naming its pool; `None` when no pool
    /// serves the job.
    pub fn spec_for(&self, labels: &[String]) -> Option<InstanceSpec> {
        self.pool_for(labels).map(|p| InstanceSpec {
            pool: Some(p.name.clone()),
            ..p.spec.clone()
        })
    }

    /// The pool a runner was requested from (by the name its `Requested`
    /// records, else by its labels); `None` when the configuration no longer has
    /// one that serves it.
    pub fn pool_of(&self, request: &jitr_domain::RunnerRequest) -> Option<&Pool> {
        request
            .spec
            .pool
            .as_ref()
            .and_then(|name| self.pools.iter().find(|p| &p.name == name))
            .or_else(|| self.pool_for(&request.labels))
    }

    /// Whether the repository is served.
    pub fn allows(&self, owner: &str, repo: &str) -> bool {
        (self.allowlist.is_empty() && !self.allowlist_only)
            || self
                .allowlist
                .iter()
                .any(|a| a.eq_ignore_ascii_case(&format!("{owner}/{repo}")))
    }

    /// Whether a public repository's job with `labels` is served: the
    /// deployment opted in, or the pool that would serve it did.
    pub fn serves_public(&self, labels: &[String]) -> bool {
        self.public_repositories || self.pool_for(labels).is_some_and(|p| p.public_repositories)
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
        let allowed = match self.scope_of(request) {
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

    /// Where a runner registers: as its pool says, else as the deployment does.
    pub fn scope_of(&self, request: &jitr_domain::RunnerRequest) -> RunnerScope {
        let (owner, repo) = (&request.job.owner, &request.job.repo);
        match self.pool_of(request).and_then(|p| p.scope) {
            Some(PoolScope::Repository) => RunnerScope::Repo {
                owner: owner.clone(),
                repo: repo.clone(),
            },
            Some(PoolScope::Organization) => RunnerScope::Org { org: owner.clone() },
            None => self.scope_for(owner, repo),
        }
    }

    /// Where the runner of a job in `owner/repo` registers by the deployment's
    /// registration (a pool may say otherwise: [`RunnerPolicy::scope_of`]).
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
    fn the_first_pool_holding_all_of_a_jobs_labels_serves_it() {
        let labels = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let pool = |name: &str, l: &[&str], vcpus: u32| Pool {
            name: name.into(),
            labels: labels(l),
            spec: InstanceSpec {
                vcpus,
                ..Pool::default_pool().spec
            },
            ..Pool::default_pool()
        };
        let policy = RunnerPolicy {
            pools: vec![
                pool("arm", &["linux", "arm64"], 4),
                pool("big", &["linux", "x64", "large"], 16),
                pool("x64", &["linux", "x64"], 4),
            ],
            ..RunnerPolicy::default()
        };
        let name = |l: &[&str]| policy.pool_for(&labels(l)).map(|p| p.name.as_str());
        assert_eq!(name(&["self-hosted", "linux", "arm64"]), Some("arm"));
        assert_eq!(name(&["self-hosted", "Linux", "X64"]), Some("big"));
        assert_eq!(name(&["self-hosted", "linux", "x64", "large"]), Some("big"));
        assert_eq!(name(&["self-hosted"]), Some("arm"));
        assert_eq!(name(&["self-hosted", "gpu"]), None);
        assert_eq!(name(&["ubuntu-latest"]), None);
        let spec = policy.spec_for(&labels(&["linux", "large"])).unwrap();
        assert_eq!((spec.pool.as_deref(), spec.vcpus), (Some("big"), 16));
    }

    proptest::proptest! {
        /// A job's labels select exactly one pool or none: the first pool that
        /// has every one of them (`self-hosted` aside, any letter case); no
        /// earlier pool has them all; none means no pool has them all.
        #[test]
        fn a_jobs_labels_select_the_first_pool_that_has_them_all(
            pools in proptest::collection::vec(
                proptest::collection::vec("(linux|x64|arm64|gpu|large)", 0..4), 1..5),
            job in proptest::collection::vec("(self-hosted|Linux|linux|x64|ARM64|gpu|large|windows)", 1..4),
        ) {
            let policy = RunnerPolicy {
                pools: pools
                    .iter()
                    .enumerate()
                    .map(|(i, labels)| Pool {
                        name: format!("p{i}"),
                        labels: labels.clone(),
                        ..Pool::default_pool()
                    })
                    .collect(),
                ..RunnerPolicy::default()
            };
            let has_all = |labels: &[String]| {
                job.iter().all(|l| {
                    l.eq_ignore_ascii_case("self-hosted")
                        || labels.iter().any(|p| p.eq_ignore_ascii_case(l))
                })
            };
            match policy.pool_for(&job) {
                Some(pool) => {
                    let i: usize = pool.name[1..].parse().unwrap();
                    proptest::prop_assert!(has_all(&pools[i]));
                    proptest::prop_assert!(pools[..i].iter().all(|p| !has_all(p)));
                }
                None => proptest::prop_assert!(pools.iter().all(|p| !has_all(p))),
            }
        }
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
