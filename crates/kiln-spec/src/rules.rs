//! The shape rules for single values in a spec (names, paths in the image,
//! modes, keys, hashes, URLs, locales), as pure functions of the string. They
//! check shape only: nothing here reads the host (its users, its tz database),
//! because the image, not the host, is what the values describe.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

/// Why a value is wrong, and what to write instead when that is knowable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) why: String,
    pub(crate) help: Option<String>,
}

impl Problem {
    pub(crate) fn new(why: impl Into<String>) -> Self {
        Problem {
            why: why.into(),
            help: None,
        }
    }

    pub(crate) fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

type Rule = Result<(), Problem>;

fn first_bad_char(s: &str, ok: impl Fn(char) -> bool) -> Option<char> {
    s.chars().find(|&c| !ok(c))
}

/// Image names and versions end up in file names and in shell command lines.
pub(crate) fn image_name(s: &str) -> Rule {
    if s.is_empty() {
        return Err(Problem::new("it is empty"));
    }
    let help = "use letters, digits, `.`, `_`, `+` and `-`, starting with a letter or digit";
    if s.starts_with('.') || s.starts_with('-') {
        return Err(Problem::new(format!("it must not start with `{}`", &s[..1])).help(help));
    }
    match first_bad_char(s, |c| c.is_ascii_alphanumeric() || "._+-".contains(c)) {
        Some(c) => Err(Problem::new(format!("{c:?} is not allowed")).help(help)),
        None => Ok(()),
    }
}

/// A user or group name as Debian's `useradd` accepts it by default.
pub(crate) fn account_name(s: &str) -> Rule {
    let help = "use lower-case letters, digits, `_` and `-`, starting with a letter or `_`";
    let Some(first) = s.chars().next() else {
        return Err(Problem::new("it is empty").help(help));
    };
    if s.len() > 32 {
        return Err(Problem::new("it is longer than 32 characters").help("shorten it to 32 characters at most"));
    }
    if !(first.is_ascii_lowercase() || first == '_') {
        return Err(Problem::new(format!("it starts with {first:?}")).help(help));
    }
    match first_bad_char(s, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
    }) {
        Some(c) => Err(Problem::new(format!("{c:?} is not allowed")).help(help)),
        None => Ok(()),
    }
}

/// `user`, `user:group`, or numeric ids in either place.
pub(crate) fn owner(s: &str) -> Rule {
    let (user, group) = s.split_once(':').map_or((s, None), |(u, g)| (u, Some(g)));
    let part = |name: &str| {
        if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
            return name
                .parse::<u32>()
                .map(drop)
                .map_err(|_| Problem::new(format!("id {name} is too large")));
        }
        account_name(name)
    };
    part(user).map_err(|p| Problem {
        why: format!("user: {}", p.why),
        ..p
    })?;
    if let Some(group) = group {
        part(group).map_err(|p| Problem {
            why: format!("group: {}", p.why),
            ..p
        })?;
    }
    Ok(())
}

/// Parses a file mode written as three or four octal digits ("644", "0644",
/// "1777"), the way `chmod` takes it. A string rather than a TOML integer
/// because TOML has no octal literal that people would read as a mode.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    if !(3..=4).contains(&s.len()) || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(format!("`{s}` is not 3 or 4 octal digits such as \"0644\""));
    }
    u32::from_str_radix(s, 8).map_err(|e| e.to_string())
}

/// An absolute, normalised path inside the image, other than `/`.
pub(crate) fn image_path(s: &str) -> Rule {
    if s.is_empty() {
        return Err(Problem::new("it is empty").help("write an absolute path in the image, e.g. \"/etc/motd\""));
    }
    if s.contains('\0') {
        return Err(Problem::new("it contains a NUL byte"));
    }
    let parts: Vec<&str> = s.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    if parts.contains(&"..") {
        return Err(Problem::new("it contains `..`").help("write the path it means, without `..`"));
    }
    let normal = format!("/{}", parts.join("/"));
    if !s.starts_with('/') {
        return Err(Problem::new("it is not absolute").help(format!("did you mean `{normal}`?")));
    }
    if parts.is_empty() {
        return Err(Problem::new("it is the root directory").help("name a path below `/`"));
    }
    if s != normal {
        return Err(Problem::new("it is not normalised").help(format!("write `{normal}`")));
    }
    if let Some(fs) = ["proc", "sys", "dev"].iter().find(|d| parts[0] == **d) {
        return Err(Problem::new(format!(
            "/{fs} is a virtual filesystem at run time: what the build writes there is hidden and lost"
        ))
        .help("write the file elsewhere (a sysctl or udev rule under /etc, for instance)"));
    }
    Ok(())
}

