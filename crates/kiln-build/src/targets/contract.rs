//! What every target's contract check shares: the options `kiln check`
//! passes, the verdict of one rule, and the rules about identity that no
//! image may bake in (machine-id, SSH host keys), whatever its target.
//! Each target's own rules live in its module ([`super::ovh_byol::check`],
//! [`super::disk`]'s `check`, [`super::iso`]'s `check`).

use kiln_disk::FsRead;
use serde::Serialize;

/// What the caller knows about where the image will run; each target uses
/// what concerns it.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// The server's RAM in bytes (ovh-byol): OVH downloads the image into
    /// memory and needs it to be smaller than RAM − 3 GiB.
    pub ram: Option<u64>,
    /// The `efiBootloaderPath` that will be passed to the OVH API (e.g.
    /// `\efi\debian\grubx64.efi`); taken from the embedded manifest when unset.
    pub efi_bootloader_path: Option<String>,
}

/// The verdict of one rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleResult {
    pub id: &'static str,
    pub title: String,
    pub passed: bool,
    pub reason: String,
}

/// Passed or not, and why.
pub(crate) type Verdict = (bool, String);

pub(crate) fn pass(reason: impl Into<String>) -> Verdict {
    (true, reason.into())
}

pub(crate) fn fail(reason: impl Into<String>) -> Verdict {
    (false, reason.into())
}

/// Collects verdicts as [`RuleResult`]s.
#[derive(Debug, Default)]
pub(crate) struct Results(pub Vec<RuleResult>);

impl Results {
    pub fn push(&mut self, id: &'static str, title: &str, (passed, reason): Verdict) {
        self.0.push(RuleResult {
            id,
            title: title.to_owned(),
            passed,
            reason,
        });
    }
}

/// An error and its causes on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s = format!("{s}: {c}");
        cur = c.source();
    }
    s
}

/// No machine-id baked into the tree.
pub(crate) fn machine_id_rule(fs: &mut dyn FsRead) -> kiln_disk::Result<Verdict> {
    let mut baked = Vec::new();
    for path in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
        if fs
            .read_file(path)?
            .is_some_and(|c| !c.iter().all(u8::is_ascii_whitespace))
        {
            baked.push(path);
        }
    }
    Ok(if baked.is_empty() {
        pass("no machine-id content")
    } else {
        fail(format!(
            "{} has content: every machine made from the image would share one machine-id (DHCP client ids, journald); empty /etc/machine-id and delete /var/lib/dbus/machine-id",
            baked.join(" and ")
        ))
    })
}

/// No SSH host keys baked into the tree.
pub(crate) fn ssh_keys_rule(fs: &mut dyn FsRead) -> kiln_disk::Result<Verdict> {
    let keys: Vec<String> = fs
        .read_dir("/etc/ssh")?
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with("ssh_host_"))
        .collect();
    Ok(if keys.is_empty() {
        pass("no /etc/ssh/ssh_host_* keys")
    } else {
        fail(format!(
            "baked host keys /etc/ssh/{}: every machine made from the image would share them; delete them (they are generated at first boot)",
            keys.join(", /etc/ssh/")
        ))
    })
}
