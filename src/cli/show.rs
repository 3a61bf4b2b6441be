//! How the archive commands show progress: on a terminal a bar (with the archive's entry count
//! as its total, and an ETA) or, when the total is unknown, a spinner; otherwise a line every
//! 2 s. Sizes are written one way everywhere, bars and summaries alike ([`size`]).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

/// A size as every line of the CLI writes it: binary units, two decimals ("300.00 MiB").
pub fn size(bytes: u64) -> String {
    HumanBytes(bytes).to_string()
}

/// A summary line: entries, size, time and rate.
pub fn rate_line(entries: u64, bytes: u64, took: Duration) -> String {
    let secs = took.as_secs_f64().max(1e-6);
    format!(
        "{entries} entries, {} in {secs:.1} s ({}/s)",
        size(bytes),
        size((bytes as f64 / secs) as u64)
    )
}

/// The progress of one backup, verify or restore.
pub struct Show {
    /// "backup", "verify" or "restore": the prefix of every line.
    what: &'static str,
    /// The bar or spinner, on a terminal only.
    bar: Option<ProgressBar>,
    /// For the rate.
    started: Instant,
    /// When the message (size and rate) or the plain progress line was last written: both are
    /// throttled, as entries come by the hundred thousand a second.
    last: Mutex<Option<Instant>>,
}

/// How often the bar's message, or a plain progress line, is rewritten.
const BAR_EVERY: Duration = Duration::from_millis(100);
const LINE_EVERY: Duration = Duration::from_secs(2);

impl Show {
    /// `total_entries`, when known (an archive's header says), makes a bar with an ETA.
    pub fn new(what: &'static str, total_entries: Option<u64>) -> Show {
        let bar = std::io::stderr().is_terminal().then(|| {
            let (bar, template) = match total_entries {
                Some(t) => (
                    ProgressBar::new(t),
                    "{prefix} {bar:30} {pos}/{len} entries, {msg} [{elapsed}, ETA {eta}]",
                ),
                None => (
                    ProgressBar::new_spinner(),
                    "{prefix} {spinner} {pos} entries, {msg} [{elapsed}]",
                ),
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(what);
            bar.set_message(size(0));
            // A spinner that turns while the first entries are found (a backup's cut).
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Show {
            what,
            bar,
            started: Instant::now(),
            last: Mutex::new(None),
        }
    }

    /// Whether `every` has passed since the last write (and if so, now counts as one).
    fn due(&self, every: Duration) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some(t) if t.elapsed() < every => false,
            _ => {
                *last = Some(Instant::now());
                true
            }
        }
    }

    fn rate(&self, bytes: u64) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-6);
        format!("{} ({}/s)", size(bytes), size((bytes as f64 / secs) as u64))
    }
}

impl dht_store::backup::Progress for Show {
    fn entry(&self, entries: u64, bytes: u64) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(entries);
                if self.due(BAR_EVERY) {
                    bar.set_message(self.rate(bytes));
                }
            }
            None => {
                // The first call only starts the clock: a line at once says nothing.
                if self.last.lock().map(|l| l.is_none()).unwrap_or(false) {
                    self.due(LINE_EVERY);
                } else if self.due(LINE_EVERY) {
                    eprintln!(
                        "{}: {}",
                        self.what,
                        rate_line(entries, bytes, self.started.elapsed())
                    );
                }
            }
        }
    }

    fn step(&self, what: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_style(
                    ProgressStyle::with_template("{prefix} {spinner} {msg} [{elapsed}]")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_message(format!("{what}…"));
            }
            None => eprintln!("{}: {what}", self.what),
        }
    }
}

impl Drop for Show {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
