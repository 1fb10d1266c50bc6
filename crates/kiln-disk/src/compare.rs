//! Naming the first difference between two disk images, for reproducibility
//! checks: the first guest byte where they diverge and, when it lies in a
//! filesystem both images can read, the first file (in sorted, depth-first
//! order) that differs and how.
//!
//! Images may be raw or qcow2; their guest bytes are compared, never the
//! container files, so a raw image and its qcow2 conversion are identical.
//! Memory stays bounded: the disks are compared 1 MiB at a time, and files
//! are read whole only up to [`MAX_READ`] (256 MiB); larger ones are
//! compared by size and the result says how many were. Non-goals: listing
//! every difference, extended attributes, XFS mtimes (kiln's XFS reader
//! does not expose them). Walking an XFS tree runs `xfs_db` once per inode,
//! which is slow on a whole root filesystem.

use std::fmt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::fsread::{open_filesystem, FileKind, FileMeta, FsRead, MAX_READ};
use crate::image::DiskImage;
use crate::partition::TableKind;
use crate::probe::FsType;
use crate::table::{read_partition_table, PartitionTable};

/// Bytes compared at a time.
const CHUNK: usize = 1 << 20;
/// Sectors a GPT owns at the start of the disk (protective MBR, header,
/// 128 entries of 128 bytes) and, less the MBR, at its end.
const GPT_HEAD_SECTORS: u64 = 34;
/// Bytes of an MBR before the disk signature: boot code.
const BOOT_CODE: u64 = 440;

/// Where on the disk a differing byte lies, when no filesystem explains it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    /// The first 440 bytes of a partitioned disk, where BIOS boot code
    /// (GRUB's boot.img) goes.
    BootCode,
    /// Sectors a partition table owns: the MBR's table, the GPT headers and
    /// entry arrays, an extended partition's chain.
    PartitionTable,
    /// Inside a partition that holds no filesystem both images can read.
    Partition(u32),
    /// On a partitioned disk, outside every partition and table (the gap
    /// before the first partition, say).
    Unpartitioned,
    /// A disk without a partition table and without a filesystem both
    /// images can read.
    Disk,
    /// The first image's partition table cannot be read.
    UnreadableTable,
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Region::BootCode => f.write_str("boot code"),
            Region::PartitionTable => f.write_str("partition table"),
            Region::Partition(i) => write!(f, "partition {i}, no filesystem both images can read"),
            Region::Unpartitioned => f.write_str("outside every partition"),
            Region::Disk => f.write_str("unpartitioned disk, no filesystem both images can read"),
            Region::UnreadableTable => f.write_str("the first image's partition table is unreadable"),
        }
    }
}

/// How a file differs. Pairs are (first image, second image).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileDifference {
    OnlyInFirst,
    OnlyInSecond,
    Kind(FileKind, FileKind),
    Mode(u32, u32),
    /// (uid, gid)
    Owner((u32, u32), (u32, u32)),
    Size(u64, u64),
    Content,
    SymlinkTarget(String, String),
    Mtime(i64, i64),
}

impl fmt::Display for FileDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileDifference::OnlyInFirst => f.write_str("only in the first image"),
            FileDifference::OnlyInSecond => f.write_str("only in the second image"),
            FileDifference::Kind(a, b) => write!(
                f,
                "kind {} vs {}",
                format!("{a:?}").to_lowercase(),
                format!("{b:?}").to_lowercase()
            ),
            FileDifference::Mode(a, b) => write!(f, "mode {a:04o} vs {b:04o}"),
            FileDifference::Owner(a, b) => write!(f, "owner {}:{} vs {}:{}", a.0, a.1, b.0, b.1),
            FileDifference::Size(a, b) => write!(f, "size {a} vs {b}"),
            FileDifference::Content => f.write_str("content"),
            FileDifference::SymlinkTarget(a, b) => write!(f, "symlink target {a:?} vs {b:?}"),
            FileDifference::Mtime(a, b) => write!(f, "mtime {a} vs {b}"),
        }
    }
}

