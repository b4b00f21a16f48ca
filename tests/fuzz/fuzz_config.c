/* Fuzz target: the configuration loader (us_config_load on a file with the input as content), the
 * Go-style duration parser (us_duration_parse) and the Redis address parser (us_redis_addr_parse).
 *
 * The file is a memfd (no disk I/O, nothing left behind) opened through /proc/self/fd. Properties
 * checked: a loaded config honours the bounds of docs/choices.md (with use_redis_from_engine, user
 * status holds the engine's Redis settings); a parsed duration is consistent with its sign. */
#define _GNU_SOURCE
#include "config.h"
#include "duration.h"
#include "log.h"
#include "redis_store.h"
#include "fuzz_replay.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void check(int cond)
{
    if (!cond) abort();
}

static void fuzz_load(const uint8_t *data, size_t size)
{
    static int fd = -1;
    if (fd < 0) {
        us_log_set_level(US_LOG_ERROR);
        fd = memfd_create("us-fuzz-config", 0);
        if (fd < 0) abort();
    }
    if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size) abort();
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    us_config cfg;
    char err[512];
    if (us_config_load(&cfg, path, NULL, NULL, 0, err, sizeof(err)) == 0) {
        check(cfg.port >= 1 && cfg.port <= 65535);
        check(cfg.query.max_user_id_length >= 1 && cfg.query.max_user_id_length <= US_USER_ID_MAX);
        check(cfg.query.max_body_size >= 64);
        check(cfg.user_status.expire_interval_ms >= 1000);
        check(cfg.query.connection_timeout_ms >= 1000);
        check(cfg.kafka.properties.count % 2 == 0);
        check(cfg.api_key != NULL && cfg.kafka.topic[0] != '\0');
        check(cfg.query.request_timeout_ms >= 10 && cfg.query.max_batch_commands >= 1);
        check(cfg.query.metrics_port != cfg.port);
        check(cfg.user_status.redis_db >= 0 &&
              (cfg.user_status.redis_cluster_address.count == 0 || cfg.user_status.redis_db == 0));
        if (cfg.user_status.use_redis_from_engine) { /* The engine's settings were copied. */
            check(cfg.user_status.redis_address.count == cfg.redis_address.count);
            check(cfg.user_status.redis_sentinel_address.count ==
                  cfg.redis_sentinel_address.count);
            check(cfg.user_status.redis_db == cfg.redis_db);
            check(cfg.redis_address.count + cfg.redis_sentinel_address.count +
                      cfg.redis_cluster_address.count >
                  0);
        }
        const us_strlist *addrs = us_config_redis_addresses(&cfg);
        for (size_t i = 0; i < addrs->count; i++) {
            us_redis_addr a;
            us_redis_addr_parse(addrs->items[i], &a, err, sizeof(err));
        }
    } else {
        check(err[0] != '\0');
    }
    us_config_free(&cfg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text) abort();
    memcpy(text, data, size);
    text[size] = '\0';

    int64_t ms = 12345;
    if (us_duration_parse(text, &ms) == 0) {
        const char *p = text;
        if (*p == '-') check(ms <= 0);
        else check(ms >= 0);
    } else {
        check(ms == 12345); /* unchanged on failure */
    }

    us_redis_addr a;
    char err[512];
    if (us_redis_addr_parse(text, &a, err, sizeof(err)) == 0)
        check(a.port >= 1 && a.port <= 65535 && a.host[0] != '\0');

    fuzz_load(data, size);
    free(text);
    return 0;
}
