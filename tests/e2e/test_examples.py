"""The producer examples of examples/producers/ (C, Python, Java, Go, Node.js and the kcat one-liner of
its README), run against the real broker with a worker consuming: every event they publish must be
applied (statuses checked through the query API, exact values), land on the partition the Java
client's murmur2 picks for its key (the partitioning every userstatus producer must use), and decode to
exactly the map of schemas/events.md. C, Python and Java are required; Go and Node.js skip (saying why)
when their toolchain is absent or their registry cannot be reached.

Toolchain builds are cached under $USERSTATUS_CACHE/examples/<language>-<hash of the sources>, so a
second run reuses them (Java: Maven copies the jars once, javac compiles once; each run then starts one
JVM, about half a second)."""
import hashlib
import os
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import msgpack
import pytest
import requests

from conftest import BUILD, KAFKA, PARTITIONS, REPO, consume_all, now_ms, statuses, wait_until

EXAMPLES = REPO / "examples" / "producers"
CACHE = Path(os.environ.get("USERSTATUS_CACHE", Path.home() / ".cache" / "userstatus")) / "examples"
RUN_TIMEOUT = 60  # seconds one producer run may take (delivery timeout inside is 10-15 s)
BUILD_TIMEOUT = 600  # seconds a first toolchain build may take (downloads from the registries)


