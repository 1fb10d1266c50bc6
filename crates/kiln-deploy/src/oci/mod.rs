//! OCI artifacts: `kiln publish oci` pushes a build's image to a registry
//! the way OVHcloud's image CI does with `oras push` (an OCI image
//! manifest of artifact type `application/vnd.ovh.byolinux.image.v1`, the
//! empty config, the image, its `.sha512` and kiln's `manifest.json` as
//! layers named by `org.opencontainers.image.title`, so `oras pull`
//! restores the files), and `kiln pull` fetches such an artifact back and
//! verifies it.
//!
//! The client speaks the OCI distribution spec over ureq: blobs are
//! uploaded in chunks (POST, PATCH with `Content-Range`, PUT with the
//! digest), skipped when the registry has them, and a broken upload is
//! resumed from where the registry says it stands (or restarted when the
//! registry has dropped it). The manifest is pushed only after every blob
//! is verified present, so a failed push publishes nothing. Credentials
//! come from `--username`/`--password-stdin` or `~/.docker/config.json`,
//! and both Basic and Bearer-token challenges are answered.
//! Non-goals: credential helpers (`credsStore`), image indexes and
//! multi-platform images, referrers, cross-repository blob mounts,
//! deleting what a tag pointed to before `--force`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

pub mod client;
pub mod pull;
pub mod push;

pub use client::{Credentials, Registry, RegistryOptions};
pub use pull::{pull, PullOptions, Pulled};
pub use push::{push, PushOptions, Pushed};

/// The artifact type of OVHcloud's BYOLinux images.
pub const ARTIFACT_TYPE: &str = "application/vnd.ovh.byolinux.image.v1";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// What a tag may point to: asked for all, so that a tag holding an image
/// (not an artifact) is still seen to exist.
pub const ACCEPT_ANY_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The empty config's content, `{}`.
pub const EMPTY_CONFIG: &[u8] = b"{}";
pub const IMAGE_MEDIA_TYPE: &str = "application/octet-stream";
pub const SIDECAR_MEDIA_TYPE: &str = "text/plain";
pub const BUILD_MANIFEST_MEDIA_TYPE: &str = "application/json";
/// The annotation `oras pull` names each layer's file by.
pub const TITLE: &str = "org.opencontainers.image.title";
pub const CREATED: &str = "org.opencontainers.image.created";

/// `REGISTRY/REPOSITORY:TAG` (or `@sha256:…` for pulls).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// As written: `127.0.0.1:5000`, `ghcr.io`, `docker.io`.
    pub registry: String,
    pub repository: String,
    /// A tag or a `sha256:` digest.
    pub reference: String,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sep = if self.is_digest() { '@' } else { ':' };
        write!(f, "{}/{}{sep}{}", self.registry, self.repository, self.reference)
    }
}

