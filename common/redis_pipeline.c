/* Implementation of the pipelined operation executor.
 *
 * Rounds
 * ------
 * Every item's commands are appended to its node's output buffer, every node is flushed, then the
 * replies are read back item by item: a node answers its commands in order, so reading in the
 * order of appending pairs each reply with its item. Items redirected by the cluster (MOVED, ASK)
 * or refused while it reconfigures (TRYAGAIN, CLUSTERDOWN, LOADING) go round again, only those, up
 * to MAX_ROUNDS times. The models only send idempotent writes (ZADD GT, PEXPIRE, ZREM, DEL,
 * state replace), so sending a group twice is harmless.
 *
 * Errors
 * ------
 * A broken connection fails the whole operation (the caller retries it). An error reply is either
 * about the server (OOM, READONLY, ...: the operation fails, as when the connection breaks) or
 * about the item's keys (WRONGTYPE: only that item is refused, the others go on). Even after a
 * failure is known, every reply of the round is read, so connections stay in step. */
#include "redis_pipeline.h"

#include "int_text.h"
#include "log.h"
#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_ROUNDS 6      /* Rounds of redirects/retries one operation may take. */
#define RETRY_PAUSE_MS 20 /* First pause before retrying TRYAGAIN/CLUSTERDOWN; doubles. */

/* Where one item of an operation goes this round. */
typedef struct us_pipe_plan {
    uint16_t node;
    uint16_t ask_node; /* US_NO_NODE, or the ASK target for the next round. */
    uint32_t nreplies;
    uint32_t asking; /* Bit k: reply k is an ASKING acknowledgement. */
} plan;

struct us_pipe_sink {
    redisContext *c;
    us_pipeline *p;
    int asking;   /* Send ASKING first (the item was redirected by ASK). */
    int in_multi; /* Inside MULTI: the asking flag set before it still holds. */
    uint32_t count;
    uint32_t asking_bits;
};

static us_metric *m_moved, *m_ask, *m_tryagain;

void us_pipeline_metrics_register(void)
{
    m_moved = us_metric_counter("userstatus_redis_redirects_total{kind=\"moved\"}",
                                "Redis Cluster redirects followed, by kind.");
    m_ask = us_metric_counter("userstatus_redis_redirects_total{kind=\"ask\"}",
                              "Redis Cluster redirects followed, by kind.");
    m_tryagain = us_metric_counter("userstatus_redis_retries_total",
                                   "Commands retried after TRYAGAIN, CLUSTERDOWN or LOADING.");
    us_topology_metrics_register();
}

static void count(us_metric *m)
{
    if (m) us_metric_add(m, 1);
}

static int is_word(const char *argv0, size_t len, const char *word)
{
    return len == strlen(word) && strncasecmp(argv0, word, len) == 0;
}

/* Formats a command in RESP into the pipeline's scratch buffer and appends it: hiredis'
 * redisAppendCommandArgv formats through sdscatfmt, which costs more than the rest of the client
 * side of a bucket read together. */
static void append_argv(us_pipe_sink *s, int argc, const char **argv, const size_t *lens)
{
    us_pipeline *p = s->p;
    size_t need = 16;
    for (int i = 0; i < argc; i++) need += lens[i] + 32;
    if (need > p->fmt_cap) {
        free(p->fmt);
        p->fmt_cap = need * 2;
        p->fmt = malloc(p->fmt_cap);
        if (!p->fmt) abort();
    }
    char *o = p->fmt;
    *o++ = '*';
    o += us_u64_text(o, (uint64_t)argc);
    *o++ = '\r', *o++ = '\n';
    for (int i = 0; i < argc; i++) {
        *o++ = '$';
        o += us_u64_text(o, lens[i]);
        *o++ = '\r', *o++ = '\n';
        memcpy(o, argv[i], lens[i]);
        o += lens[i];
        *o++ = '\r', *o++ = '\n';
    }
    redisAppendFormattedCommand(s->c, p->fmt, (size_t)(o - p->fmt));
}

