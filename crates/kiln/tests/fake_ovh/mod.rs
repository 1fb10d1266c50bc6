//! A fake OVH API on 127.0.0.1 (tiny_http), shared by the test binaries
//! (`mod fake_ovh;`). Its clock runs 1000 s ahead of this machine's, so only
//! a client that takes the API's time from `GET /auth/time` signs acceptable
//! requests; it recomputes every signature itself (its own SHA-1 of secret,
//! consumer key, method, full URL, body and timestamp), validates every
//! reinstall body against OVH's schema (kiln-deploy's validator), and plays
//! an install through OVH's step list, per [`Scenario`].
//!
//! Started with [`Fake::start_fetching`], it does at step 9 ("Downloading
//! image") what OVH's installer does: it downloads the body's `imageURL`
//! with its `httpHeaders` and checks the bytes against `imageCheckSum`
//! (`imageCheckSumType`); a download that fails fails step 9, a checksum
//! that differs fails step 10 ("Checking image"), each with the error that
//! `install/status` reports.

#![allow(dead_code)]

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sha1::{Digest, Sha1};

pub const AK: &str = "fakeApplicationKey";
pub const AS: &str = "fakeApplicationSecret-0123456789";
pub const CK: &str = "fakeConsumerKey-0123456789abcdef";
pub const SERVICE: &str = "ns1234567.ip-1-2-3.eu";
pub const HEADER_SECRET: &str = "Basic c2VjcmV0LXVzZXI6c2VjcmV0LXBhc3M=";
/// The fake API's clock minus this machine's.
pub const SKEW: i64 = 1000;
pub const TASK: u64 = 4242;

pub const STEPS: [&str; 17] = [
    "Preparing installation",
    "Checking hardware",
    "Cleaning disks",
    "Setting up hardware RAID",
    "Setting up partitions",
    "Setting up software RAID",
    "Formatting partitions",
    "Creating config drive",
    "Downloading image",
    "Checking image",
    "Mounting image",
    "Deploying image",
    "Writing fstab",
    "Setting up bootloader",
    "Running BYOLinux Configure",
    "Cleaning up",
    "Rebooting",
];

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scenario {
    Success,
    /// make_image_bootable.sh fails: step 15 ends in error.
    FailAt15,
    /// A task is already running: the POST gets 409.
    Busy,
    /// The consumer key lacks POST /dedicated/server/*/reinstall.
    Forbidden,
    /// The first N POSTs get 503.
    Flaky(usize),
    /// byolinux_64 is not among the server's templates.
    NotByolinux,
    /// The consumer key has expired: every signed call is refused.
    Expired,
}

#[derive(Default)]
pub struct State {
    /// Method and path of every request.
    pub requests: Vec<String>,
    /// Every signature or schema check that failed.
    pub problems: Vec<String>,
    pub bodies: Vec<Value>,
    pub posts: usize,
    /// install/status polls since the POST.
    pub polls: usize,
    /// With [`Fake::start_fetching`]: step 9's download of the last body's image.
    pub download: Option<Download>,
    /// The step that failed (1-based) and its error, once a fetch failed.
    pub failed: Option<(usize, String)>,
}

/// What the fake's step 9 got from `imageURL`.
#[derive(Debug, Clone, Default)]
pub struct Download {
    pub url: String,
    /// The `httpHeaders` sent with it, by name.
    pub headers: Vec<(String, String)>,
    /// Bytes of the body received.
    pub bytes: u64,
    /// The digest of those bytes (hex) with `imageCheckSumType`, when a checksum was given.
    pub checksum: Option<String>,
    /// The download's error; none if the whole body came.
    pub error: Option<String>,
}

pub struct Fake {
    server: Arc<tiny_http::Server>,
    pub base: String,
    state: Arc<Mutex<State>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

impl Fake {
    pub fn start(scenario: Scenario) -> Fake {
        Fake::new(scenario, false)
    }

    /// Like [`Fake::start`], but step 9 really downloads and checks the image.
    pub fn start_fetching(scenario: Scenario) -> Fake {
        Fake::new(scenario, true)
    }