impl Reference {
    /// Parses `REGISTRY/REPO:TAG` or `REGISTRY/REPO@sha256:HEX`. The
    /// registry must be named (a host with a dot or a port, or `localhost`):
    /// kiln does not guess Docker Hub.
    pub fn parse(s: &str) -> Result<Reference, String> {
        let hint = "expected REGISTRY/REPOSITORY:TAG, e.g. registry.example.com/images/debian-12-byol:1.0.0";
        let (registry, rest) = s.split_once('/').ok_or_else(|| format!("{s:?}: no registry; {hint}"))?;
        if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
            return Err(format!(
                "{s:?}: {registry:?} is not a registry host (it needs a dot or a port, or is localhost); {hint}"
            ));
        }
        let (repository, reference) = if let Some((repo, digest)) = rest.split_once('@') {
            let ok = digest
                .strip_prefix("sha256:")
                .is_some_and(|h| h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()));
            if !ok {
                return Err(format!("{s:?}: a digest must be sha256: and 64 hex digits"));
            }
            (repo, digest.to_owned())
        } else {
            // The tag follows the last colon after the last slash (a port
            // belongs to the registry, already split off).
            let slash = rest.rfind('/').map_or(0, |i| i + 1);
            match rest[slash..].rfind(':') {
                Some(i) => (&rest[..slash + i], rest[slash + i + 1..].to_owned()),
                None => return Err(format!("{s:?}: no tag; {hint}")),
            }
        };
        let repo_ok = !repository.is_empty()
            && repository.split('/').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c))
                    && part.as_bytes()[0].is_ascii_alphanumeric()
            });
        if !repo_ok {
            return Err(format!(
                "{s:?}: repository {repository:?} must be lower-case letters, digits and . _ - separated by /"
            ));
        }
        if !reference.starts_with("sha256:") {
            let tag_ok = !reference.is_empty()
                && reference.len() <= 128
                && reference
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
                && !reference.starts_with(['.', '-']);
            if !tag_ok {
                return Err(format!(
                    "{s:?}: tag {reference:?} must be letters, digits and . _ - (at most 128, not starting with . or -)"
                ));
            }
        }
        Ok(Reference {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            reference,
        })
    }

    pub fn is_digest(&self) -> bool {
        self.reference.starts_with("sha256:")
    }

    /// The host the API is on: Docker Hub's API lives elsewhere than its name.
    pub fn api_host(&self) -> &str {
        match self.registry.as_str() {
            "docker.io" | "index.docker.io" => "registry-1.docker.io",
            r => r,
        }
    }
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// The file name `oras pull` would give the layer.
    pub fn title(&self) -> Option<&str> {
        self.annotations.get(TITLE).map(String::as_str)
    }
}

/// An OCI image manifest (what `oras push` writes for an artifact).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `sha256:` and the hex digest of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// The empty config's descriptor, with its content inline as oras writes it.
pub fn empty_config() -> Descriptor {
    Descriptor {
        media_type: EMPTY_MEDIA_TYPE.to_owned(),
        digest: digest_of(EMPTY_CONFIG),
        size: EMPTY_CONFIG.len() as u64,
        data: Some(BASE64.encode(EMPTY_CONFIG)),
        annotations: BTreeMap::new(),
    }
}

/// Whether `title` is a plain file name that `kiln pull` may write into its
/// output directory (no path, not hidden, not `..`).
pub fn safe_title(title: &str) -> bool {
    !title.is_empty()
        && !title.starts_with('.')
        && !title.contains(['/', '\\', '\0'])
        && !title.ends_with(".part")
        && title.len() <= 255
}

/// The first field of a `.sha512` sidecar (`HEX  NAME`), checked to be a
/// SHA-512 in hex.
pub fn sidecar_sha512(text: &str, file: &Path) -> Result<String> {
    let hex = text.split_whitespace().next().unwrap_or_default().to_ascii_lowercase();
    if hex.len() != 128 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        bail!(
            "{}: not a .sha512 sidecar (expected 128 hex digits, then the file name)",
            file.display()
        );
    }
    Ok(hex)
}

/// Credentials for one registry from a Docker config file: its `auths`
/// entry (`auth` = base64 of `user:password`, or `username`/`password`),
/// matched by host with or without scheme and path.
pub fn docker_config_credentials(config: &Path, registry: &str) -> Result<Option<Credentials>> {
    let text = match std::fs::read_to_string(config) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", config.display())),
    };
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", config.display()))?;
    let host_of = |key: &str| {
        let k = key.split_once("://").map_or(key, |(_, rest)| rest);
        k.split('/').next().unwrap_or_default().to_owned()
    };
    let wanted: Vec<&str> = match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
            vec!["index.docker.io", "docker.io", "registry-1.docker.io"]
        }
        r => vec![r],
    };
    let auths = doc.get("auths").and_then(|a| a.as_object());
    let entry = auths.and_then(|a| a.iter().find(|(k, _)| wanted.contains(&host_of(k).as_str())));
    let Some((key, entry)) = entry else {
        if let Some(store) = doc
            .get("credHelpers")
            .and_then(|h| h.get(registry))
            .or_else(|| doc.get("credsStore"))
            .and_then(|s| s.as_str())
        {
            tracing::warn!(
                "{}: credentials for {registry} are in the credential helper docker-credential-{store}, \
                 which kiln does not call; pass --username and --password-stdin",
                config.display()
            );
        }
        return Ok(None);
    };
    let bad = || {
        anyhow::anyhow!(
            "{}: auths.{key}: expected \"auth\" (base64 of user:password) or \"username\" and \"password\"",
            config.display()
        )
    };
    if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()).filter(|a| !a.is_empty()) {
        let decoded = BASE64.decode(auth.trim()).map_err(|_| bad())?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
        let (user, password) = decoded.split_once(':').ok_or_else(bad)?;
        return Ok(Some(Credentials {
            username: user.to_owned(),
            password: password.to_owned(),
        }));
    }
    match (
        entry.get("username").and_then(|u| u.as_str()),
        entry.get("password").and_then(|p| p.as_str()),
    ) {
        (Some(u), Some(p)) => Ok(Some(Credentials {
            username: u.to_owned(),
            password: p.to_owned(),
        })),
        _ if entry.get("identitytoken").is_some() => {
            bail!(
                "{}: auths.{key} holds an identity token, which kiln does not use; pass --username and --password-stdin",
                config.display()
            )
        }
        _ => Err(bad()),
    }
}

