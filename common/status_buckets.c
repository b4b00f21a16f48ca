/* Implementation of the bucket status model: users grouped into buckets (docs/choices.md).
 *
 * Layout
 * ------
 * A user's bucket is us_bucket_of(user) among the buckets of its shard (the shard itself is picked
 * by the topology as for every model). A bucket b is three keys sharing one cluster slot:
 *   <prefix>:{b}:a   sorted set, member = user id, score = last active time (Unix seconds)
 *   <prefix>:{b}:o   sorted set, member = user id, score = last online time
 *   <prefix>:{b}:s   hash, field = user id, value = state (only users that have one)
 * With ~50 users per bucket each structure stays a listpack: ~30 bytes per user instead of ~145
 * for a key per user. An overflowing bucket turns into a skiplist/hashtable: more memory, same
 * answers.
 *
 * Writes
 * ------
 * One MULTI/EXEC per bucket per batch: ZREM/HDEL of the batch's deleted users, one ZADD GT per
 * sorted set with all of the batch's users of the bucket (Redis keeps the maximum, so replays and
 * reordering never move a time back), HSET/HDEL of states, and PEXPIRE of every key written, all in
 * one transaction so that no key ever exists without a TTL.
 *
 * Expiry
 * ------
 * A user expires expire_interval after its latest active/online time: reads treat a user whose
 * times are both older than the cutoff as absent (state included), so expiry is exact whatever is
 * still stored. Stored bytes are bounded by trimming: before writing a bucket, once per trim
 * period (expire_interval / TRIM_PERIOD_DIVISOR, at most TRIM_PERIOD_MAX_MS) per bucket per
 * process, a small script (TRIM_SCRIPT) removes the bucket's expired users from all three keys and
 * sets every key's TTL to expire_interval + trim period. A bucket's first trim in a process comes
 * at a point of the period fixed by a hash of the bucket, so that a worker that starts does not
 * run the script on every bucket at once.
 *
 * TTLs: every PEXPIRE sets the same duration, expire_interval + trim period, so a TTL only ever
 * moves forward. A write sets it on the keys it writes, and also on the bucket's other keys when
 * this process has not refreshed them for a trim period (a trim refreshes them too): a key not
 * written by a batch was refreshed by that process less than one trim period before, so every key
 * outlives its users, and an idle bucket disappears whole one trim period after its last user
 * expired. */
#include "status_model.h"

#include "hash.h"
#include "int_text.h"
#include "metrics.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KEY_MAX 512                  /* Bytes of a bucket key: prefix + ":{4294967295}:a". */
#define TRIM_PERIOD_DIVISOR 16       /* Trim a bucket every expire_interval / this ... */
#define TRIM_PERIOD_MAX_MS 86400000  /* ... but at least daily (milliseconds). */
#define TRIM_TABLE_MAX (1 << 20)     /* Entries (12 bytes each) remembering our trims. */

/* KEYS: a, o, s. ARGV: cutoff (Unix seconds; users whose times are all older go), TTL (ms).
 * Returns {users removed, members of a, members of o}. */
static const char TRIM_SCRIPT[] =
    "local cut = tonumber(ARGV[1])\n"
    "local gone, seen = {}, {}\n"
    "for i = 1, 2 do\n"
    "  for _, u in ipairs(redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', '(' .. ARGV[1])) do\n"
    "    if not seen[u] then\n"
    "      seen[u] = true\n"
    "      local t = redis.call('ZSCORE', KEYS[3 - i], u)\n"
    "      if not t or tonumber(t) < cut then gone[#gone + 1] = u end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "for i = 1, #gone, 512 do\n" /* ZREM/HDEL in chunks: unpack() has a limit. */
    "  local part = {unpack(gone, i, math.min(i + 511, #gone))}\n"
    "  redis.call('ZREM', KEYS[1], unpack(part))\n"
    "  redis.call('ZREM', KEYS[2], unpack(part))\n"
    "  redis.call('HDEL', KEYS[3], unpack(part))\n"
    "end\n"
    "for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end\n"
    "return {#gone, redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2])}\n";

