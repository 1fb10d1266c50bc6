//! A read-only qcow2 (v2 and v3) reader: maps guest offsets through the L1
//! and L2 tables, returns zeros for unallocated and zero-flagged clusters,
//! and inflates zlib or zstd compressed clusters.
//!
//! The file is untrusted. Every table offset is checked against the file
//! length before it is read, the L1 table is capped at 32 MiB (QEMU's own
//! limit), the L2 cache is bounded in bytes, and a compressed cluster is at
//! most one cluster long. Non-goals: writing, snapshots, backing files,
//! encryption, external data files and extended L2 entries (all refused
//! with [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported)); refcounts
//! are never read, so a dirty image reads like a clean one.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

use serde::Serialize;

use crate::error::{Error, IoContext, Result};

pub(crate) const MAGIC: &[u8; 4] = b"QFI\xfb";

const MAX_L1_BYTES: u64 = 32 << 20;
/// Memory the L2 cache may hold, whatever the cluster size.
const L2_CACHE_BYTES: usize = 16 << 20;
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;

/// The algorithm of a qcow2 image's compressed clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Zlib,
    Zstd,
}

/// What the qcow2 header says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Qcow2Header {
    pub version: u32,
    pub cluster_size: u64,
    pub virtual_size: u64,
    pub compression: Compression,
    pub refcount_bits: u32,
    /// Incompatible feature bit 0: the image was not closed cleanly
    /// (refcounts may be stale; the data is readable).
    pub dirty: bool,
    /// Incompatible feature bit 1: QEMU found an inconsistency.
    pub corrupt: bool,
    pub snapshots: u32,
    #[serde(skip)]
    cluster_bits: u32,
    #[serde(skip)]
    l1_offset: u64,
    #[serde(skip)]
    l1_entries: u32,
}

/// Where one guest cluster's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cluster {
    Zero,
    Data(u64),
    Compressed { offset: u64, len: u64 },
}

