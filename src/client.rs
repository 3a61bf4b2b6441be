//! The one client of the protocol, used by the CLI, the tests and the benches.
//!
//! [`Client`] speaks to one peer over one persistent connection. [`Router`] finds the owner of
//! a key by the OWN walk (with a hop limit), keeps a connection per peer, and walks again when a
//! peer answers `N` (the ring moved under it).

use std::collections::HashMap;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::error::{Error, Result};
use crate::protocol::{
    AddressEncoding, Connection, HashKey, Kind, Limits, PeerAddr, Request, Status,
};

/// How long a client waits for a peer to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A value is sent in steps of this size, looking between two for an early answer: a node
/// refuses a value over its limit with `F` as soon as it reads the length, and closes.
const SEND_STEP: usize = 256 << 10;

/// The answer to a GET.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// `N`: the peer does not own the key.
    NotMine,
    /// `F`: the peer owns the key and does not hold it.
    Absent,
    /// `T`: the value.
    Found(Vec<u8>),
}

/// One connection to one peer.
pub struct Client {
    /// The framed connection.
    conn: Connection<TcpStream>,
    /// Whom we talk to.
    peer: PeerAddr,
}

impl Client {
    /// Connects with the default limits (values up to 64 MiB, 30 s without progress).
    pub async fn connect(peer: PeerAddr, encoding: AddressEncoding) -> Result<Client> {
        Client::connect_with(
            peer,
            encoding,
            Limits {
                idle_timeout: Limits::default().io_timeout,
                ..Limits::default()
            },
        )
        .await
    }

    pub async fn connect_with(
        peer: PeerAddr,
        encoding: AddressEncoding,
        limits: Limits,
    ) -> Result<Client> {
        Client::connect_within(peer, encoding, limits, CONNECT_TIMEOUT).await
    }

    /// Connects waiting at most `timeout` for the peer to accept and then for each answer (a
    /// CLI's wait: it has a person at the other end).
    pub async fn connect_timed(
        peer: PeerAddr,
        encoding: AddressEncoding,
        timeout: Duration,
    ) -> Result<Client> {
        let limits = Limits {
            // Any value a node of ours may hold (its reads grow with what arrives).
            max_value: crate::config::MAX_VALUE_SIZE_MAX,
            idle_timeout: Some(timeout),
            io_timeout: Some(timeout),
        };
        Client::connect_within(peer, encoding, limits, timeout).await
    }

