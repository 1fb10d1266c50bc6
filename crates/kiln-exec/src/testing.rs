//! For tests only: the one way a test decides whether it can run on this
//! machine.
//!
//! A test that needs a tool (QEMU, binutils) or a file (OVMF) that a
//! developer's machine may lack skips itself there, saying why; under CI
//! (the `CI` environment variable set, as every CI service does) the same
//! absence fails the test, so a suite can never go green by skipping.
//! Facts about the machine that no package can change (a kernel built
//! without a driver) are not prerequisites: such tests check for them
//! themselves and skip everywhere. Non-goals: installing anything, root checks.

use crate::tools::{find_tool, which};

/// Whether the tests run under CI: `CI` is set to anything but empty,
/// `0` or `false`.
pub fn in_ci() -> bool {
    ci_value_means_ci(std::env::var("CI").ok().as_deref())
}

fn ci_value_means_ci(value: Option<&str>) -> bool {
    value.is_some_and(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false"))
}

/// Whether a test that needs `tool` on `PATH` can run: `true` if it is
/// there. If not, panics under CI and otherwise prints why the test is
/// skipped and returns `false`, for the caller to `return` on. The message
/// names the Debian package from the tool registry.
pub fn require_tool_or_skip(tool: &str) -> bool {
    let package = find_tool(tool).map_or_else(
        || "a package that provides it".to_owned(),
        |t| format!("the Debian package `{}`", t.package),
    );
    require_or_skip(
        which(tool).is_some(),
        &format!("{tool} is not installed (install {package})"),
    )
}

/// [`require_tool_or_skip`] for a prerequisite that is not a program:
/// `present` says whether it is there, `missing` what is lacking and how to
/// get it.
pub fn require_or_skip(present: bool, missing: &str) -> bool {
    decide(present, in_ci(), missing)
}

fn decide(present: bool, ci: bool, missing: &str) -> bool {
    if present {
        return true;
    }
    assert!(
        !ci,
        "{missing}; CI is set, so this test fails instead of skipping (run scripts/install-deps.sh)"
    );
    eprintln!("skipped: {missing}");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_values() {
        for (value, ci) in [
            (None, false),
            (Some(""), false),
            (Some("0"), false),
            (Some("false"), false),
            (Some("FALSE"), false),
            (Some("true"), true),
            (Some("1"), true),
            (Some("yes"), true),
        ] {
            assert_eq!(ci_value_means_ci(value), ci, "{value:?}");
        }
    }

    #[test]
    fn present_runs_missing_skips_outside_ci() {
        assert!(decide(true, true, "x"));
        assert!(decide(true, false, "x"));
        assert!(!decide(false, false, "x"));
    }

    #[test]
    #[should_panic(expected = "kiln-no-such-tool is not installed; CI is set, so this test fails instead of skipping")]
    fn missing_fails_under_ci() {
        decide(false, true, "kiln-no-such-tool is not installed");
    }

    #[test]
    fn a_tool_on_path_is_required_without_skipping() {
        assert!(require_tool_or_skip("sh"));
    }
}
