//! What anti-entropy (issue 17) compares between two replicas of an arc: the arc cut into
//! [`Segments`], one digest per segment ([`Storage::digests`]), and the keys and versions of
//! one segment ([`Storage::versions_in`]) once its digests differ.
//!
//! A digest is the XOR of [`entry_digest`] over the segment's entries, values and tombstones:
//! two replicas holding the same writes agree whatever order the writes came in, and one entry
//! more, less or of another version changes its segment's digest alone. Values are not hashed:
//! equal versions of one key are the same write (docs/EXTENSIONS.md), so a digest needs only
//! what a whole entry's header or piece 0's says, and a scan never reads a value in pieces
//! beyond its piece 0. Unversioned entries ([`Version::ZERO`]) are the exception: two of them
//! of one key may hold different values and still digest alike.
//!
//! Like every scan, these are no snapshots: a write made during one may or may not be seen (a
//! digest it spoils costs a listing more, not a wrong answer, once the arc is quiet).

use std::ops::Bound::{self, Excluded, Included, Unbounded};

use super::arc::{reclaim, stored_key, RECLAIM_EVERY};
use super::kv::Tree;
use super::pieces::{PieceHeader, RawKey};
use super::value::Head;
use super::version::Version;
use super::Storage;
use crate::error::{Error, Result};
use crate::protocol::HashKey;
use crate::ring;

/// The deepest split [`Segments::new`] accepts: 2^16 segments, 512 KiB of digests.
pub const MAX_DEPTH: u8 = 16;

/// The arc `[from, to)` (`from == to`: the whole circle, as [`ring::in_arc`] says) split into
/// `2^depth` contiguous segments by ring distance. A pure function of `(from, to, depth)`, so
/// that two nodes compare digests of the same segments.
///
/// With `d(k)` the top 128 bits of `distance(from, k)` and `L` those of `distance(from, to)`
/// (2^128 for the whole circle), a segment spans `unit = max(1, ceil(L / 2^depth))` values of
/// `d`; the last one takes what the rounding leaves. Segment `i` is `[start(i), start(i + 1))`
/// with `start(i) = from + (i · unit) << 32` (clamped to `to`) and `start(2^depth) = to`.
/// Only an arc shorter than about `2^(32 + 2·depth)` keys has empty segments
/// ([`Segments::is_empty`]), all at its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segments {
    from: HashKey,
    to: HashKey,
    depth: u8,
    /// Values of `d` per segment, derived from the three above. `u128::MAX` stands in for
    /// 2^128, the whole circle in one segment (where every index is 0 anyway).
    unit: u128,
}

/// The top 128 bits of a ring position or distance.
fn top(k: &HashKey) -> u128 {
    let mut b = [0u8; 16];
    b.copy_from_slice(&k.0[..16]);
    u128::from_be_bytes(b)
}

/// `x << 32` as a ring distance.
fn widen(x: u128) -> HashKey {
    let mut b = [0u8; 20];
    b[..16].copy_from_slice(&x.to_be_bytes());
    HashKey(b)
}

impl Segments {
    /// The segments of `[from, to)` at `depth` (at most [`MAX_DEPTH`]).
    pub fn new(from: HashKey, to: HashKey, depth: u8) -> Result<Segments> {
        if depth > MAX_DEPTH {
            return Err(Error::Usage(format!(
                "an arc is split into at most 2^{MAX_DEPTH} segments, not 2^{depth}"
            )));
        }
        let unit = if from == to {
            // 2^128 / 2^depth, exactly.
            match depth {
                0 => u128::MAX,
                d => 1 << (128 - u32::from(d)),
            }
        } else {
            top(&ring::distance(&from, &to)).div_ceil(1 << depth).max(1)
        };
        Ok(Segments {
            from,
            to,
            depth,
            unit,
        })
    }

    /// The start of the arc.
    pub fn from(&self) -> HashKey {
        self.from
    }

    /// The end of the arc (excluded; `from` itself for the whole circle).
    pub fn to(&self) -> HashKey {
        self.to
    }

    /// `log2` of the number of segments.
    pub fn depth(&self) -> u8 {
        self.depth
    }

    /// The number of segments, `2^depth`.
    pub fn count(&self) -> u32 {
        1 << self.depth
    }

    /// The segment of `key`, a key of the arc (any other key gets some segment, meaninglessly).
    /// Monotone in ring order from `from`.
    pub fn index(&self, key: &HashKey) -> u32 {
        let d = top(&ring::distance(&self.from, key));
        (d / self.unit).min(u128::from(self.count() - 1)) as u32
    }

