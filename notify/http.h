/* A small HTTP client for the destinations of userstatus-notify: one libcurl handle per
 * destination thread (connections are kept alive between requests), POST only. */
#ifndef US_NOTIFY_HTTP_H
#define US_NOTIFY_HTTP_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

/* Most bytes of a reply body kept; the rest is read and dropped. */
#define US_HTTP_REPLY_MAX (1024 * 1024)

typedef struct us_http us_http;

/* A reply body: malloc'd, NUL-terminated, at most US_HTTP_REPLY_MAX bytes. */
typedef struct us_http_reply {
    char *body;
    size_t len;
} us_http_reply;

/* A client whose requests each take at most timeout_ms (connecting included) and end early,
 * failing, once *stop is set. Call curl_global_init() before. Returns NULL with err set. */
us_http *us_http_new(int64_t timeout_ms, volatile sig_atomic_t *stop, char *err, size_t errlen);

/* POSTs the len bytes of body to url with the nheaders header lines ("Name: value") given.
 * Returns the HTTP status, with the reply body in *reply (reset first; the caller frees it with
 * us_http_reply_free, also after a failure); or -1 with err set when no reply came (connection
 * refused, timeout, stopped). */
int us_http_post(us_http *h, const char *url, const char *const *headers, size_t nheaders,
                 const char *body, size_t len, us_http_reply *reply, char *err, size_t errlen);

void us_http_reply_free(us_http_reply *reply);

/* Accepts NULL. */
void us_http_free(us_http *h);

#endif
