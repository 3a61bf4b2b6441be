//! After a crash, before the node serves: finish or undo the handoff its record says was in
//! progress (ARCHITECTURE.md, "Crash safety of handoffs").

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::con::finish_handed_arc;
use super::dis::finish_departure;
use crate::error::{Error, Result};
use crate::node::{walk, Node};
use crate::protocol::{AddressEncoding, HashKey, PeerAddr};
use crate::ring::{id_of, Peer};
use crate::storage::{Change, HandoffRecord, Phase};

/// Finishes or undoes a handoff that a crash interrupted (the handoff record says which),
/// before the node serves anything.
pub async fn recover(node: &Arc<Node>) -> Result<()> {
    let Some(rec) = node.storage.load_handoff()? else {
        return Ok(());
    };
    let enc = node.config.address_encoding;
    warn!("finishing a handoff interrupted by a crash: {rec:?}");
    match rec {
        HandoffRecord::ServingCon {
            joiner,
            successor,
            second_successor,
            phase,
        } => {
            let j = Peer::new(joiner);
            let s1 = Peer::new(successor);
            let handed = match phase {
                Phase::Handed => true,
                // Did the joiner finish (it persists its state before its T)? Ask it.
                Phase::Streaming => {
                    match ask_own(joiner, &j.id, enc).await {
                        Ok(a) if a == joiner => true,
                        Ok(a) => {
                            info!("{joiner} did not complete its join (OWN answered {a}): we keep the range");
                            false
                        }
                        Err(e) => {
                            warn!("{joiner} cannot be asked whether it joined ({e}): we keep the range");
                            false
                        }
                    }
                }
            };
            if handed {
                let mut next = node.ring().clone();
                if next.successor().addr != joiner {
                    let after = next.successors.clone();
                    next.set_successors([j, s1].into_iter().chain(after), node.config.successors);
                }
                if phase == Phase::Handed {
                    let rec = HandoffRecord::ServingCon {
                        joiner,
                        successor,
                        second_successor,
                        phase: Phase::Handed,
                    };
                    node.switch_ring(Some(next), Change::Set(&rec)).await?;
                    finish_handed_arc(node, j.addr, &j.id, &s1.id).await?;
                } else {
                    // J is a member, but maybe through another peer that took our arc while
                    // we were down, without our entries: so they are not dropped here. They
                    // are misplaced now, and the repair pass hands each to J unless J holds
                    // it, and deletes it only then.
                    node.switch_ring(Some(next), Change::Clear).await?;
                }
                info!("completed the CON with {joiner} interrupted by the crash");
            } else {
                node.set_handoff(None).await?;
            }
        }
        HandoffRecord::ReceivingCon { from, fresh } => {
            if fresh {
                let n = node.delete_arc(&HashKey::ZERO, &HashKey::ZERO).await?;
                info!("dropped {n} entries of a CON from {from} that did not complete");
            }
            node.set_handoff(None).await?;
        }
        HandoffRecord::Leaving { to, phase } => {
            // Only P's T, recorded (Handed), says that P holds our range. Streaming says
            // nothing of it: that P owns our id now may mean it took the range, or only that
            // it gave us up while we were down with the entries here alone. So we keep them
            // and resume as a member; the restart's place check joins again through P if it
            // owns our id (its copies overwrite ours). The leave said it failed; it may be
            // asked again.
            let handed = phase == Phase::Handed;
            if handed {
                node.switch_ring(None, Change::Keep).await?;
                finish_departure(node).await?;
                node.departed
                    .store(false, std::sync::atomic::Ordering::Release);
                info!("this node had left the ring (to {to}) before the crash: it starts anew");
            } else {
                node.set_handoff(None).await?;
                // If the leave did complete there, `to` is a ring of one now, rightly, and
                // knows us no more: we join it (see `check_place`).
                node.note_left_to(to);
                info!("the leave to {to} did not complete before the crash: resuming as a member");
            }
        }
        HandoffRecord::JoinedCon { from, fresh } => joined_con(node, from, fresh).await?,
        HandoffRecord::ReceivingDisInPlace { leaver, .. } => {
            // Written in place, newer versions winning: nothing to undo. What is not ours
            // goes back to its owner with the repair pass.
            node.set_handoff(None).await?;
            info!("a DIS from {leaver} did not complete: keeping what was received in place");
        }
        HandoffRecord::ReceivingDis { leaver, successor } => {
            let n = node.delete_arc(&id_of(&leaver), &id_of(&successor)).await?;
            node.set_handoff(None).await?;
            info!("dropped {n} entries of a DIS from {leaver} that did not complete");
        }
    }
    Ok(())
}

/// After a crash between storing a joined arc and sending the `T` (or just after it): did
/// `from` take our `T`? If it names us as the owner of our id, yes. If it names itself, it
/// did not, or it did and has given us up since (then our copy is the only one): a peer that
/// speaks versions resolves both when we join again (its stream carries its deletions, and
/// nothing of ours is dropped), so we keep the arc; with a plain peer a fresh joiner drops it
/// only if `from` still holds what it sent us (a completed handoff deleted it there), and
/// joins again.
async fn joined_con(node: &Arc<Node>, from: PeerAddr, fresh: bool) -> Result<()> {
    let enc = node.config.address_encoding;
    let me = node.me();
    let my_id = id_of(&me);
    match ask_own(from, &my_id, enc).await {
        Ok(a) if a == me => info!("the join through {from} completed before the crash"),
        Ok(a) if a == from => {
            if node.speaks_versions(from).await {
                info!(
                    "{from} owns our id: it did not take our T, or gave us up since; keeping \
                     the arc, the join again brings its newer versions and its deletions"
                );
            } else if fresh && still_holds_our_arc(node, from).await {
                let n = node.delete_arc(&HashKey::ZERO, &HashKey::ZERO).await?;
                let t = node.storage.save_state(Change::Clear, Change::Clear)?;
                node.storage.sync(t).await?;
                info!("the join through {from} did not complete: dropped the {n} entries received; joining again");
                return super::con::join(node, from, false).await;
            } else {
                info!("{from} owns our id; keeping the arc (it may be the only copy)");
            }
        }
        Ok(a) => info!("the ring routes our id to {a} now: keeping the arc"),
        Err(e) => warn!("{from} cannot be asked whether our join completed ({e}): keeping the arc"),
    }
    node.set_handoff(None).await
}

/// Whether `from` still holds the first entries of our arc (up to 4): after a completed
/// handoff it deleted them all.
async fn still_holds_our_arc(node: &Node, from: PeerAddr) -> bool {
    let ring = node.ring().clone();
    let keys: Vec<HashKey> = node
        .storage
        .iter_arc(&ring.me.id, &ring.successor().id)
        .take(4)
        .filter_map(|r| r.ok().map(|(k, _)| k))
        .collect();
    if keys.is_empty() {
        return false;
    }
    let Ok(mut c) = crate::client::Client::connect(from, node.config.address_encoding).await else {
        return false;
    };
    for k in &keys {
        match tokio::time::timeout(walk::ASK_TIMEOUT, c.exi(k)).await {
            Ok(Ok(crate::protocol::Status::T)) => {}
            _ => return false,
        }
    }
    true
}

/// `peer`'s OWN answer for `key`, asked up to three times half a second apart: the other side
/// of an interrupted handoff may be restarting too.
async fn ask_own(peer: PeerAddr, key: &HashKey, enc: AddressEncoding) -> Result<PeerAddr> {
    let mut answer = Err(Error::Peer("not asked".into()));
    for _ in 0..3 {
        answer = walk::own(peer, key, enc).await;
        if answer.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    answer
}
