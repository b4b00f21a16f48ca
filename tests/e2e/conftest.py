"""Fixtures for the black-box end-to-end tests of userstatus-worker and userstatus-query.

Kafka and Redis are started outside the tests (scripts/test.sh). Environment:
  USERSTATUS_TEST_KAFKA   bootstrap servers        (default 127.0.0.1:19092)
  USERSTATUS_TEST_REDIS   redis host:port          (default 127.0.0.1:16379)
  USERSTATUS_BUILD_DIR    CMake build directory    (default build, relative to the repo root)

Every test gets its own namespace (topic, DLQ topic, consumer group, Redis prefix), so tests never see
each other's data. The programs are started with --config FILE and stopped with SIGTERM; a non-zero
exit code fails the test, and their stderr is attached to the report of a failed test.
"""
import concurrent.futures
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import msgpack
import pytest
import requests
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

REPO = Path(__file__).resolve().parents[2]
KAFKA = os.environ.get("USERSTATUS_TEST_KAFKA", "127.0.0.1:19092")
REDIS = os.environ.get("USERSTATUS_TEST_REDIS", "127.0.0.1:16379")
BUILD = Path(os.environ.get("USERSTATUS_BUILD_DIR", "build"))
if not BUILD.is_absolute():
    BUILD = REPO / BUILD
WORKER_BIN = BUILD / "worker" / "userstatus-worker"
QUERY_BIN = BUILD / "query" / "userstatus-query"

API_KEY = "secret"
PARTITIONS = 4
STOP_TIMEOUT = 30.0
START_TIMEOUT = 30.0
POLL_TIMEOUT = 20.0


# --------------------------------------------------------------------------------------------------
# small helpers


_ports_given = set()


# Ports handed out come from below the kernel's ephemeral range (32768-60999 on Linux): a port the
# kernel chose for bind(0) may be taken again, between our check and the program's bind, by the
# source port of any outgoing connection (Kafka and Redis clients open many), which once made a
# worker fail to listen.
PORT_RANGE = (20000, 32000)


def worker_port_range():
    """The part of PORT_RANGE this pytest process hands out ports from. Under pytest-xdist (`-n N`)
    worker gwI of N gets the I-th of N equal slices, so that two workers never pick the same port
    between one's check and its program's bind; a plain run gets all of PORT_RANGE."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count <= 1:
        return PORT_RANGE
    index = int(worker[2:])
    size = (PORT_RANGE[1] - PORT_RANGE[0] + 1) // count
    return PORT_RANGE[0] + index * size, PORT_RANGE[0] + (index + 1) * size - 1


def free_port():
    """A TCP port that is free right now, outside the ephemeral range, in this worker's slice of it
    (worker_port_range), and never one this test run handed out before (one config holds several
    ports that must differ)."""
    lo, hi = worker_port_range()
    for _ in range(1000):
        port = random.randint(lo, hi)
        if port in _ports_given:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ports_given.add(port)
        return port
    raise RuntimeError("no free port in %d-%d after 1000 tries" % (lo, hi))


def consecutive_free_ports(n):
    """A port p such that p .. p+n-1 are all free now and in this worker's slice (children of
    `worker.processes` n listen on them); none of them is handed out again by free_port()."""
    lo, hi = worker_port_range()
    for _ in range(100):
        p = free_port()
        if p + n - 1 > hi or any(p + i in _ports_given for i in range(1, n)):
            continue
        try:
            for i in range(1, n):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind(("127.0.0.1", p + i))
        except OSError:
            continue
        _ports_given.update(range(p, p + n))
        return p
    raise RuntimeError("no %d consecutive free ports in %d-%d" % (n, lo, hi))


def wait_until(cond, timeout=POLL_TIMEOUT, interval=0.1, what="condition"):
    """Call cond() until it returns a truthy value (returned) or timeout seconds pass (AssertionError).

    Exceptions raised by cond() count as 'not yet'; the last one is shown on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = cond()
            if v:
                return v
            last = v
        except Exception as e:  # noqa: BLE001 - polled condition may fail transiently
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s (last: %r)" % (timeout, what, last))
        time.sleep(interval)


def now_ms():
    return int(time.time() * 1000)


def deep_merge(base, over):
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------------------------------
# user placement, as common/hash.c and common/status_buckets.c compute it

MASK64 = 0xFFFFFFFFFFFFFFFF
EXPECTED_USERS = 10_000_000  # default of user_status.expected_users
BUCKET_TARGET_MEMBERS = 50


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & MASK64
    return h


