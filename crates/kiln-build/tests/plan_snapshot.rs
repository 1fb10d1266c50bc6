//! Snapshots of what every example plans: the stages with their actions,
//! inputs and hashes, the spec hash, the bootstrap request and the manifest
//! embedded in the image. A refactor of the planner or of the targets that
//! changes any of these changes the image's bytes (stage hashes and the
//! spec hash land in the manifest and in derived UUIDs), so these
//! snapshots are the proof that it did not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_build::manifest::{GitInfo, Manifest, Package};

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut specs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    specs.sort();
    assert!(specs.len() >= 3, "examples not found in {}", dir.display());
    specs
}

/// A plan of `spec` independent of the host: a fixed mirror, fixed tool
/// versions and a fixed SOURCE_DATE_EPOCH.
fn plan(spec: &Path) -> kiln_build::Plan {
    // Every test sets the same value, so the threads cannot disagree.
    std::env::set_var("SOURCE_DATE_EPOCH", "1764979200");
    let apt = tempfile::tempdir().unwrap();
    std::fs::write(
        apt.path().join("sources.list"),
        "deb http://mirror.example/debian bookworm main\n\
         deb http://mirror.example/debian-security bookworm-security main\n",
    )
    .unwrap();
    let tools: BTreeMap<String, String> = [
        ("kiln", "0.1.0"),
        ("mmdebstrap", "mmdebstrap 1.3.5"),
        ("mke2fs", "mke2fs 1.47.0 (5-Feb-2023)"),
        ("mkfs.xfs", "mkfs.xfs version 6.1.0"),
        ("qemu-img", "qemu-img version 10.0.0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let loaded = kiln_spec::load(spec).unwrap_or_else(|e| panic!("{e}"));
    kiln_build::plan::plan_with_host_sources(&loaded, tools, &apt.path().join(".")).unwrap()
}

fn name(spec: &Path) -> String {
    spec.file_stem().unwrap().to_string_lossy().into_owned()
}

#[test]
fn stages_of_every_example() {
    for spec in examples() {
        let p = plan(&spec);
        let v = serde_json::json!({
            "name": p.name,
            "version": p.version,
            "spec_hash": p.spec_hash,
            "source_date_epoch": p.source_date_epoch,
            "bootstrap": p.bootstrap,
            "datasources": p.datasources,
            "stages": p.stages,
        });
        insta::assert_json_snapshot!(format!("stages-{}", name(&spec)), v);
    }
}

/// The whole of `kiln plan --json`, paths made relative.
#[test]
fn plan_json_of_every_example() {
    for spec in examples() {
        let mut v = serde_json::to_value(plan(&spec)).unwrap();
        v["spec_path"] = serde_json::Value::from(format!("examples/{}.toml", name(&spec)));
        v["spec_dir"] = serde_json::Value::from("examples");
        insta::assert_json_snapshot!(format!("plan-{}", name(&spec)), v);
    }
}

#[test]
fn embedded_manifest_of_every_example() {
    for spec in examples() {
        let p = plan(&spec);
        let git = GitInfo {
            commit: "0000000000000000000000000000000000000000".to_owned(),
            dirty: false,
        };
        let packages = vec![Package {
            name: "base-files".to_owned(),
            version: "12.4+deb12u1".to_owned(),
            arch: Some("amd64".to_owned()),
        }];
        let mut m = serde_json::to_value(Manifest::new(&p, Some(git), packages)).unwrap();
        m["spec"]["path"] = serde_json::Value::from(format!("examples/{}.toml", name(&spec)));
        insta::assert_json_snapshot!(format!("manifest-{}", name(&spec)), m);
    }
}
