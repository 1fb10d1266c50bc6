//! The spec crate from the outside: broken specs must be rejected with the
//! right message at the right line and column, valid ones must load, and the
//! schema must not drift unnoticed.

use std::path::{Path, PathBuf};

use kiln_spec::{load, parse_str, DiagnosticKind, DiskFormat, DiskTarget, Firmware, LoadedSpec, SpecError, GIB, MIB};

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
        help: "did you mean `ovh-byol`? kiln knows these targets: `ovh-byol`, `disk`",
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
        name: "duplicate key",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
release = "trixie"
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::Duplicate,
        message: "duplicate key `release` in [base]",
        line: 7,
        column: 1,
        help: "keep one of the two",
    },
    Case {
        name: "duplicate table",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.ovh-byol]
[base]
mirror = "http://deb.debian.org/debian"
"#,
        kind: DiagnosticKind::Duplicate,
        message: "table [base] is defined twice",
        line: 8,
        column: 2,
        help: "merge the two [base] tables into one",
    },
    Case {
        name: "unquoted string",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = bookworm
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::Syntax,
        message: "string values must be quoted, expected literal string",
        line: 6,
        column: 11,
        help: "put the value in quotes: release = \"bookworm\"",
    },
    Case {
        name: "unclosed array",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.ovh-byol]
