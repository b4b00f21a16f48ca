"""Status changes (schemas/changes.md): the worker publishes online/away/offline transitions to the
changes topic, once per transition, with the time each took effect; silence makes users offline,
also across a worker crash and rebalances.

Windows are short (offline_after 3 s, away_after 1 s or 30 s). Event times are whole seconds, so
that the times the status store keeps (seconds) equal the times the index keeps (milliseconds).
Consumers dedupe by (user, status, since); after that the sequences must be exactly the expected
ones: nothing lost, nothing invented."""
import threading
import time
import uuid

import msgpack
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from conftest import KAFKA, PARTITIONS, metric, now_ms, wait_until

FAST_GROUP = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}


def whole_second_ms():
    return now_ms() // 1000 * 1000


class ChangeReader:
    """Reads the changes topic from the beginning, all partitions; keeps every message (decoded,
    with the time it was read) and each user's deduplicated sequence."""

    def __init__(self, topic):
        self.topic = topic
        self.c = Consumer({"bootstrap.servers": KAFKA, "group.id": "us-e2e-changes-" + uuid.uuid4().hex[:8],
                           "enable.auto.commit": False, "enable.partition.eof": False})
        md = wait_until(lambda: self._partitions(), timeout=30, what="changes topic %s" % topic)
        self.c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in md])
        self.messages = []
        self.seen = set()
        self.seq = {}

    def _partitions(self):
        t = self.c.list_topics(self.topic, timeout=5).topics.get(self.topic)
        if t is None or t.error is not None or not t.partitions:
            return None
        return sorted(t.partitions)

    def poll(self, seconds=0.2):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            m = self.c.poll(0.1)
            if m is None or m.error():
                continue
            v = msgpack.unpackb(m.value(), raw=False)
            v["_key"] = m.key().decode()
            v["_read"] = now_ms()
            self.messages.append(v)
            k = (v["user"], v["status"], v["since"])
            if k not in self.seen:
                self.seen.add(k)
                self.seq.setdefault(v["user"], []).append((v["status"], v["since"]))

    def wait_for(self, pred, timeout=20, what="changes"):
        def ok():
            self.poll()
            return pred()

        return wait_until(ok, timeout=timeout, interval=0.01, what=what)

    def first(self, user, status, since):
        return next(m for m in self.messages if (m["user"], m["status"], m["since"]) == (user, status, since))

    def close(self):
        self.c.close()


@pytest.fixture
def reader(ns):
    readers = []

    def make():
        r = ChangeReader(ns.changes)
        readers.append(r)
        return r

    yield make
    for r in readers:
        r.close()


def reference_sequence(times, offline_ms, away_ms):
    """The transitions of a user whose `active` events have these times (whole seconds, in
    order), evaluated second by second straight from the definition."""
    seq, active, last = [], None, "offline"

    def status(t):
        if active is None or t - active >= offline_ms:
            return "offline"
        return "away" if t - active >= away_ms else "online"

    i = 0
    for t in range(times[0], times[-1] + offline_ms + away_ms + 1000, 1000):
        for step in (0, 1):
            if step == 1:
                while i < len(times) and times[i] == t:
                    active = t
                    i += 1
            s = status(t)
            if s != last:
                seq.append((s, t))
                last = s
    return seq


def changes_cfg(ns, offline="3s", away="1s", **over):
    return ns.config(changes={"topic": ns.changes, "offline_after": offline, "away_after": away}, **over)


def test_online_then_away_then_offline_by_silence(ns, reader):
    ns.start_worker(changes_cfg(ns))
    r = reader()
    t = whole_second_ms()
    ns.producer.event("active", "u1", time_ms=t, state="dnd")
    ns.producer.flush()
    want = [("online", t), ("away", t + 1000), ("offline", t + 3000)]
    r.wait_for(lambda: len(r.seq.get("u1", [])) >= 3, what="three changes of u1")
    r.poll(1.0)  # nothing more may come
    assert r.seq["u1"] == want
    online = r.first("u1", "online", t)
    assert online["_key"] == "u1" and online["type"] == "change" and online["v"] == 1
    assert online["active"] == t // 1000 and "online" not in online
    assert online["state"] == "dnd"
    # detected within offline_after + 2 s (design target), counted from the event time
    assert r.first("u1", "offline", t + 3000)["_read"] <= t + 3000 + 2000


