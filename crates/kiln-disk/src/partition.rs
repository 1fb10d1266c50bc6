//! Partition layouts and writing them as a GPT or an MBR into an existing
//! disk file.
//!
//! Every identifier is an input (disk GUID, partition GUIDs), so the same
//! layout always yields the same bytes. The table is written after the
//! filesystems have been made in place at their offsets, and only touches
//! the sectors a partition table owns: the MBR's boot code area (bytes
//! 0..440) is preserved, so GRUB's boot.img may be written before or after.
//! Non-goals: editing an existing table, hybrid MBRs, 4 KiB sectors.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use serde::Serialize;
use uuid::Uuid;

use crate::error::{Error, IoContext, Result};
use crate::table::{BIOS_BOOT_GUID, ESP_GUID, LINUX_FS_GUID};

/// Logical sector size of every disk kiln writes.
pub const SECTOR: u64 = 512;
/// Partition alignment, and the offset of the first partition.
pub const ALIGNMENT: u64 = 1 << 20;
/// Sectors a GPT needs at the end of the disk: 32 for 128 entries of 128
/// bytes, plus the backup header.
const GPT_TAIL_SECTORS: u64 = 33;

/// Which partition table to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    Gpt,
    Mbr,
}

/// What a partition is for; decides its GPT type GUID or MBR type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartKind {
    /// A Linux filesystem (`0FC63DAF-...`, MBR 0x83).
    LinuxFs,
    /// GRUB's BIOS boot partition (`21686148-...`); GPT only.
    BiosBoot,
    /// EFI system partition (`C12A7328-...`, MBR 0xEF).
    Esp,
    /// The x86-64 root of the Discoverable Partitions Specification
    /// (`4F68BCE3-...`).
    RootX86_64,
    /// /boot as an Extended Boot Loader partition (`BC13C2FF-...`, MBR 0xEA).
    Xbootldr,
    /// /var (`4D21B016-...`).
    Var,
    /// /var/tmp (`7EC6F557-...`).
    VarTmp,
    /// /home (`933AC7E1-...`).
    Home,
    /// /srv (`3B8F8425-...`).
    Srv,
    /// Linux swap (`0657FD6D-...`, MBR 0x82).
    Swap,
    /// Microsoft basic data (`EBD0A0A2-...`, MBR 0x0C): a FAT partition
    /// for files that every operating system shows.
    BasicData,
}

impl PartKind {
    pub fn gpt_type(self) -> Uuid {
        match self {
            PartKind::LinuxFs => LINUX_FS_GUID,
            PartKind::BiosBoot => BIOS_BOOT_GUID,
            PartKind::Esp => ESP_GUID,
            PartKind::RootX86_64 => Uuid::from_u128(0x4f68bce3_e8cd_4db1_96e7_fbcaf984b709),
            PartKind::Xbootldr => Uuid::from_u128(0xbc13c2ff_59e6_4262_a352_b275fd6f7172),
            PartKind::Var => Uuid::from_u128(0x4d21b016_b534_45c2_a9fb_5c16e091fd2d),
            PartKind::VarTmp => Uuid::from_u128(0x7ec6f557_3bc5_4aca_b293_16ef5df639d1),
            PartKind::Home => Uuid::from_u128(0x933ac7e1_2eb4_4f13_b844_0e14e2aef915),
            PartKind::Srv => Uuid::from_u128(0x3b8f8425_20e0_4f3b_907f_1a25a76f98e8),
            PartKind::Swap => Uuid::from_u128(0x0657fd6d_a4ab_43c4_84e5_0933c84b4f4f),
            PartKind::BasicData => Uuid::from_u128(0xebd0a0a2_b9e5_4433_87c0_68b6b72699c7),
        }
    }