/* When this process last trimmed a bucket and refreshed its TTLs. The table has a slot per bucket
 * up to TRIM_TABLE_MAX slots; beyond, buckets share slots, and the tag tells whose times a slot
 * holds: a bucket whose slot holds another's counts as never seen, so sharing only ever adds
 * refreshes. Times are monotonic milliseconds (wrapping every 49 days); 0: never. */
struct trim_slot {
    uint32_t tag;       /* place / ntrims of the bucket whose times these are. */
    uint32_t trimmed;   /* Last trim (first sight: when the first trim is due, minus a period). */
    uint32_t refreshed; /* Last TTL refresh of all three keys (by a trim or PEXPIREs). */
};

/* One user of an operation, sorted by (shard, bucket). */
typedef struct entry {
    uint64_t place; /* shard * nbuckets + bucket */
    uint32_t index; /* Into the operation's users. */
} entry;

/* One bucket of an operation: entries[first, first + count). */
typedef struct group {
    uint64_t place;
    uint32_t first, count;
    uint8_t trim;    /* Run the trim script first. */
    uint8_t refresh; /* Refresh the TTL of every key of the bucket. */
} group;

struct us_status_model {
    char *prefix;
    int64_t expire_ms;
    int64_t trim_period_ms;
    char ttl[US_INT_TEXT_MAX]; /* expire_ms + trim_period_ms as text: every PEXPIRE's argument. */
    size_t nshards;
    uint32_t nbuckets; /* Per shard. */
    struct trim_slot *trims; /* When this process last trimmed each bucket (trim_slot). */
    size_t ntrims;

    entry *entries;
    group *groups;
    size_t ngroups, cap;
    const char **argv; /* Scratch of one command: up to 3 + 2 * users of a bucket. */
    size_t *lens;
    char (*nums)[24];
    size_t argv_cap;
    char key[3][KEY_MAX]; /* Keys a, o, s of the bucket being routed or appended ... */
    size_t klen[3];
    uint64_t key_place; /* ... whose place this is (UINT64_MAX: none yet). */
    size_t prefix_len;
};

static us_metric *m_trims, *m_trimmed, *m_over, *m_max;

void us_status_buckets_metrics_register(void)
{
    m_trims = us_metric_counter("userstatus_redis_bucket_trims_total",
                                "Buckets trimmed of expired users (bucket model).");
    m_trimmed = us_metric_counter("userstatus_redis_bucket_trimmed_users_total",
                                  "Expired users removed by trims (bucket model).");
    m_over = us_metric_counter("userstatus_redis_buckets_over_listpack_total",
                               "Trimmed buckets found with more than 128 members in a sorted set "
                               "(no longer a compact listpack: raise user_status.expected_users).");
    m_max = us_metric_gauge("userstatus_redis_bucket_members_max",
                            "Most members seen in one bucket sorted set at a trim.");
}

uint32_t us_bucket_count(int64_t expected_users, size_t nshards)
{
    if (nshards == 0) nshards = 1;
    int64_t per = (int64_t)nshards * US_BUCKET_TARGET_MEMBERS;
    int64_t n = (expected_users + per - 1) / per;
    if (n < 1) n = 1;
    if (n > INT32_MAX) n = INT32_MAX;
    return (uint32_t)n;
}

uint32_t us_bucket_of(const char *user, size_t user_len, uint32_t nbuckets)
{
    if (nbuckets <= 1) return 0;
    return (uint32_t)us_jump_hash(us_mix64(us_fnv1a64(user, user_len)), (int32_t)nbuckets);
}

