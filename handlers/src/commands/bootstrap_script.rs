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
}

/// Prints the script.
pub async fn command(args: Args) -> anyhow::Result<ExitCode> {
    let bootstrap = Bootstrap {
        ssm_prefix: args.ssm_prefix,
        runner_dir: args.runner_dir,
        runner_user: args.runner_user,
        runner_download: args.runner_url.zip(args.runner_sha256),
    };
    print!("{}", bootstrap.render());
    Ok(ExitCode::SUCCESS)
}