    /// The MBR type byte, if this kind exists on an MBR disk.
    pub fn mbr_type(self) -> Option<u8> {
        match self {
            PartKind::LinuxFs
            | PartKind::RootX86_64
            | PartKind::Var
            | PartKind::VarTmp
            | PartKind::Home
            | PartKind::Srv => Some(0x83),
            PartKind::BiosBoot => None,
            PartKind::Esp => Some(0xef),
            PartKind::Xbootldr => Some(0xea),
            PartKind::Swap => Some(0x82),
            PartKind::BasicData => Some(0x0c),
        }
    }
}

/// A partition the caller wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSpec {
    pub kind: PartKind,
    /// Size in bytes, rounded up to whole sectors; 0 means "the rest of the
    /// disk" (last partition only).
    pub size: u64,
    /// GPT partition name (ignored on MBR).
    pub name: String,
    /// GPT unique partition GUID (ignored on MBR, where the PARTUUID is
    /// derived from the disk signature).
    pub guid: Uuid,
}

/// A partition placed on the disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlacedPartition {
    /// 1-based partition number, as in `/dev/sda1`.
    pub index: u32,
    pub kind: PartKind,
    /// Byte offset from the start of the disk (sector-aligned).
    pub start: u64,
    /// Size in bytes (whole sectors).
    pub size: u64,
    pub name: String,
    pub guid: Uuid,
}

/// Where every partition goes on a disk of a given size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layout {
    pub table: TableKind,
    pub disk_size: u64,
    pub partitions: Vec<PlacedPartition>,
}

/// Places `parts` one after another, each starting on a 1 MiB boundary, the
/// first at 1 MiB.
pub fn layout(disk_size: u64, table: TableKind, parts: &[PartitionSpec]) -> Result<Layout> {
    if !disk_size.is_multiple_of(SECTOR) {
        return Err(Error::input(format!(
            "disk size {disk_size} is not a multiple of {SECTOR} bytes"
        )));
    }
    let usable_end = match table {
        TableKind::Gpt => disk_size.saturating_sub(GPT_TAIL_SECTORS * SECTOR),
        TableKind::Mbr => disk_size,
    };
    let mut next = ALIGNMENT;
    let mut placed = Vec::with_capacity(parts.len());
    for (i, spec) in parts.iter().enumerate() {
        let index = i as u32 + 1;
        if table == TableKind::Mbr && spec.kind.mbr_type().is_none() {
            return Err(Error::input(format!(
                "partition {index} ({:?}) cannot live on an MBR disk",
                spec.kind
            )));
        }
        if table == TableKind::Mbr && index > 4 {
            return Err(Error::input(
                "an MBR holds at most 4 partitions (kiln writes no extended partitions)",
            ));
        }
        let start = next;
        let size = if spec.size == 0 {
            if i + 1 != parts.len() {
                return Err(Error::input(format!(
                    "only the last partition may fill the disk (size 0); partition {index} does"
                )));
            }
            usable_end.saturating_sub(start) / ALIGNMENT * ALIGNMENT
        } else {
            spec.size.div_ceil(SECTOR) * SECTOR
        };
        if size == 0 || start.checked_add(size).is_none_or(|end| end > usable_end) {
            return Err(Error::input(format!(
                "partition {index} ({} bytes at offset {start}) does not fit on a {disk_size}-byte disk",
                spec.size
            )));
        }
        if table == TableKind::Mbr && (start + size) / SECTOR > u64::from(u32::MAX) {
            return Err(Error::input(format!(
                "partition {index} ends beyond 2 TiB, which an MBR cannot address; use GPT"
            )));
        }
        placed.push(PlacedPartition {
            index,
            kind: spec.kind,
            start,
            size,
            name: spec.name.clone(),
            guid: spec.guid,
        });
        next = (start + size).div_ceil(ALIGNMENT) * ALIGNMENT;
    }
    Ok(Layout {
        table,
        disk_size,
        partitions: placed,
    })
}