/// The first difference between two disk images.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Difference {
    /// The guest disks differ in size.
    DiskSize { first: u64, second: u64 },
    /// The first differing byte, where no filesystem explains it.
    Bytes { offset: u64, region: Region },
    /// The first file that differs in the filesystem holding the first
    /// differing byte (`offset`); `partition` is `None` for a whole-disk
    /// filesystem.
    File {
        partition: Option<u32>,
        fs_type: FsType,
        path: String,
        what: FileDifference,
        offset: u64,
    },
    /// The filesystem holding the first differing byte has the same files
    /// in both images (`large_files` of them, over 256 MiB, compared by
    /// size only): its own structures differ.
    FsMetadata {
        partition: Option<u32>,
        fs_type: FsType,
        offset: u64,
        large_files: usize,
    },
}

fn volume_name(partition: Option<u32>, fs_type: FsType) -> String {
    match partition {
        Some(i) => format!("partition {i} ({fs_type})"),
        None => format!("whole disk ({fs_type})"),
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::DiskSize { first, second } => {
                write!(f, "the disks differ in size: {first} vs {second} bytes")
            }
            Difference::Bytes { offset, region } => write!(f, "byte {offset:#x} ({region})"),
            Difference::File {
                partition,
                fs_type,
                path,
                what,
                ..
            } => {
                let volume = volume_name(*partition, *fs_type);
                match what {
                    FileDifference::OnlyInFirst | FileDifference::OnlyInSecond => {
                        write!(f, "{volume}: file {path} exists {what}")
                    }
                    _ => write!(f, "{volume}: file {path} differs: {what}"),
                }
            }
            Difference::FsMetadata {
                partition,
                fs_type,
                offset,
                large_files,
            } => {
                write!(f, "{}: files are identical", volume_name(*partition, *fs_type))?;
                if *large_files > 0 {
                    write!(f, " ({large_files} over 256 MiB compared by size only)")?;
                }
                write!(f, "; first differing byte at offset {offset:#x} (filesystem metadata)")
            }
        }
    }
}

/// Compares the guest disks of the images at `a` and `b` (raw or qcow2):
/// `None` when every byte is the same, else the first difference, as
/// precisely as the partition table and filesystems allow.
pub fn first_difference(a: &Path, b: &Path) -> Result<Option<Difference>> {
    let mut first = DiskImage::open(a)?;
    let mut second = DiskImage::open(b)?;
    let size = first.virtual_size();
    if size != second.virtual_size() {
        return Ok(Some(Difference::DiskSize {
            first: size,
            second: second.virtual_size(),
        }));
    }
    let Some(offset) = first_differing_byte(&mut first, &mut second, size)? else {
        return Ok(None);
    };
    let (partition, start, len) = match read_partition_table(&mut first) {
        Err(_) => {
            return Ok(Some(Difference::Bytes {
                offset,
                region: Region::UnreadableTable,
            }))
        }
        Ok(table) => match place(&table, size, offset) {
            Ok(span) => span,
            Err(region) => return Ok(Some(Difference::Bytes { offset, region })),
        },
    };
    let bytes = || Difference::Bytes {
        offset,
        region: partition.map_or(Region::Disk, Region::Partition),
    };
    // The second image must have the same partition for its filesystem to
    // be comparable; a table that differs was the first difference anyway.
    if let Some(index) = partition {
        let same = read_partition_table(&mut second).is_ok_and(|t| {
            t.partitions
                .iter()
                .any(|p| (p.index, p.start, p.size) == (index, start, len))
        });
        if !same {
            return Ok(Some(bytes()));
        }
    }
    let (Ok(mut fa), Ok(mut fb)) = (
        open_filesystem(&first, start, len),
        open_filesystem(&second, start, len),
    ) else {
        return Ok(Some(bytes()));
    };
    let fs_type = fa.fs_type();
    if fb.fs_type() != fs_type {
        return Ok(Some(bytes()));
    }
    let context = |path: &str| format!("comparing {path} in {}", volume_name(partition, fs_type));
    let mut walk = Walk {
        a: fa.as_mut(),
        b: fb.as_mut(),
        large_files: 0,
    };
    let found = match walk.entry("/").map_err(|e| e.context_for(context("/")))? {
        Some(d) => Some(("/".to_owned(), d)),
        None => walk.dir("/").map_err(|e| e.context_for(context("the trees")))?,
    };
    Ok(Some(match found {
        Some((path, what)) => Difference::File {
            partition,
            fs_type,
            path,
            what,
            offset,
        },
        None => Difference::FsMetadata {
            partition,
            fs_type,
            offset,
            large_files: walk.large_files,
        },
    }))
}