[packages]
install = ["vim", "curl"
"#,
        kind: DiagnosticKind::Syntax,
        message: "unclosed array, expected `]`",
        line: 9,
        column: 25,
        help: "close the array with `]`",
    },
    Case {
        name: "quoted boolean",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
compress = "true"
"#,
        kind: DiagnosticKind::WrongType,
        message: "wrong type for `compress` in [targets.disk]: expected a boolean, found string \"true\"",
        line: 8,
        column: 12,
        help: "write it without quotes: compress = true",
    },
    Case {
        name: "number for a string",
        spec: r#"[image]
name = "t"
version = 1
[base]
distro = "debian"
release = "bookworm"
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::WrongType,
        message: "wrong type for `version` in [image]: expected a string, found integer `1`",
        line: 3,
        column: 11,
        help: "put the value in quotes: version = \"1\"",
    },
    Case {
        name: "unknown key in the distro-tagged [base]",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
relase = "bookworm"
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::UnknownKey,
        message: "unknown key `relase` in [base]",
        line: 6,
        column: 1,
        help: "did you mean `release`?",
    },
    Case {
        name: "wrong type in the distro-tagged [base]",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "ubuntu"
mirror = "http://archive.ubuntu.com/ubuntu"
release = 24
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::WrongType,
        message: "wrong type for `release` in [base]: expected a string, found integer `24`",
        line: 7,
        column: 11,
        help: "",
    },
    Case {
        name: "ubuntu without a mirror",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "ubuntu"
release = "noble"
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::Invalid,
        message: "distro \"ubuntu\" needs a `mirror`",
        line: 5,
        column: 10,
        help: "mirror = \"http://archive.ubuntu.com/ubuntu\"",
    },
    Case {
        name: "unknown family",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "gentoo"
release = "x"
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::WrongType,
        message: "unknown value `gentoo` for `distro` in [base]",
        line: 5,
        column: 10,
        help: "`debian`, `ubuntu`, `arch`, `rhel`",
    },
    Case {
        name: "a release the rhel family does not know",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "rhel"
distribution = "rocky"
release = "7"
repos = [{ name = "baseos", baseurl = "https://m.example/8/BaseOS/x86_64/os/", gpgcheck = false }]
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::Invalid,
        message: "release `7` is not one the rhel family knows",
        line: 7,
        column: 11,
        help: "kiln builds releases 8, 9",
    },
    Case {
        name: "a repository without a key",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "rhel"
distribution = "almalinux"
release = "9"
[[base.repos]]
name = "baseos"
baseurl = "https://m.example/9/BaseOS/x86_64/os/"
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::Invalid,
        message: "repository `baseos` has no `gpgkey`",
        line: 9,
        column: 8,
        help: "gpgcheck = false",
    },
    Case {
        name: "an arch release",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "arch"
release = "2026.01"
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::UnknownKey,
        message: "unknown key `release` in [base]",
        line: 6,
        column: 1,
        help: "",
    },
    Case {
        name: "offline packages for arch",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "arch"
[packages]
offline = ["jq"]
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::Invalid,
        message: "`offline` is not supported for distro = \"arch\" yet: kiln builds its local repository with apt",
        line: 7,
        column: 11,
        help: "[[run]]",
    },
    Case {
        name: "an arch tarball without its table",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "arch"
bootstrap = "tarball"
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::Invalid,
        message: "`bootstrap = \"tarball\"` needs a `tarball`",
        line: 6,
        column: 13,
        help: "sha256",
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
        name: "missing key in an array of tables",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[[files]]
src = "files/motd"
[targets.ovh-byol]
"#,
        kind: DiagnosticKind::MissingKey,
        message: "missing key `dest` in [[files]] #1",
        line: 7,
        column: 1,
        help: "add `dest = \"/…\"` to this table",
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
        name: "disk: unknown key",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
firmwares = ["bios"]
"#,
        kind: DiagnosticKind::UnknownKey,
        message: "unknown key `firmwares` in [targets.disk]",
        line: 8,
        column: 1,
        help: "did you mean `firmware`?",
    },
    Case {
        name: "disk: unknown firmware",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
firmware = ["bios", "efi"]
"#,
        kind: DiagnosticKind::WrongType,
        message: "unknown value `efi` for `firmware` in [targets.disk]",
        line: 8,
        column: 21,
        help: "`uefi`",
    },
    Case {
        name: "disk: unknown format",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
format = "vdi"
"#,
        kind: DiagnosticKind::WrongType,
        message: "unknown value `vdi` for `format` in [targets.disk]",
        line: 8,
        column: 10,
        help: "",
    },
    Case {
        name: "disk: empty firmware list",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
firmware = []
"#,
        kind: DiagnosticKind::Invalid,
        message: "`firmware` is empty",
        line: 8,
        column: 12,
        help: "list \"bios\", \"uefi\" or both",
    },
    Case {
        name: "disk: firmware listed twice",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
firmware = ["uefi", "bios", "uefi"]
"#,
        kind: DiagnosticKind::Invalid,
        message: "`uefi` is listed twice",
        line: 8,
        column: 29,
        help: "already item 1",
    },
    Case {
        name: "disk: xfs",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
filesystem = "xfs"
"#,
        kind: DiagnosticKind::Invalid,
        message: "the disk target supports only ext4 for now",
        line: 8,
        column: 14,
        help: "set it to \"ext4\"",
    },
    Case {
        name: "disk: ESP too small",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
esp_size = "8MiB"
"#,
        kind: DiagnosticKind::Invalid,
        message: "`esp_size` `8MiB` is outside 36 MiB to 4 GiB",
        line: 8,
        column: 12,
        help: "at least 36MiB",
    },
    Case {
        name: "disk: ESP not whole MiB",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
esp_size = "100000K"
"#,
        kind: DiagnosticKind::Invalid,
        message: "`esp_size` `100000K` is not a whole number of MiB, so the root partition would be misaligned",
        line: 8,
        column: 12,
        help: "\"128MiB\"",
    },
    Case {
        name: "disk: ESP not a size",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
esp_size = "128MB"
"#,
        kind: DiagnosticKind::Invalid,
        message: "invalid `esp_size`: `128MB` uses a decimal unit; kiln sizes are binary, write `128MiB`",
        line: 8,
        column: 12,
        help: "",
    },
    Case {
        name: "disk: size too small for content and layout",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
size = "1GiB"
esp_size = "64MiB"
"#,
        kind: DiagnosticKind::Invalid,
        message: "size `1GiB` is smaller than the content: at least 1091 MiB (1 GiB for a Debian system with kernel, GRUB and cloud-init, plus 0 B of [[files]] and 67 MiB for the ESP, the BIOS boot partition and the GPT)",
        line: 8,
        column: 8,
        help: "use \"auto\", or at least \"1091MiB\"",
    },
    Case {
        name: "disk: size absurdly large",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
size = "20TiB"
"#,
        kind: DiagnosticKind::Invalid,
        message: "size `20TiB` is larger than 16 TiB",
        line: 8,
        column: 8,
        help: "growpart",
    },
    Case {
        name: "disk: headroom with a fixed size",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
size = "8GiB"
headroom = "1GiB"
"#,
        kind: DiagnosticKind::Invalid,
        message: "`headroom` only applies when `size` is \"auto\"",
        line: 9,
        column: 12,
        help: "remove `headroom`",
    },
    Case {
        name: "disk: bad console",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
console = "/dev/ttyS0"
"#,
        kind: DiagnosticKind::Invalid,
        message: "invalid `console` `/dev/ttyS0`: it starts with `/dev/`",
        line: 8,
        column: 11,
        help: "\"ttyS0\"",
    },
    Case {
        name: "disk: console with a space",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
console = "ttyS0,115200 quiet"
"#,
        kind: DiagnosticKind::Invalid,
        message: "invalid `console` `ttyS0,115200 quiet`: ' ' is not allowed",
        line: 8,
        column: 11,
        help: "ttyS0,115200n8",
    },
    Case {
        name: "disk: compress a raw image",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
format = "raw"
compress = true
"#,
        kind: DiagnosticKind::Invalid,
        message: "`compress` only applies when `format` is \"qcow2\"",
        line: 9,
        column: 12,
        help: "set `format = \"qcow2\"`",
    },
    Case {
        name: "disk: compress a VMDK",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
format = "vmdk"
compress = true
"#,
        kind: DiagnosticKind::Invalid,
        message: "`compress` only applies when `format` is \"qcow2\"",
        line: 9,
        column: 12,
        help: "remove `compress`",
    },
    Case {
        name: "disk: bad bootloader id",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
bootloader_id = "EFI/debian"
"#,
        kind: DiagnosticKind::Invalid,
        message: "invalid `bootloader_id` `EFI/debian`: '/' is not allowed",
        line: 8,
        column: 17,
        help: "use letters, digits",
    },
    Case {
        name: "layout: does not fit the disk",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
size = "2GiB"
[[targets.disk.partitions]]
role = "bios_boot"
size = "1MiB"
[[targets.disk.partitions]]
role = "esp"
size = "512MiB"
[[targets.disk.partitions]]
role = "boot"
size = "1GiB"
[[targets.disk.partitions]]
role = "/var/log"
size = "1GiB"
[[targets.disk.partitions]]
role = "root"
"#,
        kind: DiagnosticKind::Invalid,
        message: "the partitions do not fit in size `2GiB`: their fixed sizes and the GPT take 2.5 GiB, and the last partition needs room too",
        line: 8,
        column: 8,
        help: "at least \"3587MiB\"",
    },
    Case {
        name: "layout: two roots",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
[[targets.disk.partitions]]
role = "bios_boot"
size = "1MiB"
[[targets.disk.partitions]]
role = "esp"
size = "512MiB"
[[targets.disk.partitions]]
role = "root"
size = "4GiB"
[[targets.disk.partitions]]
role = "root"
"#,
        kind: DiagnosticKind::Invalid,
        message: "two root partitions",
        line: 18,
        column: 8,
        help: "the first is partition 3 (line 15)",
    },
    Case {
        name: "layout: uefi without an ESP",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
firmware = ["uefi"]
[[targets.disk.partitions]]
role = "root"
"#,
        kind: DiagnosticKind::Invalid,
        message: "`uefi` firmware needs an EFI system partition, and the layout has none",
        line: 8,
        column: 12,
        help: "role = \"esp\"",
    },
    Case {
        name: "layout: bios without a BIOS boot partition",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
firmware = ["bios"]
[[targets.disk.partitions]]
role = "root"
"#,
        kind: DiagnosticKind::Invalid,
        message: "`bios` firmware on a GPT disk needs a BIOS boot partition for GRUB, and the layout has none",
        line: 8,
        column: 12,
        help: "role = \"bios_boot\"",
    },
    Case {
        name: "layout: duplicate mount point",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
firmware = ["bios"]
[[targets.disk.partitions]]
role = "bios_boot"
size = "1MiB"
[[targets.disk.partitions]]
role = "/var/log"
size = "1GiB"
[[targets.disk.partitions]]
role = "/var/log"
size = "1GiB"
[[targets.disk.partitions]]
role = "root"
"#,
        kind: DiagnosticKind::Invalid,
        message: "duplicate mount point `/var/log`",
        line: 16,
        column: 8,
        help: "partition 2 (line 13) is mounted there too",
    },
    Case {
        name: "layout: mount point inside the ESP",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
firmware = ["uefi"]
[[targets.disk.partitions]]
role = "esp"
size = "512MiB"
[[targets.disk.partitions]]
role = "/boot/efi/x"
size = "1GiB"
[[targets.disk.partitions]]
role = "root"
"#,
        kind: DiagnosticKind::Invalid,
        message: "`/boot/efi/x` overlaps the EFI system partition at /boot/efi",
        line: 13,
        column: 8,
        help: "mount the filesystem elsewhere",
    },
    Case {
        name: "layout: unknown role",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
firmware = ["uefi"]
[[targets.disk.partitions]]
role = "esp"
size = "512MiB"
[[targets.disk.partitions]]
role = "rot"
"#,
        kind: DiagnosticKind::Invalid,
        message: "unknown partition role `rot`",
        line: 13,
        column: 8,
        help: "did you mean `root`?",
    },
    Case {
        name: "layout: unknown filesystem",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
firmware = ["uefi"]
[[targets.disk.partitions]]
role = "esp"
size = "512MiB"
[[targets.disk.partitions]]
role = "root"
filesystem = "btrfs"
"#,
        kind: DiagnosticKind::WrongType,
        message: "unknown value `btrfs` for `filesystem` in [[targets.disk.partitions]] #2",
        line: 14,
        column: 14,
        help: "`xfs`",
    },
    Case {
        name: "layout: filesystem that does not suit the role",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
firmware = ["uefi"]
[[targets.disk.partitions]]
role = "esp"
size = "512MiB"
[[targets.disk.partitions]]
role = "root"
filesystem = "vfat"
"#,
        kind: DiagnosticKind::Invalid,
        message: "filesystem `vfat` does not suit role `root`",
        line: 14,
        column: 14,
        help: "use \"ext4\" or \"xfs\"",
    },
    Case {
        name: "layout: the rest before the last partition",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
firmware = ["uefi"]
[[targets.disk.partitions]]
role = "esp"
size = "512MiB"
[[targets.disk.partitions]]
role = "root"
[[targets.disk.partitions]]
role = "/var/log"
size = "1GiB"
"#,
        kind: DiagnosticKind::Invalid,
        message: "only the last partition can take the rest of the disk",
        line: 12,
        column: 1,
        help: "give this partition a size",
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
        help: "kiln knows [targets.ovh-byol], [targets.disk], [targets.iso], [targets.ami], [targets.tar]",
    },
    Case {
        name: "iso: a config drive with another label",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.iso]
