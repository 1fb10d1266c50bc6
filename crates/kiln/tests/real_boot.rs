//! Slow, real tests of `kiln boot`: the example `disk` image, built by
//! `kiln build` (kiln's own pipeline and qcow2 writer), boots in QEMU (TCG)
//! with BIOS and with UEFI, and the verdict (login prompt, cloud-init
//! finished, --expect) passes on the default, isolated network, as the
//! report says; the image file is not changed by the boot. The UEFI boot
//! gets a disk 4 GiB larger than the image, as a cloud's would be, and user
//! data that reports from inside the guest: the root partition must have
//! been grown into the whole disk by cloud-init, and the ESP mounted from
//! fstab.
//!
//! The airship example makes two artifacts from one tree in one build
//! (`--explain` shows bootstrap and customise once), both meeting their
//! contracts (`kiln check`). Its disk, the metal3 host layout and profile
//! of examples/debian-12-metal3.toml (a fast test keeps the two specs'
//! sections equal), boots once per firmware on a disk 4 GiB larger, and
//! the guest reports every declared partition mounted where the layout
//! says, the root grown into the disk, and the hugepage and sysctl values
//! in effect. Its live ISO boots as a CD and as a USB stick, with BIOS and
//! with UEFI, and the guest reports the hostname from the config drive's
//! meta_data.json, the static address from its network_data.json on the
//! NIC, the overlay root and the medium live-boot found. (How a failed
//! verdict is reported is covered by kiln-vm's fast tests.) `kiln ssh` logs
//! in to the disk example with its throwaway key: the command sees the
//! seed's hostname and its exit status is kiln's.

mod common;
use common::*;

const GROW: u64 = 4 << 30;

fn disk_image() -> std::path::PathBuf {
    example_image("debian-12-disk.toml", "debian-12-disk-1.0.0-disk.qcow2")
}

/// Boots `image` with `kiln boot`; returns the serial console's text.
fn boot_image(image: &std::path::Path, firmware: &str, extra: &[&str]) -> String {
    let before = std::fs::read(image).unwrap();
    // One log per boot: tests boot the same image at once (--cdrom, --usb).
    let medium: String = extra
        .iter()
        .filter(|a| matches!(**a, "--cdrom" | "--usb"))
        .map(|a| format!("{}.", &a[2..]))
        .collect();
    let console = image.with_extension(format!("{firmware}.{medium}console.log"));
    let out = run(kiln()
        .args([
            "boot",
            "--firmware",
            firmware,
            "--timeout",
            "600",
            "--expect",
            "Debian GNU/Linux 12",
        ])
        .args(extra)
        .arg("--console-log")
        .arg(&console)
        .arg(image));
    let t = text(&out);
    eprintln!("{t}");
    assert!(out.status.success(), "kiln boot --firmware {firmware} failed:\n{t}");
    let network = if extra.contains(&"--no-network") {
        "none"
    } else {
        "isolated (no forwards)"
    };
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("\nnetwork: {network}\n")),
        "the report does not say the guest's network was {network}:\n{t}"
    );
    assert!(
        std::fs::read(image).unwrap() == before,
        "the boot changed the image file"
    );
    String::from_utf8_lossy(&std::fs::read(&console).unwrap()).into_owned()
}

/// The value the guest reported on the console as `KILN-<name> <value>`.
/// The report may share its line with what another process printed on
/// the console at the same moment (a login prompt, a kernel message), so
/// the prefix is looked for anywhere in a line.
fn fact<'c>(console: &'c str, name: &str) -> &'c str {
    let prefix = format!("KILN-{name} ");
    console
        .lines()
        .find_map(|l| l.find(prefix.as_str()).map(|at| &l[at + prefix.len()..]))
        .unwrap_or_else(|| {
            let reported: Vec<&str> = console.lines().filter(|l| l.contains("KILN-")).collect();
            panic!("the guest did not report {name}; its reports:\n{}", reported.join("\n"))
        })
        .trim()
}

