//! Downloads of base images (`[base] image`): a cache keyed by the
//! image's SHA-256, resumable downloads (HTTP `Range` on a `.part` file),
//! retries, progress, and verification before anything uses the file.
//!
//! A file enters the cache only once its SHA-256 matches: a mismatch
//! deletes the partial file and caches nothing, so the next attempt starts
//! from scratch instead of resuming bytes that were wrong. Concurrent
//! builds of the same image take turns on a lock file. Non-goals: mirrors,
//! signatures (the checksum, or the `SHA256SUMS` it comes from, is the
//! trust anchor the spec names), other digests than SHA-256.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// Attempts per file before a download is given up; each resumes where
/// the previous one stopped.
const ATTEMPTS: u32 = 4;
/// A `SHA256SUMS` file larger than this is not one.
const MAX_SUMS: u64 = 4 << 20;

/// What to download and how to check it.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub url: &'a str,
    /// The SHA-256 in lower-case hex, if the spec gives it.
    pub sha256: Option<&'a str>,
    /// Else a `SHA256SUMS` that lists `file_name`.
    pub checksum_url: Option<&'a str>,
    /// The name the `SHA256SUMS` lists (the URL's last path segment).
    pub file_name: &'a str,
}

/// Progress of a download: bytes so far, and the total when known.
pub type Progress<'a> = &'a mut dyn FnMut(u64, Option<u64>);

/// The downloader: an HTTP agent and the cache directory.
pub struct Downloader {
    dir: PathBuf,
    agent: ureq::Agent,
    /// Pause before retry `n` is `backoff * 2^(n-1)` (tests shorten it).
    backoff: Duration,
    /// Attempts per request.
    attempts: u32,
}

