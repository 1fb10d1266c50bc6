//! Small tarballs, each wrong in one way that exactly one rule must
//! catch: made by hand (a ustar header writer below) where GNU tar would
//! refuse to make them, else by the target's own writer.

use std::path::PathBuf;

use super::*;
use crate::targets::contract::testing::{failed, wrong_failures};
use crate::targets::tar::{write_archive, ArchiveOptions};
use kiln_spec::TarCompression;

/// One ustar header (POSIX magic), its checksum set.
fn header(name: &str, typeflag: u8, size: u64, uid: u64, mode: u32, link: &str) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
        let s = format!("{:0width$o}\0", v, width = len - 1);
        h[at..at + len].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, u64::from(mode));
    octal(&mut h, 108, 8, uid);
    octal(&mut h, 116, 8, uid);
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, 1_700_000_000);
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// A member to write by hand.
#[derive(Clone)]
struct M {
    name: String,
    typeflag: u8,
    data: Vec<u8>,
    uid: u64,
    mode: u32,
    link: String,
    pax: Vec<(String, Vec<u8>)>,
}

fn dir(name: &str) -> M {
    M {
        name: name.into(),
        typeflag: b'5',
        data: vec![],
        uid: 0,
        mode: 0o755,
        link: String::new(),
        pax: vec![],
    }
}

fn file(name: &str, data: &str) -> M {
    M {
        typeflag: b'0',
        data: data.as_bytes().to_vec(),
        mode: 0o644,
        ..dir(name)
    }
}

fn link(name: &str, typeflag: u8, target: &str) -> M {
    M {
        typeflag,
        link: target.into(),
        mode: 0o777,
        ..dir(name)
    }
}

fn with_xattr(mut m: M, name: &str) -> M {
    m.pax
        .push((format!("SCHILY.xattr.{name}"), b"\x01\x00\x00\x02".to_vec()));
    m
}

