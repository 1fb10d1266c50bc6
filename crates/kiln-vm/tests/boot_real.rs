//! Slow real tests of the QEMU runner and the `kiln boot` verdict: a real
//! Debian 12 (kernel, systemd, cloud-init) booted under TCG with a
//! generated NoCloud seed, until the login prompt and cloud-init's final
//! message appear. Needs root, mmdebstrap, a Debian mirror, QEMU and OVMF.
//!
//! Until kiln's `disk` target makes directly bootable images, the guest is a
//! bare ext4 filesystem (`mke2fs -d` of an mmdebstrap tree) booted with the
//! tree's own kernel and initrd (`-kernel/-initrd`). The tree is cached in
//! `target/tmp/boot-real/` across runs (about 2 minutes to build); the ext4
//! image is made fresh each run, so that "the image is unchanged" means
//! something.
//!
//! Run: `cargo test -p kiln-vm --test boot_real -- --ignored --nocapture`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kiln_exec::Cmd;
use kiln_vm::boot::{boot, BootEvent, BootOptions, Ending};
use kiln_vm::{Accel, DirectBoot, Firmware, ImageFormat};
use sha2::{Digest, Sha256};

/// The bootstrap, also the cache key of the tree.
const MMDEBSTRAP: &[&str] = &[
    "--variant=important",
    "--include=linux-image-amd64,cloud-init,systemd-sysv",
    "bookworm",
];

/// One VM at a time: two TCG guests on two cores would each take twice as long.
static ONE_VM: Mutex<()> = Mutex::new(());

fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("boot-real")
}

/// The cached Debian tree, built on first use.
fn debian_tree() -> PathBuf {
    static TREE: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut cached = TREE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = &*cached {
        return t.clone();
    }
    let dir = cache_dir();
    let tree = dir.join("tree");
    let stamp = dir.join("tree.command");
    let key = MMDEBSTRAP.join(" ");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(key.as_str()) || !tree.join("boot").is_dir() {
        let part = dir.join("tree.part");
        for stale in [&tree, &part] {
            if stale.exists() {
                std::fs::remove_dir_all(stale).unwrap();
            }
        }
        std::fs::create_dir_all(&dir).unwrap();
        let started = Instant::now();
        eprintln!("building the Debian tree (mmdebstrap {key}); cached for later runs");
        Cmd::new("mmdebstrap")
            .args(MMDEBSTRAP)
            .arg(&part)
            .log_to(dir.join("mmdebstrap.log"))
            .run()
            .expect("mmdebstrap (see target/tmp/boot-real/mmdebstrap.log)");
        std::fs::rename(&part, &tree).unwrap();
        std::fs::write(&stamp, &key).unwrap();
        eprintln!("tree built in {:.0?}", started.elapsed());
    }
    *cached = Some(tree.clone());
    tree
}

/// The newest `prefix*` file in the tree's /boot.
fn boot_file(tree: &Path, prefix: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir(tree.join("boot"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| panic!("no {prefix}* in {}/boot", tree.display()))
}

/// A fresh ext4 image of the tree, labelled and sized with room to spare.
fn root_image(tree: &Path, out: &Path) {
    Cmd::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "kiln-root", "-d"])
        .arg(tree)
        .arg(out)
        .arg("1536M")
        .run()
        .unwrap();
}

fn sha256(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("{:x}", h.finalize())
}

fn boot_debian(firmware: Firmware) {
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let tree = debian_tree();
    let work = tempfile::tempdir_in(cache_dir()).unwrap();
    let image = work.path().join("root.ext4");
    let t = Instant::now();
    root_image(&tree, &image);
    eprintln!("mke2fs -d: {:.1?}", t.elapsed());
    let before = sha256(&image);

    let mut opts = BootOptions::new(&image, work.path().join("console.log"));
    opts.format = Some(ImageFormat::Raw);
    opts.firmware = firmware;
    opts.accel = Some(Accel::Tcg);
    opts.timeout = Duration::from_secs(240);
    // systemd's own status lines stop once getty owns the console, so
    // extra expectations look at the kernel and cloud-init instead.
    opts.expect = vec![r"Linux version 6\.\d+".to_owned(), "DataSourceNoCloud".to_owned()];
    opts.direct_boot = Some(DirectBoot {
        kernel: boot_file(&tree, "vmlinuz-"),
        initrd: Some(boot_file(&tree, "initrd.img-")),
        append: "root=/dev/vda rw console=ttyS0 panic=-1".to_owned(),
    });
    let verdict = boot(&opts, &mut |e| match e {
        BootEvent::Started { command, .. } => eprintln!("started: {command}"),
        BootEvent::Seen(s) => eprintln!("[{:5.1} s] seen {}: {}", s.at.as_secs_f64(), s.name, s.line.trim()),
        BootEvent::Waiting { elapsed } => eprintln!("[{:5.1} s] waiting", elapsed.as_secs_f64()),
        BootEvent::Accel(_) => {}
    })
    .unwrap();
    eprintln!(
        "{} {}: {}",
        if verdict.passed { "PASS" } else { "FAIL" },
        firmware.name(),
        verdict.summary()
    );
    if !verdict.passed {
        eprintln!("--- last console lines:\n{}", verdict.tail.join("\n"));
    }
    assert!(verdict.passed, "{}", verdict.summary());
    assert_eq!(verdict.ending, Ending::AllSeen);
    assert!(verdict.checks.iter().all(|c| c.seen_at.is_some()));
    let console = String::from_utf8_lossy(&std::fs::read(work.path().join("console.log")).unwrap()).into_owned();
    assert!(
        console.contains("DataSourceNoCloud"),
        "cloud-init did not read the generated NoCloud seed"
    );
    assert_eq!(sha256(&image), before, "snapshot mode changed the image");
}

#[test]
#[ignore = "slow: boots a VM under TCG"]
fn debian_bios_direct_kernel_boot_reaches_login_and_cloud_init() {
    boot_debian(Firmware::Bios);
}

#[test]
#[ignore = "slow: boots a VM under TCG"]
fn debian_uefi_direct_kernel_boot_reaches_login_and_cloud_init() {
    boot_debian(Firmware::Uefi);
}
