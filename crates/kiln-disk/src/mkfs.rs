//! Filesystem assembly: making an ext4 or XFS filesystem directly inside a
//! disk file at its partition offset, populated from a directory tree, and
//! measuring a tree to size the filesystem.
//!
//! ext4 needs no device and no mount: `mke2fs -d` writes the tree at an
//! offset of a plain file. XFS cannot be populated from a directory by
//! mkfs.xfs 6.1, so it is made on a loop device limited to the partition and
//! filled with `cp -a` from a mount that exists only inside a private mount
//! namespace: if kiln dies, the namespace dies with it and takes the mount.
//! A filesystem can leave directories of the tree out (the mount points of
//! other filesystems, [`FsOptions::hide`]): empty stand-ins are bind-mounted
//! over them in a private namespace around the tool, so the tree is never
//! written. Non-goals: btrfs, FAT (written elsewhere, in Rust), resizing.
//!
//! Reproducibility. With a fixed UUID, hash seed and `SOURCE_DATE_EPOCH`,
//! e2fsprogs 1.47.0 stamps every time it owns with the epoch
//! (`E2FSPROGS_FAKE_TIME`: superblock times, `i_crtime`, the root and
//! `lost+found`), leaves `i_generation` at 0 and populates directories in
//! sorted order, whatever the host's readdir order or inode numbers. What it
//! still takes from the host is each inode's `st_ctime` (which no syscall can
//! set) and `st_atime` (which reading the tree moves); one `debugfs -w` pass
//! after mke2fs sets both, and `i_crtime` for good measure, to the epoch on
//! every inode in use. See [`FsOptions::source_date_epoch`] for what the
//! caller must still pin down.
//!
//! XFS output is not byte-reproducible, and kiln does not try: mkfs.xfs 6.1
//! cannot populate from a directory, so the kernel writes the tree through a
//! mount. It stamps every inode's ctime and crtime with the current time and
//! its generation with a random number, `cp -a` creates files in the
//! source's readdir order (which decides inode numbers and block placement),
//! and the log records the mount. Nothing pins these down.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
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
    ///
    /// For ext4 it also sets the ctime, atime and crtime of every inode to
    /// this time, so that with a non-nil `uuid` and a `hash_seed` as well,
    /// [`make_ext4`] writes the same bytes for two trees that agree in names,
    /// contents, modes, owners, mtimes, hard links and extended attributes
    /// (including their order), however and whenever they were created. The
    /// mtimes are kept as the tree has them: clamping them (symlinks
    /// included) is the caller's job. The target range must read as zeros
    /// beforehand (a fresh sparse file), since inode tables are not zeroed.
    /// Costs one `debugfs` run: half a second for 51,000 inodes (`/usr/share`
    /// in 2 GiB), against ~50 s for the `mke2fs -d` itself.
    pub source_date_epoch: Option<u64>,
    /// Directories of the tree (relative paths) whose contents stay out of
    /// the filesystem: the mount points of other filesystems. Each stays as
    /// an empty directory with its mode, owner and mtime. The tree is not
    /// changed: an empty stand-in is bind-mounted over each, in a private
    /// mount namespace that ends with the tool.
    pub hide: Vec<std::path::PathBuf>,
}

/// The shell prelude that bind-mounts stand-ins: `N STANDIN TARGET...`
/// come first in the arguments, and are shifted away.
const HIDE_PRELUDE: &str =
    r#"n=$1; shift; while [ "$n" -gt 0 ]; do mount --bind "$1" "$2"; shift 2; n=$((n - 1)); done; "#;

