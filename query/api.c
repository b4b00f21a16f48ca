/* Implementation of the HTTP front end: request intake, authentication, routing, replies.
 *
 * Life of a request
 * -----------------
 * libmicrohttpd calls the handler several times per request. The first call (headers complete)
 * allocates the request and checks the API key, so that the body of an unauthorized request is
 * discarded as it arrives instead of buffered (answering there would make libmicrohttpd 0.9.75 drop
 * keep-alive, so the 401 goes out on the last call). Body chunks are collected up to
 * query.max_body_size; the last call parses the JSON into a call of the command core and starts it.
 *
 * Threads: each HTTP thread runs an event loop of its own (http_loop.h). Nothing blocks it. A call
 * that has to wait for the broker or a reader thread suspends the connection from the core's
 * on_wait hook, before anything can complete it; the core's done callback resumes it, from a
 * producer, reader or deadline thread, and the handler is called once more to send the reply. A
 * call that only waits for reads deferred to this loop's flush (reader.h) is not suspended: the
 * loop's next libmicrohttpd pass, right after the flush, calls the handler again. Every call has
 * a deadline (query.request_timeout), and us_core_quiesce completes all of them at shutdown, so
 * no connection is still suspended when the daemon stops.
 *
 * Replies follow Centrifugo's server API: {"result":...} or {"error":{"code","message"}}, batch
 * replies keyed by method. The X-Userstatus-Error header carries the reason of this request's own
 * error, never another request's data nor the Redis or Kafka topology (those go to the log). */
#include "api.h"

#include "admin_http.h"
#include "clock.h"
#include "http_internal.h"
#include "http_loop.h"
#include "json_writer.h"
#include "log.h"
#include "metrics.h"
#include "producer.h"
#include "proxy.h"
#include "reader.h"
#include "status_page.h"
#include "watch.h"

#include <stdatomic.h>

#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define API_PREFIX "/api/"
#define API_V4_PATH "/api"    /* Centrifugo v4's single endpoint: {"method","params"}. */
#define INITIAL_BODY_CAP 1024 /* Bytes; grown by doubling up to query.max_body_size. */
#define DRAIN_WAIT_MS 2000    /* us_api_stop waits this long for resumed requests. Milliseconds. */
#define DRAIN_TICK_MS 10

typedef enum route { ROUTE_OTHER, ROUTE_API, ROUTE_API_V4, ROUTE_PROXY } route;

typedef struct request {
    us_api *api;
    struct MHD_Connection *conn;
    us_http_loop *loop; /* conn's (http_loop.h). */
    route route;
    char *body;
    size_t len, cap;
    int too_large;
    int unauthorized; /* Decided on the first call; the body is then discarded. */
    int suspended;    /* Waiting for the core; counted in api->suspended. */
    int batch;        /* Reply {"replies":[...]} keyed by method. */
    json_t *doc;
    us_call *call;
    void *proxy_state; /* Owned by proxy.c for /centrifugo/ requests. */
} request;

struct us_api {
    const us_config *cfg;
    us_core *core;
    us_producer *producer;
    us_reader *reader;
    us_proxy *proxy;
    us_watch *watch; /* NULL when changes.enabled is false. */
    us_http_loops *loops;
    us_admin_http *metrics_http; /* query.metrics_port's listener, or NULL. */
    _Atomic int suspended; /* Requests suspended and not yet answered. */
    us_metric *m_requests, *m_unauthorized, *m_malformed, *m_too_large, *m_get, *m_update,
        *m_delete, *m_err100, *m_err104, *m_err107, *m_err108;
};

/* ---------------------------------------------------------------------------------------------
 * Validation.
 * ------------------------------------------------------------------------------------------ */

int us_api_key_equal(const char *given, size_t given_len, const char *expected)
{
    size_t elen = strlen(expected);
    unsigned char diff = (unsigned char)(given_len != elen);
    for (size_t i = 0; i < given_len; i++)
        diff |= (unsigned char)(given[i] ^ (elen ? expected[i % elen] : 0));
    return diff == 0;
}

