#!/bin/bash
exec >/dev/ttyS0 2>&1
set -x
mount -t proc proc /proc 2>/dev/null; mount -t sysfs sys /sys 2>/dev/null; mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmpfs /run
mount -o remount,rw /
/lib/systemd/systemd-udevd --daemon
udevadm trigger; udevadm settle
modprobe raid1 || true
mdadm --create /dev/md2 --level=1 --raid-devices=2 --metadata=1.2 --run /dev/nvme0n1p2 /dev/nvme1n1p2
mdadm --create /dev/md3 --level=1 --raid-devices=2 --metadata=1.2 --run /dev/nvme0n1p3 /dev/nvme1n1p3
pvcreate /dev/md3; vgcreate vg /dev/md3; lvcreate -y -n data -l 100%FREE vg
mkfs.ext4 -q /dev/md2; mkfs.ext4 -q /dev/vg/data
udevadm trigger; udevadm settle
mkdir -p /target; mount /dev/md2 /target; mkdir -p /target/boot /target/srv; mount /dev/vg/data /target/srv
set +x
echo "=== findmnt /boot"; findmnt -A -c -e -l -n -T /target/boot/ -o SOURCE,FSTYPE
echo "=== findmnt /srv"; findmnt -A -c -e -l -n -T /target/srv/ -o SOURCE,FSTYPE
echo "=== lsblk md2"; lsblk -n -p -l -o TYPE,NAME -s /dev/md2
echo "=== lsblk lv"; lsblk -n -p -l -o TYPE,NAME -s "$(findmnt -n -o SOURCE /target/srv)"
echo "=== by-id"; ls -l /dev/disk/by-id/
echo "=== lsblk"; lsblk -o NAME,TYPE,SIZE,FSTYPE,MOUNTPOINT
echo "=== versions"; lsblk --version; uname -r
echo "=== end"
sync; echo o > /proc/sysrq-trigger
sleep 10
