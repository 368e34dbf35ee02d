//! `jitr config check FILE`: validates a runner pool configuration and says what
//! it configures; a broken file is named with its line and problem (exit 2).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::app::pools::{self, Config};

/// `jitr config` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Args {
    /// Validate a pool configuration file: exit 0 when usable (warnings are
    /// printed), 2 with FILE:LINE:COLUMN and the problem when not.
    Check {
        /// The file (TOML; the schema is in `docs/pools.example.toml`).
        file: PathBuf,
        /// Check it for an AWS deployment too: every pool needs an instance
        /// profile (its own, `[defaults]`, or the stack's, given to the
        /// functions as `JITR_INSTANCE_PROFILE`), or its runners cannot read
        /// their JIT config.
        #[arg(long)]
        aws: bool,
    },
}

/// The pools of `config` that launch without an instance profile on AWS,
/// where the deployment gives none (`stack_profile`).
pub fn pools_without_profile<'a>(config: &'a Config, stack_profile: Option<&str>) -> Vec<&'a str> {
    if stack_profile.is_some_and(|p| !p.is_empty()) {
        return Vec::new();
    }
    config
        .pools
        .iter()
        .filter(|p| p.launch.instance_profile.is_none())
        .map(|p| p.name.as_str())
        .collect()
}

/// Reads and validates `path`; the error names the file, line and column.
pub fn load(path: &Path) -> anyhow::Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    pools::parse(&text).map_err(|e| anyhow::anyhow!("{}:{e}", path.display()))
}

/// One line a pool, for people.
pub fn describe(config: &Config) -> String {
    let mut out = String::new();
    for pool in &config.pools {
        out.push_str(&format!(
            "pool {:<20} labels [self-hosted, {}] → {} × {} vCPUs ({}), {}{}\n",
            pool.name,
            pool.labels.join(", "),
            pool.instance_types.join(" | "),
            pool.spec.vcpus,
            pool.architecture,
            pool.spec.image,
            if pool.spot {
                ", spot first"
            } else {
                ", on-demand"
            },
        ));
        let warm = &pool.warm;
        if let (Some((owner, repo)), true) = (&warm.warm_for, warm.schedule.is_warm()) {
            out.push_str(&format!(
                "     warm: {} {} as {owner}/{repo}'s runners{}{}\n",
                warm.schedule.min_idle,
                if warm.stopped {
                    "stopped (started for a job)"
                } else {
                    "idle"
                },
                warm.schedule
                    .windows
                    .iter()
                    .map(|w| format!("; {w}"))
                    .collect::<String>(),
                warm.max_idle_ms
                    .map(|ms| format!("; beyond it retired after {} min idle", ms / 60_000))
                    .unwrap_or_default(),
            ));
        }
    }
    for warning in &config.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    out
}

/// Runs `jitr config`.
pub async fn command(args: Args) -> anyhow::Result<ExitCode> {
    match args {
        Args::Check { file, aws } => match load(&file) {
            Ok(config) => {
                let stack_profile = std::env::var("JITR_INSTANCE_PROFILE").ok();
                let missing = pools_without_profile(&config, stack_profile.as_deref());
                if aws && !missing.is_empty() {
                    eprintln!(
                        "{}: on AWS, pools {} launch without an instance profile: their runners \
                         cannot read their JIT config. Give `instance_profile` (in the pool or \
                         [defaults]; the stack's RunnerInstanceProfile output), or set \
                         JITR_INSTANCE_PROFILE as the template does for its functions",
                        file.display(),
                        missing.join(", ")
                    );
                    return Ok(ExitCode::from(2));
                }
                print!("{}", describe(&config));
                println!("{}: {} pools, valid", file.display(), config.pools.len());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e:#}");
                Ok(ExitCode::from(2))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warm_pool_is_described_with_its_floor_and_windows() {
        let text = "[[pool]]\nname = \"a\"\nlabels = [\"linux\"]\ninstance_types = [\"c7i.xlarge\"]\n\
                    vcpus = 4\nimage = \"ami-1\"\nwarm_for = \"acme/widgets\"\nmin_idle = 1\n\
                    [[pool.warm]]\ndays = \"sat,sun\"\nfrom = \"10:00\"\nto = \"12:00\"\n\
                    time_zone = \"UTC\"\nmin_idle = 3\n";
        let described = describe(&pools::parse(text).unwrap());
        assert!(
            described
                .contains("warm: 1 idle as acme/widgets's runners; sat,sun 10:00-12:00 UTC: 3\n"),
            "{described}"
        );
        let plain = describe(&pools::parse(&text[..text.find("warm_for").unwrap()]).unwrap());
        assert!(!plain.contains("warm"), "{plain}");
    }
}
