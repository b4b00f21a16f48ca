/* Implementation of the command core: calls, their operations and their deadlines.
 *
 * Operations
 * ----------
 * A started call counts its operations in flight: one per event queued in the producer, one per
 * read job handed to the reader (a read the reader did inline, on the caller's thread, is already
 * finished and not counted). Each finishes through a callback (op_delivered, op_read) on the
 * producer's or a reader's thread. A call completes when its count reaches zero, when its deadline
 * passes (the deadline thread), or when the core is quiesced; whichever comes first calls the
 * front end's done callback, once. Operations that finish after completion only decrement the
 * count: their results are no longer looked at.
 *
 * Memory
 * ------
 * Callbacks from librdkafka and the reader carry pointers into the call (its commands, its read
 * jobs), so a call is freed only when the front end released it and its count is zero; the last of
 * the two frees it. Calls the front end never releases would leak: every front end releases each
 * call it created, after done ran or when it never started it.
 *
 * Locking: one mutex, core->mu, guards every call's counters, flags and list links and the
 * pending list. It is never held while calling into the producer, the reader or a front end,
 * except for the on_wait hook (see core.h). */
#include "core.h"

#include "clock.h"
#include "log.h"
#include "metrics.h"
#include "producer.h"
#include "reader.h"
#include "utf8.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEADLINE_TICK_MS 10    /* Deadline thread period while calls are pending. Milliseconds. */
#define FREE_WAIT_MARGIN_MS 1000 /* us_core_free waits produce_timeout plus this. Milliseconds. */

struct us_call {
    us_core *core;
    us_transport transport;
    int64_t created_ns; /* Monotonic; for the request-duration metric. */
    size_t ncmds;
    us_cmd *cmds;
    us_read_job *jobs;   /* One per command; used by gets. */
    size_t ops;          /* Operations in flight. */
    size_t deferred;     /* Of them, reads deferred on the starting thread's loop (reader.h). */
    int local;           /* The front end waits for the loop's flush without suspending. */
    us_call_wait_fn on_wait;
    size_t acked, failed; /* Events acknowledged / refused, over all commands. */
    int started, complete, released, linked;
    int64_t deadline_ms; /* Monotonic. */
    us_call_done_fn done;
    void *arg;
    struct us_call *prev, *next; /* In core->pending while linked. */
};

struct us_core {
    const us_config *cfg;
    us_producer *producer;
    us_reader *reader;
    pthread_mutex_t mu;
    pthread_cond_t cond; /* Signalled when the pending list becomes non-empty, and on stop. */
    us_call *pending;    /* Started calls not complete yet. */
    size_t npending;
    size_t nlive; /* Calls allocated and not freed. */
    int quiesced, stop;
    pthread_t deadline_thread;
    us_metric *m_acked, *m_failed, *m_users_read, *m_read_failed, *m_timeouts, *m_in_flight;
    us_metric *m_duration[US_CMD_ONLINE + 1][US_TRANSPORT_COUNT]; /* By kind and transport. */
};

/* Upper bounds of the request-duration buckets. Seconds. */
static const double DURATION_BOUNDS[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                         0.1,    0.25,  0.5,    1,     2.5,  5,     10};


/* ---------------------------------------------------------------------------------------------
 * Names and messages.
 * ------------------------------------------------------------------------------------------ */

static const char *const METHODS[] = {
    [US_CMD_GET] = "get_user_status",
    [US_CMD_UPDATE] = "update_user_status",
    [US_CMD_DELETE] = "delete_user_status",
};

const char *us_cmd_method(us_cmd_kind kind)
{
    return kind > US_CMD_NONE && kind <= US_CMD_DELETE ? METHODS[kind] : NULL;
}

us_cmd_kind us_cmd_kind_of(const char *method, size_t len)
{
    for (int k = US_CMD_GET; k <= US_CMD_DELETE; k++)
        if (strlen(METHODS[k]) == len && memcmp(METHODS[k], method, len) == 0) return k;
    return US_CMD_NONE;
}

const char *us_error_message(int code)
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

/* ---------------------------------------------------------------------------------------------
 * Commands.
 * ------------------------------------------------------------------------------------------ */

