//! Joining and leaving: the CON and DIS exchanges of PROTOCOL.md section 4 on both sides, the
//! recovery of a handoff interrupted by a crash, and the restart check of our place.
//!
//! Entries move straight between sled and the socket: the sender streams a range iterator
//! (fenced by the [`super::WriteGate`], since sled iterators are not snapshots), the receiver
//! writes batches (`storage::Batcher`) of at most [`BATCH_ENTRIES`] entries or [`BATCH_BYTES`]
//! bytes. Nothing is collected in memory. What each side persists at each step, and why that
//! loses nothing on a crash, is in ARCHITECTURE.md ("Crash safety of handoffs").

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::{info, warn};

use super::{walk, Node, Progress};
use crate::error::{Error, Result};
use crate::fault;
use crate::protocol::{is_peer_address, Connection, HashKey, Limits, PeerAddr, Status};
use crate::ring::{id_of, in_arc, Peer, RingState};
#[cfg(doc)]
use crate::storage::BATCH_ENTRIES;
use crate::storage::{BatchWrite, Batcher, HandoffRecord, Phase, Storage};

/// A receiver writes a batch once it holds this many value bytes (so 8 MiB values go one by one).
pub const BATCH_BYTES: usize = 4 << 20;
/// Read and write buffers of a handoff connection we open.
const HANDOFF_BUFFER: usize = 256 << 10;
/// Batches waiting between the socket task and the sled thread of a handoff, either way.
const QUEUED_BATCHES: usize = 2;
/// A receiver asks for the flush of each window of this many bytes when it closes, and waits
/// for it only when the next window closes, so that what is not yet durable stays bounded on a
/// slow disk while the flusher works on one window and the receiver writes the next. With 64
/// MiB windows the receiver waited too often (1 GiB CON 5.9–8.1 s, with 256 MiB 4.9–5.2 s:
/// BENCHMARKS.md).
const SYNC_EVERY: u64 = 256 << 20;
/// Attempts of a join (CON answered `N` or failed) before giving up.
const JOIN_ATTEMPTS: usize = 20;
/// How long an incoming CON or DIS waits for a maintenance round or another handoff to end
/// before it is answered `N` (the asking peer then tries again).
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// How long a restarted node keeps looking for a peer that can tell it whether the ring still
/// routes its id to it, holding writes to its arc meanwhile.
const RESTART_CHECK_FOR: Duration = Duration::from_secs(15);
/// CONs the restart's place check tries through one owner: a few, so that the time a
/// restarted node holds writes to its arc stays bounded.
const RESTART_JOIN_ATTEMPTS: usize = 2;
/// Attempts of a leave (DIS answered `N` or failed) before giving up.
const LEAVE_ATTEMPTS: usize = 5;

/// Limits of a handoff connection we open: the node's value limit, and patience for the
/// other side's final flush.
fn handoff_limits(node: &Node) -> Limits {
    let mut l = node.config.limits();
    l.idle_timeout = l.io_timeout;
    l
}

async fn connect(node: &Node, peer: PeerAddr) -> Result<Connection<TcpStream>> {
    let s = tokio::time::timeout(walk::ASK_TIMEOUT, TcpStream::connect(peer))
        .await
        .map_err(|_| Error::Peer(format!("{peer} did not accept a connection")))?
        .map_err(|e| Error::Peer(format!("cannot connect to {peer}: {e}")))?;
    s.set_nodelay(true)?;
    Ok(Connection::with_buffers(
        s,
        node.config.address_encoding,
        handoff_limits(node),
        HANDOFF_BUFFER,
    ))
}

/// Waits for the final Status of an exchange, allowing the receiver its final flush.
async fn read_ack<S: AsyncRead + AsyncWrite>(
    node: &Node,
    conn: &mut Connection<S>,
) -> Result<Status> {
    let limit = Duration::from_secs(node.config.handoff_ack_timeout_secs.max(1));
    tokio::time::timeout(limit, conn.read_status())
        .await
        .map_err(|_| Error::Timeout)?
}

/// What the reading thread of [`send_arc`] hands to the socket task.
enum Outgoing {
    /// The number of entries in the arc: the Int sent first.
    Count(u64),
    /// The next entries in ring order.
    Entries(Vec<(HashKey, crate::storage::Value)>),
}

