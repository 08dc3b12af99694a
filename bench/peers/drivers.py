#!/usr/bin/env python3
"""Summarises one compare-drivers.sh run from the JSON in DIR: per driver and round, the
engine's bytes per idle connection at each hold step, saturated deliveries/s and losses,
and paced p50/p99; then epoll's figures as a ratio of io_uring's, and both as a ratio of
the base build's when there is one (medians over rounds).

    bench/peers/drivers.py DIR
"""
import glob
import json
import os
import statistics
import sys


def load(path):
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None


def main(out):
    rows = {}
    for path in sorted(glob.glob(f"{out}/hold-*.json")):
        tag = os.path.basename(path)[len("hold-"):-len(".json")]
        driver, rnd = tag.rsplit("-", 1)
        hold = load(path)
        fan = load(f"{out}/fanout-{tag}.json")
        paced = load(f"{out}/paced-{tag}.json")
        rows.setdefault(driver, []).append((rnd, hold, fan, paced))
    med = {}
    for driver, runs in rows.items():
        for rnd, hold, fan, paced in runs:
            steps = " ".join(
                f"{s['held']}:{s['bytes_per_conn']:.0f}B" for s in (hold or {}).get("steps", [])
            )
            f = (fan or {}).get("fanout") or {}
            p = ((paced or {}).get("fanout") or {}).get("latency") or {}
            print(
                f"{driver:9} round {rnd}: idle {steps or 'n/a'}; fan-out "
                f"{f.get('median_deliveries_per_sec', 0) / 1e6:.2f} M/s to {f.get('held', 0)} "
                f"(lost {f.get('lost', 'n/a')}); paced p50 {p.get('p50_ms', 'n/a')} ms "
                f"p99 {p.get('p99_ms', 'n/a')} ms (lost {((paced or {}).get('fanout') or {}).get('lost', 'n/a')})"
            )
            m = med.setdefault(driver, {"idle": [], "fan": [], "p99": []})
            last = ((hold or {}).get("steps") or [None])[-1]
            if last:
                m["idle"].append(last["bytes_per_conn"])
            if f.get("median_deliveries_per_sec"):
                m["fan"].append(f["median_deliveries_per_sec"])
            if p.get("p99_ms") is not None:
                m["p99"].append(p["p99_ms"])
    names = (("idle", "idle bytes/conn at the largest step"), ("fan", "fan-out deliveries/s"), ("p99", "paced p99"))
    for num, den in (("epoll", "io-uring"), ("io-uring", "base"), ("epoll", "base")):
        if num not in med or den not in med:
            continue
        for key, name in names:
            if med[num][key] and med[den][key]:
                a, b = statistics.median(med[den][key]), statistics.median(med[num][key])
                print(f"{num} / {den}, {name}: {b:.4g} / {a:.4g} = {b / a:.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
