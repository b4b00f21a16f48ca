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
#include "hash.h"
#include "int_text.h"
#include "kafka.h"
#include "log.h"
#include "metrics.h"
#include "redis_pipeline.h"

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

/* One partition's users of the operation in progress: c->order[first, end). */
typedef struct ix_group {
    int32_t partition;
    size_t first, end;
} ix_group;

struct us_changes {
    const us_config *cfg;
    rd_kafka_t *consumer;
    volatile sig_atomic_t *stop;
    us_presence_rules rules;
    rd_kafka_t *producer;
    _Atomic long failed; /* Deliveries failed in the current round. */

    us_topology topo; /* The index's own connections. */
    us_pipeline pipe;
    ix_group *groups; /* One per partition of the operation in progress. */
    size_t ngroups;
    char route_key[KEY_MAX];
    char ttl[SCORE_MAX]; /* user_status.expire_interval in ms, as text. */

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

    const char **argv; /* Scratch of one command. */
    size_t *argvlen;
    size_t cap_argv;
    char **held; /* Copies of scanned user ids, which the users point into. */
    size_t nheld, cap_held;

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

/* ------------------------------------------------------------------------------------------------
 * Index keys */

static void index_key(const us_changes *c, const char *kind, int32_t partition, char *buf)
{
    snprintf(buf, KEY_MAX, "%s#changes:%s:{%s:%d}", c->cfg->user_status.redis_prefix, kind,
             c->cfg->kafka.topic, (int)partition);
}

/* ------------------------------------------------------------------------------------------------
 * The index's Redis operations: one item per partition, run by the shared pipeline executor
 * (common/redis_pipeline.c) over the engine's own topology (its own connections: the engine runs
 * on the consumer's thread, between the store's operations). */

/* Makes room for one command of up to argc arguments in the argv scratch. */
static void reserve_argv(us_changes *c, size_t argc)
{
    if (argc <= c->cap_argv) return;
    c->cap_argv = argc * 2;
    c->argv = xrealloc(c->argv, c->cap_argv * sizeof(*c->argv));
    c->argvlen = xrealloc(c->argvlen, c->cap_argv * sizeof(*c->argvlen));
}

static void set_arg(us_changes *c, size_t i, const char *s, size_t len)
{
    c->argv[i] = s;
    c->argvlen[i] = len;
}

/* Groups c->order (sorted by partition) into one item per partition. */
static void group_by_partition(us_changes *c)
{
    c->ngroups = 0;
    for (size_t i = 0; i < c->nusers;) {
        int32_t p = c->users[c->order[i]].partition;
        size_t end = i;
        while (end < c->nusers && c->users[c->order[end]].partition == p) end++;
        c->groups[c->ngroups++] = (ix_group){p, i, end};
        i = end;
    }
}

/* The index keys of partition p live on the client-side shard of "<topic>:<p>" and in the slot of
 * the {<topic>:<p>} hash tag they share. */
static void route_partition(us_changes *c, int32_t p, size_t *shard, const char **key,
                            size_t *klen)
{
    char name[KEY_MAX];
    int n = snprintf(name, sizeof(name), "%s:%d", c->cfg->kafka.topic, (int)p);
    *shard = us_shard_for_user(name, (size_t)n, c->topo.nshards);
    index_key(c, "status", p, c->route_key);
    *key = c->route_key;
    *klen = strlen(c->route_key);
}

static void ix_route(void *arg, size_t i, size_t *shard, const char **key, size_t *klen)
{
    us_changes *c = arg;
    route_partition(c, c->groups[i].partition, shard, key, klen);
}

static int run_op(us_changes *c, void (*append)(void *, size_t, us_pipe_sink *),
                  void (*consume)(void *, size_t, redisReply **, size_t), char *err,
                  size_t errlen)
{
    us_pipe_op op = {c->ngroups, c, ix_route, append, consume, NULL};
    return us_pipeline_run(&c->pipe, &op, err, errlen);
}

/* HMGET <status> users... */
static void read_append(void *arg, size_t gi, us_pipe_sink *s)
{
    us_changes *c = arg;
    const ix_group *g = &c->groups[gi];
    char key[KEY_MAX];
    index_key(c, "status", g->partition, key);
    size_t argc = 0;
    set_arg(c, argc++, "HMGET", 5);
    set_arg(c, argc++, key, strlen(key));
    for (size_t j = g->first; j < g->end; j++)
        set_arg(c, argc++, c->users[c->order[j]].id, c->users[c->order[j]].len);
    us_pipe_cmd(s, (int)argc, c->argv, c->argvlen);
}

static void read_consume(void *arg, size_t gi, redisReply **replies, size_t nreplies)
{
    us_changes *c = arg;
    const ix_group *g = &c->groups[gi];
    const redisReply *r = nreplies == 1 ? replies[0] : NULL;
    for (size_t j = g->first; j < g->end; j++) {
        ch_user *u = &c->users[c->order[j]];
        size_t k = j - g->first;
        if (!r || r->type != REDIS_REPLY_ARRAY || k >= r->elements) continue;
        const redisReply *e = r->element[k];
        if (e->type != REDIS_REPLY_STRING) continue;
        u->known = 1;
        if (us_presence_parse(e->str, e->len, &u->p) != 0) {
            us_warn("status changes: index entry of user '%.*s' in partition %d is malformed "
                    "('%.*s'); starting over from offline",
                    (int)u->len, u->id, (int)g->partition, (int)e->len, e->str);
            us_presence_init(&u->p);
        }
    }
}

/* Reads the index entries of every user (HMGET per partition). Returns 0 or -1 with err. */
static int read_index(us_changes *c, char *err, size_t errlen)
{
    for (size_t i = 0; i < c->nusers; i++) {
        us_presence_init(&c->users[i].p);
        c->users[i].known = 0;
    }
    reserve_argv(c, c->nusers + 2);
    group_by_partition(c);
    return run_op(c, read_append, read_consume, err, errlen);
}

/* HSET + ZADD of the users with a deadline, HDEL + ZREM of the known ones without, PEXPIRE of both
 * keys when anything was set. Appending is repeatable (a redirect sends the item again). */
static void write_append(void *arg, size_t gi, us_pipe_sink *s)
{
    us_changes *c = arg;
    const ix_group *g = &c->groups[gi];
    char skey[KEY_MAX], dkey[KEY_MAX];
    index_key(c, "status", g->partition, skey);
    index_key(c, "deadlines", g->partition, dkey);
    static const char *const verbs[4] = {"HSET", "ZADD", "HDEL", "ZREM"};
    int any_set = 0;
    for (int v = 0; v < 4; v++) {
        int set = v < 2;
        size_t argc = 0;
        set_arg(c, argc++, verbs[v], 4);
        set_arg(c, argc++, v % 2 == 0 ? skey : dkey, strlen(v % 2 == 0 ? skey : dkey));
        for (size_t j = g->first; j < g->end; j++) {
            const ch_user *u = &c->users[c->order[j]];
            if (set != (u->deadline != US_PRESENCE_NONE) || (!set && !u->known)) continue;
            if (v == 1) set_arg(c, argc++, u->score, strlen(u->score)); /* ZADD key score member */
            set_arg(c, argc++, u->id, u->len);
            if (v == 0) set_arg(c, argc++, u->text, strlen(u->text)); /* HSET key field value */
        }
        if (argc == 2) continue;
        any_set |= set;
        us_pipe_cmd(s, (int)argc, c->argv, c->argvlen);
    }
    for (int k = 0; any_set && k < 2; k++) {
        const char *argv[3] = {"PEXPIRE", k ? dkey : skey, c->ttl};
        size_t lens[3] = {7, strlen(argv[1]), strlen(c->ttl)};
        us_pipe_cmd(s, 3, argv, lens);
    }
}

/* Writes every user's presence and deadline (or removes users that are done), per partition.
 * Returns 0 or -1 with err. */
static int write_index(us_changes *c, char *err, size_t errlen)
{
    int any = 0;
    for (size_t i = 0; i < c->nusers; i++) {
        ch_user *u = &c->users[i];
        u->deadline = us_presence_deadline(&c->rules, &u->p, u->evaluated);
        if (u->deadline != US_PRESENCE_NONE) {
            us_presence_format(&u->p, u->text, sizeof(u->text));
            us_i64_cstr(u->score, u->deadline);
        }
        any |= u->deadline != US_PRESENCE_NONE || u->known;
    }
    if (!any) return 0;
    reserve_argv(c, 2 * c->nusers + 2);
    group_by_partition(c);
    if (run_op(c, write_append, NULL, err, errlen) != 0) return -1;
    /* With user_status.redis_wait_replicas, the index is as durable as the status store: WAIT
     * on every node written (a failover must not lose deadlines). */
    int replicas = c->cfg->user_status.redis_wait_replicas;
    if (replicas > 0 &&
        us_pipeline_wait_replicas(&c->pipe, replicas, c->cfg->user_status.redis_wait_timeout_ms,
                                  err, errlen) != 0)
        return -1;
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
/* Publishes c->outs and writes the index. With may_retry, a failed step is tried again while it
 * allows (returns 1 when it stops allowing); without, the first failure returns -1. -1 also when
 * shutdown interrupted a retry. */
static int publish_and_record(us_changes *c, us_redis *store, int scanned,
                              us_changes_may_retry may_retry, void *arg)
{
    int retry = may_retry != NULL;
    char err[1024];
    int64_t delay = RETRY_BACKOFF_MIN_MS;
    if (c->nouts > 0 || scanned) {
        while (read_store(c, store, scanned, err, sizeof(err)) != 0) {
            step_failed(c, "reading the status store", err);
            us_error("status changes: reading the status store: %s%s", err,
                     retry ? "; retrying" : "");
            if (!retry || *c->stop) return -1;
            if (!may_retry(arg, "status changes: reading the status store")) return 1;
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
        if (!may_retry(arg, "status changes: producing")) return 1;
        backoff(c, &delay);
    }
    us_metric_add(scanned ? c->m_deadline_changes : c->m_event_changes, c->nouts);
    delay = RETRY_BACKOFF_MIN_MS;
    while (write_index(c, err, sizeof(err)) != 0) {
        step_failed(c, "writing the deadline index", err);
        us_error("status changes: writing the deadline index: %s%s", err,
                 retry ? "; retrying (offsets held)" : "");
        if (!retry || *c->stop) return -1;
        if (!may_retry(arg, "status changes: writing the deadline index")) return 1;
        backoff(c, &delay);
    }
    steps_succeeded(c);
    return 0;
}

int us_changes_settle(us_changes *c, us_redis *store, us_changes_may_retry may_retry, void *arg)
{
    if (!c || c->nevents == 0) return 0;
    char err[1024];
    int64_t delay = RETRY_BACKOFF_MIN_MS;
    order_users(c);
    while (read_index(c, err, sizeof(err)) != 0) {
        step_failed(c, "reading the deadline index", err);
        us_error("status changes: reading the deadline index: %s; retrying (offsets held)", err);
        if (*c->stop) return -1;
        if (!may_retry(arg, "status changes: reading the deadline index")) return 1;
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
    return publish_and_record(c, store, 0, may_retry, arg);
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
    for (size_t i = 0; i < c->nheld; i++) free(c->held[i]);
    c->nheld = 0;
}

/* A scan item: partition p's due users, up to its limit. */
typedef struct scan_item {
    int32_t partition;
    int64_t limit;
} scan_item;

typedef struct scan_ctx {
    us_changes *c;
    scan_item items[SCAN_MAX_PARTITIONS];
} scan_ctx;

static void scan_route(void *arg, size_t i, size_t *shard, const char **key, size_t *klen)
{
    scan_ctx *s = arg;
    route_partition(s->c, s->items[i].partition, shard, key, klen);
}

/* ZRANGEBYSCORE <deadlines> -inf <limit> LIMIT 0 SCAN_MAX_PER_PARTITION */
static void scan_append(void *arg, size_t i, us_pipe_sink *sink)
{
    scan_ctx *s = arg;
    char dkey[KEY_MAX], limit[SCORE_MAX], count[SCORE_MAX];
    index_key(s->c, "deadlines", s->items[i].partition, dkey);
    snprintf(limit, sizeof(limit), "%lld", (long long)s->items[i].limit);
    snprintf(count, sizeof(count), "%d", SCAN_MAX_PER_PARTITION);
    const char *argv[7] = {"ZRANGEBYSCORE", dkey, "-inf", limit, "LIMIT", "0", count};
    size_t lens[7];
    for (int a = 0; a < 7; a++) lens[a] = strlen(argv[a]);
    us_pipe_cmd(sink, 7, argv, lens);
}

/* Adds the due users of item i; their ids are copied (the reply goes when this returns). */
static void scan_consume(void *arg, size_t i, redisReply **replies, size_t nreplies)
{
    scan_ctx *s = arg;
    us_changes *c = s->c;
    const redisReply *r = nreplies == 1 ? replies[0] : NULL;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements == 0) return;
    size_t bytes = 0;
    for (size_t j = 0; j < r->elements; j++) bytes += r->element[j]->len;
    if (c->nheld == c->cap_held) {
        c->cap_held = c->cap_held ? c->cap_held * 2 : SCAN_MAX_PARTITIONS;
        c->held = xrealloc(c->held, c->cap_held * sizeof(*c->held));
    }
    char *ids = c->held[c->nheld++] = xrealloc(NULL, bytes);
    for (size_t j = 0; j < r->elements; j++) {
        const redisReply *e = r->element[j];
        if (e->type != REDIS_REPLY_STRING || c->nusers == c->cap_users) continue;
        memcpy(ids, e->str, e->len);
        uint32_t u = user_find_or_add(c, ids, e->len, s->items[i].partition);
        c->users[u].limit = s->items[i].limit;
        ids += e->len;
    }
}

void us_changes_tick(us_changes *c, us_redis *store)
{
    if (!c || c->nparts == 0) return;
    int64_t now = now_ms();
    if (now < c->next_scan_ms) return;
    c->next_scan_ms = now + CHANGES_SCAN_INTERVAL_MS;
    resolve_starts(c);

    char err[1024];
    scan_ctx sc = {.c = c};
    size_t nscan = 0;
    users_reset(c);
    for (size_t k = 0; k < c->nparts && nscan < SCAN_MAX_PARTITIONS; k++) {
        const ch_part *p = &c->parts[(c->scan_cursor + k) % c->nparts];
        int64_t limit = scan_limit(c, p, now);
        if (limit == US_PRESENCE_NONE) continue;
        sc.items[nscan++] = (scan_item){p->partition, limit};
    }
    c->scan_cursor = c->nparts ? (c->scan_cursor + nscan) % c->nparts : 0;
    if (nscan == 0) return;
    us_pipe_op op = {nscan, &sc, scan_route, scan_append, scan_consume, NULL};
    if (us_pipeline_run(&c->pipe, &op, err, sizeof(err)) != 0) {
        users_reset(c);
        hold_free(c);
        scan_failed(c, "scanning deadlines", err);
        return;
    }
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
            if (publish_and_record(c, store, 1, NULL, NULL) != 0)
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
    snprintf(c->ttl, sizeof(c->ttl), "%lld", (long long)cfg->user_status.expire_interval_ms);
    if (us_topology_init(&c->topo, cfg, err, errlen) != 0) goto fail;
    c->pipe.topo = &c->topo;
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
    c->groups = calloc(c->cap_users, sizeof(*c->groups));
    if (!c->users || !c->slots || !c->events || !c->refs || !c->statuses || !c->order ||
        !c->groups) {
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
    hold_free(c);
    us_pipeline_release(&c->pipe);
    us_topology_release(&c->topo);
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
    free(c->groups);
    free(c->held);
    free(c);
}
