#!/usr/bin/env bash
# Builds jitr with AWS support for a Lambda architecture (or both) and writes
# each deployment package (bootstrap in a zip) with `jitr package`, which
# checks the binary's ELF machine and that it needs no newer glibc than
# Lambda's provided.al2023 (2.34), prints its SHA-256 and the deploy commands.
# With --arch all, both packages go to --out-dir with a SHA256SUMS file.
#
#   infra/deploy/package.sh [--arch arm64|x86_64|all] [--debug] [--out FILE | --out-dir DIR]
#
# The host's architecture is built natively; the other needs cargo-zigbuild
# with zig (both on PyPI: `pip install cargo-zigbuild ziglang`; it also pins
# glibc 2.34) and `rustup target add` of its triple, or the gcc cross
# toolchain (gcc-aarch64-linux-gnu). See docs/deploy.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

arch=arm64 profile=release out="" out_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch="$2"; shift 2 ;;
    --debug) profile=debug; shift ;;
    --out) out="$2"; shift 2 ;;
    --out-dir) out_dir="$2"; shift 2 ;;
    *) echo "package.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$arch" in
  arm64|x86_64) arches=("$arch") ;;
  all) arches=(x86_64 arm64); [ -z "$out" ] || { echo "package.sh: --arch all writes to --out-dir, not --out" >&2; exit 2; } ;;
  *) echo "package.sh: --arch is arm64, x86_64 or all, not $arch" >&2; exit 2 ;;
esac
[ -n "$out_dir" ] || { [ "$arch" = all ] && out_dir=dist; }
host=$(uname -m)
[ "$host" = aarch64 ] && host=arm64
release=(); [ "$profile" = release ] && release=(--release)
target_dir="${CARGO_TARGET_DIR:-target}"

# Builds jitr for $1 and prints the binary's path.
build() {
  local arch="$1" triple
  case "$arch" in
    arm64) triple=aarch64-unknown-linux-gnu ;;
    x86_64) triple=x86_64-unknown-linux-gnu ;;
  esac
  if [ "$host" = "$arch" ] && ! command -v cargo-zigbuild >/dev/null; then
    # Native without zig: the host's glibc decides (jitr package refuses
    # newer than 2.34; Debian 12's is 2.36 and the query engine links
    # hypot@GLIBC_2.35).
    cargo build "${release[@]}" --locked -p jitr-handlers --features aws --bin jitr >&2
    echo "$target_dir/$profile/jitr"
  elif command -v cargo-zigbuild >/dev/null; then
    rustup target list --installed 2>/dev/null | grep -qx "$triple" || rustup target add "$triple" >&2
    cargo zigbuild "${release[@]}" --locked -p jitr-handlers --features aws --bin jitr \
      --target "$triple.2.34" >&2
    echo "$target_dir/$triple/$profile/jitr"
  else
    local linker=aarch64-linux-gnu-gcc
    [ "$arch" = x86_64 ] && linker=x86_64-linux-gnu-gcc
    command -v "$linker" >/dev/null || {
      echo "package.sh: building for $arch on $host needs cargo-zigbuild or $linker (docs/deploy.md)" >&2
      exit 2
    }
    rustup target add "$triple" >&2
    local var="CARGO_TARGET_$(echo "$triple" | tr 'a-z-' 'A-Z_')_LINKER"
    env "$var=$linker" "CC_${triple//-/_}=$linker" \
      cargo build "${release[@]}" --locked -p jitr-handlers --features aws --bin jitr --target "$triple" >&2
    echo "$target_dir/$triple/$profile/jitr"
  fi
}

binaries=()
for a in "${arches[@]}"; do
  binaries+=("$(build "$a")")
done
# Package with a jitr that runs here: the native build when there is one.
packager=""
for i in "${!arches[@]}"; do
  [ "${arches[$i]}" = "$host" ] && packager="${binaries[$i]}"
done
if [ -z "$packager" ]; then
  cargo build --locked -p jitr-handlers --bin jitr
  packager="$target_dir/debug/jitr"
fi
[ -z "$out_dir" ] || mkdir -p "$out_dir"
written=()
for i in "${!arches[@]}"; do
  a="${arches[$i]}"
  file="${out:-jitr-lambda.zip}"
  [ -z "$out_dir" ] || file="$out_dir/jitr-lambda-$a.zip"
  "$packager" package --binary "${binaries[$i]}" --arch "$a" --out "$file"
  written+=("$file")
done
if [ -n "$out_dir" ]; then
  (cd "$out_dir" && sha256sum "${written[@]##*/}" > SHA256SUMS)
  echo "SHA-256 sums in $out_dir/SHA256SUMS:"
  cat "$out_dir/SHA256SUMS"
fi
