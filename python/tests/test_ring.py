"""Ring: every call against a ring of three real nodes, in both address encodings."""

import hashlib
import uuid

import pytest

import dht_store
from dht_store import DhtError, HashKey, Ring
from conftest import owner_of


def unique(prefix="k"):
    return f"{prefix}-{uuid.uuid4().hex}"


@pytest.fixture
def ring(ring3):
    enc, addrs = ring3
    with Ring(addrs[0], timeout=5, address_encoding=enc) as r:
        yield r


def test_put_get_exists_remove(ring):
    k = unique()
    assert ring.get(k) is None
    assert not ring.exists(k)
    ring.put(k, b"red")
    assert ring.get(k) == b"red"
    assert ring.exists(k)
    ring.put(k, b"green")
    assert ring.get(k) == b"green"
    assert ring.remove(k) is True
    assert ring.remove(k) is False
    assert ring.get(k) is None
    assert ring.get(k, b"default") == b"default"


def test_keys_and_values_of_every_type(ring):
    # str keys are their UTF-8; bytes-like keys are the same bytes, whatever their type.
    k = unique("ключ")
    ring.put(k, "värde")
    assert ring.get(k) == "värde".encode()
    assert ring.get(k.encode()) == "värde".encode()
    assert ring.get(bytearray(k.encode())) == "värde".encode()
    assert ring.get(memoryview(k.encode())) == "värde".encode()
    assert ring.get(HashKey.of(k)) == "värde".encode()
    ring.put(unique(), bytearray(b"\x00\xff"))
    k2 = unique()
    ring.put(k2, memoryview(b"abc")[1:])
    assert ring.get(k2) == b"bc"
    empty = unique()
    ring.put(empty, b"")
    assert ring.get(empty) == b"" and ring.exists(empty)


def test_explicit_hash_key(ring):
    h = HashKey(bytes(range(20)))
    assert h.digest == bytes(range(20))
    assert HashKey(h.hex()) == h and bytes(h) == h.digest and str(h) == h.hex()
    assert repr(h) == f"HashKey('{h.hex()}')"
    ring.put(h, b"by hash")
    assert ring.get(h) == b"by hash"
    # The same 20 bytes given as bytes are a key to hash, not the HashKey.
    assert ring.get(bytes(range(20))) is None
    assert HashKey.of("apple").digest == hashlib.sha1(b"apple").digest()
    assert HashKey.of(h) == h
    assert len({h, HashKey(h.digest)}) == 1 and h < HashKey(b"\xff" * 20)
    ring.remove(h)
    with pytest.raises(ValueError, match="20 bytes"):
        HashKey(b"short")
    with pytest.raises(ValueError, match="40 hex digits"):
        HashKey("abc")
    with pytest.raises(TypeError):
        HashKey(5)


def test_owner_is_the_true_owner(ring3, ring):
    _, addrs = ring3
    for i in range(20):
        k = unique()
        o = ring.owner(k)
        assert o.address == owner_of(addrs, hashlib.sha1(k.encode()).digest())
        assert o.path[0] == addrs[0] and o.path[-1] == o.address
        assert o.hops == len(o.path) - 1
        assert o.key == HashKey.of(k)
        address, hops = o
        assert (address, hops) == (o.address, o.hops)
        assert "Owner(address=" in repr(o)


def test_writes_land_at_the_owner(ring3, ring):
    # Each node answers for its own keys only: asking the owner directly finds the value.
    enc, addrs = ring3
    for i in range(10):
        k = unique()
        ring.put(k, b"v")
        owner = owner_of(addrs, hashlib.sha1(k.encode()).digest())
        with Ring(owner, address_encoding=enc) as direct:
            assert direct.owner(k).hops == 0
            assert direct.get(k) == b"v"


def test_info(ring3, ring):
    enc, addrs = ring3
    text = ring.info()
    assert f"address {addrs[0]}" in text
    assert f"address {addrs[1]}" in ring.info(addrs[1])
    host, port = addrs[2].rsplit(":", 1)
    assert f"address {addrs[2]}" in ring.info((host, int(port)))


def test_dict_access(ring):
    k = unique()
    with pytest.raises(KeyError) as e:
        ring[k]
    assert e.value.args == (k,)
    assert k not in ring
    ring[k] = b"x"
    assert k in ring and ring[k] == b"x"
    del ring[k]
    assert k not in ring
    with pytest.raises(KeyError):
        del ring[k]


def test_context_manager_closes(ring3):
    enc, addrs = ring3
    with Ring(addrs[1], address_encoding=enc) as r:
        r.put(unique(), b"1")
        assert not r.closed
    assert r.closed
    with pytest.raises(DhtError, match="closed"):
        r.get("x")


def test_auto_encoding(ring3):
    enc, addrs = ring3
    r = Ring(addrs[2], address_encoding="auto")
    assert r.address_encoding == "auto"
    k = unique()
    r.put(k, b"auto")
    assert r.address_encoding == enc
    assert r.get(k) == b"auto"
    r.close()


def test_arguments(ring3):
    enc, addrs = ring3
    r = Ring(addrs[0], timeout=2.5, address_encoding=enc, max_hops=8)
    assert (r.peer, r.timeout, r.max_hops, r.address_encoding) == (addrs[0], 2.5, 8, enc)
    assert repr(r) == f"Ring('{addrs[0]}', timeout=2.5, address_encoding='{enc}')"
    assert Ring("5000").peer == "127.0.0.1:5000"
    assert Ring("localhost:5000").peer == "127.0.0.1:5000"
    with pytest.raises(ValueError, match="timeout"):
        Ring(addrs[0], timeout=0)
    with pytest.raises(ValueError, match="address_encoding"):
        Ring(addrs[0], address_encoding="binary")
    with pytest.raises(ValueError, match="not IP:PORT"):
        Ring("no such host at all:x")
    with pytest.raises(TypeError, match="peer"):
        Ring(5000)
    with pytest.raises(TypeError, match="a key is"):
        r.get(12)
    with pytest.raises(TypeError, match="a value is"):
        r.put("k", 12)
    r.close()


def test_package_surface():
    for name in dht_store.__all__:
        assert getattr(dht_store, name).__doc__ or name == "__version__", name
    assert dht_store.Ring.__module__ == "dht_store"
    assert dht_store.Timeout.__module__ == "dht_store" and dht_store.Timeout.__name__ == "Timeout"
    assert "Dict-like" in dht_store.Ring.__doc__
