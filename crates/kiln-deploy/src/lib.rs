//! Deploying images. Today: OVHcloud's Bring Your Own Linux installer,
//! replayed locally against virtual disks (`kiln deploy ovh --simulate`).
//! The OVH API client and publishing come later beside it.

pub mod ovh;
