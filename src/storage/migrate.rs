//! The migration of a directory of FORMAT 1 or 2 to FORMAT 3, at open.
//!
//! The old entries (tree "data": values without a kind or version, piece 0 without a version)
//! are streamed into the tree "entries" in batches, converted: a whole value gets kind 0 and
//! [`Version::ZERO`] in front (unversioned: older than any real version), piece 0 gets
//! `Version::ZERO` in its header, the other pieces stay as they are. After each batch the
//! meta tree's cursor (`MIGRATING_KEY`) names the last key done. `check_format` wrote FORMAT 3
//! and the cursor in one batch before the first, so an older build refuses the directory
//! from then on. At the end the cursor goes, everything is flushed, and the old tree is
//! dropped.
//!
//! Each batch's old entries are removed from the old tree once the cursor has passed them, so
//! that the tree is empty when it is dropped (sled 0.34 reads a tree whole to drop it). A
//! crash anywhere resumes at the next open: after the cursor (a batch written whose cursor
//! did not follow is converted and written again, to the same bytes), or, with the cursor
//! gone, by dropping the old tree. Like all bulk work it registers its pages with sled's cache
//! and runs sled's deferred frees as it goes (`arc::touch_raw`, [`reclaim`]).

use std::time::Instant;

use tracing::info;

use super::arc::reclaim;
use super::bulk::BATCH_ENTRIES;
use super::dir::MIGRATING_KEY;
use super::kv::Tree;
use super::pieces::piece_index;
use super::value::whole_entry;
use super::version::Version;
use super::Storage;
use crate::error::Result;

/// Bytes of old entries per batch at most (besides [`BATCH_ENTRIES`]).
const BATCH_BYTES: usize = 4 << 20;

/// Piece 0's header in FORMAT 1 and 2: write id, length, count; FORMAT 3 puts the version
/// after the write id.
const OLD_PIECE0_HEAD: usize = 20;

