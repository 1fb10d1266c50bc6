//! `kiln boot`: boot an image in QEMU and give a verdict from its serial console.
//!
//! The image is attached as a [`Medium`]: a virtio disk (a cloud's or a
//! server's disk), a CD-ROM or a USB stick (a hybrid live ISO burnt to a
//! disc or written to a stick), and booted from; it is never changed (disks
//! and sticks are in snapshot mode, CD-ROMs read-only). Beside it sits a
//! cloud-init seed, a separate virtio drive: the user's, or a NoCloud ISO
//! generated here with a fresh instance id so cloud-init treats the boot as
//! a first boot.
//! The verdict passes when the console shows a login prompt, cloud-init's
//! final message, and every extra pattern the caller asked for, before the
//! timeout; it fails early on a kernel panic, an emergency or initramfs
//! shell, a failed cloud-init unit, or QEMU exiting. Debian 12's cloud-init
//! (22.4) needs nothing extra in the user data for this: `cloud-final.service`
//! sends its output to `journal+console`, and the final message, written to
//! stderr, reaches the serial console whenever the kernel's console is
//! there (`console=ttyS0`), as it must be for the login prompt too.
//! With an [`Instance`] the guest plays an EC2 instance instead of reading
//! a seed: kiln serves its metadata ([`crate::imds`]) at 169.254.169.254
//! for the life of the boot, the guest's network becomes the link-local
//! subnet with that forward and the instance's MAC, the machine gets
//! EC2's SMBIOS identity, and the verdict carries the requests served.
//! Non-goals: logging in, running commands in the guest.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::accel::{choose_accel, Accel, AccelChoice};
use crate::console::{self, Console, Expect, Outcome, Pattern, Seen};
use crate::firmware::Firmware;
use crate::imds::{ImdsLog, ImdsServer, Instance};
use crate::network::Network;
use crate::qemu::{DirectBoot, Drive, DriveMode, ImageFormat, Interface, Vm, VmConfig};
use crate::seed::{write_seed, Datasource, SeedConfig, SeedFs};

/// getty's prompt: `<hostname> login: `, at the start of a line and, being
/// a prompt, without a newline after it.
pub const LOGIN_PROMPT: &str = r"(?m)^\S+ login: ";

/// cloud-init's default final message (cc_final_message, 22.4: "Cloud-init
/// v. 22.4.2 finished at <date>. Datasource DataSourceNoCloud [...]. Up 48.7
/// seconds"), or systemd's line for the unit, for user data that replaces the
/// message. The latter is only a fallback: systemd stops printing status
/// lines once a getty runs on the console, which is usually before
/// cloud-final ends.
pub const CLOUD_INIT_DONE: &str = r"Cloud-init v\. \S+ finished at|Finished cloud-final\.service";

/// Console lines that mean the boot has failed, whatever comes next.
pub(crate) const FATAL: &[(&str, &str)] = &[
    ("kernel panic", r"Kernel panic - not syncing"),
    (
        "emergency shell",
        r"You are in emergency mode|Give root password for maintenance|Cannot open access to console, the root account is locked",
    ),
    ("initramfs shell", r"(?m)Dropping to a shell!|^\(initramfs\) "),
    (
        "cloud-init failed",
        r"Failed to start cloud-(init-local|init|config|final)\.service",
    ),
    ("UEFI shell (nothing to boot)", r"(?m)^Shell> "),
];

/// How many console lines a verdict quotes.
pub const TAIL_LINES: usize = 40;

/// How often a waiting boot reports that it is still waiting.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// Where the seed comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedSource {
    /// No seed: the image must not need one.
    None,
    /// A ready seed image (ISO or FAT), attached read-only.
    File(PathBuf),
    /// A NoCloud ISO generated for this boot.
    Generate {
        user_data: Option<Vec<u8>>,
        ssh_keys: Vec<String>,
        /// The guest's hostname (`local-hostname`); default: cloud-init's.
        hostname: Option<String>,
    },
}

