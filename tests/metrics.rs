//! The metrics endpoint (`--metrics-listen`): a real node, real requests over the protocol, and
//! the Prometheus text read back with a plain HTTP GET over TCP.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::TestNode;
use dht_store::client::Lookup;
use dht_store::protocol::{HashKey, Status};

fn key(name: &str) -> HashKey {
    HashKey::of(name.as_bytes())
}

/// `GET path` on `addr`: (status line, headers and body).
fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the answer");
    let (status, rest) = text.split_once("\r\n").expect("a status line");
    (status.to_string(), rest.to_string())
}

/// The body of `GET /metrics`.
fn scrape(addr: SocketAddr) -> String {
    let (status, rest) = http_get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{rest}");
    assert!(
        rest.contains("Content-Type: text/plain; version=0.0.4"),
        "{rest}"
    );
    let (_, body) = rest.split_once("\r\n\r\n").expect("headers end");
    body.to_string()
}

/// The value of the sample `name` whose labels include every `labels` pair (`0` if the page
/// has none: counters with labels appear once first counted).
fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut found = None;
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, l) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let has = |(k, v): &(&str, &str)| l.split(',').any(|p| p == format!("{k}=\"{v}\""));
        if n == name && labels.iter().all(has) {
            assert!(
                found.is_none(),
                "{name} {labels:?} matches two samples:\n{page}"
            );
            found = Some(value.parse::<f64>().expect("a number"));
        }
    }
    found.unwrap_or(0.0)
}

