//! ISO 9660 images written in Rust, for cloud-init seeds (`cidata`,
//! `config-2`) and other small data discs: a primary volume with Rock Ridge
//! (RRIP 1991A: exact POSIX names, modes and times, which is what Linux and
//! cloud-init read) and a Joliet volume (UCS-2 names, which Windows and
//! cloudbase-init read), both over the same file extents. The output
//! depends only on the inputs: fixed timestamps, sorted directories.
//!
//! Hand-written because no crate fits: the readers (`iso9660`, `cdfs`)
//! cannot write, and the one writer with Rock Ridge (`hadris-iso`) is a
//! single-maintainer 3.0 release candidate spread over seven sibling crates
//! (its 0.2 line is abandoned); the subset needed here is a few hundred
//! lines, checked against isoinfo, isovfy and blkid.
//!
//! Reading is [`crate::isoread`]'s. Non-goals: El Torito boot records,
//! hybrid MBR/GPT, symlinks and device
//! files, files of 4 GiB or more (multi-extent), deep-directory relocation
//! (directories deeper than ISO 9660's eight levels are refused), names
//! needing a Rock Ridge continuation area (longer than 135 bytes).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

pub(crate) const BLOCK: u64 = 2048;
/// Volume descriptors start after the 32 KiB system area.
pub(crate) const FIRST_DESCRIPTOR: u32 = 16;
/// Zero blocks appended, as mkisofs does by default: CD drivers used to
/// read ahead past the last written block and fail.
const PAD_BLOCKS: u32 = 150;
/// Longest Rock Ridge name that fits one directory record with kiln's
/// entries (255 - 33 header - 15 ISO name - 67 RR/PX/TF - 5 NM header).
const MAX_NAME: usize = 135;
/// Joliet's limit on a name, in UCS-2 units.
const MAX_JOLIET_NAME: usize = 64;
/// ISO 9660 allows eight directory levels, root included.
const MAX_DEPTH: usize = 8;

pub(crate) const S_IFDIR: u32 = 0o040000;
pub(crate) const S_IFREG: u32 = 0o100000;

/// How to make the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoOptions {
    /// Volume identifier (blkid's LABEL): up to 32 printable ASCII
    /// characters, kept in the case given (`cidata`, `config-2`).
    pub volume_id: String,
    /// Timestamp of every file, directory and the volume, in Unix seconds
    /// (e.g. `SOURCE_DATE_EPOCH`), written as UTC.
    pub mtime: u64,
    /// Also write a Joliet volume (default true).
    pub joliet: bool,
}

impl IsoOptions {
    pub fn new(volume_id: impl Into<String>, mtime: u64) -> Self {
        IsoOptions {
            volume_id: volume_id.into(),
            mtime,
            joliet: true,
        }
    }
}

/// What an [`IsoEntry`] holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A directory (parents of files are created anyway, mode 0755).
    Dir,
    /// A file with these bytes.
    Bytes(Vec<u8>),
    /// A file copied from the host when the image is written.
    HostFile(PathBuf),
}

/// One file or directory to put in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoEntry {
    /// Path inside the image, `/`-separated, without a leading `/`.
    pub path: String,
    pub content: Content,
    /// Permission bits shown through Rock Ridge (file type bits are added).
    pub mode: u32,
}

impl IsoEntry {
    /// A directory, mode 0755.
    pub fn dir(path: impl Into<String>) -> Self {
        IsoEntry {
            path: path.into(),
            content: Content::Dir,
            mode: 0o755,
        }
    }

    /// A file, mode 0644.
    pub fn file(path: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Self {
        IsoEntry {
            path: path.into(),
            content: Content::Bytes(bytes.into()),
            mode: 0o644,
        }
    }

    /// A file copied from `source`, mode 0644.
    pub fn host_file(path: impl Into<String>, source: impl Into<PathBuf>) -> Self {
        IsoEntry {
            path: path.into(),
            content: Content::HostFile(source.into()),
            mode: 0o644,
        }
    }

    pub fn with_mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }
}

