//! What can be read out of a peer's INF text. INF is "diagnostics for people" (PROTOCOL.md 3):
//! its form is not fixed, and other implementations write what they like. This parser takes the
//! fields it recognises (ours, line by line as `Node::info` writes them, and the common forms
//! other peers use: `name value`, `name: value`, `name = value`, an address as `a.b.c.d:port`
//! or a `('a.b.c.d', port)` tuple) and leaves everything else unknown. It never fails.

use std::net::Ipv4Addr;

use serde::Serialize;

use crate::protocol::{HashKey, PeerAddr};

/// Everything recognised in one INF text; `None` is "not reported" (shown as unknown).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InfReport {
    /// The software and its version, from our first line (`dht-store 0.1.0`): tells the kinds
    /// of peers in a mixed ring apart.
    pub software: Option<String>,
    /// The address the peer says it has, to notice a peer that advertises another one than the
    /// address it was reached at.
    pub address: Option<PeerAddr>,
    /// The id the peer says it has, to notice one that disagrees with SHA-1 of its address.
    pub id: Option<HashKey>,
    /// Entries held (ours: owned or not, as `storage.count()` says).
    pub keys: Option<u64>,
    /// The successor list in ring order: ours as `successors a, b, c`; else the `successor`
    /// and `second successor` lines.
    pub successors: Option<Vec<PeerAddr>>,
    /// The handoff running now: `Some(None)` when the peer says none runs, `None` when it
    /// does not report handoffs at all.
    pub handoff: Option<Option<Handoff>>,
}

/// A handoff in progress, as our INF's `handoff` line reports it (`progress::Progress::line`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Handoff {
    /// `CON` or `DIS`: a join or a leave.
    pub kind: String,
    /// Whether this peer sends the arc (`true`) or receives it.
    pub sending: bool,
    /// The other side of the exchange (for a CON served here, the joiner, not yet a member).
    #[serde(serialize_with = "super::ser_addr")]
    pub peer: PeerAddr,
    /// The arc that moves, `[from, to)`, when the line names it.
    #[serde(serialize_with = "super::ser_opt_arc")]
    pub arc: Option<(HashKey, HashKey)>,
    /// Entries moved so far.
    pub entries: Option<u64>,
    /// Entries announced by the count (`None` until the count is known).
    pub total: Option<u64>,
    /// The whole line, for people.
    pub text: String,
}

/// Reads what it recognises in `text`; anything else is left unknown.
pub fn parse(text: &str) -> InfReport {
    let mut r = InfReport::default();
    let mut first_successor = None;
    let mut second_successor = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if i == 0 {
            if let Some(v) = line.strip_prefix("dht-store ") {
                r.software = Some(format!("dht-store {}", v.trim()));
                continue;
            }
        }
        // Longest names first: "second successor" before "successor", "successors" before it.
        if let Some(v) = field(line, "second successor") {
            second_successor = find_addr(v);
        } else if let Some(v) = field(line, "successors") {
            r.successors = addr_list(v);
        } else if let Some(v) = field(line, "successor") {
            first_successor = find_addr(v);
        } else if field(line, "address encoding").is_some() {
            // Not an address: "compact" or "text".
        } else if let Some(v) = field(line, "address") {
            r.address = find_addr(v).or(r.address);
        } else if let Some(v) = field(line, "id") {
            r.id = v
                .split_whitespace()
                .next()
                .and_then(|h| h.trim_start_matches("0x").parse().ok())
                .or(r.id);
        } else if let Some(v) = field(line, "keys") {
            r.keys = leading_number(v).or(r.keys);
        } else if let Some(v) = field(line, "handoff") {
            r.handoff = Some(handoff(v));
        }
    }
    if r.successors.is_none() {
        if let Some(s1) = first_successor {
            let mut list = vec![s1];
            list.extend(second_successor);
            r.successors = Some(list);
        }
    }
    r
}

/// The value after `name` on a line `name value`, `name: value` or `name=value` (name in any
/// case), or `None` if the line is about something else.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let head = line.get(..name.len())?;
    if !head.eq_ignore_ascii_case(name) {
        return None;
    }
    let rest = line.get(name.len()..)?;
    let first = rest.chars().next()?;
    if !(first.is_whitespace() || first == ':' || first == '=') {
        return None; // "keyspace", "identity", "successors" asked as "successor"
    }
    Some(rest.trim_start_matches(|c: char| c.is_whitespace() || c == ':' || c == '='))
}

