//! Visible progress of a handoff: counters shared with INF and a reporter that logs entries,
//! bytes and rate every few seconds, then one summary line. The summary says "aborted" unless
//! the handoff said how it ended ([`Tracked::finish`]): every early return is covered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tracing::info;

use crate::protocol::{HashKey, PeerAddr};

/// What a handoff moves, and to or from whom: the label of its log lines and INF, and the
/// fields of `dht-store status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// The exchange: "CON" or "DIS".
    pub exchange: &'static str,
    /// Whether this node sends the arc (else it receives it).
    pub sending: bool,
    /// The node at the other end.
    pub peer: PeerAddr,
    /// The arc moving, `[from, to)`.
    pub from: HashKey,
    /// Its end (exclusive).
    pub to: HashKey,
}

impl std::fmt::Display for Transfer {
    /// "CON to 127.0.0.1:5001 [FROM, TO)" (logs cut the keys: see `abbreviated`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dir = if self.sending { "to" } else { "from" };
        write!(
            f,
            "{} {dir} {} [{}, {})",
            self.exchange, self.peer, self.from, self.to
        )
    }
}

/// Counters of one handoff.
#[derive(Debug)]
pub struct Progress {
    /// What moves where, e.g. "CON to 127.0.0.1:5001 [5e38be7d…, 6a24bdc1…)".
    pub label: String,
    /// The same, as fields.
    pub transfer: Transfer,
    /// Entries announced by the count (0 until known).
    pub total: AtomicU64,
    /// Entries moved so far.
    pub entries: AtomicU64,
    /// Value bytes moved so far.
    pub bytes: AtomicU64,
    /// When it began, for the rate.
    pub started: Instant,
}

impl Progress {
    /// Starts counting and spawns the periodic reporter (it ends when the last `Arc` drops).
    pub fn start(transfer: Transfer, every: Duration) -> Arc<Progress> {
        let p = Arc::new(Progress {
            label: transfer.to_string(),
            transfer,
            total: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            started: Instant::now(),
        });
        let weak: Weak<Progress> = Arc::downgrade(&p);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match weak.upgrade() {
                    Some(p) => info!("handoff progress: {}", abbreviated(&p.line())),
                    None => return,
                }
            }
        });
        p
    }

    pub fn add(&self, entries: u64, bytes: u64) {
        self.entries.fetch_add(entries, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// "label: 1200/5000 entries, 11.4 MiB in 0.4 s (3400 entries/s, 32.1 MiB/s)".
    pub fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-6);
        let entries = self.entries.load(Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        let mib = bytes as f64 / (1 << 20) as f64;
        format!(
            "{}: {entries}/{} entries, {mib:.1} MiB in {secs:.1} s ({:.0} entries/s, {:.1} MiB/s)",
            self.label,
            if total > 0 || entries == 0 {
                total.to_string()
            } else {
                "?".into()
            },
            entries as f64 / secs,
            mib / secs,
        )
    }
}

/// `line` with every 40-digit key cut to its first 8 digits: a log line people read need not
/// carry two full keys (INF, which tools read, keeps them).
fn abbreviated(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find(|c: char| c.is_ascii_hexdigit()) {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let run = rest
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(rest.len());
        if run == 40 {
            out.push_str(&rest[..8]);
            out.push('…');
        } else {
            out.push_str(&rest[..run]);
        }
        rest = &rest[run..];
    }
    out.push_str(rest);
    out
}

/// The handoff running now, if any, for INF.
#[derive(Default)]
pub struct Tracker {
    /// Its counters while it runs.
    current: Mutex<Option<Arc<Progress>>>,
}

impl Tracker {
    /// Starts a handoff's progress (reported every `every`) and makes it the one INF shows.
    pub fn begin(&self, transfer: Transfer, every: Duration) -> Tracked<'_> {
        let p = Progress::start(transfer, every);
        *self.lock() = Some(p.clone());
        Tracked {
            tracker: self,
            progress: p,
            ended: false,
        }
    }

    /// The line of the handoff running now, if any.
    pub fn line(&self) -> Option<String> {
        self.lock().as_ref().map(|p| p.line())
    }

    /// The counters of the handoff running now, if any (for `status`).
    pub fn current(&self) -> Option<Arc<Progress>> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Progress>>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A handoff's progress while it runs: its summary is logged when it ends, "aborted" unless
/// [`Tracked::finish`] says otherwise.
pub struct Tracked<'a> {
    /// Where INF finds it; cleared at the end.
    tracker: &'a Tracker,
    /// The counters.
    progress: Arc<Progress>,
    /// The summary was logged.
    ended: bool,
}

impl Tracked<'_> {
    /// Logs the summary with `outcome` ("done (...)", "refused") and clears it from INF.
    pub fn finish(mut self, outcome: &str) {
        self.end(outcome);
    }

    fn end(&mut self, outcome: &str) {
        self.ended = true;
        info!("handoff {outcome}: {}", abbreviated(&self.progress.line()));
        *self.tracker.lock() = None;
    }
}

impl std::ops::Deref for Tracked<'_> {
    type Target = Progress;
    fn deref(&self) -> &Progress {
        &self.progress
    }
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.end("aborted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_cut_keys_to_eight_digits_and_leave_other_numbers() {
        let k = "5e38be7d0511777e27b7031879a175713e76501d";
        let line = format!("CON to 127.0.0.1:5001 [{k}, {k}): 12/40 entries, 0.5 MiB");
        assert_eq!(
            abbreviated(&line),
            "CON to 127.0.0.1:5001 [5e38be7d…, 5e38be7d…): 12/40 entries, 0.5 MiB"
        );
    }

    fn transfer(exchange: &'static str, sending: bool) -> Transfer {
        Transfer {
            exchange,
            sending,
            peer: PeerAddr::new([127, 0, 0, 1].into(), 5001),
            from: crate::protocol::test_key(1),
            to: crate::protocol::test_key(2),
        }
    }

    #[tokio::test]
    async fn a_handoff_shows_while_it_runs_and_not_after_however_it_ends() {
        let t = Tracker::default();
        let every = Duration::from_secs(60);
        let p = t.begin(transfer("CON", true), every);
        p.add(3, 30);
        assert!(t
            .line()
            .is_some_and(|l| l.starts_with("CON to 127.0.0.1:5001 [01")));
        assert!(t.line().is_some_and(|l| l.contains("): 3/")));
        assert_eq!(t.current().map(|p| p.transfer), Some(transfer("CON", true)));
        p.finish("done");
        assert_eq!(t.line(), None);
        assert!(t.current().is_none());
        // An early return: dropped unfinished, it ends all the same ("aborted").
        let p = t.begin(transfer("DIS", false), every);
        assert!(t
            .line()
            .is_some_and(|l| l.starts_with("DIS from 127.0.0.1:5001 [")));
        assert!(t.line().is_some());
        drop(p);
        assert_eq!(t.line(), None);
    }
}
