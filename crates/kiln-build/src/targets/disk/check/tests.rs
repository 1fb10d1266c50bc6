//! Disks assembled by the disk target's own [`super::super::assemble`]
//! (GRUB from the host's modules, fstab from the layout), each broken in
//! one way that exactly one rule must catch.

use std::fs;
use std::os::unix::fs::{symlink, FileExt};
use std::path::{Path, PathBuf};

use kiln_exec::Cmd;
use uuid::Uuid;

use super::*;
use crate::targets::contract::testing::{failed, wrong_failures};
use crate::targets::disk::{assemble, layout, write_grub_cfg, DiskIds, DiskPlan};

fn write(root: &Path, path: &str, text: &str) {
    let p = root.join(path.trim_start_matches('/'));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

fn plan(target: &str) -> DiskPlan {
    let text = format!(
        "[image]\nname = \"t\"\nversion = \"1\"\n[base]\ndistro = \"debian\"\nrelease = \"bookworm\"\n[targets.disk]\nformat = \"raw\"\n{target}"
    );
    let spec = match kiln_spec::parse_str(&text, Path::new("spec.toml"), Path::new("/")) {
        Ok(loaded) => loaded.spec,
        Err(e) => panic!("{e}"),
    };
    DiskPlan::resolve(&spec, spec.targets.disk.as_ref().unwrap())
}

const SEPARATE_BOOT: &str = "[[targets.disk.partitions]]\nrole = \"bios_boot\"\nsize = \"1MiB\"\n\
    [[targets.disk.partitions]]\nrole = \"esp\"\nsize = \"36MiB\"\n\
    [[targets.disk.partitions]]\nrole = \"boot\"\nsize = \"16MiB\"\n\
    [[targets.disk.partitions]]\nrole = \"swap\"\nsize = \"4MiB\"\n\
    [[targets.disk.partitions]]\nrole = \"root\"\n";

/// Assembles a disk for `target` from a small tree (GRUB's modules are the
/// host's), after `mutate` changes the finalised tree; `after` may then
/// change the raw disk.
fn build(dir: &Path, target: &str, mutate: impl FnOnce(&Path), after: impl FnOnce(&Path)) -> PathBuf {
    let plan = plan(target);
    let ids = DiskIds::derive(|w| Uuid::new_v5(&Uuid::NAMESPACE_OID, w.as_bytes()));
    let tree = dir.join("tree");
    for d in ["etc/ssh", "usr/lib", "var/log"] {
        fs::create_dir_all(tree.join(d)).unwrap();
    }
    symlink("/usr/lib/grub", tree.join("usr/lib/grub")).unwrap();
    write(&tree, "boot/vmlinuz-6.1.0-18-amd64", "kernel");
    write(&tree, "boot/initrd.img-6.1.0-18-amd64", "initrd");
    write(
        &tree,
        "etc/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
    );
    write(&tree, "etc/machine-id", "");
    write(&tree, "etc/fstab", &layout::fstab_lines(&plan.partitions, &ids));
    write_grub_cfg(&tree, &plan, &ids).unwrap();
    mutate(&tree);
    let content = crate::targets::disk::measure(&plan, &tree).unwrap();
    let sizes = layout::sizes(&plan.target, &plan.partitions, &content).unwrap();
    let raw = dir.join("disk.raw");
    fs::File::create(&raw).unwrap().set_len(sizes.disk).unwrap();
    assemble(&raw, &plan, &tree, &ids, &sizes).unwrap();
    after(&raw);
    raw
}

fn results(target: &str, mutate: impl FnOnce(&Path), after: impl FnOnce(&Path)) -> Vec<RuleResult> {
    let dir = tempfile::tempdir().unwrap();
    let raw = build(dir.path(), target, mutate, after);
    check(&raw, &CheckOptions::default()).unwrap()
}

/// The disk contract's rules, in order.
pub(crate) const ALL: [&str; 13] = [
    "gpt",
    "bios-boot",
    "uefi-boot",
    "root-filesystem",
    "fstab",
    "grub-cfg",
    "machine-id",
    "ssh-host-keys",
    "passwords",
    "ssh-root-login",
    "world-writable",
    "setuid",
    "secrets",
];

#[test]
fn good_disks_pass_every_rule() {
    if !kiln_exec::testing::require_tool_or_skip("grub-mkimage") {
        return;
    }
    if !kiln_exec::testing::require_tool_or_skip("mke2fs") {
        return;
    }
    if !kiln_exec::testing::require_tool_or_skip("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = build(dir.path(), "esp_size = \"36MiB\"\n", |_| {}, |_| {});
    let r = check(&raw, &CheckOptions::default()).unwrap();
    assert_eq!(failed(&r), vec![]);
    let ids: Vec<&str> = r.iter().map(|r| r.id).collect();
    assert_eq!(ids, ALL);
    // The same disk as qcow2: only the container differs.
    let q = dir.path().join("disk.qcow2");
    Cmd::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&q)
        .run()
        .unwrap();
    assert_eq!(failed(&check(&q, &CheckOptions::default()).unwrap()), vec![]);

    // A declared layout: grub.cfg on the /boot partition, swap in fstab.
    let r = results(SEPARATE_BOOT, |_| {}, |_| {});
    assert_eq!(failed(&r), vec![]);
    let grub = r.iter().find(|r| r.id == "grub-cfg").unwrap();
    assert!(grub.reason.starts_with("/grub/grub.cfg"), "{}", grub.reason);
}

