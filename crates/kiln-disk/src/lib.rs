//! Disk images: partition tables (GPT/MBR), qcow2 reading, filesystem
//! assembly and read-only inspection. This crate never spawns a chroot.
