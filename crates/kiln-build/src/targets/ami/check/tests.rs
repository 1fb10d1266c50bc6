//! Disks assembled by the disk target's own `assemble` with the ami's
//! plan (GRUB from the host's modules) from a small tree shaped like a
//! finalised ami's, each broken in one way that exactly one rule must
//! catch; and the rules' parsers on their own.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use kiln_exec::Cmd;
use uuid::Uuid;

use super::*;
use crate::targets::ami::AmiPlan;
use crate::targets::contract::testing::{failed, wrong_failures};
use crate::targets::disk::{assemble, layout, write_grub_cfg, DiskIds, DiskPlan};
use crate::targets::TargetInputs;

const KERNEL: &str = "6.1.0-18-amd64";

fn write(root: &Path, path: &str, text: &str) {
    let p = root.join(path.trim_start_matches('/'));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

fn spec(extra: &str) -> kiln_spec::Spec {
    let text =
        format!("[image]\nname = \"t\"\nversion = \"1\"\n[base]\ndistro = \"debian\"\nrelease = \"bookworm\"\n{extra}");
    match kiln_spec::parse_str(&text, Path::new("spec.toml"), Path::new("/")) {
        Ok(loaded) => loaded.spec,
        Err(e) => panic!("{e}"),
    }
}

/// The ami's plan, its disk made 1 GiB (the spec's minimum is 2) so that
/// the tests write less.
fn plan() -> AmiPlan {
    let spec = spec("[targets.ami]\n");
    let inputs = TargetInputs {
        spec: &spec,
        family: crate::distro::family(spec.base.distro()),
        source_date_epoch: None,
        dir: Path::new("/"),
    };
    let mut plan = AmiPlan::resolve(&inputs, spec.targets.ami.as_ref().unwrap()).unwrap();
    plan.disk.target.size = Some(kiln_spec::Written::new("1GiB"));
    plan.disk.size = Some(1 << 30);
    plan
}

/// A newc cpio archive of regular files, as initramfs-tools writes it.
fn cpio(files: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, name) in files.iter().copied().chain(["TRAILER!!!"]).enumerate() {
        let mode = if name == "TRAILER!!!" { 0 } else { 0o100644 };
        out.extend_from_slice(b"070701");
        for f in [i as u32 + 1, mode, 0, 0, 1, 0, 0, 0, 0, 0, 0, name.len() as u32 + 1, 0] {
            out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    out
}

fn initrd(modules: &[&str]) -> Vec<u8> {
    let paths: Vec<String> = modules
        .iter()
        .map(|m| format!("usr/lib/modules/{KERNEL}/kernel/drivers/{m}.ko"))
        .collect();
    let mut files: Vec<&str> = paths.iter().map(String::as_str).collect();
    files.push("init");
    zstd::encode_all(&cpio(&files)[..], 3).unwrap()
}

const CLOUD_CFG: &str = "users:\n  - default\ndisable_root: true\n\
system_info:\n  default_user:\n    name: debian\n    lock_passwd: True\n    groups: [adm, sudo]\n    sudo: [\"ALL=(ALL) NOPASSWD:ALL\"]\n    shell: /bin/bash\n\
cloud_init_modules:\n  - seed_random\n  - growpart\n  - resizefs\n  - set_hostname\n\
cloud_config_modules:\n  - ssh\ncloud_final_modules:\n  - final_message\n";

/// What the ami's finalisation leaves in a tree (its script, run by sh,
/// would need a chroot): the files the rules read.
fn good_tree(tree: &Path, plan: &AmiPlan, ids: &DiskIds) {
    for d in ["etc/ssh", "usr/lib", "var/log", "usr/bin"] {
        fs::create_dir_all(tree.join(d)).unwrap();
    }
    symlink("/usr/lib/grub", tree.join("usr/lib/grub")).unwrap();
    write(tree, &format!("boot/vmlinuz-{KERNEL}"), "kernel");
    fs::write(
        tree.join(format!("boot/initrd.img-{KERNEL}")),
        initrd(&["nvme/host/nvme", "net/ethernet/amazon/ena/ena"]),
    )
    .unwrap();
    write(
        tree,
        "etc/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
    );
    write(tree, "etc/machine-id", "");
    write(tree, "etc/fstab", &layout::fstab_lines(&plan.disk.partitions, ids));
    write(
        tree,
        "var/lib/dpkg/status",
        "Package: cloud-init\nStatus: install ok installed\nVersion: 22.4.2-1\n\n",
    );
    write(tree, "etc/cloud/cloud.cfg", CLOUD_CFG);
    write(
        tree,
        "etc/cloud/cloud.cfg.d/90-kiln-datasources.cfg",
        "datasource_list: [ Ec2, None ]\n",
    );
    write(
        tree,
        "etc/cloud/cloud.cfg.d/91-kiln-disk.cfg",
        "growpart:\n  mode: auto\n  devices: [\"/\"]\nresize_rootfs: true\n",
    );
    // The ami's own settings, as its finalisation writes them.
    let script = crate::targets::ami::finalise_script(plan, &crate::distro::DEBIAN);
    let heredoc = |start: &str, end: &str| -> String {
        let from = script.find(start).unwrap() + start.len();
        let to = from + script[from..].find(end).unwrap();
        script[from..to].to_owned()
    };
    write(
        tree,
        crate::targets::ami::CLOUD_CFG,
        &heredoc("<<'KILN_CFG'\n", "KILN_CFG\n"),
    );
    write(
        tree,
        crate::targets::ami::TIMESYNCD_CONF,
        &heredoc("<<'KILN_TIME'\n", "KILN_TIME\n"),
    );
    write(tree, "usr/lib/systemd/systemd-timesyncd", "ELF");
    write(
        tree,
        "etc/systemd/timesyncd.conf",
        "[Time]\n#NTP=\n#FallbackNTP=0.debian.pool.ntp.org\n",
    );
    fs::create_dir_all(tree.join("etc/systemd/system/sysinit.target.wants")).unwrap();
    symlink(
        "/lib/systemd/system/systemd-timesyncd.service",
        tree.join("etc/systemd/system/sysinit.target.wants/systemd-timesyncd.service"),
    )
    .unwrap();
    write(tree, "usr/bin/growpart", "#!/bin/sh\n");
    fs::set_permissions(tree.join("usr/bin/growpart"), fs::Permissions::from_mode(0o755)).unwrap();
    write(
        tree,
        "etc/shadow",
        "root:!*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",
    );
    write(
        tree,
        "etc/network/interfaces",
        "source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n",
    );
    write_grub_cfg(tree, &plan.disk, ids).unwrap();
}

/// Assembles the ami disk of `disk` (the plan's by default) from the good
/// tree after `mutate` changes it.
fn build(dir: &Path, disk: Option<DiskPlan>, mutate: impl FnOnce(&Path)) -> PathBuf {
    let mut plan = plan();
    if let Some(disk) = disk {
        plan.disk = disk;
    }
    let ids = DiskIds::derive(|w| Uuid::new_v5(&Uuid::NAMESPACE_OID, w.as_bytes()));
    let tree = dir.join("tree");
    good_tree(&tree, &plan, &ids);
    mutate(&tree);
    let content = crate::targets::disk::measure(&plan.disk, &tree).unwrap();
    let sizes = layout::sizes(&plan.disk.target, &plan.disk.partitions, &content).unwrap();
    let raw = dir.join("ami.raw");
    fs::File::create(&raw).unwrap().set_len(sizes.disk).unwrap();
    assemble(&raw, &plan.disk, &tree, &ids, &sizes).unwrap();
    raw
}

fn tools_present() -> bool {
    ["grub-mkimage", "mke2fs", "qemu-img"]
        .iter()
        .all(|t| kiln_exec::testing::require_tool_or_skip(t))
}

#[test]
fn a_good_ami_passes_every_rule() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = build(dir.path(), None, |_| {});
    let r = check(&raw, &CheckOptions::default()).unwrap();
    assert_eq!(failed(&r), vec![]);
    let ids: Vec<&str> = r.iter().map(|r| r.id).collect();
    let disk = crate::targets::disk::check::tests::ALL.len();
    assert_eq!(
        ids[..disk],
        crate::targets::disk::check::tests::ALL,
        "the disk's rules first (with the security contract's)"
    );
    assert_eq!(
        ids[disk..],
        [
            "raw-size",
            "layout",
            "cloud-init",
            "growpart",
            "kernel-cmdline",
            "initramfs",
            "time-sync",
            "network",
            "default-user",
            "ssh-passwords",
        ]
    );
    let user = r.iter().find(|r| r.id == "default-user").unwrap();
    assert!(
        user.reason
            .starts_with("`admin` (from /etc/cloud/cloud.cfg.d/95-kiln-ami.cfg)"),
        "{}",
        user.reason
    );

    // The same disk as qcow2: the one thing EC2 would not take.
    let q = dir.path().join("ami.qcow2");
    Cmd::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&q)
        .run()
        .unwrap();
    let fails = failed(&check(&q, &CheckOptions::default()).unwrap());
    assert_eq!(fails.len(), 1, "{fails:?}");
    assert_eq!(fails[0].0, "raw-size");
    assert!(fails[0].1.starts_with("a qcow2 file"), "{fails:?}");
}

