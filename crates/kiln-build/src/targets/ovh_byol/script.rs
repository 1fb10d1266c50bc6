//! `/root/.ovh/make_image_bootable.sh`: the hook OVHcloud's BYOLinux
//! installer runs, chrooted and offline, in the deployed image (reference
//! §1.4–1.5). It copies the rescue kernel's `console=` into GRUB, regenerates
//! the mdadm configuration, installs GRUB from `.deb`s kept in the image (UEFI
//! without touching NVRAM, or BIOS on every disk under `/boot`), and
//! regenerates machine-id, initramfs and `grub.cfg` for the image's own
//! kernel. Everything it prints goes to a log file in the image, because OVH
//! shows none of it.
//!
//! The script is a real shell file per family (`make_image_bootable_debian.sh`,
//! `_arch.sh`, `_rhel.sh`, linted and tested as rendered) around the part
//! they share (`make_image_bootable_common.sh`), with a few `@NAME@`
//! placeholders; rendering validates the parameters so that no value can
//! break out of its quotes. Non-goals: ZFS layouts (refused loudly by the
//! script).

use std::fmt;

/// Where OVH's installer looks for the script.
pub const SCRIPT_PATH: &str = "/root/.ovh/make_image_bootable.sh";
/// The mode the script must have in the image.
pub const SCRIPT_MODE: u32 = 0o755;
/// What the script deletes when it succeeds.
pub const OVH_DIR: &str = "/root/.ovh";

const DEBIAN_TEMPLATE: &str = include_str!("make_image_bootable_debian.sh");
const ARCH_TEMPLATE: &str = include_str!("make_image_bootable_arch.sh");
const RHEL_TEMPLATE: &str = include_str!("make_image_bootable_rhel.sh");
/// What every family's script shares (the constants after the family's
/// own, logging, the rescue system's facts, the disks of the install, the
/// ESP, the kernel console): a fragment that each template names with a
/// line `@COMMON@`, so that a fix to it reaches every family.
const COMMON: &str = include_str!("make_image_bootable_common.sh");

/// A family's template with the shared fragment in place.
fn with_common(template: &str) -> String {
    debug_assert_eq!(template.matches("@COMMON@\n").count(), 1);
    template.replacen("@COMMON@\n", COMMON, 1)
}

/// What the generated script is parameterised by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptParams {
    /// GRUB's `--bootloader-id`: the ESP directory `EFI/<id>`, which the OVH
    /// API's `efiBootloaderPath` must name (see [`efi_bootloader_path`]).
    pub bootloader_id: String,
    /// Log file in the image; it survives the script (so not under
    /// `/root/.ovh`, which the script deletes).
    pub log_path: String,
    /// Directory in the image holding `grub-pc_*.deb` and
    /// `grub-efi-amd64_*.deb`, installed offline (they conflict, so only one
    /// is installed, at deploy time).
    pub debs_dir: String,
    /// Also install GRUB at the removable-media path `EFI/BOOT/BOOTX64.EFI`.
    /// Off by default: OVH boots `efiBootloaderPath` through iPXE.
    pub efi_removable_fallback: bool,
}

impl ScriptParams {
    /// The defaults for a Debian image (`bootloader_id` "debian").
    pub fn debian() -> Self {
        Self::new("debian")
    }

    /// The defaults, with another bootloader id (e.g. "ubuntu").
    pub fn new(bootloader_id: &str) -> Self {
        ScriptParams {
            bootloader_id: bootloader_id.to_owned(),
            log_path: "/var/log/kiln-make-image-bootable.log".to_owned(),
            debs_dir: super::DEBS_DIR.to_owned(),
            efi_removable_fallback: false,
        }
    }

    /// Checks that every value is safe to put into the script.
    pub fn validate(&self) -> Result<(), ScriptError> {
        check_bootloader_id(&self.bootloader_id)?;
        check_path("log_path", &self.log_path)?;
        check_path("debs_dir", &self.debs_dir)?;
        if is_within(&self.log_path, OVH_DIR) {
            return Err(invalid("log_path", &self.log_path, Reason::InsideOvhDir));
        }
        Ok(())
    }
}

impl Default for ScriptParams {
    fn default() -> Self {
        Self::debian()
    }
}

/// A parameter that cannot go into the script.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScriptError {
    #[error("invalid {field} {value:?} for make_image_bootable.sh: {reason}")]
    InvalidParam {
        field: &'static str,
        value: String,
        reason: Reason,
    },
}

