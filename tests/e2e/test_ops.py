"""Operations: TTL, /health and /metrics, behaviour when Kafka is unreachable, worker restarts."""
import random
import re
import time

import pytest
import requests

from conftest import api, now_ms, status, statuses, wait_until

PROM_SAMPLE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? [-+0-9.eEaNInf]+( -?[0-9]+)?$")


@pytest.mark.parametrize("storage", ["buckets", "per_user"])
def test_ttl_expires_user(ns, redis, storage):
    cfg = ns.config(user_status={"expire_interval": "2s", "storage": storage})
    ns.start_worker(cfg)
    q = ns.start_query(cfg)
    t = now_ms()
    ns.producer.event("active", "ttl1", t)
    ns.producer.flush()
    wait_until(lambda: status(q.url, "ttl1") == {"user": "ttl1", "active": t // 1000}, what="ttl1 applied")
    if storage == "per_user":
        ttl = redis("TTL", ns.key("ttl1"))
        assert 0 < ttl <= 2, ttl
    t0 = time.monotonic()
    wait_until(lambda: status(q.url, "ttl1") == {"user": "ttl1"}, timeout=10, what="ttl1 to expire")
    assert time.monotonic() - t0 <= 4
    if storage == "per_user":
        assert redis("EXISTS", ns.key("ttl1")) == 0
    else:  # gone whole once the trim period (interval / 16) after the interval has passed
        keys = ns.bucket_keys("ttl1")
        wait_until(lambda: redis("EXISTS", keys["a"]) == 0, timeout=5, what="bucket key to expire")


@pytest.mark.parametrize("storage", ["buckets", "per_user"])
def test_ttl_is_extended_on_every_update(ns, redis, storage):
    cfg = ns.config(user_status={"expire_interval": "3s", "storage": storage})
    ns.start_worker(cfg)
    q = ns.start_query(cfg)
    for i in range(4):
        t = now_ms()
        ns.producer.event("online", "ttl2", t)
        ns.producer.flush()
        wait_until(lambda: status(q.url, "ttl2").get("online") == t // 1000, what="ttl2 update %d" % i)
        time.sleep(1.5)
    # 6 s after the first update: alive only because each update extended it
    assert status(q.url, "ttl2") == {"user": "ttl2", "online": t // 1000}
    key = ns.key("ttl2") if storage == "per_user" else ns.bucket_keys("ttl2")["o"]
    assert redis("TTL", key) > 0


def check_metrics(url):
    r = requests.get(url + "/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers.get("Content-Type", "").startswith("text/plain"), r.headers
    samples = [ln for ln in r.text.splitlines() if ln and not ln.startswith("#")]
    assert samples, r.text[:500]
    bad = [ln for ln in samples if not PROM_SAMPLE.match(ln)]
    assert not bad, bad[:5]
    return r.text


def test_health_and_metrics_of_both_programs(ns, stack):
    w, q = stack
    for base in (q.url, w.metrics_url):
        r = requests.get(base + "/health", timeout=10)
        assert r.status_code == 200
        check_metrics(base)


def test_metrics_change_after_traffic(ns, stack):
    w, q = stack
    before_q = check_metrics(q.url)
    before_w = check_metrics(w.metrics_url)
    assert api(q.url, "update_user_status", {"users": ["m-1"]}).json() == {"result": {}}
    wait_until(lambda: "active" in status(q.url, "m-1"), what="m-1 applied")
    assert check_metrics(q.url) != before_q
    wait_until(lambda: check_metrics(w.metrics_url) != before_w, what="worker metrics to change")


def test_update_answers_error_100_when_kafka_is_unreachable(ns):
    cfg = ns.config(kafka={"brokers": "127.0.0.1:1", "produce_timeout": "2s"})
    # /health may report the broken Kafka: only wait for the port to answer
    q = ns.start_query(cfg, require_200=False)
    t0 = time.monotonic()
    r = api(q.url, "update_user_status", {"users": ["k1"]}, timeout=30)
    elapsed = time.monotonic() - t0
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == 100
    assert isinstance(body["error"].get("message"), str) and body["error"]["message"]
    assert elapsed <= 10, elapsed
    r = api(q.url, "delete_user_status", {"users": ["k1"]}, timeout=30)
    assert r.json()["error"]["code"] == 100
    r = api(q.url, "update_user_status", {"users": ["k1"]}, timeout=30,
            headers={"X-Centrifugo-Error-Mode": "transport"})
    assert r.status_code == 500
    assert r.json()["code"] == 100
    # reads do not need Kafka
    assert statuses(q.url, ["k1"]) == [{"user": "k1"}]


def test_worker_restart_loses_nothing(ns):
    rng = random.Random(1234)
    users = ["r-%03d" % i for i in range(200)]
    base = now_ms() - 3_600_000
    events = [(rng.choice(users), base + rng.randrange(0, 3_000_000)) for _ in range(1000)]
    best = {}
    for u, t in events:
        best[u] = max(best.get(u, -1), t)
    # make sure every user has at least one event
    for u in users:
        if u not in best:
            t = base + rng.randrange(0, 3_000_000)
            events.append((u, t))
            best[u] = t

    cfg = ns.config()
    w1 = ns.start_worker(cfg)
    q = ns.start_query(cfg)
    half = len(events) // 2
    for u, t in events[:half]:
        ns.producer.event("active", u, t)
    ns.producer.flush()
    # let the worker get going, then stop it midway
    wait_until(lambda: any("active" in s for s in statuses(q.url, users)), what="first events applied")
    w1.stop_ok()
    for u, t in events[half:]:
        ns.producer.event("active", u, t)
    ns.producer.flush()
    cfg2 = dict(cfg, worker=dict(cfg["worker"], metrics_port=ns.config()["worker"]["metrics_port"]))
    ns.start_worker(cfg2)
    expect = [{"user": u, "active": best[u] // 1000} for u in users]
    wait_until(lambda: statuses(q.url, users) == expect, timeout=60, what="all 200 users at their max time")


def test_two_workers_share_partitions(ns):
    cfg = ns.config()
    ns.start_worker(cfg)
    cfg2 = dict(cfg, worker=dict(cfg["worker"], metrics_port=ns.config()["worker"]["metrics_port"]))
    ns.start_worker(cfg2)
    q = ns.start_query(cfg)
    users = ["w-%03d" % i for i in range(100)]
    t = now_ms() - 10_000
    for u in users:
        ns.producer.event("active", u, t)
    ns.producer.flush()
    wait_until(lambda: statuses(q.url, users) == [{"user": u, "active": t // 1000} for u in users],
               timeout=40, what="100 users applied by two workers")
