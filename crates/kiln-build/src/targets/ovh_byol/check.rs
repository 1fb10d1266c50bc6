//! `kiln check --target ovh-byol`: reads an image without mounting it and
//! says, rule by rule, whether OVHcloud's BYOLinux installer will accept it
//! and the server will boot it (reference §7, with §1.2 and §1.3).
//!
//! Every rule yields PASS or FAIL with a reason that says what to fix; a
//! rule that cannot be evaluated (the filesystem cannot be read) FAILs and
//! says why. Only I/O errors on the image file itself abort the check.
//! Depends on nothing in kiln-build but kiln-disk, so it checks images made
//! by any tool. Non-goals: verifying btrfs subvolumes (kiln does not read
//! btrfs; such images are reported as unverifiable), running the script.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};
use kiln_disk::{open_filesystem, DiskImage, ErrorKind, FileKind, Format, FsRead, FsType, Partition};

use crate::targets::contract::{
    chain, cloud_configs, cloud_init_installed, datasource_names, disabled_by_config, enabled_modules, executable,
    fail, last_key, machine_id_rule, network_verdict, pass, ssh_keys_rule, Results, Verdict,
};
pub use crate::targets::contract::{CheckOptions, RuleResult};

const GIB: u64 = 1 << 30;
const SCRIPT: &str = super::script::SCRIPT_PATH;
const MANIFEST: &str = crate::manifest::EMBEDDED_PATH;
const DEB_DIRS: &[&str] = &[super::DEBS_DIR, "/var/cache/apt/archives"];
const STORAGE_PACKAGES: &[&str] = &["mdadm", "lvm2", "xfsprogs", "btrfs-progs", "dosfstools"];
const PATH_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

type Rule = fn(&mut Ctx, &CheckOptions) -> Verdict;

/// What the rules look at, read once.
struct Ctx {
    fs: Option<Box<dyn FsRead>>,
    /// Why `fs` is `None`.
    no_fs: String,
    /// Installed dpkg packages; `None` without a dpkg database.
    installed: Option<BTreeSet<String>>,
}

impl Ctx {
    fn fs(&mut self) -> std::result::Result<&mut dyn FsRead, Verdict> {
        match &mut self.fs {
            Some(fs) => Ok(fs.as_mut()),
            None => Err(fail(format!("not checked: {}", self.no_fs))),
        }
    }
}

/// Checks the image at `path` against the BYOLinux contract.
pub fn check_image(path: &Path, opts: &CheckOptions) -> Result<Vec<RuleResult>> {
    let mut results = Vec::new();
    let mut push = |id: &'static str, title: &str, (passed, reason): Verdict| {
        results.push(RuleResult {
            id,
            title: title.to_owned(),
            passed,
            reason,
        });
    };

    let file_size = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let image = match DiskImage::open(path) {
        Ok(image) => image,
        Err(e) if e.kind() == ErrorKind::Io => {
            return Err(anyhow::Error::new(e).context(format!("opening {}", path.display())))
        }
        Err(e) => {
            push(
                "qcow2-format",
                "image file is qcow2",
                fail(format!(
                    "{}; OVH accepts only qcow2: convert with `qemu-img convert -O qcow2`",
                    chain(&e)
                )),
            );
            push_size_rule(&mut push, opts, file_size);
            return Ok(results);
        }
    };
    push("qcow2-format", "image file is qcow2", format_rule(&image));
    push_size_rule(&mut push, opts, file_size);

    let (partition_verdict, mut ctx) = open_partition(image)?;
    push(
        "single-partition",
        "exactly one partition, no ESP or BIOS boot partition",
        partition_verdict.0,
    );
    push(
        "filesystem",
        "partition filesystem is ext4, XFS or btrfs without subvolumes",
        partition_verdict.1,
    );

    ctx.installed = match ctx.fs.as_mut().map(|fs| fs.read_file("/var/lib/dpkg/status")) {
        Some(Ok(Some(status))) => Some(
            kiln_disk::installed_packages(&String::from_utf8_lossy(&status))
                .into_iter()
                .map(|p| p.name)
                .collect(),
        ),
        _ => None,
    };

    let rules: &[(&'static str, &str, Rule)] = &[
        (
            "script-executable",
            "/root/.ovh/make_image_bootable.sh is an executable file",
            |c, _| guarded(c, script_rule),
        ),
        (
            "script-interpreter",
            "the script's #! interpreter exists in the image",
            |c, _| guarded(c, interpreter_rule),
        ),
        (
            "kernel",
            "a kernel in /boot with its /lib/modules directory and its initramfs",
            |c, _| guarded(c, kernel_rule),
        ),
        ("initramfs-tools", "initramfs-tools is installed", |c, _| {
            packages_rule(c, &["initramfs-tools"])
        }),
        ("grub-tools", "GRUB tools for BIOS and UEFI are present", |c, _| {
            guarded(c, grub_tools_rule)
        }),
        (
            "grub-debs",
            "grub-pc and grub-efi-amd64 are available offline",
            |c, _| guarded(c, grub_debs_rule),
        ),
        (
            "storage-packages",
            "mdadm, lvm2, xfsprogs, btrfs-progs, dosfstools are installed",
            |c, _| packages_rule(c, STORAGE_PACKAGES),
        ),
        (
            "cloud-init",
            "cloud-init is installed with the ConfigDrive datasource",
            |c, _| guarded(c, cloud_init_rule),
        ),
        (
            "cloud-init-modules",
            "cloud-init growpart, resizefs and grub-dpkg are disabled",
            |c, _| guarded(c, cloud_modules_rule),
        ),
        ("machine-id", "no baked machine-id", |c, _| guarded(c, machine_id_rule)),
        ("ssh-host-keys", "no baked SSH host keys", |c, _| {
            guarded(c, ssh_keys_rule)
        }),
        ("cloud-init-state", "no cloud-init instance state", |c, _| {
            guarded(c, cloud_state_rule)
        }),
        ("network-config", "no baked network configuration", |c, _| {
            guarded(c, network_rule)
        }),
        ("grub-partuuid", "no root=PARTUUID= GRUB drop-in", |c, _| {
            guarded(c, partuuid_rule)
        }),
        (
            "efi-bootloader-id",
            "the script installs GRUB where efiBootloaderPath points",
            |c, o| efi_rule(c, o),
        ),
    ];
    for (id, title, rule) in rules {
        push(id, title, rule(&mut ctx, opts));
    }
    let mut security = Results::default();
    match ctx.fs.as_mut() {
        Some(fs) => crate::targets::security::push_rules(fs.as_mut(), &mut security, &[]),
        None => crate::targets::security::push_unchecked(&mut security, &ctx.no_fs, &[]),
    }
    for r in security.0 {
        push(r.id, &r.title, (r.passed, r.reason));
    }
    Ok(results)
}

