//! `get_many` and `put_many`: many keys spread over their owners' connections at once.
//!
//! 1. **Plan.** Keys are grouped by owner in ring order, with the Ring's learned arcs
//!    ([`Arcs`]): a key of no known arc costs one OWN walk and one ABD, which teach its
//!    owner's whole arc, so a ring of n owners costs n walks, not one per key.
//! 2. **Owners.** Each owner's keys are served by up to `concurrency` connections of its own:
//!    GETs pipelined in batches (written together, answered in order: a connection carries one
//!    request after another, PROTOCOL.md 5), INS one after another per connection (its value
//!    may go only after the first `T`), many connections sharing the owner's group commit.
//! 3. **The rest.** A key whose owner answered `N` (the ring moved since the plan), whose
//!    connection failed, or whose arc could not be learned goes through the Router one by one
//!    (a walk, retries, the Router's errors), again `concurrency` at a time.
//!
//! A peer that does not answer within the timeout ends the whole call (as it ends a Router's
//! request), and so does one that cannot be connected to after the Router's retries (or the
//! entry peer, at once): waiting for it again per key would multiply the wait.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dht_store::client::{Client, Router};
use dht_store::protocol::{AddressEncoding, HashKey, Limits, PeerAddr, Request, Status};
use dht_store::Error;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::arcs::Arcs;

/// GETs written together on one connection before their answers are read.
const GET_BATCH: usize = 64;
/// Keys one INS worker takes at a time from its owner's queue.
const PUT_BATCH: usize = 16;

/// How a bulk call reaches the ring.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Where OWN walks start.
    pub entry: PeerAddr,
    /// The ring's address encoding.
    pub encoding: AddressEncoding,
    /// Longest wait for a connection and for each answer.
    pub timeout: Duration,
    /// Longest OWN walk.
    pub max_hops: usize,
    /// Connections per owner (and Routers for the rest).
    pub concurrency: usize,
}

impl Settings {
    /// A Router like the Ring's own.
    fn router(&self) -> Router {
        Router::new(self.entry, self.encoding)
            .with_timeout(self.timeout)
            .with_max_hops(self.max_hops)
    }
}

/// What happened to one key.
#[derive(Debug)]
pub enum Outcome {
    /// Not answered yet.
    Pending,
    /// A GET's answer: the value, or `None` for absent.
    Value(Option<Vec<u8>>),
    /// An INS answered `T`.
    Stored,
    /// An INS answered `F` by this owner.
    Refused(PeerAddr),
    /// The Router gave up on it.
    Failed(Error),
}

/// The state a bulk call shares between its tasks and the thread that waits for it.
pub struct Shared {
    /// The keys, in the caller's order.
    pub keys: Vec<HashKey>,
    /// `put_many`'s values, one per key; `None` for `get_many`.
    pub values: Option<Vec<Vec<u8>>>,
    /// One outcome per key.
    pub outcomes: Mutex<Vec<Outcome>>,
    /// Keys with an outcome.
    pub done: AtomicUsize,
    /// The waiting thread is woken every `every` keys (for the progress callback).
    pub every: usize,
    pub notify: Notify,
    /// Set when a peer did not answer: every task stops.
    stop: AtomicBool,
    /// The error that stopped the call.
    fatal: Mutex<Option<Error>>,
    /// Keys for the Router, one by one.
    rest: Mutex<Vec<usize>>,
}

impl Shared {
    pub fn new(keys: Vec<HashKey>, values: Option<Vec<Vec<u8>>>, every: usize) -> Shared {
        let n = keys.len();
        Shared {
            keys,
            values,
            outcomes: Mutex::new((0..n).map(|_| Outcome::Pending).collect()),
            done: AtomicUsize::new(0),
            every: every.max(1),
            notify: Notify::new(),
            stop: AtomicBool::new(false),
            fatal: Mutex::new(None),
            rest: Mutex::new(Vec::new()),
        }
    }

    fn is_put(&self) -> bool {
        self.values.is_some()
    }

    fn value(&self, i: usize) -> &[u8] {
        self.values.as_ref().map_or(&[][..], |v| &v[i])
    }

    fn settle(&self, i: usize, o: Outcome) {
        lock(&self.outcomes)[i] = o;
        let d = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if d.is_multiple_of(self.every) || d == self.keys.len() {
            self.notify.notify_one();
        }
    }

    fn reroute(&self, idx: impl IntoIterator<Item = usize>) {
        lock(&self.rest).extend(idx);
    }

