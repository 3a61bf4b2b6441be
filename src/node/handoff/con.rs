//! CON on both sides: serving a joiner (we own its id and hand it its arc) and joining
//! (through the owner of our id).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, warn};

use super::stream::{receive_arc, send_arc, Entries, Incoming};
use super::{connect, read_ack, LOCK_WAIT};
use crate::error::{Error, Result};
use crate::fault;
use crate::node::{walk, Node, Transfer};
use crate::protocol::{is_peer_address, Connection, HashKey, PeerAddr, Request, Status};
use crate::ring::{id_of, Peer, RingState};
use crate::storage::{BatchWrite, Change, HandoffRecord, Phase};

/// Attempts of a join (CON answered `N` or failed) before giving up.
pub(super) const JOIN_ATTEMPTS: usize = 20;

/// Serves a CON from `joiner` (we are the current owner of its id), PROTOCOL.md section 4;
/// or its versioned form VCN (`entries`: docs/EXTENSIONS.md).
pub async fn serve_con<S: AsyncRead + AsyncWrite>(
    node: &Node,
    conn: &mut Connection<S>,
    joiner: PeerAddr,
    entries: Entries,
) -> Result<()> {
    let Ok(_one) = tokio::time::timeout(LOCK_WAIT, node.handoff.lock()).await else {
        info!(%joiner, "CON answered N: another handoff is in progress");
        return conn.write_status(Status::N).await;
    };
    let ring = node.ring().clone();
    let j = Peer::new(joiner);
    if !is_peer_address(&joiner) {
        warn!(%joiner, "CON answered N: no peer can have that address");
        return conn.write_status(Status::N).await;
    }
    if node.departed() || joiner == ring.me.addr || !ring.owns(&j.id) {
        info!(%joiner, "CON answered N: we do not own its id");
        return conn.write_status(Status::N).await;
    }
    let (s1, s2) = (ring.successor(), ring.second_successor());
    node.meet([joiner]);
    if !node.gate.fence(j.id, s1.id) {
        return conn.write_status(Status::N).await;
    }
    let result = serve_con_fenced(node, conn, &ring, j, (s1, s2), entries).await;
    node.gate.lift();
    if let Err(e) = &result {
        warn!(%joiner, "CON aborted, we keep the range and its entries: {e}");
        if let Err(e) = node.set_handoff(None).await {
            warn!("could not clear the handoff record: {e}");
        }
    }
    result
}

async fn serve_con_fenced<S: AsyncRead + AsyncWrite>(
    node: &Node,
    conn: &mut Connection<S>,
    ring: &RingState,
    j: Peer,
    (s1, s2): (Peer, Peer),
    entries: Entries,
) -> Result<()> {
    let cut = node
        .gate
        .drain(Duration::from_secs(node.config.drain_timeout_secs))
        .await;
    if cut > 0 {
        warn!("{cut} INS still receiving their value in the moving arc will get F");
    }
    node.set_handoff(Some(&HandoffRecord::ServingCon {
        joiner: j.addr,
        successor: s1.addr,
        second_successor: s2.addr,
        phase: Phase::Streaming,
    }))
    .await?;
    let progress = node.begin_progress(Transfer {
        exchange: "CON",
        sending: true,
        peer: j.addr,
        from: j.id,
        to: s1.id,
    });
    conn.write_status(Status::T).await?;
    conn.write_addr(&s1.addr).await?;
    conn.write_addr(&s2.addr).await?;
    send_arc(node, conn, &j.id, &s1.id, &progress, "con-serve", entries).await?;
    match read_ack(node, conn).await? {
        Status::T => {}
        other => {
            progress.finish("refused");
            return Err(Error::Peer(format!(
                "{} answered {other:?} instead of T",
                j.addr
            )));
        }
    }
    fault::point("con-serve:after-ack").await;
    // The joiner holds the arc durably: switch, then drop what we handed over.
    let mut next = node.ring().clone();
    let after = next.successors.clone();
    next.set_successors(std::iter::once(j).chain(after), node.config.successors);
    if next.predecessor.is_none() && ring.is_alone() {
        next.predecessor = Some(j);
    }
    let rec = HandoffRecord::ServingCon {
        joiner: j.addr,
        successor: s1.addr,
        second_successor: s2.addr,
        phase: Phase::Handed,
    };
    node.switch_ring(Some(next), Change::Set(&rec)).await?;
    node.mark_alive(j.addr);
    fault::point("con-serve:after-switch").await;
    finish_handed_arc(node, j.addr, &j.id, &s1.id).await?;
    progress.finish("done");
    node.repair.notify_one();
    Ok(())
}

