//! Bootstrap backends: turn `[base]` and the package set into a root tree.
//! Debian and Ubuntu use `mmdebstrap`; other families are later backends.
//!
//! The default mirror is the one in the host's own apt sources, so kiln works
//! behind whatever mirror or proxy the machine already uses.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_spec::{Base, Distro};

/// One `deb` line of the build's sources.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SourceLine {
    pub uri: String,
    pub suite: String,
    pub components: Vec<String>,
}

impl SourceLine {
    pub fn one_line(&self) -> String {
        format!("deb {} {} {}", self.uri, self.suite, self.components.join(" "))
    }
}

/// A URI of a host apt source with the suites it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSource {
    pub uri: String,
    pub suites: Vec<String>,
}

/// Reads the host's apt sources (one-line and deb822 formats).
pub fn host_sources(etc_apt: &Path) -> Vec<HostSource> {
    let mut out = Vec::new();
    if let Ok(text) = std::fs::read_to_string(etc_apt.join("sources.list")) {
        out.extend(parse_one_line_sources(&text));
    }
    if let Ok(dir) = std::fs::read_dir(etc_apt.join("sources.list.d")) {
        let mut paths: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            match p.extension().and_then(|e| e.to_str()) {
                Some("list") => out.extend(parse_one_line_sources(&text)),
                Some("sources") => out.extend(parse_deb822_sources(&text)),
                _ => {}
            }
        }
    }
    out
}

fn parse_one_line_sources(text: &str) -> Vec<HostSource> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter_map(|l| {
            let mut words = l.split_whitespace().peekable();
            if words.next()? != "deb" {
                return None;
            }
            // Skip an options block like "[signed-by=... arch=amd64]".
            if words.peek()?.starts_with('[') {
                for w in words.by_ref() {
                    if w.ends_with(']') {
                        break;
                    }
                }
            }
            let uri = words.next()?.to_owned();
            let suite = words.next()?.to_owned();
            Some(HostSource {
                uri,
                suites: vec![suite],
            })
        })
        .collect()
}

fn parse_deb822_sources(text: &str) -> Vec<HostSource> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut types = String::new();
        let mut uris = Vec::new();
        let mut suites = Vec::new();
        let mut enabled = true;
        for line in stanza.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let words = || value.split_whitespace().map(str::to_owned);
            match key.trim().to_ascii_lowercase().as_str() {
                "types" => types = value.to_owned(),
                "uris" => uris = words().collect(),
                "suites" => suites = words().collect(),
                "enabled" => enabled = value.trim() != "no",
                _ => {}
            }
        }
        if enabled && types.split_whitespace().any(|t| t == "deb") {
            out.extend(uris.into_iter().map(|uri| HostSource {
                uri,
                suites: suites.clone(),
            }));
        }
    }
    out
}