/// Why a parameter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    Empty,
    TooLong,
    /// Only ASCII letters, digits and `._-` (plus `/` and `+` in paths).
    BadCharacter(char),
    /// A bootloader id must start with a letter or digit.
    BadStart,
    NotAbsolute,
    /// Empty, `.` or `..` component, or a trailing slash.
    BadComponent,
    /// The log would be deleted with `/root/.ovh`.
    InsideOvhDir,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Empty => f.write_str("it is empty"),
            Reason::TooLong => f.write_str("it is too long"),
            Reason::BadCharacter(c) => {
                write!(
                    f,
                    "{c:?} is not allowed (only ASCII letters, digits and ._-, plus / and + in paths)"
                )
            }
            Reason::BadStart => f.write_str("it must start with a letter or a digit"),
            Reason::NotAbsolute => f.write_str("it must be an absolute path"),
            Reason::BadComponent => f.write_str("it has an empty, `.` or `..` component or a trailing slash"),
            Reason::InsideOvhDir => write!(f, "the script deletes {OVH_DIR} when it succeeds"),
        }
    }
}

/// The `efiBootloaderPath` for the OVH API that matches `bootloader_id`, e.g.
/// `\efi\debian\grubx64.efi`.
pub fn efi_bootloader_path(bootloader_id: &str) -> String {
    format!(r"\efi\{bootloader_id}\grubx64.efi")
}

/// The Debian-family `make_image_bootable.sh`, to be written at
/// [`SCRIPT_PATH`] with [`SCRIPT_MODE`].
///
/// # Panics
///
/// If [`ScriptParams::validate`] fails. The spec's own validation rejects a
/// bad `bootloader_id` first; use [`try_render_debian`] for unchecked values.
pub fn render_debian(params: &ScriptParams) -> String {
    try_render_debian(params).unwrap_or_else(|e| panic!("{e}"))
}

/// [`render_debian`], returning invalid parameters as an error.
pub fn try_render_debian(params: &ScriptParams) -> Result<String, ScriptError> {
    params.validate()?;
    // Every value is checked to hold only [A-Za-z0-9._/+-], and each
    // placeholder sits inside single quotes in the template.
    let script = with_common(DEBIAN_TEMPLATE)
        .replace("@BOOTLOADER_ID@", &params.bootloader_id)
        .replace("@LOG_PATH@", &params.log_path)
        .replace("@DEBS_DIR@", &params.debs_dir)
        .replace(
            "@EFI_REMOVABLE_FALLBACK@",
            if params.efi_removable_fallback { "true" } else { "false" },
        );
    debug_assert!(!script.contains("@BOOTLOADER_ID@") && !script.contains("@DEBS_DIR@"));
    Ok(script)
}

/// The Arch `make_image_bootable.sh` (`make_image_bootable_arch.sh`):
/// GRUB from the image's own `grub` package (no kept packages), mdadm's
/// `/etc/mdadm.conf`, `mkinitcpio -P`, `grub-mkconfig`.
pub fn try_render_arch(params: &ScriptParams) -> Result<String, ScriptError> {
    render_template(ARCH_TEMPLATE, params)
}

/// The RHEL-family `make_image_bootable.sh` (`make_image_bootable_rhel.sh`):
/// `grub2-install` for BIOS (the packaged shim and GRUB for UEFI), dracut
/// and a BLS entry per kernel, `grub2-mkconfig`, `/.autorelabel`.
pub fn try_render_rhel(params: &ScriptParams) -> Result<String, ScriptError> {
    render_template(RHEL_TEMPLATE, params)
}

fn render_template(template: &str, params: &ScriptParams) -> Result<String, ScriptError> {
    params.validate()?;
    let script = with_common(template)
        .replace("@BOOTLOADER_ID@", &params.bootloader_id)
        .replace("@LOG_PATH@", &params.log_path)
        .replace(
            "@EFI_REMOVABLE_FALLBACK@",
            if params.efi_removable_fallback { "true" } else { "false" },
        );
    debug_assert!(!script.contains("@BOOTLOADER_ID@") && !script.contains("@LOG_PATH@"));
    Ok(script)
}

fn invalid(field: &'static str, value: &str, reason: Reason) -> ScriptError {
    ScriptError::InvalidParam {
        field,
        value: value.to_owned(),
        reason,
    }
}

