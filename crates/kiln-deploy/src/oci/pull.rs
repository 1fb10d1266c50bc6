//! `kiln pull`: an artifact's layers written to a directory under their
//! title names, as `oras pull` does, but every layer checked against its
//! SHA-256 digest and size, and every file that has a `.sha512` sidecar
//! among the layers checked against it. Files are written as `*.part` and
//! renamed only when all of them are verified: a failed pull leaves no
//! file behind, not even a partial one.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kiln_exec::PartialFile;
use sha2::{Digest as _, Sha256, Sha512};

use super::client::{error_message, CallError, Registry, Retry};
use super::{digest_of, safe_title, sidecar_sha512, Manifest, Reference, RegistryOptions, MANIFEST_MEDIA_TYPE};

#[derive(Debug, Clone)]
pub struct PullOptions {
    pub reference: Reference,
    pub registry: RegistryOptions,
    /// The directory to write the files into (made if missing).
    pub out: PathBuf,
}

/// Progress of a pull.
#[derive(Debug, Clone)]
pub enum Progress {
    Downloading { title: String, received: u64, total: u64 },
    Retrying { title: String, why: String },
}

/// What a pull wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pulled {
    pub reference: String,
    pub digest: String,
    pub artifact_type: Option<String>,
    pub files: Vec<PathBuf>,
    /// Files whose SHA-512 matched their `.sha512` sidecar.
    pub sha512_verified: Vec<String>,
}

/// Downloads of one layer tried before giving up.
const ATTEMPTS: u32 = 4;

pub fn pull(opts: &PullOptions, on: &dyn Fn(Progress)) -> Result<Pulled> {
    let registry = Registry::new(&opts.reference, &opts.registry);
    let r = &opts.reference;
    let reply = registry.call(
        "fetching the manifest",
        "GET",
        &registry.url(&format!("manifests/{}", r.reference)),
        &[("Accept", super::ACCEPT_ANY_MANIFEST)],
        &[],
        Retry::Yes,
    )?;
    match reply.status {
        200 => {}
        404 => bail!("{r}: no such tag or repository in the registry"),
        s => bail!(CallError::Status {
            what: format!("fetching the manifest of {r}"),
            status: s,
            message: error_message(&reply.body),
        }),
    }
    let digest = digest_of(&reply.body);
    let claimed = if r.is_digest() {
        Some(r.reference.clone())
    } else {
        reply.header("docker-content-digest").map(str::to_owned)
    };
    if let Some(claimed) = claimed.filter(|c| c.starts_with("sha256:")) {
        if claimed != digest {
            bail!("{r}: the manifest received has digest {digest}, not {claimed}");
        }
    }
    let content_type = reply.header("content-type").unwrap_or_default();
    let declared: Option<String> = serde_json::from_slice::<serde_json::Value>(&reply.body)
        .ok()
        .and_then(|v| v.get("mediaType").and_then(|m| m.as_str()).map(str::to_owned));
    let kind = match declared.as_deref().unwrap_or(content_type) {
        "" => "manifest of unknown type",
        k => k,
    };
    if kind != MANIFEST_MEDIA_TYPE {
        bail!(
            "{r}: it is a {kind}, not an OCI artifact (an OCI image manifest); kiln pulls what \
             `kiln publish oci` or `oras push` pushed (for container images, use skopeo or docker)"
        );
    }
    let manifest: Manifest =
        serde_json::from_slice(&reply.body).with_context(|| format!("{r}: the OCI image manifest does not parse"))?;
    let mut titles = BTreeSet::new();
    for layer in &manifest.layers {
        let title = layer.title().unwrap_or_default();
        if !safe_title(title) {
            bail!(
                "{r}: layer {} has no usable file name ({:?} in org.opencontainers.image.title); nothing was written",
                layer.digest,
                title
            );
        }
        if !titles.insert(title.to_owned()) {
            bail!("{r}: two layers are named {title}; nothing was written");
        }
    }
    std::fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;

    let mut parts = Vec::new();
    let mut sha512s = Vec::new();
    for layer in &manifest.layers {
        let title = layer.title().unwrap_or_default().to_owned();
        let part = PartialFile::new(opts.out.join(&title));
        let mut attempt = 0;
        let sha512 = loop {
            attempt += 1;
            match download(&registry, layer, &part, &title, on) {
                Ok(sha512) => break sha512,
                Err(e) if attempt < ATTEMPTS && e.retryable => {
                    on(Progress::Retrying {
                        title: title.clone(),
                        why: e.error.to_string(),
                    });
                }
                Err(e) => return Err(e.error.context(format!("downloading {title} of {r}"))),
            }
        };
        parts.push((title, part));
        sha512s.push(sha512);
    }

    // Sidecars: `NAME.sha512` vouches for the layer NAME.
    let mut verified = Vec::new();
    for (title, part) in &parts {
        let Some(of) = title.strip_suffix(".sha512") else {
            continue;
        };
        let Some(j) = parts.iter().position(|(t, _)| t == of) else {
            continue;
        };
        let text = std::fs::read_to_string(part.path()).with_context(|| format!("reading {title}"))?;
        let want = sidecar_sha512(&text, std::path::Path::new(title))?;
        if want != sha512s[j] {
            bail!(
                "{r}: {of} has SHA-512 {}, but {title} says {want}; the artifact is corrupt or was pushed wrong; nothing was written",
                sha512s[j]
            );
        }
        verified.push(of.to_owned());
    }

    let mut files = Vec::new();
    for (title, part) in parts {
        files.push(part.commit().with_context(|| format!("writing {title}"))?);
    }
    Ok(Pulled {
        reference: r.to_string(),
        digest,
        artifact_type: manifest.artifact_type,
        files,
        sha512_verified: verified,
    })
}

