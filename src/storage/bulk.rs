//! Batch imports: a range arriving in ring order (a handoff's receiver, a restore) written in
//! batches, in place or keys first ([`BatchWrite`]), each entry with its version: in place, an
//! entry meets what the key holds and the newer wins ([`super::Version::supersedes`]); keys first
//! (into a range that holds nothing) writes them as they come.

use super::arc::{reclaim, RECLAIM_EVERY};
use super::commit::Ticket;
use super::kv::Tree;
use super::pieces::INLINE_MAX;
use super::pieces::{RawKey, ONE_BATCH_MAX};
use super::value::whole_entry;
use super::version::Versioned;
use super::Storage;
use crate::error::{Error, Result};
use crate::protocol::HashKey;

/// Mean value size below which [`Storage::insert_batch`] writes single inserts.
pub(super) const SINGLE_INSERTS_BELOW: usize = 1024;

/// Fewest entries for which a [`BatchWrite::KeysFirst`] batch writes its keys first. Each
/// batch still rewrites the leaf it shares with the next one, so the gain grows with the
/// batch, and smaller batches gained nothing (BENCHMARKS.md, "Figures behind the code").
pub(super) const KEYS_FIRST_MIN: usize = 32;

/// Entries written (or deleted) per sled batch when a range moves: big enough to amortise the
/// batch, small enough that sled 0.34 does not balloon (10k-entry batches took GBs of RAM).
pub const BATCH_ENTRIES: usize = 1000;

/// Gathers streamed entries into batches of at most [`BATCH_ENTRIES`] entries or `max_bytes`
/// value bytes (whichever comes first): the one bound every range move and restore uses.
pub struct Batcher<V> {
    /// The batch being filled.
    pub(super) batch: Vec<(HashKey, V)>,
    /// Value bytes in `batch`.
    pub(super) bytes: usize,
    /// A batch is full at this many value bytes.
    pub(super) max_bytes: usize,
}

