/* Implementation of configuration loading.
 *
 * Every key is described once, in the table below: its path, its type, where it lives in
 * us_config, its default and its bounds. Defaults, environment variables and flags arrive as text
 * and go through one parser (set_from_text); the JSON file goes through set_from_json, which checks
 * the JSON type first. Keys that are not in the table stop loading with an error naming them. */
#include "config.h"

#include "duration.h"
#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum key_type {
    KEY_STR,   /* char * */
    KEY_BOOL,  /* bool */
    KEY_INT,   /* int, within [min, max] */
    KEY_DUR,   /* int64_t milliseconds, within [min, max] */
    KEY_ADDR,  /* us_strlist: a string or an array of strings */
    KEY_PROPS, /* us_strlist of name/value pairs: a JSON object */
} key_type;

typedef struct key_desc {
    const char *path;
    key_type type;
    size_t offset;
    const char *def; /* Default as text, NULL for none. */
    int64_t min, max;
} key_desc;

#define F(field) offsetof(us_config, field)
#define DAY_MS (24LL * 3600 * 1000)

static const key_desc keys[] = {
    {"api_key", KEY_STR, F(api_key), "", 0, 0},
    {"api_insecure", KEY_BOOL, F(api_insecure), "false", 0, 0},
    {"address", KEY_STR, F(address), "0.0.0.0", 0, 0},
    {"port", KEY_INT, F(port), "8000", 1, 65535},
    {"log_level", KEY_STR, F(log_level), "info", 0, 0},
    {"engine", KEY_STR, F(engine), "memory", 0, 0},
    {"redis_address", KEY_ADDR, F(redis_address), NULL, 0, 0},
    {"user_status.enabled", KEY_BOOL, F(user_status.enabled), "true", 0, 0},
    {"user_status.redis_address", KEY_ADDR, F(user_status.redis_address), "127.0.0.1:6379", 0, 0},
    {"user_status.use_redis_from_engine", KEY_BOOL, F(user_status.use_redis_from_engine), "false",
     0, 0},
    {"user_status.redis_prefix", KEY_STR, F(user_status.redis_prefix), "userstatus", 0, 0},
    {"user_status.expire_interval", KEY_DUR, F(user_status.expire_interval_ms), "744h", 1000,
     3650 * DAY_MS},
    {"user_status.max_clock_skew", KEY_DUR, F(user_status.max_clock_skew_ms), "60s", 0, DAY_MS},
    {"user_status.redis_connect_timeout", KEY_DUR, F(user_status.redis_connect_timeout_ms), "1s",
     1, 3600 * 1000},
    {"user_status.redis_io_timeout", KEY_DUR, F(user_status.redis_io_timeout_ms), "4s", 1,
     3600 * 1000},
    {"user_status.redis_sentinel_address", KEY_ADDR, F(user_status.redis_sentinel_address), NULL,
     0, 0},
    {"user_status.redis_sentinel_master_name", KEY_STR, F(user_status.redis_sentinel_master_name),
     "", 0, 0},
    {"user_status.redis_cluster_address", KEY_ADDR, F(user_status.redis_cluster_address), NULL, 0,
     0},
    {"user_status.redis_user", KEY_STR, F(user_status.redis_user), "", 0, 0},
    {"user_status.redis_password", KEY_STR, F(user_status.redis_password), "", 0, 0},
    {"user_status.redis_sentinel_user", KEY_STR, F(user_status.redis_sentinel_user), "", 0, 0},
    {"user_status.redis_sentinel_password", KEY_STR, F(user_status.redis_sentinel_password), "", 0,
     0},
    {"user_status.redis_wait_replicas", KEY_INT, F(user_status.redis_wait_replicas), "0", 0, 16},
    {"user_status.redis_wait_timeout", KEY_DUR, F(user_status.redis_wait_timeout_ms), "1s", 1,
     60 * 1000},
    {"user_status.storage", KEY_STR, F(user_status.storage), "buckets", 0, 0},
    {"user_status.expected_users", KEY_INT, F(user_status.expected_users), "10000000", 1,
     2000000000},
    {"kafka.brokers", KEY_STR, F(kafka.brokers), "127.0.0.1:9092", 0, 0},
    {"kafka.topic", KEY_STR, F(kafka.topic), "user_status", 0, 0},
    {"kafka.dlq_topic", KEY_STR, F(kafka.dlq_topic), "user_status_dlq", 0, 0},
    {"kafka.consumer_group", KEY_STR, F(kafka.consumer_group), "userstatus-worker", 0, 0},
    {"kafka.partitions", KEY_INT, F(kafka.partitions), "16", 1, 100000},
    {"kafka.replication_factor", KEY_INT, F(kafka.replication_factor), "1", 1, 100},
    {"kafka.produce_timeout", KEY_DUR, F(kafka.produce_timeout_ms), "5s", 1, 3600 * 1000},
    {"kafka.properties", KEY_PROPS, F(kafka.properties), NULL, 0, 0},
    {"worker.batch_size", KEY_INT, F(worker.batch_size), "10000", 1, 1000000},
    {"worker.metrics_address", KEY_STR, F(worker.metrics_address), "127.0.0.1", 0, 0},
    {"worker.metrics_port", KEY_INT, F(worker.metrics_port), "9100", 0, 65535},
    {"worker.processes", KEY_INT, F(worker.processes), "1", 1, 256},
    {"query.max_body_size", KEY_INT, F(query.max_body_size), "1048576", 64, 1 << 30},
    {"query.max_users_per_request", KEY_INT, F(query.max_users_per_request), "1000", 1, 1000000},
    {"query.max_user_id_length", KEY_INT, F(query.max_user_id_length), "256", 1, US_USER_ID_MAX},
    {"query.threads", KEY_INT, F(query.threads), "0", 0, 1024},
    {"query.max_connections", KEY_INT, F(query.max_connections), "4096", 1, 1000000},
    {"query.connection_timeout", KEY_DUR, F(query.connection_timeout_ms), "30s", 1000,
     3600 * 1000},
    {"proxy.enabled", KEY_BOOL, F(proxy.enabled), "true", 0, 0},
    {"proxy.rpc_method_prefix", KEY_STR, F(proxy.rpc_method_prefix), "", 0, 0},
    {"proxy.online_interval", KEY_DUR, F(proxy.online_interval_ms), "25s", 1000, DAY_MS},
    {"proxy.active_debounce", KEY_DUR, F(proxy.active_debounce_ms), "1s", 0, 3600 * 1000},
    {"proxy.ack_timeout", KEY_DUR, F(proxy.ack_timeout_ms), "500ms", 10, 60 * 1000},
};
#define NKEYS (sizeof(keys) / sizeof(keys[0]))

