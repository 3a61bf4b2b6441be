//! Hostile input against a live node: each case is sent while a well-behaved client keeps
//! working, and the node must answer as PROTOCOL.md says or close that one connection.

mod common;

use std::time::{Duration, Instant};

use common::TestNode;
use dht_store::client::{Client, Lookup};
use dht_store::protocol::{HashKey, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn key(name: &str) -> HashKey {
    HashKey::of(name.as_bytes())
}

/// A well-behaved client doing a full round of requests: the node is still serving.
async fn still_serving(node: &TestNode, tag: &str) {
    let mut c = node.client().await;
    assert_eq!(c.pul().await.unwrap(), Status::T, "{tag}: PUL");
    let k = key(&format!("ok-{tag}"));
    assert_eq!(
        c.ins(&k, tag.as_bytes()).await.unwrap(),
        Status::T,
        "{tag}: INS"
    );
    assert_eq!(
        c.get(&k).await.unwrap(),
        Lookup::Found(tag.as_bytes().to_vec()),
        "{tag}: GET"
    );
}

/// Sends `bytes`, half-closes, and returns what the node sent before closing (it must close:
/// a read of 0 bytes within the timeout).
async fn send_and_expect_close(node: &TestNode, bytes: &[u8], what: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    // The node may close (and reset) before it has read everything: a failed write is fine.
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    let mut got = Vec::new();
    let res = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    match res {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => panic!("{what}: read failed: {e}"),
        Err(_) => panic!("{what}: the node kept the connection open"),
    }
    got
}

fn ins_bytes(k: &HashKey, len: u64, body: &[u8]) -> Vec<u8> {
    let mut b = b"INS".to_vec();
    b.extend_from_slice(k.as_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(body);
    b
}

#[tokio::test]
async fn unknown_commands_and_garbage_close_only_that_connection() {
    let root = tempfile::tempdir().unwrap();
    let node = TestNode::start_new(root.path(), &[]).await;
    // A client that stays connected through all of it.
    let mut steady = node.client().await;
    for (i, junk) in [
        b"XYZ".to_vec(),
        b"ins".to_vec(), // commands are upper case
        b"GETX".to_vec(),
        vec![0u8; 64],
        (0..=255u8).cycle().take(10_000).collect(),
        b"PULPULXYZPUL".to_vec(),
    ]
    .iter()
    .enumerate()
    {
        let got = send_and_expect_close(&node, junk, &format!("junk {i}")).await;
        // Whatever valid requests preceded the junk were answered, nothing after.
        let expect: &[u8] = if junk.starts_with(b"PULPUL") {
            b"TT"
        } else {
            b""
        };
        assert_eq!(got, expect, "junk {i}");
        assert_eq!(
            steady.pul().await.unwrap(),
            Status::T,
            "steady client after junk {i}"
        );
        still_serving(&node, &format!("junk{i}")).await;
    }
    assert!(
        node.log_text().contains("unknown command"),
        "the node logs why"
    );
}

#[tokio::test]
async fn messages_cut_at_every_field_boundary_are_dropped_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let node = TestNode::start_new(root.path(), &[]).await;
    let k = key("cut");
    let addr = [127u8, 0, 0, 1, 0x13, 0x88];
    // Every request with its fields; cuts at every boundary (and inside fields).
    let mut whole: Vec<(Vec<u8>, Vec<usize>)> = Vec::new();
    for cmd in [b"GET", b"EXI", b"REM", b"OWN"] {
        let mut m = cmd.to_vec();
        m.extend_from_slice(k.as_bytes());
        whole.push((m, vec![1, 2, 3, 4, 13, 22]));
    }
    for cmd in [b"CON", b"DIS"] {
        let mut m = cmd.to_vec();
        m.extend_from_slice(&addr);
        whole.push((m, vec![1, 3, 5, 7, 8]));
    }
    // INS: command | key | (node answers T) | valSize | value bytes.
    let m = ins_bytes(&k, 10, b"0123456789");
    whole.push((m, vec![1, 3, 10, 23, 27, 31, 32, 35, 40]));
    for (msg, cuts) in &whole {
        for &cut in cuts {
            let got =
                send_and_expect_close(&node, &msg[..cut], &format!("{:?} cut at {cut}", &msg[..3]))
                    .await;
            // Only INS answers before its message is complete: T once its key has arrived.
            let expect: &[u8] = if msg.starts_with(b"INS") && cut >= 23 {
                b"T"
            } else {
                b""
            };
            assert_eq!(
                got,
                expect,
                "{:?} cut at {cut}",
                String::from_utf8_lossy(&msg[..3])
            );
        }
    }
    still_serving(&node, "after-cuts").await;
    // The cut INS stored nothing.
    let mut c = node.client().await;
    assert_eq!(c.exi(&k).await.unwrap(), Status::F);
    assert!(
        node.log_text()
            .contains("connection closed inside a message"),
        "the node logs why"
    );
}

#[tokio::test]
async fn a_message_that_stalls_midway_is_timed_out() {
    let root = tempfile::tempdir().unwrap();
    let node = TestNode::start_new(root.path(), &["--io-timeout", "1"]).await;
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    s.write_all(&ins_bytes(&key("stall"), 100, b"only part"))
        .await
        .unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("closed within 10 s")
        .unwrap();
    assert_eq!(got, b"T");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    still_serving(&node, "after-stall").await;
}

#[tokio::test]
async fn oversized_values_get_f_and_the_connection_closes() {
    let root = tempfile::tempdir().unwrap();
    let node = TestNode::start_new(root.path(), &["--max-value-size", "1024"]).await;
    for (len, what) in [
        (1025u64, "limit + 1"),
        (u64::MAX, "2^64-1"),
        (1 << 63, "2^63"),
    ] {
        let k = key(what);
        // The node must answer without waiting for the (absent) value bytes.
        let mut s = TcpStream::connect(node.addr).await.unwrap();
        s.write_all(&ins_bytes(&k, len, b"")).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
            .await
            .unwrap_or_else(|_| panic!("{what}: connection still open"))
            .unwrap();
        assert_eq!(got, b"TF", "{what}: go-ahead, then F, then close");
        let mut c = node.client().await;
        assert_eq!(
            c.exi(&k).await.unwrap(),
            Status::F,
            "{what}: nothing stored"
        );
    }
    // At the limit exactly: stored.
    let mut c = node.client().await;
    assert_eq!(
        c.ins(&key("at limit"), &[7u8; 1024]).await.unwrap(),
        Status::T
    );
    still_serving(&node, "after-oversized").await;
    assert!(
        node.log_text().contains("over the limit"),
        "the node logs why"
    );
}

#[tokio::test]
async fn the_default_limit_is_64_mib() {
    let root = tempfile::tempdir().unwrap();
    let node = TestNode::start_new(root.path(), &[]).await;
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    s.write_all(&ins_bytes(&key("big"), (64 << 20) + 1, b""))
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"TF");
}

