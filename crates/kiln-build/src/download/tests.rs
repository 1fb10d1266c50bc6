//! The downloader against a local HTTP server on 127.0.0.1.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::*;

/// A server that promises the whole image in its first answer, sends half
/// and hangs up, then answers `Range` requests with the rest. Written on a
/// bare socket: tiny_http keeps the read half of a connection open for
/// the next request, so it cannot cut a transfer short, and the client
/// would wait for the missing bytes instead.
fn serve_dropping_first(image: Vec<u8>) -> Server {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let r = Arc::clone(&ranges);
    let thread = std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut range = "-".to_owned();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("range") {
                        range = v.trim().to_owned();
                    }
                }
            }
            r.lock().unwrap().push(range.clone());
            let from = range
                .strip_prefix("bytes=")
                .and_then(|v| v.strip_suffix('-'))
                .and_then(|v| v.parse::<usize>().ok());
            let (head, body) = match (n, from) {
                (0, _) => (
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", image.len()),
                    &image[..image.len() / 2],
                ),
                (_, Some(from)) => (
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{}\r\nConnection: close\r\n\r\n",
                        image.len() - from,
                        image.len() - 1,
                        image.len()
                    ),
                    &image[from..],
                ),
                (_, None) => (
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", image.len()),
                    &image[..],
                ),
            };
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body);
            let _ = stream.shutdown(std::net::Shutdown::Both);
            if n == 1 {
                return;
            }
        }
    });
    Server {
        url: format!("http://127.0.0.1:{port}"),
        ranges,
        server: None,
        thread: Some(thread),
    }
}

