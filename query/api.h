/* The Centrifugo-compatible HTTP API of userstatus-query, on libmicrohttpd. */
#ifndef US_API_H
#define US_API_H

#include "config.h"
#include "producer.h"

#include <jansson.h>
#include <stddef.h>

/* Centrifugo server API error codes. */
#define US_ERR_INTERNAL 100
#define US_ERR_METHOD_NOT_FOUND 104
#define US_ERR_BAD_REQUEST 107
#define US_ERR_NOT_AVAILABLE 108

typedef struct us_api us_api;

/* Starts the HTTP server (epoll, a pool of query.threads threads). Returns NULL with err set. */
us_api *us_api_start(const us_config *cfg, us_producer *producer, char *err, size_t errlen);

/* Stops accepting, finishes requests in flight and frees. Accepts NULL. */
void us_api_stop(us_api *api);

/* Validates a command's params and collects its "users" (pointing into params): each a string of
 * 1..max_user_id_length bytes, at most max_users_per_request of them. With want_state, also reads
 * an optional "state" string of at most 64 bytes. Returns 0, or -1 with the reason in err. *users
 * is malloc'd (free it even on failure). Exposed for tests and fuzzing. */
int us_api_parse_users(const us_config *cfg, json_t *params, int want_state, us_user_ref **users,
                       size_t *n, const char **state, size_t *state_len, int *has_state,
                       char *err, size_t errlen);

/* Compares two strings in time that depends only on their lengths. Returns 1 when equal. */
int us_api_key_equal(const char *given, size_t given_len, const char *expected);

#endif
