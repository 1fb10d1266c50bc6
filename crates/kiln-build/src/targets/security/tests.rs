//! Each rule of the security contract on small in-memory trees: a clean
//! tree passes every rule, and each way of breaking one is caught by that
//! rule alone. (The disk target's tests run the same rules through the ext4
//! reader on assembled images.)

use std::collections::BTreeMap;

use kiln_disk::{FileKind, FileMeta, FsRead, FsType};

use super::*;

/// A tree in memory: paths to metadata and content; symlinks hold their
/// target as content and are not followed (the rules never follow them).
#[derive(Default, Clone)]
struct MemFs(BTreeMap<String, (FileMeta, Vec<u8>)>);

fn meta(kind: FileKind, mode: u32, size: usize) -> FileMeta {
    FileMeta {
        kind,
        mode,
        uid: 0,
        gid: 0,
        size: size as u64,
        mtime: None,
    }
}

impl MemFs {
    fn file(mut self, path: &str, mode: u32, content: &str) -> Self {
        self.dirs_above(path);
        self.0.insert(
            path.to_owned(),
            (meta(FileKind::File, mode, content.len()), content.as_bytes().to_vec()),
        );
        self
    }

    fn dir(mut self, path: &str, mode: u32) -> Self {
        self.dirs_above(path);
        self.0
            .insert(path.to_owned(), (meta(FileKind::Dir, mode, 0), Vec::new()));
        self
    }

    fn link(mut self, path: &str, target: &str) -> Self {
        self.dirs_above(path);
        self.0.insert(
            path.to_owned(),
            (meta(FileKind::Symlink, 0o777, target.len()), target.as_bytes().to_vec()),
        );
        self
    }

    fn dirs_above(&mut self, path: &str) {
        let mut at = String::new();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for part in &parts[..parts.len() - 1] {
            at = format!("{at}/{part}");
            self.0
                .entry(at.clone())
                .or_insert_with(|| (meta(FileKind::Dir, 0o755, 0), Vec::new()));
        }
    }
}

impl FsRead for MemFs {
    fn read_file(&mut self, path: &str) -> kiln_disk::Result<Option<Vec<u8>>> {
        Ok(self
            .0
            .get(path)
            .filter(|(m, _)| m.kind == FileKind::File)
            .map(|(_, c)| c.clone()))
    }
    fn metadata(&mut self, path: &str) -> kiln_disk::Result<Option<FileMeta>> {
        self.symlink_metadata(path)
    }
    fn symlink_metadata(&mut self, path: &str) -> kiln_disk::Result<Option<FileMeta>> {
        Ok(self.0.get(path).map(|(m, _)| *m))
    }
    fn read_dir(&mut self, path: &str) -> kiln_disk::Result<Option<Vec<String>>> {
        let base = path.trim_end_matches('/');
        if !base.is_empty() && self.0.get(base).map(|(m, _)| m.kind) != Some(FileKind::Dir) {
            return Ok(None);
        }
        let prefix = format!("{base}/");
        Ok(Some(
            self.0
                .keys()
                .filter_map(|k| k.strip_prefix(&prefix))
                .filter(|rest| !rest.contains('/'))
                .map(str::to_owned)
                .collect(),
        ))
    }
    fn read_link(&mut self, path: &str) -> kiln_disk::Result<Option<String>> {
        Ok(self
            .0
            .get(path)
            .filter(|(m, _)| m.kind == FileKind::Symlink)
            .map(|(_, c)| String::from_utf8_lossy(c).into_owned()))
    }
    fn fs_type(&self) -> FsType {
        FsType::Ext4
    }
}

const KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n";

