//! Targets: what turns the customised tree into a deliverable (finalisation
//! of the tree, filesystem and disk layout, output format) and the contract
//! rules `kiln check` applies to a finished image.

pub mod disk;
pub mod ovh_byol;