/// An open qcow2 file.
#[derive(Debug)]
pub(crate) struct Qcow2 {
    file: File,
    file_len: u64,
    header: Qcow2Header,
    l1: Vec<u64>,
    /// Most recently used last: (L2 offset, entries).
    l2_cache: Vec<(u64, Vec<u64>)>,
    l2_cache_max: usize,
    /// The last compressed cluster inflated: (host offset, bytes).
    inflated: Option<(u64, Vec<u8>)>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Parses a qcow2 header from the first bytes of the file.
pub(crate) fn parse_header(h: &[u8], file_len: u64) -> Result<Qcow2Header> {
    if h.len() < 4 || &h[0..4] != MAGIC {
        return Err(Error::invalid("not a qcow2 file (no QFI\\xfb magic)"));
    }
    if h.len() < 72 {
        return Err(Error::invalid(format!(
            "the qcow2 header is truncated: the file has only {} bytes",
            h.len()
        )));
    }
    let version = be32(h, 4);
    if !(2..=3).contains(&version) {
        return Err(Error::unsupported(format!(
            "qcow2 version {version} (kiln reads versions 2 and 3)"
        )));
    }
    if be64(h, 8) != 0 {
        return Err(Error::unsupported(
            "the qcow2 image has a backing file; flatten it with `qemu-img convert`",
        ));
    }
    let cluster_bits = be32(h, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(Error::invalid(format!(
            "qcow2 cluster_bits {cluster_bits} is outside 9..=21"
        )));
    }
    let cluster_size = 1u64 << cluster_bits;
    let virtual_size = be64(h, 24);
    if be32(h, 32) != 0 {
        return Err(Error::unsupported("the qcow2 image is encrypted"));
    }
    let l1_entries = be32(h, 36);
    let l1_offset = be64(h, 40);
    let snapshots = be32(h, 60);

    let (mut incompat, mut refcount_bits, mut compression) = (0, 16, Compression::Zlib);
    if version == 3 {
        if h.len() < 104 {
            return Err(Error::invalid("qcow2 v3 header is truncated"));
        }
        incompat = be64(h, 72);
        let order = be32(h, 96);
        if order > 6 {
            return Err(Error::invalid(format!("qcow2 refcount_order {order} is above 6")));
        }
        refcount_bits = 1 << order;
        let header_len = be32(h, 100);
        if header_len < 104 || u64::from(header_len) > cluster_size {
            return Err(Error::invalid(format!(
                "qcow2 header_length {header_len} is impossible"
            )));
        }
        if incompat & INCOMPAT_DATA_FILE != 0 {
            return Err(Error::unsupported(
                "the qcow2 image keeps its data in an external data file",
            ));
        }
        if incompat & INCOMPAT_EXTL2 != 0 {
            return Err(Error::unsupported(
                "the qcow2 image uses extended L2 entries (subclusters)",
            ));
        }
        let unknown = incompat & !(INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION);
        if unknown != 0 {
            return Err(Error::unsupported(format!(
                "the qcow2 image has unknown incompatible features {unknown:#x}"
            )));
        }
        if incompat & INCOMPAT_COMPRESSION != 0 {
            if header_len <= 104 || h.len() <= 104 {
                return Err(Error::invalid(
                    "qcow2 compression-type feature set but the header has no compression_type field",
                ));
            }
            compression = match h[104] {
                0 => Compression::Zlib,
                1 => Compression::Zstd,
                t => return Err(Error::unsupported(format!("qcow2 compression type {t}"))),
            };
        }
    }

    let l2_entries = cluster_size / 8;
    let needed = virtual_size.div_ceil(cluster_size).div_ceil(l2_entries);
    if u64::from(l1_entries) < needed {
        return Err(Error::corrupt(format!(
            "qcow2 L1 table has {l1_entries} entries but a {virtual_size}-byte disk needs {needed}"
        )));
    }
    if u64::from(l1_entries) * 8 > MAX_L1_BYTES {
        return Err(Error::unsupported(format!(
            "qcow2 L1 table of {l1_entries} entries is larger than 32 MiB"
        )));
    }
    if l1_entries > 0
        && (!l1_offset.is_multiple_of(cluster_size) || l1_offset.saturating_add(u64::from(l1_entries) * 8) > file_len)
    {
        return Err(Error::corrupt(format!(
            "qcow2 L1 table at offset {l1_offset:#x} ({l1_entries} entries) is misaligned or beyond the end of the {file_len}-byte file"
        )));
    }
    Ok(Qcow2Header {
        version,
        cluster_size,
        virtual_size,
        compression,
        refcount_bits,
        dirty: incompat & INCOMPAT_DIRTY != 0,
        corrupt: incompat & INCOMPAT_CORRUPT != 0,
        snapshots,
        cluster_bits,
        l1_offset,
        l1_entries,
    })
}

impl Qcow2 {
    /// Reads the header and the L1 table of `file`.
    pub(crate) fn open(file: File, file_len: u64) -> Result<Self> {
        let mut head = vec![0u8; 512.min(file_len as usize)];
        file.read_exact_at(&mut head, 0)
            .ctx(|| "reading the qcow2 header".into())?;
        let header = parse_header(&head, file_len)?;
        let mut raw = vec![0u8; header.l1_entries as usize * 8];
        file.read_exact_at(&mut raw, header.l1_offset)
            .ctx(|| format!("reading the qcow2 L1 table at offset {:#x}", header.l1_offset))?;
        let l1 = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let l2_cache_max = (L2_CACHE_BYTES / header.cluster_size as usize).max(1);
        Ok(Qcow2 {
            file,
            file_len,
            header,
            l1,
            l2_cache: Vec::new(),
            l2_cache_max,
            inflated: None,
        })
    }

    pub(crate) fn header(&self) -> &Qcow2Header {
        &self.header
    }

