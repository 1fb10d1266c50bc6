//! Command-line types. One struct per subcommand; `commands` hands each to
//! the libraries. Kept public so tests can parse argv.

use std::path::PathBuf;
use std::str::FromStr;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand, ValueEnum};
use kiln_spec::{ChecksumType, Firmware, UnknownName};

/// kiln bakes bootable Linux disk images from one declarative spec, without a
/// VM, checks them against their target's contract, and ships them.
#[derive(Debug, Parser)]
#[command(name = "kiln", version = VERSION, about, long_about = None, after_help = after_help())]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More output: -v logs every external command with its full command line, -vv also what it prints.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less output: only warnings, errors and results (no progress).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

/// The version and the commit it was built from (`unknown` outside git).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("KILN_GIT_COMMIT"), ")");

fn after_help() -> String {
    format!("{EXAMPLES}\n\n{}", crate::exit::HELP)
}

const EXAMPLES: &str = "Examples:
  kiln plan examples/debian-12-ovh-byol.toml       what a build would do
  kiln validate examples/debian-12-ovh-byol.toml   spec errors and unknown package names, nothing else
  kiln build examples/debian-12-ovh-byol.toml --out out
  kiln build examples/debian-12-ovh-byol.toml --explain   why each stage is reused or rebuilt
  kiln build examples/debian-12-ovh-byol.toml --verify-reproducible
  kiln build examples/debian-12-ovh-byol.toml --on-error=shell   a shell where a stage failed
  kiln shell examples/debian-12-ovh-byol.toml -- dpkg -l         a command in the customised tree
  kiln cache ls                                    what the stage cache holds
  kiln check out/debian-12-byol-1.0.0.qcow2 --target ovh-byol --ram 32GiB
  kiln inspect out/debian-12-byol-1.0.0.qcow2
  kiln verify out --key ~/.ssh/id_ed25519.pub       checksums, SBOMs and the signature of a build
  kiln serve out --bind 0.0.0.0:8080 --auth ovh:SECRET   host the image for OVH's imageURL
  kiln publish oci out/debian-12-byol-1.0.0.qcow2 registry.example.com/images/debian-12-byol:1.0.0
  kiln pull registry.example.com/images/debian-12-byol:1.0.0 -o images
  kiln doctor                                      what is missing, and the apt-get line for it
  kiln completion bash > /etc/bash_completion.d/kiln
  kiln man --out /usr/local/share/man/man1";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build every target of a spec (needs root; no VM, no KVM).
    Build(BuildArgs),
    /// Print the stages a build would run, with their input hashes; runs nothing.
    Plan(PlanArgs),
    /// Open a shell (or run a command) in a chroot of the tree a stage left,
    /// from the stage cache (built first if missing); changes go to a
    /// throwaway overlay, never into the cache (needs root).
    #[command(
        after_help = "The tree has /proc, /sys, /dev, a tmpfs /run and the host's resolv.conf, as \
a build step has them, in private mount, PID, UTS and IPC namespaces: whatever the session \
starts ends with it, and services do not start. Changes are lost on exit; to make one \
permanent, put it in the spec ([[files]] for a file, [[run]] for a command, [packages] \
install for a package) and build again: the cache rebuilds only what follows.

The shell is $KILN_SHELL if set (a path in the tree such as /bin/bash, or a script on the \
host, which appears in the tree at /run/kiln/shell), else /bin/sh. With -- COMMAND, kiln \
exits with COMMAND's status.

Examples:
  kiln shell examples/debian-12-ovh-byol.toml
  kiln shell examples/debian-12-ovh-byol.toml --stage ovh-byol/finalise
  kiln shell examples/debian-12-ovh-byol.toml -- dpkg -l
  kiln shell examples/debian-12-ovh-byol.toml --no-build -- cat /etc/os-release
  kiln shell fail.toml --stage customise --kept out/.kiln-work-Ab12Cd   (the line --on-error=keep prints)"
    )]
    Shell(ShellArgs),
    /// Check a spec without planning: its syntax and values, and its release,
    /// package, time zone and locale names (exit 2 if any is wrong).
    Validate(ValidateArgs),
    /// Check an image against a target's contract, rule by rule (exit 1 if any rule fails).
    Check(CheckArgs),
    /// Show an image's partitions, filesystems, kernel, packages and embedded manifest.
    Inspect(InspectArgs),
    /// Check a build's output directory: SHA512SUMS and every .sha512 against
    /// the files, the artifacts and SBOMs of manifest.json, and the
    /// signature of SHA512SUMS with a key (exit 1 if any rule fails).
    #[command(after_help = VERIFY_HELP)]
    Verify(VerifyArgs),
    /// Write a cloud-init seed (NoCloud or ConfigDrive) as an ISO 9660 or FAT image.
    Seed(SeedArgs),
    /// Boot an image in QEMU (snapshot mode) and judge it from its serial console.
    #[command(
        after_help = "Network: by default the guest is isolated: it has a network card and gets an \
address by DHCP, but reaches neither the host, nor DNS, nor anything beyond. \
--net opens it: the guest can then reach whatever the host reaches.

EC2: --imds makes the guest an EC2 instance: kiln serves EC2's instance metadata \
service (IMDSv2 only: a token from PUT /latest/api/token, required on every GET) at \
169.254.169.254 from 127.0.0.1, with --ssh-key as public-keys/0/openssh-key and \
--user-data as user-data; the machine gets a Nitro instance's SMBIOS identity \
(Amazon EC2, a UUID starting with ec2), so cloud-init's Ec2 datasource runs. \
No seed is attached. The report counts the requests and those refused.

Medium: the image is a virtio disk by default; --cdrom makes it a CD-ROM and --usb \
a USB stick, each booted from, as a hybrid live ISO is booted from a disc or a stick.