def jump_hash(key: int, buckets: int) -> int:
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & MASK64
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def mix64(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def bucket_count(expected_users=EXPECTED_USERS, nshards=1):
    per = nshards * BUCKET_TARGET_MEMBERS
    return max(1, (expected_users + per - 1) // per)


def bucket_of(user: str, nbuckets: int) -> int:
    return 0 if nbuckets <= 1 else jump_hash(mix64(fnv1a64(user.encode())), nbuckets)


# --------------------------------------------------------------------------------------------------
# a tiny RESP2 client (no redis package needed)


class RedisError(Exception):
    pass


class Redis:
    def __init__(self, addr=REDIS):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.f = self.sock.makefile("rb")

    def close(self):
        try:
            self.f.close()
            self.sock.close()
        except OSError:
            pass

    def __call__(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if not isinstance(a, bytes):
                a = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _read(self):
        line = self.f.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise RedisError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)
            return data[:-2]
        if t == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self._read() for _ in range(n)]
        raise RedisError("unexpected RESP reply %r" % line)


@pytest.fixture
def redis():
    r = Redis()
    yield r
    r.close()


# --------------------------------------------------------------------------------------------------
# Kafka helpers


def admin():
    return AdminClient({"bootstrap.servers": KAFKA})


def create_topics(names, partitions=PARTITIONS):
    a = admin()
    fs = a.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names],
                         operation_timeout=20)
    for n, f in fs.items():
        f.result(30)

    def ready():
        md = a.list_topics(timeout=5)
        for n in names:
            t = md.topics.get(n)
            if t is None or t.error is not None or len(t.partitions) != partitions:
                return False
            if any(p.leader < 0 for p in t.partitions.values()):
                return False
        return True

    wait_until(ready, what="topics %s to have leaders" % names)


def delete_topics(names, timeout=15):
    """Best-effort clean-up: waits at most timeout seconds in all (not per topic) for the broker."""
    # The client must outlive the futures: a handle destroyed at once fails them all (_DESTROY)
    # and the topics stay.
    a = admin()
    try:
        fs = a.delete_topics(list(names), operation_timeout=10)
        concurrent.futures.wait(list(fs.values()), timeout=timeout)
    except Exception:  # noqa: BLE001 - best effort clean-up
        pass


class KafkaProducer:
    """Publishes events the way every producer of userstatus events must: key = user id,
    murmur2_random partitioner (Java-compatible)."""

    def __init__(self, topic):
        self.topic = topic
        self.p = Producer({
            "bootstrap.servers": KAFKA,
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
            "linger.ms": 5,
        })
        self.errors = []
        self.delivered = []

    def _cb(self, err, msg):
        if err is not None:
            self.errors.append(err)
        else:
            self.delivered.append((msg.partition(), msg.offset(), msg.key()))

    def send(self, value, key=None, timestamp=None, headers=None):
        """value: a dict (packed with msgpack, str as str) or raw bytes. key: str/bytes or None."""
        if isinstance(value, dict):
            value = msgpack.packb(value, use_bin_type=True)
        kw = {}
        if timestamp is not None:
            kw["timestamp"] = int(timestamp)
        if headers:
            kw["headers"] = headers
        while True:
            try:
                self.p.produce(self.topic, value=value, key=key, on_delivery=self._cb, **kw)
                break
            except BufferError:
                self.p.poll(0.1)
        self.p.poll(0)

    def event(self, type_, user, time_ms=None, state=None, key=..., timestamp=None, **extra):
        d = {"type": type_, "user": user}
        if time_ms is not None:
            d["time"] = time_ms
        if state is not None:
            d["state"] = state
        d.update(extra)
        self.send(d, key=user if key is ... else key, timestamp=timestamp)

    def flush(self, timeout=30):
        left = self.p.flush(timeout)
        assert left == 0, "%d messages not delivered" % left
        assert not self.errors, "delivery errors: %r" % self.errors


