//! Reading files out of a FAT filesystem (an EFI system partition, an El
//! Torito UEFI image) inside a larger file or disk, without mounting it.
//!
//! Through the `fatfs` crate, which the FAT writer's tests already trust as
//! their independent reader: its known faults (see [`crate::fat`]) are in
//! what it writes, and it is handed a view that refuses every write, so a
//! read never changes the image (not even the dirty flag). Non-goals:
//! anything but reading whole small files and listing directories.
//!
//! `fatfs` does its cluster and sector arithmetic unchecked, so a corrupt
//! boot sector or directory entry (cluster 0 or 1 in a chain, a FAT size
//! that overflows) makes it panic (debug builds) or compute nonsense
//! (release). Every call into it here runs under [`guarded`], which turns
//! such a panic into a `Corrupt` error naming what was being read; the
//! fuzzer (`fuzz/`, target `fat`) found these.

use std::cell::Cell;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use crate::error::{Error, Result};
use crate::fsread::MAX_READ;

/// The `len` bytes at `start` of `inner`, read-only.
struct Window<R> {
    inner: R,
    start: u64,
    len: u64,
    pos: u64,
}

impl<R: Read + Seek> Read for Window<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.inner.read(&mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R> Write for Window<R> {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "kiln reads FAT images read-only",
        ))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<R> Seek for Window<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

thread_local! {
    /// Whether this thread is inside [`guarded`] (its panics are expected).
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, a call into `fatfs`; a panic in it becomes a `Corrupt` error
/// about `what`, and is not printed (the hook installed once here defers
/// to the previous hook for every other panic).
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = GUARDED.with(|g| g.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    result.unwrap_or_else(|payload| {
        let why = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(Error::corrupt(format!(
            "{what}: the FAT is corrupt (its sizes or cluster numbers are out of range: {why})"
        )))
    })
}

/// A FAT filesystem opened read-only.
pub struct FatReader<R: Read + Seek> {
    fs: fatfs::FileSystem<Window<R>>,
}

impl<R: Read + Seek> FatReader<R> {
    /// Opens the FAT filesystem in the `len` bytes at `start` of `inner`.
    pub fn open(inner: R, start: u64, len: u64) -> Result<Self> {
        let window = Window {
            inner,
            start,
            len,
            pos: 0,
        };
        let fs = guarded("reading a FAT boot sector", || {
            fatfs::FileSystem::new(window, fatfs::FsOptions::new().update_accessed_date(false))
                .map_err(|e| Error::with_source(crate::ErrorKind::InvalidFormat, "reading a FAT boot sector", e))
        })?;
        Ok(FatReader { fs })
    }

    /// The contents of the file at `path` (`/`-separated, matched without
    /// regard to case as FAT does); `None` if it is missing.
    pub fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        guarded(&format!("reading {path} in a FAT"), || self.read_file_unguarded(path))
    }

    fn read_file_unguarded(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let path = path.trim_start_matches('/');
        let mut file = match self.fs.root_dir().open_file(path) {
            Ok(f) => f,
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::InvalidInput) => return Ok(None),
            Err(e) => {
                return Err(Error::with_source(
                    crate::ErrorKind::Corrupt,
                    format!("opening {path} in a FAT"),
                    e,
                ))
            }
        };
        let mut out = Vec::new();
        (&mut file)
            .take(MAX_READ + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::with_source(crate::ErrorKind::Corrupt, format!("reading {path} in a FAT"), e))?;
        if out.len() as u64 > MAX_READ {
            return Err(Error::unsupported(format!(
                "{path} in a FAT is larger than the {MAX_READ} bytes kiln reads into memory"
            )));
        }
        Ok(Some(out))
    }

    /// The names in the directory at `path` (without `.` and `..`), sorted;
    /// `None` if it is missing.
    pub fn read_dir(&self, path: &str) -> Result<Option<Vec<String>>> {
        guarded(&format!("listing {path} in a FAT"), || self.read_dir_unguarded(path))
    }

    fn read_dir_unguarded(&self, path: &str) -> Result<Option<Vec<String>>> {
        let path = path.trim_matches('/');
        let root = self.fs.root_dir();
        let dir = if path.is_empty() {
            root
        } else {
            match root.open_dir(path) {
                Ok(d) => d,
                Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::InvalidInput) => return Ok(None),
                Err(e) => {
                    return Err(Error::with_source(
                        crate::ErrorKind::Corrupt,
                        format!("opening {path} in a FAT"),
                        e,
                    ))
                }
            }
        };
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry
                .map_err(|e| Error::with_source(crate::ErrorKind::Corrupt, format!("listing {path} in a FAT"), e))?;
            let name = entry.file_name();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        names.sort();
        Ok(Some(names))
    }
}

