//! Filesystem assembly: making an ext4 or XFS filesystem directly inside a
//! disk file at its partition offset, populated from a directory tree, and
//! measuring a tree to size the filesystem.
//!
//! ext4 needs no device and no mount: `mke2fs -d` writes the tree at an
//! offset of a plain file. XFS cannot be populated from a directory by
//! mkfs.xfs 6.1, so it is made on a loop device limited to the partition and
//! filled with `cp -a` from a mount that exists only inside a private mount
//! namespace: if kiln dies, the namespace dies with it and takes the mount.
//! Non-goals: btrfs, FAT (written elsewhere, in Rust), resizing.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use kiln_exec::{Cmd, LoopDevice, WorkDir};
use uuid::Uuid;

use crate::error::{Error, IoContext, Result};

/// Settings shared by the filesystem makers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsOptions {
    /// Filesystem UUID; the nil UUID (the default) lets the tool pick a
    /// random one. Deterministic builds derive it from a hash.
    pub uuid: Uuid,
    /// Volume label (ext4: up to 16 bytes, XFS: up to 12); empty for none.
    pub label: String,
    /// ext4 directory-index hash seed (random when `None`).
    pub hash_seed: Option<Uuid>,
    /// Block size in bytes (default 4096).
    pub block_size: Option<u32>,
    /// Timestamp for everything the tool stamps itself (superblock times),
    /// exported as `SOURCE_DATE_EPOCH` and e2fsprogs' `E2FSPROGS_FAKE_TIME`.
    pub source_date_epoch: Option<u64>,
}

fn check_room(disk: &Path, offset: u64, size: u64) -> Result<()> {
    let len = std::fs::metadata(disk)
        .ctx(|| format!("reading metadata of {}", disk.display()))?
        .len();
    if offset.checked_add(size).is_none_or(|end| end > len) {
        return Err(Error::input(format!(
            "a {size}-byte filesystem at offset {offset} does not fit in {} ({len} bytes)",
            disk.display()
        )));
    }
    Ok(())
}

fn check_label(label: &str, max: usize, fs: &str) -> Result<()> {
    if label.len() > max {
        return Err(Error::input(format!(
            "{fs} labels hold at most {max} bytes; {label:?} has {}",
            label.len()
        )));
    }
    Ok(())
}

/// Makes an ext4 filesystem of `size` bytes at byte `offset` of `disk`,
/// populated from `tree` (ownership, modes, xattrs and hard links kept).
pub fn make_ext4(disk: &Path, offset: u64, size: u64, tree: &Path, opts: &FsOptions) -> Result<()> {
    check_room(disk, offset, size)?;
    let block = opts.block_size.unwrap_or(4096);
    if size < 64 * u64::from(block) {
        return Err(Error::input(format!("an ext4 filesystem of {size} bytes is too small")));
    }
    // nodiscard: mke2fs would otherwise punch holes in the file, and its
    // discard does not honour the offset on every version.
    let mut ext = format!("offset={offset},root_owner=0:0,nodiscard,lazy_itable_init=1");
    if let Some(seed) = opts.hash_seed {
        ext.push_str(&format!(",hash_seed={seed}"));
    }
    // `-T default` so that small filesystems do not silently switch to the
    // "small" profile (1 KiB blocks, 128-byte inodes that end in 2038).
    let mut cmd = Cmd::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-T",
            "default",
            "-b",
            &block.to_string(),
            "-E",
            &ext,
            "-d",
        ])
        .arg(tree);
    if !opts.uuid.is_nil() {
        cmd = cmd.args(["-U", &opts.uuid.to_string()]);
    }
    if !opts.label.is_empty() {
        check_label(&opts.label, 16, "ext4")?;
        cmd = cmd.args(["-L", &opts.label]);
    }
    if let Some(t) = opts.source_date_epoch {
        cmd = cmd
            .env("SOURCE_DATE_EPOCH", t.to_string())
            .env("E2FSPROGS_FAKE_TIME", t.to_string());
    }
    cmd.arg(disk).arg(format!("{}k", size / 1024)).run().map_err(|e| {
        Error::tool(
            format!(
                "making ext4 in {} at offset {offset} from {}",
                disk.display(),
                tree.display()
            ),
            e,
        )
    })?;
    Ok(())
}

