//! The QEMU runner: a [`VmConfig`] becomes a `qemu-system-x86_64` command
//! line, and [`Vm::start`] runs it as an owned process that is stopped (its
//! whole process group) and cleaned up when the [`Vm`] is dropped.
//!
//! Every VM is a q35 machine with no display, a serial console written
//! straight to a file, `-nodefaults` plus exactly the devices asked for, and
//! `-no-reboot`, so a guest that panics and reboots ends the run instead of
//! looping. Disks are attached in snapshot mode by default: writes go to a
//! throw-away overlay and the image file is never changed. IDE disks and
//! CD-ROMs sit on the q35 AHCI controller, each on its own port (given
//! explicitly, so two can never claim the same one); USB sticks on one
//! xHCI controller, added only when a drive needs it. UEFI runs get a
//! private copy of the OVMF variable store in a temporary directory that
//! dies with the VM. The network is a [`Network`], isolated (QEMU's
//! restricted user network, nothing but explicit forwards) unless the
//! caller asks otherwise. The machine's SMBIOS identity (vendor, product,
//! serial, UUID, asset tags) is QEMU's unless an [`Smbios`] says otherwise,
//! as a cloud's hypervisor does for cloud-init to recognise it. Non-goals: a monitor/QMP client, live migration,
//! graphics, architectures other than x86_64.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_exec::cmd::Running;
use kiln_exec::{Cmd, WorkDir};

use crate::accel::Accel;
use crate::error::{require_file, Result, VmError};
use crate::firmware::{find_ovmf, Firmware, Ovmf};
use crate::network::{Network, SOCAT};

/// The QEMU binary kiln runs.
pub const QEMU: &str = "qemu-system-x86_64";

/// How many lines of QEMU's own output an error quotes.
const QEMU_TAIL_LINES: usize = 20;

/// The container format of a disk image, as QEMU names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
    Vmdk,
    Vhdx,
    /// VHD, fixed or dynamic (QEMU's `vpc`).
    Vpc,
    Vdi,
}

impl ImageFormat {
    /// QEMU's name for the format (`format=` of `-drive`).
    pub fn qemu_name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Vmdk => "vmdk",
            ImageFormat::Vhdx => "vhdx",
            ImageFormat::Vpc => "vpc",
            ImageFormat::Vdi => "vdi",
        }
    }

    /// Detects the format of `path` from its magic numbers, never from its
    /// name; anything unrecognised is raw. Passing the format explicitly
    /// keeps QEMU from probing, which it warns about and which a raw image
    /// starting with another format's magic could fool.
    pub fn detect(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(VmError::io_path("opening", path))?;
        let mut head = Vec::with_capacity(64);
        (&mut file)
            .take(64)
            .read_to_end(&mut head)
            .map_err(VmError::io_path("reading", path))?;
        let len = file.metadata().map_err(VmError::io_path("reading", path))?.len();
        let magics: &[(&[u8], ImageFormat)] = &[
            (b"QFI\xfb", ImageFormat::Qcow2),
            (b"KDMV", ImageFormat::Vmdk),
            (b"# Disk DescriptorFile", ImageFormat::Vmdk),
            (b"vhdxfile", ImageFormat::Vhdx),
            (b"conectix", ImageFormat::Vpc),
            (b"<<< ", ImageFormat::Vdi),
        ];
        if let Some((_, f)) = magics.iter().find(|(m, _)| head.starts_with(m)) {
            return Ok(*f);
        }
        // A fixed VHD is raw data followed by a 512-byte footer.
        if len >= 512 && len % 512 == 0 {
            let mut footer = [0u8; 8];
            file.read_exact_at(&mut footer, len - 512)
                .map_err(VmError::io_path("reading", path))?;
            if &footer == b"conectix" {
                return Ok(ImageFormat::Vpc);
            }
        }
        Ok(ImageFormat::Raw)
    }
}