int us_api_parse_users(const us_config *cfg, json_t *params, int want_state, us_user_ref **users,
                       size_t *n, const char **state, size_t *state_len, int *has_state,
                       char *err, size_t errlen)
{
    *users = NULL;
    *n = 0;
    *has_state = 0;
    *state = NULL;
    *state_len = 0;
    if (!json_is_object(params)) {
        snprintf(err, errlen, "params must be a JSON object");
        return US_ERR_BAD_REQUEST;
    }
    json_t *list = json_object_get(params, "users");
    if (!json_is_array(list)) {
        snprintf(err, errlen, "'users' must be an array of user ids");
        return US_ERR_BAD_REQUEST;
    }
    size_t count = json_array_size(list);
    if (count > (size_t)cfg->query.max_users_per_request) { /* Before allocating for them. */
        snprintf(err, errlen, "too many users: %zu (limit query.max_users_per_request = %d)",
                 count, cfg->query.max_users_per_request);
        return US_ERR_BAD_REQUEST;
    }
    *users = malloc((count ? count : 1) * sizeof(**users));
    if (!*users) abort();
    for (size_t i = 0; i < count; i++) {
        json_t *u = json_array_get(list, i);
        if (!json_is_string(u)) {
            snprintf(err, errlen, "users[%zu] must be a string", i);
            return US_ERR_BAD_REQUEST;
        }
        (*users)[i].user = json_string_value(u);
        (*users)[i].len = json_string_length(u);
    }
    *n = count;
    json_t *st = want_state ? json_object_get(params, "state") : NULL;
    if (st && !json_is_null(st)) {
        if (!json_is_string(st)) {
            snprintf(err, errlen, "'state' must be a string of at most %d bytes", US_STATE_MAX);
            return US_ERR_BAD_REQUEST;
        }
        *state = json_string_value(st);
        *state_len = json_string_length(st);
        *has_state = 1;
    }
    return us_cmd_validate(cfg, *users, *n, *state, *state_len, *has_state, err, errlen);
}

/* ---------------------------------------------------------------------------------------------
 * Commands.
 * ------------------------------------------------------------------------------------------ */

/* Sets command c from its method name and params. */
static void command_init(us_api *api, us_cmd *c, const char *method, size_t method_len,
                         json_t *params)
{
    us_cmd_kind kind = us_cmd_kind_of(method, method_len);
    if (kind == US_CMD_NONE) {
        char d[US_CMD_REASON_MAX], shown[US_LOG_ESCAPE_CAP];
        snprintf(d, sizeof(d), "unknown method '%s'",
                 us_log_escape(method, method_len, shown, sizeof(shown)));
        us_cmd_fail(c, US_ERR_METHOD_NOT_FOUND, d);
        return;
    }
    us_metric_add(kind == US_CMD_GET ? api->m_get : kind == US_CMD_UPDATE ? api->m_update
                                                                          : api->m_delete,
                  1);
    us_user_ref *users;
    size_t n, state_len;
    const char *state;
    int has_state;
    char err[US_CMD_REASON_MAX];
    int code = us_api_parse_users(api->cfg, params, kind == US_CMD_UPDATE, &users, &n, &state,
                                  &state_len, &has_state, err, sizeof(err));
    c->kind = kind; /* Named in the reply even when it failed. */
    if (code)
        us_cmd_fail(c, code, err);
    else
        us_cmd_set(api->core, c, kind, users, n, state, state_len, has_state);
    c->kind = kind;
    free(users);
}

/* Sets c from one element of a batch's "commands": {"<method>":{params}}, or
 * {"method":"<method>","params":{...}}. */