def consume_all(topic, expected, timeout=POLL_TIMEOUT):
    """Read topic from the beginning (all partitions, no group commit) until `expected` messages were
    read or timeout. Returns a list of dicts sorted by (partition, offset)."""
    c = Consumer({
        "bootstrap.servers": KAFKA,
        "group.id": "us-e2e-reader-" + uuid.uuid4().hex[:8],
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
    })
    try:
        md = c.list_topics(topic, timeout=10)
        parts = sorted(md.topics[topic].partitions)
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                continue
            got.append({
                "topic": m.topic(),
                "partition": m.partition(),
                "offset": m.offset(),
                "key": m.key(),
                "value": m.value(),
                "headers": {k: (v.decode() if v is not None else None) for k, v in (m.headers() or [])},
                "timestamp": m.timestamp()[1],
            })
        return sorted(got, key=lambda d: (d["partition"], d["offset"]))
    finally:
        c.close()


# --------------------------------------------------------------------------------------------------
# processes


class Proc:
    def __init__(self, name, argv, log_path, env):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                  env=env, cwd=str(REPO))
        self.stopped = False
        self.exited_early = None

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p.poll() is None

    def log(self):
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def wait_health(self, url, require_200=True, timeout=START_TIMEOUT):
        def ok():
            if not self.alive():
                raise AssertionError("%s exited with %s during start-up:\n%s" % (self.name, self.p.returncode,
                                                                                self.log()[-4000:]))
            try:
                r = requests.get(url, timeout=2)
            except requests.RequestException:
                return False
            return r.status_code == 200 or not require_200

        deadline = time.monotonic() + timeout
        while True:
            if ok():
                return
            if time.monotonic() >= deadline:
                raise AssertionError("%s did not answer %s within %.0fs:\n%s" % (self.name, url, timeout,
                                                                                 self.log()[-4000:]))
            time.sleep(0.1)

    def _dump_stacks(self):
        """Appends every thread's stack to the log (when gdb is installed): why it did not stop."""
        if not shutil.which("gdb"):
            return
        out = subprocess.run(["gdb", "-p", str(self.p.pid), "-batch", "-ex", "thread apply all bt 30"],
                             capture_output=True, text=True, timeout=60).stdout
        with open(self.log_path, "a") as f:
            f.write("\n--- stacks after SIGTERM did not stop it (gdb) ---\n" + out)

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM; returns the exit code (None when it had to be killed)."""
        if self.stopped:
            return self.p.returncode
        self.stopped = True
        if self.p.poll() is not None:
            # ended before the test stopped it (crash, or a signal from outside the test)
            self.exited_early = self.p.returncode
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self._dump_stacks()
                self.p.kill()
                self.p.wait()
                self._log.close()
                return None
        self._log.close()
        return self.p.returncode

    def stop_ok(self):
        rc = self.stop()
        assert rc == 0, "%s exited with %r after SIGTERM (expected 0 within %.0fs):\n%s" % (
            self.name, rc, STOP_TIMEOUT, self.log()[-4000:])


def child_env():
    # USERSTATUS_* variables are configuration overrides for the programs: pass none of ours through.
    return {k: v for k, v in os.environ.items() if not k.startswith("USERSTATUS_")}


class Namespace:
    """One test's private world: topic, DLQ, consumer group, Redis prefix, configs and processes."""

    def __init__(self, tmp_path, item):
        tag = uuid.uuid4().hex[:10]
        self.id = tag
        self.topic = "us_" + tag
        self.dlq = "us_" + tag + "_dlq"
        self.changes = "us_" + tag + "_changes"
        self.group = "us_" + tag + "_g"
        self.prefix = "us_" + tag
        self.tmp = Path(tmp_path)
        self.procs = []
        self.item = item
        self._n = 0
        self._producer = None
        self.extra_topics = []  # Made by the test (create_topic); deleted after its processes stop.

    def create_topic(self, name, partitions=PARTITIONS):
        """A topic of the test's own beside the namespace's, deleted once its processes stopped (a
        topic deleted under a running consumer makes its shutdown slow)."""
        create_topics([name], partitions=partitions)
        self.extra_topics.append(name)

    # ---- configuration
    def config(self, **over):
        """A full config dict for this namespace; keyword args are deep-merged sections, e.g.
        config(user_status={"expire_interval": "2s"}, query={"max_users_per_request": 3})."""
        cfg = {
            "api_key": API_KEY,
            "address": "127.0.0.1",
            "port": free_port(),
            "log_level": "info",
            "user_status": {
                "enabled": True,
                "redis_address": REDIS,
                "redis_prefix": self.prefix,
                "expire_interval": "24h",
            },
            "kafka": {
                "brokers": KAFKA,
                "topic": self.topic,
                "dlq_topic": self.dlq,
                "consumer_group": self.group,
                "partitions": PARTITIONS,
                "replication_factor": 1,
            },
            "worker": {
                "metrics_address": "127.0.0.1",
                "metrics_port": free_port(),
            },
            "changes": {
                "topic": self.changes,
            },
        }
        return deep_merge(cfg, over)

    def write_config(self, cfg):
        self._n += 1
        path = self.tmp / ("config-%d.json" % self._n)
        path.write_text(json.dumps(cfg, indent=2))
        return path

    # ---- processes
    def _start(self, kind, binary, cfg, health_url, require_200):
        if not binary.exists():
            pytest.fail("%s not built: %s (set USERSTATUS_BUILD_DIR)" % (kind, binary))
        path = self.write_config(cfg)
        log = self.tmp / ("%s-%d.log" % (kind, self._n))
        proc = Proc(kind, [str(binary), "--config", str(path)], str(log), child_env())
        proc.cfg = cfg
        self.procs.append(proc)
        proc.wait_health(health_url, require_200=require_200)
        return proc

    def start_worker(self, cfg=None):
        cfg = cfg or self.config()
        w = self._start("userstatus-worker", WORKER_BIN, cfg,
                        "http://127.0.0.1:%d/health" % cfg["worker"]["metrics_port"], True)
        w.metrics_url = "http://127.0.0.1:%d" % cfg["worker"]["metrics_port"]
        return w

    def start_query(self, cfg=None, require_200=True):
        cfg = cfg or self.config()
        q = self._start("userstatus-query", QUERY_BIN, cfg, "http://127.0.0.1:%d/health" % cfg["port"],
                        require_200)
        q.url = "http://127.0.0.1:%d" % cfg["port"]
        return q

    # ---- Kafka
    @property
    def producer(self):
        if self._producer is None:
            self._producer = KafkaProducer(self.topic)
        return self._producer

    def dlq_messages(self, expected, timeout=POLL_TIMEOUT):
        return consume_all(self.dlq, expected, timeout)

    # ---- Redis
    def key(self, user):
        """The per-user model's key of user (user_status.storage "per_user")."""
        return "%s:%s" % (self.prefix, user)

    def bucket_keys(self, user, expected_users=EXPECTED_USERS, nshards=1):
        """The bucket model's keys holding user: {"a": active zset, "o": online zset, "s": states}."""
        b = bucket_of(user, bucket_count(expected_users, nshards))
        return {k: "%s:{%d}:%s" % (self.prefix, b, k) for k in "aos"}

    def close(self):
        errors = []
        for p in self.procs:
            if not p.stopped:
                rc = p.stop()
                if rc != 0:
                    errors.append("%s exited with %r after SIGTERM:\n%s" % (p.name, rc, p.log()[-4000:]))
        if self._producer is not None:
            self._producer.p.flush(5)
        return errors


