//! What every target's contract check shares: the options `kiln check`
//! passes, the verdict of one rule, the rules about identity that no
//! image may bake in (machine-id, SSH host keys), whatever its target, and
//! the readers of what cloud-init and the network stack will do (cloud-init's
//! merged configuration, baked network configuration).
//! Each target's own rules live in its module ([`super::ovh_byol::check`],
//! [`super::disk`]'s `check`, [`super::iso`]'s `check`).

use std::collections::BTreeSet;

use kiln_disk::{FileKind, FsRead};
use serde::Serialize;
use serde_yaml_ng::Value as Yaml;

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

/// Where a machine-id may be baked in.
pub(crate) const MACHINE_ID_PATHS: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];

/// No machine-id baked into the tree.
pub(crate) fn machine_id_rule(fs: &mut dyn FsRead) -> kiln_disk::Result<Verdict> {
    let mut baked = Vec::new();
    for path in MACHINE_ID_PATHS {
        if fs.read_file(path)?.is_some_and(|c| machine_id_baked(&c)) {
            baked.push(path);
        }
    }
    Ok(machine_id_verdict(&baked))
}

/// Whether a machine-id file's content is an id (not empty or blank).
pub(crate) fn machine_id_baked(content: &[u8]) -> bool {
    !content.iter().all(u8::is_ascii_whitespace)
}

/// The machine-id verdict on the files of [`MACHINE_ID_PATHS`] that have content.
pub(crate) fn machine_id_verdict(baked: &[&str]) -> Verdict {
    if baked.is_empty() {
        pass("no machine-id content")
    } else {
        fail(format!(
            "{} has content: every machine made from the image would share one machine-id (DHCP client ids, journald); empty /etc/machine-id and delete /var/lib/dbus/machine-id",
            baked.join(" and ")
        ))
    }
}

/// No SSH host keys baked into the tree.
pub(crate) fn ssh_keys_rule(fs: &mut dyn FsRead) -> kiln_disk::Result<Verdict> {
    let names = fs.read_dir("/etc/ssh")?.unwrap_or_default();
    Ok(ssh_keys_verdict(&names))
}

/// The host-key verdict on the names in `/etc/ssh`.
pub(crate) fn ssh_keys_verdict(names: &[String]) -> Verdict {
    let keys: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| n.starts_with("ssh_host_"))
        .collect();
    if keys.is_empty() {
        pass("no /etc/ssh/ssh_host_* keys")
    } else {
        fail(format!(
            "baked host keys /etc/ssh/{}: every machine made from the image would share them; delete them (they are generated at first boot)",
            keys.join(", /etc/ssh/")
        ))
    }
}

/// Whether `path` is an executable regular file.
pub(crate) fn executable(fs: &mut dyn FsRead, path: &str) -> kiln_disk::Result<bool> {
    Ok(fs
        .metadata(path)?
        .is_some_and(|m| m.kind == FileKind::File && m.mode & 0o111 != 0))
}

/// Whether cloud-init is installed: in dpkg's database when there is one,
/// else on disk.
pub(crate) fn cloud_init_installed(fs: &mut dyn FsRead) -> kiln_disk::Result<bool> {
    let installed = fs.read_file("/var/lib/dpkg/status")?.map(|s| {
        kiln_disk::installed_packages(&String::from_utf8_lossy(&s))
            .into_iter()
            .any(|p| p.name == "cloud-init")
    });
    Ok(match installed {
        Some(installed) => installed,
        None => executable(fs, "/usr/bin/cloud-init")?,
    })
}

/// cloud-init's configuration files, each parsed, in the order it reads them.
pub(crate) type CloudConfigs = Vec<(String, Yaml)>;

/// cloud.cfg then cloud.cfg.d/*.cfg in name order, as cloud-init reads
/// them; `Err` says which file is not YAML.
pub(crate) fn cloud_configs(fs: &mut dyn FsRead) -> kiln_disk::Result<std::result::Result<CloudConfigs, String>> {
    let mut paths = vec!["/etc/cloud/cloud.cfg".to_owned()];
    let mut drop_ins: Vec<String> = fs.read_dir("/etc/cloud/cloud.cfg.d")?.unwrap_or_default();
    drop_ins.retain(|n| n.ends_with(".cfg"));
    drop_ins.sort();
    paths.extend(drop_ins.into_iter().map(|n| format!("/etc/cloud/cloud.cfg.d/{n}")));
    let mut configs = Vec::new();
    for path in paths {
        let Some(bytes) = fs.read_file(&path)? else { continue };
        match serde_yaml_ng::from_slice::<Yaml>(&bytes) {
            Ok(Yaml::Null) => {}
            Ok(v) => configs.push((path, v)),
            Err(e) => {
                return Ok(Err(format!(
                    "{path} is not valid YAML ({e}); cloud-init would ignore it"
                )))
            }
        }
    }
    Ok(Ok(configs))
}

