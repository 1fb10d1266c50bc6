//! Slow real tests of the QEMU runner and the `kiln boot` verdict: a real
//! Debian 12 (kernel, systemd, cloud-init) booted under TCG with a
//! generated NoCloud seed, until the login prompt and cloud-init's final
//! message appear. Needs root, mmdebstrap, a Debian mirror, QEMU and OVMF.
//!
//! Until kiln's `disk` target makes directly bootable images, the guest is a
//! bare ext4 filesystem (`mke2fs -d` of an mmdebstrap tree) booted with the
//! tree's own kernel and initrd (`-kernel/-initrd`). The tree is cached in
//! `target/tmp/boot-real/` across runs (about 2 minutes to build); the ext4
//! image is made fresh each run, so that "the image is unchanged" means
//! something.
//!
//! The BIOS boot also proves that the guest is isolated: its user data
//! (cloud-init runcmd) connects to a service of the test through a guest
//! forward, which must answer, then to a listener of the test on the host's
//! loopback that is not forwarded (at the host's address in QEMU's subnet,
//! 10.0.2.2) and resolves a name through QEMU's DNS server (10.0.2.3);
//! both must fail, and the listener must never see a connection.
//!
//! Run: `cargo test -p kiln-vm --test boot_real -- --ignored --nocapture`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_exec::Cmd;
use kiln_vm::boot::{boot, BootEvent, BootOptions, Ending, SeedSource};
use kiln_vm::{Accel, DirectBoot, Firmware, GuestForward, ImageFormat, Isolated, Network};
use sha2::{Digest, Sha256};

/// The bootstrap, also the cache key of the tree.
const MMDEBSTRAP: &[&str] = &[
    "--variant=important",
    "--include=linux-image-amd64,cloud-init,systemd-sysv",
    "bookworm",
];

/// One VM at a time: two TCG guests on two cores would each take twice as long.
static ONE_VM: Mutex<()> = Mutex::new(());

fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("boot-real")
}

/// The cached Debian tree, built on first use.
fn debian_tree() -> PathBuf {
    static TREE: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut cached = TREE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = &*cached {
        return t.clone();
    }
    let dir = cache_dir();
    let tree = dir.join("tree");
    let stamp = dir.join("tree.command");
    let key = MMDEBSTRAP.join(" ");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(key.as_str()) || !tree.join("boot").is_dir() {
        let part = dir.join("tree.part");
        for stale in [&tree, &part] {
            if stale.exists() {
                std::fs::remove_dir_all(stale).unwrap();
            }
        }
        std::fs::create_dir_all(&dir).unwrap();
        let started = Instant::now();
        eprintln!("building the Debian tree (mmdebstrap {key}); cached for later runs");
        Cmd::new("mmdebstrap")
            .args(MMDEBSTRAP)
            .arg(&part)
            .log_to(dir.join("mmdebstrap.log"))
            .run()
            .expect("mmdebstrap (see target/tmp/boot-real/mmdebstrap.log)");
        std::fs::rename(&part, &tree).unwrap();
        std::fs::write(&stamp, &key).unwrap();
        eprintln!("tree built in {:.0?}", started.elapsed());
    }
    *cached = Some(tree.clone());
    tree
}

/// The newest `prefix*` file in the tree's /boot.
fn boot_file(tree: &Path, prefix: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir(tree.join("boot"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| panic!("no {prefix}* in {}/boot", tree.display()))
}

/// A fresh ext4 image of the tree, labelled and sized with room to spare.
fn root_image(tree: &Path, out: &Path) {
    Cmd::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "kiln-root", "-d"])
        .arg(tree)
        .arg(out)
        .arg("1536M")
        .run()
        .unwrap();
}

fn sha256(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("{:x}", h.finalize())
}

/// Where the guest reaches the test's service, through a guest forward.
const FORWARDED_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
const FORWARDED_PORT: u16 = 8080;

/// The test's side of the isolation probe: a service that the guest
/// reaches through a forward, answering each connection with a token that
/// appears nowhere in the user data, and a listener that is not forwarded.
struct Probe {
    token: String,
    forwarded_port: u16,
    served: Arc<AtomicUsize>,
    unforwarded: TcpListener,
}

