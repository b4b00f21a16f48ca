/* Configuration and duration parsing. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "admin_http.h"
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

/* Centrifugo v6 spellings (docs/choices.md, "Centrifugo v6 names"). */

static void test_v6_user_status_redis_block(void **state)
{
    us_config cfg;
    char err[256];
    const char *json =
        "{\"user_status\": {\"redis\": {\"address\": [\"a:1\", \"b:2\"], \"prefix\": \"st\","
        " \"db\": 3, \"user\": \"u\", \"password\": \"p\", \"connect_timeout\": \"250ms\","
        " \"io_timeout\": \"2s\", \"sentinel_user\": \"su\", \"sentinel_password\": \"sp\"}}}";
    assert_int_equal(load_text(&cfg, json, NULL, err, sizeof(err)), 0);
    assert_int_equal(cfg.user_status.redis_address.count, 2);
    assert_string_equal(cfg.user_status.redis_address.items[1], "b:2");
    assert_string_equal(cfg.user_status.redis_prefix, "st");
    assert_int_equal(cfg.user_status.redis_db, 3);
    assert_string_equal(cfg.user_status.redis_user, "u");
    assert_string_equal(cfg.user_status.redis_password, "p");
    assert_int_equal(cfg.user_status.redis_connect_timeout_ms, 250);
    assert_int_equal(cfg.user_status.redis_io_timeout_ms, 2000);
    assert_string_equal(cfg.user_status.redis_sentinel_user, "su");
    assert_string_equal(cfg.user_status.redis_sentinel_password, "sp");
    us_config_free(&cfg);
}

static void test_v6_user_status_sentinel_and_cluster(void **state)
{
    us_config cfg;
    char err[256];
    const char *sentinel = "{\"user_status\": {\"redis\": {\"sentinel_address\": [\"s:26379\"],"
                           " \"sentinel_master_name\": \"mymaster\"}}}";
    assert_int_equal(load_text(&cfg, sentinel, NULL, err, sizeof(err)), 0);
    assert_string_equal(cfg.user_status.redis_sentinel_address.items[0], "s:26379");
    assert_string_equal(cfg.user_status.redis_sentinel_master_name, "mymaster");
    us_config_free(&cfg);

    const char *cluster = "{\"user_status\": {\"redis\": {\"cluster_address\": \"c:7000\"}}}";
    assert_int_equal(load_text(&cfg, cluster, NULL, err, sizeof(err)), 0);
    assert_int_equal(cfg.user_status.redis_cluster_address.count, 1);
    assert_string_equal(cfg.user_status.redis_cluster_address.items[0], "c:7000");
    us_config_free(&cfg);
}

static void test_v6_engine_block_is_reused_by_user_status(void **state)
{
    us_config cfg;
    char err[256];
    const char *json =
        "{\"engine\": {\"type\": \"redis\", \"redis\": {\"address\": \"10.0.0.5:6380\","
        " \"prefix\": \"centrifugo\", \"db\": 2, \"user\": \"eu\", \"password\": \"ep\","
        " \"connect_timeout\": \"3s\", \"io_timeout\": \"5s\"}},"
        " \"user_status\": {\"enabled\": true, \"redis\": {\"reuse_from_engine\": true,"
        " \"prefix\": \"st\"}}}";
    assert_int_equal(load_text(&cfg, json, NULL, err, sizeof(err)), 0);
    assert_string_equal(cfg.engine, "redis");
    assert_true(cfg.user_status.use_redis_from_engine);
    const us_strlist *a = us_config_redis_addresses(&cfg);
    assert_int_equal(a->count, 1);
    assert_string_equal(a->items[0], "10.0.0.5:6380");
    assert_string_equal(cfg.user_status.redis_address.items[0], "10.0.0.5:6380");
    assert_int_equal(cfg.user_status.redis_db, 2);
    assert_string_equal(cfg.user_status.redis_user, "eu");
    assert_string_equal(cfg.user_status.redis_password, "ep");
    assert_int_equal(cfg.user_status.redis_connect_timeout_ms, 3000);
    assert_int_equal(cfg.user_status.redis_io_timeout_ms, 5000);
    assert_string_equal(cfg.user_status.redis_prefix, "st"); /* Its own, not the engine's. */
    us_config_free(&cfg);
}

static void test_v6_engine_sentinel_is_reused_by_user_status(void **state)
{
    us_config cfg;
    char err[256];
    const char *json =
        "{\"engine\": {\"type\": \"redis\", \"redis\": {\"sentinel_address\": [\"s1:26379\","
        " \"s2:26379\"], \"sentinel_master_name\": \"m\", \"sentinel_user\": \"su\","
        " \"sentinel_password\": \"sp\"}},"
        " \"user_status\": {\"redis\": {\"reuse_from_engine\": true}}}";
    assert_int_equal(load_text(&cfg, json, NULL, err, sizeof(err)), 0);
    assert_int_equal(cfg.user_status.redis_sentinel_address.count, 2);
    assert_string_equal(cfg.user_status.redis_sentinel_address.items[1], "s2:26379");
    assert_string_equal(cfg.user_status.redis_sentinel_master_name, "m");
    assert_string_equal(cfg.user_status.redis_sentinel_user, "su");
    assert_string_equal(cfg.user_status.redis_sentinel_password, "sp");
    us_config_free(&cfg);

    json = "{\"engine\": {\"type\": \"redis\", \"redis\": {\"cluster_address\": [\"c:7000\"]}},"
           " \"user_status\": {\"redis\": {\"reuse_from_engine\": true}}}";
    assert_int_equal(load_text(&cfg, json, NULL, err, sizeof(err)), 0);
    assert_string_equal(cfg.user_status.redis_cluster_address.items[0], "c:7000");
    us_config_free(&cfg);
}

