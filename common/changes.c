/* Implementation of the presence state machine and the change message codec.
 *
 * The status timeline
 * -------------------
 * For fixed times (active A, online O) the status at time t is a step function that only goes
 * down: online until A + away_after, away until max(A, O) + offline_after, offline after that
 * (away_after may exceed offline_after, then the user goes straight from online to offline). So
 * between two events of a user at most two transitions happen, at those two breakpoints, and a
 * transition's time is a function of the event times alone: whoever evaluates the machine, and
 * whenever, it reports the same (status, since) pairs. That is what makes the published stream
 * safe to replay: a worker that restarts from older offsets reproduces the same transitions, and
 * consumers drop the duplicates by (user, status, since). */
#include "changes.h"

#include "config.h"
#include "int_text.h"
#include "msgpack_out.h"

#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHANGE_VERSION 1
#define CHANGE_ZONE_CHUNK 1024 /* Bytes; the object tree of any change message fits. */

static int64_t max64(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

void us_presence_init(us_presence *p)
{
    p->status = US_STATUS_OFFLINE;
    p->since = US_PRESENCE_NONE;
    p->active = US_PRESENCE_NONE;
    p->online = US_PRESENCE_NONE;
}

us_status_kind us_presence_status_at(const us_presence_rules *r, int64_t active, int64_t online,
                                     int64_t t)
{
    int64_t seen = max64(active, online);
    if (seen == US_PRESENCE_NONE || t >= seen + r->offline_after_ms) return US_STATUS_OFFLINE;
    if (active == US_PRESENCE_NONE || t >= active + r->away_after_ms) return US_STATUS_AWAY;
    return US_STATUS_ONLINE;
}

/* The breakpoints of p's times after `after` (US_PRESENCE_NONE: any), ascending, in b[0..n). */
static size_t breakpoints(const us_presence_rules *r, const us_presence *p, int64_t after,
                          int64_t b[2])
{
    int64_t seen = max64(p->active, p->online);
    int64_t c[2] = {p->active == US_PRESENCE_NONE ? US_PRESENCE_NONE
                                                  : p->active + r->away_after_ms,
                    seen == US_PRESENCE_NONE ? US_PRESENCE_NONE : seen + r->offline_after_ms};
    size_t n = 0;
    for (int i = 0; i < 2; i++)
        if (c[i] != US_PRESENCE_NONE && (after == US_PRESENCE_NONE || c[i] > after)) b[n++] = c[i];
    if (n == 2 && b[0] > b[1]) {
        int64_t x = b[0];
        b[0] = b[1];
        b[1] = x;
    }
    return n;
}

static void report(us_presence *p, us_status_kind s, int64_t at, us_transition *out, size_t *n)
{
    p->status = s;
    p->since = at;
    out[*n] = (us_transition){s, at, p->active, p->online};
    (*n)++;
}

size_t us_presence_advance(const us_presence_rules *r, us_presence *p, int64_t to,
                           us_transition out[US_PRESENCE_MAX_TRANSITIONS])
{
    int64_t b[2];
    size_t nb = breakpoints(r, p, p->since, b), n = 0;
    for (size_t i = 0; i < nb && b[i] <= to; i++) {
        us_status_kind s = us_presence_status_at(r, p->active, p->online, b[i]);
        if (s != p->status) report(p, s, b[i], out, &n);
    }
    return n;
}

size_t us_presence_apply(const us_presence_rules *r, us_presence *p, us_event_type type, int64_t t,
                         us_transition out[US_PRESENCE_MAX_TRANSITIONS])
{
    size_t n = us_presence_advance(r, p, t, out);
    int64_t at = p->since == US_PRESENCE_NONE ? t : max64(t, p->since);
    switch (type) {
    case US_EVENT_DELETE:
        p->active = p->online = US_PRESENCE_NONE;
        break;
    case US_EVENT_ACTIVE:
        p->active = max64(p->active, t);
        break;
    case US_EVENT_ONLINE:
        p->online = max64(p->online, t);
        break;
    }
    us_status_kind s = us_presence_status_at(r, p->active, p->online, at);
    if (s != p->status) report(p, s, at, out, &n);
    return n;
}

int64_t us_presence_deadline(const us_presence_rules *r, const us_presence *p, int64_t evaluated)
{
    /* Breakpoints up to `evaluated` were handled by the advance that got there: one whose status
     * equals the current one (an offline user's activity going stale) must not stay due. */
    int64_t b[2];
    return breakpoints(r, p, max64(p->since, evaluated), b) ? b[0] : US_PRESENCE_NONE;
}

const char *us_status_kind_name(us_status_kind s)
{
    switch (s) {
    case US_STATUS_ONLINE:
        return "online";
    case US_STATUS_AWAY:
        return "away";
    case US_STATUS_OFFLINE:
        return "offline";
    }
    return "unknown";
}

/* ------------------------------------------------------------------------------------------------
 * Index entry text */

static const char status_chars[] = {'f', 'a', 'o'}; /* By us_status_kind. */

/* Writes " <t>" (or " -") at out; returns its length. */
static size_t format_time(char *out, int64_t t)
{
    out[0] = ' ';
    if (t == US_PRESENCE_NONE) {
        out[1] = '-';
        return 2;
    }
    return 1 + us_i64_text(out + 1, t);
}

int us_presence_format(const us_presence *p, char *buf, size_t cap)
{
    char text[1 + 3 * (1 + US_INT_TEXT_MAX)];
    size_t n = 0;
    text[n++] = status_chars[p->status];
    n += format_time(text + n, p->since);
    n += format_time(text + n, p->active);
    n += format_time(text + n, p->online);
    if (n >= cap) return -1;
    memcpy(buf, text, n);
    buf[n] = '\0';
    return (int)n;
}

/* Parses one field at *s (before end): '-' or a non-negative integer; then expects `sep` (a space)
 * or, when sep is 0, the end of the text. */
static int parse_time(const char **s, const char *end, char sep, int64_t *out)
{
    const char *p = *s;
    if (p < end && *p == '-') {
        *out = US_PRESENCE_NONE;
        p++;
    } else {
        int64_t v = 0;
        const char *start = p;
        while (p < end && *p >= '0' && *p <= '9') {
            int d = *p++ - '0';
            if (v > (INT64_MAX - d) / 10) return -1;
            v = v * 10 + d;
        }
        if (p == start) return -1;
        *out = v;
    }
    if (sep) {
        if (p == end || *p != sep) return -1;
        p++;
    } else if (p != end) {
        return -1;
    }
    *s = p;
    return 0;
}

int us_presence_parse(const char *text, size_t len, us_presence *p)
{
    const char *s = text, *end = text + len;
    if (len < 2 || s[1] != ' ') return -1;
    const char *c = memchr(status_chars, s[0], sizeof(status_chars));
    if (!c) return -1;
    p->status = (us_status_kind)(c - status_chars);
    s += 2;
    if (parse_time(&s, end, ' ', &p->since) != 0 || parse_time(&s, end, ' ', &p->active) != 0 ||
        parse_time(&s, end, 0, &p->online) != 0)
        return -1;
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * Change message codec */

int us_change_encode(const us_change *c, char *buf, size_t cap)
{
    if (c->user_len == 0 || c->user_len > US_USER_ID_MAX) return -1;
    if (c->has_state && c->state_len > US_STATE_MAX) return -1;
    if (c->since < 0 || c->status < US_STATUS_OFFLINE || c->status > US_STATUS_ONLINE) return -1;
    bool has_active = c->active != US_PRESENCE_NONE, has_online = c->online != US_PRESENCE_NONE;
    if ((has_active && c->active < 0) || (has_online && c->online < 0)) return -1;

    us_msgpack_out b;
    msgpack_packer pk;
    us_msgpack_out_init(&b, &pk, buf, cap);
    msgpack_pack_map(&pk, 5 + has_active + has_online + (c->has_state ? 1 : 0));
    us_msgpack_pack_str(&pk, "type", 4);
    us_msgpack_pack_str(&pk, "change", 6);
    us_msgpack_pack_str(&pk, "user", 4);
    us_msgpack_pack_str(&pk, c->user, c->user_len);
    us_msgpack_pack_str(&pk, "status", 6);
    const char *status = us_status_kind_name(c->status);
    us_msgpack_pack_str(&pk, status, strlen(status));
    us_msgpack_pack_str(&pk, "since", 5);
    msgpack_pack_int64(&pk, c->since);
    if (has_active) {
        us_msgpack_pack_str(&pk, "active", 6);
        msgpack_pack_int64(&pk, c->active);
    }
    if (has_online) {
        us_msgpack_pack_str(&pk, "online", 6);
        msgpack_pack_int64(&pk, c->online);
    }
    if (c->has_state) {
        us_msgpack_pack_str(&pk, "state", 5);
        us_msgpack_pack_str(&pk, c->state, c->state_len);
    }
    us_msgpack_pack_str(&pk, "v", 1);
    msgpack_pack_int64(&pk, CHANGE_VERSION);
    return us_msgpack_out_result(&b);
}

static int decode_fail(char *detail, size_t detail_len, const char *what)
{
    if (detail && detail_len) snprintf(detail, detail_len, "%s", what);
    return -1;
}

static bool str_is(const msgpack_object *o, const char *s)
{
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
           memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
}

/* A non-negative msgpack integer into *v; false for anything else. */
static bool uint_value(const msgpack_object *o, int64_t *v)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > (uint64_t)INT64_MAX)
        return false;
    *v = (int64_t)o->via.u64;
    return true;
}

