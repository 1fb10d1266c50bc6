//! `kiln check --target iso`: reads a live ISO without mounting it and says,
//! rule by rule, whether it boots from a CD or a USB stick under BIOS and
//! UEFI (El Torito entries, the hybrid MBR/GPT, GRUB at both), whether
//! Debian's live-boot finds its system (kernel, initrd, root squashfs, a
//! grub.cfg entry with `boot=live` whose files exist), whether a `config-2`
//! volume is a config drive cloud-init reads, and whether the live root
//! bakes in a machine-id or SSH host keys (read through `unsquashfs`).
//!
//! The ISO is the one the iso target makes with xorriso (GRUB's
//! `eltorito.img` with a boot info table for BIOS, a FAT image for UEFI
//! that is also the stick's EFI partition, `boot_hybrid.img` in the MBR,
//! the ISO 9660 volume as partition 1), but the rules look at what firmware looks at, not
//! at kiln's file names, so they check ISOs made by other tools too. Like
//! the other contract checks, a rule that cannot be evaluated FAILs and
//! says why; only I/O errors on the file abort. Non-goals: Secure Boot
//! (shim), Mac/HFS+ booting, other platforms than x86.

use std::path::Path;

use anyhow::Result;
use kiln_disk::fatread::FatReader;
use kiln_disk::grub::{self, menu_entries};
use kiln_disk::iso_inspect::{CONFIG_DRIVE_LABEL, GRUB_CFG, META_DATA, NETWORK_DATA};
use kiln_disk::isoread::{BootEntry, BootPlatform, Emulation, IsoImage, IsoNode};
use kiln_disk::squashfs::{SquashFs, MAGIC as SQUASHFS_MAGIC};
use kiln_disk::{ErrorKind, FileKind, FsRead};

use crate::targets::contract::{chain, fail, machine_id_rule, pass, ssh_keys_rule, Results, Verdict};
use crate::targets::disk::check::efi_binary_verdict;
use crate::targets::security;
use crate::targets::{CheckOptions, RuleResult};

/// Where Debian's live-boot looks for the system, as the iso target lays it out.
pub const KERNEL: &str = "/live/vmlinuz";
pub const INITRD: &str = "/live/initrd.img";
pub const ROOT_IMAGE: &str = "/live/filesystem.squashfs";
const BLOCK: u64 = 2048;

/// The rules, in order, for callers that list them.
pub const RULES: &[(&str, &str)] = &[
    ("iso9660", "an ISO 9660 image"),
    (
        "rock-ridge",
        "Rock Ridge names (exact POSIX names for live-boot and cloud-init)",
    ),
    (
        "bios-eltorito",
        "El Torito BIOS entry: GRUB's eltorito.img with a boot info table",
    ),
    (
        "uefi-eltorito",
        "El Torito UEFI entry: a FAT image with an x86-64 EFI/BOOT/BOOTX64.EFI",
    ),
    (
        "hybrid-mbr",
        "hybrid MBR: GRUB boot code pointing at eltorito.img (BIOS from USB)",
    ),
    (
        "hybrid-esp",
        "hybrid partition table: an EFI partition holding BOOTX64.EFI (UEFI from USB)",
    ),
    ("kernel", "/live/vmlinuz is a Linux kernel"),
    ("initrd", "/live/initrd.img is present and not empty"),
    ("root-image", "/live/filesystem.squashfs is a squashfs"),
    (
        "grub-cfg",
        "grub.cfg has a boot=live entry whose kernel and initrd exist",
    ),
    ("config-drive", "a config-2 volume has a meta_data.json with a uuid"),
    (
        "config-drive-usb",
        "on a USB stick too: a partition that is the config-2 volume itself",
    ),
    ("network-data", "network_data.json's networks use declared links"),
    ("machine-id", "no baked machine-id in the live root"),
    ("ssh-host-keys", "no baked SSH host keys in the live root"),
];

fn title(id: &str) -> &'static str {
    RULES.iter().find(|(i, _)| *i == id).map_or("", |(_, t)| t)
}

