/* The Centrifugo proxy endpoints: request parsing (as Centrifugo v5/v6 send them) and the per-user
 * debouncing of "active" events. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "coalesce.h"
#include "debounce.h"
#include "proxy.h"

#include <string.h>

static us_config cfg;
static json_t *doc; /* The document of the last parse. */

static int setup(void **state)
{
    char err[256];
    return us_config_load(&cfg, NULL, NULL, NULL, 0, err, sizeof(err));
}

static int teardown(void **state)
{
    if (doc) json_decref(doc);
    us_config_free(&cfg);
    return 0;
}

/* Parses body for endpoint; returns the outcome and keeps *call valid until the next call. */
static int parse(us_proxy_endpoint endpoint, const char *body, us_proxy_call *call)
{
    if (doc) json_decref(doc);
    return us_proxy_parse(&cfg, endpoint, body, strlen(body), &doc, call);
}

#define RPC_FIELDS                                                                                 \
    "\"client\":\"b5e6c7\",\"transport\":\"websocket\",\"protocol\":\"json\",\"encoding\":"        \
    "\"json\""

static void test_rpc_as_centrifugo_sends_it_produces_for_the_user(void **state)
{
    us_proxy_call call;
    assert_int_equal(parse(US_PROXY_RPC,
                           "{" RPC_FIELDS ",\"user\":\"42\",\"method\":\"update_user_status\","
                           "\"data\":{}}",
                           &call),
                     0);
    assert_int_equal(call.user_len, 2);
    assert_memory_equal(call.user, "42", 2);
    assert_false(call.has_state);
}

static void test_rpc_data_state_is_carried(void **state)
{
    us_proxy_call call;
    assert_int_equal(parse(US_PROXY_RPC,
                           "{" RPC_FIELDS ",\"user\":\"42\",\"method\":\"update_user_status\","
                           "\"data\":{\"state\":\"dnd\"}}",
                           &call),
                     0);
    assert_true(call.has_state);
    assert_int_equal(call.state_len, 3);
    assert_memory_equal(call.state, "dnd", 3);
}

static void test_rpc_without_data_or_with_binary_data_produces_without_state(void **state)
{
    us_proxy_call call;
    assert_int_equal(parse(US_PROXY_RPC,
                           "{" RPC_FIELDS ",\"user\":\"42\",\"method\":\"update_user_status\"}",
                           &call),
                     0);
    assert_false(call.has_state);
    assert_int_equal(
        parse(US_PROXY_RPC,
              "{\"client\":\"c\",\"transport\":\"websocket\",\"protocol\":\"protobuf\","
              "\"encoding\":\"binary\",\"user\":\"42\",\"method\":"
              "\"update_user_status\",\"b64data\":\"e30=\"}",
              &call),
        0);
    assert_false(call.has_state);
}

static void test_rpc_anonymous_user_is_denied(void **state)
{
    us_proxy_call call;
    assert_int_equal(parse(US_PROXY_RPC,
                           "{" RPC_FIELDS ",\"user\":\"\",\"method\":\"update_user_status\","
                           "\"data\":{}}",
                           &call),
                     US_PROXY_ERR_PERMISSION_DENIED);
}

static void test_rpc_other_method_is_not_found(void **state)
{
    us_proxy_call call;
    assert_int_equal(parse(US_PROXY_RPC,
                           "{" RPC_FIELDS ",\"user\":\"42\",\"method\":\"get_user_status\"}",
                           &call),
                     US_PROXY_ERR_METHOD_NOT_FOUND);
    assert_non_null(strstr(call.detail, "get_user_status"));
    assert_int_equal(parse(US_PROXY_RPC,
                           "{" RPC_FIELDS ",\"user\":\"\",\"method\":\"update_user_status2\"}",
                           &call),
                     US_PROXY_ERR_METHOD_NOT_FOUND);
}

static void test_rpc_method_prefix_comes_from_config(void **state)
{
    us_proxy_call call;
    char *saved = cfg.proxy.rpc_method_prefix;
    cfg.proxy.rpc_method_prefix = "status:";
    assert_int_equal(parse(US_PROXY_RPC,
                           "{" RPC_FIELDS ",\"user\":\"42\",\"method\":"
                           "\"status:update_user_status\"}",
                           &call),
                     0);
    assert_int_equal(parse(US_PROXY_RPC,
                           "{" RPC_FIELDS ",\"user\":\"42\",\"method\":\"update_user_status\"}",
                           &call),
                     US_PROXY_ERR_METHOD_NOT_FOUND);
    assert_int_equal(
        parse(US_PROXY_RPC, "{" RPC_FIELDS ",\"user\":\"42\",\"method\":\"status:\"}", &call),
        US_PROXY_ERR_METHOD_NOT_FOUND);
    cfg.proxy.rpc_method_prefix = saved;
}

