"""Type stubs of dht_store._native, the Rust module (src/*.rs) behind dht_store.

The docstrings here repeat the module's own (``help(dht_store.Ring)`` shows those).
"""

from types import TracebackType
from typing import Any, Callable, Iterable, Iterator, List, Mapping, Optional, Tuple, Type, TypeVar, Union

__version__: str

#: A key: a ``str`` (hashed as its UTF-8), bytes-like (hashed), or a ``HashKey`` (used as is).
Key = Union[str, bytes, bytearray, memoryview, "HashKey"]
#: A value: bytes-like, or a ``str`` (stored as its UTF-8).
Value = Union[bytes, bytearray, memoryview, str]
#: A peer: ``"IP:PORT"``, ``"HOST:PORT"``, a bare ``"PORT"`` on 127.0.0.1, or ``(host, port)``.
Peer = Union[str, Tuple[str, int]]
#: ``progress(done, total)``.
Progress = Callable[[int, int], object]

_D = TypeVar("_D")

class HashKey:
    """A key given as its 20-byte hash, stored under exactly these bytes.

    ``HashKey(b"...")`` takes the 20 raw bytes, ``HashKey("40 hex digits")`` the hex form, and
    ``HashKey.of(key)`` hashes a key as every call does. A plain 20-byte ``bytes`` passed as a
    key is hashed like any other bytes: only a ``HashKey`` is used as it is.
    """

    def __init__(self, digest: Union[bytes, bytearray, memoryview, str]) -> None: ...
    @staticmethod
    def of(key: Key) -> "HashKey":
        """The HashKey a key is stored under (SHA-1 of a str's UTF-8 or of the bytes)."""
    @property
    def digest(self) -> bytes:
        """The 20 bytes."""
    def hex(self) -> str:
        """The 40 lower-case hex digits."""
    def __bytes__(self) -> bytes: ...
    def __eq__(self, other: object) -> bool: ...
    def __lt__(self, other: "HashKey") -> bool: ...
    def __le__(self, other: "HashKey") -> bool: ...
    def __gt__(self, other: "HashKey") -> bool: ...
    def __ge__(self, other: "HashKey") -> bool: ...
    def __hash__(self) -> int: ...

class Owner:
    """The owner of a key as ``Ring.owner`` found it; ``address, hops = owner`` unpacks."""

    #: The owner, ``"IP:PORT"``.
    address: str
    #: OWN answers that named another peer before the owner named itself.
    hops: int
    #: Every peer asked, the entry first, the owner last.
    path: List[str]
    #: The key's HashKey.
    key: HashKey
    def __iter__(self) -> Iterator[Union[str, int]]: ...

class Ring:
    """A DHT ring, reached through one of its peers.

    ``Ring("127.0.0.1:5000")`` connects to nothing yet. A call asks the key's owner, found by
    walking the ring from that peer (OWN) and then remembered, with its whole arc, for a few
    seconds (a ring that moved meanwhile is noticed, and walked again); connections are kept
    open for the next calls.
    ``timeout`` (seconds) bounds the wait for a connection and for each answer;
    ``address_encoding`` is ``"compact"``, ``"text"`` or ``"auto"``; ``max_hops`` bounds an
    OWN walk. Calls release the GIL while they wait, and a Ring may be shared by threads.
    ``with Ring(...) as ring:`` closes its connections at the end.

    Dict-like: ``ring[key]`` (``KeyError`` if absent), ``ring[key] = value``, ``del ring[key]``
    (``KeyError`` if absent), ``key in ring``.
    """

    def __init__(
        self,
        peer: Peer,
        *,
        timeout: float = 10.0,
        address_encoding: str = "compact",
        max_hops: int = 64,
    ) -> None: ...
    def put(self, key: Key, value: Value) -> None:
        """Stores ``value`` under ``key`` at its owner. Raises ``ValueTooLarge`` if the value
        is over the owner's limit, ``DhtError`` if the owner refused it otherwise."""
    def get(self, key: Key, default: _D = None) -> Union[bytes, _D]:  # type: ignore[assignment]
        """The value under ``key``, or ``default`` (``None``) if the key is absent."""
    def exists(self, key: Key) -> bool:
        """Whether ``key`` is stored."""
    def remove(self, key: Key) -> bool:
        """Removes ``key``; ``True`` if it was there."""
    def owner(self, key: Key) -> Owner:
        """The owner of ``key`` and the OWN walk that found it."""
    def info(self, peer: Optional[Peer] = None) -> str:
        """A peer's INF text; the entry peer's when ``peer`` is not given."""
    def get_many(
        self,
        keys: Iterable[Key],
        *,
        concurrency: int = 16,
        progress: Optional[Progress] = None,
        progress_every: int = 1000,
    ) -> List[Optional[bytes]]:
        """The values of many keys, in their order (``None`` for an absent one), asked of their
        owners over ``concurrency`` connections each, GETs pipelined. ``progress(done, total)``
        is called every ``progress_every`` keys (at most every 0.1 s) and once at the end."""
    def put_many(
        self,
        items: Union[Iterable[Tuple[Key, Value]], Mapping[Any, Any]],
        *,
        concurrency: int = 64,
        progress: Optional[Progress] = None,
        progress_every: int = 1000,
    ) -> int:
        """Stores many ``(key, value)`` pairs (or a mapping's items) at their owners over
        ``concurrency`` connections per owner; the number stored."""
    def close(self) -> None:
        """Closes every connection; the Ring cannot be used afterwards."""
    def __enter__(self) -> "Ring": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...
    def __getitem__(self, key: Key) -> bytes: ...
    def __setitem__(self, key: Key, value: Value) -> None: ...
    def __delitem__(self, key: Key) -> None: ...
    def __contains__(self, key: Key) -> bool: ...
    def _put(self, key: Key, value: Value) -> bool:
        """``put`` that returns ``False`` on the owner's ``F`` (``DHTInterface.insert``)."""
    @property
    def peer(self) -> str:
        """The entry peer, ``"IP:PORT"``."""
    @property
    def timeout(self) -> float:
        """Seconds waited for a connection and for each answer."""
    @property
    def address_encoding(self) -> str:
        """``"compact"`` or ``"text"``; ``"auto"`` until the first call detected it."""
    @property
    def max_hops(self) -> int:
        """Longest OWN walk."""
    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
