/* Implementation of the worker's status change engine (the state machine: common/changes.c).
 *
 * The deadline index
 * ------------------
 * For every partition p of the events topic, two Redis keys hold the users of p whose status may
 * still change by itself (not offline, or offline with an activity time that still matters):
 *
 *   <prefix>#changes:status:{<topic>:<p>}     hash: user id -> us_presence text ("o <since> <a> <o>")
 *   <prefix>#changes:deadlines:{<topic>:<p>}  sorted set: user id, score = next deadline (Unix ms)
 *
 * ('#', not ':', so that no user id can name them: user keys are "<prefix>:<user id>".) Both keys
 * belong to the partition, so whoever owns the partition -- after a crash or a rebalance, the next
 * owner -- finds the deadlines there. Both get the user TTL (user_status.expire_interval) on every
 * write. The pair lives on the shard of "<topic>:<p>" (client-side shards), on the master the
 * sentinels name, or on the cluster master of its slot (the hash tag keeps both in one slot).
 *
 * Event path (us_changes_settle, once per batch, after the batch is in Redis)
 * ----------------------------------------------------------------------------
 * One HMGET per partition reads the previous presence of the batch's users; their events run
 * through the state machine in partition order (so the transitions do not depend on where batches
 * begin and end); the transitions are produced and acknowledged; then one HSET + ZADD (HDEL + ZREM
 * for users that are done) per partition records the new presences and deadlines. Only then does
 * the consumer store the batch's offsets. A crash anywhere before that replays the batch, which
 * reproduces the same transitions: consumers drop duplicates by (user, status, since).
 *
 * Deadline path (us_changes_tick, between batches)
 * ------------------------------------------------
 * Every CHANGES_SCAN_INTERVAL_MS, for each owned partition, ZRANGEBYSCORE takes up to
 * SCAN_MAX_PER_PARTITION users whose deadline passed, HMGET reads their presence, the status store
 * is read too (its times are merged: it is written before the index, so after a crash between the
 * two it is the newer one), the machine is advanced, the transitions are produced and
 * acknowledged, and the index is written. A deadline fires only when the partition's events up to
 * it have been consumed: when the consumer has reached the end of the partition (then up to now),
 * else up to the timestamp of the last message consumed from it -- so a new owner first replays
 * what the previous one left unconsumed, and a lagging consumer does not declare users offline
 * whose heartbeats are still in the queue. SCAN_GRACE_MS covers the staleness of the cached high
 * watermark. */
#include "changes_engine.h"

#include "changes.h"
#include "kafka.h"
#include "log.h"
#include "metrics.h"
#include "redis_topology.h"

#include <hiredis/hiredis.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHANGES_SCAN_INTERVAL_MS 100 /* Least time between two deadline scans. */
#define SCAN_GRACE_MS 500            /* Deadlines fire this long after they pass. */
#define SCAN_MAX_PER_PARTITION 500   /* Users per partition per scan. */
#define SCAN_MAX_PARTITIONS 16       /* Partitions scanned per call (round robin beyond). */
#define COMMITTED_TIMEOUT_MS 1000    /* Longest wait for a new partition's committed offset. */
#define RESOLVE_RETRY_MS 1000        /* Pause before asking again when the broker did not answer. */
#define MESSAGE_TIMEOUT_MS 30000     /* Producer delivery timeout of a change. */
#define FLUSH_SLICE_MS 200           /* rd_kafka_flush() slice while waiting for acks. */
#define RETRY_BACKOFF_MIN_MS 100
#define RETRY_BACKOFF_MAX_MS 2000
#define KEY_MAX 1024 /* Bytes of an index key. */
#define NO_CONN UINT16_MAX
#define CLUSTER_SLOTS 16384
#define MAX_SLOT_RANGES 4096
#define SCORE_MAX 24 /* Bytes of a decimal int64. */

typedef struct ch_user {
    const char *id; /* Into a message of the batch, or into a scan reply. */
    size_t len;
    int32_t partition;
    us_presence p;
    int known;        /* Has an entry in the index. */
    int64_t limit;     /* Scan: advance up to this time. */
    int64_t evaluated; /* Time the machine was advanced to (latest event, or the scan limit). */
    int64_t deadline; /* After the machine ran: next deadline or US_PRESENCE_NONE. */
    int has_out;      /* Produced at least one change. */
    us_status store;  /* The status store's view (for users with changes, or scanned). */
    char text[US_PRESENCE_TEXT_MAX];
    char score[SCORE_MAX];
} ch_user;

typedef struct ch_event {
    uint32_t user;
    us_event_type type;
    int64_t t;
} ch_event;

typedef struct ch_out {
    uint32_t user;
    us_transition tr;
} ch_out;

/* A partition of the events topic this worker owns. */
typedef struct ch_part {
    int32_t partition;
    int64_t next_offset;  /* After the last message consumed; -1 when none was. */
    int64_t last_ts;      /* Kafka timestamp (ms) of that message; -1 when unknown. */
    int64_t start_offset; /* Where consumption started (committed, else log start); -1 unknown. */
    int64_t end_offset;   /* End of the log when that was learnt (asked the broker). */
} ch_part;

typedef struct ix_conn {
    us_redis_addr addr;
    redisContext *ctx;
} ix_conn;

/* How the index keys of a partition find their Redis node. */
typedef enum ix_topo {
    IX_SHARDS,   /* One instance or client-side shards: Jump hash of "<topic>:<p>". */
    IX_SENTINEL, /* The master the sentinels name (asked again after errors and READONLY). */
    IX_CLUSTER,  /* The master of the keys' slot (both keys share the {<topic>:<p>} hash tag). */
} ix_topo;

struct us_changes {
    const us_config *cfg;
    rd_kafka_t *consumer;
    volatile sig_atomic_t *stop;
    us_presence_rules rules;
    rd_kafka_t *producer;
    _Atomic long failed; /* Deliveries failed in the current round. */

    ix_conn *conns;
    size_t nconns, cap_conns;
    struct timeval connect_tv, io_tv;
    ix_topo topo;
    us_redis_addr *seeds; /* Sentinels, or cluster seed nodes. */
    size_t nseeds;
    int resolve_needed;  /* Ask the sentinels / read the slot map before the next pipeline. */
    uint16_t *slot_conn; /* Cluster: connection of each slot, NO_CONN when unknown. */

    ch_user *users;
    size_t nusers, cap_users;
    uint32_t *slots; /* Open addressing over users: 0 empty, else index + 1. */
    size_t nslots;
    ch_event *events;
    size_t nevents, cap_events;
    ch_out *outs;
    size_t nouts, cap_outs;
    us_user_ref *refs;
    us_status *statuses;
    uint32_t *order; /* Users sorted by partition. */