/// Writes an ISO 9660 image holding `files` to `dest` (replaced atomically:
/// written to `dest.part`, renamed when complete).
pub fn write_iso_image(dest: &Path, opts: &IsoOptions, files: &[IsoEntry]) -> Result<()> {
    let what = || format!("writing ISO image {}", dest.display());
    check_volume_id(&opts.volume_id).map_err(|e| e.context_for(what()))?;
    let tree = Tree::plan(files, opts.joliet).map_err(|e| e.context_for(what()))?;
    let layout = Layout::new(&tree, opts.joliet);

    let part = kiln_exec::PartialFile::new(dest);
    let mut out = File::create(part.path()).ctx(what)?;
    out.set_len(u64::from(layout.total_blocks) * BLOCK).ctx(what)?;
    let stamp = Stamp::new(opts.mtime);
    let mut meta = vec![0u8; layout.first_file_block as usize * BLOCK as usize];
    layout.write_metadata(&tree, opts, &stamp, &mut meta);
    out.write_all_at(&meta, 0).ctx(what)?;
    for (file, &block) in tree.files.iter().zip(&layout.file_blocks) {
        let at = u64::from(block) * BLOCK;
        match &file.source {
            Source::Bytes(b) => out.write_all_at(b, at).ctx(what)?,
            Source::Host(src, len) => {
                let host = File::open(src).ctx(|| format!("opening {}", src.display()))?;
                out.seek(SeekFrom::Start(at)).ctx(what)?;
                // One byte past the planned length detects a file that grew.
                let copied = io::copy(&mut host.take(len + 1), &mut out).ctx(what)?;
                if copied != *len {
                    return Err(Error::input(format!(
                        "{}: {} changed size while being copied ({len} bytes, then {copied})",
                        what(),
                        src.display()
                    )));
                }
            }
        }
    }
    drop(out);
    part.commit().ctx(what)?;
    Ok(())
}