const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// An OpenSSH public key line, `TYPE BASE64 [COMMENT]`. The blob is decoded
/// because it names its own type: a truncated paste or a key pasted under
/// the wrong type is caught here rather than at the first failed login.
pub(crate) fn ssh_key(s: &str) -> Rule {
    let help = "paste the whole line of the .pub file, e.g. `ssh-ed25519 AAAAC3Nza… user@host`";
    let mut fields = s.split_whitespace();
    let Some(kind) = fields.next() else {
        return Err(Problem::new("it is empty").help(help));
    };
    if !SSH_KEY_TYPES.contains(&kind) {
        let shown: String = kind.chars().take(24).collect();
        return Err(Problem::new(format!("`{shown}` is not an SSH key type"))
            .help(format!("{help}; kiln accepts ed25519, RSA, ECDSA and FIDO (sk-) keys")));
    }
    let Some(blob) = fields.next() else {
        return Err(Problem::new("the base64 key data is missing").help(help));
    };
    let Ok(bytes) = BASE64.decode(blob) else {
        return Err(Problem::new("the key data is not valid base64 (truncated or edited?)").help(help));
    };
    let embedded = bytes
        .get(..4)
        .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
        .and_then(|n| bytes.get(4..4 + n));
    match embedded {
        Some(name) if name == kind.as_bytes() => Ok(()),
        Some(name) => Err(Problem::new(format!(
            "the key data is a `{}` key, not `{kind}`",
            String::from_utf8_lossy(name)
        ))
        .help(help)),
        None => Err(Problem::new("the key data is too short (truncated?)").help(help)),
    }
}

/// A crypt(3) hash such as `$y$j9T$…` or `$6$salt$…`: a plain password
/// here would be written into /etc/shadow and never match.
pub(crate) fn crypt_hash(s: &str) -> Rule {
    let help = "generate one with `mkpasswd --method=yescrypt` or `openssl passwd -6`";
    let mut fields = s.split('$');
    let shape_ok = fields.next() == Some("")
        && fields
            .next()
            .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()))
        && fields.next_back().is_some_and(|last| !last.is_empty());
    if !shape_ok {
        return Err(Problem::new("it does not look like a crypt(3) hash (`$id$salt$hash`)").help(help));
    }
    if let Some(c) = first_bad_char(s, |c| c.is_ascii_graphic() && c != ':') {
        return Err(Problem::new(format!("{c:?} cannot appear in a hash")).help(help));
    }
    Ok(())
}

