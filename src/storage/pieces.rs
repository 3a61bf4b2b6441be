//! Values in pieces: their byte layout, and the writes that keep a key's pieces whole.
//!
//! # Values in pieces
//!
//! sled 0.34 keeps a page larger than 128 KiB in a blob file of its own, and its cache counts
//! such a page by the size of the blob's pointer: it is never evicted. A leaf holds up to 16
//! entries, so values of 8 KiB and more make blob leaves, and a node that read its large
//! values kept them all in memory whatever its cache capacity (BENCHMARKS.md, "Values in
//! pieces"). So a value longer than [`INLINE_MAX`] is stored as
//! pieces of up to `PIECE_BYTES` (6 KiB), each an entry of its own, and every leaf stays well under
//! 128 KiB:
//!
//! ```text
//! key:   the 20 bytes of the HashKey, then the piece's index (u32, big-endian): 24 bytes
//! index 0:          u64 write id, u64 version, u64 value length,
//!                   u32 s·2^31 + number of pieces n, the first PIECE_BYTES
//! index s·2^31 + i: u64 write id, the next PIECE_BYTES (the last piece: what is left),
//!                   for i in 1..n; s (0 or 1) is the slot that piece 0 names
//! ```
//!
//! All integers are big-endian. The version is the value's (see `version`); a value in pieces
//! is always a value: a tombstone is a whole entry, and replaces a value in pieces as a short
//! value does (one batch writes it and removes piece 0 and the others). What a key holds is its whole value if there is one, else the
//! value that piece 0 describes: the pieces 1..n of the slot it names, all carrying its write
//! id. Any other entry under the key is a leftover of an interrupted change, invisible to
//! readers, and removed when the key's pieces are next rewritten or the key is deleted.
//!
//! A value of up to [`ONE_BATCH_MAX`] (768 KiB) is written in slot 0 by one sled batch that
//! also removes what the key held before, so a crash leaves the old value or the new one. A
//! longer value would make one batch of up to 11,000 pieces, and sled 0.34 keeps everything
//! a batch replaced in memory until the batch ends (BENCHMARKS.md, "Large values"), so it is
//! written in batches of [`PIECES_PER_BATCH`] pieces into the slot piece 0
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

use super::kv::Tree;
use tracing::info;

use super::arc::reclaim;
use super::version::Version;
use super::Storage;
use crate::error::Result;
use crate::protocol::HashKey;

/// Values longer than this are stored in pieces (see "Values in pieces" above).
pub const INLINE_MAX: usize = 6 * 1024;

/// Value bytes per piece.
pub(super) const PIECE_BYTES: usize = 6 * 1024;

/// Bytes before a piece's share of the value: its write id (u64).
pub(super) const PIECE_HEAD: usize = 8;

/// Bytes before piece 0's share: write id (u64), version (u64), the value's length (u64),
/// pieces (u32).
pub(super) const PIECE0_HEAD: usize = 28;

/// The top bit of a piece's index, and of the count in piece 0: which of a key's two slots
/// holds its pieces 1.. (see "Values in pieces").
pub(super) const SLOT_BIT: u32 = 1 << 31;

/// Pieces per sled batch when a value of more pieces is written or removed (see
/// [`Storage::write_staged`]): 768 KiB of value per batch.
pub(super) const PIECES_PER_BATCH: usize = 128;

/// Values longer than this are written in several batches ([`Storage::write_staged`]).
pub(super) const ONE_BATCH_MAX: usize = PIECES_PER_BATCH * PIECE_BYTES;

/// A value assembled from pieces grows as they are read, from at most this much reserved up
/// front: a damaged length costs no more than the pieces really hold.
pub(super) const ASSEMBLE_RESERVE_MAX: u64 = 64 << 20;

/// Key of the mark, in the "ring" tree, that the directory may hold values in pieces.
pub(super) const PIECES_KEY: &[u8] = b"pieces";

/// Piece 0 of a value in pieces (see "Values in pieces"); `count` carries the slot bit.
pub(super) fn piece0(wid: u64, version: Version, len: usize, count: u32, share: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(PIECE0_HEAD + share.len());
    p.extend_from_slice(&wid.to_be_bytes());
    p.extend_from_slice(&version.0.to_be_bytes());
    p.extend_from_slice(&(len as u64).to_be_bytes());
    p.extend_from_slice(&count.to_be_bytes());
    p.extend_from_slice(share);
    p
}

