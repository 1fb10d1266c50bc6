#!/usr/bin/env bash
# Benchmark: kiln's qcow2 writer (kiln_disk::write_qcow2, 2 threads by
# default) against `qemu-img convert -c -f raw -O qcow2`, on the same raw
# disk in the same run. Prints wall and CPU times, both sizes and the ratios
# (targets: time kiln/qemu-img <= 0.5, size kiln/qemu-img <= 1.0), and
# checks kiln's image with `qemu-img check` and `qemu-img compare`. Then a
# rebuild: the same disk with five 4 KiB blocks changed, written by kiln
# reusing its first image (target: well under 1.5 s), checked the same way.
#   bench/compress.sh [RAW]          THREADS=N to change kiln's thread count
# Without RAW it builds a realistic 1500 MiB ext4 disk with mke2fs -d from a
# hard-linked copy of /usr/{bin,sbin,share,libexec} (about 1.1 GiB here; all
# of /usr does not fit).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
threads=${THREADS:-2}

cargo build --release -q -p kiln-disk --example qcow2_write
writer=target/release/examples/qcow2_write
work=$(mktemp -d /var/tmp/kiln-compress.XXXXXX)
trap 'rm -rf "$work"' EXIT

if [ $# -ge 1 ]; then
  raw=$1
else
  raw=$work/disk.raw
  mkdir "$work/tree"
  for d in bin sbin share libexec; do
    # Hard links are instant; fall back to a copy across filesystems.
    cp -al "/usr/$d" "$work/tree/" 2>/dev/null || cp -a "/usr/$d" "$work/tree/"
  done
  echo "building $raw (mke2fs -d, 1500M)" >&2
  mke2fs -q -F -t ext4 -d "$work/tree" "$raw" 1500M
  rm -rf "$work/tree"
fi
# Both runs read the raw disk from the page cache.
cat "$raw" > /dev/null

# timed NAME CMD...: runs CMD and leaves "wall user sys" in $work/NAME.time.
TIMEFORMAT='%R %U %S'
timed() {
  local name=$1
  shift
  if ! { time "$@" > "$work/$name.out" 2> "$work/$name.err"; } 2> "$work/$name.time"; then
    cat "$work/$name.err" >&2
    exit 1
  fi
}
echo "qemu-img convert -c" >&2
timed qemu qemu-img convert -c -f raw -O qcow2 "$raw" "$work/qemu.qcow2"
echo "kiln qcow2 writer, $threads thread(s)" >&2
timed kiln "$writer" "$raw" "$work/kiln.qcow2" --threads "$threads" --index-out "$work/kiln.idx"
cp --sparse=always "$raw" "$work/changed.raw"
blocks=$(($(stat -c %s "$raw") / 4096))
for i in 1 2 3 4 5; do
  dd if=/dev/urandom of="$work/changed.raw" bs=4096 seek=$((blocks * i / 6)) count=1 conv=notrunc status=none
done
cat "$work/changed.raw" "$work/kiln.qcow2" > /dev/null
echo "kiln qcow2 writer reusing its first image, $threads thread(s)" >&2
timed reuse "$writer" "$work/changed.raw" "$work/reuse.qcow2" --threads "$threads" \
  --reuse "$work/kiln.qcow2" "$work/kiln.idx"
read -r qemu_wall qemu_user qemu_sys < "$work/qemu.time"
read -r kiln_wall kiln_user kiln_sys < "$work/kiln.time"

qemu-img check -q "$work/kiln.qcow2"
qemu-img compare -q -f raw -F qcow2 "$raw" "$work/kiln.qcow2"
qemu-img check -q "$work/reuse.qcow2"
qemu-img compare -q -f raw -F qcow2 "$work/changed.raw" "$work/reuse.qcow2"
read -r reuse_wall reuse_user reuse_sys < "$work/reuse.time"

qemu_size=$(stat -c %s "$work/qemu.qcow2")
kiln_size=$(stat -c %s "$work/kiln.qcow2")
raw_size=$(stat -c %s "$raw")
echo "kiln stats: $(cat "$work/kiln.out")"
echo "kiln reuse stats: $(cat "$work/reuse.out")"
awk -v qw="$qemu_wall" -v qu="$qemu_user" -v qy="$qemu_sys" \
    -v kw="$kiln_wall" -v ku="$kiln_user" -v ky="$kiln_sys" \
    -v rw="$reuse_wall" -v ru="$reuse_user" -v ry="$reuse_sys" \
    -v qs="$qemu_size" -v ks="$kiln_size" -v rs="$raw_size" -v t="$threads" 'BEGIN {
  qc = qu + qy; kc = ku + ky
  printf "raw disk         %8.1f MiB\n", rs / 1048576
  printf "qemu-img -c      %8.2fs wall %8.2fs cpu  %8.1f MiB\n", qw, qc, qs / 1048576
  printf "kiln (%d thr)     %8.2fs wall %8.2fs cpu  %8.1f MiB\n", t, kw, kc, ks / 1048576
  printf "time kiln/qemu-img = %.3f (target <= 0.5)\n", kw / qw
  printf "size kiln/qemu-img = %.4f (target <= 1.0)\n", ks / qs
  printf "kiln reuse (%d thr)%8.2fs wall %8.2fs cpu  (5 blocks changed)\n", t, rw, ru + ry
}'
