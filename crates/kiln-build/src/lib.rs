//! The build: a graph of stages (bootstrap, customise, target finalisation,
//! filesystem, disk, convert, checksums) with content hashes, the bootstrap
//! backends, customisation in a chroot, and the targets.

pub mod targets;
