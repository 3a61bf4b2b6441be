//! Short outgoing requests a node makes of its peers (PUL, OWN, ABD) and the OWN walk, each on
//! its own connection and under a timeout, so that a dead or silent peer costs a bounded wait.

use std::time::Duration;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::protocol::{is_peer_address, AddressEncoding, HashKey, Limits, PeerAddr, Status};

/// Time allowed for one short request to a peer, connection included.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest OWN walk a node makes before giving up.
pub const MAX_HOPS: usize = 64;

fn limits() -> Limits {
    Limits {
        idle_timeout: Some(ASK_TIMEOUT),
        io_timeout: Some(ASK_TIMEOUT),
        ..Limits::default()
    }
}

async fn connect(peer: PeerAddr, enc: AddressEncoding) -> Result<Client> {
    Client::connect_with(peer, enc, limits()).await
}

fn late(peer: PeerAddr) -> Error {
    Error::Peer(format!("{peer} did not answer within {ASK_TIMEOUT:?}"))
}

/// Whether `peer` answers PUL with `T`.
pub async fn pul(peer: PeerAddr, enc: AddressEncoding) -> bool {
    let ask = async { connect(peer, enc).await?.pul().await };
    matches!(
        tokio::time::timeout(ASK_TIMEOUT, ask).await,
        Ok(Ok(Status::T))
    )
}

/// `peer`'s OWN answer for `key`.
pub async fn own(peer: PeerAddr, key: &HashKey, enc: AddressEncoding) -> Result<PeerAddr> {
    let ask = async { connect(peer, enc).await?.own(key).await };
    let answer = tokio::time::timeout(ASK_TIMEOUT, ask)
        .await
        .map_err(|_| late(peer))??;
    checked(peer, "OWN", answer)
}

/// `peer`'s successor (ABD).
pub async fn abd(peer: PeerAddr, enc: AddressEncoding) -> Result<PeerAddr> {
    let ask = async { connect(peer, enc).await?.abd().await };
    let answer = tokio::time::timeout(ASK_TIMEOUT, ask)
        .await
        .map_err(|_| late(peer))??;
    checked(peer, "ABD", answer)
}

/// `answer`, if it is an address a peer can have (see [`is_peer_address`]).
pub fn checked(peer: PeerAddr, what: &str, answer: PeerAddr) -> Result<PeerAddr> {
    if is_peer_address(&answer) {
        Ok(answer)
    } else {
        Err(Error::Peer(format!(
            "{peer} named {answer} in its {what} answer, an address no peer can have"
        )))
    }
}

/// Follows OWN answers from `start` until a peer names itself, or names `me` (this node, which
/// may not be serving yet: a walk that reaches us ends there). Returns the last peer.
pub async fn walk(
    start: PeerAddr,
    key: &HashKey,
    me: PeerAddr,
    enc: AddressEncoding,
) -> Result<PeerAddr> {
    walk_trail(start, key, me, enc).await.map(|(end, _)| end)
}

/// [`walk`], also returning every peer that answered on the way (the end included): peers the
/// caller may not have known.
pub async fn walk_trail(
    start: PeerAddr,
    key: &HashKey,
    me: PeerAddr,
    enc: AddressEncoding,
) -> Result<(PeerAddr, Vec<PeerAddr>)> {
    let mut cur = start;
    let mut trail = Vec::new();
    for _ in 0..MAX_HOPS {
        if cur == me {
            return Ok((me, trail));
        }
        let next = own(cur, key, enc).await?;
        trail.push(cur);
        if next == cur {
            return Ok((cur, trail));
        }
        cur = next;
    }
    Err(Error::HopLimit {
        key: key.to_string(),
        hops: MAX_HOPS,
    })
}
