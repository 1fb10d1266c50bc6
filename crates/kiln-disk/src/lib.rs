//! Disk images: partition tables (GPT/MBR), qcow2 reading, filesystem
//! assembly and read-only inspection. This crate never spawns a chroot.
//!
//! Writing: [`layout`] places partitions, [`make_ext4`] / [`make_xfs`] build
//! filesystems in place inside the disk file, [`write_partition_table`]
//! writes the GPT or MBR, and [`write_qcow2`] turns the finished raw disk
//! into a compressed qcow2, deterministically and on several threads.
//! Reading: [`DiskImage`] opens raw or qcow2 files,
//! [`read_partition_table`] and [`probe_filesystem`] find what is on them,
//! [`open_filesystem`] gives a [`FsRead`] over ext4 or XFS without mounting,
//! [`isoread`] reads ISO 9660 images and their El Torito catalog,
//! [`fatread`] FAT filesystems, [`initramfs`] the cpio archives of an
//! initramfs and [`squashfs`] a live root (through `unsquashfs`), and
//! [`inspect`] puts it all together.
//! [`first_difference`] names what differs between two images.

mod compare;
mod dpkg;
mod error;
pub mod ext4_patch;
pub mod fat;
pub mod fatread;
mod fsread;
pub mod grub;
mod image;
pub mod initramfs;
pub mod inspect;
pub mod iso;
pub mod iso_inspect;
pub mod isoread;
pub mod mkfs;
pub mod partition;
mod probe;
mod qcow2;
mod qcow2_write;
pub mod squashfs;
mod table;

pub use compare::{first_difference, Difference, FileDifference, Region};
pub use dpkg::{installed_packages, Package};
pub use error::{Error, ErrorKind, Result};
pub use fsread::{open_filesystem, FileKind, FileMeta, FsRead};
pub use image::{DiskImage, Format};
pub use inspect::{inspect, Inspection, RootInfo, Volume, MANIFEST_PATH};
pub use iso_inspect::{inspect_iso, IsoInspection};
pub use mkfs::{make_ext4, make_xfs, tree_size, FsOptions};
pub use partition::{
    layout, mbr_signature, write_partition_table, Layout, PartKind, PartitionSpec, PlacedPartition, TableKind,
    ALIGNMENT, SECTOR,
};
pub use probe::{probe_filesystem, FsInfo, FsType};
pub use qcow2::{Compression, Qcow2Header};
pub use qcow2_write::{write_qcow2, ClusterIndex, Qcow2WriteOptions, Qcow2WriteStats, ReuseSource};
pub use table::{read_partition_table, PartType, Partition, PartitionTable};

#[cfg(test)]
mod testutil;
