//! `kiln boot`: hands the image to `kiln_vm::boot`, renders its progress on
//! stderr, prints the verdict and maps it to the exit status (0 pass, 1 fail;
//! errors and interruptions are mapped in `main`, see `crate::exit`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use kiln_vm::boot::{boot, BootEvent, BootOptions, SeedSource, Verdict};

use crate::cli::BootArgs;
use crate::exit::{usage, Exit};
use crate::output::outln;

pub(crate) fn run(args: BootArgs) -> Result<Exit> {
    super::require_input(&args.image)?;
    let console_log = args
        .console_log
        .clone()
        .unwrap_or_else(|| default_console_log(&args.image));
    let mut opts = BootOptions::new(&args.image, &console_log);
    opts.firmware = args.firmware;
    opts.seed = match &args.seed {
        Some(path) => SeedSource::File(path.clone()),
        None => SeedSource::Generate {
            user_data: args
                .user_data
                .as_deref()
                .map(|p| std::fs::read(p).with_context(|| format!("reading user data from {}", p.display())))
                .transpose()
                .map_err(usage)?,
            ssh_keys: args.ssh_keys.clone(),
        },
    };
    opts.expect = args.expect.clone();
    opts.timeout = Duration::from_secs(args.timeout);
    opts.memory = args.memory;

    let verdict = boot(&opts, &mut |event| match event {
        BootEvent::Accel(choice) => tracing::info!("kiln: accelerator {} ({})", choice.accel.name(), choice.reason),
        BootEvent::Started { vm, command } => {
            tracing::debug!("QEMU: {command}");
            tracing::info!(
                "kiln: booting {} ({}, {}, snapshot mode, {} MiB, {} CPU{}; timeout {} s)…",
                args.image.display(),
                vm.firmware.name(),
                vm.accel.name(),
                vm.memory >> 20,
                vm.cpus,
                if vm.cpus == 1 { "" } else { "s" },
                args.timeout
            );
            tracing::info!("kiln: serial console → {}", vm.console_log.display());
        }
        BootEvent::Seen(seen) => tracing::info!("kiln: [{:>4} s] seen {}", seen.at.as_secs(), seen.name),
        BootEvent::Waiting { elapsed } => tracing::info!("kiln: [{:>4} s] waiting…", elapsed.as_secs()),
    })?;
    report(&verdict)?;
    Ok(Exit::verdict(verdict.passed))
}

/// `IMAGE.console.log` beside the image.
fn default_console_log(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".console.log");
    PathBuf::from(name)
}

fn report(v: &Verdict) -> Result<()> {
    if v.passed {
        return outln!("PASS {}", v.summary());
    }
    eprintln!("--- last {} lines of the serial console:", v.tail.len());
    for line in &v.tail {
        eprintln!("{line}");
    }
    eprintln!("--- full console log: {}", v.console_log.display());
    if v.tail.is_empty() {
        eprintln!(
            "kiln: the console stayed empty: either nothing booted (no boot loader the firmware can find) \
             or the image does not use the first serial port as its console (kernel command line console=ttyS0)"
        );
    }
    outln!("FAIL {}", v.summary())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_log_defaults_to_beside_the_image() {
        assert_eq!(
            default_console_log(Path::new("out/debian-12.qcow2")),
            Path::new("out/debian-12.qcow2.console.log")
        );
    }
}
