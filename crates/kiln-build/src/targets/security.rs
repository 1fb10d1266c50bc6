//! The security contract that every image's `kiln check` applies to its
//! root tree, whatever the target: no account with a usable password unless
//! the spec gave it one; SSH root login off unless the spec asked for it; no
//! world-writable file outside the sticky temporary directories; no setuid
//! or setgid file that the distro's packages did not install; no private
//! keys, cloud credentials, `.netrc`, shell histories or build-host paths.
//! (No baked machine-id or SSH host keys are [`super::contract`]'s rules,
//! which every target already applies.)
//!
//! What the spec granted travels inside the image, in the embedded manifest's
//! `access` ([`Access`]); an image without one (made by another tool) is
//! granted nothing.
//!
//! Bounds: one walk of the inode tree reads every entry's metadata (mode,
//! kind, size) from the directory listings, never file contents, and keeps
//! only what a rule names (capped at [`MAX_ENTRIES`] entries). Contents are
//! read only of small regular files ([`SCAN_MAX_FILE`]) in the places where
//! secrets land (everywhere but `/usr` outside `/usr/local`, and the package
//! manager's own databases and caches), one at a time, at most
//! [`SCAN_BUDGET`] bytes in all; plus each package file list when there are
//! setuid files to look up. The OVH example (Debian 12, 1.35 GiB) has
//! 24,000 entries and 300 such files (0.5 MiB): 6 s on ext4 in a debug
//! build, 31 s on XFS (whose metadata comes from `xfs_db`).
//!
//! Limits: setuid files are compared with dpkg's and pacman's file lists;
//! the rpm database is not read (kiln has no reader for it), so on the RHEL
//! family a setuid file passes only if its name is one of the setuid
//! programs those distributions ship ([`RPM_SETUID`]).

use std::collections::BTreeSet;

use kiln_disk::{FileKind, FileMeta, FsRead};
use kiln_spec::Spec;
use serde::{Deserialize, Serialize};

use crate::targets::contract::{chain, fail, pass, Results, Verdict};

/// The rules, in the order they are reported.
pub(crate) const RULES: [(&str, &str); 5] = [
    (
        "passwords",
        "no account with a usable password unless the spec sets one",
    ),
    ("ssh-root-login", "SSH root login off unless the spec asks for it"),
    (
        "world-writable",
        "no world-writable file or directory outside the sticky temporary directories",
    ),
    (
        "setuid",
        "no setuid or setgid file that the distro's packages did not install",
    ),
    (
        "secrets",
        "no private keys, cloud credentials, .netrc, shell histories or build-host paths",
    ),
];

/// More entries than any root tree has; the walk stops there.
pub(crate) const MAX_ENTRIES: usize = 2_000_000;
/// The largest file whose content the secrets rule reads (a 16384-bit RSA
/// key in PEM is 13 KiB; configuration files are smaller still).
pub(crate) const SCAN_MAX_FILE: u64 = 64 << 10;
/// The most bytes the secrets rule reads in all.
pub(crate) const SCAN_BUDGET: u64 = 128 << 20;
/// How many offenders a verdict names before it counts the rest.
const NAMED: usize = 8;

/// World-writable directories that are expected, with the sticky bit.
const STICKY_DIRS: &[&str] = &["/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/var/lock", "/var/crash"];

/// Trees whose contents are not scanned for secrets: package payload (read
/// only under `/usr/local`) and the package managers' own data.
const NOT_SCANNED: &[&str] = &[
    "/usr",
    "/boot",
    "/proc",
    "/sys",
    "/dev",
    "/var/lib/dpkg",
    "/var/lib/apt",
    "/var/cache",
    "/var/lib/pacman",
    "/var/lib/rpm",
    "/var/lib/dnf",
    "/var/log",
    // The embedded manifest names the spec as the build was given it.
    "/usr/share/kiln",
];

/// Shell and REPL histories, by file name.
const HISTORIES: &[&str] = &[
    ".bash_history",
    ".zsh_history",
    ".ash_history",
    ".sh_history",
    ".history",
    ".python_history",
    ".mysql_history",
    ".psql_history",
    ".sqlite_history",
    ".node_repl_history",
    ".lesshst",
    ".viminfo",
];

