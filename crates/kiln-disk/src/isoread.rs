//! Reading ISO 9660 images without mounting them, for `kiln inspect` and
//! `kiln check --target iso`: the volume descriptors, files by their Rock
//! Ridge names (Joliet, then plain ISO 9660 names, when there is no Rock
//! Ridge), multi-extent files, and the El Torito boot catalog with each
//! boot image's path.
//!
//! Hand-written rather than through `cdfs` (0.2, the one maintained reader
//! with Rock Ridge): it has no El Torito, which is the point of reading a
//! bootable ISO, and its reader cannot say which file a boot image is; the
//! subset needed here is small, shares its constants with the writer in
//! [`crate::iso`], and is checked against xorriso-made images. Input is
//! untrusted: every record length, continuation area and extent is checked
//! against the file before use.
//!
//! Non-goals: following symlinks (they are reported, not resolved),
//! relocated deep directories (Rock Ridge CL/RE), zisofs-compressed files,
//! interleaved files, sessions other than the first.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::fsread::{FileKind, MAX_READ};
use crate::iso::{BLOCK, FIRST_DESCRIPTOR, S_IFREG};

/// Byte offset of the first volume descriptor's `CD001` signature.
pub const SIGNATURE_OFFSET: u64 = FIRST_DESCRIPTOR as u64 * BLOCK + 1;
const SIGNATURE: &[u8] = b"CD001";
/// Volume descriptors read before giving up on a terminator.
const MAX_DESCRIPTORS: u32 = 64;
/// Directory entries visited when looking for the file at an extent.
const MAX_WALK: usize = 200_000;
/// Continuation areas followed for one record.
const MAX_CONTINUATIONS: usize = 16;
/// Directories larger than this are refused as corrupt.
const MAX_DIR_BYTES: u64 = 64 << 20;

/// Whether the file at `path` has an ISO 9660 signature (`CD001` at 32 KiB + 1).
pub fn is_iso(path: &Path) -> Result<bool> {
    let file = File::open(path).ctx(|| format!("opening {}", path.display()))?;
    let mut sig = [0u8; 5];
    match file.read_exact_at(&mut sig, SIGNATURE_OFFSET) {
        Ok(()) => Ok(sig == SIGNATURE),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

/// A file or directory of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IsoNode {
    pub name: String,
    pub kind: FileKind,
    /// Rock Ridge permission bits, when the image has Rock Ridge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Size in bytes (all extents).
    pub size: u64,
    /// Where the bytes are: (first block, length in bytes) per extent.
    #[serde(skip)]
    pub extents: Vec<(u32, u32)>,
    /// A symlink's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl IsoNode {
    /// First block of the data.
    pub fn block(&self) -> u32 {
        self.extents.first().map_or(0, |e| e.0)
    }
}

/// Which names a directory tree is read by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Names {
    RockRidge,
    Joliet,
    Iso9660,
}

/// The firmware an El Torito entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BootPlatform {
    Bios,
    PowerPc,
    Mac,
    Uefi,
    Other(u8),
}

impl BootPlatform {
    fn from_id(id: u8) -> Self {
        match id {
            0x00 => BootPlatform::Bios,
            0x01 => BootPlatform::PowerPc,
            0x02 => BootPlatform::Mac,
            0xef => BootPlatform::Uefi,
            other => BootPlatform::Other(other),
        }
    }

    pub fn name(self) -> String {
        match self {
            BootPlatform::Bios => "BIOS".into(),
            BootPlatform::PowerPc => "PowerPC".into(),
            BootPlatform::Mac => "Mac".into(),
            BootPlatform::Uefi => "UEFI".into(),
            BootPlatform::Other(id) => format!("platform {id:#04x}"),
        }
    }
}

/// How the firmware presents an El Torito image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Emulation {
    NoEmulation,
    Floppy12,
    Floppy144,
    Floppy288,
    HardDisk,
    Other(u8),
}

impl Emulation {
    fn from_byte(b: u8) -> Self {
        match b & 0x0f {
            0 => Emulation::NoEmulation,
            1 => Emulation::Floppy12,
            2 => Emulation::Floppy144,
            3 => Emulation::Floppy288,
            4 => Emulation::HardDisk,
            other => Emulation::Other(other),
        }
    }