    ch_part *parts;
    size_t nparts, cap_parts, scan_cursor;
    int64_t next_scan_ms;
    int64_t scan_backoff_ms; /* After a failed scan: wait this long (doubling) before the next. */
    int64_t next_resolve_ms; /* Earliest time to ask the broker about new partitions again. */

    /* Pipeline of the operation in progress. */
    const char **argv;
    size_t *argvlen;
    size_t cap_argv;
    size_t *cmd_conn;
    redisReply **replies;
    size_t ncmds, cap_cmds;
    char pl_err[768];
    redisReply **held; /* Scan replies whose strings the users point into. */
    size_t nheld;

    us_metric *m_event_changes, *m_deadline_changes, *m_errors;
    _Atomic int failing;  /* The last step failed (read by /health from another thread). */
    char last_error[256]; /* Its error; written before failing is set. */
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static void backoff(us_changes *c, int64_t *delay_ms)
{
    for (int64_t slept = 0; slept < *delay_ms && !*c->stop; slept += 50) sleep_ms(50);
    *delay_ms = *delay_ms * 2 > RETRY_BACKOFF_MAX_MS ? RETRY_BACKOFF_MAX_MS : *delay_ms * 2;
}

/* Records a failed step for /health and the metrics. */
static void step_failed(us_changes *c, const char *what, const char *err)
{
    us_metric_add(c->m_errors, 1);
    if (!atomic_load(&c->failing)) {
        snprintf(c->last_error, sizeof(c->last_error), "status changes: %s: %s", what, err);
        atomic_store(&c->failing, 1);
    }
}

static void steps_succeeded(us_changes *c)
{
    if (atomic_exchange(&c->failing, 0)) us_info("status changes: Redis and Kafka answer again");
}

int us_changes_healthy(us_changes *c, char *msg, size_t msglen)
{
    if (!c || !atomic_load(&c->failing)) return 1;
    snprintf(msg, msglen, "%s", c->last_error);
    return 0;
}

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        us_error("status changes: out of memory (%zu bytes)", n);
        abort();
    }
    return q;
}

/* ------------------------------------------------------------------------------------------------
 * Redis connections and pipelines */

static void index_key(const us_changes *c, const char *kind, int32_t partition, char *buf)
{
    snprintf(buf, KEY_MAX, "%s#changes:%s:{%s:%d}", c->cfg->user_status.redis_prefix, kind,
             c->cfg->kafka.topic, (int)partition);
}

/* The connection that serves partition's keys, or NO_CONN (cluster slot not known yet). */
static size_t conn_for_partition(const us_changes *c, int32_t partition)
{
    char key[KEY_MAX];
    switch (c->topo) {
    case IX_SENTINEL:
        return 0;
    case IX_CLUSTER:
        index_key(c, "status", partition, key);
        return c->slot_conn[us_cluster_slot(key, strlen(key))];
    case IX_SHARDS:
        break;
    }
    int n = snprintf(key, sizeof(key), "%s:%d", c->cfg->kafka.topic, (int)partition);
    return us_shard_for_user(key, (size_t)n, c->nconns);
}

static void apply_default_auth(us_redis_addr *a, const char *user, const char *password)
{
    if (a->password[0] == '\0' && password[0]) {
        snprintf(a->user, sizeof(a->user), "%s", user);
        snprintf(a->password, sizeof(a->password), "%s", password);
    }
}

static size_t conn_add(us_changes *c, const us_redis_addr *a)
{
    if (c->nconns == c->cap_conns) {
        c->cap_conns = c->cap_conns ? c->cap_conns * 2 : 8;
        c->conns = xrealloc(c->conns, c->cap_conns * sizeof(*c->conns));
    }
    memset(&c->conns[c->nconns], 0, sizeof(c->conns[0]));
    c->conns[c->nconns].addr = *a;
    return c->nconns++;
}

/* The connection to host:port, added (with the default credentials) when new. */
static size_t conn_find_or_add(us_changes *c, const char *host, int port)
{
    for (size_t i = 0; i < c->nconns; i++)
        if (c->conns[i].addr.port == port && strcmp(c->conns[i].addr.host, host) == 0) return i;
    if (c->nconns == c->cap_conns) {
        c->cap_conns = c->cap_conns ? c->cap_conns * 2 : 8;
        c->conns = xrealloc(c->conns, c->cap_conns * sizeof(*c->conns));
    }
    ix_conn *k = &c->conns[c->nconns];
    memset(k, 0, sizeof(*k));
    snprintf(k->addr.host, sizeof(k->addr.host), "%s", host);
    k->addr.port = port;
    apply_default_auth(&k->addr, c->cfg->user_status.redis_user,
                       c->cfg->user_status.redis_password);
    return c->nconns++;
}

static void conn_close(ix_conn *k)
{
    if (k->ctx) redisFree(k->ctx);
    k->ctx = NULL;
}

/* Runs a set-up command on a fresh connection. Returns 0, or -1 with c->pl_err set. */
static int setup_command(us_changes *c, ix_conn *k, int argc, const char **argv)
{
    redisReply *r = redisCommandArgv(k->ctx, argc, argv, NULL);
    int ok = r && r->type != REDIS_REPLY_ERROR;
    if (!ok)
        snprintf(c->pl_err, sizeof(c->pl_err), "redis %s:%d: %s failed: %s", k->addr.host,
                 k->addr.port, argv[0], r ? r->str : k->ctx->errstr);
    if (r) freeReplyObject(r);
    return ok ? 0 : -1;
}

static int conn_open(us_changes *c, ix_conn *k)
{
    if (k->ctx && k->ctx->err == 0) return 0;
    conn_close(k);
    k->ctx = redisConnectWithTimeout(k->addr.host, k->addr.port, c->connect_tv);
    if (!k->ctx || k->ctx->err) {
        snprintf(c->pl_err, sizeof(c->pl_err), "redis %s:%d: cannot connect: %s", k->addr.host,
                 k->addr.port, k->ctx ? k->ctx->errstr : "out of memory");
        conn_close(k);
        if (c->topo != IX_SHARDS) c->resolve_needed = 1;
        return -1;
    }
    redisSetTimeout(k->ctx, c->io_tv);
    if (k->addr.password[0]) {
        const char *argv[3] = {"AUTH", k->addr.user[0] ? k->addr.user : k->addr.password,
                               k->addr.password};
        if (setup_command(c, k, k->addr.user[0] ? 3 : 2, argv) != 0) goto fail;
    }
    if (k->addr.db) {
        char db[16];
        snprintf(db, sizeof(db), "%d", k->addr.db);
        const char *argv[2] = {"SELECT", db};
        if (setup_command(c, k, 2, argv) != 0) goto fail;
    }
    return 0;
fail:
    conn_close(k);
    return -1;
}

/* Sentinel: asks the sentinels which node is the master (conns[0]). Cluster: reads the slot map
 * from a seed or a known node. Returns 0, or -1 with c->pl_err set. */
