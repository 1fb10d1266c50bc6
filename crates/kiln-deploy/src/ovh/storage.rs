//! The `storage` part of OVH's reinstall API (reference §1.8.2), its
//! validation as the API does it (§1.8.4, §1.9), and its translation into
//! the installer's disk plan: which partition goes on which disk, which md
//! arrays and LVM volumes assemble them, and which filesystem is mounted
//! where under `/tmp/a`.
//!
//! The plan is rendered as a list of calls to the installer's shell
//! functions (`part`, `raid`, `pv`, `lv`, `fs`, `swap`), so that all of the
//! layout logic lives here, in Rust, where it is unit-tested.

use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use kiln_spec::Firmware;
use serde::{Deserialize, Serialize};

/// One entry of the API's `storage` array.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Storage {
    #[serde(default)]
    pub disk_group_id: Option<u32>,
    #[serde(default)]
    pub hardware_raid: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    pub partitioning: Option<Partitioning>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Partitioning {
    #[serde(default)]
    pub disks: Option<u32>,
    #[serde(default)]
    pub layout: Option<Vec<LayoutEntry>>,
    #[serde(default)]
    pub scheme_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LayoutEntry {
    pub file_system: FileSystem,
    pub mount_point: String,
    /// Software RAID level; the API's default is 1.
    #[serde(default)]
    pub raid_level: Option<u8>,
    /// MiB; 0 or absent fills the disk.
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub extras: Option<Extras>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extras {
    #[serde(default)]
    pub lv: Option<Named>,
    #[serde(default)]
    pub zp: Option<Named>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Named {
    pub name: String,
}

/// The API's `fileSystem` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileSystem {
    Btrfs,
    Ext3,
    Ext4,
    Fat16,
    None,
    Ntfs,
    Reiserfs,
    Swap,
    Ufs,
    Vmfs5,
    Vmfs6,
    Vmfsl,
    Xfs,
    Zfs,
}

impl FileSystem {
    fn mkfs_name(self) -> Option<&'static str> {
        match self {
            FileSystem::Btrfs => Some("btrfs"),
            FileSystem::Ext3 => Some("ext3"),
            FileSystem::Ext4 => Some("ext4"),
            FileSystem::Fat16 => Some("vfat"),
            FileSystem::Xfs => Some("xfs"),
            _ => None,
        }
    }
}

/// Size of the config drive OVH puts at the end of the first disk.
pub const CONFIG_DRIVE_MIB: u64 = 64;
/// Size of the ESP OVH creates on every disk of a UEFI server.
pub const ESP_MIB: u64 = 511;

/// Parses the API's `storage` JSON (an array, or a single object).
pub fn parse_storage(json: &str) -> Result<Vec<Storage>> {
    let value: serde_json::Value = serde_json::from_str(json).context("parsing the storage JSON")?;
    let list = match value {
        serde_json::Value::Array(_) => value,
        other => serde_json::Value::Array(vec![other]),
    };
    serde_json::from_value(list).context("reading the storage JSON (fields as in dedicated.server.reinstall.Storage)")
}

/// OVH's default for the simulation: swap on every disk and `/` in ext4,
/// RAID1 across the disks, filling them.
pub fn default_layout() -> Vec<LayoutEntry> {
    vec![
        LayoutEntry {
            file_system: FileSystem::Swap,
            mount_point: "swap".into(),
            raid_level: None,
            size: Some(512),
            extras: None,
        },
        LayoutEntry {
            file_system: FileSystem::Ext4,
            mount_point: "/".into(),
            raid_level: Some(1),
            size: Some(0),
            extras: None,
        },
    ]
}

/// The installer's plan for `layout` on `disks` disks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskPlan {
    pub disks: u32,
    pub boot: Firmware,
    /// Shell function calls for the installer, one per line.
    pub script: String,
    /// Mount points in mount order, for progress and tests.
    pub mounts: Vec<String>,
    /// Whether any md array is created (mdadm.conf is then written).
    pub uses_raid: bool,
}

/// Chooses the storage entry the simulation uses and its layout, and
/// validates it the way the API would.
pub fn select_layout(storage: &[Storage], disks: u32) -> Result<(u32, Vec<LayoutEntry>)> {
    if storage.len() > 1 {
        bail!("only one storage entry is supported (the API answers DiskGroupMultipleConfigs too)");
    }
    let part = storage.first().and_then(|s| s.partitioning.clone());
    if storage
        .first()
        .is_some_and(|s| s.hardware_raid.as_ref().is_some_and(|h| !h.is_empty()))
    {
        bail!("hardware RAID cannot be simulated: the virtual disks have no RAID controller");
    }
    let wanted = part.as_ref().and_then(|p| p.disks).unwrap_or(disks);
    if wanted > disks {
        bail!("partitioning.disks = {wanted} but the simulated server has {disks} disks (PartitioningTooManyDisks); raise --disks");
    }
    let layout = part.and_then(|p| p.layout).unwrap_or_else(default_layout);
    validate_layout(&layout)?;
    Ok((wanted, layout))
}

