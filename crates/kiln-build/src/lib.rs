//! The build: a graph of stages (bootstrap, customise, target finalisation,
//! filesystem, disk, convert, checksums) with content hashes, the bootstrap
//! backends, customisation in a chroot, and the targets.

pub mod archive;
pub mod bootstrap;
pub mod build;
pub mod cache;
pub mod chroot;
pub mod cleanup;
pub mod customise;
pub mod debug;
pub mod distro;
pub mod download;
pub mod hash;
pub mod import;
pub mod layers;
pub mod manifest;
pub mod names;
pub mod plan;
pub mod previous_disk;
pub mod release;
pub mod sbom;
pub mod sign;
pub mod targets;
pub mod verify;

pub use build::{build, stage_tree, BuildOptions, BuildOutput, Event, Quiet, Reporter, StageTree};
pub use debug::{Debugger, OnError, ShellOptions, StageFailure};
pub use plan::{plan, tool_versions, Plan, Stage, StageKind};
