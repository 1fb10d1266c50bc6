//! FAT filesystems written in Rust, for EFI system partitions and cloud-init
//! seeds: a standalone image file ([`write_fat_image`]) or a filesystem
//! inside a disk image at a partition offset ([`write_fat_at`]), populated
//! from in-memory or host files ([`entries_from_dir`]), with VFAT long
//! names, a volume label and id, and fixed timestamps, so the same inputs
//! give the same bytes. Non-goals: reading or modifying an existing FAT,
//! symlinks (FAT has none), attributes (hidden, system), cluster alignment.
//!
//! Hand-written rather than built on the `fatfs` crate: its released line
//! (0.3.6) gives `.` and `..` long-name entries and points `..` of top-level
//! FAT32 directories at the root's cluster instead of 0, which fsck.vfat
//! rejects; the fixes sit unreleased on its master. Writing a whole volume
//! from a known tree is also simpler than editing one: every directory and
//! file gets contiguous clusters, laid out in one pass. The tests still use
//! `fatfs` as an independent reader, next to fsck.vfat and blkid.
//!
//! FAT type: FAT32 from 36 MiB up. The UEFI specification names FAT32 for
//! system partitions on fixed disks (FAT12/16 for removable media), Windows
//! and some vendor firmware insist on it, and OVMF's FAT driver reads all
//! three. Below about 34 MiB a valid FAT32 cannot exist (it needs 65525
//! clusters of at least 512 bytes), so smaller volumes, seeds among them,
//! get FAT12 or FAT16 with the smallest clusters that fit, as mkfs.fat
//! would.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
/// From this size up the volume is FAT32 (see the module header).
const FAT32_MIN_SIZE: u64 = 36 * MIB;
/// Root directory slots of a FAT12/16 volume (the usual fixed region).
const ROOT_ENTRIES: u64 = 512;
/// Bytes per directory entry.
const DIRENT: usize = 32;
/// UTF-16 code units held by one long-name entry.
const LFN_CHARS: usize = 13;
/// Cluster counts that decide the FAT type (Microsoft's FAT specification).
const FAT12_MAX_CLUSTERS: u64 = 4084;
const FAT16_MAX_CLUSTERS: u64 = 65524;
const FAT32_MAX_CLUSTERS: u64 = 0x0fff_fff5 - 2;
/// Distance kept from those limits: some drivers count a few clusters
/// differently, and a volume near a limit could be taken for the wrong type.
const TYPE_MARGIN: u64 = 16;

const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_LFN: u8 = 0x0f;

/// How to make the filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatOptions {
    /// Volume label: up to 11 ASCII bytes, empty for none. Kept in the case
    /// given (`cidata`, `config-2`), as `mkfs.fat -n` does: blkid and Linux
    /// show it as written, and cloud-init accepts either case.
    pub label: String,
    /// Volume serial number (blkid's UUID, shown as `XXXX-XXXX`).
    pub volume_id: u32,
    /// Timestamp of every file and directory, in Unix seconds (e.g.
    /// `SOURCE_DATE_EPOCH`); written as UTC and clamped to FAT's 1980–2107.
    pub mtime: u64,
    /// Size of a standalone image in bytes (a multiple of 512); `None` picks
    /// one that holds the files with some room to spare (at least 1 MiB).
    pub size: Option<u64>,
}

impl FatOptions {
    pub fn new(label: impl Into<String>, volume_id: u32, mtime: u64) -> Self {
        FatOptions {
            label: label.into(),
            volume_id,
            mtime,
            size: None,
        }
    }
}

/// What a [`FatEntry`] holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A directory (parents of files are created anyway; list a directory
    /// to create it empty).
    Dir,
    /// A file with these bytes.
    Bytes(Vec<u8>),
    /// A file copied from the host when the filesystem is written.
    HostFile(PathBuf),
}

/// One file or directory to put in the filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatEntry {
    /// Path inside the filesystem, `/`-separated, without a leading `/`
    /// (e.g. `openstack/latest/meta_data.json`, `EFI/BOOT/BOOTX64.EFI`).
    pub path: String,
    pub content: Content,
}

impl FatEntry {
    pub fn dir(path: impl Into<String>) -> Self {
        FatEntry {
            path: path.into(),
            content: Content::Dir,
        }
    }

