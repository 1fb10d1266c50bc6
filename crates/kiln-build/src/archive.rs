//! The package archive's indexes, read to check a spec's names before a
//! build: each suite's Release file and each component's Packages index,
//! fetched over HTTP(S) or read from a `file://` mirror, and cached under
//! the kiln cache directory. A Release file is reused for [`RELEASE_TTL`];
//! a Packages index is kept by the SHA-256 that its Release file gives, and
//! only as the package names it holds, so that a repeated check reads a few
//! small files. Nothing here installs or verifies signatures: apt does that
//! during the build.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

/// How long a fetched Release file is reused. Archives publish a few times
/// a day; a stale Release file still names indexes whose names are close
/// enough to tell `curl` from `curll`.
pub const RELEASE_TTL: Duration = Duration::from_secs(3600);

/// Indexes larger than this are not an archive's (Debian's main is 10 MiB
/// compressed).
const MAX_INDEX: u64 = 256 << 20;

/// Why an index could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The archive answered that there is no such file.
    #[error("{0} does not exist")]
    NotFound(String),
    /// The archive could not be reached or gave something unusable.
    #[error("{url}: {why}")]
    Unavailable { url: String, why: String },
}

/// A suite's Release (or InRelease) file.
#[derive(Debug, Clone)]
pub struct ReleaseFile {
    /// Where it came from.
    pub url: String,
    text: String,
}

impl ReleaseFile {
    /// The SHA-256 and size of `path` (e.g. `main/binary-amd64/Packages.xz`)
    /// as the file lists them.
    pub fn sha256(&self, path: &str) -> Option<(String, u64)> {
        let mut in_section = false;
        for line in self.text.lines() {
            if !line.starts_with(' ') {
                in_section = line.trim_end() == "SHA256:";
                continue;
            }
            if !in_section {
                continue;
            }
            let mut fields = line.split_whitespace();
            if let (Some(hash), Some(size), Some(name)) = (fields.next(), fields.next(), fields.next()) {
                if name == path {
                    return Some((hash.to_ascii_lowercase(), size.parse().ok()?));
                }
            }
        }
        None
    }
}

/// Reads archives, through a cache directory.
pub struct Archive {
    cache: PathBuf,
    agent: ureq::Agent,
}