    /// [`Client::connect_with`], waiting at most `connect_timeout` for the peer to accept.
    pub async fn connect_within(
        peer: PeerAddr,
        encoding: AddressEncoding,
        limits: Limits,
        connect_timeout: Duration,
    ) -> Result<Client> {
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(peer))
            .await
            .map_err(|_| Error::NoAnswer {
                peer,
                after: connect_timeout,
            })?
            .map_err(|source| Error::Unreachable { peer, source })?;
        stream.set_nodelay(true)?;
        Ok(Client {
            conn: Connection::new(stream, encoding, limits),
            peer,
        })
    }

    pub fn peer(&self) -> PeerAddr {
        self.peer
    }

    /// The framed connection, for exchanges this type has no method for.
    pub fn connection(&mut self) -> &mut Connection<TcpStream> {
        &mut self.conn
    }

    /// PUL: `T` if alive.
    pub async fn pul(&mut self) -> Result<Status> {
        self.conn.write_request(&Request::Pul).await?;
        named(self.peer, self.conn.limits(), self.conn.read_status().await)
    }

    /// OWN: the known peer closest to the owner of `key`.
    pub async fn own(&mut self, key: &HashKey) -> Result<PeerAddr> {
        self.conn.write_request(&Request::Own(*key)).await?;
        named(self.peer, self.conn.limits(), self.conn.read_addr().await)
    }

    /// INS: `N` (not the owner), `T` (stored durably) or `F`. An `F` sent before the whole
    /// value arrived (a value over the node's limit) is returned as soon as it is seen.
    pub async fn ins(&mut self, key: &HashKey, value: &[u8]) -> Result<Status> {
        self.conn.write_request(&Request::Ins(*key)).await?;
        match named(self.peer, self.conn.limits(), self.conn.read_status().await)? {
            Status::T => {}
            other => return Ok(other),
        }
        self.conn.write_int(value.len() as u64).await?;
        let steps = value.len().div_ceil(SEND_STEP);
        for (i, step) in value.chunks(SEND_STEP).enumerate() {
            let sent = match self.conn.write_raw(step).await {
                Ok(()) => self.conn.flush().await,
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                if matches!(e, Error::Timeout) {
                    // It stopped reading: no answer will come.
                    return named(self.peer, self.conn.limits(), Err(e));
                }
                // The peer answered and closed: its answer may still be readable.
                return match self.conn.read_status().await {
                    Ok(s) => Ok(s),
                    Err(_) => Err(e),
                };
            }
            if i + 1 == steps {
                // The answer is read next anyway: a value of one step pays nothing here.
                break;
            }
            // Lets the runtime see the socket readable (it learns readiness while polling).
            tokio::task::yield_now().await;
            if let Some(s) = self.early_answer()? {
                return Ok(s);
            }
        }
        // An empty value has no step: its length still has to go.
        self.conn.flush().await?;
        // The answer comes once the value is durable: longer for a longer value (a timeout
        // per started MiB).
        let base = self.conn.limits().io_timeout;
        let waits = 1 + (value.len() >> 20) as u32;
        self.conn
            .set_io_timeout(base.map(|t| t.saturating_mul(waits)));
        let answer = named(self.peer, self.conn.limits(), self.conn.read_status().await);
        self.conn.set_io_timeout(base);
        answer
    }

    /// A status byte the peer sent while we were still writing, if any.
    fn early_answer(&mut self) -> Result<Option<Status>> {
        let mut b = [0u8; 1];
        match self.conn.get_ref().try_read(&mut b) {
            Ok(1) => Status::from_byte(b[0]).map(Some),
            Ok(_) => Err(Error::Truncated),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(Error::from_io(e)),
        }
    }

    /// GET.
    pub async fn get(&mut self, key: &HashKey) -> Result<Lookup> {
        self.conn.write_request(&Request::Get(*key)).await?;
        Ok(
            match named(self.peer, self.conn.limits(), self.conn.read_status().await)? {
                Status::N => Lookup::NotMine,
                Status::F => Lookup::Absent,
                Status::T => Lookup::Found(named(
                    self.peer,
                    self.conn.limits(),
                    self.conn.read_value().await,
                )?),
            },
        )
    }

    /// EXI: `N`, `T` present, `F` absent.
    pub async fn exi(&mut self, key: &HashKey) -> Result<Status> {
        self.conn.write_request(&Request::Exi(*key)).await?;
        named(self.peer, self.conn.limits(), self.conn.read_status().await)
    }

    /// REM: `N`, `T` removed, `F` was absent.
    pub async fn rem(&mut self, key: &HashKey) -> Result<Status> {
        self.conn.write_request(&Request::Rem(*key)).await?;
        named(self.peer, self.conn.limits(), self.conn.read_status().await)
    }

    /// VIN (extension `versions/1`, docs/EXTENSIONS.md; only to a peer whose INF advertised
    /// it): a versioned value, or a tombstone for `None`. `N` not mine, `T` held (this version
    /// or a newer one), `F` not stored.
    pub async fn vin(
        &mut self,
        key: &HashKey,
        version: u64,
        value: Option<&[u8]>,
    ) -> Result<Status> {
        self.conn.write_request(&Request::Vin(*key)).await?;
        self.conn.flush().await?;
        match named(self.peer, self.conn.limits(), self.conn.read_status().await)? {
            Status::T => {}
            other => return Ok(other),
        }
        self.conn.write_int(version).await?;
        match value {
            Some(v) => {
                self.conn.write_kind(Kind::Value).await?;
                self.conn.write_value(v).await?;
            }
            None => self.conn.write_kind(Kind::Tombstone).await?,
        }
        self.conn.flush().await?;
        named(self.peer, self.conn.limits(), self.conn.read_status().await)
    }

    /// VRP (extension `replicas/1`): a batch of versioned entries (`None`: a tombstone) for
    /// the peer to hold as copies; `T` once every one (or a newer version) is durable there.
    pub async fn vrp<V: AsRef<[u8]>>(
        &mut self,
        entries: &[(HashKey, u64, Option<V>)],
    ) -> Result<Status> {
        self.conn
            .write_request(&Request::Vrp(entries.len() as u64))
            .await?;
        for (key, version, value) in entries {
            self.conn.write_key(key).await?;
            self.conn
                .write_versioned(*version, value.as_ref().map(|v| v.as_ref()))
                .await?;
        }
        self.conn.flush().await?;
        named(self.peer, self.conn.limits(), self.conn.read_status().await)
    }

    /// VDG (extension `replicas/1`): the digests of the arc `[from, to)` in `2^depth`
    /// segments (`storage::Segments`). A count other than `2^depth` is a broken peer.
    pub async fn vdg(&mut self, from: &HashKey, to: &HashKey, depth: u8) -> Result<Vec<u64>> {
        self.conn
            .write_request(&Request::Vdg(*from, *to, depth.into()))
            .await?;
        self.conn.flush().await?;
        let n = named(self.peer, self.conn.limits(), self.conn.read_int().await)?;
        if n != 1u64 << depth {
            return Err(Error::Peer(format!(
                "{}: {n} digests for depth {depth}",
                self.peer
            )));
        }
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            out.push(named(
                self.peer,
                self.conn.limits(),
                self.conn.read_int().await,
            )?);
        }
        Ok(out)
    }

    /// VKL (extension `replicas/1`): up to `max` keys of the arc `[from, to)` in ring order,
    /// with their versions (`true`: a tombstone); `more` says the peer stopped at `max` and the
    /// rest begins after the last key.
    pub async fn vkl(
        &mut self,
        from: &HashKey,
        to: &HashKey,
        max: u64,
    ) -> Result<(Vec<(HashKey, u64, bool)>, bool)> {
        self.conn
            .write_request(&Request::Vkl(*from, *to, max))
            .await?;
        self.conn.flush().await?;
        let mut out = Vec::new();
        loop {
            match named(self.peer, self.conn.limits(), self.conn.read_status().await)? {
                Status::T => {}
                Status::F => return Ok((out, false)),
                Status::N => return Ok((out, true)),
            }
            if out.len() as u64 >= max {
                return Err(Error::Peer(format!(
                    "{}: more than the {max} keys asked for",
                    self.peer
                )));
            }
            let key = self.conn.read_key().await?;
            let version = self.conn.read_int().await?;
            let tombstone = self.conn.read_kind().await? == Kind::Tombstone;
            out.push((key, version, tombstone));
        }
    }

    /// VGT (extension `replicas/1`): the entry of `key` with its version (`Some(None)`: a
    /// tombstone), or `None` when the peer holds nothing under it.
    pub async fn vgt(&mut self, key: &HashKey) -> Result<Option<(u64, Option<Vec<u8>>)>> {
        self.vgt_send(key).await?;
        self.vgt_answer().await
    }

    /// The request half of [`Client::vgt`]: several may be sent before their answers are read
    /// (in order, with [`Client::vgt_answer`]), so that many keys cost one round trip.
    pub async fn vgt_send(&mut self, key: &HashKey) -> Result<()> {
        self.conn.write_request(&Request::Vgt(*key)).await
    }

    /// The answer to the oldest [`Client::vgt_send`] not yet answered.
    pub async fn vgt_answer(&mut self) -> Result<Option<(u64, Option<Vec<u8>>)>> {
        match named(self.peer, self.conn.limits(), self.conn.read_status().await)? {
            Status::T => Ok(Some(named(
                self.peer,
                self.conn.limits(),
                self.conn.read_versioned().await,
            )?)),
            _ => Ok(None),
        }
    }

    /// INF: the peer's diagnostic text.
    pub async fn inf(&mut self) -> Result<String> {
        self.conn.write_request(&Request::Inf).await?;
        let v = named(self.peer, self.conn.limits(), self.conn.read_value().await)?;
        String::from_utf8(v)
            .map_err(|_| Error::Peer(format!("{}: INF text is not UTF-8", self.peer)))
    }

    /// ABD: the peer's successor.
    pub async fn abd(&mut self) -> Result<PeerAddr> {
        self.conn.write_request(&Request::Abd).await?;
        named(self.peer, self.conn.limits(), self.conn.read_addr().await)
    }
}