/* Centrifugo's documentation example: the engine's Redis at its default address. */
static void test_centrifugo_reuse_example_is_accepted_as_written(void **state)
{
    us_config cfg;
    char err[256];
    const char *json = "{\"engine\": {\"type\": \"redis\"},"
                       " \"user_status\": {\"enabled\": true, \"redis\": {\"reuse_from_engine\": true}}}";
    assert_int_equal(load_text(&cfg, json, NULL, err, sizeof(err)), 0);
    const us_strlist *a = us_config_redis_addresses(&cfg);
    assert_int_equal(a->count, 1);
    assert_string_equal(a->items[0], "127.0.0.1:6379");
    us_config_free(&cfg);
}

static void test_v5_engine_settings_are_reused_by_user_status(void **state)
{
    us_config cfg;
    char err[256];
    const char *json = "{\"engine\": \"redis\", \"redis_address\": \"e:1\", \"redis_db\": 4,"
                       " \"redis_password\": \"pw\", \"redis_io_timeout\": \"6s\","
                       " \"user_status\": {\"use_redis_from_engine\": true}}";
    assert_int_equal(load_text(&cfg, json, NULL, err, sizeof(err)), 0);
    assert_string_equal(cfg.user_status.redis_address.items[0], "e:1");
    assert_int_equal(cfg.user_status.redis_db, 4);
    assert_string_equal(cfg.user_status.redis_password, "pw");
    assert_int_equal(cfg.user_status.redis_io_timeout_ms, 6000);
    us_config_free(&cfg);
}

/* Config text that must be refused with an error naming both needles. */
typedef struct conflict {
    const char *json;
    const char *first, *second;
} conflict;

