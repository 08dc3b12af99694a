#!/usr/bin/env bash
# Idle memory per connection for every transport, a fresh engine per run, and the
# engine's memory against N in steps: the `hold` figures of bench/RESULTS.md.
#
#   bench/scripts/hold-transports.sh [OUT_DIR] [RUNS] [N] [STEPS] [STEP_LOOPS]
#
# Builds nothing: run `cargo build --release -p ringcast -p ringcast-bench` first. Each
# run starts its own engine on 127.0.0.1:18700 (admin 19700): `--loops 1` for the
# per-transport runs (N connections, default 19,000), `--loops STEP_LOOPS` (default 3) for
# the steps run (STEPS, default 2000,5000,10000,19000,38000,57000). Heartbeats and
# WebSocket pings are off so that only idle memory is measured. Every result is written
# to OUT_DIR (JSON, Markdown, SVG) by `hold --out`; one summary line per run goes to
# stdout. Stops everything it started.
set -euo pipefail
OUT=${1:-/tmp/ringcast-hold}; RUNS=${2:-3}; N=${3:-19000}
STEPS=${4:-2000,5000,10000,19000,38000,57000}; STEP_LOOPS=${5:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$ROOT/target/release
mkdir -p "$OUT"
ENGINE=
trap '[ -n "$ENGINE" ] && kill $ENGINE 2>/dev/null; wait 2>/dev/null' EXIT

# run LOOPS CONNS TRANSPORT: one engine, one hold, one summary line.
run() {
  local sock
  sock=$(mktemp -u /tmp/ringcast-hold.XXXXXX.sock)
  "$BIN/ringcast" serve --listen 127.0.0.1:18700 --admin 127.0.0.1:19700 --ingest "$sock" \
    --loops "$1" --heartbeat-ms 0 --ws-ping-ms 600000 --poll-wait-max-ms 600000 2>/dev/null &
  ENGINE=$!
  sleep 0.5
  "$BIN/ringcast-bench" hold --target 127.0.0.1:18700 --conns "$2" --pid "$ENGINE" \
    --transport "$3" --poll-wait-secs 600 --json --out "$OUT" 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["transport"], "loops='"$1"'", "held", r["held"], "of", r["requested"], "B/conn", r["bytes_per_conn"], "steps", [(s["held"], s["bytes_per_conn"]) for s in r["steps"]], "ramp_ms", r["ramp_ms"], "p99_ms", r["handshake_p99_us"]/1000, "failed", r["failed"])'
  kill "$ENGINE"; wait "$ENGINE" 2>/dev/null || true
  ENGINE=
  sleep 1
}

for _ in $(seq 1 "$RUNS"); do
  for t in sse ws ndjson poll; do run 1 "$N" "$t"; done
done
run "$STEP_LOOPS" "$STEPS" sse