struct Server {
    url: String,
    /// The `Range` header of each image request (`-` when absent).
    ranges: Arc<Mutex<Vec<String>>>,
    server: Option<Arc<tiny_http::Server>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = &self.server {
            s.unblock();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A tiny_http server of the image (honouring `Range`) and a SHA256SUMS.
fn serve(image: Vec<u8>, sums: String) -> Server {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let port = server.server_addr().to_ip().unwrap().port();
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let (s, r) = (Arc::clone(&server), Arc::clone(&ranges));
    let thread = std::thread::spawn(move || {
        for rq in s.incoming_requests() {
            let path = rq.url().to_owned();
            if path == "/SHA256SUMS" {
                let _ = rq.respond(tiny_http::Response::from_string(sums.clone()));
                continue;
            }
            if path != "/images/disk.qcow2" {
                let _ = rq.respond(tiny_http::Response::empty(404));
                continue;
            }
            let range = rq
                .headers()
                .iter()
                .find(|h| h.field.equiv("Range"))
                .map(|h| h.value.as_str().to_owned());
            r.lock().unwrap().push(range.clone().unwrap_or_else(|| "-".into()));
            let from = range
                .as_deref()
                .and_then(|v| v.strip_prefix("bytes="))
                .and_then(|v| v.strip_suffix('-'))
                .and_then(|v| v.parse::<usize>().ok());
            let response = match from {
                Some(from) => tiny_http::Response::from_data(image[from..].to_vec())
                    .with_chunked_threshold(usize::MAX)
                    .with_status_code(206)
                    .with_header(
                        tiny_http::Header::from_bytes(
                            &b"Content-Range"[..],
                            format!("bytes {from}-{}/{}", image.len() - 1, image.len()).as_bytes(),
                        )
                        .unwrap(),
                    ),
                None => tiny_http::Response::from_data(image.clone()).with_chunked_threshold(usize::MAX),
            };
            let _ = rq.respond(response);
        }
    });
    Server {
        url: format!("http://127.0.0.1:{port}"),
        ranges,
        server: Some(server),
        thread: Some(thread),
    }
}

fn image() -> Vec<u8> {
    (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn downloader(dir: &Path) -> Downloader {
    Downloader::new(dir).with_backoff(Duration::from_millis(10))
}

#[test]
fn a_checksum_mismatch_is_a_clear_error_and_caches_nothing() {
    let server = serve(image(), String::new());
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/images/disk.qcow2", server.url);
    let wrong = "0".repeat(64);
    let req = Request {
        url: &url,
        sha256: Some(&wrong),
        checksum_url: None,
        file_name: "disk.qcow2",
    };
    let err = downloader(dir.path()).fetch(&req, &mut |_, _| {}).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("checksum mismatch") && msg.contains(&sha(&image())),
        "{msg}"
    );
    assert!(msg.contains("nothing was cached"), "{msg}");
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request_and_verifies() {
    let bytes = image();
    let server = serve_dropping_first(bytes.clone());
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/images/disk.qcow2", server.url);
    let good = sha(&bytes);
    let req = Request {
        url: &url,
        sha256: Some(&good),
        checksum_url: None,
        file_name: "disk.qcow2",
    };
    let mut seen = Vec::new();
    let (path, got) = downloader(dir.path())
        .fetch(&req, &mut |done, total| seen.push((done, total)))
        .unwrap_or_else(|e| {
            panic!(
                "{e:#}; requests: {:?}; progress {:?}",
                server.ranges.lock().unwrap(),
                seen.iter()
                    .filter(|p| p.0 == 0 || p.0 % 1048576 == 0)
                    .collect::<Vec<_>>()
            )
        });
    assert_eq!(got, good);
    assert_eq!(fs::read(&path).unwrap(), bytes);
    let ranges = server.ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], "-");
    let from: u64 = ranges[1]
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a resumption: {ranges:?}"));
    assert!(from > 0 && from < bytes.len() as u64, "{ranges:?}");
    assert_eq!(seen.last(), Some(&(bytes.len() as u64, Some(bytes.len() as u64))));
    // From the cache now: no request at all.
    let (again, _) = downloader(dir.path()).fetch(&req, &mut |_, _| {}).unwrap();
    assert_eq!(again, path);
    assert_eq!(server.ranges.lock().unwrap().len(), 2);
}

#[test]
fn the_checksum_comes_from_a_sha256sums_file() {
    let bytes = image();
    let sums = format!("{}  other.qcow2\n{} *disk.qcow2\n", sha(b"other"), sha(&bytes));
    let server = serve(bytes.clone(), sums);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/images/disk.qcow2", server.url);
    let sums_url = format!("{}/SHA256SUMS", server.url);
    let req = Request {
        url: &url,
        sha256: None,
        checksum_url: Some(&sums_url),
        file_name: "disk.qcow2",
    };
    let (path, got) = downloader(dir.path()).fetch(&req, &mut |_, _| {}).unwrap();
    assert_eq!(got, sha(&bytes));
    assert_eq!(path, dir.path().join(format!("sha256-{got}")));
    let missing = Request {
        file_name: "absent.qcow2",
        ..req
    };
    let err = downloader(dir.path()).expected_sha256(&missing).unwrap_err();
    assert!(
        format!("{err:#}").contains("lists no SHA-256 for absent.qcow2"),
        "{err:#}"
    );
}

#[test]
fn a_missing_file_is_a_clear_error_without_retries() {
    let server = serve(image(), String::new());
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/images/nope.qcow2", server.url);
    let h = "a".repeat(64);
    let req = Request {
        url: &url,
        sha256: Some(&h),
        checksum_url: None,
        file_name: "nope.qcow2",
    };
    let err = downloader(dir.path()).fetch(&req, &mut |_, _| {}).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("HTTP 404") && msg.contains("check `url`"), "{msg}");
    let sums_url = format!("{}/NOSUMS", server.url);
    let req = Request {
        sha256: None,
        checksum_url: Some(&sums_url),
        ..req
    };
    let msg = format!("{:#}", downloader(dir.path()).fetch(&req, &mut |_, _| {}).unwrap_err());
    assert!(msg.contains("HTTP 404") && msg.contains("checksum_url"), "{msg}");
}

#[test]
fn sha256sums_lines_of_every_shape_are_read() {
    let a = "A".repeat(64);
    let b = "b".repeat(64);
    let c = "c".repeat(64);
    let text = format!(
        "# comment\n{a}  ./debian-12-genericcloud-amd64.qcow2\nSHA256 (Rocky-8-GenericCloud.qcow2) = {b}\n\
         {c}  sub/dir/arch.qcow2\nnot a line\n"
    );
    assert_eq!(
        lookup_sha256(&text, "debian-12-genericcloud-amd64.qcow2"),
        Some("a".repeat(64))
    );
    assert_eq!(lookup_sha256(&text, "Rocky-8-GenericCloud.qcow2"), Some(b));
    assert_eq!(lookup_sha256(&text, "arch.qcow2"), Some(c));
    assert_eq!(lookup_sha256(&text, "debian-12.qcow2"), None);
    assert_eq!(lookup_sha256("abc  x.qcow2\n", "x.qcow2"), None);
}