fn check_bootloader_id(id: &str) -> Result<(), ScriptError> {
    let err = |reason| Err(invalid("bootloader_id", id, reason));
    // A directory name on the ESP (FAT), shown in the OVH API.
    if id.is_empty() {
        return err(Reason::Empty);
    }
    if id.len() > 64 {
        return err(Reason::TooLong);
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c))) {
        return err(Reason::BadCharacter(c));
    }
    if !id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return err(Reason::BadStart);
    }
    Ok(())
}

fn check_path(field: &'static str, path: &str) -> Result<(), ScriptError> {
    let err = |reason| Err(invalid(field, path, reason));
    if path.is_empty() {
        return err(Reason::Empty);
    }
    if path.len() > 1024 {
        return err(Reason::TooLong);
    }
    if let Some(c) = path
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-/+".contains(*c)))
    {
        return err(Reason::BadCharacter(c));
    }
    let Some(rest) = path.strip_prefix('/') else {
        return err(Reason::NotAbsolute);
    };
    if rest.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return err(Reason::BadComponent);
    }
    Ok(())
}

fn is_within(path: &str, dir: &str) -> bool {
    path == dir || path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_exec::Cmd;

    fn params(f: impl FnOnce(&mut ScriptParams)) -> ScriptParams {
        let mut p = ScriptParams::debian();
        f(&mut p);
        p
    }

    #[test]
    fn efi_path_is_the_ovh_api_form() {
        assert_eq!(efi_bootloader_path("debian"), "\\efi\\debian\\grubx64.efi");
        assert_eq!(efi_bootloader_path("ubuntu"), r"\efi\ubuntu\grubx64.efi");
    }

    #[test]
    fn defaults() {
        let p = ScriptParams::default();
        assert_eq!(p.bootloader_id, "debian");
        assert_eq!(p.log_path, "/var/log/kiln-make-image-bootable.log");
        assert_eq!(p.debs_dir, "/root/.ovh/debs");
        assert!(!p.efi_removable_fallback);
    }

    #[test]
    fn placeholders_are_all_substituted() {
        let script = render_debian(&params(|p| p.efi_removable_fallback = true));
        assert!(!script.contains("@BOOTLOADER_ID@"));
        for placeholder in ["@LOG_PATH@", "@DEBS_DIR@", "@EFI_REMOVABLE_FALLBACK@"] {
            assert!(!script.contains(placeholder), "{placeholder} left in the script");
        }
        assert!(script.contains("readonly BOOTLOADER_ID='debian'\n"));
        assert!(script.contains("readonly LOG='/var/log/kiln-make-image-bootable.log'\n"));
        assert!(script.contains("readonly DEBS_DIR='/root/.ovh/debs'\n"));
        assert!(script.contains("readonly EFI_REMOVABLE_FALLBACK='true'\n"));
    }

    #[test]
    fn injection_is_refused() {
        use Reason::*;
        let cases: &[(ScriptParams, &str, Reason)] = &[
            (
                params(|p| p.bootloader_id = "debian'; rm -rf / #".into()),
                "bootloader_id",
                BadCharacter('\''),
            ),
            (
                params(|p| p.bootloader_id = "$(reboot)".into()),
                "bootloader_id",
                BadCharacter('$'),
            ),
            (
                params(|p| p.bootloader_id = "a b".into()),
                "bootloader_id",
                BadCharacter(' '),
            ),
            (
                params(|p| p.bootloader_id = "deb\nian".into()),
                "bootloader_id",
                BadCharacter('\n'),
            ),
            (
                params(|p| p.bootloader_id = "de\\bian".into()),
                "bootloader_id",
                BadCharacter('\\'),
            ),
            (
                params(|p| p.bootloader_id = "debian/x".into()),
                "bootloader_id",
                BadCharacter('/'),
            ),
            (
                params(|p| p.bootloader_id = "débian".into()),
                "bootloader_id",
                BadCharacter('é'),
            ),
            (
                params(|p| p.bootloader_id = "-debian".into()),
                "bootloader_id",
                BadStart,
            ),
            (params(|p| p.bootloader_id = "..".into()), "bootloader_id", BadStart),
            (params(|p| p.bootloader_id = String::new()), "bootloader_id", Empty),
            (params(|p| p.bootloader_id = "x".repeat(65)), "bootloader_id", TooLong),
            (
                params(|p| p.log_path = "/var/log/x`id`".into()),
                "log_path",
                BadCharacter('`'),
            ),
            (
                params(|p| p.log_path = "/var/log/a'b".into()),
                "log_path",
                BadCharacter('\''),
            ),
            (
                params(|p| p.log_path = "/var/log/a\"b".into()),
                "log_path",
                BadCharacter('"'),
            ),
            (params(|p| p.log_path = "var/log/x".into()), "log_path", NotAbsolute),
            (params(|p| p.log_path = "/var/log/".into()), "log_path", BadComponent),
            (params(|p| p.log_path = "/var//log".into()), "log_path", BadComponent),
            (
                params(|p| p.log_path = "/var/../etc/passwd".into()),
                "log_path",
                BadComponent,
            ),
            (
                params(|p| p.log_path = "/root/.ovh/log".into()),
                "log_path",
                InsideOvhDir,
            ),
            (params(|p| p.log_path = "/".into()), "log_path", BadComponent),
            (
                params(|p| p.debs_dir = "/root/.ovh/debs;reboot".into()),
                "debs_dir",
                BadCharacter(';'),
            ),
            (
                params(|p| p.debs_dir = "/root/.ovh/*".into()),
                "debs_dir",
                BadCharacter('*'),
            ),
            (params(|p| p.debs_dir = String::new()), "debs_dir", Empty),
        ];
        for (p, field, reason) in cases {
            let err = try_render_debian(p).expect_err(&format!("{p:?} was accepted"));
            let ScriptError::InvalidParam {
                field: f, reason: r, ..
            } = &err;
            assert_eq!((f, r), (field, reason), "{p:?}: {err}");
        }
        let err = try_render_debian(&params(|p| p.bootloader_id = "a'b".into())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid bootloader_id \"a'b\" for make_image_bootable.sh: '\\'' is not allowed \
             (only ASCII letters, digits and ._-, plus / and + in paths)"
        );
    }

    #[test]
    #[should_panic(expected = "invalid bootloader_id")]
    fn render_panics_on_unvalidated_input() {
        render_debian(&ScriptParams::new("x;y"));
    }

    #[test]
    fn reasonable_values_are_accepted() {
        for p in [
            ScriptParams::new("ubuntu"),
            params(|p| p.bootloader_id = "my-distro_2.0".into()),
            params(|p| p.log_path = "/var/log/ovh/make-bootable.log".into()),
            params(|p| p.log_path = "/root/.ovh-log".into()),
            params(|p| p.debs_dir = "/var/cache/apt/archives".into()),
            params(|p| p.debs_dir = "/opt/g++/debs".into()),
        ] {
            try_render_debian(&p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
        }
    }

    #[test]
    fn snapshot_debian_default() {
        let script = render_debian(&ScriptParams::debian());
        insta::with_settings!({ snapshot_path => "testdata/snapshots", prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!("make_image_bootable_debian", script);
        });
    }

    /// CI installs shellcheck; a missing one fails the test instead of
    /// silently skipping the lint.
    #[test]
    fn snapshot_arch_and_rhel_default() {
        let arch = try_render_arch(&ScriptParams::new("arch")).unwrap();
        let rhel = try_render_rhel(&ScriptParams::new("rocky")).unwrap();
        insta::with_settings!({ snapshot_path => "testdata/snapshots", prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!("make_image_bootable_arch", arch);
            insta::assert_snapshot!("make_image_bootable_rhel", rhel);
        });
    }

    #[test]
    fn every_family_refuses_bad_parameters() {
        for render in [try_render_debian, try_render_arch, try_render_rhel] {
            assert!(render(&ScriptParams::new("x;y")).is_err());
        }
    }

    #[test]
    fn shellcheck_is_clean() {
        let mut scripts = Vec::new();
        for p in [ScriptParams::debian(), params(|p| p.efi_removable_fallback = true)] {
            scripts.push(render_debian(&p));
            scripts.push(try_render_arch(&p).unwrap());
            scripts.push(try_render_rhel(&p).unwrap());
        }
        for script in scripts {
            // Optional checks too; the one disabled check is justified in the script.
            let (status, out) = Cmd::new("shellcheck")
                .args(["--shell=bash", "--severity=style", "--enable=all", "--format=gcc", "-"])
                .stdin_bytes(script)
                .run_status()
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(
                status.success(),
                "shellcheck findings ({status}):\n{}{}",
                out.stdout_string(),
                out.tail
            );
        }
    }
}
