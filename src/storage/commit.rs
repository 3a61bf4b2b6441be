//! Group commit: writers count their changes and get a [`Ticket`]; one flusher thread flushes
//! them in groups (sled's flush, an `fdatasync` of its log, a `syncfs` when blob files may
//! have appeared), and [`Storage::sync`] waits for the flush that covers a ticket. The
//! durability contract is in the module doc of `storage`.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::watch;
use tracing::{debug, error};

use super::kv::FlushHandle;
use super::Storage;
use crate::error::{Error, Result};

/// Names of what the storage reports through the `metrics` facade. Recording is a no-op
/// unless the process installed a recorder (`crate::metrics` installs one and describes these):
/// storage/ knows the facade only, never an exporter.
pub mod metric {
    /// Histogram: changes made durable by one group-commit flush.
    pub const FLUSH_CHANGES: &str = "dht_store_group_commit_changes";
    /// Histogram: seconds one group-commit flush took (sled's flush, fdatasync, syncfs).
    pub const FLUSH_SECONDS: &str = "dht_store_group_commit_flush_seconds";
    /// Gauge: 1 once a write failed and the storage stopped taking writes (`kv`), else 0.
    pub const WRITE_FAILED: &str = "dht_store_write_failed";
}

/// Proof that a change was applied; [`Storage::sync`] waits until it is durable.
#[must_use = "a change is durable only after Storage::sync"]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// What the flusher has made durable so far.
#[derive(Clone, Debug, Default)]
pub(super) struct Durable {
    /// Every change with a ticket up to this one is flushed.
    pub(super) seq: u64,
    /// Changes with tickets above `seq` and up to this one were in a flush that failed.
    pub(super) failed: u64,
    /// Why that flush failed.
    pub(super) error: Option<Arc<str>>,
}

/// The writers' side of the group commit.
pub(super) struct Pending {
    /// Ticket of the latest change applied to sled.
    pub(super) written: u64,
    /// The highest ticket someone waits for in [`Storage::sync`]. The flusher flushes only
    /// when this is ahead of what it flushed: a bulk import that syncs once per window is not
    /// flushed (fdatasync, syncfs) after every batch by a flusher that has nothing to release.
    pub(super) wanted: u64,
    /// Set when the storage closes: the flusher makes a last flush and ends.
    pub(super) stop: bool,
    /// The flusher is waiting for work: only then does a waiter need to wake it (a notify is
    /// a syscall; skipping it when the flusher is busy anyway saves one per write).
    pub(super) idle: bool,
}

/// Group commit: writers count their changes here; one flusher thread flushes them in groups.
pub(super) struct GroupCommit {
    /// Changes applied and not yet known durable.
    pub(super) pending: Mutex<Pending>,
    /// Wakes the flusher when `pending.wanted` moves.
    pub(super) wake: Condvar,
    /// Published after each flush; writers wait on it.
    pub(super) durable: watch::Sender<Durable>,
    /// Set by the first failed write (see `kv`): from then on nothing is flushed
    /// and every write and sync fails with this message.
    pub(super) failed: std::sync::OnceLock<Arc<str>>,
}

impl GroupCommit {
    pub(super) fn new() -> GroupCommit {
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
    pub(super) fn failed(&self) -> Option<&Arc<str>> {
        self.failed.get()
    }

    /// The first failed write (see `kv`): no more flushes, every waiting and later sync fails
    /// with `why`. Returns whether this was the first.
    pub(super) fn fail(&self, why: Arc<str>) -> bool {
        if self.failed.set(why.clone()).is_err() {
            return false;
        }
        self.durable.send_modify(|d| {
            d.failed = u64::MAX;
            d.error = Some(why);
        });
        self.wake.notify_one();
        metrics::gauge!(metric::WRITE_FAILED).set(1.0);
        true
    }

    /// Changes applied so far (every write, of any tree, takes a ticket).
    pub(super) fn written(&self) -> u64 {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .written
    }

    pub(super) fn note_write(&self) -> Ticket {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.written += 1;
        Ticket(p.written)
    }

    /// Asks the flusher for a flush covering `ticket`.
    pub(super) fn want(&self, ticket: u64) {
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
    pub(super) fn run(self: Arc<Self>, db: FlushHandle, log: File, mut blobs: BlobSync) {
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
            let started = std::time::Instant::now();
            match db
                .flush()
                .map_err(Error::from)
                .and_then(|_| Ok(log.sync_data()?))
                .and_then(|_| Ok(blobs.sync(&log).map(drop)?))
            {
                Ok(()) => {
                    self.durable.send_modify(|d| d.seq = target);
                    metrics::histogram!(metric::FLUSH_CHANGES).record((target - done) as f64);
                    metrics::histogram!(metric::FLUSH_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                }
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
pub(super) struct BlobSync {
    /// `DIR/db/blobs`.
    pub(super) dir: PathBuf,
    /// The directory's modification time at the last look.
    pub(super) seen: Option<std::time::SystemTime>,
    /// The last look was within a second of that modification time: a file created just after
    /// it may not have moved the (coarse) timestamp, so look again next time.
    pub(super) recent: bool,
}

impl BlobSync {
    pub(super) fn new(dir: PathBuf) -> BlobSync {
        BlobSync {
            dir,
            seen: None,
            recent: true,
        }
    }

    /// Syncs the filesystem holding `log` if blob files may have appeared since the last call;
    /// says whether it did.
    pub(super) fn sync(&mut self, log: &File) -> std::io::Result<bool> {
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
pub(super) fn syncfs(f: &File) -> std::io::Result<()> {
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

impl Storage {
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

    /// Changes applied since the storage was opened (writes of entries and of the node's
    /// records alike): a reader of [`Storage::totals`] rescans only when this moved.
    pub fn changes(&self) -> u64 {
        self.commit.written()
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
        let log = File::open(super::dir::log_file(&self.dir))?;
        log.sync_data()?;
        syncfs(&log)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_key as k;
    use crate::storage::StorageOptions;

    #[tokio::test]
    pub(super) async fn concurrent_writers_share_flushes() {
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

    /// The flusher syncs blob files whenever the blob directory may have changed since its last
    /// look, and only then.
    #[test]
    pub(super) fn blob_files_are_synced_when_the_blob_directory_changed() {
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
    pub(super) async fn the_flusher_flushes_when_someone_waits() {
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
    pub(super) async fn request_sync_flushes_without_a_waiter() {
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
}
