#!/usr/bin/env python3
"""userstatus at scale: N users ingested through Kafka by the worker, then read back.

For each storage model asked for, on this machine, in one run:
  1. events of N distinct users are produced once into a new topic (--partitions) on the Kafka of
     $USERSTATUS_TEST_KAFKA: an `online` event of every user, then (--events-per-user 2, the
     default) an `active` event of every user -- so that each user holds both times, as a real
     user does, and the memory per user is that of a full status. Produce rate reported;
  2. a fresh redis-server of its own (free port, no persistence, default configuration otherwise);
  3. the worker (`--worker-processes K`) with a consumer group of its own drains the topic into
     it: events/s from the first applied event to the last (the worker's /metrics, polled), the
     worker's CPU seconds and peak RSS, Redis' CPU seconds and commands -- so the per-core rates
     (events per worker CPU-second, events and commands per Redis CPU-second) are known, which
     hold on a loaded machine far better than wall-clock rates;
  4. Redis memory: used_memory minus that of the empty server, bytes per user, keys;
  5. the query service on that Redis: a sample of users (--check, random) is read back and each
     user's active and online times are compared with what was produced (and a few users never
     produced must come back empty); then wrk posts get_user_status of 100 random users of the N
     per request (--connections, --threads, --read-seconds): users/s, and per query-CPU-second
     and per Redis-CPU-second.
The storage models share the produced topic (a consumer group each) and get a Redis each. The
bucket model is sized with user_status.expected_users = N. Status changes are off (they keep an
index of their own in Redis: docs/choices.md, bench/changes_cost.py), so the store is measured
alone. Topics are deleted at the end.

    bench/scale.py [--users 10000000] [--storage buckets|per_user|both] [--partitions 8]
                   [--worker-processes 1] [--events-per-user 2] [--read-seconds 20]

Prints the results as JSON, then a table. Needs Kafka, redis-server, redis-cli, wrk, and the
venv's confluent_kafka and msgpack (run with ~/.cache/userstatus/venv/bin/python).
"""
import argparse
import json
import multiprocessing
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import msgpack
from confluent_kafka import Producer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from memory import cli, sample_encodings, start_redis  # noqa: E402
from run import cpu_s, metric, rss_mb, wait_http, wait_port, wrk  # noqa: E402
from conftest import KAFKA, admin, child_env, create_topics, delete_topics, free_port  # noqa: E402

MODELS = ["buckets", "per_user"]
API_KEY = "secret"
USERS_PER_REQUEST = 100    # Users per get_user_status of the read load (a buddy list).
CHECK_NEVER_PRODUCED = 20  # Users never produced that the check asks for too (must be empty).
POLL_S = 0.1               # Period of the worker's /metrics poll while it drains.
DRAIN_TIMEOUT_S = 3600     # Gives up on a drain that has not finished by then.
IDLE_TIMEOUT_S = 120       # ... or that applied nothing for that long.
MIN_CPU_S = 0.01           # CPU seconds below this are clock ticks of a tiny run: not divided by.


# --------------------------------------------------------------------------------------------------
# Events: user i's times are a function of i, so that any user can be checked without a table.

def user_id(i):
    return "u%d" % i


def event_times(i, base_s):
    """(online_ms, active_ms) of user i: seconds within the hour before base_s (Unix seconds), with
    milliseconds that the store must drop (it keeps Unix seconds, rounded down)."""
    online = (base_s - i % 3600) * 1000 + i % 1000
    active = online - (1 + i % 600) * 1000
    return online, active


def produce_range(brokers, topic, lo, hi, passes, base_s, barrier, out):
    """Produces the events of users lo..hi-1, pass by pass (all `online`, then all `active`),
    waiting at barrier between passes so that no partition mixes the passes of different users."""
    prod = Producer({"bootstrap.servers": brokers, "partitioner": "murmur2_random",
                     "linger.ms": 50, "batch.size": 1048576, "batch.num.messages": 100000,
                     "compression.type": "lz4", "queue.buffering.max.messages": 2000000,
                     "queue.buffering.max.kbytes": 1048576})
    failed = [0]

    def delivered(err, _msg):
        if err is not None:
            failed[0] += 1

    packb = msgpack.packb
    for p in range(passes):
        typ = "online" if p == 0 else "active"
        for i in range(lo, hi):
            user = user_id(i)
            value = packb({"type": typ, "user": user, "time": event_times(i, base_s)[p]})
            while True:
                try:
                    prod.produce(topic, key=user, value=value, on_delivery=delivered)
                    break
                except BufferError:
                    prod.poll(0.05)
            if i % 20000 == 0:
                prod.poll(0)
        left = prod.flush(300)
        if left:
            failed[0] += left
        barrier.wait()
    out.put(failed[0])


