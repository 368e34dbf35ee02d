#!/bin/bash
# The jitr runner image's build step. Installs, on Ubuntu 24.04 (or Debian),
# what a jitr runner instance needs and its bootstrap calls: the GitHub Actions
# runner at a pinned version, checked against its SHA-256, in
# /opt/actions-runner; the AWS CLI; docker, with the runner user in its group
# (`container:` jobs); the runner's own libraries; sudo, installed but granted
# to nobody (a pool grants it at boot with `runner_sudo = true`).
#
# Runs as root. EC2 Image Builder runs it (infra/image/template.yaml embeds
# this file; a test keeps the two equal); CI runs it in a fresh Debian root
# filesystem with a stand-in runner archive (infra/image/check.sh).
#
# Settings, from the environment:
#   RUNNER_ARCHIVE  a local runner archive instead of GitHub's release download,
#                   checked against RUNNER_SHA256 (both or neither)
#   RUNNER_USER     the user the runner runs as (runner)
#   RUNNER_DIR      where the runner is unpacked (/opt/actions-runner)
set -euo pipefail

# The Actions runner, pinned: bump the version and both sums together, from
# the release notes at https://github.com/actions/runner/releases (GitHub stops
# queueing jobs to runners more than 30 days behind a release; an outdated
# runner updates itself at start, which costs every job the download).
RUNNER_VERSION=2.326.0
RUNNER_SHA256_X64=9c74af9b4352bbc99aecc7353b47bcdfcd1b2a0f6d15af54a99f54a0c14a1de8
RUNNER_SHA256_ARM64=ee7c229c979c5152e9f12be16ee9e83ff74c9d9b95c3c1aeb2e9b6d07157ec85
# The AWS CLI the bootstrap is tested with (.ci/run installs the same).
AWS_CLI_VERSION=1.46.3

RUNNER_USER="${RUNNER_USER:-runner}"
RUNNER_DIR="${RUNNER_DIR:-/opt/actions-runner}"
export DEBIAN_FRONTEND=noninteractive

log() { echo "jitr-image: $*" >&2; }

case "$(dpkg --print-architecture)" in
  amd64) runner_arch=x64 sha256="$RUNNER_SHA256_X64" ;;
  arm64) runner_arch=arm64 sha256="$RUNNER_SHA256_ARM64" ;;
  *) log "unsupported architecture $(dpkg --print-architecture)"; exit 1 ;;
esac

apt-get update -qq
apt-get install -y -qq --no-install-recommends ca-certificates curl >/dev/null

# The runner archive first: a wrong archive stops the build before anything else.
archive=$(mktemp)
trap 'rm -f "$archive"' EXIT
if [ -n "${RUNNER_ARCHIVE:-}" ]; then
  [ -n "${RUNNER_SHA256:-}" ] || { log "RUNNER_ARCHIVE needs RUNNER_SHA256"; exit 1; }
  cp "$RUNNER_ARCHIVE" "$archive"
  sha256="$RUNNER_SHA256"
else
  url="https://github.com/actions/runner/releases/download/v$RUNNER_VERSION/actions-runner-linux-$runner_arch-$RUNNER_VERSION.tar.gz"
  log "downloading $url"
  curl -sSfL --retry 5 -o "$archive" "$url"
fi
echo "$sha256  $archive" | sha256sum -c --status - \
  || { log "the runner archive does not match SHA-256 $sha256"; exit 1; }

# The first candidate the distribution has, of packages renamed across
# releases (libicu72 on Debian 12, libicu74 on Ubuntu 24.04; libssl3t64).
first_available() {
  for name in "$@"; do
    if apt-cache show "$name" >/dev/null 2>&1; then echo "$name"; return; fi
  done
  log "none of $* is available"; exit 1
}
icu=$(apt-cache pkgnames libicu | grep -E '^libicu[0-9]+$' | sort -V | tail -n 1)
[ -n "$icu" ] || { log "no libicu package"; exit 1; }
ssl=$(first_available libssl3t64 libssl3)
log "installing packages"
apt-get install -y -qq --no-install-recommends \
  bash coreutils tar gzip unzip git jq sudo passwd util-linux procps systemd-sysv \
  python3 python3-venv docker.io \
  "$icu" "$ssl" libkrb5-3 zlib1g >/dev/null

log "installing the AWS CLI $AWS_CLI_VERSION"
python3 -m venv /opt/aws-cli
/opt/aws-cli/bin/pip install -q --disable-pip-version-check "awscli==$AWS_CLI_VERSION"
ln -sf /opt/aws-cli/bin/aws /usr/local/bin/aws

if id -u "$RUNNER_USER" >/dev/null 2>&1; then
  usermod -aG docker "$RUNNER_USER"
else
  useradd --create-home --shell /bin/bash --groups docker "$RUNNER_USER"
fi
log "user $RUNNER_USER in groups: $(id -nG "$RUNNER_USER")"

mkdir -p "$RUNNER_DIR"
tar -xzf "$archive" -C "$RUNNER_DIR"
[ -x "$RUNNER_DIR/run.sh" ] || { log "the archive has no run.sh"; exit 1; }
chown -R "$RUNNER_USER:$RUNNER_USER" "$RUNNER_DIR"

cat > /etc/jitr-runner-image <<EOF
runner_version=$RUNNER_VERSION
runner_sha256=$sha256
runner_user=$RUNNER_USER
runner_dir=$RUNNER_DIR
aws_cli_version=$AWS_CLI_VERSION
EOF
apt-get clean
rm -rf /var/lib/apt/lists/*
log "done: runner $RUNNER_VERSION in $RUNNER_DIR for $RUNNER_USER"
