/* Key layout of both status models, bucket choice, shard placement and address parsing. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "redis_store.h"
#include "redis_topology.h"
#include "test_helpers.h"

static void test_shard_placement_matches_go_vectors(void **state)
{
    FILE *f = open_schema_file("vectors/shards.tsv");
    char line[1024];
    int count = 0;
    while (fgets(line, sizeof(line), f)) {
        if (line[0] == '#') continue;
        char *c[3];
        assert_int_equal(tsv_split(line, c, 3), 3);
        size_t len = strlen(c[0]);
        assert_true(us_fnv1a64(c[0], len) == strtoull(c[1], NULL, 16));
        char *p = c[2];
        for (size_t n = 1; n <= 8; n++) {
            long want = strtol(p, &p, 10);
            if (*p == ',') p++;
            if ((long)us_shard_for_user(c[0], len, n) != want)
                fail_msg("user %s, %zu shards: want %ld, got %zu", c[0], n, want,
                         us_shard_for_user(c[0], len, n));
        }
        count++;
    }
    fclose(f);
    assert_true(count >= 20);
}

static void test_jump_hash_moves_few_keys_when_a_shard_is_added(void **state)
{
    int moved = 0;
    for (uint64_t k = 0; k < 10000; k++) {
        int32_t a = us_jump_hash(k * 0x9e3779b97f4a7c15ULL, 10);
        int32_t b = us_jump_hash(k * 0x9e3779b97f4a7c15ULL, 11);
        if (a != b) {
            assert_int_equal(b, 10); /* A key only ever moves to the new shard. */
            moved++;
        }
    }
    assert_in_range(moved, 10000 / 11 - 200, 10000 / 11 + 200);
}

static void test_key_is_prefix_colon_user(void **state)
{
    char buf[64];
    int n = us_redis_key("userstatus", "42", 2, buf, sizeof(buf));
    assert_int_equal(n, 13);
    assert_memory_equal(buf, "userstatus:42", 13);
    assert_int_equal(us_redis_key("p", "abcdef", 6, buf, 5), -1);
}

static void test_address_forms(void **state)
{
    us_redis_addr a;
    char err[256];
    assert_int_equal(us_redis_addr_parse("127.0.0.1:6379", &a, err, sizeof(err)), 0);
    assert_string_equal(a.host, "127.0.0.1");
    assert_int_equal(a.port, 6379);
    assert_int_equal(a.db, 0);
    assert_string_equal(a.password, "");

    assert_int_equal(us_redis_addr_parse("redis://user:pa:ss@redis.local:7000/3", &a, err,
                                         sizeof(err)),
                     0);
    assert_string_equal(a.host, "redis.local");
    assert_int_equal(a.port, 7000);
    assert_string_equal(a.user, "user");
    assert_string_equal(a.password, "pa:ss");
    assert_int_equal(a.db, 3);

    assert_int_equal(us_redis_addr_parse("redis://:secret@h:1", &a, err, sizeof(err)), 0);
    assert_string_equal(a.user, "");
    assert_string_equal(a.password, "secret");

    assert_int_equal(us_redis_addr_parse("[::1]:6380", &a, err, sizeof(err)), 0);
    assert_string_equal(a.host, "::1");
    assert_int_equal(a.port, 6380);
}

static void test_bad_addresses_are_refused_with_a_message(void **state)
{
    const char *bad[] = {"localhost", "host:", "host:0", "host:70000", ":6379", "http://h:1",
                         "redis://h:1/x", "h:1x"};
    us_redis_addr a;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char err[256] = "";
        if (us_redis_addr_parse(bad[i], &a, err, sizeof(err)) != -1) fail_msg("accepted %s", bad[i]);
        assert_non_null(strstr(err, "redis address"));
    }
}

static void test_bucket_count_keeps_about_fifty_users_per_bucket(void **state)
{
    assert_int_equal(us_bucket_count(10000000, 1), 200000);
    assert_int_equal(us_bucket_count(10000000, 4), 50000);
    assert_int_equal(us_bucket_count(1000001, 1), 20001); /* Rounded up. */
    assert_int_equal(us_bucket_count(1, 1), 1);
    assert_int_equal(us_bucket_count(100, 3), 1);
}

static void test_buckets_fill_evenly_and_stay_listpacks(void **state)
{
    enum { BUCKETS = 1000, USERS = BUCKETS * US_BUCKET_TARGET_MEMBERS };
    static int fill[BUCKETS];
    memset(fill, 0, sizeof(fill));
    char user[32];
    for (int i = 0; i < USERS; i++) {
        int len = snprintf(user, sizeof(user), "%d", 1000000 + i);
        uint32_t b = us_bucket_of(user, (size_t)len, BUCKETS);
        assert_true(b < BUCKETS);
        fill[b]++;
    }
    int over = 0, least = USERS;
    for (int b = 0; b < BUCKETS; b++) {
        over += fill[b] > US_BUCKET_LISTPACK_MAX;
        if (fill[b] < least) least = fill[b];
    }
    /* Poisson(50): 128 is 11 sigma away; even 2.5x the expected users (Poisson(125)) would overflow
     * only some buckets (more memory for their users, same answers). */
    assert_int_equal(over, 0);
    assert_true(least >= 20);
}

