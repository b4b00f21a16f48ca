"""Fault injection on the real programs with real signals: nothing lost, nothing crashes.

Each test breaks something on purpose while events flow (worker SIGKILL, Redis down, Kafka broker
down, workers joining and leaving, Redis frozen with SIGSTOP) and then checks the final state of
every user against what its events say. Lost events are made visible: half of the events go to
users that get exactly one event ("x-<i>"), so an event whose offset was committed without its
Redis write would leave that user empty for ever; the other half go to 500 "hot" users whose
maximum time must win. Shared Kafka/Redis are never stopped: the tests that stop a service start a
private one (conftest.PrivateRedis / PrivateKafka).

Each test prints what it measured (run pytest with -s or -rA to see it). USERSTATUS_LONG=1 runs the
long mode: 20 kill -9 rounds and longer streams (tests/e2e/README.md).
"""
import os
import re
import threading
import time

import requests

from conftest import (EventStream, KAFKA, KafkaProducer, api, create_topics, deep_merge, delete_topics, now_ms,
                      status, statuses, wait_no_loss, wait_until)

LONG = os.environ.get("USERSTATUS_LONG") == "1"
# Fast failure detection for the group: the broker's minimum session timeout is 6 s. Without this,
# partitions of a SIGKILLed worker wait librdkafka's default 45 s before another member gets them.
FAST_GROUP = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}


def worker_cfg(ns, cfg):
    """cfg with a fresh metrics port (one per worker process)."""
    return dict(cfg, worker=dict(cfg["worker"], metrics_port=ns.config()["worker"]["metrics_port"]))


def report(name, **figures):
    print("FIGURES %s: %s" % (name, ", ".join("%s=%s" % kv for kv in figures.items())))


def no_revoked_partition_stores(procs):
    """Offsets are stored only for partitions the worker owns: librdkafka refuses a store for a
    partition that is not assigned, and the worker logs each refusal ("partition no longer ours?").
    Returns the number of such lines in the given workers' logs (must be 0)."""
    return sum(len(re.findall(r"storing offset .* no longer ours", p.log())) for p in procs)


# --------------------------------------------------------------------------------------------------
# kill -9 a worker under load


def test_kill9_worker_under_load_loses_nothing(ns):
    rounds = 20 if LONG else 3
    cfg = ns.config(kafka={"properties": FAST_GROUP})
    workers = [ns.start_worker(worker_cfg(ns, cfg)), ns.start_worker(worker_cfg(ns, cfg))]
    q = ns.start_query(cfg)
    # as fast as the stream can feed 20k events/s for the whole run (the kills need traffic to hit)
    rate = 20_000
    stream = EventStream(ns.topic, limit=int(rate * (rounds * 2.5 + 1)), seconds=rounds * 2.5 + 30,
                         rate=rate).start()
    killed = 0
    t0 = time.monotonic()
    for r in range(rounds):
        time.sleep(2.0)
        victim = workers[r % 2]
        victim.p.kill()  # SIGKILL: no commit, no leave-group, batch in hand abandoned
        victim.p.wait(10)
        victim.stopped = True
        killed += 1
        time.sleep(0.5)
        workers[r % 2] = ns.start_worker(worker_cfg(ns, cfg))
    produced = stream.stop()
    t_stream = time.monotonic() - t0
    took = wait_no_loss(q.url, stream.expected(), timeout=240 if LONG else 120)
    for w in workers:
        assert w.alive(), w.log()[-3000:]
    report("kill9_worker", rounds=rounds, workers_killed=killed, events_produced=produced,
           users=len(stream.expected()), lost=0, stream_seconds="%.1f" % t_stream,
           converged_after_stream_seconds="%.1f" % took)


# --------------------------------------------------------------------------------------------------
# Redis down


