//! Ring maintenance (PROTOCOL.md sections 3 and 6): the successor list (PUL of the successor,
//! ABD down the list, the next live one adopted when the successor dies, a search through
//! every peer we have known when they all are), fingers and predecessor by OWN walks, the
//! place check that brings a node given up (or a ring split off) back; and the repair pass
//! that hands misplaced entries to their owners.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, error, info, warn};

use super::handoff::{self, Place};
use super::{walk, Node};
use crate::client::Router;
use crate::error::Result;
use crate::protocol::{HashKey, PeerAddr, Status};
use crate::ring::{distance, finger_targets, successor_list, Peer, RingState};
use crate::storage::{Value, Versioned};

/// CONs a place check tries when it finds another peer owning our id.
const PLACE_JOIN_ATTEMPTS: usize = 2;

fn interval(node: &Node) -> Duration {
    Duration::from_millis(node.config.maintenance_interval_ms.max(50))
}

/// The maintenance loop: one round per `maintenance_interval_ms`.
pub async fn run(node: Arc<Node>) {
    let every = interval(&node);
    let mut misses = 0u32;
    let mut tick = 0usize;
    loop {
        tokio::time::sleep(every).await;
        if node.departed() {
            return;
        }
        // A round changes the ring state: never in the middle of a handoff, and no handoff
        // starts in the middle of a round (an incoming CON or DIS waits for it).
        let Ok(_one) = node.handoff.try_lock() else {
            continue;
        };
        tick += 1;
        if let Err(e) = check_successors(&node, &mut misses).await {
            warn!("maintenance: {e}");
        }
        let fingers = node.config.fingers;
        if fingers > 0 {
            if let Err(e) = refresh_finger(&node, tick % fingers).await {
                debug!("maintenance: finger {}: {e}", tick % fingers);
            }
        }
        if tick.is_multiple_of(3) {
            if let Err(e) = refresh_predecessor(&node).await {
                debug!("maintenance: predecessor: {e}");
            }
        }
        if let Err(e) = node.save_peers().await {
            warn!("maintenance: could not save the known peers: {e}");
        }
    }
}

/// PUL the successor; once it has missed `dead_after` in a row, adopt the next live peer of
/// the successor list, or if none answers the successor found through the peers we know
/// ([`find_successor`]); we become a ring of one only if no peer we know answers. Then the
/// list is rebuilt from the live successor ([`refresh_successors`]). A ring of one that knows
/// peers looks for its place among them every few rounds ([`rejoin_when_alone`]).
async fn check_successors(node: &Arc<Node>, misses: &mut u32) -> Result<()> {
    let ring = node.ring().clone();
    let me = ring.me;
    if ring.is_alone() {
        *misses = 0;
        // About one round in ALONE_SEARCH_EVERY, at random: two rings of one that search at
        // once would each wait for the other's handoff lock.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        if (nanos as usize).is_multiple_of(ALONE_SEARCH_EVERY) {
            return rejoin_when_alone(node, &ring).await;
        }
        return Ok(());
    }
    let enc = node.config.address_encoding;
    let succ = ring.successor();
    if walk::pul(succ.addr, enc).await {
        *misses = 0;
        node.mark_alive(succ.addr);
        return refresh_successors(node, &ring).await;
    }
    node.mark_failed(succ.addr, "PUL of our successor");
    *misses += 1;
    if *misses < node.config.dead_after {
        debug!("successor {} missed {misses} PUL(s)", succ.addr);
        return Ok(());
    }
    *misses = 0;
    let new = match next_successor(node, &ring).await? {
        Next::Adopt(p) => p,
        Next::Keep | Next::Rejoined => return Ok(()),
    };
    let max = node.config.successors;
    let changed = node
        .update_ring(|r| {
            if r.successor().addr != succ.addr {
                return false;
            }
            let after: Vec<Peer> = r.successors.clone();
            if new == me {
                r.successors = vec![me];
            } else {
                r.set_successors(std::iter::once(new).chain(after), max);
            }
            true
        })
        .await?;
    node.forget(succ.addr);
    if changed {
        warn!("successor {} is dead: adopted {}", succ.addr, new.addr);
        node.repair.notify_one();
        if new != me {
            let ring = node.ring().clone();
            refresh_successors(node, &ring).await?;
        }
    }
    Ok(())
}

