//! The node's metrics, served in Prometheus text at `http://<metrics_listen>/metrics` (README.md,
//! "Metrics", lists them all).
//!
//! Off unless `metrics_listen` is set. Then [`install`] binds the endpoint (with the node's
//! port, before a new data directory is created, so that an address in use fails at once) and installs the recorder of
//! `metrics-exporter-prometheus` as the `metrics` facade's global recorder; that crate keeps
//! the registry and writes the text format. The node serves the scrapes itself, as it serves
//! its other sockets: a few at once, each under a timeout, so that nobody can hold the endpoint
//! with idle connections.
//!
//! The rest of the node reports through the named functions here, never through the facade
//! directly. When metrics are off each is one atomic load and a branch. When on, a request
//! costs two clock reads, one counter increment on a handle registered once (the first time
//! each command and answer is seen) and three atomic additions to [`Latency`], a fixed-bucket
//! histogram of this module (the exporter's own histograms keep every sample until they are
//! drained: 170 ns and an allocation every 64 samples, against some 20 ns here; BENCHMARKS.md,
//! "Metrics"): no registry lookup and no allocation per request.
//! `storage/` does not call this module: it records through the facade's macros under the
//! names of `storage::metric` (no-ops without a recorder), and this module describes them.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::protocol::{PeerAddr, Request, Status, COMMANDS};
use crate::ring::Peer;
use crate::storage::{metric as storage_metric, Storage};

/// The handles, set once by [`install`]; unset (metrics off) every report is a no-op.
static HANDLES: OnceLock<Handles> = OnceLock::new();

/// Index of INF in [`COMMANDS`] (the `command` label): it answers with a value, not a status or
/// an address.
const INF: usize = 8;
/// The `answer` label: the last status byte the request wrote, else what it wrote instead
/// (`addr`: OWN, ABD; `value`: INF), or `closed` when the request ended the connection (a
/// protocol error, a value over the limit, a dead socket, a storage error on a read).
const ANSWERS: [&str; 6] = ["T", "F", "N", "addr", "value", "closed"];
/// The `reason` label of connections ended by the node for what their peer did (or did not).
const DROPS: [&str; 4] = ["timeout", "io", "protocol", "error"];

const REQUESTS: &str = "dht_store_requests_total";
const REQUEST_SECONDS: &str = "dht_store_request_seconds";
const INFO: &str = "dht_store_info";
const CONNECTIONS_OPEN: &str = "dht_store_connections_open";
const CONNECTIONS_ACCEPTED: &str = "dht_store_connections_accepted_total";
const CONNECTIONS_DROPPED: &str = "dht_store_connections_dropped_total";
const KEYS: &str = "dht_store_keys";
const VALUE_BYTES: &str = "dht_store_value_bytes";
const TOTALS_SCAN_SECONDS: &str = "dht_store_totals_scan_seconds";
const HANDOFF_ENTRIES: &str = "dht_store_handoff_entries_total";
const HANDOFF_BYTES: &str = "dht_store_handoff_bytes_total";
const BACKUP_ENTRIES: &str = "dht_store_backup_entries_total";
const BACKUP_BYTES: &str = "dht_store_backup_bytes_total";
const BACKUPS: &str = "dht_store_backups_total";

/// Buckets of the latency histograms, seconds: 50 µs (a GET on loopback) to 30 s (a handoff
/// is one CON or DIS request, and may take longer: it lands in +Inf).
const SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];
/// Buckets of the group commit's changes per flush: one writer alone up to a large crowd.
const CHANGES_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// Scrapes served at once; more wait in the kernel's backlog.
const SCRAPES: usize = 4;
/// A scrape must send its request and take its answer within this.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest request head read from a scraper.
const HEAD_MAX: usize = 8 << 10;
/// How often the exporter's histograms are drained into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// The keys and bytes gauges are rescanned no sooner than this after the last scan ended...
const TOTALS_MIN_GAP: Duration = Duration::from_secs(5);
/// ...nor sooner than this many times the last scan's duration (a scan of millions of entries
/// takes seconds; this keeps it under 5% of one core).
const TOTALS_GAP_FACTOR: u32 = 20;

/// Longest totals scan: past it the gauges show what was counted (lower bounds).
const TOTALS_SCAN_LIMIT: Duration = Duration::from_secs(20);

