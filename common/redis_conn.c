/* Implementation of Redis connections: address parsing, connect, AUTH, SELECT. */
#include "redis_conn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MASKED_ADDR_MAX 600 /* Bytes of an address quoted in an error message. */

/* Copies text into out with the password of a scheme://user:pass@ address replaced by "***", so
 * that error messages and logs never carry it. */
static void mask_password(const char *text, char *out, size_t cap)
{
    const char *p = strstr(text, "://");
    if (p) p += 3;
    const char *at = p ? strrchr(p, '@') : NULL;
    if (!at) {
        snprintf(out, cap, "%s", text);
        return;
    }
    const char *colon = memchr(p, ':', (size_t)(at - p));
    size_t keep = (size_t)((colon ? colon + 1 : p) - text); /* "redis://user:" */
    snprintf(out, cap, "%.*s***%s", (int)keep, text, at);
}

int us_redis_addr_parse(const char *text, us_redis_addr *a, char *err, size_t errlen)
{
    char shown[MASKED_ADDR_MAX];
    memset(a, 0, sizeof(*a));
    const char *p = text;
    if (strncmp(p, "redis://", 8) == 0) {
        p += 8;
        const char *at = strrchr(p, '@');
        if (at) {
            const char *colon = memchr(p, ':', (size_t)(at - p));
            size_t ulen = colon ? (size_t)(colon - p) : 0;
            const char *pass = colon ? colon + 1 : p;
            size_t plen = (size_t)(at - pass);
            if (ulen >= sizeof(a->user) || plen >= sizeof(a->password)) {
                snprintf(err, errlen, "redis address: user or password too long");
                return -1;
            }
            memcpy(a->user, p, ulen);
            memcpy(a->password, pass, plen);
            p = at + 1;
        }
    } else if (strstr(p, "://")) {
        mask_password(text, shown, sizeof(shown));
        snprintf(err, errlen, "redis address '%s': only host:port and redis:// are supported",
                 shown);
        return -1;
    }
    const char *host = p, *host_end;
    if (*p == '[') { /* [IPv6]:port */
        host = p + 1;
        host_end = strchr(host, ']');
        if (!host_end || host_end[1] != ':') goto bad;
        p = host_end + 2;
    } else {
        host_end = strrchr(p, ':');
        if (!host_end) goto bad;
        p = host_end + 1;
    }
    size_t hlen = (size_t)(host_end - host);
    if (hlen == 0 || hlen >= sizeof(a->host)) goto bad;
    memcpy(a->host, host, hlen);
    char *end;
    long port = strtol(p, &end, 10);
    if (end == p || port < 1 || port > 65535) goto bad;
    a->port = (int)port;
    if (*end == '/') {
        char *dbend;
        long db = strtol(end + 1, &dbend, 10);
        if (dbend == end + 1 || *dbend != '\0' || db < 0 || db > 65535) goto bad;
        a->db = (int)db;
    } else if (*end != '\0') {
        goto bad;
    }
    return 0;
bad:
    memset(a->password, 0, sizeof(a->password));
    mask_password(text, shown, sizeof(shown));
    snprintf(err, errlen,
             "redis address '%s': expected host:port or redis://[user:pass@]host:port[/db]", shown);
    return -1;
}

void us_redis_addr_default_auth(us_redis_addr *a, const char *user, const char *password)
{
    if (a->password[0] == '\0' && password[0]) {
        snprintf(a->user, sizeof(a->user), "%s", user);
        snprintf(a->password, sizeof(a->password), "%s", password);
    }
}

redisReply *us_redis_command(redisContext *c, const us_redis_addr *a, int argc, const char **argv,
                             char *err, size_t errlen)
{
    redisReply *reply = redisCommandArgv(c, argc, argv, NULL);
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "redis %s:%d: %s failed: %s", a->host, a->port, argv[0],
                 reply ? reply->str : c->errstr);
        if (reply) freeReplyObject(reply);
        return NULL;
    }
    return reply;
}

redisContext *us_redis_connect(const us_redis_addr *a, const us_redis_conn_opts *opts, char *err,
                               size_t errlen)
{
    redisContext *c = redisConnectWithTimeout(a->host, a->port, opts->connect_timeout);
    if (!c || c->err) {
        snprintf(err, errlen, "redis %s:%d: cannot connect: %s", a->host, a->port,
                 c ? c->errstr : "out of memory");
        if (c) redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, opts->io_timeout);
    redisReply *reply;
    if (a->password[0]) {
        const char *argv[3] = {"AUTH", a->user[0] ? a->user : a->password, a->password};
        if (!(reply = us_redis_command(c, a, a->user[0] ? 3 : 2, argv, err, errlen))) goto fail;
        freeReplyObject(reply);
    }
    if (a->db) {
        char db[16];
        snprintf(db, sizeof(db), "%d", a->db);
        const char *argv[2] = {"SELECT", db};
        if (!(reply = us_redis_command(c, a, 2, argv, err, errlen))) goto fail;
        freeReplyObject(reply);
    }
    return c;
fail:
    redisFree(c);
    return NULL;
}
