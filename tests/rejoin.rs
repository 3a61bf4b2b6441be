//! A node given up comes back by comparison (VCC, docs/EXTENSIONS.md `compared-join/1`), with
//! real processes: its crash points. A ring of four with K = 2; R is SIGKILLed and given up,
//! its predecessor P takes its arc, and the arc takes overwrites, removals and new keys; R
//! restarts on its directory and joins again through P by comparing its copy of the arc with
//! P's. One side is stopped dead at a step of that exchange (`DHT_STORE_FAULT`), SIGKILLed and
//! restarted. Afterwards every acknowledged write is served by its owner, no removed key is
//! back, and every key has its K + 1 copies and no more.
//!
//! The catch-up's cost (what a returning node moves against what changed) is measured in
//! `tests/replicas.rs` (`a_replica_that_was_away_...`) and in `cargo bench --bench sync`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{loopback_addrs, owner_of, ring_check, settle, TestNode};
use dht_store::client::Router;
use dht_store::protocol::{AddressEncoding, HashKey, PeerAddr};

const KEYS: usize = 600;

/// K = 2, misplaced entries and copies settled within seconds.
const ENV: &[(&str, &str)] = &[
    ("DHT_STORE_REPLICAS", "2"),
    ("DHT_STORE_REPAIR_INTERVAL_SECS", "2"),
    ("DHT_STORE_SYNC_INTERVAL_SECS", "2"),
];

fn value(tag: &str, i: usize) -> Vec<u8> {
    let mut v = format!("{tag} {i} ").into_bytes();
    // One in twenty in pieces (over 6 KiB), so that a comparison pulls those too.
    let size = if i % 20 == 7 { 13 << 10 } else { 700 };
    v.resize(size, b'a' + (i % 26) as u8);
    v
}

/// Four loopback addresses in ring order whose second node owns at least 60 of the keys (the
/// arc that R gives up and takes back must hold something to compare).
fn four_addrs() -> Vec<PeerAddr> {
    loop {
        let mut addrs = loopback_addrs(4);
        addrs.sort_by_key(dht_store::ring::id_of);
        let r = (0..KEYS)
            .filter(|i| owner_of(&addrs, &key(*i)) == addrs[1])
            .count();
        if r >= KEYS / 10 {
            return addrs;
        }
    }
}

fn key(i: usize) -> HashKey {
    HashKey::of(format!("rejoin-{i}").as_bytes())
}

