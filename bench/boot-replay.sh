#!/usr/bin/env bash
# Benchmark: time to a `kiln boot` verdict (BIOS and UEFI) and time of one
# `kiln deploy ovh --simulate` replay with each installer step timed, under
# TCG on this machine. For the boot, the baseline measured in the same run
# is QEMU started by hand on the same image (same accelerator, memory and
# CPUs) until `login:` appears, so the ratio shows what kiln adds.
# Targets on an otherwise idle machine: verdict <= 75 s; replay <= 10 min.
#   bench/boot-replay.sh            (needs root; builds the examples first)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -q -p kiln
kiln=$PWD/target/release/kiln
work=$(mktemp -d /var/tmp/kiln-bench-boot.XXXXXX)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }

echo "building the examples (not timed)" >&2
"$kiln" build --out "$work/disk" examples/debian-12-disk.toml >/dev/null 2>&1
"$kiln" build --out "$work/byol" examples/debian-12-ovh-byol.toml >/dev/null 2>&1
disk=$work/disk/debian-12-disk-1.0.0-disk.qcow2
byol=$work/byol/debian-12-byol-1.0.0.qcow2

# Baseline: QEMU by hand, BIOS, 1 vCPU, TCG, until login: on the console,
# with the network `kiln boot` gives by default (kiln_vm::network: isolated,
# no forwards). The one QEMU command line not written by kiln-vm: measuring
# kiln against QEMU without kiln is the point of the baseline.
t0=$(now)
qemu-system-x86_64 -nodefaults -machine q35 -accel tcg,thread=multi -cpu max -m 1024 -smp 1 \
  -display none -no-reboot -chardev file,id=c,path="$work/base.log" -serial chardev:c \
  -drive file="$disk",if=virtio,snapshot=on -nic user,model=virtio-net-pci,restrict=on,ipv6=off &
qemu=$!
until grep -q 'login:' "$work/base.log" 2>/dev/null; do sleep 0.2; done
t1=$(now)
kill "$qemu"; wait "$qemu" 2>/dev/null || true
base=$(echo "$t1 - $t0" | bc)

for fw in bios uefi; do
  t0=$(now)
  "$kiln" boot --firmware "$fw" --console-log "$work/$fw.log" "$disk" >/dev/null 2>&1
  t1=$(now)
  printf 'kiln boot --firmware %s: verdict in %.1fs (target <= 75 s)\n' "$fw" "$(echo "$t1 - $t0" | bc)"
  [ "$fw" = bios ] && printf '  baseline: QEMU by hand to login: %.1fs; kiln/baseline = %.2f (kiln also waits for cloud-init)\n' \
    "$base" "$(echo "($t1 - $t0) / $base" | bc -l)"
done

t0=$(now)
"$kiln" deploy ovh --simulate "$byol" --firmware bios --disks 2 --hostname bench \
  --keep "$work/replay" >/dev/null 2>"$work/replay.txt"
t1=$(now)
sed -n '/^installer steps:/,/first boot to verdict/p' "$work/replay.txt"
printf 'kiln deploy ovh --simulate (bios, 2 disks, RAID1): %.1fs (target <= 600 s; includes building the rescue system once when ~/.cache/kiln is cold)\n' \
  "$(echo "$t1 - $t0" | bc)"
