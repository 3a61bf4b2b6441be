//! `dht-store status --data DIR [--json]`: the running node's own account of itself, asked on
//! its admin socket (no network): readable text, or the node's [`NodeStatus`] as one JSON
//! object.

use std::path::Path;

use dht_store::node::status::NodeStatus;
use dht_store::{node, Error};

use super::FOUND;

pub async fn status(data: &Path, json: bool) -> Result<u8, Error> {
    let s = node::request_status(data).await?;
    if json {
        super::json::print(&s)?;
    } else {
        print!("{}", text(&s));
    }
    Ok(FOUND)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// The status as lines of "what value", like INF.
fn text(s: &NodeStatus) -> String {
    let mut out = format!(
        "node {} ({}), dht-store {}, up {} s\ndata {}\nid {}\n",
        s.address, s.state, s.version, s.uptime_secs, s.data_dir, s.id
    );
    match &s.arc {
        Some(a) => {
            out += &format!(
                "arc [{}, {}): {:.2}% of the circle\n",
                a.start,
                a.end,
                a.share * 100.0
            )
        }
        None => out += "arc none (departed)\n",
    }
    match &s.predecessor {
        Some(p) => out += &format!("predecessor {} ({})\n", p.address, p.id),
        None => out += "predecessor unknown\n",
    }
    let successors: Vec<&str> = s.successors.iter().map(|p| p.address.as_str()).collect();
    out += &format!("successors {}\n", successors.join(", "));
    let known: Vec<String> = s
        .known_peers
        .iter()
        .map(|p| format!("{} ({})", p.address, p.state))
        .collect();
    out += &format!(
        "known peers {}\n",
        if known.is_empty() {
            "none".into()
        } else {
            format!("{}: {}", known.len(), known.join(", "))
        }
    );
    match (s.keys, s.value_bytes, &s.count_error) {
        (Some(k), Some(b), _) => {
            let at_least = if s.count_complete { "" } else { "at least " };
            out += &format!(
                "keys {at_least}{k}\nvalue bytes {at_least}{b} ({})\n",
                mib(b)
            );
            if let (Some(c), Some(cb)) = (s.copies, s.copy_bytes) {
                out += &format!(
                    "copies {at_least}{c}\ncopy bytes {at_least}{cb} ({})\n",
                    mib(cb)
                );
            }
        }
        (_, _, e) => out += &format!("keys unknown ({})\n", e.as_deref().unwrap_or("not counted")),
    }
    out += &format!(
        "writable {}\naddress encoding {}\n",
        if s.writable {
            "yes"
        } else {
            "no (a write failed: serving reads only)"
        },
        s.address_encoding
    );
    match &s.handoff {
        Some(h) => {
            let total = if h.entries_total > 0 {
                h.entries_total.to_string()
            } else {
                "?".into()
            };
            out += &format!(
                "handoff {} {} {} [{}, {}){}: {}/{total} entries, {}, {:.1} s\n",
                h.exchange,
                h.role,
                h.peer,
                h.arc_start,
                h.arc_end,
                h.phase
                    .as_deref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default(),
                h.entries,
                mib(h.value_bytes),
                h.seconds
            )
        }
        None => out += "handoff none\n",
    }
    match &s.backup {
        Some(b) => {
            out += &format!(
                "backup to {}: {} entries, {}, {:.1} s\n",
                b.out,
                b.entries,
                mib(b.value_bytes),
                b.seconds
            )
        }
        None => out += "backup none\n",
    }
    out
}
