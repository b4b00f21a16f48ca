/* Implementation of the HTTP API: request intake, authentication, commands, replies.
 *
 * Life of a request
 * -----------------
 * libmicrohttpd calls the handler several times per request. The first call only allocates the
 * request (answering there would make libmicrohttpd 0.9.75 drop keep-alive); body chunks are
 * collected up to query.max_body_size; the last call parses the JSON and runs the commands.
 *
 * Nothing blocks an HTTP thread. Updates and deletes become Kafka events; reads become jobs for
 * the batched Redis reader (reader.h), which serves the reads of many requests in one pipelined
 * round trip. Meanwhile the connection is *suspended*; whoever completes the last piece -- the
 * producer's delivery-report thread or a reader thread -- resumes it, and the handler is called
 * once more to send the reply. */
#include "api.h"

#include "admin_http.h"
#include "http_internal.h"
#include "log.h"
#include "metrics.h"
#include "proxy.h"
#include "reader.h"
#include "redis_store.h"

#include <stdatomic.h>

#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define API_PREFIX "/api/"
#define INITIAL_BODY_CAP 1024 /* Bytes; grown by doubling up to query.max_body_size. */

typedef enum cmd_kind { CMD_GET, CMD_UPDATE, CMD_DELETE, CMD_INVALID } cmd_kind;

/* One command of a request (a plain request is a batch of one). */
typedef struct command {
    cmd_kind kind;
    int error;           /* Code to answer instead of running the command, 0 for none. */
    char detail[300];    /* Why, for the X-Userstatus-Error header. */
    us_user_ref *users;  /* Point into the parsed JSON document. */
    size_t nusers;
    const char *state;
    size_t state_len;
    int has_state;
    us_ack_group acks;
    us_read_job read;   /* CMD_GET: the statuses, read by the reader. */
} command;

typedef struct request {
    us_api *api;
    struct MHD_Connection *conn;
    char *body;
    size_t len, cap;
    int too_large;
    int answered_once; /* The handler has been called at least once. */
    int suspended;
    int batch;         /* Reply {"replies":[...]} instead of one reply. */
    json_t *doc;
    command *cmds;
    size_t ncmds;
    us_ack_waiter waiter;
    void *proxy_state; /* Owned by proxy.c for /centrifugo/ requests. */
} request;

struct us_api {
    const us_config *cfg;
    us_producer *producer;
    us_proxy *proxy;
    struct MHD_Daemon *daemon;
    us_reader *reader;
    _Atomic int suspended; /* /api/ requests waiting for acks or reads. */
    pthread_mutex_t mu; /* Guards redis_all. */
    us_redis **redis_all;
    size_t nredis;
    pthread_key_t redis_key;
    us_metric *m_requests, *m_unauthorized, *m_malformed, *m_too_large, *m_get, *m_update,
        *m_delete, *m_err100, *m_err104, *m_err107, *m_err108, *m_produced, *m_produce_failed,
        *m_users_read;
};

/* ---------------------------------------------------------------------------------------------
 * Growable output buffer and JSON writing.
 * ------------------------------------------------------------------------------------------ */

typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf;