/// The first offset where the two guest disks of `size` bytes differ.
fn first_differing_byte(a: &mut DiskImage, b: &mut DiskImage, size: u64) -> Result<Option<u64>> {
    let (mut x, mut y) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut pos = 0;
    while pos < size {
        kiln_exec::check_interrupted().map_err(|e| Error::tool("comparing disk images", e))?;
        let n = (size - pos).min(CHUNK as u64) as usize;
        a.read_exact_at(&mut x[..n], pos)?;
        b.read_exact_at(&mut y[..n], pos)?;
        if x[..n] != y[..n] {
            let i = x.iter().zip(&y).position(|(p, q)| p != q).expect("the chunks differ");
            return Ok(Some(pos + i as u64));
        }
        pos += n as u64;
    }
    Ok(None)
}

/// The volume holding `offset` as (partition, start, size), or the region
/// of the disk it lies in when no partition does.
fn place(table: &PartitionTable, disk_size: u64, offset: u64) -> std::result::Result<(Option<u32>, u64, u64), Region> {
    let Some(kind) = table.kind else {
        return Ok((None, 0, disk_size));
    };
    let inside = |start: u64, size: u64| offset >= start && offset - start < size;
    let (extended, primary): (Vec<_>, Vec<_>) = table.partitions.iter().partition(|p| p.part_type.is_extended());
    if let Some(p) = primary.iter().find(|p| inside(p.start, p.size)) {
        return Ok((Some(p.index), p.start, p.size));
    }
    let ss = table.sector_size;
    let gpt_head = GPT_HEAD_SECTORS * ss;
    let gpt_tail = disk_size.saturating_sub((GPT_HEAD_SECTORS - 1) * ss);
    Err(if offset < BOOT_CODE {
        Region::BootCode
    } else if offset < ss
        || (kind == TableKind::Gpt && (offset < gpt_head || offset >= gpt_tail))
        || extended.iter().any(|p| inside(p.start, p.size))
    {
        Region::PartitionTable
    } else {
        Region::Unpartitioned
    })
}

/// Both trees, walked in step.
struct Walk<'a> {
    a: &'a mut dyn FsRead,
    b: &'a mut dyn FsRead,
    large_files: usize,
}

