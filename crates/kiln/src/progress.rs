//! Progress rendering: a spinner per stage with elapsed time (human), or one
//! JSON object per line (`--log-format json`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_build::{Event, Plan, Reporter};

use crate::cli::LogFormat;

pub(crate) fn init_logging(verbose: u8) {
    let _ = verbose; // tracing output goes to stderr when -v is given; see below
    if verbose > 0 {
        std::env::set_var("KILN_VERBOSE", verbose.to_string());
    }
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
        Bars {
            multi,
            bars: Mutex::new(HashMap::new()),
            width,
            explain,
        }
    }

    fn line(&self, line: &str) {
        let _ = self.multi.println(line);
        if self.multi.is_hidden() {
            eprintln!("{line}");
        }
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
                    eprintln!("==> {id}");
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

/// `--log-format json`: stage events on stdout, one object per line.
pub(crate) struct JsonLines;

impl Reporter for JsonLines {
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
        println!("{v}");
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
        LogFormat::Json => println!(
            "{}",
            serde_json::json!({
                "event": "build-end", "status": if ok { "ok" } else { "failed" },
                "duration_s": round3(elapsed), "peak_rss_kib": rss,
            })
        ),
        LogFormat::Human => eprintln!(
            "{} in {:.1}s (kiln peak RSS {} MiB)",
            if ok { "build finished" } else { "build failed" },
            elapsed.as_secs_f64(),
            rss.map(|k| (k / 1024).to_string()).unwrap_or_else(|| "?".into())
        ),
    }
}
