//! The ring at a glance (`dht-store ring`): walk the ring from any peer with ABD until it comes
//! back to the start, ask each member INF for what it reports, and describe the result as a
//! table, JSON or an SVG drawing (`svg`).
//!
//! Only the wire protocol is used (ABD and INF, PROTOCOL.md 3), so the walk works through peers
//! of any implementation: what a peer's INF does not say (`inf::parse` recognises our text and
//! the common forms of others) is unknown, never an error. Every connection and every answer is
//! bounded by [`WalkOptions::timeout`], and the walk by [`WalkOptions::max_members`], so a
//! silent peer or a ring that does not close ends the walk with a sentence naming the peer.

pub mod inf;
pub mod svg;

use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::protocol::{AddressEncoding, HashKey, Limits, PeerAddr};
use crate::ring::{distance, id_of};

pub use inf::{Handoff, InfReport};

/// How a walk talks to the peers.
#[derive(Clone, Debug)]
pub struct WalkOptions {
    /// The ring's address encoding (all peers of a ring use the same).
    pub encoding: AddressEncoding,
    /// Most members listed before the walk gives up: a successor chain that never comes back
    /// to the start would otherwise be followed for ever.
    pub max_members: usize,
    /// Longest wait for a connection, and for each answer on it: a peer that accepts and says
    /// nothing must not hang the command.
    pub timeout: Duration,
}

impl Default for WalkOptions {
    fn default() -> Self {
        WalkOptions {
            encoding: AddressEncoding::Compact,
            max_members: 1024,
            timeout: Duration::from_secs(3),
        }
    }
}

/// Largest INF text read: diagnostics, not data (ours is a few hundred bytes).
const MAX_INF: u64 = 1 << 20;

/// The ring as the walk saw it.
#[derive(Clone, Debug, Serialize)]
pub struct RingMap {
    /// The peer the walk started from, named in every message about it.
    #[serde(serialize_with = "ser_addr")]
    pub start: PeerAddr,
    /// The members that answered, in ring order (ABD order); on a ring that closed, starting
    /// at the lowest id, as the drawing goes clockwise from the top.
    pub members: Vec<Member>,
    /// Whether ABD led back to the start: the members are then the whole ring.
    pub closed: bool,
    /// Why the ring is not whole or not consistent, in one sentence naming the peer: a dead or
    /// silent member, a chain that does not come back to the start, too many members, or
    /// successors that go round the circle more than once.
    pub problem: Option<String>,
}

/// One member of the ring.
#[derive(Clone, Debug, Serialize)]
pub struct Member {
    /// Where it was reached (as its predecessor's ABD named it).
    #[serde(serialize_with = "ser_addr")]
    pub address: PeerAddr,
    /// SHA-1 of its address: its place on the circle (PROTOCOL.md 2), whatever its INF says.
    #[serde(serialize_with = "ser_key")]
    pub id: HashKey,
    /// Its ABD answer: whose id ends its arc.
    #[serde(serialize_with = "ser_addr")]
    pub successor: PeerAddr,
    /// The fraction of the circle it owns, `[id, id(successor))` over 2^160 (1.0 for a ring of
    /// one): how evenly the ring is spread.
    pub share: f64,
    /// Entries it holds, if its INF says (ours counts owned and not-yet-repaired entries).
    pub keys: Option<u64>,
    /// Its successor list, if its INF reports one (two entries from peers that report only a
    /// successor and a second successor).
    #[serde(serialize_with = "ser_opt_addrs")]
    pub successors: Option<Vec<PeerAddr>>,
    /// The handoff it runs now: unknown (`None`) for a peer whose INF does not report
    /// handoffs, `Some(None)` for none.
    #[serde(serialize_with = "ser_handoff")]
    pub handoff: Option<Option<Handoff>>,
    /// The software and version its INF names, to tell the kinds of peers apart.
    pub software: Option<String>,
    /// What does not fit: an INF that failed, an id or address in INF unlike the one the ring
    /// routes by.
    pub notes: Vec<String>,
}

impl RingMap {
    /// Keys held in all, over the members that report them, and how many do not.
    pub fn keys(&self) -> (u64, usize) {
        let known = self.members.iter().filter_map(|m| m.keys).sum();
        let unknown = self.members.iter().filter(|m| m.keys.is_none()).count();
        (known, unknown)
    }

