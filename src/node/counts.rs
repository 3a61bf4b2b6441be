//! INF's counts of the entries held, range by range (our arc, each arc held as a copy, the
//! rest), answered within a time budget.
//!
//! A count is a scan (seconds per GiB held), and INF is not only for people: peers ask it to
//! learn which extensions a node speaks, before a join and for every replica they find, and
//! give up after a timeout. So INF never waits for more than [`BUDGET`] of counting. What is
//! counted in time is exact. Otherwise the answer is the last complete count of the same
//! ranges, with its age, while a count in the background (one at a time) brings it up to
//! date. A count is remembered with the store's write counter read before it began
//! (`Storage::entry_writes`): while that has not moved, it is exact without a scan.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::debug;

use crate::error::Result;
use crate::protocol::HashKey;
use crate::storage::{Storage, Tally};

/// The longest INF counts before it answers from the last complete count.
pub const BUDGET: Duration = Duration::from_secs(1);

/// The counts INF gives.
#[derive(Debug, PartialEq, Eq)]
pub enum Counting {
    /// Counted now, or nothing written since the last count: one tally per range.
    Exact(Vec<Tally>),
    /// The last complete count of the same ranges, made this long ago; entries were written
    /// since, and a count runs in the background.
    Stale(Vec<Tally>, Duration),
    /// Too many entries to count within the budget, and no complete count of these ranges
    /// yet: a count runs in the background.
    Unknown,
}

/// One complete count.
#[derive(Clone)]
struct Counted {
    /// What was counted.
    ranges: Vec<(HashKey, HashKey)>,
    /// `Storage::entry_writes` before the count began.
    writes: u64,
    /// When it ended.
    at: Instant,
    /// One per range.
    tallies: Vec<Tally>,
}

/// The last complete count, and whether one runs in the background.
#[derive(Default)]
pub struct Counts {
    /// The last complete count, of whatever ranges were asked.
    last: Mutex<Option<Counted>>,
    /// Set while a background count runs, so that INFs asked meanwhile start no other.
    running: AtomicBool,
}

impl Counts {
    fn last(&self) -> std::sync::MutexGuard<'_, Option<Counted>> {
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counts of `ranges` for INF, counting for at most `budget`. Runs on the caller's
    /// thread (a blocking one: this is a scan); a background count, if one is needed, runs on
    /// the runtime's blocking pool.
    pub fn of(
        self: &Arc<Self>,
        storage: &Arc<Storage>,
        ranges: &[(HashKey, HashKey)],
        budget: Duration,
    ) -> Result<Counting> {
        let writes = storage.entry_writes();
        if let Some(c) = self.last().as_ref() {
            if c.ranges == ranges && c.writes == writes {
                return Ok(Counting::Exact(c.tallies.clone()));
            }
        }
        // While a count runs in the background, a scan here would only slow it down.
        if self.running.load(Ordering::Acquire) {
            return Ok(self.stale(ranges));
        }
        let deadline = Instant::now() + budget;
        let mut tallies = Vec::with_capacity(ranges.len());
        for (from, to) in ranges {
            let t = storage.tally_arc(from, to, Some(deadline))?;
            if !t.complete {
                self.count_in_background(storage, ranges);
                return Ok(self.stale(ranges));
            }
            tallies.push(t);
        }
        self.remember(ranges, writes, &tallies);
        Ok(Counting::Exact(tallies))
    }

    /// The last complete count of `ranges`, if that is what it counted.
    fn stale(&self, ranges: &[(HashKey, HashKey)]) -> Counting {
        match self.last().as_ref() {
            Some(c) if c.ranges == ranges => Counting::Stale(c.tallies.clone(), c.at.elapsed()),
            _ => Counting::Unknown,
        }
    }

    fn remember(&self, ranges: &[(HashKey, HashKey)], writes: u64, tallies: &[Tally]) {
        *self.last() = Some(Counted {
            ranges: ranges.to_vec(),
            writes,
            at: Instant::now(),
            tallies: tallies.to_vec(),
        });
    }

