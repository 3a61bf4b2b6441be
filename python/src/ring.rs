//! [`Ring`]: a ring reached through one peer, from any number of Python threads.
//!
//! Each call takes a [`Slot`] (a single-threaded tokio runtime and a `Router` with its
//! connections) from the Ring's pool, or makes one, and releases the GIL while the runtime
//! runs the request on the calling thread. Threads that call at once use different slots, so
//! they wait on the network, never on each other; a slot goes back to the pool afterwards, its
//! connections open.
//!
//! A keyed call goes straight to the owner when the Ring has learned the key's arc
//! ([`Arcs`]); otherwise, or when that owner answers `N` or fails, it is the Router's request
//! (walk, ask, retry).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use dht_store::client::{BadPeer, Client, Lookup, Router};
use dht_store::protocol::{AddressEncoding, HashKey, PeerAddr, Request, Status};
use dht_store::Error;
use pyo3::exceptions::{PyKeyError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};
use tokio::runtime::Runtime;

use crate::arcs::Arcs;
use crate::bulk::{self, Outcome, Settings, Shared};
use crate::errors::{to_py, Failure};
use crate::keys::{hash_key, type_name, value_bytes, PyHashKey};

/// Slots kept for reuse (each holds a runtime and its connections); more threads than this at
/// once still work, their extra slots are dropped afterwards.
const MAX_IDLE: usize = 64;

/// How often a bulk call looks at Ctrl-C (and the progress) while it waits.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// One caller's means to talk to the ring.
struct Slot {
    /// Declared first, so that its connections are closed while their runtime still exists.
    router: Router,
    rt: Runtime,
    encoding: AddressEncoding,
    timeout: Duration,
}

/// The pool of a Ring's slots not in use.
struct Idle {
    /// The process that made them: a child of `fork` (multiprocessing) must not use them.
    pid: u32,
    slots: Vec<Slot>,
}

impl Idle {
    /// The slots, after dropping those of another process: forgotten, not closed, since a
    /// child shares their sockets and their epoll instance with its parent (closing would
    /// unregister them from the parent's too).
    fn slots(&mut self) -> &mut Vec<Slot> {
        let me = std::process::id();
        if self.pid != me {
            for s in self.slots.drain(..) {
                std::mem::forget(s);
            }
            self.pid = me;
        }
        &mut self.slots
    }
}

/// A DHT ring, reached through one of its peers.
///
/// `Ring("127.0.0.1:5000")` connects to nothing yet. A call asks the key's owner, found by
/// walking the ring from that peer (OWN) and then remembered, with its whole arc, for a few
/// seconds (a ring that moved meanwhile is noticed, and walked again); connections are kept
/// open for the next calls. Keys are
/// `str` (hashed as their UTF-8), bytes-like (hashed), or a `HashKey` (used as it is); values
/// are bytes-like or `str` (stored as UTF-8; `get` returns `bytes`).
///
/// `timeout` (seconds) bounds the wait for a connection and for each answer; a peer that says
/// nothing for that long raises `Timeout`. `address_encoding` is the ring's: `"compact"` (6-byte
/// addresses, dht-store's default), `"text"` (the classroom peers'), or `"auto"` (detected from
/// the entry peer's first OWN answer). `max_hops` bounds an OWN walk.
///
/// Calls release the GIL while they wait on the network, and a Ring may be shared by threads.
/// `with Ring(...) as ring:` closes its connections at the end; a closed Ring raises `DhtError`.
///
/// Dict-like: `ring[key]` (`KeyError` if absent), `ring[key] = value`, `del ring[key]`
/// (`KeyError` if absent), `key in ring`.
#[pyclass(module = "dht_store", name = "Ring", frozen)]
pub struct Ring {
    /// Where OWN walks start.
    entry: PeerAddr,
    /// Longest wait for a connection and for each answer.
    timeout: Duration,
    /// Longest OWN walk.
    max_hops: usize,
    /// The encoding asked for; `None` for `"auto"`.
    requested: Option<AddressEncoding>,
    /// The encoding found by `"auto"`, once asked.
    detected: OnceLock<AddressEncoding>,
    /// Slots not in use, and the process they were made in.
    idle: Mutex<Idle>,
    /// Set by `close`.
    closed: AtomicBool,
    /// The owners' arcs learned so far.
    arcs: Arc<Arcs>,
}