/// The API's layout rules that matter for an image (reference §1.8.4, §1.9).
pub fn validate_layout(layout: &[LayoutEntry]) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    let mut fills = 0;
    for (i, e) in layout.iter().enumerate() {
        let at = format!("layout[{i}] ({})", e.mount_point);
        let mp = e.mount_point.as_str();
        if e.extras.as_ref().is_some_and(|x| x.zp.is_some()) || e.file_system == FileSystem::Zfs {
            bail!("{at}: ZFS layouts cannot be simulated");
        }
        if e.file_system == FileSystem::Swap {
            if e.size.unwrap_or(0) == 0 {
                bail!("{at}: swap cannot fill the disk; give it a size in MiB");
            }
        } else {
            if !mp.starts_with('/') {
                bail!("{at}: mountPoint must be an absolute path (PartitionInvalidUnixMountpoint)");
            }
            if mp.len() > 1 && mp.ends_with('/') {
                bail!("{at}: mountPoint must not end with / (PartitionForbiddenMountpointSuffix)");
            }
            if mp.len() > 256 || !mp.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b)) {
                bail!("{at}: only letters, digits, / . _ - are allowed (PartitionInvalidUnixMountpoint)");
            }
            if mp.split('/').any(|c| c == "." || c == ".." || c.starts_with('.')) || mp.contains("//") {
                bail!("{at}: mountPoint must be canonical and not hidden (PartitionForbiddenMountpointCanonical)");
            }
            if mp == "/boot/efi" {
                bail!("{at}: /boot/efi is created by OVHcloud on UEFI servers (PartitionForbiddenMountpoint)");
            }
            if !seen.insert(mp.to_owned()) {
                bail!("{at}: mountPoint {mp} appears twice");
            }
            if e.file_system.mkfs_name().is_none() {
                bail!(
                    "{at}: fileSystem {:?} cannot be simulated (supported: ext4, ext3, xfs, btrfs, fat16, swap)",
                    e.file_system
                );
            }
            if e.size.unwrap_or(0) == 0 {
                fills += 1;
            }
        }
        if let Some(lv) = e.extras.as_ref().and_then(|x| x.lv.as_ref()) {
            if lv.name.is_empty() || lv.name.len() > 16 || !lv.name.bytes().all(|b| b.is_ascii_alphanumeric()) {
                bail!("{at}: LV name must be 1-16 letters or digits (PartitionInvalidLvName)");
            }
            if e.file_system == FileSystem::Swap {
                bail!("{at}: swap cannot be on LVM (PartitionIncompatibleLvm)");
            }
        }
        if let Some(level) = e.raid_level {
            if ![0, 1, 5, 6, 10].contains(&level) {
                bail!("{at}: raidLevel {level} is not one of 0, 1, 5, 6, 10 (PartitionIncompatibleRaidLevel)");
            }
        }
    }
    if !seen.contains("/") {
        bail!("the layout has no / (PartitionMissingRootMountpoint)");
    }
    if fills > 1 {
        bail!("only one partition may fill the disk (size 0)");
    }
    Ok(())
}

/// The highest RAID level `disks` disks can carry, as the API reduces it
/// (6, 10, 5, 1, 0; §1.9 "auto-fixes").
fn effective_raid(level: u8, disks: u32) -> Option<u8> {
    let min = |l: u8| match l {
        0 | 1 => 2,
        5 => 3,
        6 | 10 => 4,
        _ => u32::MAX,
    };
    [level, 6, 10, 5, 1, 0]
        .into_iter()
        .skip_while(|&l| l != level)
        .find(|&l| min(l) <= disks && l <= level.max(1))
        .or((disks >= 2).then_some(0).filter(|_| level == 0))
}

