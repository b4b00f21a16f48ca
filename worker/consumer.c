/* The worker's consumer loop: poll, decode, coalesce, write to Redis, then store offsets.
 *
 * At-least-once delivery, the librdkafka way
 * -------------------------------------------
 * Auto-commit is on but auto offset *store* is off: an offset becomes committable only when this
 * loop calls rd_kafka_offsets_store(), and it does so only after Redis acknowledged every write of
 * the batch and the dead-letter producer acknowledged every dead-lettered message of it. A batch is
 * everything the local queue holds (up to worker.batch_size messages), so when the batch is done
 * every message of every partition in it is done, and the stored offset (last offset + 1) never
 * skips an unfinished message. With status changes on, "done" also means that the status change
 * engine (worker/changes.c) published the batch's transitions, acknowledged, and recorded them in
 * its deadline index; between batches it fires the deadlines that passed.
 *
 * Partitions are only revoked inside rd_kafka_consumer_poll(), from the rebalance callback. The
 * callback first finishes the batch in hand (so its offsets are stored while the partitions are
 * still ours), commits synchronously, and only then gives the partitions up. When partitions are
 * *lost* (the group evicted us), the batch is dropped without storing anything: the new owner reads
 * those messages again from the last commit.
 *
 * Never write for a partition that may have moved
 * -----------------------------------------------
 * Redis, dead-letter and status change failures (the engine's index, store reads and change
 * messages: worker/changes.c) are retried with exponential backoff, but a batch is retried for
 * at most half of max.poll.interval.ms (the "write budget"), counted from the poll that ended it.
 * The group evicts a member that has not polled for max.poll.interval.ms and hands its partitions
 * to another; a stale batch written after the new owner's newer writes would undo them (DEL and
 * state are last-writer-wins; only times are max-merged). So:
 *   - no write attempt starts once the budget is spent, and none when librdkafka reports the
 *     assignment lost (rd_kafka_assignment_lost);
 *   - a batch whose budget ran out is *rewound*: dropped unstored, and every partition of it that
 *     is still ours is seeked back to the batch's first offset of that partition; the loop then
 *     polls again (keeping the membership alive, serving rebalances) and re-consumes the same
 *     messages into a new batch, which gets a new budget.
 * An event is therefore never dropped: while Redis is down the worker keeps its partitions and
 * cycles through rewinds; offsets do not move until Redis is back. One write attempt must fit in
 * the other half of max.poll.interval.ms (a warning at start says when the Redis timeouts make
 * that doubtful). What this cannot fence: a worker cut off from the *brokers* (not Redis) loses
 * its partitions after session.timeout.ms while it may still be writing; see docs/choices.md.
 *
 * Dead-letter delivery reports are asynchronous and may outlive their batch (rewound, or dropped
 * with its partitions): each carries the batch generation (common/acks.h), and a report of an
 * earlier batch is ignored, never credited to the entry of the current batch in the same slot.
 *
 * Only a write Redis refuses because of its own key (WRONGTYPE: something else wrote it) is not
 * retried: that user's messages are dead-lettered with reason redis_error, and the batch goes on. */
#include "worker.h"

#include "acks.h"
#include "admin_http.h"
#include "changes_engine.h"
#include "clock.h"
#include "coalesce.h"
#include "event.h"
#include "fetch_wake.h"
#include "kafka.h"
#include "log.h"
#include "metrics.h"
#include "redis_store.h"

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define POLL_IDLE_MS 100          /* Poll timeout while no batch is in hand. */
#define RETRY_BACKOFF_MIN_MS 100  /* First wait after a Redis or DLQ failure. */
#define RETRY_BACKOFF_MAX_MS 2000 /* Longest wait between retries: bounds how long after Redis
                                   * comes back the worker resumes (design: within 5 s). */
#define DLQ_FLUSH_SLICE_MS 500    /* rd_kafka_flush() slice while waiting for DLQ acks. */
/* A batch is retried for at most max.poll.interval.ms / WRITE_BUDGET_DIVISOR (see the top). */
#define WRITE_BUDGET_DIVISOR 2
#define MAX_POLL_INTERVAL_DEFAULT_MS 300000 /* librdkafka's default max.poll.interval.ms. */
/* Rewinds are asynchronous: the seek at once sets a barrier that drops messages fetched earlier. */
#define SEEK_TIMEOUT_MS 0
#define DLQ_MESSAGE_TIMEOUT_MS 30000
#define TOPIC_CREATE_TIMEOUT_MS 10000
#define CLOSE_TIMEOUT_MS 5000 /* Longest wait to leave the group cleanly at shutdown. */
#define DESTROY_TIMEOUT_MS 10000 /* Longest wait for librdkafka's handles to be destroyed. */
/* Requests to an unreachable broker fail after this long (librdkafka: 60 s). It bounds how long a
 * worker whose brokers are gone takes to exit: destroying the consumer waits for its requests. */
#define SOCKET_TIMEOUT_MS "10000"
#define DETAIL_MAX 160
/* The prefetch budget (measurements: docs/choices.md, "Worker memory"). librdkafka keeps each
 * queued message in a 296-byte operation next to its share of the fetch buffer, ~370 bytes per
 * event in all, and its defaults (100 000 messages, 64 MiB, fetches of 50 MiB) let a worker with
 * a backlog hold 50 MB. The fetch waker (fetch_wake.c) keeps the fetchers going with a small
 * queue, so these bound it instead: */
#define QUEUED_MIN_MESSAGES "5000" /* Messages prefetched before fetching pauses. */
#define QUEUED_MAX_KBYTES "4096"   /* Kilobytes of payload prefetched (large events). */
#define FETCH_MAX_BYTES "1048576"  /* One fetch response (at least message.max.bytes). */
#define PARTITION_FETCH_MAX_BYTES "65536" /* One partition's part of it. */

/* A message of the batch that goes to the dead-letter topic. Entry i's delivery state is entry
 * i of worker.dlq_acks. */