fn push_size_rule(push: &mut impl FnMut(&'static str, &str, Verdict), opts: &CheckOptions, file_size: u64) {
    let Some(ram) = opts.ram else { return };
    let limit = ram.saturating_sub(3 * GIB);
    let verdict = if file_size < limit {
        pass(format!("{} is below RAM − 3 GiB ({})", size(file_size), size(limit)))
    } else {
        fail(format!(
            "{} is not below RAM − 3 GiB ({}): OVH downloads the image into memory; shrink it (`qemu-img convert -c`, fewer packages) or use a server with more RAM",
            size(file_size),
            size(limit)
        ))
    };
    push("image-size", "image fits in the server's RAM minus 3 GiB", verdict);
}

fn format_rule(image: &DiskImage) -> Verdict {
    match image.format() {
        Format::Qcow2(h) => pass(format!("qcow2 version {} (QFI\\xfb magic)", h.version)),
        other => fail(format!(
            "the file is {} (no qcow2 magic, whatever its name); OVH rejects it: convert with `qemu-img convert -O qcow2`",
            other.name()
        )),
    }
}

/// Finds the one partition and opens its filesystem; returns the verdicts of
/// the partition and filesystem rules.
fn open_partition(mut image: DiskImage) -> Result<((Verdict, Verdict), Ctx)> {
    let mut ctx = Ctx {
        fs: None,
        no_fs: String::new(),
        installed: None,
    };
    let table = match kiln_disk::read_partition_table(&mut image) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::Io => return Err(anyhow::Error::new(e).context("reading the partition table")),
        Err(e) => {
            ctx.no_fs = format!("the partition table is unreadable ({})", chain(&e));
            let v = fail(format!("{}; write a valid GPT or MBR with one partition", ctx.no_fs));
            return Ok(((v, fail(format!("not checked: {}", ctx.no_fs))), ctx));
        }
    };
    let parts: Vec<&Partition> = table.partitions.iter().filter(|p| !p.part_type.is_extended()).collect();
    let partition_verdict = if table.kind.is_none() {
        fail("the disk has no partition table (a whole-disk filesystem): OVH mounts partition 1; wrap the filesystem in a GPT or MBR with one partition")
    } else if parts.len() != 1 {
        let list: Vec<String> = parts.iter().map(|p| format!("{} ({})", p.index, p.type_name)).collect();
        fail(format!(
            "{} partitions [{}]: OVH copies exactly one partition's tree and creates the ESP and BIOS boot partitions itself; keep only the root partition",
            parts.len(),
            list.join(", ")
        ))
    } else if parts[0].part_type.is_esp() || parts[0].part_type.is_bios_boot() {
        fail(format!(
            "the only partition is a {} partition; it must hold the root filesystem",
            parts[0].type_name
        ))
    } else {
        pass(format!(
            "partition {} ({}), {}",
            parts[0].index,
            parts[0].type_name,
            size(parts[0].size)
        ))
    };

    // Read the filesystem of the partition that looks like a root, so the
    // content rules still say something useful on a multi-partition image.
    let spans: Vec<(u64, u64)> = if table.kind.is_none() {
        vec![(0, image.virtual_size())]
    } else {
        parts
            .iter()
            .filter(|p| !p.part_type.is_esp() && !p.part_type.is_bios_boot())
            .map(|p| (p.start, p.size))
            .collect()
    };
    let mut fs_verdict = fail("no partition holds a filesystem; make the root partition ext4 or XFS");
    ctx.no_fs = "no readable root filesystem".to_owned();
    for (start, len) in spans {
        let info = match kiln_disk::probe_filesystem(&mut image, start, len) {
            Ok(Some(info)) => info,
            Ok(None) => continue,
            Err(e) => return Err(anyhow::Error::new(e).context("reading filesystem superblocks")),
        };
        fs_verdict = match info.fs_type {
            FsType::Ext4 | FsType::Xfs => pass(format!(
                "{} (uuid {})",
                info.fs_type,
                info.uuid.as_deref().unwrap_or("none")
            )),
            FsType::Btrfs => {
                ctx.no_fs = "kiln cannot read btrfs".to_owned();
                fail("btrfs: OVH accepts it only without subvolumes, and kiln cannot read btrfs to verify that (nor any rule below); use ext4 or XFS to have the image checked")
            }
            other => fail(format!(
                "{other}: OVH accepts ext4, XFS or btrfs (without subvolumes); make the root filesystem ext4 or XFS"
            )),
        };
        if matches!(info.fs_type, FsType::Ext2 | FsType::Ext3 | FsType::Ext4 | FsType::Xfs) {
            match open_filesystem(&image, start, len) {
                Ok(fs) => {
                    ctx.fs = Some(fs);
                    break;
                }
                Err(e) => ctx.no_fs = format!("the {} filesystem is unreadable ({})", info.fs_type, chain(&e)),
            }
        }
    }
    Ok(((partition_verdict, fs_verdict), ctx))
}

