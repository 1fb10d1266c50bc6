//! The body of `POST /dedicated/server/{serviceName}/reinstall`: the
//! build manifest's `ovhReinstall` template (operating system, checksum,
//! EFI bootloader path) with its placeholders dropped, plus what the user
//! passes, checked against OVH's schema and BYOLinux's own rules before
//! anything is sent.

use std::path::Path;

use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::schema::{Schemas, REINSTALL};

/// What the user adds to the manifest's template.
#[derive(Debug, Clone, Default)]
pub struct BodyOptions {
    pub image_url: String,
    pub hostname: Option<String>,
    pub ssh_key: Option<String>,
    /// `httpHeaders`: sent to the image server by OVH's installer.
    pub http_headers: Vec<(String, String)>,
    /// `configDriveUserData`, sent base64-encoded as OVH's guide asks.
    pub user_data: Option<Vec<u8>>,
    /// The `storage` JSON (an array, or one object).
    pub storage: Option<Value>,
    pub efi_bootloader_path: Option<String>,
}

/// A body that must not be sent; every problem is listed.
#[derive(Debug, thiserror::Error)]
#[error("the reinstall request is invalid, nothing was sent:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct InvalidBody {
    pub problems: Vec<String>,
}

/// What kiln takes from a build's manifest.json.
#[derive(Debug, Clone)]
pub struct ManifestView {
    pub template: Value,
    /// The image's own EFI bootloader path (`efiBootloaderPath`).
    pub efi_bootloader_path: Option<String>,
}

/// Reads the parts of a manifest the deploy needs; a manifest without
/// `ovhReinstall` (no ovh-byol target) is refused with what to do.
pub fn read_manifest(path: &Path) -> Result<ManifestView, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "reading the build manifest {}: {e} (pass --manifest, the manifest.json of the build that made the image)",
            path.display()
        )
    })?;
    let manifest: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not a kiln manifest: {e}", path.display()))?;
    let template = manifest.get("ovhReinstall").cloned().ok_or_else(|| {
        format!(
            "{} has no ovhReinstall body: it is the manifest of a build without an ovh-byol target; build a spec with [targets.ovh-byol]",
            path.display()
        )
    })?;
    Ok(ManifestView {
        template,
        efi_bootloader_path: manifest
            .get("efiBootloaderPath")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// Whether a template value is one of the manifest's `REPLACE-WITH-…`
/// placeholders, which are there for people filling the body by hand.
fn is_placeholder(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.starts_with("REPLACE-WITH-"))
}

/// Builds the body and checks it: OVH's schema, then BYOLinux's rules.
pub fn build_body(manifest: &ManifestView, opts: &BodyOptions) -> Result<Value, InvalidBody> {
    let mut body = manifest.template.clone();
    let mut problems = Vec::new();
    if let Some(obj) = body.as_object_mut() {
        let custom = obj.entry("customizations").or_insert_with(|| json!({}));
        if let Some(c) = custom.as_object_mut() {
            c.retain(|_, v| !is_placeholder(v));
            c.insert("imageURL".into(), Value::String(opts.image_url.clone()));
            let mut set = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    c.insert(k.into(), v);
                }
            };
            set("hostname", opts.hostname.clone().map(Value::String));
            set("sshKey", opts.ssh_key.clone().map(Value::String));
            set(
                "configDriveUserData",
                opts.user_data
                    .as_ref()
                    .map(|d| Value::String(base64::engine::general_purpose::STANDARD.encode(d))),
            );
            set("efiBootloaderPath", opts.efi_bootloader_path.clone().map(Value::String));
            if !opts.http_headers.is_empty() {
                let headers: Map<String, Value> = opts
                    .http_headers
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect();
                c.insert("httpHeaders".into(), Value::Object(headers));
            }
        }
        if let Some(storage) = &opts.storage {
            let list = match storage {
                Value::Array(_) => storage.clone(),
                other => Value::Array(vec![other.clone()]),
            };
            obj.insert("storage".into(), list);
        }
    } else {
        problems.push("the manifest's ovhReinstall is not a JSON object".to_owned());
    }
    problems.extend(validate(&body, manifest.efi_bootloader_path.as_deref()));
    if problems.is_empty() {
        Ok(body)
    } else {
        Err(InvalidBody { problems })
    }
}

/// Every reason `body` must not be sent: OVH's schema, then what BYOLinux
/// needs beyond it (the schema leaves every customization optional), and
/// the image's own EFI bootloader path when known.
pub fn validate(body: &Value, image_efi_path: Option<&str>) -> Vec<String> {
    let mut problems: Vec<String> = Schemas::reinstall()
        .validate(REINSTALL, body)
        .iter()
        .map(|v| format!("{v} (OVH's schema {REINSTALL})"))
        .collect();
    let custom = &body["customizations"];
    if body["operatingSystem"].as_str() == Some("byolinux_64") {
        match custom.get("imageURL").and_then(Value::as_str) {
            None => problems.push(
                "customizations.imageURL: is required for byolinux_64 (where OVH's installer downloads the image)"
                    .into(),
            ),
            Some(url) if !(url.starts_with("https://") || url.starts_with("http://")) => problems.push(format!(
                "customizations.imageURL: {url:?} is not an http:// or https:// URL that OVH's installer can download"
            )),
            Some(url) if url.contains("REPLACE-WITH-") => problems.push(format!(
                "customizations.imageURL: {url:?} is the manifest's placeholder; pass --image-url"
            )),
            Some(_) => {}
        }
        if custom.get("postInstallationScript").is_some() {
            problems.push(
                "customizations.postInstallationScript: BYOLinux does not run it; put commands in cloud-init user data (--user-data) instead"
                    .into(),
            );
        }
    }
    if custom.get("imageCheckSum").is_some() != custom.get("imageCheckSumType").is_some() {
        problems.push("customizations: imageCheckSum and imageCheckSumType go together (OVH refuses one alone)".into());
    }
    if let (Some(want), Some(have)) = (custom.get("efiBootloaderPath").and_then(Value::as_str), image_efi_path) {
        if !want.eq_ignore_ascii_case(have) {
            problems.push(format!(
                "customizations.efiBootloaderPath: {want:?} is not in the image, whose bootloader is {have:?} (the manifest's efiBootloaderPath): \
                 a UEFI server would not boot; drop --efi-bootloader-path or pass {have:?}"
            ));
        }
    }
    problems
}

