//! `dht-store ring` against real rings and against scripted peers: the members in ring order
//! with their ids, shares and keys; the JSON and the SVG; a mixed ring with refnode.py (the
//! reference peer of ../shared/conformance) and peers whose INF is foreign text, shown as
//! unknown; silent, dead and looping peers ending the walk with one sentence naming the peer.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::process::{die_with_parent, Reaped};
use common::{dht_store_command, owner_of, settle, start_ring, wait_serving, TestNode};
use dht_store::client::Router;
use dht_store::protocol::{AddressEncoding, HashKey, PeerAddr};
use dht_store::ring::id_of;

fn ring_cmd(peer: PeerAddr, extra: &[&str]) -> Output {
    dht_store_command()
        .arg("ring")
        .args(["--peer", &peer.to_string()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run dht-store ring")
}

/// `ring --json` from `peer`, off the runtime's threads (scripted peers may need them).
async fn ring_json(peer: PeerAddr) -> (Option<i32>, serde_json::Value, String) {
    let out = tokio::task::spawn_blocking(move || ring_cmd(peer, &["--json"]))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("--json printed no JSON ({e}): {stderr}"));
    (out.status.code(), json, stderr)
}

fn addrs_of(json: &serde_json::Value) -> Vec<String> {
    json["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["address"].as_str().expect("address").to_string())
        .collect()
}

/// Puts `n` keys through `entry`; returns how many each owner (computed here) got.
async fn put_keys(entry: PeerAddr, members: &[PeerAddr], n: usize) -> HashMap<PeerAddr, u64> {
    let mut router = Router::new(entry, AddressEncoding::Compact);
    let mut per_owner: HashMap<PeerAddr, u64> = members.iter().map(|a| (*a, 0)).collect();
    for i in 0..n {
        let key = HashKey::of(format!("ring-map-{i}").as_bytes());
        assert!(router.put(&key, b"v").await.expect("put"), "put {i}");
        *per_owner.entry(owner_of(members, &key)).or_default() += 1;
    }
    per_owner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_of_four_is_listed_in_ring_order_with_shares_keys_json_and_svg() {
    let root = tempfile::tempdir().unwrap();
    let nodes = start_ring(root.path(), 4, &[]).await;
    let addrs: Vec<PeerAddr> = nodes.iter().map(|n| n.addr).collect(); // in id order
    let want_keys = put_keys(addrs[1], &addrs, 120).await;
    let logs: Vec<&TestNode> = nodes.iter().collect();

    // Successor lists are rebuilt each maintenance round: wait until every one is full.
    let start = addrs[2];
    settle(
        "full successor lists",
        Duration::from_secs(20),
        &logs,
        || async move {
            let (code, json, stderr) = ring_json(start).await;
            if code != Some(0) {
                return Err(format!("exit {code:?}: {stderr}"));
            }
            for m in json["members"].as_array().unwrap() {
                let list = m["successors"].as_array().map(|l| l.len()).unwrap_or(0);
                if list != 3 {
                    return Err(format!("{}: {list} successors", m["address"]));
                }
            }
            Ok(())
        },
    )
    .await;

    let (code, json, _) = ring_json(start).await;
    assert_eq!(code, Some(0));
    assert_eq!(json["closed"], true);
    assert!(json["problem"].is_null());
    let want: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    assert_eq!(addrs_of(&json), want, "ring order from the lowest id");
    let members = json["members"].as_array().unwrap();
    let mut total_share = 0.0;
    for (i, m) in members.iter().enumerate() {
        let me = addrs[i];
        let next = addrs[(i + 1) % addrs.len()];
        assert_eq!(m["id"], id_of(&me).to_string());
        assert_eq!(m["successor"], next.to_string());
        let share = m["share"].as_f64().unwrap();
        let expect = dht_store::ringmap::fraction(&id_of(&me), &id_of(&next));
        assert!((share - expect).abs() < 1e-12, "{me}: {share} vs {expect}");
        total_share += share;
        assert_eq!(m["keys"].as_u64(), Some(want_keys[&me]), "keys at {me}");
        let list: Vec<&str> = m["successors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        let expect_list: Vec<String> = (1..4).map(|k| addrs[(i + k) % 4].to_string()).collect();
        assert_eq!(list, expect_list, "successor list of {me}");
        assert_eq!(m["handoff"]["running"], false);
        assert!(m["software"].as_str().unwrap().starts_with("dht-store "));
    }
    assert!(
        (total_share - 1.0).abs() < 1e-9,
        "shares sum to {total_share}"
    );

    // The table: every member, in ring order, short ids, the total.
    let out = ring_cmd(addrs[0], &[]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("127.0.0.")).collect();
    assert_eq!(rows.len(), 4, "{text}");
    for (row, a) in rows.iter().zip(&addrs) {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[0], a.to_string(), "{text}");
        assert_eq!(cells[1], &id_of(a).to_string()[..8], "{text}");
        assert_eq!(cells[3], want_keys[a].to_string(), "{text}");
    }
    assert!(text.contains("total: 120 keys, shares 100.00%"), "{text}");
    let full = ring_cmd(addrs[0], &["--full-ids"]);
    assert!(String::from_utf8_lossy(&full.stdout).contains(&id_of(&addrs[3]).to_string()));

    // The SVG: well-formed, one member element per member.
    let svg_path = root.path().join("ring.svg");
    let out = ring_cmd(addrs[3], &["--svg", svg_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let drawn: Vec<&str> = doc
        .descendants()
        .filter(|n| {
            n.attribute("class")
                .is_some_and(|c| c.split(' ').any(|c| c == "member"))
        })
        .filter_map(|n| n.attribute("data-address"))
        .collect();
    let mut drawn_sorted = drawn.clone();
    drawn_sorted.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(drawn_sorted, want_sorted);
    assert!(svg.contains(&format!("{} keys", want_keys[&addrs[0]])));
}

/// The path of the reference peer, if this checkout has ../shared beside it (as CI does).
fn refnode_path() -> Option<std::path::PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/refnode.py");
    p.exists().then_some(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_ring_with_refnode_shows_what_refnode_does_not_report_as_unknown() {
    let Some(refnode) = refnode_path() else {
        eprintln!("SKIPPED: ../shared/conformance/refnode.py not found");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let addrs = common::loopback_addrs(3);
    let a = TestNode::start(&root.path().join("a"), addrs[0], &[]).await;
    let r_addr = addrs[1];
    let mut cmd = Command::new("python3");
    cmd.arg(&refnode)
        .args(["--data", root.path().join("r").to_str().unwrap()])
        .args(["--port", &r_addr.port().to_string()])
        .args(["--host", &r_addr.ip().to_string()])
        .args(["--join", &a.addr.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(root.path().join("r.log")).unwrap());
    die_with_parent(&mut cmd);
    let mut r = Reaped::new("refnode", cmd.spawn().expect("python3 refnode.py"));
    if let Err(e) = wait_serving(&mut r.child, r_addr, Duration::from_secs(20)).await {
        panic!(
            "{e}: {}",
            std::fs::read_to_string(root.path().join("r.log")).unwrap_or_default()
        );
    }
    // A node of ours joins through the reference peer.
    let b = TestNode::start(
        &root.path().join("b"),
        addrs[2],
        &["--join", &r_addr.to_string()],
    )
    .await;
    let members = [a.addr, r_addr, b.addr];
    let want_keys = put_keys(r_addr, &members, 60).await;

    let mut sorted = members.to_vec();
    sorted.sort_by_key(id_of);
    let want: Vec<String> = sorted.iter().map(|a| a.to_string()).collect();
    let a_addr = a.addr;
    settle(
        "the mixed ring closes",
        Duration::from_secs(20),
        &[&a, &b],
        || {
            let want = want.clone();
            async move {
                let (code, json, stderr) = ring_json(a_addr).await;
                if code != Some(0) || addrs_of(&json) != want {
                    return Err(format!("exit {code:?}: {json} {stderr}"));
                }
                Ok(())
            }
        },
    )
    .await;
    let (_, json, _) = ring_json(r_addr).await;
    for m in json["members"].as_array().unwrap() {
        let addr: PeerAddr = m["address"].as_str().unwrap().parse().unwrap();
        assert_eq!(m["keys"].as_u64(), Some(want_keys[&addr]), "keys at {addr}");
        if addr == r_addr {
            assert!(
                m["handoff"].is_null(),
                "refnode does not report handoffs: {m}"
            );
            assert!(m["software"].is_null(), "{m}");
            // refnode reports a successor and a second successor (as Python tuples).
            let next = sorted[(sorted.iter().position(|a| *a == addr).unwrap() + 1) % 3];
            assert_eq!(m["successors"][0], next.to_string(), "{m}");
        } else {
            assert_eq!(m["handoff"]["running"], false, "{m}");
            assert!(m["software"].as_str().unwrap().starts_with("dht-store"));
        }
    }

    let svg_path = root.path().join("mixed.svg");
    let out = ring_cmd(b.addr, &["--svg", svg_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let r_row = text
        .lines()
        .find(|l| l.starts_with(&r_addr.to_string()))
        .unwrap_or_else(|| panic!("no row for refnode: {text}"));
    assert!(r_row.contains("unknown"), "{r_row}");
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
    let foreign: Vec<&str> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("member foreign"))
        .filter_map(|n| n.attribute("data-address"))
        .collect();
    assert_eq!(foreign, vec![r_addr.to_string()]);
}

/// A scripted peer: answers ABD with `next` and INF with `inf`, PUL with `T`, one connection
/// after another on a thread of its own, for as long as the test runs.
fn scripted(listener: TcpListener, next: PeerAddr, inf: Vec<u8>) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let inf = inf.clone();
            std::thread::spawn(move || {
                let mut cmd = [0u8; 3];
                while conn.read_exact(&mut cmd).is_ok() {
                    let reply: Vec<u8> = match &cmd {
                        b"ABD" => {
                            let mut b = next.ip().octets().to_vec();
                            b.extend_from_slice(&next.port().to_be_bytes());
                            b
                        }
                        b"INF" => {
                            let mut b = (inf.len() as u64).to_be_bytes().to_vec();
                            b.extend_from_slice(&inf);
                            b
                        }
                        b"PUL" => b"T".to_vec(),
                        _ => return,
                    };
                    if conn.write_all(&reply).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// `n` listeners on 127.0.0.1 and their addresses, in ring (id) order: a ring of scripted
/// peers must name its successors in that order, or it goes round the circle more than once.
fn listeners(n: usize) -> Vec<(TcpListener, PeerAddr)> {
    let mut ls: Vec<(TcpListener, PeerAddr)> = (0..n)
        .map(|_| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let a = match l.local_addr().unwrap() {
                std::net::SocketAddr::V4(a) => a,
                other => panic!("{other}"),
            };
            (l, a)
        })
        .collect();
    ls.sort_by_key(|(_, a)| id_of(a));
    ls
}

#[tokio::test]
async fn peers_with_foreign_inf_text_are_listed_with_unknowns() {
    let mut ls = listeners(3);
    let (l2, c) = ls.pop().unwrap();
    let (l1, b) = ls.pop().unwrap();
    let (l0, a) = ls.pop().unwrap();
    // Not UTF-8, no recognisable field at all.
    scripted(
        l0,
        b,
        b"\xff\xfe hello \x00 keyspace 12\nid: nope\n".to_vec(),
    );
    // Another implementation's forms: "Keys: 5", a successor.
    scripted(
        l1,
        c,
        format!("node {b}\nKeys: 5\nsuccessor = {c}\n").into_bytes(),
    );
    // Empty.
    scripted(l2, a, Vec::new());
    let (code, json, stderr) = ring_json(b).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(json["closed"], true);
    let want: Vec<String> = [a, b, c].iter().map(|a| a.to_string()).collect();
    assert_eq!(addrs_of(&json), want);
    let total: f64 = json["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["share"].as_f64().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-9);
    for m in json["members"].as_array().unwrap() {
        let addr: PeerAddr = m["address"].as_str().unwrap().parse().unwrap();
        assert!(m["handoff"].is_null(), "{m}");
        assert!(m["software"].is_null(), "{m}");
        if addr == b {
            assert_eq!(m["keys"], 5, "{m}");
            assert_eq!(m["successors"][0], c.to_string(), "{m}");
        } else {
            assert!(m["keys"].is_null(), "{m}");
            assert!(m["successors"].is_null(), "{m}");
        }
    }
    let out = tokio::task::spawn_blocking(move || ring_cmd(a, &[]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(2 members not reporting keys)"), "{text}");
}

#[tokio::test]
async fn a_silent_peer_ends_the_command_within_the_timeout_naming_it() {
    // Accepts connections and never answers.
    let (silent, s) = listeners(1).pop().unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::<TcpStream>::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for c in silent.incoming().flatten() {
            keep.lock().unwrap().push(c);
        }
    });
    let t = Instant::now();
    let out = tokio::task::spawn_blocking(move || ring_cmd(s, &["--timeout", "1"]))
        .await
        .unwrap();
    let took = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        stderr.contains(&format!("{s} does not answer ABD")),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one sentence: {stderr}");

    // The same silent peer as a member named by a scripted one: the walk names both.
    let (l, a) = listeners(1).pop().unwrap();
    scripted(l, s, b"keys 1\n".to_vec());
    let t = Instant::now();
    let out = tokio::task::spawn_blocking(move || ring_cmd(a, &["--timeout", "1"]))
        .await
        .unwrap();
    let took = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        stderr.contains(&format!(
            "{s}, named by {a} as its successor, does not answer"
        )),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("NOT closed"),
        "what was found is still listed"
    );
    drop(held);
}

#[tokio::test]
async fn a_dead_member_a_chain_that_does_not_close_and_too_many_members_are_reported() {
    // A names a port nobody listens on.
    let (l, a) = listeners(1).pop().unwrap();
    let dead = {
        let (gone, addr) = listeners(1).pop().unwrap();
        drop(gone);
        addr
    };
    scripted(l, dead, Vec::new());
    let out = tokio::task::spawn_blocking(move || ring_cmd(a, &[]))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{dead}, named by {a} as its successor")),
        "{stderr}"
    );

    // x -> y -> z -> y: the successors never come back to x.
    let mut ls = listeners(3);
    let (lz, z) = ls.pop().unwrap();
    let (ly, y) = ls.pop().unwrap();
    let (lx, x) = ls.pop().unwrap();
    scripted(lx, y, Vec::new());
    scripted(ly, z, Vec::new());
    scripted(lz, y, Vec::new());
    let (code, json, stderr) = ring_json(x).await;
    assert_eq!(code, Some(2));
    assert_eq!(json["closed"], false);
    assert_eq!(
        addrs_of(&json),
        vec![x.to_string(), y.to_string(), z.to_string()]
    );
    assert!(
        stderr.contains(&format!("never come back to {x}")),
        "{stderr}"
    );

    // A closed ring of three walked with room for two.
    let mut ls = listeners(3);
    let (l2, p2) = ls.pop().unwrap();
    let (l1, p1) = ls.pop().unwrap();
    let (l0, p0) = ls.pop().unwrap();
    scripted(l0, p1, Vec::new());
    scripted(l1, p2, Vec::new());
    scripted(l2, p0, Vec::new());
    let out = tokio::task::spawn_blocking(move || ring_cmd(p0, &["--max-members", "2"]))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!(
        "stopped after 2 members without coming back to {p0}"
    )));
    let out = tokio::task::spawn_blocking(move || ring_cmd(p0, &[]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));

    // Three peers naming their successors against the id order: ABD closes the loop, but the
    // loop goes twice round the circle.
    let mut ls = listeners(3);
    let (l2, p2) = ls.pop().unwrap();
    let (l1, p1) = ls.pop().unwrap();
    let (l0, p0) = ls.pop().unwrap();
    scripted(l0, p2, Vec::new());
    scripted(l2, p1, Vec::new());
    scripted(l1, p0, Vec::new());
    let (code, json, stderr) = ring_json(p0).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(json["closed"], true);
    assert!(stderr.contains("go 2 times round the circle"), "{stderr}");
}
