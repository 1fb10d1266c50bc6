//! `kiln check --target disk`: reads a raw or qcow2 disk image without
//! mounting it and says, rule by rule, whether it meets the disk target's
//! contract: a GPT; GRUB for BIOS (boot code in the MBR pointing at core.img
//! in the BIOS boot partition) and for UEFI (an x86-64 PE at the removable
//! path of the FAT ESP), since a disk image may be booted under either; a
//! root filesystem whose fstab names every filesystem of the disk by its
//! real UUID; a grub.cfg whose kernels exist and whose root= is the root;
//! no machine-id or SSH host keys baked in; and the security contract
//! ([`crate::targets::security`]) on the root filesystem.
//!
//! Like [`crate::targets::ovh_byol::check`], a rule that cannot be
//! evaluated FAILs and says why; only I/O errors on the file abort. It
//! depends on kiln-disk alone, so it checks disks made by any tool.
//! Non-goals: btrfs, LVM or RAID layouts, MBR-only disks (reported, not
//! checked further), Secure Boot.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use kiln_disk::fatread::{pe_kind, FatReader, PeKind};
use kiln_disk::grub::{self, menu_entries};
use kiln_disk::partition::TableKind;
use kiln_disk::{open_filesystem, DiskImage, ErrorKind, FileKind, FsInfo, FsRead, FsType, Partition};

use crate::targets::contract::{chain, fail, machine_id_rule, pass, ssh_keys_rule, Results, Verdict};
use crate::targets::{security, CheckOptions, RuleResult};

/// One partition and what is on it.
pub(crate) struct Part {
    pub p: Partition,
    pub fs: Option<FsInfo>,
}

/// One line of fstab.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FstabLine {
    spec: String,
    mount: String,
    fs_type: String,
}

/// Checks the disk image at `path` against the disk target's contract.
pub fn check(path: &Path, _opts: &CheckOptions) -> Result<Vec<RuleResult>> {
    Ok(check_disk(path)?.results.0)
}

/// What the disk target's rules found, for the contracts that extend it
/// (the `ami` target's): the verdicts, the image, its partitions and its
/// root filesystem, opened.
pub(crate) struct DiskCheck {
    pub results: Results,
    /// `None` when the file is not a disk image kiln reads.
    pub image: Option<DiskImage>,
    pub parts: Vec<Part>,
    pub root: Option<Box<dyn FsRead>>,
}

