//! `dht-store status --data DIR`: what a running node says of itself on its admin socket
//! (`STATUS`), with no network involved. [`NodeStatus`] is the answer, sent as one line of JSON
//! and printed by the CLI as text or, with `--json`, as that JSON (its field names are stable
//! and listed in README.md).
//!
//! Keys and value bytes are counted by a scan of the data tree (the node keeps no running
//! counters): on a blocking thread, one scan at a time, stopped after [`COUNT_FOR`] (the
//! figures then say they are lower bounds, `count_complete: false`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Node;
use crate::protocol::HashKey;
use crate::ring::{distance, Peer};
use crate::storage::{HandoffRecord, Phase};

/// Longest a status request scans the data tree for its counts.
pub const COUNT_FOR: Duration = Duration::from_secs(5);

/// One status count at a time: a script polling `status` in a loop must not stack scans.
static COUNTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What a running node says of itself (`dht-store status`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The build serving, so that a status taken after an upgrade shows which one answered.
    pub version: String,
    /// The data directory the node serves (absolute, from the node's working directory).
    pub data_dir: String,
    /// The node's advertised address (HOST:PORT), which its id and place derive from.
    pub address: String,
    /// Its id on the circle: SHA-1 of the address, 40 hex digits.
    pub id: String,
    /// "member" (serving its arc) or "departed" (left the ring; owns nothing, stopping).
    pub state: String,
    /// Whether the storage still takes writes (it stops for good after a failed write and
    /// then serves reads only): the first thing to look at when puts fail.
    pub writable: bool,
    /// The PeerAddress encoding the node speaks ("compact" or "text").
    pub address_encoding: String,
    /// The arc of the circle this node owns; `None` once departed.
    pub arc: Option<ArcStatus>,
    /// The peer just below us on the circle, if known: whom a leave hands our arc to.
    pub predecessor: Option<PeerStatus>,
    /// The successor list, nearest first: who takes over if our successor dies. `[us]` for a
    /// ring of one.
    pub successors: Vec<PeerStatus>,
    /// Every peer the node has known, in the order met, and what it last saw of each: where
    /// it looks for the ring when its successors are all dead.
    pub known_peers: Vec<KnownPeer>,
    /// Keys in the arc the node owns (the same count as INF's `keys`); `None` if the count
    /// failed.
    pub keys: Option<u64>,
    /// Value bytes of those keys: the sum of the values' lengths, not the space sled uses on
    /// disk; `None` if the count failed.
    pub value_bytes: Option<u64>,
    /// Keys held besides: copies of the arcs of the node's `replicas` successors (INF's
    /// `copies`), and entries waiting for the repair pass.
    pub copies: Option<u64>,
    /// Value bytes of those copies.
    pub copy_bytes: Option<u64>,
    /// `false` if the count stopped after its time limit: `keys` and `value_bytes` are then
    /// lower bounds.
    pub count_complete: bool,
    /// Why the count failed, if it did.
    pub count_error: Option<String>,
    /// Whole seconds since the node started serving.
    pub uptime_secs: u64,
    /// The handoff (CON or DIS) running now, if any: what holds up writes to a moving arc.
    pub handoff: Option<HandoffStatus>,
    /// The backup running now through the admin socket, if any.
    pub backup: Option<BackupStatus>,
}

/// An arc of the circle, `[start, end)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArcStatus {
    /// Its first key: our id (40 hex digits).
    pub start: String,
    /// The first key past it: our successor's id (equal to `start` in a ring of one, where
    /// the arc is the whole circle).
    pub end: String,
    /// Its share of the circle, 0 to 1: how much of the ring's data should be here.
    pub share: f64,
}

/// A peer of the ring.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Its address (HOST:PORT).
    pub address: String,
    /// Its id (40 hex digits), to place it on the circle.
    pub id: String,
}

/// A known peer and what we last saw of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KnownPeer {
    /// Its address (HOST:PORT).
    pub address: String,
    /// "alive" (answered lately), "dead" (its last request failed) or "unasked" (not asked
    /// since the node started).
    pub state: String,
}