/// A copy of `body` fit to print or log: header values masked, and the
/// user data (which may hold passwords or tokens) reduced to its size.
pub fn masked(body: &Value) -> Value {
    let mut b = body.clone();
    if let Some(ud) = b["customizations"].get_mut("configDriveUserData") {
        let len = ud.as_str().map(str::len).unwrap_or_default();
        *ud = Value::String(format!("({len} characters of base64, not shown)"));
    }
    if let Some(headers) = b["customizations"]
        .get_mut("httpHeaders")
        .and_then(Value::as_object_mut)
    {
        for v in headers.values_mut() {
            *v = Value::String(super::config::mask(v.as_str().unwrap_or_default()));
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> ManifestView {
        ManifestView {
            template: kiln_build::manifest::ovh_reinstall_template("\\efi\\debian\\grubx64.efi", "ab12", "i.qcow2"),
            efi_bootloader_path: Some("\\efi\\debian\\grubx64.efi".into()),
        }
    }

    fn opts() -> BodyOptions {
        BodyOptions {
            image_url: "https://images.example/i.qcow2".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_template_loses_its_placeholders_and_gains_the_options() {
        let body = build_body(&manifest(), &opts()).unwrap();
        assert_eq!(
            body,
            json!({"operatingSystem": "byolinux_64", "customizations": {
                "imageURL": "https://images.example/i.qcow2", "imageCheckSum": "ab12",
                "imageCheckSumType": "sha512", "efiBootloaderPath": "\\efi\\debian\\grubx64.efi"}})
        );
        let full = build_body(
            &manifest(),
            &BodyOptions {
                hostname: Some("web1".into()),
                ssh_key: Some("ssh-ed25519 AAAA me".into()),
                http_headers: vec![("Authorization".into(), "Basic dXNlcjpwYXNz".into())],
                user_data: Some(b"#cloud-config\n".to_vec()),
                storage: Some(json!({"partitioning": {"layout": [{"fileSystem": "ext4", "mountPoint": "/"}]}})),
                ..opts()
            },
        )
        .unwrap();
        let c = &full["customizations"];
        assert_eq!(c["hostname"], "web1");
        assert_eq!(c["sshKey"], "ssh-ed25519 AAAA me");
        assert_eq!(c["httpHeaders"]["Authorization"], "Basic dXNlcjpwYXNz");
        assert_eq!(c["configDriveUserData"], "I2Nsb3VkLWNvbmZpZwo=");
        assert_eq!(full["storage"][0]["partitioning"]["layout"][0]["mountPoint"], "/");
        assert_eq!(
            masked(&full)["customizations"]["httpHeaders"]["Authorization"],
            "Basi****"
        );
    }

    #[test]
    fn bad_bodies_are_refused_with_every_reason() {
        let refuse = |o: BodyOptions, m: ManifestView| build_body(&m, &o).unwrap_err().to_string();
        let err = refuse(
            BodyOptions {
                efi_bootloader_path: Some("\\efi\\ubuntu\\grubx64.efi".into()),
                storage: Some(
                    json!([{"partitioning": {"layout": [{"fileSystem": "ext4", "mountPoint": "/", "raidlevel": 1}]}}]),
                ),
                ..opts()
            },
            manifest(),
        );
        assert!(
            err.starts_with("the reinstall request is invalid, nothing was sent:"),
            "{err}"
        );
        assert!(
            err.contains("storage[0].partitioning.layout[0].raidlevel: unknown field; did you mean `raidLevel`?"),
            "{err}"
        );
        assert!(
            err.contains("\"\\\\efi\\\\ubuntu\\\\grubx64.efi\" is not in the image"),
            "{err}"
        );

        let err = refuse(
            BodyOptions {
                storage: Some(json!([{"partitioning": {"disks": "two"}}])),
                ..opts()
            },
            manifest(),
        );
        assert!(
            err.contains("storage[0].partitioning.disks: must be an integer"),
            "{err}"
        );

        let err = refuse(
            BodyOptions {
                image_url: "ftp://x/i.qcow2".into(),
                ..opts()
            },
            manifest(),
        );
        assert!(err.contains("is not an http:// or https:// URL"), "{err}");

        // A template that lost its imageURL and gained a stray field.
        let mut body = build_body(&manifest(), &opts()).unwrap();
        body["customizations"].as_object_mut().unwrap().remove("imageURL");
        body["customizations"]["imageCheckSumType"] = json!(512);
        let problems = validate(&body, None).join("\n");
        assert!(
            problems.contains("customizations.imageURL: is required for byolinux_64"),
            "{problems}"
        );
        assert!(
            problems.contains("customizations.imageCheckSumType: must be a string"),
            "{problems}"
        );
    }

    #[test]
    fn a_manifest_without_an_ovh_target_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("manifest.json");
        std::fs::write(&p, r#"{"name": "x", "artifacts": []}"#).unwrap();
        assert!(read_manifest(&p).unwrap_err().contains("[targets.ovh-byol]"));
        assert!(read_manifest(&dir.path().join("none.json"))
            .unwrap_err()
            .contains("pass --manifest"));
    }
}