static void batch_command_init(us_api *api, us_cmd *c, json_t *item)
{
    json_t *method = json_object_get(item, "method");
    if (json_is_object(item) && json_is_string(method)) {
        command_init(api, c, json_string_value(method), json_string_length(method),
                     json_object_get(item, "params"));
    } else if (json_is_object(item) && json_object_size(item) == 1) {
        void *it = json_object_iter(item);
        const char *key = json_object_iter_key(it);
        command_init(api, c, key, strlen(key), json_object_iter_value(it));
    } else {
        us_cmd_fail(c, US_ERR_BAD_REQUEST, "a command must be {\"<method>\":{params}}");
    }
}

/* Builds the call of a batch body {"commands":[...], "parallel"?: bool}. Returns NULL with err set
 * when the body is not a batch at all (then the request gets one error reply). */
static us_call *batch_call(us_api *api, json_t *doc, char *err, size_t errlen)
{
    json_t *list = json_is_object(doc) ? json_object_get(doc, "commands") : NULL;
    if (!json_is_array(list)) {
        snprintf(err, errlen, "'commands' must be an array");
        return NULL;
    }
    json_t *parallel = json_object_get(doc, "parallel");
    if (parallel && !json_is_boolean(parallel)) {
        snprintf(err, errlen, "'parallel' must be a boolean");
        return NULL;
    }
    size_t n = json_array_size(list);
    if (n > (size_t)api->cfg->query.max_batch_commands) {
        snprintf(err, errlen, "too many commands: %zu (limit query.max_batch_commands = %d)", n,
                 api->cfg->query.max_batch_commands);
        return NULL;
    }
    if (n == 0) {
        snprintf(err, errlen, "'commands' is empty");
        return NULL;
    }
    us_call *call = us_call_new(api->core, n, US_TRANSPORT_HTTP);
    for (size_t i = 0; i < n; i++)
        batch_command_init(api, us_call_cmd(call, i), json_array_get(list, i));
    return call;
}

/* Builds the call of a request to method (one command, or a batch). Never NULL. */
static us_call *request_call(request *req, const char *method, size_t method_len, json_t *params)
{
    us_api *api = req->api;
    char err[US_CMD_REASON_MAX];
    if (method_len == 5 && memcmp(method, "batch", 5) == 0) {
        us_call *call = batch_call(api, params, err, sizeof(err));
        if (call) {
            req->batch = 1;
            return call;
        }
        call = us_call_new(api->core, 1, US_TRANSPORT_HTTP);
        us_cmd_fail(us_call_cmd(call, 0), US_ERR_BAD_REQUEST, err);
        return call;
    }
    us_call *call = us_call_new(api->core, 1, US_TRANSPORT_HTTP);
    command_init(api, us_call_cmd(call, 0), method, method_len, params);
    return call;
}

/* ---------------------------------------------------------------------------------------------
 * Replies.
 * ------------------------------------------------------------------------------------------ */

static void count_error(us_api *api, int code)
{
    us_metric *m = code == US_ERR_INTERNAL           ? api->m_err100
                   : code == US_ERR_METHOD_NOT_FOUND ? api->m_err104
                   : code == US_ERR_BAD_REQUEST      ? api->m_err107
                   : code == US_ERR_NOT_AVAILABLE    ? api->m_err108
                                                     : NULL;
    if (m) us_metric_add(m, 1);
}

/* Writes a command's result object (without its key): {} or {"statuses":[...]}. */
static void write_result(us_jw *out, const us_cmd *c)
{
    if (c->kind != US_CMD_GET) {
        us_jw_cstr(out, "{}");
        return;
    }
    us_jw_cstr(out, "{\"statuses\":[");
    for (size_t i = 0; i < c->nusers; i++) {
        const us_status *st = &c->statuses[i];
        if (i) us_jw_add(out, ",", 1);
        us_jw_cstr(out, "{\"user\":");
        us_jw_str(out, c->users[i].user, c->users[i].len);
        if (st->active != US_TIME_NONE) {
            us_jw_cstr(out, ",\"active\":");
            us_jw_int(out, st->active);
        }
        if (st->online != US_TIME_NONE) {
            us_jw_cstr(out, ",\"online\":");
            us_jw_int(out, st->online);
        }
        if (st->has_state) {
            us_jw_cstr(out, ",\"state\":");
            us_jw_str(out, st->state, st->state_len);
        }
        us_jw_add(out, "}", 1);
    }
    us_jw_cstr(out, "]}");
}