label = "LIVE"
[targets.iso.config_drive]
hostname = "node-0"
"#,
        kind: DiagnosticKind::Invalid,
        message: "a config drive must be labelled `config-2`, not `LIVE`",
        line: 8,
        column: 9,
        help: "remove `label`",
    },
    Case {
        name: "iso: network_data naming a missing link",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.iso.config_drive.network_data]
links = [{ id = "eth0", type = "phy", ethernet_mac_address = "52:54:00:12:34:56" }]
networks = [{ id = "n0", type = "ipv4", link = "eth1", ip_address = "10.0.2.50", netmask = "255.255.255.0" }]
"#,
        kind: DiagnosticKind::Invalid,
        message: "network_data: names no link: `eth1` is not among `links`",
        line: 9,
        column: 48,
        help: "the links are `eth0`",
    },
    Case {
        name: "iso: network_data file that is not JSON",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.iso.config_drive]
network_data = "truncated_network_data.json"
"#,
        kind: DiagnosticKind::Invalid,
        message: "`truncated_network_data.json` is not valid JSON: EOF while parsing a value at line 7 column 0",
        line: 8,
        column: 16,
        help: "JSON object",
    },
    Case {
        name: "iso: unknown compression",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.iso]
compression = "bzip2"
"#,
        kind: DiagnosticKind::WrongType,
        message: "unknown value `bzip2` for `compression` in [targets.iso]",
        line: 8,
        column: 15,
        help: "did you mean `gzip`?",
    },
    Case {
        name: "ami: a size that is not whole GiB",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.ami]
