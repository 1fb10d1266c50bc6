//! Gathering what a spec's names are checked against (kiln-spec's
//! [`Catalog`]) before a build: the release and the packages from the
//! archive the build would use (the distro family's sources plus the
//! spec's `[[base.sources]]`), the time zones from the host's tz database
//! and the locales from the host's list of supported locales. Whatever
//! cannot be had is left out of the catalog with a warning: a check that
//! could not run is not a failed check.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use kiln_spec::{Catalog, Distro, LoadedSpec, Names, Release};

use crate::archive::{Archive, FetchError};
use crate::distro;

/// Where the names come from.
#[derive(Debug, Clone)]
pub struct NameSources {
    /// Skip the archive: no network.
    pub offline: bool,
    /// The kiln cache directory; indexes are kept under `archive/`.
    pub cache_dir: PathBuf,
    /// The host's apt configuration, for the default mirror.
    pub etc_apt: PathBuf,
    /// The tz database.
    pub zoneinfo: PathBuf,
    /// glibc's list of supported locales.
    pub supported_locales: PathBuf,
}

impl NameSources {
    /// The host's databases and the default cache directory.
    pub fn host(offline: bool) -> Self {
        NameSources {
            offline,
            cache_dir: crate::cache::default_dir(),
            etc_apt: "/etc/apt".into(),
            zoneinfo: "/usr/share/zoneinfo".into(),
            supported_locales: "/usr/share/i18n/SUPPORTED".into(),
        }
    }
}

/// The catalog for `spec`, and why parts of it are missing.
pub fn gather(spec: &LoadedSpec, sources: &NameSources) -> (Catalog, Vec<String>) {
    let mut warnings = Vec::new();
    let mut catalog = Catalog::default();
    if !sources.offline {
        let (release, packages) = archive_names(spec, sources, &mut warnings);
        catalog.release = release;
        catalog.packages = packages;
    }
    // Every system has these; no need for the host to have the databases.
    let universal_zone = matches!(spec.spec.timezone.as_deref(), Some("UTC" | "Etc/UTC"));
    let universal_locale = matches!(spec.spec.locale.as_deref(), Some("C" | "C.UTF-8" | "POSIX"));
    if spec.spec.timezone.is_some() && !universal_zone {
        match time_zones(&sources.zoneinfo) {
            Ok(zones) => catalog.timezones = Some(zones),
            Err(e) => warnings.push(format!(
                "cannot read the tz database at {}: {e}; the time zone was not checked",
                sources.zoneinfo.display()
            )),
        }
    }
    if spec.spec.locale.is_some() && !universal_locale {
        match locales(&sources.supported_locales) {
            Ok(locales) => catalog.locales = Some(locales),
            Err(e) => warnings.push(format!(
                "cannot read the supported locales at {}: {e}; the locale was not checked",
                sources.supported_locales.display()
            )),
        }
    }
    (catalog, warnings)
}

/// Release names of each distro, for "did you mean" only: whether a
/// release exists is the archive's answer.
fn known_releases(distro: Distro) -> Vec<String> {
    let names: &[&str] = match distro {
        Distro::Debian => &[
            "buster",
            "bullseye",
            "bookworm",
            "trixie",
            "forky",
            "duke",
            "sid",
            "oldoldstable",
            "oldstable",
            "stable",
            "testing",
            "unstable",
            "experimental",
        ],
        Distro::Ubuntu => &[
            "bionic", "focal", "jammy", "noble", "oracular", "plucky", "questing", "devel",
        ],
        // Arch has no releases; the RHEL family's are checked by the spec's validation.
        Distro::Arch => &[],
        Distro::Rhel => kiln_spec::RHEL_RELEASES,
    };
    names.iter().map(|n| (*n).to_owned()).collect()
}

