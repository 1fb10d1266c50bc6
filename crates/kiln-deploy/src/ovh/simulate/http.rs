//! The image server of the replay: serves one file over HTTP on the host's
//! loopback, which the rescue VM reaches only through a forward of QEMU's
//! restricted user network (`IMAGE_SERVER_ADDR`:80 in the guest; see
//! `kiln_vm::network`), and refuses requests that lack the headers the API call would
//! send (`customizations.httpHeaders`), so that the replay proves they are
//! passed along.
//!
//! Hand-written on std's TcpListener: it serves a single file to a single
//! client with a handful of request headers, which does not warrant an HTTP
//! framework and its async runtime.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// One request the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    pub status: u16,
}

/// A running server; stops when dropped.
pub struct ImageServer {
    port: u16,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<Request>>>,
    thread: Option<JoinHandle<()>>,
}

impl ImageServer {
    /// Serves `file` as `/<name>` on 127.0.0.1, requiring every header of
    /// `required` (names case-insensitive, values exact).
    pub fn start(file: &Path, name: &str, required: Vec<(String, String)>) -> Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).context("binding the image server to 127.0.0.1")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (file, name) = (file.to_owned(), format!("/{name}"));
        let thread = {
            let (stop, requests) = (Arc::clone(&stop), Arc::clone(&requests));
            std::thread::spawn(move || serve(listener, &file, &name, &required, &stop, &requests))
        };
        Ok(ImageServer {
            port,
            stop,
            requests,
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Requests answered so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for ImageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    listener: TcpListener,
    file: &Path,
    name: &str,
    required: &[(String, String)],
    stop: &AtomicBool,
    requests: &Mutex<Vec<Request>>,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = answer(stream, file, name, required, requests);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Answers one request, recording it before the response goes out.
fn answer(
    mut stream: TcpStream,
    file: &Path,
    name: &str,
    required: &[(String, String)],
    requests: &Mutex<Vec<Request>>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_owned(),
        parts.next().unwrap_or("").to_owned(),
    );
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let has = |k: &str, v: &str| headers.iter().any(|(hk, hv)| hk == &k.to_ascii_lowercase() && hv == v);
    let status = if method != "GET" && method != "HEAD" {
        405
    } else if path != name {
        404
    } else if !required.iter().all(|(k, v)| has(k, v)) {
        403
    } else {
        200
    };
    requests.lock().unwrap().push(Request { path, status });
    if status != 200 {
        let body = format!("{status}\n");
        write!(
            stream,
            "HTTP/1.1 {status} Error\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    }
    let mut f = std::fs::File::open(file)?;
    let len = f.metadata()?.len();
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )?;
    if method == "GET" {
        std::io::copy(&mut f, &mut stream)?;
    }
    stream.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(port: u16, path: &str, headers: &[&str]) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        let text = String::from_utf8_lossy(&resp);
        let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = resp[text.find("\r\n\r\n").unwrap() + 4..].to_vec();
        (status, body)
    }

    #[test]
    fn serves_the_file_only_with_the_headers() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("img");
        std::fs::write(&f, b"qcow2 bytes").unwrap();
        let server = ImageServer::start(&f, "x.qcow2", vec![("Authorization".into(), "Basic abc".into())]).unwrap();
        assert_eq!(get(server.port(), "/x.qcow2", &[]).0, 403);
        assert_eq!(
            get(server.port(), "/x.qcow2", &["authorization: Basic abc"]),
            (200, b"qcow2 bytes".to_vec())
        );
        assert_eq!(get(server.port(), "/other", &["Authorization: Basic abc"]).0, 404);
        let statuses: Vec<u16> = server.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [403, 200, 404]);
    }
}