    /// As JSON, for scripts.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

/// The fraction of the circle from `from` up to `to` (0 when they are equal).
pub fn fraction(from: &HashKey, to: &HashKey) -> f64 {
    unit(&distance(from, to))
}

/// A position on the circle as a fraction of a turn: `key / 2^160`.
pub fn unit(key: &HashKey) -> f64 {
    let mut x = 0.0f64;
    for b in key.as_bytes() {
        x = x * 256.0 + f64::from(*b);
    }
    x / 2f64.powi(160)
}

/// Walks the ring from `start`: ABD from member to member until back at `start`, INF at each.
/// Fails (one sentence naming the peer) only when `start` itself does not answer ABD; any later
/// failure ends the walk with what was found and [`RingMap::problem`] saying where it broke.
pub async fn walk(start: PeerAddr, opts: &WalkOptions) -> Result<RingMap> {
    let mut members: Vec<Member> = Vec::new();
    let mut problem = None;
    let mut closed = false;
    let mut cur = start;
    loop {
        let next = match abd(cur, opts).await {
            Ok(next) => next,
            Err(e) => match members.last() {
                None => {
                    return Err(Error::Peer(format!(
                        "{cur} does not answer ABD (who is your successor?): {e}"
                    )))
                }
                Some(prev) => {
                    problem = Some(format!(
                        "{cur}, named by {} as its successor, does not answer ABD ({e}): the \
                         ring is broken there",
                        prev.address
                    ));
                    break;
                }
            },
        };
        members.push(member(cur, next, opts).await);
        if next == start {
            closed = true;
            break;
        }
        if members.iter().any(|m| m.address == next) {
            problem = Some(format!(
                "ABD at {cur} names {next}, listed already, so the successors never come back to \
                 {start}: {start} is not on the ring they form"
            ));
            break;
        }
        if members.len() >= opts.max_members {
            problem = Some(format!(
                "stopped after {} members without coming back to {start} (the last, {cur}, names \
                 {next})",
                members.len()
            ));
            break;
        }
        cur = next;
    }
    if closed {
        // Ring order from the lowest id: the order of the circle drawn from its top.
        if let Some(lowest) = (0..members.len()).min_by_key(|&i| members[i].id) {
            members.rotate_left(lowest);
        }
        let turns: f64 = members.iter().map(|m| m.share).sum();
        if turns > 1.5 {
            problem = Some(format!(
                "the successors named by ABD go {turns:.0} times round the circle: the members' \
                 successors skip peers that lie between them (seen from {start})"
            ));
        }
    }
    Ok(RingMap {
        start,
        members,
        closed,
        problem,
    })
}

/// `peer`'s ABD answer, within the timeout.
async fn abd(peer: PeerAddr, opts: &WalkOptions) -> Result<PeerAddr> {
    bounded(opts.timeout, async {
        Client::connect_with(peer, opts.encoding, limits(opts))
            .await?
            .abd()
            .await
    })
    .await
}

/// `peer`'s INF text, within the timeout; bytes that are not UTF-8 are replaced, not refused.
async fn inf_text(peer: PeerAddr, opts: &WalkOptions) -> Result<String> {
    bounded(opts.timeout, async {
        let mut c = Client::connect_with(peer, opts.encoding, limits(opts)).await?;
        let conn = c.connection();
        conn.write_request(&crate::protocol::Request::Inf).await?;
        conn.flush().await?;
        let bytes = conn.read_value().await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    })
    .await
}

fn limits(opts: &WalkOptions) -> Limits {
    Limits {
        max_value: MAX_INF,
        idle_timeout: Some(opts.timeout),
        io_timeout: Some(opts.timeout),
    }
}

async fn bounded<T>(limit: Duration, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| Error::Peer(format!("no answer within {limit:?}")))?
}

/// The member at `address`, whose ABD named `successor`, with what its INF reports.
async fn member(address: PeerAddr, successor: PeerAddr, opts: &WalkOptions) -> Member {
    let id = id_of(&address);
    let share = if successor == address {
        1.0 // a ring of one owns the whole circle
    } else {
        fraction(&id, &id_of(&successor))
    };
    let mut notes = Vec::new();
    let report = match inf_text(address, opts).await {
        Ok(text) => inf::parse(&text),
        Err(e) => {
            notes.push(format!("INF failed: {e}"));
            InfReport::default()
        }
    };
    if let Some(said) = report.address.filter(|a| *a != address) {
        notes.push(format!("its INF gives the address {said}"));
    }
    if let Some(said) = report.id.filter(|i| *i != id) {
        notes.push(format!(
            "its INF gives the id {said}, not SHA-1 of its address"
        ));
    }
    Member {
        address,
        id,
        successor,
        share,
        keys: report.keys,
        successors: report.successors,
        handoff: report.handoff,
        software: report.software,
        notes,
    }
}

pub(crate) fn ser_addr<S: Serializer>(a: &PeerAddr, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(a)
}

fn ser_key<S: Serializer>(k: &HashKey, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(k)
}

fn ser_opt_addrs<S: Serializer>(
    l: &Option<Vec<PeerAddr>>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match l {
        None => s.serialize_none(),
        Some(l) => s.collect_seq(l.iter().map(|a| a.to_string())),
    }
}

pub(crate) fn ser_opt_arc<S: Serializer>(
    arc: &Option<(HashKey, HashKey)>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match arc {
        None => s.serialize_none(),
        Some((from, to)) => s.collect_seq([from.to_string(), to.to_string()]),
    }
}

/// `null` (unknown), `{"running": false}`, or `{"running": true, "kind": ..., ...}`.
fn ser_handoff<S: Serializer>(
    h: &Option<Option<Handoff>>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Shown<'a> {
        /// Whether a handoff runs: a script's first question.
        running: bool,
        /// Its fields beside `running`, when it runs.
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        handoff: Option<&'a Handoff>,
    }
    match h {
        None => s.serialize_none(),
        Some(h) => Shown {
            running: h.is_some(),
            handoff: h.as_ref(),
        }
        .serialize(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_of_the_circle() {
        assert_eq!(unit(&HashKey::ZERO), 0.0);
        assert_eq!(unit(&HashKey::pow2(159)), 0.5);
        assert_eq!(unit(&HashKey::pow2(158)), 0.25);
        // Wrapping past the top: from 3/4 up to 1/4 is half the circle.
        let three_quarters = HashKey::pow2(159).wrapping_add(&HashKey::pow2(158));
        assert_eq!(fraction(&three_quarters, &HashKey::pow2(158)), 0.5);
        assert!((unit(&HashKey::MAX) - 1.0).abs() < 1e-12);
    }
}