/// Makes an XFS filesystem of `size` bytes at byte `offset` of `disk` and
/// copies `tree` into it. mkfs.xfs refuses filesystems under 300 MiB.
pub fn make_xfs(disk: &Path, offset: u64, size: u64, tree: &Path, opts: &FsOptions) -> Result<()> {
    check_room(disk, offset, size)?;
    let what = || {
        format!(
            "making XFS in {} at offset {offset} from {}",
            disk.display(),
            tree.display()
        )
    };
    let tool = |e| Error::tool(what(), e);
    let device = LoopDevice::attach(disk, Some(offset), Some(size)).map_err(tool)?;

    let mut mkfs = Cmd::new("mkfs.xfs").args(["-q", "-f"]);
    if !opts.uuid.is_nil() {
        mkfs = mkfs.args(["-m", &format!("uuid={}", opts.uuid)]);
    }
    if !opts.label.is_empty() {
        check_label(&opts.label, 12, "XFS")?;
        mkfs = mkfs.args(["-L", &opts.label]);
    }
    if let Some(b) = opts.block_size {
        mkfs = mkfs.args(["-b", &format!("size={b}")]);
    }
    if let Some(t) = opts.source_date_epoch {
        mkfs = mkfs.env("SOURCE_DATE_EPOCH", t.to_string());
    }
    mkfs.arg(device.path()).run().map_err(tool)?;

    let scratch = WorkDir::new_in(&std::env::temp_dir(), "kiln-xfs-").ctx(what)?;
    let mnt = scratch.path().join("mnt");
    std::fs::create_dir(&mnt).ctx(what)?;
    // The mount lives only in this namespace; the explicit umount flushes
    // the filesystem before the loop device is detached.
    let script = r#"mount -t xfs "$1" "$2"; cp -a "$3"/. "$2"/; umount "$2""#;
    Cmd::in_mount_namespace("sh")
        .args(["-euc", script, "kiln-make-xfs"])
        .arg(device.path())
        .arg(&mnt)
        .arg(tree)
        .run()
        .map_err(tool)?;
    drop(device);
    Ok(())
}