    /// Segment `i` as the arc `[start, end)`. The segments follow each other from `from` to
    /// `to`. An empty segment ([`Segments::is_empty`]) is `(to, to)`, which here is no whole
    /// circle. Panics unless `i < count()`.
    pub fn bounds(&self, i: u32) -> (HashKey, HashKey) {
        assert!(i < self.count(), "segment {i} of {}", self.count());
        (self.start(i), self.start(i + 1))
    }

    /// Whether segment `i` can hold no key: only at the end of an arc too short to give every
    /// segment a 2^32-key step of its own (never for the whole circle).
    pub fn is_empty(&self, i: u32) -> bool {
        self.from != self.to && self.start(i) == self.start(i + 1)
    }

    fn start(&self, i: u32) -> HashKey {
        if i == 0 {
            return self.from;
        }
        if i >= self.count() {
            return self.to;
        }
        // Below 2^128 for every i < count(): the whole circle's unit times 2^depth is 2^128.
        let Some(offset) = u128::from(i).checked_mul(self.unit) else {
            return self.to;
        };
        let offset = widen(offset);
        // Past the end of a short arc: the segment is empty, and stays inside the arc.
        if self.from != self.to && offset >= ring::distance(&self.from, &self.to) {
            return self.to;
        }
        self.from.wrapping_add(&offset)
    }
}

/// The digest of one entry: XXH3-64 of the key (20 bytes), its version (8 bytes, big-endian)
/// and `b'X'` for a tombstone or `b'V'` for a value. Not of the value (module doc).
pub fn entry_digest(key: &HashKey, version: Version, tombstone: bool) -> u64 {
    let mut b = [0u8; 29];
    b[..20].copy_from_slice(&key.0);
    b[20..28].copy_from_slice(&version.0.to_be_bytes());
    b[28] = if tombstone { b'X' } else { b'V' };
    xxhash_rust::xxh3::xxh3_64(&b)
}

impl Storage {
    /// One digest per segment of `seg` (XOR of [`entry_digest`] over its values and
    /// tombstones; 0 for none), from one scan of the arc holding nothing but the digests.
    pub fn digests(&self, seg: &Segments) -> Result<Vec<u64>> {
        let mut digests = vec![0u64; seg.count() as usize];
        for r in self.versions_in(&seg.from, &seg.to) {
            let (key, version, tombstone) = r?;
            digests[seg.index(&key) as usize] ^= entry_digest(&key, version, tombstone);
        }
        Ok(digests)
    }

    /// The keys of the arc `[from, to)` in ring order from `from`, each with its version and
    /// whether it is a tombstone (`true`); placeholders and leftovers are absent, as to every
    /// reader. A value in pieces is read no further than its piece 0's header: pieces that do
    /// not fit together behind a sound piece 0 go unnoticed here (a read of the value fails).
    /// Not a snapshot, like [`Storage::iter_arc`]; the first error ends the stream.
    pub fn versions_in(
        &self,
        from: &HashKey,
        to: &HashKey,
    ) -> impl Iterator<Item = Result<(HashKey, Version, bool)>> + '_ {
        self.heads(from, to)
    }

    /// The scan behind [`Storage::versions_in`].
    fn heads(&self, from: &HashKey, to: &HashKey) -> Heads<'_> {
        // `arc_ranges` starts the whole circle at 0; this starts it at `from`.
        let ranges = match from == to && *from != HashKey::ZERO {
            true => vec![(*from, None), (HashKey::ZERO, Some(*to))],
            false => ring::arc_ranges(from, to),
        };
        Heads {
            storage: self,
            ranges: ranges.into_iter(),
            current: None,
            decided: None,
            seen: 0,
        }
    }

    /// The values and the tombstones of the arc `[from, to)`, counted by
    /// [`Storage::versions_in`].
    pub fn count_versions(&self, from: &HashKey, to: &HashKey) -> Result<(u64, u64)> {
        let (mut values, mut tombstones) = (0, 0);
        for r in self.versions_in(from, to) {
            match r?.2 {
                true => tombstones += 1,
                false => values += 1,
            }
        }
        Ok((values, tombstones))
    }

    /// The raw entries from `lo` up to `end` (excluded; `None`: to the end of the tree).
    fn data_from(&self, lo: Bound<&[u8]>, end: Option<HashKey>) -> sled::Iter {
        let hi = match &end {
            Some(e) => Excluded(&e.0[..]),
            None => Unbounded,
        };
        self.kv.range::<&[u8], _>(Tree::Data, (lo, hi))
    }

    /// What `key` holds, met by a scan at its pieces (no whole entry answered there): the
    /// version of the value its piece 0 describes, from the header alone. Without a sound
    /// piece 0, a writer may be between its steps (or these are leftovers): read again under
    /// the stripe, whole entry first, as [`Storage::read_entry`] does.
    fn piece_head(&self, key: &HashKey) -> Result<Option<(Version, bool)>> {
        let p0 = RawKey::piece(key, 0);
        // Read through the cache (see `Storage::touched`), piece 0 only.
        if let Some(h) = self
            .touch_raw(p0.as_ref())?
            .and_then(|p| PieceHeader::parse(&p))
        {
            return Ok(Some((h.version, false)));
        }
        let _stripe = self.stripe(key);
        if let Some(e) = self.kv.get(Tree::Data, key.as_bytes())? {
            match Head::parse(key, &e)? {
                Head::Value(v) => return Ok(Some((v, false))),
                Head::Tombstone(v) => return Ok(Some((v, true))),
                Head::Placeholder => {}
            }
        }
        match self.kv.get(Tree::Data, p0)? {
            None => Ok(None),
            Some(p) => match PieceHeader::parse(&p) {
                Some(h) => Ok(Some((h.version, false))),
                None => Err(Error::Damaged(format!(
                    "piece 0 of the value under {key} in {} is unreadable",
                    self.dir.display()
                ))),
            },
        }
    }
}

