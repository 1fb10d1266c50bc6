//! `kiln check --target ami`: reads a disk image without mounting it and
//! says, rule by rule, whether it meets the ami target's contract. The
//! disk target's rules come first (GPT, GRUB for BIOS and UEFI, the root,
//! fstab, grub.cfg, machine-id, host keys: [`super::super::disk::check`]),
//! then EC2's: a raw file of whole GiB (an EBS snapshot's size), the
//! layout (BIOS boot, ESP, the root last so growpart can grow it),
//! cloud-init with the Ec2 datasource first, growpart and resizefs, the
//! serial console and the NVMe timeout on every kernel line, the NVMe and
//! ENA drivers in every initramfs (read from its cpio archives), time
//! from the Amazon Time Sync Service only, no baked network configuration,
//! no password for any account, and a default user with sudo and a locked
//! password.
//!
//! As for the other targets, a rule that cannot be evaluated FAILs and says
//! why; only I/O errors on the file abort. It reads kiln-disk's readers
//! only, so it checks images made by any tool.
//! Non-goals: arm64 images, checking that the image is registered the
//! right way (that is `kiln publish aws`'s), IMDS settings in the image.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Result;
use kiln_disk::grub::{menu_entries, MenuEntry};
use kiln_disk::initramfs::read_initramfs;
use kiln_disk::{FileKind, Format, FsRead, FsType};
use serde_yaml_ng::Value as Yaml;

use super::{CONSOLE, INITRAMFS_MODULES, NVME_TIMEOUT_ARG, TIME_SERVER};
use crate::targets::contract::{
    chain, cloud_configs, cloud_init_installed, datasource_names, disabled_by_config, enabled_modules, executable,
    fail, last_key, merged_key, network_verdict, pass, CloudConfigs, Verdict,
};
use crate::targets::disk::check::{check_disk, guarded, DiskCheck, Part};
use crate::targets::{CheckOptions, RuleResult};

const GIB: u64 = 1 << 30;
/// The largest EBS volume.
const MAX_EBS: u64 = 64 << 40;

/// The rules read from the root filesystem, in order.
const RULES_ON_ROOT: [(&str, &str); 8] = [
    ("cloud-init", "cloud-init with the Ec2 datasource first"),
    ("growpart", "growpart and resizefs grow the root at first boot"),
    (
        "kernel-cmdline",
        "every kernel boots with console=ttyS0 and nvme_core.io_timeout=4294967295",
    ),
    ("initramfs", "the NVMe and ENA drivers in every initramfs"),
    (
        "time-sync",
        "time from the Amazon Time Sync Service (169.254.169.123) only",
    ),
    ("network", "no baked network configuration"),
    (
        "default-user",
        "a cloud-init default user with sudo and a locked password",
    ),
    ("ssh-passwords", "no SSH password logins"),
];

/// Checks the image at `path` against the ami target's contract.
pub fn check(path: &Path, _opts: &CheckOptions) -> Result<Vec<RuleResult>> {
    let DiskCheck {
        mut results,
        image,
        parts,
        root,
    } = check_disk(path)?;
    let r = &mut results;
    r.push(
        "raw-size",
        "a raw disk of whole GiB (the EBS snapshot's size)",
        match &image {
            None => fail("not checked: the file is not a disk image kiln reads"),
            Some(image) => size_rule(image.format(), image.virtual_size()),
        },
    );
    r.push(
        "layout",
        "a BIOS boot partition, an ESP and the root, the root last",
        if parts.is_empty() {
            fail("not checked: no GPT with partitions")
        } else {
            layout_rule(&parts)
        },
    );
    let Some(mut fs) = root else {
        for (id, title) in RULES_ON_ROOT {
            r.push(id, title, fail("not checked: no root filesystem"));
        }
        return Ok(results.0);
    };
    let fs = fs.as_mut();
    let grub = grub_entries(fs);
    let configs = match cloud_configs(fs) {
        Ok(Ok(configs)) => Ok(configs),
        Ok(Err(why)) => Err(fail(why)),
        Err(e) => Err(fail(format!("could not read the image: {}", chain(&e)))),
    };
    let on_configs =
        |fs: &mut dyn FsRead, rule: fn(&mut dyn FsRead, &CloudConfigs) -> kiln_disk::Result<Verdict>| match &configs {
            Ok(c) => rule(fs, c).unwrap_or_else(|e| fail(format!("could not read the image: {}", chain(&e)))),
            Err(v) => v.clone(),
        };
    let [cloud, grow, cmdline, initramfs, time, network, user, ssh] = RULES_ON_ROOT;
    r.push(cloud.0, cloud.1, on_configs(fs, cloud_init_rule));
    r.push(grow.0, grow.1, on_configs(fs, growpart_rule));
    r.push(
        cmdline.0,
        cmdline.1,
        match &grub {
            Ok(entries) => cmdline_rule(entries),
            Err(v) => v.clone(),
        },
    );
    r.push(
        initramfs.0,
        initramfs.1,
        match &grub {
            Ok(entries) => initramfs_rule(fs, entries),
            Err(v) => v.clone(),
        },
    );
    r.push(time.0, time.1, guarded(fs, time_rule));
    r.push(network.0, network.1, guarded(fs, network_rule));
    r.push(user.0, user.1, on_configs(fs, |_, c| Ok(default_user_rule(c))));
    r.push(ssh.0, ssh.1, on_configs(fs, |_, c| Ok(ssh_passwords_rule(c))));
    Ok(results.0)
}

