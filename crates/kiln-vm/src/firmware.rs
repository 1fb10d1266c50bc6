//! Firmware for a VM: SeaBIOS (QEMU's built-in default) for BIOS boots, and
//! OVMF for UEFI boots.
//!
//! OVMF is found the way libvirt finds it: through the QEMU firmware
//! descriptors (`/usr/share/qemu/firmware/*.json`, overridable from
//! `/etc/qemu/firmware`), taking the first x86_64 UEFI flash image for q35
//! without Secure Boot; then through well-known paths of Debian, Fedora and
//! Arch. `KILN_OVMF_CODE` and `KILN_OVMF_VARS` override both. Each run gets a
//! private copy of the variable store template, so NVRAM always starts empty
//! and no boot entry leaks from one test into the next. Non-goals: Secure
//! Boot with enrolled keys, SMM, firmware for other architectures.
//!
//! [`Firmware`] is the spec's own type: the words `bios` and `uefi` mean the
//! same in a spec, on the command line and here, so there is one type.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Result, VmError};

/// Which firmware the VM boots with: BIOS is SeaBIOS, UEFI is OVMF without
/// Secure Boot.
pub use kiln_spec::Firmware;

/// An OVMF build: read-only code and the template of its variable store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ovmf {
    pub code: PathBuf,
    pub vars_template: PathBuf,
    /// Block format of both files for `-drive if=pflash` (`raw` on Debian).
    pub format: String,
}

/// Where QEMU's firmware descriptors live, lowest precedence first: a file
/// in a later directory replaces the file of the same name in an earlier one.
const DESCRIPTOR_DIRS: &[&str] = &["/usr/share/qemu/firmware", "/etc/qemu/firmware"];

/// Code and variable-store templates at their usual paths, for systems
/// without descriptors: Debian/Ubuntu (4 MiB, then 2 MiB), Fedora, Arch.
const WELL_KNOWN: &[(&str, &str)] = &[
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
    (
        "/usr/share/edk2/x64/OVMF_CODE.4m.fd",
        "/usr/share/edk2/x64/OVMF_VARS.4m.fd",
    ),
];

/// Finds OVMF on this machine.
pub fn find_ovmf() -> Result<Ovmf> {
    let code = std::env::var_os("KILN_OVMF_CODE");
    let vars = std::env::var_os("KILN_OVMF_VARS");
    match (code, vars) {
        (Some(code), Some(vars)) => {
            let ovmf = Ovmf {
                code: code.into(),
                vars_template: vars.into(),
                format: "raw".to_owned(),
            };
            crate::error::require_file("OVMF code (KILN_OVMF_CODE)", &ovmf.code)?;
            crate::error::require_file("OVMF variable store (KILN_OVMF_VARS)", &ovmf.vars_template)?;
            Ok(ovmf)
        }
        (None, None) => {
            let dirs: Vec<PathBuf> = DESCRIPTOR_DIRS.iter().map(PathBuf::from).collect();
            find_ovmf_in(&dirs, WELL_KNOWN)
        }
        _ => Err(VmError::Config(
            "set both KILN_OVMF_CODE and KILN_OVMF_VARS, or neither".to_owned(),
        )),
    }
}

/// [`find_ovmf`] over the given descriptor directories and fallbacks.
pub(crate) fn find_ovmf_in(descriptor_dirs: &[PathBuf], well_known: &[(&str, &str)]) -> Result<Ovmf> {
    for path in descriptor_files(descriptor_dirs) {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        match serde_json::from_str::<Descriptor>(&text) {
            Ok(d) => {
                if let Some(ovmf) = d.plain_uefi_flash() {
                    if ovmf.code.is_file() && ovmf.vars_template.is_file() {
                        tracing::debug!("OVMF from {}: {}", path.display(), ovmf.code.display());
                        return Ok(ovmf);
                    }
                }
            }
            Err(e) => tracing::debug!("ignoring firmware descriptor {}: {e}", path.display()),
        }
    }
    for (code, vars) in well_known {
        if Path::new(code).is_file() && Path::new(vars).is_file() {
            return Ok(Ovmf {
                code: code.into(),
                vars_template: vars.into(),
                format: "raw".to_owned(),
            });
        }
    }
    let mut looked: Vec<String> = descriptor_dirs
        .iter()
        .map(|d| format!("{}/*.json", d.display()))
        .collect();
    looked.extend(well_known.iter().map(|(c, _)| (*c).to_owned()));
    Err(VmError::FirmwareMissing {
        looked: looked.join(", "),
    })
}