/// Checks the ISO at `path` against the iso target's contract.
pub fn check(path: &Path, _opts: &CheckOptions) -> Result<Vec<RuleResult>> {
    let mut r = Results::default();
    let mut push = |id: &'static str, v: Verdict| r.push(id, title(id), v);
    let iso =
        match kiln_disk::isoread::is_iso(path).and_then(
            |yes| {
                if yes {
                    IsoImage::open(path).map(Some)
                } else {
                    Ok(None)
                }
            },
        ) {
            Ok(Some(iso)) => iso,
            Ok(None) => {
                push(
                    "iso9660",
                    fail("no CD001 signature at 32 KiB + 1: not an ISO 9660 image"),
                );
                return Ok(r.0);
            }
            Err(e) if e.kind() == ErrorKind::Io => {
                return Err(anyhow::Error::new(e).context(format!("reading {}", path.display())))
            }
            Err(e) => {
                push("iso9660", fail(format!("unreadable ISO 9660 image: {}", chain(&e))));
                return Ok(r.0);
            }
        };
    push(
        "iso9660",
        pass(format!(
            "volume {:?}, {} blocks, {} bytes",
            iso.volume_id,
            iso.volume_blocks,
            iso.file_size()
        )),
    );
    push(
        "rock-ridge",
        if iso.rock_ridge {
            pass(format!("Rock Ridge{}", if iso.joliet { " and Joliet" } else { "" }))
        } else {
            fail("no Rock Ridge: names are upper-case 8.3 (META_DAT.JSO), which live-boot and cloud-init do not find; make the ISO with -R")
        },
    );

    let entries = iso.boot_entries();
    let find = |platform: BootPlatform| -> Option<BootEntry> {
        entries.as_ref().ok()?.iter().find(|e| e.platform == platform).cloned()
    };
    let (bios, uefi) = (find(BootPlatform::Bios), find(BootPlatform::Uefi));
    let no_catalog = |what: &str| match &entries {
        Err(e) => fail(format!("the El Torito boot catalog is unreadable: {}", chain(e))),
        Ok(list) if list.is_empty() => fail(format!("no El Torito boot catalog: a CD does not boot with {what}")),
        Ok(_) => fail(format!("the El Torito catalog has no {what} entry")),
    };
    push(
        "bios-eltorito",
        match &bios {
            Some(e) => guard(|| bios_entry_rule(&iso, e)),
            None => no_catalog("BIOS"),
        },
    );
    push(
        "uefi-eltorito",
        match &uefi {
            Some(e) => guard(|| uefi_entry_rule(&iso, e)),
            None => no_catalog("UEFI"),
        },
    );
    push("hybrid-mbr", guard(|| hybrid_mbr_rule(&iso, bios.as_ref())));
    push("hybrid-esp", guard(|| hybrid_esp_rule(path)));

    push("kernel", guard(|| kernel_rule(&iso)));
    push(
        "initrd",
        guard(|| {
            Ok(match iso.lookup(INITRD)? {
                Some(n) if n.kind == FileKind::File && n.size > 0 => pass(format!("{} bytes", n.size)),
                Some(_) => fail(format!("{INITRD} is empty or not a file")),
                None => fail(format!(
                    "{INITRD} is missing: live-boot's initramfs mounts the live system"
                )),
            })
        }),
    );
    let root_image = iso.lookup(ROOT_IMAGE);
    push(
        "root-image",
        match &root_image {
            Ok(Some(n)) => guard(|| squashfs_rule(&iso, n)),
            Ok(None) => fail(format!("{ROOT_IMAGE} is missing: live-boot finds no root")),
            Err(e) => fail(format!("could not read the ISO: {}", chain(e))),
        },
    );
    push("grub-cfg", guard(|| grub_cfg_rule(&iso)));
    push("config-drive", guard(|| config_drive_rule(&iso)));
    push("config-drive-usb", guard(|| config_drive_usb_rule(path, &iso)));
    push("network-data", guard(|| network_data_rule(&iso)));

    // The live root, listed once for both identity rules.
    let mut root: std::result::Result<SquashFs, String> = match root_image {
        Ok(Some(n)) => match iso.contiguous_offset(&n) {
            Some(offset) => SquashFs::open(path, offset).map_err(|e| chain(&e)),
            None => Err(format!("{ROOT_IMAGE} is not stored contiguously")),
        },
        Ok(None) => Err(format!("no {ROOT_IMAGE}")),
        Err(e) => Err(chain(&e)),
    };
    for (id, rule) in [
        (
            "machine-id",
            machine_id_rule as fn(&mut dyn FsRead) -> kiln_disk::Result<Verdict>,
        ),
        ("ssh-host-keys", ssh_keys_rule),
    ] {
        push(
            id,
            match &mut root {
                Ok(fs) => rule(fs).unwrap_or_else(|e| fail(format!("could not read the live root: {}", chain(&e)))),
                Err(why) => fail(format!("not checked: {why}")),
            },
        );
    }
    match &mut root {
        Ok(fs) => security::push_rules(fs, &mut r, &[]),
        Err(why) => security::push_unchecked(&mut r, why, &[]),
    }
    Ok(r.0)
}