/// Removes `key` through `r`. Right after a ring change a REM may be answered `F` (a replica
/// late); again then, until `T`, or until the owner answers `F` (absent: the try before
/// removed it there) and a GET agrees.
async fn remove(r: &mut Router, key: &HashKey) {
    for attempt in 0..10 {
        if r.remove(key).await.unwrap() {
            return;
        }
        if attempt > 0 && r.get(key).await.unwrap().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("REM {key} answered F ten times");
}

/// Every acknowledged key served by its owner among `live` (and, `exact`, K + 1 copies of each
/// and nothing else), within 90 s.
async fn settles(what: &str, nodes: &[&TestNode], acked: &HashMap<HashKey, Vec<u8>>) {
    let live: Vec<PeerAddr> = nodes.iter().map(|n| n.addr).collect();
    settle(what, Duration::from_secs(90), nodes, || async {
        ring_check(&live, 16).await?;
        common::placement(&live, acked, true).await
    })
    .await;
}

/// R = nodes[1] comes back after its predecessor P = nodes[0] took its arc; `step` is armed at
/// P (`kill_owner`) or at R, which is SIGKILLed there and restarted.
async fn rejoin_crash(step: &str, kill_owner: bool) {
    let root = common::temp_root("REJOIN_KEEP");
    let addrs = four_addrs();
    let first = addrs[0].to_string();
    let mut nodes = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let join: &[&str] = if i == 0 { &[] } else { &["--join", &first] };
        let mut n = TestNode::new(&root.path().join(format!("n{i}")), *a, join);
        n.env = ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if kill_owner && i == 0 {
            // Reached only by a VCC served, and only R's rejoin is one (the others join empty).
            n.env.push(("DHT_STORE_FAULT".into(), step.into()));
        }
        n.restart().await;
        nodes.push(n);
    }
    let all: Vec<&TestNode> = nodes.iter().collect();
    settle("a ring of 4", Duration::from_secs(30), &all, || {
        ring_check(&addrs, 16)
    })
    .await;
    let mut router = Router::new(addrs[0], AddressEncoding::Compact);
    let mut acked = HashMap::new();
    for i in 0..KEYS {
        let v = value("first", i);
        assert!(router.put(&key(i), &v).await.unwrap(), "preload {i}");
        acked.insert(key(i), v);
    }
    settles("the preload's copies", &all, &acked).await;

    let (p, r) = (addrs[0], addrs[1]);
    nodes[1].stop(libc::SIGKILL);
    let three: Vec<&TestNode> = nodes.iter().filter(|n| n.addr != r).collect();
    let live: Vec<PeerAddr> = three.iter().map(|n| n.addr).collect();
    settle("the ring of 3", Duration::from_secs(30), &three, || {
        ring_check(&live, 16)
    })
    .await;
    // R's arc, now P's, changes: what R holds of it grows stale.
    let mut router = Router::new(p, AddressEncoding::Compact);
    let r_keys: Vec<usize> = (0..KEYS)
        .filter(|i| owner_of(&addrs, &key(*i)) == r)
        .collect();
    for (n, i) in r_keys.iter().enumerate() {
        if n % 3 == 0 {
            remove(&mut router, &key(*i)).await;
            acked.remove(&key(*i));
        } else if n % 3 == 1 {
            let v = value("second", *i);
            assert!(common::put_retrying(&mut router, &key(*i), &v).await);
            acked.insert(key(*i), v);
        }
    }
    let mut added = 0;
    for i in KEYS.. {
        if added == 30 {
            break;
        }
        if owner_of(&addrs, &key(i)) == r {
            let v = value("new", i);
            assert!(common::put_retrying(&mut router, &key(i), &v).await);
            acked.insert(key(i), v);
            added += 1;
        }
    }

    if !kill_owner {
        nodes[1].env.push(("DHT_STORE_FAULT".into(), step.into()));
    }
    nodes[1].restart().await;
    let victim = if kill_owner { 0 } else { 1 };
    nodes[victim]
        .wait_log(
            &format!("fault point {step} reached"),
            Duration::from_secs(30),
        )
        .await;
    assert!(
        nodes[1].log_text().contains("joining again through it"),
        "R did not find its arc taken: {}",
        nodes[1].log_text()
    );
    nodes[victim].stop(libc::SIGKILL);
    nodes[victim].env.retain(|(k, _)| k != "DHT_STORE_FAULT");
    nodes[victim].restart().await;
    let all: Vec<&TestNode> = nodes.iter().collect();
    settles("after the crash and the restart", &all, &acked).await;
    // And the ring takes writes in R's arc again.
    let mut router = Router::new(addrs[2], AddressEncoding::Compact);
    for i in r_keys.iter().take(10) {
        let v = value("third", *i);
        assert!(common::put_retrying(&mut router, &key(*i), &v).await);
        acked.insert(key(*i), v);
    }
    settles("after writes to R's arc", &all, &acked).await;
}

macro_rules! rejoin_tests {
    ($($name:ident: $step:expr, $owner:expr;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                rejoin_crash($step, $owner).await;
            }
        )*
    };
}

rejoin_tests! {
    // R under P's fence, before it compared: P sees the connection close and lifts the fence.
    returning_node_killed_while_comparing_under_the_owners_fence: "con-join:mid-compare", false;
    // R compared and wrote its ring state, its T not sent: P never switched; R's restart asks.
    returning_node_killed_after_comparing_before_its_t: "con-join:before-ack", false;
    // P stopped while R compares against it: R's comparison or its T fails, or its T is read
    // by nobody; P's restart asks R whether it joined.
    owner_killed_while_the_returning_node_compares: "con-serve:mid-compare", true;
}