fn size_rule(format: &Format, size: u64) -> Verdict {
    if *format != Format::Raw {
        return fail(format!(
            "a {} file: EBS snapshots are made from raw disks (the ami target writes raw); convert it with qemu-img convert -O raw",
            format.name()
        ));
    }
    if size == 0 || !size.is_multiple_of(GIB) {
        return fail(format!(
            "{size} bytes is not a whole number of GiB: an EBS volume is, and the snapshot's last GiB would be cut or padded"
        ));
    }
    if size > MAX_EBS {
        return fail(format!(
            "{} GiB is larger than the largest EBS volume (64 TiB)",
            size / GIB
        ));
    }
    pass(format!("raw, {} GiB", size / GIB))
}

fn layout_rule(parts: &[Part]) -> Verdict {
    let count = |f: &dyn Fn(&Part) -> bool| parts.iter().filter(|p| f(p)).count();
    let bios = count(&|p| p.p.part_type.is_bios_boot());
    let esp = count(&|p| p.p.part_type.is_esp());
    let is_root_fs = |p: &Part| {
        !p.p.part_type.is_esp()
            && p.fs
                .as_ref()
                .is_some_and(|f| f.fs_type.is_ext() || f.fs_type == FsType::Xfs)
    };
    let roots = count(&is_root_fs);
    let mut problems = Vec::new();
    if bios != 1 {
        problems.push(format!("{bios} BIOS boot partitions (BIOS instances need one)"));
    }
    if esp != 1 {
        problems.push(format!("{esp} EFI system partitions (UEFI instances need one)"));
    }
    if roots != 1 {
        problems.push(format!("{roots} ext4 or XFS partitions (one root)"));
    }
    if parts.len() != 3 {
        problems.push(format!("{} partitions, not 3", parts.len()));
    }
    if let Some(last) = parts.iter().max_by_key(|p| p.p.start) {
        if !is_root_fs(last) {
            problems.push(format!(
                "the last partition ({}, {}) is not the root: growpart grows the root only when it ends the disk",
                last.p.index, last.p.type_name
            ));
        }
    }
    if problems.is_empty() {
        let names: Vec<String> = parts
            .iter()
            .map(|p| format!("{} {}", p.p.index, p.p.type_name))
            .collect();
        pass(names.join(", "))
    } else {
        fail(problems.join("; "))
    }
}

/// The boot entries of the root's `/boot/grub/grub.cfg`, or the verdict
/// for the rules that need them.
fn grub_entries(fs: &mut dyn FsRead) -> std::result::Result<Vec<MenuEntry>, Verdict> {
    match fs.read_file("/boot/grub/grub.cfg") {
        Ok(Some(text)) => {
            let entries = menu_entries(&String::from_utf8_lossy(&text));
            if entries.is_empty() {
                Err(fail("/boot/grub/grub.cfg has no linux line"))
            } else {
                Ok(entries)
            }
        }
        Ok(None) => Err(fail("no /boot/grub/grub.cfg in the root filesystem")),
        Err(e) => Err(fail(format!("could not read /boot/grub/grub.cfg: {}", chain(&e)))),
    }
}