Examples:
  kiln boot out/debian-12-disk-1.0.0-disk.qcow2
  kiln boot --firmware uefi --expect 'Debian GNU/Linux 12' --json out/disk.qcow2
  kiln boot --net --user-data apt-update.yaml --expect 'KILN-APT-OK' out/disk.qcow2
  kiln boot --imds --ssh-key \"$(cat ~/.ssh/id_ed25519.pub)\" --user-data user-data.yaml --disk-size 8GiB out/ami.raw
  kiln boot --cdrom --firmware uefi out/debian-12-live-1.0.0.iso
  kiln boot --usb --firmware bios out/debian-12-live-1.0.0.iso
  kiln boot --interactive out/debian-12-disk-1.0.0-disk.qcow2   (the console on this terminal; Ctrl-] quits)"
    )]
    Boot(BootArgs),
    /// Boot an image in the background and log in to it over SSH (or run a
    /// command), then power it off.
    #[command(after_help = "kiln generates an ed25519 key for this session only, puts it in the \
NoCloud seed (with --hostname, and user data that makes an account `kiln` with that key and \
password-less sudo), forwards a free port \
of 127.0.0.1 to the guest's port 22 (the guest reaches nothing else), waits for SSH, runs the \
session, then powers the guest off; the key, the seed and QEMU are gone afterwards and the image \
is not changed. With -- COMMAND, kiln exits with COMMAND's status (255: ssh's own failure).
An image without an SSH server is reported once the guest has shown its login prompt and \
--ssh-wait seconds have passed.

Examples:
  kiln ssh out/debian-12-disk-1.0.0-disk.qcow2
  kiln ssh out/debian-12-disk-1.0.0-disk.qcow2 -- cat /etc/hostname
  kiln ssh --firmware uefi --disk-size +4GiB --user debian out/disk.qcow2 -- df -h /")]
    Ssh(SshArgs),
    /// Deploy an image; `kiln deploy ovh --simulate IMAGE` replays OVHcloud's installer locally.
    #[command(subcommand)]
    Deploy(DeployCommand),
    /// Publish an image: `kiln publish aws IMAGE --name NAME` makes an AMI,
    /// `kiln publish oci IMAGE REGISTRY/REPO:TAG` pushes it to an OCI registry.
    #[command(subcommand)]
    Publish(PublishCommand),
    /// Serve a directory of artifacts over HTTP (GET, HEAD, byte ranges), for
    /// OVHcloud's imageURL or any downloader; optional Basic authentication.
    #[command(after_help = SERVE_HELP)]
    Serve(ServeArgs),
    /// Fetch an artifact pushed by `kiln publish oci` (or `oras push`) into a
    /// directory, verifying every layer's digest and the image's SHA-512.
    #[command(after_help = PULL_HELP)]
    Pull(PullArgs),
    /// Inspect or trim the stage cache shared by builds.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Print the JSON Schema of the spec format.
    Schema,
    /// Check the host: every external tool (found or missing, with its Debian package),
    /// root, overlayfs, unshare, OVMF, KVM; prints the apt-get line for what is missing.
    Doctor,
    /// Print a shell completion script.
    Completion(CompletionArgs),
    /// Write the manual pages (kiln.1 and one per subcommand), or print kiln.1.
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write kiln.1 and kiln-SUBCOMMAND.1 into this directory instead of printing kiln.1.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Progress per stage with elapsed time.
    Human,
    /// One JSON object per line: a stage-start and a stage-end event per stage.
    Json,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The spec file (TOML).
    pub spec: PathBuf,
    /// Output directory for images, checksums, manifest.json and the build log.
    #[arg(short, long, default_value = "out")]
    pub out: PathBuf,
    /// Where to put the scratch root tree and raw disk (default: inside --out).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the scratch directory after the build, for debugging.
    #[arg(long)]
    pub keep_work: bool,
    /// How to report progress.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// The stage cache [default: $KILN_CACHE_DIR, else $XDG_CACHE_HOME/kiln, else ~/.cache/kiln].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Rebuild every stage instead of reusing cached ones (results are still stored).
    #[arg(long)]
    pub no_cache: bool,
    /// Say for each stage whether it is reused, or rebuilt and because of which input.
    #[arg(long)]
    pub explain: bool,
    /// Build twice without the stage cache and compare the images byte for byte;
    /// if they differ, name the first differing file. Exit 1 when not reproducible.
    #[arg(long)]
    pub verify_reproducible: bool,
    /// Threads for image compression [default: one per CPU].
    #[arg(long)]
    pub threads: Option<usize>,
    /// After the build (whether it succeeded or not), trim the stage cache to
    /// SIZE, e.g. 20GiB, least recently used entries first, as `kiln cache gc`
    /// does; the entries this build used are the last to go [default: no limit].
    #[arg(long, value_parser = parse_size, env = "KILN_CACHE_MAX_SIZE", value_name = "SIZE")]
    pub cache_max_size: Option<u64>,
    /// Build release VERSION (semantic versioning, e.g. 1.2.0): it replaces
    /// [image] version in every artifact, the build must come from a clean
    /// git tree, and DIR/releases.json gains an entry (version, commit,
    /// date, each artifact's sha512).
    #[arg(long, value_name = "VERSION", value_parser = parse_release, conflicts_with = "verify_reproducible")]
    pub release: Option<semver::Version>,
    /// With --release: build from a git tree with uncommitted changes; the
    /// version becomes VERSION-dirty.
    #[arg(long, requires = "release")]
    pub allow_dirty: bool,
    /// What to do when a stage fails.
    #[arg(long, value_enum, default_value_t = OnError::Abort, conflicts_with = "verify_reproducible")]
    pub on_error: OnError,
    /// Pause before each stage that runs (not those the cache provides) and
    /// wait for a line on stdin: Enter runs the stage, `c` runs the rest
    /// without pausing, `q` stops the build there (cleanly).
    #[arg(long, conflicts_with = "verify_reproducible")]
    pub step: bool,
    /// Sign SHA512SUMS (which lists every artifact and SBOM) once it is
    /// written. KEY naming an existing file is an SSH private key:
    /// `ssh-keygen -Y sign -n kiln-image` writes SHA512SUMS.sig. Anything
    /// else is an OpenPGP key id, fingerprint or e-mail in gpg's keyring
    /// ($GNUPGHOME): `gpg --detach-sign --armor` writes SHA512SUMS.asc. A
    /// key with a passphrase must be in ssh-agent or gpg-agent; the key is
    /// checked before the build starts. Check with `kiln verify`.
    #[arg(long, value_name = "KEY")]
    pub sign_key: Option<String>,
}

