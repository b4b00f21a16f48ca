/* Waking librdkafka's fetcher once the worker drained its prefetch queue (worker/fetch_wake.c).
 *
 * The consumer loop (consumer.c) creates one waker per consumer, calls us_fetch_wake_check at the
 * start and at the end of every batch write, and stops the waker before it closes the consumer. */
#ifndef US_FETCH_WAKE_H
#define US_FETCH_WAKE_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>

typedef struct us_fetch_wake us_fetch_wake;

/* Starts the waker thread of consumer (which must outlive it). Reads the consumer's effective
 * queued.min.messages. Returns NULL with err set when the thread cannot be started. */
us_fetch_wake *us_fetch_wake_start(rd_kafka_t *consumer, char *err, size_t errlen);

/* Consumer loop only. Looks at the length of the consumer's local queue: when the queue was full
 * (at least queued.min.messages) since the last wake-up, or backlog is set (the batch just taken
 * was full), and it is now below queued.min.messages, asks the waker thread to wake the fetchers.
 * Never blocks. Accepts NULL. */
void us_fetch_wake_check(us_fetch_wake *fw, int backlog);

/* Stops and joins the thread (at most one wake-up request in flight, bounded by its timeout) and
 * frees the waker. Accepts NULL. */
void us_fetch_wake_stop(us_fetch_wake *fw);

#endif