/// The owner of a key, as `Ring.owner` found it: `address` (`"IP:PORT"`), `hops` (the OWN
/// answers that pointed elsewhere before the owner named itself), `path` (the peers asked, the
/// entry first, the owner last) and `key` (the HashKey). `address, hops = ring.owner(key)`
/// unpacks the first two.
#[pyclass(module = "dht_store", name = "Owner", frozen, get_all)]
pub struct Owner {
    /// The owner's address, `"IP:PORT"`.
    address: String,
    /// OWN answers that named another peer before the owner named itself.
    hops: usize,
    /// Every peer asked, in order: the entry first, the owner last.
    path: Vec<String>,
    /// The key's HashKey.
    key: PyHashKey,
}

#[pymethods]
impl Owner {
    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let pair = PyTuple::new(
            py,
            [
                self.address.clone().into_pyobject(py)?.into_any(),
                self.hops.into_pyobject(py)?.into_any(),
            ],
        )?;
        Ok(pair.try_iter()?.into_any())
    }

    fn __repr__(&self) -> String {
        format!(
            "Owner(address='{}', hops={}, key={})",
            self.address, self.hops, self.key.0
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `"HOST:PORT"`, a host name looked up (its first IPv4 address), or a bare port on 127.0.0.1,
/// as the CLI's `--peer`; or a `(host, port)` pair.
fn peer_of(peer: &Bound<'_, PyAny>) -> PyResult<PeerAddr> {
    let text = if let Ok(s) = peer.cast::<PyString>() {
        s.to_cow()?.into_owned()
    } else if let Ok((host, port)) = peer.extract::<(String, u16)>() {
        format!("{host}:{port}")
    } else {
        return Err(PyTypeError::new_err(format!(
            "a peer is \"IP:PORT\" or (host, port), not {}",
            type_name(peer)
        )));
    };
    resolve_peer(&text).map_err(PyValueError::new_err)
}

fn resolve_peer(s: &str) -> Result<PeerAddr, String> {
    dht_store::client::resolve_peer(s).map_err(|e| match e {
        BadPeer::NotAnAddress(e) => format!(
            "peer {s:?}: not IP:PORT (a name or an IPv4 address and a port) or a port ({e})"
        ),
        BadPeer::NoIpv4 => format!("peer {s:?}: the name has no IPv4 address (peers are IPv4)"),
    })
}

/// What a peer's INF says its largest value is (ours says; other implementations may not).
fn max_value_size(inf: &str) -> Option<u64> {
    inf.lines()
        .find_map(|l| l.strip_prefix("max value size "))
        .and_then(|n| n.trim().parse().ok())
}

/// A fresh single-threaded runtime: its IO driver runs on the thread that blocks on it.
fn runtime() -> Result<Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Dht(Error::Io(e)))
}

impl Ring {
    /// The ring's address encoding, detected first for `"auto"` (once per Ring).
    fn encoding(&self, py: Python<'_>) -> PyResult<AddressEncoding> {
        if let Some(e) = self.requested.or_else(|| self.detected.get().copied()) {
            return Ok(e);
        }
        let (entry, timeout) = (self.entry, self.timeout);
        let found = py
            .detach(|| {
                let rt = runtime()?;
                rt.block_on(detect(entry, timeout)).map_err(Failure::Dht)
            })
            .map_err(|f| to_py(py, f, None))?;
        Ok(*self.detected.get_or_init(|| found))
    }

