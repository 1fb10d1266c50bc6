//! `kiln verify` end to end on output directories these tests make the way
//! a build's last stage does (an artifact, its `.sha512`, its SBOM from
//! kiln-build's generator, `SHA512SUMS`, `manifest.json`), signed with
//! kiln-build's signer using a throwaway SSH key (`ssh-keygen -N ''`) or
//! OpenPGP key (`gpg --batch --gen-key` with `%no-protection` in a private
//! GNUPGHOME). Each test damages one thing and expects the rule that names
//! it to fail. No root, no network, no build.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kiln_build::manifest::Package;
use kiln_build::sign::SignKey;
use sha2::{Digest, Sha512};

const IMAGE: &str = "test-1.0.0.qcow2";

fn kiln(args: &[&str], env: &[(&str, &Path)]) -> Output {
    #[allow(clippy::disallowed_methods)] // the binary under test
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(args).stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn tool(program: &str, args: &[&str], env: &[(&str, &Path)]) {
    #[allow(clippy::disallowed_methods)] // test setup
    let mut c = Command::new(program);
    c.args(args).stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", text(&out));
}

fn sha512(bytes: &[u8]) -> String {
    hex::encode(Sha512::digest(bytes))
}

/// A build's output directory: one artifact, its `.sha512`, its SBOM,
/// `SHA512SUMS` and `manifest.json`, as the checksums stage writes them.
fn output_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(d.join(IMAGE), &image).unwrap();
    let image_sha = sha512(&image);
    let base: kiln_spec::Spec =
        toml::from_str("[image]\nname='test'\nversion='1.0.0'\n[base]\ndistro='debian'\nrelease='bookworm'\n").unwrap();
    let packages = vec![
        Package {
            name: "grub-pc-bin".into(),
            version: "2.06-13+deb12u1".into(),
            arch: Some("amd64".into()),
        },
        Package {
            name: "linux-image-amd64".into(),
            version: "6.1.119-1".into(),
            arch: Some("amd64".into()),
        },
    ];
    let sbom = kiln_build::sbom::spdx_json(&kiln_build::sbom::SbomInput {
        artifact: IMAGE,
        sha512: &image_sha,
        version: "1.0.0",
        distribution: kiln_build::sbom::Distribution::of(&base.base),
        packages: &packages,
        created: Some(1_764_979_200),
    })
    .unwrap();
    let sbom_name = kiln_build::sbom::file_name(IMAGE);
    std::fs::write(d.join(&sbom_name), &sbom).unwrap();
    let sbom_sha = sha512(sbom.as_bytes());
    let line = format!("{image_sha}  {IMAGE}\n");
    std::fs::write(d.join(format!("{IMAGE}.sha512")), &line).unwrap();
    std::fs::write(d.join("SHA512SUMS"), format!("{line}{sbom_sha}  {sbom_name}\n")).unwrap();
    let manifest = serde_json::json!({
        "name": "test",
        "version": "1.0.0",
        "artifacts": [{
            "target": "disk", "path": IMAGE, "format": "qcow2", "size": image.len(), "sha512": image_sha,
            "sbom": {"path": sbom_name, "sha512": sbom_sha},
        }],
    });
    std::fs::write(
        d.join("manifest.json"),
        serde_json::to_string_pretty(&manifest).unwrap(),
    )
    .unwrap();
    dir
}

/// A throwaway SSH key pair in `dir`: (private, public).
fn ssh_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(name);
    tool(
        "ssh-keygen",
        &["-q", "-t", "ed25519", "-N", "", "-C", name, "-f", key.to_str().unwrap()],
        &[],
    );
    (key.clone(), key.with_extension("pub"))
}

fn sign(dir: &Path, key: &SignKey) {
    let sums = std::fs::read(dir.join("SHA512SUMS")).unwrap();
    let sig = key.sign(&sums).unwrap_or_else(|e| panic!("{e:#}"));
    std::fs::write(dir.join(key.signature_name()), sig).unwrap();
}

fn verify(dir: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let out = kiln(&[&["verify", dir.to_str().unwrap()], extra].concat(), &[]);
    (out.status.code(), text(&out))
}