/* Writes "<prefix>:{<bucket>}:<kind>" into buf without printf (this is on every read's path). */
static int bucket_key(const char *prefix, size_t plen, uint32_t bucket, char kind, char *buf,
                      size_t cap)
{
    char digits[10];
    int nd = 0;
    do digits[nd++] = (char)('0' + bucket % 10);
    while ((bucket /= 10) > 0);
    size_t len = plen + 2 + (size_t)nd + 3;
    if (len + 1 > cap) return -1;
    char *p = buf;
    memcpy(p, prefix, plen);
    p += plen;
    *p++ = ':';
    *p++ = '{';
    while (nd > 0) *p++ = digits[--nd];
    *p++ = '}';
    *p++ = ':';
    *p++ = kind;
    *p = '\0';
    return (int)len;
}

int us_bucket_key(const char *prefix, uint32_t bucket, char kind, char *buf, size_t cap)
{
    return bucket_key(prefix, strlen(prefix), bucket, kind, buf, cap);
}

int64_t us_bucket_cutoff(int64_t now_ms, int64_t expire_ms)
{
    int64_t t = now_ms - expire_ms;
    return t >= 0 ? t / 1000 : -((-t + 999) / 1000); /* Floor, also before 1970. */
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint32_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint32_t v = (uint32_t)((uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000);
    return v ? v : 1; /* 0 means "never". */
}

static us_status_model *create(const us_config *cfg, size_t nshards, char *err, size_t errlen)
{
    if (strlen(cfg->user_status.redis_prefix) + 16 > KEY_MAX) {
        snprintf(err, errlen, "config key 'user_status.redis_prefix': longer than %d bytes",
                 KEY_MAX - 16);
        return NULL;
    }
    us_status_model *m = calloc(1, sizeof(*m));
    if (!m) abort();
    m->prefix = strdup(cfg->user_status.redis_prefix);
    if (!m->prefix) abort();
    m->prefix_len = strlen(m->prefix);
    m->key_place = UINT64_MAX;
    m->expire_ms = cfg->user_status.expire_interval_ms;
    m->trim_period_ms = m->expire_ms / TRIM_PERIOD_DIVISOR;
    if (m->trim_period_ms > TRIM_PERIOD_MAX_MS) m->trim_period_ms = TRIM_PERIOD_MAX_MS;
    if (m->trim_period_ms < 1) m->trim_period_ms = 1;
    us_i64_cstr(m->ttl, m->expire_ms + m->trim_period_ms);
    m->nshards = nshards ? nshards : 1;
    m->nbuckets = us_bucket_count(cfg->user_status.expected_users, m->nshards);
    return m;
}

static void destroy(us_status_model *m)
{
    if (!m) return;
    free(m->prefix);
    free(m->trims);
    free(m->entries);
    free(m->groups);
    free(m->argv);
    free(m->lens);
    free(m->nums);
    free(m);
}

static int entry_cmp(const void *x, const void *y)
{
    const entry *a = x, *b = y;
    if (a->place != b->place) return a->place < b->place ? -1 : 1;
    return a->index < b->index ? -1 : a->index > b->index;
}

static void reserve(us_status_model *m, size_t n)
{
    if (n > m->cap) {
        free(m->entries);
        free(m->groups);
        m->entries = malloc(n * sizeof(entry));
        m->groups = malloc(n * sizeof(group));
        if (!m->entries || !m->groups) abort();
        m->cap = n;
    }
    if (3 + 2 * n > m->argv_cap) {
        free(m->argv);
        free(m->lens);
        free(m->nums);
        m->argv_cap = 3 + 2 * n;
        m->argv = malloc(m->argv_cap * sizeof(*m->argv));
        m->lens = malloc(m->argv_cap * sizeof(*m->lens));
        m->nums = malloc(n * sizeof(*m->nums));
        if (!m->argv || !m->lens || !m->nums) abort();
    }
}

/* Groups n users (user(ctx, i) gives user i) by (shard, bucket) into m->groups. */
static void group_users(us_status_model *m, size_t n, const char *(*user)(const void *, size_t,
                                                                           size_t *),
                        const void *ctx)
{
    reserve(m, n);
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *u = user(ctx, i, &len);
        uint64_t shard = us_shard_for_user(u, len, m->nshards);
        m->entries[i].place = shard * m->nbuckets + us_bucket_of(u, len, m->nbuckets);
        m->entries[i].index = (uint32_t)i;
    }
    qsort(m->entries, n, sizeof(entry), entry_cmp);
    m->ngroups = 0;
    for (size_t i = 0; i < n; i++) {
        if (i == 0 || m->entries[i].place != m->entries[i - 1].place) {
            group *g = &m->groups[m->ngroups++];
            g->place = m->entries[i].place;
            g->first = (uint32_t)i;
            g->count = 0;
            g->trim = g->refresh = 0;
        }
        m->groups[m->ngroups - 1].count++;
    }
}

