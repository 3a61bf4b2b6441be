"""The exceptions of dht_store: ``DhtError`` and its four kinds.

Each also derives from the built-in exception a caller may already catch (``Unreachable`` is a
``ConnectionError``, ``Timeout`` a ``TimeoutError``, ``ValueTooLarge`` a ``ValueError``), and
each carries one sentence saying what happened and, where it helps, what to try.
"""

from typing import Optional


class DhtError(Exception):
    """Anything a call to the ring failed on (the base of the others): a closed ``Ring``, an
    owner that refused a write it could not make durable, a routed request that gave up."""


class Unreachable(DhtError, ConnectionError):
    """No connection could be opened to a peer: nobody listens there (a dead node, a wrong
    port) or the network does not reach it. The message names the peer."""


class Timeout(DhtError, TimeoutError):
    """A peer accepted (or was being connected to) and said nothing for the whole timeout: a
    stalled node, something that is not a DHT peer, or a ring of the other address encoding."""


class ValueTooLarge(DhtError, ValueError):
    """The key's owner refused the value because it is over its limit. ``size`` and ``limit``
    are in bytes."""

    def __init__(self, message: str, size: Optional[int] = None, limit: Optional[int] = None):
        super().__init__(message)
        #: The value's length in bytes.
        self.size = size
        #: The owner's largest value in bytes.
        self.limit = limit


class ProtocolError(DhtError):
    """A peer's answer broke the protocol: an unknown status byte, a bad address, a connection
    closed inside an answer, an OWN walk that does not end."""



# Shown as dht_store.Timeout (not dht_store._errors.Timeout) in tracebacks and reprs.
for _cls in (DhtError, Unreachable, Timeout, ValueTooLarge, ProtocolError):
    _cls.__module__ = "dht_store"
del _cls

__all__ = ["DhtError", "Unreachable", "Timeout", "ValueTooLarge", "ProtocolError"]
