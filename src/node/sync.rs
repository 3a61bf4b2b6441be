//! Anti-entropy (extension `replicas/1`): a node brings each copy it holds up to date with the
//! copy of the arc's owner, moving only what differs.
//!
//! Two copies of a range are compared by digests: the range is split into segments
//! (`storage::Segments`, at most 2^16), each side hashes every entry of a segment (key,
//! version, value or tombstone; `storage::entry_digest`) into one 64-bit digest, and only the
//! segments whose digests differ are listed key by key (VKL). Then the newer version of each
//! key that differs travels: pulled with VGT, pushed with VRP. Digests are computed from the
//! data by one scan on each side, with memory flat in the range's size.
//!
//! It runs for every arc we hold as a copy (our K successors' arcs), every
//! `sync_interval_secs` and whenever the ring around us changes (a join, a leave, a death):
//! this is how a new predecessor, a node that takes over a dead one's arc, and a node that was
//! away catch up. Before the repair pass drops a range we no longer need to hold, the same
//! exchange (pushing only) confirms that the nodes that now hold it have everything we have.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::Node;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::protocol::{HashKey, Limits, PeerAddr, Status};
use crate::ring::{Peer, RingState};
use crate::storage::{Segments, Version, Versioned};

/// Time allowed for one answer of a sync exchange: a digest of a large range is a scan of it.
const SYNC_TIMEOUT: Duration = Duration::from_secs(300);
/// Most keys a VKL answer lists (a receiver refuses to list more in one answer).
pub const LIST_MAX: u64 = 4096;
/// Entries per segment the depth of a comparison aims at: few keys to list per differing
/// segment, and few segments (8 bytes each) to send.
const PER_SEGMENT: u64 = 16;
/// VGT requests sent before their answers are read.
const PULL_AHEAD: usize = 64;
/// Entries in one VRP push.
const PUSH_BATCH: usize = 256;
/// Value bytes in one VRP push.
const PUSH_BYTES: usize = 4 << 20;

/// Who is told how a comparison goes.
#[derive(Clone, Copy)]
pub enum Watch<'a> {
    /// Nobody: a push before a drop or a leave.
    Nothing,
    /// INF's line for our copy of this owner's arc.
    Copy(PeerAddr),
    /// A join by comparison (VCC): its handoff progress counts the entries and bytes taken.
    Join(&'a super::progress::Progress),
}

/// Which way entries may travel in one comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Each side ends with the newer version of every key: our copy of an arc and its owner's.
    Both,
    /// Only from us: before we drop a range, the node that holds it gets what it lacks.
    Push,
}

/// What one comparison did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Synced {
    /// Segments compared.
    pub segments: u64,
    /// Segments whose digests differed.
    pub differing: u64,
    /// Entries taken from the peer (newer there, or missing here), and their value bytes.
    pub pulled: u64,
    pub pulled_bytes: u64,
    /// Entries given to the peer, and their value bytes.
    pub pushed: u64,
    pub pushed_bytes: u64,
    /// Bytes of digests and key lists received (what the comparison itself cost).
    pub listed_bytes: u64,
}

/// The sync state of a node, for INF and the log.
#[derive(Default)]
pub struct SyncState {
    /// Entries and bytes received and sent by comparisons since the node started.
    pub moved_in: AtomicU64,
    pub moved_in_bytes: AtomicU64,
    pub moved_out: AtomicU64,
    pub moved_out_bytes: AtomicU64,
    /// Per arc held as a copy (by its owner): when it was last brought up to date, or that a
    /// comparison runs now.
    arcs: Mutex<Vec<(PeerAddr, ArcSync)>>,
}

impl SyncState {
    /// The successors among our K whose arcs we keep no copy of: peers that keep no
    /// replicas (found when our copies were last compared).
    pub fn plain_owners(&self) -> Vec<PeerAddr> {
        self.arcs()
            .iter()
            .filter(|(_, s)| matches!(s, ArcSync::Plain))
            .map(|(p, _)| *p)
            .collect()
    }
}