/// The sources a build uses: `[base] mirror` if given, else the host's
/// mirror for the release; plus `-updates` and `-security`.
pub fn resolve_sources(base: &Base, host: &[HostSource]) -> Result<Vec<SourceLine>> {
    let distro = base.distro();
    let Some(base) = base.apt() else {
        bail!(
            "[base] distro = \"{}\" has no apt sources",
            serde_json::to_value(distro)?.as_str().unwrap_or("?")
        );
    };
    let components = base.components.clone().unwrap_or_else(|| vec!["main".to_owned()]);
    let release = base.release.as_str();
    let serves = |s: &HostSource, suite: &str| s.suites.iter().any(|x| x == suite);
    let snapshot = base.snapshot.as_deref().map(|s| {
        if s.contains("://") {
            s.trim_end_matches('/').to_owned()
        } else {
            format!("{SNAPSHOT_ARCHIVE}/debian/{s}")
        }
    });
    let mirror = match (&snapshot, &base.mirror) {
        (Some(s), _) => s.clone(),
        (None, Some(m)) => m.trim_end_matches('/').to_owned(),
        (None, None) => match distro {
            Distro::Debian => host
                .iter()
                .find(|s| serves(s, release) && !s.uri.contains("security"))
                .or_else(|| {
                    host.iter()
                        .find(|s| s.uri.ends_with("/debian") || s.uri.ends_with("/debian/"))
                })
                .map(|s| s.uri.trim_end_matches('/').to_owned())
                .with_context(|| {
                    format!(
                        "finding a Debian mirror for {release:?} in the host's apt sources: none serves it; \
                         set `mirror = \"http://.../debian\"` in [base]"
                    )
                })?,
            Distro::Ubuntu => {
                bail!("[base] distro = \"ubuntu\" needs an explicit `mirror` (the host's apt sources are Debian's)")
            }
            Distro::Arch | Distro::Rhel => unreachable!("not an apt family"),
        },
    };
    let line = |uri: &str, suite: String| SourceLine {
        uri: uri.to_owned(),
        suite,
        components: components.clone(),
    };
    let mut lines = vec![
        line(&mirror, release.to_owned()),
        line(&mirror, format!("{release}-updates")),
    ];
    let security_suite = format!("{release}-security");
    let security = match distro {
        Distro::Ubuntu | Distro::Arch | Distro::Rhel => mirror.clone(),
        // snapshot.debian.org keeps debian-security beside debian.
        Distro::Debian if snapshot.is_some() => match mirror.rsplit_once("/debian/") {
            Some((head, stamp)) if head.ends_with("/archive") => format!("{head}/debian-security/{stamp}"),
            _ => mirror.clone(),
        },
        Distro::Debian => host
            .iter()
            .find(|s| base.mirror.is_none() && serves(s, &security_suite))
            .map(|s| s.uri.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("{mirror}-security")),
    };
    lines.push(line(&security, security_suite));
    Ok(lines)
}

/// Where snapshot time stamps point.
pub const SNAPSHOT_ARCHIVE: &str = "https://snapshot.debian.org/archive";

/// What `mmdebstrap` is asked to do.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BootstrapRequest {
    pub distro: Distro,
    pub release: String,
    pub variant: String,
    pub architecture: String,
    pub sources: Vec<SourceLine>,
    /// Packages installed into the tree.
    pub include: Vec<String>,
    /// Packages whose `.deb` files are fetched (not installed) into `download_dir`.
    pub download: Vec<String>,
    /// Absolute path inside the tree for the downloaded `.deb` files.
    pub download_dir: String,
    /// Extra apt sources: (file name, deb822 text, key file on the host).
    pub extra_sources: Vec<ExtraSource>,
    /// The sources are a dated snapshot: their Release files have expired.
    pub snapshot: bool,
    /// The package repositories of a family that does not use apt sources
    /// (pacman, dnf); empty for apt, and then left out of the request's
    /// JSON so that apt plans keep their hashes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repos: Vec<Repo>,
    /// A tree that bootstraps the real one from inside (Arch's bootstrap
    /// tarball), downloaded and verified first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<BootstrapImage>,
}

/// A package repository of pacman or dnf.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Repo {
    /// pacman.conf section or dnf repo id.
    pub name: String,
    /// The URL, with the package manager's own variables (`$repo`, `$arch`,
    /// `$releasever`, `$basearch`).
    pub url: String,
    /// The OpenPGP key: a file on the host (absolute) or a URL.
    pub key: Option<String>,
    /// Check package signatures.
    pub gpgcheck: bool,
}

/// A downloaded tree that the bootstrap runs in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BootstrapImage {
    pub url: String,
    pub sha256: String,
    pub signature: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ExtraSource {
    pub name: String,
    pub deb822: String,
    pub key: Option<PathBuf>,
}

/// The `mmdebstrap` argument vector for `req`, building into `tree`.
/// `scratch` is a host directory for the generated sources files;
/// `packages`, when given, a directory of `.deb` files shared by builds:
/// apt takes what it needs from there and only downloads the rest, and
/// what it downloaded is added to it (each file written under a temporary
/// name and renamed, so concurrent builds never see half a file).
/// The environment [`mmdebstrap_args`]' command runs with. `INITRD=No`
/// keeps the kernel package's postinst hook from making an initramfs that
/// the packages configured after it (mdadm, lvm2, cryptsetup, zstd...)
/// then make again through initramfs-tools' trigger: about 20 s each time.
/// [`INITRAMFS_ONCE`] makes it once, when every package is configured.
pub const MMDEBSTRAP_ENV: &[(&str, &str)] = &[("INITRD", "No")];