/// Every handle of the node's own metrics.
struct Handles {
    /// `dht_store_requests_total{command, answer}`, each registered when first seen, so that
    /// the page lists the pairs that happened rather than every impossible one at 0.
    requests: [[OnceLock<Counter>; ANSWERS.len()]; COMMANDS.len()],
    /// `dht_store_request_seconds{command}`, rendered for the commands seen.
    latency: [Latency; COMMANDS.len()],
    /// Connections being served now.
    connections_open: Gauge,
    /// Connections accepted since the start.
    connections_accepted: Counter,
    /// Connections ended by the node, by [`DROPS`] reason.
    connections_dropped: [Counter; DROPS.len()],
    /// Entries streamed in handoffs: `[sent, received]`.
    handoff_entries: [Counter; 2],
    /// Value bytes streamed in handoffs: `[sent, received]`.
    handoff_bytes: [Counter; 2],
    /// Entries written by backups of the running node.
    backup_entries: Counter,
    /// Value bytes written by backups of the running node.
    backup_bytes: Counter,
    /// Backups of the running node that ended: `[ok, failed]`.
    backups: [Counter; 2],
    /// Entries held, from the last totals scan.
    keys: Gauge,
    /// Sum of the held values' lengths, from the last totals scan.
    value_bytes: Gauge,
    /// How long the last totals scan took.
    totals_scan_seconds: Gauge,
}

impl Handles {
    fn register() -> Handles {
        let dropped = DROPS.map(|r| metrics::counter!(CONNECTIONS_DROPPED, "reason" => r));
        let dir = |name: &'static str| {
            ["sent", "received"].map(|d| metrics::counter!(name, "direction" => d))
        };
        Handles {
            requests: [const { [const { OnceLock::new() }; ANSWERS.len()] }; COMMANDS.len()],
            latency: [const { Latency::new() }; COMMANDS.len()],
            connections_open: metrics::gauge!(CONNECTIONS_OPEN),
            connections_accepted: metrics::counter!(CONNECTIONS_ACCEPTED),
            connections_dropped: dropped,
            handoff_entries: dir(HANDOFF_ENTRIES),
            handoff_bytes: dir(HANDOFF_BYTES),
            backup_entries: metrics::counter!(BACKUP_ENTRIES),
            backup_bytes: metrics::counter!(BACKUP_BYTES),
            backups: ["ok", "failed"].map(|o| metrics::counter!(BACKUPS, "outcome" => o)),
            keys: metrics::gauge!(KEYS),
            value_bytes: metrics::gauge!(VALUE_BYTES),
            totals_scan_seconds: metrics::gauge!(TOTALS_SCAN_SECONDS),
        }
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        INFO,
        "Always 1; the labels name the build's version and the node's address and id."
    );
    describe_counter!(
        REQUESTS,
        "Requests served, by command and answer (T, F, N; addr for OWN and ABD, value for \
         INF; closed when the request ended the connection)."
    );
    describe_gauge!(CONNECTIONS_OPEN, "Connections being served now.");
    describe_counter!(CONNECTIONS_ACCEPTED, "Connections accepted.");
    describe_counter!(
        CONNECTIONS_DROPPED,
        "Connections the node ended, by reason: timeout (silent or stalled peer), io, protocol \
         (input breaking the protocol or its limits), error (a failed read or handoff)."
    );
    describe_gauge!(
        KEYS,
        "Entries held, owned or not, as of the last totals scan (rescanned after changes, at \
         most every 5 s and every 20 times the scan's duration)."
    );
    describe_gauge!(
        VALUE_BYTES,
        "Sum of the held values' lengths in bytes, as of the last totals scan."
    );
    describe_gauge!(
        TOTALS_SCAN_SECONDS,
        "Seconds the last scan behind dht_store_keys and dht_store_value_bytes took."
    );
    describe_histogram!(
        storage_metric::FLUSH_CHANGES,
        "Changes made durable by one group-commit flush."
    );
    describe_histogram!(
        storage_metric::FLUSH_SECONDS,
        "Seconds one group-commit flush took: sled's flush, fdatasync of its log, syncfs when \
         blob files may have appeared."
    );
    describe_gauge!(
        storage_metric::WRITE_FAILED,
        "1 once a write failed and the node stopped taking writes (it still serves reads; \
         restart it once the cause is fixed), else 0."
    );
    describe_counter!(
        HANDOFF_ENTRIES,
        "Entries streamed in handoffs (CON, DIS), by direction: sent or received."
    );
    describe_counter!(
        HANDOFF_BYTES,
        "Value bytes streamed in handoffs, by direction: sent or received."
    );
    describe_counter!(
        BACKUP_ENTRIES,
        "Entries written by backups taken through this node."
    );
    describe_counter!(
        BACKUP_BYTES,
        "Value bytes written by backups taken through this node."
    );
    describe_counter!(
        BACKUPS,
        "Backups taken through this node that ended, by outcome: ok or failed."
    );
}

