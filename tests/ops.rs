//! Operating a node: `status` (the admin socket, text and JSON), `--json` of `info`, `owner`
//! and `verify`, and `completions`, against real node processes.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use common::{dht_store_command, settle, Rng, TestNode};
use dht_store::client::Router;
use dht_store::protocol::{AddressEncoding, HashKey, PeerAddr};
use dht_store::ring::{id_of, in_arc};

fn run(args: &[&str]) -> Output {
    dht_store_command().args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `args` must succeed and print one JSON object.
fn json(args: &[&str]) -> Json {
    let out = run(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    assert_eq!(text.trim().lines().count(), 1, "one line: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {text}"))
}

fn status(data: &Path) -> Json {
    json(&["status", "--data", data.to_str().unwrap(), "--json"])
}

async fn put(entry: PeerAddr, key: &HashKey, value: &[u8]) {
    let mut r = Router::new(entry, AddressEncoding::Compact);
    assert!(r.put(key, value).await.unwrap(), "put {key}");
}

#[tokio::test]
async fn status_of_a_node_alone_then_in_a_ring_of_two() {
    let root = tempfile::tempdir().unwrap();
    let a = TestNode::start_new(root.path(), &[]).await;
    for i in 0..7u8 {
        put(a.addr, &HashKey::of(&[i]), &vec![i; 10 + i as usize]).await;
    }
    let s = status(&a.data);
    assert_eq!(s["address"], a.addr.to_string());
    assert_eq!(s["id"], id_of(&a.addr).to_string());
    assert_eq!(s["state"], "member");
    assert_eq!(s["writable"], true);
    assert_eq!(s["keys"], 7);
    assert_eq!(s["value_bytes"], (0..7).map(|i| 10 + i).sum::<u64>());
    assert_eq!(s["count_complete"], true);
    assert_eq!(s["arc"]["share"], 1.0, "a ring of one owns the circle");
    assert_eq!(s["successors"][0]["address"], a.addr.to_string());
    assert!(s["handoff"].is_null() && s["backup"].is_null());
    assert_eq!(
        Path::new(s["data_dir"].as_str().unwrap())
            .canonicalize()
            .unwrap(),
        a.data.canonicalize().unwrap()
    );
    assert!(s["uptime_secs"].as_u64().is_some());

    let out = run(&["status", "--data", a.data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("node {} (member)", a.addr)),
        "{text}"
    );
    assert!(text.contains("\nkeys 7\n"), "{text}");
    assert!(text.contains("100.00% of the circle"), "{text}");
    assert!(text.contains("\nhandoff none\n"), "{text}");

    let b = TestNode::start_new(root.path(), &["--join", &a.addr.to_string()]).await;
    settle(
        "each node the other's successor",
        Duration::from_secs(20),
        &[&a, &b],
        || async {
            let (sa, sb) = (status(&a.data), status(&b.data));
            if sa["successors"][0]["address"] != b.addr.to_string()
                || sb["successors"][0]["address"] != a.addr.to_string()
            {
                return Err(format!(
                    "successors: {} / {}",
                    sa["successors"], sb["successors"]
                ));
            }
            if sb["predecessor"]["address"] != a.addr.to_string() {
                return Err(format!("B's predecessor: {}", sb["predecessor"]));
            }
            Ok(())
        },
    )
    .await;
    let (sa, sb) = (status(&a.data), status(&b.data));
    // The arcs: each from its id to the other's, together the circle.
    assert_eq!(sb["arc"]["start"], id_of(&b.addr).to_string());
    assert_eq!(sb["arc"]["end"], id_of(&a.addr).to_string());
    let shares = sa["arc"]["share"].as_f64().unwrap() + sb["arc"]["share"].as_f64().unwrap();
    assert!((shares - 1.0).abs() < 1e-9, "{shares}");
    // Every key where the ring puts it, counted once.
    let on_b = (0..7u8)
        .filter(|i| common::owner_of(&[a.addr, b.addr], &HashKey::of(&[*i])) == b.addr)
        .count() as u64;
    settle(
        "the handed keys gone from A",
        Duration::from_secs(20),
        &[&a, &b],
        || async {
            let (ka, kb) = (
                status(&a.data)["keys"].clone(),
                status(&b.data)["keys"].clone(),
            );
            if ka == 7 - on_b && kb == on_b {
                Ok(())
            } else {
                Err(format!("keys {ka} on A and {kb} on B, {on_b} owned by B"))
            }
        },
    )
    .await;
    assert!(
        sb["known_peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["address"] == a.addr.to_string()),
        "{}",
        sb["known_peers"]
    );
}

#[test]
fn status_of_a_directory_without_a_node_is_one_sentence_and_exit_2() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("nothing here");
    std::fs::create_dir(&dir).unwrap();
    for args in [vec!["--json"], vec![]] {
        let mut all = vec!["status", "--data", dir.to_str().unwrap()];
        all.extend(args);
        let out = run(&all);
        assert_eq!(out.status.code(), Some(2));
        assert!(out.stdout.is_empty(), "nothing on stdout");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.trim(),
            format!(
                "dht-store: no node is running on {} (no admin socket)",
                dir.display()
            )
        );
    }
}