/// How the guest sees a drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interface {
    /// virtio-blk (`/dev/vdX`).
    Virtio,
    /// NVMe (`/dev/nvmeXn1`).
    Nvme,
    /// An IDE/SATA disk on the q35 AHCI controller (`/dev/sdX`).
    Ide,
    /// A CD-ROM on the AHCI controller (`/dev/srX`), always read-only.
    Cdrom,
    /// A USB mass-storage stick on an xHCI controller (`/dev/sdX`), reporting
    /// removable media as a real stick does.
    Usb,
}

impl Interface {
    /// Whether the drive takes a port of the AHCI controller.
    fn on_ahci(self) -> bool {
        matches!(self, Interface::Ide | Interface::Cdrom)
    }
}

/// Ports of the q35 machine's AHCI controller (ICH9: six, `ide.0` to `ide.5`).
const AHCI_PORTS: usize = 6;

/// What the guest may do to a drive's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveMode {
    /// Writes go to a temporary overlay; the file is never changed.
    Snapshot,
    /// The guest sees a read-only device.
    ReadOnly,
    /// Writes reach the file.
    Writable,
}

/// A disk attached to the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    pub path: PathBuf,
    pub format: ImageFormat,
    pub interface: Interface,
    pub mode: DriveMode,
    /// Serial number the guest sees (`/dev/disk/by-id`); NVMe needs one, so
    /// kiln makes one up when this is `None`.
    pub serial: Option<String>,
    /// The firmware boots from this drive first. When no drive says so, the
    /// first drive that is not a CD-ROM is the boot drive.
    pub boot: bool,
}

impl Drive {
    /// A virtio disk in snapshot mode.
    pub fn new(path: impl Into<PathBuf>, format: ImageFormat) -> Self {
        Drive {
            path: path.into(),
            format,
            interface: Interface::Virtio,
            mode: DriveMode::Snapshot,
            serial: None,
            boot: false,
        }
    }

    pub fn interface(mut self, interface: Interface) -> Self {
        self.interface = interface;
        self
    }

    pub fn mode(mut self, mode: DriveMode) -> Self {
        self.mode = mode;
        self
    }

    pub fn serial(mut self, serial: impl Into<String>) -> Self {
        self.serial = Some(serial.into());
        self
    }

    /// Makes this the boot drive.
    pub fn boot(mut self) -> Self {
        self.boot = true;
        self
    }
}

/// Booting a kernel directly instead of through the disk's boot loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    pub append: String,
}

/// Everything about a VM run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Drives in order; the one marked [`Drive::boot`], else the first that
    /// is not a CD-ROM, is the boot drive.
    pub disks: Vec<Drive>,
    pub firmware: Firmware,
    /// Guest memory in bytes (rounded up to MiB).
    pub memory: u64,
    pub cpus: u32,
    pub accel: Accel,
    /// Where the serial console goes; truncated at start, kept afterwards.
    pub console_log: PathBuf,
    pub net: Network,
    pub direct_boot: Option<DirectBoot>,
    /// End the run when the guest reboots (on by default: a panic or a
    /// reboot loop ends the run instead of repeating).
    pub no_reboot: bool,
    /// The machine's identity in its SMBIOS tables; QEMU's own when `None`.
    pub smbios: Option<Smbios>,
    /// Serve the serial console on this Unix socket as well (QEMU listens;
    /// `console_log` still gets everything the guest prints): for a person
    /// at the console (`kiln boot --interactive`).
    pub console_socket: Option<PathBuf>,
}

/// What the firmware tells the guest about the machine (SMBIOS, read by
/// Linux into `/sys/class/dmi/id`), as a cloud's hypervisor sets it so
/// that cloud-init's ds-identify and datasources know where they run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Smbios {
    /// BIOS vendor (type 0), system, board and chassis manufacturer
    /// (types 1, 2, 3): `sys_vendor`, `bios_vendor`, `board_vendor`,
    /// `chassis_vendor`.
    pub vendor: String,
    /// System product name (type 1, `product_name`).
    pub product: String,
    /// System serial number (type 1, `product_serial`).
    pub serial: String,
    /// System UUID (type 1, `product_uuid`), also QEMU's VM UUID.
    pub uuid: uuid::Uuid,
    /// Board asset tag (type 2, `board_asset_tag`).
    pub board_asset_tag: String,
    /// Chassis asset tag (type 3, `chassis_asset_tag`).
    pub chassis_asset_tag: String,
}

