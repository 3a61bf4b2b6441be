//! The collection of tombstones: a removal is kept as a tombstone so that an older copy of the
//! value, met later (a node that was away, a handoff, the repair pass), loses to it. Once no
//! such copy can still turn up (the node's tombstone retention, a setting), it goes.
//!
//! A pass scans the data tree's whole entries (tombstones are never in pieces), and removes
//! each tombstone older than the bound under its key's stripe, after reading it again there: a
//! write since the scan read it (a new value, a newer tombstone) stays. Like every scan it
//! registers its pages with sled's cache and runs sled's deferred frees as it goes.

use std::time::Instant;

use super::arc::{reclaim, stored_key, RECLAIM_EVERY};
use super::kv::Tree;
use super::value::Head;
use super::version::Version;
use super::Storage;
use crate::error::Result;

/// How often (in raw entries) the pass looks at the clock.
const CLOCK_EVERY: u64 = 1024;

impl Storage {
    /// Removes the tombstones whose version is older than `before` (e.g. the clock's version
    /// of now minus the retention), stopping at `deadline` if one is given (the next pass
    /// starts over). Values are never touched. Returns how many went. Not synced: a tombstone
    /// that a crash brings back goes with the next pass.
    pub fn collect_tombstones(&self, before: Version, deadline: Option<Instant>) -> Result<u64> {
        self.writable()?;
        let mut collected = 0u64;
        for (i, r) in self.kv.iter(Tree::Data).enumerate() {
            let (k, _) = r?;
            let i = i as u64 + 1;
            if i.is_multiple_of(RECLAIM_EVERY) {
                reclaim();
            }
            if i.is_multiple_of(CLOCK_EVERY) && deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            if k.len() != 20 {
                continue;
            }
            let key = stored_key(&k)?;
            // Read again through the cache (see `Storage::touched`); `None`: removed meanwhile.
            let Some(e) = self.touch_raw(&k)? else {
                continue;
            };
            if !old_tombstone(&key, &e, before)? {
                continue;
            }
            self.preserve(&key)?;
            let _stripe = self.stripe(&key);
            let still = match self.kv.get(Tree::Data, key.as_bytes())? {
                Some(e) => old_tombstone(&key, &e, before)?,
                None => false,
            };
            if still {
                // Leftover pieces beside it go too: the key then holds nothing.
                self.drop_locked(&key)?;
                collected += 1;
            }
        }
        reclaim();
        Ok(collected)
    }
}

