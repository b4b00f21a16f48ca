/* Configuration and duration parsing. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "config.h"
#include "duration.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A fraction that pushes a whole part just under INT64_MAX nanoseconds over it was signed overflow
 * (undefined behaviour, found by tests/fuzz/fuzz_config); now it is refused like any overflow. */
static void test_duration_fraction_overflow_is_refused(void **state)
{
    int64_t ms = -42;
    assert_int_equal(us_duration_parse("2562047.9999h", &ms), -1);
    assert_int_equal(ms, -42);
    assert_int_equal(us_duration_parse("9223372036.854775807s", &ms), 0); /* INT64_MAX ns exactly */
    assert_int_equal(ms, 9223372036854LL);
    assert_int_equal(us_duration_parse("2562047h", &ms), 0);
    assert_int_equal(ms, 2562047LL * 3600 * 1000);
}

static void test_go_durations(void **state)
{
    struct {
        const char *text;
        int64_t ms;
    } ok[] = {{"0", 0},           {"30s", 30000},        {"744h", 744LL * 3600 * 1000},
              {"1h30m", 5400000}, {"1.5s", 1500},        {"250ms", 250},
              {"2m3s", 123000},   {"-1s", -1000},        {"1000000us", 1000},
              {"+5s", 5000},      {"1500000000ns", 1500}, {".5s", 500},
              {"1\xc2\xb5s", 0}};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        int64_t ms = -42;
        if (us_duration_parse(ok[i].text, &ms) != 0) fail_msg("refused '%s'", ok[i].text);
        if (ms != ok[i].ms) fail_msg("'%s': want %lld, got %lld", ok[i].text, (long long)ok[i].ms, (long long)ms);
    }
    const char *bad[] = {"", "30", "s", "1x", "1.s.", "h1", "1 h", "9999999999999999999h", "-", "."};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int64_t ms = -42;
        if (us_duration_parse(bad[i], &ms) != -1) fail_msg("accepted '%s'", bad[i]);
        assert_int_equal(ms, -42);
    }
}

