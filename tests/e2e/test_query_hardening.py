"""The query service under hostile or failing conditions: shutdown with requests suspended on a frozen
Redis, /health while Redis is frozen, unauthorized bodies, error reasons that must not leak, the
warm start, and debounce identities that clients cannot forge."""
import http.client
import os
import socket
import threading
import time

import requests

from conftest import API_KEY, api, free_port, wait_until
from test_proxy import json_200, metric, proxy, rpc_body

# Two user ids with the same 64-bit FNV-1a hash (found by a Pollard-rho search): before the debounce
# table was keyed, the second user's "active" events were suppressed as repeats of the first's.
FNV_COLLISION = ("u-ceec80e0913679a9", "u-1e24a715ee0259d8")


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


def test_sigterm_with_gets_suspended_on_a_frozen_redis_answers_everyone_and_exits(ns, private_redis):
    cfg = ns.config(user_status={"redis_address": private_redis.addr, "redis_io_timeout": "30s"},
                    kafka={"produce_timeout": "30s"})
    q = ns.start_query(cfg)
    private_redis.freeze()
    results = []

    def get(i):
        try:
            r = api(q.url, "get_user_status", {"users": ["f%d" % i]}, timeout=20)
            results.append(("answer", r.status_code, r.json()))
        except requests.ConnectionError:
            results.append(("closed", None, None))

    threads = [threading.Thread(target=get, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    wait_until(lambda: metric(q.url, 'userstatus_query_commands_total{method="get_user_status"}') == 8,
               what="the 8 gets to be suspended")
    t0 = time.monotonic()
    q.stop_ok()  # SIGTERM; asserts exit code 0
    for t in threads:
        t.join(20)
    private_redis.thaw()
    assert len(results) == 8
    for kind, code, body in results:
        assert kind == "closed" or (code == 200 and body == {"error": {"code": 100, "message": "internal server error"}}), \
            (kind, code, body)
    assert time.monotonic() - t0 < 15
    assert "panic" not in q.log().lower()


def test_get_outlasting_the_loops_read_timeout_is_handed_to_the_reader_and_answered(ns, private_redis):
    """An HTTP thread reads the gets of each pass itself, with 50 ms timeouts (query/reader.h). A Redis
    that answers later than that does not fail the request: the read goes to a reader thread, which has
    redis_io_timeout, the connection waits suspended, and the answer is the real one. The HTTP threads
    read again once a reader's round trip succeeded."""
    cfg = ns.config(user_status={"redis_address": private_redis.addr, "redis_io_timeout": "10s"},
                    query={"threads": 1})
    q = ns.start_query(cfg)
    assert api(q.url, "get_user_status", {"users": ["s0"]}).json() == {"result": {"statuses": [{"user": "s0"}]}}
    inline0 = metric(q.url, "userstatus_query_reads_inline_total")
    batched0 = metric(q.url, "userstatus_query_reads_batched_total")
    private_redis.freeze()
    thaw = threading.Timer(0.6, private_redis.thaw)
    thaw.start()
    try:
        t0 = time.monotonic()
        r = api(q.url, "get_user_status", {"users": ["s1", "s2"]}, timeout=10)
        took = time.monotonic() - t0
    finally:
        thaw.join()
    assert r.json() == {"result": {"statuses": [{"user": "s1"}, {"user": "s2"}]}}, r.text
    assert took >= 0.5, took  # answered after the thaw, not failed at the 50 ms timeout
    assert metric(q.url, "userstatus_query_reads_batched_total") == batched0 + 1
    assert metric(q.url, "userstatus_query_reads_inline_total") == inline0
    assert api(q.url, "get_user_status", {"users": ["s3"]}).json() == {"result": {"statuses": [{"user": "s3"}]}}
    assert metric(q.url, "userstatus_query_reads_inline_total") == inline0 + 1


def test_health_answers_from_state_while_redis_is_frozen(ns, private_redis):
    cfg = ns.config(user_status={"redis_address": private_redis.addr, "redis_io_timeout": "20s"},
                    query={"threads": 2})
    q = ns.start_query(cfg)
    assert requests.get(q.url + "/health", timeout=5).status_code == 200
    private_redis.freeze()
    try:
        # Before: each /health PINGed Redis on an HTTP thread and blocked for redis_io_timeout (20 s);
        # two of them stalled every HTTP thread. Now all answer at once from the reader's state.
        answers = []

        def health():
            answers.append(requests.get(q.url + "/health", timeout=5).status_code)

        threads = [threading.Thread(target=health) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(answers) == 16 and set(answers) <= {200, 503}, answers
        assert api(q.url, "get_user_status", {"users": []}, timeout=5).json() == {"result": {"statuses": []}}
    finally:
        private_redis.thaw()


def test_health_reports_redis_down_and_recovers(ns, private_redis):
    cfg = ns.config(user_status={"redis_address": private_redis.addr, "redis_io_timeout": "1s"})
    q = ns.start_query(cfg)
    private_redis.kill()
    text = wait_until(lambda: (lambda r: r.text if r.status_code == 503 else None)(
        requests.get(q.url + "/health", timeout=5)), what="/health to report Redis down")
    assert text.startswith("unhealthy: Redis: "), text
    private_redis.start()
    wait_until(lambda: requests.get(q.url + "/health", timeout=5).status_code == 200, what="/health to recover")


def test_health_is_not_ready_before_the_producer_knows_the_topic(ns):
    cfg = ns.config(kafka={"brokers": "127.0.0.1:%d" % free_port()})
    q = ns.start_query(cfg, require_200=False)
    r = requests.get(q.url + "/health", timeout=5)
    assert r.status_code == 503 and r.text == "starting: Kafka topic metadata not known yet\n"


def test_first_rpc_after_start_succeeds_with_the_default_ack_timeout(ns):
    """Warm start: /health is 200 only once the producer knows the topic's leaders, so the very first
    proxy call (bounded by the default 500 ms proxy.ack_timeout) is acknowledged in time."""
    cfg = ns.config()
    q = ns.start_query(cfg)
    assert json_200(proxy(q.url, "rpc", rpc_body("warm"))) == {"result": {}}
    assert metric(q.url, 'userstatus_query_proxy_events_acknowledged_total{type="active"}') == 1


def test_unauthorized_bodies_are_discarded_not_buffered(ns):
    cfg = ns.config(query={"max_body_size": 1 << 20, "max_connections": 512})
    q = ns.start_query(cfg)
    before = rss_kib(q.pid)
    body_len = (1 << 20) - 1024
    socks = []
    try:
        for _ in range(64):
            s = socket.create_connection(("127.0.0.1", cfg["port"]), timeout=10)
            s.sendall(b"POST /api/get_user_status HTTP/1.1\r\nHost: x\r\nX-API-Key: wrong\r\n"
                      b"Content-Length: %d\r\n\r\n" % (body_len + 1))
            s.sendall(b"x" * body_len)  # all but the last byte: the request stays open
            socks.append(s)
        time.sleep(1)
        grown = rss_kib(q.pid) - before
        # 64 buffered bodies would be 64 MiB; discarded ones cost the socket buffers only.
        assert grown < 24 * 1024, "RSS grew by %d KiB" % grown
        for s in socks:
            s.sendall(b"x")
        for s in socks:
            assert s.recv(64).startswith(b"HTTP/1.1 401")
    finally:
        for s in socks:
            s.close()
    assert metric(q.url, 'userstatus_query_http_rejected_total{reason="unauthorized"}') == 64


def test_a_failed_read_tells_the_client_nothing_about_redis(ns):
    dead = "127.0.0.1:%d" % free_port()
    cfg = ns.config(user_status={"redis_address": dead, "redis_connect_timeout": "200ms"})
    q = ns.start_query(cfg, require_200=False)
    r = api(q.url, "get_user_status", {"users": ["secret-user-of-another-request", "u2"]})
    assert r.json() == {"error": {"code": 100, "message": "internal server error"}}
    reason = r.headers["X-Userstatus-Error"]
    assert reason == "reading the statuses from Redis failed"
    assert dead.split(":")[1] not in reason and "127.0.0.1" not in reason


def test_crafted_hash_collision_does_not_suppress_another_users_event(ns):
    a, b = FNV_COLLISION
    cfg = ns.config(proxy={"active_debounce": "60s", "ack_timeout": "10s"})
    q = ns.start_query(cfg)
    assert json_200(proxy(q.url, "rpc", rpc_body(a))) == {"result": {}}
    assert json_200(proxy(q.url, "rpc", rpc_body(b))) == {"result": {}}
    assert json_200(proxy(q.url, "rpc", rpc_body(a))) == {"result": {}}  # a real repeat
    assert metric(q.url, "userstatus_query_proxy_debounced_total") == 1
    assert metric(q.url, 'userstatus_query_proxy_events_acknowledged_total{type="active"}') == 2


def test_metrics_are_open_on_the_api_port_by_default(ns):
    q = ns.start_query(ns.config())
    r = requests.get(q.url + "/metrics", timeout=5)
    assert r.status_code == 200 and "userstatus_query_http_requests_total" in r.text


def test_metrics_require_the_api_key_when_configured(ns):
    q = ns.start_query(ns.config(query={"metrics_require_key": True}))
    assert requests.get(q.url + "/metrics", timeout=5).status_code == 401
    r = requests.get(q.url + "/metrics", headers={"X-API-Key": API_KEY}, timeout=5)
    assert r.status_code == 200 and "userstatus_query_http_requests_total" in r.text
    r = requests.get(q.url + "/metrics", headers={"Authorization": "apikey " + API_KEY}, timeout=5)
    assert r.status_code == 200
    assert requests.get(q.url + "/health", timeout=5).status_code == 200  # probes need no key


def test_metrics_on_a_listener_of_their_own(ns):
    port = free_port()
    q = ns.start_query(ns.config(query={"metrics_port": port}))
    assert requests.get(q.url + "/metrics", timeout=5).status_code == 404
    r = requests.get("http://127.0.0.1:%d/metrics" % port, timeout=5)
    assert r.status_code == 200 and "userstatus_query_http_requests_total" in r.text
    r = requests.get("http://127.0.0.1:%d/health" % port, timeout=5)
    assert r.status_code == 200


def test_latency_histograms_count_exactly_this_tests_requests(ns, stack):
    _, q = stack
    for i in range(3):
        assert api(q.url, "get_user_status", {"users": ["h%d" % i]}).status_code == 200
    for i in range(2):
        assert api(q.url, "update_user_status", {"users": ["h%d" % i, "x%d" % i]}).json() == {"result": {}}
    assert api(q.url, "batch", {"commands": [{"get_user_status": {"users": ["a"]}},
                                             {"delete_user_status": {"users": ["b"]}}]}).status_code == 200
    text = requests.get(q.url + "/metrics", timeout=5).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    dur = 'userstatus_query_request_duration_seconds_count{method="%s",transport="http"}'
    assert samples[dur % "get_user_status"] == 4
    assert samples[dur % "update_user_status"] == 2
    assert samples[dur % "delete_user_status"] == 1
    assert samples['userstatus_query_request_duration_seconds_bucket{method="get_user_status",transport="http",le="+Inf"}'] == 4
    assert samples["userstatus_query_produce_ack_seconds_count"] == 5  # 2 updates x 2 users + 1 delete
    assert samples["userstatus_query_events_acknowledged_total"] == 5
    assert samples["userstatus_query_requests_in_flight"] == 0
    # Sequential requests: each get is one reader round, i.e. one store read.
    assert samples['userstatus_redis_roundtrip_seconds_count{role="read"}'] == 4
    assert 'userstatus_query_request_duration_seconds_count{method="online",transport="http"}' not in samples


def test_a_request_whose_client_left_is_not_counted_as_waiting_at_shutdown(ns, private_redis):
    """A get suspended on a frozen Redis whose client goes away: the call completes at
    query.request_timeout, its connection turns out closed, and the request no longer counts as
    waiting -- shutdown does not wait for it nor report it unanswered."""
    cfg = ns.config(user_status={"redis_address": private_redis.addr, "redis_io_timeout": "30s"},
                    query={"request_timeout": "1s"})
    q = ns.start_query(cfg)
    private_redis.freeze()
    try:
        body = b'{"users":["gone"]}'
        s = socket.create_connection(("127.0.0.1", cfg["port"]), timeout=10)
        s.sendall(b"POST /api/get_user_status HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (API_KEY.encode(), len(body), body))
        wait_until(lambda: metric(q.url, 'userstatus_query_commands_total{method="get_user_status"}') == 1,
                   what="the get to be suspended")
        s.close()  # the client leaves while its request waits
        wait_until(lambda: metric(q.url, "userstatus_query_requests_in_flight") == 0, timeout=10,
                   what="the call to complete at its deadline")
        q.stop_ok()
        assert "not answered yet" not in q.log()
    finally:
        private_redis.thaw()
