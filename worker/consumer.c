/* The worker's consumer loop: poll, decode, coalesce, write to Redis, then store offsets.
 *
 * At-least-once delivery, the librdkafka way
 * -------------------------------------------
 * Auto-commit is on but auto offset *store* is off: an offset becomes committable only when this
 * loop calls rd_kafka_offsets_store(), and it does so only after Redis acknowledged every write of
 * the batch and the dead-letter producer acknowledged every dead-lettered message of it. A batch is
 * everything the local queue holds (up to worker.batch_size messages), so when the batch is done
 * every message of every partition in it is done, and the stored offset (last offset + 1) never
 * skips an unfinished message.
 *
 * Partitions are only revoked inside rd_kafka_consumer_poll(), from the rebalance callback. The
 * callback first finishes the batch in hand (so its offsets are stored while the partitions are
 * still ours), commits synchronously, and only then gives the partitions up. When partitions are
 * *lost* (the group evicted us), the batch is dropped without storing anything: the new owner reads
 * those messages again from the last commit.
 *
 * Redis failures are retried with exponential backoff forever (until shutdown): an event is never
 * dropped, offsets simply do not move until Redis is back. Only a write Redis refuses because of
 * its key (WRONGTYPE: something else wrote it) is not retried: that user's messages are
 * dead-lettered with reason redis_error, and the batch goes on. */
#include "worker.h"

#include "admin_http.h"
#include "coalesce.h"
#include "event.h"
#include "kafka.h"
#include "log.h"
#include "metrics.h"
#include "redis_store.h"

#include <librdkafka/rdkafka.h>
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
#define DLQ_MESSAGE_TIMEOUT_MS 30000
#define TOPIC_CREATE_TIMEOUT_MS 10000
#define CLOSE_TIMEOUT_MS 5000 /* Longest wait to leave the group cleanly at shutdown. */
/* Requests to an unreachable broker fail after this long (librdkafka: 60 s). It bounds how long a
 * worker whose brokers are gone takes to exit: destroying the consumer waits for its requests. */
#define SOCKET_TIMEOUT_MS "10000"
#define DETAIL_MAX 160
#define QUEUED_MAX_KBYTES "16384" /* Kilobytes of prefetched messages in librdkafka's queue. */
/* Fetch response sizes: librdkafka's defaults (50 MiB, 1 MiB per partition) buffer far more than a
 * worker needs to stay busy; these halve its memory at full speed for ~2% of throughput. */
#define FETCH_MAX_BYTES "4194304"
#define PARTITION_FETCH_MAX_BYTES "262144"

typedef enum dlq_state { DLQ_PENDING, DLQ_DELIVERED, DLQ_FAILED } dlq_state;

/* A message of the batch that goes to the dead-letter topic. */
typedef struct dlq_entry {
    size_t msg;         /* Index into worker.msgs. */
    const char *reason; /* Header userstatus-error: us_event_error_name(), or "redis_error". */
    char detail[DETAIL_MAX];
    _Atomic int state; /* dlq_state, written by the delivery report callback. */
} dlq_entry;

typedef struct worker {
    const us_config *cfg;
    volatile sig_atomic_t *stop;
    rd_kafka_t *consumer;
    rd_kafka_t *dlq;
    us_redis *redis;
    us_event_decoder decoder;
    us_batch batch;

    rd_kafka_message_t **msgs; /* The batch's messages, kept until their offsets are stored. */
    size_t nmsgs;
    dlq_entry *dlq_entries;
    size_t ndlq;
    uint8_t *refused; /* Per user of the batch: Redis refused its writes (us_redis_apply). */

    int assigned_once; /* The group has completed a rebalance with us in it. */

    _Atomic int redis_healthy;
    char redis_error[256];

    us_metric *m_applied, *m_dead, *m_batches, *m_users, *m_redis_errors, *m_dlq_errors,
        *m_rebalances, *m_partitions, *m_kafka_errors, *m_last_batch_ms;
} worker;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* Sleeps for the current backoff, then doubles it (bounded). Wakes early on shutdown. */
static void backoff(worker *w, int64_t *delay_ms)
{
    for (int64_t slept = 0; slept < *delay_ms && !*w->stop; slept += 50) sleep_ms(50);
    *delay_ms = *delay_ms * 2 > RETRY_BACKOFF_MAX_MS ? RETRY_BACKOFF_MAX_MS : *delay_ms * 2;
}

static void dlq_delivered(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    worker *w = opaque;
    dlq_entry *e = m->_private;
    if (m->err) {
        us_error("dead-letter topic '%s': delivery failed: %s (will retry)",
                 w->cfg->kafka.dlq_topic, rd_kafka_err2str(m->err));
        us_metric_add(w->m_dlq_errors, 1);
        atomic_store(&e->state, DLQ_FAILED);
    } else {
        atomic_store(&e->state, DLQ_DELIVERED);
    }
}

