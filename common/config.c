/* Implementation of configuration loading.
 *
 * Every key is described once, in the table below: its path, its type, where it lives in
 * us_config, its default and its bounds. Defaults, environment variables and flags arrive as text
 * and go through one parser (set_from_text); the JSON file goes through set_from_json, which checks
 * the JSON type first. Keys that are not in the table stop loading with an error naming them.
 *
 * Some settings have a second spelling, Centrifugo v6's (user_status.redis.address for v5's
 * user_status.redis_address, engine.redis.* for the top-level redis_*): the alias table maps it to
 * the key of the main table. While loading, every setting remembers which spelling the file and the
 * environment used, so that one setting given in two spellings is refused instead of one of them
 * silently winning. Objects in the file are sections when some key's path continues below them. */
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
    KEY_OBJS,  /* us_strlist of the fields of each object in turn: a JSON array of objects whose
                * fields object_fields[] names */
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
#define REDIS_DB_MAX 65535 /* As in redis:// addresses; Redis itself has 16 unless configured. */

static const key_desc keys[] = {
    {"api_key", KEY_STR, F(api_key), "", 0, 0},
    {"api_insecure", KEY_BOOL, F(api_insecure), "false", 0, 0},
    {"address", KEY_STR, F(address), "0.0.0.0", 0, 0},
    {"port", KEY_INT, F(port), "8000", 1, 65535},
    {"log_level", KEY_STR, F(log_level), "info", 0, 0},
    {"engine", KEY_STR, F(engine), "memory", 0, 0},
    {"redis_address", KEY_ADDR, F(redis_address), NULL, 0, 0},
    {"redis_prefix", KEY_STR, F(redis_prefix), "centrifugo", 0, 0},
    {"redis_db", KEY_INT, F(redis_db), "0", 0, REDIS_DB_MAX},
    {"redis_user", KEY_STR, F(redis_user), "", 0, 0},
    {"redis_password", KEY_STR, F(redis_password), "", 0, 0},
    {"redis_connect_timeout", KEY_DUR, F(redis_connect_timeout_ms), "1s", 1, 3600 * 1000},
    {"redis_io_timeout", KEY_DUR, F(redis_io_timeout_ms), "4s", 1, 3600 * 1000},
    {"redis_sentinel_address", KEY_ADDR, F(redis_sentinel_address), NULL, 0, 0},
    {"redis_sentinel_master_name", KEY_STR, F(redis_sentinel_master_name), "", 0, 0},
    {"redis_sentinel_user", KEY_STR, F(redis_sentinel_user), "", 0, 0},
    {"redis_sentinel_password", KEY_STR, F(redis_sentinel_password), "", 0, 0},
    {"redis_cluster_address", KEY_ADDR, F(redis_cluster_address), NULL, 0, 0},
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
    {"user_status.redis_db", KEY_INT, F(user_status.redis_db), "0", 0, REDIS_DB_MAX},
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
    {"worker.batch_size", KEY_INT, F(worker.batch_size), "5000", 1, 1000000},
    {"worker.metrics_address", KEY_STR, F(worker.metrics_address), "127.0.0.1", 0, 0},
    {"worker.metrics_port", KEY_INT, F(worker.metrics_port), "9100", 0, 65535},
    {"worker.processes", KEY_INT, F(worker.processes), "1", 1, 256},
    {"query.max_body_size", KEY_INT, F(query.max_body_size), "1048576", 64, 1 << 30},
    {"query.max_header_size", KEY_INT, F(query.max_header_size), "8192", 1024, 1 << 20},
    {"query.max_users_per_request", KEY_INT, F(query.max_users_per_request), "1000", 1, 1000000},
    {"query.max_user_id_length", KEY_INT, F(query.max_user_id_length), "256", 1, US_USER_ID_MAX},
    {"query.threads", KEY_INT, F(query.threads), "0", 0, 1024},
    {"query.max_connections", KEY_INT, F(query.max_connections), "4096", 1, 1000000},
    {"query.connection_timeout", KEY_DUR, F(query.connection_timeout_ms), "30s", 1000,
     3600 * 1000},
    {"query.request_timeout", KEY_DUR, F(query.request_timeout_ms), "10s", 10, 600 * 1000},
    {"query.max_batch_commands", KEY_INT, F(query.max_batch_commands), "1000", 1, 1000000},
    {"query.metrics_address", KEY_STR, F(query.metrics_address), "127.0.0.1", 0, 0},
    {"query.metrics_port", KEY_INT, F(query.metrics_port), "0", 0, 65535},
    {"query.metrics_require_key", KEY_BOOL, F(query.metrics_require_key), "false", 0, 0},
    {"query.status_page", KEY_BOOL, F(query.status_page), "false", 0, 0},
    {"proxy.enabled", KEY_BOOL, F(proxy.enabled), "true", 0, 0},
    {"proxy.rpc_method_prefix", KEY_STR, F(proxy.rpc_method_prefix), "", 0, 0},
    {"proxy.online_interval", KEY_DUR, F(proxy.online_interval_ms), "25s", 1000, DAY_MS},
    {"proxy.active_debounce", KEY_DUR, F(proxy.active_debounce_ms), "1s", 0, 3600 * 1000},
    {"proxy.ack_timeout", KEY_DUR, F(proxy.ack_timeout_ms), "500ms", 10, 60 * 1000},
    {"changes.enabled", KEY_BOOL, F(changes.enabled), "true", 0, 0},
    {"changes.topic", KEY_STR, F(changes.topic), "user_status_changes", 0, 0},
    {"changes.offline_after", KEY_DUR, F(changes.offline_after_ms), "60s", 1000, DAY_MS},
    {"changes.away_after", KEY_DUR, F(changes.away_after_ms), "5m", 1000, DAY_MS},
    {"changes.watch_max_streams", KEY_INT, F(changes.watch_max_streams), "10000", 1, 1000000},
    {"grpc_api.enabled", KEY_BOOL, F(grpc_api.enabled), "false", 0, 0},
    {"grpc_api.address", KEY_STR, F(grpc_api.address), "", 0, 0},
    {"grpc_api.port", KEY_INT, F(grpc_api.port), "10000", 1, 65535},
    {"grpc_api.key", KEY_STR, F(grpc_api.key), "", 0, 0},
    {"grpc_api.error_mode", KEY_STR, F(grpc_api.error_mode), "", 0, 0},
    {"grpc_api.max_receive_message_size", KEY_INT, F(grpc_api.max_receive_message_size),
     "4194304", 1024, 1 << 30},
    {"grpc_api.reflection", KEY_BOOL, F(grpc_api.reflection), "false", 0, 0},
    {"grpc_api.tls.enabled", KEY_BOOL, F(grpc_api.tls.enabled), "false", 0, 0},
    {"grpc_api.tls.cert_pem", KEY_STR, F(grpc_api.tls.cert_pem), "", 0, 0},
    {"grpc_api.tls.key_pem", KEY_STR, F(grpc_api.tls.key_pem), "", 0, 0},
    {"changes.webhooks", KEY_OBJS, F(changes.webhooks), NULL, 0, 0},
    {"changes.centrifugo.api_url", KEY_STR, F(changes.centrifugo_api_url), "", 0, 0},
    {"changes.centrifugo.api_key", KEY_STR, F(changes.centrifugo_api_key), "", 0, 0},
    {"changes.centrifugo.channel_prefix", KEY_STR, F(changes.centrifugo_channel_prefix), "status:",
     0, 0},
    {"changes.centrifugo.consumer_group", KEY_STR, F(changes.centrifugo_consumer_group), "", 0, 0},
    {"changes.notify_consumer_group", KEY_STR, F(changes.notify_consumer_group),
     "userstatus-notify", 0, 0},
    {"changes.notify_timeout", KEY_DUR, F(changes.notify_timeout_ms), "10s", 100, 600 * 1000},
    {"changes.notify_retry_max", KEY_DUR, F(changes.notify_retry_max_ms), "30s", 100, 3600 * 1000},
    {"changes.notify_batch_size", KEY_INT, F(changes.notify_batch_size), "100", 1, 10000},
    {"changes.notify_metrics_address", KEY_STR, F(changes.notify_metrics_address), "127.0.0.1", 0,
     0},
    {"changes.notify_metrics_port", KEY_INT, F(changes.notify_metrics_port), "9200", 0, 65535},
};
#define NKEYS (sizeof(keys) / sizeof(keys[0]))

