//! What the data tree (or an arc of it) holds, counted: keys and value bytes, for `status`, the
//! metrics, INF and a handoff's announced count. The node keeps no running counters (every
//! write would pay for them, and a crash would leave them wrong), so this is a scan, bounded in
//! time when asked and run by the caller off the runtime's workers. Like every scan it registers its pages with
//! sled's cache and runs sled's deferred frees as it goes (`arc::touch_raw`, [`reclaim`]).

use std::time::Instant;

use super::arc::{reclaim, stored_key, RECLAIM_EVERY};
use super::pieces::PieceHeader;
use super::value::{Head, WHOLE_HEAD};
use super::Storage;
use crate::error::Result;
use crate::protocol::HashKey;

/// How often (in raw entries) the scan looks at the clock.
const CLOCK_EVERY: u64 = 1024;

/// Keys and value bytes (and tombstones, apart), counted by [`Storage::tally`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Keys held (whole values and values in pieces, each once), as INF's count.
    pub keys: u64,
    /// The length of their values, summed: what a client stored, not what sled uses on disk.
    pub value_bytes: u64,
    /// Tombstones held (removals kept until collected): in neither of the above.
    pub tombstones: u64,
    /// `false` when the deadline cut the scan short: the figures are then lower bounds.
    pub complete: bool,
}

impl Storage {
    /// Writes of the entries so far. Read before a count and again later: while it is the
    /// same, nothing a count sees has changed since (a write counts once sled applied it), so
    /// a count tagged with it can be given again as exact.
    pub fn entry_writes(&self) -> u64 {
        self.kv.data_changes()
    }

    /// Counts the keys and value bytes held, stopping at `deadline` (then `complete` is
    /// `false`). A value in pieces counts the length its piece 0 states; leftovers of an
    /// interrupted change (pieces without their piece 0, a piece 0 beside a whole value) are
    /// not counted, as no reader sees them. Tombstones are counted apart; placeholders (a
    /// keys-first batch between its passes) not at all.
    pub fn tally(&self, deadline: Instant) -> Result<Tally> {
        self.tally_arc(&HashKey::ZERO, &HashKey::ZERO, Some(deadline))
    }

    /// [`Storage::tally`] of the arc `[from, to)`, to its end unless `deadline` comes first
    /// (the one counting scan: `count_arc` is its key count).
    pub fn tally_arc(
        &self,
        from: &HashKey,
        to: &HashKey,
        deadline: Option<Instant>,
    ) -> Result<Tally> {
        let mut t = Tally {
            complete: true,
            ..Tally::default()
        };
        let mut last: Option<HashKey> = None;
        for (i, r) in self.raw_arc(from, to).enumerate() {
            let (k, _) = r?;
            let key = stored_key(&k)?;
            let i = i as u64 + 1;
            if i.is_multiple_of(RECLAIM_EVERY) {
                reclaim();
            }
            if i.is_multiple_of(CLOCK_EVERY) && deadline.is_some_and(|d| Instant::now() >= d) {
                t.complete = false;
                return Ok(t);
            }
            // Read again through the cache (see `Storage::touched`); `None`: removed meanwhile.
            let Some(v) = self.touch_raw(&k)? else {
                continue;
            };
            let first = k.len() == 20 || k[20..] == [0, 0, 0, 0];
            if !first || last == Some(key) || v.is_empty() {
                continue;
            }
            last = Some(key);
            if k.len() == 20 {
                match Head::parse(&key, &v)? {
                    Head::Value(_) => {
                        t.keys += 1;
                        t.value_bytes += (v.len() - WHOLE_HEAD) as u64;
                    }
                    Head::Tombstone(_) => t.tombstones += 1,
                    Head::Placeholder => {}
                }
            } else {
                t.keys += 1;
                t.value_bytes += PieceHeader::parse(&v).map_or(0, |h| h.len);
            }
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_key as k;
    use crate::storage::pieces::PIECE_BYTES;
    use crate::storage::StorageOptions;
    use std::time::Duration;

    #[test]
    fn counts_whole_values_and_values_in_pieces_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        let _ = s.insert(&k(1), vec![1; 10]).unwrap();
        let _ = s.insert(&k(2), vec![2; 3 * PIECE_BYTES + 5]).unwrap();
        let _ = s.insert(&k(3), vec![]).unwrap();
        let t = s.tally(Instant::now() + Duration::from_secs(60)).unwrap();
        assert_eq!(
            t,
            Tally {
                keys: 3,
                value_bytes: 10 + 3 * PIECE_BYTES as u64 + 5,
                tombstones: 0,
                complete: true
            }
        );
        assert_eq!(t.keys, s.count().unwrap(), "the same keys as INF counts");
        // A value replaced by a shorter one, and a removal.
        let _ = s.insert(&k(2), vec![2; 7]).unwrap();
        let _ = s.remove(&k(1)).unwrap();
        let t = s.tally(Instant::now() + Duration::from_secs(60)).unwrap();
        assert_eq!((t.keys, t.value_bytes, t.tombstones), (2, 7, 1));
    }

    #[test]
    fn a_deadline_in_the_past_stops_the_scan_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        for n in 0..3000u32 {
            let mut key = [0u8; 20];
            key[..4].copy_from_slice(&n.to_be_bytes());
            let _ = s.insert(&HashKey(key), vec![0; 4]).unwrap();
        }
        let t = s.tally(Instant::now()).unwrap();
        assert!(!t.complete);
        assert_eq!(
            t.keys,
            CLOCK_EVERY - 1,
            "stopped at the first look at the clock"
        );
        let t = s.tally(Instant::now() + Duration::from_secs(60)).unwrap();
        assert_eq!((t.keys, t.value_bytes, t.complete), (3000, 12000, true));
    }
}