def api(base_url, method, body, key=API_KEY, headers=None, raw=None, http_method="POST", params=None,
        timeout=15):
    """Call /api/<method> (method None: Centrifugo v4's single endpoint /api). body: a JSON-able
    object (ignored when raw bytes are given). Returns the requests.Response."""
    h = {"Content-Type": "application/json"}
    if key is not None:
        h["X-API-Key"] = key
    if headers:
        h.update(headers)
    data = raw if raw is not None else json.dumps(body).encode()
    path = "/api" if method is None else "/api/" + method
    return requests.request(http_method, base_url + path, data=data, headers=h,
                            params=params, timeout=timeout)


def call(base_url, method, body, **kw):
    """api() and return the decoded JSON of an HTTP 200 answer."""
    r = api(base_url, method, body, **kw)
    assert r.status_code == 200, "HTTP %d: %r" % (r.status_code, r.content[:500])
    return r.json()


def metric(base_url, name):
    """One sample of base_url's /metrics: name with its labels, e.g. 'x_total{kind="a"}'."""
    for line in requests.get(base_url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("metric %s not found" % name)


def statuses(base_url, users):
    res = call(base_url, "get_user_status", {"users": list(users)})
    assert "result" in res, res
    return res["result"]["statuses"]


def status(base_url, user):
    return statuses(base_url, [user])[0]


# --------------------------------------------------------------------------------------------------
# fixtures


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
    ns = getattr(item, "_us_ns", None)
    if ns is not None and rep.failed:
        for p in ns.procs:
            rc = p.p.poll()
            state = "running" if rc is None else "exited %d" % rc
            if p.exited_early is not None or (rc is not None and not p.stopped):
                state += " BEFORE the test stopped it"
            rep.sections.append(("%s (pid %d, %s) log %s" % (p.name, p.pid, state, p.log_path),
                                 p.log()[-20000:]))


@pytest.fixture
def ns(request, tmp_path):
    """A private namespace with its topics created (PARTITIONS partitions each)."""
    n = Namespace(tmp_path, request.node)
    create_topics([n.topic, n.dlq])
    request.node._us_ns = n
    yield n
    errors = n.close()
    delete_topics([n.topic, n.dlq, n.changes] + n.extra_topics)
    try:
        r = Redis()
        keys = (r("KEYS", n.prefix + ":*") or []) + (r("KEYS", n.prefix + "#*") or [])
        for i in range(0, len(keys), 500):
            r("DEL", *keys[i:i + 500])
        r.close()
    except Exception:  # noqa: BLE001 - best effort clean-up
        pass
    assert not errors, "\n".join(errors)


@pytest.fixture
def stack(ns):
    """A worker and a query service sharing one config; returns (worker, query)."""
    cfg = ns.config()
    w = ns.start_worker(cfg)
    q = ns.start_query(cfg)
    return w, q


@pytest.fixture
def query(ns):
    """A query service alone (reads Redis, produces to Kafka, no worker)."""
    return ns.start_query()


# --------------------------------------------------------------------------------------------------
# fault injection (tests/e2e/test_faults.py): private Redis and Kafka instances that a test may stop,
# kill, freeze and restart without touching the shared services, and a background event stream.


class PrivateRedis:
    """A redis-server of the test's own on a free port, append-only file on with `appendfsync always`
    (an acknowledged write is on disk, so it survives even SIGKILL). start() again after stop()/kill()
    reuses the same directory, so the data comes back."""

    def __init__(self, tmp):
        self.port = free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.dir = Path(tmp) / ("redis-%d" % self.port)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.p = None
        self.starts = 0

    def start(self, timeout=15):
        self.starts += 1
        log = open(self.dir / ("redis-%d.log" % self.starts), "wb")
        self.p = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "yes"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(lambda: Redis(self.addr)("PING") == "PONG", timeout=timeout, what="private redis to start")
        return self

    def kill(self):
        """SIGKILL: no shutdown work at all."""
        if self.p and self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)

    def freeze(self):
        self.p.send_signal(signal.SIGSTOP)

    def thaw(self):
        self.p.send_signal(signal.SIGCONT)

    def close(self):
        if self.p and self.p.poll() is None:
            self.p.send_signal(signal.SIGCONT)
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