static void write_error(us_jw *out, int code)
{
    us_jw_cstr(out, "{\"error\":");
    us_jw_error_object(out, code, us_error_message(code));
    us_jw_add(out, "}", 1);
}

static int transport_mode(struct MHD_Connection *conn)
{
    const char *mode = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Centrifugo-Error-Mode");
    return mode && strcmp(mode, "transport") == 0;
}

static unsigned transport_status(int code)
{
    switch (code) {
    case US_ERR_METHOD_NOT_FOUND:
        return MHD_HTTP_NOT_FOUND;
    case US_ERR_BAD_REQUEST:
    case US_ERR_NOT_AVAILABLE:
        return MHD_HTTP_BAD_REQUEST;
    default:
        return MHD_HTTP_INTERNAL_SERVER_ERROR;
    }
}

/* Sends the reply of a request whose call is complete. */
static enum MHD_Result finish(request *req)
{
    us_api *api = req->api;
    us_call *call = req->call;
    us_jw out = {0};
    const char *detail = NULL;
    if (req->batch) {
        us_jw_cstr(&out, "{\"replies\":[");
        for (size_t i = 0; i < us_call_ncmds(call); i++) {
            us_cmd *c = us_call_cmd(call, i);
            if (i) us_jw_add(&out, ",", 1);
            if (c->error) {
                count_error(api, c->error);
                if (!detail) detail = c->reason;
                write_error(&out, c->error);
                continue;
            }
            us_jw_cstr(&out, "{");
            const char *m = us_cmd_method(c->kind);
            us_jw_str(&out, m, strlen(m));
            us_jw_add(&out, ":", 1);
            write_result(&out, c);
            us_jw_cstr(&out, "}");
        }
        us_jw_cstr(&out, "]}");
        return send_buffer(req->conn, MHD_HTTP_OK, out.p, out.len, "application/json", detail);
    }
    us_cmd *c = us_call_cmd(call, 0);
    if (!c->error) {
        us_jw_cstr(&out, "{\"result\":");
        write_result(&out, c);
        us_jw_add(&out, "}", 1);
        return send_buffer(req->conn, MHD_HTTP_OK, out.p, out.len, "application/json", NULL);
    }
    count_error(api, c->error);
    if (transport_mode(req->conn)) {
        us_jw_error_object(&out, c->error, us_error_message(c->error));
        return send_buffer(req->conn, transport_status(c->error), out.p, out.len,
                           "application/json", c->reason);
    }
    write_error(&out, c->error);
    return send_buffer(req->conn, MHD_HTTP_OK, out.p, out.len, "application/json", c->reason);
}

/* ---------------------------------------------------------------------------------------------
 * HTTP plumbing.
 * ------------------------------------------------------------------------------------------ */

/* The core's on_wait hook (us_call_wait_fn). A call that this loop's next flush finishes is
 * waited for without suspending: libmicrohttpd calls the handler again on each of its passes
 * until a reply is queued (suspending and resuming cost two epoll_ctl calls per request, 10 % of
 * the CPU time of 1-user gets). Anything else suspends. */
static int suspend_request(void *arg, int local)
{
    request *req = arg;
    if (local && req->loop) return 1;
    req->suspended = 1;
    atomic_fetch_add(&req->api->suspended, 1);
    MHD_suspend_connection(req->conn);
    return 0;
}

/* The core's done callback. A request waiting without suspending is answered when libmicrohttpd
 * next calls the handler. */
static void resume_request(us_call *call, void *arg)
{
    (void)call;
    request *req = arg;
    if (req->suspended) us_http_loop_resume(req->loop, req->conn);
}