size = "2500MiB"
"#,
        kind: DiagnosticKind::Invalid,
        message: "`size` `2500MiB` is not a whole number of GiB",
        line: 8,
        column: 8,
        help: "EBS volumes are sized in GiB; write \"3GiB\"",
    },
    Case {
        name: "ami: a size too small for the system",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.ami]
size = "1GiB"
"#,
        kind: DiagnosticKind::Invalid,
        message: "size `1GiB` is smaller than the content: at least 2 GiB (1 GiB for a Debian system with kernel, GRUB and cloud-init, plus 0 B of [[files]] and 131 MiB for the ESP, the BIOS boot partition and the GPT)",
        line: 8,
        column: 8,
        help: "use at least \"2GiB\"",
    },
    Case {
        name: "ami: a misspelt key",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.ami]
default_usr = "ec2-user"
"#,
        kind: DiagnosticKind::UnknownKey,
        message: "unknown key `default_usr` in [targets.ami]",
        line: 8,
        column: 1,
        help: "did you mean `default_user`?",
    },
    Case {
        name: "ami: an invalid default user",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.ami]
default_user = "Admin"
"#,
        kind: DiagnosticKind::Invalid,
        message: "invalid user name `Admin`: it starts with 'A'",
        line: 8,
        column: 16,
        help: "",
    },
    Case {
        name: "ami: a root password",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[root]
password_hash = "$6$salt$hash"
[targets.ami]
"#,
        kind: DiagnosticKind::Invalid,
        message: "[targets.ami] bakes no password into the image, and this sets one",
        line: 8,
        column: 17,
        help: "EC2 key pair",
    },
    Case {
        name: "tar: a misspelt key",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.tar]
compresion = "gzip"
"#,
        kind: DiagnosticKind::UnknownKey,
        message: "unknown key `compresion` in [targets.tar]",
        line: 8,
        column: 1,
        help: "did you mean `compression`?",
    },
    Case {
        name: "tar: an unknown compressor",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.tar]
compression = "zstandard"
"#,
        kind: DiagnosticKind::WrongType,
        message: "unknown value `zstandard` for `compression` in [targets.tar]",
        line: 8,
        column: 15,
        help: "zstd",
    },
    Case {
        name: "tar: a level the compressor does not have",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.tar]
compression = "gzip"
level = 12
"#,
        kind: DiagnosticKind::Invalid,
        message: "gzip has no level 12: it takes 1 to 9",
        line: 9,
        column: 9,
        help: "use 6, the default",
    },
    Case {
        name: "tar: a level without compression",
        spec: r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.tar]
compression = "none"
level = 3
"#,
        kind: DiagnosticKind::Invalid,
        message: "`level` is set but `compression` is \"none\"",
        line: 9,
        column: 9,
        help: "remove `level`",
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
fn disk_defaults_and_sizes() {
    let spec = r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.disk]
"#;
    let loaded = parse(spec).unwrap();
    assert_eq!(loaded.spec.targets.defined(), vec!["disk"]);
    let t = loaded.spec.targets.disk.unwrap();
    assert_eq!(t.firmware(), vec![Firmware::Bios, Firmware::Uefi]);
    assert_eq!(t.format, DiskFormat::Qcow2);
    assert_eq!(t.filesystem, kiln_spec::Filesystem::Ext4);
    assert_eq!(t.esp_size(), 128 * MIB);
    assert_eq!(t.console(), "ttyS0,115200n8");
    assert_eq!(t.disk_size(), None);
    // Auto: content plus 25% plus 256 MiB for the root, plus the ESP and 3 MiB of layout.
    assert_eq!(t.resolved_root_size(1024 * MIB), (1024 + 256 + 256) * MIB);
    assert_eq!(t.resolved_disk_size(1024 * MIB), (1024 + 256 + 256 + 128 + 3) * MIB);

    let fixed = DiskTarget {
        size: Some("8GiB".into()),
        esp_size: Some("256MiB".into()),
        firmware: Some(vec![Firmware::Uefi, Firmware::Bios, Firmware::Uefi]),
        ..t.clone()
    };
    assert_eq!(fixed.firmware(), vec![Firmware::Bios, Firmware::Uefi]);
    assert_eq!(fixed.resolved_disk_size(123), 8 * GIB);
    assert_eq!(fixed.resolved_root_size(123), 8 * GIB - (256 + 3) * MIB);
    let headroom = DiskTarget {
        headroom: Some("10%".into()),
        ..t
    };
    assert_eq!(headroom.resolved_root_size(1000 * MIB), 1100 * MIB);
}

