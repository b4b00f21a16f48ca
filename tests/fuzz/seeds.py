#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into OUTDIR/<target>/ (one file per seed).

fuzz_event    every vector of schemas/vectors/{valid,invalid,encode}.tsv, framed as the target reads
              its input: byte 0 = 0 (no Kafka key), or 0x80|len followed by the key, then the value.
fuzz_api_body request bodies of every method and shape (plain, batch, both command forms, limits).
fuzz_config   schemas/examples/*.json, and duration / Redis address strings.
fuzz_redirect MOVED/ASK texts and RESP-encoded CLUSTER SHARDS / CLUSTER SLOTS replies.

Usage: seeds.py OUTDIR   (stdlib only, so it runs with any python3)"""
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VECTORS = REPO / "schemas" / "vectors"


def rows(name):
    for line in (VECTORS / name).read_text().splitlines():
        if line and not line.startswith("#"):
            yield line.split("\t")


def unhex(h):
    return b"" if h == "<empty>" else bytes.fromhex(h)


def event_seeds():
    for r in rows("valid.tsv"):
        yield r[0], r[1], unhex(r[2])
    for r in rows("invalid.tsv"):
        yield r[0], r[1], unhex(r[2])
    for r in rows("encode.tsv"):
        yield "enc_" + r[0], "-", unhex(r[5])


def frame(key, value):
    if key == "-":
        return b"\x00" + value
    k = key.encode()[:31]
    return bytes([0x80 | len(k)]) + k + value


API_BODIES = [
    {"users": ["42"]},
    {"users": ["42", "43", "42"]},
    {"users": []},
    {"users": ["a" * 17]},
    {"users": ["u%d" % i for i in range(9)]},
    {"users": ["42"], "state": "dnd"},
    {"users": ["42"], "state": ""},
    {"users": ["42"], "state": "s" * 65},
    {"users": ["42"], "state": None},
    {"users": [42]},
    {"users": "42"},
    {"users": ["\u00e9\u4e2d"]},
    {"commands": [{"get_user_status": {"users": ["1"]}}, {"update_user_status": {"users": ["2"], "state": "x"}}]},
    {"commands": [{"method": "delete_user_status", "params": {"users": ["3"]}}]},
    {"commands": [{"a": {}, "b": {}}, 1, None, {"method": 5}]},
    {"commands": []},
    [],
    "x",
]
API_RAW = [b'{"users":["a","a"],"users":[]}', b'{"users":["a\\u0000b"]}', b'{"users":["\xff"]}',
           b'[' * 40 + b']' * 40, b'{"users":["42"]', b'']

DURATIONS = ["0", "1s", "1h30m", "744h", "1.5s", "250ms", "-1s", "+2m", "1\u00b5s", "1\u03bcs", "9223372036854775807ns",
             "2562047h", "1.000000000000000001h", ".5s", "5.s", "1d"]
ADDRS = ["127.0.0.1:6379", "redis://u:p@host:1/2", "redis://:p@[::1]:6379", "[::1]:7000", "host", "x://y:1"]


def resp(v):
    """RESP2 encoding of nested lists / str / int."""
    if isinstance(v, list):
        return b"*%d\r\n" % len(v) + b"".join(resp(x) for x in v)
    if isinstance(v, int):
        return b":%d\r\n" % v
    b = v.encode()
    return b"$%d\r\n%s\r\n" % (len(b), b)


REDIRECTS = [b"MOVED 3999 127.0.0.1:6381", b"ASK 3999 [::1]:6381", b"MOVED 16384 h:1", b"ASK 1 h:0",
             b"MOVED 1 :1", b"TRYAGAIN x", b"MOVED 12 host:65536", b"{user}:42", b"a{}b{c}"]
SLOTS = [[[0, 5460, ["127.0.0.1", 7000, "id1"], ["127.0.0.1", 7003, "id4"]],
          [5461, 16383, ["127.0.0.1", 7001, "id2"]]]]
SHARDS = [[["slots", [0, 5460], "nodes", [["id", "a", "port", 7000, "ip", "127.0.0.1", "endpoint", "127.0.0.1",
                                            "role", "master", "health", "online"]]],
           ["slots", ["5461", "16383"], "nodes", [["id", "b", "port", 7001, "ip", "::1", "role", "master",
                                                    "health", "online"]]]]]


def main():
    out = Path(sys.argv[1])
    n = {}
    d = out / "fuzz_event"
    d.mkdir(parents=True, exist_ok=True)
    for i, (name, key, value) in enumerate(event_seeds()):
        (d / ("%03d_%s" % (i, name))).write_bytes(frame(key, value))
    n["fuzz_event"] = i + 1
    d = out / "fuzz_api_body"
    d.mkdir(parents=True, exist_ok=True)
    bodies = [json.dumps(b).encode() for b in API_BODIES] + API_RAW
    for i, b in enumerate(bodies):
        (d / ("%03d" % i)).write_bytes(b)
    n["fuzz_api_body"] = len(bodies)
    d = out / "fuzz_config"
    d.mkdir(parents=True, exist_ok=True)
    seeds = [p.read_bytes() for p in sorted((REPO / "schemas" / "examples").glob("*.json"))]
    seeds += [s.encode() for s in DURATIONS + ADDRS]
    seeds.append(json.dumps({"user_status": {"expire_interval": "1h", "redis_address": ["a:1", "b:2"]},
                             "kafka": {"properties": {"linger.ms": "5"}}, "query": {"connection_timeout": "2s"}}).encode())
    # Centrifugo v6 spellings: a reuse with sentinels, and one setting in both spellings.
    seeds.append(json.dumps({"engine": {"type": "redis", "redis": {"sentinel_address": ["s:1"],
                             "sentinel_master_name": "m", "db": 1}},
                             "user_status": {"redis": {"reuse_from_engine": True, "prefix": "p"}}}).encode())
    seeds.append(json.dumps({"redis_address": "a:1", "engine": {"redis": {"address": "b:1"}},
                             "user_status": {"redis_db": 1, "redis": {"db": 2}}}).encode())
    for i, s in enumerate(seeds):
        (d / ("%03d" % i)).write_bytes(s)
    n["fuzz_config"] = len(seeds)
    d = out / "fuzz_redirect"
    d.mkdir(parents=True, exist_ok=True)
    seeds = REDIRECTS + [resp(v) for v in SLOTS + SHARDS] + [b"-MOVED 1 h:2\r\n"]
    for i, s in enumerate(seeds):
        (d / ("%03d" % i)).write_bytes(s)
    n["fuzz_redirect"] = len(seeds)
    print("seed corpora in %s: %s" % (out, ", ".join("%s %d" % kv for kv in n.items())))


if __name__ == "__main__":
    main()
