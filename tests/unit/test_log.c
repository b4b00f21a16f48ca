/* Escaping untrusted text for log lines (us_log_escape). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "log.h"

#include <string.h>

/* Escapes a NUL-free C string with the full-size buffer. */
static const char *esc(const char *s)
{
    static char buf[US_LOG_ESCAPE_CAP];
    return us_log_escape(s, strlen(s), buf, sizeof(buf));
}

static void test_plain_ids_pass_unchanged(void **state)
{
    assert_string_equal(esc("42"), "42");
    assert_string_equal(esc("user-7@example.com"), "user-7@example.com");
    assert_string_equal(esc(""), "");
    assert_string_equal(esc("J\xc3\xbcrgen \xe6\x9d\xb1\xe4\xba\xac \xf0\x9f\x98\x80"),
                        "J\xc3\xbcrgen \xe6\x9d\xb1\xe4\xba\xac \xf0\x9f\x98\x80");
}

static void test_newline_cannot_forge_a_log_line(void **state)
{
    assert_string_equal(esc("42\n2026-01-01T00:00:00.000Z error query[1] forged"),
                        "42\\n2026-01-01T00:00:00.000Z error query[1] forged");
    assert_string_equal(esc("a\rb\tc"), "a\\rb\\tc");
}

static void test_other_control_bytes_become_hex(void **state)
{
    assert_string_equal(esc("\x1b[31mred\x7f"), "\\x1b[31mred\\x7f");
    char buf[US_LOG_ESCAPE_CAP];
    assert_string_equal(us_log_escape("a\0b", 3, buf, sizeof(buf)), "a\\x00b");
}

static void test_quotes_and_backslash_are_escaped(void **state)
{
    assert_string_equal(esc("x' admin='y"), "x\\' admin=\\'y");
    assert_string_equal(esc("\"q\" \\x41"), "\\\"q\\\" \\\\x41");
}

static void test_invalid_utf8_bytes_become_hex(void **state)
{
    assert_string_equal(esc("a\xff" "b"), "a\\xffb");
    assert_string_equal(esc("\x80"), "\\x80");                 /* stray continuation byte */
    assert_string_equal(esc("\xc3"), "\\xc3");                 /* cut sequence at the end */
    assert_string_equal(esc("\xc3" "A"), "\\xc3A");            /* cut sequence in the middle */
    assert_string_equal(esc("\xc0\xaf"), "\\xc0\\xaf");        /* overlong '/' */
    assert_string_equal(esc("\xed\xa0\x80"), "\\xed\\xa0\\x80"); /* surrogate U+D800 */
    assert_string_equal(esc("\xf4\x90\x80\x80"), "\\xf4\\x90\\x80\\x80"); /* over U+10FFFF */
}

static void test_bidi_controls_and_separators_become_code_points(void **state)
{
    assert_string_equal(esc("abc\xe2\x80\xae" "cba"), "abc\\u202ecba"); /* RIGHT-TO-LEFT OVERRIDE */
    assert_string_equal(esc("a\xe2\x80\xa8" "b"), "a\\u2028b");         /* LINE SEPARATOR */
    assert_string_equal(esc("\xe2\x81\xa6x\xe2\x81\xa9"), "\\u2066x\\u2069");
    assert_string_equal(esc("\xc2\x85"), "\\u0085"); /* NEXT LINE, a C1 control */
}

static void test_long_text_is_cut_after_80_bytes(void **state)
{
    char in[300], want[US_LOG_ESCAPE_CAP];
    memset(in, 'u', sizeof(in) - 1);
    in[sizeof(in) - 1] = '\0';
    memset(want, 'u', US_LOG_ESCAPE_SHOWN);
    strcpy(want + US_LOG_ESCAPE_SHOWN, "...");
    assert_string_equal(esc(in), want);

    in[US_LOG_ESCAPE_SHOWN] = '\0'; /* exactly 80 bytes: shown whole, no "..." */
    want[US_LOG_ESCAPE_SHOWN] = '\0';
    assert_string_equal(esc(in), want);
}

static void test_cut_never_splits_a_character(void **state)
{
    char in[US_LOG_ESCAPE_SHOWN + 8], want[US_LOG_ESCAPE_CAP];
    memset(in, 'a', US_LOG_ESCAPE_SHOWN - 1);
    strcpy(in + US_LOG_ESCAPE_SHOWN - 1, "\xe6\x9d\xb1" "zz"); /* a 3-byte character across 80 */
    memset(want, 'a', US_LOG_ESCAPE_SHOWN - 1);
    strcpy(want + US_LOG_ESCAPE_SHOWN - 1, "...");
    assert_string_equal(esc(in), want);
}

static void test_worst_case_fits_the_documented_buffer(void **state)
{
    char in[200], buf[US_LOG_ESCAPE_CAP + 16];
    memset(in, '\x01', sizeof(in));
    memset(buf, '#', sizeof(buf));
    us_log_escape(in, sizeof(in), buf, US_LOG_ESCAPE_CAP);
    assert_int_equal(strlen(buf), US_LOG_ESCAPE_SHOWN * 4 + 3);
    assert_string_equal(buf + US_LOG_ESCAPE_SHOWN * 4, "...");
    assert_int_equal(buf[US_LOG_ESCAPE_CAP], '#'); /* nothing written past cap */
}

static void test_small_buffer_cuts_at_a_whole_escape(void **state)
{
    char buf[10];
    assert_string_equal(us_log_escape("ab\ncdefgh", 9, buf, sizeof(buf)), "ab\\ncd...");
    assert_string_equal(us_log_escape("abc", 3, buf, 4), "abc");
    assert_string_equal(us_log_escape("abcd", 4, buf, 4), "...");
    assert_string_equal(us_log_escape("abcd", 4, buf, 1), "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_ids_pass_unchanged),
        cmocka_unit_test(test_newline_cannot_forge_a_log_line),
        cmocka_unit_test(test_other_control_bytes_become_hex),
        cmocka_unit_test(test_quotes_and_backslash_are_escaped),
        cmocka_unit_test(test_invalid_utf8_bytes_become_hex),
        cmocka_unit_test(test_bidi_controls_and_separators_become_code_points),
        cmocka_unit_test(test_long_text_is_cut_after_80_bytes),
        cmocka_unit_test(test_cut_never_splits_a_character),
        cmocka_unit_test(test_worst_case_fits_the_documented_buffer),
        cmocka_unit_test(test_small_buffer_cuts_at_a_whole_escape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