static void test_malformed_requests_are_bad_requests_with_a_reason(void **state)
{
    char long_user[400];
    snprintf(long_user, sizeof(long_user),
             "{\"user\":\"%0257d\",\"method\":\"update_user_status\"}", 7);
    const char *bad[] = {
        "",
        "{\"user\":",
        "[]",
        "\"42\"",
        "{\"method\":\"update_user_status\"}",
        "{\"user\":42,\"method\":\"update_user_status\"}",
        "{\"user\":\"42\"}",
        "{\"user\":\"42\",\"method\":7}",
        "{\"user\":\"42\",\"user\":\"43\",\"method\":\"update_user_status\"}",
        "{\"user\":\"42\",\"method\":\"update_user_status\",\"data\":{\"state\":1}}",
        "{\"user\":\"42\",\"method\":\"update_user_status\",\"data\":{\"state\":"
        "\"0123456789012345678901234567890123456789012345678901234567890123x\"}}",
        long_user};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        us_proxy_call call;
        int code = parse(US_PROXY_RPC, bad[i], &call);
        if (code != US_PROXY_ERR_BAD_REQUEST) fail_msg("'%s': got %d", bad[i], code);
        assert_true(call.detail[0] != '\0');
    }
}

static void test_refresh_as_centrifugo_sends_it_produces_for_the_user(void **state)
{
    us_proxy_call call;
    assert_int_equal(parse(US_PROXY_REFRESH, "{" RPC_FIELDS ",\"user\":\"42\"}", &call), 0);
    assert_memory_equal(call.user, "42", 2);
    assert_int_equal(call.endpoint, US_PROXY_REFRESH);
}

static void test_refresh_of_anonymous_or_bad_body_produces_nothing(void **state)
{
    us_proxy_call call;
    assert_int_not_equal(parse(US_PROXY_REFRESH, "{" RPC_FIELDS ",\"user\":\"\"}", &call), 0);
    assert_int_not_equal(parse(US_PROXY_REFRESH, "{\"client\":", &call), 0);
    assert_int_not_equal(parse(US_PROXY_REFRESH, "{" RPC_FIELDS "}", &call), 0);
}

/* Debouncing, with an explicit clock. */

static void test_second_active_within_interval_is_suppressed(void **state)
{
    us_debounce *d = us_debounce_new(64, 1000);
    us_debounce_claim_t c;
    assert_int_equal(us_debounce_claim(d, "42", 2, NULL, 0, 0, 10000, &c), 1);
    assert_int_equal(us_debounce_claim(d, "42", 2, NULL, 0, 0, 10999, &c), 0);
    assert_int_equal(us_debounce_claim(d, "43", 2, NULL, 0, 0, 10999, &c), 1);
    assert_int_equal(us_debounce_claim(d, "42", 2, NULL, 0, 0, 11000, &c), 1);
    us_debounce_free(d);
}

/* Two ids with the same 64-bit FNV-1a hash (0xe2a7ed350144fd4b), found by a Pollard-rho search: with
 * the public hash as identity, a client could suppress another user's events by sending this id. */
static void test_colliding_fnv1a_ids_are_different_users(void **state)
{
    static const char a[] = "u-ceec80e0913679a9", b[] = "u-1e24a715ee0259d8";
    assert_int_equal(us_fnv1a64(a, strlen(a)), us_fnv1a64(b, strlen(b)));
    us_debounce *d = us_debounce_new(64, 1000);
    us_debounce_claim_t c;
    assert_int_equal(us_debounce_claim(d, a, strlen(a), NULL, 0, 0, 10000, &c), 1);
    assert_int_equal(us_debounce_claim(d, b, strlen(b), NULL, 0, 0, 10001, &c), 1);
    assert_int_equal(us_debounce_claim(d, b, strlen(b), NULL, 0, 0, 10002, &c), 0);
    us_debounce_free(d);
}

