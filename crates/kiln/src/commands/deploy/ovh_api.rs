//! `kiln deploy ovh SERVICE_NAME --image-url URL`: the reinstall through
//! OVH's API, rendered: the checked body, the dry run, the progress of the
//! install step by step, and the failing step with advice.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kiln_deploy::ovh::api::client::{Client, RetryPolicy, CLOCK_WARNING_SECONDS};
use kiln_deploy::ovh::api::config::{self, Environment};
use kiln_deploy::ovh::api::install::{self, Outcome, Progress};
use kiln_deploy::ovh::api::reinstall::{self, BodyOptions};

use crate::cli::OvhDeployArgs;
use crate::exit::{usage, Exit, Usage};
use crate::output::outln;

/// The default wait for the whole install.
const DEFAULT_TIMEOUT: u64 = 7200;

pub(super) fn run(args: &OvhDeployArgs) -> Result<Exit> {
    let (Some(service), Some(image_url)) = (args.service_name.clone(), args.image_url.clone()) else {
        return Err(Usage::msg("kiln deploy ovh needs SERVICE_NAME and --image-url URL, or --simulate IMAGE").into());
    };
    if service.is_empty() || !service.chars().all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c)) {
        return Err(Usage::msg(format!(
            "{service:?} is not a dedicated server's service name (letters, digits, '.', '-', '_'; e.g. ns1234567.ip-1-2-3.eu)"
        ))
        .into());
    }

    // Everything the body needs is checked before credentials are even read.
    let manifest = reinstall::read_manifest(&args.manifest).map_err(Usage::msg)?;
    let storage = args
        .storage
        .as_ref()
        .map(|p| -> Result<serde_json::Value> {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", p.display()))
        })
        .transpose()
        .map_err(usage)?;
    let user_data = args
        .user_data
        .as_ref()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .transpose()
        .map_err(usage)?;
    let opts = BodyOptions {
        image_url,
        hostname: args.hostname.clone(),
        ssh_key: args.ssh_key.clone(),
        http_headers: args.headers.clone(),
        user_data,
        storage,
        efi_bootloader_path: args.efi_bootloader_path.clone(),
    };
    let body = reinstall::build_body(&manifest, &opts).map_err(usage)?;
    let os = body["operatingSystem"].as_str().unwrap_or("byolinux_64").to_owned();
    let creds = config::load(&Environment::from_process()).map_err(usage)?;
    let endpoint = if creds.endpoint == creds.base_url {
        creds.base_url.clone()
    } else {
        format!("{} ({})", creds.endpoint, creds.base_url)
    };
    tracing::info!("kiln: OVH API {endpoint}, application key {}", creds.application_key);
    let path = format!("/dedicated/server/{service}/reinstall");

    if args.dry_run {
        let client = Client::offline(creds, &service);
        let prepared = client.prepare("POST", &path, Some(&body));
        outln!("{}", prepared.display_masked(Some(&body)))?;
        tracing::info!(
            "kiln: dry run: nothing was sent. The body passed OVH's schema; the timestamp is this machine's clock \
             (a real run signs with the API's, from GET /auth/time)."
        );
        return Ok(Exit::Success);
    }

    let client = Client::connect(creds, &service, RetryPolicy::default())?;
    let offset = client.clock_offset();
    if offset.abs() > CLOCK_WARNING_SECONDS {
        tracing::warn!(
            "this machine's clock is {offset} s off the API's; kiln signs with the API's time, \
             but fix the clock (NTP: `timedatectl set-ntp true`)"
        );
    }
    if let Some(warning) = install::check_byolinux(&client, &service, &os)? {
        tracing::warn!("{warning}");
    }
    tracing::debug!(
        "POST {path}: {}",
        serde_json::to_string(&reinstall::masked(&body)).unwrap_or_default()
    );
    let task = install::start(&client, &service, &body)?;
    tracing::info!(
        "kiln: OVH accepted the reinstall of {service} with {}: task {} ({})",
        body["customizations"]["imageURL"].as_str().unwrap_or_default(),
        task.task_id,
        task.status
    );
    if args.no_wait {
        outln!("{}", task.task_id)?;
        tracing::info!(
            "kiln: not waiting; follow it with GET /dedicated/server/{service}/task/{} and GET /dedicated/server/{service}/install/status",
            task.task_id
        );
        return Ok(Exit::Success);
    }

    let started = Instant::now();
    let mut on = |p: Progress<'_>| match p {
        Progress::Task(t) => tracing::info!(
            "[{:>6.1}s] task {}: {}{}",
            started.elapsed().as_secs_f64(),
            t.task_id,
            t.status,
            t.comment.as_deref().map(|c| format!(" ({c})")).unwrap_or_default()
        ),
        Progress::Step { index, total, step, .. } => tracing::info!(
            "[{:>6.1}s] step {index:>2}/{total} {:<6} {}{}",
            started.elapsed().as_secs_f64(),
            step.status,
            step.comment,
            step.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
        ),
    };
    let outcome = install::wait(
        &client,
        &service,
        task.task_id,
        Duration::from_secs(args.poll_interval),
        Duration::from_secs(args.timeout.unwrap_or(DEFAULT_TIMEOUT)),
        &mut on,
    )?;
    match outcome {
        Outcome::Installed { task, steps, seconds } => {
            outln!(
                "installed {service}: task {} done, {} steps, {:.0}s",
                task.task_id,
                steps.len(),
                seconds
            )?;
            Ok(Exit::Success)
        }
        Outcome::Failed(f) => {
            match &f.step {
                Some((i, n, step)) => eprintln!(
                    "\nkiln: the install of {service} FAILED at step {i}/{n} \"{}\"{} (task {}: {})",
                    step.comment,
                    step.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default(),
                    f.task.task_id,
                    f.task.status
                ),
                None => eprintln!(
                    "\nkiln: the install of {service} FAILED (task {}: {}{})",
                    f.task.task_id,
                    f.task.status,
                    f.task.comment.as_deref().map(|c| format!(": {c}")).unwrap_or_default()
                ),
            }
            for a in &f.advice {
                eprintln!("kiln: {a}");
            }
            Ok(Exit::Negative)
        }
        Outcome::TimedOut { task, steps } => {
            let current = steps
                .iter()
                .enumerate()
                .find(|(_, s)| s.status == "doing")
                .map(|(i, s)| format!(" at step {}/{} \"{}\"", i + 1, steps.len(), s.comment))
                .unwrap_or_default();
            anyhow::bail!(
                "gave up waiting for the install of {service} after {}s{current} (task {} still {}); it goes on at OVH: \
                 follow it with GET /dedicated/server/{service}/install/status, or raise --timeout",
                args.timeout.unwrap_or(DEFAULT_TIMEOUT),
                task.task_id,
                task.status
            )
        }
    }
}
