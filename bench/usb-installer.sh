#!/usr/bin/env bash
# Benchmark of the usb-installer target (examples/debian-12-usb-installer.toml):
#
# 1. Build time: a cold build (empty stage and package cache), then, from
#    that warm cache, a rebuild after a [[files]] entry is added to a copy
#    of the spec outside git (the payload disk and the stick are made
#    again; the installer system comes from the cache).
# 2. Write throughput, in one VM under TCG: the stick's installer system is
#    booted (a copy of the stick, as a USB stick, with a bench init added to
#    its installer partition) beside two empty virtio disks. It first
#    writes the payload to the second disk the way one would by hand
#    (`zstd -dc | dd bs=1M oflag=direct`, then sync), then runs the
#    installer itself on the first disk. Each line is timestamped in the
#    guest; the installer's write is from "writing" to "reading ... back"
#    (the sparse write, the partition table region, the sync). Prints both
#    times and the installer's throughput as a ratio of dd's (target >= 0.8).
#   bench/usb-installer.sh        (needs root)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -q -p kiln
kiln=$PWD/target/release/kiln
work=$(mktemp -d /var/tmp/kiln-bench-usb.XXXXXX)
mnt=$work/mnt
loop=
cleanup() {
  if mountpoint -q "$mnt" 2>/dev/null; then umount "$mnt"; fi
  if [ -n "$loop" ]; then losetup -d "$loop" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }

# --- 1. build times ---------------------------------------------------------
mkdir -p "$work/spec"
cp examples/debian-12-usb-installer.toml "$work/spec/usb.toml"
echo "cold build (empty caches)" >&2
t0=$(now)
"$kiln" build --cache-dir "$work/cache" --out "$work/out" "$work/spec/usb.toml" >"$work/cold.log" 2>&1
t1=$(now)
printf 'kiln-bench\n' >"$work/spec/bench-motd"
cat >>"$work/spec/usb.toml" <<'EOF'