/// The last definition of a top-level key wins, as in cloud-init's merge.
pub(crate) fn last_key<'a>(configs: &'a [(String, Yaml)], key: &str) -> Option<(&'a str, &'a Yaml)> {
    configs
        .iter()
        .rev()
        .find_map(|(path, v)| v.get(key).map(|value| (path.as_str(), value)))
}

/// The value at `path` (mapping keys) in the merged configuration: cloud-init
/// merges its files key by key, mappings recursively, a later file winning.
/// Returns the file that defines it.
pub(crate) fn merged_key<'a>(configs: &'a [(String, Yaml)], path: &[&str]) -> Option<(&'a str, &'a Yaml)> {
    configs.iter().rev().find_map(|(file, v)| {
        let mut at = v;
        for key in path {
            at = at.get(key)?;
        }
        Some((file.as_str(), at))
    })
}

/// The names of a `datasource_list` (a YAML list, or a string like `[ A, B ]`).
pub(crate) fn datasource_names(list: &Yaml) -> Vec<String> {
    match list {
        Yaml::Sequence(items) => items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect(),
        Yaml::String(s) => s
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|s| s.trim().to_owned())
            .collect(),
        _ => Vec::new(),
    }
}

const MODULE_LISTS: &[&str] = &["cloud_init_modules", "cloud_config_modules", "cloud_final_modules"];

/// Canonical module name: `cc_grub_dpkg`, `grub-dpkg` → `grub_dpkg`.
fn module_name(entry: &Yaml) -> Option<String> {
    let name = match entry {
        Yaml::String(s) => s.as_str(),
        Yaml::Sequence(items) => items.first()?.as_str()?,
        Yaml::Mapping(_) => entry.get("name")?.as_str()?,
        _ => return None,
    };
    Some(name.trim().trim_start_matches("cc_").replace('-', "_"))
}

/// The modules of cloud-init's three stages, by canonical name.
pub(crate) fn enabled_modules(configs: &[(String, Yaml)]) -> BTreeSet<String> {
    let mut enabled = BTreeSet::new();
    for list in MODULE_LISTS {
        if let Some((_, Yaml::Sequence(entries))) = last_key(configs, list) {
            enabled.extend(entries.iter().filter_map(module_name));
        }
    }
    enabled
}

fn is_false(v: Option<&Yaml>) -> bool {
    match v {
        Some(Yaml::Bool(b)) => !b,
        Some(Yaml::String(s)) => matches!(s.to_ascii_lowercase().as_str(), "off" | "false" | "no" | "disabled"),
        _ => false,
    }
}

/// Whether a listed module is switched off by its own configuration.
pub(crate) fn disabled_by_config(configs: &[(String, Yaml)], module: &str) -> bool {
    match module {
        "growpart" => last_key(configs, "growpart").is_some_and(|(_, v)| is_false(v.get("mode"))),
        "resizefs" => last_key(configs, "resize_rootfs").is_some_and(|(_, v)| is_false(Some(v))),
        "grub_dpkg" => ["grub_dpkg", "grub-dpkg"]
            .iter()
            .any(|k| last_key(configs, k).is_some_and(|(_, v)| is_false(v.get("enabled")))),
        _ => false,
    }
}

/// Interfaces other than `lo` that an ifupdown file configures.
fn ifupdown_interfaces(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(keyword) = words.next() else { continue };
        let names: Vec<&str> = match keyword {
            "iface" | "mapping" => words.next().into_iter().collect(),
            "auto" => words.collect(),
            k if k.starts_with("allow-") => words.collect(),
            _ => continue,
        };
        for n in names {
            if n != "lo" && !found.iter().any(|f| f == n) {
                found.push(n.to_owned());
            }
        }
    }
    found
}