/// Where the copy of one arc stands.
#[derive(Clone, Copy, Debug)]
enum ArcSync {
    /// A comparison runs: `done` of `segments` differing segments handled.
    Running { done: u64, segments: u64 },
    /// Last brought up to date at this time.
    Synced(Instant),
    /// The last comparison failed at this time.
    Failed(Instant),
    /// The owner does not speak `replicas/1`: it sends no copies and has none to compare.
    Plain,
}

impl SyncState {
    fn arcs(&self) -> std::sync::MutexGuard<'_, Vec<(PeerAddr, ArcSync)>> {
        self.arcs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, owner: PeerAddr, s: ArcSync) {
        let mut arcs = self.arcs();
        match arcs.iter_mut().find(|(p, _)| *p == owner) {
            Some(e) => e.1 = s,
            None => arcs.push((owner, s)),
        }
    }

    /// Keeps the state of these owners' arcs only (the ones we hold now).
    fn keep(&self, owners: &[PeerAddr]) {
        self.arcs().retain(|(p, _)| owners.contains(p));
    }

    fn count(&self, s: &Synced) {
        self.moved_in.fetch_add(s.pulled, Ordering::Relaxed);
        self.moved_in_bytes
            .fetch_add(s.pulled_bytes + s.listed_bytes, Ordering::Relaxed);
        self.moved_out.fetch_add(s.pushed, Ordering::Relaxed);
        self.moved_out_bytes
            .fetch_add(s.pushed_bytes, Ordering::Relaxed);
    }

    /// INF's lines: what comparisons moved, and one line per arc held as a copy (`counts`:
    /// its owner and the keys we hold of it).
    pub fn lines(&self, counts: &[(PeerAddr, String)]) -> String {
        let mut out = format!(
            "sync moved in {} entries {} bytes, out {} entries {} bytes\n",
            self.moved_in.load(Ordering::Relaxed),
            self.moved_in_bytes.load(Ordering::Relaxed),
            self.moved_out.load(Ordering::Relaxed),
            self.moved_out_bytes.load(Ordering::Relaxed),
        );
        let arcs = self.arcs();
        for (owner, keys) in counts {
            let what = match arcs.iter().find(|(p, _)| p == owner).map(|(_, s)| s) {
                Some(ArcSync::Running { done, segments }) => {
                    format!("syncing, {done} of {segments} differing segments")
                }
                Some(ArcSync::Synced(at)) => format!("synced {}s ago", at.elapsed().as_secs()),
                Some(ArcSync::Failed(at)) => {
                    format!("sync failed {}s ago", at.elapsed().as_secs())
                }
                Some(ArcSync::Plain) => "its owner keeps one copy (a plain peer)".into(),
                None => "not compared yet".into(),
            };
            out.push_str(&format!("copy of {owner}: {keys} keys, {what}\n"));
        }
        out
    }
}

/// The depth of a comparison of a range holding about `n` entries: about [`PER_SEGMENT`]
/// entries per segment, at most `2^MAX_DEPTH` segments.
fn depth_for(n: u64) -> u8 {
    let segments = (n / PER_SEGMENT).max(1);
    let depth = 64 - (segments - 1).leading_zeros();
    depth.min(crate::storage::MAX_DEPTH as u32) as u8
}

/// A connection for a comparison: answers may take a scan of the range.
async fn connect(node: &Node, peer: PeerAddr) -> Result<Client> {
    let limits = Limits {
        idle_timeout: Some(SYNC_TIMEOUT),
        io_timeout: Some(SYNC_TIMEOUT),
        max_value: node.config.max_value_size,
    };
    Client::connect_with(peer, node.config.address_encoding, limits).await
}