/* Sections: objects whose members are keys "<section>.<member>". */
static const char *sections[] = {"user_status", "kafka", "worker", "query", "proxy"};

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static const key_desc *find_key(const char *path)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].path, path) == 0) return &keys[i];
    return NULL;
}

static void strlist_clear(us_strlist *l)
{
    for (size_t i = 0; i < l->count; i++) free(l->items[i]);
    free(l->items);
    l->items = NULL;
    l->count = 0;
}

static void strlist_push(us_strlist *l, const char *s, size_t len)
{
    l->items = realloc(l->items, (l->count + 1) * sizeof(char *));
    if (!l->items) abort();
    l->items[l->count] = strndup(s, len);
    if (!l->items[l->count]) abort();
    l->count++;
}

static void set_str(char **slot, const char *s)
{
    free(*slot);
    *slot = strdup(s);
    if (!*slot) abort();
}

static int check_range(const key_desc *k, int64_t v, char *err, size_t errlen)
{
    if (v < k->min || v > k->max) {
        if (k->type == KEY_DUR)
            return fail(err, errlen, "config key '%s': %lldms is out of range [%lldms, %lldms]",
                        k->path, (long long)v, (long long)k->min, (long long)k->max);
        return fail(err, errlen, "config key '%s': %lld is out of range [%lld, %lld]", k->path,
                    (long long)v, (long long)k->min, (long long)k->max);
    }
    return 0;
}

static int set_int(us_config *cfg, const key_desc *k, int64_t v, char *err, size_t errlen)
{
    if (check_range(k, v, err, errlen) != 0) return -1;
    if (k->type == KEY_DUR)
        *(int64_t *)((char *)cfg + k->offset) = v;
    else
        *(int *)((char *)cfg + k->offset) = (int)v;
    return 0;
}