typedef struct dlq_entry {
    size_t msg;         /* Index into worker.msgs. */
    const char *reason; /* Header userstatus-error: us_event_error_name(), or "redis_error". */
    char detail[DETAIL_MAX];
} dlq_entry;

typedef struct worker {
    const us_config *cfg;
    volatile sig_atomic_t *stop;
    rd_kafka_t *consumer;
    rd_kafka_t *dlq;
    us_redis *redis;
    us_changes *changes; /* Status changes (worker/changes.c); NULL when off. */
    us_fetch_wake *fetch_wake; /* Keeps librdkafka fetching with a small queue (fetch_wake.c). */
    us_event_decoder decoder;
    us_batch batch;

    rd_kafka_message_t **msgs; /* The batch's messages, kept until their offsets are stored. */
    size_t nmsgs;
    int64_t *event_ms;  /* Resolved time of each valid event of the batch (event age metric). */
    size_t nevents;
    dlq_entry *dlq_entries;
    size_t ndlq;
    /* Delivery states of dlq_entries, tagged with the batch generation: a report arriving after
     * its batch was dropped (rewound, partitions lost) is ignored, never credited to the entry
     * that reuses the slot. Reports run on this thread (rd_kafka_poll/flush of w->dlq). */
    us_acks dlq_acks;
    uint8_t *refused; /* Per user of the batch: Redis refused its writes (us_redis_apply). */

    int assigned_once;       /* The group has completed a rebalance with us in it. */
    int64_t write_budget_ms; /* Longest time a batch is retried before it is rewound. */

    /* Redis health, written by the consumer loop, read by /health on an HTTP thread. */
    _Atomic int redis_healthy;
    pthread_mutex_t redis_error_lock; /* Guards redis_error. */
    char redis_error[256];

    us_metric *m_applied, *m_dead, *m_batches, *m_users, *m_redis_errors, *m_dlq_errors,
        *m_rebalances, *m_partitions, *m_kafka_errors, *m_last_batch_ms, *m_rewinds, *m_event_age,
        *m_lag;
    /* Dead-lettered events by reason: the decoder's codes, then redis_error (DLQ_REDIS_ERROR). */
    us_metric *m_dlq_reason[US_EVENT_ERR_COUNT + 1];
} worker;

#define DLQ_REDIS_ERROR US_EVENT_ERR_COUNT /* Index of reason "redis_error" in m_dlq_reason. */

/* The DLQ reason of index e of m_dlq_reason. */
static const char *dlq_reason_name(int e)
{
    return e == DLQ_REDIS_ERROR ? "redis_error" : us_event_error_name((us_event_error)e);
}

/* Upper bounds of the event-age buckets: from "live" to "a consumer hours behind". Seconds. */
static const double EVENT_AGE_BOUNDS[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,   2.5,
                                          5,    10,    30,   60,  300,  900, 3600};

/* Sleeps for the current backoff, then doubles it (bounded). Wakes early on shutdown. */
static void backoff(worker *w, int64_t *delay_ms)
{
    for (int64_t slept = 0; slept < *delay_ms && !*w->stop; slept += 50) us_sleep_ms(50);
    *delay_ms = *delay_ms * 2 > RETRY_BACKOFF_MAX_MS ? RETRY_BACKOFF_MAX_MS : *delay_ms * 2;
}

/* How waiting for a batch's acknowledgements ended. */
typedef enum settle_result {
    SETTLED,        /* Every write acknowledged. */
    SETTLE_STOPPED, /* Shutdown requested. */
    SETTLE_GAVE_UP, /* Write budget spent, or the partitions may no longer be ours. */
} settle_result;

/* Whether another attempt may start before deadline (monotonic ms): not when the group may have
 * taken our partitions away. Logs why not. */
static int may_write(worker *w, int64_t deadline, const char *what)
{
    if (rd_kafka_assignment_lost(w->consumer)) {
        us_warn("%s: the group took our partitions away; not writing the batch", what);
        return 0;
    }
    if (us_monotonic_ms() >= deadline) {
        us_warn("%s: still failing after the write budget of %lld ms (half of "
                "max.poll.interval.ms); rewinding the batch to consume it again",
                what, (long long)w->write_budget_ms);
        return 0;
    }
    return 1;
}

static void dlq_delivered(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    worker *w = opaque;
    if (m->err) {
        us_error("dead-letter topic '%s': delivery failed: %s (will retry)",
                 w->cfg->kafka.dlq_topic, rd_kafka_err2str(m->err));
        us_metric_add(w->m_dlq_errors, 1);
    }
    if (us_acks_report(&w->dlq_acks, m->_private, !m->err) != 0)
        us_debug("dead-letter report for a message of a dropped batch (%s); ignored",
                 m->err ? rd_kafka_err2str(m->err) : "delivered");
}

/* Produces dead-letter entry i of the batch: original key, value and headers, plus ours saying
 * why. */
