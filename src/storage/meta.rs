//! The node's records in the "ring" tree: its ring state, the handoff in progress, and the
//! peers it has known.
//!
//! The ring state and the handoff record live in one tree so that a change of both is one
//! atomic sled batch ([`Storage::save_state`]).
//!
//!
//! A RingRecord is encoded with bincode 2 (big-endian, fixed-width integers):
//!
//! ```text
//! u8 version (= 1)
//! addr me                 4 bytes IPv4, u16 port
//! addr successor
//! addr second_successor
//! u8 0 | u8 1, addr       predecessor, absent or present
//! u64 n, n × addr         fingers
//! ```
//!
//! A HandoffRecord is encoded the same way: a u32 variant index, then the variant's fields in
//! order (addresses as above, a phase as a u32 index, a bool as one byte). See [`HandoffRecord`].

use super::commit::Ticket;
use super::kv::Tree;
use super::Storage;
use crate::error::{Error, Result};
use crate::protocol::PeerAddr;
use crate::ring::{self, Peer, RingState};

/// What a write does to one record: leaves it, sets it, or removes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change<T> {
    Keep,
    Set(T),
    Clear,
}

/// Where a handoff stands; what a restart must do with it is in ARCHITECTURE.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum Phase {
    /// Entries are (or were being) sent; the receiver's `T` was not seen.
    Streaming,
    /// The receiver's `T` was seen and the ring state switched; the handed entries are still
    /// to be deleted here.
    Handed,
}

/// A handoff in progress, persisted so that a restart can finish or undo it.
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum HandoffRecord {
    /// We serve a CON: `[id(joiner), id(successor))` moves to `joiner`.
    ServingCon {
        joiner: PeerAddr,
        successor: PeerAddr,
        second_successor: PeerAddr,
        phase: Phase,
    },
    /// We are joining through `from`. `fresh`: we held no entries before, so whatever is in
    /// the data tree came from this CON and is dropped if it does not complete.
    ReceivingCon { from: PeerAddr, fresh: bool },
    /// We are leaving: everything we own moves to `to`.
    Leaving { to: PeerAddr, phase: Phase },
    /// We take over `[id(leaver), id(successor))` from a leaving `leaver`.
    ReceivingDis {
        leaver: PeerAddr,
        successor: PeerAddr,
    },
    /// We joined through `from`: the arc and our ring state are durable (written with this
    /// record), our `T` may or may not have reached `from`. Cleared once the `T` is sent; a
    /// restart that finds it asks `from` whether the join completed. Last, so that records of
    /// older builds decode as before.
    JoinedCon { from: PeerAddr, fresh: bool },
    /// As `ReceivingDis`, into a range where we already held entries, written in place (newer
    /// versions win): what we received is kept if the DIS does not complete (the leaver still
    /// has it; the repair pass hands back what is not ours), so nothing of ours is dropped.
    ReceivingDisInPlace {
        leaver: PeerAddr,
        successor: PeerAddr,
    },
}

/// Version byte in front of a stored RingRecord.
pub(super) const RING_RECORD_VERSION: u8 = 1;

/// Key of the ring state in the "ring" tree.
pub(super) const RING_KEY: &[u8] = b"state";

/// The persisted form of [`RingState`]: addresses only (ids are recomputed from them).
#[derive(Clone, Debug, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct RingRecord {
    pub version: u8,
    pub me: PeerAddr,
    pub successor: PeerAddr,
    pub second_successor: PeerAddr,
    pub predecessor: Option<PeerAddr>,
    pub fingers: Vec<PeerAddr>,
}

impl From<&RingState> for RingRecord {
    fn from(r: &RingState) -> Self {
        RingRecord {
            version: RING_RECORD_VERSION,
            me: r.me.addr,
            successor: r.successor().addr,
            second_successor: r.second_successor().addr,
            predecessor: r.predecessor.map(|p| p.addr),
            fingers: r.fingers.iter().map(|p| p.addr).collect(),
        }
    }
}

impl From<&RingRecord> for RingState {
    fn from(r: &RingRecord) -> Self {
        let me = Peer::new(r.me);
        RingState {
            me,
            // The record keeps two successors; maintenance rebuilds the rest of the list.
            successors: ring::successor_list(
                &me,
                [r.successor, r.second_successor].map(Peer::new),
                2,
            ),
            predecessor: r.predecessor.map(Peer::new),
            fingers: r.fingers.iter().copied().map(Peer::new).collect(),
        }
    }
}

/// The records' encoding. The limit makes a damaged length (a fingers count, say) an error:
/// without one bincode allocates what the length asks for before reading it (the archive
/// header's fuzzing found that abort, BENCHMARKS.md "Fuzzing"); every record is far smaller.
pub(super) fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_big_endian()
        .with_fixed_int_encoding()
        .with_limit::<{ 64 << 10 }>()
}