/* Centrifugo v6 spellings of keys in the table: the same setting, type and bounds. */
typedef struct key_alias {
    const char *path;      /* The v6 spelling, e.g. "user_status.redis.address". */
    const char *canonical; /* The table's (v5) spelling, e.g. "user_status.redis_address". */
} key_alias;

static const key_alias aliases[] = {
    {"engine.type", "engine"},
    {"engine.redis.address", "redis_address"},
    {"engine.redis.prefix", "redis_prefix"},
    {"engine.redis.db", "redis_db"},
    {"engine.redis.user", "redis_user"},
    {"engine.redis.password", "redis_password"},
    {"engine.redis.connect_timeout", "redis_connect_timeout"},
    {"engine.redis.io_timeout", "redis_io_timeout"},
    {"engine.redis.sentinel_address", "redis_sentinel_address"},
    {"engine.redis.sentinel_master_name", "redis_sentinel_master_name"},
    {"engine.redis.sentinel_user", "redis_sentinel_user"},
    {"engine.redis.sentinel_password", "redis_sentinel_password"},
    {"engine.redis.cluster_address", "redis_cluster_address"},
    {"user_status.redis.address", "user_status.redis_address"},
    {"user_status.redis.prefix", "user_status.redis_prefix"},
    {"user_status.redis.db", "user_status.redis_db"},
    {"user_status.redis.user", "user_status.redis_user"},
    {"user_status.redis.password", "user_status.redis_password"},
    {"user_status.redis.connect_timeout", "user_status.redis_connect_timeout"},
    {"user_status.redis.io_timeout", "user_status.redis_io_timeout"},
    {"user_status.redis.sentinel_address", "user_status.redis_sentinel_address"},
    {"user_status.redis.sentinel_master_name", "user_status.redis_sentinel_master_name"},
    {"user_status.redis.sentinel_user", "user_status.redis_sentinel_user"},
    {"user_status.redis.sentinel_password", "user_status.redis_sentinel_password"},
    {"user_status.redis.cluster_address", "user_status.redis_cluster_address"},
    {"user_status.redis.reuse_from_engine", "user_status.use_redis_from_engine"},
};
#define NALIASES (sizeof(aliases) / sizeof(aliases[0]))

