//! The ring as pure functions: ids of addresses, arcs, owners, the OWN answer, finger targets.
//!
//! Nothing here does I/O or holds a lock; everything is a function of its arguments, so every
//! edge of the circle (key 0, key 2^160-1, a key equal to a peer id, rings of one and two,
//! wrap-around) is unit-tested below.

use crate::protocol::{HashKey, PeerAddr};

/// A peer as the ring sees it: where to reach it and where it sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The advertised address; the id is a function of it.
    pub addr: PeerAddr,
    /// SHA-1 of `"a.b.c.d:port"`, kept beside the address so that ownership checks on the
    /// request path never hash.
    pub id: HashKey,
}

impl Peer {
    pub fn new(addr: PeerAddr) -> Peer {
        Peer {
            addr,
            id: id_of(&addr),
        }
    }
}

/// A peer's id: SHA-1 of the ASCII text `"a.b.c.d:port"` (PROTOCOL.md section 2).
pub fn id_of(addr: &PeerAddr) -> HashKey {
    HashKey::of(addr.to_string().as_bytes())
}

/// How far `to` lies above `from`, going upward round the circle: `(to - from) mod 2^160`.
pub fn distance(from: &HashKey, to: &HashKey) -> HashKey {
    to.wrapping_sub(from)
}

/// Whether `key` lies in the half-open arc `[from, to)`, going upward and wrapping.
/// `from == to` is the whole circle (the arc of a ring of one).
pub fn in_arc(key: &HashKey, from: &HashKey, to: &HashKey) -> bool {
    from == to || distance(from, key) < distance(from, to)
}

/// The owner of `key` among peers with the given ids: the largest id `<= key`, or if there is
/// none, the largest id overall. `None` only for an empty set.
pub fn owner_of<'a>(key: &HashKey, ids: impl IntoIterator<Item = &'a HashKey>) -> Option<HashKey> {
    // The largest id <= key, wrapping, is the one the key lies least far above.
    ids.into_iter().min_by_key(|id| distance(id, key)).copied()
}

/// Among `known` peers, the one closest below-or-at `key` (wrapping): the OWN answer.
pub fn closest_preceding(key: &HashKey, known: impl IntoIterator<Item = Peer>) -> Option<Peer> {
    known.into_iter().min_by_key(|p| distance(&p.id, key))
}

/// The keys that fingers should cover: `id + 2^(159 - i)` for `i` in `0..n`, so that finger 0
/// is half-way round the circle, finger 1 a quarter, and so on.
pub fn finger_targets(id: &HashKey, n: usize) -> Vec<HashKey> {
    (0..n.min(160))
        .map(|i| id.wrapping_add(&HashKey::pow2(159 - i as u32)))
        .collect()
}

/// Whether the arcs `[a_from, a_to)` and `[b_from, b_to)` share a key.
pub fn arcs_overlap(a_from: &HashKey, a_to: &HashKey, b_from: &HashKey, b_to: &HashKey) -> bool {
    a_from == a_to || b_from == b_to || in_arc(b_from, a_from, a_to) || in_arc(a_from, b_from, b_to)
}

/// The contiguous key ranges of an arc in ring (= byte) order: one range, or two when the arc
/// wraps past 2^160-1. Each is `(start inclusive, end exclusive)`, `None` meaning "to the end".
pub fn arc_ranges(from: &HashKey, to: &HashKey) -> Vec<(HashKey, Option<HashKey>)> {
    if from < to {
        vec![(*from, Some(*to))]
    } else if *to == HashKey::ZERO {
        vec![(*from, None)]
    } else if from == to {
        vec![(HashKey::ZERO, None)]
    } else {
        vec![(*from, None), (HashKey::ZERO, Some(*to))]
    }
}