void us_cmd_fail(us_cmd *c, int code, const char *reason)
{
    c->kind = US_CMD_NONE;
    c->error = code;
    snprintf(c->reason, sizeof(c->reason), "%s", reason);
}

int us_cmd_validate(const us_config *cfg, const us_user_ref *users, size_t n, const char *state,
                    size_t state_len, int has_state, char *reason, size_t reasonlen)
{
    if (!cfg->user_status.enabled) {
        snprintf(reason, reasonlen, "user_status.enabled is false");
        return US_ERR_NOT_AVAILABLE;
    }
    if (n > (size_t)cfg->query.max_users_per_request) {
        snprintf(reason, reasonlen, "too many users: %zu (limit query.max_users_per_request = %d)",
                 n, cfg->query.max_users_per_request);
        return US_ERR_BAD_REQUEST;
    }
    for (size_t i = 0; i < n; i++) {
        if (users[i].len == 0 || users[i].len > (size_t)cfg->query.max_user_id_length) {
            snprintf(reason, reasonlen, "users[%zu] must be 1..%d bytes long", i,
                     cfg->query.max_user_id_length);
            return US_ERR_BAD_REQUEST;
        }
        if (!us_utf8_valid(users[i].user, users[i].len)) {
            snprintf(reason, reasonlen, "users[%zu] is not valid UTF-8", i);
            return US_ERR_BAD_REQUEST;
        }
    }
    if (has_state && (state_len > US_STATE_MAX || !us_utf8_valid(state, state_len))) {
        snprintf(reason, reasonlen, "'state' must be a UTF-8 string of at most %d bytes",
                 US_STATE_MAX);
        return US_ERR_BAD_REQUEST;
    }
    return 0;
}

int us_cmd_set(us_core *core, us_cmd *c, us_cmd_kind kind, const us_user_ref *users, size_t n,
               const char *state, size_t state_len, int has_state)
{
    char reason[US_CMD_REASON_MAX];
    int code = us_cmd_validate(core->cfg, users, n, state, state_len, has_state, reason,
                               sizeof(reason));
    if (code) {
        us_cmd_fail(c, code, reason);
        return -1;
    }
    /* One allocation: the refs, then the bytes they point to, each id NUL-terminated (the gRPC
     * front end hands them to protobuf-c as C strings). */
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++) bytes += users[i].len + 1;
    free(c->users);
    c->users = malloc((n ? n : 1) * sizeof(*c->users) + bytes);
    if (!c->users) abort();
    char *mem = (char *)(c->users + (n ? n : 1));
    for (size_t i = 0; i < n; i++) {
        memcpy(mem, users[i].user, users[i].len);
        mem[users[i].len] = '\0';
        c->users[i].user = mem;
        c->users[i].len = users[i].len;
        mem += users[i].len + 1;
    }
    c->nusers = n;
    c->kind = kind;
    c->error = 0;
    c->reason[0] = '\0';
    if (has_state) memcpy(c->state_buf, state, state_len);
    c->state = has_state ? c->state_buf : NULL;
    c->state_len = has_state ? state_len : 0;
    c->has_state = has_state;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Calls.
 * ------------------------------------------------------------------------------------------ */

us_call *us_call_new(us_core *core, size_t ncmds, us_transport transport)
{
    if (ncmds == 0) ncmds = 1;
    us_call *call = calloc(1, sizeof(*call));
    if (!call) abort();
    call->core = core;
    call->transport = transport;
    call->created_ns = us_monotonic_ns();
    call->ncmds = ncmds;
    call->cmds = calloc(ncmds, sizeof(us_cmd));
    call->jobs = calloc(ncmds, sizeof(us_read_job));
    if (!call->cmds || !call->jobs) abort();
    for (size_t i = 0; i < ncmds; i++) call->cmds[i].call = call;
    pthread_mutex_lock(&core->mu);
    core->nlive++;
    pthread_mutex_unlock(&core->mu);
    return call;
}

size_t us_call_ncmds(const us_call *call)
{
    return call->ncmds;
}

us_cmd *us_call_cmd(us_call *call, size_t i)
{
    return i < call->ncmds ? &call->cmds[i] : NULL;
}

