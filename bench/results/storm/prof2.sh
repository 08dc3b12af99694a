#!/bin/bash
# usage: prof2.sh ENGINE CONNS LABEL: storm (STORM_ARGS) with perf record -g on the engine from PROF_DELAY s for PROF_SECS s
E=$1; N=$2; L=$3; shift 3
D=/tmp/h16-storm
rm -f $D/ing.sock
$E serve --listen 127.0.16.1:33100 --ingest $D/ing.sock --admin 127.0.16.1:33101 --loops ${LOOPS:-2} --max-conns-per-ip 0 "$@" > $D/engine-$L.log 2>&1 &
EP=$!
for i in $(seq 50); do [ -S $D/ing.sock ] && break; sleep 0.1; done
uptime > $D/uptime-$L.txt
timeout 300 $D/tool-new storm --target 127.0.16.1:33100 --ingest $D/ing.sock --admin 127.0.16.1:33101 --pid $EP --conns $N --json $STORM_ARGS > $D/storm-$L.json 2> $D/storm-$L.err &
SP=$!
sleep ${PROF_DELAY:-5}
timeout ${PROF_SECS:-8} perf record -F 499 -g -p $EP -o $D/perf-$L.data > /dev/null 2>&1
wait $SP; echo "rc=$?" >> $D/uptime-$L.txt
uptime >> $D/uptime-$L.txt
kill $EP; wait $EP 2>/dev/null
perf report -i $D/perf-$L.data --no-children --sort symbol --stdio 2>/dev/null | grep -E "^ +[0-9]" | head -25 > $D/perf-$L.top
perf report -i $D/perf-$L.data --children --sort symbol --stdio 2>/dev/null | grep -E "^ +[0-9]" | grep ringcast | head -25 > $D/perf-$L.children
python3 -c "
import json;d=json.load(open('$D/storm-$L.json'));print('$L', {k:d[k] for k in ['conns','all_live_ms','heads_ms','live_p50_ms','engine_cpu_secs','bench_cpu_secs','classes','engine_replayed','failures']})" | cut -c1-600