    /// Finds where guest cluster number `index` lives.
    pub(crate) fn cluster(&mut self, index: u64) -> Result<Cluster> {
        let cs = self.header.cluster_size;
        let l2_entries = cs / 8;
        let (l1_index, l2_index) = ((index / l2_entries) as usize, (index % l2_entries) as usize);
        let Some(&l1e) = self.l1.get(l1_index) else {
            return Ok(Cluster::Zero);
        };
        let l2_offset = l1e & OFFSET_MASK;
        if l2_offset == 0 {
            return Ok(Cluster::Zero);
        }
        let l2e = self.l2_table(l2_offset)?[l2_index];
        if l2e & L2_COMPRESSED != 0 {
            let x = 62 - (self.header.cluster_bits - 8);
            let offset = l2e & ((1 << x) - 1);
            let sectors = ((l2e >> x) & ((1 << (self.header.cluster_bits - 8)) - 1)) + 1;
            let len = sectors * 512 - (offset & 511);
            if offset >= self.file_len {
                return Err(Error::corrupt(format!(
                    "compressed cluster {index} points at offset {offset:#x}, beyond the end of the {}-byte file",
                    self.file_len
                )));
            }
            // The last compressed cluster may end inside its final sector.
            return Ok(Cluster::Compressed {
                offset,
                len: len.min(self.file_len - offset),
            });
        }
        if self.header.version >= 3 && l2e & L2_ZERO != 0 {
            return Ok(Cluster::Zero);
        }
        let offset = l2e & OFFSET_MASK;
        if offset == 0 {
            return Ok(Cluster::Zero);
        }
        if !offset.is_multiple_of(cs) || offset >= self.file_len {
            return Err(Error::corrupt(format!(
                "data cluster {index} points at offset {offset:#x}, misaligned or beyond the end of the {}-byte file",
                self.file_len
            )));
        }
        Ok(Cluster::Data(offset))
    }

    fn l2_table(&mut self, offset: u64) -> Result<&[u64]> {
        if let Some(pos) = self.l2_cache.iter().position(|(o, _)| *o == offset) {
            let hit = self.l2_cache.remove(pos);
            self.l2_cache.push(hit);
        } else {
            let cs = self.header.cluster_size;
            if !offset.is_multiple_of(cs) || offset.saturating_add(cs) > self.file_len {
                return Err(Error::corrupt(format!(
                    "qcow2 L2 table at offset {offset:#x} is misaligned or beyond the end of the {}-byte file",
                    self.file_len
                )));
            }
            let mut raw = vec![0u8; cs as usize];
            self.file
                .read_exact_at(&mut raw, offset)
                .ctx(|| format!("reading the qcow2 L2 table at offset {offset:#x}"))?;
            let table = raw
                .chunks_exact(8)
                .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
                .collect();
            if self.l2_cache.len() >= self.l2_cache_max {
                self.l2_cache.remove(0);
            }
            self.l2_cache.push((offset, table));
        }
        Ok(&self.l2_cache.last().expect("just pushed").1)
    }

    /// Reads `buf.len()` bytes of the guest disk at `pos`; the range must lie
    /// within the virtual size.
    pub(crate) fn read_exact_at(&mut self, mut buf: &mut [u8], mut pos: u64) -> Result<()> {
        let cs = self.header.cluster_size;
        while !buf.is_empty() {
            let within = pos % cs;
            let n = (cs - within).min(buf.len() as u64) as usize;
            let (chunk, rest) = buf.split_at_mut(n);
            match self.cluster(pos / cs)? {
                Cluster::Zero => chunk.fill(0),
                Cluster::Data(host) => self.read_data(chunk, host + within)?,
                Cluster::Compressed { offset, len } => {
                    let data = self.inflate(offset, len)?;
                    chunk.copy_from_slice(&data[within as usize..within as usize + n]);
                }
            }
            buf = rest;
            pos += n as u64;
        }
        Ok(())
    }

