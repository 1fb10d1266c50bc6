#!/usr/bin/env bash
# Benchmark: `kiln build` of a spec against the plain pipeline it replaces,
# measured in the same run on the same machine:
#   mmdebstrap (same package set and sources) + mke2fs -d + qemu-img convert -c
# kiln starts from an empty stage and package cache, so both download and
# build everything. Prints both times, the ratio (target: kiln <= 0.85x) and kiln's own peak
# RSS (target: <= 200 MiB). Needs root, like kiln build.
#   bench/build.sh [SPEC] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
spec=${1:-examples/debian-12-ovh-byol.toml}
rounds=${2:-1}

cargo build --release -q -p kiln
kiln=target/release/kiln
work=$(mktemp -d /var/tmp/kiln-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The plain pipeline gets exactly kiln's package set and sources.
"$kiln" plan --json "$spec" > "$work/plan.json"
read -r release variant include <<<"$(python3 -c '
import json,sys
p=json.load(open(sys.argv[1]))["bootstrap"]
print(p["release"], p["variant"], ",".join(p["include"]))' "$work/plan.json")"
mapfile -t sources < <(python3 -c '
import json,sys
for s in json.load(open(sys.argv[1]))["bootstrap"]["sources"]:
    print("deb %s %s %s" % (s["uri"], s["suite"], " ".join(s["components"])))' "$work/plan.json")

now() { date +%s.%N; }
plain_total=0; kiln_total=0; rss_max=0
for round in $(seq "$rounds"); do
  echo "round $round/$rounds: plain pipeline" >&2
  t0=$(now)
  mmdebstrap --quiet --variant="$variant" --include="$include" "$release" "$work/tree" "${sources[@]}"
  size=$(( ($(du -sb "$work/tree" | cut -f1) * 125 / 100 + (256 << 20)) / 1048576 ))M
  mke2fs -q -t ext4 -d "$work/tree" "$work/plain.raw" "$size"
  qemu-img convert -c -f raw -O qcow2 "$work/plain.raw" "$work/plain.qcow2"
  t1=$(now)
  plain_size=$(stat -c %s "$work/plain.qcow2")
  rm -rf "$work/tree" "$work/plain.raw" "$work/plain.qcow2"

  echo "round $round/$rounds: kiln build" >&2
  t2=$(now)
  rm -rf "$work/cache"
  "$kiln" build --log-format json --cache-dir "$work/cache" --out "$work/out" "$spec" > "$work/kiln.json"
  t3=$(now)
  kiln_size=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["artifacts"][0]["size"])' "$work/out/manifest.json")
  rss=$(python3 -c 'import json,sys; print([json.loads(l) for l in open(sys.argv[1])][-1]["peak_rss_kib"])' "$work/kiln.json")
  rm -rf "$work/out"

  plain=$(echo "$t1 - $t0" | bc); kiln_t=$(echo "$t3 - $t2" | bc)
  printf 'round %d: plain %.1fs (%d MiB)  kiln %.1fs (%d MiB)  ratio %.3f\n' \
    "$round" "$plain" $((plain_size >> 20)) "$kiln_t" $((kiln_size >> 20)) "$(echo "$kiln_t / $plain" | bc -l)"
  plain_total=$(echo "$plain_total + $plain" | bc); kiln_total=$(echo "$kiln_total + $kiln_t" | bc)
  [ "$rss" -gt "$rss_max" ] && rss_max=$rss
done

ratio=$(echo "$kiln_total / $plain_total" | bc -l)
printf '\nplain pipeline %.1fs, kiln %.1fs over %d round(s): kiln/plain = %.3f (target <= 0.85)\n' \
  "$plain_total" "$kiln_total" "$rounds" "$ratio"
printf 'kiln peak RSS %d MiB (target <= 200 MiB)\n' $((rss_max / 1024))