    pub fn name(self) -> String {
        match self {
            Emulation::NoEmulation => "no emulation".into(),
            Emulation::Floppy12 => "1.2M floppy".into(),
            Emulation::Floppy144 => "1.44M floppy".into(),
            Emulation::Floppy288 => "2.88M floppy".into(),
            Emulation::HardDisk => "hard disk".into(),
            Emulation::Other(b) => format!("emulation {b}"),
        }
    }
}

/// One entry of the El Torito boot catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootEntry {
    pub platform: BootPlatform,
    pub bootable: bool,
    pub emulation: Emulation,
    /// Real-mode segment the BIOS loads the image at (0 means 0x7c0).
    pub load_segment: u16,
    /// Virtual 512-byte sectors the firmware loads (BIOS), or the image's
    /// size in them (UEFI; 0 or 1 when it does not fit 16 bits).
    pub sector_count: u16,
    /// First 2048-byte block of the image.
    pub lba: u32,
}

/// One directory record, decoded.
#[derive(Debug, Clone)]
struct Record {
    name: String,
    is_dir: bool,
    multi_extent: bool,
    block: u32,
    len: u32,
    mode: Option<u32>,
    target: Option<String>,
    /// Rock Ridge says it is a relocated directory's placeholder: skip it.
    relocated: bool,
}

/// An ISO 9660 image opened for reading.
#[derive(Debug)]
pub struct IsoImage {
    path: PathBuf,
    file: File,
    file_size: u64,
    /// The primary volume identifier (blkid's LABEL).
    pub volume_id: String,
    /// Blocks the primary volume descriptor declares.
    pub volume_blocks: u32,
    pub rock_ridge: bool,
    pub joliet: bool,
    names: Names,
    root: (u32, u32),
    /// SUSP bytes to skip at the start of each system use area.
    su_skip: usize,
    boot_catalog: Option<u32>,
}

impl IsoImage {
    /// Opens `path` and reads its volume descriptors.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).ctx(|| format!("opening {}", path.display()))?;
        let file_size = file
            .metadata()
            .ctx(|| format!("reading metadata of {}", path.display()))?
            .len();
        let mut image = IsoImage {
            path: path.to_owned(),
            file,
            file_size,
            volume_id: String::new(),
            volume_blocks: 0,
            rock_ridge: false,
            joliet: false,
            names: Names::Iso9660,
            root: (0, 0),
            su_skip: 0,
            boot_catalog: None,
        };
        let mut primary = None;
        let mut joliet_root = None;
        for n in 0..MAX_DESCRIPTORS {
            let block = FIRST_DESCRIPTOR + n;
            let d = image
                .read_block(block)
                .map_err(|e| e.context_for(format!("reading volume descriptor {n} of {}", path.display())))?;
            if &d[1..6] != SIGNATURE {
                return Err(Error::invalid(format!(
                    "{}: no ISO 9660 volume descriptor at block {block} (no CD001 signature)",
                    path.display()
                )));
            }
            match d[0] {
                0 if d[7..30].starts_with(b"EL TORITO SPECIFICATION") => {
                    image.boot_catalog = Some(le32(&d[71..]));
                }
                1 if primary.is_none() => {
                    if u16::from_le_bytes([d[128], d[129]]) as u64 != BLOCK {
                        return Err(Error::unsupported(format!(
                            "{}: logical blocks of {} bytes (kiln reads 2048)",
                            path.display(),
                            u16::from_le_bytes([d[128], d[129]])
                        )));
                    }
                    image.volume_id = String::from_utf8_lossy(&d[40..72]).trim_end().to_owned();
                    image.volume_blocks = le32(&d[80..]);
                    primary = Some((le32(&d[156 + 2..]), le32(&d[156 + 10..])));
                }
                2 if matches!(&d[88..91], b"%/@" | b"%/C" | b"%/E") => {
                    joliet_root = Some((le32(&d[156 + 2..]), le32(&d[156 + 10..])));
                }
                255 => break,
                _ => {}
            }
        }
        let Some(root) = primary else {
            return Err(Error::invalid(format!(
                "{}: no primary volume descriptor",
                path.display()
            )));
        };
        image.root = root;
        image.joliet = joliet_root.is_some();
        // Rock Ridge announces itself with SP in the root's "." record.
        let first = image.read_extent(root.0, root.1.min(BLOCK as u32))?;
        if let Some(su) = system_use(&first) {
            if su.len() >= 7 && &su[..2] == b"SP" && su[4..6] == [0xbe, 0xef] {
                image.su_skip = su[6] as usize;
                image.rock_ridge = true;
            }
        }
        if image.rock_ridge {
            image.names = Names::RockRidge;
        } else if let Some(j) = joliet_root {
            image.names = Names::Joliet;
            image.root = j;
        }
        Ok(image)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// Which names paths are looked up by.
    pub fn names(&self) -> Names {
        self.names
    }

