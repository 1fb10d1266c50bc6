//! A deterministic, multi-threaded writer of compressed qcow2 images: turns a
//! raw disk into a qcow2 version 3 file with 64 KiB clusters, 16-bit
//! refcounts and zlib-compressed clusters, in place of
//! `qemu-img convert -c -f raw -O qcow2`.
//!
//! The output is a function of the raw bytes and of `compress` alone: the
//! same input gives the same file whatever the thread count and whether or
//! not a previous image was reused, so images can be compared and cached by
//! hash. Worker threads read and compress batches of clusters, reading only
//! the data of a sparse raw file (SEEK_DATA/SEEK_HOLE: a cluster inside a
//! hole is a zero cluster without being read); the calling thread writes
//! them in guest order and places them as QEMU does:
//! compressed clusters packed back to back at byte granularity (spilling
//! into the next host cluster when that one is free), clusters that do not
//! shrink stored whole and cluster-aligned, all-zero clusters left
//! unallocated. Each L2 table follows the data it maps; the L1 table, the
//! refcount table and the refcount blocks close the file, and the header is
//! written last. Memory is a few batches per thread plus one L2 table, one
//! refcount per host cluster and the [`ClusterIndex`].
//!
//! The [`ClusterIndex`] records, by content hash, where each data cluster's
//! stored bytes are and a BLAKE3 hash of those stored bytes keyed with the
//! content hash, so the next build can copy them from the previous image
//! instead of compressing again. Every reused cluster is checked against the
//! previous image before it is trusted: compressed bytes must hash to the
//! recorded check under the content hash they are filed under (a cheaper
//! proof than inflating them, and one an entry moved to another content
//! cannot pass), a cluster stored whole must equal the new one. A stale,
//! truncated or damaged previous image therefore only costs time; an index
//! of another format or from another compressor is ignored whole.
//!
//! Non-goals: other cluster sizes, zstd, backing files, snapshots, extended
//! L2 entries, sharing one stored copy between identical clusters, and any
//! input but a whole raw image whose size is a multiple of 512 bytes.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File};
use std::io::{BufReader, BufWriter};
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex, OnceLock};

use flate2::{Compress, FlushCompress, Status};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, IoContext, Result};

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
const CLUSTER_USIZE: usize = CLUSTER as usize;
const L2_ENTRIES: u64 = CLUSTER / 8;
/// 16-bit refcounts.
const REFCOUNT_ORDER: u32 = 4;
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER / 2;
/// QEMU's own v3 header length: the 104 mandatory bytes, the
/// compression_type byte (0, zlib) and padding to a multiple of 8.
const HEADER_LEN: u32 = 112;
const SECTOR: u64 = 512;
/// L1/L2 entry flag: refcount is exactly 1, the cluster may be written in place.
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
/// Where a compressed L2 entry keeps its count of additional 512-byte
/// sectors: bit 62 - (cluster_bits - 8).
const CSIZE_SHIFT: u32 = 62 - (CLUSTER_BITS - 8);

/// A raw deflate stream with a 4 KiB window, as QEMU writes it (QEMU
/// inflates with windowBits -12, so a longer window would give clusters it
/// cannot read). QEMU uses level 6 of C zlib; zlib-rs, a port of zlib-ng,
/// needs level 9 to compress as well (on a 1.5 GiB ext4 disk its level 6
/// is 1.1% and level 8 0.7% larger than C zlib's level 6, level 9 0.9%
/// smaller) and is still faster per core than C zlib at 6.
const LEVEL: u32 = 9;
const WINDOW_BITS: u8 = 12;

/// Clusters per unit of work: 1 MiB, large enough to amortise the channel
/// traffic, small enough that a few batches per thread stay in a few MiB.
const BATCH: u64 = 16;
/// QEMU refuses larger L1 tables (a 2 PiB disk with 64 KiB clusters).
const MAX_L1_BYTES: u64 = 32 << 20;
/// Bytes of output gathered before one positional write.
const WRITE_BUFFER: usize = 4 << 20;
/// The [`ClusterIndex`] layout; an index of another one is not used.
/// 1 (unnumbered) checked reused clusters by inflating them, 2 records a
/// check hash of each compressed cluster's stored bytes.
const INDEX_FORMAT: u32 = 2;

static ZERO_CLUSTER: [u8; CLUSTER_USIZE] = [0; CLUSTER_USIZE];

/// How [`write_qcow2`] writes.
#[derive(Debug, Clone)]
pub struct Qcow2WriteOptions {
    /// Compression threads, at least 1. The output does not depend on it.
    pub threads: usize,
    /// Compress data clusters; `false` stores every data cluster whole.
    pub compress: bool,
    /// A previous image of this writer whose stored clusters may be copied.
    /// Ignored when `compress` is false.
    pub reuse: Option<ReuseSource>,
}

impl Default for Qcow2WriteOptions {
    fn default() -> Self {
        Qcow2WriteOptions {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            compress: true,
            reuse: None,
        }
    }
}

/// A previous image written by [`write_qcow2`] and the index it returned.
#[derive(Debug, Clone)]
pub struct ReuseSource {
    pub image: PathBuf,
    pub index: ClusterIndex,
}

/// Where each data cluster of an image written by [`write_qcow2`] is
/// stored, by the BLAKE3 hash of its raw (zero-padded) content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIndex {
    /// [`INDEX_FORMAT`] of the writer that made it; 0 when absent (format 1).
    #[serde(default)]
    format: u32,
    /// The compressor that produced the stored bytes (see [`compressor_id`]);
    /// only an identical one may reuse them and still give identical output.
    compressor: String,
    cluster_size: u64,
    /// Hex BLAKE3 of the raw cluster -> its first stored copy.
    clusters: BTreeMap<String, StoredCluster>,
}

/// A stored cluster: `len` bytes at `offset`; `len` equal to the cluster
/// size means stored whole (it did not compress).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredCluster {
    offset: u64,
    len: u32,
    /// Hex BLAKE3 of the stored bytes of a compressed cluster, keyed with
    /// the raw cluster's hash (see [`stored_check`]); absent for a cluster
    /// stored whole, which is compared byte for byte instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    check: Option<String>,
}

/// The check of `stored`, the compressed form of a raw cluster hashing to
/// `hash`. Keying with the raw hash ties the stored bytes to the content
/// they were filed under.
fn stored_check(hash: &blake3::Hash, stored: &[u8]) -> blake3::Hash {
    blake3::keyed_hash(hash.as_bytes(), stored)
}

impl ClusterIndex {
    fn new(compressor: &str) -> Self {
        ClusterIndex {
            format: INDEX_FORMAT,
            compressor: compressor.to_owned(),
            cluster_size: CLUSTER,
            clusters: BTreeMap::new(),
        }
    }