#[test]
#[ignore = "slow: builds the disk example and boots it under TCG"]
fn disk_example_boots_with_bios_and_installs_its_offline_packages_without_a_network() {
    let console = boot_on_larger_disk(
        &disk_image(),
        "bios",
        &[
            ("NICS", "ls /sys/class/net | tr '\\n' ' '"),
            ("OFFLINE", "apt-get install -y jq >/dev/null 2>&1 && jq --version"),
        ],
        &["--no-network"],
    );
    assert!(console.contains("GNU GRUB"), "GRUB did not show on the serial console");
    assert_eq!(fact(&console, "NICS"), "lo", "the guest had a network card");
    assert_eq!(
        fact(&console, "OFFLINE"),
        "jq-1.6",
        "jq ([packages] offline) did not install from the image's own repository"
    );
}

#[test]
#[ignore = "slow: builds the disk example and boots it under TCG"]
fn disk_example_boots_with_uefi_and_grows_into_a_larger_disk() {
    let console = boot_on_larger_disk(
        &disk_image(),
        "uefi",
        &[
            ("ROOT", "lsblk -b -n -o SIZE $(findmnt -n -o SOURCE /)"),
            ("ESP", "findmnt -n -o FSTYPE /boot/efi"),
        ],
        &[],
    );
    let disk: u64 = fact(&console, "DISK").parse().unwrap();
    let root: u64 = fact(&console, "ROOT").parse().unwrap();
    // The ESP (128 MiB), the BIOS boot partition and the GPTs take the rest.
    assert!(
        root > disk - (140 << 20),
        "cloud-init did not grow the root into the disk: root partition {root} of a {disk}-byte disk"
    );
    assert_eq!(fact(&console, "ESP"), "vfat", "the ESP is not mounted from fstab");
}

#[test]
#[ignore = "slow: builds the disk example and boots it under TCG"]
fn disk_example_answers_kiln_ssh_with_the_seeds_hostname() {
    let image = disk_image();
    let modified = std::fs::metadata(&image).unwrap().modified().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let console = image.with_extension("ssh.console.log");
    // One argument: ssh hands it to the guest's shell as it is.
    let out = run(kiln()
        .env("TMPDIR", tmp.path())
        .args(["ssh", "--hostname", "kiln-ssh-test", "--console-log"])
        .arg(&console)
        .arg(&image)
        .args(["--", "cat /etc/hostname; exit 7"]));
    let t = text(&out);
    eprintln!("{t}");
    assert_eq!(
        out.status.code(),
        Some(7),
        "kiln ssh does not pass the command's status on:\n{t}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "kiln-ssh-test",
        "the guest's hostname is not the seed's:\n{t}"
    );
    assert!(t.contains("powered off"), "{t}");
    assert_eq!(
        std::fs::metadata(&image).unwrap().modified().unwrap(),
        modified,
        "the session changed the image file"
    );
    // The key, the seed, QEMU's files: all gone, and no QEMU left.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
    let needle = console.to_string_lossy().into_owned();
    let running: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("qemu-system") && c.contains(&needle))
        .collect();
    assert!(running.is_empty(), "QEMU still runs: {running:?}");
}

/// The virtual size of a disk image, as `qemu-img` reads it.
fn virtual_size(image: &std::path::Path) -> u64 {
    let info = run(tool("qemu-img").args(["info", "--output=json"]).arg(image));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    info["virtual-size"].as_u64().unwrap()
}

/// Boots `image` on a disk 4 GiB larger than the image, with user data
/// whose runcmd prints each `(name, shell)` as `KILN-<name> <output>` on
/// the console, and checks the guest's disk size (reported as `DISK`);
/// returns the console's text.
fn boot_on_larger_disk(image: &std::path::Path, firmware: &str, facts: &[(&str, &str)], extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("#cloud-config\nruncmd:\n");
    let disk = ("DISK", "lsblk -b -dn -o SIZE /dev/vda");
    let end = ("END", "echo done");
    for (name, shell) in std::iter::once(&disk).chain(facts).chain([&end]) {
        text.push_str(&format!("  - echo \"KILN-{name} $({shell})\" > /dev/console\n"));
    }
    let user_data = dir.path().join("user-data");
    std::fs::write(&user_data, text).unwrap();
    let console = boot_image(
        image,
        firmware,
        &[
            "--disk-size",
            "+4GiB",
            "--user-data",
            user_data.to_str().unwrap(),
            "--expect",
            "KILN-END done",
        ]
        .iter()
        .chain(extra)
        .copied()
        .collect::<Vec<_>>(),
    );
    let disk: u64 = fact(&console, "DISK").parse().unwrap();
    assert_eq!(
        disk,
        virtual_size(image) + GROW,
        "{firmware}: the guest's disk is not 4 GiB larger than the image"
    );
    console
}

