/* userstatus-grpc-load: a closed-loop load generator for the gRPC API, the counterpart of wrk in
 * bench/run.py (C on the gRPC C core, so that the load generator costs about what wrk costs and
 * the HTTP/gRPC ratio measures the servers, not the clients).
 *
 *     userstatus-grpc-load --target 127.0.0.1:10000 --key KEY --users 100 \
 *         [--threads 2] [--connections 4] [--concurrency 64] [--seconds 10]
 *
 * Calls GetUserStatus with `users` user ids per call ("user0".."userN-1"); each of `concurrency`
 * slots starts its next call as soon as the previous one completed. Prints one JSON object:
 * calls, calls/s, users/s, failed calls (not status OK, or a response with an error or the wrong
 * number of statuses) and latency percentiles in milliseconds; exits 1 when a call failed. */
#include "centrifugo_api.pb-c.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define METHOD "/centrifugal.centrifugo.api.CentrifugoApi/GetUserStatus"
#define MAX_THREADS 64
#define POLL_MS 100 /* Longest wait for a completion: bounds noticing the end of the run. */

/* One call slot: the state of the call it has in flight. */
typedef struct slot {
    struct worker *w;
    grpc_channel *channel;
    grpc_call *call;
    grpc_byte_buffer *req;
    grpc_byte_buffer *resp;
    grpc_metadata_array initial_md, trailing_md;
    grpc_status_code status;
    grpc_slice details;
    double started;
} slot;

/* One thread: its completion queue, channels, slots and results. */
typedef struct worker {
    pthread_t thread;
    grpc_completion_queue *cq;
    grpc_channel **channels;
    size_t nchannels;
    slot *slots;
    size_t nslots;
    size_t calls, failed;
    double *lat_ms; /* One latency per completed call. */
    size_t nlat, caplat;
} worker;

static grpc_slice request_bytes;
static grpc_slice method_slice;
static grpc_metadata auth_md;
static double end_at;
static size_t nusers;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void start_call(slot *s)
{
    s->call = grpc_channel_create_call(s->channel, NULL, GRPC_PROPAGATE_DEFAULTS, s->w->cq,
                                       method_slice, NULL, gpr_inf_future(GPR_CLOCK_REALTIME),
                                       NULL);
    s->req = grpc_raw_byte_buffer_create(&request_bytes, 1);
    s->resp = NULL;
    grpc_metadata_array_init(&s->initial_md);
    grpc_metadata_array_init(&s->trailing_md);
    grpc_op ops[6];
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = 1;
    ops[0].data.send_initial_metadata.metadata = &auth_md;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = s->req;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &s->initial_md;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &s->resp;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &s->trailing_md;
    ops[5].data.recv_status_on_client.status = &s->status;
    ops[5].data.recv_status_on_client.status_details = &s->details;
    s->started = now_s();
    if (grpc_call_start_batch(s->call, ops, 6, s, NULL) != GRPC_CALL_OK) {
        fprintf(stderr, "grpc_call_start_batch failed\n");
        exit(1);
    }
}

#define DECODE_EVERY 256 /* Calls between two full decodes of a response (the rest: cheap check). */

/* Returns 1 when resp is a GetUserStatusResponse that has a result and no error. Every response is
 * checked cheaply: packed in field order, it starts with the `result` field (tag 0x12), not with
 * `error` (0x0a). One in DECODE_EVERY is decoded in full and must hold want statuses. (Decoding
 * every response cost the loader more CPU than the server spends on the call.) */
