/* Implementation of the /health and /metrics server on libmicrohttpd. */
#include "admin_http.h"

#include "metrics.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

struct us_admin_http {
    struct MHD_Daemon *daemon;
    us_health_fn health;
    void *arg;
};

int us_listen_addr(const char *address, int port, void *storage, char *err, size_t errlen)
{
    memset(storage, 0, sizeof(struct sockaddr_storage));
    struct sockaddr_in *in4 = storage;
    struct sockaddr_in6 *in6 = storage;
    if (inet_pton(AF_INET, address, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)port);
        return 0;
    }
    if (inet_pton(AF_INET6, address, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        return 0;
    }
    snprintf(err, errlen, "listen address '%s' is not a numeric IPv4 or IPv6 address", address);
    return -1;
}

struct MHD_Response *us_admin_metrics_response(void)
{
    size_t len;
    char *text = us_metrics_render(&len);
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(resp, "Content-Type", "text/plain; version=0.0.4");
    return resp;
}

us_api_metrics us_api_metrics_mode(const us_config *cfg)
{
    if (cfg->query.metrics_port != 0) return US_API_METRICS_ELSEWHERE;
    if (cfg->query.metrics_require_key && !cfg->api_insecure) return US_API_METRICS_KEY;
    return US_API_METRICS_OPEN;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_data_size, void **con_cls)
{
    us_admin_http *h = cls;
    static int first_call_marker;
    /* Answer on the second call: queuing on the first one makes libmicrohttpd close the
     * connection instead of keeping it alive. */
    if (*con_cls == NULL) {
        *con_cls = &first_call_marker;
        return MHD_YES;
    }
    if (*upload_data_size) {
        *upload_data_size = 0; /* Bodies are ignored. */
        return MHD_YES;
    }
    struct MHD_Response *resp;
    unsigned status;
    if (strcmp(url, "/metrics") == 0 && strcmp(method, "GET") == 0) {
        resp = us_admin_metrics_response();
        status = MHD_HTTP_OK;
    } else if (strcmp(url, "/health") == 0 && strcmp(method, "GET") == 0) {
        char msg[512];
        int ok = h->health(h->arg, msg, sizeof(msg));
        json_t *doc = json_pack("{s:s, s:s}", "status", ok ? "ok" : "unhealthy", "detail", msg);
        char *body = json_dumps(doc, JSON_COMPACT);
        json_decref(doc);
        resp = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
        MHD_add_response_header(resp, "Content-Type", "application/json");
        status = ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE;
    } else {
        resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
        status = MHD_HTTP_NOT_FOUND;
    }
    enum MHD_Result rc = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return rc;
}

us_admin_http *us_admin_http_start(const char *address, int port, us_health_fn health, void *arg,
                                   char *err, size_t errlen)
{
    struct sockaddr_storage sa;
    if (us_listen_addr(address, port, &sa, err, errlen) != 0) return NULL;
    us_admin_http *h = calloc(1, sizeof(*h));
    if (!h) abort();
    h->health = health;
    h->arg = arg;
    h->daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
                                     (sa.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0),
                                 (uint16_t)port, NULL, NULL, handle, h, MHD_OPTION_SOCK_ADDR, &sa,
                                 MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_END);
    if (!h->daemon) {
        snprintf(err, errlen, "cannot listen on %s:%d for /metrics and /health", address, port);
        free(h);
        return NULL;
    }
    return h;
}

void us_admin_http_stop(us_admin_http *h)
{
    if (!h) return;
    MHD_stop_daemon(h->daemon);
    free(h);
}