/// A small Debian-like tree that meets the contract.
fn clean() -> MemFs {
    MemFs::default()
        .file("/etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/bash\nops:x:1000:1000::/home/ops:/bin/bash\n")
        .file("/etc/shadow", 0o640, "root:*:19000:0:99999:7:::\nops:!:19000:0:99999:7:::\n")
        .file("/usr/sbin/sshd", 0o755, "ELF")
        .file(
            "/etc/ssh/sshd_config",
            0o644,
            "Include /etc/ssh/sshd_config.d/*.conf\n#PermitRootLogin prohibit-password\nMatch User backup\n  X11Forwarding no\n",
        )
        .file("/etc/ssh/sshd_config.d/00-kiln-root-login.conf", 0o644, "PermitRootLogin no\n")
        .dir("/tmp", 0o1777)
        .dir("/var/tmp", 0o1777)
        .file("/usr/bin/su", 0o4755, "ELF")
        .file("/usr/bin/crontab", 0o2755, "ELF")
        .link("/bin", "usr/bin")
        .dir("/var/local", 0o2775)
        .file("/var/lib/dpkg/info/util-linux.list", 0o644, "/.\n/bin\n/bin/su\n")
        .file("/var/lib/dpkg/info/cron.list", 0o644, "/usr/bin/crontab\n")
        // Listed under /sbin, installed under /usr/sbin (Debian 12's merged /usr).
        .file("/usr/sbin/unix_chkpwd", 0o2755, "ELF")
        .file("/var/lib/dpkg/info/libpam-modules-bin.list", 0o644, "/sbin/unix_chkpwd\n")
        .file("/etc/ssl/certs/ca.pem", 0o644, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
        .file("/usr/share/doc/x/key.pem", 0o644, KEY)
        .file("/home/ops/.bashrc", 0o644, "alias ll='ls -l'\n")
        .file("/home/ops/.bash_history", 0o600, "")
        .file("/etc/ssh/ssh_host_ed25519_key", 0o600, KEY)
}

fn run(fs: &mut MemFs) -> Vec<RuleResult> {
    let mut r = Results::default();
    push_rules_with(
        fs,
        &mut r,
        &[],
        &["/home/builder/.cache/kiln".to_owned(), ".kiln-work-".to_owned()],
    );
    r.0
}

use crate::targets::contract::testing::{failed, wrong_failures};
use crate::targets::RuleResult;

#[test]
fn a_clean_tree_passes_every_rule() {
    let r = run(&mut clean());
    assert_eq!(failed(&r), vec![]);
    let ids: Vec<&str> = r.iter().map(|r| r.id).collect();
    assert_eq!(ids, RULES.map(|(id, _)| id));
    let setuid = &r.iter().find(|r| r.id == "setuid").unwrap().reason;
    assert!(
        setuid.contains("3 setuid/setgid files, each installed by a package (dpkg)"),
        "{setuid}"
    );
}

#[test]
fn each_rule_catches_its_problem() {
    let manifest = |access: &str| format!("{{\"name\":\"t\",\"access\":{access}}}");
    let cases: Vec<(&str, MemFs, &str, &str)> = vec![
        (
            "a root password the spec did not set",
            clean().file("/etc/shadow", 0o640, "root:$6$salt$hash:19000::::::\nops:!:1::::::\n"),
            "passwords",
            "root (a password hash, in /etc/shadow)",
        ),
        (
            "an empty password, even when granted",
            clean()
                .file("/etc/shadow", 0o640, "root:*:1::::::\nops::1::::::\n")
                .file(
                    crate::manifest::EMBEDDED_PATH,
                    0o644,
                    &manifest("{\"passwords\":[\"ops\"]}"),
                ),
            "passwords",
            "ops (empty: no password needed",
        ),
        (
            "a hash in /etc/passwd",
            clean().file("/etc/passwd", 0o644, "root:$1$x$y:0:0::/root:/bin/sh\n"),
            "passwords",
            "root (a password hash, in /etc/passwd)",
        ),
        (
            "root login by sshd's default",
            clean().file("/etc/ssh/sshd_config.d/00-kiln-root-login.conf", 0o644, "# nothing\n"),
            "ssh-root-login",
            "PermitRootLogin prohibit-password (sshd's default)",
        ),
        (
            "an earlier drop-in that allows root",
            clean().file("/etc/ssh/sshd_config.d/00-aaa.conf", 0o644, "PermitRootLogin yes\n"),
            "ssh-root-login",
            "PermitRootLogin yes (/etc/ssh/sshd_config.d/00-aaa.conf)",
        ),
        (
            "root allowed in a Match block",
            clean().file(
                "/etc/ssh/sshd_config",
                0o644,
                "Include sshd_config.d/*.conf\nMatch Address 10.0.0.0/8\n  PermitRootLogin yes\n",
            ),
            "ssh-root-login",
            "in a Match block of /etc/ssh/sshd_config",
        ),
        (
            "password logins for root when keys were asked for",
            clean()
                .file(
                    "/etc/ssh/sshd_config.d/00-kiln-root-login.conf",
                    0o644,
                    "PermitRootLogin yes\n",
                )
                .file(
                    crate::manifest::EMBEDDED_PATH,
                    0o644,
                    &manifest("{\"sshRootLogin\":\"prohibit-password\"}"),
                ),
            "ssh-root-login",
            "but the spec allows prohibit-password",
        ),
        (
            "a world-writable file",
            clean().file("/etc/app.conf", 0o666, "x"),
            "world-writable",
            "/etc/app.conf (0666)",
        ),
        (
            "a world-writable directory without the sticky bit",
            clean().dir("/tmp", 0o777),
            "world-writable",
            "/tmp/ (0777)",
        ),
        (
            "a sticky world-writable directory out of place",
            clean().dir("/srv/drop", 0o1777),
            "world-writable",
            "/srv/drop/ (1777)",
        ),
        (
            "a setuid copy of a shell",
            clean().file("/usr/local/bin/rootsh", 0o4755, "ELF"),
            "setuid",
            "/usr/local/bin/rootsh",
        ),
        (
            "a setgid file outside the package lists",
            clean().file("/opt/tool", 0o2755, "ELF"),
            "setuid",
            "/opt/tool",
        ),
        (
            "a private key in /root",
            clean().file("/root/.ssh/id_ed25519", 0o600, KEY),
            "secrets",
            "/root/.ssh/id_ed25519 (a private key)",
        ),
        (
            "a PEM RSA key in /etc",
            clean().file(
                "/etc/app/tls.key",
                0o600,
                "junk\n-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n",
            ),
            "secrets",
            "/etc/app/tls.key (a private key)",
        ),
        (
            "AWS credentials",
            clean().file("/root/.aws/credentials", 0o600, "[default]\naws_access_key_id = AKIA\n"),
            "secrets",
            "/root/.aws/credentials (credentials)",
        ),
        (
            "a .netrc",
            clean().file("/home/ops/.netrc", 0o600, "machine example.org login a password b\n"),
            "secrets",
            "/home/ops/.netrc (credentials)",
        ),
        (
            "a Docker config with auths",
            clean().file(
                "/root/.docker/config.json",
                0o600,
                "{\"auths\":{\"registry.example\":{\"auth\":\"dXNlcjpwYXNz\"}}}",
            ),
            "secrets",
            "/root/.docker/config.json (registry credentials)",
        ),
        (
            "a shell history",
            clean().file("/root/.bash_history", 0o600, "curl -u admin:secret https://x\n"),
            "secrets",
            "/root/.bash_history (a shell history)",
        ),
        (
            "the build's work directory named in a file",
            clean().file("/etc/default/app", 0o644, "SRC=/srv/out/.kiln-work-Ab12/tree\n"),
            "secrets",
            "/etc/default/app (names the build host's .kiln-work-)",
        ),
        (
            "the stage cache named in a file",
            clean().file("/var/lib/app/state", 0o644, "from /home/builder/.cache/kiln/stages/x\n"),
            "secrets",
            "names the build host's /home/builder/.cache/kiln",
        ),
    ];
    let mut wrong = Vec::new();
    for (name, mut fs, rule, needle) in cases {
        if let Some(w) = wrong_failures(name, &run(&mut fs), rule, needle, &[]) {
            wrong.push(w);
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn what_the_spec_grants_passes() {
    let mut fs = clean()
        .file("/etc/shadow", 0o640, "root:$6$a$b:1::::::\nops:$6$c$d:1::::::\n")
        .file(
            "/etc/ssh/sshd_config.d/00-kiln-root-login.conf",
            0o644,
            "PermitRootLogin prohibit-password\n",
        )
        .file(
            crate::manifest::EMBEDDED_PATH,
            0o644,
            "{\"access\":{\"passwords\":[\"root\",\"ops\"],\"sshRootLogin\":\"prohibit-password\"}}",
        );
    assert_eq!(failed(&run(&mut fs)), vec![]);
}

#[test]
fn no_sshd_and_no_accounts_pass() {
    let mut fs = MemFs::default().dir("/tmp", 0o1777).file("/etc/hostname", 0o644, "x\n");
    assert_eq!(failed(&run(&mut fs)), vec![]);
}

#[test]
fn setuid_on_pacman_and_rpm_systems() {
    let base = MemFs::default()
        .file("/usr/bin/su", 0o4755, "ELF")
        .file("/usr/bin/evil", 0o4755, "ELF");
    let mut arch = base.clone().file(
        "/var/lib/pacman/local/util-linux-2.40-1/files",
        0o644,
        "%FILES%\nusr/\nusr/bin/su\n",
    );
    let r = run(&mut arch);
    assert_eq!(failed(&r).len(), 1, "{r:#?}");
    assert!(failed(&r)[0].1.contains("(pacman): /usr/bin/evil"), "{r:#?}");
    let mut rocky = base.dir("/var/lib/rpm", 0o755);
    let r = run(&mut rocky);
    assert!(failed(&r)[0].1.contains("rpm (the database is not read"), "{r:#?}");
    assert!(
        failed(&r)[0].1.contains("/usr/bin/evil") && !failed(&r)[0].1.contains("/usr/bin/su"),
        "{r:#?}"
    );
}

#[test]
fn private_key_headers() {
    for (text, want) in [
        (KEY, true),
        ("-----BEGIN PRIVATE KEY-----\n", true),
        ("-----BEGIN ENCRYPTED PRIVATE KEY-----\n", true),
        ("-----BEGIN EC PRIVATE KEY-----\n", true),
        ("-----BEGIN PGP PRIVATE KEY BLOCK-----\n", true),
        ("-----BEGIN PUBLIC KEY-----\n", false),
        ("-----BEGIN CERTIFICATE-----\nPRIVATE KEY on another line\n", false),
        ("ssh-ed25519 AAAA user@host\n", false),
        ("", false),
    ] {
        assert_eq!(has_private_key(text.as_bytes()), want, "{text:?}");
    }
}

#[test]
fn access_from_the_spec() {
    let spec = |extra: &str| {
        let text = format!(
            "[image]\nname = \"t\"\nversion = \"1\"\n[base]\ndistro = \"debian\"\nrelease = \"bookworm\"\n{extra}[targets.tar]\n"
        );
        kiln_spec::parse_str(&text, std::path::Path::new("spec.toml"), std::path::Path::new("/"))
            .unwrap_or_else(|e| panic!("{e}"))
            .spec
    };
    assert_eq!(Access::of(&spec("")), Access::default());
    let granted = Access::of(&spec(
        "[[users]]\nname = \"ops\"\npassword_hash = \"$6$abcdefgh$0123456789012345678901234567890123456789012345678901234567890123456789012345678901234\"\n[root]\nssh_keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOkq8ce0Oy6PqU7nKx6O6f3h3xYf3ABQ2lq7c6ZfJrHd a@b\"]\n",
    ));
    assert_eq!(granted.passwords, ["ops"]);
    assert_eq!(granted.ssh_root_login, "prohibit-password");
}

#[test]
fn the_walk_is_bounded_to_small_files_outside_usr() {
    let big = "x".repeat(SCAN_MAX_FILE as usize + 1);
    let mut fs = clean()
        .file("/etc/big", 0o644, &big)
        .file("/usr/local/etc/k", 0o600, KEY);
    let tree = walk(&mut fs).unwrap();
    let scanned: Vec<&str> = tree.scan.iter().map(|(p, _)| p.as_str()).collect();
    assert!(!scanned.contains(&"/etc/big"), "{scanned:?}");
    assert!(!scanned.contains(&"/usr/share/doc/x/key.pem"), "{scanned:?}");
    assert!(!scanned.contains(&"/etc/ssh/ssh_host_ed25519_key"), "{scanned:?}");
    assert!(scanned.contains(&"/usr/local/etc/k"), "{scanned:?}");
}

#[test]
fn plan_warns_about_private_key_sources() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("id_ed25519"), KEY).unwrap();
    std::fs::write(dir.path().join("motd"), "hello\n").unwrap();
    let text = "[image]\nname = \"t\"\nversion = \"1\"\n[base]\ndistro = \"debian\"\nrelease = \"bookworm\"\n\
        [[files]]\nsrc = \"motd\"\ndest = \"/etc/motd\"\n[[files]]\nsrc = \"id_ed25519\"\ndest = \"/root/.ssh/id_ed25519\"\n[targets.tar]\n";
    let loaded =
        kiln_spec::parse_str(text, std::path::Path::new("spec.toml"), dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let warnings = private_key_warnings(&loaded);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("spec.toml:11:7: [[files]] source `id_ed25519` looks like a private key"),
        "{}",
        warnings[0]
    );
}
