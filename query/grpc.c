/* Implementation of the gRPC server API (Centrifugo's CentrifugoApi service) on the gRPC C core.
 *
 * Life of a call
 * --------------
 * The server has one completion queue, served by query.threads threads (default: one per core);
 * the threads that wait on the queue are also the ones that poll the sockets, so one thread would
 * cap the API at one core. For each of the four methods, and for "any other method", a few calls
 * are always requested ahead (grpc_server_request_registered_call, grpc_server_request_call); each
 * request is an `rpc` whose address is the tag. When a call arrives, the queue thread that got it
 * requests a replacement, checks the API key, unpacks the message with protobuf-c, turns it into a
 * call of the command core and starts it. The core runs the commands without blocking anyone and
 * calls on_call_done from one of its threads, which only posts the rpc back to the queue (a batch
 * of no operations); a queue thread packs the answer and starts the batch that sends it, and frees
 * the rpc when that batch completes. So an rpc is only ever touched by one thread at a time, and
 * the reader threads, shared with HTTP, never wait for gRPC's packing and writing. The unpacked
 * request owns the user id and state strings the core points at, so it lives as long as the rpc.
 *
 * Shutdown: grpc_server_shutdown_and_notify stops admitting calls, cancels the requested ones (they
 * complete with ok = 0) and sends GOAWAY. The core was quiesced first, so the calls in flight are
 * being answered; for up to STOP_GRACE_MS those answers reach their clients and idle clients close
 * their connections, then grpc_server_cancel_all_calls ends whatever is left (a call the core still
 * runs is answered, into a cancelled call, when it completes). The server reports shutdown once
 * every call is released; then the queue is drained. */
#include "grpc.h"

#include "api.h"
#include "centrifugo_api.pb-c.h"
#include "grpc_reflection.pb-c.h"
#include "log.h"
#include "metrics.h"
#include "reader.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SERVICE_PREFIX "/centrifugal.centrifugo.api.CentrifugoApi/"
#define REQUESTS_AHEAD 8        /* Calls requested in advance per method. */
#define CQ_WAKEUP_MS 200        /* Longest sleep of the queue thread: bounds noticing the end. */
#define PEM_FILE_MAX (1 << 20)  /* Bytes of a TLS certificate or key file. */
#define STOP_GRACE_MS 1000      /* At stop, time for answers in flight and idle clients to go. */
#define ERROR_TRAILER "x-userstatus-error" /* Why a call failed, for this client (ASCII). */
#define API_FILE_NAME "centrifugo_api.proto" /* As protoc names it in the descriptor. */
#define API_PACKAGE_PREFIX "centrifugal.centrifugo.api."
#define REFLECTION_SERVICE "grpc.reflection.v1alpha.ServerReflection"
#define REFLECTION_NOT_FOUND 5    /* gRPC status codes, in reflection's error_response. */
#define REFLECTION_UNIMPLEMENTED 12

/* protoc's FileDescriptorSet of schemas/centrifugo_api.proto, embedded at build time
 * (query/CMakeLists.txt, embed.cmake). */
extern const unsigned char us_api_descriptor_set[];
extern const size_t us_api_descriptor_set_len;

/* Shorter names for the generated types. */
typedef Centrifugal__Centrifugo__Api__Error PbError;
typedef Centrifugal__Centrifugo__Api__Command PbCommand;
typedef Centrifugal__Centrifugo__Api__Reply PbReply;
typedef Centrifugal__Centrifugo__Api__BatchRequest PbBatchRequest;
typedef Centrifugal__Centrifugo__Api__BatchResponse PbBatchResponse;
typedef Centrifugal__Centrifugo__Api__UpdateUserStatusRequest PbUpdateRequest;
typedef Centrifugal__Centrifugo__Api__UpdateUserStatusResponse PbUpdateResponse;
typedef Centrifugal__Centrifugo__Api__UpdateUserStatusResult PbUpdateResult;
typedef Centrifugal__Centrifugo__Api__GetUserStatusRequest PbGetRequest;
typedef Centrifugal__Centrifugo__Api__GetUserStatusResponse PbGetResponse;
typedef Centrifugal__Centrifugo__Api__GetUserStatusResult PbGetResult;
typedef Centrifugal__Centrifugo__Api__UserStatus PbUserStatus;
typedef Centrifugal__Centrifugo__Api__DeleteUserStatusRequest PbDeleteRequest;
typedef Centrifugal__Centrifugo__Api__DeleteUserStatusResponse PbDeleteResponse;
typedef Centrifugal__Centrifugo__Api__DeleteUserStatusResult PbDeleteResult;

typedef enum method_id {
    M_UPDATE,
    M_GET,
    M_DELETE,
    M_BATCH,
    M_REFLECTION, /* Registered only with grpc_api.reflection. */
    NMETHODS,
    M_OTHER = NMETHODS, /* Any method not registered: UNIMPLEMENTED. */
} method_id;

static const struct method_desc {
    const char *path;
    const char *name;
    const ProtobufCMessageDescriptor *request; /* NULL: a stream, read message by message. */
} methods[NMETHODS] = {
    [M_UPDATE] = {SERVICE_PREFIX "UpdateUserStatus", "UpdateUserStatus",
                  &centrifugal__centrifugo__api__update_user_status_request__descriptor},
    [M_GET] = {SERVICE_PREFIX "GetUserStatus", "GetUserStatus",
               &centrifugal__centrifugo__api__get_user_status_request__descriptor},
    [M_DELETE] = {SERVICE_PREFIX "DeleteUserStatus", "DeleteUserStatus",
                  &centrifugal__centrifugo__api__delete_user_status_request__descriptor},
    [M_BATCH] = {SERVICE_PREFIX "Batch", "Batch",
                 &centrifugal__centrifugo__api__batch_request__descriptor},
    [M_REFLECTION] = {"/" REFLECTION_SERVICE "/ServerReflectionInfo", "ServerReflectionInfo", NULL},
};