    /// Counts `ranges` in full on the blocking pool, unless a count runs already (or there is
    /// no runtime to run it on).
    fn count_in_background(
        self: &Arc<Self>,
        storage: &Arc<Storage>,
        ranges: &[(HashKey, HashKey)],
    ) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let (me, storage, ranges) = (self.clone(), storage.clone(), ranges.to_vec());
        rt.spawn_blocking(move || {
            let started = Instant::now();
            let writes = storage.entry_writes();
            let counted: Result<Vec<Tally>> = ranges
                .iter()
                .map(|(from, to)| storage.tally_arc(from, to, None))
                .collect();
            match counted {
                Ok(tallies) => {
                    debug!(
                        "INF's counts done in the background in {:.1?}",
                        started.elapsed()
                    );
                    me.remember(&ranges, writes, &tallies);
                }
                Err(e) => debug!("INF's counts in the background failed: {e}"),
            }
            me.running.store(false, Ordering::Release);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageOptions;

    /// Counts of the whole circle and of one half, as INF asks for its ranges.
    fn ranges() -> Vec<(HashKey, HashKey)> {
        let half = HashKey::pow2(159);
        vec![(HashKey::ZERO, half), (half, HashKey::ZERO)]
    }

    fn keys(c: &Counting) -> Option<u64> {
        match c {
            Counting::Exact(t) | Counting::Stale(t, _) => Some(t.iter().map(|t| t.keys).sum()),
            Counting::Unknown => None,
        }
    }

    /// Waits for the background count, then asks again with no budget.
    async fn after_the_background_count(
        counts: &Arc<Counts>,
        s: &Arc<Storage>,
    ) -> Result<Counting> {
        while counts.running.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        counts.of(s, &ranges(), Duration::ZERO)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_the_budget_the_last_count_is_given_with_its_age_and_brought_up_to_date() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(Storage::open(dir.path(), &StorageOptions::default()).unwrap());
        // More raw entries than a scan reads between two looks at the clock.
        for i in 0..3000u32 {
            let _ = s
                .insert(&HashKey::of(&i.to_be_bytes()), vec![1; 10])
                .unwrap();
        }
        let counts = Arc::new(Counts::default());
        // Nothing counted yet, no time to count: unknown, and a count starts.
        assert_eq!(
            counts.of(&s, &ranges(), Duration::ZERO).unwrap(),
            Counting::Unknown
        );
        // Done in the background, and nothing written since: exact without a scan.
        let c = after_the_background_count(&counts, &s).await.unwrap();
        assert_eq!(
            (keys(&c), matches!(c, Counting::Exact(_))),
            (Some(3000), true)
        );
        // A write: the last count is stale, says so, and is counted again.
        let _ = s.insert(&HashKey::of(b"one more"), vec![2]).unwrap();
        match counts.of(&s, &ranges(), Duration::ZERO).unwrap() {
            Counting::Stale(t, _) => assert_eq!(t.iter().map(|t| t.keys).sum::<u64>(), 3000),
            other => panic!("{other:?}"),
        }
        let c = after_the_background_count(&counts, &s).await.unwrap();
        assert_eq!(
            (keys(&c), matches!(c, Counting::Exact(_))),
            (Some(3001), true)
        );
        // With time enough, a count is made now and exact.
        let _ = s.remove(&HashKey::of(b"one more")).unwrap();
        let c = counts.of(&s, &ranges(), Duration::from_secs(30)).unwrap();
        assert_eq!(c, Counting::Exact(vec![c_tally(&s, 0), c_tally(&s, 1)]));
        assert_eq!(keys(&c), Some(3000));
        // Other ranges: the count of the old ones is not theirs.
        let other = vec![(HashKey::ZERO, HashKey::ZERO)];
        assert_eq!(
            counts.of(&s, &other, Duration::ZERO).unwrap(),
            Counting::Unknown
        );
    }

    fn c_tally(s: &Storage, i: usize) -> Tally {
        let (from, to) = ranges()[i];
        s.tally_arc(&from, &to, None).unwrap()
    }
}
