//! `kiln publish aws`: a raw image becomes an EBS snapshot through the EBS
//! direct APIs (only its non-zero 512 KiB blocks, in parallel, each with
//! its checksum), then an AMI. Everything that can be checked locally is
//! checked before the first request; the AMI name is checked before
//! anything is created; after StartSnapshot, any failure (an interruption
//! included) deletes the snapshot, and the AMI if it was registered, and
//! says so.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, Context, Result};

use super::blocks::{self, Scan, BLOCK_SIZE};
use super::client::{CallError, Client};
use super::config::{self, Environment};
use super::ebs;
use super::ec2::{self, Registration};
use super::manifest::{self, ImageRecord, PublishedEntry};

/// What the command line asks for.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub image: PathBuf,
    pub manifest: Option<PathBuf>,
    /// The AMI's name.
    pub name: String,
    pub description: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
    /// PutSnapshotBlock requests in flight.
    pub jobs: usize,
    /// How long to wait for the snapshot and then the AMI to be ready.
    pub wait_timeout: Duration,
}

/// What a user is told while it runs.
#[derive(Debug, Clone)]
pub enum Progress {
    Phase(String),
    Scanning { done: u64, total: u64 },
    Uploading { sent: u64, total: u64, bytes: u64 },
    Waiting { what: String, state: String },
}

/// A publish that cannot start: nothing was sent, or nothing was created.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Image(#[from] blocks::ImageError),
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("the AMI name `{name}` is already taken in {region} by {ami}; nothing was created. Pick another --name, or deregister {ami} first")]
    NameTaken { name: String, region: String, ami: String },
    #[error("{what}; nothing was created")]
    Invalid { what: String },
}

/// The result.
#[derive(Debug, Clone)]
pub struct Published {
    pub entry: PublishedEntry,
    pub manifest: PathBuf,
    pub image_bytes: u64,
    pub total_blocks: u64,
    pub blocks_sent: u64,
    /// Request bytes on the wire, retries included.
    pub bytes_sent: u64,
    pub nonzero_bytes: u64,
    pub upload_seconds: f64,
    pub retries: u64,
    /// What the account's DescribeImages says of the AMI at the end.
    pub image: ec2::Image,
}

/// Everything checked locally, ready to send.
pub struct Prepared {
    opts: PublishOptions,
    record: ImageRecord,
    image_bytes: u64,
    client: Client,
}

/// The local checks: a raw image within EBS's limits, its manifest entry,
/// credentials, region and endpoint. Sends nothing.
pub fn prepare(opts: &PublishOptions, env: &Environment) -> Result<Prepared, Refused> {
    if opts.name.len() < 3 || opts.name.len() > 128 || !opts.name.chars().all(ami_name_char) {
        return Err(Refused::Invalid {
            what: format!(
                "`{}` is not a valid AMI name: 3 to 128 characters among letters, digits, ( ) [ ] space . / - ' @ _",
                opts.name
            ),
        });
    }
    let image_bytes = blocks::check_raw(&opts.image)?;
    let manifest_path = manifest::locate(&opts.image, opts.manifest.as_deref());
    let record = manifest::read(&manifest_path, &opts.image)?;
    if let Some(format) = record.format.as_deref().filter(|f| *f != "raw") {
        return Err(Refused::Invalid {
            what: format!(
                "{} records {} as a {format} image; EBS needs a raw disk (qemu-img convert -O raw)",
                manifest_path.display(),
                opts.image.display()
            ),
        });
    }
    let credentials = config::credentials(env, opts.profile.as_deref())?;
    let region = config::region(env, opts.region.as_deref(), opts.profile.as_deref())?;
    let endpoints = config::endpoints(env, &region, opts.endpoint_url.as_deref())?;
    let client = Client::new(credentials, region, endpoints, opts.jobs);
    Ok(Prepared {
        opts: opts.clone(),
        record,
        image_bytes,
        client,
    })
}

fn ami_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c)
}

impl Prepared {
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    pub fn region(&self) -> &str {
        self.client.region()
    }

    /// The tags of the snapshot and the AMI.
    fn tags(&self) -> Vec<(String, String)> {
        let file = self.file_name();
        vec![
            ("Name".to_owned(), self.opts.name.clone()),
            ("kiln:image".to_owned(), self.record.image_name.clone()),
            ("kiln:version".to_owned(), self.record.version.clone()),
            ("kiln:sha512".to_owned(), self.record.sha512.clone()),
            ("kiln:file".to_owned(), file),
        ]
    }