fn archive_names(
    loaded: &LoadedSpec,
    sources: &NameSources,
    warnings: &mut Vec<String>,
) -> (Option<Release>, Option<Names>) {
    let base = &loaded.spec.base;
    let skipped = |why: String| format!("{why}; the release and package names were not checked");
    let lines = match distro::family(base.distro()).sources(base, &sources.etc_apt) {
        Ok(lines) => lines,
        Err(e) => {
            warnings.push(skipped(format!("{e:#}")));
            return (None, None);
        }
    };
    let Some(main) = lines.first() else {
        return (None, None);
    };
    let archive = Archive::new(&sources.cache_dir.join("archive"));
    let release = match archive.release(&main.uri, &main.suite) {
        Ok(release) => release,
        Err(FetchError::NotFound(url)) => {
            let release = Release {
                exists: false,
                looked_at: url,
                known: known_releases(base.distro()),
            };
            return (Some(release), None);
        }
        Err(e) => {
            warnings.push(skipped(format!("cannot reach the archive ({e})")));
            return (None, None);
        }
    };
    let found = Release {
        exists: true,
        looked_at: release.url.clone(),
        known: Vec::new(),
    };

    // Every suite the build installs from: the family's (release, updates,
    // security) and the spec's own sources.
    let mut suites: Vec<(String, String, Vec<String>)> = lines
        .iter()
        .map(|l| (l.uri.clone(), l.suite.clone(), l.components.clone()))
        .collect();
    let apt_sources = base.apt().map(|a| a.sources.as_slice()).unwrap_or_default();
    for s in apt_sources {
        if s.components.is_empty() {
            warnings.push(format!(
                "[[base.sources]] `{}` is a flat repository; package names were not checked",
                s.name
            ));
            return (Some(found), None);
        }
        for suite in &s.suites {
            suites.push((s.uri.clone(), suite.clone(), s.components.clone()));
        }
    }
    let arch = base.architecture();
    let mut names = HashSet::new();
    for (uri, suite, components) in &suites {
        let release = if uri == &main.uri && suite == &main.suite {
            Ok(release.clone())
        } else {
            archive.release(uri, suite)
        };
        let result = release.and_then(|r| {
            components
                .iter()
                .try_for_each(|c| archive.package_names(uri, &r, c, arch).map(|n| names.extend(n)))
        });
        if let Err(e) = result {
            warnings.push(format!(
                "cannot read the package index of {suite} ({e}); package names were not checked"
            ));
            return (Some(found), None);
        }
    }
    let mut source = format!("{} ({}) at {}", main.suite, main.components.join(", "), main.uri);
    if !apt_sources.is_empty() {
        source.push_str(" or the spec's [[base.sources]]");
    }
    (Some(found), Some(Names::new(names, source)))
}

/// The zone names of a tz database: every TZif file under `dir`, without
/// the `posix/` and `right/` copies.
pub fn time_zones(dir: &Path) -> std::io::Result<Names> {
    let mut names = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            let rel = path.strip_prefix(dir).unwrap_or(&path);
            if rel == Path::new("posix") || rel == Path::new("right") {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else if is_tzif(&path) {
                names.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    if names.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no zone files"));
    }
    Ok(Names::new(names, format!("the tz database ({})", dir.display())))
}

fn is_tzif(path: &Path) -> bool {
    use std::io::Read as _;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| &magic == b"TZif")
}