static int set_duration_text(us_config *cfg, const key_desc *k, const char *text, char *err,
                             size_t errlen)
{
    int64_t ms;
    if (us_duration_parse(text, &ms) != 0)
        return fail(err, errlen,
                    "config key '%s': '%s' is not a duration (examples: \"30s\", \"1h30m\")",
                    k->path, text);
    return set_int(cfg, k, ms, err, errlen);
}

/* Parses kafka.properties from a JSON object into name/value pairs. */
static int set_props_json(us_config *cfg, const key_desc *k, json_t *obj, char *err, size_t errlen)
{
    us_strlist *l = (us_strlist *)((char *)cfg + k->offset);
    if (!json_is_object(obj))
        return fail(err, errlen, "config key '%s': must be an object of librdkafka properties",
                    k->path);
    strlist_clear(l);
    const char *name;
    json_t *v;
    json_object_foreach(obj, name, v)
    {
        char buf[64];
        const char *text;
        if (json_is_string(v)) {
            text = json_string_value(v);
        } else if (json_is_integer(v)) {
            snprintf(buf, sizeof(buf), "%lld", (long long)json_integer_value(v));
            text = buf;
        } else if (json_is_boolean(v)) {
            text = json_is_true(v) ? "true" : "false";
        } else {
            return fail(err, errlen,
                        "config key '%s.%s': must be a string, an integer or a boolean", k->path,
                        name);
        }
        strlist_push(l, name, strlen(name));
        strlist_push(l, text, strlen(text));
    }
    return 0;
}

static int set_from_text(us_config *cfg, const key_desc *k, const char *text, char *err,
                         size_t errlen)
{
    void *slot = (char *)cfg + k->offset;
    switch (k->type) {
    case KEY_STR:
        set_str((char **)slot, text);
        return 0;
    case KEY_BOOL:
        if (strcmp(text, "true") == 0 || strcmp(text, "1") == 0) {
            *(bool *)slot = true;
        } else if (strcmp(text, "false") == 0 || strcmp(text, "0") == 0) {
            *(bool *)slot = false;
        } else {
            return fail(err, errlen, "config key '%s': '%s' is not a boolean (true or false)",
                        k->path, text);
        }
        return 0;
    case KEY_INT: {
        char *end;
        errno = 0;
        long long v = strtoll(text, &end, 10);
        if (errno || end == text || *end != '\0')
            return fail(err, errlen, "config key '%s': '%s' is not an integer", k->path, text);
        return set_int(cfg, k, v, err, errlen);
    }
    case KEY_DUR:
        return set_duration_text(cfg, k, text, err, errlen);
    case KEY_ADDR: {
        us_strlist *l = slot;
        strlist_clear(l);
        const char *p = text;
        while (*p) {
            const char *comma = strchr(p, ',');
            size_t len = comma ? (size_t)(comma - p) : strlen(p);
            while (len && isspace((unsigned char)*p)) p++, len--;
            while (len && isspace((unsigned char)p[len - 1])) len--;
            if (len == 0)
                return fail(err, errlen, "config key '%s': empty address in '%s'", k->path,
                            text);
            strlist_push(l, p, len);
            if (!comma) break;
            p = comma + 1;
        }
        return 0;
    }
    case KEY_PROPS: {
        json_error_t jerr;
        json_t *obj = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
        if (!obj)
            return fail(err, errlen, "config key '%s': not a JSON object: %s", k->path, jerr.text);
        int rc = set_props_json(cfg, k, obj, err, errlen);
        json_decref(obj);
        return rc;
    }
    }
    return fail(err, errlen, "config key '%s': unhandled type", k->path);
}

