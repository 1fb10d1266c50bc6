//! Names a spec borrows from outside its own format: the release, the
//! packages, the time zone and the locale. Whether they exist depends on
//! the archive and on the tz and locale databases, which the caller
//! gathers into a [`Catalog`]; this module only compares, and reports what
//! is missing at its place in the spec with a "did you mean". A catalog
//! part that could not be gathered is `None` and its names go unchecked.

use std::collections::HashSet;

use crate::decode::closest;
use crate::diagnostic::{DiagnosticKind, SourceFile, SpecError};
use crate::load::LoadedSpec;
use crate::spans::SpanIndex;

/// A set of names that exist, and where they were found, for messages
/// (`bookworm (main) at http://deb.debian.org/debian`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    pub names: HashSet<String>,
    pub source: String,
}

impl Names {
    pub fn new(names: impl IntoIterator<Item = String>, source: impl Into<String>) -> Self {
        Names {
            names: names.into_iter().collect(),
            source: source.into(),
        }
    }
}

/// What the spec's release turned out to be in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// Whether the archive has the release.
    pub exists: bool,
    /// What was looked at, e.g. the URL of its Release file.
    pub looked_at: String,
    /// Release names of the distro, to suggest from.
    pub known: Vec<String>,
}

/// Everything names are checked against; `None` parts are not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    pub release: Option<Release>,
    /// Package names of the build's sources, with the names that packages
    /// provide (apt installs a virtual package that one package provides).
    pub packages: Option<Names>,
    pub timezones: Option<Names>,
    pub locales: Option<Names>,
}

/// The package name in an apt argument: `curl` for `curl=7.88.1-10`,
/// `curl/bookworm-backports` or `curl:amd64`.
pub fn package_name(arg: &str) -> &str {
    let end = arg.find(['=', '/', ':']).unwrap_or(arg.len());
    &arg[..end]
}

/// The spec's package names with their key paths: `[packages] install`
/// and `remove`, and `[kernel] package`.
pub fn spec_packages(spec: &crate::Spec) -> Vec<(String, &str)> {
    let mut out = Vec::new();
    for (list, names) in [
        ("install", &spec.packages.install),
        ("remove", &spec.packages.remove),
        ("offline", &spec.packages.offline),
    ] {
        for (i, name) in names.iter().enumerate() {
            out.push((format!("packages.{list}[{i}]"), name.as_str()));
        }
    }
    if let Some(kernel) = &spec.kernel.package {
        out.push(("kernel.package".to_owned(), kernel.as_str()));
    }
    out
}

impl LoadedSpec {
    /// Checks the spec's release, packages, time zone and locale against
    /// `catalog`; every name it lacks is one diagnostic.
    pub fn check_names(&self, catalog: &Catalog) -> Result<(), SpecError> {
        let Ok(root) = toml::de::DeTable::parse(&self.source) else {
            return Ok(());
        };
        let spans = SpanIndex::new(root.into_inner());
        let file = SourceFile {
            path: &self.path,
            text: &self.source,
        };
        let mut diagnostics = Vec::new();
        let mut report = |path: &str, message: String, help: Option<String>| {
            let span = spans.value(path);
            diagnostics.push(file.diagnostic(DiagnosticKind::NotFound, span, message, help));
        };
        let spec = &self.spec;
        if let Some(release) = catalog.release.as_ref().filter(|r| !r.exists) {
            let name = spec.base.release().unwrap_or_default();
            let suggestion = closest(name, release.known.iter().map(String::as_str))
                .map(|c| format!("did you mean `{c}`? "))
                .unwrap_or_default();
            report(
                "base.release",
                format!("release `{name}` is not in the archive"),
                Some(format!("{suggestion}(looked for {})", release.looked_at)),
            );
        }
        if let Some(packages) = &catalog.packages {
            for (path, arg) in spec_packages(spec) {
                let name = package_name(arg);
                // apt also takes globs and regular expressions.
                if name.contains(['*', '?', '[', '^', '$']) || packages.names.contains(name) {
                    continue;
                }
                report(
                    &path,
                    format!("package `{name}` is not in {}", packages.source),
                    did_you_mean(name, &packages.names),
                );
            }
        }
        if let (Some(tz), Some(zones)) = (&spec.timezone, &catalog.timezones) {
            if !zones.names.contains(tz.as_str()) {
                report(
                    "timezone",
                    format!("time zone `{tz}` is not in {}", zones.source),
                    did_you_mean(tz, &zones.names),
                );
            }
        }
        if let (Some(locale), Some(locales)) = (&spec.locale, &catalog.locales) {
            if !locales.names.contains(locale.as_str()) {
                report(
                    "locale",
                    format!("locale `{locale}` is not in {}", locales.source),
                    did_you_mean(locale, &locales.names),
                );
            }
        }
        if diagnostics.is_empty() {
            Ok(())
        } else {
            Err(file.error(diagnostics))
        }
    }
}

/// "did you mean" over a large set: only names of about the same length
/// can be close enough, so the rest are not scored.
fn did_you_mean(word: &str, names: &HashSet<String>) -> Option<String> {
    let len = word.chars().count();
    let mut near: Vec<&str> = names
        .iter()
        .filter(|n| n.len().abs_diff(len) <= 3)
        .map(String::as_str)
        .collect();
    // Ties go to the first candidate: sort so that the answer is stable.
    near.sort_unstable();
    closest(word, near).map(|c| format!("did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_in_apt_arguments() {
        for (arg, want) in [
            ("curl", "curl"),
            ("curl=7.88.1-10", "curl"),
            ("curl/bookworm-backports", "curl"),
            ("libc6:amd64", "libc6"),
            ("g++", "g++"),
        ] {
            assert_eq!(package_name(arg), want, "{arg}");
        }
    }

    #[test]
    fn suggestions_from_a_large_set() {
        let names: HashSet<String> = ["curl", "curlftpfs", "libcurl4", "vim", "wget"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(did_you_mean("curll", &names).as_deref(), Some("did you mean `curl`?"));
        assert_eq!(did_you_mean("vmi", &names).as_deref(), Some("did you mean `vim`?"));
        assert_eq!(did_you_mean("postgresql", &names), None);
    }
}