/// RFC 1123 host name: dot-separated labels of letters, digits and `-`.
pub(crate) fn hostname(s: &str) -> Rule {
    if s.is_empty() {
        return Err(Problem::new("it is empty"));
    }
    if s.len() > 253 {
        return Err(Problem::new("it is longer than 253 characters"));
    }
    for label in s.split('.') {
        if label.is_empty() {
            return Err(Problem::new(
                "it has an empty label (`..`, or a leading or trailing `.`)",
            ));
        }
        if label.len() > 63 {
            return Err(Problem::new(format!("label `{label}` is longer than 63 characters")));
        }
        if let Some(c) = first_bad_char(label, |c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(Problem::new(format!("{c:?} is not allowed")).help("use letters, digits and `-`"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(Problem::new(format!("label `{label}` starts or ends with `-`")));
        }
    }
    Ok(())
}

/// `UTC`, or `Area/Location` as in the tz database ("Europe/Paris",
/// "America/Argentina/Buenos_Aires", "Etc/GMT+5").
pub(crate) fn timezone(s: &str) -> Rule {
    let help = "write `Area/City` as in the tz database, e.g. \"Europe/Paris\", or \"UTC\"";
    if s == "UTC" {
        return Ok(());
    }
    let parts: Vec<&str> = s.split('/').collect();
    let part_ok = |p: &&str| {
        p.starts_with(|c: char| c.is_ascii_uppercase())
            && p.chars().all(|c| c.is_ascii_alphanumeric() || "_+-".contains(c))
    };
    if !(2..=3).contains(&parts.len()) || !parts.iter().all(part_ok) {
        return Err(Problem::new("it is not a tz database name").help(help));
    }
    Ok(())
}

/// `language[_TERRITORY][.codeset][@modifier]`, or `C`/`POSIX` with an
/// optional codeset.
pub(crate) fn locale(s: &str) -> Rule {
    let help = "write e.g. \"en_US.UTF-8\" or \"C.UTF-8\"";
    let (main, modifier) = s.split_once('@').map_or((s, None), |(m, x)| (m, Some(x)));
    let (name, codeset) = main.split_once('.').map_or((main, None), |(n, c)| (n, Some(c)));
    let (lang, territory) = name.split_once('_').map_or((name, None), |(l, t)| (l, Some(t)));
    let lang_ok = matches!(lang, "C" | "POSIX")
        || ((2..=3).contains(&lang.len()) && lang.bytes().all(|b| b.is_ascii_lowercase()));
    let territory_ok = territory.is_none_or(|t| t.len() == 2 && t.bytes().all(|b| b.is_ascii_uppercase()));
    let codeset_ok = codeset.is_none_or(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    let modifier_ok = modifier.is_none_or(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_lowercase()));
    if lang_ok && territory_ok && codeset_ok && modifier_ok && !(lang == "C" && territory.is_some()) {
        Ok(())
    } else {
        Err(Problem::new("it is not a locale name").help(help))
    }
}

/// A snapshot of the archive: a snapshot.debian.org time stamp
/// (`YYYYMMDDThhmmssZ`) or an archive URL.
pub(crate) fn snapshot(s: &str) -> Rule {
    if s.contains("://") {
        return archive_url(s);
    }
    let b = s.as_bytes();
    let stamp = b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 8 | 15) || c.is_ascii_digit());
    if stamp {
        Ok(())
    } else {
        Err(Problem::new("it is neither a snapshot time stamp nor a URL")
            .help("write e.g. \"20260101T000000Z\" or \"https://snapshot.debian.org/archive/debian/20260101T000000Z\""))
    }
}

/// An archive URL apt can fetch from.
pub(crate) fn archive_url(s: &str) -> Rule {
    let help = "write e.g. \"http://deb.debian.org/debian\" or \"file:///srv/mirror\"";
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(Problem::new("it is not a URL").help(help));
    };
    if !matches!(scheme, "http" | "https" | "file") {
        return Err(Problem::new(format!("scheme `{scheme}` is not http, https or file")).help(help));
    }
    if let Some(c) = first_bad_char(s, |c| c.is_ascii_graphic()) {
        return Err(Problem::new(format!("{c:?} is not allowed in a URL")).help(help));
    }
    let ok = if scheme == "file" {
        rest.starts_with('/')
    } else {
        !rest.is_empty() && !rest.starts_with('/')
    };
    if !ok {
        let what = if scheme == "file" { "an absolute path" } else { "a host" };
        return Err(Problem::new(format!("it has no {what}")).help(help));
    }
    Ok(())
}

/// Apt silently ignores files in sources.list.d whose names have other
/// characters than these, so the source would vanish without an error.
pub(crate) fn apt_source_name(s: &str) -> Rule {
    if s.is_empty() {
        return Err(Problem::new("it is empty"));
    }
    if s.starts_with('.') {
        return Err(Problem::new("it starts with `.`"));
    }
    match first_bad_char(s, |c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        Some(c) => Err(Problem::new(format!("{c:?} is not allowed"))
            .help("use letters, digits, `.`, `_` and `-` (apt ignores other names)")),
        None => Ok(()),
    }
}

