#!/usr/bin/env bash
# storm.sh BIN NAME N RATE LOOPS PROCS
set -u
bin=$1; name=$2; n=$3; rate=$4; loops=$5; procs=$6
d=/tmp/h16/storm-$name; rm -rf $d; mkdir -p $d
$bin serve --listen 127.0.16.1:33200 --ingest $d/ing.sock --admin 127.0.16.1:33201 --loops $loops --max-conns-per-loop 19968 --max-conns-per-ip 0 > $d/engine.log 2>&1 &
ep=$!
for _ in $(seq 50); do [ -S $d/ing.sock ] && break; sleep 0.1; done
uptime > $d/uptime.txt
timeout 300 /work/main/target/release/ringcast-bench storm --target 127.0.16.1:33200 --ingest $d/ing.sock --admin 127.0.16.1:33201 --pid $ep --conns $n --procs $procs --sources 16 --rate $rate --timeout-secs 60 --json > $d/storm.json 2> $d/storm.err
echo "rc $?" >> $d/uptime.txt; uptime >> $d/uptime.txt
curl -s 127.0.16.1:33201/stats > $d/stats.json
awk '{print "engine cpu s", ($14+$15)/100}' /proc/$ep/stat >> $d/uptime.txt
kill $ep; wait $ep 2>/dev/null
python3 - $d <<'PY'
import json,sys
d=sys.argv[1]
try:
    j=json.load(open(d+'/storm.json'))
except Exception as e:
    print('no json', e); print(open(d+'/storm.err').read()[-2000:]); sys.exit()
def pick(o, keys):
    return {k:o.get(k) for k in keys if k in o}
print({k:v for k,v in j.items() if not isinstance(v,(list,dict))})
for k in ('classes','failures','engine'):
    if k in j: print(k, j[k] if not isinstance(j[k],list) else j[k][:5])
t=json.load(open(d+'/stats.json'))['totals']
print({k:t[k] for k in ['request_timeouts','resets','replayed','replay_gaps','recv_enobufs','accepted']})
PY
cat $d/uptime.txt
