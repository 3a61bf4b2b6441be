//! Which peers speak the `versions/1` extension (docs/EXTENSIONS.md): asked once through their
//! INF answer and remembered for a while, so that an extension command goes only to a peer
//! that advertised it, and a peer of another implementation never sees one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::debug;

use crate::client::Client;
use crate::protocol::{advertises_versions, AddressEncoding, Limits, PeerAddr};

/// How long an answer is trusted: a peer restarted with another build is asked again after
/// this, and an error in an extension exchange forgets it at once ([`Extensions::forget`]).
const REMEMBERED_FOR: Duration = Duration::from_secs(600);

/// Time allowed for an INF answer: it counts the peer's keys with a scan, seconds for
/// millions of entries.
const INF_TIMEOUT: Duration = Duration::from_secs(30);

/// What each peer advertised, and when we asked.
#[derive(Default)]
pub struct Extensions {
    /// Whether each peer advertised `versions/1`, and when it said so.
    versions: Mutex<HashMap<PeerAddr, (bool, Instant)>>,
}

impl Extensions {
    /// Whether `peer` advertises `versions/1`. A peer that does not answer is taken as one that
    /// does not (plain exchanges work with every peer), and is asked again next time.
    pub async fn versions(&self, peer: PeerAddr, enc: AddressEncoding) -> bool {
        if let Some((yes, at)) = self.lock().get(&peer).copied() {
            if at.elapsed() < REMEMBERED_FOR {
                return yes;
            }
        }
        let limits = Limits {
            idle_timeout: Some(INF_TIMEOUT),
            io_timeout: Some(INF_TIMEOUT),
            ..Limits::default()
        };
        let ask = async { Client::connect_with(peer, enc, limits).await?.inf().await };
        match tokio::time::timeout(INF_TIMEOUT, ask).await {
            Ok(Ok(text)) => {
                let yes = advertises_versions(&text);
                debug!(%peer, "extension versions/1: {}", if yes { "yes" } else { "no" });
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
                false
            }
            Err(_) => {
                debug!(%peer, "no INF answer within {INF_TIMEOUT:?}: taken as plain");
                false
            }
        }
    }

    /// Forgets what `peer` advertised (an extension exchange with it failed).
    pub fn forget(&self, peer: PeerAddr) {
        self.lock().remove(&peer);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerAddr, (bool, Instant)>> {
        self.versions.lock().unwrap_or_else(|e| e.into_inner())
    }
}
