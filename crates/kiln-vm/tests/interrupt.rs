//! Ctrl-C while a VM runs: the console wait and a blocking
//! [`kiln_exec::cmd::Running::wait`] must both return an interruption, and
//! dropping the VM must leave no QEMU process and no temporary files.
//!
//! A test binary of its own, because the interruption flag is global to the
//! process and would break every other test running beside it.

use std::time::{Duration, Instant};

use kiln_exec::Cmd;
use kiln_vm::console::{self, Console, Expect, Pattern};
use kiln_vm::{Drive, ImageFormat, Network, Vm, VmConfig};

/// Whether `pid` is a live process (a zombie counts as dead).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn interruption_stops_the_vm_and_cleans_up() {
    if !kiln_exec::testing::require_tool_or_skip(kiln_vm::qemu::QEMU) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // The VM's private directory goes under TMPDIR: point it here to see it go.
    std::env::set_var("TMPDIR", tmp.path());

    // A guest that never prints what we wait for: an empty disk.
    let disk = tmp.path().join("empty.raw");
    std::fs::File::create(&disk).unwrap().set_len(1 << 20).unwrap();
    let mut cfg = VmConfig::new(tmp.path().join("console.log"));
    cfg.disks.push(Drive::new(&disk, ImageFormat::Raw));
    cfg.memory = 64 << 20;
    cfg.cpus = 1;
    cfg.net = Network::None;
    let mut vm = Vm::start(&cfg).unwrap();
    let pid = vm.pid();
    let private: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("kiln-vm-"))
        .collect();
    assert_eq!(private.len(), 1, "{private:?}");

    let mut sleeper = Cmd::new("sh").args(["-c", "sleep 60"]).spawn().unwrap();
    let sleeper_pid = sleeper.id();

    let interrupter = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(500));
        kiln_exec::interrupt::request_interrupt();
    });
    let started = Instant::now();
    let mut console = Console::new(vm.console_log());
    let mut expect = Expect::new().want(Pattern::new("login", "login: ").unwrap());
    let err = console::wait(
        &mut console,
        &mut expect,
        started,
        started + Duration::from_secs(60),
        || Ok(vm.exited()?.map(|e| e.to_string())),
        |_| {},
    )
    .unwrap_err();
    interrupter.join().unwrap();
    assert!(err.is_interrupted(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let err = sleeper.wait().unwrap_err();
    assert!(err.is_interrupted(), "{err}");
    assert!(!alive(sleeper_pid));

    assert!(alive(pid));
    drop(vm);
    assert!(!alive(pid), "QEMU survived its Vm");
    assert!(
        !tmp.path().join(&private[0]).exists(),
        "the VM's temporary directory was left behind"
    );
    assert!(Cmd::new("sh")
        .arg("-c")
        .arg("true")
        .spawn()
        .unwrap_err()
        .is_interrupted());
}