static int dlq_produce(worker *w, size_t i)
{
    const dlq_entry *e = &w->dlq_entries[i];
    const rd_kafka_message_t *m = w->msgs[e->msg];
    rd_kafka_headers_t *orig = NULL, *hdrs;
    if (rd_kafka_message_headers(m, &orig) == RD_KAFKA_RESP_ERR_NO_ERROR)
        hdrs = rd_kafka_headers_copy(orig);
    else
        hdrs = rd_kafka_headers_new(5);
    char partition[16], offset[24];
    snprintf(partition, sizeof(partition), "%d", (int)m->partition);
    snprintf(offset, sizeof(offset), "%lld", (long long)m->offset);
    rd_kafka_header_add(hdrs, "userstatus-error", -1, e->reason, -1);
    rd_kafka_header_add(hdrs, "userstatus-error-detail", -1, e->detail, -1);
    rd_kafka_header_add(hdrs, "userstatus-original-topic", -1, rd_kafka_topic_name(m->rkt), -1);
    rd_kafka_header_add(hdrs, "userstatus-original-partition", -1, partition, -1);
    rd_kafka_header_add(hdrs, "userstatus-original-offset", -1, offset, -1);

    void *token = us_acks_send(&w->dlq_acks, i);
    rd_kafka_resp_err_t err = rd_kafka_producev(
        w->dlq, RD_KAFKA_V_TOPIC(w->cfg->kafka.dlq_topic), RD_KAFKA_V_KEY(m->key, m->key_len),
        RD_KAFKA_V_VALUE(m->payload, m->len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_OPAQUE(token), RD_KAFKA_V_END);
    if (err) {
        rd_kafka_headers_destroy(hdrs);
        us_acks_report(&w->dlq_acks, token, 0);
        us_error("dead-letter topic '%s': cannot queue message: %s", w->cfg->kafka.dlq_topic,
                 rd_kafka_err2str(err));
        return -1;
    }
    return 0;
}

/* Waits until every dead-lettered message of the batch is acknowledged, re-producing failed ones,
 * until deadline (monotonic ms). */
static settle_result dlq_settle(worker *w, int64_t deadline)
{
    int64_t delay = RETRY_BACKOFF_MIN_MS;
    for (;;) {
        rd_kafka_flush(w->dlq, DLQ_FLUSH_SLICE_MS);
        size_t pending, failed;
        us_acks_count(&w->dlq_acks, &pending, &failed);
        if (pending == 0 && failed == 0) return SETTLED;
        if (*w->stop) return SETTLE_STOPPED;
        if (!may_write(w, deadline, "dead-letter delivery")) return SETTLE_GAVE_UP;
        if (pending == 0) {
            backoff(w, &delay);
            for (size_t i = 0; i < w->ndlq; i++)
                if (us_acks_state(&w->dlq_acks, i) == US_ACK_FAILED) dlq_produce(w, i);
        }
    }
}

/* Dead-letters every message of the users whose writes Redis refused (reason "redis_error"): one
 * bad key must not hold the partition. Messages already dead-lettered as malformed are skipped. */
static void dead_letter_refused(worker *w, int nrefused, const char *why)
{
    size_t before = w->ndlq;
    for (size_t i = 0; i < w->nmsgs; i++) {
        const rd_kafka_message_t *m = w->msgs[i];
        us_event ev;
        char detail[DETAIL_MAX];
        if (us_event_decode(&w->decoder, m->payload, m->len, m->key, m->key_len, &ev, detail,
                            sizeof(detail)) != US_EVENT_OK)
            continue;
        long u = us_batch_find(&w->batch, ev.user, ev.user_len);
        if (u < 0 || !w->refused[u]) continue;
        size_t k = us_acks_add(&w->dlq_acks);
        dlq_entry *e = &w->dlq_entries[w->ndlq++];
        e->msg = i;
        e->reason = dlq_reason_name(DLQ_REDIS_ERROR);
        snprintf(e->detail, sizeof(e->detail), "%.*s", DETAIL_MAX - 1, why);
        dlq_produce(w, k);
    }
    us_warn("redis refused the writes of %d user(s): %s; dead-lettered their %zu message(s)",
            nrefused, why, w->ndlq - before);
}

/* Writes the batch to Redis, retrying until success or deadline (monotonic ms). Users whose
 * writes Redis refuses are dead-lettered instead (their acknowledgements are then settled like
 * the others'). */
static settle_result redis_settle(worker *w, int64_t deadline)
{
    int64_t delay = RETRY_BACKOFF_MIN_MS;
    char err[256];
    int nrefused;
    for (;;) {
        if (!may_write(w, deadline, "redis write")) return SETTLE_GAVE_UP;
        nrefused = us_redis_apply(w->redis, w->batch.updates, w->batch.count, w->refused, err,
                                  sizeof(err));
        if (nrefused >= 0) break;
        us_metric_add(w->m_redis_errors, 1);
        pthread_mutex_lock(&w->redis_error_lock);
        snprintf(w->redis_error, sizeof(w->redis_error), "%s", err);
        pthread_mutex_unlock(&w->redis_error_lock);
        atomic_store(&w->redis_healthy, 0);
        us_error("redis write of %zu users failed: %s; retrying in %lld ms (offsets held)",
                 w->batch.count, err, (long long)delay);
        if (*w->stop) return SETTLE_STOPPED;
        backoff(w, &delay);
        if (*w->stop) return SETTLE_STOPPED;
    }
    if (!atomic_load(&w->redis_healthy)) us_info("redis writes succeed again");
    atomic_store(&w->redis_healthy, 1);
    if (nrefused > 0) dead_letter_refused(w, nrefused, err);
    return SETTLED;
}

typedef struct retry_budget {
    worker *w;
    int64_t deadline;
} retry_budget;

static int changes_may_retry(void *arg, const char *what)
{
    retry_budget *b = arg;
    return may_write(b->w, b->deadline, what);
}

/* The batch's status changes, within the same write budget as its Redis writes. */
static settle_result changes_settle(worker *w, int64_t deadline)
{
    retry_budget b = {w, deadline};
    int rc = us_changes_settle(w->changes, w->redis, changes_may_retry, &b);
    return rc == 0 ? SETTLED : rc > 0 ? SETTLE_GAVE_UP : SETTLE_STOPPED;
}

static void batch_release(worker *w)
{
    us_batch_reset(&w->batch); /* First: it reads user ids that live in the messages. */
    us_changes_reset(w->changes); /* So does this. */
    for (size_t i = 0; i < w->nmsgs; i++) rd_kafka_message_destroy(w->msgs[i]);
    w->nmsgs = 0;
    w->nevents = 0;
    w->ndlq = 0;
    us_acks_reset(&w->dlq_acks); /* Reports still outstanding for this batch become stale. */
}

/* Stores last offset + 1 of every partition in the batch. */
static void store_offsets(worker *w)
{
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(16);
    for (size_t i = 0; i < w->nmsgs; i++) {
        const rd_kafka_message_t *m = w->msgs[i];
        rd_kafka_topic_partition_t *p = rd_kafka_topic_partition_list_find(
            list, rd_kafka_topic_name(m->rkt), m->partition);
        if (!p) p = rd_kafka_topic_partition_list_add(list, rd_kafka_topic_name(m->rkt),
                                                      m->partition);
        if (m->offset + 1 > p->offset) p->offset = m->offset + 1;
    }
    rd_kafka_resp_err_t err = rd_kafka_offsets_store(w->consumer, list);
    if (err) us_warn("storing offsets: %s", rd_kafka_err2str(err));
    for (int i = 0; i < list->cnt; i++)
        if (list->elems[i].err)
            us_warn("storing offset %lld of %s[%d]: %s (partition no longer ours?)",
                    (long long)list->elems[i].offset, list->elems[i].topic,
                    (int)list->elems[i].partition, rd_kafka_err2str(list->elems[i].err));
    rd_kafka_topic_partition_list_destroy(list);
}

/* The first offset of each partition in the batch (offset field), for rewinding. */
static rd_kafka_topic_partition_list_t *batch_first_offsets(const worker *w)
{
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(16);
    for (size_t i = 0; i < w->nmsgs; i++) {
        const rd_kafka_message_t *m = w->msgs[i];
        rd_kafka_topic_partition_t *p = rd_kafka_topic_partition_list_find(
            list, rd_kafka_topic_name(m->rkt), m->partition);
        if (!p) {
            p = rd_kafka_topic_partition_list_add(list, rd_kafka_topic_name(m->rkt), m->partition);
            p->offset = m->offset;
        } else if (m->offset < p->offset) {
            p->offset = m->offset;
        }
    }
    return list;
}

/* Drops the batch unstored and seeks each of its partitions that stays ours (assigned, not lost,
 * not in revoking) back to the batch's first offset there, so that the next polls deliver the same
 * messages again. revoking: the partitions being given up right now (NULL: none). */
static void batch_rewind(worker *w, const rd_kafka_topic_partition_list_t *revoking)
{
    rd_kafka_topic_partition_list_t *first = batch_first_offsets(w), *assigned = NULL;
    rd_kafka_topic_partition_list_t *seek = rd_kafka_topic_partition_list_new(first->cnt);
    int lost = rd_kafka_assignment_lost(w->consumer);
    if (!lost && rd_kafka_assignment(w->consumer, &assigned) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        for (int i = 0; i < first->cnt; i++) {
            const rd_kafka_topic_partition_t *p = &first->elems[i];
            if (!rd_kafka_topic_partition_list_find(assigned, p->topic, p->partition)) continue;
            if (revoking && rd_kafka_topic_partition_list_find(
                                (rd_kafka_topic_partition_list_t *)revoking, p->topic, p->partition))
                continue;
            rd_kafka_topic_partition_list_add(seek, p->topic, p->partition)->offset = p->offset;
        }
    }
    if (assigned) rd_kafka_topic_partition_list_destroy(assigned);
    us_warn("dropping a batch of %zu messages unwritten and unstored; %d of its %d partition(s) "
            "rewound to consume it again%s",
            w->nmsgs, seek->cnt, first->cnt,
            lost ? " (none: the group took our partitions away)" : "");
    if (seek->cnt > 0) {
        rd_kafka_error_t *error = rd_kafka_seek_partitions(w->consumer, seek, SEEK_TIMEOUT_MS);
        if (error) {
            /* Not expected for assigned partitions. Without the seek the loop would go on past
             * unwritten messages and store offsets over them: stop instead; the messages are
             * consumed again by whoever owns the partitions next. */
            us_error("rewinding %d partition(s) failed: %s; stopping so that no event is skipped",
                     seek->cnt, rd_kafka_error_string(error));
            rd_kafka_error_destroy(error);
            *w->stop = 1;
        } else {
            for (int i = 0; i < seek->cnt; i++)
                /* An asynchronous seek reports "in progress": queued, the barrier is set. */
                if (seek->elems[i].err && seek->elems[i].err != RD_KAFKA_RESP_ERR__IN_PROGRESS) {
                    us_error("rewinding %s[%d] to %lld failed: %s; stopping so that no event is "
                             "skipped",
                             seek->elems[i].topic, (int)seek->elems[i].partition,
                             (long long)seek->elems[i].offset,
                             rd_kafka_err2str(seek->elems[i].err));
                    *w->stop = 1;
                }
        }
    }
    us_metric_add(w->m_rewinds, 1);
    rd_kafka_topic_partition_list_destroy(seek);
    rd_kafka_topic_partition_list_destroy(first);
    batch_release(w);
}

/* Finishes the batch in hand: DLQ acks, Redis acks, then offsets, within the write budget. On
 * shutdown before both acks arrived, nothing is stored and the messages will be consumed again;
 * when the budget runs out, the batch is rewound (see the top). revoking: the partitions the
 * rebalance callback is giving up (NULL outside it). Returns 1 when the batch was written (or
 * there was none), 0 when it was dropped or rewound. */
static int batch_finish(worker *w, const rd_kafka_topic_partition_list_t *revoking)
{
    if (w->nmsgs == 0) return 1;
    int64_t started = us_monotonic_ms(), deadline = started + w->write_budget_ms;
    settle_result r = dlq_settle(w, deadline);
    if (r == SETTLED) r = redis_settle(w, deadline);
    if (r == SETTLED) r = dlq_settle(w, deadline); /* Users whose writes Redis refused. */
    /* The batch's status changes: produced and acknowledged, and the deadline index written,
     * before its offsets are stored (retried within the same write budget). */
    if (r == SETTLED) r = changes_settle(w, deadline);
    if (r == SETTLE_STOPPED) {
        us_warn("shutting down with a batch of %zu messages not fully written; their offsets are "
                "not stored, so they will be consumed again",
                w->nmsgs);
        batch_release(w);
        return 0;
    }
    if (r == SETTLE_GAVE_UP) {
        batch_rewind(w, revoking);
        return 0;
    }
    store_offsets(w);
    int64_t now = us_now_ms();
    for (size_t i = 0; i < w->nevents; i++)
        us_metric_observe(w->m_event_age, (double)(now - w->event_ms[i]) / 1000.0);
    for (size_t i = 0; i < w->ndlq; i++)
        for (int e = US_EVENT_OK + 1; e <= DLQ_REDIS_ERROR; e++)
            if (strcmp(w->dlq_entries[i].reason, dlq_reason_name(e)) == 0) {
                us_metric_add(w->m_dlq_reason[e], 1);
                break;
            }
    us_metric_add(w->m_applied, w->nmsgs - w->ndlq);
    us_metric_add(w->m_dead, w->ndlq);
    us_metric_add(w->m_users, w->batch.count);
    us_metric_add(w->m_batches, 1);
    us_metric_set(w->m_last_batch_ms, us_monotonic_ms() - started);
    us_debug("batch done: %zu messages, %zu users, %zu dead-lettered", w->nmsgs, w->batch.count,
             w->ndlq);
    batch_release(w);
    return 1;
}

/* Adds one consumed message to the batch (the batch takes ownership of m). */
static void batch_take(worker *w, rd_kafka_message_t *m)
{
    size_t idx = w->nmsgs;
    w->msgs[w->nmsgs++] = m;

    us_event ev;
    char detail[DETAIL_MAX];
    us_event_error err = us_event_decode(&w->decoder, m->payload, m->len, m->key, m->key_len, &ev,
                                         detail, sizeof(detail));
    if (err == US_EVENT_OK) {
        int64_t now = us_now_ms(), t;
        if (ev.has_time) {
            t = ev.time_ms;
        } else {
            t = rd_kafka_message_timestamp(m, NULL);
            if (t < 0) t = now;
        }
        if (t > now + w->cfg->user_status.max_clock_skew_ms) t = now;
        us_batch_add(&w->batch, &ev, t / 1000); /* Cannot fail: users <= messages <= capacity. */
        w->event_ms[w->nevents++] = t;
        us_changes_add(w->changes, m, &ev, t);
        return;
    }
    us_changes_add(w->changes, m, NULL, 0); /* Its position still counts. */
    size_t i = us_acks_add(&w->dlq_acks);
    dlq_entry *e = &w->dlq_entries[w->ndlq++];
    e->msg = idx;
    e->reason = us_event_error_name(err);
    snprintf(e->detail, sizeof(e->detail), "%s", detail);
    us_warn("dead-lettering %s[%d]@%lld: %s: %s", rd_kafka_topic_name(m->rkt), (int)m->partition,
            (long long)m->offset, us_event_error_name(err), detail);
    dlq_produce(w, i);
}

static void rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                      rd_kafka_topic_partition_list_t *parts, void *opaque);

