/* Implementation of Redis topologies: cluster slot hashing, redirects and slot maps, the node
 * table, Sentinel look-ups. */
#include "redis_topology.h"

#include "log.h"
#include "metrics.h"

#include <stdio.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <string.h>

uint16_t us_crc16(const char *buf, size_t len)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((unsigned char)buf[i] << 8);
        for (int b = 0; b < 8; b++) crc = crc & 0x8000 ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

uint16_t us_cluster_slot(const char *key, size_t len)
{
    /* Hash only what is between the first '{' and the next '}', if that is not empty. */
    const char *open = memchr(key, '{', len);
    if (open) {
        size_t rest = len - (size_t)(open - key) - 1;
        const char *close = memchr(open + 1, '}', rest);
        if (close && close > open + 1)
            return us_crc16(open + 1, (size_t)(close - open - 1)) & (US_CLUSTER_SLOTS - 1);
    }
    return us_crc16(key, len) & (US_CLUSTER_SLOTS - 1);
}

/* Splits "host:port", "[v6]:port" or ":port" (empty host) of len bytes into host and port. */
static int parse_endpoint(const char *p, size_t len, char *host, size_t hostcap, int *port)
{
    const char *end = p + len, *colon = NULL;
    for (const char *q = end; q > p; q--)
        if (q[-1] == ':') {
            colon = q - 1;
            break;
        }
    if (!colon || colon + 1 == end) return -1;
    const char *h = p, *hend = colon;
    if (hend - h >= 2 && *h == '[' && hend[-1] == ']') h++, hend--;
    size_t hlen = (size_t)(hend - h);
    if (hlen >= hostcap) return -1;
    long v = 0;
    for (const char *q = colon + 1; q < end; q++) {
        if (*q < '0' || *q > '9') return -1;
        v = v * 10 + (*q - '0');
        if (v > 65535) return -1;
    }
    if (v < 1) return -1;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = (int)v;
    return 0;
}

int us_redirect_parse(const char *text, size_t len, us_redirect *r)
{
    memset(r, 0, sizeof(*r));
    us_redirect_kind kind;
    size_t skip;
    if (len > 6 && memcmp(text, "MOVED ", 6) == 0) {
        kind = US_REDIRECT_MOVED;
        skip = 6;
    } else if (len > 4 && memcmp(text, "ASK ", 4) == 0) {
        kind = US_REDIRECT_ASK;
        skip = 4;
    } else {
        return -1;
    }
    const char *p = text + skip, *end = text + len;
    long slot = 0;
    int digits = 0;
    while (p < end && *p >= '0' && *p <= '9' && digits < 6) slot = slot * 10 + (*p++ - '0'), digits++;
    if (!digits || slot >= US_CLUSTER_SLOTS || p >= end || *p != ' ') return -1;
    p++;
    const char *ep = p;
    while (ep < end && *ep != ' ' && *ep != '\r' && *ep != '\n') ep++;
    if (parse_endpoint(p, (size_t)(ep - p), r->host, sizeof(r->host), &r->port) != 0) return -1;
    r->kind = kind;
    r->slot = (uint16_t)slot;
    return 0;
}

/* An integer reply, or a string reply holding a decimal number. Returns -1 for anything else. */
static long long reply_number(const redisReply *r)
{
    if (r->type == REDIS_REPLY_INTEGER) return r->integer;
    if (r->type == REDIS_REPLY_STRING && r->len > 0 && r->len < 20) {
        char *end;
        long long v = strtoll(r->str, &end, 10);
        if (end == r->str + r->len) return v;
    }
    return -1;
}

static int reply_is(const redisReply *r, const char *s)
{
    return (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) &&
           r->len == strlen(s) && memcmp(r->str, s, r->len) == 0;
}

/* Looks a field up in a RESP2 flat name/value array. */
static const redisReply *field(const redisReply *map, const char *name)
{
    if (map->type != REDIS_REPLY_ARRAY) return NULL;
    for (size_t i = 0; i + 1 < map->elements; i += 2)
        if (reply_is(map->element[i], name)) return map->element[i + 1];
    return NULL;
}