    fn new(scenario: Scenario, fetch: bool) -> Fake {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let base = format!("http://{}/1.0", server.server_addr().to_ip().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let (s, st, b) = (Arc::clone(&server), Arc::clone(&state), base.clone());
        let thread = std::thread::spawn(move || {
            while let Ok(mut req) = s.recv() {
                let mut body = String::new();
                let _ = req.as_reader().read_to_string(&mut body);
                let (status, answer) = answer(scenario, fetch, &b, &req, &body, &mut st.lock().unwrap());
                let resp = tiny_http::Response::from_string(answer.to_string())
                    .with_status_code(status)
                    .with_header("Content-Type: application/json".parse::<tiny_http::Header>().unwrap());
                let _ = req.respond(resp);
            }
        });
        Fake {
            server,
            base,
            state,
            thread: Some(thread),
        }
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}

fn header(req: &tiny_http::Request, name: &'static str) -> Option<String> {
    req.headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str().to_owned())
}

/// The fake's own check of a request's signature.
fn check_signature(base: &str, req: &tiny_http::Request, body: &str) -> Result<(), String> {
    let path = req.url();
    let ak = header(req, "X-Ovh-Application").ok_or("no X-Ovh-Application")?;
    let ck = header(req, "X-Ovh-Consumer").ok_or("no X-Ovh-Consumer")?;
    let ts = header(req, "X-Ovh-Timestamp").ok_or("no X-Ovh-Timestamp")?;
    let sig = header(req, "X-Ovh-Signature").ok_or("no X-Ovh-Signature")?;
    if ak != AK || ck != CK {
        return Err(format!("{path}: unknown keys {ak}/{ck}"));
    }
    let t: i64 = ts.parse().map_err(|_| format!("{path}: timestamp {ts:?}"))?;
    if (t - (now() + SKEW)).abs() > 10 {
        return Err(format!("{path}: timestamp {t} is not the API's time"));
    }
    let url = format!("{base}{}", path.trim_start_matches("/1.0"));
    let text = format!("{AS}+{CK}+{}+{url}+{body}+{ts}", req.method().as_str().to_uppercase());
    let want = format!("$1${}", hex::encode(Sha1::digest(text.as_bytes())));
    if sig != want {
        return Err(format!("{path}: signature {sig} is not {want}"));
    }
    Ok(())
}

/// OVH's step list with `done` steps done, then the one that `failed`
/// (number and error) or the one being done.
fn step_list(done: usize, failed: Option<(usize, &str)>) -> Value {
    let steps: Vec<Value> = STEPS
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let n = i + 1;
            let (status, error) = match failed {
                Some((f, e)) if n == f => ("error", Some(e)),
                _ if n <= done => ("done", None),
                _ if n == done + 1 && failed.is_none() => ("doing", None),
                _ => ("todo", None),
            };
            json!({"comment": name, "status": status, "error": error})
        })
        .collect();
    json!({"elapsedTime": done * 30, "progress": steps})
}