/* What a completion-queue tag points at: an rpc, or the server's shutdown notification. */
typedef enum tag_kind { TAG_RPC, TAG_SHUTDOWN } tag_kind;

/* Where an rpc is; each stage ends with a completion of the rpc's tag. */
typedef enum rpc_stage {
    STAGE_REQUESTED, /* Waiting for a call to arrive. */
    STAGE_RUNNING,   /* In the core; its done callback posts the rpc back to the queue. */
    STAGE_STREAMING, /* Reflection: a batch reading the next request (and sending a reply). */
    STAGE_ANSWERING, /* The answer's batch was started. */
} rpc_stage;

/* One call, from its request to its release. */
typedef struct rpc {
    tag_kind kind; /* TAG_RPC; first member: the rpc is the tag of all its operations. */
    us_grpc *g;
    method_id method;
    rpc_stage stage;
    grpc_call *call;
    gpr_timespec deadline; /* The client's; filled by the server, not used (see serve). */
    grpc_metadata_array md;
    grpc_call_details details; /* M_OTHER only. */
    grpc_byte_buffer *payload;
    ProtobufCMessage *req; /* Unpacked; owns the strings the core call points at. */
    us_call *core_call;
    int transport; /* Errors as gRPC statuses. */

    /* The answer; all of it lives until the batch completed. */
    grpc_op ops[4];
    grpc_byte_buffer *resp;
    grpc_slice status_details;
    int has_details;
    grpc_metadata trailer;
    int has_trailer;
    int cancelled;
    int sent_initial_md;
} rpc;

struct us_grpc {
    const us_config *cfg;
    us_core *core;
    us_reader *reader;
    grpc_server *server;
    grpc_completion_queue *cq;
    void *registered[NMETHODS];
    pthread_t *threads; /* Serving the completion queue. */
    size_t nthreads;    /* Started. */
    int started;        /* grpc_server_start was called. */
    tag_kind shutdown_tag;
    atomic_int shutdown_seen;
    atomic_int stopping;
    atomic_size_t live; /* rpcs allocated and not freed. */
    char *auth;         /* The whole expected authorization value, NULL: no check. */
    Grpc__Reflection__V1alpha__DescriptorSetBytes *api_files; /* With reflection. */
    int transport_default;
    us_metric *m_calls[NMETHODS + 1], *m_unauthenticated, *m_malformed;
};

/* ---------------------------------------------------------------------------------------------
 * Small helpers.
 * ------------------------------------------------------------------------------------------ */

/* Routes the gRPC core's own log lines into ours. */
static void grpc_log_to_us(gpr_log_func_args *a)
{
    us_log_level level = a->severity == GPR_LOG_SEVERITY_ERROR  ? US_LOG_ERROR
                         : a->severity == GPR_LOG_SEVERITY_INFO ? US_LOG_INFO
                                                                : US_LOG_DEBUG;
    us_log(level, "grpc: %s (%s:%d)", a->message, a->file, a->line);
}

/* The first value of metadata key, or NULL. */
static const grpc_slice *md_get(const grpc_metadata_array *md, const char *key)
{
    for (size_t i = 0; i < md->count; i++)
        if (grpc_slice_str_cmp(md->metadata[i].key, key) == 0) return &md->metadata[i].value;
    return NULL;
}

static int authorized(const us_grpc *g, const grpc_metadata_array *md)
{
    if (!g->auth) return 1;
    const grpc_slice *v = md_get(md, "authorization");
    return v && us_api_key_equal((const char *)GRPC_SLICE_START_PTR(*v), GRPC_SLICE_LENGTH(*v),
                                 g->auth);
}

static grpc_status_code transport_status(int code)
{
    switch (code) {
    case US_ERR_METHOD_NOT_FOUND:
        return GRPC_STATUS_NOT_FOUND;
    case US_ERR_BAD_REQUEST:
    case US_ERR_NOT_AVAILABLE:
        return GRPC_STATUS_INVALID_ARGUMENT;
    default:
        return GRPC_STATUS_INTERNAL;
    }
}

/* ---------------------------------------------------------------------------------------------
 * Requests and answers.
 * ------------------------------------------------------------------------------------------ */

static void rpc_free(rpc *r)
{
    us_grpc *g = r->g;
    us_call_release(r->core_call);
    if (r->req) protobuf_c_message_free_unpacked(r->req, NULL);
    if (r->payload) grpc_byte_buffer_destroy(r->payload);
    if (r->resp) grpc_byte_buffer_destroy(r->resp);
    grpc_metadata_array_destroy(&r->md);
    if (r->method == M_OTHER) grpc_call_details_destroy(&r->details);
    if (r->has_details) grpc_slice_unref(r->status_details);
    if (r->has_trailer) {
        grpc_slice_unref(r->trailer.key);
        grpc_slice_unref(r->trailer.value);
    }
    if (r->call) grpc_call_unref(r->call);
    free(r);
    atomic_fetch_sub(&g->live, 1);
}

/* Asks the server for the next call of method m. Returns 0, or -1 (logged). */
static int request_call(us_grpc *g, method_id m)
{
    rpc *r = calloc(1, sizeof(*r));
    if (!r) abort();
    r->kind = TAG_RPC;
    r->g = g;
    r->method = m;
    grpc_metadata_array_init(&r->md);
    atomic_fetch_add(&g->live, 1);
    grpc_call_error e;
    if (m == M_OTHER) {
        grpc_call_details_init(&r->details);
        e = grpc_server_request_call(g->server, &r->call, &r->details, &r->md, g->cq, g->cq, r);
    } else {
        e = grpc_server_request_registered_call(g->server, g->registered[m], &r->call,
                                                &r->deadline, &r->md,
                                                methods[m].request ? &r->payload : NULL, g->cq,
                                                g->cq, r);
    }
    if (e != GRPC_CALL_OK) {
        us_error("grpc: cannot request a call of %s: grpc_call_error %d",
                 m == M_OTHER ? "unregistered methods" : methods[m].name, (int)e);
        rpc_free(r);
        return -1;
    }
    return 0;
}

