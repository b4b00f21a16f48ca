/* The status models' commands and reply parsing (status_buckets.c, status_per_user.c), through
 * us_redis_apply and us_redis_get against a scripted fake Redis: the exact commands each model
 * sends for a batch, and what it makes of the replies (expiry cutoff, nils, states). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "config.h"
#include "fake_redis.h"
#include "redis_store.h"

#include <time.h>

#define HOUR 3600

static int64_t now_s;

/* What the fake holds, per user: active, online (0: none) and state (NULL: none). */
typedef struct held {
    const char *user;
    int64_t active, online;
    const char *state;
} held;

static held store[4];

static void fill_store(void)
{
    now_s = (int64_t)time(NULL);
    store[0] = (held){"u-active", now_s - 10, 0, "dnd"};
    store[1] = (held){"u-online", 0, now_s - 5, NULL};
    store[2] = (held){"u-both", now_s - 2 * HOUR, now_s - 3, NULL}; /* Old active, recent online. */
    store[3] = (held){"u-old", now_s - 2 * HOUR, 0, "x"};           /* Expired with its state. */
}

static const held *find(const redisReply *r)
{
    for (size_t i = 0; i < sizeof(store) / sizeof(store[0]); i++)
        if (strcmp(store[i].user, r->str) == 0) return &store[i];
    return NULL;
}

static int bulk(char *out, size_t cap, const char *s)
{
    return s ? snprintf(out, cap, "$%zu\r\n%s\r\n", strlen(s), s) : snprintf(out, cap, "$-1\r\n");
}

/* Bucket model reads: ZMSCORE <a|o> users..., HMGET <s> users... */
static int bucket_reads(fake *f, fake_conn *c, const redisReply *cmd, char *out, size_t cap)
{
    int zm = is_cmd(cmd, 0, "ZMSCORE"), hm = is_cmd(cmd, 0, "HMGET");
    if (!zm && !hm) return default_reply(c, cmd, out, cap);
    char kind = cmd->element[1]->str[cmd->element[1]->len - 1];
    int n = snprintf(out, cap, "*%zu\r\n", cmd->elements - 2);
    for (size_t i = 2; i < cmd->elements; i++) {
        const held *h = find(cmd->element[i]);
        char num[24];
        const char *v = NULL;
        int64_t t = !h ? 0 : kind == 'a' ? h->active : kind == 'o' ? h->online : 0;
        if (zm && t) snprintf(num, sizeof(num), "%lld", (long long)t), v = num;
        if (hm && h) v = h->state;
        n += bulk(out + n, cap - (size_t)n, v);
    }
    return n;
}

/* Per-user model reads: ZRANGE <prefix>:<user> 0 -1 WITHSCORES. */
static int per_user_reads(fake *f, fake_conn *c, const redisReply *cmd, char *out, size_t cap)
{
    if (!is_cmd(cmd, 0, "ZRANGE")) return default_reply(c, cmd, out, cap);
    const char *user = strchr(cmd->element[1]->str, ':') + 1;
    const held *h = NULL;
    for (size_t i = 0; i < sizeof(store) / sizeof(store[0]); i++)
        if (strcmp(store[i].user, user) == 0) h = &store[i];
    if (!h || h == &store[3]) return snprintf(out, cap, "*0\r\n"); /* Expired: the key is gone. */
    int members = (h->active != 0) + (h->online != 0) + (h->state != NULL);
    int n = snprintf(out, cap, "*%d\r\n", members * 2);
    char num[24], member[80];
    if (h->active) {
        snprintf(num, sizeof(num), "%lld", (long long)h->active);
        n += bulk(out + n, cap - (size_t)n, "a");
        n += bulk(out + n, cap - (size_t)n, num);
    }
    if (h->online) {
        snprintf(num, sizeof(num), "%lld", (long long)h->online);
        n += bulk(out + n, cap - (size_t)n, "o");
        n += bulk(out + n, cap - (size_t)n, num);
    }
    if (h->state) {
        snprintf(member, sizeof(member), "s:%s", h->state);
        n += bulk(out + n, cap - (size_t)n, member);
        n += bulk(out + n, cap - (size_t)n, "-1");
    }
    return n;
}

static us_redis *store_on_with(fake *f, const char *storage, const char *expire, us_config *cfg)
{
    char addr[64], err[256];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", f->port);
    const us_config_override over[] = {
        {"user_status.redis_address", addr}, {"user_status.storage", storage},
        {"user_status.expected_users", "1"}, {"user_status.redis_prefix", "p"},
        {"user_status.expire_interval", expire},
    };
    assert_int_equal(us_config_load(cfg, NULL, NULL, over, 5, err, sizeof(err)), 0);
    us_redis *r = us_redis_new(cfg, err, sizeof(err));
    if (!r) fail_msg("%s", err);
    return r;
}