/// The locale names of glibc's SUPPORTED list (`en_US.UTF-8 UTF-8`), and
/// the C locales, which every system has.
pub fn locales(supported: &Path) -> std::io::Result<Names> {
    let text = std::fs::read_to_string(supported)?;
    let listed = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned);
    let c = ["C", "C.UTF-8", "POSIX"].map(str::to_owned);
    Ok(Names::new(
        listed.chain(c),
        format!("the supported locales ({})", supported.display()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::tests::{serve, write_archive};
    use std::path::Path;

    const SPEC: &str = r#"timezone = "Europe/Pariss"
locale = "en_US.utf8"
[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "RELEASE"
mirror = "MIRROR"
[packages]
install = ["curll", "vim", "mail-transport-agent", "curl=1.0-1"]
remove = ["nano"]
[targets.ovh-byol]
"#;

    /// A host with a tz database of two zones and three locales.
    fn host(root: &Path, offline: bool) -> NameSources {
        let zoneinfo = root.join("zoneinfo");
        std::fs::create_dir_all(zoneinfo.join("Europe")).unwrap();
        std::fs::create_dir_all(zoneinfo.join("posix/Europe")).unwrap();
        for zone in ["Europe/Paris", "UTC", "posix/Europe/Pariss"] {
            std::fs::write(zoneinfo.join(zone), b"TZif2...").unwrap();
        }
        std::fs::write(zoneinfo.join("zone1970.tab"), "# not a zone").unwrap();
        let supported = root.join("SUPPORTED");
        std::fs::write(&supported, "en_US.UTF-8 UTF-8\nen_US ISO-8859-1\nfr_FR.UTF-8 UTF-8\n").unwrap();
        NameSources {
            offline,
            cache_dir: root.join("cache"),
            etc_apt: root.join("etc-apt"),
            zoneinfo,
            supported_locales: supported,
        }
    }

    fn spec(release: &str, mirror: &str) -> LoadedSpec {
        let text = SPEC.replace("RELEASE", release).replace("MIRROR", mirror);
        kiln_spec::parse_str(&text, Path::new("spec.toml"), Path::new("/")).unwrap()
    }

    fn messages(spec: &LoadedSpec, catalog: &Catalog) -> Vec<(usize, usize, String, String)> {
        match spec.check_names(catalog) {
            Ok(()) => Vec::new(),
            Err(e) => e
                .diagnostics()
                .iter()
                .map(|d| (d.line, d.column, d.message.clone(), d.help.clone().unwrap_or_default()))
                .collect(),
        }
    }

    /// A fake mirror with the suites a Debian build reads: packages are
    /// checked against all of them, with "did you mean" from the index.
    #[test]
    fn names_checked_against_a_fake_mirror() {
        let tmp = tempfile::tempdir().unwrap();
        let www = tmp.path().join("www");
        write_archive(
            &www,
            "debian",
            &[
                ("bookworm", &["curl", "exim4 provides mail-transport-agent"]),
                ("bookworm-updates", &["vim"]),
            ],
        );
        write_archive(&www, "debian-security", &[("bookworm-security", &["nano"])]);
        let mirror = format!("{}/debian", serve(&www, 20));
        let sources = host(tmp.path(), false);

        let good = spec("bookworm", &mirror);
        let (catalog, warnings) = gather(&good, &sources);
        assert_eq!(warnings, Vec::<String>::new());
        let got = messages(&good, &catalog);
        let source = format!("bookworm (main) at {mirror}");
        assert_eq!(
            got,
            vec![
                (
                    1,
                    12,
                    "time zone `Europe/Pariss` is not in the tz database (".to_owned()
                        + &sources.zoneinfo.display().to_string()
                        + ")",
                    "did you mean `Europe/Paris`?".to_owned()
                ),
                (
                    2,
                    10,
                    format!(
                        "locale `en_US.utf8` is not in the supported locales ({})",
                        sources.supported_locales.display()
                    ),
                    "did you mean `en_US.UTF-8`?".to_owned()
                ),
                (
                    11,
                    12,
                    format!("package `curll` is not in {source}"),
                    "did you mean `curl`?".to_owned()
                ),
            ]
        );

        let typo = spec("bookwurm", &mirror);
        let (catalog, warnings) = gather(&typo, &sources);
        assert!(warnings.is_empty(), "{warnings:?}");
        let got = messages(&typo, &catalog);
        assert_eq!((got[2].0, got[2].1), (8, 11));
        assert_eq!(got[2].2, "release `bookwurm` is not in the archive");
        assert_eq!(
            got[2].3,
            format!("did you mean `bookworm`? (looked for {mirror}/dists/bookwurm/Release)")
        );
        // Without the release there is no index to check packages against.
        assert_eq!(got.len(), 3, "{got:?}");
    }

    #[test]
    fn offline_or_unreachable_skips_the_archive() {
        let tmp = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mirror = format!("http://{}/debian", listener.local_addr().unwrap());
        drop(listener);
        let spec = spec("bookwurm", &mirror);

        let (catalog, warnings) = gather(&spec, &host(tmp.path(), true));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!((catalog.release, catalog.packages), (None, None));
        assert!(catalog.timezones.is_some());

        let (catalog, warnings) = gather(&spec, &host(tmp.path(), false));
        assert_eq!(catalog.release, None);
        let [w] = &warnings[..] else { panic!("{warnings:?}") };
        assert!(w.starts_with("cannot reach the archive ("), "{w}");
        assert!(w.ends_with("the release and package names were not checked"), "{w}");
    }

    #[test]
    fn universal_names_need_no_host_database() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sources = host(tmp.path(), true);
        sources.zoneinfo = tmp.path().join("no-zoneinfo");
        sources.supported_locales = tmp.path().join("no-SUPPORTED");
        let text = SPEC
            .replace("Europe/Pariss", "Etc/UTC")
            .replace("en_US.utf8", "C.UTF-8")
            .replace("RELEASE", "bookworm")
            .replace("MIRROR", "http://deb.example/debian");
        let spec = kiln_spec::parse_str(&text, Path::new("spec.toml"), Path::new("/")).unwrap();
        let (catalog, warnings) = gather(&spec, &sources);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(spec.check_names(&catalog).is_ok());

        let (_, warnings) = gather(&self::spec("bookworm", "http://deb.example/debian"), &sources);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("the time zone was not checked"), "{warnings:?}");
        assert!(warnings[1].contains("the locale was not checked"), "{warnings:?}");
    }

    #[test]
    fn host_databases() {
        let tmp = tempfile::tempdir().unwrap();
        let sources = host(tmp.path(), true);
        let zones = time_zones(&sources.zoneinfo).unwrap();
        let mut z: Vec<&str> = zones.names.iter().map(String::as_str).collect();
        z.sort_unstable();
        assert_eq!(z, ["Europe/Paris", "UTC"]);
        let l = locales(&sources.supported_locales).unwrap();
        for name in ["en_US.UTF-8", "en_US", "C.UTF-8", "POSIX"] {
            assert!(l.names.contains(name), "{name}");
        }
        assert!(time_zones(&tmp.path().join("nope")).is_err());
    }

    /// The real archive: the typos of issue 8 are found, with positions.
    /// Needs deb.debian.org; run with `cargo test -p kiln-build -- --ignored names`.
    #[test]
    #[ignore = "needs deb.debian.org"]
    fn debian_archive_rejects_typos() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sources = NameSources::host(false);
        sources.cache_dir = tmp.path().to_path_buf();
        let text = |release: &str| {
            format!(
                "timezone = \"Europe/Pariss\"\n[image]\nname = \"t\"\nversion = \"1\"\n[base]\ndistro = \"debian\"\n\
                 release = \"{release}\"\nmirror = \"http://deb.debian.org/debian\"\n[packages]\ninstall = [\"curll\", \"openssh-server\"]\n[targets.ovh-byol]\n"
            )
        };
        let load =
            |release: &str| kiln_spec::parse_str(&text(release), Path::new("spec.toml"), Path::new("/")).unwrap();

        let spec = load("bookwurm");
        let (catalog, warnings) = gather(&spec, &sources);
        assert!(warnings.is_empty(), "{warnings:?}");
        let got = messages(&spec, &catalog);
        let at: Vec<(usize, usize)> = got.iter().map(|g| (g.0, g.1)).collect();
        assert_eq!(at, [(1, 12), (7, 11)], "{got:?}");
        assert!(got[0].3.contains("`Europe/Paris`"), "{got:?}");
        assert!(got[1].3.starts_with("did you mean `bookworm`?"), "{got:?}");

        let spec = load("bookworm");
        let (catalog, warnings) = gather(&spec, &sources);
        assert!(warnings.is_empty(), "{warnings:?}");
        let got = messages(&spec, &catalog);
        let at: Vec<(usize, usize)> = got.iter().map(|g| (g.0, g.1)).collect();
        assert_eq!(at, [(1, 12), (10, 12)], "{got:?}");
        assert_eq!(
            got[1].2,
            "package `curll` is not in bookworm (main) at http://deb.debian.org/debian"
        );
        assert_eq!(got[1].3, "did you mean `curl`?");
    }
}
