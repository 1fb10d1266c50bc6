//! `kiln serve`: hosts a build's artifacts over HTTP for OVHcloud's
//! `imageURL` (the installer downloads the image, then its checksum), or
//! for anything else that fetches them by URL.
//!
//! Read-only: GET and HEAD of the regular files of one directory (and its
//! subdirectories), never outside it (no `..`, and a symlink is followed
//! only when its target is inside the directory), never a hidden or
//! half-written file (`.name`, `*.part`). A single byte range per request
//! (`bytes=a-b`, `a-`, `-n`) gets 206 with `Content-Range`, an
//! unsatisfiable one 416; a malformed or multi-range header is ignored and
//! the whole file sent, as RFC 9110 allows. With [`Auth`], a request
//! without the matching `Authorization: Basic` header gets 401 and a
//! `WWW-Authenticate` challenge. Every request is handed to an access-log
//! callback (never with its credentials).
//!
//! The HTTP/1.1 parsing is tiny_http's; this module only maps paths and
//! ranges. Non-goals: TLS (put a reverse proxy in front), directory
//! listings, multipart ranges, conditional requests, compression.

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

/// The default address: loopback only, so nothing is exposed by accident.
pub const DEFAULT_BIND: &str = "127.0.0.1:8080";

/// Requests answered at once.
const WORKERS: usize = 4;

/// Basic authentication: a user name and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Auth {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth").field("user", &self.user).finish_non_exhaustive()
    }
}

impl Auth {
    /// Parses `USER:PASS` (the password may contain colons, the user may not).
    pub fn parse(s: &str) -> Result<Auth, String> {
        match s.split_once(':') {
            Some((user, password)) if !user.is_empty() && !password.is_empty() => Ok(Auth {
                user: user.to_owned(),
                password: password.to_owned(),
            }),
            _ => Err("expected USER:PASS, both non-empty".to_owned()),
        }
    }

    /// The value of the `Authorization` header a client must send:
    /// `Basic base64(user:password)`.
    pub fn header_value(&self) -> String {
        format!("Basic {}", BASE64.encode(format!("{}:{}", self.user, self.password)))
    }
}

/// One answered request, for the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub client: Option<SocketAddr>,
    pub method: String,
    /// The request target as sent (path and query).
    pub target: String,
    pub status: u16,
    /// Body bytes the answer carries (0 for HEAD and refusals).
    pub bytes: u64,
    /// The byte range served, for 206.
    pub range: Option<(u64, u64)>,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let client = self.client.map_or_else(|| "-".to_owned(), |a| a.to_string());
        write!(
            f,
            "{client} \"{} {}\" {} {}",
            self.method,
            self.target.escape_debug(),
            self.status,
            self.bytes
        )?;
        if let Some((a, b)) = self.range {
            write!(f, " bytes {a}-{b}")?;
        }
        Ok(())
    }
}

/// What the access log is written with.
pub type AccessLog = Arc<dyn Fn(&Access) + Send + Sync>;

/// A running server; [`FileServer::stop`] or dropping it stops it.
pub struct FileServer {
    server: Arc<tiny_http::Server>,
    root: PathBuf,
    addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl fmt::Debug for FileServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileServer")
            .field("addr", &self.addr)
            .field("root", &self.root)
            .finish()
    }
}

