//! DIS on both sides: leaving (handing everything we own to our predecessor) and taking a
//! leaving successor's range.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};

use super::stream::{receive_arc, send_arc, Entries, Incoming};
use super::{connect, read_ack, LOCK_WAIT};
use crate::error::{Error, Result};
use crate::fault;
use crate::node::{walk, Node, Progress, Transfer};
use crate::protocol::{Connection, HashKey, PeerAddr, Request, Status};
use crate::ring::{Peer, RingState};
use crate::storage::{BatchWrite, Change, HandoffRecord, Phase};

/// Attempts of a leave (DIS answered `N` or failed) before giving up.
const LEAVE_ATTEMPTS: usize = 5;

/// Serves a DIS from `leaver` (it must be our successor), PROTOCOL.md section 4; or its
/// versioned form VDS (`entries`: docs/EXTENSIONS.md).
pub async fn serve_dis<S: AsyncRead + AsyncWrite>(
    node: &Node,
    conn: &mut Connection<S>,
    leaver: PeerAddr,
    entries: Entries,
) -> Result<()> {
    let Ok(_one) = tokio::time::timeout(LOCK_WAIT, node.handoff.lock()).await else {
        info!(%leaver, "DIS answered N: another handoff is in progress");
        return conn.write_status(Status::N).await;
    };
    let ring = node.ring().clone();
    if node.departed() || leaver == ring.me.addr || leaver != ring.successor().addr {
        info!(%leaver, "DIS answered N: it is not our successor");
        return conn.write_status(Status::N).await;
    }
    conn.write_status(Status::T).await?;
    conn.flush().await?;
    let l = Peer::new(leaver);
    let s1 = Peer::new(walk::checked(leaver, "DIS", conn.read_addr().await?)?);
    let s2 = Peer::new(walk::checked(leaver, "DIS", conn.read_addr().await?)?);
    let n = conn.read_int().await?;
    // Keys first only into an empty range (what an aborted DIS leaves is then dropped whole);
    // where we hold entries already (copies not yet handed on, tombstones), the leaver's are
    // written in place and the newer version of each key wins, as wherever copies meet.
    let empty = node
        .storage
        .iter_arc_versioned(&l.id, &s1.id)
        .next()
        .is_none();
    let (how, record) = if empty {
        (
            BatchWrite::KeysFirst,
            HandoffRecord::ReceivingDis {
                leaver,
                successor: s1.addr,
            },
        )
    } else {
        (
            BatchWrite::InPlace,
            HandoffRecord::ReceivingDisInPlace {
                leaver,
                successor: s1.addr,
            },
        )
    };
    node.set_handoff(Some(&record)).await?;
    let progress = node.begin_progress(Transfer {
        exchange: "DIS",
        sending: false,
        peer: leaver,
        from: l.id,
        to: s1.id,
    });
    progress
        .total
        .store(n, std::sync::atomic::Ordering::Relaxed);
    // An aborted DIS drops what it received (below), and so does the restart after a crash.
    let arc = Incoming {
        n,
        from: &l.id,
        to: &s1.id,
        step: "dis-recv",
        how,
        entries,
    };
    let received = receive_arc(node, conn, &arc, &progress).await;
    if let Err(e) = received {
        drop(progress); // logs "aborted" first
        if how == BatchWrite::KeysFirst {
            warn!(%leaver, "DIS aborted: dropping what we received of its range: {e}");
            node.delete_arc(&l.id, &s1.id).await?;
        } else {
            warn!(%leaver, "DIS aborted: keeping what we received (the leaver still has it): {e}");
        }
        node.set_handoff(None).await?;
        return Err(e);
    }
    fault::point("dis-recv:before-ack").await;
    // A peer that names the leaver or us as a successor means "myself" (PROTOCOL.md 6).
    let me = ring.me;
    let mine = |p: Peer| {
        if p.addr == leaver || p.addr == me.addr {
            me
        } else {
            p
        }
    };
    node.meet([s1.addr, s2.addr]);
    let mut next = node.ring().clone();
    // S1 is ours alone (us when the ring was L and us); S2 and the rest of our list only as
    // far as they lie beyond it (set_successors drops the others).
    let after = next.successors.clone();
    if mine(s1) == me {
        next.successors = vec![me];
    } else {
        next.set_successors(
            [s1, mine(s2)].into_iter().chain(after),
            node.config.successors,
        );
    }
    for f in next.fingers.iter_mut() {
        if f.addr == leaver {
            *f = me;
        }
    }
    if next.predecessor.is_some_and(|p| p.addr == leaver) {
        next.predecessor = None;
    }
    node.switch_ring(Some(next), Change::Clear).await?;
    conn.write_status(Status::T).await?;
    conn.flush().await?;
    // It left: no successor search or place check should ask it again.
    node.forget_peer(leaver);
    progress.finish("done");
    Ok(())
}

/// Leaves the ring: hands everything we own to our predecessor with DIS. On success the node
/// owns nothing, its data directory is emptied, and the caller stops it.
pub async fn leave(node: &Arc<Node>) -> Result<String> {
    if !node.departed() {
        crate::node::sync::hand_copies_before_leaving(node).await;
    }
    let _one = node.handoff.lock().await;
    let ring = node.ring().clone();
    if node.departed() {
        return Err(Error::Peer("this node has already left the ring".into()));
    }
    if ring.is_alone() {
        return Err(Error::Peer(format!(
            "this node is a ring of one: there is nobody to hand its entries to (they stay in {})",
            node.storage.dir().display()
        )));
    }
    let me = ring.me;
    if !node.gate.fence(me.id, ring.successor().id) {
        return Err(Error::Peer("another handoff is in progress".into()));
    }
    let result = leave_fenced(node, &ring).await;
    node.gate.lift();
    if result.is_err() {
        if let Err(e) = node.set_handoff(None).await {
            warn!("could not clear the handoff record: {e}");
        }
    }
    result
}

