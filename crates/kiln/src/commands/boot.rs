//! `kiln boot`: hands the image to `kiln_vm::boot`, renders its progress on
//! stderr, prints the verdict and maps it to the exit status (0 pass, 1 fail;
//! errors and interruptions are mapped in `main`, see `crate::exit`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use kiln_vm::boot::{boot, BootEvent, BootOptions, Ending, SeedSource, Verdict};
use kiln_vm::session::ConsoleEnd;
use kiln_vm::{ImageFormat, ImdsLog, Instance, Network};

use crate::cli::BootArgs;
use crate::exit::{usage, Exit};
use crate::output::{out, outln};

pub(crate) fn run(args: BootArgs) -> Result<Exit> {
    super::require_input(&args.image)?;
    if args.interactive && !std::io::stdin().is_terminal() {
        return Err(usage(kiln_vm::session::NotATerminal));
    }
    let console_log = args
        .console_log
        .clone()
        .unwrap_or_else(|| default_console_log(&args.image));
    let mut opts = BootOptions::new(&args.image, &console_log);
    opts.firmware = args.firmware;
    let user_data = args
        .user_data
        .as_deref()
        .map(|p| std::fs::read(p).with_context(|| format!("reading user data from {}", p.display())))
        .transpose()
        .map_err(usage)?;
    opts.seed = match (&args.seed, args.imds) {
        (_, true) => SeedSource::None,
        (Some(path), false) => SeedSource::File(path.clone()),
        (None, false) => SeedSource::Generate {
            user_data: user_data.clone(),
            ssh_keys: args.ssh_keys.clone(),
            hostname: None,
        },
    };
    if args.imds {
        opts.imds = Some(Instance::new(args.ssh_keys.clone(), user_data).map_err(usage)?);
    }
    opts.expect = args.expect.clone();
    opts.timeout = Duration::from_secs(args.timeout);
    opts.memory = args.memory;
    opts.net = match (args.net, args.no_network) {
        (true, _) => Network::Open,
        (_, true) => Network::None,
        _ => Network::default(),
    };
    opts.disk_size = args.disk_size;
    opts.medium = args.medium();
    let format = ImageFormat::detect(&args.image).with_context(|| format!("reading {}", args.image.display()))?;
    opts.medium.check(&args.image, format, args.disk_size).map_err(usage)?;
    opts.format = Some(format);

    if args.interactive {
        tracing::info!(
            "kiln: the serial console of {} is on this terminal; Ctrl-] quits (and stops the VM)",
            args.image.display()
        );
        let end =
            kiln_vm::session::interactive(&opts, &mut |event| log_event(&args.image, &opts, args.timeout, event))?;
        let why = match end {
            ConsoleEnd::Escaped => "Ctrl-]".to_owned(),
            ConsoleEnd::VmExited(how) => format!("the VM stopped: {how}"),
            ConsoleEnd::Interrupted => return Err(kiln_exec::ExecError::Interrupted { command: String::new() }.into()),
        };
        tracing::info!(
            "\r\nkiln: console closed ({why}); QEMU is stopped; the console log is {}",
            console_log.display()
        );
        return Ok(Exit::Success);
    }
    let verdict = boot(&opts, &mut |event| log_event(&args.image, &opts, args.timeout, event))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report_json(&verdict))?)?;
        if !verdict.passed {
            eprintln!("FAIL {}", verdict.summary());
        }
    } else {
        report(&verdict)?;
    }
    Ok(Exit::verdict(verdict.passed))
}

/// Boots for `kiln ssh`: the session's status is kiln's.
pub(crate) fn ssh(args: crate::cli::SshArgs) -> Result<Exit> {
    super::require_input(&args.image)?;
    let console_log = args
        .console_log
        .clone()
        .unwrap_or_else(|| default_console_log(&args.image));
    let mut opts = BootOptions::new(&args.image, &console_log);
    opts.firmware = args.firmware;
    opts.timeout = Duration::from_secs(args.timeout);
    opts.memory = args.memory;
    opts.disk_size = args.disk_size;
    let format = ImageFormat::detect(&args.image).with_context(|| format!("reading {}", args.image.display()))?;
    opts.medium.check(&args.image, format, args.disk_size).map_err(usage)?;
    opts.format = Some(format);
    let session = kiln_vm::session::SshOptions {
        user: args.user.clone(),
        command: args.command.clone(),
        hostname: Some(args.hostname.clone()),
        ssh_grace: Duration::from_secs(args.ssh_wait),
    };
    let status = kiln_vm::session::ssh(&opts, &session, &mut |event| {
        log_event(&args.image, &opts, args.timeout, event)
    })?;
    tracing::info!("kiln: the session ended; the VM is powered off");
    Ok(Exit::of_command(status))
}

