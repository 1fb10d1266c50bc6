//! `kiln deploy ovh --simulate` (the local replay) and `kiln deploy ovh
//! SERVICE_NAME` (OVH's API, in `ovh_api`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use kiln_deploy::ovh::simulate::{self, Progress, SimulateOptions};

use crate::cli::{DeployCommand, OvhDeployArgs};
use crate::exit::{usage, Exit};
use crate::output::outln;
use crate::progress::{self, Verbosity};

mod ovh_api;

pub(crate) fn run(cmd: DeployCommand) -> Result<Exit> {
    match cmd {
        DeployCommand::Ovh(args) => ovh(args),
    }
}

fn ovh(args: OvhDeployArgs) -> Result<Exit> {
    let Some(image) = args.simulate.clone() else {
        return ovh_api::run(&args);
    };
    super::require_input(&image)?;
    if !args.no_preflight {
        tracing::info!(
            "kiln: preflight: checking {} against the ovh-byol contract",
            image.display()
        );
        let rules = kiln_build::targets::ovh_byol::check::check_image(
            &image,
            &kiln_build::targets::ovh_byol::check::CheckOptions {
                ram: None,
                efi_bootloader_path: args.efi_bootloader_path.clone(),
            },
        )
        .with_context(|| format!("checking {}", image.display()))?;
        let failed: Vec<_> = rules.iter().filter(|r| !r.passed).collect();
        if !failed.is_empty() {
            eprintln!("kiln: the image would fail OVH's installer; stopping before the replay:");
            for r in &failed {
                eprintln!("  FAIL {:<24} {}", r.id, r.reason);
            }
            eprintln!("kiln: fix the image, or pass --no-preflight to watch the installer fail for real");
            return Ok(Exit::Negative);
        }
    }

    let efi_bootloader_path = match &args.efi_bootloader_path {
        Some(p) => p.clone(),
        None => embedded_efi_path(&image).unwrap_or_else(|| "\\efi\\debian\\grubx64.efi".to_owned()),
    };
    let accel = kiln_vm::choose_accel()?;
    let keep = args.keep.is_some();
    let work_guard = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            None
        }
        None => Some(kiln_exec::WorkDir::new_in(&std::env::temp_dir(), "kiln-replay-")?),
    };
    let work_dir: PathBuf = match (&args.keep, &work_guard) {
        (Some(d), _) => d.clone(),
        (None, Some(w)) => w.path().to_owned(),
        (None, None) => unreachable!("a work directory exists"),
    };
    let opts = SimulateOptions {
        image: image.clone(),
        boot: args.firmware,
        disks: args.disks,
        disk_size: args.disk_size,
        storage: args
            .storage
            .as_ref()
            .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
            .transpose()
            .map_err(usage)?,
        hostname: args.hostname.clone().unwrap_or_else(|| "kiln-replay".to_owned()),
        ssh_key: args.ssh_key.clone(),
        user_data: args
            .user_data
            .as_ref()
            .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
            .transpose()
            .map_err(usage)?,
        metadata: args.metadata.clone(),
        headers: args.headers.clone(),
        checksum_type: args.checksum_type,
        efi_bootloader_path,
        rescue: kiln_deploy::ovh::simulate::rescue::rescue_request(std::path::Path::new("/etc"))?,
        cache_dir: kiln_build::cache::default_dir(),
        work_dir: work_dir.clone(),
        timeout: Duration::from_secs(args.timeout.unwrap_or(1800)),
        accel: accel.accel,
    };
    tracing::info!(
        "kiln: replaying OVHcloud's BYOLinux installer: {} disk(s), {}, {} ({})",
        opts.disks,
        args.firmware.name(),
        accel.accel.name(),
        accel.reason
    );
    let started = std::time::Instant::now();
    let show_script = progress::verbosity() >= Verbosity::Verbose;
    let mut on = |p: Progress<'_>| match p {
        Progress::Phase(what) => tracing::info!("[{:>6.1}s] {what}", started.elapsed().as_secs_f64()),
        Progress::Step { n, total, name } => {
            tracing::info!(
                "[{:>6.1}s] installer step {n}/{total}: {name}",
                started.elapsed().as_secs_f64()
            )
        }
        Progress::Script(line) if show_script => tracing::info!("          | {line}"),
        Progress::Script(_) => {}
        Progress::Waiting { elapsed } => tracing::info!(
            "[{:>6.1}s] first boot: waiting for the login prompt and cloud-init ({:.0}s)",
            started.elapsed().as_secs_f64(),
            elapsed.as_secs_f64()
        ),
    };
    let report = match simulate::simulate(&opts, &mut on) {
        Ok(r) => r,
        Err(e) => {
            if let Some(f) = e.downcast_ref::<simulate::InstallFailed>() {
                eprintln!("\nkiln: the replay FAILED at installer step \"{}\"", f.step);
                eprintln!("kiln: command: {}", f.command);
                eprintln!("--- last lines of the installer's console ---\n{}", f.tail);
                let script_log = work_dir.join("make_image_bootable.log");
                eprintln!("kiln: installer console log: {}", f.log.display());
                if keep {
                    eprintln!("kiln: make_image_bootable.sh output: {}", script_log.display());
                }
                return Ok(Exit::Negative);
            }
            return Err(e);
        }
    };
    tracing::info!("\ninstaller steps:");
    for s in &report.steps {
        tracing::info!("  {:>7.1}s  {}", s.seconds, s.name);
    }
    tracing::info!(
        "  {:>7.1}s  installer total\n  {:>7.1}s  first boot to verdict",
        report.install_seconds,
        report.boot_seconds
    );
    outln!("{}", serde_json::to_string_pretty(&report.verdict)?)?;
    if report.passed() {
        tracing::info!(
            "\nkiln: the replay PASSED: the deployed server booted with hostname {}",
            opts.hostname
        );
        Ok(Exit::Success)
    } else {
        eprintln!("\nkiln: the replay FAILED the first-boot verdict:");
        for f in &report.failures {
            eprintln!("  - {f}");
        }
        eprintln!("kiln: console of the first boot: {}", report.boot_log.display());
        let tail = std::fs::read_to_string(&report.boot_log).unwrap_or_default();
        let lines: Vec<&str> = tail.lines().collect();
        eprintln!(
            "--- last 40 lines ---\n{}",
            lines[lines.len().saturating_sub(40)..].join("\n")
        );
        Ok(Exit::Negative)
    }
}

fn embedded_efi_path(image: &std::path::Path) -> Option<String> {
    let report = kiln_disk::inspect::inspect(image).ok()?;
    let manifest = report.root?.manifest?;
    manifest.get("efiBootloaderPath")?.as_str().map(str::to_owned)
}
