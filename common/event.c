/* Implementation of the event codec on msgpack-c. */
#include "event.h"

#include "config.h"

#include <stdio.h>
#include <string.h>

#define DECODER_ZONE_CHUNK 2048 /* Bytes; one chunk holds the object tree of any normal event. */

static const char *error_names[] = {
    "ok",           "malformed_msgpack", "not_a_map", "duplicate_field",
    "wrong_field_type", "missing_field", "unknown_event_type", "bad_user",
    "state_too_long", "bad_time",        "unsupported_version", "key_mismatch",
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

us_event_error us_event_decode(us_event_decoder *d, const void *buf, size_t len, const void *key,
                               size_t key_len, us_event *ev, char *detail, size_t detail_len)
{
    msgpack_object root;
    size_t off = 0;
    msgpack_zone_clear(&d->zone);
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
    return US_EVENT_OK;
}

/* msgpack_packer writer into a fixed buffer; sets overflow instead of writing past its end. */
typedef struct fixed_buf {
    char *p;
    size_t len, cap;
    bool overflow;
} fixed_buf;

static int fixed_write(void *data, const char *src, size_t n)
{
    fixed_buf *b = data;
    if (b->len + n > b->cap) {
        b->overflow = true;
        return -1;
    }
    memcpy(b->p + b->len, src, n);
    b->len += n;
    return 0;
}

static void pack_cstr(msgpack_packer *pk, const char *s, size_t n)
{
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

int us_event_encode(const us_event *ev, char *buf, size_t cap)
{
    if (ev->user_len == 0 || ev->user_len > US_USER_ID_MAX) return -1;
    if (ev->has_state && ev->state_len > US_STATE_MAX) return -1;
    if (ev->has_time && ev->time_ms < 0) return -1;
    if (ev->type < US_EVENT_ACTIVE || ev->type > US_EVENT_DELETE) return -1;

    fixed_buf b = {buf, 0, cap, false};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, fixed_write);
    msgpack_pack_map(&pk, 3 + (ev->has_time ? 1 : 0) + (ev->has_state ? 1 : 0));
    pack_cstr(&pk, "type", 4);
    const char *type = us_event_type_name(ev->type);
    pack_cstr(&pk, type, strlen(type));
    pack_cstr(&pk, "user", 4);
    pack_cstr(&pk, ev->user, ev->user_len);
    if (ev->has_time) {
        pack_cstr(&pk, "time", 4);
        msgpack_pack_int64(&pk, ev->time_ms);
    }
    if (ev->has_state) {
        pack_cstr(&pk, "state", 5);
        pack_cstr(&pk, ev->state, ev->state_len);
    }
    pack_cstr(&pk, "v", 1);
    msgpack_pack_int64(&pk, US_EVENT_VERSION);
    return b.overflow ? -1 : (int)b.len;
}
