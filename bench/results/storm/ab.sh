#!/bin/bash
# usage: ab.sh N ROUNDS TAG [storm args]: base and new engine alternately, same tool
N=$1; R=$2; TAG=$3; shift 3
for r in $(seq $R); do
  for v in base new; do
    STORM_ARGS="$*" ./runx.sh /tmp/h16-storm/$v/ringcast $N $TAG-$v-$r
  done
done