/* Answers a request with one error reply (a command that never ran). */
static enum MHD_Result send_error(request *req, int code, const char *reason)
{
    us_api *api = req->api;
    count_error(api, code);
    us_jw out = {0};
    if (transport_mode(req->conn)) {
        us_jw_error_object(&out, code, us_error_message(code));
        return send_buffer(req->conn, transport_status(code), out.p, out.len, "application/json",
                           reason);
    }
    write_error(&out, code);
    return send_buffer(req->conn, MHD_HTTP_OK, out.p, out.len, "application/json", reason);
}

/* Starts a watch stream (watch.h), or answers why not. */
static enum MHD_Result start_watch(request *req, json_t *params)
{
    us_api *api = req->api;
    if (!api->watch) return send_error(req, US_ERR_NOT_AVAILABLE, "changes.enabled is false");
    enum MHD_Result rc;
    char reason[US_CMD_REASON_MAX];
    int code = us_watch_start(api->watch, req->conn, params, &rc, reason, sizeof(reason));
    return code ? send_error(req, code, reason) : rc;
}

/* Runs an /api/ request whose body is complete. method is NULL for Centrifugo v4's /api, which
 * names it in the body. */
static enum MHD_Result start_api(request *req, const char *method)
{
    us_api *api = req->api;
    json_error_t jerr;
    req->doc = json_loadb(req->body ? req->body : "", req->len, JSON_REJECT_DUPLICATES, &jerr);
    if (!req->doc) {
        us_metric_add(api->m_malformed, 1);
        char msg[256];
        snprintf(msg, sizeof(msg), "malformed JSON: %s (line %d, column %d)\n", jerr.text,
                 jerr.line, jerr.column);
        return send_text(req->conn, MHD_HTTP_BAD_REQUEST, msg);
    }
    if (method && strcmp(method, US_WATCH_METHOD) == 0) return start_watch(req, req->doc);
    if (method) {
        req->call = request_call(req, method, strlen(method), req->doc);
    } else {
        json_t *m = json_is_object(req->doc) ? json_object_get(req->doc, "method") : NULL;
        if (!json_is_string(m)) {
            req->call = us_call_new(api->core, 1, US_TRANSPORT_HTTP);
            us_cmd_fail(us_call_cmd(req->call, 0), US_ERR_BAD_REQUEST,
                        "body must be {\"method\":\"<method>\",\"params\":{...}}");
        } else {
            json_t *params = json_object_get(req->doc, "params");
            if (!params) { /* No params: as {} (owned by the document). */
                params = json_object();
                json_object_set_new(req->doc, "params", params);
            }
            if (strcmp(json_string_value(m), US_WATCH_METHOD) == 0) return start_watch(req, params);
            req->call = request_call(req, json_string_value(m), json_string_length(m), params);
        }
    }
    if (us_call_start(req->call, api->cfg->query.request_timeout_ms, resume_request,
                      suspend_request, req))
        return finish(req);
    return MHD_YES; /* Suspended; handled again when resumed. */
}

static route route_of(const char *url)
{
    if (strncmp(url, API_PREFIX, strlen(API_PREFIX)) == 0) return ROUTE_API;
    if (strcmp(url, API_V4_PATH) == 0) return ROUTE_API_V4;
    if (strncmp(url, US_PROXY_PREFIX, strlen(US_PROXY_PREFIX)) == 0) return ROUTE_PROXY;
    return ROUTE_OTHER;
}

/* The service's readiness, from state kept by the producer and the reader (never a Redis call):
 * 1 with msg "{"status":"ok"}", or 0 with the reason. Also the separate metrics listener's
 * health function. */
static int health(void *arg, char *msg, size_t msglen)
{
    us_api *api = arg;
    char err[256];
    if (!us_producer_ready(api->producer)) {
        snprintf(msg, msglen, "starting: Kafka topic metadata not known yet");
        return 0;
    }
    if (!us_watch_ready(api->watch)) {
        snprintf(msg, msglen, "starting: the changes topic is not followed yet");
        return 0;
    }
    if (us_reader_health(api->reader, err, sizeof(err)) != 0) {
        snprintf(msg, msglen, "unhealthy: Redis: %s", err);
        return 0;
    }
    snprintf(msg, msglen, "{\"status\":\"ok\"}");
    return 1;
}