/* Sets m->key[0..2] to the keys a, o, s of a bucket. */
static void set_keys(us_status_model *m, uint64_t place)
{
    if (place == m->key_place) return; /* Routed just before being appended. */
    uint32_t bucket = (uint32_t)(place % m->nbuckets);
    m->klen[0] = (size_t)bucket_key(m->prefix, m->prefix_len, bucket, 'a', m->key[0], KEY_MAX);
    for (int k = 1; k < 3; k++) {
        memcpy(m->key[k], m->key[0], m->klen[0] + 1);
        m->key[k][m->klen[0] - 1] = "aos"[k];
        m->klen[k] = m->klen[0];
    }
    m->key_place = place;
}

static void route_group(us_status_model *m, size_t g, size_t *shard, const char **key,
                        size_t *klen)
{
    uint64_t place = m->groups[g].place;
    *shard = (size_t)(place / m->nbuckets);
    set_keys(m, place);
    *key = m->key[0];
    *klen = m->klen[0];
}

static void cmd_key(us_pipe_sink *s, const char *word, const char *key, size_t klen,
                    const char *arg)
{
    const char *argv[3] = {word, key, arg};
    size_t lens[3] = {strlen(word), klen, arg ? strlen(arg) : 0};
    us_pipe_cmd(s, arg ? 3 : 2, argv, lens);
}

/* ---------------------------------------------------------------------------------------------
 * Writes.
 * ------------------------------------------------------------------------------------------ */

typedef struct apply_ctx {
    us_status_model *m;
    const us_user_update *updates;
    uint8_t *refused;
    int nrefused;
    int ngroups_refused;
    char *err;
    size_t errlen;
    int64_t cutoff;
    uint32_t now_mono;
} apply_ctx;

static const char *update_user(const void *ctx, size_t i, size_t *len)
{
    const us_user_update *u = &((const us_user_update *)ctx)[i];
    *len = u->user_len;
    return u->user;
}

static void apply_route(void *arg, size_t g, size_t *shard, const char **key, size_t *klen)
{
    apply_ctx *c = arg;
    route_group(c->m, g, shard, key, klen);
}

/* Starts a command "<word> <key> [<fixed>]" in the scratch argv; returns its argc. */
static int argv_start(us_status_model *m, const char *word, int k, const char *fixed)
{
    int argc = 0;
    m->argv[argc] = word, m->lens[argc++] = strlen(word);
    m->argv[argc] = m->key[k], m->lens[argc++] = m->klen[k];
    if (fixed) m->argv[argc] = fixed, m->lens[argc++] = strlen(fixed);
    return argc;
}

