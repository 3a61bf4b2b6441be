//! Joining and leaving: the CON and DIS exchanges of PROTOCOL.md section 4 on both sides
//! (`con`, `dis`), the stream of entries between sled and the socket they share (`stream`), the
//! recovery of a handoff a crash interrupted (`recover`), and the place check that joins again
//! when the ring went on without us (`place`). This file holds what they share: the
//! connections a handoff opens and their limits.
//!
//! Entries move straight between sled and the socket: the sender streams a range iterator
//! (fenced by the [`super::WriteGate`], since sled iterators are not snapshots), the receiver
//! writes batches of bounded size. Nothing is collected in memory. What each side persists at
//! each step, and why that loses nothing on a crash, is in ARCHITECTURE.md ("Crash safety of
//! handoffs").

mod con;
mod dis;
mod place;
mod recover;
mod stream;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::{walk, Node};
use crate::error::{Error, Result};
use crate::protocol::{Connection, Limits, PeerAddr, Status};

pub use con::{join, serve_con, Handing};
pub use dis::{finish_departure, leave, serve_dis};
pub use place::{check_place, check_place_after_restart, rejoin_locked, Place};
pub use recover::recover;
pub(crate) use stream::Entries;

/// A receiver writes a batch once it holds this many value bytes (so 8 MiB values go one by one).
pub const BATCH_BYTES: usize = 4 << 20;

/// Read and write buffers of a handoff connection we open.
pub(super) const HANDOFF_BUFFER: usize = 256 << 10;

/// How long an incoming CON or DIS waits for a maintenance round or another handoff to end
/// before it is answered `N` (the asking peer then tries again).
pub(super) const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Limits of a handoff connection we open: the node's value limit, and patience for the
/// other side's final flush.
pub(super) fn handoff_limits(node: &Node) -> Limits {
    let mut l = node.config.limits();
    l.idle_timeout = l.io_timeout;
    l
}

pub(super) async fn connect(node: &Node, peer: PeerAddr) -> Result<Connection<TcpStream>> {
    let s = tokio::time::timeout(walk::ASK_TIMEOUT, TcpStream::connect(peer))
        .await
        .map_err(|_| Error::Peer(format!("{peer} did not accept a connection")))?
        .map_err(|e| Error::Peer(format!("cannot connect to {peer}: {e}")))?;
    s.set_nodelay(true)?;
    Ok(Connection::with_buffers(
        s,
        node.config.address_encoding,
        handoff_limits(node),
        HANDOFF_BUFFER,
    ))
}

/// Waits for the final Status of an exchange, allowing the receiver its final flush.
pub(super) async fn read_ack<S: AsyncRead + AsyncWrite>(
    node: &Node,
    conn: &mut Connection<S>,
) -> Result<Status> {
    let limit = Duration::from_secs(node.config.handoff_ack_timeout_secs.max(1));
    tokio::time::timeout(limit, conn.read_status())
        .await
        .map_err(|_| Error::Timeout)?
}