static int set_from_json(us_config *cfg, const key_desc *k, json_t *v, char *err, size_t errlen)
{
    void *slot = (char *)cfg + k->offset;
    switch (k->type) {
    case KEY_STR:
        if (!json_is_string(v))
            return fail(err, errlen, "config key '%s': must be a string", k->path);
        set_str((char **)slot, json_string_value(v));
        return 0;
    case KEY_BOOL:
        if (!json_is_boolean(v))
            return fail(err, errlen, "config key '%s': must be true or false", k->path);
        *(bool *)slot = json_is_true(v);
        return 0;
    case KEY_INT:
        if (!json_is_integer(v))
            return fail(err, errlen, "config key '%s': must be an integer", k->path);
        return set_int(cfg, k, json_integer_value(v), err, errlen);
    case KEY_DUR:
        if (!json_is_string(v))
            return fail(err, errlen, "config key '%s': must be a duration string such as \"30s\"",
                        k->path);
        return set_duration_text(cfg, k, json_string_value(v), err, errlen);
    case KEY_ADDR: {
        us_strlist *l = slot;
        if (json_is_string(v)) {
            if (json_string_length(v) == 0)
                return fail(err, errlen, "config key '%s': empty address", k->path);
            strlist_clear(l);
            strlist_push(l, json_string_value(v), json_string_length(v));
            return 0;
        }
        if (!json_is_array(v) || json_array_size(v) == 0)
            return fail(err, errlen,
                        "config key '%s': must be an address string or a non-empty array of them",
                        k->path);
        strlist_clear(l);
        size_t i;
        json_t *item;
        json_array_foreach(v, i, item)
        {
            if (!json_is_string(item) || json_string_length(item) == 0)
                return fail(err, errlen, "config key '%s[%zu]': must be a non-empty string",
                            k->path, i);
            strlist_push(l, json_string_value(item), json_string_length(item));
        }
        return 0;
    }
    case KEY_PROPS:
        return set_props_json(cfg, k, v, err, errlen);
    }
    return fail(err, errlen, "config key '%s': unhandled type", k->path);
}

static int load_object(us_config *cfg, json_t *obj, const char *section, char *err, size_t errlen)
{
    const char *name;
    json_t *v;
    json_object_foreach(obj, name, v)
    {
        char path[256];
        snprintf(path, sizeof(path), "%s%s%s", section ? section : "", section ? "." : "", name);
        const key_desc *k = find_key(path);
        if (k) {
            if (set_from_json(cfg, k, v, err, errlen) != 0) return -1;
            continue;
        }
        int is_section = 0;
        for (size_t i = 0; !section && i < sizeof(sections) / sizeof(sections[0]); i++)
            is_section |= strcmp(name, sections[i]) == 0;
        if (!is_section) return fail(err, errlen, "unknown config key '%s'", path);
        if (!json_is_object(v))
            return fail(err, errlen, "config key '%s': must be an object", path);
        if (load_object(cfg, v, name, err, errlen) != 0) return -1;
    }
    return 0;
}

/* "user_status.redis_address" -> "USERSTATUS_USER_STATUS_REDIS_ADDRESS". */
static void env_name(const char *path, char *out, size_t outlen)
{
    size_t n = (size_t)snprintf(out, outlen, "USERSTATUS_");
    for (const char *p = path; *p && n + 1 < outlen; p++)
        out[n++] = *p == '.' ? '_' : (char)toupper((unsigned char)*p);
    out[n] = '\0';
}

static const char *env_lookup(char **envp, const char *name)
{
    size_t len = strlen(name);
    for (char **e = envp; e && *e; e++)
        if (strncmp(*e, name, len) == 0 && (*e)[len] == '=') return *e + len + 1;
    return NULL;
}

/* Environment variables that look like ours but name no key are usually typos: warn about them.
 * (Not an error: the project's scripts use a few USERSTATUS_* variables of their own.) */
static void warn_unknown_env(char **envp)
{
    for (char **e = envp; e && *e; e++) {
        if (strncmp(*e, "USERSTATUS_", 11) != 0) continue;
        int known = 0;
        for (size_t i = 0; i < NKEYS && !known; i++) {
            char name[128];
            env_name(keys[i].path, name, sizeof(name));
            size_t len = strlen(name);
            known = strncmp(*e, name, len) == 0 && (*e)[len] == '=';
        }
        if (!known) {
            const char *eq = strchr(*e, '=');
            us_warn("environment variable '%.*s' names no config key; ignored",
                    (int)(eq ? eq - *e : (long)strlen(*e)), *e);
        }
    }
}

int us_config_set(us_config *cfg, const char *path, const char *text, char *err, size_t errlen)
{
    const key_desc *k = find_key(path);
    if (!k) return fail(err, errlen, "unknown config key '%s'", path);
    return set_from_text(cfg, k, text, err, errlen);
}