/// What a node knows of the ring around it.
///
/// The in-memory form of the ring state persisted by `storage` (as addresses only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingState {
    /// This node: its place, and the address it gives out in OWN answers.
    pub me: Peer,
    /// The successor list, nearest first: `successors[0]` is the successor (we own
    /// `[me.id, successors[0].id)`), then the peers after it round the ring, so that when the
    /// successor dies the next live one is already known (Chord keeps r successors so that r - 1
    /// failures at once cannot break the ring). Never empty: `[me]` in a ring of one, and `me`
    /// appears nowhere else. Kept in ring order by [`successor_list`].
    pub successors: Vec<Peer>,
    /// The peer below us, when known: whom a leave hands our range to.
    pub predecessor: Option<Peer>,
    /// Further peers spread round the ring, to shorten OWN walks.
    pub fingers: Vec<Peer>,
}

impl RingState {
    /// A ring of one: we are our own successor and own everything.
    pub fn alone(me: PeerAddr) -> RingState {
        let me = Peer::new(me);
        RingState {
            me,
            successors: vec![me],
            predecessor: None,
            fingers: Vec::new(),
        }
    }

    /// The next peer up the ring; we own `[me.id, successor.id)`. `me` in a ring of one.
    pub fn successor(&self) -> Peer {
        self.successors.first().copied().unwrap_or(self.me)
    }

    /// The peer after the successor: `me` in a ring of one or two (PROTOCOL.md 6).
    pub fn second_successor(&self) -> Peer {
        self.successors.get(1).copied().unwrap_or(self.me)
    }

    /// Replaces the successor list with `candidates` put in order by [`successor_list`].
    pub fn set_successors(&mut self, candidates: impl IntoIterator<Item = Peer>, max: usize) {
        self.successors = successor_list(&self.me, candidates, max);
    }

    /// Whether this node owns `key`: `key` in `[id(me), id(successor))`.
    pub fn owns(&self, key: &HashKey) -> bool {
        in_arc(key, &self.me.id, &self.successor().id)
    }

    /// Every peer we know, ourselves included (may repeat).
    pub fn known(&self) -> impl Iterator<Item = Peer> + '_ {
        std::iter::once(self.me)
            .chain(self.successors.iter().copied())
            .chain(self.predecessor)
            .chain(self.fingers.iter().copied())
    }

    /// The OWN answer: ourselves if we own `key`, else the known peer closest below it,
    /// skipping the peers in `skip` (found dead).
    pub fn own_answer(&self, key: &HashKey, skip: &[PeerAddr]) -> PeerAddr {
        if self.owns(key) {
            return self.me.addr;
        }
        closest_preceding(key, self.known().filter(|p| !skip.contains(&p.addr)))
            .map(|p| p.addr)
            .unwrap_or(self.me.addr)
    }

    /// Where the range this node holds ends when it keeps `k` copies besides the owner's
    /// (`replicas`): it holds `[id(me), id(held_until(k)))`, its own arc and the arcs of its `k`
    /// successors (the k-th successor's arc ends at the (k+1)-th). `me`, the whole circle, when
    /// the successor list has no more than `k` peers: a ring of at most k + 1 nodes.
    pub fn held_until(&self, k: usize) -> Peer {
        if k == 0 || self.is_alone() {
            return self.successor();
        }
        self.successors.get(k).copied().unwrap_or(self.me)
    }

    /// Whether `key` lies in the range this node holds with `k` copies (see
    /// [`RingState::held_until`]), leaving out the arcs of the successors `plain` names
    /// (peers that keep no replicas: they send no copies, so ours could only grow stale).
    pub fn holds(&self, key: &HashKey, k: usize, plain: &[PeerAddr]) -> bool {
        if !in_arc(key, &self.me.id, &self.held_until(k).id) {
            return false;
        }
        if self.owns(key) || plain.is_empty() {
            return true;
        }
        // The copy arc the key lies in, `[successors[i], successors[i + 1])`: the successor
        // nearest below it.
        let owner = self
            .successors
            .iter()
            .take(k)
            .min_by_key(|p| distance(&p.id, key));
        owner.is_none_or(|o| !plain.contains(&o.addr))
    }

    /// Whether we are alone in the ring.
    pub fn is_alone(&self) -> bool {
        self.successor().addr == self.me.addr
    }
}