/// Runs a rule that needs the filesystem, turning read errors into FAILs.
fn guarded(ctx: &mut Ctx, rule: fn(&mut dyn FsRead) -> kiln_disk::Result<Verdict>) -> Verdict {
    match ctx.fs() {
        Ok(fs) => rule(fs).unwrap_or_else(|e| fail(format!("could not read the image: {}", chain(&e)))),
        Err(v) => v,
    }
}

fn packages_rule(ctx: &mut Ctx, wanted: &[&str]) -> Verdict {
    if let Err(v) = ctx.fs() {
        return v;
    }
    let Some(installed) = &ctx.installed else {
        return fail("no dpkg database (/var/lib/dpkg/status): kiln checks packages of Debian-family images only");
    };
    let missing: Vec<&str> = wanted.iter().copied().filter(|p| !installed.contains(*p)).collect();
    if missing.is_empty() {
        pass(format!("installed: {}", wanted.join(", ")))
    } else {
        fail(format!(
            "not installed: {}; add them to [packages] install (the install runs offline)",
            missing.join(", ")
        ))
    }
}

fn script_rule(fs: &mut dyn FsRead) -> kiln_disk::Result<Verdict> {
    Ok(match fs.metadata(SCRIPT)? {
        None => fail(format!(
            "{SCRIPT} is missing; OVH's installer runs it to install the bootloader"
        )),
        Some(m) if m.kind != FileKind::File => {
            fail(format!("{SCRIPT} is a {:?}, not a regular file", m.kind).to_lowercase())
        }
        Some(m) if m.mode & 0o111 == 0 => fail(format!(
            "{SCRIPT} has mode {:04o}, not executable: chmod 0755 it",
            m.mode
        )),
        Some(m) => pass(format!("regular file, mode {:04o}, {} bytes", m.mode, m.size)),
    })
}

/// The interpreter and its first argument from a `#!` line.
fn shebang(script: &[u8]) -> Option<(String, Option<String>)> {
    let line = script.strip_prefix(b"#!")?;
    let line =
        String::from_utf8_lossy(&line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())]).into_owned();
    let mut words = line.split_whitespace();
    Some((words.next()?.to_owned(), words.next().map(str::to_owned)))
}

fn interpreter_rule(fs: &mut dyn FsRead) -> kiln_disk::Result<Verdict> {
    let Some(script) = fs.read_file(SCRIPT)? else {
        return Ok(fail(format!("{SCRIPT} is missing")));
    };
    let Some((interpreter, arg)) = shebang(&script) else {
        return Ok(fail(format!(
            "{SCRIPT} has no #! line; start it with #!/bin/bash (OVH executes it directly)"
        )));
    };
    if !interpreter.starts_with('/') {
        return Ok(fail(format!(
            "the #! interpreter {interpreter:?} is not an absolute path"
        )));
    }
    if !executable(fs, &interpreter)? {
        return Ok(fail(format!(
            "the #! interpreter {interpreter} does not exist in the image (symlinks resolved inside it) or is not executable; install it or change the #! line"
        )));
    }
    if interpreter.ends_with("/env") {
        if let Some(program) = arg.filter(|a| !a.starts_with('-')) {
            for dir in PATH_DIRS {
                if executable(fs, &format!("{dir}/{program}"))? {
                    return Ok(pass(format!("{interpreter} finds {dir}/{program}")));
                }
            }
            return Ok(fail(format!(
                "{interpreter} {program}: {program} is not in the image's PATH ({})",
                PATH_DIRS.join(":")
            )));
        }
    }
    Ok(pass(format!("{interpreter} exists and is executable")))
}

fn kernel_rule(fs: &mut dyn FsRead) -> kiln_disk::Result<Verdict> {
    let kernels: Vec<String> = fs
        .read_dir("/boot")?
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| n.strip_prefix("vmlinuz-").map(str::to_owned))
        .collect();
    if kernels.is_empty() {
        return Ok(fail("no /boot/vmlinuz-* kernel: install a bare-metal kernel package (e.g. linux-image-amd64, not a -cloud kernel)"));
    }
    let modules = fs.read_dir("/lib/modules")?.unwrap_or_default();
    let matched: Vec<&String> = kernels.iter().filter(|k| modules.contains(k)).collect();
    if matched.is_empty() {
        return Ok(fail(format!(
            "kernel(s) {} have no /lib/modules/<version> directory; the initramfs cannot load storage or NIC drivers",
            kernels.join(", ")
        )));
    }
    // With initramfs-tools, make_image_bootable.sh updates the initramfs
    // (`update-initramfs -u`), which makes none where there is none (dracut
    // and mkinitcpio make theirs anew).
    let initramfs_tools = fs.metadata("/etc/initramfs-tools")?.map(|m| m.kind) == Some(FileKind::Dir);
    for k in matched.iter().filter(|_| initramfs_tools) {
        let initrd = format!("/boot/initrd.img-{k}");
        if !matches!(fs.metadata(&initrd)?, Some(m) if m.kind == FileKind::File) {
            return Ok(fail(format!(
                "kernel {k} has no {initrd}: the installer's script only updates an initramfs, so the machine could not mount its root"
            )));
        }
    }
    // The links the kernel package makes come in pairs.
    for (kernel_link, initrd_link) in [("/vmlinuz", "/initrd.img"), ("/vmlinuz.old", "/initrd.img.old")] {
        if fs.read_link(kernel_link)?.is_some() && fs.read_link(initrd_link)?.is_none() {
            return Ok(fail(format!(
                "{kernel_link} is a link but {initrd_link} is not: the kernel's postinst ran without an initramfs"
            )));
        }
    }
    let mut reason = format!(
        "kernel {}",
        matched.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
    );
    if kernels.iter().any(|k| k.contains("-cloud")) {
        reason.push_str(" (note: a -cloud kernel lacks bare-metal drivers)");
    }
    Ok(pass(reason))
}

