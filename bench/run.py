#!/usr/bin/env python3
"""Side-by-side benchmarks of userstatus and its peers, reported as ratios.

Everything runs on this machine, on loopback, in one run, so that the ratios hold even when the
machine is noisy. Peers, each given the same work as our service:
  - webdis (an HTTP front end to Redis) under the same wrk connections and threads;
  - Redis itself serving the very commands our services send, captured with MONITOR while one request
    (or one drain of the worker) runs and replayed pipelined by `redis-cli --pipe`;
  - redis-benchmark's pipelined HMGET/HSET, the generic rates the design's targets were written in;
  - the gRPC API against the HTTP API of the same process: bench/grpc_load.c (built as
    userstatus-grpc-load) is its wrk, with as many threads and calls in flight (64 calls over 4
    HTTP/2 connections instead of 64 connections), run right after each HTTP get load.

    bench/run.py [--build build] [--seconds 10] [--events 500000] [--profile docs/perf/NAME]
                 [--storage buckets|per_user] [--memory-users 1000000]
                 [--redis single|shards|cluster|sentinel]

With --redis other than single, our services use that topology (bench's own servers); the
same-commands peer then captures and replays on each of its servers at once, while webdis and
redis-benchmark keep one redis-server: the ratios say what the topology gives over one Redis.

The Redis memory per user and the store-level write/read rates of both storage models are
measured side by side by bench/memory.py (on a redis-server of its own), which this runs first.

--profile records a CPU flame graph (bench/flamegraph.sh) of the query service under each wrk load
and of the worker during its drain; throughput measured while profiling is not reported.

Needs: Kafka on $USERSTATUS_TEST_KAFKA (scripts/kafka.sh start), redis-server, webdis and wrk
(scripts/deps.sh installs them), and the venv's confluent_kafka.
"""
import argparse
import collections
import json
import os
import re
import shutil
import signal
import socket
import statistics
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


def redis_cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port)] + [str(a) for a in args],
                          capture_output=True, text=True, check=True).stdout


def resp(args):
    """One command in the Redis protocol, as redis-cli --pipe wants it."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


MONITOR_LINE = re.compile(rb'^[\d.]+ \[\d+ [^\]]*\] (.*)$')
MONITOR_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')


def unescape(a):
    """The bytes of one MONITOR argument (sdscatrepr escapes)."""
    out, i = bytearray(), 0
    while i < len(a):
        c = a[i]
        if c == 0x5C and i + 1 < len(a):
            n = a[i + 1]
            if n == ord("x"):
                out.append(int(a[i + 2:i + 4], 16))
                i += 4
                continue
            out.append({ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("a"): 7, ord("b"): 8}.get(n, n))
            i += 2
            continue
        out.append(c)
        i += 1
    return bytes(out)


class Monitor:
    """Captures the commands Redis servers execute (MONITOR on each) while a load runs; skips PING,
    cluster and sentinel chatter and our own tools' commands."""

    SKIP = {b"PING", b"MONITOR", b"INFO", b"DBSIZE", b"FLUSHALL", b"CLIENT", b"HELLO", b"COMMAND",
            b"CLUSTER", b"REPLCONF", b"PUBLISH", b"SENTINEL", b"ROLE"}

    def __init__(self, ports, path):
        self.paths = {port: f"{path}-{port}" for port in ports}
        self.procs = [subprocess.Popen(["redis-cli", "-p", str(port), "MONITOR"],
                                       stdout=open(p, "wb"), stderr=subprocess.DEVNULL)
                      for port, p in self.paths.items()]
        time.sleep(0.3)  # Registered before the load starts.

    def stop(self):
        """The commands each server executed: {port: [argv, ...]}."""
        time.sleep(0.3)
        for proc in self.procs:
            proc.terminate()
            proc.wait(10)
        out = {}
        for port, path in self.paths.items():
            cmds = out[port] = []
            with open(path, "rb") as f:
                for line in f:
                    m = MONITOR_LINE.match(line.rstrip(b"\n"))
                    if not m:
                        continue
                    args = [unescape(a) for a in MONITOR_ARG.findall(m.group(1))]
                    if args and args[0].upper() not in self.SKIP:
                        cmds.append(args)
        return out


