//! The guest's side of an EC2 verdict: user data, served by the metadata
//! service, whose runcmd reports on the serial console what the instance
//! got from it, as `KILN-<NAME> <value>` lines, and the check of that
//! report: the user data ran, the key is in the default user's
//! `authorized_keys`, a request without a token was refused (IMDSv1 off),
//! cloud-init took the platform for AWS, and the root partition and
//! filesystem were grown into the disk. Used by `kiln boot --imds` tests;
//! an image under test must have `curl`, `lsblk`, `findmnt` and `df`.
//! Non-goals: logging in to the guest.

use std::collections::BTreeMap;

use super::ADDRESS;

/// What the guest reports: each fact's name and the shell that prints it.
/// `{user}` stands for the default user.
const FACTS: &[(&str, &str)] = &[
    ("USERDATA", "echo ran"),
    ("KEY", "cat /home/{user}/.ssh/authorized_keys | head -n 1"),
    (
        "NOTOKEN",
        "curl -s -o /dev/null -w '%{http_code}' http://{imds}/latest/meta-data/instance-id",
    ),
    (
        "INSTANCE",
        "curl -s -H \"X-aws-ec2-metadata-token: $(curl -s -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
         http://{imds}/latest/api/token)\" http://{imds}/latest/meta-data/instance-id",
    ),
    ("CLOUD", "cat /run/cloud-init/cloud-id"),
    (
        "DISK",
        "lsblk -b -dn -o SIZE /dev/$(lsblk -no PKNAME $(findmnt -n -o SOURCE /))",
    ),
    ("ROOT", "lsblk -b -dn -o SIZE $(findmnt -n -o SOURCE /)"),
    ("FS", "df -B1 --output=size / | tail -n 1"),
];

/// The line the guest prints last.
pub const END: &str = "KILN-END done";

/// How much of the disk the root partition may leave to the others (ESP,
/// BIOS boot, /boot) and still count as grown into it.
const OTHER_PARTITIONS: u64 = 512 << 20;

/// `#cloud-config` user data whose runcmd prints every fact, then
/// `extra` ones (name, shell), then [`END`], on `/dev/console`.
pub fn user_data(default_user: &str, extra: &[(&str, &str)]) -> String {
    let mut text = String::from(
        "#cloud-config\n# Written by kiln: reports to the serial console what the instance got.\nruncmd:\n  - |\n",
    );
    text.push_str("    say() { echo \"KILN-$1 $2\" > /dev/console; }\n");
    let imds = ADDRESS.to_string();
    for (name, shell) in FACTS.iter().chain(extra) {
        let shell = shell.replace("{user}", default_user).replace("{imds}", &imds);
        text.push_str(&format!("    say {name} \"$({shell})\"\n"));
    }
    text.push_str(&format!("    echo \"{END}\" > /dev/console\n"));
    text
}

/// The facts a guest reported on its console.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    facts: BTreeMap<String, String>,
}

