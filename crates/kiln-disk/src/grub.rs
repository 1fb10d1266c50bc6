//! GRUB for BIOS and UEFI, installed into a disk file without any device,
//! loop device or partition node: `grub-install` and `grub-bios-setup` want
//! a block device (and refuse plain files), so kiln does their work itself.
//!
//! Both platforms get an image from `grub-mkimage` with an embedded early
//! configuration that finds the root filesystem by UUID and sets `$prefix`
//! to its `/boot/grub`, so `normal` reads the image's own `grub.cfg` and
//! loads further modules from `/boot/grub/<platform>`. The modules come from
//! a directory the caller names, normally the image tree's
//! `/usr/lib/grub/<platform>`, so GRUB's version matches the image's.
//!
//! - BIOS ([`install_bios`]): core.img goes into the BIOS boot partition;
//!   the boot code of `boot.img` (bytes 0..440) goes into the MBR, keeping
//!   the disk signature, partition records and boot signature; two sector
//!   pointers are patched, as `grub-bios-setup` does (GRUB 2.06
//!   `util/setup.c`, embedding branch).
//! - UEFI ([`make_image`] with [`Platform::X86_64Efi`]): a PE image the
//!   caller writes into the ESP at [`EFI_REMOVABLE_PATH`] (found without any
//!   NVRAM entry) and at [`efi_vendor_path`].
//!
//! Non-goals: Secure Boot (shim and signed GRUB), MBR-gap installs on
//! MBR-partitioned disks, other platforms, Reed-Solomon codes for core.img.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use kiln_exec::{Cmd, WorkDir};
use serde::Serialize;
use uuid::Uuid;

use crate::error::{Error, IoContext, Result};
use crate::partition::{PartKind, PlacedPartition, SECTOR};

/// A GRUB platform kiln installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    /// Legacy BIOS.
    I386Pc,
    /// 64-bit UEFI.
    X86_64Efi,
}

impl Platform {
    /// GRUB's name for the platform: its module directory and `-O` format.
    pub fn name(self) -> &'static str {
        match self {
            Platform::I386Pc => "i386-pc",
            Platform::X86_64Efi => "x86_64-efi",
        }
    }

    /// The module directory inside a root tree: `ROOT/usr/lib/grub/<platform>`.
    pub fn modules_dir(self, root: &Path) -> PathBuf {
        root.join("usr/lib/grub").join(self.name())
    }

    /// Modules built into the image. The early configuration needs
    /// `search_fs_uuid`, finding the root needs `part_gpt` and `ext2`, and
    /// the rest is what kiln's `grub.cfg` uses, so the image boots even if
    /// `/boot/grub/<platform>` is missing; everything else is loaded from
    /// there on demand.
    pub fn modules(self) -> &'static [&'static str] {
        match self {
            Platform::I386Pc => &[
                "biosdisk",
                "part_gpt",
                "ext2",
                "search",
                "search_fs_uuid",
                "normal",
                "configfile",
                "linux",
                "echo",
                "test",
                "serial",
                "terminal",
            ],
            // all_video: without a video driver GRUB hands the kernel no
            // framebuffer on UEFI, and the screen stays blank until DRM.
            Platform::X86_64Efi => &[
                "part_gpt",
                "ext2",
                "search",
                "search_fs_uuid",
                "normal",
                "configfile",
                "linux",
                "echo",
                "test",
                "serial",
                "terminal",
                "all_video",
            ],
        }
    }
}

/// Where GRUB finds the root filesystem and its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrubRoot {
    /// UUID of the filesystem holding GRUB's directory.
    pub fs_uuid: Uuid,
    /// Its GPT partition number (1-based): the fallback when the UUID
    /// search fails, as `(,gptN)` on the disk GRUB was loaded from.
    pub partition: u32,
    /// GRUB's directory on that filesystem: [`PREFIX_DIR`] on the root,
    /// [`SEPARATE_BOOT_PREFIX_DIR`] on a separate /boot.
    pub prefix: &'static str,
    /// A filesystem module the image needs besides `ext2` to read that
    /// filesystem, e.g. `xfs`.
    pub fs_module: Option<&'static str>,
}

