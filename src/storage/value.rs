//! What one key holds, read and written: its whole entry (a value or a tombstone, with its
//! version), or the value its piece 0 describes (see `pieces`), and the [`Value`] a read hands
//! back.

use super::bulk::Span;
use super::kv::Tree;
use super::pieces::{
    piece_index, split_removal, PieceHeader, RawKey, ASSEMBLE_RESERVE_MAX, INLINE_MAX,
    ONE_BATCH_MAX, PIECE0_HEAD, PIECE_HEAD,
};
use super::version::{Version, Versioned};
use super::Storage;
use crate::error::{Error, Result};
use crate::protocol::HashKey;

/// A value read from the data tree: as sled holds it (a whole value, shared with sled's
/// cache), or assembled from its pieces. Not copied into an `IVec` after assembly: for a
/// large value that copy was as much again of a GET's peak memory.
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

/// Bytes before the value in a whole entry: its kind (u8) and version (u64, big-endian).
pub(super) const WHOLE_HEAD: usize = 9;

/// Kind of a whole entry: a value follows the header.
pub(super) const KIND_VALUE: u8 = 0;

/// Kind of a whole entry: a tombstone, nothing follows.
pub(super) const KIND_TOMBSTONE: u8 = 1;

/// The bytes of a whole entry (module doc of `storage`, "Layout"): a value (`Some`, at most
/// [`INLINE_MAX`] bytes) or a tombstone.
pub(super) fn whole_entry(version: Version, value: Option<&[u8]>) -> Vec<u8> {
    let mut e = Vec::with_capacity(WHOLE_HEAD + value.map_or(0, <[u8]>::len));
    e.push(if value.is_some() {
        KIND_VALUE
    } else {
        KIND_TOMBSTONE
    });
    e.extend_from_slice(&version.0.to_be_bytes());
    e.extend_from_slice(value.unwrap_or_default());
    e
}

/// What a whole entry's header says, without its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Head {
    /// 0 bytes: a keys-first batch between its passes; absent to every reader.
    Placeholder,
    Value(Version),
    Tombstone(Version),
}

impl Head {
    /// The header of the whole entry `e` under `key`; an entry of another shape is damage.
    pub(super) fn parse(key: &HashKey, e: &[u8]) -> Result<Head> {
        if e.is_empty() {
            return Ok(Head::Placeholder);
        }
        let version = e
            .get(1..WHOLE_HEAD)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(|b| Version(u64::from_be_bytes(b)));
        match (e[0], version) {
            (KIND_VALUE, Some(v)) => Ok(Head::Value(v)),
            (KIND_TOMBSTONE, Some(v)) if e.len() == WHOLE_HEAD => Ok(Head::Tombstone(v)),
            _ => Err(Error::Damaged(format!(
                "the entry under {key} is damaged (kind {}, {} bytes)",
                e[0],
                e.len()
            ))),
        }
    }

    /// The version, `None` for a placeholder.
    pub(super) fn version(self) -> Option<Version> {
        match self {
            Head::Placeholder => None,
            Head::Value(v) | Head::Tombstone(v) => Some(v),
        }
    }
}

/// The entry a whole entry holds, its value shared with sled's cache (`IVec::subslice`, no
/// copy); `None` for a placeholder.
pub(super) fn parse_whole(key: &HashKey, e: sled::IVec) -> Result<Option<Versioned<Value>>> {
    Ok(match Head::parse(key, &e)? {
        Head::Placeholder => None,
        Head::Tombstone(v) => Some(Versioned::tombstone(v)),
        Head::Value(v) => Some(Versioned::value(
            v,
            Value::Stored(e.subslice(WHOLE_HEAD, e.len() - WHOLE_HEAD)),
        )),
    })
}

/// What one read of a key found.
pub(super) enum Found {
    Absent,
    Entry(Versioned<Value>),
    /// Pieces that do not fit together (of two writes, or damaged).
    Torn,
}

