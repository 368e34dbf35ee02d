# --- jitr runner bootstrap -------------------------------------------------
# Runs as root at first boot (EC2 user data), and in a stopped pool at every
# boot (it installs itself in cloud-init's per-boot scripts). It takes an IMDSv2 token,
# reads this instance's single-use JIT runner config from SSM and deletes it,
# starts the GitHub Actions runner with it as an unprivileged user, and powers
# the instance off when the runner exits, for any reason (the instance is
# launched to terminate on shutdown). Every step is logged to the console, so
# `aws ec2 get-console-output` explains a failed boot.
set -uo pipefail

JITR_IMDS="${JITR_IMDS_ENDPOINT:-http://169.254.169.254}"
JITR_POWEROFF="${JITR_POWEROFF:-poweroff}"
JITR_CONFIG_WAIT_SECS="${JITR_CONFIG_WAIT_SECS:-600}"
JITR_CONFIG_POLL_SECS="${JITR_CONFIG_POLL_SECS:-5}"

log() { echo "jitr-bootstrap: $*" >&2; }

# A stopped pool's instance is stopped after its first boot and started again
# for a job (ADR-0022). cloud-init runs user data once per instance, but every
# script in its per-boot directory at every boot: the bootstrap installs itself
# there, so a start reads the fresh JIT config jitr writes for it.
if [ "${JITR_EVERY_BOOT:-}" = 1 ]; then
  per_boot="${JITR_PER_BOOT_DIR:-/var/lib/cloud/scripts/per-boot}"
  self="${BASH_SOURCE[0]}"
  if [ "$(cd "$(dirname "$self")" && pwd)" != "$(mkdir -p "$per_boot" && cd "$per_boot" && pwd)" ]; then
    install -m 0700 "$self" "$per_boot/jitr-bootstrap.sh" \
      && log "installed in $per_boot: it runs again at every start" \
      || log "cannot install in $per_boot: a start would not run the runner"
  fi
fi

finish() {
  local code=$?
  log "done (exit $code): powering off"
  sync
  "$JITR_POWEROFF" || shutdown -h now
}
trap finish EXIT

imds_token=$(curl -sSf --retry 5 --retry-connrefused -X PUT "$JITR_IMDS/latest/api/token" \
  -H "X-aws-ec2-metadata-token-ttl-seconds: 21600") || { log "no IMDSv2 token from $JITR_IMDS"; exit 1; }
metadata() { curl -sSf -H "X-aws-ec2-metadata-token: $imds_token" "$JITR_IMDS/latest/meta-data/$1"; }
instance_id=$(metadata instance-id) || { log "no instance id from the metadata service"; exit 1; }
region=$(metadata placement/region) || { log "no region from the metadata service"; exit 1; }
parameter="$JITR_SSM_PREFIX/$instance_id/jit-config"
log "instance $instance_id in $region; JIT config at $parameter"

waited=0
until jit_config=$(aws ssm get-parameter --region "$region" --name "$parameter" \
    --with-decryption --query Parameter.Value --output text 2>/tmp/jitr-ssm.err); do
  if [ "$waited" -ge "$JITR_CONFIG_WAIT_SECS" ]; then
    log "no JIT config after ${waited}s: $(tail -n 1 /tmp/jitr-ssm.err)"
    exit 1
  fi
  log "JIT config not there yet (${waited}s): $(tail -n 1 /tmp/jitr-ssm.err)"
  sleep "$JITR_CONFIG_POLL_SECS"
  waited=$((waited + JITR_CONFIG_POLL_SECS))
done
log "JIT config read (${#jit_config} characters)"
aws ssm delete-parameter --region "$region" --name "$parameter" \
  && log "JIT config parameter deleted" \
  || log "the JIT config parameter could not be deleted (jitr deletes it at termination)"

if ! id -u "$JITR_RUNNER_USER" >/dev/null 2>&1; then
  useradd --create-home --shell /bin/bash "$JITR_RUNNER_USER" || { log "cannot create user $JITR_RUNNER_USER"; exit 1; }
  log "created user $JITR_RUNNER_USER"
fi
# `container:` jobs and docker steps need the docker group, where the image has it.
if getent group docker >/dev/null 2>&1 && ! id -nG "$JITR_RUNNER_USER" | tr ' ' '\n' | grep -qx docker; then
  usermod -aG docker "$JITR_RUNNER_USER" && log "added $JITR_RUNNER_USER to the docker group"
fi
if [ "${JITR_RUNNER_SUDO:-}" = 1 ]; then
  sudoers="${JITR_SUDOERS_DIR:-/etc/sudoers.d}/90-jitr-runner"
  echo "$JITR_RUNNER_USER ALL=(ALL) NOPASSWD:ALL" > "$sudoers" && chmod 0440 "$sudoers" \
    && log "passwordless sudo for $JITR_RUNNER_USER (the pool's runner_sudo)" \
    || { log "cannot grant sudo in $sudoers"; exit 1; }
fi

if [ -n "$JITR_RUNNER_URL" ]; then
  log "downloading the runner from $JITR_RUNNER_URL"
  archive=$(mktemp)
  curl -sSfL --retry 5 -o "$archive" "$JITR_RUNNER_URL" || { log "download failed"; exit 1; }
  echo "$JITR_RUNNER_SHA256  $archive" | sha256sum -c - >/dev/null \
    || { log "the runner archive does not match SHA-256 $JITR_RUNNER_SHA256"; exit 1; }
  mkdir -p "$JITR_RUNNER_DIR" && tar -xzf "$archive" -C "$JITR_RUNNER_DIR" \
    || { log "cannot unpack the runner into $JITR_RUNNER_DIR"; exit 1; }
  rm -f "$archive"
fi
if [ ! -x "$JITR_RUNNER_DIR/run.sh" ]; then
  log "no runner at $JITR_RUNNER_DIR/run.sh (pre-install it in the image, or configure its download)"
  exit 1
fi
chown -R "$JITR_RUNNER_USER" "$JITR_RUNNER_DIR"

log "starting the runner as $JITR_RUNNER_USER"
cd "$JITR_RUNNER_DIR" || exit 1
runuser -u "$JITR_RUNNER_USER" -- ./run.sh --jitconfig "$jit_config"
code=$?
log "the runner exited with $code"
exit "$code"
