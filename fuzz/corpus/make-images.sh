#!/bin/bash
# Makes the binary seed inputs of the disk, filesystem, ISO and FAT fuzz
# targets with the reference tools (run as root from anywhere; needs
# qemu-utils, e2fsprogs, xfsprogs, dosfstools, mtools, gdisk, fdisk,
# xorriso, squashfs-tools). The text targets' seeds are written by hand.
# Images are small on purpose: a few hundred KiB in git (zeros compress).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export SOURCE_DATE_EPOCH=1700000000 E2FSPROGS_FAKE_TIME=1700000000

# A small tree: files, a directory, a fast and a slow symlink, an os-release.
mkdir -p tree/etc tree/boot tree/usr/share/kiln tree/deep/a/b/c
echo 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"' > tree/etc/os-release
echo 'root:x:0:0:root:/root:/bin/sh' > tree/etc/passwd
printf 'kernel' > tree/boot/vmlinuz-6.1.0-13-amd64
printf 'initrd' > tree/boot/initrd.img-6.1.0-13-amd64
echo '{"image":{"name":"fuzz","version":"1.0.0"}}' > tree/usr/share/kiln/manifest.json
head -c 5000 /dev/zero | tr '\0' 'k' > tree/deep/a/b/c/big
ln -s /etc/os-release tree/etc/link
ln -s "/$(printf 'x%.0s' {1..80})/target" tree/etc/slowlink

put() { mkdir -p "$here/$1"; cp "$2" "$here/$1/$3"; }

# ---- ext4 / ext2 (the ext4 target, probe, inspect)
mke2fs -q -F -o Linux -t ext4 -b 1024 -N 64 -O ^has_journal,^resize_inode -E root_owner=0:0 -U 11111111-2222-3333-4444-555555555555 -d tree ext4.img 256k
put ext4 ext4.img ext4-extents.img
mke2fs -q -F -o Linux -t ext4 -b 1024 -N 32 -O ^has_journal,^resize_inode,^extent,^flex_bg,^64bit -U 11111111-2222-3333-4444-555555555556 -d tree ext4b.img 200k
put ext4 ext4b.img ext4-blockmap.img
mke2fs -q -F -o Linux -t ext4 -b 1024 -N 32 -I 256 -O ^has_journal,^resize_inode,inline_data -U 11111111-2222-3333-4444-555555555557 -d tree ext4c.img 200k
put ext4 ext4c.img ext4-inline.img
mke2fs -q -F -o Linux -t ext2 -b 1024 -N 32 -U 11111111-2222-3333-4444-555555555558 -d tree ext2.img 128k
put ext4 ext2.img ext2.img

# ---- XFS (16 MiB is the least mkfs.xfs makes, with its test override;
# populated from a proto file).
cat > proto <<'P'
/dev/null
0 0
d--755 0 0
etc d--755 0 0
os-release ---644 0 0 tree/etc/os-release
passwd ---644 0 0 tree/etc/passwd
link l--777 0 0 /etc/os-release
$
boot d--755 0 0
vmlinuz-6.1.0-13-amd64 ---644 0 0 tree/boot/vmlinuz-6.1.0-13-amd64
$
big ---644 0 0 tree/deep/a/b/c/big
$
P
truncate -s 16M xfs.img
QA_CHECK_FS=1 TEST_DEV=1 TEST_DIR=1 mkfs.xfs -q -f -m uuid=11111111-2222-3333-4444-555555555559 -p proto xfs.img
# Cut after the last block that is not zero (the log): kiln and xfs_db
# read the rest as a short file.
python3 - xfs.img <<'PY'
import sys
p = sys.argv[1]
d = open(p, 'rb').read()
end = max(i + 4096 for i in range(0, len(d), 4096) if any(d[i:i + 4096]))
open(p, 'wb').write(d[:end])
PY
put xfs xfs.img xfs-truncated.img

# ---- FAT 12/16 (with a directory and a PE header), and a FAT32 boot sector
mkfs.vfat -C -i 12345678 fat12.img 128 >/dev/null
mmd -i fat12.img ::/EFI ::/EFI/BOOT
printf 'MZ\x90\x00' > mz; head -c 60 /dev/zero >> mz; printf 'PE\0\0\x64\x86' >> mz
mcopy -i fat12.img mz ::/EFI/BOOT/BOOTX64.EFI
mcopy -i fat12.img tree/etc/os-release ::/os-release
put fat fat12.img fat12.img
mkfs.vfat -F 16 -s 1 -C -i 12345679 fat16.img 2100 >/dev/null
mcopy -i fat16.img tree/etc/passwd ::/passwd
mkfs.vfat -F 32 -s 1 -C -i 1234567a fat32.img 34816 >/dev/null
mcopy -i fat32.img tree/etc/passwd ::/passwd
# FAT32: only the reserved sectors and the start of the FAT are kept.
head -c 65536 fat32.img > fat32-head.img
# FAT16: the boot sector, FATs, root directory and first clusters.
head -c 131072 fat16.img > fat16-head.img
put fat fat16-head.img fat16-truncated.img
put fat fat32-head.img fat32-truncated.img

