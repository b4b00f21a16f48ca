"""Both programs on real Redis topologies: client-side shards, Redis Cluster, Sentinel.

Each test starts its own Redis processes (tests/e2e/topology.py), runs a worker and a query service
against them, and publishes events while the topology changes under load: nothing may be lost and
reads must keep working."""
import threading
import time

import pytest
import requests

from conftest import call, fnv1a64, jump_hash, metric, now_ms, status, statuses, wait_until
from topology import Cluster, Sentinel, Shards


class Load:
    """Publishes `active` events for `users` users in rounds until stopped; remembers the maximum
    time each user was sent, so the final state can be checked exactly."""

    def __init__(self, ns, users, prefix="u"):
        self.ns = ns
        self.users = ["%s%d" % (prefix, i) for i in range(users)]
        self.expected = {}
        self.sent = 0
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        base = now_ms() - 3_600_000  # Distinct, increasing times in the past: never clamped.
        rnd = 0
        while not self.stop_flag.is_set():
            for u in self.users:
                t = base + rnd * 1000 + 1
                self.ns.producer.event("active", u, t)
                self.expected[u] = t // 1000
                self.sent += 1
            self.ns.producer.p.poll(0)
            rnd += 1
            time.sleep(0.05)
        self.ns.producer.flush()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join(60)


class Reader:
    """Calls get_user_status for a slice of users in a loop and counts errors."""

    def __init__(self, url, users):
        self.url, self.users = url, users
        self.ok = self.errors = 0
        self.last_error = None
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop_flag.is_set():
            try:
                r = call(self.url, "get_user_status", {"users": self.users})
                if "result" in r and len(r["result"]["statuses"]) == len(self.users):
                    self.ok += 1
                else:
                    self.errors += 1
                    self.last_error = r
            except Exception as e:  # noqa: BLE001
                self.errors += 1
                self.last_error = e
            time.sleep(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join(30)


def assert_all_applied(q, expected, timeout=60):
    users = sorted(expected)

    def lagging():
        got = {}
        for i in range(0, len(users), 500):
            for s in statuses(q.url, users[i:i + 500]):
                got[s["user"]] = s.get("active")
        return [u for u in users if got.get(u) != expected[u]]

    wait_until(lambda: not lagging(), timeout=timeout, what="every user's final active time")


@pytest.fixture
def shards():
    t = Shards(3)
    yield t
    t.stop()


@pytest.fixture
def cluster():
    t = Cluster(3)
    yield t
    t.stop()


@pytest.fixture
def sentinel():
    t = Sentinel()
    yield t
    t.stop()


@pytest.mark.parametrize("storage", ["buckets", "per_user"])
def test_three_shards_place_each_user_by_jump_hash(ns, shards, storage):
    cfg = ns.config(user_status=dict(shards.config(), storage=storage))
    ns.start_worker(cfg)
    q = ns.start_query(cfg)
    users = ["s%d" % i for i in range(300)]
    t = now_ms() - 60_000
    for u in users:
        ns.producer.event("online", u, t)
    ns.producer.flush()
    wait_until(lambda: all("online" in s for s in statuses(q.url, users)), what="all users online")

    per_shard = [0, 0, 0]
    for u in users:
        want = jump_hash(fnv1a64(u.encode()), 3)
        for i, node in enumerate(shards.nodes):
            if storage == "per_user":
                present = node.call("EXISTS", ns.key(u)) == 1
            else:  # the user's bucket within its shard
                present = node.call("ZSCORE", ns.bucket_keys(u, nshards=3)["o"], u) is not None
            assert present == (i == want), (u, i, want)
        per_shard[want] += 1
    print("users per shard:", per_shard)
    assert min(per_shard) > 50  # Jump hash spreads 300 users roughly evenly.
    # One request reads across all three shards, in order.
    got = statuses(q.url, users[:50] + ["nobody"])
    assert [s["user"] for s in got] == users[:50] + ["nobody"]
    assert all(s.get("online") == t // 1000 for s in got[:50]) and got[50] == {"user": "nobody"}


def test_cluster_keeps_serving_while_slots_migrate(ns, cluster):
    cfg = ns.config(user_status=cluster.config())
    w = ns.start_worker(cfg)
    q = ns.start_query(cfg)
    with Load(ns, 400, prefix="c") as load, Reader(q.url, ["c%d" % i for i in range(0, 400, 4)]) as reader:
        time.sleep(2)
        t0 = time.monotonic()
        cluster.reshard(cluster.nodes[0], cluster.nodes[1], 2000)
        cluster.reshard(cluster.nodes[2], cluster.nodes[0], 1500)
        migrate_s = time.monotonic() - t0
        time.sleep(2)
    assert_all_applied(q, load.expected)
    print("cluster: %d events for %d users, slots migrated in %.1fs, reads ok=%d errors=%d" % (
        load.sent, len(load.users), migrate_s, reader.ok, reader.errors))
    assert reader.ok > 0
    assert reader.errors == 0, reader.last_error
    redirects = sum(metric(u, 'userstatus_redis_redirects_total{kind="%s"}' % k)
                    for u in (w.metrics_url, q.url) for k in ("moved", "ask"))
    print("redirects followed by worker and query: %d" % redirects)
    assert redirects > 0  # The migration really happened under our clients.
    # Every bucket key lives on the master that owns its slot now, and holds its users.
    for u in load.users[:50]:
        owner = cluster.owner_of(ns.bucket_keys(u)["a"])
        assert owner is not None, u
        assert owner.call("ZSCORE", ns.bucket_keys(u)["a"], u) is not None, u


def test_sentinel_failover_loses_nothing(ns, sentinel):
    cfg = ns.config(user_status=dict(sentinel.config(), redis_wait_replicas=1))
    ns.start_worker(cfg)
    q = ns.start_query(cfg)
    with Load(ns, 300, prefix="f") as load:
        time.sleep(2)
        t0 = time.monotonic()
        new_master = sentinel.failover()
        failover_s = time.monotonic() - t0
        time.sleep(3)
    assert new_master == sentinel.replica.addr
    assert_all_applied(q, load.expected)
    print("sentinel: %d events for %d users, failover in %.1fs, now on %s" % (
        load.sent, len(load.users), failover_s, new_master))
    # The data is on the new master.
    assert sentinel.replica.call("ZSCORE", ns.bucket_keys("f0")["a"], "f0") is not None
