//! What went wrong, and the Python exception that says it: `DhtError` and its four kinds,
//! defined in `dht_store/_errors.py`.

use dht_store::protocol::{AddressEncoding, HashKey, PeerAddr};
use dht_store::Error;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyType;

/// A failure of a call, before it becomes a Python exception.
#[derive(Debug)]
pub enum Failure {
    /// An error of the crate's client (a peer, the network, an answer).
    Dht(Error),
    /// The owner refused a value larger than its limit.
    TooLarge {
        key: HashKey,
        owner: PeerAddr,
        size: u64,
        limit: u64,
    },
    /// The owner answered `F` to an INS for another reason (it cannot make writes durable).
    Refused { key: HashKey, owner: PeerAddr },
    /// The `Ring` was closed.
    Closed,
    /// Some keys of a bulk call failed: how many, of how many, and the first failure.
    Many {
        call: &'static str,
        failed: usize,
        total: usize,
        first: Box<Failure>,
    },
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Dht(e)
    }
}

/// The exception class a failure raises: a name in `dht_store._errors`.
fn class_of(f: &Failure) -> &'static str {
    match f {
        Failure::Dht(e) => class_of_error(e),
        Failure::TooLarge { .. } => "ValueTooLarge",
        Failure::Refused { .. } | Failure::Closed => "DhtError",
        Failure::Many { first, .. } => class_of(first),
    }
}

fn class_of_error(e: &Error) -> &'static str {
    use std::io::ErrorKind as K;
    match e {
        Error::GaveUp { last, .. } => class_of_error(last),
        Error::Unreachable { .. } => "Unreachable",
        Error::Io(io)
            if matches!(
                io.kind(),
                K::ConnectionRefused
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::NotConnected
                    | K::BrokenPipe
                    | K::AddrNotAvailable
                    | K::HostUnreachable
                    | K::NetworkUnreachable
            ) =>
        {
            "Unreachable"
        }
        Error::NoAnswer { .. } | Error::Timeout => "Timeout",
        // Answers that break the protocol: a bad status or address, a connection closed inside
        // an answer, a value longer than any node may hold, a walk that never ends.
        Error::Truncated
        | Error::BadStatus(_)
        | Error::BadAddress(_)
        | Error::UnknownCommand(_)
        | Error::ValueTooLarge { .. }
        | Error::HopLimit { .. } => "ProtocolError",
        _ => "DhtError",
    }
}

/// The one sentence a failure says. `encoding` is the ring's, for the hint a silent peer gets.
fn message(f: &Failure, encoding: Option<AddressEncoding>) -> String {
    match f {
        Failure::Dht(e @ (Error::NoAnswer { .. } | Error::Timeout)) => {
            let (this, other) = match encoding {
                Some(AddressEncoding::Text) => ("text", "compact"),
                _ => ("compact", "text"),
            };
            format!(
                "{e}: check that it is a dht-store peer and not overloaded, and that its ring uses \
                 {this} addresses (else give address_encoding=\"{other}\"); a longer timeout= \
                 waits longer"
            )
        }
        Failure::Dht(e) => e.to_string(),
        Failure::TooLarge {
            key,
            owner,
            size,
            limit,
        } => format!(
            "the value is {size} bytes, over the limit of {owner}, the owner of {key} ({limit} \
             bytes): it was not stored"
        ),
        Failure::Refused { key, owner } => format!(
            "{owner}, the owner of {key}, answered F: the value was not stored (a node refuses \
             writes it cannot make durable: its log says why)"
        ),
        Failure::Closed => "this Ring is closed".into(),
        Failure::Many {
            call,
            failed,
            total,
            first,
        } => format!(
            "{call}: {failed} of {total} keys failed; the first: {}",
            message(first, encoding)
        ),
    }
}

/// The Python exception for `f`.
pub fn to_py(py: Python<'_>, f: Failure, encoding: Option<AddressEncoding>) -> PyErr {
    let msg = message(&f, encoding);
    let class = class_of(&f);
    let ty = match exception_class(py, class) {
        Ok(ty) => ty,
        // The package's own module is missing: say so rather than lose the message.
        Err(e) => return PyRuntimeError::new_err(format!("{msg} (and dht_store._errors: {e})")),
    };
    let too_large = match &f {
        Failure::TooLarge { size, limit, .. } => Some((*size, *limit)),
        Failure::Many { first, .. } => match first.as_ref() {
            Failure::TooLarge { size, limit, .. } => Some((*size, *limit)),
            _ => None,
        },
        _ => None,
    };
    match too_large {
        Some((size, limit)) => PyErr::from_type(ty, (msg, size, limit)),
        None => PyErr::from_type(ty, (msg,)),
    }
}

/// `dht_store._errors.<name>`.
fn exception_class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    let m = py.import("dht_store._errors")?;
    Ok(m.getattr(name)?.cast_into::<PyType>()?)
}
