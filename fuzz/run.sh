#!/usr/bin/env bash
# Builds the fuzz targets with coverage instrumentation on the stable toolchain and
# runs one of them with libFuzzer.
#
#   fuzz/run.sh build                 build every target
#   fuzz/run.sh TARGET [RUNS] [ARGS]  run TARGET for RUNS executions (default 10000000);
#                                     ARGS go to libFuzzer (-max_total_time=15, ...)
#   fuzz/run.sh brief [SECONDS]       run every target for SECONDS (default 15): CI
#
# The corpus grows in fuzz/corpus/TARGET (not checked in); the checked-in seeds in
# fuzz/seeds/TARGET are read but never written. Crashes land in fuzz/artifacts/TARGET/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
targets=(http_request ingest_decoder ws_frames sse_whatwg)
triple="$(rustc -vV | sed -n 's/^host: //p')"

# What `cargo fuzz` passes, minus -Zsanitizer (nightly only): the SanitizerCoverage pass
# with inline 8-bit counters, the PC table and comparison tracing that libFuzzer's
# coverage and value profile read. With --target, RUSTFLAGS skip build scripts and
# proc macros, which need no instrumentation.
export RUSTFLAGS="-Cpasses=sancov-module \
  -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
  -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares \
  --cfg fuzzing -Cforce-frame-pointers"
export CARGO_TARGET_DIR="$here/target"

build() {
  cargo build --manifest-path targets/Cargo.toml --release --target "$triple" --bins
}

run() {
  local target="$1" runs="$2"
  shift 2
  local bin="$CARGO_TARGET_DIR/$triple/release/$target"
  mkdir -p "corpus/$target" "artifacts/$target"
  local dict=()
  [ -f "dict/$target.dict" ] && dict=(-dict="dict/$target.dict")
  "$bin" -runs="$runs" -print_final_stats=1 -artifact_prefix="artifacts/$target/" \
    "${dict[@]}" "$@" "corpus/$target" "seeds/$target"
}

case "${1:-}" in
  build)
    build
    ;;
  brief)
    secs="${2:-15}"
    build
    for t in "${targets[@]}"; do
      echo "== fuzz $t for ${secs}s"
      run "$t" -1 -max_total_time="$secs"
    done
    ;;
  http_request | ingest_decoder | ws_frames | sse_whatwg)
    t="$1"
    runs="${2:-10000000}"
    shift $(($# < 2 ? $# : 2))
    build
    run "$t" "$runs" "$@"
    ;;
  *)
    echo "usage: fuzz/run.sh build | brief [SECONDS] | TARGET [RUNS] [LIBFUZZER ARGS]" >&2
    echo "targets: ${targets[*]}" >&2
    exit 2
    ;;
esac
