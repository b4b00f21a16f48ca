/* The watch stream of userstatus-query: POST /api/watch_user_status {"users":[...]} answers
 * Server-Sent Events -- first one `status` event per user (the current status, read through the
 * command core), then a `change` event for each transition of one of those users, as the workers
 * publish them to the changes topic (schemas/changes.md), and a keep-alive comment every
 * WATCH_KEEPALIVE_MS. See docs/choices.md, "Watch stream". */
#ifndef US_WATCH_H
#define US_WATCH_H

#include "config.h"
#include "core.h"

#include <jansson.h>
#include <microhttpd.h>
#include <stddef.h>

#define US_WATCH_METHOD "watch_user_status"

typedef struct us_watch us_watch;

/* Starts the changes-topic consumer thread (it waits for the topic to exist). Returns NULL with
 * err set. */
us_watch *us_watch_new(const us_config *cfg, us_core *core, char *err, size_t errlen);

/* Ends every stream (each gets `event: bye` and the end of the response) and refuses new ones.
 * Call before stopping the HTTP daemon: no stream connection stays suspended. Accepts NULL. */
void us_watch_quiesce(us_watch *w);

/* 1 once the changes topic is followed (created when missing), so that a stream opened from now
 * misses no change; the service is not ready before (/health). 1 for NULL (changes disabled). */
int us_watch_ready(us_watch *w);

/* Number of streams whose connection is still open. */
size_t us_watch_streams(us_watch *w);

/* Stops the consumer and frees. Call after the HTTP daemon stopped. Accepts NULL. */
void us_watch_free(us_watch *w);

/* Starts a stream for a complete, authorized POST /api/watch_user_status whose body parsed into
 * params. Returns 0 when the streaming response was queued (*rc is MHD_queue_response's result),
 * else the Centrifugo error code to answer with instead -- 107 for bad params, 108 at
 * changes.watch_max_streams, 100 when shutting down -- and its reason in reason. */
int us_watch_start(us_watch *w, struct MHD_Connection *conn, json_t *params, enum MHD_Result *rc,
                   char *reason, size_t reasonlen);

#endif