/// Network configuration baked into the tree for interfaces other than
/// `lo` (systemd-networkd, netplan, ifupdown), each as `path` or
/// `path (configures IFACES)`.
pub(crate) fn baked_network(fs: &mut dyn FsRead) -> kiln_disk::Result<Vec<String>> {
    let mut baked = Vec::new();
    for (dir, suffix) in [("/etc/systemd/network", ".network"), ("/etc/netplan", ".yaml")] {
        for name in fs.read_dir(dir)?.unwrap_or_default() {
            if name.ends_with(suffix) {
                baked.push(format!("{dir}/{name}"));
            }
        }
    }
    let mut ifupdown = vec!["/etc/network/interfaces".to_owned()];
    ifupdown.extend(
        fs.read_dir("/etc/network/interfaces.d")?
            .unwrap_or_default()
            .into_iter()
            .map(|n| format!("/etc/network/interfaces.d/{n}")),
    );
    for path in ifupdown {
        if fs.metadata(&path)?.map(|m| m.kind) != Some(FileKind::File) {
            continue;
        }
        if let Some(text) = fs.read_file(&path)? {
            let ifaces = ifupdown_interfaces(&String::from_utf8_lossy(&text));
            if !ifaces.is_empty() {
                baked.push(format!("{path} (configures {})", ifaces.join(", ")));
            }
        }
    }
    Ok(baked)
}

/// The verdict on baked network configuration ([`baked_network`]): `clean`
/// when there is none, else what there is and `why` it must go.
pub(crate) fn network_verdict(fs: &mut dyn FsRead, clean: &str, why: &str) -> kiln_disk::Result<Verdict> {
    let baked = baked_network(fs)?;
    Ok(if baked.is_empty() {
        pass(clean)
    } else {
        fail(format!(
            "baked network configuration: {}; {why}: delete it",
            baked.join(", ")
        ))
    })
}

/// What the tests of every target's check share.
#[cfg(test)]
pub(crate) mod testing {
    use super::RuleResult;

    /// The rules that failed, with their reasons.
    pub(crate) fn failed(results: &[RuleResult]) -> Vec<(&'static str, String)> {
        results
            .iter()
            .filter(|r| !r.passed)
            .map(|r| (r.id, r.reason.clone()))
            .collect()
    }

    /// Why case `name` is wrong, if it is: rule `rule` must fail with a
    /// reason containing `needle`, and no rule fail but it and `besides`.
    pub(crate) fn wrong_failures(
        name: &str,
        results: &[RuleResult],
        rule: &str,
        needle: &str,
        besides: &[&str],
    ) -> Option<String> {
        let fails = failed(results);
        let caught = fails.iter().any(|(id, reason)| *id == rule && reason.contains(needle));
        let others_ok = fails.iter().all(|(id, _)| *id == rule || besides.contains(id));
        (!caught || !others_ok).then(|| {
            format!("{name}: expected {rule} to fail with {needle:?} (and only {besides:?} besides), got {fails:#?}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifupdown_interfaces_besides_lo() {
        assert_eq!(ifupdown_interfaces("auto lo eth0\niface lo inet loopback\n"), ["eth0"]);
        assert!(
            ifupdown_interfaces("source /etc/network/interfaces.d/*\nauto lo\niface lo inet loopback\n").is_empty()
        );
    }

    #[test]
    fn merged_keys_come_from_the_last_file_that_sets_them() {
        let configs: CloudConfigs = [
            (
                "a",
                "system_info:\n  default_user:\n    name: debian\n    groups: [adm]\n",
            ),
            ("b", "system_info:\n  default_user:\n    name: admin\n"),
            ("c", "datasource_list: [ Ec2, None ]\n"),
        ]
        .into_iter()
        .map(|(p, t)| (p.to_owned(), serde_yaml_ng::from_str(t).unwrap()))
        .collect();
        let get = |path: &[&str]| merged_key(&configs, path).map(|(f, v)| (f, v.as_str().map(str::to_owned)));
        assert_eq!(
            get(&["system_info", "default_user", "name"]),
            Some(("b", Some("admin".into())))
        );
        assert_eq!(
            get(&["system_info", "default_user", "groups"]).map(|(f, _)| f),
            Some("a")
        );
        assert_eq!(get(&["system_info", "nope"]), None);
        let list = last_key(&configs, "datasource_list").unwrap().1;
        assert_eq!(datasource_names(list), ["Ec2", "None"]);
        assert_eq!(datasource_names(&Yaml::String("[ Ec2, None ]".into())), ["Ec2", "None"]);
    }
}