impl Walk<'_> {
    /// The first difference below directory `dir`, depth first, names in
    /// sorted order.
    fn dir(&mut self, dir: &str) -> Result<Option<(String, FileDifference)>> {
        let names_a = self.a.read_dir(dir)?.unwrap_or_default();
        let names_b = self.b.read_dir(dir)?.unwrap_or_default();
        let (mut i, mut j) = (0, 0);
        while i < names_a.len() || j < names_b.len() {
            let (name, only) = match (names_a.get(i), names_b.get(j)) {
                (Some(x), Some(y)) if x == y => {
                    i += 1;
                    j += 1;
                    (x, None)
                }
                (Some(x), y) if y.is_none_or(|y| x < y) => {
                    i += 1;
                    (x, Some(FileDifference::OnlyInFirst))
                }
                (_, Some(y)) => {
                    j += 1;
                    (y, Some(FileDifference::OnlyInSecond))
                }
                (Some(_), None) | (None, None) => unreachable!("the guards above cover these"),
            };
            let path = if dir == "/" {
                format!("/{name}")
            } else {
                format!("{dir}/{name}")
            };
            if let Some(what) = only {
                return Ok(Some((path, what)));
            }
            if let Some(what) = self.entry(&path)? {
                return Ok(Some((path, what)));
            }
            if self.a.symlink_metadata(&path)?.is_some_and(|m| m.kind == FileKind::Dir) {
                if let Some(found) = self.dir(&path)? {
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }

    /// How `path` itself differs, if it does (not looking below a directory).
    fn entry(&mut self, path: &str) -> Result<Option<FileDifference>> {
        let (ma, mb) = match (self.a.symlink_metadata(path)?, self.b.symlink_metadata(path)?) {
            (Some(a), Some(b)) => (a, b),
            (Some(_), None) => return Ok(Some(FileDifference::OnlyInFirst)),
            (None, Some(_)) => return Ok(Some(FileDifference::OnlyInSecond)),
            // A name the reader cannot look up again (not UTF-8).
            (None, None) => return Ok(None),
        };
        if let Some(d) = meta_difference(&ma, &mb) {
            return Ok(Some(d));
        }
        match ma.kind {
            FileKind::File if ma.size > MAX_READ => self.large_files += 1,
            FileKind::File => {
                if self.a.read_file(path)? != self.b.read_file(path)? {
                    return Ok(Some(FileDifference::Content));
                }
            }
            FileKind::Symlink => {
                let (ta, tb) = (self.a.read_link(path)?, self.b.read_link(path)?);
                if ta != tb {
                    return Ok(Some(FileDifference::SymlinkTarget(
                        ta.unwrap_or_default(),
                        tb.unwrap_or_default(),
                    )));
                }
            }
            FileKind::Dir | FileKind::Other => {}
        }
        Ok(match (ma.mtime, mb.mtime) {
            (Some(a), Some(b)) if a != b => Some(FileDifference::Mtime(a, b)),
            _ => None,
        })
    }
}

/// Differences visible in the metadata alone, mtime aside (it is checked
/// last, after the content). Sizes count for regular files only: a
/// directory's is a layout detail, a symlink's its target's length.
fn meta_difference(a: &FileMeta, b: &FileMeta) -> Option<FileDifference> {
    if a.kind != b.kind {
        Some(FileDifference::Kind(a.kind, b.kind))
    } else if a.mode != b.mode {
        Some(FileDifference::Mode(a.mode, b.mode))
    } else if (a.uid, a.gid) != (b.uid, b.gid) {
        Some(FileDifference::Owner((a.uid, a.gid), (b.uid, b.gid)))
    } else if a.kind == FileKind::File && a.size != b.size {
        Some(FileDifference::Size(a.size, b.size))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::path::PathBuf;

    use uuid::Uuid;

    use super::*;
    use crate::mkfs::tests::clamp_times;
    use crate::testutil::{pseudo_random, sparse_file, to_qcow2};
    use crate::{layout, make_ext4, write_partition_table, FsOptions, PartKind, PartitionSpec, TableKind};

    const EPOCH: u64 = 1_700_000_000;
    const DISK: u64 = 48 << 20;

    /// A small root tree; `change` alters it before its times are clamped.
    fn tree(root: &Path, change: impl FnOnce(&Path)) {
        for d in ["etc", "usr/bin", "usr/share/doc"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("etc/hostname"), "kiln\n").unwrap();
        std::fs::write(root.join("etc/machine-id"), "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::write(root.join("usr/bin/tool"), pseudo_random(3, 200_000)).unwrap();
        std::fs::write(root.join("usr/share/doc/README"), "read me\n").unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
        change(root);
        clamp_times(root, EPOCH);
    }

    /// A GPT disk: an empty 4 MiB ESP, then `tree` in ext4.
    fn disk(dir: &Path, name: &str, root: &Path, fs_uuid: u128, disk_guid: u128) -> PathBuf {
        let path = dir.join(name);
        sparse_file(&path, DISK);
        let parts = [
            PartitionSpec {
                kind: PartKind::Esp,
                size: 4 << 20,
                name: "esp".into(),
                guid: Uuid::from_u128(1),
            },
            PartitionSpec {
                kind: PartKind::LinuxFs,
                size: 0,
                name: "root".into(),
                guid: Uuid::from_u128(2),
            },
        ];
        let l = layout(DISK, TableKind::Gpt, &parts).unwrap();
        let opts = FsOptions {
            uuid: Uuid::from_u128(fs_uuid),
            label: "root".into(),
            hash_seed: Some(Uuid::from_u128(4)),
            source_date_epoch: Some(EPOCH),
            ..FsOptions::default()
        };
        let p = &l.partitions[1];
        make_ext4(&path, p.start, p.size, root, &opts).unwrap();
        write_partition_table(&path, &l, Uuid::from_u128(disk_guid)).unwrap();
        path
    }

    /// Builds the base image and one from a tree changed by `change`.
    fn pair(change: impl FnOnce(&Path)) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (ta, tb) = (dir.path().join("ta"), dir.path().join("tb"));
        tree(&ta, |_| {});
        tree(&tb, change);
        let a = disk(dir.path(), "a.raw", &ta, 3, 9);
        let b = disk(dir.path(), "b.raw", &tb, 3, 9);
        (dir, a, b)
    }

    #[test]
    fn identical_images_have_no_difference() {
        let (dir, a, b) = pair(|_| {});
        assert_eq!(first_difference(&a, &b).unwrap(), None);
        // Guest bytes are compared, not container files.
        let q = dir.path().join("b.qcow2");
        to_qcow2(&b, &q, &["-c"]);
        assert_eq!(first_difference(&a, &q).unwrap(), None);
    }

    #[test]
    fn the_differing_file_is_named() {
        /// (name, change to the second tree, message, expected difference)
        type Case = (&'static str, fn(&Path), &'static str, fn(&FileDifference) -> bool);
        let cases: [Case; 5] = [
            (
                "content",
                |t| std::fs::write(t.join("etc/machine-id"), "fedcba9876543210fedcba9876543210\n").unwrap(),
                "partition 2 (ext4): file /etc/machine-id differs: content",
                |w| *w == FileDifference::Content,
            ),
            (
                "mode",
                |t| std::fs::set_permissions(t.join("etc/hostname"), std::fs::Permissions::from_mode(0o600)).unwrap(),
                "partition 2 (ext4): file /etc/hostname differs: mode 0644 vs 0600",
                |w| *w == FileDifference::Mode(0o644, 0o600),
            ),
            (
                "extra file",
                |t| std::fs::write(t.join("usr/share/doc/extra"), "x").unwrap(),
                "partition 2 (ext4): file /usr/share/doc/extra exists only in the second image",
                |w| *w == FileDifference::OnlyInSecond,
            ),
            (
                "missing file",
                |t| std::fs::remove_file(t.join("usr/share/doc/README")).unwrap(),
                "partition 2 (ext4): file /usr/share/doc/README exists only in the first image",
                |w| *w == FileDifference::OnlyInFirst,
            ),
            (
                "symlink target",
                |t| {
                    std::fs::remove_file(t.join("bin")).unwrap();
                    symlink("usr/sbin", t.join("bin")).unwrap();
                },
                r#"partition 2 (ext4): file /bin differs: symlink target "usr/bin" vs "usr/sbin""#,
                |w| matches!(w, FileDifference::SymlinkTarget(..)),
            ),
        ];
        for (name, change, message, want) in cases {
            let (_dir, a, b) = pair(change);
            let d = first_difference(&a, &b)
                .unwrap()
                .unwrap_or_else(|| panic!("{name}: no difference"));
            assert_eq!(d.to_string(), message, "{name}");
            let Difference::File {
                partition,
                what,
                offset,
                ..
            } = &d
            else {
                panic!("{name}: {d:?}");
            };
            assert!(want(what), "{name}: {what:?}");
            assert_eq!(*partition, Some(2), "{name}");
            assert!(*offset >= 5 << 20, "{name}: {offset:#x}");
        }
    }

    #[test]
    fn filesystem_metadata_and_partition_table_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("tree");
        tree(&t, |_| {});
        let base = disk(dir.path(), "a.raw", &t, 3, 9);

        // Same files, another filesystem UUID.
        let other_fs = disk(dir.path(), "b.raw", &t, 33, 9);
        let d = first_difference(&base, &other_fs).unwrap().unwrap();
        let Difference::FsMetadata {
            partition: Some(2),
            fs_type: FsType::Ext4,
            offset,
            large_files: 0,
        } = d
        else {
            panic!("{d:?}");
        };
        assert_eq!(
            d.to_string(),
            format!("partition 2 (ext4): files are identical; first differing byte at offset {offset:#x} (filesystem metadata)")
        );

        // Same filesystem, another disk GUID: the GPT header at LBA 1 differs first.
        let other_disk = disk(dir.path(), "c.raw", &t, 3, 10);
        let d = first_difference(&base, &other_disk).unwrap().unwrap();
        assert!(
            matches!(
                d,
                Difference::Bytes {
                    offset: 0x200..=0x3ff,
                    region: Region::PartitionTable
                }
            ),
            "{d:?}"
        );
        assert!(d.to_string().ends_with(" (partition table)"), "{d}");

        // A byte in the empty ESP, which holds no filesystem.
        let esp = dir.path().join("d.raw");
        std::fs::copy(&base, &esp).unwrap();
        crate::testutil::write_at(&esp, (1 << 20) + 5, b"x");
        assert_eq!(
            first_difference(&base, &esp).unwrap().unwrap().to_string(),
            "byte 0x100005 (partition 1, no filesystem both images can read)"
        );

        // Different sizes.
        let small = dir.path().join("e.raw");
        sparse_file(&small, DISK / 2);
        assert!(matches!(
            first_difference(&base, &small).unwrap(),
            Some(Difference::DiskSize { .. })
        ));
    }

    #[test]
    fn regions_outside_partitions() {
        let table = |kind| PartitionTable {
            kind,
            disk_id: None,
            sector_size: 512,
            partitions: vec![crate::table::Partition {
                index: 1,
                start: 1 << 20,
                size: 1 << 20,
                part_type: crate::PartType::Gpt(crate::table::LINUX_FS_GUID),
                type_name: "Linux filesystem",
                name: None,
                uuid: String::new(),
            }],
            warnings: Vec::new(),
        };
        let gpt = table(Some(TableKind::Gpt));
        let size = 8 << 20;
        assert_eq!(place(&gpt, size, 10), Err(Region::BootCode));
        assert_eq!(place(&gpt, size, 446), Err(Region::PartitionTable));
        assert_eq!(place(&gpt, size, 33 * 512), Err(Region::PartitionTable));
        assert_eq!(place(&gpt, size, 34 * 512), Err(Region::Unpartitioned));
        assert_eq!(place(&gpt, size, (1 << 20) + 7), Ok((Some(1), 1 << 20, 1 << 20)));
        assert_eq!(place(&gpt, size, 2 << 20), Err(Region::Unpartitioned));
        assert_eq!(place(&gpt, size, size - 512), Err(Region::PartitionTable));
        assert_eq!(place(&gpt, size, size - 33 * 512), Err(Region::PartitionTable));
        assert_eq!(place(&gpt, size, size - 34 * 512), Err(Region::Unpartitioned));
        let mbr = table(Some(TableKind::Mbr));
        assert_eq!(place(&mbr, size, 34 * 512), Err(Region::Unpartitioned));
        assert_eq!(place(&table(None), size, 5), Ok((None, 0, size)));
    }
}