/// Credential files, by the end of their path.
const CREDENTIALS: &[&str] = &[
    "/.netrc",
    "/.aws/credentials",
    "/.git-credentials",
    "/.config/gcloud/credentials.db",
    "/.config/gcloud/application_default_credentials.json",
    "/.azure/accessTokens.json",
    "/.pgpass",
];

/// The setuid programs of Rocky, Alma and RHEL's own packages, for the
/// family whose package database kiln does not read.
pub(crate) const RPM_SETUID: &[&str] = &[
    "chage",
    "chfn",
    "chsh",
    "crontab",
    "fusermount",
    "fusermount3",
    "gpasswd",
    "grub2-set-bootflag",
    "mount",
    "newgrp",
    "newgidmap",
    "newuidmap",
    "pam_timestamp_check",
    "passwd",
    "pkexec",
    "polkit-agent-helper-1",
    "ssh-keysign",
    "su",
    "sudo",
    "umount",
    "unix_chkpwd",
    "userhelper",
    "utempter",
    "write",
    "dbus-daemon-launch-helper",
];

/// What the spec grants that the contract would otherwise refuse, embedded
/// in the image with the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Accounts the spec gives a password (`password_hash`).
    #[serde(default)]
    pub passwords: Vec<String>,
    /// The `PermitRootLogin` kiln configures: `prohibit-password` when
    /// `[root] ssh_keys` is set, else `no`.
    #[serde(rename = "sshRootLogin", default = "root_login_off")]
    pub ssh_root_login: String,
}

fn root_login_off() -> String {
    "no".to_owned()
}

impl Default for Access {
    fn default() -> Self {
        Access {
            passwords: Vec::new(),
            ssh_root_login: root_login_off(),
        }
    }
}

impl Access {
    /// What `spec` grants.
    pub fn of(spec: &Spec) -> Self {
        let mut passwords: Vec<String> = spec
            .users
            .iter()
            .filter(|u| u.password_hash.is_some())
            .map(|u| u.name.clone())
            .collect();
        if spec.root.password_hash.is_some() {
            passwords.insert(0, "root".to_owned());
        }
        Access {
            passwords,
            ssh_root_login: root_login(spec).to_owned(),
        }
    }
}

/// The `PermitRootLogin` value kiln writes for `spec`.
pub fn root_login(spec: &Spec) -> &'static str {
    if spec.root.ssh_keys.is_empty() {
        "no"
    } else {
        "prohibit-password"
    }
}

/// Where kiln writes its `PermitRootLogin`: early in sshd_config.d, since
/// sshd keeps the first value it reads.
pub const SSHD_DROP_IN: &str = "/etc/ssh/sshd_config.d/00-kiln-root-login.conf";

/// Runs every rule on the root tree `fs` and pushes their verdicts, except
/// those in `skip` (a target whose own rule is stricter).
pub(crate) fn push_rules(fs: &mut dyn FsRead, r: &mut Results, skip: &[&str]) {
    push_rules_with(fs, r, skip, &host_paths());
}

/// [`push_rules`] with the build-host paths to look for.
pub(crate) fn push_rules_with(fs: &mut dyn FsRead, r: &mut Results, skip: &[&str], host_paths: &[String]) {
    let access = read_access(fs);
    let walked = walk(fs);
    for (id, title) in RULES {
        if skip.contains(&id) {
            continue;
        }
        let verdict = match id {
            "passwords" => passwords_rule(fs, &access),
            "ssh-root-login" => ssh_root_login_rule(fs, &access),
            _ => match &walked {
                Err(e) => Err(e.clone()),
                Ok(tree) => match id {
                    "world-writable" => Ok(world_writable_verdict(tree)),
                    "setuid" => setuid_rule(fs, tree),
                    _ => secrets_rule(fs, tree, host_paths),
                },
            },
        };
        r.push(
            id,
            title,
            verdict.unwrap_or_else(|why| fail(format!("could not read the image: {why}"))),
        );
    }
}

/// The rules that could not run, each failed with `why`.
pub(crate) fn push_unchecked(r: &mut Results, why: &str, skip: &[&str]) {
    for (id, title) in RULES {
        if !skip.contains(&id) {
            r.push(id, title, fail(format!("not checked: {why}")));
        }
    }
}