/// Runs a rule, turning read errors into FAILs.
fn guard(rule: impl FnOnce() -> kiln_disk::Result<Verdict>) -> Verdict {
    rule().unwrap_or_else(|e| fail(format!("could not read the ISO: {}", chain(&e))))
}

/// The bytes of an El Torito image: its file's when one starts at its
/// block, else what the entry (or the FAT boot sector there) declares.
fn entry_image(iso: &IsoImage, e: &BootEntry) -> kiln_disk::Result<(Option<String>, Vec<u8>)> {
    let max = 64 << 20;
    if let Some((path, node)) = iso.file_at_block(e.lba)? {
        return Ok((Some(path), iso.read_node(&node, max)?));
    }
    let at = u64::from(e.lba) * BLOCK;
    let mut len = u64::from(e.sector_count) * 512;
    if len <= 512 {
        // Too large for the 16-bit count: the FAT says how big it is.
        let boot = iso.read_at(at, 512)?;
        let sectors = match u16::from_le_bytes([boot[19], boot[20]]) {
            0 => u64::from(u32::from_le_bytes([boot[32], boot[33], boot[34], boot[35]])),
            n => u64::from(n),
        };
        len = sectors * u64::from(u16::from_le_bytes([boot[11], boot[12]]));
    }
    let len = len.min(max).min(iso.file_size().saturating_sub(at));
    Ok((None, iso.read_at(at, len as usize)?))
}

fn named(path: &Option<String>, lba: u32) -> String {
    path.clone().unwrap_or_else(|| format!("the image at block {lba}"))
}

fn bios_entry_rule(iso: &IsoImage, e: &BootEntry) -> kiln_disk::Result<Verdict> {
    if e.emulation != Emulation::NoEmulation {
        return Ok(fail(format!(
            "the BIOS entry uses {} emulation; GRUB's eltorito.img needs no emulation",
            e.emulation.name()
        )));
    }
    if !e.bootable {
        return Ok(fail("the BIOS entry is not marked bootable"));
    }
    let (path, bytes) = entry_image(iso, e)?;
    let name = named(&path, e.lba);
    // GRUB's cdboot.img: its own message, then core.img after 2048 bytes.
    if bytes.len() <= 2048 || !bytes[..2048].windows(16).any(|w| w == b"cdrom read fails") {
        return Ok(fail(format!(
            "{name} is not GRUB's eltorito.img (cdboot.img followed by core.img); make it with grub-mkimage -O i386-pc-eltorito"
        )));
    }
    // The boot info table xorriso's -boot-info-table writes: cdboot reads
    // core.img's length and location from it.
    let le = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let (pvd, file, len) = (le(8), le(12), le(16));
    if pvd != 16 || file != e.lba || u64::from(len) != bytes.len() as u64 {
        return Ok(fail(format!(
            "{name} has no valid boot info table (PVD {pvd}, file {file}, length {len}; want 16, {}, {}): cdboot would load garbage; make the ISO with -boot-info-table",
            e.lba,
            bytes.len()
        )));
    }
    Ok(pass(format!(
        "{name}: GRUB cdboot + core.img, {} bytes, {} sectors loaded at segment {:#06x}",
        bytes.len(),
        e.sector_count,
        e.load_segment
    )))
}