/* Commits the stored offsets: synchronously while running (a revoked partition's next owner then
 * starts exactly after our last write), asynchronously once shutting down, where a synchronous
 * commit to an unreachable broker would block the exit; the close that follows still sends it. */
static void commit_offsets(worker *w)
{
    rd_kafka_resp_err_t err = rd_kafka_commit(w->consumer, NULL, *w->stop ? 1 : 0);
    if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
        us_warn("committing offsets failed: %s (they are committed again later; at worst some "
                "events are applied twice, which is harmless)",
                rd_kafka_err2str(err));
}

/* Leaves the group (revoking through the rebalance callback, committing, LeaveGroup), bounded by
 * CLOSE_TIMEOUT_MS so that a worker whose broker is gone still exits. Returns 1 when closed.
 *
 * librdkafka before 2.2.1 crashes (assertion in the sticky assignor, librdkafka issue #4312) when
 * a cooperative-sticky consumer is closed before its first rebalance completed. So a worker asked
 * to stop that early first waits (bounded) for that rebalance; if it never comes, the consumer is
 * not closed at all (the caller then exits without destroying it). Messages polled meanwhile are
 * dropped unstored: they are consumed again by whoever owns their partition next. */
static int close_consumer(worker *w)
{
    int64_t deadline = us_monotonic_ms() + CLOSE_TIMEOUT_MS;
    while (!w->assigned_once && us_monotonic_ms() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(w->consumer, 100);
        if (m) rd_kafka_message_destroy(m);
    }
    if (!w->assigned_once) {
        us_warn("stopping before the group's first rebalance completed; leaving without a clean "
                "close (librdkafka 2.0 cannot close a cooperative consumer at this point)");
        return 0;
    }
    rd_kafka_queue_t *q = rd_kafka_queue_new(w->consumer);
    rd_kafka_error_t *error = rd_kafka_consumer_close_queue(w->consumer, q);
    if (error) {
        us_warn("closing the consumer: %s", rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    }
    deadline = us_monotonic_ms() + CLOSE_TIMEOUT_MS;
    while (!rd_kafka_consumer_closed(w->consumer) && us_monotonic_ms() < deadline) {
        rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 100);
        if (!ev) continue;
        if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_REBALANCE)
            rebalance(w->consumer, rd_kafka_event_error(ev),
                      (rd_kafka_topic_partition_list_t *)rd_kafka_event_topic_partition_list(ev), w);
        rd_kafka_event_destroy(ev);
    }
    rd_kafka_queue_destroy(q);
    int closed = rd_kafka_consumer_closed(w->consumer);
    if (!closed)
        us_warn("could not leave the group within %d ms (brokers unreachable?); exiting anyway: "
                "uncommitted events will be consumed again by the next owner",
                CLOSE_TIMEOUT_MS);
    return closed;
}