fn pax_block(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let body = 1 + k.len() + 1 + v.len() + 1;
        let mut len = body + 1;
        while format!("{len}").len() + body != len {
            len += 1;
        }
        out.extend_from_slice(format!("{len} {k}=").as_bytes());
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

fn padded(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn archive(members: &[M]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in members {
        if !m.pax.is_empty() {
            let data = pax_block(&m.pax);
            out.extend_from_slice(&header("PaxHeaders/x", b'x', data.len() as u64, 0, 0o644, ""));
            padded(&mut out, &data);
        }
        out.extend_from_slice(&header(
            &m.name,
            m.typeflag,
            m.data.len() as u64,
            m.uid,
            m.mode,
            &m.link,
        ));
        padded(&mut out, &m.data);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// A root tree that passes every rule.
fn good() -> Vec<M> {
    vec![
        dir("./"),
        dir("./etc/"),
        file("./etc/fstab", "# none\nproc /proc proc defaults 0 0\n"),
        file("./etc/machine-id", ""),
        link("./etc/os-release", b'2', "../usr/lib/os-release"),
        file("./etc/passwd", "root:x:0:0::/root:/bin/sh\n"),
        dir("./etc/ssh/"),
        file("./etc/ssh/sshd_config", "\n"),
        dir("./usr/"),
        dir("./usr/bin/"),
        with_xattr(file("./usr/bin/ping", "ELF"), "security.capability"),
        link("./usr/bin/ping4", b'1', "./usr/bin/ping"),
        dir("./usr/lib/"),
        file("./usr/lib/os-release", "ID=debian\n"),
    ]
}

fn replace(mut members: Vec<M>, name: &str, with: M) -> Vec<M> {
    let i = members.iter().position(|m| m.name == name).unwrap();
    members[i] = with;
    members
}

fn run(bytes: &[u8]) -> Vec<RuleResult> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rootfs.tar");
    std::fs::write(&path, bytes).unwrap();
    check(&path, &CheckOptions::default()).unwrap()
}

#[test]
fn a_good_archive_passes_and_is_listed() {
    let results = run(&archive(&good()));
    assert!(failed(&results).is_empty(), "{:#?}", failed(&results));
    let ids: Vec<&str> = results.iter().map(|r| r.id).collect();
    let mut all: Vec<&str> = RULES.iter().map(|(id, _)| *id).collect();
    all.extend(crate::targets::security::RULES.map(|(id, _)| id));
    assert_eq!(ids, all);
    let archive = &results[0].reason;
    assert!(
        archive.contains(
            "uncompressed, 14 members (6 directories, 6 files, 1 hard links, 1 symlinks), 76 B of data in a 11 KiB tar"
        ),
        "{archive}"
    );
    assert!(
        results[5].reason.contains("1 security.capability"),
        "{}",
        results[5].reason
    );
}

#[test]
fn each_fault_is_caught_by_its_rule() {
    let mut ssh = good();
    ssh.push(file("./etc/ssh/ssh_host_ed25519_key", "KEY"));
    let mut under_symlink = good();
    under_symlink.push(link("./lib", b'2', "usr/lib"));
    under_symlink.push(file("./lib/evil", "x"));
    let mut absolute = good();
    absolute.push(file("/etc/shadow", "x"));
    let mut dotdot = good();
    dotdot.push(file("./usr/../../escape", "x"));
    let mut twice = good();
    twice.push(file("./etc/passwd", "again"));
    let mut orphan = good();
    orphan.push(file("./var/lib/x", "x"));
    let mut long = good();
    long.push(M {
        pax: vec![("path".into(), format!("./usr/{}", "d/".repeat(80)).into_bytes())],
        ..file("./usr/short", "x")
    });
    // The security contract on the members' modes and kept contents.
    let with = |m: M| {
        let mut members = good();
        members.push(m);
        members
    };
    let security: Vec<(&str, Vec<M>, &str, &str)> = vec![
        (
            "a world-writable file",
            with(M {
                mode: 0o666,
                ..file("./etc/app.conf", "x")
            }),
            "world-writable",
            "/etc/app.conf (0666)",
        ),
        (
            "a setuid file no package installed",
            with(M {
                mode: 0o4755,
                ..file("./usr/bin/rootsh", "ELF")
            }),
            "setuid",
            "/usr/bin/rootsh",
        ),
        (
            "a private key",
            with(file(
                "./etc/app.key",
                "-----BEGIN EC PRIVATE KEY-----\nMHcC\n-----END EC PRIVATE KEY-----\n",
            )),
            "secrets",
            "/etc/app.key (a private key)",
        ),
        (
            "a root password",
            with(file("./etc/shadow", "root:$6$s$h:1::::::\n")),
            "passwords",
            "root (a password hash, in /etc/shadow)",
        ),
    ];
    let cases: Vec<(&str, Vec<M>, &str, &str)> = security
        .into_iter()
        .chain(vec![
            (
                "a baked machine-id",
                replace(
                    good(),
                    "./etc/machine-id",
                    file("./etc/machine-id", "0123456789abcdef\n"),
                ),
                "machine-id",
                "/etc/machine-id has content",
            ),
            ("baked host keys", ssh, "ssh-host-keys", "ssh_host_ed25519_key"),
            (
                "ping without its capability",
                replace(good(), "./usr/bin/ping", file("./usr/bin/ping", "ELF")),
                "xattrs",
                "/usr/bin/ping has neither a file capability nor setuid",
            ),
            (
                "a disk in fstab",
                replace(
                    good(),
                    "./etc/fstab",
                    file(
                        "./etc/fstab",
                        "UUID=1234 / ext4 defaults 0 1\nLABEL=data /data ext4 nofail 0 2\n",
                    ),
                ),
                "fstab",
                "mounts UUID=1234 on /",
            ),
            (
                "a tree owned by a user",
                replace(
                    good(),
                    "./etc/",
                    M {
                        uid: 1000,
                        ..dir("./etc/")
                    },
                ),
                "owners",
                "/etc is 1000:1000",
            ),
            (
                "no os-release",
                replace(good(), "./usr/lib/os-release", file("./usr/lib/os-release2", "")),
                "root-tree",
                "/etc/os-release",
            ),
            (
                "a member below a symlink",
                under_symlink,
                "unpacks",
                "below the symlink lib",
            ),
            ("an absolute name", absolute, "paths", "/etc/shadow (absolute)"),
            ("a name with ..", dotdot, "paths", "(`..`)"),
            ("a name twice", twice, "unpacks", "./etc/passwd comes twice"),
            (
                "a file before its directory",
                orphan,
                "unpacks",
                "before its directory var/lib",
            ),
            (
                "a hard link to nothing",
                replace(
                    good(),
                    "./usr/bin/ping4",
                    link("./usr/bin/ping4", b'1', "./usr/bin/pong"),
                ),
                "unpacks",
                "which no member before it is",
            ),
            (
                "a PAX path below a missing directory",
                long,
                "unpacks",
                "before its directory usr/d/d",
            ),
        ])
        .collect();
    let mut wrong = Vec::new();
    for (name, members, rule, needle) in cases {
        if let Some(w) = wrong_failures(name, &run(&archive(&members)), rule, needle, &[]) {
            wrong.push(w);
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn broken_archives_fail_the_archive_rule_without_panicking() {
    let good = archive(&good());
    let mut bad_sum = good.clone();
    bad_sum[0] ^= 1;
    let mut huge_pax = header("PaxHeaders/x", b'x', 1 << 32, 0, 0o644, "").to_vec();
    huge_pax.extend_from_slice(&[0u8; 1024]);
    let mut bad_record = header("PaxHeaders/x", b'x', 512, 0, 0o644, "").to_vec();
    padded(&mut bad_record, b"99999 path=x\n");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated inside a member",
            good[..good.len() - 1024 - 100].to_vec(),
            "truncated",
        ),
        (
            "no end-of-archive block",
            good[..good.len() - 1024].to_vec(),
            "without its end-of-archive block",
        ),
        ("a wrong checksum", bad_sum, "wrong checksum"),
        ("a huge PAX header", huge_pax, "more than kiln reads"),
        ("a bad PAX record", bad_record, "does not match"),
        ("not a tar at all", vec![b'x'; 4000], "not a tar archive"),
        ("empty", Vec::new(), "truncated"),
    ];
    for (name, bytes, needle) in cases {
        let results = run(&bytes);
        let fails = failed(&results);
        assert!(
            fails
                .iter()
                .any(|(id, reason)| *id == "archive" && reason.contains(needle)),
            "{name}: {fails:#?}"
        );
    }
}

#[test]
fn a_truncated_zstd_stream_fails() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    crate::targets::tar::tests::make_tree(&tree, false);
    let path: PathBuf = dir.path().join("rootfs.tar.zst");
    let opts = ArchiveOptions {
        compression: TarCompression::Zstd,
        level: None,
        source_date_epoch: Some(1_700_000_000),
        threads: 2,
    };
    write_archive(&tree, &path, &opts).unwrap();
    let results = check(&path, &CheckOptions::default()).unwrap();
    assert!(failed(&results).is_empty(), "{:#?}", failed(&results));
    assert!(results[0].reason.starts_with("zstd, "), "{}", results[0].reason);
    assert!(
        results[5].reason.contains("1 security.capability"),
        "{}",
        results[5].reason
    );
    assert!(results[5].reason.contains("2 POSIX ACLs"), "{}", results[5].reason);
    // Cut short (its last bytes hold the content checksum).
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 6]).unwrap();
    let results = check(&path, &CheckOptions::default()).unwrap();
    assert_eq!(
        failed(&results).first().map(|f| f.0),
        Some("archive"),
        "{:#?}",
        failed(&results)
    );
}