    fn take(&self, encoding: AddressEncoding) -> Result<Slot, Failure> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Failure::Closed);
        }
        if let Some(s) = lock(&self.idle).slots().pop() {
            return Ok(s);
        }
        Ok(Slot {
            router: Router::new(self.entry, encoding)
                .with_timeout(self.timeout)
                .with_max_hops(self.max_hops),
            rt: runtime()?,
            encoding,
            timeout: self.timeout,
        })
    }

    fn give(&self, slot: Slot) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let mut idle = lock(&self.idle);
        let slots = idle.slots();
        if slots.len() < MAX_IDLE {
            slots.push(slot);
        }
    }

    /// Runs `f` on a slot with the GIL released.
    fn call<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Slot) -> Result<T, Failure> + Send,
    ) -> PyResult<T> {
        let enc = self.encoding(py)?;
        let mut slot = self.take(enc).map_err(|f| to_py(py, f, Some(enc)))?;
        let out = py.detach(|| f(&mut slot));
        // After a failure a connection of the slot may stand inside an exchange (a Router keeps
        // the connection an answer timed out on): the slot is not used again.
        if out.is_ok() {
            self.give(slot);
        }
        out.map_err(|f| to_py(py, f, Some(enc)))
    }

    /// Runs a bulk call to its end, calling `progress(done, total)` (with the GIL) every
    /// `shared.every` keys and at the end, and looking at Ctrl-C meanwhile.
    fn bulk(
        &self,
        py: Python<'_>,
        shared: &Arc<Shared>,
        concurrency: usize,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        if concurrency == 0 {
            return Err(PyValueError::new_err("concurrency must be at least 1"));
        }
        let enc = self.encoding(py)?;
        let mut slot = self.take(enc).map_err(|f| to_py(py, f, Some(enc)))?;
        let settings = Settings {
            entry: self.entry,
            encoding: enc,
            timeout: self.timeout,
            max_hops: self.max_hops,
            concurrency,
        };
        let total = shared.keys.len();
        let mut reported = 0;
        let ended: PyResult<Result<(), Error>> = {
            let Slot { router, rt, .. } = &mut slot;
            let rt = &*rt;
            let mut run = Box::pin(bulk::run(
                settings,
                shared.clone(),
                router,
                self.arcs.clone(),
            ));
            loop {
                let step = py.detach(|| {
                    rt.block_on(async {
                        tokio::select! {
                            r = &mut run => Some(r),
                            _ = shared.notify.notified() => None,
                            _ = tokio::time::sleep(SIGNAL_CHECK) => None,
                        }
                    })
                });
                if let Some(r) = step {
                    break Ok(r);
                }
                // An exception here (Ctrl-C, or raised by the callback) drops the call: requests
                // in flight are abandoned with their connections.
                if let Err(e) = py.check_signals() {
                    break Err(e);
                }
                let done = shared.done.load(Ordering::Relaxed);
                if let Some(cb) = progress {
                    if done >= reported + shared.every && done < total {
                        reported = done;
                        if let Err(e) = cb.call1((done, total)) {
                            break Err(e);
                        }
                    }
                }
            }
        };
        // As in `call`: a slot whose call failed, or was dropped midway, is not used again.
        if matches!(ended, Ok(Ok(()))) {
            self.give(slot);
        }
        match ended? {
            Err(e) => Err(to_py(py, Failure::Dht(e), Some(enc))),
            Ok(()) => {
                if let Some(cb) = progress {
                    if reported < total || total == 0 {
                        cb.call1((total, total))?;
                    }
                }
                Ok(())
            }
        }
    }

    /// A keyed request with the GIL released.
    fn keyed(&self, py: Python<'_>, k: HashKey, op: Op<'_>) -> PyResult<Answer> {
        let arcs = &*self.arcs;
        self.call(py, |s| {
            Ok(s.rt.block_on(keyed(&mut s.router, arcs, &k, op))?)
        })
    }

    fn get_value(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Option<Vec<u8>>> {
        match self.keyed(py, hash_key(key)?, Op::Get)? {
            Answer::Value(v) => Ok(v),
            _ => Ok(None),
        }
    }

    fn yes(&self, py: Python<'_>, key: &Bound<'_, PyAny>, op: Op<'_>) -> PyResult<bool> {
        Ok(matches!(
            self.keyed(py, hash_key(key)?, op)?,
            Answer::Yes(true)
        ))
    }

    /// The exception a bulk call raises when `failed` of its `total` keys failed, `first`
    /// being the first of them.
    fn many_failed(
        &self,
        py: Python<'_>,
        call: &'static str,
        (failed, total): (usize, usize),
        first: Failure,
    ) -> PyErr {
        let enc = self.encoding(py).ok();
        let many = Failure::Many {
            call,
            failed,
            total,
            first: Box::new(first),
        };
        to_py(py, many, enc)
    }

    /// Why the owner refused a value: over its limit (if its INF says the limit), or not.
    fn refusal(s: &mut Slot, key: HashKey, owner: PeerAddr, size: usize) -> Failure {
        let (enc, timeout) = (s.encoding, s.timeout);
        let inf = s.rt.block_on(async {
            Client::connect_timed(owner, enc, timeout)
                .await?
                .inf()
                .await
        });
        match inf.ok().as_deref().and_then(max_value_size) {
            Some(limit) if size as u64 > limit => Failure::TooLarge {
                key,
                owner,
                size: size as u64,
                limit,
            },
            _ => Failure::Refused { key, owner },
        }
    }
}

