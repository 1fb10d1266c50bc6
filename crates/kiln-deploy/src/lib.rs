//! Deploying images. OVHcloud's Bring Your Own Linux installer, replayed
//! locally against virtual disks (`kiln deploy ovh --simulate`), and
//! publishing to AWS as an AMI (`kiln publish aws`, feature `aws`, on by
//! default). The OVH API client comes later beside them.

#[cfg(feature = "aws")]
pub mod aws;
pub mod ovh;