/// `--on-error`: what a build does when a stage fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnError {
    /// Clean up and report the error.
    Abort,
    /// Print the failing command, its exit status and the end of its output, then open a
    /// shell in the failed stage's tree ($KILN_SHELL, else /bin/sh); clean up when it exits.
    Shell,
    /// Keep the work directory and print the `kiln shell` line that reopens the failed tree.
    Keep,
}

impl From<OnError> for kiln_build::OnError {
    fn from(o: OnError) -> Self {
        match o {
            OnError::Abort => kiln_build::OnError::Abort,
            OnError::Shell => kiln_build::OnError::Shell,
            OnError::Keep => kiln_build::OnError::Keep,
        }
    }
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// The spec file (TOML).
    pub spec: PathBuf,
    /// The stage whose tree to enter: bootstrap, customise, or TARGET/finalise.
    #[arg(long, default_value = "customise")]
    pub stage: String,
    /// The stage cache [default: $KILN_CACHE_DIR, else $XDG_CACHE_HOME/kiln, else ~/.cache/kiln].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Where to put the throwaway overlay, and stages built for the shell [default: $TMPDIR, else /tmp].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Fail when the stage cache lacks the stage's tree, instead of building it.
    #[arg(long)]
    pub no_build: bool,
    /// The work directory that `kiln build --on-error=keep` kept: enter the failed
    /// stage's tree from there (on the cached stages below it).
    #[arg(long, value_name = "WORK_DIR")]
    pub kept: Option<PathBuf>,
    /// The command to run instead of a shell (after --).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List cache entries, most recently used first.
    Ls(CacheDirArg),
    /// Remove least recently used entries until the cache fits --max-size (and abandoned temporaries).
    Gc(CacheGcArgs),
    /// Remove entries: all, or those whose key starts with KEY. Entries in use are kept.
    Rm(CacheRmArgs),
}

#[derive(Debug, Args)]
pub struct CacheDirArg {
    /// The stage cache [default: $KILN_CACHE_DIR, else $XDG_CACHE_HOME/kiln, else ~/.cache/kiln].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CacheGcArgs {
    #[command(flatten)]
    pub dir: CacheDirArg,
    /// Size to trim the stage entries down to, e.g. 10GiB.
    #[arg(long, value_parser = parse_size, default_value = "20GiB")]
    pub max_size: u64,
}

#[derive(Debug, Args)]
pub struct CacheRmArgs {
    #[command(flatten)]
    pub dir: CacheDirArg,
    /// Key prefixes of the entries to remove (as `kiln cache ls` shows them).
    pub keys: Vec<String>,
    /// Remove every entry that is not in use.
    #[arg(long, conflicts_with = "keys")]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The spec file (TOML).
    pub spec: PathBuf,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    /// Do not check the release and package names against the archive (no network).
    #[arg(long)]
    pub offline: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The spec file (TOML).
    pub spec: PathBuf,
    /// Do not check the release and package names against the archive (no network).
    #[arg(long)]
    pub offline: bool,
}