/* Writes text to a temporary file; returns its path (static buffer). */
static const char *write_temp(const char *text)
{
    static char path[64];
    snprintf(path, sizeof(path), "/tmp/us-config-test-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static int load_text(us_config *cfg, const char *json, char **envp, char *err, size_t errlen)
{
    const char *path = write_temp(json);
    int rc = us_config_load(cfg, path, envp, NULL, 0, err, errlen);
    unlink(path);
    return rc;
}

static void test_defaults_without_a_file(void **state)
{
    us_config cfg;
    char err[256];
    assert_int_equal(us_config_load(&cfg, NULL, NULL, NULL, 0, err, sizeof(err)), 0);
    assert_int_equal(cfg.port, 8000);
    assert_string_equal(cfg.address, "0.0.0.0");
    assert_true(cfg.user_status.enabled);
    assert_int_equal(cfg.user_status.expire_interval_ms, 744LL * 3600 * 1000);
    assert_int_equal(cfg.user_status.max_clock_skew_ms, 60000);
    assert_int_equal(cfg.user_status.redis_address.count, 1);
    assert_string_equal(cfg.user_status.redis_address.items[0], "127.0.0.1:6379");
    assert_string_equal(cfg.user_status.redis_prefix, "userstatus");
    assert_string_equal(cfg.kafka.topic, "user_status");
    assert_string_equal(cfg.kafka.dlq_topic, "user_status_dlq");
    assert_string_equal(cfg.kafka.consumer_group, "userstatus-worker");
    assert_int_equal(cfg.kafka.partitions, 16);
    assert_int_equal(cfg.query.max_users_per_request, 1000);
    assert_int_equal(cfg.query.max_user_id_length, 256);
    us_config_free(&cfg);
}

static void test_design_example_is_accepted_as_written(void **state)
{
    us_config cfg;
    char err[256];
    const char *json =
        "{\"api_key\": \"secret\", \"api_insecure\": false, \"address\": \"0.0.0.0\", \"port\": 8000,"
        " \"user_status\": { \"enabled\": true, \"redis_address\": \"127.0.0.1:6379\","
        " \"expire_interval\": \"744h\" },"
        " \"kafka\": { \"brokers\": \"127.0.0.1:9092\", \"topic\": \"user_status\","
        " \"consumer_group\": \"userstatus-worker\" }}";
    assert_int_equal(load_text(&cfg, json, NULL, err, sizeof(err)), 0);
    assert_string_equal(cfg.api_key, "secret");
    assert_int_equal(cfg.user_status.expire_interval_ms, 744LL * 3600 * 1000);
    us_config_free(&cfg);
}

static void test_redis_from_engine(void **state)
{
    us_config cfg;
    char err[256];
    const char *json = "{\"engine\": \"redis\", \"redis_address\": \"10.0.0.5:6380\","
                       " \"user_status\": {\"enabled\": true, \"use_redis_from_engine\": true}}";
    assert_int_equal(load_text(&cfg, json, NULL, err, sizeof(err)), 0);
    const us_strlist *a = us_config_redis_addresses(&cfg);
    assert_int_equal(a->count, 1);
    assert_string_equal(a->items[0], "10.0.0.5:6380");
    us_config_free(&cfg);

    assert_int_equal(load_text(&cfg, "{\"user_status\": {\"use_redis_from_engine\": true}}", NULL,
                               err, sizeof(err)),
                     -1);
    assert_non_null(strstr(err, "use_redis_from_engine"));
    us_config_free(&cfg);
}

static void test_shards_as_array_and_kafka_properties(void **state)
{
    us_config cfg;
    char err[256];
    const char *json = "{\"user_status\": {\"redis_address\": [\"a:1\", \"redis://b:2/1\"]},"
                       " \"kafka\": {\"properties\": {\"fetch.wait.max.ms\": 50, "
                       "\"client.id\": \"x\", \"check.crcs\": true}}}";
    assert_int_equal(load_text(&cfg, json, NULL, err, sizeof(err)), 0);
    assert_int_equal(cfg.user_status.redis_address.count, 2);
    assert_string_equal(cfg.user_status.redis_address.items[1], "redis://b:2/1");
    assert_int_equal(cfg.kafka.properties.count, 6);
    assert_string_equal(cfg.kafka.properties.items[0], "fetch.wait.max.ms");
    assert_string_equal(cfg.kafka.properties.items[1], "50");
    assert_string_equal(cfg.kafka.properties.items[5], "true");
    us_config_free(&cfg);
}

/* A config that must be refused with an error mentioning needle. */
typedef struct bad_config {
    const char *json;
    const char *needle;
} bad_config;

static void assert_refused_naming(const bad_config *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        us_config cfg;
        char err[256] = "";
        if (load_text(&cfg, cases[i].json, NULL, err, sizeof(err)) != -1)
            fail_msg("accepted %s", cases[i].json);
        if (!strstr(err, cases[i].needle))
            fail_msg("%s: error '%s' does not mention %s", cases[i].json, err, cases[i].needle);
        us_config_free(&cfg);
    }
}

static void test_bad_configs_name_the_key(void **state)
{
    const bad_config cases[] = {
        {"{\"bogus\": 1}", "'bogus'"},
        {"{\"user_status\": {\"expire\": \"1h\"}}", "'user_status.expire'"},
        {"{\"port\": \"8000\"}", "'port'"},
        {"{\"port\": 70000}", "'port'"},
        {"{\"api_insecure\": \"yes\"}", "'api_insecure'"},
        {"{\"user_status\": {\"expire_interval\": \"31 days\"}}", "'user_status.expire_interval'"},
        {"{\"user_status\": {\"expire_interval\": 3600}}", "'user_status.expire_interval'"},
        {"{\"user_status\": {\"redis_address\": []}}", "'user_status.redis_address'"},
        {"{\"user_status\": {\"redis_address\": [1]}}", "'user_status.redis_address[0]'"},
        {"{\"kafka\": {\"properties\": {\"a\": [1]}}}", "'kafka.properties.a'"},
        {"{\"kafka\": 5}", "'kafka'"},
        {"{\"log_level\": \"loud\"}", "'log_level'"},
        {"{\"kafka\": {\"dlq_topic\": \"user_status\"}}", "'kafka.dlq_topic'"},
        {"{\"port\": 1, \"port\": 2}", "duplicate"},
        {"[1]", "top level"},
        {"{", "config file"},
    };
    assert_refused_naming(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_environment_overrides_file_and_flags_override_environment(void **state)
{
    us_config cfg;
    char err[256];
    char *envp[] = {"USERSTATUS_PORT=9001", "USERSTATUS_USER_STATUS_REDIS_ADDRESS=a:1, b:2",
                    "USERSTATUS_USER_STATUS_EXPIRE_INTERVAL=2h", "USERSTATUS_API_INSECURE=true",
                    "USERSTATUS_KAFKA_PROPERTIES={\"linger.ms\":\"7\"}", "OTHER=1", NULL};
    const char *path = write_temp("{\"port\": 8001, \"kafka\": {\"topic\": \"t\"}}");
    us_config_override flags[] = {{"kafka.topic", "from-flag"}};
    assert_int_equal(us_config_load(&cfg, path, envp, flags, 1, err, sizeof(err)), 0);
    unlink(path);
    assert_int_equal(cfg.port, 9001);
    assert_int_equal(cfg.user_status.redis_address.count, 2);
    assert_string_equal(cfg.user_status.redis_address.items[1], "b:2");
    assert_int_equal(cfg.user_status.expire_interval_ms, 7200000);
    assert_true(cfg.api_insecure);
    assert_string_equal(cfg.kafka.properties.items[1], "7");
    assert_string_equal(cfg.kafka.topic, "from-flag");
    us_config_free(&cfg);
}

static void test_bad_environment_value_names_the_key(void **state)
{
    us_config cfg;
    char err[256];
    char *envp[] = {"USERSTATUS_QUERY_MAX_USERS_PER_REQUEST=lots", NULL};
    assert_int_equal(us_config_load(&cfg, NULL, envp, NULL, 0, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "'query.max_users_per_request'"));
    us_config_free(&cfg);
}

static void test_proxy_defaults(void **state)
{
    us_config cfg;
    char err[256];
    assert_int_equal(us_config_load(&cfg, NULL, NULL, NULL, 0, err, sizeof(err)), 0);
    assert_true(cfg.proxy.enabled);
    assert_string_equal(cfg.proxy.rpc_method_prefix, "");
    assert_int_equal(cfg.proxy.online_interval_ms, 25000);
    assert_int_equal(cfg.proxy.active_debounce_ms, 1000);
    assert_int_equal(cfg.proxy.ack_timeout_ms, 500);
    us_config_free(&cfg);
}

static void test_proxy_section_from_file_and_environment(void **state)
{
    us_config cfg;
    char err[256];
    char *envp[] = {"USERSTATUS_PROXY_ACTIVE_DEBOUNCE=0s", NULL};
    const char *json = "{\"proxy\": {\"enabled\": false, \"rpc_method_prefix\": \"status:\","
                       " \"online_interval\": \"1m\", \"ack_timeout\": \"250ms\"}}";
    assert_int_equal(load_text(&cfg, json, envp, err, sizeof(err)), 0);
    assert_false(cfg.proxy.enabled);
    assert_string_equal(cfg.proxy.rpc_method_prefix, "status:");
    assert_int_equal(cfg.proxy.online_interval_ms, 60000);
    assert_int_equal(cfg.proxy.active_debounce_ms, 0);
    assert_int_equal(cfg.proxy.ack_timeout_ms, 250);
    us_config_free(&cfg);
}

static void test_storage_defaults_to_buckets_sized_for_ten_million_users(void **state)
{
    us_config cfg;
    char err[256];
    assert_int_equal(us_config_load(&cfg, NULL, NULL, NULL, 0, err, sizeof(err)), 0);
    assert_string_equal(cfg.user_status.storage, "buckets");
    assert_int_equal(cfg.user_status.expected_users, 10000000);
    us_config_free(&cfg);

    char *envp[] = {"USERSTATUS_USER_STATUS_EXPECTED_USERS=250000", NULL};
    const char *json = "{\"user_status\": {\"storage\": \"per_user\"}}";
    assert_int_equal(load_text(&cfg, json, envp, err, sizeof(err)), 0);
    assert_string_equal(cfg.user_status.storage, "per_user");
    assert_int_equal(cfg.user_status.expected_users, 250000);
    us_config_free(&cfg);
}

static void test_bad_storage_values_name_the_key(void **state)
{
    const bad_config cases[] = {
        {"{\"user_status\": {\"storage\": \"hash\"}}", "'user_status.storage'"},
        {"{\"user_status\": {\"storage\": 1}}", "'user_status.storage'"},
        {"{\"user_status\": {\"expected_users\": 0}}", "'user_status.expected_users'"},
        {"{\"user_status\": {\"expected_users\": \"1M\"}}", "'user_status.expected_users'"},
    };
    assert_refused_naming(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_bad_proxy_values_name_the_key(void **state)
{
    const bad_config cases[] = {
        {"{\"proxy\": {\"online_interval\": \"500ms\"}}", "'proxy.online_interval'"},
        {"{\"proxy\": {\"online_interval\": 25}}", "'proxy.online_interval'"},
        {"{\"proxy\": {\"active_debounce\": \"-1s\"}}", "'proxy.active_debounce'"},
        {"{\"proxy\": {\"ack_timeout\": \"2m\"}}", "'proxy.ack_timeout'"},
        {"{\"proxy\": {\"enabled\": \"yes\"}}", "'proxy.enabled'"},
        {"{\"proxy\": {\"rpc_namespace\": \"x\"}}", "'proxy.rpc_namespace'"},
    };
    assert_refused_naming(cases, sizeof(cases) / sizeof(cases[0]));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_go_durations),
        cmocka_unit_test(test_duration_fraction_overflow_is_refused),
        cmocka_unit_test(test_defaults_without_a_file),
        cmocka_unit_test(test_design_example_is_accepted_as_written),
        cmocka_unit_test(test_redis_from_engine),
        cmocka_unit_test(test_shards_as_array_and_kafka_properties),
        cmocka_unit_test(test_bad_configs_name_the_key),
        cmocka_unit_test(test_environment_overrides_file_and_flags_override_environment),
        cmocka_unit_test(test_bad_environment_value_names_the_key),
        cmocka_unit_test(test_proxy_defaults),
        cmocka_unit_test(test_proxy_section_from_file_and_environment),
        cmocka_unit_test(test_bad_proxy_values_name_the_key),
        cmocka_unit_test(test_storage_defaults_to_buckets_sized_for_ten_million_users),
        cmocka_unit_test(test_bad_storage_values_name_the_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