static void test_state_change_is_never_suppressed(void **state)
{
    us_debounce *d = us_debounce_new(64, 1000);
    us_debounce_claim_t c;
    assert_int_equal(us_debounce_claim(d, "42", 2, "dnd", 3, 1, 0, &c), 1);
    assert_int_equal(us_debounce_claim(d, "42", 2, "dnd", 3, 1, 100, &c), 0);
    assert_int_equal(us_debounce_claim(d, "42", 2, NULL, 0, 0, 200, &c), 0); /* keeps "dnd" */
    assert_int_equal(us_debounce_claim(d, "42", 2, "away", 4, 1, 300, &c), 1);
    assert_int_equal(us_debounce_claim(d, "42", 2, "", 0, 1, 400, &c), 1);
    assert_int_equal(us_debounce_claim(d, "42", 2, "", 0, 1, 500, &c), 0);
    us_debounce_free(d);
}

static void test_state_after_stateless_event_is_sent(void **state)
{
    us_debounce *d = us_debounce_new(64, 1000);
    us_debounce_claim_t c;
    assert_int_equal(us_debounce_claim(d, "42", 2, NULL, 0, 0, 0, &c), 1);
    assert_int_equal(us_debounce_claim(d, "42", 2, "dnd", 3, 1, 10, &c), 1);
    us_debounce_free(d);
}

static void test_released_claim_lets_the_next_call_send(void **state)
{
    us_debounce *d = us_debounce_new(64, 1000);
    us_debounce_claim_t c;
    assert_int_equal(us_debounce_claim(d, "42", 2, NULL, 0, 0, 0, &c), 1);
    us_debounce_release(d, &c);
    assert_int_equal(us_debounce_claim(d, "42", 2, NULL, 0, 0, 1, &c), 1);
    assert_int_equal(us_debounce_claim(d, "42", 2, NULL, 0, 0, 2, &c), 0);
    us_debounce_free(d);
}

static void test_release_after_a_newer_claim_changes_nothing(void **state)
{
    us_debounce *d = us_debounce_new(64, 1000);
    us_debounce_claim_t first, second;
    assert_int_equal(us_debounce_claim(d, "42", 2, NULL, 0, 0, 0, &first), 1);
    assert_int_equal(us_debounce_claim(d, "42", 2, "dnd", 3, 1, 5, &second), 1);
    us_debounce_release(d, &first);
    assert_int_equal(us_debounce_claim(d, "42", 2, "dnd", 3, 1, 10, &second), 0);
    us_debounce_free(d);
}

static void test_colliding_users_only_cost_extra_events(void **state)
{
    us_debounce *d = us_debounce_new(1, 1000); /* One slot: every user collides. */
    us_debounce_claim_t c;
    assert_int_equal(us_debounce_claim(d, "a", 1, NULL, 0, 0, 0, &c), 1);
    assert_int_equal(us_debounce_claim(d, "b", 1, NULL, 0, 0, 1, &c), 1);
    assert_int_equal(us_debounce_claim(d, "a", 1, NULL, 0, 0, 2, &c), 1);
    assert_int_equal(us_debounce_claim(d, "a", 1, NULL, 0, 0, 3, &c), 0);
    us_debounce_free(d);
}

static void test_zero_interval_disables_debouncing(void **state)
{
    us_debounce *d = us_debounce_new(64, 0);
    us_debounce_claim_t c;
    for (int i = 0; i < 3; i++)
        assert_int_equal(us_debounce_claim(d, "42", 2, NULL, 0, 0, 0, &c), 1);
    us_debounce_release(d, &c);
    us_debounce_free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rpc_as_centrifugo_sends_it_produces_for_the_user),
        cmocka_unit_test(test_rpc_data_state_is_carried),
        cmocka_unit_test(test_rpc_without_data_or_with_binary_data_produces_without_state),
        cmocka_unit_test(test_rpc_anonymous_user_is_denied),
        cmocka_unit_test(test_rpc_other_method_is_not_found),
        cmocka_unit_test(test_rpc_method_prefix_comes_from_config),
        cmocka_unit_test(test_malformed_requests_are_bad_requests_with_a_reason),
        cmocka_unit_test(test_refresh_as_centrifugo_sends_it_produces_for_the_user),
        cmocka_unit_test(test_refresh_of_anonymous_or_bad_body_produces_nothing),
        cmocka_unit_test(test_second_active_within_interval_is_suppressed),
        cmocka_unit_test(test_colliding_fnv1a_ids_are_different_users),
        cmocka_unit_test(test_state_change_is_never_suppressed),
        cmocka_unit_test(test_state_after_stateless_event_is_sent),
        cmocka_unit_test(test_released_claim_lets_the_next_call_send),
        cmocka_unit_test(test_release_after_a_newer_claim_changes_nothing),
        cmocka_unit_test(test_colliding_users_only_cost_extra_events),
        cmocka_unit_test(test_zero_interval_disables_debouncing),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