/// One broken thing per case, and the one rule that must catch it.
#[test]
fn each_broken_ami_fails_its_rule() {
    if !tools_present() {
        return;
    }
    type Change = Box<dyn FnOnce(&Path)>;
    let put = |p: &'static str, text: &'static str| -> Change { Box::new(move |t: &Path| write(t, p, text)) };
    let cfg = "/etc/cloud/cloud.cfg.d/99-local.cfg";
    let cases: Vec<(&str, Change, &str, &str)> = vec![
        (
            "NoCloud first",
            put(cfg, "datasource_list: [ NoCloud, Ec2 ]\n"),
            "cloud-init",
            "Ec2 must come first",
        ),
        (
            "no cloud-init",
            put(
                "/var/lib/dpkg/status",
                "Package: curl\nStatus: install ok installed\nVersion: 1\n\n",
            ),
            "cloud-init",
            "cloud-init is not installed",
        ),
        (
            "resizefs off",
            put(cfg, "resize_rootfs: false\n"),
            "growpart",
            "resizefs is switched off",
        ),
        (
            "no growpart program",
            Box::new(|t: &Path| fs::remove_file(t.join("usr/bin/growpart")).unwrap()),
            "growpart",
            "no /usr/bin/growpart",
        ),
        (
            "no NVMe timeout",
            Box::new(|t: &Path| {
                let text = fs::read_to_string(t.join("boot/grub/grub.cfg")).unwrap();
                write(
                    t,
                    "boot/grub/grub.cfg",
                    &text.replace(" nvme_core.io_timeout=4294967295", ""),
                );
            }),
            "kernel-cmdline",
            "no nvme_core.io_timeout=4294967295",
        ),
        (
            "tty0 last",
            Box::new(|t: &Path| {
                let text = fs::read_to_string(t.join("boot/grub/grub.cfg")).unwrap();
                write(
                    t,
                    "boot/grub/grub.cfg",
                    &text.replace("console=tty0 console=ttyS0,115200", "console=ttyS0,115200 console=tty0"),
                );
            }),
            "kernel-cmdline",
            "the last console= is tty0",
        ),
        (
            "no ENA",
            Box::new(|t: &Path| {
                fs::write(t.join(format!("boot/initrd.img-{KERNEL}")), initrd(&["nvme/host/nvme"])).unwrap();
            }),
            "initramfs",
            "lacks ena",
        ),
        (
            "a pool server",
            put(
                "/etc/systemd/timesyncd.conf.d/60-pool.conf",
                "[Time]\nNTP=pool.ntp.org\n",
            ),
            "time-sync",
            "NTP= is [169.254.169.123 pool.ntp.org]",
        ),
        (
            "timesyncd disabled",
            Box::new(|t: &Path| {
                fs::remove_file(t.join("etc/systemd/system/sysinit.target.wants/systemd-timesyncd.service")).unwrap();
            }),
            "time-sync",
            "not enabled",
        ),
        (
            "a netplan file",
            put("/etc/netplan/50-cloud-init.yaml", "network: {version: 2}\n"),
            "network",
            "/etc/netplan/50-cloud-init.yaml",
        ),
        (
            "an eth0 stanza",
            put("/etc/network/interfaces.d/eth0", "auto eth0\niface eth0 inet dhcp\n"),
            "network",
            "configures eth0",
        ),
        (
            "a root password",
            put(
                "/etc/shadow",
                "root:$6$salt$hash:19000:0:99999:7:::\ndaemon:*:1::::::\n",
            ),
            "passwords",
            "root (a password hash, in /etc/shadow)",
        ),
        (
            "a user's password through cloud-init",
            put(
                cfg,
                "system_info:\n  default_user:\n    lock_passwd: false\n    plain_text_passwd: hunter2\n",
            ),
            "default-user",
            "lock_passwd is false; /etc/cloud/cloud.cfg.d/99-local.cfg gives it a password (plain_text_passwd)",
        ),
        (
            "SSH passwords",
            put(cfg, "ssh_pwauth: true\n"),
            "ssh-passwords",
            "ssh_pwauth is true",
        ),
    ];
    let mut problems = Vec::new();
    for (name, mutate, rule, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        let raw = build(dir.path(), None, mutate);
        let r = check(&raw, &CheckOptions::default()).unwrap();
        problems.extend(wrong_failures(name, &r, rule, needle, &[]));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Swap after the root: growpart could not grow it.
#[test]
fn a_root_that_is_not_last_fails_the_layout() {
    if !tools_present() {
        return;
    }
    let spec = spec(
        "[targets.disk]\nformat = \"raw\"\nsize = \"1GiB\"\nconsole = \"ttyS0,115200\"\n\
         [[targets.disk.partitions]]\nrole = \"bios_boot\"\nsize = \"1MiB\"\n\
         [[targets.disk.partitions]]\nrole = \"esp\"\nsize = \"36MiB\"\n\
         [[targets.disk.partitions]]\nrole = \"root\"\nsize = \"900MiB\"\n\
         [[targets.disk.partitions]]\nrole = \"swap\"\n",
    );
    let mut disk = DiskPlan::resolve(&spec, spec.targets.disk.as_ref().unwrap());
    disk.cmdline = plan().cmdline;
    let dir = tempfile::tempdir().unwrap();
    let raw = build(dir.path(), Some(disk), |_| {});
    let fails = failed(&check(&raw, &CheckOptions::default()).unwrap());
    assert_eq!(fails.len(), 1, "{fails:#?}");
    assert_eq!(fails[0].0, "layout");
    assert!(
        fails[0].1.contains("4 partitions, not 3") && fails[0].1.contains("is not the root"),
        "{fails:?}"
    );
}

#[test]
fn sizes_ebs_takes() {
    for (format, size, ok, needle) in [
        (Format::Raw, 2 * GIB, true, "raw, 2 GiB"),
        (Format::Raw, 2 * GIB + 512, false, "not a whole number of GiB"),
        (Format::Raw, 0, false, "not a whole number of GiB"),
        (Format::Raw, 65 << 40, false, "largest EBS volume"),
    ] {
        let (passed, reason) = size_rule(&format, size);
        assert_eq!(passed, ok, "{size}: {reason}");
        assert!(reason.contains(needle), "{size}: {reason}");
    }
}

#[test]
fn timesyncd_lists_add_and_reset() {
    let files = [
        "[Time]\nNTP=a b\n#NTP=x\n[Other]\nNTP=y\n".to_owned(),
        "[Time]\nNTP=\nNTP=c\nFallbackNTP=\n".to_owned(),
        "[Time]\nNTP=d\n".to_owned(),
    ];
    assert_eq!(systemd_list(&files, "Time", "NTP").unwrap(), ["c", "d"]);
    assert_eq!(
        systemd_list(&files, "Time", "FallbackNTP").unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(systemd_list(&files[..1], "Time", "FallbackNTP"), None);
}

#[test]
fn modules_as_files_compressed_or_built_in() {
    let paths = vec![
        "usr/lib/modules/6.1/kernel/drivers/nvme/host/nvme.ko.zst".to_owned(),
        "usr/lib/modules/6.1/kernel/drivers/nvme/host/nvme-core.ko".to_owned(),
    ];
    let builtin = vec!["kernel/drivers/net/ethernet/amazon/ena/ena.ko".to_owned()];
    assert!(has_module(&paths, &[], "nvme"));
    assert!(!has_module(&paths, &[], "ena"));
    assert!(has_module(&paths, &builtin, "ena"));
    assert!(!has_module(&paths[1..], &[], "nvme"));
}
