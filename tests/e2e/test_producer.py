"""What userstatus-query puts on Kafka, and how its HTTP connections behave."""
import http.client
import json
import time

import msgpack

from conftest import API_KEY, PARTITIONS, api, consume_all


def java_murmur2(data: bytes) -> int:
    """Kafka's Java client murmur2 (org.apache.kafka.common.utils.Utils.murmur2)."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length % 4
    base = length - tail
    if tail == 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def java_partition(key: bytes, partitions: int) -> int:
    return (java_murmur2(key) & 0x7FFFFFFF) % partitions


def test_http_updates_become_events_on_the_java_partition_of_each_user(ns, query):
    users = ["user-%d" % i for i in range(24)]
    before = int(time.time() * 1000)
    assert api(query.url, "update_user_status", {"users": users, "state": "dnd"}).json() == {"result": {}}
    assert api(query.url, "delete_user_status", {"users": users[:3]}).json() == {"result": {}}
    after = int(time.time() * 1000)

    msgs = consume_all(ns.topic, len(users) + 3)
    assert len(msgs) == len(users) + 3
    seen = {}
    for m in msgs:
        user = m["key"].decode()
        assert m["partition"] == java_partition(m["key"], PARTITIONS), (user, m["partition"])
        ev = msgpack.unpackb(m["value"], raw=False)
        seen.setdefault(user, []).append(ev)
    for u in users:
        active = seen[u][0]
        assert set(active) == {"type", "user", "time", "state", "v"}
        assert active["type"] == "active" and active["user"] == u and active["state"] == "dnd"
        assert active["v"] == 1
        assert before <= active["time"] <= after
    for u in users[:3]:
        assert seen[u][1] == {"type": "delete", "user": u, "v": 1}


def test_keep_alive_serves_many_requests_on_one_connection(ns, query):
    port = int(query.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.connect()
    sock = conn.sock
    for i in range(5):
        conn.request("POST", "/api/get_user_status", body=json.dumps({"users": ["k%d" % i]}),
                     headers={"X-API-Key": API_KEY})
        r = conn.getresponse()
        assert r.status == 200
        assert json.loads(r.read()) == {"result": {"statuses": [{"user": "k%d" % i}]}}
        assert (r.getheader("Connection") or "").lower() != "close"
        assert conn.sock is sock, "the server closed the connection after request %d" % i
    conn.request("POST", "/api/update_user_status", body=json.dumps({"users": ["k"]}),
                 headers={"X-API-Key": API_KEY})
    r = conn.getresponse()
    assert json.loads(r.read()) == {"result": {}}
    assert conn.sock is sock
    conn.close()


def test_api_key_never_appears_in_logs_or_metrics(ns, stack):
    w, q = stack
    api(q.url, "update_user_status", {"users": ["a"]})
    api(q.url, "update_user_status", {"users": ["a"]}, key="wrong-" + API_KEY)
    api(q.url, "nope", {"users": ["a"]})
    import requests
    metrics = requests.get(q.url + "/metrics", timeout=5).text
    assert API_KEY not in metrics
    w.stop_ok()
    q.stop_ok()
    assert API_KEY not in q.log()
    assert API_KEY not in w.log()