#[tokio::test]
async fn a_silent_client_is_closed_after_the_idle_timeout_and_blocks_nobody() {
    let root = tempfile::tempdir().unwrap();
    let node = TestNode::start_new(root.path(), &["--idle-timeout", "1"]).await;
    let mut silent: Vec<TcpStream> = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(node.addr).await.unwrap());
    }
    // Others are served while the silent ones hang around.
    still_serving(&node, "beside-silent").await;
    let started = Instant::now();
    for s in &mut silent {
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("closed by the node within 10 s")
            .unwrap_or(0);
        assert_eq!(n, 0, "nothing is sent to a silent client");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    still_serving(&node, "after-silent").await;
}

#[tokio::test]
async fn five_hundred_connections_at_once() {
    let root = tempfile::tempdir().unwrap();
    let node = TestNode::start_new(root.path(), &[]).await;
    let mut tasks = Vec::new();
    for i in 0..500 {
        let addr = node.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr, Default::default()).await.unwrap();
            let k = key(&format!("conn-{i}"));
            assert_eq!(c.pul().await.unwrap(), Status::T);
            assert_eq!(
                c.ins(&k, &i.to_string().into_bytes()).await.unwrap(),
                Status::T
            );
            c
        }));
    }
    // All 500 are open at the same time here.
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let k = key(&format!("conn-{i}"));
        assert_eq!(
            c.get(&k).await.unwrap(),
            Lookup::Found(i.to_string().into_bytes())
        );
    }
    still_serving(&node, "beside-500").await;
}

#[tokio::test]
async fn past_the_connection_limit_peers_wait_instead_of_failing() {
    let root = tempfile::tempdir().unwrap();
    let node = TestNode::start_new(
        root.path(),
        &["--max-connections", "16", "--idle-timeout", "2"],
    )
    .await;
    // 16 idle connections fill the limit; a 17th is served once the idle ones time out.
    let mut idle = Vec::new();
    for _ in 0..16 {
        let mut c = node.client().await;
        assert_eq!(c.pul().await.unwrap(), Status::T);
        idle.push(c);
    }
    let started = Instant::now();
    let mut late = node.client().await;
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), late.pul())
            .await
            .expect("served")
            .unwrap(),
        Status::T
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "it waited for a free slot"
    );
}