fn answer(
    scenario: Scenario,
    fetch: bool,
    base: &str,
    req: &tiny_http::Request,
    body: &str,
    st: &mut State,
) -> (u16, Value) {
    let method = req.method().as_str().to_owned();
    let path = req.url().to_owned();
    st.requests.push(format!("{method} {path}"));
    if path == "/1.0/auth/time" {
        return (200, json!(now() + SKEW));
    }
    if let Err(e) = check_signature(base, req, body) {
        st.problems.push(e);
        return (
            400,
            json!({"errorCode": "INVALID_SIGNATURE", "message": "Invalid signature"}),
        );
    }
    if scenario == Scenario::Expired {
        return (
            403,
            json!({"errorCode": "INVALID_CREDENTIAL", "httpCode": "403 Forbidden", "message": "This credential is not valid"}),
        );
    }
    let server = format!("/1.0/dedicated/server/{SERVICE}");
    let Some(rest) = path.strip_prefix(&server) else {
        return (
            404,
            json!({"class": "Client::NotFound", "message": "The requested object does not exist"}),
        );
    };
    match (method.as_str(), rest) {
        ("GET", "/install/compatibleTemplates") => {
            let mut ovh = vec!["debian12_64", "byoi_64"];
            if scenario != Scenario::NotByolinux {
                ovh.push("byolinux_64");
            }
            (200, json!({"ovh": ovh, "personal": []}))
        }
        ("POST", "/reinstall") => {
            st.posts += 1;
            let parsed: Value = match serde_json::from_str(body) {
                Ok(v) => v,
                Err(e) => {
                    st.problems.push(format!("POST body is not JSON: {e}"));
                    return (400, json!({"class": "Client::BadRequest", "message": "not JSON"}));
                }
            };
            let violations = kiln_deploy::ovh::api::schema::Schemas::reinstall()
                .validate(kiln_deploy::ovh::api::schema::REINSTALL, &parsed);
            if !violations.is_empty() {
                st.problems.push(format!("POST body breaks the schema: {violations:?}"));
                return (
                    400,
                    json!({"class": "Client::BadRequest::CustomizationInvalidFormat", "message": "invalid"}),
                );
            }
            st.bodies.push(parsed);
            match scenario {
                Scenario::Busy => (
                    409,
                    json!({"class": "Client::Conflict::TaskAlreadyExists", "message": "A reinstallServer task is already running"}),
                ),
                Scenario::Forbidden => (
                    403,
                    json!({"errorCode": "NOT_GRANTED_CALL", "httpCode": "403 Forbidden", "message": "This call has not been granted"}),
                ),
                Scenario::Flaky(n) if st.posts <= n => (503, json!({"message": "Service Unavailable"})),
                _ => (
                    200,
                    json!({"taskId": TASK, "function": "reinstallServer", "status": "init",
                           "comment": "Start bare metal OS installation", "startDate": "2026-12-07T04:00:00Z", "doneDate": null}),
                ),
            }
        }
        ("GET", "/install/status") => {
            if st.posts == 0 {
                return (
                    404,
                    json!({"class": "Client::NotFound", "message": "No installation in progress"}),
                );
            }
            st.polls += 1;
            let done = (st.polls * 6).min(17);
            if fetch && done >= 9 && st.download.is_none() {
                let (download, failed) = fetch_image(&st.bodies[st.bodies.len() - 1]);
                st.download = Some(download);
                st.failed = failed;
            }
            match (&st.failed, scenario) {
                (Some((n, e)), _) => (200, step_list(n - 1, Some((*n, e.as_str())))),
                (None, Scenario::FailAt15) if done >= 15 => (
                    200,
                    step_list(14, Some((15, "make_image_bootable.sh exited with status 1"))),
                ),
                _ => (200, step_list(done, None)),
            }
        }
        ("GET", p) if p == format!("/task/{TASK}") => {
            let done = (st.polls * 6).min(17);
            let status = match scenario {
                _ if st.failed.is_some() => "customerError",
                Scenario::FailAt15 if done >= 15 => "customerError",
                _ if st.polls == 0 => "init",
                _ if done >= 17 => "done",
                _ => "doing",
            };
            (
                200,
                json!({"taskId": TASK, "function": "reinstallServer", "status": status, "comment": null}),
            )
        }
        _ => (
            404,
            json!({"class": "Client::NotFound", "message": format!("no route {method} {path}")}),
        ),
    }
}

/// Steps 9 and 10 of OVH's installer: download `imageURL` with the body's
/// `httpHeaders`, hashing the bytes as they come, and compare the digest
/// with `imageCheckSum`. The failure, if any, is (step, error).
fn fetch_image(body: &Value) -> (Download, Option<(usize, String)>) {
    let c = &body["customizations"];
    let url = c["imageURL"].as_str().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = c["httpHeaders"]
        .as_object()
        .map(|h| {
            h.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let mut d = Download {
        url: url.clone(),
        headers: headers.clone(),
        ..Download::default()
    };
    let kind = c["imageCheckSumType"].as_str().unwrap_or("sha512");
    let mut hasher: Box<dyn sha2::digest::DynDigest> = match kind {
        "md5" => Box::new(md5::Md5::new()),
        "sha1" => Box::new(Sha1::new()),
        "sha256" => Box::new(sha2::Sha256::new()),
        "sha512" => Box::new(sha2::Sha512::new()),
        other => return (d, Some((10, format!("unknown imageCheckSumType {other}")))),
    };
    // 127.0.0.1 directly, whatever proxy the environment names.
    let agent = ureq::Agent::config_builder().proxy(None).build().new_agent();
    let mut req = agent.get(&url);
    for (k, v) in &headers {
        req = req.header(k, v);
    }
    let result = req.call().map_err(|e| e.to_string()).and_then(|resp| {
        let mut body = resp.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match body.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    d.bytes += n as u64;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    });
    if let Err(e) = result {
        let msg = format!("could not download the image from {url}: {e}");
        d.error = Some(e);
        return (d, Some((9, msg)));
    }
    let Some(want) = c["imageCheckSum"].as_str() else {
        return (d, None);
    };
    let got = hex::encode(hasher.finalize());
    d.checksum = Some(got.clone());
    if !got.eq_ignore_ascii_case(want) {
        return (
            d,
            Some((
                10,
                format!("the image's {kind} checksum {got} is not imageCheckSum {want}"),
            )),
        );
    }
    (d, None)
}
