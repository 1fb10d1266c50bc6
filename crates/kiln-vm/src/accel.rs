//! Choosing QEMU's accelerator: TCG unless a probe shows that KVM can run
//! the guest.
//!
//! `/dev/kvm` existing proves little: on some hosts (nested or PVM-only
//! KVM) it accepts a VM that then runs a stock kernel so slowly that it
//! looks hung. So the probe boots a hand-made 512-byte boot sector under
//! KVM, with the same machine and CPU options as a real run, that walks the
//! path a kernel takes (real mode, protected mode, long mode), writes a
//! marker to COM1 at each step, then spins through 2^26 iterations of a
//! register loop (a few hundredths of a second on working KVM, under half a
//! second under TCG) and writes `KILNKVM`. KVM is used only if that marker
//! appears within [`PROBE_TIMEOUT`]. The answer is cached for the process;
//! `KILN_ACCEL=tcg|kvm` skips the probe. Non-goals: other accelerators (hvf,
//! whpx), tuning KVM.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::console::{self, Console, Expect, Outcome, Pattern};
use crate::error::{Result, VmError};
use crate::firmware::Firmware;
use crate::qemu::{Drive, DriveMode, ImageFormat, Net, Vm, VmConfig};

/// How long the probe VM gets to print its final marker.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Iterations of the probe's busy loop.
const PROBE_SPINS: u32 = 1 << 26;

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
    std::fs::write(&sector, probe_boot_sector(PROBE_SPINS))
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
    cfg.net = Net::None;

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

/// Where the BIOS loads a boot sector.
const ORG: u32 = 0x7c00;
/// Prints the NUL-terminated string at `ds:si`/`esi`/`rsi` to the port in
/// `dx`: `1: lodsb; test al,al; jz 2f; out dx,al; jmp 1b; 2:`. The same
/// bytes in 16-, 32- and 64-bit mode.
const PRINT_LOOP: [u8; 8] = [0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8];
/// Flat segments for protected and long mode.
const GDT: [u64; 4] = [
    0,
    0x00cf_9a00_0000_ffff, // 0x08: 32-bit code, flat
    0x00cf_9200_0000_ffff, // 0x10: data, flat
    0x00af_9a00_0000_ffff, // 0x18: 64-bit code
];

/// The probe's boot sector; `probe.S` beside this file is the same program
/// for GNU as, and `probe.bin` its output, which a test compares with this.
pub(crate) fn probe_boot_sector(spins: u32) -> [u8; 512] {
    let mut a = Asm::default();
    // Real mode: flat segments, stack below the sector, first marker.
    a.db(&[0xfa, 0xfc]); // cli; cld
    a.db(&[0x31, 0xc0, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0]); // xor ax,ax; mov ds/es/ss,ax
    a.db(&[0xbc, 0x00, 0x7c]); // mov sp,0x7c00
    a.db(&[0xbe]).abs16("msg16"); // mov si,msg16
    a.db(&[0xba, 0xf8, 0x03]); // mov dx,0x3f8
    a.db(&PRINT_LOOP);
    // Page tables: PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000 whose one
    // 2 MiB entry identity-maps the low memory the probe runs in.
    a.db(&[0xbf, 0x00, 0x10, 0xb9, 0x00, 0x18, 0x31, 0xc0, 0xf3, 0xab]); // mov di,0x1000; mov cx,0x1800; xor ax,ax; rep stosw
    a.db(&[0xc7, 0x06, 0x00, 0x10, 0x03, 0x20]); // movw [0x1000],0x2003
    a.db(&[0xc7, 0x06, 0x00, 0x20, 0x03, 0x30]); // movw [0x2000],0x3003
    a.db(&[0xc7, 0x06, 0x00, 0x30, 0x83, 0x00]); // movw [0x3000],0x0083 (2 MiB page)
    a.db(&[0x66, 0x0f, 0x01, 0x16]).abs16("gdtr"); // lgdtl [gdtr]
    a.db(&[0x0f, 0x20, 0xc0, 0x0c, 0x01, 0x0f, 0x22, 0xc0]); // mov eax,cr0; or al,1; mov cr0,eax
    a.db(&[0xea]).abs16("pm32").db(&[0x08, 0x00]); // ljmp 0x08:pm32

    a.label("pm32");
    a.db(&[0x66, 0xb8, 0x10, 0x00, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0]); // mov ax,0x10; mov ds/es/ss,ax
    a.db(&[0xbe]).abs32("msg32"); // mov esi,msg32
    a.db(&[0xba, 0xf8, 0x03, 0x00, 0x00]); // mov edx,0x3f8
    a.db(&PRINT_LOOP);
    a.db(&[0x0f, 0x20, 0xe0, 0x83, 0xc8, 0x20, 0x0f, 0x22, 0xe0]); // cr4 |= PAE
    a.db(&[0xb8, 0x00, 0x10, 0x00, 0x00, 0x0f, 0x22, 0xd8]); // cr3 = 0x1000
    a.db(&[0xb9, 0x80, 0x00, 0x00, 0xc0, 0x0f, 0x32]); // rdmsr EFER
    a.db(&[0x0d, 0x00, 0x01, 0x00, 0x00, 0x0f, 0x30]); // EFER |= LME; wrmsr
    a.db(&[0x0f, 0x20, 0xc0, 0x0d, 0x00, 0x00, 0x00, 0x80, 0x0f, 0x22, 0xc0]); // cr0 |= PG
    a.db(&[0xea]).abs32("lm64").db(&[0x18, 0x00]); // ljmp 0x18:lm64

    a.label("lm64");
    a.db(&[0xbe]).abs32("msg64"); // mov esi,msg64
    a.db(&[0xba, 0xf8, 0x03, 0x00, 0x00]); // mov edx,0x3f8
    a.db(&PRINT_LOOP);
    a.db(&[0xb9]).db(&spins.to_le_bytes()); // mov ecx,spins
    a.db(&[0xff, 0xc9, 0x75, 0xfc]); // 1: dec ecx; jnz 1b
    a.db(&[0xbe]).abs32("msgok"); // mov esi,msgok
    a.db(&PRINT_LOOP);
    a.db(&[0xf4, 0xeb, 0xfd]); // 1: hlt; jmp 1b

    a.align(8);
    a.label("gdt");
    for d in GDT {
        a.db(&d.to_le_bytes());
    }
    a.label("gdtr");
    a.db(&((GDT.len() * 8 - 1) as u16).to_le_bytes()).abs32("gdt");
    for (label, (text, _)) in ["msg16", "msg32", "msg64", "msgok"].into_iter().zip(MARKERS) {
        a.label(label);
        a.db(text.as_bytes());
        if label == "msgok" {
            a.db(b"\r\n");
        }
        a.db(&[0]);
    }
    a.finish()
}

