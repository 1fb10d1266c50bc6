//! The verdict probe: a cloud-config part that kiln adds to the user data of
//! the replay (as a second part of a MIME multipart, so the user's own user
//! data still runs as given). Its `runcmd` writes a marker and prints what
//! the verdict needs to the serial console; [`Verdict::parse`] reads it back.

use std::fmt::Write as _;

use serde::Serialize;

const BOUNDARY: &str = "==KILN-REPLAY-BOUNDARY==";

/// Where the probe writes its marker in the deployed system.
pub const MARKER_PATH: &str = "/var/lib/kiln-replay-marker";
pub const MARKER: &str = "kiln-runcmd-ok";

/// The user data to put on the config drive: the user's (or an empty
/// cloud-config) plus the probe, which checks that `ssh_key` reached the
/// default user.
pub fn user_data(user: Option<&[u8]>, ssh_key: Option<&str>) -> Vec<u8> {
    let user = user.unwrap_or(b"#cloud-config\n{}\n");
    let first = String::from_utf8_lossy(user.split(|&b| b == b'\n').next().unwrap_or_default()).into_owned();
    let content_type = if first.starts_with("#cloud-config") {
        "text/cloud-config"
    } else if first.starts_with("#!") {
        "text/x-shellscript"
    } else if first.starts_with("#include") {
        "text/x-include-url"
    } else {
        "text/plain"
    };
    let key_check = match ssh_key {
        // Public key material: only the type and base64 body are compared.
        Some(k) => {
            let body = k.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
            format!(
                "if grep -qF '{}' \"$h/.ssh/authorized_keys\" 2>/dev/null; then k=yes; else k=no; fi; ",
                body.replace('\'', "")
            )
        }
        None => "k=none; ".to_owned(),
    };
    let mut probe = String::from("#cloud-config\nruncmd:\n");
    let _ = writeln!(probe, "  - [sh, -c, 'echo {MARKER} > {MARKER_PATH}']");
    let script = format!(
        "u=$(getent passwd 1000 | cut -d: -f1); h=$(getent passwd 1000 | cut -d: -f6); {key_check}\
         echo \"KILN-VERDICT hostname=$(hostname) user=$u key=$k marker=$(cat {MARKER_PATH} 2>/dev/null)\" > /dev/ttyS0; \
         if [ -e /proc/mdstat ]; then sed \"s/^/KILN-MDSTAT /\" /proc/mdstat > /dev/ttyS0; fi"
    );
    let _ = writeln!(probe, "  - [sh, -c, {}]", yaml_single_quoted(&script));

    let mut out = format!("Content-Type: multipart/mixed; boundary=\"{BOUNDARY}\"\nMIME-Version: 1.0\n\n");
    let _ = write!(
        out,
        "--{BOUNDARY}\nContent-Type: {content_type}; charset=\"utf-8\"\nMIME-Version: 1.0\n\n"
    );
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(user);
    if !user.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    let tail = format!(
        "--{BOUNDARY}\nContent-Type: text/cloud-config; charset=\"utf-8\"\nMIME-Version: 1.0\n\
         Merge-Type: list(append)+dict(recurse_array,no_replace)+str()\n\n{probe}--{BOUNDARY}--\n"
    );
    bytes.extend_from_slice(tail.as_bytes());
    bytes
}

fn yaml_single_quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Console text that means the first boot is over, and what it means.
const BOOT_ERRORS: &[(&str, &str)] = &[
    (
        "kiln: efiBootloaderPath not found",
        "the firmware found no efiBootloaderPath on any disk: make_image_bootable.sh did not install it there",
    ),
    ("Kernel panic - not syncing", "the kernel panicked"),
    (
        "You are in emergency mode",
        "systemd dropped to emergency mode (see the console log)",
    ),
    (
        "(initramfs) ",
        "the initramfs could not find or mount the root filesystem",
    ),
    (
        "No bootable device",
        "the BIOS found no bootable disk: GRUB is not in the MBR",
    ),
];

/// What the deployed system reported on its console.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The hostname in the login prompt (`<hostname> login:`).
    pub login_hostname: Option<String>,
    pub hostname: Option<String>,
    pub user: Option<String>,
    /// `yes`, `no` or `none` (no key was given).
    pub key: Option<String>,
    pub marker: bool,
    /// md arrays reported active, e.g. `md0 : active raid1 vdb3[1] vda3[0]`.
    pub active_arrays: Vec<String>,
    /// Why the boot cannot get further, when the console says so.
    pub boot_error: Option<String>,
}

impl Verdict {
    /// Reads the probe's lines and the login prompt out of console text.
    pub fn parse(console: &str) -> Verdict {
        let mut v = Verdict::default();
        for (needle, why) in BOOT_ERRORS {
            if console.contains(needle) {
                v.boot_error = Some((*why).to_owned());
            }
        }
        for line in console.lines() {
            let line = line.trim_end_matches('\r');
            if let Some(rest) = line.split("KILN-VERDICT ").nth(1) {
                for field in rest.split_whitespace() {
                    match field.split_once('=') {
                        Some(("hostname", h)) => v.hostname = Some(h.to_owned()),
                        Some(("user", u)) if !u.is_empty() => v.user = Some(u.to_owned()),
                        Some(("key", k)) => v.key = Some(k.to_owned()),
                        Some(("marker", m)) => v.marker = m == MARKER,
                        _ => {}
                    }
                }
            }
            if let Some(rest) = line.split("KILN-MDSTAT ").nth(1) {
                if rest.contains(" : active") {
                    v.active_arrays.push(rest.trim().to_owned());
                }
            }
            if let Some(pos) = line.find(" login:") {
                let host = line[..pos].split_whitespace().last().unwrap_or_default();
                if !host.is_empty() && !host.starts_with("KILN-") {
                    v.login_hostname = Some(host.to_owned());
                }
            }
        }
        v
    }