static void test_each_setting_in_both_spellings_is_refused(void **state)
{
    const conflict cases[] = {
        {"{\"redis_address\": \"h:1\", \"engine\": {\"redis\": {\"address\": \"h:1\"}}}", "'redis_address'", "'engine.redis.address'"},
        {"{\"redis_prefix\": \"x\", \"engine\": {\"redis\": {\"prefix\": \"x\"}}}", "'redis_prefix'", "'engine.redis.prefix'"},
        {"{\"redis_db\": 1, \"engine\": {\"redis\": {\"db\": 1}}}", "'redis_db'", "'engine.redis.db'"},
        {"{\"redis_user\": \"x\", \"engine\": {\"redis\": {\"user\": \"x\"}}}", "'redis_user'", "'engine.redis.user'"},
        {"{\"redis_password\": \"x\", \"engine\": {\"redis\": {\"password\": \"x\"}}}", "'redis_password'", "'engine.redis.password'"},
        {"{\"redis_connect_timeout\": \"2s\", \"engine\": {\"redis\": {\"connect_timeout\": \"2s\"}}}", "'redis_connect_timeout'", "'engine.redis.connect_timeout'"},
        {"{\"redis_io_timeout\": \"2s\", \"engine\": {\"redis\": {\"io_timeout\": \"2s\"}}}", "'redis_io_timeout'", "'engine.redis.io_timeout'"},
        {"{\"redis_sentinel_address\": \"h:1\", \"engine\": {\"redis\": {\"sentinel_address\": \"h:1\"}}}", "'redis_sentinel_address'", "'engine.redis.sentinel_address'"},
        {"{\"redis_sentinel_master_name\": \"x\", \"engine\": {\"redis\": {\"sentinel_master_name\": \"x\"}}}", "'redis_sentinel_master_name'", "'engine.redis.sentinel_master_name'"},
        {"{\"redis_sentinel_user\": \"x\", \"engine\": {\"redis\": {\"sentinel_user\": \"x\"}}}", "'redis_sentinel_user'", "'engine.redis.sentinel_user'"},
        {"{\"redis_sentinel_password\": \"x\", \"engine\": {\"redis\": {\"sentinel_password\": \"x\"}}}", "'redis_sentinel_password'", "'engine.redis.sentinel_password'"},
        {"{\"redis_cluster_address\": \"h:1\", \"engine\": {\"redis\": {\"cluster_address\": \"h:1\"}}}", "'redis_cluster_address'", "'engine.redis.cluster_address'"},
        {"{\"user_status\": {\"redis_address\": \"h:1\", \"redis\": {\"address\": \"h:1\"}}}", "'user_status.redis_address'", "'user_status.redis.address'"},
        {"{\"user_status\": {\"redis_prefix\": \"x\", \"redis\": {\"prefix\": \"x\"}}}", "'user_status.redis_prefix'", "'user_status.redis.prefix'"},
        {"{\"user_status\": {\"redis_db\": 1, \"redis\": {\"db\": 1}}}", "'user_status.redis_db'", "'user_status.redis.db'"},
        {"{\"user_status\": {\"redis_user\": \"x\", \"redis\": {\"user\": \"x\"}}}", "'user_status.redis_user'", "'user_status.redis.user'"},
        {"{\"user_status\": {\"redis_password\": \"x\", \"redis\": {\"password\": \"x\"}}}", "'user_status.redis_password'", "'user_status.redis.password'"},
        {"{\"user_status\": {\"redis_connect_timeout\": \"2s\", \"redis\": {\"connect_timeout\": \"2s\"}}}", "'user_status.redis_connect_timeout'", "'user_status.redis.connect_timeout'"},
        {"{\"user_status\": {\"redis_io_timeout\": \"2s\", \"redis\": {\"io_timeout\": \"2s\"}}}", "'user_status.redis_io_timeout'", "'user_status.redis.io_timeout'"},
        {"{\"user_status\": {\"redis_sentinel_address\": \"h:1\", \"redis\": {\"sentinel_address\": \"h:1\"}}}", "'user_status.redis_sentinel_address'", "'user_status.redis.sentinel_address'"},
        {"{\"user_status\": {\"redis_sentinel_master_name\": \"x\", \"redis\": {\"sentinel_master_name\": \"x\"}}}", "'user_status.redis_sentinel_master_name'", "'user_status.redis.sentinel_master_name'"},
        {"{\"user_status\": {\"redis_sentinel_user\": \"x\", \"redis\": {\"sentinel_user\": \"x\"}}}", "'user_status.redis_sentinel_user'", "'user_status.redis.sentinel_user'"},
        {"{\"user_status\": {\"redis_sentinel_password\": \"x\", \"redis\": {\"sentinel_password\": \"x\"}}}", "'user_status.redis_sentinel_password'", "'user_status.redis.sentinel_password'"},
        {"{\"user_status\": {\"redis_cluster_address\": \"h:1\", \"redis\": {\"cluster_address\": \"h:1\"}}}", "'user_status.redis_cluster_address'", "'user_status.redis.cluster_address'"},
        {"{\"user_status\": {\"use_redis_from_engine\": true, \"redis\": {\"reuse_from_engine\": true}}}", "'user_status.use_redis_from_engine'", "'user_status.redis.reuse_from_engine'"},
        /* The v6 spelling first in the file: the error names them in file order. */
        {"{\"user_status\": {\"redis\": {\"address\": \"h:1\"}, \"redis_address\": \"h:2\"}}", "'user_status.redis.address'", "'user_status.redis_address'"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        us_config cfg;
        char err[256] = "";
        if (load_text(&cfg, cases[i].json, NULL, err, sizeof(err)) != -1)
            fail_msg("accepted %s", cases[i].json);
        const char *a = strstr(err, cases[i].first), *b = strstr(err, cases[i].second);
        if (!a || !b || b < a)
            fail_msg("%s: error '%s' does not name %s then %s", cases[i].json, err,
                     cases[i].first, cases[i].second);
        us_config_free(&cfg);
    }
}

/* "engine" cannot be both a string and an object: JSON's duplicate key rule refuses it. */
static void test_engine_as_string_and_object_is_refused(void **state)
{
    const bad_config cases[] = {
        {"{\"engine\": \"redis\", \"engine\": {\"type\": \"redis\"}}", "duplicate"},
    };
    assert_refused_naming(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_bad_v6_values_name_the_v6_key(void **state)
{
    const bad_config cases[] = {
        {"{\"user_status\": {\"redis\": {\"address\": []}}}", "'user_status.redis.address'"},
        {"{\"user_status\": {\"redis\": {\"db\": -1}}}", "'user_status.redis.db'"},
        {"{\"user_status\": {\"redis\": {\"io_timeout\": 4}}}", "'user_status.redis.io_timeout'"},
        {"{\"user_status\": {\"redis\": {\"reuse_from_engine\": \"yes\"}}}",
         "'user_status.redis.reuse_from_engine'"},
        {"{\"user_status\": {\"redis\": {\"tls\": {}}}}", "'user_status.redis.tls'"},
        {"{\"user_status\": {\"redis\": \"h:1\"}}", "'user_status.redis': must be an object"},
        {"{\"engine\": {\"type\": \"nats\"}}", "'engine.type'"},
        {"{\"engine\": \"nats\"}", "'engine'"},
        {"{\"engine\": 5}", "'engine'"},
        {"{\"engine\": {\"redis\": []}}", "'engine.redis': must be an object"},
        {"{\"engine\": {\"redis\": {\"presence_ttl\": \"60s\"}}}", "'engine.redis.presence_ttl'"},
        {"{\"engine\": {\"redis\": {\"reuse_from_engine\": true}}}",
         "'engine.redis.reuse_from_engine'"},
        {"{\"user_status\": {\"redis\": {\"sentinel_address\": \"s:1\"}}}",
         "'user_status.redis.sentinel_master_name': required with "
         "'user_status.redis.sentinel_address'"},
        {"{\"user_status\": {\"redis\": {\"cluster_address\": \"c:1\", \"db\": 1}}}",
         "'user_status.redis.db': Redis Cluster has only database 0"},
        {"{\"user_status\": {\"redis\": {\"cluster_address\": \"c:1\", \"sentinel_address\": \"s:1\","
         " \"sentinel_master_name\": \"m\"}}}",
         "'user_status.redis.sentinel_address' and 'user_status.redis.cluster_address'"},
    };
    assert_refused_naming(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_reuse_from_engine_refuses_settings_of_its_own(void **state)
{
    const bad_config cases[] = {
        {"{\"engine\": {\"type\": \"redis\"}, \"user_status\": {\"redis\": {\"reuse_from_engine\":"
         " true, \"address\": \"h:1\"}}}",
         "'user_status.redis.address': not allowed with 'user_status.redis.reuse_from_engine'"},
        {"{\"engine\": \"redis\", \"user_status\": {\"use_redis_from_engine\": true,"
         " \"redis_password\": \"p\"}}",
         "'user_status.redis_password': not allowed with 'user_status.use_redis_from_engine'"},
        {"{\"engine\": \"redis\", \"user_status\": {\"use_redis_from_engine\": true,"
         " \"redis_io_timeout\": \"1s\"}}",
         "use 'redis_io_timeout' instead"},
        {"{\"engine\": {\"type\": \"redis\"}, \"user_status\": {\"redis\": {\"reuse_from_engine\":"
         " true, \"io_timeout\": \"1s\"}}}",
         "use 'engine.redis.io_timeout' instead"},
        {"{\"user_status\": {\"redis\": {\"reuse_from_engine\": true}}}",
         "'user_status.redis.reuse_from_engine': true, but the engine has no Redis"},
        {"{\"engine\": {\"type\": \"redis\", \"redis\": {\"sentinel_address\": \"s:1\"}},"
         " \"user_status\": {\"redis\": {\"reuse_from_engine\": true}}}",
         "'engine.redis.sentinel_master_name': required with 'engine.redis.sentinel_address'"},
    };
    assert_refused_naming(cases, sizeof(cases) / sizeof(cases[0]));

    /* The key prefix is user status's own, so it may be given with reuse_from_engine. */
    us_config cfg;
    char err[256];
    assert_int_equal(load_text(&cfg,
                               "{\"engine\": \"redis\", \"user_status\": {\"redis\":"
                               " {\"reuse_from_engine\": true, \"prefix\": \"p\"}}}",
                               NULL, err, sizeof(err)),
                     0);
    assert_string_equal(cfg.user_status.redis_prefix, "p");
    us_config_free(&cfg);
}

/* Loads json (NULL: no file) with envp; returns the error text ("" on success). */
static const char *load_env_error(const char *json, char **envp)
{
    static char err[256];
    us_config cfg;
    err[0] = '\0';
    int rc = json ? load_text(&cfg, json, envp, err, sizeof(err))
                  : us_config_load(&cfg, NULL, envp, NULL, 0, err, sizeof(err));
    if (rc == 0) err[0] = '\0';
    us_config_free(&cfg);
    return err;
}

static void test_v6_environment_variables(void **state)
{
    us_config cfg;
    char err[256];
    char *envp[] = {"USERSTATUS_ENGINE_TYPE=redis", "USERSTATUS_ENGINE_REDIS_ADDRESS=e:1,e:2",
                    "USERSTATUS_ENGINE_REDIS_DB=5",
                    "USERSTATUS_USER_STATUS_REDIS_REUSE_FROM_ENGINE=true", NULL};
    assert_int_equal(us_config_load(&cfg, NULL, envp, NULL, 0, err, sizeof(err)), 0);
    assert_string_equal(cfg.engine, "redis");
    assert_int_equal(cfg.user_status.redis_address.count, 2);
    assert_string_equal(cfg.user_status.redis_address.items[1], "e:2");
    assert_int_equal(cfg.user_status.redis_db, 5);
    us_config_free(&cfg);
}

/* USERSTATUS_USER_STATUS_REDIS_ADDRESS is the variable of both spellings: it overrides the
 * setting whichever spelling the file used. */
static void test_shared_variable_overrides_either_spelling(void **state)
{
    us_config cfg;
    char err[256];
    char *envp[] = {"USERSTATUS_USER_STATUS_REDIS_ADDRESS=env:1",
                    "USERSTATUS_USER_STATUS_REDIS_DB=7", NULL};
    assert_int_equal(load_text(&cfg, "{\"user_status\": {\"redis\": {\"address\": \"f:1\", \"db\": 1}}}",
                               envp, err, sizeof(err)),
                     0);
    assert_string_equal(cfg.user_status.redis_address.items[0], "env:1");
    assert_int_equal(cfg.user_status.redis_db, 7);
    us_config_free(&cfg);
    assert_int_equal(load_text(&cfg, "{\"user_status\": {\"redis_address\": \"f:1\"}}", envp, err,
                               sizeof(err)),
                     0);
    assert_string_equal(cfg.user_status.redis_address.items[0], "env:1");
    us_config_free(&cfg);

    /* Errors about the setting keep naming it as the file spells it. */
    const char *e = load_env_error("{\"engine\": \"redis\", \"user_status\": {\"redis\":"
                                   " {\"reuse_from_engine\": true, \"address\": \"f:1\"}}}",
                                   envp);
    assert_non_null(strstr(e, "'user_status.redis.address': not allowed"));
}

static void test_one_setting_in_two_environment_variables_is_refused(void **state)
{
    char *both_engines[] = {"USERSTATUS_ENGINE=redis", "USERSTATUS_ENGINE_TYPE=redis", NULL};
    const char *e = load_env_error(NULL, both_engines);
    assert_non_null(strstr(e, "USERSTATUS_ENGINE ("));
    assert_non_null(strstr(e, "USERSTATUS_ENGINE_TYPE ('engine.type')"));

    char *both_addresses[] = {"USERSTATUS_REDIS_ADDRESS=a:1", "USERSTATUS_ENGINE_REDIS_ADDRESS=b:1",
                              NULL};
    e = load_env_error(NULL, both_addresses);
    assert_non_null(strstr(e, "USERSTATUS_REDIS_ADDRESS (config key 'redis_address')"));
    assert_non_null(strstr(e, "USERSTATUS_ENGINE_REDIS_ADDRESS ('engine.redis.address')"));

    char *both_reuse[] = {"USERSTATUS_USER_STATUS_USE_REDIS_FROM_ENGINE=true",
                          "USERSTATUS_USER_STATUS_REDIS_REUSE_FROM_ENGINE=true", NULL};
    e = load_env_error(NULL, both_reuse);
    assert_non_null(strstr(e, "USERSTATUS_USER_STATUS_USE_REDIS_FROM_ENGINE"));
    assert_non_null(strstr(e, "USERSTATUS_USER_STATUS_REDIS_REUSE_FROM_ENGINE"));
}

static void test_file_and_environment_in_two_spellings_is_refused(void **state)
{
    char *v5_env[] = {"USERSTATUS_REDIS_ADDRESS=a:1", NULL};
    const char *e = load_env_error("{\"engine\": {\"redis\": {\"address\": \"f:1\"}}}", v5_env);
    assert_non_null(strstr(e, "'engine.redis.address' in the file"));
    assert_non_null(strstr(e, "USERSTATUS_REDIS_ADDRESS (config key 'redis_address')"));

    char *v6_env[] = {"USERSTATUS_ENGINE_TYPE=redis", NULL};
    e = load_env_error("{\"engine\": \"memory\"}", v6_env);
    assert_non_null(strstr(e, "'engine' in the file"));
    assert_non_null(strstr(e, "USERSTATUS_ENGINE_TYPE (config key 'engine.type')"));

    char *reuse_env[] = {"USERSTATUS_USER_STATUS_USE_REDIS_FROM_ENGINE=false", NULL};
    e = load_env_error("{\"user_status\": {\"redis\": {\"reuse_from_engine\": false}}}", reuse_env);
    assert_non_null(strstr(e, "'user_status.redis.reuse_from_engine' in the file"));
    assert_non_null(strstr(e, "USERSTATUS_USER_STATUS_USE_REDIS_FROM_ENGINE"));

    /* The same spelling in file and environment is the ordinary override. */
    e = load_env_error("{\"redis_address\": \"f:1\"}", v5_env);
    assert_string_equal(e, "");
}

static void test_flag_with_reuse_from_engine_is_refused(void **state)
{
    us_config cfg;
    char err[256];
    const char *path = write_temp("{\"engine\": \"redis\", \"user_status\": {\"redis\":"
                                  " {\"reuse_from_engine\": true}}}");
    us_config_override flags[] = {{"user_status.redis_address", "flag:1"}};
    assert_int_equal(us_config_load(&cfg, path, NULL, flags, 1, err, sizeof(err)), -1);
    unlink(path);
    assert_non_null(strstr(err, "'user_status.redis_address': not allowed"));
    us_config_free(&cfg);
}

static void test_query_deadline_batch_and_metrics_defaults(void **state)
{
    us_config cfg;
    char err[256];
    assert_int_equal(us_config_load(&cfg, NULL, NULL, NULL, 0, err, sizeof(err)), 0);
    assert_int_equal(cfg.query.request_timeout_ms, 10000);
    assert_int_equal(cfg.query.max_batch_commands, 1000);
    assert_string_equal(cfg.query.metrics_address, "127.0.0.1");
    assert_int_equal(cfg.query.metrics_port, 0);
    assert_false(cfg.query.metrics_require_key);
    assert_int_equal(us_api_metrics_mode(&cfg), US_API_METRICS_OPEN);
    us_config_free(&cfg);
}

static void test_metrics_on_the_api_port_with_the_key(void **state)
{
    us_config cfg;
    char err[256];
    const char *json = "{\"api_key\": \"k\", \"query\": {\"metrics_require_key\": true,"
                       " \"request_timeout\": \"2500ms\", \"max_batch_commands\": 50}}";
    assert_int_equal(load_text(&cfg, json, NULL, err, sizeof(err)), 0);
    assert_int_equal(us_api_metrics_mode(&cfg), US_API_METRICS_KEY);
    assert_int_equal(cfg.query.request_timeout_ms, 2500);
    assert_int_equal(cfg.query.max_batch_commands, 50);
    us_config_free(&cfg);

    /* api_insecure: no key is checked anywhere, /metrics included. */
    json = "{\"api_insecure\": true, \"query\": {\"metrics_require_key\": true}}";
    assert_int_equal(load_text(&cfg, json, NULL, err, sizeof(err)), 0);
    assert_int_equal(us_api_metrics_mode(&cfg), US_API_METRICS_OPEN);
    us_config_free(&cfg);
}

static void test_metrics_on_a_listener_of_their_own(void **state)
{
    us_config cfg;
    char err[256];
    char *envp[] = {"USERSTATUS_QUERY_METRICS_PORT=9200", "USERSTATUS_QUERY_METRICS_ADDRESS=::1",
                    NULL};
    assert_int_equal(us_config_load(&cfg, NULL, envp, NULL, 0, err, sizeof(err)), 0);
    assert_int_equal(cfg.query.metrics_port, 9200);
    assert_string_equal(cfg.query.metrics_address, "::1");
    assert_int_equal(us_api_metrics_mode(&cfg), US_API_METRICS_ELSEWHERE);
    us_config_free(&cfg);
}

static void test_bad_query_values_name_the_key(void **state)
{
    const bad_config cases[] = {
        {"{\"query\": {\"request_timeout\": \"5ms\"}}", "'query.request_timeout'"},
        {"{\"query\": {\"request_timeout\": \"11m\"}}", "'query.request_timeout'"},
        {"{\"query\": {\"request_timeout\": 10}}", "'query.request_timeout'"},
        {"{\"query\": {\"max_batch_commands\": 0}}", "'query.max_batch_commands'"},
        {"{\"query\": {\"metrics_port\": 70000}}", "'query.metrics_port'"},
        {"{\"query\": {\"metrics_port\": 8000}}", "'query.metrics_port': 8000 is the API port"},
        {"{\"query\": {\"metrics_port\": 9200, \"metrics_require_key\": true}}",
         "'query.metrics_require_key'"},
        {"{\"query\": {\"metrics_require_key\": 1}}", "'query.metrics_require_key'"},
    };
    assert_refused_naming(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_changes_defaults(void **state)
{
    us_config cfg;
    char err[256];
    assert_int_equal(us_config_load(&cfg, NULL, NULL, NULL, 0, err, sizeof(err)), 0);
    assert_true(cfg.changes.enabled);
    assert_string_equal(cfg.changes.topic, "user_status_changes");
    assert_int_equal(cfg.changes.offline_after_ms, 60000);
    assert_int_equal(cfg.changes.away_after_ms, 300000);
    us_config_free(&cfg);
}

static void test_changes_section_from_file_and_environment(void **state)
{
    us_config cfg;
    char err[256];
    char *envp[] = {"USERSTATUS_CHANGES_AWAY_AFTER=1s", NULL};
    const char *json = "{\"changes\": {\"enabled\": false, \"topic\": \"presence\","
                       " \"offline_after\": \"3s\", \"away_after\": \"10m\"}}";
    assert_int_equal(load_text(&cfg, json, envp, err, sizeof(err)), 0);
    assert_false(cfg.changes.enabled);
    assert_string_equal(cfg.changes.topic, "presence");
    assert_int_equal(cfg.changes.offline_after_ms, 3000);
    assert_int_equal(cfg.changes.away_after_ms, 1000);
    us_config_free(&cfg);
}

static void test_bad_changes_values_name_the_key(void **state)
{
    const bad_config cases[] = {
        {"{\"changes\": {\"offline_after\": \"500ms\"}}", "'changes.offline_after'"},
        {"{\"changes\": {\"offline_after\": 60}}", "'changes.offline_after'"},
        {"{\"changes\": {\"away_after\": \"25h\"}}", "'changes.away_after'"},
        {"{\"changes\": {\"enabled\": 1}}", "'changes.enabled'"},
        {"{\"changes\": {\"topic\": \"\"}}", "'changes.topic'"},
        {"{\"changes\": {\"topic\": \"user_status\"}}", "'changes.topic'"},
    };
    assert_refused_naming(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_notify_defaults_configure_no_destination(void **state)
{
    us_config cfg;
    char err[256];
    assert_int_equal(us_config_load(&cfg, NULL, NULL, NULL, 0, err, sizeof(err)), 0);
    assert_int_equal(cfg.changes.webhooks.count, 0);
    assert_string_equal(cfg.changes.centrifugo_api_url, "");
    assert_string_equal(cfg.changes.centrifugo_channel_prefix, "status:");
    assert_string_equal(cfg.changes.notify_consumer_group, "userstatus-notify");
    assert_int_equal(cfg.changes.notify_timeout_ms, 10000);
    assert_int_equal(cfg.changes.notify_retry_max_ms, 30000);
    assert_int_equal(cfg.changes.notify_batch_size, 100);
    assert_int_equal(cfg.changes.notify_metrics_port, 9200);
    us_config_free(&cfg);
}

static void test_webhooks_and_centrifugo_from_file_and_environment(void **state)
{
    us_config cfg;
    char err[256];
    char *envp[] = {"USERSTATUS_CHANGES_CENTRIFUGO_API_KEY=from-env", NULL};
    const char *json =
        "{\"changes\": {\"webhooks\": [{\"url\": \"http://a.example/hook\", \"secret\": \"s1\"},"
        " {\"url\": \"https://b.example/\", \"secret\": \"s2\", \"consumer_group\": \"g-b\"}],"
        " \"centrifugo\": {\"api_url\": \"http://127.0.0.1:8000/api\", \"api_key\": \"k\","
        " \"channel_prefix\": \"presence:\"}}}";
    assert_int_equal(load_text(&cfg, json, envp, err, sizeof(err)), 0);
    const us_strlist *w = &cfg.changes.webhooks;
    assert_int_equal(w->count, 2 * US_WEBHOOK_FIELDS);
    assert_string_equal(w->items[US_WEBHOOK_URL], "http://a.example/hook");
    assert_string_equal(w->items[US_WEBHOOK_SECRET], "s1");
    assert_string_equal(w->items[US_WEBHOOK_GROUP], "");
    assert_string_equal(w->items[US_WEBHOOK_FIELDS + US_WEBHOOK_URL], "https://b.example/");
    assert_string_equal(w->items[US_WEBHOOK_FIELDS + US_WEBHOOK_SECRET], "s2");
    assert_string_equal(w->items[US_WEBHOOK_FIELDS + US_WEBHOOK_GROUP], "g-b");
    assert_string_equal(cfg.changes.centrifugo_api_url, "http://127.0.0.1:8000/api");
    assert_string_equal(cfg.changes.centrifugo_api_key, "from-env");
    assert_string_equal(cfg.changes.centrifugo_channel_prefix, "presence:");
    us_config_free(&cfg);

    char *env_hooks[] = {
        "USERSTATUS_CHANGES_WEBHOOKS=[{\"url\": \"http://c.example/\", \"secret\": \"s3\"}]", NULL};
    assert_int_equal(load_text(&cfg, json, env_hooks, err, sizeof(err)), 0);
    assert_int_equal(cfg.changes.webhooks.count, US_WEBHOOK_FIELDS);
    assert_string_equal(cfg.changes.webhooks.items[US_WEBHOOK_URL], "http://c.example/");
    us_config_free(&cfg);
}

static void test_bad_notify_values_name_the_key(void **state)
{
    const bad_config cases[] = {
        {"{\"changes\": {\"webhooks\": {\"url\": \"http://a/\"}}}", "'changes.webhooks'"},
        {"{\"changes\": {\"webhooks\": [\"http://a/\"]}}", "'changes.webhooks[0]'"},
        {"{\"changes\": {\"webhooks\": [{\"url\": \"http://a/\", \"secret\": \"s\"}, {\"secret\": \"s\"}]}}",
         "'changes.webhooks[1].url'"},
        {"{\"changes\": {\"webhooks\": [{\"url\": \"http://a/\", \"secret\": \"\"}]}}",
         "'changes.webhooks[0].secret'"},
        {"{\"changes\": {\"webhooks\": [{\"url\": \"http://a/\", \"secret\": 5}]}}",
         "'changes.webhooks[0].secret'"},
        {"{\"changes\": {\"webhooks\": [{\"url\": \"http://a/\", \"secret\": \"s\", \"retries\": \"3\"}]}}",
         "'changes.webhooks[0].retries'"},
        {"{\"changes\": {\"webhooks\": [{\"url\": \"ftp://a/\", \"secret\": \"s\"}]}}",
         "'changes.webhooks[0].url'"},
        {"{\"changes\": {\"centrifugo\": \"http://a/\"}}", "'changes.centrifugo'"},
        {"{\"changes\": {\"centrifugo\": {\"api_url\": \"a:8000\"}}}", "'changes.centrifugo.api_url'"},
        {"{\"changes\": {\"centrifugo\": {\"channel\": \"x\"}}}", "'changes.centrifugo.channel'"},
        {"{\"changes\": {\"notify_timeout\": \"10ms\"}}", "'changes.notify_timeout'"},
        {"{\"changes\": {\"notify_batch_size\": 0}}", "'changes.notify_batch_size'"},
        {"{\"changes\": {\"notify_consumer_group\": \"\"}}", "'changes.notify_consumer_group'"},
    };
    assert_refused_naming(cases, sizeof(cases) / sizeof(cases[0]));
}


/* The status page is off unless asked for: a service that never served HTML does not start to
 * after an upgrade. */
static void test_status_page_is_off_by_default_and_can_be_enabled(void **state)
{
    us_config cfg;
    char err[256];
    assert_int_equal(us_config_load(&cfg, NULL, NULL, NULL, 0, err, sizeof(err)), 0);
    assert_false(cfg.query.status_page);
    us_config_free(&cfg);

    assert_int_equal(load_text(&cfg, "{\"query\": {\"status_page\": true}}", NULL, err,
                               sizeof(err)),
                     0);
    assert_true(cfg.query.status_page);
    us_config_free(&cfg);

    char *envp[] = {"USERSTATUS_QUERY_STATUS_PAGE=true", NULL};
    assert_int_equal(us_config_load(&cfg, NULL, envp, NULL, 0, err, sizeof(err)), 0);
    assert_true(cfg.query.status_page);
    us_config_free(&cfg);

    const bad_config cases[] = {
        {"{\"query\": {\"status_page\": \"yes\"}}", "'query.status_page'"},
        {"{\"query\": {\"status_page\": 1}}", "'query.status_page'"},
    };
    assert_refused_naming(cases, sizeof(cases) / sizeof(cases[0]));
}

static void test_grpc_api_defaults(void **state)
{
    us_config cfg;
    char err[256];
    assert_int_equal(us_config_load(&cfg, NULL, NULL, NULL, 0, err, sizeof(err)), 0);
    assert_false(cfg.grpc_api.enabled);
    assert_string_equal(cfg.grpc_api.address, "");
    assert_int_equal(cfg.grpc_api.port, 10000);
    assert_string_equal(cfg.grpc_api.key, "");
    assert_string_equal(cfg.grpc_api.error_mode, "");
    assert_int_equal(cfg.grpc_api.max_receive_message_size, 4 * 1024 * 1024);
    assert_false(cfg.grpc_api.reflection);
    assert_false(cfg.grpc_api.tls.enabled);
    assert_string_equal(cfg.grpc_api.tls.cert_pem, "");
    assert_string_equal(cfg.grpc_api.tls.key_pem, "");
    us_config_free(&cfg);
}

/* Centrifugo v6's grpc_api section as written, its nested tls section included; the environment
 * reaches the nested keys too. */
static void test_grpc_api_section_from_file_and_environment(void **state)
{
    us_config cfg;
    char err[256];
    char *envp[] = {"USERSTATUS_GRPC_API_TLS_KEY_PEM=/etc/us/key.pem",
                    "USERSTATUS_GRPC_API_PORT=10001", NULL};
    const char *json = "{\"grpc_api\": {\"enabled\": true, \"address\": \"127.0.0.1\","
                       " \"port\": 11000, \"key\": \"gk\", \"error_mode\": \"transport\","
                       " \"max_receive_message_size\": 65536, \"reflection\": true,"
                       " \"tls\": {\"enabled\": true, \"cert_pem\": \"/etc/us/cert.pem\","
                       " \"key_pem\": \"x\"}}}";
    assert_int_equal(load_text(&cfg, json, envp, err, sizeof(err)), 0);
    assert_true(cfg.grpc_api.enabled);
    assert_string_equal(cfg.grpc_api.address, "127.0.0.1");
    assert_int_equal(cfg.grpc_api.port, 10001);
    assert_string_equal(cfg.grpc_api.key, "gk");
    assert_string_equal(cfg.grpc_api.error_mode, "transport");
    assert_int_equal(cfg.grpc_api.max_receive_message_size, 65536);
    assert_true(cfg.grpc_api.reflection);
    assert_true(cfg.grpc_api.tls.enabled);
    assert_string_equal(cfg.grpc_api.tls.cert_pem, "/etc/us/cert.pem");
    assert_string_equal(cfg.grpc_api.tls.key_pem, "/etc/us/key.pem");
    us_config_free(&cfg);
}

static void test_bad_grpc_api_values_name_the_key(void **state)
{
    const bad_config cases[] = {
        {"{\"grpc_api\": {\"error_mode\": \"status\"}}", "'grpc_api.error_mode'"},
        {"{\"grpc_api\": {\"port\": 0}}", "'grpc_api.port'"},
        {"{\"grpc_api\": {\"max_receive_message_size\": \"4MB\"}}",
         "'grpc_api.max_receive_message_size'"},
        {"{\"grpc_api\": {\"max_receive_message_size\": 10}}",
         "'grpc_api.max_receive_message_size'"},
        {"{\"grpc_api\": {\"tls\": {\"enabled\": true}}}", "'grpc_api.tls.cert_pem'"},
        {"{\"grpc_api\": {\"tls\": {\"cert\": \"x\"}}}", "'grpc_api.tls.cert'"},
        {"{\"grpc_api\": {\"tls\": true}}", "'grpc_api.tls'"},
        {"{\"grpc_api\": {\"reflection\": \"yes\"}}", "'grpc_api.reflection'"},
        {"{\"grpc_api\": {\"reflect\": true}}", "'grpc_api.reflect'"},
        {"{\"tls\": {\"enabled\": true}}", "'tls'"}, /* Only as a section of grpc_api. */
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
        cmocka_unit_test(test_v6_user_status_redis_block),
        cmocka_unit_test(test_v6_user_status_sentinel_and_cluster),
        cmocka_unit_test(test_v6_engine_block_is_reused_by_user_status),
        cmocka_unit_test(test_v6_engine_sentinel_is_reused_by_user_status),
        cmocka_unit_test(test_centrifugo_reuse_example_is_accepted_as_written),
        cmocka_unit_test(test_v5_engine_settings_are_reused_by_user_status),
        cmocka_unit_test(test_each_setting_in_both_spellings_is_refused),
        cmocka_unit_test(test_engine_as_string_and_object_is_refused),
        cmocka_unit_test(test_bad_v6_values_name_the_v6_key),
        cmocka_unit_test(test_reuse_from_engine_refuses_settings_of_its_own),
        cmocka_unit_test(test_v6_environment_variables),
        cmocka_unit_test(test_shared_variable_overrides_either_spelling),
        cmocka_unit_test(test_one_setting_in_two_environment_variables_is_refused),
        cmocka_unit_test(test_file_and_environment_in_two_spellings_is_refused),
        cmocka_unit_test(test_flag_with_reuse_from_engine_is_refused),
        cmocka_unit_test(test_query_deadline_batch_and_metrics_defaults),
        cmocka_unit_test(test_metrics_on_the_api_port_with_the_key),
        cmocka_unit_test(test_metrics_on_a_listener_of_their_own),
        cmocka_unit_test(test_bad_query_values_name_the_key),
        cmocka_unit_test(test_changes_defaults),
        cmocka_unit_test(test_changes_section_from_file_and_environment),
        cmocka_unit_test(test_bad_changes_values_name_the_key),
        cmocka_unit_test(test_notify_defaults_configure_no_destination),
        cmocka_unit_test(test_webhooks_and_centrifugo_from_file_and_environment),
        cmocka_unit_test(test_bad_notify_values_name_the_key),
        cmocka_unit_test(test_status_page_is_off_by_default_and_can_be_enabled),
        cmocka_unit_test(test_grpc_api_defaults),
        cmocka_unit_test(test_grpc_api_section_from_file_and_environment),
        cmocka_unit_test(test_bad_grpc_api_values_name_the_key),
        cmocka_unit_test(test_storage_defaults_to_buckets_sized_for_ten_million_users),
        cmocka_unit_test(test_bad_storage_values_name_the_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
