//! CON on both sides: serving a joiner (we own its id and hand it its arc) and joining
//! (through the owner of our id).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::stream::{receive_arc, send_arc, Entries, Incoming};
use super::{connect, read_ack, LOCK_WAIT};
use crate::error::{Error, Result};
use crate::fault;
use crate::node::sync::{self, Direction, Watch};
use crate::node::{walk, Node, Transfer};
use crate::protocol::{is_peer_address, Connection, HashKey, PeerAddr, Request, Status};
use crate::ring::{id_of, Peer, RingState};
use crate::storage::{BatchWrite, Change, HandoffRecord, Phase};

/// Attempts of a join (CON answered `N` or failed) before giving up.
pub(super) const JOIN_ATTEMPTS: usize = 20;

/// How often the joiner of a VCC says it is still comparing: the owner holds writes to the arc
/// meanwhile, and gives up on a joiner silent for its I/O timeout.
const COMPARING_EVERY: Duration = Duration::from_secs(1);

/// How a CON's arc reaches the joiner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handing {
    /// Streamed, entry by entry: CON, or VCN with versions (docs/EXTENSIONS.md).
    Streamed(Entries),
    /// VCC: the joiner already holds most of the arc (it returns after being given up) and
    /// compares its copy with ours while the arc is fenced, so only what differs moves.
    Compared,
}