    /// Number of distinct data clusters recorded.
    pub fn len(&self) -> usize {
        self.clusters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
    }

    /// Writes the index as JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        let what = || format!("writing the cluster index {}", path.display());
        let file = File::create(path).ctx(what)?;
        let mut w = BufWriter::new(file);
        serde_json::to_writer(&mut w, self).map_err(|e| Error::with_source(ErrorKind::Io, what(), e))?;
        std::io::Write::flush(&mut w).ctx(what)
    }

    /// Reads an index written by [`ClusterIndex::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let what = || format!("reading the cluster index {}", path.display());
        let file = File::open(path).ctx(what)?;
        serde_json::from_reader(BufReader::new(file)).map_err(|e| {
            let kind = if e.is_io() {
                ErrorKind::Io
            } else {
                ErrorKind::InvalidFormat
            };
            Error::with_source(kind, what(), e)
        })
    }

    fn record(&mut self, hash: &blake3::Hash, offset: u64, len: usize, check: Option<&blake3::Hash>) {
        self.clusters
            .entry(hash.to_hex().to_string())
            .or_insert_with(|| StoredCluster {
                offset,
                len: len as u32,
                check: check.map(|c| c.to_hex().to_string()),
            });
    }
}

/// What [`write_qcow2`] did. Every guest cluster is exactly one of zero,
/// compressed or stored raw; `reused` counts the data clusters among them
/// that were taken from the reuse source instead of being compressed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Qcow2WriteStats {
    pub clusters: u64,
    pub zero_clusters: u64,
    pub compressed: u64,
    pub stored_raw: u64,
    pub reused: u64,
    /// Size of the qcow2 file.
    pub bytes: u64,
}

/// Writes the raw disk `raw` as a qcow2 image at `out` (created or
/// truncated; removed again on error) and returns what it did and where
/// each data cluster went, for reuse by the next write.
pub fn write_qcow2(raw: &Path, out: &Path, opts: &Qcow2WriteOptions) -> Result<(Qcow2WriteStats, ClusterIndex)> {
    if opts.threads == 0 {
        return Err(Error::input("the qcow2 writer needs at least one thread"));
    }
    let raw_file = File::open(raw).ctx(|| format!("opening {}", raw.display()))?;
    let raw_len = raw_file
        .metadata()
        .ctx(|| format!("reading metadata of {}", raw.display()))?
        .len();
    if !raw_len.is_multiple_of(SECTOR) {
        return Err(Error::input(format!(
            "{} is {raw_len} bytes, not a whole number of 512-byte sectors; qcow2 cannot describe it exactly",
            raw.display()
        )));
    }
    let reuse_image = opts.reuse.as_ref().map(|r| r.image.as_path());
    for other in std::iter::once(raw).chain(reuse_image) {
        if same_file(out, other) {
            return Err(Error::input(format!(
                "the qcow2 output {} is the same file as its input {}",
                out.display(),
                other.display()
            )));
        }
    }
    let file = File::create(out).ctx(|| format!("creating {}", out.display()))?;
    let src = Source {
        raw: &raw_file,
        raw_path: raw,
        raw_len,
        compress: opts.compress,
        reuse: opts.reuse.as_ref().and_then(|r| open_reuse(r, opts.compress)),
    };
    let written = write_image(&src, Output::new(file, out), opts.threads);
    if written.is_err() {
        let _ = fs::remove_file(out);
    }
    written.map_err(|e| {
        e.context_for(format!(
            "writing the qcow2 image {} from {}",
            out.display(),
            raw.display()
        ))
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Names the compressor exactly: its parameters and a hash of what it makes
/// of a fixed probe. A backend or version that compresses differently gets
/// another id, so indexes from it are not used (their bytes would differ
/// from a fresh compression and break determinism).
fn compressor_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let probe = probe_cluster();
        let mut codec = Codec::new();
        let fingerprint = blake3::hash(codec.compress(&probe).unwrap_or(b"incompressible".as_slice())).to_hex();
        format!("raw deflate level {LEVEL} window {WINDOW_BITS} {}", &fingerprint[..16])
    })
}

/// A cluster that exercises matches, literals and both Huffman modes.
fn probe_cluster() -> Vec<u8> {
    const WORDS: [&str; 8] = [
        "kiln ",
        "qcow2 ",
        "cluster ",
        "deflate\n",
        "refcount ",
        "L2 ",
        "boot ",
        "0x",
    ];
    let mut x: u32 = 0x2545_f491;
    let mut out = Vec::with_capacity(CLUSTER_USIZE + 16);
    while out.len() < CLUSTER_USIZE {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        if x.is_multiple_of(5) {
            out.extend_from_slice(&x.to_le_bytes());
        } else {
            out.extend_from_slice(WORDS[(x % 8) as usize].as_bytes());
        }
    }
    out.truncate(CLUSTER_USIZE);
    out
}

/// One worker's deflate state, reused from cluster to cluster.
struct Codec {
    deflate: Compress,
    /// One byte short of a cluster: output that does not fit is not worth
    /// compressing (QEMU's rule).
    compressed: Vec<u8>,
    /// A cluster stored whole in the previous image, read back.
    stored: Vec<u8>,
}

impl Codec {
    fn new() -> Self {
        Codec {
            deflate: Compress::new_with_window_bits(flate2::Compression::new(LEVEL), false, WINDOW_BITS),
            compressed: vec![0; CLUSTER_USIZE - 1],
            stored: vec![0; CLUSTER_USIZE],
        }
    }

    /// Deflates one cluster; `None` when the result would not be smaller
    /// than the cluster (it is then stored whole).
    fn compress(&mut self, cluster: &[u8]) -> Option<&[u8]> {
        self.deflate.reset();
        match self
            .deflate
            .compress(cluster, &mut self.compressed, FlushCompress::Finish)
        {
            Ok(Status::StreamEnd) => Some(&self.compressed[..self.deflate.total_out() as usize]),
            // Ok or BufError: the output buffer filled up. Deflate reports
            // no other error for valid parameters.
            _ => None,
        }
    }
}

/// What the worker threads share.
struct Source<'a> {
    raw: &'a File,
    raw_path: &'a Path,
    raw_len: u64,
    compress: bool,
    reuse: Option<Reuse<'a>>,
}

/// An opened reuse source whose index matches this compressor.
struct Reuse<'a> {
    file: File,
    len: u64,
    index: &'a ClusterIndex,
}

