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
//!   tree "data"   key: the 20 bytes of the HashKey, big-endian; value: the raw value bytes,
//!                 for values of up to INLINE_MAX (6 KiB); longer values are stored in
//!                 pieces (below)
//!   tree "ring"   key: b"state"; value: a RingRecord (below)
//!                 key: b"handoff"; value: a HandoffRecord (below), present only while a
//!                 join or leave is in progress or must be finished after a crash
//!                 key: b"peers"; value: u8 version (= 1), then u64 n, n × addr: the peers
//!                 this node has known (see `node::peers`), where it looks for the ring when
//!                 every successor it knew is dead
//!                 key: b"pieces"; value: [1], once the data tree may hold values in pieces
//!                 key: b"format"; value: u32 big-endian, the layout version (FORMAT): a
//!                 build refuses a directory of a newer layout than it reads
//! ```
//!
//! # Values in pieces
//!
//! sled 0.34 keeps a page larger than 128 KiB in a blob file of its own, and its cache counts
//! such a page by the size of the blob's pointer: it is never evicted. A leaf holds up to 16
//! entries, so values of 8 KiB and more make blob leaves, and a node that read its large
//! values kept them all in memory whatever its cache capacity (100 values of 8 MiB: 827 MB of
//! RSS with a 64 MiB cache, BENCHMARKS.md). So a value longer than [`INLINE_MAX`] is stored as
//! pieces of up to `PIECE_BYTES` (6 KiB), each an entry of its own, and every leaf stays well under
//! 128 KiB:
//!
//! ```text
//! key:   the 20 bytes of the HashKey, then the piece's index (u32, big-endian): 24 bytes
//! index 0:          u64 write id, u64 value length, u32 s·2^31 + number of pieces n,
//!                   the first PIECE_BYTES
//! index s·2^31 + i: u64 write id, the next PIECE_BYTES (the last piece: what is left),
//!                   for i in 1..n; s (0 or 1) is the slot that piece 0 names
//! ```
//!
//! All integers are big-endian. What a key holds is its whole value if there is one, else the
//! value that piece 0 describes: the pieces 1..n of the slot it names, all carrying its write
//! id. Any other entry under the key is a leftover of an interrupted change, invisible to
//! readers, and removed when the key's pieces are next rewritten or the key is deleted.
//!
//! A value of up to [`ONE_BATCH_MAX`] (768 KiB) is written in slot 0 by one sled batch that
//! also removes what the key held before, so a crash leaves the old value or the new one. A
//! longer value would make one batch of up to 11,000 pieces, and sled 0.34 keeps everything
//! a batch replaced in memory until the batch ends (a 64 MiB value peaked at ~700 MiB of
//! RSS), so it is written in batches of [`PIECES_PER_BATCH`] pieces into the slot piece 0
//! does not name, and piece 0 goes last, naming the new slot: the commit point
//! ([`Storage::write_staged`]). Before it, a crash leaves the old value; after it, the new
//! one, with the old slot's pieces as leftovers, which the writer then removes.
//!
//! sled applies a batch atomically for a crash and for other writers, but a reader may see it
//! half-applied, or see the leftovers of a replaced value go: the write id, fresh for every
//! write, tells a reader that read pieces of two writes or missed one, and it reads again
//! while holding the key's stripe (`Storage::stripes`), which every writer of the key holds
//! for the whole change. The pieces of a key sort right after the key itself and before the
//! next one, so an arc is still one sled range.
//!
//! The ring state and the handoff record live in one tree so that a change of both is one
//! atomic sled batch ([`Storage::save_state`]).
//!
//! Because keys are the big-endian numbers, sled's byte order is ring order: an arc of the ring
//! is one sled range, or two when it wraps past 2^160-1 (see [`crate::ring::arc_ranges`]).
//!
//! A RingRecord is encoded with bincode 2 (big-endian, fixed-width integers):
//!
//! ```text
//! u8 version (= 1)
//! addr me                 4 bytes IPv4, u16 port
//! addr successor
//! addr second_successor
//! u8 0 | u8 1, addr       predecessor, absent or present
//! u64 n, n × addr         fingers
//! ```
//!
//! A HandoffRecord is encoded the same way: a u32 variant index, then the variant's fields in
//! order (addresses as above, a phase as a u32 index, a bool as one byte). See [`HandoffRecord`].

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;

use tokio::sync::watch;
use tracing::{debug, error, info, warn};

mod kv;

use kv::{FlushHandle, Kv, Tree};

use crate::error::{Error, Result};
use crate::protocol::{HashKey, PeerAddr};
use crate::ring::{self, Peer, RingState};

/// Mean value size below which [`Storage::insert_batch`] writes single inserts.
const SINGLE_INSERTS_BELOW: usize = 1024;
/// Point reads per entry when scanning, so that sled's cache evicts as a scan goes (see
/// `Storage::touched`).
const TOUCHES: usize = 4;
/// Point reads per piece when a scan reads a value in pieces (see [`ReadFor::ScanPieces`]).
const PIECE_TOUCHES: usize = 2;
/// Fewest entries for which a [`BatchWrite::KeysFirst`] batch writes its keys first. Each
/// batch still rewrites the leaf it shares with the next one, so the gain grows with the
/// batch: importing 1 GiB of 10 KiB values took 4.6–6.4 s in place, 3.9 s with 32-entry
/// batches keys first, 2.8–3.0 s with 50, 2.4 s with 64 and 1.7–1.9 s with 100; 25 gained
/// nothing.
const KEYS_FIRST_MIN: usize = 32;
/// Bulk operations (scans, range deletes, imports) call [`reclaim`] after this many entries.
const RECLAIM_EVERY: u64 = 64;
/// Values longer than this are stored in pieces (see "Values in pieces" above).
pub const INLINE_MAX: usize = 6 * 1024;
/// Value bytes per piece.
const PIECE_BYTES: usize = 6 * 1024;
/// Bytes before a piece's share of the value: its write id (u64).
const PIECE_HEAD: usize = 8;
/// Bytes before piece 0's share: write id (u64), the value's length (u64), pieces (u32).
const PIECE0_HEAD: usize = 20;
/// The top bit of a piece's index, and of the count in piece 0: which of a key's two slots
/// holds its pieces 1.. (see "Values in pieces").
const SLOT_BIT: u32 = 1 << 31;
/// Pieces per sled batch when a value of more pieces is written or removed (see
/// [`Storage::write_staged`]): 768 KiB of value per batch.
const PIECES_PER_BATCH: usize = 128;
/// Values longer than this are written in several batches ([`Storage::write_staged`]).
const ONE_BATCH_MAX: usize = PIECES_PER_BATCH * PIECE_BYTES;
/// A value assembled from pieces grows as they are read, from at most this much reserved up
/// front: a damaged length costs no more than the pieces really hold.
const ASSEMBLE_RESERVE_MAX: u64 = 64 << 20;
/// Stripes of [`Storage::stripes`].
const STRIPES: usize = 64;
/// Key of the mark, in the "ring" tree, that the directory may hold values in pieces.
const PIECES_KEY: &[u8] = b"pieces";
/// Key, in the "ring" tree, of the layout version of the data tree (u32, big-endian).
const FORMAT_KEY: &[u8] = b"format";
/// The layout this build writes and the newest it reads: 1, values whole or in pieces in one
/// slot (`e616b69`); 2, values over [`ONE_BATCH_MAX`] in either of two slots. Builds before
/// this number existed do not look at it (see README.md).
const FORMAT: u32 = 2;
/// Key of the in-progress handoff in the "ring" tree.
const HANDOFF_KEY: &[u8] = b"handoff";
/// Key of the known peers in the "ring" tree.
const PEERS_KEY: &[u8] = b"peers";
/// Version byte in front of the stored known peers.
const PEERS_VERSION: u8 = 1;
/// Entries written (or deleted) per sled batch when a range moves: big enough to amortise the
/// batch, small enough that sled 0.34 does not balloon (10k-entry batches took GBs of RAM).
pub const BATCH_ENTRIES: usize = 1000;

/// Gathers streamed entries into batches of at most [`BATCH_ENTRIES`] entries or `max_bytes`
/// value bytes (whichever comes first): the one bound every range move and restore uses.
pub struct Batcher<V> {
    /// The batch being filled.
    batch: Vec<(HashKey, V)>,
    /// Value bytes in `batch`.
    bytes: usize,
    /// A batch is full at this many value bytes.
    max_bytes: usize,
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

/// How [`Storage::insert_batch`] writes a batch of large values (a mean of 1 KiB or more;
/// smaller ones always go in as single inserts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchWrite {
    /// Each entry once, with its value: an interrupted batch leaves entries that are whole.
    InPlace,
    /// The keys first, with empty values, then the values over them.
    ///
    /// sled 0.34 splits a leaf when it holds more than 16 entries, whatever their size, and
    /// rewrites a page whole every 10 updates; pages over 128 KiB become blob files. Written
    /// in key order with their values, 10 KiB entries fill leaves that are split and
    /// rewritten as they grow: sled wrote 1.4 GB (1,700 blob files) for 1 GB of values and took
    /// 4.6–6.4 s. With the keys first, the empty keys build the leaves (8–16 entries each),
    /// and each value then lands as one small update of a leaf that no longer splits; only
    /// the leaf a batch shares with the next is rewritten. With batches of 100 entries: 1.3 GB
    /// written, no blob files, 1.7–1.9 s (BENCHMARKS.md, "keys first"). Deleting such a range
    /// later writes more (its leaves are near sled's rewrite threshold): 1.19 GB against
    /// 0.66 GB for 1 GB of values, in about the same time.
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

/// Where a handoff stands; what a restart must do with it is in ARCHITECTURE.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum Phase {
    /// Entries are (or were being) sent; the receiver's `T` was not seen.
    Streaming,
    /// The receiver's `T` was seen and the ring state switched; the handed entries are still
    /// to be deleted here.
    Handed,
}

/// A handoff in progress, persisted so that a restart can finish or undo it.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum HandoffRecord {
    /// We serve a CON: `[id(joiner), id(successor))` moves to `joiner`.
    ServingCon {
        joiner: PeerAddr,
        successor: PeerAddr,
        second_successor: PeerAddr,
        phase: Phase,
    },
    /// We are joining through `from`. `fresh`: we held no entries before, so whatever is in
    /// the data tree came from this CON and is dropped if it does not complete.
    ReceivingCon { from: PeerAddr, fresh: bool },
    /// We are leaving: everything we own moves to `to`.
    Leaving { to: PeerAddr, phase: Phase },
    /// We take over `[id(leaver), id(successor))` from a leaving `leaver`.
    ReceivingDis {
        leaver: PeerAddr,
        successor: PeerAddr,
    },
}

/// Version byte in front of a stored RingRecord.
const RING_RECORD_VERSION: u8 = 1;
/// Key of the ring state in the "ring" tree.
const RING_KEY: &[u8] = b"state";

