//! The owners' arcs a Ring has learned, so that a request goes straight to its key's owner.
//!
//! A peer P owns `[id(P), id(successor(P)))` (PROTOCOL.md 2): one OWN walk to P and one ABD to
//! it tell a whole arc, and every key in it can go to P without a walk. Nothing here routes
//! on its own authority: a peer that no longer owns a key answers `N` (a node joined), a peer
//! that left cannot be connected to, and either way the request goes through the Router (its
//! walk, retries and errors) and the arc is forgotten. Arcs are also forgotten after [`TTL`],
//! so that a peer that stopped being part of the ring without anyone noticing (restarted as a
//! ring of its own on the same address, say) is not asked for longer than that.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dht_store::client::Router;
use dht_store::protocol::{HashKey, PeerAddr};
use dht_store::ring::{arcs_overlap, id_of, in_arc};
use dht_store::Error;

/// How long a learned arc is trusted without being learned again.
pub const TTL: Duration = Duration::from_secs(5);

/// One learned arc.
struct Known {
    from: HashKey,
    to: HashKey,
    owner: PeerAddr,
    learned: Instant,
}

/// The arcs learned by one Ring (shared by its threads and its bulk calls).
#[derive(Default)]
pub struct Arcs {
    known: Mutex<Vec<Known>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Arcs {
    /// The owner of `key`, if a fresh learned arc holds it.
    pub fn owner_of(&self, key: &HashKey) -> Option<PeerAddr> {
        let now = Instant::now();
        let mut known = lock(&self.known);
        known.retain(|a| now.duration_since(a.learned) < TTL);
        known
            .iter()
            .find(|a| in_arc(key, &a.from, &a.to))
            .map(|a| a.owner)
    }

    /// `owner`'s arc ends at `successor`'s id; arcs it overlaps are stale and go.
    fn learn(&self, owner: PeerAddr, successor: PeerAddr) {
        let (from, to) = (id_of(&owner), id_of(&successor));
        let mut known = lock(&self.known);
        known.retain(|a| a.owner != owner && !arcs_overlap(&a.from, &a.to, &from, &to));
        known.push(Known {
            from,
            to,
            owner,
            learned: Instant::now(),
        });
    }

    /// Forgets what was learned of `owner` (it answered `N`, or failed).
    pub fn forget(&self, owner: PeerAddr) {
        lock(&self.known).retain(|a| a.owner != owner);
    }

    /// Walks to the owner of `key` with `router` and asks it for its successor (ABD), learning
    /// its arc; the owner, or the error of the walk or the ABD (the caller then leaves the key
    /// to the Router).
    pub async fn find(&self, router: &mut Router, key: &HashKey) -> Result<PeerAddr, Error> {
        let (owner, _) = router.owner(key).await?;
        let succ = match router.client(owner).await {
            Ok(c) => c.abd().await,
            Err(e) => Err(e),
        };
        match succ {
            Ok(succ) => {
                // An answer that does not hold the key is a ring in motion: learn nothing.
                if in_arc(key, &id_of(&owner), &id_of(&succ)) {
                    self.learn(owner, succ);
                }
                Ok(owner)
            }
            Err(e) => {
                router.forget(owner);
                Err(e)
            }
        }
    }
}
