#!/usr/bin/env bash
# uWebSockets.js (npm `uwebsockets` 3.0.6, pinned in bench/peers/uws/package-lock.json)
# as a benchmark peer: bench/peers/uws/server.js in one Node process (one event loop: one
# core; uWS's pub/sub does not cross processes, so CORES other than 1 is refused).
#   uws.sh start PORT [CORES]   -> prints the node PID
#   uws.sh stop  PORT
#   uws.sh version              -> package version, binary's source commit and sha256
# PIN_CPU=N runs it under `taskset -c N`. Installs the package (npm ci) when missing.
# Run dir: /tmp/ringcast-peers/uws-PORT. Paths: /ws?topic=T, /pub?topic=T, /stats.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cmd=${1:?start|stop|version}
pkg=$here/uws/node_modules/uwebsockets
install() {
  [ -f "$pkg/package.json" ] || (cd "$here/uws" && npm ci --no-audit --no-fund --loglevel=error >&2)
}
if [ "$cmd" = version ]; then
  install
  abi=$(node -p process.versions.modules)
  bin=$pkg/uws_linux_x64_$abi.node
  echo "uwebsockets $(node -p "require('$pkg/package.json').version") (third-party npm repackaging of uWebSockets.js)," \
    "source_commit $(cat "$pkg/source_commit" 2>/dev/null || echo unknown)," \
    "binary uws_linux_x64_$abi.node sha256 $(sha256sum "$bin" | cut -c1-16), node $(node --version)"
  exit 0
fi
port=${2:?PORT}; cores=${3:-1}
dir=/tmp/ringcast-peers/uws-$port
if [ "$cmd" = stop ]; then
  [ -f "$dir/uws.pid" ] || { echo "no $dir/uws.pid" >&2; exit 1; }
  pid=$(cat "$dir/uws.pid"); kill "$pid"
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
  echo "uws $pid still running" >&2; exit 1
fi
[ "$cmd" = start ] || { echo "usage: $0 start|stop PORT [CORES] | version" >&2; exit 2; }
[ "$cores" = 1 ] || { echo "uws.sh: one core only (one process; its pub/sub is per process)" >&2; exit 2; }
install
mkdir -p "$dir"; cd "$dir"
pin=(); [ -z "${PIN_CPU:-}" ] || pin=(taskset -c "$PIN_CPU")
"${pin[@]}" node "$here/uws/server.js" "$port" > uws.log 2>&1 < /dev/null &
echo $! > uws.pid
for _ in $(seq 100); do grep -q listening uws.log 2>/dev/null && break; sleep 0.05; done
grep -q listening uws.log || { cat uws.log >&2; exit 1; }
cat uws.pid