    fn file_name(&self) -> String {
        self.opts
            .image
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Publishes: see the module's header.
    pub fn publish(&self, on: &(dyn Fn(Progress) + Sync)) -> Result<Published> {
        let opts = &self.opts;
        let client = &self.client;
        on(Progress::Phase(format!(
            "checking that the AMI name `{}` is free in {} (credentials: {})",
            opts.name,
            client.region(),
            client.credentials().source
        )));
        let taken = ec2::images_named(client, &opts.name).map_err(|e| self.explain(e))?;
        if let Some(image) = taken.first() {
            return Err(Refused::NameTaken {
                name: opts.name.clone(),
                region: client.region().to_owned(),
                ami: image.id.clone(),
            }
            .into());
        }

        on(Progress::Phase(format!(
            "reading {} ({:.1} MiB) for its non-zero blocks and SHA-512",
            opts.image.display(),
            self.image_bytes as f64 / 1048576.0
        )));
        let total = self.image_bytes;
        let scan = blocks::scan(&opts.image, |done| on(Progress::Scanning { done, total }))
            .with_context(|| format!("reading {}", opts.image.display()))?;
        if scan.sha512 != self.record.sha512 {
            return Err(Refused::Invalid {
                what: format!(
                    "{} has SHA-512 {}, but {} records {}: the image changed since it was built",
                    opts.image.display(),
                    short(&scan.sha512),
                    self.record.manifest.display(),
                    short(&self.record.sha512)
                ),
            }
            .into());
        }
        if scan.nonzero.is_empty() {
            return Err(Refused::Invalid {
                what: format!("{} holds only zeros", opts.image.display()),
            }
            .into());
        }

        let tags = self.tags();
        let volume_gib = blocks::volume_size_gib(scan.size);
        let description = opts.description.clone().unwrap_or_else(|| {
            format!(
                "kiln {} {} ({})",
                self.record.image_name,
                self.record.version,
                self.file_name()
            )
        });
        on(Progress::Phase(format!(
            "starting an EBS snapshot of {volume_gib} GiB: {} of {} blocks hold data",
            scan.nonzero.len(),
            blocks::block_count(scan.size)
        )));
        let token = uuid::Uuid::new_v4().to_string();
        let started =
            ebs::start_snapshot(client, volume_gib, &description, &tags, &token).map_err(|e| self.explain(e))?;
        let snapshot_id = started.snapshot_id.clone();
        let mut ami: Option<String> = None;
        let outcome = self.after_start(&scan, &snapshot_id, volume_gib, &description, &tags, &mut ami, on);
        let published = outcome.map_err(|e| self.clean_up(e, &snapshot_id, ami.as_deref()))?;
        // The AMI is complete: it is kept even if the manifest cannot be written.
        manifest::record(&self.record.manifest, &published.entry).with_context(|| {
            format!(
                "published AMI {} (snapshot {}) in {}, but could not record it",
                published.entry.ami, published.entry.snapshot, published.entry.region
            )
        })?;
        Ok(published)
    }

    /// Upload, completion, registration: the part after which a failure
    /// must undo what exists.
    #[allow(clippy::too_many_arguments)]
    fn after_start(
        &self,
        scan: &Scan,
        snapshot_id: &str,
        volume_gib: u64,
        description: &str,
        tags: &[(String, String)],
        ami: &mut Option<String>,
        on: &(dyn Fn(Progress) + Sync),
    ) -> Result<Published> {
        let opts = &self.opts;
        let client = &self.client;
        on(Progress::Phase(format!(
            "uploading {} blocks to {snapshot_id}, {} requests at a time",
            scan.nonzero.len(),
            opts.jobs
        )));
        let sent_before = client.bytes_sent();
        let started = Instant::now();
        let digests = upload(client, &opts.image, scan, snapshot_id, opts.jobs.max(1), on)?;
        let upload_seconds = started.elapsed().as_secs_f64();
        let bytes_sent = client.bytes_sent() - sent_before;
        let aggregate = blocks::linear_aggregate(digests.iter().map(|(_, d)| d));
        ebs::complete_snapshot(client, snapshot_id, digests.len() as u64, &aggregate)?;

        on(Progress::Phase(format!("waiting for {snapshot_id} to complete")));
        let deadline = Instant::now() + opts.wait_timeout;
        let mut pause = Duration::from_millis(500);
        loop {
            let snap = ec2::snapshot(client, snapshot_id)?
                .ok_or_else(|| anyhow!("snapshot {snapshot_id} disappeared while it was completing"))?;
            on(Progress::Waiting {
                what: snapshot_id.to_owned(),
                state: format!("{} {}", snap.state, snap.progress),
            });
            match snap.state.as_str() {
                "completed" => break,
                "error" => {
                    return Err(anyhow!(
                        "EBS could not complete snapshot {snapshot_id}: {}",
                        if snap.state_message.is_empty() {
                            "no reason given"
                        } else {
                            &snap.state_message
                        }
                    ))
                }
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(anyhow!(
                    "snapshot {snapshot_id} was still {} after {}s (--wait-timeout)",
                    snap.state,
                    opts.wait_timeout.as_secs()
                ));
            }
            sleep_interruptibly(pause)?;
            pause = (pause * 2).min(Duration::from_secs(10));
        }

        on(Progress::Phase(format!("registering the AMI `{}`", opts.name)));
        let registration = Registration {
            name: &opts.name,
            description,
            snapshot_id,
            volume_size_gib: volume_gib,
            tags,
        };
        let id = match ec2::register_image(client, &registration) {
            Ok(id) => id,
            Err(e @ CallError::Connection { .. }) => {
                // The request may have been carried out with its answer lost:
                // an AMI of this name on our snapshot is ours.
                let found = ec2::images_named(client, &opts.name)?
                    .into_iter()
                    .find(|i| i.snapshots.values().any(|s| s == snapshot_id));
                match found {
                    Some(i) => i.id,
                    None => return Err(e.into()),
                }
            }
            Err(e) if e.code() == Some("InvalidAMIName.Duplicate") => {
                return Err(anyhow!(e).context(format!(
                    "the AMI name `{}` was taken while the snapshot uploaded",
                    opts.name
                )))
            }
            Err(e) => return Err(e.into()),
        };
        *ami = Some(id.clone());

        // Wait for `available`; add the tags if the service did not apply
        // the TagSpecification (moto ignores it).
        let mut pause = Duration::from_millis(500);
        let mut tagged = false;
        let image = loop {
            let image =
                ec2::image(client, &id)?.ok_or_else(|| anyhow!("AMI {id} is not visible after RegisterImage"))?;
            if !tagged && tags.iter().any(|(k, v)| image.tags.get(k) != Some(v)) {
                ec2::create_tags(client, &[&id], tags)?;
                tagged = true;
                continue;
            }
            on(Progress::Waiting {
                what: id.clone(),
                state: image.state.clone(),
            });
            match image.state.as_str() {
                "available" => break image,
                "failed" | "error" | "invalid" | "deregistered" => {
                    return Err(anyhow!("EC2 could not make the AMI {id} (state {})", image.state))
                }
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(anyhow!(
                    "AMI {id} was still {} after {}s (--wait-timeout)",
                    image.state,
                    opts.wait_timeout.as_secs()
                ));
            }
            sleep_interruptibly(pause)?;
            pause = (pause * 2).min(Duration::from_secs(10));
        };

        let region = client.region().to_owned();
        let entry = PublishedEntry {
            target: "aws".to_owned(),
            name: opts.name.clone(),
            artifact_id: format!("{region}:{id}"),
            region,
            ami: id.clone(),
            snapshot: snapshot_id.to_owned(),
            image: self.file_name(),
            sha512: self.record.sha512.clone(),
            time: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            endpoint: client.endpoints().custom.then(|| client.endpoints().ec2.clone()),
        };
        Ok(Published {
            manifest: self.record.manifest.clone(),
            entry,
            image_bytes: scan.size,
            total_blocks: blocks::block_count(scan.size),
            blocks_sent: digests.len() as u64,
            bytes_sent,
            nonzero_bytes: scan.nonzero_bytes(),
            upload_seconds,
            retries: client.retries(),
            image,
        })
    }

    /// Deletes what a failed publish made and says so in the error.
    fn clean_up(&self, e: anyhow::Error, snapshot_id: &str, ami: Option<&str>) -> anyhow::Error {
        let client = &self.client;
        client.ignore_interrupts(true);
        let mut undone = Vec::new();
        let mut left = Vec::new();
        if let Some(ami) = ami {
            match ec2::deregister_image(client, ami) {
                Ok(()) => undone.push(format!("deregistered the AMI {ami}")),
                Err(d) => left.push(format!(
                    "could not deregister the AMI {ami} ({d}); deregister it by hand: aws ec2 deregister-image --region {} --image-id {ami}",
                    client.region()
                )),
            }
        }
        match ec2::delete_snapshot(client, snapshot_id) {
            Ok(()) => undone.push(format!("deleted the half-made snapshot {snapshot_id}")),
            Err(d) => left.push(format!(
                "could not delete the snapshot {snapshot_id} ({d}); delete it by hand: aws ec2 delete-snapshot --region {} --snapshot-id {snapshot_id}",
                client.region()
            )),
        }
        client.ignore_interrupts(false);
        let e = self.explain_any(e);
        let mut what = undone.join(" and ");
        if !left.is_empty() {
            if !what.is_empty() {
                what.push_str("; ");
            }
            what.push_str(&left.join("; "));
        }
        e.context(format!("publishing {} failed; {what}", self.opts.image.display()))
    }

    /// Names where refused credentials came from.
    fn explain(&self, e: CallError) -> anyhow::Error {
        self.explain_any(e.into())
    }

    fn explain_any(&self, e: anyhow::Error) -> anyhow::Error {
        let auth = e
            .chain()
            .any(|c| c.downcast_ref::<CallError>().is_some_and(CallError::is_auth));
        if auth {
            let source = self.client.credentials().source.clone();
            e.context(format!(
                "AWS refused the credentials from {source} (access key {})",
                self.client.credentials().access_key_id
            ))
        } else {
            e
        }
    }
}

fn short(hex: &str) -> String {
    format!("{}…", &hex[..hex.len().min(16)])
}

fn sleep_interruptibly(d: Duration) -> Result<()> {
    let until = Instant::now() + d;
    while Instant::now() < until {
        kiln_exec::check_interrupted()?;
        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(100)));
    }
    Ok(())
}

