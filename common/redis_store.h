/* The user status store in Redis: the one interface both programs use.
 *
 * One us_redis belongs to one thread. It combines a topology (redis_topology.h: one instance,
 * client-side shards, Sentinel or Cluster), the pipelined executor (redis_pipeline.h) and a status
 * model (status_model.h: "buckets" or "per_user", by user_status.storage). See docs/choices.md for
 * the data model and docs/redis-topologies.md for the topologies. */
#ifndef US_REDIS_STORE_H
#define US_REDIS_STORE_H

#include "coalesce.h"
#include "config.h"
#include "hash.h"
#include "redis_conn.h"
#include "status_model.h"

#include <stddef.h>
#include <stdint.h>

typedef struct us_redis us_redis;

/* Creates a store for the configured topology and model without connecting. Returns NULL with err
 * set on a bad address, an unknown storage or an unsupported topology. */
us_redis *us_redis_new(const us_config *cfg, char *err, size_t errlen);
void us_redis_free(us_redis *r);

/* Applies a coalesced batch, pipelined, one round trip per node (see the model for the commands;
 * each user's or bucket's writes are one MULTI/EXEC with the TTL).
 *
 * Returns -1 with err set when a connection-level failure (Redis unreachable, a server-wide error
 * such as OOM or READONLY, redirects that do not settle) left the batch unfinished: any subset may
 * have been applied, and applying the batch again is safe because every write is idempotent.
 *
 * Otherwise returns the number of users whose writes Redis refused for a reason of their own keys
 * (WRONGTYPE: something else wrote that key): refused[i] (n flags, caller-allocated) is 1 for
 * each, and err holds the first refusal. Everyone else was written. With refused NULL, any refusal
 * makes the call return -1 instead. */
int us_redis_apply(us_redis *r, const us_user_update *updates, size_t n, uint8_t *refused,
                   char *err, size_t errlen);

/* Reads the statuses of n users into out[0..n) (same order), one pipelined round trip per node.
 * Users whose keys Redis refuses (WRONGTYPE: something else wrote a key of ours) read as absent,
 * counted in userstatus_redis_refused_reads_total. Returns 0, or -1 with err set when a node
 * failed (a broken connection is retried once). */
int us_redis_get(us_redis *r, const us_user_ref *users, size_t n, us_status *out, char *err,
                 size_t errlen);

/* Sets the hook that runs while the store waits for replies (us_pipe_await_fn). */
void us_redis_set_await(us_redis *r, us_pipe_await_fn fn, void *arg);

/* Registers the store's metrics (redirects followed, slot map refreshes, sentinel look-ups, bucket
 * trims and fill). Call once at start-up, before any us_redis is used. */
void us_redis_metrics_register(void);

/* Makes every operation of r in progress on another thread fail at once (its sockets are shut
 * down) and every later one fail without connecting: for stopping a thread blocked on a frozen
 * Redis. The only function that may be called from a thread other than r's owner. */
void us_redis_interrupt(us_redis *r);

/* PING every node (opening connections as needed). Returns 0, or -1 with err set. */
int us_redis_ping(us_redis *r, char *err, size_t errlen);

#endif