/// Whether metrics are kept in this process.
pub fn enabled() -> bool {
    HANDLES.get().is_some()
}

/// A request being served, timed from [`request`] to [`RequestTimer::done`].
pub struct RequestTimer {
    /// The handles (metrics are on).
    handles: &'static Handles,
    /// Index of the command in [`COMMANDS`].
    command: usize,
    /// When the request was read.
    started: Instant,
}

/// Starts timing `req`; `None` when metrics are off.
pub fn request(req: &Request) -> Option<RequestTimer> {
    let handles = HANDLES.get()?;
    Some(RequestTimer {
        handles,
        command: req.index(),
        started: Instant::now(),
    })
}

impl RequestTimer {
    /// Counts the request by its answer (`status`: the last status byte it wrote, if any;
    /// `closed`: it ended the connection) and records its latency.
    pub fn done(self, status: Option<Status>, closed: bool) {
        let answer = match (closed, status) {
            (true, _) => 5,
            (false, Some(Status::T)) => 0,
            (false, Some(Status::F)) => 1,
            (false, Some(Status::N)) => 2,
            (false, None) if self.command == INF => 4,
            (false, None) => 3,
        };
        let command = COMMANDS[self.command];
        self.handles.requests[self.command][answer]
            .get_or_init(
                || metrics::counter!(REQUESTS, "command" => command, "answer" => ANSWERS[answer]),
            )
            .increment(1);
        self.handles.latency[self.command].record(self.started.elapsed());
    }
}

/// A histogram of request latencies with the fixed buckets [`SECONDS_BUCKETS`], in atomics:
/// recording a sample is three relaxed additions, and a scrape renders it beside the
/// exporter's page ([`render_latencies`]).
struct Latency {
    /// Samples per bucket, not cumulative: `buckets[i]` holds those over bucket `i - 1` and at
    /// most `SECONDS_BUCKETS[i]`; the last one those over every bound (`+Inf`).
    buckets: [AtomicU64; SECONDS_BUCKETS.len() + 1],
    /// Sum of the samples, in nanoseconds (584 years of them fit).
    sum_nanos: AtomicU64,
}

