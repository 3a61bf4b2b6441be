//! Arcs of the ring in the data tree: streaming one in ring order, counting it, deleting it;
//! and keeping sled's cache and garbage in bounds while bulk work runs (`touched`, [`reclaim`]).

use super::bulk::SINGLE_INSERTS_BELOW;
use super::commit::Ticket;
use super::kv::Tree;
use super::value::{parse_whole, Head, ReadFor, Value};
use super::version::Versioned;
use super::Storage;
use crate::error::{Error, Result};
use crate::protocol::HashKey;
use crate::ring;

/// Point reads per entry when scanning, so that sled's cache evicts as a scan goes (see
/// `Storage::touched`).
pub(super) const TOUCHES: usize = 4;

/// Point reads per piece when a scan reads a value in pieces (see [`ReadFor::ScanPieces`]).
pub(super) const PIECE_TOUCHES: usize = 2;

/// Bulk operations (scans, range deletes, imports) call [`reclaim`] after this many entries.
pub(super) const RECLAIM_EVERY: u64 = 64;

/// Runs the garbage sled has queued for freeing, as far as it can.
///
/// sled 0.34 frees what it replaces through crossbeam-epoch's deferred functions: pages it
/// evicts from its cache (with their values), node versions it replaces, and its 512 KiB log
/// buffers once written. Deferred functions wait in a bag per thread until 64 have gathered,
/// then in a global queue that pinning threads drain 8 bags per 128 pins. A bulk import, scan or
/// range delete produces garbage faster than that, held in memory whatever the cache capacity
/// (tens of MiB for a 1 GiB import). Flushing this thread's bag and collecting every `RECLAIM_EVERY`
/// entries frees it as the bulk operation goes (BENCHMARKS.md, "Memory during a handoff").
pub fn reclaim() {
    for _ in 0..4 {
        crossbeam_epoch::pin().flush();
    }
}

/// The HashKey of a key read back from the data tree: 20 bytes (a whole value) or 24 (a
/// piece); anything else is damage.
pub(super) fn stored_key(k: &[u8]) -> Result<HashKey> {
    let key: Option<[u8; 20]> = match k.len() {
        20 | 24 => k.get(..20).and_then(|b| b.try_into().ok()),
        _ => None,
    };
    key.map(HashKey)
        .ok_or_else(|| Error::Damaged(format!("a stored key is {} bytes, not 20 or 24", k.len())))
}

impl Storage {
    /// Whether the data tree holds no entry at all.
    pub fn is_empty(&self) -> bool {
        self.kv.is_empty(Tree::Data)
    }

    /// Number of entries held (a full scan: for diagnostics, not for the request path).
    pub fn count(&self) -> Result<u64> {
        self.count_arc(&HashKey::ZERO, &HashKey::ZERO)
    }

    /// Entries in the arc `[from, to)` (a scan, bounded in memory like every scan); values
    /// only, as INF and a plain handoff count them.
    pub fn count_arc(&self, from: &HashKey, to: &HashKey) -> Result<u64> {
        Ok(self.tally_arc(from, to, None)?.keys)
    }

    /// Entries in the arc `[from, to)`, values and tombstones: what
    /// [`Storage::iter_arc_versioned`] streams.
    pub fn count_arc_versioned(&self, from: &HashKey, to: &HashKey) -> Result<u64> {
        let t = self.tally_arc(from, to, None)?;
        Ok(t.keys + t.tombstones)
    }

