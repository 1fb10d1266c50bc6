//! kiln's image spec: the TOML types, parsing with source spans, semantic
//! validation and the JSON Schema. This crate runs nothing.

pub mod model;

pub use model::*;