/// The target kinds whose contract `kiln check` knows.
fn checkable_targets() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(kiln_build::targets::checkable().map(|k| k.name))
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The image file (qcow2 or raw; an ISO for --target iso).
    pub image: PathBuf,
    /// Whose contract to check.
    #[arg(long, value_parser = checkable_targets())]
    pub target: String,
    /// The server's RAM, e.g. 32GiB: adds the rule "image smaller than RAM − 3 GiB".
    #[arg(long, value_parser = parse_size)]
    pub ram: Option<u64>,
    /// The efiBootloaderPath you will send to the API (default: from the embedded manifest).
    #[arg(long)]
    pub efi_bootloader_path: Option<String>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The output directory of a build (its --out).
    pub dir: PathBuf,
    /// Trust signatures by this SSH public key file.
    #[arg(long, value_name = "PUBKEY", group = "trust")]
    pub key: Option<PathBuf>,
    /// Trust signatures by the keys of this OpenSSH allowed-signers file.
    #[arg(long, value_name = "FILE", group = "trust")]
    pub allowed_signers: Option<PathBuf>,
    /// Trust OpenPGP signatures by the keys of this keyring (binary or armored).
    #[arg(long, value_name = "FILE", group = "trust")]
    pub gpg_keyring: Option<PathBuf>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The image file (qcow2, raw, or an ISO, recognised by its CD001 signature).
    pub image: PathBuf,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Datasource {
    /// Label `cidata`: `user-data`, `meta-data`, optional `network-config`.
    Nocloud,
    /// Label `config-2`: `openstack/latest/meta_data.json`, `user_data`, optional `network_data.json`.
    Configdrive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SeedFs {
    /// ISO 9660 (with Rock Ridge and Joliet names).
    Iso,
    /// FAT (vfat).
    Vfat,
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// Which cloud-init datasource the seed is for.
    #[arg(long, value_enum)]
    pub datasource: Datasource,
    /// Filesystem of the seed image.
    #[arg(long = "fs", value_enum, default_value_t = SeedFs::Iso)]
    pub fs: SeedFs,
    /// Output file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// User data file (#cloud-config or a script). Default: an empty #cloud-config.
    #[arg(long)]
    pub user_data: Option<PathBuf>,
    /// Meta data file (NoCloud meta-data YAML or ConfigDrive meta_data.json), instead of the options below.
    #[arg(long, conflicts_with_all = ["hostname", "instance_id", "metadata"])]
    pub meta_data: Option<PathBuf>,
    /// Hostname (local-hostname / hostname).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Instance id (default: a fresh UUID, so cloud-init treats the boot as a first boot).
    #[arg(long)]
    pub instance_id: Option<String>,
    /// An SSH public key for the default user; repeatable.
    #[arg(long = "ssh-key")]
    pub ssh_keys: Vec<String>,
    /// Network configuration file (NoCloud network-config v1/v2, ConfigDrive network_data.json).
    #[arg(long)]
    pub network_config: Option<PathBuf>,
    /// ConfigDrive `meta` entry KEY=VALUE; repeatable.
    #[arg(long = "metadata", value_parser = parse_key_value)]
    pub metadata: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct BootArgs {
    /// The image file (qcow2 or raw, or an ISO); never modified (QEMU snapshot
    /// mode, or a read-only CD-ROM).
    pub image: PathBuf,
    /// Firmware to boot with.
    #[arg(long, value_parser = vocabulary(Firmware::ALL, Firmware::name), default_value_t = Firmware::Bios)]
    pub firmware: Firmware,
    /// A ready seed image to attach (default: kiln generates a NoCloud seed).
    #[arg(long, conflicts_with_all = ["user_data", "ssh_keys"])]
    pub seed: Option<PathBuf>,
    /// User data for the generated seed (or, with --imds, the metadata service's user-data).
    #[arg(long)]
    pub user_data: Option<PathBuf>,
    /// SSH public key for the generated seed (or, with --imds, the metadata
    /// service's public-keys); repeatable.
    #[arg(long = "ssh-key")]
    pub ssh_keys: Vec<String>,
    /// Boot the image as an EC2 instance: serve EC2's instance metadata
    /// (IMDSv2 only) at 169.254.169.254, give the machine EC2's SMBIOS
    /// identity, and attach no seed.
    #[arg(long, conflicts_with_all = ["seed", "net"])]
    pub imds: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// A regular expression the console must show; repeatable.
    #[arg(long = "expect")]
    pub expect: Vec<String>,
    /// Memory for the guest, e.g. 1GiB.
    #[arg(long, value_parser = parse_size, default_value = "1GiB")]
    pub memory: u64,
    /// Where to write the serial console log (default: next to the image).
    #[arg(long)]
    pub console_log: Option<PathBuf>,
    /// Open the guest's network, for a person at the console or user data
    /// that downloads: the guest can then reach whatever the host reaches
    /// (the internet, DNS, services on the host). Without it the guest gets
    /// a network card on which it reaches nothing.
    #[arg(long)]
    pub net: bool,
    /// Give the guest no network card at all, as a machine that is not
    /// cabled (for images that must work offline).
    #[arg(long, conflicts_with = "net")]
    pub no_network: bool,
    /// Print the verdict as JSON on stdout (passed, checks with their times,
    /// the guest's network, the console tail).
    #[arg(long)]
    pub json: bool,
    /// Give the guest a disk larger than the image, as a cloud or a server
    /// does: a size such as "8GiB", or "+4GiB" for that much more than the
    /// image. The image is not changed (the guest writes to a temporary
    /// overlay); cloud-init's growpart then grows the root partition.
    #[arg(long, value_parser = parse_disk_size, value_name = "SIZE")]
    pub disk_size: Option<kiln_vm::boot::DiskSize>,
    /// Attach the image as a read-only CD-ROM (AHCI) and boot from it, as
    /// firmware boots a disc: El Torito, under BIOS and UEFI. The image must
    /// be raw, an ISO 9660 file.
    #[arg(long, conflicts_with_all = ["usb", "disk_size"])]
    pub cdrom: bool,
    /// Attach the image as a USB stick (usb-storage on xHCI) and boot from
    /// it, as firmware boots a stick a hybrid ISO was written to: through
    /// its MBR under BIOS, its EFI partition under UEFI. The guest's writes
    /// go to a temporary overlay.
    #[arg(long)]
    pub usb: bool,
    /// Attach the serial console to this terminal instead of judging the
    /// boot: log in and look around; Ctrl-] quits and stops the VM (the
    /// image is not changed). Needs a terminal on stdin.
    #[arg(long, conflicts_with_all = ["json", "expect", "imds"])]
    pub interactive: bool,
}

#[derive(Debug, Args)]
pub struct SshArgs {
    /// The image file (qcow2 or raw); never modified (QEMU snapshot mode).
    pub image: PathBuf,
    /// Firmware to boot with.
    #[arg(long, value_parser = vocabulary(Firmware::ALL, Firmware::name), default_value_t = Firmware::Bios)]
    pub firmware: Firmware,
    /// Who to log in as: `kiln`, the session's account (with sudo), or another
    /// account that has the key: cloud-init's default user, or root where the
    /// image's sshd allows root logins.
    #[arg(long, default_value = kiln_vm::session::SESSION_USER)]
    pub user: String,
    /// The guest's hostname, given in the seed.
    #[arg(long, default_value = "kiln-ssh")]
    pub hostname: String,
    /// Give up when SSH does not answer after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// How long SSH may stay silent after the login prompt showed before
    /// kiln decides the image has no SSH server (seconds).
    #[arg(long, default_value_t = 90)]
    pub ssh_wait: u64,
    /// Memory for the guest, e.g. 2GiB.
    #[arg(long, value_parser = parse_size, default_value = "1GiB")]
    pub memory: u64,
    /// Give the guest a disk larger than the image ("8GiB", or "+4GiB").
    #[arg(long, value_parser = parse_disk_size, value_name = "SIZE")]
    pub disk_size: Option<kiln_vm::boot::DiskSize>,
    /// Where to write the serial console log (default: next to the image).
    #[arg(long)]
    pub console_log: Option<PathBuf>,
    /// The command to run in the guest instead of a login shell (after --).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl BootArgs {
    /// How the image is attached: `--cdrom`, `--usb`, or a disk.
    pub fn medium(&self) -> kiln_vm::boot::Medium {
        use kiln_vm::boot::Medium;
        match (self.cdrom, self.usb) {
            (true, _) => Medium::Cdrom,
            (_, true) => Medium::Usb,
            _ => Medium::Disk,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum DeployCommand {
    /// OVHcloud Bring Your Own Linux. With SERVICE_NAME, reinstalls that
    /// dedicated server through OVH's API: the body is the build manifest's
    /// ovhReinstall plus the options, checked against OVH's schema before
    /// anything is sent, signed, posted, and followed step by step. With
    /// --simulate, replays the installer locally instead: partitioning (RAID,
    /// LVM), config drive, image download with headers and checksum, rsync,
    /// make_image_bootable.sh in a chroot, then the first boot with the
    /// server's firmware and no NVRAM entry.
    #[command(
        after_help = "Credentials (API): OVH_ENDPOINT, OVH_APPLICATION_KEY, OVH_APPLICATION_SECRET, \
OVH_CONSUMER_KEY, else ovh.conf in the current directory, ~/.ovh.conf or /etc/ovh.conf \
([default] endpoint=ovh-eu, then application_key=... in the [ovh-eu] section), as OVH's own \
clients read them. Endpoints: ovh-eu, ovh-ca, ovh-us, kimsufi-eu, kimsufi-ca, soyoustart-eu, \
soyoustart-ca, or a URL. The consumer key needs GET /dedicated/server/* and \
POST /dedicated/server/*/reinstall (make one at https://eu.api.ovh.com/createToken/).

Examples:
  kiln deploy ovh ns1234567.ip-1-2-3.eu --image-url https://images.example.com/debian-12-byol-1.0.0.qcow2 \\
      --manifest out/manifest.json --hostname web1 --ssh-key \"$(cat ~/.ssh/id_ed25519.pub)\" --dry-run
  kiln deploy ovh ns1234567.ip-1-2-3.eu --image-url https://images.example.com/debian-12-byol-1.0.0.qcow2 \\
      --http-header 'Authorization: Basic dXNlcjpwYXNz' --user-data cloud-config.yaml
  kiln deploy ovh --simulate out/debian-12-byol-1.0.0.qcow2
  kiln deploy ovh --simulate out/debian-12-byol-1.0.0.qcow2 --firmware uefi --disks 2 \\
      --hostname web1 --ssh-key \"$(cat ~/.ssh/id_ed25519.pub)\" --http-header 'Authorization: Basic dXNlcjpwYXNz'"
    )]
    Ovh(OvhDeployArgs),
}

#[derive(Debug, Args)]
pub struct OvhDeployArgs {
    /// The dedicated server to reinstall through OVH's API (its service name, e.g. ns1234567.ip-1-2-3.eu).
    #[arg(
        value_name = "SERVICE_NAME",
        required_unless_present = "simulate",
        conflicts_with = "simulate"
    )]
    pub service_name: Option<String>,
    /// Replay the installer locally against this image instead of calling the OVH API.
    #[arg(long, value_name = "IMAGE")]
    pub simulate: Option<PathBuf>,
    /// customizations.imageURL: where OVH's installer downloads the image (http or https, reachable from the internet).
    #[arg(
        long,
        value_name = "URL",
        required_unless_present = "simulate",
        conflicts_with = "simulate"
    )]
    pub image_url: Option<String>,
    /// The build's manifest.json, whose ovhReinstall body (checksum, efiBootloaderPath) is the base of the request.
    #[arg(long, default_value = "out/manifest.json", conflicts_with = "simulate")]
    pub manifest: PathBuf,
    /// Print the signed request (consumer key, signature and header values masked) and send nothing.
    #[arg(long, conflicts_with = "simulate")]
    pub dry_run: bool,
    /// Return once OVH has accepted the reinstall, printing the task id, instead of following the install.
    #[arg(long, conflicts_with = "simulate")]
    pub no_wait: bool,
    /// Seconds between two looks at the task and the install status.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "simulate")]
    pub poll_interval: u64,
    /// Boot mode of the simulated server.
    #[arg(long, value_parser = vocabulary(Firmware::ALL, Firmware::name), default_value_t = Firmware::Bios, conflicts_with = "service_name")]
    pub firmware: Firmware,
    /// Number of disks of the simulated server.
    #[arg(long, default_value_t = 2, conflicts_with = "service_name")]
    pub disks: u32,
    /// Size of each virtual disk (sparse).
    #[arg(long, value_parser = parse_size, default_value = "8GiB", conflicts_with = "service_name")]
    pub disk_size: u64,
    /// The API's `storage` JSON (partitioning.layout with fileSystem, mountPoint, raidLevel, size, extras.lv).
    /// Default: the server's default layout (simulated: swap on every disk and / in ext4 on RAID1 filling the disks).
    #[arg(long)]
    pub storage: Option<PathBuf>,
    /// customizations.hostname [default with --simulate: kiln-replay].
    #[arg(long)]
    pub hostname: Option<String>,
    /// customizations.sshKey.
    #[arg(long)]
    pub ssh_key: Option<String>,
    /// customizations.configDriveUserData, from a file (sent base64-encoded to the API).
    #[arg(long)]
    pub user_data: Option<PathBuf>,
    /// customizations.configDriveMetadata entry KEY=VALUE; repeatable (replay only: OVH's published schema lacks it).
    #[arg(long = "metadata", value_parser = parse_key_value, conflicts_with = "service_name")]
    pub metadata: Vec<(String, String)>,
    /// customizations.httpHeaders entry, 'Name: value'; repeatable. OVH's installer sends them when it downloads
    /// the image (the replay's server refuses downloads without them).
    #[arg(long = "http-header", visible_alias = "header", value_name = "'NAME: VALUE'", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// customizations.imageCheckSumType.
    #[arg(long, value_parser = vocabulary(ChecksumType::ALL, ChecksumType::name), default_value_t = ChecksumType::Sha512, conflicts_with = "service_name")]
    pub checksum_type: ChecksumType,
    /// customizations.efiBootloaderPath (default: from the manifest, or the image's embedded one); must be the image's.
    #[arg(long)]
    pub efi_bootloader_path: Option<String>,
    /// Skip the contract check and replay even an image that will fail (the faithful, slow way).
    #[arg(long, conflicts_with = "service_name")]
    pub no_preflight: bool,
    /// Give up after this many seconds: on the installer or the first boot each with --simulate [default: 1800],
    /// on the whole install through the API [default: 7200].
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Keep the virtual disks and logs in this directory (default: a temporary directory, removed).
    #[arg(long, conflicts_with = "service_name")]
    pub keep: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum PublishCommand {
    /// Upload a raw disk image as an EBS snapshot (EBS direct APIs: only its
    /// non-zero 512 KiB blocks, in parallel, each with its SHA-256), register
    /// it as an AMI (x86_64, ENA, uefi-preferred, IMDSv2 only, gp3 root
    /// /dev/xvda, tagged with the image's version and SHA-512), and record
    /// the ids in the build's manifest.json. A failed publish deletes what it
    /// created.
    #[command(
        after_help = "Credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN), else the profile \
(--profile, AWS_PROFILE, default) in ~/.aws/credentials or ~/.aws/config. Region: --region, AWS_REGION, \
AWS_DEFAULT_REGION, the profile's region.

Examples:
  kiln publish aws out/debian-12-ami-1.0.0-ami.raw --name debian-12-ami-1.0.0 --region eu-west-3
  kiln publish aws out/disk.raw --name test-1 --profile ci --jobs 32 --json
  kiln publish aws out/disk.raw --name test-1 --region us-east-1 --endpoint-url http://127.0.0.1:5000"
    )]
    Aws(AwsPublishArgs),
    /// Push an image to an OCI registry as OVHcloud's image CI does with
    /// `oras push`: an OCI artifact of type application/vnd.ovh.byolinux.image.v1
    /// whose layers are the image (application/octet-stream), its .sha512
    /// (text/plain) and the build's manifest.json, each named by its
    /// org.opencontainers.image.title annotation so that `oras pull` and
    /// `kiln pull` restore the files. Blobs go up in chunks, are skipped when
    /// the registry has them, and a broken upload is resumed; the tag is set
    /// only once every blob is verified present, so a failed push publishes
    /// nothing.
    #[command(after_help = OCI_HELP)]
    Oci(OciPublishArgs),
}