@pytest.fixture
def private_redis(tmp_path):
    r = PrivateRedis(tmp_path).start()
    yield r
    r.close()


class RedisProxy:
    """A TCP proxy in front of a Redis that a test can cut off for one client only: cut() closes the
    connections through it and refuses new ones (each is closed at once), restore() forwards again.
    Unlike a frozen redis-server, nothing sent during the cut is executed later: the client sees
    Redis down, every other client sees it up."""

    def __init__(self, target=REDIS):
        import threading

        self.target = target
        self.port = free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self._cut = threading.Event()
        self._lock = threading.Lock()
        self._socks = []
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._closed = False
        self._t = threading.Thread(target=self._accept, daemon=True)
        self._t.start()

    def _accept(self):
        import threading

        host, port = self.target.rsplit(":", 1)
        while not self._closed:
            try:
                c, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            if self._cut.is_set():
                c.close()
                continue
            try:
                u = socket.create_connection((host, int(port)), timeout=5)
            except OSError:
                c.close()
                continue
            c.settimeout(None)
            u.settimeout(None)
            with self._lock:
                self._socks += [c, u]
            threading.Thread(target=self._pump, args=(c, u), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data or self._cut.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        self._cut.set()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self):
        self._cut.clear()

    def close(self):
        self._closed = True
        self.cut()
        self._listener.close()
        self._t.join(5)


@pytest.fixture
def redis_proxy():
    p = RedisProxy()
    yield p
    p.close()