static void apply_append(void *arg, size_t gi, us_pipe_sink *s)
{
    apply_ctx *c = arg;
    us_status_model *m = c->m;
    const group *g = &m->groups[gi];
    const entry *e = &m->entries[g->first];
    set_keys(m, g->place);
    const char *ttl = m->ttl;

    us_pipe_cmd1(s, "MULTI");
    if (g->trim) {
        char cutoff[US_INT_TEXT_MAX];
        size_t cutoff_len = us_i64_text(cutoff, c->cutoff);
        const char *argv[8] = {"EVAL", TRIM_SCRIPT, "3", m->key[0], m->key[1], m->key[2],
                               cutoff, ttl};
        size_t lens[8] = {4, sizeof(TRIM_SCRIPT) - 1, 1, m->klen[0], m->klen[1], m->klen[2],
                          cutoff_len, strlen(ttl)};
        us_pipe_cmd(s, 8, argv, lens);
    }

    /* Deletes first: a user deleted and updated in one batch is removed, then written. */
    int argc[3];
    argc[0] = argv_start(m, "ZREM", 0, NULL);
    for (uint32_t k = 0; k < g->count; k++) {
        const us_user_update *u = &c->updates[e[k].index];
        if (u->del) m->argv[argc[0]] = u->user, m->lens[argc[0]++] = u->user_len;
    }
    if (argc[0] > 2) {
        static const char *const words[3] = {"ZREM", "ZREM", "HDEL"};
        for (int k = 0; k < 3; k++) {
            m->argv[0] = words[k], m->lens[0] = 4;
            m->argv[1] = m->key[k], m->lens[1] = m->klen[k];
            us_pipe_cmd(s, argc[0], m->argv, m->lens);
        }
    }

    /* ZADD GT per sorted set, then its PEXPIRE. */
    for (int k = 0; k < 2; k++) {
        int n = argv_start(m, "ZADD", k, "GT");
        for (uint32_t j = 0; j < g->count; j++) {
            const us_user_update *u = &c->updates[e[j].index];
            int64_t t = k == 0 ? u->active : u->online;
            if (t == US_TIME_NONE) continue;
            m->lens[n] = us_i64_text(m->nums[j], t);
            m->argv[n++] = m->nums[j];
            m->argv[n] = u->user, m->lens[n++] = u->user_len;
        }
        if (n == 3) continue;
        us_pipe_cmd(s, n, m->argv, m->lens);
        cmd_key(s, "PEXPIRE", m->key[k], m->klen[k], ttl);
    }

    /* States: set, or cleared by "". */
    int nset = argv_start(m, "HSET", 2, NULL), ndel = 0;
    for (uint32_t j = 0; j < g->count; j++) {
        const us_user_update *u = &c->updates[e[j].index];
        if (!u->has_state) continue;
        if (u->state_len > 0) {
            m->argv[nset] = u->user, m->lens[nset++] = u->user_len;
            m->argv[nset] = u->state, m->lens[nset++] = u->state_len;
        } else {
            ndel++;
        }
    }
    if (nset > 2) {
        us_pipe_cmd(s, nset, m->argv, m->lens);
        cmd_key(s, "PEXPIRE", m->key[2], m->klen[2], ttl);
    }
    /* The TTL of keys not written here, when due (a trim has just refreshed them). */
    int expired[3] = {0, 0, nset > 2};
    for (uint32_t j = 0; j < g->count; j++) {
        expired[0] |= c->updates[e[j].index].active != US_TIME_NONE;
        expired[1] |= c->updates[e[j].index].online != US_TIME_NONE;
    }
    for (int k = 0; k < 3 && g->refresh && !g->trim; k++)
        if (!expired[k]) cmd_key(s, "PEXPIRE", m->key[k], m->klen[k], ttl);
    if (ndel > 0) {
        int n = argv_start(m, "HDEL", 2, NULL);
        for (uint32_t j = 0; j < g->count; j++) {
            const us_user_update *u = &c->updates[e[j].index];
            if (u->has_state && u->state_len == 0)
                m->argv[n] = u->user, m->lens[n++] = u->user_len;
        }
        us_pipe_cmd(s, n, m->argv, m->lens);
    }
    us_pipe_cmd1(s, "EXEC");
}

