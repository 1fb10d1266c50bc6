#!/usr/bin/env bash
# Benchmark: the iso target's speed, each figure against a baseline
# measured in the same run on the same machine (targets from issue 9):
#   1. the root image: kiln's mksquashfs (zstd, every core) against
#      single-threaded mksquashfs with its defaults, of the same tree
#      (the ISO's own root, unpacked): time <= 0.6x at size <= 1.05x;
#   2. rebuilds from a warm stage cache after a [[files]] change (a file
#      edited, then a file added) against the cold build (empty cache):
#      each <= 0.3x; the stage times say where the time goes;
#   3. the ISO to a verdict under TCG (`kiln boot --cdrom`, login prompt and
#      cloud-init finished): <= 90 s.
# The spec is the airship example's ISO alone (plus a [[files]] entry),
# copied outside any git repository. Needs root, like kiln build.
#   bench/iso.sh [SPEC]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
example=${1:-examples/debian-12-airship.toml}

cargo build --release -q -p kiln
kiln=$PWD/target/release/kiln
work=$(mktemp -d /var/tmp/kiln-bench-iso.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The spec: the ISO target only, and a file of our own that we change.
mkdir -p "$work/spec/files"
cp -r "$(dirname "$example")/airship" "$work/spec/"
python3 - "$example" "$work/spec/iso.toml" <<'PY'
import sys
text = open(sys.argv[1]).read()
text = text[: text.index("[targets.disk]")]
text += '\n[[files]]\nsrc = "files/motd"\ndest = "/etc/motd"\n'
open(sys.argv[2], "w").write(text)
PY
echo "kiln live ISO benchmark" > "$work/spec/files/motd"
spec=$work/spec/iso.toml

now() { date +%s.%N; }
# build NAME: a timed build into $work/NAME; prints its stages' times.
build() {
  local t0 t1
  t0=$(now)
  "$kiln" build --log-format json --cache-dir "$work/cache" --out "$work/$1" "$spec" > "$work/$1.json"
  t1=$(now)
  echo "$t1 - $t0" | bc
}
stages() {
  python3 - "$1" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e.get("event") == "stage-end" and e.get("status") == "ok":
        print("    %-16s %6.1fs" % (e["stage"], e["duration_s"]))
PY
}

echo "cold build (empty stage cache)" >&2
cold=$(build cold)
echo "rebuild after a [[files]] edit" >&2
echo "kiln live ISO benchmark, edited" > "$work/spec/files/motd"
edited=$(build edited)
echo "rebuild after a [[files]] addition" >&2
echo "added" > "$work/spec/files/added"
printf '\n[[files]]\nsrc = "files/added"\ndest = "/etc/kiln-added"\n' >> "$spec"
added=$(build added)

iso=$(ls "$work"/added/*-live.iso)
echo "unpacking the ISO's root tree" >&2
xorriso -osirrox on -indev "$iso" -extract /live/filesystem.squashfs "$work/root.squashfs" >/dev/null 2>&1
unsquashfs -q -d "$work/tree" "$work/root.squashfs" >/dev/null
cores=$(nproc)
echo "mksquashfs, single-threaded, its defaults" >&2
t0=$(now)
mksquashfs "$work/tree" "$work/single.squashfs" -noappend -no-progress -quiet -processors 1
t1=$(now)
echo "mksquashfs as kiln runs it (zstd level 9, $cores cores)" >&2
# The options of SquashfsCompression::mksquashfs_args for zstd, the default.
mksquashfs "$work/tree" "$work/kiln.squashfs" -noappend -no-progress -quiet -comp zstd -Xcompression-level 9 -processors "$cores"
t2=$(now)
single_t=$(echo "$t1 - $t0" | bc); kiln_t=$(echo "$t2 - $t1" | bc)
single_s=$(stat -c %s "$work/single.squashfs"); kiln_s=$(stat -c %s "$work/kiln.squashfs")

echo "booting the ISO as a CD (TCG)" >&2
t0=$(now)
"$kiln" boot --cdrom --timeout 600 "$iso" > "$work/boot.txt"
t1=$(now)
iso_boot=$(echo "$t1 - $t0" | bc)

printf '\nroot image (%s, %d cores, zstd level 9): single-threaded mksquashfs %.1fs, %d MiB; kiln %.1fs, %d MiB\n' \
  "$(du -sh "$work/tree" | cut -f1)" "$cores" "$single_t" $((single_s >> 20)) "$kiln_t" $((kiln_s >> 20))
printf '  time kiln/single = %.3f (target <= 0.6)   size kiln/single = %.3f (target <= 1.05)\n' \
  "$(echo "$kiln_t / $single_t" | bc -l)" "$(echo "$kiln_s / $single_s" | bc -l)"
printf '\ncold build %.1fs\n' "$cold"
stages "$work/cold.json"
printf 'rebuild after a [[files]] edit %.1fs: rebuild/cold = %.3f (target <= 0.3)\n' "$edited" "$(echo "$edited / $cold" | bc -l)"
stages "$work/edited.json"
printf 'rebuild after a [[files]] addition %.1fs: rebuild/cold = %.3f (target <= 0.3)\n' "$added" "$(echo "$added / $cold" | bc -l)"
stages "$work/added.json"
printf '\nISO to verdict under TCG: %.1fs wall, %s (target <= 90 s)\n' "$iso_boot" "$(grep -E '^(PASS|FAIL)' "$work/boot.txt")"