/// Bytes `tree` occupies on disk: allocated blocks of every file, directory
/// and symlink, each rounded up to 4 KiB, hard links counted once. Does not
/// follow symlinks or cross into other filesystems' special files.
pub fn tree_size(path: &Path) -> io::Result<u64> {
    fn walk(path: &Path, seen: &mut HashSet<(u64, u64)>, total: &mut u64) -> io::Result<()> {
        let meta = std::fs::symlink_metadata(path)?;
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            return Ok(());
        }
        *total += (meta.blocks() * 512).div_ceil(4096) * 4096;
        if meta.is_dir() {
            for entry in std::fs::read_dir(path)? {
                walk(&entry?.path(), seen, total)?;
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(path, &mut HashSet::new(), &mut total)?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;
    use crate::testutil::{run, sparse_file};

    /// A small tree with the things copies get wrong: hard links, symlinks,
    /// odd modes, foreign owners, an empty directory. (No xattr: the attr
    /// tools are not installed here.)
    pub(crate) fn sample_tree(root: &Path) {
        std::fs::create_dir_all(root.join("etc/empty.d")).unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(root.join("etc/hostname"), "kiln\n").unwrap();
        std::fs::write(root.join("usr/bin/tool"), crate::testutil::pseudo_random(4, 300_000)).unwrap();
        std::fs::set_permissions(root.join("usr/bin/tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool-link")).unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
        std::os::unix::fs::chown(root.join("etc/hostname"), Some(1234), Some(5678)).unwrap();
    }

    #[test]
    fn tree_size_counts_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 10_000]).unwrap();
        let one = tree_size(dir.path()).unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        assert_eq!(tree_size(dir.path()).unwrap(), one);
        std::fs::write(dir.path().join("c"), b"x").unwrap();
        assert_eq!(tree_size(dir.path()).unwrap(), one + 4096);
        assert!(one >= 12_288, "{one}");
    }

    #[test]
    fn ext4_at_an_offset_passes_e2fsck() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        sample_tree(&tree);
        let disk = dir.path().join("disk.raw");
        sparse_file(&disk, 40 << 20);
        // Bytes around the filesystem must survive.
        crate::testutil::write_at(&disk, (1 << 20) - 4, b"head");
        crate::testutil::write_at(&disk, 33 << 20, b"tail");
        let opts = FsOptions {
            uuid: Uuid::from_u128(0xabc),
            label: "kiln-root".into(),
            hash_seed: Some(Uuid::from_u128(0xdef)),
            source_date_epoch: Some(1_700_000_000),
            ..FsOptions::default()
        };
        make_ext4(&disk, 1 << 20, 32 << 20, &tree, &opts).unwrap();
        let bytes = std::fs::read(&disk).unwrap();
        assert_eq!(&bytes[(1 << 20) - 4..1 << 20], b"head");
        assert_eq!(&bytes[33 << 20..(33 << 20) + 4], b"tail");

        let part = dir.path().join("part.raw");
        std::fs::write(&part, &bytes[1 << 20..33 << 20]).unwrap();
        let p = part.to_str().unwrap();
        let (status, out) = Cmd::new("e2fsck").args(["-fn", p]).run_status().unwrap();
        assert!(status.success(), "{}", out.tail);
        let b = run("blkid", ["-p", "-o", "export", p]);
        assert!(
            b.contains("TYPE=ext4") && b.contains(&format!("UUID={}", Uuid::from_u128(0xabc))),
            "{b}"
        );
        assert!(b.contains("LABEL=kiln-root"), "{b}");
        let stat = run("debugfs", ["-R", "stat /etc/hostname", p]);
        assert!(stat.contains("User:  1234") && stat.contains("Group:  5678"), "{stat}");
        let links = run("debugfs", ["-R", "stat /usr/bin/tool", p]);
        assert!(links.contains("Links: 2") && links.contains("Mode:  04755"), "{links}");
        assert_eq!(run("debugfs", ["-R", "cat /etc/hostname", p]), "kiln");
    }

    #[test]
    fn xfs_at_an_offset_passes_xfs_repair() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        sample_tree(&tree);
        let disk = dir.path().join("disk.raw");
        let (off, size) = (1u64 << 20, 300u64 << 20);
        sparse_file(&disk, off + size + (1 << 20));
        crate::testutil::write_at(&disk, off + size, b"tail");
        let opts = FsOptions {
            uuid: Uuid::from_u128(0x5f5),
            label: "kiln-xfs".into(),
            ..FsOptions::default()
        };
        make_xfs(&disk, off, size, &tree, &opts).unwrap();
        let dev = LoopDevice::attach(&disk, Some(off), Some(size)).unwrap();
        let d = dev.path().to_str().unwrap();
        let (status, out) = Cmd::new("xfs_repair").args(["-n", d]).run_status().unwrap();
        assert!(status.success(), "{}", out.tail);
        let b = run("blkid", ["-p", "-o", "export", d]);
        assert!(
            b.contains("TYPE=xfs") && b.contains(&format!("UUID={}", Uuid::from_u128(0x5f5))),
            "{b}"
        );
        let script = r#"mount -o ro -t xfs "$1" "$2"; cat "$2/etc/hostname"; stat -c '%u:%g %h %a' "$2/etc/hostname" "$2/usr/bin/tool""#;
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let out = Cmd::in_mount_namespace("sh")
            .args(["-euc", script, "t", d, mnt.to_str().unwrap()])
            .run_string()
            .unwrap();
        assert_eq!(out, "kiln\n1234:5678 1 644\n0:0 2 4755");
        drop(dev);
        assert_eq!(&std::fs::read(&disk).unwrap()[(off + size) as usize..][..4], b"tail");
    }
}