type RuleOutcome = std::result::Result<Verdict, String>;

fn read_err(e: kiln_disk::Error) -> String {
    chain(&e)
}

/// The grant embedded in the image; nothing when there is no manifest.
fn read_access(fs: &mut dyn FsRead) -> Access {
    #[derive(Deserialize)]
    struct Embedded {
        #[serde(default)]
        access: Access,
    }
    fs.read_file(crate::manifest::EMBEDDED_PATH)
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice::<Embedded>(&b).ok())
        .map(|m| m.access)
        .unwrap_or_default()
}

// ---------------------------------------------------------------- passwords

/// Whether a password field lets someone log in: empty (no password at
/// all) or a hash; `*`, `!…` and `x` (see shadow) do not.
fn usable_password(field: &str, in_passwd: bool) -> Option<&'static str> {
    if field.is_empty() {
        Some("empty: no password needed")
    } else if field.starts_with('!') || field.starts_with('*') || (in_passwd && field == "x") {
        None
    } else {
        Some("a password hash")
    }
}

fn passwords_rule(fs: &mut dyn FsRead, access: &Access) -> RuleOutcome {
    let mut found: Vec<(String, &str, &str)> = Vec::new();
    let mut accounts = 0;
    for (path, in_passwd) in [("/etc/shadow", false), ("/etc/passwd", true)] {
        let Some(text) = fs.read_file(path).map_err(read_err)? else {
            continue;
        };
        for line in String::from_utf8_lossy(&text).lines() {
            // Not an account line (blank, comment, no fields).
            if line.trim().is_empty() || line.starts_with('#') || !line.contains(':') {
                continue;
            }
            let mut fields = line.split(':');
            let name = fields.next().unwrap_or_default().to_owned();
            let field = fields.next().unwrap_or_default();
            if !in_passwd {
                accounts += 1;
            }
            if let Some(what) = usable_password(field, in_passwd) {
                found.push((name, what, path));
            }
        }
    }
    let bad: Vec<String> = found
        .iter()
        // An empty password is never what a spec asks for.
        .filter(|(name, what, _)| what.starts_with("empty") || !access.passwords.contains(name))
        .map(|(name, what, path)| format!("{name} ({what}, in {path})"))
        .collect();
    Ok(if bad.is_empty() {
        let granted = found.len();
        pass(format!(
            "{accounts} accounts in /etc/shadow; {}",
            if granted == 0 {
                "none with a password".to_owned()
            } else {
                format!("{granted} with the password the spec sets")
            }
        ))
    } else {
        fail(format!(
            "accounts with a usable password the spec does not set: {}; every machine made from the image would share it: lock them (`passwd -l`), or set password_hash in the spec",
            named(&bad)
        ))
    })
}

// ---------------------------------------------------------------- sshd

/// How much a `PermitRootLogin` value allows, for comparing two.
fn root_login_rank(value: &str) -> Option<u8> {
    match value.to_ascii_lowercase().as_str() {
        "no" => Some(0),
        "forced-commands-only" => Some(1),
        "prohibit-password" | "without-password" => Some(2),
        "yes" => Some(3),
        _ => None,
    }
}

/// Every `PermitRootLogin` sshd reads, in its order, with the file and
/// whether it sits in a `Match` block; `Include`s are read where they stand
/// (relative paths from /etc/ssh, globs of the `dir/*.conf` shape in name
/// order), as sshd does.
fn permit_root_login(fs: &mut dyn FsRead) -> std::result::Result<Vec<(String, String, bool)>, String> {
    let mut out = Vec::new();
    read_sshd_config(fs, "/etc/ssh/sshd_config", 0, false, &mut out)?;
    Ok(out)
}

