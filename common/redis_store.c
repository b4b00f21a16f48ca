/* Implementation of the Redis user status store (data model: docs/choices.md).
 *
 * Writes and reads are pipelined: every command of a batch is appended to its shard's output
 * buffer, all shards' buffers are flushed, then the replies are read shard by shard. Redis answers
 * a connection's commands in order, so reading replies in the order commands were appended pairs
 * each reply with its user without any bookkeeping beyond the shard of each user. */
#include "redis_store.h"

#include "log.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_MAX 1024           /* Bytes; prefix + ':' + a 256-byte user id fits easily. */
#define STATE_MEMBER_PREFIX "s:"
#define STATE_SCORE "-1"       /* Score of the state member; times are never negative. */

typedef struct shard {
    us_redis_addr addr;
    redisContext *c;
    size_t pending; /* Replies expected for the commands appended since the last flush. */
    int failed;
} shard;

struct us_redis {
    shard *shards;
    size_t nshards;
    char *prefix;
    int64_t expire_ms;
    struct timeval connect_tv, io_tv;
    uint32_t *user_shard; /* Scratch for us_redis_get: shard of each user; grown, never shrunk. */
    size_t user_shard_cap;
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

us_redis *us_redis_new(const us_config *cfg, char *err, size_t errlen)
{
    if (cfg->user_status.redis_cluster_address.count > 0) {
        snprintf(err, errlen,
                 "config key 'user_status.redis_cluster_address': Redis Cluster is not supported "
                 "by this version yet");
        return NULL;
    }
    if (cfg->user_status.redis_sentinel_address.count > 0) {
        snprintf(err, errlen,
                 "config key 'user_status.redis_sentinel_address': Redis Sentinel is not "
                 "supported by this version yet");
        return NULL;
    }
    const us_strlist *addrs = us_config_redis_addresses(cfg);
    if (addrs->count == 0) {
        snprintf(err, errlen, "config key 'user_status.redis_address': no Redis address");
        return NULL;
    }
    us_redis *r = calloc(1, sizeof(*r));
    if (!r) abort();
    r->shards = calloc(addrs->count, sizeof(shard));
    r->prefix = strdup(cfg->user_status.redis_prefix);
    if (!r->shards || !r->prefix) abort();
    r->nshards = addrs->count;
    for (size_t i = 0; i < addrs->count; i++) {
        if (us_redis_addr_parse(addrs->items[i], &r->shards[i].addr, err, errlen) != 0) {
            us_redis_free(r);
            return NULL;
        }
    }
    r->expire_ms = cfg->user_status.expire_interval_ms;
    r->connect_tv = ms_to_tv(cfg->user_status.redis_connect_timeout_ms);
    r->io_tv = ms_to_tv(cfg->user_status.redis_io_timeout_ms);
    return r;
}

static void shard_close(shard *s)
{
    if (s->c) redisFree(s->c);
    s->c = NULL;
    s->pending = 0;
}

void us_redis_free(us_redis *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->nshards; i++) shard_close(&r->shards[i]);
    free(r->shards);
    free(r->prefix);
    free(r->user_shard);
    free(r);
}

/* Runs one command during connection set-up; returns 0 or -1 with err set. */
static int setup_command(shard *s, char *err, size_t errlen, int argc, const char **argv)
{
    redisReply *reply = redisCommandArgv(s->c, argc, argv, NULL);
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "redis %s:%d: %s failed: %s", s->addr.host, s->addr.port, argv[0],
                 reply ? reply->str : s->c->errstr);
        if (reply) freeReplyObject(reply);
        return -1;
    }
    freeReplyObject(reply);
    return 0;
}

