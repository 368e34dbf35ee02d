#!/usr/bin/env bash
# Webhook throughput of `jitr serve` (embedded) on loopback, measured with wrk.
# Usage: bash bench/webhook-throughput.sh [path/to/jitr] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
JITR="${1:-}"
if [ -z "$JITR" ]; then
  for dir in "${CARGO_TARGET_DIR:-}" "$HOME/.cache/jitr-target" target; do
    for profile in release debug; do
      [ -n "$dir" ] && [ -x "$dir/$profile/jitr" ] && { JITR="$dir/$profile/jitr"; break 2; }
    done
  done
fi
[ -x "${JITR:-}" ] || { echo "no jitr binary found: cargo build -p jitr-handlers, or pass its path" >&2; exit 2; }
SECONDS_TO_RUN="${2:-10}"
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 2; }
DATA=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export JITR_WEBHOOK_SECRET=bench-secret
"$JITR" serve --data-dir "$DATA" --listen "127.0.0.1:$PORT" >/dev/null 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; rm -rf "$DATA"' EXIT
sleep 1
BODY=$(python3 - <<'PY'
import json
print(json.dumps({"action": "queued", "workflow_job": {"id": 1, "run_id": 1, "status": "queued",
  "labels": ["self-hosted", "linux"], "runner_name": None, "conclusion": None},
  "repository": {"name": "widgets", "full_name": "acme/widgets", "owner": {"login": "acme"}},
  "installation": {"id": 1}}, separators=(",", ":")))
PY
)
SIGNATURE="sha256=$(printf '%s' "$BODY" | openssl dgst -sha256 -hmac "$JITR_WEBHOOK_SECRET" | sed 's/^.* //')"
export BODY SIGNATURE
wrk -t2 -c32 -d"${SECONDS_TO_RUN}s" --latency -s bench/webhook.lua "http://127.0.0.1:$PORT"
