//! What one key holds, read and written: its whole value, or the value its piece 0 describes
//! (see `pieces`), and the [`Value`] a read hands back.

use super::bulk::Span;
use super::kv::Tree;
use super::pieces::{
    piece_index, split_removal, PieceHeader, RawKey, ASSEMBLE_RESERVE_MAX, INLINE_MAX,
    ONE_BATCH_MAX, PIECE0_HEAD, PIECE_HEAD,
};
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

/// What one read of a key found.
pub(super) enum Found {
    Absent,
    Value(Value),
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
    /// The value of `key`: the whole value, or its pieces put together. A reader that finds
    /// pieces of two writes, or neither a whole value nor pieces once the directory holds
    /// pieces (a writer may have switched between its reads), reads again under the key's
    /// stripe.
    pub(super) fn read_value(&self, key: &HashKey, how: ReadFor) -> Result<Option<Value>> {
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
    pub(super) fn read_value_locked(&self, key: &HashKey, how: ReadFor) -> Result<Option<Value>> {
        match self.read_value_once(key, how, true)? {
            Found::Absent => Ok(None),
            Found::Value(v) => Ok(Some(v)),
            Found::Torn => Err(Error::Damaged(format!(
                "the pieces of the value under {key} in {} do not fit together",
                self.dir.display()
            ))),
        }
    }

    pub(super) fn read_value_once(
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

    /// Writes one value while holding its stripe: whole, or in pieces, replacing what the key
    /// held; the commit point is one sled batch (see "Values in pieces"). `held`: what the key
    /// may hold (a batch into an empty span knows it holds nothing). Returns the keys of
    /// pieces written (to be touched: see [`Storage::touched`]).
    pub(super) fn write_locked(
        &self,
        key: &HashKey,
        value: Vec<u8>,
        held: Span,
    ) -> Result<Vec<RawKey>> {
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

    /// Removes `key` (its whole value or its pieces) while holding its stripe.
    /// Returns whether it held a value (leftover pieces alone are no value, but go too).
    pub(super) fn remove_locked(&self, key: &HashKey) -> Result<bool> {
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
