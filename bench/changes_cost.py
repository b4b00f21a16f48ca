#!/usr/bin/env python3
"""What status changes cost: event -> change latency at a steady rate, worker throughput with
changes on and off, and the Redis memory of the deadline index for N online users.

    bench/changes_cost.py [--build build] [--users 100000] [--partitions 16]

For each mode, 2N events are produced first: an `active` event of each of N distinct users (with
changes on, each a transition offline -> online: the worst case), then an `online` heartbeat of
each a second later (no transition: the steady state). Then a worker starts, and the time it takes
to apply each half is measured (its /metrics, polled every 20 ms). With changes on, the index
then holds every user (all online), and MEMORY USAGE of its keys is summed. Needs Kafka on
$USERSTATUS_TEST_KAFKA and Redis on $USERSTATUS_TEST_REDIS (default 127.0.0.1:19092 and :16379);
uses its own topics and prefix and removes them afterwards.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid

import msgpack
import requests
from confluent_kafka import Producer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from conftest import KAFKA, REDIS, Redis, create_topics, delete_topics, free_port  # noqa: E402


def applied(metrics_url):
    text = requests.get(metrics_url + "/metrics", timeout=2).text
    m = re.search(r'userstatus_worker_events_total\{result="applied"\} (\d+)', text)
    return int(m.group(1)) if m else 0


def run(build, users, partitions, changes):
    tag = uuid.uuid4().hex[:8]
    topic, prefix = "bench_ch_" + tag, "bench_ch_" + tag
    create_topics([topic, topic + "_dlq"], partitions=partitions)
    p = Producer({"bootstrap.servers": KAFKA, "partitioner": "murmur2_random", "linger.ms": 20})
    t = int(time.time()) * 1000
    # Round 1: every user comes online (a transition each); round 2: a heartbeat of every user a
    # second later (no transition: the steady state).
    for typ, when in (("active", t), ("online", t + 1000)):
        for i in range(users):
            u = "user-%06d" % i
            v = msgpack.packb({"type": typ, "user": u, "time": when})
            while True:
                try:
                    p.produce(topic, key=u, value=v)
                    break
                except BufferError:
                    p.poll(0.05)
    p.flush(60)
    port = free_port()
    cfg = {"api_key": "x", "user_status": {"redis_address": REDIS, "redis_prefix": prefix},
           "kafka": {"brokers": KAFKA, "topic": topic, "dlq_topic": topic + "_dlq",
                     "consumer_group": topic + "_g", "partitions": partitions},
           "worker": {"metrics_port": port},
           "changes": {"enabled": changes, "topic": topic + "_changes", "offline_after": "1h"}}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cfg, f)
    env = {k: v for k, v in os.environ.items() if not k.startswith("USERSTATUS_")}
    w = subprocess.Popen([os.path.join(build, "worker", "userstatus-worker"), "--config", f.name],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = "http://127.0.0.1:%d" % port
    out = {}
    try:
        t0 = t1 = None
        while True:
            try:
                n = applied(url)
            except requests.RequestException:
                n = 0
            if n > 0 and t0 is None:
                t0 = time.monotonic()
            if n >= users and t1 is None:
                t1 = time.monotonic()
            if n >= 2 * users:
                break
            time.sleep(0.02)
        t2 = time.monotonic()
        with open("/proc/%d/status" % w.pid) as st:
            out["worker_peak_rss_mb"] = round(int(re.search(r"VmHWM:\s+(\d+)", st.read()).group(1)) / 1024, 1)
        out["transitions_events_per_s"] = round(users / (t1 - t0))
        out["steady_events_per_s"] = round(users / (t2 - t1))
        r = Redis()
        if changes:
            total = mem = 0
            for part in range(partitions):
                for kind in ("status", "deadlines"):
                    key = "%s#changes:%s:{%s:%d}" % (prefix, kind, topic, part)
                    mem += r("MEMORY", "USAGE", key, "SAMPLES", "0") or 0
                total += r("ZCARD", "%s#changes:deadlines:{%s:%d}" % (prefix, topic, part))
            out["index_users"] = total
            out["index_bytes_per_user"] = mem / max(total, 1)
        out["store_bytes_per_user"] = r("MEMORY", "USAGE", prefix + ":user-000001", "SAMPLES", "0")
        keys = (r("KEYS", prefix + ":*") or []) + (r("KEYS", prefix + "#*") or [])
        for i in range(0, len(keys), 1000):
            r("DEL", *keys[i:i + 1000])
        r.close()
    finally:
        w.terminate()
        w.wait(30)
        os.unlink(f.name)
        delete_topics([topic, topic + "_dlq", topic + "_changes"])
    return out


def read_changes(topic, partitions, total, out, status="online"):
    """Reader process: reads `total` changes (or gives up 30 s after the last one) and sends the
    latencies (read time - since, ms) through the pipe `out`."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": KAFKA, "group.id": "bench-" + uuid.uuid4().hex[:8],
                  "enable.auto.commit": False})
    while topic not in c.list_topics(timeout=5).topics:
        time.sleep(0.1)
    c.assign([TopicPartition(topic, i, OFFSET_BEGINNING) for i in range(partitions)])
    lat, last = [], time.monotonic()
    while len(lat) < total and time.monotonic() - last < 30:
        m = c.poll(0.1)
        if m is None or m.error():
            continue
        v = msgpack.unpackb(m.value())
        if v["user"].startswith("lat-") and v["status"] == status:  # not the warm-up user
            lat.append(time.time() * 1000 - v["since"])
        last = time.monotonic()
    c.close()
    out.send(lat)


