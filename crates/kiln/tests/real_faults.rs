//! Slow real tests: a fault at every stage of a build leaves nothing
//! behind. Each stage in turn is interrupted with SIGINT, SIGTERM and
//! SIGKILL of kiln itself; afterwards no mount, loop device, process or
//! partial output remains (after SIGKILL: once the next build has cleaned
//! up), and the next build reuses every stage that was whole (kiln verifies
//! each cache entry it reuses, so a torn entry would show as rebuilt). An
//! output directory on a full filesystem, and two builds of different specs
//! on one cache at once, are covered too.
//!
//! The specs are variants of the BYOL example on its SOURCE_DATE_EPOCH, so
//! that they stand on its cached bootstrap (which `real_build` and
//! `real_cache`, run before this file, leave in the shared cache). Root,
//! network to a Debian mirror:
//!
//!   cargo test -p kiln --test real_faults -- --ignored --test-threads=1

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::*;

const SIGNALS: [&str; 3] = ["INT", "TERM", "KILL"];

/// Where the slow tests' stage cache is (what [`kiln`] passes).
fn shared_cache() -> PathBuf {
    repo_root().join("target/tmp/cache")
}

/// A copy of the BYOL example in `dir` named `name`, edited by `edit`.
fn variant(dir: &Path, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    std::fs::create_dir_all(dir.join("files")).unwrap();
    std::fs::copy(example("files/motd"), dir.join("files/motd")).unwrap();
    let text = std::fs::read_to_string(example("debian-12-ovh-byol.toml")).unwrap();
    let text = text.replacen("name = \"debian-12-byol\"", &format!("name = \"{name}\""), 1);
    let spec = dir.join(format!("{name}.toml"));
    std::fs::write(&spec, edit(text)).unwrap();
    spec
}

/// The variant whose customisation and finalisation can be held up: with
/// `KILN_FAULT_WAIT=customise` (or `finalise`) in kiln's environment, which
/// its chroot steps inherit, that stage writes a line to the build log and
/// sleeps. Its [[run]] step is new on every run of the test (`nonce`), so
/// its customisation is never in the cache; its image is not compressed, so
/// that building it takes seconds.
fn held_up_variant(dir: &Path, nonce: u128) -> PathBuf {
    variant(dir, "kiln-faults", |text| {
        let step = format!(
            r#"echo "built by kiln (fault test {nonce})" > /etc/kiln-release
if [ "${{KILN_FAULT_WAIT:-}}" = customise ]; then echo "fault test: customise waits"; sleep 600; fi
# The finalisation runs debconf-set-selections from PATH: this comes first.
cat > /usr/local/bin/debconf-set-selections <<'EOS'
#!/bin/sh
if [ "${{KILN_FAULT_WAIT:-}}" = finalise ]; then echo "fault test: finalise waits"; sleep 600; fi
exec /usr/bin/debconf-set-selections "$@"
EOS
chmod 755 /usr/local/bin/debconf-set-selections
"#
        );
        let text = text.replacen("echo \"built by kiln\" > /etc/kiln-release\n", &step, 1);
        assert!(text.contains("fault test"), "the example's [[run]] step changed");
        format!("{text}compress = false\n")
    })
}

/// A `kiln build --log-format json` in the background: its events as they
/// come, its stderr in a file.
struct Build {
    child: Child,
    events: Receiver<serde_json::Value>,
    seen: Vec<serde_json::Value>,
    stderr: PathBuf,
    log: PathBuf,
}

