"""The Centrifugo OSS proxy endpoints of userstatus-query (/centrifugo/rpc, /centrifugo/refresh),
called exactly as Centrifugo v5 and v6 call them: POST, Content-Type: application/json, Go's HTTP
client, the API key in a static header (v5 `proxy_static_http_headers`, v6 `http.static_headers`),
and the JSON body of Centrifugo's proxy protocol."""
import json
import threading
import time

import msgpack
import requests

from conftest import API_KEY, consume_all, free_port, metric, status, wait_until

# The fields Centrifugo puts in every proxy request (client id, transport, protocol, encoding).
BASE = {"client": "9336a229-2400-4ebc-8c50-0a643d22e8a0", "transport": "websocket", "protocol": "json",
        "encoding": "json"}
GO_HEADERS = {"Content-Type": "application/json", "User-Agent": "Go-http-client/1.1",
              "Accept-Encoding": "gzip"}
# Functional tests wait generously for the broker: a producer's first acknowledgement can take longer
# than the default proxy.ack_timeout while it connects. Timing is tested separately.
PATIENT = {"ack_timeout": "10s"}


def proxy(base_url, endpoint, body=None, raw=None, static_headers=None, timeout=15):
    """POST /centrifugo/<endpoint> the way Centrifugo does; static_headers default to the v6 style
    X-API-Key header. Returns the requests.Response."""
    h = dict(GO_HEADERS)
    h.update({"X-API-Key": API_KEY} if static_headers is None else static_headers)
    data = raw if raw is not None else json.dumps(body, separators=(",", ":")).encode()
    return requests.post("%s/centrifugo/%s" % (base_url, endpoint), data=data, headers=h, timeout=timeout)


def rpc_body(user, method="update_user_status", data=None, **extra):
    d = dict(BASE, user=user, method=method)
    if data is not ...:
        d["data"] = {} if data is None else data
    d.update(extra)
    return d


def refresh_body(user, **extra):
    d = dict(BASE, user=user)
    d.update(extra)
    return d


def json_200(r):
    assert r.status_code == 200, "HTTP %d: %r" % (r.status_code, r.content[:300])
    assert r.headers["Content-Type"] == "application/json"
    return r.json()


def events(ns, expected, timeout=20.0):
    return [dict(msgpack.unpackb(m["value"], raw=False), key=m["key"].decode())
            for m in consume_all(ns.topic, expected, timeout)]


# --------------------------------------------------------------------------------------------------
# RPC proxy


def test_rpc_update_user_status_from_centrifugo_v6_sets_active(ns):
    cfg = ns.config(proxy=PATIENT)
    ns.start_worker(cfg)
    q = ns.start_query(cfg)
    before = int(time.time())
    assert json_200(proxy(q.url, "rpc", rpc_body("42"))) == {"result": {}}
    st = wait_until(lambda: (lambda s: s if "active" in s else None)(status(q.url, "42")),
                    what="active of user 42")
    assert before <= st["active"] <= int(time.time())
    assert "online" not in st


def test_rpc_from_centrifugo_v5_with_authorization_static_header(ns):
    q = ns.start_query(ns.config(proxy=PATIENT))
    r = proxy(q.url, "rpc", rpc_body("v5-user"), static_headers={"Authorization": "apikey " + API_KEY})
    assert json_200(r) == {"result": {}}
    (ev,) = events(ns, 1)
    assert ev["type"] == "active" and ev["user"] == "v5-user" and ev["key"] == "v5-user"
    assert "state" not in ev


def test_rpc_event_is_produced_before_the_reply(ns):
    q = ns.start_query(ns.config(proxy=PATIENT))
    before = int(time.time() * 1000)
    assert json_200(proxy(q.url, "rpc", rpc_body("acked"))) == {"result": {}}
    (ev,) = events(ns, 1, timeout=5)
    assert ev["type"] == "active" and ev["user"] == "acked"
    assert before <= ev["time"] <= int(time.time() * 1000)
    assert metric(q.url, 'userstatus_query_proxy_events_acknowledged_total{type="active"}') == 1


def test_rpc_data_state_is_stored(ns):
    cfg = ns.config(proxy=PATIENT)
    ns.start_worker(cfg)
    q = ns.start_query(cfg)
    assert json_200(proxy(q.url, "rpc", rpc_body("43", data={"state": "dnd"}))) == {"result": {}}
    st = wait_until(lambda: (lambda s: s if s.get("state") == "dnd" else None)(status(q.url, "43")),
                    what="state of user 43")
    assert "active" in st


def test_rpc_binary_encoding_is_accepted_without_state(ns):
    q = ns.start_query(ns.config(proxy=PATIENT))
    body = dict(BASE, encoding="binary", protocol="protobuf", user="bin", method="update_user_status",
                b64data="eyJzdGF0ZSI6ImRuZCJ9")
    assert json_200(proxy(q.url, "rpc", body)) == {"result": {}}
    (ev,) = events(ns, 1)
    assert ev["user"] == "bin" and "state" not in ev


