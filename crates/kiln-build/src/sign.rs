//! Signatures of `SHA512SUMS`: made by `kiln build --sign-key KEY` with
//! `ssh-keygen -Y sign` (an SSH private key file) or `gpg --detach-sign`
//! (an OpenPGP key in the user's keyring), and checked by `kiln verify`
//! with `ssh-keygen -Y verify` against allowed signers, or `gpgv` against a
//! keyring. The signature covers `SHA512SUMS`, which lists every artifact
//! and SBOM with its SHA-512, so one signature vouches for all of them.
//!
//! kiln never asks for a passphrase: a key that needs one must be in
//! ssh-agent or gpg-agent. The signature is made on stdout and written as a
//! `*.part` file by the caller, so a failed signing leaves nothing behind.
//! Non-goals: X.509/sigstore signatures, signing anything but `SHA512SUMS`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_exec::Cmd;

/// The checksum list every build writes, and the file the signature covers.
pub const SUMS: &str = "SHA512SUMS";
/// The namespace of kiln's SSH signatures (`ssh-keygen -Y ... -n`), so a
/// signature made for something else (git commits, e-mail) is not accepted.
pub const SSH_NAMESPACE: &str = "kiln-image";
/// `SHA512SUMS`'s SSH signature.
pub const SSH_SIGNATURE: &str = "SHA512SUMS.sig";
/// `SHA512SUMS`'s armored OpenPGP signature.
pub const GPG_SIGNATURE: &str = "SHA512SUMS.asc";

/// The key `--sign-key` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignKey {
    /// An SSH private key file (or one whose public half is in ssh-agent).
    Ssh(PathBuf),
    /// An OpenPGP key id, fingerprint or user id (e-mail) in gpg's keyring.
    Gpg(String),
}

impl SignKey {
    /// A path to an existing file is an SSH key; anything else is looked up
    /// in gpg's keyring.
    pub fn parse(key: &str) -> SignKey {
        if Path::new(key).is_file() {
            SignKey::Ssh(PathBuf::from(key))
        } else {
            SignKey::Gpg(key.to_owned())
        }
    }

    /// The signature's file name, beside `SHA512SUMS`.
    pub fn signature_name(&self) -> &'static str {
        match self {
            SignKey::Ssh(_) => SSH_SIGNATURE,
            SignKey::Gpg(_) => GPG_SIGNATURE,
        }
    }

    /// The tool the key needs.
    pub fn tool(&self) -> &'static str {
        match self {
            SignKey::Ssh(_) => "ssh-keygen",
            SignKey::Gpg(_) => "gpg",
        }
    }

    /// Checks, before a build starts, that the key can be used without a
    /// passphrase prompt: the SSH file holds a private key that either has
    /// no passphrase or is loaded in ssh-agent; the OpenPGP key has a
    /// secret key in the keyring (gpg runs with `--pinentry-mode error`, so
    /// a locked one fails when signing, with a message, instead of asking).
    pub fn check(&self) -> Result<()> {
        match self {
            SignKey::Ssh(path) => {
                let text = std::fs::read(path).with_context(|| format!("reading the SSH key {}", path.display()))?;
                let text = String::from_utf8_lossy(&text);
                if !text.contains("PRIVATE KEY-----") {
                    bail!(
                        "--sign-key {}: not an SSH private key (a file is taken as an SSH private key; \
                         give the private key, not the .pub, or an OpenPGP key id for gpg)",
                        path.display()
                    );
                }
                if ssh_key_is_open(path) {
                    return Ok(());
                }
                // A passphrase: ssh-keygen would ask for it on the terminal
                // (from a background process group, where it would stop);
                // it must sign through ssh-agent instead.
                let public = ssh_public_half(path);
                let in_agent = public.exists() && Cmd::new("ssh-add").arg("-T").arg(&public).run().is_ok();
                if !in_agent {
                    bail!(
                        "--sign-key {}: the key has a passphrase (or ssh-keygen cannot read it) and ssh-agent \
                         does not hold it; load it with `ssh-add {}` (its public half {} must be beside it): \
                         kiln does not ask for passphrases",
                        path.display(),
                        path.display(),
                        public.display()
                    );
                }
                Ok(())
            }
            SignKey::Gpg(id) => {
                Cmd::new("gpg")
                    .args(["--batch", "--with-colons", "--list-secret-keys", "--"])
                    .arg(id)
                    .run()
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "--sign-key {id}: no such file, and no OpenPGP secret key {id:?} in gpg's keyring \
                             ({}): give an SSH private key file, or the id, fingerprint or e-mail of a key \
                             that `gpg --list-secret-keys` shows ({e})",
                            gnupg_home()
                        )
                    })?;
                Ok(())
            }
        }
    }

    /// The detached signature of `data` (the bytes of `SHA512SUMS`).
    pub fn sign(&self, data: &[u8]) -> Result<Vec<u8>> {
        let (cmd, what, hint) = match self {
            SignKey::Ssh(path) => (
                Cmd::new("ssh-keygen")
                    .args(["-q", "-Y", "sign", "-n", SSH_NAMESPACE, "-f"])
                    .arg(path),
                format!("the SSH key {}", path.display()),
                format!(
                    "if the key has a passphrase, load it into ssh-agent first (`ssh-add {}`): \
                     kiln does not ask for passphrases",
                    path.display()
                ),
            ),
            SignKey::Gpg(id) => (
                Cmd::new("gpg").args([
                    "--batch",
                    "--yes",
                    "--pinentry-mode",
                    "error",
                    "--armor",
                    "--detach-sign",
                    "--output",
                    "-",
                    "--local-user",
                    id,
                ]),
                format!("the OpenPGP key {id}"),
                "if the key has a passphrase, unlock it in gpg-agent first (for example by signing \
                 something with it in this session): kiln runs gpg with --batch --pinentry-mode error \
                 and never asks for it"
                    .to_owned(),
            ),
        };
        let out = cmd
            .stdin_bytes(data.to_vec())
            .run()
            .with_context(|| format!("signing {SUMS} with {what}; {hint}"))?;
        if out.stdout.is_empty() {
            bail!("signing {SUMS} with {what}: the signer printed no signature; {hint}");
        }
        Ok(out.stdout)
    }
}