impl<V: AsRef<[u8]>> Batcher<V> {
    pub fn new(max_bytes: usize) -> Self {
        Batcher {
            batch: Vec::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// Adds an entry; returns the batch once it is full.
    pub fn push(&mut self, key: HashKey, value: V) -> Option<Vec<(HashKey, V)>> {
        self.bytes += value.as_ref().len();
        self.batch.push((key, value));
        if self.batch.len() >= BATCH_ENTRIES || self.bytes >= self.max_bytes {
            self.bytes = 0;
            Some(std::mem::take(&mut self.batch))
        } else {
            None
        }
    }

    /// The last, partly filled batch, if any.
    pub fn finish(self) -> Option<Vec<(HashKey, V)>> {
        (!self.batch.is_empty()).then_some(self.batch)
    }
}

/// How [`Storage::insert_batch`] writes a batch: whether entries meet what the keys hold, and
/// for large values (a mean of 1 KiB or more; smaller ones always go in as single inserts)
/// how they are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchWrite {
    /// Each entry once, with its value: an interrupted batch leaves entries that are whole.
    /// An entry is written only if it supersedes what its key holds (the newer wins, see
    /// [`super::Version::supersedes`]): the range may hold entries of its own.
    InPlace,
    /// The keys first, with empty values (placeholders), then the values over them; every
    /// entry as given, since the range holds nothing.
    ///
    /// sled 0.34 splits a leaf when it holds more than 16 entries, whatever their size, and
    /// rewrites a page whole every 10 updates; pages over 128 KiB become blob files. Written
    /// in key order with their values, entries of some KiB fill leaves that are split and
    /// rewritten as they grow, many as blob files. With the keys first, the empty keys build
    /// the leaves (8–16 entries each), and each value then lands as one small update of a leaf
    /// that no longer splits; only the leaf a batch shares with the next is rewritten: about
    /// a third of the time, and no blob files. Deleting such a range later writes more (its
    /// leaves are near sled's rewrite threshold). Figures: BENCHMARKS.md ("keys first",
    /// "Figures behind the code").
    ///
    /// The price: a batch interrupted between its two passes (a crash, a failed write) leaves
    /// keys with empty values that nobody wrote, and a reader could see them between the
    /// passes. So only writers whose interruption discards the whole range, and whose range
    /// nobody reads meanwhile, use it: a restore (into a temporary directory), the receiver of
    /// a DIS (it answers `N` for the range until it owns it) and a joiner that held nothing and
    /// does not serve yet (both drop what they received when a handoff aborts, and on the
    /// restart after a crash). A backup's cut never sees the middle of such a batch
    /// (`Storage::bulk`).
    KeysFirst,
}

/// `entries` as runs of strictly increasing keys: one, or two when they wrap past 2^160-1
/// (ring order), the second wholly below the first. `None` for anything else (a key twice,
/// keys out of order).
pub(super) fn ring_runs<V>(entries: &[(HashKey, V)]) -> Option<Vec<&[(HashKey, V)]>> {
    let descents: Vec<usize> = (1..entries.len())
        .filter(|&i| entries[i].0 <= entries[i - 1].0)
        .collect();
    match descents[..] {
        [] => Some(vec![entries]),
        [d] if entries.last()?.0 < entries.first()?.0 => {
            let (a, b) = entries.split_at(d);
            Some(vec![a, b])
        }
        _ => None,
    }
}

/// What a span of the data tree holds (see `Storage::batch_holds`).
#[derive(Clone, Copy, Default)]
pub(super) struct Span {
    /// Some whole value.
    pub(super) whole: bool,
    /// Some piece.
    pub(super) pieces: bool,
}

impl Span {
    /// When nothing is known: look at every key.
    pub(super) const ANYTHING: Span = Span {
        whole: true,
        pieces: true,
    };
}

impl Storage {
    /// Writes a group of entries, values and tombstones with their versions (in key order, as
    /// ranges arrive); durable after [`Storage::sync`]. In place, an entry older than what its
    /// key holds is left out ([`BatchWrite::InPlace`]); the clock observes the batch's newest
    /// version. Small values go in as single inserts, larger ones as one sled batch (or two,
    /// keys first: see [`BatchWrite`]): measured on sled 0.34 (BENCHMARKS.md), sorted single
    /// inserts import 100-byte values about twice as fast as batches, while batches win from
    /// a few KiB up.
    pub fn insert_batch(
        &self,
        entries: &mut Vec<(HashKey, Versioned<Vec<u8>>)>,
        how: BatchWrite,
    ) -> Result<Ticket> {
        self.writable()?;
        if let Some(newest) = entries.iter().map(|(_, e)| e.version).max() {
            self.clock.observe(&self.kv, newest)?;
        }
        let bytes: usize = entries.iter().map(|(_, e)| e.as_ref().len()).sum();
        let small = bytes < entries.len() * SINGLE_INSERTS_BELOW;
        let keys_first = how == BatchWrite::KeysFirst && !small && entries.len() >= KEYS_FIRST_MIN;
        // Both passes under the shared lock: no cut begins between them.
        let _bulk = keys_first.then(|| self.bulk.read().unwrap_or_else(|e| e.into_inner()));
        for (k, _) in entries.iter() {
            self.preserve(k)?;
        }
        let stripes = self.all_stripes();
        // What the batch replaces: in the usual import into an empty arc nothing, and one look
        // at the batch's span says so, sparing a look per key. A batch out of ring order (a
        // key twice, from a peer) is written entry by entry, each looking at what is stored.
        let (span, ordered) = match self.batch_holds(entries)? {
            Some(span) => (span, true),
            None => (Span::ANYTHING, false),
        };
        // In place over entries of the range's own: each entry meets what its key holds (for
        // a batch out of order, as it is when the entry's turn comes, below).
        let merge = how == BatchWrite::InPlace && (span.whole || span.pieces);
        let mut written: Vec<RawKey> = Vec::new();
        // A value written in several batches of its own (see `write_staged`).
        let staged = entries
            .iter()
            .any(|(_, e)| e.as_ref().len() > ONE_BATCH_MAX);
        if small || !ordered || staged {
            for (i, (k, e)) in entries.drain(..).enumerate() {
                if merge && !e.version.supersedes(self.version_locked(&k)?) {
                    continue;
                }
                written.extend(self.write_locked(&k, e, span)?);
                if (i as u64 + 1).is_multiple_of(RECLAIM_EVERY) {
                    reclaim();
                }
            }
            drop(stripes);
        } else {
            if merge {
                // Keys strictly rising: what each holds is what the tree holds now.
                let mut kept = Vec::with_capacity(entries.len());
                for (k, e) in entries.drain(..) {
                    if e.version.supersedes(self.version_locked(&k)?) {
                        kept.push((k, e));
                    }
                }
                *entries = kept;
            }
            let mut batch = sled::Batch::default();
            // Pieces of replaced values beyond what one batch removes (see `split_removal`).
            let mut leftovers = Vec::new();
            for (k, e) in entries.iter() {
                match &e.value {
                    Some(v) if v.len() > INLINE_MAX => {
                        let look = span.whole || span.pieces;
                        leftovers.extend(self.add_pieces(
                            &mut batch,
                            k,
                            e.version,
                            v,
                            &mut written,
                            look,
                        )?);
                    }
                    value => {
                        if span.pieces {
                            leftovers.extend(self.add_piece_removal(&mut batch, k)?);
                        }
                        written.push(RawKey::whole(k));
                        batch.insert(&k.0[..], whole_entry(e.version, value.as_deref()));
                    }
                }
            }
            entries.clear();
            if keys_first {
                for k in &written {
                    self.kv.insert(Tree::Data, k.as_ref(), &[][..])?;
                }
                crate::fault::point_blocking("keys-first:between-passes");
            }
            self.kv.apply(Tree::Data, batch)?;
            self.remove_in_batches(&leftovers)?;
            drop(stripes);
        }
        // Writes reach sled's LRU in the same blocks of 64 accesses per shard as reads (see
        // `touched`): pages of large values written once would stay in memory unaccounted, over
        // the cache's capacity. Touching them registers them as the import goes.
        for (i, k) in written.iter().enumerate() {
            self.touch_raw(k.as_ref())?;
            if (i as u64 + 1).is_multiple_of(RECLAIM_EVERY) {
                reclaim();
            }
        }
        reclaim();
        Ok(self.commit.note_write())
    }