/* Bounds the destruction of librdkafka's handles at exit. librdkafka 2.0 can block for good in
 * rd_kafka_destroy, joining a broker thread, when the consumed topic was deleted under the consumer
 * (seen at shutdown right after a topic deletion). By then the group is left and every offset of
 * ours committed, so when destroying takes longer than DESTROY_TIMEOUT_MS the process ends (with
 * the status it was going to exit with) instead of ignoring SIGTERM until it is killed. */
typedef struct exit_watchdog {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    int status; /* The exit status if it has to end the process. */
    pthread_t thread;
    int started;
} exit_watchdog;

static void *exit_watchdog_main(void *arg)
{
    exit_watchdog *wd = arg;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += DESTROY_TIMEOUT_MS / 1000;
    pthread_mutex_lock(&wd->mu);
    int rc = 0;
    while (!wd->done && rc == 0) rc = pthread_cond_timedwait(&wd->cv, &wd->mu, &until);
    int done = wd->done;
    pthread_mutex_unlock(&wd->mu);
    if (!done) {
        us_warn("librdkafka did not finish shutting down within %d ms; exiting anyway%s",
                DESTROY_TIMEOUT_MS,
                wd->status == 0 ? " (offsets are committed and the group is left)" : "");
        _exit(wd->status);
    }
    return NULL;
}