impl Build {
    /// `hold`: an environment variable that holds the build up, e.g.
    /// `("KILN_FAULT_WAIT", "customise")` or `("KILN_FAULT_PAUSE", "checksums/partial")`.
    fn start(spec: &Path, out: &Path, hold: Option<(&str, &str)>) -> Build {
        // Not beside the output: that filesystem may be full.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stderr = std::env::temp_dir().join(format!("kiln-faults-{}-{n}.stderr", std::process::id()));
        let mut cmd = kiln();
        cmd.env("SOURCE_DATE_EPOCH", epoch())
            .args(["build", "--explain", "--log-format", "json", "--out"])
            .arg(out)
            .arg(spec)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap());
        if let Some((var, value)) = hold {
            cmd.env(var, value);
        }
        let name = std::fs::read_to_string(spec)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("name = \"").map(|n| n.trim_end_matches('"').to_owned()))
            .unwrap();
        // The last build's log says what this one waits to read.
        let log = out.join(format!("{name}-1.0.0.build.log"));
        let _ = std::fs::remove_file(&log);
        let mut child = cmd.spawn().unwrap();
        let (tx, events) = channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        Build {
            child,
            events,
            seen: Vec::new(),
            stderr,
            log,
        }
    }

    fn drain(&mut self) {
        while let Ok(v) = self.events.try_recv() {
            self.seen.push(v);
        }
    }

    /// Waits until `ready` holds (checked every 50 ms), failing if the build
    /// ends first.
    fn wait_until(&mut self, what: &str, ready: impl Fn(&Build) -> bool) {
        // A cold cache bootstraps first: minutes.
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            self.drain();
            if ready(self) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                self.drain();
                panic!(
                    "the build ended ({status}) before {what}:\n{:#?}\n{}",
                    self.seen,
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "timed out waiting for {what}: {:#?}\nthe build log {} ends:\n{}",
                    self.seen,
                    self.log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn started(&self, stage: &str) -> bool {
        self.seen
            .iter()
            .any(|e| e["event"] == "stage-start" && e["stage"] == stage)
    }

    /// Whether kiln said `needle` on stderr (a fault point says it waits).
    fn said(&self, needle: &str) -> bool {
        std::fs::read_to_string(&self.stderr).is_ok_and(|l| l.contains(needle))
    }

    fn logged(&self, needle: &str) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|l| l.contains(needle))
    }

    fn signal(&self, sig: &str) {
        let out = run(tool("kill").args(["-s", sig, &self.child.id().to_string()]));
        assert!(out.status.success(), "{}", text(&out));
    }

    fn finish(mut self) -> (ExitStatus, Vec<serde_json::Value>, String) {
        let status = self.child.wait().unwrap();
        // The reader thread ends with the pipe.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.events.recv_timeout(Duration::from_millis(200)) {
                Ok(v) => self.seen.push(v),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(_) => {}
            }
        }
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let _ = std::fs::remove_file(&self.stderr);
        (status, self.seen, stderr)
    }
}

fn epoch() -> String {
    static EPOCH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    EPOCH.get_or_init(example_epoch).clone()
}

fn status_of(events: &[serde_json::Value], stage: &str) -> String {
    events
        .iter()
        .rev()
        .find(|e| e["event"] == "stage-end" && e["stage"] == stage)
        .and_then(|e| e["status"].as_str())
        .unwrap_or("missing")
        .to_owned()
}

/// Fails if anything of a build into `out` is left: a mount below it or
/// below the cache, a loop device on a file there, a process working in it,
/// a work directory or partial file in it, an artifact or manifest. The
/// kernel tears a killed build's namespaces down asynchronously: a
/// process gets a few seconds to go.
fn assert_nothing_left(out: &Path, what: &str) {
    let cache = shared_cache().canonicalize().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut procs = processes_in(out);
    while !procs.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        procs = processes_in(out);
    }
    assert!(procs.is_empty(), "{what}: processes left: {procs:#?}");
    let mounts: Vec<String> = mounts_below(out).into_iter().chain(mounts_below(&cache)).collect();
    assert!(mounts.is_empty(), "{what}: mounts left: {mounts:?}");
    let loops = loops_backed_below(&[out, &cache]);
    assert!(loops.is_empty(), "{what}: loop devices left: {loops:?}");
    assert!(
        leftovers(out).is_empty(),
        "{what}: left in {}: {:?}",
        out.display(),
        leftovers(out)
    );
    let outputs: Vec<String> = std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".build.log"))
        .collect();
    assert!(
        outputs.is_empty(),
        "{what}: outputs of an unfinished build: {outputs:?}"
    );
}

