//! Runner pools from a configuration file (TOML): which jobs each pool serves and
//! how its instances are launched. `jitr config check FILE` validates a file;
//! `serve --config` and the AWS handlers (`JITR_CONFIG`) read one. Without a file
//! the policy's default pool serves.
//!
//! ```toml
//! [defaults]                       # optional, for every pool
//! subnets = ["subnet-0a1b2c3d"]
//! security_groups = ["sg-0a1b2c3d"]
//! instance_profile = "jitr-runner"
//!
//! [[pool]]
//! name = "linux-x64"
//! labels = ["linux", "x64"]        # a job's labels must all be here (self-hosted implied)
//! instance_types = ["c7i.xlarge", "c6i.xlarge"]
//! vcpus = 4
//! image = "ami-0123456789abcdef0"
//! scope = "organization"           # register in the job's organisation …
//! runner_group = "ci-builders"     # … in this runner group (by name)
//!
//! warm_for = "acme/widgets"        # warm runners register as this repository's would
//! min_idle = 1                     # runners kept idle beyond queued jobs (ADR-0022)
//! max_idle_minutes = 30            # a ready runner beyond the floor is retired after
//!
//! [[pool.warm]]                    # more while a window of the week holds
//! days = "mon-fri"
//! from = "08:00"
//! to = "18:00"
//! time_zone = "Europe/Berlin"
//! min_idle = 10
//!
//! [quotas]                         # optional: the account's vCPU quotas for jitr
//! on_demand_vcpus = 256            # (learnt from EC2's refusals when absent)
//! spot_vcpus = 128
//! ```

use std::collections::BTreeMap;

use jitr_domain::InstanceSpec;
use jitr_infra::LaunchSettings;
use serde::Deserialize;
use thiserror::Error;

use crate::app::policy::{Architecture, Pool, PoolScope, Warmth};

