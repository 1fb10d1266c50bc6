//! `kiln publish aws` and `kiln publish oci`.

use anyhow::Result;

use crate::cli::PublishCommand;
use crate::exit::Exit;

pub(crate) fn run(cmd: PublishCommand) -> Result<Exit> {
    match cmd {
        PublishCommand::Aws(args) => aws::run(args),
        PublishCommand::Oci(args) => super::oci::publish(args),
    }
}

#[cfg(not(feature = "aws"))]
mod aws {
    use super::*;
    use crate::cli::AwsPublishArgs;
    use crate::exit::Usage;

    pub(super) fn run(_: AwsPublishArgs) -> Result<Exit> {
        Err(Usage::msg("this kiln was built without the `aws` feature; rebuild it with `--features aws`").into())
    }
}

#[cfg(feature = "aws")]
mod aws {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use anyhow::Result;
    use kiln_deploy::aws::{self, config::Environment, Progress, PublishOptions, Refused};

    use crate::cli::AwsPublishArgs;
    use crate::exit::{usage, Exit};
    use crate::output::outln;
    use crate::progress::Transfer;

    pub(super) fn run(args: AwsPublishArgs) -> Result<Exit> {
        super::super::require_input(&args.image)?;
        let opts = PublishOptions {
            image: args.image.clone(),
            manifest: args.manifest.clone(),
            name: args.name.clone(),
            description: args.description.clone(),
            region: args.region.clone(),
            endpoint_url: args.endpoint_url.clone(),
            profile: args.profile.clone(),
            jobs: usize::from(args.jobs),
            wait_timeout: Duration::from_secs(args.wait_timeout),
        };
        let prepared = aws::prepare(&opts, &Environment::from_process()).map_err(usage)?;
        let transfer = Transfer::new();
        let phase = Mutex::new(String::new());
        let upload_started = Mutex::new(Instant::now());
        let started = Instant::now();
        let on = |p: Progress| match p {
            Progress::Phase(what) => {
                let mut last = phase.lock().unwrap_or_else(|e| e.into_inner());
                *last = String::new();
                tracing::info!("[{:>6.1}s] {what}", started.elapsed().as_secs_f64());
            }
            Progress::Scanning { done, total } => {
                let mut last = phase.lock().unwrap_or_else(|e| e.into_inner());
                if *last != "scan" {
                    *last = "scan".into();
                    transfer.start("  reading  [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}", total);
                }
                transfer.set(done, String::new());
            }
            Progress::Uploading { sent, total, bytes } => {
                let mut last = phase.lock().unwrap_or_else(|e| e.into_inner());
                let mut since = upload_started.lock().unwrap_or_else(|e| e.into_inner());
                if *last != "upload" {
                    *last = "upload".into();
                    *since = Instant::now();
                    transfer.start("  sending  [{bar:30}] {pos}/{len} non-zero blocks {msg}", total);
                }
                let mib = bytes as f64 / 1048576.0;
                let secs = since.elapsed().as_secs_f64().max(0.001);
                transfer.set(sent, format!("{mib:.1} MiB, {:.1} MiB/s", mib / secs));
            }
            Progress::Waiting { what, state } => {
                let mut last = phase.lock().unwrap_or_else(|e| e.into_inner());
                let line = format!("{what}: {state}");
                if *last != line {
                    if transfer.is_hidden() || last.starts_with("snap-") || last.starts_with("ami-") || last.is_empty()
                    {
                        tracing::info!("           {line}");
                    }
                    *last = line;
                }
            }
        };
        let result = prepared.publish(&on);
        drop(transfer);
        let published = match result {
            Ok(p) => p,
            Err(e) if e.downcast_ref::<Refused>().is_some() => return Err(usage(e)),
            Err(e) => return Err(e),
        };
        let e = &published.entry;
        let rate = published.bytes_sent as f64 / 1048576.0 / published.upload_seconds.max(1e-6);
        if args.json {
            outln!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "ami": e.ami,
                    "snapshot": e.snapshot,
                    "region": e.region,
                    "artifact_id": e.artifact_id,
                    "name": e.name,
                    "manifest": published.manifest,
                    "image_bytes": published.image_bytes,
                    "blocks_total": published.total_blocks,
                    "blocks_sent": published.blocks_sent,
                    "nonzero_bytes": published.nonzero_bytes,
                    "bytes_sent": published.bytes_sent,
                    "upload_seconds": published.upload_seconds,
                    "retries": published.retries,
                    "jobs": args.jobs,
                }))?
            )?;
        } else {
            tracing::info!(
                "sent {} of {} blocks ({:.1} MiB on the wire for {:.1} MiB of data) in {:.1}s, {rate:.1} MiB/s, {} retries",
                published.blocks_sent,
                published.total_blocks,
                published.bytes_sent as f64 / 1048576.0,
                published.nonzero_bytes as f64 / 1048576.0,
                published.upload_seconds,
                published.retries
            );
            outln!("published {} (snapshot {}) in {}", e.ami, e.snapshot, e.region)?;
            outln!("manifest {}", published.manifest.display())?;
        }
        Ok(Exit::Success)
    }
}