const MIB: u64 = 1 << 20;

fn metal3_boots_with(firmware: &str) {
    let image = airship().join("debian-12-airship-1.0.0-disk.qcow2");
    let console = boot_on_larger_disk(
        &image,
        firmware,
        &[
            ("ROOT", "lsblk -b -n -o SIZE $(findmnt -n -o SOURCE /)"),
            ("BOOT", "findmnt -n -o FSTYPE /boot"),
            ("ESP", "findmnt -n -o FSTYPE /boot/efi"),
            ("VARLOG", "findmnt -n -o FSTYPE,OPTIONS /var/log"),
            ("HUGEPAGES", "cat /proc/sys/vm/nr_hugepages"),
            ("SWAPPINESS", "cat /proc/sys/vm/swappiness"),
        ],
        &[],
    );
    let disk: u64 = fact(&console, "DISK").parse().unwrap();
    // Before the root: 1 MiB for the GPT, bios_boot 1 MiB, the ESP 512 MiB,
    // /boot 1 GiB and /var/log 1 GiB; after it the backup GPT.
    let before_root = (1 + 1 + 512 + 1024 + 1024) * MIB;
    let root: u64 = fact(&console, "ROOT").parse().unwrap();
    assert!(
        root + before_root + 2 * MIB >= disk,
        "{firmware}: cloud-init did not grow the root into the disk: root {root} of {disk}"
    );
    assert_eq!(fact(&console, "BOOT"), "ext4", "{firmware}: /boot");
    assert_eq!(fact(&console, "ESP"), "vfat", "{firmware}: /boot/efi");
    let varlog = fact(&console, "VARLOG");
    assert!(
        varlog.starts_with("xfs ") && varlog.contains("noexec"),
        "{firmware}: /var/log is {varlog:?}, not the declared XFS with noexec"
    );
    assert_eq!(
        fact(&console, "HUGEPAGES"),
        "64",
        "{firmware}: hugepages= not in effect"
    );
    assert_eq!(
        fact(&console, "SWAPPINESS"),
        "10",
        "{firmware}: the sysctl not in effect"
    );
}

#[test]
#[ignore = "slow: builds the airship example and boots its disk under TCG"]
fn airship_metal3_disk_boots_with_bios_with_its_layout_and_host_profile() {
    metal3_boots_with("bios");
}

#[test]
#[ignore = "slow: builds the airship example and boots its disk under TCG"]
fn airship_metal3_disk_boots_with_uefi_with_its_layout_and_host_profile() {
    metal3_boots_with("uefi");
}

/// What the live node reports on the console at the end of its first boot
/// (cloud-init's runcmd), as `KILN-<name> <value>`.
const LIVE_REPORT: &str = r#"#cloud-config
runcmd:
  - echo "KILN-HOSTNAME $(hostname)" > /dev/console
  - echo "KILN-ADDR $(ip -4 -o addr show scope global | awk '{print $2, $4}')" > /dev/console
  - echo "KILN-ROOT $(findmnt -n -o FSTYPE /)" > /dev/console
  - echo "KILN-MEDIUM $(findmnt -n -o SOURCE /run/live/medium)" > /dev/console
  - echo "KILN-END done" > /dev/console
"#;

