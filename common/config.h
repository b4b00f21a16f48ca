/* Configuration: one JSON file, USERSTATUS_* environment overrides and command-line flags. */
#ifndef US_CONFIG_H
#define US_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A list of strings: Redis addresses, or kafka.properties as name/value pairs. */
typedef struct us_strlist {
    char **items;
    size_t count;
} us_strlist;

typedef struct us_config {
    char *api_key;
    bool api_insecure;
    char *address;
    int port;
    char *log_level;
    char *engine;             /* "memory" or "redis" (v6: engine.type). */
    us_strlist redis_address; /* Top-level (Centrifugo engine) Redis; v6: engine.redis.address. */
    /* The rest of the engine's Redis settings (v6: engine.redis.*). Only user status with
     * use_redis_from_engine uses them; us_config_load then copies them into user_status. */
    char *redis_prefix; /* Accepted for Centrifugo configs; user status keeps its own prefix. */
    int redis_db;
    char *redis_user;
    char *redis_password;
    int64_t redis_connect_timeout_ms;
    int64_t redis_io_timeout_ms;
    us_strlist redis_sentinel_address;
    char *redis_sentinel_master_name;
    char *redis_sentinel_user;
    char *redis_sentinel_password;
    us_strlist redis_cluster_address;

    struct {
        bool enabled;
        us_strlist redis_address;
        bool use_redis_from_engine;
        char *redis_prefix;
        int64_t expire_interval_ms;
        int64_t max_clock_skew_ms;
        int64_t redis_connect_timeout_ms;
        int64_t redis_io_timeout_ms;
        us_strlist redis_sentinel_address;
        char *redis_sentinel_master_name;
        us_strlist redis_cluster_address;
        char *redis_user;              /* Credentials for addresses that carry none. */
        char *redis_password;
        char *redis_sentinel_user;     /* Credentials for the sentinels themselves. */
        char *redis_sentinel_password;
        int redis_db;                  /* Database for addresses that name none. */
        int redis_wait_replicas;       /* Writes count as done once this many replicas have them. */
        int64_t redis_wait_timeout_ms;
        char *storage;          /* Status model: "buckets" or "per_user" (status_model.h). */
        int expected_users;     /* Sizes the bucket model: buckets of ~100 users at this count. */
    } user_status;

    struct {
        char *brokers;
        char *topic;
        char *dlq_topic;
        char *consumer_group;
        int partitions;
        int replication_factor;
        int64_t produce_timeout_ms;
        us_strlist properties; /* name0, value0, name1, value1, ... */
    } kafka;

    struct {
        int batch_size;
        char *metrics_address;
        int metrics_port;
        int processes;
    } worker;

    struct {
        int max_body_size;
        int max_header_size; /* Request line and headers; sizes libmicrohttpd's connection memory. */
        int max_users_per_request;
        int max_user_id_length;
        int threads;
        int max_connections;
        int64_t connection_timeout_ms;
        int64_t request_timeout_ms; /* Longest wait for Kafka/Redis before answering code 100. */
        int max_batch_commands;     /* Commands in one /api/batch. */
        char *metrics_address;      /* Separate /metrics + /health listener, with metrics_port. */
        int metrics_port;           /* 0: /metrics is served on the API port instead. */
        bool metrics_require_key;   /* /metrics on the API port asks for the API key. */
        bool status_page;           /* Serve the status page at /status (query/status_page.h). */
    } query;

    /* Centrifugo OSS proxy endpoints of userstatus-query (/centrifugo/rpc, /centrifugo/refresh). */
    struct {
        bool enabled;
        char *rpc_method_prefix;    /* Prepended to "update_user_status" (an RPC namespace). */
        int64_t online_interval_ms; /* Refresh replies: expire_at = now + this. */
        int64_t active_debounce_ms; /* At most one RPC "active" event per user per this; 0: off. */
        int64_t ack_timeout_ms;     /* Longest wait for the broker before answering anyway. */
    } proxy;

    /* Status changes (online/away/offline transitions) published by the worker. */
    struct {
        bool enabled;
        char *topic;               /* Compacted Kafka topic of change messages. */
        int64_t offline_after_ms;  /* Offline after this long without any event. */
        int64_t away_after_ms;     /* Away after this long without an `active` event. */
        int watch_max_streams;     /* Open watch streams per query process. */
        /* userstatus-notify (notify/): webhooks and Centrifugo channels. */
        us_strlist webhooks;       /* url, secret, consumer_group of each webhook in turn
                                    * (US_WEBHOOK_FIELDS items each; consumer_group "" when not
                                    * given). */
        char *centrifugo_api_url;  /* "" : no Centrifugo publishing. */
        char *centrifugo_api_key;
        char *centrifugo_channel_prefix;
        char *centrifugo_consumer_group; /* "": <notify_consumer_group>-centrifugo. */
        char *notify_consumer_group;     /* Prefix of the destinations' consumer groups. */
        int64_t notify_timeout_ms;       /* Longest HTTP request to a destination. */
        int64_t notify_retry_max_ms;     /* Cap of the exponential backoff between retries. */
        int notify_batch_size;           /* Most changes in one webhook POST or Centrifugo batch. */
        char *notify_metrics_address;
        int notify_metrics_port;         /* 0: no /metrics and /health. */
    } changes;

    /* The gRPC server API of userstatus-query (Centrifugo v6's grpc_api section). */
    struct {
        bool enabled;
        char *address; /* Empty: every address of the host. */
        int port;
        char *key;        /* "authorization: apikey <key>"; empty only with api_insecure. */
        char *error_mode; /* "" (errors in the response) or "transport" (gRPC statuses). */
        int max_receive_message_size; /* Bytes. */
        bool reflection;              /* Serve gRPC server reflection (grpcurl list). */
        struct {
            bool enabled;
            char *cert_pem; /* PEM text, or the path of a PEM file. */
            char *key_pem;
        } tls;
    } grpc_api;
} us_config;