struct DownloadError {
    error: anyhow::Error,
    retryable: bool,
}

/// Streams one layer into `part`, checking its size and SHA-256; its SHA-512.
fn download(
    registry: &Registry,
    layer: &super::Descriptor,
    part: &PartialFile,
    title: &str,
    on: &dyn Fn(Progress),
) -> Result<String, DownloadError> {
    let fail = |error: anyhow::Error, retryable: bool| DownloadError { error, retryable };
    let mut response = registry
        .open(
            "downloading a blob",
            &registry.url(&format!("blobs/{}", layer.digest)),
            &[],
        )
        .map_err(|e| {
            let retryable = matches!(e, CallError::Connection { .. });
            fail(e.into(), retryable)
        })?;
    let status = response.status().as_u16();
    if status != 200 {
        let body = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .unwrap_or_default();
        return Err(fail(
            anyhow::anyhow!("the registry answered HTTP {status}{}", error_message(&body)),
            status >= 500,
        ));
    }
    let mut file = File::create(part.path())
        .with_context(|| format!("creating {}", part.path().display()))
        .map_err(|e| fail(e, false))?;
    let mut reader = response.body_mut().as_reader();
    let (mut a, mut b) = (Sha256::new(), Sha512::new());
    let mut buf = vec![0u8; 1 << 20];
    let mut received = 0u64;
    loop {
        if kiln_exec::interrupted() {
            return Err(fail(CallError::Interrupted.into(), false));
        }
        let n = reader
            .read(&mut buf)
            .map_err(|e| fail(anyhow::anyhow!("the download broke after {received} bytes: {e}"), true))?;
        if n == 0 {
            break;
        }
        received += n as u64;
        if received > layer.size {
            return Err(fail(
                anyhow::anyhow!(
                    "the registry sent more than the {} bytes the manifest gives",
                    layer.size
                ),
                false,
            ));
        }
        a.update(&buf[..n]);
        b.update(&buf[..n]);
        file.write_all(&buf[..n])
            .with_context(|| format!("writing {}", part.path().display()))
            .map_err(|e| fail(e, false))?;
        on(Progress::Downloading {
            title: title.to_owned(),
            received,
            total: layer.size,
        });
    }
    if received != layer.size {
        return Err(fail(
            anyhow::anyhow!("got {received} bytes, the manifest gives {}", layer.size),
            true,
        ));
    }
    let got = format!("sha256:{}", hex::encode(a.finalize()));
    if got != layer.digest {
        return Err(fail(
            anyhow::anyhow!("the bytes received have digest {got}, not {}", layer.digest),
            false,
        ));
    }
    Ok(hex::encode(b.finalize()))
}