/// A build that was interrupted ended as it should: exit status 130 and
/// "interrupted" for SIGINT and SIGTERM, killed for SIGKILL; `stage` was
/// running and did not finish.
fn assert_interrupted(sig: &str, stage: &str, done: (ExitStatus, Vec<serde_json::Value>, String)) {
    use std::os::unix::process::ExitStatusExt;
    let (status, events, stderr) = done;
    let what = format!("SIG{sig} in {stage}");
    if sig == "KILL" {
        assert_eq!(status.signal(), Some(9), "{what}: {status}\n{stderr}");
    } else {
        assert_eq!(status.code(), Some(130), "{what}: {status}\n{stderr}\n{events:#?}");
        assert!(stderr.contains("kiln: interrupted; cleaned up"), "{what}: {stderr}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    }
    assert!(
        !["ok", "reused"].contains(&status_of(&events, stage).as_str()),
        "{what}: {stage} finished before the signal: {events:#?}"
    );
}

/// The cache holds only whole entries of ours: none half-written (a
/// `.tmp-` directory of a process that is gone) and every entry with its
/// `entry.json`. (Their contents are verified by every build that reuses
/// them: a damaged one is rebuilt with "damaged" in its reason.)
fn assert_cache_whole() {
    let stages = shared_cache().join("stages");
    for e in std::fs::read_dir(&stages).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix(".tmp-") {
            let pid = rest.rsplit('-').nth(1).unwrap_or("0");
            assert!(
                Path::new("/proc").join(pid).exists(),
                "{name}: a half-written cache entry of a build that is gone"
            );
        } else if !name.starts_with('.') {
            // A concurrent build elsewhere renames only whole entries in.
            assert!(e.path().join("entry.json").is_file(), "{name} has no entry.json");
        }
    }
}

/// No stage of `events` was rebuilt because its entry was damaged, and
/// each of `reused` came from the cache.
fn assert_reused(events: &[serde_json::Value], reused: &[&str], what: &str) {
    for e in events.iter().filter(|e| e["event"] == "stage-rebuild") {
        let reason = e["reason"].as_str().unwrap_or("");
        assert!(!reason.contains("damaged"), "{what}: a torn cache entry: {e}");
    }
    for stage in reused {
        assert_eq!(status_of(events, stage), "reused", "{what}: {stage}: {events:#?}");
    }
}

/// The cache entries and records of the test's specs, removed at the end
/// (and at the start, after a run that failed half-way). Not a bootstrap:
/// the one they share with the example may have been stored by one of them.
fn forget_specs(prefix: &str) {
    let cache = shared_cache();
    let mut keys = Vec::new();
    for e in std::fs::read_dir(cache.join("stages")).into_iter().flatten().flatten() {
        let entry: Option<serde_json::Value> = std::fs::read(e.path().join("entry.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let ours = |en: &serde_json::Value| {
            en["spec"].as_str().is_some_and(|s| s.starts_with(prefix)) && en["stage"] != "bootstrap"
        };
        if let Some(entry) = entry.filter(ours) {
            keys.push(entry["key"].as_str().unwrap().to_owned());
        }
    }
    if !keys.is_empty() {
        let out = run(kiln().args(["cache", "rm"]).args(&keys));
        assert!(out.status.success(), "{}", text(&out));
    }
    for e in std::fs::read_dir(cache.join("records")).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Interrupts a build of `spec` into `out` with each signal in turn once
/// `ready` holds; after SIGINT and SIGTERM nothing is left at once, after
/// SIGKILL once the next build (the next round, or the caller's) started.
/// `reused`: the stages each round must take from the cache; `then`: the
/// ones the first round completes, which the others must take from it.
fn fault_rounds(
    spec: &Path,
    out: &Path,
    stage: &str,
    hold: Option<(&str, &str)>,
    (reused, then): (&[&str], &[&str]),
    ready: impl Fn(&Build) -> bool,
) {
    for (round, sig) in SIGNALS.into_iter().enumerate() {
        let reused: Vec<&str> = reused
            .iter()
            .chain(if round > 0 { then } else { &[] })
            .copied()
            .collect();
        let what = format!("SIG{sig} in {stage}");
        let started = Instant::now();
        let mut build = Build::start(spec, out, hold);
        build.wait_until(&format!("{stage} is running"), &ready);
        build.signal(sig);
        let done = build.finish();
        assert_reused(&done.1, &reused, &what);
        assert_interrupted(sig, stage, done);
        if sig == "KILL" {
            // Its processes and mounts die with it; its work directory
            // waits for the next build's clean-up.
            let work: Vec<String> = leftovers(out);
            assert!(
                work.iter().any(|w| w.starts_with(".kiln-work-")),
                "{what}: no work directory?"
            );
            let procs = {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let p = processes_in(out);
                    if p.is_empty() || Instant::now() > deadline {
                        break p;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            };
            assert!(procs.is_empty(), "{what}: processes outlived kiln: {procs:#?}");
            assert!(mounts_below(out).is_empty(), "{what}: {:?}", mounts_below(out));
            assert!(loops_backed_below(&[out]).is_empty(), "{what}");
        } else {
            assert_nothing_left(out, &what);
            assert_cache_whole();
        }
        eprintln!("=== {what}: {:.1}s", started.elapsed().as_secs_f64());
    }
}

#[test]
#[ignore = "slow: real builds of variants of the BYOL example, interrupted (root, network to a Debian mirror)"]
fn a_fault_at_every_stage_leaves_nothing_behind() {
    let started = Instant::now();
    let dir = tempfile::tempdir_in(repo_root().join("target")).unwrap();
    forget_specs("kiln-faults");
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();

    // Bootstrap: a package set no cached bootstrap is a subset of (less
    // dropped, tree added), interrupted once mmdebstrap installs packages
    // in its tree (with /proc, /sys and /dev mounted there).
    let boot_spec = variant(&dir.path().join("boot"), "kiln-faults-boot", |text| {
        text.replacen(
            "install = [\"curl\", \"less\", \"vim-tiny\"]",
            "install = [\"curl\", \"tree\", \"vim-tiny\"]",
            1,
        )
    });
    let boot_out = dir.path().join("boot-out");
    fault_rounds(&boot_spec, &boot_out, "bootstrap", None, (&[], &[]), |b| {
        b.started("bootstrap") && b.logged("I: installing essential packages")
    });

    // Customisation, then each stage of the target, of a variant that
    // stands on the example's bootstrap.
    let spec = held_up_variant(&dir.path().join("spec"), nonce);
    let out = dir.path().join("out");
    let (boot, cust, fin) = ("bootstrap", "customise", "ovh-byol/finalise");
    // (The first round bootstraps if the cache is cold.)
    fault_rounds(
        &spec,
        &out,
        cust,
        Some(("KILN_FAULT_WAIT", "customise")),
        (&[], &[boot]),
        |b| b.logged("fault test: customise waits"),
    );
    fault_rounds(
        &spec,
        &out,
        fin,
        Some(("KILN_FAULT_WAIT", "finalise")),
        (&[boot], &[cust]),
        |b| b.logged("fault test: finalise waits"),
    );
    fault_rounds(&spec, &out, "ovh-byol/filesystem", None, (&[boot, cust], &[fin]), |b| {
        b.started("ovh-byol/filesystem")
    });
    let whole = [boot, cust, fin];
    let conv = "ovh-byol/convert";
    // The partition table takes a millisecond: kiln's fault point holds
    // the stage up at its start.
    fault_rounds(
        &spec,
        &out,
        "ovh-byol/disk",
        Some(("KILN_FAULT_PAUSE", "ovh-byol/disk")),
        (&whole, &[]),
        |b| b.said("fault point ovh-byol/disk: waiting"),
    );
    fault_rounds(&spec, &out, "ovh-byol/convert", None, (&whole, &[]), |b| {
        b.started("ovh-byol/convert")
    });
    // The checksums, last: held up once the first artifact's copy and
    // .sha512 are written as .part files. After SIGKILL those wait for the
    // next build of this spec into this directory, which replaces them.
    fault_rounds(
        &spec,
        &out,
        "checksums",
        Some(("KILN_FAULT_PAUSE", "checksums/partial")),
        (&whole, &[conv]),
        |b| b.said("fault point checksums/partial: waiting"),
    );

    // The next build cleans up after the killed ones and succeeds, with
    // every stage that was whole from the cache.
    let boot_again = Build::start(&boot_spec, &boot_out, None);
    let mut boot_again = boot_again;
    boot_again.wait_until("the bootstrap restarts", |b| b.started("bootstrap"));
    boot_again.signal("INT");
    let _ = boot_again.finish();
    assert_nothing_left(&boot_out, "the bootstrap variant after SIGKILL, then a build");
    let (status, events, stderr) = Build::start(&spec, &out, None).finish();
    assert!(
        status.success(),
        "the build after the faults failed:\n{stderr}\n{events:#?}"
    );
    // The checksums rounds completed the image: it is reused, and only the
    // checksums run.
    assert_reused(&events, &[boot, cust, fin, conv], "the build after the faults");
    assert_eq!(status_of(&events, "checksums"), "ok");
    assert!(out.join("kiln-faults-1.0.0.qcow2").is_file());
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
    assert!(processes_in(&out).is_empty());
    assert_cache_whole();
    eprintln!("=== faults at every stage: {:.1}s", started.elapsed().as_secs_f64());

    // Two builds of different specs on one cache at once: both succeed.
    let both = Instant::now();
    let (out_a, out_b) = (dir.path().join("a"), dir.path().join("b"));
    let a = Build::start(&spec, &out_a, None);
    let b = Build::start(&example("debian-12-ovh-byol.toml"), &out_b, None);
    let (a, b) = (a.finish(), b.finish());
    assert!(
        a.0.success(),
        "the variant's build failed beside the example's:\n{}",
        a.2
    );
    assert!(
        b.0.success(),
        "the example's build failed beside the variant's:\n{}",
        b.2
    );
    assert!(out_a.join("kiln-faults-1.0.0.qcow2").is_file());
    assert!(out_b.join("debian-12-byol-1.0.0.qcow2").is_file());
    assert_reused(&a.1, &whole, "the variant beside the example");
    assert_reused(&b.1, &["bootstrap"], "the example beside the variant");
    eprintln!("=== two specs at once: {:.1}s", both.elapsed().as_secs_f64());
    drop(dir);
    forget_specs("kiln-faults");
}

/// Unmounts the tmpfs when dropped, whatever the test did.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = run(tool("umount").arg(&self.0));
    }
}

#[test]
#[ignore = "slow: a real build of the BYOL example into a full filesystem (root)"]
fn a_full_output_filesystem_is_a_clear_error_and_leaves_nothing() {
    let dir = tempfile::tempdir_in(repo_root().join("target")).unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let out = run(tool("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "kiln-faults"])
        .arg(&mnt));
    assert!(out.status.success(), "{}", text(&out));
    let _guard = Tmpfs(mnt.clone());
    let out = mnt.join("out");
    let (status, events, stderr) = Build::start(&example("debian-12-ovh-byol.toml"), &out, None).finish();
    // Exit status 3 (crates/kiln/src/exit.rs): a run failed.
    assert_eq!(status.code(), Some(3), "{status}\n{stderr}\n{events:#?}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(
        stderr.contains(&*out.to_string_lossy()),
        "the error names no path in {}:\n{stderr}",
        out.display()
    );
    assert_nothing_left(&out, "a full output filesystem");
}
