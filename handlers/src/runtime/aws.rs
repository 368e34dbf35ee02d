//! The AWS deployment's wiring, from environment variables (the same for
//! `jitr serve --aws` and every `jitr lambda` handler).
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `JITR_PREFIX` | resource name prefix (as `jitr init --prefix`) | `jitr` |
//! | `JITR_WEBHOOK_SECRET_PARAMETER` | SSM SecureString holding the App's webhook secret, read at start (Lambda: never the secret itself in the environment) | required for the webhook, or `JITR_WEBHOOK_SECRET` |
//! | `JITR_WEBHOOK_SECRET` | the webhook secret itself (local `serve --aws`) | |
//! | `JITR_GITHUB_APP_ID` | GitHub App id (JWT issuer) | required |
//! | `JITR_GITHUB_PRIVATE_KEY_PARAMETER` | SSM SecureString holding the App's PEM key, read at start | one of the three |
//! | `JITR_GITHUB_PRIVATE_KEY` or `JITR_GITHUB_PRIVATE_KEY_FILE` | the App's PEM key, or its file (local use) | one of the three |
//! | `JITR_GITHUB_WITHOUT_KEY` | `1`: this function holds no App key and calls no GitHub API (the webhook, the projector); any call is refused | unset |
//! | `JITR_GITHUB_API` | API base (GHES: `https://HOST/api/v3`) | `https://api.github.com` |
//! | `JITR_INSTALLATION_ID` | App installation | `1` |
//! | `JITR_IMAGE`, `JITR_INSTANCE_TYPE`, `JITR_VCPUS` | default runner instance | `ami-jitr-runner`, `c5.xlarge`, `4` |
//! | `JITR_SUBNETS` | comma-separated subnets to spread launches over | EC2's default |
//! | `JITR_SSM_PREFIX` | where JIT configs are handed over | `/jitr/runners` |
//! | `JITR_ALLOWLIST` | comma-separated `owner/repo` served | all |

use std::sync::Arc;
use std::time::Duration;

use jitr_aws::{
    AwsNames, AwsSettings, DynamoEventStore, Ec2Compute, EventBridgeBus, SqsQueue, SsmSecrets,
};
use jitr_infra::{GitHub, GitHubApp, GitHubAppConfig, NoGitHub, Queue};
use thiserror::Error;

use crate::app::policy::RunnerPolicy;
use crate::app::{App, Ports};