/// Rounds between two searches of a ring of one for the ring it was part of.
const ALONE_SEARCH_EVERY: usize = 5;

/// What to do about a dead successor.
enum Next {
    /// Adopt this one (ourselves: nobody we know answers).
    Adopt(Peer),
    /// It answers again: keep it.
    Keep,
    /// The ring went on without us, and we joined again through the owner of our id.
    Rejoined,
}

/// The successor to adopt when ours is dead: the first live peer of the list after it, or the
/// one found through the peers we have known, or (only if none of them answers, nor the
/// successor once more) ourselves. If the search finds our id owned by another peer, we join
/// again through it here (this round holds `Node::handoff`).
async fn next_successor(node: &Arc<Node>, ring: &RingState) -> Result<Next> {
    let enc = node.config.address_encoding;
    for c in ring.successors.iter().skip(1) {
        if walk::pul(c.addr, enc).await {
            node.mark_alive(c.addr);
            return Ok(Next::Adopt(*c));
        }
        node.mark_failed(c.addr, "PUL of a successor");
    }
    let tried: Vec<PeerAddr> = ring.successors.iter().map(|p| p.addr).collect();
    match find_successor(node, ring, &tried).await {
        Found::Successor(c) => {
            warn!(
                "every successor we listed is dead: {} found through the peers we have known",
                c.addr
            );
            Ok(Next::Adopt(c))
        }
        Found::Claimed { owner } => {
            warn!(
                "every successor we listed is dead, and {owner} owns our id: the ring went on \
                 without us; joining again through it, keeping our entries"
            );
            if handoff::rejoin_locked(node, owner, PLACE_JOIN_ATTEMPTS).await? {
                info!("joined the ring again through {owner}");
            }
            Ok(Next::Rejoined)
        }
        Found::Nobody => {
            // Never a ring of one on a stale answer: the successor, once more.
            let succ = ring.successor();
            if walk::pul(succ.addr, enc).await {
                node.mark_alive(succ.addr);
                return Ok(Next::Keep);
            }
            let tried: Vec<String> = tried.iter().map(|a| a.to_string()).collect();
            error!(
                "every successor ({}) is dead and no peer we have known answers: this node is \
                 a ring of one until one does",
                tried.join(", ")
            );
            Ok(Next::Adopt(ring.me))
        }
    }
}

/// A ring of one that knows peers: if one answers, find our place among them as when every
/// successor died. The ring may still name us (link to our successor), or may have gone on
/// without us (join again through the owner of our id). Peers in a ring never join through a
/// ring of one (`handoff::check_place`), so this is how one that was cut off from everyone
/// comes back.
async fn rejoin_when_alone(node: &Arc<Node>, ring: &RingState) -> Result<()> {
    if node.known_peers().is_empty() {
        return Ok(());
    }
    match find_successor(node, ring, &[]).await {
        Found::Nobody => Ok(()),
        Found::Successor(c) => {
            let max = node.config.successors;
            let changed = node
                .update_ring(|r| {
                    if !r.is_alone() {
                        return false;
                    }
                    r.set_successors([c], max);
                    true
                })
                .await?;
            if changed {
                warn!(
                    "a ring of one no longer: {} answers and the ring still names us, so it is \
                     our successor again",
                    c.addr
                );
                node.repair.notify_one();
                let ring = node.ring().clone();
                refresh_successors(node, &ring).await?;
            }
            Ok(())
        }
        Found::Claimed { owner } => {
            warn!(
                "a ring of one no longer: {owner} owns our id in a ring of its own; joining \
                 again through it, keeping our entries"
            );
            if handoff::rejoin_locked(node, owner, PLACE_JOIN_ATTEMPTS).await? {
                info!("joined the ring again through {owner}");
            }
            Ok(())
        }
    }
}