    /// The raw entries of the arc `[from, to)`: whole values and pieces, in key order.
    pub(super) fn raw_arc(
        &self,
        from: &HashKey,
        to: &HashKey,
    ) -> impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + '_ {
        ring::arc_ranges(from, to)
            .into_iter()
            .flat_map(move |(start, end)| match end {
                Some(end) => self.kv.range(Tree::Data, start.0..end.0),
                None => self.kv.range(Tree::Data, start.0..),
            })
    }

    /// Deletes every entry of the arc `[from, to)`, tombstones too, streaming the keys (never
    /// collecting them all). Returns how many values were deleted (tombstones and leftovers
    /// are not counted); durable after [`Storage::sync`]. Single removes in
    /// key order: on sled 0.34 they were faster than 1000-key batches and held far less memory
    /// (BENCHMARKS.md, "Figures behind the code"). So the pieces of a value go one by one too (not in one
    /// batch like other changes of pieces): an arc is deleted only once nobody serves it, and
    /// a deletion cut short leaves pieces without their piece 0, which readers take for an
    /// absent value and the next deletion of the arc removes.
    pub fn delete_arc(&self, from: &HashKey, to: &HashKey) -> Result<(u64, Ticket)> {
        self.writable()?;
        let mut deleted = 0u64;
        // The key whose raw entries are being removed, with its stripe held, and whether what
        // it held is known (its whole entry or piece 0 went).
        let mut current: Option<(HashKey, std::sync::MutexGuard<'_, ()>)> = None;
        let mut decided = false;
        for entry in self.raw_arc(from, to) {
            let (k, _) = entry?;
            let key = stored_key(&k)?;
            if current.as_ref().is_none_or(|(c, _)| *c != key) {
                // Released before `preserve`, which may take a stripe itself.
                drop(current.take());
                self.preserve(&key)?;
                current = Some((key, self.stripe(&key)));
                decided = false;
            }
            // One raw entry at a time, piece 0 first: the moment it goes, readers (under the
            // stripe) find the value absent. Registers the page with the cache (`touched`).
            let Some(v) = self.touch_raw(&k)? else {
                continue;
            };
            self.kv.remove(Tree::Data, &k)?;
            // A value: a whole entry of kind value, or else a piece 0. Not one: a tombstone, a
            // placeholder, pieces after a whole entry or without their piece 0 (what an
            // interrupted deletion left). A damaged entry goes uncounted: the arc goes anyway.
            let value = if k.len() == 20 {
                match Head::parse(&key, &v) {
                    Ok(Head::Placeholder) => false,
                    Ok(Head::Value(_)) => true,
                    Ok(Head::Tombstone(_)) | Err(_) => {
                        decided = true;
                        false
                    }
                }
            } else {
                !decided && k[20..] == [0, 0, 0, 0] && !v.is_empty()
            };
            if value {
                decided = true;
                deleted += 1;
                if deleted.is_multiple_of(RECLAIM_EVERY) {
                    reclaim();
                }
            }
        }
        Ok((deleted, self.commit.note_write()))
    }

    /// The entries of the arc `[from, to)` in ring order, streamed from sled (one or two range
    /// scans; nothing is collected). sled iterators are not snapshots: writes to the arc made
    /// during the scan may or may not be seen, so callers fence the arc first.
    /// Values only: tombstones are skipped.
    pub fn iter_arc(
        &self,
        from: &HashKey,
        to: &HashKey,
    ) -> impl Iterator<Item = Result<(HashKey, Value)>> + '_ {
        self.iter_arc_versioned(from, to).filter_map(|r| match r {
            Ok((k, e)) => e.value.map(|v| Ok((k, v))),
            Err(e) => Some(Err(e)),
        })
    }

    /// [`Storage::iter_arc`] with every entry's version, tombstones included (for a handoff
    /// that carries versions, and the repair pass).
    pub fn iter_arc_versioned(
        &self,
        from: &HashKey,
        to: &HashKey,
    ) -> impl Iterator<Item = Result<(HashKey, Versioned<Value>)>> + '_ {
        let mut seen = 0u64;
        let mut last: Option<HashKey> = None;
        self.raw_arc(from, to).filter_map(move |r| {
            seen += 1;
            if seen.is_multiple_of(RECLAIM_EVERY) {
                reclaim();
            }
            self.touched(r, &mut last).transpose()
        })
    }

    /// sled 0.34's iterators load pages without telling its cache, whose LRU learns of a page
    /// only through point reads: a long scan would keep every page it passed in memory.
    /// Reading each value again with `get` registers its page, so the cache evicts as the scan
    /// goes. The LRU handles accesses in blocks of 64 per shard (256 shards), so with one
    /// access per entry a scan still runs far past the capacity; [`TOUCHES`] accesses per entry
    /// make the blocks fill that much sooner and keep a scan near the capacity (BENCHMARKS.md,
    /// "Figures behind the code"). The page is already in memory, so the
    /// extra reads are cheap. `None`: the entry went away meanwhile, it is a placeholder, or
    /// it is a piece of the value read just before (`last`: the pieces are read, and touched,
    /// as a whole at the first one).
    pub(super) fn touched(
        &self,
        r: sled::Result<(sled::IVec, sled::IVec)>,
        last: &mut Option<HashKey>,
    ) -> Result<Option<(HashKey, Versioned<Value>)>> {
        let (k, _) = r?;
        let key = stored_key(&k)?;
        if *last == Some(key) {
            return Ok(None);
        }
        if k.len() == 20 {
            let Some(e) = self.touch(&k)? else {
                *last = Some(key);
                return Ok(None);
            };
            // A placeholder is no whole entry: the key's pieces, if any, are read next.
            let e = parse_whole(&key, e)?;
            if e.is_some() {
                *last = Some(key);
            }
            return Ok(e.map(|e| (key, e)));
        }
        *last = Some(key);
        Ok(self
            .read_entry(&key, ReadFor::ScanPieces)?
            .map(|e| (key, e)))
    }

    /// `get` once, and [`TOUCHES`] times in all for values of 1 KiB and more (see
    /// [`Storage::touched`]). Pages of small values are small, so what the extra reads would
    /// keep in bounds is small too, while they cost a 1M-entry scan most of its time: sled
    /// evicted and re-loaded the pages of a freshly written tree over and over (BENCHMARKS.md,
    /// "Figures behind the code").
    pub(super) fn touch(&self, k: &[u8]) -> Result<Option<sled::IVec>> {
        self.touch_n(k, TOUCHES)
    }

    /// [`Storage::touch`] for a raw key of the data tree: [`PIECE_TOUCHES`] reads for a piece
    /// (a 10 KiB value in two pieces gets the reads it got whole).
    pub(super) fn touch_raw(&self, k: &[u8]) -> Result<Option<sled::IVec>> {
        self.touch_n(
            k,
            if k.len() == 20 {
                TOUCHES
            } else {
                PIECE_TOUCHES
            },
        )
    }

    /// [`Storage::touch`] with `touches` reads in all for values of 1 KiB and more.
    pub(super) fn touch_n(&self, k: &[u8], touches: usize) -> Result<Option<sled::IVec>> {
        // A `get` can write: sled splits an overgrown leaf on the next traversal.
        let v = self.kv.get_latched(Tree::Data, k)?;
        if v.as_ref().is_some_and(|v| v.len() >= SINGLE_INSERTS_BELOW) {
            for _ in 1..touches {
                self.kv.get_latched(Tree::Data, k)?;
            }
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_key as k;
    use crate::storage::pieces::{RawKey, PIECE_BYTES};
    use crate::storage::testing::*;
    use crate::storage::StorageOptions;

    #[test]
    pub(super) fn arcs_stream_in_ring_order_and_wrap() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        for n in [0u8, 10, 20, 30, 255] {
            let _ = s.insert(&k(n), vec![n]).unwrap();
        }
        let keys = |from, to| -> Vec<u8> {
            s.iter_arc(&k(from), &k(to))
                .map(|r| r.unwrap().0 .0[0])
                .collect()
        };
        assert_eq!(keys(10, 30), vec![10, 20]);
        assert_eq!(
            keys(30, 10),
            vec![30, 255, 0],
            "wrapping arc: top range, then from 0"
        );
        assert_eq!(keys(20, 20), vec![0, 10, 20, 30, 255], "whole circle");
    }

    fn totals(s: &Storage) -> (u64, u64) {
        let t = s
            .tally(std::time::Instant::now() + std::time::Duration::from_secs(60))
            .unwrap();
        assert!(t.complete);
        (t.keys, t.value_bytes)
    }

    /// The totals count each key once, whole or in pieces, with its value's length (not its
    /// pieces' sizes), and follow replacements and removals.
    #[test]
    pub(super) fn totals_count_keys_and_value_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        assert_eq!(totals(&s), (0, 0));
        let long = 3 * PIECE_BYTES + 7;
        let _ = s.insert(&k(1), vec![1; 100]).unwrap();
        let _ = s.insert(&k(2), vec![2; long]).unwrap();
        let _ = s.insert(&k(3), Vec::new()).unwrap();
        assert_eq!(totals(&s), (3, 100 + long as u64));
        // A long value replaced by a short one, and the other way round.
        let _ = s.insert(&k(2), vec![2; 10]).unwrap();
        let _ = s.insert(&k(1), vec![1; long]).unwrap();
        assert_eq!(totals(&s), (3, long as u64 + 10));
        let _ = s.remove(&k(1)).unwrap();
        assert_eq!(totals(&s), (2, 10));
        assert_eq!(s.count().unwrap(), 2);
    }

    /// What an arc deletion cut short by a crash leaves (the pieces after piece 0) is invisible
    /// to every reader and counter, does not spoil a later write of the key, and goes with the
    /// next deletion of the arc.
    #[test]
    pub(super) fn pieces_left_by_an_interrupted_deletion_are_invisible_and_go_with_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        let _ = s.insert(&k(1), vec![1; 4 * PIECE_BYTES]).unwrap();
        let _ = s.insert(&k(2), vec![2; 10]).unwrap();
        // The deletion removed piece 0 of k(1), then the process died.
        s.kv.remove(Tree::Data, RawKey::piece(&k(1), 0)).unwrap();
        assert_eq!(s.get(&k(1)).unwrap(), None);
        assert!(!s.contains(&k(1)).unwrap());
        assert_eq!(s.count().unwrap(), 1);
        assert_eq!(snapshot(&s), vec![(k(2), vec![2; 10])]);
        s.begin_cut().unwrap();
        let cut: Vec<_> = s.cut_entries().unwrap().map(|r| r.unwrap().0).collect();
        s.end_cut().unwrap();
        assert_eq!(cut, vec![k(2)]);
        // Damage: stray pieces far out, which no count in a piece 0 covers.
        s.kv.insert(Tree::Data, RawKey::piece(&k(1), u32::MAX), &[7u8; 8][..])
            .unwrap();
        s.kv.insert(Tree::Data, RawKey::piece(&k(1), 1 << 31), &[7u8; 8][..])
            .unwrap();
        // A shorter value written over them reads back whole.
        let _ = s.insert(&k(1), vec![9; PIECE_BYTES + 1]).unwrap();
        assert_eq!(s.get(&k(1)).unwrap().unwrap(), vec![9; PIECE_BYTES + 1][..]);
        assert!(s.remove(&k(1)).unwrap().0);
        assert_eq!(s.get(&k(1)).unwrap(), None);
        // The removal took every piece it found, the stray ones too: its tombstone is left.
        let left: Vec<_> = raw_keys(&s)
            .into_iter()
            .filter(|r| r[..20] == k(1).0)
            .collect();
        assert_eq!(left, vec![k(1).0.to_vec()]);
        let _ = s.insert(&k(1), vec![1; 4 * PIECE_BYTES]).unwrap();
        s.kv.remove(Tree::Data, RawKey::piece(&k(1), 0)).unwrap();
        let (deleted, _) = s.delete_arc(&HashKey::ZERO, &HashKey::ZERO).unwrap();
        assert_eq!(deleted, 1, "k(2) only");
        assert!(raw_keys(&s).is_empty(), "left: {:?}", raw_keys(&s));
    }
}
