//! The spec crate from the outside: broken specs must be rejected with the
//! right message at the right line and column, valid ones must load, and the
//! schema must not drift unnoticed.

use std::path::{Path, PathBuf};

use kiln_spec::{load, parse_str, DiagnosticKind, LoadedSpec, SpecError, GIB};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Parses `source` as `spec.toml` in the `full` fixture directory, whose
/// files (`files/motd`, `scripts/harden.sh`, ...) specs can refer to.
fn parse(source: &str) -> Result<LoadedSpec, SpecError> {
    parse_str(source, Path::new("spec.toml"), &fixtures().join("full"))
}

struct Case {
    name: &'static str,
    spec: &'static str,
    kind: DiagnosticKind,
    message: &'static str,
    line: usize,
    column: usize,
    /// Expected to occur in the help text.
    help: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "syntax error",
        spec: r#"[image]
name = "t
version = "1"
"#,
        kind: DiagnosticKind::Syntax,
        message: "invalid basic string, expected `\"`",
        line: 2,
        column: 10,
        help: "",
    },
    Case {
        name: "unknown top-level table",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[packags]
install = ["vim"]
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::UnknownKey,
        message: "unknown key `packags` at the top level",
        line: 7,
        column: 2,
        help: "did you mean `packages`?",
    },
    Case {
        name: "unknown nested key",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[packages]
instal = ["vim"]
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::UnknownKey,
        message: "unknown key `instal` in [packages]",
        line: 8,
        column: 1,
        help: "did you mean `install`?",
    },
    Case {
        name: "unknown key in an array of tables",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[[files]]
src = "files/motd"
dst = "/etc/motd"
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::UnknownKey,
        message: "unknown key `dst` in [[files]] #1",
        line: 9,
        column: 1,
        help: "did you mean `dest`?",
    },
    Case {
        name: "unknown target",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.ovh-byl]
size = "4GiB"
"#,
        kind: DiagnosticKind::UnknownKey,
        message: "unknown target `ovh-byl`",
        line: 7,
        column: 10,
        help: "did you mean `ovh-byol`? kiln knows these targets: `ovh-byol`",
    },
    Case {
        name: "wrong type",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[packages]
install = "vim"
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::WrongType,
        message: "wrong type for `install` in [packages]: expected an array, found string \"vim\"",
        line: 8,
        column: 11,
        help: "write an array: install = [\"vim\"]",
    },
    Case {
        name: "unknown enum value",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debain"
release = "bookworm"
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::WrongType,
        message: "unknown value `debain` for `distro` in [base]",
        line: 5,
        column: 10,
        help: "did you mean `debian`?",
    },
    Case {
        name: "missing key",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::MissingKey,
        message: "missing key `release` in [base]",
        line: 4,
        column: 1,
        help: "add `release = \"bookworm\"` to this table",
    },
    Case {
        name: "missing table",
        spec: r#"[image]
name = "t"
version = "1"
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::MissingKey,
        message: "missing table [base]",
        line: 0,
        column: 0,
        help: "add a [base] table, e.g. with `distro` and `release`",
    },
    Case {
        name: "target that is not a table",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets]
ovh-byol = "yes"
"#,
        kind: DiagnosticKind::WrongType,
        message: "wrong type for `ovh-byol` in [targets]: expected a table, found string \"yes\"",
        line: 8,
        column: 12,
        help: "",
    },
    Case {
        name: "missing source file",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[[files]]
src = "files/nope"
dest = "/etc/nope"
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::Invalid,
        message: "source file `files/nope` does not exist",
        line: 8,
        column: 7,
        help: "looked for ",
    },
    Case {
        name: "source escaping the spec directory",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[[files]]
src = "../outside.txt"
dest = "/etc/x"
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::Invalid,
        message: "source file `../outside.txt` is outside the spec's directory",
        line: 8,
        column: 7,
        help: "kiln only reads files under ",
    },
    Case {
        name: "dest with ..",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[[files]]
src = "files/motd"
dest = "../etc/x"
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::Invalid,
        message: "invalid destination `../etc/x`: it contains `..`",
        line: 9,
        column: 8,
        help: "without `..`",
    },
    Case {
        name: "relative dest",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[[files]]
src = "files/motd"
dest = "/etc/motd"
[[files]]
src = "files/motd"
dest = "etc/issue"
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::Invalid,
        message: "invalid destination `etc/issue`: it is not absolute",
        line: 12,
        column: 8,
        help: "did you mean `/etc/issue`?",
    },
    Case {
        name: "size too small for the content",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.ovh-byol]
