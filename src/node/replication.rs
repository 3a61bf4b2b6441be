//! The owner's side of replication (extension `replicas/1`, docs/EXTENSIONS.md): who holds
//! copies of our arc, a long-lived connection to each that carries our writes in batches, and
//! the wait for every copy before a write is answered `T`.
//!
//! Our replicas are our K nearest predecessors (K = `replicas`) that advertise `replicas/1`:
//! each node holds the arcs of its K successors, so the node that inherits our arc when we die
//! already holds it. They are found by OWN walks (predecessor of us, then of it, ...), which
//! work through peers of every implementation, and refreshed every maintenance round.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::{walk, Node};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::protocol::{HashKey, Limits, PeerAddr, Status};
use crate::ring::Peer;
use crate::storage::{Version, Versioned};

/// Most entries in one VRP batch (a receiver refuses more).
pub const MAX_BATCH: u64 = 1024;
/// A batch stops growing past this many value bytes.
const BATCH_BYTES: usize = 4 << 20;
/// Writes waiting for one replica's connection: a writer past this waits to queue.
const QUEUE: usize = 4096;

/// A copy to send: the key, and its version with the value or a tombstone.
pub type Copy = (HashKey, Versioned<Arc<[u8]>>);

/// A copy as it travels in a VRP batch: key, version, value (`None`: a tombstone).
pub type Sent = (HashKey, u64, Option<Arc<[u8]>>);

/// One write waiting for one replica.
struct Job {
    /// What to send.
    copy: Copy,
    /// Told whether the replica holds it durably.
    done: oneshot::Sender<bool>,
}

/// Our replicas, and a connection to each.
#[derive(Default)]
pub struct Replication {
    /// Our replicas, nearest first, as last found; `None`: to be found before the next write
    /// (after a start, a join, or a replica that failed).
    set: Mutex<Option<Vec<PeerAddr>>>,
    /// One queue per replica, each drained by a task that owns the connection to it (the task
    /// ends when its queue is dropped here).
    links: Mutex<HashMap<PeerAddr, mpsc::Sender<Job>>>,
    /// Held while a write finds the replicas, so that writes failing together search once.
    finding: tokio::sync::Mutex<()>,
}

impl Replication {
    fn set(&self) -> std::sync::MutexGuard<'_, Option<Vec<PeerAddr>>> {
        self.set.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<PeerAddr, mpsc::Sender<Job>>> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The replicas as last found, if they are known.
    pub fn current(&self) -> Option<Vec<PeerAddr>> {
        self.set().clone()
    }

    /// Forgets the replica set: it is found again before the next write.
    pub fn invalidate(&self) {
        *self.set() = None;
    }

    /// Records a newly found set, closing the connections to peers no longer in it. Returns
    /// whether it changed.
    fn replace(&self, found: Vec<PeerAddr>) -> bool {
        self.links().retain(|p, _| found.contains(p));
        let mut set = self.set();
        let changed = set.as_ref() != Some(&found);
        *set = Some(found);
        changed
    }
}

impl Node {
    /// Finds our replicas now (OWN walks, then INF for the extension) and records them.
    pub async fn refresh_replicas(&self) -> Result<Vec<PeerAddr>> {
        let found = self.find_replicas().await?;
        let before = self.replication.current();
        if self.replication.replace(found.clone()) {
            let names: Vec<String> = found.iter().map(|p| p.to_string()).collect();
            match before {
                Some(_) => info!("replicas of our arc now: [{}]", names.join(", ")),
                None => debug!("replicas of our arc: [{}]", names.join(", ")),
            }
        }
        Ok(found)
    }

