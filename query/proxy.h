/* Centrifugo OSS proxy endpoints of userstatus-query: the RPC proxy turns the client-side
 * `centrifuge.rpc('update_user_status', {})` into an "active" event, the refresh proxy turns each
 * connection refresh into an "online" event. See docs/centrifugo.md. */
#ifndef US_PROXY_H
#define US_PROXY_H

#include "config.h"
#include "core.h"

#include <jansson.h>
#include <microhttpd.h>
#include <stddef.h>

#define US_PROXY_PREFIX "/centrifugo/"           /* Every proxy endpoint is under this path. */
#define US_PROXY_RPC_METHOD "update_user_status" /* After proxy.rpc_method_prefix. */

/* Error codes of RPC replies (Centrifugo accepts application codes in 400..1999). */
#define US_PROXY_ERR_BAD_REQUEST 400       /* Not a request as Centrifugo sends them. */
#define US_PROXY_ERR_PERMISSION_DENIED 403 /* Anonymous connection. */
#define US_PROXY_ERR_METHOD_NOT_FOUND 404  /* Another RPC method. */
#define US_PROXY_ERR_UNAVAILABLE 503       /* Kafka did not acknowledge in time; retry. */

typedef enum us_proxy_endpoint { US_PROXY_RPC, US_PROXY_REFRESH } us_proxy_endpoint;

/* One proxy request, as parsed by us_proxy_parse. Strings point into the parsed document. */
typedef struct us_proxy_call {
    us_proxy_endpoint endpoint;
    const char *user;
    size_t user_len;
    const char *state; /* RPC data.state, when has_state. */
    size_t state_len;
    int has_state;
    char detail[160]; /* Why the request produces no event. */
} us_proxy_call;

typedef struct us_proxy us_proxy;

/* Parses the body of a proxy request to endpoint (Centrifugo v5/v6 JSON: client, transport,
 * protocol, encoding, user, and for RPC method and data; other fields are ignored). *doc receives
 * the parsed JSON, which the strings of *call point into (json_decref it; NULL when the body is
 * not JSON). Returns 0 when the request must produce an event, else the RPC error code to answer
 * (US_PROXY_ERR_*) with the reason in call->detail; for refresh, non-zero only means "no event". */
int us_proxy_parse(const us_config *cfg, us_proxy_endpoint endpoint, const char *body, size_t len,
                   json_t **doc, us_proxy_call *call);

/* Creates the endpoints' state (debounce table) over the command core. Returns NULL with err
 * set. */
us_proxy *us_proxy_new(const us_config *cfg, us_core *core, char *err, size_t errlen);

/* Frees. Call after the HTTP daemon stopped. Accepts NULL. */
void us_proxy_free(us_proxy *p);

/* Handles a request under US_PROXY_PREFIX whose body (len bytes; too_large when it exceeded
 * query.max_body_size) is complete. *state is the request's slot for the proxy (NULL at first);
 * a request waiting for the broker is suspended and handled again once resumed. */
enum MHD_Result us_proxy_handle(us_proxy *p, struct MHD_Connection *conn, const char *url,
                                const char *method, const char *body, size_t len, int too_large,
                                void **state);

/* Releases *state when a request ends (from the daemon's completion callback). */
void us_proxy_request_done(us_proxy *p, void **state);

#endif
