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
 * Like /api/update_user_status, a request is suspended until the producer's delivery report
 * resumes it (api.c explains the mechanism). Centrifugo gives up on a proxy call after its timeout
 * (1 s by default), so a request waits at most proxy.ack_timeout: a deadline thread resumes
 * requests whose deadline passed and they answer without the acknowledgement. Their events are
 * still in librdkafka's queue, which holds a pointer to the request's ack group; that is why a
 * request's wait state (an "op") is allocated apart from the request and outlives it: an op whose
 * reply went out but whose events are not all reported stays in the list until the deadline
 * thread sees its pending count reach zero and frees it.
 *
 * Lock order: proxy->mu, then an op's waiter.mu. The producer's thread takes only waiter.mu, and
 * resumes a connection only after releasing it. */
#include "proxy.h"

#include "debounce.h"
#include "http_internal.h"
#include "log.h"
#include "metrics.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TICK_MS 10          /* Deadline thread period while requests wait. Milliseconds. */
#define IDLE_WAIT_MS 1000   /* Deadline thread sleep while none waits. Milliseconds. */
#define WARN_EVERY_MS 10000 /* Undelivered events are logged at most this often. Milliseconds. */
#define REPLY_MAX 160       /* Bytes of the longest JSON reply. */

/* The wait state of one request that produced an event. */
typedef struct op {
    us_proxy *proxy;
    struct MHD_Connection *conn;
    us_proxy_endpoint endpoint;
    char user[US_USER_ID_MAX]; /* For messages. */
    size_t user_len;
    us_ack_waiter waiter;
    us_ack_group group;
    us_debounce_claim_t claim;
    int64_t deadline_ms; /* Monotonic. */
    int timed_out;       /* Under waiter.mu: resumed by the deadline, not by the last report. */
    int answered;        /* Under proxy->mu: the reply went out; only the producer still uses it. */
    int linked;          /* Under proxy->mu: in proxy->ops. */
    struct op *prev, *next;
} op;

struct us_proxy {
    const us_config *cfg;
    us_producer *producer;
    us_debounce *debounce;
    pthread_mutex_t mu;
    pthread_cond_t cond; /* Signalled when an op is linked, and on stop. */
    op *ops;             /* Ops that wait for the broker or whose events are still in flight. */
    int draining;        /* us_proxy_quiesce was called: suspend nothing more. */
    int stop;
    pthread_t deadline_thread;
    _Atomic int64_t last_warn_ms;
    us_metric *m_rpc, *m_refresh, *m_unauthorized, *m_debounced, *m_err400, *m_err403, *m_err404,
        *m_err503, *m_active_acked, *m_online_acked, *m_active_failed, *m_online_failed,
        *m_refresh_skipped;
};