impl Latency {
    const fn new() -> Latency {
        Latency {
            buckets: [const { AtomicU64::new(0) }; SECONDS_BUCKETS.len() + 1],
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn record(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = SECONDS_BUCKETS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(SECONDS_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Appends the samples of `command` in the text format, if it has any. Buckets are read one
    /// by one while requests go on, so the cumulative counts stay monotone and `_count` is the
    /// `+Inf` bucket; `_sum` may hold a sample or two more or less.
    fn render(&self, command: &str, out: &mut String) {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        if counts.iter().all(|&n| n == 0) {
            return;
        }
        let mut total = 0;
        for (i, n) in counts.iter().enumerate() {
            total += n;
            let le = match SECONDS_BUCKETS.get(i) {
                Some(bound) => bound.to_string(),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(
                out,
                "{REQUEST_SECONDS}_bucket{{command=\"{command}\",le=\"{le}\"}} {total}"
            );
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{REQUEST_SECONDS}_sum{{command=\"{command}\"}} {sum}");
        let _ = writeln!(
            out,
            "{REQUEST_SECONDS}_count{{command=\"{command}\"}} {total}"
        );
    }
}

/// `dht_store_request_seconds` in the text format, for the commands seen so far.
fn render_latencies(h: &Handles) -> String {
    let mut out = format!(
        "# HELP {REQUEST_SECONDS} Seconds from a request read to its answer flushed, by command \
         (a CON or DIS is a whole handoff).\n# TYPE {REQUEST_SECONDS} histogram\n"
    );
    for (latency, command) in h.latency.iter().zip(COMMANDS) {
        latency.render(command, &mut out);
    }
    out
}

/// An accepted connection, counted open until dropped.
pub struct OpenConnection {
    /// The handles, if metrics are on.
    handles: Option<&'static Handles>,
}

/// Counts a connection accepted; it counts as open until the returned guard is dropped.
pub fn connection_accepted() -> OpenConnection {
    let handles = HANDLES.get();
    if let Some(h) = handles {
        h.connections_accepted.increment(1);
        h.connections_open.increment(1.0);
    }
    OpenConnection { handles }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Some(h) = self.handles {
            h.connections_open.decrement(1.0);
        }
    }
}

/// Counts a connection the node ends because of `e`.
pub fn connection_dropped(e: &Error) {
    let Some(h) = HANDLES.get() else {
        return;
    };
    let reason = match e {
        Error::Timeout => 0,
        Error::Io(_) => 1,
        Error::UnknownCommand(_)
        | Error::Truncated
        | Error::ValueTooLarge { .. }
        | Error::BadAddress(_)
        | Error::BadStatus(_) => 2,
        _ => 3,
    };
    h.connections_dropped[reason].increment(1);
}

/// Which way handoff entries go.
#[derive(Clone, Copy, Debug)]
pub enum Direction {
    Sent = 0,
    Received = 1,
}

/// Counts `entries` entries of `bytes` value bytes streamed in a handoff.
pub fn handoff(direction: Direction, entries: u64, bytes: u64) {
    if let Some(h) = HANDLES.get() {
        h.handoff_entries[direction as usize].increment(entries);
        h.handoff_bytes[direction as usize].increment(bytes);
    }
}

/// Counts `entries` entries of `bytes` value bytes written by a backup.
pub fn backup_progress(entries: u64, bytes: u64) {
    if let Some(h) = HANDLES.get() {
        h.backup_entries.increment(entries);
        h.backup_bytes.increment(bytes);
    }
}

/// Counts a backup that ended.
pub fn backup_done(ok: bool) {
    if let Some(h) = HANDLES.get() {
        h.backups[usize::from(!ok)].increment(1);
    }
}

/// The bound endpoint and the installed recorder, not serving yet ([`Exporter::start`]).
pub struct Exporter {
    /// The endpoint's socket.
    listener: TcpListener,
    /// Renders the text format and drains histograms.
    handle: PrometheusHandle,
}

/// Binds the metrics endpoint at `addr` and installs the recorder for the node `me`. Fails
/// with a sentence naming the address if it cannot be bound, or if this process already has
/// a recorder (a second node in one process).
pub async fn install(addr: SocketAddr, me: PeerAddr) -> Result<Exporter> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::IoAt {
            what: format!("cannot listen on {addr} for metrics (metrics_listen)"),
            source,
        })?;
    let bad = |e: metrics_exporter_prometheus::BuildError| Error::Config(format!("metrics: {e}"));
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(storage_metric::FLUSH_SECONDS.into()),
            SECONDS_BUCKETS,
        )
        .map_err(bad)?
        .set_buckets_for_metric(
            Matcher::Full(storage_metric::FLUSH_CHANGES.into()),
            CHANGES_BUCKETS,
        )
        .map_err(bad)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| {
        Error::Config(format!(
            "metrics_listen: this process already keeps metrics ({e})"
        ))
    })?;
    describe();
    let id = Peer::new(me).id;
    metrics::gauge!(
        INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "address" => me.to_string(),
        "id" => id.to_string()
    )
    .set(1.0);
    metrics::gauge!(storage_metric::WRITE_FAILED).set(0.0);
    let _ = HANDLES.set(Handles::register());
    info!("metrics at http://{addr}/metrics");
    Ok(Exporter { listener, handle })
}

/// The endpoint's tasks, stopped by [`Running::close`].
pub struct Running {
    /// The scrape server, the upkeep and the totals scan.
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    pub fn close(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

impl Exporter {
    /// Serves scrapes, drains histograms, and keeps the keys and bytes gauges of `storage`.
    pub fn start(self, storage: &Arc<Storage>) -> Running {
        let Exporter { listener, handle } = self;
        let upkeep = {
            let handle = handle.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(UPKEEP_EVERY).await;
                    handle.run_upkeep();
                }
            })
        };
        let totals = match HANDLES.get() {
            Some(h) => tokio::spawn(keep_totals(Arc::downgrade(storage), h)),
            None => tokio::spawn(async {}),
        };
        Running {
            tasks: vec![tokio::spawn(serve(listener, handle)), upkeep, totals],
        }
    }
}

/// Accepts scrapes, [`SCRAPES`] at once.
async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    let limit = Arc::new(Semaphore::new(SCRAPES));
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let socket = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(SCRAPE_TIMEOUT, scrape(socket, &handle)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!("metrics scrape failed: {e}"),
                Err(_) => debug!("metrics scrape timed out"),
            }
            drop(permit);
        });
    }
}