static int response_ok(grpc_byte_buffer *resp, size_t want, size_t nth)
{
    grpc_byte_buffer_reader rd;
    if (!resp || !grpc_byte_buffer_reader_init(&rd, resp)) return 0;
    int ok;
    if (nth % DECODE_EVERY != 0) {
        grpc_slice *s;
        ok = grpc_byte_buffer_reader_peek(&rd, &s) && GRPC_SLICE_LENGTH(*s) > 0 &&
             GRPC_SLICE_START_PTR(*s)[0] == 0x12;
        grpc_byte_buffer_reader_destroy(&rd);
        return ok;
    }
    grpc_slice s = grpc_byte_buffer_reader_readall(&rd);
    grpc_byte_buffer_reader_destroy(&rd);
    Centrifugal__Centrifugo__Api__GetUserStatusResponse *r =
        centrifugal__centrifugo__api__get_user_status_response__unpack(
            NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
    grpc_slice_unref(s);
    ok = r && !r->error && r->result && r->result->n_statuses == want;
    if (r) centrifugal__centrifugo__api__get_user_status_response__free_unpacked(r, NULL);
    return ok;
}

/* A call of slot s completed: records it; returns 1 when the slot starts another. */
static int finish_call(slot *s, int ok)
{
    worker *w = s->w;
    double t = now_s();
    w->calls++;
    if (!ok || s->status != GRPC_STATUS_OK || !response_ok(s->resp, nusers, w->calls))
        w->failed++;
    if (w->nlat == w->caplat) {
        w->caplat = w->caplat ? w->caplat * 2 : 65536;
        w->lat_ms = realloc(w->lat_ms, w->caplat * sizeof(double));
        if (!w->lat_ms) abort();
    }
    w->lat_ms[w->nlat++] = (t - s->started) * 1000;
    grpc_byte_buffer_destroy(s->req);
    if (s->resp) grpc_byte_buffer_destroy(s->resp);
    grpc_metadata_array_destroy(&s->initial_md);
    grpc_metadata_array_destroy(&s->trailing_md);
    grpc_slice_unref(s->details);
    grpc_call_unref(s->call);
    if (t >= end_at) return 0;
    start_call(s);
    return 1;
}

static void *run_worker(void *arg)
{
    worker *w = arg;
    size_t inflight = w->nslots;
    for (size_t i = 0; i < w->nslots; i++) start_call(&w->slots[i]);
    while (inflight > 0) {
        gpr_timespec wake = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                         gpr_time_from_millis(POLL_MS, GPR_TIMESPAN));
        grpc_event ev = grpc_completion_queue_next(w->cq, wake, NULL);
        if (ev.type != GRPC_OP_COMPLETE) continue;
        if (!finish_call(ev.tag, ev.success)) inflight--;
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void usage(void)
{
    fprintf(stderr, "usage: userstatus-grpc-load --target HOST:PORT --key KEY [--users N] "
                    "[--threads N] [--connections N] [--concurrency N] [--seconds N]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *target = NULL, *key = "";
    int users = 1, threads = 2, connections = 4, concurrency = 64, seconds = 10;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) usage();
        const char *a = argv[i], *v = argv[++i];
        if (strcmp(a, "--target") == 0)
            target = v;
        else if (strcmp(a, "--key") == 0)
            key = v;
        else if (strcmp(a, "--users") == 0)
            users = atoi(v);
        else if (strcmp(a, "--threads") == 0)
            threads = atoi(v);
        else if (strcmp(a, "--connections") == 0)
            connections = atoi(v);
        else if (strcmp(a, "--concurrency") == 0)
            concurrency = atoi(v);
        else if (strcmp(a, "--seconds") == 0)
            seconds = atoi(v);
        else
            usage();
    }
    if (!target || users < 1 || threads < 1 || threads > MAX_THREADS ||
        connections < threads || concurrency < connections || seconds < 1)
        usage();

    /* The request: GetUserStatusRequest{users: user0..user<users-1>}, packed once. */
    Centrifugal__Centrifugo__Api__GetUserStatusRequest req =
        CENTRIFUGAL__CENTRIFUGO__API__GET_USER_STATUS_REQUEST__INIT;
    char **ids = calloc((size_t)users, sizeof(char *));
    if (!ids) abort();
    for (int i = 0; i < users; i++) {
        ids[i] = malloc(16);
        if (!ids[i]) abort();
        snprintf(ids[i], 16, "user%d", i);
    }
    nusers = (size_t)users;
    req.n_users = nusers;
    req.users = ids;
    size_t len = protobuf_c_message_get_packed_size(&req.base);
    request_bytes = grpc_slice_malloc(len);
    protobuf_c_message_pack(&req.base, GRPC_SLICE_START_PTR(request_bytes));

    grpc_init();
    method_slice = grpc_slice_from_static_string(METHOD);
    char auth[512];
    snprintf(auth, sizeof(auth), "apikey %s", key);
    auth_md.key = grpc_slice_from_static_string("authorization");
    auth_md.value = grpc_slice_from_copied_string(auth);

    /* Each connection is its own channel with its own subchannel (TCP connection). */
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    worker *ws = calloc((size_t)threads, sizeof(worker));
    if (!ws) abort();
    end_at = now_s() + seconds;
    for (int t = 0; t < threads; t++) {
        worker *w = &ws[t];
        w->cq = grpc_completion_queue_create_for_next(NULL);
        w->nchannels = (size_t)(connections / threads + (t < connections % threads));
        w->channels = calloc(w->nchannels, sizeof(grpc_channel *));
        for (size_t c = 0; c < w->nchannels; c++) {
            grpc_arg arg = {GRPC_ARG_INTEGER, GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, {0}};
            arg.value.integer = 1;
            grpc_channel_args args = {1, &arg};
            w->channels[c] = grpc_channel_create(target, creds, &args);
        }
        w->nslots = (size_t)(concurrency / threads + (t < concurrency % threads));
        w->slots = calloc(w->nslots, sizeof(slot));
        if (!w->channels || !w->slots) abort();
        for (size_t i = 0; i < w->nslots; i++) {
            w->slots[i].w = w;
            w->slots[i].channel = w->channels[i % w->nchannels];
        }
    }
    double t0 = now_s();
    for (int t = 0; t < threads; t++) pthread_create(&ws[t].thread, NULL, run_worker, &ws[t]);
    size_t calls = 0, failed = 0, nlat = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(ws[t].thread, NULL);
        calls += ws[t].calls;
        failed += ws[t].failed;
        nlat += ws[t].nlat;
    }
    double elapsed = now_s() - t0;
    double *lat = malloc((nlat ? nlat : 1) * sizeof(double));
    if (!lat) abort();
    size_t k = 0;
    for (int t = 0; t < threads; t++) {
        memcpy(lat + k, ws[t].lat_ms, ws[t].nlat * sizeof(double));
        k += ws[t].nlat;
    }
    qsort(lat, nlat, sizeof(double), cmp_double);
    double p50 = nlat ? lat[nlat / 2] : 0, p99 = nlat ? lat[(size_t)(nlat * 0.99)] : 0;
    printf("{\"calls\": %zu, \"calls_per_s\": %.1f, \"users_per_s\": %.1f, \"failed\": %zu, "
           "\"p50_ms\": %.3f, \"p99_ms\": %.3f}\n",
           calls, calls / elapsed, calls * (double)users / elapsed, failed, p50, p99);

    for (int t = 0; t < threads; t++) {
        for (size_t c = 0; c < ws[t].nchannels; c++) grpc_channel_destroy(ws[t].channels[c]);
        grpc_completion_queue_shutdown(ws[t].cq);
        while (grpc_completion_queue_next(ws[t].cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL)
                   .type != GRPC_QUEUE_SHUTDOWN) {
        }
        grpc_completion_queue_destroy(ws[t].cq);
        free(ws[t].channels);
        free(ws[t].slots);
        free(ws[t].lat_ms);
    }
    grpc_channel_credentials_release(creds);
    grpc_slice_unref(auth_md.value);
    grpc_slice_unref(request_bytes);
    grpc_shutdown_blocking();
    for (int i = 0; i < users; i++) free(ids[i]);
    free(ids);
    free(lat);
    free(ws);
    return failed ? 1 : 0;
}