const OCI_HELP: &str =
    "Credentials: --username with the password (or token) on stdin (--password-stdin), else the registry's \
entry in $DOCKER_CONFIG/config.json or ~/.docker/config.json (what `docker login` and `oras login` write: \
\"auths\" with a base64 \"auth\"; credential helpers are not called). Both Basic and Bearer-token \
registries are handled.

An existing tag is refused unless --force. The image's .sha512 must match the image.

Examples:
  kiln publish oci out/debian-12-byol-1.0.0.qcow2 registry.example.com/images/debian-12-byol:1.0.0
  echo \"$TOKEN\" | kiln publish oci out/debian-12-byol-1.0.0.qcow2 ghcr.io/acme/byol:1.0.0 \\
      --username acme --password-stdin
  kiln publish oci out/disk.qcow2 127.0.0.1:5000/test/disk:dev --plain-http --force --json";

const VERIFY_HELP: &str = "Rules, each reported PASS or FAIL: every line of SHA512SUMS matches its file; \
every FILE.sha512 matches FILE; every artifact and SBOM named in manifest.json exists with the recorded \
SHA-512 and is listed in SHA512SUMS; every SBOM describes its artifact by that SHA-512; with a key, the \
signature of SHA512SUMS is good and made by that key (a missing signature fails). Without a key the \
signature is not checked, and the report says so.

