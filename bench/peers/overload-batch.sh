#!/usr/bin/env bash
# Two ringcast builds, the kernel-only reference and uWebSockets.js over WebSockets, in one
# run, alternating round by round, so the before/after ratio is read within one run of a
# shared machine (issue 16's saturated fan-out and overload targets).
#   bench/peers/overload-batch.sh BEFORE_BIN AFTER_BIN [ROUNDS]
# The two builds run in alternating order. Every server is pinned to CPU 0 (PIN_CPU), the client to CPU 1 (CLIENT_CPU), one server
# at a time, one core each (ringcast --loops 1). Per server and round, with 128 B events:
#   overload, 2,000 subscribers, OVERLOAD_EVENTS (4,000) events, W = 32 and W = 1000
#   (uWebSockets: W = 32 only, unless UWS_W1000=1: it answers 1,000 publishes in 10-30 s);
#   saturated fan-out to 1,000 and 10,000 subscribers, FAN_EVENTS (2,000) events x 2 runs,
#   W = 32.
# Ports: BASE_PORT (32100) and up; run dirs, logs and JSON under OUT (/tmp/h16-batch/run-<date>):
# OUT/<server>/compare-*.json, OUT/<server>-<phase>-<round>.txt, the load in conditions.txt.
set -euo pipefail
before=${1:?BEFORE_BIN}; after=${2:?AFTER_BIN}; rounds=${3:-2}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bench=${RINGCAST_BENCH_BIN:-$root/target/release/ringcast-bench}
out=${OUT:-/tmp/h16-batch/run-$(date -u +%Y%m%dT%H%M%SZ)}
port=${BASE_PORT:-32100}
overload_events=${OVERLOAD_EVENTS:-4000}; fan_events=${FAN_EVENTS:-2000}
server_cpu=${PIN_CPU:-0}; client_cpu=${CLIENT_CPU:-1}
mkdir -p "$out"
note() {
  { echo "== $1: $(date -u)"; uptime; top -bn1 | sed -n '7,14p'; } >> "$out/conditions.txt" 2>&1
}
{
  echo "command: $0 $*"; echo "bench: $bench"; git -C "$root" rev-parse HEAD
  git -C "$root" status --short; uname -r; nproc; node --version
  echo "before: $before ($("$before" --version))"; echo "after: $after ($("$after" --version))"
  sha256sum "$before" "$after"
} > "$out/conditions.txt" 2>&1

# phases NAME ROUND PID W1000 ARGS...: every phase against one running server.
phases() {
  local name=$1 round=$2 pid=$3 w1000=$4; shift 4
  mkdir -p "$out/$name"
  local common=(--transport ws --pid "$pid" --bytes 128 --rate 4000 --idle 0 --out "$out/$name" "$@")
  local ws=(32); [ "$w1000" = 0 ] || ws=(32 1000)
  for w in "${ws[@]}"; do
    timeout 600 taskset -c "$client_cpu" "$bench" compare "${common[@]}" --scenario overload \
      --events "$overload_events" --runs 1 --timeout-secs 300 --in-flight "$w" \
      > "$out/$name-overload-w$w-$round.txt" 2>&1 || true
  done
  for n in 1000 10000; do
    timeout 600 taskset -c "$client_cpu" "$bench" compare "${common[@]}" --fast "$n" \
      --events "$fan_events" --runs 2 --in-flight 32 \
      > "$out/$name-fanout$n-$round.txt" 2>&1 || true
  done
}

# ringcast NAME BIN ROUND PORT
ringcast() {
  local name=$1 bin=$2 round=$3 p=$4 dir=$out/$1-run
  mkdir -p "$dir"; rm -f "$dir/ringcast.sock"
  note "$name round $round"
  taskset -c "$server_cpu" "$bin" serve --ws-ping-ms 600000 --listen "127.0.0.1:$p" \
    --ingest "$dir/ringcast.sock" --admin "127.0.0.1:$((p + 1))" --loops 1 --max-conns-per-ip 0 \
    > "$dir/ringcast-$round.log" 2>&1 < /dev/null &
  local pid=$!
  for _ in $(seq 50); do [ -S "$dir/ringcast.sock" ] && break; sleep 0.1; done
  phases "$name" "$round" "$pid" 1 --server ringcast --target "127.0.0.1:$p" \
    --admin "127.0.0.1:$((p + 1))" --ingest "$dir/ringcast.sock"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

for round in $(seq "$rounds"); do
  # The order alternates (before-after, after-before, ...), so that a load trend over the
  # run does not favour one build.
  if [ $((round % 2)) = 1 ]; then
    ringcast before "$before" "$round" "$port"
    ringcast after "$after" "$round" $((port + 10))
  else
    ringcast after "$after" "$round" $((port + 10))
    ringcast before "$before" "$round" "$port"
  fi

  note "kernel round $round"
  taskset -c "$server_cpu" "$bench" ws-ref-server --listen "127.0.0.1:$((port + 20))" --max-secs 1800 \
    > "$out/kernel-server-$round.log" 2>&1 < /dev/null &
  pid=$!
  for _ in $(seq 50); do grep -q listening "$out/kernel-server-$round.log" 2>/dev/null && break; sleep 0.1; done
  phases kernel "$round" "$pid" 1 --server kernel --target "127.0.0.1:$((port + 20))" --admin none
  kill "$pid"; wait "$pid" 2>/dev/null || true

  if [ -f "$here/uws/node_modules/uwebsockets/package.json" ]; then
    note "uws round $round"
    taskset -c "$server_cpu" node "$here/uws/server.js" $((port + 30)) > "$out/uws-server-$round.log" 2>&1 < /dev/null &
    pid=$!
    for _ in $(seq 100); do grep -q listening "$out/uws-server-$round.log" 2>/dev/null && break; sleep 0.05; done
    phases uws "$round" "$pid" "${UWS_W1000:-0}" --server uws --target "127.0.0.1:$((port + 30))" --admin none
    kill "$pid"; wait "$pid" 2>/dev/null || true
  fi
done
note "end"
grep -h SUMMARY "$out"/*.txt || true
python3 "$here/overload-batch-ratios.py" "$out" | tee "$out/ratios.txt"
echo "results: $out"