def test_offline_user_comes_back_online_on_the_next_event(ns, reader):
    ns.start_worker(changes_cfg(ns, away="30s"))
    r = reader()
    t1 = whole_second_ms()
    ns.producer.event("active", "u2", time_ms=t1)
    ns.producer.flush()
    r.wait_for(lambda: ("offline", t1 + 3000) in r.seq.get("u2", []), what="u2 offline")
    t2 = whole_second_ms() + 1000
    ns.producer.event("online", "u2", time_ms=t2)  # a heartbeat; activity is 4+ s old, < 30 s
    ns.producer.flush()
    r.wait_for(lambda: len(r.seq.get("u2", [])) >= 4, what="u2 online again, then offline")
    r.poll(1.0)
    assert r.seq["u2"] == [("online", t1), ("offline", t1 + 3000), ("online", t2), ("offline", t2 + 3000)]
    again = r.first("u2", "online", t2)
    assert again["active"] == t1 // 1000 and again["online"] == t2 // 1000


def test_heartbeat_only_user_is_away_and_heartbeats_prevent_offline(ns, reader):
    ns.start_worker(changes_cfg(ns))
    r = reader()
    t0 = whole_second_ms()
    for i in range(6):  # one heartbeat a second: never 3 s of silence
        ns.producer.event("online", "hb", time_ms=t0 + 1000 * i)
        ns.producer.flush()
        time.sleep(max(0, (t0 + 1000 * (i + 1) - now_ms()) / 1000))
    last = t0 + 5000
    r.wait_for(lambda: ("offline", last + 3000) in r.seq.get("hb", []), what="hb offline")
    r.poll(0.5)
    assert r.seq["hb"] == [("away", t0), ("offline", last + 3000)]


def test_delete_makes_the_user_offline_at_once(ns, reader):
    # offline_after 6 s: the delete must be consumed before silence would make u3 offline, also on
    # a slow (sanitizer) build on a loaded machine.
    ns.start_worker(changes_cfg(ns, offline="6s", away="30s"))
    r = reader()
    t = whole_second_ms()
    ns.producer.event("active", "u3", time_ms=t)
    ns.producer.flush()
    r.wait_for(lambda: r.seq.get("u3"), what="u3 online")
    ns.producer.event("delete", "u3", time_ms=t + 500)
    ns.producer.flush()
    r.wait_for(lambda: len(r.seq["u3"]) >= 2, what="u3 offline")
    r.poll(max(1.0, (t + 6000 + 1500 - now_ms()) / 1000))  # past the silence deadline
    assert r.seq["u3"] == [("online", t), ("offline", t + 500)]
    off = r.first("u3", "offline", t + 500)
    assert "active" not in off and "online" not in off


def test_many_users_in_one_batch_each_get_their_own_transitions(ns, reader):
    ns.start_worker(changes_cfg(ns, away="30s"))
    r = reader()
    t = whole_second_ms()
    users = ["m%d" % i for i in range(300)]
    for i, u in enumerate(users):
        ns.producer.event("active", u, time_ms=t - 1000 * (i % 2))
    ns.producer.flush()
    r.wait_for(lambda: all(len(r.seq.get(u, [])) == 2 for u in users), timeout=30, what="300 users offline")
    for i, u in enumerate(users):
        ti = t - 1000 * (i % 2)
        assert r.seq[u] == [("online", ti), ("offline", ti + 3000)], u


