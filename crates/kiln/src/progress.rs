//! What kiln tells the user while it works, on stderr: log lines (the
//! `tracing` events of every crate, filtered by `-q`/`-v`/`-vv`), a spinner
//! per stage with elapsed time (human), or one JSON object per line on
//! stdout (`--log-format json`). Log lines and spinners share stderr without
//! tearing each other: while spinners are drawn, a log line suspends them.
//! Results (a plan, rule verdicts, built files) are not progress: commands
//! print them on stdout through [`crate::output`].

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_build::{Event, Plan, Reporter};
use tracing::{Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::cli::LogFormat;

/// How much kiln says on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Verbosity {
    /// `-q`: warnings, errors and results; no progress.
    Quiet,
    /// Progress and results.
    Normal,
    /// `-v`: also every external command with its full command line.
    Verbose,
    /// `-vv`: also every line those commands print.
    Trace,
}

impl Verbosity {
    pub(crate) fn from_flags(quiet: bool, verbose: u8) -> Self {
        match (quiet, verbose) {
            (true, _) => Verbosity::Quiet,
            (false, 0) => Verbosity::Normal,
            (false, 1) => Verbosity::Verbose,
            (false, _) => Verbosity::Trace,
        }
    }

    fn max_level(self) -> Level {
        match self {
            Verbosity::Quiet => Level::WARN,
            Verbosity::Normal => Level::INFO,
            Verbosity::Verbose => Level::DEBUG,
            Verbosity::Trace => Level::TRACE,
        }
    }
}

static VERBOSITY: OnceLock<Verbosity> = OnceLock::new();

/// The verbosity [`init_logging`] was given.
pub(crate) fn verbosity() -> Verbosity {
    VERBOSITY.get().copied().unwrap_or(Verbosity::Normal)
}

/// Routes every `tracing` event at or above `verbosity`'s level to stderr.
pub(crate) fn init_logging(verbosity: Verbosity) {
    let _ = VERBOSITY.set(verbosity);
    let installed = tracing_subscriber::fmt()
        .with_max_level(verbosity.max_level())
        .event_format(LogLine)
        .with_writer(Stderr)
        .try_init();
    if let Err(e) = installed {
        let _ = writeln!(io::stderr(), "kiln: warning: no log output: {e}");
    }
}

/// Progress (info) lines exactly as written, since they are sentences
/// meant for the user; other levels say what they are.
struct LogLine;

impl<S, N> FormatEvent<S, N> for LogLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let prefix = match *event.metadata().level() {
            Level::INFO => "",
            Level::WARN => "kiln: warning: ",
            Level::ERROR => "kiln: error: ",
            Level::DEBUG => "kiln: debug: ",
            Level::TRACE => "kiln: trace: ",
        };
        writer.write_str(prefix)?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The spinners on screen, if any: log lines are written around them.
static BARS_ON_SCREEN: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// stderr for log lines; each event arrives as one write.
struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Self::Writer {
        Stderr
    }
}

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let bars = BARS_ON_SCREEN.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match bars {
            Some(multi) if !multi.is_hidden() => multi.suspend(|| io::stderr().write_all(buf))?,
            _ => io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Runs `f` with the spinners (if any) off the screen, for a prompt or a
/// shell on the terminal; they come back afterwards. Hidden rather than
/// suspended: a suspension holds indicatif's lock, and a log line written
/// meanwhile would wait for it forever.
pub(crate) fn off_screen<T>(f: impl FnOnce() -> T) -> T {
    let bars = BARS_ON_SCREEN.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match bars {
        Some(multi) if !multi.is_hidden() => {
            let _ = multi.clear();
            multi.set_draw_target(ProgressDrawTarget::hidden());
            let out = f();
            multi.set_draw_target(ProgressDrawTarget::stderr());
            out
        }
        _ => f(),
    }
}

/// A reporter that shows nothing (`-q`): failures reach the user as the
/// build's error.
pub(crate) struct Silent;

impl Reporter for Silent {
    fn event(&self, _: Event) {}
}

/// Human progress: one line per stage, a spinner while it runs.
pub(crate) struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
    width: usize,
    /// Print why each stage is rebuilt (`--explain`).
    explain: bool,
}