/// Rebuilds the successor list from the successor of `ring` (which answered): each peer's
/// ABD names the next, until the list is full or comes round to us. Past a peer that does not
/// answer, what the old list held beyond it is kept (as candidates only: a successor is PULed
/// before it is adopted), so that no entry outlives a round unasked while the ring is whole.
async fn refresh_successors(node: &Node, ring: &RingState) -> Result<()> {
    let me = ring.me;
    let enc = node.config.address_encoding;
    let max = node.config.successors;
    let succ = ring.successor();
    let mut list = vec![succ];
    let mut cur = succ;
    let mut broken = false;
    while list.len() < max {
        match walk::abd(cur.addr, enc).await {
            Ok(a) => {
                node.mark_alive(cur.addr);
                node.meet([a]);
                let p = Peer::new(a);
                // Round to us, or an answer that goes backwards (a peer still repairing).
                if a == me.addr || distance(&me.id, &p.id) <= distance(&me.id, &cur.id) {
                    break;
                }
                list.push(p);
                cur = p;
            }
            Err(_) => {
                node.mark_failed(cur.addr, "ABD of a successor");
                broken = true;
                break;
            }
        }
    }
    if broken {
        list.extend(ring.successors.iter().copied());
    }
    let list = successor_list(&me, list, max);
    node.update_ring(|r| {
        let change = r.successor() == succ && r.successors != list;
        if change {
            r.successors = list.clone();
        }
        change
    })
    .await?;
    if !broken && node.ring().successor() == succ {
        node.note_successors_fresh();
    }
    Ok(())
}

/// What the search for a successor found.
enum Found {
    /// The nearest live peer above us, and the ring agrees: it names us as the owner of the
    /// key just below it.
    Successor(Peer),
    /// The nearest live peer above us answers, but the ring says `owner` owns the key just
    /// below it, and so our id: the ring went on without us.
    Claimed { owner: PeerAddr },
    /// No peer we have known answers.
    Nobody,
}

/// When every successor is dead: the nearest live peer above us among every peer we have
/// known, checked with the ring (an OWN walk for the key just below it, from it, which ends
/// at its predecessor: us if the ring agrees, a nearer peer to try instead, or one whose arc
/// covers us).
async fn find_successor(node: &Node, ring: &RingState, tried: &[PeerAddr]) -> Found {
    let me = ring.me;
    let enc = node.config.address_encoding;
    let mut candidates: Vec<Peer> = node
        .known_peers()
        .into_iter()
        .chain(ring.known().map(|p| p.addr))
        .filter(|a| *a != me.addr && !tried.contains(a))
        .map(Peer::new)
        .collect();
    candidates.sort_by_key(|p| distance(&me.id, &p.id));
    candidates.dedup();
    // All asked at once: a search through peers that are down costs one PUL timeout, not one
    // per peer (it runs inside a maintenance round, which holds up handoffs).
    let mut puls = tokio::task::JoinSet::new();
    for c in &candidates {
        let a = c.addr;
        puls.spawn(async move { (a, walk::pul(a, enc).await) });
    }
    let mut alive = Vec::new();
    while let Some(answer) = puls.join_next().await {
        let Ok((a, up)) = answer else { continue };
        if up {
            node.mark_alive(a);
            alive.push(a);
        } else {
            node.mark_failed(a, "PUL in the search for a successor");
        }
    }
    // The nearest that answered, moved nearer while the ring names a peer between us and it.
    let Some(mut cand) = candidates.into_iter().find(|c| alive.contains(&c.addr)) else {
        return Found::Nobody;
    };
    for _ in 0..walk::MAX_HOPS {
        let below = cand.id.prev();
        let o = match walk::walk(cand.addr, &below, me.addr, enc).await {
            Ok(o) => o,
            Err(_) => break,
        };
        if o == me.addr {
            break;
        }
        let p = Peer::new(o);
        if p != cand && distance(&me.id, &p.id) < distance(&me.id, &cand.id) {
            cand = p;
            continue;
        }
        return Found::Claimed { owner: o };
    }
    Found::Successor(cand)
}

