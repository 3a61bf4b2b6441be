//! The ring heals from failures that leave live nodes, with real processes: adjacent nodes
//! dying at once (the successor list), more of them than the list holds (the search through
//! every peer known), and a ring split in two while its halves could not reach each other and
//! joined again (the place check). While any peer it knows answers, no node takes itself for
//! a ring of one, and one that did (everyone else frozen) finds its ring again.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{owner_of, placement, ring_check, settle, start_ring, TestNode};
use dht_store::client::Router;
use dht_store::protocol::{AddressEncoding, HashKey, PeerAddr};

/// Every node of these tests: misplaced entries go to their owners within seconds.
const ENV: &[(&str, &str)] = &[("DHT_STORE_REPAIR_INTERVAL_SECS", "2")];

/// Walks checked per look at the ring.
const WALKS: usize = 48;

async fn put_keys(entry: PeerAddr, tag: &str, n: usize) -> HashMap<HashKey, Vec<u8>> {
    let mut r = Router::new(entry, AddressEncoding::Compact);
    let mut acked = HashMap::new();
    for i in 0..n {
        let k = HashKey::of(format!("{tag}-{i}").as_bytes());
        let v = format!("{tag} value {i}").into_bytes();
        // Right after a death: see `put_retrying`.
        assert!(
            common::put_retrying(&mut r, &k, &v).await,
            "{tag}-{i} not stored in 10 tries"
        );
        acked.insert(k, v);
    }
    acked
}

fn addrs_of(nodes: &[&TestNode]) -> Vec<PeerAddr> {
    nodes.iter().map(|n| n.addr).collect()
}

