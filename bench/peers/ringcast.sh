#!/usr/bin/env bash
# ringcast as a benchmark server, shaped like the peers' scripts.
#   ringcast.sh start PORT [LOOPS]  -> prints the engine PID
#   ringcast.sh stop  PORT
# Run dir /tmp/ringcast-peers/ringcast-PORT (ingest socket ringcast.sock, admin PORT+1).
# Binary: $RINGCAST_BIN, else target/release/ringcast of this workspace. PIN_CPU=N runs it
# under `taskset -c N`; RINGCAST_EXTRA_ARGS are added to `serve`. The engine reads
# RINGCAST_DRIVER (and every other RINGCAST_* setting) from the environment.
set -euo pipefail
cmd=${1:?start|stop}; port=${2:?PORT}; loops=${3:-1}
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=${RINGCAST_BIN:-$here/target/release/ringcast}
dir=/tmp/ringcast-peers/ringcast-$port
if [ "$cmd" = stop ]; then
  [ -f "$dir/ringcast.pid" ] || { echo "no $dir/ringcast.pid" >&2; exit 1; }
  pid=$(cat "$dir/ringcast.pid"); kill "$pid"
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
  echo "ringcast $pid still running" >&2; exit 1
fi
[ "$cmd" = start ] || { echo "usage: $0 start|stop PORT [LOOPS]" >&2; exit 2; }
mkdir -p "$dir"; cd "$dir"; rm -f ringcast.sock
# The comparisons open every subscriber from 127.0.0.1 and the peers limit nothing per
# address, so neither does ringcast here.
pin=(); [ -z "${PIN_CPU:-}" ] || pin=(taskset -c "$PIN_CPU")
# shellcheck disable=SC2086
"${pin[@]}" "$bin" serve ${RINGCAST_EXTRA_ARGS:-} --listen "127.0.0.1:$port" --ingest "$dir/ringcast.sock" \
  --admin "127.0.0.1:$((port + 1))" --loops "$loops" --max-conns-per-ip 0 > ringcast.log 2>&1 < /dev/null &
echo $! > ringcast.pid
for _ in $(seq 50); do [ -S ringcast.sock ] && break; sleep 0.1; done
echo "$(cat ringcast.pid)"
