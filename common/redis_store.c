/* Implementation of the Redis user status store (data model: docs/choices.md).
 *
 * Topologies
 * ----------
 * Every topology is a set of nodes (one connection each) plus a rule that routes a user to a node:
 * client-side shards route with Jump consistent hash over FNV-1a of the user id; Sentinel has one
 * node, the master the sentinels name (asked again after connection errors and READONLY replies);
 * Cluster routes by key slot through a slot map read with CLUSTER SHARDS (or CLUSTER SLOTS), kept
 * current by MOVED replies and refreshed after them.
 *
 * Pipelining
 * ----------
 * An operation is a list of items (users), each a small group of commands. Every group is appended
 * to its node's output buffer, every node is flushed, then the replies are read back item by item:
 * a node answers its commands in order, so reading in the order of appending pairs each reply with
 * its item. Items redirected by the cluster (MOVED, ASK) or refused while it reconfigures
 * (TRYAGAIN, CLUSTERDOWN) go round again, only those, up to MAX_ROUNDS times. Every write is
 * idempotent (ZADD GT, PEXPIRE, DEL, state replace), so sending a group twice is harmless. */
#include "redis_store.h"

#include "log.h"
#include "metrics.h"
#include "redis_cluster.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/socket.h>
#include <time.h>

#define KEY_MAX 1024           /* Bytes; prefix + ':' + a 256-byte user id fits easily. */
#define STATE_MEMBER_PREFIX "s:"
#define STATE_SCORE "-1"       /* Score of the state member; times are never negative. */

#define MAX_ROUNDS 6          /* Rounds of redirects/retries one operation may take. */
#define RETRY_PAUSE_MS 20     /* First pause before retrying TRYAGAIN/CLUSTERDOWN; doubles. */
#define MAX_GROUP_REPLIES 16  /* Most replies one item's command group produces. */
#define NO_NODE UINT16_MAX

typedef struct node {
    us_redis_addr addr;
    redisContext *c;
    size_t pending; /* Replies expected for the commands appended since the last flush. */
    int used;       /* Received commands during the current operation. */
} node;

typedef enum topology { TOPO_SHARDS, TOPO_SENTINEL, TOPO_CLUSTER } topology;

/* Where one item of an operation goes this round. */
typedef struct plan {
    uint16_t node;
    uint16_t ask_node; /* NO_NODE, or the ASK target for the next round. */
    uint32_t nreplies;
    uint8_t asking;
} plan;

struct us_redis {
    topology topo;
    node *nodes;
    size_t nnodes, nodes_cap;
    char *prefix;
    int64_t expire_ms;
    struct timeval connect_tv, io_tv;
    char user[128], password[256]; /* For nodes whose address carries no credentials. */
    int db;                        /* For data nodes whose address names no database. */
    int wait_replicas;             /* WAIT for this many replicas after writes (0: don't). */
    int64_t wait_timeout_ms;

    us_redis_addr *seeds; /* Sentinels, or cluster seed nodes. */
    size_t nseeds;
    char *master_name;
    int resolve_needed; /* Sentinel: ask the sentinels for the master before the next use. */
    uint16_t *slot_node; /* Cluster: node of every slot, NO_NODE when unknown. */
    int refresh_needed;  /* Cluster: read the slot map again before the next use. */

    plan *plans; /* Scratch of the operation in progress; grown, never shrunk. */
    size_t *todo, *retry;
    size_t scratch_cap;

    /* us_redis_interrupt may run on another thread: it takes conn_mu, which the owner holds
     * whenever it opens or closes a node's connection or moves the node table. */
    pthread_mutex_t conn_mu;
    int interrupted; /* Under conn_mu. */
};

int32_t us_jump_hash(uint64_t key, int32_t buckets)
{
    int64_t b = -1, j = 0;
    while (j < buckets) {
        b = j;
        key = key * 2862933555777941757ULL + 1;
        j = (int64_t)((double)(b + 1) * ((double)(1LL << 31) / (double)((key >> 33) + 1)));
    }
    return (int32_t)b;
}

size_t us_shard_for_user(const char *user, size_t user_len, size_t nshards)
{
    if (nshards <= 1) return 0;
    return (size_t)us_jump_hash(us_fnv1a64(user, user_len), (int32_t)nshards);
}

int us_redis_key(const char *prefix, const char *user, size_t user_len, char *buf, size_t cap)
{
    size_t plen = strlen(prefix);
    if (plen + 1 + user_len > cap) return -1;
    memcpy(buf, prefix, plen);
    buf[plen] = ':';
    memcpy(buf + plen + 1, user, user_len);
    return (int)(plen + 1 + user_len);
}