WATCH_USERS_PER_STREAM = 1000  # query.max_users_per_request's default


def read_watch(url, users, total, out, status="online"):
    """Reader process: opens watch streams on the query service for `users` (1000 per stream) and
    sends the latencies (receipt time - since, ms) of the `change` events of those users, once
    `total` arrived or 30 s after the last one."""
    import queue
    import threading

    got = queue.Queue()

    def stream(chunk):
        r = requests.post(url + "/api/watch_user_status", json={"users": chunk},
                          headers={"X-API-Key": "x"}, stream=True, timeout=120)
        event = None
        try:
            for line in r.iter_lines(chunk_size=512, decode_unicode=True):
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "change":
                    change = json.loads(line[6:])
                    if change["status"] == status:
                        got.put(time.time() * 1000 - change["since"])
        except Exception:  # closed at the end of the run
            pass

    for i in range(0, len(users), WATCH_USERS_PER_STREAM):
        threading.Thread(target=stream, args=(users[i:i + WATCH_USERS_PER_STREAM],), daemon=True).start()
    lat = []
    while len(lat) < total:
        try:
            lat.append(got.get(timeout=30))
        except queue.Empty:
            break
    out.send(lat)


def summary(lat, total):
    lat.sort()
    q = lambda x: round(lat[min(len(lat) - 1, int(x * len(lat)))]) if lat else None  # noqa: E731
    return {"changes": len(lat), "expected": total, "p50_ms": q(0.5), "p99_ms": q(0.99),
            "max_ms": round(lat[-1]) if lat else None}


