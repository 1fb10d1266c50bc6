//! OVHcloud: the reinstall API (`api`), the `storage` layout it takes, and
//! the local replay of the BYOLinux installer.

pub mod api;
pub mod simulate;
pub mod storage;