static int64_t clock_ms(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

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

static enum MHD_Result send_json(struct MHD_Connection *conn, const char *json, const char *detail)
{
    return send_copy(conn, MHD_HTTP_OK, json, "application/json", detail);
}

/* Answers an RPC: {"result":{}} for code 0, else the error (503 is marked temporary, so that the
 * app knows a retry may succeed). */
static enum MHD_Result reply_rpc(us_proxy *p, struct MHD_Connection *conn, int code,
                                 const char *detail)
{
    if (code == 0) return send_json(conn, "{\"result\":{}}", NULL);
    us_metric *m = code == US_PROXY_ERR_PERMISSION_DENIED  ? p->m_err403
                   : code == US_PROXY_ERR_METHOD_NOT_FOUND ? p->m_err404
                   : code == US_PROXY_ERR_UNAVAILABLE      ? p->m_err503
                                                           : p->m_err400;
    us_metric_add(m, 1);
    char json[REPLY_MAX];
    snprintf(json, sizeof(json), "{\"error\":{\"code\":%d,\"message\":\"%s\"%s}}", code,
             rpc_error_message(code),
             code == US_PROXY_ERR_UNAVAILABLE ? ",\"temporary\":true" : "");
    return send_json(conn, json, detail);
}

/* Answers a refresh: the connection lives another proxy.online_interval (rounded up to whole
 * seconds, so that expire_at is always in the future). */
static enum MHD_Result reply_refresh(us_proxy *p, struct MHD_Connection *conn, const char *detail)
{
    int64_t ttl_s = (p->cfg->proxy.online_interval_ms + 999) / 1000;
    char json[REPLY_MAX];
    snprintf(json, sizeof(json), "{\"result\":{\"expire_at\":%lld}}",
             (long long)(clock_ms(CLOCK_REALTIME) / 1000 + ttl_s));
    return send_json(conn, json, detail);
}

/* Logs undelivered events at most once per WARN_EVERY_MS, with the running totals. */
static void warn_undelivered(us_proxy *p, const char *what)
{
    int64_t now = clock_ms(CLOCK_MONOTONIC);
    int64_t last = atomic_load(&p->last_warn_ms);
    if (last && now - last < WARN_EVERY_MS) return;
    if (!atomic_compare_exchange_strong(&p->last_warn_ms, &last, now)) return;
    us_warn("proxy: %s (so far: %llu active and %llu online events not acknowledged; logged at "
            "most every %d s)",
            what, (unsigned long long)us_metric_value(p->m_active_failed),
            (unsigned long long)us_metric_value(p->m_online_failed), WARN_EVERY_MS / 1000);
}

/* ---------------------------------------------------------------------------------------------
 * Waiting for the broker: ops and the deadline thread.
 * ------------------------------------------------------------------------------------------ */

static void op_free(op *o)
{
    us_ack_waiter_destroy(&o->waiter);
    free(o);
}

/* Under p->mu. */
static void link_op(us_proxy *p, op *o)
{
    o->prev = NULL;
    o->next = p->ops;
    if (p->ops) p->ops->prev = o;
    p->ops = o;
    o->linked = 1;
}

/* Under p->mu. */
static void unlink_op(us_proxy *p, op *o)
{
    if (o->prev)
        o->prev->next = o->next;
    else
        p->ops = o->next;
    if (o->next) o->next->prev = o->prev;
    o->linked = 0;
}

/* The request is over: frees o now when none of its events is in flight, else leaves it to the
 * deadline thread. Never resumes the connection again. */
static void op_release(op *o)
{
    us_proxy *p = o->proxy;
    pthread_mutex_lock(&p->mu);
    pthread_mutex_lock(&o->waiter.mu);
    o->waiter.armed = 0;
    int in_flight = o->waiter.pending > 0;
    pthread_mutex_unlock(&o->waiter.mu);
    if (in_flight) {
        o->answered = 1;
        if (!o->linked) link_op(p, o);
        o = NULL;
    } else if (o->linked) {
        unlink_op(p, o);
    }
    pthread_mutex_unlock(&p->mu);
    if (o) op_free(o);
}

/* Called by the producer's thread, after it released waiter.mu, when the last event is reported.
 * The op cannot be freed before this runs: it is freed only once answered, and it is answered only
 * after this resume. */
static void wake_op(void *arg)
{
    op *o = arg;
    MHD_resume_connection(o->conn);
}

static void *deadline_main(void *arg)
{
    us_proxy *p = arg;
    pthread_mutex_lock(&p->mu);
    while (!p->stop) {
        int64_t now = clock_ms(CLOCK_MONOTONIC);
        op *o = p->ops;
        while (o) {
            op *next = o->next;
            pthread_mutex_lock(&o->waiter.mu);
            if (o->answered && o->waiter.pending == 0) {
                pthread_mutex_unlock(&o->waiter.mu);
                unlink_op(p, o);
                op_free(o);
                o = next;
                continue;
            }
            if (!o->answered && o->waiter.armed && (p->draining || now >= o->deadline_ms)) {
                o->waiter.armed = 0;
                o->timed_out = 1;
                MHD_resume_connection(o->conn);
            }
            pthread_mutex_unlock(&o->waiter.mu);
            o = next;
        }
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        int64_t wait_ms = p->ops ? TICK_MS : IDLE_WAIT_MS;
        until.tv_sec += wait_ms / 1000;
        until.tv_nsec += (wait_ms % 1000) * 1000000;
        if (until.tv_nsec >= 1000000000) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&p->cond, &p->mu, &until);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Produces the event of call into a new op and returns it. *suspended is 1 when the reply must
 * wait for the broker (the op is linked and armed, the connection suspended), 0 when finish() can
 * answer at once: the event could not be queued, was already reported, or the service is shutting
 * down. */
static op *produce(us_proxy *p, struct MHD_Connection *conn, const us_proxy_call *call,
                   const us_debounce_claim_t *claim, int *suspended)
{
    op *o = calloc(1, sizeof(*o));
    if (!o) abort();
    o->proxy = p;
    o->conn = conn;
    o->endpoint = call->endpoint;
    o->user_len = call->user_len;
    memcpy(o->user, call->user, call->user_len);
    o->claim = *claim;
    us_ack_waiter_init(&o->waiter);
    o->group.waiter = &o->waiter;
    us_user_ref user = {call->user, call->user_len};
    us_producer_send(p->producer, &o->group,
                     call->endpoint == US_PROXY_RPC ? US_EVENT_ACTIVE : US_EVENT_ONLINE, &user, 1,
                     clock_ms(CLOCK_REALTIME), call->state, call->state_len, call->has_state);

    pthread_mutex_lock(&p->mu);
    pthread_mutex_lock(&o->waiter.mu);
    *suspended = o->waiter.pending > 0 && !p->draining;
    if (!*suspended) {
        if (o->waiter.pending > 0) o->timed_out = 1; /* Draining: answer without the ack. */
        pthread_mutex_unlock(&o->waiter.mu);
        pthread_mutex_unlock(&p->mu);
        return o;
    }
    o->deadline_ms = clock_ms(CLOCK_MONOTONIC) + p->cfg->proxy.ack_timeout_ms;
    o->waiter.armed = 1;
    o->waiter.wake = wake_op;
    o->waiter.arg = o;
    link_op(p, o);
    MHD_suspend_connection(conn);
    pthread_mutex_unlock(&o->waiter.mu);
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->mu);
    return o;
}

/* Sends the reply of a request whose event was acknowledged, failed, or not acknowledged within
 * proxy.ack_timeout, then releases its op. */
static enum MHD_Result finish(op *o)
{
    us_proxy *p = o->proxy;
    pthread_mutex_lock(&o->waiter.mu);
    int timed_out = o->timed_out;
    size_t failed = o->group.failed;
    rd_kafka_resp_err_t err = o->group.err;
    pthread_mutex_unlock(&o->waiter.mu);

    int ok = !timed_out && failed == 0;
    us_metric *m = o->endpoint == US_PROXY_RPC ? (ok ? p->m_active_acked : p->m_active_failed)
                                               : (ok ? p->m_online_acked : p->m_online_failed);
    us_metric_add(m, 1);
    char detail[200] = "";
    if (!ok) {
        snprintf(detail, sizeof(detail), "kafka: %s event for user '%.*s' %s",
                 o->endpoint == US_PROXY_RPC ? "active" : "online", (int)o->user_len, o->user,
                 timed_out ? "not acknowledged within proxy.ack_timeout" : rd_kafka_err2str(err));
        us_debounce_release(p->debounce, &o->claim);
        warn_undelivered(p, detail);
    }
    struct MHD_Connection *conn = o->conn;
    us_proxy_endpoint endpoint = o->endpoint;
    op_release(o);
    if (endpoint == US_PROXY_RPC)
        return reply_rpc(p, conn, ok ? 0 : US_PROXY_ERR_UNAVAILABLE, detail);
    return reply_refresh(p, conn, detail);
}

/* ---------------------------------------------------------------------------------------------
 * Entry points.
 * ------------------------------------------------------------------------------------------ */

enum MHD_Result us_proxy_handle(us_proxy *p, struct MHD_Connection *conn, const char *url,
                                const char *method, const char *body, size_t len, int too_large,
                                void **state)
{
    if (*state) { /* Resumed: the event is acknowledged, failed or late. */
        op *o = *state;
        *state = NULL;
        return finish(o);
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
    enum MHD_Result rc = MHD_YES;
    us_debounce_claim_t claim = {.slot = (size_t)-1};
    if (code != 0) {
        if (endpoint == US_PROXY_RPC) {
            rc = reply_rpc(p, conn, code, call.detail);
        } else {
            us_metric_add(p->m_refresh_skipped, 1);
            rc = reply_refresh(p, conn, call.detail);
        }
    } else if (endpoint == US_PROXY_RPC &&
               !us_debounce_claim(p->debounce, call.user, call.user_len, call.state, call.state_len,
                                  call.has_state, clock_ms(CLOCK_MONOTONIC), &claim)) {
        us_metric_add(p->m_debounced, 1);
        rc = reply_rpc(p, conn, 0, NULL);
    } else {
        int suspended;
        op *o = produce(p, conn, &call, &claim, &suspended);
        if (suspended)
            *state = o; /* Handled again when resumed. */
        else
            rc = finish(o);
    }
    if (doc) json_decref(doc);
    return rc;
}

void us_proxy_request_done(us_proxy *p, void **state)
{
    if (!*state) return;
    op_release(*state);
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

us_proxy *us_proxy_new(const us_config *cfg, us_producer *producer, char *err, size_t errlen)
{
    us_proxy *p = calloc(1, sizeof(*p));
    if (!p) abort();
    p->cfg = cfg;
    p->producer = producer;
    p->debounce = us_debounce_new(US_DEBOUNCE_SLOTS, cfg->proxy.active_debounce_ms);
    pthread_mutex_init(&p->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&p->cond, &ca);
    pthread_condattr_destroy(&ca);
    register_metrics(p);
    int rc = pthread_create(&p->deadline_thread, NULL, deadline_main, p);
    if (rc != 0) {
        snprintf(err, errlen, "proxy: cannot start the deadline thread: %s", strerror(rc));
        pthread_cond_destroy(&p->cond);
        pthread_mutex_destroy(&p->mu);
        us_debounce_free(p->debounce);
        free(p);
        return NULL;
    }
    return p;
}

/* Returns 1 when some request still waits for its reply. Under p->mu. */
static int any_waiting(us_proxy *p)
{
    for (op *o = p->ops; o; o = o->next)
        if (!o->answered) return 1;
    return 0;
}

void us_proxy_quiesce(us_proxy *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->draining = 1;
    pthread_cond_signal(&p->cond);
    /* The deadline thread resumes every waiting request on its next pass; the daemon's threads
     * then answer them. Bounded in case the daemon no longer runs them. */
    for (int i = 0; any_waiting(p) && i < 200; i++) {
        pthread_mutex_unlock(&p->mu);
        struct timespec ts = {0, TICK_MS * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
}

void us_proxy_free(us_proxy *p)
{
    if (!p) return;
    us_proxy_quiesce(p);
    /* The deadline thread frees ops as their last report arrives; the producer reports every
     * event within kafka.produce_timeout. */
    int64_t until = clock_ms(CLOCK_MONOTONIC) + p->cfg->kafka.produce_timeout_ms + 1000;
    pthread_mutex_lock(&p->mu);
    while (p->ops && clock_ms(CLOCK_MONOTONIC) < until) {
        pthread_mutex_unlock(&p->mu);
        struct timespec ts = {0, TICK_MS * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
        pthread_mutex_lock(&p->mu);
    }
    p->stop = 1;
    pthread_cond_signal(&p->cond);
    int leaked = p->ops != NULL;
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->deadline_thread, NULL);
    if (leaked) {
        /* librdkafka still holds pointers into them: leaking is the only safe choice. */
        us_warn("proxy: events still unreported at shutdown; their wait state is not freed");
        return;
    }
    pthread_cond_destroy(&p->cond);
    pthread_mutex_destroy(&p->mu);
    us_debounce_free(p->debounce);
    free(p);
}