size = "1MiB"
"#,
        kind: DiagnosticKind::Invalid,
        message: "size `1MiB` is smaller than the content: at least 1 GiB (1 GiB for a Debian system with kernel, GRUB and cloud-init, plus 0 B of [[files]])",
        line: 8,
        column: 8,
        help: "use \"auto\", or at least \"1GiB\"",
    },
    Case {
        name: "size absurdly large",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.ovh-byol]
size = "100TiB"
"#,
        kind: DiagnosticKind::Invalid,
        message: "size `100TiB` is larger than 2 TiB",
        line: 8,
        column: 8,
        help: "use \"auto\"",
    },
    Case {
        name: "size not a size",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.ovh-byol]
size = "lots"
"#,
        kind: DiagnosticKind::Invalid,
        message: "invalid `size`: `lots` is not a size",
        line: 8,
        column: 8,
        help: "write \"auto\" or a size such as \"4GiB\"",
    },
    Case {
        name: "duplicate user",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[[users]]
name = "ops"
[[users]]
name = "ops"
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::Invalid,
        message: "duplicate user `ops`",
        line: 10,
        column: 8,
        help: "the first is [[users]] #1 (line 8)",
    },
    Case {
        name: "bad hostname",
        spec: r#"hostname = "foo_bar"
[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::Invalid,
        message: "invalid hostname `foo_bar`: '_' is not allowed",
        line: 1,
        column: 12,
        help: "use letters, digits and `-`",
    },
    Case {
        name: "run with both script and file",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[[run]]
script = "echo hi"
file = "scripts/harden.sh"
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::Invalid,
        message: "[[run]] #1 has both `script` and `file`",
        line: 9,
        column: 8,
        help: "keep one",
    },
    Case {
        name: "run with neither script nor file",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[[run]]
name = "nothing"
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::Invalid,
        message: "[[run]] #1 has neither `script` nor `file`",
        line: 7,
        column: 1,
        help: "add `script",
    },
    Case {
        name: "no target",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
"#,
        kind: DiagnosticKind::Invalid,
        message: "no target is defined",
        line: 0,
        column: 0,
        help: "kiln knows [targets.ovh-byol]",
    },
];

#[test]
fn broken_specs_point_at_the_problem() {
    for case in CASES {
        let err = match parse(case.spec) {
            Ok(_) => panic!("{}: parsed, but should have failed", case.name),
            Err(e) => e,
        };
        let [d] = err.diagnostics() else {
            panic!("{}: want one diagnostic, got:\n{err}", case.name);
        };
        let got = (d.kind, d.message.as_str(), d.line, d.column);
        let want = (case.kind, case.message, case.line, case.column);
        assert_eq!(got, want, "{}: rendered:\n{err}", case.name);
        let help = d.help.as_deref().unwrap_or("");
        assert!(
            help.contains(case.help),
            "{}: help {help:?} lacks {:?}",
            case.name,
            case.help
        );
        assert_eq!(d.file, Path::new("spec.toml"), "{}", case.name);
        // The rendered message names the place and quotes the line.
        let rendered = err.to_string();
        assert!(rendered.contains(case.message), "{}: {rendered}", case.name);
        if d.line > 0 {
            let location = format!("spec.toml:{}:{}", d.line, d.column);
            assert!(rendered.contains(&location), "{}: {rendered}", case.name);
            let quoted = case.spec.lines().nth(d.line - 1).unwrap_or_default();
            assert!(
                rendered.contains(&format!("{} | {quoted}\n", d.line)),
                "{}: {rendered}",
                case.name
            );
        }
    }
}

