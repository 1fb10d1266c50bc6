#!/usr/bin/env bash
# Benchmark: time to a `kiln boot` verdict (BIOS and UEFI) and time of one
# `kiln deploy ovh --simulate` replay with each installer step timed, under
# TCG on this machine. For the boot, the baseline measured in the same run
# is QEMU started by hand on the same image, firmware and seed (same
# accelerator, memory and CPUs) until the login prompt and cloud-init's
# final message, the two events kiln's verdict waits for, so the ratio
# shows what kiln adds. Targets: kiln/by hand <= 1.2; replay <= 10 min.
#   bench/boot-replay.sh [--boot-only]   (needs root; builds the examples first)
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

# Baseline: QEMU started by hand with the same image, firmware and seed
# (a NoCloud ISO with an empty #cloud-config and a fresh instance id, which
# is what `kiln boot` generates by default), 1 vCPU, 1 GiB, TCG, the
# network `kiln boot` gives by default (isolated, no forwards), until the
# same two events kiln waits for: the login prompt and cloud-init's final
# message. The one QEMU command line not written by kiln-vm: measuring kiln
# against QEMU without kiln is the point of the baseline.
until_both() { # LOG PID: waits for login: and cloud-init's final message
  until grep -q 'login:' "$1" 2>/dev/null && grep -aq 'Cloud-init v\. .* finished at' "$1" 2>/dev/null; do
    kill -0 "$2" 2>/dev/null || { echo "QEMU exited early; console: $1" >&2; exit 1; }
    sleep 0.2
  done
}
by_hand() { # FIRMWARE: prints seconds from start to both events
  local fw=$1 log=$work/hand-$1.log firmware=()
  "$kiln" seed --datasource nocloud -o "$work/hand-$fw.iso" >/dev/null
  if [ "$fw" = uefi ]; then
    cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/hand-vars.fd"
    firmware=(-drive "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"
              -drive "if=pflash,format=raw,unit=1,file=$work/hand-vars.fd")
  fi
  local t0 t1
  t0=$(now)
  qemu-system-x86_64 -nodefaults -machine q35 -accel tcg,thread=multi -cpu max -m 1024 -smp 1 \
    -display none -chardev file,id=c,path="$log" -serial chardev:c "${firmware[@]}" \
    -drive file="$disk",if=virtio,snapshot=on \
    -drive file="$work/hand-$fw.iso",if=virtio,format=raw,readonly=on \
    -nic user,model=virtio-net-pci,restrict=on,ipv6=off &
  local qemu=$!
  until_both "$log" "$qemu"
  t1=$(now)
  kill "$qemu"; wait "$qemu" 2>/dev/null || true
  echo "$t1 - $t0" | bc
}

for fw in bios uefi; do
  base=$(by_hand "$fw")
  t0=$(now)
  "$kiln" boot --firmware "$fw" --console-log "$work/$fw.log" "$disk" >/dev/null 2>"$work/$fw.err"
  t1=$(now)
  took=$(echo "$t1 - $t0" | bc)
  printf 'boot %s: QEMU by hand %.1fs, kiln boot %.1fs: kiln/by hand = %.2f (target <= 1.20)\n' \
    "$fw" "$base" "$took" "$(echo "$took / $base" | bc -l)"
  # Where kiln's time goes before and after the guest's own boot.
  grep -E 'accelerator|verdict|login|cloud-init' "$work/$fw.err" | sed 's/^/  /' || true
done

[ "${1:-}" = --boot-only ] && exit 0

t0=$(now)
"$kiln" deploy ovh --simulate "$byol" --firmware bios --disks 2 --hostname bench \
  --keep "$work/replay" >/dev/null 2>"$work/replay.txt"
t1=$(now)
sed -n '/^installer steps:/,/first boot to verdict/p' "$work/replay.txt"
printf 'kiln deploy ovh --simulate (bios, 2 disks, RAID1): %.1fs (target <= 600 s; includes building the rescue system once when ~/.cache/kiln is cold)\n' \
  "$(echo "$t1 - $t0" | bc)"
