//! `kiln deploy ovh --simulate`: OVHcloud's BYOLinux installer replayed
//! locally (reference §1.3–1.4) inside a throwaway rescue VM with empty
//! virtual disks, then the first boot of the result with the server's
//! firmware and no NVRAM boot entry, judged from the serial console.

pub mod http;
pub mod job;
pub mod probe;
pub mod rescue;
mod run;

pub use run::{
    checksum_file, image_route, simulate, startup_nsh, InstallFailed, Progress, Report, SimulateOptions, StepTime,
    IMAGE_SERVER_ADDR, IMAGE_SERVER_PORT,
};

/// The installer run inside the rescue VM.
pub const INSTALLER: &str = include_str!("installer.sh");