/// Descriptor files in the order QEMU's spec (docs/interop/firmware.json)
/// gives them: by file name, a later directory shadowing an earlier one.
fn descriptor_files(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut by_name = std::collections::BTreeMap::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if Path::new(&name).extension().is_some_and(|x| x == "json") {
                by_name.insert(name, e.path());
            }
        }
    }
    by_name.into_values().collect()
}

/// The parts of a QEMU firmware descriptor kiln reads.
#[derive(Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "interface-types")]
    interface_types: Vec<String>,
    mapping: Mapping,
    targets: Vec<Target>,
    #[serde(default)]
    features: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Mapping {
    device: String,
    executable: Option<FlashFile>,
    #[serde(rename = "nvram-template")]
    nvram_template: Option<FlashFile>,
}

#[derive(Debug, Deserialize)]
struct FlashFile {
    filename: PathBuf,
    format: String,
}

#[derive(Debug, Deserialize)]
struct Target {
    architecture: String,
    machines: Vec<String>,
}

/// Features that make a build unsuitable for a plain test boot: Secure Boot
/// needs SMM and signed loaders, enrolled keys refuse unsigned ones.
const UNWANTED_FEATURES: &[&str] = &[
    "secure-boot",
    "enrolled-keys",
    "requires-smm",
    "amd-sev-es",
    "intel-tdx",
];

impl Descriptor {
    fn plain_uefi_flash(&self) -> Option<Ovmf> {
        let q35 = self
            .targets
            .iter()
            .any(|t| t.architecture == "x86_64" && t.machines.iter().any(|m| m.starts_with("pc-q35") || m == "q35"));
        let unwanted = self.features.iter().any(|f| UNWANTED_FEATURES.contains(&f.as_str()));
        if !q35 || unwanted || self.mapping.device != "flash" || !self.interface_types.iter().any(|i| i == "uefi") {
            return None;
        }
        let code = self.mapping.executable.as_ref()?;
        let vars = self.mapping.nvram_template.as_ref()?;
        if code.format != vars.format {
            return None;
        }
        Some(Ovmf {
            code: code.filename.clone(),
            vars_template: vars.filename.clone(),
            format: code.format.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian bookworm's `ovmf` package, /usr/share/qemu/firmware/60-edk2-x86_64.json.
    const DEBIAN_PLAIN: &str = r#"{
        "description": "UEFI firmware for x86_64, without Secure Boot without SMM, with empty varstore",
        "interface-types": ["uefi"],
        "mapping": {
            "device": "flash",
            "executable": {"filename": "CODE", "format": "raw"},
            "nvram-template": {"filename": "VARS", "format": "raw"}
        },
        "targets": [{"architecture": "x86_64", "machines": ["pc-i440fx-*", "pc-q35-*"]}],
        "features": ["acpi-s3", "amd-sev", "verbose-dynamic"],
        "tags": []
    }"#;

    /// The same package's 40-edk2-x86_64-secure-enrolled.json, abridged.
    const DEBIAN_SECURE: &str = r#"{
        "interface-types": ["uefi"],
        "mapping": {
            "device": "flash",
            "executable": {"filename": "SCODE", "format": "raw"},
            "nvram-template": {"filename": "SVARS", "format": "raw"}
        },
        "targets": [{"architecture": "x86_64", "machines": ["pc-q35-*"]}],
        "features": ["acpi-s3", "enrolled-keys", "requires-smm", "secure-boot", "verbose-dynamic"]
    }"#;

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        /// Writes a file under the fixture, with `CODE`/`VARS`-style names
        /// replaced by absolute paths inside it.
        fn write(&self, rel: &str, text: &str) -> PathBuf {
            let path = self.dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let mut text = text.to_owned();
            for name in ["SCODE", "SVARS", "CODE", "VARS"] {
                text = text.replace(
                    &format!("\"{name}\""),
                    &format!("\"{}\"", self.dir.path().join("fw").join(name).display()),
                );
            }
            std::fs::write(&path, text).unwrap();
            path
        }

        fn firmware(&self, name: &str) -> PathBuf {
            self.write(&format!("fw/{name}"), "firmware")
        }

        fn dirs(&self) -> Vec<PathBuf> {
            vec![self.dir.path().join("share"), self.dir.path().join("etc")]
        }
    }

