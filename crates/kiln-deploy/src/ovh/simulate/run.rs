//! The replay itself: image checksum, config drive, disk plan, job disk,
//! image server, rescue VM running the installer, then the first boot of the
//! deployed disks and its verdict.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kiln_spec::{ChecksumType, Firmware};
use kiln_vm::console::Console;
use kiln_vm::{
    Accel, DirectBoot, Drive, DriveMode, GuestForward, ImageFormat, Interface, Isolated, Network, Vm, VmConfig,
};
use serde::Serialize;

use super::http::ImageServer;
use super::job::{write_job_disk, JobParams};
use super::probe::{self, Verdict};
use super::rescue;
use crate::ovh::storage;

/// Where the rescue VM finds the image server: an address of QEMU's default
/// user subnet that QEMU forwards (and nothing else) to the server on the
/// host's loopback.
pub const IMAGE_SERVER_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 2, 100);
pub const IMAGE_SERVER_PORT: u16 = 80;

/// How the replay is run.
pub struct SimulateOptions {
    pub image: PathBuf,
    /// Boot mode of the simulated server.
    pub boot: Firmware,
    pub disks: u32,
    /// Size of each (sparse) virtual disk.
    pub disk_size: u64,
    /// The API's `storage` JSON, if given.
    pub storage: Option<String>,
    pub hostname: String,
    pub ssh_key: Option<String>,
    pub user_data: Option<Vec<u8>>,
    pub metadata: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    /// `imageCheckSumType`.
    pub checksum_type: ChecksumType,
    /// `efiBootloaderPath`, e.g. `\efi\debian\grubx64.efi`.
    pub efi_bootloader_path: String,
    /// How the rescue system is bootstrapped ([`super::rescue::rescue_request`]).
    pub rescue: kiln_build::bootstrap::BootstrapRequest,
    /// Where the rescue system is cached.
    pub cache_dir: PathBuf,
    /// Scratch directory for disks and logs (owned by the caller).
    pub work_dir: PathBuf,
    /// Limit for the installer and for the first boot, each.
    pub timeout: Duration,
    pub accel: Accel,
}

/// Progress of a replay.
#[derive(Debug)]
pub enum Progress<'a> {
    /// A preparation phase on the host.
    Phase(&'a str),
    /// An installer step started (`n` of `total`); the previous one took `previous`.
    Step { n: u32, total: u32, name: &'a str },
    /// A line of make_image_bootable.sh's output.
    Script(&'a str),
    /// The first boot is waiting; `elapsed` since it started.
    Waiting { elapsed: Duration },
}

/// One timed installer step.
#[derive(Debug, Clone, Serialize)]
pub struct StepTime {
    pub name: String,
    pub seconds: f64,
}

/// The outcome of a replay that got as far as the first boot.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub steps: Vec<StepTime>,
    pub install_seconds: f64,
    pub boot_seconds: f64,
    pub verdict: Verdict,
    /// Failed verdict checks; empty when the replay passed.
    pub failures: Vec<String>,
    pub install_log: PathBuf,
    pub boot_log: PathBuf,
    pub script_log: PathBuf,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// The installer failed: which step, which command, and the tail of its log.
#[derive(Debug, thiserror::Error)]
#[error(
    "the installer failed at step \"{step}\": {command}\n--- last lines of the installer's console ({log}) ---\n{tail}"
)]
pub struct InstallFailed {
    pub step: String,
    pub command: String,
    pub tail: String,
    pub log: PathBuf,
}