    /// What the data tree holds where `entries` go: a scan of the span from their first key
    /// to their last (usually empty), or of two spans when they wrap past 2^160-1 (see
    /// [`ring_runs`]). `None`: the entries are not in ring order.
    pub(super) fn batch_holds<V>(&self, entries: &[(HashKey, V)]) -> Result<Option<Span>> {
        let Some(runs) = ring_runs(entries) else {
            return Ok(None);
        };
        let mut span = Span::default();
        for run in runs {
            let (Some((lo, _)), Some((hi, _))) = (run.first(), run.last()) else {
                continue;
            };
            let (lo, hi) = (RawKey::whole(lo), RawKey::piece(hi, u32::MAX));
            for k in self.kv.range(Tree::Data, lo..=hi).keys() {
                if k?.len() == 20 {
                    span.whole = true;
                } else {
                    span.pieces = true;
                    break;
                }
            }
        }
        Ok(Some(span))
    }
}

/// Batches waiting between the side that reads a range in (a socket, an archive) and the
/// thread that writes it: reading the next batch overlaps writing the last, and no more than
/// this is held.
pub const IMPORT_QUEUE: usize = 2;

/// A range arriving in ring order, written into sled as it comes: the caller sends batches
/// (gathered by a [`Batcher`]), one thread writes them ([`Storage::insert_batch`], `how`), and
/// at most [`IMPORT_QUEUE`] wait between them. The one pipeline of a handoff's receiver and of
/// a restore.
///
/// With `sync_every`, the writer asks for the flush of each window of that many value bytes
/// when it closes and waits for it only when the next one closes, so that what is not yet
/// durable stays bounded on a slow disk while the flusher works on one window and the writer
/// fills the next; and it waits for the last before it ends. It needs a tokio runtime for
/// that (the caller's). Without, making the import durable is the caller's to do.
pub struct Import {
    /// Where the batches go.
    tx: tokio::sync::mpsc::Sender<Vec<(HashKey, Versioned<Vec<u8>>)>>,
    /// The writing thread: the last ticket it got, or why it stopped.
    writer: std::thread::JoinHandle<Result<Option<Ticket>>>,
}

impl Import {
    /// Starts the writing thread.
    pub fn start(
        storage: std::sync::Arc<Storage>,
        how: BatchWrite,
        sync_every: Option<u64>,
    ) -> Result<Import> {
        let (tx, rx) = tokio::sync::mpsc::channel(IMPORT_QUEUE);
        let runtime = match sync_every {
            Some(_) => Some(tokio::runtime::Handle::try_current().map_err(|_| {
                Error::Flush("an import that syncs as it goes needs a runtime".into())
            })?),
            None => None,
        };
        let writer = std::thread::Builder::new()
            .name("dht-import".into())
            .spawn(move || write_batches(&storage, rx, how, sync_every.zip(runtime)))?;
        Ok(Import { tx, writer })
    }