def test_redis_outage_loses_nothing_and_both_programs_recover(ns, private_redis):
    cfg = ns.config(user_status={"redis_address": private_redis.addr, "redis_io_timeout": "1s",
                                 "redis_connect_timeout": "500ms"})
    w = ns.start_worker(cfg)
    q = ns.start_query(cfg)
    stream = EventStream(ns.topic, limit=200_000, seconds=14, rate=10_000).start()
    time.sleep(3)
    before_outage = stream.produced
    private_redis.kill()  # SIGKILL; AOF with appendfsync always keeps every acknowledged write
    t_down = time.monotonic()

    # While Redis is down: the query answers code 100 quickly, the worker stays up and says so.
    r = api(q.url, "get_user_status", {"users": ["x-0"]}, timeout=10)
    assert r.status_code == 200 and r.json()["error"]["code"] == 100, r.text
    assert time.monotonic() - t_down < 5
    wait_until(lambda: requests.get(w.metrics_url + "/health", timeout=3).status_code == 503, timeout=15,
               what="worker /health to report Redis down")
    assert requests.get(q.url + "/health", timeout=5).status_code == 503
    time.sleep(max(0.0, 4 - (time.monotonic() - t_down)))
    assert w.alive() and q.alive()
    # a marker event produced while Redis is down: its arrival measures the worker's resume time
    marker_t = now_ms() - 1000
    ns.producer.event("active", "marker", marker_t)
    ns.producer.flush()
    outage = time.monotonic() - t_down

    private_redis.start()
    t_up = time.monotonic()
    wait_until(lambda: statuses(q.url, ["x-0"])[0].get("active") is not None, timeout=10,
               what="query to read from Redis again")
    query_recovery = time.monotonic() - t_up
    wait_until(lambda: statuses(q.url, ["marker"]) == [{"user": "marker", "active": marker_t // 1000}],
               timeout=10, interval=0.05, what="worker to resume writing")
    worker_resume = time.monotonic() - t_up
    assert worker_resume <= 5.0, worker_resume

    produced = stream.stop()
    expected = stream.expected()
    expected["marker"] = marker_t // 1000
    wait_no_loss(q.url, expected, timeout=90)
    assert requests.get(w.metrics_url + "/health", timeout=5).status_code == 200
    report("redis_outage", events_produced=produced, produced_before_outage=before_outage,
           outage_seconds="%.1f" % outage, lost=0, query_recovery_seconds="%.2f" % query_recovery,
           worker_resume_seconds="%.2f" % worker_resume)


# --------------------------------------------------------------------------------------------------
# hung Redis (SIGSTOP)


def test_frozen_redis_gives_timeouts_not_a_stuck_service(ns, private_redis):
    io_timeout = 1.0
    cfg = ns.config(user_status={"redis_address": private_redis.addr, "redis_io_timeout": "1s",
                                 "redis_connect_timeout": "500ms"}, query={"threads": 2})
    w = ns.start_worker(cfg)
    q = ns.start_query(cfg)
    ns.producer.event("active", "before", now_ms() - 5000)
    ns.producer.flush()
    wait_until(lambda: statuses(q.url, ["before"])[0].get("active"), what="first event applied")

    private_redis.freeze()
    try:
        t_freeze = time.monotonic()
        # several clients at once: each gets its own deadline, none waits for another
        times, answers = [], []

        def one():
            t = time.monotonic()
            r = api(q.url, "get_user_status", {"users": ["before"]}, timeout=30)
            times.append(time.monotonic() - t)
            answers.append(r.json())

        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(40)
        assert len(answers) == 4
        assert all(a == {"error": {"code": 100, "message": "internal server error"}} for a in answers), answers
        # each request: one round trip and one retry on a fresh connection, 2 io timeouts at most;
        # an HTTP thread serves its requests one after the other, and libmicrohttpd may give one
        # thread several of the 4 connections: bounded by all of them in a row
        assert max(times) <= len(threads) * 2 * io_timeout + 2.5, times
        t = time.monotonic()
        assert requests.get(q.url + "/health", timeout=30).status_code == 503
        health_s = time.monotonic() - t
        assert health_s <= 2 * io_timeout + 2.5
        # the worker does not hang either: it reports the failure and keeps retrying
        ns.producer.event("active", "during", now_ms() - 4000)
        ns.producer.flush()
        wait_until(lambda: requests.get(w.metrics_url + "/health", timeout=5).status_code == 503,
                   timeout=15, what="worker /health to report the frozen Redis")
        assert w.alive() and q.alive()
        frozen = time.monotonic() - t_freeze
    finally:
        private_redis.thaw()
    t_thaw = time.monotonic()
    wait_until(lambda: statuses(q.url, ["during"])[0].get("active"), timeout=10, interval=0.05,
               what="the event sent during the freeze to be applied")
    resume = time.monotonic() - t_thaw
    assert resume <= 5.0
    report("frozen_redis", frozen_seconds="%.1f" % frozen, get_answer_seconds_max="%.2f" % max(times),
           health_answer_seconds="%.2f" % health_s, resume_after_thaw_seconds="%.2f" % resume, lost=0)


# --------------------------------------------------------------------------------------------------
# Redis out of the owner's reach for longer than max.poll.interval.ms


def metric(proc, name):
    """The value of one unlabelled metric of a worker (None when absent)."""
    for line in requests.get(proc.metrics_url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_worker_stops_on_sigterm_after_its_topic_was_deleted(ns):
    """An operator deletes the events topic under a running worker (librdkafka 2.0 can then block
    for good while its handles are destroyed): SIGTERM still ends the worker, with status 0, after
    it committed what it had and left the group."""
    topic = ns.topic + "_gone"
    create_topics([topic], partitions=1)
    w = ns.start_worker(worker_cfg(ns, ns.config(kafka={"topic": topic, "properties": FAST_GROUP})))
    wait_until(lambda: metric(w, "userstatus_worker_assigned_partitions") == 1, timeout=30,
               what="the worker to own the partition")
    p = KafkaProducer(topic)
    t = now_ms() - 1_000
    p.event("active", "gone-topic", t)
    p.flush()
    q = ns.start_query(ns.config())
    wait_until(lambda: status(q.url, "gone-topic") == {"user": "gone-topic", "active": t // 1000},
               what="the event applied")
    delete_topics([topic])
    time.sleep(2)  # the worker's consumer learns that its partition is gone
    w.stop_ok()  # exit status 0 within the harness's stop timeout


def owner_behind_proxy(ns, redis_proxy, topic, partitions):
    """A topic of `partitions` partitions and a first worker that owns them all and reaches Redis
    through redis_proxy (so that the test can cut it off alone); max.poll.interval.ms is 10 s.
    Returns (the config of the test without the proxy, the owner)."""
    ns.create_topic(topic, partitions=partitions)
    props = dict(FAST_GROUP, **{"max.poll.interval.ms": "10000"})
    base = ns.config(kafka={"topic": topic, "properties": props},
                     user_status={"redis_io_timeout": "1s", "redis_connect_timeout": "500ms"})
    owner = ns.start_worker(worker_cfg(ns, deep_merge(base, {"user_status": {"redis_address": redis_proxy.addr}})))
    wait_until(lambda: metric(owner, "userstatus_worker_assigned_partitions") == partitions, timeout=30,
               what="the first worker to own every partition")
    return base, owner


def test_worker_cut_off_from_redis_never_undoes_newer_writes(ns, redis_proxy):
    """The owner of a partition cannot reach Redis for longer than max.poll.interval.ms (everything
    else can). Whatever the group does meanwhile (before the fix it evicted the stuck owner and the
    other worker applied the newer events), the owner must never write its old batch after the
    newer events: a stale delete would erase a newer status, a stale state overwrite a newer one."""
    # one partition: one owner, one idle member
    base, owner = owner_behind_proxy(ns, redis_proxy, ns.topic + "_one", 1)
    topic = base["kafka"]["topic"]
    other = ns.start_worker(worker_cfg(ns, base))
    wait_until(lambda: metric(other, "userstatus_worker_rebalances_total") >= 1, timeout=30,
               what="the second worker to join the group")
    assert metric(owner, "userstatus_worker_assigned_partitions") == 1
    q = ns.start_query(base)
    p = KafkaProducer(topic)
    t0 = now_ms() - 60_000
    p.event("active", "gone", t0)
    p.event("active", "moody", t0, state="old")
    p.flush()
    wait_until(lambda: statuses(q.url, ["gone", "moody"]) == [
        {"user": "gone", "active": t0 // 1000}, {"user": "moody", "active": t0 // 1000, "state": "old"}],
        what="the first events to be applied")

    redis_proxy.cut()
    p.event("delete", "gone")
    p.event("active", "moody", t0 + 1000, state="stale")
    p.event("active", "once", t0 + 1000)  # its only event: must not be lost by any rewind
    p.flush()
    wait_until(lambda: requests.get(owner.metrics_url + "/health", timeout=5).status_code == 503,
               timeout=15, what="the owner to report Redis out of reach")
    time.sleep(12)  # past max.poll.interval.ms
    p.event("active", "gone", t0 + 2000, state="back")
    p.event("active", "moody", t0 + 2000, state="new")
    p.flush()
    expected = [{"user": "gone", "active": (t0 + 2000) // 1000, "state": "back"},
                {"user": "moody", "active": (t0 + 2000) // 1000, "state": "new"},
                {"user": "once", "active": (t0 + 1000) // 1000}]
    try:  # whoever owns the partition while the first owner is cut off may apply them now
        wait_until(lambda: statuses(q.url, ["gone", "moody", "once"]) == expected, timeout=10)
    except AssertionError:
        pass
    redis_proxy.restore()
    wait_until(lambda: requests.get(owner.metrics_url + "/health", timeout=5).status_code == 200,
               timeout=20, what="the first worker to reach Redis again")
    wait_until(lambda: statuses(q.url, ["gone", "moody", "once"]) == expected, timeout=20,
               what="the newest events to be applied")
    time.sleep(5)  # a stale batch still retried by the first worker lands within its 2 s backoff
    assert statuses(q.url, ["gone", "moody", "once"]) == expected
    assert owner.alive() and other.alive()


def test_rebalance_while_the_owner_cannot_reach_redis_loses_nothing_and_undoes_nothing(ns, redis_proxy):
    """The owner of both partitions cannot reach Redis when a second worker joins: the owner must
    give one partition up without writing its stale events (the newcomer applies them, then newer
    ones), keep the other partition's events (rewound, applied once Redis is back), and never write
    its old batch over the newer events."""
    base, owner = owner_behind_proxy(ns, redis_proxy, ns.topic + "_two", 2)
    topic = base["kafka"]["topic"]
    q = ns.start_query(base)
    p = KafkaProducer(topic)
    t0 = now_ms() - 60_000
    moody = ["m-%d" % i for i in range(8)]  # several users: both partitions get some
    once = ["o-%d" % i for i in range(8)]
    for u in moody:
        p.event("active", u, t0, state="old")
    p.flush()
    assert {part for part, _, _ in p.delivered} == {0, 1}
    wait_until(lambda: all(s.get("state") == "old" for s in statuses(q.url, moody)),
               what="the first events to be applied")

    redis_proxy.cut()
    for u in moody:
        p.event("active", u, t0 + 1000, state="stale")
    for u in once:
        p.event("online", u, t0 + 1000)  # their only events
    p.flush()
    wait_until(lambda: requests.get(owner.metrics_url + "/health", timeout=5).status_code == 503,
               timeout=15, what="the owner to report Redis out of reach")
    other = ns.start_worker(worker_cfg(ns, base))
    wait_until(lambda: metric(other, "userstatus_worker_assigned_partitions") >= 1, timeout=40,
               what="the second worker to get a partition")
    for u in moody:
        p.event("active", u, t0 + 2000, state="new")
    p.flush()
    expected = ([{"user": u, "active": (t0 + 2000) // 1000, "state": "new"} for u in moody]
                + [{"user": u, "online": (t0 + 1000) // 1000} for u in once])
    time.sleep(8)  # the newcomer applies its partition's events meanwhile
    redis_proxy.restore()
    wait_until(lambda: requests.get(owner.metrics_url + "/health", timeout=5).status_code == 200,
               timeout=20, what="the first worker to reach Redis again")
    wait_until(lambda: statuses(q.url, moody + once) == expected, timeout=30,
               what="every newest event applied, none lost")
    time.sleep(5)  # a stale batch still retried by the first worker lands within its 2 s backoff
    assert statuses(q.url, moody + once) == expected
    assert owner.alive() and other.alive()


# --------------------------------------------------------------------------------------------------
# Kafka broker down while HTTP updates flow


def test_kafka_outage_every_acknowledged_update_is_visible(private_kafka, ns):
    # private_kafka first: set up before, torn down after the namespace, whose programs need it to stop
    topic = ns.topic
    cfg = ns.config(kafka={"brokers": private_kafka.addr, "produce_timeout": "3s",
                           "properties": {"reconnect.backoff.max.ms": "1000"}})
    w = ns.start_worker(cfg)
    q = ns.start_query(cfg)
    wait_until(lambda: topic in private_kafka.admin().list_topics(timeout=5).topics, timeout=30,
               what="the programs to create the topic on the private broker")
    results = []  # (user, monotonic time sent, monotonic time answered, "ok" | "error" | other)
    stop = threading.Event()

    def client(tag):
        i = 0
        while not stop.is_set() and i < 100_000:
            user = "k-%s-%d" % (tag, i)
            i += 1
            t = time.monotonic()
            try:
                r = api(q.url, "update_user_status", {"users": [user]}, timeout=20)
                body = r.json() if r.status_code == 200 else {"http": r.status_code}
            except requests.RequestException as e:
                body = {"exception": repr(e)}
            if body == {"result": {}}:
                kind = "ok"
            elif body.get("error", {}).get("code") == 100:
                kind = "error"
            else:
                kind = repr(body)
            results.append((user, t, time.monotonic(), kind))
            time.sleep(0.005)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in "ab"]
    for t in threads:
        t.start()
    time.sleep(3)
    t_stop = time.monotonic()
    private_kafka.stop()
    t_stopped = time.monotonic()
    time.sleep(4)
    t_start = time.monotonic()
    private_kafka.start()  # returns once the broker answers metadata requests
    t_up = time.monotonic()
    wait_until(lambda: any(k == "ok" and t0 > t_up for _, t0, _, k in results), timeout=60, interval=0.1,
               what="updates to succeed again after the broker restart")
    reconnect = min(t1 for _, t0, t1, k in results if k == "ok" and t0 > t_start) - t_start
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join(30)

    other = [r for r in results if r[3] not in ("ok", "error")]
    assert not other, other[:5]
    ok = [r for r in results if r[3] == "ok"]
    errors = [r for r in results if r[3] == "error"]
    # while the broker was down (from the end of its shutdown to the start of its restart) no
    # update may succeed
    during = [r for r in ok if r[1] > t_stopped and r[2] < t_start]
    assert not during, during[:5]
    assert errors, "no update failed: the outage was not observed"
    # every acknowledged update is in Redis (through the restarted broker and the worker)
    expect_users = [r[0] for r in ok]

    def all_visible():
        missing = 0
        for i in range(0, len(expect_users), 1000):
            missing += sum(1 for s in statuses(q.url, expect_users[i:i + 1000]) if "active" not in s)
        return missing == 0 or missing

    wait_until(lambda: all_visible() is True, timeout=90, what="every acknowledged update to be visible")
    assert w.alive() and q.alive()
    report("kafka_outage", updates_sent=len(results), acknowledged=len(ok), errors=len(errors), lost=0,
           false_success=0, broker_down_seconds="%.1f" % (t_start - t_stop),
           first_success_after_restart_began_seconds="%.2f" % reconnect)


# --------------------------------------------------------------------------------------------------
# rebalance under load


def test_rebalance_under_load_loses_nothing_and_stores_no_revoked_offsets(ns):
    cfg = ns.config(kafka={"properties": FAST_GROUP})
    all_workers = [ns.start_worker(worker_cfg(ns, cfg))]
    q = ns.start_query(cfg)
    stream = EventStream(ns.topic, limit=120_000, seconds=40, rate=15_000).start()
    changes = 0
    # add two workers, then remove them (SIGTERM: revoke, drain, commit), while events flow
    for _ in range(2):
        time.sleep(1.5)
        all_workers.append(ns.start_worker(worker_cfg(ns, cfg)))
        changes += 1
    for w in all_workers[1:]:
        time.sleep(1.5)
        w.stop_ok()
        changes += 1
    time.sleep(1.5)
    all_workers.append(ns.start_worker(worker_cfg(ns, cfg)))
    changes += 1
    produced = stream.stop()
    wait_no_loss(q.url, stream.expected(), timeout=120)

    # committed offsets: every partition fully consumed, none beyond the end of its log
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": KAFKA, "group.id": ns.group, "enable.auto.commit": False})
    try:
        parts = [TopicPartition(ns.topic, p) for p in range(4)]

        def all_committed():
            got = c.committed(parts, timeout=10)
            return all(tp.offset == c.get_watermark_offsets(tp, timeout=10)[1] for tp in got)

        wait_until(all_committed, timeout=30, what="committed offsets to reach the end of every partition")
    finally:
        c.close()
    refused = no_revoked_partition_stores(all_workers)
    assert refused == 0
    report("rebalance", events_produced=produced, membership_changes=changes, lost=0,
           offset_stores_for_revoked_partitions=refused)



# --------------------------------------------------------------------------------------------------
# shutdown without a broker


def test_sigterm_while_the_broker_is_down_exits_cleanly(private_kafka, ns):
    cfg = ns.config(kafka={"brokers": private_kafka.addr, "produce_timeout": "2s"})
    w = ns.start_worker(cfg)
    q = ns.start_query(cfg)
    for i in range(50):
        ns_events = {"users": ["z%d" % i]}
        assert api(q.url, "update_user_status", ns_events).json() == {"result": {}}
    wait_until(lambda: "active" in status(q.url, "z49"), what="the worker to apply the updates")
    private_kafka.stop()
    time.sleep(1)
    t0 = time.monotonic()
    w.stop_ok()  # exit 0 within STOP_TIMEOUT, not blocked on a commit or a LeaveGroup
    q.stop_ok()
    report("sigterm_without_broker", shutdown_seconds="%.1f" % (time.monotonic() - t0))


def test_sigterm_right_after_start_exits_cleanly(ns):
    """Stopping a worker while it is still joining the group (before its first rebalance) must not
    crash it: librdkafka 2.0 asserts when such a cooperative consumer is closed."""
    cfg = ns.config()
    for _ in range(5):
        w = ns.start_worker(cfg)  # returns as soon as /health answers: typically still joining
        t0 = time.monotonic()
        w.stop_ok()
        report("sigterm_while_joining", shutdown_seconds="%.1f" % (time.monotonic() - t0))
