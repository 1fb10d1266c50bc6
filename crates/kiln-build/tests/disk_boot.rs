//! Slow and privileged: the `disk` target end to end on a real Debian
//! bookworm tree, then booted. The tree gets the spec's customisation
//! (`examples/debian-12-disk.toml`), the target's finalisation and the
//! cleanup in a chroot; `assemble` turns it into a raw disk (no loop device,
//! no mount), which is converted to qcow2 and booted under QEMU (TCG):
//!
//! 1. BIOS (SeaBIOS) until `login:` on the serial console;
//! 2. UEFI (OVMF, fresh variables: no boot entry, so the removable path),
//!    the disk grown by 1 GiB and a NoCloud seed attached, until cloud-init
//!    has run: the root must have grown to the new size and the ESP must be
//!    mounted from fstab, then `login:`.
//!
//! Needs root, `mmdebstrap`, the Debian archive, `qemu-system-x86_64` and
//! OVMF. The tree (about 850 MiB, about 2 minutes to build) is cached at
//! `$KILN_DISK_TEST_TREE`, by default `target/tmp/disk-boot-tree`, and
//! rebuilt when the recipe below changes; each run works on a copy (kept,
//! with the image and console logs, when `KILN_TEST_KEEP` is set). Run with
//! `cargo test -p kiln-build --test disk_boot -- --ignored --nocapture`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_build::chroot::{run_in_tree, ChrootScript};
use kiln_build::customise;
use kiln_build::targets::disk::{self, DiskIds, DiskPlan};
use kiln_disk::fat::{write_fat_image, FatEntry, FatOptions};
use kiln_exec::{Cmd, WorkDir};
use uuid::Uuid;

const SUITE: &str = "bookworm";
const SOURCES: &[&str] = &[
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
];
/// Under TCG a Debian 12 image reaches `login:` in about 50 s and cloud-init
/// with a seed adds about a minute, twice that on a busy machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

fn mmdebstrap_args(tree: &Path) -> Vec<String> {
    let include: Vec<&str> = std::iter::once("linux-image-amd64")
        .chain([
            "initramfs-tools",
            "grub2-common",
            "grub-pc-bin",
            "grub-efi-amd64-bin",
            "cloud-init",
            "cloud-guest-utils",
            "dosfstools",
            "openssh-server",
            "ifupdown",
            "isc-dhcp-client",
            "sudo",
            "zstd",
        ])
        .collect();
    let mut args = vec![
        "--variant=important".to_owned(),
        format!("--include={}", include.join(",")),
        SUITE.to_owned(),
        tree.display().to_string(),
    ];
    args.extend(SOURCES.iter().map(|s| s.to_string()));
    args
}

/// The cached Debian tree; the stamp beside it records the recipe.
fn tree() -> PathBuf {
    let given = std::env::var_os("KILN_DISK_TEST_TREE").map(PathBuf::from);
    let tree = given
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("disk-boot-tree"));
    let stamp = with_suffix(&tree, ".stamp");
    let recipe = mmdebstrap_args(Path::new("TREE")).join("\n");
    let reusable = match fs::read_to_string(&stamp) {
        Ok(s) => s == recipe,
        // A tree someone built by hand: trust it.
        Err(_) => given.is_some() && tree.join("usr/lib/grub/i386-pc").exists(),
    };
    if reusable {
        eprintln!("reusing the Debian tree at {}", tree.display());
        return tree;
    }
    let part = with_suffix(&tree, ".part");
    for stale in [&part, &tree] {
        if stale.exists() {
            fs::remove_dir_all(stale).unwrap_or_else(|e| panic!("removing stale {}: {e}", stale.display()));
        }
    }
    let _ = fs::remove_file(&stamp);
    fs::create_dir_all(part.parent().unwrap()).unwrap();
    eprintln!("building a Debian tree at {} (a few minutes)", tree.display());
    let started = Instant::now();
    Cmd::new("mmdebstrap")
        .args(mmdebstrap_args(&part))
        .on_line(|line| eprintln!("  mmdebstrap | {line}"))
        .run()
        .unwrap_or_else(|e| panic!("building the test tree: {e}"));
    fs::rename(&part, &tree).unwrap();
    fs::write(&stamp, recipe).unwrap();
    eprintln!("built the tree in {:.0?}", started.elapsed());
    tree
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn assert_root() {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or_default();
    assert_eq!(
        uid.split_whitespace().nth(1),
        Some("0"),
        "this test needs root (mmdebstrap, chroot)"
    );
}