/// The airship example, built once for every test of this run (or reused
/// from an earlier run of the same spec) into a directory of its own: the
/// spec and its network_data.json as they are, its user data replaced by
/// [`LIVE_REPORT`]. The build must run bootstrap and customise once for
/// both targets, and each artifact must meet its target's contract.
fn airship() -> std::path::PathBuf {
    let dir = shared_out("airship-report");
    let _lock = lock_shared(&dir);
    let out = dir.join("out");
    if out.join("manifest.json").is_file()
        && std::fs::read_to_string(dir.join("airship/user-data")).ok().as_deref() == Some(LIVE_REPORT)
    {
        return out;
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("airship")).unwrap();
    let spec = dir.join("debian-12-airship.toml");
    std::fs::copy(example("debian-12-airship.toml"), &spec).unwrap();
    std::fs::copy(
        example("airship/network_data.json"),
        dir.join("airship/network_data.json"),
    )
    .unwrap();
    std::fs::write(dir.join("airship/user-data"), LIVE_REPORT).unwrap();
    let res = run(kiln().args(["build", "--explain", "--out"]).arg(&out).arg(&spec));
    let t = text(&res);
    assert!(res.status.success(), "building the airship example failed:\n{t}");
    for stage in [
        "bootstrap",
        "customise",
        "disk/finalise",
        "iso/finalise",
        "iso/squashfs",
    ] {
        let runs = t
            .lines()
            .filter(|l| {
                l.len() > 2
                    && (l.starts_with("= ") || l.starts_with("! "))
                    && l[2..].split_whitespace().next() == Some(stage)
            })
            .count();
        assert_eq!(runs, 1, "--explain shows {stage} {runs} times, not once:\n{t}");
    }
    for (artifact, target) in [
        ("debian-12-airship-1.0.0-live.iso", "iso"),
        ("debian-12-airship-1.0.0-disk.qcow2", "disk"),
    ] {
        let check = run(kiln().arg("check").arg(out.join(artifact)).args(["--target", target]));
        assert!(
            check.status.success(),
            "kiln check --target {target}:\n{}",
            text(&check)
        );
    }
    let inspect = run(kiln().arg("inspect").arg(out.join("debian-12-airship-1.0.0-live.iso")));
    let t = text(&inspect);
    assert!(inspect.status.success(), "{t}");
    for want in [
        "config-2",
        "BIOS",
        "UEFI",
        "meta_data.json",
        "network_data.json",
        "user_data",
        "10.0.2.50",
    ] {
        assert!(t.contains(want), "kiln inspect of the ISO lacks {want:?}:\n{t}");
    }
    out
}

/// Boots the airship ISO as `medium` (`--cdrom` or `--usb`) with
/// `firmware`, and checks what the live node reports.
fn live_iso_boots(medium: &str, firmware: &str) {
    let iso = airship().join("debian-12-airship-1.0.0-live.iso");
    let console = boot_image(&iso, firmware, &[medium, "--expect", "KILN-END done"]);
    let network: serde_json::Value =
        serde_json::from_slice(&std::fs::read(example("airship/network_data.json")).unwrap()).unwrap();
    let address = network["networks"][0]["ip_address"].as_str().unwrap();
    assert_eq!(
        fact(&console, "HOSTNAME"),
        "airship-ephemeral",
        "{medium} {firmware}: hostname"
    );
    let addr = fact(&console, "ADDR");
    assert!(
        addr.ends_with(&format!(" {address}/24")),
        "{medium} {firmware}: the NIC has {addr:?}, not the config drive's {address}/24"
    );
    assert_eq!(fact(&console, "ROOT"), "overlay", "{medium} {firmware}: the live root");
    let source = fact(&console, "MEDIUM");
    let want = if medium == "--cdrom" { "/dev/sr" } else { "/dev/sd" };
    assert!(
        source.starts_with(want),
        "{medium} {firmware}: live-boot found its medium on {source}, not {want}*"
    );
}

#[test]
#[ignore = "slow: builds the airship example and boots its ISO under TCG"]
fn airship_live_iso_boots_as_a_cd_with_bios() {
    live_iso_boots("--cdrom", "bios");
}

#[test]
#[ignore = "slow: builds the airship example and boots its ISO under TCG"]
fn airship_live_iso_boots_as_a_cd_with_uefi() {
    live_iso_boots("--cdrom", "uefi");
}