    /// Hands over the next batch, waiting while [`IMPORT_QUEUE`] batches are queued.
    pub async fn send(&self, batch: Vec<(HashKey, Versioned<Vec<u8>>)>) -> Result<()> {
        self.tx.send(batch).await.map_err(|_| stopped())
    }

    /// [`Import::send`] from a thread outside the runtime.
    pub fn send_blocking(&self, batch: Vec<(HashKey, Versioned<Vec<u8>>)>) -> Result<()> {
        self.tx.blocking_send(batch).map_err(|_| stopped())
    }

    /// Ends the import once everything sent is written (and, with `sync_every`, durable):
    /// the last ticket, or the writer's error.
    pub fn finish(self) -> Result<Option<Ticket>> {
        drop(self.tx);
        self.writer
            .join()
            .map_err(|_| Error::Flush("the thread writing an import panicked".into()))?
    }

    /// [`Import::finish`] for async code: the join waits on a blocking thread.
    pub async fn finish_async(self) -> Result<Option<Ticket>> {
        tokio::task::spawn_blocking(move || self.finish())
            .await
            .map_err(|e| Error::Flush(format!("the thread writing an import failed: {e}")))?
    }
}

fn stopped() -> Error {
    Error::Flush("the thread writing the import stopped".into())
}

/// The writing thread of an [`Import`].
fn write_batches(
    storage: &Storage,
    mut rx: tokio::sync::mpsc::Receiver<Vec<(HashKey, Versioned<Vec<u8>>)>>,
    how: BatchWrite,
    sync: Option<(u64, tokio::runtime::Handle)>,
) -> Result<Option<Ticket>> {
    let mut since_sync = 0u64;
    let mut ticket = None;
    let mut pending_sync = None;
    while let Some(mut batch) = rx.blocking_recv() {
        since_sync += batch
            .iter()
            .map(|(_, e)| e.as_ref().len() as u64)
            .sum::<u64>();
        ticket = Some(storage.insert_batch(&mut batch, how)?);
        if let Some((every, runtime)) = &sync {
            if since_sync >= *every {
                if let Some(t) = pending_sync.take() {
                    runtime.block_on(storage.sync(t))?;
                }
                // The flusher runs on demand: start this window's flush now.
                if let Some(t) = ticket {
                    storage.request_sync(t);
                }
                pending_sync = ticket;
                since_sync = 0;
            }
        }
    }
    if let (Some(t), Some((_, runtime))) = (ticket, &sync) {
        runtime.block_on(storage.sync(t))?;
    }
    Ok(ticket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_key as k;
    use crate::storage::pieces::PIECE_BYTES;
    use crate::storage::testing::*;
    use crate::storage::{StorageOptions, Version};

    /// Keys first or in place, small values or large, batches under or over `KEYS_FIRST_MIN`,
    /// over existing keys or not: the same entries come out.
    #[test]
    pub(super) fn a_keys_first_batch_writes_what_an_in_place_batch_writes() {
        for how in [BatchWrite::InPlace, BatchWrite::KeysFirst] {
            for len in [100, 2048, 3 * PIECE_BYTES + 1] {
                for count in [8u8, 200] {
                    let dir = tempfile::tempdir().unwrap();
                    let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
                    for n in (0..count).step_by(3) {
                        let _ = s.insert(&k(n), val(n, 0)).unwrap();
                    }
                    let batch: Vec<_> = (0..count).map(|n| (k(n), big(n, 1, len))).collect();
                    let mut batch = stamped(&s, batch);
                    let _ = s.insert_batch(&mut batch, how).unwrap();
                    assert!(batch.is_empty());
                    let want: Vec<_> = (0..count).map(|n| (k(n), big(n, 1, len))).collect();
                    assert_eq!(snapshot(&s), want, "{how:?}, {count} × {len} B");
                }
            }
        }
    }

    /// A batch that names a key twice (a peer may send anything) still leaves the key with a
    /// whole value or pieces, not both: the later entry wins.
    #[test]
    pub(super) fn a_batch_naming_a_key_twice_leaves_one_value() {
        for how in [BatchWrite::InPlace, BatchWrite::KeysFirst] {
            let dir = tempfile::tempdir().unwrap();
            let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
            let mut batch: Vec<_> = (0..40u8)
                .map(|n| (k(n), vec![n; 2 * PIECE_BYTES]))
                .collect();
            batch.push((k(5), vec![9; 10]));
            // Unversioned, as from a peer without versions: the later one wins.
            let mut batch = unversioned(batch);
            let _ = s.insert_batch(&mut batch, how).unwrap();
            assert_eq!(s.get(&k(5)).unwrap().unwrap(), vec![9; 10][..], "{how:?}");
            assert_eq!(s.count().unwrap(), 40);
            let raw = raw_keys(&s);
            assert_eq!(raw.len(), 39 * 2 + 1, "{how:?}: stray pieces of k(5)");
        }
    }

    /// An import in place meets what the range holds, entry by entry, as `apply` does: the
    /// newer wins (a value or a tombstone), unversioned meeting unversioned lets the incoming
    /// win, an equal version stays; whether the batch goes as single inserts (small values),
    /// as one sled batch (large ones) or entry by entry (out of order). Keys first writes as
    /// given. Both observe the batch's newest version.
    #[test]
    pub(super) fn an_import_in_place_lets_the_newer_win_and_keys_first_writes_as_given() {
        let size = |big: bool| if big { 3 * PIECE_BYTES + 1 } else { 100 };
        for big in [false, true] {
            for shuffled in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
                let base = s.next_version().unwrap();
                let v = |n: u64| Version(base.0 + n);
                let value = |n: u8, b: u8| vec![b; size(big) + n as usize];
                // Key n: (what it holds, what arrives, whether that wins).
                let local = |n: u8| -> Option<Versioned<Vec<u8>>> {
                    match n % 8 {
                        0 => None,
                        1 | 2 => Some(Versioned::value(v(5), value(n, 1))),
                        3 | 4 => Some(Versioned::tombstone(v(5))),
                        5 => Some(Versioned::value(Version::ZERO, value(n, 1))),
                        6 => Some(Versioned::tombstone(v(5))),
                        _ => Some(Versioned::value(v(5), value(n, 1))),
                    }
                };
                let incoming = |n: u8| -> (Versioned<Vec<u8>>, bool) {
                    match n % 8 {
                        0 => (Versioned::value(v(1), value(n, 2)), true),
                        1 => (Versioned::tombstone(v(6)), true),
                        2 => (Versioned::tombstone(v(4)), false),
                        3 => (Versioned::value(v(6), value(n, 2)), true),
                        4 => (Versioned::value(v(4), value(n, 2)), false),
                        5 => (Versioned::value(Version::ZERO, value(n, 2)), true),
                        6 => (Versioned::value(v(5), value(n, 2)), false),
                        _ => (Versioned::value(Version::ZERO, value(n, 2)), false),
                    }
                };
                let keys: Vec<u8> = (0..64).collect();
                for &n in &keys {
                    if let Some(l) = local(n) {
                        let _ = s.apply(&k(n), l).unwrap();
                    }
                }
                let mut batch: Vec<_> = keys.iter().map(|&n| (k(n), incoming(n).0)).collect();
                if shuffled {
                    batch.swap(3, 40);
                }
                let _ = s.insert_batch(&mut batch, BatchWrite::InPlace).unwrap();
                for &n in &keys {
                    let (inc, wins) = incoming(n);
                    let want = if wins { Some(inc) } else { local(n) };
                    let got = s.entry(&k(n)).unwrap().map(|e| Versioned {
                        version: e.version,
                        value: e.value.map(Vec::from),
                    });
                    assert_eq!(got, want, "key {n}, big {big}, shuffled {shuffled}");
                }
            }
        }
        // Keys first, into an empty range: every entry as given, tombstones too; the clock
        // moves past the newest.
        for big in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
            let ahead = Version(s.next_version().unwrap().0 + (60_000 << 16));
            let given: Vec<_> = (0..64u8)
                .map(|n| {
                    let e = match n % 3 {
                        0 => Versioned::tombstone(Version(ahead.0 - u64::from(n))),
                        1 => Versioned::value(Version::ZERO, vec![n; size(big)]),
                        _ => Versioned::value(Version(ahead.0 - u64::from(n)), vec![n; size(big)]),
                    };
                    (k(n), e)
                })
                .collect();
            let _ = s
                .insert_batch(&mut given.clone(), BatchWrite::KeysFirst)
                .unwrap();
            let got: Vec<_> = s
                .iter_arc_versioned(&HashKey::ZERO, &HashKey::ZERO)
                .map(|r| r.unwrap())
                .map(|(k, e)| {
                    let value = e.value.map(Vec::from);
                    (
                        k,
                        Versioned {
                            version: e.version,
                            value,
                        },
                    )
                })
                .collect();
            assert_eq!(got, given, "big {big}");
            assert_eq!(s.count().unwrap(), 64 - 22);
            assert!(s.next_version().unwrap() > ahead);
        }
    }

