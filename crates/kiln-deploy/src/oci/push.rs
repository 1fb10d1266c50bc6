//! `kiln publish oci`: the artifact, its `.sha512` and the build's
//! `manifest.json` pushed as one OCI artifact, in the order that leaves
//! nothing half-published: the tag is checked, every blob uploaded (or
//! found already there) and then verified present, and only then is the
//! manifest put under the tag.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256, Sha512};

use super::client::{CallError, Registry, Retry};
use super::{
    digest_of, empty_config, sidecar_sha512, Descriptor, Manifest, Reference, RegistryOptions, ARTIFACT_TYPE,
    BUILD_MANIFEST_MEDIA_TYPE, CREATED, EMPTY_CONFIG, IMAGE_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, SIDECAR_MEDIA_TYPE, TITLE,
};

/// What to push where.
#[derive(Debug, Clone)]
pub struct PushOptions {
    pub artifact: PathBuf,
    /// The build's manifest [default: manifest.json beside the artifact].
    pub manifest: Option<PathBuf>,
    pub reference: Reference,
    pub registry: RegistryOptions,
    /// Bytes per PATCH.
    pub chunk_size: u64,
    /// Replace a tag that already exists.
    pub force: bool,
}

/// Progress of a push, for the command line to show.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Hashing the local files.
    Hashing {
        file: String,
    },
    /// A blob the registry already has.
    Skipped {
        title: String,
        size: u64,
    },
    Uploading {
        title: String,
        sent: u64,
        total: u64,
    },
    /// An upload broke and goes on from `offset` (0: started over).
    Recovering {
        title: String,
        offset: u64,
        why: String,
    },
    Verifying,
    PushingManifest,
}

/// What a push did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pushed {
    pub reference: String,
    /// The manifest's digest: `REGISTRY/REPO@DIGEST` names exactly this push.
    pub digest: String,
    pub layers: Vec<Descriptor>,
    pub blobs_uploaded: usize,
    pub blobs_skipped: usize,
    pub bytes_uploaded: u64,
    /// Uploads that went on where the registry had stopped.
    pub resumed: u32,
    /// Uploads that the registry had dropped and that started over.
    pub restarted: u32,
    /// Whether an existing tag was replaced (--force).
    pub replaced: bool,
}

/// The push was refused before anything was sent (the tag exists, an input
/// is missing or wrong): a usage error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// One file to push.
#[derive(Debug, Clone)]
struct Blob {
    path: PathBuf,
    descriptor: Descriptor,
}

/// How often one blob's upload may break before the push gives up.
const MAX_RECOVERIES: u32 = 8;

