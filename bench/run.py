#!/usr/bin/env python3
"""Side-by-side benchmarks of userstatus and its peers, reported as ratios.

Everything runs on this machine, on loopback, in one run, so that the ratios hold even when the
machine is noisy. Peers: redis-benchmark (pipelined HMGET/HSET on the same Redis), webdis (an HTTP
front end to Redis) under the same wrk load as our query service. The gRPC API is measured against
the HTTP API of the same process: bench/grpc_load.c (built as userstatus-grpc-load) is its wrk, with
as many threads and calls in flight (64 calls over 4 HTTP/2 connections instead of 64 connections).

    bench/run.py [--build build] [--seconds 10] [--events 500000] [--storage buckets|per_user]
                 [--memory-users 1000000]

The Redis memory per user and the store-level write/read rates of both storage models are
measured side by side by bench/memory.py (on a redis-server of its own), which this runs first.

Needs: Kafka on $USERSTATUS_TEST_KAFKA (scripts/kafka.sh start), redis-server, webdis and wrk
(scripts/deps.sh installs them), and the venv's confluent_kafka.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def wrk(url, seconds, script=None, connections=64, threads=2):
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)] if p99 else None
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, p99_ms, int(non2xx.group(1)) if non2xx else 0


def wrk_post_script(path, body, key="secret"):
    with open(path, "w") as f:
        f.write('wrk.method = "POST"\n')
        f.write(f"wrk.body = {json.dumps(body)}\n")
        f.write(f'wrk.headers["X-API-Key"] = "{key}"\n')
        f.write('wrk.headers["Content-Type"] = "application/json"\n')
    return path


def grpc_load(binary, port, key, users, seconds, concurrency=64, connections=4, threads=2):
    """Runs userstatus-grpc-load: GetUserStatus with `users` users per call. Returns its JSON
    (calls_per_s, users_per_s, failed, p50_ms, p99_ms)."""
    out = subprocess.run([binary, "--target", f"127.0.0.1:{port}", "--key", key, "--users", str(users),
                          "--seconds", str(seconds), "--concurrency", str(concurrency),
                          "--connections", str(connections), "--threads", str(threads)],
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def redis_benchmark(port, args, n=2000000, pipeline=100):
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-P", str(pipeline), "-n", str(n), "-q", "-r", "1000000"]
        + args, capture_output=True, text=True, check=True).stdout
    return float(re.findall(r"([\d.]+) requests per second", out)[-1])


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def metric(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--events", type=int, default=500000)
    ap.add_argument("--storage", choices=["buckets", "per_user"], default="buckets",
                    help="user_status.storage of the query service and worker under test")
    ap.add_argument("--memory-users", type=int, default=1_000_000,
                    help="users bench/memory.py writes per storage model (0: skip it)")
    ap.add_argument("--redis", choices=["single", "shards", "cluster", "sentinel"], default="single",
                    help="Redis topology under test (peers are measured in single mode only)")
    args = ap.parse_args()
    brokers = os.environ.get("USERSTATUS_TEST_KAFKA", "127.0.0.1:19092")
    work = tempfile.mkdtemp(prefix="us-bench-")
    procs = []
    results = {}

    def start(cmd, log):
        p = subprocess.Popen(cmd, stdout=open(os.path.join(work, log), "w"), stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    topo = None
    memory = None
    if args.memory_users > 0:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import memory as memory_bench
        memory = memory_bench.measure(args.build, args.memory_users, args.memory_users // 2, 2)
    try:
        rport = free_port()
        start(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", work], "redis.log")
        wait_port(rport)
        redis_cfg = {"redis_address": f"127.0.0.1:{rport}"}
        if args.redis != "single":
            sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
            import topology
            topo = {"shards": topology.Shards, "cluster": topology.Cluster,
                    "sentinel": topology.Sentinel}[args.redis]()
            redis_cfg = topo.config()
        results["redis_topology"] = args.redis
        results["storage"] = args.storage
        redis_cfg = dict(redis_cfg, storage=args.storage, expected_users=args.events)

        # --- peers -----------------------------------------------------------------------
        subprocess.run(["redis-cli", "-p", str(rport), "HSET", "userstatus:42", "a", "1", "o", "2"],
                       check=True, capture_output=True)
        results["redis_hmget_per_s"] = redis_benchmark(rport, ["HMGET", "userstatus:42", "a", "o"])
        results["redis_hset_per_s"] = redis_benchmark(
            rport, ["HSET", "bench:__rand_int__", "a", "__rand_int__", "o", "__rand_int__"])
        subprocess.run(["redis-cli", "-p", str(rport), "FLUSHALL"], check=True, capture_output=True)

        if shutil.which("webdis"):
            wport = free_port()
            wcfg = os.path.join(work, "webdis.json")
            json.dump({"redis_host": "127.0.0.1", "redis_port": rport, "http_host": "127.0.0.1",
                       "http_port": wport, "threads": 2, "pool_size": 8, "daemonize": False,
                       "verbosity": 0, "logfile": os.path.join(work, "webdis.log")}, open(wcfg, "w"))
            start(["webdis", wcfg], "webdis.out")
            wait_port(wport)
            subprocess.run(["redis-cli", "-p", str(rport), "ZADD", "userstatus:42", "1", "a"],
                           check=True, capture_output=True)
            results["webdis_get_req_per_s"] = wrk(
                f"http://127.0.0.1:{wport}/ZRANGE/userstatus:42/0/-1/WITHSCORES", args.seconds)[0]

        # --- userstatus --------------------------------------------------------------------
        ns = "bench_" + uuid.uuid4().hex[:8]
        qport, mport, gport = free_port(), free_port(), free_port()
        cfg = {"api_key": "secret", "address": "127.0.0.1", "port": qport, "log_level": "warn",
               "grpc_api": {"enabled": True, "address": "127.0.0.1", "port": gport, "key": "secret"},
               "user_status": redis_cfg,
               "kafka": {"brokers": brokers, "topic": ns, "dlq_topic": ns + "_dlq",
                         "consumer_group": ns, "partitions": 16},
               "worker": {"metrics_port": mport}}
        cfg_path = os.path.join(work, "config.json")
        json.dump(cfg, open(cfg_path, "w"))
        query = start([os.path.join(args.build, "query", "userstatus-query"), "--config", cfg_path],
                      "query.log")
        wait_http(f"http://127.0.0.1:{qport}/health")

        users100 = [f"user{i}" for i in range(100)]
        base = f"http://127.0.0.1:{qport}"
        s1 = wrk_post_script(os.path.join(work, "get1.lua"), json.dumps({"users": ["42"]}))
        s100 = wrk_post_script(os.path.join(work, "get100.lua"), json.dumps({"users": users100}))
        sup = wrk_post_script(os.path.join(work, "update.lua"), json.dumps({"users": ["42"]}))
        wrk(base + "/api/update_user_status", 2, sup)  # Warm-up: producer id, metadata, pools.
        # The gRPC API of the same process right after each HTTP get load (GetUserStatus with the
        # same number of users), so that both see the same machine; the update load comes last.
        loader = os.path.join(args.build, "bench", "userstatus-grpc-load")
        results["query_get1_req_per_s"], results["query_get1_p99_ms"], bad1 = wrk(
            base + "/api/get_user_status", args.seconds, s1)
        g1 = grpc_load(loader, gport, "secret", 1, args.seconds)
        rps100, results["query_get100_p99_ms"], bad100 = wrk(
            base + "/api/get_user_status", args.seconds, s100)
        results["query_get100_users_per_s"] = rps100 * 100
        g100 = grpc_load(loader, gport, "secret", 100, args.seconds)
        results["grpc_get1_calls_per_s"], results["grpc_get1_p99_ms"] = g1["calls_per_s"], g1["p99_ms"]
        results["grpc_get100_users_per_s"] = g100["users_per_s"]
        results["grpc_get100_p99_ms"] = g100["p99_ms"]
        results["grpc_failed_calls"] = g1["failed"] + g100["failed"]
        results["query_update_req_per_s"], results["query_update_p99_ms"], badup = wrk(
            base + "/api/update_user_status", args.seconds, sup)
        results["query_non_2xx"] = bad1 + bad100 + badup
        results["query_peak_rss_mb"] = rss_mb(query.pid)

        # --- worker: pre-produce unique-user events, then time their consumption -------------
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient, NewTopic
        import msgpack
        admin = AdminClient({"bootstrap.servers": brokers})
        for f in admin.create_topics([NewTopic(ns + "_w", 16, 1)]).values():
            f.result(30)
        prod = Producer({"bootstrap.servers": brokers, "partitioner": "murmur2_random",
                         "linger.ms": 20, "batch.num.messages": 10000,
                         "queue.buffering.max.messages": 1000000})
        now_ms = int(time.time() * 1000)
        for i in range(args.events):
            user = f"w{i}"
            while True:
                try:
                    prod.produce(ns + "_w", key=user, value=msgpack.packb(
                        {"type": "online", "user": user, "time": now_ms}, use_bin_type=True))
                    break
                except BufferError:
                    prod.poll(0.05)
            if i % 10000 == 0:
                prod.poll(0)
        prod.flush(60)

        wcfg = json.loads(json.dumps(cfg))
        wcfg["kafka"]["topic"] = ns + "_w"  # Not mixed with the events of the update run above.
        wcfg_path = os.path.join(work, "worker-config.json")
        json.dump(wcfg, open(wcfg_path, "w"))
        worker = start([os.path.join(args.build, "worker", "userstatus-worker"), "--config",
                        wcfg_path], "worker.log")
        wait_http(f"http://127.0.0.1:{mport}/health")
        applied_name = 'userstatus_worker_events_total{result="applied"}'
        start_t = None
        deadline = time.time() + 300
        while time.time() < deadline:
            done = metric(mport, applied_name)
            if done > 0 and start_t is None:
                start_t, start_n = time.time(), done
            if done >= args.events:
                break
            time.sleep(0.05)
        elapsed = time.time() - start_t
        results["worker_events_per_s"] = (args.events - start_n) / elapsed
        results["worker_peak_rss_mb"] = rss_mb(worker.pid)
        if topo is None:
            info = subprocess.run(["redis-cli", "-p", str(rport), "INFO", "memory"],
                                  capture_output=True, text=True).stdout
            used = int(re.search(r"used_memory:(\d+)", info).group(1))
            keys = int(subprocess.run(["redis-cli", "-p", str(rport), "DBSIZE"],
                                      capture_output=True, text=True).stdout)
            results["redis_keys"] = keys
            results["redis_bytes_per_user"] = used / args.events  # Every event a new user.
    finally:
        if topo is not None:
            topo.stop()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()

    r = results
    print(json.dumps(r, indent=2))
    if memory:
        memory_bench.report(memory, args.memory_users)
    if topo is not None:
        return
    print("\nratios (target in brackets):")
    if "webdis_get_req_per_s" in r:
        print(f"  get 1 user   req/s vs webdis           {r['query_get1_req_per_s'] / r['webdis_get_req_per_s']:.2f}x  [>= 1.2]")
    print(f"  get 100 users users/s vs Redis HMGET     {r['query_get100_users_per_s'] / r['redis_hmget_per_s']:.2f}x  [>= 0.7]")
    print(f"  gRPC get 1 user    users/s vs HTTP       {r['grpc_get1_calls_per_s'] / r['query_get1_req_per_s']:.2f}x  [>= 0.8]")
    print(f"  gRPC get 100 users users/s vs HTTP       {r['grpc_get100_users_per_s'] / r['query_get100_users_per_s']:.2f}x  [>= 1.0]")
    print(f"  worker events/s vs Redis HSET            {r['worker_events_per_s'] / r['redis_hset_per_s']:.2f}x  [>= 0.5]")
    print(f"  Redis bytes per user ({args.storage:8s})          {r['redis_bytes_per_user']:.0f}  [<= 40]")
    print(f"  worker / query peak RSS MB               {r['worker_peak_rss_mb']:.1f} / {r['query_peak_rss_mb']:.1f}  [< 30]")


if __name__ == "__main__":
    main()
