"""The watch stream: POST /api/watch_user_status answers Server-Sent Events -- the current status of
each watched user, then each change the workers publish for them -- on real Kafka and Redis."""
import json
import queue
import socket
import threading
import time

import requests

from conftest import API_KEY, api, now_ms, wait_until

# Long enough that no user changes status by itself during a test, even on a loaded machine.
RULES = {"offline_after": "1h", "away_after": "1h"}


class Watcher:
    """One watch stream read on a thread of its own; events go to a queue as (event, data)."""

    def __init__(self, base_url, users, key=API_KEY):
        self.events = queue.Queue()
        self.r = requests.post(base_url + "/api/watch_user_status", json={"users": users},
                               headers={"X-API-Key": key}, stream=True, timeout=30)
        self.ended = threading.Event()
        if self.r.headers.get("Content-Type") == "text/event-stream":
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        event, data = None, None
        try:
            for raw in self.r.iter_lines(chunk_size=1, decode_unicode=True):
                if raw.startswith(":"):
                    self.events.put(("comment", raw))
                elif raw.startswith("event: "):
                    event = raw[len("event: "):]
                elif raw.startswith("data: "):
                    data = json.loads(raw[len("data: "):])
                elif raw == "" and event:
                    self.events.put((event, data))
                    event, data = None, None
        except (requests.RequestException, AttributeError, OSError):  # closed by the test
            pass
        self.ended.set()

    def next(self, kinds=("status", "change", "bye", "error"), timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "no %s event within %ss" % (kinds, timeout)
            ev, data = self.events.get(timeout=left)
            if ev in kinds:
                return ev, data

    def close(self):
        self.r.close()


def start(ns, **changes):
    cfg = ns.config(changes=dict(RULES, **changes))
    w = ns.start_worker(cfg)
    q = ns.start_query(cfg)
    return w, q


def test_initial_statuses_then_changes(ns):
    _, q = start(ns)
    t = now_ms() // 1000 * 1000
    ns.producer.event("active", "w1", time_ms=t)
    ns.producer.event("online", "w1", time_ms=t)
    ns.producer.flush()
    wait_until(lambda: "online" in api(q.url, "get_user_status", {"users": ["w1"]}).json()["result"]["statuses"][0],
               what="w1 stored")
    w = Watcher(q.url, ["w1", "w2"])
    try:
        assert w.r.status_code == 200 and w.r.headers["Content-Type"] == "text/event-stream"
        first = [w.next(), w.next()]
        assert first[0] == ("status", {"user": "w1", "status": "online", "active": t // 1000, "online": t // 1000})
        assert first[1] == ("status", {"user": "w2", "status": "offline"})
        # w2 comes online: the worker publishes the change and the stream carries it.
        assert api(q.url, "update_user_status", {"users": ["w2"]}).json() == {"result": {}}
        ev, data = w.next(("change",))
        while data["user"] != "w2":  # w1's own change may reach the stream after it opened
            assert data == dict(data, user="w1", status="online")
            ev, data = w.next(("change",))
        assert data["status"] == "online" and isinstance(data["since"], int) and "active" in data
    finally:
        w.close()


def test_each_watcher_sees_only_its_users(ns):
    _, q = start(ns)
    a = Watcher(q.url, ["a1"])
    b = Watcher(q.url, ["b1", "a1"])
    try:
        assert a.next() == ("status", {"user": "a1", "status": "offline"})
        assert [b.next(), b.next()] == [("status", {"user": "b1", "status": "offline"}),
                                       ("status", {"user": "a1", "status": "offline"})]
        assert api(q.url, "update_user_status", {"users": ["b1"]}).json() == {"result": {}}
        assert b.next(("change",))[1]["user"] == "b1"
        assert api(q.url, "update_user_status", {"users": ["a1"]}).json() == {"result": {}}
        assert a.next(("change",))[1]["user"] == "a1"  # a never saw b1's change before a1's
        assert b.next(("change",))[1]["user"] == "a1"
        text = requests.get(q.url + "/metrics", timeout=5).text
        assert "userstatus_query_watch_streams 2\n" in text
        assert 'userstatus_query_watch_events_total{event="status"} 3\n' in text
        assert 'userstatus_query_watch_events_total{event="change"} 3\n' in text
    finally:
        a.close()
        b.close()


def test_watch_errors(ns):
    cfg = ns.config(changes={"watch_max_streams": 1})
    q = ns.start_query(cfg)
    r = requests.post(q.url + "/api/watch_user_status", json={"users": ["x"]}, timeout=5)
    assert r.status_code == 401
    assert api(q.url, "watch_user_status", {"users": []}).json() == {"error": {"code": 107, "message": "bad request"}}
    assert api(q.url, "watch_user_status", {"users": "x"}).json()["error"]["code"] == 107
    w = Watcher(q.url, ["x"])
    try:
        assert w.next()[0] == "status"
        r = api(q.url, "watch_user_status", {"users": ["y"]})
        assert r.json() == {"error": {"code": 108, "message": "not available"}}
        assert r.headers["X-Userstatus-Error"] == "too many watch streams (changes.watch_max_streams)"
    finally:
        w.close()


def test_watch_is_not_available_when_changes_are_disabled(ns):
    q = ns.start_query(ns.config(changes={"enabled": False}))
    assert api(q.url, "watch_user_status", {"users": ["x"]}).json() == {"error": {"code": 108, "message": "not available"}}


def test_sigterm_ends_every_stream_with_bye(ns):
    _, q = start(ns)
    ws = [Watcher(q.url, ["s%d" % i]) for i in range(3)]
    for w in ws:
        assert w.next()[0] == "status"
    q.stop_ok()
    for w in ws:
        assert w.next(("bye",)) == ("bye", {"reason": "shutting down"})
        assert w.ended.wait(10)


def test_a_client_that_goes_away_frees_its_stream(ns):
    _, q = start(ns)
    s = socket.create_connection(("127.0.0.1", int(q.url.rsplit(":", 1)[1])), timeout=10)
    body = json.dumps({"users": ["gone"]}).encode()
    s.sendall(b"POST /api/watch_user_status HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\nContent-Length: %d\r\n\r\n%s"
              % (API_KEY.encode(), len(body), body))
    got = b""
    while b"event: status" not in got:
        chunk = s.recv(4096)
        assert chunk, got
        got += chunk
    wait_until(lambda: "userstatus_query_watch_streams 1\n" in requests.get(q.url + "/metrics", timeout=5).text,
               what="the stream to be counted")
    s.close()
    # The next keep-alive (15 s) finds the socket closed; the stream is then freed.
    wait_until(lambda: "userstatus_query_watch_streams 0\n" in requests.get(q.url + "/metrics", timeout=5).text,
               timeout=40, what="the stream to be freed")


def test_a_long_list_gets_all_its_initial_statuses(ns):
    """1000 users with 64-byte states: the initial statuses (~110 KB) exceed the 64 KiB a stream may
    buffer for changes, and must still all be sent."""
    _, q = start(ns)
    users = ["long-%04d" % i for i in range(1000)]
    assert api(q.url, "update_user_status", {"users": users, "state": "s" * 64}).json() == {"result": {}}
    wait_until(lambda: api(q.url, "get_user_status", {"users": users[-1:]}).json()["result"]["statuses"][0]
               .get("state") == "s" * 64, what="the states stored")
    wait_until(lambda: all(s.get("state") for s in api(q.url, "get_user_status", {"users": users}).json()
                           ["result"]["statuses"]), what="all 1000 stored")
    w = Watcher(q.url, users)
    try:
        got = [w.next(("status",)) for _ in users]
        assert [d["user"] for _, d in got] == users
        assert all(d["state"] == "s" * 64 and d["status"] == "online" for _, d in got)
    finally:
        w.close()
