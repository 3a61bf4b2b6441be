//! A backup's point-in-time cut of the data tree: a live iterator merged with the copy-on-write
//! trees where writers keep the old version of any key the backup has not reached yet.

use super::arc::{reclaim, stored_key, RECLAIM_EVERY};
use super::kv::Tree;
use super::pieces::{RawKey, ASSEMBLE_RESERVE_MAX, INLINE_MAX, PIECES_PER_BATCH, PIECE_BYTES};
use super::value::ReadFor;
use super::value::Value;
use super::version::{Version, Versioned};
use super::Storage;
use crate::error::{Error, Result};
use crate::protocol::HashKey;

/// A backup's cut while it runs (see [`Storage::begin_cut`]).
#[derive(Default)]
pub(super) struct CutState {
    /// The last key streamed: writers preserve keys above it before changing them, keys at or
    /// below it are already in the backup. `None` before the first entry.
    pub(super) cursor: Option<HashKey>,
    /// How many old versions writers have put in the copy-on-write tree so far: the backup
    /// re-reads that tree only when this moved, instead of seeking it for every entry.
    pub(super) preserved: u64,
}

/// Streams the active cut: the entries as they were when [`Storage::begin_cut`] ran.
///
/// A merge of two sources in key order: one live iterator over the data tree, and the
/// copy-on-write tree, which holds the old version (or absence) of every key a writer changed
/// above the cursor. A key in both is taken from the copy-on-write tree. The live iterator may
/// show a write made after the cut, but only for a key that writer preserved first. The cut's
/// lock is held while each entry is chosen and the cursor moved, so a writer either preserved
/// the key before (and the re-read of the copy-on-write tree sees it) or changes it after the
/// cursor passed it.
pub struct CutEntries<'a> {
    /// The storage whose cut this is.
    pub(super) storage: &'a Storage,
    /// Live iterator over the data tree, from the start.
    pub(super) data: sled::Iter,
    /// The data tree's next entry, read and not yet streamed.
    pub(super) peeked: Option<(sled::IVec, sled::IVec)>,
    /// The data iterator has ended.
    pub(super) data_done: bool,
    /// The copy-on-write tree's first entry above the cursor, as of `cow_seen`.
    pub(super) cow_next: Option<(sled::IVec, sled::IVec)>,
    /// `CutState::preserved` when `cow_next` was read; `None`: read it again.
    pub(super) cow_seen: Option<u64>,
    /// Entries produced, to reclaim sled's garbage as the scan goes (see [`reclaim`]).
    pub(super) streamed: u64,
}

impl CutEntries<'_> {
    pub(super) fn step(&mut self) -> Result<Option<(HashKey, Versioned<Value>)>> {
        use std::ops::Bound::{Excluded, Unbounded};
        loop {
            if self.peeked.is_none() && !self.data_done {
                self.peeked = self.data.next().transpose()?;
                // Once at the end, stay there: a key inserted later is not in the cut, and
                // may lie below the cursor where no writer preserves anything.
                self.data_done = self.peeked.is_none();
            }
            let storage = self.storage;
            let mut cut = storage.cut.lock().unwrap_or_else(|e| e.into_inner());
            let Some(state) = cut.as_mut() else {
                return Err(Error::Backup("the backup cut ended early".into()));
            };
            if self.cow_seen != Some(state.preserved) {
                let lower = match &state.cursor {
                    Some(c) => Excluded(&c.0[..]),
                    None => Unbounded,
                };
                self.cow_next = storage
                    .kv
                    .range::<&[u8], _>(Tree::Cow, (lower, Unbounded))
                    .next()
                    .transpose()?;
                self.cow_seen = Some(state.preserved);
            }
            // The data tree's next key as a HashKey: the pieces of a value share its 20 bytes.
            let data_key = match &self.peeked {
                Some((k, _)) => Some(stored_key(k)?),
                None => None,
            };
            if data_key.is_some_and(|k| state.cursor.is_some_and(|c| k <= c)) {
                // Streamed already: another piece of the value just streamed, or the live
                // version of a key streamed from the copy-on-write tree.
                self.peeked = None;
                continue;
            }
            let from_data = match (data_key, &self.cow_next) {
                (None, None) => return Ok(None),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(dk), Some((ok, _))) => dk.0[..] < ok[..],
            };
            let (key, value) = if from_data {
                let Some(key) = data_key else {
                    continue;
                };
                // Read again, whole, for the cache's sake (see `touched`); under the cut's
                // lock no writer can have changed an unpreserved key since the iterator read it.
                let how = match self.peeked.as_ref().map(|(k, _)| k.len()) {
                    Some(20) | None => ReadFor::Scan,
                    Some(_) => ReadFor::ScanPieces,
                };
                let _ = self.peeked.take();
                (key, storage.read_entry(&key, how)?)
            } else {
                let Some((k, old)) = self.cow_next.take() else {
                    continue;
                };
                self.cow_seen = None;
                let key = stored_key(&k)?;
                (key, storage.old_version(&key, old)?)
            };
            state.cursor = Some(key);
            drop(cut);
            self.streamed += 1;
            if self.streamed.is_multiple_of(RECLAIM_EVERY) {
                reclaim();
            }
            if let Some(v) = value {
                return Ok(Some((key, v)));
            }
            // Absent at the cut (inserted since, or a placeholder): skip it.
        }
    }
}