int us_config_load(us_config *cfg, const char *path, char **envp,
                   const us_config_override *overrides, size_t noverrides, char *err,
                   size_t errlen)
{
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < NKEYS; i++)
        if (keys[i].def && set_from_text(cfg, &keys[i], keys[i].def, err, errlen) != 0) return -1;

    if (path) {
        json_error_t jerr;
        json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
        if (!root)
            return fail(err, errlen, "config file '%s': %s (line %d, column %d)", path, jerr.text,
                        jerr.line, jerr.column);
        int rc = json_is_object(root)
                     ? load_object(cfg, root, NULL, err, errlen)
                     : fail(err, errlen, "config file '%s': top level must be an object", path);
        json_decref(root);
        if (rc != 0) return -1;
    }

    warn_unknown_env(envp);
    for (size_t i = 0; i < NKEYS; i++) {
        char name[128];
        env_name(keys[i].path, name, sizeof(name));
        const char *v = env_lookup(envp, name);
        if (v && set_from_text(cfg, &keys[i], v, err, errlen) != 0) return -1;
    }

    for (size_t i = 0; i < noverrides; i++)
        if (us_config_set(cfg, overrides[i].path, overrides[i].value, err, errlen) != 0) return -1;

    /* Cross-key rules. */
    if (cfg->user_status.use_redis_from_engine && cfg->redis_address.count == 0)
        return fail(err, errlen,
                    "config key 'user_status.use_redis_from_engine': true, but the top-level "
                    "'redis_address' is not set");
    if (strcmp(cfg->log_level, "debug") && strcmp(cfg->log_level, "info") &&
        strcmp(cfg->log_level, "warn") && strcmp(cfg->log_level, "error"))
        return fail(err, errlen, "config key 'log_level': '%s' is not debug, info, warn or error",
                    cfg->log_level);
    if (strcmp(cfg->engine, "memory") && strcmp(cfg->engine, "redis"))
        return fail(err, errlen, "config key 'engine': '%s' is not memory or redis", cfg->engine);
    if (cfg->kafka.topic[0] == '\0' || cfg->kafka.dlq_topic[0] == '\0' ||
        cfg->kafka.consumer_group[0] == '\0' || cfg->kafka.brokers[0] == '\0')
        return fail(err, errlen,
                    "config keys 'kafka.brokers', 'kafka.topic', 'kafka.dlq_topic' and "
                    "'kafka.consumer_group' must not be empty");
    int topologies = (cfg->user_status.redis_sentinel_address.count > 0) +
                     (cfg->user_status.redis_cluster_address.count > 0);
    if (topologies > 1)
        return fail(err, errlen,
                    "config keys 'user_status.redis_sentinel_address' and "
                    "'user_status.redis_cluster_address': set at most one of them");
    if (cfg->user_status.redis_sentinel_address.count > 0 &&
        cfg->user_status.redis_sentinel_master_name[0] == '\0')
        return fail(err, errlen,
                    "config key 'user_status.redis_sentinel_master_name': required with "
                    "'user_status.redis_sentinel_address'");
    if (strcmp(cfg->user_status.storage, "buckets") && strcmp(cfg->user_status.storage, "per_user"))
        return fail(err, errlen, "config key 'user_status.storage': '%s' is not buckets or per_user",
                    cfg->user_status.storage);
    if (strcmp(cfg->kafka.topic, cfg->kafka.dlq_topic) == 0)
        return fail(err, errlen, "config key 'kafka.dlq_topic': must differ from 'kafka.topic'");
    return 0;
}

const us_strlist *us_config_redis_addresses(const us_config *cfg)
{
    return cfg->user_status.use_redis_from_engine ? &cfg->redis_address
                                                  : &cfg->user_status.redis_address;
}

void us_config_free(us_config *cfg)
{
    if (!cfg) return;
    for (size_t i = 0; i < NKEYS; i++) {
        void *slot = (char *)cfg + keys[i].offset;
        if (keys[i].type == KEY_STR) {
            free(*(char **)slot);
            *(char **)slot = NULL;
        } else if (keys[i].type == KEY_ADDR || keys[i].type == KEY_PROPS) {
            strlist_clear(slot);
        }
    }
}