Keys: --key takes an SSH public key file (the .pub of the key given to `kiln build --sign-key`); \
--allowed-signers an OpenSSH allowed-signers file (principals with namespaces=\"kiln-image\" or none); \
--gpg-keyring an OpenPGP public keyring or exported key (`gpg --export KEY > key.gpg`, armored or not), \
checked with gpgv.

Examples:
  kiln verify out
  kiln verify out --key ~/.ssh/id_ed25519.pub
  kiln verify out --allowed-signers release-signers
  kiln verify out --gpg-keyring release-key.gpg --json";

const PULL_HELP: &str = "Files are written as FILE.part and renamed only once every layer is verified: a \
failed pull leaves nothing behind. Credentials as for `kiln publish oci`.

Examples:
  kiln pull registry.example.com/images/debian-12-byol:1.0.0 -o images/
  kiln pull 127.0.0.1:5000/test/disk:dev --plain-http -o /tmp/disk";

const SERVE_HELP: &str = "Exposing it: the default --bind 127.0.0.1:8080 serves this machine only. For \
OVHcloud's installer to download the image, bind a public address (--bind 0.0.0.0:8080) on a machine it can \
reach, with --auth, or put it behind a TLS reverse proxy (kiln serves plain HTTP). On start kiln prints each \
artifact's URL (the imageURL) and, with --auth, the header to pass as `kiln deploy ovh --http-header`.

Served: the regular files of DIR and its subdirectories, read-only; never a hidden file, a *.part file, or \
anything outside DIR (.. and symlinks that leave DIR get 404). GET and HEAD, one byte range per request \
(206, or 416 when out of range), Content-Length always. One access-log line per request on stderr.

Examples:
  kiln serve out
  kiln serve out --bind 0.0.0.0:8080 --auth ovh:\"$(openssl rand -hex 16)\"
  curl -C - -O http://127.0.0.1:8080/debian-12-byol-1.0.0.qcow2";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The directory to serve (a build's --out directory).
    pub dir: PathBuf,
    /// Address and port to listen on; 0.0.0.0:PORT for every interface.
    #[arg(long, default_value = kiln_deploy::serve::DEFAULT_BIND, value_name = "ADDR:PORT")]
    pub bind: String,
    /// Require HTTP Basic authentication with this user and password
    /// (requests without it get 401). Other local users can see it in `ps`:
    /// use a random password per install.
    #[arg(long, value_name = "USER:PASS", value_parser = parse_auth)]
    pub auth: Option<kiln_deploy::serve::Auth>,
}