/// A configuration file that cannot be used: where, and why.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{line}:{column}: {message}")]
pub struct ConfigError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// What a valid file configures, and what looks doubtful in it.
#[derive(Clone, Debug)]
pub struct Config {
    /// The pools, in the file's order (the first that serves a job takes it).
    pub pools: Vec<Pool>,
    /// Doubts that do not make the file unusable (e.g. an instance type whose
    /// size suggests other vCPUs than the pool says).
    pub warnings: Vec<String>,
    /// The vCPUs each market holds for jitr, where the file says (ADR-0014):
    /// admission rounds start from them instead of learning them from EC2's
    /// first refusal.
    pub quotas: Vec<(jitr_domain::Market, u32)>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Quotas {
    on_demand_vcpus: Option<u32>,
    spot_vcpus: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    subnets: Option<Vec<String>>,
    security_groups: Option<Vec<String>>,
    instance_profile: Option<String>,
    metadata_hop_limit: Option<u8>,
    root_volume_gib: Option<u32>,
    public_ip: Option<bool>,
    spot: Option<bool>,
    runner_dir: Option<String>,
    runner_url: Option<String>,
    runner_sha256: Option<String>,
    runner_sudo: Option<bool>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolEntry {
    name: String,
    labels: Vec<String>,
    instance_types: Vec<String>,
    vcpus: u32,
    #[serde(default)]
    architecture: Architecture,
    image: String,
    subnets: Option<Vec<String>>,
    security_groups: Option<Vec<String>>,
    instance_profile: Option<String>,
    metadata_hop_limit: Option<u8>,
    root_volume_gib: Option<u32>,
    public_ip: Option<bool>,
    spot: Option<bool>,
    scope: Option<PoolScope>,
    runner_group: Option<String>,
    max_vcpus: Option<u32>,
    runner_dir: Option<String>,
    runner_url: Option<String>,
    runner_sha256: Option<String>,
    runner_sudo: Option<bool>,
    public_repositories: Option<bool>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    min_idle: Option<u32>,
    max_idle_minutes: Option<u64>,
    warm_for: Option<String>,
    warm_state: Option<String>,
    #[serde(default)]
    warm: Vec<WarmEntry>,
}

/// A `[[pool.warm]]` window.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WarmEntry {
    days: String,
    from: String,
    to: String,
    time_zone: String,
    min_idle: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    defaults: Defaults,
    #[serde(default, rename = "pool")]
    pools: Vec<toml::Spanned<PoolEntry>>,
    #[serde(default)]
    quotas: Quotas,
}

/// A pool's warm capacity from its entry: its floor and windows, each able to
/// fit the pool's `max_vcpus`.
fn warmth(entry: &PoolEntry) -> Result<Warmth, String> {
    let mut windows = Vec::new();
    for (i, w) in entry.warm.iter().enumerate() {
        let window =
            jitr_domain::WarmWindow::parse(&w.days, &w.from, &w.to, &w.time_zone, w.min_idle)
                .map_err(|e| format!("warm[{}]: {e}", i + 1))?;
        windows.push(window);
    }
    let schedule = jitr_domain::WarmSchedule {
        min_idle: entry.min_idle.unwrap_or(0),
        windows,
    };
    let most = std::iter::once(schedule.min_idle)
        .chain(schedule.windows.iter().map(|w| w.min_idle))
        .max()
        .unwrap_or(0);
    if let Some(max) = entry.max_vcpus.filter(|max| most * entry.vcpus > *max) {
        return Err(format!(
            "min_idle: {most} idle runners of {} vCPUs need {} vCPUs, more than max_vcpus {max}",
            entry.vcpus,
            most * entry.vcpus
        ));
    }
    let warm_for = match (&entry.warm_for, schedule.is_warm()) {
        (Some(repository), _) => {
            let valid = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            };
            match repository.split_once('/') {
                Some((owner, repo)) if valid(owner) && valid(repo) => {
                    Some((owner.to_owned(), repo.to_owned()))
                }
                _ => return Err(format!("warm_for: {repository:?} is not owner/repository")),
            }
        }
        (None, true) => {
            return Err(
                "warm_for: a warm pool names the repository its idle runners register as (owner/repository)"
                    .into(),
            );
        }
        (None, false) => None,
    };
    let max_idle_ms = match entry.max_idle_minutes {
        Some(0) => return Err("max_idle_minutes: at least 1".into()),
        Some(minutes) => Some(minutes * 60_000),
        None => None,
    };
    let stopped = match entry.warm_state.as_deref() {
        None | Some("running") => false,
        Some("stopped") if !schedule.is_warm() => {
            return Err(
                "warm_state: a stopped pool keeps a floor (min_idle or [[pool.warm]]) of stopped instances"
                    .into(),
            );
        }
        Some("stopped") => true,
        Some(other) => {
            return Err(format!(
                "warm_state: {other:?} is not \"running\" (idle registered runners) or \"stopped\" (instances booted once and stopped)"
            ));
        }
    };
    Ok(Warmth {
        schedule,
        max_idle_ms,
        warm_for,
        stopped,
    })
}