fn uefi_entry_rule(iso: &IsoImage, e: &BootEntry) -> kiln_disk::Result<Verdict> {
    if e.emulation != Emulation::NoEmulation {
        return Ok(fail(format!(
            "the UEFI entry uses {} emulation; UEFI firmware expects no emulation",
            e.emulation.name()
        )));
    }
    let (path, bytes) = entry_image(iso, e)?;
    let name = named(&path, e.lba);
    let len = bytes.len() as u64;
    let efi = match FatReader::open(std::io::Cursor::new(bytes), 0, len) {
        Ok(fat) => fat.read_file(grub::EFI_REMOVABLE_PATH),
        Err(e) => return Ok(fail(format!("{name} is not a FAT image: {}", chain(&e)))),
    };
    Ok(match efi {
        Ok(Some(pe)) => efi_binary_verdict(&pe, &name),
        Ok(None) => fail(format!("{name} has no {}", grub::EFI_REMOVABLE_PATH)),
        Err(err) => fail(format!("could not read {name}'s FAT: {}", chain(&err))),
    })
}

fn hybrid_mbr_rule(iso: &IsoImage, bios: Option<&BootEntry>) -> kiln_disk::Result<Verdict> {
    let mbr = iso.read_at(0, 512)?;
    if mbr[510..512] != [0x55, 0xaa] {
        return Ok(fail(
            "no MBR (no 0x55AA signature): the ISO does not boot from a USB stick; make it with --grub2-mbr boot_hybrid.img",
        ));
    }
    if !grub::is_grub_boot_code(&mbr) {
        return Ok(fail(
            "the MBR has no GRUB boot code (boot_hybrid.img): BIOS does not boot it from a USB stick",
        ));
    }
    let Some(bios) = bios else {
        return Ok(fail(
            "GRUB boot code in the MBR, but no El Torito BIOS image for it to load",
        ));
    };
    // xorriso's --grub2-mbr patches the image's 512-byte sector + 4 in.
    let at = u64::from_le_bytes(mbr[0x1b0..0x1b8].try_into().expect("8 bytes"));
    let want = u64::from(bios.lba) * 4 + 4;
    Ok(if at == want {
        pass(format!(
            "GRUB boot code loads core.img from sector {at} (in the El Torito BIOS image)"
        ))
    } else {
        fail(format!(
            "the MBR's GRUB boot code loads sector {at}, but core.img is at {want}: make the ISO with --grub2-mbr so xorriso patches it"
        ))
    })
}

fn hybrid_esp_rule(path: &Path) -> kiln_disk::Result<Verdict> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| kiln_disk::Error::with_source(ErrorKind::Io, format!("opening {}", path.display()), e))?;
    let table = kiln_disk::read_partition_table(&mut file)?;
    let Some(kind) = table.kind else {
        return Ok(fail("no partition table: UEFI firmware does not boot the ISO from a USB stick; make it with -efi-boot-part --efi-boot-image"));
    };
    let Some(esp) = table.partitions.iter().find(|p| p.part_type.is_esp()) else {
        return Ok(fail(format!(
            "the {kind:?} has no EFI system partition (type 0xEF or C12A7328-…): UEFI firmware does not boot the ISO from a USB stick"
        )));
    };
    let found = FatReader::open(file, esp.start, esp.size).and_then(|fat| fat.read_file(grub::EFI_REMOVABLE_PATH));
    Ok(match found {
        Ok(Some(pe)) => efi_binary_verdict(&pe, &format!("{kind:?} partition {}", esp.index).to_lowercase()),
        Ok(None) => fail(format!(
            "EFI partition {} has no {}",
            esp.index,
            grub::EFI_REMOVABLE_PATH
        )),
        Err(e) => fail(format!(
            "EFI partition {} holds no readable FAT: {}",
            esp.index,
            chain(&e)
        )),
    })
}

