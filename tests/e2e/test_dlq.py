"""Poison messages go to the dead-letter topic and never block their partition."""
import msgpack
import pytest
import requests

from conftest import bucket_count, bucket_of, metric, now_ms, status, statuses, wait_until


def pack(obj):
    return msgpack.packb(obj, use_bin_type=True)


POISON = [
    # (description, value, reason)
    ("not msgpack", b"\xc1 this is not msgpack", "malformed_msgpack"),
    ("not a map", pack(["active", "p1"]), "not_a_map"),
    ("missing user", pack({"type": "active", "time": 1627107289000}), "missing_field"),
    ("key mismatch", pack({"type": "active", "user": "someone-else"}), "key_mismatch"),
]


def test_poison_messages_go_to_dlq_and_partition_moves_on(ns, stack):
    _, q = stack
    user = "p1"
    for _, value, _ in POISON:
        ns.producer.send(value, key=user)
    t = now_ms() - 3_000
    ns.producer.event("active", user, t)  # published after the poison, same key, same partition
    ns.producer.flush()
    partitions = {p for p, _, _ in ns.producer.delivered}
    assert len(partitions) == 1, "one key must map to one partition: %r" % ns.producer.delivered

    wait_until(lambda: status(q.url, user) == {"user": user, "active": t // 1000},
               what="the valid event after the poison to be applied")

    msgs = ns.dlq_messages(len(POISON))
    assert len(msgs) == len(POISON), msgs
    by_value = {m["value"]: m for m in msgs}
    assert set(by_value) == {v for _, v, _ in POISON}
    src_partition = partitions.pop()
    src_offsets = sorted(o for _, o, _ in ns.producer.delivered)[:len(POISON)]
    seen_offsets = []
    for desc, value, reason in POISON:
        m = by_value[value]
        assert m["key"] == user.encode(), desc
        h = m["headers"]
        assert h.get("userstatus-error") == reason, (desc, h)
        assert h.get("userstatus-error-detail"), (desc, h)
        assert h.get("userstatus-original-topic") == ns.topic, (desc, h)
        assert h.get("userstatus-original-partition") == str(src_partition), (desc, h)
        seen_offsets.append(int(h["userstatus-original-offset"]))
    assert seen_offsets == src_offsets, (seen_offsets, src_offsets)


def test_each_dlq_reason_code(ns, stack):
    """One poison message per reason code, each with its own user key; then a valid event per key."""
    _, q = stack
    cases = [
        ("u-malformed", b"", "malformed_msgpack"),
        ("u-notmap", pack(42), "not_a_map"),
        ("u-missing", pack({"user": "u-missing"}), "missing_field"),
        ("u-wrongtype", pack({"type": "active", "user": "u-wrongtype", "time": "now"}), "wrong_field_type"),
        ("u-unknown", pack({"type": "away", "user": "u-unknown"}), "unknown_event_type"),
        ("u-state", pack({"type": "active", "user": "u-state", "state": "s" * 65}), "state_too_long"),
        ("u-time", pack({"type": "active", "user": "u-time", "time": -5}), "bad_time"),
        ("u-version", pack({"type": "active", "user": "u-version", "v": 2}), "unsupported_version"),
        ("u-dup", b"\x83\xa4type\xa6active\xa4user\xa5u-dup\xa4type\xa6active", "duplicate_field"),
        ("u-baduser", pack({"type": "active", "user": ""}), "bad_user"),
        # a str whose bytes are not UTF-8: would make get_user_status answer invalid JSON
        ("u-utf8", b"\x83\xa4type\xa6active\xa4user\xa6u-utf8\xa5state\xa2\xc0\xaf", "bad_utf8"),
    ]
    for key, value, _ in cases:
        ns.producer.send(value, key=key)
    t = now_ms() - 2_000
    for key, _, _ in cases:
        ns.producer.event("online", key, t)
    ns.producer.flush()
    for key, _, _ in cases:
        wait_until(lambda: status(q.url, key) == {"user": key, "online": t // 1000}, what="%s applied" % key)
    msgs = ns.dlq_messages(len(cases))
    assert len(msgs) == len(cases), msgs
    # an empty value may come back as null: compare as bytes
    got = sorted((m["key"].decode(), m["value"] or b"", m["headers"].get("userstatus-error")) for m in msgs)
    assert got == sorted((k, v, r) for k, v, r in cases)


@pytest.mark.parametrize("storage", ["buckets", "per_user"])
def test_key_of_the_wrong_type_dead_letters_its_users_and_the_batch_goes_on(ns, redis, storage):
    """Something else wrote a string where a user's status lives: that user's events go to the DLQ
    with reason redis_error, every other user of the same batches is written, nothing is retried
    forever."""
    cfg = ns.config(user_status={"storage": storage, "expected_users": 1000})
    bad = "wt-bad"
    bad_key = ns.key(bad) if storage == "per_user" else ns.bucket_keys(bad, expected_users=1000)["a"]
    redis("SET", bad_key, "not a status")
    bad_bucket = bucket_of(bad, bucket_count(1000))
    good = [u for u in ("wt-%d" % i for i in range(40)) if bucket_of(u, bucket_count(1000)) != bad_bucket]
    t = now_ms() - 5_000
    ns.producer.event("active", bad, t)
    for u in good:
        ns.producer.event("active", u, t)
    ns.producer.event("online", bad, t, state="x")
    ns.producer.flush()
    w = ns.start_worker(cfg)
    q = ns.start_query(cfg)

    wait_until(lambda: all(s == {"user": s["user"], "active": t // 1000} for s in statuses(q.url, good)),
               what="the other users written")
    msgs = ns.dlq_messages(2)
    assert len(msgs) == 2, msgs
    for m in msgs:
        assert m["key"] == bad.encode()
        assert m["headers"]["userstatus-error"] == "redis_error", m["headers"]
        assert "WRONGTYPE" in m["headers"]["userstatus-error-detail"], m["headers"]
        assert m["headers"]["userstatus-original-topic"] == ns.topic
    assert redis("GET", bad_key) == b"not a status"  # left alone
    # Reads are not held hostage either: the bad user reads as unknown (nothing of ours is
    # stored for it), every other user of the request is answered, and the refusal is counted.
    refused = "userstatus_redis_refused_reads_total"
    before = metric(q.url, refused)
    got = statuses(q.url, [bad] + good[:5])
    assert got == [{"user": bad}] + [{"user": u, "active": t // 1000} for u in good[:5]], got
    assert metric(q.url, refused) == before + 1
    # The partition moves on: later events of other users, and of the bad user once fixed, apply.
    redis("DEL", bad_key)
    t2 = now_ms() - 1_000
    ns.producer.event("active", bad, t2)
    ns.producer.flush()
    # (The bucket's other keys were fine, so the refused transaction may have written the online
    # time and state: max-merge makes a later replay of the dead letters give the same result.)
    wait_until(lambda: status(q.url, bad).get("active") == t2 // 1000, what="bad user fixed")
    text = requests.get(w.metrics_url + "/metrics", timeout=5).text
    assert 'userstatus_worker_events_total{result="dead_lettered"} 2' in text
