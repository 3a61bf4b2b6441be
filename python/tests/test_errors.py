"""Every exception, each from a real cause: a dead peer, a silent one, a value over the limit,
a peer that breaks the protocol, an absent key."""

import time

import pytest

from dht_store import DhtError, ProtocolError, Ring, Timeout, Unreachable, ValueTooLarge


def test_dead_peer_is_unreachable(dead_peer):
    r = Ring(dead_peer, timeout=2)
    with pytest.raises(Unreachable) as e:
        r.get("apple")
    assert isinstance(e.value, DhtError) and isinstance(e.value, ConnectionError)
    assert f"cannot connect to {dead_peer}" in str(e.value)
    with pytest.raises(Unreachable):
        r.put_many([("a", b"1")])
    with pytest.raises(Unreachable):
        r.info()


def test_silent_peer_is_timeout(silent_peer):
    r = Ring(silent_peer, timeout=0.5)
    t = time.monotonic()
    with pytest.raises(Timeout) as e:
        r.get("apple")
    took = time.monotonic() - t
    assert isinstance(e.value, TimeoutError) and isinstance(e.value, DhtError)
    msg = str(e.value)
    assert f"{silent_peer} did not answer within 0.5 s" in msg
    assert 'address_encoding="text"' in msg
    # One timeout, not one per retry.
    assert took < 2.5, took
    with pytest.raises(Timeout):
        r.get_many(["a", "b", "c"])
    with pytest.raises(Timeout):
        Ring(silent_peer, timeout=0.5, address_encoding="auto").exists("a")


def test_value_over_the_limit(small_node):
    r = Ring(small_node, timeout=5)
    r.put("fits", b"x" * 1024)
    with pytest.raises(ValueTooLarge) as e:
        r.put("big", b"x" * 1025)
    assert isinstance(e.value, ValueError)
    assert (e.value.size, e.value.limit) == (1025, 1024)
    assert "1025 bytes, over the limit" in str(e.value) and "(1024 bytes)" in str(e.value)
    assert r.get("big") is None
    # The node closed that connection after refusing: the next calls do not notice.
    assert r.get("fits") == b"x" * 1024
    with pytest.raises(ValueTooLarge) as e:
        r.put_many([("a", b"1"), ("b", b"y" * 5000), ("c", b"3"), ("d", b"z" * 2000)])
    assert "put_many: 2 of 4 keys failed" in str(e.value)
    assert (e.value.size, e.value.limit) == (5000, 1024)
    assert r.get_many(["a", "b", "c", "d"]) == [b"1", None, b"3", None]


def test_broken_answers_are_protocol_errors(garbage_peer):
    r = Ring(garbage_peer, timeout=2)
    with pytest.raises(ProtocolError, match="unexpected status byte 0x58"):
        r.get("apple")
    with pytest.raises(ProtocolError):
        r.get_many(["a", "b"])


def test_absent_key(small_node):
    r = Ring(small_node)
    assert r.get("never stored") is None
    assert r.get_many(["never stored"]) == [None]
    with pytest.raises(KeyError):
        r["never stored"]
    assert r.remove("never stored") is False