    /// Runs of a batch: in key order, wrapping once (ring order), or irregular.
    #[test]
    pub(super) fn a_batch_in_ring_order_is_one_run_or_two() {
        let e = |ns: &[u8]| -> Vec<(HashKey, ())> { ns.iter().map(|&n| (k(n), ())).collect() };
        let lens = |r: Option<Vec<&[(HashKey, ())]>>| {
            r.map(|v| v.iter().map(|r| r.len()).collect::<Vec<_>>())
        };
        assert_eq!(lens(ring_runs(&e(&[]))), Some(vec![0]));
        assert_eq!(lens(ring_runs(&e(&[1, 2, 9]))), Some(vec![3]));
        assert_eq!(lens(ring_runs(&e(&[200, 250, 3, 7]))), Some(vec![2, 2]));
        assert_eq!(lens(ring_runs(&e(&[1, 2, 2]))), None, "a key twice");
        assert_eq!(
            lens(ring_runs(&e(&[200, 250, 3, 220]))),
            None,
            "runs that overlap"
        );
        assert_eq!(lens(ring_runs(&e(&[5, 3, 4, 1]))), None, "two descents");
    }

    /// A batch that wraps past the top of the key space (the receiver of an arc that wraps)
    /// is written right, beside a value in pieces between its two runs. (That it takes the
    /// keys-first path is shown by the crash tests, whose fault point is inside that path.)
    #[test]
    pub(super) fn a_batch_that_wraps_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        let _ = s.insert(&k(100), vec![1; 2 * PIECE_BYTES]).unwrap();
        let batch: Vec<_> = (200..=255u8)
            .chain(0..40)
            .map(|n| (k(n), vec![n; 2 * PIECE_BYTES]))
            .collect();
        let mut batch = unversioned(batch);
        let _ = s.insert_batch(&mut batch, BatchWrite::KeysFirst).unwrap();
        assert_eq!(s.count().unwrap(), 56 + 40 + 1);
        assert_eq!(s.get(&k(3)).unwrap().unwrap(), vec![3; 2 * PIECE_BYTES][..]);
        assert_eq!(
            s.get(&k(100)).unwrap().unwrap(),
            vec![1; 2 * PIECE_BYTES][..]
        );
    }
}