    /// Reads host bytes; a data cluster cut short by the end of the file
    /// reads as zeros past it, as QEMU does.
    fn read_data(&self, chunk: &mut [u8], host: u64) -> Result<()> {
        let avail = self.file_len.saturating_sub(host).min(chunk.len() as u64) as usize;
        self.file
            .read_exact_at(&mut chunk[..avail], host)
            .ctx(|| format!("reading a qcow2 data cluster at offset {host:#x}"))?;
        chunk[avail..].fill(0);
        Ok(())
    }

    fn inflate(&mut self, offset: u64, len: u64) -> Result<&[u8]> {
        if self.inflated.as_ref().map(|(o, _)| *o) != Some(offset) {
            let cs = self.header.cluster_size as usize;
            let mut input = vec![0u8; len as usize];
            self.file
                .read_exact_at(&mut input, offset)
                .ctx(|| format!("reading a compressed qcow2 cluster at offset {offset:#x}"))?;
            let mut out = vec![0u8; cs];
            let ok = match self.header.compression {
                Compression::Zlib => {
                    let mut z = flate2::Decompress::new(false);
                    matches!(
                        z.decompress(&input, &mut out, flate2::FlushDecompress::Finish),
                        Ok(flate2::Status::StreamEnd | flate2::Status::Ok | flate2::Status::BufError)
                    ) && z.total_out() == cs as u64
                }
                Compression::Zstd => zstd::stream::read::Decoder::with_buffer(&input[..])
                    .map(|d| d.single_frame())
                    .and_then(|mut d| d.read_exact(&mut out))
                    .is_ok(),
            };
            if !ok {
                return Err(Error::corrupt(format!(
                    "compressed qcow2 cluster at offset {offset:#x} ({len} bytes) does not inflate to {cs} bytes of {:?}",
                    self.header.compression
                )));
            }
            self.inflated = Some((offset, out));
        }
        Ok(&self.inflated.as_ref().expect("just filled").1)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, SeekFrom};
    use std::path::{Path, PathBuf};

    use crate::testutil::{pseudo_random, sparse_file, to_qcow2, write_at};
    use crate::{DiskImage, ErrorKind, Format};

    const DISK: u64 = 9 << 20;

    /// A raw disk with random data, a hole, explicit zeros and data that
    /// straddles cluster boundaries; ends in a partial 64 KiB cluster.
    fn raw_fixture(dir: &Path) -> (PathBuf, Vec<u8>) {
        let raw = dir.join("disk.raw");
        let size = DISK + 25 * 512; // qemu-img rounds sizes to sectors
        sparse_file(&raw, size);
        write_at(&raw, 0, &pseudo_random(1, 3 << 20));
        write_at(&raw, (5 << 20) + 777, &pseudo_random(2, 200_000));
        write_at(&raw, (6 << 20) + 4096, &vec![0; 1 << 20]);
        write_at(&raw, size - 5000, &pseudo_random(3, 5000));
        let bytes = std::fs::read(&raw).unwrap();
        (raw, bytes)
    }

    fn assert_same(path: &Path, expected: &[u8]) {
        let mut img = DiskImage::open(path).unwrap();
        assert_eq!(img.virtual_size(), expected.len() as u64);
        let mut got = Vec::new();
        img.read_to_end(&mut got).unwrap();
        assert!(got == expected, "{} differs from its raw source", path.display());
        // Unaligned reads across cluster boundaries.
        for (pos, len) in [
            (65_535u64, 3usize),
            (3 << 20, 70_000),
            ((5 << 20) + 700, 131_072),
            (DISK, 25 * 512),
        ] {
            let mut buf = vec![0u8; len];
            img.seek(SeekFrom::Start(pos)).unwrap();
            img.read_exact(&mut buf).unwrap();
            assert!(
                buf == expected[pos as usize..pos as usize + len],
                "{} at {pos}",
                path.display()
            );
        }
    }