fn grub_tools_rule(fs: &mut dyn FsRead) -> kiln_disk::Result<Verdict> {
    let mut missing = Vec::new();
    let mut found_install = false;
    for dir in PATH_DIRS {
        if executable(fs, &format!("{dir}/grub-install"))? {
            found_install = true;
            break;
        }
    }
    if !found_install {
        missing.push("grub-install (package grub2-common)".to_owned());
    }
    for (dir, package) in [
        ("/usr/lib/grub/i386-pc", "grub-pc-bin"),
        ("/usr/lib/grub/x86_64-efi", "grub-efi-amd64-bin"),
    ] {
        if fs.metadata(dir)?.map(|m| m.kind) != Some(FileKind::Dir) {
            missing.push(format!("{dir} (package {package})"));
        }
    }
    Ok(if missing.is_empty() {
        pass("grub-install, i386-pc and x86_64-efi modules present")
    } else {
        fail(format!(
            "missing {}: the script must install GRUB for whichever boot mode the server uses",
            missing.join(", ")
        ))
    })
}

fn grub_debs_rule(fs: &mut dyn FsRead) -> kiln_disk::Result<Verdict> {
    let mut debs = Vec::new();
    for dir in DEB_DIRS {
        for name in fs.read_dir(dir)?.unwrap_or_default() {
            debs.push(format!("{dir}/{name}"));
        }
    }
    let status = fs.read_file("/var/lib/dpkg/status")?;
    let installed: BTreeSet<String> = status
        .map(|s| {
            kiln_disk::installed_packages(&String::from_utf8_lossy(&s))
                .into_iter()
                .map(|p| p.name)
                .collect()
        })
        .unwrap_or_default();
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for package in ["grub-pc", "grub-efi-amd64"] {
        let prefix = format!("{package}_");
        if let Some(deb) = debs.iter().find(|d| {
            let name = d.rsplit('/').next().unwrap_or("");
            name.starts_with(&prefix) && name.ends_with(".deb")
        }) {
            found.push(deb.clone());
        } else if installed.contains(package) {
            found.push(format!("{package} (installed)"));
        } else {
            missing.push(package);
        }
    }
    Ok(if missing.is_empty() {
        pass(found.join(", "))
    } else {
        fail(format!(
            "no .deb for {} in {}: the script runs offline and must install the GRUB flavour the server needs; keep the .deb files in the image",
            missing.join(", "),
            DEB_DIRS.join(" or ")
        ))
    })
}

fn cloud_init_rule(fs: &mut dyn FsRead) -> kiln_disk::Result<Verdict> {
    if !cloud_init_installed(fs)? {
        return Ok(fail(
            "cloud-init is not installed: OVH configures hostname, SSH keys and user data through it",
        ));
    }
    let configs = match cloud_configs(fs)? {
        Ok(c) => c,
        Err(why) => return Ok(fail(why)),
    };
    Ok(match last_key(&configs, "datasource_list") {
        None => pass("cloud-init installed; no datasource_list restriction, so ConfigDrive is probed"),
        Some((path, list)) => {
            let names = datasource_names(list);
            if names.iter().any(|n| n == "ConfigDrive") {
                pass(format!(
                    "cloud-init installed; datasource_list in {path}: [{}]",
                    names.join(", ")
                ))
            } else {
                fail(format!(
                    "datasource_list in {path} is [{}] without ConfigDrive: OVH's config drive would be ignored; add ConfigDrive",
                    names.join(", ")
                ))
            }
        }
    })
}

fn cloud_modules_rule(fs: &mut dyn FsRead) -> kiln_disk::Result<Verdict> {
    let configs = match cloud_configs(fs)? {
        Ok(c) => c,
        Err(why) => return Ok(fail(why)),
    };
    if configs.is_empty() {
        return Ok(fail(
            "no /etc/cloud/cloud.cfg: cannot tell which cloud-init modules run",
        ));
    }
    let enabled = enabled_modules(&configs);
    let active: Vec<&str> = ["growpart", "resizefs", "grub_dpkg"]
        .into_iter()
        .filter(|m| enabled.contains(*m) && !disabled_by_config(&configs, m))
        .collect();
    Ok(if active.is_empty() {
        pass("growpart, resizefs and grub-dpkg are not enabled")
    } else {
        fail(format!(
            "enabled: {}; they fight OVH's storage layout (and grub-dpkg points GRUB at the wrong disk): remove them from the module lists or disable them (growpart: mode: off; resize_rootfs: false; grub_dpkg: enabled: false)",
            active.join(", ")
        ))
    })
}

