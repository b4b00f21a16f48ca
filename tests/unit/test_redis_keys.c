/* Key layout, shard placement and address parsing. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "redis_store.h"
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shard_placement_matches_go_vectors),
        cmocka_unit_test(test_jump_hash_moves_few_keys_when_a_shard_is_added),
        cmocka_unit_test(test_key_is_prefix_colon_user),
        cmocka_unit_test(test_address_forms),
        cmocka_unit_test(test_bad_addresses_are_refused_with_a_message),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