/// Runs the replay.
pub fn simulate(opts: &SimulateOptions, on: &mut dyn FnMut(Progress<'_>)) -> Result<Report> {
    let work = &opts.work_dir;
    std::fs::create_dir_all(work)?;
    let image_name = opts
        .image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image.qcow2".into());

    on(Progress::Phase("planning the disks"));
    let storage = match &opts.storage {
        Some(json) => storage::parse_storage(json)?,
        None => Vec::new(),
    };
    let (disks, layout) = storage::select_layout(&storage, opts.disks)?;
    let plan = storage::plan_disks(&layout, disks, opts.boot)?;

    on(Progress::Phase("checksumming the image"));
    let checksum = checksum_file(&opts.image, opts.checksum_type)?;

    on(Progress::Phase("writing the config drive"));
    let config_drive = work.join("config-drive.img");
    let mut seed = kiln_vm::seed::SeedConfig::new(kiln_vm::seed::Datasource::ConfigDrive, kiln_vm::seed::SeedFs::Vfat);
    seed.hostname = Some(opts.hostname.clone());
    seed.ssh_keys = opts.ssh_key.iter().cloned().collect();
    seed.metadata = opts.metadata.clone();
    seed.user_data = Some(probe::user_data(opts.user_data.as_deref(), opts.ssh_key.as_deref()));
    kiln_vm::seed::write_seed(&seed, &config_drive).context("writing the config drive")?;

    on(Progress::Phase("starting the image server"));
    let server = ImageServer::start(&opts.image, &image_name, opts.headers.clone())?;
    let (url, rescue_net) = image_route(&image_name, server.port())?;

    on(Progress::Phase("writing the job disk"));
    let job = work.join("job.ext4");
    write_job_disk(
        &JobParams {
            plan: &plan,
            image_url: &url,
            checksum: &checksum,
            checksum_type: opts.checksum_type,
            headers: &opts.headers,
            config_drive: &config_drive,
        },
        &work.join("job"),
        &job,
    )?;

    on(Progress::Phase("preparing the rescue system (built once, then cached)"));
    let rescue = rescue::ensure_rescue(&opts.cache_dir, &opts.rescue, |_| {})?;

    let mut targets = Vec::new();
    for i in 0..disks {
        let d = work.join(format!("disk{i}.raw"));
        std::fs::File::create(&d)?.set_len(opts.disk_size)?;
        targets.push(d);
    }
    let target_drives = || -> Vec<Drive> {
        targets
            .iter()
            .enumerate()
            .map(|(i, d)| {
                Drive::new(d, ImageFormat::Raw)
                    .interface(Interface::Virtio)
                    .mode(DriveMode::Writable)
                    .serial(format!("KILNDISK{i}"))
            })
            .collect()
    };
    let firmware = opts.boot;

    // --- the installer, in the rescue VM ---
    let install_log = work.join("install-console.log");
    let mut cfg = VmConfig::new(&install_log);
    cfg.disks = target_drives();
    cfg.disks.push(
        Drive::new(&job, ImageFormat::Raw)
            .mode(DriveMode::ReadOnly)
            .serial("KILNJOB"),
    );
    cfg.disks.push(
        Drive::new(&rescue.rootfs, ImageFormat::Raw)
            .mode(DriveMode::Snapshot)
            .serial("KILNRESCUE"),
    );
    cfg.firmware = firmware;
    let image_size = std::fs::metadata(&opts.image)?.len();
    // OVH downloads the image into RAM (§1.3): give the rescue room for it.
    cfg.memory = (3 << 30) + image_size.div_ceil(1 << 20) * (1 << 20);
    cfg.accel = opts.accel;
    cfg.net = rescue_net;
    cfg.direct_boot = Some(DirectBoot {
        kernel: rescue.kernel.clone(),
        initrd: Some(rescue.initrd.clone()),
        append: rescue.cmdline(),
    });
    on(Progress::Phase(&format!(
        "booting the rescue system (network: {})",
        cfg.net
    )));
    let started = Instant::now();
    let vm = Vm::start(&cfg)?;
    let steps = follow_installer(vm, &install_log, started + opts.timeout, on)?;
    let install_seconds = started.elapsed().as_secs_f64();
    let script_log = work.join("make_image_bootable.log");
    let console = std::fs::read_to_string(&install_log).unwrap_or_default();
    let script_lines: String = console
        .lines()
        .filter_map(|l| l.split_once("KILN-SCRIPT ").map(|(_, r)| format!("{r}\n")))
        .collect();
    std::fs::write(&script_log, script_lines)?;
    let requests = server.requests();
    drop(server);
    if !requests.iter().any(|r| r.status == 200) {
        bail!("the installer never downloaded the image (requests: {requests:?})");
    }

    // --- the first boot ---
    let boot_log = work.join("boot-console.log");
    let mut cfg = VmConfig::new(&boot_log);
    cfg.firmware = firmware;
    cfg.accel = opts.accel;
    cfg.memory = 1 << 30;
    // One vCPU boots faster than two under TCG (measured in kiln-vm).
    cfg.cpus = if opts.accel == Accel::Tcg { 1 } else { 2 };
    // The probe reads everything from the console and the config drive.
    cfg.net = Network::default();
    if opts.boot == Firmware::Uefi {
        // OVH's iPXE boots efiBootloaderPath; NVRAM has no entry. Stand-in:
        // a UEFI shell script on a small FAT disk that runs exactly that path.
        let nsh = work.join("ipxe-standin.img");
        write_startup_nsh(&nsh, &opts.efi_bootloader_path)?;
        cfg.disks.push(
            Drive::new(&nsh, ImageFormat::Raw)
                .mode(DriveMode::ReadOnly)
                .serial("KILNIPXE"),
        );
    }
    cfg.disks.extend(target_drives());
    on(Progress::Phase(&format!(
        "first boot of the deployed disks (network: {})",
        cfg.net
    )));
    let started = Instant::now();
    let verdict = follow_first_boot(Vm::start(&cfg)?, &boot_log, started + opts.timeout, plan.uses_raid, on)?;
    let failures = verdict.failures(&opts.hostname, opts.ssh_key.is_some(), plan.uses_raid);
    Ok(Report {
        steps,
        install_seconds,
        boot_seconds: started.elapsed().as_secs_f64(),
        verdict,
        failures,
        install_log,
        boot_log,
        script_log,
    })
}

/// The URL the installer downloads the image from, and the rescue VM's
/// network, in which that URL (and nothing else) reaches the image server
/// listening on the host's loopback at `server_port`.
pub fn image_route(image_name: &str, server_port: u16) -> Result<(String, Network)> {
    let url = format!("http://{IMAGE_SERVER_ADDR}:{IMAGE_SERVER_PORT}/{image_name}");
    let net = Isolated::new().guest_forward(GuestForward {
        addr: IMAGE_SERVER_ADDR,
        port: IMAGE_SERVER_PORT,
        host_port: server_port,
    })?;
    Ok((url, Network::Isolated(net)))
}

fn follow_installer(
    mut vm: Vm,
    log: &Path,
    deadline: Instant,
    on: &mut dyn FnMut(Progress<'_>),
) -> Result<Vec<StepTime>> {
    let mut console = Console::new(log);
    let mut done_lines = 0;
    let mut steps: Vec<StepTime> = Vec::new();
    let mut step_started = Instant::now();
    let tail = |console: &Console| console.tail(40).join("\n");
    loop {
        kiln_exec::check_interrupted()?;
        let exited = vm.exited()?;
        console.poll()?;
        let lines: Vec<String> = console.text().lines().map(str::to_owned).collect();
        // The last line may be incomplete until it ends or the VM has exited.
        let ended = console.text().ends_with('\n');
        let complete = if exited.is_some() || ended {
            lines.len()
        } else {
            lines.len().saturating_sub(1)
        };
        for line in &lines[done_lines.min(complete)..complete] {
            if let Some(rest) = line.split_once("KILN-STEP ").map(|x| x.1) {
                if let Some(last) = steps.last_mut() {
                    last.seconds = step_started.elapsed().as_secs_f64();
                }
                step_started = Instant::now();
                let (count, name) = rest.split_once(' ').unwrap_or((rest, ""));
                let (n, total) = count.split_once('/').unwrap_or(("0", "0"));
                steps.push(StepTime {
                    name: name.to_owned(),
                    seconds: 0.0,
                });
                on(Progress::Step {
                    n: n.parse().unwrap_or(0),
                    total: total.parse().unwrap_or(0),
                    name,
                });
            } else if let Some(rest) = line.split_once("KILN-SCRIPT ").map(|x| x.1) {
                on(Progress::Script(rest));
            } else if let Some(rest) = line.split_once("KILN-FAILED ").map(|x| x.1) {
                let field = |k: &str| {
                    rest.split_once(&format!("{k}="))
                        .map(|(_, v)| v.to_owned())
                        .unwrap_or_default()
                };
                let step = field("step");
                let step = step.split(" line=").next().unwrap_or_default().to_owned();
                let _ = vm.kill();
                return Err(InstallFailed {
                    step,
                    command: field("cmd"),
                    tail: tail(&console),
                    log: log.to_owned(),
                }
                .into());
            } else if line.contains("KILN-INSTALL-OK") {
                if let Some(last) = steps.last_mut() {
                    last.seconds = step_started.elapsed().as_secs_f64();
                }
                // The rescue powers off right after; don't wait for it.
                let _ = vm.kill();
                return Ok(steps);
            }
        }
        done_lines = complete;
        if let Some(how) = exited {
            bail!(
                "the rescue VM stopped before the installer finished ({how})\n--- last console lines ({}) ---\n{}",
                log.display(),
                tail(&console)
            );
        }
        if Instant::now() > deadline {
            let _ = vm.kill();
            bail!(
                "the installer did not finish in time\n--- last console lines ({}) ---\n{}",
                log.display(),
                tail(&console)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn follow_first_boot(
    mut vm: Vm,
    log: &Path,
    deadline: Instant,
    expect_raid: bool,
    on: &mut dyn FnMut(Progress<'_>),
) -> Result<Verdict> {
    let mut console = Console::new(log);
    let started = Instant::now();
    let mut last_beat = Instant::now();
    loop {
        kiln_exec::check_interrupted()?;
        let exited = vm.exited()?;
        console.poll()?;
        let verdict = Verdict::parse(console.text());
        if verdict.complete(expect_raid) {
            // Let the mdstat lines that follow the verdict line arrive.
            std::thread::sleep(Duration::from_secs(1));
            console.poll()?;
            let _ = vm.kill();
            return Ok(Verdict::parse(console.text()));
        }
        if exited.is_some() || Instant::now() > deadline {
            let _ = vm.kill();
            return Ok(verdict);
        }
        if last_beat.elapsed() > Duration::from_secs(15) {
            on(Progress::Waiting {
                elapsed: started.elapsed(),
            });
            last_beat = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The UEFI shell script that stands in for OVH's iPXE: it runs
/// `efiBootloaderPath` from whichever filesystem has it.
pub fn startup_nsh(efi_path: &str) -> String {
    let path = efi_path.replace('/', "\\");
    let path = if path.starts_with('\\') {
        path
    } else {
        format!("\\{path}")
    };
    // QEMU's boot order makes OVMF connect only the first disk; connect
    // every controller and refresh the mappings so the server's disks show
    // up as filesystems.
    let mut s = String::from("@echo -off\r\nconnect -r\r\nmap -r\r\necho kiln: booting efiBootloaderPath ");
    s.push_str(&path);
    s.push_str(" as OVH's iPXE does\r\n");
    for fs in 0..10 {
        s.push_str(&format!("if exist fs{fs}:{path} then\r\n  fs{fs}:{path}\r\nendif\r\n"));
    }
    s.push_str("echo kiln: efiBootloaderPath not found on any filesystem\r\n");
    s
}

fn write_startup_nsh(dest: &Path, efi_path: &str) -> Result<()> {
    let files = [kiln_disk::fat::FatEntry::file(
        "startup.nsh",
        startup_nsh(efi_path).into_bytes(),
    )];
    let opts = kiln_disk::fat::FatOptions::new("KILNIPXE", 0x4b494c4e, 0);
    kiln_disk::fat::write_fat_image(dest, &opts, &files).context("writing the iPXE stand-in disk")?;
    Ok(())
}

/// The image file's checksum as the API's `imageCheckSumType` names it.
pub fn checksum_file(path: &Path, kind: ChecksumType) -> Result<String> {
    use sha2::Digest;
    fn digest<D: Digest + std::io::Write>(path: &Path) -> Result<String> {
        let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut h = D::new();
        std::io::copy(&mut f, &mut h)?;
        Ok(hex::encode(h.finalize()))
    }
    match kind {
        ChecksumType::Md5 => digest::<md5::Md5>(path),
        ChecksumType::Sha1 => digest::<sha1::Sha1>(path),
        ChecksumType::Sha256 => digest::<sha2::Sha256>(path),
        ChecksumType::Sha512 => digest::<sha2::Sha512>(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_is_reached_only_through_its_forward() {
        let (url, net) = image_route("debian-12.qcow2", 43210).unwrap();
        assert_eq!(url, "http://10.0.2.100:80/debian-12.qcow2");
        assert_eq!(net.to_string(), "isolated (guest 10.0.2.100:80 → host 127.0.0.1:43210)");
    }

    #[test]
    fn startup_nsh_tries_every_filesystem_for_the_exact_path() {
        let s = startup_nsh("\\efi\\debian\\grubx64.efi");
        assert!(s.contains("if exist fs0:\\efi\\debian\\grubx64.efi then\r\n  fs0:\\efi\\debian\\grubx64.efi\r\n"));
        assert!(s.contains("fs9:"));
        assert!(
            !s.to_lowercase().contains("bootx64"),
            "must not use the removable fallback"
        );
    }

    #[test]
    fn checksums_match_the_coreutils_tools() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, b"kiln").unwrap();
        // Values from md5sum, sha1sum and sha256sum.
        assert_eq!(
            checksum_file(&f, ChecksumType::Md5).unwrap(),
            "9e8287435ae73a052c9459e215e46a28"
        );
        assert_eq!(
            checksum_file(&f, ChecksumType::Sha1).unwrap(),
            "7908ea50dacbb9a91898af51d70a054211d46dee"
        );
        assert_eq!(
            checksum_file(&f, ChecksumType::Sha256).unwrap(),
            "cdfe9ad58b46226d63eb322dacd35f4f7ac38096180c87258c142e4bca9a3cf5"
        );
        assert_eq!(checksum_file(&f, ChecksumType::Sha512).unwrap().len(), 128);
    }
}
