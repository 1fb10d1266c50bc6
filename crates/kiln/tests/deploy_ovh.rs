//! Fast tests of `kiln deploy ovh SERVICE_NAME` against a fake OVH API on
//! 127.0.0.1 (tiny_http, in this file). The fake's clock runs 1000 s ahead
//! of this machine's, so only a client that takes the API's time from
//! `GET /auth/time` signs acceptable requests; it recomputes every
//! signature itself (its own SHA-1 of secret, consumer key, method, full
//! URL, body and timestamp), validates every reinstall body against OVH's
//! schema, and plays an install through OVH's step list: a success, a
//! failure at step 15/17 (make_image_bootable.sh), a task already running
//! (409), flaky 5xx answers, missing rights, bad or expired credentials,
//! a server not in the account and one without BYOLinux. The bodies are
//! checked by kiln-deploy's validator, whose verdicts its own tests hold
//! to Python's `jsonschema`. Nothing here needs root or the network.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sha1::{Digest, Sha1};

const AK: &str = "fakeApplicationKey";
const AS: &str = "fakeApplicationSecret-0123456789";
const CK: &str = "fakeConsumerKey-0123456789abcdef";
const SERVICE: &str = "ns1234567.ip-1-2-3.eu";
const HEADER_SECRET: &str = "Basic c2VjcmV0LXVzZXI6c2VjcmV0LXBhc3M=";
/// The fake API's clock minus this machine's.
const SKEW: i64 = 1000;
const TASK: u64 = 4242;