/// The disk target's rules on the image at `path`.
pub(crate) fn check_disk(path: &Path) -> Result<DiskCheck> {
    let mut r = Results::default();
    let done = |results, image, parts| DiskCheck {
        results,
        image,
        parts,
        root: None,
    };
    let io = |e: kiln_disk::Error, what: &str| anyhow::Error::new(e).context(format!("{what} {}", path.display()));
    let mut image = match DiskImage::open(path) {
        Ok(i) => i,
        Err(e) if e.kind() == ErrorKind::Io => return Err(io(e, "opening")),
        Err(e) => {
            r.push(
                "gpt",
                "a GPT partition table",
                fail(format!("the file is not a disk image kiln reads: {}", chain(&e))),
            );
            return Ok(done(r, None, Vec::new()));
        }
    };
    let table = match kiln_disk::read_partition_table(&mut image) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::Io => return Err(io(e, "reading the partition table of")),
        Err(e) => {
            r.push(
                "gpt",
                "a GPT partition table",
                fail(format!("the partition table is unreadable: {}", chain(&e))),
            );
            return Ok(done(r, Some(image), Vec::new()));
        }
    };
    r.push(
        "gpt",
        "a GPT partition table",
        match table.kind {
            Some(TableKind::Gpt) => pass(format!(
                "GPT {}, {} partition(s)",
                table.disk_id.as_deref().unwrap_or(""),
                table.partitions.len()
            )),
            Some(TableKind::Mbr) => fail("an MBR partition table: the disk target writes a GPT (with a protective MBR), which UEFI needs and BIOS GRUB boots through its BIOS boot partition"),
            None => fail("no partition table: the disk target writes a GPT with a BIOS boot partition, an ESP and the root"),
        },
    );
    if table.kind != Some(TableKind::Gpt) {
        return Ok(done(r, Some(image), Vec::new()));
    }
    let mut parts = Vec::new();
    for p in table.partitions {
        let fs = kiln_disk::probe_filesystem(&mut image, p.start, p.size)
            .map_err(|e| io(e, "reading filesystem superblocks of"))?;
        parts.push(Part { p, fs });
    }

    r.push(
        "bios-boot",
        "GRUB for BIOS: MBR boot code and core.img in the BIOS boot partition",
        bios_rule(&mut image, &parts),
    );
    r.push(
        "uefi-boot",
        "GRUB for UEFI: an x86-64 EFI/BOOT/BOOTX64.EFI on the FAT ESP",
        uefi_rule(&image, &parts),
    );

    // Every ext2/3/4 or XFS filesystem, opened once.
    let mut filesystems: BTreeMap<u32, Box<dyn FsRead>> = BTreeMap::new();
    let mut unreadable = Vec::new();
    for part in &parts {
        if part
            .fs
            .as_ref()
            .is_some_and(|f| f.fs_type.is_ext() || f.fs_type == FsType::Xfs)
        {
            match open_filesystem(&image, part.p.start, part.p.size) {
                Ok(fs) => {
                    filesystems.insert(part.p.index, fs);
                }
                Err(e) => unreadable.push(format!("partition {}: {}", part.p.index, chain(&e))),
            }
        }
    }
    let mut root = None;
    for (&index, fs) in filesystems.iter_mut() {
        let is_root = fs.metadata("/etc").ok().flatten().map(|m| m.kind) == Some(FileKind::Dir);
        if is_root {
            root = Some(index);
            break;
        }
    }
    let part_of = |index: u32| parts.iter().find(|p| p.p.index == index).expect("listed partition");
    r.push(
        "root-filesystem",
        "an ext4 or XFS root filesystem (with /etc)",
        match root {
            Some(i) => {
                let info = part_of(i).fs.as_ref().expect("probed");
                pass(format!(
                    "partition {i}: {} uuid {}",
                    info.fs_type,
                    info.uuid.as_deref().unwrap_or("none")
                ))
            }
            None if unreadable.is_empty() => fail("no partition holds an ext4 or XFS filesystem with /etc"),
            None => fail(format!("no readable root filesystem ({})", unreadable.join("; "))),
        },
    );
    let Some(root) = root else {
        for (id, title) in RULES_ON_ROOT {
            r.push(id, title, fail("not checked: no root filesystem"));
        }
        security::push_unchecked(&mut r, "no root filesystem", &[]);
        return Ok(done(r, Some(image), parts));
    };

    let fstab = {
        let fs = filesystems.get_mut(&root).expect("root is open");
        fs.read_file("/etc/fstab")
    };
    let fstab = match fstab {
        Ok(Some(text)) => Ok(parse_fstab(&String::from_utf8_lossy(&text))),
        Ok(None) => Err(fail(
            "/etc/fstab is missing: nothing mounts the ESP or the other filesystems",
        )),
        Err(e) => Err(fail(format!("could not read /etc/fstab: {}", chain(&e)))),
    };
    let (fstab_verdict, boot_part) = match &fstab {
        Ok(lines) => (fstab_rule(lines, &parts, root), boot_partition(lines, &parts)),
        Err(v) => (v.clone(), None),
    };
    let [(fstab_id, fstab_title), (grub_id, grub_title), (mid_id, mid_title), (ssh_id, ssh_title)] = RULES_ON_ROOT;
    r.push(fstab_id, fstab_title, fstab_verdict);

    let root_uuid = part_of(root)
        .fs
        .as_ref()
        .and_then(|f| f.uuid.clone())
        .unwrap_or_default();
    let grub_verdict = match boot_part {
        Some(b) if b != root => match filesystems.get_mut(&b) {
            Some(fs) => grub_cfg_rule(
                fs.as_mut(),
                "/grub/grub.cfg",
                &root_uuid,
                &format!("the /boot filesystem (partition {b})"),
            ),
            None => fail(format!("fstab mounts /boot from partition {b}, which kiln cannot read")),
        },
        _ => {
            let fs = filesystems.get_mut(&root).expect("root is open");
            grub_cfg_rule(fs.as_mut(), "/boot/grub/grub.cfg", &root_uuid, "the root filesystem")
        }
    };
    r.push(grub_id, grub_title, grub_verdict);
    let fs = filesystems.get_mut(&root).expect("root is open");
    r.push(mid_id, mid_title, guarded(fs.as_mut(), machine_id_rule));
    r.push(ssh_id, ssh_title, guarded(fs.as_mut(), ssh_keys_rule));
    security::push_rules(fs.as_mut(), &mut r, &[]);
    Ok(DiskCheck {
        results: r,
        root: filesystems.remove(&root),
        image: Some(image),
        parts,
    })
}

/// The rules that need the root filesystem, in order.
const RULES_ON_ROOT: [(&str, &str); 4] = [
    ("fstab", "fstab names every filesystem by its real UUID"),
    (
        "grub-cfg",
        "grub.cfg boots an existing kernel with root= the root filesystem",
    ),
    ("machine-id", "no baked machine-id"),
    ("ssh-host-keys", "no baked SSH host keys"),
];