/// Writes `layout`'s partition table into `disk`, which must already be
/// `layout.disk_size` bytes long. `disk_guid` is the GPT disk GUID; for an
/// MBR its first four bytes are the disk signature.
pub fn write_partition_table(disk: &Path, layout: &Layout, disk_guid: Uuid) -> Result<()> {
    let what = || format!("writing {:?} partition table to {}", layout.table, disk.display());
    let mut file = OpenOptions::new().read(true).write(true).open(disk).ctx(what)?;
    let len = file.metadata().ctx(what)?.len();
    if len != layout.disk_size {
        return Err(Error::input(format!(
            "{}: the file is {len} bytes but the layout is for a {}-byte disk",
            disk.display(),
            layout.disk_size
        )));
    }
    check_layout(layout)?;
    match layout.table {
        TableKind::Gpt => write_gpt(&mut file, layout, disk_guid).map_err(|e| e.context_for(what()))?,
        TableKind::Mbr => write_mbr(&mut file, layout, disk_guid).ctx(what)?,
    }
    file.sync_all().ctx(what)
}

/// A hand-made [`Layout`] gets the checks [`layout`] applies: whole
/// sectors, in order, no overlap, inside the usable area, MBR limits.
fn check_layout(layout: &Layout) -> Result<()> {
    let usable_end = match layout.table {
        TableKind::Gpt => layout.disk_size.saturating_sub(GPT_TAIL_SECTORS * SECTOR),
        TableKind::Mbr => layout.disk_size.min(u64::from(u32::MAX) * SECTOR),
    };
    let first = match layout.table {
        TableKind::Gpt => 34 * SECTOR,
        TableKind::Mbr => SECTOR,
    };
    let mut prev_end = first;
    for p in &layout.partitions {
        let bad = |why: &str| {
            Err(Error::input(format!(
                "partition {} ({} bytes at {}): {why}",
                p.index, p.size, p.start
            )))
        };
        if p.start % SECTOR != 0 || p.size % SECTOR != 0 || p.size == 0 {
            return bad("not a whole number of sectors");
        }
        if p.start < prev_end {
            return bad("overlaps the table or the previous partition");
        }
        if p.start + p.size > usable_end {
            return bad("extends past the usable end of the disk");
        }
        if layout.table == TableKind::Mbr && (p.index > 4 || p.kind.mbr_type().is_none()) {
            return bad("not possible on an MBR disk");
        }
        prev_end = p.start + p.size;
    }
    Ok(())
}

/// The GPT goes through the `gpt` crate, which writes both headers, both
/// entry arrays and their CRCs. The protective MBR is written with
/// `update_conservative` so the boot code area survives.
fn write_gpt(file: &mut std::fs::File, layout: &Layout, disk_guid: Uuid) -> Result<()> {
    use gpt::partition_types::{OperatingSystem, Type};
    let gpt_err = |e: gpt::GptError| Error::with_source(crate::ErrorKind::Io, "writing GPT", e);

    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(&mut *file, Some(disk_guid))
        .map_err(gpt_err)?;
    let entries = layout
        .partitions
        .iter()
        .map(|p| {
            let entry = gpt::partition::Partition {
                part_type_guid: Type {
                    guid: p.kind.gpt_type(),
                    os: OperatingSystem::Linux,
                },
                part_guid: p.guid,
                first_lba: p.start / SECTOR,
                last_lba: (p.start + p.size) / SECTOR - 1,
                flags: 0,
                name: p.name.clone(),
            };
            (p.index, entry)
        })
        .collect();
    disk.update_partitions(entries).map_err(gpt_err)?;
    let file = disk.write().map_err(gpt_err)?;

    let sectors = (layout.disk_size / SECTOR - 1).min(u64::from(u32::MAX)) as u32;
    gpt::mbr::ProtectiveMBR::with_lb_size(sectors)
        .update_conservative(file)
        .map_err(|e| Error::with_source(crate::ErrorKind::Io, "writing protective MBR", e))?;
    Ok(())
}