impl Smbios {
    /// The `-smbios` options: types 0, 1, 2 and 3.
    fn qemu_args(&self) -> Vec<OsString> {
        let v = |s: &str| opt_value(OsStr::new(s)).to_string_lossy().into_owned();
        let vendor = v(&self.vendor);
        let tables = [
            format!("type=0,vendor={vendor}"),
            format!(
                "type=1,manufacturer={vendor},product={},serial={},uuid={}",
                v(&self.product),
                v(&self.serial),
                self.uuid
            ),
            format!("type=2,manufacturer={vendor},asset={}", v(&self.board_asset_tag)),
            format!("type=3,manufacturer={vendor},asset={}", v(&self.chassis_asset_tag)),
        ];
        tables
            .into_iter()
            .flat_map(|t| [OsString::from("-smbios"), OsString::from(t)])
            .collect()
    }
}

impl VmConfig {
    /// A BIOS VM with 1 GiB, 2 CPUs, TCG, an isolated network without
    /// forwards and no disks.
    pub fn new(console_log: impl Into<PathBuf>) -> Self {
        VmConfig {
            disks: Vec::new(),
            firmware: Firmware::Bios,
            memory: 1 << 30,
            cpus: 2,
            accel: Accel::Tcg,
            console_log: console_log.into(),
            net: Network::default(),
            direct_boot: None,
            no_reboot: true,
            smbios: None,
            console_socket: None,
        }
    }
}

/// The UEFI flash files of one run: OVMF's code and this run's copy of the
/// variable store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Flash {
    pub(crate) code: PathBuf,
    pub(crate) vars: PathBuf,
    pub(crate) format: String,
}

/// Escapes a value for QEMU's `key=value,...` option syntax, in which a
/// literal comma is written twice.
fn opt_value(v: &OsStr) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::with_capacity(v.len());
    for &b in v.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

fn opt(prefix: &str, value: &Path, suffix: &str) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(opt_value(value.as_os_str()));
    s.push(suffix);
    s
}