/* Adds the reason trailer: reason with every byte that is not printable ASCII replaced. */
static void set_trailer(rpc *r, const char *reason)
{
    if (!reason || !reason[0]) return;
    char clean[US_CMD_REASON_MAX];
    size_t n = 0;
    for (; reason[n] && n + 1 < sizeof(clean); n++)
        clean[n] = reason[n] >= 0x20 && reason[n] < 0x7f ? reason[n] : '?';
    r->trailer.key = grpc_slice_from_static_string(ERROR_TRAILER);
    r->trailer.value = grpc_slice_from_copied_buffer(clean, n);
    r->has_trailer = 1;
}

/* Starts the batch that answers the call: initial metadata, the message (when resp is set), the
 * status, and the wait for the call's end. The rpc is freed on the queue thread when it completes;
 * the caller must not touch it afterwards. */
static void answer(rpc *r, grpc_status_code status, const char *details)
{
    size_t n = 0;
    memset(r->ops, 0, sizeof(r->ops));
    if (!r->sent_initial_md) r->ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    if (r->resp) {
        r->ops[n].op = GRPC_OP_SEND_MESSAGE;
        r->ops[n++].data.send_message.send_message = r->resp;
    }
    grpc_op *st = &r->ops[n++];
    st->op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    st->data.send_status_from_server.status = status;
    if (details) {
        r->status_details = grpc_slice_from_copied_string(details);
        r->has_details = 1;
        st->data.send_status_from_server.status_details = &r->status_details;
    }
    if (r->has_trailer) {
        st->data.send_status_from_server.trailing_metadata_count = 1;
        st->data.send_status_from_server.trailing_metadata = &r->trailer;
    }
    r->ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    r->ops[n++].data.recv_close_on_server.cancelled = &r->cancelled;
    r->stage = STAGE_ANSWERING;
    grpc_call_error e = grpc_call_start_batch(r->call, r->ops, n, r, NULL);
    if (e != GRPC_CALL_OK) {
        us_error("grpc: cannot answer a call of %s: grpc_call_error %d",
                 r->method == M_OTHER ? "an unregistered method" : methods[r->method].name,
                 (int)e);
        rpc_free(r);
    }
}

/* Packs msg into the answer's byte buffer. */
static void set_message(rpc *r, const ProtobufCMessage *msg)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    grpc_slice s = grpc_slice_malloc(len);
    protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(s));
    r->resp = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
}

/* Fills res with the statuses of a finished get command. *mem receives the one allocation the
 * statuses need (free it after packing). */
static void fill_statuses(const us_cmd *c, PbGetResult *res, void **mem)
{
    size_t state_bytes = 0;
    for (size_t i = 0; i < c->nusers; i++)
        if (c->statuses[i].has_state) state_bytes += c->statuses[i].state_len + 1;
    char *p = malloc(c->nusers * (sizeof(PbUserStatus) + sizeof(PbUserStatus *)) + state_bytes + 1);
    if (!p) abort();
    *mem = p;
    PbUserStatus **ptrs = (PbUserStatus **)p;
    PbUserStatus *st = (PbUserStatus *)(p + c->nusers * sizeof(PbUserStatus *));
    char *states = (char *)(st + c->nusers);
    for (size_t i = 0; i < c->nusers; i++) {
        const us_status *s = &c->statuses[i];
        PbUserStatus init = CENTRIFUGAL__CENTRIFUGO__API__USER_STATUS__INIT;
        st[i] = init;
        st[i].user = (char *)c->users[i].user; /* NUL-terminated: the request's string. */
        st[i].active = s->active == US_TIME_NONE ? 0 : s->active;
        st[i].online = s->online == US_TIME_NONE ? 0 : s->online;
        if (s->has_state) {
            memcpy(states, s->state, s->state_len);
            states[s->state_len] = '\0';
            st[i].state = states;
            states += s->state_len + 1;
        }
        ptrs[i] = &st[i];
    }
    res->n_statuses = c->nusers;
    res->statuses = ptrs;
}

/* The first failed command's reason, for the trailer. */
static const char *first_reason(us_call *call)
{
    for (size_t i = 0; i < us_call_ncmds(call); i++) {
        us_cmd *c = us_call_cmd(call, i);
        if (c->error) return c->reason[0] ? c->reason : us_error_message(c->error);
    }
    return NULL;
}

/* Answers a single-command call (UpdateUserStatus, GetUserStatus, DeleteUserStatus). */
static void answer_single(rpc *r)
{
    us_cmd *c = us_call_cmd(r->core_call, 0);
    PbError err = CENTRIFUGAL__CENTRIFUGO__API__ERROR__INIT;
    if (c->error) {
        set_trailer(r, c->reason);
        if (r->transport) {
            answer(r, transport_status(c->error), us_error_message(c->error));
            return;
        }
        err.code = (uint32_t)c->error;
        err.message = (char *)us_error_message(c->error);
    }
    void *mem = NULL;
    switch (r->method) {
    case M_UPDATE: {
        PbUpdateResponse resp = CENTRIFUGAL__CENTRIFUGO__API__UPDATE_USER_STATUS_RESPONSE__INIT;
        PbUpdateResult res = CENTRIFUGAL__CENTRIFUGO__API__UPDATE_USER_STATUS_RESULT__INIT;
        if (c->error)
            resp.error = &err;
        else
            resp.result = &res;
        set_message(r, &resp.base);
        break;
    }
    case M_DELETE: {
        PbDeleteResponse resp = CENTRIFUGAL__CENTRIFUGO__API__DELETE_USER_STATUS_RESPONSE__INIT;
        PbDeleteResult res = CENTRIFUGAL__CENTRIFUGO__API__DELETE_USER_STATUS_RESULT__INIT;
        if (c->error)
            resp.error = &err;
        else
            resp.result = &res;
        set_message(r, &resp.base);
        break;
    }
    default: { /* M_GET */
        PbGetResponse resp = CENTRIFUGAL__CENTRIFUGO__API__GET_USER_STATUS_RESPONSE__INIT;
        PbGetResult res = CENTRIFUGAL__CENTRIFUGO__API__GET_USER_STATUS_RESULT__INIT;
        if (c->error) {
            resp.error = &err;
        } else {
            fill_statuses(c, &res, &mem);
            resp.result = &res;
        }
        set_message(r, &resp.base);
        break;
    }
    }
    free(mem);
    answer(r, GRPC_STATUS_OK, NULL);
}