/// How the image is attached to the guest, and booted from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Medium {
    /// A virtio disk, in snapshot mode.
    #[default]
    Disk,
    /// A read-only CD-ROM on the AHCI controller: firmware boots it through
    /// El Torito (SeaBIOS its BIOS entry, OVMF its EFI image). Raw only.
    Cdrom,
    /// A USB stick (usb-storage on xHCI), in snapshot mode: firmware boots
    /// it as a disk (SeaBIOS its MBR, OVMF its ESP).
    Usb,
}

impl Medium {
    pub const ALL: [Medium; 3] = [Medium::Disk, Medium::Cdrom, Medium::Usb];

    /// `disk`, `cdrom` or `usb`, as reports and JSON say it.
    pub fn name(self) -> &'static str {
        match self {
            Medium::Disk => "disk",
            Medium::Cdrom => "cdrom",
            Medium::Usb => "usb",
        }
    }

    /// How the guest sees it, for progress messages.
    pub fn describe(self) -> &'static str {
        match self {
            Medium::Disk => "virtio disk, snapshot mode",
            Medium::Cdrom => "read-only CD-ROM",
            Medium::Usb => "USB stick, snapshot mode",
        }
    }

    fn interface(self) -> Interface {
        match self {
            Medium::Disk => Interface::Virtio,
            Medium::Cdrom => Interface::Cdrom,
            Medium::Usb => Interface::Usb,
        }
    }

    /// Refuses what this medium cannot carry: a CD-ROM holds a raw ISO 9660
    /// image of a fixed size, so neither another container format nor a
    /// larger disk. `image` names the file in the message.
    pub fn check(self, image: &Path, format: ImageFormat, disk_size: Option<DiskSize>) -> Result<()> {
        if self != Medium::Cdrom {
            return Ok(());
        }
        if format != ImageFormat::Raw {
            let iso = image.with_extension("iso");
            anyhow::bail!(
                "{} is a {} image, but a CD-ROM takes a raw ISO 9660 image: boot it as a disk or a \
                 USB stick instead, or, if it holds an ISO, convert it back first \
                 (qemu-img convert -O raw {} {})",
                image.display(),
                format.qemu_name(),
                image.display(),
                iso.display()
            );
        }
        if disk_size.is_some() {
            anyhow::bail!(
                "a CD-ROM is exactly as large as its image: a larger disk needs the image as a disk or a USB stick"
            );
        }
        Ok(())
    }
}

impl std::fmt::Display for Medium {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What to boot and what to wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootOptions {
    pub image: PathBuf,
    /// Detected from the file's magic when `None`.
    pub format: Option<ImageFormat>,
    /// How the image is attached.
    pub medium: Medium,
    pub firmware: Firmware,
    pub seed: SeedSource,
    pub wait_for_login: bool,
    pub wait_for_cloud_init: bool,
    /// Extra regular expressions the console must show.
    pub expect: Vec<String>,
    pub timeout: Duration,
    /// Guest memory in bytes.
    pub memory: u64,
    /// Guest CPUs; by default 1 under TCG and 2 under KVM. Measured on a
    /// 2-core host, a Debian 12 guest reached cloud-init's final message in
    /// 43-58 s with one vCPU and 66-85 s with two (multi-threaded TCG pays
    /// for cross-CPU synchronisation more than a boot gains from a second
    /// CPU).
    pub cpus: Option<u32>,
    pub console_log: PathBuf,
    pub net: Network,
    /// Boot this kernel instead of the image's boot loader.
    pub direct_boot: Option<DirectBoot>,
    /// Chosen by [`choose_accel`] when `None`.
    pub accel: Option<Accel>,
    /// The disk the guest sees, when larger than the image: a temporary
    /// qcow2 overlay over the image, as a cloud's disk is larger than the
    /// image written to it (cloud-init grows the root into the rest). Not
    /// for a CD-ROM.
    pub disk_size: Option<DiskSize>,
    /// Play this EC2 instance: serve its metadata (IMDSv2) at
    /// 169.254.169.254 and give the machine its SMBIOS identity and MAC.
    /// Needs [`SeedSource::None`] and the default network, which it
    /// replaces with the link-local subnet and the forward.
    pub imds: Option<Instance>,
}

/// How large the guest's disk is, against the image's own virtual size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskSize {
    /// This many bytes in all.
    Total(u64),
    /// This many bytes more than the image.
    Grow(u64),
}

