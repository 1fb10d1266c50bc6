#!/usr/bin/env bash
# Benchmark: warm rebuilds against a cold build, measured in the same run,
# on a copy of SPEC outside git (the harder case: no git to date it).
#   cold      kiln build with an empty stage and package cache
#   edit      one [[files]] source edited          (targets: <= 5 s and <= 0.05x cold)
#   add       one [[files]] entry added            (same targets)
#   remove    one [[files]] entry removed          (same targets)
#   run       one [[run]] step that writes a file  (same targets)
#   pkg       one package added                    (target: <= 0.3x cold)
#   second    another spec (another [image] name) with one package more
#             than the first: grows the first's bootstrap (target: <= 0.3x cold)
# Each case changes the spec of the one before, so each is a state never
# built. Prints each time, its ratio to the cold build, and every stage's
# status and time ("(patched)" when the filesystem stage patched the
# previous build's disk instead of making it again). Needs root, like
# kiln build.
#   bench/cache.sh [SPEC] [PACKAGE] [SECOND_PACKAGE]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
spec=${1:-examples/debian-12-ovh-byol.toml}
package=${2:-tree}
second_package=${3:-file}

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
build() { # label spec
  local t0 t1
  t0=$(now)
  "$kiln" build --log-format json --cache-dir "$work/cache" --out "$work/out-$(basename "$2" .toml)" "$2" > "$work/$1.json"
  t1=$(now)
  echo "$t1 - $t0" | bc
}
edit_spec() { # python statements on `s`, the spec's text
  python3 - "$copy" "$1" <<'EOF'
import sys
path, code = sys.argv[1], sys.argv[2]
s = open(path).read()
before = s
exec(code)
if s == before:
    sys.exit(f"bench/cache.sh: the edit changed nothing in {path}: {code}")
open(path, "w").write(s)
EOF
}

declare -A took
echo "cold build (empty stage and package cache)" >&2
took[cold]=$(build cold "$copy")

echo "edit: changing $files_src" >&2
echo "changed $(date +%s%N)" >> "$work/spec/$files_src"
took[edit]=$(build edit "$copy")

echo "add: a new [[files]] entry" >&2
echo "added by bench/cache.sh" > "$work/spec/bench-added"
edit_spec 's += "\n[[files]]\nsrc = \"bench-added\"\ndest = \"/etc/kiln-bench-added\"\nmode = \"0644\"\n"'
took[add]=$(build add "$copy")

echo "remove: the [[files]] entry of $files_src" >&2
edit_spec "
import re
s = re.sub(r'\[\[files\]\]\nsrc = \"$files_src\"\n(?:[a-z]+ = .*\n)*', '', s, count=1)"
took[remove]=$(build remove "$copy")

echo "run: a [[run]] step that writes one file" >&2
edit_spec 's += "\n[[run]]\nname = \"bench step\"\nscript = \"echo bench > /etc/kiln-bench-run\"\n"'
took[run]=$(build run "$copy")

echo "pkg: adding the package $package" >&2
edit_spec "s = s.replace('install = [', 'install = [\"$package\", ', 1)"
took[pkg]=$(build pkg "$copy")

echo "second: another spec with $second_package added to the first's packages" >&2
second=$work/spec/second.toml
cp "$copy" "$second"
sed -i -e "s/^name = \"\(.*\)\"/name = \"\1-second\"/" \
  -e "s/^install = \[\"$package\", /install = [\"$second_package\", /" "$second"
grep -q "\"$second_package\"" "$second" || { echo "bench/cache.sh: could not write the second spec" >&2; exit 1; }
took[second]=$(build second "$second")

cold=${took[cold]}
ratio() { echo "${took[$1]} / $cold" | bc -l; }
printf 'cold build:                          %6.1fs\n' "$cold"
for case in edit add remove run; do
  printf 'rebuild, %-27s %6.1fs = %.3f x cold (targets: <= 5 s, <= 0.05)\n' \
    "$case:" "${took[$case]}" "$(ratio "$case")"
done
printf 'rebuild, %-27s %6.1fs = %.3f x cold (target: <= 0.3)\n' "one package added:" "${took[pkg]}" "$(ratio pkg)"
printf 'second spec, one package more:      %6.1fs = %.3f x cold (target: <= 0.3)\n' "${took[second]}" "$(ratio second)"
for case in edit add remove run pkg second; do
  printf '  %s: ' "$case"
  python3 -c '
import json,sys
ev=[json.loads(l) for l in open(sys.argv[1])]
print(", ".join("%s %s%s%s" % (e["stage"], e["status"], " %.1fs" % e["duration_s"] if "duration_s" in e else "",
  " (patched)" if "previous disk patched" in e.get("summary", "") else "") for e in ev if e.get("event")=="stage-end"))' "$work/$case.json"
done
# What the second build grew its bootstrap from, as --explain says it.
grep -o 'installing them on top of [^"]*' "$work/second.json" | head -n1 | sed 's/^/  second: /' || true
