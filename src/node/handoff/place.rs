//! The place check: does the ring route our id to us? If another peer owns it, the ring went
//! on without us (or another ring formed meanwhile), and we join again through that owner.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::con::join_locked;
use crate::error::Result;
use crate::node::{walk, Node};
use crate::protocol::PeerAddr;

/// How long a restarted node keeps looking for a peer that can tell it whether the ring still
/// routes its id to it, holding writes to its arc meanwhile.
const RESTART_CHECK_FOR: Duration = Duration::from_secs(15);

/// CONs the restart's place check tries through one owner: a few, so that the time a
/// restarted node holds writes to its arc stays bounded.
const RESTART_JOIN_ATTEMPTS: usize = 2;

/// What a place check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// The ring routes our id to us.
    Ours,
    /// This peer owned our id: we joined again through it.
    Rejoined(PeerAddr),
    /// This peer owns our id as a ring of one: left to join our ring.
    OwnerAlone(PeerAddr),
}

/// Does the ring route our id to us, asked through `start`? If another peer owns it (the ring
/// moved on while we were down or cut off: our predecessor adopted our successor; or another
/// ring formed meanwhile), join again through that owner in at most `attempts` CONs, keeping
/// our entries; those it sends overwrite ours (PROTOCOL.md 6, "Restart after being given up").
/// Until that CON completes, writes to what we took for our arc wait at a fence (unless the
/// caller holds one already, as a restart does from before it serves): the entries coming
/// from the current owner must not overwrite newer ones written here.
///
/// After a restart, and every maintenance round through one known peer in turn
/// (`maintenance::place_loop`): this is how a node given up comes back, and how two rings that
/// formed while their nodes could not reach each other become one (each node of one joins the
/// other's owner of its id, until no peer's id is owned by another).
pub async fn check_place(node: &Arc<Node>, start: PeerAddr, attempts: usize) -> Result<Place> {
    let me = node.ring().me;
    let enc = node.config.address_encoding;
    let first = match walk::own(start, &me.id, enc).await {
        Ok(a) => {
            node.mark_alive(start);
            a
        }
        Err(e) => {
            node.mark_failed(start, "OWN of the place check");
            return Err(e);
        }
    };
    let owner = if first == start || first == me.addr {
        first
    } else {
        let (end, trail) = walk::walk_trail(first, &me.id, me.addr, enc).await?;
        node.meet(trail);
        end
    };
    if owner == me.addr {
        return Ok(Place::Ours);
    }
    let _one = node.handoff.lock().await;
    // Asked again under the lock: a handoff meanwhile may have settled it.
    if node.departed() || walk::own(owner, &me.id, enc).await? != owner {
        return Ok(Place::Ours);
    }
    // A ring of one owns every id. If we are in a ring, it is the one to join (its own
    // search finds us); were we to join it, every node of our ring would follow, one by one.
    // Unless it is the peer our leave was cut short to: it may have taken our range, and be
    // alone since then by right.
    if !node.ring().is_alone()
        && node.left_to() != Some(owner)
        && walk::abd(owner, enc).await? == owner
    {
        return Ok(Place::OwnerAlone(owner));
    }
    warn!(
        "the ring moved on without us ({owner} owns our id, asked through {start}): joining \
         again through it, keeping our entries"
    );
    Ok(if rejoin_locked(node, owner, attempts).await? {
        Place::Rejoined(owner)
    } else {
        Place::Ours
    })
}

/// Joins again through `owner` (which owns our id), keeping our entries, with our arc fenced
/// meanwhile (unless a fence is up already: a restarted node's). `false`: the ring routes our
/// id to us again, nothing to join. The caller holds `Node::handoff`.
pub async fn rejoin_locked(node: &Arc<Node>, owner: PeerAddr, attempts: usize) -> Result<bool> {
    let ring = node.ring().clone();
    let fenced = node.gate.fence(ring.me.id, ring.successor().id);
    if fenced {
        node.gate
            .drain(Duration::from_secs(node.config.drain_timeout_secs))
            .await;
    }
    let joined = join_locked(node, owner, true, attempts).await;
    if fenced {
        node.gate.lift();
    }
    if joined? {
        node.clear_left_to();
        node.repair.notify_one();
        return Ok(true);
    }
    Ok(false)
}

/// After a restart that resumed a ring state: the place check, through our predecessor, our
/// successor, then the other peers we know, until one answers (or `RESTART_CHECK_FOR` has
/// passed, checked between peers; one check of [`RESTART_JOIN_ATTEMPTS`] CONs may run past
/// it). Writes to our arc wait meanwhile: the caller fenced it before serving, and we lift
/// the fence here. Until then a CON to us is answered `N` (the fence), so no peer can join
/// through a claim of ours that may be out of date. The periodic place check starts only
/// after this one (`Node::run`), so nothing else relies on that fence.
pub async fn check_place_after_restart(node: &Arc<Node>, fenced: bool) {
    let ring = node.ring().clone();
    let deadline = tokio::time::Instant::now() + RESTART_CHECK_FOR;
    let mut starts: Vec<PeerAddr> = ring
        .predecessor
        .into_iter()
        .chain(ring.successors.iter().copied())
        .map(|p| p.addr)
        .collect();
    starts.extend(node.known_peers());
    let mut seen = std::collections::HashSet::from([ring.me.addr]);
    starts.retain(|a| seen.insert(*a));
    let mut last = "no peer to ask".to_string();
    let mut checked = false;
    for start in starts {
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        match check_place(node, start, RESTART_JOIN_ATTEMPTS).await {
            Ok(Place::Ours) => {
                info!("the ring still routes our id to us (asked through {start})");
                checked = true;
            }
            Ok(Place::Rejoined(owner)) => {
                info!("joined again through {owner}");
                checked = true;
            }
            Ok(Place::OwnerAlone(owner)) => {
                info!("{owner} owns our id as a ring of one: we keep our place, it joins us");
                checked = true;
            }
            Err(e) => last = format!("{start}: {e}"),
        }
        if checked {
            break;
        }
    }
    if !checked && !ring.is_alone() {
        warn!("could not check our place in the ring ({last}); maintenance will try again");
    }
    if fenced {
        node.gate.lift();
    }
}
