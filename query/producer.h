/* The query service's event producer: turns HTTP updates into Kafka events and reports when the
 * broker acknowledged them. */
#ifndef US_PRODUCER_H
#define US_PRODUCER_H

#include "config.h"
#include "event.h"
#include "redis_store.h"

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stddef.h>

/* Someone waiting for the acknowledgements of one or more ack groups (an HTTP request). */
typedef struct us_ack_waiter {
    pthread_mutex_t mu;
    size_t pending;           /* Messages queued and not yet acknowledged or failed. */
    int armed;                /* Call wake when pending reaches 0. */
    void (*wake)(void *arg);  /* Called from the producer's thread after mu is released; the
                               * waiter may be freed as soon as it runs. */
    void *arg;
} us_ack_waiter;

/* The messages of one command; its outcome is known once the waiter's pending count is 0. */
typedef struct us_ack_group {
    us_ack_waiter *waiter;
    size_t failed;            /* Under waiter->mu. */
    rd_kafka_resp_err_t err;  /* First failure, under waiter->mu. */
} us_ack_group;

typedef struct us_producer us_producer;

/* Creates the idempotent producer and its delivery-report thread, and starts creating the topics
 * in the background. Returns NULL with err set. */
us_producer *us_producer_new(const us_config *cfg, char *err, size_t errlen);

/* Flushes outstanding messages (bounded by kafka.produce_timeout) and frees. Accepts NULL. */
void us_producer_free(us_producer *p);

void us_ack_waiter_init(us_ack_waiter *w);
void us_ack_waiter_destroy(us_ack_waiter *w);

/* Counts one more thing to wait for (an event, a read). */
void us_ack_waiter_add(us_ack_waiter *w);

/* Marks one counted thing done; wakes the waiter when it was the last and the waiter is armed.
 * The waiter may be freed by the woken side as soon as this wakes it: callers must not touch it
 * (or anything it guards) afterwards. */
void us_ack_waiter_done(us_ack_waiter *w);

/* Queues one event per user, at time_ms, into group g (whose waiter counts them). Returns 0, or -1
 * with g->err set when an event could not be queued (those queued before it still count). */
int us_producer_send(us_producer *p, us_ack_group *g, us_event_type type, const us_user_ref *users,
                     size_t n, int64_t time_ms, const char *state, size_t state_len,
                     int has_state);

#endif
