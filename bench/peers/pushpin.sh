#!/usr/bin/env bash
# Pushpin as a benchmark peer (recipe: /work/shared/PEERS.md), built-in test handler,
# no origin.
#   pushpin.sh start PORT   -> prints the PIDs of pushpin and its services
#   pushpin.sh stop  PORT
# Stream: GET http://127.0.0.1:PORT/test/stream (channel `test`); publish: POST JSON to
# http://127.0.0.1:5561/publish/ (one instance at a time: the publish port is fixed).
# Ramp new connections at about 500/s: faster bursts get `500 Accept service unavailable`.
set -euo pipefail
cmd=${1:?start|stop}; port=${2:?PORT}
# pushpin-handler sends every (event, subscriber) delivery through one rate limiter:
# Debian's default message_rate=2500 counts deliveries per second (2.5 events/s to 1,000
# subscribers) and message_hwm=25000 queued deliveries. 0 turns the limiter off
# (handler ratelimiter.cpp: rate <= 0 is no limit, hwm <= 0 no bound). A huge rate does
# NOT: any rate > 0 keeps the limiter's 25 ms batch timer, which every queued delivery
# restarts, so nothing is delivered while publishes come more often than every 25 ms;
# the backlog then floods each connection's hard-coded 100-item queue
# (httpsession.cpp PUBLISH_QUEUE_MAX, "publish queue at max, dropping"). The earlier
# default 100000000 caused the 21 % loss and the seconds of paced latency in
# bench/RESULTS.md's 1,000-subscriber run (finding: /tmp/ringcast-peers/pushpin-loss.md).
# Even with the limiter off Pushpin drops, by design, what exceeds about 100 queued plus
# client_buffer_size (8192 B, ~60 events) of credit per connection: /publish/ has no
# backpressure. Set PUSHPIN_MESSAGE_RATE=2500 PUSHPIN_MESSAGE_HWM=25000 for Debian's values.
rate=${PUSHPIN_MESSAGE_RATE:-0}; hwm=${PUSHPIN_MESSAGE_HWM:-0}
dir=/tmp/ringcast-peers/pushpin-$port
if [ "$cmd" = stop ]; then
  [ -f "$dir/pushpin.pid" ] || { echo "no $dir/pushpin.pid" >&2; exit 1; }
  pid=$(cat "$dir/pushpin.pid"); kill "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
  echo "pushpin $pid still running" >&2; exit 1
fi
[ "$cmd" = start ] || { echo "usage: $0 start|stop PORT" >&2; exit 2; }
if ! command -v pushpin >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends pushpin >&2
fi
mkdir -p "$dir"/{run,log}
cd "$dir"
sed -e "s#^rundir=.*#rundir=$dir/run#" -e "s#^logdir=.*#logdir=$dir/log#" \
    -e 's#^services=.*#services=condure,zurl,pushpin-proxy,pushpin-handler#' \
    -e "s#^http_port=7999#http_port=127.0.0.1:$port#" \
    -e 's#^\[proxy\]$#[proxy]\nzurl_out_specs=ipc://{rundir}/{ipc_prefix}zurl-in\nzurl_out_stream_specs=ipc://{rundir}/{ipc_prefix}zurl-in-stream\nzurl_in_specs=ipc://{rundir}/{ipc_prefix}zurl-out#' \
    -e "s#^message_rate=.*#message_rate=$rate#" -e "s#^message_hwm=.*#message_hwm=$hwm#" \
    /etc/pushpin/pushpin.conf > pushpin.conf
printf '*,path_beg=/test test\n' > routes
setsid pushpin --config "$dir/pushpin.conf" > log/runner.out 2>&1 < /dev/null &
echo $! > pushpin.pid
pid=$(cat pushpin.pid)
for _ in $(seq 100); do
  curl -s -o /dev/null -m 1 -X POST -d '{"items":[]}' http://127.0.0.1:5561/publish/ && \
  curl -s -o /dev/null -m 1 "http://127.0.0.1:$port/test/" && break
  sleep 0.1
done
sleep 0.5
echo "$pid" $(pgrep -P "$pid" | tr '\n' ' ')
