/* The command core of userstatus-query: what get_user_status, update_user_status and
 * delete_user_status do, whichever front end (HTTP API, Centrifugo proxy, gRPC) they arrived by.
 *
 * A front end turns one request into a call of one or more commands, starts it, and answers once
 * the call is complete. Starting a call produces the events of its updates and deletes (answered
 * only after the broker acknowledged them) and hands its reads to the reader (reader.h: deferred
 * to the calling loop's next flush, or batched on a reader thread); nothing blocks the front end's
 * thread. A call completes exactly once: when its last operation finished,
 * or when its deadline passed, or when the core is quiesced for shutdown. A command whose
 * operations were not all finished by then fails with US_ERR_INTERNAL.
 *
 * Lifetimes
 * ---------
 * A call is freed when the front end released it *and* no operation (an event in librdkafka's
 * queue, a read job in the reader) still points into it; so a front end may release a call as soon
 * as it answered, even when the call completed by its deadline. us_cmd_set copies the users and
 * the state it is given: a read or an event still in flight after the front end released the call
 * (and freed its request) never points into the front end's memory.
 *
 * Threads: us_call_start returns 1 when the call is already complete (no callback follows), else
 * 0, and the done callback then runs once, on a producer, reader or deadline thread, with no core
 * lock held; the call's results may be read from then on. */
#ifndef US_CORE_H
#define US_CORE_H

#include "config.h"
#include "event.h"
#include "redis_store.h"

#include <stddef.h>
#include <stdint.h>

/* Centrifugo server API error codes. */
#define US_ERR_INTERNAL 100
#define US_ERR_METHOD_NOT_FOUND 104
#define US_ERR_BAD_REQUEST 107
#define US_ERR_NOT_AVAILABLE 108

#define US_CMD_REASON_MAX 160 /* Bytes of a command's client-safe error reason, NUL included. */

typedef enum us_cmd_kind {
    US_CMD_NONE = 0, /* Not set, or failed before it could run: see error. */
    US_CMD_GET,
    US_CMD_UPDATE,
    US_CMD_DELETE,
    US_CMD_ONLINE, /* An "online" event (the Centrifugo refresh proxy's heartbeat); no API method. */
} us_cmd_kind;

/* One command of a call. Front ends fill it with us_cmd_set/us_cmd_fail before us_call_start and
 * read error, reason and statuses after completion; the rest is the core's. */
typedef struct us_cmd {
    us_cmd_kind kind;
    int error;                      /* 0, or the code answered instead of a result. */
    char reason[US_CMD_REASON_MAX]; /* Why, for this client only: no other request's data. */
    us_user_ref *users; /* Owned, strings included (one allocation, each NUL-terminated). */
    size_t nusers;
    const char *state; /* Owned copy (state_buf), when has_state. */
    size_t state_len;
    int has_state;
    us_status *statuses; /* US_CMD_GET: nusers statuses, in the order of users. */

    /* Core-private. */
    size_t pending; /* Operations not finished yet; under the call's lock. */
    size_t failed;  /* Events the broker refused; under the call's lock. */
    int kafka_err;  /* First refusal (rd_kafka_resp_err_t). */
    int read_failed;
    char state_buf[US_STATE_MAX];
    struct us_call *call;
    void *read_job;
} us_cmd;

/* The front end a call arrived by (a label of the request-duration metric). */
typedef enum us_transport {
    US_TRANSPORT_HTTP,
    US_TRANSPORT_GRPC,
    US_TRANSPORT_PROXY,
    US_TRANSPORT_COUNT
} us_transport;

typedef struct us_core us_core;
typedef struct us_call us_call;
typedef struct us_producer us_producer;
typedef struct us_reader us_reader;

/* Called once when a started call completes (see the top of this file). */
typedef void (*us_call_done_fn)(us_call *call, void *arg);

/* Creates the core over a producer and a reader (both outlive it) and starts its deadline thread.
 * Returns NULL with err set. */
us_core *us_core_new(const us_config *cfg, us_producer *producer, us_reader *reader, char *err,
                     size_t errlen);