static int copy_host(const redisReply *r, char *host, size_t cap)
{
    if (!r || r->type != REDIS_REPLY_STRING || r->len == 0 || r->len >= cap) return -1;
    memcpy(host, r->str, r->len);
    host[r->len] = '\0';
    return 0;
}

int us_cluster_parse_shards(const redisReply *reply, us_slot_range *out, size_t cap)
{
    if (reply->type != REDIS_REPLY_ARRAY) return -1;
    size_t n = 0;
    for (size_t s = 0; s < reply->elements; s++) {
        const redisReply *shard = reply->element[s];
        const redisReply *slots = field(shard, "slots"), *nodes = field(shard, "nodes");
        if (!slots || !nodes || slots->type != REDIS_REPLY_ARRAY ||
            nodes->type != REDIS_REPLY_ARRAY || slots->elements % 2)
            return -1;
        char host[256];
        int port = -1;
        for (size_t k = 0; k < nodes->elements && port < 0; k++) {
            const redisReply *node = nodes->element[k];
            const redisReply *role = field(node, "role"), *health = field(node, "health");
            if (!role || !reply_is(role, "master")) continue;
            if (health && !reply_is(health, "online")) continue;
            const redisReply *p = field(node, "port");
            long long pv = p ? reply_number(p) : -1;
            if (pv < 1 || pv > 65535) continue;
            const redisReply *ep = field(node, "endpoint");
            if ((!ep || copy_host(ep, host, sizeof(host)) != 0 || strcmp(host, "?") == 0) &&
                copy_host(field(node, "ip"), host, sizeof(host)) != 0)
                continue;
            port = (int)pv;
        }
        if (port < 0) continue; /* No reachable master: those slots stay unmapped. */
        for (size_t k = 0; k + 1 < slots->elements; k += 2) {
            long long first = reply_number(slots->element[k]), last = reply_number(slots->element[k + 1]);
            if (first < 0 || last < first || last >= US_CLUSTER_SLOTS) return -1;
            if (n == cap) return -1;
            out[n].first = (uint16_t)first;
            out[n].last = (uint16_t)last;
            snprintf(out[n].host, sizeof(out[n].host), "%s", host);
            out[n].port = port;
            n++;
        }
    }
    return (int)n;
}

int us_cluster_parse_slots(const redisReply *reply, us_slot_range *out, size_t cap)
{
    if (reply->type != REDIS_REPLY_ARRAY) return -1;
    size_t n = 0;
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *e = reply->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3) return -1;
        long long first = reply_number(e->element[0]), last = reply_number(e->element[1]);
        const redisReply *master = e->element[2];
        if (first < 0 || last < first || last >= US_CLUSTER_SLOTS ||
            master->type != REDIS_REPLY_ARRAY || master->elements < 2)
            return -1;
        long long port = reply_number(master->element[1]);
        if (n == cap || port < 1 || port > 65535 ||
            copy_host(master->element[0], out[n].host, sizeof(out[n].host)) != 0)
            return -1;
        out[n].first = (uint16_t)first;
        out[n].last = (uint16_t)last;
        out[n].port = (int)port;
        n++;
    }
    return (int)n;
}

/* ---------------------------------------------------------------------------------------------
 * The node table.
 * ------------------------------------------------------------------------------------------ */

static us_metric *m_refreshes, *m_resolves;

void us_topology_interrupt(us_topology *t)
{
    pthread_mutex_lock(&t->conn_mu);
    t->interrupted = 1;
    for (size_t i = 0; i < t->nnodes; i++)
        if (t->nodes[i].c && t->nodes[i].c->fd >= 0) shutdown(t->nodes[i].c->fd, SHUT_RDWR);
    pthread_mutex_unlock(&t->conn_mu);
}

void us_topology_metrics_register(void)
{
    m_refreshes = us_metric_counter("userstatus_redis_slot_map_refreshes_total",
                                    "Redis Cluster slot maps read.");
    m_resolves = us_metric_counter("userstatus_redis_sentinel_lookups_total",
                                   "Masters looked up through the sentinels.");
}

static void count(us_metric *m)
{
    if (m) us_metric_add(m, 1);
}

static void node_close(us_topology *t, us_redis_node *n)
{
    pthread_mutex_lock(&t->conn_mu);
    if (n->c) redisFree(n->c);
    n->c = NULL;
    pthread_mutex_unlock(&t->conn_mu);
    n->pending = 0;
}

