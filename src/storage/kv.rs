//! The sled database and its trees, behind one type through which every write passes the
//! write-failure latch: the rule "a sled call that may write goes through `wrote`" is kept by
//! the type, since nothing outside this file holds a tree.
//!
//! sled 0.34 does not recover from a failed write in place. A blob file that cannot be written
//! (a full disk, `ulimit -f`) leaves a log reservation that is never completed, and every later
//! flush waits for it forever. So the first failure marks the storage unwritable for good: from
//! then on writes and syncs fail at once, the flusher stops, waiting syncs are released with
//! the error, and sled is never dropped (its drop would wait for its own stuck flush). Reads go
//! on. A restart, after the cause is fixed, recovers from what sled made durable.

use std::path::PathBuf;
use std::sync::Arc;

use tracing::error;

use super::GroupCommit;
use crate::error::{Error, Result};

/// The trees of a data directory (module doc of `storage`, "Layout").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tree {
    /// The entries: whole entries (values and tombstones) and values in pieces; sled's tree
    /// "entries" (FORMAT 3).
    Data,
    /// The node's records (ring state, handoff record, known peers) and the directory's
    /// marks (layout version, values in pieces): sled's tree "ring", a name kept from when it
    /// held the ring state alone.
    Meta,
    /// A backup's old versions of entries changed during its cut.
    Cow,
    /// Those old versions longer than `INLINE_MAX`, in pieces.
    CowPieces,
}

/// The tree of the entries in FORMAT 1 and 2.
const LEGACY_TREE: &[u8] = b"data";

/// The database of one data directory: reads of any tree, and writes that latch failure.
pub(super) struct Kv {
    /// The directory, for messages.
    dir: PathBuf,
    /// The whole database; its flush flushes every tree.
    db: sled::Db,
    /// See [`Tree`].
    data: sled::Tree,
    meta: sled::Tree,
    cow: sled::Tree,
    cow_pieces: sled::Tree,
    /// The entries of an older layout (sled's tree "data"), if the database has that tree:
    /// read by the migration, then dropped (`migrate`).
    legacy: std::sync::Mutex<Option<sled::Tree>>,
    /// Told of the first failed write: it stops flushing and fails every waiting sync.
    commit: Arc<GroupCommit>,
    /// Writes of the entries (this layout's tree or an older one's) so far, each counted once
    /// sled has applied it: a count of keys made after reading this is still exact while it is
    /// unchanged ([`Kv::data_changes`]).
    data_changes: std::sync::atomic::AtomicU64,
}