    /// Reads `len` bytes at byte `offset` of the image file.
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|end| end > self.file_size) {
            return Err(Error::corrupt(format!(
                "{}: {len} bytes at offset {offset} are past the end of the {}-byte file",
                self.path.display(),
                self.file_size
            )));
        }
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, offset)
            .ctx(|| format!("reading {}", self.path.display()))?;
        Ok(buf)
    }

    fn read_block(&self, block: u32) -> Result<Vec<u8>> {
        self.read_at(u64::from(block) * BLOCK, BLOCK as usize)
    }

    fn read_extent(&self, block: u32, len: u32) -> Result<Vec<u8>> {
        self.read_at(u64::from(block) * BLOCK, len as usize)
    }

    /// The records of the directory whose extent is `dir`, without `.` and `..`.
    fn records(&self, dir: (u32, u32)) -> Result<Vec<Record>> {
        if u64::from(dir.1) > MAX_DIR_BYTES {
            return Err(Error::corrupt(format!(
                "{}: a directory of {} bytes",
                self.path.display(),
                dir.1
            )));
        }
        let data = self.read_extent(dir.0, dir.1)?;
        let mut out = Vec::new();
        let mut pos = 0usize;
        while pos < data.len() {
            let len = data[pos] as usize;
            if len == 0 {
                // Records never cross a block: the rest of this one is padding.
                pos = (pos / BLOCK as usize + 1) * BLOCK as usize;
                continue;
            }
            if len < 34 || pos + len > data.len() {
                return Err(Error::corrupt(format!(
                    "{}: a directory record of {len} bytes at block {} offset {pos}",
                    self.path.display(),
                    dir.0
                )));
            }
            let raw = &data[pos..pos + len];
            pos += len;
            let id_len = raw[32] as usize;
            if 33 + id_len > raw.len() {
                return Err(Error::corrupt(format!(
                    "{}: a directory record's name overruns it",
                    self.path.display()
                )));
            }
            let id = &raw[33..33 + id_len];
            if id == [0] || id == [1] {
                continue;
            }
            let mut record = Record {
                name: match self.names {
                    Names::Joliet => joliet_name(id),
                    _ => iso_name(id),
                },
                is_dir: raw[25] & 2 != 0,
                multi_extent: raw[25] & 0x80 != 0,
                block: le32(&raw[2..]),
                len: le32(&raw[10..]),
                mode: None,
                target: None,
                relocated: false,
            };
            if self.rock_ridge {
                if let Some(su) = system_use(raw) {
                    self.rock_entries(su, &mut record)?;
                }
            }
            if !record.relocated {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Applies the Rock Ridge entries in `su` (and its continuation areas).
    fn rock_entries(&self, su: &[u8], record: &mut Record) -> Result<()> {
        let mut areas: VecDeque<Vec<u8>> = VecDeque::from([su.get(self.su_skip..).unwrap_or(&[]).to_vec()]);
        let mut name: Option<Vec<u8>> = None;
        let mut link: Option<Vec<String>> = None;
        let mut followed = 0;
        while let Some(area) = areas.pop_front() {
            let mut at = 0;
            while at + 4 <= area.len() {
                let (sig, len) = (&area[at..at + 2], area[at + 2] as usize);
                if len < 4 || at + len > area.len() {
                    break;
                }
                let e = &area[at..at + len];
                at += len;
                match sig {
                    // NM flags 2 and 4 mean "." and "..", which are not names.
                    b"NM" if len >= 5 && e[4] & 0x06 == 0 => {
                        name.get_or_insert_with(Vec::new).extend_from_slice(&e[5..]);
                    }
                    b"PX" if len >= 12 => record.mode = Some(le32(&e[4..])),
                    b"SL" if len >= 5 => {
                        let parts = link.get_or_insert_with(Vec::new);
                        let mut c = 5;
                        while c + 2 <= e.len() {
                            let (flags, clen) = (e[c], e[c + 1] as usize);
                            let text = e.get(c + 2..c + 2 + clen).unwrap_or(&[]);
                            parts.push(match flags & 0x0e {
                                0x02 => ".".into(),
                                0x04 => "..".into(),
                                0x08 => String::new(),
                                _ => String::from_utf8_lossy(text).into_owned(),
                            });
                            c += 2 + clen;
                        }
                    }
                    b"RE" => record.relocated = true,
                    b"CE" if len >= 28 && followed < MAX_CONTINUATIONS => {
                        followed += 1;
                        let (block, offset, clen) = (le32(&e[4..]), le32(&e[12..]), le32(&e[20..]));
                        if clen as u64 <= BLOCK {
                            let at = u64::from(block) * BLOCK + u64::from(offset);
                            areas.push_back(self.read_at(at, clen as usize)?);
                        }
                    }
                    b"ST" => break,
                    _ => {}
                }
            }
        }
        if let Some(n) = name {
            record.name = String::from_utf8_lossy(&n).into_owned();
        }
        if let Some(parts) = link {
            record.target = Some(match parts.first() {
                Some(first) if first.is_empty() => format!("/{}", parts[1..].join("/")),
                _ => parts.join("/"),
            });
        }
        Ok(())
    }

    /// The entries of the directory whose extent is `dir`, multi-extent
    /// files joined into one node.
    pub(crate) fn nodes(&self, dir: (u32, u32)) -> Result<Vec<IsoNode>> {
        let mut nodes: Vec<IsoNode> = Vec::new();
        let mut continuing = false;
        for r in self.records(dir)? {
            let extent = (r.block, r.len);
            if continuing {
                if let Some(last) = nodes.last_mut().filter(|n| n.name == r.name) {
                    last.extents.push(extent);
                    last.size += u64::from(r.len);
                    continuing = r.multi_extent;
                    continue;
                }
            }
            continuing = r.multi_extent;
            let kind = match (r.is_dir, r.mode.map(|m| m & 0o170000)) {
                (true, _) => FileKind::Dir,
                (false, Some(0o120000)) => FileKind::Symlink,
                (false, Some(S_IFREG) | None) => FileKind::File,
                (false, Some(_)) => FileKind::Other,
            };
            nodes.push(IsoNode {
                name: r.name,
                kind,
                mode: r.mode.map(|m| m & 0o7777),
                size: u64::from(r.len),
                extents: vec![extent],
                target: r.target,
            });
        }
        Ok(nodes)
    }

    fn root_node(&self) -> IsoNode {
        IsoNode {
            name: String::new(),
            kind: FileKind::Dir,
            mode: None,
            size: u64::from(self.root.1),
            extents: vec![self.root],
            target: None,
        }
    }

    /// The node at `path` (absolute, `/`-separated), not following symlinks;
    /// `None` if missing. Names are matched exactly, or case-insensitively
    /// without Rock Ridge or Joliet (plain ISO 9660 names are upper case).
    pub fn lookup(&self, path: &str) -> Result<Option<IsoNode>> {
        let mut node = self.root_node();
        for comp in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            if node.kind != FileKind::Dir {
                return Ok(None);
            }
            let children = self.nodes(node.extents[0])?;
            let found = children
                .into_iter()
                .find(|c| c.name == comp || (self.names == Names::Iso9660 && c.name.eq_ignore_ascii_case(comp)));
            match found {
                Some(c) => node = c,
                None => return Ok(None),
            }
        }
        Ok(Some(node))
    }

    /// The entries of the directory at `path`, in record order; `None` if
    /// it is missing or not a directory.
    pub fn read_dir(&self, path: &str) -> Result<Option<Vec<IsoNode>>> {
        match self.lookup(path)? {
            Some(n) if n.kind == FileKind::Dir => Ok(Some(self.nodes(n.extents[0])?)),
            _ => Ok(None),
        }
    }

    /// A node's bytes, refusing more than `max`.
    pub fn read_node(&self, node: &IsoNode, max: u64) -> Result<Vec<u8>> {
        if node.size > max {
            return Err(Error::unsupported(format!(
                "{}: {:?} has {} bytes, more than the {max} kiln reads into memory",
                self.path.display(),
                node.name,
                node.size
            )));
        }
        // The size is what the directory record claims: no larger than the
        // image itself before anything is allocated for it (found by fuzzing).
        if node.size > self.file_size {
            return Err(Error::corrupt(format!(
                "{}: {:?} claims {} bytes, more than the {}-byte image holds",
                self.path.display(),
                node.name,
                node.size,
                self.file_size
            )));
        }
        let mut out = Vec::with_capacity(node.size as usize);
        for &(block, len) in &node.extents {
            out.extend(self.read_extent(block, len)?);
        }
        Ok(out)
    }

    /// The contents of the regular file at `path`; `None` if it is missing
    /// or not a regular file.
    pub fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match self.lookup(path)? {
            Some(n) if n.kind == FileKind::File => self.read_node(&n, MAX_READ).map(Some),
            _ => Ok(None),
        }
    }

    /// Byte offset of a node's data in the image file, when it is one
    /// contiguous run (always for a single extent).
    pub fn contiguous_offset(&self, node: &IsoNode) -> Option<u64> {
        let mut next = node.extents.first()?.0;
        for &(block, len) in &node.extents {
            if block != next {
                return None;
            }
            // Checked: extents near block 2^32 cannot be followed by another
            // (found by fuzzing).
            next = block.checked_add((u64::from(len)).div_ceil(BLOCK) as u32)?;
        }
        Some(u64::from(node.block()) * BLOCK)
    }

    /// The path and node of the file whose data starts at block `block`,
    /// searching the whole tree breadth first.
    pub fn file_at_block(&self, block: u32) -> Result<Option<(String, IsoNode)>> {
        let mut queue = VecDeque::from([(String::new(), self.root)]);
        // A directory whose records lead back to itself or an ancestor (a
        // corrupt image) is listed once: the walk would never end otherwise.
        let mut dirs_seen = HashSet::from([self.root.0]);
        let mut visited = 0;
        while let Some((dir_path, dir)) = queue.pop_front() {
            for node in self.nodes(dir)? {
                visited += 1;
                if visited > MAX_WALK {
                    return Ok(None);
                }
                let path = format!("{dir_path}/{}", node.name);
                match node.kind {
                    FileKind::Dir if dirs_seen.insert(node.block()) => queue.push_back((path, node.extents[0])),
                    FileKind::Dir => {}
                    FileKind::File if node.block() == block && node.size > 0 => return Ok(Some((path, node))),
                    _ => {}
                }
            }
        }
        Ok(None)
    }

    /// The El Torito boot catalog's entries: the default entry, then each
    /// section's; empty when the image has no boot record.
    pub fn boot_entries(&self) -> Result<Vec<BootEntry>> {
        let Some(catalog) = self.boot_catalog else {
            return Ok(Vec::new());
        };
        let what = || format!("{}: the El Torito boot catalog at block {catalog}", self.path.display());
        let c = self.read_block(catalog).map_err(|e| e.context_for(what()))?;
        let validation = &c[..32];
        let sum = validation
            .chunks_exact(2)
            .fold(0u16, |s, w| s.wrapping_add(u16::from_le_bytes([w[0], w[1]])));
        if validation[0] != 1 || validation[30..32] != [0x55, 0xaa] || sum != 0 {
            return Err(Error::corrupt(format!("{} has no valid validation entry", what())));
        }
        let entry = |e: &[u8], platform: u8| BootEntry {
            platform: BootPlatform::from_id(platform),
            bootable: e[0] == 0x88,
            emulation: Emulation::from_byte(e[1]),
            load_segment: u16::from_le_bytes([e[2], e[3]]),
            sector_count: u16::from_le_bytes([e[6], e[7]]),
            lba: le32(&e[8..]),
        };
        let mut entries = vec![entry(&c[32..64], validation[1])];
        let mut at = 64;
        // Section headers: 0x90 (more follow), 0x91 (last).
        while at + 32 <= c.len() && matches!(c[at], 0x90 | 0x91) {
            let (last, platform, count) = (c[at] == 0x91, c[at + 1], u16::from_le_bytes([c[at + 2], c[at + 3]]));
            at += 32;
            for _ in 0..count {
                if at + 32 > c.len() {
                    break;
                }
                entries.push(entry(&c[at..at + 32], platform));
                at += 32;
                // Extension entries (0x44) belong to the entry before them.
                while at + 32 <= c.len() && c[at] == 0x44 {
                    at += 32;
                }
            }
            if last {
                break;
            }
        }
        Ok(entries)
    }
}

