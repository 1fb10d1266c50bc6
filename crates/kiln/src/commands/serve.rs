//! `kiln serve`.

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::Result;
use kiln_deploy::serve::{self, FileServer};

use crate::cli::ServeArgs;
use crate::exit::{usage, Exit, Usage};
use crate::output::outln;

pub(crate) fn run(args: ServeArgs) -> Result<Exit> {
    if !args.dir.is_dir() {
        return Err(Usage::msg(format!("{}: no such directory", args.dir.display())).into());
    }
    let files = serve::artifacts(&args.dir).map_err(usage)?;
    // The access log: stderr, one line per request, never a credential.
    let log: serve::AccessLog = Arc::new(|a: &serve::Access| eprintln!("{a}"));
    let server = FileServer::start(&args.dir, &args.bind, args.auth.clone(), log).map_err(usage)?;
    let addr = server.addr();
    let host = match addr.ip() {
        ip if ip.is_unspecified() => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "HOST".to_owned()),
        IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let base = format!("http://{host}:{}", addr.port());
    outln!("serving {} on {base}/ (Ctrl-C to stop)", server.root().display())?;
    if files.is_empty() {
        outln!("  (the directory has no files yet)")?;
    }
    for f in &files {
        let escaped: String = f
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        outln!("  {base}/{escaped}")?;
    }
    if let Some(auth) = &args.auth {
        outln!("downloads need the header (kiln deploy ovh --http-header):")?;
        outln!("  'Authorization: {}'", auth.header_value())?;
    }
    if addr.ip().is_loopback() {
        tracing::info!(
            "note: {addr} is reachable from this machine only; --bind 0.0.0.0:{} exposes it",
            addr.port()
        );
    }
    server.wait_for_interrupt();
    eprintln!("kiln: stopped serving");
    Ok(Exit::Success)
}
