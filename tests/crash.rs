//! Crash points of CON and DIS, with real processes: one side is stopped dead at a step of the
//! exchange (`DHT_STORE_FAULT=<step>` makes it log `fault point <step> reached` and freeze
//! there), SIGKILLed, and restarted. Afterwards no acknowledged entry is lost, every key is at
//! its owner as computed here from the node ids, and no copy is left on another node.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{loopback_addrs, owner_of, TestNode};
use dht_store::client::Router;
use dht_store::protocol::{AddressEncoding, HashKey, PeerAddr};

const KEYS: usize = 400;

/// Value size for the steps inside a keys-first batch: a receiver writes its keys first only for
/// values of 1 KiB and more on average (`storage::BatchWrite::KeysFirst`).
const KEYS_FIRST_VALUE: usize = 2048;

/// Writes KEYS keys through `entry`; values of `size` bytes, or short ones for `None`. Some are
/// 13 KiB, stored in pieces (one in ten, or one in forty among short ones, so that the mean
/// stays under 1 KiB and the receiver's path for small values is the one taken). Among short
/// ones, one in a hundred is over 1 MiB, which a receiver writes in several sled batches
/// (`storage::Storage::write_staged`; a batch holding one is written entry by entry, as a
/// batch of short values is).
async fn preload(entry: PeerAddr, size: Option<usize>) -> HashMap<HashKey, Vec<u8>> {
    let mut r = Router::new(entry, AddressEncoding::Compact);
    let mut acked = HashMap::new();
    for i in 0..KEYS {
        let k = HashKey::of(format!("crash-{i}").as_bytes());
        let mut v = format!("value {i}").into_bytes();
        let large = match size {
            Some(_) => i % 10 == 3,
            None => i % 40 == 7,
        };
        if size.is_none() && i % 100 == 51 {
            v.resize((1 << 20) + 3, b'A' + (i % 26) as u8);
        } else if large {
            v.resize(13 << 10, b'a' + (i % 26) as u8);
        } else if let Some(size) = size {
            v.resize(size, b'a' + (i % 26) as u8);
        }
        assert!(r.put(&k, &v).await.unwrap(), "preload {i}");
        acked.insert(k, v);
    }
    acked
}

/// One look at the ring: `Err` says what is not (yet) right.
async fn placement(nodes: &[&TestNode], acked: &HashMap<HashKey, Vec<u8>>) -> Result<(), String> {
    let addrs: Vec<PeerAddr> = nodes.iter().map(|n| n.addr).collect();
    common::placement(&addrs, acked, true).await
}