    #[test]
    fn reads_every_qcow2_flavour_like_the_raw_source() {
        let dir = tempfile::tempdir().unwrap();
        let (raw, bytes) = raw_fixture(dir.path());
        assert_same(&raw, &bytes);
        let flavours: &[(&str, &[&str], u32, Option<crate::Compression>)] = &[
            ("plain", &[], 3, None),
            ("v2", &["-o", "compat=0.10"], 2, None),
            ("small-clusters", &["-o", "cluster_size=4096"], 3, None),
            ("large-clusters", &["-o", "cluster_size=2M"], 3, None),
            ("zlib", &["-c"], 3, Some(crate::Compression::Zlib)),
            (
                "zlib-v2-512",
                &["-c", "-o", "compat=0.10,cluster_size=512"],
                2,
                Some(crate::Compression::Zlib),
            ),
            (
                "zstd",
                &["-c", "-o", "compression_type=zstd"],
                3,
                Some(crate::Compression::Zstd),
            ),
        ];
        for (name, opts, version, compression) in flavours {
            let q = dir.path().join(format!("{name}.qcow2"));
            to_qcow2(&raw, &q, opts);
            let img = DiskImage::open(&q).unwrap();
            let Format::Qcow2(h) = img.format() else {
                panic!("{name} not detected as qcow2")
            };
            assert_eq!(h.version, *version, "{name}");
            if let Some(c) = compression {
                assert_eq!(h.compression, *c, "{name}");
            }
            assert_same(&q, &bytes);
        }
    }

    /// Finds the L2 entry of guest cluster 0 and returns its file offset.
    fn first_l2_entry_offset(q: &Path) -> u64 {
        let f = std::fs::read(q).unwrap();
        let l1_off = super::be64(&f, 40) as usize;
        let l2_off = (super::be64(&f, l1_off) & super::OFFSET_MASK) as usize;
        l2_off as u64
    }

    #[test]
    fn zero_flag_reads_as_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let (raw, mut bytes) = raw_fixture(dir.path());
        let q = dir.path().join("z.qcow2");
        to_qcow2(&raw, &q, &[]);
        let entry_at = first_l2_entry_offset(&q);
        let f = std::fs::read(&q).unwrap();
        let entry = super::be64(&f, entry_at as usize);
        assert_ne!(entry & super::OFFSET_MASK, 0, "cluster 0 should be allocated");
        write_at(&q, entry_at, &(entry | super::L2_ZERO).to_be_bytes());
        bytes[..65536].fill(0);
        assert_same(&q, &bytes);
    }

    fn header_err(patch: impl FnOnce(&Path)) -> crate::Error {
        let dir = tempfile::tempdir().unwrap();
        let (raw, _) = raw_fixture(dir.path());
        let q = dir.path().join("c.qcow2");
        to_qcow2(&raw, &q, &[]);
        patch(&q);
        match DiskImage::open(&q) {
            Err(e) => e,
            Ok(mut img) => {
                let mut sink = Vec::new();
                let e = img.read_to_end(&mut sink).unwrap_err();
                *e.into_inner().unwrap().downcast::<crate::Error>().unwrap()
            }
        }
    }

