//! The running node: shared state ([`Node`]), start-up, resume and crash recovery ([`run`]),
//! the TCP server (`server`), one handler per protocol command (`commands`), joining and
//! leaving (`handoff`), ring maintenance and the repair pass (`maintenance`), and the local
//! admin socket (`admin`) with what it answers to `status` (`status`).

mod admin;
mod commands;
mod counts;
mod extensions;
mod gate;
mod handoff;
mod maintenance;
mod peers;
mod progress;
mod replica;
mod replication;
mod server;
pub mod status;
mod sync;
mod walk;
mod work;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::protocol::{HashKey, PeerAddr};
use crate::ring::{Peer, RingState};
use crate::storage::{Change, HandoffRecord, Storage};

pub use admin::{request_backup, request_leave, request_status};
pub use gate::WriteGate;
pub use handoff::BATCH_BYTES;
pub use progress::{Progress, Transfer};
pub use server::Shutdown;
pub use work::{blocking, BLOCKING_ABOVE};

/// The outcome of a write at this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Applied and flushed; for a removal, the key was there.
    Done,
    /// A removal of a key that was not there (nothing to flush).
    Absent,
    /// The key is not (or no longer) ours.
    NotMine,
}

/// State shared by every connection and task of one node.
pub struct Node {
    /// Settings, fixed for the life of the process.
    pub config: Config,
    /// The data directory: entries, ring state, handoff record.
    pub storage: Arc<Storage>,
    /// What we know of the ring. A std lock: held only for in-memory reads, never across an
    /// `.await`. Changes that move ownership are made under the [`WriteGate`] as well.
    ring: RwLock<RingState>,
    /// Where writes meet a moving arc.
    pub gate: WriteGate,
    /// One handoff (serving CON or DIS, joining, leaving, a repair chunk) at a time.
    handoff: tokio::sync::Mutex<()>,
    /// Held by whoever changes the ring state ([`Node::switch_ring`], [`Node::update_ring`]):
    /// each computes the next state from the current one, so they go one at a time.
    ring_writer: tokio::sync::Mutex<()>,
    /// The handoff running now, for INF.
    progress: progress::Tracker,
    /// Set once a leave completed: we own nothing and answer `N` to every data request.
    departed: AtomicBool,
    /// The peer a leave of ours was handing our range to when the node crashed (from the
    /// handoff record): the place check joins it even as a ring of one.
    left_to: Mutex<Option<PeerAddr>>,
    /// Every peer we have known and what we last saw of it: where we look for the ring when
    /// our successors are all dead, and so that OWN neither PULs a peer on every answer nor
    /// names one it found dead.
    peers: Mutex<peers::Peers>,
    /// Asks the server to stop (after a completed leave).
    stop: Notify,
    /// Wakes the repair pass (after a handoff).
    repair: Notify,
    /// When the node started serving, for INF.
    started: Instant,
    /// Which peers advertised which extension: only those are sent its commands.
    pub extensions: extensions::Extensions,
    /// Our replicas and the connections that carry our writes to them.
    replication: replication::Replication,
    /// What anti-entropy moved, and where each copy we hold stands.
    sync: sync::SyncState,
    /// INF's last complete count of the entries held, so that INF answers within a budget.
    counts: Arc<counts::Counts>,
    /// Whether the successor list was rebuilt (ABD down the ring) since the ring state last
    /// switched: after a start or a join it holds two peers, and the arcs we hold as copies are
    /// known only once it is whole.
    successors_fresh: AtomicBool,
}

/// How long a peer counts as alive after it last answered.
const ALIVE_FOR: Duration = Duration::from_secs(2);