static int resolve(us_changes *c)
{
    size_t ncand = c->nseeds + (c->topo == IX_CLUSTER ? c->nconns : 0);
    for (size_t i = 0; i < ncand; i++) {
        ix_conn probe = {.addr = i < c->nseeds ? c->seeds[i] : c->conns[i - c->nseeds].addr};
        if (conn_open(c, &probe) != 0) continue;
        redisReply *r;
        if (c->topo == IX_SENTINEL) {
            const char *argv[3] = {"SENTINEL", "get-master-addr-by-name",
                                   c->cfg->user_status.redis_sentinel_master_name};
            r = redisCommandArgv(probe.ctx, 3, argv, NULL);
            int ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
                     r->element[0]->type == REDIS_REPLY_STRING &&
                     r->element[1]->type == REDIS_REPLY_STRING;
            if (ok) {
                ix_conn *m = &c->conns[0];
                int port = atoi(r->element[1]->str);
                if (m->addr.port != port || strcmp(m->addr.host, r->element[0]->str) != 0) {
                    conn_close(m);
                    snprintf(m->addr.host, sizeof(m->addr.host), "%s", r->element[0]->str);
                    m->addr.port = port;
                }
            } else {
                snprintf(c->pl_err, sizeof(c->pl_err), "sentinel %s:%d: no master '%s'",
                         probe.addr.host, probe.addr.port,
                         c->cfg->user_status.redis_sentinel_master_name);
            }
            if (r) freeReplyObject(r);
            conn_close(&probe);
            if (ok) {
                c->pl_err[0] = '\0'; /* Sentinels that failed before do not matter now. */
                return 0;
            }
            continue;
        }
        static us_slot_range ranges[MAX_SLOT_RANGES]; /* Big; one engine per process. */
        const char *argv[2] = {"CLUSTER", "SLOTS"};
        r = redisCommandArgv(probe.ctx, 2, argv, NULL);
        int n = r ? us_cluster_parse_slots(r, ranges, MAX_SLOT_RANGES) : -1;
        if (r) freeReplyObject(r);
        conn_close(&probe);
        if (n <= 0) {
            snprintf(c->pl_err, sizeof(c->pl_err), "redis %s:%d: no usable CLUSTER SLOTS reply",
                     probe.addr.host, probe.addr.port);
            continue;
        }
        for (size_t slot = 0; slot < CLUSTER_SLOTS; slot++) c->slot_conn[slot] = NO_CONN;
        for (int j = 0; j < n; j++) {
            size_t k = conn_find_or_add(c, ranges[j].host, ranges[j].port);
            for (unsigned slot = ranges[j].first; slot <= ranges[j].last; slot++)
                c->slot_conn[slot] = (uint16_t)k;
        }
        c->pl_err[0] = '\0';
        return 0;
    }
    if (!c->pl_err[0])
        snprintf(c->pl_err, sizeof(c->pl_err), "no %s answered",
                 c->topo == IX_SENTINEL ? "sentinel" : "cluster node");
    return -1;
}

static void pl_reset(us_changes *c)
{
    for (size_t i = 0; i < c->ncmds; i++)
        if (c->replies[i]) freeReplyObject(c->replies[i]);
    c->ncmds = 0;
    c->pl_err[0] = '\0';
}

/* Makes room for one command of up to argc arguments in the argv scratch. */
static void pl_reserve_argv(us_changes *c, size_t argc)
{
    if (argc <= c->cap_argv) return;
    c->cap_argv = argc * 2;
    c->argv = xrealloc(c->argv, c->cap_argv * sizeof(*c->argv));
    c->argvlen = xrealloc(c->argvlen, c->cap_argv * sizeof(*c->argvlen));
}

/* Appends the command in c->argv[0..argc) to connection k (one already used by this pipeline). */
static void pl_cmd_conn(us_changes *c, size_t k, size_t argc)
{
    if (c->ncmds == c->cap_cmds) {
        c->cap_cmds = c->cap_cmds * 2;
        c->cmd_conn = xrealloc(c->cmd_conn, c->cap_cmds * sizeof(*c->cmd_conn));
        c->replies = xrealloc(c->replies, c->cap_cmds * sizeof(*c->replies));
    }
    size_t i = c->ncmds++;
    c->cmd_conn[i] = k;
    c->replies[i] = NULL;
    if (c->pl_err[0]) return;
    if (redisAppendCommandArgv(c->conns[k].ctx, (int)argc, c->argv, c->argvlen) != REDIS_OK)
        snprintf(c->pl_err, sizeof(c->pl_err), "redis %s:%d: %s", c->conns[k].addr.host,
                 c->conns[k].addr.port, c->conns[k].ctx->errstr);
}

/* Appends the command in c->argv[0..argc) to the connection of partition. A connection that cannot
 * be opened makes the whole pipeline fail in pl_run. */
static void pl_cmd(us_changes *c, int32_t partition, size_t argc)
{
    if (c->ncmds == c->cap_cmds) {
        c->cap_cmds = c->cap_cmds ? c->cap_cmds * 2 : 64;
        c->cmd_conn = xrealloc(c->cmd_conn, c->cap_cmds * sizeof(*c->cmd_conn));
        c->replies = xrealloc(c->replies, c->cap_cmds * sizeof(*c->replies));
    }
    size_t i = c->ncmds++;
    c->cmd_conn[i] = NO_CONN;
    c->replies[i] = NULL;
    if (c->pl_err[0]) return;
    if (c->resolve_needed) {
        if (resolve(c) != 0) return;
        c->resolve_needed = 0;
    }
    size_t k = conn_for_partition(c, partition);
    if (k == NO_CONN) {
        snprintf(c->pl_err, sizeof(c->pl_err), "no cluster node serves partition %d's slot",
                 (int)partition);
        c->resolve_needed = 1;
        return;
    }
    c->cmd_conn[i] = k;
    if (conn_open(c, &c->conns[k]) != 0) return;
    if (redisAppendCommandArgv(c->conns[k].ctx, (int)argc, c->argv, c->argvlen) != REDIS_OK)
        snprintf(c->pl_err, sizeof(c->pl_err), "redis %s:%d: %s", c->conns[k].addr.host,
                 c->conns[k].addr.port, c->conns[k].ctx->errstr);
}

/* Sends every appended command and reads every reply into c->replies (in append order). Returns
 * 0, or -1 with err set (connection error, or an error reply); connections that failed are closed
 * and reopened by the next pipeline. */