fn cloud_state_rule(fs: &mut dyn FsRead) -> kiln_disk::Result<Verdict> {
    let mut state = Vec::new();
    for name in fs.read_dir("/var/lib/cloud")?.unwrap_or_default() {
        if !name.starts_with("instance") {
            continue;
        }
        let path = format!("/var/lib/cloud/{name}");
        let empty_dir = fs.read_dir(&path)?.is_some_and(|d| d.is_empty());
        if !empty_dir {
            state.push(path);
        }
    }
    Ok(if state.is_empty() {
        pass("no /var/lib/cloud/instance* state")
    } else {
        fail(format!(
            "{} present: cloud-init would think it already ran and skip OVH's config drive; `cloud-init clean` or delete /var/lib/cloud/*",
            state.join(", ")
        ))
    })
}

fn network_rule(fs: &mut dyn FsRead) -> kiln_disk::Result<Verdict> {
    network_verdict(
        fs,
        "no network configuration besides lo",
        "interface names differ on each server and cloud-init writes the real one from OVH's config drive",
    )
}

fn partuuid_rule(fs: &mut dyn FsRead) -> kiln_disk::Result<Verdict> {
    let mut files: Vec<String> = fs
        .read_dir("/etc/default/grub.d")?
        .unwrap_or_default()
        .into_iter()
        .map(|n| format!("/etc/default/grub.d/{n}"))
        .collect();
    files.push("/etc/default/grub".to_owned());
    let mut offending = Vec::new();
    for path in files {
        if fs.metadata(&path)?.map(|m| m.kind) != Some(FileKind::File) {
            continue;
        }
        let text = fs.read_file(&path)?.unwrap_or_default();
        let active = String::from_utf8_lossy(&text)
            .lines()
            .any(|l| !l.trim_start().starts_with('#') && l.contains("root=PARTUUID="));
        if active {
            offending.push(path);
        }
    }
    Ok(if offending.is_empty() {
        pass("no root=PARTUUID= in /etc/default/grub or grub.d")
    } else {
        fail(format!(
            "{} sets root=PARTUUID=, the image's partition which OVH replaces: the server would not find its root; delete the drop-in",
            offending.join(", ")
        ))
    })
}

/// `\efi\debian\grubx64.efi` → `debian`.
fn bootloader_id(efi_path: &str) -> Option<String> {
    let parts: Vec<&str> = efi_path.split(['\\', '/']).filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [efi, id, _binary] if efi.eq_ignore_ascii_case("efi") => Some((*id).to_owned()),
        _ => None,
    }
}

/// The values the script passes to `--bootloader-id`, with `$VAR` and
/// `${VAR}` replaced by the script's assignments to them.
fn script_bootloader_ids(script: &str) -> Vec<String> {
    let unquote = |s: &str| s.trim_matches(|c| c == '"' || c == '\'').to_owned();
    let assignment = |var: &str| -> Option<String> {
        script.lines().find_map(|l| {
            let l = l.trim_start();
            let l = ["readonly ", "export ", "local ", "declare -r "]
                .iter()
                .fold(l, |l, p| l.strip_prefix(p).unwrap_or(l));
            l.strip_prefix(var)?
                .strip_prefix('=')
                .map(|v| unquote(v.split_whitespace().next().unwrap_or("")))
        })
    };
    let mut ids = Vec::new();
    for (at, _) in script.match_indices("--bootloader-id") {
        let rest = &script[at + "--bootloader-id".len()..];
        let value = rest.strip_prefix('=').or_else(|| rest.strip_prefix(' ')).unwrap_or("");
        let word = unquote(
            value
                .split(|c: char| c.is_whitespace() || c == ';')
                .next()
                .unwrap_or(""),
        );
        let resolved = match word.strip_prefix('$') {
            Some(var) => assignment(var.trim_start_matches('{').trim_end_matches('}')),
            None => Some(word),
        };
        ids.extend(resolved.filter(|s| !s.is_empty()));
    }
    ids
}

fn efi_rule(ctx: &mut Ctx, opts: &CheckOptions) -> Verdict {
    let fs = match ctx.fs() {
        Ok(fs) => fs,
        Err(v) => return v,
    };
    let mut run = || -> kiln_disk::Result<Verdict> {
        let from_manifest = match &opts.efi_bootloader_path {
            Some(_) => None,
            None => fs
                .read_file(MANIFEST)?
                .and_then(|m| serde_json::from_slice::<serde_json::Value>(&m).ok())
                .and_then(|m| m.get("efiBootloaderPath")?.as_str().map(str::to_owned)),
        };
        let Some(path) = opts.efi_bootloader_path.clone().or(from_manifest) else {
            return Ok(pass(
                "no efiBootloaderPath given (--efi-bootloader-path) or embedded in the manifest; nothing to compare",
            ));
        };
        let Some(want) = bootloader_id(&path) else {
            return Ok(fail(format!(
                "efiBootloaderPath {path:?} is not of the form \\efi\\<id>\\<binary>.efi"
            )));
        };
        let Some(script) = fs.read_file(SCRIPT)? else {
            return Ok(fail(format!("{SCRIPT} is missing")));
        };
        let ids = script_bootloader_ids(&String::from_utf8_lossy(&script));
        Ok(if ids.iter().any(|id| id.eq_ignore_ascii_case(&want)) {
            pass(format!("efiBootloaderPath {path} matches --bootloader-id {want}"))
        } else if ids.is_empty() {
            fail(format!(
                "efiBootloaderPath {path} needs GRUB in EFI/{want}, but the script passes no --bootloader-id to grub-install; add --bootloader-id={want}"
            ))
        } else {
            fail(format!(
                "efiBootloaderPath {path} names EFI/{want}, but the script installs GRUB with --bootloader-id {}; iPXE would find no bootloader: make them agree",
                ids.join(", ")
            ))
        })
    };
    run().unwrap_or_else(|e| fail(format!("could not read the image: {}", chain(&e))))
}

