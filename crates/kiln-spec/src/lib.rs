//! kiln's image spec: the TOML types, parsing with source spans, semantic
//! validation and the JSON Schema. This crate runs nothing: it reads the spec
//! and checks that the files it names exist, and that is all.
//!
//! [`load`] is the entry point. Every error it returns renders as
//! `file:line:col` with the offending line quoted and a hint
//! ([`SpecError`]'s `Display`), and carries the same data structured
//! ([`SpecError::diagnostics`]). [`LoadedSpec::check_names`] then checks
//! the names a spec borrows from elsewhere (release, packages, time zone,
//! locale) against a [`Catalog`] that the caller gathered.

mod decode;
mod diagnostic;
mod keys;
mod load;
pub mod model;
mod names;
mod netdata;
mod rules;
mod schema;
mod size;
mod spans;
mod validate;
mod vocab;

pub use diagnostic::{Diagnostic, DiagnosticKind, Related, SpecError};
pub use load::{load, parse_str, LoadedSpec};
pub use model::*;
pub use names::{package_name, spec_packages, Catalog, Names, Release};
pub use rules::parse_mode;
pub use schema::json_schema;
pub use size::{format_size, parse_size, FromSpecText, Headroom, Size, Written, GIB, KIB, MIB, TIB};
pub use validate::{
    MAX_DISK_SIZE, MAX_ESP_SIZE, MAX_PARTITION_SIZE, MIN_BASE_CONTENT, MIN_ESP_SIZE, MIN_XFS_SIZE, RHEL_RELEASES,
};
pub use vocab::{ChecksumType, UnknownName};
