//! `kiln deploy ovh SERVICE_NAME --image-url URL`: OVHcloud's API v1 for
//! a BYOLinux reinstall. Credentials as OVH's own clients find them
//! (`config`), requests signed as the API requires (`sign`), the body
//! built from the build manifest and checked against OVH's schema before
//! anything is sent (`reinstall`, `schema`), a client that maps error
//! answers to advice (`client`), and the reinstall followed step by step
//! (`install`). Non-goals: OAuth2, API v2, installing other templates.

pub mod client;
pub mod config;
pub mod install;
pub mod reinstall;
pub mod schema;
pub mod sign;

/// The Python that the tests use as an oracle ($KILN_OVH_PYTHON, else the
/// venv scripts/install-deps.sh makes), if it can import `module`; else
/// skipped (outside CI) or failed (under CI) with where to get it.
#[cfg(test)]
pub(crate) fn oracle_python(module: &str, package: &str) -> Option<std::path::PathBuf> {
    let python = std::env::var_os("KILN_OVH_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/opt/kiln-test/venv/bin/python3".into());
    #[allow(clippy::disallowed_methods)] // the oracle, outside kiln's tool registry
    let has = std::process::Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .stdin(std::process::Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    kiln_exec::testing::require_or_skip(
        has,
        &format!(
            "{} cannot import `{module}` (scripts/install-deps.sh installs {package} into /opt/kiln-test/venv; or set KILN_OVH_PYTHON)",
            python.display()
        ),
    )
    .then_some(python)
}