    /// Stops every task: `e` (a peer that did not answer) ends the call.
    fn abort(&self, e: Error) {
        lock(&self.fatal).get_or_insert(e);
        self.stop.store(true, Ordering::Relaxed);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// A poisoned lock (a task panicked) still holds consistent data: every write is one
/// assignment.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the call to its end; `router` is the Ring's (its connections serve the plan), `arcs`
/// its learned arcs. `Err` is the error that stopped it; per-key failures are in the outcomes.
pub async fn run(
    s: Settings,
    shared: Arc<Shared>,
    router: &mut Router,
    arcs: Arc<Arcs>,
) -> Result<(), Error> {
    let (groups, unplanned) = plan(router, &arcs, &shared.keys, s.entry).await?;
    shared.reroute(unplanned);

    let mut tasks = JoinSet::new();
    for (owner, idx) in groups {
        let batch = if shared.is_put() {
            PUT_BATCH
        } else {
            GET_BATCH
        };
        let chunks: VecDeque<Vec<usize>> = idx.chunks(batch).map(|c| c.to_vec()).collect();
        let workers = s.concurrency.min(chunks.len()).max(1);
        let queue = Arc::new(Mutex::new(chunks));
        for _ in 0..workers {
            tasks.spawn(owner_worker(
                s,
                owner,
                queue.clone(),
                shared.clone(),
                arcs.clone(),
            ));
        }
    }
    while tasks.join_next().await.is_some() {}
    if let Some(e) = lock(&shared.fatal).take() {
        return Err(e);
    }

    let rest = std::mem::take(&mut *lock(&shared.rest));
    if !rest.is_empty() {
        let queue = Arc::new(Mutex::new(VecDeque::from(rest)));
        let workers = s.concurrency.min(lock(&queue).len()).max(1);
        for _ in 0..workers {
            tasks.spawn(router_worker(s, queue.clone(), shared.clone()));
        }
        while tasks.join_next().await.is_some() {}
        if let Some(e) = lock(&shared.fatal).take() {
            return Err(e);
        }
    }
    Ok(())
}

/// Groups the keys by owner: `(owner, key indices)`, and the indices left to the Router (the
/// walk or the ABD failed). A silent peer, or an entry peer that cannot be connected to, ends
/// the call: every key would fail the same way.
async fn plan(
    router: &mut Router,
    arcs: &Arcs,
    keys: &[HashKey],
    entry: PeerAddr,
) -> Result<(Vec<(PeerAddr, Vec<usize>)>, Vec<usize>), Error> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by_key(|&i| keys[i]);
    let mut groups: Vec<(PeerAddr, Vec<usize>)> = Vec::new();
    let mut unplanned = Vec::new();
    for i in order {
        let owner = match arcs.owner_of(&keys[i]) {
            Some(o) => o,
            // When the ABD's answer does not hold the key (a ring in motion) no arc is learned,
            // but the walk's end is still the best guess: a wrong one answers N.
            None => match arcs.find(router, &keys[i]).await {
                Ok(o) => o,
                Err(e @ Error::NoAnswer { .. }) => return Err(e),
                Err(e @ Error::Unreachable { peer, .. }) if peer == entry => return Err(e),
                Err(_) => {
                    unplanned.push(i);
                    continue;
                }
            },
        };
        match groups.iter_mut().find(|g| g.0 == owner) {
            Some(g) => g.1.push(i),
            None => groups.push((owner, vec![i])),
        }
    }
    Ok((groups, unplanned))
}

/// One connection to `owner`, serving chunks of its keys until none is left.
async fn owner_worker(
    s: Settings,
    owner: PeerAddr,
    queue: Arc<Mutex<VecDeque<Vec<usize>>>>,
    shared: Arc<Shared>,
    arcs: Arc<Arcs>,
) {
    let mut client: Option<Client> = None;
    loop {
        if shared.stopped() {
            return;
        }
        let Some(chunk) = lock(&queue).pop_front() else {
            return;
        };
        if client.is_none() {
            match connect(&s, owner).await {
                Ok(c) => client = Some(c),
                Err(e @ Error::NoAnswer { .. }) => return shared.abort(e),
                Err(_) => {
                    // The Router will find out what is wrong with it, key by key.
                    arcs.forget(owner);
                    shared.reroute(chunk);
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        let served = if shared.is_put() {
            put_chunk(c, &chunk, &shared).await
        } else {
            get_chunk(c, &s, &chunk, &shared).await
        };
        match served {
            Served::All => {}
            Served::NotMine => arcs.forget(owner),
            Served::Reconnect(from) => {
                client = None;
                shared.reroute(chunk[from..].iter().copied());
            }
            Served::Refused(from) => {
                // Every refusal settles a key, so this ends.
                client = None;
                if from < chunk.len() {
                    lock(&queue).push_front(chunk[from..].to_vec());
                }
            }
            Served::Silent(e) => return shared.abort(e),
        }
    }
}

/// How a chunk ended on its connection.
enum Served {
    /// Every key has an outcome or was handed to the Router.
    All,
    /// The connection failed (or was closed by the owner) at this position of the chunk: the
    /// keys from there go to the Router, and the next chunk opens a new connection.
    Reconnect(usize),
    /// The owner refused a value (`F`) and may have closed the connection: the keys from this
    /// position go back to its queue, for a new connection.
    Refused(usize),
    /// The owner did not answer.
    Silent(Error),
    /// All done, but the owner answered `N` for some keys (handed to the Router): its arc as
    /// learned is wrong.
    NotMine,
}

async fn connect(s: &Settings, owner: PeerAddr) -> Result<Client, Error> {
    let limits = Limits {
        max_value: dht_store::config::MAX_VALUE_SIZE_MAX,
        idle_timeout: Some(s.timeout),
        io_timeout: Some(s.timeout),
    };
    Client::connect_within(owner, s.encoding, limits, s.timeout).await
}

/// A timeout on a connection to `peer` names it, as the Router's errors do.
fn named(e: Error, peer: PeerAddr, after: Duration) -> Error {
    match e {
        Error::Timeout => Error::NoAnswer { peer, after },
        e => e,
    }
}

/// The GETs of a chunk, written in one go, then their answers in order.
async fn get_chunk(c: &mut Client, s: &Settings, chunk: &[usize], shared: &Shared) -> Served {
    let peer = c.peer();
    let conn = c.connection();
    for &i in chunk {
        let sent = match conn.write_raw(Request::Get(shared.keys[i]).command()).await {
            Ok(()) => conn.write_key(&shared.keys[i]).await,
            Err(e) => Err(e),
        };
        if sent.is_err() {
            return Served::Reconnect(0);
        }
    }
    if conn.flush().await.is_err() {
        return Served::Reconnect(0);
    }
    let mut served = Served::All;
    for (pos, &i) in chunk.iter().enumerate() {
        let answer = match conn.read_status().await {
            Ok(Status::T) => conn
                .read_value()
                .await
                .map(|v| Some(Outcome::Value(Some(v)))),
            Ok(Status::F) => Ok(Some(Outcome::Value(None))),
            Ok(Status::N) => Ok(None),
            Err(e) => Err(e),
        };
        match answer {
            Ok(Some(o)) => shared.settle(i, o),
            Ok(None) => {
                shared.reroute([i]);
                served = Served::NotMine;
            }
            Err(e) => {
                return match named(e, peer, s.timeout) {
                    e @ Error::NoAnswer { .. } => Served::Silent(e),
                    _ => Served::Reconnect(pos),
                }
            }
        }
    }
    served
}

/// The INS of a chunk, one after another.
async fn put_chunk(c: &mut Client, chunk: &[usize], shared: &Shared) -> Served {
    let owner = c.peer();
    let mut served = Served::All;
    for (pos, &i) in chunk.iter().enumerate() {
        if shared.stopped() {
            return Served::All;
        }
        match c.ins(&shared.keys[i], shared.value(i)).await {
            Ok(Status::T) => shared.settle(i, Outcome::Stored),
            Ok(Status::F) => {
                shared.settle(i, Outcome::Refused(owner));
                // A node closes the connection after refusing a value over its limit.
                return Served::Refused(pos + 1);
            }
            Ok(Status::N) => {
                shared.reroute([i]);
                served = Served::NotMine;
            }
            Err(e @ Error::NoAnswer { .. }) => return Served::Silent(e),
            Err(_) => return Served::Reconnect(pos),
        }
    }
    served
}

/// A Router of its own, serving the keys left over one by one.
async fn router_worker(s: Settings, queue: Arc<Mutex<VecDeque<usize>>>, shared: Arc<Shared>) {
    let mut router = s.router();
    loop {
        if shared.stopped() {
            return;
        }
        let Some(i) = lock(&queue).pop_front() else {
            return;
        };
        let k = shared.keys[i];
        let outcome = if shared.is_put() {
            router
                .put_at(&k, shared.value(i))
                .await
                .map(|(owner, stored)| {
                    if stored {
                        Outcome::Stored
                    } else {
                        Outcome::Refused(owner)
                    }
                })
        } else {
            router.get(&k).await.map(Outcome::Value)
        };
        match outcome {
            Ok(o) => shared.settle(i, o),
            Err(e @ Error::NoAnswer { .. }) => return shared.abort(e),
            // Still no connection after the Router's retries (the ring has not routed around
            // a dead peer): every key of that peer would wait as long again.
            Err(e @ Error::GaveUp { .. }) if unreachable(&e) => return shared.abort(e),
            Err(e) => shared.settle(i, Outcome::Failed(e)),
        }
    }
}

/// Whether a Router's failure is a peer nobody could connect to.
fn unreachable(e: &Error) -> bool {
    match e {
        Error::GaveUp { last, .. } => unreachable(last),
        Error::Unreachable { .. } => true,
        _ => false,
    }
}
