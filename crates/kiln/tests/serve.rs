//! `kiln serve` tested with curl as the client (Debian's `curl`, which
//! OVH's rescue system downloads with too): whole files and HEAD,
//! byte ranges (206, 416), a download cut short and resumed with `curl -C -`
//! matching the `.sha512` sidecar, and refusals (no or wrong credentials,
//! path traversal, a symlink out of the directory, unknown files). Needs
//! no root: part of `cargo test`, skipped without curl (failing under CI).

use sha2::{Digest, Sha512};

mod common;
use common::{tool, Served};

const SIZE: usize = 3 << 20;

/// Runs curl with `args` (the body goes to /dev/null unless they have
/// `-o`); (HTTP status, response headers, exit status).
fn curl(args: &[&str]) -> (u16, String, i32) {
    let mut cmd = tool("curl");
    cmd.args(["-sS", "-D", "-", "-w", "\n%{http_code}"]);
    if !args.contains(&"-o") {
        cmd.args(["-o", "/dev/null"]);
    }
    let out = cmd.args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    let (headers, code) = text.rsplit_once('\n').unwrap();
    (
        code.trim().parse().unwrap_or(0),
        headers.to_owned(),
        out.status.code().unwrap_or(-1),
    )
}

fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .next_back()
}

/// A directory with an image of pseudo-random bytes and its sidecar.
fn artifacts() -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let bytes: Vec<u8> = (0..SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(dir.path().join("img-1.0.qcow2"), &bytes).unwrap();
    let sha = hex::encode(Sha512::digest(&bytes));
    std::fs::write(
        dir.path().join("img-1.0.qcow2.sha512"),
        format!("{sha}  img-1.0.qcow2\n"),
    )
    .unwrap();
    (dir, bytes)
}

fn curl_present() -> bool {
    kiln_exec::testing::require_tool_or_skip("curl")
}

#[test]
fn serves_files_heads_and_ranges_and_refuses_escapes() {
    if !curl_present() {
        return;
    }
    let (dir, bytes) = artifacts();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("escape")).unwrap();
    std::fs::write(dir.path().join("half.qcow2.part"), b"partial").unwrap();
    let log = outside.path().join("serve.log");
    let s = Served::start(dir.path(), &[], &log);
    assert!(s.stdout.iter().any(|l| l.ends_with("/img-1.0.qcow2")), "{:?}", s.stdout);
    assert!(
        !s.stdout.iter().any(|l| l.contains("escape") || l.contains(".part")),
        "{:?}",
        s.stdout
    );

    // The whole file, byte for byte.
    let got = outside.path().join("got");
    let (code, h, _) = curl(&["-o", got.to_str().unwrap(), &s.url("/img-1.0.qcow2")]);
    assert_eq!(code, 200);
    assert_eq!(header(&h, "content-length"), Some(SIZE.to_string().as_str()));
    assert_eq!(header(&h, "accept-ranges"), Some("bytes"));
    assert!(std::fs::read(&got).unwrap() == bytes);
    // HEAD: the length, no body.
    let (code, h, _) = curl(&["-I", &s.url("/img-1.0.qcow2")]);
    assert_eq!(code, 200);
    assert_eq!(header(&h, "content-length"), Some(SIZE.to_string().as_str()));

    // Ranges: a-b, a-, -n; out of range is 416.
    for (range, first, last) in [
        ("100-199", 100, 199),
        ("3145000-", 3145000, SIZE - 1),
        ("-500", SIZE - 500, SIZE - 1),
        ("0-99999999", 0, SIZE - 1),
    ] {
        let part = outside.path().join("part");
        let (code, h, _) = curl(&["-r", range, "-o", part.to_str().unwrap(), &s.url("/img-1.0.qcow2")]);
        assert_eq!(code, 206, "{range}");
        assert_eq!(
            header(&h, "content-range"),
            Some(format!("bytes {first}-{last}/{SIZE}").as_str()),
            "{range}"
        );
        assert_eq!(
            header(&h, "content-length"),
            Some((last - first + 1).to_string().as_str())
        );
        assert!(std::fs::read(&part).unwrap() == bytes[first..=last], "{range}");
    }
    let (code, h, _) = curl(&["-r", &format!("{SIZE}-"), &s.url("/img-1.0.qcow2")]);
    assert_eq!(code, 416);
    assert_eq!(header(&h, "content-range"), Some(format!("bytes */{SIZE}").as_str()));

    // The sidecar, as text.
    let (code, h, _) = curl(&[&s.url("/img-1.0.qcow2.sha512")]);
    assert_eq!(code, 200);
    assert!(header(&h, "content-type").unwrap().starts_with("text/plain"));

    // Refusals: unknown, traversal (raw and escaped), a symlink out, a
    // half-written file, a directory, another method.
    for path in [
        "/nope.qcow2",
        "/../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/..%2f..%2fetc%2fpasswd",
        "/escape",
        "/half.qcow2.part",
        "/",
    ] {
        let (code, _, _) = curl(&["--path-as-is", &s.url(path)]);
        assert_eq!(code, 404, "{path}");
    }
    let (code, h, _) = curl(&["-X", "PUT", "--data", "x", &s.url("/img-1.0.qcow2")]);
    assert_eq!(code, 405);
    assert_eq!(header(&h, "allow"), Some("GET, HEAD"));

    let log = s.stop();
    assert!(log.contains("\"GET /img-1.0.qcow2\" 200 3145728"), "{log}");
    assert!(log.contains("\"GET /img-1.0.qcow2\" 206 100 bytes 100-199"), "{log}");
    assert!(log.contains("\"HEAD /img-1.0.qcow2\" 200 0"), "{log}");
    assert!(log.contains("\"GET /escape\" 404"), "{log}");
    assert!(log.contains("\"PUT /img-1.0.qcow2\" 405"), "{log}");
}

