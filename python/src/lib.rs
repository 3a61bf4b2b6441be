//! `dht_store._native`: dht-store's client for Python.
//!
//! The Python package `dht_store` (in `dht_store/`) re-exports what this module defines:
//! [`ring::Ring`] (a ring reached through any peer, on the crate's own `Router`),
//! [`keys::PyHashKey`] (a key given as its 20-byte hash) and [`ring::Owner`] (the answer of
//! `Ring.owner`). The exceptions are Python classes of `dht_store/_errors.py` (they inherit
//! from both `DhtError` and a built-in such as `TimeoutError`, which a Rust-made exception
//! cannot); [`errors`] raises them.

mod arcs;
mod bulk;
mod errors;
mod keys;
mod ring;

use pyo3::prelude::*;

/// The module object: its classes and the package version.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ring::Ring>()?;
    m.add_class::<ring::Owner>()?;
    m.add_class::<keys::PyHashKey>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
