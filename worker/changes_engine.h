/* The worker's status change engine (worker/changes.c): turns each batch of events, and the
 * passing of time, into change messages on the changes topic (schemas/changes.md), at-least-once.
 *
 * The consumer loop (consumer.c) calls it at a few points: us_changes_add for every valid event
 * of a batch, us_changes_settle once the batch is in Redis (before offsets are stored),
 * us_changes_reset when the batch is released, us_changes_assign/revoke from the rebalance
 * callback, and us_changes_tick whenever no batch is in hand. Every function accepts a NULL
 * engine (changes disabled) and then does nothing. */
#ifndef US_CHANGES_ENGINE_H
#define US_CHANGES_ENGINE_H

#include "config.h"
#include "event.h"
#include "redis_store.h"

#include <librdkafka/rdkafka.h>
#include <signal.h>

typedef struct us_changes us_changes;

/* Creates the engine (its producer and its Redis connections, opened lazily). consumer is the
 * worker's consumer (for partition positions), stop its shutdown flag. Returns NULL with err set
 * on failure, and NULL with err empty when changes.enabled is false. */
us_changes *us_changes_new(const us_config *cfg, rd_kafka_t *consumer,
                           volatile sig_atomic_t *stop, char *err, size_t errlen);
void us_changes_free(us_changes *c);

/* For /health (from any thread): returns 1 when the engine's last step succeeded, else 0 with
 * the failure in msg. */
int us_changes_healthy(us_changes *c, char *msg, size_t msglen);

/* Creates the compacted changes topic when missing. Returns 0, or -1 with err set. */
int us_changes_ensure_topic(us_changes *c, int timeout_ms, char *err, size_t errlen);

/* Adds one valid event of the batch: m is its message (kept alive by the caller until
 * us_changes_reset), ev the decoded event, t_ms its resolved time. Never fails: the batch holds
 * at most worker.batch_size events. */
void us_changes_add(us_changes *c, const rd_kafka_message_t *m, const us_event *ev, int64_t t_ms);

/* Whether a failed step may be tried again (the consumer's write budget is not spent and the
 * partitions are still ours); what names the step for the log. */
typedef int (*us_changes_may_retry)(void *arg, const char *what);

/* Publishes the batch's transitions and records the users' new deadlines: reads the deadline
 * index, runs each user's events through the state machine, produces the changes and waits for
 * the broker's acknowledgement, then writes the index. Retries a failed step while may_retry(arg)
 * allows. store is the worker's status store (read for `state`). Call after the batch is in
 * Redis and before its offsets are stored. Returns 0; -1 when shutdown interrupted it; 1 when
 * may_retry said no (the caller rewinds the batch: replaying it reproduces the same changes). */
int us_changes_settle(us_changes *c, us_redis *store, us_changes_may_retry may_retry, void *arg);

/* Forgets the batch. */
void us_changes_reset(us_changes *c);

/* Partitions of the events topic given to or taken from this worker. */
void us_changes_assign(us_changes *c, const rd_kafka_topic_partition_list_t *parts);
void us_changes_revoke(us_changes *c, const rd_kafka_topic_partition_list_t *parts);

/* Fires due deadlines of the partitions this worker owns: at most every CHANGES_SCAN_INTERVAL_MS
 * and a bounded number of users per call. Call only while no batch is in hand. Failures are logged
 * and retried at the next call (nothing is lost: the index moves only after the broker acked). */
void us_changes_tick(us_changes *c, us_redis *store);

#endif
