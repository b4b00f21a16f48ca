/* Status models: how user statuses are laid out in Redis (keys, commands, replies).
 *
 * Two models sit behind one small interface, chosen by user_status.storage:
 *   "buckets"  (status_buckets.c, the default): users grouped into buckets by a hash of the id,
 *              two sorted sets and a hash per bucket, ~30 bytes per user;
 *   "per_user" (status_per_user.c): one sorted set per user, ~170 bytes per user.
 * Both keep the same promises: max-merge, expiry after the last update, state, delete, every
 * topology (docs/choices.md). The pipelining and routing are redis_pipeline.c's. */
#ifndef US_STATUS_MODEL_H
#define US_STATUS_MODEL_H

#include "coalesce.h"
#include "config.h"
#include "redis_pipeline.h"

#include <stddef.h>
#include <stdint.h>

/* One user's stored status. */
typedef struct us_status {
    int64_t active; /* Unix seconds, or US_TIME_NONE. */
    int64_t online; /* Unix seconds, or US_TIME_NONE. */
    int has_state;
    size_t state_len;
    char state[US_STATE_MAX];
} us_status;

/* Sets st to "no status". */
static inline void us_status_clear(us_status *st)
{
    st->active = st->online = US_TIME_NONE;
    st->has_state = 0;
    st->state_len = 0;
}

/* A user id to look up. */
typedef struct us_user_ref {
    const char *user;
    size_t len;
} us_user_ref;

typedef struct us_status_model us_status_model;

typedef struct us_status_model_ops {
    const char *name; /* The value of user_status.storage that selects it. */
    /* A model for cfg on a topology of nshards client-side shards; NULL with err set. */
    us_status_model *(*create)(const us_config *cfg, size_t nshards, char *err, size_t errlen);
    void (*destroy)(us_status_model *m);
    /* Writes a coalesced batch. Returns the number of users Redis refused (0 when all were
     * written), having set refused[i] = 1 for each and err to the first refusal; or -1 with err
     * set on a connection-level failure (then anything may have been applied; every write is
     * idempotent, so the batch can be applied again). */
    int (*apply)(us_status_model *m, us_pipeline *p, const us_user_update *updates, size_t n,
                 uint8_t *refused, char *err, size_t errlen);
    /* Reads n statuses into out (same order). Returns the number of users whose keys Redis
     * refused (such as WRONGTYPE: a key of ours that something else wrote), each reported absent,
     * with err set to the first refusal; or -1 with err set on a connection-level failure. */
    int (*get)(us_status_model *m, us_pipeline *p, const us_user_ref *users, size_t n,
               us_status *out, char *err, size_t errlen);
} us_status_model_ops;

extern const us_status_model_ops us_status_per_user;
extern const us_status_model_ops us_status_buckets;

/* ---------------------------------------------------------------------------------------------
 * Per-user model: key layout (pure, tested without Redis).
 * ------------------------------------------------------------------------------------------ */

/* Writes "<prefix>:<user>" into buf (cap bytes). Returns the key length, or -1 if it does not
 * fit. */
int us_redis_key(const char *prefix, const char *user, size_t user_len, char *buf, size_t cap);

/* ---------------------------------------------------------------------------------------------
 * Bucket model: bucket choice and key layout (pure, tested without Redis).
 * ------------------------------------------------------------------------------------------ */

/* Users per bucket at the expected user count. Redis keeps a sorted set of up to 128 members as a
 * compact listpack, whose look-ups and inserts are linear: at 50 a bucket costs ~30 bytes per user
 * (28 at 100) for ~20% less Redis time per write than at 100, and the user count may grow 2.5x
 * past the expected one before buckets overflow. */
#define US_BUCKET_TARGET_MEMBERS 50
#define US_BUCKET_LISTPACK_MAX 128   /* Redis' zset-max-listpack-entries default. */

/* Buckets per shard so that expected_users users spread over nshards shards fill each bucket with
 * about US_BUCKET_TARGET_MEMBERS users. At least 1. */
uint32_t us_bucket_count(int64_t expected_users, size_t nshards);

/* The bucket of a user among nbuckets: Jump hash over a re-mixed FNV-1a of the id, independent of
 * the Jump hash that picks the shard, so every shard's buckets fill evenly. */
uint32_t us_bucket_of(const char *user, size_t user_len, uint32_t nbuckets);

/* Writes the key of one structure of a bucket into buf (cap bytes): "<prefix>:{<bucket>}:<kind>",
 * kind 'a' (active times), 'o' (online times) or 's' (states). The braces make the three keys of a
 * bucket share a cluster slot. Returns the length, or -1 if it does not fit. */
int us_bucket_key(const char *prefix, uint32_t bucket, char kind, char *buf, size_t cap);

/* The oldest time (Unix seconds) a visible user may have: a user whose latest active/online time
 * is older has expired. */
int64_t us_bucket_cutoff(int64_t now_ms, int64_t expire_ms);

/* Registers the bucket model's metrics (trims, bucket fill). */
void us_status_buckets_metrics_register(void);

#endif