/// A piece after the first.
pub(super) fn piece(wid: u64, share: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(PIECE_HEAD + share.len());
    p.extend_from_slice(&wid.to_be_bytes());
    p.extend_from_slice(share);
    p
}

/// The index of a raw key of the data tree, `None` for a whole value's key.
pub(super) fn piece_index(k: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(k.get(20..24)?.try_into().ok()?))
}

/// Puts the removal of `old` pieces of a key in `batch` (the change that replaces or removes
/// the key's value): piece 0, and up to [`PIECES_PER_BATCH`] others. Returns the others, which
/// that batch makes leftovers, to be removed after it.
pub(super) fn split_removal(batch: &mut sled::Batch, mut old: Vec<sled::IVec>) -> Vec<sled::IVec> {
    // Piece 0 sorts first; it goes in this batch whatever the count.
    let now = old.len().min(PIECES_PER_BATCH + 1);
    for k in old.drain(..now) {
        batch.remove(k);
    }
    old
}

/// A key of the data tree: a HashKey's 20 bytes (a whole value), or those and a piece's
/// index (see "Values in pieces").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RawKey {
    /// The key's bytes; only the first `len` count.
    pub(super) bytes: [u8; 24],
    /// 20 or 24.
    pub(super) len: u8,
}

impl RawKey {
    pub(super) fn whole(key: &HashKey) -> RawKey {
        let mut bytes = [0u8; 24];
        bytes[..20].copy_from_slice(&key.0);
        RawKey { bytes, len: 20 }
    }