pub(crate) fn guarded(fs: &mut dyn FsRead, rule: fn(&mut dyn FsRead) -> kiln_disk::Result<Verdict>) -> Verdict {
    rule(fs).unwrap_or_else(|e| fail(format!("could not read the image: {}", chain(&e))))
}

pub(crate) fn bios_rule(image: &mut DiskImage, parts: &[Part]) -> Verdict {
    let Some(bb) = parts.iter().find(|p| p.p.part_type.is_bios_boot()) else {
        return fail(
            "no BIOS boot partition: the image cannot boot with BIOS (GRUB's core.img lives there on a GPT disk)",
        );
    };
    let mut mbr = [0u8; 512];
    let mut first = [0u8; 512];
    if let Err(e) = image
        .read_exact_at(&mut mbr, 0)
        .and_then(|()| image.read_exact_at(&mut first, bb.p.start))
    {
        return fail(format!("could not read the image: {}", chain(&e)));
    }
    if !grub::is_grub_boot_code(&mbr) {
        return fail("the MBR has no GRUB boot code (boot.img): BIOS would find nothing to run");
    }
    let lba = bb.p.start / 512;
    match grub::boot_code_core_lba(&mbr) {
        Some(at) if at == lba => {}
        other => {
            return fail(format!(
                "GRUB's boot code loads core.img from sector {}, but the BIOS boot partition starts at sector {lba}",
                other.unwrap_or(0)
            ))
        }
    }
    match grub::check_core_sector(&first, lba) {
        Ok(sectors) => pass(format!(
            "GRUB boot code in the MBR, core.img ({sectors} sectors) in partition {}",
            bb.p.index
        )),
        Err(why) => fail(format!("BIOS boot partition {}: {why}", bb.p.index)),
    }
}

pub(crate) fn uefi_rule(image: &DiskImage, parts: &[Part]) -> Verdict {
    let Some(esp) = parts.iter().find(|p| p.p.part_type.is_esp()) else {
        return fail("no EFI system partition: the image cannot boot with UEFI");
    };
    if esp.fs.as_ref().map(|f| f.fs_type) != Some(FsType::Vfat) {
        return fail(format!(
            "the ESP (partition {}) holds no FAT filesystem: UEFI firmware reads only FAT",
            esp.p.index
        ));
    }
    let read = || -> kiln_disk::Result<Option<Vec<u8>>> {
        FatReader::open(image.try_clone()?, esp.p.start, esp.p.size)?.read_file(grub::EFI_REMOVABLE_PATH)
    };
    match read() {
        Ok(Some(bytes)) => efi_binary_verdict(&bytes, &format!("partition {}", esp.p.index)),
        Ok(None) => fail(format!(
            "the ESP (partition {}) has no {}: UEFI firmware without an NVRAM entry boots nothing (built with firmware = [\"bios\"]?)",
            esp.p.index,
            grub::EFI_REMOVABLE_PATH
        )),
        Err(e) => fail(format!("could not read the ESP's FAT: {}", chain(&e))),
    }
}

/// Whether `bytes` (a `BOOTX64.EFI`) is what x86-64 UEFI firmware runs.
pub(crate) fn efi_binary_verdict(bytes: &[u8], place: &str) -> Verdict {
    let path = grub::EFI_REMOVABLE_PATH;
    match pe_kind(bytes) {
        PeKind::X86_64 => pass(format!(
            "{path} in {place}: an x86-64 PE image of {} bytes",
            bytes.len()
        )),
        PeKind::Other(m) => fail(format!(
            "{path} in {place} is a PE image for machine {m:#06x}, not x86-64 (0x8664)"
        )),
        PeKind::DosOnly => fail(format!("{path} in {place} starts with MZ but has no PE header")),
        PeKind::NotPe => fail(format!("{path} in {place} is not a PE image (no MZ header)")),
    }
}

fn parse_fstab(text: &str) -> Vec<FstabLine> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some(FstabLine {
                spec: w.next()?.to_owned(),
                mount: w.next()?.to_owned(),
                fs_type: w.next().unwrap_or("auto").to_owned(),
            })
        })
        .collect()
}

/// The partition an fstab line names, by UUID, PARTUUID or LABEL.
fn named_partition<'a>(line: &FstabLine, parts: &'a [Part]) -> Option<&'a Part> {
    let (key, value) = line.spec.split_once('=')?;
    let value = value.trim_matches('"');
    parts.iter().find(|p| match key {
        "UUID" => {
            p.fs.as_ref()
                .and_then(|f| f.uuid.as_deref())
                .is_some_and(|u| u.eq_ignore_ascii_case(value))
        }
        "PARTUUID" => p.p.uuid.eq_ignore_ascii_case(value),
        "LABEL" => p.fs.as_ref().and_then(|f| f.label.as_deref()) == Some(value),
        _ => false,
    })
}