#[tokio::test]
async fn status_of_a_killed_node_says_nobody_listens() {
    let root = tempfile::tempdir().unwrap();
    let mut a = TestNode::start_new(root.path(), &[]).await;
    a.stop(libc::SIGKILL);
    // SIGKILL leaves the socket file behind: nobody listens on it.
    assert!(a.data.join("admin.sock").exists());
    let out = run(&["status", "--data", a.data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "no node is running on {} (nobody listens on",
            a.data.display()
        )),
        "{err}"
    );
}

/// A joiner's CON, paused halfway at the serving node: its status shows the handoff, with
/// the entries sent so far, and no longer once it ended.
#[tokio::test]
async fn status_shows_a_handoff_while_it_runs() {
    let root = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let a_addr: PeerAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut a = TestNode::new(&root.path().join("a"), a_addr, &[]);
    a.env
        .push(("DHT_STORE_FAULT".into(), "con-serve:mid-stream/4000".into()));
    a.restart().await;
    let b_addr: PeerAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    // 20 keys in the arc B will take, [id(B), id(A)), and 3 that stay.
    let (ia, ib) = (id_of(&a_addr), id_of(&b_addr));
    let mut rng = Rng::new(15);
    let (mut moving, mut staying) = (0, 0);
    while moving < 20 || staying < 3 {
        let k = rng.key();
        if in_arc(&k, &ib, &ia) && moving < 20 {
            moving += 1;
        } else if !in_arc(&k, &ib, &ia) && staying < 3 {
            staying += 1;
        } else {
            continue;
        }
        put(a_addr, &k, b"0123456789").await;
    }
    let mut b = TestNode::new(
        &root.path().join("b"),
        b_addr,
        &["--join", &a_addr.to_string()],
    );
    b.launch();
    let deadline = Instant::now() + Duration::from_secs(20);
    let h = loop {
        let s = status(&a.data);
        if !s["handoff"].is_null() && s["handoff"]["entries"] == 10 {
            break s["handoff"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no handoff seen: {s}\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(h["exchange"], "CON");
    assert_eq!(h["role"], "sending");
    assert_eq!(h["phase"], "streaming");
    assert_eq!(h["peer"], b_addr.to_string());
    assert_eq!(h["arc_start"], ib.to_string());
    assert_eq!(h["arc_end"], ia.to_string());
    assert_eq!(
        h["value_bytes"], 100,
        "10 values of 10 bytes sent at the pause"
    );
    let text = stdout(&run(&["status", "--data", a.data.to_str().unwrap()]));
    assert!(
        text.contains(&format!("handoff CON sending {b_addr} [")),
        "{text}"
    );
    assert!(text.contains("(streaming): 10/"), "{text}");
    b.wait_ready().await;
    settle(
        "the handoff over",
        Duration::from_secs(20),
        &[&a, &b],
        || async {
            let s = status(&a.data);
            if s["handoff"].is_null() && s["keys"] == 3 {
                Ok(())
            } else {
                Err(format!("handoff {} keys {}", s["handoff"], s["keys"]))
            }
        },
    )
    .await;
    assert_eq!(status(&b.data)["keys"], 20);
}

#[tokio::test]
async fn info_owner_and_verify_print_json() {
    let root = tempfile::tempdir().unwrap();
    // One copy: A's backup then holds exactly the keys A owns.
    let a = TestNode::start_new(root.path(), &["--replicas", "0"]).await;
    let b = TestNode::start_new(
        root.path(),
        &["--replicas", "0", "--join", &a.addr.to_string()],
    )
    .await;
    let addrs = [a.addr, b.addr];
    settle(
        "a ring of two",
        Duration::from_secs(20),
        &[&a, &b],
        || async { common::ring_check(&addrs, 8).await },
    )
    .await;
    let values: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| (format!("key{i}"), vec![b'v'; 100 * i + 1]))
        .collect();
    for (k, v) in &values {
        put(a.addr, &HashKey::of(k.as_bytes()), v).await;
    }

    // info: the fields of the INF text, and the text.
    let i = json(&["info", "--json", "--peer", &a.addr.to_string()]);
    assert_eq!(i["peer"], a.addr.to_string());
    assert_eq!(i["dht_store"], true);
    assert_eq!(i["address"], a.addr.to_string());
    assert_eq!(i["id"], id_of(&a.addr).to_string());
    assert_eq!(i["successor"]["address"], b.addr.to_string());
    assert_eq!(i["successor"]["id"], id_of(&b.addr).to_string());
    assert_eq!(i["state"], "member");
    assert_eq!(i["address_encoding"], "compact");
    let on_a = values
        .iter()
        .filter(|(k, _)| common::owner_of(&addrs, &HashKey::of(k.as_bytes())) == a.addr)
        .count();
    assert_eq!(i["keys"], on_a as u64);
    assert!(i["raw"]
        .as_str()
        .unwrap()
        .contains(&format!("address {}\n", a.addr)));

    // owner: from each entry, for a key of each node; the path ends at the owner.
    for (k, _) in &values {
        let key = HashKey::of(k.as_bytes());
        let owner = common::owner_of(&addrs, &key);
        for entry in addrs {
            let o = json(&["owner", k, "--json", "--peer", &entry.to_string()]);
            assert_eq!(o["key"], key.to_string());
            assert_eq!(o["owner"], owner.to_string());
            let path: Vec<&str> = o["path"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap())
                .collect();
            assert_eq!(path[0], entry.to_string());
            assert_eq!(*path.last().unwrap(), owner.to_string());
            assert_eq!(o["hops"], path.len() as u64 - 1);
            // In a ring of two the entry answers for its own keys, and names the owner of the
            // other's in one hop.
            assert_eq!(o["hops"], u64::from(entry != owner), "{o}");
        }
    }

    // verify: a backup of A through the node, checked.
    let archive = root.path().join("a.dhtb");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let out = run(&[
        "backup",
        "--data",
        a.data.to_str().unwrap(),
        "--out",
        archive.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&["verify", archive.to_str().unwrap(), "--json"]);
    assert_eq!(v["checksum_ok"], true);
    assert_eq!(v["node"], a.addr.to_string());
    assert_eq!(v["id"], id_of(&a.addr).to_string());
    assert_eq!(v["successor"], b.addr.to_string());
    assert_eq!(v["entries"], on_a as u64);
    let bytes: usize = values
        .iter()
        .filter(|(k, _)| common::owner_of(&addrs, &HashKey::of(k.as_bytes())) == a.addr)
        .map(|(_, v)| v.len())
        .sum();
    assert_eq!(v["value_bytes"], bytes as u64);
    assert_eq!(v["file_bytes"], std::fs::metadata(&archive).unwrap().len());
    let created = v["created_unix_secs"].as_u64().unwrap();
    assert!(
        created >= before && created <= before + 60,
        "{created} vs {before}"
    );
    let rfc = v["created"].as_str().unwrap();
    assert_eq!(rfc.len(), 20, "{rfc}");
    assert!(rfc.ends_with('Z') && rfc.as_bytes()[10] == b'T', "{rfc}");

    // A damaged archive: exit 2, a sentence, no JSON.
    let mut damaged = std::fs::read(&archive).unwrap();
    let last = damaged.len() - 1;
    damaged[last] ^= 0xff;
    let bad = root.path().join("bad.dhtb");
    std::fs::write(&bad, damaged).unwrap();
    let out = run(&["verify", bad.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
}

#[test]
fn completions_cover_the_subcommands() {
    let out = run(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0));
    let script = stdout(&out);
    assert!(script.contains("complete -F _dht__store"), "{script}");
    for word in [
        "status",
        "completions",
        "owner",
        "verify",
        "--json",
        "--data",
    ] {
        assert!(script.contains(word), "the bash script lacks {word}");
    }
    for shell in ["zsh", "fish"] {
        let out = run(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0));
        assert!(stdout(&out).contains("status"), "{shell}");
    }
    assert_eq!(run(&["completions", "tcsh"]).status.code(), Some(2));
}
