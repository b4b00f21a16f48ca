/* The query service's event producer: turns API commands into Kafka events and reports, per
 * message, when the broker acknowledged (or refused) it. */
#ifndef US_PRODUCER_H
#define US_PRODUCER_H

#include "config.h"
#include "event.h"
#include "redis_store.h"

#include <librdkafka/rdkafka.h>
#include <stddef.h>

/* Called once per queued message, from the producer's delivery-report thread: err is
 * RD_KAFKA_RESP_ERR_NO_ERROR when the broker acknowledged it (acks=all). */
typedef void (*us_delivery_fn)(void *opaque, rd_kafka_resp_err_t err);

typedef struct us_producer us_producer;

/* Creates the idempotent producer and its delivery-report thread, and starts warming up in the
 * background: topics created when missing, the topic's metadata (partition leaders) fetched. Until
 * then us_producer_ready() is 0. Returns NULL with err set. */
us_producer *us_producer_new(const us_config *cfg, char *err, size_t errlen);

/* Flushes outstanding messages (bounded by kafka.produce_timeout) and frees. Accepts NULL. */
void us_producer_free(us_producer *p);

/* 1 once the topic's metadata is known, so the first event does not wait for it. */
int us_producer_ready(const us_producer *p);

/* Queues one event per user, at time_ms. Each queued message is reported to done(opaque, err)
 * exactly once, possibly before this returns. Returns how many were queued: users[0..ret); when
 * fewer than n, *err says why the next one was not (the rest are not reported). */
size_t us_producer_send(us_producer *p, us_event_type type, const us_user_ref *users, size_t n,
                        int64_t time_ms, const char *state, size_t state_len, int has_state,
                        us_delivery_fn done, void *opaque, rd_kafka_resp_err_t *err);

#endif
