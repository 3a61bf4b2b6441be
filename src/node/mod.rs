//! The running node: shared state ([`Node`]), start-up and resume ([`run`]), the TCP server
//! (`server`), and one handler per protocol command (`commands`).

mod commands;
mod server;

use std::future::Future;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::protocol::{HashKey, PeerAddr};
use crate::ring::RingState;
use crate::storage::Storage;

pub use server::Shutdown;

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

/// State shared by every connection of one node.
pub struct Node {
    /// Settings, fixed for the life of the process.
    pub config: Config,
    /// The data directory: entries and ring state.
    pub storage: Storage,
    /// What we know of the ring. A std lock: it is held only for in-memory reads and a
    /// sled call, never across an `.await`, so that no request waits on another's network I/O.
    ring: RwLock<RingState>,
    /// When the node started serving, for INF.
    started: Instant,
}

impl Node {
    pub fn new(config: Config, storage: Storage, ring: RingState) -> Node {
        Node {
            config,
            storage,
            ring: RwLock::new(ring),
            started: Instant::now(),
        }
    }

    pub fn ring(&self) -> RwLockReadGuard<'_, RingState> {
        self.ring.read().unwrap_or_else(|e| e.into_inner())
    }

    fn ring_mut(&self) -> RwLockWriteGuard<'_, RingState> {
        self.ring.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn me(&self) -> PeerAddr {
        self.ring().me.addr
    }

    pub fn owns(&self, key: &HashKey) -> bool {
        self.ring().owns(key)
    }

    /// Stores `value` under `key` if we own it, and returns once it is flushed.
    pub async fn insert(&self, key: &HashKey, value: Vec<u8>) -> Result<Written> {
        let ticket = {
            let ring = self.ring();
            if !ring.owns(key) {
                return Ok(Written::NotMine);
            }
            self.storage.insert(key, value)?
        };
        self.storage.sync(ticket).await?;
        Ok(Written::Done)
    }

    /// Removes `key` if we own it, and returns once the removal is flushed.
    pub async fn remove(&self, key: &HashKey) -> Result<Written> {
        let (was, ticket) = {
            let ring = self.ring();
            if !ring.owns(key) {
                return Ok(Written::NotMine);
            }
            self.storage.remove(key)?
        };
        self.storage.sync(ticket).await?;
        Ok(if was { Written::Done } else { Written::Absent })
    }

    /// Replaces the ring state and persists it durably.
    pub async fn set_ring(&self, state: RingState) -> Result<()> {
        let ticket = {
            let mut ring = self.ring_mut();
            let t = self.storage.save_ring(&state)?;
            *ring = state;
            t
        };
        self.storage.sync(ticket).await
    }

    /// The INF text: address, id, neighbours, fingers, entries held.
    pub fn info(&self) -> String {
        let ring = self.ring().clone();
        let peer = |p: &crate::ring::Peer| format!("{} ({})", p.addr, p.id);
        let fingers: Vec<String> = ring.fingers.iter().map(|p| p.addr.to_string()).collect();
        format!(
            "dht-store {}\naddress {}\nid {}\nsuccessor {}\nsecond successor {}\npredecessor {}\n\
             fingers {}\nkeys {}\naddress encoding {}\nuptime {}s\n",
            env!("CARGO_PKG_VERSION"),
            ring.me.addr,
            ring.me.id,
            peer(&ring.successor),
            peer(&ring.second_successor),
            ring.predecessor
                .as_ref()
                .map(peer)
                .unwrap_or_else(|| "unknown".into()),
            if fingers.is_empty() {
                "none".into()
            } else {
                fingers.join(", ")
            },
            self.storage.count(),
            self.config.address_encoding,
            self.started.elapsed().as_secs(),
        )
    }
}

/// Decides the ring state to start with: resume what the data directory holds, or start anew.
fn initial_ring(config: &Config, storage: &Storage) -> Result<(RingState, bool)> {
    let me = config.advertised();
    match storage.load_ring()? {
        Some(state) if state.me.addr == me => {
            if config.join.is_some() {
                info!(
                    "{} already holds ring state for {me}: resuming it and ignoring --join",
                    storage.dir().display()
                );
            } else {
                info!(
                    "resuming ring state from {}: successor {}",
                    storage.dir().display(),
                    state.successor.addr
                );
            }
            Ok((state, false))
        }
        Some(state) => {
            warn!(
                "{} held the ring state of {}, but this node is {me}: its id changes, so it starts \
                 a new place in the ring and keeps the entries",
                storage.dir().display(),
                state.me.addr
            );
            Ok((RingState::alone(me), true))
        }
        None => Ok((RingState::alone(me), true)),
    }
}

/// Runs a node until `shutdown` completes: opens the data directory, resumes or starts the ring,
/// serves, and on shutdown lets in-flight requests finish and flushes.
pub async fn run(config: Config, shutdown: impl Future) -> Result<()> {
    config.validate()?;
    let storage = Storage::open(&config.data, &config.storage())?;
    let (ring, fresh) = initial_ring(&config, &storage)?;
    if fresh && config.join.is_some() {
        return Err(Error::Config(
            "joining an existing ring (--join) is not available in this version yet; start \
             without --join to run a ring of one"
                .into(),
        ));
    }
    let listener = TcpListener::bind(config.bind_addr())
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {}: {e}", config.bind_addr())))?;
    let node = Arc::new(Node::new(config, storage, ring.clone()));
    if fresh {
        node.set_ring(ring).await?;
    }
    info!(
        "serving {} id {} ({} addresses, data {})",
        node.me(),
        node.ring().me.id,
        node.config.address_encoding,
        node.storage.dir().display()
    );
    server::serve(node.clone(), listener, shutdown).await;
    node.storage.flush()?;
    info!("flushed {}; stopped", node.storage.dir().display());
    Ok(())
}