/// Compares our copy of the range `[from, to)` with `peer`'s and moves what differs
/// (`Direction`): the newer version of a key wins, a key one side lacks goes to it.
pub async fn sync_range(
    node: &Node,
    peer: PeerAddr,
    from: HashKey,
    to: HashKey,
    direction: Direction,
    watch: Watch<'_>,
) -> Result<Synced> {
    let mut c = connect(node, peer).await?;
    let n = node
        .arc_work("counting a range", move |s| {
            s.count_arc_versioned(&from, &to)
        })
        .await?;
    let depth = depth_for(n);
    let segments = Segments::new(from, to, depth)?;
    let ours = {
        let segments = segments.clone();
        node.arc_work("digests of a range", move |s| s.digests(&segments))
            .await?
    };
    let theirs = c.vdg(&from, &to, depth).await?;
    let mut done = Synced {
        segments: ours.len() as u64,
        listed_bytes: 8 * theirs.len() as u64,
        ..Synced::default()
    };
    // An empty segment (past the end of a tiny arc) holds no key on either side whatever a
    // peer's digest says; listing it would list the whole circle.
    let differing: Vec<u32> = (0..segments.count())
        .filter(|&i| ours[i as usize] != theirs[i as usize] && !segments.is_empty(i))
        .collect();
    done.differing = differing.len() as u64;
    for (handled, i) in differing.into_iter().enumerate() {
        if let Watch::Copy(owner) = watch {
            node.sync.set(
                owner,
                ArcSync::Running {
                    done: handled as u64,
                    segments: done.differing,
                },
            );
        }
        let (a, b) = segments.bounds(i);
        sync_segment(node, &mut c, a, b, direction, &mut done).await?;
        if let Watch::Join(p) = watch {
            p.entries.store(done.pulled, Ordering::Relaxed);
            p.bytes.store(done.pulled_bytes, Ordering::Relaxed);
        }
    }
    node.sync.count(&done);
    Ok(done)
}

/// One differing segment `[a, b)`: both sides' keys and versions, merged in key order; the
/// keys where the peer is newer (or alone) are pulled, those where we are, pushed.
async fn sync_segment(
    node: &Node,
    c: &mut Client,
    a: HashKey,
    b: HashKey,
    direction: Direction,
    done: &mut Synced,
) -> Result<()> {
    let theirs = list_all(c, a, b, &mut done.listed_bytes).await?;
    let ours: Vec<(HashKey, Version, bool)> = node
        .arc_work("listing a segment", move |s| {
            s.versions_in(&a, &b).collect::<Result<Vec<_>>>()
        })
        .await?;
    let (mut pull, mut push) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    // Both lists are in ring order from `a`, which is key order within one segment unless it
    // wraps past 2^160-1: compare by distance from `a`.
    let pos = |k: &HashKey| k.wrapping_sub(&a);
    while i < ours.len() || j < theirs.len() {
        match (ours.get(i), theirs.get(j)) {
            (Some(o), Some(t)) if pos(&o.0) == pos(&t.0) => {
                if Version(t.1).supersedes(Some(o.1)) && t.1 != o.1 .0 {
                    pull.push(t.0);
                } else if o.1.supersedes(Some(Version(t.1))) && t.1 != o.1 .0 {
                    push.push(o.0);
                }
                i += 1;
                j += 1;
            }
            (Some(o), Some(t)) if pos(&o.0) < pos(&t.0) => {
                push.push(o.0);
                i += 1;
            }
            (Some(o), None) => {
                push.push(o.0);
                i += 1;
            }
            (_, Some(t)) => {
                pull.push(t.0);
                j += 1;
            }
            (None, None) => break,
        }
    }
    if direction == Direction::Push {
        pull.clear();
    }
    // Requests go out PULL_AHEAD at a time before their answers are read, one value held at
    // a time; one flush covers the segment.
    let mut last = None;
    for keys in pull.chunks(PULL_AHEAD) {
        for key in keys {
            c.vgt_send(key).await?;
        }
        for key in keys {
            let Some((version, value)) = c.vgt_answer().await? else {
                continue; // gone there meanwhile (a collected tombstone, a dropped copy)
            };
            let len = value.as_ref().map_or(0, Vec::len);
            let entry = Versioned {
                version: Version(version),
                value,
            };
            let (_, ticket) = node.storage_work(key, len, || node.storage.apply(key, entry))?;
            last = Some(ticket);
            done.pulled += 1;
            done.pulled_bytes += len as u64;
        }
    }
    if let Some(ticket) = last {
        node.storage.sync(ticket).await?;
    }
    push_keys(node, c, &push, done).await
}

