//! Live ISOs made as the iso target makes them (xorriso in grub-mkrescue's
//! way, with GRUB images from the host's grub-mkimage and a squashfs from
//! mksquashfs), each broken in one way that exactly one rule must catch.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln_disk::fat::{write_fat_image, FatEntry, FatOptions};
use kiln_exec::Cmd;

use super::*;
use crate::targets::contract::testing::{failed, wrong_failures};

fn write(root: &Path, path: &str, bytes: impl AsRef<[u8]>) {
    let p = root.join(path.trim_start_matches('/'));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, bytes).unwrap();
}

/// GRUB's eltorito.img and BOOTX64.EFI, made once from the host's modules.
fn grub_images() -> &'static (Vec<u8>, Vec<u8>) {
    static IMAGES: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let make = |format: &str, modules: &[&str]| {
            let out = dir.path().join(format);
            Cmd::new("grub-mkimage")
                .args(["-O", format, "-p", "/boot/grub", "-o"])
                .arg(&out)
                .args(modules)
                .run()
                .unwrap_or_else(|e| panic!("{e}"));
            fs::read(out).unwrap()
        };
        (
            make("i386-pc-eltorito", &["biosdisk", "iso9660"]),
            make("x86_64-efi", &["iso9660"]),
        )
    })
}

/// A kernel as far as the rules look: the boot protocol's header.
fn kernel() -> Vec<u8> {
    let mut k = vec![0u8; 4096];
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k
}

const GRUB_CFG_TEXT: &str = "set timeout=1\nmenuentry 'Debian live' {\n\
    \tlinux /live/vmlinuz boot=live components console=ttyS0\n\tinitrd /live/initrd.img\n}\n";

const META: &str = r#"{"uuid": "5d5b2a57-0000-4000-8000-000000000001", "hostname": "live-1", "name": "live-1"}"#;
const NETWORK: &str = r#"{"links": [{"id": "eth0", "type": "phy", "ethernet_mac_address": "52:54:00:12:34:56"}],
 "networks": [{"id": "n0", "link": "eth0", "type": "ipv4", "ip_address": "192.0.2.10", "netmask": "255.255.255.0"}],
 "services": [{"type": "dns", "address": "192.0.2.1"}]}"#;

/// What to make; each field is one way to break it.
struct Iso {
    label: &'static str,
    config_drive: bool,
    /// Changes the ISO's tree (after it is complete).
    tree: Box<dyn FnOnce(&Path)>,
    /// Changes the live root before it is squashed.
    live: Box<dyn FnOnce(&Path)>,
    /// Files of efi.img.
    efi: Vec<FatEntry>,
    /// xorriso arguments left out.
    drop_args: &'static [&'static str],
    /// xorriso arguments added.
    add_args: &'static [&'static str],
}

impl Default for Iso {
    fn default() -> Self {
        Iso {
            label: CONFIG_DRIVE_LABEL,
            config_drive: true,
            tree: Box::new(|_| {}),
            live: Box::new(|_| {}),
            efi: vec![FatEntry::file(grub::EFI_REMOVABLE_PATH, grub_images().1.clone())],
            drop_args: &[],
            add_args: &[],
        }
    }
}

fn build(dir: &Path, spec: Iso) -> PathBuf {
    let (eltorito, _) = grub_images();
    let root = dir.join("iso");
    let live = dir.join("live");
    write(&live, "etc/machine-id", "");
    write(&live, "etc/ssh/sshd_config", "PermitRootLogin no\n");
    write(&live, "etc/hostname", "localhost\n");
    (spec.live)(&live);
    write(&root, KERNEL, kernel());
    write(&root, INITRD, "initramfs");
    write(&root, GRUB_CFG, GRUB_CFG_TEXT);
    write(&root, "boot/grub/i386-pc/eltorito.img", eltorito);
    write_fat_image(
        &root.join("boot/grub/efi.img"),
        &FatOptions::new("EFIBOOT", 0x1234_5678, 0),
        &spec.efi,
    )
    .unwrap();
    Cmd::new("mksquashfs")
        .arg(&live)
        .arg(root.join(ROOT_IMAGE.trim_start_matches('/')))
        .args(["-noappend", "-quiet", "-no-progress"])
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    if spec.config_drive {
        write(&root, META_DATA, META);
        write(&root, NETWORK_DATA, NETWORK);
        write(&root, "openstack/latest/user_data", "#cloud-config\n");
    }
    (spec.tree)(&root);
    let out = dir.join("live.iso");
    #[rustfmt::skip]
    let args = [
        "-as", "mkisofs", "-quiet", "-R", "-J", "-V", spec.label,
        "-b", "boot/grub/i386-pc/eltorito.img", "-no-emul-boot", "-boot-load-size", "4",
        "-boot-info-table", "--grub2-boot-info",
        "--grub2-mbr", "/usr/lib/grub/i386-pc/boot_hybrid.img",
        "--efi-boot", "boot/grub/efi.img", "-efi-boot-part", "--efi-boot-image",
        "--protective-msdos-label", "-partition_offset", "16",
    ];
    let mut kept: Vec<&str> = Vec::new();
    let mut skip = 0;
    for a in args {
        if skip > 0 {
            skip -= 1;
            continue;
        }
        if spec.drop_args.contains(&a) {
            // Options with a value lose it too.
            skip = usize::from(matches!(
                a,
                "-b" | "--grub2-mbr" | "-boot-load-size" | "--efi-boot" | "-partition_offset"
            ));
            continue;
        }
        kept.push(a);
    }
    kept.extend(spec.add_args);
    Cmd::new("xorriso")
        .args(kept)
        .arg("-o")
        .arg(&out)
        .arg(&root)
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    out
}

