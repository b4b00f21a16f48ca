/* The consumer loop of one destination: poll a batch of changes, deliver it until the receiver
 * acknowledges, then store the offsets.
 *
 * At-least-once, as in the worker (worker/consumer.c)
 * ---------------------------------------------------
 * Auto-commit is on, auto offset *store* is off: an offset becomes committable only when this
 * loop calls rd_kafka_offsets_store(), after the receiver acknowledged the whole batch. A batch is
 * what the local queue holds (at most changes.notify_batch_size messages); each is delivered as a
 * whole, so a stored offset never skips an unacknowledged change. A receiver may therefore see a
 * change twice (a retry after a lost acknowledgement, a rebalance, a restart): changes carry
 * (user, status, since) for deduplication.
 *
 * Retries and the group
 * ---------------------
 * A batch that is not acknowledged is sent again after a backoff that doubles from
 * RETRY_BACKOFF_MIN_MS up to changes.notify_retry_max. Nothing is polled meanwhile, so the batch is
 * retried for at most half of max.poll.interval.ms (the budget); then it is *rewound*: dropped
 * unstored, each of its partitions seeked back to the batch's first offset, and polled again,
 * which keeps this destination in its group while its receiver stays down. The protocol is the
 * eager one: a rebalance revokes every partition, and the batch in hand is dropped unstored (the
 * next owner delivers it again from the last commit).
 *
 * One group per destination: a destination's committed offsets are exactly what its receiver
 * acknowledged, independent of every other destination. */
#include "notify.h"

#include "clock.h"
#include "kafka.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define POLL_IDLE_MS 100         /* Poll timeout while no batch is in hand. */
#define RETRY_BACKOFF_MIN_MS 250 /* First wait after a failed attempt. */
#define BACKOFF_SLICE_MS 50      /* Granularity of the backoff sleep (stop checks). */
#define BUDGET_DIVISOR 2         /* A batch is retried for max.poll.interval.ms / this. */
#define MAX_POLL_INTERVAL_DEFAULT_MS 300000 /* librdkafka's default max.poll.interval.ms. */
#define SEEK_TIMEOUT_MS 0         /* Asynchronous seeks: a barrier drops what was fetched. */
#define SOCKET_TIMEOUT_MS "10000" /* Bounds a shutdown while the brokers are unreachable. */
#define CLOSE_TIMEOUT_MS 5000     /* Longest wait to leave the group at shutdown. */
#define DETAIL_MAX 512

/* Drops the batch in hand without storing its offsets. */
static void batch_release(us_dest *d)
{
    for (size_t i = 0; i < d->nmsgs; i++)
        rd_kafka_message_destroy(d->msgs[i]);
    d->nmsgs = 0;
}

/* Stores, per partition, the offset after the batch's last message there. */
static void store_offsets(us_dest *d)
{
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(16);
    for (size_t i = 0; i < d->nmsgs; i++) {
        const rd_kafka_message_t *m = d->msgs[i];
        rd_kafka_topic_partition_t *p =
            rd_kafka_topic_partition_list_find(list, rd_kafka_topic_name(m->rkt), m->partition);
        if (!p)
            p = rd_kafka_topic_partition_list_add(list, rd_kafka_topic_name(m->rkt), m->partition);
        p->offset = m->offset + 1;
    }
    rd_kafka_resp_err_t err = rd_kafka_offsets_store(d->consumer, list);
    if (err)
        us_warn("%s: storing offsets: %s (those changes will be delivered again)", d->name,
                rd_kafka_err2str(err));
    rd_kafka_topic_partition_list_destroy(list);
}

/* Seeks every partition of the batch back to its first offset in it, then drops the batch: the
 * next polls return the same messages again. */
static void batch_rewind(us_dest *d)
{
    rd_kafka_topic_partition_list_t *seek = rd_kafka_topic_partition_list_new(16);
    for (size_t i = 0; i < d->nmsgs; i++) {
        const rd_kafka_message_t *m = d->msgs[i];
        if (!rd_kafka_topic_partition_list_find(seek, rd_kafka_topic_name(m->rkt), m->partition))
            rd_kafka_topic_partition_list_add(seek, rd_kafka_topic_name(m->rkt), m->partition)
                ->offset = m->offset;
    }
    if (!rd_kafka_assignment_lost(d->consumer)) {
        rd_kafka_error_t *error = rd_kafka_seek_partitions(d->consumer, seek, SEEK_TIMEOUT_MS);
        if (error) {
            us_error("%s: rewinding %d partition(s): %s", d->name, seek->cnt,
                     rd_kafka_error_string(error));
            rd_kafka_error_destroy(error);
        }
    }
    rd_kafka_topic_partition_list_destroy(seek);
    batch_release(d);
    us_metric_add(d->m_rewinds, 1);
}

