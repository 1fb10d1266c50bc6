//! Semantic validation of a decoded spec, before any build work starts:
//! every value that TOML and serde accept but that would fail (or silently
//! misbehave) later in the build. All problems are collected, each pointing
//! at its value. Reads the spec directory's files (existence, size), nothing
//! else.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Component, Path};

use crate::diagnostic::{Diagnostic, DiagnosticKind, SourceFile};
use crate::model::{
    AmiTarget, ArchBase, ArchBootstrap, Base, BaseImage, DiskFormat, DiskPartition, DiskTarget, Distro, Filesystem,
    Firmware, IsoTarget, NetworkData, OvhByolTarget, PartitionFilesystem, PartitionRole, PartitionSize, RhelBase, Spec,
    TarTarget, Targets, UsbInstallerTarget,
};

/// The major releases of the RHEL family that kiln knows how to build.
pub const RHEL_RELEASES: &[&str] = &["8", "9"];
use crate::netdata;
use crate::rules::{self, Problem};
use crate::size::{format_size, Headroom, Size, Written, GIB, MIB, TIB};
use crate::spans::{table_name, SpanIndex};

/// What a Debian image with kernel, GRUB and cloud-init takes before any
/// user content; a fixed size below this cannot hold the image.
pub const MIN_BASE_CONTENT: u64 = GIB;

/// Larger images are typos: OVH's installer copies the image's files onto
/// the partitions it creates, so the image only ever needs room for them
/// (and an MBR partition table cannot describe more).
pub const MAX_PARTITION_SIZE: u64 = 2 * TIB;

/// Larger disk images are typos: clouds grow the root partition to the
/// real disk at first boot, so an image only needs room for its content.
pub const MAX_DISK_SIZE: u64 = 16 * TIB;

/// The smallest ESP: the UEFI specification names FAT32 for fixed disks
/// and some firmware insists on it; FAT32 needs 65,525 clusters, and kiln's
/// FAT writer makes FAT32 from 36 MiB up.
pub const MIN_ESP_SIZE: u64 = 36 * MIB;

/// Larger ESPs are typos: GRUB takes a few MiB of it.
pub const MAX_ESP_SIZE: u64 = 4 * GIB;

/// mkfs.xfs refuses smaller filesystems.
pub const MIN_XFS_SIZE: u64 = 300 * MIB;

/// The semantic problems of `spec`. `dropped` names the keys that decoding
/// already reported and left out: problems of the tables that held them
/// follow from that (a `[[run]]` whose only key was misspelt "has neither
/// `script` nor `file`") and are not reported again.
pub(crate) fn validate(
    spec: &Spec,
    dir: &Path,
    spans: &SpanIndex<'_>,
    file: &SourceFile<'_>,
    dropped: &[String],
) -> Vec<Diagnostic> {
    let mut v = Validator {
        spans,
        file,
        dir,
        dropped,
        diagnostics: Vec::new(),
    };
    v.image(spec);
    v.base(spec);
    v.packages(spec);
    let files_bytes = v.files(spec);
    v.directories(spec);
    v.run(spec);
    v.accounts(spec);
    v.system(spec);
    v.targets(spec, files_bytes);
    v.diagnostics
}

/// How [`Validator::size_and_headroom`] checks one target's `size`.
struct SizeRule<'a> {
    /// The target's table, e.g. `targets.disk`.
    at: &'a str,
    size: Option<&'a Written<Size>>,
    headroom: Option<&'a Written<Headroom>>,
    /// Bytes the target adds around the content, and what they are for.
    overhead: Option<(u64, &'a str)>,
    /// Whether a fixed size must hold a base system besides the overhead
    /// (not when a declared layout gives the root a fixed size of its own).
    content_min: bool,
    max: u64,
    max_help: &'a str,
}

struct Validator<'a, 'i> {
    spans: &'a SpanIndex<'i>,
    file: &'a SourceFile<'a>,
    dir: &'a Path,
    dropped: &'a [String],
    diagnostics: Vec<Diagnostic>,
}

impl Validator<'_, '_> {
    fn report(&mut self, path: &str, message: String, help: Option<String>) {
        // Also the keys given a placeholder value, and what lies under them.
        let encloses_dropped = self.dropped.iter().any(|d| {
            let related = |a: &str, b: &str| {
                a.strip_prefix(b)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
            };
            related(d, path) || related(path, d)
        });
        if encloses_dropped {
            return;
        }
        let span = self.spans.value_or_parent(path);
        // Every problem says what to do; the few rules without a specific
        // hint point at the reference.
        let help = help.or_else(|| {
            Some(format!(
                "correct `{path}`; `kiln schema` describes every key and its values"
            ))
        });
        self.diagnostics
            .push(self.file.diagnostic(DiagnosticKind::Invalid, span, message, help));
    }

    /// Reports `result` as "invalid WHAT `VALUE`: WHY".
    fn check(&mut self, path: &str, what: &str, value: &str, result: Result<(), Problem>) {
        if let Err(p) = result {
            self.report(path, format!("invalid {what} `{value}`: {}", p.why), p.help);
        }
    }

    fn line_of(&self, path: &str) -> String {
        let line = self.spans.value(path).map(|s| self.file.line(s.start));
        line.map_or_else(String::new, |l| format!(" (line {l})"))
    }

    fn image(&mut self, spec: &Spec) {
        self.check(
            "image.name",
            "image name",
            &spec.image.name,
            rules::image_name(&spec.image.name),
        );
        self.check(
            "image.version",
            "image version",
            &spec.image.version,
            rules::image_name(&spec.image.version),
        );
    }