fn flip_a_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_good_directory_passes_and_a_flipped_byte_fails_naming_the_file() {
    let out = output_dir();
    let (code, t) = verify(out.path(), &[]);
    assert_eq!(code, Some(0), "{t}");
    for rule in [
        "PASS sums",
        "PASS checksum   test-1.0.0.qcow2 ",
        "PASS checksum   test-1.0.0.qcow2.spdx.json",
        "PASS sidecar    test-1.0.0.qcow2.sha512",
        "PASS manifest   test-1.0.0.qcow2 ",
        "PASS manifest   test-1.0.0.qcow2.spdx.json",
        "PASS sbom       test-1.0.0.qcow2.spdx.json",
    ] {
        assert!(t.contains(rule), "no `{rule}`:\n{t}");
    }
    assert!(t.contains("note: SHA512SUMS is not signed"), "{t}");

    flip_a_byte(&out.path().join(IMAGE), 1000);
    let (code, t) = verify(out.path(), &[]);
    assert_eq!(code, Some(1), "{t}");
    for rule in [
        "FAIL checksum   test-1.0.0.qcow2 ",
        "FAIL sidecar    test-1.0.0.qcow2.sha512",
        "FAIL manifest   test-1.0.0.qcow2 ",
    ] {
        assert!(t.contains(rule), "no `{rule}`:\n{t}");
    }
    assert!(t.contains("fetch or build it again"), "{t}");
    assert!(t.contains("PASS checksum   test-1.0.0.qcow2.spdx.json"), "{t}");
    assert!(t.contains("does NOT verify"), "{t}");

    // JSON says the same.
    let out_json = kiln(&["verify", out.path().to_str().unwrap(), "--json"], &[]);
    let v: serde_json::Value = serde_json::from_slice(&out_json.stdout).unwrap();
    assert_eq!(v["passed"], false);
    assert!(v["rules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["rule"] == "checksum" && r["file"] == IMAGE && r["passed"] == false));
}

#[test]
fn a_missing_artifact_and_an_sbom_of_another_build_fail() {
    let out = output_dir();
    let sbom = out.path().join(kiln_build::sbom::file_name(IMAGE));
    let other = std::fs::read_to_string(&sbom).unwrap().replace(
        &sha512(&std::fs::read(out.path().join(IMAGE)).unwrap()),
        &"0".repeat(128),
    );
    std::fs::write(&sbom, other).unwrap();
    std::fs::remove_file(out.path().join(IMAGE)).unwrap();
    let (code, t) = verify(out.path(), &[]);
    assert_eq!(code, Some(1), "{t}");
    assert!(t.contains("FAIL manifest   test-1.0.0.qcow2 "), "{t}");
    assert!(t.contains("FAIL sbom       test-1.0.0.qcow2.spdx.json"), "{t}");
    assert!(t.contains("another SHA-512"), "{t}");
}

#[test]
fn ssh_signatures_are_checked_with_the_key_or_allowed_signers() {
    if !kiln_exec::testing::require_tool_or_skip("ssh-keygen") {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = ssh_key(keys.path(), "release");
    let (_, stranger) = ssh_key(keys.path(), "stranger");
    let out = output_dir();
    let dir = out.path();
    let key = SignKey::parse(private.to_str().unwrap());
    assert_eq!(key, SignKey::Ssh(private.clone()));
    key.check().unwrap();

    // A missing signature with --key fails.
    let (code, t) = verify(dir, &["--key", public.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains("FAIL signature  SHA512SUMS.sig") && t.contains("--sign-key"),
        "{t}"
    );

    sign(dir, &key);
    let (code, t) = verify(dir, &["--key", public.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{t}");
    assert!(t.contains("PASS signature  SHA512SUMS.sig"), "{t}");
    // Without a key the signature is named but not judged.
    let (code, t) = verify(dir, &[]);
    assert_eq!(code, Some(0), "{t}");
    assert!(t.contains("SHA512SUMS.sig not checked"), "{t}");

    // An allowed-signers file that lists the key, and one that does not.
    let allowed = keys.path().join("allowed_signers");
    let pubkey = std::fs::read_to_string(&public).unwrap();
    std::fs::write(
        &allowed,
        format!("release@example.com namespaces=\"kiln-image\" {pubkey}"),
    )
    .unwrap();
    let (code, t) = verify(dir, &["--allowed-signers", allowed.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{t}");
    let others = keys.path().join("others");
    let strange = std::fs::read_to_string(&stranger).unwrap();
    std::fs::write(&others, format!("x@example.com {strange}")).unwrap();
    let (code, t) = verify(dir, &["--allowed-signers", others.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{t}");
    assert!(t.contains("FAIL signature"), "{t}");

    // A wrong key fails.
    let (code, t) = verify(dir, &["--key", stranger.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{t}");
    assert!(t.contains("FAIL signature  SHA512SUMS.sig"), "{t}");

    // A private key given as --key is a usage error that says what to give.
    let (code, t) = verify(dir, &["--key", private.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{t}");
    assert!(t.contains("give its public half"), "{t}");

    // A changed SHA512SUMS (a checksum swapped for another file's) fails the
    // signature, even though every line still matches some file.
    let sums = dir.join("SHA512SUMS");
    let text_before = std::fs::read_to_string(&sums).unwrap();
    std::fs::write(&sums, text_before.lines().next().unwrap().to_owned() + "\n").unwrap();
    let (code, t) = verify(dir, &["--key", public.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{t}");
    assert!(t.contains("FAIL signature  SHA512SUMS.sig"), "{t}");
    assert!(t.contains("changed after signing"), "{t}");
}

#[test]
fn openpgp_signatures_are_checked_with_a_keyring() {
    if !kiln_exec::testing::require_tool_or_skip("gpg")
        || !kiln_exec::testing::require_tool_or_skip("gpgv")
        || !kiln_exec::testing::require_tool_or_skip("ssh-keygen")
    {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let gnupg = home.path().join("gnupg");
    std::fs::create_dir(&gnupg).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&gnupg, std::fs::Permissions::from_mode(0o700)).unwrap();
    let env = [("GNUPGHOME", gnupg.as_path())];
    let _agent = Agent(gnupg.clone());
    for (email, file) in [
        ("release@kiln.invalid", "release"),
        ("stranger@kiln.invalid", "stranger"),
    ] {
        let params = home.path().join(file);
        std::fs::write(
            &params,
            format!(
                "%no-protection\nKey-Type: eddsa\nKey-Curve: ed25519\nKey-Usage: sign\n\
                 Name-Real: kiln test\nName-Email: {email}\nExpire-Date: 0\n%commit\n"
            ),
        )
        .unwrap();
        tool("gpg", &["--batch", "--gen-key", params.to_str().unwrap()], &env);
        let exported = home.path().join(format!("{file}.asc"));
        tool(
            "gpg",
            &[
                "--batch",
                "--armor",
                "--output",
                exported.to_str().unwrap(),
                "--export",
                email,
            ],
            &env,
        );
    }
    let out = output_dir();
    let dir = out.path();
    let keyring = home.path().join("release.asc");
    let stranger = home.path().join("stranger.asc");

    // Missing signature with a keyring: fails.
    let (code, t) = verify(dir, &["--gpg-keyring", keyring.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{t}");
    assert!(t.contains("FAIL signature  SHA512SUMS.asc"), "{t}");

    // kiln's signer runs gpg with the GNUPGHOME of its process; this test
    // signs through the binary's library in a child process to keep the
    // variable out of the other tests' threads.
    let sums = std::fs::read(dir.join("SHA512SUMS")).unwrap();
    let sig = gpg_sign_in_child(&gnupg, &sums);
    std::fs::write(dir.join("SHA512SUMS.asc"), sig).unwrap();
    let (code, t) = verify(dir, &["--gpg-keyring", keyring.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{t}");
    assert!(
        t.contains("PASS signature  SHA512SUMS.asc") && t.contains("Good signature"),
        "{t}"
    );

    // A wrong key, then a changed SHA512SUMS.
    let (code, t) = verify(dir, &["--gpg-keyring", stranger.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{t}");
    assert!(t.contains("FAIL signature  SHA512SUMS.asc"), "{t}");
    flip_a_byte(&dir.join("SHA512SUMS"), 3);
    let (code, t) = verify(dir, &["--gpg-keyring", keyring.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{t}");
    assert!(t.contains("FAIL signature  SHA512SUMS.asc"), "{t}");

    // An SSH key for an OpenPGP-signed directory says which option fits.
    let keys = tempfile::tempdir().unwrap();
    let (_, public) = ssh_key(keys.path(), "k");
    let (code, t) = verify(dir, &["--key", public.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains("there is SHA512SUMS.asc") && t.contains("--gpg-keyring"),
        "{t}"
    );
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/debian-12-ovh-byol.toml")
}

/// `kiln build --sign-key` with a key that cannot sign stops with exit 2
/// before any work: the output directory is not even created.
#[test]
fn a_key_that_cannot_sign_stops_the_build_before_any_work() {
    if !kiln_exec::testing::require_tool_or_skip("ssh-keygen") || !kiln_exec::testing::require_tool_or_skip("gpg") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let protected = dir.path().join("protected");
    tool(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "a passphrase",
            "-f",
            protected.to_str().unwrap(),
        ],
        &[],
    );
    let gnupg = dir.path().join("gnupg");
    std::fs::create_dir(&gnupg).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&gnupg, std::fs::Permissions::from_mode(0o700)).unwrap();
    let _agent = Agent(gnupg.clone());
    let out = dir.path().join("out");
    let public = protected.with_extension("pub");
    for (key, says) in [
        (protected.to_str().unwrap(), "ssh-add"),
        (public.to_str().unwrap(), "not an SSH private key"),
        ("nobody@kiln.invalid", "no OpenPGP secret key"),
    ] {
        #[allow(clippy::disallowed_methods)] // the binary under test
        let res = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["build", "--out", out.to_str().unwrap(), "--sign-key", key])
            .arg(example())
            .env_remove("SSH_AUTH_SOCK")
            .env("GNUPGHOME", &gnupg)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let t = text(&res);
        assert_eq!(res.status.code(), Some(2), "{key}: {t}");
        assert!(t.contains(says), "{key}: {t}");
        assert!(!out.exists(), "{key}: the build started");
    }
}

/// Signs `data` with kiln-build's OpenPGP signer in a child process whose
/// GNUPGHOME is `gnupg`: this test binary run again, on the test below.
fn gpg_sign_in_child(gnupg: &Path, data: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("data");
    std::fs::write(&input, data).unwrap();
    #[allow(clippy::disallowed_methods)] // this test binary, as a helper
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "gpg_signer_helper", "--include-ignored", "--nocapture"])
        .env("GNUPGHOME", gnupg)
        .env("KILN_TEST_SIGN_INPUT", &input)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    std::fs::read(input.with_extension("asc")).unwrap()
}

/// Not a test of its own: the child of [`gpg_sign_in_child`].
#[test]
#[ignore = "a helper that openpgp_signatures_are_checked_with_a_keyring runs"]
fn gpg_signer_helper() {
    let Some(input) = std::env::var_os("KILN_TEST_SIGN_INPUT").map(PathBuf::from) else {
        return;
    };
    let key = SignKey::parse("release@kiln.invalid");
    assert_eq!(key.signature_name(), "SHA512SUMS.asc");
    key.check().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(SignKey::parse("nobody@kiln.invalid").check().is_err());
    let sig = key
        .sign(&std::fs::read(&input).unwrap())
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(sig.starts_with(b"-----BEGIN PGP SIGNATURE-----"));
    std::fs::write(input.with_extension("asc"), sig).unwrap();
}

/// Stops the gpg-agent that gpg started for the test's GNUPGHOME.
struct Agent(PathBuf);

impl Drop for Agent {
    fn drop(&mut self) {
        #[allow(clippy::disallowed_methods)] // test cleanup
        let _ = Command::new("gpgconf")
            .args(["--kill", "gpg-agent"])
            .env("GNUPGHOME", &self.0)
            .stdin(Stdio::null())
            .output();
    }
}
