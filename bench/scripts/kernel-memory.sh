#!/usr/bin/env bash
# Kernel and user bytes per idle server-side connection, the server's end measured apart
# from the client's: the "Kernel memory per idle connection" figures of bench/RESULTS.md.
#
#   bench/scripts/kernel-memory.sh BASE_BIN [OUT_DIR] [STEPS] [ROUNDS] [SETTLE_SECS]
#
# BASE_BIN is the engine to compare against (a build of an earlier commit); the engine
# under test is target/release/ringcast, the client target/release/ringcast-bench (run
# `cargo build --release -p ringcast -p ringcast-bench` first). Needs root.
#
# Method. Two network namespaces joined by a veth pair: the engine in `kmem-e`
# (10.216.0.1), the `hold` client in `kmem-c` (10.216.0.2), so no other traffic on the
# machine reaches either and the client's sockets are not the engine's. The engine runs
# in a memory cgroup of its own (cgroup v1 `memory`, or v2), so the kernel memory its
# sockets, files and io_uring requests are charged (`memory.kmem.usage_in_bytes`, v2
# `memory.stat` kernel) is the server's end alone; `hold` reads it with the engine's RSS
# before connecting and after each step of STEPS (default 1000,5000,10000,19000), each
# SETTLE_SECS (default 22: longer than two --recv-park-ms periods of 10 s) after the step's
# last handshake. Cross-checks, at the last step: /proc/slabinfo (the whole machine,
# both ends and the other tenants) and the engine namespace's /proc/net/sockstat.
#
# Not all of an idle socket's kernel memory is charged to a cgroup: on cgroup v1 the
# accepted tcp_sock is charged only with TCP accounting on (TCP_ACCOUNTING=1 in the
# environment sets the engine cgroup's memory.kmem.tcp.limit_in_bytes, to no real limit,
# which turns it on), and io_uring's per-request async state (the receive's msghdr, its
# poll entry) is never charged. So the parking saving is also measured where
# it happens: a sampler reads /proc/slabinfo and the engine's recv_parked counter every
# 250 ms, and every interval in which 100 or more receives were parked gives the change in
# the machine's slab bytes per parked receive (other tenants' churn over 250 ms is small
# against thousands of receives parked at once). Written to NAME.park-samples.
#
# Variants, alternated within each round: BASE_BIN and the engine under test for SSE and
# WebSocket, then the engine under test with --recv-park-ms 0 (parking off) and with
# --tcp-notsent-lowat 0 --tcp-user-timeout-ms 0 (the kernel's defaults) for SSE.
# One engine per run (--loops 1, heartbeats and pings off, no per-address limit: the
# client has one address), a fresh port per run (34100..).
# Every wait is bounded; the namespaces, cgroups and processes are removed on exit.
set -euo pipefail
BASE=${1:?usage: kernel-memory.sh BASE_BIN [OUT_DIR] [STEPS] [ROUNDS] [SETTLE_SECS]}
OUT=${2:-/tmp/ringcast-kmem}; STEPS=${3:-1000,5000,10000,19000}; ROUNDS=${4:-1}; SETTLE=${5:-22}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$ROOT/target/release
NE=kmem-e; NC=kmem-c; EADDR=10.216.0.1
if [ -d /sys/fs/cgroup/memory ]; then CGROOT=/sys/fs/cgroup/memory; else CGROOT=/sys/fs/cgroup; fi
CGE=$CGROOT/ringcast-kmem-engine; CGC=$CGROOT/ringcast-kmem-client
mkdir -p "$OUT/raw"
ENGINE=; PORT=34100

cleanup() {
  if [ -n "$ENGINE" ]; then kill "$ENGINE" 2>/dev/null || true; wait "$ENGINE" 2>/dev/null || true; fi
  ip netns del $NE 2>/dev/null || true
  ip netns del $NC 2>/dev/null || true
  for cg in "$CGE" "$CGC"; do
    [ -d "$cg" ] && { sleep 1; rmdir "$cg" 2>/dev/null || true; }
  done
}
trap cleanup EXIT

ip netns add $NE; ip netns add $NC
ip link add kmem-e0 type veth peer name kmem-c0
ip link set kmem-e0 netns $NE; ip link set kmem-c0 netns $NC
ip -n $NE addr add $EADDR/24 dev kmem-e0; ip -n $NC addr add 10.216.0.2/24 dev kmem-c0
for ns in $NE $NC; do ip -n $ns link set lo up; done
ip -n $NE link set kmem-e0 up; ip -n $NC link set kmem-c0 up
mkdir -p "$CGE" "$CGC"
if [ -n "${TCP_ACCOUNTING:-}" ] && [ -f "$CGE/memory.kmem.tcp.limit_in_bytes" ]; then
  echo 9223372036854771712 >"$CGE/memory.kmem.tcp.limit_in_bytes"
fi

