#!/usr/bin/env python3
"""Tables of bench/scripts/kernel-memory.sh's raw files, as bench/RESULTS.md shows them.

    bench/scripts/kernel-memory-table.py OUT_DIR

Per run (variant, transport, round): each step's held connections, engine RSS growth and
cgroup-charged kernel growth per connection; at the last step the engine namespace's TCP
sockets in use and the whole machine's slab objects by cache (both ends, other tenants
included); and, for the runs that park, the change in slab objects per parked receive
over each 250 ms sample in which 100 or more receives were parked (median over samples).
"""
import glob
import json
import os
import statistics
import sys

CACHES = ("kmalloc-512", "kmalloc-96", "io_kiocb")


def slab(path):
    out = {}
    for line in open(path).read().splitlines()[2:]:
        f = line.split()
        out[f[0]] = (int(f[1]), int(f[3]))
    return out


def park_changes(path):
    rows = [line.split() for line in open(path).read().splitlines()[1:]]
    per = {c: [] for c in CACHES}
    parked = 0
    for a, b in zip(rows, rows[1:]):
        k = int(b[1]) - int(a[1])
        parked = max(parked, int(b[1]))
        if k >= 100:
            for i, c in enumerate(CACHES):
                per[c].append((int(b[3 + i]) - int(a[3 + i])) / k)
    return parked, {c: (statistics.median(v) if v else None, len(v)) for c, v in per.items()}


def main(out):
    runs = sorted(glob.glob(os.path.join(out, "raw", "*.json")))
    print("| run | held | user B/conn | cgroup kernel B/conn | TCP objs/conn (machine) | TCP in use (engine ns) |")
    print("|---|---:|---:|---:|---:|---:|")
    parking = []
    for path in runs:
        name = os.path.basename(path)[: -len(".json")]
        text = open(path).read().strip()
        if not text:
            print(f"| {name} | (no result) | | | | |")
            continue
        r = json.loads(text)
        base = os.path.join(out, "raw", name)
        before, held = slab(base + ".slabinfo.before"), slab(base + ".slabinfo.held")
        tcp = (held["TCP"][0] - before["TCP"][0]) / max(r["held"], 1)
        inuse = open(base + ".sockstat.held").read().split("TCP: inuse ")[1].split()[0]
        for i, s in enumerate(r["steps"]):
            last = i == len(r["steps"]) - 1
            print(
                f"| {name} | {s['held']} | {s['bytes_per_conn']:.0f} | {s['kernel_bytes_per_conn']:.0f} | "
                f"{f'{tcp:.2f}' if last else ''} | {inuse if last else ''} |"
            )
        if os.path.exists(base + ".park-samples"):
            total, med = park_changes(base + ".park-samples")
            if total:
                parking.append((name, total, med))
    if parking:
        print()
        print("| run | receives parked | " + " | ".join(f"{c} objs per parked receive (median, samples)" for c in CACHES) + " |")
        print("|---|---:|" + "---:|" * len(CACHES))
        for name, total, med in parking:
            cells = " | ".join(f"{m:+.2f} ({n})" if m is not None else "" for m, n in med.values())
            print(f"| {name} | {total} | {cells} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/ringcast-kmem")