/* Answers a Batch: one reply per command, in order; errors always in the replies. */
static void answer_batch(rpc *r)
{
    size_t n = r->core_call ? us_call_ncmds(r->core_call) : 0;
    PbBatchResponse resp = CENTRIFUGAL__CENTRIFUGO__API__BATCH_RESPONSE__INIT;
    PbReply *replies = calloc(n ? n : 1, sizeof(PbReply));
    PbReply **ptrs = calloc(n ? n : 1, sizeof(PbReply *));
    PbError *errors = calloc(n ? n : 1, sizeof(PbError));
    PbGetResult *gets = calloc(n ? n : 1, sizeof(PbGetResult));
    void **mems = calloc(n ? n : 1, sizeof(void *));
    if (!replies || !ptrs || !errors || !gets || !mems) abort();
    PbUpdateResult update_res = CENTRIFUGAL__CENTRIFUGO__API__UPDATE_USER_STATUS_RESULT__INIT;
    PbDeleteResult delete_res = CENTRIFUGAL__CENTRIFUGO__API__DELETE_USER_STATUS_RESULT__INIT;
    for (size_t i = 0; i < n; i++) {
        us_cmd *c = us_call_cmd(r->core_call, i);
        PbReply init = CENTRIFUGAL__CENTRIFUGO__API__REPLY__INIT;
        replies[i] = init;
        ptrs[i] = &replies[i];
        if (c->error) {
            PbError einit = CENTRIFUGAL__CENTRIFUGO__API__ERROR__INIT;
            errors[i] = einit;
            errors[i].code = (uint32_t)c->error;
            errors[i].message = (char *)us_error_message(c->error);
            replies[i].error = &errors[i];
        } else if (c->kind == US_CMD_UPDATE) {
            replies[i].update_user_status = &update_res;
        } else if (c->kind == US_CMD_DELETE) {
            replies[i].delete_user_status = &delete_res;
        } else {
            PbGetResult ginit = CENTRIFUGAL__CENTRIFUGO__API__GET_USER_STATUS_RESULT__INIT;
            gets[i] = ginit;
            fill_statuses(c, &gets[i], &mems[i]);
            replies[i].get_user_status = &gets[i];
        }
    }
    resp.n_replies = n;
    resp.replies = ptrs;
    set_message(r, &resp.base);
    for (size_t i = 0; i < n; i++) free(mems[i]);
    free(mems);
    free(gets);
    free(errors);
    free(ptrs);
    free(replies);
    if (n) set_trailer(r, first_reason(r->core_call));
    answer(r, GRPC_STATUS_OK, NULL);
}

/* Packs and sends the answer of a call the core completed (queue thread). */
static void answer_result(rpc *r)
{
    if (r->method == M_BATCH)
        answer_batch(r);
    else
        answer_single(r);
}

static _Thread_local int on_queue_thread; /* The calling thread serves the completion queue. */

/* The core's done callback. On a queue thread (its own flush of deferred reads) it answers at
 * once. Elsewhere (a producer, reader or deadline thread) it only posts the rpc back to the
 * completion queue (a batch of no operations completes at once): packing and sending the answer
 * there keeps that work off the reader threads, whose next Redis round trip would wait for it,
 * and spreads it over the queue threads. */
static void on_call_done(us_call *call, void *arg)
{
    (void)call;
    rpc *r = arg;
    if (on_queue_thread) {
        answer_result(r);
        return;
    }
    grpc_call_error e = grpc_call_start_batch(r->call, NULL, 0, r, NULL);
    if (e != GRPC_CALL_OK) { /* Not expected: answer from here instead. */
        us_warn("grpc: cannot post a completed call to the queue: grpc_call_error %d", (int)e);
        answer_result(r);
    }
}

/* Sets core command c from a request's users and state. Returns 0, or -1 when the command failed
 * (its error is set). */
static int set_command(us_grpc *g, us_cmd *c, us_cmd_kind kind, char **users, size_t n,
                       const char *state)
{
    us_user_ref *refs = malloc((n ? n : 1) * sizeof(*refs)); /* us_cmd_set copies the array. */
    if (!refs) abort();
    for (size_t i = 0; i < n; i++) {
        refs[i].user = users[i];
        refs[i].len = strlen(users[i]);
    }
    size_t state_len = state ? strlen(state) : 0;
    int rc = us_cmd_set(g->core, c, kind, refs, n, state_len ? state : NULL, state_len,
                        state_len > 0);
    c->kind = kind; /* A refused command still counts in its method's metrics, as for HTTP. */
    free(refs);
    return rc;
}

/* Unpacks the request message. Returns 0, or -1 with a client-safe reason in why. */
static int unpack_request(rpc *r, char *why, size_t whylen)
{
    if (!r->payload) {
        snprintf(why, whylen, "the call carries no request message");
        return -1;
    }
    grpc_byte_buffer_reader rd;
    if (!grpc_byte_buffer_reader_init(&rd, r->payload)) {
        snprintf(why, whylen, "cannot read the request message");
        return -1;
    }
    grpc_slice s = grpc_byte_buffer_reader_readall(&rd);
    grpc_byte_buffer_reader_destroy(&rd);
    size_t len = GRPC_SLICE_LENGTH(s);
    const uint8_t *data = GRPC_SLICE_START_PTR(s);
    r->req = protobuf_c_message_unpack(methods[r->method].request, NULL, len, data);
    int rc = 0;
    if (!r->req) {
        snprintf(why, whylen, "cannot parse the request as %s", methods[r->method].request->name);
        rc = -1;
    } else if (protobuf_c_message_get_packed_size(r->req) != len && memchr(data, 0, len)) {
        /* protobuf-c gives strings as C strings: a NUL byte inside a user id or state would cut
         * it short silently (another user!). Such a string makes the message pack shorter than it
         * arrived; so does a message not in canonical encoding that holds a 0 byte anyway, which
         * no protobuf library sends. Refuse both. */
        snprintf(why, whylen, "a string of the request holds a NUL byte");
        rc = -1;
    }
    grpc_slice_unref(s);
    return rc;
}

