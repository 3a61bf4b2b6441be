//! The node's data on disk: one sled database per data directory.
//!
//! # Durability contract
//!
//! [`Storage::insert`], [`Storage::remove`] and [`Storage::save_ring`] apply a change to sled's
//! in-memory state and hand back a [`Ticket`]; [`Storage::sync`] on that ticket returns only once
//! the change is flushed by sled *and* its log file is `fdatasync`ed: sled 0.34's own `flush`
//! ends in `sync_file_range`, which survives a killed process but not a power cut or a kernel
//! crash (it neither flushes the disk cache nor the file's size). sled also writes pages larger
//! than 128 KiB (large values, or leaves of several values of some KiB) to blob files of their
//! own that it never fsyncs; after a flush that may have made new ones, the flusher `syncfs`es
//! the filesystem too (`BlobSync`). A node answers `T` only after `sync`.
//! Flushes are a group commit: when someone waits in `sync`, one flusher thread flushes
//! everything written so far, and every writer whose change preceded that flush is released by
//! it, so N concurrent writers share one fsync instead of paying one each. Writes nobody waits
//! for yet (a bulk import between its syncs) are not flushed on their own account.
//!
//! # Layout of a data directory
//!
//! ```text
//! DIR/LOCK        an exclusive advisory lock (flock) held by the running node; holds its pid
//! DIR/db/         the sled database
//!   tree "entries"
//!                 key: the 20 bytes of the HashKey, big-endian; value, a whole entry:
//!                   u8 kind, u64 version (big-endian), then for kind 0 (a value) the value
//!                   bytes, up to INLINE_MAX (6 KiB); kind 1 (a tombstone, a removal) has
//!                   nothing after the version. 0 bytes: a placeholder of a keys-first batch
//!                   between its passes (`BatchWrite::KeysFirst`), absent to every reader.
//!                 Longer values are stored in pieces, their version in piece 0 (`pieces`)
//!   tree "data"   the entries of FORMAT 1 and 2 (the value bytes alone, piece 0 without a
//!                 version): read once, by the migration at open, then dropped (`migrate`)
//!   tree "ring"   key: b"state"; value: a RingRecord (below)
//!                 key: b"handoff"; value: a HandoffRecord (below), present only while a
//!                 join or leave is in progress or must be finished after a crash
//!                 key: b"peers"; value: u8 version (= 1), then u64 n, n × addr: the peers
//!                 this node has known (see `node::peers`), where it looks for the ring when
//!                 every successor it knew is dead
//!                 key: b"pieces"; value: [1], once the data tree may hold values in pieces
//!                 key: b"format"; value: u32 big-endian, the layout version (FORMAT): a
//!                 build refuses a directory of a newer layout than it reads
//!                 key: b"clock"; value: u64 big-endian, the clock's reservation (`version`)
//!                 key: b"migrating"; value: the last key of "data" migrated, present only
//!                 while a migration from FORMAT 1 or 2 is under way (`migrate`)
//! ```
//!
//! Tombstones (and placeholders) are invisible to every reader and counter of values: GET,
//! EXI, `contains`, `iter_arc`, `tally`'s keys and bytes, `count_arc`, a backup's cut, the
//! counts of `delete_arc`, as an absent key is. They are seen where versions are compared
//! (`entry`, `apply`, `iter_arc_versioned`, `versions_in` and `digests`, imports in place)
//! and go with [`Storage::collect_tombstones`].
//!
//!
//! Because keys are the big-endian numbers, sled's byte order is ring order: an arc of the ring
//! is one sled range, or two when it wraps past 2^160-1 (see [`crate::ring::arc_ranges`]).
//!
//!
//! The layers, each a file: `kv` (the trees, and the latch every write passes), `commit`
//! (group commit and tickets), `dir` (the directory's lock, files and layout version), `meta`
//! (ring state, handoff record, known peers), `value` (what one key holds), `pieces` (values
//! over `INLINE_MAX`), `bulk` (batch imports), `arc` (scans, counts and deletes of an arc),
//! `tally` (keys and value bytes held, for `status`), `cut` (a backup's point-in-time
//! cut), `digest` (an arc's segments, their digests and versions, for anti-entropy),
//! `version` (versions, tombstones and the clock), `migrate` (older layouts, at open)
//! and `tombstones` (their collection). This file is the facade: [`Storage`], its opening,
//! and the operations on one key.