#[test]
#[ignore = "slow: builds the airship example and boots its ISO under TCG"]
fn airship_live_iso_boots_as_a_usb_stick_with_bios() {
    live_iso_boots("--usb", "bios");
}

#[test]
#[ignore = "slow: builds the airship example and boots its ISO under TCG"]
fn airship_live_iso_boots_as_a_usb_stick_with_uefi() {
    live_iso_boots("--usb", "uefi");
}

/// The AMI example, built once, checked against the `ami` contract.
fn ami_image() -> std::path::PathBuf {
    let image = example_image("debian-12-ami.toml", "debian-12-ami-1.0.0-ami.raw");
    let check = run(kiln().arg("check").arg(&image).args(["--target", "ami"]));
    assert!(check.status.success(), "kiln check --target ami:\n{}", text(&check));
    image
}

/// Boots the AMI example as EC2 boots it: on an 8 GiB volume, with the
/// local metadata service (`kiln boot --imds`) giving it a fresh key pair
/// and user data that reports from inside the guest; every fact of
/// `kiln_vm::imds::guest` must hold (user data ran, the key in admin's
/// authorized_keys, a request without a token refused, cloud-init on the
/// `aws` platform, the root partition and filesystem grown), and the time
/// server must be Amazon's.
fn ami_boots_as_an_ec2_instance(firmware: &str) {
    let image = ami_image();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("id_ed25519");
    let keygen = run(tool("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "kiln-imds-test", "-f"])
        .arg(&key_file));
    assert!(keygen.status.success(), "ssh-keygen: {}", text(&keygen));
    let key = std::fs::read_to_string(key_file.with_extension("pub")).unwrap();
    let user_data = dir.path().join("user-data");
    std::fs::write(
        &user_data,
        kiln_vm::imds::guest::user_data(
            "admin",
            &[(
                "NTP",
                "systemd-analyze cat-config systemd/timesyncd.conf | sed -n 's/^NTP=//p' | tail -n 1",
            )],
        ),
    )
    .unwrap();
    let modified = std::fs::metadata(&image).unwrap().modified().unwrap();
    let console = image.with_extension(format!("{firmware}.console.log"));
    let out = run(kiln()
        .args([
            "boot",
            "--firmware",
            firmware,
            "--timeout",
            "900",
            "--imds",
            "--ssh-key",
        ])
        .arg(key.trim())
        .arg("--user-data")
        .arg(&user_data)
        .args(["--disk-size", "8GiB", "--expect", kiln_vm::imds::guest::END, "--json"])
        .arg("--console-log")
        .arg(&console)
        .arg(&image));
    let t = text(&out);
    eprintln!("{t}");
    assert!(
        out.status.success(),
        "kiln boot --imds --firmware {firmware} failed:\n{t}"
    );
    assert_eq!(
        std::fs::metadata(&image).unwrap().modified().unwrap(),
        modified,
        "the boot changed the image file"
    );
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let instance = verdict["imds"]["instance_id"]
        .as_str()
        .expect("the verdict names the instance");
    assert!(
        verdict["imds"]["refused"]["no_token"].as_u64().unwrap_or(0) >= 1,
        "the metadata service refused no request without a token: {}",
        verdict["imds"]
    );
    let console = String::from_utf8_lossy(&std::fs::read(&console).unwrap()).into_owned();
    let report = kiln_vm::imds::guest::Report::read(&console);
    let problems = report.problems(&key, instance, 8 << 30);
    assert!(problems.is_empty(), "{firmware}: {}", problems.join("\n"));
    assert_eq!(
        report.get("NTP"),
        Some("169.254.169.123"),
        "{firmware}: the time server"
    );
}

#[test]
#[ignore = "slow: builds the AMI example and boots it under TCG with the local metadata service"]
fn ami_boots_as_an_ec2_instance_with_bios() {
    ami_boots_as_an_ec2_instance("bios");
}

#[test]
#[ignore = "slow: builds the AMI example and boots it under TCG with the local metadata service"]
fn ami_boots_as_an_ec2_instance_with_uefi() {
    ami_boots_as_an_ec2_instance("uefi");
}
