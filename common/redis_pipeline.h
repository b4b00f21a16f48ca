/* The pipelined operation executor: sends groups of commands to the nodes of a topology, one
 * round trip per node, and follows cluster redirects.
 *
 * An operation is a list of items, each a small group of commands for one node (all of an item's
 * keys share a cluster slot, so a MULTI/EXEC group is legal). The status models (status_*.c)
 * describe what to send for an item and what to make of its replies; this module does the rest. */
#ifndef US_REDIS_PIPELINE_H
#define US_REDIS_PIPELINE_H

#include "redis_topology.h"

#include <hiredis/hiredis.h>
#include <stddef.h>

#define US_PIPE_MAX_GROUP_REPLIES 32 /* Most commands one item may send (ASKING included). */

/* Where an item's commands are being appended. */
typedef struct us_pipe_sink us_pipe_sink;

/* Appends one command of the item (argv with lengths, as redisAppendCommandArgv). After an ASK
 * redirect, ASKING is sent first -- once before a MULTI, which keeps the asking flag for the whole
 * transaction, else before each command. */
void us_pipe_cmd(us_pipe_sink *s, int argc, const char **argv, const size_t *lens);

/* Appends a command of one word (MULTI, EXEC). */
void us_pipe_cmd1(us_pipe_sink *s, const char *word);

typedef struct us_pipe_op {
    size_t n; /* Items. */
    void *ctx;
    /* Where item i goes: its client-side shard (used with client-side shards) and one of its keys
     * (used for the cluster slot). *key stays valid until the next call. */
    void (*route)(void *ctx, size_t i, size_t *shard, const char **key, size_t *klen);
    /* Appends item i's commands with us_pipe_cmd. */
    void (*append)(void *ctx, size_t i, us_pipe_sink *s);
    /* Item i was answered without error: its replies in order (ASKING acknowledgements left out).
     * NULL: nothing to read. */
    void (*consume)(void *ctx, size_t i, redisReply **replies, size_t nreplies);
    /* Item i was refused with an error that concerns its keys (such as WRONGTYPE): error is the
     * reply text. NULL: any such error fails the whole operation. */
    void (*refused)(void *ctx, size_t i, const char *error);
} us_pipe_op;

/* Called after a round's commands are sent, before its replies are read: returns once each of
 * the nnodes sockets is readable, or when it gives up waiting (the reads then block, bounded by
 * the connections' I/O timeout). Lets an event loop serve other work while Redis answers. It must
 * not use the pipeline it is called from. */
typedef void (*us_pipe_await_fn)(void *arg, const int *fds, size_t nfds);

/* Scratch of the operations of one store; grown, never shrunk. */
typedef struct us_pipeline {
    us_topology *topo;
    us_pipe_await_fn await; /* NULL: read at once. */
    void *await_arg;
    int *await_fds;         /* Scratch: one per node. */
    size_t await_cap;
    struct us_pipe_plan *plans;
    size_t *todo, *retry;
    size_t cap;
    char *fmt; /* A command being formatted. */
    size_t fmt_cap;
} us_pipeline;

/* Runs op over p->topo. Returns 0 when every item was answered (consumed or refused), or -1 with
 * err set on a connection-level failure: no node for a slot, a broken connection, redirects or
 * TRYAGAIN beyond the round limit, or a server-wide error reply (OOM, READONLY, ...). After -1,
 * any subset of the items may have been applied, and no connection holds unread replies. */
int us_pipeline_run(us_pipeline *p, const us_pipe_op *op, char *err, size_t errlen);

/* Waits until `replicas` replicas of every node written since the last us_pipeline_run have the
 * writes (Redis WAIT, bounded by timeout_ms). Returns 0, or -1 with err set. */
int us_pipeline_wait_replicas(us_pipeline *p, int replicas, int64_t timeout_ms, char *err,
                              size_t errlen);

/* Whether an error reply describes the server (out of memory, read-only replica, loading, busy
 * script, unknown command...) rather than the keys of the command that got it. Server errors fail
 * an operation (and are retried by the worker); key errors refuse only the item. */
int us_redis_error_is_server_wide(const char *error);

/* Registers the executor's metrics (redirects, retries) and the topology's. */
void us_pipeline_metrics_register(void);

void us_pipeline_release(us_pipeline *p);

#endif