fn chroot(tree: &Path, log: &Path, name: &str, body: &str) {
    let script = ChrootScript {
        name,
        body,
        source_date_epoch: None,
    };
    run_in_tree(tree, &script, log, |line| eprintln!("  chroot | {line}")).unwrap_or_else(|e| panic!("{e:#}"));
}

/// What a boot showed.
struct Boot {
    console: String,
    elapsed: Duration,
    /// The markers, in order, all appeared before the timeout.
    complete: bool,
}

/// Boots `image` (qcow2; writes go to a temporary overlay) until every
/// marker has appeared on the serial console in order, or the timeout;
/// then stops QEMU.
fn boot(image: &Path, dir: &Path, uefi: bool, seed: Option<&Path>, markers: &[&str]) -> Boot {
    let log = dir.join(if uefi { "console-uefi.log" } else { "console-bios.log" });
    let _ = fs::remove_file(&log);
    let mut cmd = Cmd::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "1024",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-nic", "user,model=virtio-net-pci", "-serial"])
        .arg(format!("file:{}", log.display()))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2,snapshot=on", image.display()))
        .log_to(dir.join("qemu.log"));
    if let Some(seed) = seed {
        cmd = cmd
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=raw,readonly=on", seed.display()));
    }
    if uefi {
        // A fresh copy of the variables: no boot entry for this disk exists,
        // so OVMF must find \EFI\BOOT\BOOTX64.EFI by itself.
        let vars = dir.join("OVMF_VARS.fd");
        fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
        cmd = cmd
            .arg("-drive")
            .arg("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd")
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
    }
    let started = Instant::now();
    // Dropping `qemu` stops it, whatever happens below.
    let mut qemu = cmd.spawn().unwrap_or_else(|e| panic!("{e}"));
    let mut complete = false;
    while started.elapsed() < BOOT_TIMEOUT {
        let console = console_text(&log);
        if in_order(&console, markers) {
            complete = true;
            break;
        }
        if let Some(status) = qemu.try_wait().unwrap() {
            eprintln!("QEMU exited early: {status}");
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let elapsed = started.elapsed();
    drop(qemu);
    Boot {
        console: console_text(&log),
        elapsed,
        complete,
    }
}

fn in_order(text: &str, markers: &[&str]) -> bool {
    let mut rest = text;
    for m in markers {
        match rest.find(m) {
            Some(i) => rest = &rest[i + m.len()..],
            None => return false,
        }
    }
    true
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// A NoCloud seed whose user-data reports the root's size and the ESP's
/// mount on the console.
fn seed(dir: &Path) -> PathBuf {
    let user_data = r#"#cloud-config
runcmd:
  - echo "KILN-ROOT-SIZE $(df -B1 --output=size / | tail -n 1 | tr -d ' ')" > /dev/console
  - echo "KILN-ESP $(findmnt -n -o FSTYPE,SOURCE /boot/efi)" > /dev/console
"#;
    let path = dir.join("seed.img");
    let files = [
        FatEntry::file("meta-data", "instance-id: kiln-disk-test\nlocal-hostname: kiln-disk\n"),
        FatEntry::file("user-data", user_data),
    ];
    write_fat_image(&path, &FatOptions::new("cidata", 0x5eed_0001, 1_700_000_000), &files).unwrap();
    path
}

#[test]
#[ignore = "slow: builds a Debian tree (cached), assembles the disk and boots it twice under QEMU (TCG), about 5 minutes"]
fn disk_image_boots_with_bios_and_uefi() {
    assert_root();
    let cached = tree();
    let mut work = WorkDir::new_in(Path::new(env!("CARGO_TARGET_TMPDIR")), "disk-boot-").unwrap();
    if std::env::var_os("KILN_TEST_KEEP").is_some() {
        work.keep();
        eprintln!("keeping the work directory {}", work.path().display());
    }
    let dir = work.path();
    let tree = dir.join("tree");
    let log = dir.join("build.log");
    let started = Instant::now();
    Cmd::new("cp")
        .arg("-a")
        .arg(format!("{}/.", cached.display()))
        .arg(&tree)
        .run()
        .unwrap_or_else(|e| panic!("{e}"));

    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/debian-12-disk.toml");
    let loaded = kiln_spec::load(&example).unwrap_or_else(|e| panic!("{e}"));
    let spec = &loaded.spec;
    let mut plan = DiskPlan::resolve(spec, spec.targets.disk.as_ref().unwrap());
    // zlib compression costs half a minute and proves nothing here.
    plan.compress = false;
    let ids = DiskIds::derive(|what| Uuid::new_v5(&Uuid::NAMESPACE_OID, what.as_bytes()));

    // The finalise stage, as the build runs it.
    let datasources: Vec<String> = spec.cloud_init.datasources.clone();
    chroot(
        &tree,
        &log,
        "customisation",
        &customise::configure_script(spec, &datasources, &kiln_build::distro::Debian),
    );
    chroot(&tree, &log, "disk finalisation", &disk::finalise_script(&plan, &ids));
    disk::write_grub_cfg(&tree, &plan, &ids).unwrap();
    chroot(
        &tree,
        &log,
        "cleanup",
        &kiln_build::cleanup::script(&kiln_build::distro::Debian),
    );
    kiln_build::cleanup::reset_host_files(&tree, spec.hostname.as_deref()).unwrap();
    eprintln!("finalised the tree in {:.0?}", started.elapsed());
    let cfg = fs::read_to_string(tree.join("boot/grub/grub.cfg")).unwrap();
    eprintln!("grub.cfg:\n{cfg}");

    let assembling = Instant::now();
    let content = kiln_disk::tree_size(&tree).unwrap();
    let geometry = disk::disk_geometry(&plan, &tree).unwrap();
    let raw = dir.join("disk.raw");
    fs::File::create(&raw).unwrap().set_len(geometry.disk).unwrap();
    let layout = disk::assemble(&raw, &plan, &tree, &ids, &geometry).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "assembled {} MiB of content into a {} MiB disk in {:.0?}: {:?}",
        content >> 20,
        geometry.disk >> 20,
        assembling.elapsed(),
        layout
            .partitions
            .iter()
            .map(|p| (p.index, p.start, p.size))
            .collect::<Vec<_>>()
    );
    Cmd::new("sfdisk")
        .arg("--verify")
        .arg(&raw)
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    let image = dir.join(&plan.file_name);
    kiln_build::targets::convert_image(&raw, &image, plan.artifact_format(), plan.compress, Some(&log)).unwrap();
    fs::remove_file(&raw).unwrap();
    let _ = fs::remove_dir_all(&tree);

    let bios = boot(&image, dir, false, None, &["login:"]);
    eprintln!("BIOS: {:.0?}", bios.elapsed);
    assert!(
        bios.complete,
        "BIOS boot: no login prompt after {:.0?}; console tail:\n{}",
        bios.elapsed,
        tail(&bios.console)
    );
    assert!(bios.console.contains("GNU GRUB"), "{}", tail(&bios.console));

    // Clouds hand out larger disks: cloud-init must grow the root into it.
    Cmd::new("qemu-img")
        .args(["resize", "-f", "qcow2"])
        .arg(&image)
        .arg("+1G")
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    let seed = seed(dir);
    let uefi = boot(
        &image,
        dir,
        true,
        Some(&seed),
        &["login:", "KILN-ROOT-SIZE", "KILN-ESP"],
    );
    eprintln!("UEFI with cloud-init: {:.0?}", uefi.elapsed);
    assert!(
        uefi.complete,
        "UEFI boot: login prompt and cloud-init report missing after {:.0?}; console tail:\n{}",
        uefi.elapsed,
        tail(&uefi.console)
    );
    let root_size: u64 = uefi
        .console
        .lines()
        .find_map(|l| l.trim().strip_prefix("KILN-ROOT-SIZE "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no root size:\n{}", tail(&uefi.console)));
    assert!(
        root_size > geometry.partitions[2] + (900 << 20),
        "the root did not grow: {root_size} bytes, built with {}",
        geometry.partitions[2]
    );
    let esp = uefi
        .console
        .lines()
        .find_map(|l| l.trim().strip_prefix("KILN-ESP "))
        .unwrap_or_default()
        .to_owned();
    assert!(esp.starts_with("vfat"), "ESP not mounted from fstab: {esp:?}");
    eprintln!("total {:.0?}", started.elapsed());
}

/// The serial console so far. Lossy: firmware writes bytes that are not
/// UTF-8, and one of them must not hide the whole log.
fn console_text(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}