/// Progress of a boot on stderr.
fn log_event(image: &Path, opts: &BootOptions, timeout: u64, event: BootEvent<'_>) {
    match event {
        BootEvent::Accel(choice) => tracing::info!("kiln: accelerator {} ({})", choice.accel.name(), choice.reason),
        BootEvent::Imds { instance, port } => tracing::info!(
            "kiln: EC2 instance {} ({}, {}, {}): metadata service at 169.254.169.254, served from 127.0.0.1:{port}",
            instance.instance_id,
            instance.instance_type,
            instance.availability_zone,
            instance.local_ipv4()
        ),
        BootEvent::Started { vm, command } => {
            tracing::debug!("QEMU: {command}");
            tracing::info!(
                "kiln: booting {} ({}, {}, {}, {} MiB, {} CPU{}; timeout {} s)…",
                image.display(),
                opts.medium.describe(),
                vm.firmware.name(),
                vm.accel.name(),
                vm.memory >> 20,
                vm.cpus,
                if vm.cpus == 1 { "" } else { "s" },
                timeout
            );
            tracing::info!("kiln: network: {}", vm.net);
            tracing::info!("kiln: serial console → {}", vm.console_log.display());
        }
        BootEvent::Seen(seen) => tracing::info!("kiln: [{:>4} s] seen {}", seen.at.as_secs(), seen.name),
        BootEvent::Waiting { elapsed } => tracing::info!("kiln: [{:>4} s] waiting…", elapsed.as_secs()),
    }
}

/// `IMAGE.console.log` beside the image.
fn default_console_log(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".console.log");
    PathBuf::from(name)
}

fn report(v: &Verdict) -> Result<()> {
    if !v.passed {
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
    }
    out!("{}", verdict_text(v))
}

/// The verdict on stdout: PASS or FAIL with the summary, then how the
/// image was attached, the network the guest had and, with `--imds`,
/// the requests the metadata service answered.
fn verdict_text(v: &Verdict) -> String {
    let mut text = format!(
        "{} {}\nmedium: {}\nnetwork: {}\n",
        if v.passed { "PASS" } else { "FAIL" },
        v.summary(),
        v.medium,
        v.network
    );
    if let Some(log) = &v.imds {
        text.push_str(&format!("imds: {}\n", log.summary()));
    }
    text
}

/// The metadata service's requests for `--json`: counts and every request.
fn imds_json(log: &ImdsLog) -> serde_json::Value {
    let refused: serde_json::Map<String, serde_json::Value> = kiln_vm::imds::Refusal::ALL
        .iter()
        .map(|&r| (r.key().to_owned(), log.refused(r).into()))
        .collect();
    let requests: Vec<serde_json::Value> = log
        .requests
        .iter()
        .map(|r| {
            serde_json::json!({
                "method": r.method,
                "path": r.path,
                "status": r.status,
                "refused": r.refusal.map(|why| why.key()),
            })
        })
        .collect();
    serde_json::json!({
        "instance_id": log.instance_id,
        "summary": log.summary(),
        "requests": log.requests.len(),
        "refused": refused,
        "log": requests,
    })
}