/// Whether the SSH private key at `path` opens without a passphrase
/// (`ssh-keygen -y -P ''`, which never prompts).
fn ssh_key_is_open(path: &Path) -> bool {
    Cmd::new("ssh-keygen")
        .args(["-y", "-P", "", "-f"])
        .arg(path)
        .run()
        .is_ok()
}

/// `KEY.pub` beside `KEY`.
fn ssh_public_half(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

fn gnupg_home() -> String {
    std::env::var("GNUPGHOME").unwrap_or_else(|_| "~/.gnupg".to_owned())
}

/// What `kiln verify` trusts a signature from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// An SSH public key file (`--key`).
    SshKey(PathBuf),
    /// An OpenSSH allowed-signers file (`--allowed-signers`).
    AllowedSigners(PathBuf),
    /// An OpenPGP keyring or exported public key, binary or armored
    /// (`--gpg-keyring`).
    GpgKeyring(PathBuf),
}

impl Trust {
    /// The signature file this trust checks.
    pub fn signature_name(&self) -> &'static str {
        match self {
            Trust::SshKey(_) | Trust::AllowedSigners(_) => SSH_SIGNATURE,
            Trust::GpgKeyring(_) => GPG_SIGNATURE,
        }
    }

    /// Checks `signature` of `data`: `Ok(Ok(who))` for a good signature,
    /// `Ok(Err(why))` for a bad or untrusted one, `Err` when the check could
    /// not run (a missing tool, an unreadable key).
    pub fn verify(&self, data: &[u8], signature: &Path) -> Result<std::result::Result<String, String>> {
        let scratch = kiln_exec::WorkDir::new_in(&std::env::temp_dir(), "kiln-verify-")
            .context("creating a scratch directory for the signature check")?;
        match self {
            Trust::SshKey(key) => {
                let text = std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
                if text.contains("PRIVATE KEY-----") {
                    bail!(
                        "--key {}: this is a private key; give its public half (usually {}.pub)",
                        key.display(),
                        key.display()
                    );
                }
                let keys: Vec<&str> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .collect();
                if keys.is_empty() {
                    bail!("--key {}: no SSH public key in it", key.display());
                }
                let allowed = scratch.path().join("allowed_signers");
                let lines: String = keys
                    .iter()
                    .map(|k| format!("kiln-verify namespaces=\"{SSH_NAMESPACE}\" {k}\n"))
                    .collect();
                std::fs::write(&allowed, lines)?;
                ssh_verify(&allowed, "kiln-verify", data, signature)
            }
            Trust::AllowedSigners(file) => {
                if !file.is_file() {
                    bail!("--allowed-signers {}: no such file", file.display());
                }
                let found = Cmd::new("ssh-keygen")
                    .args(["-Y", "find-principals", "-s"])
                    .arg(signature)
                    .arg("-f")
                    .arg(file)
                    .run_status()?;
                let principals = String::from_utf8_lossy(&found.1.stdout).into_owned();
                let Some(principal) = principals.lines().map(str::trim).find(|l| !l.is_empty()) else {
                    return Ok(Err(format!(
                        "{} was made by a key that {} does not list",
                        signature.display(),
                        file.display()
                    )));
                };
                ssh_verify(file, principal, data, signature)
            }
            Trust::GpgKeyring(keyring) => {
                let bytes = std::fs::read(keyring).with_context(|| format!("reading {}", keyring.display()))?;
                // gpgv reads binary keyrings only: an armored export is
                // converted first.
                let binary = if bytes.starts_with(b"-----BEGIN PGP") {
                    let out = scratch.path().join("keyring.gpg");
                    Cmd::new("gpg")
                        .args(["--batch", "--dearmor", "--output"])
                        .arg(&out)
                        .arg(keyring)
                        .run()
                        .with_context(|| format!("reading the armored keyring {}", keyring.display()))?;
                    out
                } else {
                    std::path::absolute(keyring)?
                };
                let (status, out) = Cmd::new("gpgv")
                    .arg("--homedir")
                    .arg(scratch.path())
                    .arg("--keyring")
                    .arg(&binary)
                    .arg(signature)
                    .arg("-")
                    .stdin_bytes(data.to_vec())
                    .run_status()?;
                let said = last_line(&out.tail, "Good signature");
                Ok(if status.success() { Ok(said) } else { Err(said) })
            }
        }
    }
}

