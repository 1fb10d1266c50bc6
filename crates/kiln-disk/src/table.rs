//! Reading partition tables (GPT, MBR with logical partitions, or none) out
//! of any `Read + Seek` disk, such as a [`crate::DiskImage`].
//!
//! Input is untrusted: every count and offset is checked against the disk
//! size and capped before anything is allocated. A GPT whose primary header
//! is damaged is read from its backup, and the table says so in `warnings`.
//! Hand-written rather than through the `gpt` crate, whose reader needs a
//! writable device and sizes its buffers from the header unchecked.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};

use serde::Serialize;
use uuid::Uuid;

use crate::error::{Error, IoContext, Result};
use crate::partition::TableKind;

pub const LINUX_FS_GUID: Uuid = Uuid::from_u128(0x0fc63daf_8483_4772_8e79_3d69d8477de4);
pub const BIOS_BOOT_GUID: Uuid = Uuid::from_u128(0x21686148_6449_6e6f_744e_656564454649);
pub const ESP_GUID: Uuid = Uuid::from_u128(0xc12a7328_f81f_11d2_ba4b_00a0c93ec93b);

const GPT_NAMES: &[(u128, &str)] = &[
    (0x0fc63daf_8483_4772_8e79_3d69d8477de4, "Linux filesystem"),
    (0x21686148_6449_6e6f_744e_656564454649, "BIOS boot"),
    (0xc12a7328_f81f_11d2_ba4b_00a0c93ec93b, "EFI System"),
    (0x0657fd6d_a4ab_43c4_84e5_0933c84b4f4f, "Linux swap"),
    (0xe6d6d379_f507_44c2_a23c_238f2a3df928, "Linux LVM"),
    (0xa19d880f_05fc_4d3b_a006_743f0f84911e, "Linux RAID"),
    (0x4f68bce3_e8cd_4db1_96e7_fbcaf984b709, "Linux root (x86-64)"),
    (0xb921b045_1df0_41c3_af44_4c6f280d3fae, "Linux root (ARM-64)"),
    (0xbc13c2ff_59e6_4262_a352_b275fd6f7172, "Linux extended boot"),
    (0x933ac7e1_2eb4_4f13_b844_0e14e2aef915, "Linux home"),
    (0x4d21b016_b534_45c2_a9fb_5c16e091fd2d, "Linux variable data"),
    (0x7ec6f557_3bc5_4aca_b293_16ef5df639d1, "Linux temporary data"),
    (0x3b8f8425_20e0_4f3b_907f_1a25a76f98e8, "Linux server data"),
    (0x8da63339_0007_60c0_c436_083ac8230908, "Linux reserved"),
    (0xebd0a0a2_b9e5_4433_87c0_68b6b72699c7, "Microsoft basic data"),
    (0xe3c9e316_0b5c_4db8_817d_f92df00215ae, "Microsoft reserved"),
    (0x6a898cc3_1dd2_11b2_99a6_080020736631, "Solaris /usr & Apple ZFS"),
];

const MBR_NAMES: &[(u8, &str)] = &[
    (0x01, "FAT12"),
    (0x05, "Extended"),
    (0x06, "FAT16"),
    (0x07, "HPFS/NTFS/exFAT"),
    (0x0b, "W95 FAT32"),
    (0x0c, "W95 FAT32 (LBA)"),
    (0x0e, "W95 FAT16 (LBA)"),
    (0x0f, "W95 Ext'd (LBA)"),
    (0x82, "Linux swap"),
    (0x83, "Linux"),
    (0x85, "Linux extended"),
    (0x8e, "Linux LVM"),
    (0xee, "GPT"),
    (0xef, "EFI (FAT-12/16/32)"),
    (0xfd, "Linux raid autodetect"),
];

/// Entry arrays larger than this are refused as corrupt (the usual array is
/// 128 entries of 128 bytes).
const MAX_GPT_ENTRIES: u32 = 4096;
const MAX_GPT_ENTRY_SIZE: u32 = 4096;
/// Logical partitions followed in an extended-partition chain.
const MAX_LOGICAL: usize = 256;

/// A partition's type as the table stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartType {
    Gpt(Uuid),
    Mbr(u8),
}