static us_redis *store_on(fake *f, const char *storage, us_config *cfg)
{
    return store_on_with(f, storage, "1h", cfg);
}

static void log_reset(fake *f)
{
    pthread_mutex_lock(&f->mu);
    f->loglen = 0;
    f->log[0] = '\0';
    pthread_mutex_unlock(&f->mu);
}

static void check_reads(const char *storage, fake_handler handler)
{
    fill_store();
    fake *f = fake_start(handler);
    us_config cfg;
    us_redis *r = store_on(f, storage, &cfg);
    const char *names[] = {"u-active", "u-online", "u-both", "u-old", "nobody", "u-active"};
    us_user_ref users[6];
    us_status out[6];
    for (int i = 0; i < 6; i++) users[i] = (us_user_ref){names[i], strlen(names[i])};
    char err[256];
    if (us_redis_get(r, users, 6, out, err, sizeof(err)) != 0) fail_msg("%s", err);

    for (int i = 0; i < 6; i += 5) { /* The duplicate gets the same answer. */
        assert_int_equal(out[i].active, now_s - 10);
        assert_int_equal(out[i].online, US_TIME_NONE);
        assert_true(out[i].has_state);
        assert_memory_equal(out[i].state, "dnd", 3);
        assert_int_equal(out[i].state_len, 3);
    }
    assert_int_equal(out[1].active, US_TIME_NONE);
    assert_int_equal(out[1].online, now_s - 5);
    assert_false(out[1].has_state);
    /* Visible through its online time: the old active time is shown too, as one key would. */
    assert_int_equal(out[2].active, now_s - 2 * HOUR);
    assert_int_equal(out[2].online, now_s - 3);
    for (int i = 3; i < 5; i++) { /* Expired (state included), and unknown. */
        assert_int_equal(out[i].active, US_TIME_NONE);
        assert_int_equal(out[i].online, US_TIME_NONE);
        assert_false(out[i].has_state);
    }
    us_redis_free(r);
    us_config_free(&cfg);
    fake_stop(f);
}

static void test_bucket_reads_hide_expired_users_and_their_state(void **state)
{
    check_reads("buckets", bucket_reads);
}

static void test_per_user_reads_parse_a_sorted_set_per_user(void **state)
{
    check_reads("per_user", per_user_reads);
}

static void test_bucket_reads_send_three_commands_per_bucket(void **state)
{
    fill_store();
    fake *f = fake_start(bucket_reads);
    us_config cfg;
    us_redis *r = store_on(f, "buckets", &cfg);
    us_user_ref users[2] = {{"u-online", 8}, {"u-active", 8}};
    us_status out[2];
    char err[256];
    assert_int_equal(us_redis_get(r, users, 2, out, err, sizeof(err)), 0);
    assert_string_equal(f->log, "ZMSCORE p:{0}:a u-online u-active\n"
                                "ZMSCORE p:{0}:o u-online u-active\n"
                                "HMGET p:{0}:s u-online u-active\n");
    us_redis_free(r);
    us_config_free(&cfg);
    fake_stop(f);
}

/* One batch: u1 active+state, u2 deleted then online, u3 active with the state cleared, u4
 * deleted. */
static void batch(us_user_update *u)
{
    memset(u, 0, 4 * sizeof(*u));
    u[0] = (us_user_update){"u1", 2, false, 100, US_TIME_NONE, true, "dnd", 3};
    u[1] = (us_user_update){"u2", 2, true, US_TIME_NONE, 200, false, NULL, 0};
    u[2] = (us_user_update){"u3", 2, false, 300, US_TIME_NONE, true, "", 0};
    u[3] = (us_user_update){"u4", 2, true, US_TIME_NONE, US_TIME_NONE, false, NULL, 0};
}

