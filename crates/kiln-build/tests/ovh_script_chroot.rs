//! Slow and privileged: the generated `make_image_bootable.sh` runs for real,
//! the way OVH's installer runs it on a legacy-BIOS server. A Debian bookworm
//! tree (with both GRUB `.deb`s kept in `/root/.ovh/debs`) is copied onto an
//! ext4 partition of a sparse disk file behind a loop device; inside a private
//! mount namespace /proc, /sys and /dev are bound in and the script runs in a
//! `chroot`. The disk file must then carry GRUB in its MBR and post-MBR gap.
//!
//! Needs root, loop devices, `partx`, `mmdebstrap` and the Debian archive.
//! The tree (about 900 MiB, about 1.5–2.5 minutes to build) is cached at
//! `$KILN_TEST_TREE`, by default `target/tmp/ovh-script-tree`, and rebuilt when
//! the recipe below changes. Run with
//! `cargo test -p kiln-build --test ovh_script_chroot -- --ignored --nocapture`.
//! The host has no /sys/firmware/efi and no md driver, so only the legacy
//! single-disk path runs here; the UEFI and RAID paths are covered by the
//! stubbed tests in `ovh_script.rs`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kiln_build::targets::ovh_byol::script::{render_debian, ScriptParams};
use kiln_exec::{Cmd, LoopDevice, WorkDir};

const SUITE: &str = "bookworm";
/// What OVH images need (reference §7) plus `ucf`, which `grub-pc` and
/// `grub-efi-amd64` depend on and the offline install cannot download.
const INCLUDE: &str = "linux-image-amd64,initramfs-tools,grub2-common,grub-pc-bin,grub-efi-amd64-bin,\
                       mdadm,lvm2,xfsprogs,dosfstools,btrfs-progs,cloud-init,systemd-sysv,ucf";
/// The two conflicting GRUB flavours, kept for the deploy-time install.
/// mmdebstrap points APT_CONFIG at the new tree for hooks.
const DOWNLOAD_HOOK: &str =
    r#"mkdir -p "$1/root/.ovh/debs" && cd "$1/root/.ovh/debs" && apt-get download grub-pc grub-efi-amd64"#;
const SOURCES: &[&str] = &[
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
];

const DISK_SIZE: u64 = 3 << 30;

fn mmdebstrap_args(tree: &Path) -> Vec<String> {
    let mut args = vec![
        "--variant=important".to_owned(),
        format!("--include={}", INCLUDE.split_whitespace().collect::<String>()),
        format!("--customize-hook={DOWNLOAD_HOOK}"),
        SUITE.to_owned(),
        tree.display().to_string(),
    ];
    args.extend(SOURCES.iter().map(|s| s.to_string()));
    args
}

/// The Debian tree, built once per process (both tests share it) and cached
/// across runs. The stamp beside it records the recipe it was built from.
fn tree() -> PathBuf {
    static TREE: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut cached = TREE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(tree) = &*cached {
        return tree.clone();
    }
    let given = std::env::var_os("KILN_TEST_TREE").map(PathBuf::from);
    let tree = given
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("ovh-script-tree"));
    let stamp = with_suffix(&tree, ".stamp");
    // The recipe, independent of where the tree lives.
    let recipe = mmdebstrap_args(Path::new("TREE")).join("\n");
    let reusable = match fs::read_to_string(&stamp) {
        Ok(s) => s == recipe,
        // A tree someone built by hand: trust it.
        Err(_) => given.is_some() && tree.join("usr/sbin/update-initramfs").exists(),
    };
    if reusable {
        eprintln!("reusing the Debian tree at {}", tree.display());
    } else {
        build_tree(&tree, &stamp, &recipe);
    }
    *cached = Some(tree.clone());
    tree
}