fn results(spec: Iso) -> Vec<RuleResult> {
    let dir = tempfile::tempdir().unwrap();
    let iso = build(dir.path(), spec);
    check(&iso, &CheckOptions::default()).unwrap()
}

/// The tools the fixtures are made with (a skip outside CI, a failure in it).
fn tools_present() -> bool {
    ["xorriso", "mksquashfs", "unsquashfs", "grub-mkimage"]
        .into_iter()
        .all(kiln_exec::testing::require_tool_or_skip)
}

#[test]
fn a_good_live_iso_passes_every_rule() {
    if !tools_present() {
        return;
    }
    let r = results(Iso::default());
    assert_eq!(failed(&r), vec![]);
    let ids: Vec<&str> = r.iter().map(|r| r.id).collect();
    let mut all: Vec<&str> = RULES.iter().map(|(id, _)| *id).collect();
    all.extend(crate::targets::security::RULES.map(|(id, _)| id));
    assert_eq!(ids, all);
    let reason = |id: &str| r.iter().find(|r| r.id == id).unwrap().reason.clone();
    assert!(
        reason("bios-eltorito").starts_with("/boot/grub/i386-pc/eltorito.img: GRUB cdboot"),
        "{}",
        reason("bios-eltorito")
    );
    assert!(
        reason("uefi-eltorito").contains("/boot/grub/efi.img: an x86-64 PE"),
        "{}",
        reason("uefi-eltorito")
    );
    assert!(
        reason("config-drive").contains("hostname live-1"),
        "{}",
        reason("config-drive")
    );
    assert!(reason("network-data").contains("eth0: ipv4 192.0.2.10/255.255.255.0"));

    let r = results(Iso {
        label: "KILN-LIVE",
        config_drive: false,
        ..Default::default()
    });
    assert_eq!(failed(&r), vec![]);
}

