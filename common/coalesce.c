/* Implementation of per-user coalescing.
 *
 * Events of one user arrive in order (one partition). A delete cancels everything before it, so a
 * user's batch reduces to: "was there a delete", then the maximum active and online time and the
 * last state among the events after the last delete. The index is an open-addressing hash table
 * sized once, so adding an event never allocates. */
#include "coalesce.h"

#include <stdlib.h>
#include <string.h>

int us_batch_init(us_batch *b, size_t capacity)
{
    memset(b, 0, sizeof(*b));
    size_t nslots = 16;
    while (nslots < capacity * 2) nslots <<= 1;
    b->updates = calloc(capacity ? capacity : 1, sizeof(*b->updates));
    b->slots = calloc(nslots, sizeof(*b->slots));
    if (!b->updates || !b->slots) {
        us_batch_free(b);
        return -1;
    }
    b->capacity = capacity;
    b->nslots = nslots;
    return 0;
}

void us_batch_free(us_batch *b)
{
    if (!b) return;
    free(b->updates);
    free(b->slots);
    memset(b, 0, sizeof(*b));
}

void us_batch_reset(us_batch *b)
{
    /* Clearing only the used slots keeps reset proportional to the batch, not the table. */
    for (size_t i = 0; i < b->count; i++) {
        size_t mask = b->nslots - 1;
        size_t s = us_fnv1a64(b->updates[i].user, b->updates[i].user_len) & mask;
        while (b->slots[s] != 0) {
            b->slots[s] = 0;
            s = (s + 1) & mask;
        }
    }
    b->count = 0;
}

int us_batch_add(us_batch *b, const us_event *ev, int64_t time_s)
{
    size_t mask = b->nslots - 1;
    size_t s = us_fnv1a64(ev->user, ev->user_len) & mask;
    us_user_update *u = NULL;
    while (b->slots[s] != 0) {
        us_user_update *c = &b->updates[b->slots[s] - 1];
        if (c->user_len == ev->user_len && memcmp(c->user, ev->user, ev->user_len) == 0) {
            u = c;
            break;
        }
        s = (s + 1) & mask;
    }
    if (!u) {
        if (b->count == b->capacity) return -1;
        u = &b->updates[b->count++];
        b->slots[s] = (uint32_t)b->count;
        memset(u, 0, sizeof(*u));
        u->user = ev->user;
        u->user_len = ev->user_len;
        u->active = US_TIME_NONE;
        u->online = US_TIME_NONE;
    }

    switch (ev->type) {
    case US_EVENT_DELETE:
        u->del = true;
        u->active = US_TIME_NONE;
        u->online = US_TIME_NONE;
        u->has_state = false;
        return 0;
    case US_EVENT_ACTIVE:
        if (time_s > u->active) u->active = time_s;
        break;
    case US_EVENT_ONLINE:
        if (time_s > u->online) u->online = time_s;
        break;
    }
    if (ev->has_state) {
        u->has_state = true;
        u->state = ev->state;
        u->state_len = ev->state_len;
    }
    return 0;
}

long us_batch_find(const us_batch *b, const char *user, size_t user_len)
{
    size_t mask = b->nslots - 1;
    for (size_t s = us_fnv1a64(user, user_len) & mask; b->slots[s] != 0; s = (s + 1) & mask) {
        const us_user_update *c = &b->updates[b->slots[s] - 1];
        if (c->user_len == user_len && memcmp(c->user, user, user_len) == 0)
            return (long)(b->slots[s] - 1);
    }
    return -1;
}