int us_redis_addr_parse(const char *text, us_redis_addr *a, char *err, size_t errlen)
{
    memset(a, 0, sizeof(*a));
    const char *p = text;
    if (strncmp(p, "redis://", 8) == 0) {
        p += 8;
        const char *at = strrchr(p, '@');
        if (at) {
            const char *colon = memchr(p, ':', (size_t)(at - p));
            size_t ulen = colon ? (size_t)(colon - p) : 0;
            const char *pass = colon ? colon + 1 : p;
            size_t plen = (size_t)(at - pass);
            if (ulen >= sizeof(a->user) || plen >= sizeof(a->password)) {
                snprintf(err, errlen, "redis address: user or password too long");
                return -1;
            }
            memcpy(a->user, p, ulen);
            memcpy(a->password, pass, plen);
            p = at + 1;
        }
    } else if (strstr(p, "://")) {
        snprintf(err, errlen, "redis address '%s': only host:port and redis:// are supported",
                 text);
        return -1;
    }
    const char *host = p, *host_end;
    if (*p == '[') { /* [IPv6]:port */
        host = p + 1;
        host_end = strchr(host, ']');
        if (!host_end || host_end[1] != ':') goto bad;
        p = host_end + 2;
    } else {
        host_end = strrchr(p, ':');
        if (!host_end) goto bad;
        p = host_end + 1;
    }
    size_t hlen = (size_t)(host_end - host);
    if (hlen == 0 || hlen >= sizeof(a->host)) goto bad;
    memcpy(a->host, host, hlen);
    char *end;
    long port = strtol(p, &end, 10);
    if (end == p || port < 1 || port > 65535) goto bad;
    a->port = (int)port;
    if (*end == '/') {
        char *dbend;
        long db = strtol(end + 1, &dbend, 10);
        if (dbend == end + 1 || *dbend != '\0' || db < 0 || db > 65535) goto bad;
        a->db = (int)db;
    } else if (*end != '\0') {
        goto bad;
    }
    return 0;
bad:
    snprintf(err, errlen,
             "redis address '%s': expected host:port or redis://[user:pass@]host:port[/db]", text);
    return -1;
}

static struct timeval ms_to_tv(int64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    return tv;
}

static us_metric *m_moved, *m_ask, *m_tryagain, *m_refreshes, *m_resolves;

void us_redis_metrics_register(void)
{
    m_moved = us_metric_counter("userstatus_redis_redirects_total{kind=\"moved\"}",
                                "Redis Cluster redirects followed, by kind.");
    m_ask = us_metric_counter("userstatus_redis_redirects_total{kind=\"ask\"}",
                              "Redis Cluster redirects followed, by kind.");
    m_tryagain = us_metric_counter("userstatus_redis_retries_total",
                                   "Commands retried after TRYAGAIN, CLUSTERDOWN or LOADING.");
    m_refreshes = us_metric_counter("userstatus_redis_slot_map_refreshes_total",
                                    "Redis Cluster slot maps read.");
    m_resolves = us_metric_counter("userstatus_redis_sentinel_lookups_total",
                                   "Masters looked up through the sentinels.");
}

static void count(us_metric *m)
{
    if (m) us_metric_add(m, 1);
}

/* ---------------------------------------------------------------------------------------------
 * Nodes and connections.
 * ------------------------------------------------------------------------------------------ */

static void node_close(us_redis *r, node *n)
{
    pthread_mutex_lock(&r->conn_mu);
    if (n->c) redisFree(n->c);
    n->c = NULL;
    pthread_mutex_unlock(&r->conn_mu);
    n->pending = 0;
}

/* 1 once us_redis_interrupt was called: no connection may be opened any more. */
static int interrupted(us_redis *r)
{
    pthread_mutex_lock(&r->conn_mu);
    int yes = r->interrupted;
    pthread_mutex_unlock(&r->conn_mu);
    return yes;
}

/* Fills credentials an address lacks from the configured defaults. */
static void apply_default_auth(us_redis_addr *a, const char *user, const char *password)
{
    if (a->password[0] == '\0' && password[0]) {
        snprintf(a->user, sizeof(a->user), "%s", user);
        snprintf(a->password, sizeof(a->password), "%s", password);
    }
}

/* Runs one command on a fresh connection during set-up; returns the reply or NULL with err. */
static redisReply *setup_command(redisContext *c, const us_redis_addr *a, int argc,
                                 const char **argv, char *err, size_t errlen)
{
    redisReply *reply = redisCommandArgv(c, argc, argv, NULL);
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "redis %s:%d: %s failed: %s", a->host, a->port, argv[0],
                 reply ? reply->str : c->errstr);
        if (reply) freeReplyObject(reply);
        return NULL;
    }
    return reply;
}

