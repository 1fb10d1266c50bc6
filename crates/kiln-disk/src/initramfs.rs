//! Lists what a Linux initramfs holds without unpacking it to disk: the
//! file is one or more `newc` cpio archives, each possibly compressed, one
//! after the other (Debian's initramfs-tools writes an uncompressed early
//! archive for CPU microcode, when there is any, then the main archive
//! compressed with zstd), with zero bytes between them. Compressed parts
//! are read as streams, so a 150 MiB main archive is never held in memory.
//!
//! Reads zstd and gzip (the compressors initramfs-tools defaults to, now
//! and before bookworm); xz, lz4 and lzma are reported as unsupported.
//! Non-goals: extracting files to disk, the old binary and `odc` cpio
//! formats (the kernel reads only `newc`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};

use crate::error::{Error, IoContext, Result};

/// What an initramfs holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Initramfs {
    /// Every entry's path, relative (`usr/lib/modules/…`), in archive order.
    pub paths: Vec<String>,
    /// The contents of the entries the caller asked to keep.
    pub kept: BTreeMap<String, Vec<u8>>,
    /// How each archive was stored, in order: `none`, `zstd` or `gzip`.
    pub archives: Vec<&'static str>,
}

const NEWC: &[u8] = b"070701";
const NEWC_CRC: &[u8] = b"070702";
const ZSTD: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const GZIP: &[u8] = &[0x1f, 0x8b];
const TRAILER: &str = "TRAILER!!!";
const HEADER_LEN: usize = 110;
/// The longest entry path kiln accepts (PATH_MAX).
const MAX_NAME: u64 = 4096;

/// Lists the initramfs `bytes`, keeping the contents of the regular files
/// for which `keep(path)` is true.
pub fn read_initramfs(bytes: &[u8], keep: impl Fn(&str) -> bool) -> Result<Initramfs> {
    let mut out = Initramfs::default();
    let mut pos = 0;
    loop {
        while pos < bytes.len() && bytes[pos] == 0 {
            pos += 1;
        }
        let rest = &bytes[pos..];
        if rest.is_empty() {
            break;
        }
        if rest.starts_with(NEWC) || rest.starts_with(NEWC_CRC) {
            let mut r = Counting { inner: rest, read: 0 };
            read_archive(&mut r, &keep, &mut out)?;
            out.archives.push("none");
            pos += usize::try_from(r.read).map_err(|_| Error::corrupt("an initramfs archive larger than memory"))?;
            continue;
        }
        // A compressed archive runs to the end of the file: the kernel
        // reads nothing after it either.
        let (name, stream): (&'static str, Box<dyn Read + '_>) = if rest.starts_with(ZSTD) {
            let decoder = zstd::stream::read::Decoder::with_buffer(rest)
                .map_err(|e| Error::with_source(crate::ErrorKind::InvalidFormat, "reading zstd data", e))?;
            ("zstd", Box::new(decoder))
        } else if rest.starts_with(GZIP) {
            ("gzip", Box::new(flate2::read::MultiGzDecoder::new(rest)))
        } else {
            return Err(match compression_name(rest) {
                Some(name) => Error::unsupported(format!(
                    "the initramfs part at byte {pos} is compressed with {name}, which kiln does not read (zstd and gzip only)"
                )),
                None => Error::invalid(format!(
                    "the initramfs has neither a cpio archive nor compressed data at byte {pos}"
                )),
            });
        };
        let mut r = BufReader::new(stream);
        let mut first = true;
        // The decompressed stream may itself hold several archives.
        while skip_zeros(&mut r).ctx(|| format!("decompressing the {name} initramfs"))? {
            read_archive(&mut r, &keep, &mut out)
                .map_err(|e| e.context_for(format!("reading the {name} compressed archive at byte {pos}")))?;
            if first {
                out.archives.push(name);
                first = false;
            }
        }
        break;
    }
    if out.archives.is_empty() {
        return Err(Error::invalid("the initramfs is empty"));
    }
    Ok(out)
}

