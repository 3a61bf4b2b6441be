//! Which peers speak the extensions `versions/1`, `replicas/1` and `compared-join/1`
//! (docs/EXTENSIONS.md): asked
//! once through their INF answer and remembered for a while, so that an extension command goes
//! only to a peer that advertised it, and a peer of another implementation never sees one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::debug;

use crate::client::Client;
use crate::protocol::{
    advertises, AddressEncoding, Limits, PeerAddr, COMPARED_JOIN_EXTENSION, REPLICAS_EXTENSION,
    VERSIONS_EXTENSION,
};

/// How long an answer is trusted: a peer restarted with another build is asked again after
/// this, and an error in an extension exchange forgets it at once ([`Extensions::forget`]).
const REMEMBERED_FOR: Duration = Duration::from_secs(600);

/// Time allowed for an INF answer: a node counts its keys for it (ours for at most a second,
/// `node::counts`; other implementations as they do).
const INF_TIMEOUT: Duration = Duration::from_secs(30);

/// The extensions one peer advertised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Advertised {
    /// `versions/1`: versioned handoffs and VIN.
    pub versions: bool,
    /// `replicas/1`: it keeps copies of its successors' arcs (VRP, VDG, VKL, VGT).
    pub replicas: bool,
    /// `compared-join/1`: it serves VCC, a CON whose joiner compares instead of receiving
    /// the whole arc.
    pub compared_join: bool,
}

/// What each peer advertised, and when we asked.
#[derive(Default)]
pub struct Extensions {
    /// What each peer advertised, and when it said so.
    known: Mutex<HashMap<PeerAddr, (Advertised, Instant)>>,
    /// Held while a peer is asked: an INF answer is a scan of the peer's store (seconds for
    /// gigabytes), so those who want the same peer's answer meanwhile wait for it instead of
    /// asking again.
    asking: Mutex<HashMap<PeerAddr, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

impl Extensions {
    /// Whether `peer` advertises `versions/1`.
    pub async fn versions(&self, peer: PeerAddr, enc: AddressEncoding) -> bool {
        self.advertised(peer, enc).await.versions
    }

    /// Whether `peer` advertises `replicas/1`.
    pub async fn replicas(&self, peer: PeerAddr, enc: AddressEncoding) -> bool {
        self.advertised(peer, enc).await.replicas
    }

    /// What `peer` advertises. A peer that does not answer is taken as one that advertises
    /// nothing (plain exchanges work with every peer), and is asked again next time.
    pub async fn advertised(&self, peer: PeerAddr, enc: AddressEncoding) -> Advertised {
        if let Some(yes) = self.remembered(peer) {
            return yes;
        }
        let asking = {
            let mut m = self.asking.lock().unwrap_or_else(|e| e.into_inner());
            if m.len() >= 256 {
                m.retain(|_, a| std::sync::Arc::strong_count(a) > 1);
            }
            m.entry(peer).or_default().clone()
        };
        let _one = asking.lock().await;
        if let Some(yes) = self.remembered(peer) {
            return yes;
        }
        let limits = Limits {
            idle_timeout: Some(INF_TIMEOUT),
            io_timeout: Some(INF_TIMEOUT),
            ..Limits::default()
        };
        let ask = async { Client::connect_with(peer, enc, limits).await?.inf().await };
        match tokio::time::timeout(INF_TIMEOUT, ask).await {
            Ok(Ok(text)) => {
                let yes = Advertised {
                    versions: advertises(&text, VERSIONS_EXTENSION),
                    replicas: advertises(&text, REPLICAS_EXTENSION),
                    compared_join: advertises(&text, REPLICAS_EXTENSION)
                        && advertises(&text, COMPARED_JOIN_EXTENSION),
                };
                debug!(%peer, "extensions: {yes:?}");
                let mut m = self.lock();
                // Bounded like the known peers: a ring is small, a flood of addresses is not.
                if m.len() >= 256 {
                    m.retain(|_, (_, at)| at.elapsed() < REMEMBERED_FOR);
                }
                if m.len() < 256 {
                    m.insert(peer, (yes, Instant::now()));
                }
                yes
            }
            Ok(Err(e)) => {
                debug!(%peer, "could not ask INF for its extensions: {e}");
                Advertised::default()
            }
            Err(_) => {
                debug!(%peer, "no INF answer within {INF_TIMEOUT:?}: taken as plain");
                Advertised::default()
            }
        }
    }

    /// What `peer` advertised, if it said so lately.
    fn remembered(&self, peer: PeerAddr) -> Option<Advertised> {
        self.lock()
            .get(&peer)
            .filter(|(_, at)| at.elapsed() < REMEMBERED_FOR)
            .map(|(yes, _)| *yes)
    }

    /// Forgets what `peer` advertised (an extension exchange with it failed).
    pub fn forget(&self, peer: PeerAddr) {
        self.lock().remove(&peer);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerAddr, (Advertised, Instant)>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}
