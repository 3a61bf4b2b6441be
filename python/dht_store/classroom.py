"""``DHTInterface``: the classroom DHT's Python interface, on dht-store's client.

Scripts written against the classroom interface switch by changing one import::

    from dht_store import DHTInterface      # was: from <classroom package>.dhti import DHTInterface

    dht = DHTInterface(peerIP="127.0.0.1", peerPort=5000)   # or DHTInterface(ipport_file="peer.txt")
    dht.insert("apple", "red")     # 'T' stored, 'F' refused by the owner
    dht.get("apple")               # ('T', b'red'), or ('F', None) if absent
    dht.exists("apple")            # 'T' / 'F'
    dht.remove("apple")            # 'T' removed, 'F' was absent
    dht.owns("apple")              # "IP:PORT" of the key's true owner

The calls, their arguments and their return values are the classroom interface's; what differs
is underneath: the ring's address encoding (text for classroom rings, compact for dht-store's)
is detected from the first OWN answer, connections are kept open between calls instead of one
per request, and a peer that cannot be reached or does not answer raises ``Unreachable`` or
``Timeout`` (both ``DhtError``; also ``ConnectionError`` and ``TimeoutError``) instead of a bare
``BaseException`` or a socket error.
"""

from typing import Optional, Tuple, Union

from ._errors import DhtError
from ._native import Ring

Key = Union[str, bytes]
Value = Union[str, bytes]


class DHTInterface:
    """The classroom interface to a DHT ring, given one peer.

    ``DHTInterface(peerIP="1.2.3.4", peerPort=5000)`` or ``DHTInterface(ipport_file=PATH)``,
    where the first line of the file is ``IP:PORT`` (read at the first call, as the classroom
    interface does). ``peerIP`` and ``peerPort`` may also be set as attributes afterwards.
    Keys and values given as ``str`` are sent as UTF-8; a key is stored under the SHA-1 of its
    bytes. ``timeout`` (seconds, not in the classroom interface) bounds every wait.
    """

    def __init__(
        self,
        *,
        peerIP: Optional[str] = None,
        peerPort: Optional[Union[int, str]] = None,
        ipport_file: Optional[str] = None,
        timeout: float = 10.0,
    ):
        #: The peer's IP address (or host name), as given or read from the file.
        self.peerIP = peerIP if peerPort is not None else None
        #: The peer's port.
        self.peerPort = peerPort if peerIP is not None else None
        #: The file whose first line is ``IP:PORT``, if one was given.
        self.PEER_FILE_IP_PORT = ipport_file
        #: Seconds waited for a connection and for each answer.
        self.timeout = timeout
        self._ring: Optional[Ring] = None
        self._ring_peer: Optional[Tuple[str, int]] = None

    def help(self) -> str:
        """The methods, one a line (the classroom interface's text)."""
        r = "Available methods:\n"
        for m in ["get(key)", "insert(key, value)", "remove(key)", "exists(key)", "owns(key)"]:
            r += "\t" + m + "\n"
        return r

    def set_connection(self, peerIP: str, peerPort: Union[int, str]) -> None:
        """Talks to the ring through ``peerIP:peerPort`` from now on, connecting at once (and
        raising ``Unreachable`` or ``Timeout`` if that peer cannot be asked)."""
        self.close_connection()
        self.peerIP, self.peerPort = peerIP, peerPort
        self._connect()

    def close_connection(self) -> None:
        """Closes the connections to the ring; the next call opens new ones."""
        if self._ring is not None:
            self._ring.close()
        self._ring = None
        self._ring_peer = None

    def insert(self, key: Key, value: Value) -> str:
        """Stores ``value`` under ``key`` at its owner: ``'T'`` stored, ``'F'`` refused (a value
        over the owner's limit, or a write it could not make durable)."""
        return "T" if self._connect()._put(key, value) else "F"

    def get(self, key: Key) -> Tuple[str, Optional[bytes]]:
        """``('T', value)`` if ``key`` is stored, ``('F', None)`` if not."""
        v = self._connect().get(key)
        return ("F", None) if v is None else ("T", v)

    def exists(self, key: Key) -> str:
        """``'T'`` if ``key`` is stored, ``'F'`` if not."""
        return "T" if self._connect().exists(key) else "F"

    def remove(self, key: Key) -> str:
        """Removes ``key``: ``'T'`` removed, ``'F'`` it was absent."""
        return "T" if self._connect().remove(key) else "F"

    def owns(self, key: Key) -> str:
        """``"IP:PORT"`` of the key's true owner (the end of the OWN walk)."""
        return self._connect().owner(key).address

    def trueOwner(self, key: Key) -> str:
        """The same as ``owns`` (the classroom interface's name for the walk)."""
        return self.owns(key)

    def _peer(self) -> Tuple[str, int]:
        if self.peerIP is not None and self.peerPort is not None:
            return str(self.peerIP), int(self.peerPort)
        if self.PEER_FILE_IP_PORT is None:
            raise DhtError("no peer: give peerIP and peerPort, or ipport_file")
        with open(self.PEER_FILE_IP_PORT) as f:
            line = f.readline().strip()
        ip, sep, port = line.rpartition(":")
        if not sep or not ip or not port.isdigit():
            raise ValueError(
                f"the first line of {self.PEER_FILE_IP_PORT} is {line!r}, not IP:PORT"
            )
        self.peerIP, self.peerPort = ip, int(port)
        return ip, int(port)

    def _connect(self) -> Ring:
        peer = self._peer()
        if self._ring is None or self._ring_peer != peer:
            self.close_connection()
            ring = Ring(peer, timeout=self.timeout, address_encoding="auto")
            # Detects the encoding now: a peer that cannot be asked fails here, as the
            # classroom interface's connect did.
            ring.owner(b"")
            self._ring, self._ring_peer = ring, peer
        return self._ring

    def __repr__(self) -> str:
        return f"DHTInterface(peerIP={self.peerIP!r}, peerPort={self.peerPort!r})"


__all__ = ["DHTInterface"]