/// The name of a compressor whose magic starts `bytes`, among those the
/// kernel can unpack and kiln does not read.
fn compression_name(bytes: &[u8]) -> Option<&'static str> {
    [
        (&[0xfd, b'7', b'z', b'X', b'Z', 0][..], "xz"),
        (&[0x02, 0x21, 0x4c, 0x18][..], "lz4"),
        (&[0x5d, 0x00, 0x00][..], "lzma"),
        (&[0x42, 0x5a, 0x68][..], "bzip2"),
        (&[0x89, b'L', b'Z', b'O'][..], "lzo"),
    ]
    .into_iter()
    .find(|(magic, _)| bytes.starts_with(magic))
    .map(|(_, name)| name)
}

/// Skips zero padding; whether anything follows it.
fn skip_zeros(r: &mut impl BufRead) -> std::io::Result<bool> {
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(false);
        }
        let zeros = buf.iter().take_while(|b| **b == 0).count();
        let more = zeros < buf.len();
        r.consume(zeros);
        if more {
            return Ok(true);
        }
    }
}

/// A reader that counts what it has read, for the cpio's 4-byte alignment
/// and the uncompressed archives' end.
struct Counting<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Reads one `newc` archive up to and including its trailer.
fn read_archive<R: Read>(r: &mut R, keep: &impl Fn(&str) -> bool, out: &mut Initramfs) -> Result<()> {
    let mut r = Counting { inner: r, read: 0 };
    loop {
        let mut header = [0u8; HEADER_LEN];
        r.read_exact(&mut header)
            .ctx(|| "reading a cpio header (the archive ends without its trailer)".to_owned())?;
        if !(header.starts_with(NEWC) || header.starts_with(NEWC_CRC)) {
            return Err(Error::corrupt(format!(
                "a cpio header at byte {} has no newc magic",
                r.read - HEADER_LEN as u64
            )));
        }
        let field = |i: usize| -> Result<u64> {
            let text = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i]).unwrap_or("");
            u64::from_str_radix(text, 16)
                .map_err(|_| Error::corrupt(format!("a cpio header field is not hex: {text:?}")))
        };
        let mode = field(1)?;
        let size = field(6)?;
        let name_len = field(11)?;
        if name_len == 0 || name_len > MAX_NAME {
            return Err(Error::corrupt(format!("a cpio entry name of {name_len} bytes")));
        }
        let mut name = vec![0u8; name_len as usize];
        r.read_exact(&mut name).ctx(|| "reading a cpio entry name".to_owned())?;
        let pad = pad4(r.read);
        skip(&mut r, pad)?;
        name.pop_if(|b| *b == 0);
        let name = String::from_utf8_lossy(&name);
        if name == TRAILER {
            return Ok(());
        }
        let path = name.trim_start_matches("./").trim_start_matches('/').to_owned();
        let regular = mode & 0o170000 == 0o100000;
        if regular && keep(&path) {
            let mut data = Vec::new();
            (&mut r)
                .take(size)
                .read_to_end(&mut data)
                .ctx(|| format!("reading {path} from a cpio archive"))?;
            if data.len() as u64 != size {
                return Err(Error::corrupt(format!("{path} is cut short in the cpio archive")));
            }
            out.kept.insert(path.clone(), data);
        } else {
            skip(&mut r, size)?;
        }
        let pad = pad4(r.read);
        skip(&mut r, pad)?;
        if !path.is_empty() && path != "." {
            out.paths.push(path);
        }
    }
}

/// Bytes of padding after `offset` to the next multiple of 4.
fn pad4(offset: u64) -> u64 {
    (4 - offset % 4) % 4
}

