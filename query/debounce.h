/* Per-user debouncing of "active" events: at most one per user per interval.
 *
 * A fixed table of slots, each remembering one user (by a keyed hash, so that clients cannot craft
 * ids that collide with another user's), when an event for it was last sent
 * and which state that event set. Memory is bounded; two users sharing a slot only cost an extra
 * event, never a lost one. Thread-safe. */
#ifndef US_DEBOUNCE_H
#define US_DEBOUNCE_H

#include <stddef.h>
#include <stdint.h>

#define US_DEBOUNCE_SLOTS 65536 /* Slots of the query service's table (24 bytes each). */

typedef struct us_debounce us_debounce;

/* What us_debounce_claim took, so that us_debounce_release can give it back. */
typedef struct us_debounce_claim_t {
    size_t slot;
    uint64_t user_hash, state_hash;
    int64_t sent_ms;
    uint64_t prev_user_hash, prev_state_hash; /* The slot before the claim. */
    int64_t prev_sent_ms;
} us_debounce_claim_t;

/* A table of nslots slots (rounded up to a power of two) for interval_ms; interval_ms 0 disables
 * debouncing (every claim succeeds, no table is allocated). */
us_debounce *us_debounce_new(size_t nslots, int64_t interval_ms);

/* Accepts NULL. */
void us_debounce_free(us_debounce *d);

/* Decides whether an "active" event for user, carrying state when has_state, must be sent at
 * now_ms (a monotonic clock). Returns 1 and records the event in *claim's slot when it must;
 * returns 0 when an event for the same user was sent less than the interval ago and this one would
 * change nothing (no state, or the same state as the one sent). */
int us_debounce_claim(us_debounce *d, const char *user, size_t len, const char *state,
                      size_t state_len, int has_state, int64_t now_ms, us_debounce_claim_t *claim);

/* Undoes a successful claim whose event could not be delivered, so that the next call sends
 * again. Does nothing when another claim has taken the slot since. */
void us_debounce_release(us_debounce *d, const us_debounce_claim_t *claim);

#endif