def latency(build, rate, seconds, partitions, offline_after=None):
    """Event -> change latency: `rate` events/s for `seconds`, each of a new user (so each one is a
    transition offline -> online whose `since` is the event time); a reader process of the changes
    topic measures read time - since, and another one the same through the query service's watch
    stream (its users watched before the run starts). With offline_after (a duration), the users
    are left silent and what is measured is the delay of their `offline` change: receipt time -
    since, where since = last event + offline_after (the offline detection delay)."""
    import multiprocessing

    status = "offline" if offline_after else "online"

    tag = uuid.uuid4().hex[:8]
    topic, prefix = "bench_lat_" + tag, "bench_lat_" + tag
    create_topics([topic, topic + "_dlq"], partitions=partitions)
    port = free_port()
    cfg = {"api_key": "x", "user_status": {"redis_address": REDIS, "redis_prefix": prefix},
           "kafka": {"brokers": KAFKA, "topic": topic, "dlq_topic": topic + "_dlq",
                     "consumer_group": topic + "_g", "partitions": partitions},
           "worker": {"metrics_port": port},
           "port": free_port(), "address": "127.0.0.1",
           "changes": {"topic": topic + "_changes", "offline_after": offline_after or "1h",
                       "away_after": "1h", "watch_max_streams": 1000}}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cfg, f)
    env = {k: v for k, v in os.environ.items() if not k.startswith("USERSTATUS_")}
    w = subprocess.Popen([os.path.join(build, "worker", "userstatus-worker"), "--config", f.name],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    qp = subprocess.Popen([os.path.join(build, "query", "userstatus-query"), "--config", f.name],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    qurl = "http://127.0.0.1:%d" % cfg["port"]
    total = int(rate * seconds)
    try:
        for url in ("http://127.0.0.1:%d/health" % port, qurl + "/health"):
            while True:
                try:
                    if requests.get(url, timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.1)
        recv, send = multiprocessing.Pipe(duplex=False)
        reader = multiprocessing.get_context("fork").Process(
            target=read_changes, args=(topic + "_changes", partitions, total, send, status))
        reader.start()
        wrecv, wsend = multiprocessing.Pipe(duplex=False)
        watcher = multiprocessing.get_context("fork").Process(
            target=read_watch, args=(qurl, ["lat-%d" % i for i in range(total)], total, wsend, status))
        watcher.start()
        p = Producer({"bootstrap.servers": KAFKA, "partitioner": "murmur2_random", "linger.ms": 5})
        # Warm-up: the first change waits for the new topic's metadata and the producer's id.
        p.produce(topic, key="warm-0", value=msgpack.packb({"type": "active", "user": "warm-0"}))
        p.flush(10)
        time.sleep(3)
        nstreams = (total + WATCH_USERS_PER_STREAM - 1) // WATCH_USERS_PER_STREAM
        while ("userstatus_query_watch_streams %d\n" % nstreams) not in requests.get(
                qurl + "/metrics", timeout=5).text:
            time.sleep(0.2)
        t0 = time.monotonic()
        for i in range(total):
            u = "lat-%d" % i
            p.produce(topic, key=u, value=msgpack.packb({"type": "active", "user": u,
                                                         "time": int(time.time() * 1000)}))
            if i % 100 == 0:
                p.poll(0)
                ahead = (i + 1) / rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        p.flush(60)
        lat = recv.recv()
        reader.join(60)
        wlat = wrecv.recv()
        watcher.join(60)
    finally:
        w.terminate()
        w.wait(30)
        qp.terminate()
        qp.wait(30)
        os.unlink(f.name)
        delete_topics([topic, topic + "_dlq", topic + "_changes"])
        r = Redis()
        keys = (r("KEYS", prefix + ":*") or []) + (r("KEYS", prefix + "#*") or [])
        for i in range(0, len(keys), 1000):
            r("DEL", *keys[i:i + 1000])
        r.close()
    return {"changes_topic": summary(lat, total), "watch_stream": summary(wlat, total)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--users", type=int, default=100000)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--latency-rate", type=int, default=10000, help="events/s of the latency run")
    ap.add_argument("--latency-seconds", type=float, default=10)
    ap.add_argument("--latency-only", action="store_true")
    ap.add_argument("--offline-after", default="3s",
                    help="changes.offline_after of the offline detection run (goal: delay <= 2 s)")
    a = ap.parse_args()
    print("event -> change latency (changes topic, watch stream) at %d events/s: %s"
          % (a.latency_rate, json.dumps(latency(a.build, a.latency_rate, a.latency_seconds, a.partitions))))
    print("offline detection delay after offline_after=%s (changes topic, watch stream), %d users: %s"
          % (a.offline_after, a.latency_rate,
             json.dumps(latency(a.build, a.latency_rate, 1, a.partitions, a.offline_after))))
    if a.latency_only:
        return
    off = run(a.build, a.users, a.partitions, False)
    on = run(a.build, a.users, a.partitions, True)
    print("changes off: %s" % json.dumps(off))
    print("changes on:  %s" % json.dumps(on))
    for k in ("transitions_events_per_s", "steady_events_per_s"):
        print("%s with changes / without: %.2f" % (k, on[k] / off[k]))


if __name__ == "__main__":
    main()