size_t us_call_events_acked(const us_call *call)
{
    return call->acked;
}

static void call_free(us_call *call)
{
    for (size_t i = 0; i < call->ncmds; i++) {
        free(call->cmds[i].users);
        free(call->cmds[i].statuses);
    }
    free(call->cmds);
    free(call->jobs);
    free(call);
}

/* Under core->mu. */
static void link_call(us_core *core, us_call *call)
{
    call->prev = NULL;
    call->next = core->pending;
    if (core->pending) core->pending->prev = call;
    core->pending = call;
    call->linked = 1;
    if (core->npending++ == 0) pthread_cond_signal(&core->cond);
}

/* Under core->mu. */
static void unlink_call(us_core *core, us_call *call)
{
    if (call->prev)
        call->prev->next = call->next;
    else
        core->pending = call->next;
    if (call->next) call->next->prev = call->prev;
    call->linked = 0;
    core->npending--;
}

/* Marks the call complete and settles each command's outcome; commands whose operations are still
 * in flight fail as timed out, or with "shutting down" when stopping. Returns the done callback to
 * run after unlocking. Under core->mu. */
static us_call_done_fn complete_locked(us_core *core, us_call *call, int stopping)
{
    call->complete = 1;
    if (call->linked) unlink_call(core, call);
    double seconds = (double)(us_monotonic_ns() - call->created_ns) / 1e9;
    for (size_t i = 0; i < call->ncmds; i++) {
        us_cmd *c = &call->cmds[i];
        us_metric *hist = c->kind != US_CMD_NONE ? core->m_duration[c->kind][call->transport] : NULL;
        if (hist) us_metric_observe(hist, seconds);
        if (c->error || c->kind == US_CMD_NONE) continue;
        char reason[US_CMD_REASON_MAX];
        if (c->pending) {
            us_cmd_fail(c, US_ERR_INTERNAL,
                        stopping                ? "shutting down"
                        : c->kind == US_CMD_GET ? "the Redis read did not finish in time"
                                                : "kafka: event(s) not acknowledged in time");
            if (c->kind != US_CMD_GET) us_metric_add(core->m_timeouts, 1);
        } else if (c->failed) {
            snprintf(reason, sizeof(reason), "kafka: %zu event(s) not acknowledged: %s", c->failed,
                     rd_kafka_err2str((rd_kafka_resp_err_t)c->kafka_err));
            us_cmd_fail(c, US_ERR_INTERNAL, reason);
        } else if (c->read_failed) {
            us_cmd_fail(c, US_ERR_INTERNAL, "reading the statuses from Redis failed");
        } else if (c->kind == US_CMD_GET) {
            us_metric_add(core->m_users_read, c->nusers);
        }
    }
    return call->done;
}

/* One operation of cmd finished. Completes the call when it was the last, frees it when it was
 * the last reference. Runs on a producer or reader thread. */
static void op_finished(us_cmd *c, rd_kafka_resp_err_t kafka_err, int read_failed)
{
    us_call *call = c->call;
    us_core *core = call->core;
    us_call_done_fn done = NULL;
    pthread_mutex_lock(&core->mu);
    c->pending--;
    call->ops--;
    if (kafka_err) {
        if (c->failed++ == 0) c->kafka_err = kafka_err;
        call->failed++;
    } else if (c->kind != US_CMD_GET) {
        call->acked++;
    }
    if (read_failed) c->read_failed = 1;
    if (!call->complete && call->started && call->ops == 0) done = complete_locked(core, call, 0);
    int free_it = call->released && call->ops == 0;
    if (free_it) core->nlive--;
    void *arg = call->arg;
    pthread_mutex_unlock(&core->mu);
    if (free_it) call_free(call);
    else if (done) done(call, arg);
}

static void op_delivered(void *opaque, rd_kafka_resp_err_t err)
{
    us_cmd *c = opaque;
    us_metric_add(err ? c->call->core->m_failed : c->call->core->m_acked, 1);
    op_finished(c, err, 0);
}

/* A deferred read goes to a reader thread after all: a front end waiting for the loop without
 * suspending must suspend now (us_call_wait_fn). */