static void apply_consume(void *arg, size_t gi, redisReply **replies, size_t nreplies)
{
    apply_ctx *c = arg;
    us_status_model *m = c->m;
    const group *g = &m->groups[gi];
    struct trim_slot *t = &m->trims[g->place % m->ntrims];
    if (g->refresh || g->trim) t->refreshed = c->now_mono;
    if (!g->trim) return;
    t->trimmed = c->now_mono;
    const redisReply *exec = nreplies ? replies[nreplies - 1] : NULL;
    if (!exec || exec->type != REDIS_REPLY_ARRAY || exec->elements == 0) return;
    const redisReply *r = exec->element[0]; /* The trim script's {removed, |a|, |o|}. */
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 3) return;
    long long removed = r->element[0]->integer;
    long long most = r->element[1]->integer > r->element[2]->integer ? r->element[1]->integer
                                                                     : r->element[2]->integer;
    if (m_trims) {
        us_metric_add(m_trims, 1);
        us_metric_add(m_trimmed, removed > 0 ? (uint64_t)removed : 0);
        if (most > US_BUCKET_LISTPACK_MAX) us_metric_add(m_over, 1);
        if (most > (long long)us_metric_value(m_max)) us_metric_set(m_max, most);
    }
}

static void apply_refused(void *arg, size_t gi, const char *error)
{
    apply_ctx *c = arg;
    const group *g = &c->m->groups[gi];
    for (uint32_t k = 0; k < g->count; k++) {
        uint32_t i = c->m->entries[g->first + k].index;
        if (c->refused[i]) continue;
        c->refused[i] = 1;
        c->nrefused++;
    }
    if (c->ngroups_refused++ == 0)
        snprintf(c->err, c->errlen, "%s (bucket %s:{%" PRIu64 "})", error, c->m->prefix,
                 g->place % c->m->nbuckets);
}

static int apply(us_status_model *m, us_pipeline *p, const us_user_update *updates, size_t n,
                 uint8_t *refused, char *err, size_t errlen)
{
    memset(refused, 0, n);
    if (n == 0) return 0;
    if (!m->trims) {
        uint64_t places = (uint64_t)m->nshards * m->nbuckets;
        m->ntrims = places < TRIM_TABLE_MAX ? (size_t)places : TRIM_TABLE_MAX;
        m->trims = calloc(m->ntrims, sizeof(*m->trims));
        if (!m->trims) abort();
    }
    apply_ctx c = {m,      updates, refused, 0, 0, err,
                   errlen, us_bucket_cutoff(wall_ms(), m->expire_ms), mono_ms()};
    group_users(m, n, update_user, updates);
    for (size_t g = 0; g < m->ngroups; g++) {
        uint64_t place = m->groups[g].place;
        struct trim_slot *t = &m->trims[place % m->ntrims];
        uint32_t tag = (uint32_t)(place / m->ntrims);
        if (t->tag != tag || t->trimmed == 0) { /* First sight: schedule the first trim. */
            uint32_t offset = (uint32_t)(us_mix64(place) % (uint64_t)m->trim_period_ms);
            t->tag = tag;
            uint32_t first = c.now_mono - offset;
            t->trimmed = first ? first : UINT32_MAX; /* 0 means never: 1 ms earlier instead. */
            t->refreshed = 0;
        }
        int64_t since_trim = (int64_t)(uint32_t)(c.now_mono - t->trimmed);
        int64_t since_refresh = (int64_t)(uint32_t)(c.now_mono - t->refreshed);
        m->groups[g].trim = since_trim >= m->trim_period_ms;
        m->groups[g].refresh = t->refreshed == 0 || since_refresh >= m->trim_period_ms;
    }
    us_pipe_op op = {m->ngroups, &c, apply_route, apply_append, apply_consume, apply_refused};
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
    int64_t cutoff;
    int nrefused; /* Users of refused buckets. */
    char *err;
    size_t errlen;
} get_ctx;

