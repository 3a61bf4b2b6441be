//! The one client of the protocol, used by the CLI, the tests and the benches.
//!
//! [`Client`] speaks to one peer over one persistent connection. [`Router`] finds the owner of
//! a key by the OWN walk (with a hop limit), keeps a connection per peer, and walks again when a
//! peer answers `N` (the ring moved under it).

use std::collections::HashMap;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::error::{Error, Result};
use crate::protocol::{AddressEncoding, Connection, HashKey, Limits, PeerAddr, Request, Status};

/// How long a client waits for a peer to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(peer))
            .await
            .map_err(|_| {
                Error::Peer(format!(
                    "{peer} did not accept a connection within {CONNECT_TIMEOUT:?}"
                ))
            })?
            .map_err(|e| Error::Peer(format!("cannot connect to {peer}: {e}")))?;
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
        self.conn.read_status().await
    }

    /// OWN: the known peer closest to the owner of `key`.
    pub async fn own(&mut self, key: &HashKey) -> Result<PeerAddr> {
        self.conn.write_request(&Request::Own(*key)).await?;
        self.conn.read_addr().await
    }

    /// INS: `N` (not the owner), `T` (stored durably) or `F`.
    pub async fn ins(&mut self, key: &HashKey, value: &[u8]) -> Result<Status> {
        self.conn.write_request(&Request::Ins(*key)).await?;
        match self.conn.read_status().await? {
            Status::T => {}
            other => return Ok(other),
        }
        self.conn.write_value(value).await?;
        self.conn.flush().await?;
        self.conn.read_status().await
    }

    /// GET.
    pub async fn get(&mut self, key: &HashKey) -> Result<Lookup> {
        self.conn.write_request(&Request::Get(*key)).await?;
        Ok(match self.conn.read_status().await? {
            Status::N => Lookup::NotMine,
            Status::F => Lookup::Absent,
            Status::T => Lookup::Found(self.conn.read_value().await?),
        })
    }

    /// EXI: `N`, `T` present, `F` absent.
    pub async fn exi(&mut self, key: &HashKey) -> Result<Status> {
        self.conn.write_request(&Request::Exi(*key)).await?;
        self.conn.read_status().await
    }

    /// REM: `N`, `T` removed, `F` was absent.
    pub async fn rem(&mut self, key: &HashKey) -> Result<Status> {
        self.conn.write_request(&Request::Rem(*key)).await?;
        self.conn.read_status().await
    }

    /// INF: the peer's diagnostic text.
    pub async fn inf(&mut self) -> Result<String> {
        self.conn.write_request(&Request::Inf).await?;
        let v = self.conn.read_value().await?;
        String::from_utf8(v)
            .map_err(|_| Error::Peer(format!("{}: INF text is not UTF-8", self.peer)))
    }

    /// ABD: the peer's successor.
    pub async fn abd(&mut self) -> Result<PeerAddr> {
        self.conn.write_request(&Request::Abd).await?;
        self.conn.read_addr().await
    }
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
            conns: HashMap::new(),
        }
    }

    pub fn with_max_hops(mut self, hops: usize) -> Router {
        self.max_hops = hops.max(1);
        self
    }

    /// A connection to `peer`, opened if needed.
    pub async fn client(&mut self, peer: PeerAddr) -> Result<&mut Client> {
        if !self.conns.contains_key(&peer) {
            let c = Client::connect(peer, self.encoding).await?;
            self.conns.insert(peer, c);
        }
        self.conns
            .get_mut(&peer)
            .ok_or_else(|| Error::Peer(format!("no connection to {peer}")))
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

    /// Routes one keyed request: walk to the owner, ask, and again while it answers `N`.
    async fn routed(&mut self, key: &HashKey, op: Op<'_>) -> Result<Answer> {
        let mut last = String::new();
        for attempt in 0..self.attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(4))).await;
            }
            let owner = match self.owner(key).await {
                Ok((o, _)) => o,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let client = match self.client(owner).await {
                Ok(c) => c,
                Err(e) => {
                    last = e.to_string();
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
                Ok(Some(a)) => return Ok(a),
                Ok(None) => {
                    last = format!("{owner} answered N (not mine) after the OWN walk ended there")
                }
                Err(e) => {
                    self.conns.remove(&owner);
                    last = e.to_string();
                }
            }
        }
        Err(Error::Peer(format!(
            "gave up after {} attempts: {last}",
            self.attempts
        )))
    }

    /// Stores `value` under `key` at its owner; `Ok(true)` when stored, `Ok(false)` on `F`.
    pub async fn put(&mut self, key: &HashKey, value: &[u8]) -> Result<bool> {
        self.routed(key, Op::Put(value)).await.map(Answer::yes)
    }

    /// The value under `key`, if any.
    pub async fn get(&mut self, key: &HashKey) -> Result<Option<Vec<u8>>> {
        match self.routed(key, Op::Get).await? {
            Answer::Value(v) => Ok(v),
            Answer::Yes(_) => Err(Error::Peer("GET answered as a yes/no".into())),
        }
    }

    /// Whether `key` is stored.
    pub async fn exists(&mut self, key: &HashKey) -> Result<bool> {
        self.routed(key, Op::Exists).await.map(Answer::yes)
    }

    /// Removes `key`; `Ok(true)` if it was there.
    pub async fn remove(&mut self, key: &HashKey) -> Result<bool> {
        self.routed(key, Op::Remove).await.map(Answer::yes)
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