# run LABEL ENGINE_BIN TRANSPORT ROUND [ENGINE FLAGS...]: one engine, one hold.
run() {
  local label=$1 bin=$2 transport=$3 round=$4; shift 4
  local name=$label-$transport-r$round sock=/tmp/h16-kmem/kmem-$PORT.sock
  mkdir -p /tmp/h16-kmem
  # nsenter joins the namespace without remounting /sys, so the cgroup files stay in reach.
  sh -c "echo \$\$ > $CGE/cgroup.procs; exec nsenter --net=/run/netns/$NE $bin serve --listen $EADDR:$PORT \
    --admin 127.0.0.1:$((PORT + 500)) --ingest $sock --loops 1 --heartbeat-ms 0 --max-conns-per-ip 0 \
    --ws-ping-ms 600000 $*" 2>"$OUT/raw/$name.engine.log" &
  ENGINE=$!
  sleep 1
  cp /proc/slabinfo "$OUT/raw/$name.slabinfo.before"
  nsenter --net=/run/netns/$NE python3 - "http://127.0.0.1:$((PORT + 500))/metrics" 600 \
    >"$OUT/raw/$name.park-samples" 2>/dev/null <<'PY' &
import sys, time, urllib.request
url, bound = sys.argv[1], float(sys.argv[2])
end = time.time() + bound
print("t parked slab_bytes kmalloc-512 kmalloc-96 io_kiocb TCP")
while time.time() < end:
    try:
        parked = sum(int(float(l.split()[-1])) for l in urllib.request.urlopen(url, timeout=2).read().decode().splitlines()
                     if l.startswith("ringcast_recv_parked_total"))
    except Exception:
        break
    total, objs = 0, {}
    for l in open("/proc/slabinfo").read().splitlines()[2:]:
        f = l.split()
        total += int(f[1]) * int(f[3])
        objs[f[0]] = f[1]
    print(f"{time.time():.2f} {parked} {total}", *(objs.get(k, "0") for k in ("kmalloc-512", "kmalloc-96", "io_kiocb", "TCP")), flush=True)
    time.sleep(0.25)
PY
  local sampler=$!
  # The client in its own namespace and cgroup; the engine's pid is the same seen from both.
  sh -c "echo \$\$ > $CGC/cgroup.procs; exec nsenter --net=/run/netns/$NC $BIN/ringcast-bench hold \
    --target $EADDR:$PORT --sources 0 --conns $STEPS --pid $ENGINE --transport $transport \
    --settle-secs $SETTLE --hold-secs 8 --timeout-secs 120 --json" \
    >"$OUT/raw/$name.json" 2>"$OUT/raw/$name.hold.log" &
  local hold=$!
  # At the last step, while every connection is held: the cross-checks.
  local waited=0
  until grep -q "hold: measured" "$OUT/raw/$name.hold.log" 2>/dev/null || [ $waited -ge 400 ]; do
    sleep 1; waited=$((waited + 1))
  done
  sleep 2
  cp /proc/slabinfo "$OUT/raw/$name.slabinfo.held"
  ip netns exec $NE cat /proc/net/sockstat >"$OUT/raw/$name.sockstat.held"
  { cat "$CGC/memory.kmem.usage_in_bytes" 2>/dev/null || grep '^kernel ' "$CGC/memory.stat"; } \
    >"$OUT/raw/$name.client-kernel.held"
  ip netns exec $NE curl -s --max-time 5 "http://127.0.0.1:$((PORT + 500))/metrics" \
    | grep -E '^ringcast_recv_(parked|unparked)_total' >"$OUT/raw/$name.parked" || true
  wait "$hold" || echo "$name: hold exited non-zero" >&2
  kill "$ENGINE"; wait "$ENGINE" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  ENGINE=
  PORT=$((PORT + 1))
  echo "$name load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/load.txt"
  python3 - "$OUT/raw/$name.json" "$label" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
steps = [(s["held"], round(s["bytes_per_conn"] or 0), round(s["kernel_bytes_per_conn"] or 0)) for s in r["steps"]]
print(sys.argv[2], r["transport"], "held", r["held"], "of", r["requested"], "(held, user B, kernel B):", steps)
rows = [l.split() for l in open(sys.argv[1].replace(".json", ".park-samples")).read().splitlines()[1:]]
jumps = []
for a, b in zip(rows, rows[1:]):
    k = int(b[1]) - int(a[1])
    if k >= 100:
        jumps.append((k, (int(b[2]) - int(a[2])) / k, (int(b[3]) - int(a[3])) / k, (int(b[4]) - int(a[4])) / k, (int(b[5]) - int(a[5])) / k))
if jumps:
    print("  parked at once, slab bytes / kmalloc-512 / kmalloc-96 / io_kiocb objects per parked receive:",
          [(k, round(d), round(m5, 2), round(m9, 2), round(io, 2)) for k, d, m5, m9, io in jumps])
PY
  sleep 2
}

echo "start: $(date -u +%FT%TZ) $(uptime)" | tee -a "$OUT/load.txt"
# VARIANTS (environment) picks some of the runs, e.g. VARIANTS="park:sse" for a quick check.
VARIANTS=${VARIANTS:-base:sse park:sse base:ws park:ws park-off:sse no-sockopts:sse}
for round in $(seq 1 "$ROUNDS"); do
  for v in $VARIANTS; do
    case ${v%%:*} in
      base) run base "$BASE" "${v#*:}" "$round" ;;
      park) run park "$BIN/ringcast" "${v#*:}" "$round" ;;
      park-off) run park-off "$BIN/ringcast" "${v#*:}" "$round" --recv-park-ms 0 ;;
      no-sockopts) run no-sockopts "$BIN/ringcast" "${v#*:}" "$round" --tcp-notsent-lowat 0 --tcp-user-timeout-ms 0 ;;
    esac
  done
done
echo "end: $(date -u +%FT%TZ) $(uptime)" | tee -a "$OUT/load.txt"