    pub(super) fn piece(key: &HashKey, i: u32) -> RawKey {
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
pub(super) struct PieceHeader {
    /// The write id every piece of this write starts with.
    pub(super) wid: [u8; 8],
    /// The value's version.
    pub(super) version: Version,
    /// The value's length.
    pub(super) len: u64,
    /// How many pieces it has.
    pub(super) pieces: u32,
    /// Where pieces 1.. are: 0 or [`SLOT_BIT`], added to their index.
    pub(super) slot: u32,
}

impl PieceHeader {
    /// `None` unless the header is there and consistent: `pieces` pieces of [`PIECE_BYTES`]
    /// (the last one shorter) hold exactly `len` bytes.
    pub(super) fn parse(p0: &[u8]) -> Option<PieceHeader> {
        let wid: [u8; 8] = p0.get(..8)?.try_into().ok()?;
        let version = Version(u64::from_be_bytes(p0.get(8..16)?.try_into().ok()?));
        let len = u64::from_be_bytes(p0.get(16..24)?.try_into().ok()?);
        let count = u32::from_be_bytes(p0.get(24..28)?.try_into().ok()?);
        let (slot, pieces) = (count & SLOT_BIT, count & !SLOT_BIT);
        let fits = pieces > 0
            && len <= u64::from(pieces) * PIECE_BYTES as u64
            && len > u64::from(pieces - 1) * PIECE_BYTES as u64;
        fits.then_some(PieceHeader {
            wid,
            version,
            len,
            pieces,
            slot,
        })
    }
}

impl Storage {
    /// Whether `key` is stored in pieces (has a piece 0).
    pub(super) fn has_pieces(&self, key: &HashKey) -> Result<bool> {
        Ok(self.pieces_seen() && self.kv.contains(Tree::Data, RawKey::piece(key, 0))?)
    }

    /// [`Storage::stored_pieces`], or nothing without a look when the directory never held
    /// pieces.
    pub(super) fn pieces_if_seen(&self, key: &HashKey) -> Result<Vec<sled::IVec>> {
        if !self.pieces_seen() {
            return Ok(Vec::new());
        }
        self.stored_pieces(key)
    }

    /// Whether this directory ever held a value in pieces (the field of the same name).
    pub(super) fn pieces_seen(&self) -> bool {
        self.pieces_seen.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Before the first value in pieces: records durably that the directory may hold some.
    pub(super) fn note_pieces(&self) -> Result<()> {
        if !self.pieces_seen() {
            self.kv.insert(Tree::Meta, PIECES_KEY, &[1u8][..])?;
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
    pub(super) fn stored_pieces(&self, key: &HashKey) -> Result<Vec<sled::IVec>> {
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
    pub(super) fn add_pieces(
        &self,
        batch: &mut sled::Batch,
        key: &HashKey,
        version: Version,
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
                piece0(wid, version, value.len(), n, share)
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
    pub(super) fn add_piece_removal(
        &self,
        batch: &mut sled::Batch,
        key: &HashKey,
    ) -> Result<Vec<sled::IVec>> {
        Ok(split_removal(batch, self.stored_pieces(key)?))
    }

    /// Removes `keys` (leftover pieces, invisible to readers) in batches of
    /// [`PIECES_PER_BATCH`]. The caller holds the stripe.
    pub(super) fn remove_in_batches(&self, keys: &[sled::IVec]) -> Result<()> {
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
    pub(super) fn write_staged(
        &self,
        key: &HashKey,
        version: Version,
        value: &[u8],
        written: &mut Vec<RawKey>,
    ) -> Result<()> {
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
        batch.insert(
            k.as_ref(),
            piece0(wid, version, value.len(), slot | n, first),
        );
        written.push(k);
        if self.kv.contains(Tree::Data, key.as_bytes())? {
            batch.remove(&key.0[..]);
        }
        self.kv.apply(Tree::Data, batch)?;
        crate::fault::point_blocking("staged:after-commit");
        self.remove_in_batches(&old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_key as k;
    use crate::storage::testing::*;
    use crate::storage::{BatchWrite, StorageOptions};

    /// The layout of "Values in pieces", byte for byte, without a database.
    #[test]
    fn piece_zero_says_what_it_holds_and_a_header_that_does_not_fit_is_refused() {
        let version = Version(0x1112_1314_1516_1718);
        let p0 = piece0(
            0x0102_0304_0506_0708,
            version,
            3 * PIECE_BYTES - 1,
            SLOT_BIT | 3,
            b"abc",
        );
        assert_eq!(&p0[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            &p0[8..16],
            &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]
        );
        assert_eq!(&p0[16..24], &((3 * PIECE_BYTES - 1) as u64).to_be_bytes());
        assert_eq!(&p0[24..28], &(SLOT_BIT | 3).to_be_bytes());
        assert_eq!(&p0[PIECE0_HEAD..], b"abc");
        let h = PieceHeader::parse(&p0).unwrap();
        assert_eq!(
            (h.wid, h.version, h.len, h.pieces, h.slot),
            (
                [1, 2, 3, 4, 5, 6, 7, 8],
                version,
                (3 * PIECE_BYTES - 1) as u64,
                3,
                SLOT_BIT
            )
        );
        // Lengths that n pieces cannot hold exactly, no pieces, a short header: damage.
        for (len, count) in [
            (3 * PIECE_BYTES + 1, 3),
            (2 * PIECE_BYTES, 3),
            (0, 0),
            (10, SLOT_BIT),
        ] {
            assert!(
                PieceHeader::parse(&piece0(1, Version::ZERO, len, count, b"")).is_none(),
                "{len} in {count:#x}"
            );
        }
        assert!(PieceHeader::parse(&p0[..PIECE0_HEAD - 1]).is_none());
        let p = piece(7, b"xyz");
        assert_eq!(
            (&p[..PIECE_HEAD], &p[PIECE_HEAD..]),
            (&7u64.to_be_bytes()[..], &b"xyz"[..])
        );
    }

    #[test]
    fn raw_keys_sort_a_values_pieces_right_after_its_key() {
        let key = k(9);
        let whole = RawKey::whole(&key);
        let p0 = RawKey::piece(&key, 0);
        let p7 = RawKey::piece(&key, SLOT_BIT | 7);
        assert_eq!(whole.as_ref(), &key.0[..]);
        assert_eq!(piece_index(whole.as_ref()), None);
        assert_eq!(piece_index(p0.as_ref()), Some(0));
        assert_eq!(piece_index(p7.as_ref()), Some(SLOT_BIT | 7));
        // Key, its pieces, then the next key: an arc is still one sled range.
        let next = RawKey::whole(&k(10));
        assert!(whole.as_ref() < p0.as_ref() && p0.as_ref() < p7.as_ref());
        assert!(p7.as_ref() < next.as_ref());
    }

    #[test]
    fn a_removal_takes_piece_zero_and_at_most_a_batch_of_others_at_once() {
        let keys: Vec<sled::IVec> = (0..PIECES_PER_BATCH as u32 + 10)
            .map(|i| RawKey::piece(&k(1), i).as_ref().into())
            .collect();
        let mut batch = sled::Batch::default();
        let left = split_removal(&mut batch, keys.clone());
        assert_eq!(left, keys[PIECES_PER_BATCH + 1..].to_vec());
        let mut batch = sled::Batch::default();
        assert!(split_removal(&mut batch, keys[..3].to_vec()).is_empty());
    }

    /// Values of every length around the piece boundaries come back as written, through every
    /// way of reading; replacing a value by a shorter, a longer, a whole or a pieced one
    /// leaves no piece behind; and they survive a reopen.
    #[test]
    pub(super) fn values_in_pieces_read_back_whole_and_leave_nothing_behind() {
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
    pub(super) fn small_values_leave_no_mark_of_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        let _ = s.insert(&k(1), vec![1; INLINE_MAX]).unwrap();
        let mut batch = unversioned(vec![(k(2), vec![2; 100])]);
        let _ = s.insert_batch(&mut batch, BatchWrite::InPlace).unwrap();
        assert!(!s.pieces_seen());
        let _ = s.insert(&k(3), vec![3; INLINE_MAX + 1]).unwrap();
        assert!(s.pieces_seen());
    }

    /// Pieces keep sled's pages small: no page of a large value goes to a blob file, which
    /// sled's cache would count at the size of a pointer and never evict.
    #[test]
    pub(super) fn large_values_make_no_blob_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        for n in 0..40u8 {
            let _ = s.insert(&k(n), vec![n; 1 << 20]).unwrap();
        }
        let mut batch = unversioned((40..140u8).map(|n| (k(n), vec![n; 20 << 10])).collect());
        let _ = s.insert_batch(&mut batch, BatchWrite::KeysFirst).unwrap();
        s.flush().unwrap();
        let blobs = std::fs::read_dir(crate::storage::dir::blob_dir(dir.path()))
            .unwrap()
            .count();
        assert_eq!(blobs, 0, "sled wrote {blobs} blob files");
        assert_eq!(s.get(&k(39)).unwrap().unwrap(), vec![39; 1 << 20][..]);
    }

    /// Values over [`ONE_BATCH_MAX`] are written in several batches, in the slot piece 0 does
    /// not name: every change between a whole value, one batch of pieces and several leaves
    /// the new value readable and no other entry under the key, and the slot alternates.
    #[test]
    pub(super) fn staged_values_alternate_slots_and_leave_nothing_behind() {
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
        // Its tombstone alone is left.
        let left: Vec<_> = raw_keys(&s)
            .into_iter()
            .filter(|r| r[..20] == k(1).0)
            .collect();
        assert_eq!(left, vec![k(1).0.to_vec()]);
    }

    /// What a staged write cut short leaves: pieces in the slot piece 0 does not name (before
    /// the commit: the new value's; after it: the old one's). The old value, or the new one,
    /// reads back whole, and the next write of the key removes the rest.
    #[test]
    pub(super) fn an_interrupted_staged_write_leaves_one_value_and_is_cleaned_up() {
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
        let cut: Vec<_> = s
            .cut_entries()
            .unwrap()
            .filter_map(|r| r.map(|(k, e)| e.value.map(|v| (k, v))).unwrap())
            .collect();
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
        assert_eq!(raw_keys(&s), vec![k(1).0.to_vec()], "the tombstone alone");
        // Beside a tombstone, and beside nothing, leftovers are no value; a removal takes
        // them and leaves the tombstone as it is, whose collection then leaves nothing.
        strays(&s);
        assert_eq!(s.get(&k(1)).unwrap(), None);
        assert!(!s.contains(&k(1)).unwrap());
        let before = s.entry(&k(1)).unwrap().unwrap();
        assert!(
            !s.remove(&k(1)).unwrap().0,
            "leftovers beside a tombstone are no value"
        );
        assert_eq!(s.entry(&k(1)).unwrap().unwrap(), before);
        assert_eq!(raw_keys(&s), vec![k(1).0.to_vec()]);
        let now = s.next_version().unwrap();
        assert_eq!(s.collect_tombstones(now, None).unwrap(), 1);
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
}