def test_kill9_and_rebalances_lose_and_invent_no_transition(ns, reader):
    """Steady users send an event every second for the whole test, leavers one each at staggered
    times. Meanwhile: two workers; one is killed with SIGKILL; a third joins; the first leaves with
    SIGTERM. Each steady user must be online exactly once and offline once after its last event;
    each leaver online then offline three seconds later (exactly: reference_sequence says what the
    event times give, should the stream itself have paused)."""
    cfg = changes_cfg(ns, away="30s", kafka={"properties": FAST_GROUP})

    def worker():
        return ns.start_worker(dict(cfg, worker=dict(cfg["worker"], metrics_port=ns.config()["worker"]["metrics_port"])))

    w1, w2 = worker(), worker()
    r = reader()
    steady = ["s%d" % i for i in range(40)]
    times = {}
    t_start = time.monotonic()
    w3 = None
    second = 0
    while time.monotonic() - t_start < 24:
        t = whole_second_ms()
        for u in steady + ["l%d_%d" % (second, i) for i in range(5)]:  # 5 new leavers a second
            ns.producer.event("active", u, time_ms=t)
            if times.setdefault(u, [t])[-1] != t:
                times[u].append(t)
        ns.producer.flush()
        elapsed = time.monotonic() - t_start
        if second == 4:
            w2.p.kill()  # SIGKILL: no commit, no leave; its partitions move after the session timeout
            w2.p.wait(10)
            w2.stopped = True
        if second == 14:
            w3 = worker()
        if second == 18:  # in the background: the event stream must not pause meanwhile
            stopper = threading.Thread(target=w1.stop_ok)
            stopper.start()
        second += 1
        r.poll(max(0.0, second - elapsed))
    stopper.join(60)
    want = {u: reference_sequence(ts, 3000, 30000) for u, ts in times.items()}
    r.wait_for(lambda: all(len(r.seq.get(u, [])) >= 2 for u in want), timeout=60,
               what="every user offline")
    r.poll(2.0)
    wrong = {u: (r.seq.get(u), w) for u, w in want.items() if r.seq.get(u) != w}
    assert not wrong, "%d of %d users with wrong sequences, e.g. %r" % (len(wrong), len(want), list(wrong.items())[:5])
    assert set(r.seq) == set(want)
    assert w3.alive()
    print("FIGURES changes_kill9: users=%d, messages=%d, distinct=%d" % (len(want), len(r.messages), len(r.seen)))


def test_disabled_changes_create_no_topic_and_no_index(ns, redis):
    w = ns.start_worker(ns.config(changes={"topic": ns.changes, "enabled": False}))
    ns.producer.event("active", "u4", time_ms=whole_second_ms())
    ns.producer.flush()
    wait_until(lambda: redis("ZSCORE", ns.bucket_keys("u4")["a"], "u4") is not None, what="u4 in the status store")
    c = Consumer({"bootstrap.servers": KAFKA, "group.id": ns.group + "-md"})
    try:
        assert ns.changes not in c.list_topics(timeout=10).topics
    finally:
        c.close()
    assert redis("KEYS", ns.prefix + "#*") == []
    assert "status changes" not in w.log()


def test_index_forgets_offline_users_once_their_activity_is_stale(ns, reader, redis):
    ns.start_worker(changes_cfg(ns, offline="1s", away="2s"))
    r = reader()
    t = whole_second_ms()
    ns.producer.event("active", "u5", time_ms=t)
    ns.producer.flush()
    r.wait_for(lambda: len(r.seq.get("u5", [])) >= 2, what="u5 online then offline")
    assert r.seq["u5"] == [("online", t), ("offline", t + 1000)]
    # Kept until its activity is older than away_after (a quick return is "online"), then dropped:
    # the index holds no user that can no longer change by itself.
    wait_until(lambda: redis("KEYS", ns.prefix + "#*") == [], timeout=10, what="an empty index")
    r.poll(1.0)
    assert r.seq["u5"] == [("online", t), ("offline", t + 1000)]


