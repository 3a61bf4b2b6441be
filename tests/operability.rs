//! What an operator meets at the command line (issue 15): settings checked before anything is
//! created, clients that never wait for ever, errors that name their object, a failed start
//! that leaves nothing behind, the terminal niceties, and logs that say what to do. Each test
//! runs the real binary, on a pseudo-terminal where the terminal matters.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::pty::Pty;
use common::{dht_store_command, TestNode};

fn run(args: &[&str]) -> Output {
    dht_store_command().args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit 2 and one sentence on stderr that contains every one of `needles`.
fn fails_saying(out: &Output, needles: &[&str]) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
    err
}

#[test]
fn every_number_out_of_range_is_refused_before_anything_is_created() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("d");
    let d = data.to_str().unwrap();
    let toml = root.path().join("c.toml");
    let port = common::free_port().to_string();
    let base = ["--data", d, "--port", &port];

    let out = run(&[&base[..], &["--cache-capacity-mb", "0"]].concat());
    fails_saying(
        &out,
        &["cache_capacity_mb", "--cache-capacity-mb", "must be from 1"],
    );

    for (setting, bad) in [
        ("fingers", "0"),
        ("fingers", "100000"),
        ("max_value_size", "0"),
        ("maintenance_interval_ms", "0"),
        ("dead_after", "0"),
    ] {
        std::fs::write(&toml, format!("{setting} = {bad}\n")).unwrap();
        let out = run(&[&base[..], &["--config", toml.to_str().unwrap()]].concat());
        fails_saying(&out, &[setting, "must be from", &format!("got {bad}")]);

        let out = dht_store_command()
            .args(base)
            .env(format!("DHT_STORE_{}", setting.to_uppercase()), bad)
            .output()
            .unwrap();
        fails_saying(&out, &[setting, "must be from"]);
    }
    assert!(!data.exists(), "a refused start created {d}");
}

/// A listener that accepts and never says a word.
fn silent_peer() -> (TcpListener, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let accepting = l.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((s, _)) = accepting.accept() {
            held.push(s);
        }
    });
    (l, t)
}

#[tokio::test]
async fn a_client_ends_within_its_timeout_naming_the_peer_and_what_to_try() {
    let (silent, _t) = silent_peer();
    let addr = silent.local_addr().unwrap().to_string();
    let started = Instant::now();
    let out = run(&["get", "apple", "--peer", &addr, "--timeout", "1"]);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    fails_saying(
        &out,
        &[
            &addr,
            "did not answer within 1 s",
            "--address-encoding",
            "--timeout",
        ],
    );

    // A compact ring asked in text addresses: the 6-byte answer is read as the start of a
    // longer one, and nothing more comes.
    let root = tempfile::tempdir().unwrap();
    let node = TestNode::start_new(root.path(), &[]).await;
    let peer = node.addr.to_string();
    let started = Instant::now();
    let out = run(&[
        "get",
        "apple",
        "--peer",
        &peer,
        "--address-encoding",
        "text",
        "--timeout",
        "2",
    ]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    fails_saying(
        &out,
        &[&peer, "did not answer", "--address-encoding compact"],
    );
}

/// A listening socket whose accept queue is full and never served: further connections get no
/// answer to their SYN (Linux drops it), as from a host that drops packets.
fn full_listener() -> (std::os::fd::OwnedFd, u16, Vec<std::net::TcpStream>) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor we own; every result is checked.
    let (fd, port) = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len),
            0
        );
        assert_eq!(libc::listen(fd, 0), 0);
        let mut got: libc::sockaddr_in = std::mem::zeroed();
        let mut got_len = len;
        assert_eq!(
            libc::getsockname(fd, &mut got as *mut _ as *mut libc::sockaddr, &mut got_len),
            0
        );
        (
            std::os::fd::OwnedFd::from_raw_fd(fd),
            u16::from_be(got.sin_port),
        )
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut held = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            held.push(s);
        }
    }
    (fd, port, held)
}

/// A peer that answers OWN with itself and INS with `T`, then reads nothing more.
fn peer_that_stops_reading() -> (TcpListener, std::thread::JoinHandle<()>) {
    use std::io::Read;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let me = match l.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        _ => unreachable!(),
    };
    let accepting = l.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = accepting.accept() {
            let mut req = [0u8; 23];
            while s.read_exact(&mut req).is_ok() {
                let answered = match &req[..3] {
                    b"OWN" => {
                        let mut a = me.ip().octets().to_vec();
                        a.extend(me.port().to_be_bytes());
                        s.write_all(&a)
                    }
                    b"INS" => {
                        let _ = s.write_all(b"T");
                        break;
                    }
                    _ => break,
                };
                if answered.is_err() {
                    break;
                }
            }
            held.push(s);
        }
    });
    (l, t)
}

