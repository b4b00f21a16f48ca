/* Redis Cluster helpers: slot hashing, redirect parsing, slot map parsing (from real RESP text). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "redis_topology.h"

#include <stdlib.h>
#include <string.h>

/* Parses RESP protocol text into a reply, as hiredis would from a socket. */
static redisReply *resp(const char *text)
{
    redisReader *rd = redisReaderCreate();
    redisReaderFeed(rd, text, strlen(text));
    void *reply = NULL;
    assert_int_equal(redisReaderGetReply(rd, &reply), REDIS_OK);
    assert_non_null(reply);
    redisReaderFree(rd);
    return reply;
}

static void test_crc16_xmodem_check_value(void **state)
{
    assert_int_equal(us_crc16("123456789", 9), 0x31C3);
    assert_int_equal(us_crc16("", 0), 0);
}

static void test_slots_match_redis(void **state)
{
    /* Values from CLUSTER KEYSLOT on a real server. */
    assert_int_equal(us_cluster_slot("foo", 3), 12182);
    assert_int_equal(us_cluster_slot("bar", 3), 5061);
    assert_int_equal(us_cluster_slot("userstatus:42", 13), us_crc16("userstatus:42", 13) & 16383);
    /* Hash tags: only the part inside the first {...} counts, when not empty. */
    assert_int_equal(us_cluster_slot("{user1000}.following", 20), us_cluster_slot("user1000", 8));
    assert_int_equal(us_cluster_slot("{user1000}.followers", 20), us_cluster_slot("user1000", 8));
    assert_int_equal(us_cluster_slot("foo{}{bar}", 10), us_crc16("foo{}{bar}", 10) & 16383);
    assert_int_equal(us_cluster_slot("foo{{bar}}zap", 13), us_cluster_slot("{bar", 4));
    assert_int_equal(us_cluster_slot("foo{bar}{zap}", 13), us_cluster_slot("bar", 3));
    assert_int_equal(us_cluster_slot("{", 1), us_crc16("{", 1) & 16383);
}

static void test_redirects_are_parsed(void **state)
{
    us_redirect r;
    const char *moved = "MOVED 3999 127.0.0.1:6381";
    assert_int_equal(us_redirect_parse(moved, strlen(moved), &r), 0);
    assert_int_equal(r.kind, US_REDIRECT_MOVED);
    assert_int_equal(r.slot, 3999);
    assert_string_equal(r.host, "127.0.0.1");
    assert_int_equal(r.port, 6381);

    const char *ask = "ASK 16383 [::1]:7002";
    assert_int_equal(us_redirect_parse(ask, strlen(ask), &r), 0);
    assert_int_equal(r.kind, US_REDIRECT_ASK);
    assert_int_equal(r.slot, 16383);
    assert_string_equal(r.host, "::1");
    assert_int_equal(r.port, 7002);

    const char *host = "MOVED 1 redis-node-3.example:6379";
    assert_int_equal(us_redirect_parse(host, strlen(host), &r), 0);
    assert_string_equal(r.host, "redis-node-3.example");
}

static void test_other_errors_are_not_redirects(void **state)
{
    const char *bad[] = {"ERR unknown command", "MOVED", "MOVED 16384 h:1", "MOVED x h:1",
                         "MOVED 1 h", "MOVED 1 h:", "MOVED 1 :0", "ASK 1 h:99999", "TRYAGAIN x",
                         "MOVED 1 h:1x", "moved 1 h:1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        us_redirect r;
        if (us_redirect_parse(bad[i], strlen(bad[i]), &r) != -1) fail_msg("parsed '%s'", bad[i]);
        assert_int_equal(r.kind, US_REDIRECT_NONE);
    }
}