/// Hand-written: an MBR is 4 records of 16 bytes plus a signature, and the
/// `mbrman` crate would bring bincode, bitvec and serde-big-array for it.
/// CHS fields get the "beyond CHS" marker (0xFE 0xFF 0xFF) that fdisk and
/// parted write for LBA-only disks.
fn write_mbr(file: &mut std::fs::File, layout: &Layout, disk_guid: Uuid) -> std::io::Result<()> {
    let mut tail = [0u8; 72]; // bytes 440..512
    tail[0..4].copy_from_slice(&disk_guid.as_bytes()[0..4]);
    for (slot, p) in layout.partitions.iter().enumerate() {
        let rec = &mut tail[6 + slot * 16..6 + (slot + 1) * 16];
        rec[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
        rec[4] = p.kind.mbr_type().unwrap_or(0x83);
        rec[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
        rec[8..12].copy_from_slice(&((p.start / SECTOR) as u32).to_le_bytes());
        rec[12..16].copy_from_slice(&((p.size / SECTOR) as u32).to_le_bytes());
    }
    tail[70] = 0x55;
    tail[71] = 0xaa;
    file.seek(SeekFrom::Start(440))?;
    file.write_all(&tail)
}

/// The MBR disk signature `write_partition_table` derives from a disk GUID,
/// as `blkid` prints it in PARTUUIDs (`xxxxxxxx-01`).
pub fn mbr_signature(disk_guid: Uuid) -> u32 {
    let b = disk_guid.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind kiln writes is one the table reader names, so `kiln
    /// inspect` shows what a partition is for.
    #[test]
    fn every_kind_has_a_name() {
        use crate::table::PartType;
        let kinds = [
            (PartKind::LinuxFs, "Linux filesystem"),
            (PartKind::BiosBoot, "BIOS boot"),
            (PartKind::Esp, "EFI System"),
            (PartKind::RootX86_64, "Linux root (x86-64)"),
            (PartKind::Xbootldr, "Linux extended boot"),
            (PartKind::Var, "Linux variable data"),
            (PartKind::VarTmp, "Linux temporary data"),
            (PartKind::Home, "Linux home"),
            (PartKind::Srv, "Linux server data"),
            (PartKind::Swap, "Linux swap"),
            (PartKind::BasicData, "Microsoft basic data"),
        ];
        for (kind, name) in kinds {
            assert_eq!(PartType::Gpt(kind.gpt_type()).name(), name, "{kind:?}");
        }
        assert_eq!(PartKind::Swap.mbr_type(), Some(0x82));
        assert_eq!(PartKind::Xbootldr.mbr_type(), Some(0xea));
    }

    fn spec(kind: PartKind, size: u64, n: u8) -> PartitionSpec {
        PartitionSpec {
            kind,
            size,
            name: format!("p{n}"),
            guid: Uuid::from_bytes([n; 16]),
        }
    }

    #[test]
    fn layout_aligns_partitions() {
        let parts = [
            spec(PartKind::BiosBoot, 1 << 20, 1),
            spec(PartKind::Esp, 100 << 20, 2),
            spec(PartKind::LinuxFs, 3 * 1000, 3),
            spec(PartKind::LinuxFs, 0, 4),
        ];
        let l = layout(1 << 30, TableKind::Gpt, &parts).unwrap();
        let got: Vec<_> = l.partitions.iter().map(|p| (p.index, p.start >> 20, p.size)).collect();
        assert_eq!(
            got,
            [
                (1, 1, 1 << 20),
                (2, 2, 100 << 20),
                (3, 102, 3072),
                (4, 103, (1023 - 103) << 20)
            ]
        );
    }

    #[test]
    fn layout_rejects_what_does_not_fit() {
        let cases: &[(TableKind, Vec<PartitionSpec>, &str)] = &[
            (
                TableKind::Gpt,
                vec![spec(PartKind::LinuxFs, 1 << 30, 1)],
                "does not fit",
            ),
            (
                TableKind::Gpt,
                vec![spec(PartKind::LinuxFs, 0, 1), spec(PartKind::LinuxFs, 1, 2)],
                "only the last",
            ),
            (TableKind::Mbr, vec![spec(PartKind::BiosBoot, 1 << 20, 1)], "MBR"),
            (
                TableKind::Mbr,
                (1..=5).map(|n| spec(PartKind::LinuxFs, 1 << 20, n)).collect(),
                "at most 4",
            ),
        ];
        for (table, parts, needle) in cases {
            let err = layout(64 << 20, *table, parts).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
        // A GPT needs its 33 tail sectors; an MBR does not.
        let exact = [spec(PartKind::LinuxFs, 63 << 20, 1)];
        assert!(layout(64 << 20, TableKind::Gpt, &exact).is_err());
        assert!(layout(64 << 20, TableKind::Mbr, &exact).is_ok());
    }

    /// Writes `parts` to a fresh sparse disk and returns its path.
    fn disk_with(
        dir: &Path,
        table: TableKind,
        parts: &[PartitionSpec],
        disk_guid: Uuid,
    ) -> (std::path::PathBuf, Layout) {
        let disk = dir.join("disk.raw");
        crate::testutil::sparse_file(&disk, 64 << 20);
        let l = layout(64 << 20, table, parts).unwrap();
        write_partition_table(&disk, &l, disk_guid).unwrap();
        (disk, l)
    }

    fn sfdisk_json(disk: &Path) -> serde_json::Value {
        crate::testutil::run("sfdisk", ["--verify", disk.to_str().unwrap()]);
        let out = crate::testutil::run("sfdisk", ["--json", disk.to_str().unwrap()]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["partitiontable"].clone()
    }

    fn blkid(disk: &Path) -> String {
        crate::testutil::run("blkid", ["-p", "-o", "export", disk.to_str().unwrap()])
    }

    #[test]
    fn gpt_agrees_with_sfdisk_and_blkid() {
        let dir = tempfile::tempdir().unwrap();
        let disk_guid = Uuid::from_u128(0x1234_5678_9abc_def0_1122_3344_5566_7788);
        let parts = [
            spec(PartKind::BiosBoot, 1 << 20, 1),
            spec(PartKind::Esp, 8 << 20, 2),
            PartitionSpec {
                name: "root fs é".into(),
                ..spec(PartKind::LinuxFs, 0, 3)
            },
        ];
        // Boot code written before the table must survive it.
        let (disk, l) = {
            let disk = dir.path().join("disk.raw");
            crate::testutil::sparse_file(&disk, 64 << 20);
            crate::testutil::write_at(&disk, 0, &[0xeb; 440]);
            let l = layout(64 << 20, TableKind::Gpt, &parts).unwrap();
            write_partition_table(&disk, &l, disk_guid).unwrap();
            (disk, l)
        };
        let t = sfdisk_json(&disk);
        assert_eq!(t["label"], "gpt");
        assert_eq!(t["id"], disk_guid.to_string().to_uppercase());
        let got = t["partitions"].as_array().unwrap();
        assert_eq!(got.len(), 3);
        for (p, want) in got.iter().zip(&l.partitions) {
            assert_eq!(p["start"], want.start / SECTOR);
            assert_eq!(p["size"], want.size / SECTOR);
            assert_eq!(p["type"], want.kind.gpt_type().to_string().to_uppercase());
            assert_eq!(p["uuid"], want.guid.to_string().to_uppercase());
            assert_eq!(p["name"], want.name.as_str());
        }
        let b = blkid(&disk);
        assert!(b.contains("PTTYPE=gpt"), "{b}");
        assert!(b.contains(&format!("PTUUID={disk_guid}")), "{b}");
        assert_eq!(std::fs::read(&disk).unwrap()[..440], [0xeb; 440]);

        // Our reader sees the same table.
        let read = crate::read_partition_table(&mut std::fs::File::open(&disk).unwrap()).unwrap();
        assert_eq!(read.kind, Some(TableKind::Gpt));
        assert_eq!(read.disk_id.as_deref(), Some(disk_guid.to_string().as_str()));
        let summary: Vec<_> = read
            .partitions
            .iter()
            .map(|p| (p.index, p.start, p.size, p.type_name, p.name.clone().unwrap()))
            .collect();
        let want: Vec<_> = l
            .partitions
            .iter()
            .map(|p| {
                (
                    p.index,
                    p.start,
                    p.size,
                    crate::PartType::Gpt(p.kind.gpt_type()).name(),
                    p.name.clone(),
                )
            })
            .collect();
        assert_eq!(summary, want);
        assert!(read.partitions[0].part_type.is_bios_boot() && read.partitions[1].part_type.is_esp());
    }

    #[test]
    fn hand_made_layouts_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.raw");
        crate::testutil::sparse_file(&disk, 8 << 20);
        let mut l = layout(
            8 << 20,
            TableKind::Gpt,
            &[spec(PartKind::LinuxFs, 1 << 20, 1), spec(PartKind::LinuxFs, 0, 2)],
        )
        .unwrap();
        l.partitions[1].start -= SECTOR;
        let err = write_partition_table(&disk, &l, Uuid::nil()).unwrap_err();
        assert!(err.to_string().contains("overlaps"), "{err}");
        l.partitions[1].start += SECTOR;
        l.partitions[1].size += 1 << 20;
        let err = write_partition_table(&disk, &l, Uuid::nil()).unwrap_err();
        assert!(err.to_string().contains("usable end"), "{err}");
    }

    #[test]
    fn same_inputs_same_bytes() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let parts = [spec(PartKind::LinuxFs, 0, 7)];
        let (da, _) = disk_with(a.path(), TableKind::Gpt, &parts, Uuid::from_u128(42));
        let (db, _) = disk_with(b.path(), TableKind::Gpt, &parts, Uuid::from_u128(42));
        assert!(std::fs::read(da).unwrap() == std::fs::read(db).unwrap());
    }

    #[test]
    fn mbr_agrees_with_sfdisk_and_blkid() {
        let dir = tempfile::tempdir().unwrap();
        let disk_guid = Uuid::from_u128(0xdead_beef_0000_0000_0000_0000_0000_0001);
        let parts = [spec(PartKind::Esp, 8 << 20, 1), spec(PartKind::LinuxFs, 0, 2)];
        let (disk, l) = disk_with(dir.path(), TableKind::Mbr, &parts, disk_guid);
        let t = sfdisk_json(&disk);
        assert_eq!(t["label"], "dos");
        let sig = mbr_signature(disk_guid);
        assert_eq!(t["id"], format!("0x{sig:08x}"));
        let got = t["partitions"].as_array().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0]["type"], "ef");
        assert_eq!(got[1]["type"], "83");
        for (p, want) in got.iter().zip(&l.partitions) {
            assert_eq!(p["start"], want.start / SECTOR);
            assert_eq!(p["size"], want.size / SECTOR);
        }
        let b = blkid(&disk);
        assert!(
            b.contains("PTTYPE=dos") && b.contains(&format!("PTUUID={sig:08x}")),
            "{b}"
        );

        let read = crate::read_partition_table(&mut std::fs::File::open(&disk).unwrap()).unwrap();
        assert_eq!(read.kind, Some(TableKind::Mbr));
        let summary: Vec<_> = read
            .partitions
            .iter()
            .map(|p| (p.index, p.start, p.size, p.uuid.clone()))
            .collect();
        assert_eq!(
            summary,
            l.partitions
                .iter()
                .map(|p| (p.index, p.start, p.size, format!("{sig:08x}-{:02x}", p.index)))
                .collect::<Vec<_>>()
        );
    }
}
