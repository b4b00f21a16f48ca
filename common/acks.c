/* Acknowledgement tracking with batch generations (see acks.h). */
#include "acks.h"

#include <stdlib.h>

/* A token packs the generation (high 32 bits) and the entry index (low 32 bits) into the opaque
 * pointer librdkafka hands back in the delivery report: nothing to allocate or free per send. */
_Static_assert(sizeof(uintptr_t) >= 8, "acks tokens need 64-bit pointers");

#define TOKEN_INDEX_BITS 32

int us_acks_init(us_acks *a, size_t cap)
{
    a->generation = 1;
    a->n = 0;
    a->cap = cap;
    a->state = calloc(cap ? cap : 1, 1);
    return a->state ? 0 : -1;
}

void us_acks_free(us_acks *a)
{
    if (!a) return;
    free(a->state);
    a->state = NULL;
    a->n = a->cap = 0;
}

void us_acks_reset(us_acks *a)
{
    a->n = 0;
    a->generation++;
    if (a->generation == 0) a->generation = 1; /* 0 would make entry 0's token NULL. */
}

size_t us_acks_add(us_acks *a)
{
    a->state[a->n] = US_ACK_PENDING;
    return a->n++;
}

void *us_acks_send(us_acks *a, size_t i)
{
    a->state[i] = US_ACK_PENDING;
    return (void *)(((uintptr_t)a->generation << TOKEN_INDEX_BITS) | (uintptr_t)(uint32_t)i);
}

int us_acks_report(us_acks *a, const void *token, int delivered)
{
    uintptr_t t = (uintptr_t)token;
    uint32_t generation = (uint32_t)(t >> TOKEN_INDEX_BITS);
    size_t i = (size_t)(uint32_t)t;
    if (generation != a->generation || i >= a->n) return -1;
    a->state[i] = delivered ? US_ACK_DELIVERED : US_ACK_FAILED;
    return 0;
}

us_ack_state us_acks_state(const us_acks *a, size_t i)
{
    return (us_ack_state)a->state[i];
}

void us_acks_count(const us_acks *a, size_t *pending, size_t *failed)
{
    *pending = *failed = 0;
    for (size_t i = 0; i < a->n; i++) {
        *pending += a->state[i] == US_ACK_PENDING;
        *failed += a->state[i] == US_ACK_FAILED;
    }
}