impl PartType {
    /// A human name ("Linux filesystem", "EFI System"), or "unknown".
    pub fn name(self) -> &'static str {
        match self {
            PartType::Gpt(g) => GPT_NAMES.iter().find(|(v, _)| *v == g.as_u128()).map(|(_, n)| *n),
            PartType::Mbr(b) => MBR_NAMES.iter().find(|(v, _)| *v == b).map(|(_, n)| *n),
        }
        .unwrap_or("unknown")
    }

    pub fn is_esp(self) -> bool {
        matches!(self, PartType::Gpt(g) if g == ESP_GUID) || self == PartType::Mbr(0xef)
    }

    pub fn is_bios_boot(self) -> bool {
        self == PartType::Gpt(BIOS_BOOT_GUID)
    }

    pub fn is_extended(self) -> bool {
        matches!(self, PartType::Mbr(0x05 | 0x0f | 0x85))
    }
}

impl std::fmt::Display for PartType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartType::Gpt(g) => write!(f, "{}", g.hyphenated().encode_upper(&mut Uuid::encode_buffer())),
            PartType::Mbr(b) => write!(f, "0x{b:02x}"),
        }
    }
}

impl Serialize for PartType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One partition found on a disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// 1-based number as Linux names it (MBR logical partitions from 5).
    pub index: u32,
    /// Byte offset from the start of the disk.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    #[serde(rename = "type")]
    pub part_type: PartType,
    pub type_name: &'static str,
    /// GPT partition name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// GPT unique partition GUID, or the MBR PARTUUID (`xxxxxxxx-NN`).
    pub uuid: String,
}

/// The partition table of a disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionTable {
    /// `None` when the disk has no partition table.
    pub kind: Option<TableKind>,
    /// GPT disk GUID or MBR disk signature (`0x1234abcd`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_id: Option<String>,
    pub sector_size: u64,
    pub partitions: Vec<Partition>,
    /// Damage that did not prevent reading (a bad primary GPT header, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl PartitionTable {
    /// Where filesystems may be, as (partition index, start, size) in
    /// bytes: every partition but an MBR extended one, or the whole disk of
    /// `disk_size` bytes when it has no table.
    pub fn filesystem_spans(&self, disk_size: u64) -> Vec<(Option<u32>, u64, u64)> {
        if self.kind.is_none() {
            return vec![(None, 0, disk_size)];
        }
        self.partitions
            .iter()
            .filter(|p| !p.part_type.is_extended())
            .map(|p| (Some(p.index), p.start, p.size))
            .collect()
    }
}

/// Reads the partition table of the disk `r`.
pub fn read_partition_table<R: Read + Seek>(r: &mut R) -> Result<PartitionTable> {
    let disk_size = r.seek(SeekFrom::End(0)).ctx(|| "finding the disk size".into())?;
    let none = PartitionTable {
        kind: None,
        disk_id: None,
        sector_size: 512,
        partitions: vec![],
        warnings: vec![],
    };
    if disk_size < 512 {
        return Ok(none);
    }
    let mbr = read_at(r, 0, 512, "reading the MBR")?;
    if mbr[510..512] != [0x55, 0xaa] {
        return Ok(none);
    }
    let records = mbr_records(&mbr);
    if records.iter().any(|r| r.kind == 0xee) {
        return read_gpt(r, disk_size);
    }
    if looks_like_boot_sector(&mbr) || records.iter().any(|r| r.boot & 0x7f != 0) {
        return Ok(none);
    }
    read_mbr(r, disk_size, &mbr, &records)
}

#[derive(Debug, Clone, Copy)]
struct MbrRecord {
    boot: u8,
    kind: u8,
    start: u32,
    sectors: u32,
}

fn mbr_records(sector: &[u8]) -> [MbrRecord; 4] {
    std::array::from_fn(|i| {
        let e = &sector[446 + i * 16..446 + (i + 1) * 16];
        MbrRecord {
            boot: e[0],
            kind: e[4],
            start: le32(&e[8..]),
            sectors: le32(&e[12..]),
        }
    })
}

/// A FAT filesystem written on the whole disk also ends in 0x55AA; its
/// partition "records" are boot code.
fn looks_like_boot_sector(s: &[u8]) -> bool {
    matches!(s[0], 0xeb | 0xe9) && (&s[54..57] == b"FAT" || &s[82..87] == b"FAT32")
}