fn kernel_rule(iso: &IsoImage) -> kiln_disk::Result<Verdict> {
    let Some(node) = iso.lookup(KERNEL)? else {
        return Ok(fail(format!("{KERNEL} is missing: GRUB has no kernel to load")));
    };
    if node.kind != FileKind::File || node.size == 0 {
        return Ok(fail(format!("{KERNEL} is empty or not a file")));
    }
    // Every x86 bzImage carries the boot protocol's "HdrS" at 0x202.
    let head = iso.read_at(u64::from(node.block()) * BLOCK, node.size.min(1024) as usize)?;
    Ok(if head.get(0x202..0x206) == Some(b"HdrS") {
        pass(format!("bzImage, {} bytes", node.size))
    } else {
        fail(format!("{KERNEL} is not an x86 Linux kernel (no HdrS boot header)"))
    })
}

fn squashfs_rule(iso: &IsoImage, node: &IsoNode) -> kiln_disk::Result<Verdict> {
    if node.kind != FileKind::File || node.size == 0 {
        return Ok(fail(format!("{ROOT_IMAGE} is empty or not a file")));
    }
    let head = iso.read_at(u64::from(node.block()) * BLOCK, 4)?;
    Ok(if head == SQUASHFS_MAGIC {
        pass(format!("squashfs, {} bytes", node.size))
    } else {
        fail(format!(
            "{ROOT_IMAGE} is not a squashfs (no hsqs magic): live-boot cannot mount it"
        ))
    })
}

fn grub_cfg_rule(iso: &IsoImage) -> kiln_disk::Result<Verdict> {
    let Some(cfg) = iso.read_file(GRUB_CFG)? else {
        return Ok(fail(format!("{GRUB_CFG} is missing: GRUB stops at its prompt")));
    };
    let entries = menu_entries(&String::from_utf8_lossy(&cfg));
    let live: Vec<_> = entries
        .iter()
        .filter(|e| e.args.iter().any(|a| a == "boot=live"))
        .collect();
    if live.is_empty() {
        return Ok(fail(format!(
            "{GRUB_CFG} has {} linux line(s), none with boot=live: the initramfs would not look for the live system",
            entries.len()
        )));
    }
    let mut missing = Vec::new();
    for e in &live {
        for file in std::iter::once(&e.kernel).chain(&e.initrds) {
            if !matches!(iso.lookup(file)?, Some(n) if n.kind == FileKind::File && n.size > 0) {
                missing.push(file.clone());
            }
        }
    }
    missing.sort();
    missing.dedup();
    Ok(if missing.is_empty() {
        pass(format!(
            "{} boot=live entr{}: {} {}",
            live.len(),
            if live.len() == 1 { "y" } else { "ies" },
            live[0].kernel,
            live[0].args.join(" ")
        ))
    } else {
        fail(format!("{GRUB_CFG} names files the ISO lacks: {}", missing.join(", ")))
    })
}

/// blkid, and so cloud-init's ConfigDrive, skips a whole disk that has
/// partitions: on a USB stick the `config-2` volume must also be a
/// partition, one that starts with a copy of the ISO's superblock (xorriso's
/// `-partition_offset 16`).
fn config_drive_usb_rule(path: &Path, iso: &IsoImage) -> kiln_disk::Result<Verdict> {
    use std::os::unix::fs::FileExt;
    if iso.volume_id != CONFIG_DRIVE_LABEL {
        return Ok(pass(format!("label {:?}: no config drive", iso.volume_id)));
    }
    let mut file = std::fs::File::open(path)
        .map_err(|e| kiln_disk::Error::with_source(ErrorKind::Io, format!("opening {}", path.display()), e))?;
    let table = kiln_disk::read_partition_table(&mut file)?;
    if table.kind.is_none() {
        return Ok(pass("no partition table: blkid reads the whole stick".to_owned()));
    }
    for p in &table.partitions {
        let mut pvd = [0u8; 2048];
        if file.read_exact_at(&mut pvd, p.start + 16 * 2048).is_err() {
            continue;
        }
        let label = String::from_utf8_lossy(&pvd[40..72]).trim_end().to_owned();
        if pvd[0] == 1 && &pvd[1..6] == b"CD001" && label == CONFIG_DRIVE_LABEL {
            return Ok(pass(format!("partition {} is the config-2 volume", p.index)));
        }
    }
    Ok(fail("no partition holds the config-2 volume: blkid skips a whole disk with partitions, so cloud-init finds no config drive on a USB stick; make the ISO with -partition_offset 16"))
}