/// A read from `peer` that timed out becomes [`Error::NoAnswer`], naming it.
fn named<T>(peer: PeerAddr, limits: Limits, r: Result<T>) -> Result<T> {
    r.map_err(|e| match e {
        Error::Timeout => Error::NoAnswer {
            peer,
            after: limits.io_timeout.unwrap_or_default(),
        },
        e => e,
    })
}

/// Routes requests for keys to their owners through any entry peer.
pub struct Router {
    /// Where OWN walks start.
    entry: PeerAddr,
    /// The ring's address encoding.
    encoding: AddressEncoding,
    /// Longest OWN walk before giving up (a ring that keeps pointing onward is broken).
    max_hops: usize,
    /// Times a request is routed again after an `N` or a lost connection.
    attempts: usize,
    /// Longest wait for each answer: a silent peer ends the request with [`Error::NoAnswer`]
    /// instead of holding it for ever (and is not asked again).
    timeout: Duration,
    /// Longest wait for a peer to accept a connection (the same [`Error::NoAnswer`]).
    connect_timeout: Duration,
    /// One open connection per peer talked to.
    conns: HashMap<PeerAddr, Client>,
}

impl Router {
    pub fn new(entry: PeerAddr, encoding: AddressEncoding) -> Router {
        Router {
            entry,
            encoding,
            max_hops: 64,
            attempts: 5,
            timeout: Limits::default().io_timeout.unwrap_or(CONNECT_TIMEOUT),
            connect_timeout: CONNECT_TIMEOUT,
            conns: HashMap::new(),
        }
    }

