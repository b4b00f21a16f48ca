"""Operations: TTL, /health and /metrics, behaviour when Kafka is unreachable, worker restarts."""
import random
import re
import time

import pytest
import requests

from conftest import (BUILD, WORKER_BIN, Proc, api, child_env, consecutive_free_ports, now_ms, status, statuses,
                      wait_until)

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


def metric_values(url):
    """{sample name with labels: value} of a /metrics page (the page is checked as check_metrics does)."""
    out = {}
    for ln in check_metrics(url).splitlines():
        if ln and not ln.startswith("#"):
            name, value = ln.split(" ")[:2]
            out[name] = float(value)
    return out


def delta(before, after, name):
    return after.get(name, 0) - before.get(name, 0)


def test_metrics_count_exactly_the_test_traffic(ns, stack):
    """Each counter moves by exactly what the test's own requests should move it by. Every HTTP
    request of the query service is counted when it arrives, the /metrics request included: the
    second read counts itself (the first read's count is already in its own page)."""
    w, q = stack
    before_q = metric_values(q.url)
    before_w = metric_values(w.metrics_url)
    updates = [["m-1"], ["m-2", "m-3"], ["m-4"]]
    gets = [["m-1", "m-2"], ["nobody"]]
    for users in updates:
        assert api(q.url, "update_user_status", {"users": users}).json() == {"result": {}}
    for users in gets:
        assert "result" in api(q.url, "get_user_status", {"users": users}).json()
    after_q = metric_values(q.url)
    assert delta(before_q, after_q, "userstatus_query_http_requests_total") == len(updates) + len(gets) + 1
    assert delta(before_q, after_q, 'userstatus_query_commands_total{method="update_user_status"}') == len(updates)
    assert delta(before_q, after_q, 'userstatus_query_commands_total{method="get_user_status"}') == len(gets)
    assert delta(before_q, after_q, 'userstatus_query_commands_total{method="delete_user_status"}') == 0
    assert delta(before_q, after_q, "userstatus_query_events_acknowledged_total") == 4
    assert delta(before_q, after_q, "userstatus_query_users_read_total") == 3
    assert delta(before_q, after_q, "userstatus_query_events_failed_total") == 0

    applied = 'userstatus_worker_events_total{result="applied"}'
    wait_until(lambda: delta(before_w, metric_values(w.metrics_url), applied) >= 4,
               what="the worker to apply the 4 events")
    time.sleep(1)  # anything beyond the test's 4 events would show now
    after_w = metric_values(w.metrics_url)
    assert delta(before_w, after_w, applied) == 4
    assert delta(before_w, after_w, 'userstatus_worker_events_total{result="dead_lettered"}') == 0
    assert delta(before_w, after_w, "userstatus_worker_redis_errors_total") == 0


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


def test_supervisor_starts_a_worker_process_whose_fork_failed(ns):
    """--processes 2 while the first fork() fails (as at the user's process limit): the supervisor
    tries that child again after its restart delay, both children serve, and SIGTERM stops all."""
    port = consecutive_free_ports(2)
    cfg = ns.config(worker={"metrics_port": port, "processes": 2})
    env = child_env()
    env["LD_PRELOAD"] = str(BUILD / "tests" / "libus_fail_fork.so")
    env["US_TEST_FAIL_FORKS"] = "1"
    env["ASAN_OPTIONS"] = (env.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0").lstrip(":")
    sup = Proc("userstatus-worker", [str(WORKER_BIN), "--config", str(ns.write_config(cfg))],
               str(ns.tmp / "supervisor.log"), env)
    ns.procs.append(sup)
    for i in range(2):
        sup.wait_health("http://127.0.0.1:%d/health" % (port + i))
    assert "starting worker process 0: fork: Resource temporarily unavailable" in sup.log(), sup.log()[-3000:]
    sup.stop_ok()



def test_worker_freshness_dlq_reasons_and_lag_count_exactly_this_tests_events(ns, stack):
    w, q = stack
    t = now_ms() - 2000  # every event is at least 2 s old when applied
    for i in range(20):
        ns.producer.event("active", "fresh-%d" % i, time_ms=t)
    ns.producer.send(b"\xc1 not msgpack", key="junk")            # malformed_msgpack
    ns.producer.send(msgpack_bad_utf8_user(), key=b"\xff\xfe")  # bad_utf8
    ns.producer.flush()
    wait_until(lambda: "active" in status(q.url, "fresh-19"), what="the 20 events applied")

    def worker_samples():
        return metric_values(w.metrics_url)

    s = wait_until(lambda: (lambda s: s if s.get('userstatus_worker_dlq_total{reason="bad_utf8"}') == 1 else None)(
        worker_samples()), what="the dead letters counted")
    assert s["userstatus_worker_event_age_seconds_count"] == 20
    assert s["userstatus_worker_event_age_seconds_sum"] >= 20 * 2.0
    assert s['userstatus_worker_event_age_seconds_bucket{le="1"}'] == 0
    assert s['userstatus_worker_dlq_total{reason="malformed_msgpack"}'] == 1
    assert s['userstatus_worker_dlq_total{reason="bad_utf8"}'] == 1
    assert s['userstatus_worker_dlq_total{reason="key_mismatch"}'] == 0
    lags = {k: v for k, v in s.items() if k.startswith("userstatus_worker_consumer_lag{")}
    assert sorted(lags) == ['userstatus_worker_consumer_lag{partition="%d"}' % p for p in range(4)]
    wait_until(lambda: all(v == 0 for k, v in worker_samples().items()
                           if k.startswith("userstatus_worker_consumer_lag{")), what="lag to reach 0")


def msgpack_bad_utf8_user():
    """A msgpack event whose user is the str-typed bytes ff fe (not UTF-8)."""
    return b"\x82\xa4type\xa6active\xa4user\xa2\xff\xfe"