/// Pushes our entries of `keys` with VRP, in batches.
async fn push_keys(node: &Node, c: &mut Client, keys: &[HashKey], done: &mut Synced) -> Result<()> {
    let mut batch: Vec<super::replication::Sent> = Vec::new();
    let mut bytes = 0usize;
    for (n, key) in keys.iter().enumerate() {
        if let Some(e) = super::blocking(|| node.storage.entry(key))? {
            let value: Option<Arc<[u8]>> = e.value.as_deref().map(Arc::from);
            bytes += value.as_ref().map_or(0, |v| v.len());
            batch.push((*key, e.version.0, value));
        }
        if batch.len() >= PUSH_BATCH || bytes >= PUSH_BYTES || n + 1 == keys.len() {
            if batch.is_empty() {
                continue;
            }
            match c.vrp(&batch).await? {
                Status::T => {}
                other => {
                    return Err(Error::Peer(format!(
                        "{} answered {other:?} to copies we sent",
                        c.peer()
                    )))
                }
            }
            done.pushed += batch.len() as u64;
            done.pushed_bytes += bytes as u64;
            batch.clear();
            bytes = 0;
        }
    }
    Ok(())
}

/// Every key of `[a, b)` at the peer with its version, a VKL answer at a time.
async fn list_all(
    c: &mut Client,
    a: HashKey,
    b: HashKey,
    listed: &mut u64,
) -> Result<Vec<(HashKey, u64, bool)>> {
    let mut out = Vec::new();
    let mut from = a;
    loop {
        let (page, more) = c.vkl(&from, &b, LIST_MAX).await?;
        *listed += 30 * page.len() as u64;
        let last = page.last().map(|e| e.0);
        out.extend(page);
        match (more, last) {
            (true, Some(last)) => from = last.wrapping_add(&HashKey::pow2(0)),
            _ => return Ok(out),
        }
    }
}

/// The arcs we hold as copies: `(owner, from, to)` for each of our `replicas` successors.
pub fn held_arcs(node: &Node) -> Vec<(Peer, HashKey, HashKey)> {
    let ring = node.ring().clone();
    if ring.is_alone() {
        return Vec::new();
    }
    let k = node.config.replicas;
    let mut out = Vec::new();
    for i in 0..k {
        let Some(owner) = ring.successors.get(i).copied() else {
            break;
        };
        let end = ring.successors.get(i + 1).copied().unwrap_or(ring.me);
        out.push((owner, owner.id, end.id));
        if end == ring.me {
            break;
        }
    }
    out
}

/// Brings every copy we hold up to date with its owner's, once. Returns whether every arc
/// was compared.
pub async fn sync_held(node: &Node) -> bool {
    let arcs = held_arcs(node);
    node.sync
        .keep(&arcs.iter().map(|(o, _, _)| o.addr).collect::<Vec<_>>());
    let enc = node.config.address_encoding;
    let mut all = true;
    for (owner, from, to) in arcs {
        if !node.extensions.replicas(owner.addr, enc).await {
            // A plain owner sends us no writes, and has no digests to compare.
            node.sync.set(owner.addr, ArcSync::Plain);
            continue;
        }
        let started = Instant::now();
        match sync_range(
            node,
            owner.addr,
            from,
            to,
            Direction::Both,
            Watch::Copy(owner.addr),
        )
        .await
        {
            Ok(s) => {
                node.sync.set(owner.addr, ArcSync::Synced(Instant::now()));
                if s.pulled + s.pushed > 0 {
                    info!(
                        owner = %owner.addr,
                        "copy of its arc synced in {:.1?}: {} of {} segments differed, {} \
                         entries ({} bytes) taken, {} ({} bytes) given",
                        started.elapsed(),
                        s.differing,
                        s.segments,
                        s.pulled,
                        s.pulled_bytes,
                        s.pushed,
                        s.pushed_bytes
                    );
                } else {
                    debug!(owner = %owner.addr, "copy of its arc in sync ({} segments)", s.segments);
                }
            }
            Err(e) => {
                all = false;
                node.sync.set(owner.addr, ArcSync::Failed(Instant::now()));
                warn!(owner = %owner.addr, "copy of its arc not synced: {e}");
                node.extensions.forget(owner.addr);
            }
        }
    }
    all
}

