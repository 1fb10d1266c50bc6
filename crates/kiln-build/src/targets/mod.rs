//! Targets: what turns the customised tree into a deliverable. Each target
//! kind is one module behind the [`Target`] trait and one line of
//! [`REGISTRY`]; the planner and the executor know targets only through
//! them, so a new kind touches its module, that line and its spec section.
//!
//! A target owns, after customisation: the packages and cloud-init
//! datasources it needs in the tree, its finalisation of the tree (a cached
//! layer of its own), the steps that assemble its artifact from a read-only
//! view of the finalised tree, the artifact's file name and format, what it
//! adds to the manifest, and optionally a contract that `kiln check
//! --target NAME` applies to finished images. An artifact need not be a
//! partitioned disk, and a target may consume the artifacts of others
//! ([`Target::consumes`]).

pub mod ami;
pub mod contract;
pub mod disk;
pub mod iso;
pub mod ovh_byol;
pub mod security;
pub mod tar;
pub mod usb_installer;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use kiln_spec::Spec;

use crate::distro::DistroFamily;
use crate::plan::StageInput;

/// Every target kind kiln knows, in build order. Adding a kind is one line
/// here (and its module and its `[targets.NAME]` section in kiln-spec).
pub const REGISTRY: &[TargetKind] = &[
    ovh_byol::KIND,
    disk::KIND,
    iso::KIND,
    ami::KIND,
    tar::KIND,
    usb_installer::KIND,
];

/// A target kind: how the spec's section becomes a planned [`Target`], and
/// the contract its images must meet.
pub struct TargetKind {
    /// The name under `[targets.NAME]`, in stage ids and in the manifest.
    pub name: &'static str,
    /// The planned target for the spec's section; `None` when the spec has
    /// no such section.
    pub resolve: Resolve,
    /// The contract `kiln check --target NAME` applies to an image.
    pub check: Option<ContractCheck>,
}

/// Plans a target from the spec; `None` when the spec has no section for it.
pub type Resolve = fn(&TargetInputs) -> Result<Option<Arc<dyn Target>>>;

/// Checks an image file against a target's contract, rule by rule.
pub type ContractCheck = fn(&Path, &CheckOptions) -> Result<Vec<RuleResult>>;

pub use contract::{CheckOptions, RuleResult};

/// The kind named `name`.
pub fn kind(name: &str) -> Option<&'static TargetKind> {
    REGISTRY.iter().find(|k| k.name == name)
}

/// The kinds with a contract check, for `kiln check --target`.
pub fn checkable() -> impl Iterator<Item = &'static TargetKind> {
    REGISTRY.iter().filter(|k| k.check.is_some())
}

/// What a target is resolved from at plan time.
pub struct TargetInputs<'a> {
    pub spec: &'a Spec,
    pub family: &'static dyn DistroFamily,
    pub source_date_epoch: Option<u64>,
    /// The spec file's directory, which the spec's relative paths name.
    pub dir: &'a Path,
}

/// One stage a target adds after customisation.
#[derive(Debug, Clone)]
pub struct TargetStage {
    /// The stage's name after `<target>/`, e.g. `filesystem`; it also names
    /// the domain of the stage's hash.
    pub name: &'static str,
    /// What the stage will do, for `kiln plan`.
    pub actions: Vec<String>,
    /// What its output depends on besides the stages before it.
    pub inputs: Vec<StageInput>,
}

/// The stages of one target, in order.
#[derive(Debug, Clone)]
pub struct TargetStages {
    /// Changes the tree for this target only; its layer is cached.
    pub finalise: TargetStage,
    /// Build the artifact from a read-only view of the finalised tree (which
    /// also holds the embedded manifest), sharing an [`Assembly`].
    pub assemble: Vec<TargetStage>,
    /// Writes the artifact file from the assembly.
    pub output: TargetStage,
}

/// The file a target produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactSpec {
    /// File name in the output directory.
    pub file_name: String,
    pub format: ImageFormat,
    /// Compress the clusters (qcow2 only).
    pub compress: bool,
}

/// Formats of artifact files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Raw,
    Qcow2,
    /// VMware's streamOptimized VMDK.
    Vmdk,
    /// A fixed VHD, whose virtual size is exactly the raw disk's.
    Vhd,
    /// An ISO 9660 image, written as assembled.
    Iso,
    /// A tarball of the root tree (compressed or not), written as assembled.
    Tar,
}

impl ImageFormat {
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Vmdk => "vmdk",
            ImageFormat::Vhd => "vhd",
            ImageFormat::Iso => "iso",
            ImageFormat::Tar => "tar",
        }
    }

    /// qemu-img's `-O` format and `-o` options for this format.
    fn qemu_img(self) -> (&'static str, Option<&'static str>) {
        match self {
            ImageFormat::Raw | ImageFormat::Iso | ImageFormat::Tar => ("raw", None),
            ImageFormat::Qcow2 => ("qcow2", None),
            ImageFormat::Vmdk => ("vmdk", Some("subformat=streamOptimized")),
            // force_size: the disk's own size, not one rounded to a CHS
            // geometry; Azure wants whole MiB, which kiln's disks are.
            ImageFormat::Vhd => ("vpc", Some("subformat=fixed,force_size=on")),
        }
    }
}