fn build_tree(tree: &Path, stamp: &Path, recipe: &str) {
    let part = with_suffix(tree, ".part");
    for stale in [&part, &tree.to_owned()] {
        if stale.exists() {
            fs::remove_dir_all(stale).unwrap_or_else(|e| panic!("removing stale {}: {e}", stale.display()));
        }
    }
    let _ = fs::remove_file(stamp);
    fs::create_dir_all(part.parent().unwrap()).unwrap();
    eprintln!("building a Debian tree at {} (a few minutes)", tree.display());
    let started = Instant::now();
    Cmd::new("mmdebstrap")
        .args(mmdebstrap_args(&part))
        .on_line(|line| eprintln!("  mmdebstrap | {line}"))
        .run()
        .unwrap_or_else(|e| panic!("building the test tree: {e}"));
    fs::rename(&part, tree).unwrap();
    fs::write(stamp, recipe).unwrap();
    eprintln!("built the tree in {:.0?}", started.elapsed());
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `partx --add` on a loop device; `partx --delete` when dropped (before the
/// loop device is detached).
struct PartitionNodes {
    device: PathBuf,
}

impl PartitionNodes {
    fn add(device: &Path) -> Self {
        Cmd::new("partx")
            .arg("--add")
            .arg(device)
            .run()
            .unwrap_or_else(|e| panic!("{e}"));
        PartitionNodes {
            device: device.to_owned(),
        }
    }
}

impl Drop for PartitionNodes {
    fn drop(&mut self) {
        if let Err(e) = Cmd::new("partx").arg("--delete").arg(&self.device).run() {
            eprintln!("cleaning up: {e}");
        }
    }
}

/// Runs in a private mount namespace: every mount vanishes with it, even if
/// the test dies. `$6` is the scenario, `$7` the script's log file.
const NAMESPACE_SCRIPT: &str = r#"set -eu
part=$1 mnt=$2 tree=$3 script=$4 out=$5 scenario=$6 log=$7
mkdir -p "$mnt" "$out"
mount "$part" "$mnt"
cp -a "$tree/." "$mnt/"
install -m 0755 "$script" "$mnt/root/.ovh/make_image_bootable.sh"
if [ "$scenario" = without-grub-pc-deb ]; then
    rm "$mnt"/root/.ovh/debs/grub-pc_*.deb
fi
# What OVH's installer provides to the chroot.
mount --rbind /proc "$mnt/proc"
mount --rbind /sys "$mnt/sys"
mount --rbind /dev "$mnt/dev"
status=0
chroot "$mnt" /root/.ovh/make_image_bootable.sh || status=$?
echo "$status" > "$out/status"
# Evidence, read by the test after the namespace (and its mounts) are gone.
cp "$mnt$log" "$out/log" || true
cp "$mnt/boot/grub/grub.cfg" "$out/grub.cfg" 2>/dev/null || true
cp "$mnt/etc/machine-id" "$out/machine-id" 2>/dev/null || true
if [ -e "$mnt/root/.ovh" ]; then : > "$out/ovh-dir-kept"; fi
for f in "$mnt"/boot/initrd.img-*; do
    echo "$(stat -c %Y "$f") ${f##*/}"
done > "$out/initrds"
"#;

/// What one run of the script left behind.
struct Outcome {
    status: i32,
    log: String,
    grub_cfg: Option<String>,
    machine_id: Option<String>,
    ovh_dir_kept: bool,
    /// `initrd.img-<version>` → mtime (seconds).
    initrds: Vec<(String, u64)>,
    /// The first MiB of the disk file: MBR and post-MBR gap.
    head: Vec<u8>,
    started: u64,
}

fn assert_root() {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or_default();
    assert_eq!(
        uid.split_whitespace().nth(1),
        Some("0"),
        "this test needs root (loop devices, mounts, chroot)"
    );
}

fn run_script(scenario: &str) -> Outcome {
    assert_root();
    let tree = tree();
    let work = WorkDir::new_in(Path::new(env!("CARGO_TARGET_TMPDIR")), "ovh-chroot-").unwrap();
    let disk = work.path().join("disk.raw");
    fs::File::create(&disk).unwrap().set_len(DISK_SIZE).unwrap();
    Cmd::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(&disk)
        .stdin_bytes("label: dos\nstart=2048, type=83, bootable\n")
        .run()
        .unwrap_or_else(|e| panic!("{e}"));

    // Drop order: partition nodes go before the loop device is detached.
    let loop_device = LoopDevice::attach(&disk, None, None).unwrap_or_else(|e| panic!("{e}"));
    let partitions = PartitionNodes::add(loop_device.path());
    let part = PathBuf::from(format!("{}p1", loop_device.path().display()));
    wait_for(&part);
    Cmd::new("mke2fs")
        .args(["-q", "-t", "ext4"])
        .arg(&part)
        .run()
        .unwrap_or_else(|e| panic!("{e}"));

    let params = ScriptParams::debian();
    let script = work.path().join("make_image_bootable.sh");
    fs::write(&script, render_debian(&params)).unwrap();
    let out = work.path().join("out");
    let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let timer = Instant::now();
    let prefix = format!("  {scenario} |");
    Cmd::in_mount_namespace("sh")
        .args(["-c", NAMESPACE_SCRIPT])
        .arg("kiln-ovh-chroot-test")
        .arg(&part)
        .arg(work.path().join("mnt"))
        .arg(&tree)
        .arg(&script)
        .arg(&out)
        .arg(scenario)
        .arg(&params.log_path)
        .on_line(move |line| eprintln!("{prefix} {line}"))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "{scenario}: copying the tree and running the script took {:.0?}",
        timer.elapsed()
    );
    drop(partitions);
    drop(loop_device);

    let read = |name: &str| fs::read_to_string(out.join(name)).ok();
    let initrds = read("initrds")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(t, name)| (name.to_owned(), t.parse().unwrap()))
        .collect();
    let mut head = fs::read(&disk).unwrap();
    head.truncate(1 << 20);
    Outcome {
        status: read("status")
            .expect("the namespace script wrote no status")
            .trim()
            .parse()
            .unwrap(),
        log: read("log").unwrap_or_default(),
        grub_cfg: read("grub.cfg"),
        machine_id: read("machine-id"),
        ovh_dir_kept: out.join("ovh-dir-kept").exists(),
        initrds,
        head,
        started,
    }
}