async fn leave_fenced(node: &Node, ring: &RingState) -> Result<String> {
    let enc = node.config.address_encoding;
    let me = ring.me;
    let cut = node
        .gate
        .drain(Duration::from_secs(node.config.drain_timeout_secs))
        .await;
    if cut > 0 {
        warn!("{cut} INS still receiving their value will get F");
    }
    // After any rejoin that ran before us (we hold `Node::handoff`): what we hold outside our
    // arc goes to its owners first, since the directory is emptied after the DIS.
    let kept = crate::node::maintenance::give_misplaced(node, ring).await?;
    if kept > 0 {
        return Err(Error::Peer(format!(
            "{kept} entries held outside our arc could not be given to their owners (see the \
             log): leaving now would lose them; try again once their owners answer"
        )));
    }
    let pred_key = me.id.prev();
    let mut last = String::new();
    for attempt in 0..LEAVE_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(300 * attempt as u64)).await;
        }
        // The predecessor is the owner of id - 1 (PROTOCOL.md 6).
        let start = ring.own_answer(&pred_key, &[]);
        let start = if start == me.addr {
            ring.successor().addr
        } else {
            start
        };
        let pred = match walk::walk(start, &pred_key, me.addr, enc).await {
            Ok(p) if p == me.addr => {
                last = "the OWN walk for our predecessor came back to us".into();
                continue;
            }
            Ok(p) => p,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        node.set_handoff(Some(&HandoffRecord::Leaving {
            to: pred,
            phase: Phase::Streaming,
        }))
        .await?;
        let progress = node.begin_progress(Transfer {
            exchange: "DIS",
            sending: true,
            peer: pred,
            from: me.id,
            to: ring.successor().id,
        });
        let entries = if node.speaks_versions(pred).await {
            Entries::Versioned
        } else {
            Entries::Plain
        };
        match dis_exchange(node, ring, pred, &progress, entries).await {
            Ok(Some(n)) => {
                progress.finish("done");
                // Our range is the predecessor's: own nothing from here on, then empty the dir.
                let rec = HandoffRecord::Leaving {
                    to: pred,
                    phase: Phase::Handed,
                };
                node.switch_ring(None, Change::Set(&rec)).await?;
                // From here a restart finishes the departure (the record says Handed): the
                // caller answers the leave now and empties the directory before exiting.
                return Ok(format!(
                    "handed {n} entries to {pred}; this node has left the ring"
                ));
            }
            Ok(None) => {
                progress.finish("refused");
                last = format!("{pred} answered N");
            }
            Err(e) => {
                last = e.to_string();
                if entries == Entries::Versioned {
                    node.extensions.forget(pred);
                }
                warn!("leave: DIS with {pred} failed: {e}");
            }
        }
        node.set_handoff(None).await?;
    }
    Err(Error::Peer(format!(
        "could not leave after {LEAVE_ATTEMPTS} attempts: {last}"
    )))
}

/// One DIS exchange as the leaver: `Ok(Some(n))` after the predecessor's `T`, `Ok(None)` on `N`.
async fn dis_exchange(
    node: &Node,
    ring: &RingState,
    pred: PeerAddr,
    progress: &Progress,
    entries: Entries,
) -> Result<Option<u64>> {
    let mut conn = connect(node, pred).await?;
    let request = match entries {
        Entries::Plain => Request::Dis(ring.me.addr),
        Entries::Versioned => Request::Vds(ring.me.addr),
    };
    conn.write_request(&request).await?;
    match conn.read_status().await? {
        Status::T => {}
        Status::N => return Ok(None),
        Status::F => return Err(Error::Peer(format!("{pred} answered F to DIS"))),
    }
    conn.write_addr(&ring.successor().addr).await?;
    conn.write_addr(&ring.second_successor().addr).await?;
    let n = send_arc(
        node,
        &mut conn,
        &ring.me.id,
        &ring.successor().id,
        progress,
        "dis-leave",
        entries,
    )
    .await?;
    match read_ack(node, &mut conn).await? {
        Status::T => {}
        other => {
            return Err(Error::Peer(format!(
                "{pred} answered {other:?} instead of T"
            )))
        }
    }
    fault::point("dis-leave:after-ack").await;
    Ok(Some(n))
}

/// After a completed leave: empty the data directory and forget the ring.
pub async fn finish_departure(node: &Node) -> Result<()> {
    fault::point("dis-leave:after-switch").await;
    let deleted = node.delete_arc(&HashKey::ZERO, &HashKey::ZERO).await?;
    // A node started on this directory again is a new one: it must not look for this ring.
    // Forgotten before the record goes, so that a departure cut short is finished again.
    node.clear_peers();
    node.save_peers().await?;
    let t = node.storage.save_state(Change::Clear, Change::Clear)?;
    node.storage.sync(t).await?;
    info!("left the ring: dropped {deleted} entries handed over; the data directory is empty");
    Ok(())
}