static enum MHD_Result send_health(us_api *api, struct MHD_Connection *conn)
{
    char msg[320];
    int ok = health(api, msg, sizeof(msg) - 1);
    strcat(msg, "\n");
    return send_text(conn, ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, msg);
}

/* GET /metrics on the API port, as query.metrics_* say (docs/choices.md, "Metrics"). */
static enum MHD_Result send_metrics(us_api *api, struct MHD_Connection *conn)
{
    switch (us_api_metrics_mode(api->cfg)) {
    case US_API_METRICS_ELSEWHERE:
        return send_text(conn, MHD_HTTP_NOT_FOUND,
                         "not found (/metrics is served on query.metrics_port)\n");
    case US_API_METRICS_KEY:
        if (!api_key_authorized(api->cfg, conn)) {
            us_metric_add(api->m_unauthorized, 1);
            return send_buffer(conn, MHD_HTTP_UNAUTHORIZED, NULL, 0, NULL, NULL);
        }
        break;
    case US_API_METRICS_OPEN:
        break;
    }
    struct MHD_Response *resp = us_admin_metrics_response();
    enum MHD_Result rc = MHD_queue_response(conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return rc;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_data_size, void **con_cls)
{
    us_api *api = cls;
    request *req = *con_cls;
    if (!req) {
        req = calloc(1, sizeof(*req));
        if (!req) return MHD_NO;
        req->api = api;
        req->conn = conn;
        req->loop = us_http_loop_current();
        req->route = route_of(url);
        req->unauthorized = req->route != ROUTE_OTHER && !api_key_authorized(api->cfg, conn);
        *con_cls = req;
        us_metric_add(api->m_requests, 1);
        return MHD_YES; /* Answer on a later call: keeps keep-alive working. */
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (req->unauthorized || req->too_large) return MHD_YES; /* Discarded. */
        if (req->len + n > (size_t)api->cfg->query.max_body_size) {
            req->too_large = 1;
            free(req->body);
            req->body = NULL;
            req->len = req->cap = 0;
            return MHD_YES;
        }
        if (req->len + n > req->cap) {
            size_t cap = req->cap ? req->cap : INITIAL_BODY_CAP;
            while (cap < req->len + n) cap *= 2;
            req->body = realloc(req->body, cap);
            if (!req->body) return MHD_NO;
            req->cap = cap;
        }
        memcpy(req->body + req->len, upload_data, n);
        req->len += n;
        return MHD_YES;
    }
    if (req->suspended) { /* Resumed: the call is complete. */
        req->suspended = 0;
        atomic_fetch_sub(&api->suspended, 1);
        if (req->route == ROUTE_PROXY)
            return us_proxy_handle(api->proxy, conn, url, method, NULL, 0, 0, &req->proxy_state);
        return finish(req);
    }
    if (req->call) /* Waiting for this loop's flush (suspend_request): called again each pass. */
        return us_call_complete(req->call) ? finish(req) : MHD_YES;