impl GrubRoot {
    /// GRUB's directory on an ext4 root filesystem.
    pub fn ext4_root(fs_uuid: Uuid, partition: u32) -> GrubRoot {
        GrubRoot {
            fs_uuid,
            partition,
            prefix: PREFIX_DIR,
            fs_module: None,
        }
    }
}

/// GRUB's directory on the root filesystem.
pub const PREFIX_DIR: &str = "/boot/grub";
/// GRUB's directory on a separate /boot filesystem.
pub const SEPARATE_BOOT_PREFIX_DIR: &str = "/grub";

/// The ESP path UEFI firmware boots when it has no boot entry for the disk
/// (UEFI 2.x §3.5.1.1, removable media): how a fresh image boots anywhere.
pub const EFI_REMOVABLE_PATH: &str = "EFI/BOOT/BOOTX64.EFI";

/// The ESP path `grub-install --bootloader-id=<id>` uses, for boot entries
/// made later from inside the running system.
pub fn efi_vendor_path(bootloader_id: &str) -> String {
    format!("EFI/{bootloader_id}/grubx64.efi")
}

/// The configuration embedded in every image: find the root filesystem by
/// UUID, so the image boots whatever the disk is called. If the search
/// fails, `$root` and `$prefix` keep the `-p (,gptN)/boot/grub` fallback.
pub fn early_config(root: &GrubRoot) -> String {
    format!(
        "search --no-floppy --fs-uuid --set=root {uuid}\nset prefix=($root){prefix}\n",
        uuid = root.fs_uuid,
        prefix = root.prefix
    )
}

/// Runs `grub-mkimage` for `platform` with the modules in `modules_dir` and
/// returns the image: core.img for BIOS, a PE executable for UEFI.
pub fn make_image(platform: Platform, modules_dir: &Path, root: &GrubRoot) -> Result<Vec<u8>> {
    let mut modules = platform.modules().to_vec();
    modules.extend(root.fs_module);
    mkimage(
        platform,
        platform.name(),
        modules_dir,
        &early_config(root),
        &format!("(,gpt{}){}", root.partition, root.prefix),
        &modules,
    )
}

/// Modules of the images for ISO 9660 media: besides what kiln's grub.cfg
/// uses, iso9660 and the file search, and both partition tables a hybrid
/// ISO carries (GRUB scans the stick's partitions too).
fn iso_modules(platform: Platform) -> Vec<&'static str> {
    let mut modules: Vec<&str> = platform
        .modules()
        .iter()
        .copied()
        .filter(|m| !["ext2", "search_fs_uuid"].contains(m))
        .collect();
    modules.extend(["iso9660", "part_msdos", "search_fs_file"]);
    modules
}

/// The GRUB image that boots an ISO 9660 medium (a CD, or the same file
/// on a USB stick): for BIOS GRUB's El Torito image (cdboot.img followed
/// by core.img, format `i386-pc-eltorito`), for UEFI the PE executable of
/// the El Torito EFI image. It finds its medium by the file `marker`
/// (e.g. `/.disk/kiln-<uuid>`), whatever the firmware calls the drive, and
/// then reads `/boot/grub/grub.cfg` from it.
pub fn make_iso_image(platform: Platform, modules_dir: &Path, marker: &str) -> Result<Vec<u8>> {
    let format = match platform {
        Platform::I386Pc => "i386-pc-eltorito",
        Platform::X86_64Efi => "x86_64-efi",
    };
    let config = format!("search --no-floppy --file --set=root {marker}\nset prefix=($root){PREFIX_DIR}\n");
    mkimage(
        platform,
        format,
        modules_dir,
        &config,
        PREFIX_DIR,
        &iso_modules(platform),
    )
}