fn open_reuse(src: &ReuseSource, compress: bool) -> Option<Reuse<'_>> {
    if !compress {
        return None;
    }
    if src.index.format != INDEX_FORMAT {
        tracing::warn!(
            "not reusing {}: its index has format {}, this writer reads format {INDEX_FORMAT}",
            src.image.display(),
            src.index.format
        );
        return None;
    }
    if src.index.compressor != compressor_id() || src.index.cluster_size != CLUSTER {
        tracing::warn!(
            "not reusing {}: its index was made by another compressor ({:?}, cluster size {})",
            src.image.display(),
            src.index.compressor,
            src.index.cluster_size
        );
        return None;
    }
    let opened = File::open(&src.image).and_then(|f| Ok((f.metadata()?.len(), f)));
    match opened {
        Ok((len, file)) => Some(Reuse {
            file,
            len,
            index: &src.index,
        }),
        Err(e) => {
            tracing::warn!("not reusing {}: {e}", src.image.display());
            None
        }
    }
}

impl Reuse<'_> {
    /// The stored form of a cluster with this content, if the previous
    /// image really holds it. Compressed bytes are appended to `packed`.
    fn find(&self, hash: &blake3::Hash, codec: &mut Codec, cluster: &[u8], packed: &mut Vec<u8>) -> Option<Encoded> {
        let stored = self.index.clusters.get(hash.to_hex().as_str())?;
        let len = stored.len as usize;
        if len == 0 || len > CLUSTER_USIZE || stored.offset.checked_add(len as u64)? > self.len {
            return None;
        }
        if len == CLUSTER_USIZE {
            // Stored whole: this compressor could not shrink it, so there
            // is no point in trying again.
            let old = &mut codec.stored;
            let same = self.file.read_exact_at(old, stored.offset).is_ok() && old[..] == *cluster;
            return same.then_some(Encoded::Raw {
                hash: *hash,
                reused: true,
            });
        }
        let want = blake3::Hash::from_hex(stored.check.as_deref()?).ok()?;
        let at = packed.len();
        packed.resize(at + len, 0);
        if self.file.read_exact_at(&mut packed[at..], stored.offset).is_ok() {
            let check = stored_check(hash, &packed[at..]);
            if check == want {
                return Some(Encoded::Compressed {
                    hash: *hash,
                    check,
                    bytes: at..at + len,
                    reused: true,
                });
            }
        }
        packed.truncate(at);
        None
    }
}

/// How one guest cluster is stored.
#[derive(Debug)]
enum Encoded {
    Zero,
    Raw {
        hash: blake3::Hash,
        reused: bool,
    },
    Compressed {
        hash: blake3::Hash,
        /// [`stored_check`] of the bytes.
        check: blake3::Hash,
        /// Range of the batch's `packed` bytes.
        bytes: Range<usize>,
        reused: bool,
    },
}

/// A run of guest clusters, read and encoded by one worker.
struct Batch {
    /// The raw clusters; the last one of the disk is zero-padded, as QEMU
    /// pads it before compressing.
    raw: Vec<u8>,
    /// Compressed streams, back to back.
    packed: Vec<u8>,
    clusters: Vec<Encoded>,
}

/// `spare` holds raw buffers of batches already written, to be filled again
/// rather than allocated and zeroed anew.
fn encode_batch(src: &Source, codec: &mut Codec, batch: u64, spare: &Mutex<Vec<Vec<u8>>>) -> Result<Batch> {
    let start = batch * BATCH * CLUSTER;
    let end = (start + BATCH * CLUSTER).min(src.raw_len);
    let count = (end - start).div_ceil(CLUSTER) as usize;
    let data = data_ranges(src.raw, start..end);
    // Holes read as zeros: only the data is read and the gaps around it
    // zeroed, and a batch that is all hole needs no buffer at all.
    let mut raw = Vec::new();
    if !data.is_empty() {
        raw = lock(spare).pop().unwrap_or_default();
        raw.resize(count * CLUSTER_USIZE, 0);
        let mut zeroed_to = 0;
        for r in &data {
            let (from, to) = ((r.start - start) as usize, (r.end - start) as usize);
            raw[zeroed_to..from].fill(0);
            src.raw
                .read_exact_at(&mut raw[from..to], r.start)
                .ctx(|| format!("reading {} at offset {:#x}", src.raw_path.display(), r.start))?;
            zeroed_to = to;
        }
        raw[zeroed_to..].fill(0);
    }
    let mut packed = Vec::new();
    let mut clusters = Vec::with_capacity(count);
    for i in 0..count {
        let at = start + i as u64 * CLUSTER;
        if !data.iter().any(|r| r.start < at + CLUSTER && at < r.end) {
            clusters.push(Encoded::Zero);
            continue;
        }
        let cluster = &raw[i * CLUSTER_USIZE..(i + 1) * CLUSTER_USIZE];
        if cluster == ZERO_CLUSTER {
            clusters.push(Encoded::Zero);
            continue;
        }
        let hash = blake3::hash(cluster);
        if !src.compress {
            clusters.push(Encoded::Raw { hash, reused: false });
            continue;
        }
        if let Some(found) = src
            .reuse
            .as_ref()
            .and_then(|r| r.find(&hash, codec, cluster, &mut packed))
        {
            clusters.push(found);
            continue;
        }
        clusters.push(match codec.compress(cluster) {
            Some(bytes) => {
                let at = packed.len();
                packed.extend_from_slice(bytes);
                Encoded::Compressed {
                    hash,
                    check: stored_check(&hash, bytes),
                    bytes: at..packed.len(),
                    reused: false,
                }
            }
            None => Encoded::Raw { hash, reused: false },
        });
    }
    Ok(Batch { raw, packed, clusters })
}

/// Locks `m`; a worker that panicked while holding it left nothing half
/// done that matters (the scope re-raises its panic).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The parts of `range` of `file` that may hold data, found with
/// SEEK_DATA and SEEK_HOLE; the rest are holes, which read as zeros. Where
/// the file cannot tell, everything from there on counts as data.
fn data_ranges(file: &File, range: Range<u64>) -> Vec<Range<u64>> {
    use rustix::fs::{seek, SeekFrom};
    // Only the offset argument matters: every read is positional, so moving
    // the shared file position is harmless.
    let mut ranges = Vec::new();
    let mut at = range.start;
    while at < range.end {
        let data = match seek(file, SeekFrom::Data(at)) {
            Ok(data) => data.max(at),
            // No data after `at`.
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => at,
        };
        if data >= range.end {
            break;
        }
        let hole = match seek(file, SeekFrom::Hole(data)) {
            Ok(hole) if hole > data => hole.min(range.end),
            _ => range.end,
        };
        ranges.push(data..hole);
        at = hole;
    }
    ranges
}

