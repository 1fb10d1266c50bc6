//! Deploying images. OVHcloud's Bring Your Own Linux installer, replayed
//! locally against virtual disks (`kiln deploy ovh --simulate`) and through
//! OVH's API itself (`kiln deploy ovh SERVICE_NAME`); hosting a build's
//! artifacts over HTTP (`kiln serve`); pushing them to and pulling them from
//! an OCI registry as an ORAS artifact (`kiln publish oci`, `kiln pull`); and
//! publishing to AWS as an AMI (`kiln publish aws`, feature `aws`, on by
//! default).

#[cfg(feature = "aws")]
pub mod aws;
pub mod oci;
pub mod ovh;
pub mod serve;
