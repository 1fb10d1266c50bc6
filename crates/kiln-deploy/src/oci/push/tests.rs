//! Push and pull against a small in-process registry (tiny_http) that
//! keeps its uploads server-side, as the distribution spec allows, and can
//! break an upload, forget it, refuse a push, or ask for Basic or Bearer
//! credentials. The real registry (Debian's docker-registry) is exercised
//! by crates/kiln/tests/oci.rs; this one makes each fault deterministic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::*;
use crate::oci::pull::{pull, PullOptions};
use crate::oci::Credentials;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthMode {
    None,
    Basic,
    Bearer,
}

#[derive(Default)]
struct State {
    blobs: HashMap<String, Vec<u8>>,
    uploads: HashMap<String, Vec<u8>>,
    manifests: HashMap<String, Vec<u8>>,
    next_upload: u32,
    /// Break the Nth PATCH (1-based): keep half its body, answer 500.
    break_patch: Option<u32>,
    /// Forget the upload when it breaks (GET status answers 404).
    forget_broken: bool,
    /// Refuse every PATCH with 403 DENIED.
    deny_patch: bool,
    patches: u32,
    posts: u32,
    requests: Vec<String>,
}

struct Fake {
    server: Arc<tiny_http::Server>,
    state: Arc<Mutex<State>>,
    port: u16,
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

const USER: &str = "kiln";
const PASS: &str = "s3cret";

fn h(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap()
}

impl Fake {
    fn start(auth: AuthMode, setup: impl FnOnce(&mut State)) -> Fake {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let mut state = State::default();
        setup(&mut state);
        let state = Arc::new(Mutex::new(state));
        let thread = {
            let (server, state) = (Arc::clone(&server), Arc::clone(&state));
            std::thread::spawn(move || {
                for rq in server.incoming_requests() {
                    handle(&state, auth, port, rq);
                }
            })
        };
        Fake {
            server,
            state,
            port,
            thread: Some(thread),
        }
    }