impl Kv {
    /// Opens the trees of `db`.
    pub(super) fn open(dir: PathBuf, db: sled::Db, commit: Arc<GroupCommit>) -> Result<Kv> {
        // Opened only if it is there: `open_tree` would create it.
        let legacy = match db.tree_names().iter().any(|n| &n[..] == LEGACY_TREE) {
            true => Some(db.open_tree(LEGACY_TREE)?),
            false => None,
        };
        Ok(Kv {
            data: db.open_tree("entries")?,
            legacy: std::sync::Mutex::new(legacy),
            meta: db.open_tree("ring")?,
            cow: db.open_tree("backup-cow")?,
            cow_pieces: db.open_tree("backup-cow-pieces")?,
            dir,
            db,
            commit,
            data_changes: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn tree(&self, t: Tree) -> &sled::Tree {
        match t {
            Tree::Data => &self.data,
            Tree::Meta => &self.meta,
            Tree::Cow => &self.cow,
            Tree::CowPieces => &self.cow_pieces,
        }
    }

    // Reads. They go on after a failed write.

    pub(super) fn get(&self, t: Tree, key: impl AsRef<[u8]>) -> Result<Option<sled::IVec>> {
        Ok(self.tree(t).get(key)?)
    }

    /// A point read that bulk work makes to keep sled's cache informed (`arc::touch`): such
    /// reads come in bursts over freshly written pages, where sled's traversal restructures the
    /// tree (a read may write), so a failure there latches as a write's does.
    pub(super) fn get_latched(&self, t: Tree, key: impl AsRef<[u8]>) -> Result<Option<sled::IVec>> {
        self.wrote(self.tree(t).get(key))
    }

    pub(super) fn contains(&self, t: Tree, key: impl AsRef<[u8]>) -> Result<bool> {
        Ok(self.tree(t).contains_key(key)?)
    }

    pub(super) fn range<K: AsRef<[u8]>, R: std::ops::RangeBounds<K>>(
        &self,
        t: Tree,
        range: R,
    ) -> sled::Iter {
        self.tree(t).range(range)
    }

    pub(super) fn iter(&self, t: Tree) -> sled::Iter {
        self.tree(t).iter()
    }

    /// Whether the database holds the tree of an older layout.
    pub(super) fn has_legacy(&self) -> bool {
        self.legacy_tree().is_some()
    }

    fn legacy_tree(&self) -> Option<sled::Tree> {
        self.legacy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The entries of the older layout's tree after `after` (from the first without).
    pub(super) fn legacy_after(&self, after: Option<&[u8]>) -> Option<sled::Iter> {
        use std::ops::Bound::{Excluded, Unbounded};
        let t = self.legacy_tree()?;
        Some(match after {
            Some(a) => t.range::<&[u8], _>((Excluded(a), Unbounded)),
            None => t.iter(),
        })
    }

    /// A point read of the older layout's tree for sled's cache (see `get_latched`).
    pub(super) fn legacy_get_latched(&self, key: &[u8]) -> Result<Option<sled::IVec>> {
        match self.legacy_tree() {
            Some(t) => self.wrote(t.get(key)),
            None => Ok(None),
        }
    }

    /// Removes a migrated entry from the older layout's tree.
    pub(super) fn legacy_remove(&self, key: &[u8]) -> Result<()> {
        self.writable()?;
        let r = match self.legacy_tree() {
            Some(t) => self.wrote(t.remove(key)).map(drop),
            None => Ok(()),
        };
        self.changed(Tree::Data);
        r
    }

    /// Drops the older layout's tree, once its entries are migrated and durable.
    pub(super) fn drop_legacy(&self) -> Result<()> {
        self.writable()?;
        // Our handle goes first: sled frees the tree's pages.
        let t = self.legacy.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(t);
        let r = self.wrote(self.db.drop_tree(LEGACY_TREE)).map(drop);
        self.changed(Tree::Data);
        r
    }

    pub(super) fn is_empty(&self, t: Tree) -> bool {
        self.tree(t).is_empty()
    }

    #[cfg(test)]
    pub(super) fn len(&self, t: Tree) -> usize {
        self.tree(t).len()
    }

    // Writes: each passes `wrote`.

    pub(super) fn insert(
        &self,
        t: Tree,
        key: impl AsRef<[u8]>,
        value: impl Into<sled::IVec>,
    ) -> Result<Option<sled::IVec>> {
        self.writable()?;
        let r = self.wrote(self.tree(t).insert(key, value));
        self.changed(t);
        r
    }

    pub(super) fn remove(&self, t: Tree, key: impl AsRef<[u8]>) -> Result<Option<sled::IVec>> {
        self.writable()?;
        let r = self.wrote(self.tree(t).remove(key));
        self.changed(t);
        r
    }

    pub(super) fn apply(&self, t: Tree, batch: sled::Batch) -> Result<()> {
        self.writable()?;
        let r = self.wrote(self.tree(t).apply_batch(batch));
        self.changed(t);
        r
    }

    pub(super) fn clear(&self, t: Tree) -> Result<()> {
        self.writable()?;
        let r = self.wrote(self.tree(t).clear());
        self.changed(t);
        r
    }

    /// Counts a write of `t` (after sled applied it, or failed to: either may have changed
    /// what a scan sees).
    fn changed(&self, t: Tree) {
        if t == Tree::Data {
            self.data_changes
                .fetch_add(1, std::sync::atomic::Ordering::Release);
        }
    }

    /// Writes of the entries so far: read before a count, and again later, it tells whether
    /// the entries may have changed since (a count tagged with it stays exact while it holds).
    pub(super) fn data_changes(&self) -> u64 {
        self.data_changes.load(std::sync::atomic::Ordering::Acquire)
    }

    /// sled's own flush (up to `sync_file_range`; `commit` adds the fdatasync).
    pub(super) fn flush(&self) -> Result<usize> {
        self.writable()?;
        self.wrote(self.db.flush())
    }

    /// An id sled never hands out again, across restarts (its counter is persisted).
    pub(super) fn generate_id(&self) -> Result<u64> {
        self.writable()?;
        self.wrote(self.db.generate_id())
    }

    /// What the flusher thread needs: the database's flush, and nothing else.
    pub(super) fn flush_handle(&self) -> FlushHandle {
        FlushHandle(self.db.clone())
    }

    /// Whether writes are still accepted.
    pub(super) fn is_writable(&self) -> bool {
        self.commit.failed().is_none()
    }

    /// Fails with [`Error::Unwritable`] once a write has failed.
    pub(super) fn writable(&self) -> Result<()> {
        match self.commit.failed() {
            Some(why) => Err(Error::Unwritable(why.to_string())),
            None => Ok(()),
        }
    }

    /// Passes on the result of a sled call that may write; the first error latches (module
    /// doc).
    fn wrote<T>(&self, r: sled::Result<T>) -> Result<T> {
        r.map_err(|e| {
            let why: Arc<str> = format!("cannot write to {}: {e}", self.dir.display()).into();
            if self.commit.fail(why.clone()) {
                error!("{why}; no more writes are accepted (restart once the cause is fixed)");
                std::mem::forget(self.db.clone());
            }
            Error::Unwritable(why.to_string())
        })
    }
}

/// The flusher thread's handle on the database: it can flush, not write. Its failures are the
/// group commit's to report (a flush that fails fails the syncs it would have released).
pub(super) struct FlushHandle(sled::Db);

impl FlushHandle {
    pub(super) fn flush(&self) -> sled::Result<usize> {
        self.0.flush()
    }
}