const STEPS: [&str; 17] = [
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
enum Scenario {
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
struct State {
    /// Method and path of every request.
    requests: Vec<String>,
    /// Every signature or schema check that failed.
    problems: Vec<String>,
    bodies: Vec<Value>,
    posts: usize,
    /// install/status polls since the POST.
    polls: usize,
}

struct Fake {
    server: Arc<tiny_http::Server>,
    base: String,
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
    fn start(scenario: Scenario) -> Fake {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let base = format!("http://{}/1.0", server.server_addr().to_ip().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let (s, st, b) = (Arc::clone(&server), Arc::clone(&state), base.clone());
        let thread = std::thread::spawn(move || {
            while let Ok(mut req) = s.recv() {
                let mut body = String::new();
                let _ = req.as_reader().read_to_string(&mut body);
                let (status, answer) = answer(scenario, &b, &req, &body, &mut st.lock().unwrap());
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

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
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

fn step_list(done: usize, failed_at: Option<usize>) -> Value {
    let steps: Vec<Value> = STEPS
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let n = i + 1;
            let (status, error) = match failed_at {
                Some(f) if n == f => ("error", Some("make_image_bootable.sh exited with status 1")),
                _ if n <= done => ("done", None),
                _ if n == done + 1 && failed_at.is_none() => ("doing", None),
                _ => ("todo", None),
            };
            json!({"comment": name, "status": status, "error": error})
        })
        .collect();
    json!({"elapsedTime": done * 30, "progress": steps})
}

fn answer(scenario: Scenario, base: &str, req: &tiny_http::Request, body: &str, st: &mut State) -> (u16, Value) {
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
            match scenario {
                Scenario::FailAt15 if done >= 15 => (200, step_list(14, Some(15))),
                _ => (200, step_list(done, None)),
            }
        }
        ("GET", p) if p == format!("/task/{TASK}") => {
            let done = (st.polls * 6).min(17);
            let status = match scenario {
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

/// A build manifest as an ovh-byol build writes it.
fn manifest(dir: &Path) -> std::path::PathBuf {
    let m = json!({
        "manifestVersion": 1,
        "name": "debian-12-byol",
        "version": "1.0.0",
        "efiBootloaderPath": "\\efi\\debian\\grubx64.efi",
        "ovhReinstall": kiln_build::manifest::ovh_reinstall_template("\\efi\\debian\\grubx64.efi", &"ab".repeat(64), "debian-12-byol-1.0.0.qcow2"),
    });
    let p = dir.join("manifest.json");
    std::fs::write(&p, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    p
}

/// Runs kiln in `dir` (HOME too, so no ovh.conf of the machine's user is read).
fn kiln(dir: &Path, base: &str, args: &[&str]) -> Output {
    #[allow(clippy::disallowed_methods)] // the binary under test
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.current_dir(dir)
        .env("HOME", dir)
        .env_remove("OVH_ENDPOINT")
        .env_remove("OVH_APPLICATION_KEY")
        .env_remove("OVH_APPLICATION_SECRET")
        .env_remove("OVH_CONSUMER_KEY")
        .stdin(Stdio::null());
    if !base.is_empty() {
        c.env("OVH_ENDPOINT", base)
            .env("OVH_APPLICATION_KEY", AK)
            .env("OVH_APPLICATION_SECRET", AS)
            .env("OVH_CONSUMER_KEY", CK);
    }
    c.args(args);
    let out = c.output().unwrap();
    eprintln!("--- kiln {args:?} -> {}\n{}", out.status, text(&out));
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn deploy<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "deploy",
        "ovh",
        SERVICE,
        "--image-url",
        "https://images.example.com/debian-12-byol-1.0.0.qcow2",
        "--poll-interval",
        "1",
    ];
    v.extend_from_slice(extra);
    v
}

fn assert_no_secret(out: &str) {
    // The base64 of the user data, which may hold passwords.
    for secret in [
        AS,
        CK,
        HEADER_SECRET,
        "I2Nsb3VkLWNvbmZpZwpydW5jbWQ6IFt0b3VjaCAva2lsbl0K",
    ] {
        assert!(!out.contains(secret), "a secret ({secret}) was printed:\n{out}");
    }
}

#[test]
fn a_successful_install_is_followed_step_by_step() {
    let fake = Fake::start(Scenario::Success);
    let dir = tempfile::tempdir().unwrap();
    manifest(dir.path());
    std::fs::write(dir.path().join("ud.yaml"), "#cloud-config\nruncmd: [touch /kiln]\n").unwrap();
    let auth = format!("Authorization: {HEADER_SECRET}");
    let out = kiln(
        dir.path(),
        &fake.base,
        &deploy(&[
            "-vv",
            "--manifest",
            "manifest.json",
            "--hostname",
            "web1",
            "--ssh-key",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKiln me",
            "--http-header",
            &auth,
            "--user-data",
            "ud.yaml",
        ]),
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let st = fake.state();
    assert!(st.problems.is_empty(), "{:?}", st.problems);
    assert!(
        all.contains(&format!("installed {SERVICE}: task {TASK} done, 17 steps")),
        "{all}"
    );
    assert!(all.contains("step 15/17 done   Running BYOLinux Configure"), "{all}");
    assert!(all.contains("step 17/17 done   Rebooting"), "{all}");
    assert!(all.contains("clock is 1000 s off the API's"), "{all}");
    assert_no_secret(&all);
    // What OVH got: the manifest's checksum and EFI path, the options, no placeholder.
    assert_eq!(st.bodies.len(), 1);
    let c = &st.bodies[0]["customizations"];
    assert_eq!(st.bodies[0]["operatingSystem"], "byolinux_64");
    assert_eq!(c["imageURL"], "https://images.example.com/debian-12-byol-1.0.0.qcow2");
    assert_eq!(c["imageCheckSum"], "ab".repeat(64));
    assert_eq!(c["imageCheckSumType"], "sha512");
    assert_eq!(c["efiBootloaderPath"], "\\efi\\debian\\grubx64.efi");
    assert_eq!(c["hostname"], "web1");
    assert_eq!(c["httpHeaders"]["Authorization"], HEADER_SECRET);
    assert_eq!(
        c["configDriveUserData"],
        "I2Nsb3VkLWNvbmZpZwpydW5jbWQ6IFt0b3VjaCAva2lsbl0K"
    );
    assert!(!st.bodies[0].to_string().contains("REPLACE-WITH"), "{}", st.bodies[0]);
    assert_eq!(
        st.requests[..3],
        [
            "GET /1.0/auth/time".to_owned(),
            format!("GET /1.0/dedicated/server/{SERVICE}/install/compatibleTemplates"),
            format!("POST /1.0/dedicated/server/{SERVICE}/reinstall"),
        ]
    );
}

#[test]
fn a_failure_at_step_15_names_the_step_and_the_replay() {
    let fake = Fake::start(Scenario::FailAt15);
    let dir = tempfile::tempdir().unwrap();
    manifest(dir.path());
    let out = kiln(dir.path(), &fake.base, &deploy(&["--manifest", "manifest.json"]));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(fake.state().problems.is_empty(), "{:?}", fake.state().problems);
    assert!(
        all.contains(
            "FAILED at step 15/17 \"Running BYOLinux Configure\": make_image_bootable.sh exited with status 1"
        ),
        "{all}"
    );
    assert!(all.contains("(task 4242: "), "{all}");
    assert!(all.contains("kiln deploy ovh --simulate IMAGE"), "{all}");
    assert!(all.contains("runs it the same way on this machine"), "{all}");
}

#[test]
fn a_task_already_running_is_a_409_with_advice() {
    let fake = Fake::start(Scenario::Busy);
    let dir = tempfile::tempdir().unwrap();
    manifest(dir.path());
    let out = kiln(dir.path(), &fake.base, &deploy(&["--manifest", "manifest.json"]));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(3), "{all}");
    assert!(fake.state().problems.is_empty(), "{:?}", fake.state().problems);
    assert!(
        all.contains(&format!("a task is already running on {SERVICE}")),
        "{all}"
    );
    assert!(all.contains("Client::Conflict::TaskAlreadyExists"), "{all}");
    assert_eq!(fake.state().posts, 1);
}

#[test]
fn server_errors_are_retried_and_no_wait_prints_the_task() {
    let fake = Fake::start(Scenario::Flaky(2));
    let dir = tempfile::tempdir().unwrap();
    manifest(dir.path());
    let out = kiln(
        dir.path(),
        &fake.base,
        &deploy(&["--manifest", "manifest.json", "--no-wait"]),
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), TASK.to_string());
    assert_eq!(fake.state().posts, 3, "{all}");
    assert!(all.contains("HTTP 503"), "{all}");
    assert!(all.contains("retrying"), "{all}");
    assert_eq!(fake.state().polls, 0, "--no-wait polled");
}

#[test]
fn missing_rights_bad_or_expired_credentials_unknown_servers_and_servers_without_byolinux_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    manifest(dir.path());

    let fake = Fake::start(Scenario::Forbidden);
    let out = kiln(dir.path(), &fake.base, &deploy(&["--manifest", "manifest.json"]));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(3), "{all}");
    assert!(
        all.contains("lacks the access rule `POST /dedicated/server/*/reinstall`"),
        "{all}"
    );

    let fake = Fake::start(Scenario::NotByolinux);
    let out = kiln(dir.path(), &fake.base, &deploy(&["--manifest", "manifest.json"]));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(3), "{all}");
    assert!(all.contains("cannot install BYOLinux"), "{all}");
    assert!(all.contains("debian12_64, byoi_64"), "{all}");
    assert_eq!(fake.state().posts, 0);

    let fake = Fake::start(Scenario::Expired);
    let out = kiln(dir.path(), &fake.base, &deploy(&["--manifest", "manifest.json"]));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(3), "{all}");
    assert!(
        all.contains("OVH refused the credentials (HTTP 403 INVALID_CREDENTIAL"),
        "{all}"
    );
    assert!(all.contains("revoked or expired"), "{all}");
    assert_eq!(fake.state().posts, 0);

    // A server not in the account.
    let fake = Fake::start(Scenario::Success);
    let mut argv = deploy(&["--manifest", "manifest.json"]);
    argv[2] = "ns9999999.ip-9-9-9.eu";
    let out = kiln(dir.path(), &fake.base, &argv);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(3), "{all}");
    assert!(
        all.contains("no dedicated server ns9999999.ip-9-9-9.eu in this account"),
        "{all}"
    );
    assert_eq!(fake.state().posts, 0);

    // A wrong secret: the fake finds the signature wrong, kiln says why.
    let fake = Fake::start(Scenario::Success);
    #[allow(clippy::disallowed_methods)] // the binary under test
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .env("OVH_ENDPOINT", &fake.base)
        .env("OVH_APPLICATION_KEY", AK)
        .env("OVH_APPLICATION_SECRET", "not-the-secret")
        .env("OVH_CONSUMER_KEY", CK)
        .args(deploy(&["--manifest", "manifest.json"]))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(3), "{all}");
    assert!(all.contains("OVH refused the credentials"), "{all}");
    assert!(all.contains("/createToken/"), "{all}");
    assert_eq!(fake.state().posts, 0);
}

#[test]
fn credentials_come_from_ovh_conf_and_their_absence_sends_nothing() {
    let fake = Fake::start(Scenario::Success);
    let dir = tempfile::tempdir().unwrap();
    manifest(dir.path());
    let out = kiln(dir.path(), "", &deploy(&["--manifest", "manifest.json"]));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("no OVH API endpoint: set OVH_ENDPOINT"), "{all}");
    assert!(all.contains("ovh.conf"), "{all}");

    // ./ovh.conf as python-ovh reads it, with the endpoint given by URL.
    std::fs::write(
        dir.path().join("ovh.conf"),
        format!(
            "[default]\nendpoint={0}\n\n[{0}]\napplication_key={AK}\napplication_secret={AS}\n",
            fake.base
        ),
    )
    .unwrap();
    let out = kiln(dir.path(), "", &deploy(&["--manifest", "manifest.json"]));
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains("missing OVH credentials for endpoint http://127.0.0.1"),
        "{all}"
    );
    assert!(all.contains(": consumer_key. Set OVH_CONSUMER_KEY"), "{all}");
    assert!(fake.state().requests.is_empty());

    std::fs::write(
        dir.path().join(".ovh.conf"),
        format!("[{}]\nconsumer_key = {CK}\n", fake.base),
    )
    .unwrap();
    let out = kiln(dir.path(), "", &deploy(&["--manifest", "manifest.json", "--no-wait"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(fake.state().problems.is_empty(), "{:?}", fake.state().problems);
}

#[test]
fn invalid_bodies_and_dry_runs_send_nothing() {
    let fake = Fake::start(Scenario::Success);
    let dir = tempfile::tempdir().unwrap();
    manifest(dir.path());
    std::fs::write(
        dir.path().join("storage.json"),
        r#"[{"partitioning": {"disks": 2, "layout": [{"fileSystem": "ext4", "mountPoint": "/", "raidlevel": 1, "size": "all"}]}}]"#,
    )
    .unwrap();
    let out = kiln(
        dir.path(),
        &fake.base,
        &deploy(&[
            "--manifest",
            "manifest.json",
            "--storage",
            "storage.json",
            "--efi-bootloader-path",
            "\\efi\\ubuntu\\shimx64.efi",
        ]),
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("nothing was sent"), "{all}");
    assert!(
        all.contains("storage[0].partitioning.layout[0].raidlevel: unknown field; did you mean `raidLevel`?"),
        "{all}"
    );
    assert!(
        all.contains("storage[0].partitioning.layout[0].size: must be an integer"),
        "{all}"
    );
    assert!(all.contains("is not in the image, whose bootloader is"), "{all}");

    let out = kiln(dir.path(), &fake.base, &deploy(&["--manifest", "nowhere.json"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("pass --manifest"), "{}", text(&out));

    let auth = format!("Authorization: {HEADER_SECRET}");
    let out = kiln(
        dir.path(),
        &fake.base,
        &deploy(&["--manifest", "manifest.json", "--http-header", &auth, "--dry-run", "-v"]),
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("POST {}/dedicated/server/{SERVICE}/reinstall\n", fake.base)),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("X-Ovh-Application: {AK}\n")), "{stdout}");
    assert!(stdout.contains("X-Ovh-Consumer: fake****\n"), "{stdout}");
    assert!(stdout.contains("\"Authorization\": \"Basi****\""), "{stdout}");
    assert!(
        stdout.contains("\"imageURL\": \"https://images.example.com/debian-12-byol-1.0.0.qcow2\""),
        "{stdout}"
    );
    assert_no_secret(&all);
    assert!(fake.state().requests.is_empty(), "{:?}", fake.state().requests);
}