#[cfg(test)]
thread_local! {
    /// Test hook: the migration on this thread fails after writing this many batches, before
    /// the last one's cursor (as a crash there would leave it).
    pub(super) static STOP_AFTER: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// An old entry as FORMAT 3 stores it (module doc).
pub(super) fn convert(key: &[u8], old: &[u8]) -> Vec<u8> {
    match piece_index(key) {
        None => whole_entry(Version::ZERO, Some(old)),
        // A piece 0 too short for a header (damage, or a keys-first placeholder) stays as it
        // is: readers take it for what it was.
        Some(0) if old.len() >= OLD_PIECE0_HEAD => {
            let mut p = Vec::with_capacity(old.len() + 8);
            p.extend_from_slice(&old[..8]);
            p.extend_from_slice(&Version::ZERO.0.to_be_bytes());
            p.extend_from_slice(&old[8..]);
            p
        }
        Some(_) => old.to_vec(),
    }
}

impl Storage {
    /// Migrates the entries of the older layout (module doc).
    pub(super) fn migrate(&self) -> Result<()> {
        let started = Instant::now();
        let mut cursor = self
            .kv
            .get(Tree::Meta, MIGRATING_KEY)?
            .filter(|c| !c.is_empty());
        if let Some(c) = &cursor {
            info!(
                "{}: resuming the migration of its entries to data layout 3 after key {}",
                self.dir.display(),
                hex(c)
            );
        } else {
            info!(
                "{}: migrating its entries to data layout 3 (versions)",
                self.dir.display()
            );
        }
        let (mut keys, mut batches) = (0u64, 0u64);
        loop {
            let Some(old) = self.kv.legacy_after(cursor.as_deref()) else {
                break;
            };
            let mut batch = sled::Batch::default();
            let mut written = Vec::new();
            let mut bytes = 0;
            for r in old {
                let (k, v) = r?;
                // Through the cache (see `Storage::touched`): the iterator alone keeps pages.
                let _ = self.kv.legacy_get_latched(&k)?;
                if piece_index(&k).is_none_or(|i| i == 0) {
                    keys += 1;
                }
                bytes += v.len();
                batch.insert(&k, convert(&k, &v));
                written.push(k);
                if written.len() >= BATCH_ENTRIES || bytes >= BATCH_BYTES {
                    break;
                }
            }
            let Some(last) = written.last().cloned() else {
                break;
            };
            self.kv.apply(Tree::Data, batch)?;
            for k in &written {
                self.touch_raw(k)?;
            }
            batches += 1;
            #[cfg(test)]
            if STOP_AFTER.with(|s| s.get()) == Some(batches) {
                return Err(crate::Error::Flush("migration stopped by a test".into()));
            }
            self.kv.insert(Tree::Meta, MIGRATING_KEY, last.clone())?;
            // The old entries go as they are migrated, after the cursor that passed them (in
            // sled's log, so a crash that keeps their removal keeps the new entries too): sled
            // 0.34 reads a whole tree into memory to drop it (a peak of 436 MB for 1M entries
            // of 100 bytes, against 141 MB for the migration), and an empty one costs nothing.
            // Single removes, as `delete_arc` does: they held less memory than batches.
            for k in &written {
                self.kv.legacy_remove(k)?;
            }
            cursor = Some(last);
            reclaim();
        }
        // Everything migrated is durable before the old tree goes.
        self.kv.remove(Tree::Meta, MIGRATING_KEY)?;
        self.kv.flush()?;
        self.kv.drop_legacy()?;
        self.kv.flush()?;
        reclaim();
        info!(
            "{}: migrated to data layout 3: {keys} keys in {batches} batches, {:.1} s",
            self.dir.display(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A whole entry written by the migration: kind value, unversioned.
#[cfg(test)]
fn is_migrated_whole(e: &[u8]) -> bool {
    use super::value::{KIND_VALUE, WHOLE_HEAD};
    e.len() >= WHOLE_HEAD && e[0] == KIND_VALUE && e[1..WHOLE_HEAD] == [0; 8]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_key as k;
    use crate::protocol::HashKey;
    use crate::storage::dir::{FORMAT, FORMAT_KEY};
    use crate::storage::pieces::{RawKey, PIECES_KEY, PIECE_BYTES};
    use crate::storage::testing::*;
    use crate::storage::StorageOptions;

    /// Writes a directory as FORMAT 2 did, straight through sled: whole values as their bytes,
    /// values in pieces with the old piece 0 header (write id, length, count), in slot 0 or
    /// slot 1, a leftover piece, and the marks. Returns what each key must read back as.
    /// `format`: `None` as builds before the layout version wrote (layout 1).
    fn old_directory(
        dir: &std::path::Path,
        keys: u32,
        format: Option<u32>,
    ) -> Vec<(HashKey, Vec<u8>)> {
        let db = sled::open(dir.join("db")).unwrap();
        let data = db.open_tree("data").unwrap();
        let ring = db.open_tree("ring").unwrap();
        if let Some(f) = format {
            ring.insert(FORMAT_KEY, &f.to_be_bytes()[..]).unwrap();
        }
        ring.insert(PIECES_KEY, &[1u8][..]).unwrap();
        let mut want = Vec::new();
        for n in 0..keys {
            let mut key = [0u8; 20];
            key[..4].copy_from_slice(&n.to_be_bytes());
            let key = HashKey(key);
            let len = match n % 7 {
                0 => 3 * PIECE_BYTES + 11,
                1 => 0,
                _ => 100 + n as usize % 50,
            };
            let value: Vec<u8> = (0..len).map(|i| (i as u32 ^ n) as u8).collect();
            if len > PIECE_BYTES {
                let (wid, pieces) = (u64::from(n) + 1, len.div_ceil(PIECE_BYTES) as u32);
                let slot = if n % 2 == 0 { 0 } else { 1 << 31 };
                for (i, share) in value.chunks(PIECE_BYTES).enumerate() {
                    let mut p = wid.to_be_bytes().to_vec();
                    if i == 0 {
                        p.extend_from_slice(&(len as u64).to_be_bytes());
                        p.extend_from_slice(&(slot | pieces).to_be_bytes());
                        p.extend_from_slice(share);
                        data.insert(RawKey::piece(&key, 0), p).unwrap();
                    } else {
                        p.extend_from_slice(share);
                        data.insert(RawKey::piece(&key, slot | i as u32), p)
                            .unwrap();
                    }
                }
                // A leftover in the other slot, of another write: invisible before and after.
                let mut stray = (wid + 1000).to_be_bytes().to_vec();
                stray.extend_from_slice(&[9; 10]);
                data.insert(RawKey::piece(&key, (slot ^ (1 << 31)) | 1), stray)
                    .unwrap();
            } else {
                data.insert(key.as_bytes(), value.clone()).unwrap();
            }
            want.push((key, value));
        }
        db.flush().unwrap();
        want
    }

    fn check(s: &Storage, want: &[(HashKey, Vec<u8>)]) {
        assert_eq!(snapshot(s), want.to_vec());
        assert_eq!(s.count().unwrap(), want.len() as u64);
        for (key, value) in want {
            let e = s.entry(key).unwrap().unwrap();
            assert_eq!(e.version, Version::ZERO, "{key}");
            assert_eq!(e.value.unwrap(), value[..], "{key}");
        }
        assert_eq!(
            s.kv.get(Tree::Meta, FORMAT_KEY).unwrap().unwrap(),
            FORMAT.to_be_bytes()[..]
        );
        assert!(!s.kv.contains(Tree::Meta, MIGRATING_KEY).unwrap());
        assert!(!s.kv.has_legacy(), "the old tree is dropped");
    }

    /// A FORMAT 2 directory (and one of before the layout version) opens with every value,
    /// unversioned, in the new tree; the old tree is gone; new writes are newer than every
    /// migrated entry.
    #[test]
    fn a_directory_of_format_2_is_migrated_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let want = old_directory(dir.path(), 30, None);
        let s = open_released(dir.path());
        check(&s, &want);
        drop(s);
        let dir = tempfile::tempdir().unwrap();
        let want = old_directory(dir.path(), 2500, Some(2));
        {
            let s = open_released(dir.path());
            check(&s, &want);
            let raw = raw_keys(&s);
            let wholes = raw.iter().filter(|r| r.len() == 20).count();
            assert!(raw
                .iter()
                .filter(|r| r.len() == 20)
                .all(|r| is_migrated_whole(&s.kv.get(Tree::Data, r).unwrap().unwrap())));
            let whole = want.iter().filter(|(_, v)| v.len() <= PIECE_BYTES).count();
            assert_eq!(wholes, whole);
            // A new write is newer than the migrated entries.
            let _ = s.insert(&want[0].0, b"new".to_vec()).unwrap();
            assert!(s.entry(&want[0].0).unwrap().unwrap().version > Version::ZERO);
        }
        // And it stays migrated.
        let s = open_released(dir.path());
        assert_eq!(s.get(&want[0].0).unwrap().unwrap(), b"new"[..]);
        assert_eq!(s.count().unwrap(), want.len() as u64);
    }

    /// A migration cut short (after some batches, before the last one's cursor) resumes at the
    /// next open: every entry present once, with its value.
    #[test]
    fn a_migration_cut_short_resumes_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let want = old_directory(dir.path(), 3500, Some(2));
        for stop in [2, 1] {
            STOP_AFTER.with(|s| s.set(Some(stop)));
            let err = when_released(|| Storage::open(dir.path(), &StorageOptions::default()))
                .err()
                .expect("stopped by the hook");
            assert!(err.to_string().contains("stopped by a test"), "{err}");
            STOP_AFTER.with(|s| s.set(None));
            // What an older build sees now: a layout it does not read.
            let db = when_released(|| sled::open(dir.path().join("db"))).unwrap();
            let ring = db.open_tree("ring").unwrap();
            assert_eq!(
                ring.get(FORMAT_KEY).unwrap().unwrap(),
                FORMAT.to_be_bytes()[..]
            );
            assert!(ring.get(MIGRATING_KEY).unwrap().is_some());
            let entries = db.open_tree("entries").unwrap();
            assert!(!entries.is_empty(), "batches were written");
            drop((ring, entries));
            drop(db);
        }
        let s = open_released(dir.path());
        check(&s, &want);
        // Raw entries: each once (one per whole value, one per piece, the strays).
        let pieces: usize = want
            .iter()
            .map(|(_, v)| {
                if v.len() > PIECE_BYTES {
                    v.len().div_ceil(PIECE_BYTES) + 1
                } else {
                    1
                }
            })
            .sum();
        assert_eq!(raw_keys(&s).len(), pieces);
    }

    /// Ending between the cursor's removal and the old tree's drop: the next open drops it.
    #[test]
    fn an_old_tree_left_after_the_migration_is_dropped_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let want = old_directory(dir.path(), 20, Some(1));
        drop(open_released(dir.path()));
        {
            let db = when_released(|| sled::open(dir.path().join("db"))).unwrap();
            let data = db.open_tree("data").unwrap();
            data.insert(k(200).as_bytes(), &b"stale"[..]).unwrap();
            db.flush().unwrap();
        }
        let s = open_released(dir.path());
        check(&s, &want);
    }

    /// A new directory has nothing to migrate and no old tree.
    #[test]
    fn a_new_directory_has_no_old_tree() {
        let dir = tempfile::tempdir().unwrap();
        let s = open_released(dir.path());
        assert!(!s.kv.has_legacy());
        assert!(!s.kv.contains(Tree::Meta, MIGRATING_KEY).unwrap());
    }
}