int us_change_decode(const void *buf, size_t len, us_change *c, char *detail, size_t detail_len)
{
    msgpack_zone zone;
    msgpack_zone_init(&zone, CHANGE_ZONE_CHUNK);
    msgpack_object root;
    size_t off = 0;
    int rc = -1;
    memset(c, 0, sizeof(*c));
    c->active = c->online = US_PRESENCE_NONE;
    c->since = US_PRESENCE_NONE;
    bool has_type = false, has_status = false;

    if (len > US_CHANGE_ENCODED_MAX * 4 ||
        msgpack_unpack(buf, len, &off, &zone, &root) != MSGPACK_UNPACK_SUCCESS || off != len) {
        decode_fail(detail, detail_len, "not exactly one msgpack value");
        goto out;
    }
    if (root.type != MSGPACK_OBJECT_MAP) {
        decode_fail(detail, detail_len, "not a msgpack map");
        goto out;
    }
    for (uint32_t i = 0; i < root.via.map.size; i++) {
        const msgpack_object *k = &root.via.map.ptr[i].key, *v = &root.via.map.ptr[i].val;
        if (str_is(k, "type")) {
            if (!str_is(v, "change")) {
                decode_fail(detail, detail_len, "type is not \"change\"");
                goto out;
            }
            has_type = true;
        } else if (str_is(k, "user")) {
            if (v->type != MSGPACK_OBJECT_STR || v->via.str.size == 0 ||
                v->via.str.size > US_USER_ID_MAX) {
                decode_fail(detail, detail_len, "user is not a str of 1..256 bytes");
                goto out;
            }
            c->user = v->via.str.ptr;
            c->user_len = v->via.str.size;
        } else if (str_is(k, "status")) {
            if (str_is(v, "online"))
                c->status = US_STATUS_ONLINE;
            else if (str_is(v, "away"))
                c->status = US_STATUS_AWAY;
            else if (str_is(v, "offline"))
                c->status = US_STATUS_OFFLINE;
            else {
                decode_fail(detail, detail_len, "status is not online, away or offline");
                goto out;
            }
            has_status = true;
        } else if (str_is(k, "since") || str_is(k, "active") || str_is(k, "online") ||
                   str_is(k, "v")) {
            int64_t x;
            if (!uint_value(v, &x)) {
                decode_fail(detail, detail_len, "a time or version is not a non-negative integer");
                goto out;
            }
            if (str_is(k, "since")) c->since = x;
            if (str_is(k, "active")) c->active = x;
            if (str_is(k, "online")) c->online = x;
            if (str_is(k, "v") && x != CHANGE_VERSION) {
                decode_fail(detail, detail_len, "unsupported version");
                goto out;
            }
        } else if (str_is(k, "state")) {
            if (v->type != MSGPACK_OBJECT_STR || v->via.str.size > US_STATE_MAX) {
                decode_fail(detail, detail_len, "state is not a str of at most 64 bytes");
                goto out;
            }
            c->has_state = true;
            c->state = v->via.str.ptr;
            c->state_len = v->via.str.size;
        }
    }
    if (!has_type || !c->user || !has_status || c->since == US_PRESENCE_NONE) {
        decode_fail(detail, detail_len, "missing type, user, status or since");
        goto out;
    }
    rc = 0;
out:
    msgpack_zone_destroy(&zone);
    return rc;
}