/// A target as planned from the spec.
pub trait Target: Send + Sync + Debug {
    /// The kind's name, as in [`TargetKind::name`].
    fn name(&self) -> &'static str;
    /// Packages the bootstrap installs for this target (besides the
    /// kernel and the spec's own).
    fn packages(&self) -> Vec<String>;
    /// Packages whose archives the image keeps instead of installing, and
    /// the directory in the image that holds them.
    fn kept_packages(&self) -> Option<(&'static str, Vec<String>)> {
        None
    }
    /// cloud-init datasources the target needs when the spec names none.
    fn datasources(&self) -> &'static [&'static str];
    /// External programs the target's stages run.
    fn tools(&self) -> Vec<&'static str>;
    /// The stages after customisation; `tools` holds the versions of the
    /// tools that shape their output.
    fn stages(&self, spec: &Spec, tools: &BTreeMap<String, String>) -> TargetStages;
    /// Changes the tree for this target (run as [`TargetStages::finalise`]).
    fn finalise(&self, cx: &StageContext, tree: &Path) -> Result<()>;
    /// Runs assembly stage `stage` (one of [`TargetStages::assemble`])
    /// on the read-only `tree`, with `scratch` for files; returns a summary.
    fn assemble(
        &self,
        cx: &StageContext,
        stage: &str,
        tree: &Path,
        scratch: &Path,
        out: &mut Assembly,
    ) -> Result<String>;
    /// The artifact file the output stage writes from [`Assembly::raw`].
    fn artifact(&self) -> ArtifactSpec;
    /// The `efiBootloaderPath` of the manifest, when the target has one.
    fn efi_bootloader_path(&self) -> Option<String> {
        None
    }
    /// Top-level manifest entries for the finished artifact.
    fn manifest_extras(&self, _artifact: &crate::manifest::Artifact) -> Vec<(&'static str, serde_json::Value)> {
        Vec::new()
    }
    /// Targets whose artifacts this one needs ([`StageContext::consumed`]).
    fn consumes(&self) -> &'static [&'static str] {
        &[]
    }
    /// Whether the target's raw disk is kept after each build so that its
    /// next build can patch it ([`StageContext::previous_disk`]); the
    /// target's filesystem stage must then also write a fresh disk
    /// whenever it does not use that one.
    fn patches_previous_disk(&self) -> bool {
        false
    }
    /// What the target resolved to, for `kiln plan --json`.
    fn describe(&self) -> serde_json::Value;
}

/// What a target's stages can use besides the tree.
pub struct StageContext<'a> {
    pub spec: &'a Spec,
    pub family: &'static dyn DistroFamily,
    pub source_date_epoch: Option<u64>,
    /// Artifacts of the targets this one consumes, by target name.
    pub consumed: BTreeMap<&'static str, PathBuf>,
    /// The build's bootstrap, for targets that bootstrap a system of their
    /// own from the same release and sources.
    pub bootstrap: &'a crate::bootstrap::BootstrapRequest,
    /// The stage cache, for what a target caches under keys of its own.
    pub cache: &'a crate::cache::Cache,
    /// The build log, for the output of the tools a stage runs.
    pub log: Option<&'a Path>,
    pub(crate) chroot: &'a (dyn Fn(&Path, &str, &str) -> Result<()> + Sync),
    pub(crate) uuid: &'a (dyn Fn(&str) -> uuid::Uuid + Sync),
    /// The raw disk of this target's last image, when the target
    /// [patches it](Target::patches_previous_disk) and one is kept.
    pub previous_disk: Option<&'a crate::previous_disk::PreviousDisk>,
}

impl StageContext<'_> {
    /// Runs the shell script `body` in a chroot of `tree`; `name` is what
    /// progress and errors call it.
    pub fn chroot(&self, tree: &Path, name: &str, body: &str) -> Result<()> {
        (self.chroot)(tree, name, body)
    }

    /// A UUID derived from the spec and `what`, the same for every build of
    /// the same spec.
    pub fn derived_uuid(&self, what: &str) -> uuid::Uuid {
        (self.uuid)(what)
    }
}

/// What a target's assembly stages build up: a raw disk and what is on it.
#[derive(Debug, Default)]
pub struct Assembly {
    pub raw: Option<PathBuf>,
    pub layout: Option<kiln_disk::partition::Layout>,
    /// Filesystems by partition start: type and UUID, for the manifest.
    pub filesystems: BTreeMap<u64, (String, String)>,
}

/// Converts a raw disk into the output format, with qcow2 compression when
/// asked; `log` receives qemu-img's output. A VHD's raw disk must be whole
/// MiB (every kiln disk is), which the fixed VHD keeps as its size.
pub fn convert_image(
    raw: &std::path::Path,
    dest: &std::path::Path,
    format: ImageFormat,
    compress: bool,
    log: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    if format == ImageFormat::Vhd {
        let size = std::fs::metadata(raw)
            .with_context(|| format!("reading {}", raw.display()))?
            .len();
        anyhow::ensure!(
            size.is_multiple_of(1 << 20),
            "a VHD must be a whole number of MiB; {} has {size} bytes",
            raw.display()
        );
    }
    let (name, options) = format.qemu_img();
    let mut cmd = kiln_exec::Cmd::new("qemu-img").args(["convert", "-f", "raw", "-O", name]);
    if let Some(options) = options {
        cmd = cmd.args(["-o", options]);
    }
    if compress {
        cmd = cmd.arg("-c");
    }
    cmd = cmd.arg(raw).arg(dest);
    if let Some(log) = log {
        cmd = cmd.log_to(log);
    }
    cmd.run()
        .with_context(|| format!("converting the disk to {} ({})", format.name(), dest.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_the_spec_sections() {
        let names: Vec<&str> = REGISTRY.iter().map(|k| k.name).collect();
        assert_eq!(
            names,
            kiln_spec::Targets::KINDS,
            "a target kind without a spec section or vice versa"
        );
        assert!(kind("ovh-byol").is_some_and(|k| k.check.is_some()));
        assert!(kind("disk").is_some_and(|k| k.check.is_some()));
        assert!(kind("ami").is_some_and(|k| k.check.is_some()));
        assert!(kind("tar").is_some_and(|k| k.check.is_some()));
        assert!(kind("nope").is_none());
    }
}
