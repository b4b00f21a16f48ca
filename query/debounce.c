/* Implementation of per-user debouncing (see debounce.h).
 *
 * Slot choice and identity use the 64-bit FNV-1a hash of the user id: the low bits pick the slot,
 * the whole hash identifies the user in it. A slot also keeps the hash of the last state sent for
 * its user (STATE_UNKNOWN when no event since the slot was taken carried one), because an event
 * that changes the state must never be suppressed: only repeats that would change nothing are.
 *
 * One mutex guards the table: the critical section is a few loads and stores, and the query
 * service has a handful of HTTP threads. */
#include "debounce.h"

#include "coalesce.h"

#include <pthread.h>
#include <stdlib.h>

#define STATE_UNKNOWN 0      /* No state known for the slot's user. */
#define STATE_HASH_SALT 0x5a /* Prefix byte so that a state never hashes to STATE_UNKNOWN. */

typedef struct slot {
    uint64_t user_hash; /* 0: empty. */
    uint64_t state_hash;
    int64_t sent_ms;
} slot;

struct us_debounce {
    int64_t interval_ms;
    size_t mask; /* Slots - 1; the count is a power of two. */
    slot *slots;
    pthread_mutex_t mu;
};

us_debounce *us_debounce_new(size_t nslots, int64_t interval_ms)
{
    us_debounce *d = calloc(1, sizeof(*d));
    if (!d) abort();
    d->interval_ms = interval_ms;
    pthread_mutex_init(&d->mu, NULL);
    if (interval_ms <= 0) return d;
    size_t n = 1;
    while (n < nslots)
        n <<= 1;
    d->mask = n - 1;
    d->slots = calloc(n, sizeof(slot));
    if (!d->slots) abort();
    return d;
}

void us_debounce_free(us_debounce *d)
{
    if (!d) return;
    pthread_mutex_destroy(&d->mu);
    free(d->slots);
    free(d);
}

/* The hash of a state string, never STATE_UNKNOWN. */
static uint64_t state_hash(const char *state, size_t len)
{
    uint64_t h = us_fnv1a64(state, len) ^ ((uint64_t)STATE_HASH_SALT << 56);
    return h == STATE_UNKNOWN ? 1 : h;
}

int us_debounce_claim(us_debounce *d, const char *user, size_t len, const char *state,
                      size_t state_len, int has_state, int64_t now_ms, us_debounce_claim_t *claim)
{
    claim->slot = (size_t)-1; /* Nothing to release unless a slot is taken below. */
    if (!d->slots) return 1;
    uint64_t uh = us_fnv1a64(user, len);
    if (uh == 0) uh = 1; /* 0 marks an empty slot. */
    uint64_t sh = has_state ? state_hash(state, state_len) : STATE_UNKNOWN;

    pthread_mutex_lock(&d->mu);
    slot *s = &d->slots[uh & d->mask];
    int same_user = s->user_hash == uh;
    if (same_user && now_ms - s->sent_ms < d->interval_ms && (!has_state || s->state_hash == sh)) {
        pthread_mutex_unlock(&d->mu);
        return 0;
    }
    claim->slot = (size_t)(uh & d->mask);
    claim->prev_user_hash = s->user_hash;
    claim->prev_state_hash = s->state_hash;
    claim->prev_sent_ms = s->sent_ms;
    /* An event without state leaves the user's state as it was. */
    s->state_hash = has_state ? sh : same_user ? s->state_hash : STATE_UNKNOWN;
    s->user_hash = uh;
    s->sent_ms = now_ms;
    claim->user_hash = s->user_hash;
    claim->state_hash = s->state_hash;
    claim->sent_ms = s->sent_ms;
    pthread_mutex_unlock(&d->mu);
    return 1;
}

void us_debounce_release(us_debounce *d, const us_debounce_claim_t *claim)
{
    if (!d->slots || claim->slot == (size_t)-1) return;
    pthread_mutex_lock(&d->mu);
    slot *s = &d->slots[claim->slot];
    if (s->user_hash == claim->user_hash && s->state_hash == claim->state_hash &&
        s->sent_ms == claim->sent_ms) {
        s->user_hash = claim->prev_user_hash;
        s->state_hash = claim->prev_state_hash;
        s->sent_ms = claim->prev_sent_ms;
    }
    pthread_mutex_unlock(&d->mu);
}
