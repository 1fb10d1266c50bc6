//! `kiln check --target usb-installer`: reads a stick image without
//! mounting it and says, rule by rule, whether it meets the target's
//! contract: a GPT with the stick's five partitions, named and labelled;
//! GRUB for BIOS and for UEFI; an installer system whose grub.cfg boots an
//! existing kernel and initramfs with the installer as init; a payload
//! whose decompressed bytes have the size and sha512 `payload.json` gives;
//! a FAT `KILN-DATA` partition.
//!
//! As for the other contracts, a rule that cannot be evaluated FAILs and
//! says why; only I/O errors on the file abort.

use std::path::Path;

use anyhow::{Context, Result};
use kiln_disk::grub::menu_entries;
use kiln_disk::partition::TableKind;
use kiln_disk::{open_filesystem, DiskImage, FsRead, FsType};

use super::{PayloadInfo, DATA_LABEL, INSTALLER_PATH, INSTALL_LABEL, PAYLOAD_FILE, PAYLOAD_JSON, PAYLOAD_LABEL};
use crate::targets::contract::{chain, fail, pass, Results, Verdict};
use crate::targets::disk::check::{bios_rule, uefi_rule, Part};
use crate::targets::{CheckOptions, RuleResult};

/// The GPT partition names of a stick, in order.
pub const PARTITION_NAMES: [&str; 5] = ["BIOS boot", "ESP", INSTALL_LABEL, PAYLOAD_LABEL, DATA_LABEL];

/// Checks the stick image at `path` against the usb-installer contract.
pub fn check(path: &Path, _opts: &CheckOptions) -> Result<Vec<RuleResult>> {
    let mut r = Results::default();
    let mut image = DiskImage::open(path).with_context(|| format!("opening {}", path.display()))?;
    let table = kiln_disk::read_partition_table(&mut image)
        .with_context(|| format!("reading the partition table of {}", path.display()))?;
    let mut parts = Vec::new();
    if table.kind == Some(TableKind::Gpt) {
        for p in table.partitions {
            let fs = kiln_disk::probe_filesystem(&mut image, p.start, p.size)
                .with_context(|| format!("reading filesystem superblocks of {}", path.display()))?;
            parts.push(Part { p, fs });
        }
    }
    r.push(
        "layout",
        "a GPT with the stick's partitions, named and labelled",
        layout_verdict(&parts),
    );
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
    let named = |name: &str| parts.iter().find(|p| p.p.name.as_deref() == Some(name));
    r.push(
        "installer",
        "the installer system boots its kernel with the installer as init",
        match named(INSTALL_LABEL) {
            Some(part) => match open_filesystem(&image, part.p.start, part.p.size) {
                Ok(mut fs) => installer_verdict(fs.as_mut()),
                Err(e) => fail(format!("could not open {INSTALL_LABEL}: {}", chain(&e))),
            },
            None => fail(format!("no {INSTALL_LABEL} partition")),
        },
    );
    r.push(
        "payload",
        "the payload decompresses to the size and sha512 of payload.json",
        match named(PAYLOAD_LABEL) {
            Some(part) => match open_filesystem(&image, part.p.start, part.p.size) {
                Ok(mut fs) => payload_verdict(fs.as_mut()),
                Err(e) => fail(format!("could not open {PAYLOAD_LABEL}: {}", chain(&e))),
            },
            None => fail(format!("no {PAYLOAD_LABEL} partition")),
        },
    );
    Ok(r.0)
}

/// The partitions' names and the labels and types of their filesystems.
pub(crate) fn layout_verdict(parts: &[Part]) -> Verdict {
    if parts.is_empty() {
        return fail("no GPT partition table (or no partitions)");
    }
    let names: Vec<&str> = parts.iter().map(|p| p.p.name.as_deref().unwrap_or("")).collect();
    if names != PARTITION_NAMES {
        return fail(format!(
            "partitions are named {names:?}; a stick has {PARTITION_NAMES:?}"
        ));
    }
    let expected = [
        (INSTALL_LABEL, FsType::Ext4),
        (PAYLOAD_LABEL, FsType::Ext4),
        (DATA_LABEL, FsType::Vfat),
    ];
    for (label, fs_type) in expected {
        let part = parts.iter().find(|p| p.p.name.as_deref() == Some(label));
        let fs = part.and_then(|p| p.fs.as_ref());
        if fs.map(|f| f.fs_type) != Some(fs_type) || fs.and_then(|f| f.label.as_deref()) != Some(label) {
            return fail(format!(
                "partition {label} should hold {} labelled {label}, and holds {}",
                fs_type.name(),
                fs.map_or("no filesystem kiln recognises".to_owned(), |f| format!(
                    "{} labelled {:?}",
                    f.fs_type.name(),
                    f.label.as_deref().unwrap_or("")
                ))
            ));
        }
    }
    pass(PARTITION_NAMES.join(", "))
}

