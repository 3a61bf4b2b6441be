//! Helpers shared by the integration tests: real `dht-store` processes on real sled
//! directories in temp dirs, talked to over real TCP.
#![allow(dead_code)]

pub mod model;
pub mod process;
pub mod pty;
pub mod sample;

pub use process::{dht_store_command, free_port_on};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use dht_store::client::Client;
use dht_store::protocol::{AddressEncoding, PeerAddr, Status};

pub const BIN: &str = env!("CARGO_BIN_EXE_dht-store");

/// A port nobody listens on right now (bound and released).
pub fn free_port() -> u16 {
    free_port_on(std::net::Ipv4Addr::LOCALHOST)
}

/// A running node process, killed when dropped.
pub struct TestNode {
    pub child: Option<Child>,
    pub addr: PeerAddr,
    pub data: PathBuf,
    pub log: PathBuf,
    pub args: Vec<String>,
    /// Extra environment (e.g. DHT_STORE_FAULT) for the next start.
    pub env: Vec<(String, String)>,
    /// `ulimit -f` for the next start, in bytes: writes that would make a file larger fail
    /// (EFBIG, as a full disk fails with ENOSPC), without needing a small filesystem.
    pub file_size_limit: Option<u64>,
}

impl TestNode {
    /// Starts `dht-store --data DATA --port PORT --host HOST EXTRA...` and waits until it
    /// answers PUL.
    pub async fn start(data: &Path, addr: PeerAddr, extra: &[&str]) -> TestNode {
        let mut n = TestNode {
            child: None,
            addr,
            data: data.to_path_buf(),
            log: data.with_extension("log"),
            args: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            file_size_limit: None,
        };
        n.restart().await;
        n
    }

    /// [`TestNode::start`] with `env` for the process.
    pub async fn start_env(
        data: &Path,
        addr: PeerAddr,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> TestNode {
        let mut n = TestNode::new(data, addr, extra);
        n.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        n.restart().await;
        n
    }

    /// A node that is not started yet.
    pub fn new(data: &Path, addr: PeerAddr, extra: &[&str]) -> TestNode {
        TestNode {
            child: None,
            addr,
            data: data.to_path_buf(),
            log: data.with_extension("log"),
            args: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            file_size_limit: None,
        }
    }

    /// Starts the process without waiting for it to serve.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "node still running");
        self.child = Some(self.spawn());
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_log(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.log_text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "node {} never logged {needle:?}: {}",
                self.addr,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Entries the node holds (from INF: `keys`, the arc it owns, and `copies`, the rest),
    /// owned or not.
    pub async fn keys_held(&self) -> u64 {
        let text = self.client().await.inf().await.expect("INF");
        Held::of(&text)
            .unwrap_or_else(|e| panic!("INF at {}: {e}: {text}", self.addr))
            .total()
    }

    /// Runs `dht-store leave --data DIR`; returns (exit code, stdout+stderr).
    pub fn leave(&self) -> (Option<i32>, String) {
        let out = Command::new(BIN)
            .arg("leave")
            .arg("--data")
            .arg(&self.data)
            .output()
            .expect("run leave");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    }

    /// Starts a node on 127.0.0.1 and a free port, in a fresh directory under `root`.
    pub async fn start_new(root: &Path, extra: &[&str]) -> TestNode {
        let port = free_port();
        let addr: PeerAddr = format!("127.0.0.1:{port}").parse().unwrap();
        TestNode::start(&root.join(format!("node{port}")), addr, extra).await
    }

    pub fn spawn(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open node log");
        let mut cmd = dht_store_command();
        cmd.arg("--data")
            .arg(&self.data)
            .arg("--port")
            .arg(self.addr.port().to_string())
            .arg("--host")
            .arg(self.addr.ip().to_string())
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("DHT_STORE_MAINTENANCE_INTERVAL_MS", "200")
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log);
        if let Some(limit) = self.file_size_limit {
            limit_file_size(&mut cmd, limit);
        }
        cmd.spawn().expect("spawn dht-store")
    }

    /// (Re)starts the process and waits for PUL.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "node still running");
        self.child = Some(self.spawn());
        self.wait_ready().await;
    }

