/* HTTP helpers shared by the handlers of userstatus-query (api.c, proxy.c): replies and the API key
 * check. Internal to query/: static inline, no exported names. */
#ifndef US_HTTP_INTERNAL_H
#define US_HTTP_INTERNAL_H

#include "api.h"
#include "config.h"

#include <microhttpd.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Queues a reply. body is malloc'd and taken over (NULL for an empty body); content_type and
 * detail (the X-Userstatus-Error header) may be NULL. */
static inline enum MHD_Result send_buffer(struct MHD_Connection *conn, unsigned status, char *body,
                                          size_t len, const char *content_type, const char *detail)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        len, body, body ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (content_type) MHD_add_response_header(resp, "Content-Type", content_type);
    if (detail && detail[0]) MHD_add_response_header(resp, "X-Userstatus-Error", detail);
    enum MHD_Result rc = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return rc;
}

/* Queues a reply whose body is a copy of text. */
static inline enum MHD_Result send_copy(struct MHD_Connection *conn, unsigned status,
                                        const char *text, const char *content_type,
                                        const char *detail)
{
    size_t len = strlen(text);
    char *copy = malloc(len + 1);
    if (!copy) abort();
    memcpy(copy, text, len + 1);
    return send_buffer(conn, status, copy, len, content_type, detail);
}

/* Queues a reply whose body is a copy of text, as text/plain. */
static inline enum MHD_Result send_text(struct MHD_Connection *conn, unsigned status,
                                        const char *text)
{
    return send_copy(conn, status, text, "text/plain; charset=utf-8", NULL);
}

/* Queues HTTP 405 with "Allow: POST". */
static inline enum MHD_Result send_post_only(struct MHD_Connection *conn)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    MHD_add_response_header(resp, "Allow", "POST");
    enum MHD_Result rc = MHD_queue_response(conn, MHD_HTTP_METHOD_NOT_ALLOWED, resp);
    MHD_destroy_response(resp);
    return rc;
}

/* Looks up one request value with its full length: a value may hold NUL bytes ("X-API-Key: key\0x",
 * "?api_key=key%00x"), and the key compared must be all of it, not the part before the first NUL.
 * Returns NULL when absent. */
static inline const char *lookup_value(struct MHD_Connection *conn, enum MHD_ValueKind kind,
                                       const char *name, size_t *len)
{
    const char *v = NULL;
    if (MHD_lookup_connection_value_n(conn, kind, name, strlen(name), &v, len) != MHD_YES)
        return NULL;
    return v;
}

/* Returns 1 when the request carries the API key in one of the accepted places (X-API-Key, else
 * "Authorization: apikey <key>", else ?api_key=), or when api_insecure is set. */
static inline int api_key_authorized(const us_config *cfg, struct MHD_Connection *conn)
{
    if (cfg->api_insecure) return 1;
    size_t len = 0;
    const char *key = lookup_value(conn, MHD_HEADER_KIND, "X-API-Key", &len);
    if (!key) {
        size_t alen = 0;
        const char *auth = lookup_value(conn, MHD_HEADER_KIND, "Authorization", &alen);
        if (auth && alen >= 7 && strncasecmp(auth, "apikey ", 7) == 0) {
            key = auth + 7;
            len = alen - 7;
        }
    }
    if (!key) key = lookup_value(conn, MHD_GET_ARGUMENT_KIND, "api_key", &len);
    return key && us_api_key_equal(key, len, cfg->api_key);
}

#endif
