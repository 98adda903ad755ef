//! What a person watching sees while chat-bench runs: an indicatif bar on a terminal, plain
//! lines on stderr otherwise (CI logs, `2> file`), never both.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// How often the bar redraws on its own (its spinner moves even while nothing is counted).
const REDRAW: Duration = Duration::from_millis(100);

/// Progress for a `run` (a spinner) or a `compare` (a bar over all its runs).
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    /// The run currently going, shown before its stage.
    run: std::sync::Mutex<String>,
}

impl Progress {
    /// A bar over `steps` runs, or a spinner when `steps` is `None`.
    pub fn new(steps: Option<u64>) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let (bar, template) = match steps {
                Some(steps) => (
                    ProgressBar::new(steps),
                    "{spinner} [{elapsed_precise}] {bar:24} {pos}/{len} {msg}",
                ),
                None => (
                    ProgressBar::new_spinner(),
                    "{spinner} [{elapsed_precise}] {msg}",
                ),
            };
            let style = ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(REDRAW);
            bar
        });
        Progress {
            bar,
            run: std::sync::Mutex::new(String::new()),
        }
    }

    fn run_name(&self) -> String {
        self.run.lock().map(|run| run.clone()).unwrap_or_default()
    }

    /// A new run starts (compare): named on the bar, or on its own line.
    pub fn start_run(&self, name: String) {
        match &self.bar {
            Some(bar) => bar.set_message(name.clone()),
            None => eprintln!("{name} ..."),
        }
        if let Ok(mut run) = self.run.lock() {
            *run = name;
        }
    }

    /// A run ended: counts one step.
    pub fn finish_run(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    /// What the current run is doing; only the bar shows it.
    pub fn stage(&self, stage: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{}: {stage}", self.run_name()));
        }
    }

    /// Deliveries so far; only the bar shows them.
    pub fn deliveries(&self, delivered: u64, expected: u64) {
        if let Some(bar) = &self.bar {
            let percent = if expected > 0 {
                delivered as f64 * 100.0 / expected as f64
            } else {
                0.0
            };
            bar.set_message(format!(
                "{}: {} of {} deliveries ({percent:.0}%)",
                self.run_name(),
                crate::units::count(delivered),
                crate::units::count(expected),
            ));
        }
    }

    /// A line that stays (a run's result): above the bar, or plainly on stderr.
    pub fn note(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// A detail worth a line in a log but not on a busy terminal.
    pub fn note_verbose(&self, line: String) {
        if self.bar.is_none() {
            eprintln!("  {line}");
        }
    }

    /// Something went wrong that the reader must not miss.
    pub fn warn(&self, line: String) {
        self.note(format!("WARNING: {line}"));
    }

    /// Removes the bar (before the final output goes to stdout).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