void us_topology_close_all(us_topology *t)
{
    for (size_t i = 0; i < t->nnodes; i++) node_close(t, &t->nodes[i]);
}

void us_topology_node_failed(us_topology *t, uint16_t idx)
{
    if (idx < t->nnodes) node_close(t, &t->nodes[idx]);
    if (t->kind == US_TOPO_SENTINEL) t->resolve_needed = 1;
    if (t->kind == US_TOPO_CLUSTER) t->refresh_needed = 1;
}

int us_topology_connect(us_topology *t, uint16_t idx, char *err, size_t errlen)
{
    us_redis_node *n = &t->nodes[idx];
    if (n->c && n->c->err == 0) return 0;
    node_close(t, n);
    pthread_mutex_lock(&t->conn_mu);
    int interrupted = t->interrupted;
    pthread_mutex_unlock(&t->conn_mu);
    redisContext *c = NULL;
    if (interrupted)
        snprintf(err, errlen, "redis %s:%d: interrupted (shutting down)", n->addr.host, n->addr.port);
    else
        c = us_redis_connect(&n->addr, &t->opts, err, errlen);
    pthread_mutex_lock(&t->conn_mu);
    if (c && t->interrupted) { /* Interrupted while connecting. */
        redisFree(c);
        c = NULL;
        snprintf(err, errlen, "redis %s:%d: interrupted (shutting down)", n->addr.host, n->addr.port);
    }
    n->c = c;
    pthread_mutex_unlock(&t->conn_mu);
    if (!n->c) {
        us_topology_node_failed(t, idx);
        return -1;
    }
    return 0;
}

uint16_t us_topology_node(us_topology *t, const char *host, int port)
{
    for (size_t i = 0; i < t->nnodes; i++)
        if (t->nodes[i].addr.port == port && strcmp(t->nodes[i].addr.host, host) == 0)
            return (uint16_t)i;
    if (t->nnodes >= US_NO_NODE) return US_NO_NODE;
    if (t->nnodes == t->nodes_cap) {
        pthread_mutex_lock(&t->conn_mu);
        t->nodes_cap = t->nodes_cap ? t->nodes_cap * 2 : 8;
        t->nodes = realloc(t->nodes, t->nodes_cap * sizeof(us_redis_node));
        if (!t->nodes) abort();
        pthread_mutex_unlock(&t->conn_mu);
    }
    us_redis_node *n = &t->nodes[t->nnodes];
    memset(n, 0, sizeof(*n));
    snprintf(n->addr.host, sizeof(n->addr.host), "%s", host);
    n->addr.port = port;
    n->addr.db = t->db; /* Sentinel's master: user_status.redis_db; Cluster nodes: 0 (enforced). */
    us_redis_addr_default_auth(&n->addr, t->user, t->password);
    return (uint16_t)t->nnodes++;
}

uint16_t us_topology_route(const us_topology *t, size_t shard, const char *key, size_t klen)
{
    switch (t->kind) {
    case US_TOPO_SHARDS:
        return shard < t->nnodes ? (uint16_t)shard : US_NO_NODE;
    case US_TOPO_SENTINEL:
        return 0;
    case US_TOPO_CLUSTER:
        return t->slot_node[us_cluster_slot(key, klen)];
    }
    return US_NO_NODE;
}

void us_topology_moved(us_topology *t, uint16_t slot, uint16_t idx)
{
    if (t->slot_node) t->slot_node[slot] = idx;
    t->refresh_needed = 1;
}

/* ---------------------------------------------------------------------------------------------
 * Sentinel: finding the master.
 * ------------------------------------------------------------------------------------------ */