/* One override from the command line: a key path ("user_status.redis_address") and its text. */
typedef struct us_config_override {
    const char *path;
    const char *value;
} us_config_override;

/* Items of changes.webhooks per webhook, and the index of each field among them. */
#define US_WEBHOOK_FIELDS 3
#define US_WEBHOOK_URL 0
#define US_WEBHOOK_SECRET 1
#define US_WEBHOOK_GROUP 2

#define US_USER_ID_MAX 256 /* Bytes; the event schema's limit. */
#define US_STATE_MAX 64    /* Bytes. */

/* Fills *cfg with defaults, then the JSON file at path (NULL: none), then USERSTATUS_* environment
 * variables from envp (NULL-terminated "NAME=value" array; NULL: none), then the overrides. Keys
 * may be spelled as in Centrifugo v5 or v6 (docs/choices.md); one setting in both spellings is an
 * error. On any unknown key, wrong type or bad value returns -1 with a message naming the key in
 * err; *cfg must still be released with us_config_free. Returns 0 on success. */
int us_config_load(us_config *cfg, const char *path, char **envp,
                   const us_config_override *overrides, size_t noverrides, char *err,
                   size_t errlen);

/* Sets one key from text, as an environment variable would. Returns 0, or -1 with err set. */
int us_config_set(us_config *cfg, const char *path, const char *text, char *err, size_t errlen);

/* The Redis addresses user status uses: user_status.redis_address, or with use_redis_from_engine
 * the top-level redis_address (us_config_load has then copied it, and the engine's other Redis
 * settings, into user_status, so the two are equal). */
const us_strlist *us_config_redis_addresses(const us_config *cfg);

/* Releases everything the config owns; accepts a zeroed or partly filled config. */
void us_config_free(us_config *cfg);

#endif