/// PutSnapshotBlock of every non-zero block, `jobs` at a time; returns each
/// block's SHA-256 in index order.
fn upload(
    client: &Client,
    image: &std::path::Path,
    scan: &Scan,
    snapshot_id: &str,
    jobs: usize,
    on: &(dyn Fn(Progress) + Sync),
) -> Result<Vec<(u64, [u8; 32])>> {
    let file = std::fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let next = AtomicUsize::new(0);
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let digests: Mutex<Vec<(u64, [u8; 32])>> = Mutex::new(Vec::with_capacity(scan.nonzero.len()));
    let total = scan.nonzero.len() as u64;
    let sent_before = client.bytes_sent();
    std::thread::scope(|s| {
        for _ in 0..jobs.min(scan.nonzero.len()) {
            s.spawn(|| {
                let mut buf = Vec::with_capacity(BLOCK_SIZE as usize);
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&index) = scan.nonzero.get(i) else { break };
                    let result = blocks::read_block(&file, scan.size, index, &mut buf)
                        .with_context(|| format!("reading block {index} of {}", image.display()))
                        .and_then(|()| {
                            let digest = blocks::block_checksum(&buf);
                            ebs::put_block(
                                client,
                                snapshot_id,
                                index,
                                &buf,
                                &blocks::base64(&digest),
                                hex::encode(digest),
                            )
                            .with_context(|| format!("writing block {index} ({} MiB into the image)", index / 2))?;
                            Ok(digest)
                        });
                    match result {
                        Ok(digest) => {
                            digests.lock().unwrap_or_else(|e| e.into_inner()).push((index, digest));
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            let mut f = failure.lock().unwrap_or_else(|e| e.into_inner());
                            if f.is_none() {
                                *f = Some(e);
                            }
                        }
                    }
                }
            });
        }
        // This thread reports progress while the workers send.
        loop {
            let n = done.load(Ordering::Relaxed);
            on(Progress::Uploading {
                sent: n,
                total,
                bytes: client.bytes_sent() - sent_before,
            });
            if n == total || stop.load(Ordering::Relaxed) {
                break;
            }
            if kiln_exec::interrupted() {
                stop.store(true, Ordering::Relaxed);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    kiln_exec::check_interrupted()?;
    let mut digests = digests.into_inner().unwrap_or_else(|e| e.into_inner());
    if digests.len() as u64 != total {
        return Err(anyhow!("only {} of {total} blocks were written", digests.len()));
    }
    digests.sort_unstable_by_key(|(i, _)| *i);
    on(Progress::Uploading {
        sent: total,
        total,
        bytes: client.bytes_sent() - sent_before,
    });
    Ok(digests)
}
