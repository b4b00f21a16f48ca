/* Event codec tests, driven by the shared vectors in schemas/vectors/. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "event.h"
#include "test_helpers.h"

#define MAX_FIELDS 8

static void test_valid_vectors_decode(void **state)
{
    FILE *f = open_schema_file("vectors/valid.tsv");
    char line[8192];
    int count = 0;
    us_event_decoder d;
    us_event_decoder_init(&d);
    while (fgets(line, sizeof(line), f)) {
        if (line[0] == '#' || line[0] == '\n') continue;
        char *c[MAX_FIELDS];
        int n = tsv_split(line, c, MAX_FIELDS);
        assert_int_equal(n, 7);
        const char *name = c[0], *key = c[1], *hex = c[2], *type = c[3], *user = c[4],
                   *time = c[5], *st = c[6];
        unsigned char buf[4096];
        int len = hex_decode(hex, buf, sizeof(buf));
        assert_true(len >= 0);
        us_event ev;
        char detail[256] = "";
        int has_key = strcmp(key, "-") != 0;
        us_event_error err = us_event_decode(&d, buf, (size_t)len, has_key ? key : NULL,
                                             has_key ? strlen(key) : 0, &ev, detail,
                                             sizeof(detail));
        if (err != US_EVENT_OK) fail_msg("vector %s: %s: %s", name, us_event_error_name(err), detail);
        assert_string_equal(us_event_type_name(ev.type), type);
        assert_int_equal(ev.user_len, strlen(user));
        assert_memory_equal(ev.user, user, ev.user_len);
        if (strcmp(time, "-") == 0) {
            assert_false(ev.has_time);
        } else {
            assert_true(ev.has_time);
            assert_int_equal(ev.time_ms, strtoll(time, NULL, 10));
        }
        if (strcmp(st, "-") == 0) {
            assert_false(ev.has_state);
        } else {
            const char *want = strcmp(st, "<empty>") == 0 ? "" : st;
            assert_true(ev.has_state);
            assert_int_equal(ev.state_len, strlen(want));
            assert_memory_equal(ev.state, want, ev.state_len);
        }
        count++;
    }
    fclose(f);
    us_event_decoder_destroy(&d);
    assert_true(count >= 10);
}

static void test_invalid_vectors_are_rejected_with_their_reason(void **state)
{
    FILE *f = open_schema_file("vectors/invalid.tsv");
    char line[8192];
    int count = 0;
    us_event_decoder d;
    us_event_decoder_init(&d);
    while (fgets(line, sizeof(line), f)) {
        if (line[0] == '#' || line[0] == '\n') continue;
        char *c[MAX_FIELDS];
        int n = tsv_split(line, c, MAX_FIELDS);
        assert_int_equal(n, 4);
        unsigned char buf[4096];
        int len = hex_decode(c[2], buf, sizeof(buf));
        assert_true(len >= 0);
        us_event ev;
        char detail[256] = "";
        int has_key = strcmp(c[1], "-") != 0;
        us_event_error err = us_event_decode(&d, buf, (size_t)len, has_key ? c[1] : NULL,
                                             has_key ? strlen(c[1]) : 0, &ev, detail,
                                             sizeof(detail));
        if (strcmp(us_event_error_name(err), c[3]) != 0)
            fail_msg("vector %s: want %s, got %s (%s)", c[0], c[3], us_event_error_name(err),
                     detail);
        assert_true(detail[0] != '\0');
        count++;
    }
    fclose(f);
    us_event_decoder_destroy(&d);
    assert_true(count >= 10);
}

static void test_encode_vectors_are_byte_exact(void **state)
{
    FILE *f = open_schema_file("vectors/encode.tsv");
    char line[8192];
    int count = 0;
    while (fgets(line, sizeof(line), f)) {
        if (line[0] == '#' || line[0] == '\n') continue;
        char *c[MAX_FIELDS];
        int n = tsv_split(line, c, MAX_FIELDS);
        assert_int_equal(n, 6);
        us_event ev = {0};
        ev.type = strcmp(c[1], "active") == 0   ? US_EVENT_ACTIVE
                  : strcmp(c[1], "online") == 0 ? US_EVENT_ONLINE
                                                : US_EVENT_DELETE;
        ev.user = c[2];
        ev.user_len = strlen(c[2]);
        if (strcmp(c[3], "-") != 0) {
            ev.has_time = true;
            ev.time_ms = strtoll(c[3], NULL, 10);
        }
        if (strcmp(c[4], "-") != 0) {
            ev.has_state = true;
            ev.state = strcmp(c[4], "<empty>") == 0 ? "" : c[4];
            ev.state_len = strlen(ev.state);
        }
        char out[US_EVENT_ENCODED_MAX];
        int len = us_event_encode(&ev, out, sizeof(out));
        assert_true(len > 0);
        unsigned char want[US_EVENT_ENCODED_MAX];
        int wlen = hex_decode(c[5], want, sizeof(want));
        if (len != wlen || memcmp(out, want, (size_t)len) != 0) fail_msg("vector %s differs", c[0]);
        count++;
    }
    fclose(f);
    assert_true(count >= 3);
}

static void test_encoded_event_decodes_to_itself(void **state)
{
    us_event ev = {.type = US_EVENT_ONLINE, .user = "u-7", .user_len = 3, .has_time = true,
                   .time_ms = 1627107289123, .has_state = true, .state = "dnd", .state_len = 3};
    char buf[US_EVENT_ENCODED_MAX];
    int len = us_event_encode(&ev, buf, sizeof(buf));
    assert_true(len > 0);
    us_event_decoder d;
    us_event_decoder_init(&d);
    us_event got;
    assert_int_equal(us_event_decode(&d, buf, (size_t)len, "u-7", 3, &got, NULL, 0), US_EVENT_OK);
    assert_int_equal(got.type, US_EVENT_ONLINE);
    assert_int_equal(got.time_ms, 1627107289123);
    assert_memory_equal(got.state, "dnd", 3);
    us_event_decoder_destroy(&d);
}

static void test_encode_refuses_schema_violations(void **state)
{
    char user[300];
    memset(user, 'x', sizeof(user));
    char buf[US_EVENT_ENCODED_MAX];
    us_event too_long = {.type = US_EVENT_ACTIVE, .user = user, .user_len = 257};
    assert_int_equal(us_event_encode(&too_long, buf, sizeof(buf)), -1);
    us_event empty = {.type = US_EVENT_ACTIVE, .user = "", .user_len = 0};
    assert_int_equal(us_event_encode(&empty, buf, sizeof(buf)), -1);
    us_event ok = {.type = US_EVENT_ACTIVE, .user = "a", .user_len = 1};
    assert_int_equal(us_event_encode(&ok, buf, 4), -1); /* Buffer too small. */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_vectors_decode),
        cmocka_unit_test(test_invalid_vectors_are_rejected_with_their_reason),
        cmocka_unit_test(test_encode_vectors_are_byte_exact),
        cmocka_unit_test(test_encoded_event_decodes_to_itself),
        cmocka_unit_test(test_encode_refuses_schema_violations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