/// Scrapes until `ready` holds (a request is counted just after its answer is flushed, and
/// the keys gauge follows a rescan), then returns that page.
fn scrape_until(addr: SocketAddr, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = scrape(addr);
        if ready(&page) {
            return page;
        }
        assert!(Instant::now() < deadline, "never {what}:\n{page}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn requests(page: &str, command: &str, answer: &str) -> f64 {
    sample(
        page,
        "dht_store_requests_total",
        &[("command", command), ("answer", answer)],
    )
}

async fn node_with_metrics(root: &std::path::Path) -> (TestNode, SocketAddr) {
    let metrics: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let node = TestNode::start_new(root, &["--metrics-listen", &metrics.to_string()]).await;
    (node, metrics)
}

/// Requests move their counters by exactly what was sent, by command and answer; the keys and
/// bytes gauges follow the writes; the latch is 0; the page describes what it shows.
#[tokio::test]
async fn requests_are_counted_by_command_and_answer() {
    let root = tempfile::tempdir().unwrap();
    let (node, metrics) = node_with_metrics(root.path()).await;
    let before = scrape(metrics);
    assert_eq!(sample(&before, "dht_store_write_failed", &[]), 0.0);
    assert_eq!(
        sample(
            &before,
            "dht_store_info",
            &[("address", &node.addr.to_string())]
        ),
        1.0
    );
    // Counters with labels appear once first counted (the testkit's PUL may not be yet).
    assert!(
        before.contains("# HELP dht_store_connections_accepted_total "),
        "{before}"
    );
    assert!(before.contains("# TYPE dht_store_request_seconds histogram"));

    let mut c = node.client().await;
    for (name, len) in [("a", 10), ("b", 200), ("c", 7000)] {
        assert_eq!(c.ins(&key(name), &vec![1; len]).await.unwrap(), Status::T);
    }
    assert_eq!(c.get(&key("b")).await.unwrap(), Lookup::Found(vec![1; 200]));
    assert_eq!(c.get(&key("absent")).await.unwrap(), Lookup::Absent);
    assert_eq!(c.exi(&key("a")).await.unwrap(), Status::T);
    assert_eq!(c.exi(&key("c")).await.unwrap(), Status::T);
    assert_eq!(c.exi(&key("absent")).await.unwrap(), Status::F);
    assert_eq!(c.rem(&key("a")).await.unwrap(), Status::T);
    assert_eq!(c.rem(&key("a")).await.unwrap(), Status::F);
    c.own(&key("x")).await.unwrap();
    c.inf().await.unwrap();

    let page = scrape_until(metrics, "counted the INF", |p| {
        requests(p, "INF", "value") - requests(&before, "INF", "value") >= 1.0
    });
    assert!(page.contains("# HELP dht_store_requests_total "), "{page}");
    let moved =
        |command, answer| requests(&page, command, answer) - requests(&before, command, answer);
    assert_eq!(moved("INS", "T"), 3.0);
    assert_eq!(moved("INS", "F"), 0.0);
    assert_eq!(moved("GET", "T"), 1.0);
    assert_eq!(moved("GET", "F"), 1.0);
    assert_eq!(moved("EXI", "T"), 2.0);
    assert_eq!(moved("EXI", "F"), 1.0);
    assert_eq!(moved("REM", "T"), 1.0);
    assert_eq!(moved("REM", "F"), 1.0);
    assert_eq!(moved("OWN", "addr"), 1.0);
    assert_eq!(moved("INF", "value"), 1.0);
    let count = |p: &str, command| {
        sample(
            p,
            "dht_store_request_seconds_count",
            &[("command", command)],
        )
    };
    assert_eq!(count(&page, "INS") - count(&before, "INS"), 3.0);
    assert_eq!(count(&page, "EXI") - count(&before, "EXI"), 3.0);
    assert!(sample(&page, "dht_store_group_commit_changes_count", &[]) >= 1.0);
    assert!(sample(&page, "dht_store_group_commit_flush_seconds_sum", &[]) > 0.0);
    assert!(sample(&page, "dht_store_connections_open", &[]) >= 1.0);
    assert!(sample(&page, "dht_store_connections_accepted_total", &[]) >= 1.0);
    assert_eq!(sample(&page, "dht_store_write_failed", &[]), 0.0);

    // b (200 bytes) and c (7000, in pieces) are left.
    let page = scrape_until(metrics, "rescanned the keys", |p| {
        sample(p, "dht_store_keys", &[]) == 2.0
    });
    assert_eq!(sample(&page, "dht_store_value_bytes", &[]), 7200.0);

    // A peer that breaks the protocol is counted when its connection is closed.
    let dropped = |p: &str| {
        sample(
            p,
            "dht_store_connections_dropped_total",
            &[("reason", "protocol")],
        )
    };
    let was = dropped(&page);
    let mut raw = TcpStream::connect(node.addr.to_string()).unwrap();
    raw.write_all(b"XYZ").unwrap();
    let mut rest = Vec::new();
    let _ = raw.read_to_end(&mut rest);
    scrape_until(metrics, "counted the dropped connection", |p| {
        dropped(p) == was + 1.0
    });

    let (status, _) = http_get(metrics, "/");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

/// A node that can no longer write shows it: the latch gauge is 1, the refused INS is `F`.
#[tokio::test]
async fn the_write_failure_latch_shows() {
    let root = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let metrics: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut node = TestNode::new(
        &root.path().join("node"),
        addr,
        &["--metrics-listen", &metrics.to_string()],
    );
    // A 3 MiB value goes to a sled blob file of its own, over the limit (tests/disk.rs).
    node.file_size_limit = Some(2 << 20);
    node.restart().await;
    assert_eq!(sample(&scrape(metrics), "dht_store_write_failed", &[]), 0.0);
    let mut c = node.client().await;
    assert_eq!(
        c.ins(&key("big"), &vec![7; 3 << 20]).await.unwrap(),
        Status::F
    );
    let page = scrape_until(metrics, "counted the refused INS", |p| {
        requests(p, "INS", "F") == 1.0
    });
    assert_eq!(sample(&page, "dht_store_write_failed", &[]), 1.0);
}

/// A metrics address that is not one, or is in use, stops the node at start with one sentence
/// naming it, before the data directory is created.
#[test]
fn a_bad_metrics_address_is_refused_at_start() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let run = |metrics: &str| {
        let out = common::dht_store_command()
            .arg("--data")
            .arg(&data)
            .args(["--port", &common::free_port().to_string()])
            .args(["--metrics-listen", metrics])
            .output()
            .expect("run dht-store");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run("localhost");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("metrics_listen") && err.contains("\"localhost\""),
        "{err}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = taken.local_addr().unwrap().to_string();
    let (code, err) = run(&at);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("cannot listen on {at} for metrics")),
        "{err}"
    );
    assert!(!data.exists(), "the data directory was created: {err}");

    // The environment variable is the same setting.
    let out = common::dht_store_command()
        .arg("--data")
        .arg(&data)
        .env("DHT_STORE_METRICS_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("metrics_listen"), "{err}");
}
