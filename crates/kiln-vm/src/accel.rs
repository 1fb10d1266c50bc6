//! Choosing QEMU's accelerator: TCG unless a probe shows that KVM can run
//! the guest.
//!
//! `/dev/kvm` existing proves little: on some hosts (nested or PVM-only
//! KVM) it accepts a VM that then runs a stock kernel so slowly that it
//! looks hung. So the probe boots a 512-byte boot sector under KVM, with
//! the same machine and CPU options as a real run, that walks the path a
//! kernel takes (real mode, protected mode, long mode), writes a marker to
//! COM1 at each step, then spins through 2^26 iterations of a register loop
//! (a few hundredths of a second on working KVM, under half a second under
//! TCG) and writes `KILNKVM`. KVM is used only if that marker appears within
//! [`PROBE_TIMEOUT`]. The answer is cached for the process;
//! `KILN_ACCEL=tcg|kvm` skips the probe. Non-goals: other accelerators (hvf,
//! whpx), tuning KVM.
//!
//! The sector's source is `accel/probe.S`; `accel/make-probe.sh` assembles
//! it with binutils into the committed `accel/probe.bin`, which is compiled
//! in, so building kiln needs no assembler. A test rebuilds it from source
//! wherever binutils is present (always under CI) and compares the bytes.

use std::sync::Mutex;
use std::time::Duration;

use crate::console::{self, Console, Expect, Outcome, Pattern};
use crate::error::{Result, VmError};
use crate::firmware::Firmware;
use crate::network::Network;
use crate::qemu::{Drive, DriveMode, ImageFormat, Vm, VmConfig};

/// How long the probe VM gets to print its final marker.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Iterations of the probe's busy loop (`probe.S` has the same number).
const PROBE_SPINS: u32 = 1 << 26;

/// The probe's boot sector, assembled from `accel/probe.S`.
const PROBE_SECTOR: &[u8; 512] = include_bytes!("accel/probe.bin");

/// The accelerator QEMU runs the guest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// QEMU's binary translator: works everywhere, several times slower.
    Tcg,
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }

    /// `-accel` and `-cpu` for this accelerator. TCG runs one host thread
    /// per guest CPU and emulates the richest CPU model it has (`max`), so
    /// the guest kernel takes its fast paths; KVM passes the host CPU through.
    pub(crate) fn qemu_args(self) -> [&'static str; 4] {
        match self {
            Accel::Tcg => ["-accel", "tcg,thread=multi", "-cpu", "max"],
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
        }
    }
}

/// The accelerator chosen, and why, for progress output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
}

static CHOICE: Mutex<Option<AccelChoice>> = Mutex::new(None);

/// Chooses the accelerator: `KILN_ACCEL` if set, else KVM if the probe
/// passes, else TCG. The probe runs at most once per process.
pub fn choose_accel() -> Result<AccelChoice> {
    if let Some(v) = std::env::var_os("KILN_ACCEL") {
        let accel = match v.to_str() {
            Some("tcg") => Accel::Tcg,
            Some("kvm") => Accel::Kvm,
            _ => return Err(VmError::AccelEnv(v.to_string_lossy().into_owned())),
        };
        return Ok(AccelChoice {
            accel,
            reason: "set by KILN_ACCEL".to_owned(),
        });
    }
    let mut cached = CHOICE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = &*cached {
        return Ok(c.clone());
    }
    let choice = probe_kvm()?;
    *cached = Some(choice.clone());
    Ok(choice)
}

fn probe_kvm() -> Result<AccelChoice> {
    let tcg = |reason: String| AccelChoice {
        accel: Accel::Tcg,
        reason,
    };
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        return Ok(tcg(format!("/dev/kvm is not usable ({e})")));
    }
    let report = run_probe(Accel::Kvm, PROBE_TIMEOUT)?;
    Ok(if report.passed() {
        AccelChoice {
            accel: Accel::Kvm,
            reason: format!("KVM probe passed in {:.1} s", report.elapsed.as_secs_f64()),
        }
    } else {
        tcg(format!("KVM probe failed: {}", report.failure()))
    })
}

/// How far the probe guest got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    RealMode,
    ProtectedMode,
    LongMode,
    /// The busy loop finished: the accelerator is fit for a real guest.
    Done,
}

impl Stage {
    fn describe(self) -> &'static str {
        match self {
            Stage::RealMode => "ran its boot sector in real mode",
            Stage::ProtectedMode => "entered protected mode",
            Stage::LongMode => "entered long mode",
            Stage::Done => "finished",
        }
    }
}

/// The markers the probe prints, in order.
const MARKERS: [(&str, Stage); 4] = [
    ("KILN16 ", Stage::RealMode),
    ("KILN32 ", Stage::ProtectedMode),
    ("KILN64 ", Stage::LongMode),
    ("KILNKVM", Stage::Done),
];

/// What one probe run showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    pub reached: Option<Stage>,
    pub elapsed: Duration,
    /// Set when QEMU exited on its own (it refused the options, or crashed).
    pub qemu_exit: Option<String>,
}

impl ProbeReport {
    pub fn passed(&self) -> bool {
        self.reached == Some(Stage::Done)
    }