static void op_handoff(us_read_job *job)
{
    us_call *call = ((us_cmd *)job->arg)->call;
    pthread_mutex_lock(&call->core->mu);
    if (call->local && !call->complete) {
        call->local = 0;
        call->on_wait(call->arg, 0);
    }
    pthread_mutex_unlock(&call->core->mu);
}

static void op_read(us_read_job *job)
{
    if (job->failed) us_metric_add(((us_cmd *)job->arg)->call->core->m_read_failed, 1);
    op_finished(job->arg, RD_KAFKA_RESP_ERR_NO_ERROR, job->failed);
}

static us_event_type event_type(us_cmd_kind kind)
{
    switch (kind) {
    case US_CMD_DELETE:
        return US_EVENT_DELETE;
    case US_CMD_ONLINE:
        return US_EVENT_ONLINE;
    default:
        return US_EVENT_ACTIVE;
    }
}

/* Starts the operations of one valid command. */
static void start_cmd(us_core *core, us_call *call, size_t i, int64_t now_ms)
{
    us_cmd *c = &call->cmds[i];
    if (c->nusers == 0) return;
    if (c->kind == US_CMD_GET) {
        c->statuses = malloc(c->nusers * sizeof(us_status));
        if (!c->statuses) abort();
        us_read_job *job = &call->jobs[i];
        job->users = c->users;
        job->n = c->nusers;
        job->out = c->statuses;
        job->done = op_read;
        job->arg = c;
        /* Small reads on an idle reader finish here, without an operation in flight: the call
         * may then complete at once (us_call_start returns 1). */
        if (us_reader_read_inline(core->reader, job)) return;
        job->handoff = op_handoff;
        pthread_mutex_lock(&core->mu);
        c->pending++;
        call->ops++;
        pthread_mutex_unlock(&core->mu);
        if (us_reader_defer(core->reader, job))
            call->deferred++; /* Only this thread touches it until the call is started. */
        else
            us_reader_submit(core->reader, job);
        return;
    }
    /* Count first: a delivery report may arrive before us_producer_send returns. */
    pthread_mutex_lock(&core->mu);
    c->pending += c->nusers;
    call->ops += c->nusers;
    pthread_mutex_unlock(&core->mu);
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
    size_t queued = us_producer_send(core->producer, event_type(c->kind), c->users, c->nusers,
                                     now_ms, c->state, c->state_len, c->has_state, op_delivered,
                                     c, &err);
    if (queued < c->nusers) {
        size_t lost = c->nusers - queued;
        us_warn("cannot queue %zu %s event(s): %s", lost, us_event_type_name(event_type(c->kind)),
                rd_kafka_err2str(err));
        us_metric_add(core->m_failed, lost);
        pthread_mutex_lock(&core->mu);
        c->pending -= lost;
        call->ops -= lost;
        if (c->failed == 0) c->kafka_err = err;
        c->failed += lost;
        call->failed += lost;
        pthread_mutex_unlock(&core->mu);
    }
}

int us_call_start(us_call *call, int64_t timeout_ms, us_call_done_fn done,
                  us_call_wait_fn on_wait, void *arg)
{
    us_core *core = call->core;
    pthread_mutex_lock(&core->mu);
    int quiesced = core->quiesced;
    pthread_mutex_unlock(&core->mu);
    int64_t now = us_now_ms();
    for (size_t i = 0; i < call->ncmds; i++) {
        us_cmd *c = &call->cmds[i];
        if (c->kind == US_CMD_NONE || c->error) continue;
        if (quiesced)
            us_cmd_fail(c, US_ERR_INTERNAL, "shutting down"); /* Never started. */
        else
            start_cmd(core, call, i, now);
    }

    pthread_mutex_lock(&core->mu);
    call->started = 1;
    call->done = done;
    call->arg = arg;
    call->on_wait = on_wait;
    if (call->ops == 0 || core->quiesced) {
        /* Nothing to wait for (or shutting down): complete here; done is not called. */
        complete_locked(core, call, 1);
        pthread_mutex_unlock(&core->mu);
        return 1;
    }
    call->deadline_ms = us_monotonic_ms() + timeout_ms;
    link_call(core, call);
    if (on_wait) call->local = on_wait(arg, call->deferred == call->ops) == 1;
    pthread_mutex_unlock(&core->mu);
    return 0;
}