fn config_drive_rule(iso: &IsoImage) -> kiln_disk::Result<Verdict> {
    let has_openstack = iso.lookup("/openstack")?.is_some();
    if iso.volume_id != CONFIG_DRIVE_LABEL {
        return Ok(if has_openstack {
            fail(format!(
                "the ISO has /openstack but its label is {:?}: cloud-init's ConfigDrive looks for {CONFIG_DRIVE_LABEL}",
                iso.volume_id
            ))
        } else {
            pass(format!("label {:?}: no config drive", iso.volume_id))
        });
    }
    let Some(bytes) = iso.read_file(META_DATA)? else {
        return Ok(fail(format!(
            "label config-2 but no {META_DATA}: cloud-init ignores the drive"
        )));
    };
    let meta: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return Ok(fail(format!("{META_DATA} is not valid JSON: {e}"))),
    };
    let text = |k: &str| meta.get(k).and_then(|v| v.as_str()).filter(|s| !s.is_empty());
    Ok(match text("uuid") {
        Some(uuid) => pass(format!(
            "uuid {uuid}, hostname {}",
            text("hostname").or(text("name")).unwrap_or("unset")
        )),
        None => fail(format!(
            "{META_DATA} has no uuid: cloud-init's ConfigDrive requires it (the instance id)"
        )),
    })
}

fn network_data_rule(iso: &IsoImage) -> kiln_disk::Result<Verdict> {
    if iso.volume_id != CONFIG_DRIVE_LABEL {
        return Ok(pass("no config drive"));
    }
    let Some(bytes) = iso.read_file(NETWORK_DATA)? else {
        return Ok(pass(
            "no network_data.json: cloud-init falls back to DHCP on the first NIC",
        ));
    };
    let net: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return Ok(fail(format!("{NETWORK_DATA} is not valid JSON: {e}"))),
    };
    let list = |k: &str| net.get(k).and_then(|v| v.as_array()).cloned().unwrap_or_default();
    let links: Vec<String> = list("links")
        .iter()
        .filter_map(|l| l.get("id").and_then(|i| i.as_str()).map(str::to_owned))
        .collect();
    let networks = list("networks");
    let mut problems = Vec::new();
    for (i, n) in networks.iter().enumerate() {
        let id = n.get("id").and_then(|v| v.as_str()).unwrap_or("?");
        match n.get("link").and_then(|v| v.as_str()) {
            Some(link) if links.iter().any(|l| l == link) => {}
            Some(link) => problems.push(format!(
                "network {i} ({id}) uses link {link:?}, which links does not declare"
            )),
            None => problems.push(format!("network {i} ({id}) names no link")),
        }
        if n.get("type").and_then(|v| v.as_str()).is_none() {
            problems.push(format!("network {i} ({id}) has no type"));
        }
    }
    Ok(if problems.is_empty() {
        pass(format!(
            "{} link(s), {} network(s): {}",
            links.len(),
            networks.len(),
            kiln_disk::iso_inspect::network_summary(&net).join("; ")
        ))
    } else {
        fail(format!(
            "{NETWORK_DATA}: {}; cloud-init would not configure them",
            problems.join("; ")
        ))
    })
}

#[cfg(test)]
mod tests;