fn read_mbr<R: Read + Seek>(r: &mut R, disk_size: u64, mbr: &[u8], records: &[MbrRecord; 4]) -> Result<PartitionTable> {
    let signature = le32(&mbr[440..]);
    let mut partitions = Vec::new();
    let mut warnings = Vec::new();
    let push = |partitions: &mut Vec<Partition>, index: u32, kind: u8, start: u64, sectors: u64| -> Result<()> {
        let (start, size) = (start * 512, sectors * 512);
        if start + size > disk_size {
            return Err(Error::corrupt(format!(
                "MBR partition {index} (bytes {start}..{}) extends beyond the end of the {disk_size}-byte disk",
                start + size
            )));
        }
        partitions.push(Partition {
            index,
            start,
            size,
            part_type: PartType::Mbr(kind),
            type_name: PartType::Mbr(kind).name(),
            name: None,
            uuid: format!("{signature:08x}-{index:02x}"),
        });
        Ok(())
    };
    let mut extended = None;
    for (i, rec) in records.iter().enumerate() {
        if rec.kind == 0 || rec.sectors == 0 {
            continue;
        }
        push(
            &mut partitions,
            i as u32 + 1,
            rec.kind,
            rec.start.into(),
            rec.sectors.into(),
        )?;
        if PartType::Mbr(rec.kind).is_extended() && extended.is_none() {
            extended = Some(u64::from(rec.start));
        }
    }
    if let Some(ext_start) = extended {
        let mut ebr = ext_start;
        let mut seen = HashSet::new();
        let mut index = 5;
        while seen.insert(ebr) {
            if seen.len() > MAX_LOGICAL {
                warnings.push(format!("stopped after {MAX_LOGICAL} logical partitions"));
                break;
            }
            if (ebr + 1) * 512 > disk_size {
                return Err(Error::corrupt(format!(
                    "extended boot record at sector {ebr} is beyond the end of the disk"
                )));
            }
            let sector = read_at(r, ebr * 512, 512, "reading an extended boot record")?;
            if sector[510..512] != [0x55, 0xaa] {
                warnings.push(format!("extended boot record at sector {ebr} has no 0x55AA signature"));
                break;
            }
            let recs = mbr_records(&sector);
            if recs[0].kind != 0 && recs[0].sectors != 0 {
                push(
                    &mut partitions,
                    index,
                    recs[0].kind,
                    ebr + u64::from(recs[0].start),
                    recs[0].sectors.into(),
                )?;
                index += 1;
            }
            if !PartType::Mbr(recs[1].kind).is_extended() || recs[1].sectors == 0 {
                break;
            }
            ebr = ext_start + u64::from(recs[1].start);
        }
    }
    Ok(PartitionTable {
        kind: Some(TableKind::Mbr),
        disk_id: Some(format!("0x{signature:08x}")),
        sector_size: 512,
        partitions,
        warnings,
    })
}

struct GptHeader {
    disk_guid: Uuid,
    entries_lba: u64,
    entries: u32,
    entry_size: u32,
    entries_crc: u32,
}

