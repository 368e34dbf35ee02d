#!/usr/bin/env bash
# Runs the runner image's install script (install-runner.sh) in a fresh Debian
# root filesystem, as EC2 Image Builder runs it on Ubuntu, with a stand-in
# runner archive, and checks what it left: the runner user in the docker group
# and without sudo, the runner unpacked and owned by it, every tool the
# bootstrap calls on PATH, the AWS CLI working. Also checks that a wrong
# archive is refused. Needs root (debootstrap, chroot); .ci/run runs it.
#
#   infra/image/check.sh [SUITE]     (default bookworm)
set -euo pipefail
cd "$(dirname "$0")"
suite="${1:-bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

command -v debootstrap >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}
root=$(mktemp -d "${TMPDIR:-/tmp}/jitr-image-root.XXXXXX")
chmod 755 "$root"   # a root filesystem's / is world-readable; mktemp's is not
cleanup() {
  umount "$root/proc" 2>/dev/null || true
  rm -rf "$root"
}
trap cleanup EXIT

echo "image check: debootstrap $suite into $root"
debootstrap --variant=minbase "$suite" "$root" "$mirror" >/dev/null
# A chroot starts no services; a CA this machine trusts (an egress proxy's) is
# trusted inside too, for the AWS CLI's download from PyPI.
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$root/etc/resolv.conf"
mkdir -p "$root/usr/local/share/ca-certificates"
cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
mount -t proc proc "$root/proc"

# The stand-in runner: what the bootstrap starts (run.sh) and the layout of
# GitHub's archive.
standin=$(mktemp -d)
mkdir -p "$standin/bin"
printf '#!/bin/sh\necho "stand-in runner $*"\n' > "$standin/run.sh"
printf '#!/bin/sh\nexit 0\n' > "$standin/config.sh"
printf 'stand-in\n' > "$standin/bin/Runner.Listener"
chmod 755 "$standin/run.sh" "$standin/config.sh"
tar -czf "$root/tmp/runner.tar.gz" -C "$standin" .
rm -rf "$standin"
sha=$(sha256sum "$root/tmp/runner.tar.gz" | cut -d' ' -f1)
cp install-runner.sh "$root/tmp/install-runner.sh"

in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }

echo "image check: a wrong archive is refused"
if in_root RUNNER_ARCHIVE=/tmp/runner.tar.gz RUNNER_SHA256=0000000000000000000000000000000000000000000000000000000000000000 \
    bash /tmp/install-runner.sh 2>"$root/tmp/refused.log"; then
  echo "image check: FAILED: an archive with the wrong SHA-256 was installed" >&2; exit 1
fi
grep -q "does not match SHA-256" "$root/tmp/refused.log" || { cat "$root/tmp/refused.log" >&2; exit 1; }
[ ! -e "$root/opt/actions-runner" ] || { echo "image check: FAILED: unpacked a refused archive" >&2; exit 1; }

echo "image check: install"
in_root RUNNER_ARCHIVE=/tmp/runner.tar.gz RUNNER_SHA256="$sha" PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
  bash /tmp/install-runner.sh

fail() { echo "image check: FAILED: $*" >&2; exit 1; }
groups=$(in_root id -nG runner) || fail "no user runner"
[[ " $groups " == *" docker "* ]] || fail "runner is not in the docker group ($groups)"
[[ " $groups " != *" sudo "* ]] || fail "runner is in the sudo group"
! grep -rqs runner "$root/etc/sudoers" "$root/etc/sudoers.d" || fail "runner has a sudoers grant"
[ -x "$root/opt/actions-runner/run.sh" ] || fail "no runner at /opt/actions-runner/run.sh"
owner=$(in_root stat -c %U /opt/actions-runner/run.sh)
[ "$owner" = runner ] || fail "run.sh belongs to $owner"
# Every program the bootstrap (handlers/assets/bootstrap.sh) calls.
for tool in bash curl aws useradd usermod runuser id chown tar sha256sum mktemp sync poweroff docker git jq sudo; do
  in_root sh -c "command -v $tool" >/dev/null || fail "$tool is not on PATH"
done
in_root aws --version >/dev/null 2>&1 || fail "aws --version fails"
in_root runuser -u runner -- /opt/actions-runner/run.sh --jitconfig x | grep -q "stand-in runner --jitconfig x" \
  || fail "the runner does not start as runner"
grep -q "^runner_version=" "$root/etc/jitr-runner-image" || fail "no /etc/jitr-runner-image"
echo "image check: passed ($(in_root aws --version 2>&1 | cut -d' ' -f1); groups: $groups)"