#[test]
fn tar_defaults_and_options() {
    let base = r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
"#;
    let loaded = parse(&format!("{base}[targets.tar]\n")).unwrap();
    assert_eq!(loaded.spec.targets.defined(), vec!["tar"]);
    let t = loaded.spec.targets.tar.unwrap();
    assert_eq!((t.compression, t.level()), (kiln_spec::TarCompression::Zstd, Some(3)));
    assert_eq!(t.compression.extension(), "tar.zst");
    let loaded = parse(&format!("{base}[targets.tar]\ncompression = \"gzip\"\nlevel = 9\n")).unwrap();
    let t = loaded.spec.targets.tar.unwrap();
    assert_eq!((t.compression.extension(), t.level()), ("tar.gz", Some(9)));
    let loaded = parse(&format!("{base}[targets.tar]\ncompression = \"none\"\n")).unwrap();
    assert_eq!(loaded.spec.targets.tar.unwrap().level(), None);
    // Absent, the section leaves the serialised spec (and its hash) as it was.
    let disk = parse(&format!("{base}[targets.disk]\n")).unwrap();
    assert!(disk.spec.section_json("targets").get("tar").is_none());
}

#[test]
fn ami_defaults_and_options() {
    let base = r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
"#;
    let loaded = parse(&format!("{base}[targets.ami]\n")).unwrap();
    assert_eq!(loaded.spec.targets.defined(), vec!["ami"]);
    let t = loaded.spec.targets.ami.unwrap();
    assert_eq!(t.disk_size(), 2 * GIB);
    assert_eq!(t.filesystem, kiln_spec::Filesystem::Ext4);
    assert_eq!(t.default_user(&loaded.spec.cloud_init), "admin");
    // The cloud-init default user's name, unless the target names its own.
    let spec = format!("{base}[cloud_init]\ndefault_user = {{ name = \"debian\" }}\n[targets.ami]\nsize = \"8G\"\nfilesystem = \"xfs\"\n");
    let loaded = parse(&spec).unwrap();
    let t = loaded.spec.targets.ami.clone().unwrap();
    assert_eq!((t.disk_size(), t.filesystem), (8 * GIB, kiln_spec::Filesystem::Xfs));
    assert_eq!(t.default_user(&loaded.spec.cloud_init), "debian");
    let loaded = parse(&format!("{spec}default_user = \"ops\"\n")).unwrap();
    let t = loaded.spec.targets.ami.clone().unwrap();
    assert_eq!(t.default_user(&loaded.spec.cloud_init), "ops");
    // Absent, the section leaves the serialised spec (and its hash) as it was.
    let disk = parse(&format!("{base}[targets.disk]\n")).unwrap();
    assert_eq!(
        disk.spec.section_json("targets"),
        serde_json::json!({"ovh-byol": null, "disk": disk.spec.section_json("targets")["disk"]})
    );
}

