//! The small closed vocabularies that several crates and the command line
//! share, each spelled one way everywhere: [`Firmware`] (defined with the
//! spec's types, which it is part of) and [`ChecksumType`]. Each has its
//! list of values, its name, `Display` and `FromStr`, so that the CLI can
//! offer exactly these names without this crate knowing about clap.
//! Non-goals: computing checksums (kiln-deploy and kiln-build do that).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::Firmware;

/// A name that is not one of a vocabulary's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {given:?}: expected one of {}", expected.join(", "))]
pub struct UnknownName {
    pub what: &'static str,
    pub given: String,
    pub expected: Vec<&'static str>,
}

fn parse_name<T: Copy>(
    what: &'static str,
    all: &[T],
    name: fn(T) -> &'static str,
    given: &str,
) -> Result<T, UnknownName> {
    all.iter()
        .copied()
        .find(|&v| name(v) == given)
        .ok_or_else(|| UnknownName {
            what,
            given: given.to_owned(),
            expected: all.iter().map(|&v| name(v)).collect(),
        })
}

impl Firmware {
    /// Every firmware, in the order they are listed to users.
    pub const ALL: [Firmware; 2] = [Firmware::Bios, Firmware::Uefi];

    /// The name in specs, on the command line and in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

impl fmt::Display for Firmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Firmware {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, UnknownName> {
        parse_name("firmware", &Firmware::ALL, Firmware::name, s)
    }
}

/// A digest of an image file, named as OVHcloud's API takes it in
/// `imageCheckSumType` (and as `<name>sum` is called in coreutils).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumType {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl ChecksumType {
    /// Every checksum type, weakest first.
    pub const ALL: [ChecksumType; 4] = [
        ChecksumType::Md5,
        ChecksumType::Sha1,
        ChecksumType::Sha256,
        ChecksumType::Sha512,
    ];

    /// The API's name for it, which is also the prefix of its coreutils tool.
    pub fn name(self) -> &'static str {
        match self {
            ChecksumType::Md5 => "md5",
            ChecksumType::Sha1 => "sha1",
            ChecksumType::Sha256 => "sha256",
            ChecksumType::Sha512 => "sha512",
        }
    }
}

impl fmt::Display for ChecksumType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ChecksumType {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, UnknownName> {
        parse_name("checksum type", &ChecksumType::ALL, ChecksumType::name, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_str_and_serde() {
        for f in Firmware::ALL {
            assert_eq!(f.name().parse::<Firmware>(), Ok(f));
            assert_eq!(serde_json::to_value(f).unwrap(), f.name());
        }
        for c in ChecksumType::ALL {
            assert_eq!(c.to_string().parse::<ChecksumType>(), Ok(c));
            assert_eq!(serde_json::to_value(c).unwrap(), c.name());
        }
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let err = "sha384".parse::<ChecksumType>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown checksum type \"sha384\": expected one of md5, sha1, sha256, sha512"
        );
        let err = "UEFI".parse::<Firmware>().unwrap_err();
        assert_eq!(err.to_string(), "unknown firmware \"UEFI\": expected one of bios, uefi");
    }
}