def topology_followed(worker):
    """Redirects followed plus slot maps read by the worker (its store and its index)."""
    return sum(metric(worker.metrics_url, name) for name in (
        'userstatus_redis_redirects_total{kind="moved"}', 'userstatus_redis_redirects_total{kind="ask"}',
        "userstatus_redis_slot_map_refreshes_total"))


def test_index_failing_past_the_write_budget_rewinds_the_batch_and_loses_nothing(ns, reader, redis):
    """The deadline index cannot be read (something else wrote a string where every partition's
    index lives) for longer than the write budget (half of max.poll.interval.ms): the batch is
    rewound and consumed again, never retried past the point where the group could hand its
    partitions to another worker; once the keys are gone, the user's change comes out once."""
    cfg = changes_cfg(ns, offline="30s", away="30s")
    cfg["kafka"]["properties"] = {"session.timeout.ms": "6000", "max.poll.interval.ms": "6000",
                                  "heartbeat.interval.ms": "1000"}
    blocked = ["%s#changes:status:{%s:%d}" % (ns.prefix, ns.topic, p) for p in range(PARTITIONS)]
    for key in blocked:
        redis("SET", key, "not an index")
    w = ns.start_worker(cfg)
    r = reader()
    t = whole_second_ms()
    ns.producer.event("active", "rw1", time_ms=t)
    ns.producer.flush()
    wait_until(lambda: metric(w.metrics_url, "userstatus_worker_batches_rewound_total") >= 1,
               timeout=30, what="the batch rewound after the write budget")
    assert "rewinding the batch" in w.log()
    r.poll(0.5)
    assert "rw1" not in r.seq  # nothing published while the index cannot be read
    for key in blocked:
        redis("DEL", key)
    r.wait_for(lambda: r.seq.get("rw1"), timeout=30, what="rw1's change once the index is back")
    r.poll(1.0)
    assert r.seq["rw1"] == [("online", t)]
    w.stop_ok()


@pytest.mark.parametrize("kind", ["shards", "cluster", "sentinel"])
def test_changes_on_every_redis_topology_while_it_changes(ns, reader, kind):
    """50 users come online; while they are silent, the cluster moves half its slots (the index
    keys follow MOVED) or Sentinel fails over (the index follows the new master; WAIT keeps its
    writes on the replica); every user still goes offline exactly once, on time."""
    from topology import Cluster, Sentinel, Shards

    topo = {"shards": Shards, "cluster": Cluster, "sentinel": Sentinel}[kind]()
    try:
        us = dict(topo.config(), redis_wait_replicas=1) if kind == "sentinel" else topo.config()
        w = ns.start_worker(changes_cfg(ns, offline="5s", away="30s", user_status=us))
        r = reader()
        t = whole_second_ms()
        users = ["t%d" % i for i in range(50)]
        for u in users:
            ns.producer.event("active", u, time_ms=t)
        ns.producer.flush()
        r.wait_for(lambda: all(r.seq.get(u) for u in users), what="50 users online")
        if kind == "cluster":  # every slot of the node holding partition 0's index moves
            followed = topology_followed(w)
            owner = topo.owner_of("%s#changes:status:{%s:0}" % (ns.prefix, ns.topic))
            assert owner is not None
            other = next(n for n in topo.nodes if n is not owner)
            owned = sum(last - first + 1 for first, last, *_ in owner.call("CLUSTER", "SLOTS")
                        if _[0][1] == owner.port)
            topo.reshard(owner, other, owned)
        if kind == "sentinel":
            topo.failover()
        r.wait_for(lambda: all(len(r.seq.get(u, [])) >= 2 for u in users), timeout=60,
                   what="50 users offline")
        r.poll(1.0)
        wrong = {u: r.seq[u] for u in users if r.seq[u] != [("online", t), ("offline", t + 5000)]}
        assert not wrong, wrong
        if kind == "cluster":  # the worker saw the slots move (redirects or a fresh slot map)
            assert topology_followed(w) > followed
        w.stop_ok()
    finally:
        topo.stop()
