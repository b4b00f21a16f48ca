/* Implementation of the notify HTTP client over libcurl's easy interface. */
#include "http.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct us_http {
    CURL *curl;
    int64_t timeout_ms;
    volatile sig_atomic_t *stop;
};

us_http *us_http_new(int64_t timeout_ms, volatile sig_atomic_t *stop, char *err, size_t errlen)
{
    us_http *h = calloc(1, sizeof(*h));
    if (!h || !(h->curl = curl_easy_init())) {
        snprintf(err, errlen, "creating an HTTP client: out of memory");
        free(h);
        return NULL;
    }
    h->timeout_ms = timeout_ms;
    h->stop = stop;
    return h;
}

void us_http_free(us_http *h)
{
    if (!h) return;
    curl_easy_cleanup(h->curl);
    free(h);
}

void us_http_reply_free(us_http_reply *reply)
{
    free(reply->body);
    reply->body = NULL;
    reply->len = 0;
}

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    us_http_reply *r = arg;
    size_t len = size * n, keep = len;
    if (r->len + keep > US_HTTP_REPLY_MAX) keep = US_HTTP_REPLY_MAX - r->len;
    if (keep > 0) {
        char *p = realloc(r->body, r->len + keep + 1);
        if (!p) return 0; /* Fails the transfer: curl reports a write error. */
        memcpy(p + r->len, data, keep);
        r->body = p;
        r->len += keep;
        r->body[r->len] = '\0';
    }
    return len;
}

/* Aborts a transfer under way once a stop was asked for (curl calls it about once a second, and
 * whenever data moves). */
static int on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    const us_http *h = arg;
    return *h->stop ? 1 : 0;
}

int us_http_post(us_http *h, const char *url, const char *const *headers, size_t nheaders,
                 const char *body, size_t len, us_http_reply *reply, char *err, size_t errlen)
{
    us_http_reply_free(reply);
    struct curl_slist *list = NULL;
    for (size_t i = 0; i < nheaders; i++) {
        struct curl_slist *l = curl_slist_append(list, headers[i]);
        if (!l) {
            curl_slist_free_all(list);
            snprintf(err, errlen, "POST %s: out of memory for the headers", url);
            return -1;
        }
        list = l;
    }
    /* "Expect: 100-continue" would cost a round trip (or a second) per large body. */
    struct curl_slist *l = curl_slist_append(list, "Expect:");
    if (l) list = l;

    CURL *c = h->curl;
    curl_easy_reset(c); /* Keeps the connection cache. */
    char curl_err[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, list);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)h->timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)h->timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L); /* Threads: no SIGALRM for DNS timeouts. */
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L); /* A redirect is not an acknowledgement. */
    curl_easy_setopt(c, CURLOPT_USERAGENT, "userstatus-notify");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, reply);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, h);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, curl_err);

    CURLcode rc = curl_easy_perform(c);
    curl_slist_free_all(list);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, NULL);
    if (rc != CURLE_OK) {
        if (rc == CURLE_ABORTED_BY_CALLBACK)
            snprintf(err, errlen, "POST %s: stopped (shutting down)", url);
        else
            snprintf(err, errlen, "POST %s: %s", url,
                     curl_err[0] ? curl_err : curl_easy_strerror(rc));
        return -1;
    }
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    return (int)status;
}