/// Both targets in one spec, every disk option set: loads, and the model
/// keeps what was written.
#[test]
fn disk_with_every_option_loads() {
    let spec = r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[targets.ovh-byol]
[targets.disk]
firmware = ["uefi"]
format = "raw"
size = "4GiB"
filesystem = "ext4"
esp_size = "64MiB"
console = "hvc0"
compress = false
bootloader_id = "kiln"
"#;
    let loaded = match parse(spec) {
        Ok(l) => l,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(loaded.spec.targets.defined(), vec!["ovh-byol", "disk"]);
    let t = loaded.spec.targets.disk.clone().unwrap();
    assert_eq!(t.firmware(), vec![Firmware::Uefi]);
    assert_eq!(t.format, DiskFormat::Raw);
    assert_eq!(t.esp_size(), 64 * MIB);
    assert_eq!(t.console(), "hvc0");
    assert_eq!(t.bootloader_id.as_deref(), Some("kiln"));
    assert_eq!(t.disk_size(), Some(4 * GIB));
    assert_eq!(loaded.location("targets.disk.console"), Some((14, 11)));
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
    assert!(schema["$defs"]["Targets"]["properties"]["disk"].is_object());
    let firmware: Vec<&serde_json::Value> = schema["$defs"]["Firmware"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["const"])
        .collect();
    assert_eq!(firmware, [&serde_json::json!("bios"), &serde_json::json!("uefi")]);
    assert_eq!(
        schema["$defs"]["DiskTarget"]["properties"]["firmware"]["default"],
        serde_json::json!(["bios", "uefi"])
    );
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

/// Both definitions of a duplicate key are located, and both locations
/// are in the rendered message.
#[test]
fn duplicates_point_at_both_definitions() {
    let spec = CASES.iter().find(|c| c.name == "duplicate key").unwrap().spec;
    let err = parse(spec).unwrap_err();
    let [d] = err.diagnostics() else { panic!("{err}") };
    let related = d.related.as_ref().expect("the first definition");
    assert_eq!((related.line, related.column), (6, 1));
    assert_eq!(related.label, "first defined here");
    let rendered = err.to_string();
    assert!(rendered.contains("--> spec.toml:7:1"), "{rendered}");
    assert!(rendered.contains("::: spec.toml:6:1"), "{rendered}");
    assert!(
        rendered.contains("6 | release = \"bookworm\"\n  | ------- first defined here"),
        "{rendered}"
    );

    // In an array of tables, in an inline table, and a table header.
    for (spec, first) in [
        (
            "[[users]]\nname = \"a\"\n[[users]]\nname = \"b\"\nname = \"c\"\n",
            (4, 1),
        ),
        ("[packages]\ninstall = []\n[image]\nname = { a = 1, a = 2 }\n", (4, 10)),
        ("[image]\nname = \"t\"\n[image]\n", (1, 2)),
    ] {
        let err = parse(spec).unwrap_err();
        let d = err
            .diagnostics()
            .iter()
            .find(|d| d.kind == DiagnosticKind::Duplicate)
            .unwrap_or_else(|| panic!("{err}"));
        let related = d.related.as_ref().unwrap();
        assert_eq!((related.line, related.column), first, "{err}");
    }
}

/// A spec that is not UTF-8 is located at its first bad byte.
#[test]
fn non_utf8_spec_points_at_the_first_bad_byte() {
    let err = load(&fixtures().join("broken/001-latin1.toml")).unwrap_err();
    let [d] = err.diagnostics() else { panic!("{err}") };
    assert_eq!(d.kind, DiagnosticKind::Encoding);
    assert_eq!((d.line, d.column), (4, 6));
    assert!(d.message.contains("byte 0xE9"), "{}", d.message);
    assert!(d.help.as_deref().unwrap_or("").contains("UTF-8"));
    let rendered = err.to_string();
    assert!(rendered.contains("001-latin1.toml:4:6"), "{rendered}");
    assert!(rendered.contains("4 | # Caf\u{FFFD} image\n  |      ^"), "{rendered}");
}

/// Structural problems (unknown keys, wrong types) and semantic ones are
/// reported in one run; a table whose key was dropped is not blamed for
/// lacking it.
#[test]
fn structural_and_semantic_problems_together() {
    let spec = r#"hostname = "foo_bar"
[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[packages]
instal = ["vim"]
[[run]]
scrpit = "echo hi"
[targets.disk]
compress = "yes"
firmware = ["bios", "efi"]
size = "1MiB"
"#;
    let err = parse(spec).unwrap_err();
    let got: Vec<(usize, DiagnosticKind)> = err.diagnostics().iter().map(|d| (d.line, d.kind)).collect();
    assert_eq!(
        got,
        vec![
            (1, DiagnosticKind::Invalid),
            (9, DiagnosticKind::UnknownKey),
            (11, DiagnosticKind::UnknownKey),
            (13, DiagnosticKind::WrongType),
            (14, DiagnosticKind::WrongType),
            (15, DiagnosticKind::Invalid),
        ],
        "{err}"
    );
    assert!(err.to_string().ends_with("error: spec.toml has 6 problems"), "{err}");

    // A required key with a wrong value does not stop the decoding; a
    // misspelt required key does, as its table then lacks it, but what
    // was found before is still reported.
    let spec = "[image]\nnme = \"t\"\nversion = \"1\"\n[base]\ndistro = \"debain\"\nrelease = 12\n[targets.ovh-byol]\n";
    let err = parse(spec).unwrap_err();
    let got: Vec<usize> = err.diagnostics().iter().map(|d| d.line).collect();
    assert_eq!(got, vec![2, 5, 6], "{err}");

    // A misspelt table is the missing one; a table missing for no such
    // reason is reported.
    let spec = "[imgae]\nname = \"t\"\n[base]\ndistro = \"debian\"\nrelease = \"bookworm\"\n[targets.ovh-byol]\n";
    let err = parse(spec).unwrap_err();
    let got: Vec<&str> = err.diagnostics().iter().map(|d| d.message.as_str()).collect();
    assert_eq!(got, ["unknown key `imgae` at the top level"], "{err}");
    let spec = "[base]\ndistro = \"debian\"\nrelease = \"bookworm\"\n[packages]\ninstal = []\n[targets.ovh-byol]\n";
    let err = parse(spec).unwrap_err();
    let got: Vec<&str> = err.diagnostics().iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        got,
        ["missing table [image]", "unknown key `instal` in [packages]"],
        "{err}"
    );
}

/// Names missing from the catalog are located in the spec; parts of the
/// catalog that are `None` are not checked.
#[test]
fn names_missing_from_the_catalog() {
    let spec = r#"timezone = "Europe/Pariss"
[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[packages]
install = ["curll", "vim=2:9.0", "mail-transport-agent"]
[kernel]
package = "linux-image-amd64"
[targets.ovh-byol]
"#;
    let loaded = parse(spec).unwrap();
    let names = |list: &[&str], source: &str| Some(kiln_spec::Names::new(list.iter().map(|s| (*s).to_owned()), source));
    let catalog = kiln_spec::Catalog {
        release: Some(kiln_spec::Release {
            exists: true,
            looked_at: "x".into(),
            known: vec![],
        }),
        packages: names(
            &["curl", "vim", "mail-transport-agent", "linux-image-amd64"],
            "bookworm (main) at http://deb.example/debian",
        ),
        timezones: names(&["Europe/Paris", "UTC"], "the tz database"),
        locales: None,
    };
    let err = loaded.check_names(&catalog).unwrap_err();
    let got: Vec<(DiagnosticKind, usize, usize, &str)> = err
        .diagnostics()
        .iter()
        .map(|d| (d.kind, d.line, d.column, d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                DiagnosticKind::NotFound,
                1,
                12,
                "time zone `Europe/Pariss` is not in the tz database"
            ),
            (
                DiagnosticKind::NotFound,
                9,
                12,
                "package `curll` is not in bookworm (main) at http://deb.example/debian"
            ),
        ]
    );
    assert!(err.to_string().contains("= help: did you mean `curl`?"), "{err}");

    let missing_release = kiln_spec::Catalog {
        release: Some(kiln_spec::Release {
            exists: false,
            looked_at: "http://deb.example/debian/dists/bookworm/Release".into(),
            known: vec!["bookworm".into()],
        }),
        ..Default::default()
    };
    let err = loaded.check_names(&missing_release).unwrap_err();
    let [d] = err.diagnostics() else { panic!("{err}") };
    assert_eq!((d.line, d.column), (7, 11));
    assert!(loaded.check_names(&kiln_spec::Catalog::default()).is_ok());
}

/// The metal3 example: a declared layout and the host profile load as
/// written, with the roles' defaults filled in.
#[test]
fn metal3_example_loads() {
    use kiln_spec::{PartitionFilesystem as Fs, PartitionRole as Role};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/debian-12-metal3.toml");
    let loaded = match load(&path) {
        Ok(l) => l,
        Err(e) => panic!("{e}"),
    };
    let spec = &loaded.spec;
    assert_eq!(spec.kernel.cmdline, ["hugepages=64"]);
    assert_eq!(spec.kernel.sysctl["vm.swappiness"].to_string(), "10");
    assert_eq!(spec.limits[0].value.to_string(), "unlimited");
    let t = spec.targets.disk.as_ref().unwrap();
    let got: Vec<(Role, Option<Fs>, Option<u64>)> = t
        .partitions
        .iter()
        .map(|p| (p.role(), p.filesystem(), p.fixed_size()))
        .collect();
    assert_eq!(
        got,
        [
            (Role::BiosBoot, None, Some(MIB)),
            (Role::Esp, Some(Fs::Vfat), Some(512 * MIB)),
            (Role::Boot, Some(Fs::Ext4), Some(GIB)),
            (Role::Mount("/var/log".into()), Some(Fs::Xfs), Some(GIB)),
            (Role::Root, Some(Fs::Ext4), None),
        ]
    );
    // Without host-profile keys or partitions, the serialised spec (and so
    // every hash of the existing examples) has no trace of them.
    let plain = parse(
        "[image]\nname = \"t\"\nversion = \"1\"\n[base]\ndistro = \"debian\"\nrelease = \"bookworm\"\n[targets.disk]\n",
    )
    .unwrap();
    let json = serde_json::to_string(&plain.spec).unwrap();
    for key in ["limits", "modules", "sysctl", "partitions"] {
        assert!(!json.contains(key), "{key} in {json}");
    }
}

/// The host profile's values each become a line of a configuration file:
/// what would break the line, or that the tool would not read, is reported
/// at its place, with an ignored `headroom` of a layout without a rest.
#[test]
fn host_profile_problems() {
    let spec = r#"[image]
name = "t"
version = "1"
[base]
distro = "debian"
release = "bookworm"
[kernel]
modules = ["vfio pci"]
sysctl = { "vm.swappiness" = 10, "bad name" = 1 }
[[limits]]
domain = "*"
type = "sft"
item = "nofiles"
value = "lots"
[targets.disk]
headroom = "1GiB"
[[targets.disk.partitions]]
role = "bios_boot"
size = "1MiB"
[[targets.disk.partitions]]
role = "esp"
size = "512MiB"
[[targets.disk.partitions]]
role = "root"
size = "4GiB"
"#;
    let err = parse(spec).unwrap_err();
    let got: Vec<(usize, usize, &str)> = err
        .diagnostics()
        .iter()
        .map(|d| (d.line, d.column, d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (8, 12, "invalid kernel module name `vfio pci`"),
            (9, 47, "invalid sysctl name `bad name`"),
            (12, 8, "invalid limit type `sft`"),
            (13, 8, "unknown limit item `nofiles`"),
            (14, 9, "invalid limit value `lots`"),
            (
                16,
                12,
                "`headroom` applies to the partition that takes the rest, and none does"
            ),
        ],
        "{err}"
    );
    // A value of the wrong type says what is expected.
    let err = parse(&spec.replace("= 10,", "= true,")).unwrap_err();
    assert!(
        err.to_string()
            .contains("expected a whole number or a string, found boolean `true`"),
        "{err}"
    );
    let fixed = spec
        .replace("vfio pci", "vfio_pci")
        .replace("\"bad name\"", "\"net.core.somaxconn\"")
        .replace("sft", "soft")
        .replace("nofiles", "nofile")
        .replace("\"lots\"", "4096")
        .replace("headroom = \"1GiB\"\n", "");
    if let Err(e) = parse(&fixed) {
        panic!("{e}");
    }
}

/// A fixed disk size and a declared layout: when the root takes the rest
/// it must hold a base system besides the other partitions; when every
/// size is fixed, the layout only has to fit.
#[test]
fn declared_layout_against_a_fixed_size() {
    let spec = |size: &str, root: &str| {
        format!(
            "[image]\nname = \"t\"\nversion = \"1\"\n[base]\ndistro = \"debian\"\nrelease = \"bookworm\"\n\
             [targets.disk]\nfirmware = [\"uefi\"]\nsize = \"{size}\"\n\
             [[targets.disk.partitions]]\nrole = \"esp\"\nsize = \"512MiB\"\n\
             [[targets.disk.partitions]]\nrole = \"/var\"\nsize = \"1GiB\"\n\
             [[targets.disk.partitions]]\nrole = \"root\"\n{root}"
        )
    };
    // 512 MiB + 1 GiB + 2 MiB of GPT leave 510 MiB for the root.
    let err = parse(&spec("2GiB", "")).unwrap_err();
    let [d] = err.diagnostics() else { panic!("{err}") };
    assert!(
        d.message.contains("and 1.5 GiB for the other partitions and the GPT"),
        "{err}"
    );
    assert_eq!(d.help.as_deref(), Some("use \"auto\", or at least \"2562MiB\""));
    assert!(parse(&spec("2562MiB", "")).is_ok());
    // Every size fixed: exactly the partitions and the GPT is enough.
    if let Err(e) = parse(&spec("3586MiB", "size = \"2GiB\"\n")) {
        panic!("{e}");
    }
    let err = parse(&spec("3585MiB", "size = \"2GiB\"\n")).unwrap_err();
    assert!(
        err.to_string().contains("the partitions do not fit in size `3585MiB`"),
        "{err}"
    );
}

/// The airship example's disk is the metal3 host image: the slow tests boot
/// it as such, so its layout, host profile, packages and base must stay
/// those of examples/debian-12-metal3.toml. Its ISO is a config drive with
/// a static address.
#[test]
fn airship_example_is_the_metal3_disk_and_a_config_drive_iso() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let load_example = |name: &str| match load(&examples.join(name)) {
        Ok(l) => l.spec,
        Err(e) => panic!("{e}"),
    };
    let metal3 = load_example("debian-12-metal3.toml");
    let airship = load_example("debian-12-airship.toml");
    assert_eq!(airship.targets.disk, metal3.targets.disk);
    assert_eq!(airship.kernel, metal3.kernel);
    assert_eq!(airship.limits, metal3.limits);
    assert_eq!(airship.packages, metal3.packages);
    assert_eq!(airship.cloud_init, metal3.cloud_init);
    assert_eq!(airship.base, metal3.base);
    let iso = airship.targets.iso.as_ref().expect("the airship example has an ISO");
    assert_eq!(iso.label(), "config-2");
    let drive = iso.config_drive.as_ref().unwrap();
    assert_eq!(drive.hostname.as_deref(), Some("airship-ephemeral"));
    assert!(matches!(&drive.network_data, Some(kiln_spec::NetworkData::File(f)) if f == "airship/network_data.json"));
}

/// The corpus of broken specs in `tests/fixtures/broken`, one file each
/// (with the inline [`CASES`] above, well over a hundred): every one is
/// rejected without a panic, every diagnostic has a hint and, unless the
/// file's first line says "(no place)", a line and column; what the user
/// sees is a snapshot per file (`spec__broken-NNN-name.snap`).
#[test]
fn broken_spec_corpus() {
    let dir = fixtures().join("broken");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() + CASES.len() >= 200, "{} files", files.len());
    let shown = dir.canonicalize().unwrap().display().to_string();
    let mut problems = Vec::new();
    for file in &files {
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        let first_line = std::fs::read(file)
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .unwrap_or_default();
        let placeless = first_line.contains("(no place)");
        let err = match std::panic::catch_unwind(|| load(file)) {
            Err(_) => {
                problems.push(format!("{stem}: panicked"));
                continue;
            }
            Ok(Ok(_)) => {
                problems.push(format!("{stem}: loaded, but is broken"));
                continue;
            }
            Ok(Err(e)) => e,
        };
        if err.diagnostics().is_empty() {
            problems.push(format!("{stem}: no diagnostics: {err}"));
        }
        for d in err.diagnostics() {
            if d.message.trim().is_empty() {
                problems.push(format!("{stem}: a diagnostic without a message"));
            }
            if d.help.as_deref().is_none_or(|h| h.trim().is_empty()) {
                problems.push(format!("{stem}: no hint for `{}`", d.message));
            }
            if d.line == 0 && !placeless {
                problems.push(format!("{stem}: no location for `{}`", d.message));
            }
        }
        let rendered = err
            .to_string()
            .replace(&shown, "[broken]")
            .replace(&dir.display().to_string(), "[broken]");
        insta::assert_snapshot!(format!("broken-{stem}"), rendered);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The inline cases have hints too (the corpus test checks the files).
#[test]
fn every_inline_case_has_a_hint() {
    for case in CASES {
        let err = parse(case.spec).unwrap_err();
        for d in err.diagnostics() {
            assert!(
                d.help.as_deref().is_some_and(|h| !h.trim().is_empty()),
                "{}: no hint for `{}`",
                case.name,
                d.message
            );
        }
    }
}