/// The persisted form of [`RingState`]: addresses only (ids are recomputed from them).
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct RingRecord {
    pub version: u8,
    pub me: PeerAddr,
    pub successor: PeerAddr,
    pub second_successor: PeerAddr,
    pub predecessor: Option<PeerAddr>,
    pub fingers: Vec<PeerAddr>,
}

impl From<&RingState> for RingRecord {
    fn from(r: &RingState) -> Self {
        RingRecord {
            version: RING_RECORD_VERSION,
            me: r.me.addr,
            successor: r.successor().addr,
            second_successor: r.second_successor().addr,
            predecessor: r.predecessor.map(|p| p.addr),
            fingers: r.fingers.iter().map(|p| p.addr).collect(),
        }
    }
}

impl From<&RingRecord> for RingState {
    fn from(r: &RingRecord) -> Self {
        let me = Peer::new(r.me);
        RingState {
            me,
            // The record keeps two successors; maintenance rebuilds the rest of the list.
            successors: ring::successor_list(
                &me,
                [r.successor, r.second_successor].map(Peer::new),
                2,
            ),
            predecessor: r.predecessor.map(Peer::new),
            fingers: r.fingers.iter().copied().map(Peer::new).collect(),
        }
    }
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_big_endian()
        .with_fixed_int_encoding()
}

/// Proof that a change was applied; [`Storage::sync`] waits until it is durable.
#[must_use = "a change is durable only after Storage::sync"]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// What the flusher has made durable so far.
#[derive(Clone, Debug, Default)]
struct Durable {
    /// Every change with a ticket up to this one is flushed.
    seq: u64,
    /// Changes with tickets above `seq` and up to this one were in a flush that failed.
    failed: u64,
    /// Why that flush failed.
    error: Option<Arc<str>>,
}

/// The writers' side of the group commit.
struct Pending {
    /// Ticket of the latest change applied to sled.
    written: u64,
    /// The highest ticket someone waits for in [`Storage::sync`]. The flusher flushes only
    /// when this is ahead of what it flushed: a bulk import that syncs once per window is not
    /// flushed (fdatasync, syncfs) after every batch by a flusher that has nothing to release.
    wanted: u64,
    /// Set when the storage closes: the flusher makes a last flush and ends.
    stop: bool,
    /// The flusher is waiting for work: only then does a waiter need to wake it (a notify is
    /// a syscall; skipping it when the flusher is busy anyway saves one per write).
    idle: bool,
}

/// Group commit: writers count their changes here; one flusher thread flushes them in groups.
struct GroupCommit {
    /// Changes applied and not yet known durable.
    pending: Mutex<Pending>,
    /// Wakes the flusher when `pending.wanted` moves.
    wake: Condvar,
    /// Published after each flush; writers wait on it.
    durable: watch::Sender<Durable>,
    /// Set by the first failed write (see `kv`): from then on nothing is flushed
    /// and every write and sync fails with this message.
    failed: std::sync::OnceLock<Arc<str>>,
}

impl GroupCommit {
    fn new() -> GroupCommit {
        GroupCommit {
            pending: Mutex::new(Pending {
                written: 0,
                wanted: 0,
                stop: false,
                idle: false,
            }),
            wake: Condvar::new(),
            durable: watch::channel(Durable::default()).0,
            failed: std::sync::OnceLock::new(),
        }
    }

    /// Why writes fail, once one did.
    fn failed(&self) -> Option<&Arc<str>> {
        self.failed.get()
    }

    /// The first failed write (see `kv`): no more flushes, every waiting and later sync fails
    /// with `why`. Returns whether this was the first.
    fn fail(&self, why: Arc<str>) -> bool {
        if self.failed.set(why.clone()).is_err() {
            return false;
        }
        self.durable.send_modify(|d| {
            d.failed = u64::MAX;
            d.error = Some(why);
        });
        self.wake.notify_one();
        true
    }

    fn note_write(&self) -> Ticket {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.written += 1;
        Ticket(p.written)
    }

    /// Asks the flusher for a flush covering `ticket`.
    fn want(&self, ticket: u64) {
        let idle = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if p.wanted >= ticket {
                return;
            }
            p.wanted = ticket;
            p.idle
        };
        if idle {
            self.wake.notify_one();
        }
    }

    /// The flusher thread's loop: flush whatever was written since the last flush, fdatasync
    /// sled's log file, publish.
    fn run(self: Arc<Self>, db: FlushHandle, log: File, mut blobs: BlobSync) {
        let mut done = 0u64;
        loop {
            let target = {
                let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                while p.wanted <= done && !p.stop {
                    p.idle = true;
                    p = self.wake.wait(p).unwrap_or_else(|e| e.into_inner());
                }
                p.idle = false;
                if p.written <= done || self.failed.get().is_some() {
                    break; // stopping with nothing left to flush, or nothing can be flushed
                }
                p.written
            };
            match db
                .flush()
                .map_err(Error::from)
                .and_then(|_| Ok(log.sync_data()?))
                .and_then(|_| Ok(blobs.sync(&log).map(drop)?))
            {
                Ok(()) => self.durable.send_modify(|d| d.seq = target),
                Err(e) => {
                    error!(
                        "flush failed: {e}; {} change(s) not acknowledged",
                        target - done
                    );
                    self.durable.send_modify(|d| {
                        d.failed = target;
                        d.error = Some(e.to_string().into());
                    });
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            done = target;
        }
        debug!("flusher stopped");
    }
}

/// Makes sled's blob files durable. sled 0.34 writes a page bigger than a quarter segment (128
/// KiB: a large value, or a leaf of several 10 KiB values) to a file of its own in `db/blobs`
/// and never fsyncs it: its log, which we fdatasync, would point at a file a power cut can
/// empty. After each flush, if the blob directory changed since the last look, one `syncfs`
/// writes back every new blob file (and the directory) before the flush is published. Writes of
/// small values create no blob files and pay one `stat`.
struct BlobSync {
    /// `DIR/db/blobs`.
    dir: PathBuf,
    /// The directory's modification time at the last look.
    seen: Option<std::time::SystemTime>,
    /// The last look was within a second of that modification time: a file created just after
    /// it may not have moved the (coarse) timestamp, so look again next time.
    recent: bool,
}

impl BlobSync {
    fn new(dir: PathBuf) -> BlobSync {
        BlobSync {
            dir,
            seen: None,
            recent: true,
        }
    }

    /// Syncs the filesystem holding `log` if blob files may have appeared since the last call;
    /// says whether it did.
    fn sync(&mut self, log: &File) -> std::io::Result<bool> {
        let now = std::time::SystemTime::now();
        let modified = match std::fs::metadata(&self.dir) {
            Ok(m) => m.modified()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if self.seen == Some(modified) && !self.recent {
            return Ok(false);
        }
        self.seen = Some(modified);
        self.recent = now
            .duration_since(modified)
            .map_or(true, |d| d < std::time::Duration::from_secs(1));
        syncfs(log).map(|()| true)
    }
}

/// Writes back everything dirty on the filesystem holding `f` (Linux `syncfs`; elsewhere
/// `sync_all` of `f`, which is all that can be done portably).
fn syncfs(f: &File) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on an open descriptor.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    f.sync_all()
}

/// The exclusive lock on a data directory, held for the life of the node.
struct DirLock {
    /// Kept open: the flock lives as long as this file handle.
    _file: Option<File>,
}

impl DirLock {
    /// Checks the lock without writing our pid into it.
    fn acquire_quietly(dir: &Path) -> Result<DirLock> {
        let path = dir.join("LOCK");
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(DirLock { _file: None });
            }
            Err(e) => return Err(e.into()),
        };
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: Some(file) }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::DataDirLocked {
                dir: dir.to_path_buf(),
                pid: std::fs::read_to_string(&path)
                    .ok()
                    .map(|s| s.trim().to_string()),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::Io(e)),
        }
    }

    fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join("LOCK");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim().to_string();
                return Err(Error::DataDirLocked {
                    dir: dir.to_path_buf(),
                    pid: (!pid.is_empty()).then_some(pid),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::Io(e)),
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        file.sync_all()?;
        Ok(DirLock { _file: Some(file) })
    }
}

