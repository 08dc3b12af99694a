#!/bin/bash
# The storm matrix: base and new engine alternately at each size; raw JSON into results/.
cd /tmp/h16-storm
run() { # N LOOPS PROCS RATE TAG
  for v in base new; do
    LOOPS=$2 STORM_ARGS="--procs $3 --sources 16 --rate $4 --timeout-secs 60" ./runx.sh /tmp/h16-storm/$v/ringcast $1 m-$5-$v --max-conns-per-loop 19968 | grep -v "^\[\]"
  done
}
run 5000 2 1 50 5k-r50
run 5000 2 1 10 5k-r10
run 18000 2 2 10 18k-r10
run 50000 4 3 5 50k-r5
run 100000 6 6 5 100k-r5
run 100000 6 6 2 100k-r2