fn installer_verdict(fs: &mut dyn FsRead) -> Verdict {
    let read = |fs: &mut dyn FsRead, path: &str| fs.read_file(path);
    let cfg = match read(fs, "/boot/grub/grub.cfg") {
        Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        Ok(None) => return fail(format!("{INSTALL_LABEL} has no /boot/grub/grub.cfg")),
        Err(e) => return fail(format!("could not read {INSTALL_LABEL}: {}", chain(&e))),
    };
    let entries = menu_entries(&cfg);
    let Some(entry) = entries.first() else {
        return fail("grub.cfg has no menu entry");
    };
    let init = format!("init={INSTALLER_PATH}");
    if !entry.args.contains(&init) {
        return fail(format!("the menu entry's kernel command line has no {init}"));
    }
    for file in std::iter::once(&entry.kernel).chain(&entry.initrds) {
        match fs.metadata(file) {
            Ok(Some(_)) => {}
            Ok(None) => return fail(format!("grub.cfg boots {file}, which {INSTALL_LABEL} does not have")),
            Err(e) => return fail(format!("could not read {file}: {}", chain(&e))),
        }
    }
    match fs.metadata(INSTALLER_PATH) {
        Ok(Some(m)) if m.mode & 0o111 != 0 => pass(format!("{} with {init}", entry.kernel)),
        Ok(Some(_)) => fail(format!("{INSTALLER_PATH} is not executable")),
        Ok(None) => fail(format!("{INSTALL_LABEL} has no {INSTALLER_PATH}")),
        Err(e) => fail(format!("could not read {INSTALLER_PATH}: {}", chain(&e))),
    }
}

fn payload_verdict(fs: &mut dyn FsRead) -> Verdict {
    let info: PayloadInfo = match fs.read_file(&format!("/{PAYLOAD_JSON}")) {
        Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
            Ok(info) => info,
            Err(e) => return fail(format!("{PAYLOAD_JSON} is not what kiln writes: {e}")),
        },
        Ok(None) => return fail(format!("{PAYLOAD_LABEL} has no {PAYLOAD_JSON}")),
        Err(e) => return fail(format!("could not read {PAYLOAD_JSON}: {}", chain(&e))),
    };
    let compressed = match fs.read_file(&format!("/{PAYLOAD_FILE}")) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return fail(format!("{PAYLOAD_LABEL} has no {PAYLOAD_FILE}")),
        Err(e) => return fail(format!("could not read {PAYLOAD_FILE}: {}", chain(&e))),
    };
    match raw_digest(&compressed) {
        Ok((size, sha512)) if size == info.size && sha512 == info.sha512 => pass(format!(
            "{} {} ({}): {} MiB, sha512 {}…",
            info.name,
            info.version,
            info.target,
            size >> 20,
            &sha512[..16]
        )),
        Ok((size, sha512)) => fail(format!(
            "{PAYLOAD_FILE} decompresses to {size} bytes with sha512 {sha512}; {PAYLOAD_JSON} says {} bytes, {}",
            info.size, info.sha512
        )),
        Err(e) => fail(format!("{PAYLOAD_FILE} does not decompress: {e}")),
    }
}

/// Size and sha512 of what the zstd stream `compressed` decompresses to.
pub(crate) fn raw_digest(compressed: &[u8]) -> std::io::Result<(u64, String)> {
    use sha2::{Digest, Sha512};
    use std::io::Read;
    let mut decoder = zstd::stream::read::Decoder::new(compressed)?;
    let mut hasher = Sha512::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = decoder.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hex::encode(hasher.finalize())))
}