    /// Our K nearest predecessors that advertise `replicas/1`, nearest first: fewer in a ring
    /// of fewer than K + 1 nodes, none in a ring of one.
    async fn find_replicas(&self) -> Result<Vec<PeerAddr>> {
        let enc = self.config.address_encoding;
        let preds = self.predecessors(self.config.replicas).await?;
        let mut out = Vec::with_capacity(preds.len());
        for p in preds {
            // A peer of another implementation keeps no copies: it is not asked to.
            if self.extensions.replicas(p, enc).await {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Our `n` nearest predecessors, nearest first, whatever they speak (fewer in a smaller
    /// ring), by OWN walks.
    pub async fn predecessors(&self, n: usize) -> Result<Vec<PeerAddr>> {
        let enc = self.config.address_encoding;
        let me = self.ring().me;
        let mut preds: Vec<PeerAddr> = Vec::with_capacity(n);
        let mut cur = me;
        for _ in 0..n {
            let key = cur.id.prev();
            // The walk for the key below `cur` ends at its predecessor. From us it starts at
            // the closest peer we know; from a predecessor, at that predecessor.
            let mut start = if cur == me {
                self.own_answer(&key).await
            } else {
                cur.addr
            };
            // A peer that just left or died may still be the one we would start from (it
            // answered lately, so OWN names it without a PUL): found failing, it is dropped and
            // the walk starts again from the closest peer we know after it.
            let mut tries = 0;
            let pred = loop {
                if start == me.addr {
                    break me.addr;
                }
                match walk::walk(start, &key, me.addr, enc).await {
                    Ok(p) => break p,
                    // Only when `start` itself is gone: a walk may fail further on.
                    Err(e) if tries < 2 && !walk::pul(start, enc).await => {
                        tries += 1;
                        self.mark_failed(start, "PUL after an OWN walk for our replicas failed");
                        self.forget(start);
                        debug!(%start, "the walk for our replicas failed there ({e}): again");
                        start = self.own_answer(&key).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            if pred == me.addr || preds.contains(&pred) {
                break; // round the ring: it has fewer than K + 1 nodes
            }
            preds.push(pred);
            cur = Peer::new(pred);
        }
        Ok(preds)
    }

    /// The replicas a write must reach: as last found, or found now.
    async fn replicas_for_write(&self) -> Result<Vec<PeerAddr>> {
        if let Some(set) = self.replication.current() {
            return Ok(set);
        }
        // One search at a time: the writes that found the set gone wait for it.
        let _one = self.replication.finding.lock().await;
        if let Some(set) = self.replication.current() {
            return Ok(set);
        }
        self.refresh_replicas().await
    }

    /// Sends a write of ours to every replica of our arc and returns once each holds it
    /// durably; an error if one did not within `replica_timeout_ms` (the write is then answered
    /// `F`). A replica that fails makes us find the replicas again at once and send to the
    /// new ones: after a death the ring may already name another predecessor.
    pub async fn replicate(&self, copy: Copy) -> Result<()> {
        if self.config.replicas == 0 {
            return Ok(());
        }
        let timeout = Duration::from_millis(self.config.replica_timeout_ms);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut held: Vec<PeerAddr> = Vec::new();
        let mut failed = String::new();
        for attempt in 0..2 {
            // The first attempt gets half the time: a replica that stopped answering (frozen,
            // cut off) would otherwise leave none for the replicas the ring names now.
            let wait_until = if attempt == 0 {
                tokio::time::Instant::now() + timeout / 2
            } else {
                deadline
            };
            let set = match tokio::time::timeout_at(deadline, self.replicas_for_write()).await {
                Ok(Ok(set)) => set,
                Ok(Err(e)) => {
                    return Err(Error::Replicas(format!("our replicas were not found: {e}")));
                }
                Err(_) => {
                    return Err(Error::Replicas(format!(
                        "our replicas were not found within {timeout:?}"
                    )))
                }
            };
            let todo: Vec<PeerAddr> = set.into_iter().filter(|p| !held.contains(p)).collect();
            if todo.is_empty() {
                return Ok(());
            }
            let mut waits = Vec::with_capacity(todo.len());
            for peer in todo {
                let (done, wait) = oneshot::channel();
                let job = Job {
                    copy: copy.clone(),
                    done,
                };
                if self.link(peer).send(job).await.is_ok() {
                    waits.push((peer, wait));
                }
            }
            let mut missing = Vec::new();
            for (peer, wait) in waits {
                match tokio::time::timeout_at(wait_until, wait).await {
                    Ok(Ok(true)) => held.push(peer),
                    _ => missing.push(peer),
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            let names: Vec<String> = missing.iter().map(|p| p.to_string()).collect();
            failed = format!("{} did not hold it in time", names.join(", "));
            self.replication.invalidate();
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        Err(Error::Replicas(failed))
    }

    /// The queue to `peer`'s connection task, started if there is none.
    fn link(&self, peer: PeerAddr) -> mpsc::Sender<Job> {
        let mut links = self.replication.links();
        if let Some(q) = links.get(&peer).filter(|q| !q.is_closed()) {
            return q.clone();
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let limits = Limits {
            idle_timeout: Some(Duration::from_millis(self.config.replica_timeout_ms)),
            io_timeout: Some(Duration::from_millis(self.config.replica_timeout_ms)),
            max_value: self.config.max_value_size,
        };
        tokio::spawn(run_link(peer, self.config.address_encoding, limits, rx));
        links.insert(peer, tx.clone());
        tx
    }
}

/// A replica's connection: takes what is queued (up to a batch), sends it as one VRP, and
/// tells each writer the answer. Batches form while the previous one is on its way, so under
/// load one round trip and one flush at the replica serve many writes (group commit).
async fn run_link(
    peer: PeerAddr,
    enc: crate::protocol::AddressEncoding,
    limits: Limits,
    mut queue: mpsc::Receiver<Job>,
) {
    let mut client: Option<Client> = None;
    let mut down = false;
    while let Some(first) = queue.recv().await {
        let mut bytes = first.copy.1.value.as_ref().map_or(0, |v| v.len());
        let mut batch = vec![first];
        while (batch.len() as u64) < MAX_BATCH && bytes < BATCH_BYTES {
            match queue.try_recv() {
                Ok(job) => {
                    bytes += job.copy.1.value.as_ref().map_or(0, |v| v.len());
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let entries: Vec<Sent> = batch
            .iter()
            .map(|j| (j.copy.0, j.copy.1.version.0, j.copy.1.value.clone()))
            .collect();
        let held = send(&mut client, peer, enc, limits, &entries).await;
        match (held, down) {
            (Ok(()), true) => {
                info!(%peer, "replica holds our writes again");
                down = false;
            }
            (Err(e), false) => {
                warn!(%peer, "replica did not hold a batch of our writes: {e}");
                down = true;
            }
            _ => {}
        }
        let held = !down;
        for job in batch {
            let _ = job.done.send(held);
        }
    }
}

/// Sends one batch, on the open connection or a new one; a connection that fails after being
/// reused (the replica may have closed it while idle) is replaced once. VRP is idempotent: the
/// newer version wins.
async fn send(
    client: &mut Option<Client>,
    peer: PeerAddr,
    enc: crate::protocol::AddressEncoding,
    limits: Limits,
    entries: &[Sent],
) -> Result<()> {
    for _ in 0..2 {
        let reused = client.is_some();
        let c = match client {
            Some(c) => c,
            None => client.insert(Client::connect_with(peer, enc, limits).await?),
        };
        match c.vrp(entries).await {
            Ok(Status::T) => return Ok(()),
            Ok(s) => {
                *client = None;
                return Err(Error::Peer(format!("{peer} answered {s:?} to VRP")));
            }
            Err(e) => {
                *client = None;
                if !reused {
                    return Err(e);
                }
                debug!(%peer, "replica connection failed ({e}): opening another");
            }
        }
    }
    Err(Error::Peer(format!("{peer}: VRP failed twice")))
}

/// Finds our replicas again every maintenance round: a predecessor that died, joined or left
/// changes them, and a write must reach the ones the ring has now.
pub async fn replica_loop(node: Arc<Node>) {
    if node.config.replicas == 0 {
        return;
    }
    let every = Duration::from_millis(node.config.maintenance_interval_ms.max(50));
    loop {
        tokio::time::sleep(every).await;
        if node.departed() {
            return;
        }
        if node.ring().is_alone() {
            node.replication.replace(Vec::new());
            continue;
        }
        if let Err(e) = node.refresh_replicas().await {
            debug!("finding our replicas: {e}");
        }
    }
}

/// The version and value of a write, as its copies carry them.
pub fn copy_of(key: HashKey, version: Version, value: Option<&[u8]>) -> Copy {
    (
        key,
        Versioned {
            version,
            value: value.map(Arc::from),
        },
    )
}