/// The digits a value starts with (`12`, `12 entries`), or `None` (`unknown (...)`).
fn leading_number(v: &str) -> Option<u64> {
    let digits: String = v.chars().take_while(|c| c.is_ascii_digit()).collect();
    let rest = &v[digits.len()..];
    if rest.starts_with(|c: char| c.is_alphanumeric() || c == '.') {
        return None; // "12abc", "1.5"
    }
    digits.parse().ok()
}

/// A comma-separated list of `a.b.c.d:port`; `None` unless every item is one.
fn addr_list(v: &str) -> Option<Vec<PeerAddr>> {
    let list: Option<Vec<PeerAddr>> = v
        .split(',')
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| s.split_whitespace().next().and_then(|a| a.parse().ok()))
        .collect();
    list.filter(|l| !l.is_empty())
}

/// The first address in `v`: `a.b.c.d:port` (ours) or `('a.b.c.d', port)` (a Python tuple,
/// as refnode.py prints one).
pub fn find_addr(v: &str) -> Option<PeerAddr> {
    for (start, _) in v.char_indices() {
        let tail = &v[start..];
        if !tail.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        if start > 0 && v[..start].ends_with(|c: char| c.is_ascii_digit() || c == '.') {
            continue;
        }
        let ip_text: String = tail
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let Ok(ip) = ip_text.parse::<Ipv4Addr>() else {
            continue;
        };
        let after = &tail[ip_text.len()..];
        let after = after
            .strip_prefix(':')
            .or_else(|| after.strip_prefix("',").map(str::trim_start))
            .or_else(|| after.strip_prefix("\",").map(str::trim_start));
        let Some(after) = after else { continue };
        let port: String = after.chars().take_while(|c| c.is_ascii_digit()).collect();
        if let Ok(port) = port.parse::<u16>() {
            return Some(PeerAddr::new(ip, port));
        }
    }
    None
}