/// A handoff in progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HandoffStatus {
    /// "CON" (a join) or "DIS" (a leave).
    pub exchange: String,
    /// "sending" or "receiving" the arc.
    pub role: String,
    /// What the handoff record on disk says of it: "streaming" (entries moving; a crash
    /// now keeps the arc where it was), "handed" (the other side confirmed; handed entries
    /// are being deleted), "receiving", or `None` before the record is written.
    pub phase: Option<String>,
    /// The node at the other end.
    pub peer: String,
    /// The arc moving, `[arc_start, arc_end)` (40 hex digits each).
    pub arc_start: String,
    /// The end of the arc moving (exclusive).
    pub arc_end: String,
    /// Entries moved so far.
    pub entries: u64,
    /// Entries the count announced (0 until it is known, and on the sending side, which
    /// counts as it goes).
    pub entries_total: u64,
    /// Value bytes moved so far.
    pub value_bytes: u64,
    /// Seconds since it began, to tell a slow handoff from a stuck one.
    pub seconds: f64,
}

/// A backup in progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackupStatus {
    /// The archive being written.
    pub out: String,
    /// Entries written so far.
    pub entries: u64,
    /// Value bytes written so far.
    pub value_bytes: u64,
    /// Seconds since it began.
    pub seconds: f64,
}

/// The backups running through the admin socket, for `status`.
#[derive(Default)]
pub struct Backups {
    /// Each one running now (a backup asked for while another runs waits for the cut).
    running: Mutex<Vec<Arc<BackupRun>>>,
}

/// One backup's counters, updated by the archive writer's progress callback.
#[derive(Debug)]
pub struct BackupRun {
    /// The archive being written.
    pub out: PathBuf,
    /// Entries written so far.
    pub entries: AtomicU64,
    /// Value bytes written so far.
    pub bytes: AtomicU64,
    /// When it began.
    pub started: Instant,
}

impl Backups {
    /// Registers a backup to `out`; it shows in `status` until the guard drops.
    pub fn begin(self: &Arc<Self>, out: PathBuf) -> BackupGuard {
        let run = Arc::new(BackupRun {
            out,
            entries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            started: Instant::now(),
        });
        self.lock().push(run.clone());
        BackupGuard {
            backups: self.clone(),
            run,
        }
    }