def test_rpc_extra_fields_of_newer_centrifugo_are_ignored(ns):
    q = ns.start_query(ns.config(proxy=PATIENT))
    body = rpc_body("meta-user", meta={"team": 1}, labels={"a": "b"}, future_field=[1, 2])
    assert json_200(proxy(q.url, "rpc", body)) == {"result": {}}


def test_rpc_anonymous_user_is_permission_denied(ns, query):
    r = proxy(query.url, "rpc", rpc_body(""))
    assert json_200(r) == {"error": {"code": 403, "message": "permission denied"}}


def test_rpc_unknown_method_is_method_not_found(ns, query):
    for method in ("get_user_status", "update_user_status_x", "ns:update_user_status", ""):
        r = proxy(query.url, "rpc", rpc_body("42", method=method))
        assert json_200(r) == {"error": {"code": 404, "message": "method not found"}}, method
    assert metric(query.url, 'userstatus_query_proxy_rpc_errors_total{code="404"}') == 4


def test_rpc_method_prefix_selects_the_namespaced_method(ns):
    q = ns.start_query(ns.config(proxy=dict(PATIENT, rpc_method_prefix="status:")))
    assert json_200(proxy(q.url, "rpc", rpc_body("42", method="status:update_user_status"))) == {"result": {}}
    assert json_200(proxy(q.url, "rpc", rpc_body("42")))["error"]["code"] == 404


def test_rpc_malformed_bodies_are_bad_request(ns, query):
    bad = [b"", b"{", b"[]", b'"x"', json.dumps(dict(BASE, method="update_user_status")).encode(),
           json.dumps(rpc_body(42)).encode(), json.dumps(rpc_body("42", method=None)).encode(),
           json.dumps(rpc_body("42", data={"state": 5})).encode(),
           json.dumps(rpc_body("42", data={"state": "x" * 65})).encode(),
           json.dumps(rpc_body("u" * 257)).encode()]
    for raw in bad:
        r = proxy(query.url, "rpc", raw=raw)
        assert json_200(r) == {"error": {"code": 400, "message": "bad request"}}, raw
        assert r.headers.get("X-Userstatus-Error"), raw
    assert events(ns, 1, timeout=2) == []


def test_rpc_missing_or_wrong_key_is_401(ns, query):
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "apikey wrong"}):
        r = proxy(query.url, "rpc", rpc_body("42"), static_headers=headers)
        assert r.status_code == 401 and r.content == b"", headers
    r = proxy(query.url, "refresh", refresh_body("42"), static_headers={})
    assert r.status_code == 401 and r.content == b""
    assert metric(query.url, "userstatus_query_proxy_unauthorized_total") == 4
    assert events(ns, 1, timeout=2) == []


def test_api_insecure_needs_no_key(ns):
    q = ns.start_query(ns.config(api_insecure=True, proxy=PATIENT))
    assert json_200(proxy(q.url, "rpc", rpc_body("42"), static_headers={})) == {"result": {}}


def test_non_post_is_405_and_unknown_endpoint_404(ns, query):
    r = requests.get(query.url + "/centrifugo/rpc", headers={"X-API-Key": API_KEY}, timeout=5)
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    r = proxy(query.url, "connect", dict(BASE, user="42"))
    assert r.status_code == 404


def test_disabled_proxy_is_404(ns):
    q = ns.start_query(ns.config(proxy={"enabled": False}))
    assert proxy(q.url, "rpc", rpc_body("42")).status_code == 404
    assert proxy(q.url, "refresh", refresh_body("42")).status_code == 404


def test_rpc_hammering_one_user_produces_one_event_per_debounce_interval(ns):
    q = ns.start_query(ns.config(proxy=dict(PATIENT, active_debounce="3s")))
    t0 = time.monotonic()
    for _ in range(10):
        assert json_200(proxy(q.url, "rpc", rpc_body("hammer"))) == {"result": {}}
    assert json_200(proxy(q.url, "rpc", rpc_body("other"))) == {"result": {}}
    assert time.monotonic() - t0 < 3, "the test needs all calls inside one debounce interval"
    evs = events(ns, 3, timeout=3)
    assert sorted(e["user"] for e in evs) == ["hammer", "other"]
    assert metric(q.url, "userstatus_query_proxy_debounced_total") == 9
    time.sleep(3)
    assert json_200(proxy(q.url, "rpc", rpc_body("hammer"))) == {"result": {}}
    assert [e["user"] for e in events(ns, 4, timeout=3)].count("hammer") == 2