    #[test]
    fn malformed_headers_give_clean_errors() {
        type Patch = Box<dyn FnOnce(&Path)>;
        let cases: Vec<(&str, Patch, ErrorKind, &str)> = vec![
            (
                "version 1",
                Box::new(|q| write_at(q, 4, &1u32.to_be_bytes())),
                ErrorKind::Unsupported,
                "version 1",
            ),
            (
                "backing",
                Box::new(|q| write_at(q, 8, &512u64.to_be_bytes())),
                ErrorKind::Unsupported,
                "backing file",
            ),
            (
                "encrypted",
                Box::new(|q| write_at(q, 32, &1u32.to_be_bytes())),
                ErrorKind::Unsupported,
                "encrypted",
            ),
            (
                "data file",
                Box::new(|q| write_at(q, 72, &4u64.to_be_bytes())),
                ErrorKind::Unsupported,
                "external data",
            ),
            (
                "cluster bits",
                Box::new(|q| write_at(q, 20, &30u32.to_be_bytes())),
                ErrorKind::InvalidFormat,
                "cluster_bits",
            ),
            (
                "l1 too small",
                Box::new(|q| write_at(q, 36, &0u32.to_be_bytes())),
                ErrorKind::Corrupt,
                "L1 table has 0",
            ),
            (
                "l1 beyond eof",
                Box::new(|q| write_at(q, 40, &(1u64 << 40).to_be_bytes())),
                ErrorKind::Corrupt,
                "beyond the end",
            ),
            (
                "l2 beyond eof",
                Box::new(|q| {
                    let f = std::fs::read(q).unwrap();
                    let l1 = super::be64(&f, 40);
                    write_at(q, l1, &(1u64 << 40).to_be_bytes());
                }),
                ErrorKind::Corrupt,
                "L2 table",
            ),
            (
                "data beyond eof",
                Box::new(|q| {
                    let at = first_l2_entry_offset(q);
                    write_at(q, at, &((1u64 << 63) | (1 << 40)).to_be_bytes());
                }),
                ErrorKind::Corrupt,
                "beyond the end",
            ),
            (
                "bad compressed data",
                Box::new(|q| {
                    let at = first_l2_entry_offset(q);
                    let f = std::fs::read(q).unwrap();
                    // Claim the (uncompressed) first data cluster is deflate.
                    let host = super::be64(&f, at as usize) & super::OFFSET_MASK;
                    write_at(q, at, &(super::L2_COMPRESSED | host).to_be_bytes());
                }),
                ErrorKind::Corrupt,
                "does not inflate",
            ),
        ];
        for (name, patch, kind, needle) in cases {
            let e = header_err(patch);
            assert_eq!(e.kind(), kind, "{name}: {e}");
            let chain = crate::testutil::chain(&e);
            assert!(chain.contains(needle), "{name}: {chain}");
        }
    }

    #[test]
    fn qcow2_other_formats_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("x.raw");
        sparse_file(&raw, 1 << 20);
        let vmdk = dir.path().join("x.vmdk");
        crate::testutil::run(
            "qemu-img",
            ["convert", "-O", "vmdk", raw.to_str().unwrap(), vmdk.to_str().unwrap()],
        );
        let e = DiskImage::open(&vmdk).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert!(crate::testutil::chain(&e).contains("VMDK"), "{e:?}");
    }

    /// A small fuzz pass: flipping bytes in the metadata area must never
    /// panic or hang; errors are fine.
    #[test]
    fn mangled_metadata_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("s.raw");
        sparse_file(&raw, 1 << 20);
        write_at(&raw, 0, &pseudo_random(9, 300_000));
        let q = dir.path().join("s.qcow2");
        to_qcow2(&raw, &q, &["-c", "-o", "cluster_size=4096"]);
        let pristine = std::fs::read(&q).unwrap();
        let meta_len = (64 << 10).min(pristine.len());
        let noise = pseudo_random(10, 4 * 400);
        for i in 0..400 {
            let mut bytes = pristine.clone();
            for k in 0..2 {
                let r = u32::from_le_bytes(noise[i * 4..i * 4 + 4].try_into().unwrap()) as usize;
                let at = (r >> (k * 8)) % meta_len.min(bytes.len());
                bytes[at] ^= 1 << (r % 8);
            }
            let m = dir.path().join("m.qcow2");
            std::fs::write(&m, &bytes).unwrap();
            if let Ok(mut img) = DiskImage::open(&m) {
                let mut buf = vec![0u8; 1 << 16];
                let _ = img.read_to_end(&mut Vec::new());
                let _ = crate::read_partition_table(&mut img);
                let _ = img.read_exact_at(&mut buf, 0);
            }
        }
    }
}
