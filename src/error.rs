//! The one error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong in dht-store, from a peer's garbage to a full disk.
///
/// Variants that come from the wire (`UnknownCommand`, `Truncated`, `ValueTooLarge`,
/// `BadAddress`) end one connection and nothing else; storage variants fail one request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),

    #[error("stored ring state is unreadable: {0}")]
    Decode(#[from] bincode::error::DecodeError),

    #[error("could not encode ring state: {0}")]
    Encode(#[from] bincode::error::EncodeError),

    #[error("unknown command {0:?}")]
    UnknownCommand(String),

    #[error("connection closed inside a message")]
    Truncated,

    #[error("the connection timed out")]
    Timeout,

    #[error("valSize {size} is over the limit of {limit} bytes")]
    ValueTooLarge { size: u64, limit: u64 },

    #[error("bad peer address: {0}")]
    BadAddress(String),

    #[error("unexpected status byte {0:#04x}")]
    BadStatus(u8),

    #[error("data directory {} is in use by another dht-store process{}", dir.display(), pid.as_ref().map(|p| format!(" (pid {p})")).unwrap_or_default())]
    DataDirLocked { dir: PathBuf, pid: Option<String> },

    #[error("configuration error: {0}")]
    Config(String),

    /// A command line that asks for something impossible (no key given, a bad --hash).
    #[error("{0}")]
    Usage(String),

    /// An operation on a file, socket or address failed; `what` names it and what was done.
    #[error("{what}: {source}")]
    IoAt {
        what: String,
        source: std::io::Error,
    },

    /// A backup's cut was asked for in the wrong state (one running already, none running).
    #[error("{0}")]
    Backup(String),

    /// The data directory was written by a newer build, in a layout or record version this
    /// build does not read.
    #[error("{0}")]
    Newer(String),

    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,

    /// A peer accepted the connection (or a request) and then said nothing for the whole
    /// timeout: a stalled node, something that is not a dht-store peer, or a ring of the other
    /// address encoding (a 6-byte address read as the start of a text one waits for more).
    #[error("{peer} did not answer within {} s", after.as_secs_f64())]
    NoAnswer {
        peer: crate::protocol::PeerAddr,
        after: std::time::Duration,
    },

    #[error("the OWN walk for {key} did not end within {hops} hops")]
    HopLimit { key: String, hops: usize },

    /// A connection to `peer` could not be opened (refused, no route, a name that does not
    /// resolve to it): nobody listens there, or the network does not reach it.
    #[error("cannot connect to {peer}: {source}")]
    Unreachable {
        peer: crate::protocol::PeerAddr,
        source: std::io::Error,
    },

    /// A routed request failed on every attempt; `last` is why the last one failed (kept as an
    /// error, not text, so that a caller can tell a dead peer from a broken answer).
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp { attempts: usize, last: Box<Error> },

    #[error("{0}")]
    Peer(String),

    #[error("{0}")]
    Archive(String),

    #[error("durable flush failed: {0}")]
    Flush(String),

    /// A write to the data directory failed (a full disk, a file-size limit, an I/O error):
    /// sled 0.34 cannot go on writing after that, so the storage refuses writes until restart.
    #[error("{0}")]
    Unwritable(String),

    /// A write reached fewer copies than the ring can give (a replica did not hold it in
    /// time): the write is answered `F`, and the client retries.
    #[error("not held by every replica: {0}")]
    Replicas(String),

    /// What the data directory holds does not fit together (pieces of a value that disagree):
    /// damage, not something a retry mends.
    #[error("stored data is damaged: {0}")]
    Damaged(String),
}

impl Error {
    /// An I/O error that means the peer went away inside a message becomes `Truncated`.
    pub fn from_io(e: std::io::Error) -> Error {
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Error::Truncated,
            std::io::ErrorKind::TimedOut => Error::Timeout,
            _ => Error::Io(e),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