fn size(n: u64) -> String {
    if n >= GIB {
        format!("{:.2} GiB", n as f64 / GIB as f64)
    } else {
        format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::path::PathBuf;

    use kiln_disk::{
        layout, make_ext4, make_xfs, write_partition_table, FsOptions, PartKind, PartitionSpec, TableKind,
    };
    use kiln_exec::Cmd;
    use uuid::Uuid;

    use super::*;
    use crate::targets::contract::testing::{failed, wrong_failures};

    const SCRIPT_TEXT: &str = "#!/bin/bash\nset -euo pipefail\nreadonly BOOTLOADER_ID='debian'\n\
        grub-install --target=x86_64-efi --efi-directory=/boot/efi --bootloader-id=\"${BOOTLOADER_ID}\" --no-nvram\n";

    const STATUS: &str = "initramfs-tools mdadm lvm2 xfsprogs btrfs-progs dosfstools cloud-init grub2-common";

    const CLOUD_CFG: &str = "datasource_list: [ NoCloud, None ]\n\
        cloud_init_modules:\n  - seed_random\n  - [bootcmd, always]\n  - growpart\n  - resizefs\n\
        cloud_config_modules:\n  - runcmd\n\
        cloud_final_modules:\n  - name: grub-dpkg\n  - scripts-user\n";

    fn write(root: &Path, path: &str, text: &str, mode: u32) {
        let p = root.join(path.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A tree that meets the contract (cloud.cfg lists the modules, a
    /// drop-in disables them, as kiln's own build does).
    fn good_tree(root: &Path) {
        for d in [
            "usr/bin",
            "usr/sbin",
            "usr/lib/modules/6.1.0-18-amd64",
            "usr/lib/grub/i386-pc",
            "usr/lib/grub/x86_64-efi",
            "etc/ssh",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        for (link, target) in [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")] {
            symlink(target, root.join(link)).unwrap();
        }
        write(root, "/usr/bin/bash", "ELF", 0o755);
        write(root, "/usr/bin/cloud-init", "#!/usr/bin/python3", 0o755);
        write(root, "/usr/sbin/grub-install", "ELF", 0o755);
        write(root, "/boot/vmlinuz-6.1.0-18-amd64", "kernel", 0o644);
        write(root, "/boot/initrd.img-6.1.0-18-amd64", "initramfs", 0o644);
        write(root, "/etc/initramfs-tools/initramfs.conf", "MODULES=most\n", 0o644);
        symlink("boot/vmlinuz-6.1.0-18-amd64", root.join("vmlinuz")).unwrap();
        symlink("boot/initrd.img-6.1.0-18-amd64", root.join("initrd.img")).unwrap();
        write(root, SCRIPT, SCRIPT_TEXT, 0o755);
        write(root, "/root/.ovh/debs/grub-pc_2.06-13_amd64.deb", "deb", 0o644);
        write(root, "/root/.ovh/debs/grub-efi-amd64_2.06-13_amd64.deb", "deb", 0o644);
        let status: String = STATUS
            .split(' ')
            .map(|p| format!("Package: {p}\nStatus: install ok installed\nVersion: 1\n\n"))
            .collect();
        write(root, "/var/lib/dpkg/status", &status, 0o644);
        write(root, "/etc/cloud/cloud.cfg", CLOUD_CFG, 0o644);
        write(
            root,
            "/etc/cloud/cloud.cfg.d/90_dpkg.cfg",
            "datasource_list: [ ConfigDrive, NoCloud ]\n",
            0o644,
        );
        write(
            root,
            "/etc/cloud/cloud.cfg.d/91-kiln-ovh-byol.cfg",
            "growpart:\n  mode: \"off\"\nresize_rootfs: false\ngrub_dpkg:\n  enabled: false\n",
            0o644,
        );
        write(root, "/etc/machine-id", "", 0o444);
        write(root, "/etc/ssh/sshd_config", "PermitRootLogin no\n", 0o644);
        write(
            root,
            "/etc/network/interfaces",
            "source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n",
            0o644,
        );
        write(
            root,
            "/etc/default/grub",
            "GRUB_CMDLINE_LINUX=\"nomodeset iommu=pt\"\n",
            0o644,
        );
        write(
            root,
            "/etc/default/grub.d/kiln.cfg",
            "# root=PARTUUID= is what we avoid\n",
            0o644,
        );
        write(
            root,
            MANIFEST,
            r#"{"efiBootloaderPath": "\\efi\\debian\\grubx64.efi"}"#,
            0o644,
        );
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Disk {
        Qcow2,
        Raw,
        WithEsp,
        Xfs,
    }

    /// Builds a GPT disk with the tree in one ext4 partition (or what `disk`
    /// says) and returns the image path.
    fn build(dir: &Path, disk: Disk, mutate: impl FnOnce(&Path)) -> PathBuf {
        let tree = dir.join("tree");
        good_tree(&tree);
        mutate(&tree);
        let size = if disk == Disk::Xfs { 302u64 << 20 } else { 40 << 20 };
        let raw = dir.join("disk.raw");
        fs::File::create(&raw).unwrap().set_len(size).unwrap();
        let root = |size| PartitionSpec {
            kind: PartKind::LinuxFs,
            size,
            name: "root".into(),
            guid: Uuid::from_u128(1),
        };
        let parts = match disk {
            Disk::WithEsp => {
                vec![
                    PartitionSpec {
                        kind: PartKind::Esp,
                        size: 4 << 20,
                        name: "esp".into(),
                        guid: Uuid::from_u128(2),
                    },
                    root(0),
                ]
            }
            _ => vec![root(0)],
        };
        let l = layout(size, TableKind::Gpt, &parts).unwrap();
        let p = l.partitions.last().unwrap();
        if disk == Disk::Xfs {
            make_xfs(&raw, p.start, p.size, &tree, &FsOptions::default()).unwrap();
        } else {
            make_ext4(&raw, p.start, p.size, &tree, &FsOptions::default()).unwrap();
        }
        write_partition_table(&raw, &l, Uuid::from_u128(3)).unwrap();
        if disk == Disk::Raw {
            // The name lies: only the magic counts.
            let lying = dir.join("disk.qcow2");
            fs::rename(&raw, &lying).unwrap();
            return lying;
        }
        let q = dir.join("disk.qcow2");
        Cmd::new("qemu-img")
            .args(["convert", "-c", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&q)
            .run()
            .unwrap();
        q
    }

    fn results(disk: Disk, opts: &CheckOptions, mutate: impl FnOnce(&Path)) -> Vec<RuleResult> {
        let dir = tempfile::tempdir().unwrap();
        let image = build(dir.path(), disk, mutate);
        check_image(&image, opts).unwrap()
    }

    #[test]
    fn a_good_image_passes_every_rule() {
        let opts = CheckOptions {
            ram: Some(32 * GIB),
            efi_bootloader_path: None,
        };
        let r = results(Disk::Qcow2, &opts, |_| {});
        assert_eq!(failed(&r), vec![]);
        assert_eq!(r.len(), 19 + crate::targets::security::RULES.len(), "{r:#?}");
        let efi = r.iter().find(|r| r.id == "efi-bootloader-id").unwrap();
        assert!(efi.reason.contains("matches --bootloader-id debian"), "{}", efi.reason);
    }

    #[test]
    fn a_good_xfs_image_passes_every_rule() {
        let r = results(Disk::Xfs, &CheckOptions::default(), |_| {});
        assert_eq!(failed(&r), vec![]);
        assert!(r.iter().any(|r| r.id == "filesystem" && r.reason.starts_with("xfs")));
    }

    /// One broken thing per case, and the one rule that must catch it.
    #[test]
    fn each_broken_image_fails_its_rule() {
        type Mutate = Box<dyn FnOnce(&Path)>;
        let rm = |p: &'static str| -> Mutate { Box::new(move |t: &Path| fs::remove_file(t.join(p)).unwrap()) };
        let put =
            |p: &'static str, text: &'static str| -> Mutate { Box::new(move |t: &Path| write(t, p, text, 0o644)) };
        let status_without = |pkg: &'static str| -> Mutate {
            Box::new(move |t: &Path| {
                let s: String = STATUS
                    .split(' ')
                    .filter(|p| *p != pkg)
                    .map(|p| format!("Package: {p}\nStatus: install ok installed\n\n"))
                    .collect();
                write(t, "/var/lib/dpkg/status", &s, 0o644);
            })
        };
        let cases: Vec<(&str, Disk, CheckOptions, Mutate, &str, &str)> = vec![
            (
                "raw",
                Disk::Raw,
                CheckOptions::default(),
                Box::new(|_| {}),
                "qcow2-format",
                "the file is raw",
            ),
            (
                "esp",
                Disk::WithEsp,
                CheckOptions::default(),
                Box::new(|_| {}),
                "single-partition",
                "2 partitions",
            ),
            (
                "ram",
                Disk::Qcow2,
                CheckOptions {
                    ram: Some(3 * GIB),
                    ..Default::default()
                },
                Box::new(|_| {}),
                "image-size",
                "not below RAM",
            ),
            (
                "no script",
                Disk::Qcow2,
                CheckOptions::default(),
                rm("root/.ovh/make_image_bootable.sh"),
                "script-executable",
                "is missing",
            ),
            (
                "script not executable",
                Disk::Qcow2,
                CheckOptions::default(),
                Box::new(|t| write(t, SCRIPT, SCRIPT_TEXT, 0o644)),
                "script-executable",
                "not executable",
            ),
            (
                "no interpreter",
                Disk::Qcow2,
                CheckOptions::default(),
                Box::new(|t| write(t, SCRIPT, &SCRIPT_TEXT.replace("/bin/bash", "/bin/zsh"), 0o755)),
                "script-interpreter",
                "/bin/zsh does not exist",
            ),
            (
                "env interpreter missing",
                Disk::Qcow2,
                CheckOptions::default(),
                Box::new(|t| {
                    write(t, "/usr/bin/env", "ELF", 0o755);
                    write(
                        t,
                        SCRIPT,
                        &SCRIPT_TEXT.replace("/bin/bash", "/usr/bin/env python3"),
                        0o755,
                    );
                }),
                "script-interpreter",
                "python3 is not in the image's PATH",
            ),
            (
                "no kernel",
                Disk::Qcow2,
                CheckOptions::default(),
                rm("boot/vmlinuz-6.1.0-18-amd64"),
                "kernel",
                "no /boot/vmlinuz-*",
            ),
            (
                "no initramfs",
                Disk::Qcow2,
                CheckOptions::default(),
                rm("boot/initrd.img-6.1.0-18-amd64"),
                "kernel",
                "kernel 6.1.0-18-amd64 has no /boot/initrd.img-6.1.0-18-amd64",
            ),
            (
                "no initramfs link",
                Disk::Qcow2,
                CheckOptions::default(),
                rm("initrd.img"),
                "kernel",
                "/vmlinuz is a link but /initrd.img is not",
            ),
            (
                "kernel without modules",
                Disk::Qcow2,
                CheckOptions::default(),
                Box::new(|t| fs::remove_dir(t.join("usr/lib/modules/6.1.0-18-amd64")).unwrap()),
                "kernel",
                "no /lib/modules",
            ),
            (
                "no initramfs-tools",
                Disk::Qcow2,
                CheckOptions::default(),
                status_without("initramfs-tools"),
                "initramfs-tools",
                "initramfs-tools",
            ),
            (
                "no efi modules",
                Disk::Qcow2,
                CheckOptions::default(),
                Box::new(|t| fs::remove_dir(t.join("usr/lib/grub/x86_64-efi")).unwrap()),
                "grub-tools",
                "/usr/lib/grub/x86_64-efi",
            ),
            (
                "no grub-pc deb",
                Disk::Qcow2,
                CheckOptions::default(),
                rm("root/.ovh/debs/grub-pc_2.06-13_amd64.deb"),
                "grub-debs",
                "grub-pc",
            ),
            (
                "no lvm2",
                Disk::Qcow2,
                CheckOptions::default(),
                status_without("lvm2"),
                "storage-packages",
                "not installed: lvm2",
            ),
            (
                "no ConfigDrive",
                Disk::Qcow2,
                CheckOptions::default(),
                put("/etc/cloud/cloud.cfg.d/99-local.cfg", "datasource_list: [ NoCloud ]\n"),
                "cloud-init",
                "without ConfigDrive",
            ),
            (
                "growpart enabled",
                Disk::Qcow2,
                CheckOptions::default(),
                rm("etc/cloud/cloud.cfg.d/91-kiln-ovh-byol.cfg"),
                "cloud-init-modules",
                "enabled: growpart, resizefs, grub_dpkg",
            ),
            (
                "machine-id",
                Disk::Qcow2,
                CheckOptions::default(),
                put("/etc/machine-id", "0123456789abcdef\n"),
                "machine-id",
                "/etc/machine-id has content",
            ),
            (
                "ssh keys",
                Disk::Qcow2,
                CheckOptions::default(),
                put("/etc/ssh/ssh_host_ed25519_key", "key"),
                "ssh-host-keys",
                "ssh_host_ed25519_key",
            ),
            (
                "cloud state",
                Disk::Qcow2,
                CheckOptions::default(),
                Box::new(|t| {
                    fs::create_dir_all(t.join("var/lib/cloud")).unwrap();
                    symlink("/var/lib/cloud/instances/i-1", t.join("var/lib/cloud/instance")).unwrap();
                }),
                "cloud-init-state",
                "/var/lib/cloud/instance",
            ),
            (
                "interfaces",
                Disk::Qcow2,
                CheckOptions::default(),
                put(
                    "/etc/network/interfaces.d/eth0",
                    "allow-hotplug eth0\niface eth0 inet dhcp\n",
                ),
                "network-config",
                "configures eth0",
            ),
            (
                "networkd",
                Disk::Qcow2,
                CheckOptions::default(),
                put("/etc/systemd/network/10-en.network", "[Match]\n"),
                "network-config",
                "10-en.network",
            ),
            (
                "partuuid",
                Disk::Qcow2,
                CheckOptions::default(),
                put(
                    "/etc/default/grub.d/40-force-partuuid.cfg",
                    "GRUB_FORCE_PARTUUID=x\nGRUB_CMDLINE_LINUX=\"root=PARTUUID=abc\"\n",
                ),
                "grub-partuuid",
                "40-force-partuuid.cfg",
            ),
            (
                "efi id mismatch",
                Disk::Qcow2,
                CheckOptions {
                    efi_bootloader_path: Some("\\efi\\ubuntu\\shimx64.efi".into()),
                    ..Default::default()
                },
                Box::new(|_| {}),
                "efi-bootloader-id",
                "installs GRUB with --bootloader-id debian",
            ),
        ];
        let mut problems = Vec::new();
        for (name, disk, opts, mutate, rule, needle) in cases {
            let r = results(disk, &opts, mutate);
            // Rules that cannot hold once the script is gone.
            let consequences: &[&str] = if name == "no script" {
                &["script-interpreter", "efi-bootloader-id"]
            } else {
                &[]
            };
            problems.extend(wrong_failures(name, &r, rule, needle, consequences));
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn shebangs_and_bootloader_ids() {
        assert_eq!(
            shebang(b"#!/usr/bin/env bash\nx"),
            Some(("/usr/bin/env".into(), Some("bash".into())))
        );
        assert_eq!(shebang(b"#! /bin/sh"), Some(("/bin/sh".into(), None)));
        assert_eq!(shebang(b"echo"), None);
        assert_eq!(bootloader_id("\\EFI\\debian\\grubx64.efi").as_deref(), Some("debian"));
        assert_eq!(bootloader_id("/efi/ubuntu/shimx64.efi").as_deref(), Some("ubuntu"));
        assert_eq!(bootloader_id("grubx64.efi"), None);
        assert_eq!(
            script_bootloader_ids("grub-install --bootloader-id debian --no-nvram"),
            ["debian"]
        );
        assert_eq!(
            script_bootloader_ids("ID=\"arch\"\ngrub-install --bootloader-id=$ID"),
            ["arch"]
        );
        assert!(script_bootloader_ids("grub-install --no-nvram").is_empty());
    }
}