def murmur2_partition(key, partitions):
    """The Java client's default partitioner for keyed records (librdkafka's murmur2_random):
    toPositive(murmur2(key)) % partitions, murmur2 with seed 0x9747b28c."""
    m, h = 0x5BD1E995, 0x9747B28C ^ len(key)
    n4 = len(key) // 4 * 4
    for i in range(0, n4, 4):
        k = int.from_bytes(key[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = key[n4:]
    if len(tail) >= 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if len(tail) >= 1:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


def test_murmur2_matches_the_java_client():
    # Values from Kafka's own unit tests (UtilsTest.testMurmur2) and DefaultPartitionerTest.
    assert murmur2_partition(b"", 1 << 31) == 275646681 & 0x7FFFFFFF
    assert murmur2_partition(b"21", 1 << 31) == (-973932308) & 0x7FFFFFFF
    assert murmur2_partition(b"foobar", 1 << 31) == (-790332482) & 0x7FFFFFFF
    assert murmur2_partition(b"a-little-bit-long-string", 1 << 31) == (-985981536) & 0x7FFFFFFF


# --------------------------------------------------------------------------------------------------
# building each example once (cached)


def sources_hash(*paths):
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def run_build(argv, cwd, env=None, what=""):
    r = subprocess.run(argv, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    if r.returncode != 0:
        raise RuntimeError("%s failed (%s):\n%s\n%s" % (what or argv[0], " ".join(map(str, argv)),
                                                       r.stdout[-3000:], r.stderr[-3000:]))


def build_c():
    exe = BUILD / "examples" / "producers" / "c" / "userstatus-example-producer"
    if not exe.exists():
        pytest.fail("C example not built: %s (it is part of the main CMake build)" % exe)
    return [str(exe)]


def build_python():
    return [sys.executable, str(EXAMPLES / "python" / "producer.py")]


def build_java():
    for tool in ("java", "javac", "mvn"):
        if shutil.which(tool) is None:
            pytest.fail("%s not found (scripts/deps.sh installs it)" % tool)
    src = EXAMPLES / "java"
    java_file = src / "src" / "main" / "java" / "Producer.java"
    out = CACHE / ("java-" + sources_hash(src / "pom.xml", java_file))
    if not (out / ".done").exists():
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        run_build(["mvn", "-B", "-q", "-Dstyle.color=never", "-f", str(src / "pom.xml"),
                   "dependency:copy-dependencies", "-DincludeScope=runtime",
                   "-DoutputDirectory=%s" % (out / "deps")], src, what="Maven")
        run_build(["javac", "-d", str(out / "classes"), "-cp", str(out / "deps") + "/*", str(java_file)], src,
                  what="javac")
        (out / ".done").touch()
    return ["java", "-cp", "%s:%s/*" % (out / "classes", out / "deps"), "Producer"]


def build_go():
    if shutil.which("go") is None:
        pytest.skip("go not found: the Go example is not run")
    src = EXAMPLES / "go"
    out = CACHE / ("go-" + sources_hash(src / "go.mod", src / "go.sum", src / "main.go"))
    exe = out / "producer"
    if not exe.exists():
        out.mkdir(parents=True, exist_ok=True)
        gocache = CACHE.parent / "go"
        env = dict(os.environ, GOPATH=str(gocache), GOMODCACHE=str(gocache / "pkg" / "mod"), GOFLAGS="-mod=mod")
        try:
            run_build(["go", "build", "-o", str(exe) + ".tmp", "."], src, env=env, what="go build")
        except RuntimeError as e:
            pytest.skip("the Go example could not be built (module proxy unreachable?): %s" % e)
        os.rename(str(exe) + ".tmp", str(exe))
    return [str(exe)]


def build_node():
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm not found: the Node.js example is not run")
    src = EXAMPLES / "node"
    files = [src / "package.json", src / "package-lock.json", src / "producer.js"]
    out = CACHE / ("node-" + sources_hash(*files))
    if not (out / ".done").exists():
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for f in files:
            shutil.copy(f, out / f.name)
        try:
            run_build(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], out,
                      what="npm ci")
        except RuntimeError as e:
            pytest.skip("the Node.js example's packages could not be installed (npm registry unreachable?): %s" % e)
        (out / ".done").touch()
    return ["node", str(out / "producer.js")]


BUILDERS = {"c": build_c, "python": build_python, "java": build_java, "go": build_go, "node": build_node}


# --------------------------------------------------------------------------------------------------
# the scenario every example must pass


def child_env_no_us():
    """The test's environment without USERSTATUS_* (configuration overrides of our programs)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("USERSTATUS_")}


def produce(cmd, topic, type_, user, state=None, time_ms=None):
    """Runs one example: `cmd BROKERS TOPIC TYPE USER [STATE|- [TIME_MS]]`; it must exit 0 (acked)."""
    argv = cmd + [KAFKA, topic, type_, user]
    if state is not None or time_ms is not None:
        argv.append("-" if state is None else state)
    if time_ms is not None:
        argv.append(str(time_ms))
    r = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT, env=child_env_no_us())
    assert r.returncode == 0, "%s exited %d:\n%s\n%s" % (" ".join(argv), r.returncode, r.stdout, r.stderr)


def dead_lettered(worker):
    text = requests.get(worker.metrics_url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith('userstatus_worker_events_total{result="dead_lettered"} '):
            return int(line.split()[-1])
    raise AssertionError("no dead_lettered counter in the worker's metrics:\n" + text[:2000])


@pytest.mark.parametrize("lang", list(BUILDERS))
def test_example_producer_sets_exact_statuses(lang, ns, stack):
    cmd = BUILDERS[lang]()
    w, q = stack
    base = now_ms() - 3_600_000  # an hour ago: far from the future clamp, still well inside the TTL
    a, o, d = lang + "-active", lang + "-online", lang + "-deleted"
    # The partition check below tells murmur2 from librdkafka's default (CRC32) only for users on
    # which the two disagree: at least one of them must be such a user.
    assert any(murmur2_partition(u.encode(), PARTITIONS) != zlib.crc32(u.encode()) % PARTITIONS
               for u in (a, o, d))
    # active with a state; online without one; active then delete (the user must be gone)
    produce(cmd, ns.topic, "active", a, "dnd", base + 1234)
    produce(cmd, ns.topic, "online", o, None, base + 5678)
    produce(cmd, ns.topic, "active", d, None, base + 9999)
    want = [{"user": a, "active": (base + 1234) // 1000, "state": "dnd"},
            {"user": o, "online": (base + 5678) // 1000},
            {"user": d, "active": (base + 9999) // 1000}]
    wait_until(lambda: statuses(q.url, [a, o, d]) == want, what="%s example's events applied" % lang)
    produce(cmd, ns.topic, "delete", d)
    want[2] = {"user": d}
    wait_until(lambda: statuses(q.url, [a, o, d]) == want, what="%s example's delete applied" % lang)
    assert dead_lettered(w) == 0

    msgs = consume_all(ns.topic, 4)
    assert len(msgs) == 4, msgs
    events = []
    for m in msgs:
        assert m["partition"] == murmur2_partition(m["key"], PARTITIONS), \
            "%s: key %r on partition %d, murmur2 says %d" % (lang, m["key"], m["partition"],
                                                           murmur2_partition(m["key"], PARTITIONS))
        ev = msgpack.unpackb(m["value"], raw=False)
        assert m["key"] == ev["user"].encode()
        events.append(ev)
    events.sort(key=lambda e: (e["user"], e["type"]))
    now = now_ms()
    t_delete = [e for e in events if e["type"] == "delete"][0].pop("time")
    assert now - 120_000 < t_delete <= now  # an event without TIME_MS carries the producer's clock
    assert events == sorted([
        {"type": "active", "user": a, "time": base + 1234, "state": "dnd", "v": 1},
        {"type": "online", "user": o, "time": base + 5678, "v": 1},
        {"type": "active", "user": d, "time": base + 9999, "v": 1},
        {"type": "delete", "user": d, "v": 1},
    ], key=lambda e: (e["user"], e["type"]))


def kcat_readme_line():
    """The kcat command of examples/producers/README.md, exactly as documented."""
    for line in (EXAMPLES / "README.md").read_text().splitlines():
        if line.startswith("printf ") and "| kcat -P" in line:
            return line
    raise AssertionError("no `printf ... | kcat -P ...` line in examples/producers/README.md")


def test_kcat_one_liner(ns, stack):
    """The kcat line of examples/producers/README.md, run as documented (broker and topic replaced):
    an event without `time` (the broker's timestamp counts), murmur2_random partitioning. User 42
    lands on the same partition with librdkafka's default (CRC32) partitioner, so the same command
    also sends user alice, for whom the two partitioners differ."""
    if shutil.which("kcat") is None:
        pytest.skip("kcat not found (Debian package kcat; scripts/deps.sh installs it)")
    w, q = stack
    line = kcat_readme_line().replace("127.0.0.1:9092", KAFKA).replace("-t user_status", "-t " + ns.topic)
    assert KAFKA in line and ns.topic in line, line
    alice = line.replace(r"42\t", r"alice\t").replace(r"\xa242", r"\xa5alice")
    assert alice != line
    before = int(time.time())
    for cmd in (line, alice):
        r = subprocess.run(["bash", "-c", cmd], capture_output=True, timeout=RUN_TIMEOUT)
        assert r.returncode == 0, (cmd, r.stderr)
    got = wait_until(lambda: (lambda s: s if all("active" in x for x in s) else None)(
        statuses(q.url, ["42", "alice"])), what="kcat's events applied")
    after = int(time.time())
    for st in got:
        assert set(st) == {"user", "active"} and before <= st["active"] <= after, got
    msgs = consume_all(ns.topic, 2)
    assert sorted((m["key"], msgpack.unpackb(m["value"]), m["partition"]) for m in msgs) == [
        (b"42", {"type": "active", "user": "42", "v": 1}, murmur2_partition(b"42", PARTITIONS)),
        (b"alice", {"type": "active", "user": "alice", "v": 1}, murmur2_partition(b"alice", PARTITIONS)),
    ]
    assert murmur2_partition(b"alice", PARTITIONS) != zlib.crc32(b"alice") % PARTITIONS
