/* The user status store in Redis: key layout, client-side sharding and pipelined reads/writes.
 *
 * One us_redis belongs to one thread. It holds one connection per shard, opened lazily and
 * re-opened after any connection error. See docs/choices.md for the data model. */
#ifndef US_REDIS_STORE_H
#define US_REDIS_STORE_H

#include "coalesce.h"
#include "config.h"

#include <stddef.h>
#include <stdint.h>

typedef struct us_redis us_redis;

/* A parsed Redis address: "host:port" or "redis://[user:pass@]host:port[/db]". */
typedef struct us_redis_addr {
    char host[256];
    int port;
    char user[128];
    char password[256];
    int db;
} us_redis_addr;

/* Parses one address. Returns 0, or -1 with the reason in err. */
int us_redis_addr_parse(const char *text, us_redis_addr *addr, char *err, size_t errlen);

/* Jump consistent hash (Lamport & Veach): the bucket in [0, buckets) of key. */
int32_t us_jump_hash(uint64_t key, int32_t buckets);

/* The shard of a user among nshards: jump_hash(fnv1a_64(user), nshards), as Centrifugo places
 * users. */
size_t us_shard_for_user(const char *user, size_t user_len, size_t nshards);

/* Writes "<prefix>:<user>" into buf (cap bytes). Returns the key length, or -1 if it does not fit. */
int us_redis_key(const char *prefix, const char *user, size_t user_len, char *buf, size_t cap);

/* Creates a store for the configured topology without connecting. Returns NULL with err set on a
 * bad address or an unsupported topology. */
us_redis *us_redis_new(const us_config *cfg, char *err, size_t errlen);
void us_redis_free(us_redis *r);

/* Applies a coalesced batch: for each user DEL, then ZADD GT + PEXPIRE (state in MULTI/EXEC),
 * pipelined, one round trip per shard. Returns 0 once every shard acknowledged every write, or -1
 * with err set; then any subset may have been applied, and applying the batch again is safe
 * because every write is idempotent. */
int us_redis_apply(us_redis *r, const us_user_update *updates, size_t n, char *err, size_t errlen);

/* One user's stored status. */
typedef struct us_status {
    int64_t active; /* Unix seconds, or US_TIME_NONE. */
    int64_t online; /* Unix seconds, or US_TIME_NONE. */
    int has_state;
    size_t state_len;
    char state[US_STATE_MAX];
} us_status;

/* A user id to look up. */
typedef struct us_user_ref {
    const char *user;
    size_t len;
} us_user_ref;

/* Reads the statuses of n users into out[0..n) (same order), one pipelined round trip per shard.
 * Returns 0, or -1 with err set when a shard failed (a broken connection is retried once). */
int us_redis_get(us_redis *r, const us_user_ref *users, size_t n, us_status *out, char *err,
                 size_t errlen);

/* Registers the store's metrics (redirects followed, slot map refreshes, sentinel look-ups).
 * Call once at start-up, before any us_redis is used. */
void us_redis_metrics_register(void);

/* Makes every operation of r in progress on another thread fail at once (its sockets are shut
 * down) and every later one fail without connecting: for stopping a thread blocked on a frozen
 * Redis. The only function that may be called from a thread other than r's owner. */
void us_redis_interrupt(us_redis *r);

/* PING every shard (opening connections as needed). Returns 0, or -1 with err set. */
int us_redis_ping(us_redis *r, char *err, size_t errlen);

#endif