/// One broken thing per case, and the one rule that must catch it.
#[test]
fn each_broken_disk_fails_its_rule() {
    if !kiln_exec::testing::require_tool_or_skip("grub-mkimage") {
        return;
    }
    if !kiln_exec::testing::require_tool_or_skip("mke2fs") {
        return;
    }
    if !kiln_exec::testing::require_tool_or_skip("qemu-img") {
        return;
    }
    type Change = Box<dyn FnOnce(&Path)>;
    let none = || -> Change { Box::new(|_| {}) };
    let put = |p: &'static str, text: String| -> Change { Box::new(move |t: &Path| write(t, p, &text)) };
    let zero = |offset: u64, len: usize| -> Change {
        Box::new(move |raw: &Path| {
            let f = fs::OpenOptions::new().write(true).open(raw).unwrap();
            f.write_all_at(&vec![0u8; len], offset).unwrap();
        })
    };
    let esp = "esp_size = \"36MiB\"\n";
    let chmod = |p: &'static str, text: &'static str, mode: u32| -> Change {
        Box::new(move |t: &Path| {
            use std::os::unix::fs::PermissionsExt;
            write(t, p, text);
            fs::set_permissions(t.join(p.trim_start_matches('/')), fs::Permissions::from_mode(mode)).unwrap();
        })
    };
    // The security contract read through the ext4 reader of a real disk.
    let security: Vec<(&str, &str, Change, Change, &str, &str)> = vec![
        (
            "a root password",
            esp,
            put("/etc/shadow", "root:$6$salt$hash:19000::::::\n".into()),
            none(),
            "passwords",
            "root (a password hash, in /etc/shadow)",
        ),
        (
            "sshd allowing root by default",
            esp,
            Box::new(|t: &Path| {
                write(t, "/usr/sbin/sshd", "ELF");
                write(t, "/etc/ssh/sshd_config", "Include /etc/ssh/sshd_config.d/*.conf\n");
            }),
            none(),
            "ssh-root-login",
            "PermitRootLogin prohibit-password (sshd's default)",
        ),
        (
            "a world-writable file",
            esp,
            chmod("/etc/app.conf", "x", 0o666),
            none(),
            "world-writable",
            "/etc/app.conf (0666)",
        ),
        (
            "a setuid file no package installed",
            esp,
            chmod("/usr/local/bin/rootsh", "ELF", 0o4755),
            none(),
            "setuid",
            "/usr/local/bin/rootsh",
        ),
        (
            "a private key in /root",
            esp,
            put(
                "/root/.ssh/id_rsa",
                "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n".into(),
            ),
            none(),
            "secrets",
            "/root/.ssh/id_rsa (a private key)",
        ),
    ];
    let cases: Vec<(&str, &str, Change, Change, &str, &str)> = security
        .into_iter()
        .chain(vec![
            (
                "no MBR boot code",
                esp,
                none(),
                zero(0, 440),
                "bios-boot",
                "no GRUB boot code",
            ),
            (
                "no core.img",
                esp,
                none(),
                zero(1 << 20, 512),
                "bios-boot",
                "no GRUB core.img",
            ),
            (
                "BIOS only",
                "esp_size = \"36MiB\"\nfirmware = [\"bios\"]\n",
                none(),
                none(),
                "uefi-boot",
                "has no EFI/BOOT/BOOTX64.EFI",
            ),
            (
                "UEFI only",
                "esp_size = \"36MiB\"\nfirmware = [\"uefi\"]\n",
                none(),
                none(),
                "bios-boot",
                "no GRUB boot code",
            ),
            (
                "fstab names another filesystem",
                esp,
                Box::new(|t| {
                    let text = fs::read_to_string(t.join("etc/fstab")).unwrap();
                    let first = text.split_whitespace().next().unwrap().to_owned();
                    write(
                        t,
                        "etc/fstab",
                        &text.replace(&first, "UUID=0badc0de-0000-4000-8000-000000000000"),
                    );
                }),
                none(),
                "fstab",
                "names no filesystem on this disk",
            ),
            (
                "fstab without the ESP",
                esp,
                Box::new(|t| {
                    let text = fs::read_to_string(t.join("etc/fstab")).unwrap();
                    let kept: String = text
                        .lines()
                        .filter(|l| !l.contains("/boot/efi"))
                        .map(|l| format!("{l}\n"))
                        .collect();
                    write(t, "etc/fstab", &kept);
                }),
                none(),
                "fstab",
                "(EFI System, vfat) is not in fstab",
            ),
            (
                "fstab by device name",
                esp,
                Box::new(|t| {
                    let text = fs::read_to_string(t.join("etc/fstab")).unwrap();
                    write(t, "etc/fstab", &format!("{text}/dev/sdb1 /srv ext4 defaults 0 2\n"));
                }),
                none(),
                "fstab",
                "/dev/sdb1, a device name",
            ),
            (
                "no grub.cfg",
                esp,
                Box::new(|t| fs::remove_file(t.join("boot/grub/grub.cfg")).unwrap()),
                none(),
                "grub-cfg",
                "no /boot/grub/grub.cfg",
            ),
            (
                "grub.cfg with another root",
                esp,
                Box::new(|t| {
                    let text = fs::read_to_string(t.join("boot/grub/grub.cfg")).unwrap();
                    let at = text.find("root=UUID=").unwrap() + "root=UUID=".len();
                    let uuid = &text[at..at + 36];
                    write(
                        t,
                        "boot/grub/grub.cfg",
                        &text.replace(
                            &format!("root=UUID={uuid}"),
                            "root=UUID=0badc0de-0000-4000-8000-000000000000",
                        ),
                    );
                }),
                none(),
                "grub-cfg",
                "root=UUID=0badc0de",
            ),
            (
                "grub.cfg names a missing kernel",
                esp,
                Box::new(|t| fs::remove_file(t.join("boot/vmlinuz-6.1.0-18-amd64")).unwrap()),
                none(),
                "grub-cfg",
                "vmlinuz-6.1.0-18-amd64 is missing",
            ),
            (
                "machine-id",
                esp,
                put("/etc/machine-id", "0123456789abcdef\n".into()),
                none(),
                "machine-id",
                "/etc/machine-id has content",
            ),
            (
                "ssh host key",
                esp,
                put("/etc/ssh/ssh_host_rsa_key", "key".into()),
                none(),
                "ssh-host-keys",
                "ssh_host_rsa_key",
            ),
        ])
        .collect();
    let mut problems = Vec::new();
    for (name, target, mutate, after, rule, needle) in cases {
        let r = results(target, mutate, after);
        problems.extend(wrong_failures(name, &r, rule, needle, &[]));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_disk_without_gpt_stops_at_the_first_rule() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("blank.raw");
    fs::File::create(&f).unwrap().set_len(8 << 20).unwrap();
    let r = check(&f, &CheckOptions::default()).unwrap();
    assert_eq!(r.len(), 1);
    assert!(!r[0].passed && r[0].reason.starts_with("no partition table"), "{r:?}");
    assert_eq!(
        parse_fstab("# c\nUUID=a / ext4 defaults 0 1\n\nLABEL=b none swap\n"),
        [
            FstabLine {
                spec: "UUID=a".into(),
                mount: "/".into(),
                fs_type: "ext4".into()
            },
            FstabLine {
                spec: "LABEL=b".into(),
                mount: "none".into(),
                fs_type: "swap".into()
            },
        ]
    );
}
