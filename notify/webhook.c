/* Webhooks: a batch of changes as one signed JSON POST.
 *
 * Body: {"changes":[{"user","status","since","active"?,"online"?,"state"?}, ...]}, the fields of
 * the watch stream (since in Unix ms, active/online in Unix seconds), in partition order.
 *
 * Signature: X-Userstatus-Timestamp: <Unix seconds of this attempt> and
 * X-Userstatus-Signature: sha256=<hex HMAC-SHA256 with the webhook's secret of
 * "<timestamp>.<body>">. The timestamp is signed with the body, so a receiver that refuses
 * timestamps older than its replay window (docs/choices.md suggests 5 minutes) cannot be fed an old
 * request again; each retry is signed anew with its own timestamp. */
#include "notify.h"

#include "log.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SIGNATURE_HEADER "X-Userstatus-Signature"
#define TIMESTAMP_HEADER "X-Userstatus-Timestamp"
#define HEADER_MAX 128      /* Bytes of one header line we build. */
#define REPLY_SHOWN_MAX 200 /* Bytes of a refusing receiver's reply shown in the log. */

json_t *us_change_to_json(const us_change *c)
{
    json_t *o = json_object();
    json_t *user = json_stringn(c->user, c->user_len);
    if (!o || !user) goto fail;
    json_object_set_new(o, "user", user);
    json_object_set_new(o, "status", json_string(us_status_kind_name(c->status)));
    json_object_set_new(o, "since", json_integer(c->since));
    if (c->active != US_PRESENCE_NONE) json_object_set_new(o, "active", json_integer(c->active));
    if (c->online != US_PRESENCE_NONE) json_object_set_new(o, "online", json_integer(c->online));
    if (c->has_state) {
        json_t *state = json_stringn(c->state, c->state_len);
        if (!state) goto fail;
        json_object_set_new(o, "state", state);
    }
    return o;
fail:
    json_decref(o);
    return NULL;
}

/* Writes "sha256=<hex>" of HMAC-SHA256(secret, "<ts>.<body>") into out. Returns 0, or -1. */
static int sign(const char *secret, const char *ts, const char *body, size_t len, char *out,
                size_t cap)
{
    size_t tslen = strlen(ts);
    unsigned char *msg = malloc(tslen + 1 + len);
    if (!msg) return -1;
    memcpy(msg, ts, tslen);
    msg[tslen] = '.';
    memcpy(msg + tslen + 1, body, len);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    unsigned char *ok =
        HMAC(EVP_sha256(), secret, (int)strlen(secret), msg, tslen + 1 + len, mac, &maclen);
    free(msg);
    if (!ok || cap < 8 + 2 * (size_t)maclen) return -1;
    size_t n = (size_t)snprintf(out, cap, "sha256=");
    for (unsigned int i = 0; i < maclen; i++)
        n += (size_t)snprintf(out + n, cap - n, "%02x", mac[i]);
    return 0;
}

us_deliver_result us_webhook_deliver(us_dest *d, const us_change *changes, size_t n, char *err,
                                     size_t errlen)
{
    json_t *list = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *o = us_change_to_json(&changes[i]);
        if (!o) {
            char shown[US_LOG_ESCAPE_CAP];
            us_error("%s: change of user '%s' has a string that is not UTF-8; left out", d->name,
                     us_log_escape(changes[i].user, changes[i].user_len, shown, sizeof(shown)));
            continue;
        }
        json_array_append_new(list, o);
    }
    json_t *root = json_pack("{s:o}", "changes", list);
    char *body = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    if (!body) {
        snprintf(err, errlen, "POST %s: out of memory for a body of %zu changes", d->url, n);
        return US_DELIVER_RETRY;
    }
    size_t len = strlen(body);

    char ts[24], ts_header[HEADER_MAX], sig[EVP_MAX_MD_SIZE * 2 + 8], sig_header[HEADER_MAX + 64];
    snprintf(ts, sizeof(ts), "%lld", (long long)time(NULL));
    snprintf(ts_header, sizeof(ts_header), TIMESTAMP_HEADER ": %s", ts);
    if (sign(d->secret, ts, body, len, sig, sizeof(sig)) != 0) {
        free(body);
        snprintf(err, errlen, "POST %s: computing the HMAC-SHA256 signature failed", d->url);
        return US_DELIVER_RETRY;
    }
    snprintf(sig_header, sizeof(sig_header), SIGNATURE_HEADER ": %s", sig);
    const char *headers[] = {"Content-Type: application/json", ts_header, sig_header};

    us_http_reply reply = {0};
    int status = us_http_post(d->http, d->url, headers, sizeof(headers) / sizeof(headers[0]), body,
                              len, &reply, err, errlen);
    free(body);
    us_deliver_result r = US_DELIVER_OK;
    if (status < 0) {
        r = US_DELIVER_RETRY;
    } else if (status < 200 || status > 299) {
        char shown[US_LOG_ESCAPE_CAP];
        size_t shown_len = reply.len < REPLY_SHOWN_MAX ? reply.len : REPLY_SHOWN_MAX;
        snprintf(err, errlen, "POST %s: HTTP %d '%s'", d->url, status,
                 us_log_escape(reply.body, shown_len, shown, sizeof(shown)));
        r = US_DELIVER_RETRY;
    }
    us_http_reply_free(&reply);
    return r;
}