pub fn push(opts: &PushOptions, on: &dyn Fn(Progress)) -> Result<Pushed> {
    if opts.chunk_size == 0 {
        bail!(Refused("--chunk-size must be at least 1 byte".into()));
    }
    if opts.reference.is_digest() {
        bail!(Refused(format!(
            "{}: push to a tag, not a digest (the digest is the manifest's, known only once pushed)",
            opts.reference
        )));
    }
    let blobs = local_blobs(opts, on)?;
    let registry = Registry::new(&opts.reference, &opts.registry);
    let target = &opts.reference;

    // 1. The tag: refused if it exists, unless --force.
    let tag_url = registry.url(&format!("manifests/{}", target.reference));
    let accept = [("Accept", super::ACCEPT_ANY_MANIFEST)];
    let existing = registry.call("checking the tag", "HEAD", &tag_url, &accept, &[], Retry::Yes)?;
    let replaced = match existing.status {
        200 if !opts.force => bail!(Refused(format!(
            "{target} already exists (digest {}); pass --force to point the tag at the new artifact",
            existing.header("docker-content-digest").unwrap_or("unknown")
        ))),
        200 => true,
        404 => false,
        s => bail!(CallError::Status {
            what: format!("checking whether {target} exists"),
            status: s,
            message: String::new(),
        }),
    };

    // 2. The blobs, the empty config first.
    let config = Blob {
        path: PathBuf::new(),
        descriptor: empty_config(),
    };
    let mut stats = Stats::default();
    for blob in std::iter::once(&config).chain(&blobs) {
        let title = blob.descriptor.title().unwrap_or("config").to_owned();
        if blob_present(&registry, &blob.descriptor)? {
            on(Progress::Skipped {
                title,
                size: blob.descriptor.size,
            });
            stats.skipped += 1;
            continue;
        }
        upload(&registry, blob, opts.chunk_size, &mut stats, on)
            .with_context(|| format!("uploading {title} to {}", opts.reference))?;
        stats.uploaded += 1;
    }

    // 3. Nothing is tagged unless every blob is there, whole.
    on(Progress::Verifying);
    for blob in std::iter::once(&config).chain(&blobs) {
        if !blob_present(&registry, &blob.descriptor)? {
            bail!(
                "{}: the registry does not have blob {} after its upload; nothing was tagged",
                opts.reference,
                blob.descriptor.digest
            );
        }
    }

    // 4. The manifest.
    on(Progress::PushingManifest);
    let mut annotations = BTreeMap::new();
    annotations.insert(
        CREATED.to_owned(),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    );
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MANIFEST_MEDIA_TYPE.to_owned()),
        artifact_type: Some(ARTIFACT_TYPE.to_owned()),
        config: config.descriptor.clone(),
        layers: blobs.iter().map(|b| b.descriptor.clone()).collect(),
        annotations,
    };
    let bytes = serde_json::to_vec_pretty(&manifest)?;
    let digest = digest_of(&bytes);
    let reply = registry.call(
        "pushing the manifest",
        "PUT",
        &tag_url,
        &[("Content-Type", MANIFEST_MEDIA_TYPE)],
        &bytes,
        Retry::Yes,
    )?;
    if reply.status != 201 && reply.status != 200 {
        bail!(
            "{}: the registry refused the manifest: HTTP {}{}",
            opts.reference,
            reply.status,
            super::client::error_message(&reply.body)
        );
    }
    if let Some(theirs) = reply.header("docker-content-digest") {
        if theirs != digest {
            bail!(
                "{}: the registry stored the manifest as {theirs}, but kiln sent {digest}",
                opts.reference
            );
        }
    }
    Ok(Pushed {
        reference: opts.reference.to_string(),
        digest,
        layers: manifest.layers,
        blobs_uploaded: stats.uploaded,
        blobs_skipped: stats.skipped,
        bytes_uploaded: stats.bytes,
        resumed: stats.resumed,
        restarted: stats.restarted,
        replaced,
    })
}

#[derive(Debug, Default)]
struct Stats {
    uploaded: usize,
    skipped: usize,
    bytes: u64,
    resumed: u32,
    restarted: u32,
}

/// The artifact, its sidecar and the build manifest, hashed; the sidecar
/// must hold the artifact's SHA-512.
fn local_blobs(opts: &PushOptions, on: &dyn Fn(Progress)) -> Result<Vec<Blob>> {
    let artifact = &opts.artifact;
    let name = file_name(artifact)?;
    let sidecar = PathBuf::from(format!("{}.sha512", artifact.display()));
    let manifest = opts
        .manifest
        .clone()
        .unwrap_or_else(|| artifact.parent().unwrap_or(Path::new(".")).join("manifest.json"));
    for (path, what) in [
        (artifact, "the artifact"),
        (&sidecar, "its checksum (kiln build writes it beside the artifact)"),
        (&manifest, "the build manifest (give another with --manifest)"),
    ] {
        if !path.is_file() {
            bail!(Refused(format!("{}: no such file; it is {what}", path.display())));
        }
    }
    let manifest_name = file_name(&manifest)?;
    if manifest_name == name || manifest_name == format!("{name}.sha512") {
        bail!(Refused(format!(
            "{}: the build manifest has the name of another layer",
            manifest.display()
        )));
    }
    on(Progress::Hashing { file: name.clone() });
    let (sha256, sha512, size) = hash_file(artifact)?;
    let recorded = sidecar_sha512(
        &std::fs::read_to_string(&sidecar).with_context(|| format!("reading {}", sidecar.display()))?,
        &sidecar,
    )
    .map_err(|e| Refused(e.to_string()))?;
    if recorded != sha512 {
        bail!(Refused(format!(
            "{}: its SHA-512 is {sha512}, but {} says {recorded}; the file changed after the build (rebuild it, or fix the sidecar)",
            artifact.display(),
            sidecar.display()
        )));
    }
    let described = |path: &Path, media: &str, title: String| -> Result<Blob> {
        let (digest, size) = if path == artifact.as_path() {
            (format!("sha256:{sha256}"), size)
        } else {
            let (d, _, s) = hash_file(path)?;
            (format!("sha256:{d}"), s)
        };
        Ok(Blob {
            path: path.to_owned(),
            descriptor: Descriptor {
                media_type: media.to_owned(),
                digest,
                size,
                data: None,
                annotations: BTreeMap::from([(TITLE.to_owned(), title)]),
            },
        })
    };
    Ok(vec![
        described(artifact, IMAGE_MEDIA_TYPE, name.clone())?,
        described(&sidecar, SIDECAR_MEDIA_TYPE, format!("{name}.sha512"))?,
        described(&manifest, BUILD_MANIFEST_MEDIA_TYPE, manifest_name)?,
    ])
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .filter(|n| super::safe_title(n))
        .map(str::to_owned)
        .ok_or_else(|| Refused(format!("{}: not a usable file name for a layer", path.display())).into())
}