/// Runs the workers over every batch and hands the results to `sink` in
/// order. At most `2 * threads + 2` batches are in flight.
fn encode_in_order(src: &Source, threads: usize, mut sink: impl FnMut(u64, &Batch) -> Result<()>) -> Result<()> {
    let batches = src.raw_len.div_ceil(BATCH * CLUSTER);
    let threads = threads.min(batches.max(1) as usize);
    type Job = (u64, mpsc::SyncSender<Result<Batch>>);
    let (jobs, job_rx) = mpsc::sync_channel::<Job>(threads);
    let job_rx = Mutex::new(job_rx);
    let spare = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        // Owned by this closure: dropping it (at the end or on error) stops
        // the workers.
        let jobs = jobs;
        for _ in 0..threads {
            let (job_rx, spare) = (&job_rx, &spare);
            s.spawn(move || {
                let mut codec = Codec::new();
                loop {
                    let job = lock(job_rx).recv();
                    let Ok((batch, reply)) = job else { break };
                    // The receiver is gone only when the writer gave up.
                    let _ = reply.send(encode_batch(src, &mut codec, batch, spare));
                }
            });
        }
        let window = 2 * threads + 2;
        let mut pending = VecDeque::with_capacity(window);
        let mut next = 0;
        while next < batches || !pending.is_empty() {
            if next < batches && pending.len() < window {
                let (tx, rx) = mpsc::sync_channel(1);
                // Fails only if every worker panicked; the scope re-raises that.
                jobs.send((next, tx))
                    .map_err(|_| Error::new(ErrorKind::Io, "the qcow2 compression threads stopped"))?;
                pending.push_back((next, rx));
                next += 1;
                continue;
            }
            let (batch, rx) = pending.pop_front().expect("pending is not empty");
            let encoded = rx
                .recv()
                .map_err(|_| Error::new(ErrorKind::Io, "a qcow2 compression thread stopped"))??;
            kiln_exec::check_interrupted().map_err(|e| Error::tool("writing the qcow2 image", e))?;
            sink(batch, &encoded)?;
            if encoded.raw.capacity() > 0 {
                lock(&spare).push(encoded.raw);
            }
        }
        Ok(())
    })
}

fn write_image(src: &Source, out: Output, threads: usize) -> Result<(Qcow2WriteStats, ClusterIndex)> {
    let compressor = if src.compress { compressor_id() } else { "uncompressed" };
    let guest_clusters = src.raw_len.div_ceil(CLUSTER);
    let l1_entries = guest_clusters.div_ceil(L2_ENTRIES);
    if l1_entries * 8 > MAX_L1_BYTES {
        return Err(Error::input(format!(
            "a {}-byte disk needs an L1 table larger than QEMU's 32 MiB limit",
            src.raw_len
        )));
    }
    let mut image = Image {
        out,
        alloc: Allocator::new(),
        l1: vec![0; l1_entries as usize],
        l2: vec![0; L2_ENTRIES as usize],
        l2_index: 0,
        index: ClusterIndex::new(compressor),
        stats: Qcow2WriteStats {
            clusters: guest_clusters,
            ..Default::default()
        },
    };
    encode_in_order(src, threads, |batch, encoded| {
        for (i, cluster) in encoded.clusters.iter().enumerate() {
            image.add(batch * BATCH + i as u64, encoded, i, cluster)?;
        }
        Ok(())
    })?;
    image.finish(src.raw_len)
}

/// Host space of the image, handed out as QEMU's qcow2 driver would.
#[derive(Debug)]
struct Allocator {
    /// The first host cluster not yet used.
    next_cluster: u64,
    /// Where the next compressed cluster may start: inside a partly filled
    /// host cluster, never on a cluster boundary.
    tail: Option<u64>,
    refcounts: Vec<u16>,
}

impl Allocator {
    /// Host cluster 0 is the header.
    fn new() -> Self {
        Allocator {
            next_cluster: 1,
            tail: None,
            refcounts: vec![1],
        }
    }

    /// A whole host cluster, for metadata or a cluster stored raw.
    fn cluster(&mut self) -> u64 {
        let c = self.next_cluster;
        self.next_cluster += 1;
        self.refcounts.push(1);
        c * CLUSTER
    }

    /// Room for `len` bytes (1..CLUSTER) of a compressed cluster: right
    /// after the previous one if it fits in its host cluster, or if the
    /// following host cluster is still free to spill into; otherwise at
    /// the start of a fresh host cluster. Every host cluster touched gets
    /// one more reference.
    fn bytes(&mut self, len: u64) -> u64 {
        debug_assert!((1..CLUSTER).contains(&len));
        let at = match self.tail {
            Some(tail) => {
                let host = tail / CLUSTER;
                let fits = len <= (host + 1) * CLUSTER - tail;
                let spills_into_free = host + 1 == self.next_cluster;
                let room_in_refcount = self.refcounts[host as usize] < u16::MAX;
                if (fits || spills_into_free) && room_in_refcount {
                    tail
                } else {
                    self.next_cluster * CLUSTER
                }
            }
            None => self.next_cluster * CLUSTER,
        };
        let end = at + len;
        for host in at / CLUSTER..=(end - 1) / CLUSTER {
            if host == self.next_cluster {
                self.next_cluster += 1;
                self.refcounts.push(0);
            }
            self.refcounts[host as usize] += 1;
        }
        self.tail = (!end.is_multiple_of(CLUSTER)).then_some(end);
        at
    }
}

/// The L2 entry of a compressed cluster of `len` bytes at host offset `at`.
fn compressed_entry(at: u64, len: u64) -> u64 {
    let additional_sectors = (at + len - 1) / SECTOR - at / SECTOR;
    COMPRESSED | (additional_sectors << CSIZE_SHIFT) | at
}

/// The image being written.
struct Image<'a> {
    out: Output<'a>,
    alloc: Allocator,
    l1: Vec<u64>,
    /// The L2 table being filled, for L1 entry `l2_index`.
    l2: Vec<u64>,
    l2_index: u64,
    index: ClusterIndex,
    stats: Qcow2WriteStats,
}

