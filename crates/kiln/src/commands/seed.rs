//! `kiln seed`: reads the user's files, hands them to `kiln_vm::seed` and
//! says what was written.

use std::path::Path;

use anyhow::{Context, Result};
use kiln_vm::seed::{render_seed, Datasource, SeedConfig, SeedFs};

use crate::cli::{self, SeedArgs};
use crate::exit::{usage, Exit};
use crate::output::outln;

pub(crate) fn run(args: SeedArgs) -> Result<Exit> {
    let datasource = match args.datasource {
        cli::Datasource::Nocloud => Datasource::NoCloud,
        cli::Datasource::Configdrive => Datasource::ConfigDrive,
    };
    let fs = match args.fs {
        cli::SeedFs::Iso => SeedFs::Iso,
        cli::SeedFs::Vfat => SeedFs::Vfat,
    };
    let mut cfg = SeedConfig::new(datasource, fs);
    cfg.user_data = read(args.user_data.as_deref(), "user data").map_err(usage)?;
    cfg.meta_data = read(args.meta_data.as_deref(), "meta data").map_err(usage)?;
    cfg.network_config = read(args.network_config.as_deref(), "network config").map_err(usage)?;
    cfg.hostname = args.hostname;
    cfg.instance_id = args.instance_id;
    cfg.ssh_keys = args.ssh_keys;
    cfg.metadata = args.metadata;

    // Rendering only validates and lays out; nothing is written yet.
    let seed = render_seed(&cfg).map_err(usage)?;
    seed.write(&args.output)?;

    let (fs_name, ds_name) = (
        match fs {
            SeedFs::Iso => "ISO 9660",
            SeedFs::Vfat => "FAT",
        },
        match datasource {
            Datasource::NoCloud => "NoCloud",
            Datasource::ConfigDrive => "ConfigDrive",
        },
    );
    outln!(
        "wrote {}: {ds_name} seed, {fs_name}, label {}, instance-id {}",
        args.output.display(),
        seed.label,
        seed.instance_id
    )?;
    let width = seed.files.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
    for (path, bytes) in &seed.files {
        outln!("  {path:<width$}  {:>6} bytes", bytes.len())?;
    }
    Ok(Exit::Success)
}

fn read(path: Option<&Path>, what: &str) -> Result<Option<Vec<u8>>> {
    path.map(|p| std::fs::read(p).with_context(|| format!("reading {what} from {}", p.display())))
        .transpose()
}
