//! The executor: runs a [`Plan`]'s stages in order, reporting progress, and
//! writes the outputs atomically.
//!
//! Every side effect is owned by a guard: the work directory (root tree and
//! raw disk) is deleted on any exit, outputs are written as `*.part` and
//! renamed only once complete, and chroot mounts live in namespaces that die
//! with their process. A failed or interrupted build therefore leaves the
//! output directory as it was, plus the build log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kiln_disk::partition::{self, PartKind, PartitionSpec, TableKind};
use kiln_exec::{Cmd, PartialFile, WorkDir};
use kiln_spec::{Filesystem, PartitionTable};
use sha2::{Digest, Sha512};

use crate::chroot::{run_in_tree, write_mode, ChrootScript};
use crate::customise;
use crate::hash::Hasher;
use crate::manifest::{self, Artifact, Manifest, PartitionInfo};
use crate::plan::{run_name, OvhByolPlan, Plan, Stage};
use crate::targets::ovh_byol;

/// What the executor tells the user interface.
#[derive(Debug, Clone)]
pub enum Event {
    StageStarted {
        id: String,
        title: String,
    },
    /// One line of a stage's tool output.
    Output {
        id: String,
        line: String,
    },
    StageFinished {
        id: String,
        elapsed: Duration,
        summary: String,
    },
    StageFailed {
        id: String,
        elapsed: Duration,
    },
}

/// Receives [`Event`]s; the binary renders them as progress bars or JSON.
pub trait Reporter: Send + Sync {
    fn event(&self, event: Event);
}

/// A reporter that drops everything (tests).
pub struct Quiet;

impl Reporter for Quiet {
    fn event(&self, _: Event) {}
}

/// Options of `kiln build`.
pub struct BuildOptions {
    pub out_dir: PathBuf,
    /// Parent of the scratch directory; default: the output directory, so
    /// that the final rename never crosses filesystems.
    pub work_dir: Option<PathBuf>,
    /// Keep the scratch directory (root tree, raw disk) for debugging.
    pub keep_work: bool,
}

/// What a build produced.
#[derive(Debug)]
pub struct BuildOutput {
    pub artifacts: Vec<PathBuf>,
    pub manifest: PathBuf,
    pub log: PathBuf,
}

/// Tools a build of `plan` runs, checked before any work starts.
pub fn required_tools(plan: &Plan) -> Vec<&'static str> {
    let mut tools = vec!["mmdebstrap", "unshare", "chroot", "sh", "dpkg-query", "qemu-img"];
    if let Some(o) = &plan.ovh_byol {
        tools.extend(match o.filesystem {
            Filesystem::Ext4 => ["mke2fs"].as_slice(),
            Filesystem::Xfs => ["mkfs.xfs", "mount"].as_slice(),
        });
    }
    tools
}

/// Runs the whole build.
pub fn build(plan: &Plan, opts: &BuildOptions, reporter: Arc<dyn Reporter>) -> Result<BuildOutput> {
    preflight(plan)?;
    std::fs::create_dir_all(&opts.out_dir).with_context(|| format!("creating {}", opts.out_dir.display()))?;
    let out_dir = std::fs::canonicalize(&opts.out_dir)?;
    let mut work = WorkDir::new_in(opts.work_dir.as_deref().unwrap_or(&out_dir), ".kiln-work-")
        .context("creating the work directory")?;
    if opts.keep_work {
        work.keep();
    }
    let log = out_dir.join(format!("{}-{}.build.log", plan.name, plan.version));
    std::fs::write(&log, "").with_context(|| format!("creating {}", log.display()))?;
    let mut run = Run {
        plan,
        reporter,
        log: log.clone(),
        tree: work.path().join("tree"),
        work: work.path().to_owned(),
    };

    let mut artifacts = Vec::new();
    let mut manifest_doc = None;
    let mut stage_iter = plan.stages.iter();
    let mut ovh_state = OvhState::default();
    for stage in stage_iter.by_ref() {
        kiln_exec::check_interrupted()?;
        let started = Instant::now();
        run.reporter.event(Event::StageStarted {
            id: stage.id.clone(),
            title: stage.kind.title().to_owned(),
        });
        let result = run.stage(stage, &out_dir, &mut ovh_state, &mut artifacts, &mut manifest_doc);
        match result {
            Ok(summary) => run.reporter.event(Event::StageFinished {
                id: stage.id.clone(),
                elapsed: started.elapsed(),
                summary,
            }),
            Err(e) => {
                run.reporter.event(Event::StageFailed {
                    id: stage.id.clone(),
                    elapsed: started.elapsed(),
                });
                return Err(e.context(format!("stage {} failed (build log: {})", stage.id, log.display())));
            }
        }
    }
    let manifest_path = out_dir.join("manifest.json");
    Ok(BuildOutput {
        artifacts,
        manifest: manifest_path,
        log,
    })
}

