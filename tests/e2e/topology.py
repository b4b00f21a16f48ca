#!/usr/bin/env python3
"""Real Redis topologies on loopback, for the end-to-end tests and for trying things by hand.

    python tests/e2e/topology.py shards   [--base-port 17100]   # 3 independent instances
    python tests/e2e/topology.py cluster  [--base-port 17200]   # 3-master Redis Cluster
    python tests/e2e/topology.py sentinel [--base-port 17300]   # master + replica + sentinel

Each prints the matching `user_status` config snippet and runs until Ctrl-C. Only Debian's
redis-server / redis-cli / redis-sentinel are used.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import Redis, RedisError, free_port  # noqa: E402


def _wait(cond, timeout, what):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except Exception as e:  # noqa: BLE001 - not ready yet
            last = e
        time.sleep(0.1)
    raise AssertionError("timed out waiting for %s (last error: %r)" % (what, last))


class Server:
    """One redis-server (or redis-sentinel) process in a private directory."""

    def __init__(self, port, workdir, args=(), sentinel_conf=None):
        self.port = port
        self.dir = os.path.join(workdir, str(port))
        os.makedirs(self.dir, exist_ok=True)
        self.log = open(os.path.join(self.dir, "server.log"), "wb")
        if sentinel_conf is not None:
            conf = os.path.join(self.dir, "sentinel.conf")
            with open(conf, "w") as f:
                f.write("port %d\nbind 127.0.0.1\ndir %s\n%s" % (port, self.dir, sentinel_conf))
            cmd = ["redis-server", conf, "--sentinel"]
        else:
            cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", self.dir,
                   "--save", "", "--appendonly", "no"] + list(args)
        self.p = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
        _wait(lambda: self.call("PING") == "PONG", 15, "redis on port %d" % port)

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def call(self, *args):
        r = Redis(self.addr)
        try:
            return r(*args)
        finally:
            r.close()

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self.log.close()


class Topology:
    def __init__(self):
        self.workdir = tempfile.mkdtemp(prefix="us-redis-topology-")
        self.servers = []

    def _server(self, *a, **kw):
        s = Server(*a, **kw)
        self.servers.append(s)
        return s

    def stop(self):
        for s in reversed(self.servers):
            s.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class Shards(Topology):
    def __init__(self, n=3, ports=None):
        super().__init__()
        ports = ports or [free_port() for _ in range(n)]
        self.nodes = [self._server(p, self.workdir) for p in ports]

    def config(self):
        return {"redis_address": [s.addr for s in self.nodes]}


class Cluster(Topology):
    """A Redis Cluster of n masters (no replicas), all slots assigned."""

    def __init__(self, n=3, ports=None):
        super().__init__()
        if ports:  # given by hand (main()): the default bus ports, client port + 10000
            bus = [None] * len(ports)
        else:
            # Bus ports are chosen like client ports (free, in this test worker's slice of the port
            # range), not left at client port + 10000, which may be taken or in another's slice.
            ports = [free_port() for _ in range(n)]
            bus = [free_port() for _ in range(n)]
        self.nodes = [self._server(p, self.workdir, ["--cluster-enabled", "yes",
                                                     "--cluster-config-file", "nodes-%d.conf" % p,
                                                     "--cluster-node-timeout", "5000"]
                                   + (["--cluster-port", str(b)] if b else []))
                      for p, b in zip(ports, bus)]
        subprocess.run(["redis-cli", "--cluster", "create"] + [s.addr for s in self.nodes]
                       + ["--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        _wait(lambda: all(b"cluster_state:ok" in s.call("CLUSTER", "INFO") for s in self.nodes),
              30, "cluster_state:ok on every node")

    def node_id(self, server):
        return server.call("CLUSTER", "MYID").decode()

    def reshard(self, src, dst, slots, timeout=120):
        """Moves `slots` slots (and their keys) from src to dst with redis-cli, as an operator would."""
        return subprocess.run(
            ["redis-cli", "--cluster", "reshard", src.addr, "--cluster-from", self.node_id(src),
             "--cluster-to", self.node_id(dst), "--cluster-slots", str(slots), "--cluster-yes",
             "--cluster-pipeline", "10"],
            check=True, capture_output=True, timeout=timeout)

    def owner_of(self, key):
        """The server whose shard holds key's slot now."""
        slot = self.nodes[0].call("CLUSTER", "KEYSLOT", key)
        for s in self.nodes:
            if s.call("CLUSTER", "COUNTKEYSINSLOT", slot) > 0 and s.call("EXISTS", key):
                return s
        return None

    def config(self):
        return {"redis_cluster_address": [self.nodes[0].addr]}


class Sentinel(Topology):
    """A master, one replica and one sentinel watching them as `mymaster`."""

    MASTER_NAME = "mymaster"

    def __init__(self, ports=None):
        super().__init__()
        mp, rp, sp = ports or [free_port() for _ in range(3)]
        self.master = self._server(mp, self.workdir)
        self.replica = self._server(rp, self.workdir, ["--replicaof", "127.0.0.1", str(mp)])
        _wait(lambda: b"master_link_status:up" in self.replica.call("INFO", "replication"), 20,
              "replica in sync")
        self.sentinel = self._server(sp, self.workdir, sentinel_conf=(
            "sentinel monitor %s 127.0.0.1 %d 1\n"
            "sentinel down-after-milliseconds %s 2000\n"
            "sentinel failover-timeout %s 10000\n" % (self.MASTER_NAME, mp, self.MASTER_NAME,
                                                     self.MASTER_NAME)))
        _wait(lambda: self.master_addr() == self.master.addr, 20, "sentinel to see the master")
        _wait(lambda: int(dict(zip(*[iter(self.sentinel.call("SENTINEL", "MASTER", self.MASTER_NAME))] * 2))
                          [b"num-slaves"]) >= 1, 20, "sentinel to see the replica")

    def master_addr(self):
        host, port = self.sentinel.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.MASTER_NAME)
        return "%s:%s" % (host.decode(), port.decode())

    def failover(self):
        """Forces a failover and waits until the replica is the master."""
        old = self.master_addr()
        self.sentinel.call("SENTINEL", "FAILOVER", self.MASTER_NAME)
        _wait(lambda: self.master_addr() != old, 30, "sentinel failover")
        new = self.master_addr()
        server = self.replica if new == self.replica.addr else self.master
        _wait(lambda: b"role:master" in server.call("INFO", "replication"), 30, "new master role")
        return new

    def config(self):
        return {"redis_sentinel_address": [self.sentinel.addr],
                "redis_sentinel_master_name": self.MASTER_NAME}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["shards", "cluster", "sentinel"])
    ap.add_argument("--base-port", type=int, default=17100)
    args = ap.parse_args()
    ports = [args.base_port + i for i in range(3)]
    topo = {"shards": Shards, "cluster": Cluster, "sentinel": Sentinel}[args.kind](ports=ports)
    print(json.dumps({"user_status": topo.config()}, indent=2), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        topo.stop()


if __name__ == "__main__":
    main()
