//! The serial console: follow the log file QEMU writes as it grows, clean it
//! into plain text, and wait for regular expressions with a deadline.
//!
//! QEMU writes the guest's serial port straight to a file, unbuffered, so a
//! prompt that ends without a newline (`login: `) is visible at once. The
//! reader here strips ANSI escape sequences, carriage returns and other
//! control bytes as they stream in (a sequence may be split across reads)
//! and keeps the whole cleaned text, from which it answers "which patterns
//! have appeared, when" and "what were the last N lines". Non-goals: typing
//! into the console (kiln judges a boot, it does not drive it).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use regex::Regex;

use crate::error::{Result, VmError};

/// How much text before the end of the previous scan a new scan looks at
/// again, so a match split across two reads (or spanning a few lines) is
/// still found without rescanning the whole log each time.
const RESCAN_WINDOW: usize = 64 * 1024;

/// A console log being followed.
#[derive(Debug)]
pub struct Console {
    path: PathBuf,
    file: Option<File>,
    offset: u64,
    strip: AnsiStripper,
    /// Bytes of an incomplete UTF-8 sequence at the end of the last read.
    partial: Vec<u8>,
    text: String,
}

impl Console {
    /// Follows `path`, which need not exist yet.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Console {
            path: path.into(),
            file: None,
            offset: 0,
            strip: AnsiStripper::default(),
            partial: Vec::new(),
            text: String::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what was appended since the last call; returns whether the text grew.
    pub fn poll(&mut self) -> Result<bool> {
        if self.file.is_none() {
            match File::open(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(VmError::io_path("opening console log", &self.path)(e)),
            }
        }
        let file = self.file.as_mut().expect("opened above");
        let len = file
            .metadata()
            .map_err(VmError::io_path("reading console log", &self.path))?
            .len();
        if len < self.offset {
            // Truncated under us (QEMU reopening it): start over.
            self.offset = 0;
            self.text.clear();
            self.partial.clear();
            self.strip = AnsiStripper::default();
        }
        if len == self.offset {
            return Ok(false);
        }
        file.seek(SeekFrom::Start(self.offset))
            .map_err(VmError::io_path("reading console log", &self.path))?;
        let mut raw = Vec::with_capacity((len - self.offset) as usize);
        file.take(len - self.offset)
            .read_to_end(&mut raw)
            .map_err(VmError::io_path("reading console log", &self.path))?;
        self.offset += raw.len() as u64;
        let before = self.text.len();
        self.push(&raw);
        Ok(self.text.len() > before)
    }

    /// Takes bytes as [`Console::poll`] does after reading them from the log:
    /// the cleaning and UTF-8 handling on a byte slice (used by the fuzzer).
    pub fn push(&mut self, raw: &[u8]) {
        self.strip.feed(raw, &mut self.partial);
        let (valid, rest) = match std::str::from_utf8(&self.partial) {
            Ok(s) => (s.len(), 0),
            Err(e) if e.error_len().is_none() => (e.valid_up_to(), self.partial.len() - e.valid_up_to()),
            Err(_) => (self.partial.len(), 0),
        };
        self.text.push_str(&String::from_utf8_lossy(&self.partial[..valid]));
        self.partial.drain(..self.partial.len() - rest);
    }

    /// Everything read so far, cleaned.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The last `n` lines (the last one possibly a prompt without newline).
    pub fn tail(&self, n: usize) -> Vec<String> {
        let text = self.text.strip_suffix('\n').unwrap_or(&self.text);
        if text.is_empty() {
            return Vec::new();
        }
        let lines: Vec<&str> = text.rsplit('\n').take(n).collect();
        lines.into_iter().rev().map(str::to_owned).collect()
    }
}

/// Removes terminal escape sequences and control characters from a byte
/// stream, keeping `\n` and `\t`. Stateful, so a sequence split across two
/// reads is still removed whole.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum AnsiStripper {
    #[default]
    Text,
    /// After ESC.
    Escape,
    /// After ESC and intermediate bytes (`ESC ( B`).
    EscapeIntermediate,
    /// In a control sequence, `ESC [ ... final`.
    Csi,
    /// In an operating system command, `ESC ] ... BEL` or `ESC ] ... ESC \`.
    Osc,
    OscEscape,
}