fn read_gpt<R: Read + Seek>(r: &mut R, disk_size: u64) -> Result<PartitionTable> {
    // The sector size is whichever puts the header signature at LBA 1.
    let mut sector_size = 512;
    for ss in [512u64, 4096] {
        if disk_size >= 2 * ss && read_at(r, ss, 8, "reading the GPT header")? == b"EFI PART" {
            sector_size = ss;
            break;
        }
    }
    let last_lba = disk_size / sector_size - 1;
    let mut warnings = Vec::new();
    let primary = parse_gpt_header(r, sector_size, 1, disk_size).and_then(|h| {
        let entries = read_gpt_entries(r, &h, sector_size)?;
        Ok((h, entries))
    });
    let (header, entries) = match primary {
        Ok(found) => found,
        Err(primary_err) => {
            let backup = parse_gpt_header(r, sector_size, last_lba, disk_size).and_then(|h| {
                let entries = read_gpt_entries(r, &h, sector_size)?;
                Ok((h, entries))
            });
            match backup {
                Ok(found) => {
                    warnings.push(format!(
                        "primary GPT is unusable ({primary_err}); read the backup at LBA {last_lba}"
                    ));
                    found
                }
                Err(_) => return Err(primary_err.context_for("reading the GPT (the backup is unusable too)")),
            }
        }
    };

    let mut partitions = Vec::new();
    for (i, e) in entries.chunks_exact(header.entry_size as usize).enumerate() {
        let type_guid = Uuid::from_bytes_le(e[0..16].try_into().expect("16 bytes"));
        if type_guid.is_nil() {
            continue;
        }
        let index = i as u32 + 1;
        let (first, last) = (le64(&e[32..]), le64(&e[40..]));
        if first > last || last > last_lba {
            return Err(Error::corrupt(format!(
                "GPT partition {index} spans LBA {first}..={last}, outside the disk's {} sectors",
                last_lba + 1
            )));
        }
        let name: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        let name = String::from_utf16_lossy(&name).trim_end_matches('\0').to_owned();
        let part_type = PartType::Gpt(type_guid);
        partitions.push(Partition {
            index,
            start: first * sector_size,
            size: (last - first + 1) * sector_size,
            part_type,
            type_name: part_type.name(),
            name: Some(name),
            uuid: Uuid::from_bytes_le(e[16..32].try_into().expect("16 bytes")).to_string(),
        });
    }
    Ok(PartitionTable {
        kind: Some(TableKind::Gpt),
        disk_id: Some(header.disk_guid.to_string()),
        sector_size,
        partitions,
        warnings,
    })
}

fn parse_gpt_header<R: Read + Seek>(r: &mut R, ss: u64, lba: u64, disk_size: u64) -> Result<GptHeader> {
    let at = format!("GPT header at LBA {lba}");
    let mut h = read_at(r, lba * ss, ss as usize, &format!("reading the {at}"))?;
    if &h[0..8] != b"EFI PART" {
        return Err(Error::invalid(format!("{at} has no \"EFI PART\" signature")));
    }
    let header_size = le32(&h[12..]);
    if !(92..=ss as u32).contains(&header_size) {
        return Err(Error::corrupt(format!(
            "{at} claims an impossible size of {header_size} bytes"
        )));
    }
    let crc = le32(&h[16..]);
    h[16..20].fill(0);
    if crc32fast::hash(&h[..header_size as usize]) != crc {
        return Err(Error::corrupt(format!("{at} fails its CRC32 check")));
    }
    let header = GptHeader {
        disk_guid: Uuid::from_bytes_le(h[56..72].try_into().expect("16 bytes")),
        entries_lba: le64(&h[72..]),
        entries: le32(&h[80..]),
        entry_size: le32(&h[84..]),
        entries_crc: le32(&h[88..]),
    };
    if header.entries > MAX_GPT_ENTRIES
        || header.entry_size < 128
        || header.entry_size > MAX_GPT_ENTRY_SIZE
        || !header.entry_size.is_power_of_two()
    {
        return Err(Error::corrupt(format!(
            "{at} describes {} entries of {} bytes, which kiln refuses to read",
            header.entries, header.entry_size
        )));
    }
    let array_end = header
        .entries_lba
        .checked_mul(ss)
        .and_then(|s| s.checked_add(u64::from(header.entries) * u64::from(header.entry_size)));
    if array_end.is_none_or(|end| end > disk_size) {
        return Err(Error::corrupt(format!(
            "{at} puts its entry array beyond the end of the disk"
        )));
    }
    Ok(header)
}

fn read_gpt_entries<R: Read + Seek>(r: &mut R, h: &GptHeader, ss: u64) -> Result<Vec<u8>> {
    let len = h.entries as usize * h.entry_size as usize;
    let entries = read_at(r, h.entries_lba * ss, len, "reading the GPT entry array")?;
    if crc32fast::hash(&entries) != h.entries_crc {
        return Err(Error::corrupt(format!(
            "GPT entry array at LBA {} fails its CRC32 check",
            h.entries_lba
        )));
    }
    Ok(entries)
}

pub(crate) fn read_at<R: Read + Seek>(r: &mut R, offset: u64, len: usize, what: &str) -> Result<Vec<u8>> {
    let mut buf = vec![0; len];
    r.seek(SeekFrom::Start(offset))
        .ctx(|| format!("{what} at offset {offset}"))?;
    r.read_exact(&mut buf).ctx(|| format!("{what} at offset {offset}"))?;
    Ok(buf)
}