/// Whether the whole entry `e` is a tombstone older than `before`.
fn old_tombstone(key: &crate::protocol::HashKey, e: &[u8], before: Version) -> Result<bool> {
    Ok(matches!(Head::parse(key, e)?, Head::Tombstone(v) if v < before))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::protocol::test_key as k;
    use crate::protocol::HashKey;
    use crate::storage::pieces::PIECE_BYTES;
    use crate::storage::testing::*;
    use crate::storage::{StorageOptions, Versioned};

    fn tally(s: &Storage) -> (u64, u64, u64) {
        let t = s.tally(Instant::now() + Duration::from_secs(60)).unwrap();
        (t.keys, t.value_bytes, t.tombstones)
    }

    /// A removed key, whole or in pieces or over several batches, reads as absent everywhere
    /// values are read or counted; only `entry` and the versioned scan and count see its
    /// tombstone, newer than the value it replaced.
    #[test]
    fn a_tombstone_is_invisible_to_every_reader_and_counter() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        let lens = [10, 3 * PIECE_BYTES + 1, (1 << 20) + 3];
        for (n, len) in lens.iter().enumerate() {
            let _ = s.insert(&k(n as u8), vec![n as u8; *len]).unwrap();
        }
        let _ = s.insert(&k(9), vec![9; 7]).unwrap();
        let versions: Vec<Version> = (0..3)
            .map(|n| s.entry(&k(n)).unwrap().unwrap().version)
            .collect();
        for n in 0..3 {
            assert!(s.remove(&k(n)).unwrap().0);
        }
        for n in 0..3u8 {
            let key = k(n);
            assert_eq!(s.get(&key).unwrap(), None);
            assert!(!s.contains(&key).unwrap());
            assert_eq!(s.get_within(&key, 1 << 30).unwrap(), Some(None));
            assert_eq!(s.get_within(&key, 0).unwrap(), Some(None));
            assert!(!s.longer_than(&key, 0).unwrap());
            let e = s.entry(&key).unwrap().unwrap();
            assert!(e.is_tombstone() && e.version > versions[n as usize]);
        }
        assert_eq!(snapshot(&s), vec![(k(9), vec![9; 7])]);
        assert_eq!(tally(&s), (1, 7, 3));
        assert_eq!(s.count().unwrap(), 1);
        assert_eq!(s.count_arc(&k(0), &k(5)).unwrap(), 0);
        assert_eq!(s.count_arc_versioned(&k(0), &k(5)).unwrap(), 3);
        assert_eq!(
            s.count_arc_versioned(&HashKey::ZERO, &HashKey::ZERO)
                .unwrap(),
            4
        );
        let versioned: Vec<_> = s
            .iter_arc_versioned(&HashKey::ZERO, &HashKey::ZERO)
            .map(|r| r.unwrap())
            .map(|(k, e)| (k, e.is_tombstone()))
            .collect();
        assert_eq!(
            versioned,
            vec![(k(0), true), (k(1), true), (k(2), true), (k(9), false)]
        );
        // A backup's cut carries tombstones too (archives keep removals).
        s.begin_cut().unwrap();
        let cut: Vec<_> = s
            .cut_entries()
            .unwrap()
            .map(|r| r.unwrap())
            .map(|(k, e)| (k, e.is_tombstone()))
            .collect();
        s.end_cut().unwrap();
        assert_eq!(cut, versioned);
        // A removal during a cut: the cut keeps the value and its version, not the tombstone.
        let before = s.entry(&k(9)).unwrap().unwrap();
        s.begin_cut().unwrap();
        assert!(s.remove(&k(9)).unwrap().0);
        let cut: Vec<_> = s
            .cut_entries()
            .unwrap()
            .map(|r| r.unwrap())
            .filter(|(key, _)| *key == k(9))
            .collect();
        s.end_cut().unwrap();
        assert_eq!(cut, vec![(k(9), before)]);
        let _ = s.insert(&k(10), vec![1]).unwrap();
        let (deleted, _) = s.delete_arc(&HashKey::ZERO, &HashKey::ZERO).unwrap();
        assert_eq!(deleted, 1, "values only: k(10)");
        assert!(raw_keys(&s).is_empty());
    }

    /// REM of a value leaves a tombstone (`true`); of an absent key or of a tombstone it
    /// changes nothing (`false`): no tombstone for a key never held, no new version.
    #[test]
    fn remove_leaves_a_tombstone_only_where_a_value_was() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        assert!(!s.remove(&k(1)).unwrap().0);
        assert_eq!(s.entry(&k(1)).unwrap(), None);
        assert!(raw_keys(&s).is_empty());
        let _ = s.insert(&k(1), vec![1; 3]).unwrap();
        assert!(s.remove(&k(1)).unwrap().0);
        let tomb = s.entry(&k(1)).unwrap().unwrap();
        assert!(tomb.is_tombstone());
        assert!(!s.remove(&k(1)).unwrap().0);
        assert_eq!(s.entry(&k(1)).unwrap().unwrap(), tomb);
        // A value over a tombstone, newer again.
        let _ = s.insert(&k(1), vec![2; 3 * PIECE_BYTES]).unwrap();
        let e = s.entry(&k(1)).unwrap().unwrap();
        assert!(e.version > tomb.version);
        assert_eq!(e.value.unwrap(), vec![2; 3 * PIECE_BYTES][..]);
        assert_eq!(raw_keys(&s).len(), 3, "the tombstone went with the write");
    }

    /// Only tombstones older than the bound go: not a newer one, never a value (however old,
    /// unversioned ones included). A deadline stops the pass early; the next one finishes.
    #[test]
    fn collect_tombstones_removes_only_old_tombstones_and_never_a_value() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        let mut old = unversioned(vec![(k(1), vec![1; 5]), (k(2), vec![2; 3 * PIECE_BYTES])]);
        let _ = s
            .insert_batch(&mut old, crate::storage::BatchWrite::InPlace)
            .unwrap();
        for n in 3..6 {
            let _ = s.insert(&k(n), vec![n; 5]).unwrap();
        }
        let _ = s.insert(&k(6), vec![6; 2 * PIECE_BYTES]).unwrap();
        assert!(s.remove(&k(3)).unwrap().0);
        assert!(s.remove(&k(6)).unwrap().0);
        let before = s.next_version().unwrap();
        assert!(s.remove(&k(4)).unwrap().0);
        // An old tombstone from a peer, and one from the future.
        let _ = s.apply(&k(7), Versioned::tombstone(Version(5))).unwrap();
        let far = Version::from_millis(before.millis() + 10_000_000);
        let _ = s.apply(&k(8), Versioned::tombstone(far)).unwrap();
        assert_eq!(s.collect_tombstones(before, None).unwrap(), 3);
        let left: Vec<(HashKey, bool)> = s
            .iter_arc_versioned(&HashKey::ZERO, &HashKey::ZERO)
            .map(|r| r.unwrap())
            .map(|(k, e)| (k, e.is_tombstone()))
            .collect();
        assert_eq!(
            left,
            vec![
                (k(1), false),
                (k(2), false),
                (k(4), true),
                (k(5), false),
                (k(8), true)
            ]
        );
        assert_eq!(raw_keys(&s).len(), 1 + 3 + 1 + 1 + 1);
        assert_eq!(s.collect_tombstones(before, None).unwrap(), 0);
        // Everything is older than a bound far ahead: the tombstones go, the values stay.
        let end = Version(u64::MAX);
        assert_eq!(s.collect_tombstones(end, None).unwrap(), 2);
        assert_eq!(s.count().unwrap(), 3);
        assert_eq!(
            s.count_arc_versioned(&HashKey::ZERO, &HashKey::ZERO)
                .unwrap(),
            3
        );
        // A deadline already past: stopped at the first look at the clock.
        for n in 0..3000u32 {
            let mut key = [0xf0u8; 20];
            key[16..].copy_from_slice(&n.to_be_bytes());
            let key = HashKey(key);
            let _ = s.insert(&key, vec![1]).unwrap();
            assert!(s.remove(&key).unwrap().0);
        }
        let early = s.collect_tombstones(end, Some(Instant::now())).unwrap();
        assert!(early < 3000, "{early}");
        assert_eq!(s.collect_tombstones(end, None).unwrap(), 3000 - early);
        assert_eq!(raw_keys(&s).len(), 1 + 3 + 1);
    }

    /// Readers racing a writer that inserts and removes a key (whole, in pieces, in several
    /// batches) see a value as written, or nothing: never a tombstone's bytes, never an empty
    /// value, never the pieces of two writes.
    #[test]
    fn a_reader_never_sees_a_tombstone_as_a_value() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        let value = |i: u32| -> Vec<u8> {
            let len = [40, 3 * PIECE_BYTES, 150 * PIECE_BYTES + 3][i as usize % 3];
            let mut v = vec![(i % 251) as u8 + 1; len];
            v[..4].copy_from_slice(&i.to_be_bytes());
            v
        };
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = s.insert(&k(1), value(i)).unwrap();
                    let _ = s.remove(&k(1)).unwrap();
                    i += 1;
                }
            });
            let (mut values, mut absent) = (0, 0);
            for _ in 0..4000 {
                let checks = [
                    s.get(&k(1)).unwrap(),
                    s.entry(&k(1)).unwrap().and_then(|e| e.value),
                    s.iter_arc(&k(1), &k(2)).next().map(|r| r.unwrap().1),
                ];
                for got in checks {
                    match got {
                        Some(v) => {
                            let i = u32::from_be_bytes(v[..4].try_into().unwrap());
                            if v[..] != value(i)[..] {
                                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                                panic!("read {} bytes that no write wrote", v.len());
                            }
                            values += 1;
                        }
                        None => absent += 1,
                    }
                }
                let _ = s.contains(&k(1)).unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            assert!(values + absent == 12_000);
        });
    }
}