/// The SHA-256 and SHA-512 (hex) and size of a file, in one pass.
fn hash_file(path: &Path) -> Result<(String, String, u64)> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (mut a, mut b) = (Sha256::new(), Sha512::new());
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        a.update(&buf[..n]);
        b.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(a.finalize()), hex::encode(b.finalize()), size))
}

/// Whether the registry has the blob, whole.
fn blob_present(registry: &Registry, d: &Descriptor) -> Result<bool> {
    let reply = registry.call(
        "checking a blob",
        "HEAD",
        &registry.url(&format!("blobs/{}", d.digest)),
        &[],
        &[],
        Retry::Yes,
    )?;
    match reply.status {
        200 => {
            let size = reply.header("content-length").and_then(|s| s.parse::<u64>().ok());
            Ok(size.is_none_or(|s| s == d.size))
        }
        404 => Ok(false),
        s => Err(CallError::Status {
            what: format!("checking blob {}", d.digest),
            status: s,
            message: String::new(),
        }
        .into()),
    }
}

/// Starts an upload session; its URL.
fn start_upload(registry: &Registry) -> Result<String> {
    let reply = registry.call(
        "starting an upload",
        "POST",
        &registry.url("blobs/uploads/"),
        &[],
        &[],
        Retry::Yes,
    )?;
    if reply.status != 202 {
        let hint = match reply.status {
            405 => "; the registry takes no pushes (read-only, or a pull-through mirror)",
            _ => "",
        };
        bail!(
            "the registry refused to start an upload: HTTP {}{}{hint}",
            reply.status,
            super::client::error_message(&reply.body)
        );
    }
    let location = reply
        .header("location")
        .context("the registry started an upload but gave no Location")?;
    Ok(registry.absolute(location))
}

/// Uploads one blob in chunks; a chunk that fails is recovered by asking
/// the registry where the upload stands, or by starting over when the
/// registry no longer knows the upload.
fn upload(registry: &Registry, blob: &Blob, chunk: u64, stats: &mut Stats, on: &dyn Fn(Progress)) -> Result<()> {
    let d = &blob.descriptor;
    let title = d.title().unwrap_or("config").to_owned();
    let mut source: Box<dyn ReadAt> = if blob.path.as_os_str().is_empty() {
        Box::new(std::io::Cursor::new(EMPTY_CONFIG.to_vec()))
    } else {
        Box::new(File::open(&blob.path).with_context(|| format!("opening {}", blob.path.display()))?)
    };
    let mut recoveries = 0;
    let mut location = start_upload(registry)?;
    let mut offset = 0u64;
    let mut buf = Vec::new();
    loop {
        let result = if offset < d.size {
            let n = chunk.min(d.size - offset);
            buf.resize(n as usize, 0);
            source
                .read_exact_at(&mut buf, offset)
                .with_context(|| format!("reading {}", blob.path.display()))?;
            patch(registry, &location, offset, &buf).map(|next| {
                location = next;
                offset += n;
                stats.bytes += n;
                on(Progress::Uploading {
                    title: title.clone(),
                    sent: offset,
                    total: d.size,
                });
                false
            })
        } else {
            finish(registry, &location, &d.digest).map(|()| true)
        };
        let err = match result {
            Ok(true) => return Ok(()),
            Ok(false) => continue,
            Err(e) => e,
        };
        let recoverable = matches!(err, CallError::Connection { .. })
            || err.status().is_some_and(|s| s >= 500 || s == 408 || s == 429);
        recoveries += 1;
        if !recoverable || recoveries > MAX_RECOVERIES {
            return Err(err.into());
        }
        // A finished upload whose answer was lost: the blob is there.
        if offset >= d.size && blob_present(registry, d)? {
            return Ok(());
        }
        match upload_status(registry, &location) {
            Some((next, have)) if have <= d.size => {
                on(Progress::Recovering {
                    title: title.clone(),
                    offset: have,
                    why: err.to_string(),
                });
                stats.resumed += 1;
                location = next;
                offset = have;
            }
            _ => {
                on(Progress::Recovering {
                    title: title.clone(),
                    offset: 0,
                    why: format!("{err}; the registry dropped the upload, starting it over"),
                });
                stats.restarted += 1;
                location = start_upload(registry)?;
                offset = 0;
            }
        }
    }
}