    fn failure(&self) -> String {
        if let Some(exit) = &self.qemu_exit {
            return exit.clone();
        }
        let secs = self.elapsed.as_secs();
        match self.reached {
            None => format!("the test guest printed nothing in {secs} s"),
            Some(Stage::LongMode) => format!(
                "the test guest entered long mode but did not finish a {PROBE_SPINS}-iteration loop in {secs} s \
                 (KVM is far too slow here)"
            ),
            Some(s) => format!("the test guest {} and then stalled for {secs} s", s.describe()),
        }
    }
}

/// Boots the probe sector under `accel` and reports how far it got.
pub fn run_probe(accel: Accel, timeout: Duration) -> Result<ProbeReport> {
    let dir = kiln_exec::WorkDir::new_in(&std::env::temp_dir(), "kiln-probe-")
        .map_err(VmError::io("creating a directory for the KVM probe"))?;
    let sector = dir.path().join("probe.img");
    std::fs::write(&sector, PROBE_SECTOR)
        .and_then(|()| {
            // SeaBIOS ignores a virtio disk of a single sector.
            std::fs::OpenOptions::new().write(true).open(&sector)?.set_len(1 << 20)
        })
        .map_err(VmError::io_path("writing", &sector))?;
    let mut cfg = VmConfig::new(dir.path().join("console.log"));
    cfg.disks
        .push(Drive::new(&sector, ImageFormat::Raw).mode(DriveMode::ReadOnly));
    cfg.firmware = Firmware::Bios;
    cfg.accel = accel;
    cfg.memory = 64 << 20;
    cfg.cpus = 1;
    cfg.net = Network::None;

    let mut vm = Vm::start(&cfg)?;
    let started = vm.started();
    let mut console = Console::new(vm.console_log());
    let mut expect = Expect::new().want(Pattern::new("probe marker", "KILNKVM")?);
    let mut qemu_exit = None;
    let outcome = console::wait(
        &mut console,
        &mut expect,
        started,
        started + timeout,
        || Ok(vm.exited()?.map(|exit| exit.brief())),
        |_| {},
    )?;
    if let Outcome::Stopped(reason) = outcome {
        qemu_exit = Some(reason);
    }
    let elapsed = started.elapsed();
    drop(vm);
    let text = console.text();
    let reached = MARKERS.iter().filter(|(m, _)| text.contains(m)).map(|(_, s)| *s).max();
    tracing::debug!("probe under {}: {:?} after {elapsed:?}", accel.name(), reached);
    Ok(ProbeReport {
        reached,
        elapsed,
        qemu_exit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_sector_is_what_probe_s_assembles_to() {
        let tools = ["as", "ld"].map(kiln_exec::testing::require_tool_or_skip);
        if tools.contains(&false) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let rebuilt = dir.path().join("probe.bin");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/src/accel/make-probe.sh");
        kiln_exec::Cmd::new("sh").arg(script).arg(&rebuilt).run().unwrap();
        let rebuilt = std::fs::read(&rebuilt).unwrap();
        let diff: Vec<_> = (0..512).filter(|&i| rebuilt.get(i) != PROBE_SECTOR.get(i)).collect();
        assert!(
            rebuilt.len() == 512 && diff.is_empty(),
            "probe.bin is not what probe.S assembles to (offsets {diff:x?}): run src/accel/make-probe.sh and commit probe.bin"
        );
    }

    #[test]
    fn boot_sector_shape() {
        assert_eq!(&PROBE_SECTOR[510..], &[0x55, 0xaa]);
        for (marker, _) in MARKERS {
            assert!(
                PROBE_SECTOR.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "{marker}"
            );
        }
        // The spin count is the operand of `mov ecx, imm32` before `dec ecx; jnz`.
        let mut mov = vec![0xb9];
        mov.extend_from_slice(&PROBE_SPINS.to_le_bytes());
        mov.extend_from_slice(&[0xff, 0xc9, 0x75, 0xfc]);
        assert!(
            PROBE_SECTOR.windows(mov.len()).any(|w| w == mov),
            "no {PROBE_SPINS}-iteration loop"
        );
    }

    #[test]
    fn accelerator_arguments() {
        assert_eq!(Accel::Tcg.qemu_args(), ["-accel", "tcg,thread=multi", "-cpu", "max"]);
        assert_eq!(Accel::Kvm.qemu_args(), ["-accel", "kvm", "-cpu", "host"]);
    }

    #[test]
    fn failure_reasons_say_how_far_the_guest_got() {
        let report = |reached| ProbeReport {
            reached,
            elapsed: Duration::from_secs(10),
            qemu_exit: None,
        };
        assert!(report(None).failure().contains("printed nothing in 10 s"));
        assert!(report(Some(Stage::LongMode)).failure().contains("far too slow"));
        assert!(report(Some(Stage::RealMode))
            .failure()
            .contains("real mode and then stalled"));
        assert!(report(Some(Stage::Done)).passed());
    }

    /// Proves the sector runs: under TCG, which works everywhere QEMU does,
    /// every marker must appear.
    #[test]
    fn probe_passes_under_tcg() {
        if !kiln_exec::testing::require_tool_or_skip(crate::qemu::QEMU) {
            return;
        }
        let report = run_probe(Accel::Tcg, Duration::from_secs(60)).unwrap();
        assert!(report.passed(), "{report:?}");
        eprintln!("TCG probe finished in {:?}", report.elapsed);
    }
}