    /// The oldest backup running, if any.
    fn current(&self) -> Option<Arc<BackupRun>> {
        self.lock().first().cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<BackupRun>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running backup's registration: removed from [`Backups`] when dropped, however the backup
/// ended.
pub struct BackupGuard {
    /// Where it is registered.
    backups: Arc<Backups>,
    /// Its counters.
    pub run: Arc<BackupRun>,
}

impl Drop for BackupGuard {
    fn drop(&mut self) {
        self.backups.lock().retain(|r| !Arc::ptr_eq(r, &self.run));
    }
}

/// The share of the circle that `[from, to)` covers; the whole circle when `from == to`.
pub fn share(from: &HashKey, to: &HashKey) -> f64 {
    if from == to {
        return 1.0;
    }
    let d = distance(from, to);
    let n = d.0.iter().fold(0f64, |acc, b| acc * 256.0 + f64::from(*b));
    n / 2f64.powi(160)
}

fn peer(p: &Peer) -> PeerStatus {
    PeerStatus {
        address: p.addr.to_string(),
        id: p.id.to_string(),
    }
}

/// Builds the node's status; counts the data tree on a blocking thread (see the module doc).
pub async fn status(node: &Node, backups: &Backups) -> NodeStatus {
    let counted = {
        let _one = COUNTING.lock().await;
        let deadline = Instant::now() + COUNT_FOR;
        let ring = node.ring().clone();
        let (from, to) = (ring.me.id, ring.successor().id);
        node.arc_work("counting for status", move |s| {
            Ok((s.tally_arc(&from, &to, Some(deadline))?, s.tally(deadline)?))
        })
        .await
    };
    let ring = node.ring().clone();
    let departed = node.departed();
    let handoff = node.progress.current().map(|p| {
        let t = p.transfer;
        let phase = match node.storage.load_handoff() {
            Ok(Some(
                HandoffRecord::ServingCon { phase, .. } | HandoffRecord::Leaving { phase, .. },
            )) => Some(match phase {
                Phase::Streaming => "streaming",
                Phase::Handed => "handed",
            }),
            Ok(Some(
                HandoffRecord::ReceivingCon { .. }
                | HandoffRecord::ReceivingDis { .. }
                | HandoffRecord::ReceivingDisInPlace { .. },
            )) => Some("receiving"),
            Ok(Some(HandoffRecord::JoinedCon { .. })) => Some("acknowledging"),
            _ => None,
        };
        HandoffStatus {
            exchange: t.exchange.into(),
            role: if t.sending { "sending" } else { "receiving" }.into(),
            phase: phase.map(Into::into),
            peer: t.peer.to_string(),
            arc_start: t.from.to_string(),
            arc_end: t.to.to_string(),
            entries: p.entries.load(Ordering::Relaxed),
            entries_total: p.total.load(Ordering::Relaxed),
            value_bytes: p.bytes.load(Ordering::Relaxed),
            seconds: p.started.elapsed().as_secs_f64(),
        }
    });
    let backup = backups.current().map(|b| BackupStatus {
        out: b.out.display().to_string(),
        entries: b.entries.load(Ordering::Relaxed),
        value_bytes: b.bytes.load(Ordering::Relaxed),
        seconds: b.started.elapsed().as_secs_f64(),
    });
    let (keys, value_bytes, copies, count_complete, count_error) = match counted {
        Ok((owned, all)) => (
            Some(owned.keys),
            Some(owned.value_bytes),
            Some((
                all.keys.saturating_sub(owned.keys),
                all.value_bytes.saturating_sub(owned.value_bytes),
            )),
            owned.complete && all.complete,
            None,
        ),
        Err(e) => (None, None, None, false, Some(e.to_string())),
    };
    NodeStatus {
        version: env!("CARGO_PKG_VERSION").into(),
        data_dir: std::path::absolute(node.storage.dir())
            .unwrap_or_else(|_| node.storage.dir().to_path_buf())
            .display()
            .to_string(),
        address: ring.me.addr.to_string(),
        id: ring.me.id.to_string(),
        state: if departed { "departed" } else { "member" }.into(),
        writable: node.storage.is_writable(),
        address_encoding: node.config.address_encoding.to_string(),
        arc: (!departed).then(|| {
            let end = ring.successor().id;
            ArcStatus {
                start: ring.me.id.to_string(),
                end: end.to_string(),
                share: share(&ring.me.id, &end),
            }
        }),
        predecessor: ring.predecessor.as_ref().map(peer),
        successors: ring.successors.iter().map(peer).collect(),
        known_peers: node
            .peers()
            .states()
            .into_iter()
            .map(|(a, s)| KnownPeer {
                address: a.to_string(),
                state: s.into(),
            })
            .collect(),
        keys,
        value_bytes,
        copies: copies.map(|c| c.0),
        copy_bytes: copies.map(|c| c.1),
        count_complete,
        count_error,
        uptime_secs: node.started.elapsed().as_secs(),
        handoff,
        backup,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_of_the_circle() {
        let k = |b: u8| {
            let mut a = [0u8; 20];
            a[0] = b;
            HashKey(a)
        };
        assert_eq!(share(&k(7), &k(7)), 1.0, "a ring of one owns the circle");
        assert_eq!(share(&k(0), &k(0x80)), 0.5);
        assert_eq!(share(&k(0xc0), &k(0x40)), 0.5, "an arc across zero");
        assert_eq!(share(&k(0x40), &k(0x50)), 1.0 / 16.0);
    }

    #[test]
    fn a_backup_shows_until_its_guard_drops() {
        let b = Arc::new(Backups::default());
        assert!(b.current().is_none());
        let g = b.begin("/tmp/a".into());
        g.run.entries.store(3, Ordering::Relaxed);
        assert_eq!(
            b.current().map(|r| r.entries.load(Ordering::Relaxed)),
            Some(3)
        );
        drop(g);
        assert!(b.current().is_none());
    }
}