/* Opens a connection with the timeouts, AUTH and SELECT of the address. NULL with err on failure. */
static redisContext *connect_addr(us_redis *r, const us_redis_addr *a, char *err, size_t errlen)
{
    if (interrupted(r)) {
        snprintf(err, errlen, "redis %s:%d: interrupted (shutting down)", a->host, a->port);
        return NULL;
    }
    redisContext *c = redisConnectWithTimeout(a->host, a->port, r->connect_tv);
    if (!c || c->err) {
        snprintf(err, errlen, "redis %s:%d: cannot connect: %s", a->host, a->port,
                 c ? c->errstr : "out of memory");
        if (c) redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, r->io_tv);
    redisReply *reply;
    if (a->password[0]) {
        const char *argv[3] = {"AUTH", a->user[0] ? a->user : a->password, a->password};
        if (!(reply = setup_command(c, a, a->user[0] ? 3 : 2, argv, err, errlen))) goto fail;
        freeReplyObject(reply);
    }
    if (a->db) {
        char db[16];
        snprintf(db, sizeof(db), "%d", a->db);
        const char *argv[2] = {"SELECT", db};
        if (!(reply = setup_command(c, a, 2, argv, err, errlen))) goto fail;
        freeReplyObject(reply);
    }
    return c;
fail:
    redisFree(c);
    return NULL;
}

static int node_connect(us_redis *r, node *n, char *err, size_t errlen)
{
    if (n->c && n->c->err == 0) return 0;
    node_close(r, n);
    redisContext *c = connect_addr(r, &n->addr, err, errlen);
    pthread_mutex_lock(&r->conn_mu);
    if (c && r->interrupted) { /* Interrupted while connecting. */
        redisFree(c);
        c = NULL;
        snprintf(err, errlen, "redis %s:%d: interrupted (shutting down)", n->addr.host,
                 n->addr.port);
    }
    n->c = c;
    pthread_mutex_unlock(&r->conn_mu);
    if (!n->c) {
        if (r->topo == TOPO_SENTINEL) r->resolve_needed = 1;
        if (r->topo == TOPO_CLUSTER) r->refresh_needed = 1;
        return -1;
    }
    return 0;
}

/* The node at host:port, added (with the default credentials) if new. NO_NODE if the table is
 * full. */
static uint16_t node_find_or_add(us_redis *r, const char *host, int port)
{
    for (size_t i = 0; i < r->nnodes; i++)
        if (r->nodes[i].addr.port == port && strcmp(r->nodes[i].addr.host, host) == 0)
            return (uint16_t)i;
    if (r->nnodes >= NO_NODE) return NO_NODE;
    if (r->nnodes == r->nodes_cap) {
        pthread_mutex_lock(&r->conn_mu);
        r->nodes_cap = r->nodes_cap ? r->nodes_cap * 2 : 8;
        r->nodes = realloc(r->nodes, r->nodes_cap * sizeof(node));
        if (!r->nodes) abort();
        pthread_mutex_unlock(&r->conn_mu);
    }
    node *n = &r->nodes[r->nnodes];
    memset(n, 0, sizeof(*n));
    snprintf(n->addr.host, sizeof(n->addr.host), "%s", host);
    n->addr.port = port;
    n->addr.db = r->db; /* Cluster nodes: 0, which the config enforces. */
    apply_default_auth(&n->addr, r->user, r->password);
    return (uint16_t)r->nnodes++;
}

/* ---------------------------------------------------------------------------------------------
 * Sentinel: finding the master.
 * ------------------------------------------------------------------------------------------ */

static int sentinel_resolve(us_redis *r, char *err, size_t errlen)
{
    char last[600] = "no sentinel configured";
    for (size_t i = 0; i < r->nseeds; i++) {
        const us_redis_addr *s = &r->seeds[i];
        redisContext *c = connect_addr(r, s, last, sizeof(last));
        if (!c) continue;
        const char *argv[3] = {"SENTINEL", "get-master-addr-by-name", r->master_name};
        redisReply *reply = setup_command(c, s, 3, argv, last, sizeof(last));
        if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
            reply->element[0]->type == REDIS_REPLY_STRING &&
            reply->element[1]->type == REDIS_REPLY_STRING) {
            const char *host = reply->element[0]->str;
            int port = atoi(reply->element[1]->str);
            node *m = &r->nodes[0];
            if (m->addr.port != port || strcmp(m->addr.host, host) != 0) {
                if (m->addr.port) us_info("sentinel: master '%s' is now %s:%d (was %s:%d)",
                                          r->master_name, host, port, m->addr.host, m->addr.port);
                node_close(r, m);
                snprintf(m->addr.host, sizeof(m->addr.host), "%s", host);
                m->addr.port = port;
            }
            freeReplyObject(reply);
            redisFree(c);
            r->resolve_needed = 0;
            count(m_resolves);
            return 0;
        }
        if (reply) {
            snprintf(last, sizeof(last), "sentinel %s:%d does not know master '%s'", s->host,
                     s->port, r->master_name);
            freeReplyObject(reply);
        }
        redisFree(c);
    }
    snprintf(err, errlen, "sentinel: cannot find master '%s': %s", r->master_name, last);
    return -1;
}

/* ---------------------------------------------------------------------------------------------
 * Cluster: the slot map.
 * ------------------------------------------------------------------------------------------ */

#define MAX_SLOT_RANGES 4096

