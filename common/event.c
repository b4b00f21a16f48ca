/* Implementation of the event codec on msgpack-c. */
#include "event.h"

#include "config.h"
#include "msgpack_out.h"
#include "utf8.h"

#include <stdio.h>
#include <string.h>

#define DECODER_ZONE_CHUNK 2048 /* Bytes; one chunk holds the object tree of any normal event. */

static const char *error_names[] = {
    "ok",           "malformed_msgpack", "not_a_map", "duplicate_field",
    "wrong_field_type", "missing_field", "unknown_event_type", "bad_user",
    "state_too_long", "bad_time",        "unsupported_version", "key_mismatch",
    "bad_utf8",
};

const char *us_event_error_name(us_event_error err)
{
    if ((size_t)err >= sizeof(error_names) / sizeof(error_names[0])) return "unknown";
    return error_names[err];
}

const char *us_event_type_name(us_event_type type)
{
    switch (type) {
    case US_EVENT_ACTIVE:
        return "active";
    case US_EVENT_ONLINE:
        return "online";
    case US_EVENT_DELETE:
        return "delete";
    }
    return "unknown";
}

void us_event_decoder_init(us_event_decoder *d)
{
    msgpack_zone_init(&d->zone, DECODER_ZONE_CHUNK);
}

void us_event_decoder_destroy(us_event_decoder *d)
{
    if (d) msgpack_zone_destroy(&d->zone);
}

enum { F_TYPE, F_USER, F_TIME, F_STATE, F_V, NFIELDS };
static const char *field_names[NFIELDS] = {"type", "user", "time", "state", "v"};

static bool is_int(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_POSITIVE_INTEGER || o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER;
}

/* Reads a msgpack integer as int64; values above INT64_MAX saturate (and are rejected later as
 * out-of-range times or versions). */
static int64_t int_value(const msgpack_object *o)
{
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) return o->via.i64;
    return o->via.u64 > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)o->via.u64;
}

static us_event_error reject(us_event_error err, char *detail, size_t detail_len, const char *msg,
                             const char *field)
{
    if (detail && detail_len) snprintf(detail, detail_len, msg, field);
    return err;
}

/* Reads a big-endian unsigned integer of n (1, 2 or 4) bytes. */
static size_t be_uint(const unsigned char *p, int n)
{
    size_t v = 0;
    for (int i = 0; i < n; i++) v = v << 8 | p[i];
    return v;
}

/* Structural pre-scan of a msgpack value, before msgpack-c sees it.
 *
 * msgpack_unpack() allocates the element array of an array or map as soon as it reads the header,
 * trusting the declared count: a 5-byte value "map32 with 2^32-1 entries" asks for 64 GiB, and a few
 * hundred bytes of nested array16 headers for hundreds of MB (found by tests/fuzz/fuzz_event). Every
 * element takes at least one byte, so a header that declares more pending elements than bytes remain
 * belongs to a truncated value that msgpack_unpack() would reject anyway. This walk, without
 * recursion or allocation, keeps the count of elements still expected and returns false as soon as
 * it exceeds the bytes left (or on a truncated or never-used byte); only plausible values, whose
 * element arrays add up to at most len elements, reach msgpack-c. Trailing bytes are left to it. */
