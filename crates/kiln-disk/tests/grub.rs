//! GRUB installed into a plain disk file, checked against the reference
//! tools: `sfdisk --verify` for the table, GRUB's own `boot.img` and
//! `grub-mkimage`'s core.img for the bytes, and (ignored, slow) QEMU for
//! the only verdict that counts, a boot. The GRUB files come from the host
//! (`/usr/lib/grub/<platform>`, packages grub-pc-bin and grub-efi-amd64-bin).
//! Run the boots with
//! `cargo test -p kiln-disk --test grub -- --ignored --nocapture`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_disk::fat::{write_fat_at, FatEntry, FatOptions};
use kiln_disk::grub::{self, GrubRoot, Platform};
use kiln_disk::partition::{layout, write_partition_table, Layout, PartKind, PartitionSpec, TableKind};
use kiln_disk::{make_ext4, FsOptions};
use kiln_exec::Cmd;
use kiln_vm::{Accel, Drive, Firmware, ImageFormat, Network, Vm, VmConfig};
use uuid::Uuid;

const MIB: u64 = 1 << 20;
const ROOT_UUID: Uuid = Uuid::from_u128(0x6b69_6c6e_2d72_6f6f_742d_6673_0000_0003);
/// What the test grub.cfg prints; the boot tests wait for it.
const MARKER: &str = "KILN-GRUB-OK";

fn host_modules(platform: Platform) -> PathBuf {
    platform.modules_dir(Path::new("/"))
}

/// A 64 MiB GPT disk as the disk target lays it out (BIOS boot, ESP, root),
/// with an ext4 root holding `/boot/grub/grub.cfg` and GRUB's modules for
/// both platforms, as the target's finalisation leaves them.
fn disk_with_root(dir: &Path) -> (PathBuf, Layout) {
    let tree = dir.join("tree");
    let grub_dir = tree.join("boot/grub");
    std::fs::create_dir_all(&grub_dir).unwrap();
    // Prints where the early config found the root, then powers off; `halt`
    // is not built into the image, so it also proves modules load from
    // `$prefix/<platform>` on the root filesystem.
    let cfg = format!(
        "serial --unit=0 --speed=115200\nterminal_output serial\necho \"{MARKER} root=$root prefix=$prefix\"\nhalt\n"
    );
    std::fs::write(grub_dir.join("grub.cfg"), cfg).unwrap();
    for platform in [Platform::I386Pc, Platform::X86_64Efi] {
        let to = grub_dir.join(platform.name());
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(host_modules(platform)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "mod" || e == "lst") {
                std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
            }
        }
    }

    let disk = dir.join("disk.raw");
    std::fs::File::create(&disk).unwrap().set_len(64 * MIB).unwrap();
    let parts = [
        PartitionSpec {
            kind: PartKind::BiosBoot,
            size: MIB,
            name: "bios".into(),
            guid: Uuid::from_u128(1),
        },
        PartitionSpec {
            kind: PartKind::Esp,
            size: 36 * MIB,
            name: "esp".into(),
            guid: Uuid::from_u128(2),
        },
        PartitionSpec {
            kind: PartKind::LinuxFs,
            size: 0,
            name: "root".into(),
            guid: Uuid::from_u128(3),
        },
    ];
    let l = layout(64 * MIB, TableKind::Gpt, &parts).unwrap();
    let root = &l.partitions[2];
    let opts = FsOptions {
        uuid: ROOT_UUID,
        label: "root".into(),
        ..FsOptions::default()
    };
    make_ext4(&disk, root.start, root.size, &tree, &opts).unwrap();
    write_partition_table(&disk, &l, Uuid::from_u128(0xd15c)).unwrap();
    (disk, l)
}

fn grub_root() -> GrubRoot {
    GrubRoot::ext4_root(ROOT_UUID, 3)
}

fn install_bios(disk: &Path, l: &Layout) -> (Vec<u8>, grub::BiosInstall) {
    let modules = host_modules(Platform::I386Pc);
    let core = grub::make_image(Platform::I386Pc, &modules, &grub_root()).unwrap();
    let installed = grub::install_bios(disk, &modules, &core, &l.partitions[0]).unwrap();
    (core, installed)
}

#[test]
fn bios_install_matches_grub_bios_setup() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, l) = disk_with_root(dir.path());
    let before = std::fs::read(&disk).unwrap();
    let (core, installed) = install_bios(&disk, &l);
    let after = std::fs::read(&disk).unwrap();

    let bios_boot = &l.partitions[0];
    let lba = bios_boot.start / 512;
    assert_eq!(lba, 2048);
    let sectors = (core.len() as u64).div_ceil(512);
    assert_eq!(
        installed,
        grub::BiosInstall {
            core_lba: lba,
            core_sectors: sectors
        }
    );

    // The table is intact.
    let (status, out) = Cmd::new("sfdisk").arg("--verify").arg(&disk).run_status().unwrap();
    assert!(status.success(), "{}", out.tail);

    // MBR: boot.img's boot code except kernel_sector (0x5c, u64 LE), the
    // boot drive (0x64) and the drive-check jmp (0x66, NOP-ed for a hard
    // disk); bytes 440..512 (disk signature, protective partition, 0x55AA)
    // are the partition table's, untouched.
    let boot = std::fs::read(host_modules(Platform::I386Pc).join("boot.img")).unwrap();
    for i in 0..440 {
        let want = match i {
            0x5c..=0x63 => lba.to_le_bytes()[i - 0x5c],
            0x64 => 0xff,
            0x66 | 0x67 => 0x90,
            _ => boot[i],
        };
        assert_eq!(after[i], want, "MBR byte {i:#x}");
    }
    assert_eq!(after[440..512], before[440..512]);
    assert_eq!(after[450], 0xee, "protective MBR partition type");
    assert_eq!(after[510..512], [0x55, 0xaa]);

    // core.img at the partition's LBA, as grub-mkimage made it except the
    // first blocklist entry: the rest of core.img, at LBA + 1, sectors - 1
    // of them, loaded at segment 0x820.
    let at = bios_boot.start as usize;
    let written = &after[at..at + core.len()];
    assert_eq!(written[..500], core[..500]);
    assert_eq!(written[512..], core[512..]);
    assert_eq!(written[500..508], (lba + 1).to_le_bytes());
    assert_eq!(written[508..510], ((sectors - 1) as u16).to_le_bytes());
    assert_eq!(written[510..512], 0x820u16.to_le_bytes());
    // grub-mkimage's own length agrees with ours.
    assert_eq!(core[508..510], written[508..510]);
    // The rest of the partition is zero, and nothing else changed.
    assert!(after[at + core.len()..(bios_boot.start + bios_boot.size) as usize]
        .iter()
        .all(|&b| b == 0));
    assert_eq!(after[512..at], before[512..at]);
    assert_eq!(
        after[(bios_boot.start + bios_boot.size) as usize..],
        before[(bios_boot.start + bios_boot.size) as usize..]
    );
}