class PrivateKafka:
    """A single-node KRaft broker of the test's own (scripts/kafka.sh on free ports, data in the
    test's tmp dir); stop() and start() keep its data."""

    def __init__(self, tmp):
        self.port = free_port()
        self.controller_port = free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.data = Path(tmp) / ("kafka-%d" % self.port)
        self.env = dict(os.environ, KAFKA_PORT=str(self.port), KAFKA_CONTROLLER_PORT=str(self.controller_port),
                        KAFKA_DATA=str(self.data), KAFKA_HEAP=os.environ.get("USERSTATUS_TEST_KAFKA_HEAP", "384m"))

    def _run(self, cmd, timeout):
        r = subprocess.run([str(REPO / "scripts" / "kafka.sh"), cmd], env=self.env, capture_output=True,
                           text=True, timeout=timeout)
        assert r.returncode == 0, "kafka.sh %s failed:\n%s\n%s" % (cmd, r.stdout[-3000:], r.stderr[-3000:])

    def start(self):
        self._run("start", 120)
        return self

    def stop(self):
        self._run("stop", 60)

    def admin(self):
        return AdminClient({"bootstrap.servers": self.addr})


@pytest.fixture
def private_kafka(tmp_path):
    k = PrivateKafka(tmp_path).start()
    yield k
    try:
        k.stop()
    except Exception:  # noqa: BLE001 - best effort clean-up
        pass


class EventStream:
    """Produces `active` events from a background thread as fast as the producer takes them, until
    stop() or `limit` events or `seconds`. Event i: user "x-<i>" (unique, so a lost event is always
    visible) when i is even, else one of `hot` users "h-<j>" (many events each: the max must win).
    expected() is the final status every user must reach: its maximum event time, in seconds."""

    def __init__(self, topic, brokers=None, limit=100000, seconds=60.0, hot=500, rate=None):
        import threading

        self.topic = topic
        self.p = Producer({"bootstrap.servers": brokers or KAFKA, "partitioner": "murmur2_random",
                           "enable.idempotence": True, "linger.ms": 5, "message.timeout.ms": 120000})
        self.limit, self.seconds, self.hot, self.rate = limit, seconds, hot, rate
        self.best = {}
        self.produced = 0
        self.errors = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self.base = now_ms() - 3_600_000

    def _cb(self, err, msg):
        if err is not None:
            self.errors.append(err)

    def _run(self):
        import random

        rng = random.Random(4)
        t_end = time.monotonic() + self.seconds
        t0 = time.monotonic()
        i = 0
        while i < self.limit and not self._stop.is_set() and time.monotonic() < t_end:
            user = "x-%d" % i if i % 2 == 0 else "h-%d" % (i % self.hot)
            t = self.base + rng.randrange(0, 3_000_000)
            v = msgpack.packb({"type": "active", "user": user, "time": t}, use_bin_type=True)
            while True:
                try:
                    self.p.produce(self.topic, value=v, key=user, on_delivery=self._cb)
                    break
                except BufferError:
                    self.p.poll(0.05)
            b = self.best.get(user)
            if b is None or t > b:
                self.best[user] = t
            i += 1
            self.produced = i
            if i % 1000 == 0:
                self.p.poll(0)
                if self.rate:
                    ahead = i / self.rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
        self.p.flush(120)

    def start(self):
        self._t.start()
        return self

    def stop(self):
        self._stop.set()
        self._t.join(180)
        assert not self._t.is_alive(), "event stream did not finish"
        assert not self.errors, "delivery errors: %r" % self.errors[:5]
        assert len(self.p) == 0, "%d events not delivered" % len(self.p)
        return self.produced

    def expected(self):
        return {u: t // 1000 for u, t in self.best.items()}


def count_lost(base_url, expected, chunk=1000):
    """Reads every user of expected ({user: active seconds}) through get_user_status; returns the
    users whose status differs (missing, or a different time)."""
    users = sorted(expected)
    bad = []
    for i in range(0, len(users), chunk):
        part = users[i:i + chunk]
        for s in statuses(base_url, part):
            if s.get("active") != expected[s["user"]]:
                bad.append((s["user"], s.get("active"), expected[s["user"]]))
    return bad


def wait_no_loss(base_url, expected, timeout=90):
    """Waits until every user of expected has its final status; returns the seconds it took. On
    timeout, fails with the number of users still wrong (the lost ones)."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        try:
            last = count_lost(base_url, expected)
        except Exception as e:  # noqa: BLE001 - the query may be recovering
            last = [("<error>", repr(e), None)]
        if not last:
            return time.monotonic() - t0
        time.sleep(0.5)
    raise AssertionError("%d of %d users never reached their final status (lost), e.g. %r"
                         % (len(last), len(expected), last[:5]))