fn read_sshd_config(
    fs: &mut dyn FsRead,
    path: &str,
    depth: usize,
    in_match: bool,
    out: &mut Vec<(String, String, bool)>,
) -> std::result::Result<(), String> {
    if depth > 8 {
        return Err(format!("{path}: Includes nested more than 8 deep (a loop?)"));
    }
    let Some(text) = fs.read_file(path).map_err(read_err)? else {
        return Ok(());
    };
    let mut in_match = in_match;
    for line in String::from_utf8_lossy(&text).lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or((line, ""));
        let value = value.trim_matches(|c: char| c.is_whitespace() || c == '=' || c == '"');
        match key.to_ascii_lowercase().as_str() {
            "match" => in_match = true,
            "include" => {
                for pattern in value.split_whitespace() {
                    for file in expand_include(fs, pattern)? {
                        read_sshd_config(fs, &file, depth + 1, in_match, out)?;
                    }
                }
            }
            "permitrootlogin" => out.push((path.to_owned(), value.to_owned(), in_match)),
            _ => {}
        }
    }
    Ok(())
}

/// The files an `Include` names: a path, or `dir/*` / `dir/*.suffix`.
fn expand_include(fs: &mut dyn FsRead, pattern: &str) -> std::result::Result<Vec<String>, String> {
    let pattern = if pattern.starts_with('/') {
        pattern.to_owned()
    } else {
        format!("/etc/ssh/{pattern}")
    };
    let Some((dir, name)) = pattern.rsplit_once('/') else {
        return Ok(Vec::new());
    };
    if !name.contains('*') {
        return Ok(vec![pattern]);
    }
    let (prefix, suffix) = name.split_once('*').unwrap_or((name, ""));
    let mut names = fs.read_dir(dir).map_err(read_err)?.unwrap_or_default();
    names.retain(|n| n.starts_with(prefix) && n.ends_with(suffix));
    names.sort();
    Ok(names.into_iter().map(|n| format!("{dir}/{n}")).collect())
}

const SSHD_PATHS: &[&str] = &["/usr/sbin/sshd", "/usr/bin/sshd", "/sbin/sshd"];

fn ssh_root_login_rule(fs: &mut dyn FsRead, access: &Access) -> RuleOutcome {
    let mut has_sshd = false;
    for p in SSHD_PATHS {
        has_sshd |= fs.metadata(p).map_err(read_err)?.is_some();
    }
    if !has_sshd {
        return Ok(pass("no sshd in the image"));
    }
    let allowed = root_login_rank(&access.ssh_root_login).unwrap_or(0);
    let values = permit_root_login(fs)?;
    let global = values.iter().find(|(_, _, in_match)| !in_match);
    let (effective, from) = match global {
        Some((file, value, _)) => (value.clone(), file.clone()),
        None => ("prohibit-password".to_owned(), "sshd's default".to_owned()),
    };
    let mut problems = Vec::new();
    match root_login_rank(&effective) {
        None => problems.push(format!(
            "PermitRootLogin {effective} ({from}) is not a value sshd knows"
        )),
        Some(rank) if rank > allowed => problems.push(format!("PermitRootLogin {effective} ({from})")),
        Some(_) => {}
    }
    for (file, value, _) in values.iter().filter(|(_, _, m)| *m) {
        if root_login_rank(value).is_none_or(|rank| rank > allowed) {
            problems.push(format!("PermitRootLogin {value} in a Match block of {file}"));
        }
    }
    Ok(if problems.is_empty() {
        pass(format!(
            "PermitRootLogin {effective} ({from}); the spec allows {}",
            access.ssh_root_login
        ))
    } else {
        fail(format!(
            "{}, but the spec allows {}: set `PermitRootLogin no` (kiln writes it to {SSHD_DROP_IN}), or give root ssh_keys in the spec for key logins",
            problems.join("; "),
            access.ssh_root_login
        ))
    })
}

// ---------------------------------------------------------------- the walk

/// What one walk of the tree keeps for the rules.
#[derive(Debug, Default)]
pub(crate) struct Tree {
    pub entries: usize,
    pub world_writable: Vec<String>,
    pub setuid: Vec<(String, u32)>,
    /// Histories and credential files that are not empty.
    pub named_secrets: Vec<String>,
    /// `.docker/config.json` files, whose content decides.
    pub docker_configs: Vec<String>,
    /// Small regular files in the scanned places, with their sizes.
    pub scan: Vec<(String, u64)>,
}

fn under(path: &str, dir: &str) -> bool {
    path == dir || path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
}

