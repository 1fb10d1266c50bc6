//! kiln's stand-in for OVHcloud's rescue system: a small Debian built with
//! mmdebstrap from the tools the installer uses (reference §1.3: sgdisk,
//! mdadm, lvm2, mkfs.*, rsync, qemu-nbd, curl), booted by QEMU straight from
//! its kernel and initramfs with `init=` set to kiln's rescue init. Built
//! once and cached by the hash of everything that goes into it, through
//! the same Debian backend as image builds, from the host's own release
//! and mirror (OVH's rescue is a Debian too).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_build::bootstrap::BootstrapRequest;
use kiln_build::distro::{DistroFamily, DEBIAN};
use kiln_exec::{Cmd, WorkDir};
use sha2::{Digest, Sha256};

/// The rescue init, PID 1 of the rescue VM.
pub const INIT: &str = include_str!("rescue-init.sh");

/// What the rescue system has installed.
pub const PACKAGES: &[&str] = &[
    "linux-image-amd64",
    "initramfs-tools",
    "busybox",
    "zstd",
    "udev",
    "kmod",
    "iproute2",
    "util-linux",
    "mount",
    "procps",
    "gdisk",
    "parted",
    "mdadm",
    "lvm2",
    "dosfstools",
    "xfsprogs",
    "btrfs-progs",
    "e2fsprogs",
    "rsync",
    "qemu-utils",
    "curl",
    "ca-certificates",
    "jq",
];

/// Filesystem label the rescue root is found by (`root=LABEL=`).
pub const ROOT_LABEL: &str = "kilnrescue";

/// A built rescue system.
#[derive(Debug, Clone)]
pub struct Rescue {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
}

impl Rescue {
    /// The kernel command line: the serial console OVH's rescue has (which
    /// make_image_bootable.sh copies into GRUB), and kiln's init.
    pub fn cmdline(&self) -> String {
        format!(
            "root=LABEL={ROOT_LABEL} rw console=ttyS0,115200n8 init=/usr/local/sbin/kiln-rescue-init panic=-1 quiet"
        )
    }
}

/// Where the rescue init is installed in the rescue tree.
const INIT_PATH: &str = "usr/local/sbin/kiln-rescue-init";

/// What the rescue system is bootstrapped from: the host's Debian release
/// (`/etc/os-release` under `etc`) from the mirror in the host's apt
/// sources (`etc/apt`), minimal, with [`PACKAGES`].
pub fn rescue_request(etc: &Path) -> Result<BootstrapRequest> {
    let os_release = std::fs::read_to_string(etc.join("os-release"))
        .with_context(|| format!("reading {}", etc.join("os-release").display()))?;
    let field = |key: &str| {
        os_release
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim_matches('"').to_owned())
    };
    let release = match (field("ID").as_deref(), field("VERSION_CODENAME")) {
        (Some("debian"), Some(codename)) if !codename.is_empty() => codename,
        _ => anyhow::bail!(
            "the simulated rescue system is built from the host's Debian release and mirror, \
             but {} does not name a Debian release (ID=debian, VERSION_CODENAME=...)",
            etc.join("os-release").display()
        ),
    };
    let base = kiln_spec::Base::Debian(kiln_spec::AptBase {
        release: release.clone(),
        mirror: None,
        snapshot: None,
        components: None,
        variant: None,
        architecture: None,
        sources: Vec::new(),
        image: None,
    });
    Ok(BootstrapRequest {
        distro: kiln_spec::Distro::Debian,
        sources: DEBIAN.sources(&base, &etc.join("apt"))?,
        release,
        variant: "minbase".to_owned(),
        architecture: "amd64".to_owned(),
        include: PACKAGES.iter().map(|p| (*p).to_owned()).collect(),
        download: Vec::new(),
        download_dir: String::new(),
        extra_sources: Vec::new(),
        snapshot: false,
        repos: Vec::new(),
        image: None,
    })
}

/// Returns the cached rescue system bootstrapped from `req` (see
/// [`rescue_request`]), building it first if needed. `on_line` receives
/// the bootstrap's output.
pub fn ensure_rescue(
    cache: &Path,
    req: &BootstrapRequest,
    on_line: impl FnMut(&str) + Send + 'static,
) -> Result<Rescue> {
    let mut h = Sha256::new();
    let request = serde_json::to_string(req)?;
    for part in [request.as_str(), INIT] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let key = hex::encode(&h.finalize()[..8]);
    let dir = cache.join(format!("rescue-{key}"));
    let rescue = Rescue {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        rootfs: dir.join("rootfs.ext4"),
    };
    let ready = |r: &Rescue| r.kernel.is_file() && r.initrd.is_file() && r.rootfs.is_file();
    if ready(&rescue) {
        return Ok(rescue);
    }
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    // Two replays started at once build it once: the second waits here,
    // then finds it stored.
    let lock_path = cache.join(format!("rescue-{key}.lock"));
    let lock = std::fs::File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    if ready(&rescue) {
        return Ok(rescue);
    }
    let work = WorkDir::new_in(cache, &format!(".rescue-{key}-")).context("creating the rescue work directory")?;
    let tree = work.path().join("tree");
    let scratch = work.path().join("scratch");
    let tmp = work.path().join("tmp");
    std::fs::create_dir_all(&tmp)?;
    std::fs::create_dir_all(&scratch)?;
    let (_, cmd) = kiln_build::distro::bootstrap_cmd(&DEBIAN, req, &tree, &scratch, None);
    cmd.env("TMPDIR", &tmp)
        .on_line(on_line)
        .run()
        .context("bootstrapping the rescue system")?;
    kiln_build::chroot::write_mode(&tree.join(INIT_PATH), INIT, 0o755).context("installing the rescue init")?;

    let out = work.path().join("out");
    std::fs::create_dir_all(&out)?;
    let boot = tree.join("boot");
    let newest = |prefix: &str| -> Result<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&boot)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
            .collect();
        found.sort();
        found
            .pop()
            .with_context(|| format!("no {prefix}* in the rescue tree's /boot"))
    };
    std::fs::copy(newest("vmlinuz-")?, out.join("vmlinuz"))?;
    std::fs::copy(newest("initrd.img-")?, out.join("initrd.img"))?;
    let size = kiln_disk::mkfs::tree_size(&tree)? * 5 / 4 + (256 << 20);
    Cmd::new("mke2fs")
        .args(["-q", "-t", "ext4", "-L", ROOT_LABEL, "-d"])
        .arg(&tree)
        .arg(out.join("rootfs.ext4"))
        .arg(format!("{}k", size / 1024))
        .run()
        .context("making the rescue root filesystem")?;
    std::fs::rename(&out, &dir).with_context(|| format!("storing the rescue system in {}", dir.display()))?;
    Ok(rescue)
}