    /// Whether the console has everything the verdict needs, or shows that
    /// it never will (so the boot can stop waiting).
    pub fn complete(&self, expect_raid: bool) -> bool {
        if self.boot_error.is_some() {
            return true;
        }
        self.login_hostname.is_some() && self.hostname.is_some() && (!expect_raid || !self.active_arrays.is_empty())
    }

    /// The failed checks, each as a sentence; empty when the verdict passes.
    pub fn failures(&self, hostname: &str, key_given: bool, expect_raid: bool) -> Vec<String> {
        let mut f = Vec::new();
        if let Some(e) = &self.boot_error {
            f.push(e.clone());
        }
        match &self.login_hostname {
            None => f.push("no login prompt on the serial console".to_owned()),
            Some(h) if h != hostname => f.push(format!(
                "the login prompt shows hostname {h:?}, not {hostname:?} from the config drive"
            )),
            _ => {}
        }
        match &self.hostname {
            None => f.push("cloud-init's runcmd never reported (user data not applied?)".to_owned()),
            Some(h) if h != hostname => f.push(format!("hostname is {h:?}, not {hostname:?} from the config drive")),
            _ => {}
        }
        if self.hostname.is_some() {
            if !self.marker {
                f.push(format!("the user data's runcmd marker {MARKER_PATH} is missing"));
            }
            if self.user.is_none() {
                f.push("no default user (uid 1000) was created by cloud-init".to_owned());
            }
            if key_given && self.key.as_deref() != Some("yes") {
                f.push("the SSH key is not in the default user's authorized_keys".to_owned());
            }
        }
        if expect_raid && self.active_arrays.is_empty() {
            f.push("no active md RAID array in /proc/mdstat".to_owned());
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_user_data_and_probe_in_a_multipart() {
        let ud = String::from_utf8(user_data(
            Some(b"#!/bin/sh\necho hi\n"),
            Some("ssh-ed25519 AAAAC3Nz me@x"),
        ))
        .unwrap();
        assert!(
            ud.starts_with("Content-Type: multipart/mixed; boundary=\"==KILN-REPLAY-BOUNDARY==\""),
            "{ud}"
        );
        assert!(ud.contains("Content-Type: text/x-shellscript"), "{ud}");
        assert!(ud.contains("#!/bin/sh\necho hi\n--==KILN"), "{ud}");
        assert!(ud.contains("grep -qF ''ssh-ed25519 AAAAC3Nz''"), "{ud}");
        assert!(ud.ends_with("--==KILN-REPLAY-BOUNDARY==--\n"), "{ud}");
        let default = String::from_utf8(user_data(None, None)).unwrap();
        assert!(default
            .contains("Content-Type: text/cloud-config; charset=\"utf-8\"\nMIME-Version: 1.0\n\n#cloud-config\n{}\n"));
    }

    #[test]
    fn parses_a_passing_console() {
        let console = "[  OK  ] Started foo\r\n\
            Debian GNU/Linux 12 web1 ttyS0\r\n\r\nweb1 login: \
            KILN-VERDICT hostname=web1 user=debian key=yes marker=kiln-runcmd-ok\n\
            KILN-MDSTAT Personalities : [raid1]\n\
            KILN-MDSTAT md0 : active raid1 vdb3[1] vda3[0]\n";
        let v = Verdict::parse(console);
        assert_eq!(v.login_hostname.as_deref(), Some("web1"));
        assert_eq!(v.user.as_deref(), Some("debian"));
        assert!(v.marker);
        assert_eq!(v.active_arrays, ["md0 : active raid1 vdb3[1] vda3[0]"]);
        assert!(v.complete(true));
        assert!(v.failures("web1", true, true).is_empty());
    }

    #[test]
    fn names_what_is_missing() {
        let v = Verdict::parse("localhost login: KILN-VERDICT hostname=localhost user= key=no marker=\n");
        let f = v.failures("web1", true, true);
        assert!(
            f.iter()
                .any(|x| x.contains("login prompt shows hostname \"localhost\"")),
            "{f:?}"
        );
        assert!(f.iter().any(|x| x.contains("marker")), "{f:?}");
        assert!(f.iter().any(|x| x.contains("default user")), "{f:?}");
        assert!(f.iter().any(|x| x.contains("SSH key")), "{f:?}");
        assert!(f.iter().any(|x| x.contains("RAID")), "{f:?}");
        assert_eq!(Verdict::parse("").failures("h", false, false).len(), 2);
    }

    #[test]
    fn a_dead_end_ends_the_wait_with_a_reason() {
        let v = Verdict::parse("Shell> kiln: efiBootloaderPath not found on any filesystem\r\n");
        assert!(v.complete(true));
        assert!(v.failures("h", false, false)[0].contains("make_image_bootable.sh did not install it"));
        assert!(Verdict::parse("Kernel panic - not syncing: VFS").complete(false));
    }
}