pub(crate) fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

pub(crate) fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;
    use crate::testutil::{run, sparse_file, write_at};
    use crate::{layout, write_partition_table, PartKind, PartitionSpec};

    fn gpt_disk(dir: &std::path::Path) -> std::path::PathBuf {
        let disk = dir.join("gpt.raw");
        sparse_file(&disk, 32 << 20);
        let parts = [PartitionSpec {
            kind: PartKind::LinuxFs,
            size: 0,
            name: "root".into(),
            guid: Uuid::from_u128(5),
        }];
        write_partition_table(
            &disk,
            &layout(32 << 20, TableKind::Gpt, &parts).unwrap(),
            Uuid::from_u128(9),
        )
        .unwrap();
        disk
    }

    #[test]
    fn damaged_primary_gpt_falls_back_to_backup() {
        let dir = tempfile::tempdir().unwrap();
        let disk = gpt_disk(dir.path());
        write_at(&disk, 512 + 24, &[0xff; 4]); // breaks the header CRC
        let t = read_partition_table(&mut File::open(&disk).unwrap()).unwrap();
        assert_eq!(t.partitions.len(), 1);
        assert_eq!(t.partitions[0].uuid, Uuid::from_u128(5).to_string());
        assert!(t.warnings[0].contains("CRC32"), "{:?}", t.warnings);
    }

    #[test]
    fn hostile_gpt_is_refused_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let disk = gpt_disk(dir.path());
        // 2^32-1 entries, with a correct header CRC so only the cap stops it.
        let mut h = std::fs::read(&disk).unwrap()[512..1024].to_vec();
        h[80..84].copy_from_slice(&u32::MAX.to_le_bytes());
        h[16..20].fill(0);
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        write_at(&disk, 512, &h);
        let backup = (32 << 20) - 512;
        write_at(&disk, backup, &[0; 512]);
        let e = read_partition_table(&mut File::open(&disk).unwrap()).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt);
        assert!(
            crate::testutil::chain(&e).contains("refuses"),
            "{}",
            crate::testutil::chain(&e)
        );
    }

    #[test]
    fn mbr_logical_partitions_as_sfdisk_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("mbr.raw");
        sparse_file(&disk, 64 << 20);
        let d = disk.to_str().unwrap();
        let script = format!(
            "label: dos\nlabel-id: 0x0badcafe\n{d}1 : start=2048, size=16384, type=83\n{d}2 : start=18432, size=81920, type=5\n\
             {d}5 : start=20480, size=20480, type=82\n{d}6 : start=43008, size=20480, type=8e\n"
        );
        kiln_exec::Cmd::new("sfdisk")
            .arg(&disk)
            .stdin_bytes(script)
            .run()
            .unwrap();
        let t = read_partition_table(&mut File::open(&disk).unwrap()).unwrap();
        let ours: Vec<_> = t
            .partitions
            .iter()
            .map(|p| (p.index, p.start / 512, p.size / 512, p.part_type.to_string()))
            .collect();
        let json: serde_json::Value = serde_json::from_str(&run("sfdisk", ["--json", disk.to_str().unwrap()])).unwrap();
        let theirs: Vec<_> = json["partitiontable"]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let node = p["node"].as_str().unwrap();
                let index: u32 = node[disk.to_str().unwrap().len()..].parse().unwrap();
                (
                    index,
                    p["start"].as_u64().unwrap(),
                    p["size"].as_u64().unwrap(),
                    format!("0x{:0>2}", p["type"].as_str().unwrap()),
                )
            })
            .collect();
        assert_eq!(ours, theirs);
        assert_eq!(t.disk_id.as_deref(), Some("0x0badcafe"));
        assert_eq!(
            t.partitions.iter().map(|p| p.type_name).collect::<Vec<_>>(),
            ["Linux", "Extended", "Linux swap", "Linux LVM"]
        );
    }

    #[test]
    fn no_table() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("blank.raw");
        sparse_file(&disk, 1 << 20);
        let t = read_partition_table(&mut File::open(&disk).unwrap()).unwrap();
        assert_eq!((t.kind, t.partitions.len()), (None, 0));
    }
}