/// The command line (without the program) for `cfg`; `flash` must be given
/// for UEFI.
pub(crate) fn qemu_args(cfg: &VmConfig, flash: Option<&Flash>) -> Result<Vec<OsString>> {
    fn push(a: &mut Vec<OsString>, items: &[&str]) {
        a.extend(items.iter().map(OsString::from));
    }
    let mut a: Vec<OsString> = Vec::new();
    push(&mut a, &["-nodefaults", "-no-user-config", "-machine", "q35"]);
    push(&mut a, &cfg.accel.qemu_args());
    let memory_mib = cfg.memory.div_ceil(1 << 20).max(16);
    push(
        &mut a,
        &["-m", &format!("{memory_mib}M"), "-smp", &cfg.cpus.max(1).to_string()],
    );
    push(&mut a, &["-display", "none", "-vga", "std"]);
    if cfg.no_reboot {
        push(&mut a, &["-no-reboot"]);
    }
    a.push("-chardev".into());
    match &cfg.console_socket {
        None => a.push(opt("file,id=console,path=", &cfg.console_log, "")),
        Some(socket) => {
            let mut chardev = opt("socket,id=console,server=on,wait=off,path=", socket, "");
            chardev.push(opt(",logfile=", &cfg.console_log, ""));
            a.push(chardev);
        }
    }
    a.extend(["-serial", "chardev:console"].map(OsString::from));
    if let Some(smbios) = &cfg.smbios {
        a.extend(smbios.qemu_args());
    }

    match (cfg.firmware, flash) {
        (Firmware::Bios, _) => {} // SeaBIOS is QEMU's default
        (Firmware::Uefi, Some(f)) => {
            a.push("-drive".into());
            a.push(opt(
                &format!("if=pflash,format={},unit=0,readonly=on,file=", f.format),
                &f.code,
                "",
            ));
            a.push("-drive".into());
            a.push(opt(&format!("if=pflash,format={},unit=1,file=", f.format), &f.vars, ""));
        }
        (Firmware::Uefi, None) => {
            return Err(VmError::Config("UEFI needs OVMF flash files".to_owned()));
        }
    }

    if let Some(d) = &cfg.direct_boot {
        a.push("-kernel".into());
        a.push(d.kernel.clone().into());
        if let Some(initrd) = &d.initrd {
            a.push("-initrd".into());
            a.push(initrd.clone().into());
        }
        a.push("-append".into());
        a.push(d.append.clone().into());
    }

    let boot_disk = match cfg.disks.iter().filter(|d| d.boot).count() {
        0 => cfg.disks.iter().position(|d| d.interface != Interface::Cdrom),
        1 => cfg.disks.iter().position(|d| d.boot),
        _ => return Err(VmError::Config("only one drive can be the boot drive".to_owned())),
    };
    if cfg.disks.iter().filter(|d| d.interface.on_ahci()).count() > AHCI_PORTS {
        return Err(VmError::Config(format!(
            "at most {AHCI_PORTS} IDE disks and CD-ROMs fit on the AHCI controller"
        )));
    }
    if cfg.disks.iter().any(|d| d.interface == Interface::Usb) {
        push(&mut a, &["-device", "qemu-xhci,id=xhci"]);
    }
    let mut ahci_port = 0;
    for (i, d) in cfg.disks.iter().enumerate() {
        let id = format!("drive{i}");
        let readonly = d.mode == DriveMode::ReadOnly || d.interface == Interface::Cdrom;
        if readonly && d.interface == Interface::Ide {
            return Err(VmError::Config(format!(
                "{}: QEMU's IDE disks cannot be read-only; use snapshot mode or another interface",
                d.path.display()
            )));
        }
        let mut drive = opt(
            "file=",
            &d.path,
            &format!(",format={},if=none,id={id}", d.format.qemu_name()),
        );
        if d.interface == Interface::Cdrom {
            drive.push(",media=cdrom");
        }
        if readonly {
            drive.push(",readonly=on");
        } else if d.mode == DriveMode::Snapshot {
            // The overlay is thrown away, so flushing it is wasted time.
            drive.push(",snapshot=on,cache=unsafe");
        }
        a.push("-drive".into());
        a.push(drive);

        let mut device = match d.interface {
            Interface::Virtio => format!("virtio-blk-pci,drive={id}"),
            Interface::Nvme => format!("nvme,drive={id}"),
            Interface::Ide => format!("ide-hd,drive={id},bus=ide.{ahci_port}"),
            Interface::Cdrom => format!("ide-cd,drive={id},bus=ide.{ahci_port}"),
            Interface::Usb => format!("usb-storage,drive={id},bus=xhci.0,removable=on"),
        };
        if d.interface.on_ahci() {
            ahci_port += 1;
        }
        let serial = match (&d.serial, d.interface) {
            (Some(s), _) => Some(s.clone()),
            (None, Interface::Nvme) => Some(format!("kiln{i}")),
            (None, _) => None,
        };
        if let Some(s) = serial {
            if s.is_empty() || s.contains(',') || s.len() > 20 {
                return Err(VmError::Config(format!(
                    "drive serial {s:?} must be 1 to 20 characters without commas"
                )));
            }
            device.push_str(&format!(",serial={s}"));
        }
        if cfg.direct_boot.is_none() && boot_disk == Some(i) {
            device.push_str(",bootindex=0");
        }
        a.push("-device".into());
        a.push(device.into());
    }

    // Always explicit: QEMU without a -nic would add its default NIC
    // (-nodefaults prevents that too; this does not rely on it).
    a.extend(cfg.net.qemu_args().map(OsString::from));
    // Entropy for the guest: early-boot key generation otherwise stalls.
    a.extend(["-device", "virtio-rng-pci"].map(OsString::from));
    Ok(a)
}

/// A running VM. Dropping it kills QEMU and removes its temporary files;
/// the console log stays.
#[derive(Debug)]
pub struct Vm {
    // Field order matters: QEMU must be gone before its files are removed.
    qemu: Running,
    dir: WorkDir,
    console_log: PathBuf,
    started: Instant,
}