impl Image<'_> {
    /// Stores guest cluster `guest`, the `i`th of `batch`.
    fn add(&mut self, guest: u64, batch: &Batch, i: usize, cluster: &Encoded) -> Result<()> {
        if guest / L2_ENTRIES != self.l2_index {
            self.flush_l2()?;
            self.l2_index = guest / L2_ENTRIES;
        }
        let entry = match cluster {
            Encoded::Zero => {
                self.stats.zero_clusters += 1;
                0
            }
            Encoded::Raw { hash, reused } => {
                let at = self.alloc.cluster();
                self.out
                    .write_at(&batch.raw[i * CLUSTER_USIZE..(i + 1) * CLUSTER_USIZE], at)?;
                self.index.record(hash, at, CLUSTER_USIZE, None);
                self.stats.stored_raw += 1;
                self.stats.reused += u64::from(*reused);
                at | COPIED
            }
            Encoded::Compressed {
                hash,
                check,
                bytes,
                reused,
            } => {
                let at = self.alloc.bytes(bytes.len() as u64);
                self.out.write_at(&batch.packed[bytes.clone()], at)?;
                self.index.record(hash, at, bytes.len(), Some(check));
                self.stats.compressed += 1;
                self.stats.reused += u64::from(*reused);
                compressed_entry(at, bytes.len() as u64)
            }
        };
        self.l2[(guest % L2_ENTRIES) as usize] = entry;
        Ok(())
    }

    /// Writes the current L2 table, unless it maps nothing.
    fn flush_l2(&mut self) -> Result<()> {
        if self.l2.iter().all(|&e| e == 0) {
            return Ok(());
        }
        let at = self.alloc.cluster();
        self.out.write_at(&be_u64s(&self.l2), at)?;
        self.l1[self.l2_index as usize] = at | COPIED;
        self.l2.fill(0);
        Ok(())
    }

    /// Writes the L1 table, the refcounts and the header.
    fn finish(mut self, virtual_size: u64) -> Result<(Qcow2WriteStats, ClusterIndex)> {
        self.flush_l2()?;
        let l1_entries = self.l1.len() as u32;
        let l1_clusters = (self.l1.len() as u64 * 8).div_ceil(CLUSTER);
        // An empty disk has no L1 table at all: an allocated but unmapped
        // cluster would be a leak to `qemu-img check`.
        let l1_offset = if l1_clusters == 0 {
            0
        } else {
            self.alloc.next_cluster * CLUSTER
        };
        for _ in 0..l1_clusters {
            self.alloc.cluster();
        }
        if l1_clusters > 0 {
            self.out.write_at(&be_u64s(&self.l1), l1_offset)?;
        }

        let (table_clusters, blocks) = refcount_layout(self.alloc.next_cluster);
        let table_offset = self.alloc.next_cluster * CLUSTER;
        for _ in 0..table_clusters {
            self.alloc.cluster();
        }
        let block_offsets: Vec<u64> = (0..blocks).map(|_| self.alloc.cluster()).collect();
        debug_assert_eq!(self.alloc.refcounts.len() as u64, self.alloc.next_cluster);
        self.out.write_at(&be_u64s(&block_offsets), table_offset)?;
        for (chunk, &at) in self
            .alloc
            .refcounts
            .chunks(REFCOUNTS_PER_BLOCK as usize)
            .zip(&block_offsets)
        {
            let bytes: Vec<u8> = chunk.iter().flat_map(|r| r.to_be_bytes()).collect();
            self.out.write_at(&bytes, at)?;
        }

        let file_len = self.alloc.next_cluster * CLUSTER;
        let head = header(virtual_size, l1_entries, l1_offset, table_offset, table_clusters as u32);
        self.out.write_at(&head, 0)?;
        self.out.set_len(file_len)?;
        self.stats.bytes = file_len;
        Ok((self.stats, self.index))
    }
}

/// Refcount table clusters and refcount blocks needed to count `used`
/// clusters plus themselves.
fn refcount_layout(used: u64) -> (u64, u64) {
    let (mut table, mut blocks) = (0, 0);
    loop {
        let need_blocks = (used + table + blocks).div_ceil(REFCOUNTS_PER_BLOCK);
        let need_table = (need_blocks * 8).div_ceil(CLUSTER);
        if (need_table, need_blocks) == (table, blocks) {
            return (table, blocks);
        }
        (table, blocks) = (need_table, need_blocks);
    }
}

fn be_u64s(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|e| e.to_be_bytes()).collect()
}

/// The version 3 header followed by the end of the (empty) list of header
/// extensions. Dirty, corrupt and every other feature bit are clear.
fn header(virtual_size: u64, l1_entries: u32, l1_offset: u64, table_offset: u64, table_clusters: u32) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_LEN as usize + 8];
    let mut put = |at: usize, bytes: &[u8]| h[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, crate::qcow2::MAGIC);
    put(4, &3u32.to_be_bytes());
    // 8..20: no backing file.
    put(20, &CLUSTER_BITS.to_be_bytes());
    put(24, &virtual_size.to_be_bytes());
    // 32: no encryption.
    put(36, &l1_entries.to_be_bytes());
    put(40, &l1_offset.to_be_bytes());
    put(48, &table_offset.to_be_bytes());
    put(56, &table_clusters.to_be_bytes());
    // 60..72: no snapshots; 72..96: no incompatible, compatible or
    // autoclear features.
    put(96, &REFCOUNT_ORDER.to_be_bytes());
    put(100, &HEADER_LEN.to_be_bytes());
    // 104: compression type 0, zlib.
    h
}

/// Positional writes to the output file, gathered into large writes.
struct Output<'a> {
    file: File,
    path: &'a Path,
    /// Bytes from `start` on, not yet written.
    buf: Vec<u8>,
    start: u64,
}

impl<'a> Output<'a> {
    fn new(file: File, path: &'a Path) -> Self {
        Output {
            file,
            path,
            buf: Vec::with_capacity(WRITE_BUFFER + CLUSTER_USIZE),
            // Everything but the header comes after the first cluster.
            start: CLUSTER,
        }
    }