int us_call_complete(us_call *call)
{
    pthread_mutex_lock(&call->core->mu);
    int complete = call->complete;
    pthread_mutex_unlock(&call->core->mu);
    return complete;
}

void us_call_release(us_call *call)
{
    if (!call) return;
    us_core *core = call->core;
    pthread_mutex_lock(&core->mu);
    call->released = 1;
    int free_it = call->ops == 0;
    if (free_it) core->nlive--;
    pthread_mutex_unlock(&core->mu);
    if (free_it) call_free(call);
}

/* ---------------------------------------------------------------------------------------------
 * Deadlines and shutdown.
 * ------------------------------------------------------------------------------------------ */

/* Completes, under core->mu, every pending call whose deadline passed (all of them when
 * everything is true), collecting their callbacks into the caller's arrays; returns how many. */
static size_t expire_locked(us_core *core, int everything, int64_t now, us_call **calls,
                            us_call_done_fn *fns, void **args, size_t cap)
{
    size_t n = 0;
    us_call *call = core->pending;
    while (call && n < cap) {
        us_call *next = call->next;
        if (everything || now >= call->deadline_ms) {
            calls[n] = call;
            args[n] = call->arg;
            fns[n] = complete_locked(core, call, core->quiesced);
            n++;
        }
        call = next;
    }
    return n;
}

#define EXPIRE_BATCH 64 /* Calls completed per lock hold by the deadline thread. */

static void *deadline_main(void *arg)
{
    us_core *core = arg;
    us_call *calls[EXPIRE_BATCH];
    us_call_done_fn fns[EXPIRE_BATCH];
    void *args[EXPIRE_BATCH];
    pthread_mutex_lock(&core->mu);
    while (!core->stop) {
        size_t n = expire_locked(core, core->quiesced, us_monotonic_ms(), calls, fns, args,
                                 EXPIRE_BATCH);
        if (n) {
            pthread_mutex_unlock(&core->mu);
            for (size_t i = 0; i < n; i++) fns[i](calls[i], args[i]);
            pthread_mutex_lock(&core->mu);
            continue;
        }
        if (core->npending == 0) {
            pthread_cond_wait(&core->cond, &core->mu);
            continue;
        }
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += DEADLINE_TICK_MS * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&core->cond, &core->mu, &until);
    }
    pthread_mutex_unlock(&core->mu);
    return NULL;
}

static double in_flight(void *arg)
{
    return (double)us_core_pending(arg);
}

static void register_metrics(us_core *core)
{
    /* Names with their labels, as the registry wants them (string literals). */
    static const char *const names[US_CMD_ONLINE + 1][US_TRANSPORT_COUNT] = {
#define DURATION(method, transport)                                                                \
    "userstatus_query_request_duration_seconds{method=\"" method "\",transport=\"" transport "\"}"
        [US_CMD_GET] = {DURATION("get_user_status", "http"), DURATION("get_user_status", "grpc"),
                        DURATION("get_user_status", "proxy")},
        [US_CMD_UPDATE] = {DURATION("update_user_status", "http"),
                           DURATION("update_user_status", "grpc"),
                           DURATION("update_user_status", "proxy")},
        [US_CMD_DELETE] = {DURATION("delete_user_status", "http"),
                           DURATION("delete_user_status", "grpc"),
                           DURATION("delete_user_status", "proxy")},
        [US_CMD_ONLINE] = {DURATION("online", "http"), DURATION("online", "grpc"),
                           DURATION("online", "proxy")},
#undef DURATION
    };
    for (int k = US_CMD_GET; k <= US_CMD_ONLINE; k++)
        for (int t = 0; t < US_TRANSPORT_COUNT; t++) {
            /* Only the pairs that can happen: online events come from the proxy only, and the
             * proxy produces update (RPC) and online (refresh) events only. */
            int possible = k == US_CMD_ONLINE ? t == US_TRANSPORT_PROXY
                                              : t != US_TRANSPORT_PROXY || k == US_CMD_UPDATE;
            core->m_duration[k][t] =
                possible ? us_metric_histogram(names[k][t],
                                               "Time from a complete request to its answer, by "
                                               "command and front end.",
                                               DURATION_BOUNDS,
                                               sizeof(DURATION_BOUNDS) / sizeof(DURATION_BOUNDS[0]))
                         : NULL;
        }
    core->m_in_flight = us_metric_gauge_func("userstatus_query_requests_in_flight",
                                             "Calls started and not complete yet (waiting for the "
                                             "broker or Redis).",
                                             in_flight, core);
    core->m_acked = us_metric_counter("userstatus_query_events_acknowledged_total",
                                      "Events the broker acknowledged.");
    core->m_failed = us_metric_counter("userstatus_query_events_failed_total",
                                       "Events that could not be queued or that the broker did "
                                       "not acknowledge.");
    core->m_users_read = us_metric_counter("userstatus_query_users_read_total",
                                           "User statuses read from Redis.");
    core->m_read_failed = us_metric_counter("userstatus_query_read_failures_total",
                                            "Commands whose Redis read failed.");
    core->m_timeouts = us_metric_counter("userstatus_query_commands_timed_out_total",
                                         "Update/delete commands answered with error 100 because "
                                         "their events were not all acknowledged by the deadline.");
}

