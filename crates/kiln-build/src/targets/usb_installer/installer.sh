#!/bin/bash
# kiln-installer: PID 1 of a kiln USB installer stick (init= on the kernel
# command line). Writes the stick's payload to the machine's disk, checks
# it, grows its last partition, logs to the stick's KILN-DATA partition and
# powers off or reboots. Written by kiln; see the usb-installer target.
#
# Kernel command line:
#   kiln.target=/dev/...  the disk to write (else the only non-removable
#                         disk, other than the stick, that is large enough)
#   kiln.force=1          write over a disk that holds a partition table
#   kiln.after=poweroff|reboot
#
# Safety: nothing is written before the disk is chosen and found empty; the
# partition table region (the payload's first and last MiB, which hold the
# GPT and its backup) is written last, so a disk whose write was cut short
# has no valid table and the next run sees it as empty and rewrites it.
set -euo pipefail

readonly MIB=1048576
readonly RUN=/run/kiln
readonly LOG=$RUN/install.log

# Messages go to stderr: functions echo their results on stdout.
say() {
    echo "kiln-installer: $*" >&2
}

# As PID 1 the script must never exit: the kernel would panic. Waiting
# leaves the message on the console and the disks as they are.
wait_forever() {
    say "$*"
    say "waiting (power the machine off to leave)"
    save_log || true
    while true; do
        sleep 3600
    done
}

cmdline_value() {
    local word words
    read -r -a words </proc/cmdline
    for word in "${words[@]}"; do
        case "$word" in
            "$1="*) echo "${word#*=}" ;;
        esac
    done
}

mount_api() {
    mountpoint -q /proc || mount -t proc proc /proc
    mountpoint -q /sys || mount -t sysfs sysfs /sys
    mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
    mountpoint -q /run || mount -t tmpfs -o mode=0755 tmpfs /run
    # The root is read-only: bash's here-documents and process
    # substitution need a writable /tmp and /dev/fd.
    mountpoint -q /tmp || mount -t tmpfs -o mode=1777 tmpfs /tmp
    [ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
    mkdir -p "$RUN"
}

# The stick's disk: the one holding the installer's root filesystem.
stick_disk() {
    local root
    root=$(findmnt -no SOURCE /)
    lsblk -no PKNAME "$root" | head -n 1
}

# The partition of disk $1 labelled $2.
partition_by_label() {
    lsblk -nro NAME,LABEL "/dev/$1" | awk -v label="$2" '$2 == label { print "/dev/" $1; exit }'
}

# A key of payload.json, which kiln writes one key per line.
payload_field() {
    sed -n "s/^  \"$1\": \"\\{0,1\\}\\([^\",]*\\)\"\\{0,1\\},\\{0,1\\}\$/\\1/p" "$RUN/payload/payload.json"
}

human() {
    numfmt --to=iec-i --suffix=B "$1"
}

save_log() {
    local data
    data=$(partition_by_label "$STICK" KILN-DATA)
    [ -n "$data" ] || return 0
    mkdir -p "$RUN/data"
    modprobe vfat 2>/dev/null || true
    mount -t vfat "$data" "$RUN/data" || return 0
    cp "$LOG" "$RUN/data/kiln-install-$(date -u +%Y%m%dT%H%M%SZ).log" || true
    umount "$RUN/data"
    sync
}

# Echoes the disk to write to, or waits forever saying why there is none.
choose_disk() {
    local target candidates count
    target=$(cmdline_value kiln.target)
    if [ -n "$target" ]; then
        [ -b "$target" ] || wait_forever "kiln.target=$target is not a block device; nothing was written"
        [ "$(lsblk -dno TYPE "$target")" = disk ] || wait_forever "kiln.target=$target is not a whole disk; nothing was written"
        [ "$(lsblk -dno NAME "$target")" != "$STICK" ] || wait_forever "kiln.target=$target is the installer's own stick; nothing was written"
        echo "$target"
        return
    fi
    candidates=$(lsblk -dnbo NAME,RM,SIZE,TYPE | awk -v stick="$STICK" -v need="$SIZE" \
        '$4 == "disk" && $2 == 0 && $1 != stick && $3 >= need { print "/dev/" $1 }')
    count=$(echo "$candidates" | grep -c . || true)
    case "$count" in
        1) echo "$candidates" ;;
        0)
            lsblk -dnbo NAME,RM,SIZE,TYPE >&2
            wait_forever "no disk to install on: none is non-removable, other than the stick ($STICK) and at least $(human "$SIZE") (the payload's size); name one with kiln.target=/dev/...; nothing was written"
            ;;
        *)
            wait_forever "several disks could be installed on ($(echo "$candidates" | tr '\n' ' ')); choose one with kiln.target=/dev/...; nothing was written"
            ;;
    esac
}