static int pl_run(us_changes *c, char *err, size_t errlen)
{
    for (size_t k = 0; k < c->nconns && !c->pl_err[0]; k++) {
        ix_conn *conn = &c->conns[k];
        if (!conn->ctx) continue;
        int done = 0;
        while (!done)
            if (redisBufferWrite(conn->ctx, &done) != REDIS_OK) {
                snprintf(c->pl_err, sizeof(c->pl_err), "redis %s:%d: %s", conn->addr.host,
                         conn->addr.port, conn->ctx->errstr);
                break;
            }
    }
    int io_error = c->pl_err[0] != '\0';
    for (size_t i = 0; i < c->ncmds && !io_error; i++) {
        ix_conn *conn = &c->conns[c->cmd_conn[i]];
        void *r = NULL;
        if (redisGetReply(conn->ctx, &r) != REDIS_OK || !r) {
            snprintf(c->pl_err, sizeof(c->pl_err), "redis %s:%d: %s", conn->addr.host,
                     conn->addr.port, conn->ctx->errstr);
            io_error = 1;
            break;
        }
        c->replies[i] = r;
        if (c->replies[i]->type != REDIS_REPLY_ERROR) continue;
        /* An error reply: keep reading (the connection stays in step); a redirect or a replica
         * means the topology changed under us. */
        const char *e = c->replies[i]->str;
        if (strncmp(e, "MOVED ", 6) == 0 || strncmp(e, "ASK ", 4) == 0 ||
            strncmp(e, "READONLY", 8) == 0 || strncmp(e, "CLUSTERDOWN", 11) == 0)
            c->resolve_needed = c->topo != IX_SHARDS;
        if (!c->pl_err[0])
            snprintf(c->pl_err, sizeof(c->pl_err), "redis %s:%d: %s", conn->addr.host,
                     conn->addr.port, e);
    }
    if (!c->pl_err[0]) return 0;
    snprintf(err, errlen, "%s", c->pl_err);
    if (io_error) {
        /* Replies still unread would pair with the next pipeline's commands. */
        for (size_t k = 0; k < c->nconns; k++) conn_close(&c->conns[k]);
        if (c->topo != IX_SHARDS) c->resolve_needed = 1;
    }
    pl_reset(c);
    return -1;
}

/* ------------------------------------------------------------------------------------------------
 * Users of the operation in progress */

static void users_reset(us_changes *c)
{
    for (size_t i = 0; i < c->nusers; i++) {
        size_t mask = c->nslots - 1;
        size_t s = us_fnv1a64(c->users[i].id, c->users[i].len) & mask;
        while (c->slots[s]) {
            c->slots[s] = 0;
            s = (s + 1) & mask;
        }
    }
    c->nusers = c->nevents = c->nouts = 0;
}

/* The user's index in c->users, added (offline, unknown) when new. */
static uint32_t user_find_or_add(us_changes *c, const char *id, size_t len, int32_t partition)
{
    size_t mask = c->nslots - 1, s = us_fnv1a64(id, len) & mask;
    while (c->slots[s]) {
        ch_user *u = &c->users[c->slots[s] - 1];
        if (u->len == len && memcmp(u->id, id, len) == 0) return c->slots[s] - 1;
        s = (s + 1) & mask;
    }
    ch_user *u = &c->users[c->nusers];
    memset(u, 0, sizeof(*u));
    u->id = id;
    u->len = len;
    u->partition = partition;
    u->evaluated = US_PRESENCE_NONE;
    us_presence_init(&u->p);
    c->slots[s] = (uint32_t)++c->nusers;
    return (uint32_t)(c->nusers - 1);
}

static us_changes *sort_ctx; /* qsort has no context argument; one engine per process. */

static int by_partition(const void *a, const void *b)
{
    int32_t pa = sort_ctx->users[*(const uint32_t *)a].partition;
    int32_t pb = sort_ctx->users[*(const uint32_t *)b].partition;
    return pa < pb ? -1 : pa > pb;
}

/* Sorts c->order by partition. */
static void order_users(us_changes *c)
{
    for (size_t i = 0; i < c->nusers; i++) c->order[i] = (uint32_t)i;
    sort_ctx = c;
    qsort(c->order, c->nusers, sizeof(*c->order), by_partition);
}

/* Reads the index entries of every user (HMGET per partition). Returns 0 or -1 with err. */
static int read_index(us_changes *c, char *err, size_t errlen)
{
    char key[KEY_MAX];
    pl_reset(c);
    pl_reserve_argv(c, c->nusers + 2);
    for (size_t i = 0; i < c->nusers;) {
        int32_t p = c->users[c->order[i]].partition;
        size_t j = i, argc = 2;
        index_key(c, "status", p, key);
        c->argv[0] = "HMGET";
        c->argvlen[0] = 5;
        c->argv[1] = key;
        c->argvlen[1] = strlen(key);
        for (; j < c->nusers && c->users[c->order[j]].partition == p; j++, argc++) {
            c->argv[argc] = c->users[c->order[j]].id;
            c->argvlen[argc] = c->users[c->order[j]].len;
        }
        pl_cmd(c, p, argc);
        i = j;
    }
    if (pl_run(c, err, errlen) != 0) return -1;
    size_t cmd = 0;
    for (size_t i = 0; i < c->nusers; cmd++) {
        int32_t p = c->users[c->order[i]].partition;
        redisReply *r = c->replies[cmd];
        for (size_t k = 0; i < c->nusers && c->users[c->order[i]].partition == p; i++, k++) {
            ch_user *u = &c->users[c->order[i]];
            us_presence_init(&u->p);
            u->known = 0;
            if (r->type != REDIS_REPLY_ARRAY || k >= r->elements) continue;
            redisReply *e = r->element[k];
            if (e->type != REDIS_REPLY_STRING) continue;
            u->known = 1;
            if (us_presence_parse(e->str, e->len, &u->p) != 0) {
                us_warn("status changes: index entry of user '%.*s' in partition %d is "
                        "malformed ('%.*s'); starting over from offline",
                        (int)u->len, u->id, (int)p, (int)e->len, e->str);
                us_presence_init(&u->p);
            }
        }
    }
    pl_reset(c);
    return 0;
}

/* Writes every user's presence and deadline (or removes users that are done), per partition:
 * HSET + ZADD + PEXPIRE, HDEL + ZREM. Returns 0 or -1 with err. */
