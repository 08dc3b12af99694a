#!/usr/bin/env python3
"""Ratios of one overload-batch.sh run, from DIR/<server>/compare-*.json (the n-th result
of a server for a phase is round n): per phase and round, the median deliveries/s of each
server (before, after, kernel, uws), lost and gap-told counts, and the ratios after/before,
after/kernel, after/uws and before/kernel.

    bench/peers/overload-batch-ratios.py DIR
"""
import glob
import json
import os
import sys
from collections import defaultdict

SERVERS = ["before", "after", "kernel", "uws"]
PHASES = ["overload-w32", "overload-w1000", "fanout1000", "fanout10000"]


def phase(r):
    if r["fanout"]["requested"] == 2000:
        return f"overload-w{r['in_flight']}"
    return f"fanout{r['fanout']['requested']}"


def main(out):
    seen = defaultdict(list)
    for server in SERVERS:
        for path in sorted(glob.glob(os.path.join(out, server, "compare-*.json"))):
            r = json.load(open(path))
            if r.get("fanout"):
                seen[(server, phase(r))].append(r)
    rounds = max((len(v) for v in seen.values()), default=0)
    rate = lambda r: r["fanout"]["median_deliveries_per_sec"] if r else None
    ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "n/a"
    for p in PHASES:
        print(p)
        for n in range(rounds):
            rs = {s: (seen[(s, p)][n] if n < len(seen[(s, p)]) else None) for s in SERVERS}
            line = ", ".join(
                f"{s} {rate(r) / 1e6:.2f} M/s (lost {r['fanout']['lost']}, gap-told {r['fanout']['gap_dropped']}, "
                f"held {r['fanout']['held']}, p99 {r['fanout']['latency']['p99_ms']:.0f} ms)"
                for s, r in rs.items() if r)
            b, a, k, u = (rate(rs[s]) for s in SERVERS)
            print(f"  round {n + 1}: {line}")
            print(f"    after/before {ratio(a, b)}, after/kernel {ratio(a, k)}, after/uws {ratio(a, u)}, "
                  f"before/kernel {ratio(b, k)}")


if __name__ == "__main__":
    main(sys.argv[1])
