#!/usr/bin/env python3
"""Ratios of one compare-uws.sh run, from the compare-*.json files in DIR, per round (the
n-th result of a server for a phase is round n): saturated fan-out deliveries/s of
ringcast against uWebSockets and the kernel-only reference, idle bytes per connection at
each step, paced p99, and the overload phases (deliveries/s, lost, told by gap notices).

    bench/peers/uws-ratios.py DIR
"""
import glob
import json
import sys
from collections import defaultdict


def phase(r):
    if r["publish_rate"]:
        return "paced"
    if r["fanout"] and r["fanout"]["requested"] == 2000:
        return f"overload-w{r['in_flight']}"
    return "saturated"


def main(out):
    seen = defaultdict(list)
    for path in sorted(glob.glob(f"{out}/compare-*.json")):
        r = json.load(open(path))
        seen[(r["server"], phase(r))].append(r)
    rounds = max((len(v) for v in seen.values()), default=0)
    get = lambda s, p, n: (seen.get((s, p)) or [None] * (n + 1))[n] if n < len(seen.get((s, p), [])) else None
    rate = lambda r: r and r["fanout"] and r["fanout"]["median_deliveries_per_sec"]
    ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "n/a"
    for n in range(rounds):
        print(f"round {n + 1}")
        for p in ["saturated", "overload-w32", "overload-w1000"]:
            rs = {s: get(s, p, n) for s in ["ringcast", "uws", "kernel"]}
            line = ", ".join(
                f"{s} {rate(r) / 1e6:.2f} M/s (lost {r['fanout']['lost']}, gap-told {r['fanout']['gap_dropped']}, "
                f"held {r['fanout']['held']})" for s, r in rs.items() if rate(r))
            print(f"  {p}: {line}")
            print(f"    ringcast/uws {ratio(rate(rs['ringcast']), rate(rs['uws']))}, "
                  f"ringcast/kernel {ratio(rate(rs['ringcast']), rate(rs['kernel']))}")
        rs = {s: get(s, "paced", n) for s in ["ringcast", "uws", "kernel"]}
        print("  paced 100/s p99: " + ", ".join(
            f"{s} {r['fanout']['latency']['p99_ms']:.2f} ms (lost {r['fanout']['lost']})"
            for s, r in rs.items() if r and r["fanout"]))
        idle = {s: get(s, "saturated", n) for s in ["ringcast", "uws"]}
        steps = {s: {i["requested"]: i for i in (r or {}).get("idle_steps", [])} for s, r in idle.items()}
        for k in sorted(set(steps["ringcast"]) | set(steps["uws"])):
            a = steps["ringcast"].get(k, {}).get("bytes_per_conn")
            b = steps["uws"].get(k, {}).get("bytes_per_conn")
            fmt = lambda v: f"{v:.0f} B" if v is not None else "n/a"
            print(f"  idle {k}: ringcast {fmt(a)}, uws {fmt(b)}, ringcast/uws {ratio(a, b)}")


if __name__ == "__main__":
    main(sys.argv[1])