static void test_cluster_shards_reply(void **state)
{
    /* Two shards; the second has its slots as strings and a failed master plus an online one. */
    redisReply *reply = resp(
        "*2\r\n"
        "*4\r\n$5\r\nslots\r\n*4\r\n:0\r\n:5460\r\n:10923\r\n:10923\r\n"
        "$5\r\nnodes\r\n*1\r\n*12\r\n$2\r\nid\r\n$3\r\nabc\r\n$4\r\nport\r\n:7000\r\n"
        "$2\r\nip\r\n$9\r\n127.0.0.1\r\n$8\r\nendpoint\r\n$9\r\n127.0.0.1\r\n"
        "$4\r\nrole\r\n$6\r\nmaster\r\n$6\r\nhealth\r\n$6\r\nonline\r\n"
        "*4\r\n$5\r\nslots\r\n*2\r\n$4\r\n5461\r\n$5\r\n10922\r\n"
        "$5\r\nnodes\r\n*2\r\n"
        "*8\r\n$4\r\nport\r\n:7001\r\n$8\r\nendpoint\r\n$9\r\n127.0.0.2\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$6\r\nhealth\r\n$4\r\nfail\r\n"
        "*8\r\n$4\r\nport\r\n:7004\r\n$8\r\nendpoint\r\n$9\r\n127.0.0.3\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$6\r\nhealth\r\n$6\r\nonline\r\n");
    us_slot_range out[8];
    int n = us_cluster_parse_shards(reply, out, 8);
    assert_int_equal(n, 3);
    assert_int_equal(out[0].first, 0);
    assert_int_equal(out[0].last, 5460);
    assert_string_equal(out[0].host, "127.0.0.1");
    assert_int_equal(out[0].port, 7000);
    assert_int_equal(out[1].first, 10923);
    assert_int_equal(out[1].last, 10923);
    assert_int_equal(out[2].first, 5461);
    assert_int_equal(out[2].last, 10922);
    assert_string_equal(out[2].host, "127.0.0.3");
    assert_int_equal(out[2].port, 7004);
    freeReplyObject(reply);
}

static void test_cluster_slots_reply(void **state)
{
    redisReply *reply = resp("*2\r\n"
                             "*4\r\n:0\r\n:8191\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n"
                             "*3\r\n$9\r\n127.0.0.1\r\n:7003\r\n$2\r\nix\r\n"
                             "*3\r\n:8192\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:7001\r\n");
    us_slot_range out[4];
    assert_int_equal(us_cluster_parse_slots(reply, out, 4), 2);
    assert_int_equal(out[0].port, 7000);
    assert_int_equal(out[1].first, 8192);
    assert_int_equal(out[1].last, 16383);
    assert_int_equal(out[1].port, 7001);
    freeReplyObject(reply);
}

static void test_malformed_slot_maps_are_refused(void **state)
{
    const char *bad[] = {":1\r\n", "*1\r\n*3\r\n:5\r\n:1\r\n*2\r\n$1\r\nh\r\n:1\r\n",
                         "*1\r\n*3\r\n:0\r\n:16384\r\n*2\r\n$1\r\nh\r\n:1\r\n",
                         "*1\r\n*2\r\n:0\r\n:1\r\n"};
    us_slot_range out[4];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        redisReply *reply = resp(bad[i]);
        if (us_cluster_parse_slots(reply, out, 4) != -1) fail_msg("accepted case %zu", i);
        freeReplyObject(reply);
    }
    redisReply *shards = resp("*1\r\n*2\r\n$5\r\nslots\r\n*1\r\n:0\r\n");
    assert_int_equal(us_cluster_parse_shards(shards, out, 4), -1);
    freeReplyObject(shards);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc16_xmodem_check_value),
        cmocka_unit_test(test_slots_match_redis),
        cmocka_unit_test(test_redirects_are_parsed),
        cmocka_unit_test(test_other_errors_are_not_redirects),
        cmocka_unit_test(test_cluster_shards_reply),
        cmocka_unit_test(test_cluster_slots_reply),
        cmocka_unit_test(test_malformed_slot_maps_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
