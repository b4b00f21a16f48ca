/* Implementation of the per-user status model: one sorted set per user (docs/choices.md).
 *
 * Key "<prefix>:<user>", members `a` and `o` scored by the active and online times (Unix seconds),
 * and at most one member `s:<state>` scored -1. A write is one MULTI/EXEC per user -- DEL when
 * the batch deleted the user, the state replace, ZADD GT (Redis keeps the maximum) and PEXPIRE --
 * so the key never exists without its TTL. A read is one ZRANGE ... WITHSCORES per user. */
#include "status_model.h"

#include "hash.h"
#include "int_text.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_MAX 1024 /* Bytes; prefix + ':' + a 256-byte user id fits easily. */
#define STATE_MEMBER_PREFIX "s:"
#define STATE_SCORE "-1" /* Score of the state member; times are never negative. */

struct us_status_model {
    char *prefix;
    char ttl[US_INT_TEXT_MAX]; /* user_status.expire_interval in ms: every PEXPIRE's argument. */
    size_t ttl_len;
    size_t nshards;
    char key[KEY_MAX]; /* The key of the item being routed or appended. */
    size_t klen;
};

int us_redis_key(const char *prefix, const char *user, size_t user_len, char *buf, size_t cap)
{
    size_t plen = strlen(prefix);
    if (plen + 1 + user_len > cap) return -1;
    memcpy(buf, prefix, plen);
    buf[plen] = ':';
    memcpy(buf + plen + 1, user, user_len);
    return (int)(plen + 1 + user_len);
}

static us_status_model *create(const us_config *cfg, size_t nshards, char *err, size_t errlen)
{
    us_status_model *m = calloc(1, sizeof(*m));
    if (!m) abort();
    m->prefix = strdup(cfg->user_status.redis_prefix);
    if (!m->prefix) abort();
    m->ttl_len = us_i64_cstr(m->ttl, cfg->user_status.expire_interval_ms);
    m->nshards = nshards;
    if (strlen(m->prefix) + 1 + US_USER_ID_MAX > KEY_MAX) {
        snprintf(err, errlen, "config key 'user_status.redis_prefix': longer than %d bytes",
                 KEY_MAX - 1 - US_USER_ID_MAX);
        free(m->prefix);
        free(m);
        return NULL;
    }
    return m;
}

static void destroy(us_status_model *m)
{
    if (!m) return;
    free(m->prefix);
    free(m);
}

/* Sets m->key to the user's key; the prefix length was checked at creation, the id length by the
 * event decoder and the API, so only an impossible id is cut. */
static void set_key(us_status_model *m, const char *user, size_t len)
{
    if (len > US_USER_ID_MAX) len = US_USER_ID_MAX;
    m->klen = (size_t)us_redis_key(m->prefix, user, len, m->key, sizeof(m->key));
}

/* ---------------------------------------------------------------------------------------------
 * Writes.
 * ------------------------------------------------------------------------------------------ */

typedef struct apply_ctx {
    us_status_model *m;
    const us_user_update *updates;
    uint8_t *refused;
    int nrefused;
    char *err;
    size_t errlen;
} apply_ctx;

static void apply_route(void *arg, size_t i, size_t *shard, const char **key, size_t *klen)
{
    apply_ctx *c = arg;
    const us_user_update *u = &c->updates[i];
    *shard = us_shard_for_user(u->user, u->user_len, c->m->nshards);
    set_key(c->m, u->user, u->user_len);
    *key = c->m->key;
    *klen = c->m->klen;
}

/* [MULTI] [DEL] [state replace] ZADD GT + PEXPIRE [EXEC]; a bare DEL when only deleted. */
static void apply_append(void *arg, size_t i, us_pipe_sink *s)
{
    apply_ctx *c = arg;
    us_status_model *m = c->m;
    const us_user_update *u = &c->updates[i];
    set_key(m, u->user, u->user_len);
    const char *key = m->key;
    size_t klen = m->klen;
    int write = u->active != US_TIME_NONE || u->online != US_TIME_NONE;

    if (write) us_pipe_cmd1(s, "MULTI");
    if (u->del) {
        const char *argv[2] = {"DEL", key};
        size_t lens[2] = {3, klen};
        us_pipe_cmd(s, 2, argv, lens);
    }
    if (!write) return;

    if (u->has_state) {
        const char *zrem[4] = {"ZREMRANGEBYSCORE", key, STATE_SCORE, STATE_SCORE};
        size_t zlen[4] = {16, klen, 2, 2};
        us_pipe_cmd(s, 4, zrem, zlen);
    }
    char ta[US_INT_TEXT_MAX], to[US_INT_TEXT_MAX];
    char member[sizeof(STATE_MEMBER_PREFIX) + US_STATE_MAX];
    const char *argv[10];
    size_t lens[10];
    int argc = 0;
    argv[argc] = "ZADD", lens[argc++] = 4;
    argv[argc] = key, lens[argc++] = klen;
    argv[argc] = "GT", lens[argc++] = 2;
    if (u->active != US_TIME_NONE) {
        lens[argc] = us_i64_text(ta, u->active);
        argv[argc++] = ta;
        argv[argc] = "a", lens[argc++] = 1;
    }
    if (u->online != US_TIME_NONE) {
        lens[argc] = us_i64_text(to, u->online);
        argv[argc++] = to;
        argv[argc] = "o", lens[argc++] = 1;
    }
    if (u->has_state && u->state_len > 0) {
        size_t plen = sizeof(STATE_MEMBER_PREFIX) - 1;
        size_t slen = u->state_len < US_STATE_MAX ? u->state_len : US_STATE_MAX;
        memcpy(member, STATE_MEMBER_PREFIX, plen);
        memcpy(member + plen, u->state, slen);
        argv[argc] = STATE_SCORE, lens[argc++] = 2;
        argv[argc] = member, lens[argc++] = plen + slen;
    }
    us_pipe_cmd(s, argc, argv, lens);

    const char *exp[3] = {"PEXPIRE", key, m->ttl};
    size_t elen[3] = {7, klen, m->ttl_len};
    us_pipe_cmd(s, 3, exp, elen);
    us_pipe_cmd1(s, "EXEC");
}

