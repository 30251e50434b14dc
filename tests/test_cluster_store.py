"""The store interface behind a Cluster, on a real etcd and a real redis-server:
the generic key/value operations (create-if-absent with a lease,
compare-and-put, delete, range by prefix, watch from a revision) behave the
same on both backends."""

from __future__ import annotations

import time
import uuid

import gevent
import pytest
from cluster_support import BACKENDS, EtcdServer, RedisServer

from greentree._cluster_member import open_store
from greentree._cluster_store import StoreError, StoreUnavailable, prefix_end
from greentree.testing import wait_until


@pytest.fixture(scope="module")
def servers():
    started: dict = {}
    yield started
    for s in started.values():
        s.stop()


@pytest.fixture(params=BACKENDS)
def store(request, servers):
    kind = request.param
    if kind not in servers:
        servers[kind] = (EtcdServer(1) if kind == "etcd" else RedisServer()).start()
    url = f"{servers[kind].url}/s{uuid.uuid4().hex[:8]}"
    s, prefix = open_store(url, ttl=2.0)
    s.root = f"{prefix}/".encode()
    yield s
    s.close()


def test_create_if_absent_put_if_delete_if_and_tokens_grow(store):
    k = store.root + b"names/x"
    ok, t1, existing = store.create(k, b"one")
    assert ok and existing is None
    ok, _rev, existing = store.create(k, b"two")
    assert not ok and existing.value == b"one" and existing.create_revision == t1
    assert store.put_if(k, b"three", t1)
    assert not store.put_if(k, b"four", t1 + 12345)  # another create revision: refused
    _rev, [kv] = store.range(k)
    assert kv.value == b"three" and kv.create_revision == t1 and kv.mod_revision > t1
    assert not store.delete_if(k, t1 + 12345)
    assert store.delete_if(k, t1)
    assert store.range(k)[1] == []
    ok, t2, _ = store.create(k, b"again")
    assert ok and t2 > t1  # a token is never given twice
    r1 = store.put(k, b"replaced")
    _rev, [kv] = store.range(k)
    assert kv.value == b"replaced" and kv.create_revision == t2 and kv.mod_revision == r1 > t2
    r2 = store.delete(k)
    assert r2 > r1 and store.range(k)[1] == []
    assert store.delete(k) == r2  # nothing there: no change
    r3 = store.put(k, b"fresh")
    assert store.range(k)[1][0].create_revision == r3 > r2


def test_range_by_prefix_is_sorted_and_bounded(store):
    for name in (b"b", b"a", b"c"):
        store.create(store.root + b"kind/" + name, name)
    store.create(store.root + b"kindz/other", b"z")
    rev, kvs = store.range(store.root + b"kind/", prefix_end(store.root + b"kind/"))
    assert [kv.key[len(store.root):] for kv in kvs] == [b"kind/a", b"kind/b", b"kind/c"]
    assert rev >= max(kv.mod_revision for kv in kvs)


def test_keys_bound_to_a_lease_go_with_it(store):
    lease, ttl = store.lease_grant(2.0)
    assert ttl >= 1
    k = store.root + b"names/leased"
    assert store.create(k, b"v", lease)[0]
    assert store.range(k)[1][0].lease == lease
    put_leased = store.root + b"records/leased"
    store.put(put_leased, b"v", lease)
    assert store.lease_keepalive(lease) > 0
    store.lease_revoke(lease)
    assert store.range(k)[1] == [] and store.range(put_leased)[1] == []
    assert store.lease_keepalive(lease) == 0
    store.lease_revoke(lease)  # already gone: not an error


def test_an_expired_lease_frees_its_keys(store):
    lease, _ttl = store.lease_grant(1.0)
    k = store.root + b"names/expiring"
    assert store.create(k, b"v", lease)[0]
    t0 = time.monotonic()

    def gone():
        store.range(store.root)  # any script reaps on Redis; etcd expires by itself
        return store.create(store.root + b"probe/" + uuid.uuid4().hex.encode(), b"") and store.range(k)[1] == []

    wait_until(gone, timeout=5, what="the key of the expired lease deleted")
    assert time.monotonic() - t0 < 3.0


def test_watch_reports_every_change_after_a_listing_in_order(store):
    end = prefix_end(store.root)
    rev, _ = store.range(store.root, end)
    w = store.watch(store.root, end, rev + 1)
    got: list = []

    def read():
        try:
            for events in w:
                got.extend(events)
        except StoreError:
            pass

    g = gevent.spawn(read)
    try:
        gevent.sleep(0.2)
        k = store.root + b"w/x"
        _ok, t, _ = store.create(k, b"1")
        store.put_if(k, b"2", t)
        store.delete_if(k, t)
        store.create(store.root[:-1] + b"-outside/x", b"not ours")  # outside the range: not reported
        wait_until(lambda: len(got) >= 3, timeout=5, what="three events")
        assert [(typ, kv.key, kv.value) for typ, kv in got] == [
            ("PUT", k, b"1"), ("PUT", k, b"2"), ("DELETE", k, b"")]
        assert all(kv.create_revision == t for typ, kv in got if typ == "PUT")  # etcd's deletes carry none
        assert [kv.mod_revision for _typ, kv in got] == sorted(kv.mod_revision for _typ, kv in got)
    finally:
        w.close()
        g.kill()


@pytest.mark.parametrize("scheme", ["etcd://127.0.0.1:{port}", "redis://127.0.0.1:{port}/0"])
def test_an_unreachable_store_raises_unavailable_within_its_timeout(scheme):
    from cluster_support import free_port

    s, _ = open_store(scheme.format(port=free_port()), ttl=2.0)
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable):
        s.range(b"x")
    assert time.monotonic() - t0 < 1.5
    s.close()