/// Where Docker keeps its config: `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = Reference::parse("127.0.0.1:5000/images/debian-12:1.0.0").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.reference.as_str()),
            ("127.0.0.1:5000", "images/debian-12", "1.0.0")
        );
        assert_eq!(r.to_string(), "127.0.0.1:5000/images/debian-12:1.0.0");
        let d = format!("ghcr.io/o/r@sha256:{}", "a".repeat(64));
        let r = Reference::parse(&d).unwrap();
        assert!(r.is_digest());
        assert_eq!(r.to_string(), d);
        assert_eq!(
            Reference::parse("docker.io/x/y:1").unwrap().api_host(),
            "registry-1.docker.io"
        );
        assert_eq!(Reference::parse("localhost/x:1").unwrap().registry, "localhost");
        for bad in [
            "debian:12",
            "library/debian:12",
            "reg.io/debian",
            "reg.io/Debian:1",
            "reg.io/x:",
            "reg.io/x:-1",
            "reg.io//x:1",
            "reg.io/x@sha256:abc",
            "reg.io/x:a/b",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn empty_config_is_the_well_known_one() {
        let c = empty_config();
        assert_eq!(
            c.digest,
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(c.data.as_deref(), Some("e30="));
    }

    #[test]
    fn titles() {
        for ok in ["debian.qcow2", "debian.qcow2.sha512", "manifest.json"] {
            assert!(safe_title(ok), "{ok}");
        }
        for bad in ["", "../x", "a/b", ".bashrc", "..", "x.part", "a\\b"] {
            assert!(!safe_title(bad), "{bad}");
        }
    }

    #[test]
    fn docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        assert!(docker_config_credentials(&path, "r.io").unwrap().is_none());
        std::fs::write(
            &path,
            format!(
                r#"{{"auths": {{"https://r.io/v1/": {{"auth": "{}"}}, "127.0.0.1:5000": {{"username": "u", "password": "p"}},
                     "bad.io": {{"auth": "!!"}}, "tok.io": {{"identitytoken": "x"}}}}}}"#,
                BASE64.encode("me:pa:ss")
            ),
        )
        .unwrap();
        let c = docker_config_credentials(&path, "r.io").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("me", "pa:ss"));
        let c = docker_config_credentials(&path, "127.0.0.1:5000").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p"));
        assert!(docker_config_credentials(&path, "other.io").unwrap().is_none());
        let err = docker_config_credentials(&path, "bad.io").unwrap_err().to_string();
        assert!(err.contains("auths.bad.io"), "{err}");
        assert!(docker_config_credentials(&path, "tok.io").is_err());
    }

    #[test]
    fn sidecars() {
        let hex = "ab".repeat(64);
        assert_eq!(
            sidecar_sha512(&format!("{hex}  x.qcow2\n"), Path::new("s")).unwrap(),
            hex
        );
        assert!(sidecar_sha512("abc  x", Path::new("s")).is_err());
    }
}
