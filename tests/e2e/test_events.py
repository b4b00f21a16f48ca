"""Events published straight to Kafka, applied by userstatus-worker, read through userstatus-query
and raw Redis."""
import time

from conftest import now_ms, status, statuses, wait_until


def applied(q, user, expected, timeout=20):
    """Wait until get_user_status shows exactly `expected` for user, then check it stays so."""
    wait_until(lambda: status(q.url, user) == expected, timeout=timeout,
               what="status of %r == %r" % (user, expected))
    return status(q.url, user)


def barrier(ns, q, user):
    """Publish an `online` marker event for user (same key, so same partition, after everything
    published before) and wait until it is applied: every earlier event of user has been applied.
    Returns the marker's time in seconds."""
    t = now_ms() + 1000  # later than any earlier online of the tests, within max_clock_skew
    ns.producer.event("online", user, t)
    ns.producer.flush()
    wait_until(lambda: status(q.url, user).get("online") == t // 1000, what="barrier for %r" % user)
    return t // 1000


def test_active_event_with_time(ns, stack):
    _, q = stack
    t = now_ms() - 12_345
    ns.producer.event("active", "e1", t)
    ns.producer.flush()
    assert applied(q, "e1", {"user": "e1", "active": t // 1000}) == {"user": "e1", "active": t // 1000}


def test_online_event_with_time(ns, stack):
    _, q = stack
    t = now_ms() - 7_000
    ns.producer.event("online", "e2", t)
    ns.producer.flush()
    applied(q, "e2", {"user": "e2", "online": t // 1000})


def test_active_and_online_are_independent(ns, stack):
    _, q = stack
    ta = now_ms() - 100_000
    to = now_ms() - 3_000
    ns.producer.event("active", "e3", ta)
    ns.producer.event("online", "e3", to)
    ns.producer.flush()
    applied(q, "e3", {"user": "e3", "active": ta // 1000, "online": to // 1000})


def test_out_of_order_times_keep_the_max(ns, stack):
    _, q = stack
    later = now_ms() - 10_000
    earlier = later - 300_000
    ns.producer.event("active", "e4", later)
    ns.producer.event("active", "e4", earlier)
    ns.producer.event("online", "e4", later - 1000)
    ns.producer.event("online", "e4", earlier)
    ns.producer.flush()
    tb = barrier(ns, q, "e4")
    assert status(q.url, "e4") == {"user": "e4", "active": later // 1000, "online": tb}


def test_smaller_time_in_a_later_batch_does_not_move_time_back(ns, stack):
    _, q = stack
    later = now_ms() - 10_000
    ns.producer.event("active", "e5", later)
    ns.producer.flush()
    applied(q, "e5", {"user": "e5", "active": later // 1000})
    ns.producer.event("active", "e5", later - 60_000)
    ns.producer.flush()
    tb = barrier(ns, q, "e5")
    assert status(q.url, "e5") == {"user": "e5", "active": later // 1000, "online": tb}


def test_missing_time_uses_kafka_message_timestamp(ns, stack):
    _, q = stack
    ts = now_ms() - 100_000
    ns.producer.event("active", "e6", None, timestamp=ts)
    ns.producer.flush()
    applied(q, "e6", {"user": "e6", "active": ts // 1000})


def test_far_future_time_is_clamped_to_now(ns, stack):
    _, q = stack
    future = now_ms() + 3_600_000
    ns.producer.event("active", "e7", future)
    ns.producer.flush()
    got = wait_until(lambda: (lambda s: s if "active" in s else None)(status(q.url, "e7")), what="e7 active")
    assert set(got) == {"user", "active"}
    assert abs(got["active"] - time.time()) <= 5, got


def test_state_from_event(ns, stack):
    _, q = stack
    t = now_ms() - 1_000
    ns.producer.event("online", "e8", t, state="away")
    ns.producer.flush()
    applied(q, "e8", {"user": "e8", "online": t // 1000, "state": "away"})
    # an event without state keeps it
    ns.producer.event("active", "e8", t)
    ns.producer.flush()
    applied(q, "e8", {"user": "e8", "active": t // 1000, "online": t // 1000, "state": "away"})
    # a new state replaces it, "" clears it
    ns.producer.event("active", "e8", t, state="dnd")
    ns.producer.flush()
    applied(q, "e8", {"user": "e8", "active": t // 1000, "online": t // 1000, "state": "dnd"})
    ns.producer.event("active", "e8", t, state="")
    ns.producer.flush()
    applied(q, "e8", {"user": "e8", "active": t // 1000, "online": t // 1000})


def test_delete_then_active_in_one_burst_keeps_only_post_delete_values(ns, stack):
    _, q = stack
    t1 = now_ms() - 5_000
    t2 = t1 - 600_000  # older than what was deleted: only visible if the delete really happened first
    p = ns.producer
    p.event("active", "e9", t1, state="x")
    p.event("online", "e9", t1)
    p.event("delete", "e9")
    p.event("active", "e9", t2)
    p.flush()
    applied(q, "e9", {"user": "e9", "active": t2 // 1000})
    time.sleep(1.0)
    assert status(q.url, "e9") == {"user": "e9", "active": t2 // 1000}


def test_delete_event_removes_user(ns, stack, redis):
    _, q = stack
    t = now_ms() - 5_000
    ns.producer.event("active", "e10", t)
    ns.producer.flush()
    applied(q, "e10", {"user": "e10", "active": t // 1000})
    ns.producer.event("delete", "e10")
    ns.producer.flush()
    applied(q, "e10", {"user": "e10"})
    keys = ns.bucket_keys("e10")
    assert redis("ZSCORE", keys["a"], "e10") is None
    assert redis("EXISTS", ns.key("e10")) == 0


def test_per_user_model_keeps_a_sorted_set_with_ttl(ns, redis):
    cfg = ns.config(user_status={"expire_interval": "1h", "storage": "per_user"})
    ns.start_worker(cfg)
    q = ns.start_query(cfg)
    ta = now_ms() - 30_000
    to = now_ms() - 2_000
    ns.producer.event("active", "r1", ta)
    ns.producer.event("online", "r1", to, state="dnd")
    ns.producer.flush()
    applied(q, "r1", {"user": "r1", "active": ta // 1000, "online": to // 1000, "state": "dnd"})
    key = ns.key("r1")
    assert redis("TYPE", key) == "zset"
    flat = redis("ZRANGE", key, 0, -1, "WITHSCORES")
    members = {flat[i].decode(): float(flat[i + 1]) for i in range(0, len(flat), 2)}
    assert members == {"a": float(ta // 1000), "o": float(to // 1000), "s:dnd": -1.0}
    ttl = redis("TTL", key)
    assert 0 < ttl <= 3600, ttl
    assert redis("KEYS", ns.prefix + ":*") == [key.encode()]


def test_bucket_model_keeps_users_in_bucket_keys_with_ttl(ns, redis):
    cfg = ns.config(user_status={"expire_interval": "1h", "expected_users": 1000})
    ns.start_worker(cfg)
    q = ns.start_query(cfg)
    ta = now_ms() - 30_000
    to = now_ms() - 2_000
    ns.producer.event("active", "r1", ta)
    ns.producer.event("online", "r1", to, state="dnd")
    ns.producer.event("online", "r2", to)
    ns.producer.flush()
    applied(q, "r1", {"user": "r1", "active": ta // 1000, "online": to // 1000, "state": "dnd"})
    applied(q, "r2", {"user": "r2", "online": to // 1000})
    keys = ns.bucket_keys("r1", expected_users=1000)
    assert redis("TYPE", keys["a"]) == "zset" and redis("TYPE", keys["o"]) == "zset"
    assert redis("TYPE", keys["s"]) == "hash"
    assert float(redis("ZSCORE", keys["a"], "r1")) == ta // 1000
    assert float(redis("ZSCORE", keys["o"], "r1")) == to // 1000
    assert redis("HGET", keys["s"], "r1") == b"dnd"
    assert float(redis("ZSCORE", ns.bucket_keys("r2", expected_users=1000)["o"], "r2")) == to // 1000
    for k in keys.values():
        assert redis("OBJECT", "ENCODING", k) == b"listpack"
        ttl = redis("PTTL", k)
        assert 3_600_000 < ttl <= 3_600_000 + 3_600_000 // 16, (k, ttl)  # interval + trim period
    assert len(redis("KEYS", ns.prefix + ":*")) <= 5  # no key per user


def test_event_without_key_is_applied(ns, stack):
    _, q = stack
    t = now_ms() - 4_000
    ns.producer.event("active", "e11", t, key=None)
    ns.producer.flush()
    applied(q, "e11", {"user": "e11", "active": t // 1000})


def test_unknown_fields_and_version_are_accepted(ns, stack):
    _, q = stack
    t = now_ms() - 4_000
    ns.producer.send({"type": "active", "user": "e12", "time": t, "v": 1, "extra": {"nested": [1, 2]},
                      "x": None}, key="e12")
    ns.producer.flush()
    applied(q, "e12", {"user": "e12", "active": t // 1000})


def test_many_users_one_burst(ns, stack):
    _, q = stack
    base = now_ms() - 60_000
    users = ["bulk-%03d" % i for i in range(300)]
    for i, u in enumerate(users):
        ns.producer.event("active", u, base + i * 10)
        ns.producer.event("online", u, base + i * 10 + 5)
    ns.producer.flush()
    expect = [{"user": u, "active": (base + i * 10) // 1000, "online": (base + i * 10 + 5) // 1000}
              for i, u in enumerate(users)]
    wait_until(lambda: statuses(q.url, users) == expect, what="300 users applied")
