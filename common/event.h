/* The user status event: msgpack codec with every limit of the schema checked (schemas/events.md). */
#ifndef US_EVENT_H
#define US_EVENT_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum us_event_type {
    US_EVENT_ACTIVE = 1, /* The user did something: sets `active`. */
    US_EVENT_ONLINE,     /* Connection heartbeat: sets `online`. */
    US_EVENT_DELETE,     /* Drops the user's status. */
} us_event_type;

/* Why a message is not a valid event, in the order the decoder checks. Each has a stable name
 * (us_event_error_name) that the worker writes in the dead-letter header `userstatus-error`. */
typedef enum us_event_error {
    US_EVENT_OK = 0,
    US_EVENT_ERR_MALFORMED,     /* "malformed_msgpack" */
    US_EVENT_ERR_NOT_MAP,       /* "not_a_map" */
    US_EVENT_ERR_DUPLICATE,     /* "duplicate_field" */
    US_EVENT_ERR_WRONG_TYPE,    /* "wrong_field_type" */
    US_EVENT_ERR_MISSING,       /* "missing_field" */
    US_EVENT_ERR_UNKNOWN_TYPE,  /* "unknown_event_type" */
    US_EVENT_ERR_BAD_USER,      /* "bad_user" */
    US_EVENT_ERR_STATE_TOO_LONG, /* "state_too_long" */
    US_EVENT_ERR_BAD_TIME,      /* "bad_time" */
    US_EVENT_ERR_VERSION,       /* "unsupported_version" */
    US_EVENT_ERR_KEY_MISMATCH,  /* "key_mismatch" */
    US_EVENT_ERR_BAD_UTF8,      /* "bad_utf8": `user` or `state` is not valid UTF-8 */
    US_EVENT_ERR_COUNT          /* Not an error: the number of codes above. */
} us_event_error;

#define US_EVENT_VERSION 1
#define US_EVENT_ENCODED_MAX 512 /* Bytes; the largest event us_event_encode can produce. */

/* A decoded event. user and state point into the buffer that was decoded (zero copy): they are
 * valid as long as that buffer is. */
typedef struct us_event {
    us_event_type type;
    const char *user;
    size_t user_len;
    bool has_time;
    int64_t time_ms; /* Unix milliseconds, >= 0. */
    bool has_state;
    const char *state;
    size_t state_len;
} us_event;

/* Decoding state reused across messages so that decoding allocates nothing per event. */
typedef struct us_event_decoder {
    msgpack_zone zone;
} us_event_decoder;

void us_event_decoder_init(us_event_decoder *d);
void us_event_decoder_destroy(us_event_decoder *d);

/* Decodes one msgpack event. key/key_len is the Kafka message key (key NULL: none). Returns
 * US_EVENT_OK and fills *ev (user and state are then valid UTF-8), or an error code with a human-readable reason in detail. */
us_event_error us_event_decode(us_event_decoder *d, const void *buf, size_t len, const void *key,
                               size_t key_len, us_event *ev, char *detail, size_t detail_len);

/* The stable name of an error code ("bad_user", ...). */
const char *us_event_error_name(us_event_error err);

/* The schema name of an event type ("active", "online", "delete"). */
const char *us_event_type_name(us_event_type type);

/* Encodes ev canonically (keys type, user, time?, state?, v) into buf. Returns the encoded length,
 * or -1 if ev breaks a schema limit or buf (cap bytes) is too small. */
int us_event_encode(const us_event *ev, char *buf, size_t cap);

#endif