/// Walks OWN to the owner of finger target `i` and records it.
async fn refresh_finger(node: &Node, i: usize) -> Result<()> {
    let (me, alone) = {
        let r = node.ring();
        (r.me, r.is_alone())
    };
    let target = finger_targets(&me.id, node.config.fingers)[i];
    let owner = if alone {
        me.addr
    } else {
        let start = node.own_answer(&target).await;
        if start == me.addr {
            me.addr
        } else {
            let enc = node.config.address_encoding;
            let (end, trail) = walk::walk_trail(start, &target, me.addr, enc).await?;
            node.meet(trail);
            in_our_ring(node, end).await?
        }
    };
    let f = Peer::new(owner);
    node.update_ring(|r| {
        let n = node.config.fingers;
        if r.fingers.len() != n {
            r.fingers.resize(n, r.me);
        }
        let change = r.fingers[i] != f;
        r.fingers[i] = f;
        change
    })
    .await?;
    Ok(())
}

/// `peer`, where a walk of ours ended, unless it is a ring of one while we are in a ring: then
/// `me`, and it is dropped from the fingers and the predecessor. A ring of one owns every key,
/// so a walk that reaches it ends there, and a finger pointing at it would renew itself: a
/// node that left and was started again alone on its old address, or one cut off from
/// everyone, which comes back by its own search (`rejoin_when_alone`).
async fn in_our_ring(node: &Node, peer: PeerAddr) -> Result<PeerAddr> {
    let me = node.ring().me.addr;
    if peer == me || walk::abd(peer, node.config.address_encoding).await? != peer {
        return Ok(peer);
    }
    debug!("{peer} is a ring of one: not a finger or a predecessor of ours");
    node.forget(peer);
    Ok(me)
}

/// The predecessor is the owner of `id - 1` (PROTOCOL.md 6).
async fn refresh_predecessor(node: &Node) -> Result<()> {
    let me = node.ring().me;
    let key = me.id.prev();
    let start = node.own_answer(&key).await;
    if start == me.addr {
        return Ok(());
    }
    let (pred, trail) =
        walk::walk_trail(start, &key, me.addr, node.config.address_encoding).await?;
    node.meet(trail);
    if in_our_ring(node, pred).await? == me.addr {
        return Ok(());
    }
    let p = Peer::new(pred);
    node.update_ring(|r| {
        let change = r.predecessor != Some(p);
        r.predecessor = Some(p);
        change
    })
    .await?;
    Ok(())
}

/// The place check, once per `maintenance_interval_ms`, through one known peer in turn (see
/// [`handoff::check_place`]). A loop of its own: asking a peer that is down or cut off may take
/// the whole request timeout, and the successor list must not wait for it.
pub async fn place_loop(node: Arc<Node>) {
    let every = interval(&node);
    loop {
        tokio::time::sleep(every).await;
        if node.departed() {
            return;
        }
        // Joining again writes what the owner sends: not on storage that can no longer write.
        if !node.storage.is_writable() {
            continue;
        }
        let Some(start) = node.next_place_check() else {
            continue;
        };
        match handoff::check_place(&node, start, PLACE_JOIN_ATTEMPTS).await {
            Ok(Place::Ours) => {}
            Ok(Place::Rejoined(owner)) => info!("joined the ring again through {owner}"),
            Ok(Place::OwnerAlone(owner)) => {
                debug!("{owner} owns our id as a ring of one: left for it to join us")
            }
            Err(e) => debug!("place check through {start}: {e}"),
        }
    }
}

/// Runs the repair pass when woken (start, after handoffs, successor changes) and every
/// `repair_interval_secs`.
pub async fn repair_loop(node: Arc<Node>) {
    let every = Duration::from_secs(node.config.repair_interval_secs.max(1));
    loop {
        let _ = tokio::time::timeout(every, node.repair.notified()).await;
        if node.departed() {
            return;
        }
        crate::fault::point("repair:pass").await;
        match repair(&node).await {
            Ok((0, 0)) => {}
            Ok((moved, kept)) => info!(
                "repair pass: {moved} misplaced entries handed to their owners, {kept} kept for a later pass"
            ),
            Err(e) => warn!("repair pass: {e}"),
        }
    }
}