/// The partition fstab mounts at /boot.
fn boot_partition(lines: &[FstabLine], parts: &[Part]) -> Option<u32> {
    lines
        .iter()
        .find(|l| l.mount == "/boot")
        .and_then(|l| named_partition(l, parts))
        .map(|p| p.p.index)
}

fn fstab_rule(lines: &[FstabLine], parts: &[Part], root: u32) -> Verdict {
    let mut problems = Vec::new();
    let mut named = Vec::new();
    for line in lines {
        if matches!(
            line.fs_type.as_str(),
            "proc" | "sysfs" | "tmpfs" | "devpts" | "nfs" | "nfs4" | "cifs"
        ) || (line.mount == "none" && line.fs_type != "swap")
        {
            continue;
        }
        if !line.spec.contains('=') {
            problems.push(format!(
                "{} is mounted from {}, a device name that changes between machines; use UUID=",
                line.mount, line.spec
            ));
            continue;
        }
        let Some(part) = named_partition(line, parts) else {
            problems.push(format!(
                "{} {} names no filesystem on this disk: the boot would stop in emergency mode",
                line.spec, line.mount
            ));
            continue;
        };
        named.push(part.p.index);
        let actual = part.fs.as_ref().map(|f| f.fs_type);
        let agrees = match (line.fs_type.as_str(), actual) {
            ("auto", _) => true,
            ("vfat" | "msdos" | "fat", Some(FsType::Vfat)) => true,
            (t, Some(a)) => t == a.name(),
            (_, None) => false,
        };
        if !agrees {
            problems.push(format!(
                "{} {} is declared {} but partition {} holds {}",
                line.spec,
                line.mount,
                line.fs_type,
                part.p.index,
                actual.map_or("no filesystem", FsType::name)
            ));
        }
        if part.p.index == root && line.mount != "/" {
            problems.push(format!(
                "the root filesystem (partition {root}) is mounted at {}, not /",
                line.mount
            ));
        }
    }
    if !named.contains(&root) {
        problems.push(format!("no line mounts the root filesystem (partition {root}) at /"));
    }
    for part in parts {
        if part.fs.is_some() && !named.contains(&part.p.index) {
            problems.push(format!(
                "partition {} ({}, {}) is not in fstab",
                part.p.index,
                part.p.type_name,
                part.fs.as_ref().map_or("", |f| f.fs_type.name())
            ));
        }
    }
    if problems.is_empty() {
        let mounts: Vec<&str> = lines.iter().map(|l| l.mount.as_str()).collect();
        pass(format!(
            "{} lines, each a filesystem of this disk: {}",
            lines.len(),
            mounts.join(", ")
        ))
    } else {
        fail(problems.join("; "))
    }
}

fn grub_cfg_rule(fs: &mut dyn FsRead, cfg_path: &str, root_uuid: &str, place: &str) -> Verdict {
    let text = match fs.read_file(cfg_path) {
        Ok(Some(t)) => String::from_utf8_lossy(&t).into_owned(),
        Ok(None) => return fail(format!("no {cfg_path} on {place}: GRUB would stop at its prompt")),
        Err(e) => return fail(format!("could not read {cfg_path}: {}", chain(&e))),
    };
    let entries = menu_entries(&text);
    if entries.is_empty() {
        return fail(format!("{cfg_path} has no linux line: GRUB has no kernel to boot"));
    }
    let mut problems = Vec::new();
    for e in &entries {
        match fs.metadata(&e.kernel) {
            Ok(Some(m)) if m.kind == FileKind::File && m.size > 0 => {}
            Ok(_) => problems.push(format!("the kernel {} is missing from {place}", e.kernel)),
            Err(err) => problems.push(format!("could not read {}: {}", e.kernel, chain(&err))),
        }
        for initrd in &e.initrds {
            if !matches!(fs.metadata(initrd), Ok(Some(m)) if m.kind == FileKind::File) {
                problems.push(format!("the initrd {initrd} is missing from {place}"));
            }
        }
        if let Some(uuid) = e.args.iter().find_map(|a| a.strip_prefix("root=UUID=")) {
            if !uuid.eq_ignore_ascii_case(root_uuid) {
                problems.push(format!(
                    "{} boots with root=UUID={uuid}, but the root filesystem is {root_uuid}",
                    e.kernel
                ));
            }
        }
    }
    if problems.is_empty() {
        pass(format!(
            "{cfg_path}: {} entr{}, kernel {}",
            entries.len(),
            if entries.len() == 1 { "y" } else { "ies" },
            entries[0].kernel
        ))
    } else {
        problems.sort();
        problems.dedup();
        fail(problems.join("; "))
    }
}

#[cfg(test)]
pub(crate) mod tests;
