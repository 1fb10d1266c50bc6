//! Slow, real tests of `kiln deploy ovh --simulate`: the example BYOL image
//! deployed by the replay of OVH's installer onto two virtual disks with
//! RAID1, then booted with the server's BIOS and judged from the serial
//! console; and an image without make_image_bootable.sh, which must be
//! refused with a message that names the script. TCG, root, a Debian mirror.
//! The UEFI replay is real_cloud_image.rs's: the same script and installer
//! with an ovh-byol image built on an imported base, so that CI replays
//! each path once (about 7 minutes a replay under TCG).
//!
//! The BIOS replay carries the whole path of the README's "From spec to
//! installed server": the example built, `kiln check`ed, replayed, then
//! hosted by `kiln serve` and installed with `kiln deploy ovh` through the
//! fake OVH API (tests/fake_ovh), whose installer downloads the image from
//! the server with the header and checks its SHA-512, as OVH's does.
//! The same artifact is then pushed with `kiln publish oci` to a local
//! docker-registry and pulled back with `kiln pull`, byte for byte.

use std::path::{Path, PathBuf};

mod common;
mod fake_ovh;
use common::replay::{assert_replay_passes, replay};
use common::*;
use fake_ovh::{Fake, Scenario, AK, AS, CK, SERVICE};

fn byol_image() -> PathBuf {
    example_image("debian-12-ovh-byol.toml", "debian-12-byol-1.0.0.qcow2")
}

#[test]
#[ignore = "slow: replays OVH's installer in a TCG VM"]
fn replay_bios_raid1_boots_and_passes_the_verdict() {
    // The whole path: build (byol_image), check, replay, serve, deploy.
    let image = byol_image();
    let out = run(kiln().arg("check").arg(&image).args(["--target", "ovh-byol"]));
    assert!(out.status.success(), "kiln check refused the example:\n{}", text(&out));
    assert_replay_passes(&image, "bios");
    deploy_through_serve_and_the_api(&image);
    publish_and_pull_back(&image);
}

/// The other way to host it: `kiln publish oci` to a docker-registry on
/// 127.0.0.1 and `kiln pull` back, the same bytes (a few seconds).
fn publish_and_pull_back(image: &Path) {
    if !kiln_exec::testing::require_tool_or_skip("docker-registry") {
        return;
    }
    let registry = Registry::start(false);
    let reference = registry.reference("1.0.0");
    let out = run(kiln()
        .args(["publish", "oci"])
        .arg(image)
        .args([&reference, "--plain-http"]));
    assert!(out.status.success(), "{}\n{}", text(&out), registry.log());
    let work = tempfile::tempdir_in(repo_root().join("target")).unwrap();
    let out = run(kiln().args(["pull", &reference, "--plain-http", "-o"]).arg(work.path()));
    assert!(out.status.success(), "{}\n{}", text(&out), registry.log());
    let out_dir = image.parent().unwrap();
    let name = image.file_name().unwrap().to_str().unwrap();
    for file in [name.to_owned(), format!("{name}.sha512"), "manifest.json".to_owned()] {
        let cmp = run(tool("cmp").arg(out_dir.join(&file)).arg(work.path().join(&file)));
        assert!(cmp.status.success(), "{file} pulled back differs: {}", text(&cmp));
    }
}