/* Completes every pending call now (its unfinished commands fail with US_ERR_INTERNAL,
 * "shutting down") and every call started from now on at once. Front ends then answer them. */
void us_core_quiesce(us_core *core);

/* Quiesces, waits (bounded by kafka.produce_timeout) until no operation points into a call, then
 * frees. Calls still referenced then are leaked on purpose, with a warning: librdkafka holds
 * pointers into them. Accepts NULL. */
void us_core_free(us_core *core);

/* Number of calls started and not yet complete. */
size_t us_core_pending(const us_core *core);

/* A call of ncmds commands (at least 1), all US_CMD_NONE with error 0 until set, arriving by
 * transport. Its clock starts now: each command's time to completion is observed in
 * userstatus_query_request_duration_seconds{method,transport}. */
us_call *us_call_new(us_core *core, size_t ncmds, us_transport transport);
size_t us_call_ncmds(const us_call *call);
us_cmd *us_call_cmd(us_call *call, size_t i);

/* Checks one command's input against every limit: users per request, each user id's length and
 * UTF-8, the state's length and UTF-8. Returns 0, or the error code (US_ERR_BAD_REQUEST, or
 * US_ERR_NOT_AVAILABLE when user_status is disabled) with a client-safe reason. Pure. */
int us_cmd_validate(const us_config *cfg, const us_user_ref *users, size_t n, const char *state,
                    size_t state_len, int has_state, char *reason, size_t reasonlen);

/* Sets command c from parsed input, checking every limit (users per request, user id length and
 * UTF-8, state length and UTF-8). On a violation the command fails with US_ERR_BAD_REQUEST and a
 * reason naming the offending item; returns 0 when the command is valid, -1 otherwise. The users
 * and the state are copied. */
int us_cmd_set(us_core *core, us_cmd *c, us_cmd_kind kind, const us_user_ref *users, size_t n,
               const char *state, size_t state_len, int has_state);

/* Marks c as failed before it runs: it gets code and reason (client-safe) instead of a result. */
void us_cmd_fail(us_cmd *c, int code, const char *reason);

/* A front end's wait hook (us_call_start), called under the core's lock, before done can run: a
 * front end that must suspend its connection before it can be resumed (libmicrohttpd) suspends it
 * there. local = 1 says that every operation of the call is a read deferred on the calling
 * thread's event loop (reader.h), which finishes it in that loop's next flush, on this thread: the
 * hook may then return 1 and not suspend (it checks us_call_complete when its loop runs next).
 * If the loop hands the reads to a reader thread after all, the hook is called again with
 * local = 0, and must suspend. Returns 0 when it suspended (or needs nothing). */
typedef int (*us_call_wait_fn)(void *arg, int local);

/* Starts every valid command of the call: events for updates/deletes, reads for gets. The call
 * completes within timeout_ms. Returns 1 when it is already complete (done is not called), 0 when
 * done(call, arg) will be called once. In the second case on_wait, when not NULL, is called first
 * (us_call_wait_fn). */
int us_call_start(us_call *call, int64_t timeout_ms, us_call_done_fn done,
                  us_call_wait_fn on_wait, void *arg);

/* Whether the call is complete (its results may be read). */
int us_call_complete(us_call *call);

/* The front end is finished with the call (it answered, or never started it). Must not be called
 * while a started call is incomplete. Accepts NULL. */
void us_call_release(us_call *call);

/* The method name of a kind ("get_user_status", ...), or NULL for US_CMD_NONE. */
const char *us_cmd_method(us_cmd_kind kind);

/* The kind of a method name, or US_CMD_NONE when unknown. */
us_cmd_kind us_cmd_kind_of(const char *method, size_t len);

/* Events the call's commands produced that the broker acknowledged, and that failed or were not
 * acknowledged in time (valid after completion). */
size_t us_call_events_acked(const us_call *call);

/* Centrifugo's message of an error code ("bad request", ...). */
const char *us_error_message(int code);

#endif
