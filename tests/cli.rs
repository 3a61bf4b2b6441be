//! The client subcommands of the binary against a real node: output and exit codes.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{TestNode, BIN};

fn cli(node: &TestNode, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--peer", &node.addr.to_string()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn cli_stdin(node: &TestNode, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .args(["--peer", &node.addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn put_get_exists_rm_owner_info_with_exit_codes() {
    let root = tempfile::tempdir().unwrap();
    let node = TestNode::start_new(root.path(), &[]).await;

    let out = cli(&node, &["get", "apple"]);
    assert_eq!(out.status.code(), Some(1), "absent");
    assert!(String::from_utf8_lossy(&out.stderr).contains("apple is absent"));
    assert_eq!(cli(&node, &["exists", "apple"]).status.code(), Some(1));
    assert_eq!(cli(&node, &["rm", "apple"]).status.code(), Some(1));

    assert_eq!(cli(&node, &["put", "apple", "red"]).status.code(), Some(0));
    let out = cli(&node, &["get", "apple"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"red");
    assert_eq!(cli(&node, &["exists", "apple"]).status.code(), Some(0));

    // The key is SHA-1 of its UTF-8 bytes: --hash reaches the same entry.
    let h = dht_store::protocol::HashKey::of(b"apple").to_string();
    let out = cli(&node, &["get", "--hash", &h]);
    assert_eq!(out.stdout, b"red");

    let out = cli(&node, &["owner", "apple"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("{} owns {h}", node.addr)),
        "{text}"
    );

    let out = cli(&node, &["info"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("address {}", node.addr)), "{text}");
    assert!(text.contains("keys 1"), "{text}");

    assert_eq!(cli(&node, &["rm", "apple"]).status.code(), Some(0));
    assert_eq!(cli(&node, &["exists", "apple"]).status.code(), Some(1));
}

#[tokio::test]
async fn put_reads_a_file_or_stdin_and_binary_values_round_trip() {
    let root = tempfile::tempdir().unwrap();
    let node = TestNode::start_new(root.path(), &[]).await;
    let bytes: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let file = root.path().join("value.bin");
    std::fs::write(&file, &bytes).unwrap();
    assert_eq!(
        cli(&node, &["put", "blob", "--file", file.to_str().unwrap()])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(cli(&node, &["get", "blob"]).stdout, bytes);

    let out = cli_stdin(&node, &["put", "piped"], b"from stdin\0with a nul");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        cli(&node, &["get", "piped"]).stdout,
        b"from stdin\0with a nul"
    );
}

#[tokio::test]
async fn errors_exit_2_with_one_clear_sentence() {
    // Nobody listens on this port.
    let port = common::free_port();
    let out = Command::new(BIN)
        .args(["get", "x", "--peer", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let out = Command::new(BIN)
        .args(["get", "x", "--peer", "nonsense"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not host:port"));

    let out = Command::new(BIN)
        .args(["get", "--hash", "abc"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("40 hex digits"));
}

#[tokio::test]
async fn a_value_over_the_nodes_limit_is_an_error() {
    let root = tempfile::tempdir().unwrap();
    let node = TestNode::start_new(root.path(), &["--max-value-size", "10"]).await;
    let out = cli(&node, &["put", "k", "eleven byte"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not stored") || err.contains("gave up"),
        "{err}"
    );
    assert_eq!(cli(&node, &["exists", "k"]).status.code(), Some(1));
}

#[test]
fn help_explains_the_node_and_the_clients() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--data",
        "--port",
        "--host",
        "--join",
        "--address-encoding",
        "--config",
        "put",
        "get",
        "owner",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}: {text}");
    }
}