/* Makes sure the shard has a healthy connection, with AUTH and SELECT applied. */
static int shard_connect(us_redis *r, shard *s, char *err, size_t errlen)
{
    if (s->c && s->c->err == 0) return 0;
    shard_close(s);
    s->c = redisConnectWithTimeout(s->addr.host, s->addr.port, r->connect_tv);
    if (!s->c || s->c->err) {
        snprintf(err, errlen, "redis %s:%d: cannot connect: %s", s->addr.host, s->addr.port,
                 s->c ? s->c->errstr : "out of memory");
        shard_close(s);
        return -1;
    }
    redisSetTimeout(s->c, r->io_tv);
    if (s->addr.password[0]) {
        const char *argv[3] = {"AUTH", s->addr.user[0] ? s->addr.user : s->addr.password,
                               s->addr.password};
        if (setup_command(s, err, errlen, s->addr.user[0] ? 3 : 2, argv) != 0) goto fail;
    }
    if (s->addr.db) {
        char db[16];
        snprintf(db, sizeof(db), "%d", s->addr.db);
        const char *argv[2] = {"SELECT", db};
        if (setup_command(s, err, errlen, 2, argv) != 0) goto fail;
    }
    return 0;
fail:
    shard_close(s);
    return -1;
}

/* Checks one reply; errors inside EXEC's array count too. */
static const char *reply_error(const redisReply *reply)
{
    if (reply->type == REDIS_REPLY_ERROR) return reply->str;
    if (reply->type == REDIS_REPLY_ARRAY)
        for (size_t i = 0; i < reply->elements; i++)
            if (reply->element[i]->type == REDIS_REPLY_ERROR) return reply->element[i]->str;
    return NULL;
}

/* Flushes every shard's pipeline. Failed shards are closed and marked. Returns the number of
 * shards that failed; err holds the first failure. */
static int flush_all(us_redis *r, char *err, size_t errlen)
{
    int failures = 0;
    for (size_t i = 0; i < r->nshards; i++) {
        shard *s = &r->shards[i];
        if (s->pending == 0 || s->failed) continue;
        int done = 0;
        while (!done) {
            if (redisBufferWrite(s->c, &done) == REDIS_ERR) {
                if (!failures++)
                    snprintf(err, errlen, "redis %s:%d: write failed: %s", s->addr.host,
                             s->addr.port, s->c->errstr);
                s->failed = 1;
                shard_close(s);
                break;
            }
        }
    }
    return failures;
}

/* Reads one pipelined reply of a shard. Returns the reply (caller frees) or NULL with the shard
 * closed and marked failed. */
static redisReply *read_reply(shard *s, char *err, size_t errlen, int *failures)
{
    void *reply = NULL;
    if (redisGetReply(s->c, &reply) != REDIS_OK || !reply) {
        if (!(*failures)++)
            snprintf(err, errlen, "redis %s:%d: read failed: %s", s->addr.host, s->addr.port,
                     s->c->errstr[0] ? s->c->errstr : "no reply");
        s->failed = 1;
        shard_close(s);
        return NULL;
    }
    s->pending--;
    return reply;
}

static void append(shard *s, int argc, const char **argv, const size_t *argvlen)
{
    redisAppendCommandArgv(s->c, argc, argv, argvlen);
    s->pending++;
}

