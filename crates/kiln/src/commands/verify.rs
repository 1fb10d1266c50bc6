//! `kiln verify DIR`: the report of [`kiln_build::verify`], rule by rule.

use anyhow::{Context, Result};
use kiln_build::sign::Trust;

use crate::cli::VerifyArgs;
use crate::exit::{Exit, Usage};
use crate::output::outln;

pub(crate) fn run(args: VerifyArgs) -> Result<Exit> {
    if !args.dir.is_dir() {
        return Err(Usage::msg(format!(
            "{}: no such directory (give the --out directory of a build)",
            args.dir.display()
        ))
        .into());
    }
    let trust = match (&args.key, &args.allowed_signers, &args.gpg_keyring) {
        (Some(k), _, _) => Some(("--key", Trust::SshKey(k.clone()), k)),
        (_, Some(f), _) => Some(("--allowed-signers", Trust::AllowedSigners(f.clone()), f)),
        (_, _, Some(f)) => Some(("--gpg-keyring", Trust::GpgKeyring(f.clone()), f)),
        _ => None,
    };
    if let Some((flag, _, path)) = &trust {
        if !path.is_file() {
            return Err(Usage::msg(format!("{flag} {}: no such file", path.display())).into());
        }
        let private = std::fs::read(path).is_ok_and(|b| String::from_utf8_lossy(&b).contains("PRIVATE KEY-----"));
        if private {
            return Err(Usage::msg(format!(
                "{flag} {}: this is a private key; give its public half (usually {}.pub)",
                path.display(),
                path.display()
            ))
            .into());
        }
    }
    let trust = trust.map(|(_, t, _)| t);
    let report = kiln_build::verify::verify(&args.dir, trust.as_ref())
        .with_context(|| format!("verifying {}", args.dir.display()))?;
    let failed = report.findings.iter().filter(|f| !f.passed).count();
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "dir": args.dir,
                "passed": failed == 0,
                "rules": report.findings,
                "notes": report.notes,
            }))?
        )?;
    } else {
        for f in &report.findings {
            let verdict = if f.passed { "PASS" } else { "FAIL" };
            outln!("{verdict} {:<10} {:<40} {}", f.rule, f.file, f.reason)?;
        }
        for n in &report.notes {
            outln!("note: {n}")?;
        }
        let total = report.findings.len();
        outln!(
            "\n{}: {} of {total} rules passed",
            if failed == 0 {
                format!("{} verified", args.dir.display())
            } else {
                format!("{} does NOT verify", args.dir.display())
            },
            total - failed
        )?;
    }
    Ok(Exit::verdict(failed == 0))
}
