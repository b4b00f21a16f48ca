/* A small HTTP server for /health and /metrics, for programs without an HTTP API of their own. */
#ifndef US_ADMIN_HTTP_H
#define US_ADMIN_HTTP_H

#include "config.h"

#include <stddef.h>

/* Asked on every GET /health: returns 1 when healthy (HTTP 200) or 0 (HTTP 503), with a short
 * reason in msg either way. */
typedef int (*us_health_fn)(void *arg, char *msg, size_t msglen);

typedef struct us_admin_http us_admin_http;

/* Starts serving on address:port in a thread of its own. Returns NULL with err set on failure. */
us_admin_http *us_admin_http_start(const char *address, int port, us_health_fn health, void *arg,
                                   char *err, size_t errlen);
void us_admin_http_stop(us_admin_http *h);

/* Helpers shared with the query service: a response for GET /metrics. */
struct MHD_Response *us_admin_metrics_response(void);

/* What GET /metrics on the API port of userstatus-query answers (docs/choices.md, "Metrics"). */
typedef enum us_api_metrics {
    US_API_METRICS_OPEN,      /* Served without a key: the default, as Centrifugo and Prometheus
                               * expect; also whenever api_insecure is true. */
    US_API_METRICS_KEY,       /* Served only with the API key, checked as for the /api/ methods (401 with an
                               * empty body otherwise): query.metrics_require_key. */
    US_API_METRICS_ELSEWHERE, /* Not served on the API port (404): query.metrics_port gives
                               * /metrics and /health a listener of their own. */
} us_api_metrics;

/* The behaviour of GET /metrics on the API port under cfg. */
us_api_metrics us_api_metrics_mode(const us_config *cfg);

/* Parses an IPv4 or IPv6 address and port into a sockaddr for MHD. Returns 0, or -1 with err. */
int us_listen_addr(const char *address, int port, void *sockaddr_storage, char *err,
                   size_t errlen);

#endif
