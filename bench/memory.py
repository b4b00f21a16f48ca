#!/usr/bin/env python3
"""Redis memory per user and store-level rates of both storage models, side by side.

Starts a redis-server of its own (never touches a shared one), and for each model in turn
(user_status.storage "buckets" and "per_user") writes USERS users through us-store-bench -- which
calls us_redis_apply and us_redis_get, the exact commands the worker and the query service send --
then reads INFO memory. Prints JSON and the ratios against the targets.

    bench/memory.py [--build build] [--users 1000000] [--reads 500000] [--rounds 2]
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ["buckets", "per_user"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port)] + list(args), capture_output=True, text=True,
                          check=True).stdout


def used_memory(port):
    return int(re.search(r"used_memory:(\d+)", cli(port, "INFO", "memory")).group(1))


def measure(build, users, reads, rounds, expected=None):
    """{model: {...}} for both models; rates are the best of `rounds` runs, alternating models so
    that noise from other processes hits both alike."""
    work = tempfile.mkdtemp(prefix="us-mem-")
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", work],
                             stdout=open(os.path.join(work, "redis.log"), "w"), stderr=subprocess.STDOUT)
    tool = os.path.join(build, "bench", "us-store-bench")
    out = {m: {"write_users_per_s": 0.0, "read_users_per_s": 0.0} for m in MODELS}
    try:
        for _ in range(100):
            try:
                if cli(port, "PING").strip() == "PONG":
                    break
            except subprocess.CalledProcessError:
                pass
            time.sleep(0.05)
        for r in range(rounds):
            for m in MODELS:
                cli(port, "FLUSHALL")
                empty = used_memory(port)
                res = json.loads(subprocess.run(
                    [tool, "127.0.0.1:%d" % port, m, str(users), str(expected or users), str(reads)],
                    capture_output=True, text=True, check=True).stdout)
                o = out[m]
                o["write_users_per_s"] = max(o["write_users_per_s"], res["write_users_per_s"])
                o["read_users_per_s"] = max(o["read_users_per_s"], res["read_users_per_s"])
                if r == 0:
                    o["bytes_per_user"] = (used_memory(port) - empty) / users
                    o["keys"] = int(cli(port, "DBSIZE"))
                    if m == "buckets":
                        enc = {}
                        for k in cli(port, "--scan", "--pattern", "bench:*:o").split()[:200]:
                            e = cli(port, "OBJECT", "ENCODING", k).strip()
                            enc[e] = enc.get(e, 0) + 1
                        o["sampled_online_set_encodings"] = enc
    finally:
        redis.terminate()
        redis.wait(30)
    return out


def report(res, users):
    b, p = res["buckets"], res["per_user"]
    print(json.dumps({"users": users, **res}, indent=2))
    print("\nstorage models at %d users (target in brackets):" % users)
    print("  Redis bytes per user: buckets %.1f, per_user %.1f  [buckets <= 40]"
          % (b["bytes_per_user"], p["bytes_per_user"]))
    print("  store writes users/s: buckets %.0f, per_user %.0f = %.2fx  [>= 0.7]"
          % (b["write_users_per_s"], p["write_users_per_s"], b["write_users_per_s"] / p["write_users_per_s"]))
    print("  store reads users/s:  buckets %.0f, per_user %.0f = %.2fx  [>= 0.8]"
          % (b["read_users_per_s"], p["read_users_per_s"], b["read_users_per_s"] / p["read_users_per_s"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--reads", type=int, default=500_000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    report(measure(args.build, args.users, args.reads, args.rounds), args.users)


if __name__ == "__main__":
    sys.exit(main())