/* Turns a Batch request into core commands. Returns 0, or -1 with why set (the whole batch is
 * refused: BatchResponse has no error field). */
static int prepare_batch(rpc *r, char *why, size_t whylen)
{
    us_grpc *g = r->g;
    const PbBatchRequest *b = (const PbBatchRequest *)r->req;
    if (b->n_commands > (size_t)g->cfg->query.max_batch_commands) {
        snprintf(why, whylen, "too many commands: %zu (limit query.max_batch_commands = %d)",
                 b->n_commands, g->cfg->query.max_batch_commands);
        return -1;
    }
    if (b->n_commands == 0) return 0;
    r->core_call = us_call_new(g->core, b->n_commands, US_TRANSPORT_GRPC);
    for (size_t i = 0; i < b->n_commands; i++) {
        const PbCommand *cmd = b->commands[i];
        us_cmd *c = us_call_cmd(r->core_call, i);
        if (cmd->update_user_status)
            set_command(g, c, US_CMD_UPDATE, cmd->update_user_status->users,
                        cmd->update_user_status->n_users, cmd->update_user_status->state);
        else if (cmd->get_user_status)
            set_command(g, c, US_CMD_GET, cmd->get_user_status->users,
                        cmd->get_user_status->n_users, NULL);
        else if (cmd->delete_user_status)
            set_command(g, c, US_CMD_DELETE, cmd->delete_user_status->users,
                        cmd->delete_user_status->n_users, NULL);
        else
            us_cmd_fail(c, US_ERR_METHOD_NOT_FOUND,
                        "the command holds no update_user_status, get_user_status or "
                        "delete_user_status request");
    }
    return 0;
}

