//! Publishing to AWS (`kiln publish aws`): a raw disk image becomes an EBS
//! snapshot through the EBS direct APIs, then an AMI registered with EC2,
//! and the ids go into the build's manifest. A small client of its own
//! (SigV4 from AWS's `aws-sigv4` crate, ureq, roxmltree) rather than the
//! AWS SDK: seven calls do not justify the SDK's compile time (see the
//! workspace Cargo.toml). Non-goals: S3 upload and ImportSnapshot, copying
//! AMIs between regions, sharing them, encrypted snapshots.

pub mod blocks;
pub mod client;
pub mod config;
pub mod ebs;
pub mod ec2;
pub mod manifest;
pub mod publish;

pub use publish::{prepare, Prepared, Progress, PublishOptions, Published, Refused};
