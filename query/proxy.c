/* Implementation of the Centrifugo OSS proxy endpoints (/centrifugo/rpc, /centrifugo/refresh).
 *
 * Protocol
 * --------
 * Centrifugo POSTs JSON ({"client","transport","protocol","encoding","user", + "method","data" for
 * RPC}) with the static headers its config adds (our API key). Replies are always HTTP 200 with
 * JSON once the key is accepted:
 *   rpc      {"result":{}} after the broker acknowledged the "active" event, or
 *            {"error":{"code":400..1999,"message":...}};
 *   refresh  {"result":{"expire_at":now + proxy.online_interval}}, whatever happened to the
 *            "online" event: an empty result would disconnect the user, an error as well.
 * Centrifugo calls refresh again at expire_at, so a connected user produces one "online" event
 * per online_interval: the heartbeat.
 *
 * Waiting for the broker
 * ----------------------
 * Like /api/update_user_status, a request that produced an event runs as a call of the command
 * core (core.h) and is suspended until the call completes. Centrifugo gives up on a proxy call after
 * its timeout (1 s by default), so the call's deadline is proxy.ack_timeout: past it the request is
 * answered without the acknowledgement (RPC: error 503, temporary; refresh: the result anyway). */
#include "proxy.h"

#include "clock.h"
#include "debounce.h"
#include "http_internal.h"
#include "http_loop.h"
#include "json_writer.h"
#include "log.h"
#include "metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WARN_EVERY_MS 10000 /* Undelivered events are logged at most this often. Milliseconds. */

/* A proxy request that produced an event: its call and what the reply needs. */
typedef struct pending {
    us_proxy *proxy;
    struct MHD_Connection *conn;
    us_http_loop *loop; /* conn's (http_loop.h). */
    us_proxy_endpoint endpoint;
    json_t *doc; /* The request's JSON, which the call's user and state point into. */
    us_call *call;
    us_debounce_claim_t claim;
} pending;

struct us_proxy {
    const us_config *cfg;
    us_core *core;
    us_debounce *debounce;
    _Atomic int64_t last_warn_ms;
    us_metric *m_rpc, *m_refresh, *m_unauthorized, *m_debounced, *m_err400, *m_err403, *m_err404,
        *m_err503, *m_active_acked, *m_online_acked, *m_active_failed, *m_online_failed,
        *m_refresh_skipped;
};

/* ---------------------------------------------------------------------------------------------
 * Request parsing.
 * ------------------------------------------------------------------------------------------ */

static int parse_fail(us_proxy_call *call, int code, const char *detail)
{
    snprintf(call->detail, sizeof(call->detail), "%s", detail);
    return code;
}