static void exit_watchdog_start(exit_watchdog *wd, int status)
{
    pthread_mutex_init(&wd->mu, NULL);
    pthread_cond_init(&wd->cv, NULL);
    wd->done = 0;
    wd->status = status;
    wd->started = pthread_create(&wd->thread, NULL, exit_watchdog_main, wd) == 0;
}

static void exit_watchdog_stop(exit_watchdog *wd)
{
    pthread_mutex_lock(&wd->mu);
    wd->done = 1;
    pthread_cond_signal(&wd->cv);
    pthread_mutex_unlock(&wd->mu);
    if (wd->started) pthread_join(wd->thread, NULL);
    pthread_cond_destroy(&wd->cv);
    pthread_mutex_destroy(&wd->mu);
}

static void rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                      rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    worker *w = opaque;
    int cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    us_metric_add(w->m_rebalances, 1);
    rd_kafka_error_t *error = NULL;
    rd_kafka_resp_err_t ret = RD_KAFKA_RESP_ERR_NO_ERROR;

    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        us_info("assigned %d partition(s)", parts->cnt);
        w->assigned_once = 1;
        us_changes_assign(w->changes, parts);
        if (cooperative)
            error = rd_kafka_incremental_assign(rk, parts);
        else
            ret = rd_kafka_assign(rk, parts);
    } else {
        if (rd_kafka_assignment_lost(rk)) {
            us_warn("lost %d partition(s); dropping the batch in hand (%zu messages) without "
                    "storing offsets: the new owner consumes them again",
                    parts->cnt, w->nmsgs);
            batch_release(w);
        } else {
            int drained = batch_finish(w, parts);
            commit_offsets(w);
            if (drained)
                us_info("revoked %d partition(s) after draining in-flight writes", parts->cnt);
            else
                us_warn("revoked %d partition(s) with the batch in hand unwritten: the next owner "
                        "consumes their events again from the last commit",
                        parts->cnt);
        }
        us_changes_revoke(w->changes, parts);
        if (cooperative)
            error = rd_kafka_incremental_unassign(rk, parts);
        else
            ret = rd_kafka_assign(rk, NULL);
    }
    if (error) {
        us_error("rebalance: %s", rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    } else if (ret) {
        us_error("rebalance: %s", rd_kafka_err2str(ret));
    }
    rd_kafka_topic_partition_list_t *assigned = NULL;
    if (rd_kafka_assignment(rk, &assigned) == RD_KAFKA_RESP_ERR_NO_ERROR && assigned) {
        us_metric_set(w->m_partitions, assigned->cnt);
        rd_kafka_topic_partition_list_destroy(assigned);
    }
}

static int health(void *arg, char *msg, size_t msglen)
{
    worker *w = arg;
    if (!atomic_load(&w->redis_healthy)) {
        pthread_mutex_lock(&w->redis_error_lock);
        snprintf(msg, msglen, "redis: %s", w->redis_error);
        pthread_mutex_unlock(&w->redis_error_lock);
        return 0;
    }
    if (!us_changes_healthy(w->changes, msg, msglen)) return 0;
    snprintf(msg, msglen, "consuming");
    return 1;
}

/* Samples userstatus_worker_consumer_lag at scrape time, from the HTTP thread: librdkafka's
 * assignment, positions and cached watermarks are safe to read from any thread. */
static void collect_lag(us_metric_sink *sink, void *arg)
{
    worker *w = arg;
    if (!w->consumer) return;
    rd_kafka_topic_partition_list_t *parts = NULL;
    if (rd_kafka_assignment(w->consumer, &parts) != RD_KAFKA_RESP_ERR_NO_ERROR) return;
    rd_kafka_position(w->consumer, parts);
    for (int i = 0; i < parts->cnt; i++) {
        const rd_kafka_topic_partition_t *p = &parts->elems[i];
        int64_t low, high;
        if (rd_kafka_get_watermark_offsets(w->consumer, p->topic, p->partition, &low, &high) !=
                RD_KAFKA_RESP_ERR_NO_ERROR ||
            high < 0)
            continue;
        int64_t pos = p->offset >= 0 ? p->offset : low; /* No position yet: from the start. */
        char labels[64];
        snprintf(labels, sizeof(labels), "partition=\"%d\"", (int)p->partition);
        us_metric_sink_sample(sink, labels, (double)(high > pos ? high - pos : 0));
    }
    rd_kafka_topic_partition_list_destroy(parts);
}