/// Just enough of an assembler for the probe: raw bytes, labels, and
/// absolute 16/32-bit references to labels (relative jumps are short and
/// written by hand).
#[derive(Default)]
struct Asm {
    code: Vec<u8>,
    labels: HashMap<&'static str, usize>,
    fixups: Vec<(usize, &'static str, usize)>,
}

impl Asm {
    fn db(&mut self, bytes: &[u8]) -> &mut Self {
        self.code.extend_from_slice(bytes);
        self
    }

    fn label(&mut self, name: &'static str) {
        assert!(
            self.labels.insert(name, self.code.len()).is_none(),
            "label {name} twice"
        );
    }

    fn abs16(&mut self, label: &'static str) -> &mut Self {
        self.fixups.push((self.code.len(), label, 2));
        self.db(&[0; 2])
    }

    fn abs32(&mut self, label: &'static str) -> &mut Self {
        self.fixups.push((self.code.len(), label, 4));
        self.db(&[0; 4])
    }

    fn align(&mut self, n: usize) {
        self.code.resize(self.code.len().next_multiple_of(n), 0);
    }

    fn finish(mut self) -> [u8; 512] {
        for (at, label, width) in &self.fixups {
            let addr = ORG + self.labels[label] as u32;
            self.code[*at..*at + width].copy_from_slice(&addr.to_le_bytes()[..*width]);
        }
        assert!(
            self.code.len() <= 510,
            "probe is {} bytes, more than fits",
            self.code.len()
        );
        let mut sector = [0u8; 512];
        sector[..self.code.len()].copy_from_slice(&self.code);
        sector[510..].copy_from_slice(&[0x55, 0xaa]);
        sector
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_sector_matches_gnu_as() {
        let sector = probe_boot_sector(PROBE_SPINS);
        let oracle: &[u8; 512] = include_bytes!("accel/probe.bin");
        if &sector != oracle {
            let diff: Vec<_> = (0..512).filter(|&i| sector[i] != oracle[i]).collect();
            panic!("builder and probe.S differ at offsets {diff:x?}");
        }
    }

    #[test]
    fn boot_sector_shape() {
        let sector = probe_boot_sector(7);
        assert_eq!(&sector[510..], &[0x55, 0xaa]);
        for (marker, _) in MARKERS {
            assert!(sector.windows(marker.len()).any(|w| w == marker.as_bytes()), "{marker}");
        }
        // The spin count is the operand of `mov ecx, imm32`.
        let at = sector.windows(5).position(|w| w == [0xb9, 7, 0, 0, 0]).unwrap();
        assert_eq!(&sector[at + 5..at + 9], &[0xff, 0xc9, 0x75, 0xfc]);
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
        if kiln_exec::which(crate::qemu::QEMU).is_none() {
            eprintln!("skipped: {} is not installed", crate::qemu::QEMU);
            return;
        }
        let report = run_probe(Accel::Tcg, Duration::from_secs(60)).unwrap();
        assert!(report.passed(), "{report:?}");
        eprintln!("TCG probe finished in {:?}", report.elapsed);
    }
}