def produce(brokers, topic, users, passes, base_s, procs):
    """Produces passes x users events from `procs` processes; returns (events/s, failed)."""
    ctx = multiprocessing.get_context("spawn")  # No fork of a process with librdkafka threads.
    barrier = ctx.Barrier(procs)
    out = ctx.Queue()
    step = (users + procs - 1) // procs
    ps = [ctx.Process(target=produce_range,
                                  args=(brokers, topic, k * step, min(users, (k + 1) * step),
                                        passes, base_s, barrier, out))
          for k in range(procs)]
    t0 = time.monotonic()
    for p in ps:
        p.start()
    failed = sum(out.get() for _ in ps)
    for p in ps:
        p.join()
    return users * passes / (time.monotonic() - t0), failed


# --------------------------------------------------------------------------------------------------
# Processes and their costs

def redis_info(port):
    """INFO of the Redis on port as a dict of its fields (strings)."""
    return dict(line.split(":", 1) for line in cli(port, "INFO", "everything").splitlines()
                if ":" in line and not line.startswith("#"))


def redis_cpu_s(info):
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def process_tree(pid):
    """pid and every descendant of it (the worker's children with worker.processes > 1)."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def free_port_run(n):
    """The first of n consecutive free ports (the worker's processes use metrics_port + index)."""
    for _ in range(100):
        base = free_port()
        ok = True
        for p in range(base + 1, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no %d consecutive free ports" % n)


def stop(proc):
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------------------------------
# Reads

WRK_SCRIPT = """
-- get_user_status of %(per)d random users of u0..u%(last)d per request; counts replies that are not
-- a list of statuses (an error object answers with HTTP 200 too).
local counter, threads = 1, {}
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
function init(args)
  math.randomseed(os.time() * 1000 + id)
  bad = 0
  wrk.method = "POST"
  wrk.headers["X-API-Key"] = "%(key)s"
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  local t = {}
  for i = 1, %(per)d do t[i] = '"u' .. math.random(0, %(last)d) .. '"' end
  return wrk.format(nil, nil, nil, '{"users":[' .. table.concat(t, ",") .. ']}')
end
function response(status, headers, body)
  if not string.find(body, '{"result":{"statuses":[', 1, true) then bad = bad + 1 end
end
function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do n = n + t:get("bad") end
  io.write(string.format("bad_bodies %%d\\n", n))
end
"""


def get_statuses(port, users):
    req = urllib.request.Request("http://127.0.0.1:%d/api/get_user_status" % port,
                                 data=json.dumps({"users": users}).encode(),
                                 headers={"X-API-Key": API_KEY})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())["result"]["statuses"]


def check_sample(port, users, sample, passes, base_s):
    """Reads `sample` random users back (USERS_PER_REQUEST per request) and compares each one's
    times with what was produced; users never produced must come back without times. Returns
    {"checked", "wrong", "examples"}."""
    rnd = random.Random(1)
    ids = rnd.sample(range(users), min(sample, users))
    wrong, examples = 0, []
    for k in range(0, len(ids), USERS_PER_REQUEST):
        chunk = ids[k:k + USERS_PER_REQUEST]
        got = get_statuses(port, [user_id(i) for i in chunk])
        for i, st in zip(chunk, got):
            online_ms, active_ms = event_times(i, base_s)
            want = {"user": user_id(i), "online": online_ms // 1000}
            if passes > 1:
                want["active"] = active_ms // 1000
            if st != want:
                wrong += 1
                if len(examples) < 5:
                    examples.append({"want": want, "got": st})
    absent = ["never-%d" % k for k in range(CHECK_NEVER_PRODUCED)]
    for u, st in zip(absent, get_statuses(port, absent)):
        if st != {"user": u}:
            wrong += 1
            if len(examples) < 5:
                examples.append({"want": {"user": u}, "got": st})
    return {"checked": len(ids) + len(absent), "wrong": wrong, "examples": examples}


def wrk_reads(port, users, seconds, connections, threads, work):
    script = os.path.join(work, "get_random.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT % {"per": USERS_PER_REQUEST, "last": users - 1, "key": API_KEY})
    url = "http://127.0.0.1:%d/api/get_user_status" % port
    cmd = ["wrk", "-t%d" % threads, "-c%d" % connections, "-d%ds" % seconds, "--latency", "-s",
           script, url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)] if p99 else None
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    bad = int(re.search(r"bad_bodies (\d+)", out).group(1))
    return rps, p99_ms, (int(non2xx.group(1)) if non2xx else 0) + bad


# --------------------------------------------------------------------------------------------------
# One storage model

def run_model(args, model, topic, base_s, work):
    """Drains the topic into a fresh Redis with `model`, then reads it back. Returns its results."""
    total = args.users * args.events_per_user
    res = {"storage": model, "users": args.users, "events": total}
    redis, rport = start_redis(work, "redis-" + model)
    worker = query = None
    try:
        info0 = redis_info(rport)
        empty = int(info0["used_memory"])
        mport = free_port_run(args.worker_processes)
        group = "%s_%s" % (topic, model)
        cfg = {"api_key": API_KEY, "address": "127.0.0.1", "port": free_port(), "log_level": "warn",
               "user_status": {"redis_address": "127.0.0.1:%d" % rport, "storage": model,
                               "expected_users": args.users},
               "kafka": {"brokers": KAFKA, "topic": topic, "dlq_topic": topic + "_dlq",
                         "consumer_group": group, "partitions": args.partitions},
               "worker": {"metrics_port": mport, "processes": args.worker_processes},
               "changes": {"enabled": False}}
        path = os.path.join(work, "config-%s.json" % model)
        with open(path, "w") as f:
            json.dump(cfg, f)

        # --- ingest ------------------------------------------------------------------------
        t_start = time.monotonic()
        worker = subprocess.Popen([os.path.join(args.build, "worker", "userstatus-worker"),
                                   "--config", path],
                                  stdout=open(os.path.join(work, "worker-%s.log" % model), "w"),
                                  stderr=subprocess.STDOUT, env=child_env())
        ports = [mport + k for k in range(args.worker_processes)]
        for p in ports:
            wait_http("http://127.0.0.1:%d/health" % p, timeout=60)
        applied_name = 'userstatus_worker_events_total{result="applied"}'
        t_first = t_users = None
        last_n, last_change = 0, time.monotonic()
        pids, peak_rss = [worker.pid], {}
        while True:
            n = sum(metric(p, applied_name) for p in ports)
            now = time.monotonic()
            if n > 0 and t_first is None:
                t_first, n_first = now, n
            if n >= args.users and t_users is None:
                t_users, n_users = now, n  # The first pass: every user new.
                cpu_users = cpu_s(pids)
                redis_cpu_users = redis_cpu_s(redis_info(rport))
            if n != last_n:
                last_n, last_change = n, now
            pids = process_tree(worker.pid)
            for p in pids:
                try:
                    peak_rss[p] = rss_mb(p)
                except OSError:
                    pass
            if n >= total:
                break
            if now - t_start > DRAIN_TIMEOUT_S or now - last_change > IDLE_TIMEOUT_S:
                raise RuntimeError("%s: %d of %d events applied; worker log: %s" % (
                    model, n, total, os.path.join(work, "worker-%s.log" % model)))
            time.sleep(POLL_S)
        t_done = time.monotonic()
        worker_cpu = cpu_s(pids)
        info1 = redis_info(rport)
        # Rates count the events applied after the first poll that saw any (a run far longer
        # than POLL_S is needed for them to mean something).
        res["ingest_s"] = t_done - t_first
        res["ingest_events_per_s"] = (total - n_first) / max(t_done - t_first, POLL_S)
        res["ingest_events_per_s_from_start"] = total / (t_done - t_start)
        res["ingest_first_pass_users_per_s"] = (n_users - n_first) / max(t_users - t_first, POLL_S)
        res["first_pass_events_per_worker_cpu_s"] = n_users / max(cpu_users, MIN_CPU_S)
        res["first_pass_events_per_redis_cpu_s"] = n_users / max(
            redis_cpu_users - redis_cpu_s(info0), MIN_CPU_S)
        if args.events_per_user > 1:
            res["ingest_second_pass_events_per_s"] = (total - n_users) / max(t_done - t_users,
                                                                             POLL_S)
            res["second_pass_events_per_worker_cpu_s"] = (total - n_users) / max(
                worker_cpu - cpu_users, MIN_CPU_S)
            res["second_pass_events_per_redis_cpu_s"] = (total - n_users) / max(
                redis_cpu_s(info1) - redis_cpu_users, MIN_CPU_S)
        res["worker_processes"] = args.worker_processes
        res["worker_cpu_s"] = worker_cpu
        res["worker_events_per_cpu_s"] = total / max(worker_cpu, MIN_CPU_S)
        res["worker_peak_rss_mb"] = max(peak_rss.values())
        res["worker_peak_rss_mb_sum"] = sum(peak_rss.values())
        redis_cpu = redis_cpu_s(info1) - redis_cpu_s(info0)
        cmds = int(info1["total_commands_processed"]) - int(info0["total_commands_processed"])
        res["ingest_redis_cpu_s"] = redis_cpu
        res["ingest_redis_commands"] = cmds
        res["ingest_redis_events_per_cpu_s"] = total / max(redis_cpu, MIN_CPU_S)
        res["ingest_redis_commands_per_cpu_s"] = cmds / max(redis_cpu, MIN_CPU_S)
        stop(worker)
        res["worker_exit_code"] = worker.returncode

        # --- memory ------------------------------------------------------------------------
        info = redis_info(rport)
        used = int(info["used_memory"])
        res["redis_used_memory_empty"] = empty
        res["redis_used_memory"] = used
        res["redis_used_memory_rss"] = int(info["used_memory_rss"])
        res["redis_bytes_per_user"] = (used - empty) / args.users
        res["redis_keys"] = int(cli(rport, "DBSIZE"))
        if model == "buckets":
            res["sampled_online_set_encodings"] = sample_encodings(rport, "userstatus:*:o")

        # --- reads -------------------------------------------------------------------------
        query = subprocess.Popen([os.path.join(args.build, "query", "userstatus-query"),
                                  "--config", path],
                                 stdout=open(os.path.join(work, "query-%s.log" % model), "w"),
                                 stderr=subprocess.STDOUT, env=child_env())
        # Reads need Redis only: not /health, which also waits for the producer's topic.
        wait_port(cfg["port"], timeout=30)
        res["check"] = check_sample(cfg["port"], args.users, args.check, args.events_per_user,
                                    base_s)
        wrk_reads(cfg["port"], args.users, 2, args.connections, args.threads, work)  # Warm-up.
        q0, r0 = cpu_s(process_tree(query.pid)), redis_cpu_s(redis_info(rport))
        rps, p99, bad = wrk_reads(cfg["port"], args.users, args.read_seconds, args.connections,
                                  args.threads, work)
        q1, r1 = cpu_s(process_tree(query.pid)), redis_cpu_s(redis_info(rport))
        users_per_s = rps * USERS_PER_REQUEST
        res["read_req_per_s"] = rps
        res["read_users_per_s"] = users_per_s
        res["read_p99_ms"] = p99
        res["read_bad_replies"] = bad
        res["read_users_per_query_cpu_s"] = users_per_s * args.read_seconds / max(q1 - q0, MIN_CPU_S)
        res["read_users_per_redis_cpu_s"] = users_per_s * args.read_seconds / max(r1 - r0, MIN_CPU_S)
        res["query_peak_rss_mb"] = rss_mb(query.pid)
    finally:
        stop(worker)
        stop(query)
        stop(redis)
    return res


def print_table(results, args):
    rows = [
        ("Redis used memory, MB", lambda r: "%.0f" % (r["redis_used_memory"] / 1e6)),
        ("  bytes per user", lambda r: "%.1f" % r["redis_bytes_per_user"]),
        ("  keys", lambda r: "%d" % r["redis_keys"]),
        ("ingest, events/s (first to last applied)", lambda r: "%.0f" % r["ingest_events_per_s"]),
        ("  first pass (new users), users/s", lambda r: "%.0f" % r["ingest_first_pass_users_per_s"]),
        ("  second pass, events/s",
         lambda r: "%.0f" % r.get("ingest_second_pass_events_per_s", 0)),
        ("  from worker start, events/s", lambda r: "%.0f" % r["ingest_events_per_s_from_start"]),
        ("  events per worker CPU-second", lambda r: "%.0f" % r["worker_events_per_cpu_s"]),
        ("    first / second pass", lambda r: "%.0f / %.0f" % (
            r["first_pass_events_per_worker_cpu_s"],
            r.get("second_pass_events_per_worker_cpu_s", 0))),
        ("  events per Redis CPU-second", lambda r: "%.0f" % r["ingest_redis_events_per_cpu_s"]),
        ("    first / second pass", lambda r: "%.0f / %.0f" % (
            r["first_pass_events_per_redis_cpu_s"],
            r.get("second_pass_events_per_redis_cpu_s", 0))),
        ("  Redis commands per Redis CPU-second",
         lambda r: "%.0f" % r["ingest_redis_commands_per_cpu_s"]),
        ("  worker peak RSS, MB", lambda r: "%.1f" % r["worker_peak_rss_mb"]),
        ("read, users/s (%d per request)" % USERS_PER_REQUEST,
         lambda r: "%.0f" % r["read_users_per_s"]),
        ("  p99, ms", lambda r: "%.1f" % (r["read_p99_ms"] or 0)),
        ("  users per query CPU-second", lambda r: "%.0f" % r["read_users_per_query_cpu_s"]),
        ("  users per Redis CPU-second", lambda r: "%.0f" % r["read_users_per_redis_cpu_s"]),
        ("  bad replies", lambda r: "%d" % r["read_bad_replies"]),
        ("  query peak RSS, MB", lambda r: "%.1f" % r["query_peak_rss_mb"]),
        ("check: users read back / wrong",
         lambda r: "%d / %d" % (r["check"]["checked"], r["check"]["wrong"])),
    ]
    models = [r["storage"] for r in results["models"]]
    print("\n%d users, %d events (%d per user), %d partitions, %d worker process(es); produced at "
          "%.0f events/s" % (args.users, args.users * args.events_per_user, args.events_per_user,
                             args.partitions, args.worker_processes, results["produce_events_per_s"]))
    print("  %-44s" % "" + "".join("%20s" % m for m in models))
    for label, f in rows:
        print("  %-44s" % label + "".join("%20s" % f(r) for r in results["models"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--users", type=int, default=10_000_000)
    ap.add_argument("--events-per-user", type=int, choices=[1, 2], default=2,
                    help="1: an online event per user; 2: then an active event per user too")
    ap.add_argument("--storage", choices=MODELS + ["both"], default="buckets")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--worker-processes", type=int, default=1)
    ap.add_argument("--produce-processes", type=int, default=2)
    ap.add_argument("--check", type=int, default=1000, help="users read back and compared")
    ap.add_argument("--read-seconds", type=int, default=20)
    ap.add_argument("--connections", type=int, default=64, help="wrk connections")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--keep-topic", action="store_true", help="do not delete the topics at the end")
    args = ap.parse_args()

    models = MODELS if args.storage == "both" else [args.storage]
    topic = "bench_scale_" + uuid.uuid4().hex[:8]
    work = tempfile.mkdtemp(prefix="us-scale-")
    base_s = int(time.time())  # Every event time is within the hour before it.
    results = {"users": args.users, "events_per_user": args.events_per_user,
               "partitions": args.partitions, "topic": topic, "work_dir": work, "base_s": base_s,
               "load_average_at_start": os.getloadavg(), "models": []}
    try:
        create_topics([topic, topic + "_dlq"], partitions=args.partitions)
        rate, failed = produce(KAFKA, topic, args.users, args.events_per_user, base_s,
                               args.produce_processes)
        if failed:
            raise RuntimeError("%d events were not delivered to %s" % (failed, topic))
        results["produce_events_per_s"] = rate
        for m in models:
            results["models"].append(run_model(args, m, topic, base_s, work))
            results["models"][-1]["load_average_after"] = os.getloadavg()
    finally:
        if not args.keep_topic:
            delete_topics([topic, topic + "_dlq"])
            left = [t for t in admin().list_topics(timeout=10).topics if t.startswith(topic)]
            if left:
                print("could not delete the topics %s: delete them by hand" % left, file=sys.stderr)
    print(json.dumps(results, indent=2))
    print_table(results, args)
    return 1 if any(r["check"]["wrong"] or r["read_bad_replies"] for r in results["models"]) else 0


if __name__ == "__main__":
    sys.exit(main())