/// What users see, for every case above (fixture paths made portable).
#[test]
fn rendered_errors() {
    let fixtures = fixtures().canonicalize().unwrap();
    let mut out = String::new();
    for case in CASES {
        let err = parse(case.spec).unwrap_err().to_string();
        let err = err.replace(&fixtures.display().to_string(), "[fixtures]");
        out.push_str(&format!("=== {}\n{err}\n\n", case.name));
    }
    insta::assert_snapshot!("rendered_errors", out);
}

/// One spec with many semantic problems: all are reported at once, in file
/// order.
const MANY_PROBLEMS: &str = r#"timezone = "Paris"
locale = "english"
[image]
name = ".hidden"
version = "1 0"
[base]
distro = "debian"
release = "bookworm"
mirror = "ftp://deb.debian.org/debian"
[[files]]
src = "files/motd"
dest = "/etc//motd"
mode = "0999"
owner = "Ops"
[[users]]
name = "root"
ssh_keys = ["ssh-ed25519 AAAA..."]
[root]
password_hash = "hunter2"
locked = true
[targets.ovh-byol]
size = "4GiB"
headroom = "25%"
bootloader_id = "my os"
"#;

#[test]
fn semantic_problems_are_all_reported() {
    let err = parse(MANY_PROBLEMS).unwrap_err();
    let got: Vec<(usize, usize, &str)> = err
        .diagnostics()
        .iter()
        .map(|d| (d.line, d.column, d.message.as_str()))
        .collect();
    let want = vec![
        (1, 12, "invalid time zone `Paris`: it is not a tz database name"),
        (2, 10, "invalid locale `english`: it is not a locale name"),
        (4, 8, "invalid image name `.hidden`: it must not start with `.`"),
        (5, 11, "invalid image version `1 0`: ' ' is not allowed"),
        (
            9,
            10,
            "invalid mirror `ftp://deb.debian.org/debian`: scheme `ftp` is not http, https or file",
        ),
        (12, 8, "invalid destination `/etc//motd`: it is not normalised"),
        (
            13,
            8,
            "invalid mode: `0999` is not 3 or 4 octal digits such as \"0644\"",
        ),
        (14, 9, "invalid owner `Ops`: user: it starts with 'O'"),
        (16, 8, "`root` cannot be one of [[users]]"),
        (
            17,
            13,
            "invalid SSH public key: the key data is not valid base64 (truncated or edited?)",
        ),
        (
            19,
            17,
            "invalid `password_hash`: it does not look like a crypt(3) hash (`$id$salt$hash`)",
        ),
        (20, 10, "`locked = true` contradicts `password_hash`"),
        (23, 12, "`headroom` only applies when `size` is \"auto\""),
        (24, 17, "invalid `bootloader_id` `my os`: ' ' is not allowed"),
    ];
    assert_eq!(got, want, "rendered:\n{err}");
    insta::assert_snapshot!("many_problems", err.to_string());
}

#[test]
fn size_minimum_includes_the_files() {
    let spec = r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[[files]]
src = "files/motd"
dest = "/etc/motd"
[targets.ovh-byol]
size = "1GiB"
"#;
    let err = parse(spec).unwrap_err();
    let [d] = err.diagnostics() else { panic!("{err}") };
    assert_eq!((d.line, d.column), (11, 8));
    assert!(d.message.contains("plus 31 B of [[files]]"), "{}", d.message);
    assert_eq!(d.help.as_deref(), Some("use \"auto\", or at least \"1025MiB\""));
    assert!(parse(&spec.replace("\"1GiB\"", "\"1025MiB\"")).is_ok());
}

#[test]
fn symlinks_out_of_the_spec_directory_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spec");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(tmp.path().join("secret"), "x").unwrap();
    std::os::unix::fs::symlink("../secret", dir.join("link")).unwrap();
    std::fs::create_dir(dir.join("adir")).unwrap();
    let spec = r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[[files]]
src = "link"
dest = "/etc/a"
[[files]]
src = "adir"
dest = "/etc/b"
[targets.ovh-byol]
"#;
    let err = parse_str(spec, Path::new("spec.toml"), &dir).unwrap_err();
    let got: Vec<(usize, &str)> = err.diagnostics().iter().map(|d| (d.line, d.message.as_str())).collect();
    let secret = tmp.path().canonicalize().unwrap().join("secret");
    let escape = format!(
        "source file `link` is outside the spec's directory (it resolves to {})",
        secret.display()
    );
    assert_eq!(
        got,
        vec![(8, escape.as_str()), (11, "source file `adir` is not a regular file")]
    );
}