/// Waits (restarted nodes may still be joining again or repairing) until the placement is
/// right; fails with the last thing seen wrong.
async fn settles(nodes: &[&TestNode], acked: &HashMap<HashKey, Vec<u8>>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match placement(nodes, acked).await {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => {
                let logs: Vec<String> = nodes.iter().map(|n| n.log_text()).collect();
                panic!(
                    "the ring did not settle: {e}\n--- logs ---\n{}",
                    logs.join("\n---\n")
                );
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Runs `dht-store leave` for `node` on a thread of its own (it returns once the leave is
/// done or failed; the caller meanwhile kills a side).
fn spawn_leave(node: &TestNode) -> std::thread::JoinHandle<std::process::Output> {
    let data = node.data.clone();
    std::thread::spawn(move || {
        std::process::Command::new(common::BIN)
            .args(["leave", "--data"])
            .arg(&data)
            .output()
            .unwrap()
    })
}

/// Two loopback addresses whose ring splits the KEYS keys no worse than 1:3, so that every step
/// of a handoff is reached (a keys-first batch needs 32 entries; ids fall where they may).
fn two_addrs() -> Vec<PeerAddr> {
    loop {
        let addrs = loopback_addrs(2);
        let first = (0..KEYS)
            .filter(|i| owner_of(&addrs, &HashKey::of(format!("crash-{i}").as_bytes())) == addrs[0])
            .count();
        if (KEYS / 4..=KEYS * 3 / 4).contains(&first) {
            return addrs;
        }
    }
}

/// Removes (REM through `via`) 20 acknowledged keys that `owner` owns in the ring of `addrs`,
/// and forgets them.
async fn remove_some(
    acked: &mut HashMap<HashKey, Vec<u8>>,
    addrs: &[PeerAddr],
    owner: PeerAddr,
    via: PeerAddr,
) {
    let mut r = Router::new(via, AddressEncoding::Compact);
    let gone: Vec<HashKey> = acked
        .keys()
        .filter(|k| owner_of(addrs, k) == owner)
        .take(20)
        .copied()
        .collect();
    assert_eq!(gone.len(), 20, "{owner} owns at least 20 keys");
    for k in &gone {
        assert!(r.remove(k).await.unwrap(), "REM {k}");
        acked.remove(k);
    }
}

fn fault(step: &str) -> Vec<(String, String)> {
    vec![("DHT_STORE_FAULT".into(), step.into())]
}

/// The value size a step needs to be reached.
fn value_size(step: &str) -> Option<usize> {
    step.starts_with("keys-first:").then_some(KEYS_FIRST_VALUE)
}

/// A ring of one (P) holding KEYS keys; J joins through it. `kill_server`: the fault and the
/// kill are on P (serving the CON), else on J (joining).
async fn con_crash(step: &str, kill_server: bool) {
    let root = tempfile::tempdir().unwrap();
    let addrs = two_addrs();
    let mut p = TestNode::new(&root.path().join("p"), addrs[0], &[]);
    if kill_server {
        p.env = fault(step);
    }
    p.restart().await;
    let mut acked = preload(p.addr, value_size(step)).await;
    let via = p.addr.to_string();
    let mut j = TestNode::new(&root.path().join("j"), addrs[1], &["--join", &via]);
    if !kill_server {
        j.env = fault(step);
    }
    j.launch();
    let victim = if kill_server { &mut p } else { &mut j };
    victim
        .wait_log(
            &format!("fault point {step} reached"),
            Duration::from_secs(30),
        )
        .await;
    if value_size(step).is_some() {
        // The worst case: sled's own flush (every 500 ms) has written the first pass.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    victim.stop(libc::SIGKILL);
    victim.env.clear();
    if value_size(step).is_some() {
        // P still owns everything: remove some keys of J's arc while J is down. J held them
        // as keys with empty values (the first pass of its batch); if any survived J's
        // restart, J would own them again after it joins, and P no longer sends them.
        remove_some(&mut acked, &addrs, addrs[1], addrs[0]).await;
    }
    if kill_server {
        p.restart().await;
        j.wait_ready().await;
    } else {
        j.restart().await;
    }
    settles(&[&p, &j], &acked).await;
}

/// A ring of two (P and L) holding KEYS keys; L leaves. `kill_leaver`: the fault and the kill
/// are on L, else on P (receiving the DIS). The leave must not report success.
async fn dis_crash(step: &str, kill_leaver: bool) {
    let root = tempfile::tempdir().unwrap();
    let addrs = two_addrs();
    // A receiver that holds copies of the leaver's range writes in place; keys first is the
    // path of one that holds nothing of it: one copy.
    let args: &[&str] = if step.starts_with("keys-first:") {
        &["--replicas", "0"]
    } else {
        &[]
    };
    let mut p = TestNode::new(&root.path().join("p"), addrs[0], args);
    if !kill_leaver {
        p.env = fault(step);
    }
    p.restart().await;
    let via = p.addr.to_string();
    let l_args = [args, &["--join", &via]].concat();
    let mut l = TestNode::new(&root.path().join("l"), addrs[1], &l_args);
    if kill_leaver {
        l.env = fault(step);
    }
    l.restart().await;
    let mut acked = preload(p.addr, value_size(step)).await;
    let leave = spawn_leave(&l);
    let victim = if kill_leaver { &mut l } else { &mut p };
    victim
        .wait_log(
            &format!("fault point {step} reached"),
            Duration::from_secs(30),
        )
        .await;
    if value_size(step).is_some() {
        // The worst case: sled's own flush (every 500 ms) has written the first pass.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    victim.stop(libc::SIGKILL);
    victim.env.clear();
    let out = leave.join().unwrap();
    if step == "dis-leave:after-switch" {
        // P's T arrived and the switch is durable: the leave has happened, and says so; the
        // crash only interrupts emptying the directory, which the restart finishes.
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        assert_ne!(
            out.status.code(),
            Some(0),
            "a leave cut short by a crash must not report success: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(!out.stderr.is_empty(), "the failed leave says why");
    }
    if value_size(step).is_some() {
        // L stays: remove some of its keys while P is down. P held them as keys with empty
        // values (the first pass of its batch); if any survived P's restart, the repair pass
        // would INS them back to L, which lacks them now.
        remove_some(&mut acked, &addrs, addrs[1], addrs[1]).await;
    }
    victim.restart().await;
    settles(&[&p, &l], &acked).await;
}

macro_rules! crash_tests {
    ($($name:ident: $f:ident($step:expr, $side:expr);)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $f($step, $side).await;
            }
        )*
    };
}

crash_tests! {
    con_server_killed_before_the_count: con_crash("con-serve:before-count", true);
    con_server_killed_mid_stream: con_crash("con-serve:mid-stream", true);
    con_server_killed_after_the_last_entry: con_crash("con-serve:after-last-entry", true);
    con_server_killed_after_t_before_switch: con_crash("con-serve:after-ack", true);
    con_server_killed_after_switch_before_delete: con_crash("con-serve:after-switch", true);
    con_joiner_killed_before_the_count: con_crash("con-join:before-count", false);
    con_joiner_killed_mid_stream: con_crash("con-join:mid-stream", false);
    con_joiner_killed_after_persisting_before_t: con_crash("con-join:before-ack", false);
    dis_leaver_killed_before_the_count: dis_crash("dis-leave:before-count", true);
    dis_leaver_killed_mid_stream: dis_crash("dis-leave:mid-stream", true);
    dis_leaver_killed_after_the_last_entry: dis_crash("dis-leave:after-last-entry", true);
    dis_leaver_killed_after_t: dis_crash("dis-leave:after-ack", true);
    dis_leaver_killed_after_switch_before_delete: dis_crash("dis-leave:after-switch", true);
    dis_receiver_killed_mid_stream: dis_crash("dis-recv:mid-stream", false);
    dis_receiver_killed_before_t: dis_crash("dis-recv:before-ack", false);
    // Between the two passes of a keys-first batch, keys hold empty values nobody wrote: both
    // receivers that write that way drop what they received on the restart.
    con_joiner_killed_between_the_passes_of_a_keys_first_batch:
        con_crash("keys-first:between-passes", false);
    dis_receiver_killed_between_the_passes_of_a_keys_first_batch:
        dis_crash("keys-first:between-passes", false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_in_progress_shows_in_inf_and_in_the_log() {
    let root = tempfile::tempdir().unwrap();
    let addrs = two_addrs();
    let mut p = TestNode::new(&root.path().join("p"), addrs[0], &[]);
    p.env = fault("con-serve:mid-stream");
    p.env
        .push(("DHT_STORE_PROGRESS_INTERVAL_SECS".into(), "1".into()));
    p.restart().await;
    preload(p.addr, None).await;
    let via = p.addr.to_string();
    let mut j = TestNode::new(&root.path().join("j"), addrs[1], &["--join", &via]);
    j.launch();
    p.wait_log(
        "fault point con-serve:mid-stream reached",
        Duration::from_secs(30),
    )
    .await;
    let inf = p.client().await.inf().await.unwrap();
    let line = inf
        .lines()
        .find(|l| l.starts_with("handoff "))
        .unwrap_or_default();
    assert!(
        line.contains(&format!("CON to {}", j.addr)) && line.contains(" entries"),
        "{inf}"
    );
    p.wait_log("handoff progress: CON to", Duration::from_secs(5))
        .await;
}

/// The repair pass hands the entries a node holds but does not own to their owners, then
/// deletes its copies. A DIS receiver holds the leaver's entries before it owns them: a pass
/// that runs meanwhile must leave them alone, or they are gone once the receiver takes the
/// range (and the leaver has deleted its own). P pauses 4 s in the middle of the DIS, after a
/// first batch is written, with a repair pass due every second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_pass_during_a_dis_leaves_what_is_being_received_alone() {
    const N: usize = 5000;
    let keys: Vec<HashKey> = (0..N)
        .map(|i| HashKey::of(format!("repair-{i}").as_bytes()))
        .collect();
    // L must own over 2000 keys: the receiver writes batches of 1000, and the pause comes
    // halfway through the stream.
    let addrs = loop {
        let a = loopback_addrs(2);
        if keys.iter().filter(|k| owner_of(&a, k) == a[1]).count() > 2200 {
            break a;
        }
    };
    let root = tempfile::tempdir().unwrap();
    let mut p = TestNode::new(&root.path().join("p"), addrs[0], &[]);
    p.env = fault("dis-recv:mid-stream/4000");
    p.env
        .push(("DHT_STORE_REPAIR_INTERVAL_SECS".into(), "1".into()));
    p.restart().await;
    let via = p.addr.to_string();
    let mut l = TestNode::new(&root.path().join("l"), addrs[1], &["--join", &via]);
    l.restart().await;
    let mut r = Router::new(p.addr, AddressEncoding::Compact);
    let mut acked = HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        let v = format!("repair value {i}").into_bytes();
        assert!(r.put(k, &v).await.unwrap(), "preload {i}");
        acked.insert(*k, v);
    }
    let out = std::process::Command::new(common::BIN)
        .args(["leave", "--data"])
        .arg(&l.data)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        p.log_text()
            .contains("fault point dis-recv:mid-stream reached: pausing"),
        "{}",
        p.log_text()
    );
    settles(&[&p], &acked).await;
}

/// A leaver killed in the middle of its DIS, and down long enough for its predecessor to give
/// it up: the predecessor then owns the leaver's id without holding its entries. The restart
/// must not take that for a completed leave and drop them (an earlier build did: OWN id(L)
/// answered by P was its only evidence); it keeps them, joins again, and every key is at its
/// owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaver_killed_mid_dis_and_given_up_keeps_its_entries() {
    let root = tempfile::tempdir().unwrap();
    let addrs = two_addrs();
    let mut p = TestNode::new(&root.path().join("p"), addrs[0], &[]);
    p.restart().await;
    let via = p.addr.to_string();
    let mut l = TestNode::new(&root.path().join("l"), addrs[1], &["--join", &via]);
    l.env = fault("dis-leave:mid-stream");
    l.restart().await;
    let acked = preload(p.addr, None).await;
    let leave = spawn_leave(&l);
    l.wait_log(
        "fault point dis-leave:mid-stream reached",
        Duration::from_secs(30),
    )
    .await;
    l.stop(libc::SIGKILL);
    l.env.clear();
    let out = leave.join().unwrap();
    assert_ne!(out.status.code(), Some(0), "the leave was cut short");
    // P gives L up: a ring of one, owning L's id, without L's entries.
    p.wait_log("is dead: adopted", Duration::from_secs(30))
        .await;
    l.restart().await;
    settles(&[&p, &l], &acked).await;
    assert!(
        !l.log_text().contains("left the ring"),
        "L dropped its entries as if the leave had completed: {}",
        l.log_text()
    );
}

/// A CON server killed in the middle of the stream and down long enough to be given up: the
/// joiner, trying again, joins through the server's predecessor instead, which took the arc
/// without the server's entries. When the server returns, the joiner is a member (it answers
/// OWN for its id with itself), but it never received them: the server must not drop them as
/// handed (an earlier build did); the repair pass brings them to the joiner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_con_server_killed_and_given_up_while_the_joiner_joins_elsewhere_keeps_its_entries() {
    // Q, P, J in ring order: P owns J's id, and the arc J takes from P holds some keys.
    let (q, p, j) = loop {
        let mut a = loopback_addrs(3);
        a.sort_by_key(dht_store::ring::id_of);
        let (q, p, j) = (a[0], a[1], a[2]);
        let taken = (0..KEYS)
            .map(|i| HashKey::of(format!("crash-{i}").as_bytes()))
            .filter(|k| owner_of(&[q, p], k) == p && owner_of(&[q, p, j], k) == j)
            .count();
        if taken >= KEYS / 8 {
            break (q, p, j);
        }
    };
    let root = tempfile::tempdir().unwrap();
    let q = TestNode::start(&root.path().join("q"), q, &[]).await;
    let via = q.addr.to_string();
    let mut p = TestNode::new(&root.path().join("p"), p, &["--join", &via]);
    p.env = fault("con-serve:mid-stream");
    p.restart().await;
    let acked = preload(q.addr, None).await;
    let mut j = TestNode::new(&root.path().join("j"), j, &["--join", &via]);
    j.launch();
    p.wait_log(
        "fault point con-serve:mid-stream reached",
        Duration::from_secs(30),
    )
    .await;
    p.stop(libc::SIGKILL);
    p.env.clear();
    // Q gives P up and owns the whole circle; J joins through it.
    j.wait_ready().await;
    assert!(
        j.log_text().contains(&format!("joined after {}", q.addr)),
        "{}",
        j.log_text()
    );
    p.restart().await;
    settles(&[&q, &p, &j], &acked).await;
}