/* The fields of the objects of each KEY_OBJS key, in the order us_config keeps them: every object
 * of the array becomes nfields strings of the key's us_strlist, "" for an optional field not
 * given. The first nrequired fields must be non-empty strings; unknown fields are refused. */
#define OBJECT_FIELDS_MAX 4
typedef struct object_fields {
    const char *path;
    const char *names[OBJECT_FIELDS_MAX];
    size_t nfields;
    size_t nrequired;
} object_fields;

static const object_fields objects[] = {
    {"changes.webhooks", {"url", "secret", "consumer_group"}, US_WEBHOOK_FIELDS, 2},
};

/* User status's Redis connection settings, each with the engine's setting that
 * use_redis_from_engine puts in its place. (The key prefix is not among them: user status keeps
 * its own.) */
static const struct {
    const char *user_status, *engine;
} engine_redis_map[] = {
    {"user_status.redis_address", "redis_address"},
    {"user_status.redis_db", "redis_db"},
    {"user_status.redis_user", "redis_user"},
    {"user_status.redis_password", "redis_password"},
    {"user_status.redis_connect_timeout", "redis_connect_timeout"},
    {"user_status.redis_io_timeout", "redis_io_timeout"},
    {"user_status.redis_sentinel_address", "redis_sentinel_address"},
    {"user_status.redis_sentinel_master_name", "redis_sentinel_master_name"},
    {"user_status.redis_sentinel_user", "redis_sentinel_user"},
    {"user_status.redis_sentinel_password", "redis_sentinel_password"},
    {"user_status.redis_cluster_address", "redis_cluster_address"},
};