/// Time before a failed comparison is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Runs [`sync_held`] every `sync_interval_secs`, as soon as the arcs we hold change, and a
/// few seconds after a comparison failed.
pub async fn sync_loop(node: Arc<Node>) {
    if node.config.replicas == 0 {
        return;
    }
    let every = Duration::from_secs(node.config.sync_interval_secs.max(1));
    let check = Duration::from_millis(node.config.maintenance_interval_ms.max(50));
    let mut last_arcs = Vec::new();
    let mut next: Option<Instant> = None;
    loop {
        tokio::time::sleep(check).await;
        if node.departed() {
            return;
        }
        // After a start or a join the list holds two peers: until it is rebuilt, the arcs
        // past them would look like ours to hold, and a comparison would pull them.
        if !node.successors_fresh() {
            continue;
        }
        let arcs: Vec<(PeerAddr, HashKey)> = held_arcs(&node)
            .iter()
            .map(|(o, _, to)| (o.addr, *to))
            .collect();
        let due = next.is_none_or(|t| Instant::now() >= t);
        if arcs != last_arcs || due {
            let all = sync_held(&node).await;
            if arcs != last_arcs {
                // What we held and hold no more (or a plain owner's arc) goes now, not at the
                // next periodic repair pass.
                node.repair.notify_one();
            }
            last_arcs = arcs;
            next = Some(Instant::now() + if all { every } else { RETRY_AFTER });
        }
    }
}

/// Entries dropped under one exclusive section of the write gate.
const DROP_CHUNK: usize = 1000;

/// Releases the first arc past the range we hold, `[held_until(K), the peer after it)`: the
/// arc we held until a node joined among our successors (or our successor list grew back).
/// Before our copy goes, every node that holds that arc now (its owner and the owner's K
/// predecessors, which are our first K + 1 successors) is given what it lacks of ours; only
/// once each confirmed is ours dropped, entry by entry unless it changed meanwhile. So the
/// copies of an entry never fall below what the ring holds.
///
/// Returns where the repair pass's hand-over of single entries starts (past this arc, or at
/// it when its owner keeps no replicas), and the entries dropped and kept.
pub async fn release_next_arc(node: &Node, ring: &RingState) -> Result<(HashKey, u64, u64)> {
    let k = node.config.replicas;
    let end = ring.held_until(k);
    if k == 0 || end == ring.me {
        return Ok((end.id, 0, 0));
    }
    let next = ring.successors.get(k + 1).copied().unwrap_or(ring.me);
    let (from, to) = (end.id, next.id);
    let ours = node
        .arc_work("counting a range", move |s| {
            s.count_arc_versioned(&from, &to)
        })
        .await?;
    if ours == 0 {
        return Ok((to, 0, 0));
    }
    let enc = node.config.address_encoding;
    if !node.extensions.replicas(end.addr, enc).await {
        return Ok((from, 0, 0)); // a plain owner: entry by entry, as PROTOCOL.md says
    }
    for holder in ring.successors.iter().take(k + 1) {
        if !node.extensions.replicas(holder.addr, enc).await {
            continue; // keeps no copies
        }
        if let Err(e) =
            sync_range(node, holder.addr, from, to, Direction::Push, Watch::Nothing).await
        {
            debug!(holder = %holder.addr, "our copy of {}'s arc kept: {e}", end.addr);
            return Ok((to, 0, ours));
        }
    }
    let Some(dropped) = drop_range(node, from, to, end, k).await? else {
        return Ok((to, 0, ours));
    };
    info!(
        "dropped our copy of {} entries of {}'s arc, which its {} holders now hold",
        dropped,
        end.addr,
        k + 1
    );
    Ok((to, dropped, ours.saturating_sub(dropped)))
}