impl Bars {
    pub(crate) fn new(plan: &Plan, explain: bool) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let width = plan.stages.iter().map(|s| s.id.len()).max().unwrap_or(10);
        *BARS_ON_SCREEN.lock().unwrap_or_else(|e| e.into_inner()) = Some(multi.clone());
        Bars {
            multi,
            bars: Mutex::new(HashMap::new()),
            width,
            explain,
        }
    }

    fn line(&self, line: &str) {
        if self.multi.is_hidden() {
            // Not eprintln!: a closed stderr must not panic the build.
            let _ = writeln!(io::stderr(), "{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        BARS_ON_SCREEN.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl Reporter for Bars {
    fn event(&self, event: Event) {
        let mut bars = self.bars.lock().unwrap();
        match event {
            Event::StageStarted { id, .. } => {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template(&format!(
                        "{{spinner}} {{prefix:<{}}} {{elapsed:>4}}  {{wide_msg}}",
                        self.width
                    ))
                    .expect("valid template"),
                );
                bar.set_prefix(id.clone());
                bar.enable_steady_tick(Duration::from_millis(200));
                if self.multi.is_hidden() {
                    let _ = writeln!(io::stderr(), "==> {id}");
                }
                bars.insert(id, bar);
            }
            Event::Output { id, line } => {
                if let Some(bar) = bars.get(&id) {
                    bar.set_message(line);
                }
            }
            Event::StageFinished { id, elapsed, summary } => {
                let line = format!("✓ {id:<w$} {:>6.1}s  {summary}", elapsed.as_secs_f64(), w = self.width);
                if let Some(bar) = bars.remove(&id) {
                    bar.finish_and_clear();
                }
                self.line(&line);
            }
            Event::StageFailed { id, elapsed } => {
                let line = format!("✗ {id:<w$} {:>6.1}s  failed", elapsed.as_secs_f64(), w = self.width);
                if let Some(bar) = bars.remove(&id) {
                    bar.finish_and_clear();
                }
                self.line(&line);
            }
            Event::StageReused { id, summary } => {
                self.line(&format!("= {id:<w$}    --   {summary}", w = self.width));
            }
            Event::StageSkipped { id, reason } => {
                if self.explain {
                    self.line(&format!("- {id:<w$}    --   skipped: {reason}", w = self.width));
                }
            }
            Event::StageRebuilt { id, reason } => {
                if self.explain {
                    self.line(&format!("! {id:<w$}    --   rebuilt: {reason}", w = self.width));
                }
            }
        }
    }
}

/// One bar for a long transfer (`kiln publish aws`): bytes read, then
/// blocks sent with the rate. Log lines pass above it; with `-q`, or when
/// stderr is not a terminal, nothing is drawn.
pub(crate) struct Transfer {
    multi: MultiProgress,
    bar: ProgressBar,
}

impl Transfer {
    pub(crate) fn new() -> Self {
        let target = if verbosity() == Verbosity::Quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let multi = MultiProgress::with_draw_target(target);
        let bar = multi.add(ProgressBar::new(0));
        *BARS_ON_SCREEN.lock().unwrap_or_else(|e| e.into_inner()) = Some(multi.clone());
        Transfer { multi, bar }
    }

    /// Switches the bar to `template` (indicatif's syntax) from position 0 of `len`.
    pub(crate) fn start(&self, template: &str, len: u64) {
        self.bar
            .set_style(ProgressStyle::with_template(template).expect("valid template"));
        self.bar.reset();
        self.bar.set_length(len);
    }

    pub(crate) fn set(&self, pos: u64, message: String) {
        self.bar.set_position(pos);
        self.bar.set_message(message);
    }

    pub(crate) fn is_hidden(&self) -> bool {
        self.multi.is_hidden()
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
        BARS_ON_SCREEN.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// `--log-format json`: stage events on stdout, one object per line.
///
/// When the reader goes away (`kiln build --log-format json | head -3`), the
/// build is interrupted as by Ctrl-C: no one is left to see how it ends, and
/// its guards clean up on the way out (exit 130).
pub(crate) struct JsonLines<W = io::Stdout> {
    out: Mutex<W>,
    on_gone: fn(),
}

impl JsonLines {
    pub(crate) fn stdout() -> Self {
        JsonLines {
            out: Mutex::new(io::stdout()),
            on_gone: kiln_exec::interrupt::request_interrupt,
        }
    }
}

impl<W: Write> JsonLines<W> {
    fn emit(&self, v: &serde_json::Value) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = writeln!(out, "{v}").and_then(|()| out.flush()) {
            if !kiln_exec::interrupted() {
                tracing::warn!("cannot write build events to stdout ({e}); stopping the build");
            }
            (self.on_gone)();
        }
    }
}

impl<W: Write + Send> Reporter for JsonLines<W> {
    fn event(&self, event: Event) {
        let v = match event {
            Event::StageStarted { id, title } => {
                serde_json::json!({"event": "stage-start", "stage": id, "kind": title})
            }
            Event::StageFinished { id, elapsed, summary } => serde_json::json!({
                "event": "stage-end", "stage": id, "status": "ok",
                "duration_s": round3(elapsed), "summary": summary,
            }),
            Event::StageFailed { id, elapsed } => serde_json::json!({
                "event": "stage-end", "stage": id, "status": "failed", "duration_s": round3(elapsed),
            }),
            Event::StageReused { id, summary } => serde_json::json!({
                "event": "stage-end", "stage": id, "status": "reused", "summary": summary,
            }),
            Event::StageSkipped { id, reason } => serde_json::json!({
                "event": "stage-end", "stage": id, "status": "skipped", "reason": reason,
            }),
            Event::StageRebuilt { id, reason } => serde_json::json!({
                "event": "stage-rebuild", "stage": id, "reason": reason,
            }),
            Event::Output { .. } => return,
        };
        self.emit(&v);
    }
}

fn round3(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// Kiln's own peak resident memory (not its children's), from VmHWM.
pub(crate) fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The closing line of a build.
pub(crate) fn finish(format: LogFormat, ok: bool, elapsed: Duration) {
    let rss = peak_rss_kib();
    match format {
        // A closed stdout has already interrupted the build; nothing to add.
        LogFormat::Json => drop(writeln!(
            io::stdout(),
            "{}",
            serde_json::json!({
                "event": "build-end", "status": if ok { "ok" } else { "failed" },
                "duration_s": round3(elapsed), "peak_rss_kib": rss,
            })
        )),
        LogFormat::Human => tracing::info!(
            "{} in {:.1}s (kiln peak RSS {} MiB)",
            if ok { "build finished" } else { "build failed" },
            elapsed.as_secs_f64(),
            rss.map(|k| (k / 1024).to_string()).unwrap_or_else(|| "?".into())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static GONE: AtomicUsize = AtomicUsize::new(0);

    /// A pipe whose reader has left after `room` lines.
    struct Closing {
        room: usize,
        lines: Vec<u8>,
    }

    impl Write for Closing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.lines.iter().filter(|&&b| b == b'\n').count() >= self.room {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            self.lines.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_events_stop_the_build_when_the_reader_leaves() {
        let json = JsonLines {
            out: Mutex::new(Closing {
                room: 1,
                lines: Vec::new(),
            }),
            on_gone: || {
                GONE.fetch_add(1, Ordering::SeqCst);
            },
        };
        let started = |id: &str| Event::StageStarted {
            id: id.to_owned(),
            title: "stage".to_owned(),
        };
        json.event(started("bootstrap"));
        assert_eq!(GONE.load(Ordering::SeqCst), 0, "the reader was still there");
        let first = String::from_utf8(json.out.lock().unwrap().lines.clone()).unwrap();
        assert!(first.starts_with(r#"{"event":"stage-start""#), "{first}");
        json.event(started("customise"));
        assert_eq!(GONE.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn flags_give_verbosity() {
        assert_eq!(Verbosity::from_flags(true, 0), Verbosity::Quiet);
        assert_eq!(Verbosity::from_flags(false, 0), Verbosity::Normal);
        assert_eq!(Verbosity::from_flags(false, 1), Verbosity::Verbose);
        assert_eq!(Verbosity::from_flags(false, 2), Verbosity::Trace);
        assert_eq!(Verbosity::from_flags(false, 5), Verbosity::Trace);
        assert_eq!(Verbosity::Verbose.max_level(), Level::DEBUG);
    }
}