[[files]]
src = "bench-motd"
dest = "/etc/motd.d/bench"
EOF
echo "warm rebuild after a [[files]] entry is added" >&2
t2=$(now)
"$kiln" build --log-format json --cache-dir "$work/cache" --out "$work/out2" "$work/spec/usb.toml" >"$work/warm.json"
t3=$(now)
cold=$(echo "$t1 - $t0" | bc)
warm=$(echo "$t3 - $t2" | bc)
sticks=("$work/out2"/*usb-installer*.raw)
stick=${sticks[0]}

# --- 2. throughput in the same VM -------------------------------------------
cp --sparse=always "$stick" "$work/stick.raw"
# The installer partition (ext4, named and labelled KILN-INST): loop it at
# its offset (partition nodes of a looped disk do not appear here), add the
# bench init and take its kernel and initramfs for a direct boot.
mkdir -p "$mnt"
read -r start size < <(sfdisk --json "$work/stick.raw" | python3 -c '
import json, sys
for p in json.load(sys.stdin)["partitiontable"]["partitions"]:
    if p.get("name") == "KILN-INST":
        print(p["start"], p["size"])') || true
if [ -z "${start:-}" ]; then
  echo "bench/usb-installer.sh: no KILN-INST partition in $stick" >&2
  exit 1
fi
loop=$(losetup --find --show --offset $((start * 512)) --sizelimit $((size * 512)) "$work/stick.raw")
mount "$loop" "$mnt"
kernels=("$mnt"/boot/vmlinuz-*)
initrds=("$mnt"/boot/initrd.img-*)
cp "${kernels[0]}" "$work/vmlinuz"
cp "${initrds[0]}" "$work/initrd"
cat >"$mnt/usr/local/sbin/kiln-bench" <<'EOF'
#!/bin/bash
# PID 1 of the benchmark: dd by hand to /dev/vdb, then the installer to /dev/vda.
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
stamp() { while IFS= read -r line; do echo "kiln-bench $(date +%s.%N) $line"; done; }
mkdir -p /tmp/payload
mount -o ro "$(blkid -L KILN-PAYLOAD)" /tmp/payload
echo "dd start" | stamp
zstd -dc /tmp/payload/payload.raw.zst | dd of=/dev/vdb bs=1M iflag=fullblock oflag=direct status=none
sync
echo "dd end" | stamp
umount /tmp/payload
/usr/local/sbin/kiln-installer 2>&1 | stamp
EOF
chmod 755 "$mnt/usr/local/sbin/kiln-bench"
umount "$mnt"
losetup -d "$loop"
loop=

disk_size=$((4 << 30))
truncate -s "$disk_size" "$work/a.raw" "$work/b.raw"
echo "booting the installer system (TCG): dd, then the installer" >&2
timeout 1800 qemu-system-x86_64 -accel tcg -m 1024 -display none -no-reboot -nic none \
  -serial "file:$work/console.log" \
  -kernel "$work/vmlinuz" -initrd "$work/initrd" \
  -append "root=LABEL=KILN-INST ro init=/usr/local/sbin/kiln-bench console=ttyS0,115200n8 panic=-1 kiln.target=/dev/vda kiln.after=poweroff" \
  -device qemu-xhci,id=xhci \
  -drive "if=none,id=stick,format=raw,snapshot=on,file=$work/stick.raw" \
  -device usb-storage,drive=stick,bus=xhci.0,removable=on \
  -drive "if=virtio,format=raw,cache=none,file=$work/a.raw" \
  -drive "if=virtio,format=raw,cache=none,file=$work/b.raw" || true

stamp_of() { tr -d '\r' <"$work/console.log" | awk -v pat="$1" 'index($0, "kiln-bench ") == 1 && index($0, pat) { print $2; exit }'; }
dd_start=$(stamp_of "dd start"); dd_end=$(stamp_of "dd end")
inst_start=$(stamp_of "kiln-installer: writing "); inst_end=$(stamp_of "back from /dev/vda")
for v in dd_start dd_end inst_start inst_end; do
  if [ -z "${!v}" ]; then
    echo "bench/usb-installer.sh: no '$v' line on the console:" >&2
    tail -n 30 "$work/console.log" >&2
    exit 1
  fi
done
if ! grep -q "sha512 verified" "$work/console.log"; then
  echo "bench/usb-installer.sh: the installer did not verify its write:" >&2
  tail -n 30 "$work/console.log" >&2
  exit 1
fi
# The same bytes after the first MiB (whose partition table the installer
# then grows to the disk).
if ! cmp -s -i "$((1 << 20))" -n "$((64 << 20))" "$work/a.raw" "$work/b.raw"; then
  echo "bench/usb-installer.sh: the installer's and dd's disks differ after their first MiB" >&2
  exit 1
fi
written=$(grep -a "kiln-installer: writing " "$work/console.log" | head -n 1 | sed 's/.*writing \([^ ]*\) to.*/\1/')
dd_s=$(echo "$dd_end - $dd_start" | bc)
inst_s=$(echo "$inst_end - $inst_start" | bc)

printf '\nbuild, cold (empty caches):                 %6.1fs\n' "$cold"
printf 'build, warm, a [[files]] entry added:       %6.1fs = %.3f x cold\n' "$warm" "$(echo "$warm / $cold" | bc -l)"
python3 -c '
import json,sys
ev=[json.loads(l) for l in open(sys.argv[1])]
print("  " + ", ".join("%s %s%s" % (e["stage"], e["status"], " %.1fs" % e["duration_s"] if "duration_s" in e else "") for e in ev if e.get("event")=="stage-end"))' "$work/warm.json"
printf 'payload %s (stick %d MiB), written in one TCG guest:\n' "$written" $(( $(stat -c %s "$stick") >> 20 ))
printf '  zstd -dc | dd oflag=direct, sync:        %6.1fs\n' "$dd_s"
printf '  installer (sparse write, table, sync):   %6.1fs\n' "$inst_s"
printf 'installer throughput / dd throughput = %.3f (target >= 0.8)\n' "$(echo "$dd_s / $inst_s" | bc -l)"