/// How to reach a registry and log in to it.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// The registry user name; the password or token is read from stdin (--password-stdin).
    #[arg(long, requires = "password_stdin")]
    pub username: Option<String>,
    /// Read the password or token from stdin (one line).
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
    /// Talk plain HTTP instead of HTTPS (a test registry on 127.0.0.1).
    #[arg(long)]
    pub plain_http: bool,
    /// Accept any TLS certificate (a registry with a self-signed one).
    #[arg(long, conflicts_with = "plain_http")]
    pub insecure: bool,
}

#[derive(Debug, Args)]
pub struct OciPublishArgs {
    /// The image (its IMAGE.sha512 is pushed with it).
    pub artifact: PathBuf,
    /// Where to: REGISTRY/REPOSITORY:TAG, e.g. registry.example.com/images/debian-12-byol:1.0.0.
    #[arg(value_name = "REGISTRY/REPO:TAG", value_parser = parse_reference)]
    pub reference: kiln_deploy::oci::Reference,
    /// The build's manifest, pushed as a layer [default: manifest.json beside ARTIFACT].
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Replace the tag if it already exists.
    #[arg(long)]
    pub force: bool,
    /// Bytes per upload request (PATCH).
    #[arg(long, value_parser = parse_size, default_value = "16MiB")]
    pub chunk_size: u64,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print the result as JSON (digest, layers, blobs uploaded and skipped, resumed uploads).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// What to fetch: REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@sha256:DIGEST.
    #[arg(value_name = "REGISTRY/REPO:TAG", value_parser = parse_reference)]
    pub reference: kiln_deploy::oci::Reference,
    /// The directory to write the files into (made if missing).
    #[arg(short, long, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AwsPublishArgs {
    /// The raw disk image (a qcow2 is refused: `qemu-img convert -O raw` it first).
    pub image: PathBuf,
    /// The AMI's name (unique in the account and region).
    #[arg(long)]
    pub name: String,
    /// The AWS region [default: AWS_REGION, AWS_DEFAULT_REGION, the profile's region].
    #[arg(long)]
    pub region: Option<String>,
    /// Send every request here instead of AWS's endpoints (a test service such as moto; any region name is then accepted) [default: AWS_ENDPOINT_URL].
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// The profile of ~/.aws/credentials and ~/.aws/config to use (overrides the AWS_ACCESS_KEY_ID variables).
    #[arg(long)]
    pub profile: Option<String>,
    /// The build's manifest [default: manifest.json beside IMAGE].
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// The AMI's and snapshot's description [default: kiln NAME VERSION (FILE)].
    #[arg(long)]
    pub description: Option<String>,
    /// Blocks uploaded in parallel.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// Give up waiting for the snapshot, then the AMI, after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub wait_timeout: u64,
    /// Print the result as JSON (ids, blocks, bytes sent, upload time).
    #[arg(long)]
    pub json: bool,
}

/// A value parser for one of kiln-spec's vocabulary types: clap offers,
/// completes and checks exactly its names, and the library stays free of clap.
fn vocabulary<T, const N: usize>(all: [T; N], name: fn(T) -> &'static str) -> impl TypedValueParser<Value = T>
where
    T: Copy + FromStr<Err = UnknownName> + Send + Sync + 'static,
{
    PossibleValuesParser::new(all.map(name)).try_map(|given| given.parse::<T>())
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((k, v)) if !k.trim().is_empty() && !k.contains(char::is_whitespace) => {
            Ok((k.trim().to_owned(), v.trim().to_owned()))
        }
        _ => Err(format!("expected 'Name: value', got {s:?}")),
    }
}

fn parse_auth(s: &str) -> Result<kiln_deploy::serve::Auth, String> {
    kiln_deploy::serve::Auth::parse(s)
}