impl DiskSize {
    /// The disk's size in bytes for an image of `image` bytes; an error if
    /// that would be smaller than the image.
    pub fn bytes(self, image: u64) -> Result<u64> {
        let total = match self {
            DiskSize::Total(bytes) => bytes,
            DiskSize::Grow(extra) => image.saturating_add(extra),
        };
        if total < image {
            anyhow::bail!(
                "the disk size {} is smaller than the image ({}); a disk can only be larger",
                kiln_spec::format_size(total),
                kiln_spec::format_size(image)
            );
        }
        Ok(total)
    }
}

impl BootOptions {
    /// BIOS, a generated seed, login and cloud-init awaited, 5 minutes,
    /// 1 GiB, default CPUs, an isolated network without forwards.
    pub fn new(image: impl Into<PathBuf>, console_log: impl Into<PathBuf>) -> Self {
        BootOptions {
            image: image.into(),
            format: None,
            medium: Medium::Disk,
            firmware: Firmware::Bios,
            seed: SeedSource::Generate {
                user_data: None,
                ssh_keys: Vec::new(),
                hostname: None,
            },
            wait_for_login: true,
            wait_for_cloud_init: true,
            expect: Vec::new(),
            timeout: Duration::from_secs(300),
            memory: 1 << 30,
            cpus: None,
            console_log: console_log.into(),
            net: Network::default(),
            direct_boot: None,
            accel: None,
            disk_size: None,
            imds: None,
        }
    }
}

/// Creates `overlay`, a qcow2 of `size` whose backing file is `image`
/// (opened read-only by QEMU through the overlay, so never changed).
fn grown_overlay(
    image: &std::path::Path,
    format: ImageFormat,
    size: DiskSize,
    overlay: &std::path::Path,
) -> Result<()> {
    let virtual_size = kiln_disk::DiskImage::open(image)
        .with_context(|| format!("reading {}", image.display()))?
        .virtual_size();
    let bytes = size.bytes(virtual_size)?;
    let backing = std::path::absolute(image).with_context(|| format!("resolving {}", image.display()))?;
    kiln_exec::Cmd::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", format.qemu_name(), "-b"])
        .arg(&backing)
        .arg(overlay)
        .arg(bytes.to_string())
        .run()
        .context("creating the grown disk's overlay")?;
    Ok(())
}

/// The VM for `opts`: `image` (the image, or the overlay standing in for
/// it) attached as the medium and booted from, then `seed`, read-only on
/// virtio whatever the medium, so it never takes the CD-ROM's AHCI port or
/// the stick's place on the boot order.
fn vm_config(opts: &BootOptions, image: Drive, seed: Option<Drive>, accel: Accel) -> VmConfig {
    let mut cfg = VmConfig::new(&opts.console_log);
    cfg.disks.push(image.interface(opts.medium.interface()).boot());
    cfg.disks
        .extend(seed.map(|s| s.interface(Interface::Virtio).mode(DriveMode::ReadOnly)));
    cfg.firmware = opts.firmware;
    cfg.memory = opts.memory;
    cfg.cpus = opts.cpus.unwrap_or(match accel {
        Accel::Tcg => 1,
        Accel::Kvm => 2,
    });
    cfg.accel = accel;
    cfg.net = opts.net.clone();
    cfg.direct_boot = opts.direct_boot.clone();
    cfg
}

