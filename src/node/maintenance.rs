//! Ring maintenance (PROTOCOL.md sections 3 and 6): successor liveness and replacement,
//! second successor by ABD, fingers and predecessor by OWN walks; and the repair pass that
//! hands misplaced entries to their owners.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::{walk, Node};
use crate::client::Router;
use crate::error::Result;
use crate::protocol::HashKey;
use crate::ring::{finger_targets, Peer};

/// The maintenance loop: one round per `maintenance_interval_ms`.
pub async fn run(node: Arc<Node>) {
    let every = Duration::from_millis(node.config.maintenance_interval_ms.max(50));
    let mut fails = 0u32;
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
        if let Err(e) = check_successor(&node, &mut fails).await {
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
    }
}

/// PUL the successor; after `dead_after` failures adopt the second successor and ask it (ABD)
/// for the new second successor. A live successor is asked ABD to keep the second one fresh.
async fn check_successor(node: &Node, fails: &mut u32) -> Result<()> {
    let ring = node.ring().clone();
    let me = ring.me;
    if ring.is_alone() {
        *fails = 0;
        return Ok(());
    }
    let enc = node.config.address_encoding;
    let succ = ring.successor.addr;
    let as_peer = |a| if a == me.addr { me } else { Peer::new(a) };
    if walk::pul(succ, enc).await {
        *fails = 0;
        node.mark_alive(succ);
        let s2 = as_peer(walk::abd(succ, enc).await?);
        node.update_ring(|r| {
            let change = r.successor.addr == succ && r.second_successor != s2;
            if change {
                r.second_successor = s2;
            }
            change
        })
        .await?;
        return Ok(());
    }
    *fails += 1;
    if *fails < node.config.dead_after {
        debug!("successor {succ} missed {fails} PUL(s)");
        return Ok(());
    }
    *fails = 0;
    let next = ring.second_successor;
    let (new, new2) = if next.addr == succ || next == me {
        (me, me)
    } else {
        match walk::abd(next.addr, enc).await {
            Ok(a) => (next, as_peer(a)),
            Err(_) => (next, next),
        }
    };
    let changed = node
        .update_ring(|r| {
            if r.successor.addr != succ {
                return false;
            }
            r.successor = new;
            r.second_successor = new2;
            true
        })
        .await?;
    node.forget(succ);
    if changed {
        warn!(
            "successor {succ} is dead: adopted {} (second successor {})",
            new.addr, new2.addr
        );
        node.repair.notify_one();
    }
    Ok(())
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
            walk::walk(start, &target, me.addr, node.config.address_encoding).await?
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

/// The predecessor is the owner of `id - 1` (PROTOCOL.md 6).
async fn refresh_predecessor(node: &Node) -> Result<()> {
    let me = node.ring().me;
    let key = me.id.prev();
    let start = node.own_answer(&key).await;
    if start == me.addr {
        return Ok(());
    }
    let pred = walk::walk(start, &key, me.addr, node.config.address_encoding).await?;
    if pred == me.addr {
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

/// Runs the repair pass when woken (start, after handoffs, successor changes) and every
/// `repair_interval_secs`.
pub async fn repair_loop(node: Arc<Node>) {
    let every = Duration::from_secs(node.config.repair_interval_secs.max(1));
    loop {
        let _ = tokio::time::timeout(every, node.repair.notified()).await;
        if node.departed() {
            return;
        }
        match repair(&node).await {
            Ok((0, 0)) => {}
            Ok((moved, kept)) => info!(
                "repair pass: {moved} misplaced entries handed to their owners, {kept} kept for a later pass"
            ),
            Err(e) => warn!("repair pass: {e}"),
        }
    }
}

/// Most value bytes the repair pass holds at once.
const REPAIR_CHUNK_BYTES: usize = 8 << 20;
/// Most entries the repair pass holds at once.
const REPAIR_CHUNK_ENTRIES: usize = 64;

/// Hands every entry we hold but do not own (the arc `[id(successor), id(me))`) to its owner:
/// if the owner already holds the key its copy wins (it is the newer: it came through a write or
/// a handoff there); otherwise we INS ours. Ours is deleted only after the owner's `T`, only
/// if it is still unchanged and still not ours (checked under the write gate), and never while
/// a handoff runs.
async fn repair(node: &Node) -> Result<(u64, u64)> {
    let (mut moved, mut kept) = (0u64, 0u64);
    let ring = node.ring().clone();
    // A node that cannot write could not delete what it hands over; and what a failed write
    // left half-made (a keys-first batch: `storage::BatchWrite`) must not travel.
    if ring.is_alone() || !node.storage.is_writable() {
        return Ok((0, 0));
    }
    let (me, succ) = (ring.me, ring.successor);
    let mut router = Router::new(succ.addr, node.config.address_encoding);
    let mut cursor = succ.id;
    loop {
        if node.departed() || node.ring().successor != succ {
            break; // the ring changed: the next pass starts from the new bounds
        }
        let mut chunk: Vec<(HashKey, crate::storage::Value)> = Vec::new();
        let mut bytes = 0;
        for entry in node.storage.iter_arc(&cursor, &me.id) {
            let (k, v) = entry?;
            bytes += v.len();
            chunk.push((k, v));
            if chunk.len() >= REPAIR_CHUNK_ENTRIES || bytes >= REPAIR_CHUNK_BYTES {
                break;
            }
        }
        let Some((last, _)) = chunk.last() else { break };
        let next = last.wrapping_add(&HashKey::pow2(0));
        for (k, v) in chunk {
            if node.owns(&k) {
                continue;
            }
            let handed = match router.exists(&k).await {
                Ok(true) => true,
                Ok(false) => matches!(router.put(&k, &v).await, Ok(true)),
                Err(e) => {
                    debug!(key = %k, "repair: owner not reached: {e}");
                    false
                }
            };
            if !handed {
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
                        if node.owns(&k) {
                            return Ok(None);
                        }
                        let remove = || node.storage.remove_if_unchanged(&k, &v);
                        Ok(Some(super::blocking(remove)?))
                    })
                    .await?
            };
            if let Some((true, t)) = removed {
                node.storage.sync(t).await?;
                moved += 1;
            }
        }
        if next == me.id {
            break;
        }
        cursor = next;
    }
    Ok((moved, kept))
}