/// A pacman or dnf repository name (a section of pacman.conf, a dnf repo id).
pub(crate) fn repo_name(s: &str) -> Rule {
    if s.is_empty() {
        return Err(Problem::new("it is empty"));
    }
    if s.starts_with(['.', '-']) {
        return Err(Problem::new("it starts with `.` or `-`"));
    }
    match first_bad_char(s, |c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        Some(c) => Err(Problem::new(format!("{c:?} is not allowed")).help("use letters, digits, `.`, `_` and `-`")),
        None => Ok(()),
    }
}

/// A SHA-256 as 64 hexadecimal digits.
pub(crate) fn sha256_hex(s: &str) -> Rule {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(Problem::new("it is not 64 hexadecimal digits").help("write the tarball's `sha256sum`"))
    }
}

/// A base image's `checksum`: kiln verifies SHA-256, which every
/// distribution publishes for its cloud images.
pub(crate) fn sha256_checksum(s: &str) -> Rule {
    let help = "write \"sha256:\" and the image's `sha256sum`, e.g. \"sha256:5f3c…\" (64 hex digits)";
    match s.split_once(':') {
        Some(("sha256", hex)) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(()),
        Some(("sha256", _)) => Err(Problem::new("the SHA-256 is not 64 hexadecimal digits").help(help)),
        Some((kind, _)) => Err(Problem::new(format!("kiln verifies sha256, not `{kind}`")).help(
            "write the image's SHA-256 (distributions publish SHA256SUMS beside their images), or use `checksum_url`",
        )),
        None => Err(Problem::new("it does not start with \"sha256:\"").help(help)),
    }
}

/// A directory name under the ESP's `\EFI\`, as `grub-install --bootloader-id`.
pub(crate) fn bootloader_id(s: &str) -> Rule {
    if s.is_empty() {
        return Err(Problem::new("it is empty"));
    }
    match first_bad_char(s, |c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        Some(c) => Err(Problem::new(format!("{c:?} is not allowed")).help("use letters, digits, `_` and `-`")),
        None => Ok(()),
    }
}

/// A `console=` value as the kernel takes it: a device name (`ttyS0`,
/// `hvc0`, `ttyAMA0`) and optionally `,` and its options (`115200n8`). It is
/// written into the kernel command line, GRUB's configuration and a shell
/// script, so nothing else may appear in it.
/// An ISO 9660 volume id as blkid and cloud-init read it: 1 to 32
/// printable ASCII characters.
pub(crate) fn volume_label(s: &str) -> Rule {
    if s.is_empty() || s.len() > 32 {
        return Err(Problem::new("it must be 1 to 32 characters")
            .help("use 1 to 32 printable ASCII characters, e.g. \"KILN-LIVE\""));
    }
    if let Some(c) = first_bad_char(s, |c| c.is_ascii_graphic() || c == ' ') {
        return Err(Problem::new(format!("{c:?} is not allowed")).help("use printable ASCII, e.g. \"KILN-LIVE\""));
    }
    Ok(())
}

pub(crate) fn console(s: &str) -> Rule {
    let help = "write a device and options as for the kernel's console=, e.g. \"ttyS0,115200n8\" or \"hvc0\"";
    let (device, options) = s.split_once(',').unwrap_or((s, ""));
    if device.is_empty() {
        return Err(Problem::new("it names no device").help(help));
    }
    if let Some(rest) = device.strip_prefix("/dev/") {
        return Err(
            Problem::new("it starts with `/dev/`").help(format!("write the device name alone, e.g. \"{rest}\""))
        );
    }
    if !device.starts_with(|c: char| c.is_ascii_alphabetic()) || !device.ends_with(|c: char| c.is_ascii_digit()) {
        return Err(Problem::new(format!("`{device}` is not a console device name")).help(help));
    }
    let bad = first_bad_char(device, |c| c.is_ascii_alphanumeric())
        .or_else(|| first_bad_char(options, |c| c.is_ascii_alphanumeric()));
    match bad {
        Some(c) => Err(Problem::new(format!("{c:?} is not allowed")).help(help)),
        None if s.ends_with(',') => Err(Problem::new("it ends with `,`").help(help)),
        None => Ok(()),
    }
}