/// Translates a validated layout into the installer's calls.
pub fn plan_disks(layout: &[LayoutEntry], disks: u32, boot: Firmware) -> Result<DiskPlan> {
    if disks == 0 || disks > 8 {
        bail!("the simulation supports 1 to 8 disks, not {disks}");
    }
    let mut s = String::new();
    let mut number = 0u32;
    let mut next_part = || {
        number += 1;
        number
    };
    let all = "all";
    match boot {
        Firmware::Uefi => {
            let n = next_part();
            let _ = writeln!(s, "part {all} {n} {ESP_MIB} EF00 EFI_SYSPART");
        }
        Firmware::Bios => {
            let n = next_part();
            let _ = writeln!(s, "part {all} {n} 1 EF02 bios_grub");
        }
    }
    // The filling entry goes last, so that it can take what is left.
    let mut order: Vec<&LayoutEntry> = layout.iter().filter(|e| e.size.unwrap_or(0) != 0).collect();
    order.extend(layout.iter().filter(|e| e.size.unwrap_or(0) == 0));

    let mut md = 0u32;
    let mut mounts: Vec<(String, String)> = Vec::new();
    let mut uses_raid = false;
    let mut vgs: Vec<(Option<u8>, String)> = Vec::new(); // (raid level, vg name)
    for e in order {
        let size = match e.size.unwrap_or(0) {
            0 => "fill".to_owned(),
            mib => mib.to_string(),
        };
        let name = e.mount_point.trim_start_matches('/').replace('/', "_");
        let name = if name.is_empty() { "root".to_owned() } else { name };
        if e.file_system == FileSystem::Swap {
            // Swap is never on RAID: one partition per disk (§1.9).
            let n = next_part();
            let _ = writeln!(s, "part {all} {n} {size} 8200 swap");
            let _ = writeln!(s, "swap {n}");
            continue;
        }
        let raid = if disks >= 2 {
            effective_raid(e.raid_level.unwrap_or(1), disks)
        } else {
            None
        };
        let n = next_part();
        let on_lvm = e.extras.as_ref().and_then(|x| x.lv.as_ref());
        let device = match raid {
            Some(level) => {
                uses_raid = true;
                let _ = writeln!(
                    s,
                    "part {all} {n} {} FD00 {name}",
                    if on_lvm.is_some() { "fill" } else { &size }
                );
                let dev = format!("md{md}");
                let _ = writeln!(s, "raid {dev} {level} {n}");
                md += 1;
                dev
            }
            None => {
                let _ = writeln!(
                    s,
                    "part 0 {n} {} {} {name}",
                    if on_lvm.is_some() { "fill" } else { &size },
                    if on_lvm.is_some() { "8E00" } else { "8300" }
                );
                format!("disk0p{n}")
            }
        };
        let device = match on_lvm {
            Some(lv) => {
                let vg = match vgs.iter().find(|(l, _)| *l == raid) {
                    Some((_, vg)) => vg.clone(),
                    None => {
                        let vg = format!("vg{}", vgs.len());
                        let _ = writeln!(s, "pv {vg} {device}");
                        vgs.push((raid, vg.clone()));
                        vg
                    }
                };
                let _ = writeln!(s, "lv {vg} {} {size}", lv.name);
                format!("{vg}/{}", lv.name)
            }
            None => device,
        };
        let fs = e.file_system.mkfs_name().context("validated above")?;
        let _ = writeln!(s, "fs {device} {fs} {}", e.mount_point);
        mounts.push((e.mount_point.clone(), device));
    }
    // The config drive takes the end of the first disk; every other fill
    // stops short of it so RAID members stay the same size.
    let n = next_part();
    let _ = writeln!(s, "configdrive {n} {CONFIG_DRIVE_MIB}");

    mounts.sort_by_key(|(mp, _)| mp.matches('/').count() - usize::from(mp == "/"));
    let mut order: Vec<String> = mounts.iter().map(|(mp, _)| mp.clone()).collect();
    if boot == Firmware::Uefi {
        let _ = writeln!(s, "esp /boot/efi");
        order.push("/boot/efi".to_owned());
    }
    let _ = writeln!(s, "mount_all");
    Ok(DiskPlan {
        disks,
        boot,
        script: s,
        mounts: order,
        uses_raid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(json: &str) -> Vec<LayoutEntry> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn default_two_disk_bios_plan() {
        let p = plan_disks(&default_layout(), 2, Firmware::Bios).unwrap();
        assert_eq!(
            p.script,
            "part all 1 1 EF02 bios_grub\n\
             part all 2 512 8200 swap\nswap 2\n\
             part all 3 fill FD00 root\nraid md0 1 3\nfs md0 ext4 /\n\
             configdrive 4 64\nmount_all\n"
        );
        assert!(p.uses_raid);
        assert_eq!(p.mounts, ["/"]);
    }

    #[test]
    fn uefi_adds_an_esp_on_every_disk_and_mounts_it() {
        let p = plan_disks(&default_layout(), 2, Firmware::Uefi).unwrap();
        assert!(
            p.script.starts_with("part all 1 511 EF00 EFI_SYSPART\n"),
            "{}",
            p.script
        );
        assert!(p.script.ends_with("esp /boot/efi\nmount_all\n"), "{}", p.script);
        assert_eq!(p.mounts, ["/", "/boot/efi"]);
    }

    #[test]
    fn the_api_example_with_lvm() {
        let l = layout(
            r#"[{"fileSystem":"ext4","mountPoint":"/boot","raidLevel":1,"size":1024},
                {"extras":{"lv":{"name":"root"}},"fileSystem":"ext4","mountPoint":"/","raidLevel":1,"size":20480},
                {"fileSystem":"swap","mountPoint":"swap","size":2048},
                {"extras":{"lv":{"name":"data"}},"fileSystem":"xfs","mountPoint":"/data","raidLevel":1,"size":0}]"#,
        );
        validate_layout(&l).unwrap();
        let p = plan_disks(&l, 2, Firmware::Bios).unwrap();
        assert!(p.script.contains("raid md0 1 2\nfs md0 ext4 /boot\n"), "{}", p.script);
        assert!(
            p.script.contains("pv vg0 md1\nlv vg0 root 20480\nfs vg0/root ext4 /\n"),
            "{}",
            p.script
        );
        assert!(
            p.script.contains("lv vg0 data fill\nfs vg0/data xfs /data\n"),
            "{}",
            p.script
        );
        assert_eq!(p.mounts, ["/", "/boot", "/data"]);
    }

    #[test]
    fn one_disk_gets_no_raid() {
        let p = plan_disks(&default_layout(), 1, Firmware::Bios).unwrap();
        assert!(
            p.script.contains("part 0 3 fill 8300 root\nfs disk0p3 ext4 /\n"),
            "{}",
            p.script
        );
        assert!(!p.uses_raid);
    }

    #[test]
    fn raid_levels_are_reduced_to_what_the_disks_allow() {
        assert_eq!(effective_raid(1, 2), Some(1));
        assert_eq!(effective_raid(5, 2), Some(1));
        assert_eq!(effective_raid(6, 3), Some(5));
        assert_eq!(effective_raid(10, 4), Some(10));
        assert_eq!(effective_raid(0, 2), Some(0));
    }

    #[test]
    fn api_rules_are_enforced() {
        let cases = [
            (r#"[{"fileSystem":"ext4","mountPoint":"/home","size":0}]"#, "no /"),
            (
                r#"[{"fileSystem":"ext4","mountPoint":"/"},{"fileSystem":"vfat","mountPoint":"/x"}]"#,
                "",
            ),
            (
                r#"[{"fileSystem":"ext4","mountPoint":"/"},{"fileSystem":"fat16","mountPoint":"/boot/efi","size":100}]"#,
                "/boot/efi",
            ),
            (
                r#"[{"fileSystem":"ext4","mountPoint":"/"},{"fileSystem":"swap","mountPoint":"swap"}]"#,
                "swap cannot fill",
            ),
            (
                r#"[{"fileSystem":"ext4","mountPoint":"/"},{"fileSystem":"ext4","mountPoint":"/srv/"}]"#,
                "end with /",
            ),
            (
                r#"[{"fileSystem":"ext4","mountPoint":"/"},{"fileSystem":"ext4","mountPoint":"/.hidden","size":5}]"#,
                "canonical",
            ),
            (r#"[{"fileSystem":"zfs","mountPoint":"/"}]"#, "ZFS"),
            (
                r#"[{"fileSystem":"ext4","mountPoint":"/","extras":{"lv":{"name":"way-too-long-name"}}}]"#,
                "LV name",
            ),
            (
                r#"[{"fileSystem":"ext4","mountPoint":"/"},{"fileSystem":"ext4","mountPoint":"/","size":1}]"#,
                "twice",
            ),
            (
                r#"[{"fileSystem":"ext4","mountPoint":"/"},{"fileSystem":"xfs","mountPoint":"/d"}]"#,
                "only one partition may fill",
            ),
        ];
        for (json, want) in cases {
            let err = match serde_json::from_str::<Vec<LayoutEntry>>(json) {
                Ok(l) => validate_layout(&l).unwrap_err().to_string(),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(want), "{json}: {err}");
        }
    }

    #[test]
    fn storage_json_selects_disks_and_refuses_hardware_raid() {
        let s =
            parse_storage(r#"{"partitioning":{"disks":2,"layout":[{"fileSystem":"xfs","mountPoint":"/"}]}}"#).unwrap();
        let (disks, l) = select_layout(&s, 3).unwrap();
        assert_eq!(disks, 2);
        assert_eq!(l[0].file_system, FileSystem::Xfs);
        assert!(select_layout(&s, 1).unwrap_err().to_string().contains("--disks"));
        let hw = parse_storage(r#"[{"hardwareRaid":[{"raidLevel":1}]}]"#).unwrap();
        assert!(select_layout(&hw, 2).unwrap_err().to_string().contains("hardware RAID"));
        assert!(parse_storage(r#"[{"partitioning":{"layuot":[]}}]"#).is_err());
    }
}