/// Before we leave: each of our K + 1 nearest predecessors will hold one arc more than it does
/// now (the i-th, the arc K + 1 - i places along from ours: the K-th successor's for the first,
/// ours for the (K+1)-th), and our copies of those arcs go with us. So each first gets what it
/// lacks of ours, and the copies of an entry do not fall below K + 1 while the ring catches
/// up. Best effort: a predecessor that cannot be reached catches up by its own comparisons.
pub async fn hand_copies_before_leaving(node: &Node) {
    let k = node.config.replicas;
    if k == 0 {
        return;
    }
    let ring = node.ring().clone();
    // Our arc, then those we hold as copies.
    let mut arcs = vec![(ring.me, ring.me.id, ring.successor().id)];
    arcs.extend(held_arcs(node));
    let preds = match node.predecessors(k + 1).await {
        Ok(p) => p,
        Err(e) => {
            warn!("leaving without first handing our copies to our predecessors: {e}");
            return;
        }
    };
    let enc = node.config.address_encoding;
    for (i, pred) in preds.iter().enumerate() {
        let Some((owner, from, to)) = (k + 1).checked_sub(i + 1).and_then(|j| arcs.get(j)) else {
            continue;
        };
        if !node.extensions.replicas(*pred, enc).await {
            continue;
        }
        match sync_range(node, *pred, *from, *to, Direction::Push, Watch::Nothing).await {
            Ok(s) => info!(
                "before leaving: {pred} holds {}'s arc ({} entries it lacked given)",
                owner.addr, s.pushed
            ),
            Err(e) => warn!(
                "before leaving: {pred} did not take {}'s arc: {e}",
                owner.addr
            ),
        }
    }
}

/// Drops what we hold of `[from, to)` that we do not hold any more (`Node::holds`), entry by
/// entry unless it changed since it was listed, while our held range still ends at `end`.
/// `None` if the ring changed first (what was dropped until then stays dropped).
async fn drop_range(
    node: &Node,
    from: HashKey,
    to: HashKey,
    end: Peer,
    k: usize,
) -> Result<Option<u64>> {
    let mut dropped = 0;
    let mut cursor = from;
    loop {
        if node.departed() || node.ring().held_until(k) != end {
            return Ok(None);
        }
        let c = cursor;
        let chunk: Vec<(HashKey, Version, bool)> = node
            .arc_work("listing a range", move |s| {
                s.versions_in(&c, &to)
                    .take(DROP_CHUNK)
                    .collect::<Result<Vec<_>>>()
            })
            .await?;
        let Some(last) = chunk.last().map(|e| e.0) else {
            break;
        };
        // Never while a handoff runs (see the repair pass), and under the gate so that a key
        // that became ours meanwhile stays.
        let ticket = {
            let _no_handoff = node.handoff.lock().await;
            node.gate
                .exclusive(|| -> Result<_> {
                    let mut last = None;
                    for (key, version, _) in &chunk {
                        if node.holds(key) {
                            continue;
                        }
                        let (gone, t) =
                            super::blocking(|| node.storage.remove_if_version(key, *version))?;
                        dropped += u64::from(gone);
                        last = Some(t);
                    }
                    Ok(last)
                })
                .await?
        };
        if let Some(t) = ticket {
            node.storage.sync(t).await?;
        }
        if chunk.len() < DROP_CHUNK {
            break;
        }
        cursor = last.wrapping_add(&HashKey::pow2(0));
    }
    Ok(Some(dropped))
}

/// Drops our copies of the arcs of successors that keep no replicas (plain peers), among the
/// K whose arcs we would hold. Such an owner sends us no writes and has no digests to compare,
/// so a copy there could only grow stale, and serving it after a failover would undo the
/// owner's removals and overwrites. The owner got its arc by a CON (which we or another owner
/// served), so our copy is not handed to it: it is dropped.
pub async fn drop_plain_copies(node: &Node, ring: &RingState) -> Result<u64> {
    let k = node.config.replicas;
    let plain = node.sync.plain_owners();
    if k == 0 || plain.is_empty() || ring.is_alone() {
        return Ok(0);
    }
    let end = ring.held_until(k);
    let mut dropped = 0;
    for (i, owner) in ring.successors.iter().take(k).enumerate() {
        if !plain.contains(&owner.addr) {
            continue;
        }
        let to = ring.successors.get(i + 1).copied().unwrap_or(ring.me).id;
        if let Some(n) = drop_range(node, owner.id, to, end, k).await? {
            if n > 0 {
                info!(
                    "dropped our copy of {n} entries of {}'s arc: it keeps no replicas",
                    owner.addr
                );
            }
            dropped += n;
        }
    }
    Ok(dropped)
}