    pub fn with_max_hops(mut self, hops: usize) -> Router {
        self.max_hops = hops.max(1);
        self
    }

    /// Waits at most `timeout` for a connection and for each answer (default 5 s for a
    /// connection, 30 s for an answer).
    pub fn with_timeout(mut self, timeout: Duration) -> Router {
        self.timeout = timeout;
        self.connect_timeout = timeout;
        self
    }

    /// A connection to `peer`, opened if needed.
    pub async fn client(&mut self, peer: PeerAddr) -> Result<&mut Client> {
        if !self.conns.contains_key(&peer) {
            let limits = Limits {
                max_value: crate::config::MAX_VALUE_SIZE_MAX,
                idle_timeout: Some(self.timeout),
                io_timeout: Some(self.timeout),
            };
            let c =
                Client::connect_within(peer, self.encoding, limits, self.connect_timeout).await?;
            self.conns.insert(peer, c);
        }
        self.conns
            .get_mut(&peer)
            .ok_or_else(|| Error::Peer(format!("no connection to {peer}")))
    }

    /// Drops the connection to `peer`, if any: after a failed request it may stand in the
    /// middle of an exchange, and the next request opens a new one.
    pub fn forget(&mut self, peer: PeerAddr) {
        self.conns.remove(&peer);
    }

    /// Walks OWN from the entry peer until a peer names itself: `(owner, hops)`.
    pub async fn owner(&mut self, key: &HashKey) -> Result<(PeerAddr, usize)> {
        let path = self.owner_path(key).await?;
        Ok((path[path.len() - 1], path.len() - 1))
    }

    /// The OWN walk of [`Router::owner`] as the peers asked, in order: the entry peer first,
    /// the owner last (one peer when the entry owns the key), never empty.
    pub async fn owner_path(&mut self, key: &HashKey) -> Result<Vec<PeerAddr>> {
        let mut cur = self.entry;
        let mut path = vec![cur];
        for _ in 0..self.max_hops {
            let next = match self.client(cur).await?.own(key).await {
                Ok(next) => next,
                Err(e @ Error::NoAnswer { .. }) => {
                    // Its late answer would be read as the answer to our next request.
                    self.conns.remove(&cur);
                    return Err(e);
                }
                Err(_) => {
                    // A connection the peer had closed (the oldest peers close after every
                    // request): reopen it once.
                    self.conns.remove(&cur);
                    self.client(cur).await?.own(key).await?
                }
            };
            if next == cur {
                return Ok(path);
            }
            cur = next;
            path.push(cur);
        }
        Err(Error::HopLimit {
            key: key.to_string(),
            hops: self.max_hops,
        })
    }