/* Reads the slot map from the first seed or known node that answers. */
static int cluster_refresh(us_redis *r, char *err, size_t errlen)
{
    static us_slot_range ranges[MAX_SLOT_RANGES]; /* Big; used by one thread at a time below. */
    static pthread_mutex_t ranges_mu = PTHREAD_MUTEX_INITIALIZER;
    char last[600] = "no cluster node configured";
    size_t candidates = r->nseeds + r->nnodes;
    for (size_t i = 0; i < candidates; i++) {
        us_redis_addr a = i < r->nseeds ? r->seeds[i] : r->nodes[i - r->nseeds].addr;
        redisContext *c = connect_addr(r, &a, last, sizeof(last));
        if (!c) continue;
        redisReply *reply = redisCommand(c, "CLUSTER SHARDS");
        int shards = 1;
        if (reply && reply->type == REDIS_REPLY_ERROR) { /* Redis < 7: no CLUSTER SHARDS. */
            freeReplyObject(reply);
            reply = redisCommand(c, "CLUSTER SLOTS");
            shards = 0;
        }
        if (!reply || reply->type == REDIS_REPLY_ERROR) {
            snprintf(last, sizeof(last), "redis %s:%d: cannot read the slot map: %s", a.host,
                     a.port, reply ? reply->str : c->errstr);
            if (reply) freeReplyObject(reply);
            redisFree(c);
            continue;
        }
        pthread_mutex_lock(&ranges_mu);
        int n = shards ? us_cluster_parse_shards(reply, ranges, MAX_SLOT_RANGES)
                       : us_cluster_parse_slots(reply, ranges, MAX_SLOT_RANGES);
        if (n > 0) {
            for (size_t s = 0; s < US_CLUSTER_SLOTS; s++) r->slot_node[s] = NO_NODE;
            for (int k = 0; k < n; k++) {
                uint16_t idx = node_find_or_add(r, ranges[k].host, ranges[k].port);
                for (uint32_t s = ranges[k].first; s <= ranges[k].last; s++) r->slot_node[s] = idx;
            }
        }
        pthread_mutex_unlock(&ranges_mu);
        freeReplyObject(reply);
        redisFree(c);
        if (n > 0) {
            r->refresh_needed = 0;
            count(m_refreshes);
            return 0;
        }
        snprintf(last, sizeof(last), "redis %s:%d: unexpected slot map reply", a.host, a.port);
    }
    snprintf(err, errlen, "redis cluster: cannot read the slot map: %s", last);
    return -1;
}

/* ---------------------------------------------------------------------------------------------
 * Set-up.
 * ------------------------------------------------------------------------------------------ */

/* Parses a list of addresses; those without credentials get user/password, those naming no
 * database (or database 0) get db. */
static int parse_list(const us_strlist *l, us_redis_addr **out, char *err, size_t errlen,
                      const char *user, const char *password, int db)
{
    *out = calloc(l->count ? l->count : 1, sizeof(us_redis_addr));
    if (!*out) abort();
    for (size_t i = 0; i < l->count; i++) {
        if (us_redis_addr_parse(l->items[i], &(*out)[i], err, errlen) != 0) return -1;
        apply_default_auth(&(*out)[i], user, password);
        if ((*out)[i].db == 0) (*out)[i].db = db;
    }
    return 0;
}

us_redis *us_redis_new(const us_config *cfg, char *err, size_t errlen)
{
    const typeof(cfg->user_status) *us = &cfg->user_status;
    us_redis *r = calloc(1, sizeof(*r));
    if (!r) abort();
    pthread_mutex_init(&r->conn_mu, NULL);
    r->prefix = strdup(us->redis_prefix);
    if (!r->prefix) abort();
    r->expire_ms = us->expire_interval_ms;
    r->connect_tv = ms_to_tv(us->redis_connect_timeout_ms);
    r->io_tv = ms_to_tv(us->redis_io_timeout_ms);
    snprintf(r->user, sizeof(r->user), "%s", us->redis_user);
    snprintf(r->password, sizeof(r->password), "%s", us->redis_password);
    r->db = us->redis_db;
    r->wait_replicas = us->redis_wait_replicas;
    r->wait_timeout_ms = us->redis_wait_timeout_ms;

    if (us->redis_cluster_address.count > 0) {
        r->topo = TOPO_CLUSTER;
        if (parse_list(&us->redis_cluster_address, &r->seeds, err, errlen, r->user, r->password,
                       0))
            goto fail;
        r->nseeds = us->redis_cluster_address.count;
        for (size_t i = 0; i < r->nseeds; i++)
            if (r->seeds[i].db != 0) {
                snprintf(err, errlen,
                         "config key 'user_status.redis_cluster_address': Redis Cluster has only "
                         "database 0, not %d",
                         r->seeds[i].db);
                goto fail;
            }
        r->slot_node = malloc(US_CLUSTER_SLOTS * sizeof(uint16_t));
        if (!r->slot_node) abort();
        for (size_t s = 0; s < US_CLUSTER_SLOTS; s++) r->slot_node[s] = NO_NODE;
        r->refresh_needed = 1;
    } else if (us->redis_sentinel_address.count > 0) {
        r->topo = TOPO_SENTINEL;
        if (parse_list(&us->redis_sentinel_address, &r->seeds, err, errlen,
                       us->redis_sentinel_user, us->redis_sentinel_password, 0))
            goto fail;
        r->nseeds = us->redis_sentinel_address.count;
        r->master_name = strdup(us->redis_sentinel_master_name);
        if (!r->master_name) abort();
        node_find_or_add(r, "", 0); /* The master, filled in by sentinel_resolve. */
        r->resolve_needed = 1;
    } else {
        const us_strlist *addrs = us_config_redis_addresses(cfg);
        if (addrs->count == 0) {
            snprintf(err, errlen, "config key 'user_status.redis_address': no Redis address");
            goto fail;
        }
        us_redis_addr *list;
        int rc = parse_list(addrs, &list, err, errlen, r->user, r->password, r->db);
        if (rc == 0) {
            r->nodes = calloc(addrs->count, sizeof(node));
            if (!r->nodes) abort();
            for (size_t i = 0; i < addrs->count; i++) r->nodes[i].addr = list[i];
            r->nnodes = r->nodes_cap = addrs->count;
        }
        free(list);
        if (rc != 0) goto fail;
    }
    return r;
fail:
    us_redis_free(r);
    return NULL;
}

