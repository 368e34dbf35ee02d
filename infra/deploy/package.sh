#!/usr/bin/env bash
# Builds jitr with AWS support for a Lambda architecture and writes the
# deployment package (bootstrap in a zip) with `jitr package`, which checks
# the binary's architecture and that it needs no newer glibc than Lambda's
# provided.al2023 (2.34), and prints the deploy commands.
#
#   infra/deploy/package.sh [--arch arm64|x86_64] [--debug] [--out FILE]
#
# arm64 (the default) from an x86_64 machine needs a cross toolchain: either
# cargo-zigbuild (`cargo install cargo-zigbuild` and zig; it also pins glibc
# 2.34), or `rustup target add aarch64-unknown-linux-gnu` with the
# gcc-aarch64-linux-gnu package. See docs/deploy.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

arch=arm64 profile=release out=jitr-lambda.zip
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch="$2"; shift 2 ;;
    --debug) profile=debug; shift ;;
    --out) out="$2"; shift 2 ;;
    *) echo "package.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$arch" in
  arm64) triple=aarch64-unknown-linux-gnu ;;
  x86_64) triple=x86_64-unknown-linux-gnu ;;
  *) echo "package.sh: --arch is arm64 or x86_64, not $arch" >&2; exit 2 ;;
esac
host=$(uname -m)
[ "$host" = aarch64 ] && host=arm64
release=(); [ "$profile" = release ] && release=(--release)
target_dir="${CARGO_TARGET_DIR:-target}"

if [ "$host" = "$arch" ] && ! command -v cargo-zigbuild >/dev/null; then
  # Native: the host's glibc decides (jitr package refuses newer than 2.34).
  cargo build "${release[@]}" --locked -p jitr-handlers --features aws --bin jitr
  binary="$target_dir/$profile/jitr"
elif command -v cargo-zigbuild >/dev/null; then
  cargo zigbuild "${release[@]}" --locked -p jitr-handlers --features aws --bin jitr \
    --target "$triple.2.34"
  binary="$target_dir/$triple/$profile/jitr"
else
  linker=aarch64-linux-gnu-gcc
  [ "$arch" = x86_64 ] && linker=x86_64-linux-gnu-gcc
  command -v "$linker" >/dev/null || {
    echo "package.sh: building for $arch on $host needs cargo-zigbuild or $linker (docs/deploy.md)" >&2
    exit 2
  }
  rustup target add "$triple" >/dev/null
  var="CARGO_TARGET_$(echo "$triple" | tr 'a-z-' 'A-Z_')_LINKER"
  env "$var=$linker" "CC_${triple//-/_}=$linker" \
    cargo build "${release[@]}" --locked -p jitr-handlers --features aws --bin jitr --target "$triple"
  binary="$target_dir/$triple/$profile/jitr"
fi

# Package with a jitr that runs here (the one just built, when native).
packager="$binary"
[ "$host" = "$arch" ] || {
  cargo build --locked -p jitr-handlers --bin jitr
  packager="$target_dir/debug/jitr"
}
"$packager" package --binary "$binary" --arch "$arch" --out "$out"