impl Report {
    /// Reads `KILN-<NAME> <value>` reports anywhere in a console line
    /// (another process may have printed on the same line); the first
    /// report of a name counts.
    pub fn read(console: &str) -> Report {
        let mut facts = BTreeMap::new();
        for line in console.lines() {
            let Some(at) = line.find("KILN-") else { continue };
            let rest = &line[at + "KILN-".len()..];
            let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
                facts.entry(name.to_owned()).or_insert_with(|| value.trim().to_owned());
            }
        }
        Report { facts }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.facts.get(name).map(String::as_str)
    }

    fn number(&self, name: &str) -> Result<u64, String> {
        let value = self
            .get(name)
            .ok_or_else(|| format!("the guest did not report {name}"))?;
        value
            .parse()
            .map_err(|_| format!("the guest reported {name} {value:?}, not a number of bytes"))
    }

    /// What is wrong with the report of an instance that was given
    /// `ssh_key` and `instance_id` on a disk of `disk_bytes`; empty when
    /// nothing is.
    pub fn problems(&self, ssh_key: &str, instance_id: &str, disk_bytes: u64) -> Vec<String> {
        let mut problems = Vec::new();
        let mut want = |name: &str, ok: &dyn Fn(&str) -> bool, what: &str| match self.get(name) {
            None => problems.push(format!("the guest did not report {name} ({what})")),
            Some(v) if !ok(v) => problems.push(format!("{what}: the guest reported {name} {v:?}")),
            Some(_) => {}
        };
        want("USERDATA", &|v| v == "ran", "the user data did not run");
        let key = ssh_key.trim();
        want(
            "KEY",
            &|v| v == key,
            "the metadata service's key is not in the default user's authorized_keys",
        );
        want(
            "NOTOKEN",
            &|v| v == "401",
            "a request without a token was not refused (IMDSv1 is on)",
        );
        want(
            "INSTANCE",
            &|v| v == instance_id,
            "the metadata service did not give the instance id with a token",
        );
        want("CLOUD", &|v| v == "aws", "cloud-init did not take the platform for AWS");
        match (self.number("DISK"), self.number("ROOT"), self.number("FS")) {
            (Ok(disk), Ok(root), Ok(fs)) => {
                if disk != disk_bytes {
                    problems.push(format!("the guest's disk is {disk} bytes, not {disk_bytes}"));
                }
                if root + OTHER_PARTITIONS < disk {
                    problems.push(format!(
                        "the root partition was not grown into the disk: {root} bytes of {disk}"
                    ));
                }
                // ext4's own metadata takes a few percent.
                if fs < root / 10 * 9 {
                    problems.push(format!(
                        "the root filesystem was not grown into its partition: {fs} bytes of {root}"
                    ));
                }
            }
            (disk, root, fs) => problems.extend([disk, root, fs].into_iter().filter_map(Result::err)),
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEVtTWHkQyG1lSyxUhNNQ1EZ5Awca5r8R3b/7OJwytyK kiln-imds-test";

    #[test]
    fn the_user_data_reports_every_fact() {
        insta::assert_snapshot!(user_data("admin", &[("HOSTNAME", "hostname")]));
    }

    /// Recorded from a Debian 12 guest (cloud-init 22.4.2, Ec2 datasource)
    /// booted with `kiln boot --imds --disk-size 8GiB --firmware uefi` and
    /// this user data (default user `debian`), with a report that shares
    /// its line with a kernel message added.
    const CONSOLE: &str = "\
[   81.170798] cloud-init[544]: Cloud-init v. 22.4.2 running 'modules:final' at Mon, 07 Dec 2026 00:20:08 +0000. Up 80.47 seconds.
KILN-USERDATA ran
KILN-KEY ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEVtTWHkQyG1lSyxUhNNQ1EZ5Awca5r8R3b/7OJwytyK kiln-imds-test
KILN-NOTOKEN 401
KILN-INSTANCE i-0b7f36a3612403d52
KILN-CLOUD aws
KILN-DISK 8589934592
KILN-ROOT 8453602816
KILN-FS 8288440320
[  106.2] random: crng init done KILN-END done
";

    #[test]
    fn a_good_report_passes() {
        let report = Report::read(CONSOLE);
        assert_eq!(report.get("INSTANCE"), Some("i-0b7f36a3612403d52"));
        assert_eq!(report.get("END"), Some("done"));
        assert_eq!(
            report.problems(&format!("{KEY}\n"), "i-0b7f36a3612403d52", 8 << 30),
            Vec::<String>::new()
        );
    }

    #[test]
    fn each_failure_is_named() {
        let bad = CONSOLE
            .replace("KILN-NOTOKEN 401", "KILN-NOTOKEN 200")
            .replace("KILN-CLOUD aws", "KILN-CLOUD nocloud")
            .replace("KILN-ROOT 8453602816", "KILN-ROOT 1400000000")
            .replace("KILN-USERDATA ran\n", "");
        let problems = Report::read(&bad).problems("ssh-ed25519 AAAA other", "i-0000", 8 << 30);
        let text = problems.join("\n");
        for want in [
            "the guest did not report USERDATA",
            "not in the default user's authorized_keys",
            "(IMDSv1 is on): the guest reported NOTOKEN \"200\"",
            "did not give the instance id",
            "did not take the platform for AWS",
            "root partition was not grown into the disk: 1400000000 bytes of 8589934592",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
        assert_eq!(problems.len(), 6, "{text}");
        let problems = Report::read("").problems(KEY, "i-0", 1);
        assert!(
            problems.contains(&"the guest did not report DISK".to_owned()),
            "{problems:?}"
        );
    }
}