#[test]
fn images_are_reproducible_and_embed_the_early_config() {
    for platform in [Platform::I386Pc, Platform::X86_64Efi] {
        let modules = host_modules(platform);
        let a = grub::make_image(platform, &modules, &grub_root()).unwrap();
        let b = grub::make_image(platform, &modules, &grub_root()).unwrap();
        assert!(a == b, "{platform:?}: grub-mkimage is not deterministic");
        if platform == Platform::X86_64Efi {
            // A PE image; UEFI images are not compressed, so the early
            // config is visible among the embedded modules.
            assert_eq!(&a[..2], b"MZ");
            let config = grub::early_config(&grub_root());
            assert!(a.windows(config.len()).any(|w| w == config.as_bytes()));
        }
    }
}

#[test]
fn refuses_what_is_not_a_bios_boot_partition() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, l) = disk_with_root(dir.path());
    let modules = host_modules(Platform::I386Pc);
    let core = grub::make_image(Platform::I386Pc, &modules, &grub_root()).unwrap();
    let err = grub::install_bios(&disk, &modules, &core, &l.partitions[1]).unwrap_err();
    assert!(err.to_string().contains("not a BIOS boot partition"), "{err}");
    let efi = grub::make_image(Platform::X86_64Efi, &host_modules(Platform::X86_64Efi), &grub_root()).unwrap();
    let err = grub::install_bios(&disk, &modules, &efi, &l.partitions[0]).unwrap_err();
    assert!(err.to_string().contains("installing GRUB for BIOS"), "{err}");
    let err = grub::make_image(Platform::I386Pc, dir.path(), &grub_root()).unwrap_err();
    assert!(err.to_string().contains("grub-pc-bin"), "{err}");
}

#[test]
#[ignore = "slow: boots GRUB in QEMU (TCG), a few seconds"]
fn bios_boot_reaches_grub_cfg() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, l) = disk_with_root(dir.path());
    install_bios(&disk, &l);
    let console = boot(&disk, dir.path(), false);
    assert!(console.contains(MARKER), "no {MARKER} on the console:\n{console}");
    assert!(
        console.contains("root=hd0,gpt3 prefix=(hd0,gpt3)/boot/grub"),
        "{console}"
    );
}

#[test]
#[ignore = "slow: boots GRUB in QEMU (TCG) with OVMF, about 10 s"]
fn uefi_boot_reaches_grub_cfg_through_the_removable_path() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, l) = disk_with_root(dir.path());
    let image = grub::make_image(Platform::X86_64Efi, &host_modules(Platform::X86_64Efi), &grub_root()).unwrap();
    let esp = &l.partitions[1];
    let opts = FatOptions::new("ESP", 0x1234_abcd, 1_700_000_000);
    write_fat_at(
        &disk,
        esp.start,
        esp.size,
        &opts,
        &[FatEntry::file(grub::EFI_REMOVABLE_PATH, image)],
    )
    .unwrap();
    let console = boot(&disk, dir.path(), true);
    assert!(console.contains(MARKER), "no {MARKER} on the console:\n{console}");
    assert!(
        console.contains("root=hd0,gpt3 prefix=(hd0,gpt3)/boot/grub"),
        "{console}"
    );
}

/// Boots `disk` under QEMU (TCG, no network card) with kiln-vm's runner
/// until GRUB powers it off (at most two minutes) and returns the serial
/// console. UEFI uses OVMF with a fresh copy of its variables, so there is
/// no boot entry: the firmware must find the removable path by itself.
pub fn boot(disk: &Path, dir: &Path, uefi: bool) -> String {
    let log = dir.join("console.log");
    let mut cfg = VmConfig::new(&log);
    cfg.firmware = if uefi { Firmware::Uefi } else { Firmware::Bios };
    cfg.accel = Accel::Tcg;
    cfg.cpus = 1;
    cfg.memory = 512 << 20;
    cfg.net = Network::None;
    cfg.disks.push(Drive::new(disk, ImageFormat::Raw));
    let mut vm = Vm::start(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    // Dropping `vm` stops QEMU if GRUB is stuck (in its rescue shell, say).
    let exit = loop {
        match vm.exited().unwrap() {
            Some(exit) => break exit.to_string(),
            None if Instant::now() >= deadline => break "still running after 120 s".to_owned(),
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    drop(vm);
    let console = console_text(&log);
    format!("{console}\n[qemu] {exit}")
}

/// The serial console so far. Lossy: firmware writes bytes that are not
/// UTF-8, and one of them must not hide the whole log.
fn console_text(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}
