//! Deploying images. OVHcloud's Bring Your Own Linux installer, replayed
//! locally against virtual disks (`kiln deploy ovh --simulate`), and
//! publishing to AWS as an AMI (`kiln publish aws`, feature `aws`, on by
//! default), and OVH's API itself (`kiln deploy ovh SERVICE_NAME`).

#[cfg(feature = "aws")]
pub mod aws;
pub mod ovh;
