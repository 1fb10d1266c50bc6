//! Behaviour of the generated `make_image_bootable.sh`, function by function:
//! the script is sourced (which runs nothing) in bash, against a temporary
//! root (`KILN_ROOT`), a fake rescue cmdline (`KILN_CMDLINE`) and stub
//! programs on `PATH` that replay recorded output (`findmnt`, `lsblk`, from
//! `src/targets/ovh_byol/testdata/`) or record how they were called (`apt-get`,
//! `grub-install`, `debconf-set-selections`, ...). Fast: no root, no chroot.
//! The real run, in a chroot on a loop device, is `ovh_script_chroot.rs`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use kiln_build::targets::ovh_byol::script::{render_debian, try_render_arch, try_render_rhel, ScriptParams};
use kiln_exec::Cmd;

const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/targets/ovh_byol/testdata");

fn fixture(name: &str) -> PathBuf {
    Path::new(TESTDATA).join(name)
}

/// A temporary root, stub directory and rendered script.
struct Sandbox {
    dir: tempfile::TempDir,
}

struct Run {
    status: ExitStatus,
    stdout: String,
    /// The last lines of stderr, where the script logs.
    log: String,
}

impl Sandbox {
    fn new() -> Self {
        Self::with_script(&render_debian(&ScriptParams::debian()))
    }

    /// A sandbox for another family's script.
    fn with_script(script: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Sandbox { dir };
        fs::create_dir_all(sandbox.root()).unwrap();
        fs::create_dir_all(sandbox.bin()).unwrap();
        fs::write(sandbox.path("script.sh"), script).unwrap();
        fs::write(sandbox.path("calls"), "").unwrap();
        sandbox.cmdline("BOOT_IMAGE=/vmlinuz root=/dev/ram0 quiet\n");
        sandbox
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn root(&self) -> PathBuf {
        self.path("root")
    }

    fn bin(&self) -> PathBuf {
        self.path("bin")
    }

    /// Writes a file under the fake root.
    fn write(&self, rel: &str, text: &str) {
        let p = self.root().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.root().join(rel)).unwrap()
    }

    fn cmdline(&self, text: &str) {
        fs::write(self.path("cmdline"), text).unwrap();
    }

    /// Puts a stub `name` on PATH: it appends `name args...` to the calls
    /// file, then runs `body` (sh).
    fn stub(&self, name: &str, body: &str) {
        let p = self.bin().join(name);
        let text = format!("#!/bin/sh\nprintf '%s\\n' \"{name} $*\" >> \"$KILN_TEST_CALLS\"\n{body}\n");
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A stub printing a recorded fixture.
    fn replay(&self, name: &str, fixture_name: &str) {
        self.stub(name, &format!("cat '{}'", fixture(fixture_name).display()));
    }

    fn calls(&self) -> String {
        fs::read_to_string(self.path("calls")).unwrap()
    }

    fn enable_efi(&self) {
        fs::create_dir_all(self.path("sys-firmware-efi")).unwrap();
    }

    /// Sources the script in bash and runs `code`.
    fn run(&self, code: &str) -> Run {
        let host_path = std::env::var("PATH").unwrap_or_default();
        let (status, out) = Cmd::new("bash")
            .args(["-c", &format!("source \"$1\"\n{code}"), "kiln-test"])
            .arg(self.path("script.sh"))
            .env("KILN_ROOT", self.root())
            .env("KILN_CMDLINE", self.path("cmdline"))
            .env("KILN_EFI_DIR", self.path("sys-firmware-efi"))
            .env("KILN_TEST_CALLS", self.path("calls"))
            .env("PATH", format!("{}:{host_path}", self.bin().display()))
            .run_status()
            .unwrap();
        Run {
            status,
            stdout: out.stdout_string(),
            log: out.tail,
        }
    }

    /// [`Sandbox::run`], which must succeed.
    fn ok(&self, code: &str) -> String {
        let run = self.run(code);
        assert!(run.status.success(), "`{code}` failed ({}):\n{}", run.status, run.log);
        run.stdout
    }

    /// [`Sandbox::run`], which must fail; returns the log.
    fn fails(&self, code: &str) -> String {
        let run = self.run(code);
        assert!(!run.status.success(), "`{code}` succeeded:\n{}", run.log);
        run.log
    }

    /// Creates /dev/disk/by-id in the fake root from a recorded `ls -l`.
    fn by_id_from(&self, listing: &str) {
        let dir = self.root().join("dev/disk/by-id");
        fs::create_dir_all(&dir).unwrap();
        for line in fs::read_to_string(fixture(listing)).unwrap().lines() {
            let Some((left, target)) = line.split_once(" -> ") else {
                continue;
            };
            let name = left.split_whitespace().last().unwrap();
            std::os::unix::fs::symlink(target, dir.join(name)).unwrap();
            // The device node itself, so the link is not dangling.
            self.write(&format!("dev/{}", target.trim_start_matches("../../")), "");
        }
    }
}

fn grub_default_bookworm() -> String {
    fs::read_to_string(fixture("grub-default-bookworm")).unwrap()
}

/// The assignments of `name` in a grub defaults file.
fn assignments<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(&format!("{name}="))).collect()
}