fn no_false_ring_of_one(nodes: &[&TestNode]) {
    for n in nodes {
        assert!(
            !n.log_text().contains("ring of one"),
            "{} took itself for a ring of one: {}",
            n.addr,
            n.log_text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_then_three_adjacent_nodes_die_at_once_and_the_ring_heals() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_ring(root.path(), 8, ENV).await;
    let all = addrs_of(&nodes.iter().collect::<Vec<_>>());
    let refs: Vec<&TestNode> = nodes.iter().collect();
    settle("a ring of 8", Duration::from_secs(30), &refs, || {
        ring_check(&all, WALKS)
    })
    .await;
    let before = put_keys(all[0], "before", 300).await;

    // INF shows the successor list (four by default) and every peer known, with what was
    // last seen of it (the predecessor is refreshed every third round: waited for).
    let want: Vec<String> = all[1..5].iter().map(|a| a.to_string()).collect();
    settle(
        "INF showing the list and the known peers",
        Duration::from_secs(10),
        &refs,
        || {
            let want = &want;
            let (node, pred) = (&nodes[0], all[7]);
            async move {
                let inf = node.client().await.inf().await.map_err(|e| e.to_string())?;
                let line = |name: &str| {
                    inf.lines()
                        .find_map(|l| l.strip_prefix(name))
                        .unwrap_or_default()
                        .to_string()
                };
                let known = line("known peers ");
                let all_known = want
                    .iter()
                    .chain(std::iter::once(&pred.to_string()))
                    .all(|a| known.contains(&format!("{a} (alive)")));
                if line("successors ") == want.join(", ") && all_known {
                    Ok(())
                } else {
                    Err(inf)
                }
            }
        },
    )
    .await;

    // Two neighbours die at once: their predecessor's first two successors are gone.
    for i in [2, 3] {
        nodes[i].stop(libc::SIGKILL);
    }
    let live: Vec<PeerAddr> = [0, 1, 4, 5, 6, 7].map(|i| all[i]).to_vec();
    let refs: Vec<&TestNode> = [0, 1, 4, 5, 6, 7].map(|i| &nodes[i]).to_vec();
    let took = settle(
        "the ring after two adjacent deaths",
        Duration::from_secs(30),
        &refs,
        || ring_check(&live, WALKS),
    )
    .await;
    println!("two adjacent deaths: the ring settled in {took:?}");
    // What the live nodes held is still theirs (their arcs only grew); what is written now
    // reads back from its owner.
    // `acked` was written while `then` were the nodes: what those still alive owned then.
    fn kept(
        acked: &HashMap<HashKey, Vec<u8>>,
        then: &[PeerAddr],
        live: &[PeerAddr],
    ) -> HashMap<HashKey, Vec<u8>> {
        acked
            .iter()
            .filter(|(k, _)| live.contains(&owner_of(then, k)))
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }
    let after2 = put_keys(live[0], "after-two", 200).await;
    placement(&live, &kept(&before, &all, &live), false)
        .await
        .unwrap();
    placement(&live, &after2, false).await.unwrap();
    let six = live;

    // Then three neighbours at once (5, 6, 7): node 4 knows the one after them (0) only as its
    // fourth successor.
    for i in [5, 6, 7] {
        nodes[i].stop(libc::SIGKILL);
    }
    let live: Vec<PeerAddr> = [0, 1, 4].map(|i| all[i]).to_vec();
    let refs: Vec<&TestNode> = [0, 1, 4].map(|i| &nodes[i]).to_vec();
    let took = settle(
        "the ring after three adjacent deaths",
        Duration::from_secs(30),
        &refs,
        || ring_check(&live, WALKS),
    )
    .await;
    println!("three adjacent deaths: the ring settled in {took:?}");
    let after3 = put_keys(live[1], "after-three", 200).await;
    placement(&live, &kept(&before, &all, &live), false)
        .await
        .unwrap();
    placement(&live, &kept(&after2, &six, &live), false)
        .await
        .unwrap();
    placement(&live, &after3, false).await.unwrap();
    no_false_ring_of_one(&refs);
    // Each death was logged once by each node that saw it, not on every PUL.
    for n in &refs {
        let text = n.log_text();
        for dead in [2, 3, 5, 6, 7] {
            let said: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("does not answer") && l.contains(&all[dead].to_string()))
                .collect();
            assert!(
                said.len() <= 1,
                "{} logged {} times that {} does not answer:\n{}",
                n.addr,
                said.len(),
                all[dead],
                said.join("\n")
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_successor_is_dead_the_next_live_one_is_found_through_known_peers() {
    let root = tempfile::tempdir().unwrap();
    // A list of two: three adjacent deaths leave node 1 with no live successor it lists.
    // One copy: a list of two successors cannot hold the arcs of two replicas' successors.
    let env = [
        ENV,
        &[("DHT_STORE_SUCCESSORS", "2"), ("DHT_STORE_REPLICAS", "0")],
    ]
    .concat();
    let mut nodes = start_ring(root.path(), 6, &env).await;
    let all = addrs_of(&nodes.iter().collect::<Vec<_>>());
    let refs: Vec<&TestNode> = nodes.iter().collect();
    settle("a ring of 6", Duration::from_secs(30), &refs, || {
        ring_check(&all, WALKS)
    })
    .await;
    let before = put_keys(all[0], "before", 200).await;
    for i in [2, 3, 4] {
        nodes[i].stop(libc::SIGKILL);
    }
    let live: Vec<PeerAddr> = [0, 1, 5].map(|i| all[i]).to_vec();
    let refs: Vec<&TestNode> = [0, 1, 5].map(|i| &nodes[i]).to_vec();
    settle(
        "the ring after three adjacent deaths",
        Duration::from_secs(30),
        &refs,
        || ring_check(&live, WALKS),
    )
    .await;
    assert!(
        nodes[1]
            .log_text()
            .contains("found through the peers we have known"),
        "{}",
        nodes[1].log_text()
    );
    no_false_ring_of_one(&refs);
    let kept: HashMap<_, _> = before
        .into_iter()
        .filter(|(k, _)| live.contains(&owner_of(&all, k)))
        .collect();
    placement(&live, &kept, false).await.unwrap();
    let after = put_keys(live[2], "after", 200).await;
    placement(&live, &after, false).await.unwrap();
}

/// A partition, made of pauses: half the ring frozen (SIGSTOP) while the other half heals
/// into a ring of its own and takes writes, then the other way round, then everyone back. Two
/// rings that each think they own the whole circle, with entries the other has never seen,
/// must become one again, and every entry must reach its owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_split_in_two_becomes_one_again_with_every_entry_at_its_owner() {
    let root = tempfile::tempdir().unwrap();
    let nodes = start_ring(root.path(), 8, ENV).await;
    let all = addrs_of(&nodes.iter().collect::<Vec<_>>());
    let refs: Vec<&TestNode> = nodes.iter().collect();
    settle("a ring of 8", Duration::from_secs(30), &refs, || {
        ring_check(&all, WALKS)
    })
    .await;
    let mut acked = put_keys(all[0], "whole", 300).await;

    // The halves interleave round the ring, two by two.
    let (one, two) = ([0, 3, 4, 7], [1, 2, 5, 6]);
    let half = |ix: [usize; 4]| -> (Vec<PeerAddr>, Vec<&TestNode>) {
        (ix.map(|i| all[i]).to_vec(), ix.map(|i| &nodes[i]).to_vec())
    };
    let (one_addrs, one_nodes) = half(one);
    let (two_addrs, two_nodes) = half(two);

    for n in &two_nodes {
        n.pause();
    }
    let took = settle(
        "half one as a ring of its own",
        Duration::from_secs(60),
        &one_nodes,
        || ring_check(&one_addrs, WALKS),
    )
    .await;
    println!("half one formed a ring of 4 in {took:?}");
    let during_one = put_keys(one_addrs[0], "one", 200).await;
    placement(&one_addrs, &during_one, false).await.unwrap();

    for n in &one_nodes {
        n.pause();
    }
    for n in &two_nodes {
        n.resume();
    }
    let took = settle(
        "half two as a ring of its own",
        Duration::from_secs(60),
        &two_nodes,
        || ring_check(&two_addrs, WALKS),
    )
    .await;
    println!("half two formed a ring of 4 in {took:?}");
    let during_two = put_keys(two_addrs[0], "two", 200).await;
    placement(&two_addrs, &during_two, false).await.unwrap();

    // Both halves run again, each a ring that owns the whole circle.
    for n in &one_nodes {
        n.resume();
    }
    let took = settle(
        "one ring of 8 again",
        Duration::from_secs(120),
        &refs,
        || ring_check(&all, WALKS),
    )
    .await;
    println!("the two rings became one in {took:?}");
    acked.extend(during_one);
    acked.extend(during_two);
    // Every entry at its owner, and no copy left anywhere else.
    let took = settle(
        "every entry at its owner",
        Duration::from_secs(60),
        &refs,
        || placement(&all, &acked, true),
    )
    .await;
    println!("every entry was at its owner {took:?} later");
    no_false_ring_of_one(&refs);
}

/// Every other node of a ring of 4 frozen (SIGSTOP) until node 0 takes itself for a ring of
/// one (nobody it knows answers), then all back. Node 0 must find its place again (the ring
/// still names it), and no other node may take node 0's claim to the whole circle for the ring
/// having moved on: none joins again through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_alone_after_everyone_else_froze_finds_its_ring_and_pulls_nobody_in() {
    let root = tempfile::tempdir().unwrap();
    let nodes = start_ring(root.path(), 4, ENV).await;
    let all = addrs_of(&nodes.iter().collect::<Vec<_>>());
    let refs: Vec<&TestNode> = nodes.iter().collect();
    settle("a ring of 4", Duration::from_secs(30), &refs, || {
        ring_check(&all, WALKS)
    })
    .await;
    let acked = put_keys(all[0], "before", 200).await;
    for n in &nodes[1..] {
        n.pause();
    }
    nodes[0]
        .wait_log("is a ring of one", Duration::from_secs(60))
        .await;
    for n in &nodes[1..] {
        n.resume();
    }
    let took = settle(
        "the ring of 4 again",
        Duration::from_secs(60),
        &refs,
        || ring_check(&all, WALKS),
    )
    .await;
    println!("the ring was whole {took:?} after the others came back");
    assert!(
        nodes[0].log_text().contains("a ring of one no longer"),
        "{}",
        nodes[0].log_text()
    );
    for n in &nodes[1..] {
        assert!(
            !n.log_text().contains("the ring moved on without us"),
            "{} joined again through a ring of one: {}",
            n.addr,
            n.log_text()
        );
    }
    settle(
        "every entry at its owner",
        Duration::from_secs(30),
        &refs,
        || placement(&all, &acked, true),
    )
    .await;
}

/// A node that left the ring and is started again on its (emptied) directory without --join
/// is a new ring of one: it forgot the peers of the ring it left, and they neither join it nor
/// let it join them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_left_and_starts_again_alone_is_a_new_ring_of_one() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_ring(root.path(), 3, ENV).await;
    let all = addrs_of(&nodes.iter().collect::<Vec<_>>());
    let refs: Vec<&TestNode> = nodes.iter().collect();
    settle("a ring of 3", Duration::from_secs(30), &refs, || {
        ring_check(&all, WALKS)
    })
    .await;
    let (code, said) = nodes[1].leave();
    assert_eq!(code, Some(0), "{said}");
    nodes[1].stop(libc::SIGTERM);
    nodes[1].args.clear(); // no --join
    nodes[1].restart().await;
    let rest = [all[0], all[2]];
    // Several place checks and successor searches later, still two rings.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let refs: Vec<&TestNode> = [0, 2].map(|i| &nodes[i]).to_vec();
    if let Err(e) = ring_check(&rest, WALKS).await {
        let logs: Vec<String> = nodes
            .iter()
            .map(|n| format!("== {}\n{}", n.addr, n.log_text()))
            .collect();
        panic!("{e}\n{}", logs.join("\n"));
    }
    let inf = nodes[1].client().await.inf().await.unwrap();
    assert!(inf.contains(&format!("successor {} (", all[1])), "{inf}");
    assert!(inf.contains("known peers none"), "{inf}");
    for n in &refs {
        assert!(
            !n.log_text().contains("the ring moved on without us"),
            "{}",
            n.log_text()
        );
    }
}