/// Makes `cfg` the machine of `instance` whose metadata service listens
/// on 127.0.0.1:`port`: its network and SMBIOS identity.
fn play_instance(cfg: &mut VmConfig, instance: &Instance, port: u16) -> Result<()> {
    cfg.net = instance.network(port)?;
    cfg.smbios = Some(instance.smbios());
    Ok(())
}

/// Refuses what an EC2 instance cannot have beside its metadata service.
fn check_imds(opts: &BootOptions) -> Result<()> {
    if opts.imds.is_none() {
        return Ok(());
    }
    if opts.seed != SeedSource::None {
        anyhow::bail!(
            "an EC2 instance reads its user data and keys from the metadata service, not from a seed: \
             give them to the metadata service and attach no seed"
        );
    }
    if opts.net != Network::default() {
        anyhow::bail!(
            "the metadata service sets up the guest's network itself (isolated, 169.254.0.0/16, \
             169.254.169.254 forwarded to it); it cannot be combined with another network ({})",
            opts.net
        );
    }
    Ok(())
}

/// Progress of a boot, for the caller to render.
#[derive(Debug)]
pub enum BootEvent<'a> {
    /// The accelerator was chosen.
    Accel(&'a AccelChoice),
    /// The metadata service is serving this instance on 127.0.0.1:`port`.
    Imds { instance: &'a Instance, port: u16 },
    /// QEMU was started with this configuration.
    Started { vm: &'a VmConfig, command: &'a str },
    /// A wanted pattern appeared.
    Seen(&'a Seen),
    /// Still waiting; sent every few seconds.
    Waiting { elapsed: Duration },
}

/// One thing the verdict waited for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub pattern: String,
    /// When it appeared, counted from QEMU's start.
    pub seen_at: Option<Duration>,
}

/// Why the wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    AllSeen,
    /// A fatal pattern appeared (name and console line).
    Fatal {
        name: String,
        line: String,
    },
    TimedOut,
    /// QEMU exited (the guest powered off or rebooted, or QEMU failed).
    VmExited(String),
}

/// The result of a boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub passed: bool,
    pub checks: Vec<Check>,
    pub ending: Ending,
    /// From QEMU's start to the verdict.
    pub elapsed: Duration,
    /// The last console lines.
    pub tail: Vec<String>,
    pub console_log: PathBuf,
    pub accel: AccelChoice,
    /// The network the guest had.
    pub network: Network,
    /// How the image was attached.
    pub medium: Medium,
    /// The metadata service's requests, when the guest had one.
    pub imds: Option<ImdsLog>,
}

impl Verdict {
    /// One line: what passed or why it failed.
    pub fn summary(&self) -> String {
        let secs = self.elapsed.as_secs();
        let seen: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| c.seen_at.is_some())
            .map(|c| c.name.as_str())
            .collect();
        let missing: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| c.seen_at.is_none())
            .map(|c| c.name.as_str())
            .collect();
        match &self.ending {
            Ending::AllSeen if self.passed => format!("booted in {secs} s: seen {}", seen.join(", ")),
            Ending::AllSeen => format!("booted in {secs} s"),
            Ending::Fatal { name, line } => format!("{name} after {secs} s: {}", line.trim()),
            Ending::TimedOut => format!("timed out after {secs} s; never seen: {}", missing.join(", ")),
            Ending::VmExited(why) => format!(
                "the VM stopped after {secs} s before showing {}: {why}",
                if missing.is_empty() {
                    "everything".to_owned()
                } else {
                    missing.join(", ")
                }
            ),
        }
    }
}