/* Sleeps for the backoff, waking early on a stop; then doubles it up to notify_retry_max. */
static void backoff(us_dest *d, int64_t *delay_ms)
{
    for (int64_t slept = 0; slept < *delay_ms && !*d->stop; slept += BACKOFF_SLICE_MS)
        us_sleep_ms(BACKOFF_SLICE_MS);
    int64_t cap = d->cfg->changes.notify_retry_max_ms;
    *delay_ms = *delay_ms * 2 > cap ? cap : *delay_ms * 2;
}

/* Decodes the batch into d->changes; a message that is not a change (the topic is written by the
 * worker only, so this is a bug or a foreign producer) is logged, counted and left out. Returns
 * the number of changes. */
static size_t decode_batch(us_dest *d)
{
    size_t n = 0;
    for (size_t i = 0; i < d->nmsgs; i++) {
        const rd_kafka_message_t *m = d->msgs[i];
        char detail[DETAIL_MAX];
        if (us_change_decode(m->payload, m->len, &d->changes[n], detail, sizeof(detail)) != 0) {
            us_error("%s: %s[%d]@%lld is not a change message (%s); skipped", d->name,
                     rd_kafka_topic_name(m->rkt), (int)m->partition, (long long)m->offset, detail);
            us_metric_add(d->m_skipped, 1);
            continue;
        }
        n++;
    }
    return n;
}

/* One attempt at the batch. */
static us_deliver_result attempt(us_dest *d, size_t n, char *err, size_t errlen)
{
    size_t skipped = 0;
    us_deliver_result r = d->kind == US_DEST_WEBHOOK
                              ? us_webhook_deliver(d, d->changes, n, err, errlen)
                              : us_centrifugo_deliver(d, d->changes, n, &skipped, err, errlen);
    if (r == US_DELIVER_OK) {
        us_metric_add(d->m_ok, 1);
        us_metric_add(d->m_delivered, n - skipped);
        us_metric_add(d->m_skipped, skipped);
    } else {
        us_metric_add(d->m_failed, 1);
    }
    return r;
}

/* Delivers the batch in hand until it is acknowledged (offsets stored), the budget is spent
 * (rewound) or a stop is asked for (dropped unstored). */
static void batch_deliver(us_dest *d)
{
    size_t n = decode_batch(d);
    int64_t deadline = us_monotonic_ms() + d->budget_ms, delay = RETRY_BACKOFF_MIN_MS;
    int tries = 0;
    while (n > 0) {
        char err[DETAIL_MAX];
        if (tries++ > 0) us_metric_add(d->m_retries, 1);
        if (attempt(d, n, err, sizeof(err)) == US_DELIVER_OK) {
            if (atomic_exchange(&d->failing, 0))
                us_info("%s: delivering again (%zu change(s) acknowledged after %d attempts)",
                        d->name, n, tries);
            us_metric_set(d->m_failing, 0);
            break;
        }
        atomic_store(&d->failing, 1);
        us_metric_set(d->m_failing, 1);
        if (*d->stop) {
            us_warn("%s: %s; stopping with %zu change(s) unacknowledged (delivered again after "
                    "the restart)",
                    d->name, err, n);
            batch_release(d);
            return;
        }
        us_warn("%s: %s; retrying %zu change(s) in %lld ms", d->name, err, n, (long long)delay);
        backoff(d, &delay);
        if (*d->stop) {
            batch_release(d);
            return;
        }
        if (us_monotonic_ms() >= deadline) {
            us_warn("%s: not acknowledged for %lld ms (half of max.poll.interval.ms): rewinding "
                    "the batch to poll again",
                    d->name, (long long)d->budget_ms);
            batch_rewind(d);
            return;
        }
    }
    store_offsets(d);
    batch_release(d);
}

static void rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                      rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    us_dest *d = opaque;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        us_info("%s: assigned %d partition(s)", d->name, parts->cnt);
        rd_kafka_assign(rk, parts);
        return;
    }
    /* Revoked (or lost): the batch in hand is not acknowledged; whoever owns its partitions next
     * delivers it again. What was acknowledged is committed before the partitions go. */
    us_info("%s: revoked %d partition(s)%s", d->name, parts->cnt,
            d->nmsgs ? "; dropping the undelivered batch in hand" : "");
    batch_release(d);
    if (!rd_kafka_assignment_lost(rk)) {
        /* Synchronous while running (the next owner starts right after what was acknowledged);
         * asynchronous when stopping, where brokers that are gone would block the exit (the
         * close that follows still sends it). */
        rd_kafka_resp_err_t cerr = rd_kafka_commit(rk, NULL, *d->stop ? 1 : 0);
        if (cerr && cerr != RD_KAFKA_RESP_ERR__NO_OFFSET)
            us_warn("%s: committing offsets: %s", d->name, rd_kafka_err2str(cerr));
    }
    rd_kafka_assign(rk, NULL);
}

