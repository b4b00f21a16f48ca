"""HTTP API of userstatus-query (Centrifugo-compatible server API), end to end."""
import json
import time

import requests

from conftest import API_KEY, api, call, now_ms, status, statuses, wait_until

# ---------------------------------------------------------------------------------------------------
# the seed's curl examples


def test_seed_curl_examples_update_get_delete(ns, stack):
    _, q = stack
    # curl -X POST -H "X-API-Key: secret" -d '{"users":["42"]}' .../api/update_user_status
    r = api(q.url, "update_user_status", {"users": ["42"]})
    assert r.status_code == 200
    assert r.json() == {"result": {}}
    t0 = time.time()

    # get shows the user active "now" (update produces an `active` event only: no online, no state)
    got = wait_until(lambda: (lambda s: s if "active" in s else None)(status(q.url, "42")),
                     what="user 42 to become active")
    assert set(got) == {"user", "active"}, got
    assert got["user"] == "42"
    assert isinstance(got["active"], int)
    assert abs(got["active"] - t0) <= 5, (got, t0)
    assert call(q.url, "get_user_status", {"users": ["42"]}) == {
        "result": {"statuses": [{"user": "42", "active": got["active"]}]}}

    r = api(q.url, "delete_user_status", {"users": ["42"]})
    assert r.status_code == 200
    assert r.json() == {"result": {}}
    wait_until(lambda: status(q.url, "42") == {"user": "42"}, what="user 42 to be deleted")
    assert call(q.url, "get_user_status", {"users": ["42"]}) == {"result": {"statuses": [{"user": "42"}]}}


def test_get_unknown_user_has_only_user_field(ns, query):
    assert call(query.url, "get_user_status", {"users": ["nobody"]}) == {
        "result": {"statuses": [{"user": "nobody"}]}}


