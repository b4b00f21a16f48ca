/* Acknowledgement tracking for one batch of asynchronous sends (the worker's dead-letter
 * messages), safe against reports that arrive after their batch was dropped.
 *
 * Each send carries an opaque token naming its entry *and the batch generation* it was made in.
 * us_acks_reset() starts a new batch and makes every older token stale, so a delivery report
 * that arrives late (the batch it belonged to was dropped or rewound, its slots reused) is
 * ignored instead of marking an entry of the new batch delivered.
 *
 * Not thread-safe: reports must be handed over on the thread that owns the tracker (librdkafka
 * calls delivery report callbacks from rd_kafka_poll() and rd_kafka_flush() of that thread). */
#ifndef US_ACKS_H
#define US_ACKS_H

#include <stddef.h>
#include <stdint.h>

typedef enum us_ack_state { US_ACK_PENDING, US_ACK_DELIVERED, US_ACK_FAILED } us_ack_state;

typedef struct us_acks {
    uint32_t generation;  /* Of the current batch; never 0. */
    size_t n, cap;        /* Entries in the current batch; most entries per batch. */
    unsigned char *state; /* us_ack_state of each entry. */
} us_acks;

/* Prepares a tracker for batches of at most cap entries (cap < 2^32). Returns 0, or -1 when out
 * of memory. */
int us_acks_init(us_acks *a, size_t cap);
/* Frees the tracker's memory; accepts a zeroed tracker. */
void us_acks_free(us_acks *a);

/* Starts a new batch: no entries, and every token handed out so far becomes stale. */
void us_acks_reset(us_acks *a);

/* Adds a pending entry to the current batch and returns its index (0, 1, ...). The caller keeps
 * the count below cap. */
size_t us_acks_add(us_acks *a);

/* Marks entry i pending again (before it is sent again) and returns the token to send with it. */
void *us_acks_send(us_acks *a, size_t i);

/* Records the outcome of the send that carried token. Returns 0, or -1 when the token belongs to
 * an earlier batch (or is out of range): then nothing is recorded. */
int us_acks_report(us_acks *a, const void *token, int delivered);

/* The state of entry i of the current batch. */
us_ack_state us_acks_state(const us_acks *a, size_t i);

/* Counts the current batch's entries still pending and those that failed. */
void us_acks_count(const us_acks *a, size_t *pending, size_t *failed);

#endif