static void prepare_single(rpc *r)
{
    us_grpc *g = r->g;
    r->core_call = us_call_new(g->core, 1, US_TRANSPORT_GRPC);
    us_cmd *c = us_call_cmd(r->core_call, 0);
    if (r->method == M_UPDATE) {
        const PbUpdateRequest *q = (const PbUpdateRequest *)r->req;
        set_command(g, c, US_CMD_UPDATE, q->users, q->n_users, q->state);
    } else if (r->method == M_GET) {
        const PbGetRequest *q = (const PbGetRequest *)r->req;
        set_command(g, c, US_CMD_GET, q->users, q->n_users, NULL);
    } else {
        const PbDeleteRequest *q = (const PbDeleteRequest *)r->req;
        set_command(g, c, US_CMD_DELETE, q->users, q->n_users, NULL);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Server reflection (grpc.reflection.v1alpha), so that grpcurl works without the .proto.
 *
 * A bidirectional stream: each batch sends the reply to the previous request (none the first time)
 * and reads the next one; when the client closes its side, the status ends the call. Served: the
 * list of services, and the API's file descriptor by file name or by any symbol of its package.
 * ------------------------------------------------------------------------------------------ */

typedef Grpc__Reflection__V1alpha__ServerReflectionRequest PbReflRequest;
typedef Grpc__Reflection__V1alpha__ServerReflectionResponse PbReflResponse;
#define REQ_(x) GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_##x
#define RESP_(x) GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_##x

/* Starts the stream's next batch: the pending reply (r->resp, if any) and the read of the next
 * request into r->payload. */
static void reflection_next(rpc *r)
{
    size_t n = 0;
    memset(r->ops, 0, sizeof(r->ops));
    if (!r->sent_initial_md) {
        r->ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
        r->sent_initial_md = 1;
    }
    if (r->resp) {
        r->ops[n].op = GRPC_OP_SEND_MESSAGE;
        r->ops[n++].data.send_message.send_message = r->resp;
    }
    r->ops[n].op = GRPC_OP_RECV_MESSAGE;
    r->ops[n++].data.recv_message.recv_message = &r->payload;
    r->stage = STAGE_STREAMING;
    grpc_call_error e = grpc_call_start_batch(r->call, r->ops, n, r, NULL);
    if (e != GRPC_CALL_OK) {
        us_error("grpc: cannot continue a reflection stream: grpc_call_error %d", (int)e);
        rpc_free(r);
    }
}

/* Packs the reply to one reflection request into r->resp. */
static void reflection_reply(rpc *r, PbReflRequest *q)
{
    const us_grpc *g = r->g;
    PbReflResponse resp = GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__INIT;
    Grpc__Reflection__V1alpha__ServiceResponse services[2] = {
        GRPC__REFLECTION__V1ALPHA__SERVICE_RESPONSE__INIT,
        GRPC__REFLECTION__V1ALPHA__SERVICE_RESPONSE__INIT};
    Grpc__Reflection__V1alpha__ServiceResponse *service_ptrs[2] = {&services[0], &services[1]};
    Grpc__Reflection__V1alpha__ListServiceResponse list =
        GRPC__REFLECTION__V1ALPHA__LIST_SERVICE_RESPONSE__INIT;
    Grpc__Reflection__V1alpha__FileDescriptorResponse files =
        GRPC__REFLECTION__V1ALPHA__FILE_DESCRIPTOR_RESPONSE__INIT;
    Grpc__Reflection__V1alpha__ErrorResponse error =
        GRPC__REFLECTION__V1ALPHA__ERROR_RESPONSE__INIT;
    resp.valid_host = q->host;
    resp.original_request = q;
    const char *name = NULL; /* The file or symbol asked for. */
    switch (q->message_request_case) {
    case REQ_(LIST_SERVICES):
        services[0].name = "centrifugal.centrifugo.api.CentrifugoApi";
        services[1].name = REFLECTION_SERVICE;
        list.n_service = 2;
        list.service = service_ptrs;
        resp.message_response_case = RESP_(LIST_SERVICES_RESPONSE);
        resp.list_services_response = &list;
        break;
    case REQ_(FILE_BY_FILENAME):
    case REQ_(FILE_CONTAINING_SYMBOL):
        name = q->message_request_case == REQ_(FILE_BY_FILENAME) ? q->file_by_filename
                                                                 : q->file_containing_symbol;
        if (strcmp(name, API_FILE_NAME) == 0 ||
            strncmp(name, API_PACKAGE_PREFIX, strlen(API_PACKAGE_PREFIX)) == 0) {
            files.n_file_descriptor_proto = g->api_files->n_file;
            files.file_descriptor_proto = g->api_files->file;
            resp.message_response_case = RESP_(FILE_DESCRIPTOR_RESPONSE);
            resp.file_descriptor_response = &files;
            break;
        }
        error.error_code = REFLECTION_NOT_FOUND;
        error.error_message = "not found (only the files and symbols of centrifugo_api.proto)";
        resp.message_response_case = RESP_(ERROR_RESPONSE);
        resp.error_response = &error;
        break;
    default: /* Extensions: proto3 has none to offer. */
        error.error_code = REFLECTION_UNIMPLEMENTED;
        error.error_message = "not supported";
        resp.message_response_case = RESP_(ERROR_RESPONSE);
        resp.error_response = &error;
        break;
    }
    set_message(r, &resp.base);
}

/* A batch of a reflection stream completed (queue thread). */
static void reflection_step(rpc *r, int ok)
{
    if (r->resp) {
        grpc_byte_buffer_destroy(r->resp);
        r->resp = NULL;
    }
    if (!ok) { /* The call is over (cancelled, or the connection went away). */
        answer(r, GRPC_STATUS_CANCELLED, NULL);
        return;
    }
    if (!r->payload) { /* The client closed its side: end the call. */
        answer(r, GRPC_STATUS_OK, NULL);
        return;
    }
    grpc_byte_buffer_reader rd;
    PbReflRequest *q = NULL;
    if (grpc_byte_buffer_reader_init(&rd, r->payload)) {
        grpc_slice s = grpc_byte_buffer_reader_readall(&rd);
        grpc_byte_buffer_reader_destroy(&rd);
        q = grpc__reflection__v1alpha__server_reflection_request__unpack(
            NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
        grpc_slice_unref(s);
    }
    grpc_byte_buffer_destroy(r->payload);
    r->payload = NULL;
    if (!q) {
        us_metric_add(r->g->m_malformed, 1);
        answer(r, GRPC_STATUS_INVALID_ARGUMENT, "cannot parse a ServerReflectionRequest");
        return;
    }
    reflection_reply(r, q);
    grpc__reflection__v1alpha__server_reflection_request__free_unpacked(q, NULL);
    reflection_next(r);
}

/* A call of a registered method arrived (queue thread). */
static void serve(rpc *r)
{
    us_grpc *g = r->g;
    char why[US_CMD_REASON_MAX];
    if (!authorized(g, &r->md)) {
        us_metric_add(g->m_unauthenticated, 1);
        answer(r, GRPC_STATUS_UNAUTHENTICATED, "unauthenticated");
        return;
    }
    if (r->method == M_REFLECTION) {
        reflection_next(r);
        return;
    }
    const grpc_slice *mode = md_get(&r->md, "x-centrifugo-error-mode");
    r->transport = g->transport_default || (mode && grpc_slice_str_cmp(*mode, "transport") == 0);
    if (unpack_request(r, why, sizeof(why)) != 0) {
        us_metric_add(g->m_malformed, 1);
        answer(r, GRPC_STATUS_INVALID_ARGUMENT, why);
        return;
    }
    if (r->method == M_BATCH) {
        if (prepare_batch(r, why, sizeof(why)) != 0) {
            set_trailer(r, why);
            answer(r, GRPC_STATUS_INVALID_ARGUMENT, us_error_message(US_ERR_BAD_REQUEST));
            return;
        }
        if (!r->core_call) { /* No commands: no replies. */
            answer_batch(r);
            return;
        }
    } else {
        prepare_single(r);
    }
    /* From here on the rpc belongs to the core until its done callback posts it back. */
    r->stage = STAGE_RUNNING;
    /* The deadline is query.request_timeout, as for HTTP, not the client's (possibly shorter)
     * one: a call completed by its deadline is answered and freed at once, while its Redis read
     * may still be queued, pointing at the user ids in r->req (core.h: the strings live only
     * until the release). A client whose deadline passes first gets DEADLINE_EXCEEDED from its
     * own gRPC library; the answer then goes to a cancelled call. */
    int64_t timeout_ms = g->cfg->query.request_timeout_ms;
    if (us_call_start(r->core_call, timeout_ms, on_call_done, NULL, r) == 1) answer_result(r);
}

/* Handles one completion (queue thread). */
static void on_event(us_grpc *g, void *tag, int ok)
{
    if (*(tag_kind *)tag == TAG_SHUTDOWN) {
        atomic_store(&g->shutdown_seen, 1);
        return;
    }
    rpc *r = tag;
    if (r->stage == STAGE_RUNNING) { /* Posted by on_call_done (ok even when cancelled). */
        answer_result(r);
        return;
    }
    if (r->stage == STAGE_STREAMING) {
        reflection_step(r, ok);
        return;
    }
    if (r->stage == STAGE_ANSWERING || !ok) { /* Answered (or cancelled), or ended by shutdown. */
        rpc_free(r);
        return;
    }
    if (!atomic_load(&g->stopping)) request_call(g, r->method);
    us_metric_add(g->m_calls[r->method], 1);
    if (r->method == M_OTHER) {
        answer(r, GRPC_STATUS_UNIMPLEMENTED, "unknown service or method");
        return;
    }
    serve(r);
}

/* A queue thread is an event loop of the reader's (reader.h): the reads of the calls it starts
 * wait until the queue has nothing ready, then go to Redis in one round trip on this thread. */
static void *cq_thread(void *arg)
{
    us_grpc *g = arg;
    on_queue_thread = 1;
    us_reader_loop_begin(g->reader, NULL, NULL);
    int events = 0; /* Handled since the last flush. */
    for (;;) {
        gpr_timespec wake = events ? gpr_inf_past(GPR_CLOCK_MONOTONIC)
                                   : gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                                  gpr_time_from_millis(CQ_WAKEUP_MS, GPR_TIMESPAN));
        grpc_event ev = grpc_completion_queue_next(g->cq, wake, NULL);
        if (ev.type == GRPC_OP_COMPLETE) {
            on_event(g, ev.tag, ev.success);
            events++;
        } else if (ev.type == GRPC_QUEUE_TIMEOUT && events) {
            us_reader_flush(g->reader);
            events = 0;
        }
        if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
        if (atomic_load(&g->shutdown_seen) && atomic_load(&g->live) == 0) break;
    }
    us_reader_loop_end(g->reader);
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Start and stop.
 * ------------------------------------------------------------------------------------------ */

/* The PEM text of a TLS setting: the value itself when it is PEM, else the file it names.
 * Returns a malloc'd string, or NULL with err set. */
static char *load_pem(const char *key, const char *value, char *err, size_t errlen)
{
    if (strstr(value, "-----BEGIN")) {
        char *copy = strdup(value);
        if (!copy) abort();
        return copy;
    }
    FILE *f = fopen(value, "rb");
    if (!f) {
        snprintf(err, errlen, "config key '%s': cannot open '%s': %s", key, value,
                 strerror(errno));
        return NULL;
    }
    char *buf = malloc(PEM_FILE_MAX + 1);
    if (!buf) abort();
    size_t n = fread(buf, 1, PEM_FILE_MAX + 1, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || n > PEM_FILE_MAX || n == 0) {
        snprintf(err, errlen,
                 "config key '%s': cannot read '%s' (empty, unreadable or over %d bytes)", key,
                 value, PEM_FILE_MAX);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    if (!strstr(buf, "-----BEGIN")) {
        snprintf(err, errlen, "config key '%s': '%s' holds no PEM block", key, value);
        free(buf);
        return NULL;
    }
    return buf;
}

int us_grpc_check_config(const us_config *cfg, char *err, size_t errlen)
{
    if (!cfg->grpc_api.enabled) return 0;
    if (cfg->grpc_api.key[0] == '\0' && !cfg->api_insecure) {
        snprintf(err, errlen, "config key 'grpc_api.key' is empty; set it, or set 'api_insecure': "
                              "true to serve the gRPC API without authentication");
        return -1;
    }
    if (cfg->grpc_api.tls.enabled) {
        char *cert = load_pem("grpc_api.tls.cert_pem", cfg->grpc_api.tls.cert_pem, err, errlen);
        char *key = cert ? load_pem("grpc_api.tls.key_pem", cfg->grpc_api.tls.key_pem, err,
                                    errlen)
                         : NULL;
        free(cert);
        if (!key) return -1;
        free(key);
    }
    return 0;
}

static grpc_server_credentials *make_credentials(const us_config *cfg, char *err, size_t errlen)
{
    if (!cfg->grpc_api.tls.enabled) return grpc_insecure_server_credentials_create();
    char *cert = load_pem("grpc_api.tls.cert_pem", cfg->grpc_api.tls.cert_pem, err, errlen);
    if (!cert) return NULL;
    char *key = load_pem("grpc_api.tls.key_pem", cfg->grpc_api.tls.key_pem, err, errlen);
    if (!key) {
        free(cert);
        return NULL;
    }
    grpc_ssl_pem_key_cert_pair pair = {key, cert};
    grpc_server_credentials *creds = grpc_ssl_server_credentials_create_ex(
        NULL, &pair, 1, GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE, NULL);
    free(key);
    free(cert);
    if (!creds)
        snprintf(err, errlen, "grpc_api.tls: the gRPC core refused the certificate or key");
    return creds;
}

static void register_metrics(us_grpc *g)
{
    static const char *names[NMETHODS + 1] = {
        [M_UPDATE] = "userstatus_query_grpc_calls_total{method=\"UpdateUserStatus\"}",
        [M_GET] = "userstatus_query_grpc_calls_total{method=\"GetUserStatus\"}",
        [M_DELETE] = "userstatus_query_grpc_calls_total{method=\"DeleteUserStatus\"}",
        [M_BATCH] = "userstatus_query_grpc_calls_total{method=\"Batch\"}",
        [M_REFLECTION] = "userstatus_query_grpc_calls_total{method=\"ServerReflectionInfo\"}",
        [M_OTHER] = "userstatus_query_grpc_calls_total{method=\"unimplemented\"}",
    };
    for (int m = 0; m <= NMETHODS; m++)
        g->m_calls[m] = us_metric_counter(names[m], "gRPC calls received, by method.");
    g->m_unauthenticated =
        us_metric_counter("userstatus_query_grpc_rejected_total{reason=\"unauthenticated\"}",
                          "gRPC calls rejected before running, by reason.");
    g->m_malformed =
        us_metric_counter("userstatus_query_grpc_rejected_total{reason=\"malformed\"}",
                          "gRPC calls rejected before running, by reason.");
}

us_grpc *us_grpc_start(const us_config *cfg, us_core *core, us_reader *reader, char *err,
                       size_t errlen)
{
    if (us_grpc_check_config(cfg, err, errlen) != 0) return NULL;
    us_grpc *g = calloc(1, sizeof(*g));
    if (!g) abort();
    g->cfg = cfg;
    g->core = core;
    g->reader = reader;
    g->shutdown_tag = TAG_SHUTDOWN;
    g->transport_default = strcmp(cfg->grpc_api.error_mode, "transport") == 0;
    if (cfg->grpc_api.key[0]) {
        size_t len = strlen("apikey ") + strlen(cfg->grpc_api.key) + 1;
        g->auth = malloc(len);
        if (!g->auth) abort();
        snprintf(g->auth, len, "apikey %s", cfg->grpc_api.key);
    }
    register_metrics(g);

    gpr_set_log_function(grpc_log_to_us);
    grpc_init();
    g->cq = grpc_completion_queue_create_for_next(NULL);

    grpc_arg args[3];
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = cfg->grpc_api.max_receive_message_size;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[1].value.integer = -1;
    args[2].type = GRPC_ARG_INTEGER;
    args[2].key = GRPC_ARG_ALLOW_REUSEPORT; /* A port in use must fail, not be shared. */
    args[2].value.integer = 0;
    grpc_channel_args chargs = {sizeof(args) / sizeof(args[0]), args};
    g->server = grpc_server_create(&chargs, NULL);
    grpc_server_register_completion_queue(g->server, g->cq, NULL);
    for (int m = 0; m < NMETHODS; m++)
        if (m != M_REFLECTION || cfg->grpc_api.reflection)
            g->registered[m] = grpc_server_register_method(
                g->server, methods[m].path, NULL,
                methods[m].request ? GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER
                                   : GRPC_SRM_PAYLOAD_NONE,
                0);
    if (cfg->grpc_api.reflection) {
        g->api_files = grpc__reflection__v1alpha__descriptor_set_bytes__unpack(
            NULL, us_api_descriptor_set_len, us_api_descriptor_set);
        if (!g->api_files || g->api_files->n_file == 0) abort(); /* Generated at build time. */
    }

    char addr[300];
    const char *host = cfg->grpc_api.address;
    if (host[0] == '\0')
        snprintf(addr, sizeof(addr), "[::]:%d", cfg->grpc_api.port);
    else if (strchr(host, ':') && host[0] != '[')
        snprintf(addr, sizeof(addr), "[%s]:%d", host, cfg->grpc_api.port);
    else
        snprintf(addr, sizeof(addr), "%s:%d", host, cfg->grpc_api.port);
    grpc_server_credentials *creds = make_credentials(cfg, err, errlen);
    if (!creds) {
        us_grpc_stop(g);
        return NULL;
    }
    int bound = grpc_server_add_http2_port(g->server, addr, creds);
    grpc_server_credentials_release(creds);
    if (bound == 0) {
        snprintf(err, errlen,
                 "grpc_api: cannot listen on %s (in use, or not an address of this host?)", addr);
        us_grpc_stop(g);
        return NULL;
    }
    grpc_server_start(g->server);
    g->started = 1;
    for (int m = 0; m <= NMETHODS; m++)
        for (int i = 0; i < REQUESTS_AHEAD && (m == M_OTHER || g->registered[m]); i++)
            if (request_call(g, (method_id)m) != 0) {
                snprintf(err, errlen, "grpc_api: cannot request calls from the gRPC server");
                us_grpc_stop(g);
                return NULL;
            }
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    size_t want = cfg->query.threads > 0 ? (size_t)cfg->query.threads
                                         : (size_t)(cores > 0 ? cores : 1);
    g->threads = calloc(want, sizeof(pthread_t));
    if (!g->threads) abort();
    for (; g->nthreads < want; g->nthreads++)
        if (pthread_create(&g->threads[g->nthreads], NULL, cq_thread, g) != 0) {
            snprintf(err, errlen, "grpc_api: cannot start a completion queue thread");
            us_grpc_stop(g);
            return NULL;
        }
    us_info("serving the gRPC API on %s (%s) with %zu threads", addr,
            cfg->grpc_api.tls.enabled ? "TLS" : "plaintext", g->nthreads);
    return g;
}

void us_grpc_stop(us_grpc *g)
{
    if (!g) return;
    atomic_store(&g->stopping, 1);
    if (g->started) {
        grpc_server_shutdown_and_notify(g->server, g->cq, &g->shutdown_tag);
        /* The core was quiesced: the answers of the calls in flight are on their way. Let them
         * reach the clients (GOAWAY lets idle clients close) before cancelling what is left. */
        struct timespec pause = {0, 10 * 1000 * 1000};
        for (int waited = 0; g->nthreads > 0 && !atomic_load(&g->shutdown_seen) &&
                             waited < STOP_GRACE_MS;
             waited += 10)
            nanosleep(&pause, NULL);
        grpc_server_cancel_all_calls(g->server);
        if (g->nthreads > 0) {
            for (size_t i = 0; i < g->nthreads; i++) pthread_join(g->threads[i], NULL);
        } else { /* Start failed after the server started: drain here. */
            while (!atomic_load(&g->shutdown_seen) || atomic_load(&g->live) > 0) {
                grpc_event ev = grpc_completion_queue_next(
                    g->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
                if (ev.type != GRPC_OP_COMPLETE) break;
                on_event(g, ev.tag, ev.success);
            }
        }
    }
    if (g->server) grpc_server_destroy(g->server);
    if (g->cq) {
        grpc_completion_queue_shutdown(g->cq);
        for (;;) {
            grpc_event ev =
                grpc_completion_queue_next(g->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
            if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
        }
        grpc_completion_queue_destroy(g->cq);
        grpc_shutdown_blocking();
    }
    if (atomic_load(&g->live) > 0)
        us_warn("grpc: %zu call(s) not released at stop", (size_t)atomic_load(&g->live));
    if (g->api_files)
        grpc__reflection__v1alpha__descriptor_set_bytes__free_unpacked(g->api_files, NULL);
    free(g->threads);
    free(g->auth);
    free(g);
}
