#!/usr/bin/env bash
# Fuzzes kiln's parsers of untrusted bytes (the targets of fuzz/src/targets.rs:
# qcow2, partition tables, filesystem probe, ext4, XFS, ISO, FAT, whole-image
# inspect, specs, OVH storage JSON, checksum sidecars, HTTP responses and
# headers, the serial console) for SECONDS each (default 600), N at a time,
# and prints per target: seconds run, executions, corpus, coverage counters
# reached and distinct crashes.
#   bench/fuzz.sh [SECONDS_PER_TARGET] [--jobs N] [TARGET...]
# The fuzzer (fuzz/src/engine.rs) runs on the stable toolchain: code built
# with LLVM's sancov instrumentation gives it coverage feedback; every run is
# under an allocator that aborts on an allocation over 64 MiB, and a run
# over 20 s counts as a hang. Panics are caught and the fuzzing goes on;
# aborts (oversize allocation, stack overflow, hang) restart it. Crash inputs
# land in $KILN_FUZZ_OUT/<target>/crashes/ (default target/fuzz-out):
# reproduce one with `target/fuzz-build/x86_64-unknown-linux-gnu/fuzz/kiln-fuzz
# replay TARGET FILE`, fix the reader, and commit the input to
# fuzz/regressions/<target>/ so `cargo test` replays it for ever.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

seconds=600
jobs=1
targets=()
while (($#)); do
  case $1 in
    --jobs) jobs=$2; shift 2 ;;
    --jobs=*) jobs=${1#--jobs=}; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *[!0-9]*) targets+=("$1"); shift ;;
    *) seconds=$1; shift ;;
  esac
done

triple=$(rustc -vV | sed -n 's/^host: //p')
build=$PWD/target/fuzz-build
# --target: the flags then reach only the code that runs, not build scripts.
RUSTFLAGS="-C passes=sancov-module -C llvm-args=-sanitizer-coverage-level=3 \
-C llvm-args=-sanitizer-coverage-trace-pc-guard -C llvm-args=-sanitizer-coverage-prune-blocks=0" \
  CARGO_TARGET_DIR=$build cargo build -q --profile fuzz -p kiln-fuzz --features coverage --target "$triple"
bin=$build/$triple/fuzz/kiln-fuzz
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <("$bin" list)
fi
out=${KILN_FUZZ_OUT:-$PWD/target/fuzz-out}
mkdir -p "$out"

# One target for `seconds`, restarted after an abort until the time is up.
fuzz_one() {
  local t=$1 dir=$out/$1 end=$(($(date +%s) + seconds)) execs=0 sessions=0 aborts=0
  mkdir -p "$dir/crashes"
  : > "$dir/log"
  while :; do
    local left=$((end - $(date +%s)))
    ((left > 0)) || break
    sessions=$((sessions + 1))
    # Scratch files of path-based readers: removed even after an abort.
    local scratch=/dev/shm/kiln-fuzz-session.$t.$$
    [ -d /dev/shm ] || scratch=${TMPDIR:-/tmp}/kiln-fuzz-session.$t.$$
    if KILN_FUZZ_SCRATCH=$scratch "$bin" run "$t" "$left" "$dir" >>"$dir/log" 2>&1; then
      :
    else
      # Not caught in-process: keep the input that did it, and why.
      aborts=$((aborts + 1))
      local name
      name=abort-$(sha256sum "$dir/current" | cut -c1-16)
      cp "$dir/current" "$dir/crashes/$name"
      grep -m1 -E 'kiln-fuzz: (an allocation|.*hang)|overflowed its stack|panicked' "$dir/log" | tail -n 1 \
        > "$dir/crashes/$name.txt" || echo "aborted (see $dir/log)" > "$dir/crashes/$name.txt"
      tail -n 40 "$dir/log" >> "$dir/crashes/$name.txt"
    fi
    rm -rf "$scratch"
    execs=$((execs + $(sed -n 's/.*execs=\([0-9]*\).*/\1/p' "$dir/stats")))
  done
  local last
  last=$(cat "$dir/stats")
  local distinct
  distinct=$(cat "$dir"/crashes/*.txt 2>/dev/null | grep -v '^ ' | grep -c . || true)
  distinct=$(for f in "$dir"/crashes/*.txt; do [ -e "$f" ] && head -n 1 "$f"; done | sort -u | grep -c . || true)
  printf '%-12s seconds=%-5s execs=%-9s sessions=%-3s %s distinct_crashes=%s\n' \
    "$t" "$seconds" "$execs" "$sessions" \
    "$(echo "$last" | grep -o 'corpus=[0-9]* edges=[0-9]*')" "$distinct" > "$dir/summary"
}

echo "fuzzing ${#targets[@]} target(s) for $seconds s each, $jobs at a time; output in $out" >&2
running=0
for t in "${targets[@]}"; do
  if ((running >= jobs)); then
    wait -n
    running=$((running - 1))
  fi
  fuzz_one "$t" &
  running=$((running + 1))
done
wait
for t in "${targets[@]}"; do
  cat "$out/$t/summary"
done
