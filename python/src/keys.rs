//! Keys and values as Python gives them: `str` (its UTF-8), `bytes`-like objects, or a
//! [`PyHashKey`] for a hash given explicitly.

use std::borrow::Cow;

use dht_store::protocol::HashKey;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyString};

/// A key given as its 20-byte hash (a position on the ring), stored under exactly these bytes.
///
/// `HashKey(b"...")` takes the 20 raw bytes, `HashKey("40 hex digits")` the hex form (as the
/// CLI's `--hash`), and `HashKey.of(key)` hashes a key as every call does (SHA-1 of a `str`'s
/// UTF-8 or of the bytes). A plain 20-byte `bytes` passed as a key is hashed like any other
/// bytes: only a `HashKey` is used as it is.
#[pyclass(module = "dht_store", name = "HashKey", frozen, eq, ord, hash)]
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PyHashKey(pub HashKey);

#[pymethods]
impl PyHashKey {
    /// `HashKey(digest)`: 20 bytes, or a `str` of 40 hex digits.
    #[new]
    fn new(digest: &Bound<'_, PyAny>) -> PyResult<PyHashKey> {
        if let Ok(s) = digest.cast::<PyString>() {
            return s
                .to_cow()?
                .parse::<HashKey>()
                .map(PyHashKey)
                .map_err(|e| PyValueError::new_err(e.to_string()));
        }
        let b = bytes_of(digest).map_err(|_| {
            PyTypeError::new_err(format!(
                "HashKey takes 20 bytes or 40 hex digits, not {}",
                type_name(digest)
            ))
        })?;
        let raw: [u8; 20] = b.as_ref().try_into().map_err(|_| {
            PyValueError::new_err(format!(
                "a HashKey is 20 bytes, got {} (HashKey.of(key) hashes a key)",
                b.len()
            ))
        })?;
        Ok(PyHashKey(HashKey(raw)))
    }

    /// The HashKey a key is stored under: SHA-1 of a `str`'s UTF-8 or of bytes (a `HashKey`
    /// is returned as it is).
    #[staticmethod]
    fn of(key: &Bound<'_, PyAny>) -> PyResult<PyHashKey> {
        hash_key(key).map(PyHashKey)
    }

    /// The 20 bytes.
    #[getter]
    fn digest<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.0.as_bytes())
    }

    /// The 40 lower-case hex digits (as the CLI prints a HashKey).
    fn hex(&self) -> String {
        self.0.to_string()
    }

    fn __bytes__<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.digest(py)
    }

    fn __str__(&self) -> String {
        self.0.to_string()
    }

    fn __repr__(&self) -> String {
        format!("HashKey('{}')", self.0)
    }
}

/// The HashKey of a key given from Python.
pub fn hash_key(key: &Bound<'_, PyAny>) -> PyResult<HashKey> {
    if let Ok(h) = key.cast::<PyHashKey>() {
        return Ok(h.get().0);
    }
    if let Ok(s) = key.cast::<PyString>() {
        return Ok(HashKey::of(s.to_cow()?.as_bytes()));
    }
    match bytes_of(key) {
        Ok(b) => Ok(HashKey::of(&b)),
        Err(_) => Err(PyTypeError::new_err(format!(
            "a key is a str, bytes, bytearray, memoryview or dht_store.HashKey, not {}",
            type_name(key)
        ))),
    }
}

/// A value's bytes: `bytes`, `bytearray`, `memoryview`, or a `str` (its UTF-8). Borrowed when
/// the object is immutable `bytes` (kept alive by the caller's reference for as long as the
/// borrow), copied otherwise.
pub fn value_bytes<'a>(value: &'a Bound<'_, PyAny>) -> PyResult<Cow<'a, [u8]>> {
    if let Ok(s) = value.cast::<PyString>() {
        return Ok(Cow::Owned(s.to_cow()?.into_owned().into_bytes()));
    }
    bytes_of(value).map_err(|_| {
        PyTypeError::new_err(format!(
            "a value is bytes, bytearray, memoryview or str, not {}",
            type_name(value)
        ))
    })
}

/// The bytes of a bytes-like object, or an error for anything else.
fn bytes_of<'a>(obj: &'a Bound<'_, PyAny>) -> PyResult<Cow<'a, [u8]>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Cow::Borrowed(b.as_bytes()));
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(Cow::Owned(b.to_vec()));
    }
    if obj.is_instance_of::<PyMemoryView>() {
        // The limited API of 3.9 has no buffer protocol: `bytes(view)` copies it out.
        let b = obj.py().get_type::<PyBytes>().call1((obj,))?;
        return Ok(Cow::Owned(b.cast::<PyBytes>()?.as_bytes().to_vec()));
    }
    Err(PyTypeError::new_err("not bytes-like"))
}

/// `type(obj).__name__`, for messages.
pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "an object".into())
}