/// A package as apt takes it on its command line (`name`, `name=version`,
/// `name/suite`). A leading `-` would be read as an option.
pub(crate) fn package(s: &str) -> Rule {
    if s.is_empty() {
        return Err(Problem::new("it is empty").help("remove the empty string from the list"));
    }
    if s.starts_with('-') {
        return Err(Problem::new("it starts with `-`").help(format!(
            "write the package name alone (`{}`); to remove a package, list it under [packages] remove",
            s.trim_start_matches('-')
        )));
    }
    if s.chars().any(char::is_whitespace) {
        return Err(Problem::new("it contains white space").help("list each package as its own string"));
    }
    Ok(())
}

/// A systemd unit name; `ssh` means `ssh.service`, as for systemctl.
pub(crate) fn unit(s: &str) -> Rule {
    let help = "write the unit's name as systemctl takes it, e.g. \"ssh\" or \"apt-daily.timer\"";
    if s.is_empty() {
        return Err(Problem::new("it is empty").help(help));
    }
    match first_bad_char(s, |c| c.is_ascii_alphanumeric() || ":_.@-\\".contains(c)) {
        Some(c) => Err(Problem::new(format!("{c:?} is not allowed in a unit name")).help(help)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(rule: fn(&str) -> Rule, good: &[&str], bad: &[&str]) {
        for s in good {
            assert_eq!(rule(s), Ok(()), "{s:?} should pass");
        }
        for s in bad {
            assert!(rule(s).is_err(), "{s:?} should fail");
        }
    }

    #[test]
    fn names() {
        check(
            image_name,
            &["debian-12", "a.b_c+d", "1.0.0"],
            &["", ".hidden", "-x", "a b", "a/b", "é"],
        );
        check(
            account_name,
            &["ops", "_apt", "a-b_c9"],
            &["", "Ops", "9ops", "a.b", "root user", &"a".repeat(33)],
        );
        check(
            owner,
            &["root", "root:root", "ops:adm", "1000:1000", "ops:0"],
            &["", ":", "ops:", "a:b:c", "Ops", "99999999999"],
        );
        check(
            apt_source_name,
            &["backports", "my.repo_1-x"],
            &["", ".x", "a b", "a/b", "a+b"],
        );
        check(bootloader_id, &["debian", "my_os-2"], &["", "a.b", "a b"]);
        check(
            console,
            &["ttyS0", "ttyS0,115200n8", "hvc0", "ttyAMA0,115200", "tty1"],
            &[
                "",
                ",115200",
                "/dev/ttyS0",
                "ttyS",
                "ttyS0,",
                "ttyS0,115200 n8",
                "ttyS0,1,2",
                "0ttyS",
            ],
        );
        check(
            package,
            &["vim", "linux-image-amd64", "vim=2:9.0", "vim/bookworm-backports"],
            &["", "-y", "vim curl"],
        );
        check(unit, &["ssh", "ssh.service", "getty@tty1.service"], &["", "a/b", "a b"]);
    }

    #[test]
    fn modes() {
        let cases: &[(&str, Option<u32>)] = &[
            ("0644", Some(0o644)),
            ("644", Some(0o644)),
            ("1777", Some(0o1777)),
            ("7777", Some(0o7777)),
            ("0o644", None),
            ("0888", None),
            ("64", None),
            ("07777", None),
            ("", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_mode(s).ok(), *want, "{s:?}");
        }
    }

    #[test]
    fn image_paths() {
        // Ok, or the expected why and help.
        type Want = Result<(), (&'static str, Option<&'static str>)>;
        let cases: &[(&str, Want)] = &[
            ("/etc/motd", Ok(())),
            ("/etc/x", Ok(())),
            (
                "../etc/x",
                Err(("it contains `..`", Some("write the path it means, without `..`"))),
            ),
            (
                "/etc/../x",
                Err(("it contains `..`", Some("write the path it means, without `..`"))),
            ),
            (
                "etc/motd",
                Err(("it is not absolute", Some("did you mean `/etc/motd`?"))),
            ),
            ("/", Err(("it is the root directory", Some("name a path below `/`")))),
            ("//", Err(("it is the root directory", Some("name a path below `/`")))),
            ("/etc//motd/", Err(("it is not normalised", Some("write `/etc/motd`")))),
            ("/etc/./motd", Err(("it is not normalised", Some("write `/etc/motd`")))),
            (
                "",
                Err((
                    "it is empty",
                    Some("write an absolute path in the image, e.g. \"/etc/motd\""),
                )),
            ),
            (
                "/proc/cmdline",
                Err((
                    "/proc is a virtual filesystem at run time: what the build writes there is hidden and lost",
                    Some("write the file elsewhere (a sysctl or udev rule under /etc, for instance)"),
                )),
            ),
            ("/devices/x", Ok(())),
        ];
        for (s, want) in cases {
            let got = image_path(s).map_err(|p| (p.why, p.help));
            let want = want.map_err(|(w, h)| (w.to_owned(), h.map(str::to_owned)));
            assert_eq!(got, want, "{s:?}");
        }
    }

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f ops@example";

    #[test]
    fn ssh_keys() {
        let rsa_type_ed25519_blob = ED25519.replacen("ssh-ed25519", "ssh-rsa", 1);
        let cases: &[(&str, Option<&str>)] = &[
            (ED25519, None),
            (
                "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAABAD///8= a comment with spaces",
                None,
            ),
            (
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f",
                None,
            ),
            (
                "ssh-ed25519 AAAA...",
                Some("the key data is not valid base64 (truncated or edited?)"),
            ),
            (
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4",
                Some("the key data is not valid base64 (truncated or edited?)"),
            ),
            ("ssh-ed25519 AAAAC3Nz", Some("the key data is too short (truncated?)")),
            (
                &rsa_type_ed25519_blob,
                Some("the key data is a `ssh-ed25519` key, not `ssh-rsa`"),
            ),
            ("ssh-dss AAAAB3NzaC1kc3M=", Some("`ssh-dss` is not an SSH key type")),
            ("ssh-ed25519", Some("the base64 key data is missing")),
            ("", Some("it is empty")),
        ];
        for (s, want) in cases {
            assert_eq!(ssh_key(s).err().map(|p| p.why), want.map(str::to_owned), "{s:?}");
        }
    }

    #[test]
    fn hashes() {
        check(
            crypt_hash,
            &[
                "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o7Upc5hfZ4u7Wg8AEd0/3ARNtN2jjiNh/",
                "$6$salt$abc",
                "$6$rounds=5000$salt$abc",
                "$2b$12$abc",
            ],
            &[
                "",
                "hunter2",
                "$",
                "$6$",
                "$6$salt$",
                "$6$a b$c",
                "$6$a:b$c",
                "!$6$salt$abc",
            ],
        );
    }

    #[test]
    fn hosts_zones_locales_urls() {
        check(
            hostname,
            &["web-1", "a.example.com", "x"],
            &[
                "",
                "foo_bar",
                "-a",
                "a-",
                "a..b",
                &"a".repeat(64),
                &["a"; 130].join("."),
            ],
        );
        check(
            timezone,
            &[
                "UTC",
                "Etc/UTC",
                "Europe/Paris",
                "America/Argentina/Buenos_Aires",
                "Etc/GMT+5",
            ],
            &["", "utc", "Paris", "europe/paris", "Europe/Paris/X/Y", "Europe/"],
        );
        check(
            locale,
            &["en_US.UTF-8", "C.UTF-8", "C", "POSIX", "de_DE@euro", "fr_FR.utf8", "eo"],
            &["", "english", "en_us.UTF-8", "en_US.", "C_US", "en-US"],
        );
        check(
            archive_url,
            &["http://deb.debian.org/debian", "https://x/y", "file:///srv/mirror"],
            &[
                "",
                "deb.debian.org",
                "ftp://x",
                "http://",
                "http:///x",
                "file://relative",
                "http://a b",
            ],
        );
    }
}