/// One broken thing per case, and the one rule that must catch it (plus
/// the rules that cannot hold once it is broken).
#[test]
fn each_broken_iso_fails_its_rule() {
    if !tools_present() {
        return;
    }
    type Change = Box<dyn FnOnce(&Path)>;
    let put = |p: &'static str, text: &'static str| -> Change { Box::new(move |t: &Path| write(t, p, text)) };
    let cases: Vec<(&str, Iso, &str, &str, &[&str])> = vec![
        (
            "no rock ridge",
            Iso {
                drop_args: &["-R"],
                add_args: &["--norock"],
                ..Default::default()
            },
            "rock-ridge",
            "no Rock Ridge",
            &[],
        ),
        (
            "no BIOS entry",
            Iso {
                drop_args: &[
                    "-b",
                    "-no-emul-boot",
                    "-boot-load-size",
                    "-boot-info-table",
                    "--grub2-boot-info",
                ],
                ..Default::default()
            },
            "bios-eltorito",
            "no BIOS entry",
            &["hybrid-mbr"],
        ),
        (
            "no boot info table",
            Iso {
                drop_args: &["-boot-info-table"],
                ..Default::default()
            },
            "bios-eltorito",
            "no valid boot info table",
            &[],
        ),
        (
            "not GRUB's eltorito image",
            Iso {
                tree: Box::new(|t| write(t, "/boot/grub/i386-pc/eltorito.img", "x".repeat(4096))),
                ..Default::default()
            },
            "bios-eltorito",
            "is not GRUB's eltorito.img",
            &[],
        ),
        (
            "no BOOTX64.EFI",
            Iso {
                efi: vec![FatEntry::file("EFI/debian/grubx64.efi", "MZ")],
                ..Default::default()
            },
            "uefi-eltorito",
            "has no EFI/BOOT/BOOTX64.EFI",
            &["hybrid-esp"],
        ),
        (
            "BOOTX64.EFI not a PE",
            Iso {
                efi: vec![FatEntry::file(grub::EFI_REMOVABLE_PATH, "#!/bin/sh\n")],
                ..Default::default()
            },
            "uefi-eltorito",
            "not a PE image",
            &["hybrid-esp"],
        ),
        (
            "no hybrid MBR",
            Iso {
                drop_args: &["--grub2-mbr"],
                ..Default::default()
            },
            "hybrid-mbr",
            "no GRUB boot code",
            &[],
        ),
        (
            "no EFI partition",
            Iso {
                drop_args: &["-efi-boot-part", "--efi-boot-image"],
                ..Default::default()
            },
            "hybrid-esp",
            "EFI",
            &[],
        ),
        (
            "the config drive is no partition of a stick",
            Iso {
                drop_args: &["-partition_offset"],
                ..Default::default()
            },
            "config-drive-usb",
            "-partition_offset 16",
            &[],
        ),
        (
            "not a kernel",
            Iso {
                tree: put(KERNEL, "MZ not linux"),
                ..Default::default()
            },
            "kernel",
            "no HdrS",
            &[],
        ),
        (
            "empty initrd",
            Iso {
                tree: put(INITRD, ""),
                ..Default::default()
            },
            "initrd",
            "empty",
            &["grub-cfg"],
        ),
        (
            "no root image",
            Iso {
                tree: Box::new(|t| fs::remove_file(t.join("live/filesystem.squashfs")).unwrap()),
                ..Default::default()
            },
            "root-image",
            "is missing",
            &[
                "machine-id",
                "ssh-host-keys",
                "passwords",
                "ssh-root-login",
                "world-writable",
                "setuid",
                "secrets",
            ],
        ),
        (
            "no boot=live",
            Iso {
                tree: put(GRUB_CFG, "menuentry x {\n linux /live/vmlinuz quiet\n}\n"),
                ..Default::default()
            },
            "grub-cfg",
            "none with boot=live",
            &[],
        ),
        (
            "grub.cfg names a missing kernel",
            Iso {
                tree: put(
                    GRUB_CFG,
                    "menuentry x {\n linux /live/vmlinuz-6.1 boot=live\n initrd /live/initrd.img\n}\n",
                ),
                ..Default::default()
            },
            "grub-cfg",
            "/live/vmlinuz-6.1",
            &[],
        ),
        (
            "meta_data without uuid",
            Iso {
                tree: put(META_DATA, r#"{"hostname": "x"}"#),
                ..Default::default()
            },
            "config-drive",
            "has no uuid",
            &[],
        ),
        (
            "meta_data not JSON",
            Iso {
                tree: put(META_DATA, "uuid: x"),
                ..Default::default()
            },
            "config-drive",
            "not valid JSON",
            &[],
        ),
        (
            "/openstack without the label",
            Iso {
                label: "KILN-LIVE",
                ..Default::default()
            },
            "config-drive",
            "its label is \"KILN-LIVE\"",
            &[],
        ),
        (
            "network on an undeclared link",
            Iso {
                tree: put(
                    NETWORK_DATA,
                    r#"{"links": [{"id": "eth0"}], "networks": [{"id": "n0", "link": "eth1", "type": "ipv4_dhcp"}]}"#,
                ),
                ..Default::default()
            },
            "network-data",
            "uses link \"eth1\"",
            &[],
        ),
        (
            "machine-id",
            Iso {
                live: put("etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
                ..Default::default()
            },
            "machine-id",
            "/etc/machine-id has content",
            &[],
        ),
        (
            "ssh host key",
            Iso {
                live: put("etc/ssh/ssh_host_ed25519_key", "key"),
                ..Default::default()
            },
            "ssh-host-keys",
            "ssh_host_ed25519_key",
            &[],
        ),
    ];
    let mut problems = Vec::new();
    for (name, spec, rule, needle, consequences) in cases {
        let r = results(spec);
        problems.extend(wrong_failures(name, &r, rule, needle, consequences));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_disk_image_is_not_an_iso() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("disk.raw");
    fs::write(&f, vec![0u8; 64 << 10]).unwrap();
    let r = check(&f, &CheckOptions::default()).unwrap();
    assert_eq!(
        failed(&r),
        vec![(
            "iso9660",
            "no CD001 signature at 32 KiB + 1: not an ISO 9660 image".to_owned()
        )]
    );
    assert!(check(&dir.path().join("missing.iso"), &CheckOptions::default()).is_err());
}