    pub fn file(path: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Self {
        FatEntry {
            path: path.into(),
            content: Content::Bytes(bytes.into()),
        }
    }

    pub fn host_file(path: impl Into<String>, source: impl Into<PathBuf>) -> Self {
        FatEntry {
            path: path.into(),
            content: Content::HostFile(source.into()),
        }
    }
}

/// The FAT variant of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

/// The FAT type and cluster size [`write_fat_image`] and [`write_fat_at`]
/// give a volume of `size` bytes.
pub fn fat_geometry(size: u64) -> Result<(FatType, u32)> {
    check_size(size)?;
    let g = Geometry::for_size(size)?;
    Ok((g.fat_type, g.cluster_bytes() as u32))
}

/// Writes a FAT filesystem holding `files` to a new image file `dest`
/// (replaced atomically: written to `dest.part`, renamed when complete).
pub fn write_fat_image(dest: &Path, opts: &FatOptions, files: &[FatEntry]) -> Result<()> {
    let what = || format!("writing FAT image {}", dest.display());
    let wrap = |e: Error| e.context_for(what());
    check_label(&opts.label).map_err(wrap)?;
    let tree = Tree::plan(files).map_err(wrap)?;
    let layout = match opts.size {
        Some(size) => {
            check_size(size).map_err(wrap)?;
            Layout::new(&tree, Geometry::for_size(size).map_err(wrap)?).map_err(wrap)?
        }
        None => Layout::auto(&tree).map_err(wrap)?,
    };
    let part = kiln_exec::PartialFile::new(dest);
    let file = File::create(part.path()).ctx(what)?;
    file.set_len(layout.geometry.total_sectors * SECTOR).ctx(what)?;
    layout.write(&file, 0, 0, opts, &tree).map_err(wrap)?;
    drop(file);
    part.commit().ctx(what)?;
    Ok(())
}

/// Writes a FAT filesystem holding `files` into the existing disk image
/// `disk`, in the `size` bytes from `offset` (a partition, e.g. an EFI
/// system partition). Bytes outside that range are never touched; inside
/// it every metadata byte is written, but unused clusters keep what they
/// held (a fresh disk file holds zeros). `opts.size`, if set, must equal
/// `size`.
pub fn write_fat_at(disk: &Path, offset: u64, size: u64, opts: &FatOptions, files: &[FatEntry]) -> Result<()> {
    let what = || format!("writing FAT filesystem into {} at offset {offset}", disk.display());
    let wrap = |e: Error| e.context_for(what());
    check_label(&opts.label).map_err(wrap)?;
    check_size(size).map_err(wrap)?;
    if opts.size.is_some_and(|s| s != size) {
        return Err(wrap(Error::input(format!(
            "FatOptions::size ({}) differs from the partition size ({size})",
            opts.size.unwrap_or_default()
        ))));
    }
    if !offset.is_multiple_of(SECTOR) {
        return Err(wrap(Error::input("the offset is not a multiple of 512")));
    }
    let hidden = u32::try_from(offset / SECTOR).map_err(|_| {
        wrap(Error::input(
            "the offset is beyond what a FAT boot sector records (2 TiB)",
        ))
    })?;
    let tree = Tree::plan(files).map_err(wrap)?;
    let layout = Layout::new(&tree, Geometry::for_size(size).map_err(wrap)?).map_err(wrap)?;
    let file = OpenOptions::new().write(true).open(disk).ctx(what)?;
    let len = file.metadata().ctx(what)?.len();
    if offset.checked_add(size).is_none_or(|end| end > len) {
        return Err(wrap(Error::input(format!(
            "a {size}-byte filesystem does not fit in the {len}-byte disk"
        ))));
    }
    layout.write(&file, offset, hidden, opts, &tree).map_err(wrap)?;
    file.sync_data().ctx(what)?;
    Ok(())
}

/// Lists `root` as [`FatEntry`]s (directories and host files, sorted), for
/// an ESP assembled from a tree. Symlinks and special files are errors: FAT
/// cannot store them.
pub fn entries_from_dir(root: &Path) -> Result<Vec<FatEntry>> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<FatEntry>) -> Result<()> {
        let what = || format!("listing {}", dir.display());
        let mut children = std::fs::read_dir(dir)
            .ctx(what)?
            .map(|e| e.map(|e| e.path()))
            .collect::<io::Result<Vec<_>>>()
            .ctx(what)?;
        children.sort();
        for path in children {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| Error::input(format!("{} is not valid UTF-8", path.display())))?;
            let rel = if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}/{name}")
            };
            let meta = std::fs::symlink_metadata(&path).ctx(|| format!("reading metadata of {}", path.display()))?;
            if meta.is_dir() {
                out.push(FatEntry::dir(&rel));
                walk(&path, &rel, out)?;
            } else if meta.is_file() {
                out.push(FatEntry::host_file(rel, path));
            } else {
                return Err(Error::input(format!(
                    "{} is a symlink or special file, which FAT cannot store",
                    path.display()
                )));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, "", &mut out)?;
    Ok(out)
}

fn check_size(size: u64) -> Result<()> {
    if !size.is_multiple_of(SECTOR) {
        return Err(Error::input(format!("FAT volume size {size} is not a multiple of 512")));
    }
    if size < 64 * 1024 {
        return Err(Error::input(format!(
            "FAT volume size {size} is below the 64 KiB kiln supports"
        )));
    }
    if size / SECTOR > u64::from(u32::MAX) {
        return Err(Error::input(format!("FAT volume size {size} exceeds 2 TiB")));
    }
    Ok(())
}

