//! Restarts of real node processes: SIGKILL, SIGTERM, and a second process on a used data dir.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{TestNode, BIN};
use dht_store::client::Lookup;
use dht_store::protocol::{HashKey, Status};

fn key(name: &str) -> HashKey {
    HashKey::of(name.as_bytes())
}

async fn write_keys(node: &TestNode, prefix: &str, n: usize) {
    let mut c = node.client().await;
    for i in 0..n {
        let st = c
            .ins(
                &key(&format!("{prefix}{i}")),
                format!("value {i}").as_bytes(),
            )
            .await
            .unwrap();
        assert_eq!(st, Status::T, "INS {prefix}{i}");
    }
}

async fn check_keys(node: &TestNode, prefix: &str, n: usize) {
    let mut c = node.client().await;
    for i in 0..n {
        assert_eq!(
            c.get(&key(&format!("{prefix}{i}"))).await.unwrap(),
            Lookup::Found(format!("value {i}").into_bytes()),
            "{prefix}{i} after restart"
        );
    }
}

#[tokio::test]
async fn acknowledged_values_survive_sigkill() {
    let root = tempfile::tempdir().unwrap();
    let mut node = TestNode::start_new(root.path(), &[]).await;
    // Many concurrent writers, so that acknowledgements come from shared group flushes.
    let mut tasks = Vec::new();
    for t in 0..8 {
        let addr = node.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = dht_store::client::Client::connect(addr, Default::default())
                .await
                .unwrap();
            for i in 0..100 {
                let st = c
                    .ins(&key(&format!("k{t}-{i}")), format!("value {i}").as_bytes())
                    .await
                    .unwrap();
                assert_eq!(st, Status::T);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The kill comes right after the last acknowledgement: nothing had time to flush lazily.
    node.stop(libc::SIGKILL);
    node.restart().await;
    for t in 0..8 {
        check_keys(&node, &format!("k{t}-"), 100).await;
    }
    // Removals are durable too.
    let mut c = node.client().await;
    assert_eq!(c.rem(&key("k0-0")).await.unwrap(), Status::T);
    node.stop(libc::SIGKILL);
    node.restart().await;
    let mut c = node.client().await;
    assert_eq!(c.exi(&key("k0-0")).await.unwrap(), Status::F);
    assert_eq!(c.exi(&key("k0-1")).await.unwrap(), Status::T);
}

/// A value for `large_values_survive_sigkill_amid_overwrites`: its version, then a fill byte,
/// at a length that follows from the version (from 1 KiB, stored whole, to 300 KiB, stored in
/// fifty pieces), so that a value read back can be checked on its own.
fn versioned(version: u32) -> Vec<u8> {
    // The versions of one key (every KEYS-th) go through these lengths backwards: a whole
    // value, several batches (`write_staged`), several with fewer pieces, one batch, one
    // batch, several, and back to whole.
    let len = [
        3 << 20,
        300 << 10,
        20 << 10,
        (3 << 19) + 1,
        2 << 20,
        1 << 10,
    ][version as usize % 6];
    let mut v = vec![version as u8 ^ 0x5A; len];
    v[..4].copy_from_slice(&version.to_be_bytes());
    v
}

/// The version of a value made by `versioned`, if it is whole.
fn version_of(v: &[u8]) -> Option<u32> {
    let version = u32::from_be_bytes(v.get(..4)?.try_into().ok()?);
    (versioned(version) == v).then_some(version)
}

/// Large values are stored in pieces, each write of them one sled batch. A SIGKILL while
/// writers replace them (whole values by pieces, pieces by fewer pieces, and back) must leave
/// every key with a whole value: the last one acknowledged, or the one in flight.
#[tokio::test]
async fn large_values_survive_sigkill_amid_overwrites() {
    const WRITERS: usize = 4;
    const KEYS: usize = 5;
    let root = tempfile::tempdir().unwrap();
    let mut node = TestNode::start_new(root.path(), &[]).await;
    let acked: std::sync::Arc<Vec<std::sync::atomic::AtomicU32>> = std::sync::Arc::new(
        (0..WRITERS * KEYS)
            .map(|_| std::sync::atomic::AtomicU32::new(u32::MAX))
            .collect(),
    );
    let mut tasks = Vec::new();
    for t in 0..WRITERS {
        let (addr, acked) = (node.addr, acked.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut c) = dht_store::client::Client::connect(addr, Default::default()).await
            else {
                return;
            };
            // Each key has one writer, so its versions are acknowledged in order.
            for version in 0u32.. {
                let slot = t * KEYS + version as usize % KEYS;
                let k = key(&format!("large-{slot}"));
                match c.ins(&k, &versioned(version)).await {
                    Ok(Status::T) => {
                        acked[slot].store(version, std::sync::atomic::Ordering::SeqCst)
                    }
                    Ok(st) => panic!("INS answered {st:?}"),
                    Err(_) => return, // the node was killed
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.stop(libc::SIGKILL);
    for t in tasks {
        t.await.unwrap();
    }
    node.restart().await;
    let mut c = node.client().await;
    let mut checked = 0;
    for slot in 0..WRITERS * KEYS {
        let last = acked[slot].load(std::sync::atomic::Ordering::SeqCst);
        if last == u32::MAX {
            continue;
        }
        let got = match c.get(&key(&format!("large-{slot}"))).await.unwrap() {
            Lookup::Found(v) => v,
            other => panic!("large-{slot}: acknowledged version {last}, found {other:?}"),
        };
        let version = version_of(&got)
            .unwrap_or_else(|| panic!("large-{slot}: {} bytes that are no whole value", got.len()));
        // The acknowledged version, or the next one of the same key, in flight at the kill.
        assert!(
            version == last || version == last + KEYS as u32,
            "large-{slot}: version {version} after acknowledged {last}"
        );
        checked += 1;
    }
    assert!(
        checked >= WRITERS,
        "only {checked} keys were acknowledged before the kill"
    );
}

/// A value over 768 KiB is written in several sled batches into the slot its key's piece 0
/// does not name, and piece 0, written last, commits it. The node pauses 3 s at a step of such
/// a write (`DHT_STORE_FAULT=<step>/3000`), long enough for sled's own background flush (every
/// 500 ms) to put on disk what the write did so far, and is SIGKILLed there: before the commit
/// it must come back with the old value, after it with the new one, whole either way.
#[tokio::test]
async fn a_large_value_written_in_batches_is_all_or_nothing_at_a_kill() {
    for (step, new_expected) in [
        ("staged:before-commit", false),
        ("staged:after-commit", true),
    ] {
        let root = tempfile::tempdir().unwrap();
        let mut node = TestNode::start_new(root.path(), &[]).await;
        node.stop(libc::SIGTERM);
        node.env = vec![("DHT_STORE_FAULT".into(), format!("{step}/3000"))];
        node.restart().await;
        let k = key("staged");
        let old = versioned_len(1, 2 << 20);
        let new = versioned_len(2, (3 << 20) + 5);
        let mut c = node.client().await;
        // The first write pauses at the step too, then completes.
        assert_eq!(c.ins(&k, &old).await.unwrap(), Status::T);
        let (addr, value) = (node.addr, new.clone());
        let writer = tokio::spawn(async move {
            let mut c = dht_store::client::Client::connect(addr, Default::default())
                .await
                .unwrap();
            let _ = c.ins(&k, &value).await; // cut off by the kill
        });
        let reached = format!("fault point {step} reached");
        let deadline = Instant::now() + Duration::from_secs(20);
        while node.log_text().matches(&reached).count() < 2 {
            assert!(Instant::now() < deadline, "{}", node.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // sled's background flush writes out what the paused write did so far.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        node.stop(libc::SIGKILL);
        writer.await.unwrap();
        node.env.clear();
        node.restart().await;
        let mut c = node.client().await;
        let got = match c.get(&k).await.unwrap() {
            Lookup::Found(v) => v,
            other => panic!("{step}: found {other:?}"),
        };
        let want = if new_expected { &new } else { &old };
        assert!(
            got == *want,
            "{step}: {} bytes, version {:?}; wanted version {}",
            got.len(),
            got.get(..4),
            if new_expected { 2 } else { 1 }
        );
        // What the cut-off write left (pieces in the other slot) does not spoil the next one.
        let last = versioned_len(3, (1 << 20) + 3);
        assert_eq!(c.ins(&k, &last).await.unwrap(), Status::T);
        assert_eq!(c.get(&k).await.unwrap(), Lookup::Found(last));
    }
}

/// A value of `len` bytes that starts with `version`.
fn versioned_len(version: u32, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len).map(|i| (i % 251) as u8 ^ version as u8).collect();
    v[..4].copy_from_slice(&version.to_be_bytes());
    v
}

#[tokio::test]
async fn values_survive_sigterm_and_the_node_exits_0() {
    let root = tempfile::tempdir().unwrap();
    let mut node = TestNode::start_new(root.path(), &[]).await;
    write_keys(&node, "t", 200).await;
    let status = node.stop(libc::SIGTERM);
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(
        node.log_text().contains("SIGTERM received"),
        "{}",
        node.log_text()
    );
    node.restart().await;
    check_keys(&node, "t", 200).await;
    assert!(
        node.log_text().contains("resuming ring state"),
        "{}",
        node.log_text()
    );
    let status = node.stop(libc::SIGINT);
    assert!(status.success(), "exit status after SIGINT: {status}");
}

#[tokio::test]
async fn sigterm_lets_a_request_in_flight_finish() {
    let root = tempfile::tempdir().unwrap();
    let mut node = TestNode::start_new(root.path(), &[]).await;
    let mut c = node.client().await;
    // Start an INS, get the go-ahead, then signal before sending the value.
    let conn = c.connection();
    conn.write_raw(b"INS").await.unwrap();
    conn.write_key(&key("in-flight")).await.unwrap();
    conn.flush().await.unwrap();
    assert_eq!(conn.read_status().await.unwrap(), Status::T);
    unsafe {
        libc::kill(node.pid(), libc::SIGTERM);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    conn.write_value(b"finished").await.unwrap();
    conn.flush().await.unwrap();
    assert_eq!(
        conn.read_status().await.unwrap(),
        Status::T,
        "the in-flight INS completes"
    );
    let status = node.stop(libc::SIGTERM);
    assert!(status.success());
    node.restart().await;
    let mut c = node.client().await;
    assert_eq!(
        c.get(&key("in-flight")).await.unwrap(),
        Lookup::Found(b"finished".to_vec())
    );
}

#[tokio::test]
async fn a_second_process_on_a_used_data_dir_fails_at_once_and_harms_nothing() {
    let root = tempfile::tempdir().unwrap();
    let node = TestNode::start_new(root.path(), &[]).await;
    write_keys(&node, "a", 50).await;

    // Same dir, another port: must fail at once with one sentence naming the dir.
    let other_port = common::free_port();
    let started = Instant::now();
    let out = Command::new(BIN)
        .arg("--data")
        .arg(&node.data)
        .args(["--port", &other_port.to_string()])
        .output()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let dir = node.data.display().to_string();
    assert!(
        err.contains(&format!(
            "data directory {dir} is in use by another dht-store process"
        )),
        "stderr: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
    // And the same port too (it must not even try to bind).
    let out = Command::new(BIN)
        .arg("--data")
        .arg(&node.data)
        .args(["--port", &node.addr.port().to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    // The first keeps serving, reads and durable writes alike.
    check_keys(&node, "a", 50).await;
    write_keys(&node, "b", 50).await;
    check_keys(&node, "b", 50).await;
    assert!(node.data.join("LOCK").exists());
}

#[tokio::test]
async fn a_resumed_node_ignores_join_and_says_so() {
    let root = tempfile::tempdir().unwrap();
    let mut node = TestNode::start_new(root.path(), &[]).await;
    write_keys(&node, "r", 10).await;
    node.stop(libc::SIGTERM);
    node.args = vec!["--join".into(), "127.0.0.1:1".into()];
    node.restart().await;
    check_keys(&node, "r", 10).await;
    assert!(
        node.log_text().contains("ignoring --join"),
        "{}",
        node.log_text()
    );
}