impl Iterator for CutEntries<'_> {
    /// Values and tombstones, with their versions.
    type Item = Result<(HashKey, Versioned<Value>)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step().transpose()
    }
}

impl Storage {
    /// Before `key` changes: if a backup's cut is active and has not streamed `key` yet, keep
    /// its current version (or its absence) in the copy-on-write tree, once.
    pub(super) fn preserve(&self, key: &HashKey) -> Result<()> {
        let mut cut = self.cut.lock().unwrap_or_else(|e| e.into_inner());
        let Some(state) = cut.as_mut() else {
            return Ok(());
        };
        if state.cursor.is_some_and(|c| *key <= c) || self.kv.contains(Tree::Cow, key.as_bytes())? {
            return Ok(());
        }
        let old = match self.read_entry(key, ReadFor::Request)? {
            Some(Versioned {
                version,
                value: Some(v),
            }) if v.len() > INLINE_MAX => {
                // The pieces first: the cut reads them once the record names them.
                for (n, chunk) in v.chunks(PIECE_BYTES * PIECES_PER_BATCH).enumerate() {
                    let mut batch = sled::Batch::default();
                    for (i, share) in chunk.chunks(PIECE_BYTES).enumerate() {
                        let i = (n * PIECES_PER_BATCH + i) as u32;
                        batch.insert(RawKey::piece(key, i).as_ref(), share);
                    }
                    self.kv.apply(Tree::CowPieces, batch)?;
                    reclaim();
                }
                let mut b = vec![2];
                b.extend_from_slice(&version.0.to_be_bytes());
                b.extend_from_slice(&(v.len() as u64).to_be_bytes());
                b
            }
            Some(Versioned {
                version,
                value: Some(v),
            }) => {
                let mut b = Vec::with_capacity(v.len() + 9);
                b.push(1);
                b.extend_from_slice(&version.0.to_be_bytes());
                b.extend_from_slice(&v);
                b
            }
            Some(Versioned {
                version,
                value: None,
            }) => {
                let mut b = vec![3];
                b.extend_from_slice(&version.0.to_be_bytes());
                b
            }
            None => vec![0],
        };
        self.kv.insert(Tree::Cow, key.as_bytes(), old)?;
        state.preserved += 1;
        Ok(())
    }

    /// Starts a point-in-time cut for a backup: from now on [`Storage::cut_entries`] streams
    /// the entries as they are at this instant, whatever writes do meanwhile. One at a time.
    pub fn begin_cut(&self) -> Result<()> {
        // Not between the two passes of a keys-first batch (see `BatchWrite::KeysFirst`).
        let _bulk = self.bulk.write().unwrap_or_else(|e| e.into_inner());
        let mut cut = self.cut.lock().unwrap_or_else(|e| e.into_inner());
        if cut.is_some() {
            return Err(Error::Backup(
                "a backup of this node is already running".into(),
            ));
        }
        self.kv.clear(Tree::Cow)?;
        self.kv.clear(Tree::CowPieces)?;
        *cut = Some(CutState::default());
        Ok(())
    }