// ---- configure_console ----

#[test]
fn console_from_rescue_cmdline_goes_to_grub_defaults() {
    let s = Sandbox::new();
    s.write("etc/default/grub", &grub_default_bookworm());
    s.cmdline("BOOT_IMAGE=/boot/vmlinuz console=tty0 console=ttyS1,57600o7 quiet -- console=ttyS9 single\n");
    s.ok("configure_console");
    let first = s.read("etc/default/grub");
    assert_eq!(
        assignments(&first, "GRUB_CMDLINE_LINUX"),
        [r#"GRUB_CMDLINE_LINUX="console=tty0 console=ttyS1,57600o7""#]
    );
    assert_eq!(
        assignments(&first, "GRUB_TERMINAL"),
        [r#"GRUB_TERMINAL="console serial""#]
    );
    assert_eq!(
        assignments(&first, "GRUB_SERIAL_COMMAND"),
        [r#"GRUB_SERIAL_COMMAND="serial --unit=1 --speed=57600 --parity=odd --word=7""#]
    );
    // Everything else is untouched.
    assert_eq!(
        assignments(&first, "GRUB_CMDLINE_LINUX_DEFAULT"),
        [r#"GRUB_CMDLINE_LINUX_DEFAULT="quiet""#]
    );
    assert!(first.contains("#GRUB_TERMINAL=console\n"));
    assert_eq!(first.lines().count(), grub_default_bookworm().lines().count() + 2);

    s.ok("configure_console");
    assert_eq!(s.read("etc/default/grub"), first, "a second run changed the file");
}

#[test]
fn serial_command_follows_the_kernel_syntax() {
    let s = Sandbox::new();
    for (consoles, expected) in [
        (
            "console=ttyS1,57600o7",
            "serial --unit=1 --speed=57600 --parity=odd --word=7",
        ),
        (
            "console=ttyS0,115200n8",
            "serial --unit=0 --speed=115200 --parity=no --word=8",
        ),
        (
            "console=ttyS0,115200e7r",
            "serial --unit=0 --speed=115200 --parity=even --word=7",
        ),
        (
            "console=ttyS1,115200",
            "serial --unit=1 --speed=115200 --parity=no --word=8",
        ),
        ("console=ttyS0", "serial --unit=0 --speed=9600 --parity=no --word=8"),
        (
            "console=ttyS0,9600 console=tty0 console=ttyS1,19200",
            "serial --unit=1 --speed=19200 --parity=no --word=8",
        ),
        ("console=tty0", ""),
        ("console=ttyUSB0,115200", ""),
        ("console=ttyS0,fast", ""),
    ] {
        let out = s.ok(&format!("serial_command {consoles}"));
        assert_eq!(out.trim_end(), expected, "{consoles}");
    }
}

#[test]
fn console_merges_with_existing_settings_and_drops_duplicates() {
    let s = Sandbox::new();
    s.write(
        "etc/default/grub",
        "GRUB_DEFAULT=0\n\
         GRUB_CMDLINE_LINUX=\"nomodeset iommu=pt console=tty0\"\n\
         GRUB_TERMINAL=console\n\
         export GRUB_SERIAL_COMMAND='serial --unit=0'\n\
         GRUB_GFXPAYLOAD_LINUX=text\n\
         GRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX net.ifnames=0\"\n",
    );
    s.cmdline("console=tty0 console=ttyS0,115200n8\n");
    s.ok("configure_console");
    assert_eq!(
        s.read("etc/default/grub"),
        "GRUB_DEFAULT=0\n\
         GRUB_CMDLINE_LINUX=\"nomodeset iommu=pt console=tty0 net.ifnames=0 console=ttyS0,115200n8\"\n\
         GRUB_TERMINAL=\"console serial\"\n\
         GRUB_SERIAL_COMMAND=\"serial --unit=0 --speed=115200 --parity=no --word=8\"\n\
         GRUB_GFXPAYLOAD_LINUX=text\n"
    );
}

#[test]
fn missing_grub_defaults_are_created_from_the_packaged_template() {
    let s = Sandbox::new();
    s.write("usr/share/grub/default/grub", &grub_default_bookworm());
    s.cmdline("console=ttyS0,115200\n");
    s.ok("configure_console");
    let text = s.read("etc/default/grub");
    assert_eq!(
        assignments(&text, "GRUB_CMDLINE_LINUX"),
        [r#"GRUB_CMDLINE_LINUX="console=ttyS0,115200""#]
    );
    assert!(text.starts_with("# If you change this file, run 'update-grub'"));
}

#[test]
fn no_console_leaves_grub_defaults_alone() {
    let s = Sandbox::new();
    s.write("etc/default/grub", &grub_default_bookworm());
    s.cmdline("BOOT_IMAGE=/vmlinuz quiet -- console=ttyS0\n");
    s.ok("configure_console");
    assert_eq!(s.read("etc/default/grub"), grub_default_bookworm());
}

#[test]
fn unsafe_console_tokens_are_ignored() {
    let s = Sandbox::new();
    s.write("etc/default/grub", &grub_default_bookworm());
    s.cmdline("console=ttyS0\"$(reboot)\" console=tty0;id console=`id` console=ttyS1,115200\n");
    let run = s.run("configure_console");
    assert!(run.status.success(), "{}", run.log);
    assert!(
        run.log
            .contains("ignoring console parameter with unexpected characters"),
        "{}",
        run.log
    );
    let text = s.read("etc/default/grub");
    assert_eq!(
        assignments(&text, "GRUB_CMDLINE_LINUX"),
        [r#"GRUB_CMDLINE_LINUX="console=ttyS1,115200""#]
    );
}

#[test]
fn unreadable_cmdline_fails() {
    let s = Sandbox::new();
    s.write("etc/default/grub", &grub_default_bookworm());
    fs::remove_file(s.path("cmdline")).unwrap();
    let log = s.fails("run_step configure_console");
    assert!(log.contains("cannot read"), "{log}");
    assert!(log.contains("FAILED in step configure_console"), "{log}");
}

// ---- boot disk discovery ----

#[test]
fn boot_disks_of_md_raid1_are_all_members_by_id() {
    let s = Sandbox::new();
    s.write("boot/.keep", "");
    s.replay("findmnt", "findmnt-md-raid1.txt");
    s.replay("lsblk", "lsblk-md-raid1.txt");
    s.by_id_from("ls-by-id-md-raid1.txt");
    assert_eq!(s.ok("boot_disks"), "/dev/nvme0n1\n/dev/nvme1n1\n");
    assert_eq!(
        s.calls(),
        "findmnt -A -c -e -l -n -T /boot -o SOURCE,FSTYPE\nlsblk -n -p -l -o TYPE,NAME -s /dev/md2\n"
    );
    // C collation: upper case sorts before "nvme-nvme.1b36-..."; the first
    // link wins, as in OVH's scripts (PUBM-23086).
    assert_eq!(
        s.ok("disk_id /dev/nvme0n1; disk_id /dev/nvme1n1"),
        "/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_S4EWNX0R123456A\n/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_S4EWNX0R654321B\n"
    );
}

#[test]
fn boot_disks_through_lvm_on_md() {
    let s = Sandbox::new();
    s.write("boot/.keep", "");
    s.replay("findmnt", "findmnt-lvm-on-md.txt");
    s.replay("lsblk", "lsblk-lvm-on-md.txt");
    assert_eq!(s.ok("boot_disks"), "/dev/nvme0n1\n/dev/nvme1n1\n");
    assert!(
        s.calls()
            .contains("lsblk -n -p -l -o TYPE,NAME -s /dev/mapper/vg-data\n"),
        "{}",
        s.calls()
    );
}

#[test]
fn boot_disk_on_a_loop_device_falls_back_to_the_device_path() {
    let s = Sandbox::new();
    s.replay("findmnt", "findmnt-loop.txt");
    s.replay("lsblk", "lsblk-loop.txt");
    // No /boot directory in the root: the filesystem holding / is asked for.
    assert_eq!(s.ok("boot_disks"), "/dev/loop0\n");
    assert!(
        s.calls().starts_with("findmnt -A -c -e -l -n -T / -o SOURCE,FSTYPE\n"),
        "{}",
        s.calls()
    );
    assert_eq!(s.ok("disk_id /dev/loop0"), "/dev/loop0\n");
}

#[test]
fn boot_on_zfs_is_refused() {
    let s = Sandbox::new();
    s.stub("findmnt", "echo 'rpool/ROOT/debian zfs'");
    s.replay("lsblk", "lsblk-loop.txt");
    let log = s.fails("run_step install_grub");
    assert!(log.contains("is on ZFS, which this script does not support"), "{log}");
}

// ---- install_grub ----

/// Stubs for an offline GRUB install; `grub-install` fails on `fail_on`.
fn grub_stubs(s: &Sandbox, fail_on: &str) {
    s.stub(
        "debconf-set-selections",
        "sed 's/^/  debconf: /' >> \"$KILN_TEST_CALLS\"",
    );
    s.stub("apt-get", "");
    s.stub("dpkg", "exit 1");
    s.stub(
        "grub-install",
        &format!(
            r#"for a in "$@"; do case $a in --bootloader-id=*) id=${{a#*=}} ;; '{fail_on}') exit 1 ;; esac; done
if [ -n "${{id:-}}" ]; then mkdir -p "$KILN_ROOT/boot/efi/EFI/$id" && : > "$KILN_ROOT/boot/efi/EFI/$id/grubx64.efi"; fi"#
        ),
    );
    for deb in [
        "grub-pc_2.06-13+deb12u2_amd64.deb",
        "grub-pc-bin_2.06-13+deb12u2_amd64.deb",
        "grub-efi-amd64_2.06-13+deb12u2_amd64.deb",
    ] {
        s.write(&format!("root/.ovh/debs/{deb}"), "");
    }
}

#[test]
fn bios_install_preseeds_every_raid_member_and_installs_each() {
    let s = Sandbox::new();
    s.write("boot/.keep", "");
    s.replay("findmnt", "findmnt-md-raid1.txt");
    s.replay("lsblk", "lsblk-md-raid1.txt");
    s.by_id_from("ls-by-id-md-raid1.txt");
    grub_stubs(&s, "none");
    s.ok("run_step install_grub");
    let calls = s.calls();
    let calls: Vec<&str> = calls
        .lines()
        .filter(|l| !l.starts_with("findmnt") && !l.starts_with("lsblk"))
        .collect();
    assert_eq!(
        calls,
        [
            "debconf-set-selections ",
            "  debconf: grub-pc grub-pc/install_devices multiselect /dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_S4EWNX0R123456A, /dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_S4EWNX0R654321B",
            "apt-get install -y --no-install-recommends -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=/dev/null -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold /root/.ovh/debs/grub-pc_2.06-13+deb12u2_amd64.deb",
            "grub-install --target=i386-pc /dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_S4EWNX0R123456A",
            "grub-install --target=i386-pc /dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_S4EWNX0R654321B",
        ]
    );
}

#[test]
fn bios_install_fails_loudly_when_one_disk_fails() {
    let s = Sandbox::new();
    s.write("boot/.keep", "");
    s.replay("findmnt", "findmnt-md-raid1.txt");
    s.replay("lsblk", "lsblk-md-raid1.txt");
    s.by_id_from("ls-by-id-md-raid1.txt");
    grub_stubs(&s, "/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_S4EWNX0R654321B");
    let log = s.fails("run_step install_grub");
    assert!(
        log.contains("ERROR: grub-install failed on /dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_S4EWNX0R654321B"),
        "{log}"
    );
    assert!(
        log.contains("(install_grub_bios): grub-install failed on /dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_S4EWNX0R654321B"),
        "{log}"
    );
    assert!(log.contains("FAILED in step install_grub, line "), "{log}");
}

#[test]
fn efi_install_never_touches_nvram() {
    let s = Sandbox::new();
    s.enable_efi();
    s.stub("findmnt", "");
    grub_stubs(&s, "none");
    let run = s.run("run_step install_grub");
    assert!(run.status.success(), "{}", run.log);
    assert_eq!(
        s.calls(),
        "findmnt --mountpoint /boot/efi\n\
         debconf-set-selections \n  \
         debconf: grub-efi-amd64 grub2/update_nvram boolean false\n  \
         debconf: grub-efi-amd64 grub2/force_efi_extra_removable boolean false\n\
         apt-get install -y --no-install-recommends -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=/dev/null -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold /root/.ovh/debs/grub-efi-amd64_2.06-13+deb12u2_amd64.deb\n\
         grub-install --target=x86_64-efi --efi-directory=/boot/efi --bootloader-id=debian --no-nvram\n"
    );
    assert!(
        run.log.contains(r"efiBootloaderPath \efi\debian\grubx64.efi"),
        "{}",
        run.log
    );
}

#[test]
fn efi_removable_fallback_only_when_asked() {
    let s = Sandbox::new();
    let mut params = ScriptParams::new("kiln-os");
    params.efi_removable_fallback = true;
    fs::write(s.path("script.sh"), render_debian(&params)).unwrap();
    s.enable_efi();
    s.stub("findmnt", "");
    grub_stubs(&s, "none");
    s.ok("install_grub");
    assert!(
        s.calls().contains("force_efi_extra_removable boolean true\n"),
        "{}",
        s.calls()
    );
    assert!(
        s.calls().contains("grub-install --target=x86_64-efi --efi-directory=/boot/efi --bootloader-id=kiln-os --no-nvram --force-extra-removable\n"),
        "{}",
        s.calls()
    );
}

#[test]
fn efi_install_fails_when_grubx64_is_missing_or_esp_unmounted() {
    let s = Sandbox::new();
    s.enable_efi();
    s.stub("findmnt", "");
    grub_stubs(&s, "none");
    s.stub("grub-install", "true");
    let log = s.fails("run_step install_grub");
    assert!(
        log.contains("grub-install did not produce /boot/efi/EFI/debian/grubx64.efi"),
        "{log}"
    );

    s.stub("findmnt", "exit 1");
    let log = s.fails("run_step install_grub");
    assert!(log.contains("/boot/efi is not a mount point"), "{log}");
}

#[test]
fn find_deb_wants_exactly_one() {
    let s = Sandbox::new();
    s.write("root/.ovh/debs/grub-pc_1_amd64.deb", "");
    s.write("root/.ovh/debs/grub-pc-bin_1_amd64.deb", "");
    s.write("root/.ovh/debs/grub-efi-amd64-bin_1_amd64.deb", "");
    assert_eq!(s.ok("find_deb grub-pc"), "/root/.ovh/debs/grub-pc_1_amd64.deb\n");
    let log = s.fails("x=$(find_deb grub-efi-amd64)");
    assert!(log.contains("no grub-efi-amd64_*.deb in /root/.ovh/debs"), "{log}");
    s.write("root/.ovh/debs/grub-pc_2_amd64.deb", "");
    let log = s.fails("x=$(find_deb grub-pc)");
    assert!(log.contains("several grub-pc_*.deb"), "{log}");
}

// ---- finalize ----

#[test]
fn kernel_versions_come_from_the_image_not_uname() {
    let s = Sandbox::new();
    for v in ["6.1.0-56-amd64", "6.10.0-1-amd64"] {
        s.write(&format!("boot/vmlinuz-{v}"), "kernel");
        s.write(&format!("lib/modules/{v}/modules.dep"), "");
    }
    s.write("lib/modules/5.10.0-30-amd64/modules.dep", ""); // left over, no kernel
    s.write("boot/vmlinuz-6.0.0-0-amd64", "kernel"); // no modules
    s.stub("uname", "echo 6.5.0-rescue");
    assert_eq!(s.ok("kernel_versions"), "6.1.0-56-amd64\n6.10.0-1-amd64\n");
    assert_eq!(s.calls(), "", "uname was called");
}

#[test]
fn initramfs_is_updated_or_created_for_each_image_kernel() {
    let s = Sandbox::new();
    for v in ["6.1.0-56-amd64", "6.10.0-1-amd64"] {
        s.write(&format!("boot/vmlinuz-{v}"), "kernel");
        s.write(&format!("lib/modules/{v}/modules.dep"), "");
    }
    s.write("boot/initrd.img-6.1.0-56-amd64", "old");
    s.stub("uname", "echo 6.5.0-rescue");
    s.stub("update-initramfs", r#"printf new > "$KILN_ROOT/boot/initrd.img-$3""#);
    s.ok("regenerate_initramfs");
    assert_eq!(
        s.calls(),
        "update-initramfs -u -k 6.1.0-56-amd64\nupdate-initramfs -c -k 6.10.0-1-amd64\n"
    );

    let s = Sandbox::new();
    s.stub("update-initramfs", "");
    let log = s.fails("run_step regenerate_initramfs");
    assert!(log.contains("no kernel in the image"), "{log}");
}

// ---- error reporting and structure ----

#[test]
fn err_trap_names_step_line_and_command() {
    let s = Sandbox::new();
    let log = s.fails("failing_step() {\n  true\n  false\n}\nrun_step failing_step\necho not reached");
    assert!(log.contains("==> step failing_step: start"), "{log}");
    assert!(
        log.contains("FAILED in step failing_step, line 4 (failing_step): 'false' exited with status 1"),
        "{log}"
    );
    assert!(log.contains("/root/.ovh is kept so this script can be rerun"), "{log}");
    assert!(!log.contains("not reached"), "{log}");

    // A failure inside a command substitution reports both levels.
    let log = s.fails("sub_step() {\n  local x\n  x=$(fail 'no luck')\n}\nrun_step sub_step");
    assert!(log.contains("ERROR: no luck"), "{log}");
    assert!(log.contains("error at line 4 in sub_step: no luck"), "{log}");
    assert!(
        log.contains("FAILED in step sub_step, line 4 (sub_step): 'x=$(fail 'no luck')' exited with status 1"),
        "{log}"
    );
}

#[test]
fn sourcing_runs_nothing_and_steps_are_timestamped() {
    let s = Sandbox::new();
    let run = s.run("echo sourced");
    assert!(run.status.success());
    assert_eq!(run.stdout, "sourced\n");
    assert_eq!(run.log, "");
    let run = s.run("quiet_step() { :; }\nrun_step quiet_step");
    let lines: Vec<&str> = run.log.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.log);
    // 2025-01-31T12:34:56+0000 ==> step quiet_step: start
    for line in lines {
        let (stamp, rest) = line.split_once(' ').unwrap();
        assert_eq!(stamp.len(), "2025-01-31T12:34:56+0000".len(), "{line}");
        assert!(
            stamp.as_bytes()[10] == b'T' && rest.starts_with("==> step quiet_step: "),
            "{line}"
        );
    }
}

/// The Arch and RHEL-family scripts, with recording stubs of GRUB's
/// installer, the initramfs generator and efibootmgr: BIOS and UEFI, with
/// and without RAID. (The chroot run of `ovh_script_chroot.rs` is Debian's
/// only: these families' trees cannot be built here.)
fn family_sandbox(family: &str) -> Sandbox {
    let script = match family {
        "arch" => try_render_arch(&ScriptParams::new("arch")).unwrap(),
        _ => try_render_rhel(&ScriptParams::new("rocky")).unwrap(),
    };
    let s = Sandbox::with_script(&script);
    let install = if family == "arch" {
        "grub-install"
    } else {
        "grub2-install"
    };
    s.stub(
        install,
        r#"for a in "$@"; do case $a in --bootloader-id=*) id=${a#*=} ;; esac; done
if [ -n "${id:-}" ]; then mkdir -p "$KILN_ROOT/boot/efi/EFI/$id" && : > "$KILN_ROOT/boot/efi/EFI/$id/grubx64.efi"; fi"#,
    );
    s.stub("efibootmgr", "exit 1");
    s.stub("grub2-probe", "echo 1234-abcd");
    s.write("boot/.keep", "");
    s
}

fn family_calls(s: &Sandbox) -> Vec<String> {
    s.calls()
        .lines()
        .filter(|l| !l.starts_with("findmnt") && !l.starts_with("lsblk") && !l.starts_with("grub2-probe"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn arch_and_rhel_bios_install_on_every_raid_member() {
    for (family, install) in [("arch", "grub-install"), ("rhel", "grub2-install")] {
        let s = family_sandbox(family);
        s.replay("findmnt", "findmnt-md-raid1.txt");
        s.replay("lsblk", "lsblk-md-raid1.txt");
        s.by_id_from("ls-by-id-md-raid1.txt");
        s.ok("run_step install_grub");
        assert_eq!(
            family_calls(&s),
            [
                format!("{install} --target=i386-pc /dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_S4EWNX0R123456A"),
                format!("{install} --target=i386-pc /dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_S4EWNX0R654321B"),
            ],
            "{family}"
        );
    }
}

#[test]
fn arch_and_rhel_bios_install_on_a_single_disk() {
    for (family, install) in [("arch", "grub-install"), ("rhel", "grub2-install")] {
        let s = family_sandbox(family);
        s.replay("findmnt", "findmnt-loop.txt");
        s.replay("lsblk", "lsblk-loop.txt");
        s.ok("run_step install_grub");
        let calls = family_calls(&s);
        assert_eq!(calls.len(), 1, "{family}: {calls:?}");
        assert!(
            calls[0].starts_with(&format!("{install} --target=i386-pc /dev/loop")),
            "{calls:?}"
        );
    }
}

#[test]
fn arch_and_rhel_efi_install_never_touches_nvram() {
    // Arch installs GRUB; the RHEL family keeps the packaged shim and GRUB
    // when they are on the ESP and only installs when they are missing.
    for (family, expected) in [
        (
            "arch",
            vec!["grub-install --target=x86_64-efi --efi-directory=/boot/efi --bootloader-id=arch --no-nvram"],
        ),
        ("rhel", vec![]),
        (
            "rhel-bare",
            vec![
                "grub2-install --force --target=x86_64-efi --efi-directory=/boot/efi --bootloader-id=rocky --no-nvram",
            ],
        ),
    ] {
        let s = family_sandbox(family.trim_end_matches("-bare"));
        s.enable_efi();
        s.stub("findmnt", "echo /");
        if family == "rhel" {
            s.write("boot/efi/EFI/rocky/grubx64.efi", "");
            s.write("boot/efi/EFI/rocky/shimx64.efi", "");
        }
        s.ok("run_step install_grub");
        assert_eq!(family_calls(&s), expected, "{family}");
        if family.starts_with("rhel") {
            let cfg = s.read("boot/efi/EFI/rocky/grub.cfg");
            assert!(
                cfg.contains("--set=dev 1234-abcd") && cfg.contains("set prefix=($dev)/boot/grub2"),
                "{cfg}"
            );
        }
    }
}

#[test]
fn arch_and_rhel_regenerate_the_initramfs_of_the_image_kernels() {
    let s = family_sandbox("arch");
    s.write("usr/lib/modules/6.12.1-arch1-1/vmlinuz", "");
    s.write("usr/lib/modules/6.12.1-arch1-1/pkgbase", "linux\n");
    s.stub(
        "mkinitcpio",
        ": > \"$KILN_ROOT/boot/initramfs-linux.img.tmp\"; echo x > \"$KILN_ROOT/boot/initramfs-linux.img\"",
    );
    s.ok("run_step regenerate_initramfs");
    assert_eq!(family_calls(&s), ["mkinitcpio -P"]);

    let s = family_sandbox("rhel");
    s.write("lib/modules/5.14.0-503.el9.x86_64/vmlinuz", "");
    s.write("boot/loader/entries/old-5.14.0-503.el9.x86_64.conf", "");
    s.stub("dracut", "echo x > \"$KILN_ROOT$4\"");
    s.stub(
        "kernel-install",
        "mkdir -p \"$KILN_ROOT/boot/loader/entries\" && : > \"$KILN_ROOT/boot/loader/entries/new-$2.conf\"",
    );
    s.ok("run_step regenerate_initramfs");
    assert_eq!(
        family_calls(&s),
        [
            "dracut --force --kver 5.14.0-503.el9.x86_64 /boot/initramfs-5.14.0-503.el9.x86_64.img",
            "kernel-install add 5.14.0-503.el9.x86_64 /lib/modules/5.14.0-503.el9.x86_64/vmlinuz",
        ]
    );
    assert!(!s
        .root()
        .join("boot/loader/entries/old-5.14.0-503.el9.x86_64.conf")
        .exists());
}

#[test]
fn arch_and_rhel_mdadm_conf_comes_from_the_live_arrays() {
    for family in ["arch", "rhel"] {
        let s = family_sandbox(family);
        s.stub("mdadm", "echo 'ARRAY /dev/md/md2 metadata=1.2 UUID=0a:1b:2c:3d'");
        s.stub("grep", "exit 0");
        s.write("etc/.keep", "");
        s.ok("run_step configure_mdadm");
        assert!(
            s.read("etc/mdadm.conf")
                .contains("ARRAY /dev/md/md2 metadata=1.2 UUID=0a:1b:2c:3d"),
            "{family}"
        );
        assert_eq!(
            family_calls(&s),
            ["mdadm --detail --scan", "grep -q ^md /proc/mdstat"]
                .iter()
                .rev()
                .map(|x| x.to_string())
                .collect::<Vec<_>>(),
            "{family}"
        );
    }
}