/// Sends one chunk; the upload's next URL.
fn patch(registry: &Registry, location: &str, offset: u64, data: &[u8]) -> Result<String, CallError> {
    let range = format!("{offset}-{}", offset + data.len() as u64 - 1);
    let reply = registry.call(
        "uploading a chunk",
        "PATCH",
        location,
        &[("Content-Type", "application/octet-stream"), ("Content-Range", &range)],
        data,
        Retry::No,
    )?;
    if reply.status != 202 {
        return Err(CallError::Status {
            what: format!("uploading bytes {range}"),
            status: reply.status,
            message: super::client::error_message(&reply.body),
        });
    }
    // The registry may move the upload (distribution carries its state in
    // the URL); it must have taken the whole chunk.
    if let Some(end) = reply.header("range").and_then(range_end) {
        if end != offset + data.len() as u64 {
            return Err(CallError::Status {
                what: format!("uploading bytes {range}: the registry holds {end} bytes"),
                status: 500,
                message: String::new(),
            });
        }
    }
    Ok(reply
        .header("location")
        .map_or_else(|| location.to_owned(), |l| registry.absolute(l)))
}

/// Closes the upload with the digest the registry must check.
fn finish(registry: &Registry, location: &str, digest: &str) -> Result<(), CallError> {
    let sep = if location.contains('?') { '&' } else { '?' };
    let url = format!("{location}{sep}digest={}", digest.replace(':', "%3A"));
    let reply = registry.call(
        "completing an upload",
        "PUT",
        &url,
        &[("Content-Type", "application/octet-stream")],
        &[],
        Retry::No,
    )?;
    match reply.status {
        201 | 204 => Ok(()),
        status => Err(CallError::Status {
            what: format!("completing the upload of {digest}"),
            status,
            message: super::client::error_message(&reply.body),
        }),
    }
}

/// Where a broken upload stands: its URL and how many bytes the registry
/// holds; `None` if it no longer knows the upload.
fn upload_status(registry: &Registry, location: &str) -> Option<(String, u64)> {
    let reply = registry
        .call("asking where an upload stands", "GET", location, &[], &[], Retry::Yes)
        .ok()?;
    if reply.status != 204 && reply.status != 200 {
        tracing::debug!("oci: upload status: HTTP {}", reply.status);
        return None;
    }
    // distribution writes `0-0` for an empty upload: read as nothing held
    // (were it one byte, resending it is refused and the upload restarts).
    let have = match reply.header("range") {
        Some(r) if r.trim() == "0-0" => 0,
        Some(r) => range_end(r).unwrap_or(0),
        None => 0,
    };
    let next = reply
        .header("location")
        .map_or_else(|| location.to_owned(), |l| registry.absolute(l));
    Some((next, have))
}

/// How many bytes a `Range: 0-N` header says the registry holds: N + 1.
fn range_end(range: &str) -> Option<u64> {
    let range = range.trim().trim_start_matches("bytes=");
    let (start, end) = range.split_once('-')?;
    if start.trim() != "0" {
        return None;
    }
    let end: u64 = end.trim().parse().ok()?;
    Some(end + 1)
}

/// Reading a chunk at an offset, from a file or from memory.
trait ReadAt {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl<T: Read + Seek> ReadAt for T {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.seek(SeekFrom::Start(offset))?;
        self.read_exact(buf)
    }
}

#[cfg(test)]
mod tests;