/// Key of the in-progress handoff in the "ring" tree.
pub(super) const HANDOFF_KEY: &[u8] = b"handoff";

/// Key of the known peers in the "ring" tree.
pub(super) const PEERS_KEY: &[u8] = b"peers";

/// Version byte in front of the stored known peers.
pub(super) const PEERS_VERSION: u8 = 1;

impl Storage {
    /// The ring state stored in this directory, if any.
    pub fn load_ring(&self) -> Result<Option<RingState>> {
        let Some(raw) = self.kv.get(Tree::Meta, RING_KEY)? else {
            return Ok(None);
        };
        let (rec, _): (RingRecord, usize) = bincode::decode_from_slice(&raw, bincode_config())?;
        if rec.version != RING_RECORD_VERSION {
            return Err(Error::Newer(format!(
                "{}: ring state version {} is not supported (expected {RING_RECORD_VERSION})",
                self.dir.display(),
                rec.version
            )));
        }
        Ok(Some(RingState::from(&rec)))
    }

    /// Stores the ring state; durable after [`Storage::sync`] of the ticket.
    pub fn save_ring(&self, state: &RingState) -> Result<Ticket> {
        self.writable()?;
        let bytes = bincode::encode_to_vec(RingRecord::from(state), bincode_config())?;
        self.kv.insert(Tree::Meta, RING_KEY, bytes)?;
        Ok(self.commit.note_write())
    }

    /// Changes the ring state and the handoff record in one atomic batch (a departed node has
    /// no ring state; a finished handoff no record).
    pub fn save_state(
        &self,
        ring: Change<&RingState>,
        handoff: Change<&HandoffRecord>,
    ) -> Result<Ticket> {
        self.writable()?;
        let mut batch = sled::Batch::default();
        match ring {
            Change::Set(r) => batch.insert(
                RING_KEY,
                bincode::encode_to_vec(RingRecord::from(r), bincode_config())?,
            ),
            Change::Clear => batch.remove(RING_KEY),
            Change::Keep => {}
        }
        match handoff {
            Change::Set(h) => {
                batch.insert(HANDOFF_KEY, bincode::encode_to_vec(h, bincode_config())?)
            }
            Change::Clear => batch.remove(HANDOFF_KEY),
            Change::Keep => {}
        }
        self.kv.apply(Tree::Meta, batch)?;
        Ok(self.commit.note_write())
    }

    /// Stores the peers this node has known (`node::peers`); durable after [`Storage::sync`].
    pub fn save_peers(&self, peers: &[PeerAddr]) -> Result<Ticket> {
        self.writable()?;
        let mut bytes = vec![PEERS_VERSION];
        bytes.extend(bincode::encode_to_vec(peers, bincode_config())?);
        self.kv.insert(Tree::Meta, PEERS_KEY, bytes)?;
        Ok(self.commit.note_write())
    }

    /// The peers this node has known, as last saved (none in a directory of an older build).
    pub fn load_peers(&self) -> Result<Vec<PeerAddr>> {
        let Some(raw) = self.kv.get(Tree::Meta, PEERS_KEY)? else {
            return Ok(Vec::new());
        };
        match raw.split_first() {
            Some((&PEERS_VERSION, rest)) => {
                let (peers, _): (Vec<PeerAddr>, usize) =
                    bincode::decode_from_slice(rest, bincode_config())?;
                Ok(peers)
            }
            _ => Err(Error::Damaged(format!(
                "{}: the known peers are stored in a format this build does not read",
                self.dir.display()
            ))),
        }
    }

    /// The handoff record left by an unfinished join or leave, if any.
    pub fn load_handoff(&self) -> Result<Option<HandoffRecord>> {
        let Some(raw) = self.kv.get(Tree::Meta, HANDOFF_KEY)? else {
            return Ok(None);
        };
        let (rec, _): (HandoffRecord, usize) = bincode::decode_from_slice(&raw, bincode_config())?;
        Ok(Some(rec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_length_in_a_record_is_an_error_not_an_allocation() {
        let a: PeerAddr = "127.0.0.1:5000".parse().unwrap();
        let rec = RingRecord {
            version: RING_RECORD_VERSION,
            me: a,
            successor: a,
            second_successor: a,
            predecessor: None,
            fingers: vec![a; 3],
        };
        let mut bytes = bincode::encode_to_vec(&rec, bincode_config()).unwrap();
        let back: (RingRecord, usize) =
            bincode::decode_from_slice(&bytes, bincode_config()).unwrap();
        assert_eq!(back.0, rec);
        // The fingers count is the 8 bytes before the 3 addresses at the end.
        let at = bytes.len() - 3 * 6 - 8;
        bytes[at..at + 8].copy_from_slice(&(1u64 << 48).to_be_bytes());
        assert!(bincode::decode_from_slice::<RingRecord, _>(&bytes, bincode_config()).is_err());
    }
}
