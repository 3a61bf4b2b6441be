//! The peers this node has known, and what it last saw of each: a bounded set, saved in the
//! data directory, of every peer met (successors, predecessor, fingers, peers named in OWN and
//! ABD answers, joiners and the current owners they joined through). It is where a node looks
//! for the ring when every successor it knew is dead, and where the place check
//! (`maintenance`) finds peers of a ring that split from ours; the liveness beside it is what
//! OWN answers and the log go by.
//!
//! Pure bookkeeping: no I/O here. [`super::Node`] holds it under a lock, logs the changes of
//! state it reports, and saves the set when [`Peers::take_changed`] says so.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::protocol::{is_peer_address, PeerAddr};

/// Most peers kept. Past it, meeting a new peer forgets the one longest dead (or, if none is
/// dead, the one heard from longest ago): a ring's worth of peers for the place check and the
/// successor search, a few hundred bytes on disk.
pub const KNOWN_MAX: usize = 64;

/// What we last saw of a peer.
#[derive(Clone, Copy, Debug, Default)]
struct Health {
    /// When it last answered a request of ours.
    answered: Option<Instant>,
    /// Since when it has failed to answer, if its last request failed.
    dead_since: Option<Instant>,
}

/// A change of a peer's state, for the one log line it deserves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// It answered after a failure.
    Back,
    /// It failed after answering (or before we ever heard from it).
    Down,
}

/// The known peers and their liveness.
#[derive(Debug)]
pub struct Peers {
    /// This node, never a member of its own set.
    me: PeerAddr,
    /// Known peers in the order met: the order the place check goes round in.
    known: Vec<PeerAddr>,
    /// What we last saw of each known peer.
    health: HashMap<PeerAddr, Health>,
    /// The set changed since [`Peers::take_changed`] last handed it out for saving.
    changed: bool,
    /// Where the round-robin of [`Peers::next_to_probe`] is.
    cursor: usize,
}

impl Peers {
    /// The set as saved, plus `also` (the peers of the ring state).
    pub fn new(
        me: PeerAddr,
        saved: Vec<PeerAddr>,
        also: impl IntoIterator<Item = PeerAddr>,
    ) -> Peers {
        let mut p = Peers {
            me,
            known: Vec::new(),
            health: HashMap::new(),
            changed: false,
            cursor: 0,
        };
        for a in saved {
            p.meet(a);
        }
        p.changed = false;
        for a in also {
            p.meet(a);
        }
        p
    }

    /// Adds `peer` to the set (if it is not there, not us, and an address a peer can have).
    pub fn meet(&mut self, peer: PeerAddr) {
        if peer == self.me || self.health.contains_key(&peer) || !is_peer_address(&peer) {
            return;
        }
        if self.known.len() >= KNOWN_MAX {
            self.evict();
        }
        self.known.push(peer);
        self.health.insert(peer, Health::default());
        self.changed = true;
    }

    /// Forgets the peer least worth keeping: the longest dead, else the longest silent.
    fn evict(&mut self) {
        let h = &self.health;
        let worst = self.known.iter().enumerate().min_by_key(|(_, a)| {
            let h = h.get(*a).copied().unwrap_or_default();
            // Dead ones first (false < true), the earliest death first; then by last answer,
            // never before any.
            (h.dead_since.is_none(), h.dead_since, h.answered)
        });
        if let Some((i, a)) = worst.map(|(i, a)| (i, *a)) {
            self.known.remove(i);
            self.health.remove(&a);
            if self.cursor > i {
                self.cursor -= 1;
            }
        }
    }

    /// Forgets `peer` (it left the ring).
    pub fn forget(&mut self, peer: &PeerAddr) {
        if let Some(i) = self.known.iter().position(|a| a == peer) {
            self.known.remove(i);
            self.health.remove(peer);
            if self.cursor > i {
                self.cursor -= 1;
            }
            self.changed = true;
        }
    }

    /// Forgets every peer (we left the ring: a node started on this directory again is new).
    pub fn clear(&mut self) {
        self.changed = !self.known.is_empty();
        self.known.clear();
        self.health.clear();
        self.cursor = 0;
    }

    /// `peer` answered just now. Returns [`Change::Back`] if it had been failing.
    pub fn answered(&mut self, peer: PeerAddr) -> Option<Change> {
        self.meet(peer);
        // Not kept (us, or no peer's address): nothing to say.
        let h = self.health.get_mut(&peer)?;
        let was_dead = h.dead_since.take().is_some();
        h.answered = Some(Instant::now());
        was_dead.then_some(Change::Back)
    }

    /// A request to `peer` failed just now. Returns [`Change::Down`] on the first failure
    /// after an answer (or the first ever).
    pub fn failed(&mut self, peer: PeerAddr) -> Option<Change> {
        self.meet(peer);
        // Not kept (us, or no peer's address): nothing to say.
        let h = self.health.get_mut(&peer)?;
        if h.dead_since.is_some() {
            return None;
        }
        h.dead_since = Some(Instant::now());
        Some(Change::Down)
    }

    /// Whether `peer`'s last request failed.
    pub fn is_dead(&self, peer: &PeerAddr) -> bool {
        self.health
            .get(peer)
            .is_some_and(|h| h.dead_since.is_some())
    }

    /// Whether `peer` answered within `within` and has not failed since.
    pub fn answered_within(&self, peer: &PeerAddr, within: Duration) -> bool {
        self.health.get(peer).is_some_and(|h| {
            h.dead_since.is_none() && h.answered.is_some_and(|t| t.elapsed() < within)
        })
    }