/// The AWS deployment could not be wired.
#[derive(Debug, Error)]
pub enum SetupError {
    /// A required variable is unset.
    #[error("{0} is not set: {1}")]
    Missing(&'static str, &'static str),
    /// A variable is set to something unusable.
    #[error("{0}: {1}")]
    Invalid(&'static str, String),
    /// A resource `jitr init` creates is missing.
    #[error("{0} does not exist: run `jitr init --prefix {1}`")]
    NotInitialised(String, String),
    /// AWS answered with an error.
    #[error("{0}")]
    Aws(String),
}

/// The application wired to one AWS deployment.
pub struct AwsApp {
    /// Resource names.
    pub names: AwsNames,
    /// The application over DynamoDB, EC2, SQS, EventBridge, SSM and the GitHub App.
    pub app: App,
    /// Whether a webhook secret was given (`JITR_WEBHOOK_SECRET_PARAMETER` or
    /// `JITR_WEBHOOK_SECRET`; the webhook cannot verify anything
    /// without it).
    pub has_webhook_secret: bool,
}

fn var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A secret named by `{variable}_PARAMETER` (an SSM SecureString, read and
/// decrypted now), or given in `variable` itself (local use). Both: refused,
/// as the operator meant one of them.
async fn secret(
    sdk: &jitr_aws::SdkConfig,
    variable: &'static str,
    parameter_variable: &'static str,
) -> Result<Option<String>, SetupError> {
    match (var(parameter_variable), var(variable)) {
        (Some(_), Some(_)) => Err(SetupError::Invalid(
            parameter_variable,
            format!("set with {variable}: name the parameter or give the value, not both"),
        )),
        (Some(name), None) => jitr_aws::read_parameter(sdk, &name)
            .await
            .map(Some)
            .map_err(|e| SetupError::Invalid(parameter_variable, format!("{name}: {e}"))),
        (None, value) => Ok(value),
    }
}

/// The GitHub App client, or [`NoGitHub`] for a function given no key (the
/// webhook and the projector call no GitHub API: ADR-0018).
async fn github_from_env(sdk: &jitr_aws::SdkConfig) -> Result<Arc<dyn GitHub>, SetupError> {
    let no_key = [
        "JITR_GITHUB_PRIVATE_KEY_PARAMETER",
        "JITR_GITHUB_PRIVATE_KEY",
        "JITR_GITHUB_PRIVATE_KEY_FILE",
    ]
    .iter()
    .all(|v| var(v).is_none());
    if no_key && var("JITR_GITHUB_WITHOUT_KEY").as_deref() == Some("1") {
        return Ok(Arc::new(NoGitHub));
    }
    let app_id = var("JITR_GITHUB_APP_ID").ok_or(SetupError::Missing(
        "JITR_GITHUB_APP_ID",
        "the GitHub App's id, from its settings page",
    ))?;
    let key = match (
        secret(
            sdk,
            "JITR_GITHUB_PRIVATE_KEY",
            "JITR_GITHUB_PRIVATE_KEY_PARAMETER",
        )
        .await?,
        var("JITR_GITHUB_PRIVATE_KEY_FILE"),
    ) {
        (Some(pem), _) => pem,
        (None, Some(path)) => std::fs::read_to_string(&path).map_err(|e| {
            SetupError::Invalid("JITR_GITHUB_PRIVATE_KEY_FILE", format!("{path}: {e}"))
        })?,
        (None, None) => {
            return Err(SetupError::Missing(
                "JITR_GITHUB_PRIVATE_KEY_PARAMETER",
                "the SSM SecureString holding the GitHub App's private key (PEM); locally JITR_GITHUB_PRIVATE_KEY or JITR_GITHUB_PRIVATE_KEY_FILE",
            ));
        }
    };
    let app = GitHubApp::new(GitHubAppConfig {
        app_id,
        private_key_pem: key,
        api_base: var("JITR_GITHUB_API").unwrap_or_else(|| jitr_infra::GITHUB_API.into()),
        max_rate_limit_wait: Duration::from_secs(60),
    })
    .map_err(|e| SetupError::Invalid("JITR_GITHUB_PRIVATE_KEY", e.to_string()))?;
    Ok(Arc::new(jitr_infra::PacedGitHub::new(
        Arc::new(app),
        jitr_infra::system_clock(),
    )))
}

/// The runner bootstrap from the environment: `JITR_RUNNER_DIR`,
/// `JITR_RUNNER_USER`, and `JITR_RUNNER_URL` with `JITR_RUNNER_SHA256` when the
/// image lacks the runner.
pub fn bootstrap_from_env(
    ssm_prefix: String,
) -> Result<crate::app::bootstrap::Bootstrap, SetupError> {
    let mut bootstrap = crate::app::bootstrap::Bootstrap {
        ssm_prefix,
        ..Default::default()
    };
    if let Some(dir) = var("JITR_RUNNER_DIR") {
        bootstrap.runner_dir = dir;
    }
    if let Some(user) = var("JITR_RUNNER_USER") {
        bootstrap.runner_user = user;
    }
    bootstrap.runner_download = match (var("JITR_RUNNER_URL"), var("JITR_RUNNER_SHA256")) {
        (None, None) => None,
        (Some(url), Some(sha)) if sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()) => {
            Some((url, sha.to_lowercase()))
        }
        (Some(_), _) => {
            return Err(SetupError::Invalid(
                "JITR_RUNNER_SHA256",
                "the runner download needs the archive's SHA-256 (64 hex digits)".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(SetupError::Invalid(
                "JITR_RUNNER_URL",
                "JITR_RUNNER_SHA256 is set without the URL it checks".into(),
            ));
        }
    };
    Ok(bootstrap)
}

/// The text of the pool configuration `JITR_CONFIG` names: a file's path, or an
/// SSM parameter's name (`/…`, or `ssm:/…`) when no such file exists — a Lambda
/// function reads its pools from the parameter store.
pub async fn pool_config_text(
    sdk: &jitr_aws::SdkConfig,
    source: &str,
) -> Result<String, SetupError> {
    if std::path::Path::new(source).is_file() {
        return std::fs::read_to_string(source)
            .map_err(|e| SetupError::Invalid("JITR_CONFIG", format!("{source}: {e}")));
    }
    let name = source.strip_prefix("ssm:").unwrap_or(source);
    if !name.starts_with('/') {
        return Err(SetupError::Invalid(
            "JITR_CONFIG",
            format!("{source}: no such file (an SSM parameter name starts with '/')"),
        ));
    }
    jitr_aws::read_parameter(sdk, name).await.map_err(|e| {
        SetupError::Invalid(
            "JITR_CONFIG",
            format!("{source}: neither a file nor a readable SSM parameter: {e}"),
        )
    })
}

/// The policy from the environment (defaults otherwise), with the pool
/// configuration's source and text when `JITR_CONFIG` names one.
pub fn policy_from_env(pools: Option<(String, String)>) -> Result<RunnerPolicy, SetupError> {
    policy_from(pools, var)
}

/// [`policy_from_env`] with the variables read through `var`.
pub fn policy_from(
    pools: Option<(String, String)>,
    var: impl Fn(&'static str) -> Option<String>,
) -> Result<RunnerPolicy, SetupError> {
    let mut policy = RunnerPolicy::default();
    if let Some((source, text)) = pools {
        let config = crate::app::pools::parse(&text)
            .map_err(|e| SetupError::Invalid("JITR_CONFIG", format!("{source}:{e}")))?;
        for warning in &config.warnings {
            tracing::warn!(%source, "{warning}");
        }
        policy.pools = config.pools;
        policy.quotas = config.quotas;
        for pinned in [
            "JITR_IMAGE",
            "JITR_INSTANCE_TYPE",
            "JITR_VCPUS",
            "JITR_PUBLIC_IP",
        ] {
            if var(pinned).is_some() {
                return Err(SetupError::Invalid(
                    pinned,
                    "set with JITR_CONFIG: the pools in the file say what to launch".into(),
                ));
            }
        }
    }
    // Without a pool configuration, these shape the one default pool.
    let default = &mut policy.pools[0];
    if let Some(image) = var("JITR_IMAGE") {
        default.spec.image = image;
    }
    if let Some(public) = flag(&var, "JITR_PUBLIC_IP")? {
        default.launch.public_ip = public;
    }
    if let Some(t) = var("JITR_INSTANCE_TYPE") {
        default.spec.instance_type = t.clone();
        default.instance_types = vec![t];
    }
    if let Some(v) = var("JITR_VCPUS") {
        default.spec.vcpus = v
            .parse()
            .map_err(|_| SetupError::Invalid("JITR_VCPUS", format!("{v:?} is not a number")))?;
    }
    if let Some(only) = flag(&var, "JITR_ALLOWLIST_ONLY")? {
        policy.allowlist_only = only;
    }
    if let Some(public) = flag(&var, "JITR_PUBLIC_REPOSITORIES")? {
        policy.public_repositories = public;
    }
    if let Some(list) = var("JITR_ALLOWLIST") {
        policy.allowlist = list
            .split(',')
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty())
            .collect();
    }
    if let Some(w) = var("JITR_CONSISTENCY_WINDOW_SECS") {
        let secs: u64 = w.parse().map_err(|_| {
            SetupError::Invalid(
                "JITR_CONSISTENCY_WINDOW_SECS",
                format!("{w:?} is not a number"),
            )
        })?;
        if secs * 1000 < jitr_domain::DEFAULT_CONSISTENCY_WINDOW_MS {
            return Err(SetupError::Invalid(
                "JITR_CONSISTENCY_WINDOW_SECS",
                format!("{secs} s is shorter than EC2's eventual consistency allows; at least 120"),
            ));
        }
        policy.deadlines.consistency_window_ms = secs * 1000;
    }
    if let Some(p) = var("JITR_JOB_POLL_SECS") {
        let secs: u64 = p.parse().map_err(|_| {
            SetupError::Invalid("JITR_JOB_POLL_SECS", format!("{p:?} is not a number"))
        })?;
        policy.job_poll_interval_ms = secs * 1000;
    }
    if let Some(p) = var("JITR_RETIRE_GRACE_SECS") {
        let secs: u64 = p.parse().map_err(|_| {
            SetupError::Invalid("JITR_RETIRE_GRACE_SECS", format!("{p:?} is not a number"))
        })?;
        policy.retire_grace_ms = secs * 1000;
    }
    if let Some(p) = var("JITR_GITHUB_BACKGROUND_SHARE") {
        let pct: u64 = p
            .trim_end_matches('%')
            .parse()
            .ok()
            .filter(|pct| (1..=100).contains(pct))
            .ok_or_else(|| {
                SetupError::Invalid(
                    "JITR_GITHUB_BACKGROUND_SHARE",
                    format!("{p:?} is not a percentage from 1 to 100"),
                )
            })?;
        policy.github_background_share_pct = pct;
    }
    // The launch settings below are defaults: a pool that sets its own (in
    // the pool file) keeps it.
    if let Some(profile) = var("JITR_INSTANCE_PROFILE") {
        for pool in &mut policy.pools {
            pool.launch
                .instance_profile
                .get_or_insert_with(|| profile.clone());
        }
    }
    if let Some(groups) = var("JITR_SECURITY_GROUPS") {
        let groups: Vec<String> = groups
            .split(',')
            .map(|g| g.trim().to_owned())
            .filter(|g| !g.is_empty())
            .collect();
        for pool in policy
            .pools
            .iter_mut()
            .filter(|p| p.launch.security_groups.is_empty())
        {
            pool.launch.security_groups.clone_from(&groups);
        }
    }
    if let Some(h) = var("JITR_METADATA_HOP_LIMIT") {
        let hops = h
            .parse()
            .ok()
            .filter(|h| (1..=64).contains(h))
            .ok_or_else(|| {
                SetupError::Invalid(
                    "JITR_METADATA_HOP_LIMIT",
                    format!("{h:?} is not a hop limit from 1 to 64"),
                )
            })?;
        let default = jitr_infra::LaunchSettings::default().metadata_hop_limit;
        for pool in policy
            .pools
            .iter_mut()
            .filter(|p| p.launch.metadata_hop_limit == default)
        {
            pool.launch.metadata_hop_limit = hops;
        }
    }
    if let Some(g) = var("JITR_ROOT_VOLUME_GIB") {
        let gib = g.parse().map_err(|_| {
            SetupError::Invalid("JITR_ROOT_VOLUME_GIB", format!("{g:?} is not a number"))
        })?;
        for pool in &mut policy.pools {
            pool.launch.root_volume_gib.get_or_insert(gib);
        }
    }
    if let Some(t) = var("JITR_RUNNER_TAGS") {
        let tags = runner_tags(&t)?;
        for pool in &mut policy.pools {
            for (key, value) in &tags {
                pool.launch
                    .tags
                    .entry(key.clone())
                    .or_insert_with(|| value.clone());
            }
        }
    }
    if let Some(i) = var("JITR_INSTALLATION_ID") {
        policy.installation_id = i.parse().map_err(|_| {
            SetupError::Invalid("JITR_INSTALLATION_ID", format!("{i:?} is not a number"))
        })?;
    }
    Ok(policy)
}

/// A `true`/`false` variable, if set.
fn flag(
    var: &impl Fn(&'static str) -> Option<String>,
    name: &'static str,
) -> Result<Option<bool>, SetupError> {
    match var(name).as_deref() {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => Err(SetupError::Invalid(
            name,
            format!("{other:?} is neither true nor false"),
        )),
    }
}

/// The deployment's tags for every instance and volume jitr launches
/// (`key=value,key=value`), under each pool's own.
fn runner_tags(text: &str) -> Result<Vec<(String, String)>, SetupError> {
    let invalid = |why: String| SetupError::Invalid("JITR_RUNNER_TAGS", why);
    text.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| invalid(format!("{pair:?} is not key=value")))?;
            let key = key.trim();
            if key.is_empty() || key.len() > 128 || value.len() > 256 {
                return Err(invalid(format!(
                    "{pair:?}: EC2 tag keys are 1-128 characters, values up to 256"
                )));
            }
            if key.starts_with("jitr:") || key == "managed-by" || key.starts_with("aws:") {
                return Err(invalid(format!("{key:?} is jitr's or AWS's own tag")));
            }
            Ok((key.to_owned(), value.trim().to_owned()))
        })
        .collect()
}

/// Wires the AWS deployment whose resources are named from `prefix`.
pub async fn from_env(settings: AwsSettings, prefix: &str) -> Result<AwsApp, SetupError> {
    let config = settings.load().await;
    let names = AwsNames::new(prefix);
    let find = |name: String| {
        let config = config.clone();
        let prefix = names.prefix().to_owned();
        async move {
            SqsQueue::find(&config, &name)
                .await
                .map_err(|e| SetupError::Aws(e.to_string()))?
                .map(|q| Arc::new(q) as Arc<dyn Queue>)
                .ok_or(SetupError::NotInitialised(format!("queue {name}"), prefix))
        }
    };
    let subnets = var("JITR_SUBNETS")
        .map(|s| {
            s.split(',')
                .map(|x| x.trim().to_owned())
                .filter(|x| !x.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let ssm_prefix = var("JITR_SSM_PREFIX").unwrap_or_else(|| "/jitr/runners".into());
    let ports = Ports {
        store: Arc::new(DynamoEventStore::new(&config, names.events_table())),
        compute: Arc::new(Ec2Compute::new(&config, subnets).with_deployment(names.prefix())),
        github: github_from_env(&config).await?,
        secrets: Arc::new(SsmSecrets::new(&config, ssm_prefix.clone())),
        scaleup_queue: find(names.scaleup_queue()).await?,
        lifecycle_queue: find(names.lifecycle_queue()).await?,
        compensation_queue: find(names.compensation_queue()).await?,
        ec2_events_queue: find(names.ec2_events_queue()).await?,
        bus: Arc::new(EventBridgeBus::new(&config, names.bus())),
    };
    let secret = secret(
        &config,
        "JITR_WEBHOOK_SECRET",
        "JITR_WEBHOOK_SECRET_PARAMETER",
    )
    .await?
    .unwrap_or_default();
    let pools = match var("JITR_CONFIG") {
        Some(source) => {
            let text = pool_config_text(&config, &source).await?;
            Some((source, text))
        }
        None => None,
    };
    let mut policy = policy_from_env(pools)?;
    policy.bootstrap = Some(bootstrap_from_env(ssm_prefix)?);
    // The deployment scopes runner names and launch tokens (ADR-0010).
    policy.deployment = Some(names.prefix().to_owned());
    Ok(AwsApp {
        has_webhook_secret: !secret.is_empty(),
        app: App::new(ports, policy, secret),
        names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stack's instance profile and security group are defaults: a pool
    /// of the file that names its own keeps them.
    #[test]
    fn launch_variables_are_defaults_for_pools_without_their_own() {
        let file = r#"
[[pool]]
name = "own"
labels = ["linux", "own"]
instance_types = ["c5.xlarge"]
vcpus = 4
image = "ami-0123456789abcdef0"
instance_profile = "own-profile"
security_groups = ["sg-own"]
metadata_hop_limit = 2

[[pool]]
name = "plain"
labels = ["linux", "x64"]
instance_types = ["c5.xlarge"]
vcpus = 4
image = "ami-0123456789abcdef0"
"#;
        let env = |name: &'static str| match name {
            "JITR_INSTANCE_PROFILE" => Some("stack-profile".to_owned()),
            "JITR_SECURITY_GROUPS" => Some("sg-stack".to_owned()),
            "JITR_METADATA_HOP_LIMIT" => Some("3".to_owned()),
            _ => None,
        };
        let policy = policy_from(Some(("pools.toml".into(), file.into())), env).unwrap();
        let launch = |i: usize| &policy.pools[i].launch;
        assert_eq!(launch(0).instance_profile.as_deref(), Some("own-profile"));
        assert_eq!(launch(0).security_groups, ["sg-own"]);
        assert_eq!(launch(0).metadata_hop_limit, 2);
        assert_eq!(launch(1).instance_profile.as_deref(), Some("stack-profile"));
        assert_eq!(launch(1).security_groups, ["sg-stack"]);
        assert_eq!(launch(1).metadata_hop_limit, 3);
    }

    #[test]
    fn the_deployments_runner_tags_and_public_address_setting() {
        let file = r#"
[[pool]]
name = "tagged"
labels = ["linux", "x64"]
instance_types = ["c5.xlarge"]
vcpus = 4
image = "ami-0123456789abcdef0"
tags = { team = "payments" }
"#;
        let env = |tags: &'static str| {
            move |name: &'static str| (name == "JITR_RUNNER_TAGS").then(|| tags.to_owned())
        };
        let policy = policy_from(
            Some(("pools.toml".into(), file.into())),
            env("team=platform, cost-centre=ci-42"),
        )
        .unwrap();
        let tags = &policy.pools[0].launch.tags;
        assert_eq!(tags["team"], "payments", "the pool's own wins");
        assert_eq!(tags["cost-centre"], "ci-42");
        let public = |value: &'static str| {
            move |name: &'static str| (name == "JITR_PUBLIC_IP").then(|| value.to_owned())
        };
        assert!(
            policy_from(None, public("true")).unwrap().pools[0]
                .launch
                .public_ip
        );
        assert!(
            !policy_from(None, public("false")).unwrap().pools[0]
                .launch
                .public_ip
        );
        assert!(policy_from(None, public("yes")).is_err());
        assert!(
            policy_from(Some(("pools.toml".into(), file.into())), public("true")).is_err(),
            "a pool file says it per pool"
        );
        for bad in ["jitr:deployment=x", "no-equals", "=empty-key", "aws:x=y"] {
            let e = policy_from(None, env(bad)).unwrap_err();
            assert!(e.to_string().contains("JITR_RUNNER_TAGS"), "{bad}: {e}");
        }
    }
}