/// `kiln serve` hosts the build's output with a password, and `kiln deploy
/// ovh` installs the image through the fake API, whose installer fetches it
/// from the server with `--http-header` and checks the manifest's SHA-512;
/// with a wrong header the install fails at OVH's download step, named.
fn deploy_through_serve_and_the_api(image: &Path) {
    let out_dir = image.parent().unwrap();
    let name = image.file_name().unwrap().to_str().unwrap();
    let size = std::fs::metadata(image).unwrap().len();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("manifest.json")).unwrap()).unwrap();
    let sha512 = manifest["ovhReinstall"]["customizations"]["imageCheckSum"]
        .as_str()
        .unwrap()
        .to_owned();
    let sidecar = std::fs::read_to_string(out_dir.join(format!("{name}.sha512"))).unwrap();
    assert_eq!(sidecar.split_whitespace().next(), Some(sha512.as_str()));

    let work = tempfile::tempdir_in(repo_root().join("target")).unwrap();
    let served = Served::start(out_dir, &["--auth", "user:pass"], &work.path().join("serve.log"));
    let good = "Authorization: Basic dXNlcjpwYXNz"; // user:pass
    assert!(served.stdout.iter().any(|l| l.contains(good)), "{:?}", served.stdout);
    let url = served.url(&format!("/{name}"));
    let deploy = |header: &str| {
        let fake = Fake::start_fetching(Scenario::Success);
        // HOME: no ovh.conf of this machine's user is read.
        let out = run(kiln()
            .current_dir(work.path())
            .env("HOME", work.path())
            .env("OVH_ENDPOINT", &fake.base)
            .env("OVH_APPLICATION_KEY", AK)
            .env("OVH_APPLICATION_SECRET", AS)
            .env("OVH_CONSUMER_KEY", CK)
            .args(["deploy", "ovh", SERVICE, "--manifest"])
            .arg(out_dir.join("manifest.json"))
            .args(["--image-url", &url, "--http-header", header])
            .args(["--hostname", "web1", "--poll-interval", "1"]));
        let t = text(&out);
        eprintln!("{t}");
        (fake, out.status.code(), t)
    };

    let (fake, code, t) = deploy(good);
    assert_eq!(code, Some(0), "{t}");
    assert!(t.contains(&format!("installed {SERVICE}: task")), "{t}");
    assert!(t.contains("step  9/17 done   Downloading image"), "{t}");
    assert!(t.contains("step 10/17 done   Checking image"), "{t}");
    let st = fake.state();
    assert!(st.problems.is_empty(), "{:?}", st.problems);
    let d = st.download.clone().expect("the fake's installer downloaded nothing");
    assert_eq!(d.error, None);
    assert_eq!(d.url, url);
    assert_eq!(
        d.headers,
        [("Authorization".to_owned(), "Basic dXNlcjpwYXNz".to_owned())]
    );
    assert_eq!(d.bytes, size, "not the whole image");
    assert_eq!(d.checksum.as_deref(), Some(sha512.as_str()));
    drop(st);

    let (fake, code, t) = deploy("Authorization: Basic dXNlcjp3cm9uZw==");
    assert_eq!(code, Some(1), "{t}");
    assert!(t.contains("FAILED at step 9/17 \"Downloading image\""), "{t}");
    assert!(t.contains("401"), "{t}");
    assert_eq!(fake.state().download.as_ref().unwrap().bytes, 0);

    let log = served.stop();
    assert!(log.contains(&format!("\"GET /{name}\" 200 {size}")), "{log}");
    assert!(log.contains(&format!("\"GET /{name}\" 401")), "{log}");
}

/// A copy of `image` with /root/.ovh/make_image_bootable.sh deleted, made
/// with qemu-img and debugfs (ext4 is edited in place, no mount needed).
fn without_script(image: &Path, dir: &Path) -> PathBuf {
    let raw = dir.join("noscript.raw");
    let res = run(tool("qemu-img").args(["convert", "-O", "raw"]).arg(image).arg(&raw));
    assert!(res.status.success(), "{}", text(&res));
    // The single partition starts at 1 MiB (kiln's layout); debugfs works on
    // a file, so cut the partition out, edit it, and splice it back.
    let part = dir.join("part.ext4");
    let res = run(tool("dd")
        .arg(format!("if={}", raw.display()))
        .arg(format!("of={}", part.display()))
        .args(["bs=1M", "skip=1", "conv=sparse", "status=none"]));
    assert!(res.status.success(), "{}", text(&res));
    let res = run(tool("debugfs")
        .args(["-w", "-R", "rm /root/.ovh/make_image_bootable.sh"])
        .arg(&part));
    assert!(res.status.success(), "{}", text(&res));
    let res = run(tool("dd")
        .arg(format!("if={}", part.display()))
        .arg(format!("of={}", raw.display()))
        .args(["bs=1M", "seek=1", "conv=sparse,notrunc", "status=none"]));
    assert!(res.status.success(), "{}", text(&res));
    let out = dir.join("noscript.qcow2");
    let res = run(tool("qemu-img")
        .args(["convert", "-c", "-O", "qcow2"])
        .arg(&raw)
        .arg(&out));
    assert!(res.status.success(), "{}", text(&res));
    out
}

#[test]
#[ignore = "slow: needs a built example image"]
fn an_image_without_the_script_is_refused_naming_it() {
    let dir = tempfile::tempdir_in(repo_root().join("target")).unwrap();
    let broken = without_script(&byol_image(), dir.path());
    let out = replay(&broken, "bios", &dir.path().join("keep"), &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("make_image_bootable.sh"),
        "the failure must name the script:\n{t}"
    );
    assert!(t.contains("preflight"), "{t}");
}