static int sentinel_resolve(us_topology *t, char *err, size_t errlen)
{
    char last[600] = "no sentinel configured";
    for (size_t i = 0; i < t->nseeds; i++) {
        const us_redis_addr *s = &t->seeds[i];
        redisContext *c = us_redis_connect(s, &t->opts, last, sizeof(last));
        if (!c) continue;
        const char *argv[3] = {"SENTINEL", "get-master-addr-by-name", t->master_name};
        redisReply *reply = us_redis_command(c, s, 3, argv, last, sizeof(last));
        if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
            reply->element[0]->type == REDIS_REPLY_STRING &&
            reply->element[1]->type == REDIS_REPLY_STRING) {
            const char *host = reply->element[0]->str;
            int port = atoi(reply->element[1]->str);
            us_redis_node *m = &t->nodes[0];
            if (m->addr.port != port || strcmp(m->addr.host, host) != 0) {
                if (m->addr.port)
                    us_info("sentinel: master '%s' is now %s:%d (was %s:%d)", t->master_name, host,
                            port, m->addr.host, m->addr.port);
                node_close(t, m);
                snprintf(m->addr.host, sizeof(m->addr.host), "%s", host);
                m->addr.port = port;
            }
            freeReplyObject(reply);
            redisFree(c);
            t->resolve_needed = 0;
            count(m_resolves);
            return 0;
        }
        if (reply) {
            snprintf(last, sizeof(last), "sentinel %s:%d does not know master '%s'", s->host,
                     s->port, t->master_name);
            freeReplyObject(reply);
        }
        redisFree(c);
    }
    snprintf(err, errlen, "sentinel: cannot find master '%s': %s", t->master_name, last);
    return -1;
}

/* ---------------------------------------------------------------------------------------------
 * Cluster: the slot map.
 * ------------------------------------------------------------------------------------------ */

/* The most slot ranges a slot map reply can describe: its number of range entries. */
static size_t max_ranges(const redisReply *reply, int shards)
{
    if (reply->type != REDIS_REPLY_ARRAY) return 0;
    if (!shards) return reply->elements;
    size_t n = 0;
    for (size_t s = 0; s < reply->elements; s++) {
        const redisReply *shard = reply->element[s];
        if (shard->type != REDIS_REPLY_ARRAY) continue;
        for (size_t i = 0; i + 1 < shard->elements; i += 2)
            if (shard->element[i + 1]->type == REDIS_REPLY_ARRAY)
                n += shard->element[i + 1]->elements / 2;
    }
    return n;
}

int us_topology_refresh(us_topology *t, char *err, size_t errlen)
{
    char last[600] = "no cluster node configured";
    size_t candidates = t->nseeds + t->nnodes;
    for (size_t i = 0; i < candidates; i++) {
        us_redis_addr a = i < t->nseeds ? t->seeds[i] : t->nodes[i - t->nseeds].addr;
        redisContext *c = us_redis_connect(&a, &t->opts, last, sizeof(last));
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
        /* Sized from the reply itself: a map may hold any number of ranges (up to one per slot). */
        size_t cap = max_ranges(reply, shards);
        us_slot_range *ranges = malloc((cap ? cap : 1) * sizeof(*ranges));
        if (!ranges) abort();
        int n = shards ? us_cluster_parse_shards(reply, ranges, cap)
                       : us_cluster_parse_slots(reply, ranges, cap);
        if (n > 0) {
            for (size_t s = 0; s < US_CLUSTER_SLOTS; s++) t->slot_node[s] = US_NO_NODE;
            for (int k = 0; k < n; k++) {
                uint16_t idx = us_topology_node(t, ranges[k].host, ranges[k].port);
                for (uint32_t s = ranges[k].first; s <= ranges[k].last; s++) t->slot_node[s] = idx;
            }
        }
        free(ranges);
        freeReplyObject(reply);
        redisFree(c);
        if (n > 0) {
            t->refresh_needed = 0;
            count(m_refreshes);
            return 0;
        }
        snprintf(last, sizeof(last), "redis %s:%d: unexpected slot map reply", a.host, a.port);
    }
    snprintf(err, errlen, "redis cluster: cannot read the slot map: %s", last);
    return -1;
}

