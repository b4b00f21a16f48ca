/* Fuzz target: the msgpack event decoder (us_event_decode) and its round trip through the encoder.
 *
 * Input layout: byte 0 chooses the Kafka key (0..127: no key; otherwise the next (b0 & 31) bytes
 * are the key), the rest is the message value. Properties checked beyond "no crash, no sanitizer
 * report": an accepted event respects every schema limit (its strings are valid UTF-8), and
 * re-encoding it then decoding the result gives the same fields back. */
#include "event.h"
#include "config.h"
#include "utf8.h"
#include "fuzz_replay.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void check(int cond)
{
    if (!cond) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static us_event_decoder dec;
    static int ready;
    if (!ready) {
        us_event_decoder_init(&dec);
        ready = 1;
    }
    if (size == 0) return 0;
    const uint8_t *key = NULL;
    size_t key_len = 0;
    size_t skip = 1;
    if (data[0] >= 128) {
        key_len = data[0] & 31;
        if (key_len > size - 1) key_len = size - 1;
        key = data + 1;
        skip += key_len;
    }
    /* Copies so that ASan sees the exact bounds of key and value. */
    size_t vlen = size - skip;
    uint8_t *value = malloc(vlen ? vlen : 1);
    uint8_t *kcopy = key ? malloc(key_len ? key_len : 1) : NULL;
    if (!value || (key && !kcopy)) abort();
    memcpy(value, data + skip, vlen);
    if (key) memcpy(kcopy, key, key_len);

    us_event ev;
    char detail[160];
    us_event_error err = us_event_decode(&dec, value, vlen, kcopy, key_len, &ev, detail,
                                         sizeof(detail));
    check(us_event_error_name(err) != NULL);
    if (err == US_EVENT_OK) {
        check(ev.type == US_EVENT_ACTIVE || ev.type == US_EVENT_ONLINE || ev.type == US_EVENT_DELETE);
        check(ev.user_len >= 1 && ev.user_len <= US_USER_ID_MAX);
        check(!ev.has_state || ev.state_len <= US_STATE_MAX);
        check(!ev.has_time || ev.time_ms >= 0);
        check(us_utf8_valid(ev.user, ev.user_len));
        check(!ev.has_state || us_utf8_valid(ev.state, ev.state_len));
        if (key) check(key_len == ev.user_len && memcmp(kcopy, ev.user, key_len) == 0);

        char buf[US_EVENT_ENCODED_MAX];
        int n = us_event_encode(&ev, buf, sizeof(buf));
        check(n > 0);
        uint8_t *again = malloc((size_t)n);
        if (!again) abort();
        memcpy(again, buf, (size_t)n);
        us_event ev2;
        /* ev points into value, which stays alive; ev2 points into again. */
        check(us_event_decode(&dec, again, (size_t)n, NULL, 0, &ev2, detail, sizeof(detail)) ==
              US_EVENT_OK);
        check(ev2.type == ev.type && ev2.user_len == ev.user_len &&
              memcmp(ev2.user, ev.user, ev.user_len) == 0);
        check(ev2.has_time == ev.has_time && (!ev.has_time || ev2.time_ms == ev.time_ms));
        check(ev2.has_state == ev.has_state &&
              (!ev.has_state ||
               (ev2.state_len == ev.state_len && memcmp(ev2.state, ev.state, ev.state_len) == 0)));
        free(again);
    }
    free(value);
    free(kcopy);
    return 0;
}