def test_get_keeps_request_order_and_duplicates(ns, stack):
    _, q = stack
    ta = now_ms() - 50_000
    tb = now_ms() - 20_000
    ns.producer.event("active", "a", ta)
    ns.producer.event("online", "b", tb)
    ns.producer.flush()
    wait_until(lambda: statuses(q.url, ["a", "b"]) == [{"user": "a", "active": ta // 1000},
                                                       {"user": "b", "online": tb // 1000}],
               what="a and b applied")
    assert statuses(q.url, ["b", "a", "b", "zz"]) == [
        {"user": "b", "online": tb // 1000},
        {"user": "a", "active": ta // 1000},
        {"user": "b", "online": tb // 1000},
        {"user": "zz"},
    ]


def test_update_with_state_shows_state(ns, stack):
    _, q = stack
    assert call(q.url, "update_user_status", {"users": ["s1"], "state": "dnd"}) == {"result": {}}
    t0 = time.time()
    got = wait_until(lambda: (lambda s: s if "state" in s else None)(status(q.url, "s1")),
                     what="state of s1")
    assert set(got) == {"user", "active", "state"}, got
    assert got["state"] == "dnd"
    assert abs(got["active"] - t0) <= 5


def test_update_several_users_and_delete_several(ns, stack):
    _, q = stack
    users = ["m1", "m2", "m3"]
    assert call(q.url, "update_user_status", {"users": users}) == {"result": {}}
    wait_until(lambda: all("active" in s for s in statuses(q.url, users)), what="m1..m3 active")
    assert call(q.url, "delete_user_status", {"users": users}) == {"result": {}}
    wait_until(lambda: statuses(q.url, users) == [{"user": u} for u in users], what="m1..m3 deleted")


# ---------------------------------------------------------------------------------------------------
# auth


def test_auth_missing_key_is_401_with_empty_body(ns, query):
    r = api(query.url, "get_user_status", {"users": ["42"]}, key=None)
    assert r.status_code == 401
    assert r.content == b""


def test_auth_wrong_key_is_401(ns, query):
    r = api(query.url, "get_user_status", {"users": ["42"]}, key="not-the-key")
    assert r.status_code == 401
    assert r.content == b""
    r = api(query.url, "get_user_status", {"users": ["42"]}, key=None,
            headers={"Authorization": "apikey wrong"})
    assert r.status_code == 401
    r = api(query.url, "get_user_status", {"users": ["42"]}, key=None, params={"api_key": "wrong"})
    assert r.status_code == 401
    r = api(query.url, "get_user_status", {"users": ["42"]}, key=API_KEY + "x")
    assert r.status_code == 401


def test_auth_authorization_apikey_header(ns, query):
    r = api(query.url, "get_user_status", {"users": ["42"]}, key=None,
            headers={"Authorization": "apikey " + API_KEY})
    assert r.status_code == 200
    assert r.json() == {"result": {"statuses": [{"user": "42"}]}}


def test_auth_api_key_query_parameter(ns, query):
    r = api(query.url, "get_user_status", {"users": ["42"]}, key=None, params={"api_key": API_KEY})
    assert r.status_code == 200
    assert r.json() == {"result": {"statuses": [{"user": "42"}]}}


def test_auth_api_insecure_needs_no_key(ns):
    q = ns.start_query(ns.config(api_insecure=True))
    r = api(q.url, "get_user_status", {"users": ["42"]}, key=None)
    assert r.status_code == 200
    assert r.json() == {"result": {"statuses": [{"user": "42"}]}}


# ---------------------------------------------------------------------------------------------------
# errors


def test_get_on_api_method_is_405(ns, query):
    r = requests.get(query.url + "/api/get_user_status", headers={"X-API-Key": API_KEY}, timeout=10)
    assert r.status_code == 405


def test_malformed_json_is_400(ns, query):
    r = api(query.url, "get_user_status", None, raw=b'{"users":')
    assert r.status_code == 400


def test_bad_requests_are_code_107(ns):
    q = ns.start_query(ns.config(query={"max_users_per_request": 3}))
    bad = [
        {"users": "x"},
        {},
        {"users": [""]},
        {"users": ["u" * 257]},
        {"users": ["a", "b", "c", "d"]},
        {"users": [1]},
    ]
    for body in bad:
        r = api(q.url, "get_user_status", body)
        assert r.status_code == 200, body
        assert r.json() == {"error": {"code": 107, "message": "bad request"}}, body
    for body in [{"users": "x"}, {}, {"users": [""]}, {"users": ["u" * 257]}, {"users": ["a", "b", "c", "d"]}]:
        for method in ("update_user_status", "delete_user_status"):
            r = api(q.url, method, body)
            assert r.status_code == 200, (method, body)
            assert r.json() == {"error": {"code": 107, "message": "bad request"}}, (method, body)
    # the limits themselves are fine
    assert statuses(q.url, ["a", "b", "c"]) == [{"user": "a"}, {"user": "b"}, {"user": "c"}]
    assert statuses(q.url, ["u" * 256]) == [{"user": "u" * 256}]


def test_unknown_method_is_code_104(ns, query):
    r = api(query.url, "nope", {})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == 104


def test_transport_error_mode(ns, query):
    h = {"X-Centrifugo-Error-Mode": "transport"}
    r = api(query.url, "get_user_status", {"users": "x"}, headers=h)
    assert r.status_code == 400
    assert r.json() == {"code": 107, "message": "bad request"}
    r = api(query.url, "nope", {}, headers=h)
    assert r.status_code == 404
    assert r.json()["code"] == 104
    # a good request in transport mode is answered as usual
    r = api(query.url, "get_user_status", {"users": ["42"]}, headers=h)
    assert r.status_code == 200
    assert r.json() == {"result": {"statuses": [{"user": "42"}]}}


def test_body_larger_than_max_body_size_is_413(ns):
    q = ns.start_query(ns.config(query={"max_body_size": 1024}))
    body = json.dumps({"users": ["user-%04d" % i for i in range(400)]}).encode()
    assert len(body) > 1024
    r = api(q.url, "get_user_status", None, raw=body)
    assert r.status_code == 413
    # just under the limit is fine
    users = ["u%02d" % i for i in range(60)]
    small = json.dumps({"users": users}).encode()
    assert len(small) <= 1024
    r = api(q.url, "get_user_status", None, raw=small)
    assert r.status_code == 200
    assert r.json() == {"result": {"statuses": [{"user": u} for u in users]}}


# ---------------------------------------------------------------------------------------------------
# batch


def test_batch_update_then_get(ns, stack):
    _, q = stack
    body = {"commands": [{"update_user_status": {"users": ["u1"]}}, {"get_user_status": {"users": ["u1"]}}]}
    res = call(q.url, "batch", body)
    assert set(res) == {"replies"}
    replies = res["replies"]
    assert len(replies) == 2
    assert replies[0] == {"update_user_status": {}}
    assert set(replies[1]) == {"get_user_status"}
    sts = replies[1]["get_user_status"]["statuses"]
    assert len(sts) == 1 and sts[0]["user"] == "u1"
    assert set(sts[0]) <= {"user", "active"}
    # eventually the update is visible through a batch too
    wait_until(lambda: "active" in call(q.url, "batch", {"commands": [{"get_user_status": {"users": ["u1"]}}]})
               ["replies"][0]["get_user_status"]["statuses"][0], what="u1 active")


def test_batch_errors_are_per_reply(ns, query):
    res = call(query.url, "batch", {"commands": [
        {"get_user_status": {"users": "x"}},
        {"nope": {}},
        {"get_user_status": {"users": ["z"]}},
    ]})
    assert res["replies"] == [
        {"error": {"code": 107, "message": "bad request"}},
        {"error": {"code": 104, "message": "method not found"}},
        {"get_user_status": {"statuses": [{"user": "z"}]}},
    ]


def test_batch_replies_are_keyed_by_method_as_centrifugo_does(ns, stack):
    _, q = stack
    res = call(q.url, "batch", {"parallel": True, "commands": [
        {"update_user_status": {"users": ["k1"], "state": "dnd"}},
        None,
        {"delete_user_status": {"users": ["k2"]}},
        {"publish": {"channel": "x", "data": {}}},
        {"method": "get_user_status", "params": {"users": ["k3"]}},
    ]})
    assert res == {"replies": [
        {"update_user_status": {}},
        {"error": {"code": 107, "message": "bad request"}},
        {"delete_user_status": {}},
        {"error": {"code": 104, "message": "method not found"}},
        {"get_user_status": {"statuses": [{"user": "k3"}]}},
    ]}
    wait_until(lambda: status(q.url, "k1").get("state") == "dnd", what="k1 state from a batch")


def test_batch_parallel_must_be_a_boolean(ns, query):
    res = call(query.url, "batch", {"parallel": "yes", "commands": [{"get_user_status": {"users": ["a"]}}]})
    assert res == {"error": {"code": 107, "message": "bad request"}}


# ---------------------------------------------------------------------------------------------------
# Centrifugo v4's single endpoint: POST /api {"method": ..., "params": ...}


def test_v4_single_endpoint_runs_each_method(ns, stack):
    _, q = stack
    r = api(q.url, None, {"method": "update_user_status", "params": {"users": ["v4a"]}})
    assert r.status_code == 200 and r.json() == {"result": {}}
    wait_until(lambda: "active" in status(q.url, "v4a"), what="v4a active")
    r = api(q.url, None, {"method": "get_user_status", "params": {"users": ["v4a", "v4b"]}})
    sts = r.json()["result"]["statuses"]
    assert [s["user"] for s in sts] == ["v4a", "v4b"] and "active" in sts[0] and sts[1] == {"user": "v4b"}
    r = api(q.url, None, {"method": "batch", "params": {"commands": [{"get_user_status": {"users": ["v4b"]}}]}})
    assert r.json() == {"replies": [{"get_user_status": {"statuses": [{"user": "v4b"}]}}]}
    r = api(q.url, None, {"method": "delete_user_status", "params": {"users": ["v4a"]}})
    assert r.json() == {"result": {}}


def test_v4_single_endpoint_errors(ns, query):
    assert api(query.url, None, {"method": "presence", "params": {}}).json() == \
        {"error": {"code": 104, "message": "method not found"}}
    assert api(query.url, None, {"params": {}}).json() == {"error": {"code": 107, "message": "bad request"}}
    assert api(query.url, None, {"method": "get_user_status"}).json() == {"error": {"code": 107, "message": "bad request"}}
    assert api(query.url, None, {"method": "get_user_status", "params": {"users": []}}, key="wrong").status_code == 401
    assert api(query.url, None, None, raw=b"{nope").status_code == 400
    assert api(query.url, None, {}, http_method="GET").status_code == 405


def test_concurrent_gets_each_get_their_own_users(ns, query, redis):
    """Reads of concurrent requests share pipelined Redis round trips; no answer may mix them up."""
    import threading
    users = ["cg%d" % i for i in range(300)]
    base = now_ms() // 1000 - 1000  # within the expire interval: bucket reads hide older times
    for i, u in enumerate(users):  # written as the worker would (default storage: buckets)
        keys = ns.bucket_keys(u)
        redis("ZADD", keys["a"], base + i, u)
        redis("ZADD", keys["o"], base + 500 + i, u)
        redis("PEXPIRE", keys["a"], 600_000)
        redis("PEXPIRE", keys["o"], 600_000)
    failures = []

    def client(seed):
        picked = [users[(seed * 37 + k * 11) % len(users)] for k in range(1 + seed % 40)]
        for _ in range(30):
            got = call(query.url, "get_user_status", {"users": picked + ["nobody"]})
            want = [{"user": u, "active": base + users.index(u), "online": base + 500 + users.index(u)}
                     for u in picked] + [{"user": "nobody"}]
            if got != {"result": {"statuses": want}}:
                failures.append((seed, got))
                return

    threads = [threading.Thread(target=client, args=(s,)) for s in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures[:1]