/// What a UEFI executable is, from its DOS and PE headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeKind {
    /// A PE image for x86-64 (machine 0x8664).
    X86_64,
    /// A PE image for another machine.
    Other(u16),
    /// "MZ" without a PE header after it.
    DosOnly,
    /// Not an executable.
    NotPe,
}

/// Classifies `bytes` as a UEFI executable would be.
pub fn pe_kind(bytes: &[u8]) -> PeKind {
    if !bytes.starts_with(b"MZ") || bytes.len() < 0x40 {
        return PeKind::NotPe;
    }
    let at = u32::from_le_bytes(bytes[0x3c..0x40].try_into().expect("4 bytes")) as usize;
    match bytes.get(at..at + 6) {
        Some(h) if &h[..4] == b"PE\0\0" => match u16::from_le_bytes([h[4], h[5]]) {
            0x8664 => PeKind::X86_64,
            other => PeKind::Other(other),
        },
        _ => PeKind::DosOnly,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fat::{write_fat_image, FatEntry, FatOptions};

    #[test]
    fn reads_a_kiln_fat_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("efi.img");
        let mut pe = vec![0u8; 0x200];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c] = 0x80;
        pe[0x80..0x86].copy_from_slice(b"PE\0\0\x64\x86");
        write_fat_image(
            &img,
            &FatOptions::new("ESP", 0x1234, 0),
            &[
                FatEntry::file("EFI/BOOT/BOOTX64.EFI", pe.clone()),
                FatEntry::file("EFI/debian/grub.cfg", "search"),
            ],
        )
        .unwrap();
        let before = std::fs::read(&img).unwrap();
        // Inside a larger file, at an offset, as in a disk or an ISO.
        let mut disk = vec![0xeeu8; 4096];
        disk.extend(&before);
        let reader = FatReader::open(io::Cursor::new(disk), 4096, before.len() as u64).unwrap();
        let got = reader.read_file("/EFI/BOOT/BOOTX64.EFI").unwrap().unwrap();
        assert_eq!(pe_kind(&got), PeKind::X86_64);
        assert_eq!(reader.read_file("efi/boot/bootx64.efi").unwrap().unwrap(), pe);
        assert_eq!(reader.read_file("/EFI/BOOT/none").unwrap(), None);
        assert_eq!(reader.read_dir("/EFI").unwrap().unwrap(), ["BOOT", "debian"]);
        assert_eq!(reader.read_dir("/nope").unwrap(), None);
        drop(reader);
        let file = std::fs::File::open(&img).unwrap();
        let len = before.len() as u64;
        drop(FatReader::open(file, 0, len).unwrap());
        assert_eq!(std::fs::read(&img).unwrap(), before);

        assert_eq!(pe_kind(b"MZ"), PeKind::NotPe);
        assert_eq!(pe_kind(&[b'M', b'Z'].repeat(40)), PeKind::DosOnly);
        assert_eq!(pe_kind(b"\x7fELF"), PeKind::NotPe);
        let mut arm = pe.clone();
        arm[0x84..0x86].copy_from_slice(&0xaa64u16.to_le_bytes());
        assert_eq!(pe_kind(&arm), PeKind::Other(0xaa64));
    }
}