impl Archive {
    /// An archive reader caching under `cache` (created on first use).
    pub fn new(cache: &Path) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(Duration::from_secs(300)))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build();
        Archive {
            cache: cache.to_path_buf(),
            agent: config.into(),
        }
    }

    /// The Release file of `suite` at `uri`: `InRelease`, else `Release`.
    pub fn release(&self, uri: &str, suite: &str) -> Result<ReleaseFile, FetchError> {
        let base = format!("{}/dists/{suite}", uri.trim_end_matches('/'));
        let mut last = None;
        for name in ["InRelease", "Release"] {
            let url = format!("{base}/{name}");
            let cached = self.cache.join(format!("release-{}", short_hash(&url)));
            if let Some(text) = fresh(&cached) {
                return Ok(ReleaseFile { url, text });
            }
            match self.get(&url) {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    self.store(&cached, text.as_bytes());
                    return Ok(ReleaseFile { url, text });
                }
                Err(FetchError::NotFound(_)) => last = Some(url),
                Err(e) => return Err(e),
            }
        }
        Err(FetchError::NotFound(last.unwrap_or(base)))
    }

    /// The package names in `component` of a suite for `arch`, with the
    /// names that its packages provide.
    pub fn package_names(
        &self,
        uri: &str,
        release: &ReleaseFile,
        component: &str,
        arch: &str,
    ) -> Result<BTreeSet<String>, FetchError> {
        let dir = release.url.rsplit_once('/').map_or(uri, |(d, _)| d);
        let index = format!("{component}/binary-{arch}/Packages");
        let listed = [".xz", ".gz", ""]
            .into_iter()
            .find_map(|ext| release.sha256(&format!("{index}{ext}")).map(|h| (ext, h)));
        let Some((ext, (sha256, size))) = listed else {
            return Err(FetchError::NotFound(format!(
                "{dir}/{index} (the Release file lists no such index)"
            )));
        };
        let cached = self.cache.join(format!("packages-{sha256}.names"));
        if let Ok(text) = std::fs::read_to_string(&cached) {
            return Ok(text.lines().map(str::to_owned).collect());
        }
        let url = format!("{dir}/{index}{ext}");
        let bytes = self.get(&url)?;
        let unusable = |why: String| FetchError::Unavailable { url: url.clone(), why };
        let got = hex::encode(Sha256::digest(&bytes));
        if got != sha256 || bytes.len() as u64 != size {
            return Err(unusable(format!(
                "its SHA-256 is {got} ({} bytes), the Release file says {sha256} ({size} bytes); is the mirror being updated?",
                bytes.len()
            )));
        }
        let reader: Box<dyn Read> = match ext {
            ".xz" => Box::new(xz2::read::XzDecoder::new(&bytes[..])),
            ".gz" => Box::new(flate2::read::GzDecoder::new(&bytes[..])),
            _ => Box::new(&bytes[..]),
        };
        let names = parse_packages(BufReader::new(reader)).map_err(|e| unusable(format!("decompressing: {e}")))?;
        let mut text = String::new();
        for n in &names {
            text.push_str(n);
            text.push('\n');
        }
        self.store(&cached, text.as_bytes());
        Ok(names)
    }

    fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let unavailable = |why: String| FetchError::Unavailable {
            url: url.to_owned(),
            why,
        };
        if let Some(path) = url.strip_prefix("file://") {
            return match std::fs::read(path) {
                Ok(bytes) => Ok(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(FetchError::NotFound(url.to_owned())),
                Err(e) => Err(unavailable(e.to_string())),
            };
        }
        match self.agent.get(url).call() {
            Ok(mut response) => response
                .body_mut()
                .with_config()
                .limit(MAX_INDEX)
                .read_to_vec()
                .map_err(|e| unavailable(e.to_string())),
            Err(ureq::Error::StatusCode(404 | 410)) => Err(FetchError::NotFound(url.to_owned())),
            Err(e) => Err(unavailable(e.to_string())),
        }
    }

    /// Writes a cache file whole or not at all; a cache that cannot be
    /// written only costs a fetch next time.
    fn store(&self, path: &Path, bytes: &[u8]) {
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let written = std::fs::create_dir_all(&self.cache)
            .and_then(|()| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::debug!("caching {}: {e}", path.display());
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// The cached file's text, if it was written less than [`RELEASE_TTL`] ago.
fn fresh(path: &Path) -> Option<String> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
    let age = SystemTime::now().duration_since(modified).unwrap_or(Duration::MAX);
    if age > RELEASE_TTL {
        return None;
    }
    std::fs::read_to_string(path).ok()
}

fn short_hash(s: &str) -> String {
    blake3::hash(s.as_bytes()).to_hex()[..32].to_owned()
}

/// The `Package:` names of a Packages index, and the names in `Provides:`
/// (without their versions).
pub fn parse_packages(reader: impl BufRead) -> std::io::Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for line in reader.lines() {
        let line = line?;
        if let Some(name) = line.strip_prefix("Package:") {
            names.insert(name.trim().to_owned());
        } else if let Some(provides) = line.strip_prefix("Provides:") {
            for item in provides.split(',') {
                let name = item.split_whitespace().next().unwrap_or("");
                if !name.is_empty() {
                    names.insert(name.to_owned());
                }
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write as _;
    use std::net::TcpListener;

    /// A hand-made archive: `dists/<suite>/InRelease` and a gzipped
    /// `main/binary-amd64/Packages.gz` per suite, under `root/<path>`.
    pub(crate) fn write_archive(root: &Path, path: &str, suites: &[(&str, &[&str])]) {
        for (suite, packages) in suites {
            let dists = root.join(path).join("dists").join(suite);
            let index_dir = dists.join("main/binary-amd64");
            std::fs::create_dir_all(&index_dir).unwrap();
            let mut text = String::new();
            for p in *packages {
                let (name, provides) = p.split_once(" provides ").unwrap_or((p, ""));
                text.push_str(&format!("Package: {name}\nVersion: 1.0-1\nArchitecture: amd64\n"));
                if !provides.is_empty() {
                    text.push_str(&format!("Provides: {provides}\n"));
                }
                text.push('\n');
            }
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(text.as_bytes()).unwrap();
            let gz = gz.finish().unwrap();
            std::fs::write(index_dir.join("Packages.gz"), &gz).unwrap();
            let release = format!(
                "Origin: Test\nSuite: {suite}\nCodename: {suite}\nComponents: main\nSHA256:\n {} {} main/binary-amd64/Packages.gz\n",
                hex::encode(Sha256::digest(&gz)),
                gz.len()
            );
            std::fs::write(dists.join("InRelease"), release).unwrap();
        }
    }

    /// Serves `root` over HTTP on 127.0.0.1 for at most `requests`
    /// requests; returns the base URL.
    pub(crate) fn serve(root: &Path, requests: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let root = root.to_path_buf();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(requests) {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(&stream);
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    continue;
                }
                // The headers end at the first empty line.
                let mut header = String::new();
                while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                    header.clear();
                }
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let file = root.join(path.trim_start_matches('/'));
                let response = match std::fs::read(&file) {
                    Ok(body) if file.is_file() => {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend(body);
                        r
                    }
                    _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                };
                let _ = stream.write_all(&response);
            }
        });
        format!("http://{addr}")
    }

    #[test]
    fn release_files_list_their_indexes() {
        let release = ReleaseFile {
            url: "x".into(),
            text: "Codename: bookworm\nMD5Sum:\n 0ed6 12 main/binary-amd64/Packages.xz\nSHA256:\n ABCD 1484322 main/binary-amd64/Packages\n 9e0b 8790396 main/binary-amd64/Packages.xz\n".into(),
        };
        assert_eq!(
            release.sha256("main/binary-amd64/Packages.xz"),
            Some(("9e0b".into(), 8790396))
        );
        assert_eq!(
            release.sha256("main/binary-amd64/Packages"),
            Some(("abcd".into(), 1484322))
        );
        assert_eq!(release.sha256("main/binary-arm64/Packages"), None);
    }

    #[test]
    fn packages_index_names_and_provides() {
        let index = "Package: curl\nVersion: 7\nProvides: http-client (= 7), curl-bin\n\nPackage: exim4\nProvides: mail-transport-agent\n";
        let names = parse_packages(index.as_bytes()).unwrap();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(
            names,
            ["curl", "curl-bin", "exim4", "http-client", "mail-transport-agent"]
        );
    }

    #[test]
    fn fetches_over_http_and_then_from_the_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let served = tmp.path().join("www");
        write_archive(&served, "debian", &[("bookworm", &["curl", "vim"])]);
        let url = format!("{}/debian", serve(&served, 8));
        let archive = Archive::new(&tmp.path().join("cache"));

        let release = archive.release(&url, "bookworm").unwrap();
        assert_eq!(release.url, format!("{url}/dists/bookworm/InRelease"));
        let names = archive.package_names(&url, &release, "main", "amd64").unwrap();
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["curl", "vim"]);
        match archive.release(&url, "bookwurm") {
            Err(FetchError::NotFound(u)) => assert!(u.ends_with("/dists/bookwurm/Release"), "{u}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            archive.package_names(&url, &release, "contrib", "amd64"),
            Err(FetchError::NotFound(_))
        ));

        // With the files gone from the server, the cache answers.
        std::fs::remove_dir_all(&served).unwrap();
        let release = archive.release(&url, "bookworm").unwrap();
        let names = archive.package_names(&url, &release, "main", "amd64").unwrap();
        assert!(names.contains("vim"));
    }

    #[test]
    fn a_corrupt_index_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        write_archive(tmp.path(), "debian", &[("bookworm", &["curl"])]);
        let index = tmp.path().join("debian/dists/bookworm/main/binary-amd64/Packages.gz");
        let mut bytes = std::fs::read(&index).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&index, bytes).unwrap();
        let archive = Archive::new(&tmp.path().join("cache"));
        let url = format!("file://{}/debian", tmp.path().display());
        let release = archive.release(&url, "bookworm").unwrap();
        match archive.package_names(&url, &release, "main", "amd64") {
            Err(FetchError::Unavailable { why, .. }) => assert!(why.contains("SHA-256"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unreachable_archive_is_not_a_missing_one() {
        // A port that was free a moment ago: nothing listens there.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/debian", listener.local_addr().unwrap());
        drop(listener);
        let tmp = tempfile::tempdir().unwrap();
        let archive = Archive::new(tmp.path());
        assert!(matches!(
            archive.release(&url, "bookworm"),
            Err(FetchError::Unavailable { .. })
        ));
    }
}
