//! Helpers of the storage layers' unit tests.

use super::kv::Tree;
use super::pieces::{PieceHeader, RawKey, INLINE_MAX, PIECE_BYTES};
use super::version::{Version, Versioned};
use super::Storage;
use crate::protocol::HashKey;

/// A value that says which write made it, so a wrong version cannot pass for the right one.
/// A value telling its key and version. One in three is longer than `INLINE_MAX`
/// (stored in three pieces), one in three exactly `INLINE_MAX` (whole), so that writes
/// turn whole values into pieces and back.
pub(super) fn val(key: u8, version: u32) -> Vec<u8> {
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

pub(super) fn snapshot(s: &Storage) -> Vec<(HashKey, Vec<u8>)> {
    s.iter_arc(&HashKey::ZERO, &HashKey::ZERO)
        .map(|r| r.map(|(k, v)| (k, v.to_vec())).unwrap())
        .collect()
}

/// `len` bytes, none of them zero, that tell key and version apart.
pub(super) fn big(key: u8, version: u32, len: usize) -> Vec<u8> {
    let mut v = val(key, version);
    v.resize(len, key | 1);
    v
}

/// Every key of the data tree, raw: whole values and pieces.
pub(super) fn raw_keys(s: &Storage) -> Vec<Vec<u8>> {
    s.kv.iter(Tree::Data)
        .keys()
        .map(|k| k.unwrap().to_vec())
        .collect()
}

/// The slot piece 0 of `key` names (0 or 1), `None` without a piece 0.
pub(super) fn live_slot(s: &Storage, key: &HashKey) -> Option<u32> {
    let p0 = s.kv.get(Tree::Data, RawKey::piece(key, 0)).unwrap()?;
    Some(PieceHeader::parse(&p0).unwrap().slot >> 31)
}

/// Entries as an archive of before versions gives them: unversioned.
pub(super) fn unversioned(entries: Vec<(HashKey, Vec<u8>)>) -> Vec<(HashKey, Versioned<Vec<u8>>)> {
    entries
        .into_iter()
        .map(|(k, v)| (k, Versioned::value(Version::ZERO, v)))
        .collect()
}

/// Entries stamped with new versions of `s`'s clock: newer than anything it holds.
pub(super) fn stamped(
    s: &Storage,
    entries: Vec<(HashKey, Vec<u8>)>,
) -> Vec<(HashKey, Versioned<Vec<u8>>)> {
    entries
        .into_iter()
        .map(|(k, v)| (k, Versioned::value(s.next_version().unwrap(), v)))
        .collect()
}

/// Runs `open` until sled has let go of the directory it opens. A test that opens a
/// directory through sled directly (an old layout) or whose open failed drops a database in
/// this process, and sled's background jobs may hold the lock on its log a moment longer (a
/// node opens a directory in a process of its own, so only tests meet this); a lock held over
/// 2 s is a leak, and fails.
pub(super) fn when_released<T, E: std::fmt::Display>(
    mut open: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    for _ in 0..100 {
        match open() {
            Err(e) if e.to_string().contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
    panic!("sled still holds a directory's lock after 2 s")
}

/// `Storage::open` of `dir`, once sled has let go of it ([`when_released`]).
pub(super) fn open_released(dir: &std::path::Path) -> Storage {
    when_released(|| Storage::open(dir, &super::StorageOptions::default()))
        .unwrap_or_else(|e| panic!("{} does not open: {e}", dir.display()))
}
