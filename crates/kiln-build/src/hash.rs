//! Content hashes of stage inputs. A stage's hash covers everything that can
//! change its output: its spec section (canonical JSON), the bytes of every
//! input file, the versions of the tools it runs, kiln's own version and its
//! parent's hash. The cache (keyed by these hashes) relies on that.

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// A SHA-256 content hash, shown as lower-case hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash([u8; 32]);

impl Hash {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, for display.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_owned()
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Hash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Hash(out))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.short())
    }
}

impl serde::Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

/// Builds a [`Hash`] from named fields. Each field is length-prefixed, so
/// `("ab","c")` and `("a","bc")` cannot collide.
#[derive(Clone)]
pub struct Hasher(Sha256);

impl Hasher {
    /// A hasher for the stage or object called `domain`.
    pub fn new(domain: &str) -> Self {
        let mut h = Hasher(Sha256::new());
        h.field("domain", domain.as_bytes());
        h
    }

    pub fn field(&mut self, name: &str, value: &[u8]) -> &mut Self {
        for part in [name.as_bytes(), value] {
            self.0.update((part.len() as u64).to_le_bytes());
            self.0.update(part);
        }
        self
    }

    pub fn str(&mut self, name: &str, value: &str) -> &mut Self {
        self.field(name, value.as_bytes())
    }

    /// Hashes a value through its canonical JSON form (serde_json keeps
    /// struct field order and kiln's maps are BTreeMaps, so it is stable).
    pub fn json(&mut self, name: &str, value: &impl serde::Serialize) -> &mut Self {
        let bytes = serde_json::to_vec(value).expect("spec values serialise to JSON");
        self.field(name, &bytes)
    }

    pub fn hash(&mut self, name: &str, value: &Hash) -> &mut Self {
        self.field(name, &value.0)
    }

    pub fn finish(&self) -> Hash {
        Hash(self.0.clone().finalize().into())
    }
}

/// Hashes a file's contents.
pub fn file_hash(path: &Path) -> std::io::Result<Hash> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(Hash(h.finalize().into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_length_prefixed() {
        let a = Hasher::new("t").str("x", "ab").str("y", "c").finish();
        let b = Hasher::new("t").str("x", "a").str("y", "bc").finish();
        assert_ne!(a, b);
    }

    #[test]
    fn domain_separates() {
        assert_ne!(Hasher::new("a").finish(), Hasher::new("b").finish());
        assert_eq!(
            Hasher::new("a").str("k", "v").finish(),
            Hasher::new("a").str("k", "v").finish()
        );
    }
}