/// Empty stand-ins in `scratch` for the directories of `tree` named by
/// `hide` (those missing from the tree are skipped: nothing to hide), as
/// the arguments [`HIDE_PRELUDE`] reads.
fn hide_args(tree: &Path, hide: &[std::path::PathBuf], scratch: &Path) -> Result<Vec<std::ffi::OsString>> {
    let what = || format!("preparing to leave mount points out of {}", tree.display());
    let mut pairs = Vec::new();
    for (i, rel) in hide.iter().enumerate() {
        let target = tree.join(rel);
        let Ok(meta) = std::fs::symlink_metadata(&target) else {
            continue;
        };
        if !meta.is_dir() {
            return Err(Error::input(format!(
                "{}: /{} is not a directory, so it cannot be a mount point",
                what(),
                rel.display()
            )));
        }
        let standin = scratch.join(format!("hide-{i}"));
        std::fs::create_dir(&standin).ctx(what)?;
        std::os::unix::fs::chown(&standin, Some(meta.uid()), Some(meta.gid())).ctx(what)?;
        std::fs::set_permissions(&standin, meta.permissions()).ctx(what)?;
        let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(meta.mtime().max(0) as u64);
        std::fs::File::open(&standin)
            .and_then(|f| f.set_times(std::fs::FileTimes::new().set_modified(mtime)))
            .ctx(what)?;
        pairs.push((standin, target));
    }
    let mut args = vec![pairs.len().to_string().into()];
    for (standin, target) in pairs {
        args.push(standin.into_os_string());
        args.push(target.into_os_string());
    }
    Ok(args)
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
    let scratch;
    let mut cmd = if opts.hide.is_empty() {
        Cmd::new("mke2fs")
    } else {
        scratch = WorkDir::new_in(&std::env::temp_dir(), "kiln-ext4-")
            .ctx(|| format!("making ext4 from {}", tree.display()))?;
        Cmd::in_mount_namespace("sh")
            .args(["-euc", &format!("{HIDE_PRELUDE}exec \"$@\""), "kiln-mke2fs"])
            .args(hide_args(tree, &opts.hide, scratch.path())?)
            .arg("mke2fs")
    };
    cmd = cmd
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
    if let Some(t) = opts.source_date_epoch {
        pin_inode_times(disk, offset, t).map_err(|e| {
            e.context_for(format!(
                "setting inode times of the ext4 filesystem at offset {offset} of {}",
                disk.display()
            ))
        })?;
    }
    Ok(())
}

/// Sets ctime, atime and crtime of every inode in use from the first
/// non-reserved one on (`lost+found`, then everything `mke2fs -d` copied) to
/// `epoch`, through one `debugfs -w` run fed a command per field: debugfs
/// keeps the inode checksums right, and takes a few µs a command.
fn pin_inode_times(disk: &Path, offset: u64, epoch: u64) -> Result<()> {
    let (first_ino, inodes) = inodes_in_use(disk, offset)?;
    let mut script = String::with_capacity(inodes.len() * 96);
    for ino in inodes.into_iter().filter(|&i| i >= first_ino) {
        for field in ["ctime", "atime", "crtime"] {
            script.push_str(&format!("sif <{ino}> {field} @{epoch}\n"));
        }
    }
    run_debugfs(disk, offset, epoch, script)
}

/// Runs `script` through one `debugfs -w` on the ext4 filesystem at
/// `offset` of `disk`, with e2fsprogs' clock at `epoch`; a command that
/// fails is an error.
pub(crate) fn run_debugfs(disk: &Path, offset: u64, epoch: u64, script: String) -> Result<()> {
    // debugfs takes the offset as an option of the device name, after a
    // `?`, so the file is named relative to its directory.
    let name = disk
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.contains('?'))
        .ok_or_else(|| Error::input(format!("{}: debugfs cannot open a file named so", disk.display())))?;
    let dir = disk
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let out = Cmd::new("debugfs")
        .args(["-w", "-f", "-"])
        .arg(format!("./{name}?offset={offset}"))
        .current_dir(dir)
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .stdin_bytes(script)
        .run()
        .map_err(|e| Error::tool("running debugfs", e))?;
    // debugfs reports failed commands on stderr and still exits 0; its
    // only other stderr line is the version banner.
    let errors: Vec<&str> = out
        .tail
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect();
    if !errors.is_empty() {
        return Err(Error::new(
            crate::ErrorKind::Tool,
            format!("debugfs reported errors: {}", errors.join("; ")),
        ));
    }
    Ok(())
}