static void sb_reserve(sbuf *b, size_t extra)
{
    if (b->len + extra <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    b->p = realloc(b->p, cap);
    if (!b->p) abort();
    b->cap = cap;
}

static void sb_add(sbuf *b, const char *s, size_t n)
{
    sb_reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void sb_cstr(sbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

static void sb_int(sbuf *b, long long v)
{
    char tmp[24];
    sb_add(b, tmp, (size_t)snprintf(tmp, sizeof(tmp), "%lld", v));
}

/* Writes s as a JSON string, quotes included. */
static void sb_json_str(sbuf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    sb_reserve(b, n * 6 + 2);
    char *o = b->p + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c < 0x20) {
            *o++ = '\\';
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        } else {
            *o++ = (char)c;
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->p);
}

static const char *error_message(int code)
{
    switch (code) {
    case US_ERR_INTERNAL:
        return "internal server error";
    case US_ERR_METHOD_NOT_FOUND:
        return "method not found";
    case US_ERR_BAD_REQUEST:
        return "bad request";
    case US_ERR_NOT_AVAILABLE:
        return "not available";
    }
    return "error";
}

static void sb_error(sbuf *b, int code)
{
    sb_cstr(b, "{\"error\":{\"code\":");
    sb_int(b, code);
    sb_cstr(b, ",\"message\":\"");
    sb_cstr(b, error_message(code));
    sb_cstr(b, "\"}}");
}

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
    if (!json_is_object(params)) {
        snprintf(err, errlen, "params must be a JSON object");
        return -1;
    }
    json_t *list = json_object_get(params, "users");
    if (!json_is_array(list)) {
        snprintf(err, errlen, "'users' must be an array of user ids");
        return -1;
    }
    size_t count = json_array_size(list);
    if (count > (size_t)cfg->query.max_users_per_request) {
        snprintf(err, errlen, "too many users: %zu (limit query.max_users_per_request = %d)",
                 count, cfg->query.max_users_per_request);
        return -1;
    }
    *users = malloc((count ? count : 1) * sizeof(**users));
    if (!*users) abort();
    for (size_t i = 0; i < count; i++) {
        json_t *u = json_array_get(list, i);
        if (!json_is_string(u)) {
            snprintf(err, errlen, "users[%zu] must be a string", i);
            return -1;
        }
        size_t len = json_string_length(u);
        if (len == 0 || len > (size_t)cfg->query.max_user_id_length) {
            snprintf(err, errlen, "users[%zu] must be 1..%d bytes long", i,
                     cfg->query.max_user_id_length);
            return -1;
        }
        (*users)[i].user = json_string_value(u);
        (*users)[i].len = len;
    }
    *n = count;
    json_t *st = want_state ? json_object_get(params, "state") : NULL;
    if (st && !json_is_null(st)) {
        if (!json_is_string(st) || json_string_length(st) > US_STATE_MAX) {
            snprintf(err, errlen, "'state' must be a string of at most %d bytes", US_STATE_MAX);
            return -1;
        }
        *state = json_string_value(st);
        *state_len = json_string_length(st);
        *has_state = 1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Commands.
 * ------------------------------------------------------------------------------------------ */

static cmd_kind kind_of(const char *method)
{
    if (strcmp(method, "get_user_status") == 0) return CMD_GET;
    if (strcmp(method, "update_user_status") == 0) return CMD_UPDATE;
    if (strcmp(method, "delete_user_status") == 0) return CMD_DELETE;
    return CMD_INVALID;
}

static void command_fail(command *c, int code, const char *detail)
{
    c->kind = CMD_INVALID;
    c->error = code;
    snprintf(c->detail, sizeof(c->detail), "%s", detail);
}

/* Prepares a command from its method name and params. */
static void command_init(us_api *api, request *req, command *c, const char *method, json_t *params)
{
    memset(c, 0, sizeof(*c));
    c->acks.waiter = &req->waiter;
    c->kind = kind_of(method);
    if (c->kind == CMD_INVALID) {
        char d[160];
        snprintf(d, sizeof(d), "unknown method '%.100s'", method);
        command_fail(c, US_ERR_METHOD_NOT_FOUND, d);
        return;
    }
    if (!api->cfg->user_status.enabled) {
        command_fail(c, US_ERR_NOT_AVAILABLE, "user_status.enabled is false");
        return;
    }
    char err[160];
    if (us_api_parse_users(api->cfg, params, c->kind == CMD_UPDATE, &c->users, &c->nusers,
                           &c->state, &c->state_len, &c->has_state, err, sizeof(err)) != 0)
        command_fail(c, US_ERR_BAD_REQUEST, err);
}

/* Splits a batch body into commands: {"commands":[{"<method>":{params}} or
 * {"method":"<method>","params":{...}}, ...]}. Returns 0 or -1 with err set. */
static int batch_init(us_api *api, request *req, json_t *doc, char *err, size_t errlen)
{
    json_t *list = json_object_get(doc, "commands");
    if (!json_is_array(list)) {
        snprintf(err, errlen, "'commands' must be an array");
        return -1;
    }
    size_t n = json_array_size(list);
    if (n > (size_t)api->cfg->query.max_users_per_request) {
        snprintf(err, errlen, "too many commands: %zu (limit query.max_users_per_request = %d)",
                 n, api->cfg->query.max_users_per_request);
        return -1;
    }
    req->cmds = calloc(n ? n : 1, sizeof(command));
    if (!req->cmds) abort();
    req->ncmds = n;
    for (size_t i = 0; i < n; i++) {
        json_t *item = json_array_get(list, i);
        json_t *method = json_object_get(item, "method");
        if (json_is_object(item) && json_is_string(method)) {
            command_init(api, req, &req->cmds[i], json_string_value(method),
                         json_object_get(item, "params"));
        } else if (json_is_object(item) && json_object_size(item) == 1) {
            void *it = json_object_iter(item);
            command_init(api, req, &req->cmds[i], json_object_iter_key(it),
                         json_object_iter_value(it));
        } else {
            req->cmds[i].acks.waiter = &req->waiter;
            command_fail(&req->cmds[i], US_ERR_BAD_REQUEST,
                         "a command must be {\"<method>\":{params}}");
        }
    }
    return 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Queues the events of every update/delete command. */
static void produce_all(us_api *api, request *req)
{
    int64_t t = now_ms();
    for (size_t i = 0; i < req->ncmds; i++) {
        command *c = &req->cmds[i];
        if (c->kind != CMD_UPDATE && c->kind != CMD_DELETE) continue;
        us_metric_add(c->kind == CMD_UPDATE ? api->m_update : api->m_delete, 1);
        us_producer_send(api->producer, &c->acks,
                         c->kind == CMD_UPDATE ? US_EVENT_ACTIVE : US_EVENT_DELETE, c->users,
                         c->nusers, t, c->state, c->state_len, c->has_state);
    }
}

static us_redis *thread_redis(us_api *api)
{
    us_redis *r = pthread_getspecific(api->redis_key);
    if (r) return r;
    char err[256];
    r = us_redis_new(api->cfg, err, sizeof(err)); /* The config was checked at start-up. */
    if (!r) abort();
    pthread_setspecific(api->redis_key, r);
    pthread_mutex_lock(&api->mu);
    api->redis_all = realloc(api->redis_all, (api->nredis + 1) * sizeof(us_redis *));
    if (!api->redis_all) abort();
    api->redis_all[api->nredis++] = r;
    pthread_mutex_unlock(&api->mu);
    return r;
}

/* Writes one command's reply. Returns its error code (0 for a result). */
static int command_reply(us_api *api, command *c, sbuf *out)
{
    if (c->error) {
        sb_error(out, c->error);
        return c->error;
    }
    if (c->kind == CMD_UPDATE || c->kind == CMD_DELETE) {
        if (c->acks.failed) {
            snprintf(c->detail, sizeof(c->detail), "kafka: %zu event(s) not acknowledged: %s",
                     c->acks.failed, rd_kafka_err2str(c->acks.err));
            us_metric_add(api->m_produce_failed, c->acks.failed);
            sb_error(out, US_ERR_INTERNAL);
            return US_ERR_INTERNAL;
        }
        us_metric_add(api->m_produced, c->nusers);
        sb_cstr(out, "{\"result\":{}}");
        return 0;
    }

    const us_status *st = c->read.out;
    if (c->read.failed) {
        snprintf(c->detail, sizeof(c->detail), "%s", c->read.err);
        sb_error(out, US_ERR_INTERNAL);
        return US_ERR_INTERNAL;
    }
    us_metric_add(api->m_users_read, c->nusers);
    sb_cstr(out, "{\"result\":{\"statuses\":[");
    for (size_t i = 0; i < c->nusers; i++) {
        if (i) sb_add(out, ",", 1);
        sb_cstr(out, "{\"user\":");
        sb_json_str(out, c->users[i].user, c->users[i].len);
        if (st[i].active != US_TIME_NONE) {
            sb_cstr(out, ",\"active\":");
            sb_int(out, st[i].active);
        }
        if (st[i].online != US_TIME_NONE) {
            sb_cstr(out, ",\"online\":");
            sb_int(out, st[i].online);
        }
        if (st[i].has_state) {
            sb_cstr(out, ",\"state\":");
            sb_json_str(out, st[i].state, st[i].state_len);
        }
        sb_add(out, "}", 1);
    }
    sb_cstr(out, "]}}");
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * HTTP plumbing.
 * ------------------------------------------------------------------------------------------ */

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

static void count_error(us_api *api, int code)
{
    switch (code) {
    case US_ERR_INTERNAL:
        us_metric_add(api->m_err100, 1);
        break;
    case US_ERR_METHOD_NOT_FOUND:
        us_metric_add(api->m_err104, 1);
        break;
    case US_ERR_BAD_REQUEST:
        us_metric_add(api->m_err107, 1);
        break;
    case US_ERR_NOT_AVAILABLE:
        us_metric_add(api->m_err108, 1);
        break;
    }
}

/* Sends the reply of a request whose commands have all been produced/acknowledged. */
static enum MHD_Result finish(request *req)
{
    us_api *api = req->api;
    sbuf out = {0};
    const char *detail = NULL;
    if (req->batch) {
        sb_cstr(&out, "{\"replies\":[");
        for (size_t i = 0; i < req->ncmds; i++) {
            if (i) sb_add(&out, ",", 1);
            int code = command_reply(api, &req->cmds[i], &out);
            if (code) {
                count_error(api, code);
                if (!detail) detail = req->cmds[i].detail;
            }
        }
        sb_cstr(&out, "]}");
        return send_buffer(req->conn, MHD_HTTP_OK, out.p, out.len, "application/json", detail);
    }
    command *c = &req->cmds[0];
    int code = command_reply(api, c, &out);
    if (code) count_error(api, code);
    if (code && transport_mode(req->conn)) {
        out.len = 0;
        sb_cstr(&out, "{\"code\":");
        sb_int(&out, code);
        sb_cstr(&out, ",\"message\":\"");
        sb_cstr(&out, error_message(code));
        sb_cstr(&out, "\"}");
        return send_buffer(req->conn, transport_status(code), out.p, out.len, "application/json",
                           c->detail);
    }
    return send_buffer(req->conn, MHD_HTTP_OK, out.p, out.len, "application/json",
                       code ? c->detail : NULL);
}

/* Hands the reads of every get command to the batched reader. */
static void read_all(us_api *api, request *req)
{
    for (size_t i = 0; i < req->ncmds; i++) {
        command *c = &req->cmds[i];
        if (c->kind != CMD_GET) continue;
        us_metric_add(api->m_get, 1);
        if (c->nusers == 0) continue;
        c->read.users = c->users;
        c->read.n = c->nusers;
        c->read.out = malloc(c->nusers * sizeof(us_status));
        if (!c->read.out) abort();
        c->read.waiter = &req->waiter;
        us_ack_waiter_add(&req->waiter);
        us_reader_submit(api->reader, &c->read);
    }
}

static void wake_request(void *arg)
{
    request *req = arg;
    MHD_resume_connection(req->conn);
}

/* Runs an /api/ request whose body is complete. */
static enum MHD_Result start_api(request *req, const char *method_name)
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
    if (strcmp(method_name, "batch") == 0) {
        req->batch = 1;
        char err[160];
        if (!json_is_object(req->doc) ||
            batch_init(api, req, req->doc, err, sizeof(err)) != 0) {
            req->batch = 0;
            req->cmds = calloc(1, sizeof(command));
            if (!req->cmds) abort();
            req->ncmds = 1;
            command_fail(&req->cmds[0], US_ERR_BAD_REQUEST,
                         json_is_object(req->doc) ? err : "body must be a JSON object");
        }
    } else {
        req->cmds = calloc(1, sizeof(command));
        if (!req->cmds) abort();
        req->ncmds = 1;
        command_init(api, req, &req->cmds[0], method_name, req->doc);
    }

    produce_all(api, req);
    read_all(api, req);
    pthread_mutex_lock(&req->waiter.mu);
    if (req->waiter.pending == 0) {
        pthread_mutex_unlock(&req->waiter.mu);
        return finish(req);
    }
    req->waiter.armed = 1;
    req->waiter.wake = wake_request;
    req->waiter.arg = req;
    req->suspended = 1;
    atomic_fetch_add(&api->suspended, 1);
    MHD_suspend_connection(req->conn);
    pthread_mutex_unlock(&req->waiter.mu);
    return MHD_YES;
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
        us_ack_waiter_init(&req->waiter);
        *con_cls = req;
        us_metric_add(api->m_requests, 1);
        return MHD_YES; /* Answer on a later call: keeps keep-alive working. */
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (req->too_large || req->len + n > (size_t)api->cfg->query.max_body_size) {
            req->too_large = 1;
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
    if (req->suspended) { /* Resumed: every event is acknowledged or failed, every read done. */
        req->suspended = 0;
        atomic_fetch_sub(&api->suspended, 1);
        return finish(req);
    }

    if (strncmp(url, API_PREFIX, strlen(API_PREFIX)) == 0) {
        if (strcmp(method, "POST") != 0) return send_post_only(conn);
        if (!api_key_authorized(api->cfg, conn)) {
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
        return start_api(req, url + strlen(API_PREFIX));
    }
    if (strncmp(url, US_PROXY_PREFIX, strlen(US_PROXY_PREFIX)) == 0)
        return us_proxy_handle(api->proxy, conn, url, method, req->body, req->len, req->too_large,
                               &req->proxy_state);
    if (strcmp(method, "GET") == 0 && strcmp(url, "/metrics") == 0) {
        struct MHD_Response *resp = us_admin_metrics_response();
        enum MHD_Result rc = MHD_queue_response(conn, MHD_HTTP_OK, resp);
        MHD_destroy_response(resp);
        return rc;
    }
    if (strcmp(method, "GET") == 0 && strcmp(url, "/health") == 0) {
        char err[256];
        if (us_redis_ping(thread_redis(api), err, sizeof(err)) != 0) {
            char msg[300];
            snprintf(msg, sizeof(msg), "unhealthy: %s\n", err);
            return send_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, msg);
        }
        return send_text(conn, MHD_HTTP_OK, "{\"status\":\"ok\"}\n");
    }
    return send_text(conn, MHD_HTTP_NOT_FOUND, "not found\n");
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    request *req = *con_cls;
    if (!req) return;
    us_proxy_request_done(req->api->proxy, &req->proxy_state);
    for (size_t i = 0; i < req->ncmds; i++) {
        free(req->cmds[i].users);
        free(req->cmds[i].read.out);
    }
    free(req->cmds);
    if (req->doc) json_decref(req->doc);
    us_ack_waiter_destroy(&req->waiter);
    free(req->body);
    free(req);
    *con_cls = NULL;
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
    api->m_produced = us_metric_counter("userstatus_query_events_acknowledged_total",
                                        "Events the broker acknowledged.");
    api->m_produce_failed = us_metric_counter("userstatus_query_events_failed_total",
                                              "Events that could not be delivered to Kafka.");
    api->m_users_read = us_metric_counter("userstatus_query_users_read_total",
                                          "User statuses read from Redis.");
}

us_api *us_api_start(const us_config *cfg, us_producer *producer, char *err, size_t errlen)
{
    struct sockaddr_storage sa;
    if (us_listen_addr(cfg->address, cfg->port, &sa, err, errlen) != 0) return NULL;
    us_redis *probe = us_redis_new(cfg, err, errlen); /* Validates the Redis settings now. */
    if (!probe) return NULL;
    us_redis_free(probe);

    us_api *api = calloc(1, sizeof(*api));
    if (!api) abort();
    api->cfg = cfg;
    api->producer = producer;
    api->proxy = us_proxy_new(cfg, producer, err, errlen);
    if (!api->proxy) {
        free(api);
        return NULL;
    }
    pthread_mutex_init(&api->mu, NULL);
    pthread_key_create(&api->redis_key, NULL);
    register_metrics(api);
    us_redis_metrics_register();

    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned threads = cfg->query.threads > 0 ? (unsigned)cfg->query.threads
                                              : (unsigned)(cores > 0 ? cores : 1);
    api->reader = us_reader_new(cfg, (int)threads, err, errlen);
    if (!api->reader) {
        us_api_stop(api);
        return NULL;
    }
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG |
                     MHD_USE_ITC;
    if (sa.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    api->daemon = MHD_start_daemon(
        flags, (uint16_t)cfg->port, NULL, NULL, handle, api, MHD_OPTION_SOCK_ADDR, &sa,
        MHD_OPTION_THREAD_POOL_SIZE, threads, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)cfg->query.max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)(cfg->query.connection_timeout_ms / 1000), MHD_OPTION_NOTIFY_COMPLETED,
        completed, NULL, MHD_OPTION_LISTENING_ADDRESS_REUSE, 1u, MHD_OPTION_END);
    if (!api->daemon) {
        snprintf(err, errlen, "cannot listen on %s:%d (in use, or not an address of this host?)",
                 cfg->address, cfg->port);
        us_api_stop(api);
        return NULL;
    }
    us_info("serving the HTTP API on %s:%d with %u threads", cfg->address, cfg->port, threads);
    return api;
}

/* Stops accepting connections and waits (bounded by the produce timeout) until no /api/ request
 * is suspended: libmicrohttpd must not be stopped with suspended connections, and every request
 * in flight deserves its answer. */
static void drain_requests(us_api *api)
{
    MHD_socket listener = MHD_quiesce_daemon(api->daemon);
    if (listener != MHD_INVALID_SOCKET) close(listener);
    struct timespec pause = {0, 10 * 1000 * 1000};
    int64_t waited_ms = 0, limit_ms = api->cfg->kafka.produce_timeout_ms + 2000;
    while (atomic_load(&api->suspended) > 0 && waited_ms < limit_ms) {
        nanosleep(&pause, NULL);
        waited_ms += 10;
    }
    if (atomic_load(&api->suspended) > 0)
        us_warn("stopping with %d request(s) still waiting", atomic_load(&api->suspended));
}

void us_api_stop(us_api *api)
{
    if (!api) return;
    us_proxy_quiesce(api->proxy); /* The daemon must not stop with suspended connections. */
    if (api->daemon) drain_requests(api);
    if (api->daemon) MHD_stop_daemon(api->daemon);
    us_reader_free(api->reader);
    us_proxy_free(api->proxy);
    for (size_t i = 0; i < api->nredis; i++) us_redis_free(api->redis_all[i]);
    free(api->redis_all);
    pthread_key_delete(api->redis_key);
    pthread_mutex_destroy(&api->mu);
    free(api);
}