fn mkimage(
    platform: Platform,
    format: &str,
    modules_dir: &Path,
    config_text: &str,
    prefix: &str,
    modules: &[&str],
) -> Result<Vec<u8>> {
    let what = || format!("making the GRUB {format} image from {}", modules_dir.display());
    if !modules_dir.join("moddep.lst").is_file() {
        return Err(Error::input(format!(
            "{}: {} is not a GRUB module directory (no moddep.lst); the image needs {}",
            what(),
            modules_dir.display(),
            match platform {
                Platform::I386Pc => "grub-pc-bin",
                Platform::X86_64Efi => "grub-efi-amd64-bin",
            }
        )));
    }
    let scratch = WorkDir::new_in(&std::env::temp_dir(), "kiln-grub-").ctx(what)?;
    let config = scratch.path().join("early.cfg");
    let output = scratch.path().join("image");
    std::fs::write(&config, config_text).ctx(what)?;
    Cmd::new("grub-mkimage")
        .args(["-O", format, "-d"])
        .arg(modules_dir)
        .arg("-c")
        .arg(&config)
        .args(["-p", prefix, "-o"])
        .arg(&output)
        .args(modules)
        .run()
        .map_err(|e| Error::tool(what(), e))?;
    std::fs::read(&output).ctx(what)
}

// Offsets in boot.img, GRUB 2.06 include/grub/i386/pc/boot.h (the labels
// are in grub-core/boot/i386/pc/boot.S).
/// `GRUB_BOOT_MACHINE_KERNEL_SECTOR`: u64 LE, the LBA of core.img's first
/// sector, which boot.img loads.
const BOOT_KERNEL_SECTOR: usize = 0x5c;
/// `GRUB_BOOT_MACHINE_BOOT_DRIVE`: 0xff means "the drive the BIOS booted".
const BOOT_DRIVE: usize = 0x64;
/// `GRUB_BOOT_MACHINE_DRIVE_CHECK`: a 2-byte `jmp` that skips the check
/// for buggy BIOSes passing a bogus drive number in DL.
const BOOT_DRIVE_CHECK: usize = 0x66;
/// `GRUB_BOOT_MACHINE_WINDOWS_NT_MAGIC`: the disk signature; from here on
/// the sector belongs to the partition table.
const MBR_BOOT_CODE_LEN: usize = 0x1b8;

// diskboot.img, core.img's first sector, ends in a blocklist of the
// sectors to load next (grub-core/boot/i386/pc/diskboot.S, `firstlist`;
// `struct grub_pc_bios_boot_blocklist` in boot.h): u64 start LBA, u16
// sector count, u16 load segment. `GRUB_BOOT_MACHINE_LIST_SIZE` is 12.
const BLOCKLIST_START: usize = 512 - 12;
const BLOCKLIST_LEN: usize = BLOCKLIST_START + 8;
const BLOCKLIST_SEGMENT: usize = BLOCKLIST_START + 10;
/// `GRUB_BOOT_I386_PC_KERNEL_SEG + 0x20`: where the sectors after
/// diskboot.img are loaded; grub-mkimage presets it, so its presence tells
/// that the image really is an i386-pc core.img.
const KERNEL_LOAD_SEGMENT: u16 = 0x820;
/// core.img must fit below 0x78000 from its link address 0x9000, the bound
/// grub-bios-setup puts on the sectors it embeds (util/setup.c, `maxsec`).
const MAX_CORE_SECTORS: u64 = (0x78000 - 0x9000) / SECTOR;

/// What [`install_bios`] wrote, for manifests and checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BiosInstall {
    /// LBA of core.img's first sector (diskboot.img).
    pub core_lba: u64,
    /// core.img's length in sectors.
    pub core_sectors: u64,
}

