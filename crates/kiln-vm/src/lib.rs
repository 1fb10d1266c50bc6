//! Booting images: the QEMU runner, firmware selection, serial console
//! capture and verdicts, and cloud-init seeds (NoCloud, ConfigDrive). This
//! crate knows nothing about specs.

pub mod boot;
pub mod seed;
