/* Implementation of the query service's producer.
 *
 * Delivery reports are served by a thread of ours that calls rd_kafka_poll(). message.timeout.ms
 * equals kafka.produce_timeout, so librdkafka reports every message, delivered or failed, within
 * that time: a waiting request never waits longer, and never hears "success" for a message the
 * broker did not acknowledge (acks=all, idempotent). */
#include "producer.h"

#include "clock.h"
#include "kafka.h"
#include "log.h"
#include "metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define POLL_SLICE_MS 100         /* rd_kafka_poll() timeout of the delivery-report thread. */
#define TOPIC_RETRY_DELAY_S 5     /* Seconds between attempts to create missing topics. */
#define TOPIC_CREATE_TIMEOUT_MS 10000

struct us_producer {
    rd_kafka_t *rk;
    const us_config *cfg;
    pthread_t poller, topics;
    int topics_started;
    _Atomic int stop;
    _Atomic int ready; /* The topic's metadata is known. */
    us_metric *m_ack;
};

/* A queued message's report target: the caller's callback and its argument. Allocated per
 * message so that a report never points into reused memory. */
typedef struct delivery {
    us_delivery_fn done;
    void *opaque;
    int64_t queued_ns; /* Monotonic; for userstatus_query_produce_ack_seconds. */
} delivery;


static void delivered(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    us_producer *p = opaque;
    delivery *d = m->_private;
    if (!m->err) us_metric_observe(p->m_ack, (double)(us_monotonic_ns() - d->queued_ns) / 1e9);
    us_delivery_fn done = d->done;
    void *arg = d->opaque;
    free(d);
    done(arg, m->err);
}

static void *poll_thread(void *arg)
{
    us_producer *p = arg;
    while (!atomic_load(&p->stop)) rd_kafka_poll(p->rk, POLL_SLICE_MS);
    return NULL;
}

/* Fetches the topic's metadata, so that librdkafka knows every partition's leader before the
 * first event: without it the first events wait for a metadata round trip (and a proxy call,
 * bounded by proxy.ack_timeout, could fail). Returns 0 once every partition has a leader. */
static int warm_up(us_producer *p, char *err, size_t errlen)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(p->rk, p->cfg->kafka.topic, NULL);
    if (!rkt) {
        snprintf(err, errlen, "producer: cannot create a handle for topic '%s'", p->cfg->kafka.topic);
        return -1;
    }
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(p->rk, 0, rkt, &md, TOPIC_CREATE_TIMEOUT_MS);
    int rc = -1;
    if (e) {
        snprintf(err, errlen, "producer: metadata of topic '%s': %s", p->cfg->kafka.topic,
                 rd_kafka_err2str(e));
    } else if (md->topic_cnt != 1 || md->topics[0].err || md->topics[0].partition_cnt == 0) {
        snprintf(err, errlen, "producer: topic '%s' has no partitions yet", p->cfg->kafka.topic);
    } else {
        rc = 0;
        for (int i = 0; i < md->topics[0].partition_cnt; i++)
            if (md->topics[0].partitions[i].leader < 0) {
                snprintf(err, errlen, "producer: partition %d of '%s' has no leader yet", i,
                         p->cfg->kafka.topic);
                rc = -1;
                break;
            }
    }
    if (md) rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    return rc;
}

static void *topics_thread(void *arg)
{
    us_producer *p = arg;
    char err[512];
    while (!atomic_load(&p->stop)) {
        if (us_kafka_ensure_topics(p->rk, p->cfg, TOPIC_CREATE_TIMEOUT_MS, err, sizeof(err)) == 0 &&
            warm_up(p, err, sizeof(err)) == 0) {
            atomic_store(&p->ready, 1);
            us_info("producer ready: metadata of topic '%s' known", p->cfg->kafka.topic);
            return NULL;
        }
        us_warn("%s; retrying in %d s", err, TOPIC_RETRY_DELAY_S);
        for (int i = 0; i < TOPIC_RETRY_DELAY_S * 10 && !atomic_load(&p->stop); i++)
            usleep(100 * 1000);
    }
    return NULL;
}

us_producer *us_producer_new(const us_config *cfg, char *err, size_t errlen)
{
    rd_kafka_conf_t *conf = us_kafka_conf_new(cfg, err, errlen);
    if (!conf) return NULL;
    if (us_kafka_conf_event_producer(conf, cfg, cfg->kafka.produce_timeout_ms, err, errlen) != 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_dr_msg_cb(conf, delivered);
    us_producer *p = calloc(1, sizeof(*p));
    if (!p) abort();
    rd_kafka_conf_set_opaque(conf, p);
    rd_kafka_t *rk = us_kafka_new(RD_KAFKA_PRODUCER, conf, "producer", err, errlen);
    if (!rk) {
        free(p);
        return NULL;
    }
    static const double ack_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                        0.25,  0.5,    1,     2.5,  5,     10};
    p->m_ack = us_metric_histogram("userstatus_query_produce_ack_seconds",
                                   "Time from producing an event to the broker's acknowledgement.",
                                   ack_bounds, sizeof(ack_bounds) / sizeof(ack_bounds[0]));
    p->rk = rk;
    p->cfg = cfg;
    if (pthread_create(&p->poller, NULL, poll_thread, p) != 0) {
        snprintf(err, errlen, "producer: cannot start the delivery-report thread");
        rd_kafka_destroy(rk);
        free(p);
        return NULL;
    }
    p->topics_started = pthread_create(&p->topics, NULL, topics_thread, p) == 0;
    return p;
}

void us_producer_free(us_producer *p)
{
    if (!p) return;
    rd_kafka_flush(p->rk, (int)p->cfg->kafka.produce_timeout_ms);
    atomic_store(&p->stop, 1);
    pthread_join(p->poller, NULL);
    if (p->topics_started) pthread_join(p->topics, NULL);
    rd_kafka_destroy(p->rk);
    free(p);
}

int us_producer_ready(const us_producer *p)
{
    return atomic_load(&((us_producer *)p)->ready);
}

size_t us_producer_send(us_producer *p, us_event_type type, const us_user_ref *users, size_t n,
                        int64_t time_ms, const char *state, size_t state_len, int has_state,
                        us_delivery_fn done, void *opaque, rd_kafka_resp_err_t *err)
{
    char buf[US_EVENT_ENCODED_MAX];
    for (size_t i = 0; i < n; i++) {
        us_event ev = {
            .type = type,
            .user = users[i].user,
            .user_len = users[i].len,
            .has_time = type != US_EVENT_DELETE,
            .time_ms = time_ms,
            .has_state = has_state,
            .state = state,
            .state_len = state_len,
        };
        int len = us_event_encode(&ev, buf, sizeof(buf));
        if (len < 0) {
            *err = RD_KAFKA_RESP_ERR__INVALID_ARG;
            return i;
        }
        delivery *d = malloc(sizeof(*d));
        if (!d) abort();
        d->done = done;
        d->opaque = opaque;
        d->queued_ns = us_monotonic_ns();
        rd_kafka_resp_err_t e = rd_kafka_producev(
            p->rk, RD_KAFKA_V_TOPIC(p->cfg->kafka.topic),
            RD_KAFKA_V_KEY(users[i].user, users[i].len), RD_KAFKA_V_VALUE(buf, (size_t)len),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_OPAQUE(d), RD_KAFKA_V_END);
        if (e) {
            free(d);
            *err = e;
            return i;
        }
    }
    return n;
}