fn check_volume_id(id: &str) -> Result<()> {
    if id.len() > 32 || !id.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(Error::input(format!(
            "ISO 9660 volume ids are up to 32 printable ASCII characters; got {id:?}"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Planning: the tree, with each name in its three spellings.

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

#[derive(Debug)]
struct FileNode<'a> {
    source: Source<'a>,
    mode: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Child {
    Dir(usize),
    File(usize),
}

/// A name as Rock Ridge (exact), primary ISO 9660 (8.3 d-characters with
/// `;1`) and Joliet (UCS-2 big-endian) spell it.
#[derive(Debug, Clone)]
struct Names {
    rock: Vec<u8>,
    iso: Vec<u8>,
    joliet: Vec<u8>,
}

#[derive(Debug)]
struct DirNode<'a> {
    parent: usize,
    depth: usize,
    mode: u32,
    /// By Rock Ridge name while planning.
    children: BTreeMap<&'a str, Child>,
    /// Children with their names, in primary and in Joliet record order.
    iso_order: Vec<(Names, Child)>,
    joliet_order: Vec<(Names, Child)>,
}

#[derive(Debug)]
struct Tree<'a> {
    /// Index 0 is the root.
    dirs: Vec<DirNode<'a>>,
    files: Vec<FileNode<'a>>,
}

impl<'a> Tree<'a> {
    fn plan(entries: &'a [IsoEntry], joliet: bool) -> Result<Self> {
        let mut tree = Tree {
            dirs: vec![DirNode::new(0, 1, 0o755)],
            files: Vec::new(),
        };
        for entry in entries {
            tree.insert(entry)?;
        }
        tree.name_children(joliet)?;
        Ok(tree)
    }

    fn insert(&mut self, entry: &'a IsoEntry) -> Result<()> {
        let comps = split_path(&entry.path)?;
        if entry.mode & !0o7777 != 0 {
            return Err(Error::input(format!(
                "{:?}: mode {:o} has bits beyond the permission bits",
                entry.path, entry.mode
            )));
        }
        let (last, parents) = comps.split_last().expect("split_path returns at least one component");
        let mut dir = 0;
        for comp in parents {
            dir = match self.dirs[dir].children.get(comp) {
                Some(Child::Dir(d)) => *d,
                Some(Child::File(_)) => {
                    return Err(Error::input(format!(
                        "{:?} needs {comp:?} to be a directory, but it is a file",
                        entry.path
                    )))
                }
                None => self.add_dir(dir, comp, 0o755, &entry.path)?,
            };
        }
        let existing = self.dirs[dir].children.get(last).copied();
        match (&entry.content, existing) {
            // Listing a directory that a file path already implied sets its mode.
            (Content::Dir, Some(Child::Dir(d))) => self.dirs[d].mode = entry.mode,
            (_, Some(_)) => return Err(Error::input(format!("{:?} is listed twice", entry.path))),
            (Content::Dir, None) => {
                self.add_dir(dir, last, entry.mode, &entry.path)?;
            }
            (Content::Bytes(b), None) => self.add_file(dir, last, Source::Bytes(b), entry.mode),
            (Content::HostFile(p), None) => {
                let meta = std::fs::metadata(p).ctx(|| format!("reading {}", p.display()))?;
                if !meta.is_file() {
                    return Err(Error::input(format!("{} is not a regular file", p.display())));
                }
                self.add_file(dir, last, Source::Host(p, meta.len()), entry.mode);
            }
        }
        if let Some(Child::File(f)) = self.dirs[dir].children.get(last) {
            if self.files[*f].source.len() >= 1 << 32 {
                return Err(Error::unsupported(format!(
                    "{:?} is 4 GiB or larger, which needs multi-extent files",
                    entry.path
                )));
            }
        }
        Ok(())
    }

    fn add_dir(&mut self, parent: usize, name: &'a str, mode: u32, path: &str) -> Result<usize> {
        let depth = self.dirs[parent].depth + 1;
        if depth > MAX_DEPTH {
            return Err(Error::unsupported(format!(
                "{path:?} is deeper than ISO 9660's {MAX_DEPTH} directory levels"
            )));
        }
        let id = self.dirs.len();
        self.dirs.push(DirNode::new(parent, depth, mode));
        self.dirs[parent].children.insert(name, Child::Dir(id));
        Ok(id)
    }

    fn add_file(&mut self, parent: usize, name: &'a str, source: Source<'a>, mode: u32) {
        self.files.push(FileNode { source, mode });
        self.dirs[parent]
            .children
            .insert(name, Child::File(self.files.len() - 1));
    }

    /// Gives every child its ISO and Joliet names (unique within the
    /// directory) and sorts the records as ISO 9660 requires.
    fn name_children(&mut self, joliet: bool) -> Result<()> {
        for dir in &mut self.dirs {
            let mut taken = std::collections::HashSet::new();
            let mut joliet_taken = std::collections::HashSet::new();
            let mut named = Vec::new();
            for (name, &child) in &dir.children {
                let is_dir = matches!(child, Child::Dir(_));
                let iso = iso_name(name, is_dir, &mut taken);
                let joliet = if joliet {
                    let j = joliet_name(name)?;
                    if !joliet_taken.insert(j.clone()) {
                        return Err(Error::input(format!(
                            "{name:?} and another name map to the same Joliet name; set `joliet: false`"
                        )));
                    }
                    j
                } else {
                    Vec::new()
                };
                let names = Names {
                    rock: name.as_bytes().to_vec(),
                    iso,
                    joliet,
                };
                named.push((names, child));
            }
            // d-characters all sort above the space that ISO 9660 pads
            // with, so comparing name, then extension, byte-wise is its order.
            let mut iso_order = named.clone();
            iso_order.sort_by(|a, b| iso_sort_key(&a.0.iso).cmp(&iso_sort_key(&b.0.iso)));
            let mut joliet_order = named;
            joliet_order.sort_by(|a, b| a.0.joliet.cmp(&b.0.joliet));
            dir.iso_order = iso_order;
            dir.joliet_order = joliet_order;
        }
        Ok(())
    }

    fn subdir_count(&self, dir: usize) -> u32 {
        self.dirs[dir]
            .children
            .values()
            .filter(|c| matches!(c, Child::Dir(_)))
            .count() as u32
    }
}

impl DirNode<'_> {
    fn new(parent: usize, depth: usize, mode: u32) -> Self {
        DirNode {
            parent,
            depth,
            mode,
            children: BTreeMap::new(),
            iso_order: Vec::new(),
            joliet_order: Vec::new(),
        }
    }
}

fn split_path(path: &str) -> Result<Vec<&str>> {
    let comps: Vec<&str> = path.split('/').collect();
    for comp in &comps {
        let problem = if comp.is_empty() {
            Some("an empty component (leading, trailing or double `/`)".to_owned())
        } else if *comp == "." || *comp == ".." {
            Some(format!("a {comp:?} component"))
        } else if comp.contains('\0') {
            Some("a NUL byte".to_owned())
        } else if comp.len() > MAX_NAME {
            Some(format!(
                "{comp:?}, longer than the {MAX_NAME} bytes kiln's ISO writer supports"
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(Error::input(format!("ISO path {path:?} has {problem}")));
        }
    }
    Ok(comps)
}

/// An ISO 9660 level 1 identifier: `NAME.EXT;1` for files (8 + 3
/// d-characters), `NAME` for directories, made unique in its directory with
/// a `~N` suffix. Only readers without Rock Ridge or Joliet ever show it.
fn iso_name(name: &str, is_dir: bool, taken: &mut std::collections::HashSet<Vec<u8>>) -> Vec<u8> {
    fn d_chars(s: &str, max: usize) -> String {
        s.chars()
            .map(|c| match c.to_ascii_uppercase() {
                c @ ('A'..='Z' | '0'..='9' | '_') => c,
                _ => '_',
            })
            .take(max)
            .collect()
    }
    let (base, ext) = match name.rsplit_once('.') {
        Some((b, e)) if !is_dir && !b.is_empty() => (d_chars(b, 8), d_chars(e, 3)),
        _ => (d_chars(name, 8), String::new()),
    };
    let render = |base: &str| {
        if is_dir {
            base.as_bytes().to_vec()
        } else {
            format!("{base}.{ext};1").into_bytes()
        }
    };
    // Files and directories share one namespace; compare without `;1`.
    let key = |base: &str| format!("{base}.{ext}").into_bytes();
    let mut candidate = base.clone();
    let mut n = 0u32;
    while !taken.insert(key(&candidate)) {
        n += 1;
        let suffix = format!("~{n}");
        let keep = base.len().min(8 - suffix.len());
        candidate = format!("{}{suffix}", &base[..keep]);
    }
    render(&candidate)
}

/// Sort key of an ISO identifier: (name, extension, version).
fn iso_sort_key(id: &[u8]) -> (&[u8], &[u8]) {
    match id.iter().position(|&b| b == b'.') {
        Some(dot) => (&id[..dot], &id[dot + 1..]),
        None => (id, &[]),
    }
}

/// A Joliet identifier: UCS-2 big-endian, with the characters Joliet
/// forbids replaced by `_`. Without the `;1` version, as genisoimage writes
/// it (readers accept either).
fn joliet_name(name: &str) -> Result<Vec<u8>> {
    let units: Vec<u16> = name
        .chars()
        .map(|c| {
            if (c as u32) < 0x20 || "*/:;?\\".contains(c) {
                '_'
            } else {
                c
            }
        })
        .collect::<String>()
        .encode_utf16()
        .collect();
    if units.len() > MAX_JOLIET_NAME {
        return Err(Error::input(format!(
            "{name:?} is longer than Joliet's {MAX_JOLIET_NAME} characters; set `joliet: false`"
        )));
    }
    Ok(units.iter().flat_map(|u| u.to_be_bytes()).collect())
}

// ---------------------------------------------------------------------------
// Layout: where every structure goes.
//
// 0-15 system area | 16 PVD | (17 Joliet SVD) | terminator | path tables
// (L, M, then Joliet L, M) | Rock Ridge ER block | primary directories |
// Joliet directories | file data | padding.

/// Which directory hierarchy a structure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ns {
    Primary,
    Joliet,
}

#[derive(Debug)]
struct Hierarchy {
    /// Directory ids in path table order (breadth first, by parent number,
    /// then by name).
    order: Vec<usize>,
    /// Path table number (1-based) of each directory id.
    number: Vec<u16>,
    /// First block and byte length of each directory id's extent.
    dir_block: Vec<u32>,
    dir_len: Vec<u32>,
    path_table_len: u32,
    l_table: u32,
    m_table: u32,
}

#[derive(Debug)]
struct Layout {
    primary: Hierarchy,
    joliet: Option<Hierarchy>,
    er_block: u32,
    file_blocks: Vec<u32>,
    first_file_block: u32,
    total_blocks: u32,
}

fn blocks(bytes: u64) -> u32 {
    bytes.div_ceil(BLOCK) as u32
}

impl Layout {
    fn new(tree: &Tree, joliet: bool) -> Self {
        let mut next = FIRST_DESCRIPTOR + 1 + u32::from(joliet) + 1;
        let mut primary = Hierarchy::new(tree, Ns::Primary);
        let mut joliet = joliet.then(|| Hierarchy::new(tree, Ns::Joliet));
        for h in std::iter::once(&mut primary).chain(joliet.as_mut()) {
            let table_blocks = blocks(u64::from(h.path_table_len));
            h.l_table = next;
            h.m_table = next + table_blocks;
            next += 2 * table_blocks;
        }
        let er_block = next;
        next += 1;
        for h in std::iter::once(&mut primary).chain(joliet.as_mut()) {
            for &d in &h.order {
                h.dir_block[d] = next;
                next += blocks(u64::from(h.dir_len[d]));
            }
        }
        let first_file_block = next;
        // Files in primary record order; empty files point at block 0, as
        // they own no extent.
        let mut file_blocks = vec![0; tree.files.len()];
        for &d in &primary.order {
            for (_, child) in &tree.dirs[d].iso_order {
                if let Child::File(f) = *child {
                    let len = tree.files[f].source.len();
                    if len > 0 {
                        file_blocks[f] = next;
                        next += blocks(len);
                    }
                }
            }
        }
        Layout {
            primary,
            joliet,
            er_block,
            file_blocks,
            first_file_block,
            total_blocks: next + PAD_BLOCKS,
        }
    }

    fn hierarchy(&self, ns: Ns) -> &Hierarchy {
        match ns {
            Ns::Primary => &self.primary,
            Ns::Joliet => self.joliet.as_ref().expect("Joliet layout exists when asked for"),
        }
    }

    /// Fills `out` (everything before the first file block) with the volume
    /// descriptors, path tables and directories.
    fn write_metadata(&self, tree: &Tree, opts: &IsoOptions, stamp: &Stamp, out: &mut [u8]) {
        let mut block = FIRST_DESCRIPTOR as usize;
        let mut namespaces = vec![Ns::Primary];
        namespaces.extend(self.joliet.as_ref().map(|_| Ns::Joliet));
        for &ns in &namespaces {
            let d = self.descriptor(opts, stamp, ns);
            out[block * BLOCK as usize..][..BLOCK as usize].copy_from_slice(&d);
            block += 1;
        }
        let term = &mut out[block * BLOCK as usize..][..7];
        term.copy_from_slice(&[255, b'C', b'D', b'0', b'0', b'1', 1]);

        for &ns in &namespaces {
            let h = self.hierarchy(ns);
            let (l, m) = (h.path_table(tree, ns, false), h.path_table(tree, ns, true));
            put(out, h.l_table, &l);
            put(out, h.m_table, &m);
            for &d in &h.order {
                put(out, h.dir_block[d], &self.directory(tree, ns, d, stamp));
            }
        }
        put(out, self.er_block, &rock_er());
    }

    fn descriptor(&self, opts: &IsoOptions, stamp: &Stamp, ns: Ns) -> Vec<u8> {
        let h = self.hierarchy(ns);
        let joliet = ns == Ns::Joliet;
        let mut d = vec![0u8; BLOCK as usize];
        d[0] = if joliet { 2 } else { 1 };
        d[1..6].copy_from_slice(b"CD001");
        d[6] = 1;
        let text = |field: &mut [u8], s: &str| {
            if joliet {
                fill_ucs2(field, s)
            } else {
                fill_ascii(field, s)
            }
        };
        text(&mut d[8..40], "LINUX");
        text(&mut d[40..72], &opts.volume_id);
        both32(&mut d[80..88], self.total_blocks);
        if joliet {
            // UCS-2 Level 3.
            d[88..91].copy_from_slice(b"%/E");
        }
        both16(&mut d[120..124], 1);
        both16(&mut d[124..128], 1);
        both16(&mut d[128..132], BLOCK as u16);
        both32(&mut d[132..140], h.path_table_len);
        d[140..144].copy_from_slice(&h.l_table.to_le_bytes());
        d[148..152].copy_from_slice(&h.m_table.to_be_bytes());
        let root = record(&[0], h.dir_block[0], h.dir_len[0], true, stamp, &[]);
        d[156..190].copy_from_slice(&root);
        for field in [190..318, 318..446, 446..574, 702..739, 739..776, 776..813] {
            text(&mut d[field], "");
        }
        text(&mut d[574..702], "KILN");
        for field in [813..830, 830..847] {
            d[field].copy_from_slice(&stamp.long);
        }
        for field in [847..864, 864..881] {
            d[field][..16].fill(b'0');
        }
        d[881] = 1;
        d
    }

    /// The records of directory `dir` in namespace `ns`, block-aligned.
    fn directory(&self, tree: &Tree, ns: Ns, dir: usize, stamp: &Stamp) -> Vec<u8> {
        let h = self.hierarchy(ns);
        let node = &tree.dirs[dir];
        let rock = ns == Ns::Primary;
        let mut out = Vec::with_capacity(h.dir_len[dir] as usize);
        let mut push = |rec: Vec<u8>| {
            let used = out.len() % BLOCK as usize;
            if used + rec.len() > BLOCK as usize {
                out.resize(out.len() + BLOCK as usize - used, 0);
            }
            out.extend_from_slice(&rec);
        };
        let dir_su = |d: usize, name: Option<&[u8]>, extra: &[u8]| {
            if rock {
                let links = 2 + tree.subdir_count(d);
                rock_su(S_IFDIR | tree.dirs[d].mode, links, name, stamp, extra)
            } else {
                Vec::new()
            }
        };
        let root_extra = if dir == 0 && rock {
            [rock_sp(), rock_ce(self.er_block, rock_er().len() as u32)].concat()
        } else {
            Vec::new()
        };
        push(record(
            &[0],
            h.dir_block[dir],
            h.dir_len[dir],
            true,
            stamp,
            &dir_su(dir, None, &root_extra),
        ));
        let parent = node.parent;
        push(record(
            &[1],
            h.dir_block[parent],
            h.dir_len[parent],
            true,
            stamp,
            &dir_su(parent, None, &[]),
        ));
        let children = if rock { &node.iso_order } else { &node.joliet_order };
        for (names, child) in children {
            let id = if rock { &names.iso } else { &names.joliet };
            let rec = match *child {
                Child::Dir(d) => record(
                    id,
                    h.dir_block[d],
                    h.dir_len[d],
                    true,
                    stamp,
                    &dir_su(d, Some(&names.rock), &[]),
                ),
                Child::File(f) => {
                    let file = &tree.files[f];
                    let su = if rock {
                        rock_su(S_IFREG | file.mode, 1, Some(&names.rock), stamp, &[])
                    } else {
                        Vec::new()
                    };
                    record(id, self.file_blocks[f], file.source.len() as u32, false, stamp, &su)
                }
            };
            push(rec);
        }
        out.resize(h.dir_len[dir] as usize, 0);
        out
    }
}

impl Hierarchy {
    fn new(tree: &Tree, ns: Ns) -> Self {
        let children = |d: usize| match ns {
            Ns::Primary => &tree.dirs[d].iso_order,
            Ns::Joliet => &tree.dirs[d].joliet_order,
        };
        let mut order = vec![0];
        let mut i = 0;
        while i < order.len() {
            for (_, child) in children(order[i]) {
                if let Child::Dir(d) = *child {
                    order.push(d);
                }
            }
            i += 1;
        }
        let mut number = vec![0u16; tree.dirs.len()];
        for (i, &d) in order.iter().enumerate() {
            number[d] = (i + 1) as u16;
        }
        // Record lengths do not depend on where things go, so directory
        // sizes can be known before any block is assigned.
        let stamp = Stamp::new(0);
        let mut dir_len = vec![0u32; tree.dirs.len()];
        let mut path_table_len = 0u32;
        for &d in &order {
            let su_dir = |name: Option<&[u8]>, extra: &[u8]| match ns {
                Ns::Primary => rock_su(S_IFDIR, 2, name, &stamp, extra).len(),
                Ns::Joliet => 0,
            };
            let root_extra = if d == 0 && ns == Ns::Primary {
                [rock_sp(), rock_ce(0, 0)].concat()
            } else {
                Vec::new()
            };
            let mut lens = vec![
                record_len(1, su_dir(None, &root_extra)),
                record_len(1, su_dir(None, &[])),
            ];
            for (names, child) in children(d) {
                let id = match ns {
                    Ns::Primary => names.iso.len(),
                    Ns::Joliet => names.joliet.len(),
                };
                lens.push(record_len(id, su_dir(Some(&names.rock), &[])));
                if let Child::File(_) = child {
                    debug_assert!(lens.last().is_some_and(|&l| l <= 255));
                }
            }
            let mut used = 0usize;
            for len in lens {
                if used % BLOCK as usize + len > BLOCK as usize {
                    used = used.next_multiple_of(BLOCK as usize);
                }
                used += len;
            }
            dir_len[d] = (used.next_multiple_of(BLOCK as usize)) as u32;
            let ident_len = if d == 0 {
                1
            } else {
                let parent = &tree.dirs[tree.dirs[d].parent];
                let names = match ns {
                    Ns::Primary => &parent.iso_order,
                    Ns::Joliet => &parent.joliet_order,
                };
                let (n, _) = names
                    .iter()
                    .find(|(_, c)| *c == Child::Dir(d))
                    .expect("a directory is its parent's child");
                match ns {
                    Ns::Primary => n.iso.len(),
                    Ns::Joliet => n.joliet.len(),
                }
            };
            path_table_len += (8 + ident_len + ident_len % 2) as u32;
        }
        Hierarchy {
            order,
            number,
            dir_block: vec![0; tree.dirs.len()],
            dir_len,
            path_table_len,
            l_table: 0,
            m_table: 0,
        }
    }

    /// The path table, little-endian (L) or big-endian (M).
    fn path_table(&self, tree: &Tree, ns: Ns, big_endian: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.path_table_len as usize);
        for &d in &self.order {
            let ident: Vec<u8> = if d == 0 {
                vec![0]
            } else {
                let parent = &tree.dirs[tree.dirs[d].parent];
                let names = match ns {
                    Ns::Primary => &parent.iso_order,
                    Ns::Joliet => &parent.joliet_order,
                };
                let (n, _) = names
                    .iter()
                    .find(|(_, c)| *c == Child::Dir(d))
                    .expect("a directory is its parent's child");
                match ns {
                    Ns::Primary => n.iso.clone(),
                    Ns::Joliet => n.joliet.clone(),
                }
            };
            let parent_number = self.number[tree.dirs[d].parent];
            out.push(ident.len() as u8);
            out.push(0);
            if big_endian {
                out.extend(self.dir_block[d].to_be_bytes());
                out.extend(parent_number.to_be_bytes());
            } else {
                out.extend(self.dir_block[d].to_le_bytes());
                out.extend(parent_number.to_le_bytes());
            }
            out.extend(&ident);
            if ident.len() % 2 == 1 {
                out.push(0);
            }
        }
        out
    }
}

fn put(out: &mut [u8], block: u32, bytes: &[u8]) {
    out[block as usize * BLOCK as usize..][..bytes.len()].copy_from_slice(bytes);
}

// ---------------------------------------------------------------------------
// Encoding.

/// The volume's timestamp in both ISO 9660 forms.
#[derive(Debug)]
struct Stamp {
    /// Directory record form: years since 1900, month, day, h, m, s, UTC.
    short: [u8; 7],
    /// Volume descriptor form: `YYYYMMDDHHMMSScc` and a UTC offset byte.
    long: [u8; 17],
}

impl Stamp {
    fn new(secs: u64) -> Self {
        let (y, mo, d, h, mi, s) = crate::fat::utc(secs);
        let y = y.clamp(1900, 2155);
        let mut long = [0u8; 17];
        long[..16].copy_from_slice(format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}00").as_bytes());
        Stamp {
            short: [(y - 1900) as u8, mo as u8, d as u8, h as u8, mi as u8, s as u8, 0],
            long,
        }
    }
}

fn record_len(ident_len: usize, su_len: usize) -> usize {
    33 + ident_len + (1 - ident_len % 2) + su_len
}

/// A directory record.
fn record(ident: &[u8], block: u32, len: u32, is_dir: bool, stamp: &Stamp, su: &[u8]) -> Vec<u8> {
    let total = record_len(ident.len(), su.len());
    let mut r = vec![0u8; total];
    r[0] = total as u8;
    both32(&mut r[2..10], block);
    both32(&mut r[10..18], len);
    r[18..25].copy_from_slice(&stamp.short);
    r[25] = if is_dir { 2 } else { 0 };
    both16(&mut r[28..32], 1);
    r[32] = ident.len() as u8;
    r[33..33 + ident.len()].copy_from_slice(ident);
    r[total - su.len()..].copy_from_slice(su);
    r
}

/// Rock Ridge entries of one record: RR (which entries follow), PX, TF and,
/// for named entries, NM; `extra` (SP, CE) goes first, as SP must.
fn rock_su(mode: u32, links: u32, name: Option<&[u8]>, stamp: &Stamp, extra: &[u8]) -> Vec<u8> {
    const PX: u8 = 1;
    const NM: u8 = 8;
    const TF: u8 = 128;
    let mut su = extra.to_vec();
    su.extend([b'R', b'R', 5, 1, PX | TF | if name.is_some() { NM } else { 0 }]);
    let mut px = vec![b'P', b'X', 36, 1];
    for v in [mode, links, 0, 0] {
        let mut b = [0u8; 8];
        both32(&mut b, v);
        px.extend(b);
    }
    su.extend(px);
    // Modify, access and attribute-change times, short form.
    su.extend([b'T', b'F', 26, 1, 0x0e]);
    for _ in 0..3 {
        su.extend(stamp.short);
    }
    if let Some(name) = name {
        su.extend([b'N', b'M', (5 + name.len()) as u8, 1, 0]);
        su.extend(name);
    }
    su
}

/// SUSP indicator, first in the root's `.` record.
fn rock_sp() -> Vec<u8> {
    vec![b'S', b'P', 7, 1, 0xbe, 0xef, 0]
}

/// Continuation area pointer: the ER entry does not fit in a record.
fn rock_ce(block: u32, len: u32) -> Vec<u8> {
    let mut ce = vec![0u8; 28];
    ce[..4].copy_from_slice(&[b'C', b'E', 28, 1]);
    both32(&mut ce[4..12], block);
    both32(&mut ce[12..20], 0);
    both32(&mut ce[20..28], len);
    ce
}

/// Extension reference declaring Rock Ridge (RRIP 1991A, as mkisofs writes).
fn rock_er() -> Vec<u8> {
    const ID: &[u8] = b"RRIP_1991A";
    const DES: &[u8] = b"THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS";
    const SRC: &[u8] = b"PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  SEE PUBLISHER IDENTIFIER IN PRIMARY VOLUME DESCRIPTOR FOR CONTACT INFORMATION.";
    let mut er = vec![
        b'E',
        b'R',
        (8 + ID.len() + DES.len() + SRC.len()) as u8,
        1,
        ID.len() as u8,
        DES.len() as u8,
        SRC.len() as u8,
        1,
    ];
    er.extend(ID);
    er.extend(DES);
    er.extend(SRC);
    er
}

fn both16(dst: &mut [u8], v: u16) {
    dst[..2].copy_from_slice(&v.to_le_bytes());
    dst[2..4].copy_from_slice(&v.to_be_bytes());
}

fn both32(dst: &mut [u8], v: u32) {
    dst[..4].copy_from_slice(&v.to_le_bytes());
    dst[4..8].copy_from_slice(&v.to_be_bytes());
}

fn fill_ascii(field: &mut [u8], s: &str) {
    field.fill(b' ');
    let n = s.len().min(field.len());
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// UCS-2 big-endian, space-padded, truncated to the field; the odd last
/// byte of the 37-byte file identifier fields stays zero.
fn fill_ucs2(field: &mut [u8], s: &str) {
    field.fill(0);
    let units = s.encode_utf16().chain(std::iter::repeat(u16::from(b' ')));
    for (pair, unit) in field.chunks_exact_mut(2).zip(units) {
        pair.copy_from_slice(&unit.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_names() {
        let mut taken = std::collections::HashSet::new();
        let mut n = |name, dir| String::from_utf8(iso_name(name, dir, &mut taken)).unwrap();
        assert_eq!(n("user-data", false), "USER_DAT.;1");
        assert_eq!(n("meta_data.json", false), "META_DAT.JSO;1");
        assert_eq!(n("meta-data", false), "META_DAT.;1");
        assert_eq!(n("meta_data", false), "META_D~1.;1");
        assert_eq!(n("openstack", true), "OPENSTAC");
        assert_eq!(n("OpenStack", true), "OPENST~1");
        assert_eq!(n(".hidden", false), "_HIDDEN.;1");
    }

    #[test]
    fn joliet_names() {
        assert_eq!(joliet_name("a:b").unwrap(), [0, b'a', 0, b'_', 0, b'b']);
        assert!(joliet_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn rock_ridge_fits_a_record() {
        let stamp = Stamp::new(0);
        let su = rock_su(S_IFREG | 0o644, 1, Some(&[b'x'; MAX_NAME]), &stamp, &[]);
        assert!(record_len(14, su.len()) <= 255);
        let root = [rock_sp(), rock_ce(0, 0)].concat();
        assert!(record_len(1, rock_su(S_IFDIR, 2, None, &stamp, &root).len()) <= 255);
    }

    #[test]
    fn stamps() {
        let s = Stamp::new(1_700_000_000);
        assert_eq!(s.short, [123, 11, 14, 22, 13, 20, 0]);
        assert_eq!(&s.long[..16], b"2023111422132000");
    }

    #[test]
    fn rejects_bad_input() {
        let cases: &[(&[IsoEntry], &str)] = &[
            (&[IsoEntry::file("a//b", "")], "empty component"),
            (&[IsoEntry::file("x", ""), IsoEntry::file("x", "")], "listed twice"),
            (&[IsoEntry::file("a", ""), IsoEntry::file("a/b", "")], "is a file"),
            (&[IsoEntry::file("a/b/c/d/e/f/g/h/i", "")], "deeper"),
            (&[IsoEntry::file("x", "").with_mode(0o100644)], "permission bits"),
            (&[IsoEntry::file("x".repeat(136), "")], "longer"),
        ];
        for (entries, want) in cases {
            let err = Tree::plan(entries, true).unwrap_err().to_string();
            assert!(err.contains(want), "{entries:?}: {err}");
        }
        assert!(check_volume_id(&"x".repeat(33)).is_err());
        check_volume_id("config-2").unwrap();
    }
}