/// A keyed request, as its owner is asked it.
#[derive(Clone, Copy)]
enum Op<'a> {
    Put(&'a [u8]),
    Get,
    Exists,
    Remove,
}

/// An owner's answer (not `N`).
enum Answer {
    /// INS: who answered, and whether it stored the value.
    Stored(PeerAddr, bool),
    /// GET.
    Value(Option<Vec<u8>>),
    /// EXI or REM.
    Yes(bool),
}

/// Asks `c` the request; `None` for `N`.
async fn ask(c: &mut Client, k: &HashKey, op: Op<'_>) -> Result<Option<Answer>, Error> {
    let yes = |s: Status| (s != Status::N).then_some(Answer::Yes(s == Status::T));
    Ok(match op {
        Op::Put(v) => match c.ins(k, v).await? {
            Status::N => None,
            s => Some(Answer::Stored(c.peer(), s == Status::T)),
        },
        Op::Get => match c.get(k).await? {
            Lookup::NotMine => None,
            Lookup::Absent => Some(Answer::Value(None)),
            Lookup::Found(v) => Some(Answer::Value(Some(v))),
        },
        Op::Exists => yes(c.exi(k).await?),
        Op::Remove => yes(c.rem(k).await?),
    })
}

/// One keyed request: to the owner of its learned arc (learning it first with a walk and an
/// ABD), else, or if that owner answers `N` or cannot be asked, the Router's way.
async fn keyed(router: &mut Router, arcs: &Arcs, k: &HashKey, op: Op<'_>) -> Result<Answer, Error> {
    let owner = match arcs.owner_of(k) {
        Some(o) => Some(o),
        None => match arcs.find(router, k).await {
            Ok(o) => Some(o),
            Err(e @ Error::NoAnswer { .. }) => return Err(e),
            Err(_) => None,
        },
    };
    if let Some(owner) = owner {
        // Twice: a connection the peer closed since (the oldest peers close after every
        // request) fails at once, and a new one is opened.
        for _ in 0..2 {
            let Ok(c) = router.client(owner).await else {
                break;
            };
            match ask(c, k, op).await {
                Ok(Some(a)) => return Ok(a),
                Ok(None) => break,
                Err(e @ Error::NoAnswer { .. }) => {
                    router.forget(owner);
                    arcs.forget(owner);
                    return Err(e);
                }
                Err(_) => router.forget(owner),
            }
        }
        arcs.forget(owner);
    }
    Ok(match op {
        Op::Put(v) => {
            let (o, stored) = router.put_at(k, v).await?;
            Answer::Stored(o, stored)
        }
        Op::Get => Answer::Value(router.get(k).await?),
        Op::Exists => Answer::Yes(router.exists(k).await?),
        Op::Remove => Answer::Yes(router.remove(k).await?),
    })
}

