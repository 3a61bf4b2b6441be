//! `--json` output of `info`, `owner` and `verify` (and the printer `status --json` uses): one
//! JSON object on stdout, with the field names README.md lists ("JSON output"). They are part
//! of the command line's interface: add fields, do not rename them.

use serde::Serialize;

use dht_store::backup::Summary;
use dht_store::node::status::{KnownPeer, PeerStatus};
use dht_store::protocol::{HashKey, PeerAddr};
use dht_store::Error;

/// Prints `value` as one line of JSON on stdout.
pub fn print(value: &impl Serialize) -> Result<(), Error> {
    let text = serde_json::to_string(value)
        .map_err(|e| Error::Usage(format!("cannot encode the answer as JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

/// `owner --json`.
#[derive(Debug, Serialize)]
pub struct Owner {
    /// The HashKey asked about (40 hex digits).
    pub key: String,
    /// Its owner: the peer that named itself at the end of the OWN walk.
    pub owner: String,
    /// OWN requests that answered another peer: `path` has `hops + 1` peers.
    pub hops: usize,
    /// The peers asked, in order: the entry peer (--peer) first, the owner last.
    pub path: Vec<String>,
}

impl Owner {
    pub fn new(key: &HashKey, path: &[PeerAddr]) -> Owner {
        Owner {
            key: key.to_string(),
            owner: path.last().map(|p| p.to_string()).unwrap_or_default(),
            hops: path.len().saturating_sub(1),
            path: path.iter().map(|p| p.to_string()).collect(),
        }
    }
}

/// `verify --json`: an archive checked whole.
#[derive(Debug, Serialize)]
pub struct Verified {
    /// The archive, as given.
    pub file: String,
    /// Always `true`: a failed check is an error (exit 2, a sentence on stderr, no JSON).
    pub checksum_ok: bool,
    /// The address of the node backed up; `None` if its directory held no ring state.
    pub node: Option<String>,
    /// Its id (40 hex digits).
    pub id: Option<String>,
    /// Its successor when the backup began.
    pub successor: Option<String>,
    /// Its second successor when the backup began.
    pub second_successor: Option<String>,
    /// Its predecessor when the backup began, if it knew one.
    pub predecessor: Option<String>,
    /// When the backup began, seconds since the Unix epoch (UTC).
    pub created_unix_secs: u64,
    /// The same instant in RFC 3339 (UTC), for people.
    pub created: String,
    /// Entries in the archive.
    pub entries: u64,
    /// Tombstones in the archive (removals with their versions; archive format 3).
    pub tombstones: u64,
    /// Their values' bytes.
    pub value_bytes: u64,
    /// The archive file's size.
    pub file_bytes: u64,
}

impl Verified {
    pub fn new(file: &std::path::Path, s: &Summary) -> Verified {
        let h = &s.header;
        let ring = h.ring.as_ref();
        Verified {
            file: file.display().to_string(),
            checksum_ok: true,
            node: h.address.map(|a| a.to_string()),
            id: h.id.map(|id| HashKey(id).to_string()),
            successor: ring.map(|r| r.successor.to_string()),
            second_successor: ring.map(|r| r.second_successor.to_string()),
            predecessor: ring.and_then(|r| r.predecessor).map(|p| p.to_string()),
            created_unix_secs: h.created_unix_secs,
            created: rfc3339(h.created_unix_secs),
            entries: s.entries,
            tombstones: s.tombstones,
            value_bytes: s.bytes,
            file_bytes: s.file_bytes,
        }
    }
}

/// Seconds since the Unix epoch as RFC 3339 in UTC ("2023-11-14T22:13:20Z"), by the
/// proleptic Gregorian calendar.
pub fn rfc3339(unix_secs: u64) -> String {
    // humantime writes four-digit years only (and its Display fails past them).
    if unix_secs > LAST_RFC3339_SECOND {
        return format!("{unix_secs} s after the Unix epoch (past the year 9999)");
    }
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_secs);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// 9999-12-31T23:59:59Z.
const LAST_RFC3339_SECOND: u64 = 253_402_300_799;

/// `info --json`: a peer's INF text, parsed into fields when it is a dht-store node's (its
/// first line "dht-store VERSION"), and always the text itself.
#[derive(Debug, Default, Serialize)]
pub struct Info {
    /// The peer asked.
    pub peer: String,
    /// Whether the text is a dht-store node's, whose fields below are filled in; another
    /// implementation's INF text is only in `raw`.
    pub dht_store: bool,
    /// The INF text as received.
    pub raw: String,
    /// The node's build.
    pub version: Option<String>,
    /// Its advertised address.
    pub address: Option<String>,
    /// Its id (40 hex digits).
    pub id: Option<String>,
    /// Its successor.
    pub successor: Option<PeerStatus>,
    /// Its second successor.
    pub second_successor: Option<PeerStatus>,
    /// Its successor list, nearest first.
    pub successors: Vec<String>,
    /// Its predecessor, if it knows one.
    pub predecessor: Option<PeerStatus>,
    /// Its fingers (other than itself).
    pub fingers: Vec<String>,
    /// The peers it has known, with what it last saw of each.
    pub known_peers: Vec<KnownPeer>,
    /// Keys it holds (`None` if its count failed).
    pub keys: Option<u64>,
    /// Its PeerAddress encoding.
    pub address_encoding: Option<String>,
    /// Its handoff in progress, as its progress line; `None` if none.
    pub handoff: Option<String>,
    /// "member" or "departed".
    pub state: Option<String>,
    /// Seconds since it started serving.
    pub uptime_secs: Option<u64>,
}

/// "ADDR (ID)" as INF writes a peer.
fn peer_with_id(v: &str) -> Option<PeerStatus> {
    let (address, rest) = v.split_once(" (")?;
    Some(PeerStatus {
        address: address.to_string(),
        id: rest.strip_suffix(')')?.to_string(),
    })
}

/// "A, B" as INF writes a list; "none" or nothing is empty.
fn list(v: &str) -> Vec<String> {
    if v == "none" || v.is_empty() {
        return Vec::new();
    }
    v.split(", ").map(str::to_string).collect()
}

impl Info {
    /// Parses the INF text of `peer` (see `Node::info` for what a dht-store node writes).
    pub fn parse(peer: &str, raw: &str) -> Info {
        let mut info = Info {
            peer: peer.to_string(),
            raw: raw.to_string(),
            ..Info::default()
        };
        let mut lines = raw.lines();
        let Some(version) = lines.next().and_then(|l| l.strip_prefix("dht-store ")) else {
            return info;
        };
        info.dht_store = true;
        info.version = Some(version.to_string());
        // Longest names first: "successor" is a prefix of "successors".
        const NAMES: [&str; 13] = [
            "second successor",
            "address encoding",
            "known peers",
            "predecessor",
            "successors",
            "successor",
            "address",
            "fingers",
            "handoff",
            "uptime",
            "state",
            "keys",
            "id",
        ];
        for line in lines {
            let Some((name, v)) = NAMES.iter().find_map(|n| {
                line.strip_prefix(n)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .map(|v| (*n, v))
            }) else {
                continue;
            };
            match name {
                "address" => info.address = Some(v.into()),
                "id" => info.id = Some(v.into()),
                "successor" => info.successor = peer_with_id(v),
                "second successor" => info.second_successor = peer_with_id(v),
                "successors" => info.successors = list(v),
                "predecessor" => info.predecessor = peer_with_id(v),
                "fingers" => info.fingers = list(v),
                "known peers" => {
                    // "N: A (alive), B (dead)" or "none".
                    let peers = v.split_once(": ").map_or("", |(_, p)| p);
                    info.known_peers = list(peers)
                        .iter()
                        .filter_map(|p| peer_with_id(p))
                        .map(|p| KnownPeer {
                            address: p.address,
                            state: p.id,
                        })
                        .collect();
                }
                "keys" => info.keys = v.parse().ok(),
                "address encoding" => info.address_encoding = Some(v.into()),
                "handoff" => info.handoff = (v != "none").then(|| v.to_string()),
                "state" => info.state = Some(v.into()),
                "uptime" => info.uptime_secs = v.strip_suffix('s').and_then(|s| s.parse().ok()),
                _ => {}
            }
        }
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z", "a leap day");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(rfc3339(LAST_RFC3339_SECOND), "9999-12-31T23:59:59Z");
        // A damaged or hostile archive's time is printed, not a panic.
        assert!(rfc3339(u64::MAX).contains("past the year 9999"));
    }

    #[test]
    fn inf_text_of_another_implementation_is_raw_only() {
        let i = Info::parse("1.2.3.4:5", "hello\naddress x\n");
        assert!(!i.dht_store);
        assert_eq!(i.address, None);
        assert_eq!(i.raw, "hello\naddress x\n");
    }

    #[test]
    fn inf_text_of_a_node_parses_into_fields() {
        let raw = "dht-store 0.1.0\naddress 127.0.0.1:5000\nid aa\nsuccessor 127.0.0.1:5001 (bb)\n\
                   second successor 127.0.0.1:5000 (aa)\nsuccessors 127.0.0.1:5001, 127.0.0.1:5000\n\
                   predecessor unknown\nfingers none\nknown peers 2: 127.0.0.1:5001 (alive), 127.0.0.1:5002 (dead)\n\
                   keys 7\naddress encoding compact\nhandoff none\nstate member\nuptime 12s\n";
        let i = Info::parse("127.0.0.1:5000", raw);
        assert!(i.dht_store);
        assert_eq!(i.version.as_deref(), Some("0.1.0"));
        assert_eq!(i.address.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(i.id.as_deref(), Some("aa"));
        assert_eq!(
            i.successor,
            Some(PeerStatus {
                address: "127.0.0.1:5001".into(),
                id: "bb".into()
            })
        );
        assert_eq!(i.successors, ["127.0.0.1:5001", "127.0.0.1:5000"]);
        assert_eq!(i.predecessor, None);
        assert!(i.fingers.is_empty());
        assert_eq!(i.known_peers.len(), 2);
        assert_eq!(i.known_peers[1].state, "dead");
        assert_eq!(i.keys, Some(7));
        assert_eq!(i.address_encoding.as_deref(), Some("compact"));
        assert_eq!(i.handoff, None);
        assert_eq!(i.state.as_deref(), Some("member"));
        assert_eq!(i.uptime_secs, Some(12));
    }
}