# ---- ISO 9660 with Rock Ridge, Joliet and an El Torito EFI image; a
# config-2 drive.
mkdir -p isotree/boot isotree/openstack/latest
cp tree/etc/os-release isotree/boot/
cp fat12.img isotree/boot/efi.img
echo '{"uuid":"u","hostname":"h"}' > isotree/openstack/latest/meta_data.json
echo '{"links":[],"networks":[],"services":[]}' > isotree/openstack/latest/network_data.json
xorriso -as mkisofs -quiet -R -J -V config-2 -e boot/efi.img -no-emul-boot -o iso.iso isotree 2>/dev/null
put iso iso.iso eltorito.iso
xorriso -as mkisofs -quiet -r -V CIDATA -o plain.iso tree 2>/dev/null
put iso plain.iso rockridge.iso

# ---- partition tables (table, inspect): GPT, MBR with logical partitions
truncate -s 200k gpt.img
sgdisk -o -U 11111111-2222-3333-4444-55555555555a -n 1:34:100 -t 1:ef02 -n 2:101:300 -t 2:ef00 -n 3:301:0 -t 3:8300 gpt.img >/dev/null
put table gpt.img gpt.img
truncate -s 200k mbr.img
printf 'label: dos\nlabel-id: 0x12345678\nunit: sectors\n\n1 : start=1, size=100, type=83, bootable\n2 : start=101, type=5\n5 : start=102, size=50, type=82\n6 : start=153, size=100, type=83\n' | sfdisk -q mbr.img >/dev/null
put table mbr.img mbr-logical.img
cp gpt.img hybrid.img
sgdisk -h 3 hybrid.img >/dev/null
put table hybrid.img gpt-hybrid.img

# A whole disk (inspect): GPT + an ext4 partition, raw and as qcow2.
truncate -s 400k disk.img
sgdisk -o -U 11111111-2222-3333-4444-55555555555b -n 1:40:0 -t 1:8300 disk.img >/dev/null
dd if=ext4.img of=disk.img bs=512 seek=40 conv=notrunc status=none
put inspect disk.img gpt-ext4.raw
qemu-img convert -q -f raw -O qcow2 -o cluster_size=4096 disk.img disk.qcow2
put inspect disk.qcow2 gpt-ext4.qcow2

# ---- qcow2: empty, written clusters, compressed, version 2, a backing name
qemu-img create -q -f qcow2 -o cluster_size=512 q-empty.qcow2 1M
put qcow2 q-empty.qcow2 empty-512.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4096 q-data.qcow2 1M
qemu-io -f qcow2 -c 'write -P 0xab 0 8k' -c 'write -P 0x11 600k 4k' q-data.qcow2 >/dev/null
put qcow2 q-data.qcow2 data-4k.qcow2
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=4096 mbr.img q-z.qcow2
put qcow2 q-z.qcow2 compressed-zlib.qcow2
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=4096,compression_type=zstd gpt.img q-zstd.qcow2
put qcow2 q-zstd.qcow2 compressed-zstd.qcow2
qemu-img create -q -f qcow2 -o cluster_size=512,compat=0.10 q-v2.qcow2 64k
put qcow2 q-v2.qcow2 v2.qcow2
qemu-img create -q -f qcow2 -o cluster_size=512 -u -F raw -b /nonexistent/base.raw q-back.qcow2 64k
put qcow2 q-back.qcow2 backing.qcow2

# ---- probe: the first bytes of each filesystem kiln knows
head -c 4096 ext4.img > p; put probe p ext4-head.img
head -c 4096 ext2.img > p; put probe p ext2-head.img
head -c 4096 xfs.img > p; put probe p xfs-head.img
head -c 4096 fat12.img > p; put probe p fat12-head.img
head -c 4096 fat32.img > p; put probe p fat32-head.img
head -c 36864 plain.iso > p; put probe p iso-head.iso
mkswap -q -U 11111111-2222-3333-4444-55555555555c -L swap swap.img 40k >/dev/null 2>&1 || { truncate -s 40k swap.img; mkswap -q -U 11111111-2222-3333-4444-55555555555c -L swap swap.img >/dev/null; }
put probe swap.img swap.img
mksquashfs tree sq.img -quiet -noappend >/dev/null
head -c 4096 sq.img > p; put probe p squashfs-head.img
ls -la "$here"/*/ | head -80
du -sh "$here"