/// Answers one HTTP request: the text format for `GET /metrics`, an error status otherwise;
/// then closes.
async fn scrape(mut socket: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head_complete(&head) {
        if head.len() > HEAD_MAX {
            return respond(&mut socket, "400 Bad Request", "").await;
        }
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            let mut page = handle.render();
            if let Some(h) = HANDLES.get() {
                page.push('\n');
                page.push_str(&render_latencies(h));
            }
            respond(&mut socket, "200 OK", &page).await
        }
        ("GET", _) => respond(&mut socket, "404 Not Found", "try /metrics\n").await,
        _ => respond(&mut socket, "405 Method Not Allowed", "").await,
    }
}

/// Whether `head` holds a whole HTTP request head (an empty line ends it).
fn head_complete(head: &[u8]) -> bool {
    head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n")
}

async fn respond(socket: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(body.as_bytes()).await?;
    socket.shutdown().await
}

/// Keeps `dht_store_keys` and `dht_store_value_bytes`: a scan of the data tree at start, then
/// again once the storage changed, no sooner than [`TOTALS_MIN_GAP`] and
/// [`TOTALS_GAP_FACTOR`] times the last scan's duration after it. The node counts neither
/// its keys nor their bytes as it writes (replacements, handoffs, arc deletions and restores
/// would all have to), so the gauges lag the writes by a few seconds.
async fn keep_totals(storage: Weak<Storage>, h: &'static Handles) {
    let mut scanned_at: Option<u64> = None;
    let mut next = Instant::now();
    loop {
        let Some(s) = storage.upgrade() else {
            return;
        };
        let changes = s.changes();
        if scanned_at != Some(changes) && Instant::now() >= next {
            let started = Instant::now();
            // Bounded, so that a shutdown never waits long for it (it holds the storage).
            let deadline = std::time::Instant::now() + TOTALS_SCAN_LIMIT;
            let totals = tokio::task::spawn_blocking(move || s.tally(deadline)).await;
            let took = started.elapsed();
            match totals {
                Ok(Ok(t)) => {
                    h.keys.set(t.keys as f64);
                    h.value_bytes.set(t.value_bytes as f64);
                    scanned_at = Some(changes);
                }
                Ok(Err(e)) => warn!("metrics: cannot count the entries held: {e}"),
                Err(e) => warn!("metrics: the count of the entries held failed: {e}"),
            }
            h.totals_scan_seconds.set(took.as_secs_f64());
            next = Instant::now() + TOTALS_MIN_GAP.max(took * TOTALS_GAP_FACTOR);
        } else {
            drop(s);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_ends_at_an_empty_line() {
        assert!(head_complete(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(head_complete(b"GET /metrics HTTP/1.0\n\n"));
        assert!(!head_complete(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"));
        assert!(!head_complete(b""));
    }

    /// Buckets are cumulative and bounded inclusively, the count is the +Inf bucket, the sum
    /// is in seconds, and a command without samples renders nothing.
    #[test]
    fn latencies_render_as_a_prometheus_histogram() {
        let l = Latency::new();
        let mut out = String::new();
        l.render("GET", &mut out);
        assert_eq!(out, "");
        l.record(Duration::from_micros(50));
        l.record(Duration::from_micros(51));
        l.record(Duration::from_millis(1));
        l.record(Duration::from_secs(100));
        l.render("GET", &mut out);
        let line =
            |le: &str| format!("dht_store_request_seconds_bucket{{command=\"GET\",le=\"{le}\"}} ");
        let value = |prefix: &str| -> String {
            let l = out.lines().find(|l| l.starts_with(prefix)).unwrap();
            l[prefix.len()..].to_string()
        };
        assert_eq!(value(&line("0.00005")), "1");
        assert_eq!(value(&line("0.0001")), "2");
        assert_eq!(value(&line("0.0005")), "2");
        assert_eq!(value(&line("0.001")), "3");
        assert_eq!(value(&line("30")), "3");
        assert_eq!(value(&line("+Inf")), "4");
        assert_eq!(
            value("dht_store_request_seconds_count{command=\"GET\"} "),
            "4"
        );
        let sum: f64 = value("dht_store_request_seconds_sum{command=\"GET\"} ")
            .parse()
            .unwrap();
        assert!((sum - 100.001101).abs() < 1e-9, "{sum}");
        assert_eq!(out.lines().count(), SECONDS_BUCKETS.len() + 3);
    }

    #[test]
    fn every_command_has_its_label() {
        use crate::protocol::HashKey;
        let a = PeerAddr::new([127, 0, 0, 1].into(), 1);
        for r in &Request::one_of_each(HashKey::ZERO, a) {
            let label = COMMANDS[r.index()];
            assert_eq!(label.as_bytes(), r.command(), "{r:?}");
        }
        assert_eq!(COMMANDS[INF], "INF");
    }
}
