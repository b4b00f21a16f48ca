"""Checks of the test harness itself against the real broker and Redis (no userstatus binaries needed)."""
import msgpack
import pytest

from conftest import KafkaProducer, Redis, consume_all, free_port, now_ms, wait_until


def test_harness_producer_roundtrip_same_key_same_partition(ns):
    p = KafkaProducer(ns.topic)
    ts = now_ms() - 100_000
    p.event("active", "h1", 123, state="x", timestamp=ts)
    p.event("online", "h1", 456)
    p.send(b"\xc1raw", key="h1")
    p.flush()
    assert len({part for part, _, _ in p.delivered}) == 1
    msgs = consume_all(ns.topic, 3)
    assert len(msgs) == 3
    assert [m["key"] for m in msgs] == [b"h1"] * 3
    assert msgpack.unpackb(msgs[0]["value"]) == {"type": "active", "user": "h1", "time": 123, "state": "x"}
    assert msgs[0]["timestamp"] == ts
    assert msgs[2]["value"] == b"\xc1raw"


def test_harness_redis_client(ns, redis):
    k = ns.key("h2")
    assert redis("ZADD", k, "GT", 10, "a") == 1
    assert redis("ZADD", k, "GT", 5, "a") == 0
    assert redis("EXPIRE", k, 100) == 1
    assert redis("ZRANGE", k, 0, -1, "WITHSCORES") == [b"a", b"10"]
    assert 0 < redis("TTL", k) <= 100
    assert redis("TYPE", k) == "zset"
    assert redis("GET", "us-e2e-missing-" + ns.id) is None
    r2 = Redis()
    assert r2("PING") == "PONG"
    r2.close()


def test_harness_helpers():
    assert 0 < free_port() < 65536
    assert wait_until(lambda: 7) == 7
    with pytest.raises(AssertionError):
        wait_until(lambda: False, timeout=0.3, what="never")
