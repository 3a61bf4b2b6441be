//! Visible progress of a handoff: counters shared with INF and a reporter that logs entries,
//! bytes and rate every few seconds, then one summary line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tracing::info;

/// Counters of one handoff.
#[derive(Debug)]
pub struct Progress {
    /// What moves where, e.g. "CON to 127.0.0.1:5001 (sending)".
    pub label: String,
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
    pub fn start(label: String, every: Duration) -> Arc<Progress> {
        let p = Arc::new(Progress {
            label,
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
                    Some(p) => info!("handoff progress: {}", p.line()),
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

    /// "label: 1200/5000 entries, 11.4 MiB, 3400 entries/s, 32.1 MiB/s, 0.4 s".
    pub fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-6);
        let entries = self.entries.load(Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        let mib = bytes as f64 / (1 << 20) as f64;
        format!(
            "{}: {entries}/{} entries, {mib:.1} MiB, {:.0} entries/s, {:.1} MiB/s, {secs:.1} s",
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
