//! The image as EBS sees it: 512 KiB blocks, of which only the ones holding
//! a non-zero byte are sent (a snapshot reads unwritten blocks as zeros).
//! Also the raw-image checks (EBS takes the bytes as the volume, so a qcow2
//! or a compressed file would be published as garbage) and the checksums the
//! EBS direct APIs want. Non-goals: reading container formats.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use base64::Engine;
use sha2::{Digest, Sha256, Sha512};

/// The EBS direct APIs' block size.
pub const BLOCK_SIZE: u64 = 512 * 1024;
/// EBS's largest snapshot (and io2 Block Express volume): 64 TiB.
pub const MAX_VOLUME_BYTES: u64 = 64 << 40;
const GIB: u64 = 1 << 30;

/// Why an image cannot be published as it is.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path} is a {format} image, not a raw disk; EBS takes the bytes as the volume. Convert it first: qemu-img convert -O raw {path} {stem}.raw")]
    NotRaw {
        path: String,
        format: &'static str,
        stem: String,
    },
    #[error("{path} is {what}; decompress it to a raw disk first")]
    Compressed { path: String, what: &'static str },
    #[error("{path} is empty")]
    Empty { path: String },
    #[error("{path} is {size} bytes, larger than EBS's largest snapshot (64 TiB)")]
    TooLarge { path: String, size: u64 },
    #[error("reading {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// Container formats recognised by their magic at offset 0.
const CONTAINERS: &[(&[u8], &str)] = &[
    (b"QFI\xfb", "qcow2"),
    (b"KDMV", "VMDK"),
    (b"# Disk DescriptorFile", "VMDK descriptor"),
    (b"vhdxfile", "VHDX"),
    (b"conectix", "VHD"),
];
const COMPRESSED: &[(&[u8], &str)] = &[
    (b"\xfd7zXZ\x00", "xz-compressed"),
    (b"\x1f\x8b", "gzip-compressed"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed"),
    (b"BZh", "bzip2-compressed"),
];

/// Refuses what is not a raw disk EBS can hold: container formats (by magic
/// at the start, and a fixed VHD's footer at the end), compressed files, an
/// empty file, more than 64 TiB. Returns the image's size.
pub fn check_raw(path: &Path) -> Result<u64, ImageError> {
    let shown = path.display().to_string();
    let io = |source| ImageError::Io {
        path: shown.clone(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size == 0 {
        return Err(ImageError::Empty { path: shown });
    }
    let mut head = [0u8; 64];
    let n = (size as usize).min(head.len());
    file.read_exact_at(&mut head[..n], 0).map_err(io)?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let head = &head[..n];
    // VDI's signature sits at 0x40 after a free-text header.
    let mut vdi = [0u8; 4];
    let is_vdi = size >= 0x44 && file.read_exact_at(&mut vdi, 0x40).is_ok() && vdi == [0x7f, 0x10, 0xda, 0xbe];
    let mut footer = [0u8; 8];
    let is_fixed_vhd = size >= 512 && file.read_exact_at(&mut footer, size - 512).is_ok() && &footer == b"conectix";
    if let Some((_, format)) = CONTAINERS.iter().find(|(m, _)| head.starts_with(m)) {
        return Err(ImageError::NotRaw {
            path: shown,
            format,
            stem,
        });
    }
    if is_vdi || is_fixed_vhd {
        let format = if is_vdi { "VDI" } else { "fixed VHD" };
        return Err(ImageError::NotRaw {
            path: shown,
            format,
            stem,
        });
    }
    if let Some((_, what)) = COMPRESSED.iter().find(|(m, _)| head.starts_with(m)) {
        return Err(ImageError::Compressed { path: shown, what });
    }
    check_size(&shown, size)
}

fn check_size(path: &str, size: u64) -> Result<u64, ImageError> {
    if size > MAX_VOLUME_BYTES {
        return Err(ImageError::TooLarge {
            path: path.to_owned(),
            size,
        });
    }
    Ok(size)
}

/// The volume size StartSnapshot asks for: the image rounded up to whole GiB.
pub fn volume_size_gib(image_bytes: u64) -> u64 {
    image_bytes.div_ceil(GIB).max(1)
}

/// How many EBS blocks an image of `size` bytes spans.
pub fn block_count(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE)
}

/// Whether every byte of `block` is zero.
pub fn is_zero(block: &[u8]) -> bool {
    // u128 lanes: fast enough unoptimised, vectorised in release builds.
    let (chunks, rest) = block.split_at(block.len() - block.len() % 16);
    chunks
        .chunks_exact(16)
        .all(|c| u128::from_ne_bytes(c.try_into().expect("16 bytes")) == 0)
        && rest.iter().all(|&b| b == 0)
}

/// What one pass over the image found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub size: u64,
    /// Indexes of the blocks with a non-zero byte, ascending.
    pub nonzero: Vec<u64>,
    /// SHA-512 of the whole file, hex.
    pub sha512: String,
}

impl Scan {
    /// The bytes the non-zero blocks carry (a short last block counts as a
    /// whole one: it is sent padded).
    pub fn nonzero_bytes(&self) -> u64 {
        self.nonzero.len() as u64 * BLOCK_SIZE
    }
}

/// Reads the image once: which blocks hold data, and its SHA-512 (to hold
/// it to the manifest). `progress` gets the bytes read so far.
pub fn scan(path: &Path, mut progress: impl FnMut(u64)) -> io::Result<Scan> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut sha = Sha512::new();
    let mut nonzero = Vec::new();
    let mut block = vec![0u8; BLOCK_SIZE as usize];
    let mut index = 0u64;
    let mut done = 0u64;
    while done < size {
        let want = (size - done).min(BLOCK_SIZE) as usize;
        file.read_exact(&mut block[..want])?;
        sha.update(&block[..want]);
        if !is_zero(&block[..want]) {
            nonzero.push(index);
        }
        done += want as u64;
        index += 1;
        if index.is_multiple_of(64) {
            progress(done);
        }
        kiln_exec::check_interrupted().map_err(io::Error::other)?;
    }
    progress(done);
    Ok(Scan {
        size,
        nonzero,
        sha512: hex::encode(sha.finalize()),
    })
}

/// Reads block `index` of `file` (of `size` bytes) into `buf`, padding a
/// short last block with zeros as EBS wants every block whole.
pub fn read_block(file: &File, size: u64, index: u64, buf: &mut Vec<u8>) -> io::Result<()> {
    let offset = index * BLOCK_SIZE;
    let len = size.saturating_sub(offset).min(BLOCK_SIZE) as usize;
    buf.clear();
    buf.resize(BLOCK_SIZE as usize, 0);
    file.read_exact_at(&mut buf[..len], offset)
}

/// A block's SHA-256: raw, for the aggregate, and as x-amz-Checksum wants it.
pub fn block_checksum(block: &[u8]) -> [u8; 32] {
    Sha256::digest(block).into()
}

pub fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// CompleteSnapshot's LINEAR aggregate: SHA-256 of the blocks' raw SHA-256
/// digests concatenated in block-index order, base64 (as AWS's own
/// coldsnap computes it).
pub fn linear_aggregate<'a>(digests_in_index_order: impl IntoIterator<Item = &'a [u8; 32]>) -> String {
    let mut sha = Sha256::new();
    for d in digests_in_index_order {
        sha.update(d);
    }
    base64(&sha.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn image(blocks: &[(u64, u8)], size: u64) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(size).unwrap();
        for &(index, byte) in blocks {
            f.as_file()
                .write_all_at(&[byte; 100], index * BLOCK_SIZE + 4096)
                .unwrap();
        }
        f
    }

    #[test]
    fn zero_blocks_are_skipped_and_the_hash_covers_every_byte() {
        let size = 10 * BLOCK_SIZE + 1000;
        let f = image(&[(0, 1), (3, 2), (9, 3)], size);
        // A byte in the short last block.
        f.as_file().write_all_at(b"x", 10 * BLOCK_SIZE + 999).unwrap();
        let mut seen = 0;
        let scan = scan(f.path(), |n| seen = n).unwrap();
        assert_eq!(scan.nonzero, vec![0, 3, 9, 10]);
        assert_eq!(seen, size);
        assert_eq!(scan.nonzero_bytes(), 4 * BLOCK_SIZE);
        let whole = std::fs::read(f.path()).unwrap();
        assert_eq!(scan.sha512, hex::encode(Sha512::digest(&whole)));
        assert_eq!(block_count(size), 11);
    }

    #[test]
    fn the_short_last_block_is_padded_with_zeros() {
        let f = image(&[], BLOCK_SIZE + 10);
        f.as_file().write_all_at(&[7; 10], BLOCK_SIZE).unwrap();
        let mut buf = Vec::new();
        read_block(f.as_file(), BLOCK_SIZE + 10, 1, &mut buf).unwrap();
        assert_eq!(buf.len() as u64, BLOCK_SIZE);
        assert_eq!(&buf[..10], &[7; 10]);
        assert!(is_zero(&buf[10..]));
    }

    #[test]
    fn zero_detection_sees_every_byte() {
        let mut b = vec![0u8; 1000];
        assert!(is_zero(&b));
        for at in [0, 15, 16, 500, 991, 999] {
            b[at] = 1;
            assert!(!is_zero(&b), "byte {at}");
            b[at] = 0;
        }
        assert!(is_zero(&[]));
    }

    #[test]
    fn checksums_are_base64_sha256_and_the_aggregate_is_linear() {
        // SHA-256 of "abc" (FIPS 180-2 example), base64.
        assert_eq!(
            base64(&block_checksum(b"abc")),
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
        let a = block_checksum(b"a");
        let b = block_checksum(b"b");
        let mut cat = a.to_vec();
        cat.extend_from_slice(&b);
        assert_eq!(linear_aggregate([&a, &b]), base64(&Sha256::digest(&cat)));
        assert_ne!(linear_aggregate([&a, &b]), linear_aggregate([&b, &a]));
    }

    #[test]
    fn volume_size_rounds_up_to_whole_gib() {
        assert_eq!(volume_size_gib(1), 1);
        assert_eq!(volume_size_gib(GIB), 1);
        assert_eq!(volume_size_gib(GIB + 1), 2);
        assert_eq!(volume_size_gib(8 * GIB - 512), 8);
    }

    #[test]
    fn refuses_containers_compressed_empty_and_oversized() {
        let with = |bytes: &[u8], size: u64| {
            let mut f = tempfile::Builder::new().suffix(".img").tempfile().unwrap();
            f.write_all(bytes).unwrap();
            f.as_file().set_len(size.max(bytes.len() as u64)).unwrap();
            let r = check_raw(f.path()).map_err(|e| e.to_string());
            (f, r)
        };
        let (_f, r) = with(b"QFI\xfb\0\0\0\x03", 4096);
        let err = r.unwrap_err();
        assert!(
            err.contains("qcow2 image, not a raw disk") && err.contains("qemu-img convert -O raw"),
            "{err}"
        );
        let (_f, r) = with(b"\xfd7zXZ\x00", 4096);
        assert!(r.unwrap_err().contains("xz-compressed"));
        let (_f, r) = with(b"", 0);
        assert!(r.unwrap_err().contains("is empty"));
        let err = check_size("big.raw", MAX_VOLUME_BYTES + 1).unwrap_err().to_string();
        assert!(err.contains("larger than EBS's largest snapshot"), "{err}");
        assert_eq!(check_size("big.raw", MAX_VOLUME_BYTES).unwrap(), MAX_VOLUME_BYTES);
        // A fixed VHD is raw data plus a footer.
        let f = image(&[], 4096);
        f.as_file().write_all_at(b"conectix", 4096 - 512).unwrap();
        assert!(check_raw(f.path()).unwrap_err().to_string().contains("fixed VHD"));
        // A raw disk with an MBR passes.
        let (_f, r) = with(&[0u8; 512], 2 * GIB);
        assert_eq!(r.unwrap(), 2 * GIB);
    }
}
