"""dht-store's client for Python: any DHT ring of the classroom protocol, given one peer.

    import dht_store
    with dht_store.Ring("127.0.0.1:5000") as ring:
        ring.put("apple", b"red")
        ring.get("apple")              # b'red' (None if absent)
        ring["pear"] = "green"         # str values are stored as UTF-8
        "pear" in ring                 # True
        ring.owner("apple")            # Owner(address='127.0.0.1:5000', hops=0, ...)
        ring.get_many(["apple", "pear", "plum"])   # [b'red', b'green', None]

``Ring`` runs on dht-store's Rust client (its OWN walk, retries, timeouts and both address
encodings). ``DHTInterface`` is the classroom interface's class, for scripts written against
it. Errors are ``DhtError`` and its kinds ``Unreachable``, ``Timeout``, ``ValueTooLarge`` and
``ProtocolError``.
"""

from ._errors import DhtError, ProtocolError, Timeout, Unreachable, ValueTooLarge
from ._native import HashKey, Owner, Ring, __version__
from .classroom import DHTInterface

__all__ = [
    "Ring",
    "HashKey",
    "Owner",
    "DHTInterface",
    "DhtError",
    "Unreachable",
    "Timeout",
    "ValueTooLarge",
    "ProtocolError",
    "__version__",
]