/// A scripted peer: OWN names `own(n)` for its `n`th OWN (after `late(n)`), GET answers `T`
/// and `value`. Its address comes back before anything is served.
fn scripted_peer(
    own: impl Fn(usize, std::net::SocketAddrV4) -> std::net::SocketAddrV4 + Send + Sync + 'static,
    late: impl Fn(usize) -> Duration + Send + Sync + 'static,
    value: &'static [u8],
) -> std::net::SocketAddrV4 {
    use std::io::Read;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let me = match l.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        _ => unreachable!(),
    };
    let owns = Arc::new(AtomicUsize::new(0));
    let (own, late) = (Arc::new(own), Arc::new(late));
    std::thread::spawn(move || {
        while let Ok((mut s, _)) = l.accept() {
            let (owns, own, late) = (owns.clone(), own.clone(), late.clone());
            std::thread::spawn(move || {
                let mut req = [0u8; 23];
                while s.read_exact(&mut req).is_ok() {
                    let answer = match &req[..3] {
                        b"OWN" => {
                            let n = owns.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(late(n));
                            let named = own(n, me);
                            let mut a = named.ip().octets().to_vec();
                            a.extend(named.port().to_be_bytes());
                            a
                        }
                        b"GET" => {
                            let mut a = b"T".to_vec();
                            a.extend((value.len() as u64).to_be_bytes());
                            a.extend(value);
                            a
                        }
                        _ => return,
                    };
                    if s.write_all(&answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    me
}

/// A Router whose OWN timed out does not read that OWN's late answer as the answer to its next
/// request: the connection is dropped with the timeout. Before, the late answer (naming a
/// peer that serves a wrong value) sent the next GET there.
#[tokio::test]
async fn a_late_answer_is_never_read_as_the_answer_to_the_next_request() {
    use dht_store::client::Router;
    use dht_store::protocol::{AddressEncoding, HashKey, PeerAddr};
    let wrong = scripted_peer(|_, me| me, |_| Duration::ZERO, b"wrong");
    // The entry owns every key; its first OWN answer comes late and names `wrong`.
    let entry = scripted_peer(
        move |n, me| if n == 0 { wrong } else { me },
        |n| Duration::from_millis(if n == 0 { 1500 } else { 0 }),
        b"right",
    );
    let entry: PeerAddr = entry.to_string().parse().unwrap();
    let mut router =
        Router::new(entry, AddressEncoding::Compact).with_timeout(Duration::from_millis(500));
    let key = HashKey::of(b"apple");
    let first = router.owner(&key).await;
    assert!(first.is_err(), "the late OWN was taken: {first:?}");
    // Past the late answer's time, so that it stands on the connection if that was kept.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = router.get(&key).await.expect("GET through the entry");
    assert_eq!(got.as_deref(), Some(&b"right"[..]));
}

#[tokio::test]
async fn a_peer_that_does_not_accept_or_stops_reading_is_not_asked_again() {
    // Connecting: before, each attempt waited its timeout and the request was routed again
    // five times.
    let (_fd, port, _held) = full_listener();
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let out = run(&["get", "apple", "--peer", &addr, "--timeout", "1"]);
    let took = started.elapsed();
    fails_saying(&out, &[&addr, "did not answer within 1 s"]);
    assert!(took < Duration::from_secs(5), "{took:?}");

    // Writing a value the peer no longer reads: before, the write's timeout was followed by a
    // wait for an answer and five more attempts.
    let (l, _t) = peer_that_stops_reading();
    let addr = l.local_addr().unwrap().to_string();
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("v");
    std::fs::write(&file, vec![3u8; 32 << 20]).unwrap();
    let started = Instant::now();
    let out = run(&[
        "put",
        "k",
        "--file",
        file.to_str().unwrap(),
        "--peer",
        &addr,
        "-t",
        "1",
    ]);
    let took = started.elapsed();
    fails_saying(&out, &[&addr, "did not answer within 1 s"]);
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn a_value_over_the_nodes_limit_is_sent_once_and_refused_with_both_sizes() {
    let root = tempfile::tempdir().unwrap();
    let node = TestNode::start_new(root.path(), &["--max-value-size", "1000"]).await;
    let peer = node.addr.to_string();
    let file = root.path().join("big");
    std::fs::write(&file, vec![7u8; 5_000_000]).unwrap();
    let out = run(&[
        "put",
        "k",
        "--file",
        file.to_str().unwrap(),
        "--peer",
        &peer,
    ]);
    let err = fails_saying(
        &out,
        &[
            "the value is 5000000 bytes, over the limit of",
            &peer,
            "(1000 bytes)",
        ],
    );
    assert!(
        !err.contains("gave up") && !err.contains("Broken pipe"),
        "{err}"
    );

    // Through stdin the same.
    let mut child = dht_store_command()
        .args(["put", "k", "--peer", &peer])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The node may close before all of it is read: a write error here is expected.
    let _ = child.stdin.take().unwrap().write_all(&vec![1u8; 3_000_000]);
    let out = child.wait_with_output().unwrap();
    fails_saying(&out, &["the value is 3000000 bytes", "(1000 bytes)"]);

    // Sent once each: the node refused two values, not ten.
    let log = node.log_text();
    let refused = log.matches("over the limit").count();
    assert_eq!(refused, 2, "{log}");
    assert_eq!(
        run(&["exists", "k", "--peer", &peer]).status.code(),
        Some(1)
    );
}

#[test]
fn io_errors_name_the_path_and_what_was_being_done() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let f = file.to_str().unwrap();
    let port = common::free_port().to_string();

    let out = run(&["--data", f, "--port", &port]);
    fails_saying(&out, &[f, "is a file, not a directory"]);

    let under = format!("{f}/sub");
    let out = run(&["--data", &under, "--port", &port]);
    fails_saying(&out, &["cannot create data directory", &under]);

    let dir = root.path().to_str().unwrap();
    let out = run(&["verify", dir]);
    fails_saying(&out, &[dir, "is a directory, not a backup archive"]);

    let out = run(&["restore", "--from", dir, "--data", &format!("{dir}/r")]);
    fails_saying(&out, &[dir, "is a directory"]);

    let out = run(&["backup", "--data", dir, "--out", dir]);
    fails_saying(&out, &[dir, "is a directory: give the archive's file name"]);

    let missing = format!("{dir}/missing");
    let out = run(&["put", "k", "--file", &missing]);
    fails_saying(&out, &["cannot read the value from", &missing]);

    for out in [
        run(&["put", "k", "--file", &missing]),
        run(&["get", "--hash", "abc"]),
        run(&["--data", f, "--port", &port]),
    ] {
        assert!(
            !stderr(&out).contains("configuration error"),
            "{}",
            stderr(&out)
        );
    }
}

#[tokio::test]
async fn a_start_that_cannot_listen_creates_nothing_and_backup_asks_before_replacing() {
    let root = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let data = root.path().join("never");
    let out = run(&["--data", data.to_str().unwrap(), "--port", &port]);
    fails_saying(&out, &["cannot listen on", &port]);
    assert!(!data.exists(), "a failed start created {}", data.display());

    let node = TestNode::start_new(root.path(), &[]).await;
    let archive = root.path().join("b.backup");
    std::fs::write(&archive, b"precious").unwrap();
    let a = archive.to_str().unwrap();
    let d = node.data.to_str().unwrap();
    let out = run(&["backup", "--data", d, "--out", a]);
    fails_saying(&out, &[a, "exists: give --force"]);
    assert_eq!(std::fs::read(&archive).unwrap(), b"precious");
    let out = run(&["backup", "--data", d, "--out", a, "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(run(&["verify", a]).status.code(), Some(0));
}

#[tokio::test]
async fn the_command_line_takes_what_people_type() {
    let root = tempfile::tempdir().unwrap();
    let node = TestNode::start_new(root.path(), &[]).await;
    let port = node.addr.port().to_string();
    let localhost = format!("localhost:{port}");

    // put --hash HEX VALUE
    let h = dht_store::protocol::HashKey::of(b"apple").to_string();
    let out = run(&["put", "--hash", &h, "red", "--peer", &localhost]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // -p PORT, and the name localhost
    let out = run(&["get", "apple", "-p", &port]);
    assert_eq!((out.status.code(), &out.stdout[..]), (Some(0), &b"red"[..]));
    let out = run(&["get", "apple", "--peer", &localhost]);
    assert_eq!(out.stdout, b"red");

    // A reader that stops early is not an error.
    let long = "x".repeat(100_000);
    assert_eq!(
        run(&["put", "long", &long, "-p", &port]).status.code(),
        Some(0)
    );
    let out = Command::new("bash")
        .args([
            "-c",
            &format!(
                "{} get long -p {port} | head -c 10 >/dev/null; exit ${{PIPESTATUS[0]}}",
                common::BIN
            ),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("Broken pipe"), "{}", stderr(&out));
    let out = Command::new("bash")
        .args([
            "-c",
            &format!(
                "{} info -p {port} | true; exit ${{PIPESTATUS[0]}}",
                common::BIN
            ),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // info has no OWN walk, so no --max-hops; short flags exist.
    let help = String::from_utf8(run(&["info", "--help"]).stdout).unwrap();
    assert!(!help.contains("--max-hops"), "{help}");
    assert!(
        help.contains("-p, --peer") && help.contains("-t, --timeout"),
        "{help}"
    );
    let help = String::from_utf8(run(&["--help"]).stdout).unwrap();
    assert!(
        help.contains("-d, --data") && help.contains("-p, --port"),
        "{help}"
    );
    // One environment name per setting: the one the config file's setting gives.
    for env in help.split("[env: ").skip(1) {
        let name = env.split([']', '=']).next().unwrap();
        let setting = name.trim_start_matches("DHT_STORE_").to_lowercase();
        assert!(
            dht_store::config::SETTINGS.contains(&setting.as_str()) || setting == "config",
            "{name} names no setting"
        );
    }

    // The node's short flags.
    let port2 = common::free_port().to_string();
    let d2 = root.path().join("short");
    let mut child = dht_store_command()
        .args(["-d", d2.to_str().unwrap(), "-p", &port2])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port2}").parse().unwrap();
    let serving = common::wait_serving(&mut child, addr, Duration::from_secs(20)).await;
    common::process::Reaped::new("short", child).stop();
    serving.unwrap();
    assert!(d2.join("LOCK").exists());
}

#[tokio::test]
async fn on_a_terminal_get_ends_its_line_and_put_says_it_reads_the_terminal() {
    let root = tempfile::tempdir().unwrap();
    let node = TestNode::start_new(root.path(), &[]).await;
    let port = node.addr.port().to_string();

    let mut cmd = dht_store_command();
    cmd.args(["put", "fruit", "-p", &port]);
    let mut put = Pty::spawn(cmd);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !put.text().contains("Ctrl-D") {
        assert!(Instant::now() < deadline, "no prompt: {:?}", put.text());
        std::thread::sleep(Duration::from_millis(20));
    }
    put.type_in(b"pear\n\x04");
    let (code, text) = put.finish(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{text}");

    let mut cmd = dht_store_command();
    cmd.args(["get", "apple", "-p", &port]);
    assert_eq!(
        run(&["put", "apple", "red", "-p", &port]).status.code(),
        Some(0)
    );
    let (code, text) = Pty::spawn(cmd).finish(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert_eq!(
        text, "red\r\n",
        "the value and a newline (the pty writes \\r\\n)"
    );
    // Not through a pipe: the value as it is.
    assert_eq!(run(&["get", "apple", "-p", &port]).stdout, b"red");
    // The value typed, with its newline, was stored.
    assert_eq!(run(&["get", "fruit", "-p", &port]).stdout, b"pear\n");
}

/// A data directory of `n` entries of `size` bytes, written by a node that is then stopped.
async fn stopped_node_with(root: &Path, n: usize, size: usize) -> TestNode {
    let mut node = TestNode::start_new(root, &[]).await;
    let mut r =
        dht_store::client::Router::new(node.addr, dht_store::protocol::AddressEncoding::Compact);
    let mut rng = common::Rng::new(15);
    let value = vec![5u8; size];
    for _ in 0..n {
        assert!(r.put(&rng.key(), &value).await.unwrap());
    }
    node.stop(libc::SIGTERM);
    node
}

#[tokio::test]
async fn progress_moves_on_a_terminal_and_restore_shows_its_sync() {
    let root = tempfile::tempdir().unwrap();
    let node = stopped_node_with(root.path(), 20_000, 4096).await;
    let archive = root.path().join("p.backup");
    let (a, d) = (archive.to_str().unwrap(), node.data.to_str().unwrap());

    let mut cmd = dht_store_command();
    cmd.args(["backup", "--data", d, "--out", a]);
    let (code, text) = Pty::spawn(cmd).finish(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{text}");
    // A spinner with counts that move, not a total drawn full from the start.
    let counts = entry_counts(&text);
    assert!(
        counts.len() >= 2 && counts.windows(2).all(|w| w[0] <= w[1]),
        "{counts:?}\n{text}"
    );
    assert!(counts.first() < counts.last(), "{counts:?}");
    assert!(!text.contains("/0 entries"), "{text}");
    assert!(text.contains("20000 entries"), "{text}");

    let target = root.path().join("restored");
    let mut cmd = dht_store_command();
    cmd.args(["restore", "--from", a, "--data", target.to_str().unwrap()]);
    let (code, text) = Pty::spawn(cmd).finish(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{text}");
    // A bar with the archive's total and an ETA, then the sync.
    assert!(text.contains("/20000 entries"), "{text}");
    assert!(text.contains("ETA"), "{text}");
    assert!(text.contains("syncing to disk"), "{text}");
    // Sizes in one style: "78.12 MiB" in the summary as in the bar.
    assert!(text.contains("(78.12 MiB of values)"), "{text}");

    let out = run(&["verify", a]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let created = stdout.lines().find(|l| l.starts_with("created ")).unwrap();
    // RFC 3339, not seconds since the epoch.
    assert!(
        created.len() == "created 2026-11-28T12:00:00Z".len() && created.ends_with('Z'),
        "{created}"
    );
}

/// The entry counts a progress display drew, in order ("1234 entries" or "1234/5678 entries").
fn entry_counts(text: &str) -> Vec<u64> {
    text.split(" entries")
        .filter_map(|before| {
            let word = before.rsplit([' ', '\r', '\n', '\u{1b}']).next()?;
            word.split('/').next()?.parse().ok()
        })
        .collect()
}

#[tokio::test]
async fn a_node_about_to_be_a_ring_apart_says_so_and_how_to_join() {
    let root = tempfile::tempdir().unwrap();
    let mut ring = common::start_ring(root.path(), 3, &[]).await;

    // A clean leave: INFO, not WARN, in the leaver's log; and its handoff lines are short.
    let (code, text) = ring[2].leave();
    assert_eq!(code, Some(0), "{text}");
    // The leave's answer comes before the process exits.
    let status = ring[2].child.take().unwrap().wait().unwrap();
    assert!(status.success(), "{status}");
    let leaver = ring[2].log_text();
    assert!(!leaver.contains(" WARN "), "{leaver}");
    for line in leaver.lines().filter(|l| l.contains("handoff")) {
        assert!(line.len() < 220, "{} characters: {line}", line.len());
    }

    // Started again on the directory it left, without --join.
    let mut again = TestNode::new(&ring[2].data, ring[2].addr, &[]);
    again.restart().await;
    again
        .wait_log("STARTING A NEW RING OF ONE", Duration::from_secs(10))
        .await;
    assert!(again.log_text().contains("--join HOST:PORT"));
    drop(again);

    // A restored (or copied) directory started under another address, without --join.
    let port = common::free_port();
    let copy = root.path().join("copy.backup");
    let out = run(&[
        "backup",
        "--data",
        ring[0].data.to_str().unwrap(),
        "--out",
        copy.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let moved = root.path().join("moved");
    let out = run(&[
        "restore",
        "--from",
        copy.to_str().unwrap(),
        "--data",
        moved.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let other = TestNode::start(&moved, format!("127.0.0.1:{port}").parse().unwrap(), &[]).await;
    other
        .wait_log("STARTING A NEW RING OF ONE", Duration::from_secs(10))
        .await;
    let log = other.log_text();
    assert!(
        log.contains(&format!("held the ring state of {}", ring[0].addr)),
        "{log}"
    );
    assert!(log.contains("--join"), "{log}");

    // Joining through a dead peer: one WARN for it, not one per retry.
    let dead = format!("127.0.0.1:{}", common::free_port());
    let mut joiner = TestNode::new(
        &root.path().join("joiner"),
        format!("127.0.0.1:{}", common::free_port())
            .parse()
            .unwrap(),
        &["--join", &dead],
    );
    joiner.launch();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let log = joiner.log_text();
    let warns = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains(&dead))
        .count();
    assert_eq!(warns, 1, "{log}");
}