static void test_bucket_is_independent_of_the_shard(void **state)
{
    /* The users of one shard must spread over all of that shard's buckets, not a fraction. */
    enum { BUCKETS = 16 };
    int seen[BUCKETS] = {0};
    char user[32];
    for (int i = 0; i < 4000; i++) {
        int len = snprintf(user, sizeof(user), "u%d", i);
        if (us_shard_for_user(user, (size_t)len, 4) != 2) continue;
        seen[us_bucket_of(user, (size_t)len, BUCKETS)]++;
    }
    for (int b = 0; b < BUCKETS; b++) assert_in_range(seen[b], 30, 100);
}

static void test_bucket_of_matches_the_python_port(void **state)
{
    /* Vectors from tests/e2e/conftest.py's bucket_of (which the e2e tests use to find keys). */
    assert_true(us_mix64(1) == 0x5692161d100b05e5ULL);
    assert_int_equal(us_bucket_of("r1", 2, 100000), 7088);
    assert_int_equal(us_bucket_of("u42", 3, 1000), 654);
    assert_int_equal(us_bucket_of("12345678", 8, 33334), 23746);
    assert_int_equal(us_bucket_of("anything", 8, 1), 0);
}

static void test_bucket_keys_share_a_cluster_slot(void **state)
{
    char a[64], o[64], s[64];
    assert_int_equal(us_bucket_key("userstatus", 4711, 'a', a, sizeof(a)), 19);
    assert_string_equal(a, "userstatus:{4711}:a");
    us_bucket_key("userstatus", 4711, 'o', o, sizeof(o));
    us_bucket_key("userstatus", 4711, 's', s, sizeof(s));
    assert_string_equal(s, "userstatus:{4711}:s");
    assert_int_equal(us_cluster_slot(a, strlen(a)), us_cluster_slot("4711", 4));
    assert_int_equal(us_cluster_slot(o, strlen(o)), us_cluster_slot(a, strlen(a)));
    assert_int_equal(us_cluster_slot(s, strlen(s)), us_cluster_slot(a, strlen(a)));
    assert_int_equal(us_bucket_key("userstatus", 4711, 'a', a, 10), -1);
}

static void test_cutoff_is_the_oldest_visible_second(void **state)
{
    /* 2 s interval at 12.5 s: a time of 10 s is still visible, 9 s is not. */
    assert_int_equal(us_bucket_cutoff(12500, 2000), 10);
    assert_int_equal(us_bucket_cutoff(13000, 2000), 11);
    assert_int_equal(us_bucket_cutoff(500, 2000), -2);
}

static void test_address_errors_never_show_the_password(void **state)
{
    const char *bad[] = {"redis://alice:s3cret@host", "redis://:s3cret@h:1/x",
                         "redis://alice:s3cret@h:99999", "rediss://alice:s3cret@h:1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        us_redis_addr a;
        char err[512] = "";
        assert_int_equal(us_redis_addr_parse(bad[i], &a, err, sizeof(err)), -1);
        if (strstr(err, "s3cret")) fail_msg("'%s' shows the password: %s", bad[i], err);
    }
    us_redis_addr a;
    char err[512] = "";
    us_redis_addr_parse("redis://alice:s3cret@h:1/x", &a, err, sizeof(err));
    assert_non_null(strstr(err, "redis://alice:***@h:1/x"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shard_placement_matches_go_vectors),
        cmocka_unit_test(test_jump_hash_moves_few_keys_when_a_shard_is_added),
        cmocka_unit_test(test_key_is_prefix_colon_user),
        cmocka_unit_test(test_address_forms),
        cmocka_unit_test(test_bad_addresses_are_refused_with_a_message),
        cmocka_unit_test(test_bucket_count_keeps_about_fifty_users_per_bucket),
        cmocka_unit_test(test_buckets_fill_evenly_and_stay_listpacks),
        cmocka_unit_test(test_bucket_is_independent_of_the_shard),
        cmocka_unit_test(test_bucket_of_matches_the_python_port),
        cmocka_unit_test(test_bucket_keys_share_a_cluster_slot),
        cmocka_unit_test(test_cutoff_is_the_oldest_visible_second),
        cmocka_unit_test(test_address_errors_never_show_the_password),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