fn scanned(path: &str) -> bool {
    (under(path, "/usr/local") || !NOT_SCANNED.iter().any(|d| under(path, d)))
        && !under(path, "/usr/share/kiln")
        // The host-key rule reports these.
        && !path.starts_with("/etc/ssh/ssh_host_")
}

/// Whether a streaming reader (the tar target's check) should keep the
/// content of the file at `path` (relative to the root, as in an archive)
/// for these rules: the account and sshd files, the embedded manifest, the
/// package file lists, and what the secrets rule reads.
pub(crate) fn wanted_content(path: &str, size: u64) -> bool {
    let p = format!("/{path}");
    let small = size <= SCAN_MAX_FILE;
    matches!(
        p.as_str(),
        "/etc/shadow" | "/etc/passwd" | crate::manifest::EMBEDDED_PATH
    ) || (small && under(&p, "/etc/ssh"))
        || (p.starts_with("/var/lib/dpkg/info/") && p.ends_with(".list"))
        || (p.starts_with("/var/lib/pacman/local/") && p.ends_with("/files"))
        || (small && p.ends_with("/.docker/config.json"))
        || (small && size > 0 && scanned(&p))
}

/// Walks the whole tree once, depth first, symlinks not followed.
pub(crate) fn walk(fs: &mut dyn FsRead) -> std::result::Result<Tree, String> {
    let mut tree = Tree::default();
    fs.prefetch_tree().map_err(read_err)?;
    let mut dirs = vec![String::new()];
    while let Some(dir) = dirs.pop() {
        let listing = fs
            .read_dir_meta(if dir.is_empty() { "/" } else { &dir })
            .map_err(read_err)?
            .unwrap_or_default();
        for (name, meta) in listing {
            tree.entries += 1;
            if tree.entries > MAX_ENTRIES {
                return Err(format!("more than {MAX_ENTRIES} entries: not a root tree kiln checks"));
            }
            let path = format!("{dir}/{name}");
            visit(&mut tree, &path, &name, &meta);
            if meta.kind == FileKind::Dir {
                dirs.push(path);
            }
        }
    }
    Ok(tree)
}

fn visit(tree: &mut Tree, path: &str, name: &str, meta: &FileMeta) {
    let world_writable = meta.mode & 0o002 != 0;
    match meta.kind {
        FileKind::Symlink => return,
        // Device nodes such as /dev/null are world-writable by design.
        FileKind::Other if under(path, "/dev") => {}
        FileKind::Dir if world_writable => {
            let sticky_tmp = meta.mode & 0o1000 != 0 && STICKY_DIRS.contains(&path);
            if !sticky_tmp {
                tree.world_writable.push(format!("{path}/ ({:04o})", meta.mode));
            }
        }
        _ if world_writable => tree.world_writable.push(format!("{path} ({:04o})", meta.mode)),
        _ => {}
    }
    if meta.kind != FileKind::File {
        return;
    }
    if meta.mode & 0o6000 != 0 {
        tree.setuid.push((path.to_owned(), meta.mode));
    }
    if meta.size > 0 && (HISTORIES.contains(&name) || CREDENTIALS.iter().any(|c| path.ends_with(c))) {
        tree.named_secrets.push(path.to_owned());
    }
    if path.ends_with("/.docker/config.json") && meta.size <= SCAN_MAX_FILE {
        tree.docker_configs.push(path.to_owned());
    }
    if meta.size > 0 && meta.size <= SCAN_MAX_FILE && scanned(path) {
        tree.scan.push((path.to_owned(), meta.size));
    }
}

fn world_writable_verdict(tree: &Tree) -> Verdict {
    if tree.world_writable.is_empty() {
        pass(format!(
            "{} entries; world-writable only: sticky {}",
            tree.entries,
            STICKY_DIRS.join(", ")
        ))
    } else {
        fail(format!(
            "world-writable: {}; any local user or service could change them: `chmod o-w` them (or make a shared directory sticky, mode 1777, under /tmp)",
            named(&tree.world_writable)
        ))
    }
}

// ---------------------------------------------------------------- setuid