impl FileServer {
    /// Serves `dir` on `bind` (`ADDR:PORT`; port 0 picks a free one).
    pub fn start(dir: &Path, bind: &str, auth: Option<Auth>, log: AccessLog) -> Result<FileServer> {
        let root = dir
            .canonicalize()
            .with_context(|| format!("{}: cannot open the directory to serve", dir.display()))?;
        if !root.is_dir() {
            bail!("{}: not a directory", dir.display());
        }
        let server = tiny_http::Server::http(bind).map_err(|e| {
            anyhow::anyhow!("cannot listen on {bind}: {e} (is the port in use? pick another with --bind)")
        })?;
        let addr = server
            .server_addr()
            .to_ip()
            .context("the server is not on a TCP address")?;
        let server = Arc::new(server);
        let expected = auth.as_ref().map(Auth::header_value);
        let mut threads = Vec::new();
        for i in 0..WORKERS {
            let server = Arc::clone(&server);
            let root = root.clone();
            let expected = expected.clone();
            let log = Arc::clone(&log);
            let thread = std::thread::Builder::new()
                .name(format!("kiln-serve-{i}"))
                .spawn(move || {
                    // Ends when `unblock` is called.
                    for request in server.incoming_requests() {
                        let access = answer(&root, expected.as_deref(), request);
                        log(&access);
                    }
                })
                .context("starting the server's threads")?;
            threads.push(thread);
        }
        Ok(FileServer {
            server,
            root,
            addr,
            threads,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The served directory, canonical.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Blocks until [`kiln_exec::interrupted`] (Ctrl-C), then stops.
    pub fn wait_for_interrupt(self) {
        while !kiln_exec::interrupted() {
            std::thread::sleep(Duration::from_millis(200));
        }
        self.stop();
    }

    /// Stops serving (answers in progress are finished first).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        for _ in &self.threads {
            self.server.unblock();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The files a client may fetch from `dir`: regular, not hidden, not
/// `*.part`, relative paths, sorted. Subdirectories are walked; symlinks
/// that leave `dir` are left out, as the server refuses them.
pub fn artifacts(dir: &Path) -> Result<Vec<String>> {
    let root = dir
        .canonicalize()
        .with_context(|| format!("{}: cannot open the directory to serve", dir.display()))?;
    let mut found = Vec::new();
    walk(&root, &root, &mut found)?;
    found.sort();
    Ok(found)
}

fn walk(root: &Path, dir: &Path, found: &mut Vec<String>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !servable_name(&name) {
            continue;
        }
        let path = entry.path();
        let Ok(real) = path.canonicalize() else { continue };
        if !real.starts_with(root) {
            continue;
        }
        if real.is_dir() && entry.file_type()?.is_dir() {
            walk(root, &path, found)?;
        } else if real.is_file() {
            if let Ok(rel) = path.strip_prefix(root) {
                found.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    Ok(())
}

/// Hidden files and half-written outputs are never served.
fn servable_name(name: &str) -> bool {
    !name.starts_with('.') && !name.ends_with(".part")
}

/// Why a request was refused; the client sees only the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    NotFound,
    Unauthorized,
    Method,
}

/// The file a request target names inside `root`, or why not.
/// The file under `root` that a request target names (used by the fuzzer).
pub fn resolve_target(root: &Path, target: &str) -> Option<PathBuf> {
    resolve(root, target).ok()
}

fn resolve(root: &Path, target: &str) -> Result<PathBuf, Refusal> {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let decoded = percent_decode(path).ok_or(Refusal::NotFound)?;
    if !decoded.starts_with('/') || decoded.contains('\0') || decoded.contains('\\') {
        return Err(Refusal::NotFound);
    }
    let rel = Path::new(&decoded[1..]);
    let mut joined = root.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(name) if servable_name(&name.to_string_lossy()) => joined.push(name),
            _ => return Err(Refusal::NotFound),
        }
    }
    // Symlinks resolved: the file must still be inside the root.
    let real = joined.canonicalize().map_err(|_| Refusal::NotFound)?;
    if real.starts_with(root) && real.is_file() {
        Ok(real)
    } else {
        Err(Refusal::NotFound)
    }
}

/// Decodes `%XX` escapes; `None` if one is malformed or the result is not UTF-8.
/// Hand-written: a dozen lines, where a crate would add a dependency for one call.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A byte range asked for, resolved against the file's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// No usable `Range` header: the whole file.
    Whole,
    /// Bytes `first..=last`.
    Part { first: u64, last: u64 },
    /// Nothing of the file can satisfy it (416).
    Unsatisfiable,
}

/// Reads a `Range` header for a file of `len` bytes: one range of
/// `bytes=a-b`, `bytes=a-` or `bytes=-n`; anything else (other units,
/// several ranges, garbage) is ignored, giving the whole file.
pub fn parse_range(header: Option<&str>, len: u64) -> Range {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Range::Whole;
    };
    if spec.contains(',') {
        return Range::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Range::Whole;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.trim().is_empty(), b.trim().is_empty()) {
        // -n: the last n bytes.
        (true, false) => match num(b) {
            Some(0) => Range::Unsatisfiable,
            Some(_) if len == 0 => Range::Unsatisfiable,
            Some(n) => Range::Part {
                first: len.saturating_sub(n),
                last: len - 1,
            },
            None => Range::Whole,
        },
        // a-: from a to the end.
        (false, true) => match num(a) {
            Some(first) if first < len => Range::Part { first, last: len - 1 },
            Some(_) => Range::Unsatisfiable,
            None => Range::Whole,
        },
        (false, false) => match (num(a), num(b)) {
            (Some(first), Some(last)) if first > last => Range::Whole,
            (Some(first), Some(_)) if first >= len => Range::Unsatisfiable,
            (Some(first), Some(last)) => Range::Part {
                first,
                last: last.min(len - 1),
            },
            _ => Range::Whole,
        },
        (true, true) => Range::Whole,
    }
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("ASCII header")
}

/// Compares without stopping at the first difference, so the time taken
/// says nothing about how much of a guessed password was right.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("sha512" | "sha256" | "md5" | "txt") => "text/plain; charset=utf-8",
        Some("json") => "application/json",
        _ => match path.file_name().and_then(|n| n.to_str()) {
            Some("SHA512SUMS" | "SHA256SUMS") => "text/plain; charset=utf-8",
            _ => "application/octet-stream",
        },
    }
}

