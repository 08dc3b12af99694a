#!/usr/bin/env bash
# Engine CPU time over 60 s while it holds N idle SSE subscribers, heartbeats on or off.
#
#   bench/scripts/cpu-idle.sh HEARTBEAT_MS [N] [LOOPS]
#
# Builds nothing: run `cargo build --release -p ringcast -p ringcast-bench` first. Starts
# its own engine on 127.0.0.1:18600 (admin 19600), holds N connections with
# ringcast-bench hold (several worker processes, 16 source addresses), samples the
# engine's utime+stime from /proc over 60 s once all are open, prints one line, and stops
# everything it started.
set -euo pipefail
HB=${1:?heartbeat ms (0 = off)}; N=${2:-100000}; LOOPS=${3:-6}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$ROOT/target/release
SOCK=$(mktemp -u /tmp/ringcast-cpu.XXXXXX.sock)
"$BIN/ringcast" serve --listen 127.0.0.1:18600 --admin 127.0.0.1:19600 --ingest "$SOCK" \
  --loops "$LOOPS" --heartbeat-ms "$HB" 2>/dev/null &
ENGINE=$!
trap 'kill $ENGINE 2>/dev/null; kill $BENCH 2>/dev/null; wait 2>/dev/null' EXIT
sleep 0.5
"$BIN/ringcast-bench" hold --target 127.0.0.1:18600 --conns "$N" --pid "$ENGINE" \
  --settle-secs 2 --hold-secs 80 >/dev/null 2>&1 &
BENCH=$!
open=0
for _ in $(seq 1 120); do
  open=$(curl -s 127.0.0.1:19600/stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["totals"]["open"])')
  [ "$open" -ge "$N" ] && break
  sleep 1
done
sleep 5
ticks() { awk '{print $14+$15}' "/proc/$ENGINE/stat"; }
c0=$(ticks); sleep 60; c1=$(ticks)
beats=$(curl -s 127.0.0.1:19600/stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["totals"]["heartbeats"])')
hz=$(getconf CLK_TCK)
echo "N=$open loops=$LOOPS heartbeat_ms=$HB engine_cpu_60s=$(echo "scale=2; ($c1-$c0)/$hz" | bc) s heartbeats_total=$beats $(grep VmRSS /proc/$ENGINE/status | tr -s ' \t' ' ') kernel=$(uname -r)"