fn skip(r: &mut impl Read, n: u64) -> Result<()> {
    let copied = std::io::copy(&mut r.take(n), &mut std::io::sink()).ctx(|| "reading a cpio archive".to_owned())?;
    if copied != n {
        return Err(Error::corrupt("a cpio archive is cut short"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    /// A `newc` archive of `(path, mode, data)` entries, as cpio(1) -H newc writes it.
    fn newc(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let trailer = (TRAILER, 0, &b""[..]);
        for (i, (name, mode, data)) in entries.iter().copied().chain([trailer]).enumerate() {
            let fields = [
                i as u32 + 1,
                mode,
                0,
                0,
                1,
                0,
                data.len() as u32,
                0,
                0,
                0,
                0,
                name.len() as u32 + 1,
                0,
            ];
            out.extend_from_slice(NEWC);
            for f in fields {
                out.extend_from_slice(format!("{f:08X}").as_bytes());
            }
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            out.resize(out.len().next_multiple_of(4), 0);
            out.extend_from_slice(data);
            out.resize(out.len().next_multiple_of(4), 0);
        }
        out
    }

    const FILE: u32 = 0o100644;
    const DIR: u32 = 0o040755;

    #[test]
    fn an_early_archive_then_a_zstd_one() {
        let mut early = newc(&[
            (".", DIR, b""),
            ("kernel/x86/microcode/GenuineIntel.bin", FILE, b"ucode"),
        ]);
        // initramfs-tools pads the early archive to 512 bytes.
        early.resize(early.len().next_multiple_of(512), 0);
        let main = newc(&[
            (
                "usr/lib/modules/6.1.0-18-amd64/kernel/drivers/nvme/host/nvme.ko",
                FILE,
                b"\x7fELF",
            ),
            ("conf/modules", FILE, b"nvme\nena\n"),
            ("usr/lib/modules", DIR, b""),
        ]);
        // Two frames: zstd's reader reads on into the next.
        let half = main.len() / 2;
        let mut bytes = early.clone();
        bytes.extend(zstd::encode_all(&main[..half], 3).unwrap());
        bytes.extend(zstd::encode_all(&main[half..], 3).unwrap());
        let got = read_initramfs(&bytes, |p| p == "conf/modules").unwrap();
        assert_eq!(got.archives, ["none", "zstd"]);
        assert_eq!(
            got.paths,
            [
                "kernel/x86/microcode/GenuineIntel.bin",
                "usr/lib/modules/6.1.0-18-amd64/kernel/drivers/nvme/host/nvme.ko",
                "conf/modules",
                "usr/lib/modules",
            ]
        );
        assert_eq!(got.kept["conf/modules"], b"nvme\nena\n");

        // gzip and an uncompressed main archive read the same.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &main).unwrap();
        let mut bytes = early;
        bytes.extend(gz.finish().unwrap());
        let again = read_initramfs(&bytes, |p| p == "conf/modules").unwrap();
        assert_eq!((again.paths, again.kept), (got.paths.clone(), got.kept.clone()));
        assert_eq!(read_initramfs(&main, |_| false).unwrap().paths, got.paths[1..]);
    }

    #[test]
    fn broken_initramfs_say_what_is_wrong() {
        let main = newc(&[("init", FILE, b"#!/bin/sh\n")]);
        let cases: Vec<(Vec<u8>, ErrorKind, &str)> = vec![
            (Vec::new(), ErrorKind::InvalidFormat, "empty"),
            (b"garbage".to_vec(), ErrorKind::InvalidFormat, "neither a cpio archive"),
            (
                [&[0xfd, b'7', b'z', b'X', b'Z', 0][..], b"..."].concat(),
                ErrorKind::Unsupported,
                "compressed with xz",
            ),
            (main[..main.len() - 120].to_vec(), ErrorKind::Io, "without its trailer"),
            (
                zstd::encode_all(&main[..main.len() - 120], 3).unwrap(),
                ErrorKind::Io,
                "without its trailer",
            ),
        ];
        for (bytes, kind, needle) in cases {
            let e = read_initramfs(&bytes, |_| false).unwrap_err();
            let text = format!("{e}: {:?}", std::error::Error::source(&e).map(ToString::to_string));
            assert_eq!(e.kind(), kind, "{text}");
            assert!(text.contains(needle), "{needle}: {text}");
        }
    }
}