impl Vm {
    /// Checks the configuration, prepares firmware and the console log, and
    /// starts QEMU. Returns as soon as QEMU is running.
    pub fn start(cfg: &VmConfig) -> Result<Vm> {
        for d in &cfg.disks {
            require_file("disk image", &d.path)?;
        }
        if let Some(d) = &cfg.direct_boot {
            require_file("kernel", &d.kernel)?;
            if let Some(i) = &d.initrd {
                require_file("initrd", i)?;
            }
        }
        if cfg.net.needs_socat() {
            // QEMU starts it only when the guest connects; a missing one
            // would show up as a reset connection inside the guest.
            kiln_exec::locate(SOCAT)?;
        }
        let dir = WorkDir::new_in(&std::env::temp_dir(), "kiln-vm-")
            .map_err(VmError::io("creating a temporary directory for the VM"))?;
        let flash = match cfg.firmware {
            Firmware::Bios => None,
            Firmware::Uefi => Some(private_flash(&find_ovmf()?, dir.path())?),
        };
        if let Some(parent) = cfg.console_log.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(VmError::io_path("creating", parent))?;
        }
        std::fs::File::create(&cfg.console_log).map_err(VmError::io_path("creating console log", &cfg.console_log))?;

        let args = qemu_args(cfg, flash.as_ref())?;
        let qemu = Cmd::new(QEMU)
            .args(&args)
            // Snapshot overlays go here (QEMU unlinks them at once anyway).
            .env("TMPDIR", dir.path())
            .log_to(dir.path().join("qemu.log"))
            .spawn()?;
        tracing::debug!("started QEMU (pid {}): {}", qemu.id(), qemu.command());
        Ok(Vm {
            qemu,
            dir,
            console_log: cfg.console_log.clone(),
            started: Instant::now(),
        })
    }

    /// When QEMU was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn console_log(&self) -> &Path {
        &self.console_log
    }

    /// QEMU's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.qemu.id()
    }

    /// The QEMU command line, shell-quoted.
    pub fn command(&self) -> &str {
        self.qemu.command()
    }

    /// `None` while QEMU runs; once it has exited, how, with the end of
    /// QEMU's own output (its error messages).
    pub fn exited(&mut self) -> Result<Option<VmExit>> {
        let Some(status) = self.qemu.try_wait()? else {
            return Ok(None);
        };
        let log = std::fs::read_to_string(self.dir.path().join("qemu.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let output = lines[lines.len().saturating_sub(QEMU_TAIL_LINES)..].join("\n");
        let status = match self.qemu.exit_error(status, "") {
            kiln_exec::ExecError::Failed { status: described, .. } if !status.success() => described,
            _ => "exited normally".to_owned(),
        };
        Ok(Some(VmExit { status, output }))
    }

    /// Stops QEMU now (the guest gets no shutdown) and cleans up.
    pub fn kill(mut self) -> Result<()> {
        self.qemu.kill_group(std::time::Duration::from_secs(2))?;
        Ok(())
    }
}

/// How QEMU ended: the guest powered off or rebooted (with `-no-reboot`),
/// or QEMU itself failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmExit {
    /// "exited normally", "exited with status 1", "was killed by signal 6".
    pub status: String,
    /// The last lines QEMU printed.
    pub output: String,
}

impl VmExit {
    /// The status and QEMU's last line, on one line.
    pub fn brief(&self) -> String {
        match self.output.lines().rfind(|l| !l.trim().is_empty()) {
            Some(last) => format!("QEMU {}: {}", self.status, last.trim()),
            None => format!("QEMU {}", self.status),
        }
    }
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QEMU {}", self.status)?;
        if !self.output.trim().is_empty() {
            write!(f, "; its last output:\n{}", self.output.trim_end())?;
        }
        Ok(())
    }
}