/// The verdict for `--json`.
fn report_json(v: &Verdict) -> serde_json::Value {
    let checks: Vec<serde_json::Value> = v
        .checks
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name,
                "pattern": c.pattern,
                "seen_at_seconds": c.seen_at.map(|d| d.as_secs_f64()),
            })
        })
        .collect();
    let ending = match &v.ending {
        Ending::AllSeen => serde_json::json!({ "kind": "all-seen" }),
        Ending::Fatal { name, line } => serde_json::json!({ "kind": "fatal", "name": name, "line": line }),
        Ending::TimedOut => serde_json::json!({ "kind": "timed-out" }),
        Ending::VmExited(why) => serde_json::json!({ "kind": "vm-exited", "why": why }),
    };
    serde_json::json!({
        "passed": v.passed,
        "summary": v.summary(),
        "elapsed_seconds": v.elapsed.as_secs_f64(),
        "checks": checks,
        "ending": ending,
        "accel": v.accel.accel.name(),
        "medium": v.medium.name(),
        "network": { "kind": v.network.kind(), "description": v.network.to_string() },
        "imds": v.imds.as_ref().map(imds_json),
        "console_log": v.console_log,
        "console_tail": v.tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_vm::boot::Medium;

    fn verdict(network: Network) -> Verdict {
        Verdict {
            passed: true,
            checks: vec![kiln_vm::boot::Check {
                name: "login prompt".to_owned(),
                pattern: kiln_vm::boot::LOGIN_PROMPT.to_owned(),
                seen_at: Some(Duration::from_millis(41_500)),
            }],
            ending: Ending::AllSeen,
            elapsed: Duration::from_millis(52_250),
            tail: vec!["debian login: ".to_owned()],
            console_log: "out/x.qcow2.console.log".into(),
            accel: kiln_vm::AccelChoice {
                accel: kiln_vm::Accel::Tcg,
                reason: String::new(),
            },
            network,
            medium: Medium::Disk,
            imds: None,
        }
    }

    #[test]
    fn reports_say_which_network_the_guest_had() {
        let v = verdict(Network::default());
        assert_eq!(
            verdict_text(&v),
            "PASS booted in 52 s: seen login prompt\nmedium: disk\nnetwork: isolated (no forwards)\n"
        );
        let json = report_json(&v);
        assert_eq!(json["medium"], "disk");
        assert_eq!(json["network"]["kind"], "isolated");
        assert_eq!(json["network"]["description"], "isolated (no forwards)");
        assert_eq!(json["passed"], true);
        assert_eq!(json["checks"][0]["seen_at_seconds"], 41.5);
        assert_eq!(json["ending"]["kind"], "all-seen");

        let mut v = verdict(Network::Open);
        v.passed = false;
        v.ending = Ending::TimedOut;
        assert!(verdict_text(&v).starts_with("FAIL timed out after 52 s"));
        assert!(verdict_text(&v).ends_with("\nnetwork: open (the guest reaches whatever the host reaches)\n"));
        assert_eq!(report_json(&v)["network"]["kind"], "open");
        assert_eq!(report_json(&verdict(Network::None))["network"]["description"], "none");
    }

    #[test]
    fn reports_say_how_the_image_was_attached() {
        for medium in Medium::ALL {
            let mut v = verdict(Network::default());
            v.medium = medium;
            assert!(
                verdict_text(&v).contains(&format!("\nmedium: {}\n", medium.name())),
                "{}",
                verdict_text(&v)
            );
            assert_eq!(report_json(&v)["medium"], medium.name());
        }
        assert_eq!(
            Medium::ALL.map(Medium::name),
            ["disk", "cdrom", "usb"],
            "scripts read these names from --json"
        );
    }

    #[test]
    fn reports_count_the_metadata_service_requests() {
        use kiln_vm::imds::{Refusal, Served};
        let served = |path: &str, status, refusal| Served {
            method: "GET".to_owned(),
            path: path.to_owned(),
            status,
            refusal,
        };
        let mut v = verdict(Network::default());
        assert!(!verdict_text(&v).contains("imds"));
        assert_eq!(report_json(&v)["imds"], serde_json::Value::Null);
        v.imds = Some(ImdsLog {
            instance_id: "i-0123456789abcdef0".to_owned(),
            requests: vec![
                served("/latest/meta-data/instance-id", 401, Some(Refusal::NoToken)),
                served("/latest/meta-data/instance-id", 200, None),
                served("/latest/user-data", 404, None),
            ],
        });
        assert!(
            verdict_text(&v).ends_with("\nimds: 3 requests, 1 refused (no token)\n"),
            "{}",
            verdict_text(&v)
        );
        let json = report_json(&v);
        assert_eq!(json["imds"]["summary"], "3 requests, 1 refused (no token)");
        assert_eq!(json["imds"]["instance_id"], "i-0123456789abcdef0");
        assert_eq!(json["imds"]["requests"], 3);
        assert_eq!(json["imds"]["refused"]["no_token"], 1);
        assert_eq!(json["imds"]["refused"]["bad_token"], 0);
        assert_eq!(json["imds"]["log"][0]["refused"], "no_token");
        assert_eq!(json["imds"]["log"][2]["status"], 404);
        assert_eq!(json["imds"]["log"][2]["refused"], serde_json::Value::Null);
    }

    #[test]
    fn console_log_defaults_to_beside_the_image() {
        assert_eq!(
            default_console_log(Path::new("out/debian-12.qcow2")),
            Path::new("out/debian-12.qcow2.console.log")
        );
    }
}