def test_rpc_state_change_is_not_debounced(ns):
    q = ns.start_query(ns.config(proxy=dict(PATIENT, active_debounce="1h")))
    for state in ("dnd", "dnd", "away"):
        assert json_200(proxy(q.url, "rpc", rpc_body("s", data={"state": state}))) == {"result": {}}
    evs = events(ns, 3, timeout=3)
    assert [e["state"] for e in evs] == ["dnd", "away"]


# --------------------------------------------------------------------------------------------------
# refresh proxy


def test_refresh_extends_the_connection_and_sets_online(ns):
    cfg = ns.config(proxy=dict(PATIENT, online_interval="40s"))
    ns.start_worker(cfg)
    q = ns.start_query(cfg)
    before = int(time.time())
    res = json_200(proxy(q.url, "refresh", refresh_body("42")))
    after = int(time.time())
    assert set(res) == {"result"} and set(res["result"]) == {"expire_at"}
    assert before + 40 <= res["result"]["expire_at"] <= after + 40
    st = wait_until(lambda: (lambda s: s if "online" in s else None)(status(q.url, "42")),
                    what="online of user 42")
    assert before <= st["online"] <= int(time.time())
    assert "active" not in st


def test_refresh_default_interval_is_25s(ns):
    q = ns.start_query(ns.config(proxy=PATIENT))
    before = int(time.time())
    exp = json_200(proxy(q.url, "refresh", refresh_body("42")))["result"]["expire_at"]
    assert before + 25 <= exp <= int(time.time()) + 25
    (ev,) = events(ns, 1)
    assert ev["type"] == "online" and ev["user"] == "42"


def test_refresh_is_not_debounced(ns):
    q = ns.start_query(ns.config(proxy=PATIENT))
    for _ in range(3):
        json_200(proxy(q.url, "refresh", refresh_body("tabs")))
    assert [e["type"] for e in events(ns, 3)] == ["online"] * 3


def test_refresh_of_anonymous_or_malformed_request_still_extends_without_event(ns, query):
    for raw in (json.dumps(refresh_body("")).encode(), b"{", b"[]", json.dumps(BASE).encode()):
        res = json_200(proxy(query.url, "refresh", raw=raw))
        assert res["result"]["expire_at"] > time.time(), raw
    assert metric(query.url, "userstatus_query_proxy_refresh_without_event_total") == 4
    assert events(ns, 1, timeout=2) == []


# --------------------------------------------------------------------------------------------------
# Kafka unavailable: answer inside Centrifugo's 1 s proxy timeout


def dead_kafka_config(ns, **proxy_keys):
    port = free_port()  # nothing listens there
    return ns.config(kafka={"brokers": "127.0.0.1:%d" % port, "produce_timeout": "2s"}, proxy=proxy_keys)


def test_rpc_without_broker_answers_a_temporary_error_within_ack_timeout(ns):
    q = ns.start_query(dead_kafka_config(ns), require_200=False)  # not ready: no broker
    t0 = time.monotonic()
    r = proxy(q.url, "rpc", rpc_body("42"))
    took = time.monotonic() - t0
    assert json_200(r) == {"error": {"code": 503, "message": "temporarily unavailable", "temporary": True}}
    assert 0.45 <= took < 0.9, took
    assert "not acknowledged" in r.headers["X-Userstatus-Error"]
    # A failed event does not count for debouncing: the retry tries again.
    assert json_200(proxy(q.url, "rpc", rpc_body("42")))["error"]["code"] == 503
    assert metric(q.url, "userstatus_query_proxy_debounced_total") == 0
    assert metric(q.url, 'userstatus_query_proxy_events_failed_total{type="active"}') == 2


def test_refresh_without_broker_still_extends_the_connection(ns):
    q = ns.start_query(dead_kafka_config(ns, ack_timeout="200ms", online_interval="30s"), require_200=False)
    t0 = time.monotonic()
    res = json_200(proxy(q.url, "refresh", refresh_body("42")))
    assert time.monotonic() - t0 < 0.6
    assert res["result"]["expire_at"] >= int(time.time()) + 29
    assert metric(q.url, 'userstatus_query_proxy_events_failed_total{type="online"}') == 1
    assert "not acknowledged" in q.log()


def test_sigterm_while_a_request_waits_for_the_broker(ns):
    q = ns.start_query(dead_kafka_config(ns, ack_timeout="20s"), require_200=False)
    replies = []
    t = threading.Thread(target=lambda: replies.append(proxy(q.url, "rpc", rpc_body("42"))))
    t.start()
    wait_until(lambda: metric(q.url, 'userstatus_query_proxy_requests_total{endpoint="rpc"}') == 1,
               what="the RPC to arrive")
    time.sleep(0.2)
    q.stop_ok()
    t.join(10)
    assert json_200(replies[0])["error"]["code"] == 503