/// Line and column (1-based) of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The vCPUs an instance type's size name implies, where it implies one:
/// `large` 2, `xlarge` 4, `Nxlarge` 4·N (true of most types, not all).
pub fn implied_vcpus(instance_type: &str) -> Option<u32> {
    let size = instance_type.split_once('.')?.1;
    match size {
        "large" => Some(2),
        "xlarge" => Some(4),
        _ => size
            .strip_suffix("xlarge")?
            .parse::<u32>()
            .ok()
            .map(|n| n * 4),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn valid_image(image: &str) -> bool {
    image.starts_with("ami-") || image.starts_with('/') || image.starts_with("resolve:ssm:")
}

/// Parses and validates a pool configuration.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let file: File = toml::from_str(text).map_err(|e| {
        let (line, column) = position(text, e.span().map_or(0, |s| s.start));
        ConfigError {
            line,
            column,
            message: e.message().to_owned(),
        }
    })?;
    if file.pools.is_empty() {
        return Err(ConfigError {
            line: 1,
            column: 1,
            message: "no [[pool]]: at least one pool is needed".into(),
        });
    }
    let defaults = &file.defaults;
    let mut pools: Vec<Pool> = Vec::new();
    let mut warnings = Vec::new();
    for spanned in &file.pools {
        let (line, column) = position(text, spanned.span().start);
        let entry = spanned.get_ref();
        let fail = |message: String| ConfigError {
            line,
            column,
            message: format!("pool {:?}: {message}", entry.name),
        };
        if !valid_name(&entry.name) {
            return Err(fail(
                "name: 1 to 32 lower-case letters, digits or '-'".into(),
            ));
        }
        if pools.iter().any(|p| p.name == entry.name) {
            return Err(fail("a pool of that name comes earlier".into()));
        }
        let mut labels: Vec<String> = Vec::new();
        for label in &entry.labels {
            let label = label.trim();
            if label.is_empty() {
                return Err(fail("labels: an empty label".into()));
            }
            if !label.eq_ignore_ascii_case("self-hosted")
                && !labels.iter().any(|l| l.eq_ignore_ascii_case(label))
            {
                labels.push(label.to_owned());
            }
        }
        if entry.instance_types.is_empty() {
            return Err(fail("instance_types: at least one".into()));
        }
        for t in &entry.instance_types {
            if !t.contains('.') || t.contains(char::is_whitespace) {
                return Err(fail(format!(
                    "instance_types: {t:?} is not an instance type"
                )));
            }
            let arm = entry.architecture == Architecture::Arm64;
            if (Architecture::of_instance_type(t) == Architecture::Arm64) != arm {
                warnings.push(format!(
                    "line {line}: pool {:?}: {t} looks like {}, the pool says {}",
                    entry.name,
                    if arm { "x86_64" } else { "arm64" },
                    if arm { "arm64" } else { "x86_64" }
                ));
            }
            if let Some(implied) = implied_vcpus(t).filter(|v| *v != entry.vcpus) {
                warnings.push(format!(
                    "line {line}: pool {:?}: {t} usually has {implied} vCPUs, the pool says {}",
                    entry.name, entry.vcpus
                ));
            }
        }
        if entry.vcpus == 0 {
            return Err(fail("vcpus: at least 1".into()));
        }
        if !valid_image(&entry.image) {
            return Err(fail(format!(
                "image: {:?} is neither an AMI id (ami-…) nor an SSM parameter (/aws/service/…)",
                entry.image
            )));
        }
        let hop = entry
            .metadata_hop_limit
            .or(defaults.metadata_hop_limit)
            .unwrap_or(1);
        if !(1..=64).contains(&hop) {
            return Err(fail(format!("metadata_hop_limit: {hop} is not 1 to 64")));
        }
        let root = entry.root_volume_gib.or(defaults.root_volume_gib);
        if let Some(gib) = root.filter(|g| !(8..=16_384).contains(g)) {
            return Err(fail(format!("root_volume_gib: {gib} is not 8 to 16384")));
        }
        if let Some(max) = entry.max_vcpus.filter(|m| *m < entry.vcpus) {
            return Err(fail(format!(
                "max_vcpus: {max} is less than one instance's {} vCPUs",
                entry.vcpus
            )));
        }
        let runner_download = match (
            entry.runner_url.as_ref().or(defaults.runner_url.as_ref()),
            entry
                .runner_sha256
                .as_ref()
                .or(defaults.runner_sha256.as_ref()),
        ) {
            (None, None) => None,
            (Some(url), Some(sha))
                if sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()) =>
            {
                Some((url.clone(), sha.to_lowercase()))
            }
            (Some(_), _) => {
                return Err(fail(
                    "runner_url: needs runner_sha256, the archive's SHA-256 (64 hex digits)".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(fail(
                    "runner_sha256: without the runner_url it checks".into(),
                ));
            }
        };
        if entry.runner_group.is_some() && entry.scope != Some(PoolScope::Organization) {
            return Err(fail(
                "runner_group: runner groups are an organisation's; set scope = \"organization\""
                    .into(),
            ));
        }
        let warm = warmth(entry).map_err(fail)?;
        let mut tags = defaults.tags.clone();
        tags.extend(entry.tags.clone());
        if let Some(key) = tags
            .keys()
            .find(|k| k.starts_with("jitr:") || *k == "managed-by")
        {
            return Err(fail(format!("tags: {key:?} is jitr's own tag")));
        }
        pools.push(Pool {
            name: entry.name.clone(),
            labels,
            instance_types: entry.instance_types.clone(),
            spec: InstanceSpec {
                instance_type: entry.instance_types[0].clone(),
                vcpus: entry.vcpus,
                image: entry.image.clone(),
                pool: None,
                avoid_spot: Vec::new(),
                park: false,
            },
            architecture: entry.architecture,
            spot: entry.spot.or(defaults.spot).unwrap_or(true),
            scope: entry.scope,
            runner_group: entry.runner_group.clone(),
            max_vcpus: entry.max_vcpus,
            runner_dir: entry
                .runner_dir
                .clone()
                .or_else(|| defaults.runner_dir.clone()),
            runner_download,
            runner_sudo: entry.runner_sudo.or(defaults.runner_sudo).unwrap_or(false),
            public_repositories: entry.public_repositories.unwrap_or(false),
            launch: LaunchSettings {
                instance_profile: entry
                    .instance_profile
                    .clone()
                    .or_else(|| defaults.instance_profile.clone()),
                security_groups: entry
                    .security_groups
                    .clone()
                    .or_else(|| defaults.security_groups.clone())
                    .unwrap_or_default(),
                subnets: entry
                    .subnets
                    .clone()
                    .or_else(|| defaults.subnets.clone())
                    .unwrap_or_default(),
                metadata_hop_limit: hop,
                root_volume_gib: root,
                tags,
                architecture: Some(entry.architecture),
                public_ip: entry.public_ip.or(defaults.public_ip).unwrap_or(false),
            },
            warm,
        });
    }
    for (i, pool) in pools.iter().enumerate() {
        // Warm runners' streams are named by their repository: two pools
        // warming one repository would share them (ADR-0022).
        if let Some(earlier) = pool.warm.warm_for.as_ref().and_then(|repo| {
            pools[..i]
                .iter()
                .find(|p| p.warm.warm_for.as_ref() == Some(repo))
        }) {
            let (line, column) = position(text, file.pools[i].span().start);
            return Err(ConfigError {
                line,
                column,
                message: format!(
                    "pool {:?}: warm_for: pool {:?} keeps its warm runners there already",
                    pool.name, earlier.name
                ),
            });
        }
        if let Some(earlier) = pools[..i].iter().find(|p| {
            pool.labels
                .iter()
                .all(|l| p.labels.iter().any(|m| m.eq_ignore_ascii_case(l)))
        }) {
            warnings.push(format!(
                "pool {:?} serves no job: {:?} comes first and has all of its labels",
                pool.name, earlier.name
            ));
        }
    }
    let quotas = [
        (jitr_domain::Market::OnDemand, file.quotas.on_demand_vcpus),
        (jitr_domain::Market::Spot, file.quotas.spot_vcpus),
    ]
    .into_iter()
    .filter_map(|(market, vcpus)| Some((market, vcpus?)))
    .collect();
    Ok(Config {
        pools,
        warnings,
        quotas,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../docs/pools.example.toml");

    #[test]
    fn the_example_file_is_valid() {
        let config = parse(EXAMPLE).unwrap();
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        let names: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["linux-arm64", "linux-x64", "linux-x64-large"]);
        let arm = &config.pools[0];
        assert_eq!(arm.architecture, Architecture::Arm64);
        assert_eq!(arm.launch.instance_profile.as_deref(), Some("jitr-runner"));
        assert_eq!(arm.launch.root_volume_gib, Some(64));
    }

    #[test]
    fn quotas_are_read_per_market_and_optional() {
        let with = format!("{EXAMPLE}\n[quotas]\non_demand_vcpus = 256\n");
        let config = parse(&with).unwrap();
        assert_eq!(config.quotas, [(jitr_domain::Market::OnDemand, 256)]);
        assert!(parse(EXAMPLE).unwrap().quotas.is_empty());
        let typo = format!("{EXAMPLE}\n[quotas]\nspot_cpus = 1\n");
        let e = parse(&typo).unwrap_err();
        assert!(e.message.contains("spot_cpus"), "{e}");
    }

    fn error(text: &str) -> ConfigError {
        parse(text).unwrap_err()
    }

    const POOL: &str = "[[pool]]\nname = \"a\"\nlabels = [\"linux\"]\ninstance_types = [\"c7i.xlarge\"]\nvcpus = 4\nimage = \"ami-1\"\n";

    #[test]
    fn a_warm_pool_keeps_its_floor_and_its_windows() {
        let text = format!(
            "{POOL}min_idle = 1\nmax_idle_minutes = 30\nwarm_for = \"acme/widgets\"\n\
             [[pool.warm]]\ndays = \"mon-fri\"\nfrom = \"08:00\"\nto = \"18:00\"\n\
             time_zone = \"Europe/Berlin\"\nmin_idle = 10\n"
        );
        let pool = &parse(&text).unwrap().pools[0];
        // Monday 2026-12-07, 09:00 and 20:00 in Berlin (UTC+1).
        let monday = 1_796_601_600_000;
        let at = |h: i64| jitr_domain::Timestamp(monday + (h - 1) * 3_600_000);
        assert_eq!(pool.warm.schedule.min_idle_at(at(9)), 10);
        assert_eq!(pool.warm.schedule.min_idle_at(at(20)), 1);
        let floor = pool.floor_at(at(20), 60_000);
        assert_eq!((floor.min_idle, floor.idle_grace_ms), (1, 30 * 60_000));
        // Without warm settings: no floor, the deployment's grace.
        let plain = &parse(POOL).unwrap().pools[0];
        assert_eq!(
            plain.floor_at(at(9), 60_000),
            jitr_domain::PoolFloor::default()
        );
    }

    #[test]
    fn warm_settings_that_cannot_hold_say_why() {
        let window = |days: &str, zone: &str| {
            format!(
                "{POOL}[[pool.warm]]\ndays = \"{days}\"\nfrom = \"08:00\"\nto = \"18:00\"\n\
                 time_zone = \"{zone}\"\nmin_idle = 2\n"
            )
        };
        let e = error(&format!("{POOL}min_idle = 1\n"));
        assert!(e.message.contains("warm_for"), "{e}");
        let e = error(&format!("{POOL}min_idle = 1\nwarm_for = \"widgets\"\n"));
        assert!(e.message.contains("not owner/repository"), "{e}");
        let e = error(&window("weekdays", "UTC"));
        assert!(e.message.contains("warm[1]: days"), "{e}");
        let e = error(&window("mon-fri", "Berlin"));
        assert!(e.message.contains("IANA time zone"), "{e}");
        let e = error(&format!("{POOL}min_idle = 3\nmax_vcpus = 8\n"));
        assert!(e.message.contains("more than max_vcpus 8"), "{e}");
        let warm = format!("{POOL}warm_for = \"acme/widgets\"\nmin_idle = 1\n");
        let e = error(&format!("{warm}{}", warm.replace("\"a\"", "\"b\"")));
        assert!(
            e.message
                .contains("pool \"a\" keeps its warm runners there"),
            "{e}"
        );
        let e = error(&format!("{POOL}max_idle_minutes = 0\n"));
        assert!(e.message.contains("at least 1"), "{e}");
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let e = error(&format!(
            "{POOL}\n[[pool]]\nname = \"b\"\nlabels = [\"linux\"]\nvcpus = 4\n"
        ));
        assert_eq!(e.line, 8, "{e}");
        assert!(e.message.contains("instance_types"), "{e}");
        let e = error(&format!("{POOL}colour = \"red\"\n"));
        assert_eq!(e.line, 7, "{e}");
        assert!(e.message.contains("unknown field `colour`"), "{e}");
        let e = error(&format!(
            "{POOL}\n{}",
            POOL.replace("ami-1", "ubuntu").replace("\"a\"", "\"b\"")
        ));
        assert_eq!(e.line, 8, "{e}");
        assert!(e.message.contains("neither an AMI id"), "{e}");
        let e = error(&format!("{POOL}\n{POOL}"));
        assert!(e.message.contains("comes earlier"), "{e}");
        let e = error(&POOL.replace("vcpus = 4", "vcpus = \"four\""));
        assert_eq!(
            (e.line, e.message.contains("expected u32")),
            (5, true),
            "{e}"
        );
        assert!(error("").message.contains("at least one pool"));
        let e = error(&format!("{POOL}tags = {{ \"jitr:runner\" = \"x\" }}\n"));
        assert!(e.message.contains("jitr's own tag"), "{e}");
        let e = error(&format!("{POOL}runner_group = \"builders\"\n"));
        assert!(e.message.contains("scope = \"organization\""), "{e}");
        let e = error(&format!(
            "{POOL}runner_url = \"https://example.com/r.tgz\"\n"
        ));
        assert!(e.message.contains("needs runner_sha256"), "{e}");
        let e = error(&format!("{POOL}scope = \"enterprise\"\n"));
        assert!(e.message.contains("unknown variant `enterprise`"), "{e}");
    }

    #[test]
    fn sudo_is_granted_only_where_a_pool_or_the_defaults_say() {
        let plain = parse(POOL).unwrap();
        assert!(!plain.pools[0].runner_sudo);
        let asked = parse(&format!("{POOL}runner_sudo = true\n")).unwrap();
        assert!(asked.pools[0].runner_sudo);
        let by_default = parse(&format!("[defaults]\nrunner_sudo = true\n\n{POOL}")).unwrap();
        assert!(by_default.pools[0].runner_sudo);
        let refused = parse(&format!(
            "[defaults]\nrunner_sudo = true\n\n{POOL}runner_sudo = false\n"
        ))
        .unwrap();
        assert!(!refused.pools[0].runner_sudo);
    }

    #[test]
    fn doubtful_sizes_and_shadowed_pools_are_warned_of() {
        let text = format!(
            "{}\n{}",
            POOL.replace("c7i.xlarge", "c7i.2xlarge"),
            POOL.replace("\"a\"", "\"b\"")
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.warnings.len(), 2, "{:?}", config.warnings);
        assert!(config.warnings[0].contains("usually has 8 vCPUs"));
        assert!(config.warnings[1].contains("serves no job"));
        assert_eq!(implied_vcpus("m7i.24xlarge"), Some(96));
        let arm = parse(&POOL.replace("c7i.xlarge", "c7g.xlarge")).unwrap();
        assert!(
            arm.warnings[0].contains("looks like arm64"),
            "{:?}",
            arm.warnings
        );
        for t in [
            "c7g.large",
            "m6gd.xlarge",
            "t4g.small",
            "im4gn.large",
            "a1.large",
        ] {
            assert_eq!(
                Architecture::of_instance_type(t),
                Architecture::Arm64,
                "{t}"
            );
        }
        for t in [
            "c7i.large",
            "m5.xlarge",
            "g5.xlarge",
            "p4d.24xlarge",
            "c6a.large",
        ] {
            assert_eq!(
                Architecture::of_instance_type(t),
                Architecture::X86_64,
                "{t}"
            );
        }
        assert_eq!(implied_vcpus("t3.medium"), None);
    }
}