/// `/bin/x` and `/usr/bin/x` are one file on a merged-/usr system, and
/// package lists name either.
fn merged_usr(path: &str) -> String {
    let mut path = path.to_owned();
    for dir in ["/bin/", "/sbin/", "/lib/", "/lib32/", "/lib64/", "/libx32/"] {
        if let Some(rest) = path.strip_prefix(dir) {
            path = format!("/usr{dir}{rest}");
            break;
        }
    }
    // Arch merges sbin into bin: one name for the four spellings.
    match path.strip_prefix("/usr/sbin/") {
        Some(rest) => format!("/usr/bin/{rest}"),
        None => path,
    }
}

/// The package file lists of the image: each is a file of paths (dpkg's
/// `*.list`, pacman's `files` after `%FILES%`, without the leading `/`).
fn package_lists(fs: &mut dyn FsRead) -> std::result::Result<Option<(&'static str, Vec<String>)>, String> {
    if let Some(names) = fs.read_dir("/var/lib/dpkg/info").map_err(read_err)? {
        let lists = names
            .into_iter()
            .filter(|n| n.ends_with(".list"))
            .map(|n| format!("/var/lib/dpkg/info/{n}"))
            .collect();
        return Ok(Some(("dpkg", lists)));
    }
    if let Some(names) = fs.read_dir("/var/lib/pacman/local").map_err(read_err)? {
        let lists = names
            .into_iter()
            .map(|n| format!("/var/lib/pacman/local/{n}/files"))
            .collect();
        return Ok(Some(("pacman", lists)));
    }
    Ok(None)
}

fn setuid_rule(fs: &mut dyn FsRead, tree: &Tree) -> RuleOutcome {
    if tree.setuid.is_empty() {
        return Ok(pass("no setuid or setgid files"));
    }
    // Normalised name → the path in the image, for the verdict.
    let real: std::collections::BTreeMap<String, String> =
        tree.setuid.iter().map(|(p, _)| (merged_usr(p), p.clone())).collect();
    let mut unowned: BTreeSet<String> = real.keys().cloned().collect();
    let total = unowned.len();
    let (manager, lists) = match package_lists(fs)? {
        Some(found) => found,
        None if fs.metadata("/var/lib/rpm").map_err(read_err)?.is_some()
            || fs.metadata("/usr/lib/sysimage/rpm").map_err(read_err)?.is_some() =>
        {
            // The rpm database is not read: known programs only.
            unowned.retain(|p| !RPM_SETUID.contains(&p.rsplit('/').next().unwrap_or_default()));
            return Ok(setuid_verdict(
                &unowned,
                &real,
                total,
                "rpm (the database is not read: names of RHEL's setuid programs)",
            ));
        }
        None => ("no package database", Vec::new()),
    };
    // One list at a time, each bounded by the reader: only the candidates
    // are kept in memory.
    for list in lists {
        if unowned.is_empty() {
            break;
        }
        let Some(text) = fs.read_file(&list).map_err(read_err)? else {
            continue;
        };
        for line in String::from_utf8_lossy(&text).lines() {
            let line = line.trim_end();
            let path = if line.starts_with('/') {
                line.to_owned()
            } else {
                format!("/{line}")
            };
            unowned.remove(&merged_usr(&path));
        }
    }
    Ok(setuid_verdict(&unowned, &real, total, manager))
}

fn setuid_verdict(
    unowned: &BTreeSet<String>,
    real: &std::collections::BTreeMap<String, String>,
    total: usize,
    manager: &str,
) -> Verdict {
    if unowned.is_empty() {
        pass(format!(
            "{total} setuid/setgid files, each installed by a package ({manager})"
        ))
    } else {
        let names: Vec<String> = unowned.iter().map(|n| real.get(n).unwrap_or(n).clone()).collect();
        fail(format!(
            "setuid/setgid files that no package installed ({manager}): {}; they run with their owner's rights: `chmod u-s,g-s` them or install them from a package",
            named(&names)
        ))
    }
}

// ---------------------------------------------------------------- secrets

