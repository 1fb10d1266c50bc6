#!/usr/bin/env bash
# Benchmark: warm rebuilds against a cold build, measured in the same run.
#   cold   kiln build of a copy of SPEC with an empty stage and package cache
#   files  the same spec after changing one [[files]] source (target: <= 10 s and <= 0.1x cold)
#   pkg    the same spec after adding one package (target: <= 0.3x cold)
# Prints each time and its ratio to the cold build. Needs root, like kiln build.
#   bench/cache.sh [SPEC] [PACKAGE]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
spec=${1:-examples/debian-12-ovh-byol.toml}
package=${2:-tree}

cargo build --release -q -p kiln
kiln=$PWD/target/release/kiln
work=$(mktemp -d /var/tmp/kiln-bench-cache.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/spec"
cp -r "$(dirname "$spec")"/. "$work/spec/"
copy=$work/spec/$(basename "$spec")
files_src=$(sed -n 's/^src *= *"\(.*\)"/\1/p' "$copy" | head -n1)
if [ -z "$files_src" ]; then
  echo "bench/cache.sh: $spec has no [[files]] entry to change" >&2
  exit 1
fi

# The copy is outside git: pin the epoch as a build from the repository would.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct -- "$(dirname "$spec")")}
export SOURCE_DATE_EPOCH

now() { date +%s.%N; }
build() { # label
  local t0 t1
  t0=$(now)
  "$kiln" build --log-format json --cache-dir "$work/cache" --out "$work/out" "$copy" > "$work/$1.json"
  t1=$(now)
  echo "$t1 - $t0" | bc
}

echo "cold build (empty stage and package cache)" >&2
cold=$(build cold)
echo "warm rebuild after changing $files_src" >&2
echo "changed $(date +%s%N)" >> "$work/spec/$files_src"
files=$(build files)
echo "warm rebuild after adding the package $package" >&2
sed -i "s/^install = \[/install = [\"$package\", /" "$copy"
grep -q "\"$package\"" "$copy" || { echo "bench/cache.sh: could not add $package to [packages] install" >&2; exit 1; }
pkg=$(build pkg)

printf 'cold build:                     %6.1fs\n' "$cold"
printf 'rebuild, one [[files]] changed: %6.1fs  = %.3f x cold (targets: <= 10 s, <= 0.1)\n' "$files" "$(echo "$files / $cold" | bc -l)"
printf 'rebuild, one package added:     %6.1fs  = %.3f x cold (target: <= 0.3)\n' "$pkg" "$(echo "$pkg / $cold" | bc -l)"
for run in files pkg; do
  printf '  %s: ' "$run"
  python3 -c '
import json,sys
ev=[json.loads(l) for l in open(sys.argv[1])]
print(", ".join("%s %s%s" % (e["stage"], e["status"], " %.1fs" % e["duration_s"] if "duration_s" in e else "") for e in ev if e.get("event")=="stage-end"))' "$work/$run.json"
done
