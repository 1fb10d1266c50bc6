//! `kiln publish oci` and `kiln pull`.

use std::io::Read;
use std::sync::Mutex;

use anyhow::{Context, Result};
use kiln_deploy::oci::{self, push::Refused, Credentials, RegistryOptions};

use crate::cli::{OciPublishArgs, PullArgs, RegistryArgs};
use crate::exit::{usage, Exit, Usage};
use crate::output::outln;
use crate::progress::Transfer;

/// The registry options: credentials from --username and stdin, else from
/// the Docker config.
fn registry_options(args: &RegistryArgs, reference: &oci::Reference, push: bool) -> Result<RegistryOptions> {
    let credentials = match &args.username {
        Some(username) => {
            let mut password = String::new();
            std::io::stdin()
                .read_to_string(&mut password)
                .context("reading the password from stdin")?;
            let password = password.trim_end_matches(['\n', '\r']).to_owned();
            if password.is_empty() {
                return Err(Usage::msg("--password-stdin: stdin is empty; pipe the password or token in").into());
            }
            Some(Credentials {
                username: username.clone(),
                password,
            })
        }
        None => match oci::docker_config_path() {
            Some(path) => oci::docker_config_credentials(&path, &reference.registry).map_err(usage)?,
            None => None,
        },
    };
    Ok(RegistryOptions {
        plain_http: args.plain_http,
        insecure: args.insecure,
        credentials,
        push,
    })
}

pub(crate) fn publish(args: OciPublishArgs) -> Result<Exit> {
    super::require_input(&args.artifact)?;
    let opts = oci::PushOptions {
        artifact: args.artifact.clone(),
        manifest: args.manifest.clone(),
        reference: args.reference.clone(),
        registry: registry_options(&args.registry, &args.reference, true)?,
        chunk_size: args.chunk_size,
        force: args.force,
    };
    let transfer = Transfer::new();
    let current = Mutex::new(String::new());
    let on = |p: oci::push::Progress| {
        use oci::push::Progress;
        match p {
            Progress::Hashing { file } => tracing::info!("hashing {file}"),
            Progress::Skipped { title, size } => tracing::info!("{title}: already in the registry ({size} bytes)"),
            Progress::Uploading { title, sent, total } => {
                let mut cur = current.lock().unwrap_or_else(|e| e.into_inner());
                if *cur != title {
                    *cur = title.clone();
                    tracing::info!("uploading {title} ({total} bytes)");
                    transfer.start("  [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}", total);
                }
                transfer.set(sent, String::new());
            }
            Progress::Recovering { title, offset: 0, why } => tracing::warn!("{title}: {why}"),
            Progress::Recovering { title, offset, why } => {
                tracing::warn!("{title}: {why}; resuming the upload at byte {offset}")
            }
            Progress::Verifying => tracing::info!("verifying every blob is in the registry"),
            Progress::PushingManifest => tracing::info!("pushing the manifest"),
        }
    };
    let result = oci::push(&opts, &on);
    drop(transfer);
    let pushed = match result {
        Ok(p) => p,
        Err(e) if e.downcast_ref::<Refused>().is_some() => return Err(usage(e)),
        Err(e) => return Err(e.context(format!("pushing {} to {}", args.artifact.display(), args.reference))),
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&pushed)?)?;
    } else {
        tracing::info!(
            "{} blob(s) uploaded ({} bytes), {} already there, {} upload(s) resumed, {} restarted",
            pushed.blobs_uploaded,
            pushed.bytes_uploaded,
            pushed.blobs_skipped,
            pushed.resumed,
            pushed.restarted
        );
        let verb = if pushed.replaced { "replaced" } else { "pushed" };
        outln!("{verb} {}", pushed.reference)?;
        outln!("digest {}", pushed.digest)?;
    }
    Ok(Exit::Success)
}

pub(crate) fn pull(args: PullArgs) -> Result<Exit> {
    let opts = oci::PullOptions {
        reference: args.reference.clone(),
        registry: registry_options(&args.registry, &args.reference, false)?,
        out: args.out.clone(),
    };
    let transfer = Transfer::new();
    let current = Mutex::new(String::new());
    let on = |p: oci::pull::Progress| match p {
        oci::pull::Progress::Downloading { title, received, total } => {
            let mut cur = current.lock().unwrap_or_else(|e| e.into_inner());
            if *cur != title {
                *cur = title.clone();
                tracing::info!("downloading {title} ({total} bytes)");
                transfer.start("  [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}", total);
            }
            transfer.set(received, String::new());
        }
        oci::pull::Progress::Retrying { title, why } => {
            tracing::warn!("{title}: {why}; downloading it again");
            current.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    };
    let result = oci::pull(&opts, &on);
    drop(transfer);
    let pulled = result.with_context(|| format!("pulling {}", args.reference))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&pulled)?)?;
    } else {
        if pulled.artifact_type.as_deref() != Some(oci::ARTIFACT_TYPE) {
            tracing::warn!(
                "note: artifact type {}, not {}",
                pulled.artifact_type.as_deref().unwrap_or("(none)"),
                oci::ARTIFACT_TYPE
            );
        }
        for f in &pulled.files {
            outln!("pulled {}", f.display())?;
        }
        for v in &pulled.sha512_verified {
            outln!("verified {v} against its .sha512")?;
        }
        outln!("digest {}", pulled.digest)?;
    }
    Ok(Exit::Success)
}