/// The address encoding of the ring `entry` belongs to, from its answer to an OWN: a text
/// address starts with the 8-byte Int of its length, so its first six bytes are zero, and a
/// compact one would be 0.0.0.0:0, which no peer is.
async fn detect(entry: PeerAddr, timeout: Duration) -> Result<AddressEncoding, Error> {
    let mut c = Client::connect_timed(entry, AddressEncoding::Compact, timeout).await?;
    let conn = c.connection();
    conn.write_request(&Request::Own(HashKey::of(b"dht-store address encoding")))
        .await?;
    // Read as a compact address: six bytes, which either form has.
    let a = conn.read_addr().await.map_err(|e| match e {
        Error::Timeout => Error::NoAnswer {
            peer: entry,
            after: timeout,
        },
        e => e,
    })?;
    Ok(if a.ip().is_unspecified() && a.port() == 0 {
        AddressEncoding::Text
    } else {
        AddressEncoding::Compact
    })
}

#[pymethods]
impl Ring {
    /// `Ring(peer, *, timeout=10.0, address_encoding="compact", max_hops=64)`.
    #[new]
    #[pyo3(signature = (peer, *, timeout = 10.0, address_encoding = "compact", max_hops = 64))]
    fn new(
        peer: &Bound<'_, PyAny>,
        timeout: f64,
        address_encoding: &str,
        max_hops: usize,
    ) -> PyResult<Ring> {
        let entry = peer_of(peer)?;
        let timeout = Duration::try_from_secs_f64(timeout)
            .ok()
            .filter(|d| !d.is_zero() && d.as_secs() <= 86_400)
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "timeout must be a number of seconds above 0 and at most 86400; got {timeout}"
                ))
            })?;
        let requested = match address_encoding {
            "compact" => Some(AddressEncoding::Compact),
            "text" => Some(AddressEncoding::Text),
            "auto" => None,
            other => {
                return Err(PyValueError::new_err(format!(
                    "address_encoding is \"compact\", \"text\" or \"auto\", not {other:?}"
                )))
            }
        };
        if max_hops == 0 {
            return Err(PyValueError::new_err("max_hops must be at least 1"));
        }
        Ok(Ring {
            entry,
            timeout,
            max_hops,
            requested,
            detected: OnceLock::new(),
            idle: Mutex::new(Idle {
                pid: std::process::id(),
                slots: Vec::new(),
            }),
            closed: AtomicBool::new(false),
            arcs: Arc::new(Arcs::default()),
        })
    }

    /// Stores `value` under `key` at its owner (durably, when the owner is a dht-store node).
    /// Raises `ValueTooLarge` if the value is over the owner's limit, `DhtError` if the owner
    /// refused it otherwise.
    fn put(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let k = hash_key(key)?;
        let v = value_bytes(value)?;
        let v: &[u8] = &v;
        let arcs = &*self.arcs;
        self.call(py, |s| {
            match s.rt.block_on(keyed(&mut s.router, arcs, &k, Op::Put(v)))? {
                Answer::Stored(_, true) => Ok(()),
                Answer::Stored(owner, false) => Err(Ring::refusal(s, k, owner, v.len())),
                _ => Err(Failure::Dht(Error::Peer("INS answered as a GET".into()))),
            }
        })
    }

    /// `put` that returns `False` when the owner answers `F` (without asking it why):
    /// the classroom interface's `insert`, which reports the answer instead of raising.
    fn _put(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let v = value_bytes(value)?;
        Ok(matches!(
            self.keyed(py, hash_key(key)?, Op::Put(&v))?,
            Answer::Stored(_, true)
        ))
    }

    /// The value under `key` (`bytes`), or `default` (`None`) if the key is absent.
    #[pyo3(signature = (key, default = None))]
    fn get(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        match self.get_value(py, key)? {
            Some(v) => Ok(PyBytes::new(py, &v).into_any().unbind()),
            None => Ok(default.unwrap_or_else(|| py.None())),
        }
    }

    /// Whether `key` is stored.
    fn exists(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.yes(py, key, Op::Exists)
    }

    /// Removes `key`; `True` if it was there, `False` if it was absent.
    fn remove(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.yes(py, key, Op::Remove)
    }

    /// The owner of `key` and how the OWN walk got there: an `Owner` (`address`, `hops`,
    /// `path`, `key`).
    fn owner(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Owner> {
        let k = hash_key(key)?;
        let path = self.call(py, |s| Ok(s.rt.block_on(s.router.owner_path(&k))?))?;
        let address = match path.last() {
            Some(a) => a.to_string(),
            None => {
                return Err(to_py(
                    py,
                    Failure::Dht(Error::Peer(format!("the OWN walk for {k} asked nobody"))),
                    None,
                ))
            }
        };
        Ok(Owner {
            address,
            hops: path.len() - 1,
            path: path.iter().map(|a| a.to_string()).collect(),
            key: PyHashKey(k),
        })
    }

    /// A peer's INF text (its own account: address, id, successors, keys, ...); the entry peer
    /// when `peer` is not given.
    #[pyo3(signature = (peer = None))]
    fn info(&self, py: Python<'_>, peer: Option<&Bound<'_, PyAny>>) -> PyResult<String> {
        let peer = match peer {
            Some(p) => peer_of(p)?,
            None => self.entry,
        };
        self.call(py, |s| {
            let (enc, timeout) = (s.encoding, s.timeout);
            Ok(s.rt
                .block_on(async { Client::connect_timed(peer, enc, timeout).await?.inf().await })?)
        })
    }

    /// The values of many keys, in their order (`None` for an absent one), asked of their
    /// owners over `concurrency` connections each, GETs pipelined.
    ///
    /// `progress(done, total)` is called every `progress_every` keys (at most every 0.1 s) and
    /// once at the end. If some keys fail, the others are still answered and the exception of
    /// the first failure is raised, counting them; a peer that does not answer raises `Timeout`
    /// at once.
    #[pyo3(signature = (keys, *, concurrency = 16, progress = None, progress_every = 1000))]
    fn get_many(
        &self,
        py: Python<'_>,
        keys: &Bound<'_, PyAny>,
        concurrency: usize,
        progress: Option<&Bound<'_, PyAny>>,
        progress_every: usize,
    ) -> PyResult<Py<PyList>> {
        let mut ks = Vec::new();
        for k in keys.try_iter()? {
            ks.push(hash_key(&k?)?);
        }
        let shared = Arc::new(Shared::new(ks, None, progress_every));
        self.bulk(py, &shared, concurrency, progress)?;
        let outcomes = std::mem::take(&mut *lock(&shared.outcomes));
        let total = outcomes.len();
        let mut out = Vec::with_capacity(total);
        let mut failed = 0;
        let mut first = None;
        for o in outcomes {
            match o {
                Outcome::Value(Some(v)) => out.push(PyBytes::new(py, &v).into_any()),
                Outcome::Value(None) => out.push(py.None().into_bound(py)),
                other => {
                    failed += 1;
                    first.get_or_insert(other);
                    out.push(py.None().into_bound(py));
                }
            }
        }
        if let Some(first) = first {
            let first = match first {
                Outcome::Failed(e) => Failure::Dht(e),
                _ => Failure::Dht(Error::Peer("a key was not answered".into())),
            };
            return Err(self.many_failed(py, "get_many", (failed, total), first));
        }
        Ok(PyList::new(py, out)?.unbind())
    }

    /// Stores many `(key, value)` pairs (an iterable of pairs, or a mapping), each at its
    /// owner, over `concurrency` connections per owner (writes on many connections share the
    /// owner's flushes to disk); the number stored.
    ///
    /// `progress` as in `get_many`. If some values are not stored, the others still are and
    /// the exception of the first failure is raised, counting them (`ValueTooLarge` for a value
    /// over its owner's limit).
    #[pyo3(signature = (items, *, concurrency = 64, progress = None, progress_every = 1000))]
    fn put_many(
        &self,
        py: Python<'_>,
        items: &Bound<'_, PyAny>,
        concurrency: usize,
        progress: Option<&Bound<'_, PyAny>>,
        progress_every: usize,
    ) -> PyResult<usize> {
        let pairs = if items.hasattr("items")? {
            items.call_method0("items")?
        } else {
            items.clone()
        };
        let mut keys = Vec::new();
        let mut values = Vec::new();
        for (n, item) in pairs.try_iter()?.enumerate() {
            let item = item?;
            let pair = item.cast::<PyTuple>().ok().filter(|t| t.len() == 2);
            let Some(pair) = pair else {
                return Err(PyTypeError::new_err(format!(
                    "put_many takes (key, value) pairs or a mapping; item {n} is {}",
                    type_name(&item)
                )));
            };
            keys.push(hash_key(&pair.get_item(0)?)?);
            values.push(value_bytes(&pair.get_item(1)?)?.into_owned());
        }
        let sizes: Vec<usize> = values.iter().map(|v| v.len()).collect();
        let shared = Arc::new(Shared::new(keys, Some(values), progress_every));
        self.bulk(py, &shared, concurrency, progress)?;
        let outcomes = std::mem::take(&mut *lock(&shared.outcomes));
        let total = outcomes.len();
        let mut stored = 0;
        let mut failed = 0;
        let mut first = None;
        for (i, o) in outcomes.into_iter().enumerate() {
            match o {
                Outcome::Stored => stored += 1,
                other => {
                    failed += 1;
                    first.get_or_insert((i, other));
                }
            }
        }
        let Some((i, first)) = first else {
            return Ok(stored);
        };
        let key = shared.keys[i];
        let first = match first {
            Outcome::Refused(owner) => {
                self.call(py, |s| Ok(Ring::refusal(s, key, owner, sizes[i])))?
            }
            Outcome::Failed(e) => Failure::Dht(e),
            _ => Failure::Dht(Error::Peer("a key was not answered".into())),
        };
        Err(self.many_failed(py, "put_many", (failed, total), first))
    }

    /// Closes every connection; the Ring cannot be used afterwards.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        lock(&self.idle).slots().clear();
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, PyTuple>) -> bool {
        self.close();
        false
    }

    fn __getitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        match self.get_value(py, key)? {
            Some(v) => Ok(PyBytes::new(py, &v).into_any().unbind()),
            None => Err(PyKeyError::new_err(key.clone().unbind())),
        }
    }

    fn __setitem__(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.put(py, key, value)
    }

    fn __delitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.remove(py, key)? {
            Ok(())
        } else {
            Err(PyKeyError::new_err(key.clone().unbind()))
        }
    }

    fn __contains__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.exists(py, key)
    }

    /// The entry peer, `"IP:PORT"`.
    #[getter]
    fn peer(&self) -> String {
        self.entry.to_string()
    }

    /// Seconds waited for a connection and for each answer.
    #[getter]
    fn timeout(&self) -> f64 {
        self.timeout.as_secs_f64()
    }

    /// `"compact"` or `"text"`; `"auto"` until the first call detected it.
    #[getter]
    fn address_encoding(&self) -> String {
        match self.requested.or_else(|| self.detected.get().copied()) {
            Some(e) => e.to_string(),
            None => "auto".into(),
        }
    }

    /// Longest OWN walk.
    #[getter]
    fn max_hops(&self) -> usize {
        self.max_hops
    }

    /// Whether `close` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn __repr__(&self) -> String {
        format!(
            "Ring('{}', timeout={}, address_encoding='{}')",
            self.entry,
            self.timeout.as_secs_f64(),
            self.address_encoding()
        )
    }
}
