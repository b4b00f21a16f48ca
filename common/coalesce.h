/* Per-user coalescing of a batch of events into at most one delete and one max-merge per user. */
#ifndef US_COALESCE_H
#define US_COALESCE_H

#include "event.h"
#include "hash.h" /* us_fnv1a64, which batching hashes users with. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define US_TIME_NONE (-1) /* No time of this kind in the batch. */

/* What one batch does to one user. Applying it -- DEL when del is set, then max-merge active and
 * online, then replace the state when has_state -- leaves Redis exactly as applying the user's
 * events of the batch one by one would. */
typedef struct us_user_update {
    const char *user; /* Points into the event's buffer; the caller keeps it alive. */
    size_t user_len;
    bool del;
    int64_t active; /* Unix seconds, or US_TIME_NONE. */
    int64_t online; /* Unix seconds, or US_TIME_NONE. */
    bool has_state;
    const char *state; /* Points into the event's buffer. */
    size_t state_len;
} us_user_update;

typedef struct us_batch {
    us_user_update *updates; /* In order of each user's first event. */
    size_t count;
    size_t capacity; /* Most distinct users; us_batch_add fails beyond it. */
    uint32_t *slots; /* Open-addressing index: 0 empty, else updates index + 1. */
    size_t nslots;   /* Power of two, at least twice capacity. */
} us_batch;

/* Prepares a batch for up to capacity distinct users. Returns 0, or -1 when out of memory. */
int us_batch_init(us_batch *b, size_t capacity);
void us_batch_free(us_batch *b);

/* Forgets every update, keeping the memory. */
void us_batch_reset(us_batch *b);

/* Adds one decoded event whose time, already resolved and clamped, is time_s Unix seconds.
 * Returns 0, or -1 when the batch already holds capacity users and this one is new. */
int us_batch_add(us_batch *b, const us_event *ev, int64_t time_s);

/* The index in b->updates of the user's update, or -1 when the batch has none. */
long us_batch_find(const us_batch *b, const char *user, size_t user_len);

#endif