/// Answers one request and says what was done.
fn answer(root: &Path, expected_auth: Option<&str>, request: tiny_http::Request) -> Access {
    let mut access = Access {
        client: request.remote_addr().copied(),
        method: request.method().as_str().to_owned(),
        target: request.url().to_owned(),
        status: 0,
        bytes: 0,
        range: None,
    };
    let find = |name: &str| {
        request
            .headers()
            .iter()
            .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str().to_owned())
    };
    let refuse = |request: tiny_http::Request, why: Refusal, access: &mut Access| {
        let (status, body): (u16, &str) = match why {
            Refusal::NotFound => (404, "not found\n"),
            Refusal::Unauthorized => (401, "authentication required\n"),
            Refusal::Method => (405, "only GET and HEAD\n"),
        };
        let mut response = tiny_http::Response::from_string(body)
            .with_status_code(status)
            .with_header(header("Content-Type", "text/plain; charset=utf-8"));
        match why {
            Refusal::Unauthorized => {
                response.add_header(header("WWW-Authenticate", "Basic realm=\"kiln\", charset=\"UTF-8\""))
            }
            Refusal::Method => response.add_header(header("Allow", "GET, HEAD")),
            Refusal::NotFound => {}
        }
        access.status = status;
        let _ = request.respond(response);
    };
    if let Some(expected) = expected_auth {
        let given = find("Authorization").unwrap_or_default();
        if !same_secret(given.trim().as_bytes(), expected.as_bytes()) {
            refuse(request, Refusal::Unauthorized, &mut access);
            return access;
        }
    }
    let head = match request.method() {
        tiny_http::Method::Get => false,
        tiny_http::Method::Head => true,
        _ => {
            refuse(request, Refusal::Method, &mut access);
            return access;
        }
    };
    let path = match resolve(root, request.url()) {
        Ok(p) => p,
        Err(why) => {
            refuse(request, why, &mut access);
            return access;
        }
    };
    let opened = File::open(&path).and_then(|f| f.metadata().map(|m| (f, m.len())));
    let Ok((mut file, len)) = opened else {
        refuse(request, Refusal::NotFound, &mut access);
        return access;
    };
    let common = [
        header("Accept-Ranges", "bytes"),
        header("Content-Type", content_type(&path)),
    ];
    let (status, first, count) = match parse_range(find("Range").as_deref(), len) {
        Range::Whole => (200, 0, len),
        Range::Part { first, last } => (206, first, last - first + 1),
        Range::Unsatisfiable => {
            let response = tiny_http::Response::empty(416)
                .with_header(header("Content-Range", &format!("bytes */{len}")))
                .with_header(common[0].clone());
            access.status = 416;
            let _ = request.respond(response);
            return access;
        }
    };
    if first > 0 && file.seek(SeekFrom::Start(first)).is_err() {
        refuse(request, Refusal::NotFound, &mut access);
        return access;
    }
    let mut headers = common.to_vec();
    if status == 206 {
        headers.push(header(
            "Content-Range",
            &format!("bytes {first}-{}/{len}", first + count - 1),
        ));
        access.range = Some((first, first + count - 1));
    }
    let Ok(length) = usize::try_from(count) else {
        refuse(request, Refusal::NotFound, &mut access);
        return access;
    };
    // Always Content-Length, never chunked: downloaders show progress and
    // check the size with it.
    let response = tiny_http::Response::new(status.into(), headers, file.take(count), Some(length), None)
        .with_chunked_threshold(usize::MAX);
    access.status = status;
    access.bytes = if head { 0 } else { count };
    // The client may hang up mid-download (and resume later).
    let _ = request.respond(response);
    access
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use Range::*;
        let cases: &[(Option<&str>, u64, Range)] = &[
            (None, 10, Whole),
            (Some("bytes=0-4"), 10, Part { first: 0, last: 4 }),
            (Some("bytes=5-"), 10, Part { first: 5, last: 9 }),
            (Some("bytes=-3"), 10, Part { first: 7, last: 9 }),
            (Some("bytes=-30"), 10, Part { first: 0, last: 9 }),
            (Some("bytes=8-100"), 10, Part { first: 8, last: 9 }),
            (Some("bytes=10-"), 10, Unsatisfiable),
            (Some("bytes=10-12"), 10, Unsatisfiable),
            (Some("bytes=-0"), 10, Unsatisfiable),
            (Some("bytes=-1"), 0, Unsatisfiable),
            (Some("bytes=0-"), 0, Unsatisfiable),
            (Some("bytes=4-2"), 10, Whole),
            (Some("bytes=0-1,4-5"), 10, Whole),
            (Some("items=0-4"), 10, Whole),
            (Some("bytes=x-4"), 10, Whole),
            (Some("bytes=-"), 10, Whole),
            (Some("bytes=+1-2"), 10, Whole),
        ];
        for (h, len, want) in cases {
            assert_eq!(parse_range(*h, *len), *want, "{h:?} of {len}");
        }
    }

    #[test]
    fn paths_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join("a.qcow2"), b"x").unwrap();
        std::fs::write(root.join("a b.qcow2"), b"x").unwrap();
        std::fs::write(root.join(".hidden"), b"x").unwrap();
        std::fs::write(root.join("x.qcow2.part"), b"x").unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/b"), b"x").unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.join("escape")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("escape-dir")).unwrap();
        std::os::unix::fs::symlink(root.join("a.qcow2"), root.join("inside")).unwrap();

        for ok in ["/a.qcow2", "/a%20b.qcow2", "/sub/b", "/inside", "/a.qcow2?x=1"] {
            assert!(resolve(&root, ok).is_ok(), "{ok}");
        }
        for bad in [
            "/../etc/passwd",
            "/sub/../a.qcow2",
            "/%2e%2e/etc/passwd",
            "/..%2fetc%2fpasswd",
            "//etc/passwd",
            "/escape",
            "/escape-dir/secret",
            "/.hidden",
            "/x.qcow2.part",
            "/sub",
            "/",
            "/nope",
            "/a%zz",
            "/a%00",
            "a.qcow2",
            "/sub\\b",
        ] {
            assert_eq!(resolve(&root, bad), Err(Refusal::NotFound), "{bad}");
        }
        assert_eq!(artifacts(&root).unwrap(), ["a b.qcow2", "a.qcow2", "inside", "sub/b"]);
    }

    #[test]
    fn auth_header_and_parse() {
        let a = Auth::parse("ovh:s3:cret").unwrap();
        assert_eq!(a.user, "ovh");
        assert_eq!(a.password, "s3:cret");
        assert_eq!(a.header_value(), format!("Basic {}", BASE64.encode("ovh:s3:cret")));
        assert!(Auth::parse("nopass").is_err());
        assert!(Auth::parse(":x").is_err());
        assert!(!format!("{a:?}").contains("s3:cret"));
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"ab", b"abc"));
    }
}