    fn base(&mut self, spec: &Spec) {
        if let Some(image) = spec.base.image() {
            self.base_image(spec, image);
        }
        match &spec.base {
            Base::Debian(_) | Base::Ubuntu(_) => {}
            Base::Arch(arch) => return self.arch_base(arch),
            Base::Rhel(rhel) => return self.rhel_base(rhel),
        }
        let Some(base) = spec.base.apt() else { return };
        if spec.base.distro() == Distro::Ubuntu && base.mirror.is_none() && base.snapshot.is_none() {
            self.report(
                "base.distro",
                "distro \"ubuntu\" needs a `mirror`".into(),
                Some("the default mirror is the host's, which is Debian's; add e.g. `mirror = \"http://archive.ubuntu.com/ubuntu\"` to [base]".into()),
            );
        }
        if base.release.trim().is_empty() {
            self.report(
                "base.release",
                "`release` is empty".into(),
                Some("name the release, e.g. \"bookworm\"".into()),
            );
        }
        if let Some(mirror) = &base.mirror {
            self.check("base.mirror", "mirror", mirror, rules::archive_url(mirror));
        }
        if let Some(snapshot) = &base.snapshot {
            self.check("base.snapshot", "snapshot", snapshot, rules::snapshot(snapshot));
            if base.mirror.is_some() {
                self.report(
                    "base.snapshot",
                    "`snapshot` and `mirror` both name the archive".into(),
                    Some("keep one of them".into()),
                );
            }
        }
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, source) in base.sources.iter().enumerate() {
            let at = format!("base.sources[{i}]");
            self.check(
                &format!("{at}.name"),
                "apt source name",
                &source.name,
                rules::apt_source_name(&source.name),
            );
            if let Some(first) = names.insert(&source.name, i) {
                let help = format!(
                    "the first is {}{}",
                    table_name(&format!("base.sources[{first}]")),
                    self.line_of(&format!("base.sources[{first}].name"))
                );
                self.report(
                    &format!("{at}.name"),
                    format!("duplicate apt source `{}`", source.name),
                    Some(help),
                );
            }
            self.check(
                &format!("{at}.uri"),
                "apt source URI",
                &source.uri,
                rules::archive_url(&source.uri),
            );
            if source.suites.is_empty() {
                self.report(
                    &format!("{at}.suites"),
                    "`suites` is empty".into(),
                    Some("list at least one suite, e.g. [\"bookworm-backports\"]".into()),
                );
            }
            if let Some(key) = &source.key {
                self.source_file(&format!("{at}.key"), "key file", key);
            }
        }
    }

    /// `[base] image`: where it comes from, how it is checked, what it is.
    fn base_image(&mut self, spec: &Spec, image: &BaseImage) {
        self.check(
            "base.image.url",
            "image URL",
            &image.url,
            rules::archive_url(&image.url),
        );
        if image.file_name().is_empty() {
            self.report(
                "base.image.url",
                format!("image URL `{}` names no file", image.url),
                Some("write the URL of the image file itself, e.g. \"https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2\"".into()),
            );
        }
        match (&image.checksum, &image.checksum_url) {
            (None, None) => self.report(
                "base.image",
                "`image` has neither `checksum` nor `checksum_url`: kiln verifies every image before it uses it".into(),
                Some("add `checksum = \"sha256:<64 hex digits>\"` (the image's sha256sum), or `checksum_url = \"…/SHA256SUMS\"`".into()),
            ),
            (Some(_), Some(_)) => self.report(
                "base.image.checksum_url",
                "`checksum` and `checksum_url` both give the image's checksum".into(),
                Some("keep one of them".into()),
            ),
            _ => {}
        }
        if let Some(c) = &image.checksum {
            self.check("base.image.checksum", "checksum", c, rules::sha256_checksum(c));
        }
        if let Some(u) = &image.checksum_url {
            self.check("base.image.checksum_url", "checksum URL", u, rules::archive_url(u));
        }
        if image.format().is_none() {
            self.report(
                "base.image.url",
                format!("cannot tell the format of `{}` from its name", image.file_name()),
                Some("add `format = \"qcow2\"` or `format = \"raw\"` to the image".into()),
            );
        }
        if let Base::Arch(arch) = &spec.base {
            if arch.bootstrap.is_some() || arch.tarball.is_some() {
                self.report(
                    if arch.tarball.is_some() {
                        "base.tarball"
                    } else {
                        "base.bootstrap"
                    },
                    "a base `image` is not bootstrapped: `bootstrap` and `tarball` would be ignored".into(),
                    Some("remove `bootstrap` and `tarball`, or remove `image` to bootstrap with pacstrap".into()),
                );
            }
        }
        if let Some(apt) = spec.base.apt() {
            if apt.variant.is_some() {
                self.report(
                    "base.variant",
                    "`variant` chooses what mmdebstrap installs; a base `image` is not bootstrapped".into(),
                    Some("remove `variant`, or remove `image` to bootstrap with mmdebstrap".into()),
                );
            }
        }
    }

    fn arch_base(&mut self, base: &ArchBase) {
        if let Some(mirror) = &base.mirror {
            // pacman's variables are part of the URL.
            let plain = mirror.replace("$repo", "repo").replace("$arch", "arch");
            self.check("base.mirror", "mirror", mirror, rules::archive_url(&plain));
        }
        if let Some(repos) = &base.repos {
            if repos.is_empty() {
                self.report(
                    "base.repos",
                    "`repos` is empty".into(),
                    Some("list at least one repository, e.g. [\"core\", \"extra\"]".into()),
                );
            }
            for (i, repo) in repos.iter().enumerate() {
                self.check(
                    &format!("base.repos[{i}]"),
                    "repository name",
                    repo,
                    rules::repo_name(repo),
                );
            }
        }
        if let Some(arch) = &base.architecture {
            if arch != "x86_64" {
                self.report(
                    "base.architecture",
                    format!("Arch Linux has no architecture `{arch}`"),
                    Some("Arch Linux builds x86_64 only; write \"x86_64\" or leave it out".into()),
                );
            }
        }
        match (base.bootstrap, &base.tarball) {
            (Some(ArchBootstrap::Tarball), None) => self.report(
                "base.bootstrap",
                "`bootstrap = \"tarball\"` needs a `tarball`".into(),
                Some("add e.g. `tarball = { url = \"https://geo.mirror.pkgbuild.com/iso/latest/archlinux-bootstrap-x86_64.tar.zst\", sha256 = \"...\" }`".into()),
            ),
            (None | Some(ArchBootstrap::Pacstrap), Some(_)) => self.report(
                "base.tarball",
                "`tarball` is only used with `bootstrap = \"tarball\"`".into(),
                Some("add `bootstrap = \"tarball\"` or remove `tarball`".into()),
            ),
            _ => {}
        }
        if let Some(t) = &base.tarball {
            self.check("base.tarball.url", "tarball URL", &t.url, rules::archive_url(&t.url));
            self.check(
                "base.tarball.sha256",
                "SHA-256",
                &t.sha256,
                rules::sha256_hex(&t.sha256),
            );
            if let Some(sig) = &t.signature {
                self.check("base.tarball.signature", "signature URL", sig, rules::archive_url(sig));
            }
        }
    }

    fn rhel_base(&mut self, base: &RhelBase) {
        let major = base.release.split('.').next().unwrap_or("");
        let minor_ok = base
            .release
            .split_once('.')
            .is_none_or(|(_, m)| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()));
        if !RHEL_RELEASES.contains(&major) || !minor_ok {
            self.report(
                "base.release",
                format!("release `{}` is not one the rhel family knows", base.release),
                Some(format!(
                    "kiln builds releases {} (a major release, or major.minor like \"8.10\")",
                    RHEL_RELEASES.join(", ")
                )),
            );
        }
        if let Some(arch) = &base.architecture {
            if !matches!(arch.as_str(), "x86_64" | "aarch64") {
                self.report(
                    "base.architecture",
                    format!("unknown architecture `{arch}`"),
                    Some("write \"x86_64\" or \"aarch64\"".into()),
                );
            }
        }
        if base.repos.is_empty() {
            self.report(
                "base.repos",
                "`repos` is empty: dnf has nothing to install from".into(),
                Some(
                    "add [[base.repos]] tables with `name`, `baseurl` and `gpgkey`, e.g. Rocky's BaseOS and AppStream"
                        .into(),
                ),
            );
        }
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, repo) in base.repos.iter().enumerate() {
            let at = format!("base.repos[{i}]");
            self.check(
                &format!("{at}.name"),
                "repository name",
                &repo.name,
                rules::repo_name(&repo.name),
            );
            if let Some(first) = names.insert(&repo.name, i) {
                let help = format!(
                    "the first is {}{}",
                    table_name(&format!("base.repos[{first}]")),
                    self.line_of(&format!("base.repos[{first}].name"))
                );
                self.report(
                    &format!("{at}.name"),
                    format!("duplicate repository `{}`", repo.name),
                    Some(help),
                );
            }
            let plain = repo.baseurl.replace("$releasever", "8").replace("$basearch", "x86_64");
            self.check(
                &format!("{at}.baseurl"),
                "baseurl",
                &repo.baseurl,
                rules::archive_url(&plain),
            );
            match (&repo.gpgkey, repo.gpgcheck) {
                (None, Some(false)) => {}
                (None, _) => self.report(
                    &format!("{at}.name"),
                    format!("repository `{}` has no `gpgkey`", repo.name),
                    Some("name its key (a file beside the spec, or a URL dnf fetches), or write `gpgcheck = false` to install unsigned packages".into()),
                ),
                (Some(key), _) if key.contains("://") => {
                    self.check(&format!("{at}.gpgkey"), "gpgkey URL", key, rules::archive_url(key));
                }
                (Some(key), _) => {
                    self.source_file(&format!("{at}.gpgkey"), "key file", key);
                }
            }
        }
    }

    fn packages(&mut self, spec: &Spec) {
        for (list, names) in [
            ("install", &spec.packages.install),
            ("remove", &spec.packages.remove),
            ("offline", &spec.packages.offline),
        ] {
            for (i, name) in names.iter().enumerate() {
                self.check(&format!("packages.{list}[{i}]"), "package", name, rules::package(name));
            }
        }
        for (i, name) in spec.packages.remove.iter().enumerate() {
            if let Some(j) = spec.packages.install.iter().position(|n| n == name) {
                self.report(
                    &format!("packages.remove[{i}]"),
                    format!("`{name}` is both installed (install[{j}]) and removed"),
                    Some(format!("keep `{name}` in one of the two lists")),
                );
            }
        }
        for (i, param) in spec.kernel.cmdline.iter().enumerate() {
            if param.chars().any(char::is_control) {
                self.report(
                    &format!("kernel.cmdline[{i}]"),
                    format!("kernel parameter {param:?} contains a control character (a newline?)"),
                    Some("write each parameter as its own string, on one line".into()),
                );
            }
        }
        if !spec.packages.offline.is_empty() && !matches!(spec.base.distro(), Distro::Debian | Distro::Ubuntu) {
            self.report(
                "packages.offline",
                format!(
                    "`offline` is not supported for distro = \"{}\" yet: kiln builds its local repository with apt",
                    format!("{:?}", spec.base.distro()).to_lowercase()
                ),
                Some("remove `offline`, or carry the packages with a [[run]] step".into()),
            );
        }
    }

    /// Returns the total size of the source files, which the image must hold.
    fn files(&mut self, spec: &Spec) -> u64 {
        let mut total = 0u64;
        let mut dests: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, entry) in spec.files.iter().enumerate() {
            let at = format!("files[{i}]");
            if let Some(size) = self.source_file(&format!("{at}.src"), "source file", &entry.src) {
                total = total.saturating_add(size);
            }
            self.check(
                &format!("{at}.dest"),
                "destination",
                &entry.dest,
                rules::image_path(&entry.dest),
            );
            if let Some(first) = dests.insert(&entry.dest, i) {
                let help = format!(
                    "{} writes it too{}",
                    table_name(&format!("files[{first}]")),
                    self.line_of(&format!("files[{first}].dest"))
                );
                self.report(
                    &format!("{at}.dest"),
                    format!("duplicate destination `{}`", entry.dest),
                    Some(help),
                );
            }
            self.mode_and_owner(&at, entry.mode.as_deref(), entry.owner.as_deref());
        }
        total
    }

    fn directories(&mut self, spec: &Spec) {
        let mut paths: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, entry) in spec.directories.iter().enumerate() {
            let at = format!("directories[{i}]");
            self.check(
                &format!("{at}.path"),
                "directory path",
                &entry.path,
                rules::image_path(&entry.path),
            );
            if let Some(first) = paths.insert(&entry.path, i) {
                let help = format!(
                    "{} creates it too{}",
                    table_name(&format!("directories[{first}]")),
                    self.line_of(&format!("directories[{first}].path"))
                );
                self.report(
                    &format!("{at}.path"),
                    format!("duplicate directory `{}`", entry.path),
                    Some(help),
                );
            }
            self.mode_and_owner(&at, entry.mode.as_deref(), entry.owner.as_deref());
        }
    }

    fn mode_and_owner(&mut self, at: &str, mode: Option<&str>, owner: Option<&str>) {
        if let Some(mode) = mode {
            if let Err(why) = rules::parse_mode(mode) {
                self.report(
                    &format!("{at}.mode"),
                    format!("invalid mode: {why}"),
                    Some("write it like chmod, e.g. \"0644\" or \"0755\"".into()),
                );
            }
        }
        if let Some(owner) = owner {
            self.check(&format!("{at}.owner"), "owner", owner, rules::owner(owner));
        }
    }

    fn run(&mut self, spec: &Spec) {
        for (i, step) in spec.run.iter().enumerate() {
            let at = format!("run[{i}]");
            let header = table_name(&at);
            match (&step.script, &step.file) {
                (Some(_), Some(_)) => self.report(
                    &format!("{at}.file"),
                    format!("{header} has both `script` and `file`"),
                    Some("keep one: `script` holds the script itself, `file` names a script file".into()),
                ),
                (None, None) => self.report(
                    &at,
                    format!("{header} has neither `script` nor `file`"),
                    Some("add `script = \"…\"` (the script itself) or `file = \"scripts/….sh\"`".into()),
                ),
                (Some(script), None) if script.trim().is_empty() => {
                    self.report(&format!("{at}.script"), format!("{header} has an empty `script`"), None);
                }
                _ => {}
            }
            if let Some(file) = &step.file {
                self.source_file(&format!("{at}.file"), "script file", file);
            }
        }
    }

    fn accounts(&mut self, spec: &Spec) {
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, user) in spec.users.iter().enumerate() {
            let at = format!("users[{i}]");
            let name_at = format!("{at}.name");
            if user.name == "root" {
                self.report(
                    &name_at,
                    "`root` cannot be one of [[users]]".into(),
                    Some("configure root in the [root] table".into()),
                );
            } else {
                self.check(&name_at, "user name", &user.name, rules::account_name(&user.name));
            }
            if let Some(first) = names.insert(&user.name, i) {
                let help = format!(
                    "the first is {}{}",
                    table_name(&format!("users[{first}]")),
                    self.line_of(&format!("users[{first}].name"))
                );
                self.report(&name_at, format!("duplicate user `{}`", user.name), Some(help));
            }
            for (g, group) in user.groups.iter().enumerate() {
                self.check(
                    &format!("{at}.groups[{g}]"),
                    "group name",
                    group,
                    rules::account_name(group),
                );
            }
            if let Some(shell) = &user.shell {
                self.check(&format!("{at}.shell"), "shell", shell, rules::image_path(shell));
            }
            self.credentials(&at, &user.ssh_keys, user.password_hash.as_deref(), user.locked);
        }
        let root = &spec.root;
        self.credentials("root", &root.ssh_keys, root.password_hash.as_deref(), root.locked);

        if let Some(user) = &spec.cloud_init.default_user {
            let at = "cloud_init.default_user";
            self.check(
                &format!("{at}.name"),
                "user name",
                &user.name,
                rules::account_name(&user.name),
            );
            for (g, group) in user.groups.iter().enumerate() {
                self.check(
                    &format!("{at}.groups[{g}]"),
                    "group name",
                    group,
                    rules::account_name(group),
                );
            }
            if let Some(shell) = &user.shell {
                self.check(&format!("{at}.shell"), "shell", shell, rules::image_path(shell));
            }
        }
    }

    fn credentials(&mut self, at: &str, ssh_keys: &[String], hash: Option<&str>, locked: Option<bool>) {
        for (k, key) in ssh_keys.iter().enumerate() {
            if let Err(p) = rules::ssh_key(key) {
                self.report(
                    &format!("{at}.ssh_keys[{k}]"),
                    format!("invalid SSH public key: {}", p.why),
                    p.help,
                );
            }
        }
        if let Some(hash) = hash {
            if let Err(p) = rules::crypt_hash(hash) {
                self.report(
                    &format!("{at}.password_hash"),
                    format!("invalid `password_hash`: {}", p.why),
                    p.help,
                );
            }
            if locked == Some(true) {
                self.report(
                    &format!("{at}.locked"),
                    "`locked = true` contradicts `password_hash`".into(),
                    Some("remove `password_hash` to lock the password, or `locked` to set it".into()),
                );
            }
        }
    }

    fn system(&mut self, spec: &Spec) {
        if let Some(hostname) = &spec.hostname {
            self.check("hostname", "hostname", hostname, rules::hostname(hostname));
        }
        if let Some(tz) = &spec.timezone {
            self.check("timezone", "time zone", tz, rules::timezone(tz));
        }
        if let Some(locale) = &spec.locale {
            self.check("locale", "locale", locale, rules::locale(locale));
        }
        let services = &spec.services;
        for (list, units) in [
            ("enable", &services.enable),
            ("disable", &services.disable),
            ("mask", &services.mask),
        ] {
            for (i, unit) in units.iter().enumerate() {
                self.check(&format!("services.{list}[{i}]"), "unit name", unit, rules::unit(unit));
            }
        }
        if let Some(package) = &spec.kernel.package {
            self.check("kernel.package", "kernel package", package, rules::package(package));
        }
        self.host_profile(spec);
    }

    /// Modules to load, sysctl settings and limits: each becomes one line
    /// of a configuration file, so no value may break the line.
    fn host_profile(&mut self, spec: &Spec) {
        let word =
            |s: &str, extra: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(c));
        for (i, module) in spec.kernel.modules.iter().enumerate() {
            if !word(module, "_-") {
                self.report(
                    &format!("kernel.modules[{i}]"),
                    format!("invalid kernel module name `{module}`"),
                    Some("a module name has letters, digits, `_` and `-`, e.g. \"vfio_pci\"".into()),
                );
            }
        }
        for (key, value) in &spec.kernel.sysctl {
            let at = format!("kernel.sysctl.{key}");
            if !word(key, "_-./") {
                self.report(
                    &at,
                    format!("invalid sysctl name `{key}`"),
                    Some("write the dotted name, quoted, e.g. `\"vm.swappiness\" = 10`".into()),
                );
            } else if value.to_string().is_empty() || value.to_string().chars().any(|c| c.is_control()) {
                self.report(
                    &at,
                    format!("invalid value for sysctl `{key}`"),
                    Some("write one line, e.g. 10 or \"4096 87380 6291456\"".into()),
                );
            }
        }
        const ITEMS: &[&str] = &[
            "core",
            "data",
            "fsize",
            "memlock",
            "nofile",
            "rss",
            "stack",
            "cpu",
            "nproc",
            "as",
            "maxlogins",
            "maxsyslogins",
            "nonewprivs",
            "priority",
            "locks",
            "sigpending",
            "msgqueue",
            "nice",
            "rtprio",
            "chroot",
        ];
        for (i, limit) in spec.limits.iter().enumerate() {
            let at = format!("limits[{i}]");
            if !word(limit.domain.trim_start_matches(['@', '%']), "_-*.:") {
                self.report(
                    &format!("{at}.domain"),
                    format!("invalid limits domain `{}`", limit.domain),
                    Some("a user name, \"@group\", or \"*\" for everyone".into()),
                );
            }
            if !["soft", "hard", "-"].contains(&limit.kind.as_str()) {
                self.report(
                    &format!("{at}.type"),
                    format!("invalid limit type `{}`", limit.kind),
                    Some("\"soft\", \"hard\", or \"-\" for both".into()),
                );
            }
            if !ITEMS.contains(&limit.item.as_str()) {
                self.report(
                    &format!("{at}.item"),
                    format!("unknown limit item `{}`", limit.item),
                    Some(format!("limits.conf(5) knows {}", ITEMS.join(", "))),
                );
            }
            let value = limit.value.to_string();
            if !(value.chars().all(|c| c.is_ascii_digit() || c == '-') && !value.is_empty()
                || ["unlimited", "infinity"].contains(&value.as_str()))
            {
                self.report(
                    &format!("{at}.value"),
                    format!("invalid limit value `{value}`"),
                    Some("a number, or \"unlimited\"".into()),
                );
            }
        }
    }

    fn targets(&mut self, spec: &Spec, files_bytes: u64) {
        let targets = &spec.targets;
        if targets.defined().is_empty() {
            let known = Targets::KINDS
                .iter()
                .map(|k| format!("[targets.{k}]"))
                .collect::<Vec<_>>()
                .join(", ");
            self.report(
                "targets",
                "no target is defined".into(),
                Some(format!("add a target table; kiln knows {known}")),
            );
        }
        if let Some(t) = &targets.ovh_byol {
            self.ovh_byol(t, files_bytes);
        }
        if let Some(t) = &targets.disk {
            self.disk(t, files_bytes);
        }
        if let Some(t) = &targets.iso {
            self.iso(t);
        }
        if let Some(t) = &targets.ami {
            self.ami(spec, t, files_bytes);
        }
        if let Some(t) = &targets.tar {
            self.tar(t);
        }
        if let Some(t) = &targets.usb_installer {
            self.usb_installer(targets, t);
        }
    }

    fn usb_installer(&mut self, targets: &Targets, t: &UsbInstallerTarget) {
        let at = "targets.usb-installer";
        let defined = targets.defined();
        let carriable: Vec<&str> = defined
            .iter()
            .copied()
            .filter(|k| UsbInstallerTarget::PAYLOADS.contains(k))
            .collect();
        let choose = if carriable.is_empty() {
            format!(
                "define a bootable disk target ({}) and name it here",
                UsbInstallerTarget::PAYLOADS
                    .iter()
                    .map(|k| format!("[targets.{k}]"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            )
        } else {
            format!(
                "this spec defines {}",
                carriable
                    .iter()
                    .map(|k| format!("\"{k}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let payload = t.payload.as_str();
        let payload_size = match payload {
            "disk" => targets.disk.as_ref().map(|d| d.disk_size()),
            "ami" => targets.ami.as_ref().map(|a| Some(a.disk_size())),
            _ => None,
        };
        if !defined.contains(&payload) {
            let known = Targets::KINDS.contains(&payload);
            let message = if known {
                format!("payload `{payload}` names a target this spec does not define")
            } else {
                format!("payload `{payload}` is not a target kind")
            };
            self.report(&format!("{at}.payload"), message, Some(choose));
        } else if !UsbInstallerTarget::PAYLOADS.contains(&payload) {
            self.report(
                &format!("{at}.payload"),
                format!("payload `{payload}` is not a bootable disk that a stick can install"),
                Some(choose),
            );
        }
        let Some(written) = &t.size else { return };
        let text = written.text();
        match written.parsed().copied() {
            Err(why) => self.report(
                &format!("{at}.size"),
                format!("invalid `size`: {why}"),
                Some("write a size such as \"4GiB\", or remove `size` for what fits".into()),
            ),
            Ok(b) if !b.is_multiple_of(MIB) => self.report(
                &format!("{at}.size"),
                format!("`size` `{text}` is not a whole number of MiB"),
                Some(format!("write \"{}MiB\"", b.div_ceil(MIB).max(1))),
            ),
            Ok(b) if b > MAX_DISK_SIZE => self.report(
                &format!("{at}.size"),
                format!("size `{text}` is larger than {}", format_size(MAX_DISK_SIZE)),
                None,
            ),
            Ok(b) => {
                if let Some(Some(raw)) = payload_size.filter(|raw| raw.is_some_and(|raw| raw > b)) {
                    self.report(
                        &format!("{at}.size"),
                        format!(
                            "the payload `{payload}` is a {} disk, larger than the stick's size `{text}`",
                            format_size(raw)
                        ),
                        Some(format!(
                            "the stick holds the payload compressed, which can be as large as the disk itself: use at least \"{}\", or remove `size` for what fits",
                            if raw.is_multiple_of(GIB) {
                                format!("{}GiB", raw / GIB)
                            } else {
                                format!("{}MiB", raw.div_ceil(MIB))
                            }
                        )),
                    );
                }
            }
        }
    }

    fn tar(&mut self, t: &TarTarget) {
        let Some(level) = t.level else { return };
        let at = "targets.tar.level";
        match t.compression.levels() {
            None => self.report(
                at,
                "`level` is set but `compression` is \"none\"".into(),
                Some("remove `level`, or choose a compression".into()),
            ),
            Some((default, range)) if !range.contains(&level) => self.report(
                at,
                format!(
                    "{} has no level {level}: it takes {} to {}",
                    t.compression.name(),
                    range.start(),
                    range.end()
                ),
                Some(format!("use {default}, the default, or remove `level`")),
            ),
            Some(_) => {}
        }
    }

    fn ami(&mut self, spec: &Spec, t: &AmiTarget, files_bytes: u64) {
        let at = "targets.ami";
        if let Some(written) = &t.size {
            let text = written.text();
            let overhead = DiskTarget::DEFAULT_ESP_SIZE + DiskTarget::LAYOUT_OVERHEAD;
            let min = MIN_BASE_CONTENT
                .saturating_add(files_bytes)
                .saturating_add(overhead)
                .div_ceil(GIB)
                .saturating_mul(GIB);
            let problem = match written.parsed().copied() {
                Err(why) => Some((format!("invalid `size`: {why}"), "write a whole number of GiB such as \"4GiB\"".to_owned())),
                Ok(b) if !b.is_multiple_of(GIB) => Some((
                    format!("`size` `{text}` is not a whole number of GiB"),
                    format!(
                        "EBS volumes are sized in GiB; write \"{}GiB\"",
                        b.div_ceil(GIB).max(1)
                    ),
                )),
                Ok(b) if b < min => Some((
                    format!(
                        "size `{text}` is smaller than the content: at least {} ({} for a Debian system with kernel, GRUB and cloud-init, plus {} of [[files]] and {} for the ESP, the BIOS boot partition and the GPT)",
                        format_size(min),
                        format_size(MIN_BASE_CONTENT),
                        format_size(files_bytes),
                        format_size(overhead)
                    ),
                    format!("use at least \"{}GiB\"", min / GIB),
                )),
                Ok(b) if b > MAX_DISK_SIZE => Some((
                    format!("size `{text}` is larger than {}", format_size(MAX_DISK_SIZE)),
                    "cloud-init grows the root to the instance's volume at first boot (growpart), so build small".to_owned(),
                )),
                Ok(_) => None,
            };
            if let Some((message, help)) = problem {
                self.report(&format!("{at}.size"), message, Some(help));
            }
        }
        if let Some(user) = &t.default_user {
            self.check(
                &format!("{at}.default_user"),
                "user name",
                user,
                rules::account_name(user),
            );
        }
        // An AMI bakes no passwords: every instance made from it would share them.
        let hashes = std::iter::once(("root".to_owned(), &spec.root.password_hash)).chain(
            spec.users
                .iter()
                .enumerate()
                .map(|(i, u)| (format!("users[{i}]"), &u.password_hash)),
        );
        for (owner, hash) in hashes {
            if hash.is_some() {
                self.report(
                    &format!("{owner}.password_hash"),
                    "[targets.ami] bakes no password into the image, and this sets one".into(),
                    Some("remove `password_hash`: instances are reached with their EC2 key pair".into()),
                );
            }
        }
    }

    fn ovh_byol(&mut self, t: &OvhByolTarget, files_bytes: u64) {
        let at = "targets.ovh-byol";
        self.size_and_headroom(
            &SizeRule {
                at,
                size: t.size.as_ref(),
                headroom: t.headroom.as_ref(),
                overhead: None,
                content_min: true,
                max: MAX_PARTITION_SIZE,
                max_help: "OVH's installer copies the image's files onto its own partitions, so the image only needs room for its content; use \"auto\"",
            },
            files_bytes,
        );
        self.bootloader_id(at, t.bootloader_id.as_deref());
    }

    fn disk(&mut self, t: &DiskTarget, files_bytes: u64) {
        let at = "targets.disk";
        self.firmware(at, t.firmware.as_deref());
        let mut size_reported = false;
        if !t.partitions.is_empty() {
            size_reported = self.partitions(t);
        } else if t.filesystem != Filesystem::Ext4 {
            self.report(
                &format!("{at}.filesystem"),
                "the disk target supports only ext4 for now".into(),
                Some("remove `filesystem`, or set it to \"ext4\"".into()),
            );
        }
        if let Some(written) = &t.esp_size {
            let esp = written.text();
            let problem = match written.parsed().copied() {
                Err(why) => Some(format!("invalid `esp_size`: {why}")),
                Ok(b) if !(MIN_ESP_SIZE..=MAX_ESP_SIZE).contains(&b) => Some(format!(
                    "`esp_size` `{esp}` is outside {} to {}",
                    format_size(MIN_ESP_SIZE),
                    format_size(MAX_ESP_SIZE)
                )),
                Ok(b) if b % MIB != 0 => Some(format!(
                    "`esp_size` `{esp}` is not a whole number of MiB, so the root partition would be misaligned"
                )),
                Ok(_) => None,
            };
            if let Some(message) = problem {
                self.report(
                    &format!("{at}.esp_size"),
                    message,
                    Some(
                        "write a size in MiB such as \"128MiB\" (the ESP is FAT32, which needs at least 36MiB)".into(),
                    ),
                );
            }
        }
        // An `esp_size` that does not parse is reported above; the size
        // check goes on with the default so that its problems show too.
        let esp = t.esp_size.as_ref().and_then(|w| w.parsed().ok().copied());
        let overhead = if t.partitions.is_empty() {
            let bytes = esp
                .unwrap_or(DiskTarget::DEFAULT_ESP_SIZE)
                .saturating_add(DiskTarget::LAYOUT_OVERHEAD);
            Some((bytes, "the ESP, the BIOS boot partition and the GPT"))
        } else {
            // The layout's own fit was checked by `partitions`; a size it
            // reported is not reported twice.
            let fixed: u64 = t
                .partitions
                .iter()
                .filter_map(|p| match p.size.as_ref().map(|w| w.parsed()) {
                    Some(Ok(PartitionSize::Bytes(b))) => Some(*b),
                    _ => None,
                })
                .fold(0, u64::saturating_add);
            Some((
                fixed.saturating_add(DiskTarget::GPT_OVERHEAD),
                "the other partitions and the GPT",
            ))
        };
        self.size_and_headroom(
            &SizeRule {
                at,
                size: if size_reported { None } else { t.size.as_ref() },
                headroom: t.headroom.as_ref(),
                overhead,
                content_min: t.partitions.is_empty()
                    || t.partitions.last().is_some_and(|p| {
                        p.role == "root"
                            && p.size
                                .as_ref()
                                .is_none_or(|w| matches!(w.parsed(), Ok(PartitionSize::Rest)))
                    }),
                max: MAX_DISK_SIZE,
                max_help: "clouds grow the root partition to the real disk at first boot (growpart), so build small; use \"auto\"",
            },
            files_bytes,
        );
        if let Some(console) = &t.console {
            self.check(&format!("{at}.console"), "`console`", console, rules::console(console));
        }
        if t.compress == Some(true) && t.format != DiskFormat::Qcow2 {
            // A silently ignored option is worse than an error.
            self.report(
                &format!("{at}.compress"),
                "`compress` only applies when `format` is \"qcow2\"".into(),
                Some("remove `compress`, or set `format = \"qcow2\"`".into()),
            );
        }
        self.bootloader_id(at, t.bootloader_id.as_deref());
    }

    /// A declared layout: roles, filesystems, sizes, labels and mount
    /// options of each partition, then the layout as a whole (one root, the
    /// boot partitions the firmware needs, unique mount points, and its fit
    /// in a fixed disk size). Returns whether `size` was reported.
    fn partitions(&mut self, t: &DiskTarget) -> bool {
        let at = "targets.disk";
        if t.esp_size.is_some() {
            self.report(
                &format!("{at}.esp_size"),
                "`esp_size` does not apply to declared `partitions`".into(),
                Some("give the partition with role = \"esp\" a `size` instead".into()),
            );
        }
        if self.spans.value(&format!("{at}.filesystem")).is_some() {
            self.report(
                &format!("{at}.filesystem"),
                "`filesystem` does not apply to declared `partitions`".into(),
                Some("set `filesystem` on the partition with role = \"root\" instead".into()),
            );
        }
        let last = t.partitions.len() - 1;
        // Mount point (or role name for those without one) → first index.
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut roles: Vec<Option<PartitionRole>> = Vec::new();
        for (i, p) in t.partitions.iter().enumerate() {
            let here = format!("{at}.partitions[{i}]");
            let role = self.partition_role(&here, p);
            if let Some(role) = &role {
                self.partition_details(&here, p, role, i == last);
                let key = match role.mount_point() {
                    Some(m) => m.to_owned(),
                    None => p.role.clone(),
                };
                if let Some(&first) = seen.get(&key) {
                    let first_line = self
                        .spans
                        .value(&format!("{at}.partitions[{first}].role"))
                        .map_or(0, |s| self.file.line(s.start));
                    let first_is = format!("partition {} (line {first_line})", first + 1);
                    let (message, help) = match role {
                        PartitionRole::Mount(_) | PartitionRole::Boot => (
                            format!("duplicate mount point `{key}`"),
                            format!("{first_is} is mounted there too; keep one"),
                        ),
                        _ => {
                            let what = match role {
                                PartitionRole::Root => "root partitions",
                                PartitionRole::Esp => "EFI system partitions",
                                PartitionRole::BiosBoot => "BIOS boot partitions",
                                _ => "swap partitions",
                            };
                            (format!("two {what}"), format!("the first is {first_is}; keep one"))
                        }
                    };
                    self.report(&format!("{here}.role"), message, Some(help));
                } else {
                    seen.insert(key, i);
                }
            }
            roles.push(role);
        }
        let takes_rest = |p: &DiskPartition| {
            p.size
                .as_ref()
                .is_none_or(|w| matches!(w.parsed(), Ok(PartitionSize::Rest)))
        };
        if t.headroom.is_some() && t.partitions.last().is_some_and(|p| !takes_rest(p)) {
            // A silently ignored option is worse than an error.
            self.report(
                &format!("{at}.headroom"),
                "`headroom` applies to the partition that takes the rest, and none does".into(),
                Some("remove `headroom`, or drop the last partition's `size`".into()),
            );
        }
        let has = |r: &PartitionRole| roles.iter().any(|x| x.as_ref() == Some(r));
        let all_parsed = roles.iter().all(Option::is_some);
        let firmware = t.firmware();
        let firmware_at = if t.firmware.is_some() {
            format!("{at}.firmware")
        } else {
            format!("{at}.partitions")
        };
        if all_parsed && !has(&PartitionRole::Root) {
            self.report(
                &format!("{at}.partitions"),
                "the partition layout has no root partition".into(),
                Some("add a [[targets.disk.partitions]] with role = \"root\"".into()),
            );
        }
        if all_parsed && firmware.contains(&Firmware::Uefi) && !has(&PartitionRole::Esp) {
            self.report(
                &firmware_at,
                "`uefi` firmware needs an EFI system partition, and the layout has none".into(),
                Some(
                    "add a partition with role = \"esp\" and size = \"512MiB\", or boot with `firmware = [\"bios\"]`"
                        .into(),
                ),
            );
        }
        if all_parsed && firmware.contains(&Firmware::Bios) && !has(&PartitionRole::BiosBoot) {
            self.report(
                &firmware_at,
                "`bios` firmware on a GPT disk needs a BIOS boot partition for GRUB, and the layout has none".into(),
                Some("add a partition with role = \"bios_boot\" and size = \"1MiB\" first, or boot with `firmware = [\"uefi\"]`".into()),
            );
        }
        // The fit in a fixed disk size.
        let Some(Ok(Size::Bytes(disk))) = t.size.as_ref().map(|w| w.parsed().copied()) else {
            return false;
        };
        let mut fixed = DiskTarget::GPT_OVERHEAD;
        let mut rest = false;
        for p in &t.partitions {
            match p.size.as_ref().map(|w| w.parsed().copied()) {
                Some(Ok(PartitionSize::Bytes(b))) => fixed = fixed.saturating_add(b),
                Some(Ok(PartitionSize::Rest)) | None => rest = true,
                Some(Err(_)) => {}
            }
        }
        let need = if rest { fixed.saturating_add(MIB) } else { fixed };
        if need > disk {
            let size = t.size.as_ref().map_or("", |w| w.text());
            self.report(
                &format!("{at}.size"),
                format!(
                    "the partitions do not fit in size `{size}`: their fixed sizes and the GPT take {}{}",
                    format_size(fixed),
                    if rest {
                        ", and the last partition needs room too"
                    } else {
                        ""
                    }
                ),
                Some(format!(
                    "make the disk at least \"{}MiB\", shrink a partition, or use size = \"auto\"",
                    fixed
                        .saturating_add(if rest { MIN_BASE_CONTENT } else { 0 })
                        .div_ceil(MIB)
                )),
            );
            return true;
        }
        false
    }

    /// The parsed role of partition `here`, or `None` after reporting it.
    fn partition_role(&mut self, here: &str, p: &DiskPartition) -> Option<PartitionRole> {
        let Some(role) = PartitionRole::parse(&p.role) else {
            let suggestion = PartitionRole::NAMES
                .iter()
                .map(|n| (strsim::normalized_damerau_levenshtein(&p.role.to_lowercase(), n), *n))
                .filter(|(score, _)| *score >= 0.5)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, n)| format!("did you mean `{n}`? "))
                .unwrap_or_default();
            self.report(
                &format!("{here}.role"),
                format!("unknown partition role `{}`", p.role),
                Some(format!(
                    "{suggestion}a role is bios_boot, esp, boot, root, swap, or an absolute mount point such as \"/var/log\""
                )),
            );
            return None;
        };
        if let PartitionRole::Mount(path) = &role {
            if let Err(problem) = rules::image_path(path) {
                self.check(&format!("{here}.role"), "mount point", path, Err(problem));
                return None;
            }
            let named = match path.as_str() {
                "/" => Some("root"),
                "/boot" => Some("boot"),
                "/boot/efi" => Some("esp"),
                _ => None,
            };
            if let Some(name) = named {
                self.report(
                    &format!("{here}.role"),
                    format!("`{path}` has a role of its own"),
                    Some(format!("write role = \"{name}\"")),
                );
                return None;
            }
            let top = path.split('/').nth(1).unwrap_or_default();
            if [
                "bin", "dev", "etc", "lib", "lib32", "lib64", "proc", "run", "sbin", "sys", "usr",
            ]
            .contains(&top)
            {
                self.report(
                    &format!("{here}.role"),
                    format!("`{path}` cannot be a separate filesystem"),
                    Some(format!(
                        "/{top} must be on the root filesystem, which the initramfs mounts before anything else"
                    )),
                );
                return None;
            }
            if path.starts_with("/boot/efi/") {
                self.report(
                    &format!("{here}.role"),
                    format!("`{path}` overlaps the EFI system partition at /boot/efi"),
                    Some("kiln writes the ESP's contents itself; mount the filesystem elsewhere".into()),
                );
                return None;
            }
        }
        Some(role)
    }

    /// Filesystem, size, label and mount options of partition `here`.
    fn partition_details(&mut self, here: &str, p: &DiskPartition, role: &PartitionRole, last: bool) {
        let fs = p.filesystem();
        let fs_name = |f: PartitionFilesystem| f.name();
        let wrong_fs = match (role, p.filesystem) {
            (PartitionRole::BiosBoot, Some(f)) => Some((
                f,
                "a BIOS boot partition holds GRUB's core image, not a filesystem; remove `filesystem`",
            )),
            (PartitionRole::Esp, Some(f)) if f != PartitionFilesystem::Vfat => {
                Some((f, "the ESP is FAT32: remove `filesystem` or set it to \"vfat\""))
            }
            (PartitionRole::Swap, Some(f)) if f != PartitionFilesystem::Swap => {
                Some((f, "remove `filesystem` or set it to \"swap\""))
            }
            (PartitionRole::Boot | PartitionRole::Root | PartitionRole::Mount(_), Some(f))
                if matches!(f, PartitionFilesystem::Vfat | PartitionFilesystem::Swap) =>
            {
                Some((
                    f,
                    "use \"ext4\" or \"xfs\" (\"vfat\" is for role = \"esp\", \"swap\" for role = \"swap\")",
                ))
            }
            _ => None,
        };
        if let Some((f, help)) = wrong_fs {
            self.report(
                &format!("{here}.filesystem"),
                format!("filesystem `{}` does not suit role `{}`", fs_name(f), p.role),
                Some(help.into()),
            );
        }
        let size_at = format!("{here}.size");
        match p.size.as_ref().map(|w| (w.text(), w.parsed().copied())) {
            Some((_, Err(why))) => self.report(
                &size_at,
                format!("invalid `size`: {why}"),
                Some("write a size such as \"512MiB\" or \"4GiB\", or \"rest\" on the last partition".into()),
            ),
            Some((_, Ok(PartitionSize::Rest))) | None if !last => self.report(
                &size_at,
                "only the last partition can take the rest of the disk".into(),
                Some("give this partition a size such as \"1GiB\"".into()),
            ),
            Some((text, Ok(PartitionSize::Bytes(b)))) => {
                let min = match (role, fs) {
                    (PartitionRole::Esp, _) => MIN_ESP_SIZE,
                    (_, Some(PartitionFilesystem::Xfs)) => MIN_XFS_SIZE,
                    _ => MIB,
                };
                if b % MIB != 0 {
                    self.report(
                        &size_at,
                        format!(
                            "size `{text}` is not a whole number of MiB, so the next partition would be misaligned"
                        ),
                        Some("write a size in MiB or GiB".into()),
                    );
                } else if b < min {
                    self.report(
                        &size_at,
                        format!(
                            "size `{text}` is smaller than {}, the least this partition can be",
                            format_size(min)
                        ),
                        Some(format!("make it at least \"{}MiB\"", min / MIB)),
                    );
                } else if *role == PartitionRole::Esp && b > MAX_ESP_SIZE {
                    self.report(
                        &size_at,
                        format!("size `{text}` is larger than {} for an ESP", format_size(MAX_ESP_SIZE)),
                        Some("GRUB takes a few MiB of it; 512MiB is plenty".into()),
                    );
                }
            }
            _ => {}
        }
        if let Some(label) = &p.label {
            let max = fs.map_or(0, PartitionFilesystem::max_label);
            let problem = if fs.is_none() {
                Some("a BIOS boot partition has no filesystem to label".to_owned())
            } else if label.is_empty() || label.len() > max {
                Some(format!("a {} label holds 1 to {max} bytes", fs.map_or("", fs_name)))
            } else if !label.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\'') {
                Some("it may only hold printable ASCII without spaces or quotes".to_owned())
            } else {
                None
            };
            if let Some(why) = problem {
                self.report(
                    &format!("{here}.label"),
                    format!("invalid label `{label}`: {why}"),
                    Some(if fs.is_none() {
                        "remove `label` from the BIOS boot partition".to_owned()
                    } else {
                        format!("use 1 to {max} printable ASCII characters without spaces or quotes, e.g. \"root\"")
                    }),
                );
            }
        }
        if let Some(options) = &p.mount_options {
            let problem = if role.mount_point().is_none() && *role != PartitionRole::Swap {
                Some("a BIOS boot partition is not mounted")
            } else if options.is_empty() {
                Some("it is empty")
            } else if options.chars().any(|c| c.is_whitespace() || c.is_control() || c == '#') {
                Some("fstab options are separated by commas, without spaces")
            } else {
                None
            };
            if let Some(why) = problem {
                self.report(
                    &format!("{here}.mount_options"),
                    format!("invalid `mount_options` `{options}`: {why}"),
                    Some("write e.g. \"nodev,noexec\", or remove `mount_options` for the defaults".into()),
                );
            }
        }
    }

    /// A target's `firmware` list: not empty, no duplicates.
    fn firmware(&mut self, at: &str, firmware: Option<&[Firmware]>) {
        let Some(firmware) = firmware else { return };
        if firmware.is_empty() {
            self.report(
                &format!("{at}.firmware"),
                "`firmware` is empty".into(),
                Some("list \"bios\", \"uefi\" or both, or remove `firmware` for both".into()),
            );
        }
        for (i, f) in firmware.iter().enumerate() {
            if let Some(first) = firmware[..i].iter().position(|g| g == f) {
                let name = serde_json::to_value(f).ok().and_then(|v| v.as_str().map(str::to_owned));
                self.report(
                    &format!("{at}.firmware[{i}]"),
                    format!("`{}` is listed twice", name.unwrap_or_default()),
                    Some(format!("it is already item {} of the list", first + 1)),
                );
            }
        }
    }

    fn iso(&mut self, t: &IsoTarget) {
        let at = "targets.iso";
        self.firmware(at, t.firmware.as_deref());
        if let Some(console) = &t.console {
            self.check(&format!("{at}.console"), "console", console, rules::console(console));
        }
        if let Some(label) = &t.label {
            self.check(
                &format!("{at}.label"),
                "volume label",
                label,
                rules::volume_label(label),
            );
            if t.config_drive.is_some() && label != IsoTarget::CONFIG_DRIVE_LABEL {
                self.report(
                    &format!("{at}.label"),
                    format!("a config drive must be labelled `config-2`, not `{label}`"),
                    Some("cloud-init finds the config drive by that label; remove `label`".into()),
                );
            }
        }
        let Some(drive) = &t.config_drive else { return };
        let at = "targets.iso.config_drive";
        if let Some(hostname) = &drive.hostname {
            self.check(
                &format!("{at}.hostname"),
                "hostname",
                hostname,
                rules::hostname(hostname),
            );
        }
        if let Some(id) = &drive.instance_id {
            if id.is_empty() || id.len() > 255 || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
                self.report(
                    &format!("{at}.instance_id"),
                    format!("invalid instance id `{id}`: it must be 1 to 255 characters without spaces"),
                    Some("remove it for a UUID derived from the spec".into()),
                );
            }
        }
        self.credentials(at, &drive.ssh_keys, None, None);
        if let Some(user_data) = &drive.user_data {
            self.source_file(&format!("{at}.user_data"), "user-data file", user_data);
        }
        match &drive.network_data {
            None => {}
            Some(NetworkData::Inline(doc)) => {
                for (path, p) in netdata::check(doc) {
                    self.report(
                        &format!("{at}.network_data.{path}"),
                        format!("network_data: {}", p.why),
                        p.help,
                    );
                }
            }
            Some(NetworkData::File(rel)) => {
                let key = format!("{at}.network_data");
                if self.source_file(&key, "network_data file", rel).is_none() {
                    return;
                }
                let parsed = fs::read(self.dir.join(rel))
                    .map_err(|e| e.to_string())
                    .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| e.to_string()));
                match parsed {
                    Err(e) => self.report(
                        &key,
                        format!("`{rel}` is not valid JSON: {e}"),
                        Some("network_data.json is a JSON object with `links`, `networks` and `services`".into()),
                    ),
                    Ok(serde_json::Value::Object(doc)) => {
                        for (path, p) in netdata::check(&doc) {
                            self.report(&key, format!("`{rel}`: {path}: {}", p.why), p.help);
                        }
                    }
                    Ok(_) => self.report(
                        &key,
                        format!("`{rel}` is not a JSON object"),
                        Some("network_data.json is a JSON object with `links`, `networks` and `services`".into()),
                    ),
                }
            }
        }
    }

    fn bootloader_id(&mut self, at: &str, id: Option<&str>) {
        if let Some(id) = id {
            self.check(
                &format!("{at}.bootloader_id"),
                "`bootloader_id`",
                id,
                rules::bootloader_id(id),
            );
        }
    }

    /// The `size` and `headroom` of a target: a fixed size must hold a base
    /// system, the [[files]] and the target's `overhead`; headroom only
    /// applies to "auto".
    fn size_and_headroom(&mut self, rule: &SizeRule<'_>, files_bytes: u64) {
        let at = rule.at;
        let size_help = "write \"auto\" or a size such as \"4GiB\", \"512MiB\" or \"2G\"";
        let size = rule.size.map(|s| (s.text(), s.parsed().copied()));
        match &size {
            Some((_, Err(why))) => self.report(
                &format!("{at}.size"),
                format!("invalid `size`: {why}"),
                Some(size_help.into()),
            ),
            Some((text, Ok(Size::Bytes(bytes)))) => {
                let overhead = rule.overhead.map_or(0, |(bytes, _)| bytes);
                let min = MIN_BASE_CONTENT.saturating_add(files_bytes).saturating_add(overhead);
                if *bytes < min && rule.content_min {
                    let suggestion = if min.is_multiple_of(GIB) {
                        format!("{}GiB", min / GIB)
                    } else {
                        format!("{}MiB", min.div_ceil(MIB))
                    };
                    let overhead_text = match rule.overhead {
                        Some((bytes, what)) => format!(" and {} for {what}", format_size(bytes)),
                        None => String::new(),
                    };
                    // format_size rounds down, and "at least 1 GiB" for
                    // 1 GiB and a few bytes would contradict itself.
                    let at_least = if min.is_multiple_of(GIB) {
                        format_size(min)
                    } else {
                        format!("{} MiB", min.div_ceil(MIB))
                    };
                    self.report(
                        &format!("{at}.size"),
                        format!(
                            "size `{text}` is smaller than the content: at least {at_least} ({} for a Debian system with kernel, GRUB and cloud-init, plus {} of [[files]]{overhead_text})",
                            format_size(MIN_BASE_CONTENT),
                            format_size(files_bytes)
                        ),
                        Some(format!("use \"auto\", or at least \"{suggestion}\"")),
                    );
                } else if *bytes > rule.max {
                    self.report(
                        &format!("{at}.size"),
                        format!("size `{text}` is larger than {}", format_size(rule.max)),
                        Some(rule.max_help.into()),
                    );
                }
            }
            None | Some((_, Ok(Size::Auto))) => {}
        }
        if let Some(written) = rule.headroom {
            let headroom = written.text();
            match written.parsed().copied() {
                Err(why) => self.report(
                    &format!("{at}.headroom"),
                    format!("invalid `headroom`: {why}"),
                    Some("write a size such as \"512MiB\" or a percentage of the content such as \"25%\"".into()),
                ),
                Ok(Headroom::Bytes(b)) if b > rule.max => self.report(
                    &format!("{at}.headroom"),
                    format!("headroom `{headroom}` is larger than {}", format_size(rule.max)),
                    Some("write a smaller headroom, or a percentage such as \"25%\"".into()),
                ),
                Ok(_) => {}
            }
            if matches!(size, Some((_, Ok(Size::Bytes(_))))) {
                // A silently ignored option is worse than an error.
                self.report(
                    &format!("{at}.headroom"),
                    "`headroom` only applies when `size` is \"auto\"".into(),
                    Some("remove `headroom`, or set `size = \"auto\"`".into()),
                );
            }
        }
    }

    /// Checks a file named relative to the spec's directory; returns its size.
    fn source_file(&mut self, path: &str, what: &str, rel: &str) -> Option<u64> {
        match self.resolve(rel) {
            Ok(size) => Some(size),
            Err(p) => {
                self.report(path, format!("{what} `{rel}` {}", p.why), p.help);
                None
            }
        }
    }

    fn resolve(&self, rel: &str) -> Result<u64, Problem> {
        let dir = self.dir.display();
        if rel.is_empty() {
            return Err(Problem::new("is empty"));
        }
        let path = Path::new(rel);
        if path.is_absolute() {
            return Err(Problem::new("is absolute").help(format!("name it relative to the spec's directory, {dir}")));
        }
        // Lexical first: `../x` is an escape whether or not it exists.
        let mut depth = 0i32;
        for c in path.components() {
            match c {
                Component::ParentDir => depth -= 1,
                Component::Normal(_) => depth += 1,
                _ => {}
            }
            if depth < 0 {
                return Err(Problem::new("is outside the spec's directory")
                    .help(format!("kiln only reads files under {dir}; copy the file there")));
            }
        }
        let joined = self.dir.join(path);
        let real = match fs::canonicalize(&joined) {
            Ok(real) => real,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Problem::new("does not exist").help(format!("looked for {}", joined.display())));
            }
            Err(e) => return Err(Problem::new(format!("cannot be read: {e}"))),
        };
        if !real.starts_with(self.dir) {
            return Err(Problem::new(format!(
                "is outside the spec's directory (it resolves to {})",
                real.display()
            ))
            .help(format!(
                "kiln only reads files under {dir}; copy the file there instead of linking to it"
            )));
        }
        let meta = fs::metadata(&real).map_err(|e| Problem::new(format!("cannot be read: {e}")))?;
        if !meta.is_file() {
            return Err(Problem::new("is not a regular file")
                .help("name a file; to copy a directory, list each file in its own [[files]] entry"));
        }
        Ok(meta.len())
    }
}