    /// The entries of the active cut in key order (see [`CutEntries`]).
    pub fn cut_entries(&self) -> Result<CutEntries<'_>> {
        let cut = self.cut.lock().unwrap_or_else(|e| e.into_inner());
        if cut.is_none() {
            return Err(Error::Backup("no backup cut is active".into()));
        }
        Ok(CutEntries {
            storage: self,
            data: self.kv.iter(Tree::Data),
            peeked: None,
            data_done: false,
            cow_next: None,
            cow_seen: None,
            streamed: 0,
        })
    }

    /// Ends the cut and drops the old versions it kept.
    pub fn end_cut(&self) -> Result<()> {
        let mut cut = self.cut.lock().unwrap_or_else(|e| e.into_inner());
        *cut = None;
        self.kv.clear(Tree::Cow)?;
        self.kv.clear(Tree::CowPieces)?;
        Ok(())
    }

    /// The entry a copy-on-write record keeps: `0`, absent at the cut; then, after the tag and
    /// the version (u64): `1` and the value; `2` and the length (u64) of a value kept in pieces
    /// in `cow_pieces`; `3`, a tombstone. (The tree lives as long as one cut: no older layout.)
    pub(super) fn old_version(
        &self,
        key: &HashKey,
        v: sled::IVec,
    ) -> Result<Option<Versioned<Value>>> {
        let damaged = || {
            Error::Damaged(format!(
                "the backup's copy of the entry under {key} is damaged"
            ))
        };
        let Some(&tag) = v.first() else {
            return Err(damaged());
        };
        if tag == 0 {
            return Ok(None);
        }
        let version = v
            .get(1..9)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(|b| Version(u64::from_be_bytes(b)))
            .ok_or_else(damaged)?;
        match tag {
            1 => Ok(Some(Versioned::value(
                version,
                Value::Stored(v.subslice(9, v.len() - 9)),
            ))),
            2 => {
                let len = v
                    .get(9..17)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes);
                let (lo, hi) = (RawKey::piece(key, 0), RawKey::piece(key, u32::MAX));
                let mut value =
                    Vec::with_capacity(len.unwrap_or(0).min(ASSEMBLE_RESERVE_MAX) as usize);
                for (i, r) in self.kv.range(Tree::CowPieces, lo..=hi).values().enumerate() {
                    value.extend_from_slice(&r?);
                    if (i as u64 + 1).is_multiple_of(RECLAIM_EVERY) {
                        reclaim();
                    }
                }
                if Some(value.len() as u64) != len {
                    return Err(Error::Damaged(format!(
                        "the backup's copy of the value under {key} is {} bytes, not {len:?}",
                        value.len()
                    )));
                }
                Ok(Some(Versioned::value(version, Value::Assembled(value))))
            }
            3 => Ok(Some(Versioned::tombstone(version))),
            _ => Err(damaged()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_key as k;
    use crate::storage::testing::*;
    use crate::storage::{BatchWrite, StorageOptions};

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Writes between the entries of a cut (inserts of new keys, overwrites and removes,
        /// ahead of the backup and behind it) never show in it: it streams exactly what was
        /// there when it began.
        #[test]
        fn a_cut_streams_the_entries_as_they_were_when_it_began(
            initial in proptest::collection::btree_set(proptest::prelude::any::<u8>(), 0..40),
            writes in proptest::collection::vec(
                (0usize..45, proptest::prelude::any::<u8>(), proptest::prelude::any::<bool>()),
                0..120,
            ),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
            for &n in &initial {
                let _ = s.insert(&k(n), val(n, 0)).unwrap();
            }
            let before = snapshot(&s);
            s.begin_cut().unwrap();
            let mut got = Vec::new();
            let mut version = 0;
            let mut entries = s.cut_entries().unwrap();
            let mut position = 0;
            loop {
                for &(_, n, insert) in writes.iter().filter(|(at, _, _)| *at == position) {
                    version += 1;
                    if insert {
                        let _ = s.insert(&k(n), val(n, version)).unwrap();
                    } else {
                        let _ = s.remove(&k(n)).unwrap();
                    }
                }
                match entries.next() {
                    Some(r) => got.extend(r.map(|(k, e)| e.value.map(|v| (k, v.to_vec()))).unwrap()),
                    None => break,
                }
                position += 1;
            }
            drop(entries);
            s.end_cut().unwrap();
            proptest::prop_assert_eq!(got, before);
        }
    }

    /// The same with a writer thread racing the backup.
    #[test]
    pub(super) fn a_cut_is_a_snapshot_while_another_thread_writes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        for n in (0..=255u8).step_by(2) {
            let _ = s.insert(&k(n), val(n, 0)).unwrap();
        }
        let before = snapshot(&s);
        for round in 0..20u32 {
            s.begin_cut().unwrap();
            let stop = std::sync::atomic::AtomicBool::new(false);
            let got = std::thread::scope(|scope| {
                scope.spawn(|| {
                    let mut x = round.wrapping_mul(2_654_435_761).wrapping_add(1);
                    let mut version = 1;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        let n = x as u8;
                        if x & 0x100 == 0 {
                            let _ = s.insert(&k(n), val(n, version)).unwrap();
                        } else {
                            let _ = s.remove(&k(n)).unwrap();
                        }
                        version += 1;
                    }
                });
                let got: Vec<_> = s
                    .cut_entries()
                    .unwrap()
                    .filter_map(|r| r.map(|(k, e)| e.value.map(|v| (k, v.to_vec()))).unwrap())
                    .collect();
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                got
            });
            s.end_cut().unwrap();
            assert_eq!(got, before, "round {round}");
            // Put the starting state back for the next round.
            for n in 0..=255u8 {
                if n % 2 == 0 {
                    let _ = s.insert(&k(n), val(n, 0)).unwrap();
                } else {
                    let _ = s.remove(&k(n)).unwrap();
                }
            }
        }
    }

    /// A cut that began between the two passes of a keys-first batch would stream the empty
    /// values of its first pass. The writer's keys are the lowest, where a cut starts.
    #[test]
    pub(super) fn a_cut_never_begins_between_the_passes_of_a_keys_first_batch() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        const KEYS: u8 = 64;
        let batch =
            |version| unversioned((0..KEYS).map(|n| (k(n), big(n, version, 2048))).collect());
        let _ = s
            .insert_batch(&mut batch(0), BatchWrite::KeysFirst)
            .unwrap();
        /// Stops the writer however the checks end (a failed one must not leave it running).
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut version = 1;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = s
                        .insert_batch(&mut batch(version), BatchWrite::KeysFirst)
                        .unwrap();
                    version += 1;
                }
            });
            let _stop = Stop(&stop);
            for round in 0..300 {
                s.begin_cut().unwrap();
                let got: Vec<_> = s
                    .cut_entries()
                    .unwrap()
                    .filter_map(|r| r.map(|(k, e)| e.value.map(|v| (k, v.to_vec()))).unwrap())
                    .collect();
                s.end_cut().unwrap();
                assert_eq!(got.len(), KEYS as usize, "round {round}");
                let empty = got.iter().filter(|(_, v)| v.is_empty()).count();
                assert_eq!(empty, 0, "round {round}: {empty} empty values in the cut");
            }
        });
    }

    /// The cut keeps the old version of a large value in pieces (no blob file), streams it
    /// whole, and drops it when it ends.
    #[test]
    pub(super) fn a_cut_keeps_large_old_versions_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        let old: Vec<u8> = (0..(3 << 20) + 5).map(|i| (i % 253) as u8).collect();
        let _ = s.insert(&k(1), old.clone()).unwrap();
        let _ = s.insert(&k(2), vec![2; 9000]).unwrap();
        let _ = s.insert(&k(3), vec![3; 10]).unwrap();
        s.begin_cut().unwrap();
        let _ = s.insert(&k(1), vec![7; 10]).unwrap();
        assert!(s.remove(&k(2)).unwrap().0);
        let _ = s.insert(&k(3), vec![8; 1 << 20]).unwrap();
        assert!(
            s.kv.len(Tree::CowPieces) > 500,
            "{} pieces kept",
            s.kv.len(Tree::CowPieces)
        );
        let cut: Vec<(HashKey, Vec<u8>)> = s
            .cut_entries()
            .unwrap()
            .filter_map(|r| r.map(|(k, e)| e.value.map(|v| (k, v.to_vec()))).unwrap())
            .collect();
        s.end_cut().unwrap();
        assert_eq!(
            cut,
            vec![(k(1), old), (k(2), vec![2; 9000]), (k(3), vec![3; 10])]
        );
        assert!(s.kv.is_empty(Tree::CowPieces) && s.kv.is_empty(Tree::Cow));
        s.flush().unwrap();
        let blobs = std::fs::read_dir(crate::storage::dir::blob_dir(dir.path()))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(blobs, 0, "blob files written");
    }
}
