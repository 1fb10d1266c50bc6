//! Target `ovh-byol`: an OVHcloud Bring Your Own Linux image (reference §7).

pub mod check;
pub mod script;
