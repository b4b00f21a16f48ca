/* Centrifugo channels: each change published to channel <channel_prefix><user id> through the
 * server HTTP API of Centrifugo v5 or v6.
 *
 * One batch call per batch of changes: POST <api_url>/batch with
 * {"commands":[{"publish":{"channel":...,"data":{change}}}, ...]} and the X-API-Key header.
 * Centrifugo runs the commands in order and answers {"replies":[...]}, one per command, each
 * {"publish":{...}} or {"error":{"code","message"}}. The batch is acknowledged when every reply
 * is a publish, or an error that no retry can fix: 107 (bad request, e.g. a user id that makes
 * no valid channel name) is counted as skipped and logged. Any other error (a namespace missing,
 * a limit, Centrifugo shutting down, ...) retries the whole batch: subscribers see repeated
 * publications, which they drop by (user, status, since), as every consumer of changes does. */
#include "notify.h"

#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CENTRIFUGO_ERROR_BAD_REQUEST 107 /* Centrifugo's error code: never retried. */
#define CHANNEL_MAX 512                  /* Bytes of a channel name we build. */
#define HEADER_MAX 1024
#define REPLY_SHOWN_MAX 200

/* The commands of one batch call; NULL on out of memory or a string that is not UTF-8 (logged). */
static json_t *batch_commands(us_dest *d, const us_change *changes, size_t n)
{
    json_t *commands = json_array();
    size_t prefix_len = strlen(d->channel_prefix);
    for (size_t i = 0; commands && i < n; i++) {
        const us_change *c = &changes[i];
        char channel[CHANNEL_MAX];
        if (prefix_len + c->user_len >= sizeof(channel)) {
            json_decref(commands);
            return NULL;
        }
        memcpy(channel, d->channel_prefix, prefix_len);
        memcpy(channel + prefix_len, c->user, c->user_len);
        json_t *data = us_change_to_json(c);
        json_t *ch = json_stringn(channel, prefix_len + c->user_len);
        if (!data || !ch) {
            json_decref(data);
            json_decref(ch);
            json_decref(commands);
            return NULL;
        }
        json_t *cmd = json_pack("{s:{s:o,s:o}}", "publish", "channel", ch, "data", data);
        if (!cmd || json_array_append_new(commands, cmd) != 0) {
            json_decref(commands);
            return NULL;
        }
    }
    return commands;
}

/* Checks Centrifugo's answer to a batch of n commands. */
static us_deliver_result check_replies(us_dest *d, const us_change *changes, size_t n,
                                       const char *body, size_t *skipped, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *root = json_loads(body ? body : "", 0, &jerr);
    json_t *replies = root ? json_object_get(root, "replies") : NULL;
    us_deliver_result r = US_DELIVER_OK;
    if (!json_is_array(replies) || json_array_size(replies) != n) {
        json_t *e = root ? json_object_get(root, "error") : NULL;
        if (e)
            snprintf(err, errlen, "POST %s: Centrifugo error %lld '%s'", d->url,
                     (long long)json_integer_value(json_object_get(e, "code")),
                     json_string_value(json_object_get(e, "message"))
                         ? json_string_value(json_object_get(e, "message"))
                         : "");
        else
            snprintf(err, errlen, "POST %s: not a batch reply of %zu replies", d->url, n);
        json_decref(root);
        return US_DELIVER_RETRY;
    }
    size_t bad = 0;
    for (size_t i = 0; i < n && r == US_DELIVER_OK; i++) {
        json_t *e = json_object_get(json_array_get(replies, i), "error");
        if (!e) continue;
        long long code = json_integer_value(json_object_get(e, "code"));
        const char *msg = json_string_value(json_object_get(e, "message"));
        char shown[US_LOG_ESCAPE_CAP];
        us_log_escape(changes[i].user, changes[i].user_len, shown, sizeof(shown));
        if (code == CENTRIFUGO_ERROR_BAD_REQUEST) {
            us_error("%s: Centrifugo refused the change of user '%s' (error %lld '%s'); skipped",
                     d->name, shown, code, msg ? msg : "");
            bad++;
            continue;
        }
        snprintf(err, errlen,
                 "POST %s: publishing the change of user '%s': Centrifugo error %lld "
                 "'%s'",
                 d->url, shown, code, msg ? msg : "");
        r = US_DELIVER_RETRY;
    }
    json_decref(root);
    if (r == US_DELIVER_OK) *skipped = bad;
    return r;
}

us_deliver_result us_centrifugo_deliver(us_dest *d, const us_change *changes, size_t n,
                                        size_t *skipped, char *err, size_t errlen)
{
    *skipped = 0;
    json_t *commands = batch_commands(d, changes, n);
    if (!commands) {
        /* The worker publishes valid UTF-8 user ids of at most US_USER_ID_MAX bytes only. */
        snprintf(err, errlen,
                 "%s: cannot build the batch of %zu publications (out of memory, "
                 "or a user id that is not UTF-8)",
                 d->name, n);
        return US_DELIVER_RETRY;
    }
    json_t *root = json_pack("{s:o}", "commands", commands);
    char *body = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    if (!body) {
        snprintf(err, errlen, "%s: out of memory for a batch of %zu publications", d->name, n);
        return US_DELIVER_RETRY;
    }
    char key_header[HEADER_MAX];
    snprintf(key_header, sizeof(key_header), "X-API-Key: %s", d->api_key);
    const char *headers[] = {"Content-Type: application/json", key_header};
    size_t nheaders = d->api_key[0] ? 2 : 1;

    us_http_reply reply = {0};
    int status =
        us_http_post(d->http, d->url, headers, nheaders, body, strlen(body), &reply, err, errlen);
    free(body);
    us_deliver_result r;
    if (status < 0) {
        r = US_DELIVER_RETRY;
    } else if (status != 200) {
        char shown[US_LOG_ESCAPE_CAP];
        size_t shown_len = reply.len < REPLY_SHOWN_MAX ? reply.len : REPLY_SHOWN_MAX;
        snprintf(err, errlen, "POST %s: HTTP %d '%s'", d->url, status,
                 us_log_escape(reply.body, shown_len, shown, sizeof(shown)));
        r = US_DELIVER_RETRY;
    } else {
        r = check_replies(d, changes, n, reply.body, skipped, err, errlen);
    }
    us_http_reply_free(&reply);
    return r;
}
