//! A data directory that stops taking writes (a full disk; here `ulimit -f`, which fails writes
//! the same way without needing a small filesystem): the node must answer, not hang.

mod common;

use std::time::Duration;

use common::{TestNode, BIN};
use dht_store::client::Lookup;
use dht_store::protocol::{HashKey, Status};

fn key(name: &str) -> HashKey {
    HashKey::of(name.as_bytes())
}

/// Every request must be answered within this time, whatever the disk does.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

async fn answered<T>(
    what: &str,
    request: impl std::future::Future<Output = Result<T, dht_store::error::Error>>,
) -> T {
    match tokio::time::timeout(ANSWER_WITHIN, request).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => panic!("{what}: no answer within {ANSWER_WITHIN:?}"),
    }
}

/// A node whose writes start failing answers F to writes from then on (before, the next INS
/// after a failed large value waited forever inside sled's flush), keeps serving reads, stops
/// on SIGTERM, and after a restart without the limit has everything it acknowledged.
#[tokio::test]
async fn a_node_that_cannot_write_answers_f_keeps_serving_reads_and_stops() {
    let root = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut node = TestNode::new(&root.path().join("node"), addr, &[]);
    // Small values fit; a 3 MiB value goes to a sled blob file of its own, over the limit.
    node.file_size_limit = Some(2 << 20);
    node.restart().await;
    let mut c = node.client().await;

    assert_eq!(
        answered("INS before", c.ins(&key("before"), b"kept")).await,
        Status::T
    );

    let big = vec![7u8; 3 << 20];
    assert_eq!(
        answered("INS of the large value", c.ins(&key("big"), &big)).await,
        Status::F
    );

    for name in ["after-1", "after-2"] {
        let mut c = node.client().await;
        let st = answered("INS after the failure", c.ins(&key(name), b"small")).await;
        assert_eq!(st, Status::F, "{name}");
        let st = answered("REM after the failure", c.rem(&key("before"))).await;
        assert_eq!(st, Status::F);
    }
    assert!(
        node.log_text().contains("no more writes are accepted"),
        "the log says why: {}",
        node.log_text()
    );
    assert_eq!(
        answered("GET after the failure", c.get(&key("before"))).await,
        Lookup::Found(b"kept".to_vec())
    );

    let status = node.stop(libc::SIGTERM); // panics if it does not stop
    assert!(status.code().is_some(), "ended by a signal: {status}");

    // The limit lifted, the node comes back with what it acknowledged and takes writes again.
    node.file_size_limit = None;
    node.restart().await;
    let mut c = node.client().await;
    assert_eq!(
        c.get(&key("before")).await.unwrap(),
        Lookup::Found(b"kept".to_vec())
    );
    assert_eq!(c.ins(&key("again"), b"yes").await.unwrap(), Status::T);
    assert_eq!(
        c.get(&key("again")).await.unwrap(),
        Lookup::Found(b"yes".to_vec())
    );
    node.stop(libc::SIGTERM);
}

/// A restore into a directory that cannot take the data fails with one message and leaves
/// nothing at the target (before, it waited forever inside sled's flush).
#[tokio::test]
async fn a_restore_that_cannot_write_fails_and_leaves_nothing() {
    let root = tempfile::tempdir().unwrap();
    let mut node = TestNode::start_new(root.path(), &[]).await;
    let mut c = node.client().await;
    for i in 0..4 {
        let v = vec![i as u8; 1 << 20];
        assert_eq!(c.ins(&key(&format!("v{i}")), &v).await.unwrap(), Status::T);
    }
    node.stop(libc::SIGTERM);
    let archive = root.path().join("a.backup");
    let out = std::process::Command::new(BIN)
        .args(["backup", "--data"])
        .arg(&node.data)
        .arg("--out")
        .arg(&archive)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));

    let target = root.path().join("restored");
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["restore", "--from"])
        .arg(&archive)
        .arg("--data")
        .arg(&target);
    common::limit_file_size(&mut cmd, 1 << 20);
    let errors = root.path().join("restore.err");
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&errors).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("restore did not end within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let err = std::fs::read_to_string(&errors).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("cannot write to"), "{err}");
    assert!(!target.exists(), "restore left {} behind", target.display());
    let leftovers: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".restore-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary restore dir left behind");
}