/// Deletes the entries of an arc we handed over to `joiner`, then clears the handoff record.
/// A joiner that keeps replicas has us as its predecessor, and so as a replica of that arc:
/// then the entries stay, as our copy of its arc.
pub(super) async fn finish_handed_arc(
    node: &Node,
    joiner: PeerAddr,
    from: &HashKey,
    to: &HashKey,
) -> Result<()> {
    if node.config.replicas > 0
        && node
            .extensions
            .replicas(joiner, node.config.address_encoding)
            .await
    {
        node.set_handoff(None).await?;
        info!("kept the entries handed over to {joiner} as our copy of its arc");
        return Ok(());
    }
    let deleted = node.delete_arc(from, to).await?;
    node.set_handoff(None).await?;
    info!("dropped the {deleted} entries handed over");
    Ok(())
}

/// Joins the ring through `seed`: finds the owner of our id, runs CON with it (again on `N`),
/// and returns once we own our arc. Entries we held before (a node given up while it was down,
/// or a restored directory) are kept; those received overwrite them. `serving`: the node
/// already answers requests (it rejoins after a restart), so reads may see what the CON
/// writes as it writes it.
pub async fn join(node: &Arc<Node>, seed: PeerAddr, serving: bool) -> Result<()> {
    let _one = node.handoff.lock().await;
    join_locked(node, seed, serving, JOIN_ATTEMPTS)
        .await
        .map(|_| ())
}

/// [`join`] for a caller that holds `Node::handoff`, in at most `attempts` CONs. `Ok(false)`:
/// the node already serves (`serving`) and the ring routes its id to it now, so there is
/// nothing to join.
pub(super) async fn join_locked(
    node: &Arc<Node>,
    seed: PeerAddr,
    serving: bool,
    attempts: usize,
) -> Result<bool> {
    let me = node.config.advertised();
    let my_id = id_of(&me);
    let enc = node.config.address_encoding;
    let mut last = String::new();
    // Where the walk starts: the seed, and when it does not answer, any peer we have known (a
    // node restarted after a join cut short may find its seed gone).
    let mut starts = vec![seed];
    let mut next_start = 0;
    let mut unanswered = std::collections::HashSet::new();
    for attempt in 0..attempts {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 * (attempt as u64).min(10))).await;
        }
        if next_start == 0 {
            starts.truncate(1);
            starts.extend(
                node.known_peers()
                    .into_iter()
                    .filter(|a| *a != seed && *a != me),
            );
        }
        let start = starts[next_start % starts.len()];
        let owner = match walk::walk_trail(start, &my_id, me, enc).await {
            Ok((o, _)) if o == me && serving => return Ok(false),
            Ok((o, _)) if o == me => {
                last = format!("the OWN walk from {start} ended at this node's own address");
                continue;
            }
            Ok((o, trail)) => {
                node.meet(trail);
                // So that a restart finds them, should this join be cut short.
                if let Err(e) = node.save_peers().await {
                    warn!("join: could not save the peers met: {e}");
                }
                o
            }
            Err(e) => {
                last = e.to_string();
                // Once per peer: a dead seed is retried for seconds.
                if unanswered.insert(start) {
                    warn!(
                        "join: looking up the owner of our id through {start}: {e}; trying again"
                    );
                } else {
                    debug!("join: looking up the owner of our id through {start}: {e}");
                }
                next_start = (next_start + 1) % starts.len();
                continue;
            }
        };
        // Fresh: nothing of ours here, so what a failed CON left can be dropped whole. Never
        // for a node that serves: writes may land in its arc meanwhile.
        let fresh = !serving && node.storage.is_empty();
        node.set_handoff(Some(&HandoffRecord::ReceivingCon { from: owner, fresh }))
            .await?;
        // Keys first only where nobody can see it half-done: not while serving reads, and
        // not over entries of our own, which a failed join keeps.
        let how = if fresh {
            BatchWrite::KeysFirst
        } else {
            BatchWrite::InPlace
        };
        let entries = if node.speaks_versions(owner).await {
            Entries::Versioned
        } else {
            Entries::Plain
        };
        match con_exchange(node, owner, me, (how, fresh), entries).await {
            Ok(true) => return Ok(true),
            Ok(false) => {
                last = format!("{owner} answered N");
                info!("join: {owner} answered N to CON; looking the owner up again");
            }
            Err(e) => {
                last = e.to_string();
                if entries == Entries::Versioned {
                    node.extensions.forget(owner);
                }
                warn!("join: CON with {owner} failed: {e}");
                if fresh {
                    node.delete_arc(&HashKey::ZERO, &HashKey::ZERO).await?;
                }
            }
        }
        node.set_handoff(None).await?;
    }
    Err(Error::Peer(format!(
        "could not join the ring through {seed} after {attempts} attempts: {last}"
    )))
}

