//! Node configuration: built-in defaults, then a TOML file (`--config`), then environment
//! variables (`DHT_STORE_*`), then command-line flags, each overriding the one before.
//!
//! `config/node.toml` is a commented example holding every setting at its default.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::protocol::{AddressEncoding, Limits, PeerAddr};
use crate::storage::StorageOptions;

/// Everything a node can be told. Field docs are the reference; `config/node.toml` mirrors them.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The data directory: sled database, ring state, lock file. Created if missing.
    pub data: PathBuf,
    /// The IPv4 address the node advertises to peers (and listens on unless `listen` is set).
    /// The node's id is SHA-1 of "host:port", so it must be how peers reach this node.
    pub host: Ipv4Addr,
    /// TCP port to listen on and advertise.
    pub port: u16,
    /// Address to bind, when it differs from `host` (e.g. 0.0.0.0 behind NAT).
    pub listen: Option<Ipv4Addr>,
    /// Any member of an existing ring, HOST:PORT, to join through. Ignored when the data
    /// directory already holds ring state for this address.
    pub join: Option<String>,
    /// How PeerAddresses travel: `compact` (6 bytes) or `text` (old peers). One per ring.
    pub address_encoding: AddressEncoding,
    /// Largest value accepted, in bytes; larger ones get `F` and the connection is closed.
    pub max_value_size: u64,
    /// Most client connections served at once; further ones wait in the accept backlog.
    pub max_connections: usize,
    /// Seconds a connection may stay silent between requests before it is closed (0: never).
    pub idle_timeout_secs: u64,
    /// Seconds a connection may stall inside a message or a write (0: never).
    pub io_timeout_secs: u64,
    /// sled's page cache, in MiB: the bulk of the node's memory use.
    pub cache_capacity_mb: u64,
    /// Seconds in-flight requests get to finish after SIGINT/SIGTERM before the node flushes
    /// and exits anyway.
    pub shutdown_grace_secs: u64,
    /// Milliseconds between two rounds of ring maintenance (PUL/ABD of the successor, one
    /// finger, the predecessor).
    pub maintenance_interval_ms: u64,
    /// Consecutive failed PULs after which the successor counts as dead.
    pub dead_after: u32,
    /// Fingers kept, at id + 2^159, id + 2^158, ...: more shortens OWN walks.
    pub fingers: usize,
    /// Length of the successor list, refreshed every maintenance round by ABD: the ring
    /// survives `successors - 1` adjacent nodes dying at once without a search. It must be at
    /// least `replicas + 2`: a node holds the arcs of its `replicas` successors and must know
    /// who holds the arc after them before it drops a copy of it.
    pub successors: usize,
    /// K, the copies of every entry kept besides its owner's: each node also holds the arcs of
    /// its K successors, so an entry lives on its owner and the owner's K predecessors and
    /// outlives any K nodes. A write is answered `T` only once every copy is durable. 0: one
    /// copy, as plain PROTOCOL.md. Every node of a ring should have the same value.
    pub replicas: usize,
    /// Milliseconds an owner waits for its replicas to hold a write durably; a replica that
    /// does not answer in time makes the write `F` (the client retries).
    pub replica_timeout_ms: u64,
    /// Seconds between two comparisons of every copy this node holds with the copy of the
    /// arc's owner (anti-entropy); they also run after every change of the ring around it.
    pub sync_interval_secs: u64,
    /// Seconds a handoff waits for INS requests already told T in the moving arc; stragglers
    /// then get F.
    pub drain_timeout_secs: u64,
    /// Seconds a handoff sender waits for the receiver's final T (its last flush).
    pub handoff_ack_timeout_secs: u64,
    /// Seconds between handoff progress lines in the log.
    pub progress_interval_secs: u64,
    /// Seconds between two repair passes (misplaced entries to their owners); passes also run
    /// at start and after every handoff.
    pub repair_interval_secs: u64,
    /// Seconds a tombstone (what a REM leaves, with its version) is kept before it is
    /// collected. Until then a copy of the key that was away (a node down, a ring apart) cannot
    /// bring the key back; a node away for longer may.
    pub tombstone_retention_secs: u64,
    /// Address and port ("127.0.0.1:9100") of an HTTP endpoint serving the node's metrics in
    /// Prometheus text at /metrics (`crate::metrics`); none: no metrics are kept. The endpoint
    /// has no authentication: bind it where only the scraper reaches it.
    pub metrics_listen: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data: PathBuf::from("dht-data"),
            host: Ipv4Addr::LOCALHOST,
            port: 5000,
            listen: None,
            join: None,
            address_encoding: AddressEncoding::Compact,
            max_value_size: 64 << 20,
            max_connections: 1024,
            idle_timeout_secs: 300,
            io_timeout_secs: 30,
            cache_capacity_mb: 64,
            shutdown_grace_secs: 10,
            maintenance_interval_ms: 1000,
            dead_after: 3,
            fingers: 8,
            successors: 4,
            replicas: 2,
            replica_timeout_ms: 5000,
            sync_interval_secs: 300,
            drain_timeout_secs: 5,
            handoff_ack_timeout_secs: 300,
            progress_interval_secs: 5,
            repair_interval_secs: 60,
            tombstone_retention_secs: 7 * 86400,
            metrics_listen: None,
        }
    }
}