    fn reference(&self, tag: &str) -> Reference {
        Reference::parse(&format!("127.0.0.1:{}/kiln/test:{tag}", self.port)).unwrap()
    }
}

fn handle(state: &Mutex<State>, auth: AuthMode, port: u16, mut rq: tiny_http::Request) {
    let method = rq.method().as_str().to_owned();
    let url = rq.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let path = path.to_owned();
    let query = query.to_owned();
    let given = rq
        .headers()
        .iter()
        .find(|x| x.field.equiv("Authorization"))
        .map(|x| x.value.as_str().to_owned())
        .unwrap_or_default();
    let basic = format!("Basic {}", BASE64.encode(format!("{USER}:{PASS}")));
    let mut st = state.lock().unwrap();
    st.requests.push(format!("{method} {path}"));
    if path == "/token" {
        let resp = if given == basic {
            tiny_http::Response::from_string(r#"{"token":"tok-1"}"#)
        } else {
            tiny_http::Response::from_string("no").with_status_code(401)
        };
        let _ = rq.respond(resp);
        return;
    }
    let challenge = match auth {
        AuthMode::None => None,
        AuthMode::Basic if given != basic => Some("Basic realm=\"fake\"".to_owned()),
        AuthMode::Bearer if given != "Bearer tok-1" => Some(format!(
            "Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"fake\",scope=\"repository:kiln/test:pull\""
        )),
        _ => None,
    };
    if let Some(c) = challenge {
        let _ = rq.respond(
            tiny_http::Response::from_string(
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            )
            .with_status_code(401)
            .with_header(h("WWW-Authenticate", &c)),
        );
        return;
    }
    let empty = |code: u16| tiny_http::Response::from_data(Vec::new()).with_status_code(code);
    let rest = path.strip_prefix("/v2/kiln/test/").unwrap_or("").to_owned();
    let mut body = Vec::new();
    if method == "PATCH" {
        st.patches += 1;
        if st.deny_patch {
            let _ = rq.respond(
                tiny_http::Response::from_string(
                    r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#,
                )
                .with_status_code(403),
            );
            return;
        }
        let id = rest.trim_start_matches("blobs/uploads/").to_owned();
        if st.break_patch == Some(st.patches) {
            let len: usize = rq.body_length().unwrap_or(0);
            let mut half = vec![0u8; len / 2];
            let _ = rq.as_reader().read_exact(&mut half);
            if st.forget_broken {
                st.uploads.remove(&id);
            } else if let Some(u) = st.uploads.get_mut(&id) {
                u.extend_from_slice(&half);
            }
            // Dropped unanswered: tiny_http answers 500 and closes.
            drop(rq);
            return;
        }
        rq.as_reader().read_to_end(&mut body).unwrap();
        let Some(u) = st.uploads.get_mut(&id) else {
            let _ = rq.respond(empty(404));
            return;
        };
        u.extend_from_slice(&body);
        let range = format!("0-{}", u.len() - 1);
        let _ = rq.respond(
            empty(202)
                .with_header(h("Location", &path))
                .with_header(h("Range", &range)),
        );
        return;
    }
    rq.as_reader().read_to_end(&mut body).unwrap();
    let resp = if let Some(digest) = rest.strip_prefix("blobs/").filter(|d| d.starts_with("sha256:")) {
        match st.blobs.get(digest) {
            Some(b) => {
                let len = b.len();
                tiny_http::Response::new(200.into(), vec![], std::io::Cursor::new(b.clone()), Some(len), None)
                    .with_chunked_threshold(usize::MAX)
            }
            None => empty(404),
        }
    } else if rest == "blobs/uploads/" && method == "POST" {
        st.posts += 1;
        st.next_upload += 1;
        let id = format!("u{}", st.next_upload);
        st.uploads.insert(id.clone(), Vec::new());
        empty(202).with_header(h("Location", &format!("/v2/kiln/test/blobs/uploads/{id}")))
    } else if let Some(id) = rest.strip_prefix("blobs/uploads/") {
        match (method.as_str(), st.uploads.get(id).cloned()) {
            ("GET", Some(u)) => empty(204)
                .with_header(h("Location", &path))
                .with_header(h("Range", &format!("0-{}", u.len().saturating_sub(1)))),
            ("PUT", Some(u)) => {
                let digest = query.trim_start_matches("digest=").replace("%3A", ":");
                if digest_of(&u) == digest {
                    st.uploads.remove(id);
                    st.blobs.insert(digest, u);
                    empty(201)
                } else {
                    tiny_http::Response::from_data(br#"{"errors":[{"code":"DIGEST_INVALID"}]}"#.to_vec())
                        .with_status_code(400)
                }
            }
            _ => empty(404),
        }
    } else if let Some(tag) = rest.strip_prefix("manifests/") {
        match method.as_str() {
            "PUT" => {
                let m: Manifest = serde_json::from_slice(&body).unwrap();
                let missing = std::iter::once(&m.config)
                    .chain(&m.layers)
                    .any(|d| !st.blobs.contains_key(&d.digest));
                if missing {
                    tiny_http::Response::from_data(br#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN"}]}"#.to_vec())
                        .with_status_code(400)
                } else {
                    let digest = digest_of(&body);
                    st.manifests.insert(tag.to_owned(), body);
                    empty(201).with_header(h("Docker-Content-Digest", &digest))
                }
            }
            _ => match st.manifests.get(tag) {
                Some(m) => {
                    let len = m.len();
                    tiny_http::Response::new(
                        200.into(),
                        vec![h("Docker-Content-Digest", &digest_of(m))],
                        std::io::Cursor::new(m.clone()),
                        Some(len),
                        None,
                    )
                    .with_chunked_threshold(usize::MAX)
                }
                None => empty(404),
            },
        }
    } else {
        empty(404)
    };
    let _ = rq.respond(resp);
}

/// An artifact of `size` pseudo-random bytes with its sidecar and a
/// manifest.json, in a temp dir.
fn artifact(size: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut x: u32 = 12345;
    let bytes: Vec<u8> = (0..size)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    let image = dir.path().join("test-1.0.0.qcow2");
    std::fs::write(&image, &bytes).unwrap();
    let sha = hex::encode(Sha512::digest(&bytes));
    std::fs::write(
        dir.path().join("test-1.0.0.qcow2.sha512"),
        format!("{sha}  test-1.0.0.qcow2\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("manifest.json"),
        br#"{"name":"test","version":"1.0.0"}"#,
    )
    .unwrap();
    (dir, image)
}

fn opts(image: &Path, reference: Reference, credentials: Option<Credentials>) -> PushOptions {
    PushOptions {
        artifact: image.to_owned(),
        manifest: None,
        reference,
        registry: RegistryOptions {
            plain_http: true,
            insecure: false,
            credentials,
            push: true,
        },
        chunk_size: 64 * 1024,
        force: false,
    }
}

fn pull_opts(reference: Reference, out: &Path, credentials: Option<Credentials>) -> PullOptions {
    PullOptions {
        reference,
        registry: RegistryOptions {
            plain_http: true,
            insecure: false,
            credentials,
            push: false,
        },
        out: out.to_owned(),
    }
}

#[test]
fn pushes_an_oras_artifact_in_chunks_and_pulls_it_back() {
    let fake = Fake::start(AuthMode::None, |_| {});
    let (dir, image) = artifact(300_000);
    let pushed = push(&opts(&image, fake.reference("1.0.0"), None), &|_| {}).unwrap();
    assert_eq!((pushed.blobs_uploaded, pushed.blobs_skipped), (4, 0));
    assert_eq!((pushed.resumed, pushed.restarted), (0, 0));
    let st = fake.state.lock().unwrap();
    // 300000 bytes in 64 KiB chunks: 5 PATCHes, plus one each for the
    // config, the sidecar and manifest.json.
    assert_eq!(st.patches, 8);
    let m: Manifest = serde_json::from_slice(&st.manifests["1.0.0"]).unwrap();
    assert_eq!(digest_of(&st.manifests["1.0.0"]), pushed.digest);
    assert_eq!(m.artifact_type.as_deref(), Some(ARTIFACT_TYPE));
    assert_eq!(m.media_type.as_deref(), Some(MANIFEST_MEDIA_TYPE));
    assert_eq!(m.config.media_type, "application/vnd.oci.empty.v1+json");
    let layers: Vec<(&str, &str)> = m
        .layers
        .iter()
        .map(|l| (l.media_type.as_str(), l.title().unwrap()))
        .collect();
    assert_eq!(
        layers,
        [
            ("application/octet-stream", "test-1.0.0.qcow2"),
            ("text/plain", "test-1.0.0.qcow2.sha512"),
            ("application/json", "manifest.json")
        ]
    );
    assert_eq!(st.blobs[&m.layers[0].digest], std::fs::read(&image).unwrap());
    // The manifest came last, after every blob was checked.
    let last = st
        .requests
        .iter()
        .rposition(|r| r.starts_with("HEAD /v2/kiln/test/blobs/"))
        .unwrap();
    let put = st
        .requests
        .iter()
        .position(|r| r.starts_with("PUT /v2/kiln/test/manifests/"))
        .unwrap();
    assert!(last < put, "{:?}", st.requests);
    drop(st);

    // A second push to another tag uploads nothing: the blobs are there.
    let again = push(&opts(&image, fake.reference("again"), None), &|_| {}).unwrap();
    assert_eq!((again.blobs_uploaded, again.blobs_skipped), (0, 4));

    let out = dir.path().join("pulled");
    let pulled = pull(&pull_opts(fake.reference("1.0.0"), &out, None), &|_| {}).unwrap();
    assert_eq!(pulled.sha512_verified, ["test-1.0.0.qcow2"]);
    for name in ["test-1.0.0.qcow2", "test-1.0.0.qcow2.sha512", "manifest.json"] {
        assert_eq!(
            std::fs::read(out.join(name)).unwrap(),
            std::fs::read(dir.path().join(name)).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn a_broken_chunk_resumes_where_the_registry_stands() {
    let fake = Fake::start(AuthMode::None, |s| s.break_patch = Some(3));
    let (_dir, image) = artifact(300_000);
    let notes = Mutex::new(Vec::new());
    let pushed = push(&opts(&image, fake.reference("1"), None), &|p| {
        if let Progress::Recovering { offset, .. } = p {
            notes.lock().unwrap().push(offset);
        }
    })
    .unwrap();
    assert_eq!((pushed.resumed, pushed.restarted), (1, 0));
    // The config's PATCH was first; the image's second chunk broke after
    // half of it (32 KiB) reached the registry.
    assert_eq!(*notes.lock().unwrap(), [65536 + 32768]);
    let st = fake.state.lock().unwrap();
    let m: Manifest = serde_json::from_slice(&st.manifests["1"]).unwrap();
    assert_eq!(st.blobs[&m.layers[0].digest], std::fs::read(&image).unwrap());
    assert_eq!(st.posts, 4, "one upload session per blob: {:?}", st.requests);
}

#[test]
fn an_upload_the_registry_forgot_starts_over() {
    let fake = Fake::start(AuthMode::None, |s| {
        s.break_patch = Some(4);
        s.forget_broken = true;
    });
    let (_dir, image) = artifact(300_000);
    let pushed = push(&opts(&image, fake.reference("1"), None), &|_| {}).unwrap();
    assert_eq!((pushed.resumed, pushed.restarted), (0, 1));
    let st = fake.state.lock().unwrap();
    let m: Manifest = serde_json::from_slice(&st.manifests["1"]).unwrap();
    assert_eq!(st.blobs[&m.layers[0].digest], std::fs::read(&image).unwrap());
}

#[test]
fn an_existing_tag_is_refused_unless_forced() {
    let fake = Fake::start(AuthMode::None, |_| {});
    let (_dir, image) = artifact(1000);
    push(&opts(&image, fake.reference("1"), None), &|_| {}).unwrap();
    let before = fake.state.lock().unwrap().requests.len();
    let err = push(&opts(&image, fake.reference("1"), None), &|_| {}).unwrap_err();
    assert!(err.downcast_ref::<Refused>().is_some(), "{err:#}");
    assert!(
        err.to_string().contains("already exists") && err.to_string().contains("--force"),
        "{err}"
    );
    let st = fake.state.lock().unwrap();
    assert_eq!(
        st.requests.len(),
        before + 1,
        "only the tag was checked: {:?}",
        &st.requests[before..]
    );
    drop(st);
    let mut forced = opts(&image, fake.reference("1"), None);
    forced.force = true;
    assert!(push(&forced, &|_| {}).unwrap().replaced);
}

#[test]
fn a_refused_push_tags_nothing() {
    let fake = Fake::start(AuthMode::None, |s| s.deny_patch = true);
    let (_dir, image) = artifact(1000);
    let err = push(&opts(&image, fake.reference("1"), None), &|_| {}).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("403") && text.contains("DENIED"), "{text}");
    let st = fake.state.lock().unwrap();
    assert!(st.manifests.is_empty());
    assert_eq!(st.patches, 1, "a refusal is not retried");
}

#[test]
fn a_changed_artifact_is_refused_before_anything_is_sent() {
    let fake = Fake::start(AuthMode::None, |_| {});
    let (dir, image) = artifact(1000);
    std::fs::write(&image, b"changed").unwrap();
    let err = push(&opts(&image, fake.reference("1"), None), &|_| {}).unwrap_err();
    assert!(err.downcast_ref::<Refused>().is_some(), "{err:#}");
    assert!(err.to_string().contains("changed after the build"), "{err}");
    std::fs::remove_file(dir.path().join("manifest.json")).unwrap();
    let err = push(&opts(&image, fake.reference("1"), None), &|_| {}).unwrap_err();
    assert!(err.to_string().contains("manifest.json: no such file"), "{err}");
    assert!(fake.state.lock().unwrap().requests.is_empty());
}

#[test]
fn basic_and_bearer_challenges_are_answered() {
    let good = Credentials {
        username: USER.into(),
        password: PASS.into(),
    };
    let bad = Credentials {
        username: USER.into(),
        password: "wrong".into(),
    };
    for mode in [AuthMode::Basic, AuthMode::Bearer] {
        let fake = Fake::start(mode, |_| {});
        let (dir, image) = artifact(100_000);
        let err = push(&opts(&image, fake.reference("1"), None), &|_| {}).unwrap_err();
        assert!(format!("{err:#}").contains("--password-stdin"), "{mode:?}: {err:#}");
        let err = push(&opts(&image, fake.reference("1"), Some(bad.clone())), &|_| {}).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("refused these credentials") && !text.contains("wrong"),
            "{mode:?}: {text}"
        );
        push(&opts(&image, fake.reference("1"), Some(good.clone())), &|_| {}).unwrap();
        let out = dir.path().join("out");
        pull(&pull_opts(fake.reference("1"), &out, Some(good.clone())), &|_| {}).unwrap();
        assert!(out.join("test-1.0.0.qcow2").is_file());
        if mode == AuthMode::Bearer {
            assert!(fake.state.lock().unwrap().requests.iter().any(|r| r == "GET /token"));
        }
    }
}

#[test]
fn a_corrupt_artifact_is_not_written() {
    let fake = Fake::start(AuthMode::None, |_| {});
    let (dir, image) = artifact(100_000);
    push(&opts(&image, fake.reference("1"), None), &|_| {}).unwrap();
    // The registry's copy of the image changes under its digest.
    {
        let mut st = fake.state.lock().unwrap();
        let m: Manifest = serde_json::from_slice(&st.manifests["1"]).unwrap();
        st.blobs.get_mut(&m.layers[0].digest).unwrap()[10] ^= 1;
    }
    let out = dir.path().join("out");
    let err = pull(&pull_opts(fake.reference("1"), &out, None), &|_| {}).unwrap_err();
    assert!(format!("{err:#}").contains("digest"), "{err:#}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "nothing left behind");
    let err = pull(&pull_opts(fake.reference("nope"), &out, None), &|_| {}).unwrap_err();
    assert!(err.to_string().contains("no such tag"), "{err}");
}

#[test]
fn range_headers() {
    assert_eq!(range_end("0-99"), Some(100));
    assert_eq!(range_end("bytes=0-0"), Some(1));
    assert_eq!(range_end("5-9"), None);
    assert_eq!(range_end("junk"), None);
}

#[test]
fn a_tag_holding_an_image_is_seen_and_not_pulled_as_an_artifact() {
    let docker = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:aa","size":1},"layers":[]}"#;
    let fake = Fake::start(AuthMode::None, |s| {
        s.manifests.insert("app".into(), docker.to_vec());
    });
    let (dir, image) = artifact(1000);
    let err = push(&opts(&image, fake.reference("app"), None), &|_| {}).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    let out = dir.path().join("out");
    let err = pull(&pull_opts(fake.reference("app"), &out, None), &|_| {}).unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("application/vnd.docker.distribution.manifest.v2+json") && text.contains("not an OCI artifact"),
        "{text}"
    );
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().count() == 0);
}
