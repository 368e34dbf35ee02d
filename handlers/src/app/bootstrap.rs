//! The runner bootstrap: the user-data script every runner instance runs at
//! first boot (`assets/bootstrap.sh`), with this deployment's settings written
//! at its top. `jitr bootstrap-script` prints it for an operator to read.

use serde::{Deserialize, Serialize};

const BODY: &str = include_str!("../../assets/bootstrap.sh");

/// Where the instance finds its JIT config and its runner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bootstrap {
    /// The SSM prefix of the JIT config parameters
    /// (`{prefix}/{instance_id}/jit-config`).
    pub ssm_prefix: String,
    /// Where the Actions runner is (or is unpacked): `run.sh` must be there.
    pub runner_dir: String,
    /// The unprivileged user the runner runs as (created when missing).
    pub runner_user: String,
    /// Where to download the runner from when the image lacks it, and the
    /// archive's SHA-256 (both or neither).
    pub runner_download: Option<(String, String)>,
    /// Whether the runner user may `sudo` without a password (a pool's
    /// `runner_sudo`; off by default).
    #[serde(default)]
    pub runner_sudo: bool,
    /// The script runs at every boot, not only the first (a stopped pool's
    /// instance starts again for each job: ADR-0022).
    #[serde(default)]
    pub every_boot: bool,
}

impl Default for Bootstrap {
    /// Parameters under `/jitr/runners`; the runner pre-installed in
    /// `/opt/actions-runner`, run as `runner`.
    fn default() -> Self {
        Bootstrap {
            ssm_prefix: "/jitr/runners".into(),
            runner_dir: "/opt/actions-runner".into(),
            runner_user: "runner".into(),
            runner_download: None,
            runner_sudo: false,
            every_boot: false,
        }
    }
}

/// `value` as one shell word, whatever it holds.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

impl Bootstrap {
    /// The deployment's bootstrap with what `pool` says of its runner.
    pub fn for_pool(&self, pool: &crate::app::policy::Pool) -> Bootstrap {
        Bootstrap {
            runner_dir: pool
                .runner_dir
                .clone()
                .unwrap_or_else(|| self.runner_dir.clone()),
            runner_download: pool
                .runner_download
                .clone()
                .or_else(|| self.runner_download.clone()),
            runner_sudo: pool.runner_sudo || self.runner_sudo,
            every_boot: pool.warm.stopped || self.every_boot,
            ..self.clone()
        }
    }

    /// The script: a bash shebang, the settings, the bootstrap.
    pub fn render(&self) -> String {
        let (url, sha) = self
            .runner_download
            .as_ref()
            .map_or(("", ""), |(u, s)| (u.as_str(), s.as_str()));
        let settings = [
            ("JITR_SSM_PREFIX", self.ssm_prefix.trim_end_matches('/')),
            ("JITR_RUNNER_DIR", self.runner_dir.as_str()),
            ("JITR_RUNNER_USER", self.runner_user.as_str()),
            ("JITR_RUNNER_URL", url),
            ("JITR_RUNNER_SHA256", sha),
            ("JITR_RUNNER_SUDO", if self.runner_sudo { "1" } else { "" }),
            ("JITR_EVERY_BOOT", if self.every_boot { "1" } else { "" }),
        ];
        let mut script = String::from("#!/bin/bash\n# Rendered by jitr: the runner bootstrap.\n");
        for (name, value) in settings {
            script.push_str(&format!("{name}={}\n", quote(value)));
        }
        script.push_str(BODY);
        script
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_says_where_its_runner_is() {
        let pool = crate::app::policy::Pool {
            runner_dir: Some("/opt/arm-runner".into()),
            ..crate::app::policy::Pool::default_pool()
        };
        let script = Bootstrap::default().for_pool(&pool).render();
        assert!(script.contains("JITR_RUNNER_DIR='/opt/arm-runner'\n"));
        let plain = Bootstrap::default().for_pool(&crate::app::policy::Pool::default_pool());
        assert_eq!(plain, Bootstrap::default());
        assert!(plain.render().contains("JITR_RUNNER_SUDO=''\n"));
    }

    #[test]
    fn passwordless_sudo_only_where_a_pool_asks() {
        let pool = crate::app::policy::Pool {
            runner_sudo: true,
            ..crate::app::policy::Pool::default_pool()
        };
        let script = Bootstrap::default().for_pool(&pool).render();
        assert!(script.contains("JITR_RUNNER_SUDO='1'\n"));
        assert!(script.contains("NOPASSWD:ALL"));
        assert!(
            !Bootstrap::default()
                .render()
                .contains("JITR_RUNNER_SUDO='1'")
        );
    }

    #[test]
    fn settings_are_written_as_single_shell_words() {
        let script = Bootstrap {
            runner_user: "it's".into(),
            ..Bootstrap::default()
        }
        .render();
        assert!(script.starts_with("#!/bin/bash\n"));
        assert!(script.contains("JITR_SSM_PREFIX='/jitr/runners'\n"));
        assert!(script.contains(r"JITR_RUNNER_USER='it'\''s'"));
        assert!(script.contains("JITR_RUNNER_URL=''\n"));
        assert!(script.contains("runuser -u \"$JITR_RUNNER_USER\""));
    }
}