void us_redis_free(us_redis *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->nnodes; i++) node_close(r, &r->nodes[i]);
    pthread_mutex_destroy(&r->conn_mu);
    free(r->nodes);
    free(r->prefix);
    free(r->seeds);
    free(r->master_name);
    free(r->slot_node);
    free(r->plans);
    free(r->todo);
    free(r->retry);
    free(r);
}

void us_redis_interrupt(us_redis *r)
{
    pthread_mutex_lock(&r->conn_mu);
    r->interrupted = 1;
    for (size_t i = 0; i < r->nnodes; i++)
        if (r->nodes[i].c && r->nodes[i].c->fd >= 0)
            shutdown(r->nodes[i].c->fd, SHUT_RDWR);
    pthread_mutex_unlock(&r->conn_mu);
}

/* Brings the topology up to date before an operation. */
static int prepare(us_redis *r, char *err, size_t errlen)
{
    if (r->topo == TOPO_SENTINEL && r->resolve_needed) return sentinel_resolve(r, err, errlen);
    if (r->topo == TOPO_CLUSTER && r->refresh_needed) {
        /* A stale map still routes most slots right, and MOVED fixes the rest. */
        int have_map = r->nnodes > 0;
        if (cluster_refresh(r, err, errlen) != 0 && !have_map) return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * The pipelined operation executor.
 * ------------------------------------------------------------------------------------------ */

/* Collects one item's commands for one node, with ASKING before each when redirected by ASK. */
typedef struct sink {
    node *n;
    int asking;
    uint32_t count;
} sink;

static void sink_cmd(sink *s, int argc, const char **argv, const size_t *lens)
{
    if (s->asking) {
        redisAppendCommand(s->n->c, "ASKING");
        s->count++;
    }
    redisAppendCommandArgv(s->n->c, argc, argv, lens);
    s->count++;
}

typedef struct store_op {
    size_t n;
    const us_user_ref *(*user)(void *ctx, size_t i, us_user_ref *tmp);
    void (*append)(us_redis *r, sink *s, size_t i, const char *key, size_t klen, void *ctx);
    void (*consume)(void *ctx, size_t i, redisReply *reply); /* The item's last non-ASKING reply. */
    void *ctx;
} store_op;

static void scratch_reserve(us_redis *r, size_t n)
{
    if (n <= r->scratch_cap) return;
    free(r->plans);
    free(r->todo);
    free(r->retry);
    r->plans = malloc(n * sizeof(plan));
    r->todo = malloc(n * sizeof(size_t));
    r->retry = malloc(n * sizeof(size_t));
    if (!r->plans || !r->todo || !r->retry) abort();
    r->scratch_cap = n;
}

static uint16_t route(us_redis *r, const us_user_ref *u, const char *key, size_t klen)
{
    switch (r->topo) {
    case TOPO_SHARDS:
        return (uint16_t)us_shard_for_user(u->user, u->len, r->nnodes);
    case TOPO_SENTINEL:
        return 0;
    case TOPO_CLUSTER:
        return r->slot_node[us_cluster_slot(key, klen)];
    }
    return NO_NODE;
}

static const char *error_text(const redisReply *reply)
{
    if (reply->type == REDIS_REPLY_ERROR) return reply->str;
    if (reply->type == REDIS_REPLY_ARRAY) /* EXEC: errors of the queued commands. */
        for (size_t i = 0; i < reply->elements; i++)
            if (reply->element[i]->type == REDIS_REPLY_ERROR) return reply->element[i]->str;
    return NULL;
}

static int starts(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static void close_all(us_redis *r)
{
    for (size_t i = 0; i < r->nnodes; i++) node_close(r, &r->nodes[i]);
}

/* Runs op: returns 0 when every item was answered without error, else -1 with err set. After a
 * failure no connection holds unread replies. */
static int run_op(us_redis *r, const store_op *op, char *err, size_t errlen)
{
    if (op->n == 0) return 0;
    if (prepare(r, err, errlen) != 0) return -1;
    scratch_reserve(r, op->n);
    size_t ntodo = op->n;
    for (size_t k = 0; k < r->nnodes; k++) r->nodes[k].used = 0;
    for (size_t i = 0; i < op->n; i++) {
        r->todo[i] = i;
        r->plans[i].ask_node = NO_NODE;
    }
    char key[KEY_MAX];
    int64_t pause_ms = RETRY_PAUSE_MS;

    for (int round = 0; round < MAX_ROUNDS && ntodo > 0; round++) {
        if (round > 0 && r->topo == TOPO_CLUSTER && r->refresh_needed) {
            char rerr[256];
            if (cluster_refresh(r, rerr, sizeof(rerr)) != 0) us_warn("%s", rerr);
        }
        for (size_t k = 0; k < r->nnodes; k++) r->nodes[k].pending = 0;

        /* Append every item's commands to its node. */
        for (size_t t = 0; t < ntodo; t++) {
            size_t i = r->todo[t];
            us_user_ref tmp;
            const us_user_ref *u = op->user(op->ctx, i, &tmp);
            int klen = us_redis_key(r->prefix, u->user, u->len, key, sizeof(key));
            if (klen < 0) {
                char shown[US_LOG_ESCAPE_CAP]; /* err ends up in a log line. */
                snprintf(err, errlen, "redis key for user '%s' is too long",
                         us_log_escape(u->user, u->len, shown, sizeof(shown)));
                close_all(r);
                return -1;
            }
            plan *p = &r->plans[i];
            uint16_t idx = p->ask_node != NO_NODE ? p->ask_node : route(r, u, key, (size_t)klen);
            if (idx == NO_NODE || idx >= r->nnodes) {
                char shown[US_LOG_ESCAPE_CAP]; /* err ends up in a log line. */
                snprintf(err, errlen, "redis cluster: no master serves slot %u (key '%s')",
                         us_cluster_slot(key, (size_t)klen),
                         us_log_escape(key, (size_t)klen, shown, sizeof(shown)));
                r->refresh_needed = 1;
                close_all(r);
                return -1;
            }
            node *n = &r->nodes[idx];
            if (node_connect(r, n, err, errlen) != 0) {
                close_all(r);
                return -1;
            }
            sink s = {n, p->ask_node != NO_NODE, 0};
            op->append(r, &s, i, key, (size_t)klen, op->ctx);
            p->node = idx;
            p->asking = (uint8_t)s.asking;
            p->nreplies = s.count;
            p->ask_node = NO_NODE;
            n->pending += s.count;
            n->used = 1;
        }

        /* Flush every node. */
        for (size_t k = 0; k < r->nnodes; k++) {
            node *n = &r->nodes[k];
            int done = n->pending == 0;
            while (!done) {
                if (redisBufferWrite(n->c, &done) == REDIS_ERR) {
                    snprintf(err, errlen, "redis %s:%d: write failed: %s", n->addr.host,
                             n->addr.port, n->c->errstr);
                    if (r->topo == TOPO_SENTINEL) r->resolve_needed = 1;
                    close_all(r);
                    return -1;
                }
            }
        }

        /* Read the replies back in the order they were appended. */
        size_t nretry = 0;
        int failed = 0, backoff = 0;
        for (size_t t = 0; t < ntodo; t++) {
            size_t i = r->todo[t];
            plan *p = &r->plans[i];
            node *n = &r->nodes[p->node];
            redisReply *replies[MAX_GROUP_REPLIES];
            uint32_t got = 0;
            for (uint32_t k = 0; k < p->nreplies; k++) {
                void *reply = NULL;
                if (redisGetReply(n->c, &reply) != REDIS_OK || !reply) {
                    snprintf(err, errlen, "redis %s:%d: read failed: %s", n->addr.host,
                             n->addr.port, n->c->errstr[0] ? n->c->errstr : "no reply");
                    for (uint32_t j = 0; j < got; j++) freeReplyObject(replies[j]);
                    if (r->topo == TOPO_SENTINEL) r->resolve_needed = 1;
                    if (r->topo == TOPO_CLUSTER) r->refresh_needed = 1;
                    close_all(r);
                    return -1;
                }
                if (p->asking && k % 2 == 0) { /* The ASKING acknowledgement. */
                    freeReplyObject(reply);
                    continue;
                }
                if (got < MAX_GROUP_REPLIES) replies[got++] = reply;
                else freeReplyObject(reply);
            }

            /* A redirect anywhere in the group sends the whole group round again. */
            int again = 0;
            const char *fatal = NULL;
            for (uint32_t k = 0; k < got; k++) {
                const char *e = error_text(replies[k]);
                if (!e) continue;
                us_redirect rd;
                if (us_redirect_parse(e, strlen(e), &rd) == 0) {
                    uint16_t target = node_find_or_add(r, rd.host, rd.port);
                    if (rd.kind == US_REDIRECT_MOVED) {
                        if (r->slot_node) r->slot_node[rd.slot] = target;
                        r->refresh_needed = 1;
                        count(m_moved);
                    } else {
                        p->ask_node = target;
                        count(m_ask);
                    }
                    again = 1;
                    break;
                }
                if (starts(e, "TRYAGAIN") || starts(e, "CLUSTERDOWN") || starts(e, "LOADING")) {
                    again = backoff = 1;
                    count(m_tryagain);
                    break;
                }
                if (starts(e, "READONLY") && r->topo == TOPO_SENTINEL) r->resolve_needed = 1;
                if (!fatal) fatal = e;
            }
            if (again) {
                r->retry[nretry++] = i;
            } else if (fatal) {
                if (!failed++)
                    snprintf(err, errlen, "redis %s:%d: command refused: %s", n->addr.host,
                             n->addr.port, fatal);
            } else if (op->consume && got > 0) {
                op->consume(op->ctx, i, replies[got - 1]);
            }
            for (uint32_t k = 0; k < got; k++) freeReplyObject(replies[k]);
        }
        if (failed) return -1;
        memcpy(r->todo, r->retry, nretry * sizeof(size_t));
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

/* ---------------------------------------------------------------------------------------------
 * Writes.
 * ------------------------------------------------------------------------------------------ */

static const us_user_ref *update_user(void *ctx, size_t i, us_user_ref *tmp)
{
    const us_user_update *u = &((const us_user_update *)ctx)[i];
    tmp->user = u->user;
    tmp->len = u->user_len;
    return tmp;
}

/* DEL, then ZADD GT (+ state replace in MULTI/EXEC) and PEXPIRE. */
static void append_update(us_redis *r, sink *s, size_t i, const char *key, size_t klen, void *ctx)
{
    const us_user_update *u = &((const us_user_update *)ctx)[i];
    if (u->del) {
        const char *argv[2] = {"DEL", key};
        size_t lens[2] = {3, klen};
        sink_cmd(s, 2, argv, lens);
    }
    if (u->active == US_TIME_NONE && u->online == US_TIME_NONE) return;

    char ta[24], to[24], ttl[24];
    char member[sizeof(STATE_MEMBER_PREFIX) + US_STATE_MAX];
    const char *argv[10];
    size_t lens[10];
    int argc = 0;

    if (u->has_state) {
        const char *multi[1] = {"MULTI"};
        size_t mlen[1] = {5};
        sink_cmd(s, 1, multi, mlen);
        const char *zrem[4] = {"ZREMRANGEBYSCORE", key, STATE_SCORE, STATE_SCORE};
        size_t zlen[4] = {16, klen, 2, 2};
        sink_cmd(s, 4, zrem, zlen);
    }
    argv[argc] = "ZADD", lens[argc++] = 4;
    argv[argc] = key, lens[argc++] = klen;
    argv[argc] = "GT", lens[argc++] = 2;
    if (u->active != US_TIME_NONE) {
        lens[argc] = (size_t)snprintf(ta, sizeof(ta), "%lld", (long long)u->active);
        argv[argc++] = ta;
        argv[argc] = "a", lens[argc++] = 1;
    }
    if (u->online != US_TIME_NONE) {
        lens[argc] = (size_t)snprintf(to, sizeof(to), "%lld", (long long)u->online);
        argv[argc++] = to;
        argv[argc] = "o", lens[argc++] = 1;
    }
    if (u->has_state && u->state_len > 0) {
        size_t plen = sizeof(STATE_MEMBER_PREFIX) - 1;
        memcpy(member, STATE_MEMBER_PREFIX, plen);
        memcpy(member + plen, u->state, u->state_len);
        argv[argc] = STATE_SCORE, lens[argc++] = 2;
        argv[argc] = member, lens[argc++] = plen + u->state_len;
    }
    sink_cmd(s, argc, argv, lens);

    const char *exp[3] = {"PEXPIRE", key, ttl};
    size_t elen[3] = {7, klen, (size_t)snprintf(ttl, sizeof(ttl), "%lld", (long long)r->expire_ms)};
    sink_cmd(s, 3, exp, elen);
    if (u->has_state) {
        const char *exec[1] = {"EXEC"};
        size_t xlen[1] = {4};
        sink_cmd(s, 1, exec, xlen);
    }
}

/* Waits until wait_replicas replicas of every written node have the writes (Redis WAIT), so that
 * a failover to a replica cannot lose writes whose offsets the worker is about to store. */
static int wait_for_replicas(us_redis *r, char *err, size_t errlen)
{
    char want[16], timeout[24];
    snprintf(want, sizeof(want), "%d", r->wait_replicas);
    snprintf(timeout, sizeof(timeout), "%lld", (long long)r->wait_timeout_ms);
    for (size_t i = 0; i < r->nnodes; i++) {
        node *n = &r->nodes[i];
        if (!n->used || !n->c) continue;
        const char *argv[3] = {"WAIT", want, timeout};
        redisReply *reply = setup_command(n->c, &n->addr, 3, argv, err, errlen);
        if (!reply) {
            node_close(r, n);
            if (r->topo == TOPO_SENTINEL) r->resolve_needed = 1;
            return -1;
        }
        long long acked = reply->type == REDIS_REPLY_INTEGER ? reply->integer : -1;
        freeReplyObject(reply);
        if (acked < r->wait_replicas) {
            snprintf(err, errlen,
                     "redis %s:%d: only %lld of %d replicas acknowledged the writes within %lld ms "
                     "(user_status.redis_wait_replicas)",
                     n->addr.host, n->addr.port, acked, r->wait_replicas,
                     (long long)r->wait_timeout_ms);
            return -1;
        }
    }
    return 0;
}

int us_redis_apply(us_redis *r, const us_user_update *updates, size_t n, char *err, size_t errlen)
{
    store_op op = {n, update_user, append_update, NULL, (void *)updates};
    if (run_op(r, &op, err, errlen) != 0) return -1;
    return r->wait_replicas > 0 && n > 0 ? wait_for_replicas(r, err, errlen) : 0;
}

/* ---------------------------------------------------------------------------------------------
 * Reads.
 * ------------------------------------------------------------------------------------------ */

typedef struct get_ctx {
    const us_user_ref *users;
    us_status *out;
} get_ctx;

static const us_user_ref *get_user(void *ctx, size_t i, us_user_ref *tmp)
{
    (void)tmp;
    return &((get_ctx *)ctx)->users[i];
}

static void append_get(us_redis *r, sink *s, size_t i, const char *key, size_t klen, void *ctx)
{
    const char *argv[5] = {"ZRANGE", key, "0", "-1", "WITHSCORES"};
    size_t lens[5] = {6, klen, 1, 2, 10};
    sink_cmd(s, 5, argv, lens);
}

/* Fills one status from a ZRANGE ... WITHSCORES reply. */
static void parse_status(const redisReply *reply, us_status *st)
{
    st->active = US_TIME_NONE;
    st->online = US_TIME_NONE;
    st->has_state = 0;
    st->state_len = 0;
    if (reply->type != REDIS_REPLY_ARRAY) return;
    for (size_t i = 0; i + 1 < reply->elements; i += 2) {
        const redisReply *m = reply->element[i], *score = reply->element[i + 1];
        if (m->type != REDIS_REPLY_STRING || score->type != REDIS_REPLY_STRING) continue;
        if (m->len == 1 && (m->str[0] == 'a' || m->str[0] == 'o')) {
            int64_t t = strtoll(score->str, NULL, 10);
            if (m->str[0] == 'a')
                st->active = t;
            else
                st->online = t;
        } else if (m->len >= 2 && memcmp(m->str, STATE_MEMBER_PREFIX, 2) == 0 &&
                   m->len - 2 <= US_STATE_MAX) {
            st->has_state = 1;
            st->state_len = m->len - 2;
            memcpy(st->state, m->str + 2, st->state_len);
        }
    }
}

static void consume_get(void *ctx, size_t i, redisReply *reply)
{
    parse_status(reply, &((get_ctx *)ctx)->out[i]);
}

int us_redis_get(us_redis *r, const us_user_ref *users, size_t n, us_status *out, char *err,
                 size_t errlen)
{
    get_ctx ctx = {users, out};
    store_op op = {n, get_user, append_get, consume_get, &ctx};
    if (run_op(r, &op, err, errlen) == 0) return 0;
    /* A pooled connection may have been closed by the server while idle, or the topology changed:
     * retry once on fresh connections (reads are idempotent). */
    us_debug("retrying read after: %s", err);
    return run_op(r, &op, err, errlen);
}

int us_redis_ping(us_redis *r, char *err, size_t errlen)
{
    if (prepare(r, err, errlen) != 0) return -1;
    for (size_t i = 0; i < r->nnodes; i++) {
        node *n = &r->nodes[i];
        if (r->topo == TOPO_CLUSTER) { /* Only the masters the map routes to. */
            int used = 0;
            for (size_t s = 0; s < US_CLUSTER_SLOTS && !used; s++) used = r->slot_node[s] == i;
            if (!used) continue;
        }
        if (node_connect(r, n, err, errlen) != 0) return -1;
        const char *argv[1] = {"PING"};
        redisReply *reply = setup_command(n->c, &n->addr, 1, argv, err, errlen);
        if (!reply) {
            node_close(r, n);
            if (r->topo == TOPO_SENTINEL) r->resolve_needed = 1;
            return -1;
        }
        freeReplyObject(reply);
    }
    return 0;
}