/// How a value is read.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadFor {
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
    /// The value of `key`: the whole value, or its pieces put together; a tombstone is no
    /// value.
    pub(super) fn read_value(&self, key: &HashKey, how: ReadFor) -> Result<Option<Value>> {
        Ok(self.read_entry(key, how)?.and_then(|e| e.value))
    }

    /// [`Storage::read_value`] for a caller that holds the stripe.
    pub(super) fn read_value_locked(&self, key: &HashKey, how: ReadFor) -> Result<Option<Value>> {
        Ok(self.read_entry_locked(key, how)?.and_then(|e| e.value))
    }

    /// The entry of `key`, tombstones too. A reader that finds pieces of two writes, or
    /// neither a whole entry nor pieces once the directory holds pieces (a writer may have
    /// switched between its reads), reads again under the key's stripe.
    pub(super) fn read_entry(
        &self,
        key: &HashKey,
        how: ReadFor,
    ) -> Result<Option<Versioned<Value>>> {
        match self.read_entry_once(key, how, false)? {
            Found::Absent => return Ok(None),
            Found::Entry(e) => return Ok(Some(e)),
            Found::Torn => {}
        }
        let _stripe = self.stripe(key);
        self.read_entry_locked(key, how)
    }

    /// [`Storage::read_entry`] for a caller that holds the stripe: pieces that do not fit
    /// together now are damage.
    pub(super) fn read_entry_locked(
        &self,
        key: &HashKey,
        how: ReadFor,
    ) -> Result<Option<Versioned<Value>>> {
        match self.read_entry_once(key, how, true)? {
            Found::Absent => Ok(None),
            Found::Entry(e) => Ok(Some(e)),
            Found::Torn => Err(Error::Damaged(format!(
                "the pieces of the value under {key} in {} do not fit together",
                self.dir.display()
            ))),
        }
    }

    pub(super) fn read_entry_once(
        &self,
        key: &HashKey,
        how: ReadFor,
        locked: bool,
    ) -> Result<Found> {
        let get = |k: &[u8]| -> Result<Option<sled::IVec>> {
            match how {
                ReadFor::Request => Ok(self.kv.get(Tree::Data, k)?),
                ReadFor::Scan | ReadFor::ScanPieces => self.touch_raw(k),
            }
        };
        if how != ReadFor::ScanPieces {
            if let Some(e) = get(key.as_bytes())? {
                // A placeholder is no whole entry: the key's pieces, if any, say what it holds.
                if let Some(e) = parse_whole(key, e)? {
                    return Ok(Found::Entry(e));
                }
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
        Ok(Found::Entry(Versioned::value(
            h.version,
            Value::Assembled(value),
        )))
    }

    /// The version of what `key` holds (a value or a tombstone), from the whole entry's header
    /// or piece 0's, without reading the value; `None`: nothing, or an entry too damaged to
    /// say (then whatever arrives replaces it, rather than the damage failing every handoff
    /// of the key). The caller holds the stripe.
    pub(super) fn version_locked(&self, key: &HashKey) -> Result<Option<Version>> {
        if let Some(e) = self.kv.get(Tree::Data, key.as_bytes())? {
            match Head::parse(key, &e) {
                Ok(Head::Placeholder) => {}
                Ok(head) => return Ok(head.version()),
                Err(_) => return Ok(None),
            }
        }
        if !self.pieces_seen() {
            return Ok(None);
        }
        Ok(self
            .kv
            .get(Tree::Data, RawKey::piece(key, 0))?
            .and_then(|p0| PieceHeader::parse(&p0))
            .map(|h| h.version))
    }

    /// Writes one entry while holding its stripe: a value whole or in pieces, or a tombstone
    /// (whole), replacing what the key held; the commit point is one sled batch (see "Values
    /// in pieces"). `held`: what the key may hold (a batch into an empty span knows it holds
    /// nothing). Returns the keys of pieces written (to be touched: see [`Storage::touched`];
    /// a whole entry is small, and a touch per INS was measurably slower).
    pub(super) fn write_locked(
        &self,
        key: &HashKey,
        entry: Versioned<Vec<u8>>,
        held: Span,
    ) -> Result<Vec<RawKey>> {
        let version = entry.version;
        let value = entry.value;
        let len = value.as_ref().map_or(0, Vec::len);
        let mut written = Vec::new();
        if len > ONE_BATCH_MAX {
            self.write_staged(
                key,
                version,
                value.as_deref().unwrap_or_default(),
                &mut written,
            )?;
        } else if len > INLINE_MAX {
            let mut batch = sled::Batch::default();
            let look = held.whole || held.pieces;
            let value = value.as_deref().unwrap_or_default();
            let old = self.add_pieces(&mut batch, key, version, value, &mut written, look)?;
            self.kv.apply(Tree::Data, batch)?;
            self.remove_in_batches(&old)?;
        } else {
            let old = match held.pieces {
                true => self.pieces_if_seen(key)?,
                false => Vec::new(),
            };
            let e = whole_entry(version, value.as_deref());
            if old.is_empty() {
                self.kv.insert(Tree::Data, key.as_bytes(), e)?;
            } else {
                let mut batch = sled::Batch::default();
                let rest = split_removal(&mut batch, old);
                batch.insert(&key.0[..], e);
                self.kv.apply(Tree::Data, batch)?;
                self.remove_in_batches(&rest)?;
            }
        }
        Ok(written)
    }

    /// Removes every entry under `key` (its whole entry, value or tombstone, and its pieces)
    /// while holding its stripe: the key holds nothing afterwards, not even a tombstone.
    /// Returns whether it held a value (a tombstone or leftover pieces alone are no value).
    pub(super) fn drop_locked(&self, key: &HashKey) -> Result<bool> {
        let old = self.pieces_if_seen(key)?;
        let whole = match self.kv.get(Tree::Data, key.as_bytes())? {
            Some(e) => Some(Head::parse(key, &e)?),
            None => None,
        };
        if old.is_empty() {
            if whole.is_some() {
                self.kv.remove(Tree::Data, key.as_bytes())?;
            }
            return Ok(matches!(whole, Some(Head::Value(_))));
        }
        // A value in pieces has its piece 0, which sorts first; a whole entry beside it wins.
        let has_piece0 = old.first().is_some_and(|k| piece_index(k) == Some(0));
        let was = match whole {
            Some(Head::Value(_)) => true,
            Some(Head::Tombstone(_)) => false,
            Some(Head::Placeholder) | None => has_piece0,
        };
        let mut batch = sled::Batch::default();
        let rest = split_removal(&mut batch, old);
        batch.remove(&key.0[..]);
        self.kv.apply(Tree::Data, batch)?;
        self.remove_in_batches(&rest)?;
        Ok(was)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_key as k;
    use crate::storage::pieces::PIECE_BYTES;
    use crate::storage::StorageOptions;

    /// A reader racing a writer that replaces a value's pieces (sled applies a batch at once
    /// for a crash and for writers, not for readers) gets one of the values written, whole.
    #[test]
    pub(super) fn a_reader_never_gets_the_pieces_of_two_writes() {
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

    /// A reader racing a writer that turns a value from pieces into a whole value and back
    /// never finds the key absent (between its look for the whole value and its look for
    /// piece 0, the writer may have switched).
    #[test]
    pub(super) fn a_key_switching_between_whole_and_pieces_never_reads_as_absent() {
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

    /// `get_within` answers for whole values, absent keys and short values in pieces, and
    /// leaves longer ones to the caller; `longer_than` reads only piece 0.
    #[test]
    pub(super) fn get_within_leaves_long_values_to_the_caller() {
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
}