/// Every setting's name, as in the TOML file (and, upper-cased after `DHT_STORE_`, in the
/// environment).
pub const SETTINGS: &[&str] = &[
    "data",
    "host",
    "port",
    "listen",
    "join",
    "address_encoding",
    "max_value_size",
    "max_connections",
    "idle_timeout_secs",
    "io_timeout_secs",
    "cache_capacity_mb",
    "shutdown_grace_secs",
    "maintenance_interval_ms",
    "dead_after",
    "fingers",
    "successors",
    "replicas",
    "replica_timeout_ms",
    "sync_interval_secs",
    "drain_timeout_secs",
    "handoff_ack_timeout_secs",
    "progress_interval_secs",
    "repair_interval_secs",
    "tombstone_retention_secs",
    "metrics_listen",
];

/// The largest `max_value_size` accepted (and the largest value a CLI client reads).
pub const MAX_VALUE_SIZE_MAX: u64 = 1 << 30;

/// Longest successor list accepted: each entry costs an ABD per maintenance round.
pub const MAX_SUCCESSORS: usize = 32;

/// Most copies besides the owner's (`replicas`): each costs a replica's round trip per write.
pub const MAX_REPLICAS: usize = 8;

/// The range a numeric setting must lie in, and the unit its message names.
pub struct Range {
    /// The setting, as in the TOML file.
    pub name: &'static str,
    /// Its command-line flag, if it has one.
    pub flag: Option<&'static str>,
    pub min: u64,
    pub max: u64,
    /// Printed after the bounds (" bytes", " s"), so the message needs no lookup.
    pub unit: &'static str,
}

const fn range(
    name: &'static str,
    flag: Option<&'static str>,
    min: u64,
    max: u64,
    unit: &'static str,
) -> Range {
    Range {
        name,
        flag,
        min,
        max,
        unit,
    }
}

/// Every numeric setting's valid range. Zero means "never" only for the two connection
/// timeouts; elsewhere it would stop the node working (a cache of 0 MiB panics inside sled, 0
/// fingers routes nothing), and the upper bounds keep a typo from asking for the impossible.
pub const RANGES: &[Range] = &[
    range("port", Some("--port"), 1, 65535, ""),
    // Twice a value in flight is held in memory (README, Memory).
    range(
        "max_value_size",
        Some("--max-value-size"),
        1,
        MAX_VALUE_SIZE_MAX,
        " bytes",
    ),
    range("max_connections", Some("--max-connections"), 1, 1 << 20, ""),
    range(
        "idle_timeout_secs",
        Some("--idle-timeout"),
        0,
        7 * 86400,
        " s (0: never)",
    ),
    range(
        "io_timeout_secs",
        Some("--io-timeout"),
        0,
        86400,
        " s (0: never)",
    ),
    range(
        "cache_capacity_mb",
        Some("--cache-capacity-mb"),
        1,
        1 << 20,
        " MiB",
    ),
    range("shutdown_grace_secs", None, 0, 3600, " s"),
    range("maintenance_interval_ms", None, 10, 600_000, " ms"),
    range("dead_after", None, 1, 1000, " rounds"),
    // One finger per bit of the 160-bit circle at most.
    range("fingers", None, 1, 160, ""),
    range("successors", None, 2, MAX_SUCCESSORS as u64, ""),
    range(
        "replicas",
        Some("--replicas"),
        0,
        MAX_REPLICAS as u64,
        " copies",
    ),
    range("replica_timeout_ms", None, 100, 600_000, " ms"),
    range("sync_interval_secs", None, 1, 86400, " s"),
    range("drain_timeout_secs", None, 1, 3600, " s"),
    range("handoff_ack_timeout_secs", None, 1, 86400, " s"),
    range("progress_interval_secs", None, 1, 3600, " s"),
    range("repair_interval_secs", None, 1, 86400, " s"),
    range("tombstone_retention_secs", None, 1, 10 * 366 * 86400, " s"),
];

