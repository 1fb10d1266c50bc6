//! Targets: what turns the customised tree into a deliverable (finalisation
//! of the tree, filesystem and disk layout, output format) and the contract
//! rules `kiln check` applies to a finished image.

pub mod disk;
pub mod ovh_byol;

/// Converts a raw disk into the output format (`raw` or `qcow2`), with
/// qcow2 compression when asked; `log` receives qemu-img's output.
pub fn convert_image(
    raw: &std::path::Path,
    dest: &std::path::Path,
    format: &str,
    compress: bool,
    log: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut cmd = kiln_exec::Cmd::new("qemu-img").args(["convert", "-f", "raw", "-O", format]);
    if compress {
        cmd = cmd.arg("-c");
    }
    cmd = cmd.arg(raw).arg(dest);
    if let Some(log) = log {
        cmd = cmd.log_to(log);
    }
    cmd.run()
        .with_context(|| format!("converting the disk to {format} ({})", dest.display()))?;
    Ok(())
}
