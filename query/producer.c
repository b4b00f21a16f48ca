/* Implementation of the query service's producer.
 *
 * Delivery reports are served by a thread of ours that calls rd_kafka_poll(). message.timeout.ms
 * equals kafka.produce_timeout, so librdkafka reports every message, delivered or failed, within
 * that time: a waiting request never waits longer, and never hears "success" for a message the
 * broker did not acknowledge (acks=all, idempotent). */
#include "producer.h"

#include "kafka.h"
#include "log.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
};

void us_ack_waiter_init(us_ack_waiter *w)
{
    memset(w, 0, sizeof(*w));
    pthread_mutex_init(&w->mu, NULL);
}

void us_ack_waiter_destroy(us_ack_waiter *w)
{
    pthread_mutex_destroy(&w->mu);
}

void us_ack_waiter_add(us_ack_waiter *w)
{
    pthread_mutex_lock(&w->mu);
    w->pending++;
    pthread_mutex_unlock(&w->mu);
}

/* Marks one thing done, after recording a delivery failure into g (NULL: none). */
static void waiter_done(us_ack_waiter *w, us_ack_group *g, rd_kafka_resp_err_t err)
{
    void (*wake)(void *) = NULL;
    void *arg = NULL;
    pthread_mutex_lock(&w->mu);
    if (g && err) {
        if (g->failed++ == 0) g->err = err;
    }
    if (--w->pending == 0 && w->armed) {
        w->armed = 0;
        wake = w->wake;
        arg = w->arg;
    }
    pthread_mutex_unlock(&w->mu);
    /* Outside the lock, and without touching w again: once woken, the request may be answered
     * and freed (waiter included) by an HTTP thread at any moment. */
    if (wake) wake(arg);
}

void us_ack_waiter_done(us_ack_waiter *w)
{
    waiter_done(w, NULL, RD_KAFKA_RESP_ERR_NO_ERROR);
}

static void delivered(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    us_ack_group *g = m->_private;
    waiter_done(g->waiter, g, m->err);
}

static void *poll_thread(void *arg)
{
    us_producer *p = arg;
    while (!atomic_load(&p->stop)) rd_kafka_poll(p->rk, POLL_SLICE_MS);
    return NULL;
}

static void *topics_thread(void *arg)
{
    us_producer *p = arg;
    char err[512];
    while (!atomic_load(&p->stop)) {
        if (us_kafka_ensure_topics(p->rk, p->cfg, TOPIC_CREATE_TIMEOUT_MS, err, sizeof(err)) == 0)
            return NULL;
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
    rd_kafka_t *rk = us_kafka_new(RD_KAFKA_PRODUCER, conf, "producer", err, errlen);
    if (!rk) return NULL;
    us_producer *p = calloc(1, sizeof(*p));
    if (!p) abort();
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

int us_producer_send(us_producer *p, us_ack_group *g, us_event_type type, const us_user_ref *users,
                     size_t n, int64_t time_ms, const char *state, size_t state_len,
                     int has_state)
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
            pthread_mutex_lock(&g->waiter->mu);
            if (g->failed++ == 0) g->err = RD_KAFKA_RESP_ERR__INVALID_ARG;
            pthread_mutex_unlock(&g->waiter->mu);
            return -1;
        }
        /* Count first: the delivery report may arrive before producev returns. */
        us_ack_waiter_add(g->waiter);
        rd_kafka_resp_err_t err = rd_kafka_producev(
            p->rk, RD_KAFKA_V_TOPIC(p->cfg->kafka.topic),
            RD_KAFKA_V_KEY(users[i].user, users[i].len), RD_KAFKA_V_VALUE(buf, (size_t)len),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_OPAQUE(g), RD_KAFKA_V_END);
        if (err) {
            pthread_mutex_lock(&g->waiter->mu);
            g->waiter->pending--;
            if (g->failed++ == 0) g->err = err;
            pthread_mutex_unlock(&g->waiter->mu);
            us_warn("cannot queue %s event for user '%.*s': %s", us_event_type_name(type),
                    (int)users[i].len, users[i].user, rd_kafka_err2str(err));
            return -1;
        }
    }
    return 0;
}