    #[test]
    fn descriptor_skips_secure_boot_and_takes_the_plain_build() {
        let f = Fixture::new();
        for name in ["CODE", "VARS", "SCODE", "SVARS"] {
            f.firmware(name);
        }
        f.write("share/40-edk2-x86_64-secure-enrolled.json", DEBIAN_SECURE);
        f.write("share/60-edk2-x86_64.json", DEBIAN_PLAIN);
        let ovmf = find_ovmf_in(&f.dirs(), &[]).unwrap();
        assert_eq!(ovmf.code, f.dir.path().join("fw/CODE"));
        assert_eq!(ovmf.vars_template, f.dir.path().join("fw/VARS"));
        assert_eq!(ovmf.format, "raw");
    }

    #[test]
    fn descriptor_pointing_at_missing_files_falls_through_to_well_known_paths() {
        let f = Fixture::new();
        f.write("share/60-edk2-x86_64.json", DEBIAN_PLAIN);
        let code = f.firmware("code.fd");
        let vars = f.firmware("vars.fd");
        let well_known = [(code.to_str().unwrap(), vars.to_str().unwrap())];
        let ovmf = find_ovmf_in(&f.dirs(), &well_known).unwrap();
        assert_eq!((ovmf.code, ovmf.vars_template), (code, vars));
    }

    #[test]
    fn etc_descriptor_shadows_share_descriptor_of_the_same_name() {
        let f = Fixture::new();
        f.firmware("CODE");
        f.firmware("VARS");
        f.write("share/60-edk2-x86_64.json", DEBIAN_PLAIN);
        // An admin disables the packaged descriptor with an empty file.
        f.write("etc/60-edk2-x86_64.json", "");
        let err = find_ovmf_in(&f.dirs(), &[]).unwrap_err();
        assert!(matches!(err, VmError::FirmwareMissing { .. }), "{err}");
    }

    #[test]
    fn missing_ovmf_says_which_package_to_install() {
        let f = Fixture::new();
        let err = find_ovmf_in(&f.dirs(), &[("/nonexistent/OVMF_CODE.fd", "/nonexistent/OVMF_VARS.fd")]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("install the Debian package `ovmf`"), "{msg}");
        assert!(msg.contains("/nonexistent/OVMF_CODE.fd"), "{msg}");
    }

    #[test]
    fn finds_the_machines_ovmf_when_installed() {
        let installed = Path::new("/usr/share/qemu/firmware").is_dir() || Path::new(WELL_KNOWN[0].0).is_file();
        if !kiln_exec::testing::require_or_skip(installed, "ovmf is not installed (install the Debian package `ovmf`)")
        {
            return;
        }
        let ovmf = find_ovmf().unwrap();
        assert!(ovmf.code.is_file() && ovmf.vars_template.is_file(), "{ovmf:?}");
    }
}