impl AnsiStripper {
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        use AnsiStripper::*;
        for &b in input {
            *self = match (*self, b) {
                (Text, 0x1b) => Escape,
                (Text, b'\n' | b'\t') => {
                    out.push(b);
                    Text
                }
                (Text, 0x00..=0x1f | 0x7f) => Text,
                (Text, _) => {
                    out.push(b);
                    Text
                }
                (Escape, b'[') => Csi,
                (Escape, b']') => Osc,
                (Escape, 0x20..=0x2f) => EscapeIntermediate,
                (Escape, _) => Text,
                (EscapeIntermediate, 0x20..=0x2f) => EscapeIntermediate,
                (EscapeIntermediate, _) => Text,
                (Csi, 0x40..=0x7e) => Text,
                (Csi, 0x1b) => Escape,
                (Csi, _) => Csi,
                (Osc, 0x07) => Text,
                (Osc, 0x1b) => OscEscape,
                (Osc, _) => Osc,
                (OscEscape, _) => Text,
            };
        }
    }
}

/// A named regular expression to wait for.
#[derive(Debug, Clone)]
pub struct Pattern {
    pub name: String,
    regex: Regex,
}

impl Pattern {
    pub fn new(name: impl Into<String>, regex: &str) -> Result<Self> {
        Ok(Pattern {
            name: name.into(),
            regex: Regex::new(regex).map_err(|e| VmError::Pattern {
                pattern: regex.to_owned(),
                source: Box::new(e),
            })?,
        })
    }

    pub fn as_str(&self) -> &str {
        self.regex.as_str()
    }
}

/// A pattern's first appearance on the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub name: String,
    /// Time since the watch started.
    pub at: Duration,
    /// The line that matched (the whole line, not just the match).
    pub line: String,
}

/// What a set of expectations waits for: every `want` pattern, unless a
/// `fail` pattern (a kernel panic, an emergency shell) appears first.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    want: Vec<(Pattern, Option<Seen>)>,
    fail: Vec<Pattern>,
    /// How far the text had been scanned.
    scanned: usize,
}

impl Expect {
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits for `pattern`.
    pub fn want(mut self, pattern: Pattern) -> Self {
        self.want.push((pattern, None));
        self
    }

    /// Ends the wait as a failure when `pattern` appears.
    pub fn fail_on(mut self, pattern: Pattern) -> Self {
        self.fail.push(pattern);
        self
    }

    /// Looks for patterns in the text appended since the last scan (plus a
    /// window before it); returns the newly seen wanted patterns and the
    /// first failure pattern seen, if any.
    pub fn scan(&mut self, text: &str, at: Duration) -> (Vec<Seen>, Option<Seen>) {
        let from = window_start(text, self.scanned.saturating_sub(RESCAN_WINDOW));
        let window = &text[from..];
        self.scanned = text.len();
        let mut newly = Vec::new();
        for (pattern, seen) in self.want.iter_mut().filter(|(_, s)| s.is_none()) {
            if let Some(m) = pattern.regex.find(window) {
                let s = Seen {
                    name: pattern.name.clone(),
                    at,
                    line: line_around(window, m.start()),
                };
                *seen = Some(s.clone());
                newly.push(s);
            }
        }
        let failed = self.fail.iter().find_map(|p| {
            p.regex.find(window).map(|m| Seen {
                name: p.name.clone(),
                at,
                line: line_around(window, m.start()),
            })
        });
        (newly, failed)
    }

    pub fn all_seen(&self) -> bool {
        self.want.iter().all(|(_, s)| s.is_some())
    }

    /// Every wanted pattern with its first appearance, in the order given.
    pub fn results(&self) -> impl Iterator<Item = (&Pattern, Option<&Seen>)> {
        self.want.iter().map(|(p, s)| (p, s.as_ref()))
    }
}

/// The start of the line containing byte `pos` of `text`.
fn window_start(text: &str, pos: usize) -> usize {
    let mut pos = pos.min(text.len());
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    text[..pos].rfind('\n').map_or(0, |i| i + 1)
}

fn line_around(text: &str, pos: usize) -> String {
    let start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let end = text[pos..].find('\n').map_or(text.len(), |i| pos + i);
    text[start..end].to_owned()
}