fn preflight(plan: &Plan) -> Result<()> {
    let missing: Vec<String> = required_tools(plan)
        .into_iter()
        .filter(|t| kiln_exec::which(t).is_none())
        .map(|t| {
            let pkg = kiln_exec::find_tool(t).map(|x| x.package).unwrap_or("?");
            format!("{t} (package {pkg})")
        })
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing tools: {}; install them (see `kiln doctor`) and try again",
            missing.join(", ")
        );
    }
    if !is_root() {
        bail!("kiln build needs root: mmdebstrap's root mode, chroot and mounts need it; run it with sudo");
    }
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Intermediate results of the ovh-byol stages.
#[derive(Default)]
struct OvhState {
    packages: Vec<manifest::Package>,
    disk: Option<PathBuf>,
    fs_offset: u64,
    fs_size: u64,
    fs_uuid: Option<uuid::Uuid>,
    layout: Option<partition::Layout>,
    output: Option<PartialFile>,
}

struct Run<'a> {
    plan: &'a Plan,
    reporter: Arc<dyn Reporter>,
    log: PathBuf,
    tree: PathBuf,
    work: PathBuf,
}

impl Run<'_> {
    fn sink(&self, stage: &Stage) -> impl FnMut(&str) + Send + 'static {
        let reporter = Arc::clone(&self.reporter);
        let id = stage.id.clone();
        move |line: &str| {
            reporter.event(Event::Output {
                id: id.clone(),
                line: line.to_owned(),
            })
        }
    }

    fn chroot(&self, stage: &Stage, name: &str, body: &str) -> Result<()> {
        run_in_tree(&self.tree, &ChrootScript { name, body }, &self.log, self.sink(stage))
    }

    fn stage(
        &mut self,
        stage: &Stage,
        out_dir: &Path,
        ovh: &mut OvhState,
        artifacts: &mut Vec<PathBuf>,
        manifest_doc: &mut Option<Manifest>,
    ) -> Result<String> {
        use crate::plan::StageKind::*;
        let plan = self.plan;
        match stage.kind {
            Bootstrap => {
                let scratch = self.work.join("sources");
                std::fs::create_dir_all(&scratch)?;
                for extra in &plan.bootstrap.extra_sources {
                    std::fs::write(scratch.join(format!("{}.sources", extra.name)), &extra.deb822)?;
                }
                let args = crate::bootstrap::mmdebstrap_args(&plan.bootstrap, &self.tree, &scratch);
                let tmp = self.work.join("tmp");
                std::fs::create_dir_all(&tmp)?;
                // In a private mount namespace, so that no mount mmdebstrap
                // makes in the tree can outlive it, even if it is killed; its
                // temporary files go to the work directory for the same reason.
                Cmd::new("unshare")
                    .args([
                        "--mount",
                        "--propagation",
                        "private",
                        "--fork",
                        "--kill-child",
                        "--",
                        "mmdebstrap",
                    ])
                    .args(&args)
                    .env("TMPDIR", &tmp)
                    .log_to(&self.log)
                    .on_line(self.sink(stage))
                    .run()
                    .context("bootstrapping the root tree with mmdebstrap")?;
                Ok(format!("{} packages requested", plan.bootstrap.include.len()))
            }
            Customise => {
                customise::stage_files(&plan.spec, &plan.spec_dir, &self.tree)?;
                let script = customise::configure_script(&plan.spec, &plan.datasources);
                self.chroot(stage, "the spec's customisations", &script)?;
                for (i, step) in plan.spec.run.iter().enumerate() {
                    let name = format!("[[run]] {}", run_name(step, i));
                    let body = match (&step.script, &step.file) {
                        (Some(s), _) => s.clone(),
                        (None, Some(f)) => {
                            std::fs::read_to_string(plan.spec_dir.join(f)).with_context(|| format!("reading {f}"))?
                        }
                        (None, None) => bail!("{name} has neither `script` nor `file`"),
                    };
                    self.reporter.event(Event::Output {
                        id: stage.id.clone(),
                        line: format!("kiln: {name}"),
                    });
                    self.chroot(stage, &name, &body)?;
                }
                Ok(format!("{} run steps", plan.spec.run.len()))
            }
            Finalise => {
                let o = ovh_plan(plan)?;
                ovh_byol::install_script(&self.tree, o)?;
                self.chroot(stage, "ovh-byol finalisation", &ovh_byol::finalise_script(o))?;
                ovh.packages = manifest::installed_packages(&self.tree)?;
                let embedded = Manifest::new(plan, manifest::git_info(&plan.spec_dir), ovh.packages.clone());
                write_mode(
                    &self.tree.join(ovh_byol::EMBEDDED_MANIFEST.trim_start_matches('/')),
                    &serde_json::to_string_pretty(&embedded)?,
                    0o644,
                )?;
                self.chroot(stage, "cleanup", ovh_byol::CLEANUP_SCRIPT)?;
                ovh_byol::reset_host_files(&self.tree, plan.spec.hostname.as_deref())?;
                *manifest_doc = Some(embedded);
                Ok(format!("{} packages installed", ovh.packages.len()))
            }
            Filesystem => {
                let o = ovh_plan(plan)?;
                let content = kiln_disk::mkfs::tree_size(&self.tree).context("measuring the root tree")?;
                let fs_size = match o.size {
                    Some(s) => {
                        if s < content {
                            bail!(
                                "[targets.ovh-byol] size = {} MiB is smaller than the content ({} MiB); raise it or use \"auto\"",
                                s >> 20,
                                content.div_ceil(1 << 20)
                            );
                        }
                        s
                    }
                    None => o.target.resolved_size(content),
                };
                let fs_offset = 1 << 20;
                // 1 MiB in front for the table, 1 MiB behind for the GPT backup.
                let disk_size = fs_offset + fs_size + (1 << 20);
                let disk = self.work.join("disk.raw");
                std::fs::File::create(&disk)?.set_len(disk_size)?;
                let uuid = derived_uuid(plan, "root filesystem");
                let fs_opts = kiln_disk::mkfs::FsOptions {
                    uuid,
                    label: "root".to_owned(),
                    ..Default::default()
                };
                match o.filesystem {
                    kiln_spec::Filesystem::Ext4 => {
                        kiln_disk::mkfs::make_ext4(&disk, fs_offset, fs_size, &self.tree, &fs_opts)
                    }
                    kiln_spec::Filesystem::Xfs => {
                        kiln_disk::mkfs::make_xfs(&disk, fs_offset, fs_size, &self.tree, &fs_opts)
                    }
                }
                .context("creating the root filesystem")?;
                ovh.disk = Some(disk);
                ovh.fs_offset = fs_offset;
                ovh.fs_size = fs_size;
                ovh.fs_uuid = Some(uuid);
                Ok(format!(
                    "{} MiB of content in a {} MiB filesystem",
                    content >> 20,
                    fs_size >> 20
                ))
            }
            Disk => {
                let o = ovh_plan(plan)?;
                let disk = ovh.disk.clone().context("the filesystem stage made no disk")?;
                let disk_size = std::fs::metadata(&disk)?.len();
                let table = match o.partition_table {
                    PartitionTable::Gpt => TableKind::Gpt,
                    PartitionTable::Mbr => TableKind::Mbr,
                };
                let layout = partition::layout(
                    disk_size,
                    table,
                    &[PartitionSpec {
                        kind: PartKind::LinuxFs,
                        size: ovh.fs_size,
                        name: "root".to_owned(),
                        guid: derived_uuid(plan, "root partition"),
                    }],
                )?;
                if layout.partitions[0].start != ovh.fs_offset {
                    bail!(
                        "internal: partition placed at {} but the filesystem is at {}",
                        layout.partitions[0].start,
                        ovh.fs_offset
                    );
                }
                partition::write_partition_table(&disk, &layout, derived_uuid(plan, "disk"))?;
                ovh.layout = Some(layout);
                Ok(format!(
                    "{}, 1 partition",
                    if table == TableKind::Gpt { "GPT" } else { "MBR" }
                ))
            }
            Convert => {
                let o = ovh_plan(plan)?;
                let disk = ovh.disk.clone().context("the filesystem stage made no disk")?;
                let part = PartialFile::new(out_dir.join(&o.file_name));
                let mut cmd = Cmd::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]);
                if o.compress {
                    cmd = cmd.arg("-c");
                }
                cmd.arg(&disk)
                    .arg(part.path())
                    .log_to(&self.log)
                    .run()
                    .context("converting the disk to qcow2")?;
                let size = std::fs::metadata(part.path())?.len();
                ovh.output = Some(part);
                Ok(format!("{} MiB", size >> 20))
            }
            Checksums => {
                let mut doc = manifest_doc.take().context("no manifest from the finalise stage")?;
                let mut sums = String::new();
                let mut pending = Vec::new();
                if let (Some(o), Some(output)) = (&plan.ovh_byol, ovh.output.take()) {
                    let sha = sha512_file(output.path())?;
                    let size = std::fs::metadata(output.path())?.len();
                    let line = format!("{sha}  {}\n", o.file_name);
                    sums.push_str(&line);
                    let side = PartialFile::new(out_dir.join(format!("{}.sha512", o.file_name)));
                    side.write_all(line.as_bytes())?;
                    doc.artifacts.push(Artifact {
                        target: "ovh-byol".to_owned(),
                        path: o.file_name.clone(),
                        format: "qcow2".to_owned(),
                        size,
                        sha512: sha.clone(),
                    });
                    if let Some(layout) = &ovh.layout {
                        doc.partitions = layout
                            .partitions
                            .iter()
                            .map(|p| PartitionInfo {
                                index: p.index,
                                start: p.start,
                                size: p.size,
                                filesystem: match o.filesystem {
                                    kiln_spec::Filesystem::Ext4 => "ext4".to_owned(),
                                    kiln_spec::Filesystem::Xfs => "xfs".to_owned(),
                                },
                                uuid: ovh.fs_uuid.map(|u| u.to_string()).unwrap_or_default(),
                                partition_table: format!("{:?}", layout.table).to_lowercase(),
                            })
                            .collect();
                    }
                    doc.ovh_reinstall = Some(manifest::ovh_reinstall_template(
                        &o.efi_bootloader_path,
                        &sha,
                        &o.file_name,
                    ));
                    pending.push(output);
                    pending.push(side);
                }
                let sums_file = PartialFile::new(out_dir.join("SHA512SUMS"));
                sums_file.write_all(sums.as_bytes())?;
                let manifest_file = PartialFile::new(out_dir.join("manifest.json"));
                manifest_file.write_all(serde_json::to_string_pretty(&doc)?.as_bytes())?;
                pending.push(sums_file);
                pending.push(manifest_file);
                // Images first, manifest last: whatever is visible is complete.
                for p in pending {
                    let dest = p.commit()?;
                    if dest.extension().is_some_and(|e| e == "qcow2") {
                        artifacts.push(dest);
                    }
                }
                Ok(format!("{} artifacts", artifacts.len()))
            }
        }
    }
}

fn ovh_plan(plan: &Plan) -> Result<&OvhByolPlan> {
    plan.ovh_byol
        .as_ref()
        .context("internal: ovh-byol stage without an ovh-byol target")
}

/// A UUID derived from the spec hash, so rebuilding the same spec gives the
/// same filesystem and partition identifiers.
fn derived_uuid(plan: &Plan, what: &str) -> uuid::Uuid {
    let h = Hasher::new("uuid")
        .hash("spec", &plan.spec_hash)
        .str("what", what)
        .finish();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&h.bytes()[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

fn sha512_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha512::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("hashing {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}