/// The system use area of a directory record.
fn system_use(record: &[u8]) -> Option<&[u8]> {
    let id_len = *record.get(32)? as usize;
    let start = 33 + id_len + (1 - id_len % 2);
    record.get(start..record.first().map(|&l| l as usize)?)
}

/// A plain ISO 9660 name without its `;1` version and an empty extension's dot.
fn iso_name(id: &[u8]) -> String {
    let s = String::from_utf8_lossy(id);
    let s = s.split(';').next().unwrap_or("");
    s.strip_suffix('.').unwrap_or(s).to_owned()
}

fn joliet_name(id: &[u8]) -> String {
    let units: Vec<u16> = id.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
    let s = String::from_utf16_lossy(&units);
    s.split(';').next().unwrap_or("").to_owned()
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iso::{write_iso_image, IsoEntry, IsoOptions};

    /// kiln's own writer is the fixture here; xorriso-made images (El
    /// Torito, multi-extent, symlinks) are read in kiln-build's ISO check tests.
    #[test]
    fn reads_back_what_the_writer_wrote() {
        let dir = tempfile::tempdir().unwrap();
        for joliet in [true, false] {
            let iso = dir.path().join("seed.iso");
            let big: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
            let mut opts = IsoOptions::new("config-2", 0);
            opts.joliet = joliet;
            write_iso_image(
                &iso,
                &opts,
                &[
                    IsoEntry::file("openstack/latest/meta_data.json", "{}"),
                    IsoEntry::file("openstack/latest/user_data", big.clone()).with_mode(0o600),
                    IsoEntry::dir("empty"),
                ],
            )
            .unwrap();
            assert!(is_iso(&iso).unwrap());
            let img = IsoImage::open(&iso).unwrap();
            assert_eq!(img.volume_id, "config-2");
            assert!(img.rock_ridge);
            assert_eq!(img.joliet, joliet);
            assert_eq!(img.names(), Names::RockRidge);
            assert_eq!(img.read_file("/openstack/latest/user_data").unwrap().unwrap(), big);
            let node = img.lookup("/openstack/latest/user_data").unwrap().unwrap();
            assert_eq!((node.kind, node.mode, node.size), (FileKind::File, Some(0o600), 5000));
            let names: Vec<String> = img
                .read_dir("/openstack/latest")
                .unwrap()
                .unwrap()
                .into_iter()
                .map(|n| n.name)
                .collect();
            assert_eq!(names, ["meta_data.json", "user_data"]);
            assert_eq!(img.read_dir("/empty").unwrap().unwrap(), vec![]);
            assert_eq!(img.lookup("/nope").unwrap(), None);
            assert_eq!(img.read_file("/openstack").unwrap(), None);
            let (path, _) = img.file_at_block(node.block()).unwrap().unwrap();
            assert_eq!(path, "/openstack/latest/user_data");
            assert_eq!(img.contiguous_offset(&node), Some(u64::from(node.block()) * BLOCK));
            assert_eq!(img.boot_entries().unwrap(), vec![]);
        }
        let not_iso = dir.path().join("zero");
        std::fs::write(&not_iso, vec![0u8; 40000]).unwrap();
        assert!(!is_iso(&not_iso).unwrap());
        std::fs::write(&not_iso, b"short").unwrap();
        assert!(!is_iso(&not_iso).unwrap());
        assert!(IsoImage::open(&not_iso).is_err());
    }

    #[test]
    fn plain_names() {
        assert_eq!(iso_name(b"META_DAT.JSO;1"), "META_DAT.JSO");
        assert_eq!(iso_name(b"VMLINUZ.;1"), "VMLINUZ");
        assert_eq!(iso_name(b"BOOT"), "BOOT");
        assert_eq!(joliet_name(&[0, b'a', 0, b'.', 0, b'b', 0, b';', 0, b'1']), "a.b");
    }
}
