//! Records the commit kiln is built from for `kiln --version`: the short
//! hash of HEAD when the workspace is a git checkout and git is installed,
//! `unknown` otherwise (a source tarball, a vendored copy inside another
//! repository). Cargo reruns this when HEAD or the branch it names moves.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let workspace = Path::new(&manifest_dir).join("../..");
    let commit = commit(&workspace).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=KILN_GIT_COMMIT={commit}");
}

fn commit(workspace: &Path) -> Option<String> {
    // Only this workspace's own repository counts, not one it is vendored in.
    let toplevel = PathBuf::from(git(workspace, &["rev-parse", "--show-toplevel"])?);
    if toplevel.canonicalize().ok()? != workspace.canonicalize().ok()? {
        return None;
    }
    // In a worktree HEAD lives in the worktree's git dir, branches in the common one.
    let git_dir = workspace.join(git(workspace, &["rev-parse", "--git-dir"])?);
    let common_dir = workspace.join(git(workspace, &["rev-parse", "--git-common-dir"])?);
    let mut watched = vec![git_dir.join("HEAD"), common_dir.join("packed-refs")];
    if let Some(branch) = git(workspace, &["symbolic-ref", "-q", "HEAD"]) {
        watched.push(common_dir.join(branch));
    }
    // A path that does not exist would rerun this script on every build.
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    git(workspace, &["rev-parse", "--short", "HEAD"])
}

/// Runs git in `dir`; its trimmed stdout if it succeeded.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    // kiln_exec::Cmd is not available to a build script; this is the one
    // other place a process is started, and only at build time.
    #[allow(clippy::disallowed_methods)]
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}
