/* Implementation of per-user debouncing (see debounce.h).
 *
 * Slot choice and identity use SipHash-2-4 of the user id under a key drawn at random per table:
 * the low bits pick the slot, the whole hash identifies the user in it. The hash is keyed because
 * user ids come from clients: with a public hash (FNV-1a) anyone can craft an id that collides with
 * another user's and so suppress that user's events; without the key, a collision is a 2^-64
 * accident, and costs one suppressed repeat at worst. A slot also keeps the hash of the last state sent for
 * its user (STATE_UNKNOWN when no event since the slot was taken carried one), because an event
 * that changes the state must never be suppressed: only repeats that would change nothing are.
 *
 * One mutex guards the table: the critical section is a few loads and stores, and the query
 * service has a handful of HTTP threads. */
#include "debounce.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define STATE_UNKNOWN 0      /* No state known for the slot's user. */
#define STATE_HASH_SALT 0x5a /* Prefix byte so that a state never hashes to STATE_UNKNOWN. */

typedef struct slot {
    uint64_t user_hash; /* 0: empty. */
    uint64_t state_hash;
    int64_t sent_ms;
} slot;

struct us_debounce {
    uint64_t key[2]; /* SipHash key. */
    int64_t interval_ms;
    size_t mask; /* Slots - 1; the count is a power of two. */
    slot *slots;
    pthread_mutex_t mu;
};

/* ---------------------------------------------------------------------------------------------
 * SipHash-2-4 (Aumasson & Bernstein), 64-bit output.
 * ------------------------------------------------------------------------------------------ */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                    \
    do {                                                                                            \
        v0 += v1;                                                                                   \
        v1 = ROTL(v1, 13);                                                                          \
        v1 ^= v0;                                                                                   \
        v0 = ROTL(v0, 32);                                                                          \
        v2 += v3;                                                                                   \
        v3 = ROTL(v3, 16);                                                                          \
        v3 ^= v2;                                                                                   \
        v0 += v3;                                                                                   \
        v3 = ROTL(v3, 21);                                                                          \
        v3 ^= v0;                                                                                   \
        v2 += v1;                                                                                   \
        v1 = ROTL(v1, 17);                                                                          \
        v1 ^= v2;                                                                                   \
        v2 = ROTL(v2, 32);                                                                          \
    } while (0)

static uint64_t siphash24(const uint64_t key[2], const void *data, size_t len)
{
    const unsigned char *in = data;
    uint64_t v0 = 0x736f6d6570736575ULL ^ key[0], v1 = 0x646f72616e646f6dULL ^ key[1];
    uint64_t v2 = 0x6c7967656e657261ULL ^ key[0], v3 = 0x7465646279746573ULL ^ key[1];
    size_t whole = len & ~(size_t)7;
    for (size_t i = 0; i < whole; i += 8) {
        uint64_t m = 0;
        for (int k = 7; k >= 0; k--) m = (m << 8) | in[i + (size_t)k];
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    for (size_t k = len & 7; k > 0; k--) b |= (uint64_t)in[whole + k - 1] << (8 * (k - 1));
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* Fills the table's key from the kernel's random pool (falling back to the clock and the table's
 * address, which still differ per process, if getrandom fails). */
static void new_key(us_debounce *d)
{
    if (getrandom(d->key, sizeof(d->key), 0) == (ssize_t)sizeof(d->key)) return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    d->key[0] = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ULL ^ (uint64_t)(uintptr_t)d;
    d->key[1] = (uint64_t)ts.tv_sec * 0xc2b2ae3d27d4eb4fULL;
}

us_debounce *us_debounce_new(size_t nslots, int64_t interval_ms)
{
    us_debounce *d = calloc(1, sizeof(*d));
    if (!d) abort();
    new_key(d);
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
static uint64_t state_hash(const us_debounce *d, const char *state, size_t len)
{
    uint64_t h = siphash24(d->key, state, len) ^ ((uint64_t)STATE_HASH_SALT << 56);
    return h == STATE_UNKNOWN ? 1 : h;
}

int us_debounce_claim(us_debounce *d, const char *user, size_t len, const char *state,
                      size_t state_len, int has_state, int64_t now_ms, us_debounce_claim_t *claim)
{
    claim->slot = (size_t)-1; /* Nothing to release unless a slot is taken below. */
    if (!d->slots) return 1;
    uint64_t uh = siphash24(d->key, user, len);
    if (uh == 0) uh = 1; /* 0 marks an empty slot. */
    uint64_t sh = has_state ? state_hash(d, state, state_len) : STATE_UNKNOWN;

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