def cpu_s(pids):
    """User + system CPU seconds of the processes (those that still run)."""
    total = 0
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def apply_settings(cfg, settings):
    """Sets each KEY=JSON of settings (dotted keys) in the config dict cfg."""
    for kv in settings:
        key, val = kv.split("=", 1)
        node = cfg
        *path, last = key.split(".")
        for k in path:
            node = node.setdefault(k, {})
        node[last] = json.loads(val)


def redis_cpu_s(ports):
    """CPU seconds the redis-servers on ports have used (INFO cpu: user + system, all threads)."""
    total = 0.0
    for port in ports:
        info = redis_cli(port, "INFO", "cpu")
        total += sum(float(re.search(rf"{k}:([\d.]+)", info).group(1)) for k in ("used_cpu_sys", "used_cpu_user"))
    return total


def replay(cmds_by_port, repeat, work, name):
    """Replays each port's commands (repeat times) on that port, pipelined with redis-cli --pipe,
    all ports at once; returns the commands (of all ports) per second of the whole replay."""
    paths = {}
    for port, cmds in cmds_by_port.items():
        paths[port] = os.path.join(work, f"{name}-{port}.resp")
        one = b"".join(resp(c) for c in cmds)
        with open(paths[port], "wb") as f:
            for _ in range(repeat):
                f.write(one)
    t0 = time.time()
    procs = [subprocess.Popen(["redis-cli", "-p", str(port), "--pipe"], stdin=open(path, "rb"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for port, path in paths.items()]
    for p in procs:
        if p.wait() != 0:
            raise RuntimeError("redis-cli --pipe failed")
    return sum(len(c) for c in cmds_by_port.values()) * repeat / (time.time() - t0)


class Profiler:
    """A flame graph of pid over the next seconds (bench/flamegraph.sh), or nothing."""

    def __init__(self, prefix, pid, seconds, name):
        self.proc = None
        if prefix:
            out = f"{prefix}-{name}.svg"
            self.proc = subprocess.Popen([os.path.join(ROOT, "bench", "flamegraph.sh"), "record",
                                          str(pid), str(seconds), out, f"{os.path.basename(prefix)}: {name}"])

    def wait(self):
        if self.proc:
            self.proc.wait(300)


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


def delete_topics(brokers, topics):
    """Deletes this run's topics from the (shared) broker; those that do not exist are skipped."""
    from confluent_kafka.admin import AdminClient
    admin = AdminClient({"bootstrap.servers": brokers})
    existing = set(admin.list_topics(timeout=10).topics)
    gone = [t for t in topics if t in existing]
    for t, f in (admin.delete_topics(gone, operation_timeout=30).items() if gone else []):
        try:
            f.result(30)
        except Exception as e:  # Reported, not fatal: the measurements are done.
            print(f"could not delete topic {t}: {e}", file=sys.stderr)


def produce_events(brokers, topic, n):
    """Pre-produces n online events of unique users w0..w{n-1} into a new 16-partition topic."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    import msgpack
    admin = AdminClient({"bootstrap.servers": brokers})
    for f in admin.create_topics([NewTopic(topic, 16, 1)]).values():
        f.result(30)
    prod = Producer({"bootstrap.servers": brokers, "partitioner": "murmur2_random",
                     "linger.ms": 20, "batch.num.messages": 10000,
                     "queue.buffering.max.messages": 1000000})
    now_ms = int(time.time() * 1000)
    for i in range(n):
        user = f"w{i}"
        while True:
            try:
                prod.produce(topic, key=user, value=msgpack.packb(
                    {"type": "online", "user": user, "time": now_ms}, use_bin_type=True))
                break
            except BufferError:
                prod.poll(0.05)
        if i % 10000 == 0:
            prod.poll(0)
    prod.flush(60)


def drain(start, build, cfg, work, name, events, profile=None):
    """Runs a worker over the pre-produced events with its own consumer group; returns (events/s
    from the first applied event to the last, peak RSS MB)."""
    path = os.path.join(work, name + ".json")
    json.dump(cfg, open(path, "w"))
    mport = cfg["worker"]["metrics_port"]
    worker = start([os.path.join(build, "worker", "userstatus-worker"), "--config", path],
                   name + ".log")
    wait_http(f"http://127.0.0.1:{mport}/health")
    applied_name = 'userstatus_worker_events_total{result="applied"}'
    start_t = prof = None
    start_n = 0
    deadline = time.time() + 300
    while time.time() < deadline:
        done = metric(mport, applied_name)
        if done > 0 and start_t is None:
            start_t, start_n = time.time(), done
            prof = Profiler(profile, worker.pid, 3, "worker-drain") if profile else None
        if done >= events:
            break
        time.sleep(0.02)
    if start_t is None:
        raise RuntimeError(f"{name}: no event applied within 300 s (is the broker up?)")
    elapsed = time.time() - start_t
    rss = rss_mb(worker.pid)
    if prof:
        prof.wait()
    worker.send_signal(signal.SIGTERM)
    worker.wait(30)
    return (events - start_n) / elapsed, rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--events", type=int, default=500000)
    ap.add_argument("--storage", choices=["buckets", "per_user"], default="buckets",
                    help="user_status.storage of the query service and worker under test")
    ap.add_argument("--memory-users", type=int, default=1_000_000,
                    help="users bench/memory.py writes per storage model (0: skip it)")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections (all HTTP loads)")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads (all HTTP loads)")
    ap.add_argument("--profile", metavar="PREFIX",
                    help="write flame graphs PREFIX-<load>.svg (throughput not reported)")
    ap.add_argument("--worker-set", action="append", default=[], metavar="KEY=JSON",
                    help="extra worker config, e.g. worker.batch_size=5000 or "
                         "kafka.properties={\"fetch.max.bytes\":\"1048576\"} (repeatable)")
    ap.add_argument("--query-set", action="append", default=[], metavar="KEY=JSON",
                    help="extra query service config, e.g. query.max_header_size=4096 (repeatable)")
    ap.add_argument("--only", choices=["all", "query", "worker"], default="all")
    ap.add_argument("--no-peers", action="store_true", help="measure our services only")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternations of our service and its peers per HTTP load")
    ap.add_argument("--redis", choices=["single", "shards", "cluster", "sentinel"], default="single",
                    help="Redis topology under test: the same-commands peers replay on its servers; webdis and redis-benchmark use one redis-server")
    args = ap.parse_args()
    brokers = os.environ.get("USERSTATUS_TEST_KAFKA", "127.0.0.1:19092")
    work = tempfile.mkdtemp(prefix="us-bench-")
    procs = []
    results = {}
    wrk_args = {"connections": args.connections, "threads": args.threads}

    def start(cmd, log):
        p = subprocess.Popen(cmd, stdout=open(os.path.join(work, log), "w"), stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    topo = None
    memory = None
    ns = None  # Names this run's topics once made.
    if args.memory_users > 0 and not args.profile:
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
        # The Redis servers that run our commands: the peers replay those commands on them. The
        # other peers (webdis, redis-benchmark) use the single instance on rport.
        cmd_ports = [rport] if topo is None else \
            [topo.master.port] if args.redis == "sentinel" else [s.port for s in topo.nodes]
        peers = not args.profile and not args.no_peers

        # --- generic peers ---------------------------------------------------------------
        if peers:
            redis_cli(rport, "HSET", "userstatus:42", "a", "1", "o", "2")
            results["redis_hmget_per_s"] = redis_benchmark(rport, ["HMGET", "userstatus:42", "a", "o"])
            results["redis_hset_per_s"] = redis_benchmark(
                rport, ["HSET", "bench:__rand_int__", "a", "__rand_int__", "o", "__rand_int__"])
            redis_cli(rport, "FLUSHALL")  # Our own redis-server, not the shared one.

        ns = "bench_" + uuid.uuid4().hex[:8]
        qport, mport, gport = free_port(), free_port(), free_port()
        cfg = {"api_key": "secret", "address": "127.0.0.1", "port": qport, "log_level": "warn",
               "grpc_api": {"enabled": True, "address": "127.0.0.1", "port": gport, "key": "secret"},
               "user_status": redis_cfg,
               "kafka": {"brokers": brokers, "topic": ns, "dlq_topic": ns + "_dlq",
                         "consumer_group": ns, "partitions": 16},
               "worker": {"metrics_port": mport},
               "changes": {"topic": ns + "_changes"}}

        # --- worker: pre-produce unique-user events, then time their consumption -------------
        if args.only in ("all", "worker"):
            produce_events(brokers, ns + "_w", args.events)
            wcfg = json.loads(json.dumps(cfg))
            wcfg["kafka"]["topic"] = ns + "_w"  # Not mixed with the events of the update load.
            apply_settings(wcfg, args.worker_set)
            results["worker_settings"] = args.worker_set
            empty = int(re.search(r"used_memory:(\d+)", redis_cli(rport, "INFO", "memory")).group(1)) \
                if topo is None else 0
            cpu0 = redis_cpu_s(cmd_ports)
            rate, rss = drain(start, args.build, wcfg, work, "worker", args.events, args.profile)
            if not args.profile:
                results["worker_events_per_s"], results["worker_peak_rss_mb"] = rate, rss
                # Redis time per event: the measure that does not depend on how the 2 cores are
                # shared with the broker and the worker during the drain.
                results["worker_events_per_redis_cpu_s"] = args.events / (redis_cpu_s(cmd_ports) - cpu0)
            if topo is None:
                info = redis_cli(rport, "INFO", "memory")
                used = int(re.search(r"used_memory:(\d+)", info).group(1))
                keys = int(redis_cli(rport, "DBSIZE"))
                # The status change engine's deadline index (on by default) holds the users that
                # may still change by themselves -- here every user, all just online -- in keys
                # of its own: counted apart, as it holds the online users, not all users seen.
                index = 0
                for key in redis_cli(rport, "--scan", "--pattern", "*#changes:*").split():
                    index += int(redis_cli(rport, "MEMORY", "USAGE", key, "SAMPLES", "0") or 0)
                results["redis_keys"] = keys
                results["redis_bytes_per_user"] = (used - empty - index) / args.events  # Each event a new user.
                results["redis_index_bytes_per_online_user"] = index / args.events
            if peers:
                # The same drain again (a new consumer group) into an empty Redis, with MONITOR
                # capturing every write; then Redis absorbs exactly those commands pipelined.
                for port in cmd_ports:
                    redis_cli(port, "FLUSHALL")
                wcfg["kafka"]["consumer_group"] = ns + "_capture"
                mon = Monitor(cmd_ports, os.path.join(work, "worker.monitor"))
                drain(start, args.build, wcfg, work, "worker-capture", args.events)
                by_port = mon.stop()
                cmds = [c for port in cmd_ports for c in by_port[port]]
                for port in cmd_ports:
                    redis_cli(port, "FLUSHALL")
                cpu0 = redis_cpu_s(cmd_ports)
                per_s = replay(by_port, 1, work, "worker")
                results["redis_replay_worker_events_per_redis_cpu_s"] = args.events / (redis_cpu_s(cmd_ports) - cpu0)
                results["worker_commands_per_event"] = len(cmds) / args.events
                mix = collections.Counter(c[0].upper().decode() if isinstance(c[0], bytes) else c[0].upper()
                                          for c in cmds)
                results["worker_commands_per_event_by_name"] = {
                    k: round(v / args.events, 3) for k, v in mix.most_common()}
                results["redis_replay_worker_events_per_s"] = per_s * args.events / len(cmds)

        # --- userstatus-query, interleaved with its peers ----------------------------------
        # The machine is shared: its load drifts over a run. So each load alternates short
        # slices of our service and of its peers (--rounds of them) and reports medians.
        if args.only in ("all", "query"):
            wport = None
            if peers and shutil.which("webdis"):
                wport = free_port()
                wdcfg = os.path.join(work, "webdis.json")
                json.dump({"redis_host": "127.0.0.1", "redis_port": rport,
                           "http_host": "127.0.0.1", "http_port": wport, "threads": 2,
                           "pool_size": 8, "daemonize": False, "verbosity": 0,
                           "logfile": os.path.join(work, "webdis.log")}, open(wdcfg, "w"))
                webdis = start(["webdis", wdcfg], "webdis.out")
                wait_port(wport)
                redis_cli(rport, "ZADD", "bench:r42", 1700000000, "a", 1700000001, "o")
            apply_settings(cfg, args.query_set)
            results["query_settings"] = args.query_set
            cfg_path = os.path.join(work, "config.json")
            json.dump(cfg, open(cfg_path, "w"))
            query = start([os.path.join(args.build, "query", "userstatus-query"), "--config",
                           cfg_path], "query.log")
            qport = cfg["port"]
            # Reads need Redis only: do not wait for /health, which also waits for the producer
            # to see the topic (slow when a shared broker is busy creating topics).
            wait_port(qport)
            # Users the worker wrote (when it ran), so that the reads find data.
            users100 = [f"w{i}" for i in range(100)]
            base = f"http://127.0.0.1:{qport}"
            loads = {
                "get1": ("/api/get_user_status", {"users": ["w42"]},
                         "/ZRANGE/bench:r42/0/-1/WITHSCORES"),
                "get100": ("/api/get_user_status", {"users": users100}, None),
                "update": ("/api/update_user_status", {"users": ["w42"]}, "/ZADD/bench:w42/GT/1/o"),
            }
            scripts = {k: wrk_post_script(os.path.join(work, k + ".lua"), json.dumps(v[1]))
                       for k, v in loads.items()}
            wrk(base + "/api/update_user_status", 2, scripts["update"], **wrk_args)  # Warm-up.
            slice_s = max(2, args.seconds // args.rounds)
            bad = 0
            for k, (path, body, webdis_path) in loads.items():
                replay_file = None
                if peers and k.startswith("get"):
                    # The read commands of one such request, for Redis to serve pipelined.
                    mon = Monitor(cmd_ports, os.path.join(work, k + ".monitor"))
                    urllib.request.urlopen(urllib.request.Request(
                        base + path, data=json.dumps(body).encode(),
                        headers={"X-API-Key": "secret"}), timeout=5).read()
                    replay_file = mon.stop()  # {port: commands}
                    results[f"redis_replay_{k}_cmds"] = sum(len(c) for c in replay_file.values())
                ours, p99s, webdis_rps, replay_rps = [], [], [], []
                our_cpu, webdis_cpu = [], []  # CPU µs per request: what the shared cores hide.
                for _ in range(1 if args.profile else args.rounds):
                    prof = Profiler(args.profile, query.pid, min(slice_s, 5), "query-" + k)
                    cpu0 = cpu_s([query.pid])
                    rps, p99, nbad = wrk(base + path, slice_s, scripts[k], **wrk_args)
                    if rps:
                        our_cpu.append((cpu_s([query.pid]) - cpu0) / (rps * slice_s) * 1e6)
                    prof.wait()
                    ours.append(rps)
                    p99s.append(p99 or 0)
                    bad += nbad
                    if wport and webdis_path:
                        cpu0 = cpu_s([webdis.pid])
                        webdis_rps.append(wrk(f"http://127.0.0.1:{wport}{webdis_path}", slice_s,
                                              **wrk_args)[0])
                        if webdis_rps[-1]:
                            webdis_cpu.append((cpu_s([webdis.pid]) - cpu0) /
                                              (webdis_rps[-1] * slice_s) * 1e6)
                    ncmds = results.get(f"redis_replay_{k}_cmds", 0)
                    if ncmds:
                        repeat = max(1, 500000 // ncmds)
                        replay_rps.append(replay(replay_file, repeat, work, k) / ncmds)
                if k.startswith("get") and not args.profile:
                    # The gRPC API of the same process, same users per call, right after.
                    loader = os.path.join(args.build, "bench", "userstatus-grpc-load")
                    g = grpc_load(loader, gport, "secret", len(body["users"]), args.seconds)
                    results[f"grpc_{k}_calls_per_s"] = g["calls_per_s"]
                    results[f"grpc_{k}_p99_ms"] = g["p99_ms"]
                    results["grpc_failed_calls"] = results.get("grpc_failed_calls", 0) + g["failed"]
                if not args.profile:
                    results[f"query_{k}_req_per_s"] = statistics.median(ours)
                    results[f"query_{k}_p99_ms"] = statistics.median(p99s)
                    results[f"query_{k}_req_per_s_all"] = ours
                if our_cpu:
                    results[f"query_{k}_cpu_us_per_req"] = statistics.median(our_cpu)
                if webdis_cpu:
                    results[f"webdis_{k}_cpu_us_per_req"] = statistics.median(webdis_cpu)
                if webdis_rps:
                    results[f"webdis_{k}_req_per_s"] = statistics.median(webdis_rps)
                    results[f"webdis_{k}_req_per_s_all"] = webdis_rps
                if replay_rps:
                    results[f"redis_replay_{k}_req_per_s"] = statistics.median(replay_rps)
            results["query_non_2xx"] = bad
            results["query_peak_rss_mb"] = rss_mb(query.pid)
            results["query_reads_inline"] = metric(qport, "userstatus_query_reads_inline_total")
            results["query_reads_batched"] = metric(qport, "userstatus_query_reads_batched_total")
    finally:
        if topo is not None:
            topo.stop()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        if ns:
            delete_topics(brokers, [ns + sfx for sfx in ("", "_w", "_dlq", "_changes")])

    r = results
    print(json.dumps(r, indent=2))
    if memory:
        memory_bench.report(memory, args.memory_users)
    if args.profile:
        return

    def ratio(label, a, b, target):
        if a in r and b in r and r[b]:
            fmt = lambda v: f"{v:>10.2f}" if v < 100 else f"{v:>10.0f}"
            print(f"  {label:<52} {fmt(r[a])} / {fmt(r[b])} = {r[a] / r[b]:.2f}x  [{target}]")

    print(f"\nratios, same machine, same run (wrk -t{args.threads} -c{args.connections} for every HTTP "
          f"load; medians of {args.rounds} interleaved slices):")
    if r.get("redis_topology", "single") != "single":
        print(f"  (Redis: {r['redis_topology']}; 'same commands' are replayed on its servers, each its own "
              "share at once; webdis and redis-benchmark use one redis-server)")
    ratio("get 1 user: req/s vs webdis (1 key read)", "query_get1_req_per_s", "webdis_get1_req_per_s", ">= 1.2")
    ratio("get 1 user: CPU µs per request, webdis's / ours", "webdis_get1_cpu_us_per_req",
          "query_get1_cpu_us_per_req", "-")
    ratio("get 1 user: req/s vs Redis, same commands piped", "query_get1_req_per_s", "redis_replay_get1_req_per_s", "-")
    if "query_get100_req_per_s" in r:
        r["query_get100_users_per_s"] = r["query_get100_req_per_s"] * 100
    ratio("get 100 users: req/s vs Redis, same commands piped", "query_get100_req_per_s", "redis_replay_get100_req_per_s", ">= 0.7")
    ratio("get 100 users: users/s vs Redis HMGET piped", "query_get100_users_per_s", "redis_hmget_per_s", "-")
    ratio("gRPC get 1 user: calls/s vs HTTP req/s", "grpc_get1_calls_per_s", "query_get1_req_per_s", ">= 0.8")
    ratio("gRPC get 100 users: calls/s vs HTTP req/s", "grpc_get100_calls_per_s", "query_get100_req_per_s", ">= 1.0")
    ratio("update: req/s vs webdis (1 ZADD GT)", "query_update_req_per_s", "webdis_update_req_per_s", "-")
    ratio("ingest: events/s vs Redis, same commands piped", "worker_events_per_s", "redis_replay_worker_events_per_s", "-")
    ratio("ingest: events/s vs Redis HSET piped", "worker_events_per_s", "redis_hset_per_s", ">= 0.5")
    ratio("ingest: events per Redis CPU-s vs same cmds piped", "worker_events_per_redis_cpu_s",
          "redis_replay_worker_events_per_redis_cpu_s", "-")
    if "redis_bytes_per_user" in r:
        print(f"  Redis bytes per user ({args.storage})            {r['redis_bytes_per_user']:.0f}  [<= 40]")
        print(f"  + deadline index, per online user       {r['redis_index_bytes_per_online_user']:.0f}  [-]")
    print(f"  worker / query peak RSS MB               {r.get('worker_peak_rss_mb', 0):.1f} / {r.get('query_peak_rss_mb', 0):.1f}  [< 30]")


if __name__ == "__main__":
    main()