/// How a wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every wanted pattern appeared.
    AllSeen,
    /// A failure pattern appeared.
    Failed(Seen),
    /// The deadline passed first.
    TimedOut,
    /// The caller's check asked to stop (the VM exited), with its reason.
    Stopped(String),
}

/// How often the log is polled.
const POLL: Duration = Duration::from_millis(50);

/// Follows `console` until every pattern of `expect` has appeared, a
/// failure pattern appears, `deadline` passes, or `check` (called on every
/// poll, for instance to see whether the VM is still running) returns a
/// reason to stop. An interruption (Ctrl-C) ends the wait with an error.
/// `on_seen` hears about each wanted pattern as it appears.
pub fn wait(
    console: &mut Console,
    expect: &mut Expect,
    started: Instant,
    deadline: Instant,
    mut check: impl FnMut() -> Result<Option<String>>,
    mut on_seen: impl FnMut(&Seen),
) -> Result<Outcome> {
    loop {
        // Checked before reading, so output written just before an exit is
        // still read below.
        let stop = check()?;
        if console.poll()? {
            let (seen, failed) = expect.scan(console.text(), started.elapsed());
            seen.iter().for_each(&mut on_seen);
            if let Some(f) = failed {
                return Ok(Outcome::Failed(f));
            }
        }
        if expect.all_seen() {
            return Ok(Outcome::AllSeen);
        }
        if let Some(reason) = stop {
            return Ok(Outcome::Stopped(reason));
        }
        kiln_exec::check_interrupted()?;
        let now = Instant::now();
        if now >= deadline {
            return Ok(Outcome::TimedOut);
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn strip(chunks: &[&[u8]]) -> String {
        let mut s = AnsiStripper::default();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strips_escapes_and_carriage_returns() {
        let cases: &[(&[&[u8]], &str)] = &[
            (&[b"plain\r\n"], "plain\n"),
            (&[b"[  \x1b[0;32mOK  \x1b[0m] Started x\r\n"], "[  OK  ] Started x\n"),
            (&[b"a\x1b[", b"0;3", b"2mb"], "ab"),
            (&[b"\x1b]0;title\x07after"], "after"),
            (&[b"\x1b]0;title\x1b", b"\\after"], "after"),
            (&[b"\x1b(Bcharset\x1bcreset"], "charsetreset"),
            (&[b"\x1b[?25l\x1b[2J\x1b[Hhome"], "home"),
            (&[b"nul\x00bell\x07tab\tdel\x7f"], "nulbelltab\tdel"),
        ];
        for (chunks, want) in cases {
            assert_eq!(strip(chunks), *want, "{chunks:?}");
        }
    }

    #[test]
    fn keeps_utf8_split_across_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut f = File::create(&path).unwrap();
        let mut c = Console::new(&path);
        let bytes = "déjà vu\n".as_bytes();
        f.write_all(&bytes[..2]).unwrap();
        c.poll().unwrap();
        assert_eq!(c.text(), "d");
        f.write_all(&bytes[2..]).unwrap();
        c.poll().unwrap();
        assert_eq!(c.text(), "déjà vu\n");
    }

    #[test]
    fn tail_includes_an_unterminated_prompt() {
        let mut c = Console::new("/nonexistent");
        c.push(b"one\r\ntwo\r\n\r\nDebian GNU/Linux 12 debian ttyS0\r\n\r\ndebian login: ");
        assert_eq!(c.tail(3), ["Debian GNU/Linux 12 debian ttyS0", "", "debian login: "]);
        assert_eq!(c.tail(100).len(), 6);
        assert!(Console::new("/nonexistent").tail(5).is_empty());
    }

    #[test]
    fn follows_a_file_written_by_another_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                let mut f = File::create(&path).unwrap();
                for chunk in [
                    &b"[    0.000000] Linux version 6.1.0\r\n"[..],
                    b"[  \x1b[0;32mOK  \x1b[0m] Reached target multi-user\r\n",
                    b"\r\nDebian GNU/Linux 12 debian ttyS0\r\n\r\ndebian lo",
                    b"gin: ",
                    b"[   40.1] cloud-init[500]: Cloud-init v. 22.4.2 finished at Mon, 01 Jan 2024. Up 40 seconds\r\n",
                ] {
                    f.write_all(chunk).unwrap();
                    std::thread::sleep(Duration::from_millis(60));
                }
            })
        };
        let mut console = Console::new(&path);
        let mut expect = Expect::new()
            .want(Pattern::new("login prompt", crate::boot::LOGIN_PROMPT).unwrap())
            .want(Pattern::new("cloud-init", crate::boot::CLOUD_INIT_DONE).unwrap());
        let started = Instant::now();
        let mut heard = Vec::new();
        let outcome = wait(
            &mut console,
            &mut expect,
            started,
            started + Duration::from_secs(10),
            || Ok(None),
            |s| heard.push(s.name.clone()),
        )
        .unwrap();
        writer.join().unwrap();
        assert_eq!(outcome, Outcome::AllSeen);
        assert_eq!(heard, ["login prompt", "cloud-init"]);
        let lines: Vec<_> = expect.results().map(|(_, s)| s.unwrap().line.clone()).collect();
        // The prompt has no newline: the cloud-init message lands on its line.
        assert!(lines[0].starts_with("debian login: "), "{lines:?}");
        assert!(lines[1].starts_with("debian login: [   40.1] cloud-init[500]: Cloud-init v. 22.4.2 finished"));
        assert!(console.text().contains("[  OK  ] Reached target multi-user\n"));
    }

    #[test]
    fn times_out_and_reports_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(&path, "booting\nstill booting\n").unwrap();
        let mut console = Console::new(&path);
        let mut expect = Expect::new()
            .want(Pattern::new("booting", "^booting").unwrap())
            .want(Pattern::new("never", "never").unwrap());
        let started = Instant::now();
        let outcome = wait(
            &mut console,
            &mut expect,
            started,
            started + Duration::from_millis(300),
            || Ok(None),
            |_| {},
        )
        .unwrap();
        assert_eq!(outcome, Outcome::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(300));
        let missing: Vec<_> = expect
            .results()
            .filter(|(_, s)| s.is_none())
            .map(|(p, _)| &p.name)
            .collect();
        assert_eq!(missing, ["never"]);
    }

    #[test]
    fn failure_pattern_and_stop_end_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(
            &path,
            "x\n[    3.1] Kernel panic - not syncing: VFS: Unable to mount root fs\n",
        )
        .unwrap();
        let mut console = Console::new(&path);
        let mut expect = Expect::new()
            .want(Pattern::new("login", "login:").unwrap())
            .fail_on(Pattern::new("kernel panic", "Kernel panic").unwrap());
        let now = Instant::now();
        let outcome = wait(
            &mut console,
            &mut expect,
            now,
            now + Duration::from_secs(5),
            || Ok(None),
            |_| {},
        )
        .unwrap();
        match outcome {
            Outcome::Failed(s) => assert!(s.line.starts_with("[    3.1] Kernel panic"), "{s:?}"),
            other => panic!("{other:?}"),
        }

        let mut console = Console::new(dir.path().join("absent.log"));
        let mut expect = Expect::new().want(Pattern::new("login", "login:").unwrap());
        let outcome = wait(
            &mut console,
            &mut expect,
            now,
            now + Duration::from_secs(5),
            || Ok(Some("QEMU exited".to_owned())),
            |_| {},
        )
        .unwrap();
        assert_eq!(outcome, Outcome::Stopped("QEMU exited".to_owned()));
    }

    #[test]
    fn a_match_split_across_polls_is_found() {
        let mut expect = Expect::new().want(Pattern::new("marker", "KILN64 KILNKVM").unwrap());
        let mut text = String::from("KILN16 KILN32 KILN64 KIL");
        assert!(expect.scan(&text, Duration::ZERO).0.is_empty());
        text.push_str("NKVM\n");
        assert_eq!(expect.scan(&text, Duration::from_secs(1)).0.len(), 1);
        assert!(expect.all_seen());
    }

    #[test]
    fn bad_regex_is_a_clear_error() {
        let err = Pattern::new("x", "login(").unwrap_err();
        assert!(err.to_string().contains("\"login(\""), "{err}");
    }
}
