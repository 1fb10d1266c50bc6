//! Fast tests of `kiln deploy ovh SERVICE_NAME` against a fake OVH API on
//! 127.0.0.1 (tiny_http, in tests/fake_ovh). The fake's clock runs 1000 s ahead
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

use serde_json::json;

mod common;
mod fake_ovh;
use common::Served;
use fake_ovh::*;

/// A build manifest as an ovh-byol build writes it.
fn manifest(dir: &Path) -> std::path::PathBuf {
    manifest_with(dir, &"ab".repeat(64))
}

/// The same, with the image's SHA-512 `sha512`.
fn manifest_with(dir: &Path, sha512: &str) -> std::path::PathBuf {
    let m = json!({
        "manifestVersion": 1,
        "name": "debian-12-byol",
        "version": "1.0.0",
        "efiBootloaderPath": "\\efi\\debian\\grubx64.efi",
        "ovhReinstall": kiln_build::manifest::ovh_reinstall_template("\\efi\\debian\\grubx64.efi", sha512, "debian-12-byol-1.0.0.qcow2"),
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

/// With fetching on, the fake's step 9 downloads `imageURL` from `kiln
/// serve` with the `httpHeaders` and step 10 checks the manifest's SHA-512:
/// the right header and checksum install; a wrong header fails step 9 and a
/// wrong checksum step 10, each named with OVH's step name.
#[test]
fn the_installer_downloads_the_image_from_kiln_serve_and_checks_it() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let image: Vec<u8> = (0..(3u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(out.join("debian-12-byol-1.0.0.qcow2"), &image).unwrap();
    let sha = hex::encode(sha2::Sha512::digest(&image));
    let served = Served::start(&out, &["--auth", "user:pass"], &dir.path().join("serve.log"));
    let url = served.url("/debian-12-byol-1.0.0.qcow2");
    let good = "Authorization: Basic dXNlcjpwYXNz"; // user:pass
    assert!(served.stdout.iter().any(|l| l.contains(good)), "{:?}", served.stdout);
    let run = |fake: &Fake, header: &str| {
        let argv = [
            "deploy",
            "ovh",
            SERVICE,
            "--manifest",
            "manifest.json",
            "--image-url",
            &url,
            "--http-header",
            header,
            "--poll-interval",
            "1",
        ];
        let out = kiln(dir.path(), &fake.base, &argv);
        (out.status.code(), text(&out))
    };

    manifest_with(dir.path(), &sha);
    let fake = Fake::start_fetching(Scenario::Success);
    let (code, all) = run(&fake, good);
    assert_eq!(code, Some(0), "{all}");
    assert!(all.contains("step 10/17 done   Checking image"), "{all}");
    let st = fake.state();
    assert!(st.problems.is_empty(), "{:?}", st.problems);
    let d = st.download.clone().expect("the fake downloaded nothing");
    assert_eq!(d.error, None);
    assert_eq!(d.url, url);
    assert_eq!(
        d.headers,
        [("Authorization".to_owned(), "Basic dXNlcjpwYXNz".to_owned())]
    );
    assert_eq!(d.bytes, image.len() as u64);
    assert_eq!(d.checksum.as_deref(), Some(sha.as_str()));
    drop(st);

    let fake = Fake::start_fetching(Scenario::Success);
    let (code, all) = run(&fake, "Authorization: Basic dXNlcjp3cm9uZw==");
    assert_eq!(code, Some(1), "{all}");
    assert!(all.contains("FAILED at step 9/17 \"Downloading image\""), "{all}");
    assert!(all.contains("401"), "{all}");
    assert!(all.contains("could not fetch or verify the image"), "{all}");
    assert_eq!(fake.state().download.as_ref().unwrap().bytes, 0);

    manifest_with(dir.path(), &"cd".repeat(64));
    let fake = Fake::start_fetching(Scenario::Success);
    let (code, all) = run(&fake, good);
    assert_eq!(code, Some(1), "{all}");
    assert!(all.contains("FAILED at step 10/17 \"Checking image\""), "{all}");
    assert!(
        all.contains(&format!("sha512 checksum {sha} is not imageCheckSum")),
        "{all}"
    );

    let log = served.stop();
    assert_eq!(
        log.matches(&format!("\"GET /debian-12-byol-1.0.0.qcow2\" 200 {}", image.len()))
            .count(),
        2,
        "{log}"
    );
    assert!(log.contains("\"GET /debian-12-byol-1.0.0.qcow2\" 401"), "{log}");
}