/// Installs GRUB for BIOS into `disk`: `core` (from [`make_image`] with
/// [`Platform::I386Pc`]) into `bios_boot`, and the boot code of the
/// `boot.img` in `modules_dir` into the MBR. The partition table may be
/// written before or after; this touches only MBR bytes 0..440 and the
/// partition's sectors (the rest of which it zeroes).
pub fn install_bios(disk: &Path, modules_dir: &Path, core: &[u8], bios_boot: &PlacedPartition) -> Result<BiosInstall> {
    let what = || format!("installing GRUB for BIOS into {}", disk.display());
    if bios_boot.kind != PartKind::BiosBoot {
        return Err(Error::input(format!(
            "{}: partition {} is {:?}, not a BIOS boot partition",
            what(),
            bios_boot.index,
            bios_boot.kind
        )));
    }
    let boot_path = modules_dir.join("boot.img");
    let boot = std::fs::read(&boot_path).ctx(|| format!("reading {}", boot_path.display()))?;
    let core_lba = bios_boot.start / SECTOR;
    let code = patch_boot_code(&boot, core_lba).map_err(|e| e.context_for(what()))?;
    let core = patch_core(core, core_lba).map_err(|e| e.context_for(what()))?;
    let core_sectors = core.len() as u64 / SECTOR;
    if core.len() as u64 > bios_boot.size {
        return Err(Error::input(format!(
            "{}: core.img ({} bytes) does not fit in the {}-byte BIOS boot partition",
            what(),
            core.len(),
            bios_boot.size
        )));
    }

    let file = OpenOptions::new().read(true).write(true).open(disk).ctx(what)?;
    let len = file.metadata().ctx(what)?.len();
    if bios_boot.start + bios_boot.size > len {
        return Err(Error::input(format!(
            "{}: the BIOS boot partition ends past the end of the {len}-byte file",
            what()
        )));
    }
    // Zero the whole partition first: a stale tail after a smaller core.img
    // is harmless to GRUB but not to reproducibility.
    let mut area = vec![0u8; bios_boot.size as usize];
    area[..core.len()].copy_from_slice(&core);
    file.write_all_at(&area, bios_boot.start).ctx(what)?;
    file.write_all_at(&code, 0).ctx(what)?;
    file.sync_all().ctx(what)?;
    Ok(BiosInstall { core_lba, core_sectors })
}