/// Collects tombstones older than `tombstone_retention_secs`, every quarter of it (at most
/// hourly), on a blocking thread.
pub async fn tombstone_loop(node: Arc<Node>) {
    let retention = node.config.tombstone_retention_secs.max(1);
    let every = Duration::from_secs((retention / 4).clamp(1, 3600));
    loop {
        tokio::time::sleep(every).await;
        if node.departed() {
            return;
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let before = crate::storage::Version(now_ms.saturating_sub(retention * 1000) << 16);
        let storage = node.storage.clone();
        match tokio::task::spawn_blocking(move || storage.collect_tombstones(before, None)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => info!("collected {n} tombstones older than {retention} s"),
            Ok(Err(e)) => warn!("collecting tombstones: {e}"),
            Err(e) => warn!("collecting tombstones: {e}"),
        }
    }
}

/// Gives one misplaced entry to the owner of its key; whether the owner now holds it (or
/// something newer, or, for a plain owner, any value of the key).
async fn hand_over(node: &Node, router: &mut Router, k: &HashKey, e: &Versioned<Value>) -> bool {
    let owner = match router.owner(k).await {
        Ok((owner, _)) => owner,
        Err(err) => {
            debug!(key = %k, "repair: owner not reached: {err}");
            return false;
        }
    };
    let versions = node.speaks_versions(owner).await;
    let answer = match (&e.value, versions) {
        // A plain peer has no tombstones: there is nothing to tell it.
        (None, false) => Ok(true),
        (value, _) => match router.client(owner).await {
            Ok(c) if versions => c
                .vin(k, e.version.0, value.as_deref())
                .await
                .map(|s| s == Status::T),
            // The owner's copy, if it has one, came through a write or a handoff there.
            Ok(c) => match c.exi(k).await {
                Ok(Status::T) => Ok(true),
                Ok(Status::F) => match value {
                    Some(v) => c.ins(k, v).await.map(|s| s == Status::T),
                    None => Ok(true),
                },
                // `N`: it stopped owning the key; the next pass finds the new owner.
                Ok(Status::N) => Ok(false),
                Err(err) => Err(err),
            },
            Err(err) => Err(err),
        },
    };
    match answer {
        Ok(handed) => handed,
        Err(err) => {
            router.forget(owner);
            if versions {
                node.extensions.forget(owner);
            }
            debug!(key = %k, "repair: {owner} did not take it: {err}");
            false
        }
    }
}

/// Before a leave, with `Node::handoff` held: gives every entry we hold past the range we hold
/// (`RingState::held_until`) to its owner, as the repair pass does, but keeps ours (the leave
/// empties the directory once its DIS is done). Such an entry may be the only copy: a node
/// given up while it was down comes back holding writes acknowledged before it went down, for
/// keys that a node which joined meanwhile owns now, and until a repair pass hands them on
/// they are nowhere else; a leave right after the rejoin dropped them (tests/faults.rs, seed
/// 5 once in CI; `tests/ring.rs`, `a_node_back_from_being_given_up_that_leaves_...`).
/// Returns how many could not be given.
pub async fn give_misplaced(node: &Node, ring: &RingState) -> Result<u64> {
    let (me, end) = (ring.me, ring.held_until(node.config.replicas));
    if ring.is_alone() || end == me {
        return Ok(0);
    }
    let mut router = Router::new(ring.successor().addr, node.config.address_encoding);
    let (mut cursor, mut given, mut kept) = (end.id, 0u64, 0u64);
    loop {
        let (chunk, full) = next_chunk(node, &cursor, &me.id)?;
        let Some((last, _)) = chunk.last() else { break };
        let next = last.wrapping_add(&HashKey::pow2(0));
        for (key, e) in &chunk {
            if hand_over(node, &mut router, key, e).await {
                given += 1;
            } else {
                kept += 1;
            }
        }
        if next == me.id || !full {
            break;
        }
        cursor = next;
    }
    if given + kept > 0 {
        info!("before leaving: {given} entries held outside our arc given to their owners, {kept} not");
    }
    Ok(kept)
}

/// Most value bytes the repair pass holds at once.
const REPAIR_CHUNK_BYTES: usize = 8 << 20;
/// Most entries the repair pass holds at once.
const REPAIR_CHUNK_ENTRIES: usize = 64;

/// An entry the repair pass hands on.
type Misplaced = (HashKey, Versioned<Value>);

/// The next entries of `[from, to)` for the repair pass, at most a chunk's worth, and whether
/// the chunk filled (more may follow).
fn next_chunk(node: &Node, from: &HashKey, to: &HashKey) -> Result<(Vec<Misplaced>, bool)> {
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for entry in node.storage.iter_arc_versioned(from, to) {
        let (k, e) = entry?;
        bytes += e.value.as_ref().map_or(0, |v| v.len());
        chunk.push((k, e));
        if chunk.len() >= REPAIR_CHUNK_ENTRIES || bytes >= REPAIR_CHUNK_BYTES {
            return Ok((chunk, true));
        }
    }
    Ok((chunk, false))
}

/// Hands every entry we hold but need not (outside our arc and our K successors' arcs, see
/// `RingState::held_until`) to its owner.
/// An owner that speaks versions gets it with VIN, tombstones included, and keeps the newer of
/// its copy and ours. A plain owner that already holds the key keeps its copy (it came through
/// a write or a handoff there); otherwise we INS ours; a tombstone has nothing to tell it.
/// Ours is deleted only after the owner's `T`, only if its version is unchanged and the key
/// is still not ours (checked under the write gate), and never while a handoff runs.
async fn repair(node: &Node) -> Result<(u64, u64)> {
    let (mut moved, mut kept) = (0u64, 0u64);
    let ring = node.ring().clone();
    // A node that cannot write could not delete what it hands over; and what a failed write
    // left half-made (a keys-first batch: `storage::BatchWrite`) must not travel.
    if ring.is_alone() || !node.storage.is_writable() {
        return Ok((0, 0));
    }
    let k = node.config.replicas;
    let (me, end) = (ring.me, ring.held_until(k));
    // Copies of plain owners' arcs go first.
    moved += super::sync::drop_plain_copies(node, &ring).await?;
    if end == me {
        // A ring of at most K + 1 nodes: every node holds everything.
        return Ok((moved, kept));
    }
    // The arc just past ours goes once its holders confirmed; what lies further, entry by
    // entry to its owner.
    let (mut cursor, dropped, unconfirmed) = super::sync::release_next_arc(node, &ring).await?;
    moved += dropped;
    kept += unconfirmed;
    if cursor == me.id {
        return Ok((moved, kept));
    }
    let mut router = Router::new(ring.successor().addr, node.config.address_encoding);
    loop {
        if node.departed() || node.ring().held_until(k) != end {
            break; // the ring changed: the next pass starts from the new bounds
        }
        let (chunk, full) = next_chunk(node, &cursor, &me.id)?;
        let Some((last, _)) = chunk.last() else { break };
        let next = last.wrapping_add(&HashKey::pow2(0));
        for (key, e) in chunk {
            if node.holds(&key) {
                continue;
            }
            if !hand_over(node, &mut router, &key, &e).await {
                kept += 1;
                continue;
            }
            // Never while a handoff runs: a DIS receiver holds the leaver's entries before it
            // owns them, and the leaver still has them; deleting them here would lose them once
            // the range is ours. So wait for the handoff (or maintenance round) to end; the
            // ownership check below then sees what it changed. Held for the check and the
            // removal only, not for the sync after.
            let removed = {
                let _no_handoff = node.handoff.lock().await;
                node.gate
                    .exclusive(|| -> Result<_> {
                        if node.holds(&key) {
                            return Ok(None);
                        }
                        let remove = || node.storage.remove_if_version(&key, e.version);
                        Ok(Some(super::blocking(remove)?))
                    })
                    .await?
            };
            if let Some((true, t)) = removed {
                node.storage.sync(t).await?;
                moved += 1;
            }
        }
        if next == me.id || !full {
            break;
        }
        cursor = next;
    }
    Ok((moved, kept))
}