    fn write_at(&mut self, mut bytes: &[u8], mut at: u64) -> Result<()> {
        if at < self.start {
            // Back into bytes already written out: the header, or the tail
            // of a compressed cluster's host cluster.
            let direct = ((self.start - at) as usize).min(bytes.len());
            self.file
                .write_all_at(&bytes[..direct], at)
                .ctx(|| format!("writing {} at offset {at:#x}", self.path.display()))?;
            bytes = &bytes[direct..];
            at += direct as u64;
            if bytes.is_empty() {
                return Ok(());
            }
        }
        let rel = (at - self.start) as usize;
        if self.buf.len() < rel + bytes.len() {
            self.buf.resize(rel + bytes.len(), 0);
        }
        self.buf[rel..rel + bytes.len()].copy_from_slice(bytes);
        if self.buf.len() >= WRITE_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.file
            .write_all_at(&self.buf, self.start)
            .ctx(|| format!("writing {} at offset {:#x}", self.path.display(), self.start))?;
        self.start += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> Result<()> {
        self.flush()?;
        self.file
            .set_len(len)
            .ctx(|| format!("setting the length of {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::testutil::{pseudo_random, run, sparse_file, write_at};
    use crate::{DiskImage, Format};

    /// A 5 MiB disk ending in a partial (three-sector) cluster.
    const FIXTURE_LEN: u64 = (5 << 20) + 3 * 512;

    /// Compressible pseudo-text.
    fn text(seed: u64, len: usize) -> Vec<u8> {
        const WORDS: [&str; 16] = [
            "the ",
            "kernel ",
            "boots ",
            "from ",
            "an ",
            "EFI ",
            "partition ",
            "and ",
            "mounts ",
            "root ",
            "on ",
            "ext4 ",
            "with ",
            "systemd\n",
            "grub ",
            "initrd ",
        ];
        pseudo_random(seed, len)
            .iter()
            .flat_map(|b| WORDS[usize::from(b % 16)].bytes())
            .take(len)
            .collect()
    }

    /// Holes, explicit zeros, incompressible and compressible data (some
    /// across cluster boundaries), two identical clusters and a partial
    /// last cluster.
    fn raw_fixture(dir: &Path) -> PathBuf {
        let raw = dir.join("disk.raw");
        sparse_file(&raw, FIXTURE_LEN);
        write_at(&raw, 0, &text(1, 100_000));
        write_at(&raw, 1 << 20, &pseudo_random(2, 8 * CLUSTER_USIZE));
        write_at(&raw, (1 << 20) + 8 * CLUSTER + 5, &text(5, 30_000));
        write_at(&raw, (1 << 20) + 9 * CLUSTER, &pseudo_random(6, CLUSTER_USIZE));
        write_at(&raw, (3 << 20) + 777, &text(3, 300_000));
        write_at(&raw, 4 << 20, &[0x5a; 2 * CLUSTER_USIZE]);
        write_at(&raw, (4 << 20) + 3 * CLUSTER, &[0; CLUSTER_USIZE]);
        write_at(&raw, FIXTURE_LEN - 1000, &text(4, 1000));
        raw
    }

    fn data_clusters(raw: &Path) -> u64 {
        let bytes = fs::read(raw).unwrap();
        bytes
            .chunks(CLUSTER_USIZE)
            .filter(|c| c.iter().any(|&b| b != 0))
            .count() as u64
    }

    fn opts(threads: usize) -> Qcow2WriteOptions {
        Qcow2WriteOptions {
            threads,
            compress: true,
            reuse: None,
        }
    }

    fn convert(raw: &Path, out: &Path, opts: &Qcow2WriteOptions) -> (Qcow2WriteStats, ClusterIndex, Vec<u8>) {
        let (stats, index) = write_qcow2(raw, out, opts).unwrap_or_else(|e| panic!("{}", crate::testutil::chain(&e)));
        let bytes = fs::read(out).unwrap();
        assert_eq!(stats.bytes, bytes.len() as u64);
        (stats, index, bytes)
    }

    /// `qemu-img check` finds nothing (it exits non-zero on leaks or
    /// corruption) and the file ends where the image does.
    fn assert_clean(q: &Path, stats: &Qcow2WriteStats) {
        let out = run(
            "qemu-img",
            ["check", "--output=json", "-f", "qcow2", q.to_str().unwrap()],
        );
        let check: serde_json::Value = serde_json::from_str(&out).unwrap();
        // qemu-img leaves out the counts that are zero.
        let count = |key: &str| check.get(key).map_or(0, |v| v.as_u64().unwrap());
        for key in ["corruptions", "leaks", "check-errors"] {
            assert_eq!(count(key), 0, "{key}: {out}");
        }
        assert_eq!(count("image-end-offset"), stats.bytes, "{out}");
        assert_eq!(
            count("allocated-clusters"),
            stats.compressed + stats.stored_raw,
            "{out}"
        );
        assert_eq!(count("compressed-clusters"), stats.compressed, "{out}");
    }

    fn assert_same_disk(raw: &Path, q: &Path) {
        let said = run(
            "qemu-img",
            [
                "compare",
                "-f",
                "raw",
                "-F",
                "qcow2",
                raw.to_str().unwrap(),
                q.to_str().unwrap(),
            ],
        );
        assert!(said.contains("Images are identical"), "{said}");
    }

    #[test]
    fn qcow2_write_is_valid_and_independent_of_threads() {
        let dir = tempfile::tempdir().unwrap();
        let raw = raw_fixture(dir.path());
        let (one, three) = (dir.path().join("t1.qcow2"), dir.path().join("t3.qcow2"));
        let (stats, index, bytes1) = convert(&raw, &one, &opts(1));
        let (stats3, index3, bytes3) = convert(&raw, &three, &opts(3));
        assert!(bytes1 == bytes3, "the output depends on the thread count");
        assert_eq!((stats, &index), (stats3, &index3));

        assert_eq!(stats.clusters, FIXTURE_LEN.div_ceil(CLUSTER));
        assert_eq!(stats.compressed + stats.stored_raw, data_clusters(&raw));
        assert_eq!(stats.zero_clusters + data_clusters(&raw), stats.clusters);
        assert_eq!(stats.stored_raw, 9, "the random clusters are stored whole");
        assert_eq!(stats.reused, 0);
        assert_eq!(
            index.len() as u64,
            data_clusters(&raw) - 1,
            "two clusters are identical"
        );
        assert!(stats.bytes < FIXTURE_LEN / 2, "{stats:?}");

        assert_clean(&one, &stats);
        assert_same_disk(&raw, &one);

        let mut img = DiskImage::open(&one).unwrap();
        let Format::Qcow2(h) = img.format().clone() else {
            panic!("not read as qcow2")
        };
        assert_eq!(
            (
                h.version,
                h.cluster_size,
                h.refcount_bits,
                h.compression,
                h.virtual_size
            ),
            (3, CLUSTER, 16, crate::Compression::Zlib, FIXTURE_LEN)
        );
        let mut got = Vec::new();
        img.read_to_end(&mut got).unwrap();
        assert!(
            got == fs::read(&raw).unwrap(),
            "the reader disagrees with the raw source"
        );

        let info = run("qemu-img", ["info", "--output=json", one.to_str().unwrap()]);
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["format"], "qcow2");
        assert_eq!(info["cluster-size"], CLUSTER);
        assert_eq!(info["virtual-size"], FIXTURE_LEN);
        assert_eq!(info["format-specific"]["data"]["compression-type"], "zlib");
        assert_eq!(info["format-specific"]["data"]["compat"], "1.1");
    }

    #[test]
    fn qcow2_write_reuse_gives_identical_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let raw = raw_fixture(dir.path());
        let a = dir.path().join("a.qcow2");
        let (_, index_a, _) = convert(&raw, &a, &opts(2));
        let saved = dir.path().join("a.index.json");
        index_a.save(&saved).unwrap();
        assert_eq!(ClusterIndex::load(&saved).unwrap(), index_a);

        // Give one data cluster content found nowhere else.
        write_at(&raw, CLUSTER, &text(99, CLUSTER_USIZE));
        let fresh = dir.path().join("fresh.qcow2");
        let (stats_fresh, index_fresh, bytes_fresh) = convert(&raw, &fresh, &opts(2));

        let b = dir.path().join("b.qcow2");
        let reuse = Qcow2WriteOptions {
            reuse: Some(ReuseSource {
                image: a.clone(),
                index: ClusterIndex::load(&saved).unwrap(),
            }),
            ..opts(3)
        };
        let (stats_b, index_b, bytes_b) = convert(&raw, &b, &reuse);
        assert!(bytes_b == bytes_fresh, "reuse changed the output");
        assert_eq!(index_b, index_fresh);
        assert_eq!(stats_b.reused, data_clusters(&raw) - 1, "{stats_b:?}");
        assert_eq!(Qcow2WriteStats { reused: 0, ..stats_b }, stats_fresh);
        assert_clean(&b, &stats_b);
        assert_same_disk(&raw, &b);
    }

    #[test]
    fn qcow2_write_uncompressed_is_clean() {
        let dir = tempfile::tempdir().unwrap();
        let raw = raw_fixture(dir.path());
        let compressed = dir.path().join("c.qcow2");
        let (_, index_c, _) = convert(&raw, &compressed, &opts(2));
        let q = dir.path().join("u.qcow2");
        let plain = Qcow2WriteOptions {
            threads: 2,
            compress: false,
            // Ignored: uncompressed images copy nothing.
            reuse: Some(ReuseSource {
                image: compressed,
                index: index_c,
            }),
        };
        let (stats, index, bytes) = convert(&raw, &q, &plain);
        assert_eq!((stats.compressed, stats.reused), (0, 0));
        assert_eq!(stats.stored_raw, data_clusters(&raw));
        assert_eq!(index.compressor, "uncompressed");
        assert_clean(&q, &stats);
        assert_same_disk(&raw, &q);
        let (_, _, again) = convert(&raw, &q, &Qcow2WriteOptions { threads: 1, ..plain });
        assert!(bytes == again);
    }

    #[test]
    fn qcow2_write_survives_bad_reuse_sources() {
        let dir = tempfile::tempdir().unwrap();
        let raw = raw_fixture(dir.path());
        let a = dir.path().join("a.qcow2");
        let (_, index_a, bytes_a) = convert(&raw, &a, &opts(2));
        let data = data_clusters(&raw);
        // Compressible text found nowhere else on the disk.
        let first_cluster = blake3::hash(&fs::read(&raw).unwrap()[..CLUSTER_USIZE]);

        type Damage = Box<dyn Fn(&Path, &mut ClusterIndex)>;
        type ReusedOk = Box<dyn Fn(u64) -> bool>;
        let cases: Vec<(&str, Damage, ReusedOk)> = vec![
            (
                "truncated image",
                Box::new(|img: &Path, _: &mut ClusterIndex| {
                    File::options().write(true).open(img).unwrap().set_len(300_000).unwrap()
                }),
                Box::new(move |reused: u64| 0 < reused && reused < data),
            ),
            (
                "overwritten image",
                Box::new(|img: &Path, _: &mut ClusterIndex| {
                    write_at(img, CLUSTER, &pseudo_random(7, 4 * CLUSTER_USIZE))
                }),
                Box::new(move |reused: u64| reused < data),
            ),
            (
                "offsets shuffled",
                Box::new(|_: &Path, index: &mut ClusterIndex| {
                    let mut stored: Vec<StoredCluster> = index.clusters.values().cloned().collect();
                    stored.rotate_left(1);
                    for (slot, s) in index.clusters.values_mut().zip(stored) {
                        *slot = s;
                    }
                }),
                Box::new(|reused: u64| reused == 0),
            ),
            (
                "one stored byte changed",
                Box::new(move |img: &Path, index: &mut ClusterIndex| {
                    let stored = &index.clusters[first_cluster.to_hex().as_str()];
                    assert!(stored.check.is_some(), "the first cluster is compressed");
                    let at = stored.offset + u64::from(stored.len) / 2;
                    let mut byte = [0];
                    File::open(img).unwrap().read_exact_at(&mut byte, at).unwrap();
                    write_at(img, at, &[byte[0] ^ 0x10]);
                }),
                Box::new(move |reused: u64| reused == data - 1),
            ),
            (
                "older index format",
                Box::new(|_: &Path, index: &mut ClusterIndex| index.format = 1),
                Box::new(|reused: u64| reused == 0),
            ),
            (
                "other compressor",
                Box::new(|_: &Path, index: &mut ClusterIndex| index.compressor = "zstd level 3".into()),
                Box::new(|reused: u64| reused == 0),
            ),
            (
                "missing image",
                Box::new(|img: &Path, _: &mut ClusterIndex| fs::remove_file(img).unwrap()),
                Box::new(|reused: u64| reused == 0),
            ),
        ];
        for (name, damage, reused_ok) in cases {
            let old = dir.path().join("old.qcow2");
            fs::write(&old, &bytes_a).unwrap();
            let mut index = index_a.clone();
            damage(&old, &mut index);
            let b = dir.path().join("b.qcow2");
            let reuse = Qcow2WriteOptions {
                reuse: Some(ReuseSource { image: old, index }),
                ..opts(2)
            };
            let (stats, _, bytes_b) = convert(&raw, &b, &reuse);
            assert!(bytes_b == bytes_a, "{name}: output differs from a fresh write");
            assert!(reused_ok(stats.reused), "{name}: {stats:?}");
        }

        let saved = dir.path().join("index.json");
        index_a.save(&saved).unwrap();
        // An index written before formats were numbered (and before the
        // checks) still loads, as format 0, and is not used.
        let mut old: serde_json::Value = serde_json::from_slice(&fs::read(&saved).unwrap()).unwrap();
        old.as_object_mut().unwrap().remove("format");
        for stored in old["clusters"].as_object_mut().unwrap().values_mut() {
            stored.as_object_mut().unwrap().remove("check");
        }
        fs::write(&saved, serde_json::to_vec(&old).unwrap()).unwrap();
        let old = ClusterIndex::load(&saved).unwrap();
        assert_eq!(old.format, 0);
        let reuse = Qcow2WriteOptions {
            reuse: Some(ReuseSource { image: a, index: old }),
            ..opts(2)
        };
        let b = dir.path().join("b.qcow2");
        let (stats, _, bytes_b) = convert(&raw, &b, &reuse);
        assert!(bytes_b == bytes_a, "an old index changed the output");
        assert_eq!(stats.reused, 0);

        index_a.save(&saved).unwrap();
        let json = fs::read(&saved).unwrap();
        fs::write(&saved, &json[..json.len() / 2]).unwrap();
        let e = ClusterIndex::load(&saved).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidFormat, "{e}");
        assert!(e.to_string().contains("index.json"), "{e}");
    }

    #[test]
    fn qcow2_write_reads_holes_as_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("holes.raw");
        let size = 12 << 20;
        sparse_file(&raw, size);
        // Text everywhere in the first batches, so that the buffers later
        // batches are read into held data; then, in every later batch,
        // clusters whose data starts or ends part way, next to a hole.
        write_at(&raw, 0, &text(1, 8 << 20));
        for batch in 8..12 {
            let at = batch * BATCH * CLUSTER;
            write_at(&raw, at + 3 * CLUSTER + 40_000, &text(batch, 10_000));
            write_at(&raw, at + 7 * CLUSTER, &text(batch + 20, 5000));
        }
        let data = data_ranges(&File::open(&raw).unwrap(), 0..size);
        assert!(data.windows(2).all(|w| w[0].end < w[1].start), "{data:?}");
        let bytes = fs::read(&raw).unwrap();
        let mut covered = 0;
        for r in &data {
            assert!(r.start < r.end && r.end <= size, "{data:?}");
            covered += r.end - r.start;
        }
        let outside = bytes
            .iter()
            .enumerate()
            .filter(|&(i, &b)| b != 0 && !data.iter().any(|r| r.contains(&(i as u64))));
        assert_eq!(outside.count(), 0, "data outside {data:?}");
        assert!(covered >= 8 << 20, "{data:?}");

        let q = dir.path().join("holes.qcow2");
        // One thread, a window of four batches: the later batches are read
        // into the buffers of the first ones.
        let (stats, _, _) = convert(&raw, &q, &opts(1));
        assert_eq!(stats.compressed + stats.stored_raw, data_clusters(&raw));
        assert_clean(&q, &stats);
        assert_same_disk(&raw, &q);
    }