static int write_index(us_changes *c, char *err, size_t errlen)
{
    char skey[KEY_MAX], dkey[KEY_MAX], ttl[SCORE_MAX];
    snprintf(ttl, sizeof(ttl), "%lld", (long long)c->cfg->user_status.expire_interval_ms);
    pl_reset(c);
    pl_reserve_argv(c, 2 * c->nusers + 2);
    for (size_t i = 0; i < c->nusers;) {
        int32_t p = c->users[c->order[i]].partition;
        size_t end = i;
        while (end < c->nusers && c->users[c->order[end]].partition == p) end++;
        index_key(c, "status", p, skey);
        index_key(c, "deadlines", p, dkey);
        size_t nset = 0, ndel = 0;
        for (size_t j = i; j < end; j++) {
            ch_user *u = &c->users[c->order[j]];
            u->deadline = us_presence_deadline(&c->rules, &u->p, u->evaluated);
            if (u->deadline != US_PRESENCE_NONE) {
                nset++;
                us_presence_format(&u->p, u->text, sizeof(u->text));
                snprintf(u->score, sizeof(u->score), "%lld", (long long)u->deadline);
            } else if (u->known) {
                ndel++;
            }
        }
        /* Each command reuses the argv scratch: hiredis formats it when it is appended. */
        static const char *const verbs[4] = {"HSET", "ZADD", "HDEL", "ZREM"};
        for (int v = 0; v < 4; v++) {
            int set = v < 2;
            if ((set ? nset : ndel) == 0) continue;
            size_t argc = 2;
            c->argv[0] = verbs[v];
            c->argvlen[0] = 4;
            c->argv[1] = v % 2 == 0 ? skey : dkey;
            c->argvlen[1] = strlen(c->argv[1]);
            for (size_t j = i; j < end; j++) {
                ch_user *u = &c->users[c->order[j]];
                if (set != (u->deadline != US_PRESENCE_NONE) || (!set && !u->known)) continue;
                if (v == 1) { /* ZADD key score member */
                    c->argv[argc] = u->score;
                    c->argvlen[argc++] = strlen(u->score);
                }
                c->argv[argc] = u->id;
                c->argvlen[argc++] = u->len;
                if (v == 0) { /* HSET key field value */
                    c->argv[argc] = u->text;
                    c->argvlen[argc++] = strlen(u->text);
                }
            }
            pl_cmd(c, p, argc);
        }
        if (nset) {
            for (int k = 0; k < 2; k++) {
                c->argv[0] = "PEXPIRE";
                c->argvlen[0] = 7;
                c->argv[1] = k ? dkey : skey;
                c->argvlen[1] = strlen(c->argv[1]);
                c->argv[2] = ttl;
                c->argvlen[2] = strlen(ttl);
                pl_cmd(c, p, 3);
            }
        }
        i = end;
    }
    if (c->ncmds == 0) return 0;
    /* With user_status.redis_wait_replicas, the index is as durable as the status store: WAIT
     * on every node written (a failover must not lose deadlines). */
    size_t nwrites = c->ncmds;
    int replicas = c->cfg->user_status.redis_wait_replicas;
    if (replicas > 0) {
        char n[16], timeout[SCORE_MAX];
        snprintf(n, sizeof(n), "%d", replicas);
        snprintf(timeout, sizeof(timeout), "%lld",
                 (long long)c->cfg->user_status.redis_wait_timeout_ms);
        for (size_t k = 0; k < c->nconns; k++) {
            int used = 0;
            for (size_t i = 0; i < nwrites && !used; i++) used = c->cmd_conn[i] == k;
            if (!used) continue;
            c->argv[0] = "WAIT";
            c->argvlen[0] = 4;
            c->argv[1] = n;
            c->argvlen[1] = strlen(n);
            c->argv[2] = timeout;
            c->argvlen[2] = strlen(timeout);
            pl_cmd_conn(c, k, 3);
        }
    }
    if (pl_run(c, err, errlen) != 0) return -1;
    for (size_t i = nwrites; i < c->ncmds; i++) {
        if (c->replies[i]->type == REDIS_REPLY_INTEGER && c->replies[i]->integer >= replicas)
            continue;
        snprintf(err, errlen, "redis %s:%d: WAIT %d: only %lld replica(s) acknowledged",
                 c->conns[c->cmd_conn[i]].addr.host, c->conns[c->cmd_conn[i]].addr.port,
                 replicas, (long long)c->replies[i]->integer);
        pl_reset(c);
        return -1;
    }
    pl_reset(c);
    for (size_t i = 0; i < c->nusers; i++)
        c->users[i].known = c->users[i].deadline != US_PRESENCE_NONE;
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * Publishing */

static void delivered(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    us_changes *c = opaque;
    if (m->err) {
        us_error("changes topic '%s': delivery failed: %s", c->cfg->changes.topic,
                 rd_kafka_err2str(m->err));
        atomic_fetch_add(&c->failed, 1);
    }
}

/* Reads the status store's view of every user with a change (for `state`, and the times the
 * index no longer has). Returns 0 or -1 with err. */
static int read_store(us_changes *c, us_redis *store, int all, char *err, size_t errlen)
{
    size_t n = 0;
    for (size_t i = 0; i < c->nusers; i++) {
        if (!all && !c->users[i].has_out) continue;
        c->refs[n++] = (us_user_ref){c->users[i].id, c->users[i].len};
    }
    if (n == 0) return 0;
    if (us_redis_get(store, c->refs, n, c->statuses, err, errlen) != 0) return -1;
    n = 0;
    for (size_t i = 0; i < c->nusers; i++)
        if (all || c->users[i].has_out) c->users[i].store = c->statuses[n++];
    return 0;
}

/* Produces every change of c->outs and waits until each is acknowledged. Returns 0, or -1 when a
 * delivery failed (err set) or shutdown interrupted the wait. */
static int produce_round(us_changes *c, char *err, size_t errlen)
{
    atomic_store(&c->failed, 0);
    for (size_t i = 0; i < c->nouts; i++) {
        const ch_out *o = &c->outs[i];
        const ch_user *u = &c->users[o->user];
        us_change ch = {.user = u->id, .user_len = u->len, .status = o->tr.status,
                        .since = o->tr.since};
        int deleted = o->tr.active == US_PRESENCE_NONE && o->tr.online == US_PRESENCE_NONE;
        ch.active = o->tr.active != US_PRESENCE_NONE ? o->tr.active / 1000
                    : deleted                        ? US_PRESENCE_NONE
                                                     : u->store.active;
        ch.online = o->tr.online != US_PRESENCE_NONE ? o->tr.online / 1000
                    : deleted                        ? US_PRESENCE_NONE
                                                     : u->store.online;
        if (ch.active < 0) ch.active = US_PRESENCE_NONE;
        if (ch.online < 0) ch.online = US_PRESENCE_NONE;
        if (u->store.has_state && u->store.state_len > 0) {
            ch.has_state = true;
            ch.state = u->store.state;
            ch.state_len = u->store.state_len;
        }
        char buf[US_CHANGE_ENCODED_MAX];
        int len = us_change_encode(&ch, buf, sizeof(buf));
        if (len < 0) {
            us_error("status changes: cannot encode the change of user '%.*s' (skipped)",
                     (int)u->len, u->id);
            continue;
        }
        for (;;) {
            rd_kafka_resp_err_t e = rd_kafka_producev(
                c->producer, RD_KAFKA_V_TOPIC(c->cfg->changes.topic),
                RD_KAFKA_V_KEY(u->id, u->len), RD_KAFKA_V_VALUE(buf, (size_t)len),
                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
            if (e == RD_KAFKA_RESP_ERR_NO_ERROR) break;
            if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
                snprintf(err, errlen, "changes topic '%s': cannot queue a change: %s",
                         c->cfg->changes.topic, rd_kafka_err2str(e));
                atomic_fetch_add(&c->failed, 1);
                break;
            }
            rd_kafka_poll(c->producer, 100);
        }
    }
    while (rd_kafka_outq_len(c->producer) > 0) {
        rd_kafka_flush(c->producer, FLUSH_SLICE_MS);
        if (*c->stop && rd_kafka_outq_len(c->producer) > 0) {
            snprintf(err, errlen, "shutting down before the changes were acknowledged");
            return -1;
        }
    }
    if (atomic_load(&c->failed) == 0) return 0;
    snprintf(err, errlen, "%ld change(s) not acknowledged by topic '%s'",
             atomic_load(&c->failed), c->cfg->changes.topic);
    return -1;
}

/* ------------------------------------------------------------------------------------------------
 * Event path */

void us_changes_add(us_changes *c, const rd_kafka_message_t *m, const us_event *ev, int64_t t_ms)
{
    if (!c) return;
    for (size_t i = 0; i < c->nparts; i++) {
        ch_part *p = &c->parts[i];
        if (p->partition != m->partition) continue;
        p->next_offset = m->offset + 1;
        int64_t ts = rd_kafka_message_timestamp(m, NULL);
        if (ts >= 0) p->last_ts = ts;
    }
    if (!ev) return; /* Dead-lettered: only its position counts. */
    if (c->nevents == c->cap_events) return; /* Cannot happen: capacity is the batch size. */
    uint32_t u = user_find_or_add(c, ev->user, ev->user_len, m->partition);
    c->events[c->nevents++] = (ch_event){u, ev->type, t_ms};
}

void us_changes_reset(us_changes *c)
{
    if (!c) return;
    users_reset(c);
}

static void out_push(us_changes *c, uint32_t user, const us_transition *tr, size_t n)
{
    if (c->nouts + n > c->cap_outs) {
        c->cap_outs = (c->nouts + n) * 2;
        c->outs = xrealloc(c->outs, c->cap_outs * sizeof(*c->outs));
    }
    for (size_t i = 0; i < n; i++) c->outs[c->nouts++] = (ch_out){user, tr[i]};
    if (n) c->users[user].has_out = 1;
}

/* Produces c->outs (after reading the store for them) and writes the index, each step retried
 * until it succeeds (retry) or tried once. Returns 0, or -1. */
static int publish_and_record(us_changes *c, us_redis *store, int scanned, int retry)
{
    char err[1024];
    int64_t delay = RETRY_BACKOFF_MIN_MS;
    if (c->nouts > 0 || scanned) {
        while (read_store(c, store, scanned, err, sizeof(err)) != 0) {
            step_failed(c, "reading the status store", err);
            us_error("status changes: reading the status store: %s%s", err,
                     retry ? "; retrying" : "");
            if (!retry || *c->stop) return -1;
            backoff(c, &delay);
        }
    }
    if (scanned) { /* The store is written first: after a crash it may be ahead of the index. */
        for (size_t i = 0; i < c->nusers; i++) {
            ch_user *u = &c->users[i];
            if (u->store.active >= 0 && (u->p.active == US_PRESENCE_NONE ||
                                         u->store.active > u->p.active / 1000))
                u->p.active = u->store.active * 1000;
            if (u->store.online >= 0 && (u->p.online == US_PRESENCE_NONE ||
                                         u->store.online > u->p.online / 1000))
                u->p.online = u->store.online * 1000;
            us_transition tr[US_PRESENCE_MAX_TRANSITIONS];
            out_push(c, (uint32_t)i, tr, us_presence_advance(&c->rules, &u->p, u->limit, tr));
            u->evaluated = u->limit;
        }
    }
    delay = RETRY_BACKOFF_MIN_MS;
    while (c->nouts > 0 && produce_round(c, err, sizeof(err)) != 0) {
        step_failed(c, "producing", err);
        if (*c->stop) return -1;
        us_error("status changes: %s%s", err, retry ? "; producing them again" : "");
        if (!retry) return -1;
        backoff(c, &delay);
    }
    us_metric_add(scanned ? c->m_deadline_changes : c->m_event_changes, c->nouts);
    delay = RETRY_BACKOFF_MIN_MS;
    while (write_index(c, err, sizeof(err)) != 0) {
        step_failed(c, "writing the deadline index", err);
        us_error("status changes: writing the deadline index: %s%s", err,
                 retry ? "; retrying (offsets held)" : "");
        if (!retry || *c->stop) return -1;
        backoff(c, &delay);
    }
    steps_succeeded(c);
    return 0;
}

int us_changes_settle(us_changes *c, us_redis *store)
{
    if (!c || c->nevents == 0) return 0;
    char err[1024];
    int64_t delay = RETRY_BACKOFF_MIN_MS;
    order_users(c);
    while (read_index(c, err, sizeof(err)) != 0) {
        step_failed(c, "reading the deadline index", err);
        us_error("status changes: reading the deadline index: %s; retrying (offsets held)", err);
        if (*c->stop) return -1;
        backoff(c, &delay);
    }
    c->nouts = 0;
    for (size_t i = 0; i < c->nevents; i++) {
        const ch_event *e = &c->events[i];
        ch_user *u = &c->users[e->user];
        us_transition tr[US_PRESENCE_MAX_TRANSITIONS];
        out_push(c, e->user, tr, us_presence_apply(&c->rules, &u->p, e->type, e->t, tr));
        if (e->t > u->evaluated) u->evaluated = e->t;
    }
    return publish_and_record(c, store, 0, 1);
}

/* ------------------------------------------------------------------------------------------------
 * Partitions and the deadline scan */

void us_changes_assign(us_changes *c, const rd_kafka_topic_partition_list_t *parts)
{
    if (!c) return;
    for (int i = 0; i < parts->cnt; i++) {
        if (strcmp(parts->elems[i].topic, c->cfg->kafka.topic) != 0) continue;
        if (c->nparts == c->cap_parts) {
            c->cap_parts = c->cap_parts ? c->cap_parts * 2 : 16;
            c->parts = xrealloc(c->parts, c->cap_parts * sizeof(*c->parts));
        }
        c->parts[c->nparts++] = (ch_part){parts->elems[i].partition, -1, -1, -1, -1};
    }
}

void us_changes_revoke(us_changes *c, const rd_kafka_topic_partition_list_t *parts)
{
    if (!c) return;
    for (int i = 0; i < parts->cnt; i++) {
        if (strcmp(parts->elems[i].topic, c->cfg->kafka.topic) != 0) continue;
        for (size_t j = 0; j < c->nparts; j++)
            if (c->parts[j].partition == parts->elems[i].partition) {
                c->parts[j] = c->parts[--c->nparts];
                break;
            }
    }
}

/* Learns, for newly assigned partitions, where consumption started (the committed offset, else
 * the start of the log) and where the log ended then -- asked from the broker, because the
 * consumer's cached end of a partition it owned before (say, before the last rebalance) can be
 * arbitrarily old. */
static void resolve_starts(us_changes *c)
{
    rd_kafka_topic_partition_list_t *list = NULL;
    for (size_t i = 0; i < c->nparts; i++) {
        if (c->parts[i].end_offset >= 0) continue;
        if (!list) list = rd_kafka_topic_partition_list_new((int)c->nparts);
        rd_kafka_topic_partition_list_add(list, c->cfg->kafka.topic, c->parts[i].partition);
    }
    if (!list) return;
    if (now_ms() < c->next_resolve_ms) {
        rd_kafka_topic_partition_list_destroy(list);
        return;
    }
    rd_kafka_resp_err_t e = rd_kafka_committed(c->consumer, list, COMMITTED_TIMEOUT_MS);
    for (int i = 0; !e && i < list->cnt; i++) {
        for (size_t j = 0; j < c->nparts; j++) {
            ch_part *p = &c->parts[j];
            if (p->partition != list->elems[i].partition) continue;
            int64_t lo, hi;
            e = rd_kafka_query_watermark_offsets(c->consumer, c->cfg->kafka.topic, p->partition,
                                                 &lo, &hi, COMMITTED_TIMEOUT_MS);
            if (e) break;
            p->end_offset = hi;
            if (list->elems[i].err == 0 && list->elems[i].offset >= 0)
                p->start_offset = list->elems[i].offset;
            else
                p->start_offset = lo;
        }
    }
    if (e) {
        us_warn("status changes: where new partitions start is not known yet (%s); their "
                "deadlines wait",
                rd_kafka_err2str(e));
        c->next_resolve_ms = now_ms() + RESOLVE_RETRY_MS;
    }
    rd_kafka_topic_partition_list_destroy(list);
}

/* Up to when p's deadlines may fire: now when every message of p up to the (cached) end of its
 * log is consumed, else the timestamp of the last message consumed; minus SCAN_GRACE_MS. Returns
 * US_PRESENCE_NONE when it cannot tell yet. */
static int64_t scan_limit(us_changes *c, const ch_part *p, int64_t now)
{
    int64_t lo, hi;
    if (p->end_offset < 0) return US_PRESENCE_NONE; /* Not resolved yet. */
    if (rd_kafka_get_watermark_offsets(c->consumer, c->cfg->kafka.topic, p->partition, &lo, &hi) !=
        0)
        hi = -1;
    if (p->end_offset > hi) hi = p->end_offset;
    int64_t pos = p->next_offset >= 0 ? p->next_offset : p->start_offset;
    if (pos < 0) return US_PRESENCE_NONE;
    if (pos >= hi) return now - SCAN_GRACE_MS;
    return p->last_ts >= 0 ? p->last_ts - SCAN_GRACE_MS : US_PRESENCE_NONE;
}

/* A scan failed: logs it and delays the next one (RETRY_BACKOFF_MIN_MS doubling up to
 * RETRY_BACKOFF_MAX_MS), so that a Redis outage neither floods the log nor stalls the consumer
 * loop on connection attempts every CHANGES_SCAN_INTERVAL_MS. */
static void scan_failed(us_changes *c, const char *what, const char *err)
{
    step_failed(c, what, err);
    c->scan_backoff_ms = c->scan_backoff_ms ? c->scan_backoff_ms * 2 : RETRY_BACKOFF_MIN_MS;
    if (c->scan_backoff_ms > RETRY_BACKOFF_MAX_MS) c->scan_backoff_ms = RETRY_BACKOFF_MAX_MS;
    c->next_scan_ms = now_ms() + c->scan_backoff_ms;
    us_error("status changes: %s: %s; next scan in %lld ms", what, err,
             (long long)c->scan_backoff_ms);
}

static void hold_free(us_changes *c)
{
    for (size_t i = 0; i < c->nheld; i++) freeReplyObject(c->held[i]);
    c->nheld = 0;
}

void us_changes_tick(us_changes *c, us_redis *store)
{
    if (!c || c->nparts == 0) return;
    int64_t now = now_ms();
    if (now < c->next_scan_ms) return;
    c->next_scan_ms = now + CHANGES_SCAN_INTERVAL_MS;
    resolve_starts(c);

    char err[1024], dkey[KEY_MAX], limit_text[SCORE_MAX], count[SCORE_MAX];
    int64_t limits[SCAN_MAX_PARTITIONS];
    int32_t scanned[SCAN_MAX_PARTITIONS];
    size_t nscan = 0;
    users_reset(c);
    pl_reset(c);
    pl_reserve_argv(c, 8);
    snprintf(count, sizeof(count), "%d", SCAN_MAX_PER_PARTITION);
    for (size_t k = 0; k < c->nparts && nscan < SCAN_MAX_PARTITIONS; k++) {
        const ch_part *p = &c->parts[(c->scan_cursor + k) % c->nparts];
        int64_t limit = scan_limit(c, p, now);
        if (limit == US_PRESENCE_NONE) continue;
        index_key(c, "deadlines", p->partition, dkey);
        snprintf(limit_text, sizeof(limit_text), "%lld", (long long)limit);
        const char *argv[7] = {"ZRANGEBYSCORE", dkey, "-inf", limit_text, "LIMIT", "0", count};
        for (int a = 0; a < 7; a++) {
            c->argv[a] = argv[a];
            c->argvlen[a] = strlen(argv[a]);
        }
        pl_cmd(c, p->partition, 7);
        limits[nscan] = limit;
        scanned[nscan++] = p->partition;
    }
    c->scan_cursor = c->nparts ? (c->scan_cursor + nscan) % c->nparts : 0;
    if (nscan == 0) return;
    if (pl_run(c, err, sizeof(err)) != 0) {
        scan_failed(c, "scanning deadlines", err);
        return;
    }
    /* The users point into the replies: keep them until the scan is done. */
    c->held = xrealloc(c->held, nscan * sizeof(*c->held));
    for (size_t i = 0; i < nscan; i++) {
        redisReply *r = c->held[c->nheld++] = c->replies[i];
        c->replies[i] = NULL;
        for (size_t j = 0; r->type == REDIS_REPLY_ARRAY && j < r->elements; j++) {
            if (r->element[j]->type != REDIS_REPLY_STRING || c->nusers == c->cap_users) continue;
            uint32_t u = user_find_or_add(c, r->element[j]->str, r->element[j]->len, scanned[i]);
            c->users[u].limit = limits[i];
        }
    }
    pl_reset(c);
    if (c->nusers == 0) {
        steps_succeeded(c);
        c->scan_backoff_ms = 0;
    }
    if (c->nusers > 0) {
        order_users(c);
        if (read_index(c, err, sizeof(err)) != 0) {
            scan_failed(c, "reading the deadline index", err);
        } else {
            /* Listed in the deadlines: remove them even when the hash lost them. */
            for (size_t i = 0; i < c->nusers; i++) c->users[i].known = 1;
            c->nouts = 0;
            if (publish_and_record(c, store, 1, 0) != 0)
                scan_failed(c, "publishing due deadlines", "see above");
            else
                c->scan_backoff_ms = 0;
        }
    }
    users_reset(c);
    hold_free(c);
}

/* ------------------------------------------------------------------------------------------------
 * Set-up */

int us_changes_ensure_topic(us_changes *c, int timeout_ms, char *err, size_t errlen)
{
    if (!c) return 0;
    return us_kafka_ensure_changes_topic(c->producer, c->cfg, timeout_ms, err, errlen);
}

static struct timeval ms_to_tv(int64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

us_changes *us_changes_new(const us_config *cfg, rd_kafka_t *consumer,
                           volatile sig_atomic_t *stop, char *err, size_t errlen)
{
    err[0] = '\0';
    if (!cfg->changes.enabled) return NULL;
    us_changes *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "status changes: out of memory");
        return NULL;
    }
    c->cfg = cfg;
    c->consumer = consumer;
    c->stop = stop;
    c->rules.offline_after_ms = cfg->changes.offline_after_ms;
    c->rules.away_after_ms = cfg->changes.away_after_ms;
    c->connect_tv = ms_to_tv(cfg->user_status.redis_connect_timeout_ms);
    c->io_tv = ms_to_tv(cfg->user_status.redis_io_timeout_ms);

    const us_strlist *seeds = NULL;
    if (cfg->user_status.redis_sentinel_address.count > 0) {
        c->topo = IX_SENTINEL;
        seeds = &cfg->user_status.redis_sentinel_address;
    } else if (cfg->user_status.redis_cluster_address.count > 0) {
        c->topo = IX_CLUSTER;
        seeds = &cfg->user_status.redis_cluster_address;
        c->slot_conn = malloc(CLUSTER_SLOTS * sizeof(*c->slot_conn));
        if (!c->slot_conn) {
            snprintf(err, errlen, "status changes: out of memory");
            goto fail;
        }
        for (size_t slot = 0; slot < CLUSTER_SLOTS; slot++) c->slot_conn[slot] = NO_CONN;
    }
    if (seeds) {
        c->resolve_needed = 1;
        c->nseeds = seeds->count;
        c->seeds = calloc(c->nseeds, sizeof(*c->seeds));
        for (size_t i = 0; c->seeds && i < c->nseeds; i++) {
            if (us_redis_addr_parse(seeds->items[i], &c->seeds[i], err, errlen) != 0) goto fail;
            if (c->topo == IX_SENTINEL)
                apply_default_auth(&c->seeds[i], cfg->user_status.redis_sentinel_user,
                                   cfg->user_status.redis_sentinel_password);
            else
                apply_default_auth(&c->seeds[i], cfg->user_status.redis_user,
                                   cfg->user_status.redis_password);
        }
        if (!c->seeds) {
            snprintf(err, errlen, "status changes: out of memory");
            goto fail;
        }
        if (c->topo == IX_SENTINEL) conn_find_or_add(c, "", 0); /* The master, once resolved. */
    } else {
        const us_strlist *addrs = us_config_redis_addresses(cfg);
        for (size_t i = 0; i < addrs->count; i++) {
            us_redis_addr a;
            if (us_redis_addr_parse(addrs->items[i], &a, err, errlen) != 0) goto fail;
            apply_default_auth(&a, cfg->user_status.redis_user, cfg->user_status.redis_password);
            conn_add(c, &a); /* One per shard, even two databases of one server. */
        }
    }
    size_t batch = (size_t)cfg->worker.batch_size;
    size_t scan = (size_t)SCAN_MAX_PER_PARTITION * SCAN_MAX_PARTITIONS;
    c->cap_users = batch > scan ? batch : scan;
    c->cap_events = batch;
    c->nslots = 16;
    while (c->nslots < c->cap_users * 2) c->nslots <<= 1;
    c->users = calloc(c->cap_users, sizeof(*c->users));
    c->slots = calloc(c->nslots, sizeof(*c->slots));
    c->events = calloc(c->cap_events, sizeof(*c->events));
    c->refs = calloc(c->cap_users, sizeof(*c->refs));
    c->statuses = calloc(c->cap_users, sizeof(*c->statuses));
    c->order = calloc(c->cap_users, sizeof(*c->order));
    if (!c->users || !c->slots || !c->events || !c->refs || !c->statuses ||
        !c->order) {
        snprintf(err, errlen, "status changes: out of memory for %zu users", c->cap_users);
        goto fail;
    }

    rd_kafka_conf_t *conf = us_kafka_conf_new(cfg, err, errlen);
    if (!conf) goto fail;
    if (us_kafka_conf_event_producer(conf, cfg, MESSAGE_TIMEOUT_MS, err, errlen) != 0) {
        rd_kafka_conf_destroy(conf);
        goto fail;
    }
    rd_kafka_conf_set_opaque(conf, c);
    rd_kafka_conf_set_dr_msg_cb(conf, delivered);
    if (!(c->producer = us_kafka_new(RD_KAFKA_PRODUCER, conf, "changes producer", err, errlen)))
        goto fail;

    c->m_event_changes = us_metric_counter(
        "userstatus_worker_changes_total{cause=\"event\"}",
        "Status changes published, by what caused them (an event, or a deadline passing).");
    c->m_deadline_changes = us_metric_counter(
        "userstatus_worker_changes_total{cause=\"deadline\"}",
        "Status changes published, by what caused them (an event, or a deadline passing).");
    c->m_errors = us_metric_counter("userstatus_worker_changes_errors_total",
                                    "Failed status change steps (index, store or produce; each "
                                    "retried).");
    us_info("status changes: publishing to '%s' (offline after %lld ms, away after %lld ms)",
            cfg->changes.topic, (long long)cfg->changes.offline_after_ms,
            (long long)cfg->changes.away_after_ms);
    return c;
fail:
    us_changes_free(c);
    return NULL;
}

void us_changes_free(us_changes *c)
{
    if (!c) return;
    if (c->producer) {
        rd_kafka_flush(c->producer, FLUSH_SLICE_MS);
        rd_kafka_destroy(c->producer);
    }
    pl_reset(c);
    hold_free(c);
    for (size_t i = 0; c->conns && i < c->nconns; i++) conn_close(&c->conns[i]);
    free(c->conns);
    free(c->seeds);
    free(c->slot_conn);
    free(c->users);
    free(c->slots);
    free(c->events);
    free(c->outs);
    free(c->refs);
    free(c->statuses);
    free(c->order);
    free(c->parts);
    free(c->argv);
    free(c->argvlen);
    free(c->cmd_conn);
    free(c->replies);
    free(c->held);
    free(c);
}