static void register_metrics(worker *w)
{
    w->m_applied = us_metric_counter("userstatus_worker_events_total{result=\"applied\"}",
                                     "Events consumed, by outcome.");
    w->m_dead = us_metric_counter("userstatus_worker_events_total{result=\"dead_lettered\"}",
                                  "Events consumed, by outcome.");
    w->m_batches = us_metric_counter("userstatus_worker_batches_total",
                                     "Batches written to Redis with offsets stored.");
    w->m_users = us_metric_counter("userstatus_worker_user_writes_total",
                                   "Coalesced per-user writes sent to Redis.");
    w->m_redis_errors = us_metric_counter("userstatus_worker_redis_errors_total",
                                          "Failed Redis batch writes (each retried).");
    w->m_dlq_errors = us_metric_counter("userstatus_worker_dlq_errors_total",
                                        "Failed dead-letter deliveries (each retried).");
    w->m_kafka_errors = us_metric_counter("userstatus_worker_kafka_errors_total",
                                          "Errors reported by the Kafka consumer.");
    w->m_rebalances = us_metric_counter("userstatus_worker_rebalances_total",
                                        "Rebalance callbacks served.");
    w->m_partitions = us_metric_gauge("userstatus_worker_assigned_partitions",
                                      "Partitions currently assigned to this worker.");
    w->m_rewinds = us_metric_counter("userstatus_worker_batches_rewound_total",
                                     "Batches dropped unwritten after the write budget and "
                                     "consumed again.");
    w->m_last_batch_ms = us_metric_gauge("userstatus_worker_last_batch_milliseconds",
                                         "Time to finish the last batch.");
    w->m_event_age = us_metric_histogram(
        "userstatus_worker_event_age_seconds",
        "Freshness of statuses: now minus the event's time when its Redis write was acknowledged.",
        EVENT_AGE_BOUNDS, sizeof(EVENT_AGE_BOUNDS) / sizeof(EVENT_AGE_BOUNDS[0]));
    /* The registry keeps names, so they live in static storage. */
    static char dlq_names[DLQ_REDIS_ERROR + 1][96];
    for (int e = US_EVENT_OK + 1; e <= DLQ_REDIS_ERROR; e++) {
        snprintf(dlq_names[e], sizeof(dlq_names[e]), "userstatus_worker_dlq_total{reason=\"%s\"}",
                 dlq_reason_name(e));
        w->m_dlq_reason[e] = us_metric_counter(dlq_names[e],
                                               "Events dead-lettered (produced to the dead-letter "
                                               "topic and acknowledged), by reason.");
    }
    w->m_lag = us_metric_gauge_collector("userstatus_worker_consumer_lag",
                                         "Messages behind the partition's end (high watermark "
                                         "minus this worker's position), per assigned partition.",
                                         collect_lag, w);
}