/// The replication extension's commands (docs/EXTENSIONS.md, `replicas/1`) are hostile input
/// too: a batch count, a depth or a value size beyond the limits closes that one connection
/// (after `F` where a Status is left, for a value), before anything is allocated for it.
#[tokio::test]
async fn replication_commands_past_their_limits_close_only_that_connection() {
    let root = tempfile::tempdir().unwrap();
    let node = TestNode::start_new(root.path(), &["--max-value-size", "1024"]).await;
    let k = key("replica-hostile");

    // A VRP batch of 2^40 entries: refused before one is read.
    let mut b = b"VRP".to_vec();
    b.extend_from_slice(&(1u64 << 40).to_be_bytes());
    assert!(send_and_expect_close(&node, &b, "VRP 2^40")
        .await
        .is_empty());
    still_serving(&node, "vrp-count").await;

    // A copy whose value is over the limit: F, then the connection closes.
    let mut b = b"VRP".to_vec();
    b.extend_from_slice(&1u64.to_be_bytes());
    b.extend_from_slice(k.as_bytes());
    b.extend_from_slice(&7u64.to_be_bytes());
    b.push(b'V');
    b.extend_from_slice(&(1u64 << 50).to_be_bytes());
    assert_eq!(
        send_and_expect_close(&node, &b, "VRP value 2^50").await,
        b"F"
    );
    still_serving(&node, "vrp-value").await;

    // A kind that is neither V nor X.
    let mut b = b"VRP".to_vec();
    b.extend_from_slice(&1u64.to_be_bytes());
    b.extend_from_slice(k.as_bytes());
    b.extend_from_slice(&7u64.to_be_bytes());
    b.push(b'?');
    assert!(send_and_expect_close(&node, &b, "VRP kind ?")
        .await
        .is_empty());

    // Digests of 2^99 segments.
    let mut b = b"VDG".to_vec();
    b.extend_from_slice(HashKey::ZERO.as_bytes());
    b.extend_from_slice(HashKey::ZERO.as_bytes());
    b.extend_from_slice(&99u64.to_be_bytes());
    assert!(send_and_expect_close(&node, &b, "VDG depth 99")
        .await
        .is_empty());

    // A listing of u64::MAX keys is answered with at most the node's page, then N or F.
    let mut c = node.client().await;
    assert_eq!(c.ins(&k, b"one").await.unwrap(), Status::T);
    let (listed, more) = c
        .vkl(&HashKey::ZERO, &HashKey::ZERO, u64::MAX)
        .await
        .unwrap();
    assert!(!more && listed.iter().any(|e| e.0 == k), "{listed:?}");
    // Copies held as they come, newer wins: an older copy does not replace the value.
    let (version, _) = c.vgt(&k).await.unwrap().expect("held");
    assert_eq!(
        c.vrp(&[(k, version - 1, Some(b"older".to_vec()))])
            .await
            .unwrap(),
        Status::T
    );
    assert_eq!(c.get(&k).await.unwrap(), Lookup::Found(b"one".to_vec()));
    still_serving(&node, "replica-commands").await;
}

/// A joiner of a VCC (CON by comparison, docs/EXTENSIONS.md) that breaks the exchange: a byte
/// that is no Status, or silence after its first `N`. The owner ends that one exchange (after
/// its I/O timeout for the silent one), lifts its fence, and writes to the arc go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vcc_joiner_that_breaks_the_exchange_does_not_hold_the_arc() {
    let root = tempfile::tempdir().unwrap();
    let node = TestNode::start_new(root.path(), &["--io-timeout", "2"]).await;
    let joiner: dht_store::protocol::PeerAddr = "127.0.0.9:5000".parse().unwrap();
    let (j, me) = (
        dht_store::ring::id_of(&joiner),
        dht_store::ring::id_of(&node.addr),
    );
    // A key of the arc the joiner would take ([id(J), id(P)) in a ring of one).
    let fenced = (0..)
        .map(|i| key(&format!("vcc-fenced-{i}")))
        .find(|k| dht_store::ring::in_arc(k, &j, &me))
        .unwrap();
    let open = |_: ()| async {
        let mut s = TcpStream::connect(node.addr).await.unwrap();
        let mut b = b"VCC".to_vec();
        b.extend_from_slice(&[127, 0, 0, 9]);
        b.extend_from_slice(&5000u16.to_be_bytes());
        s.write_all(&b).await.unwrap();
        // T, then S1 and S2 (the node itself in a ring of one): the arc is fenced now.
        let mut answer = [0u8; 13];
        s.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer[0], b'T', "{answer:?}");
        s
    };
    for (what, tail) in [
        ("a byte that is no Status", &b"NN?"[..]),
        ("silence", &b"N"[..]),
    ] {
        let mut s = open(()).await;
        s.write_all(tail).await.unwrap();
        let t = Instant::now();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "{what}: the owner kept the exchange open");
        println!("{what}: the exchange ended after {:?}", t.elapsed());
        let mut c = node.client().await;
        let wrote = tokio::time::timeout(Duration::from_secs(10), c.ins(&fenced, b"after"));
        assert_eq!(
            wrote.await.expect("the arc is still fenced").unwrap(),
            Status::T,
            "{what}"
        );
        still_serving(&node, "vcc").await;
    }
}