int us_topology_prepare(us_topology *t, char *err, size_t errlen)
{
    if (t->kind == US_TOPO_SENTINEL && t->resolve_needed) return sentinel_resolve(t, err, errlen);
    if (t->kind == US_TOPO_CLUSTER && t->refresh_needed) {
        /* A stale map still routes most slots right, and MOVED fixes the rest. */
        int have_map = t->nnodes > 0;
        if (us_topology_refresh(t, err, errlen) != 0 && !have_map) return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Set-up.
 * ------------------------------------------------------------------------------------------ */

static struct timeval ms_to_tv(int64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    return tv;
}

/* Parses a list of addresses; those without credentials get user/password, those naming no
 * database (or database 0) get db. */
static int parse_list(const us_strlist *l, us_redis_addr **out, char *err, size_t errlen,
                      const char *user, const char *password, int db)
{
    *out = calloc(l->count ? l->count : 1, sizeof(us_redis_addr));
    if (!*out) abort();
    for (size_t i = 0; i < l->count; i++) {
        if (us_redis_addr_parse(l->items[i], &(*out)[i], err, errlen) != 0) return -1;
        us_redis_addr_default_auth(&(*out)[i], user, password);
        if ((*out)[i].db == 0) (*out)[i].db = db;
    }
    return 0;
}

int us_topology_init(us_topology *t, const us_config *cfg, char *err, size_t errlen)
{
    const typeof(cfg->user_status) *us = &cfg->user_status;
    memset(t, 0, sizeof(*t));
    pthread_mutex_init(&t->conn_mu, NULL);
    t->nshards = 1;
    t->opts.connect_timeout = ms_to_tv(us->redis_connect_timeout_ms);
    t->opts.io_timeout = ms_to_tv(us->redis_io_timeout_ms);
    snprintf(t->user, sizeof(t->user), "%s", us->redis_user);
    t->db = us->redis_cluster_address.count > 0 ? 0 : us->redis_db;
    snprintf(t->password, sizeof(t->password), "%s", us->redis_password);

    if (us->redis_cluster_address.count > 0) {
        t->kind = US_TOPO_CLUSTER;
        if (parse_list(&us->redis_cluster_address, &t->seeds, err, errlen, t->user, t->password,
                       0))
            return -1;
        t->nseeds = us->redis_cluster_address.count;
        for (size_t i = 0; i < t->nseeds; i++)
            if (t->seeds[i].db != 0) {
                snprintf(err, errlen,
                         "config key 'user_status.redis_cluster_address': Redis Cluster has only "
                         "database 0, not %d",
                         t->seeds[i].db);
                return -1;
            }
        t->slot_node = malloc(US_CLUSTER_SLOTS * sizeof(uint16_t));
        if (!t->slot_node) abort();
        for (size_t s = 0; s < US_CLUSTER_SLOTS; s++) t->slot_node[s] = US_NO_NODE;
        t->refresh_needed = 1;
        return 0;
    }
    if (us->redis_sentinel_address.count > 0) {
        t->kind = US_TOPO_SENTINEL;
        if (parse_list(&us->redis_sentinel_address, &t->seeds, err, errlen,
                       us->redis_sentinel_user, us->redis_sentinel_password, 0))
            return -1;
        t->nseeds = us->redis_sentinel_address.count;
        t->master_name = strdup(us->redis_sentinel_master_name);
        if (!t->master_name) abort();
        us_topology_node(t, "", 0); /* The master, filled in by sentinel_resolve. */
        t->resolve_needed = 1;
        return 0;
    }
    t->kind = US_TOPO_SHARDS;
    const us_strlist *addrs = us_config_redis_addresses(cfg);
    if (addrs->count == 0) {
        snprintf(err, errlen, "config key 'user_status.redis_address': no Redis address");
        return -1;
    }
    us_redis_addr *list;
    int rc = parse_list(addrs, &list, err, errlen, t->user, t->password, us->redis_db);
    if (rc == 0) {
        t->nodes = calloc(addrs->count, sizeof(us_redis_node));
        if (!t->nodes) abort();
        for (size_t i = 0; i < addrs->count; i++) t->nodes[i].addr = list[i];
        t->nnodes = t->nodes_cap = addrs->count;
        t->nshards = addrs->count;
    }
    free(list);
    return rc;
}

void us_topology_release(us_topology *t)
{
    if (!t) return;
    us_topology_close_all(t);
    pthread_mutex_destroy(&t->conn_mu); /* A zeroed mutex is a valid, unused one. */
    free(t->nodes);
    free(t->seeds);
    free(t->master_name);
    free(t->slot_node);
    memset(t, 0, sizeof(*t));
}
