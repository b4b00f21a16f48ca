/* Implementation of the status page: static files embedded at build time, served under /status.
 *
 * The files live in query/status_page/ and are compiled into the program (embed_files.cmake), so
 * the installed service needs no data directory and the page always matches the API it calls.
 * Everything the page does goes through the public HTTP API with the API key the user types in;
 * serving the files themselves needs no key, as they hold nothing secret.
 *
 * One more file is made per request: settings.json, the status rules of this service's config
 * (changes.offline_after, changes.away_after), so that the page derives a status while polling and
 * explains it with the same numbers the workers use.
 *
 * Every file is sent with a Content-Security-Policy that allows scripts, styles, images and
 * fetch() only from this origin and no inline script or style at all, so that text the page shows
 * (user ids, state strings: anyone who can publish events chooses them) can never run as code even
 * if it reached the DOM as markup. The page itself only ever sets textContent. */
#include "status_page.h"

#include "http_internal.h"
#include "status_page_files.h"

#include <stdio.h>
#include <string.h>

/* default-src 'self' covers script, style, img, font and connect (fetch() of the API); inline
 * script and style are not allowed, nor plugins, nor being framed (clickjacking of "mark
 * active"). */
#define CSP                                                                                        \
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "                    \
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "                 \
    "frame-ancestors 'none'"

#define INDEX_FILE "index.html"
#define SETTINGS_FILE US_STATUS_PAGE_PATH "/settings.json"
#define SETTINGS_MAX 128 /* Bytes of the settings JSON. */

static const struct {
    const char *suffix;
    const char *type;
} content_types[] = {
    {".html", "text/html; charset=utf-8"},
    {".js", "text/javascript; charset=utf-8"},
    {".css", "text/css; charset=utf-8"},
    {".svg", "image/svg+xml"},
};

int us_status_page_owns(const char *url)
{
    size_t n = strlen(US_STATUS_PAGE_PATH);
    return strncmp(url, US_STATUS_PAGE_PATH, n) == 0 && (url[n] == '\0' || url[n] == '/');
}

/* The Content-Type of a file name by its suffix; NULL when the name has none of the known ones
 * (then the file is not served: a build that embedded it by mistake must not guess). */
static const char *content_type_of(const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < sizeof(content_types) / sizeof(content_types[0]); i++) {
        size_t slen = strlen(content_types[i].suffix);
        if (len > slen && strcmp(name + len - slen, content_types[i].suffix) == 0)
            return content_types[i].type;
    }
    return NULL;
}

/* The embedded file that url names: /status is index.html, /status/<name> is <name>. NULL when
 * there is none. */
static const us_embedded_file *file_of(const char *url)
{
    const char *name = url + strlen(US_STATUS_PAGE_PATH);
    if (*name == '\0')
        name = INDEX_FILE;
    else
        name++; /* The '/'. */
    for (size_t i = 0; i < us_embedded_nfiles; i++)
        if (strcmp(us_embedded_files[i].name, name) == 0) return &us_embedded_files[i];
    return NULL;
}

/* Queues a permanent redirect to location (relative, so that a reverse proxy's prefix stays). */
static enum MHD_Result send_redirect(struct MHD_Connection *conn, const char *location)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    MHD_add_response_header(resp, "Location", location);
    enum MHD_Result rc = MHD_queue_response(conn, MHD_HTTP_PERMANENT_REDIRECT, resp);
    MHD_destroy_response(resp);
    return rc;
}

/* Queues body (type, len bytes) with the headers every file of the page gets. mode says whether
 * libmicrohttpd copies body or sends it in place. */
static enum MHD_Result send_file(struct MHD_Connection *conn, const char *type, const void *body,
                                 size_t len, enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, (void *)body, mode);
    MHD_add_response_header(resp, "Content-Type", type);
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "Content-Security-Policy", CSP);
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
    enum MHD_Result rc = MHD_queue_response(conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return rc;
}

enum MHD_Result us_status_page_send(const us_config *cfg, struct MHD_Connection *conn,
                                    const char *url, const char *method)
{
    if (!cfg->query.status_page) return send_text(conn, MHD_HTTP_NOT_FOUND, "not found\n");
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
        MHD_add_response_header(resp, "Allow", "GET, HEAD");
        enum MHD_Result rc = MHD_queue_response(conn, MHD_HTTP_METHOD_NOT_ALLOWED, resp);
        MHD_destroy_response(resp);
        return rc;
    }
    if (strcmp(url, US_STATUS_PAGE_PATH "/") == 0) return send_redirect(conn, "../status");
    if (strcmp(url, SETTINGS_FILE) == 0) {
        char json[SETTINGS_MAX];
        int n = snprintf(json, sizeof(json), "{\"offline_after_ms\":%lld,\"away_after_ms\":%lld}",
                         (long long)cfg->changes.offline_after_ms,
                         (long long)cfg->changes.away_after_ms);
        return send_file(conn, "application/json", json, (size_t)n, MHD_RESPMEM_MUST_COPY);
    }
    const us_embedded_file *f = file_of(url);
    const char *type = f ? content_type_of(f->name) : NULL;
    if (!type) return send_text(conn, MHD_HTTP_NOT_FOUND, "not found\n");
    /* The bytes are static: libmicrohttpd sends them without a copy. */
    return send_file(conn, type, f->data, f->len, MHD_RESPMEM_PERSISTENT);
}