fn unquoted(arg: &str) -> &str {
    arg.trim_matches(|c| c == '\'' || c == '"')
}

fn cmdline_rule(entries: &[MenuEntry]) -> Verdict {
    let serial = CONSOLE.split(',').next().unwrap_or(CONSOLE);
    let mut problems = Vec::new();
    for e in entries {
        let args: Vec<&str> = e.args.iter().map(|a| unquoted(a)).collect();
        let last_console = args.iter().rev().find_map(|a| a.strip_prefix("console="));
        match last_console {
            Some(c) if c.split(',').next() == Some(serial) => {}
            Some(c) => problems.push(format!(
                "{}: the last console= is {c}, so EC2's console output (ttyS0) misses the boot and the login prompt",
                e.kernel
            )),
            None => problems.push(format!("{}: no console={serial}", e.kernel)),
        }
        if !args.contains(&NVME_TIMEOUT_ARG) {
            problems.push(format!(
                "{}: no {NVME_TIMEOUT_ARG}: an EBS volume that stalls would be dropped by the NVMe driver",
                e.kernel
            ));
        }
    }
    if problems.is_empty() {
        pass(format!(
            "{} entr{}: console={serial} last, {NVME_TIMEOUT_ARG}",
            entries.len(),
            if entries.len() == 1 { "y" } else { "ies" }
        ))
    } else {
        fail(problems.join("; "))
    }
}

/// Whether `initramfs` paths hold kernel module `name`, as a file or built in.
fn has_module(paths: &[String], builtin: &[String], name: &str) -> bool {
    let file = format!("/{name}.ko");
    let named = |p: &str| {
        p.ends_with(&file)
            || [".xz", ".zst", ".gz"]
                .iter()
                .any(|z| p.ends_with(&format!("{file}{z}")))
    };
    paths.iter().any(|p| named(p)) || builtin.iter().any(|p| named(p))
}

