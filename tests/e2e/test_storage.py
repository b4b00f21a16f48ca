"""Both storage models (user_status.storage "buckets" and "per_user") keep the same promises:
expiry after the last update (state included), max-merge under replays, delete; and a bucket that
outgrows Redis' compact encoding still answers right."""
import time

import pytest
import requests

from conftest import now_ms, status, statuses, wait_until

MODELS = ["buckets", "per_user"]


@pytest.mark.parametrize("storage", MODELS)
def test_status_is_there_before_the_interval_and_gone_after(ns, storage):
    cfg = ns.config(user_status={"expire_interval": "3s", "storage": storage})
    ns.start_worker(cfg)
    q = ns.start_query(cfg)
    warm = now_ms()  # the group has joined and writes flow: later events apply within a batch
    ns.producer.event("online", "x0", warm)
    ns.producer.flush()
    wait_until(lambda: status(q.url, "x0").get("online") == warm // 1000, what="warm-up event")
    t = now_ms()
    ns.producer.event("online", "x1", t, state="dnd")
    ns.producer.flush()
    want = {"user": "x1", "online": t // 1000, "state": "dnd"}
    wait_until(lambda: status(q.url, "x1") == want, what="x1 applied")
    time.sleep(max(0.0, (t + 1500 - now_ms()) / 1000))
    if now_ms() - t < 2000:  # (a stalled machine may have taken longer: then only check expiry)
        assert status(q.url, "x1") == want  # 1.5 s into a 3 s interval
    wait_until(lambda: status(q.url, "x1") == {"user": "x1"}, timeout=8, what="x1 to expire")
    assert now_ms() - t >= 3000 - 1000  # never before the interval (times are whole seconds)


@pytest.mark.parametrize("storage", MODELS)
def test_state_expires_with_its_user_and_does_not_come_back(ns, storage):
    cfg = ns.config(user_status={"expire_interval": "2s", "storage": storage})
    ns.start_worker(cfg)
    q = ns.start_query(cfg)
    t = now_ms()
    ns.producer.event("online", "x2", t, state="away")
    ns.producer.flush()
    wait_until(lambda: status(q.url, "x2").get("state") == "away", what="x2 state")
    wait_until(lambda: status(q.url, "x2") == {"user": "x2"}, timeout=6, what="x2 to expire")
    time.sleep(0.5)
    t2 = now_ms()
    ns.producer.event("active", "x2", t2)  # no state: the old one must stay gone
    ns.producer.flush()
    wait_until(lambda: status(q.url, "x2") == {"user": "x2", "active": t2 // 1000}, what="x2 back")
    time.sleep(0.3)
    assert status(q.url, "x2") == {"user": "x2", "active": t2 // 1000}


@pytest.mark.parametrize("storage", MODELS)
def test_replaying_the_whole_topic_changes_nothing(ns, storage):
    cfg = ns.config(user_status={"storage": storage})
    base = now_ms() - 600_000
    users = ["rp-%d" % i for i in range(50)]
    expect = {}
    for i, u in enumerate(users):
        for k in (3, 1, 2):  # out of order
            ns.producer.event("active", u, base + i * 1000 + k * 10_000, state="s%d" % k)
        ns.producer.event("online", u, base + i * 1000)
        expect[u] = {"user": u, "active": (base + i * 1000 + 30_000) // 1000,
                     "online": (base + i * 1000) // 1000, "state": "s2"}
    ns.producer.event("delete", users[0])
    expect[users[0]] = {"user": users[0]}
    ns.producer.flush()
    ns.start_worker(cfg)
    q = ns.start_query(cfg)
    want = [expect[u] for u in users]
    wait_until(lambda: statuses(q.url, users) == want, what="first pass applied")
    # A second group reads the topic from the start: every write again, in other batches.
    replay = dict(cfg, kafka=dict(cfg["kafka"], consumer_group=ns.group + "-replay"),
                  worker=dict(cfg["worker"], metrics_port=cfg["worker"]["metrics_port"] + 1))
    w2 = ns.start_worker(replay)
    wait_until(lambda: requests.get(w2.metrics_url + "/metrics", timeout=5).text.count(
        'userstatus_worker_events_total{result="applied"} %d' % (len(users) * 4 + 1)) == 1,
        what="replay finished")
    assert statuses(q.url, users) == want


def test_overflowing_bucket_is_still_right_and_shows_in_metrics(ns, redis):
    # One bucket for 300 users: beyond the 128-member listpack limit, Redis uses a skiplist.
    cfg = ns.config(user_status={"expected_users": 1})
    w = ns.start_worker(cfg)
    q = ns.start_query(cfg)
    t = now_ms() - 600_000
    users = ["ov-%d" % i for i in range(300)]
    for i, u in enumerate(users):
        ns.producer.event("online", u, t + i * 1000)
    ns.producer.flush()
    want = [{"user": u, "online": (t + i * 1000) // 1000} for i, u in enumerate(users)]
    wait_until(lambda: statuses(q.url, users) == want, what="300 users in one bucket")
    assert redis("ZCARD", ns.bucket_keys(users[0], expected_users=1)["o"]) == 300
    assert redis("OBJECT", "ENCODING", ns.bucket_keys(users[0], expected_users=1)["o"]) == b"skiplist"
    # The first write of the bucket trimmed it (when it was still small); write again after the
    # trim period (1 h / 16 here is too long), so only check the metrics are exported.
    text = requests.get(w.metrics_url + "/metrics", timeout=5).text
    assert "userstatus_redis_buckets_over_listpack_total" in text
    assert "userstatus_redis_bucket_members_max" in text
