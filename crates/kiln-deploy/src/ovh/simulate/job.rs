//! The job disk: everything the installer in the rescue VM needs from the
//! host (the installer itself, the storage plan, the image URL, checksum and
//! headers, the config drive), as a small ext4 image attached read-only.

use std::path::Path;

use anyhow::{Context, Result};
use kiln_exec::cmd::shell_quote;
use kiln_exec::Cmd;

use super::INSTALLER;
use kiln_spec::ChecksumType;

use crate::ovh::storage::{DiskPlan, CONFIG_DRIVE_MIB};

/// What the installer is told.
pub struct JobParams<'a> {
    pub plan: &'a DiskPlan,
    pub image_url: &'a str,
    pub checksum: &'a str,
    pub checksum_type: ChecksumType,
    pub headers: &'a [(String, String)],
    /// A ready config drive filesystem image (vfat, label `config-2`).
    pub config_drive: &'a Path,
}

/// The `job.env` the installer sources.
pub fn job_env(p: &JobParams<'_>) -> String {
    let vars = [
        ("DISK_COUNT", p.plan.disks.to_string()),
        ("BOOT_MODE", p.plan.boot.name().to_owned()),
        ("USES_RAID", u8::from(p.plan.uses_raid).to_string()),
        ("CONFIG_DRIVE_MIB", CONFIG_DRIVE_MIB.to_string()),
        ("IMAGE_URL", p.image_url.to_owned()),
        ("CHECKSUM", p.checksum.to_owned()),
        ("CHECKSUM_TYPE", p.checksum_type.name().to_owned()),
    ];
    vars.iter().map(|(k, v)| format!("{k}={}\n", shell_quote(v))).collect()
}

/// Writes the job disk image to `dest`, using `scratch` for its contents.
pub fn write_job_disk(p: &JobParams<'_>, scratch: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(scratch)?;
    std::fs::write(scratch.join("installer.sh"), INSTALLER)?;
    std::fs::write(scratch.join("storage.sh"), &p.plan.script)?;
    std::fs::write(scratch.join("job.env"), job_env(p))?;
    let headers: String = p.headers.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
    std::fs::write(scratch.join("headers"), headers)?;
    std::fs::copy(p.config_drive, scratch.join("config-drive.img")).context("copying the config drive")?;
    let size = kiln_disk::mkfs::tree_size(scratch)? + (16 << 20);
    Cmd::new("mke2fs")
        .args(["-q", "-t", "ext4", "-L", "kilnjob", "-d"])
        .arg(scratch)
        .arg(dest)
        .arg(format!("{}k", size / 1024))
        .run()
        .context("making the job disk")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovh::storage::{default_layout, plan_disks};
    use kiln_spec::Firmware;

    #[test]
    fn env_is_shell_quoted() {
        let plan = plan_disks(&default_layout(), 2, Firmware::Uefi).unwrap();
        let (url, _) = super::super::image_route("x y.qcow2", 8080).unwrap();
        let env = job_env(&JobParams {
            plan: &plan,
            image_url: &url,
            checksum: "abc",
            checksum_type: ChecksumType::Sha512,
            headers: &[],
            config_drive: Path::new("/nonexistent"),
        });
        assert!(env.contains("IMAGE_URL='http://10.0.2.100:80/x y.qcow2'\n"), "{env}");
        assert!(env.contains("BOOT_MODE=uefi\n"), "{env}");
        assert!(env.contains("CHECKSUM_TYPE=sha512\n"), "{env}");
        assert!(env.contains("USES_RAID=1\n"), "{env}");
        kiln_exec::Cmd::new("sh").args(["-n", "-c", &env]).run().unwrap();
    }

    #[test]
    fn installer_scripts_are_shellcheck_clean() {
        for (name, text) in [
            ("installer.sh", INSTALLER),
            ("rescue-init.sh", super::super::rescue::INIT),
        ] {
            kiln_exec::Cmd::new("shellcheck")
                .args(["--shell=bash", "-"])
                .stdin_bytes(text)
                .run()
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn job_disk_holds_the_installer_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let cd = dir.path().join("cd.img");
        std::fs::write(&cd, b"fat bytes").unwrap();
        let plan = plan_disks(&default_layout(), 2, Firmware::Bios).unwrap();
        let headers = [("Authorization".to_owned(), "Basic abc".to_owned())];
        let p = JobParams {
            plan: &plan,
            image_url: &super::super::image_route("i.qcow2", 1).unwrap().0,
            checksum: "abc",
            checksum_type: ChecksumType::Sha512,
            headers: &headers,
            config_drive: &cd,
        };
        let img = dir.path().join("job.ext4");
        write_job_disk(&p, &dir.path().join("job"), &img).unwrap();
        let ls = kiln_exec::Cmd::new("debugfs")
            .args(["-R", "ls -l /"])
            .arg(&img)
            .run()
            .unwrap()
            .stdout_string();
        for f in ["installer.sh", "storage.sh", "job.env", "headers", "config-drive.img"] {
            assert!(ls.contains(f), "{f} missing: {ls}");
        }
        let h = kiln_exec::Cmd::new("debugfs")
            .args(["-R", "cat /headers"])
            .arg(&img)
            .run()
            .unwrap()
            .stdout_string();
        assert_eq!(h, "Authorization: Basic abc\n");
    }
}