mod arc;
mod bulk;
mod commit;
mod cut;
mod digest;
mod dir;
mod kv;
mod meta;
mod migrate;
mod pieces;
mod tally;
#[cfg(test)]
mod testing;
mod tombstones;
mod value;
mod version;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use tracing::{error, info};

use bulk::Span;
use commit::{BlobSync, GroupCommit};
use cut::CutState;
use dir::{check_format, remove_unfinished_snapshots, DirLock, Layout};
use kv::{Kv, Tree};
use pieces::PIECES_KEY;
use pieces::{PieceHeader, RawKey};
use value::{parse_whole, Head, ReadFor};
use version::Clock;

use crate::error::Result;
use crate::protocol::HashKey;

pub use arc::reclaim;
pub use bulk::{BatchWrite, Batcher, Import, BATCH_ENTRIES, IMPORT_QUEUE};
pub use commit::{metric, Ticket};
pub use cut::CutEntries;
pub use digest::{entry_digest, Segments, MAX_DEPTH};
pub use dir::{forget_lock, holds_database};
pub use meta::{Change, HandoffRecord, Phase, RingRecord};
pub use pieces::INLINE_MAX;
pub use tally::Tally;
pub use value::Value;
pub use version::{Version, Versioned};

/// Stripes of [`Storage::stripes`].
const STRIPES: usize = 64;

/// Settings of the storage engine.
#[derive(Clone, Debug)]
pub struct StorageOptions {
    /// sled's page cache size in bytes: the bulk of the node's memory.
    pub cache_capacity: u64,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            cache_capacity: 64 << 20,
        }
    }
}

/// A data directory opened by this process: entries and ring state in sled.
pub struct Storage {
    /// The directory, for messages.
    dir: PathBuf,
    /// The database and its trees; every write goes through it (see `kv`).
    kv: Kv,
    /// `Some(cursor)` while a backup runs: keys above the cursor not yet streamed are copied
    /// into `cow` before they change. Writers and the backup take this lock briefly.
    cut: Mutex<Option<CutState>>,
    /// Writers of the data tree hold the stripe of each key they change (a batch holds all
    /// of them): reading a key's pieces and replacing them is then one step for other
    /// writers, and a reader that saw pieces of two writes reads again under the stripe.
    stripes: Vec<Mutex<()>>,
    /// Whether the directory ever held a value in pieces (a mark in the "ring" tree, written
    /// and flushed before the first one). Until then nobody looks for pieces: a write of a
    /// small value or a read of an absent key costs one lookup, not two (an INS of 100 bytes
    /// was measurably slower with the second one: BENCHMARKS.md, "Figures behind the code").
    pieces_seen: std::sync::atomic::AtomicBool,
    /// The next write id for a value stored in pieces (see "Values in pieces").
    next_wid: std::sync::atomic::AtomicU64,
    /// Versions for this node's writes (see `version`).
    clock: Clock,
    /// Held shared by a [`BatchWrite::KeysFirst`] batch for both its passes and exclusively
    /// by [`Storage::begin_cut`], so that a cut never begins between the passes, when keys
    /// hold the empty values nobody wrote.
    bulk: RwLock<()>,
    /// Shared with the flusher thread.
    commit: Arc<GroupCommit>,
    /// The flusher thread, joined on drop.
    flusher: Option<JoinHandle<()>>,
    /// Held last: no other process opens the directory while we have it.
    _lock: DirLock,
}