/// sled 0.34 can refuse to start after a crash during snapshot writing because a left-over
/// `snap.*.generating` file is taken for a snapshot (sled#1527). Such a file is never complete
/// (a finished snapshot is renamed to `snap.*`), so it is safe to delete before opening.
fn remove_unfinished_snapshots(db_dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(db_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            warn!(
                "removing unfinished sled snapshot {} left by a crash",
                entry.path().display()
            );
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

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
    /// was 7% slower at 32 connections with the second one).
    pieces_seen: std::sync::atomic::AtomicBool,
    /// The next write id for a value stored in pieces (see "Values in pieces").
    next_wid: std::sync::atomic::AtomicU64,
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
        std::fs::create_dir_all(dir)?;
        let lock = DirLock::acquire(dir)?;
        let db_dir = dir.join("db");
        remove_unfinished_snapshots(&db_dir)?;
        let db = sled::Config::new()
            .path(&db_dir)
            .cache_capacity(opts.cache_capacity)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        let commit = Arc::new(GroupCommit::new());
        let kv = Kv::open(dir.to_path_buf(), db, commit.clone())?;
        // A backup interrupted by a crash leaves old versions here: they mean nothing now.
        kv.clear(Tree::CowPieces)?;
        kv.clear(Tree::Cow)?;
        check_format(dir, &kv)?;
        let pieces_seen = kv.contains(Tree::Ring, PIECES_KEY)?;
        // Write ids distinct from those of every earlier run: sled's id generator never
        // repeats across restarts (it persists, and skips ahead after a crash), and a run
        // would need 2^32 writes of pieces to reach the next run's ids.
        let wid_base = kv.generate_id()? << 32;
        // sled's log: `DIR/db/db`. Opened read-only; fdatasync works on any descriptor.
        let log = File::open(db_dir.join("db"))?;
        let flusher = {
            let commit = commit.clone();
            let flush = kv.flush_handle();
            std::thread::Builder::new()
                .name("dht-flusher".into())
                .spawn(move || commit.run(flush, log, BlobSync::new(db_dir.join("blobs"))))?
        };
        info!("opened data directory {}", dir.display());
        Ok(Storage {
            dir: dir.to_path_buf(),
            kv,
            cut: Mutex::new(None),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            pieces_seen: std::sync::atomic::AtomicBool::new(pieces_seen),
            next_wid: std::sync::atomic::AtomicU64::new(wid_base),
            bulk: RwLock::new(()),
            commit,
            flusher: Some(flusher),
            _lock: lock,
        })
    }

    /// Takes and releases the lock of `dir` without opening the database: fails with
    /// [`Error::DataDirLocked`] when a node runs on it.
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
        if let Some(v) = self.kv.get(Tree::Data, key.as_bytes())? {
            return Ok(Some(Some(Value::Stored(v))));
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

    pub fn contains(&self, key: &HashKey) -> Result<bool> {
        let look = || -> Result<bool> {
            Ok(self.kv.contains(Tree::Data, key.as_bytes())? || self.has_pieces(key)?)
        };
        if look()? {
            return Ok(true);
        }
        if !self.pieces_seen() {
            return Ok(false);
        }
        // A writer may have turned pieces into a whole value between the two looks.
        let _stripe = self.stripe(key);
        look()
    }

    /// Inserts or replaces; durable after [`Storage::sync`] of the ticket.
    pub fn insert(&self, key: &HashKey, value: Vec<u8>) -> Result<Ticket> {
        self.writable()?;
        self.preserve(key)?;
        let stripe = self.stripe(key);
        let written = self.write_locked(key, value, Span::ANYTHING)?;
        drop(stripe);
        for k in written {
            self.touch_raw(k.as_ref())?;
        }
        Ok(self.commit.note_write())
    }

    /// Writes one value while holding its stripe: whole, or in pieces, replacing what the key
    /// held; the commit point is one sled batch (see "Values in pieces"). `held`: what the key
    /// may hold (a batch into an empty span knows it holds nothing). Returns the keys of
    /// pieces written (to be touched: see [`Storage::touched`]).
    fn write_locked(&self, key: &HashKey, value: Vec<u8>, held: Span) -> Result<Vec<RawKey>> {
        let mut written = Vec::new();
        if value.len() > ONE_BATCH_MAX {
            self.write_staged(key, &value, &mut written)?;
        } else if value.len() > INLINE_MAX {
            let mut batch = sled::Batch::default();
            let look = held.whole || held.pieces;
            let old = self.add_pieces(&mut batch, key, &value, &mut written, look)?;
            self.kv.apply(Tree::Data, batch)?;
            self.remove_in_batches(&old)?;
        } else {
            let old = match held.pieces {
                true => self.pieces_if_seen(key)?,
                false => Vec::new(),
            };
            if old.is_empty() {
                self.kv.insert(Tree::Data, key.as_bytes(), value)?;
            } else {
                let mut batch = sled::Batch::default();
                let rest = split_removal(&mut batch, old);
                batch.insert(&key.0[..], value);
                self.kv.apply(Tree::Data, batch)?;
                self.remove_in_batches(&rest)?;
            }
        }
        Ok(written)
    }

    /// Removes; `true` if the key was there. Durable after [`Storage::sync`] of the ticket.
    pub fn remove(&self, key: &HashKey) -> Result<(bool, Ticket)> {
        self.writable()?;
        self.preserve(key)?;
        let _stripe = self.stripe(key);
        let was = self.remove_locked(key)?;
        Ok((was, self.commit.note_write()))
    }

    /// Removes `key` (its whole value or its pieces) while holding its stripe.
    /// Returns whether it held a value (leftover pieces alone are no value, but go too).
    fn remove_locked(&self, key: &HashKey) -> Result<bool> {
        let old = self.pieces_if_seen(key)?;
        if old.is_empty() {
            return Ok(self.kv.remove(Tree::Data, key.as_bytes())?.is_some());
        }
        // A value in pieces has its piece 0, which sorts first.
        let has_piece0 = old.first().is_some_and(|k| piece_index(k) == Some(0));
        let was = has_piece0 || self.kv.contains(Tree::Data, key.as_bytes())?;
        let mut batch = sled::Batch::default();
        let rest = split_removal(&mut batch, old);
        batch.remove(&key.0[..]);
        self.kv.apply(Tree::Data, batch)?;
        self.remove_in_batches(&rest)?;
        Ok(was)
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

    /// Whether `key` is stored in pieces (has a piece 0).
    fn has_pieces(&self, key: &HashKey) -> Result<bool> {
        Ok(self.pieces_seen() && self.kv.contains(Tree::Data, RawKey::piece(key, 0))?)
    }

    /// [`Storage::stored_pieces`], or nothing without a look when the directory never held
    /// pieces.
    fn pieces_if_seen(&self, key: &HashKey) -> Result<Vec<sled::IVec>> {
        if !self.pieces_seen() {
            return Ok(Vec::new());
        }
        self.stored_pieces(key)
    }

    /// Whether this directory ever held a value in pieces (the field of the same name).
    fn pieces_seen(&self) -> bool {
        self.pieces_seen.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Before the first value in pieces: records durably that the directory may hold some.
    fn note_pieces(&self) -> Result<()> {
        if !self.pieces_seen() {
            self.kv.insert(Tree::Ring, PIECES_KEY, &[1u8][..])?;
            self.kv.flush()?;
            self.pieces_seen
                .store(true, std::sync::atomic::Ordering::Release);
            info!("{} holds values in pieces from now on", self.dir.display());
        }
        Ok(())
    }

    /// The keys of the pieces stored under `key`, as they are (a range scan): what a removal
    /// must remove, whatever piece 0 says or whether it is there at all. The caller holds the
    /// stripe.
    fn stored_pieces(&self, key: &HashKey) -> Result<Vec<sled::IVec>> {
        let (lo, hi) = (RawKey::piece(key, 0), RawKey::piece(key, u32::MAX));
        let mut keys = Vec::new();
        for k in self.kv.range(Tree::Data, lo..=hi).keys() {
            keys.push(k?);
        }
        Ok(keys)
    }

    /// Adds to `batch` what stores `value` (at most [`ONE_BATCH_MAX`] bytes) under `key` in
    /// pieces in slot 0, replacing a whole value and the other pieces the key holds
    /// (`look: false`: the caller knows the key holds nothing). The caller holds the stripe.
    /// The pieces' keys are pushed on `written`. Returns the old pieces left for
    /// [`Storage::remove_in_batches`] (see [`Storage::add_piece_removal`]).
    fn add_pieces(
        &self,
        batch: &mut sled::Batch,
        key: &HashKey,
        value: &[u8],
        written: &mut Vec<RawKey>,
        look: bool,
    ) -> Result<Vec<sled::IVec>> {
        self.note_pieces()?;
        let mut old = Vec::new();
        if look {
            old = self.stored_pieces(key)?;
            if self.kv.contains(Tree::Data, key.as_bytes())? {
                batch.remove(&key.0[..]);
            }
        }
        let wid = self
            .next_wid
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let n = value.len().div_ceil(PIECE_BYTES) as u32;
        for (i, share) in value.chunks(PIECE_BYTES).enumerate() {
            let k = RawKey::piece(key, i as u32);
            let p = if i == 0 {
                piece0(wid, value.len(), n, share)
            } else {
                piece(wid, share)
            };
            batch.insert(k.as_ref(), p);
            written.push(k);
        }
        // The old pieces that the new ones do not overwrite.
        old.retain(|k| k.get(20..24) >= Some(&n.to_be_bytes()[..]));
        Ok(split_removal(batch, old))
    }

    /// Adds to `batch` the removal of `key`'s pieces: all of them, or piece 0 and the first
    /// [`PIECES_PER_BATCH`] when there are more. Returns the rest, which are leftovers once
    /// the batch is applied, for [`Storage::remove_in_batches`]. The caller holds the stripe.
    fn add_piece_removal(&self, batch: &mut sled::Batch, key: &HashKey) -> Result<Vec<sled::IVec>> {
        Ok(split_removal(batch, self.stored_pieces(key)?))
    }

    /// Removes `keys` (leftover pieces, invisible to readers) in batches of
    /// [`PIECES_PER_BATCH`]. The caller holds the stripe.
    fn remove_in_batches(&self, keys: &[sled::IVec]) -> Result<()> {
        for chunk in keys.chunks(PIECES_PER_BATCH) {
            let mut batch = sled::Batch::default();
            for k in chunk {
                batch.remove(k);
            }
            self.kv.apply(Tree::Data, batch)?;
            reclaim();
        }
        Ok(())
    }

    /// Stores a value of more than [`ONE_BATCH_MAX`] bytes under `key` in several sled
    /// batches, so that memory stays bounded (see "Values in pieces"): pieces 1.. go to the
    /// slot piece 0 does not name, [`PIECES_PER_BATCH`] at a time, then one batch writes piece
    /// 0 naming that slot (and removes a whole value): until then readers get the old value,
    /// from then on the new one. Last, the old slot's pieces go. The caller holds the stripe.
    fn write_staged(&self, key: &HashKey, value: &[u8], written: &mut Vec<RawKey>) -> Result<()> {
        self.note_pieces()?;
        let old = self.stored_pieces(key)?;
        let live = match self.kv.get(Tree::Data, RawKey::piece(key, 0))? {
            Some(p0) => PieceHeader::parse(&p0).map_or(0, |h| h.slot),
            None => 0,
        };
        let slot = SLOT_BIT - live;
        let (strays, old): (Vec<_>, Vec<_>) = old
            .into_iter()
            .filter(|k| piece_index(k) != Some(0))
            .partition(|k| piece_index(k).is_some_and(|i| i & SLOT_BIT == slot));
        // Pieces an interrupted write left in the slot (invisible: piece 0 names the other).
        self.remove_in_batches(&strays)?;
        let wid = self
            .next_wid
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let n = value.len().div_ceil(PIECE_BYTES) as u32;
        let mut shares = value.chunks(PIECE_BYTES);
        let first = shares.next().unwrap_or_default();
        let mut batch = sled::Batch::default();
        for (i, share) in (1..).zip(shares) {
            let k = RawKey::piece(key, slot | i);
            batch.insert(k.as_ref(), piece(wid, share));
            written.push(k);
            if (i as usize).is_multiple_of(PIECES_PER_BATCH) {
                self.kv.apply(Tree::Data, std::mem::take(&mut batch))?;
                reclaim();
            }
        }
        self.kv.apply(Tree::Data, batch)?;
        crate::fault::point_blocking("staged:before-commit");
        // The commit point.
        let mut batch = sled::Batch::default();
        let k = RawKey::piece(key, 0);
        batch.insert(k.as_ref(), piece0(wid, value.len(), slot | n, first));
        written.push(k);
        if self.kv.contains(Tree::Data, key.as_bytes())? {
            batch.remove(&key.0[..]);
        }
        self.kv.apply(Tree::Data, batch)?;
        crate::fault::point_blocking("staged:after-commit");
        self.remove_in_batches(&old)
    }

    /// The value of `key`: the whole value, or its pieces put together. A reader that finds
    /// pieces of two writes, or neither a whole value nor pieces once the directory holds
    /// pieces (a writer may have switched between its reads), reads again under the key's
    /// stripe.
    fn read_value(&self, key: &HashKey, how: ReadFor) -> Result<Option<Value>> {
        match self.read_value_once(key, how, false)? {
            Found::Absent => return Ok(None),
            Found::Value(v) => return Ok(Some(v)),
            Found::Torn => {}
        }
        let _stripe = self.stripe(key);
        self.read_value_locked(key, how)
    }

    /// [`Storage::read_value`] for a caller that holds the stripe: pieces that do not fit
    /// together now are damage.
    fn read_value_locked(&self, key: &HashKey, how: ReadFor) -> Result<Option<Value>> {
        match self.read_value_once(key, how, true)? {
            Found::Absent => Ok(None),
            Found::Value(v) => Ok(Some(v)),
            Found::Torn => Err(Error::Damaged(format!(
                "the pieces of the value under {key} in {} do not fit together",
                self.dir.display()
            ))),
        }
    }

    fn read_value_once(&self, key: &HashKey, how: ReadFor, locked: bool) -> Result<Found> {
        let get = |k: &[u8]| -> Result<Option<sled::IVec>> {
            match how {
                ReadFor::Request => Ok(self.kv.get(Tree::Data, k)?),
                ReadFor::Scan | ReadFor::ScanPieces => self.touch_raw(k),
            }
        };
        if how != ReadFor::ScanPieces {
            if let Some(v) = get(key.as_bytes())? {
                return Ok(Found::Value(Value::Stored(v)));
            }
        }
        if !self.pieces_seen() {
            return Ok(Found::Absent);
        }
        let Some(p0) = get(RawKey::piece(key, 0).as_ref())? else {
            // Neither a whole value nor piece 0: absent, or a writer turned pieces into a
            // whole value between the two reads. Only under the stripe is that sure.
            return Ok(if locked { Found::Absent } else { Found::Torn });
        };
        let Some(h) = PieceHeader::parse(&p0) else {
            return Ok(Found::Torn);
        };
        let mut value = Vec::with_capacity(h.len.min(ASSEMBLE_RESERVE_MAX) as usize);
        value.extend_from_slice(&p0[PIECE0_HEAD..]);
        for i in 1..h.pieces {
            let Some(p) = get(RawKey::piece(key, h.slot | i).as_ref())? else {
                return Ok(Found::Torn);
            };
            if p.len() < PIECE_HEAD || p[..PIECE_HEAD] != h.wid {
                return Ok(Found::Torn);
            }
            if value.len() as u64 + (p.len() - PIECE_HEAD) as u64 > h.len {
                return Ok(Found::Torn);
            }
            value.extend_from_slice(&p[PIECE_HEAD..]);
        }
        if value.len() as u64 != h.len {
            return Ok(Found::Torn);
        }
        Ok(Found::Value(Value::Assembled(value)))
    }

    /// Waits until the change behind `ticket` (and every change before it) is flushed.
    pub async fn sync(&self, ticket: Ticket) -> Result<()> {
        self.writable()?;
        let mut rx = self.commit.durable.subscribe();
        let covered = {
            let d = rx.borrow();
            d.seq >= ticket.0 || d.failed >= ticket.0
        };
        if !covered {
            self.commit.want(ticket.0);
        }
        let d = rx
            .wait_for(|d| d.seq >= ticket.0 || d.failed >= ticket.0)
            .await
            .map_err(|_| Error::Flush("the flusher has stopped".into()))?;
        if d.seq >= ticket.0 {
            Ok(())
        } else {
            Err(Error::Flush(
                d.error.as_deref().unwrap_or("unknown error").to_string(),
            ))
        }
    }

    /// Starts the flush that [`Storage::sync`] of `ticket` would wait for, without waiting:
    /// a bulk writer asks for one window's flush and goes on writing the next.
    pub fn request_sync(&self, ticket: Ticket) {
        if self.commit.failed.get().is_none() {
            self.commit.want(ticket.0);
        }
    }

    /// Makes everything written so far durable, on the calling thread: what the flusher does
    /// for a group, always with a `syncfs` for sled's blob files (see `BlobSync`).
    pub fn flush(&self) -> Result<()> {
        self.writable()?;
        self.kv.flush()?;
        let log = File::open(self.dir.join("db").join("db"))?;
        log.sync_data()?;
        syncfs(&log)?;
        Ok(())
    }

    /// The ring state stored in this directory, if any.
    pub fn load_ring(&self) -> Result<Option<RingState>> {
        let Some(raw) = self.kv.get(Tree::Ring, RING_KEY)? else {
            return Ok(None);
        };
        let (rec, _): (RingRecord, usize) = bincode::decode_from_slice(&raw, bincode_config())?;
        if rec.version != RING_RECORD_VERSION {
            return Err(Error::Config(format!(
                "{}: ring state version {} is not supported (expected {RING_RECORD_VERSION})",
                self.dir.display(),
                rec.version
            )));
        }
        Ok(Some(RingState::from(&rec)))
    }

    /// Stores the ring state; durable after [`Storage::sync`] of the ticket.
    pub fn save_ring(&self, state: &RingState) -> Result<Ticket> {
        self.writable()?;
        let bytes = bincode::encode_to_vec(RingRecord::from(state), bincode_config())?;
        self.kv.insert(Tree::Ring, RING_KEY, bytes)?;
        Ok(self.commit.note_write())
    }

    /// Changes the ring state and the handoff record in one atomic batch. `Some(None)` removes
    /// that record (a departed node has no ring state; a finished handoff no record); `None`
    /// leaves it as it is.
    pub fn save_state(
        &self,
        ring: Option<Option<&RingState>>,
        handoff: Option<Option<&HandoffRecord>>,
    ) -> Result<Ticket> {
        self.writable()?;
        let mut batch = sled::Batch::default();
        match ring {
            Some(Some(r)) => batch.insert(
                RING_KEY,
                bincode::encode_to_vec(RingRecord::from(r), bincode_config())?,
            ),
            Some(None) => batch.remove(RING_KEY),
            None => {}
        }
        match handoff {
            Some(Some(h)) => {
                batch.insert(HANDOFF_KEY, bincode::encode_to_vec(h, bincode_config())?)
            }
            Some(None) => batch.remove(HANDOFF_KEY),
            None => {}
        }
        self.kv.apply(Tree::Ring, batch)?;
        Ok(self.commit.note_write())
    }

    /// Stores the peers this node has known (`node::peers`); durable after [`Storage::sync`].
    pub fn save_peers(&self, peers: &[PeerAddr]) -> Result<Ticket> {
        self.writable()?;
        let mut bytes = vec![PEERS_VERSION];
        bytes.extend(bincode::encode_to_vec(peers, bincode_config())?);
        self.kv.insert(Tree::Ring, PEERS_KEY, bytes)?;
        Ok(self.commit.note_write())
    }

    /// The peers this node has known, as last saved (none in a directory of an older build).
    pub fn load_peers(&self) -> Result<Vec<PeerAddr>> {
        let Some(raw) = self.kv.get(Tree::Ring, PEERS_KEY)? else {
            return Ok(Vec::new());
        };
        match raw.split_first() {
            Some((&PEERS_VERSION, rest)) => {
                let (peers, _): (Vec<PeerAddr>, usize) =
                    bincode::decode_from_slice(rest, bincode_config())?;
                Ok(peers)
            }
            _ => Err(Error::Damaged(format!(
                "{}: the known peers are stored in a format this build does not read",
                self.dir.display()
            ))),
        }
    }

    /// The handoff record left by an unfinished join or leave, if any.
    pub fn load_handoff(&self) -> Result<Option<HandoffRecord>> {
        let Some(raw) = self.kv.get(Tree::Ring, HANDOFF_KEY)? else {
            return Ok(None);
        };
        let (rec, _): (HandoffRecord, usize) = bincode::decode_from_slice(&raw, bincode_config())?;
        Ok(Some(rec))
    }

    /// Writes a group of entries (in key order, as ranges arrive); durable after
    /// [`Storage::sync`]. Small values go in as single inserts, larger ones as one sled batch
    /// (or two, keys first: see [`BatchWrite`]): measured on sled 0.34 (BENCHMARKS.md), sorted
    /// single inserts import 100-byte values about twice as fast as batches, while batches win
    /// from a few KiB up.
    pub fn insert_batch(
        &self,
        entries: &mut Vec<(HashKey, Vec<u8>)>,
        how: BatchWrite,
    ) -> Result<Ticket> {
        self.writable()?;
        let bytes: usize = entries.iter().map(|(_, v)| v.len()).sum();
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
        let mut written: Vec<RawKey> = Vec::new();
        // A value written in several batches of its own (see `write_staged`).
        let staged = entries.iter().any(|(_, v)| v.len() > ONE_BATCH_MAX);
        if small || !ordered || staged {
            for (i, (k, v)) in entries.drain(..).enumerate() {
                written.extend(self.write_locked(&k, v, span)?);
                if (i as u64 + 1).is_multiple_of(RECLAIM_EVERY) {
                    reclaim();
                }
            }
            drop(stripes);
        } else {
            let mut batch = sled::Batch::default();
            // Pieces of replaced values beyond what one batch removes (see `split_removal`).
            let mut leftovers = Vec::new();
            for (k, v) in entries.iter_mut() {
                if v.len() > INLINE_MAX {
                    let look = span.whole || span.pieces;
                    leftovers.extend(self.add_pieces(&mut batch, k, v, &mut written, look)?);
                } else {
                    if span.pieces {
                        leftovers.extend(self.add_piece_removal(&mut batch, k)?);
                    }
                    written.push(RawKey::whole(k));
                    batch.insert(&k.0[..], std::mem::take(v));
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
        // `touched`): pages of large values written once would stay in memory unaccounted (a
        // 1 GiB import peaked ~70 MiB over the cache). Touching them registers them as the
        // import goes.
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
    fn batch_holds(&self, entries: &[(HashKey, Vec<u8>)]) -> Result<Option<Span>> {
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

    /// Removes `key` only if it still holds `value` (a misplaced entry handed to its owner,
    /// unless it changed meanwhile). Returns whether it was removed.
    pub fn remove_if_unchanged(&self, key: &HashKey, value: &[u8]) -> Result<(bool, Ticket)> {
        self.writable()?;
        self.preserve(key)?;
        let _stripe = self.stripe(key);
        let done = match self.read_value_locked(key, ReadFor::Request)? {
            Some(v) if v == value => self.remove_locked(key)?,
            _ => false,
        };
        Ok((done, self.commit.note_write()))
    }

    /// Whether the data tree holds no entry at all.
    pub fn is_empty(&self) -> bool {
        self.kv.is_empty(Tree::Data)
    }

    /// Entries in the arc `[from, to)` (a scan, bounded in memory like every scan).
    pub fn count_arc(&self, from: &HashKey, to: &HashKey) -> Result<u64> {
        let mut n = 0u64;
        let mut last: Option<HashKey> = None;
        for (i, r) in self.raw_arc(from, to).enumerate() {
            let (k, _) = r?;
            let key = stored_key(&k)?;
            // Touch every piece too: the scan loaded its page (see `touched`). An entry is a
            // whole value or a piece 0 (see `delete_arc` for pieces without one).
            let present = self.touch_raw(&k)?.is_some();
            let first = k.len() == 20 || k[20..] == [0, 0, 0, 0];
            if present && first && last != Some(key) {
                n += 1;
                last = Some(key);
            }
            if (i as u64 + 1).is_multiple_of(RECLAIM_EVERY) {
                reclaim();
            }
        }
        Ok(n)
    }

    /// The raw entries of the arc `[from, to)`: whole values and pieces, in key order.
    fn raw_arc(
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

    /// Deletes every entry of the arc `[from, to)`, streaming the keys (never collecting them
    /// all). Returns how many were deleted; durable after [`Storage::sync`]. Single removes in
    /// key order: on sled 0.34 they were faster than 1000-key batches and kept a 512 MB delete
    /// at 13 MB of RSS instead of 47 MB. So the pieces of a value go one by one too (not in one
    /// batch like other changes of pieces): an arc is deleted only once nobody serves it, and
    /// a deletion cut short leaves pieces without their piece 0, which readers take for an
    /// absent value and the next deletion of the arc removes.
    pub fn delete_arc(&self, from: &HashKey, to: &HashKey) -> Result<(u64, Ticket)> {
        self.writable()?;
        let mut deleted = 0u64;
        // The key whose raw entries are being removed, with its stripe held.
        let mut current: Option<(HashKey, std::sync::MutexGuard<'_, ()>)> = None;
        for entry in self.raw_arc(from, to) {
            let (k, _) = entry?;
            let key = stored_key(&k)?;
            let first = current.as_ref().is_none_or(|(c, _)| *c != key);
            if first {
                // Released before `preserve`, which may take a stripe itself.
                drop(current.take());
                self.preserve(&key)?;
                current = Some((key, self.stripe(&key)));
            }
            // One raw entry at a time, piece 0 first: the moment it goes, readers (under the
            // stripe) find the value absent. Registers the page with the cache (`touched`).
            self.touch_raw(&k)?;
            let was = self.kv.remove(Tree::Data, &k)?.is_some();
            // An entry is a whole value or a piece 0 (pieces without piece 0 are what an
            // earlier deletion left when it was interrupted: readers never see them).
            if first && was && (k.len() == 20 || k[20..] == [0, 0, 0, 0]) {
                deleted += 1;
                if deleted.is_multiple_of(RECLAIM_EVERY) {
                    reclaim();
                }
            }
        }
        Ok((deleted, self.commit.note_write()))
    }

    /// Before `key` changes: if a backup's cut is active and has not streamed `key` yet, keep
    /// its current version (or its absence) in the copy-on-write tree, once.
    fn preserve(&self, key: &HashKey) -> Result<()> {
        let mut cut = self.cut.lock().unwrap_or_else(|e| e.into_inner());
        let Some(state) = cut.as_mut() else {
            return Ok(());
        };
        if state.cursor.is_some_and(|c| *key <= c) || self.kv.contains(Tree::Cow, key.as_bytes())? {
            return Ok(());
        }
        let old = match self.read_value(key, ReadFor::Request)? {
            Some(v) if v.len() > INLINE_MAX => {
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
                b.extend_from_slice(&(v.len() as u64).to_be_bytes());
                b
            }
            Some(v) => {
                let mut b = Vec::with_capacity(v.len() + 1);
                b.push(1);
                b.extend_from_slice(&v);
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
            return Err(Error::Config(
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
            return Err(Error::Config("no backup cut is active".into()));
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

    /// Number of entries held (a full scan: for diagnostics, not for the request path).
    pub fn count(&self) -> Result<u64> {
        self.count_arc(&HashKey::ZERO, &HashKey::ZERO)
    }

    /// The entries of the arc `[from, to)` in ring order, streamed from sled (one or two range
    /// scans; nothing is collected). sled iterators are not snapshots: writes to the arc made
    /// during the scan may or may not be seen, so callers fence the arc first.
    pub fn iter_arc(
        &self,
        from: &HashKey,
        to: &HashKey,
    ) -> impl Iterator<Item = Result<(HashKey, Value)>> + '_ {
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
    /// only through point reads: a long scan would keep every page it passed in memory (a
    /// 1 GiB arc, 1 GiB of RSS). Reading each value again with `get` registers its page, so the
    /// cache evicts as the scan goes. The LRU handles accesses in blocks of 64 per shard (256
    /// shards), so with one access per entry a scan still runs ~100 MiB past the capacity;
    /// [`TOUCHES`] accesses per entry make the blocks fill that much sooner and keep a scan
    /// within the capacity (measured: a 512 MB scan with a 64 MiB cache peaks at 510 MB RSS
    /// plain, 169 MB with one touch, 78 MB with four). The page is already in memory, so the
    /// extra reads are cheap. `None`: the entry went away meanwhile, or it is a piece of the
    /// value read just before (`last`: the pieces are read, and touched, as a whole at the
    /// first one).
    fn touched(
        &self,
        r: sled::Result<(sled::IVec, sled::IVec)>,
        last: &mut Option<HashKey>,
    ) -> Result<Option<(HashKey, Value)>> {
        let (k, _) = r?;
        let key = stored_key(&k)?;
        if *last == Some(key) {
            return Ok(None);
        }
        *last = Some(key);
        if k.len() == 20 {
            return Ok(self.touch(&k)?.map(|v| (key, Value::Stored(v))));
        }
        Ok(self
            .read_value(&key, ReadFor::ScanPieces)?
            .map(|v| (key, v)))
    }

    /// `get` once, and [`TOUCHES`] times in all for values of 1 KiB and more (see
    /// [`Storage::touched`]). Pages of small values are small, so what the extra reads would
    /// keep in bounds is small too, while they cost a 1M-entry scan most of its time: sled
    /// evicted and re-loaded the pages of a freshly written tree over and over (a DIS of 1M ×
    /// 100 B spent 28% of the sender's CPU freeing nodes; BENCHMARKS.md).
    fn touch(&self, k: &[u8]) -> Result<Option<sled::IVec>> {
        self.touch_n(k, TOUCHES)
    }

    /// [`Storage::touch`] for a raw key of the data tree: [`PIECE_TOUCHES`] reads for a piece
    /// (a 10 KiB value in two pieces gets the reads it got whole).
    fn touch_raw(&self, k: &[u8]) -> Result<Option<sled::IVec>> {
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
    fn touch_n(&self, k: &[u8], touches: usize) -> Result<Option<sled::IVec>> {
        // A `get` can write: sled splits an overgrown leaf on the next traversal.
        let v = self.kv.get(Tree::Data, k)?;
        if v.as_ref().is_some_and(|v| v.len() >= SINGLE_INSERTS_BELOW) {
            for _ in 1..touches {
                self.kv.get(Tree::Data, k)?;
            }
        }
        Ok(v)
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

/// Runs the garbage sled has queued for freeing, as far as it can.
///
/// sled 0.34 frees what it replaces through crossbeam-epoch's deferred functions: pages it
/// evicts from its cache (with their values), node versions it replaces, and its 512 KiB log
/// buffers once written. Deferred functions wait in a bag per thread until 64 have gathered,
/// then in a global queue that pinning threads drain 8 bags per 128 pins. A bulk import, scan or
/// range delete produces garbage faster than that: importing 1 GiB of 10 KiB values held some
/// 70 MiB of evicted values and 40 MiB of written log buffers at its peak (heaptrack), whatever
/// the cache capacity. Flushing this thread's bag and collecting every `RECLAIM_EVERY`
/// entries frees it as the bulk operation goes (BENCHMARKS.md, "Memory during a handoff").
pub fn reclaim() {
    for _ in 0..4 {
        crossbeam_epoch::pin().flush();
    }
}

/// A backup's cut while it runs (see [`Storage::begin_cut`]).
#[derive(Default)]
struct CutState {
    /// The last key streamed: writers preserve keys above it before changing them, keys at or
    /// below it are already in the backup. `None` before the first entry.
    cursor: Option<HashKey>,
    /// How many old versions writers have put in the copy-on-write tree so far: the backup
    /// re-reads that tree only when this moved, instead of seeking it for every entry.
    preserved: u64,
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
    storage: &'a Storage,
    /// Live iterator over the data tree, from the start.
    data: sled::Iter,
    /// The data tree's next entry, read and not yet streamed.
    peeked: Option<(sled::IVec, sled::IVec)>,
    /// The data iterator has ended.
    data_done: bool,
    /// The copy-on-write tree's first entry above the cursor, as of `cow_seen`.
    cow_next: Option<(sled::IVec, sled::IVec)>,
    /// `CutState::preserved` when `cow_next` was read; `None`: read it again.
    cow_seen: Option<u64>,
    /// Entries produced, to reclaim sled's garbage as the scan goes (see [`reclaim`]).
    streamed: u64,
}

impl CutEntries<'_> {
    fn step(&mut self) -> Result<Option<(HashKey, Value)>> {
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
                return Err(Error::Config("the backup cut ended early".into()));
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
                (key, storage.read_value(&key, how)?)
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
            // Absent at the cut (inserted since): skip it.
        }
    }
}

impl Iterator for CutEntries<'_> {
    type Item = Result<(HashKey, Value)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step().transpose()
    }
}

/// Piece 0 of a value in pieces (see "Values in pieces"); `count` carries the slot bit.
fn piece0(wid: u64, len: usize, count: u32, share: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(PIECE0_HEAD + share.len());
    p.extend_from_slice(&wid.to_be_bytes());
    p.extend_from_slice(&(len as u64).to_be_bytes());
    p.extend_from_slice(&count.to_be_bytes());
    p.extend_from_slice(share);
    p
}

/// A piece after the first.
fn piece(wid: u64, share: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(PIECE_HEAD + share.len());
    p.extend_from_slice(&wid.to_be_bytes());
    p.extend_from_slice(share);
    p
}

/// The index of a raw key of the data tree, `None` for a whole value's key.
fn piece_index(k: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(k.get(20..24)?.try_into().ok()?))
}

/// Puts the removal of `old` pieces of a key in `batch` (the change that replaces or removes
/// the key's value): piece 0, and up to [`PIECES_PER_BATCH`] others. Returns the others, which
/// that batch makes leftovers, to be removed after it.
fn split_removal(batch: &mut sled::Batch, mut old: Vec<sled::IVec>) -> Vec<sled::IVec> {
    // Piece 0 sorts first; it goes in this batch whatever the count.
    let now = old.len().min(PIECES_PER_BATCH + 1);
    for k in old.drain(..now) {
        batch.remove(k);
    }
    old
}

/// Refuses a directory whose layout is newer than this build reads; records this build's
/// layout in one that has none or an older one (and flushes it, before anything is written
/// in the new layout).
fn check_format(dir: &Path, kv: &Kv) -> Result<()> {
    let stored = match kv.get(Tree::Ring, FORMAT_KEY)? {
        Some(v) => Some(
            <[u8; 4]>::try_from(&v[..])
                .map(u32::from_be_bytes)
                .map_err(|_| {
                    Error::Damaged(format!(
                        "the layout version in {} is unreadable",
                        dir.display()
                    ))
                })?,
        ),
        None => None,
    };
    match stored {
        Some(n) if n > FORMAT => Err(Error::Config(format!(
            "{} was written by a newer dht-store (data layout {n}; this build reads up to {FORMAT}): \
             use that build or a newer one",
            dir.display()
        ))),
        Some(n) if n == FORMAT => Ok(()),
        _ => {
            kv.insert(Tree::Ring, FORMAT_KEY, &FORMAT.to_be_bytes()[..])?;
            kv.flush()?;
            Ok(())
        }
    }
}

/// The HashKey of a key read back from the data tree: 20 bytes (a whole value) or 24 (a
/// piece); anything else is damage.
fn stored_key(k: &[u8]) -> Result<HashKey> {
    let key: Option<[u8; 20]> = match k.len() {
        20 | 24 => k.get(..20).and_then(|b| b.try_into().ok()),
        _ => None,
    };
    key.map(HashKey)
        .ok_or_else(|| Error::Damaged(format!("a stored key is {} bytes, not 20 or 24", k.len())))
}

/// A key of the data tree: a HashKey's 20 bytes (a whole value), or those and a piece's
/// index (see "Values in pieces").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RawKey {
    /// The key's bytes; only the first `len` count.
    bytes: [u8; 24],
    /// 20 or 24.
    len: u8,
}

impl RawKey {
    fn whole(key: &HashKey) -> RawKey {
        let mut bytes = [0u8; 24];
        bytes[..20].copy_from_slice(&key.0);
        RawKey { bytes, len: 20 }
    }

    fn piece(key: &HashKey, i: u32) -> RawKey {
        let mut bytes = [0u8; 24];
        bytes[..20].copy_from_slice(&key.0);
        bytes[20..].copy_from_slice(&i.to_be_bytes());
        RawKey { bytes, len: 24 }
    }
}

impl AsRef<[u8]> for RawKey {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// What piece 0 says of the whole value (see "Values in pieces").
struct PieceHeader {
    /// The write id every piece of this write starts with.
    wid: [u8; 8],
    /// The value's length.
    len: u64,
    /// How many pieces it has.
    pieces: u32,
    /// Where pieces 1.. are: 0 or [`SLOT_BIT`], added to their index.
    slot: u32,
}

impl PieceHeader {
    /// `None` unless the header is there and consistent: `pieces` pieces of [`PIECE_BYTES`]
    /// (the last one shorter) hold exactly `len` bytes.
    fn parse(p0: &[u8]) -> Option<PieceHeader> {
        let wid: [u8; 8] = p0.get(..8)?.try_into().ok()?;
        let len = u64::from_be_bytes(p0.get(8..16)?.try_into().ok()?);
        let count = u32::from_be_bytes(p0.get(16..20)?.try_into().ok()?);
        let (slot, pieces) = (count & SLOT_BIT, count & !SLOT_BIT);
        let fits = pieces > 0
            && len <= u64::from(pieces) * PIECE_BYTES as u64
            && len > u64::from(pieces - 1) * PIECE_BYTES as u64;
        fits.then_some(PieceHeader {
            wid,
            len,
            pieces,
            slot,
        })
    }
}

/// `entries` as runs of strictly increasing keys: one, or two when they wrap past 2^160-1
/// (ring order), the second wholly below the first. `None` for anything else (a key twice,
/// keys out of order).
fn ring_runs<V>(entries: &[(HashKey, V)]) -> Option<Vec<&[(HashKey, V)]>> {
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
struct Span {
    /// Some whole value.
    whole: bool,
    /// Some piece.
    pieces: bool,
}

impl Span {
    /// When nothing is known: look at every key.
    const ANYTHING: Span = Span {
        whole: true,
        pieces: true,
    };
}

/// A value read from the data tree: as sled holds it (a whole value, shared with sled's
/// cache), or assembled from its pieces. Not copied into an `IVec` after assembly: for a
/// 64 MiB value that copy was 64 MiB more of peak memory per GET.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    Stored(sled::IVec),
    Assembled(Vec<u8>),
}

impl std::ops::Deref for Value {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Value::Stored(v) => v,
            Value::Assembled(v) => v,
        }
    }
}

impl AsRef<[u8]> for Value {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Value({} bytes)", self.len())
    }
}

impl PartialEq<[u8]> for Value {
    fn eq(&self, other: &[u8]) -> bool {
        **self == *other
    }
}

impl PartialEq<&[u8]> for Value {
    fn eq(&self, other: &&[u8]) -> bool {
        **self == **other
    }
}

impl PartialEq<Vec<u8>> for Value {
    fn eq(&self, other: &Vec<u8>) -> bool {
        **self == other[..]
    }
}

impl From<Value> for Vec<u8> {
    fn from(v: Value) -> Vec<u8> {
        match v {
            Value::Stored(v) => v.to_vec(),
            Value::Assembled(v) => v,
        }
    }
}

/// What one read of a key found.
enum Found {
    Absent,
    Value(Value),
    /// Pieces that do not fit together (of two writes, or damaged).
    Torn,
}

/// How a value is read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadFor {
    /// For a request: plain `get`s.
    Request,
    /// In a scan: with [`Storage::touch`], so that sled's cache evicts as the scan goes.
    Scan,
    /// In a scan that met the key's pieces (so it holds no whole value): each piece read
    /// [`PIECE_TOUCHES`] times, which for a 10 KiB value in two pieces is as many reads as
    /// [`TOUCHES`] for it whole.
    ScanPieces,
}

impl Storage {
    /// The value a copy-on-write record keeps: `0`, absent at the cut; `1` and the value; `2`
    /// and the length (u64) of a value kept in pieces in `cow_pieces`.
    fn old_version(&self, key: &HashKey, v: sled::IVec) -> Result<Option<Value>> {
        match v.first() {
            Some(1) => Ok(Some(Value::Stored(v.subslice(1, v.len() - 1)))),
            Some(2) => {
                let len = v
                    .get(1..9)
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
                Ok(Some(Value::Assembled(value)))
            }
            _ => Ok(None),
        }
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

    #[test]
    fn a_second_open_of_the_same_dir_is_refused_with_the_dir_named() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        let err = Storage::open(dir.path(), &StorageOptions::default())
            .err()
            .expect("second open must fail");
        let msg = err.to_string();
        assert!(matches!(err, Error::DataDirLocked { .. }), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(msg.contains(&std::process::id().to_string()), "{msg}");
    }

    #[test]
    fn unfinished_snapshot_files_are_removed_before_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(Storage::open(dir.path(), &StorageOptions::default()).unwrap());
        let junk = dir
            .path()
            .join("db")
            .join("snap.00000000000000FF.generating");
        std::fs::write(&junk, b"half a snapshot").unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        assert!(!junk.exists());
        drop(s);
    }

    #[tokio::test]
    async fn concurrent_writers_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(Storage::open(dir.path(), &StorageOptions::default()).unwrap());
        let mut tasks = Vec::new();
        for i in 0..64u8 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let t = s.insert(&k(i), vec![i; 100]).unwrap();
                s.sync(t).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(s.count().unwrap(), 64);
    }

    #[test]
    fn arcs_stream_in_ring_order_and_wrap() {
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

    /// The flusher syncs blob files whenever the blob directory may have changed since its last
    /// look, and only then.
    #[test]
    fn blob_files_are_synced_when_the_blob_directory_changed() {
        let dir = tempfile::tempdir().unwrap();
        let log = File::create(dir.path().join("log")).unwrap();
        let blobs = dir.path().join("blobs");
        let mut b = BlobSync::new(blobs.clone());
        assert!(
            !b.sync(&log).unwrap(),
            "no blob directory yet: nothing to do"
        );
        std::fs::create_dir(&blobs).unwrap();
        assert!(b.sync(&log).unwrap(), "a new blob directory");
        assert!(
            b.sync(&log).unwrap(),
            "changed within the last second: look again"
        );
        let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let set_old = || {
            File::open(&blobs)
                .unwrap()
                .set_modified(an_hour_ago)
                .unwrap()
        };
        set_old();
        assert!(b.sync(&log).unwrap(), "the modification time moved");
        assert!(
            !b.sync(&log).unwrap(),
            "unchanged for an hour: nothing to do"
        );
        std::fs::write(blobs.join("123"), b"blob").unwrap();
        assert!(b.sync(&log).unwrap(), "a new blob file");
        set_old();
        assert!(b.sync(&log).unwrap());
        assert!(!b.sync(&log).unwrap());
        std::fs::remove_file(blobs.join("123")).unwrap();
        assert!(b.sync(&log).unwrap(), "a removed blob file");
    }

    /// The flusher works on demand: writes nobody waits for stay unflushed (sled still writes
    /// its buffers as they fill), and one `sync` flushes everything written before it.
    #[tokio::test]
    async fn the_flusher_flushes_when_someone_waits() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        let mut last = None;
        for n in 0..100u8 {
            last = Some(s.insert(&k(n), vec![n]).unwrap());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(
            s.commit.durable.borrow().seq,
            0,
            "no flush without a waiter"
        );
        s.sync(last.unwrap()).await.unwrap();
        assert_eq!(
            s.commit.durable.borrow().seq,
            100,
            "one flush covers all 100"
        );
    }

    /// `request_sync` starts the flush without waiting for it.
    #[tokio::test]
    async fn request_sync_flushes_without_a_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        let t = s.insert(&k(1), vec![1]).unwrap();
        s.request_sync(t);
        let mut rx = s.commit.durable.subscribe();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            rx.wait_for(|d| d.seq >= 1),
        )
        .await
        .expect("flushed without anyone waiting in sync")
        .unwrap();
    }

    /// A value that says which write made it, so a wrong version cannot pass for the right one.
    /// A value telling its key and version. One in three is longer than `INLINE_MAX`
    /// (stored in three pieces), one in three exactly `INLINE_MAX` (whole), so that writes
    /// turn whole values into pieces and back.
    fn val(key: u8, version: u32) -> Vec<u8> {
        let mut v = vec![key];
        v.extend_from_slice(&version.to_be_bytes());
        let len = match (u32::from(key) + version) % 3 {
            0 => 5,
            1 => INLINE_MAX,
            _ => 2 * PIECE_BYTES + 100,
        };
        let fill = key ^ version as u8;
        v.resize(len, fill);
        if len > 5 {
            v[len - 4..].copy_from_slice(&version.to_be_bytes());
        }
        v
    }

    fn snapshot(s: &Storage) -> Vec<(HashKey, Vec<u8>)> {
        s.iter_arc(&HashKey::ZERO, &HashKey::ZERO)
            .map(|r| r.map(|(k, v)| (k, v.to_vec())).unwrap())
            .collect()
    }

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
                    Some(r) => got.push(r.map(|(k, v)| (k, v.to_vec())).unwrap()),
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
    fn a_cut_is_a_snapshot_while_another_thread_writes() {
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
                    .map(|r| r.map(|(k, v)| (k, v.to_vec())).unwrap())
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

    /// `len` bytes, none of them zero, that tell key and version apart.
    fn big(key: u8, version: u32, len: usize) -> Vec<u8> {
        let mut v = val(key, version);
        v.resize(len, key | 1);
        v
    }

    /// Keys first or in place, small values or large, batches under or over `KEYS_FIRST_MIN`,
    /// over existing keys or not: the same entries come out.
    #[test]
    fn a_keys_first_batch_writes_what_an_in_place_batch_writes() {
        for how in [BatchWrite::InPlace, BatchWrite::KeysFirst] {
            for len in [100, 2048, 3 * PIECE_BYTES + 1] {
                for count in [8u8, 200] {
                    let dir = tempfile::tempdir().unwrap();
                    let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
                    for n in (0..count).step_by(3) {
                        let _ = s.insert(&k(n), val(n, 0)).unwrap();
                    }
                    let mut batch: Vec<_> = (0..count).map(|n| (k(n), big(n, 1, len))).collect();
                    let _ = s.insert_batch(&mut batch, how).unwrap();
                    assert!(batch.is_empty());
                    let want: Vec<_> = (0..count).map(|n| (k(n), big(n, 1, len))).collect();
                    assert_eq!(snapshot(&s), want, "{how:?}, {count} × {len} B");
                }
            }
        }
    }

    /// A cut that began between the two passes of a keys-first batch would stream the empty
    /// values of its first pass. The writer's keys are the lowest, where a cut starts.
    #[test]
    fn a_cut_never_begins_between_the_passes_of_a_keys_first_batch() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        const KEYS: u8 = 64;
        let batch =
            |version| -> Vec<_> { (0..KEYS).map(|n| (k(n), big(n, version, 2048))).collect() };
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
                    .map(|r| r.map(|(k, v)| (k, v.to_vec())).unwrap())
                    .collect();
                s.end_cut().unwrap();
                assert_eq!(got.len(), KEYS as usize, "round {round}");
                let empty = got.iter().filter(|(_, v)| v.is_empty()).count();
                assert_eq!(empty, 0, "round {round}: {empty} empty values in the cut");
            }
        });
    }

    /// Every key of the data tree, raw: whole values and pieces.
    fn raw_keys(s: &Storage) -> Vec<Vec<u8>> {
        s.kv.iter(Tree::Data)
            .keys()
            .map(|k| k.unwrap().to_vec())
            .collect()
    }

    /// Values of every length around the piece boundaries come back as written, through every
    /// way of reading; replacing a value by a shorter, a longer, a whole or a pieced one
    /// leaves no piece behind; and they survive a reopen.
    #[test]
    fn values_in_pieces_read_back_whole_and_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let lens = [
            0,
            1,
            INLINE_MAX,
            INLINE_MAX + 1,
            2 * PIECE_BYTES,
            2 * PIECE_BYTES + 1,
            (1 << 20) + 7,
        ];
        let value = |n: usize, len: usize| -> Vec<u8> {
            (0..len)
                .map(|i| (i * 7 + n * 13 + i / 4099) as u8)
                .collect()
        };
        {
            let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
            for round in 0..3 {
                for (n, _) in lens.iter().enumerate() {
                    // Each key goes through several lengths: round r writes lens[n + r].
                    let len = lens[(n + round) % lens.len()];
                    let _ = s.insert(&k(n as u8), value(n + round, len)).unwrap();
                }
                for (n, _) in lens.iter().enumerate() {
                    let want = value(n + round, lens[(n + round) % lens.len()]);
                    assert_eq!(
                        s.get(&k(n as u8)).unwrap().unwrap(),
                        want[..],
                        "round {round}"
                    );
                    assert!(s.contains(&k(n as u8)).unwrap());
                }
                let scanned = snapshot(&s);
                assert_eq!(scanned.len(), lens.len());
                assert_eq!(s.count().unwrap(), lens.len() as u64);
                // Raw keys: one per whole value, one per piece, nothing else.
                let pieces: usize = (0..lens.len())
                    .map(|n| {
                        let len = lens[(n + round) % lens.len()];
                        if len > INLINE_MAX {
                            len.div_ceil(PIECE_BYTES)
                        } else {
                            1
                        }
                    })
                    .sum();
                assert_eq!(raw_keys(&s).len(), pieces, "round {round}");
            }
            let _ = s.insert(&k(200), value(200, 3 * PIECE_BYTES)).unwrap();
            s.flush().unwrap();
        }
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        // The mark that pieces may be there survives too (without it, nobody looks for them).
        assert!(s.pieces_seen());
        assert_eq!(
            s.get(&k(200)).unwrap().unwrap(),
            value(200, 3 * PIECE_BYTES)[..]
        );
        // Removal, each way: REM, a conditional removal, an arc deletion.
        assert!(s.remove(&k(200)).unwrap().0);
        assert!(!s.contains(&k(200)).unwrap());
        let six = value(6 + 2, lens[(6 + 2) % lens.len()]);
        assert!(!s.remove_if_unchanged(&k(6), b"something else").unwrap().0);
        assert!(s.remove_if_unchanged(&k(6), &six).unwrap().0);
        assert_eq!(s.get(&k(6)).unwrap(), None);
        let (deleted, _) = s.delete_arc(&HashKey::ZERO, &HashKey::ZERO).unwrap();
        assert_eq!(deleted, lens.len() as u64 - 1);
        assert!(raw_keys(&s).is_empty());
    }

    /// A directory that never held a large value does not look for pieces, and says so.
    #[test]
    fn small_values_leave_no_mark_of_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        let _ = s.insert(&k(1), vec![1; INLINE_MAX]).unwrap();
        let mut batch = vec![(k(2), vec![2; 100])];
        let _ = s.insert_batch(&mut batch, BatchWrite::InPlace).unwrap();
        assert!(!s.pieces_seen());
        let _ = s.insert(&k(3), vec![3; INLINE_MAX + 1]).unwrap();
        assert!(s.pieces_seen());
    }

    /// Pieces keep sled's pages small: no page of a large value goes to a blob file, which
    /// sled's cache would count at the size of a pointer and never evict.
    #[test]
    fn large_values_make_no_blob_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        for n in 0..40u8 {
            let _ = s.insert(&k(n), vec![n; 1 << 20]).unwrap();
        }
        let mut batch: Vec<_> = (40..140u8).map(|n| (k(n), vec![n; 20 << 10])).collect();
        let _ = s.insert_batch(&mut batch, BatchWrite::KeysFirst).unwrap();
        s.flush().unwrap();
        let blobs = std::fs::read_dir(dir.path().join("db").join("blobs"))
            .unwrap()
            .count();
        assert_eq!(blobs, 0, "sled wrote {blobs} blob files");
        assert_eq!(s.get(&k(39)).unwrap().unwrap(), vec![39; 1 << 20][..]);
    }

    /// A reader racing a writer that replaces a value's pieces (sled applies a batch at once
    /// for a crash and for writers, not for readers) gets one of the values written, whole.
    #[test]
    fn a_reader_never_gets_the_pieces_of_two_writes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        let value = |version: u32| -> Vec<u8> {
            // Its length follows from its byte, so that a read can be checked on its own.
            // 150 and 300 pieces: written in several batches (`write_staged`).
            let len = [3, 150, 9, 300, 5][usize::from(version as u8) % 5] * PIECE_BYTES + 11;
            vec![version as u8; len]
        };
        let _ = s.insert(&k(1), value(0)).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut version = 1;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = s.insert(&k(1), value(version)).unwrap();
                    version += 1;
                }
            });
            let mut checked = 0;
            for _ in 0..3000 {
                let got = s.get(&k(1)).unwrap().unwrap();
                let whole =
                    got.iter().all(|b| *b == got[0]) && got.len() == value(u32::from(got[0])).len();
                if !whole {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    panic!("read {} bytes mixing two writes", got.len());
                }
                checked += 1;
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            assert_eq!(checked, 3000);
        });
    }

    /// The slot piece 0 of `key` names (0 or 1), `None` without a piece 0.
    fn live_slot(s: &Storage, key: &HashKey) -> Option<u32> {
        let p0 = s.kv.get(Tree::Data, RawKey::piece(key, 0)).unwrap()?;
        Some(PieceHeader::parse(&p0).unwrap().slot >> 31)
    }

    /// Values over [`ONE_BATCH_MAX`] are written in several batches, in the slot piece 0 does
    /// not name: every change between a whole value, one batch of pieces and several leaves
    /// the new value readable and no other entry under the key, and the slot alternates.
    #[test]
    fn staged_values_alternate_slots_and_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        let _ = s.insert(&k(2), vec![2; 100]).unwrap();
        let _ = s.insert(&k(0), vec![0; 3 * PIECE_BYTES]).unwrap();
        let value = |n: usize, len: usize| -> Vec<u8> {
            (0..len)
                .map(|i| (i / 5 + n * 31 + i / 6151) as u8)
                .collect()
        };
        let lens = [
            1,
            ONE_BATCH_MAX + 1, // whole → several batches
            (3 << 20) + 5,     // → several batches, more pieces
            (1 << 20) + 7,     // → several batches, fewer pieces
            INLINE_MAX + 1,    // → one batch
            2 << 20,           // one batch → several
            10,                // several → whole
            (2 << 20) + 3,     // whole → several
            ONE_BATCH_MAX,     // several → one batch, its largest
        ];
        let mut slot = None;
        for (n, &len) in lens.iter().enumerate() {
            let v = value(n, len);
            let _ = s.insert(&k(1), v.clone()).unwrap();
            assert_eq!(s.get(&k(1)).unwrap().unwrap(), v[..], "length {len}");
            let mine: Vec<Vec<u8>> = raw_keys(&s)
                .into_iter()
                .filter(|r| r[..20] == k(1).0)
                .collect();
            let want = if len > INLINE_MAX {
                len.div_ceil(PIECE_BYTES)
            } else {
                1
            };
            assert_eq!(mine.len(), want, "length {len}: raw keys left");
            if len > ONE_BATCH_MAX {
                let now = live_slot(&s, &k(1));
                if let (Some(before), Some(now)) = (slot, now) {
                    assert_ne!(before, now, "length {len}: the same slot again");
                }
                slot = now;
            } else {
                slot = live_slot(&s, &k(1));
                assert!(slot.is_none_or(|s| s == 0), "one batch writes slot 0");
            }
        }
        // The neighbours never changed.
        assert_eq!(s.get(&k(2)).unwrap().unwrap(), vec![2; 100][..]);
        assert_eq!(s.get(&k(0)).unwrap().unwrap(), vec![0; 3 * PIECE_BYTES][..]);
        let _ = s.insert(&k(1), value(99, 4 << 20)).unwrap();
        assert_eq!(s.count().unwrap(), 3);
        assert!(s.remove(&k(1)).unwrap().0);
        assert_eq!(s.get(&k(1)).unwrap(), None);
        assert!(raw_keys(&s).iter().all(|r| r[..20] != k(1).0));
    }

    /// What a staged write cut short leaves: pieces in the slot piece 0 does not name (before
    /// the commit: the new value's; after it: the old one's). The old value, or the new one,
    /// reads back whole, and the next write of the key removes the rest.
    #[test]
    fn an_interrupted_staged_write_leaves_one_value_and_is_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        let old = vec![1u8; 2 << 20];
        let _ = s.insert(&k(1), old.clone()).unwrap();
        let live = live_slot(&s, &k(1)).unwrap();
        let other = (1 - live) << 31;
        // Before the commit: some pieces of another write in the other slot, under another id.
        for i in 1..200u32 {
            let _ =
                s.kv.insert(
                    Tree::Data,
                    RawKey::piece(&k(1), other | i),
                    piece(7, &[9; PIECE_BYTES]),
                )
                .unwrap();
        }
        assert_eq!(s.get(&k(1)).unwrap().unwrap(), old[..]);
        assert_eq!(s.count().unwrap(), 1);
        assert_eq!(snapshot(&s), vec![(k(1), old.clone())]);
        s.begin_cut().unwrap();
        let cut: Vec<_> = s.cut_entries().unwrap().map(|r| r.unwrap()).collect();
        s.end_cut().unwrap();
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0].1, old[..]);
        // The next write (several batches, into that slot) takes the strays out first.
        let new = vec![2u8; (1 << 20) + 1];
        let _ = s.insert(&k(1), new.clone()).unwrap();
        assert_eq!(s.get(&k(1)).unwrap().unwrap(), new[..]);
        assert_eq!(raw_keys(&s).len(), new.len().div_ceil(PIECE_BYTES));
        // After a commit: the old value's pieces still in the other slot.
        let live = live_slot(&s, &k(1)).unwrap();
        let other = (1 - live) << 31;
        for i in 1..400u32 {
            let _ =
                s.kv.insert(
                    Tree::Data,
                    RawKey::piece(&k(1), other | i),
                    piece(8, &[9; PIECE_BYTES]),
                )
                .unwrap();
        }
        assert_eq!(s.get(&k(1)).unwrap().unwrap(), new[..]);
        assert_eq!(s.count().unwrap(), 1);
        // A write in one batch (slot 0) and a whole value each leave nothing else.
        let _ = s.insert(&k(1), vec![3u8; 5 * PIECE_BYTES]).unwrap();
        assert_eq!(
            s.get(&k(1)).unwrap().unwrap(),
            vec![3u8; 5 * PIECE_BYTES][..]
        );
        assert_eq!(raw_keys(&s).len(), 5);
        for i in 1..400u32 {
            let _ =
                s.kv.insert(
                    Tree::Data,
                    RawKey::piece(&k(1), SLOT_BIT | i),
                    piece(8, &[9; 8]),
                )
                .unwrap();
        }
        let _ = s.insert(&k(1), vec![4u8; 10]).unwrap();
        assert_eq!(s.get(&k(1)).unwrap().unwrap(), vec![4u8; 10][..]);
        assert_eq!(raw_keys(&s), vec![k(1).0.to_vec()]);
        // Leftovers without a piece 0 (a staged write cut off over a whole value, or over
        // nothing): a whole value written over them, and a removal, take them out too.
        let strays = |s: &Storage| {
            for i in 1..50u32 {
                let _ =
                    s.kv.insert(
                        Tree::Data,
                        RawKey::piece(&k(1), SLOT_BIT | i),
                        piece(9, &[9; 8]),
                    )
                    .unwrap();
            }
        };
        strays(&s);
        assert_eq!(s.get(&k(1)).unwrap().unwrap(), vec![4u8; 10][..]);
        let _ = s.insert(&k(1), vec![5u8; 10]).unwrap();
        assert_eq!(raw_keys(&s), vec![k(1).0.to_vec()]);
        strays(&s);
        assert!(s.remove(&k(1)).unwrap().0);
        assert!(
            raw_keys(&s).is_empty(),
            "{} raw keys left",
            raw_keys(&s).len()
        );
        strays(&s);
        assert_eq!(s.get(&k(1)).unwrap(), None);
        assert!(!s.contains(&k(1)).unwrap());
        assert!(!s.remove(&k(1)).unwrap().0, "leftovers alone are no value");
        assert!(
            raw_keys(&s).is_empty(),
            "{} raw keys left",
            raw_keys(&s).len()
        );
    }

    /// The cut keeps the old version of a large value in pieces (no blob file), streams it
    /// whole, and drops it when it ends.
    #[test]
    fn a_cut_keeps_large_old_versions_in_pieces() {
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
            .map(|r| r.map(|(k, v)| (k, v.to_vec())).unwrap())
            .collect();
        s.end_cut().unwrap();
        assert_eq!(
            cut,
            vec![(k(1), old), (k(2), vec![2; 9000]), (k(3), vec![3; 10])]
        );
        assert!(s.kv.is_empty(Tree::CowPieces) && s.kv.is_empty(Tree::Cow));
        s.flush().unwrap();
        let blobs = std::fs::read_dir(dir.path().join("db").join("blobs"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(blobs, 0, "blob files written");
    }

    /// A directory of a newer layout is refused, naming it; one of this layout opens.
    #[test]
    fn a_directory_of_a_newer_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
            assert_eq!(
                s.kv.get(Tree::Ring, FORMAT_KEY).unwrap().unwrap(),
                FORMAT.to_be_bytes()[..]
            );
            let _ = s.insert(&k(1), vec![1; 10]).unwrap();
            s.kv.insert(Tree::Ring, FORMAT_KEY, &(FORMAT + 1).to_be_bytes()[..])
                .unwrap();
            s.flush().unwrap();
        }
        let err = Storage::open(dir.path(), &StorageOptions::default())
            .err()
            .expect("a newer layout must be refused");
        let text = err.to_string();
        assert!(
            text.contains("newer dht-store") && text.contains(&dir.path().display().to_string()),
            "{text}"
        );
        {
            // What an older build would see: no version at all; it is recorded on open.
            let db = sled::open(dir.path().join("db")).unwrap();
            db.open_tree("ring").unwrap().remove(FORMAT_KEY).unwrap();
            db.flush().unwrap();
        }
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        assert_eq!(s.get(&k(1)).unwrap().unwrap(), vec![1; 10]);
        assert_eq!(
            s.kv.get(Tree::Ring, FORMAT_KEY).unwrap().unwrap(),
            FORMAT.to_be_bytes()[..]
        );
    }

    /// `get_within` answers for whole values, absent keys and short values in pieces, and
    /// leaves longer ones to the caller; `longer_than` reads only piece 0.
    #[test]
    fn get_within_leaves_long_values_to_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        let _ = s.insert(&k(1), vec![1; 100]).unwrap();
        let _ = s.insert(&k(2), vec![2; 100 << 10]).unwrap();
        let _ = s.insert(&k(3), vec![3; 1 << 20]).unwrap();
        let max = 256 << 10;
        assert_eq!(
            s.get_within(&k(1), max).unwrap(),
            Some(Some(Value::Stored(vec![1; 100].into())))
        );
        assert_eq!(
            s.get_within(&k(2), max).unwrap().unwrap().unwrap(),
            vec![2; 100 << 10]
        );
        assert_eq!(s.get_within(&k(3), max).unwrap(), None);
        assert_eq!(s.get_within(&k(4), max).unwrap(), Some(None));
        assert!(s.longer_than(&k(3), max).unwrap());
        assert!(!s.longer_than(&k(3), 1 << 20).unwrap());
        assert!(!s.longer_than(&k(2), max).unwrap());
        assert!(!s.longer_than(&k(1), 0).unwrap());
    }

    /// What an arc deletion cut short by a crash leaves (the pieces after piece 0) is invisible
    /// to every reader and counter, does not spoil a later write of the key, and goes with the
    /// next deletion of the arc.
    #[test]
    fn pieces_left_by_an_interrupted_deletion_are_invisible_and_go_with_the_next() {
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
        // The removal took every piece it found, the stray ones too.
        assert!(
            raw_keys(&s).iter().all(|r| r[..20] != k(1).0),
            "{:?}",
            raw_keys(&s)
        );
        let _ = s.insert(&k(1), vec![1; 4 * PIECE_BYTES]).unwrap();
        s.kv.remove(Tree::Data, RawKey::piece(&k(1), 0)).unwrap();
        let (deleted, _) = s.delete_arc(&HashKey::ZERO, &HashKey::ZERO).unwrap();
        assert_eq!(deleted, 1, "k(2) only");
        assert!(raw_keys(&s).is_empty(), "left: {:?}", raw_keys(&s));
    }

    /// A reader racing a writer that turns a value from pieces into a whole value and back
    /// never finds the key absent (between its look for the whole value and its look for
    /// piece 0, the writer may have switched).
    #[test]
    fn a_key_switching_between_whole_and_pieces_never_reads_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        let value = |i: u32| -> Vec<u8> {
            let len = if i.is_multiple_of(2) {
                100
            } else {
                3 * PIECE_BYTES
            };
            vec![i as u8; len]
        };
        let _ = s.insert(&k(1), value(1)).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut i = 2;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = s.insert(&k(1), value(i)).unwrap();
                    i += 1;
                }
            });
            let (mut absent, mut missing) = (0, 0);
            for _ in 0..20_000 {
                if s.get(&k(1)).unwrap().is_none() {
                    absent += 1;
                }
                if !s.contains(&k(1)).unwrap() {
                    missing += 1;
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            assert_eq!(
                (absent, missing),
                (0, 0),
                "(GET absent, EXI absent) of 20 000 each"
            );
        });
    }

    /// A batch that names a key twice (a peer may send anything) still leaves the key with a
    /// whole value or pieces, not both: the later entry wins.
    #[test]
    fn a_batch_naming_a_key_twice_leaves_one_value() {
        for how in [BatchWrite::InPlace, BatchWrite::KeysFirst] {
            let dir = tempfile::tempdir().unwrap();
            let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
            let mut batch: Vec<_> = (0..40u8)
                .map(|n| (k(n), vec![n; 2 * PIECE_BYTES]))
                .collect();
            batch.push((k(5), vec![9; 10]));
            let _ = s.insert_batch(&mut batch, how).unwrap();
            assert_eq!(s.get(&k(5)).unwrap().unwrap(), vec![9; 10][..], "{how:?}");
            assert_eq!(s.count().unwrap(), 40);
            let raw = raw_keys(&s);
            assert_eq!(raw.len(), 39 * 2 + 1, "{how:?}: stray pieces of k(5)");
        }
    }

    /// Runs of a batch: in key order, wrapping once (ring order), or irregular.
    #[test]
    fn a_batch_in_ring_order_is_one_run_or_two() {
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
    fn a_batch_that_wraps_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        let _ = s.insert(&k(100), vec![1; 2 * PIECE_BYTES]).unwrap();
        let mut batch: Vec<_> = (200..=255u8)
            .chain(0..40)
            .map(|n| (k(n), vec![n; 2 * PIECE_BYTES]))
            .collect();
        let _ = s.insert_batch(&mut batch, BatchWrite::KeysFirst).unwrap();
        assert_eq!(s.count().unwrap(), 56 + 40 + 1);
        assert_eq!(s.get(&k(3)).unwrap().unwrap(), vec![3; 2 * PIECE_BYTES][..]);
        assert_eq!(
            s.get(&k(100)).unwrap().unwrap(),
            vec![1; 2 * PIECE_BYTES][..]
        );
    }
}