/// Boots `opts.image` and waits for the verdict. Returns an error only when
/// the boot could not be run (bad options, QEMU missing, interruption); a
/// guest that does not come up is a failed [`Verdict`].
pub fn boot(opts: &BootOptions, on_event: &mut dyn FnMut(BootEvent<'_>)) -> Result<Verdict> {
    let mut expect = Expect::new();
    let mut names = Vec::new();
    let mut want = |name: String, regex: &str| -> Result<()> {
        let p = Pattern::new(name.clone(), regex).with_context(|| format!("reading the pattern for {name}"))?;
        names.push((name, regex.to_owned()));
        expect = std::mem::take(&mut expect).want(p);
        Ok(())
    };
    if opts.wait_for_login {
        want("login prompt".to_owned(), LOGIN_PROMPT)?;
    }
    if opts.wait_for_cloud_init {
        want("cloud-init finished".to_owned(), CLOUD_INIT_DONE)?;
    }
    for e in &opts.expect {
        want(format!("/{e}/"), e)?;
    }
    for (name, regex) in FATAL {
        expect = expect.fail_on(Pattern::new(*name, regex)?);
    }
    let Prepared { cfg, work, accel, imds } = prepare(opts, on_event)?;

    let mut vm = Vm::start(&cfg).with_context(|| format!("starting QEMU for {}", opts.image.display()))?;
    on_event(BootEvent::Started {
        vm: &cfg,
        command: vm.command(),
    });
    let started = vm.started();
    let mut console = Console::new(vm.console_log());
    let events = RefCell::new(on_event);
    let mut last_beat = started;
    let outcome = console::wait(
        &mut console,
        &mut expect,
        started,
        started + opts.timeout,
        || {
            if last_beat.elapsed() >= HEARTBEAT {
                last_beat = Instant::now();
                (events.borrow_mut())(BootEvent::Waiting {
                    elapsed: started.elapsed(),
                });
            }
            Ok(vm.exited()?.map(|exit| exit.to_string()))
        },
        |seen| (events.borrow_mut())(BootEvent::Seen(seen)),
    )
    .context("watching the serial console")?;
    let elapsed = started.elapsed();
    drop(vm);
    drop(work);
    let imds = imds.map(ImdsServer::stop);

    let checks: Vec<Check> = expect
        .results()
        .zip(names)
        .map(|((_, seen), (name, pattern))| Check {
            name,
            pattern,
            seen_at: seen.map(|s| s.at),
        })
        .collect();
    let ending = match outcome {
        Outcome::AllSeen => Ending::AllSeen,
        Outcome::Failed(s) => Ending::Fatal {
            name: s.name,
            line: s.line,
        },
        Outcome::TimedOut => Ending::TimedOut,
        Outcome::Stopped(why) => Ending::VmExited(why),
    };
    Ok(Verdict {
        passed: ending == Ending::AllSeen,
        checks,
        ending,
        elapsed,
        tail: console.tail(TAIL_LINES),
        console_log: opts.console_log.clone(),
        accel,
        network: cfg.net,
        medium: opts.medium,
        imds,
    })
}

/// A machine ready to start: its configuration, its temporary files (the
/// generated seed, a grown disk's overlay), the accelerator, and the
/// metadata service when it plays an EC2 instance.
pub(crate) struct Prepared {
    pub(crate) cfg: VmConfig,
    pub(crate) work: kiln_exec::WorkDir,
    pub(crate) accel: AccelChoice,
    pub(crate) imds: Option<ImdsServer>,
}

/// Everything a boot of `opts` needs before QEMU starts.
pub(crate) fn prepare(opts: &BootOptions, on_event: &mut dyn FnMut(BootEvent<'_>)) -> Result<Prepared> {
    check_imds(opts)?;

    let format = match opts.format {
        Some(f) => f,
        None => ImageFormat::detect(&opts.image).with_context(|| format!("reading {}", opts.image.display()))?,
    };
    opts.medium.check(&opts.image, format, opts.disk_size)?;
    let accel = match opts.accel {
        Some(accel) => AccelChoice {
            accel,
            reason: "chosen by the caller".to_owned(),
        },
        None => choose_accel().context("choosing the accelerator")?,
    };
    on_event(BootEvent::Accel(&accel));

    let work = kiln_exec::WorkDir::new_in(&std::env::temp_dir(), "kiln-boot-")
        .context("creating a temporary directory for the boot")?;
    let image = match opts.disk_size {
        None => Drive::new(&opts.image, format).mode(DriveMode::Snapshot),
        Some(size) => {
            let overlay = work.path().join("disk.qcow2");
            grown_overlay(&opts.image, format, size, &overlay)?;
            Drive::new(overlay, ImageFormat::Qcow2).mode(DriveMode::Writable)
        }
    };
    let seed = match &opts.seed {
        SeedSource::None => None,
        SeedSource::File(path) => {
            let f = ImageFormat::detect(path).with_context(|| format!("reading seed {}", path.display()))?;
            Some(Drive::new(path, f))
        }
        SeedSource::Generate {
            user_data,
            ssh_keys,
            hostname,
        } => {
            let path = work.path().join("seed.iso");
            let mut seed = SeedConfig::new(Datasource::NoCloud, SeedFs::Iso);
            seed.user_data = user_data.clone();
            seed.ssh_keys = ssh_keys.clone();
            seed.hostname = hostname.clone();
            write_seed(&seed, &path).context("generating the NoCloud seed")?;
            Some(Drive::new(path, ImageFormat::Raw))
        }
    };
    let mut cfg = vm_config(opts, image, seed, accel.accel);
    // Started before QEMU, stopped after it: it serves the whole boot.
    let imds = match &opts.imds {
        None => None,
        Some(instance) => {
            let server = ImdsServer::start(instance).context("starting the metadata service")?;
            play_instance(&mut cfg, instance, server.port())?;
            on_event(BootEvent::Imds {
                instance,
                port: server.port(),
            });
            Some(server)
        }
    };
    Ok(Prepared { cfg, work, accel, imds })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(re: &str) -> regex::Regex {
        regex::Regex::new(re).unwrap()
    }

    #[test]
    fn a_disk_is_never_smaller_than_its_image() {
        const MIB: u64 = 1 << 20;
        assert_eq!(DiskSize::Grow(4 * MIB).bytes(MIB).unwrap(), 5 * MIB);
        assert_eq!(DiskSize::Total(8 * MIB).bytes(MIB).unwrap(), 8 * MIB);
        let err = DiskSize::Total(MIB).bytes(2 * MIB).unwrap_err().to_string();
        assert!(err.contains("smaller than the image (2 MiB)"), "{err}");
    }

    #[test]
    fn the_grown_disk_is_an_overlay_that_leaves_the_image_alone() {
        if !kiln_exec::testing::require_tool_or_skip("qemu-img") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image.raw");
        std::fs::write(&image, vec![7u8; 1 << 20]).unwrap();
        let overlay = dir.path().join("disk.qcow2");
        grown_overlay(&image, ImageFormat::Raw, DiskSize::Grow(3 << 20), &overlay).unwrap();
        let info = kiln_exec::Cmd::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&overlay)
            .run_string()
            .unwrap();
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["virtual-size"], 4 << 20, "{info}");
        assert_eq!(info["backing-filename-format"], "raw", "{info}");
        assert_eq!(std::fs::read(&image).unwrap(), vec![7u8; 1 << 20]);
    }

    /// The QEMU command line of every medium under both firmwares, with the
    /// generated seed beside the image.
    #[test]
    fn qemu_args_for_every_medium_and_firmware() {
        let flash = crate::qemu::Flash {
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            vars: "/tmp/kiln-vm-x/OVMF_VARS_4M.fd".into(),
            format: "raw".into(),
        };
        let mut out = String::new();
        for medium in Medium::ALL {
            for firmware in Firmware::ALL {
                let mut opts = BootOptions::new("/out/live.iso", "/out/live.iso.console.log");
                opts.medium = medium;
                opts.firmware = firmware;
                let image = Drive::new(&opts.image, ImageFormat::Raw);
                let seed = Drive::new("/tmp/kiln-boot-x/seed.iso", ImageFormat::Raw);
                let cfg = vm_config(&opts, image, Some(seed), Accel::Tcg);
                let flash = (firmware == Firmware::Uefi).then_some(&flash);
                let args = crate::qemu::render(&crate::qemu::qemu_args(&cfg, flash).unwrap());
                out.push_str(&format!("=== {medium} {}\n{args}\n", firmware.name()));
            }
        }
        insta::assert_snapshot!(out);
    }

    #[test]
    fn a_cdrom_takes_a_raw_image_of_its_own_size() {
        let iso = Path::new("out/live.qcow2");
        for medium in Medium::ALL {
            medium.check(iso, ImageFormat::Raw, None).unwrap();
        }
        let err = Medium::Cdrom
            .check(iso, ImageFormat::Qcow2, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("out/live.qcow2 is a qcow2 image, but a CD-ROM takes a raw ISO 9660 image"),
            "{err}"
        );
        assert!(
            err.contains("qemu-img convert -O raw out/live.qcow2 out/live.iso"),
            "{err}"
        );
        let err = Medium::Cdrom
            .check(iso, ImageFormat::Raw, Some(DiskSize::Grow(1)))
            .unwrap_err();
        assert!(err.to_string().contains("CD-ROM"), "{err}");
        Medium::Usb
            .check(iso, ImageFormat::Qcow2, Some(DiskSize::Grow(1)))
            .unwrap();
        Medium::Disk
            .check(iso, ImageFormat::Vmdk, Some(DiskSize::Grow(1)))
            .unwrap();
    }

    #[test]
    fn login_prompt_pattern() {
        let re = pattern(LOGIN_PROMPT);
        for yes in [
            "debian login: ",
            "\nkiln-boot.example.org login: ",
            "x\r\nhost login: [  40.1] cloud-init",
        ] {
            assert!(re.is_match(yes), "{yes:?}");
        }
        for no in [
            "Starting systemd-logind.service - User Login Management...",
            "debian login:",
        ] {
            assert!(!re.is_match(no), "{no:?}");
        }
    }

    #[test]
    fn cloud_init_pattern() {
        let re = pattern(CLOUD_INIT_DONE);
        // Recorded from a Debian 12 guest (cloud-init 22.4.2) on ttyS0 (tests/boot_real.rs).
        assert!(re.is_match(
            "[   51.338765] cloud-init[482]: Cloud-init v. 22.4.2 finished at Thu, 26 Nov 2026 05:21:03 +0000. \
             Datasource DataSourceNoCloud [seed=/dev/vdb][dsmode=net].  Up 51.26 seconds"
        ));
        assert!(re.is_match("[  OK  ] Finished cloud-final.service - Execute cloud user/final scripts."));
        assert!(!re.is_match("Cloud-init v. 22.4.2 running 'modules:final' at Tue, 26 Nov 2024"));
    }

    #[test]
    fn fatal_patterns() {
        let cases = [
            (
                "[    2.1] Kernel panic - not syncing: VFS: Unable to mount root fs",
                "kernel panic",
            ),
            (
                "You are in emergency mode. After logging in, type \"journalctl -xb\"",
                "emergency shell",
            ),
            (
                "ALERT!  /dev/vda1 does not exist.  Dropping to a shell!",
                "initramfs shell",
            ),
            ("(initramfs) ", "initramfs shell"),
            (
                "[FAILED] Failed to start cloud-final.service - Execute cloud user/final scripts.",
                "cloud-init failed",
            ),
            ("Shell> ", "UEFI shell (nothing to boot)"),
        ];
        for (line, want) in cases {
            let hit: Vec<_> = FATAL
                .iter()
                .filter(|(_, re)| pattern(re).is_match(line))
                .map(|(n, _)| *n)
                .collect();
            assert_eq!(hit, [want], "{line}");
        }
        assert!(!FATAL
            .iter()
            .any(|(_, re)| pattern(re).is_match("[  OK  ] Finished cloud-final.service")));
    }

    #[test]
    fn summaries() {
        let check = |name: &str, at: Option<u64>| Check {
            name: name.to_owned(),
            pattern: String::new(),
            seen_at: at.map(Duration::from_secs),
        };
        let mut v = Verdict {
            passed: true,
            checks: vec![check("login prompt", Some(40)), check("cloud-init finished", Some(52))],
            ending: Ending::AllSeen,
            elapsed: Duration::from_millis(52_400),
            tail: Vec::new(),
            console_log: "/c.log".into(),
            accel: AccelChoice {
                accel: Accel::Tcg,
                reason: String::new(),
            },
            network: Network::default(),
            medium: Medium::Disk,
            imds: None,
        };
        assert_eq!(v.summary(), "booted in 52 s: seen login prompt, cloud-init finished");
        v.passed = false;
        v.checks[1].seen_at = None;
        v.ending = Ending::TimedOut;
        assert_eq!(v.summary(), "timed out after 52 s; never seen: cloud-init finished");
        v.ending = Ending::VmExited("QEMU exited with status 1".into());
        assert_eq!(
            v.summary(),
            "the VM stopped after 52 s before showing cloud-init finished: QEMU exited with status 1"
        );
    }

    /// The QEMU command line of an EC2 instance under both firmwares: the
    /// image, no seed, the link-local network with the forward and the
    /// MAC, the SMBIOS identity.
    #[test]
    fn qemu_args_of_an_ec2_instance() {
        let flash = crate::qemu::Flash {
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            vars: "/tmp/kiln-vm-x/OVMF_VARS_4M.fd".into(),
            format: "raw".into(),
        };
        let uuid = "0a1b2c3d-4e5f-4061-8273-8495a6b7c8d9".parse().unwrap();
        let instance = Instance::from_uuid(uuid, Vec::new(), None);
        let mut out = String::new();
        for firmware in Firmware::ALL {
            let mut opts = BootOptions::new("/out/ami.raw", "/out/ami.raw.console.log");
            opts.firmware = firmware;
            opts.seed = SeedSource::None;
            opts.imds = Some(instance.clone());
            check_imds(&opts).unwrap();
            let image = Drive::new("/tmp/kiln-boot-x/disk.qcow2", ImageFormat::Qcow2).mode(DriveMode::Writable);
            let mut cfg = vm_config(&opts, image, None, Accel::Tcg);
            play_instance(&mut cfg, &instance, 41234).unwrap();
            let flash = (firmware == Firmware::Uefi).then_some(&flash);
            let args = crate::qemu::render(&crate::qemu::qemu_args(&cfg, flash).unwrap());
            out.push_str(&format!("=== {}\n{args}\n", firmware.name()));
        }
        insta::assert_snapshot!(out);
    }

    #[test]
    fn an_ec2_instance_takes_no_seed_and_no_other_network() {
        let mut opts = BootOptions::new("/out/ami.raw", "/out/c.log");
        opts.imds = Some(Instance::from_uuid(uuid::Uuid::nil(), Vec::new(), None));
        let err = check_imds(&opts).unwrap_err().to_string();
        assert!(err.contains("not from a seed"), "{err}");
        opts.seed = SeedSource::None;
        opts.net = Network::Open;
        let err = check_imds(&opts).unwrap_err().to_string();
        assert!(err.contains("cannot be combined with another network (open"), "{err}");
        opts.net = Network::default();
        check_imds(&opts).unwrap();
        let err = boot(
            &BootOptions {
                seed: SeedSource::File("/s.iso".into()),
                ..opts
            },
            &mut |_| panic!("nothing should happen"),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("not from a seed"), "{err:#}");
    }

    #[test]
    fn bad_expect_pattern_is_an_error_before_anything_runs() {
        let mut opts = BootOptions::new("/nonexistent.qcow2", "/nonexistent.log");
        opts.expect = vec!["unclosed(".to_owned()];
        let err = boot(&opts, &mut |_| panic!("nothing should happen")).unwrap_err();
        assert!(format!("{err:#}").contains("unclosed("), "{err:#}");
    }
}
