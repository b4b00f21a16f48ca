/* The Centrifugo-compatible HTTP front end of userstatus-query, on libmicrohttpd: the server API
 * (/api/<method>, /api/batch, Centrifugo v4's /api), the Centrifugo proxy endpoints (proxy.h),
 * /health and /metrics. Commands run in the command core (core.h). */
#ifndef US_API_H
#define US_API_H

#include "config.h"
#include "core.h"

#include <jansson.h>
#include <stddef.h>

typedef struct us_api us_api;
typedef struct us_producer us_producer;
typedef struct us_reader us_reader;

/* Starts the HTTP server (epoll, a pool of threads) over the core. The producer and reader are
 * only asked for /health. Returns NULL with err set. */
us_api *us_api_start(const us_config *cfg, us_core *core, us_producer *producer,
                     us_reader *reader, unsigned threads, char *err, size_t errlen);

/* Stops accepting, answers every request in flight (the core must be quiesced first, so that none
 * stays suspended), stops the daemon and frees. Accepts NULL. */
void us_api_stop(us_api *api);

/* Reads a command's params: "users", an array of strings, and with want_state an optional
 * "state" string (null = none), then checks them with us_cmd_validate. Returns 0, or the error
 * code with the reason in err. *users is malloc'd, pointing into params (free it even on
 * failure). Exposed for tests and fuzzing. */
int us_api_parse_users(const us_config *cfg, json_t *params, int want_state, us_user_ref **users,
                       size_t *n, const char **state, size_t *state_len, int *has_state,
                       char *err, size_t errlen);

/* Compares two strings in time that depends only on their lengths. Returns 1 when equal. */
int us_api_key_equal(const char *given, size_t given_len, const char *expected);

#endif
