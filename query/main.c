/* userstatus-query: the Centrifugo-compatible user status HTTP and gRPC APIs. */
#include "api.h"
#include "cli.h"
#include "config.h"
#include "core.h"
#include "grpc.h"
#include "log.h"
#include "metrics.h"
#include "producer.h"
#include "reader.h"
#include "redis_store.h"
#include "signals.h"

#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const us_cli_flag flags[] = {
    {"address", "address", "listen address"},
    {"port", "port", "listen port"},
    {"brokers", "kafka.brokers", "Kafka bootstrap servers"},
    {"redis-address", "user_status.redis_address", "Redis address(es), comma-separated"},
    {"log-level", "log_level", "debug, info, warn or error"},
};

int main(int argc, char **argv, char **envp)
{
    us_log_set_tag("query");
    us_config cfg;
    int check_only;
    int rc = us_cli_load(argc, argv, envp, "userstatus-query", flags,
                         sizeof(flags) / sizeof(flags[0]), &cfg, &check_only);
    if (rc != 0) {
        us_config_free(&cfg);
        return rc == 2 ? 0 : 1;
    }
    if (cfg.api_key[0] == '\0' && !cfg.api_insecure) {
        fprintf(stderr, "userstatus-query: configuration error: 'api_key' is empty; set it, or set "
                        "'api_insecure': true to serve the API without authentication\n");
        us_config_free(&cfg);
        return 1;
    }
    char err[512];
    if (us_grpc_check_config(&cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "userstatus-query: configuration error: %s\n", err);
        us_config_free(&cfg);
        return 1;
    }
    if (check_only) {
        printf("configuration is valid\n");
        us_config_free(&cfg);
        return 0;
    }
    if (cfg.api_insecure)
        us_warn("api_insecure is true: the API accepts requests WITHOUT an API key; never expose "
                "this port beyond a trusted network");

    /* Before any thread starts: the HTTP and Kafka threads inherit the blocked signals. */
    if (us_signals_init() != 0) {
        us_error("installing signal handlers: %s", strerror(errno));
        us_config_free(&cfg);
        return 1;
    }
    /* query.threads (default: one per core) sizes the HTTP loops, the gRPC queue threads and the
     * reader. */
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned threads = cfg.query.threads > 0 ? (unsigned)cfg.query.threads
                                             : (unsigned)(cores > 0 ? cores : 1);
    /* glibc gives each thread that allocates an arena of its own, up to 8 per core, and keeps what
     * they once held: with ~28 threads (HTTP loops, readers, gRPC, librdkafka) the arenas alone
     * were 11 MB of a 32-36 MB peak under the bench's loads. As many arenas as HTTP loops keeps
     * the peak under 30 MB at the same rates (docs/choices.md, "Query memory"). */
    if (!getenv("MALLOC_ARENA_MAX")) mallopt(M_ARENA_MAX, (int)(threads > 2 ? threads : 2));
    us_redis_metrics_register();
    us_producer *producer = us_producer_new(&cfg, err, sizeof(err));
    us_reader *reader = producer ? us_reader_new(&cfg, (int)threads, err, sizeof(err)) : NULL;
    us_core *core = reader ? us_core_new(&cfg, producer, reader, err, sizeof(err)) : NULL;
    /* gRPC before HTTP: once /health answers, both APIs listen. */
    us_grpc *grpc = NULL;
    int grpc_ok = core && (!cfg.grpc_api.enabled ||
                           (grpc = us_grpc_start(&cfg, core, reader, err, sizeof(err))) != NULL);
    us_api *api = grpc_ok ? us_api_start(&cfg, core, producer, reader, threads, err, sizeof(err))
                          : NULL;
    if (!api) {
        us_error("%s", err);
        us_grpc_stop(grpc);
        us_reader_free(reader);
        us_core_free(core);
        us_producer_free(producer);
        us_config_free(&cfg);
        us_metrics_free_all();
        return 1;
    }
    while (!us_signals_stop_requested()) us_signals_wait(-1);
    us_info("shutting down");
    us_core_quiesce(core); /* Every request still waiting is answered now. */
    us_grpc_stop(grpc);
    us_api_stop(api);
    us_reader_free(reader); /* Finishes (or fails, when Redis hangs) the reads still running. */
    us_core_free(core);     /* Waits for the events still in flight, bounded. */
    us_producer_free(producer);
    us_config_free(&cfg);
    us_metrics_free_all();
    return 0;
}