/// Our `handoff` line: `none`, or `CON to 127.0.0.1:5001 [a, b): 10/20 entries, ...`.
/// A line of another form is a handoff we cannot read: reported with its text only if it names
/// CON or DIS and a peer, else taken as none.
fn handoff(v: &str) -> Option<Handoff> {
    let v = v.trim();
    if v.is_empty() || v.eq_ignore_ascii_case("none") || v.eq_ignore_ascii_case("idle") {
        return None;
    }
    let kind = v.get(..3).filter(|k| *k == "CON" || *k == "DIS")?;
    let rest = v.get(3..)?.trim_start();
    let sending = if rest.starts_with("to ") {
        true
    } else if rest.starts_with("from ") {
        false
    } else {
        rest.contains("sending")
    };
    let peer = find_addr(rest)?;
    let arc = rest.split_once('[').and_then(|(_, a)| {
        let (from, to) = a.split_once(',')?;
        let to = to.trim_start().get(..40)?;
        Some((from.trim().parse().ok()?, to.parse().ok()?))
    });
    // "...): 1200/5000 entries, ..." ("?" for a total not known yet).
    let counts = rest.rsplit_once("): ").map(|(_, c)| c).unwrap_or(rest);
    let (entries, total) = match counts.split_once(" entries") {
        Some((n, _)) => match n.rsplit(' ').next().unwrap_or(n).split_once('/') {
            Some((done, total)) => (done.trim().parse().ok(), total.trim().parse().ok()),
            None => (None, None),
        },
        None => (None, None),
    };
    Some(Handoff {
        kind: kind.to_string(),
        sending,
        peer,
        arc,
        entries,
        total: total.filter(|t| *t > 0),
        text: v.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> PeerAddr {
        s.parse().unwrap()
    }

    #[test]
    fn our_own_inf_is_read_whole() {
        let id = crate::ring::id_of(&a("127.0.0.1:5000"));
        let s1 = crate::ring::id_of(&a("127.0.0.1:5002"));
        let text = format!(
            "dht-store 0.1.0\naddress 127.0.0.1:5000\nid {id}\nsuccessor 127.0.0.1:5001 (x)\n\
             second successor 127.0.0.1:5002 (y)\nsuccessors 127.0.0.1:5001, 127.0.0.1:5002, \
             127.0.0.1:5003\npredecessor unknown\nfingers none\nknown peers 1: 127.0.0.1:5001 \
             (alive)\nkeys 42\naddress encoding compact\nhandoff CON to 127.0.0.1:5009 \
             [{id}, {s1}): 1200/5000 entries, 1.1 MiB in 0.4 s (3400 entries/s, 3.2 MiB/s)\n\
             state member\nuptime 3s\n"
        );
        let r = parse(&text);
        assert_eq!(r.software.as_deref(), Some("dht-store 0.1.0"));
        assert_eq!(r.address, Some(a("127.0.0.1:5000")));
        assert_eq!(r.id, Some(id));
        assert_eq!(r.keys, Some(42));
        assert_eq!(
            r.successors,
            Some(vec![
                a("127.0.0.1:5001"),
                a("127.0.0.1:5002"),
                a("127.0.0.1:5003")
            ])
        );
        let h = r.handoff.unwrap().unwrap();
        assert_eq!(h.kind, "CON");
        assert!(h.sending);
        assert_eq!(h.peer, a("127.0.0.1:5009"));
        assert_eq!(h.arc, Some((id, s1)));
        assert_eq!((h.entries, h.total), (Some(1200), Some(5000)));
    }

    #[test]
    fn a_receiving_handoff_before_its_count_has_no_total() {
        let h = handoff(
            "DIS from 127.0.0.1:7 [00, 01): 0/0 entries, 0.0 MiB in 0.1 s (0 entries/s, 0.0 MiB/s)",
        )
        .unwrap();
        assert_eq!(h.kind, "DIS");
        assert!(!h.sending);
        assert_eq!(h.arc, None, "ids that are not 40 hex digits are not an arc");
        assert_eq!((h.entries, h.total), (Some(0), None));
        assert_eq!(handoff("none"), None);
    }

    #[test]
    fn refnode_inf_gives_keys_and_two_successors_and_no_handoff() {
        let r = parse(
            "address 127.0.0.1:6000\nid 00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff\nsuccessor \
             ('127.0.0.1', 6001)\nsecond successor ('127.0.0.1', 6002)\npredecessor None\n\
             fingers [('127.0.0.1', 6001)]\nkeys 7\n",
        );
        assert_eq!(r.software, None);
        assert_eq!(r.address, Some(a("127.0.0.1:6000")));
        assert_eq!(r.keys, Some(7));
        assert_eq!(
            r.successors,
            Some(vec![a("127.0.0.1:6001"), a("127.0.0.1:6002")])
        );
        assert_eq!(r.handoff, None, "not reported: unknown, not none");
    }

    #[test]
    fn foreign_or_odd_text_leaves_fields_unknown_and_never_fails() {
        for text in [
            "",
            "\n\n",
            "hello from a peer\nkeyspace 12\nidentity 42\n",
            "keys: lots\nid: not-hex\nsuccessor: none\nhandoff: CON maybe\n",
            "keys 12abc\nsuccessors 1.2.3.4:5, nonsense\n",
            "\u{fffd}\u{fffd} keys 3 ☃\nsuccessor 999.1.1.1:5\naddress 1.2.3.4:99999\n",
            "keys 18446744073709551616\n",
        ] {
            let r = parse(text);
            assert_eq!(r.keys, None, "{text:?}");
            assert_eq!(r.id, None, "{text:?}");
            assert_eq!(r.successors, None, "{text:?}");
            assert_eq!(r.address, None, "{text:?}");
            assert!(r.handoff.as_ref().is_none_or(|h| h.is_none()), "{text:?}");
        }
        // Other common forms are recognised.
        let r = parse("Keys: 12\nSuccessor = 10.0.0.1:80\nhandoff: none\n");
        assert_eq!(r.keys, Some(12));
        assert_eq!(r.successors, Some(vec![a("10.0.0.1:80")]));
        assert_eq!(r.handoff, Some(None));
    }
}
