//! The README's table of environment variables against the code: every
//! variable a library or the binary reads (`env::var`, `env::var_os` under
//! `crates/*/src`) must have its row, so the table cannot fall behind.

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// Names passed as string literals to `var("…")` or `var_os("…")`.
fn variables_read(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    for call in ["var(\"", "var_os(\""] {
        for (at, _) in source.match_indices(call) {
            let rest = &source[at + call.len()..];
            if let Some(end) = rest.find('"') {
                names.push(rest[..end].to_owned());
            }
        }
    }
    names
}

#[test]
fn every_environment_variable_kiln_reads_is_in_the_readme_table() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let table: Vec<&str> = readme
        .split_once("## Environment variables")
        .expect("README has an Environment variables section")
        .1
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter(|l| l.starts_with("| `"))
        .collect();
    let mut files = Vec::new();
    for krate in std::fs::read_dir(root.join("crates")).unwrap().flatten() {
        if krate.path().join("src").is_dir() {
            rust_files(&krate.path().join("src"), &mut files);
        }
    }
    let mut read = Vec::new();
    for f in &files {
        let source = std::fs::read_to_string(f).unwrap();
        // Test modules may read their own variables; they are listed apart.
        let source = source.split("#[cfg(test)]").next().unwrap();
        read.extend(variables_read(source).into_iter().map(|v| (v, f.clone())));
    }
    assert!(
        read.iter().any(|(v, _)| v == "KILN_CACHE_DIR"),
        "the scan found nothing: {read:?}"
    );
    for (var, file) in &read {
        // CI is read only by kiln_exec::testing, for the test suites.
        if var == "CI" {
            continue;
        }
        assert!(
            table.iter().any(|row| row.contains(&format!("`{var}`"))),
            "{var} (read in {}) has no row in the README's table of environment variables",
            file.display()
        );
    }
}

#[test]
fn the_scan_finds_both_forms() {
    let names = variables_read(r#"std::env::var("A").ok(); std::env::var_os("B_C"); var_os(name)"#);
    assert_eq!(names, ["A", "B_C"]);
}