static void apply_refused(void *arg, size_t i, const char *error)
{
    apply_ctx *c = arg;
    const us_user_update *u = &c->updates[i];
    if (c->refused[i]) return;
    c->refused[i] = 1;
    if (c->nrefused++ == 0)
        snprintf(c->err, c->errlen, "%s (key %s:%.*s)", error, c->m->prefix, (int)u->user_len,
                 u->user);
}

static int apply(us_status_model *m, us_pipeline *p, const us_user_update *updates, size_t n,
                 uint8_t *refused, char *err, size_t errlen)
{
    memset(refused, 0, n);
    apply_ctx c = {m, updates, refused, 0, err, errlen};
    us_pipe_op op = {n, &c, apply_route, apply_append, NULL, apply_refused};
    if (us_pipeline_run(p, &op, err, errlen) != 0) return -1;
    return c.nrefused;
}

/* ---------------------------------------------------------------------------------------------
 * Reads.
 * ------------------------------------------------------------------------------------------ */

typedef struct get_ctx {
    us_status_model *m;
    const us_user_ref *users;
    us_status *out;
    int nrefused;
    char *err;
    size_t errlen;
} get_ctx;

static void get_route(void *arg, size_t i, size_t *shard, const char **key, size_t *klen)
{
    get_ctx *c = arg;
    *shard = us_shard_for_user(c->users[i].user, c->users[i].len, c->m->nshards);
    set_key(c->m, c->users[i].user, c->users[i].len);
    *key = c->m->key;
    *klen = c->m->klen;
}

static void get_append(void *arg, size_t i, us_pipe_sink *s)
{
    get_ctx *c = arg;
    set_key(c->m, c->users[i].user, c->users[i].len);
    const char *argv[5] = {"ZRANGE", c->m->key, "0", "-1", "WITHSCORES"};
    size_t lens[5] = {6, c->m->klen, 1, 2, 10};
    us_pipe_cmd(s, 5, argv, lens);
}

/* Fills one status from a ZRANGE ... WITHSCORES reply. */
static void get_consume(void *arg, size_t i, redisReply **replies, size_t nreplies)
{
    us_status *st = &((get_ctx *)arg)->out[i];
    const redisReply *reply = nreplies ? replies[nreplies - 1] : NULL;
    if (!reply || reply->type != REDIS_REPLY_ARRAY) return;
    for (size_t k = 0; k + 1 < reply->elements; k += 2) {
        const redisReply *mem = reply->element[k], *score = reply->element[k + 1];
        if (mem->type != REDIS_REPLY_STRING || score->type != REDIS_REPLY_STRING) continue;
        if (mem->len == 1 && (mem->str[0] == 'a' || mem->str[0] == 'o')) {
            int64_t t = strtoll(score->str, NULL, 10);
            if (mem->str[0] == 'a')
                st->active = t;
            else
                st->online = t;
        } else if (mem->len >= 2 && memcmp(mem->str, STATE_MEMBER_PREFIX, 2) == 0 &&
                   mem->len - 2 <= US_STATE_MAX) {
            st->has_state = 1;
            st->state_len = mem->len - 2;
            memcpy(st->state, mem->str + 2, st->state_len);
        }
    }
}

/* A user whose key Redis refused reads as absent. */
static void get_refused(void *arg, size_t i, const char *error)
{
    get_ctx *c = arg;
    char shown[US_LOG_ESCAPE_CAP];
    if (c->nrefused++ == 0)
        snprintf(c->err, c->errlen, "%s (key of user '%s')", error,
                 us_log_escape(c->users[i].user, c->users[i].len, shown, sizeof(shown)));
}

static int get(us_status_model *m, us_pipeline *p, const us_user_ref *users, size_t n,
               us_status *out, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) us_status_clear(&out[i]);
    get_ctx c = {m, users, out, 0, err, errlen};
    us_pipe_op op = {n, &c, get_route, get_append, get_consume, get_refused};
    if (us_pipeline_run(p, &op, err, errlen) != 0) return -1;
    return c.nrefused;
}

const us_status_model_ops us_status_per_user = {"per_user", create, destroy, apply, get};