static rd_kafka_t *create_dlq_producer(worker *w, char *err, size_t errlen)
{
    rd_kafka_conf_t *conf = us_kafka_conf_new(w->cfg, err, errlen);
    if (!conf) return NULL;
    if (us_kafka_conf_event_producer(conf, w->cfg, DLQ_MESSAGE_TIMEOUT_MS, err, errlen) != 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_opaque(conf, w);
    rd_kafka_conf_set_dr_msg_cb(conf, dlq_delivered);
    return us_kafka_new(RD_KAFKA_PRODUCER, conf, "dead-letter producer", err, errlen);
}

static rd_kafka_t *create_consumer(worker *w, char *err, size_t errlen)
{
    rd_kafka_conf_t *conf = us_kafka_conf_new(w->cfg, err, errlen);
    if (!conf) return NULL;
    /* Defaults: a property set in kafka.properties wins. */
    const char *const settings[][2] = {
        {"group.id", w->cfg->kafka.consumer_group},
        {"enable.auto.offset.store", "false"},
        {"enable.auto.commit", "true"},
        {"auto.commit.interval.ms", "1000"},
        {"auto.offset.reset", "earliest"},
        {"partition.assignment.strategy", "cooperative-sticky"},
        {"enable.partition.eof", "false"},
        /* The prefetch queue bounds the worker's memory (see QUEUED_MIN_MESSAGES). */
        {"queued.min.messages", QUEUED_MIN_MESSAGES},
        {"queued.max.messages.kbytes", QUEUED_MAX_KBYTES},
        {"fetch.max.bytes", FETCH_MAX_BYTES},
        {"max.partition.fetch.bytes", PARTITION_FETCH_MAX_BYTES},
        {"socket.timeout.ms", SOCKET_TIMEOUT_MS},
    };
    if (us_kafka_conf_defaults(conf, w->cfg, settings, sizeof(settings) / sizeof(settings[0]), err,
                               errlen) != 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_opaque(conf, w);
    rd_kafka_conf_set_rebalance_cb(conf, rebalance);
    rd_kafka_t *rk = us_kafka_new(RD_KAFKA_CONSUMER, conf, "consumer", err, errlen);
    if (!rk) return NULL;
    rd_kafka_poll_set_consumer(rk);
    return rk;
}

/* Sets the write budget from the consumer's max.poll.interval.ms; warns when one Redis attempt
 * (connect + I/O timeout) may not fit in the rest of the interval. */
static void set_write_budget(worker *w)
{
    char value[32];
    size_t len = sizeof(value);
    int64_t interval = MAX_POLL_INTERVAL_DEFAULT_MS;
    if (rd_kafka_conf_get(rd_kafka_conf(w->consumer), "max.poll.interval.ms", value, &len) ==
        RD_KAFKA_CONF_OK)
        interval = strtoll(value, NULL, 10);
    w->write_budget_ms = interval / WRITE_BUDGET_DIVISOR;
    int64_t attempt = w->cfg->user_status.redis_connect_timeout_ms +
                      w->cfg->user_status.redis_io_timeout_ms +
                      (w->cfg->user_status.redis_wait_replicas > 0
                           ? w->cfg->user_status.redis_wait_timeout_ms
                           : 0);
    if (attempt >= interval - w->write_budget_ms)
        us_warn("max.poll.interval.ms (%lld ms) leaves %lld ms for the last Redis write attempt of "
                "a batch, which may take %lld ms (redis connect + io [+ wait] timeouts): raise "
                "max.poll.interval.ms or lower the timeouts, or an evicted worker may still be "
                "writing",
                (long long)interval, (long long)(interval - w->write_budget_ms), (long long)attempt);
}

/* Creates the topics, retrying while the brokers are unreachable. Returns 0, or -1 on shutdown. */
static int ensure_topics(worker *w)
{
    int64_t delay = RETRY_BACKOFF_MIN_MS;
    char err[512];
    while (us_kafka_ensure_topics(w->dlq, w->cfg, TOPIC_CREATE_TIMEOUT_MS, err, sizeof(err)) !=
               0 ||
           us_changes_ensure_topic(w->changes, TOPIC_CREATE_TIMEOUT_MS, err, sizeof(err)) != 0) {
        us_error("%s; retrying", err);
        if (*w->stop) return -1;
        backoff(w, &delay);
    }
    return 0;
}

static void consume_loop(worker *w)
{
    while (!*w->stop) {
        if (w->nmsgs == 0) us_changes_tick(w->changes, w->redis); /* Deadlines, between batches. */
        rd_kafka_message_t *m =
            rd_kafka_consumer_poll(w->consumer, w->nmsgs == 0 ? POLL_IDLE_MS : 0);
        if (!m) {
            /* The local queue is drained: wake the fetchers, then write what we have. */
            us_fetch_wake_check(w->fetch_wake, 0);
            if (batch_finish(w, NULL)) us_fetch_wake_check(w->fetch_wake, 0);
            continue;
        }
        if (m->err) {
            us_metric_add(w->m_kafka_errors, 1);
            us_error("kafka consumer: %s", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        batch_take(w, m);
        if (w->nmsgs == (size_t)w->cfg->worker.batch_size) {
            us_fetch_wake_check(w->fetch_wake, 1); /* A full batch: a backlog. */
            if (batch_finish(w, NULL)) us_fetch_wake_check(w->fetch_wake, 0);
        }
        rd_kafka_poll(w->dlq, 0); /* Serve DLQ delivery reports. */
    }
    batch_finish(w, NULL);
}

int us_worker_run(const us_config *cfg, int metrics_port, volatile sig_atomic_t *stop)
{
    worker w;
    memset(&w, 0, sizeof(w));
    w.cfg = cfg;
    w.stop = stop;
    atomic_store(&w.redis_healthy, 1);
    pthread_mutex_init(&w.redis_error_lock, NULL);
    register_metrics(&w);
    us_redis_metrics_register();
    us_event_decoder_init(&w.decoder);
    int rc = -1, closed = 0;
    char err[512];
    us_admin_http *admin = NULL;

    size_t cap = (size_t)cfg->worker.batch_size;
    w.msgs = calloc(cap, sizeof(*w.msgs));
    w.event_ms = calloc(cap, sizeof(*w.event_ms));
    w.dlq_entries = calloc(cap, sizeof(*w.dlq_entries));
    w.refused = calloc(cap, 1);
    if (!w.msgs || !w.event_ms || !w.dlq_entries || !w.refused ||
        us_acks_init(&w.dlq_acks, cap) != 0 || us_batch_init(&w.batch, cap) != 0) {
        us_error("out of memory for a batch of %zu messages", cap);
        goto out;
    }
    if (!(w.redis = us_redis_new(cfg, err, sizeof(err)))) {
        us_error("%s", err);
        goto out;
    }
    if (!(w.dlq = create_dlq_producer(&w, err, sizeof(err))) ||
        !(w.consumer = create_consumer(&w, err, sizeof(err)))) {
        us_error("%s", err);
        goto out;
    }
    set_write_budget(&w);
    if (!(w.changes = us_changes_new(cfg, w.consumer, stop, err, sizeof(err))) && err[0]) {
        us_error("%s", err);
        goto out;
    }
    if (metrics_port > 0) {
        admin = us_admin_http_start(cfg->worker.metrics_address, metrics_port, health, &w, err,
                                    sizeof(err));
        if (!admin) {
            us_error("%s", err);
            goto out;
        }
    }
    if (ensure_topics(&w) != 0) { /* Stopped before the brokers ever answered. */
        rc = 0;
        closed = 1;
        goto out;
    }

    rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, cfg->kafka.topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t kerr = rd_kafka_subscribe(w.consumer, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (kerr) {
        us_error("subscribing to '%s': %s", cfg->kafka.topic, rd_kafka_err2str(kerr));
        goto out;
    }
    us_info("consuming '%s' in group '%s' from %s; metrics on %s:%d", cfg->kafka.topic,
            cfg->kafka.consumer_group, cfg->kafka.brokers, cfg->worker.metrics_address,
            metrics_port);

    if (!(w.fetch_wake = us_fetch_wake_start(w.consumer, err, sizeof(err))))
        us_warn("%s; consuming without it (slower with a backlog)", err);
    consume_loop(&w);
    us_fetch_wake_stop(w.fetch_wake);
    w.fetch_wake = NULL;

    us_info("shutting down: committing offsets and leaving the group");
    commit_offsets(&w);
    closed = close_consumer(&w);
    rc = 0;
out:
    us_fetch_wake_stop(w.fetch_wake);
    us_admin_http_stop(admin);
    if (rc == 0 && !closed) {
        /* Destroying a consumer whose close is still pending blocks until librdkafka's requests
         * to the unreachable brokers time out. Leave both handles to the process exit instead:
         * nothing of ours is pending (offsets not committed will be consumed again). */
        rc = US_WORKER_EXIT_NOW;
        w.consumer = w.dlq = NULL;
        w.changes = NULL; /* Its producer too. */
    }
    exit_watchdog wd;
    exit_watchdog_start(&wd, rc == 0 || rc == US_WORKER_EXIT_NOW ? 0 : 1);
    if (w.consumer) rd_kafka_destroy_flags(w.consumer, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    if (w.dlq) {
        rd_kafka_flush(w.dlq, DLQ_FLUSH_SLICE_MS);
        rd_kafka_destroy(w.dlq);
    }
    batch_release(&w);
    us_changes_free(w.changes);
    exit_watchdog_stop(&wd);
    us_redis_free(w.redis);
    us_batch_free(&w.batch);
    us_event_decoder_destroy(&w.decoder);
    free(w.msgs);
    free(w.event_ms);
    free(w.dlq_entries);
    us_acks_free(&w.dlq_acks);
    pthread_mutex_destroy(&w.redis_error_lock);
    free(w.refused);
    us_metrics_free_all();
    return rc;
}
