//! Booting images: the QEMU runner, firmware selection, serial console
//! capture and verdicts, and cloud-init seeds (NoCloud, ConfigDrive). This
//! crate knows nothing about specs.

pub mod accel;
pub mod boot;
pub mod console;
pub mod error;
pub mod firmware;
pub mod network;
pub mod qemu;
pub mod seed;

pub use accel::{choose_accel, Accel, AccelChoice};
pub use error::VmError;
pub use firmware::Firmware;
pub use network::{GuestForward, HostForward, Isolated, Network, Subnet};
pub use qemu::{DirectBoot, Drive, DriveMode, ImageFormat, Interface, Vm, VmConfig, VmExit};
