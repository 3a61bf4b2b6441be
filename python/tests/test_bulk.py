"""get_many and put_many over a ring of three, in both encodings."""

import uuid

import pytest

from dht_store import HashKey, Ring


@pytest.fixture
def ring(ring3):
    enc, addrs = ring3
    with Ring(addrs[1], timeout=5, address_encoding=enc) as r:
        yield r


def test_put_many_then_get_many(ring3, ring):
    enc, addrs = ring3
    tag = uuid.uuid4().hex
    items = [(f"{tag}-{i}", f"value {i}".encode() * (i % 7)) for i in range(3000)]
    assert ring.put_many(items) == len(items)
    keys = [k for k, _ in items]
    absent = [f"{tag}-absent-{i}" for i in range(50)]
    got = ring.get_many(keys + absent)
    assert got[: len(keys)] == [v for _, v in items]
    assert got[len(keys):] == [None] * len(absent)
    # Each value is where a plain get finds it (its owner), from another entry peer.
    with Ring(addrs[2], address_encoding=enc) as other:
        for k, v in items[::97]:
            assert other.get(k) == v


def test_inputs(ring):
    tag = uuid.uuid4().hex
    m = {f"{tag}-{i}": str(i) for i in range(100)}
    assert ring.put_many(m) == 100
    assert ring.get_many(iter(m)) == [str(i).encode() for i in range(100)]
    assert ring.put_many((HashKey.of(k), v) for k, v in m.items()) == 100
    assert ring.get_many([]) == [] and ring.put_many([]) == 0
    # The same key twice is answered twice.
    k = f"{tag}-0"
    assert ring.get_many([k, k]) == [b"0", b"0"]
    with pytest.raises(TypeError, match="item 1 is int"):
        ring.put_many([("a", b"1"), 7])
    with pytest.raises(TypeError, match="a key is"):
        ring.get_many([1.5])
    with pytest.raises(ValueError, match="concurrency"):
        ring.get_many(["a"], concurrency=0)


@pytest.mark.parametrize("concurrency", [1, 3, 64])
def test_concurrency_settings(ring, concurrency):
    tag = uuid.uuid4().hex
    items = [(f"{tag}-{i}", bytes([i % 256]) * 10) for i in range(500)]
    assert ring.put_many(items, concurrency=concurrency) == 500
    assert ring.get_many([k for k, _ in items], concurrency=concurrency) == [v for _, v in items]


def test_progress(ring):
    tag = uuid.uuid4().hex
    calls = []
    n = 5000
    ring.put_many(((f"{tag}-{i}", b"p") for i in range(n)), progress=lambda d, t: calls.append((d, t)),
                  progress_every=500)
    assert calls[-1] == (n, n)
    assert all(t == n for _, t in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done) and len(done) >= 2
    calls.clear()
    ring.get_many([f"{tag}-{i}" for i in range(n)], progress=lambda d, t: calls.append(d),
                  progress_every=10_000)
    assert calls == [n]


def test_progress_exception_stops_the_call(ring):
    class Stop(Exception):
        pass

    def cb(done, total):
        raise Stop(done)

    with pytest.raises(Stop):
        ring.put_many(((f"stop-{i}", b"x") for i in range(20000)), progress=cb, progress_every=100)
    # The Ring goes on working.
    ring.put("after stop", b"ok")
    assert ring.get("after stop") == b"ok"