/// One CON exchange as the joiner (VCN with a peer that speaks versions). `Ok(false)`:
/// answered `N`.
async fn con_exchange(
    node: &Node,
    owner: PeerAddr,
    me: PeerAddr,
    (how, fresh): (BatchWrite, bool),
    entries: Entries,
) -> Result<bool> {
    let mut conn = connect(node, owner).await?;
    let request = match entries {
        Entries::Plain => Request::Con(me),
        Entries::Versioned => Request::Vcn(me),
    };
    conn.write_request(&request).await?;
    match conn.read_status().await? {
        Status::T => {}
        Status::N => return Ok(false),
        Status::F => return Err(Error::Peer(format!("{owner} answered F to CON"))),
    }
    let s1 = Peer::new(walk::checked(owner, "CON", conn.read_addr().await?)?);
    let s2 = Peer::new(walk::checked(owner, "CON", conn.read_addr().await?)?);
    fault::point("con-join:before-count").await;
    let n = conn.read_int().await?;
    let my = Peer::new(me);
    let p = Peer::new(owner);
    let progress = node.begin_progress(Transfer {
        exchange: "CON",
        sending: false,
        peer: owner,
        from: my.id,
        to: s1.id,
    });
    progress
        .total
        .store(n, std::sync::atomic::Ordering::Relaxed);
    let arc = Incoming {
        n,
        from: &my.id,
        to: &s1.id,
        step: "con-join",
        how,
        entries,
    };
    receive_arc(node, &mut conn, &arc, &progress).await?;
    node.meet([owner, s1.addr, s2.addr]);
    // S1 == P: a ring of one, so after us comes P and after P, us (PROTOCOL.md 6).
    // `set_successors` drops us and anything out of ring order; maintenance extends the list.
    let mut state = RingState::alone(me);
    state.set_successors(
        [if s1.addr == me { p } else { s1 }, s2],
        node.config.successors,
    );
    state.predecessor = Some(p);
    state.fingers = vec![my; node.config.fingers];
    // The record stays until our T is out: killed before that, a restart asks the owner
    // whether it took the T (`recover`), instead of keeping a join the owner aborted.
    let joined = HandoffRecord::JoinedCon { from: owner, fresh };
    node.switch_ring(Some(state), Change::Set(&joined)).await?;
    fault::point("con-join:before-ack").await;
    conn.write_status(Status::T).await?;
    conn.flush().await?;
    node.set_handoff(None).await?;
    node.mark_alive(owner);
    progress.finish(&format!("done, joined after {owner}"));
    Ok(true)
}