#[test]
fn a_cut_download_resumes_with_curl_and_matches_the_sidecar() {
    if !curl_present() {
        return;
    }
    let (dir, _) = artifacts();
    let work = tempfile::tempdir().unwrap();
    let s = Served::start(dir.path(), &[], &work.path().join("serve.log"));
    let target = work.path().join("img-1.0.qcow2");
    let t = target.to_str().unwrap();
    // A download cut short leaves a prefix of the file; it is made with a
    // range request, so that the test does not hang on timing (curl's
    // --limit-rate does not hold back a loopback transfer).
    let partial = 1_234_567u64;
    let (code, _, exit) = curl(&["-r", &format!("0-{}", partial - 1), "-o", t, &s.url("/img-1.0.qcow2")]);
    assert_eq!((code, exit), (206, 0));
    assert_eq!(std::fs::metadata(&target).unwrap().len(), partial);
    // Resumed: curl asks for the rest from where the file ends.
    let (code, h, exit) = curl(&["-C", "-", "-o", t, &s.url("/img-1.0.qcow2")]);
    assert_eq!((code, exit), (206, 0));
    assert_eq!(
        header(&h, "content-range"),
        Some(format!("bytes {partial}-{}/{SIZE}", SIZE - 1).as_str())
    );
    let sidecar = std::fs::read_to_string(dir.path().join("img-1.0.qcow2.sha512")).unwrap();
    let got = hex::encode(Sha512::digest(std::fs::read(&target).unwrap()));
    assert_eq!(sidecar.split_whitespace().next(), Some(got.as_str()));
    let log = s.stop();
    assert!(
        log.contains(&format!("206 {} bytes {partial}-", SIZE as u64 - partial)),
        "{log}"
    );
}

#[test]
fn auth_refuses_requests_without_the_header() {
    if !curl_present() {
        return;
    }
    let (dir, bytes) = artifacts();
    let work = tempfile::tempdir().unwrap();
    let s = Served::start(
        dir.path(),
        &["--auth", "ovh:Zq9-secret"],
        &work.path().join("serve.log"),
    );
    // The header printed for `kiln deploy ovh --http-header` is the one that works.
    let printed = s
        .stdout
        .iter()
        .find_map(|l| {
            l.trim()
                .strip_prefix("'Authorization: ")
                .map(|v| v.trim_end_matches('\'').to_owned())
        })
        .unwrap_or_else(|| panic!("no header printed: {:?}", s.stdout));
    for args in [
        vec![],
        vec!["-u", "ovh:wrong"],
        vec!["-u", "other:Zq9-secret"],
        vec!["-H", "Authorization: Bearer Zq9-secret"],
    ] {
        let (code, h, _) = curl(&[&args[..], &[s.url("/img-1.0.qcow2").as_str()]].concat());
        assert_eq!(code, 401, "{args:?}");
        assert!(
            header(&h, "www-authenticate").unwrap().starts_with("Basic realm="),
            "{h}"
        );
    }
    // Even a 404 is not told to a stranger.
    let (code, _, _) = curl(&[&s.url("/nope")]);
    assert_eq!(code, 401);
    let got = work.path().join("got");
    let (code, _, _) = curl(&[
        "-H",
        &format!("Authorization: {printed}"),
        "-o",
        got.to_str().unwrap(),
        &s.url("/img-1.0.qcow2"),
    ]);
    assert_eq!(code, 200);
    assert!(std::fs::read(&got).unwrap() == bytes);
    let (code, _, _) = curl(&["-u", "ovh:Zq9-secret", "-I", &s.url("/img-1.0.qcow2")]);
    assert_eq!(code, 200);
    let log = s.stop();
    assert_eq!(log.matches(" 401 ").count(), 5, "{log}");
    assert!(
        !log.contains("Zq9-secret") && !log.contains(&printed),
        "the log shows a secret: {log}"
    );
}