/// Whether `data` holds a PEM or OpenSSH private key (or a PGP secret key block).
pub(crate) fn has_private_key(data: &[u8]) -> bool {
    let mut rest = data;
    while let Some(at) = find(rest, b"-----BEGIN ") {
        let after = &rest[at + 11..];
        let line_end = after.iter().position(|&b| b == b'\n').unwrap_or(after.len()).min(64);
        let label = &after[..line_end];
        if find(label, b"PRIVATE KEY").is_some() {
            return true;
        }
        rest = after;
    }
    false
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Paths of the build host that must not leak into an image: kiln's work
/// directories (`.kiln-work-*`) and the stage cache.
pub(crate) fn host_paths() -> Vec<String> {
    let mut paths = vec![".kiln-work-".to_owned()];
    let cache = crate::cache::default_dir().display().to_string();
    if cache.len() > 1 {
        paths.push(cache);
    }
    paths
}

/// Whether a Docker config holds registry credentials (`auths` with an
/// `auth` or `identitytoken`).
fn docker_credentials(data: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return false;
    };
    v.get("auths").and_then(|a| a.as_object()).is_some_and(|auths| {
        auths
            .values()
            .any(|e| e.get("auth").is_some() || e.get("identitytoken").is_some())
    })
}

fn secrets_rule(fs: &mut dyn FsRead, tree: &Tree, host_paths: &[String]) -> RuleOutcome {
    let mut found: Vec<String> = tree
        .named_secrets
        .iter()
        .map(|p| {
            let history = HISTORIES.iter().any(|h| p.ends_with(&format!("/{h}")));
            format!("{p} ({})", if history { "a shell history" } else { "credentials" })
        })
        .collect();
    for p in &tree.docker_configs {
        if fs
            .read_file(p)
            .map_err(read_err)?
            .is_some_and(|d| docker_credentials(&d))
        {
            found.push(format!("{p} (registry credentials)"));
        }
    }
    let mut read = 0u64;
    let mut skipped = 0usize;
    for (path, size) in &tree.scan {
        if read + size > SCAN_BUDGET {
            skipped += 1;
            continue;
        }
        read += size;
        let Some(data) = fs.read_file(path).map_err(read_err)? else {
            continue;
        };
        if has_private_key(&data) {
            found.push(format!("{path} (a private key)"));
        }
        for host in host_paths {
            if find(&data, host.as_bytes()).is_some() {
                found.push(format!("{path} (names the build host's {host})"));
                break;
            }
        }
    }
    let scanned = tree.scan.len() - skipped;
    let note = if skipped > 0 {
        format!("; {skipped} files not read, over the {} MiB budget", SCAN_BUDGET >> 20)
    } else {
        String::new()
    };
    Ok(if found.is_empty() {
        pass(format!(
            "{scanned} small files outside /usr read ({read} bytes): no private keys or build-host paths; no histories or credential files{note}"
        ))
    } else {
        fail(format!(
            "{}: every machine made from the image would carry them; delete them in a [[run]] step (or keep them out of [[files]]) and provision secrets at boot instead{note}",
            named(&found)
        ))
    })
}

/// Warnings for `[[files]]` sources that look like private keys (read up
/// to [`SCAN_MAX_FILE`] bytes each): such a file would be in every machine
/// made from the image, and the `secrets` rule of `kiln check` fails it.
/// A warning at plan time, not an error, since a spec may mean it.
pub fn private_key_warnings(loaded: &kiln_spec::LoadedSpec) -> Vec<String> {
    use std::io::Read as _;
    let mut warnings = Vec::new();
    for (i, f) in loaded.spec.files.iter().enumerate() {
        let mut head = Vec::new();
        let read = std::fs::File::open(loaded.resolve(&f.src))
            .and_then(|file| file.take(SCAN_MAX_FILE).read_to_end(&mut head));
        if read.is_err() || !has_private_key(&head) {
            continue;
        }
        let at = loaded
            .location(&format!("files[{i}].src"))
            .map_or_else(String::new, |(line, col)| format!(":{line}:{col}"));
        warnings.push(format!(
            "{}{at}: [[files]] source `{}` looks like a private key: every machine made from the image would carry it to {}, and `kiln check` fails its `secrets` rule; provision it at boot (cloud-init, a secret store) instead",
            loaded.path.display(),
            f.src,
            f.dest
        ));
    }
    warnings
}

/// The first [`NAMED`] of `items`, then how many more.
fn named(items: &[String]) -> String {
    let mut s = items.iter().take(NAMED).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > NAMED {
        s.push_str(&format!(" and {} more", items.len() - NAMED));
    }
    s
}

#[cfg(test)]
mod tests;