static rd_kafka_t *create_consumer(us_dest *d, char *err, size_t errlen)
{
    rd_kafka_conf_t *conf = us_kafka_conf_new(d->cfg, err, errlen);
    if (!conf) return NULL;
    /* group.id is the destination's own (not overridable by kafka.properties, which the worker's
     * group also reads); the rest are defaults a property set in kafka.properties overrides. */
    if (us_kafka_conf_set(conf, "group.id", d->group, err, errlen) != 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    const char *const settings[][2] = {
        {"enable.auto.offset.store", "false"},
        {"enable.auto.commit", "true"},
        {"auto.commit.interval.ms", "1000"},
        {"auto.offset.reset", "earliest"},
        {"partition.assignment.strategy", "range,roundrobin"},
        {"enable.partition.eof", "false"},
        {"socket.timeout.ms", SOCKET_TIMEOUT_MS},
    };
    if (us_kafka_conf_defaults(conf, d->cfg, settings, sizeof(settings) / sizeof(settings[0]), err,
                               errlen) != 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_opaque(conf, d);
    rd_kafka_conf_set_rebalance_cb(conf, rebalance);
    char what[US_DEST_NAME_MAX + 16];
    snprintf(what, sizeof(what), "%s consumer", d->name);
    rd_kafka_t *rk = us_kafka_new(RD_KAFKA_CONSUMER, conf, what, err, errlen);
    if (!rk) return NULL;
    rd_kafka_poll_set_consumer(rk);

    char value[32];
    size_t len = sizeof(value);
    int64_t interval = MAX_POLL_INTERVAL_DEFAULT_MS;
    if (rd_kafka_conf_get(rd_kafka_conf(rk), "max.poll.interval.ms", value, &len) ==
        RD_KAFKA_CONF_OK)
        interval = strtoll(value, NULL, 10);
    d->budget_ms = interval / BUDGET_DIVISOR;
    if (d->cfg->changes.notify_timeout_ms >= d->budget_ms)
        us_warn("%s: changes.notify_timeout (%lld ms) leaves no room in the retry budget of %lld "
                "ms (half of max.poll.interval.ms): lower it or raise max.poll.interval.ms",
                d->name, (long long)d->cfg->changes.notify_timeout_ms, (long long)d->budget_ms);
    return rk;
}

static void consume_loop(us_dest *d)
{
    size_t cap = (size_t)d->cfg->changes.notify_batch_size;
    while (!*d->stop) {
        rd_kafka_message_t *m =
            rd_kafka_consumer_poll(d->consumer, d->nmsgs == 0 ? POLL_IDLE_MS : 0);
        if (!m) {
            if (d->nmsgs > 0) batch_deliver(d); /* The local queue is drained. */
            continue;
        }
        if (m->err) {
            us_error("%s: kafka consumer: %s", d->name, rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        d->msgs[d->nmsgs++] = m;
        if (d->nmsgs == cap) batch_deliver(d);
    }
    batch_release(d); /* Stopping: a batch not yet attempted is delivered after the restart. */
}

/* Leaves the group (revoking through the rebalance callback, which commits; LeaveGroup), bounded
 * by CLOSE_TIMEOUT_MS so that a destination whose brokers are gone still stops. Returns 1 when
 * closed. */
static int close_consumer(us_dest *d)
{
    rd_kafka_queue_t *q = rd_kafka_queue_new(d->consumer);
    rd_kafka_error_t *error = rd_kafka_consumer_close_queue(d->consumer, q);
    if (error) {
        us_warn("%s: leaving the group: %s", d->name, rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    }
    int64_t deadline = us_monotonic_ms() + CLOSE_TIMEOUT_MS;
    while (!rd_kafka_consumer_closed(d->consumer) && us_monotonic_ms() < deadline) {
        rd_kafka_event_t *ev = rd_kafka_queue_poll(q, POLL_IDLE_MS);
        if (!ev) continue;
        if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_REBALANCE)
            rebalance(d->consumer, rd_kafka_event_error(ev),
                      (rd_kafka_topic_partition_list_t *)rd_kafka_event_topic_partition_list(ev),
                      d);
        rd_kafka_event_destroy(ev);
    }
    rd_kafka_queue_destroy(q);
    int closed = rd_kafka_consumer_closed(d->consumer);
    if (!closed)
        us_warn("%s: could not leave the group within %d ms (brokers unreachable?); exiting "
                "anyway: changes after the last commit will be delivered again",
                d->name, CLOSE_TIMEOUT_MS);
    return closed;
}

static void *dest_thread(void *arg)
{
    us_dest *d = arg;
    rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, d->cfg->changes.topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t kerr = rd_kafka_subscribe(d->consumer, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (kerr) {
        us_error("%s: subscribing to '%s': %s", d->name, d->cfg->changes.topic,
                 rd_kafka_err2str(kerr));
        atomic_store(&d->failed, 1);
        return NULL;
    }
    d->subscribed = 1;
    us_info("%s: delivering '%s' in group '%s' to %s", d->name, d->cfg->changes.topic, d->group,
            d->url);
    consume_loop(d);

    us_info("%s: stopping: committing acknowledged offsets and leaving the group", d->name);
    kerr = rd_kafka_commit(d->consumer, NULL, 1);
    if (kerr && kerr != RD_KAFKA_RESP_ERR__NO_OFFSET)
        us_warn("%s: committing offsets: %s (the changes after the last commit will be delivered "
                "again)",
                d->name, rd_kafka_err2str(kerr));
    d->closed = close_consumer(d);
    return NULL;
}

int us_dest_start(us_dest *d, char *err, size_t errlen)
{
    size_t cap = (size_t)d->cfg->changes.notify_batch_size;
    d->msgs = calloc(cap, sizeof(*d->msgs));
    d->changes = calloc(cap, sizeof(*d->changes));
    if (!d->msgs || !d->changes) {
        snprintf(err, errlen, "%s: out of memory for a batch of %zu changes", d->name, cap);
        return -1;
    }
    if (!(d->http = us_http_new(d->cfg->changes.notify_timeout_ms, d->stop, err, errlen)))
        return -1;
    if (!(d->consumer = create_consumer(d, err, errlen))) return -1;
    int rc = pthread_create(&d->thread, NULL, dest_thread, d);
    if (rc != 0) {
        snprintf(err, errlen, "%s: starting its thread: %s", d->name, strerror(rc));
        return -1;
    }
    d->thread_started = 1;
    return 0;
}

int us_dest_join(us_dest *d)
{
    if (d->thread_started) pthread_join(d->thread, NULL);
    d->thread_started = 0;
    batch_release(d);
    /* A consumer that could not leave its group is left to the process exit: destroying it would
     * wait for its requests to the unreachable brokers to time out. */
    int left_running = d->consumer && d->subscribed && !d->closed;
    if (d->consumer && !left_running) rd_kafka_destroy(d->consumer);
    d->consumer = NULL;
    us_http_free(d->http);
    d->http = NULL;
    free(d->msgs);
    free(d->changes);
    d->msgs = NULL;
    d->changes = NULL;
    return left_running ? -1 : 0;
}

/* Registers metric `family{destination="<name>"<extra>}` for each destination. slot indexes the
 * destination's metric_names (the names must outlive the registry). */
static void register_family(us_dest *dests, size_t n, size_t slot, const char *family,
                            const char *extra, const char *help, int gauge, size_t field)
{
    for (size_t i = 0; i < n; i++) {
        us_dest *d = &dests[i];
        char *name = d->metric_names[slot];
        snprintf(name, US_DEST_METRIC_MAX, "%s{destination=\"%s\"%s}", family, d->name, extra);
        us_metric *m = gauge ? us_metric_gauge(name, help) : us_metric_counter(name, help);
        *(us_metric **)((char *)d + field) = m;
    }
}

void us_dest_register_metrics(us_dest *dests, size_t n)
{
    const char *changes_help = "Changes taken from the changes topic, by destination and outcome.";
    register_family(dests, n, 0, "userstatus_notify_changes_total", ",result=\"delivered\"",
                    changes_help, 0, offsetof(us_dest, m_delivered));
    register_family(dests, n, 1, "userstatus_notify_changes_total", ",result=\"skipped\"",
                    changes_help, 0, offsetof(us_dest, m_skipped));
    const char *requests_help = "Delivery attempts (webhook POSTs, Centrifugo batch calls), by "
                                "destination and outcome.";
    register_family(dests, n, 2, "userstatus_notify_requests_total", ",result=\"ok\"",
                    requests_help, 0, offsetof(us_dest, m_ok));
    register_family(dests, n, 3, "userstatus_notify_requests_total", ",result=\"failed\"",
                    requests_help, 0, offsetof(us_dest, m_failed));
    register_family(dests, n, 4, "userstatus_notify_retries_total", "",
                    "Attempts that repeated a batch not acknowledged before.", 0,
                    offsetof(us_dest, m_retries));
    register_family(dests, n, 5, "userstatus_notify_failing", "",
                    "1 while the destination's last attempt was not acknowledged.", 1,
                    offsetof(us_dest, m_failing));
    register_family(dests, n, 6, "userstatus_notify_batches_rewound_total", "",
                    "Batches retried for the whole budget, then polled again.", 0,
                    offsetof(us_dest, m_rewinds));
}