impl Node {
    pub fn new(config: Config, storage: Storage, ring: RingState) -> Node {
        let saved = storage.load_peers().unwrap_or_else(|e| {
            warn!("starting without the peers known before: {e}");
            Vec::new()
        });
        let peers = peers::Peers::new(ring.me.addr, saved, ring.known().map(|p| p.addr));
        Node {
            config,
            storage: Arc::new(storage),
            ring: RwLock::new(ring),
            gate: WriteGate::default(),
            handoff: tokio::sync::Mutex::new(()),
            ring_writer: tokio::sync::Mutex::new(()),
            progress: progress::Tracker::default(),
            departed: AtomicBool::new(false),
            peers: Mutex::new(peers),
            left_to: Mutex::new(None),
            stop: Notify::new(),
            repair: Notify::new(),
            started: Instant::now(),
            extensions: extensions::Extensions::default(),
            replication: replication::Replication::default(),
            sync: sync::SyncState::default(),
            counts: Arc::default(),
            successors_fresh: AtomicBool::new(false),
        }
    }

    /// Whether `peer` speaks the `versions/1` extension (asked once, then remembered).
    pub async fn speaks_versions(&self, peer: PeerAddr) -> bool {
        self.extensions
            .versions(peer, self.config.address_encoding)
            .await
    }

    pub fn ring(&self) -> RwLockReadGuard<'_, RingState> {
        self.ring.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn me(&self) -> PeerAddr {
        self.ring().me.addr
    }

    pub fn departed(&self) -> bool {
        self.departed.load(Ordering::Acquire)
    }

    /// Whether we own `key` now.
    pub fn owns(&self, key: &HashKey) -> bool {
        !self.departed() && self.ring().owns(key)
    }

    /// Whether `key` lies in the range we hold: our arc, or the arc of one of our `replicas`
    /// successors, of which we keep a copy (unless that successor keeps no replicas).
    pub fn holds(&self, key: &HashKey) -> bool {
        let plain = self.sync.plain_owners();
        !self.departed() && self.ring().holds(key, self.config.replicas, &plain)
    }

    /// Whether the successor list was rebuilt since the ring state last switched.
    pub fn successors_fresh(&self) -> bool {
        self.successors_fresh.load(Ordering::Acquire)
    }

    /// Notes that the successor list was just rebuilt from the live ring.
    pub fn note_successors_fresh(&self) {
        self.successors_fresh.store(true, Ordering::Release);
    }

    /// Replaces the in-memory ring state and persists it (with the handoff record change
    /// given), under the write gate so that every write sees the switch atomically. `None`
    /// means we left: we own nothing and the ring state is removed. Returns once durable.
    pub async fn switch_ring(
        &self,
        state: Option<RingState>,
        handoff: Change<&HandoffRecord>,
    ) -> Result<()> {
        let _writer = self.ring_writer.lock().await;
        let ticket = self
            .gate
            .exclusive(|| -> Result<_> {
                let ring = match &state {
                    Some(s) => Change::Set(s),
                    None => Change::Clear,
                };
                let t = self.storage.save_state(ring, handoff)?;
                self.successors_fresh.store(false, Ordering::Release);
                match state {
                    Some(s) => *self.ring.write().unwrap_or_else(|e| e.into_inner()) = s,
                    None => self.departed.store(true, Ordering::Release),
                }
                Ok(t)
            })
            .await?;
        self.storage.sync(ticket).await
    }