impl Storage {
    /// Opens (creating if needed) the data directory `dir`: takes its lock first, so that a
    /// second process on the same directory fails here without touching anything.
    pub fn open(dir: &Path, opts: &StorageOptions) -> Result<Storage> {
        dir::create(dir)?;
        let lock = DirLock::acquire(dir)?;
        let db_dir = dir::db_dir(dir);
        remove_unfinished_snapshots(&db_dir)?;
        let db = sled::Config::new()
            .path(&db_dir)
            .cache_capacity(opts.cache_capacity)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| dir::opening_failed(&db_dir, e))?;
        let commit = Arc::new(GroupCommit::new());
        let kv = Kv::open(dir.to_path_buf(), db, commit.clone())?;
        // A backup interrupted by a crash leaves old versions here: they mean nothing now.
        kv.clear(Tree::CowPieces)?;
        kv.clear(Tree::Cow)?;
        let layout = check_format(dir, &kv)?;
        let clock = Clock::load(&kv)?;
        let pieces_seen = kv.contains(Tree::Meta, PIECES_KEY)?;
        // Write ids distinct from those of every earlier run: sled's id generator never
        // repeats across restarts (it persists, and skips ahead after a crash), and a run
        // would need 2^32 writes of pieces to reach the next run's ids.
        let wid_base = kv.generate_id()? << 32;
        // sled's log: `DIR/db/db`. Opened read-only; fdatasync works on any descriptor.
        let log = File::open(dir::log_file(dir))?;
        let flusher = {
            let commit = commit.clone();
            let flush = kv.flush_handle();
            let blobs = BlobSync::new(dir::blob_dir(dir));
            std::thread::Builder::new()
                .name("dht-flusher".into())
                .spawn(move || commit.run(flush, log, blobs))?
        };
        let storage = Storage {
            dir: dir.to_path_buf(),
            kv,
            cut: Mutex::new(None),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            pieces_seen: std::sync::atomic::AtomicBool::new(pieces_seen),
            next_wid: std::sync::atomic::AtomicU64::new(wid_base),
            clock,
            bulk: RwLock::new(()),
            commit,
            flusher: Some(flusher),
            _lock: lock,
        };
        if layout == Layout::Migrate {
            storage.migrate()?;
        }
        info!("opened data directory {}", dir.display());
        Ok(storage)
    }

    /// Takes and releases the lock of `dir` without opening the database: fails with
    /// [`crate::Error::DataDirLocked`] when a node runs on it.
    pub fn open_lock_only(dir: &Path) -> Result<()> {
        DirLock::acquire_quietly(dir).map(drop)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The value under `key`, whole or assembled from its pieces.
    pub fn get(&self, key: &HashKey) -> Result<Option<Value>> {
        self.read_value(key, ReadFor::Request)
    }

    /// [`Storage::get`] if the value is at most `max` bytes (or absent); `None` for a longer
    /// value in pieces, which the caller may read elsewhere than on a latency-sensitive thread
    /// (a whole value is at most [`INLINE_MAX`] and is returned as it is).
    pub fn get_within(&self, key: &HashKey, max: u64) -> Result<Option<Option<Value>>> {
        if let Some(e) = self.kv.get(Tree::Data, key.as_bytes())? {
            if let Some(e) = parse_whole(key, e)? {
                return Ok(Some(e.value));
            }
        }
        if !self.longer_than(key, max)? {
            return self.get(key).map(Some);
        }
        Ok(None)
    }

    /// Whether `key` holds a value in pieces of more than `max` bytes, as its piece 0 says.
    pub fn longer_than(&self, key: &HashKey, max: u64) -> Result<bool> {
        if !self.pieces_seen() {
            return Ok(false);
        }
        Ok(match self.kv.get(Tree::Data, RawKey::piece(key, 0))? {
            Some(p0) => PieceHeader::parse(&p0).is_some_and(|h| h.len > max),
            None => false,
        })
    }

    /// Whether `key` holds a value (a tombstone is none).
    pub fn contains(&self, key: &HashKey) -> Result<bool> {
        // `Some`: the whole entry answers; `None`: none found, nor piece 0.
        let look = || -> Result<Option<bool>> {
            if let Some(e) = self.kv.get(Tree::Data, key.as_bytes())? {
                match Head::parse(key, &e)? {
                    Head::Value(_) => return Ok(Some(true)),
                    Head::Tombstone(_) => return Ok(Some(false)),
                    Head::Placeholder => {}
                }
            }
            Ok(self.has_pieces(key)?.then_some(true))
        };
        if let Some(found) = look()? {
            return Ok(found);
        }
        if !self.pieces_seen() {
            return Ok(false);
        }
        // A writer may have turned pieces into a whole value between the two looks.
        let _stripe = self.stripe(key);
        Ok(look()?.unwrap_or(false))
    }

    /// The entry under `key` with its version: a value, a tombstone, or `None` (nothing).
    pub fn entry(&self, key: &HashKey) -> Result<Option<Versioned<Value>>> {
        self.read_entry(key, ReadFor::Request)
    }

    /// Inserts or replaces, with a new version of the clock (an owner's write: it does not
    /// compare); durable after [`Storage::sync`] of the ticket.
    pub fn insert(&self, key: &HashKey, value: Vec<u8>) -> Result<Ticket> {
        self.insert_versioned(key, value).map(|(_, t)| t)
    }

    /// [`Storage::insert`], handing back the version the value was written with (what its
    /// copies must carry).
    pub fn insert_versioned(&self, key: &HashKey, value: Vec<u8>) -> Result<(Version, Ticket)> {
        self.writable()?;
        self.preserve(key)?;
        let stripe = self.stripe(key);
        // Under the stripe: the versions of one key rise in the order of its writes.
        let version = self.clock.next(&self.kv)?;
        let written = self.write_locked(key, Versioned::value(version, value), Span::ANYTHING)?;
        drop(stripe);
        for k in written {
            self.touch_raw(k.as_ref())?;
        }
        Ok((version, self.commit.note_write()))
    }

    /// Removes: a key holding a value then holds a tombstone of a new version (so that an
    /// older copy of the value met later loses), and `true` comes back; an absent key or a
    /// tombstone stays as it is (`false`). Durable after [`Storage::sync`] of the ticket.
    pub fn remove(&self, key: &HashKey) -> Result<(bool, Ticket)> {
        self.remove_versioned(key, false)
            .map(|(live, _, t)| (live, t))
    }

    /// [`Storage::remove`], handing back whether the key held a value and the version of the
    /// tombstone written, if one was (what its copies must carry). `always`: a key that holds
    /// nothing gets a tombstone too (an owner with replicas: a copy elsewhere may hold a value
    /// this node never saw, and the removal must win over it wherever they meet).
    pub fn remove_versioned(
        &self,
        key: &HashKey,
        always: bool,
    ) -> Result<(bool, Option<Version>, Ticket)> {
        self.writable()?;
        self.preserve(key)?;
        let _stripe = self.stripe(key);
        let (live, tombstone) = match self.kv.get(Tree::Data, key.as_bytes())? {
            Some(e) => match Head::parse(key, &e)? {
                Head::Value(_) => (true, false),
                Head::Tombstone(_) => (false, true),
                Head::Placeholder => (self.has_pieces(key)?, false),
            },
            None => (self.has_pieces(key)?, false),
        };
        let written = if live || (always && !tombstone) {
            let version = self.clock.next(&self.kv)?;
            // Replaces pieces as a short value does, leftovers included.
            self.write_locked(key, Versioned::tombstone(version), Span::ANYTHING)?;
            Some(version)
        } else {
            // Invisible leftovers of an interrupted change go; what the key holds stays.
            let leftovers = self.pieces_if_seen(key)?;
            self.remove_in_batches(&leftovers)?;
            None
        };
        Ok((live, written, self.commit.note_write()))
    }

    /// Applies an entry received from a peer (a value or a tombstone with the version it was
    /// written with) if it supersedes what `key` holds ([`Version::supersedes`]: the newer
    /// wins); the clock observes its version either way. Returns whether it was applied.
    pub fn apply(&self, key: &HashKey, entry: Versioned<Vec<u8>>) -> Result<(bool, Ticket)> {
        self.writable()?;
        self.clock.observe(&self.kv, entry.version)?;
        self.preserve(key)?;
        let stripe = self.stripe(key);
        if !entry.version.supersedes(self.version_locked(key)?) {
            return Ok((false, self.commit.note_write()));
        }
        let written = self.write_locked(key, entry, Span::ANYTHING)?;
        drop(stripe);
        for k in written {
            self.touch_raw(k.as_ref())?;
        }
        Ok((true, self.commit.note_write()))
    }

    /// Removes `key` only if it still holds `value` (a misplaced entry handed to its owner,
    /// unless it changed meanwhile), leaving no tombstone. Returns whether it was removed.
    pub fn remove_if_unchanged(&self, key: &HashKey, value: &[u8]) -> Result<(bool, Ticket)> {
        self.writable()?;
        self.preserve(key)?;
        let _stripe = self.stripe(key);
        let done = match self.read_value_locked(key, ReadFor::Request)? {
            Some(v) if v == value => self.drop_locked(key)?,
            _ => false,
        };
        Ok((done, self.commit.note_write()))
    }

    /// Drops the entry of `key`, value or tombstone, leaving nothing (no tombstone), only if
    /// it is still of `version` (the repair pass, once the owner holds the entry). Returns
    /// whether it was dropped.
    pub fn remove_if_version(&self, key: &HashKey, version: Version) -> Result<(bool, Ticket)> {
        self.writable()?;
        self.preserve(key)?;
        let _stripe = self.stripe(key);
        let done = if self.version_locked(key)? == Some(version) {
            self.drop_locked(key)?;
            true
        } else {
            false
        };
        Ok((done, self.commit.note_write()))
    }

    /// A new version of this node's clock, after every one it handed out or observed (a
    /// plain handoff's receiver stamps the entries it takes in with it).
    pub fn next_version(&self) -> Result<Version> {
        self.writable()?;
        self.clock.next(&self.kv)
    }

    /// Moves the clock past `version`, received from a peer (unless it lies more than an hour
    /// ahead of our wall clock: see `version`).
    pub fn observe(&self, version: Version) -> Result<()> {
        self.writable()?;
        self.clock.observe(&self.kv, version)
    }

    /// The stripe lock of `key` (see [`Storage::stripes`]).
    fn stripe(&self, key: &HashKey) -> std::sync::MutexGuard<'_, ()> {
        self.stripes[key.0[19] as usize % STRIPES]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Every stripe, in order: a batch of many keys.
    fn all_stripes(&self) -> Vec<std::sync::MutexGuard<'_, ()>> {
        self.stripes
            .iter()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
            .collect()
    }

    /// Whether writes are still accepted (see `kv`).
    pub fn is_writable(&self) -> bool {
        self.kv.is_writable()
    }

    /// Fails with [`Error::Unwritable`] once a write has failed (see `kv`).
    fn writable(&self) -> Result<()> {
        self.kv.writable()
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        {
            let mut p = self
                .commit
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            p.stop = true;
        }
        self.commit.wake.notify_one();
        if self.commit.failed().is_some() {
            // The flusher may be stuck inside sled for good (see `kv`): leave it.
            return;
        }
        if let Some(t) = self.flusher.take() {
            let _ = t.join();
        }
        if let Err(e) = self.kv.flush() {
            error!("final flush of {} failed: {e}", self.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_key as k;
    use crate::ring::RingState;
    use std::ops::Not;

    #[tokio::test]
    async fn writes_are_durable_after_sync_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
            let t = s.insert(&k(1), b"one".to_vec()).unwrap();
            s.sync(t).await.unwrap();
            let (was, t) = s.remove(&k(2)).unwrap();
            assert!(!was);
            s.sync(t).await.unwrap();
            let state = RingState::alone("127.0.0.1:5000".parse().unwrap());
            s.sync(s.save_ring(&state).unwrap()).await.unwrap();
        }
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        assert_eq!(s.get(&k(1)).unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(
            s.load_ring().unwrap(),
            Some(RingState::alone("127.0.0.1:5000".parse().unwrap()))
        );
    }

    fn holds(s: &Storage, key: &HashKey) -> Option<(Version, Option<Vec<u8>>)> {
        s.entry(key)
            .unwrap()
            .map(|e| (e.version, e.value.map(Vec::from)))
    }

    /// Where two copies meet, the newer wins: a value or a tombstone, whole or in pieces, an
    /// unversioned entry meeting an unversioned one wins (the handoff's sender, as before
    /// versions), the same version is the same write; and the clock moves past what it met.
    #[test]
    fn apply_lets_the_newer_entry_win() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        let base = s.next_version().unwrap();
        let v = |n: u64| Version(base.0 + n);
        let big = vec![7u8; 3 * 6144 + 1];
        // What the key holds, what arrives, whether that wins.
        type Case = (Option<Versioned<Vec<u8>>>, Versioned<Vec<u8>>, bool);
        let cases: Vec<Case> = vec![
            (None, Versioned::value(v(1), b"a".to_vec()), true),
            (None, Versioned::tombstone(v(1)), true),
            (None, Versioned::value(Version::ZERO, b"a".to_vec()), true),
            // Value against tombstone, each way round.
            (
                Some(Versioned::value(v(1), b"old".to_vec())),
                Versioned::tombstone(v(2)),
                true,
            ),
            (
                Some(Versioned::tombstone(v(2))),
                Versioned::value(v(1), b"old".to_vec()),
                false,
            ),
            (
                Some(Versioned::tombstone(v(2))),
                Versioned::value(v(3), b"new".to_vec()),
                true,
            ),
            (
                Some(Versioned::value(v(3), b"new".to_vec())),
                Versioned::tombstone(v(2)),
                false,
            ),
            // Unversioned meets unversioned: the incoming wins; meets versioned: loses.
            (
                Some(Versioned::value(Version::ZERO, b"x".to_vec())),
                Versioned::value(Version::ZERO, b"y".to_vec()),
                true,
            ),
            (
                Some(Versioned::value(Version::ZERO, b"x".to_vec())),
                Versioned::tombstone(Version::ZERO),
                true,
            ),
            (
                Some(Versioned::value(v(1), b"x".to_vec())),
                Versioned::value(Version::ZERO, b"y".to_vec()),
                false,
            ),
            // Equal versions: the same write, kept.
            (
                Some(Versioned::value(v(4), b"x".to_vec())),
                Versioned::value(v(4), b"y".to_vec()),
                false,
            ),
            (
                Some(Versioned::tombstone(v(4))),
                Versioned::tombstone(v(4)),
                false,
            ),
            // In pieces, each way.
            (
                Some(Versioned::value(v(1), big.clone())),
                Versioned::tombstone(v(2)),
                true,
            ),
            (
                Some(Versioned::value(v(3), big.clone())),
                Versioned::tombstone(v(2)),
                false,
            ),
            (
                Some(Versioned::tombstone(v(1))),
                Versioned::value(v(2), big.clone()),
                true,
            ),
            (
                Some(Versioned::value(v(1), b"a".to_vec())),
                Versioned::value(v(2), big.clone()),
                true,
            ),
        ];
        for (i, (local, incoming, wins)) in cases.into_iter().enumerate() {
            let key = k(i as u8);
            if let Some(local) = &local {
                assert!(
                    s.apply(&key, local.clone()).unwrap().0,
                    "case {i}: setting up"
                );
            }
            let before = holds(&s, &key);
            let (applied, _) = s.apply(&key, incoming.clone()).unwrap();
            assert_eq!(applied, wins, "case {i}");
            let want = match wins {
                true => Some((incoming.version, incoming.value.clone())),
                false => before,
            };
            assert_eq!(holds(&s, &key), want, "case {i}");
            assert_eq!(
                s.contains(&key).unwrap(),
                want.is_some_and(|w| w.1.is_some())
            );
        }
        // A peer's newer version moves our clock past it.
        let ahead = Version(s.next_version().unwrap().0 + (5000 << 16));
        let _ = s.apply(&k(100), Versioned::tombstone(ahead)).unwrap();
        assert!(s.next_version().unwrap() > ahead);
    }

    /// A value in pieces carries its version in piece 0: one written in one batch, in several,
    /// through an import, and read back by every versioned reader.
    #[test]
    fn values_in_pieces_carry_their_versions() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        let _ = s.insert(&k(1), vec![1; 20_000]).unwrap();
        let _ = s.insert(&k(2), vec![2; 2 << 20]).unwrap();
        let given = Version(s.next_version().unwrap().0 + 17);
        let mut batch = vec![(k(3), Versioned::value(given, vec![3; 40_000]))];
        let _ = s.insert_batch(&mut batch, BatchWrite::InPlace).unwrap();
        let (v1, v2) = (holds(&s, &k(1)).unwrap().0, holds(&s, &k(2)).unwrap().0);
        assert!(Version::ZERO < v1 && v1 < v2 && v2 < given);
        assert_eq!(holds(&s, &k(3)), Some((given, Some(vec![3; 40_000]))));
        let scanned: Vec<_> = s
            .iter_arc_versioned(&HashKey::ZERO, &HashKey::ZERO)
            .map(|r| r.map(|(k, e)| (k, e.version)).unwrap())
            .collect();
        assert_eq!(scanned, vec![(k(1), v1), (k(2), v2), (k(3), given)]);
        // And across a reopen.
        drop(s);
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        assert_eq!(holds(&s, &k(2)).unwrap().0, v2);
        assert!(s.remove_if_version(&k(2), v1).unwrap().0.not());
        assert!(s.remove_if_version(&k(2), v2).unwrap().0);
        assert_eq!(s.entry(&k(2)).unwrap(), None, "dropped, no tombstone");
    }
}
