#!/bin/bash
# usage: runx.sh ENGINE_BIN CONNS LABEL [engine extra args...]; STORM_ARGS for the tool
E=$1; N=$2; L=$3; shift 3
D=/tmp/h16-storm
T=${TOOL:-$D/tool-new}
rm -f $D/ing.sock
$E serve --listen 127.0.16.1:33100 --ingest $D/ing.sock --admin 127.0.16.1:33101 --loops ${LOOPS:-2} --max-conns-per-ip 0 "$@" > $D/engine-$L.log 2>&1 &
EP=$!
for i in $(seq 50); do [ -S $D/ing.sock ] && break; sleep 0.1; done
uptime > $D/uptime-$L.txt
timeout 300 $T storm --target 127.0.16.1:33100 --ingest $D/ing.sock --admin 127.0.16.1:33101 --pid $EP --conns $N --json ${STORM_ARGS:-} > $D/storm-$L.json 2> $D/storm-$L.err
echo "rc=$?" >> $D/uptime-$L.txt
uptime >> $D/uptime-$L.txt
curl -s http://127.0.16.1:33101/stats > $D/stats-$L.json; kill $EP; wait $EP 2>/dev/null
python3 -c "
import json,sys;d=json.load(open('$D/storm-$L.json'))
print('$L', {k:d[k] for k in ['conns','procs','all_live_ms','heads_ms','stats_open_back_ms','live_p50_ms','live_p99_ms','engine_cpu_secs','bench_cpu_secs','published','classes','engine_resets','engine_replay_gaps','engine_replayed','failures']}); print(d['bad'][:3])" 2>&1 | cut -c1-900
cat $D/uptime-$L.txt | tr '\n' ' '; echo