/// Streams the entries of `[from, to)` out of sled: the Int count, then each HashKey and Value.
/// The arc must be fenced, so that the count and the entries agree.
///
/// One blocking thread counts and reads the arc while this task writes the socket: sled's
/// page loads stay off the async workers (and in one malloc arena), and reading overlaps
/// sending. They meet in a channel of [`QUEUED_BATCHES`] batches (`storage::Batcher`: at most
/// [`BATCH_ENTRIES`] entries or [`BATCH_BYTES`] bytes), so memory stays bounded whatever the arc holds.
async fn send_arc<S: AsyncRead + AsyncWrite>(
    node: &Node,
    conn: &mut Connection<S>,
    from: &HashKey,
    to: &HashKey,
    progress: &Progress,
    step: &str,
) -> Result<u64> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Outgoing>>(QUEUED_BATCHES);
    let reader = {
        let storage = node.storage.clone();
        let (from, to) = (*from, *to);
        tokio::task::spawn_blocking(move || read_arc(&storage, &from, &to, &tx))
    };
    let result = stream_arc(conn, &mut rx, progress, step).await;
    // Stops the reader if we stopped first; it ends at its next send.
    drop(rx);
    let _ = reader.await;
    result
}

/// The reading side of [`send_arc`]: count, then batches, until the arc ends or the socket
/// task has gone.
fn read_arc(
    storage: &Storage,
    from: &HashKey,
    to: &HashKey,
    tx: &tokio::sync::mpsc::Sender<Result<Outgoing>>,
) {
    let n = match storage.count_arc(from, to) {
        Ok(n) => n,
        Err(e) => {
            let _ = tx.blocking_send(Err(e));
            return;
        }
    };
    if tx.blocking_send(Ok(Outgoing::Count(n))).is_err() {
        return;
    }
    let mut batcher = Batcher::new(BATCH_BYTES);
    for entry in storage.iter_arc(from, to) {
        match entry {
            Ok((k, v)) => {
                if let Some(full) = batcher.push(k, v) {
                    if tx.blocking_send(Ok(Outgoing::Entries(full))).is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
    if let Some(last) = batcher.finish() {
        let _ = tx.blocking_send(Ok(Outgoing::Entries(last)));
    }
}

/// The socket side of [`send_arc`].
async fn stream_arc<S: AsyncRead + AsyncWrite>(
    conn: &mut Connection<S>,
    rx: &mut tokio::sync::mpsc::Receiver<Result<Outgoing>>,
    progress: &Progress,
    step: &str,
) -> Result<u64> {
    let lost = || Error::Flush("the thread reading the arc stopped".into());
    let n = match rx.recv().await.ok_or_else(lost)?? {
        Outgoing::Count(n) => n,
        Outgoing::Entries(_) => return Err(lost()),
    };
    progress
        .total
        .store(n, std::sync::atomic::Ordering::Relaxed);
    fault::point(&format!("{step}:before-count")).await;
    conn.write_int(n).await?;
    let mut sent = 0u64;
    while let Some(msg) = rx.recv().await {
        let Outgoing::Entries(batch) = msg? else {
            return Err(lost());
        };
        for (k, v) in batch {
            if sent == n {
                return Err(Error::Peer(format!(
                    "the arc changed while it was fenced: more than the {n} entries counted"
                )));
            }
            conn.write_key(&k).await?;
            conn.write_value(&v).await?;
            sent += 1;
            progress.add(1, v.len() as u64);
            if sent == n / 2 && n > 1 {
                conn.flush().await?;
                fault::point(&format!("{step}:mid-stream")).await;
            }
        }
    }
    if sent != n {
        return Err(Error::Peer(format!(
            "the arc changed while it was fenced: {sent} entries sent of {n} counted"
        )));
    }
    conn.flush().await?;
    fault::point(&format!("{step}:after-last-entry")).await;
    Ok(n)
}

/// Receives `n` entries of the arc `[from, to)` into sled in bounded batches, and returns once
/// they are all durable. An entry outside the arc or over the value limit aborts (`F`).
///
/// This task reads the socket and gathers batches; one blocking thread writes them to sled
/// (and syncs every [`SYNC_EVERY`] bytes), so reading the next batch overlaps writing the
/// last. At most [`QUEUED_BATCHES`] batches wait between them.
async fn receive_arc<S: AsyncRead + AsyncWrite>(
    node: &Node,
    conn: &mut Connection<S>,
    arc: &Incoming<'_>,
    progress: &Progress,
) -> Result<()> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<(HashKey, Vec<u8>)>>(QUEUED_BATCHES);
    let writer = {
        let storage = node.storage.clone();
        let runtime = tokio::runtime::Handle::current();
        let how = arc.how;
        tokio::task::spawn_blocking(move || write_batches(&storage, &runtime, rx, how))
    };
    let read = read_entries(conn, arc, progress, &tx).await;
    drop(tx);
    let written = writer
        .await
        .map_err(|e| Error::Flush(format!("the thread writing the arc failed: {e}")))?;
    // A write error explains a read side that stopped early because the writer went away.
    written?;
    read
}

/// What a receiver takes in.
struct Incoming<'a> {
    /// The entry count the sender announced.
    n: u64,
    /// The arc `[from, to)` the entries must lie in.
    from: &'a HashKey,
    to: &'a HashKey,
    /// The exchange, as named by its fault points (`dis-recv`, `con-join`).
    step: &'static str,
    /// Keys first only when an interrupted receive drops everything it received (see
    /// [`BatchWrite::KeysFirst`]).
    how: BatchWrite,
}

/// The socket side of [`receive_arc`].
async fn read_entries<S: AsyncRead + AsyncWrite>(
    conn: &mut Connection<S>,
    arc: &Incoming<'_>,
    progress: &Progress,
    tx: &tokio::sync::mpsc::Sender<Vec<(HashKey, Vec<u8>)>>,
) -> Result<()> {
    let Incoming {
        n, from, to, step, ..
    } = *arc;
    let stopped = || Error::Flush("the thread writing the arc stopped".into());
    let mut batcher = Batcher::new(BATCH_BYTES);
    for i in 0..n {
        let key = conn.read_key().await?;
        if !in_arc(&key, from, to) {
            conn.write_status(Status::F).await?;
            conn.flush().await?;
            return Err(Error::Peer(format!(
                "entry {key} lies outside the arc [{from}, {to}) being handed over"
            )));
        }
        let len = match conn.read_value_len().await {
            Ok(len) => len,
            Err(e) => {
                if matches!(e, Error::ValueTooLarge { .. }) {
                    conn.write_status(Status::F).await?;
                    conn.flush().await?;
                }
                return Err(e);
            }
        };
        let value = conn.read_value_bytes(len).await?;
        progress.add(1, len);
        if let Some(full) = batcher.push(key, value) {
            tx.send(full).await.map_err(|_| stopped())?;
        }
        if i + 1 == n / 2 && n > 1 {
            fault::point(&format!("{step}:mid-stream")).await;
        }
    }
    if let Some(last) = batcher.finish() {
        tx.send(last).await.map_err(|_| stopped())?;
    }
    Ok(())
}

/// The writing side of [`receive_arc`]: writes each batch, syncs every [`SYNC_EVERY`] bytes
/// (waiting for the previous window's flush only, so the flusher works on one window while
/// the next is written), and returns once everything written is durable.
fn write_batches(
    storage: &Storage,
    runtime: &tokio::runtime::Handle,
    mut rx: tokio::sync::mpsc::Receiver<Vec<(HashKey, Vec<u8>)>>,
    how: BatchWrite,
) -> Result<()> {
    let mut since_sync = 0u64;
    let mut ticket = None;
    let mut pending_sync = None;
    while let Some(mut batch) = rx.blocking_recv() {
        since_sync += batch.iter().map(|(_, v)| v.len() as u64).sum::<u64>();
        ticket = Some(storage.insert_batch(&mut batch, how)?);
        if since_sync >= SYNC_EVERY {
            if let Some(t) = pending_sync.take() {
                runtime.block_on(storage.sync(t))?;
            }
            // The flusher runs on demand: start this window's flush now.
            if let Some(t) = ticket {
                storage.request_sync(t);
            }
            pending_sync = ticket;
            since_sync = 0;
        }
    }
    if let Some(t) = ticket {
        runtime.block_on(storage.sync(t))?;
    }
    Ok(())
}

/// Serves a CON from `joiner` (we are the current owner of its id), PROTOCOL.md section 4.
pub async fn serve_con<S: AsyncRead + AsyncWrite>(
    node: &Node,
    conn: &mut Connection<S>,
    joiner: PeerAddr,
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
    let result = serve_con_fenced(node, conn, &ring, j, s1, s2).await;
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
    s1: Peer,
    s2: Peer,
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
    let progress =
        node.begin_progress(format!("CON to {} (sending [{}, {}))", j.addr, j.id, s1.id));
    conn.write_status(Status::T).await?;
    conn.write_addr(&s1.addr).await?;
    conn.write_addr(&s2.addr).await?;
    let sent = send_arc(node, conn, &j.id, &s1.id, &progress, "con-serve").await;
    let sent = match sent {
        Ok(n) => n,
        Err(e) => {
            node.end_progress(&progress, "aborted");
            return Err(e);
        }
    };
    match read_ack(node, conn).await {
        Ok(Status::T) => {}
        Ok(other) => {
            node.end_progress(&progress, "refused");
            return Err(Error::Peer(format!(
                "{} answered {other:?} instead of T",
                j.addr
            )));
        }
        Err(e) => {
            node.end_progress(&progress, "aborted");
            return Err(e);
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
    node.switch_ring(Some(next), Some(Some(&rec))).await?;
    node.mark_alive(j.addr);
    fault::point("con-serve:after-switch").await;
    finish_handed_arc(node, &j.id, &s1.id).await?;
    node.end_progress(&progress, &format!("done ({sent} entries to {})", j.addr));
    node.repair.notify_one();
    Ok(())
}

/// Deletes the entries of an arc we handed over, then clears the handoff record.
async fn finish_handed_arc(node: &Node, from: &HashKey, to: &HashKey) -> Result<()> {
    // On a blocking thread, like the scan that sent them (see `send_arc`).
    let (deleted, t) = {
        let storage = node.storage.clone();
        let (from, to) = (*from, *to);
        tokio::task::spawn_blocking(move || storage.delete_arc(&from, &to))
            .await
            .map_err(|e| Error::Flush(format!("the thread deleting the arc failed: {e}")))??
    };
    node.storage.sync(t).await?;
    node.set_handoff(None).await?;
    info!("dropped the {deleted} entries handed over");
    Ok(())
}

/// Serves a DIS from `leaver` (it must be our successor), PROTOCOL.md section 4.
pub async fn serve_dis<S: AsyncRead + AsyncWrite>(
    node: &Node,
    conn: &mut Connection<S>,
    leaver: PeerAddr,
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
    node.set_handoff(Some(&HandoffRecord::ReceivingDis {
        leaver,
        successor: s1.addr,
    }))
    .await?;
    let progress = node.begin_progress(format!(
        "DIS from {leaver} (receiving [{}, {}))",
        l.id, s1.id
    ));
    progress
        .total
        .store(n, std::sync::atomic::Ordering::Relaxed);
    // An aborted DIS drops what it received (below), and so does the restart after a crash.
    let arc = Incoming {
        n,
        from: &l.id,
        to: &s1.id,
        step: "dis-recv",
        how: BatchWrite::KeysFirst,
    };
    let received = receive_arc(node, conn, &arc, &progress).await;
    if let Err(e) = received {
        node.end_progress(&progress, "aborted");
        warn!(%leaver, "DIS aborted: dropping what we received of its range: {e}");
        let (_, t) = node.storage.delete_arc(&l.id, &s1.id)?;
        node.storage.sync(t).await?;
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
    node.switch_ring(Some(next), Some(None)).await?;
    conn.write_status(Status::T).await?;
    conn.flush().await?;
    // It left: no successor search or place check should ask it again.
    node.forget_peer(leaver);
    node.end_progress(&progress, &format!("done ({n} entries from {leaver})"));
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
async fn join_locked(
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
                warn!("join: looking up the owner of our id through {start}: {e}");
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
        match con_exchange(node, owner, me, how).await {
            Ok(true) => return Ok(true),
            Ok(false) => {
                last = format!("{owner} answered N");
                info!("join: {owner} answered N to CON; looking the owner up again");
            }
            Err(e) => {
                last = e.to_string();
                warn!("join: CON with {owner} failed: {e}");
                if fresh {
                    let (_, t) = node.storage.delete_arc(&HashKey::ZERO, &HashKey::ZERO)?;
                    node.storage.sync(t).await?;
                }
            }
        }
        node.set_handoff(None).await?;
    }
    Err(Error::Peer(format!(
        "could not join the ring through {seed} after {attempts} attempts: {last}"
    )))
}

/// One CON exchange as the joiner. `Ok(false)`: answered `N`.
async fn con_exchange(node: &Node, owner: PeerAddr, me: PeerAddr, how: BatchWrite) -> Result<bool> {
    let mut conn = connect(node, owner).await?;
    conn.write_raw(b"CON").await?;
    conn.write_addr(&me).await?;
    conn.flush().await?;
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
    let progress = node.begin_progress(format!(
        "CON from {owner} (receiving [{}, {}))",
        my.id, s1.id
    ));
    progress
        .total
        .store(n, std::sync::atomic::Ordering::Relaxed);
    let arc = Incoming {
        n,
        from: &my.id,
        to: &s1.id,
        step: "con-join",
        how,
    };
    if let Err(e) = receive_arc(node, &mut conn, &arc, &progress).await {
        node.end_progress(&progress, "aborted");
        return Err(e);
    }
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
    node.switch_ring(Some(state), Some(None)).await?;
    fault::point("con-join:before-ack").await;
    conn.write_status(Status::T).await?;
    conn.flush().await?;
    node.mark_alive(owner);
    node.end_progress(
        &progress,
        &format!("done: joined after {owner}, successor {}", s1.addr),
    );
    Ok(true)
}

/// Leaves the ring: hands everything we own to our predecessor with DIS. On success the node
/// owns nothing, its data directory is emptied, and the caller stops it.
pub async fn leave(node: &Arc<Node>) -> Result<String> {
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
        let progress = node.begin_progress(format!(
            "DIS to {pred} (sending [{}, {}))",
            me.id,
            ring.successor().id
        ));
        match dis_exchange(node, ring, pred, &progress).await {
            Ok(Some(n)) => {
                node.end_progress(&progress, &format!("done ({n} entries to {pred})"));
                // Our range is the predecessor's: own nothing from here on, then empty the dir.
                let rec = HandoffRecord::Leaving {
                    to: pred,
                    phase: Phase::Handed,
                };
                node.switch_ring(None, Some(Some(&rec))).await?;
                // From here a restart finishes the departure (the record says Handed): the
                // caller answers the leave now and empties the directory before exiting.
                return Ok(format!(
                    "handed {n} entries to {pred}; this node has left the ring"
                ));
            }
            Ok(None) => {
                node.end_progress(&progress, "refused");
                last = format!("{pred} answered N");
            }
            Err(e) => {
                node.end_progress(&progress, "aborted");
                last = e.to_string();
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
) -> Result<Option<u64>> {
    let mut conn = connect(node, pred).await?;
    conn.write_raw(b"DIS").await?;
    conn.write_addr(&ring.me.addr).await?;
    conn.flush().await?;
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
    let (deleted, t) = node.storage.delete_arc(&HashKey::ZERO, &HashKey::ZERO)?;
    node.storage.sync(t).await?;
    // A node started on this directory again is a new one: it must not look for this ring.
    // Forgotten before the record goes, so that a departure cut short is finished again.
    node.clear_peers();
    node.save_peers().await?;
    let t = node.storage.save_state(Some(None), Some(None))?;
    node.storage.sync(t).await?;
    info!("left the ring: dropped {deleted} entries handed over; the data directory is empty");
    Ok(())
}

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
                    let mut answer = Err(Error::Peer("not asked".into()));
                    for _ in 0..3 {
                        answer = walk::own(joiner, &j.id, enc).await;
                        if answer.is_ok() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    match answer {
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
                    node.switch_ring(Some(next), Some(Some(&rec))).await?;
                    finish_handed_arc(node, &j.id, &s1.id).await?;
                } else {
                    // J is a member, but maybe through another peer that took our arc while
                    // we were down, without our entries: so they are not dropped here. They
                    // are misplaced now, and the repair pass hands each to J unless J holds
                    // it, and deletes it only then.
                    node.switch_ring(Some(next), Some(None)).await?;
                }
                info!("completed the CON with {joiner} interrupted by the crash");
            } else {
                node.set_handoff(None).await?;
            }
        }
        HandoffRecord::ReceivingCon { from, fresh } => {
            if fresh {
                let (n, t) = node.storage.delete_arc(&HashKey::ZERO, &HashKey::ZERO)?;
                node.storage.sync(t).await?;
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
                node.switch_ring(None, None).await?;
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
        HandoffRecord::ReceivingDis { leaver, successor } => {
            let (n, t) = node
                .storage
                .delete_arc(&id_of(&leaver), &id_of(&successor))?;
            node.storage.sync(t).await?;
            node.set_handoff(None).await?;
            info!("dropped {n} entries of a DIS from {leaver} that did not complete");
        }
    }
    Ok(())
}

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