/// The inodes marked in use in the inode bitmaps of the ext4 filesystem at
/// `offset` of `disk`, and the superblock's first non-reserved inode. Only
/// reads what mke2fs has just written, but still checks what it uses.
fn inodes_in_use(disk: &Path, offset: u64) -> Result<(u32, Vec<u32>)> {
    const INCOMPAT_META_BG: u32 = 0x10;
    const INCOMPAT_64BIT: u32 = 0x80;
    const RO_COMPAT_GDT_CSUM: u32 = 0x10;
    const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
    const BG_INODE_UNINIT: u16 = 0x1;
    let what = || format!("reading the inode bitmaps of the ext4 filesystem in {}", disk.display());
    let file = std::fs::File::open(disk).ctx(what)?;
    let read = |at: u64, len: usize| -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset + at).ctx(what)?;
        Ok(buf)
    };
    let sb = read(1024, 1024)?;
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    let (inodes_count, first_data_block, log_block) = (u32_at(&sb, 0x00), u32_at(&sb, 0x14), u32_at(&sb, 0x18));
    let per_group = u32_at(&sb, 0x28);
    let first_ino = if u32_at(&sb, 0x4c) == 0 { 11 } else { u32_at(&sb, 0x54) };
    let (incompat, ro_compat) = (u32_at(&sb, 0x60), u32_at(&sb, 0x64));
    if u16_at(&sb, 0x38) != 0xef53 || log_block > 6 || per_group == 0 || per_group % 8 != 0 {
        return Err(Error::corrupt(format!(
            "{}: not the ext4 superblock mke2fs wrote",
            what()
        )));
    }
    if incompat & INCOMPAT_META_BG != 0 {
        // Its group descriptors are scattered; kiln's mke2fs options never ask for it.
        return Err(Error::unsupported(format!("{}: meta_bg is not supported", what())));
    }
    let block = 1024u64 << log_block;
    let desc_size = if incompat & INCOMPAT_64BIT != 0 {
        usize::from(u16_at(&sb, 0xfe))
    } else {
        32
    };
    if !(32..=1024).contains(&desc_size) {
        return Err(Error::corrupt(format!(
            "{}: group descriptors of {desc_size} bytes",
            what()
        )));
    }
    let uninit_flags = ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) != 0;
    let groups = inodes_count.div_ceil(per_group) as usize;
    let gdt = read((u64::from(first_data_block) + 1) * block, groups * desc_size)?;
    let mut used = Vec::new();
    for (g, desc) in gdt.chunks_exact(desc_size).enumerate() {
        if uninit_flags && u16_at(desc, 0x12) & BG_INODE_UNINIT != 0 {
            continue;
        }
        let hi = if desc_size >= 64 {
            u64::from(u32_at(desc, 0x24))
        } else {
            0
        };
        let bitmap_block = hi << 32 | u64::from(u32_at(desc, 0x04));
        let bitmap = read(bitmap_block * block, per_group as usize / 8)?;
        for (i, byte) in bitmap.iter().enumerate() {
            for bit in (0..8).filter(|b| byte & (1 << b) != 0) {
                let ino = g as u64 * u64::from(per_group) + (i * 8 + bit) as u64 + 1;
                if ino <= u64::from(inodes_count) {
                    used.push(ino as u32);
                }
            }
        }
    }
    Ok((first_ino, used))
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
    let script = format!(r#"{HIDE_PRELUDE}mount -t xfs "$1" "$2"; cp -a "$3"/. "$2"/; umount "$2""#);
    Cmd::in_mount_namespace("sh")
        .args(["-euc", &script, "kiln-make-xfs"])
        .args(hide_args(tree, &opts.hide, scratch.path())?)
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
pub(crate) mod tests {
    use std::fs::Permissions;
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;
    use crate::testutil::{pseudo_random, run, sparse_file};

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

    /// The same tree whichever `reverse` says, but created in the opposite
    /// order, so host inode numbers, ctimes and (on tmpfs) readdir order all
    /// differ between the two. Times are then clamped to `epoch` the way the
    /// build clamps them.
    fn ordered_tree(root: &Path, reverse: bool, epoch: u64) {
        let mut tops = ["etc", "usr/bin", "usr/lib", "var/empty"];
        let mut names: Vec<String> = (0..40).map(|i| format!("n{i:02}")).collect();
        if reverse {
            tops.reverse();
            names.reverse();
        }
        for t in tops {
            std::fs::create_dir_all(root.join(t)).unwrap();
        }
        for (i, n) in names.iter().enumerate() {
            let seed = n[1..].parse::<u64>().unwrap();
            std::fs::create_dir(root.join("usr/lib").join(n)).unwrap();
            std::fs::write(root.join(format!("usr/lib/{n}/data")), pseudo_random(seed, 3000)).unwrap();
            std::fs::write(root.join(format!("etc/{n}.conf")), n).unwrap();
            // A mode change bumps the ctime, at a different moment in each tree.
            let mode = if i % 2 == 0 { 0o600 } else { 0o640 };
            std::fs::set_permissions(root.join(format!("etc/{n}.conf")), Permissions::from_mode(mode)).unwrap();
            std::fs::set_permissions(root.join(format!("etc/{n}.conf")), Permissions::from_mode(0o644)).unwrap();
        }
        std::fs::write(root.join("usr/bin/tool"), pseudo_random(4, 300_000)).unwrap();
        std::fs::set_permissions(root.join("usr/bin/tool"), Permissions::from_mode(0o4755)).unwrap();
        std::fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool-link")).unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
        std::os::unix::fs::chown(root.join("etc/n07.conf"), Some(1234), Some(5678)).unwrap();
        clamp_times(root, epoch);
    }

    /// Sets atime and mtime of everything in `root`, symlinks included, to
    /// `epoch`, as the build does before making a reproducible filesystem.
    pub(crate) fn clamp_times(root: &Path, epoch: u64) {
        let clamp = r#"find "$1" -exec touch -h -d "@$2" {} +"#;
        Cmd::new("sh")
            .args(["-euc", clamp, "clamp"])
            .arg(root)
            .arg(epoch.to_string())
            .run()
            .unwrap();
    }

    #[test]
    fn ext4_is_reproducible_across_creation_order_and_host_times() {
        let epoch = 1_700_000_000;
        let dir = tempfile::tempdir().unwrap();
        // tmpfs lists a directory in reverse creation order.
        let shm = Path::new("/dev/shm");
        let trees = if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let (a, b) = (trees.path().join("a"), trees.path().join("b"));
        ordered_tree(&a, false, epoch);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        ordered_tree(&b, true, epoch);
        // Reading the tree moves atimes; make one differ outright.
        std::fs::File::open(b.join("etc/n03.conf"))
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_accessed(std::time::SystemTime::now()))
            .unwrap();
        let meta = |p: &Path| std::fs::symlink_metadata(p).unwrap();
        for p in ["etc/n00.conf", "usr/lib", "bin"] {
            let (ma, mb) = (meta(&a.join(p)), meta(&b.join(p)));
            assert_eq!(ma.mtime(), mb.mtime(), "{p}");
            assert_ne!((ma.ctime(), ma.ino()), (mb.ctime(), mb.ino()), "{p}");
        }

        let opts = FsOptions {
            uuid: Uuid::from_u128(0x1234),
            label: "root".into(),
            hash_seed: Some(Uuid::from_u128(0x5678)),
            source_date_epoch: Some(epoch),
            ..FsOptions::default()
        };
        let (off, size) = (1u64 << 20, 32u64 << 20);
        let make = |tree: &Path, name: &str| {
            let disk = dir.path().join(name);
            sparse_file(&disk, 40 << 20);
            make_ext4(&disk, off, size, tree, &opts).unwrap();
            disk
        };
        let (da, db) = (make(&a, "a.raw"), make(&b, "b.raw"));
        let (x, y) = (std::fs::read(&da).unwrap(), std::fs::read(&db).unwrap());
        if let Some(at) = x.iter().zip(&y).position(|(p, q)| p != q) {
            panic!(
                "the images differ first at byte {at:#x} (filesystem block {})",
                (at as u64 - off) / 4096
            );
        }

        let fs = format!("{}?offset={off}", da.display());
        let (status, out) = Cmd::new("e2fsck").args(["-fn", &fs]).run_status().unwrap();
        assert!(status.success(), "{}", out.tail);
        let stat = run("debugfs", ["-R", "stat /etc/n00.conf", &fs]);
        for field in ["ctime", "atime", "crtime"] {
            assert!(stat.contains(&format!("{field}: 0x6553f100:00000000")), "{stat}");
        }
        assert!(stat.contains("mtime: 0x6553f100"), "{stat}");

        // Every inode the superblock counts as used was found in the bitmaps.
        let sb = &x[off as usize + 1024..][..1024];
        let word = |at: usize| u32::from_le_bytes(sb[at..at + 4].try_into().unwrap());
        let (first_ino, used) = inodes_in_use(&da, off).unwrap();
        assert_eq!(used.len() as u32, word(0x00) - word(0x10));
        assert_eq!(first_ino, 11);
        // lost+found, 6 directories, 40 x (directory, data, conf), the
        // twice-linked tool and the bin symlink.
        assert_eq!(used.iter().filter(|&&i| i >= first_ino).count(), 1 + 6 + 40 * 3 + 2);
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