/* The engine's Redis when engine is "redis" and no address is given: Centrifugo's default. */
#define ENGINE_REDIS_DEFAULT_ADDRESS "127.0.0.1:6379"

/* Where each setting came from while loading, for the checks that span spellings and sources. */
typedef struct origin {
    const char *file; /* Spelling the file used (a table or alias path); NULL: not in the file. */
    const char *env;  /* Spelling whose environment variable set it; NULL: none. */
    bool flag;        /* Set by a command-line override. */
} origin;

typedef struct load_state {
    origin origins[NKEYS]; /* Indexed like keys[]. */
} load_state;

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

/* The key of the table that path names in either spelling, or NULL. *spelling (may be NULL) is
 * set to a string of the tables equal to path, which outlives the load. */
static const key_desc *resolve_key(const char *path, const char **spelling)
{
    const key_desc *k = find_key(path);
    if (k) {
        if (spelling) *spelling = k->path;
        return k;
    }
    for (size_t i = 0; i < NALIASES; i++) {
        if (strcmp(aliases[i].path, path) != 0) continue;
        if (spelling) *spelling = aliases[i].path;
        return find_key(aliases[i].canonical);
    }
    return NULL;
}

/* True when some key's path (in either spelling) continues below path: "engine.redis" is a
 * section because "engine.redis.address" is a key. */
static bool is_section(const char *path)
{
    size_t len = strlen(path);
    for (size_t i = 0; i < NKEYS + NALIASES; i++) {
        const char *p = i < NKEYS ? keys[i].path : aliases[i - NKEYS].path;
        if (strncmp(p, path, len) == 0 && p[len] == '.') return true;
    }
    return false;
}

static origin *origin_of(load_state *st, const key_desc *k)
{
    return &st->origins[k - keys];
}

/* The spelling under which the setting was given (file, environment, or the table's for a flag),
 * or NULL when it was not given at all. */
