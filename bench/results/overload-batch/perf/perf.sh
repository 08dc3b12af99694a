#!/usr/bin/env bash
# perf.sh NAME BIN PORT: engine pinned to CPU 0, overload W=1000, 8000 events; perf records
# the engine for the whole compare (ramp, warm-up, run); engine CPU from /proc/PID/stat.
set -euo pipefail
name=$1; bin=$2; p=$3; dir=/tmp/h16-batch/perf-$name; mkdir -p $dir; rm -f $dir/rc.sock
taskset -c 0 $bin serve --ws-ping-ms 600000 --listen 127.0.0.1:$p --ingest $dir/rc.sock --admin 127.0.0.1:$((p+1)) --loops 1 --max-conns-per-ip 0 > $dir/rc.log 2>&1 < /dev/null &
pid=$!
for _ in $(seq 50); do [ -S $dir/rc.sock ] && break; sleep 0.1; done
tck=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' /proc/$pid/stat; }
uptime > $dir/uptime.txt
c0=$(cpu)
perf record -F 499 -g -p $pid -o $dir/perf.data > $dir/perf-record.log 2>&1 &
ppid=$!
sleep 0.5
timeout 300 taskset -c 1 /tmp/h16-batch/base/ringcast-bench compare --server ringcast --transport ws --target 127.0.0.1:$p --admin 127.0.0.1:$((p+1)) --ingest $dir/rc.sock --pid $pid --bytes 128 --rate 4000 --idle 0 --out $dir --scenario overload --events 8000 --runs 1 --timeout-secs 280 --in-flight 1000 > $dir/compare.txt 2>&1 || true
kill -INT $ppid; wait $ppid || true
c1=$(cpu)
uptime >> $dir/uptime.txt
kill $pid; wait $pid 2>/dev/null || true
echo "engine cpu ticks $((c1 - c0)) (CLK_TCK $tck) = $(echo "scale=2; ($c1 - $c0) / $tck" | bc) s" > $dir/cpu.txt
perf report -i $dir/perf.data --no-children --sort symbol --stdio 2>/dev/null | grep -E "^ +[0-9]|^# (Samples|Event)" | head -40 > $dir/top.txt
