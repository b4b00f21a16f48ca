/* Strict UTF-8 validation: every well-formed sequence accepted, every ill-formed one refused. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "utf8.h"

#include <string.h>

#define VALID(lit) assert_true(us_utf8_valid(lit, sizeof(lit) - 1))
#define INVALID(lit) assert_false(us_utf8_valid(lit, sizeof(lit) - 1))

static void test_well_formed_text_is_valid(void **state)
{
    (void)state;
    VALID("");
    VALID("hello");
    VALID("caf\xc3\xa9");      /* é, 2 bytes */
    VALID("\xe2\x82\xac");     /* €, 3 bytes */
    VALID("\xf0\x9f\x98\x80"); /* 😀, 4 bytes */
    VALID("\x00");             /* NUL is a character */
    VALID("\xc2\x80");         /* U+0080, smallest 2-byte */
    VALID("\xdf\xbf");         /* U+07FF */
    VALID("\xe0\xa0\x80");     /* U+0800, smallest 3-byte */
    VALID("\xed\x9f\xbf");     /* U+D7FF, just below the surrogates */
    VALID("\xee\x80\x80");     /* U+E000, just above them */
    VALID("\xef\xbf\xbf");     /* U+FFFF */
    VALID("\xf0\x90\x80\x80"); /* U+10000, smallest 4-byte */
    VALID("\xf4\x8f\xbf\xbf"); /* U+10FFFF, the largest code point */
}

static void test_stray_and_never_used_bytes_are_invalid(void **state)
{
    (void)state;
    INVALID("\x80"); /* lone continuation byte */
    INVALID("a\xbf"
            "b");
    INVALID("\xc0\x80"); /* C0, C1: only overlong forms */
    INVALID("\xc1\xbf");
    INVALID("\xf5\x80\x80\x80"); /* F5..FF never appear */
    INVALID("\xfe");
    INVALID("\xff");
}

static void test_overlong_forms_are_invalid(void **state)
{
    (void)state;
    INVALID("\xc0\xaf");         /* '/' in 2 bytes */
    INVALID("\xe0\x80\xaf");     /* '/' in 3 bytes */
    INVALID("\xe0\x9f\xbf");     /* U+07FF in 3 bytes */
    INVALID("\xf0\x80\x80\xaf"); /* '/' in 4 bytes */
    INVALID("\xf0\x8f\xbf\xbf"); /* U+FFFF in 4 bytes */
}

static void test_surrogates_and_beyond_u10ffff_are_invalid(void **state)
{
    (void)state;
    INVALID("\xed\xa0\x80");             /* U+D800 */
    INVALID("\xed\xbf\xbf");             /* U+DFFF */
    INVALID("\xed\xa0\xbd\xed\xb8\x80"); /* CESU-8 pair for U+1F600 */
    INVALID("\xf4\x90\x80\x80");         /* U+110000 */
}

static void test_truncated_and_interrupted_sequences_are_invalid(void **state)
{
    (void)state;
    INVALID("\xc3");
    INVALID("\xe2\x82");
    INVALID("ab\xf0\x9f\x98");
    INVALID("\xe2\x82"
            "a");                    /* interrupted by ASCII */
    INVALID("\xf0\x9f\x98\xc3\xa9"); /* interrupted by a new lead */
    /* the length is what counts, not a terminating NUL */
    const char euro[] = "\xe2\x82\xac";
    assert_false(us_utf8_valid(euro, 2));
    assert_true(us_utf8_valid(euro, 3));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_well_formed_text_is_valid),
        cmocka_unit_test(test_stray_and_never_used_bytes_are_invalid),
        cmocka_unit_test(test_overlong_forms_are_invalid),
        cmocka_unit_test(test_surrogates_and_beyond_u10ffff_are_invalid),
        cmocka_unit_test(test_truncated_and_interrupted_sequences_are_invalid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