/// boot.img's boot code (bytes 0..440) pointed at core.img at `core_lba`,
/// as `write_rootdev` and `setup` in GRUB 2.06 `util/setup.c` patch it for a
/// hard disk. Only the boot code: the rest of boot.img's sector overlaps
/// the partition table and is never written.
pub(crate) fn patch_boot_code(boot: &[u8], core_lba: u64) -> Result<[u8; MBR_BOOT_CODE_LEN]> {
    if boot.len() != SECTOR as usize || boot[510..512] != [0x55, 0xaa] {
        return Err(Error::invalid(format!(
            "boot.img is not a 512-byte boot sector ({} bytes)",
            boot.len()
        )));
    }
    let mut code = [0u8; MBR_BOOT_CODE_LEN];
    code.copy_from_slice(&boot[..MBR_BOOT_CODE_LEN]);
    code[BOOT_KERNEL_SECTOR..BOOT_KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    code[BOOT_DRIVE] = 0xff;
    // grub-bios-setup replaces the jmp with two NOPs for hard disks, so that
    // a BIOS passing 0x00 or 0x01 in DL still boots from 0x80.
    code[BOOT_DRIVE_CHECK..BOOT_DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);
    Ok(code)
}

/// core.img padded to whole sectors, its first blocklist pointing at the
/// sectors right after its first one: start `core_lba + 1`, `sectors - 1`
/// of them, as `save_blocklists` in GRUB 2.06 `util/setup.c` leaves it for
/// contiguous sectors. The entry before it (the list grows downwards) must
/// be the zero terminator, which grub-mkimage leaves there.
pub(crate) fn patch_core(core: &[u8], core_lba: u64) -> Result<Vec<u8>> {
    let sectors = (core.len() as u64).div_ceil(SECTOR);
    if sectors < 2 {
        return Err(Error::invalid(format!("core.img of {} bytes is too short", core.len())));
    }
    let segment = u16::from_le_bytes([core[BLOCKLIST_SEGMENT], core[BLOCKLIST_SEGMENT + 1]]);
    if segment != KERNEL_LOAD_SEGMENT {
        return Err(Error::invalid(format!(
            "core.img has load segment {segment:#x} where i386-pc has {KERNEL_LOAD_SEGMENT:#x}; was it made with -O i386-pc?"
        )));
    }
    if core[BLOCKLIST_START - 12..BLOCKLIST_START].iter().any(|&b| b != 0) {
        return Err(Error::invalid("core.img's second blocklist entry is not a terminator"));
    }
    if sectors > MAX_CORE_SECTORS {
        return Err(Error::input(format!(
            "core.img has {sectors} sectors; GRUB loads at most {MAX_CORE_SECTORS}"
        )));
    }
    // grub-mkimage already wrote the length (`block->len` in util/mkimage.c);
    // a different value means a layout this code does not know.
    let len = sectors - 1;
    let preset = u16::from_le_bytes([core[BLOCKLIST_LEN], core[BLOCKLIST_LEN + 1]]);
    if u64::from(preset) != len {
        return Err(Error::invalid(format!(
            "core.img's blocklist says {preset} sectors follow diskboot.img, but {len} do"
        )));
    }
    let mut out = core.to_vec();
    out.resize((sectors * SECTOR) as usize, 0);
    let start = core_lba
        .checked_add(1)
        .ok_or_else(|| Error::input("core.img LBA overflows"))?;
    out[BLOCKLIST_START..BLOCKLIST_START + 8].copy_from_slice(&start.to_le_bytes());
    out[BLOCKLIST_LEN..BLOCKLIST_LEN + 2].copy_from_slice(&(len as u16).to_le_bytes());
    Ok(out)
}

// ---------------------------------------------------------------------------
// Reading back, for `kiln check` and `kiln inspect`.

/// Whether the 440 bytes of MBR boot code are GRUB's `boot.img` (or
/// `boot_hybrid.img`): they carry its "GRUB " message.
pub fn is_grub_boot_code(mbr: &[u8]) -> bool {
    let code = &mbr[..mbr.len().min(MBR_BOOT_CODE_LEN)];
    code.windows(5).any(|w| w == b"GRUB ")
}

/// The sector GRUB's MBR boot code loads core.img from (`boot.img`'s
/// kernel sector, which [`install_bios`] patches).
pub fn boot_code_core_lba(mbr: &[u8]) -> Option<u64> {
    let b = mbr.get(BOOT_KERNEL_SECTOR..BOOT_KERNEL_SECTOR + 8)?;
    Some(u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// Checks that `first` (the first sector of core.img, diskboot.img) was
/// installed at `core_lba` as [`install_bios`] does: its blocklist starts at
/// the next sector and loads at i386-pc's segment. Returns what is wrong.
pub fn check_core_sector(first: &[u8], core_lba: u64) -> std::result::Result<u64, String> {
    if first.len() < SECTOR as usize {
        return Err("shorter than a sector".into());
    }
    let start = u64::from_le_bytes(first[BLOCKLIST_START..BLOCKLIST_START + 8].try_into().expect("8 bytes"));
    let len = u16::from_le_bytes([first[BLOCKLIST_LEN], first[BLOCKLIST_LEN + 1]]);
    let segment = u16::from_le_bytes([first[BLOCKLIST_SEGMENT], first[BLOCKLIST_SEGMENT + 1]]);
    if segment != KERNEL_LOAD_SEGMENT {
        return Err(format!(
            "no GRUB core.img there (its blocklist load segment is {segment:#x}, not {KERNEL_LOAD_SEGMENT:#x})"
        ));
    }
    if start != core_lba + 1 {
        return Err(format!(
            "core.img's blocklist points at sector {start}, not {} right after it",
            core_lba + 1
        ));
    }
    Ok(u64::from(len) + 1)
}

/// A boot entry of a `grub.cfg`: the kernel a `linux` line loads, its
/// command line, and the `initrd` lines after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MenuEntry {
    /// The `menuentry` title, when the line is inside one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub kernel: String,
    pub args: Vec<String>,
    pub initrds: Vec<String>,
}

/// The `linux` lines of a `grub.cfg` (also `linux16`, `linuxefi`), each with
/// its menu entry's title and the `initrd` lines after it. Quotes around
/// the title are removed; GRUB's variables are left as written.
pub fn menu_entries(cfg: &str) -> Vec<MenuEntry> {
    let mut entries: Vec<MenuEntry> = Vec::new();
    let mut title = None;
    for line in cfg.lines() {
        let line = line.trim();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("menuentry") => {
                let rest = line["menuentry".len()..].trim_start();
                title = match rest.chars().next() {
                    Some(q @ ('"' | '\'')) => rest[1..].split(q).next().map(str::to_owned),
                    _ => rest.split_whitespace().next().map(str::to_owned),
                };
            }
            Some("linux" | "linux16" | "linuxefi") => {
                if let Some(kernel) = words.next() {
                    entries.push(MenuEntry {
                        title: title.clone(),
                        kernel: kernel.to_owned(),
                        args: words.map(str::to_owned).collect(),
                        initrds: Vec::new(),
                    });
                }
            }
            Some("initrd" | "initrd16" | "initrdefi") => {
                if let Some(last) = entries.last_mut() {
                    last.initrds.extend(words.map(str::to_owned));
                }
            }
            Some("}") => title = None,
            _ => {}
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A boot sector shaped like boot.img: code bytes, signature.
    fn fake_boot() -> Vec<u8> {
        let mut b = crate::testutil::pseudo_random(1, 512);
        b[510] = 0x55;
        b[511] = 0xaa;
        b
    }

    /// A core.img shaped like grub-mkimage's: diskboot sector with the
    /// preset blocklist, then `rest` bytes.
    fn fake_core(rest: usize) -> Vec<u8> {
        let mut c = crate::testutil::pseudo_random(2, 512 + rest);
        c[BLOCKLIST_START - 12..BLOCKLIST_START].fill(0);
        c[BLOCKLIST_START..BLOCKLIST_START + 8].copy_from_slice(&2u64.to_le_bytes());
        let len = (rest as u64).div_ceil(512) as u16;
        c[BLOCKLIST_LEN..BLOCKLIST_LEN + 2].copy_from_slice(&len.to_le_bytes());
        c[BLOCKLIST_SEGMENT..BLOCKLIST_SEGMENT + 2].copy_from_slice(&KERNEL_LOAD_SEGMENT.to_le_bytes());
        c
    }

    #[test]
    fn boot_code_is_patched_only_where_grub_bios_setup_patches_it() {
        let boot = fake_boot();
        let code = patch_boot_code(&boot, 2048).unwrap();
        let changed: Vec<usize> = (0..MBR_BOOT_CODE_LEN).filter(|&i| code[i] != boot[i]).collect();
        assert!(
            changed
                .iter()
                .all(|&i| (0x5c..0x64).contains(&i) || i == 0x64 || i == 0x66 || i == 0x67),
            "{changed:?}"
        );
        assert_eq!(&code[0x5c..0x64], &2048u64.to_le_bytes());
        assert_eq!(code[0x64], 0xff);
        assert_eq!(&code[0x66..0x68], &[0x90, 0x90]);
    }

    #[test]
    fn core_blocklist_points_past_the_first_sector() {
        for (rest, lba) in [(1usize, 2048u64), (512, 34), (158_166, 4096)] {
            let core = fake_core(rest);
            let out = patch_core(&core, lba).unwrap();
            let sectors = (512 + rest as u64).div_ceil(512);
            assert_eq!(out.len() as u64, sectors * 512, "rest {rest}");
            assert_eq!(&out[500..508], &(lba + 1).to_le_bytes());
            assert_eq!(&out[508..510], &((sectors - 1) as u16).to_le_bytes());
            assert_eq!(&out[510..512], &0x820u16.to_le_bytes());
            // Everything else is core.img as made, zero-padded.
            assert_eq!(&out[..500], &core[..500]);
            assert_eq!(&out[512..512 + rest], &core[512..]);
            assert!(out[512 + rest..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn malformed_images_are_refused() {
        let mut short_boot = fake_boot();
        short_boot.pop();
        assert!(patch_boot_code(&short_boot, 1).is_err());
        let mut unsigned = fake_boot();
        unsigned[511] = 0;
        assert!(patch_boot_code(&unsigned, 1).is_err());

        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("too short", fake_core(0)),
            ("not i386-pc", {
                let mut c = fake_core(600);
                c[510] = 0;
                c
            }),
            ("no terminator", {
                let mut c = fake_core(600);
                c[490] = 1;
                c
            }),
            ("length disagrees", {
                let mut c = fake_core(600);
                c[508] = 7;
                c
            }),
            ("too large", fake_core(MAX_CORE_SECTORS as usize * 512)),
        ];
        for (name, core) in cases {
            assert!(patch_core(&core, 2048).is_err(), "{name}");
        }
    }

    #[test]
    fn early_config_searches_by_uuid() {
        let root = GrubRoot::ext4_root(Uuid::from_u128(0xabc), 3);
        assert_eq!(
            early_config(&root),
            "search --no-floppy --fs-uuid --set=root 00000000-0000-0000-0000-000000000abc\nset prefix=($root)/boot/grub\n"
        );
        assert_eq!(efi_vendor_path("debian"), "EFI/debian/grubx64.efi");
        let boot = GrubRoot {
            prefix: SEPARATE_BOOT_PREFIX_DIR,
            ..root
        };
        assert!(early_config(&boot).ends_with("set prefix=($root)/grub\n"));
    }

    #[test]
    fn reads_back_menu_entries_and_the_bios_install() {
        let cfg = "set default=0\nmenuentry 'Debian live' --id live {\n\
                   \tlinux /live/vmlinuz boot=live components quiet\n\tinitrd /live/initrd.img\n}\n\
                   menuentry \"Debian (serial)\" {\n  linux16 /live/vmlinuz boot=live console=ttyS0\n}\n\
                   linux /vmlinuz root=UUID=x\n";
        let e = menu_entries(cfg);
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].title.as_deref(), Some("Debian live"));
        assert_eq!(e[0].kernel, "/live/vmlinuz");
        assert_eq!(e[0].args, ["boot=live", "components", "quiet"]);
        assert_eq!(e[0].initrds, ["/live/initrd.img"]);
        assert_eq!(e[1].title.as_deref(), Some("Debian (serial)"));
        assert!(e[1].initrds.is_empty());
        assert_eq!(e[2].title, None);

        let code = patch_boot_code(&fake_boot(), 2048).unwrap();
        assert_eq!(boot_code_core_lba(&code), Some(2048));
        assert!(!is_grub_boot_code(&code));
        let mut grub = code;
        grub[0x180..0x185].copy_from_slice(b"GRUB ");
        assert!(is_grub_boot_code(&grub));
        let core = patch_core(&fake_core(3 * 512), 2048).unwrap();
        assert_eq!(check_core_sector(&core, 2048), Ok(4));
        assert!(check_core_sector(&core, 4096)
            .unwrap_err()
            .contains("points at sector 2049"));
        assert!(check_core_sector(&[0u8; 512], 2048)
            .unwrap_err()
            .contains("no GRUB core.img"));
    }
}
