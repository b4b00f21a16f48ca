/* Implementation of the Redis Cluster helpers: slot hashing, redirects, slot map parsing. */
#include "redis_cluster.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint16_t us_crc16(const char *buf, size_t len)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((unsigned char)buf[i] << 8);
        for (int b = 0; b < 8; b++) crc = crc & 0x8000 ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

uint16_t us_cluster_slot(const char *key, size_t len)
{
    /* Hash only what is between the first '{' and the next '}', if that is not empty. */
    const char *open = memchr(key, '{', len);
    if (open) {
        size_t rest = len - (size_t)(open - key) - 1;
        const char *close = memchr(open + 1, '}', rest);
        if (close && close > open + 1)
            return us_crc16(open + 1, (size_t)(close - open - 1)) & (US_CLUSTER_SLOTS - 1);
    }
    return us_crc16(key, len) & (US_CLUSTER_SLOTS - 1);
}

/* Splits "host:port" or "[v6]:port" of len bytes into r->host and r->port. */
static int parse_endpoint(const char *p, size_t len, char *host, size_t hostcap, int *port)
{
    const char *end = p + len, *colon = NULL;
    for (const char *q = end; q > p; q--)
        if (q[-1] == ':') {
            colon = q - 1;
            break;
        }
    if (!colon || colon == p || colon + 1 == end) return -1;
    const char *h = p, *hend = colon;
    if (*h == '[' && hend[-1] == ']') h++, hend--;
    size_t hlen = (size_t)(hend - h);
    if (hlen == 0 || hlen >= hostcap) return -1;
    long v = 0;
    for (const char *q = colon + 1; q < end; q++) {
        if (*q < '0' || *q > '9') return -1;
        v = v * 10 + (*q - '0');
        if (v > 65535) return -1;
    }
    if (v < 1) return -1;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = (int)v;
    return 0;
}

int us_redirect_parse(const char *text, size_t len, us_redirect *r)
{
    memset(r, 0, sizeof(*r));
    us_redirect_kind kind;
    size_t skip;
    if (len > 6 && memcmp(text, "MOVED ", 6) == 0) {
        kind = US_REDIRECT_MOVED;
        skip = 6;
    } else if (len > 4 && memcmp(text, "ASK ", 4) == 0) {
        kind = US_REDIRECT_ASK;
        skip = 4;
    } else {
        return -1;
    }
    const char *p = text + skip, *end = text + len;
    long slot = 0;
    int digits = 0;
    while (p < end && *p >= '0' && *p <= '9' && digits < 6) slot = slot * 10 + (*p++ - '0'), digits++;
    if (!digits || slot >= US_CLUSTER_SLOTS || p >= end || *p != ' ') return -1;
    p++;
    const char *ep = p;
    while (ep < end && *ep != ' ' && *ep != '\r' && *ep != '\n') ep++;
    if (parse_endpoint(p, (size_t)(ep - p), r->host, sizeof(r->host), &r->port) != 0) return -1;
    r->kind = kind;
    r->slot = (uint16_t)slot;
    return 0;
}

/* An integer reply, or a string reply holding a decimal number. Returns -1 for anything else. */
static long long reply_number(const redisReply *r)
{
    if (r->type == REDIS_REPLY_INTEGER) return r->integer;
    if (r->type == REDIS_REPLY_STRING && r->len > 0 && r->len < 20) {
        char *end;
        long long v = strtoll(r->str, &end, 10);
        if (end == r->str + r->len) return v;
    }
    return -1;
}

static int reply_is(const redisReply *r, const char *s)
{
    return (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) &&
           r->len == strlen(s) && memcmp(r->str, s, r->len) == 0;
}

/* Looks a field up in a RESP2 flat name/value array. */
static const redisReply *field(const redisReply *map, const char *name)
{
    if (map->type != REDIS_REPLY_ARRAY) return NULL;
    for (size_t i = 0; i + 1 < map->elements; i += 2)
        if (reply_is(map->element[i], name)) return map->element[i + 1];
    return NULL;
}

static int copy_host(const redisReply *r, char *host, size_t cap)
{
    if (!r || r->type != REDIS_REPLY_STRING || r->len == 0 || r->len >= cap) return -1;
    memcpy(host, r->str, r->len);
    host[r->len] = '\0';
    return 0;
}

int us_cluster_parse_shards(const redisReply *reply, us_slot_range *out, size_t cap)
{
    if (reply->type != REDIS_REPLY_ARRAY) return -1;
    size_t n = 0;
    for (size_t s = 0; s < reply->elements; s++) {
        const redisReply *shard = reply->element[s];
        const redisReply *slots = field(shard, "slots"), *nodes = field(shard, "nodes");
        if (!slots || !nodes || slots->type != REDIS_REPLY_ARRAY ||
            nodes->type != REDIS_REPLY_ARRAY || slots->elements % 2)
            return -1;
        char host[256];
        int port = -1;
        for (size_t k = 0; k < nodes->elements && port < 0; k++) {
            const redisReply *node = nodes->element[k];
            const redisReply *role = field(node, "role"), *health = field(node, "health");
            if (!role || !reply_is(role, "master")) continue;
            if (health && !reply_is(health, "online")) continue;
            const redisReply *p = field(node, "port");
            long long pv = p ? reply_number(p) : -1;
            if (pv < 1 || pv > 65535) continue;
            const redisReply *ep = field(node, "endpoint");
            if ((!ep || copy_host(ep, host, sizeof(host)) != 0 || strcmp(host, "?") == 0) &&
                copy_host(field(node, "ip"), host, sizeof(host)) != 0)
                continue;
            port = (int)pv;
        }
        if (port < 0) continue; /* No reachable master: those slots stay unmapped. */
        for (size_t k = 0; k + 1 < slots->elements; k += 2) {
            long long first = reply_number(slots->element[k]), last = reply_number(slots->element[k + 1]);
            if (first < 0 || last < first || last >= US_CLUSTER_SLOTS) return -1;
            if (n == cap) return -1;
            out[n].first = (uint16_t)first;
            out[n].last = (uint16_t)last;
            snprintf(out[n].host, sizeof(out[n].host), "%s", host);
            out[n].port = port;
            n++;
        }
    }
    return (int)n;
}

int us_cluster_parse_slots(const redisReply *reply, us_slot_range *out, size_t cap)
{
    if (reply->type != REDIS_REPLY_ARRAY) return -1;
    size_t n = 0;
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *e = reply->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3) return -1;
        long long first = reply_number(e->element[0]), last = reply_number(e->element[1]);
        const redisReply *master = e->element[2];
        if (first < 0 || last < first || last >= US_CLUSTER_SLOTS ||
            master->type != REDIS_REPLY_ARRAY || master->elements < 2)
            return -1;
        long long port = reply_number(master->element[1]);
        if (n == cap || port < 1 || port > 65535 ||
            copy_host(master->element[0], out[n].host, sizeof(out[n].host)) != 0)
            return -1;
        out[n].first = (uint16_t)first;
        out[n].last = (uint16_t)last;
        out[n].port = (int)port;
        n++;
    }
    return (int)n;
}
