//! [`DiskImage`]: a disk image file opened read-only, whatever its format
//! (raw or qcow2, detected by magic, never by extension), seen as the guest
//! disk through `Read + Seek`.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::qcow2::{self, Cluster, Qcow2, Qcow2Header};

/// The container format of an image file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum Format {
    Raw,
    Qcow2(Qcow2Header),
}

impl Format {
    pub fn name(&self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2(_) => "qcow2",
        }
    }
}

#[derive(Debug)]
enum Inner {
    Raw,
    Qcow2(Box<Qcow2>),
}

/// A disk image opened for reading.
#[derive(Debug)]
pub struct DiskImage {
    path: PathBuf,
    file: File,
    file_size: u64,
    format: Format,
    inner: Inner,
    pos: u64,
}

/// Formats kiln recognises but does not read, by their magic at offset 0.
const OTHER_MAGICS: &[(&[u8], &str)] = &[
    (b"KDMV", "VMDK"),
    (b"# Disk DescriptorFile", "VMDK descriptor"),
    (b"vhdxfile", "VHDX"),
    (b"conectix", "VHD (dynamic)"),
    (b"<<< ", "VDI"),
];

impl DiskImage {
    /// Opens `path`, detecting its format from its first bytes.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).ctx(|| format!("opening {}", path.display()))?;
        let file_size = file
            .metadata()
            .ctx(|| format!("reading metadata of {}", path.display()))?
            .len();
        let mut head = [0u8; 32];
        let n = (file_size as usize).min(head.len());
        file.read_exact_at(&mut head[..n], 0)
            .ctx(|| format!("reading {}", path.display()))?;
        let within = |e: Error| e.context_for(format!("reading {}", path.display()));
        let (format, inner) = if head.starts_with(qcow2::MAGIC) {
            let q = Qcow2::open(
                file.try_clone().ctx(|| format!("opening {}", path.display()))?,
                file_size,
            )
            .map_err(within)?;
            (Format::Qcow2(q.header().clone()), Inner::Qcow2(Box::new(q)))
        } else if let Some((_, name)) = OTHER_MAGICS.iter().find(|(m, _)| head[..n].starts_with(m)) {
            return Err(within(Error::unsupported(format!(
                "{name} images are not read by kiln; convert with `qemu-img convert -O qcow2`"
            ))));
        } else {
            (Format::Raw, Inner::Raw)
        };
        Ok(DiskImage {
            path: path.to_owned(),
            file,
            file_size,
            format,
            inner,
            pos: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> &Format {
        &self.format
    }

    /// Size of the image file on the host.
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// Size of the guest disk.
    pub fn virtual_size(&self) -> u64 {
        match &self.inner {
            Inner::Raw => self.file_size,
            Inner::Qcow2(q) => q.header().virtual_size,
        }
    }

    /// Opens the same file again, with its own position and caches.
    pub fn try_clone(&self) -> Result<Self> {
        Self::open(&self.path)
    }

    /// Reads exactly `buf.len()` guest bytes at `pos`.
    pub fn read_exact_at(&mut self, buf: &mut [u8], pos: u64) -> Result<()> {
        let end = pos.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.virtual_size()) {
            return Err(Error::with_source(
                crate::ErrorKind::Io,
                format!(
                    "reading {} bytes at offset {pos} of {}: beyond the end of the disk",
                    buf.len(),
                    self.path.display()
                ),
                io::Error::from(io::ErrorKind::UnexpectedEof),
            ));
        }
        match &mut self.inner {
            Inner::Raw => self
                .file
                .read_exact_at(buf, pos)
                .ctx(|| format!("reading {}", self.path.display())),
            Inner::Qcow2(q) => q.read_exact_at(buf, pos),
        }
    }

    /// Copies `len` guest bytes from `offset` into a new sparse file at
    /// `dest`: unallocated qcow2 clusters and all-zero blocks are skipped.
    pub fn extract(&mut self, offset: u64, len: u64, dest: &Path) -> Result<()> {
        const CHUNK: u64 = 1 << 20;
        const BLOCK: usize = 4096;
        let src = self.path.clone();
        let what = || {
            format!(
                "extracting {len} bytes at offset {offset} of {} to {}",
                src.display(),
                dest.display()
            )
        };
        let mut out = File::create(dest).ctx(what)?;
        out.set_len(len).ctx(what)?;
        let mut buf = vec![0u8; CHUNK as usize];
        let mut done = 0;
        while done < len {
            kiln_exec::check_interrupted().map_err(|e| Error::tool(what(), e))?;
            let n = (len - done).min(CHUNK);
            let pos = offset + done;
            if self.is_zero(pos, n)? {
                done += n;
                continue;
            }
            let chunk = &mut buf[..n as usize];
            self.read_exact_at(chunk, pos)?;
            for (i, block) in chunk.chunks(BLOCK).enumerate() {
                if block.iter().any(|&b| b != 0) {
                    out.write_all_at(block, done + (i * BLOCK) as u64).ctx(what)?;
                }
            }
            done += n;
        }
        out.flush().ctx(what)?;
        Ok(())
    }

    /// Whether the guest range is known to read as zeros without reading it.
    fn is_zero(&mut self, pos: u64, len: u64) -> Result<bool> {
        let Inner::Qcow2(q) = &mut self.inner else {
            return Ok(false);
        };
        let cs = q.header().cluster_size;
        let (first, last) = (pos / cs, (pos + len - 1) / cs);
        for c in first..=last {
            if q.cluster(c)? != Cluster::Zero {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl Read for DiskImage {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.virtual_size().saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.read_exact_at(&mut buf[..n], self.pos).map_err(io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for DiskImage {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let base = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.virtual_size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match base {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the disk",
            )),
        }
    }
}
