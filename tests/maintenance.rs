//! Ring maintenance with real processes: a dead successor is replaced by the second successor,
//! OWN answers drop the dead peer, and the dead node, restarted, joins again and gets its arc
//! back without losing what it held or what was written meanwhile.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{loopback_addrs, owner_of, walk, TestNode};
use dht_store::client::{Client, Lookup, Router};
use dht_store::protocol::{AddressEncoding, HashKey, PeerAddr};
use dht_store::ring::id_of;

async fn put_all(entry: PeerAddr, tag: &str, n: usize, acked: &mut HashMap<HashKey, Vec<u8>>) {
    let mut r = Router::new(entry, AddressEncoding::Compact);
    for i in 0..n {
        let k = HashKey::of(format!("{tag}-{i}").as_bytes());
        let v = format!("{tag} {i}").into_bytes();
        assert!(r.put(&k, &v).await.unwrap(), "{tag}-{i}");
        acked.insert(k, v);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_successor_is_replaced_and_comes_back_with_its_data() {
    let root = tempfile::tempdir().unwrap();
    let mut addrs = loopback_addrs(4);
    addrs.sort_by_key(id_of);
    let first = addrs[0].to_string();
    let mut nodes = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let join: &[&str] = if i == 0 { &[] } else { &["--join", &first] };
        nodes.push(TestNode::start(&root.path().join(format!("n{i}")), *a, join).await);
    }
    let mut acked = HashMap::new();
    put_all(addrs[0], "before", 400, &mut acked).await;

    // Kill node 2 for good (for now). Its predecessor is node 1, its successor node 3.
    nodes[2].stop(libc::SIGKILL);
    let live = [addrs[0], addrs[1], addrs[3]];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let succ = Client::connect(addrs[1], AddressEncoding::Compact)
            .await
            .unwrap()
            .abd()
            .await
            .unwrap();
        if succ == addrs[3] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 still names {succ} as its successor"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let inf = nodes[1].client().await.inf().await.unwrap();
    assert!(
        inf.contains(&format!("second successor {}", addrs[0])),
        "ABD of the new successor: {inf}"
    );

    // OWN walks from every live node end at the owner among the live nodes, once the nodes
    // have dropped the dead one (a peer that answered within the last 2 s is named unchecked).
    let deadline = Instant::now() + Duration::from_secs(15);
    'walks: loop {
        for i in 0..100 {
            let k = HashKey::of(format!("walk-{i}").as_bytes());
            for start in live {
                match walk(start, &k).await {
                    Ok(end) => assert_eq!(end, owner_of(&live, &k), "walk from {start}"),
                    Err(e) => {
                        assert!(
                            Instant::now() < deadline,
                            "walks still reach a dead peer: {e}"
                        );
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue 'walks;
                    }
                }
            }
        }
        break;
    }
    // Writes to the dead node's arc go to its predecessor meanwhile.
    let mut during = HashMap::new();
    put_all(addrs[0], "during", 300, &mut during).await;

    // The dead node returns: it finds the ring moved on, joins again and takes its arc back,
    // keeping what it held and receiving what was written meanwhile.
    nodes[2].restart().await;
    acked.extend(during);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut wrong = 0;
        for (k, v) in &acked {
            let owner = owner_of(&addrs, k);
            let got = Client::connect(owner, AddressEncoding::Compact)
                .await
                .unwrap()
                .get(k)
                .await
                .unwrap();
            if got != Lookup::Found(v.clone()) {
                wrong += 1;
            }
        }
        if wrong == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{wrong} keys not at their owner after the restart: {}",
            nodes[2].log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        nodes[2].log_text().contains("the ring moved on"),
        "{}",
        nodes[2].log_text()
    );
}