fn secs(n: u64) -> Option<Duration> {
    (n > 0).then(|| Duration::from_secs(n))
}

impl Config {
    /// Defaults, overridden by the TOML file at `path` if one is given, overridden by
    /// `DHT_STORE_<SETTING>` environment variables (e.g. `DHT_STORE_DEAD_AFTER=5`). Flags are
    /// applied on top by the caller.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        Config::load_with_env(path, std::env::vars())
    }

    /// [`Config::load`] with the environment given.
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
                text.parse::<toml::Table>()
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(setting) = name.strip_prefix("DHT_STORE_") else {
                continue;
            };
            let setting = setting.to_ascii_lowercase();
            if !SETTINGS.contains(&setting.as_str()) {
                continue;
            }
            // A number or boolean as itself, anything else as a string.
            let v = format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(value));
            table.insert(setting, v);
        }
        let what = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "environment".into());
        Config::deserialize(table).map_err(|e| Error::Config(format!("{what}: {e}")))
    }

    /// Checks every setting before anything is created: each number against its range (in
    /// [`RANGES`]), and the addresses that cannot be advertised.
    pub fn validate(&self) -> Result<()> {
        for (name, value) in self.numbers() {
            let Some(r) = RANGES.iter().find(|r| r.name == name) else {
                continue;
            };
            if !(r.min..=r.max).contains(&value) {
                let flag = r.flag.map(|f| format!("{f}, ")).unwrap_or_default();
                return Err(Error::Config(format!(
                    "{name} ({flag}DHT_STORE_{env}) must be from {} to {}{}; got {value}",
                    r.min,
                    r.max,
                    r.unit,
                    env = name.to_ascii_uppercase(),
                )));
            }
        }
        if self.successors < self.replicas + 2 {
            return Err(Error::Config(format!(
                "successors (DHT_STORE_SUCCESSORS) must be at least replicas + 2 = {}: a node \
                 holds the arcs of its {} successors and must know the one after them; got {}",
                self.replicas + 2,
                self.replicas,
                self.successors
            )));
        }
        if self.port == 0 {
            return Err(Error::Config(
                "port 0 cannot be advertised to peers: give a port number".into(),
            ));
        }
        if self.host.is_unspecified() {
            return Err(Error::Config(
                "host 0.0.0.0 cannot be advertised to peers: give the address they reach this \
                 node at, and use --listen 0.0.0.0 to bind every interface"
                    .into(),
            ));
        }
        if let Some(j) = &self.join {
            crate::protocol::parse_addr(j)?;
        }
        self.metrics_addr()?;
        Ok(())
    }

    /// Every numeric setting with its value, for [`Config::validate`].
    fn numbers(&self) -> [(&'static str, u64); 19] {
        [
            ("port", self.port.into()),
            ("max_value_size", self.max_value_size),
            ("max_connections", self.max_connections as u64),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("io_timeout_secs", self.io_timeout_secs),
            ("cache_capacity_mb", self.cache_capacity_mb),
            ("shutdown_grace_secs", self.shutdown_grace_secs),
            ("maintenance_interval_ms", self.maintenance_interval_ms),
            ("dead_after", self.dead_after.into()),
            ("fingers", self.fingers as u64),
            ("successors", self.successors as u64),
            ("replicas", self.replicas as u64),
            ("replica_timeout_ms", self.replica_timeout_ms),
            ("sync_interval_secs", self.sync_interval_secs),
            ("drain_timeout_secs", self.drain_timeout_secs),
            ("handoff_ack_timeout_secs", self.handoff_ack_timeout_secs),
            ("progress_interval_secs", self.progress_interval_secs),
            ("repair_interval_secs", self.repair_interval_secs),
            ("tombstone_retention_secs", self.tombstone_retention_secs),
        ]
    }

    /// The address of the metrics endpoint, if `metrics_listen` is set (checked: an IP address
    /// and a port other than 0).
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>> {
        let Some(text) = &self.metrics_listen else {
            return Ok(None);
        };
        match text.trim().parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 => Ok(Some(a)),
            _ => Err(Error::Config(format!(
                "metrics_listen must be an IP address and a port other than 0, such as \
                 127.0.0.1:9100; got {text:?}"
            ))),
        }
    }

    /// The address peers reach this node at; its id derives from it.
    pub fn advertised(&self) -> PeerAddr {
        PeerAddr::new(self.host, self.port)
    }

    /// The address to bind.
    pub fn bind_addr(&self) -> PeerAddr {
        PeerAddr::new(self.listen.unwrap_or(self.host), self.port)
    }

    pub fn join_addr(&self) -> Result<Option<PeerAddr>> {
        self.join
            .as_deref()
            .map(crate::protocol::parse_addr)
            .transpose()
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_value: self.max_value_size,
            idle_timeout: secs(self.idle_timeout_secs),
            io_timeout: secs(self.io_timeout_secs),
        }
    }

    pub fn storage(&self) -> StorageOptions {
        StorageOptions {
            cache_capacity: self.cache_capacity_mb << 20,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/node.toml");
        let c = Config::load_with_env(Some(&path), []).unwrap();
        let d = Config::default();
        assert_eq!(format!("{c:?}"), format!("{d:?}"));
    }

    #[test]
    fn environment_overrides_the_file_and_ignores_other_variables() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "port = 6000\ndead_after = 9\n").unwrap();
        let env = [
            ("DHT_STORE_DEAD_AFTER", "5"),
            ("DHT_STORE_HOST", "127.0.0.2"),
            ("DHT_STORE_FAULT", "x"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let c = Config::load_with_env(Some(&p), env).unwrap();
        assert_eq!(c.port, 6000);
        assert_eq!(c.dead_after, 5);
        assert_eq!(c.host, Ipv4Addr::new(127, 0, 0, 2));
    }

    #[test]
    fn every_setting_is_listed() {
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/node.toml"))
                .unwrap();
        for s in SETTINGS {
            assert!(
                text.contains(&format!("{s} =")),
                "config/node.toml lacks {s}"
            );
        }
        let debug = format!("{:?}", Config::default());
        for s in SETTINGS {
            assert!(
                debug.contains(&format!("{s}:")),
                "SETTINGS names {s}, Config has no such field"
            );
        }
    }

    #[test]
    fn unknown_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "prot = 5001\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("prot"), "{e}");
    }

    #[test]
    fn every_number_is_checked_against_its_range_naming_the_setting() {
        assert!(Config::default().validate().is_ok());
        let names: Vec<_> = Config::default().numbers().map(|(n, _)| n).to_vec();
        for r in RANGES {
            assert!(names.contains(&r.name), "{} has no value", r.name);
        }
        for name in names {
            assert!(RANGES.iter().any(|r| r.name == name), "{name} has no range");
            assert!(SETTINGS.contains(&name), "{name} is not a setting");
        }
        for (setting, bad) in [
            ("cache_capacity_mb", "0"),
            ("fingers", "0"),
            ("fingers", "100000"),
            ("max_value_size", "0"),
            ("maintenance_interval_ms", "0"),
            ("max_connections", "0"),
            ("successors", "1"),
            ("dead_after", "0"),
            ("replicas", "9"),
            ("replica_timeout_ms", "0"),
        ] {
            let env = [(format!("DHT_STORE_{}", setting.to_uppercase()), bad.into())];
            let c = Config::load_with_env(None, env).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(setting) && e.contains("must be from"), "{e}");
            assert!(e.contains(&format!("got {bad}")), "{e}");
        }
    }

    #[test]
    fn metrics_listen_is_off_by_default_and_checked() {
        assert_eq!(Config::default().metrics_addr().unwrap(), None);
        let with = |a: &str| Config {
            metrics_listen: Some(a.into()),
            ..Config::default()
        };
        assert_eq!(
            with("127.0.0.1:9100").metrics_addr().unwrap(),
            Some("127.0.0.1:9100".parse().unwrap())
        );
        assert!(with("[::1]:9100").validate().is_ok());
        for bad in [
            "127.0.0.1",
            "localhost:9100",
            "127.0.0.1:0",
            "127.0.0.1:99999",
            "",
        ] {
            let e = with(bad).validate().unwrap_err().to_string();
            assert!(e.contains("metrics_listen"), "{bad:?}: {e}");
        }
        let env = [("DHT_STORE_METRICS_LISTEN", "127.0.0.1:9101")]
            .map(|(k, v)| (k.to_string(), v.to_string()));
        let c = Config::load_with_env(None, env).unwrap();
        assert_eq!(c.metrics_listen.as_deref(), Some("127.0.0.1:9101"));
    }

    #[test]
    fn the_successor_list_must_reach_past_the_replicas() {
        let c = Config {
            replicas: 3,
            ..Config::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("successors") && e.contains("replicas + 2 = 5"),
            "{e}"
        );
        let c = Config {
            replicas: 3,
            successors: 5,
            ..Config::default()
        };
        assert!(c.validate().is_ok());
    }

    #[test]
    fn advertising_0_0_0_0_is_refused() {
        let c = Config {
            host: Ipv4Addr::UNSPECIFIED,
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }
}