fn ssh_verify(
    allowed: &Path,
    principal: &str,
    data: &[u8],
    signature: &Path,
) -> Result<std::result::Result<String, String>> {
    let (status, out) = Cmd::new("ssh-keygen")
        .args(["-Y", "verify", "-n", SSH_NAMESPACE, "-f"])
        .arg(allowed)
        .arg("-I")
        .arg(principal)
        .arg("-s")
        .arg(signature)
        .stdin_bytes(data.to_vec())
        .run_status()?;
    let said = format!("{}{}", out.stdout_string(), out.tail);
    let said = last_line(&said, "Good");
    Ok(if status.success() { Ok(said) } else { Err(said) })
}

/// The line of a tool's output that says the most: the one containing
/// `prefer`, else the last non-empty one.
fn last_line(text: &str, prefer: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines
        .iter()
        .find(|l| l.contains(prefer))
        .or(lines.last())
        .map(|l| (*l).to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_an_ssh_key_and_anything_else_a_gpg_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_ed25519");
        std::fs::write(&key, "x").unwrap();
        assert_eq!(SignKey::parse(key.to_str().unwrap()), SignKey::Ssh(key.clone()));
        assert_eq!(
            SignKey::parse("ops@example.com"),
            SignKey::Gpg("ops@example.com".into())
        );
        assert_eq!(
            SignKey::parse(dir.path().join("missing").to_str().unwrap()).signature_name(),
            GPG_SIGNATURE
        );
        assert_eq!(SignKey::parse(key.to_str().unwrap()).signature_name(), SSH_SIGNATURE);
    }

    #[test]
    fn a_public_key_is_refused_for_signing_before_any_work() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id.pub");
        std::fs::write(&key, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI x\n").unwrap();
        let e = SignKey::Ssh(key).check().unwrap_err().to_string();
        assert!(e.contains("not an SSH private key"), "{e}");
    }

    #[test]
    fn the_most_telling_line_is_quoted() {
        assert_eq!(
            last_line("a\nGood signature from x\nb\n", "Good"),
            "Good signature from x"
        );
        assert_eq!(last_line("a\n\nbad thing\n\n", "Good"), "bad thing");
    }
}