impl Probe {
    fn start() -> Probe {
        let service = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let unforwarded = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        unforwarded.set_nonblocking(true).unwrap();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let token = format!("forwarded-{}-{nanos}", std::process::id());
        let served = Arc::new(AtomicUsize::new(0));
        let forwarded_port = service.local_addr().unwrap().port();
        let (reply, count) = (format!("{token}\n"), served.clone());
        // Serves until the test process ends.
        std::thread::spawn(move || {
            for conn in service.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut line = String::new();
                let _ = BufReader::new(&conn).read_line(&mut line);
                let _ = conn.write_all(reply.as_bytes());
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        Probe {
            token,
            forwarded_port,
            served,
            unforwarded,
        }
    }

    fn network(&self) -> Network {
        Network::Isolated(
            Isolated::new()
                .guest_forward(GuestForward {
                    addr: FORWARDED_ADDR,
                    port: FORWARDED_PORT,
                    host_port: self.forwarded_port,
                })
                .unwrap(),
        )
    }

    /// cloud-init user data that runs the probes and prints their results
    /// on the console as `KILN-PROBE name=value`: what the forward
    /// answered, and the exit status of the connection to the listener
    /// that is not forwarded and of the name lookup.
    fn user_data(&self) -> String {
        let host = kiln_vm::Subnet::DEFAULT.host();
        // QEMU's own DNS server, named here so that the probe does not
        // depend on what DHCP wrote into the guest's resolv.conf.
        let dns = kiln_vm::Subnet::DEFAULT.dns();
        let port = self.unforwarded.local_addr().unwrap().port();
        format!(
            r#"#cloud-config
runcmd:
  - - bash
    - -c
    - |
      exec >/dev/console 2>&1
      reply=$(timeout 30 bash -c 'exec 3<>/dev/tcp/{FORWARDED_ADDR}/{FORWARDED_PORT} && echo hello >&3 && head -n 1 <&3')
      echo "KILN-PROBE forwarded=$reply"
      timeout 30 bash -c 'exec 3<>/dev/tcp/{host}/{port}'
      echo "KILN-PROBE host=$?"
      echo "nameserver {dns}" >/etc/resolv.conf
      timeout 30 getent hosts deb.debian.org
      echo "KILN-PROBE dns=$?"
"#
        )
    }

    /// Console patterns the boot must show: the forward's answer, and the
    /// exit statuses of the other two probes (digits, which the user data
    /// itself does not contain there).
    fn expect(&self) -> Vec<String> {
        vec![
            format!("KILN-PROBE forwarded={}", self.token),
            r"KILN-PROBE host=\d+".to_owned(),
            r"KILN-PROBE dns=\d+".to_owned(),
        ]
    }

    fn check(&self, console: &str) {
        let status = |name: &str| -> u32 {
            let prefix = format!("KILN-PROBE {name}=");
            console
                .lines()
                .find_map(|l| l.split_once(&prefix).map(|(_, v)| v.trim().to_owned()))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {prefix}<status> on the console"))
        };
        let host = status("host");
        let dns = status("dns");
        eprintln!("isolation probe: the forward answered; connection to the host exited {host}, name lookup {dns}");
        assert!(
            self.served.load(Ordering::SeqCst) >= 1,
            "the forwarded service saw no connection"
        );
        assert_ne!(
            host, 0,
            "the guest reached a listener on the host that was not forwarded"
        );
        assert_ne!(dns, 0, "the guest resolved a name");
        match self.unforwarded.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("the listener that is not forwarded saw a connection: {other:?}"),
        }
    }
}

fn boot_debian(firmware: Firmware, probe_isolation: bool) {
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let tree = debian_tree();
    let work = tempfile::tempdir_in(cache_dir()).unwrap();
    let image = work.path().join("root.ext4");
    let t = Instant::now();
    root_image(&tree, &image);
    eprintln!("mke2fs -d: {:.1?}", t.elapsed());
    let before = sha256(&image);

    let mut opts = BootOptions::new(&image, work.path().join("console.log"));
    opts.format = Some(ImageFormat::Raw);
    opts.firmware = firmware;
    opts.accel = Some(Accel::Tcg);
    opts.timeout = Duration::from_secs(if probe_isolation { 300 } else { 240 });
    // systemd's own status lines stop once getty owns the console, so
    // extra expectations look at the kernel and cloud-init instead.
    opts.expect = vec![r"Linux version 6\.\d+".to_owned(), "DataSourceNoCloud".to_owned()];
    if probe_isolation && !kiln_exec::testing::require_tool_or_skip(kiln_vm::network::SOCAT) {
        return;
    }
    let probe = probe_isolation.then(Probe::start);
    if let Some(p) = &probe {
        opts.net = p.network();
        opts.seed = SeedSource::Generate {
            user_data: Some(p.user_data().into_bytes()),
            ssh_keys: Vec::new(),
            hostname: None,
        };
        opts.expect.extend(p.expect());
    }
    opts.direct_boot = Some(DirectBoot {
        kernel: boot_file(&tree, "vmlinuz-"),
        initrd: Some(boot_file(&tree, "initrd.img-")),
        append: "root=/dev/vda rw console=ttyS0 panic=-1".to_owned(),
    });
    let verdict = boot(&opts, &mut |e| match e {
        BootEvent::Started { command, .. } => eprintln!("started: {command}"),
        BootEvent::Seen(s) => eprintln!("[{:5.1} s] seen {}: {}", s.at.as_secs_f64(), s.name, s.line.trim()),
        BootEvent::Waiting { elapsed } => eprintln!("[{:5.1} s] waiting", elapsed.as_secs_f64()),
        BootEvent::Accel(_) | BootEvent::Imds { .. } => {}
    })
    .unwrap();
    eprintln!(
        "{} {}: {} (network: {})",
        if verdict.passed { "PASS" } else { "FAIL" },
        firmware.name(),
        verdict.summary(),
        verdict.network
    );
    if !verdict.passed {
        eprintln!("--- last console lines:\n{}", verdict.tail.join("\n"));
    }
    assert!(verdict.passed, "{}", verdict.summary());
    assert_eq!(verdict.ending, Ending::AllSeen);
    assert!(verdict.checks.iter().all(|c| c.seen_at.is_some()));
    let console = String::from_utf8_lossy(&std::fs::read(work.path().join("console.log")).unwrap()).into_owned();
    assert!(
        console.contains("DataSourceNoCloud"),
        "cloud-init did not read the generated NoCloud seed"
    );
    if let Some(p) = &probe {
        p.check(&console);
    }
    assert_eq!(sha256(&image), before, "snapshot mode changed the image");
}

#[test]
#[ignore = "slow: boots a VM under TCG"]
fn debian_bios_direct_kernel_boot_reaches_login_and_cloud_init_isolated() {
    boot_debian(Firmware::Bios, true);
}

#[test]
#[ignore = "slow: boots a VM under TCG"]
fn debian_uefi_direct_kernel_boot_reaches_login_and_cloud_init() {
    boot_debian(Firmware::Uefi, false);
}