us_core *us_core_new(const us_config *cfg, us_producer *producer, us_reader *reader, char *err,
                     size_t errlen)
{
    us_core *core = calloc(1, sizeof(*core));
    if (!core) abort();
    core->cfg = cfg;
    core->producer = producer;
    core->reader = reader;
    pthread_mutex_init(&core->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&core->cond, &ca);
    pthread_condattr_destroy(&ca);
    register_metrics(core);
    int rc = pthread_create(&core->deadline_thread, NULL, deadline_main, core);
    if (rc != 0) {
        snprintf(err, errlen, "core: cannot start the deadline thread: %s", strerror(rc));
        pthread_cond_destroy(&core->cond);
        pthread_mutex_destroy(&core->mu);
        free(core);
        return NULL;
    }
    return core;
}

size_t us_core_pending(const us_core *core)
{
    us_core *c = (us_core *)core;
    pthread_mutex_lock(&c->mu);
    size_t n = c->npending;
    pthread_mutex_unlock(&c->mu);
    return n;
}

void us_core_quiesce(us_core *core)
{
    if (!core) return;
    us_call *calls[EXPIRE_BATCH];
    us_call_done_fn fns[EXPIRE_BATCH];
    void *args[EXPIRE_BATCH];
    pthread_mutex_lock(&core->mu);
    core->quiesced = 1;
    for (;;) {
        size_t n = expire_locked(core, 1, 0, calls, fns, args, EXPIRE_BATCH);
        if (n == 0) break;
        pthread_mutex_unlock(&core->mu);
        for (size_t i = 0; i < n; i++) fns[i](calls[i], args[i]);
        pthread_mutex_lock(&core->mu);
    }
    pthread_mutex_unlock(&core->mu);
}

void us_core_free(us_core *core)
{
    if (!core) return;
    us_core_quiesce(core);
    int64_t until = us_monotonic_ms() + core->cfg->kafka.produce_timeout_ms + FREE_WAIT_MARGIN_MS;
    pthread_mutex_lock(&core->mu);
    while (core->nlive > 0 && us_monotonic_ms() < until) {
        pthread_mutex_unlock(&core->mu);
        us_sleep_ms(DEADLINE_TICK_MS);
        pthread_mutex_lock(&core->mu);
    }
    core->stop = 1;
    size_t leaked = core->nlive;
    pthread_cond_signal(&core->cond);
    pthread_mutex_unlock(&core->mu);
    pthread_join(core->deadline_thread, NULL);
    if (leaked) {
        /* librdkafka or the reader still hold pointers into them: leaking is the only safe
         * choice, and the core stays allocated with them. */
        us_warn("core: %zu call(s) still referenced at shutdown; not freed", leaked);
        return;
    }
    pthread_cond_destroy(&core->cond);
    pthread_mutex_destroy(&core->mu);
    free(core);
}
