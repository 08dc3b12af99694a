#!/usr/bin/env bash
# Repeats a saturated fan-out against a fresh engine until a run ends with subscribers
# short, and keeps the engine's /stats sampled each second and at the end beside the
# report, to tell an engine that stopped sending (queued bytes left) from a client that
# stopped reading. A run short at its idle end is read 10 s longer (`--late-secs`), so an
# event that came late is counted late, not lost.
#   bench/scripts/repeat-fanout.sh [DRIVER] [ATTEMPTS] [FAST]
# Defaults: epoll, 4 attempts, 10,000 SSE subscribers; 2,000 events of 128 B x 3 runs
# each, `--loops 1`, port PORT (default 18480). Output in $OUT (default
# /tmp/ringcast-peers/repeat-<date>).
set -euo pipefail
driver=${1:-epoll}; attempts=${2:-4}; fast=${3:-10000}
here=$(cd "$(dirname "$0")/.." && pwd)
root=$(cd "$here/.." && pwd)
bench=${RINGCAST_BENCH_BIN:-$root/target/release/ringcast-bench}
port=${PORT:-18480}; admin=$((port + 1))
out=${OUT:-/tmp/ringcast-peers/repeat-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
for i in $(seq "$attempts"); do
  pid=$(RINGCAST_DRIVER=$driver "$here/peers/ringcast.sh" start "$port" 1)
  timeout 300 "$bench" compare --server ringcast --target "127.0.0.1:$port" --pid "$pid" \
    --publish "/tmp/ringcast-peers/ringcast-$port/ringcast.sock" --idle 0 --fast "$fast" --rate 4000 \
    --events 2000 --bytes 128 --runs 3 > "$out/compare-$i.txt" 2>&1 &
  cpid=$!
  while kill -0 "$cpid" 2>/dev/null; do
    curl -s --max-time 1 "127.0.0.1:$admin/stats" > "$out/stats-$i.json" || true
    sleep 1
  done
  curl -s --max-time 1 "127.0.0.1:$admin/stats" > "$out/stats-$i-end.json" || true
  "$here/peers/ringcast.sh" stop "$port"
  grep -E "run [0-9]:" "$out/compare-$i.txt" | grep -oE "run [0-9]|[0-9]+ lost \([0-9]+ subscribers short\), [0-9]+ late" | paste - - || true
  if grep -qE "run [0-9]:.* ([1-9][0-9]* lost|[1-9][0-9]* late)" "$out/compare-$i.txt"; then
    echo "attempt $i ended short: $out/compare-$i.txt, $out/stats-$i-end.json"
    exit 1
  fi
done
echo "no shortfall in $attempts attempts: $out"
