#!/usr/bin/env python3
"""Prints the ratios of one compare.sh run from the JSON files `--out` wrote into DIR:
deliveries/s of ringcast against nginx+nchan, Pushpin and the kernel-only baseline
(saturated runs), idle bytes per connection, and paced p99 latency against nchan's.

    bench/peers/ratios.py DIR
"""
import glob
import json
import sys


def main(out):
    runs = {}
    for path in sorted(glob.glob(f"{out}/compare-*.json")):
        r = json.load(open(path))
        runs[(r["server"], bool(r["publish_rate"]))] = r
    # compare.sh writes one fanout result into DIR: the kernel-only baseline's.
    kernel = None
    for path in sorted(glob.glob(f"{out}/fanout-*.json")):
        kernel = json.load(open(path))["sets"][0]["phases"][0]["median_deliveries_per_sec"]

    def sat(server):
        r = runs.get((server, False))
        return r and r["fanout"]["median_deliveries_per_sec"]

    def idle(server):
        r = runs.get((server, False))
        return r and isinstance(r.get("idle"), dict) and r["idle"].get("bytes_per_conn")

    def p99(server):
        r = runs.get((server, True))
        return r and r["fanout"]["latency"]["p99_ms"]

    def ratio(name, a, b, fmt="{:.2f}"):
        if a and b:
            print(f"{name:<40} " + fmt.format(a / b))
        else:
            print(f"{name:<40} n/a (a run is missing)")

    ring = sat("ringcast")
    print(f"deliveries/s, saturated: ringcast {ring or 0:,.0f}, nchan {sat('nchan') or 0:,.0f}, "
          f"pushpin {sat('pushpin') or 0:,.0f}, kernel baseline {kernel or 0:,.0f}")
    ratio("ringcast / nchan, deliveries/s", ring, sat("nchan"))
    ratio("ringcast / pushpin, deliveries/s", ring, sat("pushpin"))
    ratio("ringcast / kernel baseline, deliveries/s", ring, kernel)
    ratio("ringcast / nchan, idle bytes per conn", idle("ringcast"), idle("nchan"), "{:.4f}")
    ratio("ringcast / pushpin, idle bytes per conn", idle("ringcast"), idle("pushpin"), "{:.4f}")
    ratio("ringcast / nchan, paced p99 latency", p99("ringcast"), p99("nchan"), "{:.4f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
