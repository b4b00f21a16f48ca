/* Decimal text of integers without printf, for the hot paths: Redis commands (times, scores,
 * lengths), index entries and JSON replies. snprintf("%lld") parses its format on every call and
 * showed in the worker's and the query's profiles (docs/perf/README.md). */
#ifndef US_INT_TEXT_H
#define US_INT_TEXT_H

#include <stddef.h>
#include <stdint.h>

#define US_INT_TEXT_MAX 21 /* "-9223372036854775808" and a NUL. */

/* Writes the digits of v at out (no NUL); returns their number (1..20). */
static inline size_t us_u64_text(char *out, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do tmp[n++] = (char)('0' + v % 10);
    while ((v /= 10) > 0);
    for (size_t i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    return n;
}

/* The same for a signed value (a '-' first when negative). */
static inline size_t us_i64_text(char *out, int64_t v)
{
    if (v >= 0) return us_u64_text(out, (uint64_t)v);
    out[0] = '-';
    return 1 + us_u64_text(out + 1, (uint64_t)0 - (uint64_t)v);
}

/* us_i64_text followed by a NUL (out holds US_INT_TEXT_MAX bytes); returns the length. */
static inline size_t us_i64_cstr(char *out, int64_t v)
{
    size_t n = us_i64_text(out, v);
    out[n] = '\0';
    return n;
}

#endif