    pub async fn wait_ready(&mut self) {
        let child = self.child.as_mut().expect("started");
        if let Err(e) = wait_serving(child, self.addr, Duration::from_secs(20)).await {
            panic!("{e}: {}", self.log_text());
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Sends `sig` and waits for the process to end.
    pub fn stop(&mut self, sig: i32) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe {
            libc::kill(child.id() as i32, sig);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("node {} did not stop after signal {sig}", self.addr);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr, AddressEncoding::Compact)
            .await
            .expect("connect to node")
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until the node `child` at `addr` answers PUL with `T` (it serves: a joining node only
/// once its join completed), or fails with why not: it exited, or `limit` passed.
pub async fn wait_serving(
    child: &mut Child,
    addr: PeerAddr,
    limit: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().ok().flatten() {
            return Err(format!("node {addr} exited with {status}"));
        }
        if let Ok(mut c) = Client::connect(addr, AddressEncoding::Compact).await {
            if let Ok(Status::T) = c.pul().await {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("node {addr} not serving after {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The nodes that hold `key` with `k` copies besides the owner's: its owner and the owner's
/// `k` predecessors among `addrs`, nearest first (all of them in a ring of at most k + 1).
pub fn holders_of(
    addrs: &[PeerAddr],
    key: &dht_store::protocol::HashKey,
    k: usize,
) -> Vec<PeerAddr> {
    let mut ring: Vec<(dht_store::protocol::HashKey, PeerAddr)> = addrs
        .iter()
        .map(|a| (dht_store::ring::id_of(a), *a))
        .collect();
    ring.sort();
    let owner = owner_of(addrs, key);
    let at = ring.iter().position(|(_, a)| *a == owner).expect("owner");
    (0..=k.min(ring.len() - 1))
        .map(|i| ring[(at + ring.len() - i) % ring.len()].1)
        .collect()
}

/// The owner of `key` among nodes with these addresses, computed from their ids here, not by
/// asking any node: the largest id <= key, else the largest id.
pub fn owner_of(addrs: &[PeerAddr], key: &dht_store::protocol::HashKey) -> PeerAddr {
    let ids: Vec<_> = addrs
        .iter()
        .map(|a| (dht_store::ring::id_of(a), *a))
        .collect();
    let below = ids
        .iter()
        .filter(|(id, _)| id <= key)
        .max_by_key(|(id, _)| *id);
    below
        .or_else(|| ids.iter().max_by_key(|(id, _)| *id))
        .expect("no nodes")
        .1
}

/// `n` addresses on distinct loopback hosts 127.0.0.2, 127.0.0.3, ... with free ports.
pub fn loopback_addrs(n: usize) -> Vec<PeerAddr> {
    (0..n)
        .map(|i| {
            let ip = std::net::Ipv4Addr::new(127, 0, 0, 2 + i as u8);
            PeerAddr::new(ip, free_port_on(ip))
        })
        .collect()
}

/// Runs `cmd` under `ulimit -f` of `bytes`: a write that would make any file larger fails with
/// EFBIG (SIGXFSZ ignored), as writes to a full disk fail with ENOSPC.
pub fn limit_file_size(cmd: &mut Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let l = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
}

impl TestNode {
    /// Freezes the process (SIGSTOP): it keeps its sockets, and the kernel still accepts
    /// connections for it, but it answers nothing, as a host cut off from the network.
    pub fn pause(&self) {
        unsafe {
            libc::kill(self.pid(), libc::SIGSTOP);
        }
    }

    /// Lets a paused process go on (SIGCONT).
    pub fn resume(&self) {
        unsafe {
            libc::kill(self.pid(), libc::SIGCONT);
        }
    }
}

/// Starts a ring of `n` nodes on distinct loopback hosts under `root`, each joining through the
/// first, with `env` for every node; returned in ring (id) order.
pub async fn start_ring(root: &Path, n: usize, env: &[(&str, &str)]) -> Vec<TestNode> {
    let mut addrs = loopback_addrs(n);
    addrs.sort_by_key(dht_store::ring::id_of);
    let first = addrs[0].to_string();
    let mut nodes = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let join: &[&str] = if i == 0 { &[] } else { &["--join", &first] };
        let mut node = TestNode::new(&root.join(format!("n{i}")), *a, join);
        node.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        node.restart().await;
        nodes.push(node);
    }
    nodes
}

/// The end of the OWN walk for `key` from `start`, or what went wrong.
pub async fn walk(start: PeerAddr, key: &dht_store::protocol::HashKey) -> Result<PeerAddr, String> {
    let mut cur = start;
    for _ in 0..64 {
        let next = async {
            Client::connect(cur, AddressEncoding::Compact)
                .await?
                .own(key)
                .await
        }
        .await
        .map_err(|e| format!("{cur}: {e}"))?;
        if next == cur {
            return Ok(cur);
        }
        cur = next;
    }
    Err(format!("OWN walk from {start} for {key} did not end"))
}

/// The ring among `live` as it should be: each node's ABD names the next id round the circle,
/// and OWN walks for `walks` keys from every node end at the key's owner.
pub async fn ring_check(live: &[PeerAddr], walks: usize) -> Result<(), String> {
    let mut sorted = live.to_vec();
    sorted.sort_by_key(dht_store::ring::id_of);
    for (i, a) in sorted.iter().enumerate() {
        let want = sorted[(i + 1) % sorted.len()];
        let got = async {
            Client::connect(*a, AddressEncoding::Compact)
                .await?
                .abd()
                .await
        }
        .await
        .map_err(|e| format!("ABD at {a}: {e}"))?;
        if got != want {
            return Err(format!(
                "ABD at {a} answered {got}; its successor is {want}"
            ));
        }
    }
    for i in 0..walks {
        let key = dht_store::protocol::HashKey::of(format!("ring-check-{i}").as_bytes());
        let owner = owner_of(live, &key);
        let start = live[i % live.len()];
        let end = walk(start, &key).await?;
        if end != owner {
            return Err(format!(
                "OWN walk for {key} from {start} ended at {end}; the owner is {owner}"
            ));
        }
    }
    Ok(())
}

/// One look at the data among `live`: every key of `acked` served by its owner with its value.
/// `exact`: and the nodes hold no other entries: one owned entry per key, and K copies more of
/// each (the nodes' `replicas`, fewer in a ring of at most K nodes), no copy left anywhere else.
pub async fn placement(
    live: &[PeerAddr],
    acked: &std::collections::HashMap<dht_store::protocol::HashKey, Vec<u8>>,
    exact: bool,
) -> Result<(), String> {
    placement_within(live, acked, exact.then_some(0)).await
}

/// [`placement`], where the owners' `keys` may add up to `extra` more than the keys acknowledged:
/// a write answered `F` (or not at all) may have been stored (at its owner, when a replica did
/// not hold it in time), and then has its copies like any other. `None`: the totals are not
/// checked.
pub async fn placement_within(
    live: &[PeerAddr],
    acked: &std::collections::HashMap<dht_store::protocol::HashKey, Vec<u8>>,
    extra: Option<usize>,
) -> Result<(), String> {
    let mut clients = std::collections::HashMap::new();
    for a in live {
        let c = Client::connect(*a, AddressEncoding::Compact)
            .await
            .map_err(|e| e.to_string())?;
        clients.insert(*a, c);
    }
    let mut wrong = 0;
    let mut example = String::new();
    for (k, v) in acked {
        let owner = owner_of(live, k);
        let got = clients
            .get_mut(&owner)
            .expect("a client per node")
            .get(k)
            .await
            .map_err(|e| e.to_string())?;
        if got != dht_store::client::Lookup::Found(v.clone()) {
            wrong += 1;
            example = format!("{k} at {owner}: {got:?}");
        }
    }
    if wrong > 0 {
        return Err(format!(
            "{wrong} of {} keys not served by their owner, e.g. {example}",
            acked.len()
        ));
    }
    if let Some(unsure) = extra {
        // Each key on its owner and its K predecessors (issue 17): the nodes own (INF `keys`)
        // one entry per key in all, and hold (INF `copies`) K copies more of each, K as low as
        // the ring is small (every node holds everything in a ring of at most K + 1).
        let (mut owned, mut copies, mut k) = (0, 0, None);
        for (a, c) in clients.iter_mut() {
            let text = c.inf().await.map_err(|e| e.to_string())?;
            let held = Held::of(&text).map_err(|e| format!("INF at {a}: {e}"))?;
            owned += held.owned;
            copies += held.copies;
            if *k.get_or_insert(held.replicas) != held.replicas {
                return Err(format!("the nodes keep different numbers of replicas: {a}"));
            }
        }
        let k = k.unwrap_or(0).min(live.len().saturating_sub(1)) as u64;
        let n = acked.len() as u64;
        let most = n + unsure as u64;
        if owned < n || owned > most || copies != k * owned {
            let owned_range = if unsure == 0 {
                n.to_string()
            } else {
                format!("{n} to {most}")
            };
            return Err(format!(
                "{owned} entries owned and {copies} copies held for {n} keys acknowledged and \
                 {unsure} unsure (K = {k}: {owned_range} owned and K times as many copies \
                 expected)"
            ));
        }
    }
    Ok(())
}

/// What a node's INF says it holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// `keys`: live entries in the arc the node owns.
    pub owned: u64,
    /// `copies`: the other live entries it holds (copies of its successors' arcs, and any it
    /// should not hold); 0 for a node of before issue 17.
    pub copies: u64,
    /// `replicas`: the copies it keeps besides the owner's, K (0 for a node of before).
    pub replicas: usize,
}

impl Held {
    pub fn of(text: &str) -> Result<Held, String> {
        let line = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .map(|n| n.parse::<u64>().map_err(|e| format!("{name}{n}: {e}")))
        };
        Ok(Held {
            owned: line("keys ").ok_or("no keys line")??,
            copies: line("copies ").transpose()?.unwrap_or(0),
            replicas: line("replicas ").transpose()?.unwrap_or(0) as usize,
        })
    }

    /// Every live entry the node holds, owned or not.
    pub fn total(&self) -> u64 {
        self.owned + self.copies
    }
}

/// What the node at `addr` holds, from its INF.
pub async fn held_at(addr: PeerAddr) -> Result<Held, String> {
    let text = inf_at(addr).await?;
    Held::of(&text).map_err(|e| format!("INF at {addr}: {e}: {text}"))
}

/// Retries `check` every 300 ms until it passes; after `limit`, fails with the last thing it
/// saw wrong and the nodes' logs.
pub async fn settle<F, Fut>(
    what: &str,
    limit: Duration,
    logs: &[&TestNode],
    mut check: F,
) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(()) => return start.elapsed(),
            Err(e) if start.elapsed() > limit => {
                let logs: Vec<String> = logs
                    .iter()
                    .map(|n| format!("== {}\n{}", n.addr, n.log_text()))
                    .collect();
                panic!(
                    "{what} not within {limit:?}: {e}\n--- logs ---\n{}",
                    logs.join("\n")
                );
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// A small seeded PRNG (splitmix64): randomised tests print their seed and replay with it.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `0..n` (`n` > 0), as an index.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// A random HashKey.
    pub fn key(&mut self) -> dht_store::protocol::HashKey {
        let mut k = [0u8; 20];
        for chunk in k.chunks_mut(8) {
            let r = self.next_u64().to_be_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        dht_store::protocol::HashKey(k)
    }

    /// `true` with probability `p` in [0, 1].
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// The INF text of the node at `addr`.
pub async fn inf_at(addr: PeerAddr) -> Result<String, String> {
    async {
        Client::connect(addr, AddressEncoding::Compact)
            .await?
            .inf()
            .await
    }
    .await
    .map_err(|e| format!("INF at {addr}: {e}"))
}

/// How many replicas a node's INF names (`replicas K (held by: A, B)`); 0 if none.
pub fn replicas_named(inf: &str) -> usize {
    inf.lines()
        .find_map(|l| l.strip_prefix("replicas "))
        .and_then(|l| l.split_once("(held by:"))
        .map_or(0, |(_, held)| {
            held.trim_end_matches(')')
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .count()
        })
}

/// Waits until the ring among `live` is whole ([`ring_check`]) and every node names
/// `min(replicas, live - 1)` replicas in INF (a node finds them in its maintenance rounds);
/// returns how long that took, or what was still wrong after `limit`.
pub async fn wait_replicas(
    live: &[PeerAddr],
    replicas: usize,
    limit: Duration,
) -> Result<Duration, String> {
    let want = replicas.min(live.len().saturating_sub(1));
    let start = Instant::now();
    loop {
        let mut wrong = ring_check(live, 20).await.err();
        for a in live {
            if wrong.is_some() || want == 0 {
                break;
            }
            let named = replicas_named(&inf_at(*a).await?);
            if named != want {
                wrong = Some(format!("{a} names {named} replicas, not {want}"));
            }
        }
        match wrong {
            None => return Ok(start.elapsed()),
            Some(e) if start.elapsed() > limit => return Err(e),
            Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The entries a node holds, owned or not, as its INF counts them (`keys`, live entries of the
/// arc it owns, plus `copies`, the other live entries it holds: issue 17).
pub async fn keys_held_at(addr: PeerAddr) -> Result<u64, String> {
    held_at(addr).await.map(|h| h.total())
}

/// Which of `keys` the data directory `data` holds, with their values, read from the directory
/// itself (the node on it must be stopped: the directory is locked while a node runs). This sees
/// what a node holds whether or not it owns the key, which no request to a running node shows
/// (a non-owner answers `N` to GET and EXI).
pub fn held_on_disk<'a>(
    data: &Path,
    keys: impl IntoIterator<Item = &'a dht_store::protocol::HashKey>,
) -> Result<std::collections::HashMap<dht_store::protocol::HashKey, Vec<u8>>, String> {
    let storage = dht_store::storage::Storage::open(data, &Default::default())
        .map_err(|e| format!("opening {}: {e}", data.display()))?;
    let mut held = std::collections::HashMap::new();
    for k in keys {
        if let Some(v) = storage
            .get(k)
            .map_err(|e| format!("reading {k} in {}: {e}", data.display()))?
        {
            held.insert(*k, v.to_vec());
        }
    }
    Ok(held)
}

/// A test's directory (data and logs), removed at the end unless the variable `keep` is set
/// (then its path is printed, for a look after a failure).
pub struct Root {
    _dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Root {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A new [`Root`], kept if the environment variable `keep` is set.
pub fn temp_root(keep: &str) -> Root {
    let dir = tempfile::tempdir().unwrap();
    if std::env::var_os(keep).is_some() {
        let path = dir.keep();
        println!("data and logs kept in {}", path.display());
        return Root { _dir: None, path };
    }
    let path = dir.path().to_path_buf();
    Root {
        _dir: Some(dir),
        path,
    }
}

/// Puts `value` through `r`, again (up to 10 tries, 200 ms apart) while it is answered `F`:
/// right after a ring change an owner may still name a node that is gone among its replicas
/// (until it finds them again, within a maintenance round), and a client retries.
pub async fn put_retrying(
    r: &mut dht_store::client::Router,
    key: &dht_store::protocol::HashKey,
    value: &[u8],
) -> bool {
    for _ in 0..10 {
        if r.put(key, value).await.unwrap() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}