static const char *ref_user(const void *ctx, size_t i, size_t *len)
{
    const us_user_ref *u = &((const us_user_ref *)ctx)[i];
    *len = u->len;
    return u->user;
}

static void get_route(void *arg, size_t g, size_t *shard, const char **key, size_t *klen)
{
    get_ctx *c = arg;
    route_group(c->m, g, shard, key, klen);
}

/* ZMSCORE a, ZMSCORE o, HMGET s, each with the bucket's users of the request. */
static void get_append(void *arg, size_t gi, us_pipe_sink *s)
{
    get_ctx *c = arg;
    us_status_model *m = c->m;
    const group *g = &m->groups[gi];
    set_keys(m, g->place);
    static const char *const words[3] = {"ZMSCORE", "ZMSCORE", "HMGET"};
    for (int k = 0; k < 3; k++) {
        int n = argv_start(m, words[k], k, NULL);
        for (uint32_t j = 0; j < g->count; j++) {
            const us_user_ref *u = &c->users[m->entries[g->first + j].index];
            m->argv[n] = u->user, m->lens[n++] = u->len;
        }
        us_pipe_cmd(s, n, m->argv, m->lens);
    }
}

/* A score from a ZMSCORE element: US_TIME_NONE for nil. */
static int64_t score_of(const redisReply *r)
{
    if (r->type != REDIS_REPLY_STRING) return US_TIME_NONE;
    return strtoll(r->str, NULL, 10);
}

static void get_consume(void *arg, size_t gi, redisReply **replies, size_t nreplies)
{
    get_ctx *c = arg;
    const group *g = &c->m->groups[gi];
    for (uint32_t j = 0; j < g->count; j++) {
        us_status *st = &c->out[c->m->entries[g->first + j].index];
        if (nreplies != 3) continue;
        const redisReply *ra = replies[0], *ro = replies[1], *rs = replies[2];
        if (ra->type != REDIS_REPLY_ARRAY || ra->elements != g->count ||
            ro->type != REDIS_REPLY_ARRAY || ro->elements != g->count)
            continue;
        int64_t a = score_of(ra->element[j]), o = score_of(ro->element[j]);
        if ((a > o ? a : o) < c->cutoff) continue; /* Expired (or unknown): absent. */
        st->active = a;
        st->online = o;
        if (rs->type == REDIS_REPLY_ARRAY && rs->elements == g->count &&
            rs->element[j]->type == REDIS_REPLY_STRING && rs->element[j]->len <= US_STATE_MAX) {
            st->has_state = 1;
            st->state_len = rs->element[j]->len;
            memcpy(st->state, rs->element[j]->str, st->state_len);
        }
    }
}

/* A bucket whose keys Redis refused: its users read as absent. */
static void get_refused(void *arg, size_t gi, const char *error)
{
    get_ctx *c = arg;
    const group *g = &c->m->groups[gi];
    if (c->nrefused == 0)
        snprintf(c->err, c->errlen, "%s (bucket %s:{%" PRIu64 "})", error, c->m->prefix,
                 g->place % c->m->nbuckets);
    c->nrefused += (int)g->count;
}

static int get(us_status_model *m, us_pipeline *p, const us_user_ref *users, size_t n,
               us_status *out, char *err, size_t errlen)
{
    if (n == 0) return 0;
    for (size_t i = 0; i < n; i++) us_status_clear(&out[i]);
    get_ctx c = {m, users, out, us_bucket_cutoff(wall_ms(), m->expire_ms), 0, err, errlen};
    group_users(m, n, ref_user, users);
    us_pipe_op op = {m->ngroups, &c, get_route, get_append, get_consume, get_refused};
    if (us_pipeline_run(p, &op, err, errlen) != 0) return -1;
    return c.nrefused;
}

const us_status_model_ops us_status_buckets = {"buckets", create, destroy, apply, get};