static void test_bucket_writes_are_one_transaction_per_bucket(void **state)
{
    fake *f = fake_start(plain_reply);
    us_config cfg;
    us_redis *r = store_on(f, "buckets", &cfg);
    us_user_update u[4];
    uint8_t refused[4];
    char err[256];
    batch(u);
    assert_int_equal(us_redis_apply(r, u, 4, refused, err, sizeof(err)), 0);
    const char *ttl = "3825000"; /* expire_interval + trim period (1 h / 16). */
    char want[1024];
    snprintf(want, sizeof(want),
             "MULTI\nZREM p:{0}:a u2 u4\nZREM p:{0}:o u2 u4\nHDEL p:{0}:s u2 u4\n"
             "ZADD p:{0}:a GT 100 u1 300 u3\nPEXPIRE p:{0}:a %s\n"
             "ZADD p:{0}:o GT 200 u2\nPEXPIRE p:{0}:o %s\n"
             "HSET p:{0}:s u1 dnd\nPEXPIRE p:{0}:s %s\n"
             "HDEL p:{0}:s u3\nEXEC\n",
             ttl, ttl, ttl);
    assert_string_equal(f->log, want);

    /* The next batch writes only what it has. */
    log_reset(f);
    u[0] = (us_user_update){"u1", 2, false, US_TIME_NONE, 150, false, NULL, 0};
    assert_int_equal(us_redis_apply(r, u, 1, refused, err, sizeof(err)), 0);
    snprintf(want, sizeof(want), "MULTI\nZADD p:{0}:o GT 150 u1\nPEXPIRE p:{0}:o %s\nEXEC\n", ttl);
    assert_string_equal(f->log, want);
    us_redis_free(r);
    us_config_free(&cfg);
    fake_stop(f);
}

static void test_bucket_keys_not_written_are_refreshed_and_trims_come_once_a_period(void **state)
{
    fake *f = fake_start(plain_reply);
    us_config cfg;
    us_redis *r = store_on_with(f, "buckets", "1s", &cfg); /* Trim period 62 ms, TTL 1062 ms. */
    us_user_update u = {"u1", 2, false, US_TIME_NONE, 150, false, NULL, 0};
    uint8_t refused[1];
    char err[256];
    /* First write of the bucket by this process: the keys it does not write get their TTL too. */
    assert_int_equal(us_redis_apply(r, &u, 1, refused, err, sizeof(err)), 0);
    assert_string_equal(f->log, "MULTI\nZADD p:{0}:o GT 150 u1\nPEXPIRE p:{0}:o 1062\n"
                                "PEXPIRE p:{0}:a 1062\nPEXPIRE p:{0}:s 1062\nEXEC\n");
    /* A trim period later: the trim script (which refreshes every key) runs first. */
    struct timespec pause = {0, 150 * 1000000};
    nanosleep(&pause, NULL);
    log_reset(f);
    u.online = 151;
    assert_int_equal(us_redis_apply(r, &u, 1, refused, err, sizeof(err)), 0);
    assert_true(strncmp(f->log, "MULTI\nEVAL ", 11) == 0);
    char want[256];
    snprintf(want, sizeof(want), " 3 p:{0}:a p:{0}:o p:{0}:s %lld 1062\n"
             "ZADD p:{0}:o GT 151 u1\nPEXPIRE p:{0}:o 1062\nEXEC\n",
             (long long)us_bucket_cutoff((int64_t)time(NULL) * 1000, 1000));
    const char *tail = strstr(f->log, " 3 p:{0}:a");
    assert_non_null(tail);
    assert_string_equal(tail, want);
    us_redis_free(r);
    us_config_free(&cfg);
    fake_stop(f);
}

static void test_per_user_writes_are_one_transaction_per_user(void **state)
{
    fake *f = fake_start(plain_reply);
    us_config cfg;
    us_redis *r = store_on(f, "per_user", &cfg);
    us_user_update u[4];
    uint8_t refused[4];
    char err[256];
    batch(u);
    assert_int_equal(us_redis_apply(r, u, 4, refused, err, sizeof(err)), 0);
    assert_string_equal(f->log, "MULTI\nZREMRANGEBYSCORE p:u1 -1 -1\nZADD p:u1 GT 100 a -1 s:dnd\n"
                                "PEXPIRE p:u1 3600000\nEXEC\n"
                                "MULTI\nDEL p:u2\nZADD p:u2 GT 200 o\nPEXPIRE p:u2 3600000\nEXEC\n"
                                "MULTI\nZREMRANGEBYSCORE p:u3 -1 -1\nZADD p:u3 GT 300 a\n"
                                "PEXPIRE p:u3 3600000\nEXEC\n"
                                "DEL p:u4\n");
    us_redis_free(r);
    us_config_free(&cfg);
    fake_stop(f);
}

int main(void)
{
    /* As the programs do: a node closing mid-write is an error, not the end of the process. */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bucket_reads_hide_expired_users_and_their_state),
        cmocka_unit_test(test_per_user_reads_parse_a_sorted_set_per_user),
        cmocka_unit_test(test_bucket_reads_send_three_commands_per_bucket),
        cmocka_unit_test(test_bucket_writes_are_one_transaction_per_bucket),
        cmocka_unit_test(test_bucket_keys_not_written_are_refreshed_and_trims_come_once_a_period),
        cmocka_unit_test(test_per_user_writes_are_one_transaction_per_user),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