/// Copies OVMF's variable store template into `dir`, so this run starts
/// with empty NVRAM and cannot change the template or another run's store.
fn private_flash(ovmf: &Ovmf, dir: &Path) -> Result<Flash> {
    require_file("OVMF code", &ovmf.code)?;
    let name = ovmf.vars_template.file_name().unwrap_or(OsStr::new("OVMF_VARS.fd"));
    let vars = dir.join(name);
    std::fs::copy(&ovmf.vars_template, &vars).map_err(VmError::io(format!(
        "copying OVMF variable store {}",
        ovmf.vars_template.display()
    )))?;
    // The copy keeps the template's mode, often read-only; QEMU must write it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&vars, std::fs::Permissions::from_mode(0o600))
        .map_err(VmError::io_path("making writable", &vars))?;
    Ok(Flash {
        code: ovmf.code.clone(),
        vars,
        format: ovmf.format.clone(),
    })
}

/// A command line with one option per line, values beside their flags, as a
/// snapshot reads best.
#[cfg(test)]
pub(crate) fn render(args: &[OsString]) -> String {
    let mut out = String::new();
    for a in args {
        let a = a.to_string_lossy();
        if a.starts_with('-') && !out.is_empty() {
            out.push('\n');
        } else if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&a);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> VmConfig {
        let mut cfg = VmConfig::new("/run/console.log");
        cfg.disks.push(Drive::new("/images/debian.qcow2", ImageFormat::Qcow2));
        cfg.disks.push(
            Drive::new("/run/seed.iso", ImageFormat::Raw)
                .mode(DriveMode::ReadOnly)
                .serial("cidata"),
        );
        cfg
    }

    #[test]
    fn an_interactive_console_is_a_socket_that_still_logs() {
        let mut cfg = base();
        cfg.console_socket = Some("/run/kiln,vm/console.sock".into());
        let args = render(&qemu_args(&cfg, None).unwrap());
        assert!(
            args.contains(
                "-chardev socket,id=console,server=on,wait=off,path=/run/kiln,,vm/console.sock,logfile=/run/console.log"
            ),
            "{args}"
        );
        assert!(args.contains("-serial chardev:console"), "{args}");
        assert!(!args.contains("file,id=console"), "{args}");
    }

    #[test]
    fn bios_snapshot_argv() {
        insta::assert_snapshot!(render(&qemu_args(&base(), None).unwrap()));
    }

    #[test]
    fn uefi_argv_with_private_vars_and_forwards() {
        let mut cfg = base();
        cfg.firmware = Firmware::Uefi;
        cfg.accel = Accel::Kvm;
        cfg.memory = 2 << 30;
        cfg.cpus = 4;
        cfg.net = Network::Isolated(
            crate::network::Isolated::new()
                .host_forward(crate::network::HostForward {
                    host_port: 2222,
                    guest_port: 22,
                })
                .guest_forward(crate::network::GuestForward {
                    addr: "10.0.2.100".parse().unwrap(),
                    port: 80,
                    host_port: 8080,
                })
                .unwrap(),
        );
        let flash = Flash {
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            vars: "/tmp/kiln-vm-x/OVMF_VARS_4M.fd".into(),
            format: "raw".into(),
        };
        insta::assert_snapshot!(render(&qemu_args(&cfg, Some(&flash)).unwrap()));
        cfg.direct_boot = None;
        let err = qemu_args(&cfg, None).unwrap_err();
        assert!(err.to_string().contains("OVMF"), "{err}");
    }

    /// A cloud's identity, with a comma in a value (doubled for QEMU).
    #[test]
    fn smbios_tables() {
        let mut cfg = VmConfig::new("/c.log");
        cfg.smbios = Some(Smbios {
            vendor: "Amazon EC2".into(),
            product: "t3.micro".into(),
            serial: "ec2a1b2c-0000-4000-8000-0123456789ab".into(),
            uuid: "ec2a1b2c-0000-4000-8000-0123456789ab".parse().unwrap(),
            board_asset_tag: "i-0123456789abcdef0".into(),
            chassis_asset_tag: "Amazon EC2, rack 1".into(),
        });
        let args = render(&qemu_args(&cfg, None).unwrap());
        let smbios: Vec<&str> = args.lines().filter_map(|l| l.strip_prefix("-smbios ")).collect();
        assert_eq!(
            smbios,
            [
                "type=0,vendor=Amazon EC2",
                "type=1,manufacturer=Amazon EC2,product=t3.micro,serial=ec2a1b2c-0000-4000-8000-0123456789ab,uuid=ec2a1b2c-0000-4000-8000-0123456789ab",
                "type=2,manufacturer=Amazon EC2,asset=i-0123456789abcdef0",
                "type=3,manufacturer=Amazon EC2,asset=Amazon EC2,, rack 1",
            ]
        );
        cfg.smbios = None;
        assert!(!render(&qemu_args(&cfg, None).unwrap()).contains("-smbios"));
    }

    #[test]
    fn every_interface_and_mode_direct_boot_and_no_network() {
        let mut cfg = VmConfig::new("/run/console,1.log");
        cfg.disks = vec![
            Drive::new("/images/live.iso", ImageFormat::Raw).interface(Interface::Cdrom),
            Drive::new("/images/a,b.raw", ImageFormat::Raw).interface(Interface::Nvme),
            Drive::new("/images/c.vmdk", ImageFormat::Vmdk)
                .interface(Interface::Ide)
                .mode(DriveMode::Writable),
            Drive::new("/images/d.vhd", ImageFormat::Vpc)
                .interface(Interface::Nvme)
                .serial("disk-d"),
        ];
        cfg.net = Network::None;
        cfg.no_reboot = false;
        cfg.direct_boot = Some(DirectBoot {
            kernel: "/tree/boot/vmlinuz".into(),
            initrd: Some("/tree/boot/initrd.img".into()),
            append: "root=/dev/vda rw console=ttyS0".into(),
        });
        insta::assert_snapshot!(render(&qemu_args(&cfg, None).unwrap()));
    }

    #[test]
    fn bad_drive_settings_are_refused() {
        let mut cfg = VmConfig::new("/c.log");
        cfg.disks = vec![Drive::new("/x.raw", ImageFormat::Raw)
            .interface(Interface::Ide)
            .mode(DriveMode::ReadOnly)];
        assert!(qemu_args(&cfg, None).unwrap_err().to_string().contains("IDE"));
        cfg.disks = vec![Drive::new("/x.raw", ImageFormat::Raw).serial("a,b")];
        assert!(qemu_args(&cfg, None).unwrap_err().to_string().contains("serial"));
        cfg.disks = vec![
            Drive::new("/a.iso", ImageFormat::Raw).boot(),
            Drive::new("/b.iso", ImageFormat::Raw).boot(),
        ];
        assert!(qemu_args(&cfg, None).unwrap_err().to_string().contains("one drive"));
        cfg.disks = vec![Drive::new("/a.iso", ImageFormat::Raw).interface(Interface::Cdrom); AHCI_PORTS + 1];
        assert!(qemu_args(&cfg, None).unwrap_err().to_string().contains("AHCI"));
    }

    /// Every AHCI drive gets a port of its own; the boot drive is the one
    /// marked, CD-ROM or not; one xHCI controller serves every stick.
    #[test]
    fn ahci_ports_boot_drive_and_usb_controller() {
        let mut cfg = VmConfig::new("/c.log");
        cfg.disks = vec![
            Drive::new("/a.raw", ImageFormat::Raw).interface(Interface::Ide),
            Drive::new("/live.iso", ImageFormat::Raw)
                .interface(Interface::Cdrom)
                .boot(),
            Drive::new("/seed.iso", ImageFormat::Raw).interface(Interface::Cdrom),
            Drive::new("/s1.raw", ImageFormat::Raw).interface(Interface::Usb),
            Drive::new("/s2.qcow2", ImageFormat::Qcow2).interface(Interface::Usb),
        ];
        let args = render(&qemu_args(&cfg, None).unwrap());
        let devices: Vec<&str> = args.lines().filter_map(|l| l.strip_prefix("-device ")).collect();
        assert_eq!(
            devices,
            [
                "qemu-xhci,id=xhci",
                "ide-hd,drive=drive0,bus=ide.0",
                "ide-cd,drive=drive1,bus=ide.1,bootindex=0",
                "ide-cd,drive=drive2,bus=ide.2",
                "usb-storage,drive=drive3,bus=xhci.0,removable=on",
                "usb-storage,drive=drive4,bus=xhci.0,removable=on",
                "virtio-rng-pci",
            ]
        );
        cfg.disks.retain(|d| d.interface != Interface::Usb);
        assert!(!render(&qemu_args(&cfg, None).unwrap()).contains("xhci"));
    }

    #[test]
    fn detects_formats_by_magic() {
        let dir = tempfile::tempdir().unwrap();
        let mut vhd_fixed = vec![0u8; 4096];
        vhd_fixed[4096 - 512..4096 - 504].copy_from_slice(b"conectix");
        let cases: Vec<(&str, Vec<u8>, ImageFormat)> = vec![
            ("a.img", b"QFI\xfb\0\0\0\x03".to_vec(), ImageFormat::Qcow2),
            ("b.qcow2", vec![0u8; 1024], ImageFormat::Raw),
            ("c", b"KDMV\x01\0\0\0".to_vec(), ImageFormat::Vmdk),
            ("d", b"# Disk DescriptorFile\n".to_vec(), ImageFormat::Vmdk),
            ("e", b"vhdxfile".to_vec(), ImageFormat::Vhdx),
            ("f", b"conectix".to_vec(), ImageFormat::Vpc),
            ("g", vhd_fixed, ImageFormat::Vpc),
            (
                "h",
                b"<<< Oracle VM VirtualBox Disk Image >>>".to_vec(),
                ImageFormat::Vdi,
            ),
            ("empty", Vec::new(), ImageFormat::Raw),
        ];
        for (name, bytes, want) in cases {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            assert_eq!(ImageFormat::detect(&p).unwrap(), want, "{name}");
        }
        assert!(ImageFormat::detect(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn start_reports_a_missing_disk_plainly() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = VmConfig::new(dir.path().join("console.log"));
        cfg.disks
            .push(Drive::new(dir.path().join("missing.qcow2"), ImageFormat::Qcow2));
        let err = Vm::start(&cfg).unwrap_err();
        assert!(err.to_string().starts_with("opening disk image "), "{err}");
    }

    #[test]
    fn qemu_refusing_to_run_is_reported_with_its_message() {
        if !kiln_exec::testing::require_tool_or_skip(QEMU) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("not-a-kernel");
        std::fs::write(&kernel, "hello").unwrap();
        let mut cfg = VmConfig::new(dir.path().join("console.log"));
        cfg.net = Network::None;
        cfg.memory = 64 << 20;
        cfg.direct_boot = Some(DirectBoot {
            kernel,
            initrd: None,
            append: String::new(),
        });
        let mut vm = Vm::start(&cfg).unwrap();
        let until = Instant::now() + std::time::Duration::from_secs(30);
        let exit = loop {
            if let Some(exit) = vm.exited().unwrap() {
                break exit;
            }
            assert!(Instant::now() < until, "QEMU accepted a bogus kernel");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(exit.status, "exited with status 1");
        assert_eq!(exit.brief(), "QEMU exited with status 1: qemu: invalid kernel header");
        assert!(exit.to_string().contains("its last output:"), "{exit}");
    }

    #[test]
    fn private_flash_is_a_writable_copy() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let code = dir.path().join("CODE.fd");
        let template = dir.path().join("VARS.fd");
        std::fs::write(&code, "code").unwrap();
        std::fs::write(&template, "empty nvram").unwrap();
        std::fs::set_permissions(&template, std::fs::Permissions::from_mode(0o444)).unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        let ovmf = Ovmf {
            code: code.clone(),
            vars_template: template.clone(),
            format: "raw".into(),
        };
        let flash = private_flash(&ovmf, &run).unwrap();
        assert_eq!(flash.vars, run.join("VARS.fd"));
        std::fs::write(&flash.vars, "changed").unwrap();
        assert_eq!(std::fs::read_to_string(&template).unwrap(), "empty nvram");
    }
}
