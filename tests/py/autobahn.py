#!/usr/bin/env python3
"""Runs Autobahn TestSuite cases against a WebSocket echo server with `kosoku`.

Used by tests/autobahn.rs. kosoku (PyPI) is a Python 3 runner of the Autobahn
fuzzingclient case files; its CLI takes the same -i/-x globs, this script calls its
`run_fuzzingclient` so that it can print each case's verdict as it judged it.

Output, one JSON object per line (flat: every value a string or null):

  {"kind":"case","case":"6.4.1","behavior":"OK","behavior_close":"OK","passed":"true",
   "description":..,"expectation":..,"result":..,"result_close":..,
   "remote_close_code":..,"remote_close_reason":..,"duration_ms":..}
  ... one per case, in case order, then
  {"kind":"summary","cases":"N","failed":"F","counts":"<group>:<behavior>/<close>=n;.."}

Exit status: 0 if every case passed (OK, NON-STRICT or INFORMATIONAL, as kosoku judges),
1 if any did not, 2 if the run could not be made (no cases selected, kosoku missing),
3 if it exceeded --timeout seconds. --outdir also writes kosoku's HTML/JSON reports.
"""

import argparse
import asyncio
import collections
import json
import os
import sys


def emit(kind, **fields):
    line = {"kind": kind}
    for key, value in fields.items():
        line[key] = None if value is None else str(value)
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


async def run(args):
    from kosoku import FailureError, run_fuzzingclient

    try:
        results = await run_fuzzingclient(args.url, args.include or None, args.exclude or None)
        failed_run = False
    except FailureError as failure:
        results = failure.results
        failed_run = True
    return results, failed_run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="ws://host:port/path of the echo endpoint")
    parser.add_argument("-i", "--include", action="append", default=[], help="case glob (repeatable)")
    parser.add_argument("-x", "--exclude", action="append", default=[], help="case glob to skip (repeatable)")
    parser.add_argument("-o", "--outdir", help="also write kosoku's reports here")
    parser.add_argument("--timeout", type=float, default=170, help="bound on the run, seconds")
    args = parser.parse_args()

    try:
        import kosoku  # noqa: F401
    except ImportError as e:
        emit("error", reason=f"kosoku is not installed ({e}); pip install -r tests/py/requirements.txt")
        sys.exit(2)
    try:
        results, failed_run = asyncio.run(asyncio.wait_for(run(args), args.timeout))
    except asyncio.TimeoutError:
        emit("error", reason=f"the run exceeded {args.timeout} s")
        sys.exit(3)
    if not results:
        emit("error", reason="no case was run: check the -i/-x globs")
        sys.exit(2)

    counts = collections.Counter()
    failed = 0
    for r in results:
        group = r.case_id.split(".")[0]
        counts[(group, r.behavior.value, r.behavior_close.value)] += 1
        failed += 0 if r.passed else 1
        emit(
            "case",
            case=r.case_id,
            behavior=r.behavior.value,
            behavior_close=r.behavior_close.value,
            passed="true" if r.passed else "false",
            description=r.description,
            expectation=r.expectation,
            result=r.result,
            result_close=r.result_close,
            remote_close_code=r.remote_close_code,
            remote_close_reason=r.remote_close_reason,
            duration_ms=r.duration,
        )
    if args.outdir:
        from kosoku._report import write_reports

        write_reports(results, args.outdir)
    summary = ";".join(
        f"{g}:{b}/{c}={n}"
        for (g, b, c), n in sorted(counts.items(), key=lambda kv: (int(kv[0][0]), kv[0][1:]))
    )
    emit("summary", cases=len(results), failed=failed, counts=summary)
    # kosoku's own verdict and ours must agree; if they do not, trust neither.
    if failed_run != (failed > 0):
        emit("error", reason=f"kosoku raised FailureError={failed_run} but {failed} cases did not pass")
        finish(1)
    finish(1 if failed else 0)


def finish(status):
    """Exits at once. kosoku 0.1.0's native module sometimes aborts (SIGABRT, no message)
    while the interpreter shuts down after a run whose results are all in; everything
    has been printed and flushed by then, so the shutdown is skipped."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