fn parse_reference(s: &str) -> Result<kiln_deploy::oci::Reference, String> {
    kiln_deploy::oci::Reference::parse(s)
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    kiln_spec::parse_size(s)
}

fn parse_release(s: &str) -> Result<semver::Version, String> {
    kiln_build::release::parse_version(s)
}

fn parse_disk_size(s: &str) -> Result<kiln_vm::boot::DiskSize, String> {
    use kiln_vm::boot::DiskSize;
    match s.trim().strip_prefix('+') {
        Some(extra) => parse_size(extra).map(DiskSize::Grow),
        None => parse_size(s).map(DiskSize::Total),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn disk_sizes_are_totals_or_growth() {
        use kiln_vm::boot::DiskSize;
        assert_eq!(parse_disk_size("8GiB"), Ok(DiskSize::Total(8 << 30)));
        assert_eq!(parse_disk_size("+4GiB"), Ok(DiskSize::Grow(4 << 30)));
        assert!(parse_disk_size("+lots").is_err());
    }

    #[test]
    fn firmware_and_checksum_type_take_the_libraries_names() {
        let boot = |extra: &[&str]| Cli::try_parse_from([&["kiln", "boot", "x.qcow2"], extra].concat());
        for (extra, want) in [(&[][..], Firmware::Bios), (&["--firmware", "uefi"], Firmware::Uefi)] {
            match boot(extra).unwrap().command {
                Command::Boot(b) => assert_eq!(b.firmware, want),
                other => panic!("{other:?}"),
            }
        }
        let err = boot(&["--firmware", "efi"]).unwrap_err().to_string();
        assert!(err.contains("[possible values: bios, uefi]"), "{err}");

        let deploy = |extra: &[&str]| {
            let argv = [&["kiln", "deploy", "ovh", "--simulate", "x.qcow2"], extra].concat();
            match Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(Command::Deploy(DeployCommand::Ovh(o))) => Ok((o.firmware, o.checksum_type)),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e.to_string()),
            }
        };
        assert_eq!(deploy(&[]), Ok((Firmware::Bios, ChecksumType::Sha512)));
        assert_eq!(
            deploy(&["--checksum-type", "md5", "--firmware", "uefi"]),
            Ok((Firmware::Uefi, ChecksumType::Md5))
        );
        let err = deploy(&["--checksum-type", "crc32"]).unwrap_err();
        assert!(err.contains("[possible values: md5, sha1, sha256, sha512]"), "{err}");
    }

    #[test]
    fn deploy_ovh_is_the_api_with_a_service_name_and_the_replay_with_simulate() {
        let parse = |argv: &[&str]| {
            Cli::try_parse_from([&["kiln", "deploy", "ovh"], argv].concat()).map(|c| match c.command {
                Command::Deploy(DeployCommand::Ovh(o)) => o,
                other => panic!("{other:?}"),
            })
        };
        let o = parse(&[
            "ns1.ip-1-2-3.eu",
            "--image-url",
            "https://x/i.qcow2",
            "--http-header",
            "Authorization: Basic abc",
            "--header",
            "X-Token: t",
            "--dry-run",
        ])
        .unwrap();
        assert_eq!(o.service_name.as_deref(), Some("ns1.ip-1-2-3.eu"));
        assert_eq!(o.manifest, PathBuf::from("out/manifest.json"));
        assert_eq!(o.headers.len(), 2);
        assert!(o.dry_run && o.simulate.is_none() && o.hostname.is_none());
        let o = parse(&["--simulate", "i.qcow2", "--firmware", "uefi"]).unwrap();
        assert_eq!(o.firmware, Firmware::Uefi);
        let err = |argv: &[&str]| parse(argv).unwrap_err().kind();
        use clap::error::ErrorKind;
        assert_eq!(err(&[]), ErrorKind::MissingRequiredArgument);
        assert_eq!(err(&["ns1"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            err(&["ns1", "--image-url", "u", "--simulate", "i.qcow2"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            err(&["--simulate", "i.qcow2", "--dry-run"]),
            ErrorKind::ArgumentConflict
        );
        // Options of the replay alone do not go with the API.
        assert_eq!(
            err(&["ns1", "--image-url", "u", "--disks", "4"]),
            ErrorKind::ArgumentConflict
        );
    }

    #[test]
    fn imds_takes_keys_and_user_data_but_no_seed_nor_open_network() {
        let boot = |extra: &[&str]| {
            Cli::try_parse_from([&["kiln", "boot", "ami.raw"], extra].concat()).map(|c| match c.command {
                Command::Boot(b) => b,
                other => panic!("{other:?}"),
            })
        };
        let key = "ssh-ed25519 AAAA k";
        let b = boot(&[
            "--imds",
            "--ssh-key",
            key,
            "--user-data",
            "ud.yaml",
            "--disk-size",
            "8GiB",
        ])
        .unwrap();
        assert!(b.imds);
        assert_eq!(b.ssh_keys, [key]);
        assert_eq!(b.user_data.as_deref(), Some(std::path::Path::new("ud.yaml")));
        assert!(!boot(&[]).unwrap().imds);
        for conflicting in [&["--seed", "seed.iso"][..], &["--net"]] {
            let err = boot(&[&["--imds"], conflicting].concat()).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict, "{conflicting:?}");
            assert!(err.to_string().contains("--imds"), "{err}");
        }
    }

    #[test]
    fn parses_check_with_ram() {
        let cli = Cli::try_parse_from(["kiln", "check", "x.qcow2", "--target", "ovh-byol", "--ram", "32GiB"]).unwrap();
        match cli.command {
            Command::Check(c) => assert_eq!(c.ram, Some(32 << 30)),
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["kiln", "check", "x", "--target", "ovh-byol", "--ram", "lots"]).is_err());
    }
}
