//! The executor: runs a [`Plan`]'s stages in order, reporting progress, and
//! writes the outputs atomically.
//!
//! Every side effect is owned by a guard: the work directory (root tree and
//! raw disk) is deleted on any exit, outputs are written as `*.part` and
//! renamed only once complete, and chroot mounts live in namespaces that die
//! with their process. A failed or interrupted build therefore leaves the
//! output directory as it was, plus the build log.

use std::collections::BTreeMap;
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
use crate::targets::disk;
use crate::targets::ovh_byol::{self, EMBEDDED_MANIFEST};

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
    if let Some(d) = &plan.disk {
        tools.extend(crate::targets::disk::required_tools(d));
    }
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
        out_dir,
        targets: BTreeMap::new(),
        artifacts: Vec::new(),
    };

    for stage in &plan.stages {
        kiln_exec::check_interrupted()?;
        let started = Instant::now();
        run.reporter.event(Event::StageStarted {
            id: stage.id.clone(),
            title: stage.kind.title().to_owned(),
        });
        match run.stage(stage) {
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
    Ok(BuildOutput {
        artifacts: run.artifacts,
        manifest: run.out_dir.join("manifest.json"),
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

/// What one target's stages hand to the next.
struct TargetState {
    /// The target's own copy of the customised tree.
    tree: PathBuf,
    /// The manifest embedded in the image (no artifacts yet).
    embedded: Manifest,
    /// The raw disk being assembled, in the work directory.
    disk: Option<PathBuf>,
    /// Filesystem offset, size and UUID inside `disk`.
    fs: Option<(u64, u64, uuid::Uuid)>,
    layout: Option<partition::Layout>,
    /// The finished image, not yet renamed into place.
    output: Option<(PartialFile, String)>,
}

struct Run<'a> {
    plan: &'a Plan,
    reporter: Arc<dyn Reporter>,
    log: PathBuf,
    /// The customised tree shared by all targets.
    tree: PathBuf,
    work: PathBuf,
    out_dir: PathBuf,
    targets: BTreeMap<String, TargetState>,
    artifacts: Vec<PathBuf>,
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

    fn chroot(&self, stage: &Stage, tree: &Path, name: &str, body: &str) -> Result<()> {
        run_in_tree(tree, &ChrootScript { name, body }, &self.log, self.sink(stage))
    }

    fn state(&mut self, target: &str) -> Result<&mut TargetState> {
        self.targets
            .get_mut(target)
            .with_context(|| format!("internal: no finalised tree for target {target}"))
    }

    fn stage(&mut self, stage: &Stage) -> Result<String> {
        use crate::plan::StageKind::*;
        let target = stage.target.as_deref().unwrap_or_default();
        match stage.kind {
            Bootstrap => self.bootstrap(stage),
            Customise => self.customise(stage),
            Finalise => self.finalise(stage, target),
            Filesystem => self.filesystem(target),
            Disk => self.disk(target),
            Convert => self.convert(target),
            Checksums => self.checksums(),
        }
    }

    fn bootstrap(&mut self, stage: &Stage) -> Result<String> {
        let plan = self.plan;
        let scratch = self.work.join("sources");
        std::fs::create_dir_all(&scratch)?;
        for extra in &plan.bootstrap.extra_sources {
            std::fs::write(scratch.join(format!("{}.sources", extra.name)), &extra.deb822)?;
        }
        let args = crate::bootstrap::mmdebstrap_args(&plan.bootstrap, &self.tree, &scratch);
        let tmp = self.work.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        // In a private mount namespace, so that no mount mmdebstrap makes in
        // the tree can outlive it, even if it is killed; its temporary files
        // go to the work directory for the same reason.
        Cmd::in_mount_namespace("mmdebstrap")
            .args(&args)
            .env("TMPDIR", &tmp)
            .log_to(&self.log)
            .on_line(self.sink(stage))
            .run()
            .context("bootstrapping the root tree with mmdebstrap")?;
        Ok(format!("{} packages requested", plan.bootstrap.include.len()))
    }

    fn customise(&mut self, stage: &Stage) -> Result<String> {
        let plan = self.plan;
        customise::stage_files(&plan.spec, &plan.spec_dir, &self.tree)?;
        let script = customise::configure_script(&plan.spec, &plan.datasources);
        self.chroot(stage, &self.tree, "the spec's customisations", &script)?;
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
            self.chroot(stage, &self.tree, &name, &body)?;
        }
        Ok(format!("{} run steps", plan.spec.run.len()))
    }

    /// The tree `target` finalises: the shared tree itself for the last
    /// target, a copy for the others (finalisation is target-specific).
    fn target_tree(&self, target: &str) -> Result<PathBuf> {
        let last = self.plan.target_names().last().copied();
        if last == Some(target) {
            return Ok(self.tree.clone());
        }
        let copy = self.work.join(format!("tree-{}", target.replace('/', "_")));
        Cmd::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(&self.tree)
            .arg(&copy)
            .run()
            .with_context(|| format!("copying the customised tree for target {target}"))?;
        Ok(copy)
    }

    fn finalise(&mut self, stage: &Stage, target: &str) -> Result<String> {
        let plan = self.plan;
        let tree = self.target_tree(target)?;
        match target {
            "ovh-byol" => {
                let o = ovh_plan(plan)?;
                ovh_byol::install_script(&tree, o)?;
                self.chroot(stage, &tree, "ovh-byol finalisation", &ovh_byol::finalise_script(o))?;
            }
            "disk" => {
                let d = disk_plan(plan)?;
                let ids = disk_ids(plan);
                self.chroot(
                    stage,
                    &tree,
                    "disk finalisation",
                    &disk::finalise_script(d, ids.root_fs, &ids.esp_uuid()),
                )?;
                disk::write_grub_cfg(&tree, d, ids.root_fs)?;
            }
            other => bail!("internal: no finalisation for target {other}"),
        }
        let packages = manifest::installed_packages(&tree)?;
        let count = packages.len();
        let embedded = Manifest::new(plan, manifest::git_info(&plan.spec_dir), packages);
        write_mode(
            &tree.join(EMBEDDED_MANIFEST.trim_start_matches('/')),
            &serde_json::to_string_pretty(&embedded)?,
            0o644,
        )?;
        self.chroot(stage, &tree, "cleanup", ovh_byol::CLEANUP_SCRIPT)?;
        ovh_byol::reset_host_files(&tree, plan.spec.hostname.as_deref())?;
        self.targets.insert(
            target.to_owned(),
            TargetState {
                tree,
                embedded,
                disk: None,
                fs: None,
                layout: None,
                output: None,
            },
        );
        Ok(format!("{count} packages installed"))
    }

    fn filesystem(&mut self, target: &str) -> Result<String> {
        let plan = self.plan;
        let work = self.work.clone();
        let state = self.state(target)?;
        match target {
            "ovh-byol" => {
                let o = ovh_plan(plan)?;
                let content = kiln_disk::mkfs::tree_size(&state.tree).context("measuring the root tree")?;
                let fs_size = match o.size {
                    Some(s) if s < content => bail!(
                        "[targets.ovh-byol] size = {} MiB is smaller than the content ({} MiB); raise it or use \"auto\"",
                        s >> 20,
                        content.div_ceil(1 << 20)
                    ),
                    Some(s) => s,
                    None => o.target.resolved_size(content),
                };
                let fs_offset = 1 << 20;
                // 1 MiB in front for the table, 1 MiB behind for the GPT backup.
                let disk_size = fs_offset + fs_size + (1 << 20);
                let disk = work.join(format!("{target}.raw"));
                std::fs::File::create(&disk)?.set_len(disk_size)?;
                let uuid = derived_uuid(plan, target, "root filesystem");
                let fs_opts = kiln_disk::mkfs::FsOptions {
                    uuid,
                    label: "root".to_owned(),
                    ..Default::default()
                };
                match o.filesystem {
                    kiln_spec::Filesystem::Ext4 => {
                        kiln_disk::mkfs::make_ext4(&disk, fs_offset, fs_size, &state.tree, &fs_opts)
                    }
                    kiln_spec::Filesystem::Xfs => {
                        kiln_disk::mkfs::make_xfs(&disk, fs_offset, fs_size, &state.tree, &fs_opts)
                    }
                }
                .context("creating the root filesystem")?;
                state.disk = Some(disk);
                state.fs = Some((fs_offset, fs_size, uuid));
                Ok(format!(
                    "{} MiB of content in a {} MiB filesystem",
                    content >> 20,
                    fs_size >> 20
                ))
            }
            other => bail!("internal: no filesystem stage for target {other}"),
        }
    }

    fn disk(&mut self, target: &str) -> Result<String> {
        let plan = self.plan;
        if target == "disk" {
            let d = disk_plan(plan)?;
            let ids = disk_ids(plan);
            let raw = self.work.join("disk.raw");
            let state = self.state(target)?;
            let content = kiln_disk::mkfs::tree_size(&state.tree).context("measuring the root tree")?;
            let geometry = disk::disk_geometry(d, content)?;
            std::fs::File::create(&raw)?.set_len(geometry.disk_size)?;
            let layout = disk::assemble(&raw, d, &state.tree, &ids)?;
            let root_start = layout
                .partitions
                .iter()
                .find(|p| p.index == disk::ROOT_PARTITION)
                .map(|p| p.start);
            state.fs = root_start.map(|start| (start, geometry.root_size, ids.root_fs));
            state.disk = Some(raw);
            state.layout = Some(layout);
            return Ok(format!(
                "{} MiB disk, {} MiB of content, GRUB for {}",
                geometry.disk_size >> 20,
                content >> 20,
                d.firmware
                    .iter()
                    .map(|f| format!("{f:?}").to_lowercase())
                    .collect::<Vec<_>>()
                    .join(" and ")
            ));
        }
        let state = self.state(target)?;
        let disk = state.disk.clone().context("the filesystem stage made no disk")?;
        match target {
            "ovh-byol" => {
                let o = ovh_plan(plan)?;
                let (fs_offset, fs_size, _) = state.fs.context("the filesystem stage made no filesystem")?;
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
                        size: fs_size,
                        name: "root".to_owned(),
                        guid: derived_uuid(plan, target, "root partition"),
                    }],
                )?;
                if layout.partitions[0].start != fs_offset {
                    bail!(
                        "internal: partition placed at {} but the filesystem is at {fs_offset}",
                        layout.partitions[0].start
                    );
                }
                partition::write_partition_table(&disk, &layout, derived_uuid(plan, target, "disk"))?;
                state.layout = Some(layout);
                Ok(format!(
                    "{}, 1 partition",
                    if table == TableKind::Gpt { "GPT" } else { "MBR" }
                ))
            }
            "disk" => unreachable!("handled above"),
            other => bail!("internal: no disk stage for target {other}"),
        }
    }

    fn convert(&mut self, target: &str) -> Result<String> {
        let plan = self.plan;
        let (file_name, format, compress) = match target {
            "ovh-byol" => {
                let o = ovh_plan(plan)?;
                (o.file_name.clone(), "qcow2", o.compress)
            }
            "disk" => {
                let d = disk_plan(plan)?;
                (d.file_name.clone(), d.format_name(), d.compress)
            }
            other => bail!("internal: no convert stage for target {other}"),
        };
        let log = self.log.clone();
        let part = PartialFile::new(self.out_dir.join(&file_name));
        let state = self.state(target)?;
        let disk = state.disk.clone().context("the filesystem stage made no disk")?;
        let mut cmd = Cmd::new("qemu-img").args(["convert", "-f", "raw", "-O", format]);
        if compress {
            cmd = cmd.arg("-c");
        }
        cmd.arg(&disk)
            .arg(part.path())
            .log_to(&log)
            .run()
            .context("converting the disk image")?;
        let size = std::fs::metadata(part.path())?.len();
        // The raw disk is no longer needed; free its space early.
        let _ = std::fs::remove_file(&disk);
        state.output = Some((part, format.to_owned()));
        Ok(format!("{file_name}, {} MiB", size >> 20))
    }

    fn checksums(&mut self) -> Result<String> {
        let plan = self.plan;
        let mut doc: Option<Manifest> = None;
        let mut sums = String::new();
        let mut pending = Vec::new();
        for (target, state) in std::mem::take(&mut self.targets) {
            let Some((output, format)) = state.output else { continue };
            let file_name = output
                .dest()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let sha = sha512_file(output.path())?;
            let size = std::fs::metadata(output.path())?.len();
            let line = format!("{sha}  {file_name}\n");
            sums.push_str(&line);
            let side = PartialFile::new(self.out_dir.join(format!("{file_name}.sha512")));
            side.write_all(line.as_bytes())?;
            let doc = doc.get_or_insert_with(|| state.embedded.clone());
            doc.artifacts.push(Artifact {
                target: target.clone(),
                path: file_name.clone(),
                format,
                size,
                sha512: sha.clone(),
            });
            if let Some(layout) = &state.layout {
                let (fs_offset, _, uuid) = state.fs.unwrap_or((0, 0, uuid::Uuid::nil()));
                doc.partitions.extend(layout.partitions.iter().map(|p| PartitionInfo {
                    target: target.clone(),
                    index: p.index,
                    start: p.start,
                    size: p.size,
                    filesystem: if p.start == fs_offset {
                        root_fs_name(plan, &target)
                    } else if p.kind == PartKind::Esp {
                        "vfat".to_owned()
                    } else {
                        String::new()
                    },
                    uuid: if p.start == fs_offset {
                        uuid.to_string()
                    } else if p.kind == PartKind::Esp {
                        disk_ids(plan).esp_uuid()
                    } else {
                        String::new()
                    },
                    partition_table: format!("{:?}", layout.table).to_lowercase(),
                }));
            }
            if target == "ovh-byol" {
                let o = ovh_plan(plan)?;
                doc.ovh_reinstall = Some(manifest::ovh_reinstall_template(
                    &o.efi_bootloader_path,
                    &sha,
                    &file_name,
                ));
            }
            pending.push(output);
            pending.push(side);
        }
        let doc = doc.context("internal: no target produced an image")?;
        let sums_file = PartialFile::new(self.out_dir.join("SHA512SUMS"));
        sums_file.write_all(sums.as_bytes())?;
        let manifest_file = PartialFile::new(self.out_dir.join("manifest.json"));
        manifest_file.write_all(serde_json::to_string_pretty(&doc)?.as_bytes())?;
        pending.push(sums_file);
        pending.push(manifest_file);
        // Images first, manifest last: whatever is visible is complete.
        for p in pending {
            let is_image = !p.dest().to_string_lossy().ends_with(".sha512")
                && p.dest()
                    .file_name()
                    .is_some_and(|n| n != "SHA512SUMS" && n != "manifest.json");
            let dest = p.commit()?;
            if is_image {
                self.artifacts.push(dest);
            }
        }
        Ok(format!("{} artifacts", self.artifacts.len()))
    }
}

fn disk_plan(plan: &Plan) -> Result<&crate::targets::disk::DiskPlan> {
    plan.disk.as_ref().context("internal: disk stage without a disk target")
}

fn disk_ids(plan: &Plan) -> disk::DiskIds {
    disk::DiskIds::derive(|what| derived_uuid(plan, "disk", what))
}

fn root_fs_name(plan: &Plan, target: &str) -> String {
    match (target, &plan.ovh_byol) {
        ("ovh-byol", Some(o)) => match o.filesystem {
            kiln_spec::Filesystem::Ext4 => "ext4".to_owned(),
            kiln_spec::Filesystem::Xfs => "xfs".to_owned(),
        },
        _ => "ext4".to_owned(),
    }
}

fn ovh_plan(plan: &Plan) -> Result<&OvhByolPlan> {
    plan.ovh_byol
        .as_ref()
        .context("internal: ovh-byol stage without an ovh-byol target")
}

/// A UUID derived from the spec hash, so rebuilding the same spec gives the
/// same filesystem and partition identifiers.
fn derived_uuid(plan: &Plan, target: &str, what: &str) -> uuid::Uuid {
    let h = Hasher::new("uuid")
        .hash("spec", &plan.spec_hash)
        .str("target", target)
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
