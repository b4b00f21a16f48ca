"""Centrifugo v6 config spellings on the real programs: user status reusing the engine's Redis
(engine.redis.*), in a database other than 0, and start-up refusing one setting in two spellings."""
import subprocess

from conftest import QUERY_BIN, REDIS, Redis, call, child_env, status, wait_until


def v6_config(ns, db):
    cfg = ns.config(engine={"type": "redis", "redis": {"address": REDIS, "db": db}},
                    user_status={"redis": {"reuse_from_engine": True, "prefix": ns.prefix}})
    for v5 in ("redis_address", "redis_prefix"):  # the namespace's defaults, in v5 spelling
        cfg["user_status"].pop(v5)
    return cfg


def test_reuse_from_engine_writes_and_reads_in_the_engines_database(ns):
    cfg = v6_config(ns, db=3)
    ns.start_worker(cfg)
    q = ns.start_query(cfg)
    user = "v6-" + ns.id
    assert call(q.url, "update_user_status", {"users": [user]}) == {"result": {}}
    wait_until(lambda: "active" in status(q.url, user), what="update visible")
    active = ns.bucket_keys(user)["a"]  # the user's bucket of active times
    r = Redis()
    try:
        assert r("ZSCORE", active, user) is None  # not in database 0
        assert r("SELECT", 3) == "OK"
        assert r("ZSCORE", active, user) is not None
        r("DEL", *ns.bucket_keys(user).values())
    finally:
        r.close()


def test_one_setting_in_both_spellings_stops_start_up(ns, tmp_path):
    cfg = ns.config(user_status={"redis": {"address": REDIS}})  # plus the v5 redis_address
    path = ns.write_config(cfg)
    run = subprocess.run([str(QUERY_BIN), "--config", str(path), "--check-config"],
                         env=child_env(), capture_output=True, text=True, timeout=30)
    assert run.returncode == 1
    assert ("config keys 'user_status.redis_address' and 'user_status.redis.address' are the same "
            "setting") in run.stderr