#[test]
fn full_spec_loads() {
    let path = fixtures().join("full/spec.toml");
    let loaded = match load(&path) {
        Ok(loaded) => loaded,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(loaded.path, path);
    assert_eq!(loaded.dir, fixtures().join("full").canonicalize().unwrap());
    let spec = &loaded.spec;
    assert_eq!(spec.image.name, "debian-12-byol");
    assert_eq!(spec.files.len(), 2);
    assert_eq!(spec.users[1].locked, Some(true));
    assert_eq!(spec.targets.defined(), vec!["ovh-byol"]);
    let target = spec.targets.ovh_byol.as_ref().unwrap();
    assert_eq!(target.partition_size(), Some(4 * GIB));
    assert_eq!(target.resolved_size(123), 4 * GIB);
    assert_eq!(loaded.resolve("files/motd"), loaded.dir.join("files/motd"));
    assert_eq!(loaded.location("run[0].file"), Some((48, 8)));
    assert_eq!(loaded.location("nope"), None);
}

#[test]
fn load_reports_unreadable_files() {
    let err = load(Path::new("/nonexistent/spec.toml")).unwrap_err();
    assert!(matches!(err, SpecError::Read { .. }));
    assert!(err.diagnostics().is_empty());
    assert!(
        err.to_string().starts_with("reading spec /nonexistent/spec.toml: "),
        "{err}"
    );
}

#[test]
fn auto_size_adds_headroom() {
    let spec = r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.ovh-byol]
"#;
    let loaded = parse(spec).unwrap();
    let target = loaded.spec.targets.ovh_byol.unwrap();
    assert_eq!(target.partition_size(), None);
    // Default: 25% plus 256 MiB, rounded up to a MiB.
    assert_eq!(target.resolved_size(1024 << 20), (1024 + 256 + 256) << 20);
    let with_headroom = kiln_spec::OvhByolTarget {
        headroom: Some("10%".into()),
        ..target
    };
    assert_eq!(with_headroom.resolved_size(1000 << 20), 1100 << 20);
}

#[test]
fn section_json_is_stable() {
    let loaded = load(&fixtures().join("full/spec.toml")).unwrap();
    let again = parse(&loaded.source).unwrap();
    for section in kiln_spec::Spec::SECTIONS {
        let a = serde_json::to_string(&loaded.spec.section_json(section)).unwrap();
        let b = serde_json::to_string(&again.spec.section_json(section)).unwrap();
        assert_eq!(a, b, "{section}");
    }
    let packages = loaded.spec.section_json("packages");
    assert_eq!(packages["install"][0], "openssh-server");
    assert_eq!(loaded.spec.section_json("nope"), serde_json::Value::Null);
    // Serialised sections list every section the model has.
    let all = serde_json::to_value(&loaded.spec).unwrap();
    let keys: Vec<&str> = all.as_object().unwrap().keys().map(String::as_str).collect();
    let mut sections = kiln_spec::Spec::SECTIONS.to_vec();
    sections.sort_unstable();
    let mut keys_sorted = keys.clone();
    keys_sorted.sort_unstable();
    assert_eq!(keys_sorted, sections);
}

#[test]
fn json_schema() {
    let schema = kiln_spec::json_schema();
    assert!(schema["$defs"]["Targets"]["properties"]["ovh-byol"].is_object());
    assert_eq!(
        schema["$defs"]["Filesystem"]["enum"],
        serde_json::json!(["ext4", "xfs"])
    );
    insta::assert_json_snapshot!("json_schema", schema);
}

/// Every prefix of a valid spec is an input a user could save by accident;
/// none may panic, and every error must carry at least one diagnostic.
#[test]
fn truncated_specs_never_panic() {
    let full = std::fs::read_to_string(fixtures().join("full/spec.toml")).unwrap();
    for end in (0..full.len()).filter(|&i| full.is_char_boundary(i)) {
        if let Err(e) = parse(&full[..end]) {
            assert!(!e.diagnostics().is_empty(), "prefix {end}: {e}");
        }
    }
}