static const char *given_as(load_state *st, const key_desc *k)
{
    const origin *o = origin_of(st, k);
    if (o->flag) return k->path;
    if (o->env) return o->env;
    return o->file;
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

/* The fields of KEY_OBJS key k (found by its slot: k may carry another spelling), or NULL. */
static const object_fields *object_fields_of(const key_desc *k)
{
    for (size_t i = 0; i < sizeof(objects) / sizeof(objects[0]); i++)
        if (find_key(objects[i].path)->offset == k->offset) return &objects[i];
    return NULL;
}

/* Parses a KEY_OBJS value, a JSON array of objects, into the fields of each object in turn.
 * Errors name the element and the field: "changes.webhooks[1].url". */
static int set_objs_json(us_config *cfg, const key_desc *k, json_t *arr, char *err, size_t errlen)
{
    us_strlist *l = (us_strlist *)((char *)cfg + k->offset);
    const object_fields *of = object_fields_of(k);
    if (!of) return fail(err, errlen, "config key '%s': no fields described", k->path);
    if (!json_is_array(arr))
        return fail(err, errlen, "config key '%s': must be an array of objects", k->path);
    strlist_clear(l);
    size_t i;
    json_t *obj;
    json_array_foreach(arr, i, obj)
    {
        if (!json_is_object(obj))
            return fail(err, errlen, "config key '%s[%zu]': must be an object", k->path, i);
        const char *name;
        json_t *v;
        json_object_foreach(obj, name, v)
        {
            size_t f = 0;
            while (f < of->nfields && strcmp(of->names[f], name) != 0) f++;
            if (f == of->nfields)
                return fail(err, errlen, "unknown config key '%s[%zu].%s'", k->path, i, name);
            if (!json_is_string(v))
                return fail(err, errlen, "config key '%s[%zu].%s': must be a string", k->path, i,
                            name);
        }
        for (size_t f = 0; f < of->nfields; f++) {
            json_t *given = json_object_get(obj, of->names[f]);
            const char *text = given ? json_string_value(given) : "";
            if (f < of->nrequired && text[0] == '\0')
                return fail(err, errlen, "config key '%s[%zu].%s': required, a non-empty string",
                            k->path, i, of->names[f]);
            strlist_push(l, text, strlen(text));
        }
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
    case KEY_OBJS: {
        json_error_t jerr;
        json_t *arr = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
        if (!arr)
            return fail(err, errlen, "config key '%s': not a JSON array: %s", k->path, jerr.text);
        int rc = set_objs_json(cfg, k, arr, err, errlen);
        json_decref(arr);
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
    case KEY_OBJS:
        return set_objs_json(cfg, k, v, err, errlen);
    }
    return fail(err, errlen, "config key '%s': unhandled type", k->path);
}

/* Sets k from the file under the given spelling; refuses a setting the file already gave in its
 * other spelling. (The same spelling twice is a duplicate key, which jansson refuses.) */
static int set_from_file(us_config *cfg, load_state *st, const key_desc *k, const char *spelling,
                         json_t *v, char *err, size_t errlen)
{
    origin *o = origin_of(st, k);
    if (o->file)
        return fail(err, errlen,
                    "config keys '%s' and '%s' are the same setting (Centrifugo v5 and v6 "
                    "spellings): give only one",
                    o->file, spelling);
    o->file = spelling;
    key_desc as_given = *k; /* Errors name the key as the file spells it. */
    as_given.path = spelling;
    return set_from_json(cfg, &as_given, v, err, errlen);
}

static int load_object(us_config *cfg, load_state *st, json_t *obj, const char *section,
                       char *err, size_t errlen)
{
    const char *name;
    json_t *v;
    json_object_foreach(obj, name, v)
    {
        char path[256];
        snprintf(path, sizeof(path), "%s%s%s", section ? section : "", section ? "." : "", name);
        const char *spelling;
        const key_desc *k = resolve_key(path, &spelling);
        /* "engine" is a key (v5: a string) and a section (v6: an object). */
        bool section_here = json_is_object(v) && is_section(path);
        if (k && !(section_here && k->type != KEY_PROPS)) {
            if (set_from_file(cfg, st, k, spelling, v, err, errlen) != 0) return -1;
            continue;
        }
        if (section_here) {
            if (load_object(cfg, st, v, path, err, errlen) != 0) return -1;
            continue;
        }
        if (is_section(path)) return fail(err, errlen, "config key '%s': must be an object", path);
        return fail(err, errlen, "unknown config key '%s'", path);
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
        for (size_t i = 0; i < NKEYS + NALIASES && !known; i++) {
            char name[128];
            env_name(i < NKEYS ? keys[i].path : aliases[i - NKEYS].path, name, sizeof(name));
            size_t len = strlen(name);
            known = strncmp(*e, name, len) == 0 && (*e)[len] == '=';
        }
        if (!known) {
            const char *eq = strchr(*e, '=');
            char shown[US_LOG_ESCAPE_CAP];
            us_warn("environment variable '%s' names no config key; ignored",
                    us_log_escape(*e, eq ? (size_t)(eq - *e) : strlen(*e), shown,
                                  sizeof(shown)));
        }
    }
}

/* Applies the environment variable of key k, if any. Each spelling of k has a variable; several
 * spellings may share one (USERSTATUS_USER_STATUS_REDIS_ADDRESS is the variable of
 * user_status.redis_address and of user_status.redis.address), which then simply sets the
 * setting. Two different variables of one setting are refused, and so is a variable of another
 * spelling than the one the file used. */
static int load_env_key(us_config *cfg, load_state *st, const key_desc *k, char **envp, char *err,
                        size_t errlen)
{
    const char *spelling = NULL, *value = NULL;
    char var[128] = "";
    for (size_t i = 0; i <= NALIASES; i++) {
        const char *s = i == 0 ? k->path : aliases[i - 1].path;
        if (i > 0 && strcmp(aliases[i - 1].canonical, k->path) != 0) continue;
        char name[128];
        env_name(s, name, sizeof(name));
        const char *v = env_lookup(envp, name);
        if (!v || strcmp(name, var) == 0) continue;
        if (spelling)
            return fail(err, errlen,
                        "environment variables %s (config key '%s') and %s ('%s') are the same "
                        "setting: set only one",
                        var, spelling, name, s);
        spelling = s;
        value = v;
        snprintf(var, sizeof(var), "%s", name);
    }
    if (!spelling) return 0;
    origin *o = origin_of(st, k);
    if (o->file) {
        char file_var[128];
        env_name(o->file, file_var, sizeof(file_var));
        if (strcmp(file_var, var) != 0)
            return fail(err, errlen,
                        "config key '%s' in the file and environment variable %s (config key "
                        "'%s') are the same setting in two spellings: use one spelling",
                        o->file, var, spelling);
        spelling = o->file; /* A variable both spellings share: keep naming the file's. */
    }
    o->env = spelling;
    key_desc as_given = *k;
    as_given.path = spelling;
    return set_from_text(cfg, &as_given, value, err, errlen);
}

int us_config_set(us_config *cfg, const char *path, const char *text, char *err, size_t errlen)
{
    const key_desc *k = resolve_key(path, NULL);
    if (!k) return fail(err, errlen, "unknown config key '%s'", path);
    return set_from_text(cfg, k, text, err, errlen);
}

/* Copies the value of key src into key dst, which has the same type. */
static void copy_value(us_config *cfg, const key_desc *dst, const key_desc *src)
{
    void *d = (char *)cfg + dst->offset, *s = (char *)cfg + src->offset;
    switch (dst->type) {
    case KEY_STR:
        set_str(d, *(char **)s);
        break;
    case KEY_BOOL:
        *(bool *)d = *(bool *)s;
        break;
    case KEY_INT:
        *(int *)d = *(int *)s;
        break;
    case KEY_DUR:
        *(int64_t *)d = *(int64_t *)s;
        break;
    case KEY_ADDR:
    case KEY_PROPS:
    case KEY_OBJS: {
        us_strlist *dl = d;
        const us_strlist *sl = s;
        strlist_clear(dl);
        for (size_t i = 0; i < sl->count; i++) strlist_push(dl, sl->items[i], strlen(sl->items[i]));
        break;
    }
    }
}

/* The name to show for key path in an error: the spelling the user gave; for a key not given, the
 * spelling of the same family as the key like (NULL: the table's), so that an error about a v6
 * block names v6 keys only. */
static const char *shown_name(load_state *st, const char *path, const char *like)
{
    const key_desc *k = find_key(path);
    const char *g = given_as(st, k);
    if (g) return g;
    const char *like_given = like ? given_as(st, find_key(like)) : NULL;
    if (like_given && strcmp(like_given, like) != 0)
        for (size_t i = 0; i < NALIASES; i++)
            if (strcmp(aliases[i].canonical, path) == 0) return aliases[i].path;
    return k->path;
}

static const us_strlist *addr_value(const us_config *cfg, const char *path)
{
    return (const us_strlist *)((const char *)cfg + find_key(path)->offset);
}

/* Checks one group of Redis settings, the engine's (prefix "") or user status's ("user_status."):
 * Sentinel or Cluster, not both; a master name with Sentinel; database 0 in Cluster. */
static int check_redis_group(const us_config *cfg, load_state *st, const char *prefix, char *err,
                             size_t errlen)
{
    char sentinel[64], cluster[64], master[64], db[64];
    snprintf(sentinel, sizeof(sentinel), "%sredis_sentinel_address", prefix);
    snprintf(cluster, sizeof(cluster), "%sredis_cluster_address", prefix);
    snprintf(master, sizeof(master), "%sredis_sentinel_master_name", prefix);
    snprintf(db, sizeof(db), "%sredis_db", prefix);
    bool has_sentinel = addr_value(cfg, sentinel)->count > 0;
    bool has_cluster = addr_value(cfg, cluster)->count > 0;
    if (has_sentinel && has_cluster)
        return fail(err, errlen, "config keys '%s' and '%s': set at most one of them",
                    shown_name(st, sentinel, NULL), shown_name(st, cluster, NULL));
    const key_desc *mk = find_key(master);
    if (has_sentinel && (*(char **)((const char *)cfg + mk->offset))[0] == '\0')
        return fail(err, errlen, "config key '%s': required with '%s'",
                    shown_name(st, master, sentinel), shown_name(st, sentinel, NULL));
    const key_desc *dk = find_key(db);
    int dbv = *(const int *)((const char *)cfg + dk->offset);
    if (has_cluster && dbv != 0)
        return fail(err, errlen, "config key '%s': Redis Cluster has only database 0, not %d",
                    shown_name(st, db, NULL), dbv);
    return 0;
}

/* use_redis_from_engine: user status takes the engine's Redis settings. Giving user status
 * settings of its own as well is refused (one of the two would be ignored). */
static int apply_engine_redis(us_config *cfg, load_state *st, char *err, size_t errlen)
{
    if (!cfg->user_status.use_redis_from_engine) return 0;
    const char *reuse = shown_name(st, "user_status.use_redis_from_engine", NULL);
    for (size_t i = 0; i < sizeof(engine_redis_map) / sizeof(engine_redis_map[0]); i++) {
        const char *g = given_as(st, find_key(engine_redis_map[i].user_status));
        if (g)
            return fail(err, errlen,
                        "config key '%s': not allowed with '%s', which takes the engine's Redis "
                        "settings (use '%s' instead)",
                        g, reuse,
                        shown_name(st, engine_redis_map[i].engine,
                                   "user_status.use_redis_from_engine"));
    }
    if (cfg->redis_address.count == 0 && cfg->redis_sentinel_address.count == 0 &&
        cfg->redis_cluster_address.count == 0) {
        if (strcmp(cfg->engine, "redis") != 0)
            return fail(err, errlen,
                        "config key '%s': true, but the engine has no Redis: set 'engine' to "
                        "\"redis\" (v6: 'engine.type') or the top-level 'redis_address' (v6: "
                        "'engine.redis.address')",
                        reuse);
        strlist_push(&cfg->redis_address, ENGINE_REDIS_DEFAULT_ADDRESS,
                     strlen(ENGINE_REDIS_DEFAULT_ADDRESS));
    }
    if (check_redis_group(cfg, st, "", err, errlen) != 0) return -1;
    for (size_t i = 0; i < sizeof(engine_redis_map) / sizeof(engine_redis_map[0]); i++)
        copy_value(cfg, find_key(engine_redis_map[i].user_status),
                   find_key(engine_redis_map[i].engine));
    return 0;
}

static bool is_http_url(const char *s)
{
    return strncmp(s, "http://", 7) == 0 || strncmp(s, "https://", 8) == 0;
}

/* The destinations of userstatus-notify: http(s) URLs, and names for their consumer groups. */
static int check_notify(const us_config *cfg, char *err, size_t errlen)
{
    const us_strlist *w = &cfg->changes.webhooks;
    for (size_t i = 0; i < w->count; i += US_WEBHOOK_FIELDS)
        if (!is_http_url(w->items[i + US_WEBHOOK_URL]))
            return fail(err, errlen,
                        "config key 'changes.webhooks[%zu].url': '%s' is not an http:// or "
                        "https:// URL",
                        i / US_WEBHOOK_FIELDS, w->items[i + US_WEBHOOK_URL]);
    if (cfg->changes.centrifugo_api_url[0] && !is_http_url(cfg->changes.centrifugo_api_url))
        return fail(err, errlen,
                    "config key 'changes.centrifugo.api_url': '%s' is not an http:// or https:// "
                    "URL",
                    cfg->changes.centrifugo_api_url);
    if (cfg->changes.notify_consumer_group[0] == '\0')
        return fail(err, errlen, "config key 'changes.notify_consumer_group': must not be empty");
    return 0;
}

int us_config_load(us_config *cfg, const char *path, char **envp,
                   const us_config_override *overrides, size_t noverrides, char *err,
                   size_t errlen)
{
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < NKEYS; i++)
        if (keys[i].def && set_from_text(cfg, &keys[i], keys[i].def, err, errlen) != 0) return -1;

    load_state st;
    memset(&st, 0, sizeof(st));
    if (path) {
        json_error_t jerr;
        json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
        if (!root)
            return fail(err, errlen, "config file '%s': %s (line %d, column %d)", path, jerr.text,
                        jerr.line, jerr.column);
        int rc = json_is_object(root)
                     ? load_object(cfg, &st, root, NULL, err, errlen)
                     : fail(err, errlen, "config file '%s': top level must be an object", path);
        json_decref(root);
        if (rc != 0) return -1;
    }

    warn_unknown_env(envp);
    for (size_t i = 0; i < NKEYS; i++)
        if (load_env_key(cfg, &st, &keys[i], envp, err, errlen) != 0) return -1;

    for (size_t i = 0; i < noverrides; i++) {
        const key_desc *k = resolve_key(overrides[i].path, NULL);
        if (!k) return fail(err, errlen, "unknown config key '%s'", overrides[i].path);
        if (set_from_text(cfg, k, overrides[i].value, err, errlen) != 0) return -1;
        origin_of(&st, k)->flag = true;
    }

    /* Cross-key rules. */
    if (strcmp(cfg->log_level, "debug") && strcmp(cfg->log_level, "info") &&
        strcmp(cfg->log_level, "warn") && strcmp(cfg->log_level, "error"))
        return fail(err, errlen, "config key 'log_level': '%s' is not debug, info, warn or error",
                    cfg->log_level);
    if (strcmp(cfg->engine, "memory") && strcmp(cfg->engine, "redis"))
        return fail(err, errlen, "config key '%s': '%s' is not memory or redis",
                    shown_name(&st, "engine", NULL), cfg->engine);
    if (apply_engine_redis(cfg, &st, err, errlen) != 0) return -1;
    if (cfg->kafka.topic[0] == '\0' || cfg->kafka.dlq_topic[0] == '\0' ||
        cfg->kafka.consumer_group[0] == '\0' || cfg->kafka.brokers[0] == '\0')
        return fail(err, errlen,
                    "config keys 'kafka.brokers', 'kafka.topic', 'kafka.dlq_topic' and "
                    "'kafka.consumer_group' must not be empty");
    if (check_redis_group(cfg, &st, "user_status.", err, errlen) != 0) return -1;
    if (strcmp(cfg->user_status.storage, "buckets") && strcmp(cfg->user_status.storage, "per_user"))
        return fail(err, errlen, "config key 'user_status.storage': '%s' is not buckets or per_user",
                    cfg->user_status.storage);
    if (strcmp(cfg->kafka.topic, cfg->kafka.dlq_topic) == 0)
        return fail(err, errlen, "config key 'kafka.dlq_topic': must differ from 'kafka.topic'");
    if (cfg->query.metrics_port == cfg->port)
        return fail(err, errlen,
                    "config key 'query.metrics_port': %d is the API port ('port'); use 0 to serve "
                    "/metrics on the API port",
                    cfg->port);
    if (cfg->query.metrics_port != 0 && cfg->query.metrics_require_key)
        return fail(err, errlen,
                    "config key 'query.metrics_require_key': applies to /metrics on the API port, "
                    "but 'query.metrics_port' moves /metrics to a listener of its own");
    if (cfg->changes.topic[0] == '\0' || strcmp(cfg->changes.topic, cfg->kafka.topic) == 0 ||
        strcmp(cfg->changes.topic, cfg->kafka.dlq_topic) == 0)
        return fail(err, errlen,
                    "config key 'changes.topic': must not be empty and must differ from "
                    "'kafka.topic' and 'kafka.dlq_topic'");
    if (strcmp(cfg->grpc_api.error_mode, "") && strcmp(cfg->grpc_api.error_mode, "transport"))
        return fail(err, errlen,
                    "config key 'grpc_api.error_mode': '%s' is not \"\" or \"transport\"",
                    cfg->grpc_api.error_mode);
    if (cfg->grpc_api.tls.enabled &&
        (cfg->grpc_api.tls.cert_pem[0] == '\0' || cfg->grpc_api.tls.key_pem[0] == '\0'))
        return fail(err, errlen,
                    "config keys 'grpc_api.tls.cert_pem' and 'grpc_api.tls.key_pem': both required "
                    "with 'grpc_api.tls.enabled'");
    if (check_notify(cfg, err, errlen) != 0) return -1;
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
        } else if (keys[i].type == KEY_ADDR || keys[i].type == KEY_PROPS ||
                   keys[i].type == KEY_OBJS) {
            strlist_clear(slot);
        }
    }
}