fn initramfs_rule(fs: &mut dyn FsRead, entries: &[MenuEntry]) -> Verdict {
    let initrds: BTreeSet<&str> = entries
        .iter()
        .flat_map(|e| e.initrds.iter().map(String::as_str))
        .collect();
    if initrds.is_empty() {
        return fail(
            "grub.cfg loads no initrd: the drivers could only be built in, and Debian's kernel has them as modules",
        );
    }
    let mut problems = Vec::new();
    let mut found = Vec::new();
    for path in initrds {
        let bytes = match fs.read_file(path) {
            Ok(Some(b)) => b,
            Ok(None) => {
                problems.push(format!("{path} is missing"));
                continue;
            }
            Err(e) => {
                problems.push(format!("could not read {path}: {}", chain(&e)));
                continue;
            }
        };
        let listing = match read_initramfs(&bytes, |p| p.ends_with("/modules.builtin")) {
            Ok(l) => l,
            Err(e) => {
                problems.push(format!("could not read {path}: {}", chain(&e)));
                continue;
            }
        };
        let builtin: Vec<String> = listing
            .kept
            .values()
            .flat_map(|text| {
                String::from_utf8_lossy(text)
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        let missing: Vec<&str> = INITRAMFS_MODULES
            .iter()
            .copied()
            .filter(|m| !has_module(&listing.paths, &builtin, m))
            .collect();
        if missing.is_empty() {
            found.push(format!("{path} ({})", listing.archives.join(" + ")));
        } else {
            problems.push(format!(
                "{path} lacks {}: Nitro instances could not find their root volume or network",
                missing.join(" and ")
            ));
        }
    }
    if problems.is_empty() {
        pass(format!("{} in {}", INITRAMFS_MODULES.join(" and "), found.join(", ")))
    } else {
        fail(problems.join("; "))
    }
}

fn cloud_init_rule(fs: &mut dyn FsRead, configs: &CloudConfigs) -> kiln_disk::Result<Verdict> {
    if !cloud_init_installed(fs)? {
        return Ok(fail(
            "cloud-init is not installed: an instance would get neither its key pair nor its network",
        ));
    }
    Ok(match last_key(configs, "datasource_list") {
        None => fail("no datasource_list: cloud-init would probe every datasource before Ec2; set datasource_list: [ Ec2, None ]"),
        Some((path, list)) => {
            let names = datasource_names(list);
            if names.first().map(String::as_str) == Some("Ec2") {
                pass(format!("datasource_list in {path}: [{}]", names.join(", ")))
            } else {
                fail(format!(
                    "datasource_list in {path} is [{}]: Ec2 must come first, or another datasource may answer on EC2",
                    names.join(", ")
                ))
            }
        }
    })
}

fn growpart_rule(fs: &mut dyn FsRead, configs: &CloudConfigs) -> kiln_disk::Result<Verdict> {
    let enabled = enabled_modules(configs);
    let mut problems = Vec::new();
    for module in ["growpart", "resizefs"] {
        if !enabled.contains(module) {
            problems.push(format!("{module} is in none of cloud-init's module lists"));
        } else if disabled_by_config(configs, module) {
            problems.push(format!("{module} is switched off in cloud-init's configuration"));
        }
    }
    if !executable(fs, "/usr/bin/growpart")? {
        problems.push("no /usr/bin/growpart (cloud-guest-utils): cloud-init's growpart has nothing to run".to_owned());
    }
    Ok(if problems.is_empty() {
        pass("growpart and resizefs enabled, /usr/bin/growpart present")
    } else {
        fail(format!(
            "{}: the root would stay at the image's size on a larger EBS volume",
            problems.join("; ")
        ))
    })
}

/// The servers of a systemd list setting (`NTP=`, `FallbackNTP=`) across
/// `files`: assignments add to the list, an empty one resets it; `None`
/// when no file sets it.
fn systemd_list(files: &[String], section: &str, key: &str) -> Option<Vec<String>> {
    let mut list: Option<Vec<String>> = None;
    for text in files {
        let mut current = String::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                current = line.trim_matches(|c| c == '[' || c == ']').to_owned();
                continue;
            }
            if current != section {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else { continue };
            if k.trim() != key {
                continue;
            }
            let values: Vec<String> = v.split_whitespace().map(str::to_owned).collect();
            let list = list.get_or_insert_with(Vec::new);
            if values.is_empty() {
                list.clear();
            } else {
                list.extend(values);
            }
        }
    }
    list
}

/// timesyncd.conf and its drop-ins in the order systemd reads them (a
/// drop-in in /etc replaces one of the same name in /usr/lib).
fn timesyncd_files(fs: &mut dyn FsRead) -> kiln_disk::Result<Vec<String>> {
    let mut texts = Vec::new();
    if let Some(t) = fs.read_file("/etc/systemd/timesyncd.conf")? {
        texts.push(String::from_utf8_lossy(&t).into_owned());
    }
    let mut drop_ins = std::collections::BTreeMap::new();
    for dir in ["/usr/lib/systemd/timesyncd.conf.d", "/etc/systemd/timesyncd.conf.d"] {
        for name in fs.read_dir(dir)?.unwrap_or_default() {
            if name.ends_with(".conf") {
                drop_ins.insert(name.clone(), format!("{dir}/{name}"));
            }
        }
    }
    for path in drop_ins.values() {
        if let Some(t) = fs.read_file(path)? {
            texts.push(String::from_utf8_lossy(&t).into_owned());
        }
    }
    Ok(texts)
}

/// Whether systemd unit `unit` is enabled for `target` and not masked.
fn unit_enabled(fs: &mut dyn FsRead, unit: &str, target: &str) -> kiln_disk::Result<bool> {
    let masked = fs.read_link(&format!("/etc/systemd/system/{unit}"))?.as_deref() == Some("/dev/null");
    let wanted = fs
        .symlink_metadata(&format!("/etc/systemd/system/{target}.wants/{unit}"))?
        .is_some();
    Ok(wanted && !masked)
}

fn time_rule(fs: &mut dyn FsRead) -> kiln_disk::Result<Verdict> {
    let timesyncd = ["/usr/lib/systemd/systemd-timesyncd", "/lib/systemd/systemd-timesyncd"];
    let mut installed = false;
    for path in timesyncd {
        installed |= fs.metadata(path)?.is_some_and(|m| m.kind == FileKind::File);
    }
    if installed {
        let files = timesyncd_files(fs)?;
        let ntp = systemd_list(&files, "Time", "NTP").unwrap_or_default();
        let fallback = systemd_list(&files, "Time", "FallbackNTP");
        let mut problems = Vec::new();
        if ntp != [TIME_SERVER] {
            problems.push(format!("NTP= is [{}], not {TIME_SERVER} alone", ntp.join(" ")));
        }
        match fallback {
            Some(f) if f.is_empty() => {}
            Some(f) => problems.push(format!("FallbackNTP= names {}", f.join(" "))),
            None => problems.push("FallbackNTP= is not emptied, so the compiled-in pool servers remain".to_owned()),
        }
        if !unit_enabled(fs, "systemd-timesyncd.service", "sysinit.target")? {
            problems.push("systemd-timesyncd.service is not enabled".to_owned());
        }
        return Ok(if problems.is_empty() {
            pass(format!("systemd-timesyncd: NTP={TIME_SERVER}, no fallback"))
        } else {
            fail(format!("systemd-timesyncd: {}", problems.join("; ")))
        });
    }
    let Some(conf) = fs.read_file("/etc/chrony/chrony.conf")? else {
        return Ok(fail(
            "neither systemd-timesyncd nor chrony is installed: the clock would drift",
        ));
    };
    // chrony: the sources of chrony.conf and the directories it names.
    let mut texts = vec![String::from_utf8_lossy(&conf).into_owned()];
    for dir in ["/etc/chrony/conf.d", "/etc/chrony/sources.d"] {
        for name in fs.read_dir(dir)?.unwrap_or_default() {
            if let Some(t) = fs.read_file(&format!("{dir}/{name}"))? {
                texts.push(String::from_utf8_lossy(&t).into_owned());
            }
        }
    }
    let sources: Vec<String> = texts
        .iter()
        .flat_map(|t| t.lines())
        .map(str::trim)
        .filter(|l| ["server ", "pool ", "peer "].iter().any(|k| l.starts_with(k)))
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect();
    Ok(if sources == [format!("server {TIME_SERVER}")] {
        pass(format!("chrony: server {TIME_SERVER} alone"))
    } else {
        fail(format!(
            "chrony's sources are [{}], not server {TIME_SERVER} alone",
            sources.join(", ")
        ))
    })
}

fn network_rule(fs: &mut dyn FsRead) -> kiln_disk::Result<Verdict> {
    network_verdict(
        fs,
        "no network configuration besides lo: cloud-init renders the instance's",
        "instances name their interfaces differently and cloud-init writes theirs from the metadata",
    )
}

fn default_user_rule(configs: &CloudConfigs) -> Verdict {
    let user = |key: &str| merged_key(configs, &["system_info", "default_user", key]);
    let Some((file, name)) = user("name") else {
        return fail("no system_info.default_user.name: cloud-init would give the key pair to no one");
    };
    let name = yaml_text(name);
    let mut problems = Vec::new();
    if user("lock_passwd").is_some_and(|(_, v)| v.as_bool() == Some(false)) {
        problems.push("lock_passwd is false".to_owned());
    }
    for key in ["passwd", "hashed_passwd", "plain_text_passwd"] {
        if let Some((f, _)) = user(key) {
            problems.push(format!("{f} gives it a password ({key})"));
        }
    }
    if let Some((f, _)) = last_key(configs, "password") {
        problems.push(format!("{f} sets a password (password:)"));
    }
    match user("sudo") {
        None => problems.push("no sudo rule".to_owned()),
        Some((f, v)) if v.as_bool() == Some(false) || v.is_null() => problems.push(format!("{f} takes its sudo away")),
        Some(_) => {}
    }
    if problems.is_empty() {
        pass(format!("`{name}` (from {file}): sudo, password locked"))
    } else {
        fail(format!("default user `{name}`: {}", problems.join("; ")))
    }
}

fn yaml_text(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => s.clone(),
        other => serde_yaml_ng::to_string(other).unwrap_or_default().trim().to_owned(),
    }
}

fn ssh_passwords_rule(configs: &CloudConfigs) -> Verdict {
    match last_key(configs, "ssh_pwauth") {
        Some((_, Yaml::Bool(false))) => pass("ssh_pwauth: false"),
        Some((_, Yaml::String(s))) if matches!(s.as_str(), "false" | "no" | "off") => {
            pass(format!("ssh_pwauth: {s}"))
        }
        Some((path, v)) => fail(format!(
            "ssh_pwauth is {} in {path}: cloud-init would let sshd accept passwords",
            yaml_text(v)
        )),
        None => fail("ssh_pwauth is not set: cloud-init leaves sshd's password setting as the image has it; set ssh_pwauth: false"),
    }
}

#[cfg(test)]
mod tests;
