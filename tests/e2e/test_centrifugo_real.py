"""A real Centrifugo OSS (v5 and v6, built from the Go module proxy by scripts/deps.sh) in front of
userstatus-query, and the real `centrifuge` JS client on Node: the seed's
`await centrifuge.rpc('update_user_status', {})` sets `active`, and the refresh proxy keeps `online`
advancing while the client stays connected.

Binaries: $USERSTATUS_CACHE/go-bin/<v5|v6>/centrifugo and $USERSTATUS_CACHE/centrifugo-js/node_modules
(USERSTATUS_CACHE defaults to ~/.cache/userstatus). A version whose binary is absent is skipped with
the reason; scripts/deps.sh installs both."""
import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import API_KEY, REPO, Proc, api, child_env, free_port, status, wait_until

CACHE = Path(os.environ.get("USERSTATUS_CACHE", str(Path.home() / ".cache" / "userstatus")))
NODE_MODULES = CACHE / "centrifugo-js" / "node_modules"
CLIENT_JS = REPO / "tests" / "e2e" / "centrifugo" / "client.js"
TOKEN_SECRET = "e2e-token-secret-not-for-production"
ONLINE_INTERVAL = 2  # seconds: proxy.online_interval of userstatus
TOKEN_TTL = 3        # seconds: the JWT's exp, when Centrifugo makes its first refresh call
STAY = 8.0           # seconds the client stays connected after its RPC


def centrifugo_bin(version):
    return CACHE / "go-bin" / version / "centrifugo"


def jwt(sub, ttl):
    """An HS256 connection token {"sub": sub, "exp": now + ttl}."""
    def b64(d):
        return base64.urlsafe_b64encode(d).rstrip(b"=")
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": sub, "exp": int(time.time()) + ttl}).encode())
    sig = b64(hmac.new(TOKEN_SECRET.encode(), head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


def centrifugo_config(version, port, query_url):
    """The configs of docs/centrifugo.md, pointed at this test's query service."""
    rpc, refresh = query_url + "/centrifugo/rpc", query_url + "/centrifugo/refresh"
    if version == "v5":
        return {
            "address": "127.0.0.1", "port": port, "log_level": "info",
            "token_hmac_secret_key": TOKEN_SECRET, "api_key": "centrifugo-api-key",
            "proxy_rpc_endpoint": rpc, "proxy_rpc_timeout": "1s",
            "proxy_refresh_endpoint": refresh, "proxy_refresh_timeout": "1s",
            "proxy_static_http_headers": {"X-API-Key": API_KEY},
        }
    static = {"static_headers": {"X-API-Key": API_KEY}}
    return {
        "http_server": {"address": "127.0.0.1", "port": port},
        "log": {"level": "info"},
        "http_api": {"key": "centrifugo-api-key"},
        "client": {
            "token": {"hmac_secret_key": TOKEN_SECRET},
            "proxy": {"refresh": {"enabled": True, "endpoint": refresh, "timeout": "1s", "http": static}},
        },
        "rpc": {
            "proxy": {"endpoint": rpc, "timeout": "1s", "http": static},
            "without_namespace": {"proxy_enabled": True},
        },
    }


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def proxy_requests(query_url, endpoint):
    name = 'userstatus_query_proxy_requests_total{endpoint="%s"}' % endpoint
    for line in requests.get(query_url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return int(line.split()[1])
    return 0


@pytest.mark.parametrize("version", ["v5", "v6"])
def test_seed_rpc_sets_active_and_refresh_keeps_online_advancing(ns, tmp_path, version):
    binary = centrifugo_bin(version)
    if not binary.exists():
        pytest.skip("Centrifugo %s not installed at %s (scripts/deps.sh builds it from the Go module proxy)"
                    % (version, binary))
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "centrifuge").is_dir() or not (NODE_MODULES / "ws").is_dir():
        pytest.skip("node or the npm packages centrifuge/ws missing under %s (scripts/deps.sh)" % NODE_MODULES)

    cfg = ns.config(proxy={"online_interval": "%ds" % ONLINE_INTERVAL})
    ns.start_worker(cfg)
    q = ns.start_query(cfg)
    # Warm the producer up (its first acknowledgement takes longer than proxy.ack_timeout while it
    # connects), as a long-running service is.
    assert api(q.url, "update_user_status", {"users": ["warm-up"]}).json() == {"result": {}}

    port = free_port()
    conf = tmp_path / ("centrifugo-%s.json" % version)
    conf.write_text(json.dumps(centrifugo_config(version, port, q.url), indent=2))
    argv = [str(binary), "--config", str(conf)]
    cf = Proc("centrifugo " + version, argv, str(tmp_path / ("centrifugo-%s.log" % version)), child_env())
    try:
        wait_until(lambda: cf.alive() and port_open(port), timeout=30,
                   what="centrifugo to listen (log: %s)" % cf.log_path)

        user = "alice-" + ns.id
        env = dict(child_env(), NODE_PATH=str(NODE_MODULES))
        t0 = time.time()
        client = subprocess.Popen([node, str(CLIENT_JS), "ws://127.0.0.1:%d/connection/websocket" % port,
                                   jwt(user, TOKEN_TTL), str(int(STAY * 1000))],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(client.stdout))
        reader.start()

        # While the client is connected, watch the user's status.
        onlines, active = set(), None
        deadline = time.monotonic() + STAY + 20
        while client.poll() is None and time.monotonic() < deadline:
            st = status(q.url, user)
            if "online" in st:
                onlines.add(st["online"])
            active = st.get("active", active)
            time.sleep(0.25)
        if client.poll() is None:
            client.kill()
        client.wait()
        reader.join(5)
        out = [json.loads(line) for line in lines if line.startswith("{")]
        events = [o["event"] for o in out]
        report = "client output:\n%s\ncentrifugo log:\n%s" % ("".join(lines), cf.log()[-4000:])

        assert client.returncode == 0, report
        assert [e for e in events if e != "connecting"][:1] == ["connected"], report
        rpc = next(o for o in out if o["event"] in ("rpc", "rpc_error"))
        assert rpc["event"] == "rpc", report
        unknown = next(o for o in out if o["event"] == "unknown_rpc")
        assert unknown["error"]["code"] == 404 and unknown["error"]["message"] == "method not found", report
        assert "done" in events and events.index("done") < events.index("disconnected"), report
        assert events.count("connected") == 1, "the client was disconnected and reconnected\n" + report

        assert active is not None and int(t0) <= active <= int(time.time()), (active, report)
        # First refresh at the token's exp (~3 s), then every ONLINE_INTERVAL: online advances.
        assert len(onlines) >= 2, "online did not advance: %r\n%s" % (sorted(onlines), report)
        assert max(onlines) - min(onlines) >= ONLINE_INTERVAL - 1, sorted(onlines)
        assert proxy_requests(q.url, "refresh") >= 2, report
        assert proxy_requests(q.url, "rpc") == 2, report  # update_user_status and no_such_method
    finally:
        cf.stop()