/// The scan of [`Storage::versions_in`]: the arc's one or two sled ranges, in which a key's
/// pieces are stepped over by starting a new range after them (sled's iterator would load
/// every page of a large value on its way).
struct Heads<'a> {
    storage: &'a Storage,
    /// The ranges of the arc not begun yet.
    ranges: std::vec::IntoIter<(HashKey, Option<HashKey>)>,
    /// The range being scanned, and its end.
    current: Option<(sled::Iter, Option<HashKey>)>,
    /// The last key whose whole entry answered: its pieces, if any, are leftovers.
    decided: Option<HashKey>,
    /// Raw entries met, for [`reclaim`].
    seen: u64,
}

impl Heads<'_> {
    /// One raw entry: what its key holds if this entry tells it.
    fn step(
        &mut self,
        r: sled::Result<(sled::IVec, sled::IVec)>,
    ) -> Result<Option<(HashKey, Version, bool)>> {
        self.seen += 1;
        if self.seen.is_multiple_of(RECLAIM_EVERY) {
            reclaim();
        }
        let (k, _) = r?;
        let key = stored_key(&k)?;
        if k.len() == 20 {
            // Read again through the cache (see `Storage::touched`). `None`: removed meanwhile,
            // or turned into pieces this range may not show (it holds a copy of its current
            // leaf): the key is looked up as if met at its pieces.
            if let Some(e) = self.storage.touch(&k)? {
                let (version, tombstone) = match Head::parse(&key, &e)? {
                    // Its pieces, if any, follow.
                    Head::Placeholder => return Ok(None),
                    Head::Value(v) => (v, false),
                    Head::Tombstone(v) => (v, true),
                };
                self.decided = Some(key);
                return Ok(Some((key, version, tombstone)));
            }
        }
        // What the key holds is told below (or was above): its other raw entries are stepped
        // over.
        if let Some((iter, end)) = &mut self.current {
            let last = RawKey::piece(&key, u32::MAX);
            *iter = self.storage.data_from(Excluded(last.as_ref()), *end);
        }
        if self.decided == Some(key) {
            return Ok(None);
        }
        Ok(self
            .storage
            .piece_head(&key)?
            .map(|(version, tombstone)| (key, version, tombstone)))
    }
}