fn wait_for(node: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear after partx --add",
            node.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `console=` parameters of the host kernel (the "rescue" kernel here).
fn host_consoles() -> Vec<String> {
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap();
    cmdline
        .split_whitespace()
        .take_while(|w| *w != "--")
        .filter(|w| w.starts_with("console="))
        .map(str::to_owned)
        .collect()
}

fn image_kernels(tree: &Path) -> Vec<String> {
    let mut versions: Vec<String> = fs::read_dir(tree.join("boot"))
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(str::to_owned)
        })
        .collect();
    versions.sort();
    versions
}

fn assert_grub_in_boot_sectors(head: &[u8], tree: &Path) {
    let grub_dir = tree.join("usr/lib/grub/i386-pc");
    let boot_img = fs::read(grub_dir.join("boot.img")).unwrap();
    let diskboot_img = fs::read(grub_dir.join("diskboot.img")).unwrap();
    let mbr = &head[..512];
    assert_eq!(&mbr[510..], [0x55, 0xAA], "MBR signature");
    // The partition table survived: partition 1 still starts at sector 2048.
    assert_eq!(
        u32::from_le_bytes(mbr[0x1C6..0x1CA].try_into().unwrap()),
        2048,
        "partition 1 start"
    );
    // boot.img's code and messages ("GRUB \0Geom\0Hard Disk\0Read\0 Error")
    // are in the first 440 bytes; grub-install only patches the BPB, the
    // core.img sector and the boot drive bytes before 0x80.
    assert_eq!(&mbr[0x180..0x185], b"GRUB ", "GRUB's boot.img is not in the MBR");
    assert_eq!(
        &mbr[0x80..0x1B8],
        &boot_img[0x80..0x1B8],
        "MBR code differs from boot.img"
    );
    // It loads core.img from sector 1, which starts with diskboot.img and is
    // followed by the rest of core.img in the post-MBR gap.
    assert_eq!(
        u64::from_le_bytes(mbr[0x5C..0x64].try_into().unwrap()),
        1,
        "boot.img's core.img sector"
    );
    assert_eq!(
        &head[512..512 + 0x100],
        &diskboot_img[..0x100],
        "sector 1 is not GRUB's diskboot.img"
    );
    let used_sectors = head[1024..2048 * 512]
        .chunks(512)
        .filter(|s| s.iter().any(|b| *b != 0))
        .count();
    assert!(
        used_sectors > 40,
        "only {used_sectors} non-empty sectors after diskboot.img: no core.img in the gap"
    );
}