/* Produces one dead-letter message: original key, value and headers, plus ours saying why. */
static int dlq_produce(worker *w, dlq_entry *e)
{
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

    atomic_store(&e->state, DLQ_PENDING);
    rd_kafka_resp_err_t err = rd_kafka_producev(
        w->dlq, RD_KAFKA_V_TOPIC(w->cfg->kafka.dlq_topic), RD_KAFKA_V_KEY(m->key, m->key_len),
        RD_KAFKA_V_VALUE(m->payload, m->len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_OPAQUE(e), RD_KAFKA_V_END);
    if (err) {
        rd_kafka_headers_destroy(hdrs);
        atomic_store(&e->state, DLQ_FAILED);
        us_error("dead-letter topic '%s': cannot queue message: %s", w->cfg->kafka.dlq_topic,
                 rd_kafka_err2str(err));
        return -1;
    }
    return 0;
}

/* Waits until every dead-lettered message of the batch is acknowledged, re-producing failed ones.
 * Returns 0, or -1 when shutdown interrupted it. */
static int dlq_settle(worker *w)
{
    int64_t delay = RETRY_BACKOFF_MIN_MS;
    for (;;) {
        rd_kafka_flush(w->dlq, DLQ_FLUSH_SLICE_MS);
        size_t pending = 0, failed = 0;
        for (size_t i = 0; i < w->ndlq; i++) {
            int st = atomic_load(&w->dlq_entries[i].state);
            pending += st == DLQ_PENDING;
            failed += st == DLQ_FAILED;
        }
        if (pending == 0 && failed == 0) return 0;
        if (*w->stop) return -1;
        if (pending == 0) {
            backoff(w, &delay);
            for (size_t i = 0; i < w->ndlq; i++)
                if (atomic_load(&w->dlq_entries[i].state) == DLQ_FAILED)
                    dlq_produce(w, &w->dlq_entries[i]);
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
        dlq_entry *e = &w->dlq_entries[w->ndlq++];
        e->msg = i;
        e->reason = "redis_error";
        snprintf(e->detail, sizeof(e->detail), "%.*s", DETAIL_MAX - 1, why);
        dlq_produce(w, e);
    }
    us_warn("redis refused the writes of %d user(s): %s; dead-lettered their %zu message(s)",
            nrefused, why, w->ndlq - before);
}

/* Writes the batch to Redis, retrying until success. Returns 0, or -1 on shutdown. */
static int redis_settle(worker *w)
{
    int64_t delay = RETRY_BACKOFF_MIN_MS;
    char err[256];
    int nrefused;
    while ((nrefused = us_redis_apply(w->redis, w->batch.updates, w->batch.count, w->refused, err,
                                      sizeof(err))) < 0) {
        us_metric_add(w->m_redis_errors, 1);
        atomic_store(&w->redis_healthy, 0);
        snprintf(w->redis_error, sizeof(w->redis_error), "%s", err);
        us_error("redis write of %zu users failed: %s; retrying in %lld ms (offsets held)",
                 w->batch.count, err, (long long)delay);
        if (*w->stop) return -1;
        backoff(w, &delay);
        if (*w->stop) return -1;
    }
    if (!atomic_load(&w->redis_healthy)) us_info("redis writes succeed again");
    atomic_store(&w->redis_healthy, 1);
    if (nrefused > 0) dead_letter_refused(w, nrefused, err);
    return 0;
}

static void batch_release(worker *w)
{
    us_batch_reset(&w->batch); /* First: it reads user ids that live in the messages. */
    for (size_t i = 0; i < w->nmsgs; i++) rd_kafka_message_destroy(w->msgs[i]);
    w->nmsgs = 0;
    w->ndlq = 0;
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

/* Finishes the batch in hand: DLQ acks, Redis acks, then offsets. On shutdown before both acks
 * arrived, nothing is stored and the messages will be consumed again. */
static void batch_finish(worker *w)
{
    if (w->nmsgs == 0) return;
    int64_t started = now_ms();
    if (dlq_settle(w) != 0 || redis_settle(w) != 0 || dlq_settle(w) != 0) {
        us_warn("shutting down with a batch of %zu messages not fully written; their offsets are "
                "not stored, so they will be consumed again",
                w->nmsgs);
        batch_release(w);
        return;
    }
    store_offsets(w);
    us_metric_add(w->m_applied, w->nmsgs - w->ndlq);
    us_metric_add(w->m_dead, w->ndlq);
    us_metric_add(w->m_users, w->batch.count);
    us_metric_add(w->m_batches, 1);
    us_metric_set(w->m_last_batch_ms, now_ms() - started);
    us_debug("batch done: %zu messages, %zu users, %zu dead-lettered", w->nmsgs, w->batch.count,
             w->ndlq);
    batch_release(w);
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
        int64_t now = now_ms(), t;
        if (ev.has_time) {
            t = ev.time_ms;
        } else {
            t = rd_kafka_message_timestamp(m, NULL);
            if (t < 0) t = now;
        }
        if (t > now + w->cfg->user_status.max_clock_skew_ms) t = now;
        us_batch_add(&w->batch, &ev, t / 1000); /* Cannot fail: users <= messages <= capacity. */
        return;
    }
    dlq_entry *e = &w->dlq_entries[w->ndlq++];
    e->msg = idx;
    e->reason = us_event_error_name(err);
    snprintf(e->detail, sizeof(e->detail), "%s", detail);
    us_warn("dead-lettering %s[%d]@%lld: %s: %s", rd_kafka_topic_name(m->rkt), (int)m->partition,
            (long long)m->offset, us_event_error_name(err), detail);
    dlq_produce(w, e);
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
    int64_t deadline = now_ms() + CLOSE_TIMEOUT_MS;
    while (!w->assigned_once && now_ms() < deadline) {
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
    deadline = now_ms() + CLOSE_TIMEOUT_MS;
    while (!rd_kafka_consumer_closed(w->consumer) && now_ms() < deadline) {
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
            batch_finish(w);
            commit_offsets(w);
            us_info("revoked %d partition(s) after draining in-flight writes", parts->cnt);
        }
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
        snprintf(msg, msglen, "redis: %s", w->redis_error);
        return 0;
    }
    snprintf(msg, msglen, "consuming");
    return 1;
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
    w->m_last_batch_ms = us_metric_gauge("userstatus_worker_last_batch_milliseconds",
                                         "Time to finish the last batch.");
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
        /* The prefetch queue bounds the worker's memory; at librdkafka's 64 MiB default the
         * worker alone would break its 30 MB budget. */
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

/* Creates the topics, retrying while the brokers are unreachable. Returns 0, or -1 on shutdown. */
static int ensure_topics(worker *w)
{
    int64_t delay = RETRY_BACKOFF_MIN_MS;
    char err[512];
    while (us_kafka_ensure_topics(w->dlq, w->cfg, TOPIC_CREATE_TIMEOUT_MS, err, sizeof(err)) !=
           0) {
        us_error("%s; retrying", err);
        if (*w->stop) return -1;
        backoff(w, &delay);
    }
    return 0;
}

static void consume_loop(worker *w)
{
    while (!*w->stop) {
        rd_kafka_message_t *m =
            rd_kafka_consumer_poll(w->consumer, w->nmsgs == 0 ? POLL_IDLE_MS : 0);
        if (!m) {
            batch_finish(w); /* The local queue is drained: write what we have. */
            continue;
        }
        if (m->err) {
            us_metric_add(w->m_kafka_errors, 1);
            us_error("kafka consumer: %s", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        batch_take(w, m);
        if (w->nmsgs == (size_t)w->cfg->worker.batch_size) batch_finish(w);
        rd_kafka_poll(w->dlq, 0); /* Serve DLQ delivery reports. */
    }
    batch_finish(w);
}

int us_worker_run(const us_config *cfg, int metrics_port, volatile sig_atomic_t *stop)
{
    worker w;
    memset(&w, 0, sizeof(w));
    w.cfg = cfg;
    w.stop = stop;
    atomic_store(&w.redis_healthy, 1);
    register_metrics(&w);
    us_redis_metrics_register();
    us_event_decoder_init(&w.decoder);
    int rc = -1, closed = 0;
    char err[512];
    us_admin_http *admin = NULL;

    size_t cap = (size_t)cfg->worker.batch_size;
    w.msgs = calloc(cap, sizeof(*w.msgs));
    w.dlq_entries = calloc(cap, sizeof(*w.dlq_entries));
    w.refused = calloc(cap, 1);
    if (!w.msgs || !w.dlq_entries || !w.refused || us_batch_init(&w.batch, cap) != 0) {
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

    consume_loop(&w);

    us_info("shutting down: committing offsets and leaving the group");
    commit_offsets(&w);
    closed = close_consumer(&w);
    rc = 0;
out:
    us_admin_http_stop(admin);
    if (rc == 0 && !closed) {
        /* Destroying a consumer whose close is still pending blocks until librdkafka's requests
         * to the unreachable brokers time out. Leave both handles to the process exit instead:
         * nothing of ours is pending (offsets not committed will be consumed again). */
        rc = US_WORKER_EXIT_NOW;
        w.consumer = w.dlq = NULL;
    }
    if (w.consumer) rd_kafka_destroy_flags(w.consumer, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    if (w.dlq) {
        rd_kafka_flush(w.dlq, DLQ_FLUSH_SLICE_MS);
        rd_kafka_destroy(w.dlq);
    }
    batch_release(&w);
    us_redis_free(w.redis);
    us_batch_free(&w.batch);
    us_event_decoder_destroy(&w.decoder);
    free(w.msgs);
    free(w.dlq_entries);
    free(w.refused);
    us_metrics_free_all();
    return rc;
}
