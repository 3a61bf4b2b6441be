//! The data directory as files: its exclusive lock (`DIR/LOCK`), the sled database
//! (`DIR/db`) and the clean-up sled needs before it opens one (sled#1527), and the layout
//! version a build checks. Only this file names the directory's files.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use tracing::warn;

use super::kv::{Kv, Tree};
use crate::error::{Error, Result};

/// The lock file, holding the running node's pid.
pub(super) const LOCK_FILE: &str = "LOCK";
/// The sled database's directory.
pub(super) const DB_DIR: &str = "db";

/// The sled database of the data directory `dir`.
pub(super) fn db_dir(dir: &Path) -> PathBuf {
    dir.join(DB_DIR)
}

/// sled's log file, which the group commit fdatasyncs.
pub(super) fn log_file(dir: &Path) -> PathBuf {
    db_dir(dir).join("db")
}

/// Where sled keeps pages over 128 KiB, in files of their own (see `commit::BlobSync`).
pub(super) fn blob_dir(dir: &Path) -> PathBuf {
    db_dir(dir).join("blobs")
}

/// Whether `dir` holds a database (a data directory, not just any directory).
pub fn holds_database(dir: &Path) -> bool {
    db_dir(dir).exists()
}

/// Creates the data directory `dir` if it is missing; an error names it and what is wrong.
pub(super) fn create(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::Usage(format!(
            "data directory {} is a file, not a directory: give a directory (it is created if \
             missing)",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|source| Error::IoAt {
        what: format!("cannot create data directory {}", dir.display()),
        source,
    })
}

/// A sled database that would not open, named.
pub(super) fn opening_failed(db_dir: &Path, e: sled::Error) -> Error {
    match e {
        sled::Error::Io(source) => Error::IoAt {
            what: format!("cannot open the database in {}", db_dir.display()),
            source,
        },
        other => Error::Damaged(format!(
            "the database in {} cannot be opened: {other}",
            db_dir.display()
        )),
    }
}

/// Removes the lock file of a directory no process runs on (a restore's fresh copy must not
/// carry the pid of the process that made it).
pub fn forget_lock(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(LOCK_FILE));
}

/// Key, in the "ring" tree, of the layout version of the data tree (u32, big-endian).
pub(super) const FORMAT_KEY: &[u8] = b"format";

/// The layout this build writes and the newest it reads: 1, values whole or in pieces in one
/// slot; 2, values over `ONE_BATCH_MAX` in either of two slots; 3, every entry with a version,
/// tombstones, in the tree "entries" (1 and 2 are migrated at open: `migrate`). Builds before
/// this number existed do not look at it (README.md says which must not open which
/// directories).
pub(super) const FORMAT: u32 = 3;

/// What the directory needs before it serves (see [`check_format`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Layout {
    /// It is in this build's layout.
    Current,
    /// Its entries are (still) to be migrated from an older layout.
    Migrate,
}

/// The exclusive lock on a data directory, held for the life of the node.
pub(super) struct DirLock {
    /// Kept open: the flock lives as long as this file handle.
    pub(super) _file: Option<File>,
}

impl DirLock {
    /// Checks the lock without writing our pid into it.
    pub(super) fn acquire_quietly(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
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

    pub(super) fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| Error::IoAt {
                what: format!("cannot open the lock file {}", path.display()),
                source,
            })?;
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
pub(super) fn remove_unfinished_snapshots(db_dir: &Path) -> Result<()> {
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

/// Refuses a directory whose layout is newer than this build reads; records this build's
/// layout in one that has none or an older one (and flushes it, before anything is written
/// in the new layout). A directory of an older layout gets, in the same batch, the mark of a
/// migration under way (`migrate`), so an older build refuses it from then on: it would read
/// and write the old tree and its writes would be lost.
pub(super) fn check_format(dir: &Path, kv: &Kv) -> Result<Layout> {
    let stored = match kv.get(Tree::Meta, FORMAT_KEY)? {
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
        Some(n) if n > FORMAT => Err(Error::Newer(format!(
            "{} was written by a newer dht-store (data layout {n}; this build reads up to {FORMAT}): \
             use that build or a newer one",
            dir.display()
        ))),
        Some(n) if n == FORMAT => {
            if kv.contains(Tree::Meta, MIGRATING_KEY)? {
                return Ok(Layout::Migrate);
            }
            if kv.has_legacy() {
                // A migration that ended just before it dropped the old tree.
                kv.drop_legacy()?;
            }
            Ok(Layout::Current)
        }
        _ => {
            let mut batch = sled::Batch::default();
            batch.insert(FORMAT_KEY, &FORMAT.to_be_bytes()[..]);
            let layout = if kv.has_legacy() {
                batch.insert(MIGRATING_KEY, &[][..]);
                Layout::Migrate
            } else {
                Layout::Current
            };
            kv.apply(Tree::Meta, batch)?;
            kv.flush()?;
            Ok(layout)
        }
    }
}

/// Key, in the "ring" tree, of the migration's cursor: the last key of the old tree migrated
/// (empty before the first), present while a migration is under way.
pub(super) const MIGRATING_KEY: &[u8] = b"migrating";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_key as k;
    use crate::storage::{Storage, StorageOptions};

    #[test]
    pub(super) fn a_second_open_of_the_same_dir_is_refused_with_the_dir_named() {
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
    pub(super) fn unfinished_snapshot_files_are_removed_before_open() {
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

    /// A directory of a newer layout is refused, naming it; one of this layout opens.
    #[test]
    pub(super) fn a_directory_of_a_newer_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
            assert_eq!(
                s.kv.get(Tree::Meta, FORMAT_KEY).unwrap().unwrap(),
                FORMAT.to_be_bytes()[..]
            );
            let _ = s.insert(&k(1), vec![1; 10]).unwrap();
            s.kv.insert(Tree::Meta, FORMAT_KEY, &(FORMAT + 1).to_be_bytes()[..])
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
            s.kv.get(Tree::Meta, FORMAT_KEY).unwrap().unwrap(),
            FORMAT.to_be_bytes()[..]
        );
    }
}