    /// Changes the ring state with `f` (which sees the current state) and persists it, if `f`
    /// returns `true`. Only a change of ownership (our successor) goes through the write
    /// gate's exclusive section; the maintenance's other changes (fingers, second successor,
    /// predecessor; one every round) do not hold up writes.
    pub async fn update_ring(&self, f: impl FnOnce(&mut RingState) -> bool) -> Result<bool> {
        let _writer = self.ring_writer.lock().await;
        let current = self.ring().clone();
        let mut next = current.clone();
        if self.departed() || !f(&mut next) {
            return Ok(false);
        }
        let save = || -> Result<_> {
            if self.departed() {
                return Ok(None);
            }
            let t = self.storage.save_state(Change::Set(&next), Change::Keep)?;
            *self.ring.write().unwrap_or_else(|e| e.into_inner()) = next.clone();
            Ok(Some(t))
        };
        let ticket = if next.me == current.me && next.successor() == current.successor() {
            save()?
        } else {
            self.gate.exclusive(save).await?
        };
        match ticket {
            Some(t) => {
                self.storage.sync(t).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Persists (or clears) the handoff record alone and waits until it is durable.
    pub async fn set_handoff(&self, rec: Option<&HandoffRecord>) -> Result<()> {
        let rec = rec.map_or(Change::Clear, Change::Set);
        let t = self.storage.save_state(Change::Keep, rec)?;
        self.storage.sync(t).await
    }

    /// Stores `value` under `key` if we own it, and returns once it is flushed.
    pub async fn insert(&self, key: &HashKey, value: Vec<u8>) -> Result<Written> {
        let Some(accepted) = self.gate.begin_insert(key, || self.owns(key)).await else {
            return Ok(Written::NotMine);
        };
        self.finish_insert(accepted, value).await
    }

    /// Applies an INS registered with [`WriteGate::begin_insert`].
    pub async fn finish_insert(
        &self,
        accepted: gate::Accepted<'_>,
        value: Vec<u8>,
    ) -> Result<Written> {
        let key = accepted.key;
        let len = value.len();
        // The copies' value, taken before the storage consumes ours.
        let shared: Option<Arc<[u8]>> = self.replicating().then(|| value.as_slice().into());
        self.finish_accepted(accepted, len, || {
            let (version, ticket) = self.storage.insert_versioned(&key, value)?;
            let copy = shared.map(|v| {
                (
                    key,
                    crate::storage::Versioned {
                        version,
                        value: Some(v),
                    },
                )
            });
            Ok((ticket, copy))
        })
        .await
    }

    /// Applies a VIN registered with [`WriteGate::begin_insert`]: the entry is stored if it is
    /// newer than what we hold (`Written::Done` either way: we hold it or something newer).
    pub async fn finish_apply(
        &self,
        accepted: gate::Accepted<'_>,
        entry: crate::storage::Versioned<Vec<u8>>,
    ) -> Result<Written> {
        let key = accepted.key;
        let len = entry.value.as_ref().map_or(0, Vec::len);
        let copy = self
            .replicating()
            .then(|| replication::copy_of(key, entry.version, entry.value.as_deref()));
        self.finish_accepted(accepted, len, || {
            let (applied, ticket) = self.storage.apply(&key, entry)?;
            Ok((ticket, copy.filter(|_| applied)))
        })
        .await
    }

    /// Whether our writes go to replicas (`replicas` > 0).
    fn replicating(&self) -> bool {
        self.config.replicas > 0
    }

    /// Runs `store` for a write that passed the gate's first step, if the key is still ours,
    /// and returns once it is durable here and, for what `store` hands back to copy, at every
    /// replica (both at once).
    async fn finish_accepted(
        &self,
        accepted: gate::Accepted<'_>,
        len: usize,
        store: impl FnOnce() -> Result<(crate::storage::Ticket, Option<replication::Copy>)>,
    ) -> Result<Written> {
        let key = accepted.key;
        let applied = self
            .gate
            .finish_insert(accepted, || -> Result<Option<_>> {
                if !self.owns(&key) {
                    return Ok(None);
                }
                Ok(Some(self.storage_work(&key, len, store)?))
            })
            .await;
        match applied {
            gate::Pass::Go(Ok(Some((ticket, copy)))) => {
                self.durable_everywhere(ticket, copy).await?;
                Ok(Written::Done)
            }
            gate::Pass::Go(Ok(None)) | gate::Pass::Closed => Ok(Written::NotMine),
            gate::Pass::Go(Err(e)) => Err(e),
        }
    }

    /// Waits for our flush of `ticket` and, at the same time, for every replica to hold `copy`.
    async fn durable_everywhere(
        &self,
        ticket: crate::storage::Ticket,
        copy: Option<replication::Copy>,
    ) -> Result<()> {
        match copy {
            Some(copy) => {
                let (here, there) = tokio::join!(self.storage.sync(ticket), self.replicate(copy));
                here?;
                there
            }
            None => self.storage.sync(ticket).await,
        }
    }

    /// Removes `key` if we own it, and returns once the removal is flushed (here and at every
    /// replica: the tombstone travels as a write does). With replicas, a key we do not hold
    /// gets a tombstone too (answered `F`): after a failover our copy may lack a value that a
    /// replica still holds, which would otherwise come back at the next comparison.
    pub async fn remove(&self, key: &HashKey) -> Result<Written> {
        let applied = self
            .gate
            .pass(key, || -> Result<Option<_>> {
                if !self.owns(key) {
                    return Ok(None);
                }
                Ok(Some(self.storage_work(key, 0, || {
                    self.storage.remove_versioned(key, self.replicating())
                })?))
            })
            .await?;
        let Some((live, version, ticket)) = applied else {
            return Ok(Written::NotMine);
        };
        let copy = version
            .filter(|_| self.replicating())
            .map(|v| replication::copy_of(*key, v, None));
        self.durable_everywhere(ticket, copy).await?;
        Ok(if live { Written::Done } else { Written::Absent })
    }

    /// Runs `f`, storage work on `key` that writes `len` bytes, in [`blocking`] when it handles
    /// a large value: `len` over [`BLOCKING_ABOVE`], or a stored value over it that `f`
    /// replaces or removes (piece 0 says; one lookup, only in a directory that holds pieces).
    fn storage_work<T>(
        &self,
        key: &HashKey,
        len: usize,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        if len as u64 > BLOCKING_ABOVE || self.storage.longer_than(key, BLOCKING_ABOVE)? {
            blocking(f)
        } else {
            f()
        }
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, peers::Peers> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that `peer` answered just now (and logs it if it had been failing).
    pub fn mark_alive(&self, peer: PeerAddr) {
        if self.peers().answered(peer) == Some(peers::Change::Back) {
            info!(%peer, "peer answers again");
        }
    }

    /// Notes that a request to `peer` failed just now (and logs it the first time).
    pub fn mark_failed(&self, peer: PeerAddr, what: &str) {
        if self.peers().failed(peer) == Some(peers::Change::Down) {
            warn!(%peer, "peer does not answer ({what}): counted as dead until it answers again");
        }
    }

    /// Adds peers we heard of (in OWN or ABD answers, a CON) to the known set.
    pub fn meet(&self, peers: impl IntoIterator<Item = PeerAddr>) {
        let mut known = self.peers();
        for p in peers {
            known.meet(p);
        }
    }

    fn recently_alive(&self, peer: &PeerAddr) -> bool {
        self.peers().answered_within(peer, ALIVE_FOR)
    }

    /// Whether the last request to `peer` failed.
    pub fn seems_dead(&self, peer: &PeerAddr) -> bool {
        self.peers().is_dead(peer)
    }

    /// Drops a dead peer from the fingers and the predecessor (the successors are the
    /// maintenance's to replace). In memory only: the next persisted change carries it.
    pub fn forget(&self, peer: PeerAddr) {
        let mut ring = self.ring.write().unwrap_or_else(|e| e.into_inner());
        let me = ring.me;
        for f in ring.fingers.iter_mut() {
            if f.addr == peer {
                *f = me;
            }
        }
        if ring.predecessor.is_some_and(|p| p.addr == peer) {
            ring.predecessor = None;
        }
    }

    /// Notes that a leave of ours to `peer` was cut short by a crash.
    pub fn note_left_to(&self, peer: PeerAddr) {
        *self.left_to.lock().unwrap_or_else(|e| e.into_inner()) = Some(peer);
    }

    /// See [`Node::note_left_to`].
    pub fn left_to(&self) -> Option<PeerAddr> {
        *self.left_to.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// We joined again: no leave of ours is pending any more.
    pub fn clear_left_to(&self) {
        *self.left_to.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Forgets `peer`, which left the ring.
    pub fn forget_peer(&self, peer: PeerAddr) {
        self.peers().forget(&peer);
    }

    /// Forgets every peer: we left the ring.
    pub fn clear_peers(&self) {
        self.peers().clear();
    }

    /// Every peer we have known, in the order met.
    pub fn known_peers(&self) -> Vec<PeerAddr> {
        self.peers().known().to_vec()
    }

    /// The next known peer to ask where we are in the ring, in turn.
    pub fn next_place_check(&self) -> Option<PeerAddr> {
        let me = self.me();
        self.peers().next_to_probe(&[me])
    }

    /// Saves the known peers if they changed since they were last saved.
    pub async fn save_peers(&self) -> Result<()> {
        let Some(known) = self.peers().take_changed() else {
            return Ok(());
        };
        let t = self.storage.save_peers(&known)?;
        self.storage.sync(t).await
    }

    /// The OWN answer: the closest known peer at or below `key`, checking with PUL that a peer
    /// we name is alive (unless it answered lately) and dropping it if not.
    pub async fn own_answer(&self, key: &HashKey) -> PeerAddr {
        let mut skip = Vec::new();
        if self.departed() {
            // Our range is our predecessor's now: never name ourselves.
            skip.push(self.me());
        }
        loop {
            let (answer, me, successor) = {
                let ring = self.ring();
                (
                    ring.own_answer(key, &skip),
                    ring.me.addr,
                    ring.successor().addr,
                )
            };
            if answer == me || self.recently_alive(&answer) {
                return answer;
            }
            // A peer found dead is not named again until it answers a request of the
            // maintenance; but our successor is always asked (one missed PUL marks it, and
            // answering for its keys ourselves sends the walk to a peer that answers N).
            let ask = answer == successor || !self.seems_dead(&answer);
            if ask && walk::pul(answer, self.config.address_encoding).await {
                self.mark_alive(answer);
                return answer;
            }
            self.mark_failed(answer, "PUL before an OWN answer naming it");
            skip.push(answer);
            self.forget(answer);
        }
    }

    /// Marks the start of a handoff for INF and the periodic log; its summary is logged when
    /// the returned guard ends ("aborted" unless it is finished with an outcome).
    pub fn begin_progress(&self, transfer: progress::Transfer) -> progress::Tracked<'_> {
        let every = Duration::from_secs(self.config.progress_interval_secs.max(1));
        self.progress.begin(transfer, every)
    }

    /// The INF text: address, id, neighbours, fingers, entries held, handoff in progress.
    pub fn info(&self) -> String {
        let ring = self.ring().clone();
        let peer = |p: &Peer| format!("{} ({})", p.addr, p.id);
        let successors: Vec<String> = ring.successors.iter().map(|p| p.addr.to_string()).collect();
        let known = self.peers().describe();
        let mut fingers: Vec<String> = ring
            .fingers
            .iter()
            .filter(|p| p.addr != ring.me.addr)
            .map(|p| p.addr.to_string())
            .collect();
        fingers.dedup();
        let handoff = self.progress.line().unwrap_or_else(|| "none".into());
        // One pass over the whole store, range by range: our arc, each arc we hold as a copy,
        // and the rest (entries waiting for the repair pass); INF has always counted in full
        // (no deadline). `keys` is what we own and serve; `copies` what we hold besides.
        let mut ranges = vec![(ring.me.addr, ring.me.id, ring.successor().id)];
        let held = sync::held_arcs(self);
        let copies_held = held.len();
        ranges.extend(
            held.into_iter()
                .map(|(owner, from, to)| (owner.addr, from, to)),
        );
        let end = ranges.last().map_or(ring.me.id, |r| r.2);
        if !ring.is_alone() && end != ring.me.id {
            ranges.push((ring.me.addr, end, ring.me.id));
        }
        // Within a budget: peers ask INF for our extensions, and a scan of a large store takes
        // seconds (`counts`).
        let only: Vec<(HashKey, HashKey)> = ranges.iter().map(|(_, f, t)| (*f, *t)).collect();
        let mut counted_line = String::new();
        let tallies = match self.counts.of(&self.storage, &only, counts::BUDGET) {
            Ok(counts::Counting::Exact(t)) => Ok(t),
            Ok(counts::Counting::Stale(t, age)) => {
                counted_line = format!(
                    "counted {}s ago (entries written since; counting again)\n",
                    age.as_secs()
                );
                Ok(t)
            }
            Ok(counts::Counting::Unknown) => Err(Error::Peer(format!(
                "counting: more entries than {:?} of counting covers",
                counts::BUDGET
            ))),
            Err(e) => Err(e),
        };
        let (keys, copies, tombstones, copy_counts) = match tallies {
            Ok(t) => {
                let all: u64 = t.iter().map(|t| t.keys).sum();
                // The arcs held as copies: between our arc and the rest.
                let copy_counts: Vec<(PeerAddr, String)> = ranges
                    .iter()
                    .zip(&t)
                    .skip(1)
                    .take(copies_held)
                    .map(|((owner, _, _), t)| (*owner, t.keys.to_string()))
                    .collect();
                (
                    t[0].keys.to_string(),
                    all.saturating_sub(t[0].keys).to_string(),
                    t.iter().map(|t| t.tombstones).sum::<u64>().to_string(),
                    copy_counts,
                )
            }
            Err(e) => (
                format!("unknown ({e})"),
                "unknown".into(),
                "unknown".into(),
                Vec::new(),
            ),
        };
        let replicas = match self.replication.current() {
            Some(set) if self.replicating() => {
                let set: Vec<String> = set.iter().map(|p| p.to_string()).collect();
                format!("{} (held by: {})", self.config.replicas, set.join(", "))
            }
            _ => self.config.replicas.to_string(),
        };
        let extensions = if self.replicating() {
            format!(
                "{} {} {}",
                crate::protocol::VERSIONS_EXTENSION,
                crate::protocol::REPLICAS_EXTENSION,
                crate::protocol::COMPARED_JOIN_EXTENSION
            )
        } else {
            crate::protocol::VERSIONS_EXTENSION.to_string()
        };
        format!(
            "dht-store {}\naddress {}\nid {}\nsuccessor {}\nsecond successor {}\nsuccessors {}\n\
             predecessor {}\nfingers {}\nknown peers {}\nkeys {}\naddress encoding {}\nhandoff {}\n\
             state {}\nuptime {}s\nmax value size {}\ntombstones {}\nreplicas {}\ncopies {}\n{}{}{} {}\n",
            env!("CARGO_PKG_VERSION"),
            ring.me.addr,
            ring.me.id,
            peer(&ring.successor()),
            peer(&ring.second_successor()),
            successors.join(", "),
            ring.predecessor
                .as_ref()
                .map(peer)
                .unwrap_or_else(|| "unknown".into()),
            if fingers.is_empty() {
                "none".into()
            } else {
                fingers.join(", ")
            },
            known,
            keys,
            self.config.address_encoding,
            handoff,
            if self.departed() {
                "departed"
            } else {
                "member"
            },
            self.started.elapsed().as_secs(),
            self.config.max_value_size,
            tombstones,
            replicas,
            copies,
            counted_line,
            self.sync.lines(&copy_counts),
            crate::protocol::EXTENSIONS_LINE,
            extensions,
        )
    }
}

/// How the node enters the ring.
enum Start {
    /// The data directory holds our ring state: resume it (after checking our place).
    Resume(RingState),
    /// No usable ring state: join through this peer.
    Join(PeerAddr),
    /// No usable ring state and nobody to join: a ring of one.
    Alone,
}

/// `existing`: the directory held a database before this start.
fn start_mode(config: &Config, storage: &Storage, existing: bool) -> Result<Start> {
    let me = config.advertised();
    let join = config.join_addr()?;
    match storage.load_ring()? {
        Some(state) if state.me.addr == me => {
            if join.is_some() {
                info!(
                    "{} already holds ring state for {me}: resuming it and ignoring --join",
                    storage.dir().display()
                );
            } else {
                info!(
                    "resuming ring state from {}: successor {}",
                    storage.dir().display(),
                    state.successor().addr
                );
            }
            Ok(Start::Resume(state))
        }
        other => {
            let dir = storage.dir().display();
            match (&other, join) {
                (Some(state), Some(_)) => warn!(
                    "{dir} held the ring state of {}, but this node is {me}: its id changes, so \
                     it takes a new place in the ring; entries it does not own there go to \
                     their owners",
                    state.me.addr
                ),
                // Both silently made a ring of one apart from everyone: say so, and the cure.
                (Some(state), None) => warn!(
                    "{dir} held the ring state of {}, but this node is {me}, so its id changes, \
                     and no --join was given: STARTING A NEW RING OF ONE, apart from the ring that directory was \
                     in. To rejoin it, stop this node and start it with --join HOST:PORT of a \
                     member{}, or as --host {} --port {} to resume that node",
                    state.me.addr,
                    // Its successor, unless the directory was a ring of one (itself).
                    match state.successor().addr {
                        s if s == state.me.addr => String::new(),
                        s => format!(" (e.g. --join {s})"),
                    },
                    state.me.addr.ip(),
                    state.me.addr.port()
                ),
                (None, None) if existing => warn!(
                    "{dir} holds no ring state (this node left its ring, or the directory was \
                     restored without one) and no --join was given: STARTING A NEW RING OF ONE. \
                     To join a ring, stop this node and start it with --join HOST:PORT of a \
                     member"
                ),
                _ => {}
            }
            Ok(match join {
                Some(j) => Start::Join(j),
                None => Start::Alone,
            })
        }
    }
}

/// Binds the listening socket, and the metrics endpoint if one is set, naming the address that
/// cannot be bound.
async fn bind(config: &Config) -> Result<(TcpListener, Option<crate::metrics::Exporter>)> {
    let metrics = match config.metrics_addr()? {
        Some(addr) => Some(crate::metrics::install(addr, config.advertised()).await?),
        None => None,
    };
    let listener = TcpListener::bind(config.bind_addr())
        .await
        .map_err(|source| Error::IoAt {
            what: format!("cannot listen on {}", config.bind_addr()),
            source,
        })?;
    Ok((listener, metrics))
}

/// Runs a node until `shutdown` completes (or a leave ends it): opens the data directory,
/// finishes any handoff a crash interrupted, resumes or joins or starts the ring, serves, and
/// on shutdown lets in-flight requests finish and flushes.
pub async fn run(config: Config, shutdown: impl Future) -> Result<()> {
    config.validate()?;
    let me = config.advertised();
    // A directory of a node that may be running is locked before binding, so that a second
    // process fails naming the directory even on the same port; a new one is created only once
    // we can listen (the protocol's port and the metrics endpoint), so that a failed start
    // leaves nothing behind. Connections wait in the backlog until we serve (PROTOCOL.md 6,
    // Readiness).
    let existing = crate::storage::holds_database(&config.data);
    let (storage, (listener, metrics)) = if existing {
        let storage = Storage::open(&config.data, &config.storage())?;
        (storage, bind(&config).await?)
    } else {
        let bound = bind(&config).await?;
        (Storage::open(&config.data, &config.storage())?, bound)
    };
    let initial = storage.load_ring()?.filter(|r| r.me.addr == me);
    let node = Arc::new(Node::new(
        config,
        storage,
        initial.unwrap_or_else(|| RingState::alone(me)),
    ));
    let metrics = metrics.map(|m| m.start(&node.storage));
    handoff::recover(&node).await?;
    let resumed = match start_mode(&node.config, &node.storage, existing)? {
        Start::Resume(state) => {
            node.switch_ring(Some(state), Change::Keep).await?;
            true
        }
        Start::Join(seed) => {
            handoff::join(&node, seed, false).await?;
            false
        }
        Start::Alone => {
            node.switch_ring(Some(RingState::alone(me)), Change::Keep)
                .await?;
            false
        }
    };
    info!(
        "serving {} id {} ({} addresses, data {})",
        node.me(),
        node.ring().me.id,
        node.config.address_encoding,
        node.storage.dir().display()
    );
    let admin = admin::start(node.clone())?;
    // Serving already after a restart (the peers we ask check with PUL that we are alive), but
    // writes to our arc wait until we know it is still ours: the ring may have moved on while
    // we were down, and what its current owner holds is newer.
    let fenced = resumed && {
        let ring = node.ring().clone();
        !ring.is_alone() && node.gate.fence(ring.me.id, ring.successor().id)
    };
    let places = {
        let node = node.clone();
        async move {
            if resumed {
                handoff::check_place_after_restart(&node, fenced).await;
            }
            node.repair.notify_one();
            maintenance::place_loop(node).await
        }
    };
    let tasks = [
        tokio::spawn(maintenance::run(node.clone())),
        tokio::spawn(places),
        tokio::spawn(maintenance::repair_loop(node.clone())),
        tokio::spawn(maintenance::tombstone_loop(node.clone())),
        tokio::spawn(replication::replica_loop(node.clone())),
        tokio::spawn(sync::sync_loop(node.clone())),
    ];
    let stop = {
        let node = node.clone();
        async move {
            tokio::select! {
                _ = shutdown => {}
                _ = node.stop.notified() => info!("stopping after the leave"),
            }
        }
    };
    server::serve(node.clone(), listener, stop).await;
    for t in tasks {
        t.abort();
    }
    admin.close();
    if let Some(m) = metrics {
        m.close();
    }
    node.storage.flush()?;
    info!("flushed {}; stopped", node.storage.dir().display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::protocol::test_key as k;

    /// The maintenance's ring changes that keep our arc (a finger, the predecessor) do not
    /// wait for the writes applying, and so do not hold up the writes behind them (a large
    /// value takes long to store); a change of our successor waits for them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_change_of_ownership_waits_for_the_writes_applying() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), &Default::default()).unwrap();
        let me = PeerAddr::new([127, 0, 0, 1].into(), 7000);
        let node = Arc::new(Node::new(Config::default(), storage, RingState::alone(me)));
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (inside, is_inside) = std::sync::mpsc::channel::<()>();
        let n = node.clone();
        let write = tokio::spawn(async move {
            n.gate
                .pass(&k(1), move || {
                    inside.send(()).unwrap();
                    released.recv_timeout(Duration::from_secs(30)).is_ok()
                })
                .await
        });
        is_inside.recv_timeout(Duration::from_secs(10)).unwrap();
        let other = Peer::new(PeerAddr::new([127, 0, 0, 2].into(), 7000));
        // A finger: done while the write applies (it would wait for the write, which waits
        // for this test, had it gone through the exclusive section).
        let finger = tokio::time::timeout(
            Duration::from_secs(10),
            node.update_ring(|r| {
                r.fingers = vec![other];
                true
            }),
        )
        .await;
        assert!(
            matches!(finger, Ok(Ok(true))),
            "a finger change waited for a write"
        );
        assert_eq!(node.ring().fingers, vec![other]);
        // The successor: waits for the write.
        let n = node.clone();
        let successor = tokio::spawn(async move {
            n.update_ring(|r| {
                r.successors = vec![other];
                true
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!successor.is_finished(), "the switch did not wait");
        assert_eq!(node.ring().successor().addr, me);
        release.send(()).unwrap();
        assert!(write.await.unwrap(), "the write was released");
        assert!(successor.await.unwrap().unwrap());
        assert_eq!(node.ring().successor(), other);
    }
}