    /// Routes one keyed request: walk to the owner, ask, and again while it answers `N` or
    /// its connection is lost; a peer that does not answer at all ends it at once. The owner
    /// that answered, and its answer.
    async fn routed(&mut self, key: &HashKey, op: Op<'_>) -> Result<(PeerAddr, Answer)> {
        let mut last = Error::Peer("no attempt was made".into());
        for attempt in 0..self.attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(4))).await;
            }
            let owner = match self.owner(key).await {
                Ok((o, _)) => o,
                Err(e @ Error::NoAnswer { .. }) => return Err(e),
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let client = match self.client(owner).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let answer = match op {
                Op::Put(value) => client.ins(key, value).await.map(|s| match s {
                    Status::N => None,
                    s => Some(Answer::Yes(s == Status::T)),
                }),
                Op::Get => client.get(key).await.map(|l| match l {
                    Lookup::NotMine => None,
                    Lookup::Absent => Some(Answer::Value(None)),
                    Lookup::Found(v) => Some(Answer::Value(Some(v))),
                }),
                Op::Exists => client.exi(key).await.map(|s| match s {
                    Status::N => None,
                    s => Some(Answer::Yes(s == Status::T)),
                }),
                Op::Remove => client.rem(key).await.map(|s| match s {
                    Status::N => None,
                    s => Some(Answer::Yes(s == Status::T)),
                }),
            };
            match answer {
                Ok(Some(a)) => return Ok((owner, a)),
                Ok(None) => {
                    last = Error::Peer(format!(
                        "{owner} answered N (not mine) after the OWN walk ended there"
                    ))
                }
                Err(e) => {
                    self.conns.remove(&owner);
                    if matches!(e, Error::NoAnswer { .. }) {
                        return Err(e);
                    }
                    last = e;
                }
            }
        }
        Err(Error::GaveUp {
            attempts: self.attempts,
            last: Box::new(last),
        })
    }

    /// Stores `value` under `key` at its owner; `Ok(true)` when stored, `Ok(false)` on `F`.
    pub async fn put(&mut self, key: &HashKey, value: &[u8]) -> Result<bool> {
        self.put_at(key, value).await.map(|(_, stored)| stored)
    }

    /// [`Router::put`], and the owner that answered.
    pub async fn put_at(&mut self, key: &HashKey, value: &[u8]) -> Result<(PeerAddr, bool)> {
        let (owner, a) = self.routed(key, Op::Put(value)).await?;
        Ok((owner, a.yes()))
    }

    /// The value under `key`, if any.
    pub async fn get(&mut self, key: &HashKey) -> Result<Option<Vec<u8>>> {
        match self.routed(key, Op::Get).await?.1 {
            Answer::Value(v) => Ok(v),
            Answer::Yes(_) => Err(Error::Peer("GET answered as a yes/no".into())),
        }
    }

    /// Whether `key` is stored.
    pub async fn exists(&mut self, key: &HashKey) -> Result<bool> {
        Ok(self.routed(key, Op::Exists).await?.1.yes())
    }

    /// Removes `key`; `Ok(true)` if it was there.
    pub async fn remove(&mut self, key: &HashKey) -> Result<bool> {
        Ok(self.routed(key, Op::Remove).await?.1.yes())
    }
}

/// A keyed request the router sends to an owner.
#[derive(Clone, Copy)]
enum Op<'a> {
    Put(&'a [u8]),
    Get,
    Exists,
    Remove,
}

/// The owner's answer, once it was not `N`.
enum Answer {
    Yes(bool),
    Value(Option<Vec<u8>>),
}

impl Answer {
    fn yes(self) -> bool {
        matches!(self, Answer::Yes(true))
    }
}

/// Why a peer given by a person names no address (see [`resolve_peer`]).
#[derive(Debug)]
pub enum BadPeer {
    /// Neither a port, nor `IPv4:PORT`, nor a name and a port that resolve: why the lookup failed.
    NotAnAddress(std::io::Error),
    /// The name resolves, but to no IPv4 address (peers are IPv4).
    NoIpv4,
}

/// A peer as people give one (the CLI's `--peer`, the Python package's `Ring`): `IPv4:PORT`, a
/// host name and a port (its first IPv4 address), or a bare port on 127.0.0.1. Surrounding
/// blanks are ignored. The callers word the error for their users.
pub fn resolve_peer(s: &str) -> std::result::Result<PeerAddr, BadPeer> {
    use std::net::ToSocketAddrs;
    let s = s.trim();
    if let Ok(port) = s.parse::<u16>() {
        return Ok(PeerAddr::new(std::net::Ipv4Addr::LOCALHOST, port));
    }
    if let Ok(a) = crate::protocol::parse_addr(s) {
        return Ok(a);
    }
    s.to_socket_addrs()
        .map_err(BadPeer::NotAnAddress)?
        .find_map(|a| match a {
            std::net::SocketAddr::V4(v4) => Some(v4),
            std::net::SocketAddr::V6(_) => None,
        })
        .ok_or(BadPeer::NoIpv4)
}
