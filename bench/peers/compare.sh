#!/usr/bin/env bash
# One command for the side-by-side comparison (bench/RESULTS.md): ringcast, nginx+nchan
# and Pushpin, one at a time on the same core budget, each through
# `ringcast-bench compare`, then the kernel-only baseline through `ringcast-bench fanout
# --kernel-baseline`. Output: one log per server in $OUT (default
# /tmp/ringcast-peers/compare-<date>), and their summary lines on stdout.
#   bench/peers/compare.sh [CORES] [IDLE] [FAST] [EVENTS] [RUNS]
# Defaults: 1 core (ringcast --loops 1, nginx worker_processes 1), 5000 idle subscribers,
# 1000 fan-out subscribers, 2000 events of 128 B per run, 3 runs. Pushpin has no core
# setting: it runs its four services as usual (noted in the results). A second, paced
# fan-out per server (PACED_RATE events/s, default 100; 0 skips it; 500 events per run)
# measures latency below every server's capacity; its log is <server>-paced.txt.
# Every measurement also writes JSON, Markdown (latency p50/p90/p99/p99.9/max) and SVG
# charts into $OUT (`--out`). Binaries: $RINGCAST_BENCH_BIN and $RINGCAST_BIN (read by
# ringcast.sh), else target/release/ of this workspace. The load at the start and end, the
# commit and the tree's state go to $OUT/conditions-start.txt and $OUT/conditions.txt.
set -euo pipefail
cores=${1:-1}; idle=${2:-5000}; fast=${3:-1000}; events=${4:-2000}; runs=${5:-3}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bench=${RINGCAST_BENCH_BIN:-$root/target/release/ringcast-bench}
out=${OUT:-/tmp/ringcast-peers/compare-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
paced_rate=${PACED_RATE:-100}
paced=(--idle 0 --fast "$fast" --events 500 --bytes 128 --runs "$runs" --publish-rate "$paced_rate" --out "$out")
common=(--idle "$idle" --rate 400 --fast "$fast" --events "$events" --bytes 128 --runs "$runs" --out "$out")
{
  echo "start: $(date -u)"; echo "command: $0 $*"
  echo "bench: $bench"; echo "engine: ${RINGCAST_BIN:-$root/target/release/ringcast}"
  git -C "$root" rev-parse HEAD; git -C "$root" status --short
  uptime; top -bn1 | head -15
} > "$out/conditions-start.txt" 2>&1
pidflags() { for p in "$@"; do printf -- '--pid %s ' "$p"; done; }

# ringcast
pids=$("$here/ringcast.sh" start 18080 "$cores")
timeout 600 "$bench" compare --server ringcast --target 127.0.0.1:18080 $(pidflags $pids) \
  --publish /tmp/ringcast-peers/ringcast-18080/ringcast.sock "${common[@]}" > "$out/ringcast.txt" || true
[ "$paced_rate" = 0 ] || timeout 600 "$bench" compare --server ringcast --target 127.0.0.1:18080 $(pidflags $pids) \
  --publish /tmp/ringcast-peers/ringcast-18080/ringcast.sock "${paced[@]}" > "$out/ringcast-paced.txt" || true
"$here/ringcast.sh" stop 18080

# nginx + nchan
pids=$("$here/nchan.sh" start 18090 "$cores")
timeout 600 "$bench" compare --server nchan --target 127.0.0.1:18090 $(pidflags $pids) \
  "${common[@]}" > "$out/nchan.txt" || true
[ "$paced_rate" = 0 ] || timeout 600 "$bench" compare --server nchan --target 127.0.0.1:18090 $(pidflags $pids) \
  "${paced[@]}" > "$out/nchan-paced.txt" || true
"$here/nchan.sh" stop 18090

# Pushpin
pids=$("$here/pushpin.sh" start 17999)
timeout 600 "$bench" compare --server pushpin --target 127.0.0.1:17999 $(pidflags $pids) \
  "${common[@]}" > "$out/pushpin.txt" || true
[ "$paced_rate" = 0 ] || timeout 600 "$bench" compare --server pushpin --target 127.0.0.1:17999 $(pidflags $pids) \
  "${paced[@]}" > "$out/pushpin-paced.txt" || true
"$here/pushpin.sh" stop 17999

# Kernel-only baseline: the same subscribers and bytes, written by a trivial loop,
# ungated (--window 0) like the servers above. It holds both ends of every connection in
# one process, so under RLIMIT_NOFILE it can hold at most (hard limit - 40) / 2 (9,980
# here when FAST is 10,000).
base_fast=$(( fast < ($(ulimit -Hn) - 40) / 2 ? fast : ($(ulimit -Hn) - 40) / 2 ))
timeout 600 "$bench" fanout --kernel-baseline --baseline-senders "$cores" --window 0 --fast "$base_fast" \
  --events "$events" --bytes 128 --runs "$runs" --warmup "$((events / 10))" --out "$out" > "$out/kernel.txt" || true

{
  nginx -v 2>&1; dpkg-query -W -f '${Package} ${Version}\n' nginx libnginx-mod-nchan pushpin
  git -C "$root" rev-parse HEAD; uname -r; nproc; date -u
} > "$out/conditions.txt" 2>&1
{ uptime; top -bn1 | head -15; } >> "$out/conditions.txt"
grep -h -E 'idle:|SUMMARY|median|command:' "$out"/*.txt
python3 "$here/ratios.py" "$out" | tee "$out/ratios.txt"
echo "logs: $out"
