//! dht-store: a persistent storage node for a distributed hash table.
//!
//! The wire protocol is `../shared/PROTOCOL.md`; this crate serves it from a sled database.
//! See `ARCHITECTURE.md` for the map of the modules and the invariants between them.

pub mod backup;
pub mod client;
pub mod config;
pub mod error;
pub mod fault;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod ring;
pub mod ringmap;
pub mod storage;

pub use error::{Error, Result};