/// A successor list for `me` from `candidates` given nearest first (a successor, then what
/// ABD answers or a CON names after it): each kept only if it lies further round the ring from
/// `me` than the one kept before it (a repeat, `me`, or a peer that would go backwards ends
/// nothing, it is skipped), at most `max` of them; `[me]` if none is left.
pub fn successor_list(
    me: &Peer,
    candidates: impl IntoIterator<Item = Peer>,
    max: usize,
) -> Vec<Peer> {
    let mut list: Vec<Peer> = Vec::new();
    for c in candidates {
        if list.len() >= max.max(1) {
            break;
        }
        if c.addr == me.addr || c.id == me.id {
            continue;
        }
        let further = list
            .last()
            .is_none_or(|last| distance(&me.id, &c.id) > distance(&me.id, &last.id));
        if further {
            list.push(c);
        }
    }
    if list.is_empty() {
        list.push(*me);
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn k(n: u64) -> HashKey {
        let mut b = [0u8; 20];
        b[12..].copy_from_slice(&n.to_be_bytes());
        HashKey(b)
    }

    fn addr(port: u16) -> PeerAddr {
        PeerAddr::new([127, 0, 0, 1].into(), port)
    }

    #[test]
    fn id_is_sha1_of_the_address_text() {
        // SHA-1(b"127.0.0.1:5000"), computed independently (Python's hashlib).
        let expect: HashKey = "b660cd6180a4629b8e5f3c7eaeedcddf07dd1b1d".parse().unwrap();
        assert_eq!(id_of(&addr(5000)), expect);
        assert_eq!(
            HashKey::of(b"abc").to_string(),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }

    #[test]
    fn arithmetic_wraps() {
        assert_eq!(HashKey::ZERO.prev(), HashKey::MAX);
        assert_eq!(HashKey::MAX.wrapping_add(&k(1)), HashKey::ZERO);
        assert_eq!(k(5).wrapping_sub(&k(7)), HashKey::MAX.wrapping_sub(&k(1)));
        assert_eq!(HashKey::pow2(159).0[0], 0x80);
        assert_eq!(HashKey::pow2(0), k(1));
    }

    #[test]
    fn arcs_are_half_open_and_wrap() {
        assert!(in_arc(&k(10), &k(10), &k(20)));
        assert!(in_arc(&k(19), &k(10), &k(20)));
        assert!(!in_arc(&k(20), &k(10), &k(20)));
        assert!(!in_arc(&k(9), &k(10), &k(20)));
        // Wrapping arc [MAX-1, 5): holds MAX and 0, not 5.
        let from = HashKey::MAX.prev();
        assert!(in_arc(&HashKey::MAX, &from, &k(5)));
        assert!(in_arc(&HashKey::ZERO, &from, &k(5)));
        assert!(in_arc(&k(4), &from, &k(5)));
        assert!(!in_arc(&k(5), &from, &k(5)));
        // from == to is the whole circle.
        assert!(in_arc(&HashKey::ZERO, &k(7), &k(7)));
        assert!(in_arc(&HashKey::MAX, &k(7), &k(7)));
    }

    #[test]
    fn owner_is_largest_id_at_or_below_the_key_wrapping() {
        let ids = [k(100), k(200), k(300)];
        assert_eq!(
            owner_of(&k(100), &ids),
            Some(k(100)),
            "key equal to a peer id"
        );
        assert_eq!(owner_of(&k(199), &ids), Some(k(100)));
        assert_eq!(owner_of(&k(200), &ids), Some(k(200)));
        assert_eq!(
            owner_of(&k(99), &ids),
            Some(k(300)),
            "below every id wraps to the largest"
        );
        assert_eq!(owner_of(&HashKey::ZERO, &ids), Some(k(300)), "key 0");
        assert_eq!(owner_of(&HashKey::MAX, &ids), Some(k(300)), "key 2^160-1");
        assert_eq!(owner_of(&k(5), &[] as &[HashKey]), None);
    }

    #[test]
    fn owner_at_the_ends_of_the_circle() {
        // A peer at id 0 owns key 0; a peer at 2^160-1 owns only key 2^160-1.
        let ids = [HashKey::ZERO, HashKey::MAX];
        assert_eq!(owner_of(&HashKey::ZERO, &ids), Some(HashKey::ZERO));
        assert_eq!(owner_of(&HashKey::MAX.prev(), &ids), Some(HashKey::ZERO));
        assert_eq!(owner_of(&HashKey::MAX, &ids), Some(HashKey::MAX));
    }

    #[test]
    fn ring_of_one_owns_everything_and_answers_itself() {
        let r = RingState::alone(addr(5000));
        for key in [HashKey::ZERO, HashKey::MAX, r.me.id, r.me.id.prev(), k(42)] {
            assert!(r.owns(&key));
            assert_eq!(r.own_answer(&key, &[]), r.me.addr);
        }
        assert!(r.is_alone());
    }

    fn ring_of(ports: &[u16]) -> Vec<RingState> {
        let mut peers: Vec<Peer> = ports.iter().map(|p| Peer::new(addr(*p))).collect();
        peers.sort_by_key(|p| p.id);
        let n = peers.len();
        (0..n)
            .map(|i| {
                let mut r = RingState::alone(peers[i].addr);
                r.set_successors((1..n).map(|d| peers[(i + d) % n]).take(2), 4);
                r.predecessor = Some(peers[(i + n - 1) % n]);
                r
            })
            .collect()
    }

    #[test]
    fn ring_of_two_splits_the_circle() {
        let ring = ring_of(&[5000, 5001]);
        let (a, b) = (&ring[0], &ring[1]);
        assert!(a.me.id < b.me.id);
        for key in [
            HashKey::ZERO,
            HashKey::MAX,
            a.me.id,
            b.me.id,
            a.me.id.prev(),
            b.me.id.prev(),
            k(1),
        ] {
            assert_ne!(a.owns(&key), b.owns(&key), "exactly one owner of {key}");
            let owner = owner_of(&key, &[a.me.id, b.me.id]).unwrap();
            assert_eq!(a.owns(&key), owner == a.me.id);
            // Each answers OWN with the owner directly: the other is its successor.
            assert_eq!(Peer::new(a.own_answer(&key, &[])).id, owner);
            assert_eq!(Peer::new(b.own_answer(&key, &[])).id, owner);
        }
        // Key 0 and 2^160-1 belong to the larger id (wrap-around).
        assert!(b.owns(&HashKey::MAX) && b.owns(&HashKey::ZERO));
    }

    #[test]
    fn own_answer_skips_dead_peers_and_never_overshoots() {
        let ring = ring_of(&[5000, 5001, 5002, 5003, 5004]);
        let r = &ring[0];
        let key = ring[3].me.id;
        // Known: me, succ (1), succ2 (2), pred (4). The closest at-or-below ring[3].id is ring[2].
        assert_eq!(r.own_answer(&key, &[]), ring[2].addr_of());
        assert_eq!(r.own_answer(&key, &[ring[2].me.addr]), ring[1].me.addr);
    }

    impl RingState {
        fn addr_of(&self) -> PeerAddr {
            self.me.addr
        }
    }

    #[test]
    fn a_successor_list_goes_round_the_ring_once_and_never_holds_us() {
        let ring = ring_of(&[5000, 5001, 5002, 5003, 5004, 5005]);
        let peers: Vec<Peer> = ring.iter().map(|r| r.me).collect();
        let me = peers[2];
        let next = |d: usize| peers[(2 + d) % 6];
        // In ring order: kept, capped at max.
        let l = successor_list(&me, [next(1), next(2), next(3), next(4)], 3);
        assert_eq!(l, vec![next(1), next(2), next(3)]);
        // Us, repeats and peers that go backwards (a stale ABD answer) are skipped.
        let l = successor_list(&me, [next(1), me, next(3), next(2), next(3), next(5)], 4);
        assert_eq!(l, vec![next(1), next(3), next(5)]);
        // Nothing left: a ring of one.
        assert_eq!(successor_list(&me, [me], 4), vec![me]);
        assert_eq!(successor_list(&me, [], 4), vec![me]);
        // The state's accessors: the second successor of a ring of two is us.
        let mut r = RingState::alone(me.addr);
        assert_eq!((r.successor(), r.second_successor()), (me, me));
        r.set_successors([next(1)], 4);
        assert_eq!((r.successor(), r.second_successor()), (next(1), me));
        assert!(r.owns(&me.id) && !r.owns(&next(1).id));
    }

    #[test]
    fn finger_targets_halve_the_circle() {
        let t = finger_targets(&HashKey::ZERO, 5);
        assert_eq!(t.len(), 5);
        assert_eq!(t[0], HashKey::pow2(159));
        assert_eq!(t[4], HashKey::pow2(155));
        // From near the top they wrap.
        let t = finger_targets(&HashKey::MAX, 1);
        assert_eq!(t[0], HashKey::pow2(159).prev());
    }

    #[test]
    fn arc_ranges_cover_the_arc_in_byte_order() {
        assert_eq!(arc_ranges(&k(1), &k(5)), vec![(k(1), Some(k(5)))]);
        assert_eq!(
            arc_ranges(&k(5), &k(1)),
            vec![(k(5), None), (HashKey::ZERO, Some(k(1)))]
        );
        assert_eq!(arc_ranges(&k(5), &HashKey::ZERO), vec![(k(5), None)]);
        assert_eq!(arc_ranges(&k(5), &k(5)), vec![(HashKey::ZERO, None)]);
    }

    fn arb_key() -> impl Strategy<Value = HashKey> {
        proptest::array::uniform20(any::<u8>()).prop_map(HashKey)
    }

    proptest! {
        #[test]
        fn owner_agrees_with_arcs(ids in proptest::collection::btree_set(arb_key(), 1..8), key in arb_key()) {
            let ids: Vec<HashKey> = ids.into_iter().collect();
            let owner = owner_of(&key, &ids).unwrap();
            // The owner's arc, up to the next id round the circle, holds the key; no other does.
            for (i, id) in ids.iter().enumerate() {
                let next = ids[(i + 1) % ids.len()];
                prop_assert_eq!(in_arc(&key, id, &next), *id == owner);
            }
        }

        #[test]
        fn arc_ranges_agree_with_in_arc(a in arb_key(), b in arb_key(), key in arb_key()) {
            let in_ranges = arc_ranges(&a, &b).iter().any(|(s, e)| key >= *s && e.is_none_or(|e| key < e));
            prop_assert_eq!(in_ranges, in_arc(&key, &a, &b));
        }

        #[test]
        fn add_and_sub_are_inverse(a in arb_key(), b in arb_key()) {
            prop_assert_eq!(a.wrapping_add(&b).wrapping_sub(&b), a);
        }
    }

    #[test]
    fn a_node_holds_its_arc_and_those_of_its_k_successors() {
        let me = Peer {
            addr: addr(1),
            id: k(100),
        };
        let p = |n: u64| Peer {
            addr: addr(n as u16),
            id: k(n),
        };
        let mut r = RingState::alone(me.addr);
        r.me = me;
        r.successors = vec![me];
        assert_eq!(r.held_until(2), me, "a ring of one holds everything");
        assert!(r.holds(&k(5), 2, &[]));
        r.successors = vec![p(200), p(300), p(400), p(50)];
        assert_eq!(r.held_until(0), p(200));
        assert_eq!(r.held_until(2), p(400));
        assert!(r.holds(&k(100), 2, &[]) && r.holds(&k(399), 2, &[]));
        assert!(!r.holds(&k(400), 2, &[]) && !r.holds(&k(99), 2, &[]));
        assert!(!r.holds(&k(60), 2, &[]) && !r.holds(&k(200), 0, &[]));
        // A plain successor's arc is not held as a copy; the others are, and ours always.
        let plain = [p(300).addr];
        assert!(r.holds(&k(150), 2, &plain) && r.holds(&k(250), 2, &plain));
        assert!(!r.holds(&k(300), 2, &plain) && !r.holds(&k(399), 2, &plain));
        // Three nodes: the list ends before the k-th successor; everything is held.
        r.successors = vec![p(200), p(300)];
        assert_eq!(r.held_until(2), me);
        assert!(r.holds(&k(50), 2, &[]));
        assert_eq!(r.held_until(1), p(300));
    }
}