impl Downloader {
    /// A downloader caching under `dir` (created on first use).
    pub fn new(dir: &Path) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            // A cloud image is hundreds of MiB on a slow link; a stalled
            // transfer is cut here and then resumed by the next attempt.
            .timeout_recv_body(Some(Duration::from_secs(3 * 3600)))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build();
        Downloader {
            dir: dir.to_path_buf(),
            agent: config.into(),
            backoff: Duration::from_secs(2),
            attempts: ATTEMPTS,
        }
    }

    /// One attempt per request, no retries (planning, which must not hang).
    pub fn once(mut self) -> Self {
        self.attempts = 1;
        self
    }

    /// Shorter pauses between attempts (tests).
    pub fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// The cached file of `sha256`, where [`Downloader::fetch`] puts it.
    pub fn cached_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("sha256-{sha256}"))
    }

    /// The SHA-256 `req` must have: the spec's, or the one its
    /// `SHA256SUMS` lists for the file.
    pub fn expected_sha256(&self, req: &Request<'_>) -> Result<String> {
        if let Some(h) = req.sha256 {
            return Ok(h.to_ascii_lowercase());
        }
        let Some(sums_url) = req.checksum_url else {
            bail!("the image {} has neither `checksum` nor `checksum_url`", req.url);
        };
        let text = self
            .small(sums_url)
            .with_context(|| format!("downloading the checksum list {sums_url}"))?;
        lookup_sha256(&text, req.file_name).with_context(|| {
            format!(
                "{sums_url} lists no SHA-256 for {}; check `checksum_url` (the list must name the file at the end of `url`)",
                req.file_name
            )
        })
    }

    /// The verified file of `req` in the cache: from there if present
    /// (checked again), else downloaded (resuming a partial download of an
    /// earlier run), verified and then cached. Returns the path and the
    /// SHA-256.
    pub fn fetch(&self, req: &Request<'_>, progress: Progress<'_>) -> Result<(PathBuf, String)> {
        let sha256 = self.expected_sha256(req)?;
        fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let done = self.cached_path(&sha256);
        let lock_path = self.dir.join(format!("sha256-{sha256}.lock"));
        let lock = File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
        lock.lock()
            .with_context(|| format!("locking {}", lock_path.display()))?;
        if done.exists() {
            let got = sha256_file(&done)?;
            if got == sha256 {
                return Ok((done, sha256));
            }
            // Damaged on disk since: fetch it again.
            fs::remove_file(&done).with_context(|| format!("removing the damaged {}", done.display()))?;
        }
        let part = self.dir.join(format!("sha256-{sha256}.part"));
        if let Some(path) = req.url.strip_prefix("file://") {
            fs::copy(path, &part).with_context(|| format!("copying {path}"))?;
        } else {
            self.download(req.url, &part, progress)?;
        }
        let got = sha256_file(&part)?;
        if got != sha256 {
            let _ = fs::remove_file(&part);
            bail!(
                "checksum mismatch for {}: expected sha256:{sha256}, got sha256:{got}; nothing was cached. \
                 The download was damaged or the image changed on the server: check the URL and the checksum \
                 in [base] image, then build again",
                req.url
            );
        }
        fs::rename(&part, &done).with_context(|| format!("storing {}", done.display()))?;
        Ok((done, sha256))
    }

    /// Downloads `url` into `part`, resuming what it holds; retried.
    fn download(&self, url: &str, part: &Path, progress: Progress<'_>) -> Result<()> {
        let mut last: Option<anyhow::Error> = None;
        for attempt in 1..=self.attempts {
            kiln_exec::check_interrupted()?;
            if attempt > 1 {
                std::thread::sleep(self.backoff * 2u32.pow(attempt - 2));
            }
            match self.attempt(url, part, progress) {
                Ok(()) => return Ok(()),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(e)) => {
                    tracing::info!("downloading {url}: {e:#}; attempt {attempt} of {}", self.attempts);
                    last = Some(e);
                }
            }
        }
        Err(last
            .unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
            .context(format!("downloading {url}: gave up after {} attempts", self.attempts)))
    }

    /// One request: with `Range` when `part` holds bytes already.
    fn attempt(&self, url: &str, part: &Path, progress: Progress<'_>) -> Result<(), Attempt> {
        let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        let mut request = self.agent.get(url);
        if have > 0 {
            request = request.header("Range", format!("bytes={have}-"));
        }
        let mut response = match request.call() {
            Ok(r) => r,
            Err(ureq::Error::StatusCode(416)) if have > 0 => {
                // The partial file is as long as the file (or longer):
                // let the checksum decide, after a fresh start if wrong.
                return Ok(());
            }
            Err(ureq::Error::StatusCode(code @ (404 | 410))) => {
                return Err(Attempt::Fatal(anyhow::anyhow!(
                    "{url}: HTTP {code}, no such file on the server; check `url` in [base] image"
                )))
            }
            Err(ureq::Error::StatusCode(code)) if (400..500).contains(&code) && code != 408 && code != 429 => {
                return Err(Attempt::Fatal(anyhow::anyhow!(
                    "{url}: the server refused it (HTTP {code})"
                )))
            }
            Err(e) => return Err(Attempt::Retry(anyhow::Error::new(e))),
        };
        let resumed = response.status().as_u16() == 206;
        let mut file = if resumed {
            OpenOptions::new().append(true).open(part)
        } else {
            File::create(part)
        }
        .map_err(|e| Attempt::Fatal(anyhow::Error::new(e).context(format!("opening {}", part.display()))))?;
        let mut done = if resumed { have } else { 0 };
        let total = response.body().content_length().map(|n| n + done);
        progress(done, total);
        let mut reader = response.body_mut().as_reader();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = file.flush();
                    return Err(Attempt::Retry(
                        anyhow::Error::new(e).context(format!("the transfer broke off after {done} bytes")),
                    ));
                }
            };
            file.write_all(&buf[..n])
                .map_err(|e| Attempt::Fatal(anyhow::Error::new(e).context(format!("writing {}", part.display()))))?;
            done += n as u64;
            progress(done, total);
            if kiln_exec::check_interrupted().is_err() {
                return Err(Attempt::Fatal(anyhow::anyhow!("interrupted")));
            }
        }
        if total.is_some_and(|t| done < t) {
            return Err(Attempt::Retry(anyhow::anyhow!(
                "the transfer broke off after {done} of {} bytes",
                total.unwrap_or(0)
            )));
        }
        file.sync_all()
            .map_err(|e| Attempt::Fatal(anyhow::Error::new(e).context(format!("writing {}", part.display()))))?;
        Ok(())
    }

    /// A small text file (a checksum list), with retries.
    fn small(&self, url: &str) -> Result<String> {
        if let Some(path) = url.strip_prefix("file://") {
            return fs::read_to_string(path).with_context(|| format!("reading {path}"));
        }
        let mut last = None;
        for attempt in 1..=self.attempts {
            if attempt > 1 {
                std::thread::sleep(self.backoff * 2u32.pow(attempt - 2));
            }
            match self.agent.get(url).call() {
                Ok(mut r) => match r.body_mut().with_config().limit(MAX_SUMS).read_to_string() {
                    Ok(text) => return Ok(text),
                    Err(e) => last = Some(anyhow::Error::new(e)),
                },
                Err(ureq::Error::StatusCode(code @ (404 | 410))) => {
                    bail!("{url}: HTTP {code}, no such file on the server; check `checksum_url` in [base] image")
                }
                Err(ureq::Error::StatusCode(code)) if (400..500).contains(&code) => {
                    bail!("{url}: the server refused it (HTTP {code})")
                }
                Err(e) => last = Some(anyhow::Error::new(e)),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
    }
}

enum Attempt {
    /// Worth another try (connection lost, server error).
    Retry(anyhow::Error),
    /// Not (404, a local write error, Ctrl-C).
    Fatal(anyhow::Error),
}

/// The SHA-256 of `name` in a checksum list: GNU `sha256sum` lines
/// (`HEX  name`, `HEX *name`, paths allowed: the last segment is compared
/// when no line names the file exactly) or BSD lines (`SHA256 (name) = HEX`,
/// as Fedora and Rocky publish them).
pub fn lookup_sha256(text: &str, name: &str) -> Option<String> {
    let is_hex = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
    let mut by_segment = None;
    for line in text.lines().map(str::trim) {
        let (hex, listed) = if let Some(rest) = line.strip_prefix("SHA256 (") {
            let Some((listed, hex)) = rest.rsplit_once(") = ") else {
                continue;
            };
            (hex.trim(), listed)
        } else {
            let Some((hex, listed)) = line.split_once(char::is_whitespace) else {
                continue;
            };
            let listed = listed.trim_start();
            (hex, listed.strip_prefix('*').unwrap_or(listed))
        };
        if !is_hex(hex) {
            continue;
        }
        let listed = listed.strip_prefix("./").unwrap_or(listed);
        if listed == name {
            return Some(hex.to_ascii_lowercase());
        }
        if by_segment.is_none() && listed.rsplit('/').next() == Some(name) {
            by_segment = Some(hex.to_ascii_lowercase());
        }
    }
    by_segment
}

/// The SHA-256 of a file, in lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests;