/// A customize hook that makes the initramfs of each installed kernel that
/// has none (with [`MMDEBSTRAP_ENV`], every kernel), then its `/initrd.img`
/// and `/initrd.img.old` links, which the kernel's postinst links only to
/// an initramfs that exists (and not at all with `INITRD=No`, which the
/// hook therefore unsets). The tree is then what the postinst would have
/// left, the initramfs made once from the final package set.
const INITRAMFS_ONCE: &str = "chroot \"$1\" env -u INITRD sh -ec 'command -v update-initramfs >/dev/null \
     && command -v linux-version >/dev/null || exit 0; \
     for v in $(linux-version list); do [ -e /boot/initrd.img-$v ] && continue; \
     update-initramfs -c -k \"$v\"; linux-update-symlinks install \"$v\" /boot/vmlinuz-$v; done'";

pub fn mmdebstrap_args(req: &BootstrapRequest, tree: &Path, scratch: &Path, packages: Option<&Path>) -> Vec<String> {
    let mut args = vec![
        "--mode=root".to_owned(),
        format!("--variant={}", req.variant),
        format!("--architectures={}", req.architecture),
        "--format=directory".to_owned(),
        // Keep the package lists: [[run]] steps may call apt-get; the
        // finalisation stage removes them.
        "--skip=cleanup/apt/lists".to_owned(),
        "--aptopt=Acquire::Retries \"3\"".to_owned(),
        "--dpkgopt=force-unsafe-io".to_owned(),
    ];
    if req.snapshot {
        args.push("--aptopt=Acquire::Check-Valid-Until \"false\"".to_owned());
    }
    args.push(format!("--customize-hook={INITRAMFS_ONCE}"));
    if !req.include.is_empty() {
        args.push(format!("--include={}", req.include.join(",")));
    }
    for extra in &req.extra_sources {
        let file = scratch.join(format!("{}.sources", extra.name));
        args.push("--setup-hook=mkdir -p \"$1/etc/apt/sources.list.d\" \"$1/etc/apt/keyrings\"".to_owned());
        if let Some(key) = &extra.key {
            let name = key
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            args.push(format!(
                "--setup-hook=copy-in {} /etc/apt/keyrings/",
                kiln_exec::cmd::shell_quote(&key.to_string_lossy())
            ));
            let _ = name;
        }
        args.push(format!(
            "--setup-hook=upload {} /etc/apt/sources.list.d/{}.sources",
            kiln_exec::cmd::shell_quote(&file.to_string_lossy()),
            extra.name
        ));
    }
    if let Some(cache) = packages {
        let c = kiln_exec::cmd::shell_quote(&cache.to_string_lossy());
        let archives = "\"$1/var/cache/apt/archives\"";
        // Keep the essential .debs until the customize hook below has
        // copied them out (mmdebstrap would unlink them after installing).
        args.push("--skip=essential/unlink".to_owned());
        args.push(format!("--setup-hook=mkdir -p {archives}/partial"));
        // Hard links when the cache is on the same filesystem, else copies.
        args.push(format!(
            "--setup-hook=for f in {c}/*.deb; do [ -e \"$f\" ] || continue; \
             ln \"$f\" {archives}/ 2>/dev/null || cp \"$f\" {archives}/; done"
        ));
        args.push(format!(
            "--customize-hook=for f in {archives}/*.deb; do [ -e \"$f\" ] || continue; b=${{f##*/}}; \
             [ -e {c}/\"$b\" ] || {{ cp \"$f\" {c}/.\"$b\".$$ && mv {c}/.\"$b\".$$ {c}/\"$b\"; }}; done; \
             rm -f {archives}/*.deb"
        ));
    }
    if !req.download.is_empty() {
        let dir = &req.download_dir;
        args.push(format!(
            "--customize-hook=mkdir -p \"$1{dir}\" && chroot \"$1\" sh -c 'cd {dir} && apt-get download {}'",
            req.download.join(" ")
        ));
    }
    args.push(req.release.clone());
    args.push(tree.to_string_lossy().into_owned());
    args.extend(req.sources.iter().map(SourceLine::one_line));
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_spec::AptBase;

    fn base(mirror: Option<&str>) -> Base {
        Base::Debian(apt(mirror))
    }

    fn apt(mirror: Option<&str>) -> AptBase {
        AptBase {
            release: "bookworm".into(),
            mirror: mirror.map(Into::into),
            snapshot: None,
            components: None,
            variant: None,
            architecture: None,
            sources: vec![],
            image: None,
        }
    }

    const DEB822: &str = "Types: deb\n# comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
        Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n\
        Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n";

    #[test]
    fn parses_deb822_and_one_line() {
        let s = parse_deb822_sources(DEB822);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0].suites, ["bookworm", "bookworm-updates"]);
        let o = parse_one_line_sources(
            "deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n#deb x y\ndeb-src a b",
        );
        assert_eq!(
            o,
            [HostSource {
                uri: "http://m.example/debian".into(),
                suites: vec!["bookworm".into()]
            }]
        );
    }

    #[test]
    fn resolves_host_mirror_with_updates_and_security() {
        let host = parse_deb822_sources(DEB822);
        let lines: Vec<String> = resolve_sources(&base(None), &host)
            .unwrap()
            .iter()
            .map(SourceLine::one_line)
            .collect();
        assert_eq!(
            lines,
            [
                "deb http://mirror.example/debian bookworm main",
                "deb http://mirror.example/debian bookworm-updates main",
                "deb http://mirror.example/debian-security bookworm-security main",
            ]
        );
    }

    #[test]
    fn explicit_mirror_wins() {
        let host = parse_deb822_sources(DEB822);
        let lines = resolve_sources(&base(Some("http://other.example/debian/")), &host).unwrap();
        assert_eq!(lines[0].uri, "http://other.example/debian");
        assert_eq!(lines[2].uri, "http://other.example/debian-security");
    }

    #[test]
    fn snapshots_pin_every_suite_and_accept_expired_release_files() {
        let host = parse_deb822_sources(DEB822);
        let mut b = apt(None);
        b.snapshot = Some("20260101T000000Z".into());
        let lines = resolve_sources(&Base::Debian(b.clone()), &host).unwrap();
        assert_eq!(
            lines[0].uri,
            "https://snapshot.debian.org/archive/debian/20260101T000000Z"
        );
        assert_eq!(lines[1].suite, "bookworm-updates");
        assert_eq!(
            lines[2].uri,
            "https://snapshot.debian.org/archive/debian-security/20260101T000000Z"
        );
        b.snapshot = Some("http://aptly.example/snap/2026-01/".into());
        let lines = resolve_sources(&Base::Debian(b), &host).unwrap();
        assert!(
            lines.iter().all(|l| l.uri == "http://aptly.example/snap/2026-01"),
            "{lines:?}"
        );
    }

    #[test]
    fn the_package_cache_is_linked_in_and_filled_atomically() {
        let req = BootstrapRequest {
            distro: Distro::Debian,
            release: "bookworm".into(),
            variant: "important".into(),
            architecture: "amd64".into(),
            sources: vec![],
            include: vec!["cloud-init".into()],
            download: vec![],
            download_dir: "/root/.ovh/debs".into(),
            extra_sources: vec![],
            snapshot: true,
            repos: vec![],
            image: None,
        };
        let args = mmdebstrap_args(&req, Path::new("/t"), Path::new("/s"), Some(Path::new("/c/packages")));
        let all = args.join("\n");
        assert!(args.iter().any(|a| a == "--skip=essential/unlink"), "{all}");
        assert!(all.contains("ln \"$f\""), "{all}");
        assert!(all.contains("mv /c/packages/.\"$b\".$$ /c/packages/\"$b\""), "{all}");
        assert!(all.contains("Check-Valid-Until"), "{all}");
        let none = mmdebstrap_args(&req, Path::new("/t"), Path::new("/s"), None).join("\n");
        assert!(
            !none.contains("/c/packages") && !none.contains("essential/unlink"),
            "{none}"
        );
    }

    #[test]
    fn no_mirror_is_a_clear_error() {
        let err = resolve_sources(&base(None), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("set `mirror ="), "{err:#}");
    }
}
