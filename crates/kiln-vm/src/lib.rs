//! Booting images: the QEMU runner, firmware selection, serial console
//! capture and verdicts, cloud-init seeds (NoCloud, ConfigDrive) and a
//! local EC2 metadata service, and sessions for a person (the console on
//! the terminal, SSH). This crate knows nothing about specs.

pub mod accel;
pub mod boot;
pub mod console;
pub mod error;
pub mod firmware;
pub mod imds;
pub mod network;
pub mod qemu;
pub mod seed;
pub mod session;

pub use accel::{choose_accel, Accel, AccelChoice};
pub use error::VmError;
pub use firmware::Firmware;
pub use imds::{ImdsLog, ImdsServer, Instance};
pub use network::{GuestForward, HostForward, Isolated, Mac, Network, Subnet};
pub use qemu::{DirectBoot, Drive, DriveMode, ImageFormat, Interface, Smbios, Vm, VmConfig, VmExit};
