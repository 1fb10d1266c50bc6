//! Slow, real test of `[base] image` (a distribution's disk image as the
//! base, seed 000's path): the disk example, built by kiln (from the stage
//! cache when warm), is served on 127.0.0.1 by `kiln serve` with a
//! SHA256SUMS beside it, and is the base of
//! examples/debian-12-from-cloud-image.toml (its URL pointed at the
//! server). `kiln plan` and the build show the import stage instead of a
//! bootstrap, both artifacts (`ovh-byol`, `disk`) pass `kiln check` and
//! hold Debian 12 (`kiln inspect`), and both boot once: the ovh-byol image
//! through the replay of OVH's installer with UEFI onto two disks in RAID1
//! (this is CI's UEFI replay; real_deploy.rs replays the example with
//! BIOS), the disk image with BIOS to kiln boot's verdict. The downloader's
//! failure modes (checksum mismatch, interrupted transfer, 404) are fast
//! tests in kiln-build's `download` module.

mod common;
use common::replay::assert_replay_passes;
use common::*;

#[test]
#[ignore = "slow: a real build on a served base image, an OVH installer replay and a QEMU boot; run with --ignored as root"]
fn a_served_kiln_image_is_the_base_of_another_build_that_boots() {
    let base = example_image("debian-12-disk.toml", "debian-12-disk-1.0.0-disk.qcow2");
    let dir = tempfile::tempdir_in(repo_root().join("target/tmp")).unwrap();
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let name = "debian-12-disk-1.0.0-disk.qcow2";
    // A hard link: the shared example output stays as it is.
    std::fs::hard_link(&base, served.join(name)).unwrap();
    let sums = run(tool("sha256sum").arg(name).current_dir(&served));
    assert!(sums.status.success());
    std::fs::write(served.join("SHA256SUMS"), &sums.stdout).unwrap();
    // kiln serve lists its files; the helper reads the listing up to a
    // `.sha512` line, as a build's output has.
    let sha512 = run(tool("sha512sum").arg(name).current_dir(&served));
    std::fs::write(served.join(format!("{name}.sha512")), &sha512.stdout).unwrap();
    let server = Served::start(&served, &[], &dir.path().join("serve.log"));

    let spec_text = std::fs::read_to_string(example("debian-12-from-cloud-image.toml")).unwrap();
    let spec_text = spec_text.replace("http://127.0.0.1:8000", &server.base);
    assert!(spec_text.contains(&server.base), "the example's URL was not replaced");
    let spec = dir.path().join("debian-12-from-cloud-image.toml");
    std::fs::write(&spec, spec_text).unwrap();

    let plan = run(kiln().arg("plan").arg(&spec));
    let t = text(&plan);
    assert!(plan.status.success(), "{t}");
    assert!(
        t.contains("1. import") && !t.contains("bootstrap  ["),
        "kiln plan shows no import stage:\n{t}"
    );

    let out = dir.path().join("out");
    let res = run(kiln().args(["build", "--explain", "--out"]).arg(&out).arg(&spec));
    let t = text(&res);
    eprintln!("{t}");
    assert!(res.status.success(), "building on the served image failed:\n{t}");
    let log = server.stop();
    assert!(log.contains("GET /SHA256SUMS\" 200"), "the server's access log:\n{log}");
    // Downloaded by this build or an earlier one, verified, and cached
    // under its checksum.
    let sha256 = String::from_utf8_lossy(&sums.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let cached = repo_root().join(format!("target/tmp/cache/downloads/sha256-{sha256}"));
    assert!(cached.is_file(), "{} is not in the download cache", cached.display());

    for (artifact, target) in [
        ("debian-12-from-cloud-image-1.0.0.qcow2", "ovh-byol"),
        ("debian-12-from-cloud-image-1.0.0-disk.qcow2", "disk"),
    ] {
        let image = out.join(artifact);
        let check = run(kiln().arg("check").arg(&image).args(["--target", target]));
        assert!(
            check.status.success(),
            "kiln check --target {target}:\n{}",
            text(&check)
        );
        let inspect = run(kiln().arg("inspect").arg(&image));
        let t = text(&inspect);
        assert!(t.contains("Debian GNU/Linux 12"), "kiln inspect {artifact}:\n{t}");
        // The ovh-byol image holds no bootloader until OVH's installer
        // runs its make_image_bootable.sh: it boots through the replay.
        if target == "ovh-byol" {
            assert_replay_passes(&image, "uefi");
            continue;
        }
        let console = dir.path().join(format!("{target}.console.log"));
        let boot = run(kiln()
            .args([
                "boot",
                "--firmware",
                "bios",
                "--timeout",
                "600",
                "--expect",
                "Debian GNU/Linux 12",
            ])
            .arg("--console-log")
            .arg(&console)
            .arg(&image));
        let t = text(&boot);
        assert!(boot.status.success(), "kiln boot of {artifact} failed:\n{t}");
    }
}
