//! `jitr bootstrap-script`: prints the user data every runner instance boots
//! with, so an operator can read exactly what will run.

use std::process::ExitCode;

use crate::app::bootstrap::Bootstrap;

/// `jitr bootstrap-script` arguments (on AWS the same settings come from the
/// `JITR_*` variables named).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// SSM prefix of the JIT config parameters.
    #[arg(long, env = "JITR_SSM_PREFIX", default_value = "/jitr/runners")]
    ssm_prefix: String,
    /// Where `run.sh` of the Actions runner is (or is unpacked).
    #[arg(long, env = "JITR_RUNNER_DIR", default_value = "/opt/actions-runner")]
    runner_dir: String,
    /// The unprivileged user the runner runs as.
    #[arg(long, env = "JITR_RUNNER_USER", default_value = "runner")]
    runner_user: String,
    /// Download the runner from here when the image lacks it.
    #[arg(long, env = "JITR_RUNNER_URL", requires = "runner_sha256")]
    runner_url: Option<String>,
    /// The runner archive's SHA-256.
    #[arg(long, env = "JITR_RUNNER_SHA256", requires = "runner_url")]
    runner_sha256: Option<String>,
    /// A pool file: with --pool, the script that pool's instances get (its
    /// runner_dir, runner_url, runner_sha256 and runner_sudo over the flags
    /// above).
    #[arg(long, requires = "pool")]
    config: Option<std::path::PathBuf>,
    /// The pool (of --config) whose script to print.
    #[arg(long, requires = "config")]
    pool: Option<String>,
}

/// Prints the script.
pub async fn command(args: Args) -> anyhow::Result<ExitCode> {
    let mut bootstrap = Bootstrap {
        ssm_prefix: args.ssm_prefix,
        runner_dir: args.runner_dir,
        runner_user: args.runner_user,
        runner_download: args.runner_url.zip(args.runner_sha256),
        runner_sudo: false,
        every_boot: false,
    };
    if let (Some(file), Some(name)) = (&args.config, &args.pool) {
        let config = match super::config::load(file) {
            Ok(config) => config,
            Err(e) => {
                eprintln!("{e:#}");
                return Ok(ExitCode::from(2));
            }
        };
        let Some(pool) = config.pools.iter().find(|p| &p.name == name) else {
            let names: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
            eprintln!(
                "{}: no pool {name:?} (it has: {})",
                file.display(),
                names.join(", ")
            );
            return Ok(ExitCode::from(2));
        };
        bootstrap = bootstrap.for_pool(pool);
    }
    print!("{}", bootstrap.render());
    Ok(ExitCode::SUCCESS)
}