    #[test]
    fn qcow2_write_spans_several_l2_tables() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("big.raw");
        let size = (1100 << 20) + 512;
        sparse_file(&raw, size);
        // Data at both ends and across the first L2 table's boundary.
        write_at(&raw, 0, &text(1, 70_000));
        write_at(&raw, (512 << 20) - 1000, &text(2, 2000));
        write_at(&raw, (700 << 20) + 3, &pseudo_random(3, 70_000));
        write_at(&raw, size - 512, &text(4, 512));
        let q = dir.path().join("big.qcow2");
        let (stats, _, bytes) = convert(&raw, &q, &opts(2));
        assert_eq!(stats.compressed + stats.stored_raw, data_clusters(&raw));
        assert_clean(&q, &stats);
        assert_same_disk(&raw, &q);
        let l1_entries = u32::from_be_bytes(bytes[36..40].try_into().unwrap());
        assert_eq!(l1_entries, 3);
    }

    #[test]
    fn qcow2_write_of_an_empty_disk_is_clean() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("empty.raw");
        sparse_file(&raw, 0);
        let q = dir.path().join("empty.qcow2");
        let (stats, index, _) = convert(&raw, &q, &opts(1));
        assert_eq!((stats.clusters, index.len()), (0, 0));
        assert_clean(&q, &stats);
        assert_same_disk(&raw, &q);
    }

    #[test]
    fn qcow2_write_refuses_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("odd.raw");
        sparse_file(&odd, 1000);
        let raw = dir.path().join("disk.raw");
        sparse_file(&raw, 4096);
        write_at(&raw, 0, b"data");
        let q = dir.path().join("out.qcow2");
        let cases: Vec<(&str, &Path, &Path, usize, ErrorKind, &str)> = vec![
            (
                "odd size",
                odd.as_path(),
                q.as_path(),
                1,
                ErrorKind::InvalidInput,
                "512-byte sectors",
            ),
            (
                "no threads",
                raw.as_path(),
                q.as_path(),
                0,
                ErrorKind::InvalidInput,
                "one thread",
            ),
            (
                "in place",
                raw.as_path(),
                raw.as_path(),
                1,
                ErrorKind::InvalidInput,
                "same file",
            ),
            (
                "missing",
                Path::new("/nonexistent/x.raw"),
                q.as_path(),
                1,
                ErrorKind::Io,
                "x.raw",
            ),
        ];
        for (name, input, out, threads, kind, needle) in cases {
            let e = write_qcow2(input, out, &opts(threads)).unwrap_err();
            assert_eq!(e.kind(), kind, "{name}: {e}");
            assert!(crate::testutil::chain(&e).contains(needle), "{name}: {e}");
            assert!(!q.exists(), "{name}: left {}", q.display());
        }
        assert_eq!(fs::read(&raw).unwrap()[..4], *b"data");
    }

    #[test]
    fn qcow2_write_packs_compressed_clusters_like_qemu() {
        enum Op {
            Compressed(u64),
            Raw,
        }
        use Op::*;
        let c = CLUSTER;
        // (operation, expected host offset)
        let steps = [
            (Compressed(1000), c),
            // Does not fit in cluster 1, but cluster 2 is free: spill over.
            (Compressed(65_000), c + 1000),
            (Raw, 3 * c),
            // Still fits in cluster 2, behind the stored cluster 3.
            (Compressed(100), 2 * c + 1000 - (c - 65_000)),
            // Does not fit and cluster 3 is taken: start cluster 4.
            (Compressed(65_000), 4 * c),
            (Compressed(536), 4 * c + 65_000),
            // Ended exactly on a boundary: start the next cluster.
            (Compressed(10), 5 * c),
        ];
        let mut alloc = Allocator::new();
        for (i, (op, want)) in steps.into_iter().enumerate() {
            let got = match op {
                Compressed(len) => alloc.bytes(len),
                Raw => alloc.cluster(),
            };
            assert_eq!(got, want, "step {i}");
        }
        assert_eq!(alloc.refcounts, [1, 2, 2, 1, 2, 1]);
        assert_eq!(alloc.next_cluster, 6);
        // 1000 bytes at 66_536 run from sector 129 to sector 131.
        assert_eq!((compressed_entry(c + 1000, 1000) >> CSIZE_SHIFT) & 0xff, 2);
        assert_eq!(compressed_entry(c, 512), COMPRESSED | c);
    }

    #[test]
    fn qcow2_write_refcount_layout_counts_itself() {
        for (used, want) in [
            (5, (1, 1)),
            (32_766, (1, 1)),
            (32_767, (1, 2)),
            (8192 * 32_768, (2, 8193)),
        ] {
            assert_eq!(refcount_layout(used), want, "{used}");
        }
    }
}