# Writes the payload to $1: the first and last MiB are kept in /run and
# written after the rest, zero blocks are skipped unless $2 is "full".
write_payload() {
    local disk=$1 mode=$2 body sparse=conv=sparse,notrunc
    body=$((SIZE / MIB - 2))
    [ "$mode" = full ] && sparse=conv=notrunc
    say "writing $(human "$SIZE") to $disk ($mode)"
    zstd -dc "$RUN/payload/payload.raw.zst" | {
        dd of="$RUN/head" bs=1M count=1 iflag=fullblock status=none
        # shellcheck disable=SC2086 # $sparse is one word.
        dd of="$disk" bs=1M seek=1 count="$body" iflag=fullblock oflag=direct $sparse status=progress
        dd of="$RUN/tail" bs=1M count=1 iflag=fullblock status=none
    }
    sync
    say "writing the partition table region"
    dd if="$RUN/tail" of="$disk" bs=1M seek=$((SIZE / MIB - 1)) conv=notrunc,fsync status=none
    dd if="$RUN/head" of="$disk" bs=1M conv=notrunc,fsync status=none
    rm -f "$RUN/head" "$RUN/tail"
}

# Whether the first $SIZE bytes of $1, read from the disk, have the
# payload's sha512.
verify_payload() {
    local disk=$1 sum
    blockdev --flushbufs "$disk"
    echo 3 >/proc/sys/vm/drop_caches
    say "reading $(human "$SIZE") back from $disk"
    sum=$(dd if="$disk" bs=1M count=$((SIZE / MIB)) iflag=direct status=none | sha512sum | cut -d' ' -f1)
    [ "$sum" = "$SHA512" ]
}

grow_last_partition() {
    local disk=$1 last number
    # The backup GPT sits at the payload's end; move it to the disk's.
    sgdisk --move-second-header "$disk"
    partx --update "$disk" || true
    last=$(sfdisk --dump "$disk" | awk -F'[ :,=]+' '/start=/ { if ($3 + 0 >= max) { max = $3 + 0; dev = $1 } } END { print dev }')
    number=${last##*[!0-9]}
    say "growing partition $number of $disk to the end of the disk"
    # growpart exits 1 when there is nothing to grow (a disk of the payload's size).
    growpart "$disk" "$number" || [ $? -eq 1 ]
}

finish() {
    local after
    after=$(cmdline_value kiln.after)
    save_log
    case "$after" in
        reboot)
            say "done; rebooting"
            echo b >/proc/sysrq-trigger
            ;;
        *)
            say "done; powering off"
            echo o >/proc/sysrq-trigger
            ;;
    esac
    sleep 3600
}

main() {
    local disk
    STICK=$(stick_disk)
    say "installer on /dev/$STICK"
    mkdir -p "$RUN/payload"
    mount -o ro "$(partition_by_label "$STICK" KILN-PAYLOAD)" "$RUN/payload"
    SIZE=$(payload_field size)
    SHA512=$(payload_field sha512)
    say "payload $(payload_field name) $(payload_field version): $(human "$SIZE")"
    [ $((SIZE % MIB)) -eq 0 ] || wait_forever "the payload's size ($SIZE) is not whole MiB"

    disk=$(choose_disk)
    say "target disk $disk"
    local disk_size
    disk_size=$(blockdev --getsize64 "$disk")
    if [ "$disk_size" -lt "$SIZE" ]; then
        wait_forever "$disk is $(human "$disk_size"), smaller than the payload ($(human "$SIZE")); nothing was written"
    fi
    if [ -n "$(wipefs --noheadings "$disk")" ] && [ "$(cmdline_value kiln.force)" != 1 ]; then
        wipefs "$disk" >&2 || true
        wait_forever "$disk already holds a partition table or filesystem; boot with kiln.force=1 to overwrite it; nothing was written"
    fi

    # Skipping zero blocks relies on the disk reading as zeros there
    # (a new disk, or an earlier run of this payload): if the read-back
    # disagrees, every block is written.
    write_payload "$disk" sparse
    if ! verify_payload "$disk"; then
        say "the disk does not read back as the payload; writing every block"
        write_payload "$disk" full
        verify_payload "$disk" || wait_forever "$disk does not read back as the payload (sha512 differs); the disk may be failing"
    fi
    say "sha512 verified"
    grow_last_partition "$disk"
    sync
    finish
}

mount_api
STICK=
# The console is the serial port (the last console= of the command line);
# the screen shows the same.
if [ -w /dev/tty0 ]; then
    exec > >(tee -a "$LOG" /dev/tty0) 2>&1
else
    exec > >(tee -a "$LOG") 2>&1
fi
trap 'wait_forever "failed at line $LINENO; the log is in $LOG and on KILN-DATA"' ERR
main