impl Iterator for Heads<'_> {
    type Item = Result<(HashKey, Version, bool)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let Some((iter, _)) = &mut self.current else {
                let (start, end) = self.ranges.next()?;
                let iter = self.storage.data_from(Included(&start.0[..]), end);
                self.current = Some((iter, end));
                continue;
            };
            let Some(r) = iter.next() else {
                self.current = None;
                continue;
            };
            match self.step(r) {
                Ok(Some(head)) => return Some(Ok(head)),
                Ok(None) => {}
                Err(e) => {
                    self.current = None;
                    self.ranges = Vec::new().into_iter();
                    return Some(Err(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::protocol::test_key as k;
    use crate::ring::{distance, in_arc};
    use crate::storage::pieces::{piece0, ONE_BATCH_MAX, PIECE_BYTES};
    use crate::storage::testing::live_slot;
    use crate::storage::version::Versioned;
    use crate::storage::{StorageOptions, INLINE_MAX};

    /// `n` as a ring distance.
    fn num(n: u128) -> HashKey {
        let mut b = [0u8; 20];
        b[4..].copy_from_slice(&n.to_be_bytes());
        HashKey(b)
    }

    /// `r` cut below `len` (any `r` for 0, the whole circle): an offset into an arc that long.
    fn below(len: &HashKey, mut r: [u8; 20]) -> HashKey {
        let Some(top) = len.0.iter().position(|b| *b != 0) else {
            return HashKey(r);
        };
        r[..top].fill(0);
        // Under the top bit of `len`.
        let bits = 8 - len.0[top].leading_zeros();
        r[top] &= (1u8 << (bits - 1)).wrapping_sub(1);
        HashKey(r)
    }

    /// Checks `seg` against its definition, with `probes` (keys anywhere; those of the arc
    /// are placed).
    fn check(seg: &Segments, probes: &[HashKey]) {
        let (from, to, n) = (seg.from(), seg.to(), seg.count());
        assert_eq!(n, 1 << seg.depth());
        assert_eq!(seg.bounds(0).0, from);
        assert_eq!(seg.bounds(n - 1).1, to);
        // Contiguous, each start at or above the one before, empty ones only at the end.
        let mut before = HashKey::ZERO;
        let mut emptied = false;
        for i in 0..n {
            let (s, e) = seg.bounds(i);
            if i + 1 < n {
                assert_eq!(
                    e,
                    seg.bounds(i + 1).0,
                    "segment {i} ends where {} starts",
                    i + 1
                );
            }
            if seg.is_empty(i) {
                assert_eq!((s, e), (to, to), "segment {i}");
                emptied = true;
                continue;
            }
            assert!(!emptied, "segment {i}: a segment after an empty one");
            assert!(in_arc(&s, &from, &to), "segment {i} starts outside the arc");
            assert!(s != e || n == 1, "segment {i} is no whole circle");
            let d = distance(&from, &s);
            assert!(i == 0 || d > before, "segment {i} starts below {}", i - 1);
            before = d;
        }
        // Every key of the arc in the segment of its index, and only there; in order.
        let mut inside: Vec<HashKey> = probes
            .iter()
            .filter(|p| in_arc(p, &from, &to))
            .copied()
            .collect();
        inside.sort_by_key(|p| distance(&from, p));
        let mut last = 0;
        for p in &inside {
            let i = seg.index(p);
            assert!(i < n && !seg.is_empty(i), "{p:?}: segment {i}");
            let (s, e) = seg.bounds(i);
            assert!(in_arc(p, &s, &e), "{p:?} is not in its segment {i}");
            for j in [i.wrapping_sub(1), i + 1] {
                if j < n && !seg.is_empty(j) {
                    let (s, e) = seg.bounds(j);
                    assert!(!in_arc(p, &s, &e), "{p:?} of segment {i} is in {j} too");
                }
            }
            assert!(i >= last, "{p:?}: index {i} after {last}");
            last = i;
        }
    }

    /// Keys where mistakes would be: the ends of the arc and of some segments, either side,
    /// and `random` keys spread over the arc (from either end).
    fn probes(seg: &Segments, random: &[[u8; 20]]) -> Vec<HashKey> {
        let (from, to, n) = (seg.from(), seg.to(), seg.count());
        let one = num(1);
        let mut p = vec![from, to, to.prev(), from.wrapping_add(&one), from.prev()];
        for i in [1, 2, n / 2, n - 1, n] {
            if i < n {
                let s = seg.bounds(i).0;
                p.extend([s, s.prev(), s.wrapping_add(&one)]);
            }
        }
        let len = distance(&from, &to);
        for r in random {
            let off = below(&len, *r);
            p.push(from.wrapping_add(&off));
            p.push(to.wrapping_sub(&off).prev());
            p.push(HashKey(*r));
        }
        p
    }

    fn arb_key() -> impl Strategy<Value = HashKey> {
        any::<[u8; 20]>().prop_map(HashKey)
    }

    /// Arcs of every kind: anywhere, from 0 or just under 2^160, of any length, the whole
    /// circle, under 2^32 keys, ending at 0.
    fn arb_arc() -> impl Strategy<Value = (HashKey, HashKey)> {
        let from = prop_oneof![
            arb_key(),
            Just(HashKey::ZERO),
            any::<u64>().prop_map(|x| HashKey::MAX.wrapping_sub(&num(x.into()))),
        ];
        let len = prop_oneof![
            arb_key(),
            Just(HashKey::ZERO),
            any::<u32>().prop_map(|x| num(x.into())),
            any::<u64>().prop_map(|x| num(x.into())),
            any::<u128>().prop_map(num),
        ];
        (from, len, any::<bool>()).prop_map(|(from, len, at_zero)| match at_zero {
            true => (from, HashKey::ZERO),
            false => (from, from.wrapping_add(&len)),
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        #[test]
        fn segments_split_any_arc_into_contiguous_parts_that_hold_their_keys(
            (from, to) in arb_arc(),
            depth in 0..=MAX_DEPTH,
            random in proptest::collection::vec(any::<[u8; 20]>(), 0..24),
        ) {
            let seg = Segments::new(from, to, depth).unwrap();
            check(&seg, &probes(&seg, &random));
        }
    }

    #[test]
    fn segments_are_what_the_definition_says() {
        let seg = |from, to, depth| {
            let seg = Segments::new(from, to, depth).unwrap();
            check(&seg, &probes(&seg, &[[0x5a; 20], [0xa5; 20], [7; 20]]));
            seg
        };
        let all = |s: &Segments| -> Vec<(HashKey, HashKey)> {
            (0..s.count()).map(|i| s.bounds(i)).collect()
        };
        // Eighths of [0x10.., 0x90..).
        let s = seg(k(0x10), k(0x90), 3);
        let want: Vec<_> = (1..9u8)
            .map(|i| (k(i * 0x10), k(i * 0x10 + 0x10)))
            .collect();
        assert_eq!(all(&s), want);
        assert_eq!((s.index(&k(0x35)), s.index(&k(0x8f).prev())), (2, 7));
        // Depth 0: the arc itself; for the whole circle, the whole circle.
        let s = seg(k(0x10), k(0x90), 0);
        assert_eq!((all(&s), s.index(&k(0x50))), (vec![(k(0x10), k(0x90))], 0));
        let s = seg(k(0x10), k(0x10), 0);
        assert_eq!((all(&s), s.index(&k(0x05))), (vec![(k(0x10), k(0x10))], 0));
        // The whole circle in quarters, from 0 and from elsewhere (wrapping).
        let s = seg(HashKey::ZERO, HashKey::ZERO, 2);
        let q = [k(0), k(0x40), k(0x80), k(0xc0), k(0)];
        assert_eq!(
            all(&s),
            q.windows(2).map(|w| (w[0], w[1])).collect::<Vec<_>>()
        );
        assert_eq!(s.index(&HashKey::MAX), 3);
        let s = seg(k(0x90), k(0x90), 1);
        assert_eq!(all(&s), vec![(k(0x90), k(0x10)), (k(0x10), k(0x90))]);
        assert_eq!((s.index(&k(0x05)), s.index(&k(0x10))), (0, 1));
        // Depth 16.
        let s = seg(HashKey::ZERO, HashKey::ZERO, 16);
        let mut second = [0u8; 20];
        second[1] = 1;
        assert_eq!(s.count(), 1 << 16);
        assert_eq!(s.bounds(0), (HashKey::ZERO, HashKey(second)));
        assert_eq!(s.index(&HashKey(second)), 1);
        assert_eq!(s.index(&HashKey::MAX), u32::from(u16::MAX));
        // Past 2^160 - 1, and ending at 0.
        let s = seg(k(0xf0), k(0x10), 2);
        let q = [k(0xf0), k(0xf8), k(0), k(0x08), k(0x10)];
        assert_eq!(
            all(&s),
            q.windows(2).map(|w| (w[0], w[1])).collect::<Vec<_>>()
        );
        assert_eq!(s.index(&HashKey::MAX), 1);
        let s = seg(k(0xc0), HashKey::ZERO, 2);
        let q = [k(0xc0), k(0xd0), k(0xe0), k(0xf0), k(0)];
        assert_eq!(
            all(&s),
            q.windows(2).map(|w| (w[0], w[1])).collect::<Vec<_>>()
        );
        // Under 2^32 keys: one segment holds them all, the others are empty.
        let from = HashKey::MAX.prev();
        let to = from.wrapping_add(&num(100));
        let s = seg(from, to, 4);
        assert_eq!(s.bounds(0), (from, to));
        assert!((1..16).all(|i| s.is_empty(i) && s.bounds(i) == (to, to)));
        assert_eq!((s.index(&from), s.index(&to.prev())), (0, 0));
        // 3·2^32 + 5 keys in quarters: a 2^32 step each, the rest in the last.
        let s = seg(HashKey::ZERO, num((3 << 32) + 5), 2);
        let starts: Vec<_> = (0..4).map(|i| s.bounds(i).0).collect();
        assert_eq!(starts, [0, 1, 2, 3].map(|i: u128| num(i << 32)));
        assert!((0..4).all(|i| !s.is_empty(i)));
        // 5·2^32 keys in quarters: steps of 2, so the last quarter is empty.
        let s = seg(HashKey::ZERO, num(5 << 32), 2);
        assert_eq!(
            all(&s),
            vec![
                (num(0), num(2 << 32)),
                (num(2 << 32), num(4 << 32)),
                (num(4 << 32), num(5 << 32)),
                (num(5 << 32), num(5 << 32)),
            ]
        );
        assert!(s.is_empty(3) && !s.is_empty(2));
        assert_eq!(s.index(&num(5 << 32).prev()), 2);
        assert!(Segments::new(k(1), k(2), MAX_DEPTH + 1).is_err());
    }

    #[test]
    fn an_entry_digest_hashes_key_version_and_kind() {
        let key = k(7);
        let mut b = key.0.to_vec();
        b.extend_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        b.push(b'V');
        let v = Version(0x0102_0304_0506_0708);
        assert_eq!(entry_digest(&key, v, false), xxhash_rust::xxh3::xxh3_64(&b));
        *b.last_mut().unwrap() = b'X';
        assert_eq!(entry_digest(&key, v, true), xxhash_rust::xxh3::xxh3_64(&b));
        assert_ne!(entry_digest(&key, v, true), entry_digest(&key, v, false));
        assert_ne!(
            entry_digest(&key, v, false),
            entry_digest(&key, Version(v.0 + 1), false)
        );
    }

    fn version(n: u64) -> Version {
        Version(Version::from_millis(1_700_000_000_000).0 + n)
    }

    /// What a key ends up holding in the replicas (`None`: a tombstone), with its version.
    type Model = BTreeMap<HashKey, (Version, bool)>;

    /// Keys spread over the ring, the two ends of it among them: small values, values in
    /// one batch of pieces, two over `ONE_BATCH_MAX` (several batches), tombstones.
    fn finals() -> Vec<(HashKey, Versioned<Vec<u8>>)> {
        let mut keys: Vec<HashKey> = (0..60u8).map(|n| HashKey::of(&[n])).collect();
        keys.extend([HashKey::ZERO, HashKey::MAX, k(0x40), k(0xc0)]);
        keys.into_iter()
            .enumerate()
            .map(|(n, key)| {
                let v = version(1000 + n as u64);
                let entry = match n % 6 {
                    0 => Versioned::tombstone(v),
                    1 => Versioned::value(v, vec![n as u8; INLINE_MAX + 1]),
                    2 => Versioned::value(v, vec![n as u8; 3 * PIECE_BYTES + 5]),
                    _ => Versioned::value(v, vec![n as u8; 10 + n]),
                };
                let entry = match n {
                    5 | 41 => Versioned::value(v, vec![n as u8; ONE_BATCH_MAX + 1]),
                    _ => entry,
                };
                (key, entry)
            })
            .collect()
    }

    fn model(entries: &[(HashKey, Versioned<Vec<u8>>)]) -> Model {
        entries
            .iter()
            .map(|(key, e)| (*key, (e.version, e.is_tombstone())))
            .collect()
    }

    /// The digests `model` should give.
    fn digests_of(model: &Model, seg: &Segments) -> Vec<u64> {
        let mut d = vec![0; seg.count() as usize];
        for (key, (v, tombstone)) in model {
            if in_arc(key, &seg.from(), &seg.to()) {
                d[seg.index(key) as usize] ^= entry_digest(key, *v, *tombstone);
            }
        }
        d
    }

    /// Two replicas of `finals`: one written in order; the other backwards, over older
    /// versions of every third key (of another kind and size), and then shown stale copies.
    fn replicas() -> (tempfile::TempDir, Storage, tempfile::TempDir, Storage) {
        let entries = finals();
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = Storage::open(da.path(), &StorageOptions::default()).unwrap();
        let b = Storage::open(db.path(), &StorageOptions::default()).unwrap();
        for (key, e) in &entries {
            assert!(a.apply(key, e.clone()).unwrap().0);
        }
        let older = |n: usize, e: &Versioned<Vec<u8>>| -> Versioned<Vec<u8>> {
            let v = version(n as u64);
            match e.value.as_ref().map(Vec::len) {
                None => Versioned::value(v, vec![9; 2 * PIECE_BYTES]),
                Some(l) if l > INLINE_MAX => Versioned::tombstone(v),
                Some(_) => Versioned::value(v, vec![9; 5 * PIECE_BYTES]),
            }
        };
        for (n, (key, e)) in entries.iter().enumerate().step_by(3) {
            assert!(b.apply(key, older(n, e)).unwrap().0);
        }
        for (key, e) in entries.iter().rev() {
            assert!(b.apply(key, e.clone()).unwrap().0);
        }
        for (n, (key, e)) in entries.iter().enumerate().skip(1).step_by(4) {
            assert!(!b.apply(key, older(n, e)).unwrap().0);
        }
        (da, a, db, b)
    }

    /// Arcs of each kind: the whole circle from 0 and from elsewhere, one past 2^160 - 1, one
    /// ending at 0, one inside.
    fn arcs() -> Vec<(HashKey, HashKey)> {
        vec![
            (HashKey::ZERO, HashKey::ZERO),
            (k(0x77), k(0x77)),
            (k(0xc0), k(0x40)),
            (k(0x80), HashKey::ZERO),
            (k(0x20), k(0xa0)),
        ]
    }

    #[test]
    fn replicas_of_the_same_writes_have_the_same_digests() {
        let (_da, a, _db, b) = replicas();
        let model = model(&finals());
        for (from, to) in arcs() {
            for depth in [0, 4, 12] {
                let seg = Segments::new(from, to, depth).unwrap();
                let want = digests_of(&model, &seg);
                assert_eq!(a.digests(&seg).unwrap(), want, "{seg:?}");
                assert_eq!(b.digests(&seg).unwrap(), want, "{seg:?}");
                if depth == 12 && from == to {
                    let filled = want.iter().filter(|d| **d != 0).count();
                    assert!(filled > model.len() / 2, "{filled} segments hold keys");
                }
            }
        }
    }

    /// A newer version of a key (whole or in pieces), a value turned into a tombstone or back,
    /// a key more: the one segment holding the key changes, and no other.
    #[test]
    fn one_changed_entry_changes_its_segment_alone() {
        let (_da, _a, _db, b) = replicas();
        let entries = finals();
        let (from, to) = (k(0xc0), k(0xa0));
        let segs: Vec<Segments> = [0, 4, 12]
            .map(|d| Segments::new(from, to, d).unwrap())
            .into();
        let digests = |s: &Storage| -> Vec<Vec<u64>> {
            segs.iter().map(|seg| s.digests(seg).unwrap()).collect()
        };
        // Keys of the arc, each of a kind: small, in one batch of pieces, in several, a
        // tombstone.
        let of_kind = |want: &dyn Fn(&Versioned<Vec<u8>>) -> bool| -> HashKey {
            entries
                .iter()
                .find(|(key, e)| in_arc(key, &from, &to) && want(e))
                .unwrap()
                .0
        };
        let small = of_kind(&|e| e.value.as_ref().is_some_and(|v| v.len() < 100));
        let pieces = of_kind(&|e| e.value.as_ref().is_some_and(|v| v.len() == INLINE_MAX + 1));
        let staged = of_kind(&|e| e.value.as_ref().is_some_and(|v| v.len() > ONE_BATCH_MAX));
        let tombstone = of_kind(&|e| e.is_tombstone());
        let fresh = HashKey::of(b"a key more");
        assert!(in_arc(&fresh, &from, &to) && !entries.iter().any(|(key, _)| *key == fresh));
        let changes = [
            (small, Versioned::value(version(5000), b"newer".to_vec())),
            (
                pieces,
                Versioned::value(version(5001), vec![1; INLINE_MAX + 1]),
            ),
            (staged, Versioned::value(version(5002), vec![2; 7])),
            (small, Versioned::tombstone(version(5003))),
            (pieces, Versioned::tombstone(version(5004))),
            (
                tombstone,
                Versioned::value(version(5005), vec![3; 4 * PIECE_BYTES]),
            ),
            (fresh, Versioned::value(version(5006), b"new".to_vec())),
            (
                HashKey::of(b"a tombstone more"),
                Versioned::tombstone(version(5007)),
            ),
        ];
        for (key, e) in changes {
            let before = digests(&b);
            assert!(b.apply(&key, e.clone()).unwrap().0);
            let after = digests(&b);
            for ((seg, before), after) in segs.iter().zip(&before).zip(&after) {
                let changed: Vec<u32> = (0..seg.count())
                    .filter(|i| before[*i as usize] != after[*i as usize])
                    .collect();
                let want = match in_arc(&key, &from, &to) {
                    true => vec![seg.index(&key)],
                    false => vec![],
                };
                assert_eq!(changed, want, "{key:?} to {e:?} at depth {}", seg.depth());
            }
        }
    }

    /// The arc's entries in ring order from its start, wrapping; as the model says, and the
    /// same in both replicas.
    #[test]
    fn versions_in_lists_the_entries_of_an_arc() {
        let (_da, a, _db, b) = replicas();
        let model = model(&finals());
        let mut arcs = arcs();
        // Around one key, and empty of keys.
        let one = finals()[7].0;
        arcs.extend([(one, one.wrapping_add(&num(1))), (one.prev(), one)]);
        for (from, to) in arcs {
            let mut want: Vec<(HashKey, Version, bool)> = model
                .iter()
                .filter(|(key, _)| in_arc(key, &from, &to))
                .map(|(key, (v, t))| (*key, *v, *t))
                .collect();
            want.sort_by_key(|(key, _, _)| distance(&from, key));
            for s in [&a, &b] {
                let got: Vec<_> = s.versions_in(&from, &to).map(Result::unwrap).collect();
                assert_eq!(got, want, "[{from:?}, {to:?})");
                let tombstones = want.iter().filter(|w| w.2).count() as u64;
                assert_eq!(
                    s.count_versions(&from, &to).unwrap(),
                    (want.len() as u64 - tombstones, tombstones)
                );
            }
        }
    }

    /// What no reader sees is not listed (placeholders, pieces without their piece 0); a
    /// placeholder does not hide the value in pieces beside it, nor pieces beside a whole
    /// entry add one.
    #[test]
    fn versions_in_skips_placeholders_and_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        let apply = |n: u8, e| assert!(s.apply(&k(n), e).unwrap().0);
        apply(1, Versioned::value(version(1), vec![1; 10]));
        // A placeholder alone.
        s.kv.insert(Tree::Data, k(2).as_bytes(), Vec::new())
            .unwrap();
        // A placeholder over a value in pieces.
        apply(3, Versioned::value(version(3), vec![3; 3 * PIECE_BYTES]));
        s.kv.insert(Tree::Data, k(3).as_bytes(), Vec::new())
            .unwrap();
        // Pieces without their piece 0 (an interrupted deletion).
        apply(4, Versioned::value(version(4), vec![4; 3 * PIECE_BYTES]));
        s.kv.remove(Tree::Data, RawKey::piece(&k(4), 0)).unwrap();
        // A piece 0 beside a whole entry, and beside a tombstone.
        apply(5, Versioned::value(version(5), vec![5; 10]));
        let stray = piece0(1, version(99), 8, 1, &[0; 8]);
        s.kv.insert(Tree::Data, RawKey::piece(&k(5), 0), stray.clone())
            .unwrap();
        apply(6, Versioned::tombstone(version(6)));
        s.kv.insert(Tree::Data, RawKey::piece(&k(6), 0), stray)
            .unwrap();
        apply(7, Versioned::value(version(7), vec![7; ONE_BATCH_MAX + 1]));
        let got: Vec<_> = s
            .versions_in(&HashKey::ZERO, &HashKey::ZERO)
            .map(Result::unwrap)
            .collect();
        let want = vec![
            (k(1), version(1), false),
            (k(3), version(3), false),
            (k(5), version(5), false),
            (k(6), version(6), true),
            (k(7), version(7), false),
        ];
        assert_eq!(got, want);
        // The readers agree.
        let read: Vec<_> = s
            .iter_arc_versioned(&HashKey::ZERO, &HashKey::ZERO)
            .map(|r| {
                r.map(|(key, e)| (key, e.version, e.is_tombstone()))
                    .unwrap()
            })
            .collect();
        assert_eq!(read, want);
    }

    /// A value in pieces is listed from its piece 0 alone: the scan steps over the others, one
    /// whose later pieces are gone is still listed (a read of it fails), and one whose piece 0
    /// is unreadable is damage.
    #[test]
    fn a_value_in_pieces_is_listed_from_its_piece_0() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        for n in 1..=3 {
            let e = Versioned::value(version(n.into()), vec![n; ONE_BATCH_MAX + 1]);
            assert!(s.apply(&k(n), e).unwrap().0);
        }
        // One raw entry read a key: each value's piece 0, none of its 128 others.
        let mut scan = s.heads(&HashKey::ZERO, &HashKey::ZERO);
        assert_eq!(scan.by_ref().count(), 3);
        assert_eq!(scan.seen, 3);
        let slot = live_slot(&s, &k(2)).unwrap() << 31;
        for i in 1..50 {
            assert!(s
                .kv
                .remove(Tree::Data, RawKey::piece(&k(2), slot | i))
                .unwrap()
                .is_some());
        }
        assert!(matches!(s.get(&k(2)), Err(Error::Damaged(_))));
        let got: Vec<_> = s
            .versions_in(&HashKey::ZERO, &HashKey::ZERO)
            .map(Result::unwrap)
            .collect();
        let want: Vec<_> = (1..=3).map(|n| (k(n), version(n.into()), false)).collect();
        assert_eq!(got, want);
        s.kv.insert(Tree::Data, RawKey::piece(&k(2), 0), &[1u8, 2, 3][..])
            .unwrap();
        let got: Vec<_> = s.versions_in(&HashKey::ZERO, &HashKey::ZERO).collect();
        assert!(
            matches!(got[..], [Ok(_), Err(Error::Damaged(_))]),
            "{got:?}"
        );
    }
}