/* Appends the commands of one user's update; see us_redis_apply. */
static void append_update(us_redis *r, shard *s, const us_user_update *u, const char *key,
                          size_t klen)
{
    if (u->del) {
        const char *argv[2] = {"DEL", key};
        size_t lens[2] = {3, klen};
        append(s, 2, argv, lens);
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
        append(s, 1, multi, mlen);
        const char *zrem[4] = {"ZREMRANGEBYSCORE", key, STATE_SCORE, STATE_SCORE};
        size_t zlen[4] = {16, klen, 2, 2};
        append(s, 4, zrem, zlen);
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
    append(s, argc, argv, lens);

    const char *exp[3] = {"PEXPIRE", key, ttl};
    size_t elen[3] = {7, klen, (size_t)snprintf(ttl, sizeof(ttl), "%lld", (long long)r->expire_ms)};
    append(s, 3, exp, elen);
    if (u->has_state) {
        const char *exec[1] = {"EXEC"};
        size_t xlen[1] = {4};
        append(s, 1, exec, xlen);
    }
}

/* Connects every shard that the users need; returns 0 or -1 with err set. */
static int connect_needed(us_redis *r, char *err, size_t errlen)
{
    for (size_t i = 0; i < r->nshards; i++) {
        r->shards[i].pending = 0;
        r->shards[i].failed = 0;
        if (shard_connect(r, &r->shards[i], err, errlen) != 0) return -1;
    }
    return 0;
}

int us_redis_apply(us_redis *r, const us_user_update *updates, size_t n, char *err, size_t errlen)
{
    if (n == 0) return 0;
    if (connect_needed(r, err, errlen) != 0) return -1;

    char key[KEY_MAX];
    for (size_t i = 0; i < n; i++) {
        const us_user_update *u = &updates[i];
        int klen = us_redis_key(r->prefix, u->user, u->user_len, key, sizeof(key));
        if (klen < 0) {
            snprintf(err, errlen, "redis key for user '%.*s' is too long", (int)u->user_len,
                     u->user);
            for (size_t j = 0; j < r->nshards; j++) shard_close(&r->shards[j]);
            return -1;
        }
        shard *s = &r->shards[us_shard_for_user(u->user, u->user_len, r->nshards)];
        append_update(r, s, u, key, (size_t)klen);
    }

    int failures = flush_all(r, err, errlen);
    for (size_t i = 0; i < r->nshards; i++) {
        shard *s = &r->shards[i];
        while (!s->failed && s->pending > 0) {
            redisReply *reply = read_reply(s, err, errlen, &failures);
            if (!reply) break;
            const char *e = reply_error(reply);
            if (e && !failures++)
                snprintf(err, errlen, "redis %s:%d: write refused: %s", s->addr.host,
                         s->addr.port, e);
            freeReplyObject(reply);
        }
    }
    return failures ? -1 : 0;
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

static int get_once(us_redis *r, const us_user_ref *users, size_t n, us_status *out, char *err,
                    size_t errlen)
{
    if (connect_needed(r, err, errlen) != 0) return -1;
    if (n > r->user_shard_cap) {
        free(r->user_shard);
        r->user_shard = malloc(n * sizeof(*r->user_shard));
        if (!r->user_shard) abort();
        r->user_shard_cap = n;
    }
    char key[KEY_MAX];
    for (size_t i = 0; i < n; i++) {
        int klen = us_redis_key(r->prefix, users[i].user, users[i].len, key, sizeof(key));
        if (klen < 0) {
            snprintf(err, errlen, "redis key for user '%.*s' is too long", (int)users[i].len,
                     users[i].user);
            for (size_t j = 0; j < r->nshards; j++) shard_close(&r->shards[j]);
            return -1;
        }
        uint32_t si = (uint32_t)us_shard_for_user(users[i].user, users[i].len, r->nshards);
        r->user_shard[i] = si;
        const char *argv[5] = {"ZRANGE", key, "0", "-1", "WITHSCORES"};
        size_t lens[5] = {6, (size_t)klen, 1, 2, 10};
        append(&r->shards[si], 5, argv, lens);
    }
    int failures = flush_all(r, err, errlen);
    for (size_t i = 0; i < n; i++) {
        shard *s = &r->shards[r->user_shard[i]];
        if (s->failed) continue;
        redisReply *reply = read_reply(s, err, errlen, &failures);
        if (!reply) continue;
        const char *e = reply_error(reply);
        if (e && !failures++)
            snprintf(err, errlen, "redis %s:%d: read refused: %s", s->addr.host, s->addr.port, e);
        parse_status(reply, &out[i]);
        freeReplyObject(reply);
    }
    return failures ? -1 : 0;
}

int us_redis_get(us_redis *r, const us_user_ref *users, size_t n, us_status *out, char *err,
                 size_t errlen)
{
    if (n == 0) return 0;
    if (get_once(r, users, n, out, err, errlen) == 0) return 0;
    /* A pooled connection may have been closed by the server while idle: retry once on fresh
     * connections (reads are idempotent). */
    us_debug("retrying read after: %s", err);
    return get_once(r, users, n, out, err, errlen);
}

int us_redis_ping(us_redis *r, char *err, size_t errlen)
{
    if (connect_needed(r, err, errlen) != 0) return -1;
    for (size_t i = 0; i < r->nshards; i++) {
        const char *argv[1] = {"PING"};
        if (setup_command(&r->shards[i], err, errlen, 1, argv) != 0) {
            shard_close(&r->shards[i]);
            return -1;
        }
    }
    return 0;
}
