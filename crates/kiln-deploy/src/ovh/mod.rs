//! OVHcloud: the `storage` layout of the reinstall API and the local replay
//! of the BYOLinux installer.

pub mod simulate;
pub mod storage;