static bool msgpack_sizes_plausible(const unsigned char *p, size_t len)
{
    size_t pos = 0, pending = 1;
    while (pending > 0) {
        if (pos >= len) return false;
        unsigned char b = p[pos++];
        pending--;
        size_t skip = 0, count = 0; /* payload bytes; elements added */
        int lenbytes = 0;           /* size of a length field that follows the type byte */
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            /* fixint, nil, bool */
        } else if (b <= 0x8f) {
            count = 2 * (size_t)(b & 0x0f);
        } else if (b <= 0x9f) {
            count = b & 0x0f;
        } else if (b <= 0xbf) {
            skip = b & 0x1f;
        } else {
            switch (b) {
            case 0xc4: case 0xd9: lenbytes = 1; break; /* bin8, str8 */
            case 0xc5: case 0xda: lenbytes = 2; break; /* bin16, str16 */
            case 0xc6: case 0xdb: lenbytes = 4; break; /* bin32, str32 */
            case 0xc7: lenbytes = 1; skip = 1; break;  /* ext8: + type byte */
            case 0xc8: lenbytes = 2; skip = 1; break;
            case 0xc9: lenbytes = 4; skip = 1; break;
            case 0xca: skip = 4; break;                /* float32 */
            case 0xcb: skip = 8; break;                /* float64 */
            case 0xcc: case 0xd0: skip = 1; break;     /* (u)int8 */
            case 0xcd: case 0xd1: skip = 2; break;
            case 0xce: case 0xd2: skip = 4; break;
            case 0xcf: case 0xd3: skip = 8; break;
            case 0xd4: skip = 2; break;                /* fixext1..16: type byte + data */
            case 0xd5: skip = 3; break;
            case 0xd6: skip = 5; break;
            case 0xd7: skip = 9; break;
            case 0xd8: skip = 17; break;
            case 0xdc: case 0xdd: case 0xde: case 0xdf: /* array16/32, map16/32 */
                lenbytes = (b & 1) ? 4 : 2;
                if (len - pos < (size_t)lenbytes) return false;
                count = be_uint(p + pos, lenbytes) * (b >= 0xde ? 2 : 1);
                pos += (size_t)lenbytes;
                lenbytes = 0;
                break;
            default:
                return false; /* 0xc1: never used */
            }
        }
        if (lenbytes) {
            if (len - pos < (size_t)lenbytes) return false;
            skip += be_uint(p + pos, lenbytes);
            pos += (size_t)lenbytes;
        }
        if (len - pos < skip) return false;
        pos += skip;
        pending += count;
        if (pending > len - pos) return false;
    }
    return true;
}

us_event_error us_event_decode(us_event_decoder *d, const void *buf, size_t len, const void *key,
                               size_t key_len, us_event *ev, char *detail, size_t detail_len)
{
    msgpack_object root;
    size_t off = 0;
    msgpack_zone_clear(&d->zone);
    if (!msgpack_sizes_plausible(buf, len))
        return reject(US_EVENT_ERR_MALFORMED, detail, detail_len,
                      "not a complete msgpack %s (truncated, or sizes beyond its length)", "value");
    msgpack_unpack_return rc = msgpack_unpack(buf, len, &off, &d->zone, &root);
    if (rc != MSGPACK_UNPACK_SUCCESS || off != len)
        return reject(US_EVENT_ERR_MALFORMED, detail, detail_len,
                      rc == MSGPACK_UNPACK_EXTRA_BYTES ? "trailing bytes after the msgpack %s"
                                                       : "not a complete msgpack %s",
                      "value");
    if (root.type != MSGPACK_OBJECT_MAP)
        return reject(US_EVENT_ERR_NOT_MAP, detail, detail_len, "value is not a msgpack %s",
                      "map");

    const msgpack_object *fields[NFIELDS] = {0};
    for (uint32_t i = 0; i < root.via.map.size; i++) {
        const msgpack_object *k = &root.via.map.ptr[i].key;
        if (k->type != MSGPACK_OBJECT_STR) continue; /* Forward compatible: ignored. */
        for (int f = 0; f < NFIELDS; f++) {
            if (k->via.str.size == strlen(field_names[f]) &&
                memcmp(k->via.str.ptr, field_names[f], k->via.str.size) == 0) {
                if (fields[f])
                    return reject(US_EVENT_ERR_DUPLICATE, detail, detail_len,
                                  "field '%s' appears twice", field_names[f]);
                fields[f] = &root.via.map.ptr[i].val;
            }
        }
    }

    static const msgpack_object_type want[NFIELDS] = {MSGPACK_OBJECT_STR, MSGPACK_OBJECT_STR,
                                                      MSGPACK_OBJECT_POSITIVE_INTEGER,
                                                      MSGPACK_OBJECT_STR,
                                                      MSGPACK_OBJECT_POSITIVE_INTEGER};
    for (int f = 0; f < NFIELDS; f++) {
        if (!fields[f]) continue;
        bool ok = want[f] == MSGPACK_OBJECT_STR ? fields[f]->type == MSGPACK_OBJECT_STR
                                                : is_int(fields[f]);
        if (!ok)
            return reject(US_EVENT_ERR_WRONG_TYPE, detail, detail_len,
                          want[f] == MSGPACK_OBJECT_STR ? "field '%s' must be a msgpack str"
                                                        : "field '%s' must be a msgpack integer",
                          field_names[f]);
    }
    if (!fields[F_TYPE])
        return reject(US_EVENT_ERR_MISSING, detail, detail_len, "required field '%s' is missing",
                      "type");
    if (!fields[F_USER])
        return reject(US_EVENT_ERR_MISSING, detail, detail_len, "required field '%s' is missing",
                      "user");

    const msgpack_object_str *t = &fields[F_TYPE]->via.str;
    memset(ev, 0, sizeof(*ev));
    if (t->size == 6 && memcmp(t->ptr, "active", 6) == 0)
        ev->type = US_EVENT_ACTIVE;
    else if (t->size == 6 && memcmp(t->ptr, "online", 6) == 0)
        ev->type = US_EVENT_ONLINE;
    else if (t->size == 6 && memcmp(t->ptr, "delete", 6) == 0)
        ev->type = US_EVENT_DELETE;
    else
        return reject(US_EVENT_ERR_UNKNOWN_TYPE, detail, detail_len,
                      "field '%s' must be \"active\", \"online\" or \"delete\"", "type");

    const msgpack_object_str *u = &fields[F_USER]->via.str;
    if (u->size == 0 || u->size > US_USER_ID_MAX)
        return reject(US_EVENT_ERR_BAD_USER, detail, detail_len,
                      "field '%s' must be 1..256 bytes long", "user");
    ev->user = u->ptr;
    ev->user_len = u->size;

    if (fields[F_STATE]) {
        const msgpack_object_str *s = &fields[F_STATE]->via.str;
        if (s->size > US_STATE_MAX)
            return reject(US_EVENT_ERR_STATE_TOO_LONG, detail, detail_len,
                          "field '%s' must be at most 64 bytes long", "state");
        ev->has_state = true;
        ev->state = s->ptr;
        ev->state_len = s->size;
    }
    if (fields[F_TIME]) {
        int64_t ms = int_value(fields[F_TIME]);
        if (ms < 0)
            return reject(US_EVENT_ERR_BAD_TIME, detail, detail_len,
                          "field '%s' must not be negative", "time");
        ev->has_time = true;
        ev->time_ms = ms;
    }
    if (fields[F_V] && int_value(fields[F_V]) != US_EVENT_VERSION)
        return reject(US_EVENT_ERR_VERSION, detail, detail_len,
                      "field '%s' must be 1 (the only schema version)", "v");
    if (key && (key_len != ev->user_len || memcmp(key, ev->user, key_len) != 0))
        return reject(US_EVENT_ERR_KEY_MISMATCH, detail, detail_len,
                      "field 'user' differs from the message %s", "key");
    /* Checked last: both strings end up in JSON (get_user_status), which must be UTF-8. */
    if (!us_utf8_valid(ev->user, ev->user_len))
        return reject(US_EVENT_ERR_BAD_UTF8, detail, detail_len,
                      "field '%s' is not valid UTF-8", "user");
    if (ev->has_state && !us_utf8_valid(ev->state, ev->state_len))
        return reject(US_EVENT_ERR_BAD_UTF8, detail, detail_len,
                      "field '%s' is not valid UTF-8", "state");
    return US_EVENT_OK;
}

