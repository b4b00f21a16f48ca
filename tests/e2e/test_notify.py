"""userstatus-notify: the changes of the changes topic delivered to webhooks (signed JSON POSTs,
retried until acknowledged) and to Centrifugo channels (the real Centrifugo v5 and v6, with a real
centrifuge-js subscriber), each destination with its own consumer group.

The worker produces real changes from real events (offline_after 3 s). A receiver may see a change
more than once (at-least-once); tests dedupe by (user, status, since) and then compare exactly with
what the changes topic holds: nothing lost, nothing invented."""
import hashlib
import hmac
import json
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import msgpack
import pytest
import requests

from conftest import BUILD, Proc, child_env, consume_all, free_port, now_ms, wait_until
from test_centrifugo_real import NODE_MODULES, REPO, centrifugo_bin, jwt, port_open

NOTIFY_BIN = BUILD / "notify" / "userstatus-notify"
SUBSCRIBE_JS = REPO / "tests" / "e2e" / "centrifugo" / "subscribe.js"
CENTRIFUGO_API_KEY = "centrifugo-api-key"


def whole_second_ms():
    return now_ms() // 1000 * 1000


class Receiver:
    """A webhook receiver: an HTTP server in a thread that answers `status()` (200 unless told
    otherwise) and records every request: (time, status answered, headers, body)."""

    def __init__(self, secret, status=lambda: 200):
        self.secret = secret
        self.status = status
        self.requests = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                code = receiver.status()
                with receiver.lock:
                    receiver.requests.append((time.time(), code, dict(self.headers), body))
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = "http://127.0.0.1:%d/hook" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def acknowledged(self):
        """The deduplicated (user, status, since) of every change in a request answered 2xx."""
        with self.lock:
            reqs = list(self.requests)
        return {(c["user"], c["status"], c["since"])
                for _, code, _, body in reqs if 200 <= code < 300 for c in json.loads(body)["changes"]}

    def changes(self):
        with self.lock:
            return [c for _, code, _, body in self.requests if 200 <= code < 300
                    for c in json.loads(body)["changes"]]

    def check_signatures(self):
        """Every request carries a timestamp close to its arrival and a valid HMAC of
        "<timestamp>.<body>"."""
        with self.lock:
            reqs = list(self.requests)
        assert reqs
        for t, _, headers, body in reqs:
            ts = headers["X-Userstatus-Timestamp"]
            assert abs(int(ts) - t) <= 5, (ts, t)
            want = hmac.new(self.secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
            assert headers["X-Userstatus-Signature"] == "sha256=" + want
            assert headers["Content-Type"] == "application/json"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers():
    made = []

    def make(secret, status=lambda: 200):
        r = Receiver(secret, status)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def notify_cfg(ns, webhooks=(), centrifugo=None):
    changes = {
        "topic": ns.changes, "offline_after": "3s", "away_after": "30s",
        "webhooks": [{"url": r.url, "secret": r.secret} for r in webhooks],
        "notify_consumer_group": ns.group + "_notify",
        "notify_retry_max": "1s", "notify_timeout": "2s",
        "notify_metrics_port": free_port(),
    }
    if centrifugo:
        changes["centrifugo"] = centrifugo
    return ns.config(changes=changes)


def start_notify(ns, cfg):
    p = ns._start("userstatus-notify", NOTIFY_BIN, cfg,
                  "http://127.0.0.1:%d/health" % cfg["changes"]["notify_metrics_port"], True)
    p.metrics_url = "http://127.0.0.1:%d/metrics" % cfg["changes"]["notify_metrics_port"]
    return p


def metric(proc, name):
    for line in requests.get(proc.metrics_url, timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    return None


def topic_changes(ns, expected):
    """The deduplicated (user, status, since) the changes topic holds (at least `expected`)."""
    msgs = consume_all(ns.changes, expected, timeout=30)
    got = {(v["user"], v["status"], v["since"]) for v in (msgpack.unpackb(m["value"], raw=False) for m in msgs)}
    assert len(got) >= expected, got
    return got


def produce_active(ns, users, t):
    for u in users:
        ns.producer.event("active", u, time_ms=t)
    ns.producer.flush()


def test_receiver_failing_at_first_gets_every_change_signed(ns, receivers):
    recovered_at = time.monotonic() + 6
    r = receivers("s3cret", status=lambda: 500 if time.monotonic() < recovered_at else 200)
    cfg = notify_cfg(ns, webhooks=[r])
    ns.start_worker(cfg)
    n = start_notify(ns, cfg)
    users = ["u%d" % i for i in range(5)]
    t = whole_second_ms()
    produce_active(ns, users, t)

    want = {(u, "online", t) for u in users} | {(u, "offline", t + 3000) for u in users}
    assert topic_changes(ns, len(want)) == want
    wait_until(lambda: r.acknowledged() >= want, timeout=30, what="every change acknowledged")
    time.sleep(1)
    assert r.acknowledged() == want
    assert any(code == 500 for _, code, _, _ in r.requests), "the receiver never refused"
    r.check_signatures()
    online = next(c for c in r.changes() if c["user"] == "u0" and c["status"] == "online")
    assert online == {"user": "u0", "status": "online", "since": t, "active": t // 1000}
    offline = next(c for c in r.changes() if c["user"] == "u0" and c["status"] == "offline")
    assert offline == {"user": "u0", "status": "offline", "since": t + 3000, "active": t // 1000}
    assert metric(n, 'userstatus_notify_retries_total{destination="webhook0"}') >= 1
    assert metric(n, 'userstatus_notify_requests_total{destination="webhook0",result="failed"}') >= 1
    assert metric(n, 'userstatus_notify_changes_total{destination="webhook0",result="delivered"}') >= len(want)
    assert metric(n, 'userstatus_notify_failing{destination="webhook0"}') == 0


def test_down_receiver_delays_only_its_own_webhooks(ns, receivers):
    up = {"down": True}
    down = receivers("one", status=lambda: 503 if up["down"] else 200)
    fine = receivers("two")
    cfg = notify_cfg(ns, webhooks=[down, fine])
    ns.start_worker(cfg)
    n = start_notify(ns, cfg)
    t = whole_second_ms()
    produce_active(ns, ["alice"], t)

    want = {("alice", "online", t), ("alice", "offline", t + 3000)}
    wait_until(lambda: ("alice", "online", t) in fine.acknowledged(), timeout=5,
               what="the healthy receiver to get the online change promptly")
    wait_until(lambda: fine.acknowledged() == want, timeout=10, what="the healthy receiver's offline change")
    assert fine.acknowledged() == want
    wait_until(lambda: len(down.requests) >= 3, timeout=5, what="the down receiver's retries")
    assert down.acknowledged() == set()
    assert metric(n, 'userstatus_notify_failing{destination="webhook0"}') == 1
    assert metric(n, 'userstatus_notify_failing{destination="webhook1"}') == 0
    fine.check_signatures()
    down.check_signatures()

    up["down"] = False  # the receiver is back: it gets everything it missed
    wait_until(lambda: down.acknowledged() == want, timeout=15, what="the recovered receiver to catch up")


def test_receiver_down_longer_than_the_retry_budget_gets_everything_after_rewinds(ns, receivers):
    # max.poll.interval.ms 6 s: a batch is retried for 3 s, then rewound and polled again.
    recovered_at = time.monotonic() + 10
    r = receivers("k", status=lambda: 502 if time.monotonic() < recovered_at else 200)
    cfg = notify_cfg(ns, webhooks=[r])
    cfg["kafka"]["properties"] = {"session.timeout.ms": "6000", "max.poll.interval.ms": "6000",
                                  "heartbeat.interval.ms": "1000"}
    ns.start_worker(cfg)
    n = start_notify(ns, cfg)
    t = whole_second_ms()
    produce_active(ns, ["erin", "frank"], t)
    want = {(u, s, ts) for u in ("erin", "frank") for s, ts in (("online", t), ("offline", t + 3000))}
    wait_until(lambda: r.acknowledged() == want, timeout=30, what="every change after the receiver recovered")
    assert metric(n, 'userstatus_notify_batches_rewound_total{destination="webhook0"}') >= 1
    assert "rewinding the batch" in n.log()


def test_sigterm_commits_what_was_acknowledged(ns, receivers):
    r = receivers("s")
    cfg = notify_cfg(ns, webhooks=[r])
    ns.start_worker(cfg)
    n = start_notify(ns, cfg)
    t = whole_second_ms()
    produce_active(ns, ["bob"], t)
    first = {("bob", "online", t), ("bob", "offline", t + 3000)}
    wait_until(lambda: r.acknowledged() == first, timeout=15, what="bob's changes")
    time.sleep(1.5)  # nothing in flight
    count = len(r.changes())
    n.stop_ok()

    start_notify(ns, cfg)  # same group: starts after what was committed
    t2 = whole_second_ms()
    produce_active(ns, ["carol"], t2)
    wait_until(lambda: ("carol", "offline", t2 + 3000) in r.acknowledged(), timeout=15, what="carol's changes")
    again = [c for c in r.changes()[count:] if c["user"] == "bob"]
    assert again == [], "changes acknowledged before the SIGTERM were delivered again: %r" % again


def test_nothing_configured_exits_0_and_says_so(ns, tmp_path):
    cfg = ns.config()
    path = ns.write_config(cfg)
    out = subprocess.run([str(NOTIFY_BIN), "--config", str(path)], capture_output=True, text=True,
                         env=child_env(), timeout=30)
    assert out.returncode == 0, out.stderr
    assert "no destination configured" in out.stderr


def centrifugo_config(version, port):
    """An API key for userstatus-notify, connection tokens for the subscriber, and the namespace of
    the `status:` channels open to subscribers."""
    namespace = {"name": "status", "allow_subscribe_for_client": True}
    if version == "v5":
        return {"address": "127.0.0.1", "port": port, "log_level": "info",
                "token_hmac_secret_key": "e2e-token-secret-not-for-production",
                "api_key": CENTRIFUGO_API_KEY, "namespaces": [namespace]}
    return {"http_server": {"address": "127.0.0.1", "port": port}, "log": {"level": "info"},
            "http_api": {"key": CENTRIFUGO_API_KEY},
            "client": {"token": {"hmac_secret_key": "e2e-token-secret-not-for-production"}},
            "channel": {"namespaces": [namespace]}}


@pytest.mark.parametrize("version", ["v5", "v6"])
def test_centrifuge_js_subscriber_gets_the_status_of_a_user_coming_online(ns, tmp_path, version):
    binary = centrifugo_bin(version)
    if not binary.exists():
        pytest.skip("Centrifugo %s not installed at %s (scripts/deps.sh builds it)" % (version, binary))
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "centrifuge").is_dir() or not (NODE_MODULES / "ws").is_dir():
        pytest.skip("node or the npm packages centrifuge/ws missing under %s (scripts/deps.sh)" % NODE_MODULES)

    port = free_port()
    conf = tmp_path / ("centrifugo-%s.json" % version)
    conf.write_text(json.dumps(centrifugo_config(version, port), indent=2))
    cf = Proc("centrifugo " + version, [str(binary), "--config", str(conf)],
              str(tmp_path / ("centrifugo-%s.log" % version)), child_env())
    client = None
    try:
        wait_until(lambda: cf.alive() and port_open(port), timeout=30, what="centrifugo to listen")
        cfg = notify_cfg(ns, centrifugo={"api_url": "http://127.0.0.1:%d/api" % port,
                                         "api_key": CENTRIFUGO_API_KEY, "channel_prefix": "status:"})
        ns.start_worker(cfg)
        n = start_notify(ns, cfg)

        user = "dave-" + ns.id
        lines = []
        client = subprocess.Popen([node, str(SUBSCRIBE_JS), "ws://127.0.0.1:%d/connection/websocket" % port,
                                   jwt("watcher", 60), "status:" + user, "20000"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=dict(child_env(), NODE_PATH=str(NODE_MODULES)))
        reader = threading.Thread(target=lambda: lines.extend(client.stdout), daemon=True)
        reader.start()

        def events():
            return [json.loads(line) for line in list(lines) if line.startswith("{")]

        wait_until(lambda: any(e["event"] == "subscribed" for e in events()), timeout=15,
                   what="the subscription (output: %r)" % lines)
        t = whole_second_ms()
        produce_active(ns, [user], t)

        def publications():
            return [e["data"] for e in events() if e["event"] == "publication"]

        wait_until(lambda: len({(p["status"], p["since"]) for p in publications()}) >= 2, timeout=15,
                   what="online and offline publications (output: %r)" % lines)
        got = []
        for p in publications():
            if p not in got:
                got.append(p)
        assert got == [{"user": user, "status": "online", "since": t, "active": t // 1000},
                       {"user": user, "status": "offline", "since": t + 3000, "active": t // 1000}], lines
        assert metric(n, 'userstatus_notify_changes_total{destination="centrifugo",result="delivered"}') >= 2
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        cf.stop()
