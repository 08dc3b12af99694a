#!/usr/bin/env bash
# ringcast against uWebSockets.js and the kernel-only reference, over WebSockets
# (issue 16): one command, results in $OUT (default /tmp/ringcast-peers/uws-<date>).
#   bench/peers/compare-uws.sh [REPEAT] [FAST] [EVENTS] [RUNS]
# Defaults: 2 rounds; 10,000 fan-out subscribers; 2,000 events of 128 B per run; 2 runs.
# Each server runs pinned to CPU 0 (PIN_CPU, default 0), the client to CPU 1 (CLIENT_CPU,
# default 1), one server at a time, one core each (ringcast --loops 1, one uws process,
# the reference's one thread). Per server and round:
#   1. idle memory at 1,000, 5,000, 10,000 and 19,000 WebSockets (IDLE; not for the
#      reference), then saturated fan-out to FAST subscribers with W=32 publishes in flight;
#   2. paced fan-out at 100 events/s (500 events per run) to FAST subscribers: p99;
#   3. overload: 2,000 subscribers, OVERLOAD_EVENTS (default 4,000) per run, OVERLOAD_RUNS
#      (default 1) runs, W=32 and W=1000.
# ringcast runs with --ws-ping-ms 600000 and uws with idleTimeout 0, so neither pings an
# idle connection. Every figure is in $OUT/*.json (`compare --out`); the logs are
# <server>-<phase>-<round>.txt; the load before and after each server in conditions.txt.
set -euo pipefail
repeat=${1:-2}; fast=${2:-10000}; events=${3:-2000}; runs=${4:-2}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bench=${RINGCAST_BENCH_BIN:-$root/target/release/ringcast-bench}
out=${OUT:-/tmp/ringcast-peers/uws-$(date -u +%Y%m%dT%H%M%SZ)}
idle=${IDLE:-1000,5000,10000,19000}
overload_events=${OVERLOAD_EVENTS:-4000}; overload_runs=${OVERLOAD_RUNS:-1}
server_cpu=${PIN_CPU:-0}; client_cpu=${CLIENT_CPU:-1}
# Ports (and so the run dirs /tmp/ringcast-peers/<server>-PORT) off the ones compare.sh
# uses, so that two comparisons on one machine do not meet.
rc_port=${RINGCAST_PORT:-28480}; uws_port=${UWS_PORT:-28490}; ref_port=${REF_PORT:-28500}
mkdir -p "$out"
client() { timeout 900 taskset -c "$client_cpu" "$bench" compare "$@"; }
note() {
  { echo "== $1: $(date -u)"; uptime; top -bn1 | sed -n '7,14p'; } >> "$out/conditions.txt" 2>&1
}
{
  echo "command: $0 $*"; echo "bench: $bench"; git -C "$root" rev-parse HEAD
  git -C "$root" status --short; uname -r; nproc; node --version; "$here/uws.sh" version
  "${RINGCAST_BIN:-$root/target/release/ringcast}" --version
} > "$out/conditions.txt" 2>&1

# measure SERVER PORT ROUND PID [--publish SOCK]: the four phases against one server.
measure() {
  local server=$1 port=$2 round=$3 pid=$4; shift 4
  local common=(--server "$server" --transport ws --target "127.0.0.1:$port" --pid "$pid" --bytes 128 \
    --rate 4000 --out "$out" "$@")
  local idle_flag=(--idle "$idle"); [ "$server" != kernel ] || idle_flag=(--idle 0)
  client "${common[@]}" "${idle_flag[@]}" --fast "$fast" --events "$events" --runs "$runs" --in-flight 32 \
    > "$out/$server-saturated-$round.txt" 2>&1 || true
  client "${common[@]}" --idle 0 --fast "$fast" --events 500 --runs "$runs" --publish-rate 100 --in-flight 32 \
    > "$out/$server-paced-$round.txt" 2>&1 || true
  for w in 32 1000; do
    client "${common[@]}" --scenario overload --events "$overload_events" --runs "$overload_runs" --timeout-secs 300 --in-flight "$w" \
      > "$out/$server-overload-w$w-$round.txt" 2>&1 || true
  done
}

for round in $(seq "$repeat"); do
  note "ringcast round $round"
  pid=$(PIN_CPU=$server_cpu RINGCAST_EXTRA_ARGS="--ws-ping-ms 600000" "$here/ringcast.sh" start "$rc_port" 1)
  measure ringcast "$rc_port" "$round" "$pid" --ingest "/tmp/ringcast-peers/ringcast-$rc_port/ringcast.sock"
  "$here/ringcast.sh" stop "$rc_port"

  note "uws round $round"
  pid=$(PIN_CPU=$server_cpu "$here/uws.sh" start "$uws_port" 1)
  measure uws "$uws_port" "$round" "$pid"
  "$here/uws.sh" stop "$uws_port"

  note "kernel round $round"
  taskset -c "$server_cpu" "$bench" ws-ref-server --listen "127.0.0.1:$ref_port" --max-secs 1800 \
    > "$out/kernel-server.log" 2>&1 < /dev/null &
  pid=$!
  for _ in $(seq 50); do grep -q listening "$out/kernel-server.log" 2>/dev/null && break; sleep 0.1; done
  measure kernel "$ref_port" "$round" "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
note "end"
grep -h -E 'idle:|SUMMARY' "$out"/*.txt || true
python3 "$here/uws-ratios.py" "$out" | tee "$out/ratios.txt"
echo "results: $out"