fn check_label(label: &str) -> Result<()> {
    let bad = label
        .bytes()
        .any(|b| !b.is_ascii() || b < 0x20 || b"\"*+,./:;<=>?[\\]|".contains(&b));
    if label.len() > 11 || bad {
        return Err(Error::input(format!(
            "FAT labels are up to 11 ASCII characters without \"*+,./:;<=>?[\\]|; got {label:?}"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Planning: the tree to write, validated before anything touches the disk.

#[derive(Debug)]
enum Source<'a> {
    Bytes(&'a [u8]),
    Host(&'a Path, u64),
}

impl Source<'_> {
    fn len(&self) -> u64 {
        match self {
            Source::Bytes(b) => b.len() as u64,
            Source::Host(_, len) => *len,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Child {
    Dir(usize),
    File(usize),
}

#[derive(Debug, Default)]
struct DirNode<'a> {
    parent: usize,
    /// Keyed by the lower-cased name: FAT compares names without case, so
    /// `User-Data` and `user-data` are one name and must be caught here.
    children: BTreeMap<String, (&'a str, Child)>,
}

#[derive(Debug)]
struct Tree<'a> {
    /// Index 0 is the root.
    dirs: Vec<DirNode<'a>>,
    files: Vec<Source<'a>>,
}

impl<'a> Tree<'a> {
    fn plan(entries: &'a [FatEntry]) -> Result<Self> {
        let mut tree = Tree {
            dirs: vec![DirNode::default()],
            files: Vec::new(),
        };
        for entry in entries {
            tree.insert(entry)?;
        }
        Ok(tree)
    }

    fn insert(&mut self, entry: &'a FatEntry) -> Result<()> {
        let comps = split_path(&entry.path)?;
        let (last, parents) = comps.split_last().expect("split_path returns at least one component");
        let mut dir = 0;
        for comp in parents {
            dir = match self.lookup(dir, comp, &entry.path)? {
                Some(Child::Dir(d)) => d,
                Some(Child::File(_)) => {
                    return Err(Error::input(format!(
                        "{:?} needs {comp:?} to be a directory, but it is a file",
                        entry.path
                    )))
                }
                None => self.add(dir, comp, None),
            };
        }
        match (&entry.content, self.lookup(dir, last, &entry.path)?) {
            // Listing a directory that a file path already implied is fine.
            (Content::Dir, Some(Child::Dir(_))) => {}
            (_, Some(_)) => return Err(Error::input(format!("{:?} is listed twice", entry.path))),
            (Content::Dir, None) => {
                self.add(dir, last, None);
            }
            (Content::Bytes(b), None) => {
                if b.len() as u64 > u64::from(u32::MAX) {
                    return Err(Error::input(format!(
                        "{:?} is 4 GiB or larger, more than a FAT file holds",
                        entry.path
                    )));
                }
                self.add(dir, last, Some(Source::Bytes(b)));
            }
            (Content::HostFile(p), None) => {
                let meta = std::fs::metadata(p).ctx(|| format!("reading {}", p.display()))?;
                if !meta.is_file() {
                    return Err(Error::input(format!("{} is not a regular file", p.display())));
                }
                if meta.len() > u64::from(u32::MAX) {
                    return Err(Error::input(format!(
                        "{} is 4 GiB or larger, more than a FAT file holds",
                        p.display()
                    )));
                }
                self.add(dir, last, Some(Source::Host(p, meta.len())));
            }
        }
        Ok(())
    }

    fn lookup(&self, dir: usize, name: &str, path: &str) -> Result<Option<Child>> {
        match self.dirs[dir].children.get(&name.to_lowercase()) {
            Some((existing, _)) if *existing != name => Err(Error::input(format!(
                "{path:?} clashes with {existing:?}: FAT names do not distinguish case"
            ))),
            Some((_, child)) => Ok(Some(*child)),
            None => Ok(None),
        }
    }

    fn add(&mut self, parent: usize, name: &'a str, file: Option<Source<'a>>) -> usize {
        let child = match file {
            None => {
                self.dirs.push(DirNode {
                    parent,
                    children: BTreeMap::new(),
                });
                Child::Dir(self.dirs.len() - 1)
            }
            Some(source) => {
                self.files.push(source);
                Child::File(self.files.len() - 1)
            }
        };
        self.dirs[parent].children.insert(name.to_lowercase(), (name, child));
        match child {
            Child::Dir(d) | Child::File(d) => d,
        }
    }
}

fn split_path(path: &str) -> Result<Vec<&str>> {
    let comps: Vec<&str> = path.split('/').collect();
    for comp in &comps {
        let bad = comp.chars().find(|&c| (c as u32) < 0x20 || "\"*/:<>?\\|".contains(c));
        let problem = if comp.is_empty() {
            Some("an empty component (leading, trailing or double `/`)".to_owned())
        } else if *comp == "." || *comp == ".." {
            Some(format!("a {comp:?} component"))
        } else if comp.ends_with('.') || comp.ends_with(' ') {
            // Windows and Linux's vfat drop trailing dots and spaces.
            Some(format!("{comp:?}, which ends in a dot or space"))
        } else if let Some(c) = bad {
            Some(format!("the character {c:?}, which FAT names cannot hold"))
        } else if comp.encode_utf16().count() > 255 {
            Some(format!("{comp:?}, longer than FAT's 255-character names"))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(Error::input(format!("FAT path {path:?} has {problem}")));
        }
    }
    Ok(comps)
}

// ---------------------------------------------------------------------------
// Geometry: FAT type, cluster size and where each region starts.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    fat_type: FatType,
    total_sectors: u64,
    sectors_per_cluster: u64,
    reserved_sectors: u64,
    sectors_per_fat: u64,
    root_dir_sectors: u64,
    clusters: u64,
}

impl Geometry {
    /// The geometry of a volume of `size` bytes: FAT32 from 36 MiB with the
    /// largest cluster up to 4 KiB that keeps it clearly FAT32 (so the FATs
    /// stay small), otherwise FAT12/16 with the smallest cluster that fits.
    fn for_size(size: u64) -> Result<Self> {
        let sectors = size / SECTOR;
        let valid = |g: &Geometry| match g.fat_type {
            FatType::Fat12 => g.clusters <= FAT12_MAX_CLUSTERS - TYPE_MARGIN,
            FatType::Fat16 => {
                (FAT12_MAX_CLUSTERS + TYPE_MARGIN..=FAT16_MAX_CLUSTERS - TYPE_MARGIN).contains(&g.clusters)
            }
            FatType::Fat32 => {
                (FAT16_MAX_CLUSTERS + TYPE_MARGIN..=FAT32_MAX_CLUSTERS - TYPE_MARGIN).contains(&g.clusters)
            }
        };
        let found = if size >= FAT32_MIN_SIZE {
            [8, 4, 2, 1, 16, 32, 64]
                .into_iter()
                .map(|spc| Geometry::compute(FatType::Fat32, sectors, spc))
                .find(valid)
        } else {
            [1, 2, 4, 8, 16, 32, 64].into_iter().find_map(|spc| {
                [FatType::Fat12, FatType::Fat16]
                    .into_iter()
                    .map(|t| Geometry::compute(t, sectors, spc))
                    .find(valid)
            })
        };
        found.ok_or_else(|| Error::input(format!("no valid FAT geometry for a volume of {size} bytes")))
    }

    /// Sizes the FATs for `fat_type` by iterating to the fixed point: the
    /// FATs must map every cluster that the space left beside them holds.
    fn compute(fat_type: FatType, total_sectors: u64, sectors_per_cluster: u64) -> Self {
        let (reserved_sectors, root_dir_sectors) = match fat_type {
            FatType::Fat32 => (32, 0),
            _ => (1, ROOT_ENTRIES * DIRENT as u64 / SECTOR),
        };
        let mut sectors_per_fat = 1;
        loop {
            let data = total_sectors.saturating_sub(reserved_sectors + 2 * sectors_per_fat + root_dir_sectors);
            let clusters = data / sectors_per_cluster;
            let fat_bytes = match fat_type {
                FatType::Fat12 => ((clusters + 2) * 3).div_ceil(2),
                FatType::Fat16 => (clusters + 2) * 2,
                FatType::Fat32 => (clusters + 2) * 4,
            };
            let needed = fat_bytes.div_ceil(SECTOR);
            if needed <= sectors_per_fat {
                return Geometry {
                    fat_type,
                    total_sectors,
                    sectors_per_cluster,
                    reserved_sectors,
                    sectors_per_fat,
                    root_dir_sectors,
                    clusters,
                };
            }
            sectors_per_fat = needed;
        }
    }

    fn cluster_bytes(&self) -> u64 {
        self.sectors_per_cluster * SECTOR
    }

    fn fat_start(&self) -> u64 {
        self.reserved_sectors * SECTOR
    }

    fn root_dir_start(&self) -> u64 {
        (self.reserved_sectors + 2 * self.sectors_per_fat) * SECTOR
    }

    /// Byte offset (within the volume) of cluster `n` (the first is 2).
    fn cluster_offset(&self, n: u32) -> u64 {
        self.root_dir_start() + self.root_dir_sectors * SECTOR + (u64::from(n) - 2) * self.cluster_bytes()
    }
}

// ---------------------------------------------------------------------------
// Layout: names, directory contents and clusters.

/// A directory entry's 8.3 name and, when the name is not already an
/// upper-case 8.3 name, its long name.
#[derive(Debug, Clone)]
struct Names {
    short: [u8; 11],
    long: Option<Vec<u16>>,
}

impl Names {
    fn slots(&self) -> usize {
        1 + self.long.as_ref().map_or(0, |l| l.len().div_ceil(LFN_CHARS))
    }
}

#[derive(Debug)]
struct Layout {
    geometry: Geometry,
    /// Per directory: its children's names, in entry order.
    names: Vec<Vec<(Names, Child)>>,
    /// First cluster of each directory (0 for a FAT12/16 root) and file
    /// (0 when empty); each is contiguous.
    dir_cluster: Vec<u32>,
    dir_clusters: Vec<u64>,
    file_cluster: Vec<u32>,
    /// Clusters used, all from cluster 2 on.
    used: u64,
}

impl Layout {
    /// Lays `tree` out on a volume of `geometry`, or says it does not fit.
    fn new(tree: &Tree, geometry: Geometry) -> Result<Self> {
        let names: Vec<_> = tree.dirs.iter().map(short_names).collect();
        let cluster = geometry.cluster_bytes();
        let fat32 = geometry.fat_type == FatType::Fat32;
        // Slots: `.` and `..`, or the root's label; then every child.
        let slots = |d: usize| -> u64 {
            let own = if d == 0 { 1 } else { 2 };
            own + names[d].iter().map(|(n, _)| n.slots() as u64).sum::<u64>()
        };
        if !fat32 && slots(0) > ROOT_ENTRIES {
            return Err(Error::input(format!(
                "the root directory needs {} entries (long names take several) but a FAT12/16 root holds {ROOT_ENTRIES}; use a volume of {} MiB or more for FAT32",
                slots(0),
                FAT32_MIN_SIZE / MIB
            )));
        }
        let dir_clusters: Vec<u64> = (0..tree.dirs.len())
            .map(|d| {
                if d == 0 && !fat32 {
                    0
                } else {
                    (slots(d) * DIRENT as u64).div_ceil(cluster).max(1)
                }
            })
            .collect();
        // Directories first, breadth first, then files in the same order:
        // metadata stays together at the start of the data area.
        let order = breadth_first(&names);
        let mut next = 2u64;
        let mut dir_cluster = vec![0u32; tree.dirs.len()];
        for &d in &order {
            if dir_clusters[d] > 0 {
                dir_cluster[d] = next as u32;
                next += dir_clusters[d];
            }
        }
        let mut file_cluster = vec![0u32; tree.files.len()];
        for &d in &order {
            for (_, child) in &names[d] {
                if let Child::File(f) = *child {
                    let n = tree.files[f].len().div_ceil(cluster);
                    if n > 0 {
                        file_cluster[f] = next as u32;
                        next += n;
                    }
                }
            }
        }
        let used = next - 2;
        if used > geometry.clusters {
            return Err(Error::input(format!(
                "the files need {} bytes of {cluster}-byte clusters but the volume ({} bytes) has {}",
                used * cluster,
                geometry.total_sectors * SECTOR,
                geometry.clusters * cluster
            )));
        }
        Ok(Layout {
            geometry,
            names,
            dir_cluster,
            dir_clusters,
            file_cluster,
            used,
        })
    }

    /// The smallest whole-MiB volume (at least 1 MiB) holding `tree` with
    /// an eighth to spare, for a standalone image.
    fn auto(tree: &Tree) -> Result<Self> {
        let mut size = MIB;
        loop {
            let g = Geometry::for_size(size)?;
            if let Ok(layout) = Layout::new(tree, g) {
                if (g.clusters - layout.used) * 8 >= layout.used {
                    return Ok(layout);
                }
            }
            // Grow by a quarter at least, so big trees do not take long.
            size = (size + size / 4).next_multiple_of(MIB);
            check_size(size)?;
        }
    }

    fn write(&self, file: &File, offset: u64, hidden: u32, opts: &FatOptions, tree: &Tree) -> Result<()> {
        let g = &self.geometry;
        let stamp = DosTime::new(opts.mtime);
        let at = |pos: u64| offset + pos;
        let write = |pos: u64, bytes: &[u8], what: &str| {
            file.write_all_at(bytes, at(pos)).ctx(|| format!("writing the {what}"))
        };

        // Reserved sectors: boot sector (and on FAT32 FSInfo and backups);
        // the whole region is written so no stale bytes survive in it.
        let mut reserved = vec![0u8; g.fat_start() as usize];
        let boot = self.boot_sector(opts, hidden);
        reserved[..512].copy_from_slice(&boot);
        if g.fat_type == FatType::Fat32 {
            let info = self.fs_info();
            reserved[512..1024].copy_from_slice(&info);
            reserved[6 * 512..7 * 512].copy_from_slice(&boot);
            reserved[7 * 512..8 * 512].copy_from_slice(&info);
        }
        write(0, &reserved, "boot sector")?;

        let fat = self.fat(tree);
        write(g.fat_start(), &fat, "first FAT")?;
        write(g.fat_start() + g.sectors_per_fat * SECTOR, &fat, "second FAT")?;

        for d in 0..tree.dirs.len() {
            let bytes = self.directory(d, tree, opts, &stamp);
            let pos = if d == 0 && g.fat_type != FatType::Fat32 {
                g.root_dir_start()
            } else {
                g.cluster_offset(self.dir_cluster[d])
            };
            write(pos, &bytes, "directories")?;
        }

        let cluster = g.cluster_bytes();
        for (f, source) in tree.files.iter().enumerate() {
            let len = source.len();
            if len == 0 {
                continue;
            }
            let pos = at(g.cluster_offset(self.file_cluster[f]));
            match source {
                Source::Bytes(b) => file.write_all_at(b, pos).ctx(|| "writing file data".to_owned())?,
                Source::Host(src, _) => copy_host_file(src, len, file, pos)?,
            }
            // Zero the rest of the last cluster: unused bytes are part of
            // the image and must not depend on what the disk held before.
            let slack = len.next_multiple_of(cluster) - len;
            if slack > 0 {
                file.write_all_at(&vec![0; slack as usize], pos + len)
                    .ctx(|| "writing file data".to_owned())?;
            }
        }
        Ok(())
    }

    fn boot_sector(&self, opts: &FatOptions, hidden: u32) -> [u8; 512] {
        let g = &self.geometry;
        let fat32 = g.fat_type == FatType::Fat32;
        let mut b = [0u8; 512];
        // Jump over the BPB to the boot code, which is only "int 18h"
        // (try the next boot device) and a halt loop: the volume is data.
        let code_at = if fat32 { 90 } else { 62 };
        b[..3].copy_from_slice(&[0xeb, (code_at - 2) as u8, 0x90]);
        b[code_at..code_at + 4].copy_from_slice(&[0xcd, 0x18, 0xeb, 0xfe]);
        b[3..11].copy_from_slice(b"MSWIN4.1");
        b[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
        b[13] = g.sectors_per_cluster as u8;
        b[14..16].copy_from_slice(&(g.reserved_sectors as u16).to_le_bytes());
        b[16] = 2;
        let root_entries = if fat32 { 0 } else { ROOT_ENTRIES as u16 };
        b[17..19].copy_from_slice(&root_entries.to_le_bytes());
        let (small, large) = if g.total_sectors < 0x10000 && !fat32 {
            (g.total_sectors as u16, 0)
        } else {
            (0, g.total_sectors as u32)
        };
        b[19..21].copy_from_slice(&small.to_le_bytes());
        b[21] = 0xf8;
        if !fat32 {
            b[22..24].copy_from_slice(&(g.sectors_per_fat as u16).to_le_bytes());
        }
        b[24..26].copy_from_slice(&32u16.to_le_bytes());
        b[26..28].copy_from_slice(&64u16.to_le_bytes());
        b[28..32].copy_from_slice(&hidden.to_le_bytes());
        b[32..36].copy_from_slice(&large.to_le_bytes());
        let ext = if fat32 {
            b[36..40].copy_from_slice(&(g.sectors_per_fat as u32).to_le_bytes());
            b[44..48].copy_from_slice(&2u32.to_le_bytes()); // root cluster
            b[48..50].copy_from_slice(&1u16.to_le_bytes()); // FSInfo sector
            b[50..52].copy_from_slice(&6u16.to_le_bytes()); // backup boot sector
            64
        } else {
            36
        };
        b[ext] = 0x80;
        b[ext + 2] = 0x29;
        b[ext + 3..ext + 7].copy_from_slice(&opts.volume_id.to_le_bytes());
        b[ext + 7..ext + 18].copy_from_slice(&label_field(&opts.label).unwrap_or(*b"NO NAME    "));
        b[ext + 18..ext + 26].copy_from_slice(match g.fat_type {
            FatType::Fat12 => b"FAT12   ",
            FatType::Fat16 => b"FAT16   ",
            FatType::Fat32 => b"FAT32   ",
        });
        b[510..].copy_from_slice(&[0x55, 0xaa]);
        b
    }

    fn fs_info(&self) -> [u8; 512] {
        let mut s = [0u8; 512];
        s[..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
        s[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
        let free = self.geometry.clusters - self.used;
        s[488..492].copy_from_slice(&(free as u32).to_le_bytes());
        // The next free cluster, or "unknown" when the volume is full.
        let next_free = if free > 0 { (self.used + 2) as u32 } else { u32::MAX };
        s[492..496].copy_from_slice(&next_free.to_le_bytes());
        s[508..].copy_from_slice(&0xaa55_0000u32.to_le_bytes());
        s
    }

    /// One FAT: the media and clean-shutdown entries, then a chain per
    /// directory and file over its contiguous clusters.
    fn fat(&self, tree: &Tree) -> Vec<u8> {
        let g = &self.geometry;
        let mut fat = Fat {
            bytes: vec![0; (g.sectors_per_fat * SECTOR) as usize],
            fat_type: g.fat_type,
        };
        let eoc = fat.eoc();
        fat.set(0, eoc & !0xff | 0xf8);
        fat.set(1, eoc);
        let mut chain = |first: u32, n: u64| {
            for i in 0..n as u32 {
                let next = if u64::from(i) + 1 == n { eoc } else { first + i + 1 };
                fat.set(first + i, next);
            }
        };
        for d in 0..tree.dirs.len() {
            chain(self.dir_cluster[d], self.dir_clusters[d]);
        }
        for (f, source) in tree.files.iter().enumerate() {
            chain(self.file_cluster[f], source.len().div_ceil(g.cluster_bytes()));
        }
        fat.bytes
    }

    /// Directory `d`'s entries, padded with zeros (free, end-of-directory
    /// entries) to its clusters or to the fixed FAT12/16 root region.
    fn directory(&self, d: usize, tree: &Tree, opts: &FatOptions, stamp: &DosTime) -> Vec<u8> {
        let g = &self.geometry;
        let mut out = Vec::new();
        let entry = |name: [u8; 11], attr: u8, cluster: u32, size: u32| {
            let mut e = [0u8; DIRENT];
            e[..11].copy_from_slice(&name);
            e[11] = attr;
            if attr != ATTR_VOLUME_ID {
                e[14..16].copy_from_slice(&stamp.time.to_le_bytes());
                e[16..18].copy_from_slice(&stamp.date.to_le_bytes());
                e[18..20].copy_from_slice(&stamp.date.to_le_bytes());
            }
            e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
            e[22..24].copy_from_slice(&stamp.time.to_le_bytes());
            e[24..26].copy_from_slice(&stamp.date.to_le_bytes());
            e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
            e[28..32].copy_from_slice(&size.to_le_bytes());
            e
        };
        if d == 0 {
            if let Some(label) = label_field(&opts.label) {
                out.extend(entry(label, ATTR_VOLUME_ID, 0, 0));
            }
        } else {
            // `..` of a directory in the root says cluster 0, on FAT32 too.
            let parent = tree.dirs[d].parent;
            let parent_cluster = if parent == 0 { 0 } else { self.dir_cluster[parent] };
            out.extend(entry(*b".          ", ATTR_DIRECTORY, self.dir_cluster[d], 0));
            out.extend(entry(*b"..         ", ATTR_DIRECTORY, parent_cluster, 0));
        }
        for (names, child) in &self.names[d] {
            if let Some(long) = &names.long {
                out.extend(long_entries(long, &names.short));
            }
            out.extend(match *child {
                Child::Dir(c) => entry(names.short, ATTR_DIRECTORY, self.dir_cluster[c], 0),
                Child::File(f) => entry(names.short, 0, self.file_cluster[f], tree.files[f].len() as u32),
            });
        }
        let len = if d == 0 && g.fat_type != FatType::Fat32 {
            g.root_dir_sectors * SECTOR
        } else {
            self.dir_clusters[d] * g.cluster_bytes()
        };
        out.resize(len as usize, 0);
        out
    }
}

/// Directory ids, root first, then breadth first in entry order.
fn breadth_first(names: &[Vec<(Names, Child)>]) -> Vec<usize> {
    let mut order = vec![0];
    let mut i = 0;
    while i < order.len() {
        for (_, child) in &names[order[i]] {
            if let Child::Dir(d) = *child {
                order.push(d);
            }
        }
        i += 1;
    }
    order
}

fn copy_host_file(src: &Path, len: u64, out: &File, pos: u64) -> Result<()> {
    let what = || format!("copying {}", src.display());
    let mut host = File::open(src).ctx(what)?;
    let mut out = out;
    out.seek(SeekFrom::Start(pos)).ctx(what)?;
    // One byte past the planned length detects a file that grew since the
    // layout was made; a shrunk one copies short.
    let copied = io::copy(&mut (&mut host).take(len + 1), &mut out).ctx(what)?;
    if copied != len {
        return Err(Error::input(format!(
            "{} changed size while being copied ({len} bytes planned, {copied} found)",
            src.display()
        )));
    }
    Ok(())
}

/// A FAT in memory, with 12-, 16- or 32-bit entries.
struct Fat {
    bytes: Vec<u8>,
    fat_type: FatType,
}

impl Fat {
    fn eoc(&self) -> u32 {
        match self.fat_type {
            FatType::Fat12 => 0xfff,
            FatType::Fat16 => 0xffff,
            FatType::Fat32 => 0x0fff_ffff,
        }
    }

    fn set(&mut self, n: u32, v: u32) {
        let n = n as usize;
        match self.fat_type {
            FatType::Fat12 => {
                let at = n + n / 2;
                if n.is_multiple_of(2) {
                    self.bytes[at] = v as u8;
                    self.bytes[at + 1] = (self.bytes[at + 1] & 0xf0) | ((v >> 8) as u8 & 0x0f);
                } else {
                    self.bytes[at] = (self.bytes[at] & 0x0f) | ((v << 4) as u8);
                    self.bytes[at + 1] = (v >> 4) as u8;
                }
            }
            FatType::Fat16 => self.bytes[n * 2..n * 2 + 2].copy_from_slice(&(v as u16).to_le_bytes()),
            FatType::Fat32 => self.bytes[n * 4..n * 4 + 4].copy_from_slice(&v.to_le_bytes()),
        }
    }
}

// ---------------------------------------------------------------------------
// Names.

/// Characters allowed in an 8.3 name besides letters and digits.
const SHORT_NAME_PUNCT: &[u8] = b"!#$%&'()-@^_`{}~";

fn label_field(label: &str) -> Option<[u8; 11]> {
    (!label.is_empty()).then(|| {
        let mut f = [b' '; 11];
        f[..label.len()].copy_from_slice(label.as_bytes());
        f
    })
}

/// The 8.3 field of `name` if it is already a valid 8.3 name once
/// upper-cased (`BOOTX64.EFI`, `grub.cfg`), else `None`.
fn exact_short_name(name: &str) -> Option<[u8; 11]> {
    let upper = name.to_ascii_uppercase();
    let (base, ext) = upper.split_once('.').unwrap_or((&upper, ""));
    let ok = |s: &str, max: usize| {
        s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || SHORT_NAME_PUNCT.contains(&b))
    };
    if base.is_empty() || !ok(base, 8) || !ok(ext, 3) || ext.contains('.') {
        return None;
    }
    let mut f = [b' '; 11];
    f[..base.len()].copy_from_slice(base.as_bytes());
    f[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
    Some(f)
}

/// Names every child of `dir` in entry order (sorted by lower-cased name).
/// A name that is an upper-case 8.3 name is stored as is; any other gets
/// a long name plus a unique 8.3 alias in the Windows style (`USER-D~1`),
/// which only long-name-blind readers ever show.
fn short_names(dir: &DirNode) -> Vec<(Names, Child)> {
    let mut taken: HashSet<[u8; 11]> = HashSet::new();
    // Exact names first, so an alias can never take a name that is exact.
    for (name, _) in dir.children.values() {
        if let Some(short) = exact_short_name(name) {
            taken.insert(short);
        }
    }
    dir.children
        .values()
        .map(|&(name, child)| {
            let exact = exact_short_name(name);
            let names = match exact {
                Some(short) if name.bytes().all(|b| !b.is_ascii_lowercase()) => Names { short, long: None },
                Some(short) => Names {
                    short,
                    long: Some(name.encode_utf16().collect()),
                },
                None => Names {
                    short: alias(name, &mut taken),
                    long: Some(name.encode_utf16().collect()),
                },
            };
            (names, child)
        })
        .collect()
}

/// A unique `BASE~N.EXT` alias for a long name.
fn alias(name: &str, taken: &mut HashSet<[u8; 11]>) -> [u8; 11] {
    let clean = |s: &str| -> Vec<u8> {
        s.chars()
            .filter(|&c| c != ' ' && c != '.')
            .map(|c| {
                let b = c.to_ascii_uppercase();
                if b.is_ascii_alphanumeric() || (b.is_ascii() && SHORT_NAME_PUNCT.contains(&(b as u8))) {
                    b as u8
                } else {
                    b'_'
                }
            })
            .collect()
    };
    let trimmed = name.trim_start_matches('.');
    let (base, ext) = match trimmed.rsplit_once('.') {
        Some((b, e)) => (clean(b), clean(e)),
        None => (clean(trimmed), Vec::new()),
    };
    let base = if base.is_empty() { b"_".to_vec() } else { base };
    let mut f = [b' '; 11];
    let ext = &ext[..ext.len().min(3)];
    f[8..8 + ext.len()].copy_from_slice(ext);
    for n in 1u32.. {
        let tail = format!("~{n}");
        let keep = base.len().min(8 - tail.len());
        f[..8].fill(b' ');
        f[..keep].copy_from_slice(&base[..keep]);
        f[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
        if taken.insert(f) {
            break;
        }
    }
    f
}

/// The long-name entries for `long`, last piece first as they are stored.
fn long_entries(long: &[u16], short: &[u8; 11]) -> Vec<u8> {
    let sum = short.iter().fold(0u8, |s, &b| s.rotate_right(1).wrapping_add(b));
    let pieces = long.len().div_ceil(LFN_CHARS);
    let mut out = Vec::with_capacity(pieces * DIRENT);
    for i in (0..pieces).rev() {
        // Thirteen units: the name, a NUL if it ends here with room, then 0xFFFF.
        let mut units = [0xffffu16; LFN_CHARS];
        for (j, u) in units.iter_mut().enumerate() {
            let k = i * LFN_CHARS + j;
            match k.cmp(&long.len()) {
                std::cmp::Ordering::Less => *u = long[k],
                std::cmp::Ordering::Equal => *u = 0,
                std::cmp::Ordering::Greater => {}
            }
        }
        let mut e = [0u8; DIRENT];
        e[0] = (i as u8 + 1) | if i + 1 == pieces { 0x40 } else { 0 };
        e[11] = ATTR_LFN;
        e[13] = sum;
        let at = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
        for (u, &pos) in units.iter().zip(&at) {
            e[pos..pos + 2].copy_from_slice(&u.to_le_bytes());
        }
        out.extend(e);
    }
    out
}

// ---------------------------------------------------------------------------
// Time.

/// A timestamp in FAT's packed date and time words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DosTime {
    date: u16,
    time: u16,
}

impl DosTime {
    /// Unix seconds as UTC, clamped to 1980-01-01 .. 2107-12-31 23:59:58;
    /// FAT stores seconds in steps of two.
    fn new(secs: u64) -> Self {
        let (y, mo, d, h, mi, s) = match utc(secs) {
            (y, ..) if y < 1980 => (1980, 1, 1, 0, 0, 0),
            (y, ..) if y > 2107 => (2107, 12, 31, 23, 59, 58),
            t => t,
        };
        DosTime {
            date: (((y - 1980) as u16) << 9) | ((mo as u16) << 5) | d as u16,
            time: ((h as u16) << 11) | ((mi as u16) << 5) | (s as u16 / 2),
        }
    }
}

/// Unix seconds as UTC (year, month, day, hour, minute, second), by Howard
/// Hinnant's days-to-civil algorithm. Shared with the ISO 9660 writer.
pub(crate) fn utc(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        (rem / 60 % 60) as u32,
        (rem % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        for (secs, want) in [
            (0, (1970, 1, 1, 0, 0, 0)),
            (951_782_400, (2000, 2, 29, 0, 0, 0)),
            (1_700_000_000, (2023, 11, 14, 22, 13, 20)),
            (4_107_542_399, (2100, 2, 28, 23, 59, 59)),
        ] {
            assert_eq!(utc(secs), want, "{secs}");
        }
    }

    #[test]
    fn dos_times() {
        assert_eq!(DosTime::new(0), DosTime { date: 0x21, time: 0 });
        // 2023-11-14 22:13:20
        let t = DosTime::new(1_700_000_000);
        assert_eq!((t.date >> 9, t.date >> 5 & 15, t.date & 31), (43, 11, 14));
        assert_eq!((t.time >> 11, t.time >> 5 & 63, t.time & 31), (22, 13, 10));
        assert_eq!(DosTime::new(u64::from(u32::MAX) * 2).date >> 9, 127);
    }

    #[test]
    fn geometry_by_size() {
        for (size, want) in [
            (64 * 1024, (FatType::Fat12, 512)),
            (MIB, (FatType::Fat12, 512)),
            (4 * MIB, (FatType::Fat16, 512)),
            (32 * MIB, (FatType::Fat16, 512)),
            (35 * MIB, (FatType::Fat16, 1024)),
            (36 * MIB, (FatType::Fat32, 512)),
            (64 * MIB, (FatType::Fat32, 512)),
            (128 * MIB, (FatType::Fat32, 1024)),
            (256 * MIB, (FatType::Fat32, 2048)),
            (512 * MIB, (FatType::Fat32, 4096)),
            (4096 * MIB, (FatType::Fat32, 4096)),
        ] {
            assert_eq!(fat_geometry(size).unwrap(), want, "{size}");
        }
    }

    #[test]
    fn geometry_maps_every_cluster() {
        for size in [64 * 1024, MIB, 3 * MIB, 20 * MIB, 36 * MIB, 100 * MIB, 1000 * MIB] {
            let g = Geometry::for_size(size).unwrap();
            let per_entry = match g.fat_type {
                FatType::Fat12 => 1.5,
                FatType::Fat16 => 2.0,
                FatType::Fat32 => 4.0,
            };
            assert!((g.clusters + 2) as f64 * per_entry <= (g.sectors_per_fat * SECTOR) as f64);
            let used =
                g.reserved_sectors + 2 * g.sectors_per_fat + g.root_dir_sectors + g.clusters * g.sectors_per_cluster;
            assert!(used <= g.total_sectors, "{size}: {g:?}");
        }
    }

    #[test]
    fn short_names_and_aliases() {
        let mut taken = HashSet::new();
        assert_eq!(exact_short_name("BOOTX64.EFI"), Some(*b"BOOTX64 EFI"));
        assert_eq!(exact_short_name("grub.cfg"), Some(*b"GRUB    CFG"));
        assert_eq!(exact_short_name("user-data"), None);
        assert_eq!(exact_short_name("a.b.c"), None);
        assert_eq!(&alias("user-data", &mut taken), b"USER-D~1   ");
        assert_eq!(&alias("user_data", &mut taken), b"USER_D~1   ");
        assert_eq!(&alias("user-data2", &mut taken), b"USER-D~2   ");
        assert_eq!(&alias("meta_data.json", &mut taken), b"META_D~1JSO");
        assert_eq!(&alias(".bashrc", &mut taken), b"BASHRC~1   ");
        assert_eq!(&alias("ünï code", &mut taken), b"_N_COD~1   ");
    }

    #[test]
    fn long_entry_layout() {
        let name: Vec<u16> = "meta_data.json".encode_utf16().collect();
        let e = long_entries(&name, b"META_D~1JSO");
        assert_eq!(e.len(), 64);
        assert_eq!((e[0], e[32]), (0x42, 0x01));
        // Second piece: "n", NUL, then 0xFFFF padding.
        assert_eq!(&e[1..7], &[b'n', 0, 0, 0, 0xff, 0xff]);
        assert_eq!(e[11], ATTR_LFN);
        assert_eq!(e[13], e[45]);
    }

    #[test]
    fn rejects_bad_trees() {
        let cases: &[(&[FatEntry], &str)] = &[
            (&[FatEntry::file("a//b", "")], "empty component"),
            (&[FatEntry::file("/a", "")], "empty component"),
            (&[FatEntry::file("a/../b", "")], "\"..\""),
            (&[FatEntry::file("a:b", "")], "':'"),
            (&[FatEntry::file("a.", "")], "ends in a dot"),
            (&[FatEntry::file("x", ""), FatEntry::file("x", "")], "listed twice"),
            (
                &[FatEntry::file("User-Data", ""), FatEntry::file("user-data", "")],
                "case",
            ),
            (&[FatEntry::file("a", ""), FatEntry::file("a/b", "")], "is a file"),
            (&[FatEntry::file("a/b", ""), FatEntry::file("a", "")], "listed twice"),
        ];
        for (entries, want) in cases {
            let err = Tree::plan(entries).unwrap_err().to_string();
            assert!(err.contains(want), "{entries:?}: {err}");
        }
        // A directory listed after a file implied it is fine.
        Tree::plan(&[FatEntry::file("a/b", ""), FatEntry::dir("a")]).unwrap();
    }

    #[test]
    fn rejects_bad_labels() {
        check_label("cidata").unwrap();
        check_label("config-2").unwrap();
        check_label("").unwrap();
        assert!(check_label("twelve chars").is_err());
        assert!(check_label("a.b").is_err());
        assert!(check_label("é").is_err());
    }

    #[test]
    fn auto_size_is_small_for_seeds_and_grows() {
        let seed = [
            FatEntry::file("user-data", vec![0; 300]),
            FatEntry::file("meta-data", "x"),
        ];
        let l = Layout::auto(&Tree::plan(&seed).unwrap()).unwrap();
        assert_eq!(l.geometry.total_sectors * SECTOR, MIB);
        let big = [FatEntry::file("kernel", vec![0; 10 * MIB as usize])];
        let l = Layout::auto(&Tree::plan(&big).unwrap()).unwrap();
        let size = l.geometry.total_sectors * SECTOR;
        assert!((11 * MIB..=13 * MIB).contains(&size), "{size}");
    }

    #[test]
    fn too_many_root_entries_on_fat16() {
        let files: Vec<_> = (0..300).map(|i| FatEntry::file(format!("file-{i}"), "")).collect();
        let err = Layout::new(&Tree::plan(&files).unwrap(), Geometry::for_size(4 * MIB).unwrap()).unwrap_err();
        assert!(err.to_string().contains("root directory"), "{err}");
    }
}