int us_event_encode(const us_event *ev, char *buf, size_t cap)
{
    if (ev->user_len == 0 || ev->user_len > US_USER_ID_MAX) return -1;
    if (ev->has_state && ev->state_len > US_STATE_MAX) return -1;
    if (ev->has_time && ev->time_ms < 0) return -1;
    if (ev->type < US_EVENT_ACTIVE || ev->type > US_EVENT_DELETE) return -1;

    us_msgpack_out b;
    msgpack_packer pk;
    us_msgpack_out_init(&b, &pk, buf, cap);
    msgpack_pack_map(&pk, 3 + (ev->has_time ? 1 : 0) + (ev->has_state ? 1 : 0));
    us_msgpack_pack_str(&pk, "type", 4);
    const char *type = us_event_type_name(ev->type);
    us_msgpack_pack_str(&pk, type, strlen(type));
    us_msgpack_pack_str(&pk, "user", 4);
    us_msgpack_pack_str(&pk, ev->user, ev->user_len);
    if (ev->has_time) {
        us_msgpack_pack_str(&pk, "time", 4);
        msgpack_pack_int64(&pk, ev->time_ms);
    }
    if (ev->has_state) {
        us_msgpack_pack_str(&pk, "state", 5);
        us_msgpack_pack_str(&pk, ev->state, ev->state_len);
    }
    us_msgpack_pack_str(&pk, "v", 1);
    msgpack_pack_int64(&pk, US_EVENT_VERSION);
    return us_msgpack_out_result(&b);
}