#[test]
#[ignore = "slow: needs root, loop devices and a Debian tree"]
fn legacy_bios_install_in_a_chroot_makes_the_disk_bootable() {
    let outcome = run_script("legacy");
    let log = &outcome.log;
    assert_eq!(outcome.status, 0, "the script failed; its log:\n{log}");
    for step in ["configure_console", "configure_mdadm", "install_grub", "finalize"] {
        assert!(
            log.contains(&format!("==> step {step}: start")),
            "{step} missing from the log:\n{log}"
        );
        assert!(
            log.contains(&format!("==> step {step}: done")),
            "{step} did not finish:\n{log}"
        );
    }
    assert!(log.contains("all steps done: the image is bootable"), "{log}");
    assert!(!outcome.ovh_dir_kept, "/root/.ovh was not removed");

    let tree = tree();
    assert_grub_in_boot_sectors(&outcome.head, &tree);

    let grub_cfg = outcome.grub_cfg.as_deref().expect("no /boot/grub/grub.cfg");
    let consoles = host_consoles();
    assert!(
        !consoles.is_empty(),
        "the host kernel has no console= (this test expects console=ttyS0)"
    );
    let linux_lines: Vec<&str> = grub_cfg
        .lines()
        .filter(|l| l.trim_start().starts_with("linux"))
        .collect();
    assert!(!linux_lines.is_empty(), "no linux line in grub.cfg:\n{grub_cfg}");
    for line in &linux_lines {
        for console in &consoles {
            assert!(
                line.split_whitespace().any(|w| w == console),
                "{console} missing from `{line}`"
            );
        }
    }
    if consoles.iter().any(|c| c.starts_with("console=ttyS")) {
        assert!(
            grub_cfg.contains("serial --unit="),
            "no GRUB serial terminal in grub.cfg"
        );
        assert!(
            grub_cfg.contains("terminal_output console serial"),
            "serial not a GRUB output:\n{grub_cfg}"
        );
    }

    let machine_id = outcome.machine_id.as_deref().unwrap_or_default().trim().to_owned();
    assert!(
        machine_id.len() == 32 && machine_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "bad /etc/machine-id {machine_id:?}"
    );

    let kernels = image_kernels(&tree);
    assert!(!kernels.is_empty());
    for version in &kernels {
        let name = format!("initrd.img-{version}");
        let mtime = outcome.initrds.iter().find(|(n, _)| *n == name).map(|(_, t)| *t);
        let mtime = mtime.unwrap_or_else(|| panic!("no /boot/{name}; initrds: {:?}", outcome.initrds));
        assert!(
            mtime >= outcome.started,
            "/boot/{name} was not regenerated (mtime {mtime} < {})",
            outcome.started
        );
        assert!(
            log.contains(&format!("update-initramfs: Generating /boot/{name}")),
            "{log}"
        );
    }
}

#[test]
#[ignore = "slow: needs root, loop devices and a Debian tree"]
fn missing_grub_pc_deb_fails_the_install_and_says_where() {
    let outcome = run_script("without-grub-pc-deb");
    let log = &outcome.log;
    assert_ne!(
        outcome.status, 0,
        "the script succeeded without grub-pc; its log:\n{log}"
    );
    assert!(log.contains("==> step configure_console: done"), "{log}");
    assert!(log.contains("no grub-pc_*.deb in /root/.ovh/debs"), "{log}");
    assert!(log.contains("FAILED in step install_grub, line "), "{log}");
    assert!(!log.contains("==> step finalize"), "{log}");
    assert!(
        outcome.ovh_dir_kept,
        "/root/.ovh must stay for a rerun from the rescue system"
    );
    assert_eq!(&outcome.head[0x180..0x185], [0; 5], "GRUB was installed anyway");
}