/// Serves a CON from `joiner` (we are the current owner of its id), PROTOCOL.md section 4;
/// or its versioned form VCN, or VCC (`handing`: docs/EXTENSIONS.md).
pub async fn serve_con<S: AsyncRead + AsyncWrite>(
    node: &Node,
    conn: &mut Connection<S>,
    joiner: PeerAddr,
    handing: Handing,
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
    let result = serve_con_fenced(node, conn, &ring, j, (s1, s2), handing).await;
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
    handing: Handing,
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
    let ack = match handing {
        Handing::Streamed(entries) => {
            send_arc(node, conn, &j.id, &s1.id, &progress, "con-serve", entries).await?;
            read_ack(node, conn).await?
        }
        Handing::Compared => {
            conn.flush().await?;
            fault::point("con-serve:mid-compare").await;
            await_compared(node, conn).await?
        }
    };
    match ack {
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

/// The joiner of a VCC compares its copy of the arc with ours (VDG, VKL, VGT on connections of
/// its own) and says `N` ("still comparing") at least every [`COMPARING_EVERY`], then `T` (it
/// holds, durably, our version of every key of the arc or a newer one) or `F` (it gave up).
/// Writes to the arc wait meanwhile, so the whole comparison gets `handoff_ack_timeout_secs`
/// (each `N` is read within the connection's I/O timeout): a joiner that only ever says `N`
/// cannot hold the arc for ever. A joiner cut short keeps what it took and compares less the
/// next time.
async fn await_compared<S: AsyncRead + AsyncWrite>(
    node: &Node,
    conn: &mut Connection<S>,
) -> Result<Status> {
    let limit = Duration::from_secs(node.config.handoff_ack_timeout_secs.max(1));
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, conn.read_status()).await {
            Err(_) => {
                return Err(Error::Peer(format!(
                    "the joiner was still comparing after {limit:?}"
                )))
            }
            Ok(Ok(Status::N)) => continue,
            Ok(other) => return other,
        }
    }
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
        let told = node.extensions.advertised(owner, enc).await;
        // A joiner that holds entries (back after being given up, or a restored directory)
        // compares them with the owner's instead of taking the whole arc again.
        let handing = if !fresh && told.compared_join && !node.storage.is_empty() {
            Handing::Compared
        } else if told.versions {
            Handing::Streamed(Entries::Versioned)
        } else {
            Handing::Streamed(Entries::Plain)
        };
        let exchange = match handing {
            Handing::Streamed(entries) => {
                con_exchange(node, owner, me, (how, fresh), entries).await
            }
            Handing::Compared => compared_exchange(node, owner, me, fresh).await,
        };
        match exchange {
            Ok(true) => return Ok(true),
            Ok(false) => {
                last = format!("{owner} answered N");
                info!("join: {owner} answered N to CON; looking the owner up again");
            }
            Err(e) => {
                last = e.to_string();
                if handing != Handing::Streamed(Entries::Plain) {
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
    let request = match entries {
        Entries::Plain => Request::Con(me),
        Entries::Versioned => Request::Vcn(me),
    };
    let Some((mut conn, s1, s2)) = open_exchange(node, owner, &request).await? else {
        return Ok(false);
    };
    fault::point("con-join:before-count").await;
    let n = conn.read_int().await?;
    let my = Peer::new(me);
    let progress = node.begin_progress(receiving(owner, my, s1));
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
    become_member(node, &mut conn, owner, me, (s1, s2), fresh, progress).await
}

/// One VCC exchange as the joiner (docs/EXTENSIONS.md, `compared-join/1`): we hold most of our
/// arc already, so we compare our copy with the owner's instead of receiving it whole. First
/// unfenced, so that most of what differs moves while the owner still takes writes; then,
/// with the arc fenced at the owner, once more for what changed meanwhile, saying `N` every
/// [`COMPARING_EVERY`] until it is done. `Ok(false)`: answered `N`.
async fn compared_exchange(
    node: &Node,
    owner: PeerAddr,
    me: PeerAddr,
    fresh: bool,
) -> Result<bool> {
    let enc = node.config.address_encoding;
    let my = Peer::new(me);
    // The owner's successor ends the arc we would take ([id(me), id(S1)): PROTOCOL.md 4).
    match walk::abd(owner, enc).await {
        Ok(s1) if s1 != me => {
            let started = std::time::Instant::now();
            let to = Peer::new(s1).id;
            match sync::sync_range(node, owner, my.id, to, Direction::Both, Watch::Nothing).await {
                Ok(s) => info!(
                    "join: our copy of our arc compared with {owner}'s in {:.1?} before the \
                     handoff: {} of {} segments differed, {} entries ({} bytes) taken, {} given",
                    started.elapsed(),
                    s.differing,
                    s.segments,
                    s.pulled,
                    s.pulled_bytes,
                    s.pushed
                ),
                Err(e) => debug!("join: comparing our arc with {owner} before the handoff: {e}"),
            }
        }
        Ok(_) => {}
        Err(e) => {
            debug!("join: {owner}'s successor unknown, no comparison before the handoff: {e}")
        }
    }
    let Some((mut conn, s1, s2)) = open_exchange(node, owner, &Request::Vcc(me)).await? else {
        return Ok(false);
    };
    let progress = node.begin_progress(receiving(owner, my, s1));
    fault::point("con-join:mid-compare").await;
    let synced = {
        let compare = sync::sync_range(
            node,
            owner,
            my.id,
            s1.id,
            Direction::Both,
            Watch::Join(&progress),
        );
        tokio::pin!(compare);
        let mut tick = tokio::time::interval(COMPARING_EVERY);
        loop {
            tokio::select! {
                done = &mut compare => break done,
                _ = tick.tick() => {
                    conn.write_status(Status::N).await?;
                    conn.flush().await?;
                }
            }
        }
    };
    let synced = match synced {
        Ok(s) => s,
        Err(e) => {
            // Told, so that the owner lifts its fence now rather than after its timeout.
            let _ = conn.write_status(Status::F).await;
            let _ = conn.flush().await;
            return Err(e);
        }
    };
    info!(
        "join: our arc compared with {owner}'s under its fence: {} of {} segments differed, \
         {} entries ({} bytes) taken, {} given",
        synced.differing, synced.segments, synced.pulled, synced.pulled_bytes, synced.pushed
    );
    become_member(node, &mut conn, owner, me, (s1, s2), fresh, progress).await
}

/// The start of a join on either path: `request` (CON, VCN or VCC) to `owner`, its first
/// answer, and the two successors it names. `None`: answered `N`.
async fn open_exchange(
    node: &Node,
    owner: PeerAddr,
    request: &Request,
) -> Result<Option<(Connection<TcpStream>, Peer, Peer)>> {
    let mut conn = connect(node, owner).await?;
    conn.write_request(request).await?;
    let what = request.name();
    match conn.read_status().await? {
        Status::T => {}
        Status::N => return Ok(None),
        Status::F => return Err(Error::Peer(format!("{owner} answered F to {what}"))),
    }
    let s1 = Peer::new(walk::checked(owner, what, conn.read_addr().await?)?);
    let s2 = Peer::new(walk::checked(owner, what, conn.read_addr().await?)?);
    Ok(Some((conn, s1, s2)))
}

/// What a joiner's progress reports: `[id(me), id(S1))` coming from `owner`.
fn receiving(owner: PeerAddr, my: Peer, s1: Peer) -> Transfer {
    Transfer {
        exchange: "CON",
        sending: false,
        peer: owner,
        from: my.id,
        to: s1.id,
    }
}

/// The end of a join on either path, once we hold the arc durably: our ring state (with the
/// record that says the `T` may not have reached the owner), the `T`, the record cleared.
async fn become_member<S: AsyncRead + AsyncWrite>(
    node: &Node,
    conn: &mut Connection<S>,
    owner: PeerAddr,
    me: PeerAddr,
    (s1, s2): (Peer, Peer),
    fresh: bool,
    progress: crate::node::progress::Tracked<'_>,
) -> Result<bool> {
    let my = Peer::new(me);
    let p = Peer::new(owner);
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