void us_pipe_cmd(us_pipe_sink *s, int argc, const char **argv, const size_t *lens)
{
    if (s->asking && !s->in_multi) {
        redisAppendCommand(s->c, "ASKING");
        if (s->count < 32) s->asking_bits |= 1u << s->count;
        s->count++;
    }
    append_argv(s, argc, argv, lens);
    s->count++;
    if (is_word(argv[0], lens[0], "MULTI")) s->in_multi = 1;
    if (is_word(argv[0], lens[0], "EXEC")) s->in_multi = 0;
}

static int starts(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

void us_pipe_cmd1(us_pipe_sink *s, const char *word)
{
    const char *argv[1] = {word};
    size_t lens[1] = {strlen(word)};
    us_pipe_cmd(s, 1, argv, lens);
}

int us_redis_error_is_server_wide(const char *e)
{
    static const char *const server[] = {
        "OOM",        "READONLY",    "BUSY",      "NOREPLICAS", "MASTERDOWN", "MISCONF",
        "LOADING",    "TRYAGAIN",    "CLUSTERDOWN", "NOAUTH",   "NOPERM",     "EXECABORT",
        "NOSCRIPT",   "ERR unknown command", "ERR syntax error", "ERR wrong number of arguments",
        "ERR max number of clients", "ERR Protocol error",
    };
    for (size_t i = 0; i < sizeof(server) / sizeof(server[0]); i++)
        if (starts(e, server[i])) return 1;
    return 0;
}

static void scratch_reserve(us_pipeline *p, size_t n)
{
    if (n <= p->cap) return;
    free(p->plans);
    free(p->todo);
    free(p->retry);
    p->plans = malloc(n * sizeof(plan));
    p->todo = malloc(n * sizeof(size_t));
    p->retry = malloc(n * sizeof(size_t));
    if (!p->plans || !p->todo || !p->retry) abort();
    p->cap = n;
}

void us_pipeline_release(us_pipeline *p)
{
    if (!p) return;
    free(p->plans);
    free(p->todo);
    free(p->retry);
    free(p->fmt);
    free(p->await_fds);
    memset(p, 0, sizeof(*p));
}

/* Calls fn for every error text in an item's replies, EXEC's per-command errors included, until fn
 * returns non-zero (which is returned). */
typedef int (*error_fn)(const char *e, void *arg);
static int each_error(redisReply **replies, size_t n, error_fn fn, void *arg)
{
    for (size_t k = 0; k < n; k++) {
        const redisReply *r = replies[k];
        int rc = 0;
        if (r->type == REDIS_REPLY_ERROR) {
            rc = fn(r->str, arg);
        } else if (r->type == REDIS_REPLY_ARRAY) {
            for (size_t i = 0; i < r->elements && !rc; i++)
                if (r->element[i]->type == REDIS_REPLY_ERROR) rc = fn(r->element[i]->str, arg);
        }
        if (rc) return rc;
    }
    return 0;
}

/* What one item's replies say. */
typedef enum verdict { V_OK, V_AGAIN, V_AGAIN_LATER, V_REFUSED, V_FATAL } verdict;

typedef struct judge {
    us_pipeline *p;
    uint16_t node;
    plan *plan;
    verdict v;
    const char *error; /* The refusing or fatal error. */
} judge;

static int judge_error(const char *e, void *arg)
{
    judge *j = arg;
    us_topology *t = j->p->topo;
    us_redirect rd;
    if (us_redirect_parse(e, strlen(e), &rd) == 0) {
        /* An empty host means the host of the node that answered. */
        const char *host = rd.host[0] ? rd.host : t->nodes[j->node].addr.host;
        uint16_t target = us_topology_node(t, host, rd.port);
        if (rd.kind == US_REDIRECT_MOVED) {
            us_topology_moved(t, rd.slot, target);
            count(m_moved);
        } else {
            j->plan->ask_node = target;
            count(m_ask);
        }
        j->v = V_AGAIN;
        return 1; /* A redirect anywhere in the group sends the whole group round again. */
    }
    if (starts(e, "TRYAGAIN") || starts(e, "CLUSTERDOWN") || starts(e, "LOADING")) {
        j->v = V_AGAIN_LATER;
        count(m_tryagain);
        return 1;
    }
    if (us_redis_error_is_server_wide(e)) {
        /* A replica answered: a failover happened. The connection is still read to the end of
         * the round, so only mark the master for a new look-up. */
        if (starts(e, "READONLY") && t->kind == US_TOPO_SENTINEL) t->resolve_needed = 1;
        if (j->v != V_FATAL) j->error = e;
        j->v = V_FATAL;
    } else if (j->v == V_OK) {
        j->v = V_REFUSED;
        j->error = e;
    }
    return 0; /* Keep looking: a later redirect still wins. */
}

int us_pipeline_run(us_pipeline *p, const us_pipe_op *op, char *err, size_t errlen)
{
    us_topology *t = p->topo;
    if (op->n == 0) return 0;
    if (us_topology_prepare(t, err, errlen) != 0) return -1;
    scratch_reserve(p, op->n);
    size_t ntodo = op->n;
    for (size_t k = 0; k < t->nnodes; k++) t->nodes[k].used = 0;
    for (size_t i = 0; i < op->n; i++) {
        p->todo[i] = i;
        p->plans[i].ask_node = US_NO_NODE;
    }
    int64_t pause_ms = RETRY_PAUSE_MS;

    for (int round = 0; round < MAX_ROUNDS && ntodo > 0; round++) {
        if (round > 0 && t->kind == US_TOPO_CLUSTER && t->refresh_needed) {
            char rerr[256];
            if (us_topology_refresh(t, rerr, sizeof(rerr)) != 0) us_warn("%s", rerr);
        }
        for (size_t k = 0; k < t->nnodes; k++) t->nodes[k].pending = 0;

        /* Append every item's commands to its node. */
        for (size_t q = 0; q < ntodo; q++) {
            size_t i = p->todo[q];
            plan *pl = &p->plans[i];
            size_t shard = 0;
            const char *key = "";
            size_t klen = 0;
            op->route(op->ctx, i, &shard, &key, &klen);
            uint16_t idx = pl->ask_node != US_NO_NODE ? pl->ask_node
                                                      : us_topology_route(t, shard, key, klen);
            if (idx == US_NO_NODE || idx >= t->nnodes) {
                snprintf(err, errlen, "redis cluster: no master serves slot %u (key '%.*s')",
                         us_cluster_slot(key, klen), (int)klen, key);
                t->refresh_needed = 1;
                us_topology_close_all(t);
                return -1;
            }
            if (us_topology_connect(t, idx, err, errlen) != 0) {
                us_topology_close_all(t);
                return -1;
            }
            us_redis_node *n = &t->nodes[idx];
            us_pipe_sink s = {n->c, p, pl->ask_node != US_NO_NODE, 0, 0, 0};
            op->append(op->ctx, i, &s);
            if (s.count > US_PIPE_MAX_GROUP_REPLIES) {
                snprintf(err, errlen, "redis: an item of %u commands exceeds the limit of %d",
                         s.count, US_PIPE_MAX_GROUP_REPLIES);
                us_topology_close_all(t);
                return -1;
            }
            pl->node = idx;
            pl->asking = s.asking_bits;
            pl->nreplies = s.count;
            pl->ask_node = US_NO_NODE;
            n->pending += s.count;
            n->used = 1;
        }

        /* Flush every node. */
        for (size_t k = 0; k < t->nnodes; k++) {
            us_redis_node *n = &t->nodes[k];
            int done = n->pending == 0;
            while (!done) {
                if (redisBufferWrite(n->c, &done) == REDIS_ERR) {
                    snprintf(err, errlen, "redis %s:%d: write failed: %s", n->addr.host,
                             n->addr.port, n->c->errstr);
                    us_topology_node_failed(t, (uint16_t)k);
                    us_topology_close_all(t);
                    return -1;
                }
            }
        }

        if (p->await) {
            size_t nfds = 0;
            if (p->await_cap < t->nnodes) {
                p->await_fds = realloc(p->await_fds, t->nnodes * sizeof(int));
                if (!p->await_fds) abort();
                p->await_cap = t->nnodes;
            }
            for (size_t k = 0; k < t->nnodes; k++)
                if (t->nodes[k].pending) p->await_fds[nfds++] = t->nodes[k].c->fd;
            p->await(p->await_arg, p->await_fds, nfds);
        }

        /* Read the replies back in the order they were appended. */
        size_t nretry = 0;
        int failed = 0, backoff = 0;
        for (size_t q = 0; q < ntodo; q++) {
            size_t i = p->todo[q];
            plan *pl = &p->plans[i];
            us_redis_node *n = &t->nodes[pl->node];
            redisReply *replies[US_PIPE_MAX_GROUP_REPLIES];
            uint32_t got = 0;
            for (uint32_t k = 0; k < pl->nreplies; k++) {
                void *reply = NULL;
                if (redisGetReply(n->c, &reply) != REDIS_OK || !reply) {
                    snprintf(err, errlen, "redis %s:%d: read failed: %s", n->addr.host,
                             n->addr.port, n->c->errstr[0] ? n->c->errstr : "no reply");
                    for (uint32_t j = 0; j < got; j++) freeReplyObject(replies[j]);
                    us_topology_node_failed(t, pl->node);
                    us_topology_close_all(t);
                    return -1;
                }
                if (k < 32 && (pl->asking & (1u << k))) { /* The ASKING acknowledgement. */
                    freeReplyObject(reply);
                    continue;
                }
                replies[got++] = reply;
            }

            judge j = {p, pl->node, pl, V_OK, NULL};
            each_error(replies, got, judge_error, &j);
            switch (j.v) {
            case V_AGAIN_LATER:
                backoff = 1;
                /* fall through */
            case V_AGAIN:
                p->retry[nretry++] = i;
                break;
            case V_REFUSED:
                if (op->refused) {
                    op->refused(op->ctx, i, j.error);
                    break;
                }
                /* fall through */
            case V_FATAL:
                if (!failed++)
                    snprintf(err, errlen, "redis %s:%d: command refused: %s", n->addr.host,
                             n->addr.port, j.error);
                break;
            case V_OK:
                if (op->consume) op->consume(op->ctx, i, replies, got);
                break;
            }
            for (uint32_t k = 0; k < got; k++) freeReplyObject(replies[k]);
        }
        if (failed) return -1;
        memcpy(p->todo, p->retry, nretry * sizeof(size_t));
        ntodo = nretry;
        if (ntodo && backoff) {
            struct timespec ts = {0, (long)pause_ms * 1000000};
            nanosleep(&ts, NULL);
            pause_ms *= 2;
        }
    }
    if (ntodo > 0) {
        snprintf(err, errlen, "redis: %zu item(s) still redirected or refused after %d rounds",
                 ntodo, MAX_ROUNDS);
        return -1;
    }
    return 0;
}

int us_pipeline_wait_replicas(us_pipeline *p, int replicas, int64_t timeout_ms, char *err,
                              size_t errlen)
{
    us_topology *t = p->topo;
    char want[16], timeout[24];
    snprintf(want, sizeof(want), "%d", replicas);
    snprintf(timeout, sizeof(timeout), "%lld", (long long)timeout_ms);
    for (size_t i = 0; i < t->nnodes; i++) {
        us_redis_node *n = &t->nodes[i];
        if (!n->used || !n->c) continue;
        const char *argv[3] = {"WAIT", want, timeout};
        redisReply *reply = us_redis_command(n->c, &n->addr, 3, argv, err, errlen);
        if (!reply) {
            us_topology_node_failed(t, (uint16_t)i);
            return -1;
        }
        long long acked = reply->type == REDIS_REPLY_INTEGER ? reply->integer : -1;
        freeReplyObject(reply);
        if (acked < replicas) {
            snprintf(err, errlen,
                     "redis %s:%d: only %lld of %d replicas acknowledged the writes within %lld ms "
                     "(user_status.redis_wait_replicas)",
                     n->addr.host, n->addr.port, acked, replicas, (long long)timeout_ms);
            return -1;
        }
    }
    return 0;
}
