//! Slow real tests of the stage cache and of reproducible output: real
//! Debian builds (root, network to a Debian mirror).
//!
//!   cargo test -p kiln --test real_cache -- --ignored --test-threads=1

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::{example, example_epoch, kiln, repo_root, run, text};

/// A copy of the example BYOL spec in `dir`, so its files can be edited.
fn spec_copy(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("files")).unwrap();
    std::fs::copy(example("files/motd"), dir.join("files/motd")).unwrap();
    let spec = dir.join("byol.toml");
    std::fs::copy(example("debian-12-ovh-byol.toml"), &spec).unwrap();
    spec
}

/// A fresh stage cache that shares the slow tests' package cache, so that
/// these tests do not download Debian again.
fn fresh_cache(dir: &Path) -> PathBuf {
    let shared = repo_root().join("target/tmp/cache/packages");
    std::fs::create_dir_all(&shared).unwrap();
    let cache = dir.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::os::unix::fs::symlink(&shared, cache.join("packages")).unwrap();
    cache
}

fn events(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Field `field` of the last end of `stage` among `ev`, or `missing`.
fn stage_end(ev: &[serde_json::Value], stage: &str, field: &str, missing: &str) -> String {
    ev.iter()
        .rev()
        .find(|e| e["event"] == "stage-end" && e["stage"] == stage)
        .and_then(|e| e[field].as_str())
        .unwrap_or(missing)
        .to_owned()
}

fn status_of(ev: &[serde_json::Value], stage: &str) -> String {
    stage_end(ev, stage, "status", "missing")
}

fn rebuild_reason(ev: &[serde_json::Value], stage: &str) -> String {
    ev.iter()
        .find(|e| e["event"] == "stage-rebuild" && e["stage"] == stage)
        .and_then(|e| e["reason"].as_str())
        .unwrap_or("")
        .to_owned()
}

fn build(spec: &Path, cache: &Path, out: &Path, extra: &[&str]) -> Output {
    let res = run(kiln()
        .args(["build", "--log-format", "json", "--explain", "--out"])
        .arg(out)
        .arg("--cache-dir")
        .arg(cache)
        .args(extra)
        .arg(spec));
    assert!(res.status.success(), "build failed:\n{}", text(&res));
    res
}

const IMAGE: &str = "debian-12-byol-1.0.0.qcow2";

fn motd_in(out: &Path) -> String {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let part = &manifest["partitions"][0];
    let image = kiln_disk::DiskImage::open(&out.join(IMAGE)).unwrap();
    let mut fs =
        kiln_disk::open_filesystem(&image, part["start"].as_u64().unwrap(), part["size"].as_u64().unwrap()).unwrap();
    String::from_utf8(fs.read_file("/etc/motd").unwrap().expect("/etc/motd in the image")).unwrap()
}

fn summary_of(ev: &[serde_json::Value], stage: &str) -> String {
    stage_end(ev, stage, "summary", "")
}

/// The tree in the root filesystem of the image in `out`, as
/// [`kiln_disk::ext4_patch::tree_listing`] lists it, once `e2fsck -fn`
/// has found the filesystem clean.
fn tree_of(out: &Path) -> String {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let start = manifest["partitions"][0]["start"].as_u64().unwrap();
    let raw = out.join("listing.raw");
    let convert = run(common::tool("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(out.join(IMAGE))
        .arg(&raw));
    assert!(convert.status.success(), "{}", text(&convert));
    // e2fsprogs opens a file at an offset given after a `?`.
    let fsck = run(common::tool("e2fsck")
        .arg("-fn")
        .arg(format!("{}?offset={start}", raw.display())));
    assert!(fsck.status.success(), "e2fsck -fn:\n{}", text(&fsck));
    let listing = kiln_disk::ext4_patch::tree_listing(&raw, start).unwrap();
    std::fs::remove_file(&raw).unwrap();
    assert!(listing.lines().count() > 10_000, "{listing}");
    listing
}

fn sha512(path: &Path) -> String {
    let out = run(common::tool("sha512sum").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
#[ignore = "slow: real Debian builds (root, network to a Debian mirror)"]
fn the_stage_cache_is_shared_reused_invalidated_and_repaired() {
    let dir = tempfile::tempdir_in(repo_root().join("target")).unwrap();
    let spec = spec_copy(&dir.path().join("spec"));
    // Pinned, so that the patched tree and the one made from scratch can
    // be compared times and all (this copy is in no commit).
    let pinned = std::fs::read_to_string(&spec).unwrap().replacen(
        "[image]\n",
        &format!("[image]\nsource_date_epoch = {}\n", example_epoch()),
        1,
    );
    std::fs::write(&spec, pinned).unwrap();
    let cache = fresh_cache(dir.path());
    let (out_a, out_b) = (dir.path().join("a"), dir.path().join("b"));

    // Two builds at once on an empty cache: each stage is built once.
    let start = |out: &Path| {
        kiln()
            .args(["build", "--log-format", "json", "--explain", "--out"])
            .arg(out)
            .arg("--cache-dir")
            .arg(&cache)
            .arg(&spec)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (start(&out_a), start(&out_b));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "build a:\n{}", text(&a));
    assert!(b.status.success(), "build b:\n{}", text(&b));
    let (ea, eb) = (events(&a), events(&b));
    for stage in ["bootstrap", "customise", "ovh-byol/finalise", "ovh-byol/convert"] {
        let ran = [&ea, &eb]
            .iter()
            .filter(|ev| ev.iter().any(|e| e["event"] == "stage-start" && e["stage"] == stage))
            .count();
        assert_eq!(ran, 1, "{stage} ran {ran} times:\n{}\n{}", text(&a), text(&b));
    }
    assert_eq!(sha512(&out_a.join(IMAGE)), sha512(&out_b.join(IMAGE)));
    let first = sha512(&out_a.join(IMAGE));

    // Nothing changed: every stage comes from the cache, the image too.
    let again = events(&build(&spec, &cache, &out_a, &[]));
    for stage in ["bootstrap", "customise", "ovh-byol/finalise", "ovh-byol/convert"] {
        assert_eq!(
            status_of(&again, stage),
            "reused",
            "{stage}: {}",
            rebuild_reason(&again, stage)
        );
    }
    for stage in ["ovh-byol/filesystem", "ovh-byol/disk"] {
        assert_eq!(status_of(&again, stage), "skipped", "{stage}");
    }
    assert_eq!(sha512(&out_a.join(IMAGE)), first);

    // One [[files]] source changed: customisation and what follows rerun,
    // the bootstrap does not, and --explain names the input.
    std::fs::write(dir.path().join("spec/files/motd"), "changed by the cache test\n").unwrap();
    let changed = events(&build(&spec, &cache, &out_a, &[]));
    assert_eq!(status_of(&changed, "bootstrap"), "reused");
    assert_eq!(status_of(&changed, "customise"), "ok");
    assert!(
        rebuild_reason(&changed, "customise").contains("file files/motd"),
        "{:?}",
        rebuild_reason(&changed, "customise")
    );
    assert_eq!(status_of(&changed, "ovh-byol/convert"), "ok");
    assert_eq!(motd_in(&out_a), "changed by the cache test\n");
    assert_ne!(sha512(&out_a.join(IMAGE)), first);
    // Its filesystem is the previous disk's, patched, and holds the same
    // tree as one made from scratch: without the cached image and the
    // kept disk, the same spec makes it again.
    assert!(
        summary_of(&changed, "ovh-byol/filesystem").contains("the previous disk patched"),
        "{:?} ({:?})",
        summary_of(&changed, "ovh-byol/filesystem"),
        rebuild_reason(&changed, "ovh-byol/filesystem")
    );
    let patched = tree_of(&out_a);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache.join("records/debian-12-byol/ovh-byol_convert.json")).unwrap())
            .unwrap();
    let image_key = record["entry"].as_str().expect("the image's cache key").to_owned();
    let rm = run(kiln().args(["cache", "rm", "--cache-dir"]).arg(&cache).arg(&image_key));
    assert!(rm.status.success(), "{}", text(&rm));
    std::fs::remove_dir_all(cache.join("disks")).unwrap();
    let out_fresh = dir.path().join("fresh");
    let fresh = events(&build(&spec, &cache, &out_fresh, &[]));
    assert!(
        rebuild_reason(&fresh, "ovh-byol/filesystem").contains("made from scratch: no previous disk"),
        "{:?}",
        rebuild_reason(&fresh, "ovh-byol/filesystem")
    );
    assert_eq!(
        patched,
        tree_of(&out_fresh),
        "the patched tree differs from the one made from scratch"
    );

    // A kept disk written to since: thrown away, and the filesystem made
    // from scratch, with the change (a [[files]] entry added) in it.
    let kept = cache.join("disks/debian-12-byol/ovh-byol/disk.raw");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&kept)
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, b"damage", 3 << 20))
        .unwrap();
    std::fs::write(dir.path().join("spec/files/added"), "added by the cache test\n").unwrap();
    let mut text_now = std::fs::read_to_string(&spec).unwrap();
    text_now.push_str("\n[[files]]\nsrc = \"files/added\"\ndest = \"/etc/kiln-added\"\nmode = \"0644\"\n");
    std::fs::write(&spec, text_now).unwrap();
    let damaged = events(&build(&spec, &cache, &out_a, &[]));
    assert!(
        rebuild_reason(&damaged, "ovh-byol/filesystem").contains("was changed or damaged since it was kept"),
        "{:?}",
        rebuild_reason(&damaged, "ovh-byol/filesystem")
    );
    assert!(tree_of(&out_a).contains("./etc/kiln-added"));

    // A damaged entry is detected and rebuilt, and the result is right.
    let entry = std::fs::read_dir(cache.join("stages"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            std::fs::read(p.join("entry.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|e| e["stage"] == "customise")
        })
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .expect("a customise entry");
    std::fs::write(entry.join("layer/etc/motd"), "").unwrap();
    let repaired = events(&build(&spec, &cache, &out_a, &[]));
    assert_eq!(status_of(&repaired, "customise"), "ok");
    assert!(
        rebuild_reason(&repaired, "customise").contains("damaged"),
        "{:?}",
        rebuild_reason(&repaired, "customise")
    );
    assert_eq!(motd_in(&out_a), "changed by the cache test\n");

    // Another spec (another image name) with one package more: it is
    // installed on top of the first spec's cached bootstrap, not a new
    // bootstrap, and is in the image.
    let text_before = std::fs::read_to_string(&spec).unwrap();
    // The first spec with `package` added, as image debian-12-byol-SUFFIX
    // (none: the first spec itself), written to `file`.
    let with_package = |file: &str, package: &str, suffix: Option<&str>| {
        let mut text = text_before.replacen("install = [", &format!("install = [\"{package}\", "), 1);
        if let Some(suffix) = suffix {
            text = text.replacen(
                "name = \"debian-12-byol\"",
                &format!("name = \"debian-12-byol-{suffix}\""),
                1,
            );
        }
        let path = spec.with_file_name(file);
        std::fs::write(&path, text).unwrap();
        path
    };
    let grown_spec = with_package("grown.toml", "tree", Some("tree"));
    let out_grown = dir.path().join("grown");
    let grown = events(&build(&grown_spec, &cache, &out_grown, &[]));
    assert_eq!(status_of(&grown, "bootstrap"), "ok");
    assert!(
        rebuild_reason(&grown, "bootstrap")
            .contains("packages added: tree; installing them on top of the cached bootstrap of debian-12-byol"),
        "{:?}",
        rebuild_reason(&grown, "bootstrap")
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_grown.join("manifest.json")).unwrap()).unwrap();
    assert!(
        manifest["packages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "tree"),
        "tree not installed"
    );
    assert!(
        out_grown.join("debian-12-byol-tree-1.0.0.qcow2").is_file(),
        "the grown spec's image is missing"
    );

    // The first spec gains that package too, so neither spec's last
    // bootstrap is a subset of a third spec's packages (the first's with
    // `file` added): it grows the first's older bootstrap, still cached.
    let spec_file = spec.file_name().unwrap().to_str().unwrap().to_owned();
    with_package(&spec_file, "tree", None);
    let widened = events(&build(&spec, &cache, &out_a, &[]));
    assert_eq!(status_of(&widened, "ovh-byol/convert"), "ok");
    let third_spec = with_package("third.toml", "file", Some("file"));
    let third = events(&build(&third_spec, &cache, &dir.path().join("third"), &[]));
    assert!(
        rebuild_reason(&third, "bootstrap")
            .contains("packages added: file; installing them on top of the cached bootstrap of debian-12-byol"),
        "{:?}",
        rebuild_reason(&third, "bootstrap")
    );

    // kiln cache ls shows the entries; rm --all empties the cache.
    let ls = run(kiln().args(["cache", "ls", "--cache-dir"]).arg(&cache));
    assert!(ls.status.success() && text(&ls).contains("bootstrap"), "{}", text(&ls));
    let rm = run(kiln().args(["cache", "rm", "--all", "--cache-dir"]).arg(&cache));
    assert!(rm.status.success(), "{}", text(&rm));
    let ls = run(kiln().args(["cache", "ls", "--cache-dir"]).arg(&cache));
    assert!(text(&ls).contains("\n0 entries"), "{}", text(&ls));
}

#[test]
#[ignore = "slow: two real Debian builds (root, network to a Debian mirror)"]
fn the_example_byol_image_is_reproducible() {
    let dir = tempfile::tempdir_in(repo_root().join("target")).unwrap();
    let out = dir.path().join("out");
    let res = run(kiln()
        .args(["build", "--verify-reproducible", "--out"])
        .arg(&out)
        .arg(example("debian-12-ovh-byol.toml")));
    let msg = text(&res);
    assert!(res.status.success(), "not reproducible:\n{msg}");
    assert!(
        msg.contains(&format!("reproducible: {IMAGE} is byte-identical in both builds")),
        "{msg}"
    );
    // The SBOM (creation time from SOURCE_DATE_EPOCH, namespace from its
    // content) is compared too.
    assert!(
        msg.contains(&format!(
            "reproducible: {IMAGE}.spdx.json is byte-identical in both builds"
        )),
        "{msg}"
    );
}

/// A release build: the version reaches the artifact names and the
/// manifest, `releases.json` records it with its commit and checksums and
/// keeps the entries it had, and a dirty tree builds only when allowed, as
/// `-dirty`. The stages before the target's come from the shared cache.
#[test]
#[ignore = "slow: a real build of the BYOL example's target stages (root)"]
fn release_builds_are_versioned_and_recorded() {
    let dir = tempfile::tempdir_in(repo_root().join("target")).unwrap();
    let repo = dir.path().join("spec");
    let spec = spec_copy(&repo);
    let git = |args: &[&str]| {
        let out = run(common::tool("git").arg("-C").arg(&repo).args(args));
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "spec"]);
    let head = git(&["rev-parse", "HEAD"]);
    // The examples' epoch, so that every stage before the target's is the
    // one the other slow tests built from the example.
    let epoch = example_epoch();
    // The outputs live inside the repository, untracked: they do not count.
    // An earlier release is on record.
    let out = repo.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let earlier = serde_json::json!({"name": "debian-12-byol", "version": "1.9.0", "commit": "0123abc",
        "dirty": false, "date": "2026-11-01T00:00:00Z", "artifacts": [], "approvedBy": "ops"});
    std::fs::write(
        out.join("releases.json"),
        serde_json::to_string_pretty(&serde_json::json!({ "releases": [earlier] })).unwrap(),
    )
    .unwrap();
    let record =
        || -> serde_json::Value { serde_json::from_slice(&std::fs::read(out.join("releases.json")).unwrap()).unwrap() };

    // An untracked file makes the tree dirty: refused before any work…
    std::fs::write(repo.join("notes.txt"), "work in progress\n").unwrap();
    let refused = run(kiln()
        .args(["build", "--out"])
        .arg(&out)
        .args(["--release", "2.0.0"])
        .arg(&spec));
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("  notes.txt\n"), "{}", text(&refused));
    assert_eq!(
        record()["releases"].as_array().unwrap().len(),
        1,
        "a refused release changed the record"
    );

    // …and built as 2.0.0-dirty when allowed.
    let res = run(kiln()
        .env("SOURCE_DATE_EPOCH", &epoch)
        .args(["build", "--explain", "--out"])
        .arg(&out)
        .args(["--release", "2.0.0", "--allow-dirty"])
        .arg(&spec));
    assert!(res.status.success(), "release build failed:\n{}", text(&res));
    assert!(text(&res).contains("release 2.0.0-dirty recorded in"), "{}", text(&res));
    let image = out.join("debian-12-byol-2.0.0-dirty.qcow2");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["version"], "2.0.0-dirty");
    let record = record();
    assert_eq!(record["releases"][0], earlier, "the earlier entry changed");
    let entry = &record["releases"][1];
    assert_eq!(entry["version"], "2.0.0-dirty");
    assert_eq!(entry["commit"], head.as_str());
    assert_eq!(entry["dirty"], true);
    assert_eq!(entry["artifacts"][0]["path"], "debian-12-byol-2.0.0-dirty.qcow2");
    assert_eq!(entry["artifacts"][0]["sha512"], sha512(&image).as_str());
}