    /// Every known peer, in the order met.
    pub fn known(&self) -> &[PeerAddr] {
        &self.known
    }

    /// The next known peer round-robin, skipping those in `skip`; `None` if there is none.
    pub fn next_to_probe(&mut self, skip: &[PeerAddr]) -> Option<PeerAddr> {
        for _ in 0..self.known.len() {
            self.cursor %= self.known.len();
            let a = self.known[self.cursor];
            self.cursor += 1;
            if !skip.contains(&a) {
                return Some(a);
            }
        }
        None
    }

    /// The set, if it changed since it was last taken (to be saved).
    pub fn take_changed(&mut self) -> Option<Vec<PeerAddr>> {
        std::mem::take(&mut self.changed).then(|| self.known.clone())
    }

    /// One line for INF: each peer and whether it answered lately (`alive`), failed (`dead`)
    /// or was never asked since the start (`unasked`).
    pub fn describe(&self) -> String {
        if self.known.is_empty() {
            return "none".into();
        }
        let mut out = format!("{}:", self.known.len());
        for (a, state) in self.states() {
            out.push_str(&format!(" {a} ({state}),"));
        }
        out.pop();
        out
    }

    /// Each known peer, in the order met, with what we last saw of it: `alive`, `dead` or
    /// `unasked` (as [`Peers::describe`] says it).
    pub fn states(&self) -> Vec<(PeerAddr, &'static str)> {
        let state = |a: &PeerAddr| match self.health.get(a) {
            Some(h) if h.dead_since.is_some() => "dead",
            Some(h) if h.answered.is_some() => "alive",
            _ => "unasked",
        };
        self.known.iter().map(|a| (*a, state(a))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> PeerAddr {
        PeerAddr::new([127, 0, 0, 1].into(), port)
    }

    #[test]
    fn a_peer_is_reported_once_per_change_of_state() {
        let mut p = Peers::new(addr(1), vec![], []);
        assert_eq!(p.failed(addr(2)), Some(Change::Down));
        assert_eq!(p.failed(addr(2)), None, "still dead: nothing to say");
        assert!(p.is_dead(&addr(2)));
        assert_eq!(p.answered(addr(2)), Some(Change::Back));
        assert_eq!(p.answered(addr(2)), None);
        assert!(!p.is_dead(&addr(2)));
        assert!(p.answered_within(&addr(2), Duration::from_secs(5)));
        assert_eq!(p.failed(addr(2)), Some(Change::Down));
        assert!(!p.answered_within(&addr(2), Duration::from_secs(5)));
    }

    #[test]
    fn we_are_never_among_our_known_peers() {
        let mut p = Peers::new(addr(1), vec![addr(1), addr(2)], [addr(1)]);
        p.meet(addr(1));
        assert_eq!(p.answered(addr(1)), None);
        assert_eq!(p.failed(addr(1)), None);
        assert_eq!(p.known(), &[addr(2)]);
    }

    #[test]
    fn the_set_is_bounded_and_forgets_the_longest_dead_first() {
        let mut p = Peers::new(addr(1), vec![], []);
        for port in 0..KNOWN_MAX as u16 {
            p.answered(addr(100 + port));
        }
        p.failed(addr(110));
        p.failed(addr(105));
        p.meet(addr(9000));
        assert_eq!(p.known().len(), KNOWN_MAX);
        assert!(
            !p.known().contains(&addr(110)),
            "the first to die goes first"
        );
        assert!(p.known().contains(&addr(105)));
        p.meet(addr(9001));
        assert!(!p.known().contains(&addr(105)));
        // No dead ones left: the one never heard from goes (9000 never answered).
        p.meet(addr(9002));
        assert!(!p.known().contains(&addr(9000)));
        assert!(p.known().contains(&addr(9002)));
    }

    #[test]
    fn addresses_nobody_can_have_are_not_kept_and_a_leaver_is_forgotten() {
        let mut p = Peers::new(addr(1), vec![], []);
        for bad in [
            "0.0.0.0:5000",
            "255.255.255.255:5000",
            "224.0.0.1:5000",
            "127.0.0.1:0",
        ] {
            let a: PeerAddr = bad.parse().unwrap();
            p.meet(a);
            assert_eq!(p.answered(a), None);
            assert_eq!(p.failed(a), None);
        }
        assert!(p.known().is_empty());
        p.meet(addr(2));
        p.meet(addr(3));
        p.take_changed();
        p.forget(&addr(2));
        assert_eq!(p.known(), &[addr(3)]);
        assert_eq!(p.take_changed(), Some(vec![addr(3)]));
        p.clear();
        assert_eq!(p.take_changed(), Some(vec![]));
        assert!(p.known().is_empty());
    }

    #[test]
    fn probes_go_round_the_set_and_changes_are_handed_out_once() {
        let mut p = Peers::new(addr(1), vec![addr(2), addr(3)], []);
        assert_eq!(p.take_changed(), None, "the saved set is not a change");
        p.meet(addr(4));
        assert_eq!(p.take_changed(), Some(vec![addr(2), addr(3), addr(4)]));
        assert_eq!(p.take_changed(), None);
        let seen: Vec<_> = (0..6).filter_map(|_| p.next_to_probe(&[addr(3)])).collect();
        assert_eq!(
            seen,
            vec![addr(2), addr(4), addr(2), addr(4), addr(2), addr(4)]
        );
        assert_eq!(p.next_to_probe(&[addr(2), addr(3), addr(4)]), None);
        assert!(p.describe().starts_with("3: 127.0.0.1:2 (unasked)"));
    }
}