int us_proxy_parse(const us_config *cfg, us_proxy_endpoint endpoint, const char *body, size_t len,
                   json_t **doc, us_proxy_call *call)
{
    memset(call, 0, sizeof(*call));
    call->endpoint = endpoint;
    json_error_t jerr;
    *doc = json_loadb(body ? body : "", len, JSON_REJECT_DUPLICATES, &jerr);
    if (!*doc) return parse_fail(call, US_PROXY_ERR_BAD_REQUEST, "body is not JSON");
    if (!json_is_object(*doc))
        return parse_fail(call, US_PROXY_ERR_BAD_REQUEST, "body must be a JSON object");
    json_t *user = json_object_get(*doc, "user");
    if (!json_is_string(user))
        return parse_fail(call, US_PROXY_ERR_BAD_REQUEST, "'user' must be a string");
    call->user = json_string_value(user);
    call->user_len = json_string_length(user);

    if (endpoint == US_PROXY_RPC) {
        /* The method decides first: an unknown method is "not found" for anyone. */
        json_t *method = json_object_get(*doc, "method");
        if (!json_is_string(method))
            return parse_fail(call, US_PROXY_ERR_BAD_REQUEST, "'method' must be a string");
        const char *m = json_string_value(method);
        size_t plen = strlen(cfg->proxy.rpc_method_prefix);
        if (json_string_length(method) != plen + strlen(US_PROXY_RPC_METHOD) ||
            strncmp(m, cfg->proxy.rpc_method_prefix, plen) != 0 ||
            strcmp(m + plen, US_PROXY_RPC_METHOD) != 0) {
            char d[160];
            snprintf(d, sizeof(d), "unknown RPC method '%.100s'", m);
            return parse_fail(call, US_PROXY_ERR_METHOD_NOT_FOUND, d);
        }
    }
    if (call->user_len == 0)
        return parse_fail(call, US_PROXY_ERR_PERMISSION_DENIED, "anonymous connection");
    if (call->user_len > (size_t)cfg->query.max_user_id_length) {
        char d[160];
        snprintf(d, sizeof(d), "'user' is longer than %d bytes (query.max_user_id_length)",
                 cfg->query.max_user_id_length);
        return parse_fail(call, US_PROXY_ERR_BAD_REQUEST, d);
    }
    if (endpoint == US_PROXY_RPC) {
        /* data is the client's RPC payload: only an object's "state" means something to us. */
        json_t *state = json_object_get(json_object_get(*doc, "data"), "state");
        if (state && !json_is_null(state)) {
            if (!json_is_string(state) || json_string_length(state) > US_STATE_MAX) {
                char d[160];
                snprintf(d, sizeof(d), "'data.state' must be a string of at most %d bytes",
                         US_STATE_MAX);
                return parse_fail(call, US_PROXY_ERR_BAD_REQUEST, d);
            }
            call->state = json_string_value(state);
            call->state_len = json_string_length(state);
            call->has_state = 1;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Replies.
 * ------------------------------------------------------------------------------------------ */

static const char *rpc_error_message(int code)
{
    switch (code) {
    case US_PROXY_ERR_BAD_REQUEST:
        return "bad request";
    case US_PROXY_ERR_PERMISSION_DENIED:
        return "permission denied";
    case US_PROXY_ERR_METHOD_NOT_FOUND:
        return "method not found";
    case US_PROXY_ERR_UNAVAILABLE:
        return "temporarily unavailable";
    }
    return "error";
}


/* Answers an RPC: {"result":{}} for code 0, else the error (503 is marked temporary, so that the
 * app knows a retry may succeed). */
static enum MHD_Result reply_rpc(us_proxy *p, struct MHD_Connection *conn, int code,
                                 const char *detail)
{
    if (code == 0) return send_copy(conn, MHD_HTTP_OK, "{\"result\":{}}", "application/json", NULL);
    us_metric *m = code == US_PROXY_ERR_PERMISSION_DENIED  ? p->m_err403
                   : code == US_PROXY_ERR_METHOD_NOT_FOUND ? p->m_err404
                   : code == US_PROXY_ERR_UNAVAILABLE      ? p->m_err503
                                                           : p->m_err400;
    us_metric_add(m, 1);
    us_jw out = {0};
    us_jw_cstr(&out, "{\"error\":");
    us_jw_error_object(&out, code, rpc_error_message(code));
    out.len--; /* Reopen the error object for "temporary". */
    if (code == US_PROXY_ERR_UNAVAILABLE) us_jw_cstr(&out, ",\"temporary\":true");
    us_jw_cstr(&out, "}}");
    return send_buffer(conn, MHD_HTTP_OK, out.p, out.len, "application/json", detail);
}

/* Answers a refresh: the connection lives another proxy.online_interval (rounded up to whole
 * seconds, so that expire_at is always in the future). */
static enum MHD_Result reply_refresh(us_proxy *p, struct MHD_Connection *conn, const char *detail)
{
    int64_t ttl_s = (p->cfg->proxy.online_interval_ms + 999) / 1000;
    us_jw out = {0};
    us_jw_cstr(&out, "{\"result\":{\"expire_at\":");
    us_jw_int(&out, us_now_ms() / 1000 + ttl_s);
    us_jw_cstr(&out, "}}");
    return send_buffer(conn, MHD_HTTP_OK, out.p, out.len, "application/json", detail);
}

/* Logs undelivered events at most once per WARN_EVERY_MS, with the running totals. */
static void warn_undelivered(us_proxy *p, const char *what)
{
    int64_t now = us_monotonic_ms();
    int64_t last = atomic_load(&p->last_warn_ms);
    if (last && now - last < WARN_EVERY_MS) return;
    if (!atomic_compare_exchange_strong(&p->last_warn_ms, &last, now)) return;
    us_warn("proxy: %s (so far: %llu active and %llu online events not acknowledged; logged at "
            "most every %d s)",
            what, (unsigned long long)us_metric_value(p->m_active_failed),
            (unsigned long long)us_metric_value(p->m_online_failed), WARN_EVERY_MS / 1000);
}

/* ---------------------------------------------------------------------------------------------
 * Waiting for the broker.
 * ------------------------------------------------------------------------------------------ */

static void pending_free(pending *pd)
{
    us_call_release(pd->call);
    if (pd->doc) json_decref(pd->doc);
    free(pd);
}

/* The core's on_wait hook (us_call_wait_fn): always suspends. */
static int suspend_pending(void *arg, int local)
{
    (void)local;
    pending *pd = arg;
    MHD_suspend_connection(pd->conn);
    return 0;
}

/* The core's done callback. */
static void resume_pending(us_call *call, void *arg)
{
    pending *pd = arg;
    us_http_loop_resume(pd->loop, pd->conn);
}

/* Sends the reply of a request whose call is complete (acknowledged, failed, or past
 * proxy.ack_timeout), then frees it. */
static enum MHD_Result finish(pending *pd)
{
    us_proxy *p = pd->proxy;
    us_cmd *c = us_call_cmd(pd->call, 0);
    int ok = c->error == 0;
    us_metric *m = pd->endpoint == US_PROXY_RPC ? (ok ? p->m_active_acked : p->m_active_failed)
                                                : (ok ? p->m_online_acked : p->m_online_failed);
    us_metric_add(m, 1);
    char detail[US_CMD_REASON_MAX + 32] = "";
    if (!ok) {
        snprintf(detail, sizeof(detail), "%s event: %s",
                 pd->endpoint == US_PROXY_RPC ? "active" : "online", c->reason);
        us_debounce_release(p->debounce, &pd->claim);
        warn_undelivered(p, detail);
    }
    struct MHD_Connection *conn = pd->conn;
    us_proxy_endpoint endpoint = pd->endpoint;
    pending_free(pd);
    if (endpoint == US_PROXY_RPC)
        return reply_rpc(p, conn, ok ? 0 : US_PROXY_ERR_UNAVAILABLE, detail);
    return reply_refresh(p, conn, detail);
}

/* Produces the event of call through the core; doc (which call's strings point into) is taken
 * over. Answers at once when the call completed already, else suspends until it does. */
static enum MHD_Result produce(us_proxy *p, struct MHD_Connection *conn, json_t *doc,
                               const us_proxy_call *call, const us_debounce_claim_t *claim,
                               void **state)
{
    pending *pd = calloc(1, sizeof(*pd));
    if (!pd) abort();
    pd->proxy = p;
    pd->conn = conn;
    pd->loop = us_http_loop_current();
    pd->endpoint = call->endpoint;
    pd->doc = doc;
    pd->claim = *claim;
    pd->call = us_call_new(p->core, 1, US_TRANSPORT_PROXY);
    us_user_ref user = {call->user, call->user_len};
    if (us_cmd_set(p->core, us_call_cmd(pd->call, 0),
                   call->endpoint == US_PROXY_RPC ? US_CMD_UPDATE : US_CMD_ONLINE, &user, 1,
                   call->state, call->state_len, call->has_state) != 0) {
        /* Not an acceptable user or state (e.g. not UTF-8): nothing to produce. */
        us_cmd *c = us_call_cmd(pd->call, 0);
        char detail[US_CMD_REASON_MAX];
        snprintf(detail, sizeof(detail), "%s", c->reason);
        us_debounce_release(p->debounce, &pd->claim);
        us_proxy_endpoint endpoint = pd->endpoint;
        pending_free(pd);
        if (endpoint == US_PROXY_RPC) return reply_rpc(p, conn, US_PROXY_ERR_BAD_REQUEST, detail);
        us_metric_add(p->m_refresh_skipped, 1);
        return reply_refresh(p, conn, detail);
    }
    if (us_call_start(pd->call, p->cfg->proxy.ack_timeout_ms, resume_pending, suspend_pending,
                      pd))
        return finish(pd);
    *state = pd; /* Handled again when resumed. */
    return MHD_YES;
}

/* ---------------------------------------------------------------------------------------------
 * Entry points.
 * ------------------------------------------------------------------------------------------ */

enum MHD_Result us_proxy_handle(us_proxy *p, struct MHD_Connection *conn, const char *url,
                                const char *method, const char *body, size_t len, int too_large,
                                void **state)
{
    if (*state) { /* Resumed: the event is acknowledged, failed or late. */
        pending *pd = *state;
        *state = NULL;
        return finish(pd);
    }
    const char *name = url + strlen(US_PROXY_PREFIX);
    us_proxy_endpoint endpoint;
    if (strcmp(name, "rpc") == 0)
        endpoint = US_PROXY_RPC;
    else if (strcmp(name, "refresh") == 0)
        endpoint = US_PROXY_REFRESH;
    else
        return send_text(conn, MHD_HTTP_NOT_FOUND, "not found\n");
    if (!p->cfg->proxy.enabled || !p->cfg->user_status.enabled)
        return send_text(conn, MHD_HTTP_NOT_FOUND,
                         "not found (proxy.enabled or user_status.enabled is false)\n");
    if (strcmp(method, "POST") != 0) return send_post_only(conn);
    us_metric_add(endpoint == US_PROXY_RPC ? p->m_rpc : p->m_refresh, 1);
    if (!api_key_authorized(p->cfg, conn)) {
        us_metric_add(p->m_unauthorized, 1);
        return send_buffer(conn, MHD_HTTP_UNAUTHORIZED, NULL, 0, NULL, NULL);
    }
    if (too_large) {
        char msg[128];
        snprintf(msg, sizeof(msg), "request body over %d bytes (query.max_body_size)\n",
                 p->cfg->query.max_body_size);
        return send_text(conn, MHD_HTTP_CONTENT_TOO_LARGE, msg);
    }

    json_t *doc;
    us_proxy_call call;
    int code = us_proxy_parse(p->cfg, endpoint, body, len, &doc, &call);
    us_debounce_claim_t claim = {.slot = (size_t)-1};
    enum MHD_Result rc;
    if (code != 0) {
        if (endpoint == US_PROXY_RPC) {
            rc = reply_rpc(p, conn, code, call.detail);
        } else {
            us_metric_add(p->m_refresh_skipped, 1);
            rc = reply_refresh(p, conn, call.detail);
        }
    } else if (endpoint == US_PROXY_RPC &&
               !us_debounce_claim(p->debounce, call.user, call.user_len, call.state, call.state_len,
                                  call.has_state, us_monotonic_ms(), &claim)) {
        us_metric_add(p->m_debounced, 1);
        rc = reply_rpc(p, conn, 0, NULL);
    } else {
        return produce(p, conn, doc, &call, &claim, state); /* Takes doc over. */
    }
    if (doc) json_decref(doc);
    return rc;
}

void us_proxy_request_done(us_proxy *p, void **state)
{
    /* A request still holding its state was resumed and then closed before it was answered (the
     * call is complete: only complete calls resume their connection). */
    if (!*state) return;
    pending_free(*state);
    *state = NULL;
}

static void register_metrics(us_proxy *p)
{
    p->m_rpc = us_metric_counter("userstatus_query_proxy_requests_total{endpoint=\"rpc\"}",
                                 "Centrifugo proxy requests received, by endpoint.");
    p->m_refresh = us_metric_counter("userstatus_query_proxy_requests_total{endpoint=\"refresh\"}",
                                     "Centrifugo proxy requests received, by endpoint.");
    p->m_unauthorized = us_metric_counter("userstatus_query_proxy_unauthorized_total",
                                          "Centrifugo proxy requests refused for a missing or "
                                          "wrong API key.");
    p->m_debounced = us_metric_counter("userstatus_query_proxy_debounced_total",
                                       "update_user_status RPCs answered without an event "
                                       "(proxy.active_debounce).");
    p->m_err400 = us_metric_counter("userstatus_query_proxy_rpc_errors_total{code=\"400\"}",
                                    "RPC proxy error replies, by code.");
    p->m_err403 = us_metric_counter("userstatus_query_proxy_rpc_errors_total{code=\"403\"}",
                                    "RPC proxy error replies, by code.");
    p->m_err404 = us_metric_counter("userstatus_query_proxy_rpc_errors_total{code=\"404\"}",
                                    "RPC proxy error replies, by code.");
    p->m_err503 = us_metric_counter("userstatus_query_proxy_rpc_errors_total{code=\"503\"}",
                                    "RPC proxy error replies, by code.");
    p->m_active_acked = us_metric_counter(
        "userstatus_query_proxy_events_acknowledged_total{type=\"active\"}",
        "Events of the proxy endpoints the broker acknowledged in time, by type.");
    p->m_online_acked = us_metric_counter(
        "userstatus_query_proxy_events_acknowledged_total{type=\"online\"}",
        "Events of the proxy endpoints the broker acknowledged in time, by type.");
    p->m_active_failed = us_metric_counter(
        "userstatus_query_proxy_events_failed_total{type=\"active\"}",
        "Events of the proxy endpoints not acknowledged within proxy.ack_timeout, by type.");
    p->m_online_failed = us_metric_counter(
        "userstatus_query_proxy_events_failed_total{type=\"online\"}",
        "Events of the proxy endpoints not acknowledged within proxy.ack_timeout, by type.");
    p->m_refresh_skipped = us_metric_counter("userstatus_query_proxy_refresh_without_event_total",
                                             "Refresh requests answered without an online event "
                                             "(anonymous or invalid user).");
}

us_proxy *us_proxy_new(const us_config *cfg, us_core *core, char *err, size_t errlen)
{
    us_proxy *p = calloc(1, sizeof(*p));
    if (!p) abort();
    p->cfg = cfg;
    p->core = core;
    p->debounce = us_debounce_new(US_DEBOUNCE_SLOTS, cfg->proxy.active_debounce_ms);
    if (!p->debounce) {
        snprintf(err, errlen, "proxy: cannot allocate the debounce table");
        free(p);
        return NULL;
    }
    register_metrics(p);
    return p;
}

void us_proxy_free(us_proxy *p)
{
    if (!p) return;
    us_debounce_free(p->debounce);
    free(p);
}
