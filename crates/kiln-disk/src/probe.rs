//! Filesystem detection by superblock magic, as `blkid -p` does it for the
//! types kiln meets: ext2/3/4, XFS, btrfs, FAT, ISO 9660, squashfs and swap. Reads at
//! most 68 KiB at the start of the partition and never trusts a length.

use std::io::{Read, Seek};

use serde::Serialize;
use uuid::Uuid;

use crate::error::Result;
use crate::table::{le32, le64, read_at};

/// The filesystem types [`probe_filesystem`] recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    Ext2,
    Ext3,
    Ext4,
    Xfs,
    Btrfs,
    Vfat,
    Iso9660,
    Squashfs,
    Swap,
}

impl FsType {
    pub fn name(self) -> &'static str {
        match self {
            FsType::Ext2 => "ext2",
            FsType::Ext3 => "ext3",
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
            FsType::Btrfs => "btrfs",
            FsType::Vfat => "vfat",
            FsType::Iso9660 => "iso9660",
            FsType::Squashfs => "squashfs",
            FsType::Swap => "swap",
        }
    }

    pub fn is_ext(self) -> bool {
        matches!(self, FsType::Ext2 | FsType::Ext3 | FsType::Ext4)
    }
}

impl std::fmt::Display for FsType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a superblock says about its filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FsInfo {
    #[serde(rename = "type")]
    pub fs_type: FsType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Size the filesystem believes it has, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

const PROBE_LEN: u64 = 0x11000;

/// Identifies the filesystem in the `size` bytes at `offset` of `r`.
pub fn probe_filesystem<R: Read + Seek>(r: &mut R, offset: u64, size: u64) -> Result<Option<FsInfo>> {
    let len = size.min(PROBE_LEN) as usize;
    let mut buf = read_at(r, offset, len, "reading filesystem superblocks")?;
    buf.resize(PROBE_LEN as usize, 0);
    let b = &buf[..];
    Ok(xfs(b)
        .or_else(|| ext(b))
        .or_else(|| btrfs(b))
        .or_else(|| swap(b))
        .or_else(|| squashfs(b))
        .or_else(|| iso9660(b))
        .or_else(|| vfat(b)))
}

fn uuid_of(bytes: &[u8]) -> Option<String> {
    let u = Uuid::from_slice(bytes).ok()?;
    (!u.is_nil()).then(|| u.to_string())
}

fn label_of(bytes: &[u8]) -> Option<String> {
    let end = bytes.iter().position(|&c| c == 0).unwrap_or(bytes.len());
    let s = String::from_utf8_lossy(&bytes[..end]).trim_end().to_owned();
    (!s.is_empty()).then_some(s)
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

fn xfs(b: &[u8]) -> Option<FsInfo> {
    (&b[0..4] == b"XFSB").then(|| FsInfo {
        fs_type: FsType::Xfs,
        uuid: uuid_of(&b[32..48]),
        label: label_of(&b[108..120]),
        size: u64::from(be32(&b[4..])).checked_mul(u64::from_be_bytes(b[8..16].try_into().expect("8 bytes"))),
    })
}

fn ext(b: &[u8]) -> Option<FsInfo> {
    let sb = &b[1024..2048];
    if sb[56..58] != [0x53, 0xef] {
        return None;
    }
    let (compat, incompat, ro_compat) = (le32(&sb[92..]), le32(&sb[96..]), le32(&sb[100..]));
    // As blkid: features ext3 lacks make it ext4; a journal makes it ext3.
    const EXT3_INCOMPAT: u32 = 0x0002 | 0x0004 | 0x0010; // filetype, recover, meta_bg
    const EXT3_RO_COMPAT: u32 = 0x0001 | 0x0002 | 0x0004; // sparse_super, large_file, btree_dir
    let fs_type = if incompat & !EXT3_INCOMPAT != 0 || ro_compat & !EXT3_RO_COMPAT != 0 {
        FsType::Ext4
    } else if compat & 0x0004 != 0 {
        FsType::Ext3
    } else {
        FsType::Ext2
    };
    let mut blocks = u64::from(le32(&sb[4..]));
    if incompat & 0x80 != 0 {
        blocks |= u64::from(le32(&sb[0x150..])) << 32;
    }
    let log = le32(&sb[24..]);
    let size = (log <= 6).then(|| blocks.checked_mul(1024 << log)).flatten();
    Some(FsInfo {
        fs_type,
        uuid: uuid_of(&sb[104..120]),
        label: label_of(&sb[120..136]),
        size,
    })
}

fn btrfs(b: &[u8]) -> Option<FsInfo> {
    let sb = &b[0x10000..0x11000];
    (&sb[0x40..0x48] == b"_BHRfS_M").then(|| FsInfo {
        fs_type: FsType::Btrfs,
        uuid: uuid_of(&sb[0x20..0x30]),
        label: label_of(&sb[0x12b..0x22b]),
        size: Some(le64(&sb[0x70..])),
    })
}

fn swap(b: &[u8]) -> Option<FsInfo> {
    let sig = &b[4086..4096];
    (sig == b"SWAPSPACE2" || sig == b"SWAP-SPACE").then(|| FsInfo {
        fs_type: FsType::Swap,
        uuid: uuid_of(&b[1024 + 12..1024 + 28]),
        label: label_of(&b[1024 + 28..1024 + 44]),
        size: Some((u64::from(le32(&b[1024 + 4..])) + 1) * 4096),
    })
}

fn squashfs(b: &[u8]) -> Option<FsInfo> {
    (&b[..4] == crate::squashfs::MAGIC).then(|| FsInfo {
        fs_type: FsType::Squashfs,
        uuid: None,
        label: None,
        size: Some(le64(&b[40..])),
    })
}

fn iso9660(b: &[u8]) -> Option<FsInfo> {
    let pvd = &b[0x8000..0x8800];
    if pvd[0] != 1 || &pvd[1..6] != b"CD001" {
        return None;
    }
    // blkid's ISO "UUID" is the volume creation time.
    let t = &pvd[813..829];
    let uuid = t.iter().all(u8::is_ascii_digit).then(|| {
        let s = std::str::from_utf8(t).expect("ascii digits");
        format!(
            "{}-{}-{}-{}-{}-{}-{}",
            &s[0..4],
            &s[4..6],
            &s[6..8],
            &s[8..10],
            &s[10..12],
            &s[12..14],
            &s[14..16]
        )
    });
    let block = u64::from(u16::from_le_bytes([pvd[128], pvd[129]]));
    Some(FsInfo {
        fs_type: FsType::Iso9660,
        uuid,
        label: label_of(&pvd[40..72]),
        size: Some(u64::from(le32(&pvd[80..])) * block),
    })
}

fn vfat(b: &[u8]) -> Option<FsInfo> {
    if b[510..512] != [0x55, 0xaa] || !matches!(b[0], 0xeb | 0xe9) {
        return None;
    }
    let (id_at, label_at) = if &b[82..87] == b"FAT32" {
        (67, 71)
    } else if &b[54..57] == b"FAT" {
        (39, 43)
    } else {
        return None;
    };
    let id = le32(&b[id_at..]);
    let label = label_of(&b[label_at..label_at + 11]).filter(|l| l != "NO NAME");
    let sector = u64::from(u16::from_le_bytes([b[11], b[12]]));
    let sectors = match u16::from_le_bytes([b[19], b[20]]) {
        0 => u64::from(le32(&b[32..])),
        n => u64::from(n),
    };
    Some(FsInfo {
        fs_type: FsType::Vfat,
        uuid: Some(format!("{:04X}-{:04X}", id >> 16, id & 0xffff)),
        label,
        size: Some(sector * sectors),
    })
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;
    use crate::testutil::{run, sparse_file};

    /// Each filesystem as its own tool makes it, against what blkid reads.
    #[test]
    fn agrees_with_blkid() {
        let dir = tempfile::tempdir().unwrap();
        let cases: &[(&str, &[&str], u64, FsType)] = &[
            (
                "mke2fs",
                &[
                    "-q",
                    "-F",
                    "-t",
                    "ext4",
                    "-L",
                    "root",
                    "-U",
                    "00000000-0000-0000-0000-0000000000e4",
                ],
                16,
                FsType::Ext4,
            ),
            ("mke2fs", &["-q", "-F", "-t", "ext3", "-L", "old"], 16, FsType::Ext3),
            ("mke2fs", &["-q", "-F", "-t", "ext2"], 16, FsType::Ext2),
            ("mkfs.xfs", &["-q", "-f", "-L", "data"], 300, FsType::Xfs),
        ];
        for (i, (tool, args, mib, want)) in cases.iter().enumerate() {
            let img = dir.path().join(format!("fs{i}.img"));
            sparse_file(&img, mib << 20);
            let mut argv: Vec<&str> = args.to_vec();
            argv.push(img.to_str().unwrap());
            run(tool, argv);
            let info = probe_filesystem(&mut File::open(&img).unwrap(), 0, mib << 20)
                .unwrap()
                .unwrap();
            assert_eq!(info.fs_type, *want);
            let b = run("blkid", ["-p", "-o", "export", img.to_str().unwrap()]);
            assert!(b.contains(&format!("TYPE={want}\n")), "{b}");
            assert!(b.contains(&format!("UUID={}\n", info.uuid.clone().unwrap())), "{b}");
            if let Some(label) = &info.label {
                assert!(b.contains(&format!("LABEL={label}\n")), "{b}");
            }
            assert_eq!(
                info.size,
                Some(mib << 20).filter(|_| *want != FsType::Xfs).or(info.size)
            );
        }
        let blank = dir.path().join("blank.img");
        sparse_file(&blank, 1 << 20);
        assert_eq!(
            probe_filesystem(&mut File::open(&blank).unwrap(), 0, 1 << 20).unwrap(),
            None
        );
    }
}