    if (req->route == ROUTE_API || req->route == ROUTE_API_V4) {
        if (strcmp(method, "POST") != 0) return send_post_only(conn);
        if (req->unauthorized) {
            us_metric_add(api->m_unauthorized, 1);
            return send_buffer(conn, MHD_HTTP_UNAUTHORIZED, NULL, 0, NULL, NULL);
        }
        if (req->too_large) {
            us_metric_add(api->m_too_large, 1);
            char msg[128];
            snprintf(msg, sizeof(msg), "request body over %d bytes (query.max_body_size)\n",
                     api->cfg->query.max_body_size);
            return send_text(conn, MHD_HTTP_CONTENT_TOO_LARGE, msg);
        }
        return start_api(req, req->route == ROUTE_API ? url + strlen(API_PREFIX) : NULL);
    }
    if (req->route == ROUTE_PROXY) {
        enum MHD_Result rc = us_proxy_handle(api->proxy, conn, url, method, req->body, req->len,
                                             req->too_large, &req->proxy_state);
        if (req->proxy_state) { /* Suspended until its call completes: counted for us_api_stop. */
            req->suspended = 1;
            atomic_fetch_add(&api->suspended, 1);
        }
        return rc;
    }
    if (strcmp(method, "GET") == 0 && strcmp(url, "/metrics") == 0) return send_metrics(api, conn);
    if (strcmp(method, "GET") == 0 && strcmp(url, "/health") == 0) return send_health(api, conn);
    if (us_status_page_owns(url)) return us_status_page_send(api->cfg, conn, url, method);
    return send_text(conn, MHD_HTTP_NOT_FOUND, "not found\n");
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    request *req = *con_cls;
    if (!req) return;
    if (req->suspended) { /* Resumed, then closed before the handler ran again. */
        req->suspended = 0;
        atomic_fetch_sub(&req->api->suspended, 1);
    }
    us_proxy_request_done(req->api->proxy, &req->proxy_state);
    us_call_release(req->call);
    if (req->doc) json_decref(req->doc);
    free(req->body);
    free(req);
    *con_cls = NULL;
}

/* The event loops' hooks (http_loop.h): the reads a pass started share one round trip, on the
 * loop's thread, which serves its other connections while Redis answers. */
static void await_replies(void *arg, const int *fds, size_t nfds)
{
    (void)arg;
    us_http_loop_await(fds, nfds, READER_INLINE_TIMEOUT_MS);
}

static void loop_begin(void *arg)
{
    us_api *api = arg;
    us_reader_loop_begin(api->reader, await_replies, NULL);
}

static void loop_end(void *arg)
{
    us_api *api = arg;
    us_reader_loop_end(api->reader);
}

static int loop_pass(void *arg)
{
    us_api *api = arg;
    return us_reader_flush(api->reader);
}

static void register_metrics(us_api *api)
{
    api->m_requests = us_metric_counter("userstatus_query_http_requests_total",
                                        "HTTP requests received.");
    api->m_unauthorized = us_metric_counter("userstatus_query_http_rejected_total{reason=\"unauthorized\"}",
                                            "HTTP requests rejected before running, by reason.");
    api->m_malformed = us_metric_counter("userstatus_query_http_rejected_total{reason=\"malformed_json\"}",
                                         "HTTP requests rejected before running, by reason.");
    api->m_too_large = us_metric_counter("userstatus_query_http_rejected_total{reason=\"body_too_large\"}",
                                         "HTTP requests rejected before running, by reason.");
    api->m_get = us_metric_counter("userstatus_query_commands_total{method=\"get_user_status\"}",
                                   "API commands run, by method.");
    api->m_update = us_metric_counter("userstatus_query_commands_total{method=\"update_user_status\"}",
                                      "API commands run, by method.");
    api->m_delete = us_metric_counter("userstatus_query_commands_total{method=\"delete_user_status\"}",
                                      "API commands run, by method.");
    api->m_err100 = us_metric_counter("userstatus_query_errors_total{code=\"100\"}",
                                      "API error replies, by code.");
    api->m_err104 = us_metric_counter("userstatus_query_errors_total{code=\"104\"}",
                                      "API error replies, by code.");
    api->m_err107 = us_metric_counter("userstatus_query_errors_total{code=\"107\"}",
                                      "API error replies, by code.");
    api->m_err108 = us_metric_counter("userstatus_query_errors_total{code=\"108\"}",
                                      "API error replies, by code.");
}

us_api *us_api_start(const us_config *cfg, us_core *core, us_producer *producer,
                     us_reader *reader, unsigned threads, char *err, size_t errlen)
{
    struct sockaddr_storage sa;
    if (us_listen_addr(cfg->address, cfg->port, &sa, err, errlen) != 0) return NULL;
    us_api *api = calloc(1, sizeof(*api));
    if (!api) abort();
    api->cfg = cfg;
    api->core = core;
    api->producer = producer;
    api->reader = reader;
    api->proxy = us_proxy_new(cfg, core, err, errlen);
    if (!api->proxy) {
        free(api);
        return NULL;
    }
    if (cfg->changes.enabled) {
        api->watch = us_watch_new(cfg, core, err, errlen);
        if (!api->watch) {
            us_proxy_free(api->proxy);
            free(api);
            return NULL;
        }
    }
    register_metrics(api);

    us_http_loop_spec spec = {
        .addr = (const struct sockaddr *)&sa,
        .threads = threads,
        .max_connections = (unsigned)cfg->query.max_connections,
        .connection_timeout_s = (unsigned)(cfg->query.connection_timeout_ms / 1000),
        /* libmicrohttpd keeps the header block in half of it (its read buffer grows to half of
         * what is free), and zeroes all of it for every request: 9 % of the CPU time of 1-user
         * gets at its 32 KiB default (docs/choices.md, "HTTP limits"). */
        .connection_memory = 2 * (size_t)cfg->query.max_header_size,
        .handler = handle,
        .handler_arg = api,
        .completed = completed,
        .thread_begin = loop_begin,
        .thread_end = loop_end,
        .pass = loop_pass,
        .hook_arg = api,
    };
    api->loops = us_http_loops_start(&spec, err, errlen);
    if (!api->loops) {
        char why[256];
        snprintf(why, sizeof(why), "%s", err);
        snprintf(err, errlen, "cannot listen on %s:%d (%s)", cfg->address, cfg->port, why);
        us_api_stop(api);
        return NULL;
    }
    if (cfg->query.metrics_port) {
        api->metrics_http = us_admin_http_start(cfg->query.metrics_address,
                                                cfg->query.metrics_port, health, api, err, errlen);
        if (!api->metrics_http) {
            us_api_stop(api);
            return NULL;
        }
    }
    static const char *const modes[] = {
        [US_API_METRICS_OPEN] = "on the API port, without a key",
        [US_API_METRICS_KEY] = "on the API port, with the API key (query.metrics_require_key)",
        [US_API_METRICS_ELSEWHERE] = "on query.metrics_address:query.metrics_port only",
    };
    us_info("serving the HTTP API on %s:%d with %u threads; /metrics %s", cfg->address, cfg->port,
            threads, modes[us_api_metrics_mode(cfg)]);
    return api;
}

void us_api_stop(us_api *api)
{
    if (!api) return;
    us_watch_quiesce(api->watch); /* Streams end: none stays suspended. */
    if (api->loops) {
        /* No MHD_quiesce_daemon: with epoll and internal threads it races with the threads'
         * own removal of the listening socket from their epoll sets and aborts the process
         * ("Failed to remove listen FD from epoll set", seen in CI; a libmicrohttpd defect).
         * Connections accepted until MHD_stop_daemon meet a quiesced core, which answers every
         * new call at once with "shutting down".
         * The core is quiesced: every suspended request has been resumed; give the daemon's
         * threads a moment to send their replies and the streams' last bytes. */
        for (int waited = 0;
             (atomic_load(&api->suspended) > 0 || us_watch_streams(api->watch) > 0) &&
             waited < DRAIN_WAIT_MS;
             waited += DRAIN_TICK_MS)
            us_sleep_ms(DRAIN_TICK_MS);
        if (atomic_load(&api->suspended) > 0)
            us_warn("stopping with %d resumed request(s) not answered yet; their connections "
                    "are closed", atomic_load(&api->suspended));
        us_http_loops_stop(api->loops);
    }
    us_admin_http_stop(api->metrics_http);
    us_watch_free(api->watch);
    us_proxy_free(api->proxy);
    free(api);
}
