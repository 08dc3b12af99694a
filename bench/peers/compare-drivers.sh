#!/usr/bin/env bash
# io_uring against epoll: the same engine build, once per driver (`--driver` through
# RINGCAST_DRIVER, which ringcast.sh passes on), in alternating rounds so both see the
# same machine: idle memory per connection (`hold`, several N up to 19,000), saturated
# fan-out to FAST subscribers, and latency paced at PACED_RATE events/s to PACED_FAST
# subscribers (`compare`).
#   bench/peers/compare-drivers.sh [LOOPS] [FAST] [ROUNDS]
# Defaults: 1 loop, 10,000 fan-out subscribers, 2 rounds (io-uring, epoll, io-uring,
# epoll), the engine on PORT (default 18380). Idle steps: HOLD_STEPS (default
# 1000,5000,10000,19000). With BASE_BIN set to another build of the engine (an earlier
# commit, io_uring only), each round runs it first as `base`, so a change is measured
# against its parent in the same run. Output: JSON per variant and round in $OUT
# (default /tmp/ringcast-peers/drivers-<date>), a summary from drivers.py on stdout.
# Binaries as in compare.sh.
set -euo pipefail
loops=${1:-1}; fast=${2:-10000}; rounds=${3:-2}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bench=${RINGCAST_BENCH_BIN:-$root/target/release/ringcast-bench}
out=${OUT:-/tmp/ringcast-peers/drivers-$(date -u +%Y%m%dT%H%M%SZ)}
steps=${HOLD_STEPS:-1000,5000,10000,19000}
paced_rate=${PACED_RATE:-100}
# Paced to 10,000 subscribers at 100 events/s the client reads 1 M deliveries/s on the
# core it shares, and its own latency is what gets measured; 1,000 keeps it below that.
paced_fast=${PACED_FAST:-1000}
port=${PORT:-18380}; sock=/tmp/ringcast-peers/ringcast-$port/ringcast.sock
mkdir -p "$out"
{
  echo "start: $(date -u)"; echo "command: $0 $*"; echo "steps: $steps"
  git -C "$root" rev-parse HEAD; git -C "$root" status --short
  uname -r; nproc; uptime; top -bn1 | head -15
} > "$out/conditions-start.txt" 2>&1

variants=(io-uring epoll)
[ -z "${BASE_BIN:-}" ] || { variants=(base io-uring epoll); echo "base: $BASE_BIN" >> "$out/conditions-start.txt"; }
for round in $(seq "$rounds"); do
  for variant in "${variants[@]}"; do
    tag=$variant-$round
    if [ "$variant" = base ]; then
      pid=$(RINGCAST_BIN=$BASE_BIN "$here/ringcast.sh" start $port "$loops")
    else
      pid=$(RINGCAST_DRIVER=$variant "$here/ringcast.sh" start $port "$loops")
      log=/tmp/ringcast-peers/ringcast-$port/ringcast.log
      for _ in $(seq 100); do grep -q "ready:" "$log" && break; sleep 0.1; done
      grep -q ", $variant)" "$log" \
        || { echo "the engine does not run on $variant:" >&2; cat "$log" >&2; "$here/ringcast.sh" stop $port; exit 1; }
    fi
    timeout 600 "$bench" hold --target 127.0.0.1:$port --pid "$pid" --conns "$steps" --json \
      > "$out/hold-$tag.json" || true
    timeout 600 "$bench" compare --server ringcast --target 127.0.0.1:$port --pid "$pid" --publish "$sock" \
      --idle 0 --fast "$fast" --rate 4000 --events 2000 --bytes 128 --runs 3 --json \
      > "$out/fanout-$tag.json" || true
    [ "$paced_rate" = 0 ] || timeout 600 "$bench" compare --server ringcast --target 127.0.0.1:$port --pid "$pid" \
      --publish "$sock" --idle 0 --fast "$paced_fast" --rate 4000 --events 500 --bytes 128 --runs 3 \
      --publish-rate "$paced_rate" --json > "$out/paced-$tag.json" || true
    "$here/ringcast.sh" stop $port
  done
done
{ date -u; uptime; top -bn1 | head -15; } > "$out/conditions.txt" 2>&1
python3 "$here/drivers.py" "$out" | tee "$out/summary.txt"
echo "logs: $out"
